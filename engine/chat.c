/* chat.c — Qwen3.5 chat rendering and template recognition; see chat.h.
 *
 * The renderer follows the official template statement by statement (the
 * comments quote the Jinja it stands for); its output is checked byte for
 * byte against transformers' rendering in fixtures/chat. */
#include "chat.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer.h"

/* ---------------------------------------------------------------- conversation */

void qc_chat_init(qc_chat *c) { memset(c, 0, sizeof *c); }

static void msg_free(qc_chat_msg *m)
{
    free(m->content);
    free(m->reasoning);
}

void qc_chat_clear(qc_chat *c)
{
    for (size_t i = 0; i < c->n; i++)
        msg_free(&c->msgs[i]);
    c->n = 0;
}

void qc_chat_free(qc_chat *c)
{
    qc_chat_clear(c);
    free(c->msgs);
    memset(c, 0, sizeof *c);
}

void qc_chat_pop(qc_chat *c)
{
    if (c->n)
        msg_free(&c->msgs[--c->n]);
}

const char *qc_role_name(qc_role r)
{
    switch (r) {
    case QC_ROLE_SYSTEM: return "system";
    case QC_ROLE_USER: return "user";
    case QC_ROLE_ASSISTANT: return "assistant";
    case QC_ROLE_TOOL: return "tool";
    }
    return "?";
}

int qc_chat_add(qc_chat *c, qc_role role, const char *content, const char *reasoning, qc_err *err)
{
    if (!content)
        content = "";
    size_t bad;
    if (!qc_utf8_valid(content, strlen(content), &bad))
        return qc_err_set(err, QC_EXIT_USAGE, "%s message is not valid UTF-8 (byte %zu)",
                          qc_role_name(role), bad);
    if (reasoning && !qc_utf8_valid(reasoning, strlen(reasoning), &bad))
        return qc_err_set(err, QC_EXIT_USAGE, "%s reasoning is not valid UTF-8 (byte %zu)",
                          qc_role_name(role), bad);
    qc_chat_msg *nm = qc_grow(c->msgs, &c->cap, c->n, sizeof *nm, 8);
    if (!nm)
        return qc_err_set(err, QC_EXIT_RUNTIME, "out of memory adding a message");
    c->msgs = nm;
    qc_chat_msg m = {role, strdup(content), reasoning ? strdup(reasoning) : NULL};
    if (!m.content || (reasoning && !m.reasoning)) {
        msg_free(&m);
        return qc_err_set(err, QC_EXIT_RUNTIME, "out of memory adding a message");
    }
    c->msgs[c->n++] = m;
    return QC_OK;
}

/* ---------------------------------------------------------------- strings */

/* A byte range of some string. */
typedef struct span {
    const char *p;
    size_t n;
} span;

static span span_of(const char *s) { return (span){s, strlen(s)}; }

