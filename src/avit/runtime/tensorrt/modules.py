"""The optional TensorRT and CUDA runtime modules, imported lazily with one-line messages when missing."""

from __future__ import annotations

from avit.errors import BackendUnavailableError


def import_tensorrt():
    """The ``tensorrt`` module. Raises :class:`BackendUnavailableError` when it is not installed."""
    try:
        import tensorrt
    except ModuleNotFoundError as exc:
        if exc.name not in ("tensorrt", None):
            raise BackendUnavailableError(f"TensorRT is installed but cannot be imported: {exc}") from exc
        raise BackendUnavailableError(
            "TensorRT is not installed (install 'avit[trt]' on a machine with an NVIDIA GPU and NVIDIA's package index)"
        ) from exc
    except (ImportError, OSError) as exc:  # e.g. libnvinfer or the CUDA driver library missing
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BackendUnavailableError(f"TensorRT is installed but cannot be loaded: {first}") from exc
    return tensorrt


def import_cudart():
    """CUDA runtime bindings of ``cuda-python`` (``cuda.bindings.runtime``, or ``cuda.cudart`` before 12.6).

    Raises:
        BackendUnavailableError: cuda-python is not installed.
    """
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError as exc:
            raise BackendUnavailableError(
                "cuda-python is not installed; the TensorRT runtime backend needs it for device memory (pip install cuda-python)"
            ) from exc
    return cudart
