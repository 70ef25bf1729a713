"""Training through real token removal: autograd of avit::token_gather / avit::token_scatter (finite
differences, a dense reference, and the nothing-paused model's gradients equal to the static model's)."""

from __future__ import annotations

import torch

import avit.ops  # noqa: F401  (registers torch.ops.avit.*)
from avit.models import nothing_paused
from conftest import tiny_model


# ---------------------------------------------------------------------------------------------- op autograd
def _gather_reference(x, idx):
    return torch.stack([x[b, idx[b]] for b in range(x.shape[0])])


def _scatter_reference(dst, idx, src, counts):
    rows = []
    for b in range(dst.shape[0]):
        mask = torch.zeros(dst.shape[1], 1, dtype=dst.dtype)
        placed = torch.zeros_like(dst[b])
        k = int(counts[b])
        mask[idx[b, :k]] = 1.0
        placed = placed.index_add(0, idx[b, :k], src[b, :k])
        rows.append(dst[b] * (1 - mask) + placed)
    return torch.stack(rows)


def test_gather_and_scatter_gradcheck():
    """Gradients of both ops pass finite-difference checks, padding slots included."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    idx = torch.tensor([[0, 2, 5, 0], [4, 1, 3, 0]])  # image 0: slot 0 taken twice (padding repeats it)
    assert torch.autograd.gradcheck(lambda t: torch.ops.avit.token_gather(t, idx), (x,))
    dst = torch.randn(2, 6, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    src = torch.randn(2, 4, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    counts = torch.tensor([3, 2])  # the rest are padding slots: never written, no gradient
    assert torch.autograd.gradcheck(lambda d, s: torch.ops.avit.token_scatter(d, idx, s, counts), (dst, src))


def test_gather_and_scatter_gradients_match_dense_reference():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 7, 4, generator=gen, requires_grad=True)
    idx = torch.tensor([[6, 0, 3, 0], [1, 2, 4, 5]])
    counts = torch.tensor([3, 4])
    dst = torch.randn(2, 7, 4, generator=gen, requires_grad=True)
    weight = torch.randn(2, 7, 4, generator=gen)

    def run(gather, scatter):
        y = gather(x, idx) * 2.0
        return (scatter(dst, idx, y, counts) * weight).sum()

    ours = torch.autograd.grad(run(torch.ops.avit.token_gather, torch.ops.avit.token_scatter), (x, dst))
    ref = torch.autograd.grad(run(_gather_reference, _scatter_reference), (x, dst))
    for a, b in zip(ours, ref):
        assert torch.allclose(a, b, atol=1e-6)
    assert ours[0][0, 0].abs().sum() > 0  # slot 0 of image 0 is real (its padding copy adds nothing)
    assert torch.allclose(ours[0][0, 0], 2.0 * weight[0, 0])


def test_nothing_paused_gradient_equals_static_model(images):
    """With nothing paused, gather/scatter are identity permutations: the adaptive model's parameter
    gradients equal the static model's."""
    model = tiny_model(num_classes=1)
    static = model.static_copy()
    grads = []
    for m, thresholds in ((model, nothing_paused(model.config)), (static, torch.zeros(0))):
        m.zero_grad()
        logits, _ = m(images, thresholds)
        logits.square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None})
    adaptive, reference = grads
    for name, g in reference.items():
        assert torch.allclose(adaptive[name], g, atol=1e-6, rtol=1e-5), name
