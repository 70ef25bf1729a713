"""``avit doctor`` and :mod:`avit.runtime.machine`: the CPU's features and native precisions, engines found or not
(a line, never a traceback), and no torch import on the way."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from avit import doctor
from avit.runtime import machine

SRC = Path(__file__).resolve().parents[1] / "src"

ZEN3 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 1
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse sse2 avx fma avx2 bmi2 sha_ni vaes
physical id\t: 0
core id\t\t: 0

processor\t: 1
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 1
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse sse2 avx fma avx2 bmi2 sha_ni vaes
physical id\t: 0
core id\t\t: 0
"""

SAPPHIRE_RAPIDS_FLAGS = "avx2 avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8 avx512_fp16"


def test_cpuinfo_of_an_avx2_only_cpu(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(ZEN3)
    cpu = machine.cpu_info(path)
    assert (cpu.model, cpu.vendor, cpu.family, cpu.model_number) == ("AMD EPYC 7B13", "AuthenticAMD", 25, 1)
    assert cpu.features == {"avx2": True, "avx512": False, "vnni": False, "bf16": False, "amx": False}
    assert cpu.physical_cores == 1  # two hyper-threads of one core
    assert machine.native_precisions(cpu) == {"f32": True, "bf16": False, "int8": False}
    assert machine.auto_inference_precision(cpu) == "f32"
    assert "AVX2" in cpu.describe() and "AVX-512" not in cpu.describe()


def test_cpuinfo_with_amx(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(ZEN3.replace("sha_ni vaes", SAPPHIRE_RAPIDS_FLAGS))
    cpu = machine.cpu_info(path)
    assert all(cpu.features.values())
    assert machine.auto_inference_precision(cpu) == "bf16"
    assert machine.native_precisions(cpu)["int8"]


def test_cpu_records_compare_by_type(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(ZEN3)
    zen3 = machine.cpu_record(machine.cpu_info(path))
    assert machine.same_cpu_type(zen3, dict(zen3)) is None
    other = {**zen3, "features": ["avx2", "avx512", "bf16", "vnni"], "model_number": 17}
    why = machine.same_cpu_type(zen3, other)
    assert why is not None and "25/1" in why and "25/17" in why and "bf16" in why


def test_this_machine_matches_proc_cpuinfo():
    """The features reported are the flags of /proc/cpuinfo, read here independently."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    if "flags" not in text:
        pytest.skip("no /proc/cpuinfo flags on this platform")
    flags = set(next(line for line in text.splitlines() if line.startswith("flags")).split(":", 1)[1].split())
    features = machine.cpu_info().features
    assert features["avx2"] == ("avx2" in flags)
    assert features["bf16"] == bool({"avx512_bf16", "amx_bf16"} & flags)
    assert features["vnni"] == bool({"avx512_vnni", "avx_vnni"} & flags)


def test_doctor_json_without_torch():
    """`avit doctor --json` in a fresh interpreter: valid JSON, the engines listed, and torch never imported."""
    code = (
        "import sys, io, contextlib\n"
        "from avit.cli.main import app\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n"
        "    app(['doctor', '--json'], standalone_mode=False)\n"
        "print(out.getvalue())\n"
        "print('TORCH', 'torch' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    body, _, last = proc.stdout.rstrip().rpartition("\n")
    assert last == "TORCH False"
    report = json.loads(body)
    import onnxruntime as ort

    engines = {e["name"]: e for e in report["engines"]}
    assert set(engines) == {"ONNX Runtime", "OpenVINO", "TensorRT", "CUDA", "tritonserver"}
    assert engines["ONNX Runtime"]["found"] and engines["ONNX Runtime"]["providers"] == ort.get_available_providers()
    cpu = machine.cpu_info()
    assert report["cpu"]["features"] == cpu.features
    assert report["precisions"]["auto"] == machine.auto_inference_precision(cpu)
    assert report["threads"]["logical_cpus"] == cpu.logical_cpus


def test_doctor_screen_in_a_subprocess():
    proc = subprocess.run([sys.executable, "-m", "avit.cli", "doctor"], capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0 and "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    assert f"CPU: {machine.cpu_info().describe()}" in proc.stdout
    assert "native inference precisions: f32" in proc.stdout


def test_missing_engines_are_lines(monkeypatch):
    """ONNX Runtime unimportable, OpenVINO and TensorRT absent: each is a 'not found' line saying what to install."""
    real = doctor.importlib.util.find_spec
    monkeypatch.setattr(doctor.importlib.util, "find_spec",
                        lambda name, *a: None if name in ("openvino", "tensorrt", "pytriton") else real(name, *a))
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` raises ImportError
    lines = doctor.report_lines(doctor.machine_report())
    found = {line.split()[0]: line for line in lines if line.startswith("  ") and "not found" in line}
    assert "pip install onnxruntime" in found["ONNX"]
    assert "pip install 'avit[openvino]'" in found["OpenVINO"]
    assert "TensorRT" in found and "tritonserver" in found
