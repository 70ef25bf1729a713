"""One-file checkpoints: config + ``state_dict`` + metadata, loaded with ``torch.load(weights_only=True)``.

Layout of the file (a ``torch.save`` dict of plain types and tensors only)::

    {"format": "avit-checkpoint", "format_version": 1, "avit_version": "0.1.0",
     "config": {...AdaptiveViTConfig.to_dict()...}, "state_dict": {...}, "meta": {...}}
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from avit import __version__
from avit._io import atomic_write
from avit.errors import CheckpointError, ConfigError
from avit.models.config import AdaptiveViTConfig
from avit.models.vit import AdaptiveViT

FORMAT = "avit-checkpoint"
FORMAT_VERSION = 1


def save_checkpoint(model: AdaptiveViT, path: str | os.PathLike, **meta: Any) -> Path:
    """Write ``model`` (config, weights) and ``meta`` (plain JSON-like values) to ``path`` atomically.

    Returns:
        The path written.
    """
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "avit_version": __version__,
        "config": model.config.to_dict(),
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
        "meta": dict(meta),
    }
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def torch_load(path: str | os.PathLike, what: str) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU with one-line errors.

    ``what`` names the expected content in messages (e.g. ``"an avit checkpoint"``).

    Raises:
        CheckpointError: missing file; corrupt or truncated file (not a zip archive or pickle stream);
            a pickle that needs globals outside PyTorch's weights-only allow-list (``not <what>``).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        with open(path, "rb") as f:
            pickle_stream = f.read(1) == b"\x80"  # PROTO opcode: a (non-zip) pickle of protocol >= 2
        if not zipfile.is_zipfile(path) and not pickle_stream:
            raise CheckpointError(f"{path} is corrupt or not a PyTorch checkpoint (UnpicklingError)") from exc
        detail = next((ln.strip() for ln in str(exc).splitlines() if "Unsupported" in ln), type(exc).__name__)
        raise CheckpointError(f"{path} is not {what} (refused to unpickle: {detail})") from exc
    # garbage bytes can also trip the weights-only unpickler's own bookkeeping (memo KeyError, stack IndexError)
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, AttributeError, KeyError, IndexError) as exc:
        raise CheckpointError(f"{path} is corrupt or truncated ({type(exc).__name__})") from exc


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load and validate the raw checkpoint dict (no model built).

    Raises:
        CheckpointError: missing/unreadable file, truncated or foreign file, missing fields.
    """
    path = Path(path)
    payload = torch_load(path, "an avit checkpoint")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an avit checkpoint (no '{FORMAT}' header)")
    if payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {payload.get('format_version')}, expected {FORMAT_VERSION}")
    for key in ("config", "state_dict"):
        if not isinstance(payload.get(key), dict):
            raise CheckpointError(f"{path} has no '{key}'")
    return payload


def load_checkpoint(path: str | os.PathLike) -> tuple[AdaptiveViT, dict[str, Any]]:
    """Rebuild the model stored at ``path`` (eval mode) and return it with its metadata.

    Raises:
        CheckpointError: see :func:`read_checkpoint`; invalid config; missing, unexpected or
            wrongly shaped weights.
    """
    payload = read_checkpoint(path)
    try:
        config = AdaptiveViTConfig.from_dict(payload["config"])
    except ConfigError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    model = AdaptiveViT(config)
    expected = model.state_dict()
    state = payload["state_dict"]
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} weights (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected weights (e.g. {unexpected[0]})")
        raise CheckpointError(f"{path}: weights do not fit the config: {'; '.join(parts)}")
    for key, tensor in state.items():
        if not isinstance(tensor, torch.Tensor) or tensor.shape != expected[key].shape:
            got = list(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise CheckpointError(f"{path}: weight {key} has shape {got}, expected {list(expected[key].shape)}")
    model.load_state_dict(state)
    return model.eval(), dict(payload.get("meta") or {})
