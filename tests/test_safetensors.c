/* test_safetensors.c — the safetensors reader against an independent cJSON
 * parse of every fixture file, every dtype, each malformed-file fault on its
 * own, and the replay of the fuzz corpus (tests/corpus/safetensors). */

#include "harness.h"
#include "safetensors.h"
#include "st_testutil.h"

static char tmp[512];

/* Writes `json` + `dlen` zero bytes of data as tmp/name; returns the path. */
static const char *mkfile(const char *name, const char *json, size_t dlen)
{
    static char path[1024];
    snprintf(path, sizeof path, "%s/%s", tmp, name);
    uint8_t *z = calloc(1, dlen + 1);
    tu_write_st_raw(path, json, z, dlen, 0);
    free(z);
    return path;
}

/* The reader must reject path with QC_EXIT_CHECKPOINT and a one-line message
 * naming the file and containing `fault`. */
static void expect_bad(const char *test, const char *path, const char *fault)
{
    qc_st *st = NULL;
    qc_err err = {0};
    int rc = qc_st_open_file(path, &st, &err);
    const char *base = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
    CHECK(test,
          rc == QC_EXIT_CHECKPOINT && !st && strstr(err.msg, base) && strstr(err.msg, fault) &&
              !strchr(err.msg, '\n'),
          "rc=%d msg='%s' (want '%s')", rc, err.msg, fault);
    qc_st_free(st);
}

static void test_fixtures(void)
{
    static const char *models[] = {"tiny-qwen35", "tiny-qwen35-fp8", "tiny-qwen35-int4-autoround",
                                   "tiny-qwen35-int4-awq", "tiny-qwen35-nvfp4",
                                   "tiny-qwen35-nvfp4-modelopt", "tiny-qwen36-text",
                                   "tiny-qwen36-text-fp8", "tiny-qwen35-moe", "tiny-qwen35-moe-fp8"};
    for (size_t m = 0; m < sizeof models / sizeof *models; m++) {
        char dir[1024], name[256];
        th_model_dir(dir, sizeof dir, models[m]);
        snprintf(name, sizeof name, "st_fixture_%s", models[m]);
        qc_st *st = NULL;
        qc_err err = {0};
        int rc = qc_st_open_dir(dir, &st, &err);
        if (rc) {
            CHECK(name, 0, "open: %s", err.msg);
            continue;
        }
        /* independent parse of every file of the set */
        size_t total = 0, bad = 0;
        char why[512] = "";
        for (int f = 0; f < qc_st_nfiles(st); f++) {
            uint8_t *data = NULL;
            size_t dlen = 0;
            cJSON *h = tu_read_st(qc_st_file_path(st, f), &data, &dlen);
            for (cJSON *e = h ? h->child : NULL; e; e = e->next) {
                if (!strcmp(e->string, "__metadata__"))
                    continue;
                total++;
                const qc_tensor *t = qc_st_find(st, e->string);
                cJSON *off = cJSON_GetObjectItem(e, "data_offsets");
                size_t b = (size_t)off->child->valuedouble, en = (size_t)off->child->next->valuedouble;
                cJSON *shape = cJSON_GetObjectItem(e, "shape");
                bool ok = t && t->shard == f && t->nbytes == en - b &&
                          !strcmp(qc_dtype_name(t->dtype), cJSON_GetObjectItem(e, "dtype")->valuestring) &&
                          t->ndim == cJSON_GetArraySize(shape) && !memcmp(t->data, data + b, en - b);
                int i = 0;
                for (cJSON *d = shape->child; ok && d; d = d->next, i++)
                    ok = t->shape[i] == (int64_t)d->valuedouble;
                if (!ok && !bad++)
                    snprintf(why, sizeof why, "tensor %s differs", e->string);
            }
            cJSON_Delete(h);
            free(data);
        }
        CHECK(name, !bad && total == qc_st_count(st) && total > 0, "%s; %zu vs %zu tensors", why,
              total, qc_st_count(st));
        qc_st_free(st);
    }
    /* sharded: both shards opened; golden: metadata */
    char dir[1024], path[1200];
    th_model_dir(dir, sizeof dir, "tiny-qwen35");
    qc_st *st = NULL;
    qc_err err = {0};
    qc_st_open_dir(dir, &st, &err);
    CHECK("st_index_two_shards", st && qc_st_nfiles(st) == 2, "nfiles=%d", qc_st_nfiles(st));
    qc_st_free(st);
    snprintf(path, sizeof path, "%s/golden.safetensors", dir);
    int rc = qc_st_open_file(path, &st, &err);
    const char *about = rc ? NULL : qc_st_metadata(st, "about");
    CHECK("st_golden_metadata", about && strstr(about, "transformers"), "rc=%d %s", rc, err.msg);
    const qc_tensor *lg = st ? qc_st_find(st, "logits") : NULL;
    CHECK("st_golden_logits", lg && lg->dtype == QC_DT_F32 && lg->ndim == 2 && lg->shape[0] == 200,
          "logits missing or wrong");
    qc_st_free(st);
}

