/* test_chat.c — Qwen3.5 chat rendering against the official template's output
 * (fixtures/chat/qwen35_template_cases.json), template recognition, and the
 * rendered prompts' tokenization with a fixture tokenizer. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "chat.h"
#include "harness.h"
#include "tokenizer.h"
#include "util.h"

static char *fixture_text(const char *rel)
{
    char path[768];
    snprintf(path, sizeof path, "%s/%s", th_fixtures(), rel);
    char *text = NULL;
    qc_err err = {0};
    if (qc_read_file(path, &text, NULL, QC_EXIT_RUNTIME, &err))
        printf("# %s\n", err.msg);
    return text;
}

static size_t count(const char *hay, size_t n, const char *needle)
{
    size_t k = strlen(needle), c = 0;
    for (size_t i = 0; i + k <= n; i++)
        if (!memcmp(hay + i, needle, k))
            c++, i += k - 1;
    return c;
}

/* The rendered prompt tokenizes with the chat tags as single tokens and
 * decodes back to itself. */
static int prompt_tokenizes(const qc_tokenizer *tok, const char *p, size_t n, char *why, size_t nw)
{
    int32_t *ids;
    size_t nids;
    qc_err err = {0};
    if (qc_tokenizer_encode(tok, p, n, &ids, &nids, &err)) {
        snprintf(why, nw, "encode: %.200s", err.msg);
        return 0;
    }
    const char *tags[] = {"<|im_start|>", "<|im_end|>", "<think>", "</think>"};
    int ok = 1;
    for (int t = 0; t < 4 && ok; t++) {
        int32_t id = qc_tokenizer_find(tok, tags[t]);
        size_t c = 0;
        for (size_t i = 0; i < nids; i++)
            c += ids[i] == id;
        if (id < 0 || c != count(p, n, tags[t])) {
            snprintf(why, nw, "%s: %zu single tokens for %zu in the text", tags[t], c,
                     count(p, n, tags[t]));
            ok = 0;
        }
    }
    char *back;
    size_t blen;
    if (ok && (qc_tokenizer_decode(tok, ids, nids, &back, &blen, &err) || blen != n ||
               memcmp(back, p, n))) {
        snprintf(why, nw, "decode(encode(prompt)) differs");
        ok = 0;
    }
    if (ok)
        free(back);
    free(ids);
    return ok;
}

