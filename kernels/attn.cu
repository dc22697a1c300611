/* attn.cu — gated full attention: q/gate split + q/k norm + partial RoPE +
 * cache write, and causal GQA attention (prefill and split-KV decode).
 *
 * Attention block = one query token x one KV head x one key split; its warps
 * are the H/KV query heads that share the KV head, so each K/V tile is read
 * from the cache once for the whole group. Inside a warp, lane l scores key l
 * of the 32-key tile (a full dot product, no shuffles), the online softmax
 * runs over the tile, and for P.V each lane owns hd/32 output dims. */
#include <math.h>

#include "common.cuh"
#include "mma.cuh"

#define ATT_TILE 32
#define ATT_MAXG 16
#define ATT_NEG (-1e30f)

/* grid (T, H + KV), block hd threads. */
__global__ void k_attn_prep(const float *qkv, int ld, int H, int KV, int hd, int rot, float theta, const float *qn,
                            const float *kn, float eps, const int32_t *pos, uint16_t *kc, uint16_t *vc, int max_ctx,
                            float *q_out, float *gate_out)
{
    qk_pdl_trigger(); /* the decode attention may land early and fetch older keys (k_attn_dec_bulk) */
    qk_pdl_wait();    /* a PDL launch itself (after the attention in-projection) */
    __shared__ float red[33];
    __shared__ float y[256];
    int t = blockIdx.x, hh = blockIdx.y, d = threadIdx.x;
    int p = pos[0] + t;
    const float *row = qkv + (int64_t)t * ld;
    bool isq = hh < H;
    int kvh = hh - H;
    float x = isq ? row[(int64_t)hh * 2 * hd + d] : row[(int64_t)H * 2 * hd + (int64_t)kvh * hd + d];
    float ss = qk_block_sum(x * x, red);
    float w = isq ? qn[d] : kn[d];
    y[d] = x * rsqrtf(ss / (float)hd + eps) * (1.0f + w);
    __syncthreads();
    float v = y[d];
    if (d < rot) {
        int half = rot / 2, j = d < half ? d : d - half;
        float inv = (float)(1.0 / pow((double)theta, (double)(2 * j) / (double)rot));
        float ang = (float)p * inv; /* fp32 angle, as the reference computes it */
        double sn, cs;
        sincos((double)ang, &sn, &cs);
        if (d < half) v = y[d] * (float)cs - y[d + half] * (float)sn;
        else v = y[d] * (float)cs + y[j] * (float)sn;
    }
    if (isq) {
        q_out[((int64_t)t * H + hh) * hd + d] = v;
        gate_out[(int64_t)t * H * hd + (int64_t)hh * hd + d] = row[(int64_t)hh * 2 * hd + hd + d];
    } else if (p < max_ctx) {
        int64_t o = ((int64_t)kvh * max_ctx + p) * hd + d;
        kc[o] = qk_to_bf(v);
        vc[o] = qk_to_bf(row[(int64_t)H * 2 * hd + (int64_t)KV * hd + (int64_t)kvh * hd + d]);
    }
}

extern "C" int qk_attn_prep(const float *qkv, int ld, int T, int H, int KV, int hd, int rot, float theta,
                            const float *qn, const float *kn, float eps, const int32_t *pos, uint16_t *kc,
                            uint16_t *vc, int max_ctx, float *q_out, float *gate_out, qk_stream st)
{
    if (T <= 0) return 0;
    if (hd % 32 || hd > 256 || rot > hd || rot % 2) return (int)cudaErrorInvalidValue;
    cudaLaunchConfig_t cfg;
    cudaLaunchAttribute at[1];
    qk_launch_cfg(&cfg, at, dim3((unsigned)T, (unsigned)(H + KV)), dim3((unsigned)hd), st,
                  (qk_pdl_small & 2) && qk_pdl_ok(st));
    return (int)cudaLaunchKernelEx(&cfg, k_attn_prep, qkv, ld, H, KV, hd, rot, theta, qn, kn, eps, pos, kc, vc, max_ctx,
                                   q_out, gate_out);
}

extern "C" size_t qk_attn_scratch(int T, int H, int hd, int nsplit)
{
    return (size_t)T * H * nsplit * (hd + 2) * sizeof(float);
}

/* NH = hd / 32 output dims per lane. grid (T, KV, nsplit), block 32*G. */
template <int NH>
__global__ void k_attn(const float *q, const float *gate, const uint16_t *kc, const uint16_t *vc, int max_ctx, int H,
                       int KV, const int32_t *pos, int nsplit, float *part, uint16_t *out)
{
    const int hd = NH * 32;
    extern __shared__ float sm[];
    int G = H / KV;
    float *Kt = sm;                         /* [32][hd+1] */
    float *Vt = Kt + ATT_TILE * (hd + 1);   /* [32][hd] */
    float *Qs = Vt + ATT_TILE * hd;         /* [G][hd] */
    int t = blockIdx.x, kvh = blockIdx.y, sp = blockIdx.z;
    int w = threadIdx.x >> 5, lane = threadIdx.x & 31, nth = blockDim.x;
    int h = kvh * G + w;
    int p = pos[0] + t;
    int n = min(p + 1, max_ctx);
    int per = (n + nsplit - 1) / nsplit;
    int k0 = sp * per, k1 = min(n, k0 + per);
    for (int e = threadIdx.x; e < G * hd; e += nth) Qs[e] = q[((int64_t)t * H + kvh * G) * hd + e];
    float m = ATT_NEG, l = 0.0f, acc[NH];
#pragma unroll
    for (int i = 0; i < NH; i++) acc[i] = 0.0f;
    const float scale = rsqrtf((float)hd);
    const uint16_t *kb = kc + (int64_t)kvh * max_ctx * hd, *vb = vc + (int64_t)kvh * max_ctx * hd;
    for (int base = k0; base < k1; base += ATT_TILE) {
        int nk = min(ATT_TILE, k1 - base);
        __syncthreads();
        for (int e = threadIdx.x; e < ATT_TILE * hd / 8; e += nth) {
            int key = e / (hd / 8), d8 = (e % (hd / 8)) * 8;
            uint4 kv4 = make_uint4(0, 0, 0, 0), vv4 = make_uint4(0, 0, 0, 0);
            if (key < nk) {
                kv4 = *(const uint4 *)(kb + (int64_t)(base + key) * hd + d8);
                vv4 = *(const uint4 *)(vb + (int64_t)(base + key) * hd + d8);
            }
            const uint16_t *ka = (const uint16_t *)&kv4, *va = (const uint16_t *)&vv4;
#pragma unroll
            for (int i = 0; i < 8; i++) {
                Kt[key * (hd + 1) + d8 + i] = qk_bf(ka[i]);
                Vt[key * hd + d8 + i] = qk_bf(va[i]);
            }
        }
        __syncthreads();
        const float *qh = Qs + w * hd;
        float s = 0.0f;
#pragma unroll 8
        for (int d = 0; d < hd; d++) s = fmaf(qh[d], Kt[lane * (hd + 1) + d], s);
        bool valid = lane < nk;
        s = valid ? s * scale : ATT_NEG;
        float mn = fmaxf(m, qk_warp_max(s));
        float corr = __expf(m - mn);
        float pr = valid ? __expf(s - mn) : 0.0f;
        l = l * corr + qk_warp_sum(pr);
#pragma unroll
        for (int i = 0; i < NH; i++) acc[i] *= corr;
        for (int key = 0; key < nk; key++) {
            float pk = __shfl_sync(0xffffffffu, pr, key);
#pragma unroll
            for (int i = 0; i < NH; i++) acc[i] = fmaf(pk, Vt[key * hd + lane + 32 * i], acc[i]);
        }
        m = mn;
    }
    if (nsplit == 1) {
        float inv = l > 0.0f ? 1.0f / l : 0.0f;
#pragma unroll
        for (int i = 0; i < NH; i++) {
            int d = lane + 32 * i;
            int64_t o = (int64_t)t * H * hd + (int64_t)h * hd + d;
            out[o] = qk_to_bf(acc[i] * inv * qk_sigmoid(gate[o]));
        }
    } else {
        float *pp = part + (((int64_t)t * H + h) * nsplit + sp) * (hd + 2);
        if (lane == 0) {
            pp[0] = m;
            pp[1] = l;
        }
#pragma unroll
        for (int i = 0; i < NH; i++) pp[2 + lane + 32 * i] = acc[i];
    }
}

/* Output dim d of one head from its first `used` split records (m, l, acc
 * [hd]) at pp: the partial softmax sums rescaled to the common maximum.
 * Every thread of the block calls it (blockDim.x = hd, thread d). A
 * thread per dim walking the records one after another waited for L2 twice
 * per record (~10 us at 33 records, ~20 at 66 in the 4096-key
 * microbenchmark); here the block reads each record's m and l once, in
 * parallel, keeps the rescale factors in shared memory (ATT_MERGE_MAX
 * records at a time), and a thread's loads of its acc values go out 8 at a
 * time. The sums are in a fixed order (deterministic). */
