"""Calibration files (``<model>.calib.json``): read, validate, write; named presets.

A calibration file belongs to one model file (its SHA-256 is recorded and checked) measured on one
backend and machine. Its ``presets`` are threshold settings with the latency measured for them:

==============  ==================================================================================
``target``      the setting ``avit calibrate`` chose: best quality that met the latency target
``accurate``    the fastest measured setting with quality ≥ 0.99 × the reference quality
``balanced``    … ≥ 0.95 ×
``fast``        … ≥ 0.90 ×
==============  ==================================================================================

(the floors are :data:`avit.calibration.choice.PRESET_FLOORS`). Torch-free: the runtime loads presets.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from avit._io import atomic_write, file_sha256
from avit.metadata.calibration_schema import CALIBRATION_SCHEMA, FORMAT, VERSION, validate
from avit.errors import ArtifactError
from avit.metadata import ModelInfo

SUFFIX = ".calib.json"


def calibration_path(model_path: str | os.PathLike) -> Path:
    """Where the calibration of ``model_path`` lives by default: ``model.onnx`` → ``model.calib.json``."""
    path = Path(model_path)
    return path.with_name(path.stem + SUFFIX)


@dataclasses.dataclass(frozen=True)
class Preset:
    """A named threshold setting with its measured latency.

    Attributes:
        name: Preset name.
        thresholds: ``[P]`` pause thresholds / keep ratios.
        latency_ms: The ``percentile``-th percentile latency of one call of ``batch`` images, ms.
        percentile: Which percentile ``latency_ms`` is.
        batch: Images per call it was measured with.
        quality: Agreement with the reference on the calibration images (or metric against labels).
        tokens_kept: Mean active tokens after each pause point on the calibration images.
        warning: Why its output may be poor (e.g. a ``target`` that keeps almost no tokens); "" if none.
    """

    name: str
    thresholds: tuple[float, ...]
    latency_ms: float
    percentile: float
    batch: int
    quality: float
    tokens_kept: tuple[float, ...] = ()
    warning: str = ""

    def latency_for_batch(self, batch: int) -> float:
        """Estimated latency of a call of ``batch`` images: exact at :attr:`batch`, else scaled per image.

        On the CPU the cost of a ViT call is close to proportional to the images in it; padding every
        image to the batch's largest token count makes bigger batches a little costlier per image than
        this estimate when token counts vary, smaller batches a little cheaper.
        """
        return self.latency_ms * batch / self.batch

    def to_dict(self) -> dict[str, Any]:
        return {
            "thresholds": list(self.thresholds),
            "latency_ms": self.latency_ms,
            "percentile": self.percentile,
            "batch": self.batch,
            "quality": self.quality,
            "tokens_kept": list(self.tokens_kept),
            **({"warning": self.warning} if self.warning else {}),
        }


@dataclasses.dataclass(frozen=True)
class Calibration:
    """A validated calibration file.

    Attributes:
        path: Where it was read from (None if built in memory).
        data: The whole document (read-only by convention).
        presets: Name → :class:`Preset` (read-only mapping).
    """

    path: Path | None
    data: Mapping[str, Any]
    presets: Mapping[str, Preset]

    @property
    def model_sha256(self) -> str:
        return self.data["model"]["sha256"]

    @property
    def target(self) -> Mapping[str, Any]:
        return self.data["target"]

    @classmethod
    def from_dict(cls, data: Any, where: str = "calibration") -> Calibration:
        """Validate a parsed document.

        Raises:
            ArtifactError: wrong format or version, a schema violation, or inconsistent threshold counts
                (one line, naming the field).
        """
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ArtifactError(f"{where} is not an avit calibration file (no \"format\": \"{FORMAT}\")")
        version = data.get("version")
        if isinstance(version, int) and not isinstance(version, bool) and version > VERSION:
            raise ArtifactError(f"{where} has calibration format version {version}; this avit reads version {VERSION} (upgrade avit)")
        try:
            validate(data, CALIBRATION_SCHEMA)
        except ArtifactError as exc:
            raise ArtifactError(f"{where}: invalid calibration file: {exc}") from None
        p = len(data["model"]["pause_points"])
        counts = [("chosen.thresholds", data["chosen"]["thresholds"])]
        counts += [(f"points[{i}].thresholds", pt["thresholds"]) for i, pt in enumerate(data["points"])]
        counts += [(f"presets.{name}.thresholds", pr["thresholds"]) for name, pr in data["presets"].items()]
        for field, values in counts:
            if len(values) != p:
                raise ArtifactError(f"{where}: invalid calibration file: {field}: expected {p} thresholds (one per pause point), got {len(values)}")
        presets = {
            name: Preset(
                name=name,
                thresholds=tuple(float(t) for t in pr["thresholds"]),
                latency_ms=float(pr["latency_ms"]),
                percentile=float(pr["percentile"]),
                batch=int(pr["batch"]),
                quality=float(pr["quality"]),
                tokens_kept=tuple(float(k) for k in pr["tokens_kept"]),
                warning=str(pr.get("warning", "")),
            )
            for name, pr in data["presets"].items()
        }
        return cls(None, data, MappingProxyType(presets))

    def check_model(self, info: ModelInfo, model_path: str | os.PathLike, *, verify_hash: bool = True) -> None:
        """Raise :class:`ArtifactError` unless this calibration was made for that model file."""
        model = self.data["model"]
        where = str(self.path or "calibration")
        if list(model["pause_points"]) != list(info.pause_points) or model["policy"] != info.policy:
            raise ArtifactError(
                f"{where} was made for pause points {model['pause_points']} ({model['policy']}), but "
                f"{model_path} has {list(info.pause_points)} ({info.policy}); re-run avit calibrate"
            )
        if verify_hash and file_sha256(model_path) != model["sha256"]:
            raise ArtifactError(
                f"{where} was made for a different model file than {model_path} (SHA-256 differs); "
                "re-run avit calibrate or delete the calibration file"
            )


def load_calibration(path: str | os.PathLike) -> Calibration:
    """Read and validate a calibration file.

    Raises:
        ArtifactError: missing, unreadable, not JSON, or not a valid calibration file (one line).
    """
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"calibration file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text, parse_constant=lambda name: _reject(name))
    except (OSError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"cannot read calibration file {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except ValueError as exc:
        raise ArtifactError(f"{path} is not valid JSON ({exc})") from None
    calib = Calibration.from_dict(data, where=str(path))
    return dataclasses.replace(calib, path=path)


def _reject(name: str):
    raise ValueError(f"{name} is not allowed")


def save_calibration(path: str | os.PathLike, data: dict[str, Any]) -> Path:
    """Validate ``data`` and write it as JSON, atomically.

    Raises:
        ArtifactError: ``data`` does not satisfy the schema (nothing is written).
    """
    Calibration.from_dict(data, where="calibration to write")
    text = json.dumps(data, indent=1, allow_nan=False) + "\n"
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))

