/* gdn.cu — Gated DeltaNet: conv + SiLU, gates, L2 norms, the chunked prefill
 * (chunk 64, qwen35-model.md §3.2) and the fused single-token step.
 *
 * Chunked prefill, two launches:
 *   prep (parallel over chunks x V heads): gamma = cumsum(g); A and P from
 *     K K^T / Q K^T with e^{gamma_i - gamma_j} (i >= j, so every exponent is
 *     <= 0); U = (I+A)^{-1} diag(beta) V and W = (I+A)^{-1} diag(beta e^gamma) K
 *     by forward substitution, one thread per column (no division by e^gamma);
 *   scan (sequential over chunks, parallel over V heads and state columns):
 *     the state's columns S[:, j] are independent, so each thread keeps one
 *     column in registers: V' = U - W S; O = diag(e^gamma) Q S + P V';
 *     S = e^{gamma_last} S + (diag(e^{gamma_last - gamma}) K)^T V'. */
#include "common.cuh"

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

extern "C" int qk_conv_silu(const float *x, int ld_x, const float *w, float *state, int T, int C, float *out,
                            qk_stream st)
{
    if (T <= 0) return 0;
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

/* ---- chunked prefill ---- */

static size_t align256(size_t n) { return (n + 255) & ~(size_t)255; }

/* Scratch: U [Tp][Hv][dv] and one record per (chunk, V head) holding what
 * the scan needs of that chunk, laid out exactly as the scan's shared memory
 * so it is copied with 16-byte loads:
 *   W [64][dk] | Q [64][dk] | Kd [64][dk] = K e^{gamma_last - gamma} |
 *   P [64][GDN_PLD] | eg [64] = e^{gamma} | glast, padding [64]. */
#define GDN_PLD 68 /* P row pitch: 68 = 4 mod 32 banks, so rows 4m+q land in distinct banks */
__host__ __device__ static inline size_t gdn_rec_floats(int dk)
{
    return (size_t)3 * GDN_C * dk + GDN_C * GDN_PLD + 2 * GDN_C;
}

struct gdn_scratch {
    float *U, *rec;
};

static gdn_scratch gdn_scratch_split(void *base, int T, int Hv, int dv)
{
    size_t Tp = (size_t)qk_cdiv(T, GDN_C) * GDN_C;
    char *p = (char *)base;
    gdn_scratch s;
    s.U = (float *)p;
    p += align256(Tp * Hv * dv * 4);
    s.rec = (float *)p;
    return s;
}

extern "C" size_t qk_gdn_prefill_scratch(int T, int Hv, int dk, int dv)
{
    size_t Tp = (size_t)qk_cdiv(T, GDN_C) * GDN_C, nch = Tp / GDN_C;
    return align256(Tp * Hv * dv * 4) + align256(nch * Hv * gdn_rec_floats(dk) * 4);
}

template <int DK>
__global__ void __launch_bounds__(256) k_gdn_prep(const float *c, int ld_c, const float *beta, const float *g, int T,
                                                  int Hk, int Hv, gdn_scratch s)
{
    const int DV = DK;
    extern __shared__ float sm[];
    float *Ks = sm;                       /* [64][DK+1] */
    float *Qs = Ks + GDN_C * (DK + 1);    /* [64][DK+1] */
    float *A = Qs + GDN_C * (DK + 1);     /* [64][65] */
    float *gam = A + GDN_C * (GDN_C + 1); /* [64] */
    float *bet = gam + GDN_C;             /* [64] */
    int ch = blockIdx.x, h = blockIdx.y, kh = h / (Hv / Hk), tid = threadIdx.x;
    int t0 = ch * GDN_C;
    int qoff = kh * DK, koff = Hk * DK + kh * DK, voff = 2 * Hk * DK + h * DV;
    float *rec = s.rec + ((int64_t)ch * Hv + h) * gdn_rec_floats(DK);
    float *rW = rec, *rQ = rW + GDN_C * DK, *rK = rQ + GDN_C * DK, *rP = rK + GDN_C * DK, *reg = rP + GDN_C * GDN_PLD;

    for (int e = tid; e < GDN_C * DK; e += blockDim.x) {
        int i = e / DK, r = e % DK, t = t0 + i;
        bool ok = t < T;
        Ks[i * (DK + 1) + r] = ok ? c[(int64_t)t * ld_c + koff + r] : 0.0f;
        Qs[i * (DK + 1) + r] = ok ? c[(int64_t)t * ld_c + qoff + r] : 0.0f;
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
    const float glast = gam[GDN_C - 1];
    for (int e = tid; e < GDN_C * GDN_C; e += blockDim.x) {
        int i = e / GDN_C, j = e % GDN_C;
        float a = 0.0f, p = 0.0f;
        if (i >= j) {
            float kk = 0.0f, qk = 0.0f;
#pragma unroll 8
            for (int r = 0; r < DK; r++) {
                float kj = Ks[j * (DK + 1) + r];
                kk = fmaf(Ks[i * (DK + 1) + r], kj, kk);
                qk = fmaf(Qs[i * (DK + 1) + r], kj, qk);
            }
            float d = expf(gam[i] - gam[j]);
            p = qk * d;
            if (i > j) a = bet[i] * kk * d;
        }
        A[i * (GDN_C + 1) + j] = a;
        rP[i * GDN_PLD + j] = p;
    }
    for (int e = tid; e < GDN_C * DK; e += blockDim.x) {
        int i = e / DK, r = e % DK;
        rQ[e] = Qs[i * (DK + 1) + r];
        rK[e] = Ks[i * (DK + 1) + r] * expf(glast - gam[i]);
    }
    if (tid < GDN_C) {
        reg[tid] = expf(gam[tid]);
        reg[GDN_C + tid] = tid == 0 ? glast : 0.0f;
        for (int p = GDN_C; p < GDN_PLD; p++) rP[tid * GDN_PLD + p] = 0.0f; /* pitch padding */
    }
    __syncthreads();
    /* Forward substitution, one column per thread: columns [0, DV) of V
     * give U, columns [DV, DV+DK) of K give W. */
    if (tid >= DV + DK) return;
    bool isv = tid < DV;
    int col = isv ? tid : tid - DV;
    float x[GDN_C];
#pragma unroll
    for (int i = 0; i < GDN_C; i++) {
        int t = t0 + i;
        float r;
        if (isv) r = t < T ? bet[i] * c[(int64_t)t * ld_c + voff + col] : 0.0f;
        else r = bet[i] * expf(gam[i]) * Ks[i * (DK + 1) + col];
#pragma unroll
        for (int j = 0; j < i; j++) r = fmaf(-A[i * (GDN_C + 1) + j], x[j], r);
        x[i] = r;
    }
    if (isv) {
#pragma unroll
        for (int i = 0; i < GDN_C; i++) s.U[((int64_t)(t0 + i) * Hv + h) * DV + col] = x[i];
    } else {
#pragma unroll
        for (int i = 0; i < GDN_C; i++) rW[i * DK + col] = x[i];
    }
}

/* Scan: COLS state columns per block. A thread owns two adjacent columns and
 * a quarter of their rows, interleaved as float4 groups q, q+4, q+8, ... so
 * that the four quarter-threads of a column pair read four consecutive
 * 16-byte words (no bank conflicts), and every W/Q/K value loaded from
 * shared memory feeds two columns. The dot products over dk are summed
 * across the quarter-threads (adjacent lanes) with shuffles. Per chunk: the
 * record is copied to shared memory with 16-byte loads; then V' = U - W S
 * and Q S for all 64 rows (independent), O = diag(eg) Q S + P V' (independent
 * rows), and the state update. */
#define SCAN_Q 4

template <int DK>
__global__ void __launch_bounds__((DK < 64 ? DK : 64) / 2 * SCAN_Q) k_gdn_scan(int T, int Hv, gdn_scratch s,
                                                                              float *state, float *out)
{
    const int DV = DK, NF = DK / 4 / SCAN_Q, COLS = DK < 64 ? DK : 64, NT = COLS / 2 * SCAN_Q;
    const int REC = (int)gdn_rec_floats(DK);
    extern __shared__ float4 sm4[];
    float *sm = (float *)sm4;
    float *Ws = sm, *Qs = Ws + GDN_C * DK, *Kd = Qs + GDN_C * DK, *Ps = Kd + GDN_C * DK, *eg = Ps + GDN_C * GDN_PLD;
    float *Us = sm + REC;               /* [64][COLS] */
    float *Vp = Us + GDN_C * COLS;      /* [64][COLS] */
    float *Os = Vp + GDN_C * COLS;      /* [64][COLS] */
    int h = blockIdx.x, tid = threadIdx.x;
    int cp = tid / SCAN_Q, q = tid % SCAN_Q;
    int j0 = blockIdx.y * COLS, c0 = 2 * cp, j = j0 + c0;
    /* S0/S1: columns j, j+1; element 4k+e is row 4*(q + SCAN_Q*k) + e */
    float S0[4 * NF], S1[4 * NF];
    float *Sg = state + (int64_t)h * DK * DV;
#pragma unroll
    for (int k = 0; k < NF; k++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            int r = 4 * (q + SCAN_Q * k) + e;
            float2 v = *(const float2 *)(Sg + r * DV + j);
            S0[4 * k + e] = v.x;
            S1[4 * k + e] = v.y;
        }
    int nch = qk_cdiv(T, GDN_C);
    for (int ch = 0; ch < nch; ch++) {
        int t0 = ch * GDN_C;
        int nvalid = min(GDN_C, T - t0);
        __syncthreads();
        const float4 *rec4 = (const float4 *)(s.rec + ((int64_t)ch * Hv + h) * REC);
        /* many 16-byte loads in flight per thread: this copy is latency-bound */
#pragma unroll 16
        for (int e = tid; e < REC / 4; e += NT) sm4[e] = rec4[e];
        for (int e = tid; e < GDN_C * COLS / 4; e += NT) {
            int i = e / (COLS / 4), c4 = e % (COLS / 4);
            ((float4 *)Us)[e] = *(const float4 *)(s.U + ((int64_t)(t0 + i) * Hv + h) * DV + j0 + 4 * c4);
        }
        __syncthreads();
        for (int i = 0; i < nvalid; i++) {
            const float4 *w4 = (const float4 *)(Ws + i * DK), *q4 = (const float4 *)(Qs + i * DK);
            float w0a = 0.0f, w0b = 0.0f, w1a = 0.0f, w1b = 0.0f, q0a = 0.0f, q0b = 0.0f, q1a = 0.0f, q1b = 0.0f;
#pragma unroll
            for (int k = 0; k < NF; k++) {
                float4 a = w4[q + SCAN_Q * k], b = q4[q + SCAN_Q * k];
                const float *x0 = S0 + 4 * k, *x1 = S1 + 4 * k;
                w0a = fmaf(a.x, x0[0], w0a); w0b = fmaf(a.y, x0[1], w0b);
                w0a = fmaf(a.z, x0[2], w0a); w0b = fmaf(a.w, x0[3], w0b);
                w1a = fmaf(a.x, x1[0], w1a); w1b = fmaf(a.y, x1[1], w1b);
                w1a = fmaf(a.z, x1[2], w1a); w1b = fmaf(a.w, x1[3], w1b);
                q0a = fmaf(b.x, x0[0], q0a); q0b = fmaf(b.y, x0[1], q0b);
                q0a = fmaf(b.z, x0[2], q0a); q0b = fmaf(b.w, x0[3], q0b);
                q1a = fmaf(b.x, x1[0], q1a); q1b = fmaf(b.y, x1[1], q1b);
                q1a = fmaf(b.z, x1[2], q1a); q1b = fmaf(b.w, x1[3], q1b);
            }
            float w0 = w0a + w0b, w1 = w1a + w1b, qq0 = q0a + q0b, qq1 = q1a + q1b;
#pragma unroll
            for (int o = 1; o < SCAN_Q; o <<= 1) {
                w0 += __shfl_xor_sync(0xffffffffu, w0, o);
                w1 += __shfl_xor_sync(0xffffffffu, w1, o);
                qq0 += __shfl_xor_sync(0xffffffffu, qq0, o);
                qq1 += __shfl_xor_sync(0xffffffffu, qq1, o);
            }
            if (q == 0) {
                float2 u = *(const float2 *)(Us + i * COLS + c0);
                *(float2 *)(Vp + i * COLS + c0) = make_float2(u.x - w0, u.y - w1);
                *(float2 *)(Os + i * COLS + c0) = make_float2(eg[i] * qq0, eg[i] * qq1);
            }
        }
        __syncwarp(); /* Vp and Os rows of this column pair come from lanes of this warp */
        /* O rows i = 4m + q: each thread sums its own rows over l <= i */
        for (int i = q; i < nvalid; i += SCAN_Q) {
            float p0 = 0.0f, p1 = 0.0f;
            const float *pr = Ps + i * GDN_PLD;
            for (int l = 0; l <= i; l++) {
                float pw = pr[l];
                float2 v = *(const float2 *)(Vp + l * COLS + c0);
                p0 = fmaf(pw, v.x, p0);
                p1 = fmaf(pw, v.y, p1);
            }
            float2 ov = *(const float2 *)(Os + i * COLS + c0);
            *(float2 *)(out + (int64_t)(t0 + i) * Hv * DV + (int64_t)h * DV + j) = make_float2(ov.x + p0, ov.y + p1);
        }
        float el = expf(eg[GDN_C]); /* eg[64] holds gamma_last itself */
#pragma unroll
        for (int r = 0; r < 4 * NF; r++) {
            S0[r] *= el;
            S1[r] *= el;
        }
        for (int i = 0; i < nvalid; i++) {
            float2 v = *(const float2 *)(Vp + i * COLS + c0);
            const float4 *k4 = (const float4 *)(Kd + i * DK);
#pragma unroll
            for (int k = 0; k < NF; k++) {
                float4 a = k4[q + SCAN_Q * k];
                float *x0 = S0 + 4 * k, *x1 = S1 + 4 * k;
                x0[0] = fmaf(a.x, v.x, x0[0]); x0[1] = fmaf(a.y, v.x, x0[1]);
                x0[2] = fmaf(a.z, v.x, x0[2]); x0[3] = fmaf(a.w, v.x, x0[3]);
                x1[0] = fmaf(a.x, v.y, x1[0]); x1[1] = fmaf(a.y, v.y, x1[1]);
                x1[2] = fmaf(a.z, v.y, x1[2]); x1[3] = fmaf(a.w, v.y, x1[3]);
            }
        }
    }
#pragma unroll
    for (int k = 0; k < NF; k++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            int r = 4 * (q + SCAN_Q * k) + e;
            *(float2 *)(Sg + r * DV + j) = make_float2(S0[4 * k + e], S1[4 * k + e]);
        }
}

static size_t gdn_sm1(int dk) { return (size_t)(2 * GDN_C * (dk + 1) + GDN_C * (GDN_C + 1) + 2 * GDN_C) * 4; }
static size_t gdn_sm2(int dk)
{
    int cols = dk < 64 ? dk : 64;
    return (gdn_rec_floats(dk) + (size_t)3 * GDN_C * cols) * 4;
}

template <int DK>
static int gdn_prep_dk(const float *c, int ld_c, const float *beta, const float *g, int T, int Hk, int Hv,
                       void *scratch, qk_stream st)
{
    gdn_scratch s = gdn_scratch_split(scratch, T, Hv, DK);
    cudaError_t e = cudaFuncSetAttribute(k_gdn_prep<DK>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)gdn_sm1(DK));
    if (e != cudaSuccess) return (int)e;
    k_gdn_prep<DK><<<dim3(qk_cdiv(T, GDN_C), Hv), 256, gdn_sm1(DK), st>>>(c, ld_c, beta, g, T, Hk, Hv, s);
    return qk_launch_status();
}

template <int DK>
static int gdn_scan_dk(float *state, int T, int Hv, void *scratch, float *out, qk_stream st)
{
    const int COLS = DK < 64 ? DK : 64;
    gdn_scratch s = gdn_scratch_split(scratch, T, Hv, DK);
    cudaError_t e = cudaFuncSetAttribute(k_gdn_scan<DK>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)gdn_sm2(DK));
    if (e != cudaSuccess) return (int)e;
    k_gdn_scan<DK><<<dim3(Hv, DK / COLS), COLS / 2 * SCAN_Q, gdn_sm2(DK), st>>>(T, Hv, s, state, out);
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
    case 32: return gdn_scan_dk<32>(state, T, Hv, scratch, out, st);
    case 64: return gdn_scan_dk<64>(state, T, Hv, scratch, out, st);
    case 128: return gdn_scan_dk<128>(state, T, Hv, scratch, out, st);
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
    const int DV = DK;
    __shared__ float qs[DK], ks[DK], red[33];
    int h = blockIdx.x, j = threadIdx.x, kh = h / (Hv / Hk);
    float q = c[kh * DK + j], k = c[Hk * DK + kh * DK + j], v = c[2 * Hk * DK + h * DV + j];
    float qq = qk_block_sum(q * q, red);
    float kk = qk_block_sum(k * k, red);
    qs[j] = q * (1.0f / sqrtf(qq + 1e-6f)) * (1.0f / sqrtf((float)DK));
    ks[j] = k * (1.0f / sqrtf(kk + 1e-6f));
    float beta, g;
    gdn_gate(b[h], a[h], nexpa[h], dt_bias[h], &beta, &g);
    __syncthreads();
    float decay = expf(g);
    float *Sg = state + (int64_t)h * DK * DV;
    float S[DK];
    float sk = 0.0f;
#pragma unroll
    for (int r = 0; r < DK; r++) {
        S[r] = Sg[r * DV + j] * decay;
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

extern "C" int qk_gdn_step(const float *c, const float *b, const float *a, const float *nexpa, const float *dt_bias,
                           const float *z, const float *norm_w, float eps, float *state, int Hk, int Hv, int dk,
                           int dv, uint16_t *out, qk_stream st)
{
    if (dk != dv || Hk <= 0 || Hv % Hk) return (int)cudaErrorInvalidValue;
    switch (dk) {
    case 32: k_gdn_step<32><<<Hv, 32, 0, st>>>(c, b, a, nexpa, dt_bias, z, norm_w, eps, state, Hk, Hv, out); break;
    case 64: k_gdn_step<64><<<Hv, 64, 0, st>>>(c, b, a, nexpa, dt_bias, z, norm_w, eps, state, Hk, Hv, out); break;
    case 128: k_gdn_step<128><<<Hv, 128, 0, st>>>(c, b, a, nexpa, dt_bias, z, norm_w, eps, state, Hk, Hv, out); break;
    default: return (int)cudaErrorInvalidValue;
    }
    return qk_launch_status();
}
