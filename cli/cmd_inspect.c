/* cmd_inspect.c — `qchat inspect CHECKPOINT_DIR [--json] [--ctx N]`: what a
 * checkpoint holds and what it will cost in memory, read from the headers
 * only (no tensor data is touched, so a 50 GB checkpoint inspects in
 * milliseconds). The --json output is a stable contract documented in
 * qchat(1); tests parse it. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ckpt.h"
#include "cmd.h"
#include "util.h"

#define INSPECT_DEFAULT_CTX 4096

typedef struct inspect_opts {
    const char *dir;
    bool json;
    int64_t ctx;
} inspect_opts;

/* Totals of one kind x format cell of the precision map. */
typedef struct cell {
    int count;
    int64_t bytes;
    bool tied;
} cell;

static int inspect_usage(const char *why)
{
    fprintf(stderr, "qchat inspect: %s\nusage: qchat inspect CHECKPOINT_DIR [--json] [--ctx N]\n",
            why);
    return QC_EXIT_USAGE;
}

/* N, or N with a k/K (x1024) suffix. */
static bool parse_ctx(const char *s, int64_t *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || v < 0)
        return false;
    if (*end == 'k' || *end == 'K') {
        v *= 1024;
        end++;
    }
    if (*end || v > (1LL << 40))
        return false;
    *out = v;
    return true;
}

static int parse_args(int argc, char **argv, inspect_opts *o)
{
    o->ctx = INSPECT_DEFAULT_CTX;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--json")) {
            o->json = true;
        } else if (!strcmp(a, "--ctx") || !strncmp(a, "--ctx=", 6)) {
            const char *v = a[5] == '=' ? a + 6 : (i + 1 < argc ? argv[++i] : NULL);
            if (!v)
                return inspect_usage("--ctx needs a value");
            if (!parse_ctx(v, &o->ctx))
                return inspect_usage("--ctx must be a non-negative token count");
        } else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            printf("usage: qchat inspect CHECKPOINT_DIR [--json] [--ctx N]\n");
            return -1;
        } else if (a[0] == '-' && a[1]) {
            char msg[300];
            snprintf(msg, sizeof msg, "unknown option %.200s", a);
            return inspect_usage(msg);
        } else if (o->dir) {
            return inspect_usage("only one CHECKPOINT_DIR");
        } else {
            o->dir = a;
        }
    }
    if (!o->dir)
        return inspect_usage("missing CHECKPOINT_DIR");
    return QC_OK;
}

