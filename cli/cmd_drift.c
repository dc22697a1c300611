/* cmd_drift.c — `qchat drift REF_DIR DIR --ids FILE [--json] [--chunk N]
 * [--device auto|cpu|cuda] [--threads N]`: the TUI's /drift measure as a
 * script: teacher-forced over the whitespace-separated ids in FILE (`-` =
 * stdin), every next-token distribution of DIR against REF_DIR's: KL(ref ||
 * active) mean and max per token, top-1 agreement and the first divergent
 * position (tui/drift.h does the work). */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd.h"
#include "drift.h"
#include "qchat.h"

static int usage(const char *msg)
{
    if (msg)
        fprintf(stderr, "qchat drift: %s\n", msg);
    fprintf(stderr, "usage: qchat drift REF_DIR DIR --ids FILE|- [--json] [--chunk N] [--device auto|cpu|cuda] "
                    "[--threads N]\n");
    return QC_EXIT_USAGE;
}

/* Whitespace-separated non-negative decimal ids. */
static int load_ids(const char *path, int32_t **out, int *n, qc_err *err)
{
    FILE *f = strcmp(path, "-") ? fopen(path, "r") : stdin;
    if (!f)
        return qc_err_set(err, QC_EXIT_USAGE, "%s: %s", path, strerror(errno));
    int cap = 256, cnt = 0, rc = 0;
    int32_t *ids = malloc(sizeof *ids * (size_t)cap);
    char word[32];
    while (ids && !rc && fscanf(f, "%31s", word) == 1) {
        char *end;
        errno = 0;
        long v = strtol(word, &end, 10);
        if (*end || end == word || errno || v < 0 || v > INT32_MAX) {
            rc = qc_err_set(err, QC_EXIT_USAGE, "%s: id %d is not a non-negative integer: \"%s\"", path, cnt + 1,
                            word);
            break;
        }
        if (cnt == cap) {
            int32_t *t = realloc(ids, sizeof *ids * (size_t)cap * 2);
            if (!t)
                break;
            ids = t;
            cap *= 2;
        }
        ids[cnt++] = (int32_t)v;
    }
    if (f != stdin)
        fclose(f);
    if (!ids)
        return qc_err_set(err, QC_EXIT_RUNTIME, "out of memory for ids");
    if (!rc && cnt < 2)
        rc = qc_err_set(err, QC_EXIT_USAGE, "%s: need at least two token ids, found %d", path, cnt);
    if (rc) {
        free(ids);
        return rc;
    }
    *out = ids;
    *n = cnt;
    return 0;
}

