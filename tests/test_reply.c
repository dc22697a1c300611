/* test_reply.c — the reasoning/answer splitter on id streams made with the
 * tiny-qwen35 fixture tokenizer, stopping on the eos ids of its
 * generation_config.json. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "reply.h"
#include "tokenizer.h"
#include "util.h"

static qc_tokenizer *tok;
static int32_t eos[QC_REPLY_MAX_EOS];
static int n_eos;

typedef struct run_result {
    char reasoning[1024], answer[1024]; /* concatenated pieces by kind */
    int n_pieces_after_end;             /* pieces with text after the end */
    int ended_at;                       /* index of the id that ended it, -1 */
    bool bad_utf8, kind_mismatch;
    qc_reply r;
} run_result;

/* Encodes text (added tokens become single ids) and feeds every id. */
static int run(const char *text, bool in_reasoning, run_result *res)
{
    memset(res, 0, sizeof *res);
    res->ended_at = -1;
    qc_err err = {0};
    int32_t *ids;
    size_t n;
    if (qc_tokenizer_encode(tok, text, strlen(text), &ids, &n, &err) ||
        qc_reply_init(&res->r, tok, eos, n_eos, in_reasoning, &err)) {
        printf("# %s\n", err.msg);
        return -1;
    }
    for (size_t i = 0; i <= n; i++) {
        qc_reply_piece p;
        int rc = i < n ? qc_reply_feed(&res->r, ids[i], &p, &err) : qc_reply_finish(&res->r, &p, &err);
        if (rc) {
            free(ids);
            return -1;
        }
        if (!qc_utf8_valid(p.text, p.len, NULL))
            res->bad_utf8 = true;
        if ((p.len > 0) != (p.kind != QC_REPLY_NONE))
            res->kind_mismatch = true;
        if (res->ended_at >= 0 && p.len)
            res->n_pieces_after_end++;
        if (p.kind == QC_REPLY_REASONING)
            strncat(res->reasoning, p.text, p.len);
        if (p.kind == QC_REPLY_ANSWER)
            strncat(res->answer, p.text, p.len);
        if (p.end && res->ended_at < 0 && i < n)
            res->ended_at = (int)i;
    }
    free(ids);
    return 0;
}

/* Number of ids text encodes to (for expected counts). */
static int n_ids(const char *text)
{
    int32_t *ids;
    size_t n;
    qc_err err = {0};
    if (qc_tokenizer_encode(tok, text, strlen(text), &ids, &n, &err))
        return -1;
    free(ids);
    return (int)n;
}

static bool same_as_accumulated(run_result *res)
{
    return !strcmp(res->reasoning, qc_reply_reasoning(&res->r, NULL)) &&
           !strcmp(res->answer, qc_reply_answer(&res->r, NULL));
}

static void test_thinking(void)
{
    run_result res;
    const char *reasoning = "Two plus two.\n\nThat makes four 🙂 — obviously.";
    const char *answer = "The answer is **4**.";
    char text[512];
    snprintf(text, sizeof text, "%s\n</think>\n\n%s<|im_end|>", reasoning, answer);
    int rc = run(text, true, &res);
    CHECK("thinking_split", !rc && !strcmp(res.reasoning, reasoning) && !strcmp(res.answer, answer),
          "reasoning \"%s\" answer \"%s\"", res.reasoning, res.answer);
    CHECK("thinking_ends_at_eos", res.ended_at >= 0 && res.r.ended, "ended_at %d", res.ended_at);
    char rpart[256];
    snprintf(rpart, sizeof rpart, "%s\n", reasoning);
    char apart[256];
    snprintf(apart, sizeof apart, "\n\n%s", answer);
    CHECK("thinking_counts", res.r.n_reasoning == n_ids(rpart) && res.r.n_answer == n_ids(apart) &&
                                 res.r.n_other == 2,
          "reasoning %d (want %d) answer %d (want %d) other %d", res.r.n_reasoning, n_ids(rpart),
          res.r.n_answer, n_ids(apart), res.r.n_other);
    CHECK("thinking_pieces_utf8_and_kinds", !res.bad_utf8 && !res.kind_mismatch && same_as_accumulated(&res),
          "bad utf8 %d kind mismatch %d", res.bad_utf8, res.kind_mismatch);
    qc_reply_free(&res.r);
}

