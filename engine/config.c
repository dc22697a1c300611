/* config.c — see config.h. Every value is validated here so that the
 * engine can size buffers from it without further checks: counts are
 * positive and bounded, head counts divide, layer_types has one entry per
 * layer. */
#include "config.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Upper bound for any size field: keeps every product of two of them (and
 * the byte counts built from them) far from overflow. */
#define CFG_MAX_DIM (1 << 24)

typedef struct cfg_ctx {
    const char *label;  /* file name for messages */
    const char *where;  /* "text_config." or "" */
    qc_err *err;
} cfg_ctx;

static const cJSON *cfg_get(const cJSON *obj, const char *key)
{
    return obj ? cJSON_GetObjectItemCaseSensitive(obj, key) : NULL;
}

/* Integer field: required (returns error when absent) or optional (keeps
 * *out). Must be an integer in [lo, hi]. */
static int cfg_int(const cfg_ctx *c, const cJSON *obj, const char *key, bool required, int lo,
                   int hi, int *out)
{
    const cJSON *v = cfg_get(obj, key);
    if (!v || cJSON_IsNull(v)) {
        if (required)
            return qc_err_set(c->err, QC_EXIT_CHECKPOINT, "%s: missing required field %s%s",
                              c->label, c->where, key);
        return QC_OK;
    }
    double d = cJSON_IsNumber(v) ? v->valuedouble : NAN;
    if (!(d >= lo && d <= hi) || d != floor(d))
        return qc_err_set(c->err, QC_EXIT_CHECKPOINT,
                          "%s: field %s%s must be an integer in [%d, %d]", c->label, c->where, key,
                          lo, hi);
    *out = (int)d;
    return QC_OK;
}

static int cfg_num(const cfg_ctx *c, const cJSON *obj, const char *key, double lo, double hi,
                   double *out, bool *found)
{
    const cJSON *v = cfg_get(obj, key);
    if (found)
        *found = false;
    if (!v || cJSON_IsNull(v))
        return QC_OK;
    if (!cJSON_IsNumber(v) || !(v->valuedouble >= lo && v->valuedouble <= hi))
        return qc_err_set(c->err, QC_EXIT_CHECKPOINT, "%s: field %s%s must be a number in [%g, %g]",
                          c->label, c->where, key, lo, hi);
    *out = v->valuedouble;
    if (found)
        *found = true;
    return QC_OK;
}

static int cfg_bool(const cfg_ctx *c, const cJSON *obj, const char *key, bool *out, bool *found)
{
    const cJSON *v = cfg_get(obj, key);
    if (found)
        *found = false;
    if (!v || cJSON_IsNull(v))
        return QC_OK;
    if (!cJSON_IsBool(v))
        return qc_err_set(c->err, QC_EXIT_CHECKPOINT, "%s: field %s%s must be true or false",
                          c->label, c->where, key);
    *out = cJSON_IsTrue(v);
    if (found)
        *found = true;
    return QC_OK;
}

static void cfg_str(const cJSON *obj, const char *key, char *out, size_t n)
{
    const cJSON *v = cfg_get(obj, key);
    if (cJSON_IsString(v))
        snprintf(out, n, "%s", v->valuestring);
}

/* eos_token_id: an int or a list of ints. */
static int cfg_eos(const cfg_ctx *c, const cJSON *obj, int *ids, int *n)
{
    const cJSON *v = cfg_get(obj, "eos_token_id");
    if (!v || cJSON_IsNull(v))
        return QC_OK;
    const cJSON *one = v;
    int count = 0;
    if (cJSON_IsArray(v))
        one = v->child;
    for (; one; one = cJSON_IsArray(v) ? one->next : NULL) {
        double d = cJSON_IsNumber(one) ? one->valuedouble : -1;
        if (!(d >= 0 && d < 1e9) || d != floor(d))
            return qc_err_set(c->err, QC_EXIT_CHECKPOINT,
                              "%s: field %seos_token_id must be a token id or a list of them",
                              c->label, c->where);
        if (count < QC_MAX_EOS)
            ids[count++] = (int)d;
    }
    *n = count;
    return QC_OK;
}

