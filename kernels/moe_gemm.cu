/* moe_gemm.cu — long MoE prefill chunks: every expert's tokens in one launch.
 *
 * The per-expert path of engine/cuda_backend.c paid a gather, a
 * dequantization, two cuBLAS GEMMs, a SwiGLU and a scatter per expert with
 * tokens, plus a host round trip per layer: ~0.4-0.6 s per chunk for a
 * 35B-A3B (256 experts x 40 layers) whatever the chunk's length. Here the
 * pairs are sorted by expert on the device (qk_moe_plan, moe.cu), cut into
 * tiles of 32, 64 or 128 pairs that never straddle two experts, and one launch
 * runs the tiles of all experts (a grouped GEMM): gate|up with the SwiGLU in
 * its epilogue, then down. No host round trip.
 *
 * GEMM: Y = X W^T with bf16 operands on the tensor cores (mma.sync m16n8k16,
 * fp32 accumulation), block tile BM pairs x 128 weight rows x 64 inputs
 * (BM 128, or 64 / 32 when experts hold few pairs each), 3 cp.async
 * stages, 8 warps of BM / 2 x 32; rows of the A tile are gathered
 * straight from the token rows (no gathered copy of X). Shared tiles are
 * [row][64] with the 16-byte chunks XOR-swizzled by row (ldmatrix without
 * bank conflicts, as attn_flash.cu). For gate|up the B tile interleaves
 * 8 gate rows and the 8 up rows of the same outputs, so each thread holds
 * both sums of its outputs and writes bf16(silu(g) * u) (the value
 * qk_swiglu gives for the same fp32 sums).
 *
 * Quantized experts are first dequantized to bf16 (k_moe_dequant, the
 * values of qk_dequant_q_bf16) into a scratch holding a batch of experts;
 * BF16 experts are read in place. */
#include <string.h>

#include "gemv_q.cuh"
#include "kernels.h"
#include "mma.cuh"

#define MG_BN 128       /* weight rows per tile (gate|up: 64 outputs) */
#define MG_BK 64        /* inputs per stage */
#define MG_ST 3         /* stages */
#define MG_THREADS 256
#define MG_SMEM(BM) (MG_ST * ((BM) + MG_BN) * MG_BK * 2)

/* Element offset of 16-byte chunk c of row r in a swizzled [rows][64] tile. */
__device__ __forceinline__ int mg_off(int r, int c) { return r * MG_BK + ((c ^ (r & 7)) << 3); }

/* Weight row r of a block's tile: (part, row of that part). SWIGLU: 8
 * gate rows, then the same 8 outputs' up rows. */
template <bool SWIGLU>
__device__ __forceinline__ int mg_wrow(int nt, int r, int &part)
{
    part = SWIGLU ? (r >> 3) & 1 : 0;
    return SWIGLU ? nt * 64 + (r >> 4) * 8 + (r & 7) : nt * MG_BN + r;
}

/* The weight tile from the packed codes (WK: 1 FP8, 2 INT4, 3 NVFP4 /
 * MXFP4), decoded in registers to the bf16 values of qk_dequant_q_bf16
 * (qg_dq8_*): each thread holds NR 16-byte pieces of codes of one k-tile,
 * loaded a tile ahead (load), then decoded into the shared tile (store).
 * A piece is 16 FP8 codes or 32 INT4 / FP4 codes. */
template <bool SWIGLU, int WK>
struct mg_qload {
    static constexpr int CPR = WK == 1 ? 4 : 2;        /* pieces per row of a k-tile */
    static constexpr int NR = MG_BN * CPR / MG_THREADS; /* pieces per thread */
    static constexpr int KP = MG_BK / CPR;             /* codes per piece */
    uint4 w[NR];
    uint32_t s[NR]; /* FP8: the fp32 block scale's bits; INT4: scale|zero word; FP4: 1-2 scale bytes */
    bool ok[NR];

