/* test_quantize.c — `qchat quantize` (engine/quantize.c).
 *
 * 1. The scalar encoders round to nearest (ties to even) and saturate, checked
 *    exhaustively against the exact decoders of util.h / dequant.h.
 * 2. Each per-matrix kernel, on an awkward matrix (partial fp8 blocks, a zero
 *    block / row), is decoded here straight from the format formulas of
 *    checkpoint-formats.md and must stay within that format's round-to-nearest
 *    bound of the source; a wrong scale convention lands far outside it.
 * 3. Whole checkpoints (text-only tied fixture, the sharded VL wrapper with MTP,
 *    the fused-expert MoE) quantized to every target are opened by the
 *    checkpoint reader: every Linear must be classified as the target format
 *    (in_proj_a/b, lm_head, mtp.fc, routers 16-bit), the reader's dequantization
 *    must equal this file's independent decoding bit for bit, the error against
 *    the source weights must be RTN-sized, and quantization_config must carry
 *    the published parameters.
 * 4. Bad input: an already-quantized source, an occupied destination, a
 *    missing source. */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ckpt.h"
#include "dequant.h"
#include "format.h"
#include "harness.h"
#include "quantize.h"
#include "util.h"

static uint64_t rs = 0x9E3779B97F4A7C15ull;
static float rnd_normal(void)
{
    float s = 0;
    for (int i = 0; i < 4; i++) {
        rs ^= rs << 13;
        rs ^= rs >> 7;
        rs ^= rs << 17;
        s += (float)((rs >> 40) & 0xFFFFFF) / 16777216.0f - 0.5f;
    }
    return s * 1.7f;
}

/* ---- 1. scalar encoders --------------------------------------------------- */

static void test_scalars(void)
{
    int bad = 0, first = -1;
    for (int c = 0; c < 256; c++) {
        if ((c & 0x7F) == 0x7F)
            continue;
        if (qc_f32_to_e4m3(qc_e4m3_to_f32((uint8_t)c)) != c && !(c == 0x80)) {
            bad++;
            if (first < 0) first = c;
        }
    }
    CHECK("e4m3_roundtrip_all_codes", bad == 0, "%d codes differ, first 0x%02x", bad, first);
    /* midpoints between neighbours go to the even code */
    bad = 0;
    for (int c = 0; c < 0x7E; c++) {
        float mid = 0.5f * (qc_e4m3_to_f32((uint8_t)c) + qc_e4m3_to_f32((uint8_t)(c + 1)));
        int want = (c & 1) ? c + 1 : c;
        if (qc_f32_to_e4m3(mid) != want || qc_f32_to_e4m3(-mid) != (want | 0x80))
            bad++;
    }
    CHECK("e4m3_ties_to_even", bad == 0, "%d midpoints misrounded", bad);
    CHECK("e4m3_saturates", qc_f32_to_e4m3(460.0f) == 0x7E && qc_f32_to_e4m3(1e9f) == 0x7E &&
          qc_f32_to_e4m3(-INFINITY) == 0xFE && qc_f32_to_e4m3(NAN) == 0x7F,
          "460 -> 0x%02x, 1e9 -> 0x%02x", qc_f32_to_e4m3(460.0f), qc_f32_to_e4m3(1e9f));
    CHECK("e4m3_subnormal", qc_f32_to_e4m3(0.001953125f) == 0x01 &&
          qc_f32_to_e4m3(0.0009765625f) == 0x00 && qc_f32_to_e4m3(0.0029296875f) == 0x02,
          "2^-9 -> 0x%02x", qc_f32_to_e4m3(0.001953125f));

    bad = 0;
    for (int c = 1; c < 16; c++)
        if (c != 8 && qc_f32_to_e2m1(qc_e2m1_to_f32((uint8_t)c)) != c)
            bad++;
    CHECK("e2m1_roundtrip_all_codes", bad == 0, "%d codes differ", bad);
    static const float ties[][2] = {{0.25f, 0}, {0.75f, 1}, {1.25f, 1}, {1.75f, 2},
                                    {2.5f, 2},  {3.5f, 4},  {5.0f, 4},  {7.0f, 6}, {0.3f, 0.5f}};
    bad = 0;
    for (size_t i = 0; i < sizeof ties / sizeof ties[0]; i++)
        if (qc_e2m1_to_f32(qc_f32_to_e2m1(ties[i][0])) != ties[i][1] ||
            qc_e2m1_to_f32(qc_f32_to_e2m1(-ties[i][0])) != -ties[i][1])
            bad++;
    CHECK("e2m1_ties_and_saturation", bad == 0, "%d cases wrong", bad);

    bad = 0;
    first = -1;
    for (int h = 0; h < 65536; h++) {
        if ((h & 0x7C00) == 0x7C00 && (h & 0x3FF))
            continue; /* NaN */
        if (qc_f32_to_f16(qc_f16_to_f32((uint16_t)h)) != h) {
            bad++;
            if (first < 0) first = h;
        }
    }
    CHECK("f16_roundtrip_all_codes", bad == 0, "%d codes differ, first 0x%04x", bad, first);
    /* 1 + 2^-11 is the midpoint of 1 and 1+2^-10: even is 1.0 */
    CHECK("f16_ties_to_even", qc_f32_to_f16(1.0f + 0x1p-11f) == 0x3C00 &&
          qc_f32_to_f16(1.0f + 3 * 0x1p-11f) == 0x3C02 && qc_f32_to_f16(70000.0f) == 0x7C00,
          "1+2^-11 -> 0x%04x", qc_f32_to_f16(1.0f + 0x1p-11f));
}

