"""Describe an avit artifact (exported ONNX model, OpenVINO IR or checkpoint) as titled key/value rows."""

from __future__ import annotations

import math
import os
from collections import Counter
from pathlib import Path

from avit.errors import ArtifactError

Rows = list[tuple[str, str]]

_ELEM = {1: "float32", 10: "float16", 7: "int64", 6: "int32", 9: "bool", 16: "bfloat16"}


#: Longest metadata value printed; longer ones are cut at an item boundary and say how many items are left.
MAX_VALUE_CHARS = 160

#: Config keys the "artifact" section of a model already shows.
_SHOWN_IN_ARTIFACT = ("pause_points", "policy", "default_thresholds")


def _fmt(v) -> str:
    """A value as a short string: floats at 4 significant digits, lists element-wise."""
    if isinstance(v, float):
        return ("inf" if v > 0 else "-inf") if math.isinf(v) else f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


def _joined(items: list[str], limit: int = MAX_VALUE_CHARS) -> str:
    """``items`` joined by ", ", cut at an item boundary so the result stays within ``limit`` characters."""
    out, used = [], 0
    for i, item in enumerate(items):
        if out and used + len(item) + 2 > limit:
            return ", ".join(out) + f", … (+{len(items) - i} more)"
        out.append(item)
        used += len(item) + 2
    return ", ".join(out)


def _summary(v) -> str:
    """A metadata value for one table cell: scalars and short lists in full, nested structures summarised
    (never JSON cut mid-string)."""
    if isinstance(v, dict):
        return _joined([f"{k}={_summary_short(x)}" for k, x in v.items()]) or "{}"
    if isinstance(v, (list, tuple)):
        if v and all(isinstance(x, dict) for x in v):
            return f"{len(v)} rows; first: {_summary(v[0])}"
        return "[" + _joined([_summary_short(x) for x in v]) + "]"
    return _fmt(v)


def _summary_short(v) -> str:
    """A nested value inside a summary: scalars as such, containers by their size."""
    if isinstance(v, dict):
        return f"{{{len(v)} fields}}"
    if isinstance(v, (list, tuple)):
        if len(v) <= 4 and not any(isinstance(x, (dict, list, tuple)) for x in v):
            return _fmt(list(v))
        return f"[{len(v)} items]"
    return _fmt(v)


def _config_rows(config: dict, skip: tuple[str, ...] = ()) -> Rows:
    keys = (
        "name", "img_size", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio", "init_values",
        "class_token", "reg_tokens", "num_classes", "decoder", "pause_points", "policy", "default_thresholds",
        "fill", "dtop_k", "acm_learners", "acm_gate_hidden", "class_names", "mean", "std",
    )
    return [(k, _fmt(config[k])) for k in keys if k in config and k not in skip]


def _meta_rows(meta: dict, config: dict) -> Rows:
    """Checkpoint metadata / ONNX provenance rows, without the values the config section already shows."""
    return [(k, _summary(v)) for k, v in meta.items() if not (k in config and _fmt(v) == _fmt(config[k]))]


def _paused_rows(info) -> Rows:
    """Where no token / every token pauses, as the thresholds that really do it (not the +inf sentinel).

    An entropy head with C classes gives at most ln C nats, so any threshold at or above ln C pauses every
    token; ``1 - max p`` is at most ``1 - 1/C``.
    """
    classes = max(int(info.config.get("num_classes", 2)), 2)

    def up(v: float) -> str:  # rounded up at 4 significant digits, so that the printed value still pauses all
        scale = 10 ** (3 - math.floor(math.log10(v)))
        return f"{math.ceil(v * scale) / scale:.4g}"

    if info.policy == "entropy":
        everything = f">= {up(math.log(classes))} (ln {classes}: the highest entropy of a {classes}-class token head)"
    elif info.policy in ("confidence", "dtop"):
        everything = f">= {up(1 - 1 / classes)} (1 - 1/{classes}: the highest 1 - max p of a {classes}-class token head)"
        if info.policy == "dtop":
            everything += "; the dtop_k most confident of each class stay"
    else:
        everything = _fmt(info.everything_paused)
    return [("nothing paused at", _fmt(info.nothing_paused)), ("everything paused at", everything)]


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
        ("exported by", f"avit {info.avit_version}" + (
            "" if (model.producer_name, model.producer_version) == ("avit", info.avit_version)
            else f" ({model.producer_name} {model.producer_version})")),
        ("opsets", opsets),
        ("adaptive ops", ", ".join(f"{k} ×{v}" for k, v in sorted(ops.items())) or "none"),
        ("local functions", ", ".join(f"{f.domain}::{f.name}" for f in model.functions) or "none"),
        ("pause points", f"{list(info.pause_points)} (token heads after these block counts)"),
        ("policy", f"{info.policy}: {info.threshold_kind}"),
        ("default thresholds", _fmt(list(info.default_thresholds))),
        *_paused_rows(info),
        ("tokens", f"{info.num_patches} patch tokens, input {info.input_size[0]}×{info.input_size[1]} px"),
        ("output", f"logits, {info.output_activation}"),
        ("precision", info.precision),
        ("quantization", props.get("avit.quantization", "none")),
        ("ONNX Runtime optimization", props.get("avit.optimization", "none (portable export)")),
    ]
    io_rows: Rows = [(f"input {v.name}", _value_info(v)) for v in model.graph.input]
    io_rows += [(f"output {v.name}", _value_info(v)) for v in model.graph.output]
    sections = [("artifact", artifact), ("inputs / outputs", io_rows),
                ("config", _config_rows(info.config, skip=_SHOWN_IN_ARTIFACT))]
    if info.source:
        sections.append(("source", _meta_rows(info.source, info.config)))
    return sections


