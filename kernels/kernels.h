/* kernels.h — the C entry points of the CUDA kernels (the .cu files of kernels/).
 *
 * Host code (engine/cuda_backend.c, tests, bench) calls only these; CUDA C++
 * stays inside kernels/. Every pointer is a device pointer unless its comment
 * says "host". Every entry point launches on `st` and returns 0 or the CUDA
 * error code of the launch (cudaGetLastError), so callers can check each one.
 *
 * Conventions:
 *   bf16 values are stored as uint16_t (raw bits);
 *   the residual stream, GEMM/GEMV outputs, gates and states are fp32;
 *   every matmul input (norm outputs, SwiGLU, attention output) is bf16;
 *   W is a stored [N, K] row-major weight, y = W x;
 *   "pos" pointers hold the absolute position of the first token on the
 *   device, so a captured CUDA graph can replay with a new position. */
#ifndef QC_KERNELS_H
#define QC_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct CUstream_st;
typedef struct CUstream_st *qk_stream; /* == cudaStream_t */

/* Human-readable name of a CUDA error code returned by an entry point. */
const char *qk_error_string(int code);

/* ---- elementwise / norms (kernels/norm.cu) ---- */

/* out[t, :] = E[ids[t], :] as fp32; ids outside [0, V) give a zero row. */
int qk_embed(const uint16_t *E, const int32_t *ids, int T, int D, int V, float *out, qk_stream st);

/* Zero-centred RMSNorm: out = x / sqrt(mean(x^2) + eps) * (1 + w), per row of
 * length D. out_bf16 and/or out_f32 may be NULL. */
int qk_rmsnorm1p(const float *x, const float *w, float eps, int T, int D, uint16_t *out_bf16,
                 float *out_f32, qk_stream st);

/* GDN output norm: y = w * (o / sqrt(mean(o^2) + eps)) * silu(z) per V head of
 * dv values. o: [T, H*dv]; z row t starts at z + t*ld_z; out bf16 [T, H*dv]. */
int qk_gated_norm(const float *o, const float *z, int ld_z, const float *w, float eps, int T,
                  int H, int dv, uint16_t *out, qk_stream st);

/* out[t, i] = silu(gu[t*ld + i]) * gu[t*ld + I + i] (gate rows first), bf16.
 * pdl: a programmatic dependent launch where the stream allows (decode: its
 * blocks are resident as the gate|up GEMV's leave, and the down GEMV after it
 * lands early; 27B on an H100 +3.7 % before an INT4 down-projection, -0.8 %
 * before an FP8 one, BENCHMARKS.md). */
int qk_swiglu(const float *gu, int ld, int T, int I, uint16_t *out, int pdl, qk_stream st);

/* One token, out[p] = silu(gu[perm[p]]) * gu[I + perm[p]] for p < I (perm: I
 * values in 0..I-1): the SwiGLU written in the packed order of an act-order
 * down-projection's K, so that GEMV runs as if it had no permutation (the
 * engine's decode, cuda_backend.c swiglu_dec). pdl as qk_swiglu's. */
int qk_swiglu_perm(const float *gu, int I, const int32_t *perm, uint16_t *out, int pdl, qk_stream st);

/* y[i] += x[i] (fp32), n elements. */
int qk_add(float *y, const float *x, int64_t n, qk_stream st);

/* out[t, i] = bf16(x[t*ld + i]) for i < n. */
int qk_f32_to_bf16(const float *x, int ld, int T, int n, uint16_t *out, qk_stream st);

/* Fills n bf16 values with uniform random values in [-scale, scale]
 * (deterministic in seed); used by `qchat bench --synthetic`. */
int qk_fill_random_bf16(uint16_t *p, int64_t n, uint64_t seed, float scale, qk_stream st);
int qk_fill_random_f32(float *p, int64_t n, uint64_t seed, float lo, float hi, qk_stream st);