/* ---- 2. per-matrix kernels ------------------------------------------------- */

static float e2m1_ref(uint8_t c)
{
    static const float m[8] = {0, 0.5f, 1, 1.5f, 2, 3, 4, 6};
    return (c & 8) ? -m[c & 7] : m[c & 7];
}

static double rel_err(const float *a, const float *b, int64_t n)
{
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        den += (double)a[i] * a[i];
    }
    return sqrt(num / den);
}

static void test_kernels(void)
{
    /* fp8: 200 x 160 has partial blocks on both edges; block (0,1) is zero */
    int64_t n = 200, k = 160;
    float *w = malloc(sizeof(float) * (size_t)(n * k)), *dq = malloc(sizeof(float) * (size_t)(n * k));
    for (int64_t i = 0; i < n * k; i++)
        w[i] = rnd_normal() * 0.05f;
    for (int64_t r = 0; r < 128; r++)
        for (int64_t c = 128; c < k; c++)
            w[r * k + c] = 0;
    uint8_t *q = malloc((size_t)(n * k));
    uint16_t sc[4];
    qc_quant_fp8_block(w, n, k, q, sc);
    int bad = 0;
    for (int64_t r = 0; r < n; r++)
        for (int64_t c = 0; c < k; c++) {
            float s = qc_bf16_to_f32(sc[(r / 128) * 2 + c / 128]);
            dq[r * k + c] = qc_e4m3_to_f32(q[r * k + c]) * s; /* scale_inv is a multiplier */
            /* 3 mantissa bits: half an ulp is 2^-4 relative; subnormals 2^-10 * s */
            if (fabsf(dq[r * k + c] - w[r * k + c]) > fabsf(w[r * k + c]) * 0.0625f + s * 0x1p-10f)
                bad++;
        }
    float amax = 0;
    for (int64_t r = 128; r < n; r++)
        for (int64_t c = 128; c < k; c++)
            amax = fmaxf(amax, fabsf(w[r * k + c]));
    CHECK("fp8_block_within_rtn_bound", bad == 0, "%d elements outside half an e4m3 ulp", bad);
    CHECK("fp8_block_scale_is_amax_over_448", sc[3] == qc_f32_to_bf16(amax / 448.0f),
          "edge block scale 0x%04x, want 0x%04x", sc[3], qc_f32_to_bf16(amax / 448.0f));
    CHECK("fp8_block_zero_block", dq[5 * k + 140] == 0 && qc_bf16_to_f32(sc[1]) > 0,
          "zero block decodes to %g with scale %g", dq[5 * k + 140], qc_bf16_to_f32(sc[1]));
    double e = rel_err(w, dq, n * k);
    CHECK("fp8_block_rel_error", e > 0.005 && e < 0.04, "relative error %.4f", e);
    free(q);

    /* gptq: 64 x 256, group 128, row 3 zero */
    n = 64;
    k = 256;
    for (int64_t i = 0; i < n * k; i++)
        w[i] = rnd_normal() * 0.05f;
    for (int64_t c = 0; c < k; c++)
        w[3 * k + c] = 0;
    int32_t *qw = malloc(sizeof(int32_t) * (size_t)(k / 8 * n));
    int32_t *qz = malloc(sizeof(int32_t) * (size_t)(k / 128 * n / 8));
    uint16_t *scl = malloc(2 * (size_t)(k / 128 * n));
    CHECK("gptq_quantizes", qc_quant_gptq_sym(w, n, k, 128, NULL, qw, qz, scl) == 0, "out of memory");
    bad = 0;
    int badz = 0;
    for (int64_t i = 0; i < k / 128 * n / 8; i++)
        if ((uint32_t)qz[i] != 0x77777777u)
            badz++;
    for (int64_t r = 0; r < n; r++)
        for (int64_t c = 0; c < k; c++) {
            uint32_t word = (uint32_t)qw[(c / 8) * n + r];
            int qq = (int)((word >> (4 * (c % 8))) & 15);
            int z = (int)(((uint32_t)qz[(c / 128) * (n / 8) + r / 8] >> (4 * (r % 8))) & 15) + 1;
            float s = qc_f16_to_f32(scl[(c / 128) * n + r]);
            dq[r * k + c] = s * (float)(qq - z);
            if (fabsf(dq[r * k + c] - w[r * k + c]) > 0.5f * s * 1.0001f)
                bad++;
        }
    CHECK("gptq_v1_zeros_are_z_minus_1", badz == 0, "%d qzeros words not 0x77777777", badz);
    CHECK("gptq_within_half_step", bad == 0, "%d elements beyond half a step", bad);
    CHECK("gptq_zero_row", dq[3 * k + 17] == 0, "zero row decodes to %g", dq[3 * k + 17]);
    e = rel_err(w, dq, n * k);
    CHECK("gptq_rel_error", e > 0.02 && e < 0.15, "relative error %.4f", e);
    /* act-order: groups of 128 inputs in a permuted order of K, each group's
     * scale fitted to its own members */
    int32_t *gi = malloc(sizeof(int32_t) * (size_t)k);
    int cnt[2] = {0, 0}, same = 1;
    CHECK("gptq_act_order_quantizes",
          qc_quant_act_order(k, 128, 42, gi) == 0 && qc_quant_gptq_sym(w, n, k, 128, gi, qw, qz, scl) == 0,
          "out of memory");
    for (int64_t c = 0; c < k; c++) {
        if (gi[c] >= 0 && gi[c] < 2) cnt[gi[c]]++;
        same &= gi[c] == c / 128;
    }
    bad = 0;
    for (int64_t r = 0; r < n; r++)
        for (int64_t c = 0; c < k; c++) {
            int qq = (int)(((uint32_t)qw[(c / 8) * n + r] >> (4 * (c % 8))) & 15);
            float sc = qc_f16_to_f32(scl[gi[c] * n + r]);
            dq[r * k + c] = sc * (float)(qq - 8);
            if (fabsf(dq[r * k + c] - w[r * k + c]) > 0.5f * sc * 1.0001f)
                bad++;
        }
    CHECK("gptq_act_order_groups", cnt[0] == 128 && cnt[1] == 128 && !same, "group sizes %d, %d%s", cnt[0], cnt[1],
          same ? ", not permuted" : "");
    CHECK("gptq_act_order_within_half_step", bad == 0, "%d elements beyond half a step", bad);
    free(gi);
    free(qw);
    free(qz);
    free(scl);

    /* nvfp4: 48 x 96, one zero block */
    n = 48;
    k = 96;
    for (int64_t i = 0; i < n * k; i++)
        w[i] = rnd_normal() * 0.05f;
    for (int c = 32; c < 48; c++)
        w[7 * k + c] = 0;
    uint8_t *pk = malloc((size_t)(n * k / 2)), *bs = malloc((size_t)(n * k / 16));
    float gs;
    qc_quant_nvfp4(w, n, k, pk, bs, &gs);
    amax = 0;
    for (int64_t i = 0; i < n * k; i++)
        amax = fmaxf(amax, fabsf(w[i]));
    bad = 0;
    for (int64_t r = 0; r < n; r++)
        for (int64_t c = 0; c < k; c++) {
            uint8_t byte = pk[r * (k / 2) + c / 2];
            uint8_t code = (c & 1) ? byte >> 4 : byte & 15; /* low nibble = even k */
            float eff = qc_e4m3_to_f32(bs[r * (k / 16) + c / 16]) / gs; /* global is a divisor */
            dq[r * k + c] = e2m1_ref(code) * eff;
            /* widest e2m1 gap is 2 (4..6): half of it, plus the e4m3 rounding of
             * the block scale (at most 2^-4 relative) when the top saturates */
            if (fabsf(dq[r * k + c] - w[r * k + c]) > eff * 1.0f + fabsf(w[r * k + c]) * 0.0625f)
                bad++;
        }
    CHECK("nvfp4_global_scale", fabsf(gs - 2688.0f / amax) <= 1e-6f * gs, "global %g, want %g",
          gs, 2688.0f / amax);
    CHECK("nvfp4_within_rtn_bound", bad == 0, "%d elements outside the bound", bad);
    CHECK("nvfp4_zero_block", bs[7 * 6 + 2] == 0 && dq[7 * k + 40] == 0,
          "zero block scale 0x%02x", bs[7 * 6 + 2]);
    e = rel_err(w, dq, n * k);
    CHECK("nvfp4_rel_error", e > 0.02 && e < 0.15, "relative error %.4f", e);
    free(pk);
    free(bs);
    free(w);
    free(dq);
}

