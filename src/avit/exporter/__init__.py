"""Checkpoint → ONNX (and TensorRT engines): :func:`export_onnx`, parity checks.

The names below are imported on first use (PEP 562), so torch-free submodules (e.g.
:mod:`avit.exporter.tensorrt`) do not pay for importing PyTorch. Triton model repositories are written
by :mod:`avit.serving.triton`.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "INPUT_NAMES": "avit.exporter.onnx_export",
    "OUTPUT_NAMES": "avit.exporter.onnx_export",
    "ExportReport": "avit.exporter.onnx_export",
    "export_onnx": "avit.exporter.onnx_export",
    "to_onnx_proto": "avit.exporter.onnx_export",
    "ParityRow": "avit.evaluation.parity",
    "check_parity": "avit.exporter.parity",
    "probe_thresholds": "avit.exporter.parity",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'avit.exporter' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