/* Random weights in a quantized kernel-native layout (kernels/fill_q.cu):
 * w's descriptor (quant.h) is complete and its device buffers allocated; the
 * weight, the scales (finite, positive) and, for NVFP4/MXFP4, w->gmul are set
 * so W is spread like a uniform +-wscale (deterministic in seed). */
struct qk_qweight;
int qk_fill_random_qweight(struct qk_qweight *w, uint64_t seed, float wscale, qk_stream st);

/* ---- matmul (kernels/gemv.cu, kernels/gemm.cu) ---- */

/* Decode GEMV: y[n] (+)= sum_k W[n,k] x[k]; W bf16 [N,K] (K % 8 == 0, rows
 * 16-byte aligned), x bf16 [K], fp32 accumulate. accumulate != 0 adds to y
 * (fused residual add). */
int qk_gemv_bf16(const uint16_t *W, const uint16_t *x, float *y, int N, int K, int accumulate,
                 qk_stream st);

/* Decode gate/up projection with SwiGLU fused: out[i] = bf16(silu(g_i) * u_i)
 * where g = W[0:I] x and u = W[I:2I] x (W_gu [2I, K], gate rows first). */
int qk_gemv_swiglu_bf16(const uint16_t *W, const uint16_t *x, uint16_t *out, int I, int K, qk_stream st);

/* cuBLAS handle + workspace owned by the caller (one per stream). */
typedef struct qk_blas qk_blas;
int qk_blas_create(qk_blas **out, qk_stream st, size_t workspace_bytes);
void qk_blas_free(qk_blas *b);
size_t qk_blas_workspace_bytes(const qk_blas *b);

/* Prefill GEMM: Y[t, n] = beta*Y[t, n] + sum_k W[n,k] X[t,k]; X bf16 [T,K],
 * Y fp32 [T,N] with row stride ldy (>= N). beta 0 or 1 (fused residual). */
int qk_gemm_bf16(qk_blas *b, const uint16_t *W, const uint16_t *X, float *Y, int ldy, int T,
                 int N, int K, float beta);

/* The same with a bf16 output (Y bf16 [T, ldy], beta 0): the prefill gate|up
 * projection, whose only reader is the SwiGLU, so the fp32 round trip is
 * traffic for nothing. */
int qk_gemm_bf16_out16(qk_blas *b, const uint16_t *W, const uint16_t *X, uint16_t *Y, int ldy, int T,
                       int N, int K);
/* Y[t, n] = sum_k W[n, k] X[t, k] all in fp32 (fp32 FMAs, no TF32): the MoE
 * router, whose top-k a bf16 rounding of its input would move. */
int qk_gemm_f32(qk_blas *b, const float *W, const float *X, float *Y, int ldy, int T, int N, int K);

/* ---- FP8 prefill GEMMs in FP8 through cuBLASLt (kernels/gemm_lt.cu) ---- */

/* cuBLASLt handle sharing b's stream and workspace; cc = compute capability
 * major*10+minor. Block-scaled FP8 runs only where cc is 9.x (Hopper), FP4
 * only on Blackwell (10.x, 12.x). */
typedef struct qk_lt qk_lt;
int qk_lt_create(qk_lt **out, qk_blas *b, int cc);
void qk_lt_free(qk_lt *lt);
size_t qk_lt_device_bytes(const qk_lt *lt); /* activation/scale buffers held */

/* Whether qk_gemm_q_lt runs this weight in FP8: QK_QW_FP8 with 128x128
 * blocks and K a multiple of 128, on sm_90. */
int qk_lt_fp8_eligible(const qk_lt *lt, const struct qk_qweight *w);

/* Prefill through the FP8 tensor cores: X bf16 [T, K] is quantized once to
 * e4m3 per token and 128 inputs (scale amax/448), then for every eligible part
 * i: Y[t, off[i] + n] = beta*Y + sum_k W_i[n,k] Xq[t,k] (Y fp32, or bf16 when
 * out16 with beta 0; row stride ldy). *done gets bit i for each part it ran;
 * the caller runs the others (exact dequantizing path). All parts share K. */