/* "1.23 GiB" style, binary units. */
static const char *human(int64_t b, char *buf, size_t n)
{
    static const char *const u[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    double v = (double)b;
    int i = 0;
    while (v >= 1024 && i < 4) {
        v /= 1024;
        i++;
    }
    if (i == 0)
        snprintf(buf, n, "%" PRId64 " B", b);
    else
        snprintf(buf, n, "%.*f %s", v < 10 ? 2 : v < 100 ? 1 : 0, v, u[i]);
    return buf;
}

static void tally(const qc_ckpt *ck, cell map[QC_MOD_COUNT][QC_FMT_COUNT])
{
    memset(map, 0, sizeof(cell) * QC_MOD_COUNT * QC_FMT_COUNT);
    for (size_t i = 0; i < qc_ckpt_module_count(ck); i++) {
        const qc_module *m = qc_ckpt_module_at(ck, i);
        cell *c = &map[m->kind][m->lin.format];
        c->count++;
        c->bytes += m->lin.bytes;
        c->tied |= m->tied;
    }
}

/* Bytes of tensors not loaded: the vision tower, and anything else. */
static void skipped_split(const qc_ckpt *ck, int64_t *vision, int64_t *other, int *nv, int *no)
{
    const qc_st *st = qc_ckpt_st(ck);
    *vision = *other = 0;
    *nv = *no = 0;
    for (size_t i = 0; i < qc_st_count(st); i++) {
        const qc_tensor *t = qc_st_at(st, i);
        if (qc_ckpt_tensor_resident(ck, t))
            continue;
        if (!strncmp(t->name, "model.visual.", 13)) {
            *vision += (int64_t)t->nbytes;
            (*nv)++;
        } else {
            *other += (int64_t)t->nbytes;
            (*no)++;
        }
    }
}

static void print_text(const qc_ckpt *ck, const inspect_opts *o)
{
    const qc_config *c = qc_ckpt_config(ck);
    char h1[32], h2[32], h3[32];
    printf("%s\n", o->dir);
    printf("architecture  %s (%s)%s\n", c->architecture[0] ? c->architecture : "?",
           c->model_type[0] ? c->model_type : "?", c->has_vision ? ", vision tower not loaded" : "");
    printf("  layers      %d: %d linear-attention, %d full-attention  ", c->num_hidden_layers,
           c->n_linear_layers, c->n_full_layers);
    for (int i = 0; i < c->num_hidden_layers; i++)
        putchar(c->layer_full[i] ? 'F' : 'l');
    printf("\n  hidden      %d, vocab %d, weight prefix %s\n", c->hidden_size, c->vocab_size,
           c->prefix);
    if (c->is_moe)
        printf("  MoE         %d experts, top-%d, expert MLP %d, shared expert %d\n", c->num_experts,
               c->num_experts_per_tok, c->moe_intermediate_size, c->shared_expert_intermediate_size);
    else
        printf("  MLP         %d\n", c->intermediate_size);
    printf("  attention   %d q / %d kv heads x %d, rotary %d, theta %g\n", c->num_attention_heads,
           c->num_key_value_heads, c->head_dim, c->rotary_dim, c->rope_theta);
    if (c->n_linear_layers)
        printf("  linear-attn Hk %d / Hv %d, dk %d, dv %d, conv %d\n", c->linear_num_key_heads,
               c->linear_num_value_heads, c->linear_key_head_dim, c->linear_value_head_dim,
               c->linear_conv_kernel_dim);
    printf("  lm_head     %s\n", qc_ckpt_lm_head_tied(ck) ? "tied to the embedding" : "stored");
    if (c->quant.present)
        printf("  quant cfg   %s%s%s\n", c->quant.quant_method, c->quant.format[0] ? " " : "",
               c->quant.format);

    cell map[QC_MOD_COUNT][QC_FMT_COUNT];
    tally(ck, map);
    printf("\nprecision map\n  %-18s %-15s %7s %12s\n", "module", "format", "count", "bytes");
    for (int k = 0; k < QC_MOD_COUNT; k++)
        for (int f = 0; f < QC_FMT_COUNT; f++) {
            const cell *x = &map[k][f];
            if (!x->count)
                continue;
            printf("  %-18s %-15s %7d %12s%s\n", qc_module_kind_name(k), qc_format_name(f),
                   x->count, human(x->bytes, h1, sizeof h1),
                   x->tied ? "  (tied to embedding)" : "");
        }
    qc_ckpt_mem mem;
    qc_ckpt_memory(ck, o->ctx, &mem);
    printf("  %-18s %-15s %7s %12s\n", "non-Linear", "(embed, norms)", "",
           human(mem.weights_total - mem.linear_bytes, h1, sizeof h1));

    printf("\nMTP           ");
    if (!qc_ckpt_has_mtp(ck)) {
        printf("absent\n");
    } else {
        printf("present, %s:", human(mem.mtp_bytes, h1, sizeof h1));
        for (int f = 0; f < QC_FMT_COUNT; f++)
            if (map[QC_MOD_MTP][f].count)
                printf(" %s x%d", qc_format_name(f), map[QC_MOD_MTP][f].count);
        printf("\n");
    }
    int64_t sv, so;
    int nv, no;
    skipped_split(ck, &sv, &so, &nv, &no);
    printf("not loaded    ");
    if (!nv && !no)
        printf("nothing\n");
    else {
        if (nv)
            printf("vision tower %s (%d tensors)%s", human(sv, h1, sizeof h1), nv, no ? "; " : "");
        if (no)
            printf("other %s (%d tensors)", human(so, h1, sizeof h1), no);
        printf("\n");
    }

    printf("\nmemory\n  weights     %s:", human(mem.weights_total, h1, sizeof h1));
    const char *sep = " ";
    for (int f = 0; f < QC_FAM_COUNT; f++)
        if (mem.weights_bytes[f]) {
            printf("%s%s %s", sep, qc_family_name(f), human(mem.weights_bytes[f], h2, sizeof h2));
            sep = ", ";
        }
    printf("\n  KV cache    %s per token (%d full-attention layer%s, BF16)",
           human(mem.kv_bytes_per_token, h1, sizeof h1), c->n_full_layers,
           c->n_full_layers == 1 ? "" : "s");
    if (mem.mtp_kv_bytes_per_token)
        printf(" + MTP %s", human(mem.mtp_kv_bytes_per_token, h2, sizeof h2));
    printf("\n  GDN state   %s recurrent + %s conv per sequence\n",
           human(mem.gdn_state_bytes, h1, sizeof h1), human(mem.gdn_conv_bytes, h2, sizeof h2));
    printf("  total       %s at %" PRId64 " tokens (KV %s)\n", human(mem.total_bytes, h1, sizeof h1),
           mem.ctx,
           human(mem.ctx * (mem.kv_bytes_per_token + mem.mtp_kv_bytes_per_token), h3, sizeof h3));
}

static cJSON *json_num(double v) { return cJSON_CreateNumber(v); }

static cJSON *build_json(const qc_ckpt *ck, const inspect_opts *o)
{
    const qc_config *c = qc_ckpt_config(ck);
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "dir", o->dir);

    cJSON *a = cJSON_AddObjectToObject(root, "architecture");
    cJSON_AddStringToObject(a, "architecture", c->architecture);
    cJSON_AddStringToObject(a, "model_type", c->model_type);
    cJSON_AddStringToObject(a, "prefix", c->prefix);
    cJSON_AddBoolToObject(a, "vision", c->has_vision);
    cJSON_AddBoolToObject(a, "moe", c->is_moe);
    cJSON_AddNumberToObject(a, "vocab_size", c->vocab_size);
    cJSON_AddNumberToObject(a, "hidden_size", c->hidden_size);
    cJSON_AddNumberToObject(a, "intermediate_size", c->intermediate_size);
    cJSON_AddNumberToObject(a, "num_layers", c->num_hidden_layers);
    cJSON_AddNumberToObject(a, "full_attention_layers", c->n_full_layers);
    cJSON_AddNumberToObject(a, "linear_attention_layers", c->n_linear_layers);
    cJSON *lt = cJSON_AddArrayToObject(a, "layer_types");
    for (int i = 0; i < c->num_hidden_layers; i++)
        cJSON_AddItemToArray(lt, cJSON_CreateString(c->layer_full[i] ? "full_attention"
                                                                      : "linear_attention"));
    cJSON_AddNumberToObject(a, "num_attention_heads", c->num_attention_heads);
    cJSON_AddNumberToObject(a, "num_key_value_heads", c->num_key_value_heads);
    cJSON_AddNumberToObject(a, "head_dim", c->head_dim);
    cJSON_AddNumberToObject(a, "rotary_dim", c->rotary_dim);
    cJSON_AddNumberToObject(a, "rope_theta", c->rope_theta);
    cJSON_AddNumberToObject(a, "linear_num_key_heads", c->linear_num_key_heads);
    cJSON_AddNumberToObject(a, "linear_num_value_heads", c->linear_num_value_heads);
    cJSON_AddNumberToObject(a, "linear_key_head_dim", c->linear_key_head_dim);
    cJSON_AddNumberToObject(a, "linear_value_head_dim", c->linear_value_head_dim);
    cJSON_AddNumberToObject(a, "linear_conv_kernel_dim", c->linear_conv_kernel_dim);
    if (c->is_moe) {
        cJSON_AddNumberToObject(a, "num_experts", c->num_experts);
        cJSON_AddNumberToObject(a, "num_experts_per_tok", c->num_experts_per_tok);
        cJSON_AddNumberToObject(a, "moe_intermediate_size", c->moe_intermediate_size);
        cJSON_AddNumberToObject(a, "shared_expert_intermediate_size",
                                c->shared_expert_intermediate_size);
    }
    cJSON_AddBoolToObject(a, "tie_word_embeddings", qc_ckpt_lm_head_tied(ck));
    if (c->quant.present) {
        cJSON *q = cJSON_AddObjectToObject(root, "quantization_config");
        cJSON_AddStringToObject(q, "quant_method", c->quant.quant_method);
        cJSON_AddStringToObject(q, "format", c->quant.format);
        cJSON_AddNumberToObject(q, "bits", c->quant.bits);
        cJSON_AddNumberToObject(q, "group_size", c->quant.group_size);
        cJSON_AddBoolToObject(q, "sym", c->quant.sym);
    } else {
        cJSON_AddNullToObject(root, "quantization_config");
    }

    cJSON *mods = cJSON_AddArrayToObject(root, "modules");
    for (size_t i = 0; i < qc_ckpt_module_count(ck); i++) {
        const qc_module *m = qc_ckpt_module_at(ck, i);
        const qc_linear *l = &m->lin;
        cJSON *j = cJSON_CreateObject();
        cJSON_AddStringToObject(j, "name", l->name);
        cJSON_AddStringToObject(j, "kind", qc_module_kind_name(m->kind));
        cJSON_AddStringToObject(j, "format", qc_format_name(l->format));
        cJSON_AddStringToObject(j, "family", qc_format_family(l->format));
        cJSON *sh = cJSON_AddArrayToObject(j, "shape");
        cJSON_AddItemToArray(sh, json_num((double)l->n));
        cJSON_AddItemToArray(sh, json_num((double)l->k));
        cJSON_AddNumberToObject(j, "bits", l->bits);
        cJSON_AddNumberToObject(j, "group_size", l->group_size);
        if (l->format == QC_FMT_FP8_BLOCK) {
            cJSON *b = cJSON_AddArrayToObject(j, "block");
            cJSON_AddItemToArray(b, json_num(l->block_n));
            cJSON_AddItemToArray(b, json_num(l->block_k));
        }
        if (l->format == QC_FMT_GPTQ || l->format == QC_FMT_AWQ || l->format == QC_FMT_CT_INT) {
            cJSON_AddBoolToObject(j, "symmetric", l->symmetric);
            cJSON_AddNumberToObject(j, "zero_bias", l->zero_bias);
            cJSON_AddBoolToObject(j, "g_idx", l->g_idx != NULL);
        }
        cJSON_AddNumberToObject(j, "bytes", (double)l->bytes);
        if (m->tied)
            cJSON_AddBoolToObject(j, "tied", true);
        cJSON_AddItemToArray(mods, j);
    }

    cell map[QC_MOD_COUNT][QC_FMT_COUNT];
    tally(ck, map);
    cJSON *pm = cJSON_AddArrayToObject(root, "precision_map");
    for (int k = 0; k < QC_MOD_COUNT; k++)
        for (int f = 0; f < QC_FMT_COUNT; f++) {
            if (!map[k][f].count)
                continue;
            cJSON *j = cJSON_CreateObject();
            cJSON_AddStringToObject(j, "kind", qc_module_kind_name(k));
            cJSON_AddStringToObject(j, "format", qc_format_name(f));
            cJSON_AddNumberToObject(j, "count", map[k][f].count);
            cJSON_AddNumberToObject(j, "bytes", (double)map[k][f].bytes);
            cJSON_AddItemToArray(pm, j);
        }

    qc_ckpt_mem mem;
    qc_ckpt_memory(ck, o->ctx, &mem);
    cJSON *mtp = cJSON_AddObjectToObject(root, "mtp");
    cJSON_AddBoolToObject(mtp, "present", qc_ckpt_has_mtp(ck));
    cJSON *mf = cJSON_AddObjectToObject(mtp, "formats");
    for (int f = 0; f < QC_FMT_COUNT; f++)
        if (map[QC_MOD_MTP][f].count)
            cJSON_AddNumberToObject(mf, qc_format_name(f), map[QC_MOD_MTP][f].count);
    cJSON_AddNumberToObject(mtp, "bytes", (double)mem.mtp_bytes);

    int64_t sv, so;
    int nv, no;
    skipped_split(ck, &sv, &so, &nv, &no);
    cJSON *sk = cJSON_AddObjectToObject(root, "skipped");
    cJSON_AddNumberToObject(sk, "bytes", (double)mem.skipped_bytes);
    cJSON_AddNumberToObject(sk, "vision_bytes", (double)sv);
    cJSON_AddNumberToObject(sk, "vision_tensors", nv);
    cJSON_AddNumberToObject(sk, "other_bytes", (double)so);
    cJSON_AddNumberToObject(sk, "other_tensors", no);

    cJSON *me = cJSON_AddObjectToObject(root, "memory");
    cJSON *wb = cJSON_AddObjectToObject(me, "weights_bytes");
    for (int f = 0; f < QC_FAM_COUNT; f++)
        if (mem.weights_bytes[f])
            cJSON_AddNumberToObject(wb, qc_family_name(f), (double)mem.weights_bytes[f]);
    cJSON_AddNumberToObject(me, "weights_total", (double)mem.weights_total);
    cJSON_AddNumberToObject(me, "linear_bytes", (double)mem.linear_bytes);
    cJSON_AddNumberToObject(me, "kv_bytes_per_token", (double)mem.kv_bytes_per_token);
    cJSON_AddNumberToObject(me, "mtp_kv_bytes_per_token", (double)mem.mtp_kv_bytes_per_token);
    cJSON_AddNumberToObject(me, "gdn_state_bytes", (double)mem.gdn_state_bytes);
    cJSON_AddNumberToObject(me, "gdn_conv_bytes", (double)mem.gdn_conv_bytes);
    cJSON_AddNumberToObject(me, "ctx", (double)mem.ctx);
    cJSON_AddNumberToObject(me, "total_bytes", (double)mem.total_bytes);
    return root;
}

int cmd_inspect(int argc, char **argv)
{
    inspect_opts o = {0};
    int rc = parse_args(argc, argv, &o);
    if (rc)
        return rc < 0 ? 0 : rc;
    qc_err err = {0};
    qc_ckpt *ck = NULL;
    rc = qc_ckpt_open(o.dir, &ck, &err);
    if (rc) {
        fprintf(stderr, "qchat: %s\n", err.msg);
        return rc;
    }
    if (o.json) {
        cJSON *root = build_json(ck, &o);
        char *s = root ? cJSON_Print(root) : NULL;
        cJSON_Delete(root);
        if (!s) {
            qc_ckpt_free(ck);
            fprintf(stderr, "qchat: out of memory building the JSON output\n");
            return QC_EXIT_RUNTIME;
        }
        fputs(s, stdout);
        fputc('\n', stdout);
        cJSON_free(s);
    } else {
        print_text(ck, &o);
    }
    qc_ckpt_free(ck);
    if (fflush(stdout) != 0) {
        fprintf(stderr, "qchat: cannot write the output\n");
        return QC_EXIT_RUNTIME;
    }
    return QC_OK;
}
