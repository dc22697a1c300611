/* test_config.c — config.json / generation_config.json / hf_quant_config.json
 * reading: every fixture against what fixtures/README.md says about it, the
 * layouts the family uses (text_config or top level, both rope layouts,
 * layer_types or its derivation), each required-field fault, and the replay
 * of the fuzz corpus (tests/corpus/config). */
#include <math.h>

#include "config.h"
#include "harness.h"
#include "st_testutil.h"

static qc_config cfg; /* large; static */

static int load(const char *model, qc_err *err)
{
    char dir[1024];
    th_model_dir(dir, sizeof dir, model);
    return qc_config_load(dir, &cfg, err);
}

static const char *pattern(const qc_config *c)
{
    static char buf[QC_MAX_LAYERS + 1];
    int i = 0;
    for (; i < c->num_hidden_layers; i++)
        buf[i] = c->layer_full[i] ? 'F' : 'l';
    buf[i] = 0;
    return buf;
}

static void test_fixtures(void)
{
    qc_err err = {0};
    int rc = load("tiny-qwen35", &err);
    CHECK("cfg_tiny_qwen35_dims",
          !rc && cfg.has_text_config && cfg.has_vision && !cfg.is_moe && cfg.hidden_size == 256 &&
              cfg.intermediate_size == 512 && cfg.vocab_size == 1024 && cfg.num_hidden_layers == 4 &&
              !strcmp(pattern(&cfg), "lllF") && cfg.n_full_layers == 1 &&
              cfg.num_attention_heads == 6 && cfg.num_key_value_heads == 2 && cfg.head_dim == 64 &&
              cfg.rotary_dim == 16 && cfg.linear_num_key_heads == 2 &&
              cfg.linear_num_value_heads == 6 && cfg.linear_key_head_dim == 64 &&
              cfg.linear_value_head_dim == 64 && cfg.linear_conv_kernel_dim == 4 &&
              !cfg.tie_word_embeddings && cfg.mtp_num_hidden_layers == 1 &&
              fabs(cfg.rope_theta - 1e7) < 1 && fabs(cfg.rms_norm_eps - 1e-6) < 1e-12 &&
              !strcmp(cfg.prefix, "model.language_model.") && cfg.mrope_interleaved &&
              cfg.mrope_section[0] == 4 && !cfg.quant.present,
          "rc=%d %s", rc, err.msg);
    CHECK("cfg_tiny_qwen35_generation",
          !rc && cfg.gen.present && cfg.gen.n_eos == 2 && cfg.gen.eos_ids[0] == 1002 &&
              cfg.gen.eos_ids[1] == 1000 && cfg.gen.has_temperature &&
              fabsf(cfg.gen.temperature - 0.6f) < 1e-6f && cfg.gen.top_k == 20 &&
              fabsf(cfg.gen.top_p - 0.95f) < 1e-6f && !cfg.gen.has_min_p &&
              qc_config_is_eos(&cfg, 1002) && qc_config_is_eos(&cfg, 1000) &&
              !qc_config_is_eos(&cfg, 1001),
          "generation config misread");
    CHECK("cfg_tiny_qwen35_template",
          !rc && cfg.template_src == QC_TEMPLATE_JINJA_FILE &&
              strstr(cfg.template_path, "tiny-qwen35/chat_template.jinja"),
          "template %d %s", cfg.template_src, cfg.template_path);

    rc = load("tiny-qwen36-text", &err);
    CHECK("cfg_tiny_qwen36_text",
          !rc && !cfg.has_text_config && !cfg.has_vision && !strcmp(cfg.prefix, "model.") &&
              cfg.hidden_size == 128 && cfg.num_attention_heads == 4 &&
              cfg.num_key_value_heads == 1 && cfg.head_dim == 32 && cfg.rotary_dim == 8 &&
              cfg.linear_num_key_heads == 2 && cfg.linear_num_value_heads == 2 &&
              cfg.tie_word_embeddings && cfg.mtp_num_hidden_layers == 0 &&
              cfg.template_src == QC_TEMPLATE_TOKENIZER_CONFIG &&
              strstr(cfg.template_path, "tokenizer_config.json"),
          "rc=%d %s", rc, err.msg);

    rc = load("tiny-qwen35-moe", &err);
    CHECK("cfg_tiny_qwen35_moe",
          !rc && cfg.is_moe && cfg.num_experts == 8 && cfg.num_experts_per_tok == 2 &&
              cfg.moe_intermediate_size == 64 && cfg.shared_expert_intermediate_size == 64 &&
              cfg.vocab_size == 512 && cfg.hidden_size == 128 && cfg.linear_num_value_heads == 4 &&
              !strcmp(cfg.model_type, "qwen3_5_moe_text"),
          "rc=%d %s", rc, err.msg);

    rc = load("tiny-qwen35-fp8", &err);
    CHECK("cfg_quant_fp8",
          !rc && cfg.quant.present && !strcmp(cfg.quant.quant_method, "fp8") &&
              cfg.quant.block_n == 128 && cfg.quant.block_k == 128 &&
              !strcmp(cfg.quant.activation_scheme, "dynamic"),
          "rc=%d %s", rc, err.msg);
    rc = load("tiny-qwen35-int4-autoround", &err);
    CHECK("cfg_quant_autoround",
          !rc && !strcmp(cfg.quant.quant_method, "auto-round") && cfg.quant.bits == 4 &&
              cfg.quant.group_size == 128 && cfg.quant.sym && cfg.quant.zeros_plus_one &&
              !strcmp(cfg.quant.format, "auto_round:auto_gptq"),
          "rc=%d %s", rc, err.msg);
    rc = load("tiny-qwen35-int4-awq", &err);
    CHECK("cfg_quant_ct_int",
          !rc && !strcmp(cfg.quant.quant_method, "compressed-tensors") && cfg.quant.bits == 4 &&
              cfg.quant.group_size == 32 && !cfg.quant.sym &&
              !strcmp(cfg.quant.format, "pack-quantized"),
          "rc=%d %s", rc, err.msg);
    rc = load("tiny-qwen35-nvfp4", &err);
    CHECK("cfg_quant_nvfp4_ct",
          !rc && cfg.quant.group_size == 16 && !strcmp(cfg.quant.format, "nvfp4-pack-quantized"),
          "rc=%d %s", rc, err.msg);
    rc = load("tiny-qwen35-nvfp4-modelopt", &err);
    CHECK("cfg_quant_modelopt",
          !rc && !strcmp(cfg.quant.quant_method, "modelopt") &&
              !strcmp(cfg.quant.format, "MIXED_PRECISION") && cfg.quant.group_size == 16,
          "rc=%d %s", rc, err.msg);
}