static int cfg_layer_types(const cfg_ctx *c, const cJSON *tc, qc_config *cfg)
{
    const cJSON *lt = cfg_get(tc, "layer_types");
    int L = cfg->num_hidden_layers;
    if (lt && !cJSON_IsNull(lt)) {
        if (!cJSON_IsArray(lt) || cJSON_GetArraySize(lt) != L)
            return qc_err_set(c->err, QC_EXIT_CHECKPOINT,
                              "%s: field %slayer_types must list %d layer types", c->label,
                              c->where, L);
        int i = 0;
        for (const cJSON *e = lt->child; e; e = e->next, i++) {
            const char *s = cJSON_IsString(e) ? e->valuestring : "";
            if (!strcmp(s, "full_attention"))
                cfg->layer_full[i] = true;
            else if (!strcmp(s, "linear_attention"))
                cfg->layer_full[i] = false;
            else
                return qc_err_set(c->err, QC_EXIT_CHECKPOINT,
                                  "%s: field %slayer_types[%d] is '%.40s', not "
                                  "linear_attention or full_attention",
                                  c->label, c->where, i, s);
        }
    } else {
        int rc = cfg_int(c, tc, "full_attention_interval", false, 1, QC_MAX_LAYERS,
                         &cfg->full_attention_interval);
        if (rc)
            return rc;
        for (int i = 0; i < L; i++)
            cfg->layer_full[i] = (i + 1) % cfg->full_attention_interval == 0;
    }
    cfg->n_full_layers = cfg->n_linear_layers = 0;
    for (int i = 0; i < L; i++) {
        if (cfg->layer_full[i])
            cfg->n_full_layers++;
        else
            cfg->n_linear_layers++;
    }
    return QC_OK;
}

static int cfg_rope(const cfg_ctx *c, const cJSON *tc, qc_config *cfg)
{
    /* rope_parameters (transformers 5) wins over the older top-level fields */
    const cJSON *rp = cfg_get(tc, "rope_parameters");
    if (rp && !cJSON_IsNull(rp) && !cJSON_IsObject(rp))
        return qc_err_set(c->err, QC_EXIT_CHECKPOINT, "%s: field %srope_parameters is not an object",
                          c->label, c->where);
    bool have_theta = false, f1 = false, f2 = false;
    int rc = cfg_num(c, tc, "rope_theta", 1e-3, 1e15, &cfg->rope_theta, &have_theta);
    if (!rc)
        rc = cfg_num(c, tc, "partial_rotary_factor", 1e-6, 1.0, &cfg->partial_rotary_factor, &f1);
    cfg_ctx c2 = *c;
    char where[64];
    snprintf(where, sizeof where, "%srope_parameters.", c->where);
    c2.where = where;
    if (!rc && rp && cJSON_IsObject(rp)) {
        rc = cfg_num(&c2, rp, "rope_theta", 1e-3, 1e15, &cfg->rope_theta, &f2);
        have_theta |= f2;
        if (!rc)
            rc = cfg_num(&c2, rp, "partial_rotary_factor", 1e-6, 1.0, &cfg->partial_rotary_factor,
                         NULL);
        if (!rc)
            rc = cfg_bool(&c2, rp, "mrope_interleaved", &cfg->mrope_interleaved, NULL);
        const cJSON *ms = cfg_get(rp, "mrope_section");
        if (!rc && cJSON_IsArray(ms) && cJSON_GetArraySize(ms) == 3) {
            int i = 0;
            for (const cJSON *e = ms->child; e; e = e->next, i++)
                if (cJSON_IsNumber(e) && e->valuedouble >= 0 && e->valuedouble < 65536)
                    cfg->mrope_section[i] = (int)e->valuedouble;
        }
    }
    if (rc)
        return rc;
    if (!have_theta)
        return qc_err_set(c->err, QC_EXIT_CHECKPOINT,
                          "%s: missing required field %srope_parameters.rope_theta (or "
                          "%srope_theta)",
                          c->label, c->where, c->where);
    (void)f1;
    cfg->rotary_dim = (int)lround(cfg->head_dim * cfg->partial_rotary_factor);
    if (cfg->rotary_dim < 2 || cfg->rotary_dim % 2 || cfg->rotary_dim > cfg->head_dim)
        return qc_err_set(c->err, QC_EXIT_CHECKPOINT,
                          "%s: head_dim %d x partial_rotary_factor %g is not an even rotary "
                          "dimension",
                          c->label, cfg->head_dim, cfg->partial_rotary_factor);
    return QC_OK;
}