int qk_gemm_q_lt(qk_lt *lt, const struct qk_qweight *const *w, const int *off, int np, const uint16_t *X,
                 void *Y, int ldy, int T, float beta, int out16, unsigned *done);

/* The pieces, for tests: the activation quantizer (Q e4m3 [T][ldq], columns
 * K..ldq zero; scale of token t, group g at S[t*s_t + g*s_g]) and one
 * block-scaled GEMM on raw operands (W e4m3 [N][ldw], ws its 128x128 scale
 * grid with rows of ceil(K/128) rounded up to 4; Xq e4m3 [T][ldx], xs
 * [ceil(K/128)][T]). qk_lt_fp8_raw returns cudaErrorNotSupported when
 * cuBLASLt has no algorithm (or the GPU is not sm_90). */
int qk_quant_act_fp8(const uint16_t *X, int T, int K, int ldq, uint8_t *Q, float *S, int s_t, int s_g,
                     qk_stream st);
int qk_lt_fp8_raw(qk_lt *lt, const uint8_t *W, int ldw, const float *ws, const uint8_t *Xq, int ldx,
                  const float *xs, void *Y, int ldy, int N, int T, int K, float beta, int out16);

/* NVFP4 weights on Blackwell (cc 10.x / 12.x) through cuBLASLt e2m1 with
 * VEC16_UE4M3 scales: qk_gemm_q_lt takes that path there (UNTESTED: no such
 * card has run it). Its pieces run on any GPU and are tested: the activation
 * quantizer (X -> e2m1 Q [T][Kq/2] + e4m3 scale per 16 in cuBLAS's 128x4
 * tiles, sf of qk_fp4_sf_bytes(T, Kq) bytes; f4 device floats: [0] amax,
 * [1] tensor multiplier amax/2688) and the weight rearrangement (repacked
 * words -> published e2m1 bytes [n_pad][k_pad/2], scales -> tiles). */
int qk_lt_fp4_eligible(const qk_lt *lt, const struct qk_qweight *w);
size_t qk_fp4_sf_bytes(int rows, int K);
int qk_quant_act_nvfp4(const uint16_t *X, int T, int K, int Kq, uint8_t *Q, uint8_t *sf, float *f4, qk_stream st);
int qk_fp4_weight_unpack(const struct qk_qweight *w, uint8_t *wq, uint8_t *sf, qk_stream st);

/* qk_swiglu over a bf16 gate|up input. */
int qk_swiglu_b16(const uint16_t *gu, int ld, int T, int I, uint16_t *out, qk_stream st);

/* ---- Gated DeltaNet (kernels/gdn.cu) ---- */

/* Causal depthwise conv (width 4) + SiLU over C channels for T tokens:
 * x row t at x + t*ld_x (raw projection output), w fp32 [C,4] (w[ch,3] the
 * current token), state fp32 [C,3] (oldest first; updated to the last 3 raw
 * inputs), out fp32 [T, C]. */
int qk_conv_silu(const float *x, int ld_x, const float *w, float *state, int T, int C, float *out,
                 qk_stream st);

/* beta = sigmoid(b), g = neg_exp_a * softplus(a + dt_bias) per token and V
 * head, where neg_exp_a = -exp(A_log) (formed once at load, fp32); b/a row t
 * at b + t*ld, a + t*ld. Outputs [T, Hv]. */
int qk_gdn_gates(const float *b, const float *a, int ld, const float *neg_exp_a, const float *dt_bias,
                 int T, int Hv, float *beta, float *g, qk_stream st);

/* In place on c [T, ld_c]: L2-normalise q (cols [0, Hk*dk)) and k (cols
 * [Hk*dk, 2*Hk*dk)) per head (eps 1e-6 inside the sqrt), then scale q by
 * 1/sqrt(dk). */
int qk_l2norm_qk(float *c, int ld_c, int T, int Hk, int dk, qk_stream st);

/* Scratch bytes qk_gdn_prefill needs for T tokens. */
size_t qk_gdn_prefill_scratch(int T, int Hv, int dk, int dv);

