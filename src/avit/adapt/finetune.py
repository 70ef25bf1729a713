"""Pause-aware fine-tuning: train the blocks after the first pause point with real token removal in the loop.

A frozen backbone cannot pause tokens without damage (removing tokens changes the attention context of
the ones that stay), so the published token-reduction methods all train with the reduction in the loop
(DToP, DynamicViT, Token Cropr, ALGM; see ``NOTES-adaptive-training.md``). This module does that on a
CPU budget:

* **cache**: the blocks before the first pause point stay frozen; for every augmented training view the
  ORIGINAL model (the checkpoint as given, nothing paused) runs once and the cache keeps its tokens at the
  first pause point (prefix included), its dense logits and its normalised final tokens;
* **student**: from the cached tokens, the later blocks run with real removal
  (``avit::AvitEntropySelect`` / ``AvitTokenGather`` / ``AvitTokenScatter`` have autograd) at pause
  thresholds sampled per step — one model serves the whole knob. Per step a keep fraction ``f`` is drawn
  from ``U(f_min, 1)`` (``f_min`` ramps from 1 down to :data:`MIN_KEEP` over the first ``ramp`` part of
  training, Token Cropr's schedule) and turned into the threshold that keeps ``f`` of the tokens at the
  first pause point (the quantile of the head's scores), so steps spread evenly over the knob's useful
  range instead of piling up where nothing or everything pauses;
* **loss** (distillation to the original, DynamicViT): per-pixel BCE (one sigmoid logit) or KL (softmax)
  at temperature ``T`` (× T²) + ``feature_weight`` × MSE of the normalised final-token grid (filled slots
  included) + ``head_weight`` × soft cross-entropy of the later pause points' token heads (their inputs
  change as the blocks train);
* **trainable** (the measured default): **pause adapters** — after every block from the first pause point a
  rank-4 residual adapter gated by the image's paused fraction (:class:`~avit.models.heads.PauseAdapter`,
  zero-initialised, exactly zero with nothing paused, so the nothing-paused output stays the original's
  and one model serves the whole knob). Optional: the later blocks' Linear layers (``train_blocks``;
  measured to move the nothing-paused output on unseen photos), the heads' feature predictors and later
  classifiers (``train_heads``; measured to over-fit their closed-form fit on few photos), the decoder's
  convolutions. LayerScale gammas and LayerNorms never train (Adam's scale-free steps wreck small gammas),
  the decoder stays in eval mode (its BatchNorm keeps the original running statistics), and so does the
  first head's classifier (its input is frozen; it was fitted exactly).

Everything is seeded; the device is ``cuda`` when torch sees one, else the CPU.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from avit.adapt.distill import _normalise, attention_impl, augment, token_targets
from avit.data import load_image, preprocess
from avit.errors import InputError
from avit.models.vit import AdaptiveViT

#: Lowest keep fraction sampled at the first pause point once the ramp is over.
MIN_KEEP = 0.1
#: Probability of a nothing-paused step (anchors the model to the original with nothing paused).
NOTHING_PAUSED_PROB = 0.1


@dataclasses.dataclass
class FinetuneSettings:
    """Hyper-parameters of :func:`finetune` (defaults: chosen by the measurements in the fine-tuning report).

    Attributes:
        steps: Optimiser steps (0 = stop at ``minutes``). A step count makes the result independent of the
            machine's load: 600 take about 2.5 min on 2 idle CPU cores at 448 px with rank-4 adapters.
        minutes: Wall-time cap of the training loop (caching excluded); None = no limit.
        views: Augmented training views cached (each: one full forward of the original, ~1 s on 2 cores).
        batch: Views per step.
        lr: AdamW learning rate of the blocks' Linear layers (linear warm-up over 5 %, cosine decay).
        head_lr: Learning rate of the token heads' classifiers and feature predictors.
        temperature: Distillation temperature T of the pixel loss.
        feature_weight: Weight of the normalised final-token MSE.
        head_weight: Weight of the later heads' soft cross-entropy.
        ramp: Fraction of the steps over which the lowest keep fraction ramps from 1 to ``min_keep``.
        min_keep: Lowest keep fraction at the first pause point.
        train_decoder: Also train the decoder's convolutions (BatchNorm statistics stay frozen).
        train_blocks: Train the Linear layers of the blocks after the first pause point (measured: moves
            the nothing-paused output on unseen photos; off by default).
        train_heads: Train the heads' feature predictors and the later heads' classifiers (measured:
            over-fits the closed-form fit of :mod:`avit.adapt.distill` on few photos; off by default).
        optimizer: ``adamw`` or ``sgd`` (with ``momentum``) for the blocks; heads always use AdamW.
        momentum: SGD momentum.
        clip: Largest gradient norm of the blocks' parameters per step (bounds every update).
        adapter_rank: Rank of the pause adapters (:class:`~avit.models.heads.PauseAdapter`) added after
            every block from the first pause point (0 = none); they are zero with nothing paused.
        adapter_lr: AdamW learning rate of the pause adapters.
        seed: Seeds augmentation, sampling and initialisation.
    """

    steps: int = 600
    minutes: float | None = None
    views: int = 64
    batch: int = 1
    lr: float = 1e-5
    head_lr: float = 1e-4
    temperature: float = 1.0
    feature_weight: float = 0.1
    head_weight: float = 0.1
    ramp: float = 0.3
    min_keep: float = MIN_KEEP
    train_decoder: bool = False
    train_blocks: bool = False
    train_heads: bool = False
    optimizer: str = "adamw"
    momentum: float = 0.9
    clip: float = 1.0
    adapter_rank: int = 4
    adapter_lr: float = 3e-4
    seed: int = 0

    def validate(self) -> None:
        """Raises :class:`InputError` on a value out of range."""
        if not isinstance(self.steps, int) or self.steps < 0:
            raise InputError(f"steps must be a non-negative integer, got {self.steps!r}")
        if self.minutes is not None and not (self.minutes > 0):
            raise InputError(f"minutes must be positive, got {self.minutes!r}")
        if self.steps == 0 and self.minutes is None:
            raise InputError("give steps > 0 or a time budget in minutes")
        if not isinstance(self.views, int) or self.views < 1:
            raise InputError(f"views must be a positive integer, got {self.views!r}")
        if not isinstance(self.batch, int) or self.batch < 1:
            raise InputError(f"batch must be a positive integer, got {self.batch!r}")
        if not isinstance(self.adapter_rank, int) or self.adapter_rank < 0:
            raise InputError(f"adapter_rank must be a non-negative integer, got {self.adapter_rank!r}")
        if not (self.train_blocks or self.train_heads or self.train_decoder or self.adapter_rank):
            raise InputError("nothing to train: enable blocks, heads, decoder or pause adapters")
        for name in ("lr", "head_lr", "temperature", "adapter_lr"):
            if not (getattr(self, name) > 0):
                raise InputError(f"{name} must be positive, got {getattr(self, name)!r}")
        for name in ("feature_weight", "head_weight"):
            if not (getattr(self, name) >= 0):
                raise InputError(f"{name} must be non-negative, got {getattr(self, name)!r}")
        if self.optimizer not in ("adamw", "sgd"):
            raise InputError(f"optimizer must be adamw or sgd, got {self.optimizer!r}")
        if not (0 <= self.ramp <= 1) or not (0 <= self.min_keep <= 1):
            raise InputError("ramp and min_keep must lie in [0, 1]")


@dataclasses.dataclass
class FinetuneCache:
    """What the original model computed on the training views (float16 to halve memory).

    Attributes:
        start_tokens: float16 ``[V, prefix + N, D]``: tokens after the blocks before the first pause point.
        logits: float16 ``[V, C, H, W]``: the original's dense logits (nothing paused).
        final_norm: float16 ``[V, N, D]``: the original's final-norm output of the patch tokens.
        targets: float32 ``[V, N, head_classes]``: token-head soft targets (:func:`token_targets`).
        names: Source photo of each view.
    """

    start_tokens: torch.Tensor
    logits: torch.Tensor
    final_norm: torch.Tensor
    targets: torch.Tensor
    names: list[str]

    @property
    def num_views(self) -> int:
        return int(self.start_tokens.shape[0])


@dataclasses.dataclass
class FinetuneReport:
    """What :func:`finetune` did.

    Attributes:
        steps: Optimiser steps taken.
        seconds: Wall time of the training loop (s).
        cache_seconds: Wall time of caching the original's outputs (s).
        views: Training views cached.
        images: Training photos' names.
        device: The torch device trained on.
        loss_first, loss_last: Mean total loss over the first / last 10 % of steps.
        losses: Per step: total loss.
        trainable_parameters: Number of trained parameters.
        settings: The :class:`FinetuneSettings` used, as a dict.
    """

    steps: int
    seconds: float
    cache_seconds: float
    views: int
    images: list[str]
    device: str
    loss_first: float
    loss_last: float
    losses: list[float]
    trainable_parameters: int
    settings: dict


def default_device() -> torch.device:
    """``cuda`` when torch sees a GPU, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/``"auto"`` → :func:`default_device`; else the named device.

    Raises:
        InputError: an unknown device string, or ``cuda`` when torch sees no GPU.
    """
    if device is None or device == "auto":
        return default_device()
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError("device cuda requested but torch sees no GPU; use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise InputError(f"device {device!r} is not supported; use cpu, cuda or cuda:N")
    return dev


# ---------------------------------------------------------------------------------------------- views
def training_views(
    model: AdaptiveViT, image_paths: Sequence[str | os.PathLike], views: int, seed: int
) -> Iterator[tuple[np.ndarray, str]]:
    """Yield ``views`` preprocessed float32 ``[3, H, W]`` views and their photo names.

    The first view of each photo is the plain photo (as inference sees it), then its horizontal flip;
    the rest are random resized crops with flips and mild colour jitter (:func:`avit.adapt.distill.augment`).
    """
    c = model.config
    rng = np.random.default_rng(seed)
    originals = [load_image(p) for p in image_paths]
    names = [os.path.basename(str(p)) for p in image_paths]
    n = len(originals)
    for v in range(views):
        i = v % n
        if v < n:
            yield preprocess(originals[i], c.img_size, c.mean, c.std), names[i]
        elif v < 2 * n:
            yield preprocess(np.ascontiguousarray(originals[i][:, ::-1]), c.img_size, c.mean, c.std), names[i]
        else:
            yield _normalise(augment(originals[i], c.img_size, rng), c.mean, c.std), names[i]


@torch.no_grad()
def build_finetune_cache(
    reference: AdaptiveViT,
    image_paths: Sequence[str | os.PathLike],
    views: int,
    *,
    first_pause: int,
    seed: int = 0,
    device: torch.device | None = None,
    batch: int = 4,
    on_view: Callable[[], None] | None = None,
) -> FinetuneCache:
    """Run the original model (nothing paused) on ``views`` training views and cache what training needs.

    Args:
        reference: The original model (any pause points; it runs every block on every token).
        image_paths: Training photos.
        views: Views to cache (see :func:`training_views`).
        first_pause: The fine-tuned model's first pause point (blocks before it are frozen and cached).
        seed: Augmentation seed.
        device: Where the forward passes run (results stored on the CPU).
        batch: Views per forward pass.
        on_view: Called after each view (progress).

    Raises:
        InputError: no photos, unreadable photo.
    """
    if not image_paths:
        raise InputError("no training photos given")
    device = device or torch.device("cpu")
    reference = reference.to(device).eval()
    c = reference.config
    starts, logits, finals, targets, names = [], [], [], [], []
    pending: list[np.ndarray] = []

    def flush() -> None:
        x = torch.from_numpy(np.stack(pending)).to(device)
        x = reference.embed(x)
        for i, block in enumerate(reference.blocks):
            if i == first_pause:
                starts.append(x.half().cpu())
            x = block(x)
        if first_pause == len(reference.blocks):
            starts.append(x.half().cpu())
        final = x[:, c.num_prefix_tokens :]
        out = reference.decode(final)
        logits.append(out.half().cpu())
        finals.append(reference.norm(final).half().cpu())
        targets.append(token_targets(out.float(), c.patch_size).cpu())
        if on_view is not None:
            for _ in pending:
                on_view()
        pending.clear()

    with attention_impl(reference, "sdpa"):
        for view, name in training_views(reference, image_paths, views, seed):
            pending.append(view)
            names.append(name)
            if len(pending) == batch:
                flush()
        if pending:
            flush()
    return FinetuneCache(torch.cat(starts), torch.cat(logits), torch.cat(finals), torch.cat(targets), names)


# ---------------------------------------------------------------------------------------------- forward
@dataclasses.dataclass
class PartialForward:
    """The student's forward from the first pause point (see :func:`forward_from_first_pause`).

    Attributes:
        logits: float ``[B, C, H, W]``.
        grid: float ``[B, N, D]`` pre-norm token grid given to the decoder (paused slots filled).
        tokens_kept: int64 ``[B, P]``.
        head_logits: Per pause point after the first: float ``[B, n_p, head_classes]`` on its active tokens.
        head_pos: Per pause point after the first: int64 ``[B, n_p]`` grid positions of those tokens.
        head_counts: Per pause point after the first: int64 ``[B]`` real (non-padding) tokens.
    """

    logits: torch.Tensor
    grid: torch.Tensor
    tokens_kept: torch.Tensor
    head_logits: list[torch.Tensor]
    head_pos: list[torch.Tensor]
    head_counts: list[torch.Tensor]


def forward_from_first_pause(model: AdaptiveViT, x: torch.Tensor, thresholds: torch.Tensor) -> PartialForward:
    """:meth:`AdaptiveViT.forward` from the first pause point on, with real token removal and autograd.

    Args:
        model: A token-head policy model (not ``acm``) with at least one pause point.
        x: float ``[B, prefix + N, D]``: tokens after ``blocks[:pause_points[0]]``.
        thresholds: float32 ``[P]`` pause thresholds.

    Returns:
        The :class:`PartialForward` (same logits as ``model(images, thresholds)`` for the same tokens).
    """
    later: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    logits, kept, grid = model.forward_tokens(
        x, thresholds, model.default_dtop_k, first_block=model.config.pause_points[0], later_heads=later
    )
    return PartialForward(logits, grid, kept, [h for h, _, _ in later], [p for _, p, _ in later], [n for _, _, n in later])


def head_scores(model: AdaptiveViT, head_logits: torch.Tensor) -> torch.Tensor:
    """Per-token pause score of the policy (a token pauses when its score is below the threshold).

    entropy: the head's entropy (nats); confidence: ``1 - max p``. float ``[..., n]``.
    """
    logp = head_logits.float().log_softmax(dim=-1)
    if model.config.policy == "confidence":
        return 1.0 - logp.exp().max(dim=-1).values
    return -(logp.exp() * logp).sum(dim=-1)


def threshold_for_keep(model: AdaptiveViT, head_logits: torch.Tensor, keep: float) -> float:
    """The first pause point's threshold that keeps about ``keep`` of the tokens (over the batch).

    ``keep_ratio``: the ratio itself. Scores policies: the ``1 - keep`` quantile of the head's scores,
    nudged just above it so that the ``1 - keep`` least uncertain tokens pause.
    """
    if model.config.policy == "keep_ratio":
        return float(keep)
    if keep >= 1.0:
        return model.config.nothing_paused_value
    scores = head_scores(model, head_logits).flatten()
    q = torch.quantile(scores, min(max(1.0 - keep, 0.0), 1.0))
    return float(torch.nextafter(q, torch.tensor(math.inf, dtype=q.dtype, device=q.device)))


# ---------------------------------------------------------------------------------------------- loss
def distillation_loss(
    model: AdaptiveViT,
    out: PartialForward,
    teacher_logits: torch.Tensor,
    teacher_final_norm: torch.Tensor,
    targets: torch.Tensor,
    settings: FinetuneSettings,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Distillation loss of one step (see the module docstring); returns ``(loss, parts)``.

    Shapes: ``teacher_logits`` float ``[B, C, H, W]``; ``teacher_final_norm`` float ``[B, N, D]``;
    ``targets`` float ``[B, N, head_classes]``.
    """
    t = settings.temperature
    s, q = out.logits / t, teacher_logits.float() / t
    if s.shape[1] == 1:
        pixel = F.binary_cross_entropy_with_logits(s, torch.sigmoid(q)) - F.binary_cross_entropy_with_logits(q, torch.sigmoid(q))
    else:
        pixel = F.kl_div(s.log_softmax(dim=1), q.log_softmax(dim=1), log_target=True, reduction="none").sum(1).mean()
    pixel = pixel * t * t
    feature = F.mse_loss(model.norm(out.grid), teacher_final_norm.float())
    head = out.logits.new_zeros(())
    for logits, pos, counts in zip(out.head_logits, out.head_pos, out.head_counts):
        tgt = torch.gather(targets, 1, pos[..., None].expand(-1, -1, targets.shape[-1]))
        real = (torch.arange(pos.shape[1], device=pos.device)[None, :] < counts[:, None]).float()
        ce = -(tgt * logits.log_softmax(-1)).sum(-1) + (tgt * tgt.clamp_min(1e-12).log()).sum(-1)
        head = head + (ce * real).sum() / real.sum().clamp_min(1.0)
    loss = pixel + settings.feature_weight * feature + settings.head_weight * head
    return loss, {"pixel": float(pixel.detach()), "feature": float(feature.detach()), "head": float(head.detach())}


