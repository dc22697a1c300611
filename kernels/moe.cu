/* moe.cu — the mixture-of-experts block on the GPU (qwen35-model.md §3.4):
 * the router (with the RMSNorm before it) and its top-k, the chosen
 * experts' GEMVs for a decode step, and the weighted sum back into the
 * residual stream; for prefill the gather and scatter around one GEMM per
 * expert (engine/cuda_backend.c runs those).
 *
 * Decode runs inside the captured step graph, so nothing here may depend on
 * a host-side choice of experts: the chosen indices stay on the device and
 * k_gemv_moe reads its expert's descriptor from a device table through
 * them — in a decode step it finds them itself from the router logits, so
 * the step's MoE block is three launches before the SwiGLU: the router
 * (k_moe_router), gate|up with the routing (k_gemv_moe<., true>), down.
 * Each block walks row groups of one (expert, part) with the plain
 * launch's body (gemv_q.cuh qg_rowgroup_dot), so every quantized layout of
 * the dense GEMVs, and BF16, runs here unchanged. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "gemv_q.cuh"
#include "kernels.h"

#define MR_EMAX 1024
#define MR_EMAX_ORDER (MR_EMAX + 1) /* the experts and a shared expert */

/* ---- routing ---- */

#define MR_WARPS 4 /* tokens per block of qk_moe_route */
#define MR_KMAX 32

/* A logit as an unsigned key that orders as the floats do (-inf lowest,
 * -0 equal to +0, NaN 1 below all of them); 0 marks an expert taken. */
__device__ __forceinline__ uint32_t mr_key(float v)
{
    const uint32_t b = v == 0.0f ? 0u : __float_as_uint(v);
    return isnan(v) ? 1u : (b & 0x80000000u) ? ~b : b | 0x80000000u;
}

/* The first `rounds` choices of one token by one warp from its logits lg
 * (E of them; ks: E words of shared memory for their keys, ce: where the
 * chosen indices go, best first). Each round takes the largest key with
 * one warp max (redux.sync) and, among the experts holding it, the lowest
 * index with one warp min: the larger logit and on a tie the lower index,
 * as the CPU engine's selection; NaN logits come last, lowest index first
 * (the CPU engine's rule when nothing else is left). The earlier block
 * version (a block-wide argmax per round, two barriers and a serial merge
 * each) took 7.2 us of every 35B-A3B layer's decode on the H100. */
__device__ void mr_topk(const float *__restrict__ lg, int E, int rounds, uint32_t *ks, int *ce)
{
    const int lane = (int)threadIdx.x & 31;
    for (int e = lane; e < E; e += 32) ks[e] = mr_key(lg[e]);
    __syncwarp();
    for (int j = 0; j < rounds; j++) {
        uint32_t best = 0;
        int bi = 1 << 30;
        for (int e = lane; e < E; e += 32) {
            const uint32_t k = ks[e];
            if (k > best) best = k, bi = e;
        }
        const uint32_t top = __reduce_max_sync(0xffffffffu, best);
        const int b = (int)__reduce_min_sync(0xffffffffu, (uint32_t)(best == top ? bi : 1 << 30));
        if (lane == (b & 31)) ks[b] = 0u;
        if (lane == 0) ce[j] = b;
        __syncwarp();
    }
}

/* Lane 0 of the warp that ran mr_topk (K rounds): sel and the renormalised
 * softmax weights of the K (the full softmax's denominator cancels in the
 * renormalisation); with a shared expert, entry K is expert E at weight 1
 * or sigmoid(logit E). Writes Kt = K + (shared != 0) entries. */
__device__ void mr_weights(const float *__restrict__ lg, int E, int K, int shared, const int *ce, int32_t *sel,
                           float *wts)
{
    float p[MR_KMAX], tot = 0.0f;
    const float mx = lg[ce[0]];
    for (int j = 0; j < K; j++) {
        p[j] = expf(lg[ce[j]] - mx);
        tot += p[j];
    }
    for (int j = 0; j < K; j++) {
        sel[j] = ce[j];
        wts[j] = p[j] / tot;
    }
    if (shared) {
        sel[K] = E;
        wts[K] = shared == 2 ? qk_sigmoid(lg[E]) : 1.0f;
    }
}

/* The decode step's routing inside its gate|up launch (qk_gemv_moe_routed):
 * the logits, how many experts and choices, and where the choices go. */
