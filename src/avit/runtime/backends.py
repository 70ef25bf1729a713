"""Inference backends behind :class:`~avit.runtime.AdaptiveSession`, as small loader objects.

* :class:`OnnxRuntimeBackend` — ``.onnx`` files, any ONNX Runtime execution provider.
* :class:`TensorRTBackend` — ``.engine`` files built by ``avit export --trt`` (TensorRT and cuda-python
  imported lazily; without them the session says so in one line).
* :class:`~avit.runtime.openvino_backend.OpenVINOBackend` — OpenVINO IRs (``.xml``) written by
  ``avit export --openvino``, or an avit ``.onnx`` with ``backend="openvino"`` (OpenVINO imported lazily).

:func:`open_backend` picks the backend by the file's suffix unless one is named.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from avit._io import file_sha256
from avit.errors import ArtifactError, BackendUnavailableError


class Backend(Protocol):
    """What the session needs from a backend."""

    name: str

    def metadata(self) -> dict[str, str]:
        """The artifact's ``avit.*`` metadata."""

    def input_names(self) -> list[str]:
        """Graph input names in order."""

    def infer(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Run once: ``(logits, tokens_kept)``. Must be safe to call from several threads."""


class OnnxRuntimeBackend:
    """ONNX Runtime ``InferenceSession`` over an avit ``.onnx`` file.

    Raises:
        ArtifactError: the file is not a loadable ONNX model.
        BackendUnavailableError: a requested execution provider is not available.
    """

    name = "onnxruntime"

    def __init__(
        self,
        path: Path,
        providers: Sequence[str] | None = None,
        intra_op_threads: int | None = None,
        inter_op_threads: int | None = None,
    ) -> None:
        import onnxruntime as ort

        available = ort.get_available_providers()
        providers = list(providers or ["CPUExecutionProvider"])
        missing = [p for p in providers if p not in available]
        if missing:
            raise BackendUnavailableError(
                f"execution provider {', '.join(missing)} is not available in this onnxruntime "
                f"(available: {', '.join(available)}); for CUDA install 'avit[gpu]'"
            )
        options = ort.SessionOptions()
        if intra_op_threads:
            options.intra_op_num_threads = int(intra_op_threads)
        if inter_op_threads:
            options.inter_op_num_threads = int(inter_op_threads)
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types per failure
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ArtifactError(f"{path} is not a loadable ONNX model: {first[:300]}") from exc
        self.providers = self.session.get_providers()

    def metadata(self) -> dict[str, str]:
        return dict(self.session.get_modelmeta().custom_metadata_map)

    def input_names(self) -> list[str]:
        return [i.name for i in self.session.get_inputs()]

    def infer(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        logits, tokens_kept = self.session.run(["logits", "tokens_kept"], feeds)
        return logits, tokens_kept


class TensorRTBackend:
    """A serialized TensorRT engine (``.engine``) and its sidecar ``.engine.json``.

    Device memory and copies use cuda-python's CUDA runtime bindings (``cuda.bindings.runtime``, the
    path TensorRT's own Python samples take), so neither PyTorch nor PyCUDA is needed. Each calling
    thread gets its own execution context and CUDA stream (TensorRT allows concurrent inference on one
    engine with one context per thread); device buffers are allocated per call (the output shapes
    follow from the batch size alone: ``logits [B, C, H, W]``, ``tokens_kept [B, P]``). The thresholds
    are an engine input like in ONNX Runtime, so every call may use its own.

    Args:
        path: The engine.
        plugin_library: The avit plugin library; default: the one recorded in the sidecar if it still
            exists, else :func:`~avit.runtime.tensorrt.find_plugin_library`.

    Raises:
        BackendUnavailableError: TensorRT or cuda-python missing, or no usable GPU.
        ArtifactError: no/invalid sidecar, engine built by another TensorRT version, plugin library
            missing or lacking a plugin, or an engine TensorRT cannot deserialize.
    """

    name = "tensorrt"

    def __init__(self, path: Path, plugin_library: str | os.PathLike | None = None) -> None:
        from avit.runtime import tensorrt as trt_support

        trt = trt_support.import_tensorrt()
        self.cudart = trt_support.import_cudart()
        self.sidecar = trt_support.read_sidecar(path)
        info = self.sidecar.info
        if self.sidecar.tensorrt_version != trt.__version__:
            raise ArtifactError(
                f"{path.name} was built with TensorRT {self.sidecar.tensorrt_version}, this is TensorRT {trt.__version__}: "
                f"rebuild it (avit export {self.sidecar.onnx_path} --trt)"
            )
        if self.sidecar.plugin_library is not None:
            recorded = Path(self.sidecar.plugin_library)
            library = trt_support.find_plugin_library(
                plugin_library if plugin_library is not None else (recorded if recorded.is_file() else None)
            )
            trt_support.load_plugin_library(trt, library, required=info.adaptive_ops)
            if file_sha256(library) != self.sidecar.plugin_sha256:
                warnings.warn(
                    f"plugin library {library} differs from the one {path.name} was built with "
                    f"({self.sidecar.plugin_library}); rebuild the engine if results look wrong",
                    stacklevel=2,
                )
        self.logger = trt.Logger(trt.Logger.ERROR)
        self.runtime = trt.Runtime(self.logger)
        if self.runtime is None:
            raise BackendUnavailableError("TensorRT found no usable CUDA GPU (trt.Runtime could not be created)")
        self.engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise ArtifactError(f"TensorRT could not deserialize {path} (see TensorRT's error above)")
        self.trt = trt
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self._inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self._dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        self._metadata = dict(self.sidecar.metadata)
        self._local = threading.local()
        self._lock = threading.Lock()
        self.min_batch, self.max_batch = self.sidecar.min_batch, self.sidecar.max_batch

    def metadata(self) -> dict[str, str]:
        return dict(self._metadata)

    def input_names(self) -> list[str]:
        return list(self._inputs)

    def _check(self, result):
        err, *rest = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            _, name = self.cudart.cudaGetErrorName(err)
            raise RuntimeError(f"CUDA error {int(err)} ({name.decode() if isinstance(name, bytes) else name})")
        return rest[0] if len(rest) == 1 else rest

    def _context(self):
        state = self._local
        if getattr(state, "context", None) is None:
            with self._lock:  # creating contexts concurrently is not documented as safe
                state.context = self.engine.create_execution_context()
            state.stream = self._check(self.cudart.cudaStreamCreate())
        return state.context, state.stream

    def infer(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        from avit.errors import InputError

        batch = feeds["images"].shape[0]
        if not self.min_batch <= batch <= self.max_batch:
            raise InputError(
                f"this engine runs batches of {self.min_batch} to {self.max_batch} images, got {batch} "
                "(rebuild with --min-batch/--max-batch)"
            )
        cudart = self.cudart
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        context, stream = self._context()
        buffers = []
        try:
            host_in = {}
            for name in self._inputs:
                host = np.ascontiguousarray(feeds[name], dtype=self._dtypes[name])
                context.set_input_shape(name, host.shape)
                host_in[name] = host
            outputs = {}
            for name in self._outputs:
                shape = tuple(context.get_tensor_shape(name))
                if any(d < 0 for d in shape):
                    raise ArtifactError(f"engine output {name} has a data-dependent shape {shape}; avit engines should not")
                outputs[name] = np.empty(shape, dtype=self._dtypes[name])
            for name, host in (*host_in.items(), *outputs.items()):
                ptr = self._check(cudart.cudaMalloc(max(host.nbytes, 1)))
                buffers.append(ptr)
                context.set_tensor_address(name, int(ptr))
                if name in host_in and host.nbytes:
                    self._check(cudart.cudaMemcpyAsync(ptr, host.ctypes.data, host.nbytes, h2d, stream))
            if not context.execute_async_v3(int(stream)):
                raise RuntimeError("TensorRT execute_async_v3 failed (see TensorRT's error above)")
            for name, host in outputs.items():
                ptr = buffers[len(host_in) + list(outputs).index(name)]
                if host.nbytes:
                    self._check(cudart.cudaMemcpyAsync(host.ctypes.data, ptr, host.nbytes, d2h, stream))
            self._check(cudart.cudaStreamSynchronize(stream))
        finally:
            for ptr in buffers:
                cudart.cudaFree(ptr)
        return outputs["logits"], outputs["tokens_kept"].astype(np.int64, copy=False)


#: Values of ``open_backend(backend=...)`` / ``AdaptiveSession(backend=...)`` (None: by the file's suffix).
BACKENDS = ("onnxruntime", "openvino", "tensorrt")
_BY_SUFFIX = {".onnx": "onnxruntime", ".xml": "openvino", ".engine": "tensorrt", ".plan": "tensorrt", ".trt": "tensorrt"}


def open_backend(
    path: str | os.PathLike,
    providers: Sequence[str] | None = None,
    intra_op_threads: int | None = None,
    inter_op_threads: int | None = None,
    plugin_library: str | os.PathLike | None = None,
    *,
    backend: str | None = None,
    inference_precision: str | None = None,
) -> Backend:
    """The backend for ``path``: ``backend`` if given, else by the suffix (``.onnx`` ONNX Runtime, ``.xml``
    OpenVINO, ``.engine`` / ``.plan`` / ``.trt`` TensorRT).

    Args:
        path: The model file.
        providers, inter_op_threads: ONNX Runtime only.
        intra_op_threads: ONNX Runtime intra-op threads, or OpenVINO's inference threads.
        plugin_library: Engines only; see :class:`TensorRTBackend`.
        backend: One of :data:`BACKENDS`; ``"openvino"`` also opens an avit ``.onnx`` (inlined at load).
        inference_precision: OpenVINO: ``"auto"`` (default: bf16 where the CPU has native bfloat16, else
            f32), ``"f32"`` or ``"bf16"``; other backends accept only None or ``"auto"`` (they run the
            graph's own precision).

    Raises:
        ArtifactError: missing file, unknown suffix.
        InputError: unknown ``backend``, a backend that cannot open this kind of file, or an option of
            another backend (``inference_precision`` without OpenVINO, ``providers`` with it).
        BackendUnavailableError: the backend's package (TensorRT, OpenVINO) is not installed, or no GPU.
    """
    from avit.errors import InputError

    path = Path(path)
    if backend is not None and backend not in BACKENDS:
        raise InputError(f"backend {backend!r} is not one of {', '.join(BACKENDS)}")
    if not path.is_file():
        raise ArtifactError(f"model not found: {path}")
    suffix = path.suffix.lower()
    by_suffix = _BY_SUFFIX.get(suffix)
    if by_suffix is None:
        raise ArtifactError(f"{path} is not an avit artifact (expected .onnx, .xml (OpenVINO IR) or .engine)")
    name = backend or by_suffix
    if name != by_suffix and not (name == "openvino" and suffix == ".onnx"):
        hint = {"tensorrt": "build an engine with 'avit export MODEL.onnx --trt'",
                "openvino": "write an IR with 'avit export MODEL.onnx --openvino'",
                "onnxruntime": "ONNX Runtime runs .onnx files"}[name]
        raise InputError(f"the {name} backend cannot open {path.name} ({hint})")
    if inference_precision not in (None, "auto") and name != "openvino":
        raise InputError(
            f"inference precision {inference_precision} applies to the openvino backend (--backend openvino), not {name}"
        )
    if name == "openvino":
        if providers:
            raise InputError("execution providers are ONNX Runtime's; the openvino backend runs on the CPU")
        from avit.runtime.openvino_backend import OpenVINOBackend, import_openvino

        try:
            import_openvino()
        except BackendUnavailableError as exc:
            raise BackendUnavailableError(f"{exc}, so {path.name} cannot run here") from exc
        return OpenVINOBackend(path, inference_precision or "auto", intra_op_threads)
    if name == "onnxruntime":
        return OnnxRuntimeBackend(path, providers, intra_op_threads, inter_op_threads)
    try:
        return TensorRTBackend(path, plugin_library)
    except BackendUnavailableError as exc:
        raise BackendUnavailableError(f"{exc}, so {path.name} cannot run here") from exc
