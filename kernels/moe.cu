/* moe.cu — the mixture-of-experts block on the GPU (qwen35-model.md §3.4):
 * the router's top-k, the chosen experts' GEMVs for a decode step, and the
 * weighted sum back into the residual stream; for prefill the gather and
 * scatter around one GEMM per expert (engine/cuda_backend.c runs those).
 *
 * Decode runs inside the captured step graph, so nothing here may depend on
 * a host-side choice of experts: qk_moe_route writes the K chosen indices
 * on the device and k_gemv_moe reads its expert's descriptor from a device
 * table through them. Each block walks row groups of one (expert, part)
 * with the plain launch's body (gemv_q.cuh qg_rowgroup_dot), so every
 * quantized layout of the dense GEMVs, and BF16, runs here unchanged. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "gemv_q.cuh"
#include "kernels.h"

#define MR_EMAX 1024
#define MR_EMAX_ORDER (MR_EMAX + 1) /* the experts and a shared expert */

/* Grid (blocks per part, n * P): block (b, s * P + i) holds row groups
 * b * QG_WARPS / S ... of part i of the expert of pair q = order[s] (s
 * without an order), which reads x row q / xdiv and writes y row q. */
template <int BODY>
__global__ void __launch_bounds__(QG_THREADS, QG_MINB)
    k_gemv_moe(const qg_part *__restrict__ table, int E, int P, const int32_t *__restrict__ sel,
               const int32_t *__restrict__ order, const uint16_t *__restrict__ x, int xdiv, long long xs,
               float *__restrict__ y, long long ys, int S)
{
    __shared__ qg_part sp;
    __shared__ int sq;
    __shared__ float red[QG_WARPS * QK_QROWS];
    qk_pdl_trigger();
    qk_pdl_wait();
    const int s = (int)blockIdx.y / P, i = (int)blockIdx.y % P;
    if (threadIdx.x == 0) {
        const int q = order ? order[s] : s;
        int e = sel[q];
        /* qk_moe_route writes indices in [0, E); the clamp only keeps a
         * corrupted index from reading outside the table */
        e = e < 0 ? 0 : e >= E ? E - 1 : e;
        sp = table[(size_t)e * P + i];
        sq = q;
    }
    __syncthreads();
    const qg_part &p = sp;
    const int q = sq;
    const int warp = (int)threadIdx.x >> 5, lane = (int)threadIdx.x & 31, ks = warp % S;
    const int row0 = ((int)blockIdx.x * (QG_WARPS / S) + warp / S) * QK_QROWS;
    float t = qg_rowgroup_dot<BODY>(p, row0, x + (size_t)(q / xdiv) * xs, ks, S);
    if (!qg_rowgroup_sum(t, S, ks, red)) return;
    const int row = row0 + lane;
    if (lane < QK_QROWS && row < p.n) y[(size_t)q * ys + (size_t)i * p.n + row] = t * p.post;
}

extern "C" size_t qk_moe_table_bytes(int n) { return n > 0 ? (size_t)n * sizeof(qg_part) : 0; }

extern "C" int qk_moe_table_fill(const qk_qweight *const *w, int E, int P, void *dev, qk_moe_table *t)
{
    memset(t, 0, sizeof *t);
    if (E <= 0 || P <= 0 || !dev) return (int)cudaErrorInvalidValue;
    const int n = E * P;
    qg_part *h = (qg_part *)calloc((size_t)n, sizeof *h);
    if (!h) return (int)cudaErrorMemoryAllocation;
    int rc = 0, groups = 0, kc_min = 1 << 30, kinds = 0, perm = 0, body = -1;
    for (int e = 0; e < n && !rc; e++) {
        rc = qg_part_fill(w[e], NULL, &h[e]);
        if (!rc && (w[e]->n != w[0]->n || w[e]->k != w[0]->k)) rc = (int)cudaErrorInvalidValue;
        if (rc) break;
        if (w[e]->n_pad / QK_QROWS > groups) groups = w[e]->n_pad / QK_QROWS;
        kinds |= 1 << w[e]->kind;
        perm |= w[e]->perm != NULL;
        const int b = qg_part_body(&h[e]);
        body = e == 0 || body == b ? b : -1;
        if (h[e].kc < kc_min) kc_min = h[e].kc;
    }
    if (!rc) rc = (int)cudaMemcpy(dev, h, (size_t)n * sizeof *h, cudaMemcpyHostToDevice);
    free(h);
    if (rc) return rc;
    t->d = dev;
    t->E = E;
    t->P = P;
    t->n = w[0]->n;
    t->k = w[0]->k;
    t->groups = groups;
    t->kc_min = kc_min;
    t->kinds = kinds;
    t->perm = perm;
    t->body = body;
    return 0;
}