static void quant_defaults(qc_quant_config *q)
{
    memset(q, 0, sizeof *q);
    q->sym = true;
}

/* Whether a per-module override map (AutoRound's extra_config: {module:
 * {bits: ...}}, GPTQ's dynamic: {"+:regex": {bits: ..., group_size: ...}})
 * gives some modules quantized bits or a group size other than the
 * config's; 16-bit entries (modules left unquantized, as AutoRound's
 * in_proj_a/b) do not count. */
static bool quant_overrides(const cJSON *map, int bits, int group_size)
{
    for (const cJSON *e = cJSON_IsObject(map) ? map->child : NULL; e; e = e->next) {
        const cJSON *b = cfg_get(e, "bits"), *g = cfg_get(e, "group_size");
        if (cJSON_IsNumber(b) && b->valuedouble >= 16)
            continue;
        if ((cJSON_IsNumber(b) && (int)b->valuedouble != bits) ||
            (cJSON_IsNumber(g) && (int)g->valuedouble != group_size))
            return true;
    }
    return false;
}

/* quantization_config of config.json, or the "quantization" object of
 * hf_quant_config.json (ModelOpt). Parameters only; see config.h. */
static int cfg_quant(const cfg_ctx *c0, const cJSON *qc, qc_quant_config *q)
{
    quant_defaults(q);
    if (!qc || cJSON_IsNull(qc))
        return QC_OK;
    cfg_ctx c = *c0;
    c.where = "quantization_config.";
    if (!cJSON_IsObject(qc))
        return qc_err_set(c.err, QC_EXIT_CHECKPOINT, "%s: quantization_config is not an object",
                          c.label);
    q->present = true;
    cfg_str(qc, "quant_method", q->quant_method, sizeof q->quant_method);
    int rc = cfg_int(&c, qc, "bits", false, 1, 16, &q->bits);
    if (!rc)
        rc = cfg_int(&c, qc, "group_size", false, -1, CFG_MAX_DIM, &q->group_size);
    if (!rc)
        rc = cfg_bool(&c, qc, "sym", &q->sym, NULL);
    if (!rc)
        rc = cfg_bool(&c, qc, "desc_act", &q->desc_act, NULL);
    if (rc)
        return rc;
    cfg_str(qc, "activation_scheme", q->activation_scheme, sizeof q->activation_scheme);
    const cJSON *bs = cfg_get(qc, "weight_block_size");
    if (cJSON_IsArray(bs)) {
        if (cJSON_GetArraySize(bs) != 2 || !cJSON_IsNumber(bs->child) ||
            !cJSON_IsNumber(bs->child->next) || bs->child->valuedouble < 1 ||
            bs->child->next->valuedouble < 1 || bs->child->valuedouble > CFG_MAX_DIM ||
            bs->child->next->valuedouble > CFG_MAX_DIM)
            return qc_err_set(c.err, QC_EXIT_CHECKPOINT,
                              "%s: quantization_config.weight_block_size must be [rows, cols]",
                              c.label);
        q->block_n = (int)bs->child->valuedouble;
        q->block_k = (int)bs->child->next->valuedouble;
    }
    const char *m = q->quant_method;
    if (!strcmp(m, "gptq")) {
        cfg_str(qc, "checkpoint_format", q->format, sizeof q->format);
        q->zeros_plus_one = strcmp(q->format, "gptq_v2") != 0;
    } else if (!strcmp(m, "auto-round") || !strcmp(m, "auto_round")) {
        cfg_str(qc, "packing_format", q->format, sizeof q->format);
        /* auto_round:auto_gptq / auto_gptq exports keep GPTQ v1's z-1 */
        q->zeros_plus_one = strstr(q->format, "gptq") && !strstr(q->format, "gptq_v2");
    } else if (!strcmp(m, "awq")) {
        cfg_str(qc, "version", q->format, sizeof q->format);
        bool zp = true;
        rc = cfg_bool(&c, qc, "zero_point", &zp, NULL);
        if (!rc)
            rc = cfg_int(&c, qc, "w_bit", false, 1, 16, &q->bits);
        if (!rc)
            rc = cfg_int(&c, qc, "q_group_size", false, -1, CFG_MAX_DIM, &q->group_size);
        q->sym = !zp;
    } else if (!strcmp(m, "compressed-tensors")) {
        cfg_str(qc, "format", q->format, sizeof q->format);
        const cJSON *groups = cfg_get(qc, "config_groups");
        /* the first group with weight parameters; mixed configs are
         * classified per module from the tensors anyway. all_asym: whether
         * every group says symmetric: false, so that a module without its
         * zero points is an error whichever group it belongs to. */
        int ngroups = 0, nasym = 0;
        for (const cJSON *g = groups ? groups->child : NULL; g && !rc; g = g->next) {
            const cJSON *w = cfg_get(g, "weights");
            if (!cJSON_IsObject(w))
                continue;
            c.where = "quantization_config.config_groups.*.weights.";
            bool sym = true;
            rc = cfg_bool(&c, w, "symmetric", &sym, NULL);
            nasym += !sym;
            if (ngroups++)
                continue;
            q->sym = sym;
            if (!rc)
                rc = cfg_int(&c, w, "num_bits", false, 1, 16, &q->bits);
            if (!rc)
                rc = cfg_int(&c, w, "group_size", false, -1, CFG_MAX_DIM, &q->group_size);
            if (!q->format[0])
                cfg_str(g, "format", q->format, sizeof q->format);
        }
        q->all_asym = ngroups > 0 && nasym == ngroups;
        q->per_module = ngroups > 1; /* (groups of other bits or group sizes: tensors decide) */
    } else if (!strcmp(m, "modelopt") || cfg_get(qc, "quant_algo")) {
        if (!m[0])
            snprintf(q->quant_method, sizeof q->quant_method, "modelopt");
        cfg_str(qc, "quant_algo", q->format, sizeof q->format);
    }
    q->per_module = q->per_module || quant_overrides(cfg_get(qc, "extra_config"), q->bits, q->group_size) ||
                    quant_overrides(cfg_get(qc, "dynamic"), q->bits, q->group_size);
    return rc;
}

