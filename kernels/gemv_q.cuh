/* gemv_q.cuh — pieces shared by the quantized decode GEMVs (gemv_fp8.cu,
 * gemv_int4.cu, gemv_nvfp4.cu); layouts in quant.h / engine/cuda_repack.c.
 *
 * Shape of every quantized GEMV: a block of up to QG_THREADS threads owns
 * QK_QROWS output rows; its threads walk the rows together, thread t taking
 * chunks t, t + blockDim.x, ... (a chunk = one 16-byte load per row). The
 * block size is picked per K (qg_threads) so every thread does the same
 * number of steps: no warp idles through a partial last step. A warp reads
 * 512 contiguous bytes of each row per step and the x chunk it loads (from
 * L1: x is re-read by every block) serves all QK_QROWS rows. Per chunk a
 * thread issues QK_QROWS independent 16-byte weight loads (streaming hint, so
 * weights do not evict x) before any arithmetic; partial sums are reduced
 * with warp shuffles, then across the block's warps in shared memory. */
#ifndef QC_GEMV_Q_CUH
#define QC_GEMV_Q_CUH

#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include "common.cuh"
#include "quant.h"

#define QG_THREADS 256 /* most threads per block */
#define QG_WARPS (QG_THREADS / 32)

/* Host: threads per block for kc chunks per row: the fewest steps per thread
 * (at most QG_THREADS threads), then the fewest warps that cover kc in that
 * many steps. E.g. kc 160 -> 160 threads x 1 step, 544 -> 192 x 3. */
static inline int qg_threads(int kc)
{
    int steps = (kc + QG_THREADS - 1) / QG_THREADS;
    int warps = (kc + 32 * steps - 1) / (32 * steps);
    return 32 * (warps > 0 ? warps : 1);
}

/* x[k0 .. k0+n) (bf16, n = 16 or 32) as floats; zeros at k >= K. */
template <int NV>
__device__ __forceinline__ void qg_load_x(const uint16_t *__restrict__ x, int k0, int K, float *xf)
{
    if (k0 + NV <= K) {
        const uint4 *xv = (const uint4 *)(x + k0);
#pragma unroll
        for (int v = 0; v < NV / 8; v++) {
            uint4 u = __ldg(xv + v);
            const uint32_t a[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
            for (int i = 0; i < 4; i++) {
                xf[8 * v + 2 * i] = __uint_as_float(a[i] << 16);
                xf[8 * v + 2 * i + 1] = __uint_as_float(a[i] & 0xffff0000u);
            }
        }
    } else {
#pragma unroll
        for (int i = 0; i < NV; i++) xf[i] = k0 + i < K ? qk_bf(__ldg(x + k0 + i)) : 0.0f;
    }
}

/* An f16x2 held in a 32-bit word as two exact floats. Written as PTX cvt
 * without .ftz so f16 subnormals (the E2M1 value 0.5 maps to one) survive
 * --use_fast_math: the flush applies to f32 operands only. */
__device__ __forceinline__ float2 qg_h2f2(uint32_t h)
{
    float a, b;
    asm("{\n\t.reg .b16 lo, hi;\n\tmov.b32 {lo, hi}, %2;\n\tcvt.f32.f16 %0, lo;\n\tcvt.f32.f16 %1, hi;\n\t}"
        : "=f"(a), "=f"(b)
        : "r"(h));
    return make_float2(a, b);
}

/* Two E4M3 bytes (low 16 bits of v; the low byte is the lower element) as
 * an f16x2 word (lower element in the low half), exact: one cvt on sm_89+. */
__device__ __forceinline__ uint32_t qg_e4m3x2_h2(uint32_t v)
{
    const __half2_raw r = __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)(v & 0xffffu), __NV_E4M3);
    return (uint32_t)r.x | ((uint32_t)r.y << 16);
}

/* Block reduction of QK_QROWS partial sums; thread r < QK_QROWS gets row r's
 * total in the return value (others: unspecified). red: QG_WARPS*QK_QROWS floats. */
__device__ __forceinline__ float qg_block_reduce(float *s, float *red)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
#pragma unroll
    for (int r = 0; r < QK_QROWS; r++) s[r] = qk_warp_sum(s[r]);
    if (lane == 0) {
#pragma unroll
        for (int r = 0; r < QK_QROWS; r++) red[warp * QK_QROWS + r] = s[r];
    }
    __syncthreads();
    float t = 0.0f;
    if (threadIdx.x < QK_QROWS) {
#pragma unroll
        for (int w = 0; w < nw; w++) t += red[w * QK_QROWS + threadIdx.x];
    }
    return t;
}

/* Host: rejects descriptors a kernel cannot run (cudaErrorInvalidValue = 1). */
static inline int qg_check(const qk_qweight *w, const void *x, const void *y, int kind)
{
    if (!w || w->kind != kind || !w->w || !w->s || !x || !y || w->n <= 0 || w->k <= 0 ||
        w->n_pad % QK_QROWS || w->k_pad % 32 || w->k_pad < w->k || w->n_pad < w->n ||
        ((uintptr_t)x & 15) || ((uintptr_t)w->w & 15))
        return (int)cudaErrorInvalidValue;
    return 0;
}

#endif