static void test_non_thinking(void)
{
    run_result res;
    int rc = run("Just the answer: 42.\nSecond line.<|im_end|>", false, &res);
    CHECK("non_thinking_all_answer", !rc && !res.reasoning[0] &&
                                         !strcmp(res.answer, "Just the answer: 42.\nSecond line.") &&
                                         res.r.n_reasoning == 0 &&
                                         res.r.n_answer == n_ids("Just the answer: 42.\nSecond line.") &&
                                         res.r.n_other == 1 && res.ended_at >= 0,
          "reasoning \"%s\" answer \"%s\" counts %d/%d/%d", res.reasoning, res.answer,
          res.r.n_reasoning, res.r.n_answer, res.r.n_other);
    qc_reply_free(&res.r);
    /* A model that opens <think> itself in a non-thinking turn: tags hidden. */
    rc = run("<think>\nhmm\n</think>\n\nok<|im_end|>", false, &res);
    CHECK("non_thinking_model_opens_think", !rc && !strcmp(res.reasoning, "hmm") &&
                                                !strcmp(res.answer, "ok") && res.r.n_other == 3,
          "reasoning \"%s\" answer \"%s\"", res.reasoning, res.answer);
    qc_reply_free(&res.r);
}

static void test_unclosed(void)
{
    run_result res;
    char text[256];
    /* Add the eos as an id: a reply cut off inside the reasoning. */
    snprintf(text, sizeof text, "still thinking about 日本語 and<|endoftext|> trailing");
    int rc = run(text, true, &res);
    CHECK("unclosed_think_ends_at_eos", !rc && !strcmp(res.reasoning, "still thinking about 日本語 and") &&
                                            !res.answer[0] && res.ended_at >= 0 &&
                                            res.n_pieces_after_end == 0 && !res.bad_utf8,
          "reasoning \"%s\" answer \"%s\" ended_at %d after %d", res.reasoning, res.answer,
          res.ended_at, res.n_pieces_after_end);
    CHECK("unclosed_counts", res.r.n_reasoning == n_ids("still thinking about 日本語 and") &&
                                 res.r.n_answer == 0 && res.r.n_other == 1,
          "counts %d/%d/%d", res.r.n_reasoning, res.r.n_answer, res.r.n_other);
    qc_reply_free(&res.r);
    /* No eos at all: finish flushes; a character cut in half becomes U+FFFD. */
    qc_reply r;
    qc_err err = {0};
    qc_reply_init(&r, tok, eos, n_eos, true, &err);
    int32_t *ids;
    size_t n;
    qc_tokenizer_encode(tok, "ab\xE2\x82\xAC", 5, &ids, &n, &err); /* "ab€" */
    qc_reply_piece p;
    char got[64] = "";
    for (size_t i = 0; i + 1 < n; i++) { /* drop the last id */
        qc_reply_feed(&r, ids[i], &p, &err);
        strncat(got, p.text, p.len);
    }
    qc_reply_finish(&r, &p, &err);
    strncat(got, p.text, p.len);
    const char *tail = got + strlen(got) - 3;
    CHECK("finish_flushes_partial_char", n >= 2 && p.end && strlen(got) >= 3 &&
                                             !memcmp(tail, "\xEF\xBF\xBD", 3) && qc_utf8_valid(got, strlen(got), NULL),
          "n %zu got \"%s\"", n, got);
    free(ids);
    qc_reply_free(&r);
}