    __device__ __forceinline__ void load(const qg_part *sp, int nt, int kt, int K, int tid)
    {
#pragma unroll
        for (int it = 0; it < NR; it++) {
            int part;
            const int r = tid / CPR + (MG_THREADS / CPR) * it, k0 = kt * MG_BK + (tid % CPR) * KP;
            const int wr = mg_wrow<SWIGLU>(nt, r, part);
            const qg_part &q = sp[part];
            ok[it] = wr < q.n && k0 < K;
            w[it] = make_uint4(0, 0, 0, 0);
            s[it] = 0;
            if (!ok[it]) continue;
            if (WK == 1) {
                w[it] = __ldg((const uint4 *)((const uint8_t *)q.w + (size_t)wr * q.kc * 16 + k0));
                s[it] = __float_as_uint(((const float *)q.s)[(size_t)(wr / q.blk_n) * q.nkb + k0 / (q.cpb * 16)]);
            } else {
                w[it] = __ldg((const uint4 *)((const uint32_t *)q.w + (size_t)wr * q.kc * 4 + k0 / 8));
                if (WK == 2) {
                    s[it] = ((const uint32_t *)q.s)[(size_t)wr * q.ng + k0 / (q.cpg * 32)];
                } else {
                    const uint8_t *sb = (const uint8_t *)q.s;
                    s[it] = q.kind == QK_QW_MXFP4 ? sb[(size_t)wr * q.kc + k0 / 32]
                                                 : *(const uint16_t *)(sb + (size_t)wr * q.kc * 2 + k0 / 16);
                }
            }
        }
    }

    __device__ __forceinline__ void store(const qg_part *sp, int nt, uint16_t *Bs, int tid) const
    {
#pragma unroll
        for (int it = 0; it < NR; it++) {
            int part;
            const int r = tid / CPR + (MG_THREADS / CPR) * it, c0 = (tid % CPR) * (KP / 8);
            mg_wrow<SWIGLU>(nt, r, part);
            const uint32_t wa[4] = {w[it].x, w[it].y, w[it].z, w[it].w};
            uint32_t o[4];
#pragma unroll
            for (int c = 0; c < KP / 8; c++) {
                if (!ok[it]) {
                    o[0] = o[1] = o[2] = o[3] = 0;
                } else if (WK == 1) {
                    qg_dq8_fp8(make_uint2(wa[2 * c], wa[2 * c + 1]), __uint_as_float(s[it]), o);
                } else if (WK == 2) {
                    qg_dq8_int4(wa[c], s[it], sp[part].f16 != 0, o);
                } else {
                    /* post = gmul * 2^14 exactly: the dense kernels' scale * gmul */
                    const bool mx = sp[part].kind == QK_QW_MXFP4;
                    const uint32_t b = mx ? s[it] : (s[it] >> (8 * (c >> 1))) & 0xffu;
                    qg_dq8_fp4(wa[c], qg_fp4_bscale(b, mx, sp[part].post * (1.0f / 16384.0f)), o);
                }
                *(uint4 *)(Bs + mg_off(r, c0 + c)) = make_uint4(o[0], o[1], o[2], o[3]);
            }
        }
    }
};

/* Grid: (tiles of the batch) * ntn blocks, ntn = weight-row tiles. Tile j
 * of the plan is {expert, first sorted pair, end}. A row of pair i is X
 * row (xo ? xo[i] / xdiv : i). Weights: WK 0 bf16 copied as they are,
 * expert e's part p at wdq + (e - e0) * P * N * K + p * N * K (row stride
 * K) or, wdq NULL, the table's own BF16 part (row stride kc * 8); WK > 0
 * the table's packed part, decoded while loading (mg_qload). SWIGLU (P =
 * 2): Y bf16 row i, column c < N = silu(gate_c) * up_c; else (P = 1) Y
 * fp32 row (yo ? yo[i] : i). */