/* Python's str.isspace() set, which Jinja's |trim (str.strip()) uses. */
static bool py_space(uint32_t cp)
{
    return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 ||
           cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 ||
           cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

/* Decodes the character at p (valid UTF-8 assumed); returns its length. */
static size_t utf8_at(const unsigned char *p, size_t n, uint32_t *cp)
{
    size_t k = p[0] < 0x80 ? 1 : p[0] < 0xE0 ? 2 : p[0] < 0xF0 ? 3 : 4;
    if (k > n)
        k = n;
    uint32_t v = k == 1 ? p[0] : p[0] & (0x3F >> (k - 1));
    for (size_t i = 1; i < k; i++)
        v = (v << 6) | (p[i] & 0x3F);
    *cp = v;
    return k;
}

static span trim(span s)
{
    const unsigned char *p = (const unsigned char *)s.p;
    size_t a = 0, b = s.n;
    while (a < b) {
        uint32_t cp;
        size_t k = utf8_at(p + a, b - a, &cp);
        if (!py_space(cp))
            break;
        a += k;
    }
    while (b > a) {
        size_t k = 1;
        while (k < b - a && k < 4 && (p[b - k] & 0xC0) == 0x80)
            k++;
        uint32_t cp;
        utf8_at(p + b - k, k, &cp);
        if (!py_space(cp))
            break;
        b -= k;
    }
    return (span){s.p + a, b - a};
}

static span lstrip_nl(span s)
{
    while (s.n && s.p[0] == '\n')
        s.p++, s.n--;
    return s;
}

static span rstrip_nl(span s)
{
    while (s.n && s.p[s.n - 1] == '\n')
        s.n--;
    return s;
}

static const char *find(span s, const char *needle)
{
    size_t k = strlen(needle);
    for (size_t i = 0; i + k <= s.n; i++)
        if (!memcmp(s.p + i, needle, k))
            return s.p + i;
    return NULL;
}

static const char *find_last(span s, const char *needle)
{
    size_t k = strlen(needle);
    for (size_t i = s.n >= k ? s.n - k + 1 : 0; i-- > 0;)
        if (!memcmp(s.p + i, needle, k))
            return s.p + i;
    return NULL;
}

static bool starts_with(span s, const char *pre)
{
    size_t k = strlen(pre);
    return s.n >= k && !memcmp(s.p, pre, k);
}

static bool ends_with(span s, const char *suf)
{
    size_t k = strlen(suf);
    return s.n >= k && !memcmp(s.p + s.n - k, suf, k);
}

typedef struct sbuf {
    char *p;
    size_t n, cap;
    bool oom;
} sbuf;

static void put(sbuf *b, span s)
{
    if (b->oom)
        return;
    if (b->n + s.n + 1 > b->cap) {
        size_t nc = b->cap ? b->cap : 256;
        while (nc < b->n + s.n + 1)
            nc *= 2;
        char *np = realloc(b->p, nc);
        if (!np) {
            b->oom = true;
            return;
        }
        b->p = np;
        b->cap = nc;
    }
    memcpy(b->p + b->n, s.p, s.n);
    b->n += s.n;
    b->p[b->n] = '\0';
}

static void puts_(sbuf *b, const char *s) { put(b, span_of(s)); }

/* ---------------------------------------------------------------- rendering */

/* content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n')
 * and content.split('</think>')[-1].lstrip('\n'). */
static void split_inline_think(span content, span *reasoning, span *answer)
{
    const char *first_close = find(content, "</think>");
    const char *last_close = find_last(content, "</think>");
    span before = rstrip_nl((span){content.p, (size_t)(first_close - content.p)});
    const char *open = find_last(before, "<think>");
    if (open)
        before = (span){open + 7, before.n - (size_t)(open + 7 - before.p)};
    *reasoning = lstrip_nl(before);
    const char *after = last_close + 8;
    *answer = lstrip_nl((span){after, (size_t)(content.p + content.n - after)});
}

int qc_chat_render(const qc_chat_template *tpl, const qc_chat *c, bool add_generation_prompt,
                   int think, char **out, size_t *len, qc_err *err)
{
    *out = NULL;
    if (len)
        *len = 0;
    size_t n = c->n;
    const qc_chat_msg *m = c->msgs;
    if (n == 0)
        return qc_err_set(err, QC_EXIT_USAGE, "chat template: no messages provided");
    sbuf b = {0};
    /* {%- if messages[0].role == 'system' %} ... content|trim (no tools) */
    if (m[0].role == QC_ROLE_SYSTEM) {
        puts_(&b, "<|im_start|>system\n");
        put(&b, trim(span_of(m[0].content)));
        puts_(&b, "<|im_end|>\n");
    }
    /* ns.last_query_index: the last user message that is not a wrapped tool response. */
    size_t last_query = n - 1;
    bool multi_step_tool = true;
    for (size_t k = n; k-- > 0;) {
        if (multi_step_tool && m[k].role == QC_ROLE_USER) {
            span ct = trim(span_of(m[k].content));
            if (!(starts_with(ct, "<tool_response>") && ends_with(ct, "</tool_response>"))) {
                multi_step_tool = false;
                last_query = k;
            }
        }
    }
    if (multi_step_tool) {
        free(b.p);
        return qc_err_set(err, QC_EXIT_USAGE, "chat template: no user query found in messages");
    }
    for (size_t i = 0; i < n; i++) {
        span content = trim(span_of(m[i].content));
        switch (m[i].role) {
        case QC_ROLE_SYSTEM:
            if (i != 0) {
                free(b.p);
                return qc_err_set(err, QC_EXIT_USAGE,
                                  "chat template: system message must be at the beginning");
            }
            break;
        case QC_ROLE_USER:
            puts_(&b, "<|im_start|>user\n");
            put(&b, content);
            puts_(&b, "<|im_end|>\n");
            break;
        case QC_ROLE_ASSISTANT: {
            span reasoning = {"", 0};
            if (m[i].reasoning)
                reasoning = span_of(m[i].reasoning);
            else if (find(content, "</think>"))
                split_inline_think(content, &reasoning, &content);
            reasoning = trim(reasoning);
            if (i > last_query) {
                puts_(&b, "<|im_start|>assistant\n<think>\n");
                put(&b, reasoning);
                puts_(&b, "\n</think>\n\n");
            } else {
                puts_(&b, "<|im_start|>assistant\n");
            }
            put(&b, content);
            puts_(&b, "<|im_end|>\n");
            break;
        }
        case QC_ROLE_TOOL:
            /* {%- if loop.previtem and loop.previtem.role != "tool" %} */
            if (i > 0 && m[i - 1].role != QC_ROLE_TOOL)
                puts_(&b, "<|im_start|>user");
            puts_(&b, "\n<tool_response>\n");
            put(&b, content);
            puts_(&b, "\n</tool_response>");
            if (i + 1 == n || m[i + 1].role != QC_ROLE_TOOL)
                puts_(&b, "<|im_end|>\n");
            break;
        }
    }
    if (add_generation_prompt) {
        bool thinking = think == QC_THINK_DEFAULT ? tpl->thinking_default : think != QC_THINK_OFF;
        puts_(&b, "<|im_start|>assistant\n");
        puts_(&b, thinking ? "<think>\n" : "<think>\n\n</think>\n\n");
    }
    if (!b.p)
        puts_(&b, ""); /* a lone system message still yields a string */
    if (b.oom) {
        free(b.p);
        return qc_err_set(err, QC_EXIT_RUNTIME, "out of memory rendering the chat prompt");
    }
    *out = b.p;
    if (len)
        *len = b.n;
    return QC_OK;
}

bool qc_chat_prompt_in_reasoning(const char *prompt, size_t len)
{
    return ends_with((span){prompt, len}, "<think>\n");
}

/* ---------------------------------------------------------------- templates */

static void tpl_set(qc_chat_template *t, qc_template_kind kind, bool recognised, const char *source,
                    const char *how)
{
    memset(t, 0, sizeof *t);
    t->kind = kind;
    t->thinking_default = kind == QC_TEMPLATE_QWEN35;
    t->recognised = recognised;
    snprintf(t->source, sizeof t->source, "%s", source);
    snprintf(t->how, sizeof t->how, "%s", how);
}

int qc_chat_template_named(const char *name, qc_chat_template *tpl, qc_err *err)
{
    if (!strcmp(name, "qwen35"))
        tpl_set(tpl, QC_TEMPLATE_QWEN35, true, "override", "override");
    else if (!strcmp(name, "qwen35-small"))
        tpl_set(tpl, QC_TEMPLATE_QWEN35_SMALL, true, "override", "override");
    else
        return qc_err_set(err, QC_EXIT_USAGE,
                          "unknown chat template \"%s\" (known: qwen35, qwen35-small)", name);
    return QC_OK;
}

static uint64_t fnv1a(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ull;
    }
    return h;
}

