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

#endif
