"""``acmize``: convert a trained adaptive ViT's MLPs into ACM learners and fit their gates.

The module itself (:class:`~avit.models.acm.AcmMlp`) and the method's description are in
:mod:`avit.models.acm`; this is the training procedure: the hidden units of each trained MLP are sorted
by importance and cut into learners (exact), and only the gate is fitted, by regression of ``log e_j``
on the measured per-token relative error after ``j`` learners.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from avit.models.acm import AcmMlp


@dataclasses.dataclass
class AcmBlockReport:
    """What :func:`acmize` did to one block.

    Attributes:
        block: Block index.
        tokens: Calibration tokens used.
        relative_error: Mean measured relative squared error of the MLP output after ``j`` learners,
            ``j = 0 .. L`` (1 at 0 learners, 0 at all).
        gate_loss_before, gate_loss_after: Mean squared error of the predicted ``log e_j`` before/after fitting.
    """

    block: int
    tokens: int
    relative_error: list[float]
    gate_loss_before: float
    gate_loss_after: float


@dataclasses.dataclass
class AcmReport:
    """Result of :func:`acmize`: per ACM block, and the wall time in seconds."""

    blocks: list[AcmBlockReport]
    seconds: float


def _capture_mlp_inputs(model: nn.Module, blocks: Sequence[int], images: torch.Tensor, batch: int) -> dict[int, torch.Tensor]:
    """Per block, the dense model's MLP inputs ``norm2(x)`` over ``images``: float ``[tokens, D]``."""
    captured: dict[int, list[torch.Tensor]] = {i: [] for i in blocks}
    handles = [
        model.blocks[i].norm2.register_forward_hook(lambda mod, inp, out, i=i: captured[i].append(out.flatten(0, 1)))
        for i in blocks
    ]
    try:
        with torch.no_grad():
            for start in range(0, images.shape[0], batch):
                x = model.embed(images[start : start + batch])
                for block in model.blocks:
                    x = block(x)
    finally:
        for h in handles:
            h.remove()
    return {i: torch.cat(v) for i, v in captured.items()}


def _relative_errors(mlp: AcmMlp, h: torch.Tensor) -> torch.Tensor:
    """float ``[T, L + 1]``: ``||y - y_{<j}||² / ||y||²`` for ``j = 0 .. L`` learners (dense reference ``y``)."""
    with torch.no_grad():
        parts = [mlp.learner(j, h) for j in range(mlp.learners)]
        full = torch.stack(parts).sum(0)
        denom = full.pow(2).sum(-1).clamp_min(1e-12)
        prefix = torch.zeros_like(full)
        errors = [torch.ones(h.shape[0])]
        for part in parts:
            prefix = prefix + part
            errors.append((full - prefix).pow(2).sum(-1) / denom)
        return torch.stack(errors, dim=1)


def _sort_hidden_units(mlp: AcmMlp, h: torch.Tensor) -> None:
    """Permute the hidden units by importance, most important first (an exact re-parametrisation)."""
    with torch.no_grad():
        act = mlp.act(mlp.fc1(h))
        importance = act.abs().mean(0) * mlp.fc2.weight.norm(dim=0)
        order = torch.argsort(importance, descending=True, stable=True)
        mlp.fc1.weight.copy_(mlp.fc1.weight[order])
        mlp.fc1.bias.copy_(mlp.fc1.bias[order])
        mlp.fc2.weight.copy_(mlp.fc2.weight[:, order])


def _fit_gate(mlp: AcmMlp, h: torch.Tensor, target: torch.Tensor, steps: int, lr: float) -> tuple[float, float]:
    """Fit ``log e_j`` (j = 1..L-1) to ``target`` ``[T, L-1]`` by Adam on the mean squared error."""

    def loss_fn() -> torch.Tensor:
        pred = torch.cumsum(F.logsigmoid(mlp.gate(h)), dim=-1)
        return (pred - target).pow(2).mean()

    with torch.no_grad():  # start from the mean step of the target curve
        steps_mean = torch.diff(target, dim=1, prepend=torch.zeros_like(target[:, :1])).mean(0).clamp(max=-1e-4)
        mlp.gate.fc2.weight.mul_(0.1)
        mlp.gate.fc2.bias.copy_(torch.log(torch.expm1(-steps_mean)).neg())  # logsigmoid(b) = steps_mean
        before = float(loss_fn())
    optimizer = torch.optim.Adam(mlp.gate.parameters(), lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = loss_fn()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return before, float(loss_fn())


def acmize(
    model: nn.Module,
    images: torch.Tensor,
    *,
    learners: int = 4,
    pause_points: Sequence[int] | None = None,
    gate_hidden: int = 64,
    steps: int = 300,
    lr: float = 3e-3,
    max_tokens: int = 8192,
    batch: int = 4,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
):
    """Convert a trained :class:`~avit.models.AdaptiveViT` into an ``acm``-policy model.

    Args:
        model: The source model (any policy; its token heads are dropped, its weights kept).
        images: float ``[n, C, H, W]`` calibration images, normalised for the model.
        learners: Learners per MLP (``mlp_hidden`` must be a multiple).
        pause_points: Where the ACM segments start (each segment's blocks share one tolerance input);
            default: the model's pause points, else ``(1,)``.
        gate_hidden: Gate hidden width.
        steps, lr: Adam steps and learning rate of each gate fit.
        max_tokens: Calibration tokens per block (a seeded random subset).
        batch: Images per forward pass while collecting tokens.
        seed: Seed of the token subset and the gate initialisation.
        log: Progress messages.

    Returns:
        ``(acm_model, AcmReport)``: at tolerance 0 the new model computes the source model (up to float
        summation order).
    """
    from avit.models.vit import AdaptiveViT

    say = log or (lambda msg: None)
    t0 = time.perf_counter()
    cfg = model.config
    points = tuple(pause_points) if pause_points is not None else (tuple(cfg.pause_points) or (1,))
    torch.manual_seed(seed)
    acm_cfg = cfg.replace(
        policy="acm", pause_points=points, acm_learners=learners, acm_gate_hidden=gate_hidden,
        default_thresholds=(), fill="stale" if cfg.fill == "canvas" else cfg.fill,
    )
    acm = AdaptiveViT(acm_cfg).eval()
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("pause_heads.")}
    result = acm.load_state_dict(state, strict=False)
    if result.unexpected_keys or any(".mlp.gate." not in k for k in result.missing_keys):
        raise ValueError(f"weights do not carry over: missing {result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]}")
    acm_blocks = list(range(points[0], cfg.depth))
    inputs = _capture_mlp_inputs(acm, acm_blocks, images, batch)
    gen = torch.Generator().manual_seed(seed)
    reports = []
    for i in acm_blocks:
        h = inputs[i]
        if h.shape[0] > max_tokens:
            h = h[torch.randperm(h.shape[0], generator=gen)[:max_tokens]]
        mlp = acm.blocks[i].mlp
        _sort_hidden_units(mlp, h)
        errors = _relative_errors(mlp, h)
        monotone = torch.cummin(errors[:, 1:learners], dim=1).values
        target = torch.log(monotone.clamp_min(1e-6))
        before, after = _fit_gate(mlp, h, target, steps, lr)
        rel = errors.mean(0).tolist()
        reports.append(AcmBlockReport(i, int(h.shape[0]), rel, before, after))
        say(
            f"block {i}: relative error after 0..{learners} learners "
            f"{', '.join(f'{e:.3f}' for e in rel)}; gate log-error MSE {before:.3f} -> {after:.3f}"
        )
    return acm.eval(), AcmReport(reports, time.perf_counter() - t0)
