/* convo.c — see convo.h. */
#include "convo.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util.h"

static char *dupn(const char *s, size_t n)
{
    char *p = malloc(n + 1);
    if (p) {
        if (n)
            memcpy(p, s, n);
        p[n] = 0;
    }
    return p;
}

void convo_init(convo *c)
{
    memset(c, 0, sizeof *c);
    c->system = dupn("", 0);
    c->think = true;
    c->sampling = (convo_sampling){.temperature = 0.6, .top_p = 0.95, .min_p = 0.0,
                                   .repetition_penalty = 1.0, .presence_penalty = 0.0, .top_k = 20, .seed = 0,
                                   .max_tokens = 0};
}

static void turn_free(convo_turn *t)
{
    free(t->text);
    free(t->reasoning);
    free(t->error);
}

void convo_clear(convo *c)
{
    for (int i = 0; i < c->n; i++)
        turn_free(&c->turns[i]);
    c->n = 0;
    c->n_tokens = 0;
}

void convo_free(convo *c)
{
    convo_clear(c);
    free(c->turns);
    free(c->tokens);
    free(c->system);
    memset(c, 0, sizeof *c);
}

int convo_set_text(char **dst, const char *s, size_t n)
{
    char *p = dupn(s ? s : "", s ? n : 0);
    if (!p)
        return -1;
    free(*dst);
    *dst = p;
    return 0;
}

convo_turn *convo_add(convo *c, convo_role role, const char *text, const char *reasoning)
{
    if (c->n == c->cap) {
        int cap = c->cap ? c->cap * 2 : 16;
        convo_turn *p = realloc(c->turns, (size_t)cap * sizeof *p);
        if (!p)
            return NULL;
        c->turns = p;
        c->cap = cap;
    }
    convo_turn t = {.role = role};
    t.text = dupn(text ? text : "", text ? strlen(text) : 0);
    t.reasoning = dupn(reasoning ? reasoning : "", reasoning ? strlen(reasoning) : 0);
    if (!t.text || !t.reasoning) {
        turn_free(&t);
        return NULL;
    }
    c->turns[c->n] = t;
    return &c->turns[c->n++];
}

void convo_pop(convo *c)
{
    if (c->n > 0)
        turn_free(&c->turns[--c->n]);
}

int convo_set_tokens(convo *c, const int32_t *ids, int n)
{
    if (n > c->cap_tokens) {
        int32_t *p = realloc(c->tokens, (size_t)n * sizeof *p);
        if (!p)
            return -1;
        c->tokens = p;
        c->cap_tokens = n;
    }
    if (n)
        memmove(c->tokens, ids, (size_t)n * sizeof *ids);
    c->n_tokens = n;
    return 0;
}

char *convo_to_json(const convo *c)
{
    cJSON *root = cJSON_CreateObject();
    if (!root)
        return NULL;
    cJSON_AddNumberToObject(root, "qchat_session", 1);
    cJSON_AddStringToObject(root, "system", c->system);
    cJSON_AddBoolToObject(root, "think", c->think);
    cJSON *s = cJSON_AddObjectToObject(root, "sampling");
    if (s) {
        cJSON_AddNumberToObject(s, "temperature", c->sampling.temperature);
        cJSON_AddNumberToObject(s, "top_p", c->sampling.top_p);
        cJSON_AddNumberToObject(s, "top_k", c->sampling.top_k);
        cJSON_AddNumberToObject(s, "min_p", c->sampling.min_p);
        cJSON_AddNumberToObject(s, "repetition_penalty", c->sampling.repetition_penalty);
        cJSON_AddNumberToObject(s, "presence_penalty", c->sampling.presence_penalty);
        cJSON_AddNumberToObject(s, "seed", (double)c->sampling.seed);
        cJSON_AddNumberToObject(s, "max_tokens", c->sampling.max_tokens);
    }
    cJSON *turns = cJSON_AddArrayToObject(root, "turns");
    for (int i = 0; turns && i < c->n; i++) {
        const convo_turn *t = &c->turns[i];
        cJSON *o = cJSON_CreateObject();
        if (!o)
            break;
        cJSON_AddStringToObject(o, "role", t->role == CONVO_USER ? "user" : "assistant");
        cJSON_AddStringToObject(o, "text", t->text);
        if (t->role == CONVO_ASSISTANT) {
            cJSON_AddStringToObject(o, "reasoning", t->reasoning);
            cJSON_AddStringToObject(o, "format", t->format);
            cJSON_AddNumberToObject(o, "reasoning_tokens", t->n_reasoning);
            cJSON_AddNumberToObject(o, "answer_tokens", t->n_answer);
            cJSON_AddNumberToObject(o, "prompt_tokens", t->n_prompt);
            cJSON_AddNumberToObject(o, "ttft_ms", t->ttft_ms);
            cJSON_AddNumberToObject(o, "seconds", t->secs);
            cJSON_AddNumberToObject(o, "tok_s", t->tok_s);
            cJSON_AddNumberToObject(o, "itl_p50_ms", t->itl_p50_ms);
            cJSON_AddNumberToObject(o, "itl_p99_ms", t->itl_p99_ms);
            cJSON_AddBoolToObject(o, "stopped", t->stopped);
            if (t->cut)
                cJSON_AddBoolToObject(o, "max_tokens_cut", true);
            if (t->full)
                cJSON_AddBoolToObject(o, "context_full", true);
            if (t->error)
                cJSON_AddStringToObject(o, "error", t->error);
        }
        cJSON_AddItemToArray(turns, o);
    }
    cJSON *toks = cJSON_AddArrayToObject(root, "tokens");
    for (int i = 0; toks && i < c->n_tokens; i++)
        cJSON_AddItemToArray(toks, cJSON_CreateNumber(c->tokens[i]));
    char *out = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return out;
}

