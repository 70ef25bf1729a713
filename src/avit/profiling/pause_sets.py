"""Which tokens pause: read the active-token sets out of an exported graph and compare two graphs.

``tokens_kept`` only counts tokens; whether a transformed graph (int8, fused) pauses the *same* tokens
as the fp32 export needs the sets. An avit export keeps, after each pause point, the grid positions of
its active tokens (``pos = GatherElements(pos, keep_idx)`` right after the select op, see
:mod:`avit.models.vit`); :func:`expose_pause_positions` adds those tensors and the select op's counts
as graph outputs of an in-memory copy, so the sets come from the very graph being measured.

Used by ``benchmarks/cpu_deployment.py`` and the quantization tests to report paused-token-set
agreement of int8 with fp32 (issue: quantize the backbone, keep the pause decisions).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import numpy as np
import onnx

from avit.errors import ArtifactError
from avit.metadata.onnx_file import read_onnx

#: The select ops whose ``keep_idx`` output picks the active tokens.
SELECT_OPS = ("AvitEntropySelect", "AvitKeepRatioSelect", "AvitClassContextSelect")


def expose_pause_positions(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[tuple[str, str]]]:
    """Copy of ``model`` with, per pause point, its active tokens' grid positions and counts as outputs.

    Returns:
        ``(model, [(positions, counts), ...])`` output names in pause-point order: positions int64
        ``[B, m]`` (first ``counts[b]`` entries valid), counts int64 ``[B]``.

    Raises:
        ArtifactError: no select op, or a select op whose ``keep_idx`` feeds no ``GatherElements``
            (not an avit export, or a graph whose adaptive ops were inlined, e.g. an optimized one).
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    selects = [n for n in out.graph.node if n.domain == "avit" and n.op_type in SELECT_OPS]
    if not selects:
        raise ArtifactError("no avit select op in the graph (token sets need the portable export, not an optimized one)")
    names = []
    for node in selects:
        pos = next((n.output[0] for n in out.graph.node if n.op_type == "GatherElements" and n.input[1] == node.output[0]), None)
        if pos is None:
            raise ArtifactError(f"select node {node.name} has no position gather after it")
        names.append((pos, node.output[1]))
        for name in (pos, node.output[1]):
            out.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.INT64, None))
    return out, names


def active_masks(
    path: str | os.PathLike,
    images: np.ndarray,
    thresholds: Sequence[float],
    threads: int = 0,
    *,
    backend: str = "onnxruntime",
    inference_precision: str = "f32",
) -> np.ndarray:
    """bool ``[P, B, N]``: whether patch token ``n`` of image ``b`` is still active after pause point ``p``.

    Runs ``path`` (an avit ONNX export, fp32 or quantized) one image at a time, in ONNX Runtime CPU or
    (``backend="openvino"``) in OpenVINO on the CPU at ``inference_precision`` — the same conversion
    as an IR written by ``avit export --openvino`` (:func:`avit.runtime.openvino_backend.model_from_onnx`,
    token heads marked), with the positions exposed as extra outputs.

    Args:
        path: ONNX model.
        images: float32 ``[B, C, H, W]``.
        thresholds: ``[P]`` pause thresholds.
        threads: ONNX Runtime intra-op / OpenVINO inference threads (0: the backend's default).
        backend: ``"onnxruntime"`` or ``"openvino"``.
        inference_precision: OpenVINO only: ``"f32"`` or ``"bf16"``.

    Raises:
        ArtifactError: see :func:`expose_pause_positions`.
        InputError: unknown backend.
        BackendUnavailableError: OpenVINO missing, or bf16 without native bfloat16.
    """
    model, info, _ = read_onnx(path)
    exposed, names = expose_pause_positions(model)
    flat = [n for pair in names for n in pair]
    t = np.asarray(thresholds, dtype=np.float32)
    if backend == "onnxruntime":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        session = ort.InferenceSession(exposed.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"])
        run = lambda x: session.run(flat, {"images": x, "pause_thresholds": t})  # noqa: E731
    elif backend == "openvino":
        from avit.runtime import openvino_backend as ovb

        core = ovb.import_openvino().Core()
        inference_precision = ovb.resolve_precision(core, inference_precision)
        compiled = ovb.compile_model(ovb.load_model(exposed, core, inference_precision), core, inference_precision, threads)
        request = compiled.create_infer_request()

        def run(x):
            request.infer({"images": x, "pause_thresholds": t})
            return [request.get_tensor(name).data.copy() for name in flat]
    else:
        from avit.errors import InputError

        raise InputError(f"backend {backend!r} is not one of onnxruntime, openvino")
    masks = np.zeros((len(names), len(images), info.num_patches), dtype=bool)
    for b in range(len(images)):
        values = run(images[b : b + 1])
        for p in range(len(names)):
            pos, count = values[2 * p][0], int(values[2 * p + 1][0])
            masks[p, b, pos[:count]] = True
    return masks


@dataclasses.dataclass
class PauseAgreement:
    """Paused-token sets of a candidate graph against a reference graph, per pause point.

    Attributes:
        decision_agreement: float ``[P]``: fraction of (image, token) pairs whose paused/active state
            after the pause point is the same in both graphs.
        paused_iou: float ``[P]``: |paused_ref ∩ paused_cand| / |paused_ref ∪ paused_cand| over all
            images (1.0 when neither pauses anything).
        paused_ref, paused_cand: int ``[P]``: tokens paused by that point, summed over the images.
    """

    decision_agreement: list[float]
    paused_iou: list[float]
    paused_ref: list[int]
    paused_cand: list[int]


def pause_agreement(
    reference: str | os.PathLike,
    candidate: str | os.PathLike,
    images: np.ndarray,
    thresholds: Sequence[float],
    threads: int = 0,
    *,
    reference_backend: str = "onnxruntime",
    candidate_backend: str = "onnxruntime",
    candidate_precision: str = "f32",
) -> PauseAgreement:
    """Compare which tokens two avit graphs (e.g. fp32 and int8), or one graph on two backends / at two
    precisions (e.g. OpenVINO f32 and bf16), pause at the same thresholds.

    Args:
        reference, candidate: ONNX exports with the same pause points (not optimized: see
            :func:`expose_pause_positions`).
        images: float32 ``[B, C, H, W]``.
        thresholds: ``[P]``.
        threads: ONNX Runtime intra-op / OpenVINO inference threads.
        reference_backend, candidate_backend: ``"onnxruntime"`` or ``"openvino"`` (see :func:`active_masks`).
        candidate_precision: The candidate's OpenVINO inference precision (the reference runs f32).

    Raises:
        ArtifactError: a graph without readable token sets, or different pause-point counts.
    """
    ref = active_masks(reference, images, thresholds, threads, backend=reference_backend)
    cand = active_masks(candidate, images, thresholds, threads, backend=candidate_backend,
                        inference_precision=candidate_precision)
    if ref.shape != cand.shape:
        raise ArtifactError(f"graphs differ in pause points / tokens: {ref.shape} vs {cand.shape}")
    agree, iou, n_ref, n_cand = [], [], [], []
    for p in range(ref.shape[0]):
        pr, pc = ~ref[p], ~cand[p]
        union = int((pr | pc).sum())
        agree.append(float((pr == pc).mean()))
        iou.append(float((pr & pc).sum() / union) if union else 1.0)
        n_ref.append(int(pr.sum()))
        n_cand.append(int(pc.sum()))
    return PauseAgreement(agree, iou, n_ref, n_cand)
