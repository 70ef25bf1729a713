"""Reading an exported avit ONNX file: one loader for every stage that derives from it (quantize,
optimize, TensorRT), so they report a missing or foreign file the same way."""

from __future__ import annotations

import os
from pathlib import Path

import onnx

from avit.errors import ArtifactError
from avit.metadata import ModelInfo


def read_onnx(path: str | os.PathLike) -> tuple[onnx.ModelProto, ModelInfo, dict[str, str]]:
    """Load an avit ONNX model: ``(proto, info, metadata_props)``.

    Raises:
        ArtifactError: missing file, not ONNX, or no avit metadata.
    """
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"model not found: {path}")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # onnx / protobuf raise DecodeError, ValueError, OSError for foreign files
        raise ArtifactError(f"{path} is not an ONNX model ({type(exc).__name__})") from exc
    props = {p.key: p.value for p in model.metadata_props}
    return model, ModelInfo.from_props(props, where=str(path)), props
