"""matplotlib for avit's plots: the Agg backend, imported lazily, figures written atomically."""

from __future__ import annotations

import os
from pathlib import Path

from avit._io import atomic_write
from avit.errors import BackendUnavailableError


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend. Raises :class:`BackendUnavailableError` if missing."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise BackendUnavailableError("plots need matplotlib: pip install 'avit[plot]'") from exc
    return plt


def save_figure(fig, path: str | os.PathLike) -> Path:
    """Write ``fig`` as PNG to ``path`` (temporary name, then rename) and close it."""
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        fig.clear()
        pyplot().close(fig)
