/* norm.cu — embedding gather, the norms and the small elementwise glue. */
#include "common.cuh"

extern "C" const char *qk_error_string(int code) { return cudaGetErrorString((cudaError_t)code); }

extern "C" {
int qk_pdl_small = 7;
}

__global__ void k_embed(const uint16_t *E, const int32_t *ids, int D, int V, float *out)
{
    int t = blockIdx.x;
    int id = ids[t];
    bool ok = id >= 0 && id < V;
    const uint16_t *row = E + (int64_t)(ok ? id : 0) * D;
    for (int i = threadIdx.x; i < D; i += blockDim.x) out[(int64_t)t * D + i] = ok ? qk_bf(row[i]) : 0.0f;
}

extern "C" int qk_embed(const uint16_t *E, const int32_t *ids, int T, int D, int V, float *out, qk_stream st)
{
    if (T <= 0) return 0;
    k_embed<<<T, 256, 0, st>>>(E, ids, D, V, out);
    return qk_launch_status();
}

__global__ void k_rmsnorm1p(const float *x, const float *w, float eps, int D, uint16_t *ob, float *of)
{
    __shared__ float red[33];
    int64_t t = blockIdx.x;
    const float *xr = x + t * D;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < D; i += blockDim.x) ss += xr[i] * xr[i];
    ss = qk_block_sum(ss, red);
    float r = rsqrtf(ss / (float)D + eps);
    for (int i = threadIdx.x; i < D; i += blockDim.x) {
        float y = xr[i] * r * (1.0f + w[i]);
        if (ob) ob[t * D + i] = qk_to_bf(y);
        if (of) of[t * D + i] = y;
    }
}

/* The common case (D % 4 == 0, D <= 8192, aligned rows): 256 threads, each
 * keeping its NV float4 of the row in registers, so x is read once and every
 * access is 16 bytes (the generic kernel reads the row twice, 4 bytes at a
 * time: 1.8 TB/s on an 8192-token 27B prefill). */
template <int NV>
__global__ void __launch_bounds__(256) k_rmsnorm1p_v(const float4 *x, const float4 *w, float eps, int D4, uint2 *ob,
                                                     float4 *of)
{
    __shared__ float red[33];
    const int64_t t = blockIdx.x;
    const float4 *xr = x + t * D4;
    float4 v[NV];
    float ss = 0.0f;
#pragma unroll
    for (int j = 0; j < NV; j++) {
        const int i = threadIdx.x + 256 * j;
        v[j] = i < D4 ? xr[i] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        ss = qk_sumsq4(ss, v[j]);
    }
    ss = qk_block_sum(ss, red);
    const float r = rsqrtf(ss / (float)(4 * D4) + eps);
#pragma unroll
    for (int j = 0; j < NV; j++) {
        const int i = threadIdx.x + 256 * j;
        if (i >= D4) break;
        const float4 g = w[i];
        if (ob) ob[t * D4 + i] = qk_rms1p_bf4(v[j], r, g);
        if (of) of[t * D4 + i] = qk_rms1p4(v[j], r, g);
    }
}

static bool al16(const void *p) { return ((uintptr_t)p & 15) == 0; }

template <int NV>
static int rmsnorm_v_at(int T, const float4 *x, const float4 *w, float eps, int D4, uint2 *ob, float4 *of, qk_stream st)
{
    k_rmsnorm1p_v<NV><<<T, 256, 0, st>>>(x, w, eps, D4, ob, of);
    return qk_launch_status();
}

/* NV = float4 per thread, 1..8 (D <= 8192). */
static int rmsnorm_v_launch(int NV, int T, const float4 *x, const float4 *w, float eps, int D4, uint2 *ob, float4 *of,
                            qk_stream st)
{
    static int (*const at[8])(int, const float4 *, const float4 *, float, int, uint2 *, float4 *, qk_stream) = {
        rmsnorm_v_at<1>, rmsnorm_v_at<2>, rmsnorm_v_at<3>, rmsnorm_v_at<4>,
        rmsnorm_v_at<5>, rmsnorm_v_at<6>, rmsnorm_v_at<7>, rmsnorm_v_at<8>};
    return at[NV - 1](T, x, w, eps, D4, ob, of, st);
}

