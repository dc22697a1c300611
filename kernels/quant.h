/* quant.h — quantized weights on the GPU: the kernel-native ("repacked") layout
 * of every published 4/8-bit format, the decode GEMV per layout family and the
 * dequantize-to-BF16 kernel for prefill. C-includable (extern "C").
 *
 * Five layouts; every published format is converted at load time by
 * engine/cuda_repack.c into one of them, with no change to what is computed:
 *
 *   QK_QW_FP8    fp8-block, fp8-tensor, fp8-channel
 *       w: e4m3 bytes, row-major [n_pad][k_pad] (the published [N,K] bytes,
 *          rows padded so every row starts 16-byte aligned).
 *       s: fp32 scale grid [ceil(n/blk_n)][nkb], W = e4m3 * s[n/blk_n][k/blk_k].
 *          fp8-tensor is one block of n_pad x k_pad, fp8-channel blocks of 1 x k_pad.
 *   QK_QW_INT4   gptq (v1 and v2 zeros), awq, ct-int (symmetric or not, g_idx)
 *       w: uint32 words row-major [n_pad][k_pad/8]; nibble j of word i of row n
 *          is the unsigned code q of packed position 8i+j (natural order: the
 *          low nibble holds the lower k, exactly as ct-int publishes it).
 *       s: uint32 per (row, group) [n_pad][ngroups]: bits 0-15 the scale (f16
 *          when scale_f16, else bf16 — the published dtype, kept exact), bits
 *          16-23 the zero z (0..16 in every published convention); W = scale * (q - z).
 *       tiled (set by qc_qweight_tile, before packing; no perm, k_pad a
 *          multiple of 1024, groups of 32, 64 or 128): w and s are stored
 *          step-major instead of row-major. Per group of QK_QROWS rows and
 *          step of 1024 packed positions, the 4 rows' 128 words follow one
 *          another (2048 bytes), and so do their 1024/group scale words:
 *          exactly the order of the streamed GEMV's shared-memory stage, so
 *          a stage is two contiguous bulk copies instead of eight pieces at
 *          the row stride (27B INT4 decode +1 to +2 %, H100, BENCHMARKS.md
 *          twenty-second session). A slab of whole row groups is still the
 *          same byte range as row-major (qk_int4_tile_index).
 *       s16 (tiled weights whose every zero is 8: symmetric GPTQ, AutoRound,
 *          ct-int; set by qc_qweight_tile from the plan's zero8): s holds only
 *          the 16-bit scales, in the same tiled order, and the kernels rebuild
 *          the word as scale | 8 << 16 (qk_int4_sword). Published symmetric
 *          files carry no zero per group, so neither does the layout: a 27B
 *          step reads 0.38 GB less at groups of 128 (2.4 %), 1.5 GB at 32.
 *       perm: NULL, or int32 [k_pad + k_pad/32]: packed position -> original k
 *          (-1 = pad), then the group of each 32-position chunk; with
 *          perm_regular also, at byte qk_perm16_offset(k_pad), per position
 *          the uint16 slot of its k in the decode GEMV's staged x (4 pieces
 *          of 8 per 32-element chunk, qk_perm16_slot; 0xffff = pad), so the
 *          staging gathers x with one shared-memory load each. Set for g_idx
 *          (act-order) checkpoints: K is permuted at repack time so each group's
 *          inputs are contiguous (one segment per group, padded to a multiple of
 *          32); the kernel gathers x through perm. `group` is then 32, except
 *          with perm_regular: every group G inputs long (the last may be
 *          shorter), as act-order files have them, so chunk c's group is
 *          c / (G / 32) exactly as without g_idx, `group` is G and perm only
 *          orders x (the decode GEMV stages x once per block in that order
 *          and runs the plain-layout bodies).
 *   QK_QW_BF16   bf16 (so 16-bit projections can share a fused launch)
 *       w: bf16 row-major [n_pad][k_pad]; no scales.
 *   QK_QW_NVFP4  nvfp4-ct, nvfp4-modelopt;  QK_QW_MXFP4  mxfp4-ct
 *       w: uint32 words row-major [n_pad][k_pad/8]; word i holds elements
 *          8i..8i+7 in the pre-shuffled bit order described in cuda_repack.c
 *          (each pair of elements becomes an f16x2 with one or two bit ops).
 *       s: the block scale bytes [n_pad][k_pad/16] (e4m3) or [n_pad][k_pad/32] (e8m0).
 *       gmul: fp32 per-tensor multiplier (nvfp4-ct: 1/global_scale; modelopt:
 *          weight_scale_2; mxfp4: 1).
 *
 * Padding: n_pad is a multiple of QK_QROWS and k_pad of 32; padded weights and
 * scales are zero and the kernels never read x beyond k. */
