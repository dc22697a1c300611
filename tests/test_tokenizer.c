/* test_tokenizer.c — byte-level BPE against Hugging Face tokenizers' own ids
 * (fixtures/tokenizer/tokenizer_cases.json), the streaming detokenizer, and
 * clear errors for broken tokenizer files and invalid UTF-8. */
#include <cjson/cJSON.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "detok.h"
#include "harness.h"
#include "tokenizer.h"
#include "util.h"

/* Reads the output of a command (gzip -dc FILE) into memory. */
static char *slurp_cmd(const char *cmd, size_t *len)
{
    FILE *f = popen(cmd, "r");
    if (!f)
        return NULL;
    size_t cap = 1 << 20, n = 0;
    char *buf = malloc(cap);
    size_t k;
    while (buf && (k = fread(buf + n, 1, cap - n - 1, f)) > 0) {
        n += k;
        if (cap - n < 2) {
            char *nb = realloc(buf, cap * 2);
            if (!nb) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = nb;
            cap *= 2;
        }
    }
    if (pclose(f) != 0) {
        free(buf);
        return NULL;
    }
    if (buf)
        buf[n] = '\0';
    *len = n;
    return buf;
}

static int load_gz(const char *name, qc_tokenizer **tok)
{
    char cmd[1024], path[900];
    snprintf(path, sizeof path, "%s/tokenizer/%s/tokenizer.json.gz", th_fixtures(), name);
    snprintf(cmd, sizeof cmd, "gzip -dc '%s'", path);
    size_t len;
    char *json = slurp_cmd(cmd, &len);
    if (!json) {
        printf("# cannot decompress %s\n", path);
        return -1;
    }
    qc_err err = {0};
    int rc = qc_tokenizer_load_json(json, len, path, tok, &err);
    free(json);
    if (rc)
        printf("# load %s: %s\n", name, err.msg);
    return rc;
}

static bool valid_utf8(const char *s, size_t n) { return qc_utf8_valid(s, n, NULL); }

/* Feeds ids one at a time; checks every chunk is valid UTF-8 and that the
 * concatenation equals the one-shot decode. Returns 1 when all holds. */
static int stream_matches(const qc_tokenizer *tok, const int32_t *ids, size_t n, char *why,
                          size_t nwhy)
{
    qc_err err = {0};
    char *whole;
    size_t wlen;
    if (qc_tokenizer_decode(tok, ids, n, &whole, &wlen, &err)) {
        snprintf(why, nwhy, "decode: %.100s", err.msg);
        return 0;
    }
    qc_detok d;
    qc_detok_init(&d, tok);
    char *acc = malloc(wlen + 1);
    size_t alen = 0;
    int ok = 1;
    for (size_t i = 0; i <= n && ok; i++) {
        const char *t;
        size_t tl;
        int rc = i < n ? qc_detok_push(&d, ids[i], &t, &tl, &err) : qc_detok_flush(&d, &t, &tl, &err);
        if (rc || !valid_utf8(t, tl) || alen + tl > wlen) {
            snprintf(why, nwhy, "chunk %zu invalid or too long", i);
            ok = 0;
            break;
        }
        memcpy(acc + alen, t, tl);
        alen += tl;
    }
    if (ok && (alen != wlen || memcmp(acc, whole, wlen))) {
        snprintf(why, nwhy, "concatenation differs from decode");
        ok = 0;
    }
    qc_detok_free(&d);
    free(acc);
    free(whole);
    return ok;
}