#define ATT_MERGE_MAX 1024
__device__ __forceinline__ float attn_merge(const float *pp, int used, int hd, int d)
{
    __shared__ float fac[ATT_MERGE_MAX], red[2][32];
    const int lane = d & 31, wid = d >> 5, nw = ((int)blockDim.x + 31) >> 5;
    float M = ATT_NEG;
    for (int s = d; s < used; s += blockDim.x) M = fmaxf(M, pp[s * (hd + 2)]);
    M = qk_warp_max(M);
    if (lane == 0) red[0][wid] = M;
    __syncthreads();
    M = ATT_NEG;
    for (int w = 0; w < nw; w++) M = fmaxf(M, red[0][w]);
    float L = 0.0f, o = 0.0f;
    for (int c0 = 0; c0 < used; c0 += ATT_MERGE_MAX) {
        const int cn = min(used - c0, ATT_MERGE_MAX);
        const float *pc = pp + (int64_t)c0 * (hd + 2);
        if (c0) __syncthreads(); /* every thread is done with the previous chunk's factors and sums */
        float Lp = 0.0f;
        for (int s = d; s < cn; s += blockDim.x) {
            const float m = pc[s * (hd + 2)], l = pc[s * (hd + 2) + 1];
            const float f = l > 0.0f ? __expf(m - M) : 0.0f; /* records without keys: none of their sums */
            fac[s] = f;
            Lp += l * f;
        }
        Lp = qk_warp_sum(Lp);
        if (lane == 0) red[1][wid] = Lp;
        __syncthreads();
        for (int w = 0; w < nw; w++) L += red[1][w];
        const float *a = pc + 2 + d;
        int s = 0;
        for (; s + 8 <= cn; s += 8) {
            float v[8];
#pragma unroll
            for (int j = 0; j < 8; j++) v[j] = a[(s + j) * (hd + 2)];
#pragma unroll
            for (int j = 0; j < 8; j++)
                if (fac[s + j] != 0.0f) o += v[j] * fac[s + j];
        }
        for (; s < cn; s++)
            if (fac[s] != 0.0f) o += a[s * (hd + 2)] * fac[s];
    }
    return L > 0.0f ? o / L : 0.0f;
}

/* grid (T, H), block hd: merges the splits' partial softmax sums. */
__global__ void k_attn_combine(const float *part, const float *gate, int H, int hd, int nsplit, uint16_t *out)
{
    qk_pdl_trigger(); /* the next GEMV may land early (common.cuh) */
    int t = blockIdx.x, h = blockIdx.y, d = threadIdx.x;
    int64_t oi = (int64_t)t * H * hd + (int64_t)h * hd + d;
    const float *pp = part + ((int64_t)t * H + h) * nsplit * (hd + 2);
    out[oi] = qk_to_bf(attn_merge(pp, nsplit, hd, d) * qk_sigmoid(gate[oi]));
}

/* ---- split-KV decode (one query token) ----
 *
 * The generic kernel above stages each 32-key tile in shared memory as fp32
 * behind two barriers and reads K and V synchronously: at 32K context the
 * 27B step spent ~2.2 ms in it (~0.2 of the copy bandwidth). Here a block
 * is one KV head x one key split and each of its 4 warps walks its own
 * 32-key tiles with no barrier: lane l scores key l of the tile for all G
 * query heads of the KV head (its K row streamed from global memory in
 * 16-byte pieces, q read from shared memory as a broadcast), each warp keeps
 * its own online softmax per head, and for P.V lane l owns NH contiguous
 * output dims, so each key's V row is one coalesced warp load. The warps
 * merge in shared memory at the end and the block writes the same partial
 * record (m, l, acc) k_attn_combine reads. */
#define DEC_WARPS 4
#define DEC_MIN_KEYS (32 * DEC_WARPS) /* a split covers at least one round of the block's warps */
#define DEC_VAHEAD 2 /* V rows loaded ahead in P.V (k_attn_dec) */

/* Keys per split and splits in use for n keys: short contexts use few
 * splits (the rest exit at once and the combine skips them). */
__device__ __forceinline__ int dec_per(int n, int nsplit)
{
    return max((n + nsplit - 1) / nsplit, DEC_MIN_KEYS);
}

