"""Checkpoint → ONNX with real token removal, thresholds as a graph input, metadata and a parity check.

The graph (opset :data:`~avit.ops.ONNX_OPSET`, dynamo exporter)::

    inputs   images            float32 [batch, C, H, W]   normalised RGB
             pause_thresholds  float32 [P]                per pause point (absent when P = 0)
             dtop_k            int64   []                 policy dtop only, optional: an initializer
                                                          holding config.dtop_k that a caller may feed
    outputs  logits            float32 [batch, num_classes, H, W]
             tokens_kept       int64   [batch, P]         active patch tokens after each pause point

Adaptive ops appear as ``avit::Avit*`` nodes backed by model-local functions (see :mod:`avit.ops`).
The file is written atomically: it appears only after the parity check passed.

``precision="fp16"`` exports the same graph with float16 weights and activations (for TensorRT's
strongly typed networks, where the ONNX types decide the precision): the model is converted with
``Module.half()`` before tracing, and casts at the boundary keep ``images``, ``pause_thresholds`` and
``logits`` float32. Token scores are computed in float32 by every lowering of the select ops.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import logging
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import torch

from avit import __version__
from avit._io import atomic_write
from avit.errors import ExportError
from avit.exporter.parity import ParityRow, check_parity
from avit.metadata import build_metadata
from avit.metadata.onnx_file import set_metadata
from avit.models import AdaptiveViT
from avit.ops import ONNX_OPSET, attach_functions, custom_translation_table

INPUT_NAMES = ("images", "pause_thresholds")
#: Optional input of ``dtop`` models: context tokens kept per class. It is a graph input *and* an
#: initializer (ONNX's overridable initializer): ONNX Runtime lists only ``images`` / ``pause_thresholds``
#: as required inputs and uses the stored default unless the caller feeds ``dtop_k``; TensorRT's parser
#: treats it as a constant (the default is built into the engine).
DTOP_K_INPUT = "dtop_k"
OUTPUT_NAMES = ("logits", "tokens_kept")
#: Export precisions (of weights and activations; graph inputs and outputs are float32 in both).
PRECISIONS = ("fp32", "fp16")
#: Default parity tolerance (max |Δlogits| against PyTorch float32) per precision. fp16 (10-bit
#: mantissa, unit roundoff 4.9e-4) rounds every weight and stored activation; through a ViT's blocks
#: that compounds to ~1e-3 of the logits' scale (measured: docs/tensorrt.md), so fp16 gets 5e-2.
DEFAULT_ATOL = {"fp32": 1e-4, "fp16": 5e-2}
#: Smallest gap between token scores that a probed parity threshold sits in, per precision: wide enough
#: that the precision's rounding of the token-head logits cannot move a score across the threshold.
PROBE_MIN_GAP = {"fp32": 1e-4, "fp16": 2e-2}


@dataclasses.dataclass
class ExportReport:
    """Result of :func:`export_onnx`.

    Attributes:
        path: The ONNX file written.
        adaptive_ops: ``avit`` op types in the graph.
        parity: One row per (batch, thresholds) checked; empty when the check was skipped.
        export_seconds: Time spent in ``torch.onnx.export`` (s).
        check_seconds: Time spent in the parity check (s).
        size_bytes: File size.
    """

    path: Path
    adaptive_ops: list[str]
    parity: list[ParityRow]
    export_seconds: float
    check_seconds: float
    size_bytes: int


@contextlib.contextmanager
def _quiet_exporter():
    """Silence the exporter's progress prints and known-harmless warnings (they are not the user's concern)."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnx_ir", "onnxscript", "torch.export", "torch._export")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


