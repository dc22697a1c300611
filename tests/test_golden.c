/* test_golden.c — the CPU engine against the reference outputs of every
 * fixture model (fixtures/README.md): logits and final-normed states of the
 * 200 golden tokens to relative L2 <= 1e-4 with prefill chunks of 200, 1 and
 * 37; the greedy continuation of tokens[:16] where the reference margin is
 * clear; rewind; `qchat score` end to end (when QCHAT_BIN is set); and
 * checkpoints that cannot be loaded (missing tensor, wrong shape) failing
 * with exit status 3 and a message naming the tensor. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"
#include "ckpt.h"
#include "qchat.h"
#include "safetensors.h"

static const char *models[] = {
    "tiny-qwen35",          "tiny-qwen35-fp8",   "tiny-qwen35-int4-autoround", "tiny-qwen35-int4-awq",
    "tiny-qwen35-nvfp4",    "tiny-qwen35-nvfp4-modelopt", "tiny-qwen36-text", "tiny-qwen36-text-fp8",
    "tiny-qwen35-moe",      "tiny-qwen35-moe-fp8",
};

static int argmax(const float *x, int n)
{
    int b = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b])
            b = i;
    return b;
}

static const qc_tensor *need(const qc_st *st, const char *name)
{
    const qc_tensor *t = qc_st_find(st, name);
    return t;
}

/* Runs a shell command; returns its exit status (-1 when it did not exit). */
static int run_cmd(const char *cmd)
{
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void test_model(const char *name, const char *qchat_bin, const char *tmpdir)
{
    char dir[1024], path[1200], cname[160];
    th_model_dir(dir, sizeof dir, name);
    snprintf(path, sizeof path, "%s/golden.safetensors", dir);
    qc_err err = {0};
    qc_st *g = NULL;
    if (qc_st_open_file(path, &g, &err)) {
        snprintf(cname, sizeof cname, "golden_%s", name);
        CHECK(cname, 0, "%s", err.msg);
        return;
    }
    const qc_tensor *tt = need(g, "tokens"), *tl = need(g, "logits"), *tn = need(g, "final_norm");
    qc_model *m = NULL;
    qc_load_opts lo = {QC_DEVICE_CPU, 0, 0};
    int rc = qc_model_load(dir, &lo, &m, &err);
    snprintf(cname, sizeof cname, "load_%s", name);
    CHECK(cname, rc == 0 && tt && tl && tn, "rc %d: %s", rc, err.msg);
    if (rc || !tt || !tl || !tn) {
        qc_st_free(g);
        qc_model_free(m);
        return;
    }
    qc_model_info info;
    qc_model_get_info(m, &info);
    const int T = (int)tt->numel, V = info.vocab_size, D = info.hidden_size;
    const int32_t *ids = tt->data;
    const float *ref_l = tl->data, *ref_n = tn->data;
    snprintf(cname, sizeof cname, "golden_shape_%s", name);
    CHECK(cname, tl->shape[0] == T && tl->shape[1] == V && tn->shape[1] == D, "golden [%lld,%lld] vs V %d",
          (long long)tl->shape[0], (long long)tl->shape[1], V);

    float *lg = malloc(sizeof(float) * (size_t)T * V), *nm = malloc(sizeof(float) * (size_t)T * D);
    qc_session *s = NULL;
    rc = qc_session_new(m, 0, &s, &err);
    const int chunks[] = {200, 1, 37};
    for (int ci = 0; ci < 3 && !rc; ci++) {
        qc_session_reset(s);
        rc = qc_session_prefill_full(s, ids, T, chunks[ci], lg, nm, &err);
        double el = rc ? INFINITY : th_rel_l2(lg, ref_l, (size_t)T * V);
        double en = rc ? INFINITY : th_rel_l2(nm, ref_n, (size_t)T * D);
        printf("# %s chunk %d: logits rel L2 %.2e, final_norm %.2e\n", name, chunks[ci], el, en);
        snprintf(cname, sizeof cname, "logits_chunk%d_%s", chunks[ci], name);
        CHECK(cname, el <= 1e-4, "rel L2 %.3g (%s)", el, rc ? err.msg : "");
        snprintf(cname, sizeof cname, "final_norm_chunk%d_%s", chunks[ci], name);
        CHECK(cname, en <= 1e-4, "rel L2 %.3g", en);
    }

    /* Memory report by category after a 200-token sequence. */
    if (!rc) {
        qc_mem_report rep;
        qc_model_mem(m, s, &rep);
        uint64_t w = 0;
        for (int i = QC_MEM_W_BF16; i <= QC_MEM_W_OTHER; i++)
            w += rep.bytes[i];
        snprintf(cname, sizeof cname, "mem_report_%s", name);
        CHECK(cname, w > 0 && rep.bytes[QC_MEM_KV] >= 200 * 2 * sizeof(float) && rep.bytes[QC_MEM_GDN_STATE] > 0 &&
                         rep.bytes[QC_MEM_SCRATCH] > 0 && rep.total > rep.bytes[QC_MEM_FREE],
              "weights %llu kv %llu gdn %llu scratch %llu total %llu", (unsigned long long)w,
              (unsigned long long)rep.bytes[QC_MEM_KV], (unsigned long long)rep.bytes[QC_MEM_GDN_STATE],
              (unsigned long long)rep.bytes[QC_MEM_SCRATCH], (unsigned long long)rep.total);
        /* the checkpoint's mapped weights, less the MTP head no engine reads */
        qc_ckpt *ck = NULL;
        qc_err e2 = {0};
        int64_t want = -1;
        if (qc_ckpt_open(dir, &ck, &e2) == 0) {
            qc_ckpt_mem cm;
            qc_ckpt_memory(ck, 0, &cm);
            want = 0;
            for (int f = 0; f < QC_FAM_COUNT; f++)
                want += cm.weights_bytes[f] - cm.mtp_weights_bytes[f];
            qc_ckpt_free(ck);
        }
        uint64_t mapped = w - rep.bytes[QC_MEM_W_OTHER]; /* (W_OTHER: the f32 copies on the CPU) */
        snprintf(cname, sizeof cname, "mem_report_weights_without_mtp_%s", name);
        CHECK(cname, want >= 0 && (int64_t)mapped == want, "mapped %llu, want %lld (%s)", (unsigned long long)mapped,
              (long long)want, e2.msg);
    }

    /* Rewind to 100 tokens, then step token 100: row 100 of the reference. */
    if (!rc) {
        rc = qc_session_rewind(s, 100, &err);
        int rc2 = rc ? rc : qc_session_step(s, ids[100], &err);
        const float *l = qc_session_logits(s);
        double e = rc2 || !l ? INFINITY : th_rel_l2(l, ref_l + (size_t)100 * V, (size_t)V);
        snprintf(cname, sizeof cname, "rewind_step_%s", name);
        CHECK(cname, e <= 1e-4 && qc_session_len(s) == 101, "rel L2 %.3g len %d (%s)", e,
              qc_session_len(s), err.msg);
    }

    /* Greedy continuation of tokens[:16] (reference tokens fed back, so one
     * unclear step cannot derail the rest). */
    const qc_tensor *gt = need(g, "greedy_tokens"), *gm = need(g, "greedy_margins"),
                    *gp = need(g, "greedy_prompt_len");
    if (gt && gm && gp && !rc) {
        int P = ((const int32_t *)gp->data)[0], n = (int)gt->numel, bad = -1, checked = 0;
        const int32_t *gtok = gt->data;
        const float *marg = gm->data;
        qc_session_reset(s);
        rc = qc_session_prefill(s, ids, P, 0, NULL, &err);
        for (int i = 0; i < n && !rc; i++) {
            int am = argmax(qc_session_logits(s), V);
            if (marg[i] > 1e-3f) {
                checked++;
                if (am != gtok[i] && bad < 0)
                    bad = i;
            }
            rc = qc_session_step(s, gtok[i], &err);
        }
        snprintf(cname, sizeof cname, "greedy_%s", name);
        CHECK(cname, !rc && bad < 0 && checked > n / 2, "first mismatch at step %d (%d clear steps) %s", bad,
              checked, rc ? err.msg : "");
    }
    qc_session_free(s);
    qc_model_free(m);

    /* End to end through the binary: chunk 37 with the final-norm test hook. */
    if (qchat_bin) {
        char idsf[1100], outf[1100], cmd[4096];
        snprintf(idsf, sizeof idsf, "%s/%s.ids", tmpdir, name);
        snprintf(outf, sizeof outf, "%s/%s.safetensors", tmpdir, name);
        FILE *f = fopen(idsf, "w");
        for (int i = 0; f && i < T; i++)
            fprintf(f, "%d%c", (int)ids[i], i % 20 == 19 ? '\n' : ' ');
        if (f)
            fclose(f);
        snprintf(cmd, sizeof cmd, "'%s' score '%s' --ids '%s' --out '%s' --chunk 37 --final-norm --device cpu",
                 qchat_bin, dir, idsf, outf);
        int st = run_cmd(cmd);
        qc_st *o = NULL;
        double el = INFINITY, en = INFINITY;
        if (st == 0 && qc_st_open_file(outf, &o, &err) == 0) {
            const qc_tensor *ol = qc_st_find(o, "logits"), *on = qc_st_find(o, "final_norm");
            if (ol && ol->dtype == QC_DT_F32 && ol->ndim == 2 && ol->shape[0] == T && ol->shape[1] == V)
                el = th_rel_l2(ol->data, ref_l, (size_t)T * V);
            if (on && on->dtype == QC_DT_F32 && on->numel == (int64_t)T * D)
                en = th_rel_l2(on->data, ref_n, (size_t)T * D);
            qc_st_free(o);
        }
        snprintf(cname, sizeof cname, "qchat_score_%s", name);
        CHECK(cname, el <= 1e-4 && en <= 1e-4, "exit %d, logits rel %.3g, final_norm rel %.3g", st, el, en);
    }
    free(lg);
    free(nm);
    qc_st_free(g);
}

/* With no float32 weight cache every matmul dequantizes its tiles on the
 * fly (the path large checkpoints take): same numbers. */
static void test_streamed(const char *name)
{
    char dir[1024], path[1200], cname[160];
    th_model_dir(dir, sizeof dir, name);
    snprintf(path, sizeof path, "%s/golden.safetensors", dir);
    qc_err err = {0};
    qc_st *g = NULL;
    qc_model *m = NULL;
    qc_session *s = NULL;
    qc_load_opts lo = {QC_DEVICE_CPU, 0, -1};
    snprintf(cname, sizeof cname, "streamed_weights_chunk37_%s", name);
    int rc = qc_st_open_file(path, &g, &err);
    rc = rc ? rc : qc_model_load(dir, &lo, &m, &err);
    rc = rc ? rc : qc_session_new(m, 0, &s, &err);
    double e = INFINITY;
    if (!rc) {
        const qc_tensor *tt = qc_st_find(g, "tokens"), *tl = qc_st_find(g, "logits");
        int T = (int)tt->numel, V = (int)tl->shape[1];
        float *lg = malloc(sizeof(float) * (size_t)T * V);
        rc = qc_session_prefill(s, tt->data, T, 37, lg, &err);
        if (!rc)
            e = th_rel_l2(lg, tl->data, (size_t)T * V);
        free(lg);
    }
    CHECK(cname, e <= 1e-4, "rel L2 %.3g %s", e, rc ? err.msg : "");
    /* and the weights really were streamed: no float32 copies were made (the
     * small f32 vectors the model keeps are a few % of the weights) */
    snprintf(cname, sizeof cname, "streamed_weights_no_f32_copies_%s", name);
    uint64_t wq = 0, wf = 0;
    if (!rc) {
        qc_mem_report rep;
        qc_model_mem(m, s, &rep);
        for (int k = QC_MEM_W_BF16; k < QC_MEM_W_OTHER; k++)
            wq += rep.bytes[k];
        wf = rep.bytes[QC_MEM_W_OTHER];
    }
    CHECK(cname, !rc && wq > 0 && wf * 10 < wq, "f32 copies %llu bytes against %llu checkpoint bytes",
          (unsigned long long)wf, (unsigned long long)wq);
    qc_session_free(s);
    qc_model_free(m);
    qc_st_free(g);
}

/* ---- broken checkpoints ------------------------------------------------------ */

static int write_file(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    size_t w = fwrite(data, 1, n, f);
    return fclose(f) == 0 && w == n ? 0 : -1;
}

/* A copy of src's safetensors without the tensor `drop`, written by hand
 * (header JSON + data). */
static int write_without(const qc_st *src, const char *drop, const char *path)
{
    size_t n = qc_st_count(src), cap = 1 << 16, hl = 0;
    char *hdr = malloc(cap);
    uint64_t off = 0;
    hl += (size_t)snprintf(hdr + hl, cap - hl, "{");
    for (size_t i = 0; i < n; i++) {
        const qc_tensor *t = qc_st_at(src, i);
        if (!strcmp(t->name, drop))
            continue;
        if (cap - hl < 1024) {
            cap *= 2;
            hdr = realloc(hdr, cap);
        }
        hl += (size_t)snprintf(hdr + hl, cap - hl, "%s\"%s\":{\"dtype\":\"%s\",\"shape\":[", hl > 1 ? "," : "",
                               t->name, qc_dtype_name(t->dtype));
        for (int d = 0; d < t->ndim; d++)
            hl += (size_t)snprintf(hdr + hl, cap - hl, "%s%lld", d ? "," : "", (long long)t->shape[d]);
        hl += (size_t)snprintf(hdr + hl, cap - hl, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)off,
                               (unsigned long long)(off + t->nbytes));
        off += t->nbytes;
    }
    hl += (size_t)snprintf(hdr + hl, cap - hl, "}");
    while (hl % 8)
        hdr[hl++] = ' ';
    FILE *f = fopen(path, "wb");
    if (!f) {
        free(hdr);
        return -1;
    }
    uint8_t lb[8];
    for (int i = 0; i < 8; i++)
        lb[i] = (uint8_t)((uint64_t)hl >> (8 * i));
    fwrite(lb, 1, 8, f);
    fwrite(hdr, 1, hl, f);
    for (size_t i = 0; i < n; i++) {
        const qc_tensor *t = qc_st_at(src, i);
        if (strcmp(t->name, drop))
            fwrite(t->data, 1, t->nbytes, f);
    }
    free(hdr);
    return fclose(f);
}