static void test_cases(const char *name, const cJSON *cases, const qc_tokenizer *tok)
{
    int n = 0, enc_bad = 0, dec_bad = 0, stream_bad = 0;
    char first[512] = "";
    const cJSON *c;
    cJSON_ArrayForEach(c, cases)
    {
        const char *text = cJSON_GetObjectItem(c, "text")->valuestring;
        const cJSON *want = cJSON_GetObjectItem(c, "ids");
        const char *decoded = cJSON_GetObjectItem(c, "decoded")->valuestring;
        int32_t *ids;
        size_t nids;
        qc_err err = {0};
        n++;
        if (qc_tokenizer_encode(tok, text, strlen(text), &ids, &nids, &err)) {
            enc_bad++;
            if (!first[0])
                snprintf(first, sizeof first, "encode \"%.40s\": %.200s", text, err.msg);
            continue;
        }
        bool same = nids == (size_t)cJSON_GetArraySize(want);
        for (size_t i = 0; same && i < nids; i++)
            same = ids[i] == cJSON_GetArrayItem(want, (int)i)->valueint;
        if (!same) {
            enc_bad++;
            if (!first[0]) {
                int k = snprintf(first, sizeof first, "\"%.40s\" -> %zu ids:", text, nids);
                for (size_t i = 0; i < nids && i < 12 && k < 400; i++)
                    k += snprintf(first + k, sizeof first - (size_t)k, " %d", ids[i]);
            }
        }
        /* Decode the expected ids, so a decode check does not hang on encode. */
        size_t nw = (size_t)cJSON_GetArraySize(want);
        int32_t *wids = malloc((nw ? nw : 1) * sizeof *wids);
        for (size_t i = 0; i < nw; i++)
            wids[i] = cJSON_GetArrayItem(want, (int)i)->valueint;
        char *text_out;
        size_t tlen;
        if (qc_tokenizer_decode(tok, wids, nw, &text_out, &tlen, &err) ||
            tlen != strlen(decoded) || memcmp(text_out, decoded, tlen)) {
            dec_bad++;
            if (!first[0])
                snprintf(first, sizeof first, "decode of \"%.40s\" differs", text);
        }
        if (!err.code)
            free(text_out);
        char why[128];
        if (!stream_matches(tok, wids, nw, why, sizeof why)) {
            stream_bad++;
            if (!first[0])
                snprintf(first, sizeof first, "stream \"%.40s\": %s", text, why);
        }
        free(wids);
        free(ids);
    }
    char nm[128];
    snprintf(nm, sizeof nm, "%s_encode_all_%d_cases", name, n);
    CHECK(nm, n > 0 && enc_bad == 0, "%d of %d differ; first: %s", enc_bad, n, first);
    snprintf(nm, sizeof nm, "%s_decode_all_cases", name);
    CHECK(nm, n > 0 && dec_bad == 0, "%d of %d differ; first: %s", dec_bad, n, first);
    snprintf(nm, sizeof nm, "%s_stream_detok_all_cases", name);
    CHECK(nm, n > 0 && stream_bad == 0, "%d of %d differ; first: %s", stream_bad, n, first);
}

/* Byte-token sequences that split or break UTF-8: streaming equals one-shot
 * decode, and the lossy rule gives the known results. */
static void test_stream_bytes(const qc_tokenizer *tok)
{
    /* The byte-level token of each byte is its single-char spelling. */
    int32_t byte_id[256];
    int missing = 0;
    for (int b = 0; b < 256; b++)
        byte_id[b] = -1;
    for (int32_t id = 0; id < qc_tokenizer_n_tokens(tok); id++) {
        size_t n;
        const char *s = qc_tokenizer_token_bytes(tok, id, &n);
        if (s && n == 1 && !qc_tokenizer_is_added(tok, id) && byte_id[(unsigned char)s[0]] < 0)
            byte_id[(unsigned char)s[0]] = id;
    }
    for (int b = 0; b < 256; b++)
        missing += byte_id[b] < 0;
    CHECK("byte_tokens_cover_all_256", missing == 0, "%d bytes lack a token", missing);
    if (missing)
        return;
    struct {
        const char *bytes;
        size_t n;
        const char *want;
    } cases[] = {
        {"a\xC3\xA9", 3, "a\xC3\xA9"},
        {"\xF0\x9F\x98\x80", 4, "\xF0\x9F\x98\x80"},
        {"\xF0\x9F\x98", 3, "\xEF\xBF\xBD"},            /* cut short: one U+FFFD */
        {"\xE0\x80", 2, "\xEF\xBF\xBD\xEF\xBF\xBD"},    /* E0 needs A0..BF next */
        {"\xED\xA0\x80", 3, "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD"}, /* surrogate */
        {"\xC3x", 2, "\xEF\xBF\xBDx"},
        {"\xFF\xC0\x80", 3, "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD"},
        {"\xE4\xBD\xA0\xE5", 4, "\xE4\xBD\xA0\xEF\xBF\xBD"},
    };
    int bad = 0;
    char first[160] = "";
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        int32_t ids[8];
        for (size_t i = 0; i < cases[k].n; i++)
            ids[i] = byte_id[(unsigned char)cases[k].bytes[i]];
        char *out;
        size_t len;
        qc_err err = {0};
        char why[128];
        int ok = !qc_tokenizer_decode(tok, ids, cases[k].n, &out, &len, &err);
        ok = ok && len == strlen(cases[k].want) && !memcmp(out, cases[k].want, len);
        if (!err.code)
            free(out);
        ok = ok && stream_matches(tok, ids, cases[k].n, why, sizeof why);
        if (!ok && !bad++)
            snprintf(first, sizeof first, "case %zu", k);
    }
    CHECK("lossy_utf8_known_results", bad == 0, "%d bad; first %s", bad, first);
    /* Pseudo-random byte ids: every chunk valid, concatenation = decode. */
    uint32_t s = 12345;
    int rbad = 0;
    for (int round = 0; round < 300; round++) {
        int32_t ids[24];
        for (int i = 0; i < 24; i++) {
            s = s * 1664525u + 1013904223u;
            int b = (s >> 24) & 0xFF;
            if ((s >> 8) & 1) /* bias towards UTF-8-ish lead and continuation bytes */
                b = 0x80 | (b & 0x7F);
            ids[i] = byte_id[b];
        }
        char why[128];
        rbad += !stream_matches(tok, ids, 24, why, sizeof why);
    }
    CHECK("stream_random_byte_ids", rbad == 0, "%d of 300 sequences differ", rbad);
}

