"""The Pareto-front plot of a calibration (matplotlib, Agg backend, written atomically)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from avit.evaluation.plot import pyplot, save_figure
from avit.evaluation.latency import percentile_key


def plot_pareto(data: dict[str, Any], path: str | os.PathLike) -> Path:
    """Latency vs quality of every measured setting, the Pareto front, the target, chosen and presets.

    Args:
        data: A calibration document (as written by :func:`~avit.calibration.calibrate`).
        path: PNG to write.
    """
    plt = pyplot()
    q = data["target"]["percentile"]
    key = percentile_key(q)
    target = data["target"]["latency_ms"]
    batch = data["target"]["batch"]
    points = data["points"]
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=120)
    quick = [p for p in points if not p["remeasured"]]
    again = [p for p in points if p["remeasured"]]
    ax.scatter([p["latency_ms"][key] for p in quick], [p["quality"] for p in quick], s=14, c="0.65",
               label="measured during the search")
    ax.scatter([p["latency_ms"][key] for p in again], [p["quality"] for p in again], s=26, c="tab:blue",
               label="re-measured (interleaved)")
    front = sorted((p for p in points if p["pareto"]), key=lambda p: p["latency_ms"][key])
    if front:
        ax.step([p["latency_ms"][key] for p in front], [p["quality"] for p in front], where="post",
                c="tab:blue", lw=1, alpha=0.7, label="Pareto front")
    ax.axvline(target, c="tab:red", ls="--", lw=1, label=f"target {target:g} ms")
    chosen = data["chosen"]
    ax.scatter([chosen["latency_ms"][key]], [chosen["quality"]], marker="*", s=220, c="tab:red", zorder=5,
               label="chosen" if chosen["meets_target"] else "fastest (target not met)")
    held = data.get("heldout")
    if held:
        ax.scatter([held["latency_ms"][key]], [held["quality"]], marker="D", s=50, facecolors="none",
                   edgecolors="tab:green", zorder=5, label=f"chosen on {len(held['images'])} held-out images")
    labels: dict[tuple[float, float], list[str]] = {}
    for name, preset in data["presets"].items():
        if name != "target":
            labels.setdefault((preset["latency_ms"], preset["quality"]), []).append(name)
    for (x, y), names in labels.items():
        ax.annotate(", ".join(names), (x, y), textcoords="offset points", xytext=(5, -12), fontsize=8, color="0.25")
    ax.set_xlabel(f"{key} latency of one call, batch {batch} (ms)")
    ax.set_ylabel(f"quality ({data['measurement']['metric']})")
    ax.set_title(f"{data['model']['file']}: latency vs quality ({data['backend']['name']})", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return save_figure(fig, path)
