/* gdn.cu — Gated DeltaNet: conv + SiLU, gates, L2 norms, the chunked prefill
 * (chunk 64, qwen35-model.md §3.2) and the fused single-token step.
 *
 * Chunked prefill, two launches (details at "chunked prefill" below): prep,
 * parallel over chunks x V heads, forms everything a chunk needs that does
 * not depend on the state (A, P, U, W); scan walks the chunks in order with
 * the state slice of each (V head, 64 columns) block in registers, all
 * products on the tensor cores in a 3-term bf16 split (~1e-5 accuracy). */
#include "common.cuh"
#include <cuda_bf16.h>

#define GDN_C 64

/* ---- conv ---- */

__global__ void k_conv_silu(const float *x, int ld_x, const float *w, const float *state, int T, int C, float *out)
{
    int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (e >= (int64_t)T * C) return;
    int t = (int)(e / C), ch = (int)(e % C);
    float acc = 0.0f;
#pragma unroll
    for (int j = 0; j < 4; j++) {
        int tt = t - 3 + j;
        float v = tt >= 0 ? x[(int64_t)tt * ld_x + ch] : state[ch * 3 + (tt + 3)];
        acc = fmaf(w[ch * 4 + j], v, acc);
    }
    out[e] = qk_silu(acc);
}

/* After the conv: the state becomes the last three raw inputs. */
__global__ void k_conv_state(const float *x, int ld_x, float *state, int T, int C)
{
    int ch = blockIdx.x * blockDim.x + threadIdx.x;
    if (ch >= C) return;
    float s[3];
#pragma unroll
    for (int m = 0; m < 3; m++) {
        int tt = T - 3 + m; /* index in the concatenation [old state (3) | x (T)] is tt + 3 */
        s[m] = tt >= 0 ? x[(int64_t)tt * ld_x + ch] : state[ch * 3 + tt + 3];
    }
#pragma unroll
    for (int m = 0; m < 3; m++) state[ch * 3 + m] = s[m];
}

/* Prefill form: a thread takes 4 channels (16-byte loads) over a run of
 * CONV_RUN tokens and slides the window in registers, so each input is read
 * once (k_conv_silu reads it four times, 4 bytes at a time: ~1.1 TB/s on a
 * 1000-token 27B layer). Same products in the same order, so the same
 * values as k_conv_silu. Needs C % 4 == 0, ld_x % 4 == 0, aligned x/out. */
#define CONV_RUN 16

__global__ void __launch_bounds__(256) k_conv_silu_run(const float *x, int ld_x, const float4 *w, const float *state,
                                                       int T, int C, float *out)
{
    const int c4 = blockIdx.x * 256 + threadIdx.x; /* 4 channels: 4 c4 .. 4 c4 + 3 */
    if (4 * c4 >= C) return;
    const int t0 = blockIdx.y * CONV_RUN;
    float4 wc[4]; /* wc[c] = the 4 taps of channel 4 c4 + c */
#pragma unroll
    for (int c = 0; c < 4; c++) wc[c] = w[4 * c4 + c];
    float4 win[3]; /* inputs at t0 - 3, t0 - 2, t0 - 1 */
#pragma unroll
    for (int m = 0; m < 3; m++) {
        const int tt = t0 - 3 + m;
        if (tt >= 0) {
            win[m] = *(const float4 *)(x + (int64_t)tt * ld_x + 4 * c4);
        } else {
            const float *sr = state + (int64_t)(4 * c4) * 3 + (tt + 3);
            win[m] = make_float4(sr[0], sr[3], sr[6], sr[9]);
        }
    }
    const int t1 = min(T, t0 + CONV_RUN);
    for (int t = t0; t < t1; t++) {
        const float4 cur = *(const float4 *)(x + (int64_t)t * ld_x + 4 * c4);
        float4 o;
        o.x = qk_silu(fmaf(wc[0].w, cur.x, fmaf(wc[0].z, win[2].x, fmaf(wc[0].y, win[1].x, fmaf(wc[0].x, win[0].x, 0.0f)))));
        o.y = qk_silu(fmaf(wc[1].w, cur.y, fmaf(wc[1].z, win[2].y, fmaf(wc[1].y, win[1].y, fmaf(wc[1].x, win[0].y, 0.0f)))));
        o.z = qk_silu(fmaf(wc[2].w, cur.z, fmaf(wc[2].z, win[2].z, fmaf(wc[2].y, win[1].z, fmaf(wc[2].x, win[0].z, 0.0f)))));
        o.w = qk_silu(fmaf(wc[3].w, cur.w, fmaf(wc[3].z, win[2].w, fmaf(wc[3].y, win[1].w, fmaf(wc[3].x, win[0].w, 0.0f)))));
        *(float4 *)(out + (int64_t)t * C + 4 * c4) = o;
        win[0] = win[1];
        win[1] = win[2];
        win[2] = cur;
    }
}

/* One token (decode): output and state update in one launch — each thread
 * owns its channel's state, so reading and shifting it cannot race (the
 * two-kernel form cost two ~4 µs launches per GDN layer and step). Same
 * products in the same order as k_conv_silu. */
__global__ void k_conv_silu_step(const float *x, const float *w, float *state, int C, float *out)
{
    const int ch = blockIdx.x * blockDim.x + threadIdx.x;
    if (ch >= C) return;
    float *s = state + ch * 3;
    const float s0 = s[0], s1 = s[1], s2 = s[2], cur = x[ch];
    const float *wc = w + ch * 4;
    out[ch] = qk_silu(fmaf(wc[3], cur, fmaf(wc[2], s2, fmaf(wc[1], s1, fmaf(wc[0], s0, 0.0f)))));
    s[0] = s1;
    s[1] = s2;
    s[2] = cur;
}

