"""The machine avit runs on: the CPU, the instruction-set features that decide which inference precisions
run natively, and thread counts. Torch-free and engine-free (reads ``/proc/cpuinfo`` on Linux; elsewhere
the model name from :mod:`platform` and no feature flags), so ``avit doctor`` and the sessions can ask it
cheaply.

Features that matter for avit's backends (Linux ``/proc/cpuinfo`` flag names in brackets):

* ``avx2`` [avx2]: the baseline of ONNX Runtime's and OpenVINO's fast f32 kernels;
* ``avx512`` [avx512f];
* ``vnni`` [avx512_vnni or avx_vnni]: int8 dot products — int8 inference pays only with it;
* ``bf16`` [avx512_bf16 or amx_bf16]: native bfloat16 — OpenVINO ``inference_precision="bf16"``;
* ``amx`` [amx_tile]: Intel AMX tiles (bf16/int8 matrix units).

Calibration files record :func:`cpu_record` so that latencies measured on one CPU type are not used on
another (:func:`same_cpu_type`).
"""

from __future__ import annotations

import dataclasses
import os
import platform
from pathlib import Path

#: Feature name → the ``/proc/cpuinfo`` flags any of which provides it, in the order reported.
FEATURE_FLAGS: dict[str, tuple[str, ...]] = {
    "avx2": ("avx2",),
    "avx512": ("avx512f",),
    "vnni": ("avx512_vnni", "avx_vnni"),
    "bf16": ("avx512_bf16", "amx_bf16"),
    "amx": ("amx_tile",),
}


@dataclasses.dataclass(frozen=True)
class CpuInfo:
    """What avit needs to know about the CPU.

    Attributes:
        model: The marketing name (``model name`` of ``/proc/cpuinfo``), e.g. ``"AMD EPYC"``.
        vendor: ``"AuthenticAMD"``, ``"GenuineIntel"``, … (empty when unknown).
        family, model_number: The CPU family and model numbers (``cpu family``, ``model``; None when
            unknown): e.g. 25 / 17 is AMD Zen 4, 25 / 1 Zen 3.
        flags: Every flag of ``/proc/cpuinfo`` (empty off Linux).
        logical_cpus: CPUs this process may run on (its affinity mask), the threads one process can use.
        physical_cores: Distinct (package, core) pairs among them; None when unknown.
        architecture: ``platform.machine()``, e.g. ``"x86_64"``.
    """

    model: str
    vendor: str
    family: int | None
    model_number: int | None
    flags: frozenset[str]
    logical_cpus: int
    physical_cores: int | None
    architecture: str

    @property
    def features(self) -> dict[str, bool]:
        """Feature name (:data:`FEATURE_FLAGS`) → present."""
        return {name: any(f in self.flags for f in flags) for name, flags in FEATURE_FLAGS.items()}

    @property
    def name(self) -> str:
        """``"AMD EPYC (family 25 model 17)"``: the model with family/model numbers when known."""
        if self.family is None or self.model_number is None:
            return self.model
        return f"{self.model} (family {self.family} model {self.model_number})"

    def describe(self) -> str:
        """One line naming the CPU and its features, e.g. ``"AMD EPYC (family 25 model 17), AVX2 AVX-512
        VNNI BF16, 2 cores"``: what every speed figure should be labelled with."""
        labels = {"avx2": "AVX2", "avx512": "AVX-512", "vnni": "VNNI", "bf16": "BF16", "amx": "AMX"}
        have = " ".join(labels[k] for k, v in self.features.items() if v) or "no AVX2"
        cores = f"{self.physical_cores} cores" if self.physical_cores else f"{self.logical_cpus} CPUs"
        return f"{self.name}, {have}, {cores}"


def _parse_cpuinfo(text: str) -> dict[str, object]:
    """The first processor's fields of ``/proc/cpuinfo`` text, plus the set of (package, core) pairs of all."""
    first: dict[str, str] = {}
    cores: set[tuple[str, str]] = set()
    current: dict[str, str] = {}
    for block in text.split("\n\n"):
        current = {}
        for line in block.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                current[key.strip()] = value.strip()
        if not current:
            continue
        if not first:
            first = current
        if "core id" in current:
            cores.add((current.get("physical id", "0"), current["core id"]))
    return {"first": first, "cores": cores}


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def cpu_info(cpuinfo_path: str | os.PathLike = "/proc/cpuinfo") -> CpuInfo:
    """The CPU of this machine (no errors: unknown fields stay empty/None).

    Args:
        cpuinfo_path: The ``/proc/cpuinfo`` to read (a file with that format; tests pass their own).
    """
    try:
        text = Path(cpuinfo_path).read_text(errors="replace")
    except OSError:
        text = ""
    parsed = _parse_cpuinfo(text)
    first: dict[str, str] = parsed["first"]  # type: ignore[assignment]
    try:
        logical = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        logical = os.cpu_count() or 1
    cores = len(parsed["cores"]) or None  # type: ignore[arg-type]
    if cores is not None:
        cores = min(cores, logical)
    return CpuInfo(
        model=first.get("model name") or platform.processor() or platform.machine() or "unknown CPU",
        vendor=first.get("vendor_id", ""),
        family=_int(first.get("cpu family")),
        model_number=_int(first.get("model")),
        flags=frozenset(first.get("flags", "").split()),
        logical_cpus=logical,
        physical_cores=cores,
        architecture=platform.machine(),
    )


def native_precisions(cpu: CpuInfo) -> dict[str, bool]:
    """Inference precision → whether this CPU runs it natively: ``f32`` always; ``bf16`` with AVX512-BF16
    or AMX; ``int8`` with VNNI (without it int8 runs, but emulated dot products eat the gain)."""
    features = cpu.features
    return {"f32": True, "bf16": features["bf16"], "int8": features["vnni"]}


def auto_inference_precision(cpu: CpuInfo | None = None) -> str:
    """``"bf16"`` where the CPU has native bfloat16, else ``"f32"`` (what ``inference_precision="auto"``
    resolves to; the OpenVINO backend asks OpenVINO itself, which agrees on the CPUs it knows)."""
    return "bf16" if native_precisions(cpu or cpu_info())["bf16"] else "f32"


def cpu_record(cpu: CpuInfo | None = None) -> dict[str, object]:
    """The CPU as a calibration file records it: ``{"model", "vendor", "family", "model_number",
    "features"}`` (features: the names of :data:`FEATURE_FLAGS` present, sorted)."""
    cpu = cpu or cpu_info()
    return {
        "model": cpu.model,
        "vendor": cpu.vendor,
        "family": cpu.family,
        "model_number": cpu.model_number,
        "features": sorted(k for k, v in cpu.features.items() if v),
    }


def same_cpu_type(recorded: dict, current: dict) -> str | None:
    """None when two :func:`cpu_record` dicts describe the same CPU type (model name, family/model numbers
    and features), else a short description of the difference, e.g. ``"AMD EPYC [avx2] vs AMD EPYC
    [avx2 avx512 bf16 vnni]"``."""
    keys = ("model", "vendor", "family", "model_number", "features")
    if all(recorded.get(k) == current.get(k) for k in keys):
        return None

    def show(rec: dict) -> str:
        numbers = f" {rec.get('family')}/{rec.get('model_number')}" if rec.get("family") is not None else ""
        return f"{rec.get('model', '?')}{numbers} [{' '.join(rec.get('features') or []) or 'no AVX2'}]"

    return f"{show(recorded)} vs {show(current)}"
