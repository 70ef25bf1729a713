"""Parity of a deployed artifact (TensorRT engine, or another ONNX model) against an ONNX reference.

:func:`validate` runs the artifact and the reference (ONNX Runtime, CPU) on the same images at
several pause-threshold settings — nothing paused, the model's defaults, everything paused (plus any
given) — and batch sizes, and compares:

* ``tokens_kept`` exactly (integers: any difference is a different token selection);
* ``logits`` element-wise with Polygraphy's semantics (``SimpleCompareFunc`` with
  ``check_error_stat="elemwise"``): an element fails when ``|a - r| > atol`` **and**
  ``|a - r| > rtol · |r|``. Polygraphy's comparator is used when it is installed (``avit[trt]``),
  else :func:`~avit.evaluation.parity.compare_logits` computes the same thing with NumPy.

The settings and the comparison are the parity harness's (:mod:`avit.evaluation.parity`). Torch-free.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from avit.errors import ArtifactError, InputError
from avit.evaluation.parity import ParityRow, compare, session_runner, threshold_settings

#: Default ``(atol, rtol)`` per precision of the artifact under test. fp32: TensorRT's kernels sum in
#: another order than ONNX Runtime's (TF32 is off in avit engines), 1e-3 leaves room for that on logits
#: of order 1–10. fp16: 10-bit mantissa; the fp16 ONNX already differs from float32 PyTorch by up to
#: 6e-3 on a real ViT-S (docs/tensorrt.md), and fp16 arithmetic adds to it.
DEFAULT_TOLERANCES = {"fp32": (1e-3, 1e-3), "fp16": (5e-2, 5e-2)}


@dataclasses.dataclass
class ValidationReport:
    """Result of :func:`validate`."""

    artifact: Path
    reference: Path
    backend: str
    precision: str
    atol: float
    rtol: float
    rows: list[ParityRow]

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows)


def validate(
    artifact: str | os.PathLike,
    reference: str | os.PathLike | None = None,
    *,
    images: np.ndarray | Sequence[str | os.PathLike] | None = None,
    batches: Sequence[int] | None = None,
    extra_thresholds: Sequence[Sequence[float]] = (),
    atol: float | None = None,
    rtol: float | None = None,
    plugin_library: str | os.PathLike | None = None,
    log: Callable[[str], None] | None = None,
) -> ValidationReport:
    """Compare ``artifact`` (``.engine`` or ``.onnx``) with the ONNX model ``reference`` in ONNX Runtime CPU.

    Args:
        artifact: The model under test.
        reference: The ONNX reference; default for an engine: the ONNX it was built from (sidecar).
        images: float32 ``[n, C, H, W]`` preprocessed images, or image files (preprocessed as the model
            expects); repeated to fill a batch; default: seeded noise.
        batches: Batch sizes; default ``(1, max)`` with ``max`` the engine profile's largest batch (3 for ONNX).
        extra_thresholds: Further threshold settings to check besides nothing / default / everything paused.
        atol, rtol: Logit tolerances; None = :data:`DEFAULT_TOLERANCES` of the artifact's precision.
        plugin_library: For engines, see :class:`~avit.runtime.backends.TensorRTBackend`.
        log: One line per row.

    Returns:
        :class:`ValidationReport` (check ``.ok``; nothing is raised for a mismatch).

    Raises:
        ArtifactError: the two models are not the same model (metadata differs), or a missing reference.
        BackendUnavailableError: the artifact's backend is not installed.
        InputError: bad images, batches or thresholds.
    """
    from avit.metadata import ModelInfo
    from avit.runtime.backends import open_backend
    from avit.runtime.session import AdaptiveSession

    say = log or (lambda msg: None)
    artifact = Path(artifact)
    # an OpenVINO IR is validated at f32 (its parity; bf16's differences are measured by avit profile)
    backend = open_backend(artifact, plugin_library=plugin_library,
                           inference_precision="f32" if artifact.suffix.lower() == ".xml" else None)
    info = ModelInfo.from_props(backend.metadata(), where=str(artifact))
    if reference is None:
        reference = getattr(getattr(backend, "sidecar", None), "onnx_path", None)
        if reference is None:
            raise InputError(f"give the ONNX reference model for {artifact.name} (--onnx)")
    reference = Path(reference)
    if reference.suffix.lower() != ".onnx":
        raise InputError(f"the reference must be an ONNX model, got {reference}")
    ref = AdaptiveSession(reference)
    if (info.config, info.pause_points, info.policy) != (ref.info.config, ref.info.pause_points, ref.info.policy):
        raise ArtifactError(f"{artifact.name} and {reference.name} are not the same model (their avit metadata differ)")
    default_atol, default_rtol = DEFAULT_TOLERANCES.get(info.precision, DEFAULT_TOLERANCES["fp32"])
    atol = default_atol if atol is None else float(atol)
    rtol = default_rtol if rtol is None else float(rtol)
    min_batch, max_batch = getattr(backend, "min_batch", 1), getattr(backend, "max_batch", 3)
    batches = sorted(set(batches)) if batches else sorted({min_batch, max_batch})
    if batches[0] < 1:
        raise InputError(f"batch sizes must be >= 1, got {batches}")
    c, (h, w) = info.config["in_chans"], info.input_size
    if images is not None and not isinstance(images, np.ndarray):
        images = ref.load_images(list(images))
    if images is None:
        images = np.random.default_rng(0).standard_normal((max(batches), c, h, w)).astype(np.float32)
    images = ref.check_images(images)  # same model: the reference session's checks apply
    images = np.concatenate([images] * -(-max(batches) // images.shape[0]))[: max(batches)]

    def run(x: np.ndarray, thresholds: np.ndarray | None, dtop_k: int | None):
        return backend.infer({"images": x} if thresholds is None else {"images": x, "pause_thresholds": thresholds})

    settings = threshold_settings(info, extra=[ref.thresholds(v) for v in extra_thresholds])
    rows = compare(run, session_runner(ref), images, settings, batches, atol=atol, rtol=rtol, use_polygraphy=True, log=say)
    return ValidationReport(artifact, reference, backend.name, info.precision, atol, rtol, rows)

