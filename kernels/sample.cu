/* sample.cu — picking the next token on the GPU, so that decode copies one
 * int32 per token instead of the whole logits row.
 *
 * One block of 1024 threads. Greedy: argmax (lowest id on ties). Otherwise
 * logits / temperature; top-k and top-p thresholds are found exactly by a
 * bitwise search over the order-preserving integer keys of the values (32
 * passes each, no sort); then one uniform draw from (seed, step) walks the
 * kept tokens' probabilities in id order. */
#include "common.cuh"

#define SAMPLE_THREADS 1024

__device__ __forceinline__ uint32_t fkey(float f)
{
    uint32_t u = __float_as_uint(f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__device__ __forceinline__ uint64_t smix(uint64_t z)
{
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

__device__ float block_sum_d(float v, float *red) { return qk_block_sum(v, red); }

__global__ void __launch_bounds__(SAMPLE_THREADS) k_sample(const float *logits, int n, qk_sample_params p, int32_t *out)
{
    __shared__ float red[33];
    __shared__ float bv[32];
    __shared__ int bi[32];
    __shared__ float scan[SAMPLE_THREADS];
    int tid = threadIdx.x, lane = tid & 31, w = tid >> 5;
    /* argmax / max */
    float best = -INFINITY;
    int bidx = 0x7fffffff;
    for (int i = tid; i < n; i += SAMPLE_THREADS) {
        float v = logits[i];
        if (v > best || (v == best && i < bidx)) { best = v; bidx = i; }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, best, o);
        int oi = __shfl_xor_sync(0xffffffffu, bidx, o);
        if (ov > best || (ov == best && oi < bidx)) { best = ov; bidx = oi; }
    }
    if (lane == 0) { bv[w] = best; bi[w] = bidx; }
    __syncthreads();
    if (w == 0) {
        best = bv[lane]; bidx = bi[lane];
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            float ov = __shfl_xor_sync(0xffffffffu, best, o);
            int oi = __shfl_xor_sync(0xffffffffu, bidx, o);
            if (ov > best || (ov == best && oi < bidx)) { best = ov; bidx = oi; }
        }
        if (lane == 0) { bv[0] = best; bi[0] = bidx; }
    }
    __syncthreads();
    if (p.temperature <= 0.0f || p.top_k == 1) {
        if (tid == 0) *out = bi[0] == 0x7fffffff ? 0 : bi[0];
        return;
    }
    float invT = 1.0f / p.temperature, M = bv[0] * invT;
    /* top-k threshold key: the largest key K with count(key >= K) >= k */
    uint32_t kth = 0;
    if (p.top_k > 0 && p.top_k < n) {
        for (int bit = 31; bit >= 0; bit--) {
            uint32_t cand = kth | (1u << bit);
            float c = 0.0f;
            for (int i = tid; i < n; i += SAMPLE_THREADS) c += fkey(logits[i] * invT) >= cand ? 1.0f : 0.0f;
            c = block_sum_d(c, red);
            if (c >= (float)p.top_k) kth = cand;
        }
    }
    float Z = 0.0f;
    for (int i = tid; i < n; i += SAMPLE_THREADS) {
        float x = logits[i] * invT;
        if (fkey(x) >= kth) Z += __expf(x - M);
    }
    Z = block_sum_d(Z, red);
    uint32_t thr = kth;
    if (p.top_p < 1.0f) {
        uint32_t pk = kth;
        float need = p.top_p * Z;
        for (int bit = 31; bit >= 0; bit--) {
            uint32_t cand = pk | (1u << bit);
            if (cand < kth) continue;
            float s = 0.0f;
            for (int i = tid; i < n; i += SAMPLE_THREADS) {
                float x = logits[i] * invT;
                if (fkey(x) >= cand) s += __expf(x - M);
            }
            s = block_sum_d(s, red);
            if (s >= need) pk = cand;
        }
        thr = pk;
    }
    /* Draw: contiguous ranges per thread, block scan of their masses. */
    int per = (n + SAMPLE_THREADS - 1) / SAMPLE_THREADS, a = tid * per, b = min(n, a + per);
    float mine = 0.0f;
    for (int i = a; i < b; i++) {
        float x = logits[i] * invT;
        if (fkey(x) >= thr) mine += __expf(x - M);
    }
    scan[tid] = mine;
    __syncthreads();
    for (int o = 1; o < SAMPLE_THREADS; o <<= 1) {
        float v = tid >= o ? scan[tid - o] : 0.0f;
        __syncthreads();
        scan[tid] += v;
        __syncthreads();
    }
    float total = scan[SAMPLE_THREADS - 1];
    float u = (float)(smix(p.seed ^ smix(p.step)) >> 40) * (1.0f / 16777216.0f) * total;
    float lo = scan[tid] - mine;
    if (tid == 0) *out = bi[0] == 0x7fffffff ? 0 : bi[0]; /* fallback if rounding leaves u past the end */
    __syncthreads();
    if (mine > 0.0f && u >= lo && u < scan[tid]) {
        float c = lo;
        int pick = -1, last = -1;
        for (int i = a; i < b; i++) {
            float x = logits[i] * invT;
            if (fkey(x) < thr) continue;
            last = i;
            c += __expf(x - M);
            if (u < c) { pick = i; break; }
        }
        *out = pick >= 0 ? pick : last;
    }
}

extern "C" int qk_sample(const float *logits, int n_valid, qk_sample_params p, int32_t *out_id, qk_stream st)
{
    if (n_valid <= 0) return (int)cudaErrorInvalidValue;
    k_sample<<<1, SAMPLE_THREADS, 0, st>>>(logits, n_valid, p, out_id);
    return qk_launch_status();
}
