// The plugins' CUDA launch code behind a plain C ABI (no TensorRT include), for GPU tests and benchmarks:
// tests/test_plugin_cuda.py and benchmarks/plugin_kernels_gpu.py load it with ctypes and pass raw device
// pointers (torch.Tensor.data_ptr()) and a CUDA stream.
//
// Each avit_cuda_* function fills the same launch struct (common/token_select_launch.h,
// common/token_move_launch.h) that the plugin's IPluginV3OneRuntime::enqueue fills and calls the same
// launch function (entropy_select.cu, keep_ratio_select.cu, token_gather.cu, token_scatter.cu are linked
// in unchanged). What this library does NOT exercise is the TensorRT glue around those calls: shape and
// type checks at build time, the size-tensor declaration, workspace sizing by TensorRT, serialization.
//
// Build (what the test does, for the GPU's own architecture; or CMake -DAVIT_BUILD_CUDA_TEST=ON):
//
//   nvcc -std=c++17 -O3 -shared -Xcompiler -fPIC -arch=sm_90 -I plugins plugins/cuda_test/avit_cuda_kernels.cu
//        plugins/entropy_select/entropy_select.cu plugins/keep_ratio_select/keep_ratio_select.cu
//        plugins/token_gather/token_gather.cu plugins/token_scatter/token_scatter.cu -o libavit_cuda_kernels.so
//   (one command line)
//
// Return value of every launch function: a cudaError_t (0 = cudaSuccess; text via avit_cuda_error_string).
// Launches are asynchronous on `stream`; the caller synchronizes before reading outputs.
#include "common/avit_plugin_names.h"
#include "common/token_move_launch.h"
#include "common/token_select.cuh"
#include "common/token_select_launch.h"

#include <cuda_runtime.h>

#include <cstdint>

#define AVIT_CUDA_API extern "C" __attribute__((visibility("default")))

namespace
{
using avit::kernels::FloatType;

bool badType(int32_t t)
{
    return t != static_cast<int32_t>(FloatType::kF32) && t != static_cast<int32_t>(FloatType::kF16);
}

avit::kernels::SelectLaunch selectLaunch(void const* logits, int32_t dtype, int64_t const* counts, float const* scalar,
    int64_t B, int64_t n, int64_t C, int32_t scoreMode, int64_t* keepIdx, int64_t* newCounts, int32_t* sizeTensor,
    void* workspace)
{
    avit::kernels::SelectLaunch p{};
    p.logits = logits;
    p.logitsType = static_cast<FloatType>(dtype);
    p.counts = counts;
    p.scalar = scalar;
    p.B = B;
    p.n = n;
    p.C = C;
    p.scoreMode = scoreMode;
    p.keepIdx = keepIdx;
    p.newCounts = newCounts;
    p.sizeTensor = sizeTensor;
    p.workspace = workspace;
    return p;
}

bool badSelectArgs(int32_t dtype, int64_t B, int64_t n, int64_t C, int32_t scoreMode)
{
    // The plugin rejects these at build time (supportsFormatCombination / configurePlugin / field parsing).
    return badType(dtype) || B < 0 || n < 0 || C < 1
        || (scoreMode != avit::kSCORE_ENTROPY && scoreMode != avit::kSCORE_CONFIDENCE);
}
} // namespace

//! cudaGetErrorString of a code returned by the functions below.
AVIT_CUDA_API char const* avit_cuda_error_string(int32_t code)
{
    return cudaGetErrorString(static_cast<cudaError_t>(code));
}

//! CUDA runtime version this library was linked against (e.g. 13000), or -1.
AVIT_CUDA_API int32_t avit_cuda_runtime_version()
{
    int v = -1;
    return cudaRuntimeGetVersion(&v) == cudaSuccess ? v : -1;
}

//! Workspace bytes the plugins' getWorkspaceSize returns for B images of n slots (op 0 entropy, 1 keep-ratio).
AVIT_CUDA_API uint64_t avit_cuda_select_workspace_bytes(int32_t op, int64_t B, int64_t n)
{
    return op == 0 ? avit::kernels::entropySelectWorkspaceBytes(B, n) : avit::kernels::keepRatioSelectWorkspaceBytes(B, n);
}