static double num_or(const cJSON *o, const char *k, double dflt)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsNumber(v) ? v->valuedouble : dflt;
}

static const char *str_or(const cJSON *o, const char *k, const char *dflt)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(v) && v->valuestring ? v->valuestring : dflt;
}

int convo_from_json(const char *text, size_t len, convo *out, char *msg, int msglen)
{
    cJSON *root = cJSON_ParseWithLength(text, len);
    if (!root) {
        snprintf(msg, (size_t)msglen, "not JSON");
        return -1;
    }
    convo c;
    convo_init(&c);
    int ok = 0;
    const cJSON *ver = cJSON_GetObjectItemCaseSensitive(root, "qchat_session");
    const cJSON *turns = cJSON_GetObjectItemCaseSensitive(root, "turns");
    const cJSON *toks = cJSON_GetObjectItemCaseSensitive(root, "tokens");
    if (!cJSON_IsNumber(ver) || ver->valueint != 1) {
        snprintf(msg, (size_t)msglen, "not a qchat session (\"qchat_session\": 1 missing)");
        goto done;
    }
    if (!cJSON_IsArray(turns) || !cJSON_IsArray(toks)) {
        snprintf(msg, (size_t)msglen, "\"turns\" and \"tokens\" must be arrays");
        goto done;
    }
    if (convo_set_text(&c.system, str_or(root, "system", ""), strlen(str_or(root, "system", ""))))
        goto oom;
    const cJSON *th = cJSON_GetObjectItemCaseSensitive(root, "think");
    c.think = th ? cJSON_IsTrue(th) : true;
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(root, "sampling");
    if (cJSON_IsObject(s)) {
        c.sampling.temperature = num_or(s, "temperature", c.sampling.temperature);
        c.sampling.top_p = num_or(s, "top_p", c.sampling.top_p);
        c.sampling.top_k = (int)num_or(s, "top_k", c.sampling.top_k);
        c.sampling.min_p = num_or(s, "min_p", c.sampling.min_p);
        c.sampling.repetition_penalty = num_or(s, "repetition_penalty", c.sampling.repetition_penalty);
        c.sampling.presence_penalty = num_or(s, "presence_penalty", c.sampling.presence_penalty);
        c.sampling.seed = (uint64_t)num_or(s, "seed", 0);
        c.sampling.max_tokens = (int)num_or(s, "max_tokens", c.sampling.max_tokens);
    }
    int idx = 0;
    const cJSON *t;
    cJSON_ArrayForEach(t, turns)
    {
        const char *role = str_or(t, "role", "");
        const cJSON *tx = cJSON_GetObjectItemCaseSensitive(t, "text");
        if (!cJSON_IsString(tx) || (strcmp(role, "user") && strcmp(role, "assistant"))) {
            snprintf(msg, (size_t)msglen, "turn %d: needs \"role\" user|assistant and a \"text\" string", idx);
            goto done;
        }
        convo_turn *ct = convo_add(&c, strcmp(role, "user") ? CONVO_ASSISTANT : CONVO_USER,
                                   tx->valuestring, str_or(t, "reasoning", ""));
        if (!ct)
            goto oom;
        snprintf(ct->format, sizeof ct->format, "%s", str_or(t, "format", ""));
        ct->n_reasoning = (int)num_or(t, "reasoning_tokens", 0);
        ct->n_answer = (int)num_or(t, "answer_tokens", 0);
        ct->n_prompt = (int)num_or(t, "prompt_tokens", 0);
        ct->ttft_ms = num_or(t, "ttft_ms", 0);
        ct->tok_s = num_or(t, "tok_s", 0);
        /* (files from before "seconds": the first token, then the rest at tok_s) */
        ct->secs = num_or(t, "seconds", ct->ttft_ms / 1e3 + (ct->tok_s > 0 ? (ct->n_reasoning + ct->n_answer) / ct->tok_s : 0));
        ct->itl_p50_ms = num_or(t, "itl_p50_ms", 0);
        ct->itl_p99_ms = num_or(t, "itl_p99_ms", 0);
        ct->stopped = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(t, "stopped"));
        ct->cut = ct->stopped && cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(t, "max_tokens_cut"));
        ct->full = ct->stopped && cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(t, "context_full"));
        const char *why = str_or(t, "error", "");
        if (*why && convo_set_text(&ct->error, why, strlen(why)))
            goto oom;
        idx++;
    }
    int nt = cJSON_GetArraySize(toks);
    int32_t *ids = malloc((size_t)(nt ? nt : 1) * sizeof *ids);
    if (!ids)
        goto oom;
    idx = 0;
    cJSON_ArrayForEach(t, toks)
    {
        if (!cJSON_IsNumber(t) || t->valuedouble < 0 || t->valuedouble > 2147483647.0 ||
            t->valuedouble != (double)(int32_t)t->valuedouble) {
            snprintf(msg, (size_t)msglen, "tokens[%d] is not a token id", idx);
            free(ids);
            goto done;
        }
        ids[idx++] = (int32_t)t->valuedouble;
    }
    if (convo_set_tokens(&c, ids, nt)) {
        free(ids);
        goto oom;
    }
    free(ids);
    ok = 1;
    goto done;
