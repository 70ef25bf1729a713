"""Rich tables of profiling results (shared by ``avit demo`` and ``benchmarks/``)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from rich.table import Table

from avit.profiling.compare import CompareRow


def _values(values: Sequence[float]) -> str:
    return ", ".join("inf" if math.isinf(v) else f"{v:.3g}" for v in values)


def compare_table(rows: Sequence[CompareRow], title: str, *, compact: bool = False) -> Table:
    """One row per setting: thresholds, tokens kept, ms/image, images/s, speedup, MAC-ideal, agreement, MAE.

    ``compact``: the columns that fit 80 characters (setting, thresholds, tokens kept, ms, speedup,
    MAC-ideal, pixel agreement, MAE) with short headers, for narrow terminals and piped output.
    """
    if compact:
        table = Table(title=title, padding=(0, 1, 0, 0), pad_edge=False, box=None, title_justify="left")
        for col, justify in (("setting", "left"), ("thresholds", "right"), ("tokens", "right"), ("ms", "right"),
                             ("speedup", "right"), ("ideal", "right"), ("agree %", "right"), ("MAE", "right")):
            table.add_column(col, justify=justify, no_wrap=True)
        for r in rows:
            table.add_row(
                r.label, _values(r.thresholds[:1] if len(set(r.thresholds)) == 1 else r.thresholds),
                ",".join(f"{k:.0f}" for k in r.tokens_kept), f"{r.latency_ms:.0f}",
                f"{r.speedup:.2f}×", f"{r.ideal_speedup:.2f}×", f"{100 * r.pixel_agreement:.2f}", f"{r.mae:.4f}",
            )
        return table
    table = Table(title=title)
    for col in ("setting", "thresholds", "tokens kept", "ms / image", "images / s", "speedup", "MAC-ideal",
                "realised / ideal", "pixel agreement", "IoU", "MAE"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            r.label,
            _values(r.thresholds),
            ", ".join(f"{k:.0f}" for k in r.tokens_kept),
            f"{r.latency_ms:.0f}",
            f"{1e3 / r.latency_ms:.2f}",
            f"{r.speedup:.2f}×",
            f"{r.ideal_speedup:.2f}×",
            f"{r.efficiency:.2f}",
            f"{100 * r.pixel_agreement:.2f} %",
            f"{r.iou:.4f}",
            f"{r.mae:.4f}",
        )
    return table