extern "C" int qk_conv_silu(const float *x, int ld_x, const float *w, float *state, int T, int C, float *out,
                            qk_stream st)
{
    if (T <= 0) return 0;
    if (T == 1) {
        k_conv_silu_step<<<qk_cdiv(C, 256), 256, 0, st>>>(x, w, state, C, out);
        return qk_launch_status();
    }
    if (T > 1 && C % 4 == 0 && ld_x % 4 == 0 && ((uintptr_t)x & 15) == 0 && ((uintptr_t)out & 15) == 0 &&
        ((uintptr_t)w & 15) == 0 && qk_cdiv(T, CONV_RUN) <= 65535)
        k_conv_silu_run<<<dim3(qk_cdiv(C / 4, 256), qk_cdiv(T, CONV_RUN)), 256, 0, st>>>(x, ld_x, (const float4 *)w,
                                                                                       state, T, C, out);
    else
        k_conv_silu<<<qk_cdiv((int64_t)T * C, 256), 256, 0, st>>>(x, ld_x, w, state, T, C, out);
    k_conv_state<<<qk_cdiv(C, 256), 256, 0, st>>>(x, ld_x, state, T, C);
    return qk_launch_status();
}

/* ---- gates and norms ---- */

__device__ __forceinline__ float qk_softplus(float x) { return x > 20.0f ? x : log1pf(__expf(x)); }

__device__ __forceinline__ void gdn_gate(float b, float a, float nexpa, float dt_bias, float *beta, float *g)
{
    *beta = 1.0f / (1.0f + expf(-b));
    *g = nexpa * qk_softplus(a + dt_bias);
}

__global__ void k_gdn_gates(const float *b, const float *a, int ld, const float *nexpa, const float *dt_bias,
                            int T, int Hv, float *beta, float *g)
{
    int e = blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= T * Hv) return;
    int t = e / Hv, h = e % Hv;
    gdn_gate(b[(int64_t)t * ld + h], a[(int64_t)t * ld + h], nexpa[h], dt_bias[h], &beta[e], &g[e]);
}

extern "C" int qk_gdn_gates(const float *b, const float *a, int ld, const float *nexpa, const float *dt_bias,
                            int T, int Hv, float *beta, float *g, qk_stream st)
{
    if (T <= 0) return 0;
    k_gdn_gates<<<qk_cdiv((int64_t)T * Hv, 256), 256, 0, st>>>(b, a, ld, nexpa, dt_bias, T, Hv, beta, g);
    return qk_launch_status();
}

/* One warp per (token, q-or-k head). */
__global__ void k_l2norm_qk(float *c, int ld_c, int T, int Hk, int dk)
{
    int wid = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
    if (wid >= T * 2 * Hk) return;
    int t = wid / (2 * Hk), hh = wid % (2 * Hk);
    float *p = c + (int64_t)t * ld_c + (int64_t)hh * dk;
    float ss = 0.0f;
    for (int i = lane; i < dk; i += 32) ss += p[i] * p[i];
    ss = qk_warp_sum(ss);
    float r = 1.0f / sqrtf(ss + 1e-6f);
    if (hh < Hk) r *= 1.0f / sqrtf((float)dk);
    for (int i = lane; i < dk; i += 32) p[i] *= r;
}

extern "C" int qk_l2norm_qk(float *c, int ld_c, int T, int Hk, int dk, qk_stream st)
{
    if (T <= 0) return 0;
    k_l2norm_qk<<<qk_cdiv((int64_t)T * 2 * Hk * 32, 256), 256, 0, st>>>(c, ld_c, T, Hk, dk);
    return qk_launch_status();
}

/* ---- chunked prefill ----
 *
 * Every product runs on the tensor cores as mma.sync m16n8k16 bf16 with a
 * 3-term split (x = hi + lo, hi = bf16(x), lo = bf16(x - hi): 16 mantissa
 * bits; hi*hi + hi*lo + lo*hi, the dropped lo*lo and the rounding of lo are
 * ~2^-17 of each product). It replaced 3xTF32 (m16n8k8, hi/lo tf32 split,
 * rel_l2 ~2e-6 vs the CPU recurrence): the same three mma per k step but
 * k 16 instead of 8, so half the mma instructions and half the A-operand
 * loads (pairs of consecutive k are one float2). Measured rel_l2 ~7e-6 vs
 * the CPU recurrence (T = 1000, 27B heads); 27B layer on H100: T = 1000
 * 0.257 -> 0.213 ms, T = 8192 1.94 -> 1.60 ms (prep + scan). One plain TF32
 * pass rounds every operand to 2^-11, an estimated ~5e-4, over the 2e-4 the
 * tests allow.
 *
 * prep, one block per (chunk, V head), 8 warps: G = K K^T and H = Q K^T as
 * mma; A and P with e^{gamma_i - gamma_j} (i >= j only); then
 * X = (I+A)^{-1} [diag(beta) V | diag(beta e^gamma) K] blockwise over four
 * 16-row blocks: X_b = L_bb^{-1} (R_b - sum_{k<b} A_bk X_k), the 16x16
 * diagonal inverses by forward substitution, the rest as mma; each warp owns
 * 1/8 of the columns of X, so the blockwise solve needs only __syncwarp.
 *
 * scan, one block per (V head, 64 state columns), chunks in order; the
 * block keeps its state slice S [dk][64] in the accumulators of the warps
 * (and a copy in shared memory as the B operand): X = W S and Y = Q S,
 * V' = U - X, O = diag(e^gamma) Y + P V', S = e^{gamma_last} S + K^T
 * diag(e^{gamma_last - gamma}) V'. The next chunk's W|Q|U and this chunk's
 * P|K stream in with cp.async under the other half of the step's math. */

#define GDN_PLD 72 /* pitch of 64-wide row-major A operands (P, A, L^-1): 8 mod 32 banks */

/* Pitches (in floats) chosen so every fragment load below is free of bank
 * conflicts: float2 loads of row-major A / column-major B operands 8 mod 32,
 * scalar loads of column-major A / row-major B operands 4 mod 32. */
__host__ __device__ constexpr int gdn_pa(int dk) { return dk + 8; } /* W, Q (row-major A) */
__host__ __device__ constexpr int gdn_pk(int dk) { return dk + 4; } /* K (column-major A of the state update) */
/* Record per (chunk, V head): W [64][pa] | vec [192] = e^gamma, e^{gamma_last
 * - gamma}, gamma_last | U [64][dk] | P [64][GDN_PLD]. W|vec is one copy. */