template <bool SWIGLU, int WK, int BM>
__global__ void __launch_bounds__(MG_THREADS, 2)
    k_moe_gemm(const qg_part *__restrict__ table, const uint16_t *__restrict__ wdq, int e0, int e1,
               const int32_t *__restrict__ tstart, const int4 *__restrict__ tiles, int N, int K,
               const uint16_t *__restrict__ X, long long ldx, const int32_t *__restrict__ xo, int xdiv,
               void *__restrict__ Y, long long ldy, const int32_t *__restrict__ yo, int ntn)
{
    constexpr int P = SWIGLU ? 2 : 1;
    extern __shared__ __align__(128) uint16_t mg_sm[];
    __shared__ qg_part sp[P];
    const int j = tstart[e0] + (int)blockIdx.x / ntn, nt = (int)blockIdx.x % ntn;
    if (j >= tstart[e1]) return;
    const int4 tl = tiles[j];
    const int e = tl.x, r0 = tl.y, r1 = tl.z;
    const int tid = (int)threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int c = tid & 7; /* the 16-byte chunk this thread copies in every row it loads */
    if (WK && tid < P) sp[tid] = table[(size_t)e * P + tid];
    if (WK) __syncthreads();
    mg_qload<SWIGLU, WK ? WK : 1> qb;

    /* The RA A rows and 4 B rows this thread copies (rows tid/8 + 32 it). */
    constexpr int RA = BM / 32, MT = BM / 32; /* MT: 16-row MMA tiles per warp (2 x 4 warps) */
    const uint16_t *ap[RA], *bp[4];
    bool aok[RA], bok[4];
    const uint16_t *wp[P];
    int ldw;
    if (wdq) {
        for (int p = 0; p < P; p++) wp[p] = wdq + ((size_t)(e - e0) * P + p) * N * K;
        ldw = K;
    } else if (!WK) {
        for (int p = 0; p < P; p++) wp[p] = (const uint16_t *)table[(size_t)e * P + p].w;
        ldw = table[(size_t)e * P].kc * 8;
    } else {
        for (int p = 0; p < P; p++) wp[p] = NULL;
        ldw = 0;
    }
#pragma unroll
    for (int it = 0; it < RA; it++) {
        const int i = r0 + (tid >> 3) + 32 * it;
        aok[it] = i < r1;
        ap[it] = aok[it] ? X + (size_t)(xo ? xo[i] / xdiv : i) * ldx : X;
    }
#pragma unroll
    for (int it = 0; it < 4; it++) {
        const int r = (tid >> 3) + 32 * it;
        int part;
        const int wr = mg_wrow<SWIGLU>(nt, r, part);
        bok[it] = !WK && wr < N;
        bp[it] = bok[it] ? (part ? wp[P - 1] : wp[0]) + (size_t)wr * ldw : wp[0];
    }

    auto load = [&](int kt, int s) {
        uint16_t *As = mg_sm + s * (BM + MG_BN) * MG_BK, *Bs = As + BM * MG_BK;
        const int k = kt * MG_BK + c * 8;
        const bool kok = k < K;
#pragma unroll
        for (int it = 0; it < RA; it++) {
            const bool a = aok[it] && kok;
            tc_cp16(tc_smem(As + mg_off((tid >> 3) + 32 * it, c)), a ? ap[it] + k : X, a ? 16 : 0);
        }
#pragma unroll
        for (int it = 0; it < 4 && !WK; it++) {
            const bool b = bok[it] && kok;
            tc_cp16(tc_smem(Bs + mg_off((tid >> 3) + 32 * it, c)), b ? bp[it] + k : wp[0], b ? 16 : 0);
        }
    };
    auto bstage = [&](int s) { return mg_sm + s * (BM + MG_BN) * MG_BK + BM * MG_BK; };

    const int nk = (K + MG_BK - 1) / MG_BK;
#pragma unroll
    for (int s = 0; s < MG_ST - 1; s++) {
        if (s < nk) {
            load(s, s);
            if (WK) {
                qb.load(sp, nt, s, K, tid);
                qb.store(sp, nt, bstage(s), tid);
            }
        }
        tc_cp_commit();
    }

    const int wm = warp >> 2, wn = warp & 3; /* 2 x 4 warps of BM / 2 pairs x 32 weight rows */
    /* ldmatrix row addresses (bytes, stage 0), per 16-input step kk: every
     * fragment row has row & 7 == lane & 7 (see attn_flash.cu). */
    uint32_t aa[4], ba[4];
    {
        const int rl = lane & 7;
        const int ar = wm * (BM / 2) + rl + ((lane >> 3) & 1) * 8, ax = lane >> 4;
        const int br = wn * 32 + rl + (lane >> 4) * 8, bx = (lane >> 3) & 1;
#pragma unroll
        for (int kk = 0; kk < 4; kk++) {
            aa[kk] = tc_smem(mg_sm + ar * MG_BK + (((2 * kk) ^ ax ^ rl) << 3));
            ba[kk] = tc_smem(mg_sm + BM * MG_BK + br * MG_BK + (((2 * kk) ^ bx ^ rl) << 3));
        }
    }
    float acc[MT][4][4];
#pragma unroll
    for (int m = 0; m < MT; m++)
#pragma unroll
        for (int n = 0; n < 4; n++) acc[m][n][0] = acc[m][n][1] = acc[m][n][2] = acc[m][n][3] = 0.0f;

    for (int kt = 0; kt < nk; kt++) {
        const bool next = kt + MG_ST - 1 < nk;
        /* packed weights: the codes of tile kt + 2 come into registers
         * during this tile's MMAs and are decoded into its stage after them */
        if (WK && next) qb.load(sp, nt, kt + MG_ST - 1, K, tid);
        tc_cp_wait<MG_ST - 2>();
        __syncthreads(); /* stage kt landed; every warp is done with stage kt - 1 */
        if (next) load(kt + MG_ST - 1, (kt + MG_ST - 1) % MG_ST);
        tc_cp_commit();
        const uint32_t so = (uint32_t)((kt % MG_ST) * (BM + MG_BN) * MG_BK * 2);
#pragma unroll
        for (int kk = 0; kk < 4; kk++) {
            uint32_t a[MT][4], b[2][4];
#pragma unroll
            for (int m = 0; m < MT; m++) tc_ldsm4(a[m], aa[kk] + so + m * 16 * MG_BK * 2);
#pragma unroll
            for (int np = 0; np < 2; np++) tc_ldsm4(b[np], ba[kk] + so + np * 16 * MG_BK * 2);
#pragma unroll
            for (int m = 0; m < MT; m++)
#pragma unroll
                for (int np = 0; np < 2; np++) {
                    tc_mma(acc[m][2 * np], a[m], b[np][0], b[np][1]);
                    tc_mma(acc[m][2 * np + 1], a[m], b[np][2], b[np][3]);
                }
        }
        if (WK && next) qb.store(sp, nt, bstage((kt + MG_ST - 1) % MG_ST), tid);
    }
    tc_cp_wait_all();

    /* C fragment: rows g = lane / 4 and g + 8 of each 16-row tile, columns
     * 2 (lane % 4) + {0, 1} of each 8-column tile. */
#pragma unroll
    for (int m = 0; m < MT; m++) {
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int i = r0 + wm * (BM / 2) + m * 16 + (lane >> 2) + 8 * h;
            if (i >= r1) continue;
            if (SWIGLU) {
                uint16_t *yr = (uint16_t *)Y + (size_t)i * ldy;
#pragma unroll
                for (int np = 0; np < 2; np++) {
                    const int col = nt * 64 + wn * 16 + np * 8 + 2 * (lane & 3);
                    if (col >= N) continue;
                    const float *g = acc[m][2 * np] + 2 * h, *u = acc[m][2 * np + 1] + 2 * h;
                    *(uint32_t *)(yr + col) = tc_pack(qk_silu(g[0]) * u[0], qk_silu(g[1]) * u[1]);
                }
            } else {
                float *yr = (float *)Y + (size_t)(yo ? yo[i] : i) * ldy;
#pragma unroll
                for (int n = 0; n < 4; n++) {
                    const int col = nt * MG_BN + wn * 32 + n * 8 + 2 * (lane & 3);
                    if (col < N) *(float2 *)(yr + col) = make_float2(acc[m][n][2 * h], acc[m][n][2 * h + 1]);
                }
            }
        }
    }
}