static void expect_load_error(const char *name, const char *json, const char *needle)
{
    qc_tokenizer *tok = NULL;
    qc_err err = {0};
    int rc = qc_tokenizer_load_json(json, strlen(json), "broken/tokenizer.json", &tok, &err);
    CHECK(name, rc == QC_EXIT_CHECKPOINT && !tok && strstr(err.msg, needle) &&
                    strstr(err.msg, "broken/tokenizer.json"),
          "rc %d, message \"%s\" (want \"%s\")", rc, err.msg, needle);
    qc_tokenizer_free(tok);
}

#define PRE_OK                                                                                     \
    "\"pre_tokenizer\":{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\","             \
    "\"pattern\":{\"Regex\":\"\\\\p{L}+|\\\\s+|.\"},\"behavior\":\"Isolated\",\"invert\":false},"  \
    "{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"use_regex\":false}]},"                  \
    "\"decoder\":{\"type\":\"ByteLevel\"},\"normalizer\":{\"type\":\"NFC\"}"

static void test_broken_files(void)
{
    expect_load_error("broken_not_json", "{\"model\": [1, 2", "not a JSON");
    expect_load_error("broken_no_model", "{\"added_tokens\": []}", "no \"model\"");
    expect_load_error("broken_no_vocab", "{\"model\":{\"type\":\"BPE\",\"merges\":[]}," PRE_OK "}",
                      "model.vocab");
    expect_load_error("broken_merge_part_missing",
                      "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"ab\":2},"
                      "\"merges\":[\"a c\"]}," PRE_OK "}",
                      "right part is not in model.vocab");
    expect_load_error("broken_merge_result_missing",
                      "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1},"
                      "\"merges\":[[\"a\",\"b\"]]}," PRE_OK "}",
                      "result is not in model.vocab");
    expect_load_error("broken_merge_shape",
                      "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"ab\":2},"
                      "\"merges\":[\"ab\"]}," PRE_OK "}",
                      "not two tokens");
    expect_load_error("broken_merge_type",
                      "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[7]}," PRE_OK "}",
                      "neither");
    expect_load_error("broken_regex",
                      "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]},"
                      "\"pre_tokenizer\":{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":"
                      "\"Split\",\"pattern\":{\"Regex\":\"(\\\\p{L}+\"},\"behavior\":\"Isolated\"},"
                      "{\"type\":\"ByteLevel\",\"use_regex\":false}]},\"decoder\":{\"type\":"
                      "\"ByteLevel\"}}",
                      "regex does not compile");
    expect_load_error("broken_vocab_id",
                      "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":\"x\"},\"merges\":[]}," PRE_OK "}",
                      "no valid id");
    expect_load_error("broken_model_type",
                      "{\"model\":{\"type\":\"WordPiece\",\"vocab\":{\"a\":0}}," PRE_OK "}",
                      "not BPE");
    qc_tokenizer *tok = NULL;
    qc_err err = {0};
    int rc = qc_tokenizer_load("/nonexistent-qchat-dir", &tok, &err);
    CHECK("load_missing_file", rc == QC_EXIT_CHECKPOINT && !tok && strstr(err.msg, "/nonexistent-qchat-dir"),
          "rc %d: %s", rc, err.msg);
}

