"""Describe an avit artifact (exported ONNX model or checkpoint) as titled key/value rows."""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from pathlib import Path

from avit.errors import ArtifactError

Rows = list[tuple[str, str]]

_ELEM = {1: "float32", 10: "float16", 7: "int64", 6: "int32", 9: "bool", 16: "bfloat16"}


def _fmt(v) -> str:
    if isinstance(v, float):
        return "inf" if math.isinf(v) else f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


def _config_rows(config: dict) -> Rows:
    keys = (
        "name", "img_size", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio", "init_values",
        "class_token", "reg_tokens", "num_classes", "decoder", "pause_points", "policy", "default_thresholds",
        "fill", "dtop_k", "acm_learners", "acm_gate_hidden", "class_names", "mean", "std",
    )
    return [(k, _fmt(config[k])) for k in keys if k in config]


def _value_info(v) -> str:
    t = v.type.tensor_type
    dims = [d.dim_param or str(d.dim_value) for d in t.shape.dim]
    return f"{_ELEM.get(t.elem_type, t.elem_type)} [{', '.join(dims)}]"


def describe_onnx(path: Path) -> list[tuple[str, Rows]]:
    """Sections for an exported ONNX model. Raises :class:`ArtifactError`."""
    from avit.metadata.onnx_file import read_onnx

    model, info, props = read_onnx(path)
    opsets = ", ".join(f"{o.domain or 'ai.onnx'} {o.version}" for o in model.opset_import)
    ops = Counter(n.op_type for n in model.graph.node if n.domain == "avit")
    artifact: Rows = [
        ("file", f"{path} ({os.path.getsize(path) / 1e6:.1f} MB)"),
        ("kind", f"ONNX model, {info.variant}"),
        ("exported by", f"avit {info.avit_version} ({model.producer_name} {model.producer_version})"),
        ("opsets", opsets),
        ("adaptive ops", ", ".join(f"{k} ×{v}" for k, v in sorted(ops.items())) or "none"),
        ("local functions", ", ".join(f"{f.domain}::{f.name}" for f in model.functions) or "none"),
        ("pause points", f"{list(info.pause_points)} (token heads after these block counts)"),
        ("policy", f"{info.policy}: {info.threshold_kind}"),
        ("default thresholds", _fmt(list(info.default_thresholds))),
        ("nothing / everything paused at", f"{_fmt(info.nothing_paused)} / {_fmt(info.everything_paused)}"),
        ("tokens", f"{info.num_patches} patch tokens, input {info.input_size[0]}×{info.input_size[1]} px"),
        ("output", f"logits, {info.output_activation}"),
        ("precision", info.precision),
        ("quantization", props.get("avit.quantization", "none")),
        ("ONNX Runtime optimization", props.get("avit.optimization", "none (portable export)")),
    ]
    io_rows: Rows = [(f"input {v.name}", _value_info(v)) for v in model.graph.input]
    io_rows += [(f"output {v.name}", _value_info(v)) for v in model.graph.output]
    sections = [("artifact", artifact), ("inputs / outputs", io_rows), ("config", _config_rows(info.config))]
    if info.source:
        sections.append(("source", [(k, _fmt(v) if not isinstance(v, (dict, list)) else json.dumps(v)[:200]) for k, v in info.source.items()]))
    return sections


def describe_checkpoint(path: Path) -> list[tuple[str, Rows]]:
    """Sections for an avit checkpoint. Raises :class:`~avit.errors.CheckpointError`."""
    from avit.models import read_checkpoint

    payload = read_checkpoint(path)
    params = sum(t.numel() for t in payload["state_dict"].values())
    heads = sum(t.numel() for k, t in payload["state_dict"].items() if k.startswith("pause_heads."))
    artifact: Rows = [
        ("file", f"{path} ({os.path.getsize(path) / 1e6:.1f} MB)"),
        ("kind", f"avit checkpoint (format {payload['format_version']}, avit {payload.get('avit_version', '?')})"),
        ("parameters", f"{params / 1e6:.2f} M (token heads {heads / 1e6:.3f} M)"),
    ]
    meta = payload.get("meta") or {}
    meta_rows = [(k, _fmt(v) if not isinstance(v, (dict, list)) else json.dumps(v)[:200]) for k, v in meta.items()]
    sections = [("artifact", artifact), ("config", _config_rows(payload["config"]))]
    if meta_rows:
        sections.append(("metadata", meta_rows))
    return sections


def describe(path: str | os.PathLike) -> list[tuple[str, Rows]]:
    """Titled key/value sections describing ``path``.

    Raises:
        ArtifactError: missing file or unknown kind.
        CheckpointError: unreadable checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"file not found: {path}")
    if path.suffix.lower() == ".onnx":
        return describe_onnx(path)
    if path.suffix.lower() in (".ckpt", ".pt", ".pth"):
        return describe_checkpoint(path)
    raise ArtifactError(f"{path} is not an avit artifact (expected .onnx or .ckpt)")