/* Block (chunks of 8 inputs / 256, part * N + row, expert - e0): row of
 * part p of expert e as bf16, the values of qk_dequant_q_bf16. Experts
 * without pairs (off[e + 1] == off[e]) are skipped. */
__global__ void __launch_bounds__(256) k_moe_dequant(const qg_part *__restrict__ table, int P, int e0,
                                                     const int32_t *__restrict__ off, int N, int K,
                                                     uint16_t *__restrict__ out)
{
    const int e = e0 + (int)blockIdx.z;
    if (off && off[e + 1] == off[e]) return;
    const int p = (int)blockIdx.y / N, row = (int)blockIdx.y % N;
    const int c = (int)(blockIdx.x * 256 + threadIdx.x);
    if (c * 8 >= K) return;
    const qg_part &q = table[(size_t)e * P + p];
    uint32_t o[4];
    switch (q.kind) {
    case QK_QW_FP8:
        qg_dq8_fp8(((const uint2 *)q.w)[(size_t)row * q.kc * 2 + c],
                   ((const float *)q.s)[(size_t)(row / q.blk_n) * q.nkb + c / (q.cpb * 2)], o);
        break;
    case QK_QW_INT4:
        qg_dq8_int4(((const uint32_t *)q.w)[(size_t)row * q.kc * 4 + c],
                    ((const uint32_t *)q.s)[(size_t)row * q.ng + c / (q.cpg * 4)], q.f16 != 0, o);
        break;
    case QK_QW_NVFP4:
    case QK_QW_MXFP4: {
        const bool mx = q.kind == QK_QW_MXFP4;
        const uint8_t sb = ((const uint8_t *)q.s)[(size_t)row * (mx ? q.kc : q.kc * 2) + (mx ? c / 4 : c / 2)];
        /* q.post = gmul * 2^14 exactly, so this is the dense kernels' scale * gmul */
        qg_dq8_fp4(((const uint32_t *)q.w)[(size_t)row * q.kc * 4 + c], qg_fp4_bscale(sb, mx, q.post * (1.0f / 16384.0f)),
                   o);
        break;
    }
    default: {
        const uint4 v = ((const uint4 *)q.w)[(size_t)row * q.kc + c];
        o[0] = v.x, o[1] = v.y, o[2] = v.z, o[3] = v.w;
    }
    }
    *(uint4 *)(out + (((size_t)blockIdx.z * P + p) * N + row) * K + (size_t)c * 8) = make_uint4(o[0], o[1], o[2], o[3]);
}

