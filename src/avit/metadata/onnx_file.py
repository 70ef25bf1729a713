"""Reading and updating an avit ONNX file's metadata: one loader for every stage that reads an export
(quantize, optimize, TensorRT, Triton, pause-set reading, ``avit inspect``), so a missing or foreign file
is reported the same way everywhere."""

from __future__ import annotations

import os
from collections.abc import Mapping
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
    props = metadata_props(model)
    return model, ModelInfo.from_props(props, where=str(path)), props


def metadata_props(model: onnx.ModelProto) -> dict[str, str]:
    """The model's ``metadata_props`` as a dict (the last entry wins when a key repeats)."""
    return {p.key: p.value for p in model.metadata_props}


def set_metadata(model: onnx.ModelProto, updates: Mapping[str, str]) -> onnx.ModelProto:
    """Set ``updates`` in ``model.metadata_props`` in place: existing keys get the new value, new keys are
    appended, each key appears once. Returns ``model``."""
    entries = {p.key: p for p in model.metadata_props}
    for key, value in updates.items():
        if key in entries:
            entries[key].value = value
        else:
            entries[key] = model.metadata_props.add(key=key, value=value)
    return model
