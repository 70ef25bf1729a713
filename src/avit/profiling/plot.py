"""Plot of an ``avit profile`` run: latency and agreement per setting, tokens kept per pause point."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from avit.evaluation.plot import pyplot, save_figure
from avit.profiling.ort_profiler import stage_order


def _tick(row: dict[str, Any]) -> str:
    if row["thresholds"] is None:
        return row["label"]
    values = ", ".join("inf" if math.isinf(v) else f"{v:.3g}" for v in row["thresholds"])
    return f"{row['label']}\n({values})"


def plot_profile(report: dict[str, Any], path: str | os.PathLike) -> Path:
    """Panels over the settings (reference first): p50/p95 latency per call for each batch size,
    agreement with the reference (IoU, pixel), mean tokens kept after each pause point and, when the
    backend's profiler ran, the time per stage (stacked, first batch size).

    Args:
        report: :meth:`~avit.profiling.profile.ProfileReport.to_dict` output.
        path: PNG to write.
    """
    plt = pyplot()
    rows = report["rows"]
    batches = sorted({r["batch"] for r in rows})
    labels = list(dict.fromkeys(r["label"] for r in rows))
    first = {r["label"]: r for r in rows if r["batch"] == batches[0]}
    x = np.arange(len(labels))
    staged = all(first[lab].get("stages_ms") for lab in labels)
    panels = 4 if staged else 3
    fig, axes = plt.subplots(panels, 1, figsize=(max(7.0, 1.3 * len(labels) + 2), 3 * panels), dpi=110, sharex=True)

    ax = axes[0]
    for b in batches:
        per = {r["label"]: r for r in rows if r["batch"] == b}
        p50 = [per[lab]["latency_ms"]["p50"] if lab in per else np.nan for lab in labels]
        p95 = [per[lab]["latency_ms"]["p95"] if lab in per else np.nan for lab in labels]
        line = ax.plot(x, p50, marker="o", label=f"batch {b}: p50")[0]
        ax.plot(x, p95, marker="v", ls="--", color=line.get_color(), alpha=0.8, label=f"batch {b}: p95")
    if len(batches) > 1 and batches[-1] / batches[0] >= 3:
        ax.set_yscale("log")
    ax.set_ylabel("latency of one call (ms)")
    ax.set_title(f"{Path(report['model']).name} on {report['backend']}; reference: {report['reference']}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=max(1, len(batches)))

    ax = axes[1]
    ax.plot(x, [first[lab]["iou"] for lab in labels], marker="o", label="IoU")
    ax.plot(x, [first[lab]["pixel_agreement"] for lab in labels], marker="s", label="pixel agreement")
    ax.set_ylabel("agreement with reference")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)

    ax = axes[2]
    num_points = max((len(first[lab]["tokens_kept"]) for lab in labels), default=0)
    width = 0.8 / max(num_points, 1)
    for p in range(num_points):
        ax.bar(x + (p - (num_points - 1) / 2) * width, [first[lab]["tokens_kept"][p] for lab in labels], width,
               label=f"after pause point {p + 1}")
    ax.set_ylabel("tokens kept (mean)")
    ax.grid(alpha=0.3, axis="y")
    if num_points:
        ax.legend(fontsize=7)

    if staged:
        ax = axes[3]
        stages = stage_order([first[lab]["stages_ms"] for lab in labels])
        bottom = np.zeros(len(labels))
        cmap = plt.get_cmap("tab20")
        for k, stage in enumerate(stages):
            values = np.array([first[lab]["stages_ms"].get(stage, 0.0) for lab in labels])
            ax.bar(x, values, 0.6, bottom=bottom, label=stage, color=cmap(k % 20))
            bottom += values
        ax.set_ylabel(f"profiled ms per call, batch {batches[0]}")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=6, ncol=3)
    axes[-1].set_xticks(x, [_tick(first[lab]) for lab in labels], fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)