__host__ __device__ constexpr int gdn_rec_floats(int dk) { return GDN_C * gdn_pa(dk) + 192 + GDN_C * dk + GDN_C * GDN_PLD; }
/* Record per (chunk, K head), shared by its Hv/Hk V heads: Q [64][pa] | K [64][pk]. */
__host__ __device__ constexpr int gdn_qk_floats(int dk) { return GDN_C * gdn_pa(dk) + GDN_C * gdn_pk(dk); }

static size_t align256(size_t n) { return (n + 255) & ~(size_t)255; }

struct gdn_scratch {
    float *rec, *qk;
};

static gdn_scratch gdn_scratch_split(void *base, int T, int Hv, int dk)
{
    size_t nch = (size_t)qk_cdiv(T, GDN_C);
    gdn_scratch s;
    s.rec = (float *)base;
    s.qk = (float *)((char *)base + align256(nch * Hv * gdn_rec_floats(dk) * 4));
    return s;
}

/* The K-head records are sized for Hv heads: the scratch query has no Hk
 * (Hk <= Hv always). */
extern "C" size_t qk_gdn_prefill_scratch(int T, int Hv, int dk, int dv)
{
    (void)dv;
    size_t nch = (size_t)qk_cdiv(T, GDN_C);
    return align256(nch * Hv * gdn_rec_floats(dk) * 4) + align256(nch * Hv * gdn_qk_floats(dk) * 4);
}

struct bf3_a {
    uint32_t hi[4], lo[4];
};
struct bf3_b {
    uint32_t hi[2], lo[2];
};

__device__ __forceinline__ uint32_t bf3_bits(__nv_bfloat162 v)
{
    uint32_t u;
    memcpy(&u, &v, 4);
    return u;
}

/* Split two fp32 values (x0 at the lower k) into packed bf16 hi and lo pairs;
 * x - float(hi) is exact in fp32. */
__device__ __forceinline__ void bf3_split(float x0, float x1, uint32_t *hi, uint32_t *lo)
{
    __nv_bfloat162 h = __floats2bfloat162_rn(x0, x1);
    float2 hf = __bfloat1622float2(h);
    *hi = bf3_bits(h);
    *lo = bf3_bits(__floats2bfloat162_rn(x0 - hf.x, x1 - hf.y));
}

/* Fragments of mma.m16n8k16 bf16 (g = lane / 4, t = lane % 4), each register
 * a pair of consecutive k: A (16x16) a0 (g, 2t..), a1 (g+8, 2t..), a2 (g,
 * 2t+8..), a3 (g+8, 2t+8..); B (16x8) b0 (k=2t.., n=g), b1 (k=2t+8.., n=g);
 * C c0 (g, 2t), c1 (g, 2t+1), c2 (g+8, 2t), c3 (g+8, 2t+1).
 * p points at the tile's (0, 0) element. */
__device__ __forceinline__ bf3_a bf3_lda_row(const float *p, int ld) /* A(m, k) = p[m*ld + k] */
{
    int g = (threadIdx.x & 31) >> 2, t = threadIdx.x & 3;
    bf3_a a;
#pragma unroll
    for (int r = 0; r < 4; r++) {
        float2 v = *(const float2 *)(p + (g + 8 * (r & 1)) * ld + 2 * t + 8 * (r >> 1));
        bf3_split(v.x, v.y, &a.hi[r], &a.lo[r]);
    }
    return a;
}

__device__ __forceinline__ bf3_a bf3_lda_col(const float *p, int ld) /* A(m, k) = p[k*ld + m] */
{
    int g = (threadIdx.x & 31) >> 2, t = threadIdx.x & 3;
    bf3_a a;
#pragma unroll
    for (int r = 0; r < 4; r++) {
        const float *q = p + (2 * t + 8 * (r >> 1)) * ld + g + 8 * (r & 1);
        bf3_split(q[0], q[ld], &a.hi[r], &a.lo[r]);
    }
    return a;
}

__device__ __forceinline__ bf3_b bf3_ldb_row(const float *p, int ld) /* B(k, n) = p[k*ld + n] */
{
    int g = (threadIdx.x & 31) >> 2, t = threadIdx.x & 3;
    bf3_b b;
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const float *q = p + (2 * t + 8 * r) * ld + g;
        bf3_split(q[0], q[ld], &b.hi[r], &b.lo[r]);
    }
    return b;
}

__device__ __forceinline__ bf3_b bf3_ldb_col(const float *p, int ld) /* B(k, n) = p[n*ld + k] */
{
    int g = (threadIdx.x & 31) >> 2, t = threadIdx.x & 3;
    bf3_b b;
#pragma unroll
    for (int r = 0; r < 2; r++) {
        float2 v = *(const float2 *)(p + g * ld + 2 * t + 8 * r);
        bf3_split(v.x, v.y, &b.hi[r], &b.lo[r]);
    }
    return b;
}