oom:
    snprintf(msg, (size_t)msglen, "out of memory");
done:
    cJSON_Delete(root);
    if (!ok) {
        convo_free(&c);
        return -1;
    }
    *out = c;
    return 0;
}

int convo_mkdir_parents(const char *path)
{
    char buf[4096];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf)
        return -1;
    char *slash = strrchr(buf, '/');
    if (!slash || slash == buf)
        return 0;
    *slash = 0;
    for (char *p = buf + 1; *p; p++) {
        if (*p == '/') {
            *p = 0;
            if (mkdir(buf, 0700) != 0 && errno != EEXIST)
                return -1;
            *p = '/';
        }
    }
    if (mkdir(buf, 0700) != 0 && errno != EEXIST)
        return -1;
    return 0;
}

int convo_save(const convo *c, const char *path, char *msg, int msglen)
{
    char *json = convo_to_json(c);
    if (!json) {
        snprintf(msg, (size_t)msglen, "out of memory writing the session");
        return -1;
    }
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    int rc = -1;
    if (convo_mkdir_parents(path) != 0) {
        snprintf(msg, (size_t)msglen, "%s: cannot create its directory: %s", path, strerror(errno));
        goto out;
    }
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) {
        snprintf(msg, (size_t)msglen, "%s: %s", tmp, strerror(errno));
        goto out;
    }
    size_t len = strlen(json), off = 0;
    while (off < len) {
        ssize_t w = write(fd, json + off, len - off);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            snprintf(msg, (size_t)msglen, "%s: %s", tmp, strerror(errno));
            close(fd);
            unlink(tmp);
            goto out;
        }
        off += (size_t)w;
    }
    /* fsync before rename: after a crash the file is either old or new, never torn. */
    if (write(fd, "\n", 1) != 1 || fsync(fd) != 0 || close(fd) != 0) {
        snprintf(msg, (size_t)msglen, "%s: %s", tmp, strerror(errno));
        unlink(tmp);
        goto out;
    }
    if (rename(tmp, path) != 0) {
        snprintf(msg, (size_t)msglen, "%s: %s", path, strerror(errno));
        unlink(tmp);
        goto out;
    }
    rc = 0;
out:
    free(json);
    return rc;
}

int convo_load(const char *path, convo *out, char *msg, int msglen)
{
    char *buf;
    size_t n;
    qc_err err;
    if (qc_read_file(path, &buf, &n, QC_EXIT_RUNTIME, &err)) {
        snprintf(msg, (size_t)msglen, "%s", err.msg);
        return -1;
    }
    char inner[400];
    int rc = convo_from_json(buf, n, out, inner, sizeof inner);
    if (rc != 0)
        snprintf(msg, (size_t)msglen, "%s: %s", path, inner);
    free(buf);
    return rc;
}
