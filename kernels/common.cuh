/* common.cuh — helpers shared by the .cu files of kernels/ (CUDA C++ only). */
#ifndef QC_KERNELS_COMMON_CUH
#define QC_KERNELS_COMMON_CUH

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "kernels.h"

/* Returns the launch error (0 when the launch was accepted). */
static inline int qk_launch_status(void) { return (int)cudaGetLastError(); }

__device__ __forceinline__ float qk_bf(uint16_t v)
{
    return __uint_as_float(((uint32_t)v) << 16);
}

/* Round to nearest even, like qc_f32_to_bf16 (NaN kept quiet). */
__device__ __forceinline__ uint16_t qk_to_bf(float f)
{
    return __bfloat16_as_ushort(__float2bfloat16_rn(f));
}

__device__ __forceinline__ float qk_silu(float x) { return x / (1.0f + __expf(-x)); }
__device__ __forceinline__ float qk_sigmoid(float x) { return 1.0f / (1.0f + __expf(-x)); }

__device__ __forceinline__ float qk_warp_sum(float v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float qk_warp_max(float v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Sum over the whole block (blockDim.x a multiple of 32, <= 1024); every
 * thread gets the result. `red` is 33 floats of shared memory. */
__device__ __forceinline__ float qk_block_sum(float v, float *red)
{
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    v = qk_warp_sum(v);
    __syncthreads();
    if (lane == 0) red[w] = v;
    __syncthreads();
    if (w == 0) {
        float s = lane < nw ? red[lane] : 0.0f;
        s = qk_warp_sum(s);
        if (lane == 0) red[32] = s;
    }
    __syncthreads();
    return red[32];
}

/* RMSNorm pieces shared by the norm kernel and the GEMVs that fold the norm
 * into their x staging (gemv_multi.cu): written out with explicit fmaf so
 * both compute bit-identical sums whatever the compiler contracts. */
__device__ __forceinline__ float qk_sumsq4(float ss, float4 v)
{
    return fmaf(v.w, v.w, fmaf(v.z, v.z, fmaf(v.y, v.y, fmaf(v.x, v.x, ss))));
}

/* x * r * (1 + g) for the four lanes. */
__device__ __forceinline__ float4 qk_rms1p4(float4 x, float r, float4 g)
{
    return make_float4(x.x * r * (1.0f + g.x), x.y * r * (1.0f + g.y), x.z * r * (1.0f + g.z),
                       x.w * r * (1.0f + g.w));
}

/* The same in bf16, packed low to high. */
__device__ __forceinline__ uint2 qk_rms1p_bf4(float4 x, float r, float4 g)
{
    const float4 y = qk_rms1p4(x, r, g);
    return make_uint2((uint32_t)qk_to_bf(y.x) | ((uint32_t)qk_to_bf(y.y) << 16),
                      (uint32_t)qk_to_bf(y.z) | ((uint32_t)qk_to_bf(y.w) << 16));
}

__host__ __device__ static inline int qk_cdiv(int64_t a, int64_t b) { return (int)((a + b - 1) / b); }

/* Programmatic dependent launch (sm_90+; no-ops elsewhere and when the next
 * launch has no PDL attribute). qk_pdl_trigger: the next kernel of the
 * stream, if launched with the attribute, may place its blocks once every
 * block of this one has called it (it still waits for all of this kernel
 * before it reads anything): the decode's small kernels call it at entry
 * so the quantized GEMV after them can land on the SMs they leave idle.
 * qk_pdl_wait: returns once the previous kernel has finished and its writes
 * are visible; a PDL-launched kernel calls it before its first load of
 * anything the previous kernel wrote, and before its first store. */
__device__ __forceinline__ void qk_pdl_trigger(void)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

__device__ __forceinline__ void qk_pdl_wait(void)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

/* Asks L2 for the 128-byte line holding p (no register result, nothing waits for it). */
__device__ __forceinline__ void qk_prefetch_l2(const void *p)
{
    asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
}

/* The GPU's global nanosecond clock (%globaltimer): diagnostics and test hooks only. */
__device__ __forceinline__ unsigned long long qk_globaltimer(void)
{
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}

/* Host side. The current device's attribute a, 0 when it cannot be read. */
static inline int qk_device_attr(cudaDeviceAttr a)
{
    int dev = 0, v = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&v, a, dev) != cudaSuccess) return 0;
    return v;
}

/* Asked once per process (and per .cu file: each has its own copy). */
static inline int qk_cc_major(void)
{
    static int v = -1;
    if (v < 0) v = qk_device_attr(cudaDevAttrComputeCapabilityMajor);
    return v;
}

static inline int qk_sm_count(void)
{
    static int v = -1;
    if (v < 0) v = qk_device_attr(cudaDevAttrMultiProcessorCount);
    return v;
}

/* Whether a launch on st may carry the PDL attribute (an sm_90+ device, a
 * stream other than the legacy ones); qk_launch_cfg: a launch configuration
 * with it when pdl. */
static inline bool qk_pdl_ok(cudaStream_t st)
{
    return qk_cc_major() >= 9 && st != NULL && st != cudaStreamLegacy && st != cudaStreamPerThread;
}

static inline void qk_launch_cfg(cudaLaunchConfig_t *cfg, cudaLaunchAttribute *at, dim3 grid, dim3 block,
                                 cudaStream_t st, bool pdl)
{
    *cfg = cudaLaunchConfig_t{};
    at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at[0].val.programmaticStreamSerializationAllowed = 1;
    cfg->gridDim = grid;
    cfg->blockDim = block;
    cfg->stream = st;
    cfg->attrs = at;
    cfg->numAttrs = pdl ? 1 : 0;
}

/* Bulk copies into shared memory completed on an mbarrier (sm_90+; no-ops
 * elsewhere, so callers run them only on such GPUs). A barrier counts one
 * arrival per phase: qk_mbar_expect arrives with the bytes the phase's
 * copies will bring, qk_bulk_copy's completion pays them off, and
 * qk_mbar_wait(parity) returns once the phase of that parity has
 * completed. Copies are 16-byte aligned at both ends, a multiple of 16
 * bytes long. */
__device__ __forceinline__ uint32_t qk_smem_addr(const void *p)
{
    return (uint32_t)__cvta_generic_to_shared(p);
}

__device__ __forceinline__ void qk_mbar_init(uint64_t *bar)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(qk_smem_addr(bar)) : "memory");
#endif
}

/* After a thread's qk_mbar_init calls: makes them visible to the copy engine. */
__device__ __forceinline__ void qk_mbar_init_fence(void)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
#endif
}

__device__ __forceinline__ void qk_mbar_expect(uint64_t *bar, uint32_t bytes)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(qk_smem_addr(bar)), "r"(bytes)
                 : "memory");
#endif
}

__device__ __forceinline__ void qk_bulk_copy(void *dst, const void *src, uint32_t bytes, uint64_t *bar)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
                     qk_smem_addr(dst)),
                 "l"(src), "r"(bytes), "r"(qk_smem_addr(bar))
                 : "memory");
#endif
}

__device__ __forceinline__ void qk_mbar_wait(uint64_t *bar, uint32_t parity)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    uint32_t done = 0;
    while (!done)
        asm volatile("{\n\t.reg .pred p;\n\tmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n\t"
                     "selp.u32 %0, 1, 0, p;\n\t}"
                     : "=r"(done)
                     : "r"(qk_smem_addr(bar)), "r"(parity)
                     : "memory");
#endif
}

#endif