#ifndef QC_QUANT_H
#define QC_QUANT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct CUstream_st;

#ifdef __CUDACC__
#define QK_HD __host__ __device__ /* helpers both sides use */
#else
#define QK_HD
#endif

#define QK_QROWS 4          /* rows per thread block of the quantized GEMVs; n_pad % QK_QROWS == 0 */
#define QK_GEMV_MAX_PARTS 4 /* weights one fused launch can read */

typedef enum qk_qkind { QK_QW_NONE = 0, QK_QW_FP8, QK_QW_INT4, QK_QW_NVFP4, QK_QW_MXFP4, QK_QW_BF16 } qk_qkind;

/* A weight in the kernel-native layout. Pointers are device pointers once
 * uploaded (qc_qweight_upload) and host pointers while packed on the host
 * (qc_qweight_pack); the same descriptor describes both. */
typedef struct qk_qweight {
    int kind;          /* qk_qkind */
    int fmt;           /* qc_format it came from (for messages) */
    int n, k;          /* logical shape: y[n] = sum_k W[n,k] x[k] */
    int n_pad, k_pad;  /* stored shape */
    int scale_f16;     /* int4: 1 = 16-bit scale is IEEE f16, 0 = bf16 */
    int group;         /* int4: group length along packed K (multiple of 32) */
    int ngroups;       /* int4: groups per row in s */
    int blk_n, blk_k;  /* fp8: scale block (blk_k a multiple of 16) */
    int nkb;           /* fp8: scale blocks per block-row */
    float gmul;        /* nvfp4/mxfp4: per-tensor multiplier */
    void *w;
    size_t w_bytes;
    void *s;
    size_t s_bytes;
    int32_t *perm;     /* int4 with g_idx: [k_pad + k_pad/32], else NULL */
    int perm_regular;  /* int4 with g_idx: every group `group` long (see above) */
    size_t perm_bytes;
    int tiled;         /* int4: the step-major layout above */
    int zero8;         /* int4: every group's zero is 8 (the plan found it) */
    int s16;           /* int4: s holds 16-bit scales only (tiled and zero8) */
} qk_qweight;

/* The scale|zero word of a 16-bit scale whose zero is 8 (s16 layouts). */
static inline QK_HD uint32_t qk_int4_sword(uint32_t s16) { return s16 | 8u << 16; }

/* Scale|zero word i of an INT4 weight's s (an index from qk_int4_tile_index). */
static inline QK_HD uint32_t qk_int4_sword_at(const void *s, size_t i, int s16)
{
    return s16 ? qk_int4_sword(((const uint16_t *)s)[i]) : ((const uint32_t *)s)[i];
}

/* Where word i of row n's words (row_words of them; its codes, or its
 * scale words) lies in a weight's w or s: row-major, or with tiled the
 * step-major order, unit words per row and step (128 for codes, 1024 /
 * group for scales). row_words is a multiple of unit. */
static inline QK_HD size_t qk_int4_tile_index(int tiled, size_t n, size_t i, size_t row_words, size_t unit)
{
    if (!tiled)
        return n * row_words + i;
    return ((n / QK_QROWS) * (row_words / unit) + i / unit) * (QK_QROWS * unit) + (n % QK_QROWS) * unit + i % unit;
}

/* Whether an INT4 weight can take the tiled layout. */
static inline int qk_int4_tileable(const qk_qweight *q)
{
    return q->kind == QK_QW_INT4 && !q->perm && q->k_pad % 1024 == 0 &&
           (q->group == 32 || q->group == 64 || q->group == 128);
}