/* Chunked (C = 64) Gated DeltaNet over T tokens of one sequence.
 * c [T, ld_c]: q | k | v (q, k already L2-normalised and q scaled); beta, g
 * [T, Hv]; state fp32 [Hv, dk, dv] (S[h][i][j], updated); out o fp32 [T,
 * Hv*dv]. dk == dv, one of 32, 64, 128; Hv % Hk == 0. */
int qk_gdn_prefill(const float *c, int ld_c, const float *beta, const float *g, float *state,
                   int T, int Hk, int Hv, int dk, int dv, void *scratch, float *out, qk_stream st);
/* qk_gdn_prefill in its two launches (same arguments): prep is parallel over
 * chunks and heads, scan runs the chunks in order. */
int qk_gdn_prefill_prep(const float *c, int ld_c, const float *beta, const float *g, int T, int Hk,
                        int Hv, int dk, int dv, void *scratch, qk_stream st);
int qk_gdn_prefill_scan(float *state, int T, int Hk, int Hv, int dk, int dv, void *scratch, float *out,
                        qk_stream st);

/* One decode step, fused: gates from b/a, L2 norms of q/k, the delta rule on
 * the fp32 state, then the output norm * silu(z). c: conv output [conv_dim]
 * (q | k | v), b, a: [Hv], z: [Hv*dv], out bf16 [Hv*dv]. dk == dv as above. */
int qk_gdn_step(const float *c, const float *b, const float *a, const float *neg_exp_a,
                const float *dt_bias, const float *z, const float *norm_w, float eps,
                float *state, int Hk, int Hv, int dk, int dv, uint16_t *out, qk_stream st);

/* ---- attention (kernels/attn.cu) ---- */

/* From the fused projection qkv [T, ld] = [q0 g0 q1 g1 ... (H*2*hd) | k (KV*hd)
 * | v (KV*hd)]: q = norm1p(q, qn) then partial RoPE (first rot dims, NeoX
 * pairing), written to q_out fp32 [T, H, hd]; gate to gate_out fp32 [T, H*hd];
 * k = RoPE(norm1p(k, kn)) and v to the caches at position *pos + t.
 * Caches bf16 [KV, max_ctx, hd]. */
int qk_attn_prep(const float *qkv, int ld, int T, int H, int KV, int hd, int rot, float theta,
                 const float *qn, const float *kn, float eps, const int32_t *pos, uint16_t *kc,
                 uint16_t *vc, int max_ctx, float *q_out, float *gate_out, qk_stream st);

/* Scratch bytes for qk_attn with nsplit > 1. */
size_t qk_attn_scratch(int T, int H, int hd, int nsplit);

/* Causal GQA attention of T queries at positions *pos + t over the cache,
 * scale 1/sqrt(hd), fp32 softmax, output multiplied by sigmoid(gate), bf16
 * [T, H*hd]. nsplit > 1 splits the keys (split-KV, decode) and needs scratch.
 * hd <= 256, H % KV == 0, H/KV <= 16. */
int qk_attn(const float *q, const float *gate, const uint16_t *kc, const uint16_t *vc,
            int max_ctx, int T, int H, int KV, int hd, const int32_t *pos, int nsplit,
            void *scratch, uint16_t *out, qk_stream st);

/* The one-token split-KV kernel qk_attn runs (tests and QCHAT_ATTN_MODE for
 * A/B runs). Where the GPU has bulk copies (sm_90+) and the head size is
 * 256: 0 = each warp streams its own run of keys through its own shared-
 * memory stages, both products on the tensor cores (q and p as hi + lo bf16
 * pairs), where a KV head serves at most 8 query heads and the stages fit,
 * else 3; 3 = K/V tiles shared by a block's warps, the same products; 2 =
 * the same tiles with fp32 FMAs. 1 (and every other GPU or head size) =
 * each lane's loads from global memory. They agree to fp32 rounding. */
extern int qk_attn_dec_mode;

