/* test_inspect.c — `qchat inspect --json` end to end, against counts made
 * here independently of the engine:
 *   * every fixture: the module list the architecture implies (names, [N,K]),
 *     each module's format as fixtures/README.md describes it, each module's
 *     bytes, the weight bytes per family, KV / GDN state / total;
 *   * a sparse checkpoint with the real Qwen3.5-27B shapes (BF16 and FP8
 *     block), data regions left as holes: the byte counts of the formats doc,
 *     fast, and without reading the data (mincore);
 *   * every malformed-checkpoint fault: exit status 3 and a one-line message
 *     naming the file and the fault. */
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <sys/mman.h>
#include <time.h>

#include "harness.h"
#include "st_testutil.h"

/* ---- independent enumeration of the Linears of a config ---------------- */

typedef struct emod {
    char name[160];
    int64_t n, k;
    bool fused; /* a slice of a fused MoE tensor */
} emod;

typedef struct arch {
    const cJSON *tc;
    const char *prefix;
    int64_t D, V, I, L, H, KV, hd, Hk, Hv, dk, dv, E, Im, Is, kernel;
    bool full[512];
    int nfull, nlin;
} arch;

static int64_t jint(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItem(o, k);
    return cJSON_IsNumber(v) ? (int64_t)v->valuedouble : 0;
}

static void arch_read(const cJSON *root, arch *a)
{
    const cJSON *tc = cJSON_GetObjectItem(root, "text_config");
    a->prefix = tc ? "model.language_model." : "model.";
    a->tc = tc = tc ? tc : root;
    a->D = jint(tc, "hidden_size");
    a->V = jint(tc, "vocab_size");
    a->I = jint(tc, "intermediate_size");
    a->L = jint(tc, "num_hidden_layers");
    a->H = jint(tc, "num_attention_heads");
    a->KV = jint(tc, "num_key_value_heads");
    a->hd = jint(tc, "head_dim");
    a->Hk = jint(tc, "linear_num_key_heads");
    a->Hv = jint(tc, "linear_num_value_heads");
    a->dk = jint(tc, "linear_key_head_dim");
    a->dv = jint(tc, "linear_value_head_dim");
    a->E = jint(tc, "num_experts");
    a->Im = jint(tc, "moe_intermediate_size");
    a->Is = jint(tc, "shared_expert_intermediate_size");
    a->kernel = jint(tc, "linear_conv_kernel_dim");
    const cJSON *lt = cJSON_GetObjectItem(tc, "layer_types");
    a->nfull = a->nlin = 0;
    for (int i = 0; i < a->L; i++) {
        a->full[i] = lt ? !strcmp(cJSON_GetArrayItem(lt, i)->valuestring, "full_attention")
                        : (i + 1) % 4 == 0;
        a->full[i] ? a->nfull++ : a->nlin++;
    }
}

static emod mods[40000];
static int nmods;

