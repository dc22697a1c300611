/* fill_q.cu — random quantized weights made directly in the kernel-native
 * layouts of quant.h, for `qchat bench --synthetic SIZE:FMT`. A 27B model
 * packed on the host would take minutes; filling the device buffers here takes
 * milliseconds. The values are not a published checkpoint's, but every code is
 * valid (no E4M3 NaN bytes), every scale finite and positive, and the product
 * has the spread of the BF16 synthetic weights (uniform in +-wscale), so the
 * activations stay finite through all layers and the kernels do exactly the
 * work a real checkpoint of that layout makes them do. */
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include "common.cuh"
#include "quant.h"

__device__ __forceinline__ uint64_t fq_mix(uint64_t z)
{
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Uniform in [0, 1) from (seed, i). */
__device__ __forceinline__ float fq_unif(uint64_t seed, int64_t i)
{
    return (float)(fq_mix(seed * 0x100000001b3ull + (uint64_t)i) >> 40) * (1.0f / 16777216.0f);
}

#define FQ_LOOP(i, n) for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < (n); i += (int64_t)gridDim.x * blockDim.x)

/* FP8 weight bytes [n_pad][k_pad]: e4m3 of a uniform value in +-448 (the
 * saturating conversion never yields NaN); padding zero. */
__global__ void k_fq_fp8(uint8_t *w, int n, int k, int k_pad, int64_t total, uint64_t seed)
{
    FQ_LOOP(i, total)
    {
        int64_t r = i / k_pad, c = i % k_pad;
        float v = r < n && c < k ? (2.0f * fq_unif(seed, i) - 1.0f) * 448.0f : 0.0f;
        w[i] = (uint8_t)__nv_cvt_float_to_fp8(v, __NV_SATFINITE, __NV_E4M3);
    }
}

/* Packed 4-bit words [n_pad][k_pad/8]: random codes, padding zero. */
__global__ void k_fq_words(uint32_t *w, int n, int k, int kw, int64_t total, uint64_t seed)
{
    FQ_LOOP(i, total)
    {
        int64_t r = i / kw, c = i % kw;
        w[i] = r < n && c * 8 < k ? (uint32_t)fq_mix(seed * 0x9e3779b97f4a7c15ull + (uint64_t)i) : 0u;
    }
}

/* fp32 scales around s0 (x0.75 .. x1.25). */
__global__ void k_fq_f32(float *s, int64_t total, uint64_t seed, float s0)
{
    FQ_LOOP(i, total) s[i] = s0 * (0.75f + 0.5f * fq_unif(seed, i));
}

/* INT4 (row, group) words: the scale around s0 in bits 0-15 (f16 as GPTQ
 * and AWQ publish it, else bf16), zero 8; with s16 the 16-bit scales alone. */
__global__ void k_fq_int4s(void *s, int64_t total, uint64_t seed, float s0, int f16, int s16)
{
    FQ_LOOP(i, total)
    {
        const float v = s0 * (0.75f + 0.5f * fq_unif(seed, i));
        const uint32_t h = f16 ? (uint32_t)__half_as_ushort(__float2half_rn(v)) : (uint32_t)qk_to_bf(v);
        if (s16)
            ((uint16_t *)s)[i] = (uint16_t)h; /* the zero, 8, is implied (quant.h s16) */
        else
            ((uint32_t *)s)[i] = h | (8u << 16);
    }
}

/* Block-scale bytes: NVFP4 e4m3 in [1, 2) (0x38 | mantissa), MXFP4 a fixed e8m0. */
__global__ void k_fq_bytes(uint8_t *s, int64_t total, uint64_t seed, int mx, uint8_t e8m0)
{
    FQ_LOOP(i, total) s[i] = mx ? e8m0 : (uint8_t)(0x38u | ((uint32_t)fq_mix(seed + (uint64_t)i) & 7u));
}

/* bf16 weights [n_pad][k_pad] uniform in +-a, padding zero. */
__global__ void k_fq_bf16(uint16_t *w, int n, int k, int k_pad, int64_t total, uint64_t seed, float a)
{
    FQ_LOOP(i, total)
    {
        int64_t r = i / k_pad, c = i % k_pad;
        w[i] = r < n && c < k ? qk_to_bf((2.0f * fq_unif(seed, i) - 1.0f) * a) : (uint16_t)0;
    }
}

extern "C" int qk_fill_random_qweight(qk_qweight *w, uint64_t seed, float wscale, qk_stream st)
{
    if (!w || !w->w || w->n <= 0 || w->k <= 0 || !(wscale > 0.0f)) return (int)cudaErrorInvalidValue;
    const int G = 2048, B = 256;
    switch (w->kind) {
    case QK_QW_FP8: {
        int64_t total = (int64_t)w->n_pad * w->k_pad;
        k_fq_fp8<<<G, B, 0, st>>>((uint8_t *)w->w, w->n, w->k, w->k_pad, total, seed);
        /* e4m3 uniform in +-448 times s gives uniform in +-wscale */
        k_fq_f32<<<64, B, 0, st>>>((float *)w->s, (int64_t)(w->s_bytes / 4), seed + 1, wscale / 448.0f);
        break;
    }
    case QK_QW_INT4: {
        int kw = w->k_pad / 8;
        k_fq_words<<<G, B, 0, st>>>((uint32_t *)w->w, w->n, w->k, kw, (int64_t)w->n_pad * kw, seed);
        /* q - 8 spans [-8, 7]: scale wscale / 8 */
        k_fq_int4s<<<G, B, 0, st>>>(w->s, (int64_t)(w->s_bytes / (w->s16 ? 2 : 4)), seed + 1, wscale / 8.0f,
                                     w->scale_f16, w->s16);
        break;
    }
    case QK_QW_NVFP4:
    case QK_QW_MXFP4: {
        int kw = w->k_pad / 8, mx = w->kind == QK_QW_MXFP4;
        k_fq_words<<<G, B, 0, st>>>((uint32_t *)w->w, w->n, w->k, kw, (int64_t)w->n_pad * kw, seed);
        /* e2m1 spans +-6; NVFP4 block scales ~1.5, so gmul = wscale / 9.
         * MXFP4: the power of two nearest wscale / 6, gmul 1. */
        int e = (int)floorf(log2f(wscale / 6.0f) + 0.5f);
        e = e < -126 ? -126 : e > 127 ? 127 : e;
        k_fq_bytes<<<G, B, 0, st>>>((uint8_t *)w->s, (int64_t)w->s_bytes, seed + 1, mx, (uint8_t)(127 + e));
        w->gmul = mx ? 1.0f : wscale / 9.0f;
        break;
    }
    case QK_QW_BF16: {
        int64_t total = (int64_t)w->n_pad * w->k_pad;
        k_fq_bf16<<<G, B, 0, st>>>((uint16_t *)w->w, w->n, w->k, w->k_pad, total, seed, wscale);
        break;
    }
    default: return (int)cudaErrorInvalidValue;
    }
    return qk_launch_status();
}