extern "C" int qk_rmsnorm1p(const float *x, const float *w, float eps, int T, int D, uint16_t *out_bf16,
                            float *out_f32, qk_stream st)
{
    if (T <= 0) return 0;
    if (D % 4 == 0 && D <= 8 * 1024 && al16(x) && al16(w) && ((uintptr_t)out_bf16 & 7) == 0 && al16(out_f32)) {
        const int D4 = D / 4;
        const float4 *x4 = (const float4 *)x, *w4 = (const float4 *)w;
        uint2 *ob = (uint2 *)out_bf16;
        float4 *of = (float4 *)out_f32;
        return rmsnorm_v_launch((D4 + 255) / 256, T, x4, w4, eps, D4, ob, of, st);
    }
    int th = D >= 1024 ? 512 : 128;
    k_rmsnorm1p<<<T, th, 0, st>>>(x, w, eps, D, out_bf16, out_f32);
    return qk_launch_status();
}

/* One block per (token, head). */
__global__ void k_gated_norm(const float *o, const float *z, int ld_z, const float *w, float eps, int H,
                             int dv, uint16_t *out)
{
    __shared__ float red[33];
    int t = blockIdx.x / H, h = blockIdx.x % H;
    const float *orow = o + ((int64_t)t * H + h) * dv;
    const float *zrow = z + (int64_t)t * ld_z + (int64_t)h * dv;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < dv; i += blockDim.x) ss += orow[i] * orow[i];
    ss = qk_block_sum(ss, red);
    float r = rsqrtf(ss / (float)dv + eps);
    for (int i = threadIdx.x; i < dv; i += blockDim.x)
        out[((int64_t)t * H + h) * dv + i] = qk_to_bf(w[i] * orow[i] * r * qk_silu(zrow[i]));
}

/* dv = 32 * NPL with aligned rows: one warp per (token, head), NPL values per
 * lane in one vector load each (the block-per-head kernel launched 393K
 * blocks of 128 threads for an 8192-token 27B layer: 1.5 TB/s). */
template <int NPL>
__global__ void __launch_bounds__(256) k_gated_norm_w(const float *o, const float *z, int ld_z, const float *w,
                                                      float eps, int T, int H, uint16_t *out)
{
    constexpr int dv = 32 * NPL;
    const int64_t e = blockIdx.x * 8 + (threadIdx.x >> 5); /* (t, h) */
    if (e >= (int64_t)T * H) return;
    const int lane = threadIdx.x & 31;
    const int64_t t = e / H, h = e % H;
    const float *orow = o + e * dv + lane * NPL;
    const float *zrow = z + t * ld_z + h * dv + lane * NPL;
    float ov[NPL], zv[NPL], wv[NPL];
    if constexpr (NPL == 4) {
        const float4 a = *(const float4 *)orow, b = *(const float4 *)zrow, c = *(const float4 *)(w + lane * 4);
        ov[0] = a.x; ov[1] = a.y; ov[2] = a.z; ov[3] = a.w;
        zv[0] = b.x; zv[1] = b.y; zv[2] = b.z; zv[3] = b.w;
        wv[0] = c.x; wv[1] = c.y; wv[2] = c.z; wv[3] = c.w;
    } else if constexpr (NPL == 2) {
        const float2 a = *(const float2 *)orow, b = *(const float2 *)zrow, c = *(const float2 *)(w + lane * 2);
        ov[0] = a.x; ov[1] = a.y;
        zv[0] = b.x; zv[1] = b.y;
        wv[0] = c.x; wv[1] = c.y;
    } else {
        ov[0] = orow[0]; zv[0] = zrow[0]; wv[0] = w[lane];
    }
    float ss = 0.0f;
#pragma unroll
    for (int i = 0; i < NPL; i++) ss += ov[i] * ov[i];
    const float r = rsqrtf(qk_warp_sum(ss) / (float)dv + eps);
    uint16_t y[NPL];
#pragma unroll
    for (int i = 0; i < NPL; i++) y[i] = qk_to_bf(wv[i] * ov[i] * r * qk_silu(zv[i]));
    uint16_t *orow_out = out + e * dv + lane * NPL;
    if constexpr (NPL == 4)
        *(uint2 *)orow_out = make_uint2((uint32_t)y[0] | ((uint32_t)y[1] << 16), (uint32_t)y[2] | ((uint32_t)y[3] << 16));
    else if constexpr (NPL == 2)
        *(uint32_t *)orow_out = (uint32_t)y[0] | ((uint32_t)y[1] << 16);
    else
        orow_out[0] = y[0];
}

