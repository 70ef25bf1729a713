"""Build and call ``libavit_cuda_kernels.so``: the TensorRT plugins' CUDA launch code on torch CUDA tensors.

Used by ``tests/test_plugin_cuda.py`` (kernels vs ``torch.ops.avit.*``) and
``benchmarks/plugin_kernels_gpu.py`` (CUDA-event timings). ``avit_cuda_kernels.cu`` beside this file
exposes each plugin's enqueue (the same launch struct and launch function the ``IPluginV3`` class calls)
behind a C ABI; :func:`build_library` compiles it together with the four unchanged ``<op>/<op>.cu`` files
with nvcc for the GPU that is present, and :class:`CudaKernels` passes ``Tensor.data_ptr()`` device
pointers and the current CUDA stream through ctypes. No TensorRT is involved.

Errors: :class:`CudaKernelsUnavailable` (no CUDA device, no nvcc) — callers turn it into a skip or a
one-line exit; :class:`RuntimeError` for a failed build or a CUDA error returned by a launch;
:class:`ValueError` / :class:`TypeError` for tensors of the wrong device, dtype, shape or layout.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import torch

PLUGINS = Path(__file__).resolve().parents[1]
#: Default build cache (git-ignored by ``/plugins/build*/``).
BUILD_DIR = PLUGINS / "build-cuda"
#: The plugin CUDA sources linked in unchanged, plus the C-ABI front-end.
SOURCES = (
    "cuda_test/avit_cuda_kernels.cu",
    "entropy_select/entropy_select.cu",
    "keep_ratio_select/keep_ratio_select.cu",
    "token_gather/token_gather.cu",
    "token_scatter/token_scatter.cu",
)
F32, F16 = 0, 1
_DTYPES = {torch.float32: F32, torch.float16: F16}


class CudaKernelsUnavailable(RuntimeError):
    """No CUDA device or no nvcc: the CUDA kernels cannot run here (the message says which)."""


def nvcc_path() -> str | None:
    """``$NVCC``, else ``nvcc`` on PATH, else ``/usr/local/cuda/bin/nvcc``; ``None`` when none exists."""
    for cand in (os.environ.get("NVCC"), shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"):
        if cand and Path(cand).is_file() and os.access(cand, os.X_OK):
            return cand
    return None


def unavailable_reason() -> str | None:
    """Why the CUDA kernels cannot run in this process (``None`` when a CUDA device and nvcc are present)."""
    if not torch.cuda.is_available():
        return "no CUDA device (torch.cuda.is_available() is False): the plugin CUDA kernels run only on a GPU machine"
    if nvcc_path() is None:
        return "nvcc not found (set NVCC or put it on PATH): cannot build libavit_cuda_kernels.so"
    return None


def _sources() -> list[Path]:
    return sorted({*(PLUGINS / s for s in SOURCES), *PLUGINS.glob("common/*.h"), *PLUGINS.glob("common/*.cuh"),
                   *PLUGINS.glob("*/*_kernel.h")})  # fmt: skip


def build_library(build_dir: Path = BUILD_DIR, arch: str | None = None) -> Path:
    """Compile ``libavit_cuda_kernels.so`` with nvcc (cached by nvcc version, arch and source hash).

    Args:
        build_dir: cache folder (created).
        arch: ``sm_XY``; default: the compute capability of CUDA device 0.

    Returns:
        Path of the shared library.

    Raises:
        CudaKernelsUnavailable: no CUDA device (when ``arch`` is not given) or no nvcc.
        RuntimeError: nvcc failed (its command line and stderr in the message).
    """
    nvcc = nvcc_path()
    if nvcc is None:
        raise CudaKernelsUnavailable("nvcc not found (set NVCC or put it on PATH)")
    if arch is None:
        if not torch.cuda.is_available():
            raise CudaKernelsUnavailable("no CUDA device: pass arch='sm_XY' to build without one")
        major, minor = torch.cuda.get_device_capability(0)
        arch = f"sm_{major}{minor}"
    version = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
    digest = hashlib.sha256(f"{version}\n{arch}\n".encode())
    for src in _sources():
        digest.update(src.relative_to(PLUGINS).as_posix().encode())
        digest.update(src.read_bytes())
    build_dir.mkdir(parents=True, exist_ok=True)
    lib = build_dir / f"libavit_cuda_kernels-{arch}-{digest.hexdigest()[:16]}.so"
    if lib.exists():
        return lib
    tmp = lib.with_suffix(f".{os.getpid()}.tmp")
    cmd = [
        nvcc, "-std=c++17", "-O3", "-shared", "-Xcompiler=-fPIC,-fvisibility=hidden,-Wall,-Wextra",
        "-Werror=all-warnings", f"-arch={arch}", "-I", str(PLUGINS), *(str(PLUGINS / s) for s in SOURCES),
        "-o", str(tmp),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"nvcc build of libavit_cuda_kernels.so failed:\n{' '.join(cmd)}\n{proc.stderr}")
    tmp.replace(lib)
    return lib


def _check_cuda(t: torch.Tensor, name: str, dtypes: tuple[torch.dtype, ...], ndim: int) -> None:
    if not t.is_cuda:
        raise ValueError(f"{name} must be a CUDA tensor, got device {t.device}")
    if t.dtype not in dtypes:
        raise TypeError(f"{name} must be one of {[str(d) for d in dtypes]}, got {t.dtype}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous")


def _stream(stream: torch.cuda.Stream | None) -> int:
    return (stream or torch.cuda.current_stream()).cuda_stream


class CudaKernels:
    """ctypes front-end of ``libavit_cuda_kernels.so``: torch CUDA tensors in, torch CUDA tensors out.

    Two levels: ``launch_*`` enqueue on preallocated buffers and return at once (no synchronization;
    for timing), the op-named methods allocate, launch, synchronize and return results shaped like
    ``torch.ops.avit.*``. Workspaces are poisoned (0xA5 bytes) and outputs pre-filled with sentinels so
    that a kernel relying on zeroed memory or leaving a slot unwritten shows up.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.lib = lib = ctypes.CDLL(str(path))
        vp, i32, i64 = ctypes.c_void_p, ctypes.c_int32, ctypes.c_int64
        lib.avit_cuda_error_string.restype = ctypes.c_char_p
        lib.avit_cuda_error_string.argtypes = [i32]
        lib.avit_cuda_runtime_version.restype = i32
        lib.avit_cuda_select_workspace_bytes.restype = ctypes.c_uint64
        lib.avit_cuda_select_workspace_bytes.argtypes = [i32, i64, i64]
        lib.avit_cuda_keep_ratio_scores.restype = vp
        lib.avit_cuda_keep_ratio_scores.argtypes = [vp, i64, i64]
        select_args = [vp, i32, vp, vp, i64, i64, i64, i32, vp, vp, vp, vp, vp]
        lib.avit_cuda_entropy_select.argtypes = select_args
        lib.avit_cuda_entropy_select.restype = i32
        lib.avit_cuda_keep_ratio_select.argtypes = select_args
        lib.avit_cuda_keep_ratio_select.restype = i32
        lib.avit_cuda_token_gather.argtypes = [vp, i32, vp, i64, i64, i64, i64, vp, vp]
        lib.avit_cuda_token_gather.restype = i32
        lib.avit_cuda_token_scatter.argtypes = [vp, i32, vp, vp, i32, vp, i64, i64, i64, i64, vp, vp]
        lib.avit_cuda_token_scatter.restype = i32

    @property
    def runtime_version(self) -> int:
        """CUDA runtime version linked into the library (e.g. 13000 for 13.0)."""
        return int(self.lib.avit_cuda_runtime_version())

    def _check(self, rc: int, what: str) -> None:
        if rc != 0:
            raise RuntimeError(f"{what}: CUDA error {rc} ({self.lib.avit_cuda_error_string(rc).decode()})")

    # select ----------------------------------------------------------------------------------------
    def select_buffers(self, op: str, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """Output and workspace buffers of one select call on ``logits`` [B, n, C] (op: entropy | ratio).

        ``keep_idx`` int64 [B * n] (capacity; the kernels write [B, m]), ``new_counts`` int64 [B],
        ``size`` int32 [] (m), ``workspace`` uint8 of the plugin's getWorkspaceSize bytes.
        """
        b, n = logits.shape[:2]
        dev = logits.device
        ws = int(self.lib.avit_cuda_select_workspace_bytes(0 if op == "entropy" else 1, b, n))
        return {
            "keep_idx": torch.full((max(b * n, 1),), -7, dtype=torch.int64, device=dev),
            "new_counts": torch.full((max(b, 1),), -7, dtype=torch.int64, device=dev),
            "size": torch.full((), -7, dtype=torch.int32, device=dev),
            "workspace": torch.full((max(ws, 1),), 0xA5, dtype=torch.uint8, device=dev),
        }

    def launch_select(self, op: str, logits, counts, scalar, score_mode: int, bufs, stream=None) -> None:
        """Enqueue AvitEntropySelect (op "entropy", scalar = threshold) or AvitKeepRatioSelect ("ratio")."""
        _check_cuda(logits, "logits", (torch.float32, torch.float16), 3)
        _check_cuda(counts, "counts", (torch.int64,), 1)
        _check_cuda(scalar, "threshold" if op == "entropy" else "ratio", (torch.float32,), 0)
        b, n, c = logits.shape
        if counts.shape[0] != b:
            raise ValueError(f"counts {tuple(counts.shape)} must have one entry per image of logits {tuple(logits.shape)}")
        fn = self.lib.avit_cuda_entropy_select if op == "entropy" else self.lib.avit_cuda_keep_ratio_select
        rc = fn(
            logits.data_ptr(), _DTYPES[logits.dtype], counts.data_ptr(), scalar.data_ptr(), b, n, c, score_mode,
            bufs["keep_idx"].data_ptr(), bufs["new_counts"].data_ptr(), bufs["size"].data_ptr(),
            bufs["workspace"].data_ptr(), _stream(stream),
        )  # fmt: skip
        self._check(rc, f"{op} select launch")

    def select(self, op: str, logits, counts, scalar, score_mode: int = 0, stream=None, bufs=None):
        """Run a select op and synchronize; returns ``(keep_idx [B, m], new_counts [B], m)`` on the GPU."""
        bufs = bufs or self.select_buffers(op, logits)
        scalar = torch.as_tensor(scalar, dtype=torch.float32, device=logits.device)
        self.launch_select(op, logits, counts.to(logits.device), scalar, score_mode, bufs, stream)
        (stream or torch.cuda.current_stream()).synchronize()  # raises on an asynchronous CUDA error
        b = logits.shape[0]
        m = int(bufs["size"].item())
        keep, new_counts = bufs["keep_idx"][: b * m].view(b, m).clone(), bufs["new_counts"][:b].clone()
        torch.cuda.current_stream().synchronize()  # the copies are complete for any stream that reads them
        return keep, new_counts, m

    def entropy_select(self, logits, counts, threshold, score_mode=0, stream=None):
        """AvitEntropySelect on the GPU: ``(keep_idx, new_counts)`` like ``torch.ops.avit.entropy_select``."""
        keep, new_counts, _ = self.select("entropy", logits, counts, threshold, score_mode, stream)
        return keep, new_counts

    def keep_ratio_select(self, logits, counts, ratio, score_mode=0, stream=None):
        """AvitKeepRatioSelect on the GPU: ``(keep_idx, new_counts)`` like ``torch.ops.avit.keep_ratio_select``."""
        keep, new_counts, _ = self.select("ratio", logits, counts, ratio, score_mode, stream)
        return keep, new_counts

    def token_scores(self, logits, counts, score_mode: int) -> torch.Tensor:
        """float32 [B, n] scores computed by AvitKeepRatioSelect's score kernel (read from its workspace);
        slots ``>= counts[b]`` are NaN (the kernel does not score padding)."""
        bufs = self.select_buffers("ratio", logits)
        b, n = logits.shape[:2]
        # Poison the score area with NaN so that an unwritten slot cannot pass for a score.
        addr = int(self.lib.avit_cuda_keep_ratio_scores(bufs["workspace"].data_ptr(), b, n))
        offset = addr - bufs["workspace"].data_ptr()
        area = bufs["workspace"][offset : offset + 4 * b * n].view(torch.float32)
        area.fill_(float("nan"))
        self.select("ratio", logits, counts, 0.5, score_mode, bufs=bufs)
        return area.view(b, n).clone()

    # gather / scatter ------------------------------------------------------------------------------
    def launch_token_gather(self, x, idx, y, stream=None) -> None:
        """Enqueue AvitTokenGather: ``y`` [B, m, D] (preallocated, type of x) from x [B, n, D], idx [B, m]."""
        _check_cuda(x, "x", (torch.float32, torch.float16), 3)
        _check_cuda(idx, "idx", (torch.int64,), 2)
        _check_cuda(y, "y", (x.dtype,), 3)
        b, n, d = x.shape
        m = idx.shape[1]
        if idx.shape[0] != b or tuple(y.shape) != (b, m, d):
            raise ValueError(f"inconsistent shapes: x {tuple(x.shape)}, idx {tuple(idx.shape)}, y {tuple(y.shape)}")
        rc = self.lib.avit_cuda_token_gather(x.data_ptr(), _DTYPES[x.dtype], idx.data_ptr(), b, n, m, d, y.data_ptr(), _stream(stream))
        self._check(rc, "token gather launch")

    def token_gather(self, x, idx, stream=None) -> torch.Tensor:
        """AvitTokenGather on the GPU (synchronized); like ``torch.ops.avit.token_gather``."""
        y = torch.full((x.shape[0], idx.shape[1], x.shape[2]), 123.0, dtype=x.dtype, device=x.device)
        self.launch_token_gather(x, idx, y, stream)
        (stream or torch.cuda.current_stream()).synchronize()
        return y

    def launch_token_scatter(self, dst, idx, src, counts, out, stream=None) -> None:
        """Enqueue AvitTokenScatter into ``out`` [B, N, D] (type of dst; may be ``dst`` itself: in place)."""
        _check_cuda(dst, "dst", (torch.float32, torch.float16), 3)
        _check_cuda(idx, "idx", (torch.int64,), 2)
        _check_cuda(src, "src", (torch.float32, torch.float16), 3)
        _check_cuda(counts, "counts", (torch.int64,), 1)
        _check_cuda(out, "out", (dst.dtype,), 3)
        b, big_n, d = dst.shape
        m = idx.shape[1]
        if idx.shape[0] != b or tuple(src.shape) != (b, m, d) or counts.shape[0] != b or out.shape != dst.shape:
            raise ValueError(
                f"inconsistent shapes: dst {tuple(dst.shape)}, idx {tuple(idx.shape)}, src {tuple(src.shape)}, "
                f"counts {tuple(counts.shape)}, out {tuple(out.shape)}"
            )
        rc = self.lib.avit_cuda_token_scatter(
            dst.data_ptr(), _DTYPES[dst.dtype], idx.data_ptr(), src.data_ptr(), _DTYPES[src.dtype], counts.data_ptr(),
            b, big_n, m, d, out.data_ptr(), _stream(stream),
        )  # fmt: skip
        self._check(rc, "token scatter launch")

    def token_scatter(self, dst, idx, src, counts, in_place: bool = False, stream=None) -> torch.Tensor:
        """AvitTokenScatter on the GPU (synchronized); like ``torch.ops.avit.token_scatter``.

        ``in_place=True`` writes into ``dst`` (out == dst: the plugin's copy is skipped)."""
        out = dst if in_place else torch.full_like(dst, 321.0)
        self.launch_token_scatter(dst, idx, src, counts, out, stream)
        (stream or torch.cuda.current_stream()).synchronize()
        return out