/* ---- 3. whole checkpoints ------------------------------------------------- */

/* Independent decoding of one Linear from its tensors, by the formulas. */
static void ref_dequant(const qc_linear *l, float *out)
{
    int64_t n = l->n, k = l->k;
    for (int64_t r = 0; r < n; r++)
        for (int64_t c = 0; c < k; c++) {
            float v = 0;
            if (l->format == QC_FMT_FP8_BLOCK) {
                int64_t kb = l->scale->shape[1];
                v = qc_e4m3_to_f32(((const uint8_t *)l->weight->data)[r * k + c]) *
                    qc_tensor_get_f32(l->scale, (r / 128) * kb + c / 128);
            } else if (l->format == QC_FMT_GPTQ) {
                int g = l->group_size;
                uint32_t word, zw;
                memcpy(&word, (const uint8_t *)l->weight->data + 4 * ((c / 8) * n + r), 4);
                memcpy(&zw, (const uint8_t *)l->zeros->data + 4 * ((c / g) * (n / 8) + r / 8), 4);
                int qq = (int)((word >> (4 * (c % 8))) & 15);
                int z = (int)((zw >> (4 * (r % 8))) & 15) + 1;
                int64_t gr = l->g_idx ? (int64_t)qc_tensor_get_f32(l->g_idx, c) : c / g;
                if (l->g_idx) memcpy(&zw, (const uint8_t *)l->zeros->data + 4 * (gr * (n / 8) + r / 8), 4);
                z = (int)((zw >> (4 * (r % 8))) & 15) + 1;
                v = qc_tensor_get_f32(l->scale, gr * n + r) * (float)(qq - z);
            } else if (l->format == QC_FMT_NVFP4_CT) {
                uint8_t byte = ((const uint8_t *)l->weight->data)[r * (k / 2) + c / 2];
                uint8_t code = (c & 1) ? byte >> 4 : byte & 15;
                float s = qc_e4m3_to_f32(((const uint8_t *)l->scale->data)[r * (k / 16) + c / 16]);
                v = e2m1_ref(code) * (s / qc_tensor_get_f32(l->global_scale, 0));
            } else {
                v = qc_tensor_get_f32(l->weight, r * k + c);
            }
            out[r * k + c] = v;
        }
}

