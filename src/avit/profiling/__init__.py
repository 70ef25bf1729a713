"""Measuring adaptive models on the real backend: latency, speedup vs. static, MACs, agreement."""

from avit.profiling.compare import CompareRow, compare_settings

__all__ = ["CompareRow", "compare_settings"]