extern "C" int qk_gemv_moe(const qk_moe_table *t, const int32_t *sel, int n, const int32_t *order,
                           const uint16_t *x, int xdiv, int64_t xs, float *y, int64_t ys, struct CUstream_st *st)
{
    if (!t || !t->d || !sel || !x || !y || n <= 0 || (int64_t)n * t->P > 65535 || xdiv <= 0 || xs < 0 ||
        xs % 8 || ((uintptr_t)x & 15) || ys < (int64_t)t->P * t->n)
        return (int)cudaErrorInvalidValue;
    /* Warps per row group as the dense launcher picks them (gemv_multi.cu:
     * split K while the launch has fewer warps than two resident blocks per
     * SM hold and each warp keeps a chunk per lane). */
    const int nsm = qk_sm_count() > 0 ? qk_sm_count() : 132;
    const int64_t groups = (int64_t)t->groups * n * t->P;
    int S = 1;
    while (S < QG_WARPS && groups * S < nsm * 16 && t->kc_min >= 64 * S) S *= 2;
    const int gpb = QG_WARPS / S;
    cudaLaunchConfig_t cfg;
    cudaLaunchAttribute at[1];
    qk_launch_cfg(&cfg, at, dim3((unsigned)((t->groups + gpb - 1) / gpb), (unsigned)(n * t->P)), dim3(QG_THREADS),
                  st, qk_pdl_ok(st));
    /* a table of one body runs a kernel with only that body (the kernel
     * with all of them spills: 432 bytes at 128 registers, sm_90; 35B-A3B
     * decode on the H100, all bodies -> one: FP8 326 -> 343, NVFP4 348 ->
     * 378, INT4 359 -> 385 tok/s). QCHAT_MOE_GEMV_GENERIC=1: always all. */
    typedef void (*kfn)(const qg_part *, int, int, const int32_t *, const int32_t *, const uint16_t *, int, long long,
                        float *, long long, int);
    static const kfn one[QG_NBODY] = {k_gemv_moe<QG_B_FP8>, k_gemv_moe<QG_B_I4PH>, k_gemv_moe<QG_B_I4P>,
                                      k_gemv_moe<QG_B_I4MH>, k_gemv_moe<QG_B_I4M>, k_gemv_moe<QG_B_I4H>,
                                      k_gemv_moe<QG_B_I4>,   k_gemv_moe<QG_B_NV>,  k_gemv_moe<QG_B_MX>,
                                      k_gemv_moe<QG_B_BF16>};
    static const int generic = getenv("QCHAT_MOE_GEMV_GENERIC") && !strcmp(getenv("QCHAT_MOE_GEMV_GENERIC"), "1");
    const kfn k = !generic && t->body >= 0 && t->body < QG_NBODY ? one[t->body] : k_gemv_moe<-1>;
    const int rc = (int)cudaLaunchKernelEx(&cfg, k, (const qg_part *)t->d, t->E, t->P, sel, order, x, xdiv,
                                           (long long)xs, y, (long long)ys, S);
    return rc ? rc : qk_launch_status();
}

/* ---- the pairs of a prefill chunk in expert order ---- */

#define MO_THREADS 1024