def describe_openvino(path: Path) -> list[tuple[str, Rows]]:
    """Sections for an OpenVINO IR written by ``avit export --openvino`` (``.xml`` + ``.bin``).

    Reads the model with OpenVINO (no compilation): avit's metadata from ``rt_info["framework"]``, the
    inputs and outputs, the weights' element types and how many nodes are marked to keep float32.

    Raises:
        ArtifactError: no ``.bin`` beside it, not an IR, or no avit metadata.
        BackendUnavailableError: OpenVINO is not installed.
    """
    from avit.errors import BackendUnavailableError
    from avit.metadata import ModelInfo

    weights = path.with_suffix(".bin")
    if not weights.is_file():
        raise ArtifactError(f"{path} has no weights file {weights.name} beside it")
    try:
        import openvino as ov
    except ImportError:
        raise BackendUnavailableError(f"OpenVINO is not installed: pip install 'avit[openvino]' (to read {path.name})") from None
    try:
        model = ov.Core().read_model(str(path))
    except Exception as exc:  # OpenVINO raises RuntimeError with multi-line reports
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ArtifactError(f"{path} is not an OpenVINO IR: {first}") from exc
    props = {}
    if model.has_rt_info("framework"):
        props = {str(k): v.astype(str) for k, v in model.get_rt_info("framework").astype(dict).items()}
    info = ModelInfo.from_props(props, where=str(path))
    ops = model.get_ordered_ops()
    weight_types = Counter(n.get_output_element_type(0).get_type_name() for n in ops if n.get_type_name() == "Constant" and n.get_output_partial_shape(0).rank.get_length() >= 2)
    marked = sum(1 for n in ops if "DisablePrecisionConversion_0" in n.get_rt_info().keys())
    artifact: Rows = [
        ("file", f"{path} ({os.path.getsize(path) / 1e6:.1f} MB) + {weights.name} ({os.path.getsize(weights) / 1e6:.1f} MB)"),
        ("kind", f"OpenVINO IR, {info.variant}"),
        ("exported by", f"avit {info.avit_version}, read with OpenVINO {ov.__version__}"),
        ("weights", ", ".join(f"{k} ×{v}" for k, v in sorted(weight_types.items())) or "none"),
        ("operations", f"{len(ops)} ({len(Counter(n.get_type_name() for n in ops))} types)"),
        ("kept float32 under bf16", f"{marked} nodes (token heads and selection)"),
        ("pause points", f"{list(info.pause_points)} (token heads after these block counts)"),
        ("policy", f"{info.policy}: {info.threshold_kind}"),
        ("default thresholds", _fmt(list(info.default_thresholds))),
        *_paused_rows(info),
        ("tokens", f"{info.num_patches} patch tokens, input {info.input_size[0]}×{info.input_size[1]} px"),
        ("output", f"logits, {info.output_activation}"),
        ("precision", f"{info.precision} (OpenVINO compiles at inference precision f32 or bf16)"),
    ]
    io_rows: Rows = [(f"input {v.get_any_name()}", f"{v.get_element_type().get_type_name()} {v.get_partial_shape()}") for v in model.inputs]
    io_rows += [(f"output {v.get_any_name()}", f"{v.get_element_type().get_type_name()} {v.get_partial_shape()}") for v in model.outputs]
    sections = [("artifact", artifact), ("inputs / outputs", io_rows),
                ("config", _config_rows(info.config, skip=_SHOWN_IN_ARTIFACT))]
    if info.source:
        sections.append(("source", _meta_rows(info.source, info.config)))
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
    meta_rows = _meta_rows(meta, payload["config"])
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
    if path.suffix.lower() == ".xml":
        return describe_openvino(path)
    if path.suffix.lower() in (".ckpt", ".pt", ".pth"):
        return describe_checkpoint(path)
    raise ArtifactError(f"{path} is not an avit artifact (expected .onnx, .xml (OpenVINO IR) or .ckpt)")