__device__ __forceinline__ void mma_bf16(float *c, const uint32_t *a, const uint32_t *b)
{
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

/* c += a b with the 3-term split (small terms first). */
__device__ __forceinline__ void mma3(float *c, const bf3_a &a, const bf3_b &b)
{
    mma_bf16(c, a.lo, b.hi);
    mma_bf16(c, a.hi, b.lo);
    mma_bf16(c, a.hi, b.hi);
}

__device__ __forceinline__ void gdn_cp16(float *dst, const float *src)
{
    unsigned d = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(d), "l"(src));
}
__device__ __forceinline__ void gdn_cp_commit(void) { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void gdn_cp_wait_all(void) { asm volatile("cp.async.wait_group 0;\n" ::: "memory"); }

#define GDN_WARPS 8 /* prep */
/* Scan warps per block. Measured on the 27B shape at T = 8192 (H100), with
 * 3xTF32: 8 warps 1.16-1.17 ms, 16 warps 1.23-1.29 ms; an L2 prefetch of the
 * next chunk's records (1.23 ms with 8 warps) and a fully unrolled W S / Q S
 * loop (1.22 ms with 16) did not pay either. With the bf16 split (scan
 * 0.94 ms, ~7.4 us a step): 16 warps 1.02 ms; operands stored pre-split by
 * prep ({hi, lo} pairs in place of the fp32 pair, no conversion in the scan)
 * 0.99 ms for the A operands alone and 1.12 ms with the B operands (state,
 * V') written pre-split through a lane shuffle as well; loading only the
 * lower-triangular 16-column blocks of P 0.96 ms. The scan step is not bound
 * by its conversion work. Overridable only to measure variants (16 works for
 * dk >= 64). */
#ifndef GDN_SCAN_W
#define GDN_SCAN_W 8
#endif
#define GDN_SCAN_WARPS(dk) ((dk) >= 64 ? GDN_SCAN_W : 8)

template <int DK>
__global__ void __launch_bounds__(GDN_WARPS * 32, 2) k_gdn_prep(const float *c, int ld_c, const float *beta,
                                                                const float *g, int T, int Hk, int Hv, gdn_scratch s)
{
    constexpr int PA = gdn_pa(DK), PK = gdn_pk(DK), PX = 2 * DK + 4, PP = GDN_PLD, NT = GDN_WARPS * 32;
    constexpr int NTW = 2 * DK / GDN_WARPS / 8; /* n-tiles of X per warp */
    static_assert(NTW >= 1 && 2 * DK == NTW * 8 * GDN_WARPS, "X columns split evenly over the warps");
    extern __shared__ float4 sm4[];
    float *sm = (float *)sm4;
    float *Ks = sm, *Qs = sm + GDN_C * PA; /* [64][PA] each, until the right-hand side replaces them */
    float *X = sm;                         /* [64][PX]: [beta V | beta e^gamma K], solved in place */
    float *Am = sm + 2 * GDN_C * PA;       /* [64][PP] strictly lower A (after K|Q, which outsize X) */
    float *Li = Am + GDN_C * PP;           /* [64][PP] inverses of the 16x16 diagonal blocks of I + A */
    float *gam = Li + GDN_C * PP, *bet = gam + GDN_C;
    const int ch = blockIdx.x, h = blockIdx.y, grp = Hv / Hk, kh = h / grp, tid = threadIdx.x;
    const int lane = tid & 31, w = tid >> 5, gq = lane >> 2, tq = lane & 3;
    const int t0 = ch * GDN_C;
    const int qoff = kh * DK, koff = Hk * DK + kh * DK, voff = 2 * Hk * DK + h * DK;
    float *rec = s.rec + ((int64_t)ch * Hv + h) * gdn_rec_floats(DK);
    float *rW = rec, *rvec = rW + GDN_C * PA, *rU = rvec + 192, *rP = rU + GDN_C * DK;
    float *rQ = s.qk + ((int64_t)ch * Hk + kh) * gdn_qk_floats(DK), *rK = rQ + GDN_C * PA;

    /* The engine's rows are 16-byte aligned: then all K/Q loads of a thread
     * are float4 and in flight together (the scalar loop was latency-bound);
     * V, needed after the K K^T products, is pulled into L2 meanwhile. */
    const bool vec4 = (ld_c & 3) == 0 && ((uintptr_t)c & 15) == 0;
    if (tid < GDN_C * DK / 32 && t0 + tid / (DK / 32) < T)
        qk_prefetch_l2(c + (int64_t)(t0 + tid / (DK / 32)) * ld_c + voff + 32 * (tid % (DK / 32)));
    if (vec4) {
        constexpr int NV = GDN_C * DK / 4 / NT;
        float4 kv[NV], qv[NV];
#pragma unroll
        for (int m = 0; m < NV; m++) {
            int e = tid + NT * m, i = e / (DK / 4), r = 4 * (e % (DK / 4)), t = t0 + i;
            const float *row = c + (int64_t)t * ld_c;
            kv[m] = t < T ? *(const float4 *)(row + koff + r) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            qv[m] = t < T ? *(const float4 *)(row + qoff + r) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        }
#pragma unroll
        for (int m = 0; m < NV; m++) {
            int e = tid + NT * m, i = e / (DK / 4), r = 4 * (e % (DK / 4));
            *(float4 *)(Ks + i * PA + r) = kv[m];
            *(float4 *)(Qs + i * PA + r) = qv[m];
        }
    } else {
        for (int e = tid; e < GDN_C * DK; e += NT) {
            int i = e / DK, r = e % DK, t = t0 + i;
            bool ok = t < T;
            Ks[i * PA + r] = ok ? c[(int64_t)t * ld_c + koff + r] : 0.0f;
            Qs[i * PA + r] = ok ? c[(int64_t)t * ld_c + qoff + r] : 0.0f;
        }
    }
    if (tid < 32) {
        /* Inclusive scan of g over the chunk by one warp (two values per lane);
         * padded tokens have g = 0, so gamma stays flat after the last one. */
        int i0 = 2 * tid, i1 = i0 + 1;
        float g0 = t0 + i0 < T ? g[(int64_t)(t0 + i0) * Hv + h] : 0.0f;
        float g1 = t0 + i1 < T ? g[(int64_t)(t0 + i1) * Hv + h] : 0.0f;
        float sum = g0 + g1;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            float v = __shfl_up_sync(0xffffffffu, sum, o);
            if (tid >= o) sum += v;
        }
        gam[i1] = sum;
        gam[i0] = sum - g1;
        bet[i0] = t0 + i0 < T ? beta[(int64_t)(t0 + i0) * Hv + h] : 0.0f;
        bet[i1] = t0 + i1 < T ? beta[(int64_t)(t0 + i1) * Hv + h] : 0.0f;
    }
    __syncthreads();

    /* G = K K^T and H = Q K^T: warp w takes rows 16 (w%4).. and column
     * tiles 4 (w/4)..+3 of both; tiles wholly above the diagonal are skipped.
     * (Dealing the 20 lower tiles evenly over the SM sub-partitions measured
     * no faster: prep 0.78 ms either way at T = 8192.) */
    {
        const int m0 = 16 * (w & 3), nb = 4 * (w >> 2);
        float G[4][4], H[4][4];
#pragma unroll
        for (int n = 0; n < 4; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) G[n][e] = H[n][e] = 0.0f;
#pragma unroll 2
        for (int ks = 0; ks < DK / 16; ks++) {
            bf3_a ak = bf3_lda_row(Ks + m0 * PA + 16 * ks, PA), aq = bf3_lda_row(Qs + m0 * PA + 16 * ks, PA);
#pragma unroll
            for (int n = 0; n < 4; n++) {
                if (8 * (nb + n) > m0 + 15) continue;
                bf3_b b = bf3_ldb_col(Ks + 8 * (nb + n) * PA + 16 * ks, PA); /* B(k=r, n=j) = K[j][r] */
                mma3(G[n], ak, b);
                mma3(H[n], aq, b);
            }
        }
#pragma unroll
        for (int n = 0; n < 4; n++)
#pragma unroll
            for (int hf = 0; hf < 2; hf++) {
                int i = m0 + gq + 8 * hf, j = 8 * (nb + n) + 2 * tq;
                float a2[2], p2[2];
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    int jj = j + e;
                    float d = i >= jj ? expf(gam[i] - gam[jj]) : 0.0f; /* exponent <= 0 only */
                    p2[e] = H[n][2 * hf + e] * d;
                    a2[e] = i > jj ? bet[i] * G[n][2 * hf + e] * d : 0.0f;
                }
                *(float2 *)(Am + i * PP + j) = make_float2(a2[0], a2[1]);
                *(float2 *)(rP + i * PP + j) = make_float2(p2[0], p2[1]);
            }
    }
    const float glast = gam[GDN_C - 1];
    if (h % grp == 0) /* one V head of the group writes the shared Q|K record */
        for (int e = tid; e < GDN_C * DK; e += NT) {
            int i = e / DK, r = e % DK;
            rQ[i * PA + r] = Qs[i * PA + r];
            rK[i * PK + r] = Ks[i * PA + r];
        }
    if (tid < GDN_C) {
        rvec[tid] = expf(gam[tid]);
        rvec[GDN_C + tid] = expf(glast - gam[tid]);
        rvec[2 * GDN_C + tid] = tid == 0 ? glast : 0.0f;
    }
    /* the K half of the right-hand side goes through registers: X overwrites K|Q */
    constexpr int NKR = GDN_C * DK / NT;
    float kr[NKR];
