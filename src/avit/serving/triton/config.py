"""``config.pbtxt`` of one Triton model (Triton's ``ModelConfig`` protobuf in text format).

Three backends (``TritonModelSpec.backend``):

* ``"python"`` — Triton's python backend runs ``model.py`` (:mod:`avit.serving.triton.python_model`),
  which runs avit's own runtime (:class:`~avit.runtime.AdaptiveSession`: ONNX Runtime, or OpenVINO).
  ``max_batch_size > 0`` with ``pause_thresholds`` **per image** (``[B, P]``), so Triton's dynamic
  batcher groups requests whatever their thresholds;
* ``"onnxruntime"`` / ``"tensorrt"`` — Triton's own backends run the file; the graph's
  ``pause_thresholds [P]`` is shared by a call, so those models batch only at fixed thresholds
  (see :mod:`avit.serving.triton.repository`).

Every model with a dynamic batcher gets Triton's queue policy (``default_queue_policy``): at most
``max_queue_size`` requests wait (beyond: rejected at once, HTTP 503 / gRPC UNAVAILABLE "Exceeds maximum
queue size") and a request waiting longer than ``default_timeout_microseconds`` is rejected
(``timeout_action: REJECT``; a client may ask for a shorter timeout, ``allow_timeout_override``).
Source: Triton's ``model_config.proto`` (``ModelDynamicBatching``, ``ModelQueuePolicy``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from avit._io import json_float

#: Triton ``instance_group`` kinds by ``device``.
KINDS = {"auto": "KIND_AUTO", "cpu": "KIND_CPU", "gpu": "KIND_GPU"}
#: Values of ``TritonModelSpec.backend``.
BACKENDS = ("python", "onnxruntime", "tensorrt")


@dataclasses.dataclass
class TritonModelSpec:
    """One model of the repository, i.e. one ``config.pbtxt``.

    Attributes:
        name: Model name (= its folder).
        backend: ``"python"`` (avit's runtime in Triton's python backend), ``"onnxruntime"`` or ``"tensorrt"``.
        images: ``(C, H, W)``.
        num_classes: Channels of ``logits``.
        num_pause_points: P (0: static model).
        thresholds_input: ``"request"`` (``pause_thresholds`` required), ``"optional"`` (may be omitted:
            model defaults) or ``"none"`` (static model, or thresholds fixed). For ``onnxruntime`` /
            ``tensorrt`` models it is one ``[P]`` per request (no batching across requests); for
            ``python`` models one ``[P]`` row per image.
        max_batch: ``max_batch_size`` for batching models; also the largest client batch documented for
            per-request models.
        instances: ``instance_group.count``.
        kind: ``"KIND_AUTO"`` / ``"KIND_CPU"`` / ``"KIND_GPU"``.
        max_queue_delay_us: Dynamic batcher delay, microseconds (batching models only).
        max_queue_size: Most requests waiting in the dynamic batcher's queue (0: unbounded).
        queue_timeout_us: Longest a request may wait in that queue, microseconds (0: no limit).
        intra_op_threads: Threads inside one operator (onnxruntime ``intra_op_thread_count``; python:
            ``AdaptiveSession(intra_op_threads=…)``). None: the backend's default.
        fixed_thresholds: The thresholds baked in (fixed models), else None.
        model_filename: python backend: the model file in the version folder ``model.py`` opens.
        runtime: python backend: ``AdaptiveSession`` backend, ``"onnxruntime"`` or ``"openvino"``.
        providers: python backend with ONNX Runtime: execution providers (default CPU).
        comment: Lines written as ``#`` comments at the top.
        slo_ms: python backend: serve under this latency objective, ms (``AVIT_SLO_MS``; adds the output
            ``pause_thresholds_used``); None: no SLO.
    """

    name: str
    backend: str
    images: tuple[int, int, int]
    num_classes: int
    num_pause_points: int
    thresholds_input: str
    max_batch: int = 8
    instances: int = 1
    kind: str = "KIND_AUTO"
    max_queue_delay_us: int = 500
    max_queue_size: int = 0
    queue_timeout_us: int = 0
    intra_op_threads: int | None = None
    fixed_thresholds: tuple[float, ...] | None = None
    model_filename: str | None = None
    runtime: str = "onnxruntime"
    providers: tuple[str, ...] = ()
    comment: tuple[str, ...] = ()
    slo_ms: float | None = None

    @property
    def batching(self) -> bool:
        """Whether Triton batches requests (``max_batch_size > 0``): python models always; the others
        only without a thresholds input (one ``[P]`` tensor cannot serve two requests' thresholds)."""
        return self.backend == "python" or self.thresholds_input == "none"

    @property
    def platform(self) -> str | None:
        """Triton ``platform`` (None for the python backend)."""
        return {"onnxruntime": "onnxruntime_onnx", "tensorrt": "tensorrt_plan"}.get(self.backend)

    @property
    def file_name(self) -> str:
        """The model file in the version folder (``model.onnx``, ``model.plan``, or the python model's)."""
        if self.backend == "python":
            return self.model_filename or "model.onnx"
        return "model.onnx" if self.backend == "onnxruntime" else "model.plan"


def _dims(values: Sequence[int]) -> str:
    return "[ " + ", ".join(str(int(v)) for v in values) + " ]"


def _parameter(key: str, value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'parameters {{ key: "{key}" value: {{ string_value: "{escaped}" }} }}'


def config_pbtxt(spec: TritonModelSpec) -> str:
    """The ``config.pbtxt`` text of ``spec`` (parses with Triton's ``model_config.proto``)."""
    c, h, w = spec.images
    batch = [] if spec.batching else [-1]
    lines = [f"# {line}" for line in spec.comment]
    lines += [f'name: "{spec.name}"']
    if spec.platform is not None:
        lines += [f'platform: "{spec.platform}"']
    lines += [f'backend: "{spec.backend}"']
    if spec.backend != "python":
        lines += [f'default_model_filename: "{spec.file_name}"']
    lines += [
        f"max_batch_size: {spec.max_batch if spec.batching else 0}",
        "input [",
        "  {",
        '    name: "images"',
        "    data_type: TYPE_FP32",
        f"    dims: {_dims([*batch, c, h, w])}",
        "  }",
    ]
    if spec.thresholds_input in ("request", "optional"):
        lines[-1] += ","
        lines += [
            "  {",
            '    name: "pause_thresholds"',
            "    data_type: TYPE_FP32",
            f"    dims: {_dims([spec.num_pause_points])}",
            *(["    optional: true"] if spec.thresholds_input == "optional" else []),
            "  }",
        ]
    lines += [
        "]",
        "output [",
        "  {",
        '    name: "logits"',
        "    data_type: TYPE_FP32",
        f"    dims: {_dims([*batch, spec.num_classes, h, w])}",
        "  },",
        "  {",
        '    name: "tokens_kept"',
        "    data_type: TYPE_INT64",
        f"    dims: {_dims([*batch, spec.num_pause_points])}",
        "  }",
    ]
    if spec.slo_ms is not None:
        lines[-1] += ","
        lines += [
            "  {",
            '    name: "pause_thresholds_used"',
            "    data_type: TYPE_FP32",
            f"    dims: {_dims([*batch, spec.num_pause_points])}",
            "  }",
        ]
    lines += [
        "]",
        "instance_group [",
        "  {",
        f"    count: {spec.instances}",
        f"    kind: {spec.kind}",
        "  }",
        "]",
    ]
    if spec.batching:
        lines += ["dynamic_batching {", f"  max_queue_delay_microseconds: {spec.max_queue_delay_us}"]
        if spec.max_queue_size or spec.queue_timeout_us:
            lines += [
                "  default_queue_policy {",
                "    timeout_action: REJECT",
                f"    default_timeout_microseconds: {spec.queue_timeout_us}",
                "    allow_timeout_override: true",
                f"    max_queue_size: {spec.max_queue_size}",
                "  }",
            ]
        lines += ["}"]
    if spec.backend == "python":
        lines += [_parameter("AVIT_MODEL", spec.file_name), _parameter("AVIT_BACKEND", spec.runtime)]
        if spec.intra_op_threads is not None:
            lines += [_parameter("AVIT_INTRA_OP_THREADS", str(int(spec.intra_op_threads)))]
        if spec.providers:
            lines += [_parameter("AVIT_PROVIDERS", ",".join(spec.providers))]
        if spec.fixed_thresholds is not None:
            values = ",".join(str(json_float(v)) for v in spec.fixed_thresholds)
            lines += [_parameter("AVIT_THRESHOLDS", values)]
        if spec.slo_ms is not None:
            lines += [_parameter("AVIT_SLO_MS", f"{spec.slo_ms:g}")]
    elif spec.intra_op_threads is not None and spec.backend == "onnxruntime":
        lines += [_parameter("intra_op_thread_count", str(int(spec.intra_op_threads)))]
    return "\n".join(lines) + "\n"
