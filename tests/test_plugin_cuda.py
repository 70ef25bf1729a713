"""The TensorRT plugins' CUDA kernels, executed on a GPU, against the PyTorch references in :mod:`avit.ops`.

``plugins/cuda_test/avit_cuda_kernels.cu`` exposes each plugin's enqueue (the same launch struct and
launch function the ``IPluginV3`` class calls; the four ``<op>/<op>.cu`` files are linked in unchanged)
behind a C ABI. The session fixture builds it with nvcc for the present GPU (cached under
``plugins/build-cuda/``) and calls it through ctypes on torch CUDA tensors (``data_ptr()``, current
stream). Integer outputs (indices, counts, the size tensor m) must equal the reference exactly, gathered
and scattered features bit for bit, scores to 1e-6 — the bar of ``tests/test_plugin_kernels.py``, whose
helpers (inputs, references, comparisons, the host-kernel fixture ``hk``) are reused here.

Skipped, with the reason, where there is no CUDA device or no nvcc (CI, the development machine); runs on
a GPU machine with ``PYTHONPATH=src python3 -m pytest -rA tests/test_plugin_cuda.py``. The TensorRT glue
(plugin classes, creators, size-tensor declaration, parser mapping) is not exercised here.
"""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch
from test_plugin_kernels import (
    PLUGINS,
    assert_same_selection,
    make_logits,
    ref_select,
    safe_threshold,
)

import avit.ops  # noqa: F401  (registers torch.ops.avit.*)
from avit.ops import kept_per_image, token_scores


def _cuda_module():
    """plugins/cuda_test/cuda_kernels.py (builder + ctypes front-end shared with the GPU benchmark)."""
    name = "avit_plugin_cuda_kernels"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, PLUGINS / "cuda_test" / "cuda_kernels.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="session")
def ck():
    """The CUDA kernels (skips the test where no CUDA device or no nvcc is present)."""
    mod = _cuda_module()
    reason = mod.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    return mod.CudaKernels(mod.build_library())


def gpu(*tensors):
    return tuple(t.cuda() for t in tensors)


def cpu_select(result):
    keep, counts = result
    return keep.cpu(), counts.cpu()


def check_select(ck, op, logits, counts, scalar, score_mode):
    """GPU select == reference (on CPU copies) exactly; returns the reference."""
    want = ref_select(op, logits, counts, scalar, score_mode)
    fn = ck.entropy_select if op == "entropy" else ck.keep_ratio_select
    got = cpu_select(fn(*gpu(logits, counts), scalar, score_mode))
    assert_same_selection(got, want)
    return want


# --------------------------------------------------------------------------------------------------
# Scores (device double arithmetic, rounded once)


@pytest.mark.parametrize("score_mode", [0, 1])
@pytest.mark.parametrize("c", [1, 2, 19, 150, 1000])
def test_token_scores_fp32(ck, hk, score_mode, c):
    logits = make_logits(3, 300, c, seed=c + 10 * score_mode)
    counts = torch.tensor([300, 300, 300])
    got = ck.token_scores(*gpu(logits, counts), score_mode).cpu()
    torch.testing.assert_close(got, token_scores(logits, score_mode), atol=1e-6 if c <= 150 else 1e-5, rtol=0)
    logp = torch.log_softmax(logits.double(), dim=2)
    exact = -(logp.exp() * logp).sum(dim=2) if score_mode == 0 else 1 - logp.amax(dim=2).exp()
    torch.testing.assert_close(got.double(), exact, atol=5e-7, rtol=0)
    # Same formula in double on host and device, one rounding: at most an ulp apart (libm vs CUDA math).
    torch.testing.assert_close(got, hk.token_scores(logits, score_mode), atol=0, rtol=2.5e-7)