/* For the tests (kernels/test_hooks.cu): one block that lets the next PDL
 * launch start at once, sleeps delay_ns, then copies bytes[j] (a multiple
 * of 16, aligned) from src[j] to dst[j], j < n <= QK_TEST_LATE_MAX: a writer
 * that finishes long after its dependents have started. */
#define QK_TEST_LATE_MAX 4
int qk_test_late_copy(void *const *dst, const void *const *src, const size_t *bytes, int n, int64_t delay_ns,
                      qk_stream st);

/* Which small decode kernels may be PDL launches (A/B, QCHAT_PDL_SMALL; all
 * by default): bit 0 the SwiGLU (where its caller asks, qk_swiglu's pdl),
 * bit 1 the attention prep, bit 2 the attention combine. */
extern int qk_pdl_small;

/* Long prefills on the tensor cores (kernels/attn_gemm.cu): the same causal
 * GQA attention as qk_attn (nsplit 1) through cuBLAS, for T queries at
 * positions pos0 + t (pos0 given on the host), in blocks of query rows sized
 * to the scratch. Q and the probabilities are rounded to bf16 (error ~3e-3
 * relative). Uses b's stream. */
int qk_attn_prefill_gemm(qk_blas *b, const float *q, const float *gate, const uint16_t *kc,
                         const uint16_t *vc, int max_ctx, int T, int H, int KV, int hd, int pos0,
                         void *scratch, size_t scratch_bytes, uint16_t *out);
/* Query rows one block of qk_attn_prefill_gemm can hold in scratch_bytes. */
size_t qk_attn_gemm_rows(size_t scratch_bytes, int n_keys, int H, int hd);

/* Prefill attention, flash style on the tensor cores (kernels/attn_flash.cu):
 * the same causal GQA attention as qk_attn (nsplit 1) for T queries at
 * positions pos0 + t (pos0 on the host, pos0 + T <= max_ctx), no scratch.
 * Q and the probabilities are rounded to bf16 (error ~3e-3 relative).
 * qk_attn_flash_ok says whether the shape is served (hd 32, 64, 128 or 256;
 * H % KV == 0); for others qk_attn_flash returns cudaErrorInvalidValue. It
 * picks the tiling by chunk length and shared memory (attn_flash.cu).
 * qk_attn_flash_cfg picks the tiling (bm query rows 64 or 128, bn keys 32 or
 * 64, stages 1 or 2 buffers each for K and V; 0 = default) for tests and
 * timing; cudaErrorInvalidValue where its shared memory does not fit. */
int qk_attn_flash_ok(int H, int KV, int hd);
int qk_attn_flash(const float *q, const float *gate, const uint16_t *kc, const uint16_t *vc, int max_ctx,
                  int T, int H, int KV, int hd, int pos0, uint16_t *out, qk_stream st);
int qk_attn_flash_cfg(const float *q, const float *gate, const uint16_t *kc, const uint16_t *vc, int max_ctx,
                      int T, int H, int KV, int hd, int pos0, uint16_t *out, qk_stream st, int bm, int bn,
                      int stages);

/* ---- sampling (kernels/sample.cu) ---- */

typedef struct qk_sample_params {
    float temperature; /* <= 0: greedy (argmax) */
    int top_k;         /* 0: off */
    float top_p;       /* >= 1: off */
    uint64_t seed;     /* random stream; the draw uses (seed, step) */
    uint64_t step;
} qk_sample_params;

/* Picks one id among logits[0, n_valid) (ids >= n_valid never chosen) and
 * writes it to *out_id (device). Greedy ties pick the lowest id. */
int qk_sample(const float *logits, int n_valid, qk_sample_params p, int32_t *out_id,
              qk_stream st);

/* Support for the engine's host sampler (engine/sampler.c), so that decode
 * copies a few candidates instead of the logits row. qk_sample_penalise
 * applies sampler.c's penalties in place to logits[ids[j]] (n distinct ids,
 * counts[j] times generated; ids >= n_valid skipped), bit for bit as
 * sampler.c does. qk_sample_topc writes the C largest finite entries of
 * logits[0, n_valid) (ties: lower ids) to out: out[0] = how many (fewer than
 * C only when fewer are finite), out[1..1+C) their ids, then C floats, their
 * values, in no particular order, then out[1 + 2C] the number of NaN or
 * infinite entries of the row (2 + 2C ints in all); C == 1 is the argmax. */