template <int NH>
__device__ __forceinline__ void dec_load_v(const uint16_t *p, float *v)
{
    if constexpr (NH == 8) {
        const uint4 u = *(const uint4 *)p;
        const uint32_t a[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
        for (int i = 0; i < 4; i++) {
            v[2 * i] = __uint_as_float(a[i] << 16);
            v[2 * i + 1] = __uint_as_float(a[i] & 0xffff0000u);
        }
    } else if constexpr (NH == 4) {
        const uint2 u = *(const uint2 *)p;
        v[0] = __uint_as_float(u.x << 16);
        v[1] = __uint_as_float(u.x & 0xffff0000u);
        v[2] = __uint_as_float(u.y << 16);
        v[3] = __uint_as_float(u.y & 0xffff0000u);
    } else if constexpr (NH == 2) {
        const uint32_t u = *(const uint32_t *)p;
        v[0] = __uint_as_float(u << 16);
        v[1] = __uint_as_float(u & 0xffff0000u);
    } else {
        v[0] = qk_bf(p[0]);
    }
}

/* One 16-byte piece of a K row (8 bf16 keys' dims) dotted into the scores of
 * the G query heads, whose matching 8 dims start at q + g * ld (shared by
 * both decode kernels: the same operations in the same order). */
template <int GM>
__device__ __forceinline__ void dec_score_chunk(uint4 u, const float *q, int ld, int G, float *s)
{
    const uint32_t a[4] = {u.x, u.y, u.z, u.w};
    float kf[8];
#pragma unroll
    for (int i = 0; i < 4; i++) {
        kf[2 * i] = __uint_as_float(a[i] << 16);
        kf[2 * i + 1] = __uint_as_float(a[i] & 0xffff0000u);
    }
#pragma unroll
    for (int g = 0; g < GM; g++) {
        if (g < G) {
            const float4 q0 = *(const float4 *)(q + g * ld);
            const float4 q1 = *(const float4 *)(q + g * ld + 4);
            s[g] = fmaf(q0.x, kf[0], fmaf(q0.y, kf[1], fmaf(q0.z, kf[2], fmaf(q0.w, kf[3], s[g]))));
            s[g] = fmaf(q1.x, kf[4], fmaf(q1.y, kf[5], fmaf(q1.z, kf[6], fmaf(q1.w, kf[7], s[g]))));
        }
    }
}

/* grid (KV, nsplit), block 32 * DEC_WARPS; GM >= G = H / KV. */
template <int NH, int GM>
__global__ void __launch_bounds__(32 * DEC_WARPS, GM <= 8 ? 4 : 1)
    k_attn_dec(const float *q, const uint16_t *kc, const uint16_t *vc, int max_ctx, int H, int KV, const int32_t *pos,
               int nsplit, float *part)
{
    constexpr int hd = NH * 32;
    extern __shared__ float sm[];
    float *Qs = sm;                        /* [G][hd] */
    const int G = H / KV;
    float *Ms = Qs + G * hd;               /* [DEC_WARPS][G]: m, then l */
    float *Ls = Ms + DEC_WARPS * GM;
    float *As = Ls + DEC_WARPS * GM;       /* [DEC_WARPS][G][hd] */
    const int kvh = blockIdx.x, sp = blockIdx.y;
    const int w = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int n = min(pos[0] + 1, max_ctx);
    const int per = dec_per(n, nsplit);
    const int k0 = sp * per, k1 = min(n, k0 + per);
    if (k0 >= k1) return; /* an unused split: the combine does not read it */
    for (int e = threadIdx.x; e < G * hd; e += 32 * DEC_WARPS) Qs[e] = q[(int64_t)kvh * G * hd + e];
    __syncthreads();
    const float scale = rsqrtf((float)hd);
    const uint16_t *kb = kc + (int64_t)kvh * max_ctx * hd, *vb = vc + (int64_t)kvh * max_ctx * hd;
    float m[GM], l[GM], acc[GM][NH];
#pragma unroll
    for (int g = 0; g < GM; g++) {
        m[g] = ATT_NEG;
        l[g] = 0.0f;
#pragma unroll
        for (int i = 0; i < NH; i++) acc[g][i] = 0.0f;
    }
    for (int base = k0 + 32 * w; base < k1; base += 32 * DEC_WARPS) {
        const int key = base + lane;
        const bool valid = key < k1;
        float s[GM];
#pragma unroll
        for (int g = 0; g < GM; g++) s[g] = 0.0f;
        if (valid) {
            const uint4 *kr = (const uint4 *)(kb + (int64_t)key * hd);
#pragma unroll 4
            for (int c = 0; c < hd / 8; c++) dec_score_chunk<GM>(__ldg(kr + c), Qs + 8 * c, hd, G, s);
        }
        float pr[GM];
#pragma unroll
        for (int g = 0; g < GM; g++) {
            if (g >= G) break;
            const float sg = valid ? s[g] * scale : ATT_NEG;
            const float mn = fmaxf(m[g], qk_warp_max(sg));
            const float corr = __expf(m[g] - mn);
            pr[g] = valid ? __expf(sg - mn) : 0.0f;
            l[g] = l[g] * corr + qk_warp_sum(pr[g]);
#pragma unroll
            for (int i = 0; i < NH; i++) acc[g][i] *= corr;
            m[g] = mn;
        }
        const int nk = min(32, k1 - base);
        int j = 0;
        /* V rows DEC_VAHEAD at a time, their loads issued before the FMAs
         * (one memory round trip per group instead of per key). The launch
         * bound keeps 4 blocks per SM (128 registers) for up to 8 query heads
         * per KV head, which long contexts need: without it the 27B kernel
         * took 209 registers and lost at 32K keys (BENCHMARKS.md). With it,
         * 2 rows ahead: 27B int4 ctx 4096 +1 %, 32768 +2 %; 4 rows spilled
         * more and gained less. */
        for (; j + DEC_VAHEAD <= nk; j += DEC_VAHEAD) {
            float v[DEC_VAHEAD][NH];
#pragma unroll
            for (int u = 0; u < DEC_VAHEAD; u++) dec_load_v<NH>(vb + (int64_t)(base + j + u) * hd + lane * NH, v[u]);
#pragma unroll
            for (int u = 0; u < DEC_VAHEAD; u++)
#pragma unroll
                for (int g = 0; g < GM; g++) {
                    if (g >= G) break;
                    const float pj = __shfl_sync(0xffffffffu, pr[g], j + u);
#pragma unroll
                    for (int i = 0; i < NH; i++) acc[g][i] = fmaf(pj, v[u][i], acc[g][i]);
                }
        }
        for (; j < nk; j++) {
            float v[NH];
            dec_load_v<NH>(vb + (int64_t)(base + j) * hd + lane * NH, v);
#pragma unroll
            for (int g = 0; g < GM; g++) {
                if (g >= G) break;
                const float pj = __shfl_sync(0xffffffffu, pr[g], j);
#pragma unroll
                for (int i = 0; i < NH; i++) acc[g][i] = fmaf(pj, v[i], acc[g][i]);
            }
        }
    }
    /* merge the warps: each head's (m, l, acc) over the block's keys */
#pragma unroll
    for (int g = 0; g < GM; g++) {
        if (g >= G) break;
        if (lane == 0) {
            Ms[w * GM + g] = m[g];
            Ls[w * GM + g] = l[g];
        }
#pragma unroll
        for (int i = 0; i < NH; i++) As[((int64_t)w * G + g) * hd + lane * NH + i] = acc[g][i];
    }
    __syncthreads();
    for (int e = threadIdx.x; e < G * hd; e += 32 * DEC_WARPS) {
        const int g = e / hd, d = e % hd;
        float M = ATT_NEG;
        for (int ww = 0; ww < DEC_WARPS; ww++) M = fmaxf(M, Ms[ww * GM + g]);
        float L = 0.0f, o = 0.0f;
        for (int ww = 0; ww < DEC_WARPS; ww++) {
            const float f = Ls[ww * GM + g] > 0.0f ? __expf(Ms[ww * GM + g] - M) : 0.0f;
            L += Ls[ww * GM + g] * f;
            o += As[((int64_t)ww * G + g) * hd + d] * f;
        }
        float *pp = part + ((int64_t)(kvh * G + g) * nsplit + sp) * (hd + 2);
        if (d == 0) {
            pp[0] = M;
            pp[1] = L;
        }
        pp[2 + d] = o;
    }
}

/* hd = 256 (every real Qwen3.5 / 3.6 size) on sm_90+: the block's 8 warps
 * share each 32-key tile, brought into shared memory by bulk copies. The
 * kernel above is bound by latency: a warp has at most 4 x 16 bytes per
 * lane of K, or two V rows, in flight, and 4096 keys of the 27B model are
 * 128 blocks of 4 warps with one tile per warp (40 us for 16.8 MB of cache,
 * 0.42 TB/s). Giving each warp its own tiles in shared memory instead
 * (tried: one block of 4 warps per SM) left too few warps to hide the
 * arithmetic's latency: +2 % at 4096 keys, -5.5 % at 32768.
 *
 * Here warp 0 asks for a whole tile (K and V, 16 KB each, contiguous in the
 * cache) with 33 bulk copies into one of DB_STAGES stages, and for the tile
 * DB_STAGES ahead as soon as the block is done with a stage; warp w
 * scores the tile's 32 keys (lane = key) over dims [32w, 32w + 32), the
 * partial scores meet in shared memory, every warp runs the same online
 * softmax over their sums, and for P.V thread (w, lane) owns output dim 32w
 * + lane of every head. Two blocks per SM (16 warps), one split per block.
 * 27B decode on an H100 against the kernel above, two A/B rounds: int4
 * 118.5 / 118.4 -> 122.8 / 121.7 tok/s at ctx 0, 114.2 / 114.1 -> 115.9 /
 * 115.0 at 4096, 101.2 / 101.0 -> 102.2 / 102.4 at 32768 (ncu at 32768:
 * 96 us, 1.44 TB/s, stalls on shared-memory latency; padding the K rows
 * removed no time, so bank conflicts were not the limit). */
#define DB_WARPS 8
#define DB_STAGES 2
#define DB_MIN_KEYS 64 /* a split covers at least this many keys */
/* A stage: 32 K rows of 512 bytes, each followed by DB_KPAD bytes so that
 * the 8 lanes of a quarter warp (8 keys, lane = key) read their 16-byte
 * pieces from 8 different bank groups (unpadded, rows 512 bytes apart fall
 * in the same one), then the 32 V rows (read along the row: no conflict).
 * Measured on the H100, the padding neither gained nor lost time: the
 * stalls are shared-memory latency (with it, ncu counts ~97 K conflicts in
 * a 95 us launch). */
#define DB_KPAD 16
#define DB_KROW (512 + DB_KPAD)
#define DB_STAGE (32 * DB_KROW + 32 * 512)

__device__ __forceinline__ int db_per(int n, int nsplit)
{
    return max((n + nsplit - 1) / nsplit, DB_MIN_KEYS);
}

/* Keys [k0, k1) of split sp in nt tiles of 32, of the pos[0] + 1 written
 * (at most max_ctx); false for a split past them. */
__device__ __forceinline__ bool db_split_keys(int max_ctx, const int32_t *pos, int nsplit, int sp, int &k0, int &k1,
                                              int &nt)
{
    const int n = min(pos[0] + 1, max_ctx), per = db_per(n, nsplit);
    k0 = sp * per;
    k1 = min(n, k0 + per);
    nt = (k1 - k0 + 31) / 32;
    return k0 < k1;
}

/* Dynamic shared memory of k_attn_dec_bulk: the stages, then Qs [G][256],
 * partial scores [DB_WARPS][GM][32], probabilities [DB_WARPS][GM][32]. */
static size_t db_smem(int G, int GM)
{
    return (size_t)DB_STAGES * DB_STAGE + ((size_t)G * 256 + 2 * DB_WARPS * GM * 32) * sizeof(float);
}

/* Warp 0 of the block: the tile of keys [base, min(base + 32, k1)) into the
 * stage at stg — each K row by its own lane (a copy per row, to its padded
 * place), the V rows in one copy — all completing on bar. */
__device__ __forceinline__ void db_issue(uint8_t *stg, const uint16_t *kb, const uint16_t *vb, int base, int k1,
                                         uint64_t *bar)
{
    const int lane = threadIdx.x & 31, nk = min(32, k1 - base);
    if (lane == 0) qk_mbar_expect(bar, (uint32_t)nk * 1024);
    __syncwarp();
    if (lane < nk) qk_bulk_copy(stg + lane * DB_KROW, kb + (int64_t)(base + lane) * 256, 512, bar);
    if (lane == 0) qk_bulk_copy(stg + 32 * DB_KROW, vb + (int64_t)base * 256, (uint32_t)nk * 512, bar);
}

template <int GM>
__global__ void __launch_bounds__(32 * DB_WARPS, 2)
    k_attn_dec_bulk(const float *q, const uint16_t *kc, const uint16_t *vc, int max_ctx, int H, int KV,
                    const int32_t *pos, int nsplit, float *part)
{
    constexpr int hd = 256;
    extern __shared__ __align__(128) uint8_t dsm[];
    __shared__ __align__(8) uint64_t bars[DB_STAGES];
    const int G = H / KV;
    float *Qs = (float *)(dsm + DB_STAGES * DB_STAGE);
    float *Sc = Qs + G * hd;             /* [DB_WARPS][GM][32] */
    qk_pdl_trigger(); /* the combine may land early */
    const int kvh = blockIdx.x, sp = blockIdx.y;
    const int w = threadIdx.x >> 5, lane = threadIdx.x & 31;
    float *Pw = Sc + DB_WARPS * GM * 32 + w * GM * 32; /* this warp's probabilities [GM][32] */
    int k0, k1, nt;
    if (!db_split_keys(max_ctx, pos, nsplit, sp, k0, k1, nt)) return; /* unused: the combine does not read it */
    const uint16_t *kb = kc + (int64_t)kvh * max_ctx * hd, *vb = vc + (int64_t)kvh * max_ctx * hd;
    /* A PDL launch: the first tiles go out before the wait when all their
     * keys are older than this step's (pos[0], which k_attn_prep, the kernel
     * before, is writing; earlier keys were written by earlier steps, with
     * plain launches in between). */
    const int newest = pos[0];
    if (w == 0) {
        if (lane == 0) {
            for (int st = 0; st < DB_STAGES; st++) qk_mbar_init(bars + st);
            qk_mbar_init_fence();
        }
        __syncwarp();
        for (int t = 0; t < DB_STAGES && t < nt; t++)
            if (k0 + 32 * t + 32 <= newest) db_issue(dsm + t * DB_STAGE, kb, vb, k0 + 32 * t, k1, bars + t);
    }
    qk_pdl_wait();
    if (w == 0)
        for (int t = 0; t < DB_STAGES && t < nt; t++)
            if (k0 + 32 * t + 32 > newest) db_issue(dsm + t * DB_STAGE, kb, vb, k0 + 32 * t, k1, bars + t);
    for (int e = threadIdx.x; e < G * hd; e += 32 * DB_WARPS) Qs[e] = q[(int64_t)kvh * G * hd + e];
    __syncthreads();
    const float scale = rsqrtf((float)hd);
    float m[GM], l[GM], acc[GM];
#pragma unroll
    for (int g = 0; g < GM; g++) {
        m[g] = ATT_NEG;
        l[g] = 0.0f;
        acc[g] = 0.0f;
    }
    for (int t = 0; t < nt; t++) {
        const int st = t % DB_STAGES, base = k0 + 32 * t, nk = min(32, k1 - base);
        const uint8_t *stg = dsm + st * DB_STAGE;
        qk_mbar_wait(bars + st, (uint32_t)(t / DB_STAGES) & 1u);
        /* scores over this warp's 32 dims */
        const bool valid = lane < nk;
        float s[GM];
#pragma unroll
        for (int g = 0; g < GM; g++) s[g] = 0.0f;
        if (valid) {
            const uint4 *kr = (const uint4 *)(stg + lane * DB_KROW + w * 64);
#pragma unroll
            for (int c = 0; c < 4; c++) dec_score_chunk<GM>(kr[c], Qs + 32 * w + 8 * c, hd, G, s);
        }
#pragma unroll
        for (int g = 0; g < GM; g++)
            if (g < G) Sc[(w * GM + g) * 32 + lane] = s[g];
        __syncthreads();
        /* the same online softmax in every warp, over the summed scores; the
         * heads' warp reductions interleaved (the same butterflies as
         * qk_warp_max / qk_warp_sum, one latency chain instead of G; heads
         * past G carry ATT_NEG and zeros) */
        float sg[GM], red[GM], pr[GM], corr[GM];
#pragma unroll
        for (int g = 0; g < GM; g++) {
            float t = 0.0f;
            if (g < G) {
#pragma unroll
                for (int ww = 0; ww < DB_WARPS; ww++) t += Sc[(ww * GM + g) * 32 + lane];
            }
            sg[g] = valid && g < G ? t * scale : ATT_NEG;
            red[g] = sg[g];
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1)
#pragma unroll
            for (int g = 0; g < GM; g++) red[g] = fmaxf(red[g], __shfl_xor_sync(0xffffffffu, red[g], o));
#pragma unroll
        for (int g = 0; g < GM; g++) {
            const float mn = fmaxf(m[g], red[g]);
            corr[g] = __expf(m[g] - mn);
            pr[g] = valid && g < G ? __expf(sg[g] - mn) : 0.0f;
            m[g] = mn;
            red[g] = pr[g];
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1)
#pragma unroll
            for (int g = 0; g < GM; g++) red[g] += __shfl_xor_sync(0xffffffffu, red[g], o);
#pragma unroll
        for (int g = 0; g < GM; g++) {
            l[g] = l[g] * corr[g] + red[g];
            if (g < G) Pw[g * 32 + lane] = pr[g];
        }
        __syncwarp();
        /* P.V: output dim 32w + lane of every head */
        const uint16_t *vr = (const uint16_t *)(stg + 32 * DB_KROW) + 32 * w + lane;
#pragma unroll
        for (int g = 0; g < GM; g++) acc[g] *= corr[g];
        int j = 0;
        for (; j + 4 <= nk; j += 4) {
            float v[4];
#pragma unroll
            for (int u = 0; u < 4; u++) v[u] = qk_bf(vr[(j + u) * hd]);
#pragma unroll
            for (int g = 0; g < GM; g++) {
                if (g >= G) break;
                const float4 p = *(const float4 *)(Pw + g * 32 + j);
                acc[g] = fmaf(p.x, v[0], acc[g]);
                acc[g] = fmaf(p.y, v[1], acc[g]);
                acc[g] = fmaf(p.z, v[2], acc[g]);
                acc[g] = fmaf(p.w, v[3], acc[g]);
            }
        }
        for (; j < nk; j++) {
            const float v = qk_bf(vr[j * hd]);
#pragma unroll
            for (int g = 0; g < GM; g++) {
                if (g >= G) break;
                acc[g] = fmaf(Pw[g * 32 + j], v, acc[g]);
            }
        }
        /* every warp is done with the stage (and with Sc): refill it */
        __syncthreads();
        if (w == 0 && t + DB_STAGES < nt) db_issue(dsm + st * DB_STAGE, kb, vb, base + 32 * DB_STAGES, k1, bars + st);
    }
#pragma unroll
    for (int g = 0; g < GM; g++) {
        if (g >= G) break;
        float *pp = part + ((int64_t)(kvh * G + g) * nsplit + sp) * (hd + 2);
        if (threadIdx.x == 0) {
            pp[0] = m[g];
            pp[1] = l[g];
        }
        pp[2 + 32 * w + lane] = acc[g];
    }
}

/* The same split and 32-key tiles as k_attn_dec_bulk, with both products on
 * the tensor cores (mma.sync m16n8k16, the G query heads as the 16 rows of
 * A, rows past G zero). ncu of k_attn_dec_bulk at 131072 keys: 1.26 TB/s,
 * one instruction per 2 cycles per scheduler, mostly the online softmax
 * that every warp repeats for every head and shared-memory loads feeding
 * one FMA each. Here, per tile:
 *  1. warp w scores the 32 keys over dims [32w, 32w + 32) (4 ldmatrix, 16
 *     MMAs) into the partial-score table; barrier;
 *  2. warp w runs the online softmax of heads w and w + 8 (lane = key) and
 *     writes their probabilities as bf16 hi + lo tables and the rescale
 *     factor; the last warp refills the stage the previous tile used;
 *     barrier;
 *  3. warp w accumulates P.V for output dims [32w, 32w + 32) of every head
 *     (4 + 4 ldmatrix, 16 MMAs).
 * fp32-level accuracy with bf16 operands: q and p are split into hi + lo
 * bf16 (x = hi + lo within 2^-16 |x|), each product is two MMAs against the
 * exact bf16 K and V, fp32 accumulation (tested against the FMA kernel's
 * fp32 partial records). V rows are padded as the K rows, so the
 * transposing ldmatrix of 8 keys hits 8 bank groups. ST stages (dm_pick):
 * 3 where two blocks still fit on an SM, else 2; a stage is refilled as
 * soon as every warp is past its P.V, ST - 1 tiles ahead. H100, 27B heads (G 6),
 * attention + combine: 32768 keys 112.6 -> 74.8 us, 131072 keys 362 -> 217
 * us (1.48 -> 2.47 TB/s of KV). Half the copies (V in one, or two keys per
 * copy) measured the same; ncu then has warps 56 % of their cycles at the
 * two barriers, DRAM at 72 % of peak. */
#define DM_STAGE (64 * DB_KROW) /* 32 K rows, then 32 V rows */
#define DM_SROW 40 /* floats per head row of the score table: conflict-free float2 stores of 4 heads per half warp */
#define DM_PROW 40 /* bf16 per head row of the probability tables: 80 bytes, 8 rows in 8 bank groups */

template <int GM, int ST>
struct dm_cfg {
    static constexpr size_t SC = (size_t)ST * DM_STAGE;                             /* float [DB_WARPS][GM][DM_SROW] */
    static constexpr size_t PH = SC + (size_t)DB_WARPS * GM * DM_SROW * 4;          /* bf16 [16][DM_PROW] hi, then lo */
    static constexpr size_t CR = PH + (size_t)2 * 16 * DM_PROW * 2;                 /* float [16] rescale */
    static constexpr size_t SMEM = CR + 16 * 4;
};

/* A V row of 512 bytes in shared memory, zeroed. */
__device__ __forceinline__ void dm_zero_row(uint8_t *row)
{
    uint4 *v = (uint4 *)row;
#pragma unroll 8
    for (int i = 0; i < 32; i++) v[i] = make_uint4(0u, 0u, 0u, 0u);
}

/* Warp-wide: keys [base, min(base + 32, k1)) into the stage at stg, one K
 * and one V copy per lane. A missing key's V row is zeroed: its probability
 * is 0, but 0 times a stale NaN is NaN in the MMA (a partial tile is the
 * split's last, so no copy lands in the stage after this). */
__device__ __forceinline__ void dm_issue(uint8_t *stg, const uint16_t *kb, const uint16_t *vb, int base, int k1,
                                         uint64_t *bar)
{
    const int lane = threadIdx.x & 31, nk = min(32, k1 - base);
    if (lane == 0) qk_mbar_expect(bar, (uint32_t)nk * 1024);
    __syncwarp();
    if (lane < nk) {
        qk_bulk_copy(stg + lane * DB_KROW, kb + (int64_t)(base + lane) * 256, 512, bar);
        qk_bulk_copy(stg + (32 + lane) * DB_KROW, vb + (int64_t)(base + lane) * 256, 512, bar);
    } else {
        dm_zero_row(stg + (32 + lane) * DB_KROW);
    }
}

/* a, b (a the lower column) as bf16x2 hi and the bf16x2 of what hi misses. */
__device__ __forceinline__ void dm_split2(float a, float b, uint32_t &hi, uint32_t &lo)
{
    hi = tc_pack(a, b);
    lo = tc_pack(a - __uint_as_float(hi << 16), b - __uint_as_float(hi & 0xffff0000u));
}

/* The start of a tensor-core split block (grid: KV heads x splits): the
 * combine may land early; this block's keys [k0, k1) (false: none, and the
 * combine does not read its record), its KV head's K and V rows, and the
 * newest key (keys older than it may be copied before the PDL wait, as in
 * k_attn_dec_bulk). */
__device__ __forceinline__ bool dm_split_open(const uint16_t *kc, const uint16_t *vc, int max_ctx, const int32_t *pos,
                                              int nsplit, int &k0, int &k1, const uint16_t *&kb, const uint16_t *&vb,
                                              int &newest)
{
    qk_pdl_trigger();
    int nt;
    if (!db_split_keys(max_ctx, pos, nsplit, (int)blockIdx.y, k0, k1, nt)) return false;
    kb = kc + (int64_t)blockIdx.x * max_ctx * 256;
    vb = vc + (int64_t)blockIdx.x * max_ctx * 256;
    newest = pos[0];
    return true;
}

template <int GM, int ST>
__global__ void __launch_bounds__(32 * DB_WARPS, 2)
    k_attn_dec_mma(const float *q, const uint16_t *kc, const uint16_t *vc, int max_ctx, int H, int KV,
                   const int32_t *pos, int nsplit, float *part)
{
    constexpr int hd = 256;
    typedef dm_cfg<GM, ST> C;
    extern __shared__ __align__(128) uint8_t dsm[];
    __shared__ __align__(8) uint64_t bars[ST];
    const int G = H / KV;
    float *Sc = (float *)(dsm + C::SC);
    uint16_t *Ph = (uint16_t *)(dsm + C::PH), *Pl = Ph + 16 * DM_PROW;
    float *Cr = (float *)(dsm + C::CR);
    const int kvh = blockIdx.x, sp = blockIdx.y;
    const int w = threadIdx.x >> 5, lane = threadIdx.x & 31, gr = lane >> 2, tq = lane & 3;
    int k0, k1, newest;
    const uint16_t *kb, *vb;
    if (!dm_split_open(kc, vc, max_ctx, pos, nsplit, k0, k1, kb, vb, newest)) return;
    const int nt = (k1 - k0 + 31) / 32;
    if (w == 0) {
        if (lane == 0) {
            for (int st = 0; st < ST; st++) qk_mbar_init(bars + st);
            qk_mbar_init_fence();
        }
        __syncwarp();
        for (int t = 0; t < ST - 1 && t < nt; t++)
            if (k0 + 32 * t + 32 <= newest) dm_issue(dsm + t * DM_STAGE, kb, vb, k0 + 32 * t, k1, bars + t);
    }
    /* probability rows past G stay zero (the MMA rows of absent heads) */
    for (int e = threadIdx.x; e < 2 * 16 * DM_PROW; e += 32 * DB_WARPS) Ph[e] = 0;
    qk_pdl_wait();
    if (w == 0)
        for (int t = 0; t < ST - 1 && t < nt; t++)
            if (k0 + 32 * t + 32 > newest) dm_issue(dsm + t * DM_STAGE, kb, vb, k0 + 32 * t, k1, bars + t);
    /* A fragments of q for this warp's dims, k-steps ks: a[r + 2c] holds
     * head gr + 8r, dims 32w + 16ks + 8c + 2tq + {0, 1} */
    uint32_t qh[2][4], ql[2][4];
#pragma unroll
    for (int ks = 0; ks < 2; ks++)
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int g = gr + 8 * (i & 1), d = 32 * w + 16 * ks + 8 * (i >> 1) + 2 * tq;
            const float2 v = g < G ? *(const float2 *)(q + ((int64_t)kvh * G + g) * hd + d) : make_float2(0.0f, 0.0f);
            dm_split2(v.x, v.y, qh[ks][i], ql[ks][i]);
        }
    __syncthreads(); /* the barriers' init, the zeroed probability rows */
    /* ldmatrix row addresses: scores, key 8j + (lane & 7) at dims 32w + 8
     * (lane >> 3) of a stage (the x4 = both k-steps of key tile j); P.V, key
     * 16ks + (lane & 7) + 8 ((lane >> 3) & 1) at dims 32w + 16p + 8 (lane >>
     * 4) of a stage; P, head (lane & 7) + 8 ((lane >> 3) & 1) at keys 16ks +
     * 8 (lane >> 4) of a table (the A fragment's four 8 x 8 pieces) */
    const uint32_t ka = (uint32_t)((lane & 7) * DB_KROW + (32 * w + 8 * (lane >> 3)) * 2);
    const uint32_t va = (uint32_t)((32 + (lane & 7) + 8 * ((lane >> 3) & 1)) * DB_KROW + (32 * w + 8 * (lane >> 4)) * 2);
    const uint32_t pa = tc_smem(Ph) + (uint32_t)((((lane & 7) + 8 * ((lane >> 3) & 1)) * DM_PROW + 8 * (lane >> 4)) * 2);
    const float scale = rsqrtf((float)hd);
    float m[2] = {ATT_NEG, ATT_NEG}, l[2] = {0.0f, 0.0f}, o[4][4];
#pragma unroll
    for (int j = 0; j < 4; j++) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
    for (int t = 0; t < nt; t++) {
        const int st = t % ST, base = k0 + 32 * t, nk = min(32, k1 - base);
        const uint32_t sb = tc_smem(dsm + st * DM_STAGE);
        qk_mbar_wait(bars + st, (uint32_t)(t / ST) & 1u);
        /* 1. partial scores of the 32 keys over this warp's dims */
#pragma unroll
        for (int j = 0; j < 4; j++) {
            uint32_t b[4];
            float s[4] = {0.0f, 0.0f, 0.0f, 0.0f};
            tc_ldsm4(b, sb + ka + j * 8 * DB_KROW);
            tc_mma(s, qh[0], b[0], b[1]);
            tc_mma(s, ql[0], b[0], b[1]);
            tc_mma(s, qh[1], b[2], b[3]);
            tc_mma(s, ql[1], b[2], b[3]);
            if (gr < G) *(float2 *)(Sc + (w * GM + gr) * DM_SROW + 8 * j + 2 * tq) = make_float2(s[0], s[1]);
            if (GM > 8 && gr + 8 < G)
                *(float2 *)(Sc + (w * GM + gr + 8) * DM_SROW + 8 * j + 2 * tq) = make_float2(s[2], s[3]);
        }
        __syncthreads(); /* scores in; every warp is past tile t - 1's P.V */
        /* the stage of tile t - 1 takes tile t + ST - 1 */
        if (w == DB_WARPS - 1 && t + ST - 1 < nt)
            dm_issue(dsm + ((t + ST - 1) % ST) * DM_STAGE, kb, vb, base + 32 * (ST - 1), k1, bars + (t + ST - 1) % ST);
        /* 2. online softmax of heads w and w + 8, lane = key */
        const bool valid = lane < nk;
#pragma unroll
        for (int r = 0; r < 2; r++) {
            const int g = w + DB_WARPS * r;
            if (g >= G) break;
            float u = 0.0f;
#pragma unroll
            for (int ww = 0; ww < DB_WARPS; ww++) u += Sc[(ww * GM + g) * DM_SROW + lane];
            const float sg = valid ? u * scale : ATT_NEG;
            const float mn = fmaxf(m[r], qk_warp_max(sg));
            const float corr = __expf(m[r] - mn), pr = valid ? __expf(sg - mn) : 0.0f;
            l[r] = l[r] * corr + qk_warp_sum(pr);
            m[r] = mn;
            const uint16_t hi = qk_to_bf(pr);
            Ph[g * DM_PROW + lane] = hi;
            Pl[g * DM_PROW + lane] = qk_to_bf(pr - qk_bf(hi));
            if (lane == 0) Cr[g] = corr;
        }
        __syncthreads(); /* probabilities and rescale factors in */
        /* 3. P.V over this warp's 32 output dims */
        const float c0 = gr < G ? Cr[gr] : 1.0f, c1 = gr + 8 < G ? Cr[gr + 8] : 1.0f;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            o[j][0] *= c0;
            o[j][1] *= c0;
            o[j][2] *= c1;
            o[j][3] *= c1;
        }
#pragma unroll
        for (int ks = 0; ks < 2; ks++) {
            uint32_t ph[4], pl[4];
            tc_ldsm4(ph, pa + ks * 32);
            tc_ldsm4(pl, pa + ks * 32 + 16 * DM_PROW * 2);
#pragma unroll
            for (int p = 0; p < 2; p++) {
                uint32_t b[4];
                tc_ldsm4_t(b, sb + va + ks * 16 * DB_KROW + p * 32);
                tc_mma(o[2 * p], ph, b[0], b[1]);
                tc_mma(o[2 * p], pl, b[0], b[1]);
                tc_mma(o[2 * p + 1], ph, b[2], b[3]);
                tc_mma(o[2 * p + 1], pl, b[2], b[3]);
            }
        }
    }
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const int g = w + DB_WARPS * r;
        if (g < G && lane == 0) {
            float *pp = part + ((int64_t)(kvh * G + g) * nsplit + sp) * (hd + 2);
            pp[0] = m[r];
            pp[1] = l[r];
        }
    }
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const int g = gr + 8 * r;
        if (g >= G) continue;
        float *pp = part + ((int64_t)(kvh * G + g) * nsplit + sp) * (hd + 2) + 2 + 32 * w + 2 * tq;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            pp[8 * j] = o[j][2 * r];
            pp[8 * j + 1] = o[j][2 * r + 1];
        }
    }
}