# ---------------------------------------------------------------------------------------------- training
def trainable_parameters(model: AdaptiveViT, settings: FinetuneSettings) -> tuple[list, list]:
    """``(block_params, head_params)`` trained by :func:`finetune`; sets ``requires_grad`` on the model.

    Blocks after the first pause point: every ``nn.Linear`` weight and bias (qkv, proj, fc1, fc2). Heads:
    every feature predictor, and the classifiers of the pause points after the first. With
    ``train_decoder``: the decoder's (transposed) convolutions. Everything else is frozen.
    """
    for param in model.parameters():
        param.requires_grad_(False)
    first = model.config.pause_points[0]
    blocks: list[torch.nn.Parameter] = []
    for block in model.blocks[first:] if settings.train_blocks else ():
        for module in block.modules():
            if isinstance(module, torch.nn.Linear):
                blocks.extend([module.weight] + ([module.bias] if module.bias is not None else []))
    if settings.train_decoder:
        for module in model.decoder.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                blocks.extend([module.weight] + ([module.bias] if module.bias is not None else []))
    heads: list[torch.nn.Parameter] = []
    for p, head in enumerate(model.pause_heads if settings.train_heads else ()):
        if head.feature is not None:
            heads.extend(head.feature.parameters())
        if p > 0:
            heads.extend(head.fc.parameters())
    for param in blocks + heads:
        param.requires_grad_(True)
    return blocks, heads


