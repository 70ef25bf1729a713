"""Offline graph optimization of an exported avit model for ONNX Runtime: transformer fusions, saved once.

Two passes, both from the libraries that own them:

1. **Transformer fusions** — onnxscript's ``optimize_for_ort`` (``onnxscript.rewriter.ort_fusions``):
   the explicit attention the exporter writes (``MatMul → Mul → Softmax → MatMul``, written out because
   the active-token count is data-dependent) becomes ``com.microsoft::MultiHeadAttention``, residual
   ``Add`` + ``LayerNormalization`` becomes ``SkipLayerNormalization`` and bias + erf-GELU becomes
   ``BiasGelu``. The attention fusion fires in the full-grid blocks *and* in the active-token blocks
   after each pause point (their sequence length is a data-dependent dim, which the pattern does not
   constrain), including padded batches, whose key-padding mask becomes the fused op's attention bias.
   On the real model (ViT-S/14, 12 blocks): 12 attention, 21 skip-LayerNorm and 12 bias-GELU fusions.
2. **ONNX Runtime's own graph optimizations** at ``level`` (``SessionOptions.optimized_model_filepath``):
   constant folding, ``FusedMatMul`` and the like; the result is saved so a session starts without
   redoing them. ``"extended"`` (default) stays valid on any x86/ARM CPU; ``"all"`` adds NCHWc layout
   transforms that ONNX Runtime documents as specific to the machine that optimized the model.

The adaptive ops are inlined into standard ops (their lowerings); inputs (``images``,
``pause_thresholds``), outputs and every ``avit.*`` metadata entry are unchanged, and
``avit.optimization`` records what was done. The result contains ONNX Runtime contrib ops, so it is an
ONNX Runtime artifact: TensorRT engines are built from the portable export instead
(:func:`avit.exporter.tensorrt.build_engine` refuses optimized files).

Before anything is written, the optimized graph is run against the source in ONNX Runtime
(:func:`compare_onnx`): equal token counts and max |Δlogits| ≤ ``atol`` at nothing paused, everything
paused and a threshold no token score lies near.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx

from avit._io import atomic_write
from avit.errors import ArtifactError, ExportError, InputError
from avit.evaluation.parity import ParityRow, Runner, compare, failure_message, probe_stable_threshold, threshold_settings
from avit.metadata.onnx_file import read_onnx, set_metadata
from avit.metadata import ModelInfo

#: Metadata key recording an offline optimization (JSON: fusions, level, onnxruntime version).
METADATA_KEY = "avit.optimization"
#: ``level`` values and the ONNX Runtime graph optimization levels they name.
LEVELS = {"basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}


@dataclasses.dataclass
class OptimizeReport:
    """Result of :func:`optimize_onnx`.

    Attributes:
        path: The optimized ONNX file.
        fusions: Fusion name → times applied (onnxscript ``optimize_for_ort``; zero counts omitted).
        level: ONNX Runtime optimization level saved into the file.
        parity: The checks run before writing (empty with ``check=False``).
        seconds: Wall time of the whole optimization, in seconds.
        size_bytes: File size.
    """

    path: Path
    fusions: dict[str, int]
    level: str
    parity: list[ParityRow]
    seconds: float
    size_bytes: int


def _session(path: str | os.PathLike, level: str = "all", threads: int = 0):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, LEVELS[level])
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def _runner(session) -> Runner:
    def run(images: np.ndarray, thresholds: np.ndarray | None, dtop_k: int | None):
        feeds = {"images": images} if thresholds is None else {"images": images, "pause_thresholds": thresholds}
        if dtop_k is not None:
            feeds["dtop_k"] = np.asarray(dtop_k, np.int64)
        logits, kept = session.run(["logits", "tokens_kept"], feeds)
        return logits, kept

    return run


def compare_onnx(
    reference: str | os.PathLike,
    candidate: str | os.PathLike,
    images: np.ndarray,
    *,
    atol: float = 1e-4,
    min_agreement: float | None = None,
    threads: int = 0,
) -> list[ParityRow]:
    """Run two avit ONNX models on the same images in ONNX Runtime CPU and compare them.

    Settings (:func:`avit.evaluation.parity.threshold_settings`): nothing paused, everything paused,
    and (score-threshold policies, float graphs) a probed threshold no token score lies near
    (:func:`~avit.evaluation.parity.probe_stable_threshold`); a static model is compared once.

    Float graphs must match to ``atol``. Quantized graphs (``min_agreement`` given) cannot: ONNX Runtime
    runs the same QDQ graph through different int8 kernels depending on which fusions preceded
    (``QLinearMatMul``, which rounds its output to int8, or ``MatMulIntegerToFloat``), measured
    0.49 max |Δlogits| between two int8 executions of the real model, as large as int8-vs-fp32 itself.
    They must agree on ``min_agreement`` of the output pixels' labels instead (measured between the two
    int8 executions of the real model: 99.0–99.7 %), and keep equal token
    counts at nothing / everything paused (no stable middle: int8 noise moves scores by more than any gap).

    Args:
        reference, candidate: ONNX files with the same inputs and avit metadata.
        images: float32 ``[B, C, H, W]`` preprocessed images.
        atol: Largest allowed max |Δlogits| (float graphs).
        min_agreement: Smallest allowed pixel-label agreement; None = the graphs are float (use ``atol``).
        threads: ONNX Runtime intra-op threads (0: its default).

    Returns:
        One :class:`~avit.evaluation.parity.ParityRow` per setting, the whole of ``images`` as one batch.
    """
    ref, cand = _session(reference, threads=threads), _session(candidate, threads=threads)
    info = ModelInfo.from_props(dict(ref.get_modelmeta().custom_metadata_map), where=str(reference))
    run_ref = _runner(ref)
    # Quantized graphs get no probed middle: int8 noise moves scores by more than any gap.
    probe = None if min_agreement is not None else (lambda f: probe_stable_threshold(run_ref, info, images, f))
    settings = threshold_settings(info, probe=probe, default=False)
    settings = [s for s in settings if s.label != "deep"]
    return compare(_runner(cand), run_ref, images, settings, (images.shape[0],), atol=atol, min_agreement=min_agreement)


def parity_images(info: ModelInfo, count: int = 2, seed: int = 0) -> np.ndarray:
    """float32 ``[count, C, H, W]``: held-out photos when installed (real token heads pause real tokens),
    else seeded Gaussian noise."""
    from avit.data import find_photos
    from avit.data.images import load_batch

    photos = find_photos("heldout")[:count]
    if len(photos) == count and info.config.get("in_chans", 3) == 3:
        return load_batch(photos, info.input_size, info.mean, info.std)
    rng = np.random.default_rng(seed)
    c = info.config.get("in_chans", 3)
    return rng.standard_normal((count, c, *info.input_size)).astype(np.float32)


def optimize_onnx(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    level: str = "extended",
    check: bool = True,
    atol: float = 1e-4,
    min_agreement: float = 0.98,
    images: np.ndarray | None = None,
    log: Callable[[str], None] | None = None,
) -> OptimizeReport:
    """Write an ONNX Runtime-optimized copy of the avit model ``src`` to ``dst`` (atomically).

    See the module docstring for what changes. Measured on the real model (2 CPU cores, batch 1,
    ``benchmarks/cpu_deployment.py``): fp32 within −4 %…+3 % of the unoptimized export (no measurable
    gain), int8 3–10 % faster.

    Args:
        src: ONNX model exported by avit (fp32, fp16 or quantized by :func:`~avit.exporter.quantize.quantize_onnx`).
        dst: Output path (may equal ``src``).
        level: ``"basic"`` | ``"extended"`` | ``"all"`` — ONNX Runtime graph optimization level saved.
        check: Compare against ``src`` in ONNX Runtime before writing (:func:`compare_onnx`).
        atol: Largest allowed max |Δlogits| in that check (float graphs).
        min_agreement: Quantized graphs: smallest allowed pixel-label agreement with ``src`` in that
            check (see :func:`compare_onnx` for why int8 graphs are not compared to ``atol``).
        images: float32 ``[B, C, H, W]`` for the check; default :func:`parity_images`.
        log: Called with one line per step.

    Raises:
        InputError: unknown ``level``.
        ArtifactError: ``src`` missing, not an avit ONNX model, or already optimized.
        ExportError: a fusion or ONNX Runtime failed on the graph, or the parity check failed (nothing written).
    """
    if level not in LEVELS:
        raise InputError(f"optimization level {level!r} is not one of {', '.join(LEVELS)}")
    say = log or (lambda _m: None)
    src = Path(src)
    start = time.perf_counter()
    proto, info, props = read_onnx(src)
    if METADATA_KEY in props:
        raise ArtifactError(f"{src} is already optimized ({props[METADATA_KEY]})")
    import onnx_ir as ir
    import onnxruntime as ort
    from onnxscript.rewriter.ort_fusions import optimize_for_ort

    with tempfile.TemporaryDirectory() as work:
        fused_path, saved_path = Path(work) / "fused.onnx", Path(work) / "saved.onnx"
        try:
            model = ir.from_proto(proto)  # the file is read once
            del proto
            model, counts = optimize_for_ort(model)
            ir.save(model, str(fused_path))
        except Exception as exc:  # onnxscript raises many types from its rewriter and optimizer
            raise ExportError(f"transformer fusions failed on {src.name}: {type(exc).__name__}: {str(exc)[:200]}") from exc
        fusions = {k: int(v) for k, v in counts.items() if v}
        say("fusions: " + (", ".join(f"{k} {v}" for k, v in fusions.items()) or "none matched"))
        try:
            options = ort.SessionOptions()
            options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, LEVELS[level])
            options.optimized_model_filepath = str(saved_path)
            options.log_severity_level = 3
            ort.InferenceSession(str(fused_path), sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ExportError(f"ONNX Runtime could not load the fused graph of {src.name}: {str(exc).strip().splitlines()[0][:200]}") from exc
        saved = onnx.load(str(saved_path))
        record = json.dumps({"fusions": fusions, "level": level, "onnxruntime": ort.__version__,
                             "execution_provider": "CPUExecutionProvider"})
        # every metadata entry kept, whatever the savers did with them, plus the record
        set_metadata(saved, {**props, METADATA_KEY: record})
        onnx.save(saved, str(saved_path))
        parity: list[ParityRow] = []
        if check:
            x = parity_images(info) if images is None else images
            quantized = "avit.quantization" in props
            parity = compare_onnx(src, saved_path, x, atol=atol, min_agreement=min_agreement if quantized else None)
            for row in parity:
                say(f"parity {row.describe()}")
            message = failure_message(parity, atol=atol, what=f"parity check against {src.name}")
            if message:
                raise ExportError(f"{message}; nothing written")
        path = atomic_write(dst, lambda tmp: Path(tmp).write_bytes(saved_path.read_bytes()))
    return OptimizeReport(path, fusions, level, parity, time.perf_counter() - start, path.stat().st_size)


def optimization_of(props: dict[str, str]) -> dict | None:
    """The ``avit.optimization`` record of an artifact's metadata, or None for a portable export."""
    text = props.get(METADATA_KEY)
    return json.loads(text) if text else None


__all__: Sequence[str] = ("LEVELS", "METADATA_KEY", "OptimizeReport", "compare_onnx", "optimization_of",
                          "optimize_onnx", "parity_images")