static void test_fixture_cases(const qc_tokenizer *tok)
{
    char *json = fixture_text("chat/qwen35_template_cases.json");
    char *tdef = fixture_text("chat/qwen35_chat_template.jinja");
    char *tsmall = fixture_text("chat/qwen35_small_chat_template.jinja");
    if (!json || !tdef || !tsmall) {
        CHECK("chat_fixtures_present", 0, "missing fixture files");
        return;
    }
    qc_chat_template def, small;
    qc_chat_template_classify(tdef, &def);
    qc_chat_template_classify(tsmall, &small);
    CHECK("classify_official_default", def.recognised && def.thinking_default &&
                                           def.kind == QC_TEMPLATE_QWEN35 && !strcmp(def.how, "exact"),
          "recognised %d thinking %d how %s", def.recognised, def.thinking_default, def.how);
    CHECK("classify_official_small", small.recognised && !small.thinking_default &&
                                         small.kind == QC_TEMPLATE_QWEN35_SMALL &&
                                         !strcmp(small.how, "exact"),
          "recognised %d thinking %d how %s", small.recognised, small.thinking_default, small.how);
    cJSON *root = cJSON_Parse(json);
    const cJSON *c;
    int n = 0;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(root, "cases"))
    {
        const char *name = cJSON_GetObjectItem(c, "name")->valuestring;
        const char *tname = cJSON_GetObjectItem(c, "template")->valuestring;
        const cJSON *et = cJSON_GetObjectItem(c, "enable_thinking");
        int think = cJSON_IsTrue(et) ? QC_THINK_ON : cJSON_IsFalse(et) ? QC_THINK_OFF : QC_THINK_DEFAULT;
        bool agp = cJSON_IsTrue(cJSON_GetObjectItem(c, "add_generation_prompt"));
        const char *want = cJSON_GetObjectItem(c, "expected")->valuestring;
        qc_chat chat;
        qc_chat_init(&chat);
        qc_err err = {0};
        const cJSON *m;
        int rc = 0;
        cJSON_ArrayForEach(m, cJSON_GetObjectItem(c, "messages"))
        {
            const char *role = cJSON_GetObjectItem(m, "role")->valuestring;
            qc_role r = !strcmp(role, "system")      ? QC_ROLE_SYSTEM
                        : !strcmp(role, "user")      ? QC_ROLE_USER
                        : !strcmp(role, "assistant") ? QC_ROLE_ASSISTANT
                                                     : QC_ROLE_TOOL;
            const cJSON *rs = cJSON_GetObjectItem(m, "reasoning_content");
            rc |= qc_chat_add(&chat, r, cJSON_GetObjectItem(m, "content")->valuestring,
                              cJSON_IsString(rs) ? rs->valuestring : NULL, &err);
        }
        char *out = NULL;
        size_t len = 0;
        if (!rc)
            rc = qc_chat_render(!strcmp(tname, "small_model") ? &small : &def, &chat, agp, think,
                                &out, &len, &err);
        char nm[160];
        snprintf(nm, sizeof nm, "render_%s", name);
        CHECK(nm, !rc && len == strlen(want) && !memcmp(out, want, len), "rc %d %s; got \"%s\"", rc,
              err.msg, out ? out : "");
        char why[256] = "";
        snprintf(nm, sizeof nm, "tokenize_%s", name);
        if (!rc)
            CHECK(nm, prompt_tokenizes(tok, out, len, why, sizeof why), "%s", why);
        free(out);
        qc_chat_free(&chat);
        n++;
    }
    CHECK("chat_cases_present", n >= 18, "%d cases", n);
    cJSON_Delete(root);
    free(json);
    free(tdef);
    free(tsmall);
}

/* Tool turns are not in the fixtures; these expectations were rendered from
 * the official template with jinja2 (trim_blocks, lstrip_blocks, as
 * transformers does). */
static void test_tool_turns(void)
{
    qc_chat_template def;
    qc_chat_template_named("qwen35", &def, NULL);
    qc_chat c;
    qc_chat_init(&c);
    qc_chat_add(&c, QC_ROLE_USER, "Weather in Paris?", NULL, NULL);
    qc_chat_add(&c, QC_ROLE_ASSISTANT, "Let me check.", "Need the tool.", NULL);
    qc_chat_add(&c, QC_ROLE_TOOL, " 18 C, sunny ", NULL, NULL);
    qc_chat_add(&c, QC_ROLE_TOOL, "wind 5 km/h", NULL, NULL);
    char *out = NULL;
    qc_err err = {0};
    int rc = qc_chat_render(&def, &c, true, QC_THINK_DEFAULT, &out, NULL, &err);
    const char *want = "<|im_start|>user\nWeather in Paris?<|im_end|>\n"
                       "<|im_start|>assistant\n<think>\nNeed the tool.\n</think>\n\nLet me check.<|im_end|>\n"
                       "<|im_start|>user\n<tool_response>\n18 C, sunny\n</tool_response>"
                       "\n<tool_response>\nwind 5 km/h\n</tool_response><|im_end|>\n"
                       "<|im_start|>assistant\n<think>\n";
    CHECK("render_tool_responses", !rc && !strcmp(out, want), "rc %d %s; got \"%s\"", rc, err.msg,
          out ? out : "");
    free(out);
    /* A user turn that is a wrapped tool response is not the last query. */
    qc_chat_clear(&c);
    qc_chat_add(&c, QC_ROLE_USER, "q", NULL, NULL);
    qc_chat_add(&c, QC_ROLE_ASSISTANT, "a1", "r1", NULL);
    qc_chat_add(&c, QC_ROLE_USER, "<tool_response>\nx\n</tool_response>", NULL, NULL);
    qc_chat_add(&c, QC_ROLE_ASSISTANT, "a2", "r2", NULL);
    out = NULL;
    rc = qc_chat_render(&def, &c, false, QC_THINK_DEFAULT, &out, NULL, &err);
    want = "<|im_start|>user\nq<|im_end|>\n"
           "<|im_start|>assistant\n<think>\nr1\n</think>\n\na1<|im_end|>\n"
           "<|im_start|>user\n<tool_response>\nx\n</tool_response><|im_end|>\n"
           "<|im_start|>assistant\n<think>\nr2\n</think>\n\na2<|im_end|>\n";
    CHECK("render_multi_step_tool_keeps_reasoning", !rc && !strcmp(out, want), "got \"%s\"",
          out ? out : "");
    free(out);
    qc_chat_free(&c);
}