static void link_all_but(const char *src, const char *dst, const char *except1, const char *except2)
{
    const char *files[] = {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                           "model.safetensors"};
    char a[4200], b[1200], abs[4096];
    if (!realpath(src, abs)) /* (a relative target would resolve from dst) */
        snprintf(abs, sizeof abs, "%s", src);
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        if (!strcmp(files[i], except1) || !strcmp(files[i], except2))
            continue;
        snprintf(a, sizeof a, "%s/%s", abs, files[i]);
        snprintf(b, sizeof b, "%s/%s", dst, files[i]);
        if (access(a, F_OK) == 0 && symlink(a, b) != 0)
            fprintf(stderr, "symlink %s: %s\n", b, strerror(errno));
    }
}

static void expect_fail3(const char *cname, const char *dir, const char *needle, const char *qchat_bin,
                         const char *tmpdir)
{
    qc_model *m = NULL;
    qc_err err = {0};
    qc_load_opts lo = {QC_DEVICE_CPU, 1, 0};
    int rc = qc_model_load(dir, &lo, &m, &err);
    CHECK(cname, rc == 3 && strstr(err.msg, needle), "rc %d, message \"%s\" (wanted 3 and \"%s\")", rc, err.msg,
          needle);
    qc_model_free(m);
    if (qchat_bin) {
        char cmd[4096], c2[200], errf[1100];
        snprintf(errf, sizeof errf, "%s/stderr.txt", tmpdir);
        snprintf(cmd, sizeof cmd, "printf '1 2 3' > '%s/x.ids'; '%s' score '%s' --ids '%s/x.ids' --out '%s/x.st' 2>'%s'",
                 tmpdir, qchat_bin, dir, tmpdir, tmpdir, errf);
        int st = run_cmd(cmd);
        char msg[2048] = "";
        FILE *f = fopen(errf, "r");
        if (f) {
            size_t r = fread(msg, 1, sizeof msg - 1, f);
            msg[r] = 0;
            fclose(f);
        }
        snprintf(c2, sizeof c2, "%s_cli", cname);
        int lines = 0;
        for (char *q = msg; *q; q++)
            lines += *q == '\n';
        CHECK(c2, st == 3 && strstr(msg, needle) && lines == 1, "exit %d, stderr \"%s\"", st, msg);
    }
}