@pytest.mark.parametrize("score_mode", [0, 1])
def test_token_scores_fp16_and_padding(ck, score_mode):
    logits = make_logits(2, 100, 150, seed=3, dtype=torch.float16)
    counts = torch.tensor([100, 41])
    got = ck.token_scores(*gpu(logits, counts), score_mode).cpu()
    want = token_scores(logits, score_mode)
    torch.testing.assert_close(got[0], want[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(got[1, :41], want[1, :41], atol=1e-6, rtol=0)
    assert bool(got[1, 41:].isnan().all())  # padding slots are never scored


def test_token_scores_extreme_logits(ck):
    logits = torch.tensor([[[1e4, -1e4], [0.0, 0.0], [-80.0, 80.0], [3.0, 3.0]]])
    for mode in (0, 1):
        got = ck.token_scores(*gpu(logits, torch.tensor([4])), mode).cpu()
        torch.testing.assert_close(got, token_scores(logits, mode), atol=1e-6, rtol=0)


# --------------------------------------------------------------------------------------------------
# Select ops


@pytest.mark.parametrize("score_mode", [0, 1])
@pytest.mark.parametrize("c", [2, 150])
def test_entropy_select_random(ck, score_mode, c):
    # n = 1000 spans several mark blocks (256) and compaction chunks (512); counts differ per image.
    logits = make_logits(3, 1000, c, seed=100 + c + score_mode)
    counts = torch.tensor([1000, 617, 3])
    scores = token_scores(logits, score_mode)
    for q in (0.1, 0.5, 0.9):
        want = check_select(ck, "entropy", logits, counts, safe_threshold(scores, q), score_mode)
        assert 0 < int(want[1].sum()) < int(counts.sum())


def test_entropy_select_exact_tie_at_threshold(ck):
    # Uniform binary logits: confidence score 1 - 0.5 = 0.5 exactly. A token pauses iff score < threshold.
    logits = torch.zeros(2, 37, 2)
    counts = torch.tensor([37, 20])
    keep, new_counts = cpu_select(ck.entropy_select(*gpu(logits, counts), 0.5, 1))
    assert torch.equal(new_counts, counts)
    assert_same_selection((keep, new_counts), ref_select("entropy", logits, counts, 0.5, 1))
    above = float(torch.nextafter(torch.tensor(0.5), torch.tensor(1.0)))
    keep, new_counts = cpu_select(ck.entropy_select(*gpu(logits, counts), above, 1))
    assert tuple(keep.shape) == (2, 0) and int(new_counts.sum()) == 0


@pytest.mark.parametrize("op", ["entropy", "ratio"])
@pytest.mark.parametrize("score_mode", [0, 1])
def test_select_all_and_none(ck, op, score_mode):
    logits = make_logits(2, 600, 19, seed=7)
    counts = torch.tensor([600, 23])
    keep_all, keep_none = (0.0, float("inf")) if op == "entropy" else (1.0, 0.0)
    keep_idx, new_counts = cpu_select((ck.entropy_select if op == "entropy" else ck.keep_ratio_select)(
        *gpu(logits, counts), keep_all, score_mode))  # fmt: skip
    assert torch.equal(new_counts, counts)
    assert torch.equal(keep_idx[0], torch.arange(600))
    assert torch.equal(keep_idx[1], torch.cat([torch.arange(23), torch.zeros(577, dtype=torch.int64)]))
    check_select(ck, op, logits, counts, keep_all, score_mode)
    bufs = ck.select_buffers(op, logits.cuda())
    keep_idx, new_counts, m = ck.select(op, *gpu(logits, counts), keep_none, score_mode, bufs=bufs)
    assert m == 0 and tuple(keep_idx.shape) == (2, 0)
    assert torch.equal(new_counts.cpu(), torch.zeros(2, dtype=torch.int64))
    check_select(ck, op, logits, counts, keep_none, score_mode)


@pytest.mark.parametrize("op", ["entropy", "ratio"])
def test_select_padding_slots_never_selected(ck, op):
    logits = make_logits(4, 300, 5, seed=11)
    counts = torch.tensor([300, 0, 170, 1])
    for b, c in enumerate(counts.tolist()):
        logits[b, c:] = 0.0  # the most uncertain logits possible: must still never be picked
    scalar = 0.0 if op == "entropy" else 0.5
    want = check_select(ck, op, logits, counts, scalar, 0)
    for b, c in enumerate(counts.tolist()):
        assert bool((want[0][b, : want[1][b]] < c).all())
    assert int(want[1][1]) == 0


@pytest.mark.parametrize("op", ["entropy", "ratio"])
def test_select_zero_tokens_and_empty_batch(ck, op):
    for shape in ((3, 0, 7), (0, 16, 7)):
        logits = torch.randn(*shape)
        counts = torch.zeros(shape[0], dtype=torch.int64)
        keep, new_counts, m = ck.select(op, *gpu(logits, counts), 0.5, 0)
        assert m == 0
        assert tuple(keep.shape) == (shape[0], 0) and tuple(new_counts.shape) == (shape[0],)
        if shape[0] > 0:
            assert_same_selection((keep.cpu(), new_counts.cpu()), ref_select(op, logits, counts, 0.5, 0))


@pytest.mark.parametrize("op", ["entropy", "ratio"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_select_batch_of_16_different_counts(ck, op, dtype):
    g = torch.Generator().manual_seed(13)
    n = 1024
    logits = make_logits(16, n, 2, seed=17, dtype=dtype)
    counts = torch.randint(0, n + 1, (16,), generator=g)
    counts[:3] = torch.tensor([n, 0, 1])
    for mode in (0, 1):
        scalar = safe_threshold(token_scores(logits, mode), 0.5) if op == "entropy" else 0.5
        want = check_select(ck, op, logits, counts, scalar, mode)
        assert len(set(want[1].tolist())) > 8  # the images really differ in kept counts


@pytest.mark.parametrize("op", ["entropy", "ratio"])
@pytest.mark.parametrize("score_mode", [0, 1])
def test_select_large_n(ck, op, score_mode):
    n = 4096
    logits = make_logits(3, n, 19, seed=21 + score_mode)
    counts = torch.tensor([n, 3001, 0])
    scalar = safe_threshold(token_scores(logits, score_mode), 0.4) if op == "entropy" else 0.37
    want = check_select(ck, op, logits, counts, scalar, score_mode)
    assert int(want[1][0]) > 1000


@pytest.mark.parametrize("score_mode", [0, 1])
@pytest.mark.parametrize("ratio", [0.0, 0.01, 0.25, 0.5, 0.731, 0.999, 1.0, 1.5])
def test_keep_ratio_random(ck, score_mode, ratio):
    logits = make_logits(3, 700, 150, seed=int(ratio * 1000) + score_mode)
    check_select(ck, "ratio", logits, torch.tensor([700, 299, 1]), ratio, score_mode)


def test_keep_ratio_ties_go_to_lower_slot(ck):
    # Image 0: every score ties -> the first k slots. Image 1: two alternating rows, ties by slot order.
    # n = 600 > one rank tile (256): ties must be resolved across tiles too.
    n = 600
    logits = torch.zeros(2, n, 3)
    logits[1, 0::2] = torch.tensor([2.0, 0.0, -1.0])
    logits[1, 1::2] = torch.tensor([0.5, 0.4, 0.3])
    counts = torch.tensor([n, n])
    for ratio in (0.1, 0.3, 0.5, 0.52, 0.9):
        keep, _ = check_select(ck, "ratio", logits, counts, ratio, 0)
        k = int(kept_per_image(torch.tensor(ratio), counts)[0])
        assert torch.equal(keep[0, :k], torch.arange(k))


def test_keep_ratio_duplicated_rows(ck):
    g = torch.Generator().manual_seed(5)
    base = torch.randn(2, 12, 19, generator=g) * 2
    logits = base[:, torch.randint(0, 12, (1500,), generator=g)]  # many exact duplicates
    for ratio in (0.05, 0.33, 0.5, 0.8):
        for mode in (0, 1):
            check_select(ck, "ratio", logits, torch.tensor([1500, 1011]), ratio, mode)


def test_select_fp16_logits(ck):
    logits = make_logits(2, 1200, 19, seed=9, dtype=torch.float16)
    counts = torch.tensor([1200, 777])
    for mode in (0, 1):
        check_select(ck, "entropy", logits, counts, safe_threshold(token_scores(logits, mode), 0.5), mode)
        check_select(ck, "ratio", logits, counts, 0.4, mode)


def test_select_reused_buffers_and_side_stream(ck):
    # The plugin gets the same workspace on every enqueue: kept counts must be reset per call, and the
    # kernels must honour the stream they are given.
    logits_a, logits_b = make_logits(4, 1024, 2, seed=1), make_logits(4, 1024, 2, seed=2)
    counts = torch.tensor([1024, 900, 10, 512])
    for op in ("entropy", "ratio"):
        bufs = ck.select_buffers(op, logits_a.cuda())
        torch.cuda.synchronize()  # the buffers were filled on the default stream
        side = torch.cuda.Stream()
        for logits in (logits_a, logits_b, logits_a):
            scalar = safe_threshold(token_scores(logits, 0), 0.5) if op == "entropy" else 0.5
            with torch.cuda.stream(side):
                x, c = gpu(logits, counts)
                keep, new_counts, _ = ck.select(op, x, c, scalar, 0, stream=side, bufs=bufs)
            assert_same_selection((keep.cpu(), new_counts.cpu()), ref_select(op, logits, counts, scalar, 0))


def test_select_matches_host_kernels(ck, hk):
    logits = make_logits(5, 777, 150, seed=44)
    counts = torch.tensor([777, 500, 0, 1, 776])
    for mode in (0, 1):
        thr = safe_threshold(token_scores(logits, mode), 0.3)
        assert_same_selection(cpu_select(ck.entropy_select(*gpu(logits, counts), thr, mode)), hk.entropy_select(logits, counts, thr, mode))
        assert_same_selection(cpu_select(ck.keep_ratio_select(*gpu(logits, counts), 0.3, mode)), hk.keep_ratio_select(logits, counts, 0.3, mode))


def test_select_rejects_bad_arguments(ck):
    logits, counts = gpu(torch.randn(1, 4, 3), torch.tensor([4]))
    with pytest.raises(RuntimeError, match="invalid argument"):
        ck.entropy_select(logits, counts, 0.5, 2)
    with pytest.raises(ValueError, match="must be a CUDA tensor"):
        ck.entropy_select(logits.cpu(), counts, 0.5, 0)


# --------------------------------------------------------------------------------------------------
# Gather / scatter


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_token_gather(ck, dtype):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 50, 24, generator=g).to(dtype)
    idx = torch.randint(-50, 50, (3, 17), generator=g)  # negative indices count from the end
    got = ck.token_gather(*gpu(x, idx)).cpu()
    want = torch.ops.avit.token_gather(x, idx)
    assert got.dtype == want.dtype and torch.equal(got, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_token_gather_large_vit_s(ck, dtype):
    # ViT-S/14 @ 448 with a 4096-token grid (896 px) and D = 384: 4 images, 2048 kept slots each.
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 4096, 384, generator=g).to(dtype)
    idx = torch.sort(torch.rand(4, 4096, generator=g).argsort(dim=1)[:, :2048], dim=1).values
    got = ck.token_gather(*gpu(x, idx))
    assert torch.equal(got, torch.ops.avit.token_gather(*gpu(x, idx)))
    assert torch.equal(got.cpu(), torch.ops.avit.token_gather(x, idx))


def test_token_gather_edge_shapes(ck):
    x = torch.randn(2, 64, 8)
    assert tuple(ck.token_gather(*gpu(x, torch.zeros(2, 0, dtype=torch.int64))).shape) == (2, 0, 8)
    assert tuple(ck.token_gather(*gpu(torch.randn(2, 5, 0), torch.zeros(2, 3, dtype=torch.int64))).shape) == (2, 3, 0)
    bad = ck.token_gather(*gpu(x, torch.tensor([[64, 1], [-65, 2]]))).cpu()  # out of range reads zeros
    assert bool((bad[0, 0] == 0).all()) and bool((bad[1, 0] == 0).all())
    assert torch.equal(bad[0, 1], x[0, 1])


@pytest.mark.parametrize("dst_dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("src_dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("in_place", [False, True])
def test_token_scatter(ck, dst_dtype, src_dtype, in_place):
    g = torch.Generator().manual_seed(8)
    big_n, d, m = 300, 40, 120
    dst = torch.randn(3, big_n, d, generator=g).to(dst_dtype)
    idx = torch.stack([torch.randperm(big_n, generator=g)[:m] for _ in range(3)])
    idx[:2, ::7] -= big_n  # some negative indices (the same rows)
    src = (torch.randn(3, m, d, generator=g) * 10).to(src_dtype)
    counts = torch.tensor([120, 7, 0])
    got = ck.token_scatter(*gpu(dst, idx, src, counts), in_place=in_place).cpu()
    want = torch.ops.avit.token_scatter(dst, idx, src, counts)
    assert got.dtype == want.dtype == dst_dtype
    assert torch.equal(got, want)


def test_token_scatter_padding_never_written(ck):
    dst = torch.randn(2, 10, 4)
    idx = torch.tensor([[3, 5, 0, 0, 0], [9, 0, 0, 0, 0]])
    src = torch.randn(2, 5, 4) + 100
    counts = torch.tensor([2, 1])
    got = ck.token_scatter(*gpu(dst, idx, src, counts)).cpu()
    assert torch.equal(got, torch.ops.avit.token_scatter(dst, idx, src, counts))
    assert torch.equal(got[:, 0], dst[:, 0])
    empty = ck.token_scatter(*gpu(dst, torch.zeros(2, 0, dtype=torch.int64), torch.zeros(2, 0, 4), torch.zeros(2, dtype=torch.int64)))
    assert torch.equal(empty.cpu(), dst)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_token_scatter_large_vit_s(ck, dtype):
    g = torch.Generator().manual_seed(4)
    b, big_n, d, m = 4, 4096, 384, 2048
    dst = torch.randn(b, big_n, d, generator=g).to(dtype)
    idx = torch.sort(torch.rand(b, big_n, generator=g).argsort(dim=1)[:, :m], dim=1).values
    src = torch.randn(b, m, d, generator=g).to(dtype)
    counts = torch.tensor([m, 1500, 1, 0])
    got = ck.token_scatter(*gpu(dst, idx, src, counts))
    assert torch.equal(got, torch.ops.avit.token_scatter(*gpu(dst, idx, src, counts)))  # reference on CUDA
    assert torch.equal(got.cpu(), torch.ops.avit.token_scatter(dst, idx, src, counts))


# --------------------------------------------------------------------------------------------------
# The pause-point data flow, all on the GPU


@pytest.mark.parametrize("score_mode", [0, 1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_select_gather_scatter_roundtrip_large(ck, score_mode, dtype):
    """select -> gather -> (work) -> scatter back at N = 4096, D = 384, 3 images of different counts."""
    n, d = 4096, 384
    logits = make_logits(3, n, 150, seed=31 + score_mode, dtype=dtype)
    counts = torch.tensor([n, 2500, 7])
    x = torch.randn(3, n, d, generator=torch.Generator().manual_seed(6)).to(dtype)
    thr = safe_threshold(token_scores(logits, score_mode), 0.6)
    keep_idx, new_counts = ck.entropy_select(*gpu(logits, counts), thr, score_mode)
    assert_same_selection((keep_idx.cpu(), new_counts.cpu()), ref_select("entropy", logits, counts, thr, score_mode))
    kept = ck.token_gather(x.cuda(), keep_idx)
    assert torch.equal(kept.cpu(), torch.ops.avit.token_gather(x, keep_idx.cpu()))
    updated = kept * 2 + 1
    got = ck.token_scatter(x.cuda(), keep_idx, updated, new_counts)
    assert torch.equal(got.cpu(), torch.ops.avit.token_scatter(x, keep_idx.cpu(), updated.cpu(), new_counts.cpu()))


def test_reference_ops_run_on_cuda(ck):
    """The benchmark's stock baseline: torch.ops.avit.* on CUDA tensors give their CPU results."""
    logits = make_logits(4, 1024, 2, seed=8)
    counts = torch.tensor([1024, 700, 0, 5])
    for op, scalar in (("entropy", safe_threshold(token_scores(logits, 0), 0.5)), ("ratio", 0.5)):
        got = ref_select(op, *gpu(logits, counts), scalar, 0)
        assert_same_selection(cpu_select(got), ref_select(op, logits, counts, scalar, 0))
