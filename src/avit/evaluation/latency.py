"""Latency statistics of repeated backend calls (NumPy only).

A *sample* is the wall time of one backend call (one batch) in milliseconds, as measured by
:meth:`~avit.runtime.AdaptiveSession.run`. Percentiles use NumPy's linear interpolation, so with few
samples a high percentile lies between the largest ones (with 8 samples p95 is 0.35 of the way from
the second largest to the largest).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

#: Percentiles every report carries.
PERCENTILES = (50.0, 90.0, 95.0, 99.0)


def percentile_key(q: float) -> str:
    """``95 -> "p95"``, ``99.9 -> "p99.9"``."""
    return f"p{q:g}"


def latency_stats(samples_ms: Sequence[float], extra: Iterable[float] = ()) -> dict[str, float]:
    """``{"mean", "p50", "p90", "p95", "p99", <extra percentiles>, "n"}`` of per-call times in ms.

    Raises:
        ValueError: no samples.
    """
    arr = np.asarray(samples_ms, dtype=np.float64)
    if arr.size == 0:
        raise ValueError("no latency samples")
    qs = sorted(set(PERCENTILES) | {float(q) for q in extra})
    out = {"mean": float(arr.mean())}
    out.update({percentile_key(q): float(np.percentile(arr, q)) for q in qs})
    out["n"] = int(arr.size)
    return out


def percentile(samples_ms: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of the samples, linear interpolation. Raises ValueError when empty."""
    arr = np.asarray(samples_ms, dtype=np.float64)
    if arr.size == 0:
        raise ValueError("no latency samples")
    return float(np.percentile(arr, q))