/* The same split with no block barrier per tile (G <= 8): each warp streams
 * its own run of 16-key tiles through its own ring of ST stages (one bulk
 * copy per K or V row, a lane each, completed on the warp's mbarrier) and
 * keeps its own online softmax over all 256 dims; the block's warps merge
 * once, at the end, in warp order. ncu of k_attn_dec_mma had its warps 56 %
 * of their cycles at the two barriers of every tile. Both products are
 * transposed so that the heads are the MMA's n (8 columns) and nothing is
 * wasted on absent heads:
 *  S^T (16 keys x 8 heads) = K (keys x dims, ldmatrix of the stage) . Q^T
 *    (q's B fragments in registers as hi + lo bf16, all 16 k-steps);
 *  O^T (256 dims x 8 heads) += V^T (ldmatrix.trans) . P^T, the 16 m-tiles
 *    of dims held in registers (64 floats per lane).
 * The S^T accumulator holds a lane's 2 heads x 2 keys; the max over the
 * tile's keys is 3 shuffles per head, the rescale factor of each of those
 * heads is the lane's own for its O^T columns, and P^T's B fragments are
 * the S^T fragment packed to bf16 hi + lo and transposed in registers
 * (movmatrix). The sum of l stays per lane until the end. Rescaling O is
 * skipped when no head's maximum moved in the tile. */