static bool kept_16bit(const char *name)
{
    size_t n = strlen(name);
    return strstr(name, "in_proj_a") || strstr(name, "in_proj_b") || !strcmp(name, "lm_head") ||
           !strcmp(name, "mtp.fc") || (n >= 8 && !strcmp(name + n - 8, "mlp.gate")) ||
           strstr(name, "shared_expert_gate");
}

/* act: int4 with act-order (g_idx written; every group group_size long;
 * the projections of one input share it). */
static void check_checkpoint(const char *model, qc_quant_to to, const char *tmpdir, bool act)
{
    static const char *const tname[] = {"fp8", "int4", "nvfp4"};
    static const qc_format fmt[] = {QC_FMT_FP8_BLOCK, QC_FMT_GPTQ, QC_FMT_NVFP4_CT};
    static const double maxerr[] = {0.04, 0.15, 0.14};
    char src[1024], dst[1200], name[256];
    th_model_dir(src, sizeof src, model);
    snprintf(dst, sizeof dst, "%s/%s-%s%s", tmpdir, model, tname[to], act ? "-actorder" : "");
    qc_quant_opts o = {.to = to, .group_size = 0, .force = false, .act_order = act};
    qc_quant_report rep;
    qc_err err = {0};
    int rc = qc_quantize_checkpoint(src, dst, &o, &rep, &err);
    snprintf(name, sizeof name, "quantize_%s_%s%s_writes", model, tname[to], act ? "_actorder" : "");
    CHECK(name, rc == 0 && rep.n_quantized > 0, "rc %d: %s", rc, err.msg);
    if (rc)
        return;
    qc_ckpt *q = NULL, *s = NULL;
    rc = qc_ckpt_open(dst, &q, &err);
    snprintf(name, sizeof name, "quantize_%s_%s_reader_opens", model, tname[to]);
    CHECK(name, rc == 0, "%s", err.msg);
    if (rc)
        return;
    if (qc_ckpt_open(src, &s, &err)) {
        CHECK("quantize_source_opens", 0, "%s", err.msg);
        qc_ckpt_free(q);
        return;
    }
    int wrong_fmt = 0, not_exact = 0, too_far = 0, missing = 0, nq = 0, bad_gidx = 0;
    const qc_tensor *gi_prev = NULL; /* the last q_proj's / gate_proj's g_idx */
    double worst = 0;
    char worst_name[200] = "", wrong_name[200] = "";
    for (size_t i = 0; i < qc_ckpt_module_count(q); i++) {
        const qc_module *m = qc_ckpt_module_at(q, i);
        const qc_linear *l = &m->lin;
        bool keep = kept_16bit(l->name) || m->tied;
        qc_format want = keep ? QC_FMT_BF16 : fmt[to];
        if (l->format != want && !(keep && (l->format == QC_FMT_F16 || l->format == QC_FMT_F32))) {
            wrong_fmt++;
            snprintf(wrong_name, sizeof wrong_name, "%s is %s", l->name, qc_format_name(l->format));
        }
        const qc_linear *sl = NULL;
        if (m->expert >= 0) {
            char mlp[200];
            snprintf(mlp, sizeof mlp, "%.*s", (int)(strstr(l->name, ".experts.") - l->name), l->name);
            const char *proj = strrchr(l->name, '.') + 1;
            sl = qc_ckpt_expert(s, mlp, m->expert,
                                !strcmp(proj, "gate_proj") ? QC_EXPERT_GATE
                                : !strcmp(proj, "up_proj") ? QC_EXPERT_UP : QC_EXPERT_DOWN);
        } else {
            sl = m->tied ? qc_ckpt_lm_head(s) : qc_ckpt_linear(s, l->name);
        }
        if (!sl || sl->n != l->n || sl->k != l->k) {
            missing++;
            continue;
        }
        if (to == QC_QUANT_INT4 && !keep && m->expert < 0) { /* g_idx exactly when asked, G per group */
            if (!act != !l->g_idx) {
                bad_gidx++;
            } else if (act) {
                int64_t ng = l->k / l->group_size, *cnt = calloc((size_t)ng, sizeof *cnt);
                for (int64_t c = 0; c < l->k; c++) {
                    int64_t g = (int64_t)qc_tensor_get_f32(l->g_idx, c);
                    if (g >= 0 && g < ng) cnt[g]++;
                }
                for (int64_t g = 0; g < ng; g++) bad_gidx += cnt[g] != l->group_size;
                free(cnt);
                const char *proj = strrchr(l->name, '.') + 1;
                if (!strcmp(proj, "q_proj") || !strcmp(proj, "gate_proj")) gi_prev = l->g_idx;
                else if ((!strcmp(proj, "k_proj") || !strcmp(proj, "v_proj") || !strcmp(proj, "up_proj")) &&
                         (!gi_prev || gi_prev->nbytes != l->g_idx->nbytes ||
                          memcmp(gi_prev->data, l->g_idx->data, l->g_idx->nbytes)))
                    bad_gidx++;
            }
        }
        float *a = malloc(sizeof(float) * (size_t)(l->n * l->k));
        float *b = malloc(sizeof(float) * (size_t)(l->n * l->k));
        float *src_w = malloc(sizeof(float) * (size_t)(l->n * l->k));
        qc_linear_dequant(l, a);
        ref_dequant(l, b);
        qc_linear_dequant(sl, src_w);
        if (memcmp(a, b, sizeof(float) * (size_t)(l->n * l->k)))
            not_exact++;
        double e = rel_err(src_w, a, l->n * l->k);
        if (!keep) {
            nq++;
            if (e > worst) {
                worst = e;
                snprintf(worst_name, sizeof worst_name, "%s", l->name);
            }
            if (e > maxerr[to] || e < 1e-4)
                too_far++;
        } else if (e != 0) {
            too_far++;
        }
        free(a);
        free(b);
        free(src_w);
    }
    snprintf(name, sizeof name, "quantize_%s_%s_classified", model, tname[to]);
    CHECK(name, wrong_fmt == 0 && missing == 0 && nq == rep.n_quantized,
          "%d wrong (%s), %d missing, %d quantized vs %d reported", wrong_fmt, wrong_name, missing,
          nq, rep.n_quantized);
    snprintf(name, sizeof name, "quantize_%s_%s_reader_dequant_matches_formula", model, tname[to]);
    CHECK(name, not_exact == 0, "%d Linears differ from the format formula", not_exact);
    snprintf(name, sizeof name, "quantize_%s_%s_rtn_error", model, tname[to]);
    CHECK(name, too_far == 0, "%d Linears off (worst %.4f at %s)", too_far, worst, worst_name);

    const qc_quant_config *qcfg = &qc_ckpt_config(q)->quant;
    bool cfg_ok = qcfg->present;
    if (to == QC_QUANT_FP8)
        cfg_ok = cfg_ok && !strcmp(qcfg->quant_method, "fp8") && qcfg->block_n == 128 &&
                 qcfg->block_k == 128;
    else if (to == QC_QUANT_INT4)
        cfg_ok = cfg_ok && !strcmp(qcfg->quant_method, "auto-round") && qcfg->bits == 4 &&
                 qcfg->sym && qcfg->group_size == rep.group_size &&
                 !strcmp(qcfg->format, "auto_round:auto_gptq");
    else
        cfg_ok = cfg_ok && !strcmp(qcfg->quant_method, "compressed-tensors") &&
                 !strcmp(qcfg->format, "nvfp4-pack-quantized");
    if (to == QC_QUANT_INT4) {
        snprintf(name, sizeof name, "quantize_%s_%s%s_g_idx", model, tname[to], act ? "_actorder" : "");
        CHECK(name, bad_gidx == 0, "%d Linears with a wrong or missing g_idx", bad_gidx);
    }
    snprintf(name, sizeof name, "quantize_%s_%s_quantization_config", model, tname[to]);
    CHECK(name, cfg_ok, "method %s format %s bits %d group %d", qcfg->quant_method, qcfg->format,
          qcfg->bits, qcfg->group_size);
    /* everything that is not a Linear is carried over byte for byte */
    int diff = 0;
    const qc_st *qs = qc_ckpt_st(s);
    for (size_t i = 0; i < qc_st_count(qs); i++) {
        const qc_tensor *t = qc_st_at(qs, i);
        if (!strstr(t->name, "norm") && !strstr(t->name, "A_log") && !strstr(t->name, "dt_bias") &&
            !strstr(t->name, "conv1d") && !strstr(t->name, "embed_tokens"))
            continue;
        const qc_tensor *u = qc_ckpt_tensor(q, t->name);
        if (!u || u->dtype != t->dtype || u->nbytes != t->nbytes || memcmp(u->data, t->data, t->nbytes))
            diff++;
    }
    snprintf(name, sizeof name, "quantize_%s_%s_keeps_other_tensors", model, tname[to]);
    CHECK(name, diff == 0, "%d norm/conv/A_log/dt_bias/embed tensors changed", diff);
    qc_ckpt_free(q);
    qc_ckpt_free(s);
}

