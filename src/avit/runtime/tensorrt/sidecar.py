"""The JSON sidecar beside a TensorRT engine (``model.engine.json``): what the serialized engine cannot hold."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from avit._io import atomic_write, file_sha256, json_float
from avit.errors import ArtifactError
from avit.metadata import ModelInfo

#: Sidecar format written by :func:`write_sidecar`.
SIDECAR_FORMAT = "avit-tensorrt-engine"
SIDECAR_VERSION = 1


@dataclasses.dataclass
class EngineSidecar:
    """What ``model.engine.json`` records about ``model.engine``.

    Attributes:
        engine_sha256: sha256 of the serialized engine (the sidecar describes exactly that file).
        tensorrt_version: ``tensorrt.__version__`` that built it (engines only load in the same version).
        precision: ``"fp32"`` / ``"fp16"``: the ONNX model's precision (strongly typed network).
        profile: ``{"images": {"min": [...], "opt": [...], "max": [...]}}`` (the optimization profile).
        plugin_library: Path of the plugin library used at build time (None: stock ops, no plugins).
        plugin_sha256: Its sha256.
        plugin_loader: ``"static"`` / ``"dynamic"`` (see :func:`plugin_loader`).
        onnx_path: The ONNX model the engine was built from.
        onnx_sha256: Its sha256.
        metadata: The ONNX model's ``avit.*`` metadata (see :mod:`avit.metadata`).
        pause_points, default_thresholds: Copies from ``metadata`` for readers of the JSON.
        builder: Builder settings (workspace, timing cache, TF32, parser flags …).
        trtexec: The equivalent trtexec command line.
    """

    engine_sha256: str
    tensorrt_version: str
    precision: str
    profile: dict[str, dict[str, list[int]]]
    plugin_library: str | None
    plugin_sha256: str | None
    plugin_loader: str | None
    onnx_path: str
    onnx_sha256: str
    metadata: dict[str, str]
    pause_points: list[int] = dataclasses.field(default_factory=list)
    default_thresholds: list[float] = dataclasses.field(default_factory=list)
    builder: dict[str, Any] = dataclasses.field(default_factory=dict)
    trtexec: str = ""

    @property
    def info(self) -> ModelInfo:
        """The model's :class:`~avit.metadata.ModelInfo` (raises :class:`ArtifactError` if malformed)."""
        return ModelInfo.from_props(self.metadata, where="engine sidecar")

    @property
    def max_batch(self) -> int:
        """Largest batch of the optimization profile."""
        return int(self.profile["images"]["max"][0])

    @property
    def min_batch(self) -> int:
        """Smallest batch of the optimization profile."""
        return int(self.profile["images"]["min"][0])

    def to_json(self) -> str:
        """Strict JSON (infinite thresholds are written as the string ``"inf"``, as in the ONNX metadata)."""
        body = {"format": SIDECAR_FORMAT, "format_version": SIDECAR_VERSION, **dataclasses.asdict(self)}
        body["default_thresholds"] = [json_float(t) for t in self.default_thresholds]
        return json.dumps(body, indent=2, sort_keys=True, allow_nan=False) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str = "sidecar") -> EngineSidecar:
        """Parse :meth:`to_json` output. Raises :class:`ArtifactError` when it is not a readable sidecar."""
        try:
            body = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ArtifactError(f"{where} is not JSON ({exc.msg} at line {exc.lineno})") from exc
        if not isinstance(body, dict) or body.get("format") != SIDECAR_FORMAT:
            raise ArtifactError(f"{where} is not an avit engine sidecar")
        if body.get("format_version") != SIDECAR_VERSION:
            raise ArtifactError(f"{where} has sidecar format {body.get('format_version')}, this avit reads {SIDECAR_VERSION}")
        names = {f.name for f in dataclasses.fields(cls)}
        try:
            sidecar = cls(**{k: v for k, v in body.items() if k in names})
            sidecar.default_thresholds = [float(t) for t in sidecar.default_thresholds]
            sidecar.info  # noqa: B018  (validates the metadata now, not at first use)
            sidecar.profile["images"]["max"][0]  # noqa: B018
        except (TypeError, KeyError, IndexError, ValueError) as exc:
            raise ArtifactError(f"{where} is incomplete ({type(exc).__name__}: {exc})") from exc
        return sidecar


def sidecar_path(engine_path: str | os.PathLike) -> Path:
    """``model.engine`` → ``model.engine.json``."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")


def write_sidecar(engine_path: str | os.PathLike, sidecar: EngineSidecar) -> Path:
    """Write ``sidecar`` beside ``engine_path`` atomically. Returns the sidecar path."""
    return atomic_write(sidecar_path(engine_path), lambda tmp: Path(tmp).write_text(sidecar.to_json()))


def read_sidecar(engine_path: str | os.PathLike, *, verify_engine: bool = True) -> EngineSidecar:
    """The sidecar of ``engine_path``.

    Args:
        verify_engine: Check that the engine file's sha256 is the one recorded (a sidecar left beside
            another engine would otherwise describe the wrong model).

    Raises:
        ArtifactError: no sidecar, unreadable sidecar, or one that describes another engine file.
    """
    engine_path = Path(engine_path)
    path = sidecar_path(engine_path)
    if not path.is_file():
        raise ArtifactError(
            f"{engine_path.name} has no sidecar {path.name} (build engines with 'avit export MODEL.onnx --trt', "
            "which writes both)"
        )
    sidecar = EngineSidecar.from_json(path.read_text(), where=str(path))
    if verify_engine and file_sha256(engine_path) != sidecar.engine_sha256:
        raise ArtifactError(f"{path.name} describes another engine than {engine_path.name} (sha256 differs): rebuild it")
    return sidecar