#define DW_KEYS 16
#define DW_STAGE (2 * DW_KEYS * DB_KROW) /* 16 K rows, then 16 V rows */
#define DW_OROW 260 /* floats per head row of the merge table: conflict-free stores of the O^T fragments */

template <int W, int ST>
struct dw_cfg {
    static constexpr size_t SMEM = (size_t)W * ST * DW_STAGE;
    static constexpr size_t OM = (size_t)W * 8 * DW_OROW * 4; /* merge table [W][8][DW_OROW], then m, l [W][8] */
    static_assert(OM + 2 * W * 8 * 4 + 2 * 8 * 4 <= SMEM, "the merge table reuses the stages");
};

/* Lanes of a warp: keys [base, min(base + 16, k1)) into the stage at stg,
 * lane k the K row of key k, lane 16 + k its V row; V rows of missing keys
 * zeroed (0 times a stale NaN is NaN in the MMA; a partial tile is the
 * block's last, so no copy lands in that stage after it). */
__device__ __forceinline__ void dw_issue(uint8_t *stg, const uint16_t *kb, const uint16_t *vb, int base, int k1,
                                         uint64_t *bar)
{
    const int lane = threadIdx.x & 31, key = lane & 15, nk = min(DW_KEYS, k1 - base);
    uint8_t *dst = stg + lane * DB_KROW;
    /* the zeros before lane 0's arrival (a release), so the warp's wait on
     * this phase (an acquire) orders them before its ldmatrix reads */
    if (key >= nk && lane >= 16) dm_zero_row(dst);
    __syncwarp();
    if (lane == 0) qk_mbar_expect(bar, (uint32_t)nk * 1024);
    __syncwarp();
    if (key < nk) qk_bulk_copy(dst, (lane < 16 ? kb : vb) + (int64_t)(base + key) * 256, 512, bar);
}