#pragma unroll
    for (int m = 0; m < NKR; m++) {
        int e = tid + NT * m, i = e / DK, r = e % DK;
        kr[m] = bet[i] * expf(gam[i]) * Ks[i * PA + r];
    }
    __syncthreads();
#pragma unroll
    for (int m = 0; m < NKR; m++) {
        int e = tid + NT * m, i = e / DK, r = e % DK;
        X[i * PX + DK + r] = kr[m];
    }
    if (vec4) {
        constexpr int NV = GDN_C * DK / 4 / NT;
        float4 vv[NV];
#pragma unroll
        for (int m = 0; m < NV; m++) {
            int e = tid + NT * m, i = e / (DK / 4), r = 4 * (e % (DK / 4)), t = t0 + i;
            vv[m] = t < T ? *(const float4 *)(c + (int64_t)t * ld_c + voff + r) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        }
#pragma unroll
        for (int m = 0; m < NV; m++) {
            int e = tid + NT * m, i = e / (DK / 4), r = 4 * (e % (DK / 4));
            float b = bet[i];
            *(float4 *)(X + i * PX + r) = make_float4(b * vv[m].x, b * vv[m].y, b * vv[m].z, b * vv[m].w);
        }
    } else {
        for (int e = tid; e < GDN_C * DK; e += NT) {
            int i = e / DK, r = e % DK, t = t0 + i;
            X[i * PX + r] = t < T ? bet[i] * c[(int64_t)t * ld_c + voff + r] : 0.0f;
        }
    }
    if (tid < GDN_C) {
        /* (I + A_bb)^{-1} of the four 16x16 diagonal blocks, one column per thread */
        const int base = 16 * (tid >> 4), col = tid & 15;
        float x[16];
#pragma unroll
        for (int i = 0; i < 16; i++) {
            float r = i == col ? 1.0f : 0.0f;
#pragma unroll
            for (int j = 0; j < i; j++) r = fmaf(-Am[(base + i) * PP + base + j], x[j], r);
            x[i] = r;
        }
#pragma unroll
        for (int i = 0; i < 16; i++) Li[(base + i) * PP + base + col] = x[i];
    }
    __syncthreads();

    /* Blockwise forward substitution on this warp's columns of X. */
    const int c0 = w * NTW * 8;