extern "C" int qk_gated_norm(const float *o, const float *z, int ld_z, const float *w, float eps, int T, int H,
                             int dv, uint16_t *out, qk_stream st)
{
    if (T <= 0) return 0;
    const int npl = dv / 32;
    if ((dv == 32 || dv == 64 || dv == 128) && ld_z % npl == 0 && ((uintptr_t)o & 15) == 0 && ((uintptr_t)z & 15) == 0 &&
        ((uintptr_t)w & 15) == 0 && ((uintptr_t)out & 7) == 0) {
        const int blocks = qk_cdiv((int64_t)T * H, 8);
        if (npl == 4) k_gated_norm_w<4><<<blocks, 256, 0, st>>>(o, z, ld_z, w, eps, T, H, out);
        else if (npl == 2) k_gated_norm_w<2><<<blocks, 256, 0, st>>>(o, z, ld_z, w, eps, T, H, out);
        else k_gated_norm_w<1><<<blocks, 256, 0, st>>>(o, z, ld_z, w, eps, T, H, out);
        return qk_launch_status();
    }
    k_gated_norm<<<T * H, dv >= 128 ? 128 : 32, 0, st>>>(o, z, ld_z, w, eps, H, dv, out);
    return qk_launch_status();
}

static int grid_for(int64_t n) { int64_t b = (n + 255) / 256; return (int)(b > 65535 ? 65535 : (b < 1 ? 1 : b)); }

__global__ void k_swiglu(const float *gu, int ld, int T, int I, uint16_t *out)
{
    int64_t n = (int64_t)T * I;
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < n; e += (int64_t)gridDim.x * blockDim.x) {
        int64_t t = e / I, i = e % I;
        float g = gu[t * ld + i], u = gu[t * ld + I + i];
        out[e] = qk_to_bf(qk_silu(g) * u);
    }
}


/* Vector paths (I % 8 == 0, ld % 8 == 0, aligned): 8 outputs per thread,
 * grid (I / 8 / 256, T), no 64-bit division per element (the scalar loop
 * ran an 8192-token 27B SwiGLU at 1.9 TB/s). */
__device__ __forceinline__ uint32_t swiglu_pair(float g0, float g1, float u0, float u1)
{
    return (uint32_t)qk_to_bf(qk_silu(g0) * u0) | ((uint32_t)qk_to_bf(qk_silu(g1) * u1) << 16);
}