template <int W, int ST>
__global__ void __launch_bounds__(32 * W, 1)
    k_attn_dec_ws(const float *q, const uint16_t *kc, const uint16_t *vc, int max_ctx, int H, int KV,
                  const int32_t *pos, int nsplit, float *part)
{
    constexpr int hd = 256;
    extern __shared__ __align__(128) uint8_t dsm[];
    __shared__ __align__(8) uint64_t bars[W * ST];
    const int G = H / KV;
    const int kvh = blockIdx.x, sp = blockIdx.y;
    const int w = threadIdx.x >> 5, lane = threadIdx.x & 31, gr = lane >> 2, tq = lane & 3;
    int k0, k1, newest;
    const uint16_t *kb, *vb;
    if (!dm_split_open(kc, vc, max_ctx, pos, nsplit, k0, k1, kb, vb, newest)) return;
    const int n16 = (k1 - k0 + DW_KEYS - 1) / DW_KEYS, t0 = w * n16 / W, nt = (w + 1) * n16 / W - t0;
    uint8_t *ring = dsm + (size_t)w * ST * DW_STAGE;
    uint64_t *bar = bars + w * ST;
    if (lane == 0) {
        for (int s = 0; s < ST; s++) qk_mbar_init(bar + s);
        qk_mbar_init_fence();
    }
    __syncwarp();
    for (int t = 0; t < ST && t < nt; t++) {
        const int base = k0 + DW_KEYS * (t0 + t);
        if (base + DW_KEYS <= newest) dw_issue(ring + t * DW_STAGE, kb, vb, base, k1, bar + t);
    }
    qk_pdl_wait();
    for (int t = 0; t < ST && t < nt; t++) {
        const int base = k0 + DW_KEYS * (t0 + t);
        if (base + DW_KEYS > newest) dw_issue(ring + t * DW_STAGE, kb, vb, base, k1, bar + t);
    }
    /* B fragments of Q^T, k-step ks: b[i] holds head gr, dims 16 ks + 8 i +
     * 2 tq + {0, 1} */
    uint32_t qh[16][2], ql[16][2];
    {
        const float *qg = q + ((int64_t)kvh * G + gr) * hd;
#pragma unroll
        for (int ks = 0; ks < 16; ks++)
#pragma unroll
            for (int i = 0; i < 2; i++) {
                const float2 v = gr < G ? *(const float2 *)(qg + 16 * ks + 8 * i + 2 * tq) : make_float2(0.0f, 0.0f);
                dm_split2(v.x, v.y, qh[ks][i], ql[ks][i]);
            }
    }
    /* ldmatrix row addresses: K as A (keys x dims), matrix j = lane / 8 at
     * key (lane & 7) + 8 (j & 1), dims 8 (j >> 1) of the k-step; V^T as A
     * (dims x keys, transposed), matrix j at key (lane & 7) + 8 (j >> 1),
     * dims 8 (j & 1) of the m-tile */
    const uint32_t ka = (uint32_t)(((lane & 7) + 8 * ((lane >> 3) & 1)) * DB_KROW + 16 * (lane >> 4));
    const uint32_t va = (uint32_t)((DW_KEYS + (lane & 7) + 8 * (lane >> 4)) * DB_KROW + 16 * ((lane >> 3) & 1));
    const float scale = rsqrtf((float)hd);
    float m0 = ATT_NEG, m1 = ATT_NEG, l0 = 0.0f, l1 = 0.0f; /* heads 2 tq, 2 tq + 1 */
    float o[16][4]; /* O^T m-tile mt: dims 16 mt + gr (+ 8 in [2], [3]), heads 2 tq (+ 1 in [1], [3]) */
#pragma unroll
    for (int mt = 0; mt < 16; mt++) o[mt][0] = o[mt][1] = o[mt][2] = o[mt][3] = 0.0f;
    for (int t = 0; t < nt; t++) {
        const int s = t % ST, base = k0 + DW_KEYS * (t0 + t), nk = min(DW_KEYS, k1 - base);
        const uint32_t sb = tc_smem(ring + s * DW_STAGE);
        qk_mbar_wait(bar + s, (uint32_t)(t / ST) & 1u);
        /* S^T: four accumulation chains (hi / lo, even / odd k-steps) */
        float sc[4][4];
#pragma unroll
        for (int c = 0; c < 4; c++) sc[c][0] = sc[c][1] = sc[c][2] = sc[c][3] = 0.0f;
#pragma unroll
        for (int ks = 0; ks < 16; ks++) {
            uint32_t a[4];
            tc_ldsm4(a, sb + ka + 32 * ks);
            tc_mma(sc[ks & 1], a, qh[ks][0], qh[ks][1]);
            tc_mma(sc[2 + (ks & 1)], a, ql[ks][0], ql[ks][1]);
        }
        float x[4];
#pragma unroll
        for (int i = 0; i < 4; i++) x[i] = ((sc[0][i] + sc[1][i]) + (sc[2][i] + sc[3][i])) * scale;
        /* lane: keys gr ([0], [1]) and gr + 8 ([2], [3]), heads 2 tq ([0], [2]) and 2 tq + 1 */
        const bool v0 = gr < nk, v1 = gr + 8 < nk;
        if (!v0) x[0] = x[1] = ATT_NEG;
        if (!v1) x[2] = x[3] = ATT_NEG;
        float mx0 = fmaxf(x[0], x[2]), mx1 = fmaxf(x[1], x[3]);
#pragma unroll
        for (int off = 4; off < 32; off <<= 1) {
            mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, off));
            mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, off));
        }
        const float mn0 = fmaxf(m0, mx0), mn1 = fmaxf(m1, mx1);
        const float c0 = __expf(m0 - mn0), c1 = __expf(m1 - mn1);
        const float p0 = v0 ? __expf(x[0] - mn0) : 0.0f, p1 = v0 ? __expf(x[1] - mn1) : 0.0f;
        const float p2 = v1 ? __expf(x[2] - mn0) : 0.0f, p3 = v1 ? __expf(x[3] - mn1) : 0.0f;
        l0 = l0 * c0 + (p0 + p2);
        l1 = l1 * c1 + (p1 + p3);
        m0 = mn0;
        m1 = mn1;
        if (__any_sync(0xffffffffu, c0 != 1.0f || c1 != 1.0f)) {
#pragma unroll
            for (int mt = 0; mt < 16; mt++) {
                o[mt][0] *= c0;
                o[mt][1] *= c1;
                o[mt][2] *= c0;
                o[mt][3] *= c1;
            }
        }
        /* P^T's B fragments: [key][head] 8 x 8 pieces transposed to [head][key] */
        uint32_t ha, la, hb, lb;
        dm_split2(p0, p1, ha, la);
        dm_split2(p2, p3, hb, lb);
        const uint32_t bh0 = tc_movt(ha), bh1 = tc_movt(hb), bl0 = tc_movt(la), bl1 = tc_movt(lb);
