"""avit ONNX → OpenVINO IR (``model.openvino.xml`` + ``.bin``), checked before it appears.

The IR is the avit ONNX export with its model-local functions inlined (OpenVINO's ONNX frontend does
not expand them), converted by OpenVINO's ONNX frontend, its token heads marked to stay float32 under
bf16 (:func:`avit.runtime.openvino_backend.mark_token_heads`), avit's metadata in
``rt_info["framework"]`` (where ``model->get_rt_info<ov::AnyMap>("framework")`` finds it in C++), and
float32 weights (``ov.save_model(..., compress_to_fp16=False)``; OpenVINO stores fp16 by default).

It is a file of its own: the TensorRT path needs the ONNX with its functions (the plugins replace them).

Check (the parity harness, :mod:`avit.evaluation.parity`): with the PyTorch model at hand (``avit export
m.ckpt --openvino``), the ONNX export's own check (:func:`avit.exporter.parity.check_parity`: nothing /
everything paused, probed middle and deep thresholds, last point only, batches 1 and 3; max |Δlogits| ≤
``atol`` and equal ``tokens_kept``), OpenVINO f32 in place of ONNX Runtime; from an ``.onnx`` alone,
OpenVINO f32 against ONNX Runtime on that file at the same kinds of settings.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from avit.errors import ArtifactError, ExportError, InputError
from avit.evaluation.parity import (
    ParityRow,
    compare,
    failure_message,
    probe_stable_threshold,
    session_runner,
    threshold_settings,
)
from avit.metadata.onnx_file import read_onnx


@dataclasses.dataclass
class OpenVINOExportReport:
    """Result of :func:`export_openvino`.

    Attributes:
        path: The IR's ``.xml``; ``weights``: its ``.bin``.
        parity: One row per (batch, thresholds) checked; empty when the check was skipped.
        reference: What the IR was checked against: ``"pytorch"`` or ``"onnxruntime"`` (or ``"none"``).
        nodes_marked: Nodes of the token heads and select ops marked to keep float32 under bf16.
        seconds: Conversion and writing (s); ``check_seconds``: the parity check (s).
        size_bytes: ``.xml`` plus ``.bin``.
    """

    path: Path
    weights: Path
    parity: list[ParityRow]
    reference: str
    nodes_marked: int
    seconds: float
    check_seconds: float
    size_bytes: int


def _onnxruntime_parity(source: Path, candidate: Path, atol: float, images: np.ndarray | None, log) -> list[ParityRow]:
    """OpenVINO f32 (``candidate``) against ONNX Runtime on ``source`` with the parity harness: nothing
    paused, the defaults, everything paused, the last point only, and two thresholds probed on ONNX
    Runtime to lie away from every token score (:func:`~avit.evaluation.parity.probe_stable_threshold`);
    batches 1 and 3."""
    from avit.runtime import AdaptiveSession

    reference = AdaptiveSession(source, calibration=False)
    session = AdaptiveSession(candidate, calibration=False, inference_precision="f32")  # the IR's parity is f32's
    info = reference.info
    if images is None:
        images = np.random.default_rng(0).standard_normal((3, info.config["in_chans"], *info.input_size)).astype(np.float32)
    run_ref = session_runner(reference)
    settings = threshold_settings(
        info, probe=lambda f: probe_stable_threshold(run_ref, info, images, f), last_only=True
    )
    return compare(session_runner(session), run_ref, images, settings, (1, 3), atol=atol, log=log)


def export_openvino(
    onnx_path: str | os.PathLike,
    output: str | os.PathLike | None = None,
    *,
    model=None,
    check: bool = True,
    atol: float = 1e-4,
    parity_images: np.ndarray | None = None,
    log: Callable[[str], None] | None = None,
) -> OpenVINOExportReport:
    """Write the OpenVINO IR of an avit fp32 ONNX export, atomically, after its parity check.

    Args:
        onnx_path: The avit ``.onnx`` (fp32, not quantized).
        output: The IR's ``.xml``; default ``<model>.openvino.xml`` beside the ONNX file.
        model: The PyTorch :class:`~avit.models.AdaptiveViT` it was exported from: the check compares
            with it (as the ONNX export does); None: with ONNX Runtime on ``onnx_path``.
        check: Run the parity check (OpenVINO f32, CPU) before the files appear.
        atol: Largest allowed max |Δlogits|.
        parity_images: float32 ``[n >= 3, C, H, W]`` images for the check; default: seeded noise.
        log: Progress messages (one line each).

    Returns:
        :class:`OpenVINOExportReport`.

    Raises:
        InputError: ``output`` does not end in ``.xml``.
        ArtifactError: ``onnx_path`` is missing or not an avit ONNX model.
        ExportError: a precision other than fp32, a quantized model, a graph OpenVINO cannot convert,
            or a failed parity check (then nothing is left at ``output``).
        BackendUnavailableError: OpenVINO is not installed.
    """
    from avit.runtime.openvino_backend import PRECISE_KEY, bin_path, import_openvino, ir_path, model_from_onnx, save_ir

    say = log or (lambda msg: None)
    source = Path(onnx_path)
    xml = Path(output) if output is not None else ir_path(source)
    if xml.suffix.lower() != ".xml":
        raise InputError(f"the OpenVINO IR is an .xml file (with its .bin beside it), got {xml}")
    proto, info, props = read_onnx(source)
    if info.precision != "fp32" or any(k.startswith("avit.quantization") for k in props):
        raise ExportError(f"{source} is a {info.precision}{' quantized' if 'avit.quantization' in props else ''} model; "
                          "the OpenVINO IR is made from the fp32 export (OpenVINO picks its own inference precision)")
    import_openvino()
    t0 = time.perf_counter()
    try:
        ov_model = model_from_onnx(proto)
    except ArtifactError as exc:
        raise ExportError(f"{source.name}: {exc}") from exc
    marked = sum(1 for n in ov_model.get_ordered_ops() if PRECISE_KEY in n.get_rt_info().keys())
    xml.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f".{xml.stem}.", dir=xml.parent))
    try:
        tmp_xml = folder / xml.name
        save_ir(ov_model, tmp_xml)
        seconds = time.perf_counter() - t0
        say(f"converted {source.name} to OpenVINO IR in {seconds:.1f} s ({marked} token-head nodes kept float32 under bf16)")
        parity: list[ParityRow] = []
        reference = "none"
        t1 = time.perf_counter()
        if check:
            if model is not None:
                from avit.exporter.parity import check_parity  # PyTorch: only when the model is at hand

                reference = "pytorch"
                parity = check_parity(model, str(tmp_xml), images=parity_images, atol=atol, log=lambda m: say(f"OpenVINO {m}"))
            else:
                reference = "onnxruntime"
                parity = _onnxruntime_parity(source, tmp_xml, atol, parity_images, lambda m: say(f"OpenVINO {m}"))
                message = failure_message(parity, atol=atol, what=f"OpenVINO parity check against ONNX Runtime on {source.name}")
                if message:
                    raise ExportError(message)
        check_seconds = time.perf_counter() - t1
        os.replace(bin_path(tmp_xml), bin_path(xml))  # the weights first: the .xml appears last
        os.replace(tmp_xml, xml)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    size = xml.stat().st_size + bin_path(xml).stat().st_size
    return OpenVINOExportReport(xml, bin_path(xml), parity, reference, marked, seconds, check_seconds, size)
