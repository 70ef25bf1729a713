"""Triton python-backend model that runs an avit model with :class:`avit.runtime.AdaptiveSession`.

``avit triton-repo MODEL -o REPO --backend python`` copies this file to ``REPO/<name>/1/model.py`` beside
the model file (``model.onnx``, or ``model.xml`` + ``model.bin`` for OpenVINO). Triton's python backend
runs it in a stub process of the Python that has avit installed (``avit triton-serve`` sets that up).

Inputs and outputs (``max_batch_size > 0``: Triton prepends the batch dimension B):

* ``images`` float32 ``[B, C, H, W]`` — preprocessed images (``AdaptiveSession.preprocess``);
* ``pause_thresholds`` float32 ``[B, P]`` — **one row per image**, so Triton's dynamic batcher may
  put requests with different thresholds into one ``execute`` call; each image runs at its own row
  (images with equal rows share one :meth:`AdaptiveSession.run` call). Optional: a request without it
  runs at the model's default thresholds;
* ``logits`` float32 ``[B, num_classes, H, W]`` and ``tokens_kept`` int64 ``[B, P]`` (patch tokens still
  active after each pause point).

Model-config ``parameters`` read here (written by ``avit triton-repo``):

* ``AVIT_MODEL`` — the model file in the version folder (``model.onnx`` / ``model.xml``);
* ``AVIT_BACKEND`` — ``onnxruntime`` (default) or ``openvino`` (passed as ``AdaptiveSession(…,
  backend=…)``; needs an avit whose runtime has that backend);
* ``AVIT_INTRA_OP_THREADS`` — threads inside one operator (0: the runtime's default);
* ``AVIT_PROVIDERS`` — ONNX Runtime execution providers, comma-separated (default CPU);
* ``AVIT_THRESHOLDS`` — comma-separated thresholds used instead of the model's defaults (fixed-threshold
  models, whose config has no ``pause_thresholds`` input);
* ``AVIT_SLO_MS`` — serve under this latency objective (``avit triton-repo --slo-ms``): images sent without
  ``pause_thresholds`` run at the setting an :class:`avit.runtime.slo.SloController` picks per ``execute``
  call, from the calibration ``model.calib.json`` beside the model file; the output
  ``pause_thresholds_used`` ``[B, P]`` says which. What this backend can observe is less than ``avit serve``
  sees: the requests of each ``execute`` call and its own call times. It cannot see when a request arrived
  (its deadline is estimated from the start of the previous ``execute`` call: a request that waited longer
  in Triton's queue, behind a full batch, is taken as younger than it is), nor how many requests still wait
  in Triton's queue, nor the HTTP/gRPC time outside ``execute``; and it cannot refuse a request —
  admission is Triton's queue policy (``default_timeout_microseconds`` = the SLO, ``REJECT``).

A request the model cannot run (NaN or negative thresholds, keep ratios above 1, non-finite pixels) gets
its own error response (``pb_utils.TritonError``, one line; HTTP 400 / gRPC INVALID_ARGUMENT); the other
requests of the same ``execute`` call are answered normally.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

# The python backend's stub starts its interpreter without reading PYTHONPATH (its sys.path holds the standard
# library and the environment's site-packages only), so an avit given by PYTHONPATH — `avit triton-serve` puts
# the one it runs from there — would lose to an installed one. Honour it, in its order, before importing avit.
for _entry in reversed([p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]):
    if _entry not in sys.path:
        sys.path.insert(0, _entry)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:500] if text else type(exc).__name__


def _error(message: str, code_name: str = "INVALID_ARG"):
    """``pb_utils.TritonError`` with a status code where this Triton supports codes (23.08+)."""
    code = getattr(pb_utils.TritonError, code_name, None)
    return pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)


class TritonPythonModel:
    """One model instance: an :class:`AdaptiveSession` over the version folder's model file."""

    def initialize(self, args: dict) -> None:
        """Open the session (Triton calls this once per instance). Raises on a missing or foreign model."""
        from avit.runtime import AdaptiveSession

        config = json.loads(args["model_config"])
        params = {key: value.get("string_value", "") for key, value in config.get("parameters", {}).items()}
        folder = Path(args["model_repository"]) / str(args["model_version"])
        path = folder / params.get("AVIT_MODEL", "model.onnx")
        backend = params.get("AVIT_BACKEND", "onnxruntime") or "onnxruntime"
        threads = int(params.get("AVIT_INTRA_OP_THREADS", "0") or 0) or None
        providers = [p for p in params.get("AVIT_PROVIDERS", "").split(",") if p] or None
        options = {"intra_op_threads": threads, "calibration": False}
        if backend != "onnxruntime":
            options["backend"] = backend
        try:
            self.session = AdaptiveSession(path, providers, **options)
        except TypeError as exc:
            if "backend" in str(exc):
                raise pb_utils.TritonModelException(
                    f"the avit installed for this server has no {backend} backend (AdaptiveSession(backend=...))"
                ) from None
            raise
        except Exception as exc:  # AvitError: one line in the server log instead of a traceback
            raise pb_utils.TritonModelException(f"cannot open {path.name}: {_one_line(exc)}") from None
        info = self.session.info
        self.num_pause_points = info.num_pause_points
        logger = getattr(pb_utils, "Logger", None)
        if logger is not None:  # which avit serves, for the server log (Triton 23.03+)
            import avit

            logger.log_info(
                f"avit {avit.__version__} from {Path(avit.__file__).parent}: {path.name} on {self.session.backend.name}, "
                f"pause points {list(info.pause_points)}"
            )
        fixed = params.get("AVIT_THRESHOLDS", "")
        try:  # a fixed-threshold model: these values replace the model's defaults (validated here)
            defaults = self.session.thresholds([float(v) for v in fixed.split(",")] if fixed else None)
        except Exception as exc:  # noqa: BLE001
            raise pb_utils.TritonModelException(f"AVIT_THRESHOLDS={fixed}: {_one_line(exc)}") from None
        self.defaults = defaults.reshape(1, -1)
        self.controller = None
        slo = params.get("AVIT_SLO_MS", "")
        if slo and self.num_pause_points:
            from avit.runtime.batching import slo_controller
            from avit.metadata.calibration import calibration_path

            try:
                session = AdaptiveSession(path, providers, **{**options, "calibration": calibration_path(path)})
                self.session = session
                self.controller = slo_controller(session, float(slo))
            except Exception as exc:  # noqa: BLE001
                raise pb_utils.TritonModelException(f"AVIT_SLO_MS={slo}: {_one_line(exc)}") from None
        self._last_start = None  # perf_counter of the previous execute call: the requests of this one came after

    def _inputs(self, request) -> tuple[np.ndarray, np.ndarray, bool]:
        """One request → validated (images ``[n, C, H, W]``, thresholds ``[n, P]``, whether the request gave
        its thresholds). Raises InputError."""
        from avit.errors import InputError

        images = pb_utils.get_input_tensor_by_name(request, "images")
        if images is None:
            raise InputError("the request has no 'images' input")
        x = self.session.check_images(images.as_numpy())
        n = x.shape[0]
        given = pb_utils.get_input_tensor_by_name(request, "pause_thresholds")
        if given is None or not self.num_pause_points:
            return x, np.repeat(self.defaults, n, axis=0), False
        t = np.asarray(given.as_numpy(), dtype=np.float32).reshape(n, -1)
        return x, np.stack([self.session.thresholds(row) for row in t]), True

    def _slo_thresholds(self, work: list) -> tuple[np.ndarray | None, int | None]:
        """Under an SLO: the controller's thresholds for the images sent without their own, and the setting."""
        from avit.runtime.slo import Waiting

        now = time.perf_counter()
        arrived = self._last_start if self._last_start is not None else now
        self._last_start = now
        auto = sum(x.shape[0] for _, x, _, own in work if not own)
        if not auto:
            return None, None
        waiting = [Waiting(self.controller.deadline(arrived), 1) for _ in range(auto)]
        choice = self.controller.choose(waiting, now, batch=auto)
        return np.asarray(self.controller.settings[choice.index].thresholds, dtype=np.float32), choice.index

    def execute(self, requests: list) -> list:
        """Answer each request (in order): its logits and tokens kept, or its own error."""
        responses: list = [None] * len(requests)
        work: list[tuple[int, np.ndarray, np.ndarray]] = []
        for index, request in enumerate(requests):
            try:
                x, t, own = self._inputs(request)
            except Exception as exc:  # noqa: BLE001  (InputError: the client's fault; answered alone)
                responses[index] = pb_utils.InferenceResponse(output_tensors=[], error=_error(_one_line(exc)))
                continue
            work.append((index, x, t, own))
        if self.controller is not None:
            chosen, _ = self._slo_thresholds(work)
            if chosen is not None:
                work = [(i, x, t if own else np.repeat(chosen[None], x.shape[0], axis=0), own) for i, x, t, own in work]

        # every image at its own thresholds; images with equal thresholds share one call
        groups: dict[bytes, list[tuple[int, int]]] = {}
        for slot, (_, x, t, _own) in enumerate(work):
            for row in range(x.shape[0]):
                groups.setdefault(t[row].tobytes(), []).append((slot, row))
        logits = [None] * len(work)
        tokens = [None] * len(work)
        failed: dict[int, str] = {}
        for members in groups.values():
            first_slot, first_row = members[0]
            thresholds = work[first_slot][2][first_row]
            batch = np.stack([work[slot][1][row] for slot, row in members])
            try:
                result = self.session.run(batch, thresholds if self.num_pause_points else None)
            except Exception as exc:  # noqa: BLE001  (delivered to every request of the call)
                for slot, _ in members:
                    failed[slot] = _one_line(exc)
                continue
            if self.controller is not None:  # the running estimate learns from every call on the ladder
                index = self.controller.index_of(thresholds)
                if index is not None:
                    self.controller.observe(index, batch.shape[0], result.latency_ms)
            for k, (slot, row) in enumerate(members):
                n = work[slot][1].shape[0]
                if logits[slot] is None:
                    logits[slot] = np.empty((n, *result.logits.shape[1:]), dtype=np.float32)
                    tokens[slot] = np.empty((n, result.tokens_kept.shape[1]), dtype=np.int64)
                logits[slot][row] = result.logits[k]
                tokens[slot][row] = result.tokens_kept[k]

        for slot, (index, _, t, _own) in enumerate(work):
            if slot in failed:
                responses[index] = pb_utils.InferenceResponse(output_tensors=[], error=_error(failed[slot], "INTERNAL"))
                continue
            outputs = [
                pb_utils.Tensor("logits", np.ascontiguousarray(logits[slot], dtype=np.float32)),
                pb_utils.Tensor("tokens_kept", np.ascontiguousarray(tokens[slot], dtype=np.int64)),
            ]
            if self.controller is not None:
                outputs.append(pb_utils.Tensor("pause_thresholds_used", np.ascontiguousarray(t, dtype=np.float32)))
            responses[index] = pb_utils.InferenceResponse(output_tensors=outputs)
        return responses

    def finalize(self) -> None:
        """Drop the session (Triton calls this when the model unloads)."""
        self.session = None