/* Byte offset of the 16-bit copy of a regular permutation in perm. */
static inline size_t qk_perm16_offset(int k_pad)
{
    return ((size_t)(k_pad + k_pad / 32) * 4 + 15) / 16 * 16;
}

/* The slot of input k in the INT4 GEMV's staged x (gemv_q.cuh
 * qg_load_xsm: piece v of chunk c at uint4 v * kc + c, kc = k_pad / 32). */
static inline int qk_perm16_slot(int k, int k_pad)
{
    return 8 * (((k >> 3) & 3) * (k_pad / 32) + (k >> 5)) + (k & 7);
}

/* Bytes a GEMV reads from this weight (packed weight + scales + perm). */
static inline size_t qk_qweight_bytes(const qk_qweight *w)
{
    return w->w_bytes + w->s_bytes + w->perm_bytes;
}

/* ---- kernels (kernels/gemv_multi.cu, gemv_{fp8,int4,nvfp4}.cu); device pointers ---- */

/* Decode GEMV: y[n] (+)= sum_k W[n,k] x[k] for n < w->n. x bf16 [w->k], 16-byte
 * aligned; dequantization in registers, fp32 accumulation, y fp32.
 * accumulate != 0 adds to y (fused residual). Returns 0 or the CUDA error
 * code (cudaErrorInvalidValue = 1 for a descriptor it cannot run). */
int qk_gemv_q(const qk_qweight *w, const uint16_t *x, float *y, int accumulate, struct CUstream_st *st);

/* Fused GEMV: nparts (1..QK_GEMV_MAX_PARTS) weights with the same K, any mix
 * of layouts, read the same x in ONE launch: y[i][n] (+)= W_i x. Used for
 * q/k/v, gate/up, and GDN qkv/z/a/b (quantized and BF16 together). Each part
 * keeps its own scales and global multiplier, so parts whose NVFP4 global
 * scales differ fuse without rescaling. */
int qk_gemv_multi(const qk_qweight *const *w, float *const *y, int nparts, const uint16_t *x,
                  int accumulate, struct CUstream_st *st);

/* qk_gemv_multi with the input RMSNorm folded in: x = bf16(h * rsqrt(mean(h^2)
 * + eps) * (1 + norm_w)) over the K values of h (fp32), bit-identical to what
 * qk_rmsnorm1p writes, computed by every block of the launch from h instead
 * of read from a separate kernel's output (decode: one launch less per
 * norm). Returns QK_GEMV_UNFUSED, launching nothing, where the launch cannot
 * (layouts without the staged-x kernels such as g_idx INT4, all-BF16 parts,
 * K > 8192): the caller then runs the norm and qk_gemv_multi. */
#define QK_GEMV_UNFUSED (-1)

/* Optional epilogue of a GDN in-projection (decode, one token): rows c < C of
 * part 0 (the q|k|v channels) also go through the causal conv + SiLU exactly
 * as qk_conv_silu with T = 1 does (out[c], state[c][3] shifted; w [C][4]),
 * by the lane that finishes row c, so the conv needs no launch of its own. */
typedef struct qk_conv_epi {
    const float *w;
    float *state;
    float *out;
    int C;
} qk_conv_epi;

int qk_gemv_multi_norm(const qk_qweight *const *w, float *const *y, int nparts, const float *h,
                       const float *norm_w, float eps, int accumulate, const qk_conv_epi *conv,
                       struct CUstream_st *st);

/* ---- mixture-of-experts decode (kernels/moe.cu) ----
 * The experts of one MoE layer as a device table of their descriptors, so
 * a captured decode graph can run whichever experts the router picks: the
 * expert indices are read on the device. Entry e * P + i is part i of
 * expert e (gate|up: P = 2, gate rows first; down: P = 1); every part has
 * the same logical shape [n, k]. */