static void test_dtypes(void)
{
    static const char *names[] = {"BF16", "F16", "F32", "F64", "F8_E4M3", "F8_E5M2", "F8_E8M0",
                                  "BOOL", "U8", "I8", "U16", "I16", "U32", "I32", "U64", "I64"};
    static const size_t sizes[] = {2, 2, 4, 8, 1, 1, 1, 1, 1, 1, 2, 2, 4, 4, 8, 8};
    char json[4096] = "{";
    size_t off = 0, o = 1;
    for (int i = 0; i < 16; i++) {
        o += (size_t)snprintf(json + o, sizeof json - o,
                              "%s\"t%d\":{\"dtype\":\"%s\",\"shape\":[3],\"data_offsets\":[%zu,%zu]}",
                              i ? "," : "", i, names[i], off, off + 3 * sizes[i]);
        off += 3 * sizes[i];
    }
    snprintf(json + o, sizeof json - o, "}");
    const char *p = mkfile("dtypes.safetensors", json, off);
    qc_st *st = NULL;
    qc_err err = {0};
    int rc = qc_st_open_file(p, &st, &err);
    int bad = rc ? 1 : 0;
    for (int i = 0; !rc && i < 16; i++) {
        char n[16];
        snprintf(n, sizeof n, "t%d", i);
        const qc_tensor *t = qc_st_find(st, n);
        if (!t || t->nbytes != 3 * sizes[i] || strcmp(qc_dtype_name(t->dtype), names[i]) ||
            qc_dtype_size(t->dtype) != sizes[i])
            bad++;
    }
    CHECK("st_every_dtype", !bad, "rc=%d %s, %d bad", rc, err.msg, bad);
    qc_st_free(st);
    /* empty tensor and a zero-dim scalar */
    p = mkfile("scalar.safetensors",
               "{\"e\":{\"dtype\":\"F32\",\"shape\":[0,4],\"data_offsets\":[0,0]},"
               "\"s\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]}}",
               4);
    rc = qc_st_open_file(p, &st, &err);
    CHECK("st_scalar_and_empty",
          !rc && qc_st_find(st, "s")->numel == 1 && qc_st_find(st, "s")->ndim == 0 &&
              qc_st_find(st, "e")->numel == 0,
          "rc=%d %s", rc, err.msg);
    qc_st_free(st);
}

#define T2(a, b) \
    "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[" a "]}," \
    "\"b\":{\"dtype\":\"BF16\",\"shape\":[2,2],\"data_offsets\":[" b "]}}"

