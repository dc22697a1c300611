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

/* ---- candidate selection for the engine's sampler (engine/sampler.c) ----
 * The engine's sampler draws on the host; the device applies its penalties to
 * a copy of the logits row and hands back only the largest entries, which
 * decide the draw whenever top-k is on (qc_sampler_sample_candidates). The
 * arithmetic matches sampler.c's penalise() operation for operation, with
 * correctly rounded intrinsics (this file builds with --use_fast_math). */

__global__ void k_penalise(float *l, int n_valid, const int32_t *ids, const int32_t *counts, int n, float rep,
                           float pres, float freq)
{
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= n) return;
    int id = ids[j];
    if (id < 0 || id >= n_valid) return;
    float v = l[id];
    if (isnan(v)) v = -INFINITY; /* sampler.c turns NaN into -inf before the penalties */
    if (rep != 1.0f) v = v > 0.0f ? __fdiv_rn(v, rep) : __fmul_rn(v, rep);
    v = __fsub_rn(v, pres);
    v = __fsub_rn(v, __fmul_rn(freq, (float)counts[j]));
    l[id] = v;
}

extern "C" int qk_sample_penalise(float *logits, int n_valid, const int32_t *ids, const int32_t *counts, int n,
                                  float rep, float pres, float freq, qk_stream st)
{
    if (n <= 0) return 0;
    k_penalise<<<(n + 255) / 256, 256, 0, st>>>(logits, n_valid, ids, counts, n, rep, pres, freq);
    return qk_launch_status();
}

#define TOPC_THREADS 1024

/* Every thread's count of the non-finite entries it read, summed into *cnt
 * (shared); the caller syncs before reading it. Counted in the first pass
 * over the row each path makes anyway, not in a pass of its own. */
__device__ __forceinline__ void topc_count_add(int c, int *cnt)
{
    c = __reduce_add_sync(0xffffffffu, c);
    if ((threadIdx.x & 31) == 0 && c) atomicAdd(cnt, c);
}

/* out[0] = m, out[1..1+C) ids, then C floats: the values, then out[1 + 2C]
 * the number of non-finite entries of the row. */
__global__ void __launch_bounds__(TOPC_THREADS) k_topc(const float *l, int n, int C, int32_t *out)
{
    __shared__ unsigned hist[256];
    __shared__ uint32_t s_prefix;
    __shared__ int s_rank, s_all, s_bad;
    __shared__ unsigned s_gt;
    __shared__ int scan[TOPC_THREADS];
    __shared__ float bv[32];
    __shared__ int bi[32];
    int tid = threadIdx.x, lane = tid & 31, w = tid >> 5;
    int32_t *oid = out + 1;
    float *oval = (float *)(out + 1 + C);
    int bad = 0;
    if (tid == 0) s_bad = 0;
    __syncthreads();
    if (C == 1) {
        /* argmax over finite entries, lowest id on ties */
        float best = -INFINITY;
        int bidx = 0x7fffffff;
        for (int i = tid; i < n; i += TOPC_THREADS) {
            float v = l[i];
            bad += !isfinite(v);
            if (v > -INFINITY && (bidx == 0x7fffffff || v > best)) { best = v; bidx = i; }
        }
        topc_count_add(bad, &s_bad);
        for (int o = 16; o > 0; o >>= 1) {
            float ov = __shfl_xor_sync(0xffffffffu, best, o);
            int oi = __shfl_xor_sync(0xffffffffu, bidx, o);
            if (oi != 0x7fffffff && (bidx == 0x7fffffff || ov > best || (ov == best && oi < bidx))) { best = ov; bidx = oi; }
        }
        if (lane == 0) { bv[w] = best; bi[w] = bidx; }
        __syncthreads();
        if (w == 0) {
            best = bv[lane];
            bidx = bi[lane];
            for (int o = 16; o > 0; o >>= 1) {
                float ov = __shfl_xor_sync(0xffffffffu, best, o);
                int oi = __shfl_xor_sync(0xffffffffu, bidx, o);
                if (oi != 0x7fffffff && (bidx == 0x7fffffff || ov > best || (ov == best && oi < bidx))) { best = ov; bidx = oi; }
            }
            if (lane == 0) {
                out[0] = bidx == 0x7fffffff ? 0 : 1;
                oid[0] = bidx == 0x7fffffff ? -1 : bidx;
                oval[0] = best;
                out[1 + 2 * C] = s_bad;
            }
        }
        return;
    }
    /* Radix select of the C-th largest key among the finite entries, 8 bits
     * a pass from the top; the first pass also counts them. */
    uint32_t prefix = 0, mask = 0;
    int rank = C;
    if (tid == 0) { s_all = 0; s_gt = 0; }
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int b = tid; b < 256; b += TOPC_THREADS) hist[b] = 0;
        __syncthreads();
        for (int i = tid; i < n; i += TOPC_THREADS) {
            float v = l[i];
            if (shift == 24) bad += !isfinite(v);
            if (!(v > -INFINITY)) continue;
            uint32_t k = fkey(v);
            if ((k & mask) == prefix) atomicAdd(&hist[(k >> shift) & 255u], 1u);
        }
        if (shift == 24) topc_count_add(bad, &s_bad);
        __syncthreads();
        if (tid == 0) {
            if (shift == 24) {
                unsigned m = 0;
                for (int b = 0; b < 256; b++) m += hist[b];
                if ((int)m <= C) s_all = 1;
            }
            unsigned cum = 0;
            int b = 255;
            for (; b > 0; b--) {
                if (cum + hist[b] >= (unsigned)rank) break;
                cum += hist[b];
            }
            s_prefix = prefix | ((uint32_t)b << shift);
            s_rank = rank - (int)cum;
        }
        __syncthreads();
        if (s_all) break;
        prefix = s_prefix;
        rank = s_rank;
        mask |= 255u << shift;
        __syncthreads();
    }
    /* Gather: every key above the threshold (any order), then the `rank`
     * lowest ids whose key equals it, placed after them. */
    int all = s_all;
    int per = (n + TOPC_THREADS - 1) / TOPC_THREADS, a = tid * per, b = min(n, a + per);
    int eq = 0;
    for (int i = a; i < b; i++) {
        float v = l[i];
        if (!(v > -INFINITY)) continue;
        uint32_t k = fkey(v);
        if (all || k > prefix) {
            unsigned pos = atomicAdd(&s_gt, 1u);
            oid[pos] = i;
            oval[pos] = v;
        } else if (k == prefix) {
            eq++;
        }
    }
    scan[tid] = eq;
    __syncthreads();
    for (int o = 1; o < TOPC_THREADS; o <<= 1) {
        int v = tid >= o ? scan[tid - o] : 0;
        __syncthreads();
        scan[tid] += v;
        __syncthreads();
    }
    if (!all) {
        int r = scan[tid] - eq, base = C - rank;
        for (int i = a; i < b && r < rank; i++) {
            float v = l[i];
            if (v > -INFINITY && fkey(v) == prefix) {
                oid[base + r] = i;
                oval[base + r] = v;
                r++;
            }
        }
    }
    if (tid == 0) {
        out[0] = all ? (int)s_gt : C;
        out[1 + 2 * C] = s_bad;
    }
}

extern "C" int qk_sample_topc(const float *logits, int n_valid, int C, int32_t *out, qk_stream st)
{
    if (n_valid <= 0 || C <= 0) return (int)cudaErrorInvalidValue;
    k_topc<<<1, TOPC_THREADS, 0, st>>>(logits, n_valid, C, out);
    return qk_launch_status();
}