typedef struct qk_moe_table {
    void *d;       /* device array of E * P flattened descriptors (qk_moe_table_bytes) */
    int E, P;
    int n, k;      /* each part's shape */
    int groups;    /* row groups per part (n_pad / QK_QROWS, the largest) */
    int kc_min;    /* the fewest 16-byte chunks per row among the parts */
    int kc_max;    /* the most */
    int kinds;     /* 1 << kind of every part, or'ed */
    int perm;      /* some part gathers x through a g_idx permutation */
    int body;      /* the decode body of gemv_q.cuh (QG_B_*) every part runs, else -1 */
} qk_moe_table;

/* Device bytes of a table of n descriptors. */
size_t qk_moe_table_bytes(int n);

/* Fills t for the E * P descriptors w (entry e * P + i as above) into the
 * device buffer dev of qk_moe_table_bytes(E * P) bytes (a synchronous
 * copy). 0 or cudaErrorInvalidValue (a descriptor the GEMV cannot run, or
 * parts of different shapes). */
int qk_moe_table_fill(const qk_qweight *const *w, int E, int P, void *dev, qk_moe_table *t);

/* For each of n (token, expert) pairs q, expert sel[q] (device int32) and
 * each part i: y[q * ys + i * n_part + r] = sum_k W[r, k] x[(q / xdiv) * xs
 * + k] for r < n_part (fp32, no accumulate). A decode step's gate|up: the
 * chosen experts share one x (xdiv = n); down: xdiv 1, xs the stride of
 * the per-pair inputs (a multiple of 8); prefill pairs are token-major, so
 * gate|up reads token q / Kt. order (device, or NULL for 0..n-1): the order
 * in which the pairs' blocks are launched (qk_moe_order). */
int qk_gemv_moe(const qk_moe_table *t, const int32_t *sel, int n, const int32_t *order, const uint16_t *x, int xdiv,
                int64_t xs, float *y, int64_t ys, struct CUstream_st *st);

/* Row groups per warp of qk_gemv_moe where every part's rows are at most 32
 * chunks of 16 bytes: 3 (the default) walks three at once, 1 one; the same
 * bits either way (A/B, QCHAT_MOE_GEMV_GROUPS). */
extern int qk_moe_gemv_groups;

/* A decode step's gate|up (one token) with its routing folded in: pair s
 * < K is the token's s-th choice among the E logits (logits[E] the shared
 * expert's gate), pair K (shared 1 or 2) the shared expert, entry E of t;
 * as qk_gemv_moe with xdiv = n, and sel / wts written as qk_moe_route
 * writes them (the same choices and bits). E <= 1024, K <= 32. */
int qk_gemv_moe_routed(const qk_moe_table *t, const float *logits, int E, int K, int shared, int32_t *sel, float *wts,
                       const uint16_t *x, float *y, int64_t ys, struct CUstream_st *st);

/* ---- long MoE prefill chunks: all experts in one grouped GEMM (kernels/moe_gemm.cu) ----
 * The pairs come sorted by expert with qk_moe_plan (kernels.h), which cuts
 * them into tiles of bm pairs of one expert (bm 32, 64 or 128). */
#define QK_MOE_BM_MIN 32

/* Whether a table can run qk_moe_dequant / qk_moe_gemm: n and k multiples
 * of 8, no g_idx permutation, P 1 or 2. */
int qk_moe_grouped_ok(const qk_moe_table *t);

/* The experts e0 <= e < e1 of the table as bf16, the values of
 * qk_dequant_q_bf16: expert e's part p at out + ((e - e0) * P + p) * n * k,
 * row stride k. Experts with no pairs in off (qk_moe_plan; NULL: none
 * skipped) are not written. */
int qk_moe_dequant(const qk_moe_table *t, int e0, int e1, const int32_t *off, uint16_t *out,
                   struct CUstream_st *st);

/* The pairs of experts e0 <= e < e1 (tiles tstart[e0] .. tstart[e1] of a
 * plan made with the same bm; max_tiles >= their number, e.g. pairs / bm
 * + e1 - e0):
 * sorted pair i reads x row (xo ? xo[i] / xdiv : i) (bf16, row stride
 * ldx) and the weights of its expert: from wdq laid out as qk_moe_dequant
 * writes them for e0, or (wdq NULL) the table's own parts, decoded to the
 * same bf16 values while loading, when qk_moe_gemm_in_place_ok. P = 2 (gate|up): y bf16 row i, column c < n = bf16(silu(g_c) *
 * u_c) from the fp32 sums (yo must be NULL); P = 1: y fp32 row (yo ? yo[i]
 * : i) = the n sums. bf16 operands on the tensor cores, fp32 accumulate. */