static int cfg_parse_root(const cJSON *root, const char *label, qc_config *cfg, qc_err *err)
{
    cfg_ctx c = {.label = label, .where = "", .err = err};
    if (!cJSON_IsObject(root))
        return qc_err_set(err, QC_EXIT_CHECKPOINT, "%s: not a JSON object", label);
    const cJSON *archs = cfg_get(root, "architectures");
    if (cJSON_IsArray(archs) && cJSON_IsString(archs->child))
        snprintf(cfg->architecture, sizeof cfg->architecture, "%s", archs->child->valuestring);
    const cJSON *tc = cfg_get(root, "text_config");
    if (tc && !cJSON_IsNull(tc)) {
        if (!cJSON_IsObject(tc))
            return qc_err_set(err, QC_EXIT_CHECKPOINT, "%s: text_config is not an object", label);
        cfg->has_text_config = true;
        c.where = "text_config.";
    } else {
        tc = root;
    }
    cfg->has_vision = cJSON_IsObject(cfg_get(root, "vision_config"));
    cfg_str(tc, "model_type", cfg->model_type, sizeof cfg->model_type);
    if (!cfg->model_type[0])
        cfg_str(root, "model_type", cfg->model_type, sizeof cfg->model_type);
    snprintf(cfg->prefix, sizeof cfg->prefix, "%s",
             cfg->has_text_config ? "model.language_model." : "model.");

    int rc = 0;
#define REQ(key, lo, hi, field) \
    if (!rc)                    \
    rc = cfg_int(&c, tc, key, true, lo, hi, &cfg->field)
#define OPT(key, lo, hi, field) \
    if (!rc)                    \
    rc = cfg_int(&c, tc, key, false, lo, hi, &cfg->field)
    REQ("vocab_size", 1, CFG_MAX_DIM, vocab_size);
    REQ("hidden_size", 1, CFG_MAX_DIM, hidden_size);
    REQ("num_hidden_layers", 1, QC_MAX_LAYERS, num_hidden_layers);
    REQ("num_attention_heads", 1, 65536, num_attention_heads);
    REQ("num_key_value_heads", 1, 65536, num_key_value_heads);
    REQ("head_dim", 1, 65536, head_dim);
    OPT("num_experts", 0, 65536, num_experts);
    OPT("mtp_num_hidden_layers", 0, 64, mtp_num_hidden_layers);
    if (rc)
        return rc;
    cfg->is_moe = cfg->num_experts > 0;
    if (cfg->is_moe) {
        REQ("num_experts_per_tok", 1, cfg->num_experts, num_experts_per_tok);
        REQ("moe_intermediate_size", 1, CFG_MAX_DIM, moe_intermediate_size);
        OPT("shared_expert_intermediate_size", 0, CFG_MAX_DIM, shared_expert_intermediate_size);
        OPT("intermediate_size", 0, CFG_MAX_DIM, intermediate_size);
    } else {
        REQ("intermediate_size", 1, CFG_MAX_DIM, intermediate_size);
    }
    cfg->full_attention_interval = 4;
    if (!rc)
        rc = cfg_layer_types(&c, tc, cfg);
    if (!rc && cfg->n_linear_layers) {
        REQ("linear_num_key_heads", 1, 65536, linear_num_key_heads);
        REQ("linear_num_value_heads", 1, 65536, linear_num_value_heads);
        REQ("linear_key_head_dim", 1, 65536, linear_key_head_dim);
        REQ("linear_value_head_dim", 1, 65536, linear_value_head_dim);
        cfg->linear_conv_kernel_dim = 4;
        OPT("linear_conv_kernel_dim", 1, 64, linear_conv_kernel_dim);
    }
#undef REQ
#undef OPT
    if (rc)
        return rc;
    if (cfg->num_attention_heads % cfg->num_key_value_heads)
        return qc_err_set(err, QC_EXIT_CHECKPOINT,
                          "%s: num_attention_heads %d is not a multiple of num_key_value_heads %d",
                          label, cfg->num_attention_heads, cfg->num_key_value_heads);
    if (cfg->n_linear_layers && cfg->linear_num_value_heads % cfg->linear_num_key_heads)
        return qc_err_set(err, QC_EXIT_CHECKPOINT,
                          "%s: linear_num_value_heads %d is not a multiple of "
                          "linear_num_key_heads %d",
                          label, cfg->linear_num_value_heads, cfg->linear_num_key_heads);
    cfg->rms_norm_eps = 1e-6;
    cfg->partial_rotary_factor = 0.25; /* the family's value when a file omits it */
    bool tied_tc = false, tied_found = false, tied_top = false, top_found = false;
    rc = cfg_num(&c, tc, "rms_norm_eps", 0, 1, &cfg->rms_norm_eps, NULL);
    if (!rc)
        rc = cfg_rope(&c, tc, cfg);
    if (!rc)
        rc = cfg_bool(&c, tc, "tie_word_embeddings", &tied_tc, &tied_found);
    if (!rc && cfg->has_text_config) {
        cfg_ctx top = c;
        top.where = "";
        rc = cfg_bool(&top, root, "tie_word_embeddings", &tied_top, &top_found);
    }
    if (!rc)
        rc = cfg_eos(&c, tc, cfg->eos_ids, &cfg->n_eos);
    if (!rc && !cfg->n_eos && cfg->has_text_config) {
        cfg_ctx top = c;
        top.where = "";
        rc = cfg_eos(&top, root, cfg->eos_ids, &cfg->n_eos);
    }
    if (rc)
        return rc;
    /* the wrapper's own flag is what transformers ties by; the text config's
     * when the wrapper does not say */
    cfg->tie_word_embeddings = top_found ? tied_top : tied_found ? tied_tc : false;
    cfg_str(tc, "mamba_ssm_dtype", cfg->mamba_ssm_dtype, sizeof cfg->mamba_ssm_dtype);
    const cJSON *qcj = cfg_get(root, "quantization_config");
    if (!qcj && cfg->has_text_config)
        qcj = cfg_get(tc, "quantization_config");
    return cfg_quant(&c, qcj, &cfg->quant);
}