class HalfPrecision(torch.nn.Module):
    """``model`` in float16 behind a float32 boundary: images are cast to float16 on the way in, logits
    back to float32 on the way out; pause thresholds stay float32 (the select ops take them as float32).

    The wrapped copy's ``default_thresholds`` buffer is kept float32 too; ``model`` itself is unchanged.
    """

    def __init__(self, model: AdaptiveViT) -> None:
        super().__init__()
        self.model = copy.deepcopy(model).half()
        self.model.default_thresholds = model.default_thresholds.float()
        self.model.default_dtop_k = model.default_dtop_k.clone()

    def forward(
        self, images: torch.Tensor, thresholds: torch.Tensor | None = None, dtop_k: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        logits, tokens_kept = self.model(images.to(torch.float16), thresholds, dtop_k)
        return logits.float(), tokens_kept


def to_onnx_proto(model: AdaptiveViT, source: dict | None = None, precision: str = "fp32") -> onnx.ModelProto:
    """Trace ``model`` into an ONNX ModelProto with local functions and avit metadata (nothing written).

    Args:
        model: The model (float32 weights).
        source: Provenance stored as ``avit.source``.
        precision: ``"fp32"`` or ``"fp16"`` (see the module docstring); stored as ``avit.precision``.

    Raises:
        ExportError: the exporter failed (message names the failing step), or unknown ``precision``.
    """
    if precision not in PRECISIONS:
        raise ExportError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    model = model.eval().set_attention_impl("explicit")
    traced = model if precision == "fp32" else HalfPrecision(model).eval()
    cfg = model.config
    images = torch.randn(2, cfg.in_chans, *cfg.img_size)
    has_pause = model.num_pause_points > 0
    args = (images, model.default_thresholds.clone()) if has_pause else (images,)
    dynamic = ({0: torch.export.Dim("batch")}, None) if has_pause else ({0: torch.export.Dim("batch")},)
    names = list(INPUT_NAMES[: len(args)])
    with_k = has_pause and cfg.policy == "dtop"
    if with_k:
        args, dynamic, names = (*args, model.default_dtop_k.clone()), (*dynamic, None), [*names, DTOP_K_INPUT]
    try:
        with _quiet_exporter():
            program = torch.onnx.export(
                traced,
                args,
                dynamo=True,
                input_names=names,
                output_names=list(OUTPUT_NAMES),
                dynamic_shapes=dynamic,
                custom_translation_table=custom_translation_table(),
                opset_version=ONNX_OPSET,
                verbose=False,
            )
            proto = program.model_proto
    except Exception as exc:  # the exporter raises many types; report one line, keep the cause chained
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"torch.onnx.export failed: {first}") from exc
    ops = attach_functions(proto)
    if with_k:  # the default k as an overridable initializer (see DTOP_K_INPUT)
        proto.graph.initializer.append(onnx.numpy_helper.from_array(np.array(cfg.dtop_k, dtype=np.int64), DTOP_K_INPUT))
    meta = build_metadata(
        cfg.to_dict(),
        avit_version=__version__,
        adaptive_ops=ops,
        nothing_paused=cfg.nothing_paused_value,
        everything_paused=cfg.everything_paused_value,
        default_thresholds=list(cfg.thresholds_or_default),
        source=source,
        precision=precision,
    )
    del proto.metadata_props[:]
    set_metadata(proto, meta)
    proto.producer_name, proto.producer_version = "avit", __version__
    try:
        onnx.checker.check_model(proto, full_check=False)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"exported graph is not valid ONNX: {str(exc).splitlines()[0]}") from exc
    return proto


def export_onnx(
    model: AdaptiveViT,
    output: str | os.PathLike,
    *,
    check: bool = True,
    atol: float | None = None,
    parity_images: np.ndarray | None = None,
    source: dict | None = None,
    precision: str = "fp32",
    log: Callable[[str], None] | None = None,
) -> ExportReport:
    """Export ``model`` to ONNX at ``output`` (atomically), then verify it against PyTorch.

    Args:
        model: The adaptive (or static, P = 0) model.
        output: Destination ``.onnx`` path.
        check: Run the parity check (PyTorch eager vs ONNX Runtime CPU) before the file appears:
            thresholds "nothing paused", "everything paused", a data-driven middle setting and
            "pause only at the last point", at batch 1 and 3.
        atol: Largest allowed max-abs difference of the logits; None = :data:`DEFAULT_ATOL` of the
            precision (an fp16 export is checked against the float32 PyTorch model).
        parity_images: float32 ``[n >= 3, C, H, W]`` images for the check; default: seeded noise.
        source: Extra provenance stored as ``avit.source`` (e.g. checkpoint metadata).
        precision: ``"fp32"`` or ``"fp16"`` weights and activations (I/O stays float32).
        log: Progress messages (one line each).

    Returns:
        :class:`ExportReport`.

    Raises:
        ExportError: export failed, or logits differ by more than ``atol`` / token counts differ
            (then nothing is left at ``output``).
    """
    say = log or (lambda msg: None)
    t0 = time.perf_counter()
    say(
        f"exporting {model.config.name or 'model'} ({model.num_pause_points} pause points, policy "
        f"{model.config.policy}, {precision})"
    )
    proto = to_onnx_proto(model, source, precision)
    atol = DEFAULT_ATOL[precision] if atol is None else atol
    export_seconds = time.perf_counter() - t0
    ops = sorted({n.op_type for n in proto.graph.node if n.domain == "avit"})
    parity: list[ParityRow] = []
    check_seconds = 0.0

    def write(tmp: str) -> None:
        nonlocal parity, check_seconds
        onnx.save(proto, tmp)
        if check:
            t1 = time.perf_counter()
            parity = check_parity(
                model, tmp, images=parity_images, atol=atol, min_gap=PROBE_MIN_GAP[precision], log=say
            )
            check_seconds = time.perf_counter() - t1

    path = atomic_write(output, write)
    return ExportReport(path, ops, parity, export_seconds, check_seconds, path.stat().st_size)