/* FNV-1a 64 of the official templates without trailing whitespace
 * (fixtures/chat/qwen35_chat_template.jinja and qwen35_small_chat_template.jinja). */
#define HASH_QWEN35 0xd77bd552a8c5c8e7ull
#define HASH_QWEN35_SMALL 0x2000e4337e6e694aull

void qc_chat_template_classify(const char *text, qc_chat_template *tpl)
{
    span s = span_of(text);
    while (s.n && strchr(" \t\r\n", s.p[s.n - 1]))
        s.n--;
    uint64_t h = fnv1a(s.p, s.n);
    if (h == HASH_QWEN35) {
        tpl_set(tpl, QC_TEMPLATE_QWEN35, true, "", "exact");
        return;
    }
    if (h == HASH_QWEN35_SMALL) {
        tpl_set(tpl, QC_TEMPLATE_QWEN35_SMALL, true, "", "exact");
        return;
    }
    /* Not byte-identical (another release may differ in whitespace or tool
     * text): recognise the Qwen3.5 structure by its markers. The generation
     * prompt block must open <think> in both modes (Qwen3's template does not:
     * it writes '<think>\n' only for history), and the history logic must
     * drop reasoning before the last query. */
    const char *gen = find_last(s, "add_generation_prompt");
    span tail = gen ? (span){gen, (size_t)(s.p + s.n - gen)} : (span){"", 0};
    bool structure = find(s, "<|im_start|>") && find(s, "reasoning_content") &&
                     find(s, "last_query_index") && find(tail, "'<|im_start|>assistant\\n'") &&
                     find(tail, "'<think>\\n'") && find(tail, "'<think>\\n\\n</think>\\n\\n'");
    bool default_off = find(tail, "enable_thinking is true") != NULL;
    bool default_on = find(tail, "enable_thinking is false") != NULL;
    if (structure && default_off != default_on) {
        tpl_set(tpl, default_off ? QC_TEMPLATE_QWEN35_SMALL : QC_TEMPLATE_QWEN35, true, "",
                "markers");
        return;
    }
    tpl_set(tpl, QC_TEMPLATE_QWEN35, false, "", "fallback");
    snprintf(tpl->warning, sizeof tpl->warning,
             "chat template not recognised as Qwen3.5's; rendering the Qwen3.5 format with "
             "thinking on by default (set QCHAT_CHAT_TEMPLATE=qwen35 or qwen35-small to choose)");
}