/* One block: a counting sort of the n pairs by expert. Where a pair lands
 * among its expert's pairs depends on the atomics' order, which changes
 * nothing computed: every pair writes its own output row. With off (the
 * grouped GEMM's plan, qk_moe_plan): off[e] the first position of expert
 * e, tstart[e] its first tile of bm positions, tiles[j] = {expert, first
 * position, end} (int4). */
__global__ void __launch_bounds__(MO_THREADS) k_moe_order(const int32_t *sel, int n, int E, int32_t *order, int bm,
                                                          int32_t *off, int32_t *tstart, int4 *tiles)
{
    __shared__ int cnt[MR_EMAX_ORDER], tc[MR_EMAX_ORDER];
    const int lane = (int)threadIdx.x & 31;
    for (int e = (int)threadIdx.x; e < E; e += MO_THREADS) cnt[e] = 0;
    __syncthreads();
    for (int i = (int)threadIdx.x; i < n; i += MO_THREADS) {
        const int e = sel[i];
        atomicAdd(&cnt[e < 0 ? 0 : e >= E ? E - 1 : e], 1);
    }
    __syncthreads();
    if (threadIdx.x < 32) { /* exclusive prefix sums of the counts and tiles, 32 experts a round */
        int run = 0, trun = 0;
        for (int b = 0; b < E; b += 32) {
            const int v = b + lane < E ? cnt[b + lane] : 0, tv = off ? (v + bm - 1) / bm : 0;
            int inc = v, tinc = tv;
            for (int o = 1; o < 32; o <<= 1) {
                const int u = __shfl_up_sync(0xffffffffu, inc, o), tu = __shfl_up_sync(0xffffffffu, tinc, o);
                if (lane >= o) inc += u, tinc += tu;
            }
            if (b + lane < E) cnt[b + lane] = run + inc - v, tc[b + lane] = trun + tinc - tv;
            run += __shfl_sync(0xffffffffu, inc, 31);
            trun += __shfl_sync(0xffffffffu, tinc, 31);
        }
        if (off && lane == 0) off[E] = n, tstart[E] = trun;
    }
    __syncthreads();
    if (off) {
        for (int e = (int)threadIdx.x; e < E; e += MO_THREADS) {
            const int a = cnt[e], z = e + 1 < E ? cnt[e + 1] : n;
            off[e] = a;
            tstart[e] = tc[e];
            for (int j = 0; a + j * bm < z; j++) tiles[tc[e] + j] = make_int4(e, a + j * bm, z, 0);
        }
        __syncthreads(); /* the scatter below moves cnt */
    }
    for (int i = (int)threadIdx.x; i < n; i += MO_THREADS) {
        const int e = sel[i];
        order[atomicAdd(&cnt[e < 0 ? 0 : e >= E ? E - 1 : e], 1)] = i;
    }
}

extern "C" int qk_moe_order(const int32_t *sel, int n, int E, int32_t *order, qk_stream st)
{
    if (n <= 0) return 0;
    if (!sel || !order || E <= 0 || E > MR_EMAX_ORDER) return (int)cudaErrorInvalidValue;
    k_moe_order<<<1, MO_THREADS, 0, st>>>(sel, n, E, order, 1, NULL, NULL, NULL);
    return (int)cudaGetLastError();
}

extern "C" int qk_moe_plan(const int32_t *sel, int n, int E, int bm, int32_t *order, int32_t *off, int32_t *tstart,
                           int32_t *tiles, qk_stream st)
{
    if (n <= 0) return 0;
    if (!sel || !order || !off || !tstart || !tiles || ((uintptr_t)tiles & 15) || E <= 0 || E > MR_EMAX_ORDER ||
        bm <= 0)
        return (int)cudaErrorInvalidValue;
    k_moe_order<<<1, MO_THREADS, 0, st>>>(sel, n, E, order, bm, off, tstart, (int4 *)tiles);
    return (int)cudaGetLastError();
}

/* ---- routing ---- */

#define MR_THREADS 128
#define MR_KMAX 32

/* The better of two (logit, index) candidates: the larger logit, on a tie
 * the lower index (as the CPU engine's selection). Index -1: none. */