static void test_render_errors(void)
{
    qc_chat_template def;
    qc_chat_template_named("qwen35", &def, NULL);
    qc_chat c;
    qc_chat_init(&c);
    char *out = NULL;
    qc_err err = {0};
    int rc = qc_chat_render(&def, &c, true, QC_THINK_DEFAULT, &out, NULL, &err);
    CHECK("render_empty_rejected", rc == QC_EXIT_USAGE && !out && strstr(err.msg, "no messages"),
          "rc %d %s", rc, err.msg);
    qc_chat_add(&c, QC_ROLE_SYSTEM, "s", NULL, NULL);
    rc = qc_chat_render(&def, &c, true, QC_THINK_DEFAULT, &out, NULL, &err);
    CHECK("render_no_user_rejected", rc == QC_EXIT_USAGE && strstr(err.msg, "no user query"),
          "rc %d %s", rc, err.msg);
    qc_chat_add(&c, QC_ROLE_USER, "u", NULL, NULL);
    qc_chat_add(&c, QC_ROLE_SYSTEM, "late", NULL, NULL);
    rc = qc_chat_render(&def, &c, true, QC_THINK_DEFAULT, &out, NULL, &err);
    CHECK("render_late_system_rejected", rc == QC_EXIT_USAGE && strstr(err.msg, "beginning"),
          "rc %d %s", rc, err.msg);
    size_t before = c.n;
    rc = qc_chat_add(&c, QC_ROLE_USER, "bad \xE2\x82 utf8", NULL, &err);
    CHECK("add_invalid_utf8_rejected", rc == QC_EXIT_USAGE && c.n == before &&
                                           strstr(err.msg, "UTF-8") && strstr(err.msg, "byte 4"),
          "rc %d %s", rc, err.msg);
    rc = qc_chat_add(&c, QC_ROLE_ASSISTANT, "ok", "\xC0\xAF", &err);
    CHECK("add_invalid_utf8_reasoning_rejected", rc == QC_EXIT_USAGE && c.n == before, "rc %d", rc);
    qc_chat_pop(&c);
    CHECK("chat_pop", c.n == before - 1 && c.msgs[c.n - 1].role == QC_ROLE_USER, "n %zu", c.n);
    qc_chat_free(&c);
    const char *p = "<|im_start|>assistant\n<think>\n";
    CHECK("prompt_in_reasoning", qc_chat_prompt_in_reasoning(p, strlen(p)) &&
                                     !qc_chat_prompt_in_reasoning("x<think>\n\n</think>\n\n", 20),
          "wrong");
}

static int write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    fputs(text, f);
    return fclose(f);
}

