"""Host build of the TensorRT plugin kernels against the PyTorch references in :mod:`avit.ops`.

The kernels' per-element / per-row code (``plugins/<op>/<op>_kernel.h``, ``__host__ __device__``) is
compiled with g++ into ``libavit_host_kernels.so`` (``plugins/host/avit_host_kernels.cpp``, plain C ABI)
by the session fixture and called through ctypes. Integer outputs (indices, counts) must match the
reference exactly, float outputs to 1e-6.

The nvcc / TensorRT-header compile of the plugin library itself is ``plugins/ci_build.sh`` (~30 s on
2 cores); the test that runs it is marked ``slow`` and is skipped with ``AVIT_SKIP_PLUGIN_BUILD=1``
(for a CI that calls the script directly) or when the script reports that nvcc is absent.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

import avit.ops  # noqa: F401  (registers torch.ops.avit.*)
from avit.ops import PLUGIN_NAMESPACE, PLUGIN_VERSION, kept_per_image, registered_ops, token_scores

REPO = Path(__file__).resolve().parents[1]
PLUGINS = REPO / "plugins"
F32, F16 = 0, 1
I64P = ctypes.POINTER(ctypes.c_int64)


# --------------------------------------------------------------------------------------------------
# Build and load the host-kernel library


def _kernel_sources() -> list[Path]:
    return sorted([PLUGINS / "host" / "avit_host_kernels.cpp", *PLUGINS.glob("*/*.h")])


def _build_host_library() -> Path:
    """Compile plugins/host/avit_host_kernels.cpp with g++ (cached by source hash in the temp dir)."""
    gxx = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("g++")
    if gxx is None:
        pytest.fail("g++ not found: the plugin host kernels cannot be built (install g++)", pytrace=False)
    digest = hashlib.sha256()
    for src in _kernel_sources():
        digest.update(src.relative_to(REPO).as_posix().encode())
        digest.update(src.read_bytes())
    cache = Path(tempfile.gettempdir()) / "avit-host-kernels"
    cache.mkdir(parents=True, exist_ok=True)
    lib = cache / f"libavit_host_kernels-{digest.hexdigest()[:16]}.so"
    if not lib.exists():
        tmp = lib.with_suffix(f".{os.getpid()}.tmp")
        cmd = [
            gxx, "-std=c++17", "-O2", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", "-fvisibility=hidden",
            "-I", str(PLUGINS), str(PLUGINS / "host" / "avit_host_kernels.cpp"), "-o", str(tmp),
        ]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.fail(f"host kernel build failed:\n{' '.join(cmd)}\n{proc.stderr}", pytrace=False)
        tmp.replace(lib)
    return lib


class HostKernels:
    """ctypes front-end of libavit_host_kernels.so; numpy/torch in, torch out."""

    def __init__(self, path: Path):
        self.lib = lib = ctypes.CDLL(str(path))
        vp, i32, i64, f32 = ctypes.c_void_p, ctypes.c_int32, ctypes.c_int64, ctypes.c_float
        lib.avit_host_last_error.restype = ctypes.c_char_p
        lib.avit_host_plugin_info.restype = ctypes.c_char_p
        lib.avit_host_plugin_info.argtypes = [i32]
        lib.avit_host_token_scores.argtypes = [vp, i32, i64, i64, i32, vp]
        select_args = [vp, i32, I64P, i64, i64, i64, f32, i32, I64P, I64P, I64P]
        lib.avit_host_entropy_select.argtypes = select_args
        lib.avit_host_keep_ratio_select.argtypes = select_args
        lib.avit_host_kept_per_image.argtypes = [f32, i64]
        lib.avit_host_kept_per_image.restype = i64
        lib.avit_host_token_gather.argtypes = [vp, i32, i64, i64, i64, I64P, i64, vp]
        lib.avit_host_token_scatter.argtypes = [vp, i32, i64, i64, i64, I64P, i64, vp, i32, I64P]
        lib.avit_host_float_to_half.argtypes = [f32]
        lib.avit_host_float_to_half.restype = ctypes.c_uint16
        lib.avit_host_half_to_float.argtypes = [ctypes.c_uint16]
        lib.avit_host_half_to_float.restype = f32

    # helpers ---------------------------------------------------------------------------------------
    @staticmethod
    def _float_buffer(t: torch.Tensor) -> tuple[np.ndarray, int]:
        if t.dtype == torch.float16:
            return np.ascontiguousarray(t.numpy()).view(np.uint16), F16
        if t.dtype == torch.float32:
            return np.ascontiguousarray(t.numpy()), F32
        raise TypeError(t.dtype)

    @staticmethod
    def _i64(t: torch.Tensor) -> np.ndarray:
        return np.ascontiguousarray(t.numpy().astype(np.int64))

    def _check(self, rc: int) -> None:
        if rc != 0:
            raise ValueError(self.lib.avit_host_last_error().decode())

    # ops -------------------------------------------------------------------------------------------
    def token_scores(self, logits: torch.Tensor, score_mode: int) -> torch.Tensor:
        buf, dtype = self._float_buffer(logits)
        rows = logits.shape[0] * logits.shape[1]
        out = np.empty(rows, dtype=np.float32)
        self._check(self.lib.avit_host_token_scores(buf.ctypes.data, dtype, rows, logits.shape[2], score_mode, out.ctypes.data))
        return torch.from_numpy(out).reshape(logits.shape[:2])

    def _select(self, fn, logits, counts, scalar, score_mode):
        buf, dtype = self._float_buffer(logits)
        b, n, c = logits.shape
        cnt = self._i64(counts)
        keep = np.full(max(b * n, 1), -7, dtype=np.int64)
        new_counts = np.full(max(b, 1), -7, dtype=np.int64)
        m = ctypes.c_int64(-7)
        rc = fn(
            buf.ctypes.data, dtype, cnt.ctypes.data_as(I64P), b, n, c, float(scalar), score_mode,
            keep.ctypes.data_as(I64P), new_counts.ctypes.data_as(I64P), ctypes.byref(m),
        )  # fmt: skip
        self._check(rc)
        return torch.from_numpy(keep[: b * m.value].reshape(b, m.value).copy()), torch.from_numpy(new_counts[:b].copy())

    def entropy_select(self, logits, counts, threshold, score_mode=0):
        return self._select(self.lib.avit_host_entropy_select, logits, counts, threshold, score_mode)

    def keep_ratio_select(self, logits, counts, ratio, score_mode=0):
        return self._select(self.lib.avit_host_keep_ratio_select, logits, counts, ratio, score_mode)

    def token_gather(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        buf, dtype = self._float_buffer(x)
        b, n, d = x.shape
        m = idx.shape[1]
        ix = self._i64(idx)
        y = np.full((b, m, d), 123, dtype=buf.dtype)
        self._check(self.lib.avit_host_token_gather(buf.ctypes.data, dtype, b, n, d, ix.ctypes.data_as(I64P), m, y.ctypes.data))
        return torch.from_numpy(y.view(np.float16) if dtype == F16 else y)

    def token_scatter(self, dst, idx, src, counts) -> torch.Tensor:
        out, out_dtype = self._float_buffer(dst)
        out = out.copy()
        sbuf, src_dtype = self._float_buffer(src)
        b, big_n, d = dst.shape
        ix, cnt = self._i64(idx), self._i64(counts)
        rc = self.lib.avit_host_token_scatter(
            out.ctypes.data, out_dtype, b, big_n, d, ix.ctypes.data_as(I64P), idx.shape[1], sbuf.ctypes.data,
            src_dtype, cnt.ctypes.data_as(I64P),
        )  # fmt: skip
        self._check(rc)
        return torch.from_numpy(out.view(np.float16) if out_dtype == F16 else out)


# --------------------------------------------------------------------------------------------------
# Helpers


def ref_select(op: str, logits, counts, scalar, score_mode):
    fn = {"entropy": torch.ops.avit.entropy_select, "ratio": torch.ops.avit.keep_ratio_select}[op]
    return fn(logits, counts, torch.tensor(scalar, dtype=torch.float32), score_mode)


def host_select(hk: HostKernels, op: str, logits, counts, scalar, score_mode):
    fn = {"entropy": hk.entropy_select, "ratio": hk.keep_ratio_select}[op]
    return fn(logits, counts, scalar, score_mode)


def assert_same_selection(got, want):
    keep_got, counts_got = got
    keep_want, counts_want = want
    assert keep_got.dtype == torch.int64 and counts_got.dtype == torch.int64
    assert tuple(keep_got.shape) == tuple(keep_want.shape), (keep_got.shape, keep_want.shape)
    assert torch.equal(counts_got, counts_want), (counts_got, counts_want)
    assert torch.equal(keep_got, keep_want)


def safe_threshold(scores: torch.Tensor, q: float) -> float:
    """A threshold near quantile q that lies in a gap of the scores wider than 1e-4 (no borderline token)."""
    s = torch.sort(scores.flatten().double()).values
    gaps = s[1:] - s[:-1]
    target = int(q * (len(s) - 1))
    order = torch.argsort((torch.arange(len(gaps)) - target).abs())
    for i in order.tolist():
        if gaps[i] > 1e-4:
            return float((s[i] + s[i + 1]) / 2)
    raise AssertionError("no wide gap in the scores")


def make_logits(b, n, c, seed, scale=3.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, n, c, generator=g) * scale).to(dtype)


# --------------------------------------------------------------------------------------------------
# Identity: plugin names / namespace / version agree with avit.ops


def test_plugin_identity_matches_registry(hk):
    info = [hk.lib.avit_host_plugin_info(i).decode() for i in range(6)]
    assert info[0] == PLUGIN_NAMESPACE
    assert info[1] == PLUGIN_VERSION
    assert sorted(info[2:]) == sorted(registered_ops())
    for name in info[2:]:
        folder = Path(registered_ops()[name].plugin_dir)
        assert (REPO / folder).is_dir(), folder


# --------------------------------------------------------------------------------------------------
# Scores


@pytest.mark.parametrize("score_mode", [0, 1])
@pytest.mark.parametrize("c", [1, 2, 19, 150])
def test_token_scores_fp32(hk, score_mode, c):
    logits = make_logits(2, 64, c, seed=c + 10 * score_mode)
    got = hk.token_scores(logits, score_mode)
    want = token_scores(logits, score_mode)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    assert bool((got >= 0).all())
    # The kernel rounds once from double: within ~1 ulp of the exact value (float64 reference).
    logp = torch.log_softmax(logits.double(), dim=2)
    exact = -(logp.exp() * logp).sum(dim=2) if score_mode == 0 else 1 - logp.amax(dim=2).exp()
    torch.testing.assert_close(got.double(), exact, atol=5e-7, rtol=0)


@pytest.mark.parametrize("score_mode", [0, 1])
def test_token_scores_fp16_inputs(hk, score_mode):
    logits = make_logits(2, 48, 150, seed=3, dtype=torch.float16)
    got = hk.token_scores(logits, score_mode)
    want = token_scores(logits, score_mode)  # the reference upcasts to float32 too
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_token_scores_extreme_logits(hk):
    logits = torch.tensor([[[1e4, -1e4], [0.0, 0.0], [-80.0, 80.0], [3.0, 3.0]]])
    for mode in (0, 1):
        torch.testing.assert_close(hk.token_scores(logits, mode), token_scores(logits, mode), atol=1e-6, rtol=0)


def test_half_conversions_match_torch(hk):
    vals = torch.tensor(
        [0.0, -0.0, 1.0, -2.5, 65504.0, 65519.0, 65520.0, 1e-8, 2.0**-24, 3 * 2.0**-25, 2.0**-25, 6e-5, 0.1, 1e30,
         float("inf"), float("-inf"), 1.0009765625, 1.00048828125, 1.00146484375]
    )  # fmt: skip
    want = vals.half().view(torch.int16).numpy().view(np.uint16)
    got = np.array([hk.lib.avit_host_float_to_half(float(v)) for v in vals], dtype=np.uint16)
    np.testing.assert_array_equal(got, want)
    bits = np.arange(0, 65536, dtype=np.uint16)
    back = np.array([hk.lib.avit_host_half_to_float(int(b)) for b in bits[::7]], dtype=np.float32)
    ref = torch.from_numpy(bits[::7].view(np.float16).astype(np.float32)).numpy()
    np.testing.assert_array_equal(np.isnan(back), np.isnan(ref))
    ok = ~np.isnan(ref)
    np.testing.assert_array_equal(back[ok], ref[ok])


# --------------------------------------------------------------------------------------------------
# Entropy / confidence select


@pytest.mark.parametrize("score_mode", [0, 1])
@pytest.mark.parametrize("c", [2, 150])
def test_entropy_select_random(hk, score_mode, c):
    logits = make_logits(3, 200, c, seed=100 + c + score_mode)
    counts = torch.tensor([200, 137, 61])
    scores = token_scores(logits, score_mode)
    for q in (0.1, 0.5, 0.9):
        thr = safe_threshold(scores, q)
        want = ref_select("entropy", logits, counts, thr, score_mode)
        got = host_select(hk, "entropy", logits, counts, thr, score_mode)
        assert_same_selection(got, want)
        assert 0 < int(want[1].sum()) < int(counts.sum())  # a real split, not all/none


@pytest.mark.parametrize("op", ["entropy", "ratio"])
@pytest.mark.parametrize("score_mode", [0, 1])
def test_select_all_and_none(hk, op, score_mode):
    logits = make_logits(2, 50, 19, seed=7)
    counts = torch.tensor([50, 23])
    keep_all, keep_none = (0.0, float("inf")) if op == "entropy" else (1.0, 0.0)
    keep_idx, new_counts = host_select(hk, op, logits, counts, keep_all, score_mode)
    assert torch.equal(new_counts, counts)
    assert torch.equal(keep_idx[0], torch.arange(50))
    assert torch.equal(keep_idx[1], torch.cat([torch.arange(23), torch.zeros(27, dtype=torch.int64)]))
    assert_same_selection((keep_idx, new_counts), ref_select(op, logits, counts, keep_all, score_mode))
    got_none = host_select(hk, op, logits, counts, keep_none, score_mode)
    assert tuple(got_none[0].shape) == (2, 0)
    assert torch.equal(got_none[1], torch.zeros(2, dtype=torch.int64))
    assert_same_selection(got_none, ref_select(op, logits, counts, keep_none, score_mode))


@pytest.mark.parametrize("op", ["entropy", "ratio"])
def test_select_padding_slots_never_selected(hk, op):
    logits = make_logits(4, 40, 5, seed=11)
    # Padding slots get the most uncertain logits possible (all equal): they must still never be picked.
    counts = torch.tensor([40, 0, 17, 1])
    for b, c in enumerate(counts.tolist()):
        logits[b, c:] = 0.0
    scalar = 0.0 if op == "entropy" else 0.5
    keep_idx, new_counts = host_select(hk, op, logits, counts, scalar, 0)
    for b, c in enumerate(counts.tolist()):
        assert bool((keep_idx[b, : new_counts[b]] < c).all())
        assert bool((keep_idx[b, new_counts[b] :] == 0).all())
    assert int(new_counts[1]) == 0
    assert_same_selection((keep_idx, new_counts), ref_select(op, logits, counts, scalar, 0))


@pytest.mark.parametrize("op", ["entropy", "ratio"])
def test_select_zero_tokens_and_empty_batch(hk, op):
    for shape, counts in (((3, 0, 7), torch.zeros(3, dtype=torch.int64)), ((0, 16, 7), torch.zeros(0, dtype=torch.int64))):
        logits = torch.randn(*shape)
        got = host_select(hk, op, logits, counts, 0.5, 0)
        assert tuple(got[0].shape) == (shape[0], 0)
        assert tuple(got[1].shape) == (shape[0],)
        if shape[0] > 0:
            assert_same_selection(got, ref_select(op, logits, counts, 0.5, 0))


@pytest.mark.parametrize("op", ["entropy", "ratio"])
@pytest.mark.parametrize("score_mode", [0, 1])
def test_select_large_n(hk, op, score_mode):
    n = 4096
    logits = make_logits(2, n, 19, seed=21 + score_mode)
    counts = torch.tensor([n, 3001])
    if op == "entropy":
        scalar = safe_threshold(token_scores(logits, score_mode), 0.4)
    else:
        scalar = 0.37
    got = host_select(hk, op, logits, counts, scalar, score_mode)
    want = ref_select(op, logits, counts, scalar, score_mode)
    assert_same_selection(got, want)
    assert int(want[1][0]) > 1000


# --------------------------------------------------------------------------------------------------
# Keep-ratio select


@pytest.mark.parametrize("score_mode", [0, 1])
@pytest.mark.parametrize("ratio", [0.0, 0.01, 0.25, 0.5, 0.731, 0.999, 1.0, 1.5])
def test_keep_ratio_random(hk, score_mode, ratio):
    logits = make_logits(3, 150, 150, seed=int(ratio * 1000) + score_mode)
    counts = torch.tensor([150, 99, 1])
    assert_same_selection(
        host_select(hk, "ratio", logits, counts, ratio, score_mode), ref_select("ratio", logits, counts, ratio, score_mode)
    )


def test_keep_ratio_ties_go_to_lower_slot(hk):
    # Every token of image 0 has the same logits -> all scores tie: the first k slots must be kept.
    # Image 1 alternates two distinct rows: ties inside each group resolved by slot order.
    n = 31
    logits = torch.zeros(2, n, 3)
    logits[1, 0::2] = torch.tensor([2.0, 0.0, -1.0])
    logits[1, 1::2] = torch.tensor([0.5, 0.4, 0.3])
    counts = torch.tensor([n, n])
    for ratio in (0.1, 0.3, 0.5, 0.52, 0.9):
        got = hk.keep_ratio_select(logits, counts, ratio, 0)
        assert_same_selection(got, ref_select("ratio", logits, counts, ratio, 0))
        k = int(kept_per_image(torch.tensor(ratio), counts)[0])
        assert torch.equal(got[0][0, :k], torch.arange(k))


def test_keep_ratio_duplicated_rows_random(hk):
    g = torch.Generator().manual_seed(5)
    base = torch.randn(2, 12, 19, generator=g) * 2
    logits = base[:, torch.randint(0, 12, (300,), generator=g)]  # many exact duplicates
    counts = torch.tensor([300, 211])
    for ratio in (0.05, 0.33, 0.5, 0.8):
        for mode in (0, 1):
            assert_same_selection(
                hk.keep_ratio_select(logits, counts, ratio, mode), ref_select("ratio", logits, counts, ratio, mode)
            )


def test_kept_per_image_matches_reference(hk):
    counts = torch.tensor([0, 1, 2, 3, 7, 10, 99, 100, 1023, 1024, 4096])
    for ratio in (0.0, 1e-7, 0.1, 0.2, 0.3, 1 / 3, 0.5, 0.7, 0.9, 0.99999, 1.0, 2.0):
        want = kept_per_image(torch.tensor(ratio), counts)
        got = torch.tensor([hk.lib.avit_host_kept_per_image(ratio, int(c)) for c in counts])
        assert torch.equal(got, want), ratio
    assert hk.lib.avit_host_kept_per_image(float("nan"), 10) == 0
    assert hk.lib.avit_host_kept_per_image(float("inf"), 10) == 10


def test_select_fp16_logits(hk):
    logits = make_logits(2, 120, 19, seed=9, dtype=torch.float16)
    counts = torch.tensor([120, 77])
    for mode in (0, 1):
        thr = safe_threshold(token_scores(logits, mode), 0.5)
        assert_same_selection(
            hk.entropy_select(logits, counts, thr, mode), ref_select("entropy", logits, counts, thr, mode)
        )
        assert_same_selection(
            hk.keep_ratio_select(logits, counts, 0.4, mode), ref_select("ratio", logits, counts, 0.4, mode)
        )


def test_select_rejects_bad_arguments(hk):
    logits = torch.randn(1, 4, 3)
    with pytest.raises(ValueError, match=r"^AvitEntropySelect: score_mode must be 0 \(entropy\) or 1"):
        hk.entropy_select(logits, torch.tensor([4]), 0.5, 2)
    with pytest.raises(ValueError, match=r"^AvitKeepRatioSelect: bad logits shape"):
        hk.keep_ratio_select(torch.randn(1, 4, 0), torch.tensor([4]), 0.5, 0)


# --------------------------------------------------------------------------------------------------
# Gather / scatter


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_token_gather(hk, dtype):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 50, 24, generator=g).to(dtype)
    idx = torch.randint(0, 50, (3, 17), generator=g)
    got = hk.token_gather(x, idx)
    want = torch.ops.avit.token_gather(x, idx)
    assert got.dtype == want.dtype
    assert torch.equal(got, want)  # a gather moves bits: exact


def test_token_gather_after_select_and_edge_shapes(hk):
    logits = make_logits(2, 64, 2, seed=4)
    x = torch.randn(2, 64, 8)
    keep_idx, _ = hk.keep_ratio_select(logits, torch.tensor([64, 30]), 0.25, 0)
    assert torch.equal(hk.token_gather(x, keep_idx), torch.ops.avit.token_gather(x, keep_idx))
    # m = 0 (nothing kept) and D = 0.
    assert tuple(hk.token_gather(x, torch.zeros(2, 0, dtype=torch.int64)).shape) == (2, 0, 8)
    assert tuple(hk.token_gather(torch.randn(2, 5, 0), torch.zeros(2, 3, dtype=torch.int64)).shape) == (2, 3, 0)
    # Negative indices count from the end, like the reference; out-of-range rows read as zeros.
    idx = torch.tensor([[-1, 0, 63], [5, -64, 2]])
    assert torch.equal(hk.token_gather(x, idx), torch.ops.avit.token_gather(x, idx))
    bad = hk.token_gather(x, torch.tensor([[64, 1], [-65, 2]]))
    assert bool((bad[0, 0] == 0).all()) and bool((bad[1, 0] == 0).all())
    assert torch.equal(bad[0, 1], x[0, 1])


@pytest.mark.parametrize("dst_dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("src_dtype", [torch.float32, torch.float16])
def test_token_scatter(hk, dst_dtype, src_dtype):
    g = torch.Generator().manual_seed(8)
    big_n, d = 64, 12
    dst = torch.randn(3, big_n, d, generator=g).to(dst_dtype)
    m = 20
    idx = torch.stack([torch.randperm(big_n, generator=g)[:m] for _ in range(3)])
    src = (torch.randn(3, m, d, generator=g) * 10).to(src_dtype)
    counts = torch.tensor([20, 7, 0])
    got = hk.token_scatter(dst, idx, src, counts)
    want = torch.ops.avit.token_scatter(dst, idx, src, counts)
    assert got.dtype == want.dtype == dst_dtype
    assert torch.equal(got, want)


def test_token_scatter_padding_never_written(hk):
    # Padding slots all point at row 0 with garbage: row 0 must stay dst unless a real slot writes it.
    dst = torch.randn(2, 10, 4)
    idx = torch.tensor([[3, 5, 0, 0, 0], [9, 0, 0, 0, 0]])
    src = torch.randn(2, 5, 4) + 100
    counts = torch.tensor([2, 1])
    got = hk.token_scatter(dst, idx, src, counts)
    assert torch.equal(got, torch.ops.avit.token_scatter(dst, idx, src, counts))
    assert torch.equal(got[:, 0], dst[:, 0])
    # Everything paused at the first point: m = 0, nothing written.
    empty = hk.token_scatter(dst, torch.zeros(2, 0, dtype=torch.int64), torch.zeros(2, 0, 4), torch.zeros(2, dtype=torch.int64))
    assert torch.equal(empty, dst)


@pytest.mark.parametrize("score_mode", [0, 1])
def test_select_gather_scatter_roundtrip_large(hk, score_mode):
    """The full pause-point data flow at N = 4096: select -> gather -> (work) -> scatter back."""
    n, d = 4096, 16
    logits = make_logits(2, n, 150, seed=31 + score_mode)
    counts = torch.tensor([n, 2500])
    x = torch.randn(2, n, d)
    thr = safe_threshold(token_scores(logits, score_mode), 0.6)
    keep_idx, new_counts = hk.entropy_select(logits, counts, thr, score_mode)
    assert_same_selection((keep_idx, new_counts), ref_select("entropy", logits, counts, thr, score_mode))
    kept = hk.token_gather(x, keep_idx)
    assert torch.equal(kept, torch.ops.avit.token_gather(x, keep_idx))
    updated = kept * 2 + 1
    got = hk.token_scatter(x, keep_idx, updated, new_counts)
    assert torch.equal(got, torch.ops.avit.token_scatter(x, keep_idx, updated, new_counts))


# --------------------------------------------------------------------------------------------------
# nvcc / TensorRT-header compile of the plugin library (slow: runs plugins/ci_build.sh)


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("AVIT_SKIP_PLUGIN_BUILD") == "1", reason="AVIT_SKIP_PLUGIN_BUILD=1 (CI runs plugins/ci_build.sh itself)"
)
def test_ci_build_script_compiles_plugins(tmp_path):
    """plugins/ci_build.sh: TensorRT-header + nvcc (sm_80, sm_90) compile of every plugin TU (~30 s)."""
    env = {**os.environ, "AVIT_PLUGINS_OUT": str(tmp_path)}
    proc = subprocess.run(["bash", str(PLUGINS / "ci_build.sh")], capture_output=True, text=True, timeout=1200, env=env)
    lines = proc.stdout.strip().splitlines()
    last = lines[-1] if lines else ""
    if proc.returncode == 0 and last.startswith("avit plugins: skipped:"):
        pytest.skip(last)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert last.startswith("avit plugins: OK:"), last
    # The library CI built (CMake) runs the same kernel code as the fixture's g++ build.
    built = HostKernels(tmp_path / "libavit_host_kernels.so")
    logits, counts = make_logits(2, 300, 19, seed=77), torch.tensor([300, 211])
    assert_same_selection(built.keep_ratio_select(logits, counts, 0.3, 0), ref_select("ratio", logits, counts, 0.3, 0))