static void add(int64_t n, int64_t k, bool fused, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void add(int64_t n, int64_t k, bool fused, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(mods[nmods].name, sizeof mods[nmods].name, fmt, ap);
    va_end(ap);
    mods[nmods].n = n;
    mods[nmods].k = k;
    mods[nmods].fused = fused;
    nmods++;
}

static void add_layer(const arch *a, const char *lp, bool full, bool fused_experts)
{
    if (full) {
        add(2 * a->H * a->hd, a->D, false, "%s.self_attn.q_proj", lp);
        add(a->KV * a->hd, a->D, false, "%s.self_attn.k_proj", lp);
        add(a->KV * a->hd, a->D, false, "%s.self_attn.v_proj", lp);
        add(a->D, a->H * a->hd, false, "%s.self_attn.o_proj", lp);
    } else {
        add(2 * a->Hk * a->dk + a->Hv * a->dv, a->D, false, "%s.linear_attn.in_proj_qkv", lp);
        add(a->Hv * a->dv, a->D, false, "%s.linear_attn.in_proj_z", lp);
        add(a->Hv, a->D, false, "%s.linear_attn.in_proj_b", lp);
        add(a->Hv, a->D, false, "%s.linear_attn.in_proj_a", lp);
        add(a->D, a->Hv * a->dv, false, "%s.linear_attn.out_proj", lp);
    }
    if (a->E) {
        add(a->E, a->D, false, "%s.mlp.gate", lp);
        for (int e = 0; e < a->E; e++) {
            add(a->Im, a->D, fused_experts, "%s.mlp.experts.%d.gate_proj", lp, e);
            add(a->Im, a->D, fused_experts, "%s.mlp.experts.%d.up_proj", lp, e);
            add(a->D, a->Im, fused_experts, "%s.mlp.experts.%d.down_proj", lp, e);
        }
        add(a->Is, a->D, false, "%s.mlp.shared_expert.gate_proj", lp);
        add(a->Is, a->D, false, "%s.mlp.shared_expert.up_proj", lp);
        add(a->D, a->Is, false, "%s.mlp.shared_expert.down_proj", lp);
        add(1, a->D, false, "%s.mlp.shared_expert_gate", lp);
    } else {
        add(a->I, a->D, false, "%s.mlp.gate_proj", lp);
        add(a->I, a->D, false, "%s.mlp.up_proj", lp);
        add(a->D, a->I, false, "%s.mlp.down_proj", lp);
    }
}

static void enumerate(const arch *a, bool mtp, bool fused_experts)
{
    nmods = 0;
    for (int i = 0; i < a->L; i++) {
        char lp[128];
        tu_fmt(lp, sizeof lp, "%slayers.%d", a->prefix, i);
        add_layer(a, lp, a->full[i], fused_experts);
    }
    add(a->V, a->D, false, "lm_head");
    if (mtp) {
        add(a->D, 2 * a->D, false, "mtp.fc");
        add_layer(a, "mtp.layers.0", true, fused_experts);
    }
}

/* ---- what fixtures/README.md says each fixture's modules are ---------- */

static bool has(const char *s, const char *sub) { return strstr(s, sub) != NULL; }

static const char *want_format(const char *fx, const char *m)
{
    bool ab = has(m, "in_proj_a") || has(m, "in_proj_b"), head = !strcmp(m, "lm_head");
    bool mtp = !strncmp(m, "mtp.", 4), gdn = has(m, "linear_attn."), router = has(m, "mlp.gate") &&
                                                                            !has(m, "gate_proj");
    router |= has(m, "shared_expert_gate");
    if (!strcmp(fx, "tiny-qwen35") || !strcmp(fx, "tiny-qwen36-text") || !strcmp(fx, "tiny-qwen35-moe"))
        return "bf16";
    if (!strcmp(fx, "tiny-qwen35-fp8") || !strcmp(fx, "tiny-qwen36-text-fp8"))
        return ab || head || !strcmp(m, "mtp.fc") ? "bf16" : "fp8-block";
    if (!strcmp(fx, "tiny-qwen35-moe-fp8"))
        return ab || head || router ? "bf16" : "fp8-block";
    if (!strcmp(fx, "tiny-qwen35-int4-autoround"))
        return ab || head ? "bf16" : "gptq";
    if (!strcmp(fx, "tiny-qwen35-int4-awq"))
        return gdn || head || mtp ? "bf16" : "ct-int";
    if (!strcmp(fx, "tiny-qwen35-nvfp4"))
        return head ? "bf16" : "nvfp4-ct";
    if (!strcmp(fx, "tiny-qwen35-nvfp4-modelopt")) {
        if (ab || head || mtp)
            return "bf16";
        return has(m, ".mlp.") ? "nvfp4-modelopt" : "fp8-tensor";
    }
    return "?";
}

static const char *fam_of(const char *fmt)
{
    if (!strncmp(fmt, "fp8", 3))
        return "FP8";
    if (!strcmp(fmt, "gptq") || !strcmp(fmt, "awq") || !strcmp(fmt, "ct-int"))
        return "INT4";
    if (!strncmp(fmt, "nvfp4", 5))
        return "NVFP4";
    return "BF16";
}

/* ---- independent header table ------------------------------------------ */

typedef struct etensor {
    char name[200];
    char dtype[16];
    int64_t bytes;
} etensor;

static etensor tens[20000];
static int ntens;

static void read_headers(const char *dir)
{
    ntens = 0;
    DIR *d = opendir(dir);
    struct dirent *e;
    while (d && (e = readdir(d))) {
        size_t l = strlen(e->d_name);
        if (l < 12 || strcmp(e->d_name + l - 12, ".safetensors") || strncmp(e->d_name, "model", 5))
            continue;
        char p[1400];
        tu_fmt(p, sizeof p, "%s/%s", dir, e->d_name);
        cJSON *h = tu_read_st(p, NULL, NULL);
        for (cJSON *t = h ? h->child : NULL; t; t = t->next) {
            if (!strcmp(t->string, "__metadata__"))
                continue;
            etensor *x = &tens[ntens++];
            tu_fmt(x->name, sizeof x->name, "%s", t->string);
            tu_fmt(x->dtype, sizeof x->dtype, "%s", cJSON_GetObjectItem(t, "dtype")->valuestring);
            cJSON *o = cJSON_GetObjectItem(t, "data_offsets");
            x->bytes = (int64_t)(o->child->next->valuedouble - o->child->valuedouble);
        }
        cJSON_Delete(h);
    }
    if (d)
        closedir(d);
}

static bool resident(const char *n, const char *prefix)
{
    return strncmp(n, "model.visual.", 13) &&
           (!strncmp(n, prefix, strlen(prefix)) || !strncmp(n, "lm_head.", 8) || !strncmp(n, "mtp.", 4));
}

static int64_t bytes_under(const char *x)
{
    size_t l = strlen(x);
    int64_t b = 0;
    for (int i = 0; i < ntens; i++)
        if (!strncmp(tens[i].name, x, l) && tens[i].name[l] == '.')
            b += tens[i].bytes;
    return b;
}

static const cJSON *find_module(const cJSON *arr, const char *name)
{
    for (const cJSON *m = arr->child; m; m = m->next)
        if (!strcmp(cJSON_GetObjectItem(m, "name")->valuestring, name))
            return m;
    return NULL;
}

static cJSON *inspect_json(const char *dir, const char *extra, int *rc, char **err)
{
    char args[1600], *out;
    tu_fmt(args, sizeof args, "inspect '%s' --json %s", dir, extra ? extra : "");
    *rc = tu_run_qchat(args, &out, err);
    cJSON *j = cJSON_Parse(out);
    free(out);
    return j;
}

static void check_fixture(const char *fx)
{
    char dir[1024], name[256], p[1200];
    th_model_dir(dir, sizeof dir, fx);
    tu_fmt(p, sizeof p, "%s/config.json", dir);
    size_t len;
    char *text = (char *)tu_slurp(p, &len);
    cJSON *root = cJSON_Parse(text);
    free(text);
    arch a;
    arch_read(root, &a);
    read_headers(dir);
    bool mtp = false, fused = false;
    for (int i = 0; i < ntens; i++) {
        mtp |= !strncmp(tens[i].name, "mtp.", 4);
        fused |= has(tens[i].name, "experts.gate_up_proj");
    }
    enumerate(&a, mtp, fused);

    int rc;
    char *err;
    cJSON *j = inspect_json(dir, "--ctx 1000", &rc, &err);
    tu_fmt(name, sizeof name, "inspect_%s_runs", fx);
    CHECK(name, rc == 0 && j, "exit %d: %s", rc, err);
    free(err);
    if (rc || !j) {
        cJSON_Delete(j);
        cJSON_Delete(root);
        return;
    }
    const cJSON *jm = cJSON_GetObjectItem(j, "modules");
    bool tied = cJSON_IsTrue(cJSON_GetObjectItem(a.tc, "tie_word_embeddings")) ||
                cJSON_IsTrue(cJSON_GetObjectItem(root, "tie_word_embeddings"));

    /* formats, shapes and bytes of every module */
    int bad = 0;
    char why[600] = "";
    double fam[5] = {0};
    static const char *fams[5] = {"BF16", "FP8", "INT4", "NVFP4", "MXFP4"};
    for (int i = 0; i < nmods; i++) {
        const emod *e = &mods[i];
        const cJSON *m = find_module(jm, e->name);
        const char *want = want_format(fx, e->name);
        int64_t wbytes = e->fused ? e->n * e->k * 2 : bytes_under(e->name);
        if (!strcmp(e->name, "lm_head") && tied)
            wbytes = 0;
        const cJSON *sh = m ? cJSON_GetObjectItem(m, "shape") : NULL;
        const char *got = m ? cJSON_GetObjectItem(m, "format")->valuestring : "(absent)";
        bool ok = m && !strcmp(got, want) &&
                  !strcmp(cJSON_GetObjectItem(m, "family")->valuestring, fam_of(want)) &&
                  (int64_t)cJSON_GetArrayItem(sh, 0)->valuedouble == e->n &&
                  (int64_t)cJSON_GetArrayItem(sh, 1)->valuedouble == e->k &&
                  (int64_t)cJSON_GetObjectItem(m, "bytes")->valuedouble == wbytes;
        if (!ok && !bad++)
            tu_fmt(why, sizeof why, "%s: format %s (want %s) or shape/bytes (want [%lld,%lld] %lld)",
                     e->name, got, want, (long long)e->n, (long long)e->k, (long long)wbytes);
    }
    tu_fmt(name, sizeof name, "inspect_%s_formats", fx);
    CHECK(name, !bad && cJSON_GetArraySize(jm) == nmods, "%d bad, %d vs %d modules; first: %s", bad,
          cJSON_GetArraySize(jm), nmods, why);

    /* weight bytes per family: each resident tensor counts in the family of
     * the module it belongs to, else by dtype */
    int64_t skipped = 0, total = 0;
    for (int i = 0; i < ntens; i++) {
        if (!resident(tens[i].name, a.prefix)) {
            skipped += tens[i].bytes;
            continue;
        }
        char mod[200];
        tu_fmt(mod, sizeof mod, "%s", tens[i].name);
        char *dot = strrchr(mod, '.');
        if (dot)
            *dot = 0;
        const char *f = !strcmp(tens[i].dtype, "F8_E4M3") ? "FP8" : "BF16";
        for (int k = 0; k < nmods; k++)
            if (!mods[k].fused && !strcmp(mods[k].name, mod))
                f = fam_of(want_format(fx, mod));
        for (int k = 0; k < 5; k++)
            if (!strcmp(f, fams[k]))
                fam[k] += (double)tens[i].bytes;
        total += tens[i].bytes;
    }
    const cJSON *mem = cJSON_GetObjectItem(j, "memory");
    const cJSON *wb = cJSON_GetObjectItem(mem, "weights_bytes");
    bad = 0;
    for (int k = 0; k < 5; k++) {
        const cJSON *v = cJSON_GetObjectItem(wb, fams[k]);
        if ((v ? v->valuedouble : 0) != fam[k])
            bad++;
    }
    int64_t kv = a.nfull * 2 * a.KV * a.hd * 2, mkv = mtp ? 2 * a.KV * a.hd * 2 : 0;
    int64_t gdn = a.nlin * a.Hv * a.dk * a.dv * 4;
    int64_t conv = a.nlin * (2 * a.Hk * a.dk + a.Hv * a.dv) * (a.kernel - 1) * 4; /* fp32, as the engines */
#define MEM(k) ((int64_t)cJSON_GetObjectItem(mem, k)->valuedouble)
    tu_fmt(name, sizeof name, "inspect_%s_memory", fx);
    CHECK(name,
          !bad && MEM("weights_total") == total && MEM("kv_bytes_per_token") == kv &&
              MEM("mtp_kv_bytes_per_token") == mkv && MEM("gdn_state_bytes") == gdn &&
              MEM("gdn_conv_bytes") == conv &&
              MEM("total_bytes") == total + 1000 * (kv + mkv) + gdn + conv &&
              (int64_t)cJSON_GetObjectItem(cJSON_GetObjectItem(j, "skipped"), "bytes")->valuedouble ==
                  skipped,
          "%d family mismatches; weights %lld vs %lld, kv %lld vs %lld, gdn %lld vs %lld", bad,
          (long long)MEM("weights_total"), (long long)total, (long long)MEM("kv_bytes_per_token"),
          (long long)kv, (long long)MEM("gdn_state_bytes"), (long long)gdn);
    const cJSON *jmtp = cJSON_GetObjectItem(j, "mtp");
    tu_fmt(name, sizeof name, "inspect_%s_mtp", fx);
    CHECK(name, cJSON_IsTrue(cJSON_GetObjectItem(jmtp, "present")) == mtp, "mtp present mismatch");
#undef MEM
    cJSON_Delete(j);
    cJSON_Delete(root);
}

/* ---- the sparse 27B ------------------------------------------------------ */

static const char *cfg27 =
    "{\"architectures\":[\"Qwen3_5ForConditionalGeneration\"],\"model_type\":\"qwen3_5\","
    "\"tie_word_embeddings\":false,\"text_config\":{\"model_type\":\"qwen3_5_text\","
    "\"vocab_size\":248320,\"hidden_size\":5120,\"intermediate_size\":17408,"
    "\"num_hidden_layers\":64,\"full_attention_interval\":4,\"num_attention_heads\":24,"
    "\"num_key_value_heads\":4,\"head_dim\":256,\"linear_num_key_heads\":16,"
    "\"linear_num_value_heads\":48,\"linear_key_head_dim\":128,\"linear_value_head_dim\":128,"
    "\"linear_conv_kernel_dim\":4,\"rms_norm_eps\":1e-6,\"mtp_num_hidden_layers\":1,"
    "\"rope_parameters\":{\"rope_theta\":10000000,\"partial_rotary_factor\":0.25},"
    "\"eos_token_id\":248046,\"tie_word_embeddings\":false}%s}";

typedef struct sbuild {
    char *json;
    size_t len, cap;
    int64_t off;
} sbuild;

static void sb_tensor(sbuild *b, const char *name, const char *dt, int64_t esz, int nd, int64_t d0,
                      int64_t d1, int64_t d2)
{
    int64_t n = d0 * (nd > 1 ? d1 : 1) * (nd > 2 ? d2 : 1);
    if (b->len + 512 > b->cap) {
        b->cap = b->cap * 2 + 4096;
        b->json = realloc(b->json, b->cap);
    }
    char shape[96];
    if (nd == 1)
        tu_fmt(shape, sizeof shape, "[%lld]", (long long)d0);
    else if (nd == 2)
        tu_fmt(shape, sizeof shape, "[%lld,%lld]", (long long)d0, (long long)d1);
    else
        tu_fmt(shape, sizeof shape, "[%lld,%lld,%lld]", (long long)d0, (long long)d1, (long long)d2);
    b->len += (size_t)tu_fmt(b->json + b->len, b->cap - b->len,
                               "%s\"%s\":{\"dtype\":\"%s\",\"shape\":%s,\"data_offsets\":[%lld,%lld]}",
                               b->len > 1 ? "," : "", name, dt, shape, (long long)b->off,
                               (long long)(b->off + n * esz));
    b->off += n * esz;
}

/* Writes the 27B checkpoint; returns the bytes the formats doc predicts for
 * the resident weights (Linears by formula + the rest). */
static int64_t write_27b(const char *dir, bool fp8, int64_t *vision_bytes)
{
    char p[1200];
    tu_fmt(p, sizeof p, "%s/config.json", dir);
    char cfg[4096];
    tu_fmt(cfg, sizeof cfg, cfg27,
             fp8 ? ",\"quantization_config\":{\"quant_method\":\"fp8\",\"fmt\":\"e4m3\","
                   "\"activation_scheme\":\"dynamic\",\"weight_block_size\":[128,128]}"
                 : "");
    tu_spit(p, cfg, strlen(cfg));
    cJSON *root = cJSON_Parse(cfg);
    arch a;
    arch_read(root, &a);
    enumerate(&a, true, false);
    sbuild b = {.json = malloc(4096), .len = 1, .cap = 4096};
    b.json[0] = '{';
    int64_t predicted = 0;
    for (int i = 0; i < nmods; i++) {
        const emod *e = &mods[i];
        char n[256];
        bool q = fp8 && strcmp(e->name, "lm_head") && strcmp(e->name, "mtp.fc") &&
                 !has(e->name, "in_proj_a") && !has(e->name, "in_proj_b");
        tu_fmt(n, sizeof n, "%s.weight", e->name);
        sb_tensor(&b, n, q ? "F8_E4M3" : "BF16", q ? 1 : 2, 2, e->n, e->k, 0);
        predicted += e->n * e->k * (q ? 1 : 2);
        if (q) {
            int64_t sn = (e->n + 127) / 128, sk = (e->k + 127) / 128;
            tu_fmt(n, sizeof n, "%s.weight_scale_inv", e->name);
            sb_tensor(&b, n, "BF16", 2, 2, sn, sk, 0);
            predicted += sn * sk * 2;
        }
    }
    /* the rest: embedding, norms, GDN small tensors, MTP norms */
    char n[256];
    int64_t D = a.D, cd = 2 * a.Hk * a.dk + a.Hv * a.dv;
#define NT(dt, es, nd, d0, d1, d2)                 \
    do {                                           \
        sb_tensor(&b, n, dt, es, nd, d0, d1, d2);  \
        predicted += (d0) * (nd > 1 ? (d1) : 1) * (nd > 2 ? (d2) : 1) * (es); \
    } while (0)
    tu_fmt(n, sizeof n, "%sembed_tokens.weight", a.prefix);
    NT("BF16", 2, 2, a.V, D, 0);
    tu_fmt(n, sizeof n, "%snorm.weight", a.prefix);
    NT("BF16", 2, 1, D, 0, 0);
    for (int i = 0; i <= a.L; i++) {
        char lp[64];
        if (i < a.L)
            tu_fmt(lp, sizeof lp, "%slayers.%d", a.prefix, i);
        else
            tu_fmt(lp, sizeof lp, "mtp.layers.0");
        bool full = i == a.L || a.full[i];
        tu_fmt(n, sizeof n, "%s.input_layernorm.weight", lp);
        NT("BF16", 2, 1, D, 0, 0);
        tu_fmt(n, sizeof n, "%s.post_attention_layernorm.weight", lp);
        NT("BF16", 2, 1, D, 0, 0);
        if (full) {
            tu_fmt(n, sizeof n, "%s.self_attn.q_norm.weight", lp);
            NT("BF16", 2, 1, a.hd, 0, 0);
            tu_fmt(n, sizeof n, "%s.self_attn.k_norm.weight", lp);
            NT("BF16", 2, 1, a.hd, 0, 0);
        } else {
            tu_fmt(n, sizeof n, "%s.linear_attn.conv1d.weight", lp);
            NT("BF16", 2, 3, cd, 1, 4);
            tu_fmt(n, sizeof n, "%s.linear_attn.dt_bias", lp);
            NT("BF16", 2, 1, a.Hv, 0, 0);
            tu_fmt(n, sizeof n, "%s.linear_attn.A_log", lp);
            NT("F32", 4, 1, a.Hv, 0, 0);
            tu_fmt(n, sizeof n, "%s.linear_attn.norm.weight", lp);
            NT("F32", 4, 1, a.dv, 0, 0);
        }
    }
    tu_fmt(n, sizeof n, "mtp.norm.weight");
    NT("BF16", 2, 1, D, 0, 0);
    tu_fmt(n, sizeof n, "mtp.pre_fc_norm_embedding.weight");
    NT("BF16", 2, 1, D, 0, 0);
    tu_fmt(n, sizeof n, "mtp.pre_fc_norm_hidden.weight");
    NT("BF16", 2, 1, D, 0, 0);
#undef NT
    /* a vision tensor: in the file, not loaded */
    int64_t before = b.off;
    sb_tensor(&b, "model.visual.patch_embed.proj.weight", "BF16", 2, 2, 1152, 1536, 0);
    *vision_bytes = b.off - before;
    b.json[b.len++] = '}';
    b.json[b.len] = 0;
    tu_fmt(p, sizeof p, "%s/model.safetensors", dir);
    tu_write_st_raw(p, b.json, NULL, 0, (uint64_t)b.off);
    free(b.json);
    cJSON_Delete(root);
    return predicted;
}

/* Pages of the data region resident in the page cache (0 = nothing read). */
static long resident_data_pages(const char *path)
{
    size_t len;
    FILE *f = fopen(path, "rb");
    uint8_t lb[8];
    if (!f || fread(lb, 1, 8, f) != 8) {
        if (f)
            fclose(f);
        return -1;
    }
    fseek(f, 0, SEEK_END);
    len = (size_t)ftell(f);
    fclose(f);
    uint64_t h = 0;
    for (int i = 7; i >= 0; i--)
        h = h << 8 | lb[i];
    int fd = open(path, O_RDONLY);
    void *m = mmap(NULL, len, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (m == MAP_FAILED)
        return -1;
    long ps = sysconf(_SC_PAGESIZE);
    size_t first = ((8 + h) / (size_t)ps + 2) * (size_t)ps; /* skip the header's pages */
    size_t npages = (len - first) / (size_t)ps;
    unsigned char *vec = malloc(npages + 1);
    long count = -1;
    if (vec && mincore((uint8_t *)m + first, npages * (size_t)ps, vec) == 0) {
        count = 0;
        for (size_t i = 0; i < npages; i++)
            count += vec[i] & 1;
    }
    free(vec);
    munmap(m, len);
    return count;
}

static void check_27b(bool fp8)
{
    const char *tag = fp8 ? "fp8" : "bf16";
    char dir[512], name[128], p[700];
    tu_tmpdir(dir, sizeof dir, "27b");
    int64_t vision;
    int64_t predicted = write_27b(dir, fp8, &vision);
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    int rc;
    char *err;
    cJSON *j = inspect_json(dir, "--ctx 262144", &rc, &err);
    clock_gettime(CLOCK_MONOTONIC, &b);
    double secs = (double)(b.tv_sec - a.tv_sec) + 1e-9 * (double)(b.tv_nsec - a.tv_nsec);
    tu_fmt(name, sizeof name, "inspect_27b_%s_runs", tag);
    CHECK(name, rc == 0 && j, "exit %d: %s", rc, err);
    free(err);
    if (j) {
        const cJSON *mem = cJSON_GetObjectItem(j, "memory");
#define MEM(k) ((int64_t)cJSON_GetObjectItem(mem, k)->valuedouble)
        const cJSON *wb = cJSON_GetObjectItem(mem, "weights_bytes");
        int64_t fam_fp8 = cJSON_GetObjectItem(wb, "FP8") ? (int64_t)cJSON_GetObjectItem(wb, "FP8")->valuedouble : 0;
        tu_fmt(name, sizeof name, "inspect_27b_%s_bytes", tag);
        /* formats doc: BF16 ~54 GB, official FP8 30.9 GB (with the ~0.9 GB
         * vision tower, which is not counted here); 64 KiB KV per token;
         * 144 MiB GDN state; 5.6 MiB conv state (fp32; the docs' 2.8 is BF16) */
        bool range = fp8 ? predicted > 28.5e9 && predicted < 31e9 : predicted > 52e9 && predicted < 55e9;
        CHECK(name,
              MEM("weights_total") == predicted && range && (fp8 ? fam_fp8 > 20e9 : fam_fp8 == 0) &&
                  MEM("kv_bytes_per_token") == 65536 && MEM("gdn_state_bytes") == 144 << 20 &&
                  MEM("gdn_conv_bytes") == 48 * 10240 * 3 * 4 &&
                  (int64_t)cJSON_GetObjectItem(cJSON_GetObjectItem(j, "skipped"), "vision_bytes")
                          ->valuedouble == vision &&
                  MEM("total_bytes") == predicted + 262144LL * (65536 + MEM("mtp_kv_bytes_per_token")) +
                                            (144 << 20) + 48 * 10240 * 3 * 4,
              "weights %lld (predicted %lld), kv %lld, gdn %lld", (long long)MEM("weights_total"),
              (long long)predicted, (long long)MEM("kv_bytes_per_token"),
              (long long)MEM("gdn_state_bytes"));
#undef MEM
        int bad = 0;
        const cJSON *jm = cJSON_GetObjectItem(j, "modules");
        for (const cJSON *m = jm->child; m; m = m->next) {
            const char *nm = cJSON_GetObjectItem(m, "name")->valuestring;
            bool q = fp8 && strcmp(nm, "lm_head") && strcmp(nm, "mtp.fc") && !has(nm, "in_proj_a") &&
                     !has(nm, "in_proj_b");
            bad += strcmp(cJSON_GetObjectItem(m, "format")->valuestring, q ? "fp8-block" : "bf16") != 0;
        }
        tu_fmt(name, sizeof name, "inspect_27b_%s_formats", tag);
        CHECK(name, !bad && cJSON_GetArraySize(jm) == nmods, "%d wrong formats, %d modules", bad,
              cJSON_GetArraySize(jm));
    }
    tu_fmt(name, sizeof name, "inspect_27b_%s_fast", tag);
    CHECK(name, secs < 1.0, "took %.3f s", secs);
    tu_fmt(p, sizeof p, "%s/model.safetensors", dir);
    long pages = resident_data_pages(p);
    tu_fmt(name, sizeof name, "inspect_27b_%s_no_data_read", tag);
    CHECK(name, pages == 0, "%ld data pages in the page cache", pages);
    cJSON_Delete(j);
    tu_rm_rf(dir);
}

/* ---- malformed checkpoints through the CLI ------------------------------- */

static char work[512];

/* A fresh copy of fixture fx as work/<tag>; returns its path. */
static const char *fresh(const char *fx, const char *tag)
{
    static char dst[1024];
    char src[1024];
    th_model_dir(src, sizeof src, fx);
    tu_fmt(dst, sizeof dst, "%s/%s", work, tag);
    tu_copy_dir(src, dst);
    return dst;
}

/* Rewrites dir/file after edit(hdr) with the tensors repacked in header
 * order (so removing a tensor leaves no gap); keep_offsets writes the
 * header as edited, data unchanged. */
static void rewrite(const char *dir, const char *file, void (*edit)(cJSON *), bool keep_offsets)
{
    char p[1400];
    tu_fmt(p, sizeof p, "%s/%s", dir, file);
    uint8_t *data = NULL;
    size_t dlen = 0;
    cJSON *h = tu_read_st(p, &data, &dlen);
    if (!h) { /* (a fixture missing here: the check that follows fails) */
        free(data);
        return;
    }
    edit(h);
    if (keep_offsets) {
        tu_write_st(p, h, data, dlen);
    } else {
        uint8_t *nd = malloc(dlen + 1);
        size_t o = 0;
        for (cJSON *t = h->child; t; t = t->next) {
            cJSON *off = cJSON_GetObjectItem(t, "data_offsets");
            if (!off)
                continue;
            size_t b = (size_t)off->child->valuedouble, e = (size_t)off->child->next->valuedouble;
            memcpy(nd + o, data + b, e - b);
            cJSON_ReplaceItemInObject(t, "data_offsets", cJSON_CreateIntArray((int[]){(int)o, (int)(o + e - b)}, 2));
            o += e - b;
        }
        tu_write_st(p, h, nd, o);
        free(nd);
    }
    free(data);
    cJSON_Delete(h);
}

static const char *NORM0 = "model.layers.0.input_layernorm.weight";
static const char *NORM1 = "model.layers.0.post_attention_layernorm.weight";

static void ed_dtype(cJSON *h)
{
    cJSON_ReplaceItemInObject(cJSON_GetObjectItem(h, NORM0), "dtype", cJSON_CreateString("F12"));
}
static void ed_shape(cJSON *h)
{
    cJSON_ReplaceItemInObject(cJSON_GetObjectItem(h, NORM0), "shape", cJSON_CreateIntArray((int[]){129}, 1));
}
static void ed_oob(cJSON *h)
{
    cJSON_ReplaceItemInObject(cJSON_GetObjectItem(h, NORM0), "data_offsets",
                              cJSON_CreateIntArray((int[]){10000000, 10000256}, 2));
}
static void ed_overlap(cJSON *h)
{
    cJSON *o = cJSON_GetObjectItem(cJSON_GetObjectItem(h, NORM0), "data_offsets");
    cJSON_ReplaceItemInObject(cJSON_GetObjectItem(h, NORM1), "data_offsets", cJSON_Duplicate(o, 1));
}
static void ed_order(cJSON *h)
{
    cJSON *o = cJSON_GetObjectItem(cJSON_GetObjectItem(h, NORM0), "data_offsets");
    double b = o->child->valuedouble, e = o->child->next->valuedouble;
    cJSON_ReplaceItemInObject(cJSON_GetObjectItem(h, NORM0), "data_offsets",
                              cJSON_CreateIntArray((int[]){(int)e, (int)b}, 2));
}
static void ed_drop_qzeros(cJSON *h)
{
    cJSON_DeleteItemFromObject(h, "model.language_model.layers.1.mlp.up_proj.qzeros");
}
static void ed_drop_scale_inv(cJSON *h)
{
    cJSON_DeleteItemFromObject(h, "model.layers.3.self_attn.k_proj.weight_scale_inv");
}
static void ed_drop_global(cJSON *h)
{
    cJSON_DeleteItemFromObject(h, "model.language_model.layers.2.mlp.down_proj.weight_global_scale");
}

/* Runs inspect on dir: exit 3, one stderr line with every `want` substring. */
/* dir/config.json after edit(its member, or the whole object for NULL). */
static void edit_config(const char *dir, const char *member, void (*edit)(cJSON *))
{
    char p[1400];
    size_t len;
    tu_fmt(p, sizeof p, "%s/config.json", dir);
    char *text = (char *)tu_slurp(p, &len);
    cJSON *root = text ? cJSON_Parse(text) : NULL;
    free(text);
    if (!root) /* (a fixture missing here: the check that follows fails) */
        return;
    edit(member ? cJSON_GetObjectItem(root, member) : root);
    text = cJSON_Print(root);
    tu_spit(p, text, strlen(text));
    free(text);
    cJSON_Delete(root);
}

static void ed_drop_heads(cJSON *c) { cJSON_DeleteItemFromObject(c, "num_attention_heads"); }
static void ed_intermediate_256(cJSON *c)
{
    cJSON_ReplaceItemInObject(c, "intermediate_size", cJSON_CreateNumber(256));
}

static void expect_fail(const char *test, const char *dir, const char *want1, const char *want2)
{
    char args[1200], *out, *err;
    tu_fmt(args, sizeof args, "inspect '%s'", dir);
    int rc = tu_run_qchat(args, &out, &err);
    size_t el = strlen(err);
    bool one_line = el > 0 && err[el - 1] == '\n' && !memchr(err, '\n', el - 1);
    CHECK(test, rc == 3 && one_line && strstr(err, want1) && (!want2 || strstr(err, want2)) && !*out,
          "exit %d, stderr '%s' (want '%s' and '%s')", rc, err, want1, want2 ? want2 : "");
    free(out);
    free(err);
}

static void cut_file(const char *path, long keep_from_end)
{
    size_t len;
    uint8_t *b = tu_slurp(path, &len);
    tu_spit(path, b, len - (size_t)keep_from_end);
    free(b);
}

static void check_malformed(void)
{
    char p[1400];
    const char *d;
    d = fresh("tiny-qwen36-text", "truncated");
    tu_fmt(p, sizeof p, "%s/model.safetensors", d);
    cut_file(p, 1000);
    expect_fail("inspect_bad_truncated", d, "model.safetensors", "truncated");

    d = fresh("tiny-qwen36-text", "hlen");
    tu_fmt(p, sizeof p, "%s/model.safetensors", d);
    tu_spit(p, "\x00\x00\x00\x00\x01\x00\x00\x00{}", 10);
    expect_fail("inspect_bad_header_length", d, "model.safetensors", "beyond the file");

    d = fresh("tiny-qwen36-text", "notjson");
    tu_fmt(p, sizeof p, "%s/model.safetensors", d);
    tu_write_st_raw(p, "{\"a\":", NULL, 0, 0);
    expect_fail("inspect_bad_header_not_json", d, "model.safetensors", "not valid JSON");

    d = fresh("tiny-qwen36-text", "notobject");
    tu_fmt(p, sizeof p, "%s/model.safetensors", d);
    tu_write_st_raw(p, "\"header\"", NULL, 0, 0);
    expect_fail("inspect_bad_header_not_object", d, "model.safetensors", "not a JSON object");

    d = fresh("tiny-qwen36-text", "dtype");
    rewrite(d, "model.safetensors", ed_dtype, true);
    expect_fail("inspect_bad_unknown_dtype", d, "model.safetensors", "unknown dtype 'F12'");

    d = fresh("tiny-qwen36-text", "shape");
    rewrite(d, "model.safetensors", ed_shape, true);
    expect_fail("inspect_bad_shape_vs_bytes", d, "model.safetensors", "shape x dtype is 258 bytes");

    d = fresh("tiny-qwen36-text", "oob");
    rewrite(d, "model.safetensors", ed_oob, true);
    expect_fail("inspect_bad_offsets_oob", d, "model.safetensors", "out of bounds");

    d = fresh("tiny-qwen36-text", "overlap");
    rewrite(d, "model.safetensors", ed_overlap, true);
    expect_fail("inspect_bad_offsets_overlap", d, "model.safetensors", "overlap");

    d = fresh("tiny-qwen36-text", "order");
    rewrite(d, "model.safetensors", ed_order, true);
    expect_fail("inspect_bad_offsets_order", d, "model.safetensors", "out of order");

    /* the same tensors in two shards */
    d = fresh("tiny-qwen36-text", "twoshards");
    char a[1400], b[1400];
    tu_fmt(a, sizeof a, "%s/model.safetensors", d);
    tu_fmt(b, sizeof b, "%s/model-00002-of-00002.safetensors", d);
    size_t len;
    uint8_t *buf = tu_slurp(a, &len);
    tu_spit(b, buf, len);
    free(buf);
    tu_fmt(b, sizeof b, "%s/model-00001-of-00002.safetensors", d);
    rename(a, b);
    tu_fmt(p, sizeof p, "%s/model.safetensors.index.json", d);
    const char *idx = "{\"weight_map\":{\"model.norm.weight\":\"model-00001-of-00002.safetensors\","
                      "\"model.embed_tokens.weight\":\"model-00002-of-00002.safetensors\"}}";
    tu_spit(p, idx, strlen(idx));
    expect_fail("inspect_bad_tensor_in_two_shards", d, "model-0000", "is also in");

    d = fresh("tiny-qwen35", "missingshard");
    tu_fmt(p, sizeof p, "%s/model-00002-of-00002.safetensors", d);
    unlink(p);
    expect_fail("inspect_bad_shard_missing", d, "model-00002-of-00002.safetensors", "missing");

    d = fresh("tiny-qwen36-text", "noconfig");
    tu_fmt(p, sizeof p, "%s/config.json", d);
    unlink(p);
    expect_fail("inspect_bad_config_missing", d, "config.json", "missing");

    d = fresh("tiny-qwen36-text", "badconfig");
    tu_fmt(p, sizeof p, "%s/config.json", d);
    tu_spit(p, "{\"hidden_size\": 128,", 20);
    expect_fail("inspect_bad_config_unparsable", d, "config.json", "not valid JSON");

    d = fresh("tiny-qwen36-text", "nofield");
    edit_config(d, NULL, ed_drop_heads);
    expect_fail("inspect_bad_config_field", d, "config.json", "missing required field num_attention_heads");

    d = fresh("tiny-qwen36-text", "shapes");
    edit_config(d, NULL, ed_intermediate_256);
    expect_fail("inspect_bad_shape_vs_config", d, "model.layers.0.mlp.gate_proj.weight",
                "config.json implies [256, 128]");

    d = fresh("tiny-qwen35-int4-autoround", "noqzeros");
    rewrite(d, "model.safetensors", ed_drop_qzeros, false);
    expect_fail("inspect_bad_gptq_missing_qzeros", d, "model.safetensors",
                "layers.1.mlp.up_proj (gptq) lacks its tensor");
    d = fresh("tiny-qwen36-text-fp8", "noscale");
    rewrite(d, "model.safetensors", ed_drop_scale_inv, false);
    expect_fail("inspect_bad_fp8_missing_scale", d, "model.safetensors",
                "model.layers.3.self_attn.k_proj (fp8) lacks");
    d = fresh("tiny-qwen35-nvfp4", "noglobal");
    rewrite(d, "model.safetensors", ed_drop_global, false);
    expect_fail("inspect_bad_nvfp4_missing_global", d, "model.safetensors",
                "lacks its tensor model.language_model.layers.2.mlp.down_proj.weight_global_scale");

    /* usage errors are exit 2 */
    char *out, *err;
    int rc = tu_run_qchat("inspect", &out, &err);
    CHECK("inspect_usage_no_dir", rc == 2, "exit %d", rc);
    free(out);
    free(err);
    rc = tu_run_qchat("inspect /x --ctx lots", &out, &err);
    CHECK("inspect_usage_bad_ctx", rc == 2 && strstr(err, "--ctx"), "exit %d %s", rc, err);
    free(out);
    free(err);
}

/* ---- damaged quantized modules: refused at inspect, load or sampling ---- */

static const char *GATE0 = "model.language_model.layers.0.mlp.gate_proj";

/* Overwrites n bytes of tensor `name` of dir/file at byte offset off. */
static void poke(const char *dir, const char *file, const char *name, size_t off, const void *bytes, size_t n)
{
    char p[1400];
    tu_fmt(p, sizeof p, "%s/%s", dir, file);
    uint8_t *data = NULL;
    size_t dlen = 0;
    cJSON *h = tu_read_st(p, &data, &dlen);
    const cJSON *o = cJSON_GetObjectItem(cJSON_GetObjectItem(h, name), "data_offsets");
    if (o && (size_t)o->child->valuedouble + off + n <= dlen) {
        memcpy(data + (size_t)o->child->valuedouble + off, bytes, n);
        tu_write_st(p, h, data, dlen);
    }
    free(data);
    cJSON_Delete(h);
}

static void ed_bits8(cJSON *q) { cJSON_ReplaceItemInObject(q, "bits", cJSON_CreateNumber(8)); }
static void ed_drop_zero_point(cJSON *h)
{
    char n[200];
    tu_fmt(n, sizeof n, "%s.weight_zero_point", GATE0);
    cJSON_DeleteItemFromObject(h, n);
}
/* GATE0 of the AWQ-style fixture (group 32, K 256) as group 64: its
 * scales [512, 4] and packed zero points [64, 4], the first bytes of the
 * old ones (values do not matter here). */
static void ed_gate_g64(cJSON *h)
{
    static const char *sfx[2] = {"weight_scale", "weight_zero_point"};
    static const int rows[2] = {512, 64}, esz[2] = {2, 4};
    for (int i = 0; i < 2; i++) {
        char n[200];
        tu_fmt(n, sizeof n, "%s.%s", GATE0, sfx[i]);
        cJSON *t = cJSON_GetObjectItem(h, n);
        const int b = (int)cJSON_GetObjectItem(t, "data_offsets")->child->valuedouble;
        cJSON_ReplaceItemInObject(t, "shape", cJSON_CreateIntArray((int[]){rows[i], 4}, 2));
        cJSON_ReplaceItemInObject(t, "data_offsets", cJSON_CreateIntArray((int[]){b, b + rows[i] * 4 * esz[i]}, 2));
    }
}
/* A second config group: group size 64 for GATE0. */
static void ed_second_group(cJSON *q)
{
    cJSON *g = cJSON_Duplicate(cJSON_GetObjectItem(cJSON_GetObjectItem(q, "config_groups"), "group_0"), 1);
    cJSON_ReplaceItemInObject(g, "targets", cJSON_CreateStringArray((const char *[]){"re:.*layers\\.0\\.mlp\\.gate_proj$"}, 1));
    cJSON_ReplaceItemInObject(cJSON_GetObjectItem(g, "weights"), "group_size", cJSON_CreateNumber(64));
    cJSON_AddItemToObject(cJSON_GetObjectItem(q, "config_groups"), "group_1", g);
}
static void ed_scale_u8(cJSON *h)
{
    char n[200];
    tu_fmt(n, sizeof n, "%s.weight_scale", GATE0);
    cJSON_ReplaceItemInObject(cJSON_GetObjectItem(h, n), "dtype", cJSON_CreateString("U8"));
}

/* Runs `qchat CMD 'dir' ARGS`: exit want_rc, a one-line stderr holding want. */
static void expect_fail_cmd(const char *test, const char *cmd, const char *dir, const char *args, int want_rc,
                            const char *want)
{
    char a[1600], *out, *err;
    tu_fmt(a, sizeof a, "%s '%s' %s", cmd, dir, args);
    int rc = tu_run_qchat(a, &out, &err);
    size_t el = strlen(err);
    bool one_line = el > 0 && err[el - 1] == '\n' && !memchr(err, '\n', el - 1);
    CHECK(test, rc == want_rc && one_line && strstr(err, want), "exit %d (want %d), stderr '%s' (want '%s')", rc,
          want_rc, err, want);
    free(out);
    free(err);
}

static void check_damaged_quant(void)
{
    char ids[600], score[800], name[200];
    tu_fmt(ids, sizeof ids, "%s/ids.txt", work);
    tu_spit(ids, "1 2 3 4 5\n", 10);
    tu_fmt(score, sizeof score, "--ids '%s' --out '%s/scored.safetensors'", ids, work);
    const char *d;

    /* what the headers and config.json contradict: refused by inspect */
    d = fresh("tiny-qwen35-int4-autoround", "bits");
    edit_config(d, "quantization_config", ed_bits8);
    expect_fail_cmd("damaged_gptq_bits_vs_config", "inspect", d, "", 3,
                    "has shape of 4-bit weights, but config.json says bits 8");
    d = fresh("tiny-qwen35-int4-awq", "nozp");
    rewrite(d, "model.safetensors", ed_drop_zero_point, false);
    expect_fail_cmd("damaged_ct_asym_without_zero_point", "inspect", d, "", 3,
                    "gate_proj.weight_zero_point, which config.json's symmetric: false requires");
    d = fresh("tiny-qwen35-nvfp4", "u8scale");
    rewrite(d, "model.safetensors", ed_scale_u8, true);
    expect_fail_cmd("damaged_nvfp4_scales_as_mxfp4", "inspect", d, "", 3,
                    "has dtype U8 (MXFP4 scales), but the module has a weight_global_scale");

    /* a module of another group size: refused under a one-group config,
     * read when a second config group may give it one (tensors decide) */
    d = fresh("tiny-qwen35-int4-awq", "g64");
    rewrite(d, "model.safetensors", ed_gate_g64, false);
    expect_fail_cmd("damaged_ct_group_vs_config", "inspect", d, "", 3,
                    "gate_proj.weight_scale has 4 groups, not ceil(K / group size) for K=256");
    edit_config(d, "quantization_config", ed_second_group);
    char *out, *err;
    char args[1600];
    tu_fmt(args, sizeof args, "score '%s' %s", d, score);
    int rc = tu_run_qchat(args, &out, &err);
    CHECK("ct_second_group_size_read", rc == 0, "exit %d: %s", rc, err);
    free(out);
    free(err);

    /* what only the data shows: refused when the model loads (CPU: all
     * scales at load; GPU: as the repacking reads them) */
    d = fresh("tiny-qwen35-fp8", "nanscale");
    tu_fmt(name, sizeof name, "%s.weight_scale_inv", GATE0);
    poke(d, "model.safetensors", name, 2, "\xc0\x7f", 2); /* BF16 NaN, element 1 */
    expect_fail_cmd("damaged_fp8_nan_scale", "score", d, score, 3,
                    "gate_proj.weight_scale_inv holds a non-finite value (NaN or infinity) at element 1");
    d = fresh("tiny-qwen35-nvfp4", "nanscale");
    tu_fmt(name, sizeof name, "%s.weight_scale", GATE0);
    poke(d, "model.safetensors", name, 16 * 300 + 5, "\x7f", 1); /* E4M3 NaN, row 300 */
    expect_fail_cmd("damaged_nvfp4_nan_scale", "score", d, score, 3,
                    "gate_proj.weight_scale holds a non-finite value (NaN or infinity) at element 4805");
    d = fresh("tiny-qwen35-int4-autoround", "nanscale");
    tu_fmt(name, sizeof name, "%s.scales", GATE0);
    poke(d, "model.safetensors", name, 2 * 515, "\x00\x7c", 2); /* F16 +inf: group 1, column 3 */
    expect_fail_cmd("damaged_gptq_inf_scale", "score", d, score, 3,
                    "gate_proj.scales holds a non-finite value (NaN or infinity) at element 515");
    d = fresh("tiny-qwen35-int4-awq", "wshape");
    tu_fmt(name, sizeof name, "%s.weight_shape", GATE0);
    poke(d, "model.safetensors", name, 0, (const uint8_t[16]){7, 0, 0, 0, 0, 0, 0, 0, 9}, 16);
    expect_fail_cmd("damaged_ct_weight_shape", "score", d, score, 3, "says [7, 9], but the module is [512, 256]");

    /* a NaN weight code (not scanned at load): the logits show it, and
     * neither scoring nor sampling goes on with them */
    d = fresh("tiny-qwen35-fp8", "nanweight");
    tu_fmt(name, sizeof name, "%s.weight", GATE0);
    poke(d, "model.safetensors", name, 700, "\x7f", 1);
    expect_fail_cmd("damaged_fp8_nan_weight_score", "score", d, score, 1,
                    "the model's logits at position 0 are not finite (1024 of 1024 NaN or infinite)");
    expect_fail_cmd("damaged_fp8_nan_weight_run", "run", d, "-p hi --max-tokens 2 --no-think", 1,
                    "are not finite (1007 of 1007 NaN or infinite): a weight of the checkpoint is NaN");
}

static void check_text(void)
{
    char dir[1024], args[1200], *out, *err;
    th_model_dir(dir, sizeof dir, "tiny-qwen35-nvfp4-modelopt");
    tu_fmt(args, sizeof args, "inspect '%s'", dir);
    int rc = tu_run_qchat(args, &out, &err);
    CHECK("inspect_text_table",
          rc == 0 && strstr(out, "precision map") && strstr(out, "mlp                nvfp4-modelopt       12") &&
              strstr(out, "attention          fp8-tensor            4") &&
              strstr(out, "linear-attn-gates  bf16                  6") &&
              strstr(out, "MTP           present") && strstr(out, "vision tower"),
          "exit %d\n%s%s", rc, out, err);
    free(out);
    free(err);
}

int main(void)
{
    static const char *fx[] = {"tiny-qwen35", "tiny-qwen35-fp8", "tiny-qwen35-int4-autoround",
                               "tiny-qwen35-int4-awq", "tiny-qwen35-nvfp4",
                               "tiny-qwen35-nvfp4-modelopt", "tiny-qwen36-text",
                               "tiny-qwen36-text-fp8", "tiny-qwen35-moe", "tiny-qwen35-moe-fp8"};
    const char *bin = getenv("QCHAT_BIN");
    if (!bin || access(bin, X_OK) != 0) {
        CHECK("inspect_binary", 0, "QCHAT_BIN (%s) is not an executable qchat", bin ? bin : "unset");
        return th_exit();
    }
    for (size_t i = 0; i < sizeof fx / sizeof *fx; i++)
        check_fixture(fx[i]);
    check_text();
    check_27b(false);
    check_27b(true);
    tu_tmpdir(work, sizeof work, "bad");
    check_malformed();
    check_damaged_quant();
    char cmd[600];
    tu_fmt(cmd, sizeof cmd, "rm -rf '%s'", work);
    if (system(cmd) != 0)
        return 1;
    return th_exit();
}