int qk_sample_penalise(float *logits, int n_valid, const int32_t *ids, const int32_t *counts, int n,
                       float rep, float pres, float freq, qk_stream st);
int qk_sample_topc(const float *logits, int n_valid, int C, int32_t *out, qk_stream st);

/* ---- mixture of experts (kernels/moe.cu; qwen35-model.md §3.4) ---- */

/* Per token t: softmax over the E router logits logits[t * ld + e], the K
 * largest (ties to the lower index), their probabilities renormalised to
 * sum 1: sel[t * Kt + j] (int32, best first) and wts[t * Kt + j], where
 * Kt = K + (shared != 0). shared 1 or 2: entry K is the shared expert,
 * index E, at weight 1 (1) or sigmoid(logits[t * ld + E]) (2). E <= 1024,
 * K <= 32. The selection compares logits, which orders the experts as their
 * probabilities do. */
int qk_moe_route(const float *logits, int ld, int T, int E, int K, int shared, int32_t *sel, float *wts,
                 qk_stream st);

/* The MoE block's input for T tokens in one launch: xb (bf16) and, if xf,
 * fp32 = the RMSNorm qk_rmsnorm1p computes of h (fp32 [T][D]) with weight
 * norm_w (the same bits), and y[t * ldy + n] = sum_k W[n][k] xf[t][k], the
 * router logits (W fp32 [N][D]). D % 4 == 0, D <= 8192, 16-byte aligned
 * h, norm_w, W, xf, 8-byte aligned xb. For decode (T = 1): every block
 * reads the router's 1/8th share of W and recomputes the norm. */
int qk_moe_router(const float *h, const float *norm_w, float eps, int T, int D, const float *W, int N, uint16_t *xb,
                  float *xf, float *y, int ldy, qk_stream st);

/* Prefill: order[0..n) a permutation of the pairs 0..n-1 with the pairs of
 * each expert sel[i] (in [0, E), E <= 1025) together and the experts
 * ascending, so the pairs that read one expert's weights run side by side
 * (qk_gemv_moe's order). Within an expert the order is not fixed. */
int qk_moe_order(const int32_t *sel, int n, int E, int32_t *order, qk_stream st);

/* qk_moe_order, and the plan of the grouped expert GEMM (quant.h
 * qk_moe_gemm): off[0..E] where each expert's pairs start in order (off[E]
 * = n), tstart[0..E] its first tile of bm pairs (tstart[E] = all tiles)
 * and tiles (16-byte aligned, room for n / bm + E entries of 4 int32):
 * {expert, first position, end position, 0}. */
int qk_moe_plan(const int32_t *sel, int n, int E, int bm, int32_t *order, int32_t *off, int32_t *tstart,
                int32_t *tiles, qk_stream st);

/* h[t, c] += sum_j w[t, j] * ye[(t * K + j) * D + c] + g_t * ysh[t * D + c]
 * with w = wts (NULL: 1) and g_t = sigmoid(sg[t * sg_ld]) (sg NULL: 1); ysh
 * NULL: no shared expert. */
int qk_moe_combine(float *h, const float *ye, const float *wts, int K, const float *ysh, const float *sg, int sg_ld,
                   int T, int D, qk_stream st);

/* Prefill: out[i, :] = x[rows[i], :] (bf16 rows of D values, D % 8 == 0). */
int qk_moe_gather(const uint16_t *x, const int32_t *rows, int n, int D, uint16_t *out, qk_stream st);

/* Prefill: y[rows[i], c] += w[i] * ye[i * D + c] (no two i share a row). */
int qk_moe_scatter_add(float *y, const float *ye, const int32_t *rows, const float *w, int n, int D, qk_stream st);

#ifdef __cplusplus
}
#endif

#endif
