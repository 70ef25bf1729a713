"""Checkpoint layouts users have → :class:`~avit.models.AdaptiveViT`, mapped by name in one place.

Three layouts, each verified against the public source that defines its key names:

* ``timm`` — ``timm.models.vision_transformer.VisionTransformer`` state dicts (``cls_token``,
  ``reg_token``, ``pos_embed``, ``patch_embed.proj``, ``blocks.{i}.{norm1,attn.qkv,attn.proj,ls1.gamma,
  norm2,mlp.fc1,mlp.fc2,ls2.gamma}``, ``norm``; ``head.*`` / ``fc_norm.*`` are the classifier and are
  skipped). avit's parameter names *are* timm's, so the mapping is the identity except for the position
  embedding: timm stores it for ``[cls, reg…, patches]`` (or patches only with ``no_embed_class``, e.g.
  DINOv2 with registers), avit for ``[cls, patches]`` with register tokens unembedded — a register's
  embedding is folded into ``reg_token`` (exact), a missing CLS embedding is 0, and the patch grid is
  resampled to the target grid like timm's ``resample_abs_pos_embed`` (bicubic, antialias,
  ``align_corners=False``, float32).
* ``mmseg-dtop`` — MMSegmentation segmentors as trained by DToP (github.com/zbwxp/Dynamic-Token-Pruning:
  ``mmseg_custom/backbone/vit.py`` builds on ``mmseg.models.backbones.vit``): ``backbone.*`` uses
  mmseg's ViT names, the reverse of mmseg's ``tools/model_converters/vit2mmseg.py`` (``patch_embed.
  projection``, ``layers.{i}.ln1`` / ``ln2``, ``attn.attn.in_proj_weight`` / ``in_proj_bias`` (= timm's
  fused ``qkv``), ``attn.attn.out_proj``, ``ffn.layers.0.0`` (fc1), ``ffn.layers.1`` (fc2), final
  ``ln1`` when ``final_norm``); ``pos_embed`` always has a CLS entry. DToP's configs
  (``config/prune/prune_segvit_*.py``) use ``with_cls_token=False``, ``out_indices=[5, 7, 11]`` (auxiliary
  heads after blocks 6 and 8 → pause points ``(6, 8)``) and ``thresh=0.9`` (→ threshold ``1 - 0.9``).
  ``decode_head.*`` / ``auxiliary_head.{i}.*`` are DToP's ATM query heads (``PruneHead``: class queries,
  a transformer decoder, mask attention), which avit's token heads (LayerNorm → Linear) cannot express:
  they are skipped and the heads start initialised (train them with avit's distillation); the number of
  classes is read from them.
* ``cropr`` — Token Cropr (github.com/benbergner/cropr, ``cls/vision_transformer.py``): timm ``blocks.*``
  plus one pruning module ``cropr.{i}`` after block ``i`` (``cross_attn.{queries, q, k, v, attn_norm,
  proj, mlp_norm, mlp.fc1, mlp.fc2}``, auxiliary ``head.{norm, head}``). At inference a Cropr module
  ranks tokens by ``Σ_heads Σ_queries q·k``, which is one linear function ``wᵀ attn_norm(x)`` of each
  token — not an uncertainty of a class prediction, which is what avit's ``keep_ratio`` ranks by; the
  modules are recognised, checked and skipped (policy ``keep_ratio``, token heads initialised). The
  segmentation variant (``segm/``) uses EVA blocks (SwiGLU, split q/k/v, RoPE), which this ViT does not
  have: its keys are reported as unknown.

Every mapping fails with a one-line :class:`~avit.errors.CheckpointError` on an unknown key, a missing
weight or a wrong shape.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

import torch

from avit.errors import CheckpointError, ConfigError
from avit.models.config import AdaptiveViTConfig
from avit.models.layers import resample_pos_embed
from avit.models.vit import AdaptiveViT

#: Layouts :func:`import_state_dict` knows.
FORMATS = ("timm", "mmseg-dtop", "cropr")

_BLOCK_KEYS = (
    "norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
    "ls1.gamma", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight",
    "mlp.fc2.bias", "ls2.gamma",
)
#: mmseg ViT layer key → timm block key (the reverse of mmseg's vit2mmseg converter).
_MMSEG_LAYER = {
    "ln1.weight": "norm1.weight", "ln1.bias": "norm1.bias", "ln2.weight": "norm2.weight", "ln2.bias": "norm2.bias",
    "attn.attn.in_proj_weight": "attn.qkv.weight", "attn.attn.in_proj_bias": "attn.qkv.bias",
    "attn.attn.out_proj.weight": "attn.proj.weight", "attn.attn.out_proj.bias": "attn.proj.bias",
    "ffn.layers.0.0.weight": "mlp.fc1.weight", "ffn.layers.0.0.bias": "mlp.fc1.bias",
    "ffn.layers.1.weight": "mlp.fc2.weight", "ffn.layers.1.bias": "mlp.fc2.bias",
}
_CROPR_KEY = re.compile(r"cropr\.(\d+)\.(cross_attn|head)\.[\w.]+")


@dataclasses.dataclass
class ImportReport:
    """What an import did.

    Attributes:
        format: The layout (:data:`FORMATS`).
        mapped: Source tensors mapped into the model.
        skipped: Source key group → why it was not mapped.
        initialised: avit parameter groups left at their initialisation (to be trained).
        notes: Anything else worth knowing (resampled grids, inferred sizes).
    """

    format: str
    mapped: int
    skipped: dict[str, str]
    initialised: list[str]
    notes: list[str]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON (stored in the checkpoint's metadata)."""
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------- files
def unwrap_state_dict(obj: Any, where: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The tensor dict inside a loaded checkpoint (``state_dict`` / ``model`` / ``module`` wrappers removed).

    Raises:
        CheckpointError: no mapping of names to tensors found.
    """
    for _ in range(3):
        if isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            inner = next((obj[k] for k in ("state_dict", "model", "module") if isinstance(obj.get(k), Mapping)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{where} holds no state dict (a mapping of names to tensors)")
    state = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise CheckpointError(f"{where} holds no tensors")
    return state


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a ``.pth`` / ``.pt`` / ``.bin`` state dict with ``torch.load(weights_only=True)`` and unwrap it.

    Raises:
        CheckpointError: missing, unreadable or foreign file.
    """
    from avit.models.checkpoint import torch_load

    return unwrap_state_dict(torch_load(path, "a plain state dict"), str(path))


# ---------------------------------------------------------------------------------------------- helpers
def _square(n: int) -> int | None:
    r = math.isqrt(n) if n > 0 else 0
    return r if r > 0 and r * r == n else None


def _block_indices(state: Mapping[str, torch.Tensor], prefix: str) -> list[int]:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return sorted({int(m.group(1)) for k in state for m in [pattern.match(k)] if m})


def _thirds(depth: int) -> tuple[int, ...]:
    """Default pause points: after a third and two thirds of the blocks (e.g. (4, 8) for 12)."""
    return tuple(sorted({max(1, depth // 3), max(2, 2 * depth // 3)}))


def _fail(where: str, message: str) -> CheckpointError:
    return CheckpointError(f"{where}: {message}")


# ---------------------------------------------------------------------------------------------- timm
def _timm_config(state: Mapping[str, torch.Tensor], where: str, **overrides: Any) -> AdaptiveViTConfig:
    """The :class:`AdaptiveViTConfig` of a timm ViT state dict, with ``overrides`` applied."""
    if "patch_embed.proj.weight" not in state or "blocks.0.mlp.fc1.weight" not in state:
        raise _fail(where, "not a timm VisionTransformer state dict (no patch_embed.proj.weight / blocks.0.mlp.fc1.weight)")
    dim, in_chans, patch, patch_w = state["patch_embed.proj.weight"].shape
    if patch != patch_w:
        raise _fail(where, f"non-square patches {patch}×{patch_w} are not supported")
    depth = len(_block_indices(state, "blocks."))
    hidden = state["blocks.0.mlp.fc1.weight"].shape[0]
    reg = int(state["reg_token"].shape[1]) if "reg_token" in state else 0
    cls = "cls_token" in state
    pos_len = int(state["pos_embed"].shape[1]) if "pos_embed" in state else 0
    side = next((s for c in ((1 + reg) if cls else reg, int(cls), 0) if (s := _square(pos_len - c))), None)
    base: dict[str, Any] = dict(
        img_size=(side * patch, side * patch) if side else (224, 224),
        patch_size=int(patch), in_chans=int(in_chans), embed_dim=int(dim), depth=depth,
        num_heads=max(int(dim) // 64, 1), mlp_ratio=hidden / dim, qkv_bias="blocks.0.attn.qkv.bias" in state,
        init_values=1.0 if "blocks.0.ls1.gamma" in state else None, class_token=cls, reg_tokens=reg,
    )
    base.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return AdaptiveViTConfig(**base)
    except (ConfigError, TypeError) as exc:
        raise _fail(where, f"config does not fit: {exc}") from exc


def _map_timm(
    state: Mapping[str, torch.Tensor],
    model: AdaptiveViT,
    where: str,
    *,
    skip: Callable[[str], str | None] = lambda key: None,
    source_grid: tuple[int, int] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, str], list[str]]:
    """timm-named ``state`` → avit weights (backbone only). ``skip(key)`` returns a reason for keys to drop."""
    cfg = model.config
    skipped: dict[str, str] = {}
    notes: list[str] = []
    out: dict[str, torch.Tensor] = {}
    known = {"cls_token", "reg_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight", "norm.bias"}
    unknown = []
    for key, value in state.items():
        m = re.match(r"blocks\.(\d+)\.(.+)$", key)
        if m and m.group(2) in _BLOCK_KEYS and int(m.group(1)) < cfg.depth:
            out[key] = value
        elif key in known:
            out[key] = value
        elif key.startswith(("head.", "fc_norm.")):
            skipped.setdefault(key.split(".")[0] + ".*", "classifier head of the source model (the dense decoder replaces it)")
        elif (reason := skip(key)) is not None:
            skipped.setdefault(re.sub(r"\.(\d+)\..*$", r".\1.*", key) if key.count(".") > 1 else key, reason)
        else:
            unknown.append(key)
    if unknown:
        raise _fail(where, f"unknown key {unknown[0]!r} ({len(unknown)} unknown; not a {'/'.join(FORMATS)} layout avit maps)")
    if cfg.class_token and "cls_token" not in out:
        raise _fail(where, "missing weight 'cls_token' (config has class_token=True)")
    if not cfg.class_token:
        out.pop("cls_token", None)
    # Position embedding: [cls?, reg?, patches] in timm → [cls?, patches] in avit, registers folded.
    if "pos_embed" not in out:
        raise _fail(where, "missing weight 'pos_embed'")
    pos = out.pop("pos_embed")
    reg = cfg.reg_tokens
    if (reg and "reg_token" not in out) or ("reg_token" in out and out["reg_token"].shape[1] != reg):
        raise _fail(where, f"register tokens do not fit: config has {reg}")
    has_cls = "cls_token" in state
    candidates = [(1 + reg) if has_cls else reg, int(has_cls), 0]
    grid = source_grid
    embedded = None
    for c in dict.fromkeys(candidates):
        n = pos.shape[1] - c
        if (grid is not None and n == grid[0] * grid[1]) or (grid is None and _square(n)):
            embedded, grid = c, grid or (_square(n), _square(n))
            break
    if embedded is None:
        raise _fail(where, f"pos_embed of {pos.shape[1]} positions fits no square patch grid (pass the source grid)")
    cls_pos = pos[:, :1] if (has_cls and embedded >= 1) else pos.new_zeros(1, 1, pos.shape[2])
    if reg and embedded == 1 + reg:
        out["reg_token"] = out["reg_token"] + pos[:, 1 : 1 + reg]
        notes.append(f"register position embeddings folded into reg_token ({reg} registers)")
    patch_pos = resample_pos_embed(pos[:, embedded:], cfg.grid_size, grid, antialias=True)
    if tuple(grid) != tuple(cfg.grid_size):
        notes.append(f"pos_embed resampled from a {grid[0]}×{grid[1]} to a {cfg.grid_size[0]}×{cfg.grid_size[1]} grid (bicubic, antialias)")
    out["pos_embed"] = torch.cat([cls_pos, patch_pos], dim=1) if cfg.class_token else patch_pos
    return out, skipped, notes


def _finish(model: AdaptiveViT, weights: dict[str, torch.Tensor], where: str, fmt: str, skipped, notes) -> tuple[AdaptiveViT, ImportReport]:
    expected = model.state_dict()
    for key, value in weights.items():
        if key not in expected:
            raise _fail(where, f"weight {key!r} has no place in the configured model")
        if tuple(value.shape) != tuple(expected[key].shape):
            raise _fail(where, f"weight {key} has shape {list(value.shape)}, the config needs {list(expected[key].shape)}")
    backbone = [k for k in expected if k.startswith(("patch_embed.", "blocks.", "cls_token", "reg_token", "pos_embed")) and ".mlp.gate." not in k]
    missing = [k for k in backbone if k not in weights]
    if missing:
        raise _fail(where, f"missing weight {missing[0]!r} ({len(missing)} backbone weights missing)")
    model.load_state_dict(weights, strict=False)
    groups = sorted({k.split(".")[0] for k in expected if k not in weights})
    return model.eval(), ImportReport(fmt, len(weights), skipped, groups, notes)


def import_timm(state: Mapping[str, torch.Tensor], *, where: str = "timm state dict", source_grid=None, **config) -> tuple[AdaptiveViT, ImportReport]:
    """A timm ``VisionTransformer`` state dict → AdaptiveViT (backbone mapped; heads and decoder initialised).

    Args:
        state: timm-named tensors.
        where: Name used in error messages.
        source_grid: ``(h, w)`` patch grid of the source position embedding (default: square).
        **config: :class:`AdaptiveViTConfig` fields (e.g. ``img_size``, ``num_heads`` — default
            ``embed_dim // 64`` as in every timm ViT —, ``pause_points``, ``policy``, ``num_classes``).

    Raises:
        CheckpointError: unknown or missing keys, wrong shapes, a config that does not fit.
    """
    depth = len(_block_indices(state, "blocks."))
    defaults: dict[str, Any] = {"pause_points": _thirds(depth)} if depth >= 3 else {"pause_points": ()}
    defaults.update({k: v for k, v in config.items() if v is not None})
    cfg = _timm_config(state, where, **defaults)
    model = AdaptiveViT(cfg)
    weights, skipped, notes = _map_timm(state, model, where, source_grid=source_grid)
    return _finish(model, weights, where, "timm", skipped, notes)


# ---------------------------------------------------------------------------------------------- mmseg (DToP)
def mmseg_to_timm(state: Mapping[str, torch.Tensor], where: str = "mmseg state dict") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """mmseg ViT segmentor keys → timm names (backbone) and the skipped head groups.

    Raises:
        CheckpointError: a key outside ``backbone.*`` / ``decode_head.*`` / ``auxiliary_head.*``, or an
            mmseg backbone key with no timm counterpart (e.g. ``patch_embed.norm`` of ``patch_norm=True``).
    """
    out: dict[str, torch.Tensor] = {}
    skipped: dict[str, str] = {}
    heads = "DToP's ATM query heads (PruneHead) are not expressible as avit token heads (LayerNorm → Linear)"
    for key, value in state.items():
        if key.startswith("decode_head."):
            skipped["decode_head.*"] = heads
            continue
        if key.startswith("auxiliary_head."):
            skipped["auxiliary_head.*"] = heads
            continue
        if not key.startswith("backbone."):
            raise _fail(where, f"unknown key {key!r} (mmseg layout: backbone.*, decode_head.*, auxiliary_head.*)")
        k = key[len("backbone.") :]
        m = re.match(r"layers\.(\d+)\.(.+)$", k)
        if m:
            if m.group(2) not in _MMSEG_LAYER:
                raise _fail(where, f"unknown key {key!r} (not an mmseg ViT TransformerEncoderLayer weight)")
            out[f"blocks.{m.group(1)}.{_MMSEG_LAYER[m.group(2)]}"] = value
        elif k.startswith("patch_embed.projection."):
            out["patch_embed.proj." + k.rsplit(".", 1)[1]] = value
        elif k in ("ln1.weight", "ln1.bias"):
            out["norm." + k.split(".")[1]] = value
        elif k in ("cls_token", "pos_embed"):
            out[k] = value
        else:
            raise _fail(where, f"unknown key {key!r} (not an mmseg ViT backbone weight avit maps)")
    return out, skipped


def _num_classes_of_heads(state: Mapping[str, torch.Tensor]) -> int | None:
    for key in ("decode_head.q.weight", "decode_head.conv_seg.weight"):
        if key in state:
            return int(state[key].shape[0])
    return None


def import_mmseg_dtop(
    state: Mapping[str, torch.Tensor],
    *,
    where: str = "mmseg state dict",
    class_token: bool = False,
    source_grid: tuple[int, int] | None = None,
    **config,
) -> tuple[AdaptiveViT, ImportReport]:
    """A DToP / mmseg ViT segmentor state dict → AdaptiveViT with policy ``dtop`` (backbone mapped).

    Defaults follow DToP's configs: ``class_token=False`` (``with_cls_token=False``), pause points
    ``(6, 8)`` for 12 blocks (``out_indices=[5, 7, 11]``), thresholds ``0.1`` (``thresh=0.9``),
    ``dtop_k=5``, ``fill="canvas"``, ``num_classes`` from the decode head; override any field.

    Raises:
        CheckpointError: unknown or missing keys, wrong shapes, auxiliary heads that do not match the pause
            points, a config that does not fit.
    """
    timm_state, head_skips = mmseg_to_timm(state, where)
    if "cls_token" not in timm_state or "pos_embed" not in timm_state:
        raise _fail(where, "missing weight 'backbone.cls_token' / 'backbone.pos_embed'")
    depth = len(_block_indices(timm_state, "blocks."))
    aux = _block_indices(state, "auxiliary_head.")
    defaults: dict[str, Any] = dict(policy="dtop", fill="canvas", dtop_k=5, decoder="linear")
    if depth == 12:
        defaults["pause_points"] = (6, 8)
    classes = _num_classes_of_heads(state)
    if classes:
        defaults["num_classes"] = classes
    defaults.update({k: v for k, v in config.items() if v is not None})
    if "pause_points" not in defaults:
        raise _fail(where, f"{depth} blocks: give pause_points (DToP's are the auxiliary heads' out_indices + 1)")
    if aux and len(aux) != len(defaults["pause_points"]):
        raise _fail(where, f"{len(aux)} auxiliary heads for {len(defaults['pause_points'])} pause points {list(defaults['pause_points'])}")
    defaults.setdefault("default_thresholds", tuple(0.1 for _ in defaults["pause_points"]))
    # mmseg's pos_embed always has the CLS entry; timm mapping with a CLS token, then drop it if unused.
    cfg = _timm_config(timm_state, where, class_token=class_token, **defaults)
    model = AdaptiveViT(cfg)
    weights, skipped, notes = _map_timm(timm_state, model, where, source_grid=source_grid)
    skipped.update(head_skips)
    if "norm.weight" not in weights:
        notes.append("no final backbone norm (final_norm=False): avit's norm before the decoder starts initialised")
    return _finish(model, weights, where, "mmseg-dtop", skipped, notes)


# ---------------------------------------------------------------------------------------------- Token Cropr
def import_cropr(
    state: Mapping[str, torch.Tensor], *, where: str = "cropr state dict", source_grid: tuple[int, int] | None = None, **config
) -> tuple[AdaptiveViT, ImportReport]:
    """A Token Cropr (classification ViT) state dict → AdaptiveViT with policy ``keep_ratio`` (backbone mapped).

    The ``cropr.{i}`` modules (one after block ``i``) are recognised and skipped (see the module
    docstring); default pause points are a third and two thirds of the depth.

    Raises:
        CheckpointError: unknown or missing keys (e.g. EVA blocks of Cropr's segmentation models), wrong
            shapes, a config that does not fit.
    """
    modules = _block_indices(state, "cropr.")
    reason = (
        "Cropr scorers rank by a learned relevance wᵀ·attn_norm(x), not a class prediction's uncertainty "
        "(avit keep_ratio); token heads start initialised"
    )
    depth = len(_block_indices(state, "blocks."))
    defaults: dict[str, Any] = dict(policy="keep_ratio", fill="stale", pause_points=_thirds(depth) if depth >= 3 else ())
    defaults.update({k: v for k, v in config.items() if v is not None})
    cfg = _timm_config(state, where, **defaults)
    model = AdaptiveViT(cfg)
    weights, skipped, notes = _map_timm(
        state, model, where, skip=lambda k: reason if _CROPR_KEY.fullmatch(k) else None, source_grid=source_grid
    )
    if modules:
        skipped = {k: v for k, v in skipped.items() if not k.startswith("cropr.")}
        skipped["cropr.*"] = reason
        notes.append(f"{len(modules)} Cropr modules (after blocks {modules[0]}..{modules[-1]})")
    return _finish(model, weights, where, "cropr", skipped, notes)


_IMPORTERS = {"timm": import_timm, "mmseg-dtop": import_mmseg_dtop, "cropr": import_cropr}


def import_state_dict(fmt: str, state: Mapping[str, torch.Tensor], **config) -> tuple[AdaptiveViT, ImportReport]:
    """Dispatch to the importer of ``fmt`` (:data:`FORMATS`).

    Raises:
        CheckpointError: unknown format, or what the importer raises.
    """
    if fmt not in _IMPORTERS:
        raise CheckpointError(f"unknown checkpoint layout {fmt!r}; known: {', '.join(FORMATS)}")
    return _IMPORTERS[fmt](unwrap_state_dict(state), **config)


def import_checkpoint(fmt: str, path: str | os.PathLike, **config) -> tuple[AdaptiveViT, ImportReport]:
    """:func:`import_state_dict` of the file at ``path``."""
    if fmt not in _IMPORTERS:
        raise CheckpointError(f"unknown checkpoint layout {fmt!r}; known: {', '.join(FORMATS)}")
    return _IMPORTERS[fmt](load_state_dict_file(path), where=str(path), **config)