#pragma unroll
    for (int b = 0; b < 4; b++) {
        const int r0 = 16 * b;
        float acc[NTW][4];
#pragma unroll
        for (int n = 0; n < NTW; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[n][e] = 0.0f;
#pragma unroll
        for (int ks = 0; ks < b; ks++) {
            bf3_a a = bf3_lda_row(Am + r0 * PP + 16 * ks, PP);
#pragma unroll
            for (int n = 0; n < NTW; n++) mma3(acc[n], a, bf3_ldb_row(X + 16 * ks * PX + c0 + 8 * n, PX));
        }
#pragma unroll
        for (int n = 0; n < NTW; n++)
#pragma unroll
            for (int hf = 0; hf < 2; hf++) {
                float2 *px = (float2 *)(X + (r0 + gq + 8 * hf) * PX + c0 + 8 * n + 2 * tq);
                float2 v = *px;
                v.x -= acc[n][2 * hf];
                v.y -= acc[n][2 * hf + 1];
                *px = v;
            }
        __syncwarp();
#pragma unroll
        for (int n = 0; n < NTW; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[n][e] = 0.0f;
        {
            bf3_a a = bf3_lda_row(Li + r0 * PP + r0, PP);
#pragma unroll
            for (int n = 0; n < NTW; n++) mma3(acc[n], a, bf3_ldb_row(X + r0 * PX + c0 + 8 * n, PX));
        }
        __syncwarp();
#pragma unroll
        for (int n = 0; n < NTW; n++)
#pragma unroll
            for (int hf = 0; hf < 2; hf++) {
                int row = r0 + gq + 8 * hf, col = c0 + 8 * n + 2 * tq;
                float2 v = make_float2(acc[n][2 * hf], acc[n][2 * hf + 1]);
                *(float2 *)(X + row * PX + col) = v;
                if (col < DK) *(float2 *)(rU + row * DK + col) = v;
                else *(float2 *)(rW + row * PA + col - DK) = v;
            }
        __syncwarp();
    }
}

template <int DK>
__device__ __forceinline__ void gdn_scan_load_wq(const gdn_scratch &s, int ch, int h, int kh, int Hv, int Hk, int j0,
                                                 float *Ws, float *Qs, float *Us)
{
    constexpr int PA = gdn_pa(DK), BV = DK < 64 ? DK : 64, PV = BV + 4, NT = GDN_SCAN_WARPS(DK) * 32;
    const float *rec = s.rec + ((int64_t)ch * Hv + h) * gdn_rec_floats(DK);
    const float *rU = rec + GDN_C * PA + 192;
    const float *rQ = s.qk + ((int64_t)ch * Hk + kh) * gdn_qk_floats(DK);
    for (int e = threadIdx.x; e < (GDN_C * PA + 192) / 4; e += NT) gdn_cp16(Ws + 4 * e, rec + 4 * e);
    for (int e = threadIdx.x; e < GDN_C * PA / 4; e += NT) gdn_cp16(Qs + 4 * e, rQ + 4 * e);
    for (int e = threadIdx.x; e < GDN_C * BV / 4; e += NT) {
        int i = e / (BV / 4), c4 = e % (BV / 4);
        gdn_cp16(Us + i * PV + 4 * c4, rU + i * DK + j0 + 4 * c4);
    }
    gdn_cp_commit();
}

template <int DK>
__device__ __forceinline__ void gdn_scan_load_kp(const gdn_scratch &s, int ch, int h, int kh, int Hv, int Hk,
                                                 float *Kt, float *Ps)
{
    constexpr int PA = gdn_pa(DK), PK = gdn_pk(DK), NT = GDN_SCAN_WARPS(DK) * 32;
    const float *rP = s.rec + ((int64_t)ch * Hv + h) * gdn_rec_floats(DK) + GDN_C * PA + 192 + GDN_C * DK;
    const float *rK = s.qk + ((int64_t)ch * Hk + kh) * gdn_qk_floats(DK) + GDN_C * PA;
    for (int e = threadIdx.x; e < GDN_C * GDN_PLD / 4; e += NT) gdn_cp16(Ps + 4 * e, rP + 4 * e);
    for (int e = threadIdx.x; e < GDN_C * PK / 4; e += NT) gdn_cp16(Kt + 4 * e, rK + 4 * e);
    gdn_cp_commit();
}

template <int DK>
__global__ void __launch_bounds__(GDN_SCAN_WARPS(DK) * 32, 1) k_gdn_scan(int T, int Hk, int Hv, gdn_scratch s, float *state,
                                                                float *out)
{
    constexpr int PA = gdn_pa(DK), PK = gdn_pk(DK), PP = GDN_PLD, BV = DK < 64 ? DK : 64, PV = BV + 4;
    constexpr int NW = GDN_SCAN_WARPS(DK), NTW = BV / 8 / (NW / 4); /* n-tiles per warp of the 64-row products */
    constexpr int MTS = DK / 16, WPM = NW / MTS, NSW = BV / 8 / WPM; /* state tiles per warp */
    static_assert(NTW >= 1 && NTW * 8 * (NW / 4) == BV && NSW >= 1 && MTS * WPM == NW && NSW * WPM * 8 == BV,
                  "tile split");
    extern __shared__ float4 sm4[];
    float *sm = (float *)sm4;
    float *Ws = sm;                          /* [64][PA] W, then vec [192] */
    float *vec = Ws + GDN_C * PA;
    float *Qs = vec + 192;                   /* [64][PA] */
    float *Us = Qs + GDN_C * PA;             /* [64][PV] this block's columns of U */
    float *Kt = Us + GDN_C * PV;             /* [64][PK] */
    float *Ps = Kt + GDN_C * PK;             /* [64][PP] */
    float *Ss = Ps + GDN_C * PP;             /* [DK][PV] state slice (B operand) */
    float *Vp = Ss + DK * PV;                /* [64][PV] V' */
    float *Vs = Vp + GDN_C * PV;             /* [64][PV] diag(e^{gamma_last - gamma}) V' */
    const int h = blockIdx.y, j0 = blockIdx.x * BV, kh = h / (Hv / Hk);
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, gq = lane >> 2, tq = lane & 3;
    const int ms = w / WPM, ns0 = (w % WPM) * NSW; /* this warp's state tiles: rows 16 ms.., n-tiles ns0.. */
    /* this warp's tiles of X, Y, O; the row tile is rotated so that each SM
     * sub-partition (warps w, w+4, ...) gets every row tile: P V' costs
     * (mt + 1) k-steps and would otherwise pile up on one of them */
    const int mt = (w + (w >> 2)) & 3, n0 = (w >> 2) * NTW;
    float *Sg = state + (int64_t)h * DK * DK;
    float Sacc[NSW][4];
#pragma unroll
    for (int n = 0; n < NSW; n++)
#pragma unroll
        for (int hf = 0; hf < 2; hf++) {
            int row = 16 * ms + gq + 8 * hf, col = 8 * (ns0 + n) + 2 * tq;
            float2 v = *(const float2 *)(Sg + row * DK + j0 + col);
            Sacc[n][2 * hf] = v.x;
            Sacc[n][2 * hf + 1] = v.y;
            *(float2 *)(Ss + row * PV + col) = v;
        }
    const int nch = qk_cdiv(T, GDN_C);
    gdn_scan_load_wq<DK>(s, 0, h, kh, Hv, Hk, j0, Ws, Qs, Us);
    for (int ch = 0; ch < nch; ch++) {
        const int t0 = ch * GDN_C, nvalid = min(GDN_C, T - t0);
        gdn_cp_wait_all();
        __syncthreads(); /* W|vec|Q|U of this chunk and the state slice are in shared memory */
        gdn_scan_load_kp<DK>(s, ch, h, kh, Hv, Hk, Kt, Ps);
        float X[NTW][4], Y[NTW][4];
#pragma unroll
        for (int n = 0; n < NTW; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) X[n][e] = Y[n][e] = 0.0f;
#pragma unroll 4
        for (int ks = 0; ks < DK / 16; ks++) {
            bf3_a aw = bf3_lda_row(Ws + 16 * mt * PA + 16 * ks, PA), aq = bf3_lda_row(Qs + 16 * mt * PA + 16 * ks, PA);
#pragma unroll
            for (int n = 0; n < NTW; n++) {
                bf3_b b = bf3_ldb_row(Ss + 16 * ks * PV + 8 * (n0 + n), PV);
                mma3(X[n], aw, b);
                mma3(Y[n], aq, b);
            }
        }
        const float el = expf(vec[2 * GDN_C]); /* read before the next chunk's W|vec lands */
#pragma unroll
        for (int n = 0; n < NTW; n++)
#pragma unroll
            for (int hf = 0; hf < 2; hf++) {
                int row = 16 * mt + gq + 8 * hf, col = 8 * (n0 + n) + 2 * tq;
                float2 u = *(const float2 *)(Us + row * PV + col);
                float vx = u.x - X[n][2 * hf], vy = u.y - X[n][2 * hf + 1], ed = vec[GDN_C + row], eg = vec[row];
                *(float2 *)(Vp + row * PV + col) = make_float2(vx, vy);
                *(float2 *)(Vs + row * PV + col) = make_float2(vx * ed, vy * ed);
                Y[n][2 * hf] *= eg;
                Y[n][2 * hf + 1] *= eg;
            }
        gdn_cp_wait_all();
        __syncthreads(); /* V' complete; P|K of this chunk landed; W|Q|U free */
        if (ch + 1 < nch) gdn_scan_load_wq<DK>(s, ch + 1, h, kh, Hv, Hk, j0, Ws, Qs, Us);
        /* O = diag(e^gamma) Q S + P V' (P is lower triangular: k < 16 (mt+1)) */
        for (int ks = 0; ks <= mt; ks++) {
            bf3_a ap = bf3_lda_row(Ps + 16 * mt * PP + 16 * ks, PP);
#pragma unroll
            for (int n = 0; n < NTW; n++) mma3(Y[n], ap, bf3_ldb_row(Vp + 16 * ks * PV + 8 * (n0 + n), PV));
        }
#pragma unroll
        for (int n = 0; n < NTW; n++)
#pragma unroll
            for (int hf = 0; hf < 2; hf++) {
                int row = 16 * mt + gq + 8 * hf, col = 8 * (n0 + n) + 2 * tq;
                if (row < nvalid)
                    *(float2 *)(out + ((int64_t)(t0 + row) * Hv + h) * DK + j0 + col) =
                        make_float2(Y[n][2 * hf], Y[n][2 * hf + 1]);
            }
        /* S = e^{gamma_last} S + K^T diag(e^{gamma_last - gamma}) V' */
#pragma unroll
        for (int n = 0; n < NSW; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) Sacc[n][e] *= el;
#pragma unroll 2
        for (int ks = 0; ks < GDN_C / 16; ks++) {
            bf3_a ak = bf3_lda_col(Kt + 16 * ks * PK + 16 * ms, PK); /* A(m=r, k=i) = K[i][r] */
#pragma unroll
            for (int n = 0; n < NSW; n++) mma3(Sacc[n], ak, bf3_ldb_row(Vs + 16 * ks * PV + 8 * (ns0 + n), PV));
        }
#pragma unroll
        for (int n = 0; n < NSW; n++)
#pragma unroll
            for (int hf = 0; hf < 2; hf++) {
                int row = 16 * ms + gq + 8 * hf, col = 8 * (ns0 + n) + 2 * tq;
                *(float2 *)(Ss + row * PV + col) = make_float2(Sacc[n][2 * hf], Sacc[n][2 * hf + 1]);
            }
    }
#pragma unroll
    for (int n = 0; n < NSW; n++)
#pragma unroll
        for (int hf = 0; hf < 2; hf++) {
            int row = 16 * ms + gq + 8 * hf, col = 8 * (ns0 + n) + 2 * tq;
            *(float2 *)(Sg + row * DK + j0 + col) = make_float2(Sacc[n][2 * hf], Sacc[n][2 * hf + 1]);
        }
}

static size_t gdn_sm_prep(int dk) { return (size_t)(2 * GDN_C * gdn_pa(dk) + 2 * GDN_C * GDN_PLD + 2 * GDN_C) * 4; }
static size_t gdn_sm_scan(int dk)
{
    int bv = dk < 64 ? dk : 64, pv = bv + 4;
    return (size_t)(2 * GDN_C * gdn_pa(dk) + 192 + GDN_C * pv + GDN_C * gdn_pk(dk) + GDN_C * GDN_PLD + dk * pv +
                    2 * GDN_C * pv) * 4;
}

template <int DK>
static int gdn_prep_dk(const float *c, int ld_c, const float *beta, const float *g, int T, int Hk, int Hv,
                       void *scratch, qk_stream st)
{
    gdn_scratch s = gdn_scratch_split(scratch, T, Hv, DK);
    cudaError_t e =
        cudaFuncSetAttribute(k_gdn_prep<DK>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)gdn_sm_prep(DK));
    if (e != cudaSuccess) return (int)e;
    k_gdn_prep<DK><<<dim3(qk_cdiv(T, GDN_C), Hv), GDN_WARPS * 32, gdn_sm_prep(DK), st>>>(c, ld_c, beta, g, T, Hk, Hv, s);
    return qk_launch_status();
}