/* Messages quote names from the files; keep them one printable line. */
static int cfg_clean(int rc, qc_err *err)
{
    if (rc && err)
        for (char *p = err->msg; *p; p++)
            if ((unsigned char)*p < 0x20 || *p == 0x7f)
                *p = '?';
    return rc;
}

int qc_config_parse(const char *json, size_t len, const char *label, qc_config *cfg, qc_err *err)
{
    memset(cfg, 0, sizeof *cfg);
    cJSON *root = cJSON_ParseWithLength(json, len);
    if (!root)
        return qc_err_set(err, QC_EXIT_CHECKPOINT, "%s: not valid JSON", label);
    int rc = cfg_parse_root(root, label, cfg, err);
    cJSON_Delete(root);
    return cfg_clean(rc, err);
}

int qc_config_parse_generation(const char *json, size_t len, const char *label, qc_config *cfg,
                               qc_err *err)
{
    qc_gen_config *g = &cfg->gen;
    memset(g, 0, sizeof *g);
    cJSON *root = cJSON_ParseWithLength(json, len);
    if (!root)
        return qc_err_set(err, QC_EXIT_CHECKPOINT, "%s: not valid JSON", label);
    cfg_ctx c = {.label = label, .where = "", .err = err};
    int rc = QC_OK;
    if (!cJSON_IsObject(root))
        rc = qc_err_set(err, QC_EXIT_CHECKPOINT, "%s: not a JSON object", label);
    double v;
    bool f;
#define NUM(key, lo, hi, field)                                   \
    if (!rc) {                                                    \
        rc = cfg_num(&c, root, key, lo, hi, &v, &f);              \
        if (f) {                                                  \
            g->field = (float)v;                                  \
            g->has_##field = true;                                \
        }                                                         \
    }
    NUM("temperature", 0, 1e6, temperature);
    NUM("top_p", 0, 1, top_p);
    NUM("min_p", 0, 1, min_p);
    NUM("presence_penalty", -1e6, 1e6, presence_penalty);
    NUM("repetition_penalty", 0, 1e6, repetition_penalty);
#undef NUM
    if (!rc) {
        int k = 0;
        rc = cfg_int(&c, root, "top_k", false, 0, 1 << 30, &k);
        if (!rc && cfg_get(root, "top_k") && !cJSON_IsNull(cfg_get(root, "top_k"))) {
            g->top_k = k;
            g->has_top_k = true;
        }
    }
    if (!rc)
        rc = cfg_bool(&c, root, "do_sample", &g->do_sample, NULL);
    if (!rc)
        rc = cfg_eos(&c, root, g->eos_ids, &g->n_eos);
    cJSON_Delete(root);
    if (!rc)
        g->present = true;
    return cfg_clean(rc, err);
}