static void test_broken(const char *qchat_bin, const char *tmpdir)
{
    char src[1024], d1[1200], d2[1200], p[1300];
    th_model_dir(src, sizeof src, "tiny-qwen36-text");
    /* 1. a tensor removed from model.safetensors */
    snprintf(d1, sizeof d1, "%s/missing", tmpdir);
    mkdir(d1, 0755);
    link_all_but(src, d1, "model.safetensors", "");
    qc_st *st = NULL;
    qc_err err;
    snprintf(p, sizeof p, "%s/model.safetensors", src);
    const char *drop = "model.layers.1.mlp.up_proj.weight";
    if (qc_st_open_file(p, &st, &err) == 0) {
        snprintf(p, sizeof p, "%s/model.safetensors", d1);
        write_without(st, drop, p);
        qc_st_free(st);
        expect_fail3("broken_missing_tensor", d1, "layers.1.mlp.up_proj", qchat_bin, tmpdir);
    } else {
        CHECK("broken_missing_tensor", 0, "%s", err.msg);
    }
    /* 2. config.json says a different MLP width than the tensors have */
    snprintf(d2, sizeof d2, "%s/shape", tmpdir);
    mkdir(d2, 0755);
    link_all_but(src, d2, "config.json", "");
    char *cfg = NULL;
    size_t len = 0;
    snprintf(p, sizeof p, "%s/config.json", src);
    if (qc_read_file(p, &cfg, &len, 1, &err) == 0) {
        char *at = strstr(cfg, "\"intermediate_size\"");
        char *colon = at ? strchr(at, ':') : NULL;
        if (colon) {
            long v = strtol(colon + 1, NULL, 10);
            char *rest = colon + 1;
            while (*rest == ' ' || (*rest >= '0' && *rest <= '9'))
                rest++;
            size_t pre = (size_t)(colon + 1 - cfg);
            char *nc = malloc(len + 32);
            memcpy(nc, cfg, pre);
            int w = snprintf(nc + pre, 32, " %ld", v * 2);
            strcpy(nc + pre + w, rest);
            snprintf(p, sizeof p, "%s/config.json", d2);
            write_file(p, nc, strlen(nc));
            free(nc);
            expect_fail3("broken_wrong_shape", d2, "mlp.", qchat_bin, tmpdir);
        } else {
            CHECK("broken_wrong_shape", 0, "no intermediate_size in %s", p);
        }
        free(cfg);
    }
    /* 3. a broken tokenizer.json beside good weights: the tokenizer loads on its own thread while the
     * weights are resolved and uploaded (model.c); its error must still end the load, alone */
    static const char broken_tok[] = "{\"model\": {\"vocab\": ";
    char d3[1200];
    snprintf(d3, sizeof d3, "%s/badtok", tmpdir);
    mkdir(d3, 0755);
    link_all_but(src, d3, "tokenizer.json", "");
    snprintf(p, sizeof p, "%s/tokenizer.json", d3);
    write_file(p, broken_tok, strlen(broken_tok));
    expect_fail3("broken_tokenizer", d3, "badtok/tokenizer.json: not a JSON", qchat_bin, tmpdir);
    /* 4. and a bad chat-template override, found while the tokenizer is still loading: the tokenizer's
     * error is still the one reported, as when it loaded before the template was looked at */
    setenv("QCHAT_CHAT_TEMPLATE", "no-such-template", 1);
    expect_fail3("broken_tokenizer_and_template", d3, "badtok/tokenizer.json: not a JSON", qchat_bin, tmpdir);
    { /* the control: with a good tokenizer the same override fails the load by itself (a usage error, 2) */
        qc_model *m = NULL;
        qc_err e2 = {0};
        qc_load_opts lo = {QC_DEVICE_CPU, 1, 0};
        int rc = qc_model_load(src, &lo, &m, &e2);
        CHECK("broken_template_alone", rc == 2 && strstr(e2.msg, "no-such-template"), "rc %d, message \"%s\"", rc,
              e2.msg);
        qc_model_free(m);
    }
    unsetenv("QCHAT_CHAT_TEMPLATE");
}

int main(void)
{
    const char *bin = getenv("QCHAT_BIN");
    if (bin && access(bin, X_OK) != 0)
        bin = NULL;
    char tmpdir[] = "/tmp/qchat-golden.XXXXXX";
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    for (size_t i = 0; i < sizeof models / sizeof models[0]; i++)
        test_model(models[i], bin, tmpdir);
    test_streamed("tiny-qwen35-int4-autoround");
    test_streamed("tiny-qwen35-nvfp4");
    test_streamed("tiny-qwen35-moe");
    if (!bin)
        th_skip("qchat_score_cli", "QCHAT_BIN not set (tests/run.sh sets it)");
    test_broken(bin, tmpdir);
    char cmd[200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    run_cmd(cmd);
    return th_exit();
}