template <int DK>
static int gdn_scan_dk(float *state, int T, int Hk, int Hv, void *scratch, float *out, qk_stream st)
{
    const int BV = DK < 64 ? DK : 64;
    gdn_scratch s = gdn_scratch_split(scratch, T, Hv, DK);
    cudaError_t e =
        cudaFuncSetAttribute(k_gdn_scan<DK>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)gdn_sm_scan(DK));
    if (e != cudaSuccess) return (int)e;
    k_gdn_scan<DK><<<dim3(DK / BV, Hv), GDN_SCAN_WARPS(DK) * 32, gdn_sm_scan(DK), st>>>(T, Hk, Hv, s, state, out);
    return qk_launch_status();
}

extern "C" int qk_gdn_prefill_prep(const float *c, int ld_c, const float *beta, const float *g, int T, int Hk, int Hv,
                                   int dk, int dv, void *scratch, qk_stream st)
{
    if (T <= 0) return 0;
    if (dk != dv || Hk <= 0 || Hv % Hk) return (int)cudaErrorInvalidValue;
    switch (dk) {
    case 32: return gdn_prep_dk<32>(c, ld_c, beta, g, T, Hk, Hv, scratch, st);
    case 64: return gdn_prep_dk<64>(c, ld_c, beta, g, T, Hk, Hv, scratch, st);
    case 128: return gdn_prep_dk<128>(c, ld_c, beta, g, T, Hk, Hv, scratch, st);
    default: return (int)cudaErrorInvalidValue;
    }
}

