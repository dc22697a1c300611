/* test_tui_drift.c — the drift maths (tui/drift.c) on hand-made logits with
 * known answers, and the teacher-forced scorer over the engine against the
 * same maths applied to the fixtures' reference logits (golden.safetensors of
 * tiny-qwen35 and tiny-qwen35-fp8). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "drift.h"
#include "harness.h"
#include "safetensors.h"
#include "tokenizer.h"

static int close_to(double a, double b, double tol) { return fabs(a - b) <= tol; }

static void test_maths(void)
{
    int32_t tr, ta;
    /* Identical rows: KL exactly 0, same top-1. */
    float r1[5] = {1.5f, -2.0f, 3.25f, 0.0f, -7.0f};
    double kl = drift_kl_row(r1, r1, 5, &tr, &ta);
    CHECK("kl_identical_zero", kl == 0 && tr == 2 && ta == 2, "kl %g top %d/%d", kl, tr, ta);
    /* A uniform shift of the logits is the same distribution. */
    float r1s[5];
    for (int i = 0; i < 5; i++)
        r1s[i] = r1[i] + 100.0f;
    kl = drift_kl_row(r1, r1s, 5, &tr, &ta);
    CHECK("kl_shift_invariant", kl < 1e-12, "kl %g", kl);

    /* P = (1/2, 1/2), Q = (3/4, 1/4): KL = 1/2 ln(4/3). Id 2 is padding
     * (n_tokens = 2) and must not count, however large its logit. */
    float p2[3] = {0.0f, 0.0f, 50.0f}, q2[3] = {(float)log(3.0), 0.0f, 80.0f};
    double expect = 0.5 * log(4.0 / 3.0);
    kl = drift_kl_row(p2, q2, 2, &tr, &ta);
    CHECK("kl_two_tokens", close_to(kl, expect, 1e-7), "kl %.10f expected %.10f", kl, expect);
    CHECK("kl_padding_excluded", tr == 0 && ta == 0, "top %d/%d", tr, ta);
    /* The other direction differs: KL(Q||P) = 3/4 ln(3/2) + 1/4 ln(1/2). */
    kl = drift_kl_row(q2, p2, 2, &tr, &ta);
    expect = 0.75 * log(1.5) + 0.25 * log(0.5);
    CHECK("kl_asymmetric", close_to(kl, expect, 1e-7), "kl %.10f expected %.10f", kl, expect);

    /* Large logits stay exact in double (no overflow in exp). */
    float big_p[2] = {1000.0f, 1000.0f}, big_q[2] = {1000.0f + (float)log(3.0), 1000.0f};
    kl = drift_kl_row(big_p, big_q, 2, &tr, &ta);
    CHECK("kl_large_logits", close_to(kl, 0.5 * log(4.0 / 3.0), 1e-4), "kl %g", kl);

    /* A -inf on the reference side is probability 0: no contribution. Q
     * putting 0 where P does not: infinite. No finite logit: NaN. */
    float pi[3] = {0.0f, -INFINITY, 0.0f}, qi[3] = {0.0f, 5.0f, 0.0f};
    kl = drift_kl_row(pi, qi, 3, &tr, &ta);
    double e3 = log(0.5 / (1.0 / (2.0 + exp(5.0)))); /* P=1/2 on ids 0 and 2 */
    CHECK("kl_ref_minus_inf", close_to(kl, e3, 1e-6) && tr == 0 && ta == 1, "kl %g expected %g top %d/%d", kl, e3,
          tr, ta);
    kl = drift_kl_row(qi, pi, 3, &tr, &ta);
    CHECK("kl_act_zero_prob_inf", isinf(kl) && kl > 0, "kl %g", kl);
    float none[2] = {NAN, -INFINITY};
    kl = drift_kl_row(none, r1, 2, &tr, &ta);
    CHECK("kl_no_finite_nan", isnan(kl) && tr == -1, "kl %g top %d", kl, tr);
    /* Ties: the lowest id is the argmax. */
    float tie[3] = {1.0f, 2.0f, 2.0f};
    drift_kl_row(tie, tie, 3, &tr, &ta);
    CHECK("top1_tie_lowest_id", tr == 1 && ta == 1, "top %d/%d", tr, ta);

    /* Accumulated statistics over four positions. */
    drift_stats s;
    drift_stats_init(&s);
    CHECK("stats_empty", s.n == 0 && drift_stats_kl_mean(&s) == 0 && drift_stats_agree_pct(&s) == 0 &&
          s.first_div == -1, "n %d", s.n);
    float a0[3] = {3, 1, 0}, b0[3] = {3, 1, 0};  /* same: KL 0, agree */
    float a1[3] = {0, 0, -1e30f}, b1[3] = {(float)log(3.0), 0, -1e30f}; /* KL 1/2 ln 4/3, agree (tie -> 0) */
    float a2[3] = {0, 2, 0}, b2[3] = {2, 0, 0};  /* disagree: 1 vs 0 */
    float a3[3] = {0, 0, 4}, b3[3] = {0, 4, 0};  /* disagree again */
    drift_stats_add(&s, a0, b0, 3, 10);
    drift_stats_add(&s, a1, b1, 3, 11);
    drift_stats_add(&s, a2, b2, 3, 12);
    drift_stats_add(&s, a3, b3, 3, 13);
    drift_stats_add(&s, none, none, 2, 14); /* skipped */
    double k1 = drift_kl_row(a1, b1, 3, &tr, &ta), k2 = drift_kl_row(a2, b2, 3, &tr, &ta),
           k3 = drift_kl_row(a3, b3, 3, &tr, &ta);
    CHECK("stats_counts", s.n == 4 && s.n_bad == 1 && s.agree == 2, "n %d bad %d agree %d", s.n, s.n_bad, s.agree);
    CHECK("stats_agree_pct", drift_stats_agree_pct(&s) == 50.0, "%g", drift_stats_agree_pct(&s));
    CHECK("stats_kl_mean", close_to(drift_stats_kl_mean(&s), (k1 + k2 + k3) / 4, 1e-12) &&
          close_to(k1, 0.5 * log(4.0 / 3.0), 1e-6), "mean %g", drift_stats_kl_mean(&s));
    double kmax = k2 > k3 ? k2 : k3;
    CHECK("stats_kl_max", s.kl_max == kmax && s.kl_max_pos == (k2 > k3 ? 12 : 13), "max %g at %d", s.kl_max,
          s.kl_max_pos);
    CHECK("stats_first_divergence", s.first_div == 12 && s.first_ref == 1 && s.first_act == 0, "at %d: %d vs %d",
          s.first_div, s.first_ref, s.first_act);
}

