/* norm.cu — embedding gather, the norms and the small elementwise glue. */
#include "common.cuh"

extern "C" const char *qk_error_string(int code) { return cudaGetErrorString((cudaError_t)code); }

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

extern "C" int qk_rmsnorm1p(const float *x, const float *w, float eps, int T, int D, uint16_t *out_bf16,
                            float *out_f32, qk_stream st)
{
    if (T <= 0) return 0;
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

extern "C" int qk_gated_norm(const float *o, const float *z, int ld_z, const float *w, float eps, int T, int H,
                             int dv, uint16_t *out, qk_stream st)
{
    if (T <= 0) return 0;
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


extern "C" int qk_swiglu(const float *gu, int ld, int T, int I, uint16_t *out, qk_stream st)
{
    if (T <= 0) return 0;
    k_swiglu<<<grid_for((int64_t)T * I), 256, 0, st>>>(gu, ld, T, I, out);
    return qk_launch_status();
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