static void test_tiny(void)
{
    char dir[512];
    th_model_dir(dir, sizeof dir, "tiny-qwen35");
    qc_tokenizer *tok = NULL;
    qc_err err = {0};
    int rc = qc_tokenizer_load(dir, &tok, &err);
    CHECK("tiny_load", rc == 0, "%s", err.msg);
    if (rc)
        return;
    CHECK("tiny_n_tokens", qc_tokenizer_n_tokens(tok) == 1007, "n_tokens %d",
          qc_tokenizer_n_tokens(tok));
    CHECK("tiny_find_think", qc_tokenizer_find(tok, "<think>") == 1003 &&
                                 qc_tokenizer_find(tok, "</think>") == 1004 &&
                                 qc_tokenizer_find(tok, "<|im_end|>") == 1002 &&
                                 qc_tokenizer_find(tok, "no-such-token") == -1,
          "ids %d %d %d", qc_tokenizer_find(tok, "<think>"), qc_tokenizer_find(tok, "</think>"),
          qc_tokenizer_find(tok, "<|im_end|>"));
    CHECK("tiny_special_flags", qc_tokenizer_is_special(tok, 1002) &&
                                    !qc_tokenizer_is_special(tok, 1003) &&
                                    qc_tokenizer_is_added(tok, 1003) && !qc_tokenizer_is_added(tok, 5),
          "flags wrong");
    int32_t *ids;
    size_t n;
    rc = qc_tokenizer_encode(tok, "ok \xC3\x28 bad", 8, &ids, &n, &err);
    CHECK("encode_invalid_utf8_rejected", rc == QC_EXIT_USAGE && strstr(err.msg, "UTF-8") &&
                                              strstr(err.msg, "byte 3"),
          "rc %d: %s", rc, err.msg);
    rc = qc_tokenizer_encode(tok, "\xF4\x90\x80\x80", 4, &ids, &n, &err);
    CHECK("encode_above_unicode_rejected", rc == QC_EXIT_USAGE, "rc %d", rc);
    int32_t bad_id = 5000;
    char *text;
    rc = qc_tokenizer_decode(tok, &bad_id, 1, &text, NULL, &err);
    CHECK("decode_unknown_id_rejected", rc == QC_EXIT_USAGE && strstr(err.msg, "5000"), "rc %d: %s",
          rc, err.msg);
    /* Embedded NUL and empty text are ordinary input. */
    rc = qc_tokenizer_encode(tok, "a\0b", 3, &ids, &n, &err);
    int ok = rc == 0;
    if (ok) {
        rc = qc_tokenizer_decode(tok, ids, n, &text, &n, &err);
        ok = rc == 0 && n == 3 && !memcmp(text, "a\0b", 3);
        if (!rc)
            free(text);
        free(ids);
    }
    CHECK("encode_nul_roundtrip", ok, "%s", err.msg);
    qc_tokenizer_free(tok);
}

int main(void)
{
    char path[512];
    snprintf(path, sizeof path, "%s/tokenizer/tokenizer_cases.json", th_fixtures());
    char *json = NULL;
    qc_err err = {0};
    if (qc_read_file(path, &json, NULL, QC_EXIT_RUNTIME, &err)) {
        CHECK("fixtures_tokenizer_cases", 0, "%s", err.msg);
        return th_exit();
    }
    cJSON *root = cJSON_Parse(json);
    free(json);
    const cJSON *cases = cJSON_GetObjectItem(root, "cases");
    const char *names[] = {"qwen3", "qwen3-vocab-qwen35-regex"};
    for (int i = 0; i < 2; i++) {
        qc_tokenizer *tok = NULL;
        int rc = load_gz(names[i], &tok);
        char nm[96];
        snprintf(nm, sizeof nm, "%s_load", names[i]);
        CHECK(nm, rc == 0, "cannot load");
        if (rc)
            continue;
        test_cases(names[i], cJSON_GetObjectItem(cases, names[i]), tok);
        if (i == 0) {
            snprintf(nm, sizeof nm, "%s_think_ids", names[i]);
            CHECK(nm, qc_tokenizer_find(tok, "<think>") == 151667 &&
                          qc_tokenizer_n_tokens(tok) == 151669,
                  "<think> %d, n_tokens %d", qc_tokenizer_find(tok, "<think>"),
                  qc_tokenizer_n_tokens(tok));
            test_stream_bytes(tok);
        }
        qc_tokenizer_free(tok);
    }
    cJSON_Delete(root);
    test_broken_files();
    test_tiny();
    return th_exit();
}