static const qc_tensor *need(const qc_st *g, const char *name)
{
    const qc_tensor *t = qc_st_find(g, name);
    return t && (t->dtype == QC_DT_F32 || t->dtype == QC_DT_I32) ? t : NULL;
}

/* The engine's teacher-forced drift of FP8 against BF16 on the golden tokens
 * agrees with the drift of the two reference (float32 transformers) logit
 * sets; a model against itself drifts by exactly 0. */
static void test_engine(void)
{
    char bdir[1024], fdir[1024], path[1200];
    th_model_dir(bdir, sizeof bdir, "tiny-qwen35");
    th_model_dir(fdir, sizeof fdir, "tiny-qwen35-fp8");
    qc_err err = {0};
    qc_st *gb = NULL, *gf = NULL;
    snprintf(path, sizeof path, "%s/golden.safetensors", bdir);
    if (qc_st_open_file(path, &gb, &err)) {
        th_skip("drift_engine", "fixtures not found");
        return;
    }
    snprintf(path, sizeof path, "%s/golden.safetensors", fdir);
    int rc = qc_st_open_file(path, &gf, &err);
    CHECK("golden_fp8_opens", rc == 0, "%s", err.msg);
    const qc_tensor *tb = gb ? need(gb, "tokens") : NULL, *lb = gb ? need(gb, "logits") : NULL;
    const qc_tensor *tf = gf ? need(gf, "tokens") : NULL, *lf = gf ? need(gf, "logits") : NULL;
    int same_tokens = tb && tf && tb->numel == tf->numel && !memcmp(tb->data, tf->data, tb->nbytes);
    CHECK("golden_same_tokens", same_tokens && lb && lf, "the two goldens use different tokens");
    qc_model *mb = NULL, *mf = NULL;
    qc_load_opts lo = {QC_DEVICE_CPU, 1, 0};
    if (rc || !same_tokens || !lb || !lf || qc_model_load(bdir, &lo, &mb, &err) || qc_model_load(fdir, &lo, &mf, &err)) {
        CHECK("drift_models_load", 0, "%s", err.msg);
        goto out;
    }
    qc_model_info info;
    qc_model_get_info(mb, &info);
    const int T = (int)tb->numel, V = info.vocab_size;
    const int32_t *ids = tb->data;
    /* Reference: the maths over the goldens' rows (row t predicts ids[t+1]). */
    drift_stats want;
    drift_stats_init(&want);
    for (int t = 0; t + 1 < T; t++)
        drift_stats_add(&want, (const float *)lb->data + (size_t)t * V, (const float *)lf->data + (size_t)t * V,
                        info.n_tokens, t + 1);
    qc_session *s1 = NULL, *s2 = NULL;
    drift_stats got;
    drift_stats_init(&got);
    rc = qc_session_new(mb, 0, &s1, &err);
    if (!rc)
        rc = qc_session_new(mf, 0, &s2, &err);
    if (!rc)
        rc = drift_score_ids(s1, mb, s2, mf, ids, T, 1, 37, NULL, NULL, NULL, &got, &err);
    CHECK("drift_score_runs", rc == 0 && got.n == T - 1, "rc %d n %d: %s", rc, got.n, err.msg);
    double wm = drift_stats_kl_mean(&want), gm = drift_stats_kl_mean(&got);
    CHECK("drift_nonzero_fp8", wm > 0 && gm > 0, "golden %g engine %g", wm, gm);
    CHECK("drift_kl_matches_golden", fabs(gm - wm) <= 0.02 * wm + 1e-9 && fabs(got.kl_max - want.kl_max) <=
          0.05 * want.kl_max + 1e-9, "mean engine %.6g golden %.6g; max %.6g vs %.6g", gm, wm, got.kl_max, want.kl_max);
    CHECK("drift_agree_matches_golden", abs(got.agree - want.agree) <= 2 && got.agree > 0,
          "engine %d golden %d of %d", got.agree, want.agree, T - 1);
    /* Scoring only a tail: the same numbers as the full run's tail. */
    drift_stats tail, tail_want;
    drift_stats_init(&tail);
    drift_stats_init(&tail_want);
    qc_session_reset(s1);
    qc_session_reset(s2);
    rc = drift_score_ids(s1, mb, s2, mf, ids, T, 150, 16, NULL, NULL, NULL, &tail, &err);
    for (int t = 149; t + 1 < T; t++)
        drift_stats_add(&tail_want, (const float *)lb->data + (size_t)t * V, (const float *)lf->data + (size_t)t * V,
                        info.n_tokens, t + 1);
    CHECK("drift_tail", rc == 0 && tail.n == T - 150 &&
          fabs(drift_stats_kl_mean(&tail) - drift_stats_kl_mean(&tail_want)) <= 0.02 * drift_stats_kl_mean(&tail_want),
          "rc %d n %d mean %g vs %g", rc, tail.n, drift_stats_kl_mean(&tail), drift_stats_kl_mean(&tail_want));
    /* The same model on both sides. */
    qc_session_free(s2);
    s2 = NULL;
    qc_session_reset(s1);
    drift_stats self;
    drift_stats_init(&self);
    rc = qc_session_new(mb, 0, &s2, &err);
    if (!rc)
        rc = drift_score_ids(s1, mb, s2, mb, ids, 40, 1, 0, NULL, NULL, NULL, &self, &err);
    CHECK("drift_self_zero", rc == 0 && self.n == 39 && self.kl_max == 0 && self.agree == 39 && self.first_div == -1,
          "rc %d n %d max %g agree %d", rc, self.n, self.kl_max, self.agree);
    /* Bad input: a non-empty session, out-of-range ids, nothing to score. */
    int32_t bad[3] = {1, 999999, 2};
    qc_session_reset(s1);
    qc_session_reset(s2);
    rc = drift_score_ids(s1, mb, s2, mb, bad, 3, 1, 0, NULL, NULL, NULL, &self, &err);
    CHECK("drift_rejects_bad_id", rc == QC_EXIT_USAGE && strstr(err.msg, "999999"), "rc %d %s", rc, err.msg);
    rc = drift_score_ids(s1, mb, s2, mb, ids, 3, 4, 0, NULL, NULL, NULL, &self, &err);
    CHECK("drift_rejects_empty_range", rc == QC_EXIT_USAGE, "rc %d", rc);
    /* Token text for the first-divergence line. */
    char txt[64];
    const qc_tokenizer *tok = qc_model_tokenizer(mb);
    int32_t nl = -1;
    for (int32_t i = 0; i < 1000 && nl < 0; i++) {
        size_t len;
        const char *b = qc_tokenizer_token_bytes(tok, i, &len);
        if (b && len == 1 && b[0] == '\n')
            nl = i;
    }
    if (nl >= 0) {
        drift_token_text(tok, nl, txt, sizeof txt);
        CHECK("token_text_escapes", !strcmp(txt, "\"\\n\""), "%s", txt);
    }
    drift_token_text(tok, 1000000, txt, sizeof txt);
    CHECK("token_text_unknown_id", !strcmp(txt, "<id 1000000>"), "%s", txt);
    drift_token_text(tok, ids[0], txt, 8);
    CHECK("token_text_short_buffer", strlen(txt) < 8 && txt[0] == '"', "%s", txt);
    qc_session_free(s1);
    qc_session_free(s2);
out:
    qc_model_free(mb);
    qc_model_free(mf);
    qc_st_free(gb);
    qc_st_free(gf);
}

int main(void)
{
    test_maths();
    test_engine();
    return th_exit();
}