#pragma unroll
        for (int mt = 0; mt < 16; mt++) {
            uint32_t a[4];
            tc_ldsm4_t(a, sb + va + 32 * mt);
            tc_mma(o[mt], a, bh0, bh1);
            tc_mma(o[mt], a, bl0, bl1);
        }
        /* every lane's ldmatrix of stage s is done (its MMAs took them) */
        __syncwarp();
        if (t + ST < nt) dw_issue(ring + s * DW_STAGE, kb, vb, base + DW_KEYS * ST, k1, bar + s);
    }
#pragma unroll
    for (int off = 4; off < 32; off <<= 1) {
        l0 += __shfl_xor_sync(0xffffffffu, l0, off);
        l1 += __shfl_xor_sync(0xffffffffu, l1, off);
    }
    /* merge the warps, in warp order, in the stages' memory */
    float *Om = (float *)dsm, *Mm = Om + W * 8 * DW_OROW, *Lm = Mm + W * 8, *F = Lm + W * 8;
    __syncthreads(); /* every warp is past its last tile */
    if (gr == 0) {
        Mm[w * 8 + 2 * tq] = m0;
        Mm[w * 8 + 2 * tq + 1] = m1;
        Lm[w * 8 + 2 * tq] = l0;
        Lm[w * 8 + 2 * tq + 1] = l1;
    }
    {
        float *ow = Om + (w * 8 + 2 * tq) * DW_OROW + gr;
#pragma unroll
        for (int mt = 0; mt < 16; mt++) {
            ow[16 * mt] = o[mt][0];
            ow[DW_OROW + 16 * mt] = o[mt][1];
            ow[16 * mt + 8] = o[mt][2];
            ow[DW_OROW + 16 * mt + 8] = o[mt][3];
        }
    }
    __syncthreads();
    if (threadIdx.x < G) { /* head g's maximum, the warps' factors and its l */
        const int g = threadIdx.x;
        float mm = ATT_NEG, ll = 0.0f;
        for (int v = 0; v < W; v++) mm = fmaxf(mm, Mm[v * 8 + g]);
        for (int v = 0; v < W; v++) {
            const float f = __expf(Mm[v * 8 + g] - mm);
            Om[(v * 8 + g) * DW_OROW + 256] = f; /* the row's padding */
            ll += f * Lm[v * 8 + g];
        }
        F[g] = mm;
        F[8 + g] = ll;
    }
    __syncthreads();
    for (int e = threadIdx.x; e < G * hd; e += 32 * W) {
        const int g = e / hd, d = e % hd;
        float acc = 0.0f;
        for (int v = 0; v < W; v++) acc += Om[(v * 8 + g) * DW_OROW + 256] * Om[(v * 8 + g) * DW_OROW + d];
        float *pp = part + ((int64_t)(kvh * G + g) * nsplit + sp) * (hd + 2);
        pp[2 + d] = acc;
        if (d == 0) {
            pp[0] = F[g];
            pp[1] = F[8 + g];
        }
    }
}

/* grid H, block hd: merges the splits in use (as k_attn_combine does). */
__global__ void k_attn_dec_combine(const float *part, const float *gate, int H, int hd, int max_ctx,
                                   const int32_t *pos, int nsplit, int bulk, uint16_t *out)
{
    qk_pdl_trigger(); /* the next GEMV may land early (common.cuh) */
    qk_pdl_wait();    /* a PDL launch itself after the bulk kernel */
    const int h = blockIdx.x, d = threadIdx.x;
    const int n = min(pos[0] + 1, max_ctx), per = bulk ? db_per(n, nsplit) : dec_per(n, nsplit);
    const int used = (n + per - 1) / per;
    const int64_t oi = (int64_t)h * hd + d;
    out[oi] = qk_to_bf(attn_merge(part + (int64_t)h * nsplit * (hd + 2), used, hd, d) * qk_sigmoid(gate[oi]));
}

typedef void (*dec_kernel)(const float *, const uint16_t *, const uint16_t *, int, int, int, const int32_t *, int,
                           float *);

/* The tensor-core kernel for this device, chosen once (its dynamic shared
 * memory limit already set): 3 stages where two blocks of it fit on an SM
 * (H100: 228 KB of shared memory, GM <= 8), else 2 where a block fits
 * (sm_120: 100 KB per SM, so one block; H100 at GM 16); k NULL where
 * neither fits (the FMA tiles run instead). bps: its blocks per SM. */
struct dm_choice {
    dec_kernel k;
    size_t smem;
    int bps, threads;
};