/* Optional JSON file: QC_OK with *text NULL when absent. */
static int cfg_read_optional(const char *dir, const char *name, char **path, char **text,
                             size_t *len, qc_err *err)
{
    *text = NULL;
    *path = qc_path_join(dir, name);
    if (!*path)
        return qc_err_set(err, QC_EXIT_RUNTIME, "out of memory");
    if (access(*path, F_OK) != 0)
        return QC_OK;
    return qc_read_file(*path, text, len, QC_EXIT_CHECKPOINT, err);
}

static void cfg_locate_template(const char *dir, qc_config *cfg)
{
    char *p = qc_path_join(dir, "chat_template.jinja");
    if (p && access(p, R_OK) == 0) {
        cfg->template_src = QC_TEMPLATE_JINJA_FILE;
        snprintf(cfg->template_path, sizeof cfg->template_path, "%s", p);
        free(p);
        return;
    }
    free(p);
    p = qc_path_join(dir, "tokenizer_config.json");
    char *text = NULL;
    size_t len = 0;
    qc_err e;
    if (p && qc_read_file(p, &text, &len, QC_EXIT_CHECKPOINT, &e) == QC_OK) {
        cJSON *root = cJSON_ParseWithLength(text, len);
        const cJSON *t = cfg_get(root, "chat_template");
        /* a string, or a list of {name, template} (named templates) */
        if (cJSON_IsString(t) || (cJSON_IsArray(t) && cJSON_GetArraySize(t) > 0)) {
            cfg->template_src = QC_TEMPLATE_TOKENIZER_CONFIG;
            snprintf(cfg->template_path, sizeof cfg->template_path, "%s", p);
        }
        cJSON_Delete(root);
        free(text);
    }
    free(p);
}