__global__ void __launch_bounds__(256) k_swiglu_v(const float *gu, int ld, int I, uint16_t *out)
{
    qk_pdl_trigger(); /* the next GEMV may land early (common.cuh) */
    qk_pdl_wait();    /* a PDL launch itself: resident as the gate|up GEMV's blocks leave */
    const int i = (blockIdx.x * 256 + threadIdx.x) * 8;
    if (i >= I) return;
    const int64_t t = blockIdx.y;
    const float4 *g = (const float4 *)(gu + t * ld + i), *u = (const float4 *)(gu + t * ld + I + i);
    const float4 g0 = g[0], g1 = g[1], u0 = u[0], u1 = u[1];
    *(uint4 *)(out + t * I + i) = make_uint4(swiglu_pair(g0.x, g0.y, u0.x, u0.y), swiglu_pair(g0.z, g0.w, u0.z, u0.w),
                                             swiglu_pair(g1.x, g1.y, u1.x, u1.y), swiglu_pair(g1.z, g1.w, u1.z, u1.w));
}

__device__ __forceinline__ uint32_t swiglu_pair_b16(uint32_t g, uint32_t u)
{
    return swiglu_pair(__uint_as_float(g << 16), __uint_as_float(g & 0xffff0000u), __uint_as_float(u << 16),
                       __uint_as_float(u & 0xffff0000u));
}

__global__ void __launch_bounds__(256) k_swiglu_b16_v(const uint16_t *gu, int ld, int I, uint16_t *out)
{
    qk_pdl_trigger(); /* the next GEMV may land early (common.cuh) */
    const int i = (blockIdx.x * 256 + threadIdx.x) * 8;
    if (i >= I) return;
    const int64_t t = blockIdx.y;
    const uint4 g = *(const uint4 *)(gu + t * ld + i), u = *(const uint4 *)(gu + t * ld + I + i);
    *(uint4 *)(out + t * I + i) =
        make_uint4(swiglu_pair_b16(g.x, u.x), swiglu_pair_b16(g.y, u.y), swiglu_pair_b16(g.z, u.z), swiglu_pair_b16(g.w, u.w));
}

static bool swiglu_vec_ok(const void *gu, int ld, int T, int I, const void *out)
{
    return I % 8 == 0 && ld % 8 == 0 && T <= 65535 && ((uintptr_t)gu & 15) == 0 && ((uintptr_t)out & 15) == 0;
}

extern "C" int qk_swiglu(const float *gu, int ld, int T, int I, uint16_t *out, int pdl, qk_stream st)
{
    if (T <= 0) return 0;
    if (swiglu_vec_ok(gu, ld, T, I, out)) {
        cudaLaunchConfig_t cfg;
        cudaLaunchAttribute at[1];
        qk_launch_cfg(&cfg, at, dim3((unsigned)qk_cdiv(I / 8, 256), (unsigned)T), dim3(256), st,
                      pdl && (qk_pdl_small & 1) && qk_pdl_ok(st));
        return (int)cudaLaunchKernelEx(&cfg, k_swiglu_v, gu, ld, I, out);
    }
    k_swiglu<<<grid_for((int64_t)T * I), 256, 0, st>>>(gu, ld, T, I, out);
    return qk_launch_status();
}

/* One token, out[p] = silu(g[perm[p]]) * u[perm[p]]: h in the packed order of
 * an act-order down-projection's K (qk_swiglu_perm). The permutation is a
 * weight, so it is read before the PDL wait; the gathers hit the gate|up
 * GEMV's 2I floats in L2. One output per thread: with eight (the plain
 * SwiGLU's vector width, 9 blocks at 27B) the scattered loads queued behind
 * the down GEMV's early weight copies and the step got 7 % slower; one per
 * thread (blocks of 64, 128 or 256 alike) made it 2 % faster than the GEMV's
 * own gather (H100, BENCHMARKS.md). */
__global__ void __launch_bounds__(256) k_swiglu_perm(const float *gu, int I, const int32_t *perm, uint16_t *out)
{
    qk_pdl_trigger(); /* the next GEMV may land early (common.cuh) */
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= I) return;
    const int k = perm[i];
    qk_pdl_wait();
    out[i] = qk_to_bf(qk_silu(gu[k]) * gu[I + k]);
}