//! Device address of the float32 [B, n] token scores that AvitKeepRatioSelect's score kernel leaves in
//! its workspace (slots >= counts[b] are not written). Lets the tests check the device score arithmetic.
AVIT_CUDA_API void* avit_cuda_keep_ratio_scores(void* workspace, int64_t B, int64_t n)
{
    return avit::kernels::SelectWorkspace::carve(workspace, B, n).scores;
}

//! AvitEntropySelect enqueue: logits [B, n, C] (dtype 0 fp32, 1 fp16), counts int64 [B], threshold float32 []
//! (device), keep_idx int64 (capacity B * n, written as [B, m]), new_counts int64 [B], size int32 [] (m).
AVIT_CUDA_API int32_t avit_cuda_entropy_select(void const* logits, int32_t dtype, int64_t const* counts,
    float const* threshold, int64_t B, int64_t n, int64_t C, int32_t scoreMode, int64_t* keepIdx, int64_t* newCounts,
    int32_t* sizeTensor, void* workspace, cudaStream_t stream)
{
    if (badSelectArgs(dtype, B, n, C, scoreMode))
    {
        return cudaErrorInvalidValue;
    }
    return avit::kernels::launchEntropySelect(
        selectLaunch(logits, dtype, counts, threshold, B, n, C, scoreMode, keepIdx, newCounts, sizeTensor, workspace),
        stream);
}

//! AvitKeepRatioSelect enqueue: as avit_cuda_entropy_select with ratio float32 [] (device) as the scalar.
AVIT_CUDA_API int32_t avit_cuda_keep_ratio_select(void const* logits, int32_t dtype, int64_t const* counts,
    float const* ratio, int64_t B, int64_t n, int64_t C, int32_t scoreMode, int64_t* keepIdx, int64_t* newCounts,
    int32_t* sizeTensor, void* workspace, cudaStream_t stream)
{
    if (badSelectArgs(dtype, B, n, C, scoreMode))
    {
        return cudaErrorInvalidValue;
    }
    return avit::kernels::launchKeepRatioSelect(
        selectLaunch(logits, dtype, counts, ratio, B, n, C, scoreMode, keepIdx, newCounts, sizeTensor, workspace),
        stream);
}

//! AvitTokenGather enqueue: y [B, m, D] = x [B, n, D] gathered by idx int64 [B, m]; x and y of type dtype.
AVIT_CUDA_API int32_t avit_cuda_token_gather(void const* x, int32_t dtype, int64_t const* idx, int64_t B, int64_t n,
    int64_t m, int64_t D, void* y, cudaStream_t stream)
{
    if (badType(dtype) || B < 0 || n < 0 || m < 0 || D < 0)
    {
        return cudaErrorInvalidValue;
    }
    avit::kernels::GatherLaunch p{};
    p.x = x;
    p.type = static_cast<FloatType>(dtype);
    p.idx = idx;
    p.B = B;
    p.n = n;
    p.m = m;
    p.D = D;
    p.y = y;
    return avit::kernels::launchTokenGather(p, stream);
}

//! AvitTokenScatter enqueue: out [B, N, D] = dst, then out[b, idx[b, j]] = src[b, j] for j < counts[b].
//! out may equal dst (in place: the copy is skipped); out has dst's type.
AVIT_CUDA_API int32_t avit_cuda_token_scatter(void const* dst, int32_t dstType, int64_t const* idx, void const* src,
    int32_t srcType, int64_t const* counts, int64_t B, int64_t N, int64_t m, int64_t D, void* out, cudaStream_t stream)
{
    if (badType(dstType) || badType(srcType) || B < 0 || N < 0 || m < 0 || D < 0)
    {
        return cudaErrorInvalidValue;
    }
    avit::kernels::ScatterLaunch p{};
    p.dst = dst;
    p.dstType = static_cast<FloatType>(dstType);
    p.idx = idx;
    p.src = src;
    p.srcType = static_cast<FloatType>(srcType);
    p.counts = counts;
    p.B = B;
    p.N = N;
    p.m = m;
    p.D = D;
    p.out = out;
    return avit::kernels::launchTokenScatter(p, stream);
}