__device__ __forceinline__ void mr_better(float &v, int &e, float v2, int e2)
{
    if (e2 >= 0 && (e < 0 || v2 > v || (v2 == v && e2 < e))) {
        v = v2;
        e = e2;
    }
}

/* One token's choice by a block of MR_THREADS threads from its logits lg
 * (E experts, then the shared expert's gate at lg[E]): K
 * rounds of a block-wide argmax over the experts not yet taken, then the
 * renormalised softmax weights of the K (the full softmax's denominator
 * cancels in the renormalisation); with a shared expert, entry K is expert
 * E at weight 1 or sigmoid(logit E). Writes Kt = K + (shared != 0) entries
 * of sel and wts. Every thread of the block must call it. */
__device__ void mr_route_token(const float *lg, int E, int K, int shared, int32_t *sel, float *wts)
{
    __shared__ float l[MR_EMAX];
    __shared__ unsigned char taken[MR_EMAX];
    __shared__ float wv[MR_THREADS / 32];
    __shared__ int we[MR_THREADS / 32];
    __shared__ int chosen[MR_KMAX];
    const int lane = (int)threadIdx.x & 31, warp = (int)threadIdx.x >> 5;
    for (int e = (int)threadIdx.x; e < E; e += MR_THREADS) {
        l[e] = lg[e];
        taken[e] = 0;
    }
    __syncthreads();
    for (int j = 0; j < K; j++) {
        float v = 0.0f;
        int b = -1;
        /* a NaN is no candidate: kept as one, it would hide this thread's
         * later experts (no logit compares greater than NaN) */
        for (int e = (int)threadIdx.x; e < E; e += MR_THREADS)
            if (!taken[e] && !isnan(l[e])) mr_better(v, b, l[e], e);
        for (int o = 16; o; o >>= 1) {
            const float v2 = __shfl_xor_sync(0xffffffffu, v, o);
            const int b2 = __shfl_xor_sync(0xffffffffu, b, o);
            mr_better(v, b, v2, b2);
        }
        if (lane == 0) {
            wv[warp] = v;
            we[warp] = b;
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            for (int w = 1; w < MR_THREADS / 32; w++) mr_better(v, b, wv[w], we[w]);
            /* NaN logits never win a comparison: take the lowest free index then */
            if (b < 0)
                for (b = 0; taken[b]; b++) {}
            chosen[j] = b;
            taken[b] = 1;
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        const float mx = l[chosen[0]];
        float p[MR_KMAX], tot = 0.0f;
        for (int j = 0; j < K; j++) {
            p[j] = expf(l[chosen[j]] - mx);
            tot += p[j];
        }
        for (int j = 0; j < K; j++) {
            sel[j] = chosen[j];
            wts[j] = p[j] / tot;
        }
        if (shared) {
            sel[K] = E;
            wts[K] = shared == 2 ? qk_sigmoid(lg[E]) : 1.0f;
        }
    }
}

/* One block per token. */
__global__ void __launch_bounds__(MR_THREADS) k_moe_route(const float *logits, int ld, int E, int K, int shared,
                                                          int32_t *sel, float *wts)
{
    qk_pdl_trigger();
    qk_pdl_wait();
    const size_t t = blockIdx.x, Kt = (size_t)K + (shared != 0);
    mr_route_token(logits + t * ld, E, K, shared, sel + t * Kt, wts + t * Kt);
}


extern "C" int qk_moe_route(const float *logits, int ld, int T, int E, int K, int shared, int32_t *sel, float *wts,
                            qk_stream st)
{
    if (T <= 0) return 0;
    if (!logits || !sel || !wts || E <= 0 || E > MR_EMAX || K <= 0 || K > MR_KMAX || K > E || shared < 0 ||
        shared > 2 || ld < E + (shared == 2))
        return (int)cudaErrorInvalidValue;
    cudaLaunchConfig_t cfg;
    cudaLaunchAttribute at[1];
    qk_launch_cfg(&cfg, at, dim3((unsigned)T), dim3(MR_THREADS), st, qk_pdl_ok(st));
    const int rc = (int)cudaLaunchKernelEx(&cfg, k_moe_route, logits, ld, E, K, shared, sel, wts);
    return rc ? rc : qk_launch_status();
}

/* ---- the weighted sum into the residual ---- */

__global__ void __launch_bounds__(256) k_moe_combine(float *h, const float *ye, const float *wts, int K,
                                                     const float *ysh, const float *sg, int sg_ld, int D)
{
    qk_pdl_trigger();
    qk_pdl_wait();
    const int c = (int)(blockIdx.x * 256 + threadIdx.x);
    if (c >= D) return;
    const size_t t = blockIdx.y;
    float acc = 0.0f;
    for (int j = 0; j < K; j++) acc += (wts ? wts[t * K + j] : 1.0f) * ye[(t * K + j) * D + c];
    if (ysh) acc += (sg ? qk_sigmoid(sg[t * sg_ld]) : 1.0f) * ysh[t * D + c];
    h[t * D + c] += acc;
}

extern "C" int qk_moe_combine(float *h, const float *ye, const float *wts, int K, const float *ysh, const float *sg,
                              int sg_ld, int T, int D, qk_stream st)
{
    if (T <= 0) return 0;
    if (!h || (K > 0 && !ye) || K < 0 || D <= 0 || T > 65535) return (int)cudaErrorInvalidValue;
    cudaLaunchConfig_t cfg;
    cudaLaunchAttribute at[1];
    qk_launch_cfg(&cfg, at, dim3((unsigned)((D + 255) / 256), (unsigned)T), dim3(256), st, qk_pdl_ok(st));
    const int rc = (int)cudaLaunchKernelEx(&cfg, k_moe_combine, h, ye, wts, K, ysh, sg, sg_ld, D);
    return rc ? rc : qk_launch_status();
}

/* ---- prefill: gather the tokens of one expert, scatter its outputs ---- */

__global__ void k_moe_gather(const uint16_t *x, const int32_t *rows, int n, int D8, uint16_t *out)
{
    const int i = (int)blockIdx.y;
    for (int c = (int)(blockIdx.x * blockDim.x + threadIdx.x); c < D8; c += (int)(gridDim.x * blockDim.x))
        ((uint4 *)out)[(size_t)i * D8 + c] = ((const uint4 *)x)[(size_t)rows[i] * D8 + c];
}

extern "C" int qk_moe_gather(const uint16_t *x, const int32_t *rows, int n, int D, uint16_t *out, qk_stream st)
{
    if (n <= 0) return 0;
    if (!x || !rows || !out || D % 8 || n > 65535 || ((uintptr_t)x & 15) || ((uintptr_t)out & 15))
        return (int)cudaErrorInvalidValue;
    const int D8 = D / 8;
    k_moe_gather<<<dim3((unsigned)((D8 + 127) / 128), (unsigned)n), 128, 0, st>>>(x, rows, n, D8, out);
    return (int)cudaGetLastError();
}

__global__ void k_moe_scatter_add(float *y, const float *ye, const int32_t *rows, const float *w, int D)
{
    const int i = (int)blockIdx.y;
    const float wi = w[i];
    float *yr = y + (size_t)rows[i] * D;
    const float *er = ye + (size_t)i * D;
    for (int c = (int)(blockIdx.x * blockDim.x + threadIdx.x); c < D; c += (int)(gridDim.x * blockDim.x))
        yr[c] += wi * er[c];
}

extern "C" int qk_moe_scatter_add(float *y, const float *ye, const int32_t *rows, const float *w, int n, int D,
                                  qk_stream st)
{
    if (n <= 0) return 0;
    if (!y || !ye || !rows || !w || D <= 0 || n > 65535) return (int)cudaErrorInvalidValue;
    k_moe_scatter_add<<<dim3((unsigned)((D + 255) / 256), (unsigned)n), 256, 0, st>>>(y, ye, rows, w, D);
    return (int)cudaGetLastError();
}