/* k with smem bytes of dynamic shared memory and the given threads, if at
 * least min_bps blocks of it fit on an SM of this device (its attribute
 * then set); k NULL otherwise. */
static dm_choice dm_try(dec_kernel k, size_t smem, int threads, int min_bps)
{
    int n = 0;
    if (cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem) != cudaSuccess ||
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, k, threads, smem) != cudaSuccess) {
        (void)cudaGetLastError(); /* too large for this device: not an error of the launch */
        return dm_choice{};
    }
    return n >= min_bps ? dm_choice{k, smem, n, threads} : dm_choice{};
}

template <int GM>
static dm_choice dm_pick(void)
{
    static bool done;
    static dm_choice c;
    if (!done) {
        c = dm_try(k_attn_dec_mma<GM, 3>, dm_cfg<GM, 3>::SMEM, 32 * DB_WARPS, 2);
        if (!c.k) c = dm_try(k_attn_dec_mma<GM, 2>, dm_cfg<GM, 2>::SMEM, 32 * DB_WARPS, 1);
        done = true;
    }
    return c;
}

/* The warp-stream kernel for this device (G <= 8), chosen once as dm_pick:
 * 4 warps of 3 stages (198 KiB of shared memory, one block per SM), where it
 * fits; k NULL elsewhere (sm_120's 100 KB: the tiles kernel runs). H100,
 * 27B INT4 decode at 32768 / 131072 keys against 6 warps x 2 stages: 118.7
 * / 92.8 vs 117.8 / 92.7 tok/s, 35B-A3B FP8 338.8 / 271.9 vs 332.4 / 266.8;
 * 12 x 1, 8 x 1 and 3 x 4 measured within 2 % of it alone, two blocks per
 * SM (3 x 2, 2 x 3) or three (2 x 2) 3-25 % slower at 32768 keys. */
#define DW_WARPS 4
#define DW_ST 3
static dm_choice dw_pick(void)
{
    static bool done;
    static dm_choice c;
    if (!done) {
        c = dm_try(k_attn_dec_ws<DW_WARPS, DW_ST>, dw_cfg<DW_WARPS, DW_ST>::SMEM, 32 * DW_WARPS, 1);
        done = true;
    }
    return c;
}

/* Split-KV decode kernel (quant.h-style test/benchmark hook), at hd 256 on
 * sm_90+: 0 = the warp-stream kernel (G <= 8) or the bulk-copy tiles on the
 * tensor cores, 3 = always the latter, 2 = the same tiles with FMA
 * products; 1 (and everywhere else) = the register kernel. */
extern "C" {
int qk_attn_dec_mode = 0;
}

template <int NH, int GM>
static int attn_dec_launch(const float *q, const float *gate, const uint16_t *kc, const uint16_t *vc, int max_ctx,
                           int H, int KV, const int32_t *pos, int nsplit, void *scratch, uint16_t *out, qk_stream st)
{
    const int hd = NH * 32, G = H / KV;
    const int n_sm = qk_sm_count() > 0 ? qk_sm_count() : 1;
    cudaError_t e;
    const bool bulk = NH == 8 && qk_attn_dec_mode != 1 && qk_cc_major() >= 9; /* bulk copies */
    if (bulk) {
        dm_choice c = qk_attn_dec_mode == 0 && GM <= 8 ? dw_pick() : dm_choice{};
        if (!c.k && (qk_attn_dec_mode == 0 || qk_attn_dec_mode == 3)) c = dm_pick<GM>();
        if (!c.k) {
            c = {k_attn_dec_bulk<GM>, db_smem(G, GM), 2, 32 * DB_WARPS};
            e = cudaFuncSetAttribute(c.k, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)c.smem);
            if (e != cudaSuccess) return (int)e;
        }
        nsplit = max(1, min(nsplit, c.bps * n_sm / KV)); /* as many splits per KV head as one wave of blocks holds */
        cudaLaunchConfig_t cfg;
        cudaLaunchAttribute at[1];
        qk_launch_cfg(&cfg, at, dim3((unsigned)KV, (unsigned)nsplit), dim3((unsigned)c.threads), st, qk_pdl_ok(st));
        cfg.dynamicSmemBytes = c.smem;
        e = cudaLaunchKernelEx(&cfg, c.k, q, kc, vc, max_ctx, H, KV, pos, nsplit, (float *)scratch);
        if (e != cudaSuccess) return (int)e;
    } else {
        const size_t smem = ((size_t)G * hd + 2 * DEC_WARPS * GM + (size_t)DEC_WARPS * G * hd) * sizeof(float);
        e = cudaFuncSetAttribute(k_attn_dec<NH, GM>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
        if (e != cudaSuccess) return (int)e;
        k_attn_dec<NH, GM><<<dim3(KV, nsplit), 32 * DEC_WARPS, smem, st>>>(q, kc, vc, max_ctx, H, KV, pos, nsplit,
                                                                          (float *)scratch);
    }
    cudaLaunchConfig_t cfg;
    cudaLaunchAttribute at[1];
    qk_launch_cfg(&cfg, at, dim3((unsigned)H), dim3((unsigned)hd), st, bulk && (qk_pdl_small & 4) && qk_pdl_ok(st));
    return (int)cudaLaunchKernelEx(&cfg, k_attn_dec_combine, (const float *)scratch, gate, H, hd, max_ctx, pos, nsplit,
                                   bulk ? 1 : 0, out);
}

template <int NH>
static int attn_dec(const float *q, const float *gate, const uint16_t *kc, const uint16_t *vc, int max_ctx, int H,
                    int KV, const int32_t *pos, int nsplit, void *scratch, uint16_t *out, qk_stream st)
{
    const int G = H / KV;
    if (G <= 4) return attn_dec_launch<NH, 4>(q, gate, kc, vc, max_ctx, H, KV, pos, nsplit, scratch, out, st);
    if (G <= 8) return attn_dec_launch<NH, 8>(q, gate, kc, vc, max_ctx, H, KV, pos, nsplit, scratch, out, st);
    return attn_dec_launch<NH, 16>(q, gate, kc, vc, max_ctx, H, KV, pos, nsplit, scratch, out, st);
}

template <int NH>
static int attn_launch(const float *q, const float *gate, const uint16_t *kc, const uint16_t *vc, int max_ctx, int T,
                       int H, int KV, const int32_t *pos, int nsplit, void *scratch, uint16_t *out, qk_stream st)
{
    const int hd = NH * 32;
    int G = H / KV;
    size_t smem = (size_t)(ATT_TILE * (hd + 1) + ATT_TILE * hd + G * hd) * sizeof(float);
    cudaError_t e = cudaFuncSetAttribute(k_attn<NH>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (e != cudaSuccess) return (int)e;
    k_attn<NH><<<dim3(T, KV, nsplit), 32 * G, smem, st>>>(q, gate, kc, vc, max_ctx, H, KV, pos, nsplit,
                                                         (float *)scratch, out);
    if (nsplit > 1) k_attn_combine<<<dim3(T, H), hd, 0, st>>>((const float *)scratch, gate, H, hd, nsplit, out);
    return qk_launch_status();
}

extern "C" int qk_attn(const float *q, const float *gate, const uint16_t *kc, const uint16_t *vc, int max_ctx, int T,
                       int H, int KV, int hd, const int32_t *pos, int nsplit, void *scratch, uint16_t *out,
                       qk_stream st)
{
    if (T <= 0) return 0;
    if (KV <= 0 || H % KV || H / KV > ATT_MAXG || nsplit < 1 || (nsplit > 1 && !scratch))
        return (int)cudaErrorInvalidValue;
    if (T == 1 && nsplit > 1) {
        switch (hd) {
        case 32: return attn_dec<1>(q, gate, kc, vc, max_ctx, H, KV, pos, nsplit, scratch, out, st);
        case 64: return attn_dec<2>(q, gate, kc, vc, max_ctx, H, KV, pos, nsplit, scratch, out, st);
        case 128: return attn_dec<4>(q, gate, kc, vc, max_ctx, H, KV, pos, nsplit, scratch, out, st);
        case 256: return attn_dec<8>(q, gate, kc, vc, max_ctx, H, KV, pos, nsplit, scratch, out, st);
        default: return (int)cudaErrorInvalidValue;
        }
    }
    switch (hd) {
    case 32: return attn_launch<1>(q, gate, kc, vc, max_ctx, T, H, KV, pos, nsplit, scratch, out, st);
    case 64: return attn_launch<2>(q, gate, kc, vc, max_ctx, T, H, KV, pos, nsplit, scratch, out, st);
    case 128: return attn_launch<4>(q, gate, kc, vc, max_ctx, T, H, KV, pos, nsplit, scratch, out, st);
    case 256: return attn_launch<8>(q, gate, kc, vc, max_ctx, T, H, KV, pos, nsplit, scratch, out, st);
    default: return (int)cudaErrorInvalidValue;
    }
}
