"""``AdaptiveSession``: run an exported adaptive ViT with per-call pause thresholds.

The thresholds are an *input* of the graph, so every call may use its own: the session holds no
per-call state and ``run`` is safe to call from several threads at once (ONNX Runtime's
``InferenceSession.run`` is thread-safe; the OpenVINO backend keeps a pool of infer requests; TensorRT
one execution context per thread). Torch-free: NumPy and the backend's own package only.

Backends (:mod:`avit.runtime.backends`): ONNX Runtime for ``.onnx``, OpenVINO for ``.xml`` (an IR from
``avit export --openvino``) or for an ``.onnx`` with ``backend="openvino"``, TensorRT for ``.engine``.

Presets: a calibration file written by ``avit calibrate`` (``<model>.calib.json`` beside the model, loaded
automatically unless it was measured on another backend, inference precision or CPU type — then one
log line says why) names threshold settings with their measured latency; ``run(images, preset="balanced")``
uses one, ``run(images, latency_budget_ms=…)`` picks the best-quality preset whose latency fits (see
:meth:`AdaptiveSession.select_preset` for how batch sizes other than the calibration's are handled).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType

import numpy as np

from avit.metadata.calibration import Calibration, Preset, calibration_path, load_calibration
from avit.data.images import load_batch, preprocess
from avit.errors import ArtifactError, InputError
from avit.metadata import ModelInfo
from avit.runtime.backends import Backend, open_backend
from avit.runtime.machine import cpu_record, same_cpu_type

#: Where the session says why a calibration file beside the model was not loaded (one line, WARNING).
log = logging.getLogger("avit.runtime")


@dataclasses.dataclass
class RunResult:
    """Outputs of one :meth:`AdaptiveSession.run` call.

    Attributes:
        logits: float32 ``[B, num_classes, H, W]``.
        tokens_kept: int64 ``[B, P]`` active patch tokens after each pause point.
        thresholds: float32 ``[P]`` thresholds (or keep ratios) used.
        latency_ms: Wall time of the backend call, in milliseconds.
        preset: Name of the preset used (``preset=`` or ``latency_budget_ms=``), else None.
        within_budget: With ``latency_budget_ms=``: whether the preset's estimated latency fits the
            budget (False: no preset fits and the fastest one ran); else None.
    """

    logits: np.ndarray
    tokens_kept: np.ndarray
    thresholds: np.ndarray
    latency_ms: float
    preset: str | None = None
    within_budget: bool | None = None

    def probabilities(self, activation: str) -> np.ndarray:
        """float32 ``[B, C, H, W]``: sigmoid (``activation="sigmoid"``) or softmax over C of the logits."""
        return probabilities(self.logits, activation)


def probabilities(logits: np.ndarray, activation: str) -> np.ndarray:
    """Sigmoid or channel softmax of float ``[B, C, H, W]`` logits."""
    if activation == "sigmoid":
        return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (shifted / shifted.sum(axis=1, keepdims=True)).astype(np.float32)


#: Values of ``AdaptiveSession(batch_layout=...)``.
BATCH_LAYOUTS = ("auto", "padded", "per_image")


class AdaptiveSession:
    """An exported avit model ready to run.

    Args:
        path: A model exported by avit: ``.onnx``, ``.xml`` (OpenVINO IR with its ``.bin``) or ``.engine``.
        providers: ONNX Runtime execution providers, e.g. ``["CUDAExecutionProvider",
            "CPUExecutionProvider"]``; default CPU.
        backend: ``"onnxruntime"``, ``"openvino"`` or ``"tensorrt"``; None (default): by the file's
            suffix. ``"openvino"`` also runs an avit ``.onnx`` (its local functions inlined at load).
        inference_precision: OpenVINO: ``"auto"`` (default: ``"bf16"`` where the CPU runs bfloat16
            natively — AVX512-BF16 or AMX, see ``avit doctor`` — else ``"f32"``), ``"f32"`` or ``"bf16"``
            (about 2× faster on the real model, a few pause decisions move: docs/openvino.md). Other
            backends accept None or ``"auto"``. The precision chosen is :attr:`inference_precision`.
        intra_op_threads: Threads inside one operator (ONNX Runtime ``intra_op_num_threads``, OpenVINO
            ``INFERENCE_NUM_THREADS``; 0/None = the backend's default, one per physical core).
        inter_op_threads: Threads across independent operators (``inter_op_num_threads``).
        calibration: Calibration file with presets (``avit calibrate``). None: ``<model>.calib.json``
            beside the model if it exists; True: that file, which must exist; a path (or a loaded
            :class:`~avit.calibration.Calibration`): that one; False: no presets. A calibration is checked
            against the model (pause points, policy, and the SHA-256 of the model file, read once here)
            and against the machine: a file measured on another backend or inference precision is not
            loaded automatically (and refused when named); one measured on another CPU type (model,
            family/model numbers, AVX2/AVX-512/VNNI/BF16/AMX; files that record no CPU are trusted) is not
            loaded automatically and loaded with a warning when named. Either skip is one log line
            (logger ``avit.runtime``) and :attr:`calibration_note`.
        batch_layout: How a batch of ``B > 1`` images runs: ``"padded"`` (one call; after each pause
            point the images are padded to the batch's largest token count), ``"per_image"`` (one call
            per image, each at its own token count; the outputs are concatenated and ``latency_ms`` covers
            all calls) or ``"auto"`` (default): ``per_image`` when every ONNX Runtime execution provider
            is the CPU, ``padded`` otherwise (a padded batch keeps a GPU busy). Chosen by measurement on 2
            CPU cores (real model): ONNX Runtime per image is faster once the images keep different token
            counts (11–13 % at batch 4) and ties when nothing pauses (``benchmarks/cpu_deployment.py``);
            OpenVINO gains from batching, and its padded batch of 4 ran 12 % faster than one call per
            image at the defaults (bf16, ``benchmarks/openvino_cpu.py``), so OpenVINO runs padded. Static
            models always run padded. The layout actually used is :attr:`batch_layout`.
        intra_op_threads / inter_op_threads: see above; measured 1 → 2 intra-op threads on the real
            model: 1.6× (README, "CPU").

    Attributes:
        presets: Preset name → :class:`~avit.calibration.Preset` (read-only; empty without calibration).
        calibration: The loaded :class:`~avit.calibration.Calibration`, or None.
        calibration_note: Why the calibration file beside the model was not loaded (or was loaded
            although measured on another CPU type), else None.
        inference_precision: The precision the backend computes in: OpenVINO's ``"f32"`` / ``"bf16"``
            (``"auto"`` resolved); None for ONNX Runtime and TensorRT (the graph's own precision).

    Raises:
        ArtifactError: missing file, not a model, a model without avit metadata, or a calibration file
            that is invalid or was made for another model file.
        BackendUnavailableError: the backend the file needs is not installed (or bf16 without native
            bfloat16).
        InputError: unknown ``batch_layout``, ``backend`` or ``inference_precision``, or an option of
            another backend.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        providers: Sequence[str] | None = None,
        *,
        intra_op_threads: int | None = None,
        inter_op_threads: int | None = None,
        calibration: str | os.PathLike | Calibration | bool | None = None,
        batch_layout: str = "auto",
        backend: str | None = None,
        inference_precision: str | None = None,
    ) -> None:
        if batch_layout not in BATCH_LAYOUTS:
            raise InputError(f"batch_layout {batch_layout!r} is not one of {', '.join(BATCH_LAYOUTS)}")
        self.path = Path(path)
        self.backend: Backend = open_backend(
            self.path, providers=providers, intra_op_threads=intra_op_threads, inter_op_threads=inter_op_threads,
            backend=backend, inference_precision=inference_precision,
        )
        if batch_layout == "auto":
            used = getattr(self.backend, "providers", None) or [self.backend.name]
            batch_layout = "per_image" if all(p == "CPUExecutionProvider" for p in used) else "padded"
        #: The layout in use: ``"padded"`` or ``"per_image"`` (``"auto"`` resolved).
        self.batch_layout: str = batch_layout
        self.inference_precision: str | None = getattr(self.backend, "inference_precision", None)
        self.calibration_note: str | None = None
        self.info: ModelInfo = ModelInfo.from_props(self.backend.metadata(), where=str(self.path))
        expected = ["images"] + (["pause_thresholds"] if self.info.num_pause_points else [])
        if self.backend.input_names() != expected:
            raise ArtifactError(f"{self.path} has inputs {self.backend.input_names()}, expected {expected}")
        self.calibration: Calibration | None = self._load_calibration(calibration)
        self.presets: Mapping[str, Preset] = (
            self.calibration.presets if self.calibration is not None else MappingProxyType({})
        )

    def _load_calibration(self, calibration) -> Calibration | None:
        if calibration is False:
            return None
        automatic = calibration is None
        if calibration is None or calibration is True:
            path = calibration_path(self.path)
            if not path.is_file():
                if calibration is True:
                    raise ArtifactError(f"calibration file not found: {path} (run: avit calibrate {self.path})")
                return None
            calib = load_calibration(path)
        elif isinstance(calibration, Calibration):
            calib = calibration
        else:
            calib = load_calibration(calibration)
        calib.check_model(self.info, self.path)
        where = calib.path.name if calib.path is not None else "the calibration"
        measured_on = _measured_on(calib.data.get("backend", {}))
        running = _measured_on({"name": self.backend.name, "inference_precision": self.inference_precision})
        if measured_on != running:
            if automatic:  # its latencies belong to another backend: no presets rather than wrong ones
                return self._skip(f"{where} not loaded: measured on {measured_on}, this session runs {running} "
                                  f"(calibrate for it: avit calibrate {self.path.name} ...)")
            raise ArtifactError(
                f"{where} was measured on {measured_on}, this session runs {running}: "
                f"calibrate for this backend (avit calibrate {self.path.name} ...) or pass calibration=False"
            )
        recorded = calib.data.get("backend", {}).get("cpu")
        other_cpu = same_cpu_type(recorded, cpu_record()) if recorded else None
        if other_cpu is not None:  # its latencies belong to another CPU type
            if automatic:
                return self._skip(f"{where} not loaded: measured on another CPU ({other_cpu}); "
                                  f"calibrate here: avit calibrate {self.path.name} ...")
            self._skip(f"{where} was measured on another CPU ({other_cpu}): its latencies are estimates here")
        return calib

    def _skip(self, reason: str) -> None:
        """Record and log (one line) why the calibration is not loaded or not fully trusted; returns None."""
        self.calibration_note = reason
        log.warning(reason)

    # ------------------------------------------------------------------ inputs
    def thresholds(self, values: Sequence[float] | np.ndarray | None = None) -> np.ndarray:
        """Validated float32 ``[P]`` thresholds; None = the model's defaults.

        Raises:
            InputError: wrong count, NaN, or a keep ratio outside [0, 1].
        """
        p = self.info.num_pause_points
        if values is None:
            return np.asarray(self.info.default_thresholds, dtype=np.float32).reshape(p)
        arr = np.asarray(values, dtype=np.float32).reshape(-1)
        if arr.size != p:
            raise InputError(f"expected {p} pause thresholds (one per pause point {list(self.info.pause_points)}), got {arr.size}")
        if np.isnan(arr).any():
            raise InputError("pause thresholds must not be NaN")
        if self.info.policy == "keep_ratio" and ((arr < 0) | (arr > 1)).any():
            raise InputError(f"keep ratios must lie in [0, 1], got {arr.tolist()}")
        if self.info.policy != "keep_ratio" and (arr < 0).any():
            raise InputError(f"pause thresholds must be >= 0, got {arr.tolist()}")
        return arr

    def _dtop_k(self, value) -> np.ndarray:
        """int64 0-d feed of the optional ``dtop_k`` input. Raises :class:`InputError`."""
        if self.info.dtop_k is None or not self.info.num_pause_points:
            raise InputError(f"dtop_k applies to dtop models only; {self.path.name} has policy {self.info.policy}")
        if self.backend.name != "onnxruntime":
            raise InputError(f"the {self.backend.name} backend has dtop_k fixed at build time ({self.info.dtop_k})")
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise InputError(f"dtop_k must be a non-negative integer, got {value!r}")
        return np.array(value, dtype=np.int64)

    def check_images(self, images: np.ndarray) -> np.ndarray:
        """Validated contiguous float32 ``[B, C, H, W]`` images.

        Raises:
            InputError: wrong rank, channels or size, empty batch, or non-finite values.
        """
        arr = np.asarray(images)
        c = self.info.config["in_chans"]
        h, w = self.info.input_size
        if arr.ndim != 4 or arr.shape[1:] != (c, h, w) or arr.shape[0] == 0:
            raise InputError(f"images must be float32 [B>=1, {c}, {h}, {w}], got {arr.dtype} {list(arr.shape)}")
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if not np.isfinite(arr).all():
            raise InputError("images contain NaN or infinite values")
        return arr

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        """uint8 RGB ``[h, w, 3]`` → float32 ``[3, H, W]`` resized and normalised as the model expects."""
        return preprocess(image, self.info.input_size, self.info.mean, self.info.std)

    def load_images(self, paths: Sequence[str | os.PathLike]) -> np.ndarray:
        """Image files → float32 ``[B, 3, H, W]`` model input. Raises :class:`InputError`."""
        return load_batch(paths, self.info.input_size, self.info.mean, self.info.std)

    # ------------------------------------------------------------------ presets
    def preset(self, name: str) -> Preset:
        """The preset called ``name``. Raises :class:`InputError` if there is none."""
        if name not in self.presets:
            if not self.presets:
                raise InputError(
                    f"no presets for {self.path.name}: run 'avit calibrate {self.path}' first (it writes "
                    f"{calibration_path(self.path).name})"
                )
            raise InputError(f"unknown preset {name!r}; known: {', '.join(sorted(self.presets))}")
        return self.presets[name]

    def select_preset(self, latency_budget_ms: float, batch: int = 1) -> tuple[Preset, bool]:
        """The best-quality preset whose estimated latency for a call of ``batch`` images fits the budget.

        Batch sizes: a preset's latency was measured for calls of its calibration batch size
        (``preset.batch``); for another batch size it is scaled per image
        (:meth:`~avit.calibration.Preset.latency_for_batch`): exact at the calibration batch, an estimate
        elsewhere. Calibrate at the batch size you deploy for guarantees.

        Returns:
            ``(preset, fits)``; when no preset fits, the fastest one and False.

        Raises:
            InputError: budget not a positive number, or no presets loaded.
        """
        budget = float(latency_budget_ms)
        if not (budget > 0) or math.isinf(budget):
            raise InputError(f"latency_budget_ms must be a positive number, got {latency_budget_ms}")
        if not self.presets:
            raise InputError(
                f"latency_budget_ms needs presets, and {self.path.name} has none: run 'avit calibrate {self.path}'"
            )
        estimates = [(p.latency_for_batch(batch), p) for p in self.presets.values()]
        fitting = [(est, p) for est, p in estimates if est <= budget]
        if fitting:
            return max(fitting, key=lambda ep: (ep[1].quality, -ep[0], ep[1].name))[1], True
        return min(estimates, key=lambda ep: (ep[0], -ep[1].quality, ep[1].name))[1], False

    # ------------------------------------------------------------------ inference
    def run(
        self,
        images: np.ndarray,
        thresholds: Sequence[float] | np.ndarray | None = None,
        *,
        preset: str | None = None,
        latency_budget_ms: float | None = None,
        dtop_k: int | None = None,
    ) -> RunResult:
        """Run a batch with its own pause thresholds (thread-safe).

        Give at most one of ``thresholds``, ``preset`` and ``latency_budget_ms`` (none: model defaults).

        Args:
            images: float32 ``[B, C, H, W]`` preprocessed images (see :meth:`preprocess`).
            thresholds: ``[P]`` pause thresholds / keep ratios for this call; None = model defaults.
            preset: Name of a calibration preset (see :attr:`presets`).
            latency_budget_ms: Use the best-quality preset whose latency for this batch fits
                (:meth:`select_preset`); if none fits, the fastest preset runs and
                ``RunResult.within_budget`` is False.
            dtop_k: ``dtop`` models: context tokens kept per class for this call (fed to the optional
                ``dtop_k`` input); None = the model's default (:attr:`ModelInfo.dtop_k`).

        Returns:
            :class:`RunResult` (logits, tokens kept, thresholds used, latency in ms, preset used).

        Raises:
            InputError: malformed images or thresholds, more than one of the three, unknown preset, bad
                budget, presets asked for without a calibration, or a ``dtop_k`` that is not a
                non-negative integer, for a model that is not ``dtop`` or a backend that fixed it.
        """
        given = [n for n, v in (("thresholds", thresholds), ("preset", preset), ("latency_budget_ms", latency_budget_ms)) if v is not None]
        if len(given) > 1:
            raise InputError(f"give only one of thresholds, preset and latency_budget_ms (got {' and '.join(given)})")
        x = self.check_images(images)
        name, within = None, None
        if preset is not None:
            thresholds, name = self.preset(preset).thresholds, preset
        elif latency_budget_ms is not None:
            chosen, within = self.select_preset(latency_budget_ms, batch=x.shape[0])
            thresholds, name = chosen.thresholds, chosen.name
        t = self.thresholds(thresholds)
        feeds = {"images": x}
        if self.info.num_pause_points:
            feeds["pause_thresholds"] = t
        if dtop_k is not None:
            feeds["dtop_k"] = self._dtop_k(dtop_k)
        start = time.perf_counter()
        if self.batch_layout == "per_image" and x.shape[0] > 1 and self.info.num_pause_points:
            outs = [self.backend.infer({**feeds, "images": x[i : i + 1]}) for i in range(x.shape[0])]
            logits = np.concatenate([o[0] for o in outs])
            tokens_kept = np.concatenate([o[1] for o in outs])
        else:
            logits, tokens_kept = self.backend.infer(feeds)
        latency_ms = (time.perf_counter() - start) * 1e3
        return RunResult(logits, tokens_kept, t, latency_ms, name, within)

    def __repr__(self) -> str:
        return (
            f"AdaptiveSession({str(self.path)!r}, backend={self.backend.name}, "
            + (f"inference_precision={self.inference_precision}, " if self.inference_precision else "")
            + f"variant={self.info.variant}, "
            f"pause_points={list(self.info.pause_points)}, policy={self.info.policy})"
        )


def _measured_on(backend: Mapping) -> str:
    """``"onnxruntime"`` / ``"openvino bf16"``: the backend (and a non-default inference precision) a
    calibration's latencies belong to."""
    name = str(backend.get("name", "onnxruntime"))
    precision = backend.get("inference_precision")
    return name if precision in (None, "f32") else f"{name} {precision}"