struct mr_route {
    const float *lg;
    int E, K, shared;
    int32_t *sel;
    float *wts;
};

/* Grid (blocks per part, n * P): block (b, s * P + i) holds row groups
 * b * QG_WARPS / S ... of part i of the expert of pair q = order[s] (s
 * without an order), which reads x row q / xdiv and writes y row q.
 * ROUTE (decode, one token): pair s < K is the token's s-th choice, which
 * warp 0 of each block finds itself from the logits (mr_topk, s + 1
 * rounds), and pair K the shared expert (entry E of the table); block (0,
 * 0) also writes sel and wts for the launches after it. That saves the
 * route launch and its dependency (35B-A3B decode on the H100: 7-9 us per
 * layer) at ~1-2 us of arithmetic in every block. */
template <int BODY, bool ROUTE, int G>
__global__ void __launch_bounds__(QG_THREADS, QG_MINB)
    k_gemv_moe(const qg_part *__restrict__ table, int E, int P, const int32_t *__restrict__ sel,
               const int32_t *__restrict__ order, const uint16_t *__restrict__ x, int xdiv, long long xs,
               float *__restrict__ y, long long ys, int S, mr_route ra)
{
    __shared__ qg_part sp;
    __shared__ int sq;
    __shared__ float red[QG_WARPS * QK_QROWS];
    __shared__ uint32_t ks[ROUTE ? MR_EMAX : 1];
    __shared__ int ce[ROUTE ? MR_KMAX : 1];
    qk_pdl_trigger();
    qk_pdl_wait();
    const int s = (int)blockIdx.y / P, i = (int)blockIdx.y % P;
    if (ROUTE) {
        const bool first = blockIdx.x == 0 && blockIdx.y == 0;
        const int rounds = first ? ra.K : s < ra.K ? s + 1 : 0;
        if (threadIdx.x < 32 && rounds) {
            mr_topk(ra.lg, ra.E, rounds, ks, ce);
            if (first && threadIdx.x == 0) mr_weights(ra.lg, ra.E, ra.K, ra.shared, ce, ra.sel, ra.wts);
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        const int q = order ? order[s] : s;
        int e = ROUTE ? (s < ra.K ? ce[s] : ra.E) : sel[q];
        /* the routing writes indices in [0, E); the clamp only keeps a
         * corrupted index from reading outside the table */
        e = e < 0 ? 0 : e >= E ? E - 1 : e;
        sp = table[(size_t)e * P + i];
        sq = q;
    }
    __syncthreads();
    const qg_part &p = sp;
    const int q = sq;
    const int warp = (int)threadIdx.x >> 5, lane = (int)threadIdx.x & 31, ks_ = warp % S;
    if (G > 1) { /* rows of one chunk per lane (S 1): warp w walks groups (b G + g) QG_WARPS + w together */
        int r0[G];
        float tg[G];
#pragma unroll
        for (int g = 0; g < G; g++) r0[g] = (((int)blockIdx.x * G + g) * QG_WARPS + warp) * QK_QROWS;
        qg_rowgroups_short_body<BODY, G>(p, r0, x + (size_t)(q / xdiv) * xs, tg);
#pragma unroll
        for (int g = 0; g < G; g++)
            if (lane < QK_QROWS && r0[g] + lane < p.n) y[(size_t)q * ys + (size_t)i * p.n + r0[g] + lane] = tg[g] * p.post;
        return;
    }
    const int row0 = ((int)blockIdx.x * (QG_WARPS / S) + warp / S) * QK_QROWS;
    float t = qg_rowgroup_dot<BODY>(p, row0, x + (size_t)(q / xdiv) * xs, ks_, S);
    if (!qg_rowgroup_sum(t, S, ks_, red)) return;
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
    int rc = 0, groups = 0, kc_min = 1 << 30, kc_max = 0, kinds = 0, perm = 0, body = -1;
    for (int e = 0; e < n && !rc; e++) {
        rc = qg_part_fill(w[e], NULL, &h[e]);
        if (!rc && (w[e]->n != w[0]->n || w[e]->k != w[0]->k)) rc = (int)cudaErrorInvalidValue;
        /* the expert kernels (moe_gemm.cu) read INT4 row-major scale words: experts are never tiled */
        if (!rc && (w[e]->tiled || w[e]->s16)) rc = (int)cudaErrorInvalidValue;
        if (rc) break;
        if (w[e]->n_pad / QK_QROWS > groups) groups = w[e]->n_pad / QK_QROWS;
        kinds |= 1 << w[e]->kind;
        perm |= w[e]->perm != NULL;
        const int b = qg_part_body(&h[e]);
        body = e == 0 || body == b ? b : -1;
        if (h[e].kc < kc_min) kc_min = h[e].kc;
        if (h[e].kc > kc_max) kc_max = h[e].kc;
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
    t->kc_max = kc_max;
    t->kinds = kinds;
    t->perm = perm;
    t->body = body;
    return 0;
}

typedef void (*mg_kfn)(const qg_part *, int, int, const int32_t *, const int32_t *, const uint16_t *, int, long long,
                       float *, long long, int, mr_route);

/* The kernel for a table: a table of one body runs a kernel with only that
 * body (the kernel with all of them spills: 432 bytes at 128 registers,
 * sm_90; 35B-A3B decode on the H100, all bodies -> one: FP8 326 -> 343,
 * NVFP4 348 -> 378, INT4 359 -> 385 tok/s). QCHAT_MOE_GEMV_GENERIC=1:
 * always all. */
template <bool ROUTE, int G>
static mg_kfn moe_gemv_kernel(const qk_moe_table *t)
{
    static const mg_kfn one[QG_NBODY] = {
        k_gemv_moe<QG_B_FP8, ROUTE, G>, k_gemv_moe<QG_B_I4PH, ROUTE, G>, k_gemv_moe<QG_B_I4P, ROUTE, G>,
        k_gemv_moe<QG_B_I4MH, ROUTE, G>, k_gemv_moe<QG_B_I4M, ROUTE, G>, k_gemv_moe<QG_B_I4H, ROUTE, G>,
        k_gemv_moe<QG_B_I4, ROUTE, G>,  k_gemv_moe<QG_B_NV, ROUTE, G>,  k_gemv_moe<QG_B_MX, ROUTE, G>,
        k_gemv_moe<QG_B_BF16, ROUTE, G>};
    static const int generic = getenv("QCHAT_MOE_GEMV_GENERIC") && !strcmp(getenv("QCHAT_MOE_GEMV_GENERIC"), "1");
    return !generic && t->body >= 0 && t->body < QG_NBODY ? one[t->body] : k_gemv_moe<-1, ROUTE, G>;
}

/* Row groups per warp for tables whose rows are one 16-byte chunk per lane
 * at most (a decode step's down projection at 35B-A3B: 512 inputs, 32 FP8
 * or 16 INT4 / FP4 chunks): 1 walks one group per warp (4608 for the nine
 * pairs of a 35B-A3B step: 2.2 waves of resident warps, each with one chunk
 * per lane in flight), MG_SHORT_G three. Tests and QCHAT_MOE_GEMV_GROUPS
 * set it, for A/B; the sums are the same bits. */
#define MG_SHORT_G 3
int qk_moe_gemv_groups = MG_SHORT_G;

/* Launches n pairs of table t (the checks done), with the routing when
 * ra.lg is set. */
static int moe_gemv_launch(const qk_moe_table *t, const int32_t *sel, int n, const int32_t *order, const uint16_t *x,
                           int xdiv, int64_t xs, float *y, int64_t ys, const mr_route &ra, cudaStream_t st)
{
    /* Warps per row group as the dense launcher picks them (gemv_multi.cu:
     * split K while the launch has fewer warps than two resident blocks per
     * SM hold and each warp keeps a chunk per lane). */
    const int nsm = qk_sm_count() > 0 ? qk_sm_count() : 132;
    const int64_t groups = (int64_t)t->groups * n * t->P;
    int S = 1;
    while (S < QG_WARPS && groups * S < nsm * 16 && t->kc_min >= 64 * S) S *= 2;
    const bool grouped = !ra.lg && S == 1 && t->kc_max <= 32 && qk_moe_gemv_groups == MG_SHORT_G;
    const mg_kfn k = ra.lg ? moe_gemv_kernel<true, 1>(t) : grouped ? moe_gemv_kernel<false, MG_SHORT_G>(t)
                                                                  : moe_gemv_kernel<false, 1>(t);
    const int gpb = grouped ? QG_WARPS * MG_SHORT_G : QG_WARPS / S;
    cudaLaunchConfig_t cfg;
    cudaLaunchAttribute at[1];
    qk_launch_cfg(&cfg, at, dim3((unsigned)((t->groups + gpb - 1) / gpb), (unsigned)(n * t->P)), dim3(QG_THREADS),
                  st, qk_pdl_ok(st));
    const int rc = (int)cudaLaunchKernelEx(&cfg, k, (const qg_part *)t->d, t->E, t->P, sel, order, x, xdiv, (long long)xs,
                                           y, (long long)ys, S, ra);
    return rc ? rc : qk_launch_status();
}

extern "C" int qk_gemv_moe(const qk_moe_table *t, const int32_t *sel, int n, const int32_t *order,
                           const uint16_t *x, int xdiv, int64_t xs, float *y, int64_t ys, struct CUstream_st *st)
{
    if (!t || !t->d || !sel || !x || !y || n <= 0 || (int64_t)n * t->P > 65535 || xdiv <= 0 || xs < 0 ||
        xs % 8 || ((uintptr_t)x & 15) || ys < (int64_t)t->P * t->n)
        return (int)cudaErrorInvalidValue;
    const mr_route none = {NULL, 0, 0, 0, NULL, NULL};
    return moe_gemv_launch(t, sel, n, order, x, xdiv, xs, y, ys, none, st);
}

extern "C" int qk_gemv_moe_routed(const qk_moe_table *t, const float *logits, int E, int K, int shared, int32_t *sel,
                                  float *wts, const uint16_t *x, float *y, int64_t ys, struct CUstream_st *st)
{
    const int n = K + (shared != 0);
    if (!t || !t->d || !logits || !sel || !wts || !x || !y || E <= 0 || E > MR_EMAX || K <= 0 || K > MR_KMAX ||
        K > E || shared < 0 || shared > 2 || t->E < E + (shared != 0) || n * t->P > 65535 || ((uintptr_t)x & 15) ||
        ys < (int64_t)t->P * t->n)
        return (int)cudaErrorInvalidValue;
    const mr_route ra = {logits, E, K, shared, sel, wts};
    return moe_gemv_launch(t, sel, n, NULL, x, n, 0, y, ys, ra, st);
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

/* One warp per token, MR_WARPS tokens per block. */
__global__ void __launch_bounds__(MR_WARPS * 32) k_moe_route(const float *logits, int ld, int T, int E, int K,
                                                             int shared, int32_t *sel, float *wts)
{
    __shared__ uint32_t ks[MR_WARPS][MR_EMAX];
    __shared__ int ce[MR_WARPS][MR_KMAX];
    qk_pdl_trigger();
    qk_pdl_wait();
    const int w = (int)threadIdx.x >> 5;
    const size_t t = (size_t)blockIdx.x * MR_WARPS + w, Kt = (size_t)K + (shared != 0);
    if (t >= (size_t)T) return;
    mr_topk(logits + t * ld, E, K, ks[w], ce[w]);
    if ((threadIdx.x & 31) == 0) mr_weights(logits + t * ld, E, K, shared, ce[w], sel + t * Kt, wts + t * Kt);
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
    qk_launch_cfg(&cfg, at, dim3((unsigned)qk_cdiv(T, MR_WARPS)), dim3(MR_WARPS * 32), st, qk_pdl_ok(st));
    const int rc = (int)cudaLaunchKernelEx(&cfg, k_moe_route, logits, ld, T, E, K, shared, sel, wts);
    return rc ? rc : qk_launch_status();
}

/* ---- the router with the RMSNorm before it (decode) ---- */

#define MRT_WARPS 8 /* router rows per block */
#define MRT_PRE 16  /* float4 of its row each lane loads before the PDL wait */

/* Block (b, t): the RMSNorm of h row t with k_rmsnorm1p_v's partition,
 * order and operations (256 threads, qk_sumsq4, qk_block_sum, qk_rms1p4 /
 * qk_rms1p_bf4), so xb and xf are bit-identical to what qk_rmsnorm1p
 * writes, kept in shared memory as fp32; then warp w the dot of router row
 * 8 b + w with it (fp32 FMAs, lane order then a warp sum). Block 0 writes
 * xb (and xf). One launch instead of the norm and cuBLAS's GEMV, neither
 * of them a PDL launch; the first MRT_PRE float4 per lane of each row come
 * in before the PDL wait, as they do not depend on the kernel before (h,
 * written by that kernel, is read after it through plain loads: no
 * __restrict__, so not the non-coherent path). */
__global__ void __launch_bounds__(256) k_moe_router(const float4 *h, const float4 *__restrict__ nw,
                                                    float eps, int D4, const float4 *__restrict__ W, int N, uint2 *xb,
                                                    float4 *xf, float *y, int ldy)
{
    extern __shared__ float4 mrt_x[];
    __shared__ float red[33];
    qk_pdl_trigger();
    const int tid = (int)threadIdx.x, lane = tid & 31, row = (int)blockIdx.x * MRT_WARPS + (tid >> 5);
    const size_t t = blockIdx.y;
    const float4 *wr = W + (size_t)(row < N ? row : 0) * D4;
    const float4 z4 = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    float4 pre[MRT_PRE];
#pragma unroll
    for (int i = 0; i < MRT_PRE; i++) pre[i] = row < N && lane + 32 * i < D4 ? __ldg(wr + lane + 32 * i) : z4;
    qk_pdl_wait();
    const float4 *hr = h + t * D4;
    float4 v[8];
    float ss = 0.0f;
#pragma unroll
    for (int j = 0; j < 8; j++) {
        const int i = tid + 256 * j;
        v[j] = i < D4 ? hr[i] : z4;
        if (256 * j < D4) ss = qk_sumsq4(ss, v[j]);
    }
    ss = qk_block_sum(ss, red);
    const float r = rsqrtf(ss / (float)(4 * D4) + eps);
#pragma unroll
    for (int j = 0; j < 8; j++) {
        const int i = tid + 256 * j;
        if (i >= D4) break;
        const float4 g = nw[i];
        mrt_x[i] = qk_rms1p4(v[j], r, g);
        if (blockIdx.x == 0) {
            xb[t * D4 + i] = qk_rms1p_bf4(v[j], r, g);
            if (xf) xf[t * D4 + i] = mrt_x[i];
        }
    }
    __syncthreads();
    if (row >= N) return;
    float acc = 0.0f;
#pragma unroll
    for (int i = 0; i < MRT_PRE; i++) {
        const float4 a = pre[i], b = lane + 32 * i < D4 ? mrt_x[lane + 32 * i] : z4;
        acc = fmaf(a.w, b.w, fmaf(a.z, b.z, fmaf(a.y, b.y, fmaf(a.x, b.x, acc))));
    }
    for (int c = lane + 32 * MRT_PRE; c < D4; c += 32) {
        const float4 a = __ldg(wr + c), b = mrt_x[c];
        acc = fmaf(a.w, b.w, fmaf(a.z, b.z, fmaf(a.y, b.y, fmaf(a.x, b.x, acc))));
    }
    acc = qk_warp_sum(acc);
    if (lane == 0) y[t * ldy + row] = acc;
}

static bool mrt_al(const void *p) { return ((uintptr_t)p & 15) == 0; }

extern "C" int qk_moe_router(const float *h, const float *norm_w, float eps, int T, int D, const float *W, int N,
                             uint16_t *xb, float *xf, float *y, int ldy, qk_stream st)
{
    if (T <= 0) return 0;
    if (!h || !norm_w || !W || !xb || !y || D <= 0 || D % 4 || D > 8192 || N <= 0 || ldy < N || T > 65535 ||
        !mrt_al(h) || !mrt_al(norm_w) || !mrt_al(W) || ((uintptr_t)xb & 7) || (xf && !mrt_al(xf)))
        return (int)cudaErrorInvalidValue;
    cudaLaunchConfig_t cfg;
    cudaLaunchAttribute at[1];
    qk_launch_cfg(&cfg, at, dim3((unsigned)qk_cdiv(N, MRT_WARPS), (unsigned)T), dim3(256), st, qk_pdl_ok(st));
    cfg.dynamicSmemBytes = (size_t)D * 4;
    const int rc = (int)cudaLaunchKernelEx(&cfg, k_moe_router, (const float4 *)h, (const float4 *)norm_w, eps, D / 4,
                                           (const float4 *)W, N, (uint2 *)xb, (float4 *)xf, y, ldy);
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