/* tiny-qwen36-text's config.json, edited by `edit` (a cJSON callback). */
static int parse_edited(void (*edit)(cJSON *), qc_err *err)
{
    char path[1024];
    th_model_dir(path, sizeof path, "tiny-qwen36-text");
    strncat(path, "/config.json", sizeof path - strlen(path) - 1);
    size_t len;
    char *text = (char *)tu_slurp(path, &len);
    cJSON *root = cJSON_Parse(text);
    free(text);
    edit(root);
    char *s = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    int rc = qc_config_parse(s, strlen(s), "config.json", &cfg, err);
    free(s);
    return rc;
}

static void ed_derive(cJSON *r)
{
    cJSON_DeleteItemFromObject(r, "layer_types");
    cJSON_ReplaceItemInObject(r, "num_hidden_layers", cJSON_CreateNumber(8));
}
static void ed_interval(cJSON *r)
{
    ed_derive(r);
    cJSON_AddNumberToObject(r, "full_attention_interval", 2);
}
static void ed_old_rope(cJSON *r)
{
    cJSON_DeleteItemFromObject(r, "rope_parameters");
    cJSON_DeleteItemFromObject(r, "partial_rotary_factor");
    cJSON_AddNumberToObject(r, "rope_theta", 5e6);
    cJSON_AddNumberToObject(r, "partial_rotary_factor", 0.5);
}
static void ed_new_rope_wins(cJSON *r)
{
    cJSON_AddNumberToObject(r, "rope_theta", 123.0);
}
static void ed_no_rope(cJSON *r)
{
    cJSON_DeleteItemFromObject(r, "rope_parameters");
    cJSON_DeleteItemFromObject(r, "rope_theta");
}
static void ed_no_hidden(cJSON *r) { cJSON_DeleteItemFromObject(r, "hidden_size"); }
static void ed_no_linear(cJSON *r) { cJSON_DeleteItemFromObject(r, "linear_num_value_heads"); }
static void ed_bad_types(cJSON *r)
{
    cJSON_ReplaceItemInArray(cJSON_GetObjectItem(r, "layer_types"), 1, cJSON_CreateString("sliding"));
}
static void ed_short_types(cJSON *r)
{
    cJSON_DeleteItemFromArray(cJSON_GetObjectItem(r, "layer_types"), 0);
}
static void ed_kv(cJSON *r) { cJSON_ReplaceItemInObject(r, "num_key_value_heads", cJSON_CreateNumber(3)); }
static void ed_neg(cJSON *r) { cJSON_ReplaceItemInObject(r, "vocab_size", cJSON_CreateNumber(-5)); }
static void ed_str(cJSON *r) { cJSON_ReplaceItemInObject(r, "head_dim", cJSON_CreateString("32")); }
static void ed_eos_list(cJSON *r)
{
    int ids[3] = {7, 8, 9};
    cJSON_ReplaceItemInObject(r, "eos_token_id", cJSON_CreateIntArray(ids, 3));
}
static void ed_moe_missing(cJSON *r) { cJSON_AddNumberToObject(r, "num_experts", 8); }