extern "C" int qk_swiglu_perm(const float *gu, int I, const int32_t *perm, uint16_t *out, int pdl, qk_stream st)
{
    if (I <= 0) return 0;
    cudaLaunchConfig_t cfg;
    cudaLaunchAttribute at[1];
    qk_launch_cfg(&cfg, at, dim3((unsigned)qk_cdiv(I, 256)), dim3(256), st, pdl && (qk_pdl_small & 1) && qk_pdl_ok(st));
    return (int)cudaLaunchKernelEx(&cfg, k_swiglu_perm, gu, I, perm, out);
}

__global__ void k_swiglu_b16(const uint16_t *gu, int ld, int T, int I, uint16_t *out)
{
    int64_t n = (int64_t)T * I;
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < n; e += (int64_t)gridDim.x * blockDim.x) {
        int64_t t = e / I, i = e % I;
        float g = qk_bf(gu[t * ld + i]), u = qk_bf(gu[t * ld + I + i]);
        out[e] = qk_to_bf(qk_silu(g) * u);
    }
}

extern "C" int qk_swiglu_b16(const uint16_t *gu, int ld, int T, int I, uint16_t *out, qk_stream st)
{
    if (T <= 0) return 0;
    if (swiglu_vec_ok(gu, ld, T, I, out)) {
        k_swiglu_b16_v<<<dim3(qk_cdiv(I / 8, 256), T), 256, 0, st>>>(gu, ld, I, out);
        return qk_launch_status();
    }
    k_swiglu_b16<<<grid_for((int64_t)T * I), 256, 0, st>>>(gu, ld, T, I, out);
    return qk_launch_status();
}

__global__ void k_add(float *y, const float *x, int64_t n)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        y[i] += x[i];
}

extern "C" int qk_add(float *y, const float *x, int64_t n, qk_stream st)
{
    if (n <= 0) return 0;
    k_add<<<grid_for(n), 256, 0, st>>>(y, x, n);
    return qk_launch_status();
}

__global__ void k_f32_to_bf16(const float *x, int ld, int T, int n, uint16_t *out)
{
    int64_t tot = (int64_t)T * n;
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < tot; e += (int64_t)gridDim.x * blockDim.x)
        out[e] = qk_to_bf(x[(e / n) * ld + e % n]);
}

extern "C" int qk_f32_to_bf16(const float *x, int ld, int T, int n, uint16_t *out, qk_stream st)
{
    if (T <= 0 || n <= 0) return 0;
    k_f32_to_bf16<<<grid_for((int64_t)T * n), 256, 0, st>>>(x, ld, T, n, out);
    return qk_launch_status();
}

/* splitmix64: a cheap, well-mixed counter-based generator. */
__device__ __forceinline__ uint64_t qk_mix(uint64_t z)
{
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

__global__ void k_fill_bf16(uint16_t *p, int64_t n, uint64_t seed, float scale)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        float u = (float)(qk_mix(seed * 0x100000001b3ull + (uint64_t)i) >> 40) * (1.0f / 16777216.0f);
        p[i] = qk_to_bf((2.0f * u - 1.0f) * scale);
    }
}

__global__ void k_fill_f32(float *p, int64_t n, uint64_t seed, float lo, float hi)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        float u = (float)(qk_mix(seed * 0x100000001b3ull + (uint64_t)i) >> 40) * (1.0f / 16777216.0f);
        p[i] = lo + (hi - lo) * u;
    }
}

extern "C" int qk_fill_random_bf16(uint16_t *p, int64_t n, uint64_t seed, float scale, qk_stream st)
{
    if (n <= 0) return 0;
    k_fill_bf16<<<4096, 256, 0, st>>>(p, n, seed, scale);
    return qk_launch_status();
}

extern "C" int qk_fill_random_f32(float *p, int64_t n, uint64_t seed, float lo, float hi, qk_stream st)
{
    if (n <= 0) return 0;
    k_fill_f32<<<1024, 256, 0, st>>>(p, n, seed, lo, hi);
    return qk_launch_status();
}
