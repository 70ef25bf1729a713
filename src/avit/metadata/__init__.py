"""The avit metadata carried by exported artifacts (ONNX ``metadata_props``, engine sidecars).

Written by :mod:`avit.exporter`, read by :mod:`avit.runtime` and the CLI. Torch-free on purpose: a
deployed runtime needs only NumPy and ONNX Runtime / TensorRT.

Keys (all values are strings; structured values are JSON):

================================  ==============================================================
``avit.format_version``           "1"
``avit.version``                  avit version that exported the artifact
``avit.variant``                  "adaptive" (has pause points) or "static" (reference export)
``avit.config``                   the full :class:`~avit.models.AdaptiveViTConfig` as JSON
``avit.pause_points``             JSON list: block counts after which the token heads run
``avit.policy``                   "entropy" | "confidence" | "keep_ratio" | "dtop" | "acm"
``avit.threshold_kind``           what ``pause_thresholds`` means, see :data:`THRESHOLD_KINDS`
``avit.default_thresholds``       JSON list, one per pause point
``avit.nothing_paused``           threshold value at which no token pauses
``avit.everything_paused``        threshold value at which every token pauses
``avit.class_names``              JSON list of the token-head class names
``avit.input_size``               JSON [H, W] in pixels
``avit.num_patches``              patch tokens N
``avit.mean`` / ``avit.std``      JSON lists: per-channel normalisation of [0, 1] RGB
``avit.output_activation``        "sigmoid" (one logit) or "softmax"
``avit.adaptive_ops``             JSON list of the ``avit`` op types in the graph
``avit.source``                   JSON dict: checkpoint metadata (origin, training summary)
``avit.precision``                "fp32" or "fp16" (weights and activations; I/O stays float32);
                                  absent in artifacts older than the key = "fp32"
================================  ==============================================================

``dtop`` models also take the optional int64 input ``dtop_k`` (default: ``config["dtop_k"]``,
:attr:`ModelInfo.dtop_k`); ``acm`` models report learner evaluations (token × learner) per pause point's
segment in ``tokens_kept``.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from avit._io import json_float
from avit.errors import ArtifactError

FORMAT_VERSION = "1"
PREFIX = "avit."

#: Meaning of the ``pause_thresholds`` input per policy.
THRESHOLD_KINDS = {
    "entropy": "softmax entropy in nats; a token pauses when its entropy is below the threshold",
    "confidence": "1 - max softmax probability; a token pauses when it is below the threshold",
    "keep_ratio": "fraction of the active tokens kept at the pause point",
    "dtop": "1 - max softmax probability; a token exits when it is below the threshold, except the dtop_k most "
    "confident exit candidates of each class",
    "acm": "tolerated relative error of each MLP from the pause point on; a token runs learner j while the gate's "
    "predicted remaining error e_j is not below it (0 = every learner, above 1 = none)",
}


def _json(value: Any) -> str:
    # JSON has no infinity: ±inf are written as the strings "inf" / "-inf" (avit._io.json_float).
    def fix(v):
        if isinstance(v, float):
            return json_float(v)
        if isinstance(v, (list, tuple)):
            return [fix(x) for x in v]
        if isinstance(v, dict):
            return {k: fix(x) for k, x in v.items()}
        return v

    return json.dumps(fix(value), sort_keys=True)


def _unjson(text: str) -> Any:
    def fix(v):
        if v in ("inf", "-inf"):
            return float(v)
        if isinstance(v, list):
            return [fix(x) for x in v]
        if isinstance(v, dict):
            return {k: fix(x) for k, x in v.items()}
        return v

    return fix(json.loads(text))


def build_metadata(
    config: dict[str, Any],
    *,
    avit_version: str,
    adaptive_ops: list[str],
    nothing_paused: float,
    everything_paused: float,
    default_thresholds: list[float],
    source: dict[str, Any] | None = None,
    precision: str = "fp32",
) -> dict[str, str]:
    """The ``avit.*`` metadata of an exported model with config dict ``config`` (``AdaptiveViTConfig.to_dict()``)."""
    policy = config["policy"]
    return {
        PREFIX + "format_version": FORMAT_VERSION,
        PREFIX + "version": avit_version,
        PREFIX + "variant": "adaptive" if config["pause_points"] else "static",
        PREFIX + "config": _json(config),
        PREFIX + "pause_points": _json(list(config["pause_points"])),
        PREFIX + "policy": policy,
        PREFIX + "threshold_kind": THRESHOLD_KINDS[policy],
        PREFIX + "default_thresholds": _json(list(default_thresholds)),
        PREFIX + "nothing_paused": _json(nothing_paused),
        PREFIX + "everything_paused": _json(everything_paused),
        PREFIX + "class_names": _json(list(config.get("class_names") or [])),
        PREFIX + "input_size": _json(list(config["img_size"])),
        PREFIX + "num_patches": str((config["img_size"][0] // config["patch_size"]) * (config["img_size"][1] // config["patch_size"])),
        PREFIX + "mean": _json(list(config["mean"])),
        PREFIX + "std": _json(list(config["std"])),
        PREFIX + "output_activation": "sigmoid" if config["num_classes"] == 1 else "softmax",
        PREFIX + "adaptive_ops": _json(adaptive_ops),
        PREFIX + "source": _json(source or {}),
        PREFIX + "precision": precision,
    }


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What an avit artifact is, read back from its metadata."""

    avit_version: str
    variant: str
    config: dict[str, Any]
    pause_points: tuple[int, ...]
    policy: str
    threshold_kind: str
    default_thresholds: tuple[float, ...]
    nothing_paused: float
    everything_paused: float
    class_names: tuple[str, ...]
    input_size: tuple[int, int]
    num_patches: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    output_activation: str
    adaptive_ops: tuple[str, ...]
    source: dict[str, Any]
    precision: str = "fp32"

    @property
    def num_pause_points(self) -> int:
        """P."""
        return len(self.pause_points)

    @property
    def dtop_k(self) -> int | None:
        """Default of the optional ``dtop_k`` input of a ``dtop`` model; None for other policies."""
        return int(self.config.get("dtop_k", 5)) if self.policy == "dtop" else None

    @classmethod
    def from_props(cls, props: dict[str, str], where: str = "model") -> ModelInfo:
        """Parse ``avit.*`` props.

        Raises:
            ArtifactError: no avit metadata, unknown format version, or malformed values.
        """
        if PREFIX + "format_version" not in props:
            raise ArtifactError(f"{where} carries no avit metadata (not exported by avit)")
        if props[PREFIX + "format_version"] != FORMAT_VERSION:
            raise ArtifactError(
                f"{where} has avit metadata format {props[PREFIX + 'format_version']}, this avit reads {FORMAT_VERSION}"
            )
        try:
            get = lambda k: _unjson(props[PREFIX + k])  # noqa: E731
            return cls(
                avit_version=props[PREFIX + "version"],
                variant=props[PREFIX + "variant"],
                config=get("config"),
                pause_points=tuple(get("pause_points")),
                policy=props[PREFIX + "policy"],
                threshold_kind=props[PREFIX + "threshold_kind"],
                default_thresholds=tuple(float(t) for t in get("default_thresholds")),
                nothing_paused=float(get("nothing_paused")),
                everything_paused=float(get("everything_paused")),
                class_names=tuple(get("class_names")),
                input_size=tuple(get("input_size")),
                num_patches=int(props[PREFIX + "num_patches"]),
                mean=tuple(get("mean")),
                std=tuple(get("std")),
                output_activation=props[PREFIX + "output_activation"],
                adaptive_ops=tuple(get("adaptive_ops")),
                source=get("source"),
                precision=props.get(PREFIX + "precision", "fp32"),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise ArtifactError(f"{where} has malformed avit metadata ({type(exc).__name__}: {exc})") from exc

    def to_props(self) -> dict[str, str]:
        """Inverse of :meth:`from_props` (used for engine sidecars)."""
        return build_metadata(
            self.config,
            avit_version=self.avit_version,
            adaptive_ops=list(self.adaptive_ops),
            nothing_paused=self.nothing_paused,
            everything_paused=self.everything_paused,
            default_thresholds=list(self.default_thresholds),
            source=self.source,
            precision=self.precision,
        )
