"""The export chain behind ``avit export``: checkpoint → ONNX (→ OpenVINO IR) → int8 → ONNX Runtime-optimized → TensorRT.

:func:`export_chain` checks the options together (before anything runs), names every output after the
source (``m.ckpt`` → ``m.onnx``, ``m.static.onnx``, ``m.fp16.onnx``; then ``<onnx>.openvino.xml`` + ``.bin``
from the fp32 ONNX, ``<onnx>.int8.onnx`` /
``.int8-dynamic.onnx``, ``<…>.ort.onnx``, ``<…>.engine``) and runs the stages in order, each one starting
from the previous one's file. Messages name the options as ``avit export`` spells them. Every stage writes atomically after its own check, so a failure leaves the
files of the stages before it, complete, and nothing of its own.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from avit.errors import AvitError, InputError

#: ``quantize=`` values: static QDQ (TensorRT's explicit-quantization form) or dynamic (ONNX Runtime only).
QUANTIZE_MODES = {"int8": "static", "int8-dynamic": "dynamic"}
PRECISIONS = ("fp32", "fp16")


@dataclasses.dataclass
class ChainReport:
    """What :func:`export_chain` wrote, in order; None for stages not run.

    Attributes:
        onnx: The ONNX model every later stage started from (exported now, or given).
        export: :class:`~avit.exporter.onnx_export.ExportReport` when a checkpoint was exported.
        openvino: :class:`~avit.exporter.openvino_export.OpenVINOExportReport` (``--openvino``).
        quantized: The int8 model (``--quantize``).
        optimize: :class:`~avit.exporter.optimize.OptimizeReport` (``--optimize``).
        engine: :class:`~avit.exporter.tensorrt.EngineReport` (``--trt``).
    """

    onnx: Path
    export: Any = None
    openvino: Any = None
    quantized: Path | None = None
    optimize: Any = None
    engine: Any = None

    @property
    def written(self) -> list[Path]:
        """Every file written, in order (an engine's sidecar included)."""
        paths = [self.export.path] if self.export is not None else []
        paths += [self.openvino.weights, self.openvino.path] if self.openvino is not None else []
        paths += [self.quantized] if self.quantized is not None else []
        paths += [self.optimize.path] if self.optimize is not None else []
        if self.engine is not None:
            paths += [self.engine.engine_path, self.engine.sidecar_path]
        return paths


def default_onnx_path(checkpoint: str | os.PathLike, *, static: bool = False, precision: str = "fp32") -> Path:
    """``m.ckpt`` → ``m.onnx`` / ``m.static.onnx`` / ``m.fp16.onnx`` / ``m.static.fp16.onnx``."""
    tag = (".static" if static else "") + (".fp16" if precision == "fp16" else "")
    return Path(checkpoint).with_suffix(f"{tag}.onnx")


def _check_options(source: Path, precision, quantize, optimize, trt, openvino=False) -> None:
    if precision not in (None, *PRECISIONS):
        raise InputError(f"--precision must be fp32 or fp16, got {precision!r}")
    if quantize not in (None, *QUANTIZE_MODES):
        raise InputError(f"--quantize must be int8 or int8-dynamic, got {quantize!r}")
    if quantize and precision == "fp16":
        raise InputError("--quantize starts from the fp32 export; drop --precision fp16")
    if quantize == "int8-dynamic" and trt:
        raise InputError("--quantize int8-dynamic is ONNX Runtime only; for --trt use --quantize int8 (static QDQ)")
    if openvino and precision == "fp16":
        raise InputError("--openvino starts from the fp32 export (OpenVINO picks its own inference precision); drop --precision fp16")
    if source.suffix.lower() == ".onnx" and not (trt or quantize or optimize or openvino):
        raise InputError(
            f"{source} is already ONNX; pass --trt, --quantize, --optimize or --openvino to derive from it, or give a .ckpt"
        )
    if source.suffix.lower() == ".onnx" and not source.is_file():
        raise InputError(f"model not found: {source}")


def _onnx_stage(source: Path, output, *, static, check, atol, precision, log):
    """The chain's first stage: export the checkpoint ``source`` to ONNX, or take ``source`` if it is an ONNX
    model (of ``precision``, when given). Returns ``(report, the exported network or None)``.

    Raises:
        InputError: an ONNX source of another precision. CheckpointError, ExportError: from the export.
    """
    if source.suffix.lower() == ".onnx":
        if precision is not None:
            from avit.metadata.onnx_file import read_onnx

            have = read_onnx(source)[1].precision
            if have != precision:
                raise InputError(f"{source} was exported as {have}; for --precision {precision} export it from the checkpoint")
        return ChainReport(onnx=source), None
    from avit.exporter.onnx_export import export_onnx
    from avit.models import load_checkpoint

    net, meta = load_checkpoint(source)
    if static:
        net = net.static_copy()
    precision = precision or "fp32"
    path = Path(output) if output is not None else default_onnx_path(source, static=static, precision=precision)
    exported = export_onnx(net, path, check=check, atol=atol, source=meta, precision=precision, log=log)
    return ChainReport(onnx=exported.path, export=exported), net


def export_chain(
    source: str | os.PathLike,
    output: str | os.PathLike | None = None,
    *,
    static: bool = False,
    check: bool = True,
    atol: float | None = None,
    precision: str | None = None,
    quantize: str | None = None,
    calib_images: str | os.PathLike | None = None,
    calib_count: int = 16,
    keep_fp32: str | None = None,
    optimize: bool = False,
    opt_level: str = "extended",
    openvino: bool = False,
    trt: bool = False,
    engine: str | os.PathLike | None = None,
    min_batch: int = 1,
    opt_batch: int | None = None,
    max_batch: int = 8,
    plugins: str | os.PathLike | None = None,
    timing_cache: str | os.PathLike | None = None,
    log: Callable[[str], None] | None = None,
) -> ChainReport:
    """Export a checkpoint (or start from an exported ONNX) and derive the requested artifacts.

    Args:
        source: ``.ckpt`` to export, or an avit ``.onnx`` to quantize / optimize / build an engine from.
        output: The ONNX file to write (default :func:`default_onnx_path`); ignored for an ONNX source.
        static: Export the same weights without pause points (the reference model).
        check, atol: Parity check of the export against PyTorch (see
            :func:`~avit.exporter.onnx_export.export_onnx`).
        precision: ``fp32`` (default) or ``fp16`` ONNX; for an ONNX source, the precision it must have.
        quantize: ``int8`` (static QDQ, calibrated on ``calib_images``: a folder, default the installed
            training photos, ``calib_count`` of them) or ``int8-dynamic``; ``keep_fp32`` is a regular
            expression of backbone layers left fp32 (:func:`~avit.exporter.quantize.quantize_onnx`).
        optimize, opt_level: Also write the ONNX Runtime-optimized graph
            (:func:`~avit.exporter.optimize.optimize_onnx`).
        openvino: Also write the OpenVINO IR of the fp32 ONNX (:func:`~avit.exporter.openvino_export.export_openvino`),
            checked against PyTorch when a checkpoint was exported, else against ONNX Runtime.
        trt, engine, min_batch, opt_batch, max_batch, plugins, timing_cache: Also build a TensorRT engine
            (:func:`~avit.exporter.tensorrt.build_engine`; ``opt_batch`` defaults to ``min_batch``).
        log: Progress lines.

    Returns:
        :class:`ChainReport`.

    Raises:
        InputError: options that do not go together, a missing source.
        CheckpointError, ExportError, ArtifactError: from the stages.
        BackendUnavailableError: TensorRT missing for ``trt`` (its message names the ONNX that is ready), or
            OpenVINO missing for ``openvino`` (checked before anything runs).
    """
    source = Path(source)
    _check_options(source, precision, quantize, optimize, trt, openvino)
    if openvino:
        from avit.runtime.openvino_backend import import_openvino

        import_openvino()  # before a long export: one line naming the extra to install
    report, net = _onnx_stage(source, output, static=static, check=check, atol=atol, precision=precision, log=log)
    current = report.onnx
    if openvino:
        from avit.exporter.openvino_export import export_openvino

        report.openvino = export_openvino(
            report.onnx, model=None if report.export is None else net, check=check, atol=atol if atol is not None else 1e-4, log=log
        )
    if quantize:
        from avit.data.files import image_files
        from avit.exporter.quantize import quantize_onnx

        mode = QUANTIZE_MODES[quantize]
        files = image_files(calib_images, split="train", limit=calib_count) if mode == "static" else None
        report.quantized = current = current.with_suffix(f".{quantize}.onnx")
        quantize_onnx(report.onnx, current, mode=mode, calibration_images=files, keep_fp32=keep_fp32)
    if optimize:
        from avit.exporter.optimize import optimize_onnx

        report.optimize = optimize_onnx(current, current.with_suffix(".ort.onnx"), level=opt_level, log=log)
    if trt:  # from the portable graph: the optimized one holds ONNX Runtime contrib ops
        from avit.exporter.tensorrt import build_engine

        try:
            report.engine = build_engine(
                report.quantized or report.onnx, engine, plugin_library=plugins, min_batch=min_batch,
                opt_batch=opt_batch if opt_batch is not None else min_batch, max_batch=max_batch,
                timing_cache=timing_cache, log=log,
            )
        except AvitError as exc:
            raise type(exc)(f"{exc}; the ONNX model is ready: {report.quantized or report.onnx}") from exc
    return report