extern "C" int qk_moe_grouped_ok(const qk_moe_table *t)
{
    return t && t->d && t->n % 8 == 0 && t->k % 8 == 0 && !t->perm && (t->P == 1 || t->P == 2);
}

/* Which weight loader reads the table's parts in place: 0 BF16, 1 FP8, 2
 * INT4, 3 NVFP4 / MXFP4; -1 when the parts mix these (qk_moe_dequant then). */
static int mg_kind(const qk_moe_table *t)
{
    const int k = t->kinds;
    if (k == 1 << QK_QW_BF16) return 0;
    if (k == 1 << QK_QW_FP8) return 1;
    if (k == 1 << QK_QW_INT4) return 2;
    if (k && !(k & ~((1 << QK_QW_NVFP4) | (1 << QK_QW_MXFP4)))) return 3;
    return -1;
}

extern "C" int qk_moe_gemm_in_place_ok(const qk_moe_table *t) { return qk_moe_grouped_ok(t) && mg_kind(t) >= 0; }

template <bool SW, int WK, int BM>
static int mg_launch_bm(const qk_moe_table *t, const uint16_t *wdq, int e0, int e1, const int32_t *tstart,
                        const int32_t *tiles, int max_tiles, int ntn, const uint16_t *x, int64_t ldx, const int32_t *xo,
                        int xdiv, void *y, int64_t ldy, const int32_t *yo, cudaStream_t st)
{
    static bool attr;
    if (!attr) {
        const int rc = (int)cudaFuncSetAttribute(k_moe_gemm<SW, WK, BM>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                 MG_SMEM(BM));
        if (rc) return rc;
        attr = true;
    }
    k_moe_gemm<SW, WK, BM><<<dim3((unsigned)(max_tiles * ntn)), MG_THREADS, MG_SMEM(BM), st>>>(
        (const qg_part *)t->d, wdq, e0, e1, tstart, (const int4 *)tiles, t->n, t->k, x, (long long)ldx, xo, xdiv, y,
        (long long)ldy, yo, ntn);
    return qk_launch_status();
}