/* The template text of a checkpoint: chat_template.jinja first (what
 * transformers prefers), else tokenizer_config.json's chat_template (a string,
 * or a list of {name, template} of which "default" is used). */
static char *read_template(const char *dir, char *source, size_t nsource)
{
    char *path = qc_path_join(dir, "chat_template.jinja");
    char *text = NULL;
    qc_err e = {0};
    if (path && !qc_read_file(path, &text, NULL, QC_EXIT_CHECKPOINT, &e)) {
        snprintf(source, nsource, "chat_template.jinja");
        free(path);
        return text;
    }
    free(path);
    path = qc_path_join(dir, "tokenizer_config.json");
    char *json = NULL;
    if (path && !qc_read_file(path, &json, NULL, QC_EXIT_CHECKPOINT, &e)) {
        cJSON *root = cJSON_Parse(json);
        const cJSON *ct = cJSON_GetObjectItemCaseSensitive(root, "chat_template");
        const char *t = NULL;
        if (cJSON_IsString(ct))
            t = ct->valuestring;
        else if (cJSON_IsArray(ct)) {
            const cJSON *it;
            cJSON_ArrayForEach(it, ct)
            {
                const cJSON *nm = cJSON_GetObjectItemCaseSensitive(it, "name");
                const cJSON *tt = cJSON_GetObjectItemCaseSensitive(it, "template");
                if (cJSON_IsString(nm) && !strcmp(nm->valuestring, "default") && cJSON_IsString(tt))
                    t = tt->valuestring;
            }
        }
        if (t) {
            text = strdup(t);
            snprintf(source, nsource, "tokenizer_config.json");
        }
        cJSON_Delete(root);
        free(json);
    }
    free(path);
    return text;
}

int qc_chat_template_detect(const char *dir, const char *override, qc_chat_template *tpl,
                            qc_err *err)
{
    if (!override || !*override)
        override = getenv("QCHAT_CHAT_TEMPLATE");
    if (override && *override)
        return qc_chat_template_named(override, tpl, err);
    char source[64] = "none";
    char *text = read_template(dir, source, sizeof source);
    if (!text) {
        tpl_set(tpl, QC_TEMPLATE_QWEN35, false, "none", "fallback");
        snprintf(tpl->warning, sizeof tpl->warning,
                 "%.300s has no chat template (chat_template.jinja or tokenizer_config.json); "
                 "assuming Qwen3.5's, thinking on by default (QCHAT_CHAT_TEMPLATE=qwen35-small "
                 "for the 0.8B/2B default)",
                 dir);
        return QC_OK;
    }
    qc_chat_template_classify(text, tpl);
    free(text);
    snprintf(tpl->source, sizeof tpl->source, "%s", source);
    if (!tpl->recognised)
        snprintf(tpl->warning, sizeof tpl->warning,
                 "%.40s of %.200s not recognised as Qwen3.5's chat template; rendering the "
                 "Qwen3.5 format, thinking on by default (set QCHAT_CHAT_TEMPLATE=qwen35 or "
                 "qwen35-small to choose)",
                 source, dir);
    return QC_OK;
}