extern "C" int qk_gdn_prefill_scan(float *state, int T, int Hk, int Hv, int dk, int dv, void *scratch, float *out,
                                   qk_stream st)
{
    if (T <= 0) return 0;
    if (dk != dv || Hk <= 0 || Hv % Hk) return (int)cudaErrorInvalidValue;
    switch (dk) {
    case 32: return gdn_scan_dk<32>(state, T, Hk, Hv, scratch, out, st);
    case 64: return gdn_scan_dk<64>(state, T, Hk, Hv, scratch, out, st);
    case 128: return gdn_scan_dk<128>(state, T, Hk, Hv, scratch, out, st);
    default: return (int)cudaErrorInvalidValue;
    }
}

extern "C" int qk_gdn_prefill(const float *c, int ld_c, const float *beta, const float *g, float *state, int T,
                              int Hk, int Hv, int dk, int dv, void *scratch, float *out, qk_stream st)
{
    int rc = qk_gdn_prefill_prep(c, ld_c, beta, g, T, Hk, Hv, dk, dv, scratch, st);
    return rc ? rc : qk_gdn_prefill_scan(state, T, Hk, Hv, dk, dv, scratch, out, st);
}

/* ---- fused single-token step: one block per V head, one thread per state
 * column (kept in registers), gates + L2 norms + delta rule + output norm. */
template <int DK>
__global__ void __launch_bounds__(DK) k_gdn_step(const float *c, const float *b, const float *a, const float *nexpa,
                                                 const float *dt_bias, const float *z, const float *norm_w, float eps,
                                                 float *state, int Hk, int Hv, uint16_t *out)
{
    qk_pdl_trigger(); /* the next GEMV may land early (common.cuh) */
    const int DV = DK;
    __shared__ float qs[DK], ks[DK], red[33];
    int h = blockIdx.x, j = threadIdx.x, kh = h / (Hv / Hk);
    float *Sg = state + (int64_t)h * DK * DV;
    /* The state column comes in before the PDL wait, while the in-projection
     * GEMV before this kernel still runs: only this kernel (and the prefill
     * scan) writes the state, one decode step or more earlier, with plain
     * launches (the sampling, the embedding) in between that waited for
     * everything before them; everything else it reads is that GEMV's
     * output. */
    float S[DK];
#pragma unroll
    for (int r = 0; r < DK; r++) S[r] = Sg[r * DV + j];
    qk_pdl_wait();
    float q = c[kh * DK + j], k = c[Hk * DK + kh * DK + j], v = c[2 * Hk * DK + h * DV + j];
    float qq = qk_block_sum(q * q, red);
    float kk = qk_block_sum(k * k, red);
    qs[j] = q * (1.0f / sqrtf(qq + 1e-6f)) * (1.0f / sqrtf((float)DK));
    ks[j] = k * (1.0f / sqrtf(kk + 1e-6f));
    float beta, g;
    gdn_gate(b[h], a[h], nexpa[h], dt_bias[h], &beta, &g);
    __syncthreads();
    float decay = expf(g);
    float sk = 0.0f;
#pragma unroll
    for (int r = 0; r < DK; r++) {
        S[r] *= decay;
        sk = fmaf(S[r], ks[r], sk);
    }
    float u = beta * (v - sk);
    float o = 0.0f;
#pragma unroll
    for (int r = 0; r < DK; r++) {
        S[r] = fmaf(ks[r], u, S[r]);
        o = fmaf(S[r], qs[r], o);
        Sg[r * DV + j] = S[r];
    }
    float oo = qk_block_sum(o * o, red);
    float y = norm_w[j] * o * rsqrtf(oo / (float)DV + eps) * qk_silu(z[h * DV + j]);
    out[h * DV + j] = qk_to_bf(y);
}

template <int DK>
static int gdn_step_launch(const float *c, const float *b, const float *a, const float *nexpa, const float *dt_bias,
                           const float *z, const float *norm_w, float eps, float *state, int Hk, int Hv, uint16_t *out,
                           qk_stream st)
{
    cudaLaunchConfig_t cfg;
    cudaLaunchAttribute at[1];
    qk_launch_cfg(&cfg, at, dim3((unsigned)Hv), dim3(DK), st, qk_pdl_ok(st));
    return (int)cudaLaunchKernelEx(&cfg, k_gdn_step<DK>, c, b, a, nexpa, dt_bias, z, norm_w, eps, state, Hk, Hv, out);
}

extern "C" int qk_gdn_step(const float *c, const float *b, const float *a, const float *nexpa, const float *dt_bias,
                           const float *z, const float *norm_w, float eps, float *state, int Hk, int Hv, int dk,
                           int dv, uint16_t *out, qk_stream st)
{
    if (dk != dv || Hk <= 0 || Hv % Hk) return (int)cudaErrorInvalidValue;
    switch (dk) {
    case 32: return gdn_step_launch<32>(c, b, a, nexpa, dt_bias, z, norm_w, eps, state, Hk, Hv, out, st);
    case 64: return gdn_step_launch<64>(c, b, a, nexpa, dt_bias, z, norm_w, eps, state, Hk, Hv, out, st);
    case 128: return gdn_step_launch<128>(c, b, a, nexpa, dt_bias, z, norm_w, eps, state, Hk, Hv, out, st);
    default: return (int)cudaErrorInvalidValue;
    }
}