int cmd_drift(int argc, char **argv)
{
    const char *dirs[2] = {NULL, NULL}, *ids_path = NULL;
    int nd = 0, chunk = 64;
    bool json = false;
    qc_load_opts lo = {.device = QC_DEVICE_AUTO};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            printf("usage: qchat drift REF_DIR DIR --ids FILE|- [--json] [--chunk N] [--device auto|cpu|cuda] "
                   "[--threads N]\n");
            return 0;
        } else if (!strcmp(a, "--json")) {
            json = true;
        } else if (!strcmp(a, "--ids") && v) {
            ids_path = v;
            i++;
        } else if (!strcmp(a, "--chunk") && v) {
            chunk = atoi(v);
            if (chunk < 1 || chunk > 4096)
                return usage("--chunk takes 1..4096");
            i++;
        } else if (!strcmp(a, "--threads") && v) {
            lo.threads = atoi(v);
            if (lo.threads < 0)
                return usage("--threads takes a non-negative number");
            i++;
        } else if (!strcmp(a, "--device") && v) {
            if (!strcmp(v, "cpu"))
                lo.device = QC_DEVICE_CPU;
            else if (!strcmp(v, "cuda"))
                lo.device = QC_DEVICE_CUDA;
            else if (strcmp(v, "auto"))
                return usage("--device takes auto, cpu or cuda");
            i++;
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "qchat drift: unknown option or missing value: %s\n", a);
            return usage(NULL);
        } else if (nd < 2) {
            dirs[nd++] = a;
        } else {
            return usage("two checkpoint directories: REF_DIR then DIR");
        }
    }
    if (nd != 2 || !ids_path)
        return usage(nd != 2 ? "two checkpoint directories: REF_DIR then DIR" : "--ids FILE is required");
    qc_err err = {0};
    int32_t *ids = NULL;
    int n = 0;
    qc_model *m[2] = {NULL, NULL};
    qc_session *s[2] = {NULL, NULL};
    drift_stats st;
    drift_stats_init(&st);
    int rc = load_ids(ids_path, &ids, &n, &err);
    for (int k = 0; k < 2 && !rc; k++)
        if ((rc = qc_model_load(dirs[k], &lo, &m[k], &err)) == 0)
            rc = qc_session_new(m[k], n + 1, &s[k], &err);
    if (!rc)
        rc = drift_score_ids(s[0], m[0], s[1], m[1], ids, n, 1, chunk, NULL, NULL, NULL, &st, &err);
    if (!rc) {
        qc_model_info ri, ai;
        qc_model_get_info(m[0], &ri);
        qc_model_get_info(m[1], &ai);
        char tr[64] = "", ta[64] = "";
        if (st.first_div >= 0) {
            drift_token_text(qc_model_tokenizer(m[1]), st.first_ref, tr, sizeof tr);
            drift_token_text(qc_model_tokenizer(m[1]), st.first_act, ta, sizeof ta);
        }
        if (json) {
            cJSON *o = cJSON_CreateObject();
            cJSON_AddStringToObject(o, "reference", dirs[0]);
            cJSON_AddStringToObject(o, "reference_family", ri.family);
            cJSON_AddStringToObject(o, "active", dirs[1]);
            cJSON_AddStringToObject(o, "active_family", ai.family);
            cJSON_AddNumberToObject(o, "positions", st.n);
            cJSON_AddNumberToObject(o, "skipped", st.n_bad);
            cJSON_AddNumberToObject(o, "kl_mean", drift_stats_kl_mean(&st));
            cJSON_AddNumberToObject(o, "kl_max", st.kl_max);
            cJSON_AddNumberToObject(o, "kl_max_position", st.kl_max_pos);
            cJSON_AddNumberToObject(o, "top1_agree", st.agree);
            cJSON_AddNumberToObject(o, "top1_agreement_pct", drift_stats_agree_pct(&st));
            if (st.first_div >= 0) {
                cJSON *d = cJSON_AddObjectToObject(o, "first_divergence");
                cJSON_AddNumberToObject(d, "position", st.first_div);
                cJSON_AddNumberToObject(d, "reference_id", st.first_ref);
                cJSON_AddNumberToObject(d, "active_id", st.first_act);
                cJSON_AddStringToObject(d, "reference_text", tr);
                cJSON_AddStringToObject(d, "active_text", ta);
            } else {
                cJSON_AddNullToObject(o, "first_divergence");
            }
            char *txt = cJSON_PrintUnformatted(o);
            if (txt)
                printf("%s\n", txt);
            free(txt);
            cJSON_Delete(o);
        } else {
            printf("reference        %s (%s)\nactive           %s (%s)\npositions        %d\n", dirs[0], ri.family,
                   dirs[1], ai.family, st.n);
            printf("KL(ref||active)  mean %.6g  max %.6g nats (position %d)\n", drift_stats_kl_mean(&st), st.kl_max,
                   st.kl_max_pos);
            printf("top-1 agreement  %.2f %% (%d/%d)\n", drift_stats_agree_pct(&st), st.agree, st.n);
            if (st.first_div >= 0)
                printf("first divergence position %d: reference %s, active %s\n", st.first_div, tr, ta);
            else
                printf("first divergence none\n");
        }
    } else {
        fprintf(stderr, "qchat drift: %s\n", err.msg);
    }
    for (int k = 0; k < 2; k++) {
        if (s[k])
            qc_session_free(s[k]);
        qc_model_free(m[k]);
    }
    free(ids);
    return rc;
}