template <bool SW, int WK>
static int mg_launch(int bm, const qk_moe_table *t, const uint16_t *wdq, int e0, int e1, const int32_t *tstart,
                     const int32_t *tiles, int max_tiles, int ntn, const uint16_t *x, int64_t ldx, const int32_t *xo,
                     int xdiv, void *y, int64_t ldy, const int32_t *yo, cudaStream_t st)
{
    switch (bm) {
    case 32: return mg_launch_bm<SW, WK, 32>(t, wdq, e0, e1, tstart, tiles, max_tiles, ntn, x, ldx, xo, xdiv, y, ldy, yo, st);
    case 64: return mg_launch_bm<SW, WK, 64>(t, wdq, e0, e1, tstart, tiles, max_tiles, ntn, x, ldx, xo, xdiv, y, ldy, yo, st);
    default: return mg_launch_bm<SW, WK, 128>(t, wdq, e0, e1, tstart, tiles, max_tiles, ntn, x, ldx, xo, xdiv, y, ldy, yo, st);
    }
}

extern "C" int qk_moe_dequant(const qk_moe_table *t, int e0, int e1, const int32_t *off, uint16_t *out,
                              struct CUstream_st *st)
{
    if (!qk_moe_grouped_ok(t) || !out || ((uintptr_t)out & 15) || e0 < 0 || e1 > t->E || e1 < e0 ||
        (int64_t)t->n * t->P > 65535)
        return (int)cudaErrorInvalidValue;
    if (e1 == e0) return 0;
    k_moe_dequant<<<dim3((unsigned)qk_cdiv(t->k / 8, 256), (unsigned)(t->n * t->P), (unsigned)(e1 - e0)), 256, 0,
                    st>>>((const qg_part *)t->d, t->P, e0, off, t->n, t->k, out);
    return qk_launch_status();
}

extern "C" int qk_moe_gemm(const qk_moe_table *t, const uint16_t *wdq, int e0, int e1, int bm, const int32_t *tstart,
                           const int32_t *tiles, int max_tiles, const uint16_t *x, int64_t ldx, const int32_t *xo,
                           int xdiv, void *y, int64_t ldy, const int32_t *yo, struct CUstream_st *st)
{
    if (!qk_moe_grouped_ok(t) || !tstart || !tiles || !x || !y || e0 < 0 || e1 > t->E || e1 < e0 || xdiv <= 0 ||
        ldx < t->k || ldx % 8 || ((uintptr_t)x & 15) || ((uintptr_t)tiles & 15) || ((uintptr_t)wdq & 15) ||
        (!wdq && mg_kind(t) < 0) || ldy < t->n || ldy % 2 || (t->P == 2 && yo) || (bm != 32 && bm != 64 && bm != 128))
        return (int)cudaErrorInvalidValue;
    if (e1 == e0 || max_tiles <= 0) return 0;
    const bool sw = t->P == 2;
    const int ntn = qk_cdiv(t->n, sw ? 64 : MG_BN);
    if ((int64_t)max_tiles * ntn > 0x7fffffff) return (int)cudaErrorInvalidValue;
    const int wk = wdq ? 0 : mg_kind(t);
#define MG_GO(SW, WK) mg_launch<SW, WK>(bm, t, wdq, e0, e1, tstart, tiles, max_tiles, ntn, x, ldx, xo, xdiv, y, ldy, yo, st)
    switch (wk) {
    case 0: return sw ? MG_GO(true, 0) : MG_GO(false, 0);
    case 1: return sw ? MG_GO(true, 1) : MG_GO(false, 1);
    case 2: return sw ? MG_GO(true, 2) : MG_GO(false, 2);
    default: return sw ? MG_GO(true, 3) : MG_GO(false, 3);
    }
#undef MG_GO
}