int qc_config_load(const char *dir, qc_config *cfg, qc_err *err)
{
    char *path = qc_path_join(dir, "config.json");
    if (!path)
        return qc_err_set(err, QC_EXIT_RUNTIME, "out of memory");
    char *text = NULL;
    size_t len = 0;
    int rc = qc_read_file(path, &text, &len, QC_EXIT_CHECKPOINT, err);
    if (rc == QC_EXIT_CHECKPOINT && access(path, F_OK) != 0)
        rc = qc_err_set(err, QC_EXIT_CHECKPOINT, "%s: missing (every checkpoint needs config.json)",
                        path);
    if (!rc)
        rc = qc_config_parse(text, len, path, cfg, err);
    free(text);
    free(path);
    if (rc)
        return rc;
    snprintf(cfg->dir, sizeof cfg->dir, "%s", dir);

    rc = cfg_read_optional(dir, "generation_config.json", &path, &text, &len, err);
    if (!rc && text)
        rc = qc_config_parse_generation(text, len, path, cfg, err);
    free(text);
    free(path);
    if (rc)
        return rc;

    if (!cfg->quant.present) {
        rc = cfg_read_optional(dir, "hf_quant_config.json", &path, &text, &len, err);
        if (!rc && text) {
            cJSON *root = cJSON_ParseWithLength(text, len);
            if (!root || !cJSON_IsObject(root)) {
                rc = qc_err_set(err, QC_EXIT_CHECKPOINT, "%s: not a valid JSON object", path);
            } else {
                cfg_ctx c = {.label = path, .where = "", .err = err};
                const cJSON *q = cfg_get(root, "quantization");
                rc = cfg_clean(cfg_quant(&c, q ? q : root, &cfg->quant), err);
                if (!rc && !cfg->quant.quant_method[0])
                    snprintf(cfg->quant.quant_method, sizeof cfg->quant.quant_method, "modelopt");
            }
            cJSON_Delete(root);
        }
        free(text);
        free(path);
        if (rc)
            return rc;
    }
    cfg_locate_template(dir, cfg);
    return QC_OK;
}

int qc_config_conv_dim(const qc_config *cfg)
{
    return 2 * cfg->linear_num_key_heads * cfg->linear_key_head_dim +
           cfg->linear_num_value_heads * cfg->linear_value_head_dim;
}

bool qc_config_is_eos(const qc_config *cfg, int id)
{
    const int *ids = cfg->gen.n_eos ? cfg->gen.eos_ids : cfg->eos_ids;
    int n = cfg->gen.n_eos ? cfg->gen.n_eos : cfg->n_eos;
    for (int i = 0; i < n; i++)
        if (ids[i] == id)
            return true;
    return false;
}