static void test_detect(void)
{
    char dir[512];
    qc_chat_template t;
    qc_err err = {0};
    unsetenv("QCHAT_CHAT_TEMPLATE");
    int rc = qc_chat_template_detect(th_model_dir(dir, sizeof dir, "tiny-qwen35"), NULL, &t, &err);
    CHECK("detect_jinja_file", !rc && t.recognised && t.thinking_default &&
                                   !strcmp(t.source, "chat_template.jinja") && !t.warning[0],
          "rc %d recognised %d source %s", rc, t.recognised, t.source);
    rc = qc_chat_template_detect(th_model_dir(dir, sizeof dir, "tiny-qwen36-text"), NULL, &t, &err);
    CHECK("detect_tokenizer_config", !rc && t.recognised && t.thinking_default &&
                                         !strcmp(t.source, "tokenizer_config.json"),
          "rc %d recognised %d source %s", rc, t.recognised, t.source);

    char tmp[] = "/tmp/qchat-chat-XXXXXX";
    if (!mkdtemp(tmp)) {
        CHECK("detect_tmpdir", 0, "mkdtemp failed");
        return;
    }
    char path[600];
    snprintf(path, sizeof path, "%s/chat_template.jinja", tmp);
    /* The 0.8B/2B template, with an edit: recognised by its markers. */
    char *small = fixture_text("chat/qwen35_small_chat_template.jinja");
    size_t sl = small ? strlen(small) : 0;
    char *edited = malloc(sl + 64);
    snprintf(edited, sl + 64, "{#- edited copy #}\n%s", small ? small : "");
    write_file(path, edited);
    rc = qc_chat_template_detect(tmp, NULL, &t, &err);
    CHECK("detect_small_by_markers", !rc && t.recognised && !t.thinking_default &&
                                         t.kind == QC_TEMPLATE_QWEN35_SMALL && !strcmp(t.how, "markers"),
          "rc %d recognised %d thinking %d how %s", rc, t.recognised, t.thinking_default, t.how);
    free(edited);
    free(small);
    /* A Qwen3-style template (no <think> in the generation prompt): not recognised. */
    write_file(path, "{%- for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
                     "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
                     "{%- if enable_thinking is defined and enable_thinking is false %}"
                     "{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}{%- endif %}");
    rc = qc_chat_template_detect(tmp, NULL, &t, &err);
    CHECK("detect_unknown_warns", !rc && !t.recognised && t.thinking_default &&
                                      strstr(t.warning, "not recognised") &&
                                      strstr(t.warning, "QCHAT_CHAT_TEMPLATE"),
          "rc %d recognised %d warning \"%s\"", rc, t.recognised, t.warning);
    rc = qc_chat_template_detect(tmp, "qwen35-small", &t, &err);
    CHECK("detect_override_arg", !rc && t.recognised && !t.thinking_default &&
                                     !strcmp(t.source, "override"),
          "rc %d", rc);
    setenv("QCHAT_CHAT_TEMPLATE", "qwen35-small", 1);
    rc = qc_chat_template_detect(tmp, NULL, &t, &err);
    CHECK("detect_override_env", !rc && t.recognised && !t.thinking_default, "rc %d", rc);
    setenv("QCHAT_CHAT_TEMPLATE", "llama", 1);
    rc = qc_chat_template_detect(tmp, NULL, &t, &err);
    CHECK("detect_bad_override", rc == QC_EXIT_USAGE && strstr(err.msg, "llama"), "rc %d %s", rc,
          err.msg);
    unsetenv("QCHAT_CHAT_TEMPLATE");
    unlink(path);
    rc = qc_chat_template_detect(tmp, NULL, &t, &err);
    CHECK("detect_missing_warns", !rc && !t.recognised && !strcmp(t.source, "none") &&
                                      strstr(t.warning, "no chat template"),
          "rc %d source %s", rc, t.source);
    rmdir(tmp);
}

int main(void)
{
    char dir[512];
    qc_tokenizer *tok = NULL;
    qc_err err = {0};
    if (qc_tokenizer_load(th_model_dir(dir, sizeof dir, "tiny-qwen35"), &tok, &err)) {
        CHECK("tiny_tokenizer", 0, "%s", err.msg);
        return th_exit();
    }
    test_fixture_cases(tok);
    test_tool_turns();
    test_render_errors();
    test_detect();
    qc_tokenizer_free(tok);
    return th_exit();
}