static void test_malformed(void)
{
    char p[1024];
    /* shorter than the 8-byte length */
    snprintf(p, sizeof p, "%s/short.safetensors", tmp);
    tu_spit(p, "\x10\0\0", 3);
    expect_bad("st_bad_truncated_length", p, "truncated");
    /* cut inside the data region */
    const char *q = mkfile("cut.safetensors", T2("0,8", "8,16"), 16);
    { /* cut 6 bytes off the end */
        size_t len = 0;
        uint8_t *b = tu_slurp(q, &len);
        tu_spit(q, b, len - 6);
        free(b);
    }
    expect_bad("st_bad_truncated_data", q, "truncated");
    /* header length beyond the file */
    snprintf(p, sizeof p, "%s/hlen.safetensors", tmp);
    tu_spit(p, "\xff\xff\0\0\0\0\0\0{}", 10);
    expect_bad("st_bad_header_length", p, "beyond the file");
    expect_bad("st_bad_not_json", mkfile("nojson.safetensors", "{\"a\": [1, 2", 0),
               "not valid JSON");
    expect_bad("st_bad_not_object", mkfile("array.safetensors", "[1, 2, 3]", 0),
               "not a JSON object");
    expect_bad("st_bad_trailing_garbage", mkfile("garbage.safetensors", "{} xx", 0),
               "not valid JSON");
    expect_bad("st_bad_unknown_dtype",
               mkfile("dtype.safetensors",
                      "{\"a\":{\"dtype\":\"F12\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8),
               "unknown dtype");
    expect_bad("st_bad_size_mismatch",
               mkfile("size.safetensors",
                      "{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8),
               "shape x dtype is 12 bytes");
    expect_bad("st_bad_offsets_oob", mkfile("oob.safetensors", T2("0,8", "8,16"), 12),
               "out of bounds");
    expect_bad("st_bad_offsets_overlap", mkfile("overlap.safetensors", T2("0,8", "4,12"), 12),
               "overlap");
    expect_bad("st_bad_offsets_order", mkfile("order.safetensors", T2("8,0", "8,16"), 16),
               "out of order");
    expect_bad("st_bad_offsets_gap", mkfile("gap.safetensors", T2("0,8", "12,20"), 20), "gap");
    expect_bad("st_bad_trailing_data", mkfile("trail.safetensors", T2("0,8", "8,16"), 24),
               "after the last tensor");
    expect_bad("st_bad_negative_dim",
               mkfile("neg.safetensors",
                      "{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8),
               "shape entry 0");
    expect_bad("st_bad_shape_overflow",
               mkfile("ovf.safetensors",
                      "{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],"
                      "\"data_offsets\":[0,8]}}",
                      8),
               "too large");
    expect_bad("st_bad_duplicate",
               mkfile("dup.safetensors",
                      "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                      "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}",
                      16),
               "appears twice");
    expect_bad("st_bad_metadata",
               mkfile("meta.safetensors", "{\"__metadata__\":{\"k\":3}}", 0), "__metadata__");
}

/* A directory with an index over two shards; `mode` breaks it. */
static int shard_case(const char *mode, char *dir, size_t n, qc_err *err)
{
    snprintf(dir, n, "%s/shards-%s", tmp, mode);
    mkdir(dir, 0755);
    char p[1200];
    const char *a = "{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";
    const char *b = !strcmp(mode, "dup")
                        ? "{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}"
                        : "{\"y\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";
    uint8_t z[8] = {0};
    snprintf(p, sizeof p, "%s/model-00001-of-00002.safetensors", dir);
    tu_write_st_raw(p, a, z, 8, 0);
    snprintf(p, sizeof p, "%s/model_extra_tensors.safetensors", dir);
    if (strcmp(mode, "missing"))
        tu_write_st_raw(p, b, z, 8, 0);
    const char *idx = !strcmp(mode, "dup")
        ? "{\"weight_map\":{\"x\":\"model-00001-of-00002.safetensors\","
          "\"y\":\"model_extra_tensors.safetensors\"}}"
        : !strcmp(mode, "escape")
        ? "{\"weight_map\":{\"x\":\"../model-00001-of-00002.safetensors\"}}"
        : !strcmp(mode, "absent")
        ? "{\"weight_map\":{\"x\":\"model-00001-of-00002.safetensors\","
          "\"y\":\"model_extra_tensors.safetensors\",\"z\":\"model_extra_tensors.safetensors\"}}"
        : "{\"metadata\":{},\"weight_map\":{\"x\":\"model-00001-of-00002.safetensors\","
          "\"y\":\"model_extra_tensors.safetensors\"}}";
    snprintf(p, sizeof p, "%s/model.safetensors.index.json", dir);
    tu_spit(p, idx, strlen(idx));
    qc_st *st = NULL;
    int rc = qc_st_open_dir(dir, &st, err);
    if (!rc && !strcmp(mode, "ok"))
        rc = qc_st_find(st, "x") && qc_st_find(st, "y") && qc_st_nfiles(st) == 2 ? 0 : 99;
    qc_st_free(st);
    return rc;
}

static void test_shards(void)
{
    char dir[1024];
    qc_err err = {0};
    int rc = shard_case("ok", dir, sizeof dir, &err);
    CHECK("st_index_extra_shard", rc == 0, "rc=%d %s", rc, err.msg);
    rc = shard_case("dup", dir, sizeof dir, &err);
    CHECK("st_bad_tensor_in_two_shards",
          rc == QC_EXIT_CHECKPOINT && strstr(err.msg, "tensor x is also in") &&
              strstr(err.msg, "model_extra_tensors.safetensors"),
          "rc=%d %s", rc, err.msg);
    rc = shard_case("missing", dir, sizeof dir, &err);
    CHECK("st_bad_shard_missing",
          rc == QC_EXIT_CHECKPOINT && strstr(err.msg, "model_extra_tensors.safetensors") &&
              strstr(err.msg, "missing"),
          "rc=%d %s", rc, err.msg);
    rc = shard_case("escape", dir, sizeof dir, &err);
    CHECK("st_bad_shard_path", rc == QC_EXIT_CHECKPOINT && strstr(err.msg, "not a file of"),
          "rc=%d %s", rc, err.msg);
    rc = shard_case("absent", dir, sizeof dir, &err);
    CHECK("st_bad_index_tensor_absent",
          rc == QC_EXIT_CHECKPOINT && strstr(err.msg, "tensor z named in"), "rc=%d %s", rc,
          err.msg);
    /* no safetensors at all */
    snprintf(dir, sizeof dir, "%s/empty", tmp);
    mkdir(dir, 0755);
    qc_st *st = NULL;
    rc = qc_st_open_dir(dir, &st, &err);
    CHECK("st_bad_no_files", rc == QC_EXIT_CHECKPOINT && strstr(err.msg, "model.safetensors"),
          "rc=%d %s", rc, err.msg);
}

/* Replays tests/corpus/safetensors: ok-* must open, bad-* must be rejected
 * cleanly (code 3, one line); the files the fuzzer found (hash names) may do
 * either, but only cleanly. Under `make sanitize` this is the fuzz
 * regression suite. */
/* A safetensors image from the corpus; an accepted one has every tensor's
 * last byte touched, so a bad range shows under the sanitizers. */
static int corpus_open_st(const uint8_t *buf, size_t len, const char *name, qc_err *err)
{
    qc_st *st = NULL;
    int rc = qc_st_open_buffer(buf, len, name, &st, err);
    for (size_t i = 0; !rc && i < qc_st_count(st); i++)
        if (qc_st_at(st, i)->nbytes)
            (void)((volatile const uint8_t *)qc_st_at(st, i)->data)[qc_st_at(st, i)->nbytes - 1];
    qc_st_free(st);
    return rc;
}

static void test_corpus(void) { tu_corpus_replay("st_corpus", "tests/corpus/safetensors", corpus_open_st); }

int main(void)
{
    tu_tmpdir(tmp, sizeof tmp, "st");
    test_fixtures();
    test_dtypes();
    test_malformed();
    test_shards();
    test_corpus();
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
    if (system(cmd) != 0)
        return 1;
    return th_exit();
}