int qk_moe_gemm_in_place_ok(const qk_moe_table *t); /* one layout family: BF16, FP8, INT4 or FP4 */
int qk_moe_gemm(const qk_moe_table *t, const uint16_t *wdq, int e0, int e1, int bm, const int32_t *tstart,
                const int32_t *tiles, int max_tiles, const uint16_t *x, int64_t ldx, const int32_t *xo, int xdiv,
                void *y, int64_t ldy, const int32_t *yo, struct CUstream_st *st);

/* Launch variant of the GEMVs above (gemv_multi.cu lists them): 0 = the
 * default; others for A/B benchmarks and tests (QCHAT_GEMV_MODE). */
extern int qk_gemv_q_mode;

/* 1 when the calling thread's last qk_gemv_q / qk_gemv_multi(_norm) launch
 * ran the streamed INT4 kernel, 0 when it ran a walk (tests: which kernel a
 * shape gets). */
int qk_gemv_q_last_streamed(void);

/* Prefill helper: out bf16 [w->n][ld] (ld >= w->k) = W rounded to bf16 (round
 * to nearest even from the exact fp32 dequantized value), for a cuBLAS BF16
 * GEMM. Rows n < w->n, columns k < w->k are written; others untouched. */
int qk_dequant_q_bf16(const qk_qweight *w, uint16_t *out, int ld, struct CUstream_st *st);
/* Per layout (qk_dequant_q_bf16 dispatches on w->kind). */
int qk_dequant_fp8_bf16(const qk_qweight *w, uint16_t *out, int ld, struct CUstream_st *st);
int qk_dequant_int4_bf16(const qk_qweight *w, uint16_t *out, int ld, struct CUstream_st *st);
int qk_dequant_fp4_bf16(const qk_qweight *w, uint16_t *out, int ld, struct CUstream_st *st);

/* ---- host side (engine/cuda_repack.c) ---- */

struct qc_linear;
struct qc_err;

/* True when the format has a kernel-native layout here (fp8-*, gptq, awq,
 * ct-int, nvfp4-*, mxfp4-ct, bf16). Packing still refuses what the kernels
 * cannot run exactly (8-bit or 2-bit integers, int4 groups that are not a
 * multiple of 32, non-16-bit int4 scales, E5M2 weights, F16/F32 "bf16"). */
int qc_qweight_supported(int qc_format);

/* Packs a validated qc_linear into the kernel-native layout in host memory
 * (malloc'ed buffers owned by *out; free with qc_qweight_free_host). Returns
 * QC_OK, or QC_EXIT_CHECKPOINT (layout not representable, e.g. an int4 group
 * size that is not a multiple of 32 or scales that are not 16-bit) /
 * QC_EXIT_RESOURCE-like codes of util.h with err filled. */
int qc_qweight_pack(const struct qc_linear *l, qk_qweight *out, struct qc_err *err);
void qc_qweight_free_host(qk_qweight *w);

/* CPU reading of the packed host layout: rows [row0, row0+nrows) of W as
 * float (nrows x k), by the formulas the kernels use. Lets tests check that
 * packing preserved every weight without a GPU. */
void qc_qweight_unpack_rows(const qk_qweight *w, int64_t row0, int64_t nrows, float *out);

/* Copies a host-packed weight to the device (CUDA builds only): *dev gets the
 * same descriptor with device pointers; free with qc_qweight_free_dev. */
int qc_qweight_upload(const qk_qweight *host, qk_qweight *dev, struct qc_err *err);
void qc_qweight_free_dev(qk_qweight *dev);

/* qc_qweight_pack + qc_qweight_upload + free of the host copy. */
int qc_linear_to_qweight(const struct qc_linear *l, qk_qweight *dev, struct qc_err *err);

#ifdef __cplusplus
}
#endif

#endif