static void test_each_eos(void)
{
    CHECK("eos_list_from_generation_config", n_eos == 2 && eos[0] == 1002 && eos[1] == 1000,
          "%d eos ids", n_eos);
    for (int k = 0; k < n_eos; k++) {
        qc_reply r;
        qc_err err = {0};
        qc_reply_init(&r, tok, eos, n_eos, false, &err);
        qc_reply_piece p;
        int32_t *ids;
        size_t n;
        qc_tokenizer_encode(tok, "hello there", 11, &ids, &n, &err);
        for (size_t i = 0; i < n; i++)
            qc_reply_feed(&r, ids[i], &p, &err);
        bool before = p.end;
        qc_reply_feed(&r, eos[k], &p, &err);
        bool at = p.end;
        qc_reply_feed(&r, ids[0], &p, &err); /* after the end: ignored */
        char nm[64];
        snprintf(nm, sizeof nm, "eos_%d_ends_reply", eos[k]);
        CHECK(nm, !before && at && p.end && p.len == 0 && r.n_answer == (int)n &&
                      !strcmp(qc_reply_answer(&r, NULL), "hello there"),
              "before %d at %d after-len %zu n_answer %d", before, at, p.len, r.n_answer);
        free(ids);
        qc_reply_free(&r);
    }
    /* A non-eos special token (<|im_start|>) is ordinary text, not an end. */
    qc_reply r;
    qc_err err = {0};
    qc_reply_init(&r, tok, eos, n_eos, false, &err);
    qc_reply_piece p;
    qc_reply_feed(&r, qc_tokenizer_find(tok, "<|im_start|>"), &p, &err);
    CHECK("non_eos_special_is_text", !p.end && p.kind == QC_REPLY_ANSWER &&
                                         !strcmp(qc_reply_answer(&r, NULL), "<|im_start|>"),
          "end %d kind %d", p.end, p.kind);
    qc_reply_free(&r);
    int32_t many[QC_REPLY_MAX_EOS + 1] = {0};
    int rc = qc_reply_init(&r, tok, many, QC_REPLY_MAX_EOS + 1, true, &err);
    CHECK("too_many_eos_rejected", rc == QC_EXIT_USAGE, "rc %d", rc);
}

static void test_hidden_newlines(void)
{
    run_result res;
    int rc = run("\n\nFirst.\n\nSecond.\n\n\n</think>\n\n\nAnswer\n\nend\n<|im_end|>", true, &res);
    CHECK("newlines_around_tags_hidden", !rc && !strcmp(res.reasoning, "First.\n\nSecond.") &&
                                             !strcmp(res.answer, "Answer\n\nend\n") &&
                                             same_as_accumulated(&res),
          "reasoning \"%s\" answer \"%s\"", res.reasoning, res.answer);
    qc_reply_free(&res.r);
}

int main(void)
{
    char dir[512], path[600];
    qc_err err = {0};
    th_model_dir(dir, sizeof dir, "tiny-qwen35");
    if (qc_tokenizer_load(dir, &tok, &err)) {
        CHECK("tiny_tokenizer", 0, "%s", err.msg);
        return th_exit();
    }
    /* eos ids as generation_config.json lists them. */
    snprintf(path, sizeof path, "%s/generation_config.json", dir);
    char *json;
    if (!qc_read_file(path, &json, NULL, QC_EXIT_RUNTIME, &err)) {
        cJSON *root = cJSON_Parse(json);
        const cJSON *it;
        cJSON_ArrayForEach(it, cJSON_GetObjectItem(root, "eos_token_id"))
            if (n_eos < QC_REPLY_MAX_EOS)
                eos[n_eos++] = it->valueint;
        cJSON_Delete(root);
        free(json);
    }
    test_thinking();
    test_non_thinking();
    test_unclosed();
    test_each_eos();
    test_hidden_newlines();
    qc_tokenizer_free(tok);
    return th_exit();
}