def add_pause_adapters(model: AdaptiveViT, rank: int) -> AdaptiveViT:
    """Give ``model`` (in place) zero-initialised :class:`~avit.models.heads.PauseAdapter` s of ``rank`` after
    every block from the first pause point on; its outputs are unchanged until they are trained."""
    from avit.models.heads import PauseAdapter

    c = model.config.replace(pause_adapter_rank=int(rank))
    first = c.pause_points[0]
    model.config = c
    model.pause_adapters = torch.nn.ModuleList(PauseAdapter(c.embed_dim, rank) for _ in range(c.depth - first))
    return model


def _lr_factor(step: int, total: int) -> float:
    warm = max(1, int(0.05 * total))
    if step < warm:
        return (step + 1) / warm
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))


def finetune(
    model: AdaptiveViT,
    image_paths: Sequence[str | os.PathLike],
    settings: FinetuneSettings | None = None,
    *,
    reference: AdaptiveViT | None = None,
    device: str | torch.device | None = None,
    progress=None,
    cache: FinetuneCache | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> FinetuneReport:
    """Fine-tune ``model`` in place with real token removal in the loop, distilling to the original.

    Args:
        model: An adaptive ViT with token heads (policy ``entropy``, ``confidence``, ``keep_ratio`` or
            ``dtop``) and at least one pause point. Left in eval mode on the CPU.
        image_paths: Training photos (never the held-out ones).
        settings: Hyper-parameters (:class:`FinetuneSettings`).
        reference: The original model the student distils to (nothing paused); None = a frozen copy of
            ``model`` as given.
        device: ``cpu`` | ``cuda`` | ``cuda:N`` | None (= cuda when available).
        progress: A ``rich.progress.Progress`` (or None).
        cache: A prebuilt :class:`FinetuneCache` (from :func:`build_finetune_cache`) to reuse.
        clock: Seconds of a monotonic clock; ``settings.minutes`` is measured on it and so are the
            report's times (tests inject a fake one).

    Returns:
        The :class:`FinetuneReport`.

    Raises:
        InputError: a model without token heads or pause points, bad settings, no photos, bad device.
    """
    settings = settings or FinetuneSettings()
    settings.validate()
    c = model.config
    if not c.pause_points or not c.has_token_heads:
        raise InputError(f"fine-tuning needs pause points with token heads; this model has policy {c.policy!r} "
                         f"and pause points {list(c.pause_points)}")
    dev = resolve_device(device)
    torch.manual_seed(settings.seed)
    t0 = clock()
    cache = _cache_for(model, reference, image_paths, settings, dev, progress, cache)
    cache_seconds = clock() - t0
    model.to(dev).eval()  # eval: the decoder's BatchNorm keeps the original running statistics
    trainer = _Trainer.build(model, settings, dev)
    t_start = clock()
    with attention_impl(model, "sdpa"):
        losses = _train(trainer, cache, settings, progress, clock, t_start)
    seconds = clock() - t_start
    for param in model.parameters():
        param.requires_grad_(False)
    model.cpu().eval()
    tenth = max(1, len(losses) // 10)
    return FinetuneReport(
        steps=len(losses),
        seconds=seconds,
        cache_seconds=cache_seconds,
        views=cache.num_views,
        images=sorted(set(cache.names)),
        device=str(dev),
        loss_first=float(np.mean(losses[:tenth])) if losses else float("nan"),
        loss_last=float(np.mean(losses[-tenth:])) if losses else float("nan"),
        losses=losses,
        trainable_parameters=trainer.trainable_parameters,
        settings=dataclasses.asdict(settings),
    )


def _cache_for(
    model: AdaptiveViT,
    reference: AdaptiveViT | None,
    image_paths: Sequence[str | os.PathLike],
    settings: FinetuneSettings,
    dev: torch.device,
    progress,
    cache: FinetuneCache | None,
) -> FinetuneCache:
    """The frozen reference's :class:`FinetuneCache` (``cache`` when given); the reference ends frozen on the CPU."""
    if reference is None:
        reference = copy.deepcopy(model)
    reference.eval()
    for param in reference.parameters():
        param.requires_grad_(False)
    if cache is not None:
        return cache
    task = progress.add_task("caching the original's outputs", total=settings.views) if progress is not None else None
    cache = build_finetune_cache(
        reference, image_paths, settings.views, first_pause=model.config.pause_points[0], seed=settings.seed, device=dev,
        on_view=(lambda: progress.advance(task)) if task is not None else None,
    )
    reference.cpu()
    return cache


@dataclasses.dataclass
class _Trainer:
    """The trained parameters of :func:`finetune`, their optimisers and one optimiser step."""

    model: AdaptiveViT
    settings: FinetuneSettings
    device: torch.device
    block_params: list
    head_params: list
    adapters: torch.nn.ModuleList | None
    optimizers: list
    base_lrs: list

    @classmethod
    def build(cls, model: AdaptiveViT, settings: FinetuneSettings, dev: torch.device) -> _Trainer:
        """Freeze ``model`` but what ``settings`` trains (adding pause adapters if asked); one optimiser per group."""
        block_params, head_params = trainable_parameters(model, settings)
        if settings.adapter_rank and not len(model.pause_adapters):
            add_pause_adapters(model, settings.adapter_rank)
        adapters = model.pause_adapters.to(dev) if len(model.pause_adapters) else None
        optimizers = []
        if adapters is not None:
            for param in adapters.parameters():
                param.requires_grad_(True)
            optimizers.append(torch.optim.AdamW(adapters.parameters(), lr=settings.adapter_lr, weight_decay=0.0))
        if head_params:
            optimizers.append(torch.optim.AdamW(head_params, lr=settings.head_lr, weight_decay=0.0))
        if block_params and settings.optimizer == "sgd":
            optimizers.append(torch.optim.SGD(block_params, lr=settings.lr, momentum=settings.momentum))
        elif block_params:
            optimizers.append(torch.optim.AdamW(block_params, lr=settings.lr, weight_decay=0.0))
        base_lrs = [[g["lr"] for g in opt.param_groups] for opt in optimizers]
        return cls(model, settings, dev, block_params, head_params, adapters, optimizers, base_lrs)

    @property
    def trainable_parameters(self) -> int:
        adapters = sum(p.numel() for p in self.adapters.parameters()) if self.adapters is not None else 0
        return sum(p.numel() for p in self.block_params + self.head_params) + adapters

    def step(self, cache: FinetuneCache, idx: list[int], keep: float, lr_factor: float) -> float:
        """One optimiser step on cached views ``idx`` with the first pause point keeping ``keep`` of the
        tokens (every pause point at that threshold); returns the loss."""
        model, settings, dev = self.model, self.settings, self.device
        c = model.config
        ix = torch.tensor(idx)
        x = cache.start_tokens[ix].to(dev).float()
        with torch.no_grad():
            head0 = model.pause_heads[0](x[:, c.num_prefix_tokens :])[0]
        value = threshold_for_keep(model, head0, keep)
        thresholds = torch.full((len(c.pause_points),), value, dtype=torch.float32, device=dev)
        out = forward_from_first_pause(model, x, thresholds)
        loss, _ = distillation_loss(
            model, out, cache.logits[ix].to(dev), cache.final_norm[ix].to(dev), cache.targets[ix].to(dev), settings
        )
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.block_params and settings.clip > 0:
            torch.nn.utils.clip_grad_norm_(self.block_params, settings.clip)
        for opt, bases in zip(self.optimizers, self.base_lrs):
            for group, base in zip(opt.param_groups, bases):
                group["lr"] = base * lr_factor
            opt.step()
        return float(loss.detach())


def _train(
    trainer: _Trainer, cache: FinetuneCache, settings: FinetuneSettings, progress, clock: Callable[[], float], t_start: float
) -> list[float]:
    """The training loop: ``settings.steps`` steps, or fewer when ``settings.minutes`` pass first on ``clock``
    (counted from ``t_start``); with ``steps=0`` the minutes are the whole budget and the schedule's length
    is re-estimated from the pace so far. Returns the loss of every step taken."""
    gen = np.random.default_rng(settings.seed + 1)
    budget = settings.minutes * 60.0 if settings.minutes is not None else math.inf
    total = settings.steps if settings.steps else 10**9
    # The schedule needs a step count: with only a time budget, estimate it after a few steps.
    planned = settings.steps or None
    task = progress.add_task("fine-tuning with token removal", total=settings.steps or None) if progress is not None else None
    losses: list[float] = []
    order = gen.permutation(cache.num_views)
    cursor = 0
    step = 0
    while step < total:
        elapsed = clock() - t_start
        if elapsed >= budget:
            break
        if not settings.steps and step >= 5 and step % 10 == 5:  # time budget: re-plan the schedule's length
            planned = max(step + 1, int(step + (budget - elapsed) / (elapsed / step)))
            if task is not None:
                progress.update(task, total=planned)
        horizon = planned or 1000
        idx = []
        for _ in range(settings.batch):
            if cursor == len(order):
                order, cursor = gen.permutation(cache.num_views), 0
            idx.append(int(order[cursor]))
            cursor += 1
        # Keep fraction: ramp its lower end from 1 to min_keep, then sample uniformly.
        lowest = 1.0 - (1.0 - settings.min_keep) * min(1.0, step / max(1.0, settings.ramp * horizon))
        keep = 1.0 if gen.random() < NOTHING_PAUSED_PROB else float(gen.uniform(lowest, 1.0))
        losses.append(trainer.step(cache, idx, keep, _lr_factor(step, horizon)))
        step += 1
        if task is not None:
            progress.advance(task)
    return losses


# ---------------------------------------------------------------------------------------------- defaults
#: Keep fractions at the first pause point whose thresholds are the default candidates, mildest first.
CANDIDATE_KEEP = (0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5, 0.45, 0.4, 0.35, 0.3, 0.25, 0.2, 0.15, 0.1)


@torch.no_grad()
def knob_candidates(model: AdaptiveViT, images: torch.Tensor, keeps: Sequence[float] = CANDIDATE_KEEP) -> list[tuple[float, ...]]:
    """Uniform settings (one value at every pause point) that keep ``keeps`` of the tokens at the first pause point.

    The value for keep fraction ``f`` is the ``1 - f`` quantile of the first head's pause scores over
    ``images`` (float32 ``[B, 3, H, W]``), rounded to 4 decimals, so the settings lie inside the knob's
    useful range (an entropy of two classes never exceeds ln 2). Mildest first, duplicates dropped.
    """
    c = model.config
    if c.policy == "keep_ratio":
        return [(round(float(k), 4),) * len(c.pause_points) for k in keeps]
    first = c.pause_points[0]
    scores = []
    with attention_impl(model, "sdpa"):
        for i in range(images.shape[0]):
            x = model.embed(images[i : i + 1])
            for block in model.blocks[:first]:
                x = block(x)
            scores.append(head_scores(model, model.pause_heads[0](x[:, c.num_prefix_tokens :])[0]).flatten())
    all_scores = torch.cat(scores)
    out: list[tuple[float, ...]] = []
    for keep in keeps:
        value = round(float(torch.quantile(all_scores, 1.0 - keep)), 4)
        if not out or value > out[-1][0]:
            out.append((value,) * len(c.pause_points))
    return out


@torch.no_grad()
def agreement_with_reference(
    model: AdaptiveViT, images: torch.Tensor, reference_logits: torch.Tensor, thresholds: Sequence[float]
) -> dict:
    """Agreement of ``model`` at ``thresholds`` with the reference's logits, per image.

    Args:
        model: The (fine-tuned) adaptive model.
        images: float32 ``[B, 3, H, W]``.
        reference_logits: The ORIGINAL model's logits of ``images``, float32 ``[B, C, H, W]``.
        thresholds: One value per pause point.

    Returns:
        ``{"thresholds", "tokens_kept" (per image, per pause point), "pixel_agreement" (per image),
        "iou" (per image), "mae" (per image: mean |Δ probability|)}``.
    """
    from avit.adapt.metrics import agreement, labels_of

    t = torch.tensor([float(v) for v in thresholds], dtype=torch.float32)
    logits, kept = [], []
    with attention_impl(model, "sdpa"):
        for i in range(images.shape[0]):
            out, k = model(images[i : i + 1], t)
            logits.append(out)
            kept.append(k[0].tolist())
    logits = torch.cat(logits)
    pixel, iou = agreement(labels_of(logits), labels_of(reference_logits), max(reference_logits.shape[1], 2))
    if logits.shape[1] == 1:
        mae = (torch.sigmoid(logits) - torch.sigmoid(reference_logits)).abs().flatten(1).mean(1)
    else:
        mae = (logits.softmax(1) - reference_logits.softmax(1)).abs().sum(1).flatten(1).mean(1) / 2
    return {
        "thresholds": [float(v) for v in thresholds],
        "tokens_kept": kept,
        "pixel_agreement": pixel.tolist(),
        "iou": iou.tolist(),
        "mae": mae.tolist(),
    }


def check_target_agreement(target: float) -> float:
    """``target`` if it is a fraction in (0, 1] (mean pixel agreement), else an :class:`InputError`.

    A percentage (``99.5``) is the usual slip: the error suggests the fraction (``0.995``); accepted, no
    setting could pass and the defaults would silently become "nothing paused".
    """
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 < target <= 1:
        hint = f" (for {target:g} % give {target / 100:g})" if isinstance(target, (int, float)) and 1 < target <= 100 else ""
        raise InputError(f"target agreement must be a fraction in (0, 1], got {target!r}{hint}")
    return float(target)


def choose_defaults_by_folds(
    model: AdaptiveViT,
    images: torch.Tensor,
    reference_logits: torch.Tensor,
    groups: Sequence[int],
    *,
    target: float = 0.995,
    folds: int = 3,
    on_step: Callable[[], None] | None = None,
) -> tuple[tuple[float, ...], float, list[dict]]:
    """The most aggressive :func:`knob_candidates` setting whose WORST fold keeps ``target`` mean agreement.

    Images are split into ``folds`` folds by their source photo (``groups[i]``: photo index of image i,
    fold = photo index mod folds); a setting passes when every fold's mean pixel agreement with the
    reference is ≥ ``target``. Agreement falls (almost) monotonically along the candidates, so a binary
    search finds the setting in about log2(candidates) evaluations.

    Returns:
        ``(thresholds, expected_agreement, rows)``: the chosen setting ("nothing pauses" if none passes),
        the worst fold's mean agreement there, and the evaluated rows (each with ``worst_fold``).

    Raises:
        InputError: ``target`` is not a fraction in (0, 1] (:func:`check_target_agreement`).
    """
    check_target_agreement(target)
    c = model.config
    nothing = tuple(c.nothing_paused_value for _ in c.pause_points)
    grid = knob_candidates(model, images)
    fold_of = np.asarray([int(g) % max(1, folds) for g in groups])
    evaluated: dict[int, dict] = {}

    def worst(row: dict) -> float:
        pixel = np.asarray(row["pixel_agreement"])
        return float(min(pixel[fold_of == f].mean() for f in np.unique(fold_of)))

    lo, hi = -1, len(grid)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        row = agreement_with_reference(model, images, reference_logits, grid[mid])
        row["worst_fold"] = worst(row)
        evaluated[mid] = row
        if on_step is not None:
            on_step()
        if row["worst_fold"] >= target:
            lo = mid
        else:
            hi = mid
    if lo < 0:
        row = agreement_with_reference(model, images, reference_logits, nothing)
        return nothing, worst(row), [evaluated[i] for i in sorted(evaluated)]
    return grid[lo], evaluated[lo]["worst_fold"], [evaluated[i] for i in sorted(evaluated)]


@dataclasses.dataclass
class FinetuneCheckpointReport:
    """What :func:`finetune_checkpoint` did.

    Attributes:
        checkpoint: The checkpoint written.
        training: The :class:`FinetuneReport`.
        default_thresholds: The defaults stored in the checkpoint (chosen by :func:`choose_defaults_by_folds`).
        expected_agreement: The worst training fold's mean pixel agreement with the original there.
        threshold_rows: The settings evaluated on the training photos.
        seconds: Wall time of the whole call (s).
    """

    checkpoint: Path
    training: FinetuneReport
    default_thresholds: tuple[float, ...]
    expected_agreement: float
    threshold_rows: list[dict]
    seconds: float


def finetune_checkpoint(
    checkpoint: str | os.PathLike,
    output: str | os.PathLike,
    settings: FinetuneSettings | None = None,
    *,
    reference: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    target_agreement: float = 0.995,
    folds: int = 3,
    photos: Sequence[str | os.PathLike] | None = None,
    progress: bool = True,
) -> FinetuneCheckpointReport:
    """Fine-tune an avit checkpoint with token removal in the loop and write it with new default thresholds.

    The training photos are :func:`avit.data.find_photos` ``("train")`` (never the held-out ones). The
    reference (teacher) is the checkpoint's own weights with nothing paused, or ``reference`` — required
    when the checkpoint was already fine-tuned (its nothing-paused output is no longer the original's).
    Defaults: :func:`choose_defaults_by_folds` on the training photos (plain and flipped), against the
    reference. ``photos`` replaces the training photos (tests; never pass held-out photos). The checkpoint metadata keeps the input's, plus ``finetune`` (settings, steps, losses,
    times), ``default_thresholds`` and ``expected_agreement``.

    Raises:
        CheckpointError: unreadable checkpoint or reference.
        InputError: output is a directory; already fine-tuned without a reference; reference of another
            architecture; no training photos; bad settings, device or ``target_agreement`` (a fraction in (0, 1]).
    """
    from avit.data import find_photos
    from avit.models.checkpoint import load_checkpoint, save_checkpoint

    start = time.perf_counter()
    settings = settings or FinetuneSettings()
    settings.validate()
    check_target_agreement(target_agreement)
    out_path = Path(output)
    if out_path.is_dir():
        raise InputError(f"output {out_path} is a directory; give a checkpoint file path")
    resolve_device(device)
    model, meta = load_checkpoint(checkpoint)
    if not model.config.pause_points or not model.config.has_token_heads:
        raise InputError(f"{checkpoint}: fine-tuning needs pause points with token heads (policy {model.config.policy!r}, "
                         f"pause points {list(model.config.pause_points)})")
    if reference is None:
        if (meta.get("finetune") or {}).get("settings", {}).get("train_blocks"):
            raise InputError(f"{checkpoint} has fine-tuned blocks; pass the original as the reference checkpoint")
        ref_model = copy.deepcopy(model)  # pause adapters are zero with nothing paused: this is the original
    else:
        ref_model, _ = load_checkpoint(reference)
        _check_same_backbone(model, ref_model, f"reference {reference} does not have the architecture of {checkpoint}")
    photos = list(find_photos("train") if photos is None else photos)
    if not photos:
        raise InputError("no training photos found; run: pip install 'avit[demo]' (scikit-image)")
    with _progress(progress) as bar:
        report = finetune(model, photos, settings, reference=ref_model, device=device, progress=bar)
        c = model.config
        views = list(training_views(model, photos, 2 * len(photos), seed=0))
        images = torch.from_numpy(np.stack([v for v, _ in views]))
        groups = [i % len(photos) for i in range(len(views))]
        with torch.no_grad(), attention_impl(ref_model, "sdpa"):
            ref_model.eval()
            ref_logits = torch.cat([ref_model.forward_full(images[i : i + 1]).logits for i in range(images.shape[0])])
        task = bar.add_task("choosing default thresholds", total=5) if bar is not None else None
        chosen, expected, rows = choose_defaults_by_folds(
            model, images, ref_logits, groups, target=target_agreement, folds=folds,
            on_step=(lambda: bar.advance(task)) if task is not None else None,
        )
    model.config = c.replace(default_thresholds=tuple(chosen))
    model.default_thresholds = torch.tensor(chosen, dtype=torch.float32)
    record = {k: v for k, v in dataclasses.asdict(report).items() if k != "losses"}
    record["loss_curve"] = [round(float(np.mean(report.losses[i : i + 10])), 5) for i in range(0, len(report.losses), 10)]
    record.update(reference=str(reference) if reference is not None else "the input checkpoint (nothing paused)",
                  folds=folds, target_agreement=target_agreement, threshold_rows=[
                      {"thresholds": r["thresholds"], "pixel_agreement": float(np.mean(r["pixel_agreement"])),
                       "worst_fold": r["worst_fold"],
                       "tokens_kept": [float(np.mean([k[p] for k in r["tokens_kept"]])) for p in range(len(chosen))]}
                      for r in rows])
    meta = dict(meta)
    meta.update(finetune=record, default_thresholds=list(chosen), expected_agreement=expected,
                expected_agreement_basis=f"worst of {folds} folds of the training photos (plain + flipped) vs the original")
    save_checkpoint(model, out_path, **meta)
    return FinetuneCheckpointReport(out_path, report, tuple(chosen), expected, rows, time.perf_counter() - start)


#: Config fields that make two models' nothing-paused outputs comparable (pause points, heads and policy may differ).
_BACKBONE_FIELDS = ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads", "mlp_ratio", "qkv_bias",
                    "class_token", "reg_tokens", "num_classes", "decoder", "decoder_channels", "mean", "std")


def _check_same_backbone(model: AdaptiveViT, reference: AdaptiveViT, message: str) -> None:
    """Raise ``InputError(message + what differs)`` unless ``reference`` has ``model``'s backbone, decoder and
    preprocessing (the same config fields and the same weight names and shapes without pause points)."""
    for name in _BACKBONE_FIELDS:
        mine, theirs = getattr(model.config, name), getattr(reference.config, name)
        if mine != theirs:
            raise InputError(f"{message} ({name} {theirs!r} vs {mine!r})")
    ours = model.static_copy().state_dict()
    ref_state = reference.static_copy().state_dict()
    only_one = sorted(set(ours) ^ set(ref_state))
    if only_one:
        raise InputError(f"{message} (weight {only_one[0]} is in only one of them)")
    for key, value in ours.items():
        if ref_state[key].shape != value.shape:
            raise InputError(f"{message} ({key} {tuple(ref_state[key].shape)} vs {tuple(value.shape)})")


@contextlib.contextmanager
def _progress(enabled: bool) -> Iterator[object | None]:
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()) as progress:
        yield progress