static void test_errors(const char *tmpdir)
{
    char src[1024], dst[1200];
    qc_quant_opts o = {.to = QC_QUANT_INT4};
    qc_quant_report rep;
    qc_err err = {0};
    th_model_dir(src, sizeof src, "tiny-qwen35-fp8");
    snprintf(dst, sizeof dst, "%s/requant", tmpdir);
    int rc = qc_quantize_checkpoint(src, dst, &o, &rep, &err);
    CHECK("quantize_refuses_quantized_source", rc == QC_EXIT_CHECKPOINT && strstr(err.msg, "already quantized"),
          "rc %d: %s", rc, err.msg);
    th_model_dir(src, sizeof src, "tiny-qwen36-text");
    snprintf(dst, sizeof dst, "%s/tiny-qwen36-text-int4", tmpdir); /* written above */
    rc = qc_quantize_checkpoint(src, dst, &o, &rep, &err);
    CHECK("quantize_refuses_occupied_dst", rc == QC_EXIT_USAGE && strstr(err.msg, "--force"),
          "rc %d: %s", rc, err.msg);
    o.force = true;
    rc = qc_quantize_checkpoint(src, dst, &o, &rep, &err);
    CHECK("quantize_force_overwrites", rc == 0, "rc %d: %s", rc, err.msg);
    snprintf(src, sizeof src, "%s/does-not-exist", tmpdir);
    rc = qc_quantize_checkpoint(src, dst, &o, &rep, &err);
    CHECK("quantize_missing_source", rc == QC_EXIT_CHECKPOINT, "rc %d: %s", rc, err.msg);
}

int main(void)
{
    test_scalars();
    test_kernels();
    char tmp[] = "/tmp/qchat-quantize.XXXXXX";
    if (!mkdtemp(tmp)) {
        CHECK("quantize_tmpdir", 0, "mkdtemp failed");
        return th_exit();
    }
    char probe[1024];
    th_model_dir(probe, sizeof probe, "tiny-qwen36-text");
    if (access(probe, R_OK) != 0) {
        th_skip("quantize_checkpoints", "fixtures not found (set QCHAT_FIXTURES)");
    } else {
        static const char *const models[] = {"tiny-qwen36-text", "tiny-qwen35", "tiny-qwen35-moe"};
        for (size_t m = 0; m < 3; m++)
            for (int t = 0; t < 3; t++)
                check_checkpoint(models[m], (qc_quant_to)t, tmp, false);
        check_checkpoint("tiny-qwen35", QC_QUANT_INT4, tmp, true);
        test_errors(tmp);
    }
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", tmp);
    return th_exit();
}