static void test_variants(void)
{
    qc_err err = {0};
    int rc = parse_edited(ed_derive, &err);
    CHECK("cfg_layer_types_derived", !rc && !strcmp(pattern(&cfg), "lllFlllF"), "rc=%d %s %s", rc,
          err.msg, pattern(&cfg));
    rc = parse_edited(ed_interval, &err);
    CHECK("cfg_layer_types_interval", !rc && !strcmp(pattern(&cfg), "lFlFlFlF"), "rc=%d %s", rc,
          err.msg);
    rc = parse_edited(ed_old_rope, &err);
    CHECK("cfg_rope_top_level", !rc && fabs(cfg.rope_theta - 5e6) < 1 && cfg.rotary_dim == 16,
          "rc=%d %s theta %g rot %d", rc, err.msg, cfg.rope_theta, cfg.rotary_dim);
    rc = parse_edited(ed_new_rope_wins, &err);
    CHECK("cfg_rope_parameters_win", !rc && fabs(cfg.rope_theta - 1e7) < 1, "theta %g",
          cfg.rope_theta);
    rc = parse_edited(ed_eos_list, &err);
    CHECK("cfg_eos_list", !rc && cfg.n_eos == 3 && cfg.eos_ids[2] == 9 && qc_config_is_eos(&cfg, 8),
          "rc=%d", rc);

    struct {
        const char *name;
        void (*edit)(cJSON *);
        const char *want;
    } bad[] = {
        {"cfg_bad_missing_hidden_size", ed_no_hidden, "missing required field hidden_size"},
        {"cfg_bad_missing_linear_field", ed_no_linear, "linear_num_value_heads"},
        {"cfg_bad_missing_rope", ed_no_rope, "rope_theta"},
        {"cfg_bad_layer_type", ed_bad_types, "layer_types[1]"},
        {"cfg_bad_layer_types_length", ed_short_types, "layer_types must list 4"},
        {"cfg_bad_kv_heads", ed_kv, "num_key_value_heads"},
        {"cfg_bad_negative", ed_neg, "vocab_size"},
        {"cfg_bad_string_number", ed_str, "head_dim"},
        {"cfg_bad_moe_fields", ed_moe_missing, "num_experts_per_tok"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        rc = parse_edited(bad[i].edit, &err);
        CHECK(bad[i].name,
              rc == QC_EXIT_CHECKPOINT && strstr(err.msg, "config.json") &&
                  strstr(err.msg, bad[i].want) && !strchr(err.msg, '\n'),
              "rc=%d msg '%s'", rc, err.msg);
    }
    rc = qc_config_parse("{\"a\":", 5, "x/config.json", &cfg, &err);
    CHECK("cfg_bad_unparsable", rc == QC_EXIT_CHECKPOINT && strstr(err.msg, "x/config.json: not valid JSON"),
          "rc=%d %s", rc, err.msg);
    rc = qc_config_parse("[]", 2, "x/config.json", &cfg, &err);
    CHECK("cfg_bad_not_object", rc == QC_EXIT_CHECKPOINT && strstr(err.msg, "not a JSON object"),
          "rc=%d %s", rc, err.msg);
    rc = qc_config_load("/nonexistent-qchat-dir", &cfg, &err);
    CHECK("cfg_bad_missing_file",
          rc == QC_EXIT_CHECKPOINT && strstr(err.msg, "/nonexistent-qchat-dir/config.json") &&
              strstr(err.msg, "missing"),
          "rc=%d %s", rc, err.msg);
    const char *g = "{\"eos_token_id\": 5, \"min_p\": 0.05, \"presence_penalty\": 1.5, "
                    "\"repetition_penalty\": 1.1, \"temperature\": 1.0}";
    rc = qc_config_parse_generation(g, strlen(g), "generation_config.json", &cfg, &err);
    CHECK("cfg_generation_fields",
          !rc && cfg.gen.n_eos == 1 && cfg.gen.eos_ids[0] == 5 && cfg.gen.has_min_p &&
              fabsf(cfg.gen.min_p - 0.05f) < 1e-6f && cfg.gen.has_presence_penalty &&
              fabsf(cfg.gen.presence_penalty - 1.5f) < 1e-6f && cfg.gen.has_repetition_penalty &&
              !cfg.gen.has_top_k,
          "rc=%d %s", rc, err.msg);
    g = "{\"top_p\": 7}";
    rc = qc_config_parse_generation(g, strlen(g), "generation_config.json", &cfg, &err);
    CHECK("cfg_generation_bad_top_p", rc == QC_EXIT_CHECKPOINT && strstr(err.msg, "top_p"),
          "rc=%d %s", rc, err.msg);
}

/* The config corpus: the main config parse decides; the generation_config
 * parse of the same bytes must at least fail cleanly. */
static int corpus_open_config(const uint8_t *buf, size_t len, const char *name, qc_err *err)
{
    int rc = qc_config_parse((const char *)buf, len, name, &cfg, err);
    qc_err gerr = {0};
    int rc2 = qc_config_parse_generation((const char *)buf, len, name, &cfg, &gerr);
    if (rc2 != 0 && rc2 != QC_EXIT_CHECKPOINT)
        return qc_err_set(err, QC_EXIT_RUNTIME, "generation_config parse: rc=%d %s", rc2, gerr.msg);
    return rc;
}

static void test_corpus(void) { tu_corpus_replay("cfg_corpus", "tests/corpus/config", corpus_open_config); }

int main(void)
{
    test_fixtures();
    test_variants();
    test_corpus();
    return th_exit();
}
