/* st_testutil.h — helpers for the checkpoint-reader tests: read and write
 * safetensors files with cJSON (independently of engine/safetensors.c, so the
 * tests check the reader against a second implementation), copy fixture
 * directories, and run the qchat binary. */
#ifndef QC_ST_TESTUTIL_H
#define QC_ST_TESTUTIL_H

#include <cjson/cJSON.h>
#include <dirent.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"
#include "util.h"

/* snprintf through a va_list: test paths are short, and a truncated one
 * simply fails the test that uses it. */
static inline int tu_fmt(char *dst, size_t n, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int r = vsnprintf(dst, n, fmt, ap);
    va_end(ap);
    return r;
}

/* Whole file into memory (NULL on failure). */
static inline uint8_t *tu_slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    rewind(f);
    uint8_t *buf = malloc((size_t)n + 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf) {
        buf[n] = 0;
        *len = (size_t)n;
    }
    return buf;
}

static inline int tu_spit(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    size_t w = fwrite(data, 1, len, f);
    return fclose(f) == 0 && w == len ? 0 : -1;
}

/* Parses a safetensors file: header (caller frees with cJSON_Delete) and a
 * copy of the data region. */
static inline cJSON *tu_read_st(const char *path, uint8_t **data, size_t *dlen)
{
    size_t len;
    uint8_t *buf = tu_slurp(path, &len);
    if (!buf || len < 8) {
        free(buf);
        return NULL;
    }
    uint64_t h = 0;
    for (int i = 7; i >= 0; i--)
        h = h << 8 | buf[i];
    cJSON *hdr = cJSON_ParseWithLength((const char *)buf + 8, (size_t)h);
    if (data) {
        *dlen = len - 8 - h;
        *data = malloc(*dlen + 1);
        memcpy(*data, buf + 8 + h, *dlen);
    }
    free(buf);
    return hdr;
}

/* Writes header JSON (padded with spaces to 8 bytes) and data. When
 * sparse_size > 0 the data is not written: the file is extended to that many
 * data bytes with ftruncate, leaving a hole. */
static inline int tu_write_st_raw(const char *path, const char *json, const void *data, size_t dlen,
                                  uint64_t sparse_size)
{
    size_t jl = strlen(json), pad = (8 - jl % 8) % 8;
    uint64_t h = jl + pad;
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    uint8_t lenb[8];
    for (int i = 0; i < 8; i++)
        lenb[i] = (uint8_t)(h >> (8 * i));
    fwrite(lenb, 1, 8, f);
    fwrite(json, 1, jl, f);
    for (size_t i = 0; i < pad; i++)
        fputc(' ', f);
    if (dlen)
        fwrite(data, 1, dlen, f);
    if (fclose(f))
        return -1;
    if (sparse_size)
        return truncate(path, (off_t)(8 + h + sparse_size));
    return 0;
}

static inline int tu_write_st(const char *path, const cJSON *hdr, const void *data, size_t dlen)
{
    char *s = cJSON_PrintUnformatted(hdr);
    int rc = tu_write_st_raw(path, s, data, dlen, 0);
    free(s);
    return rc;
}

/* Copies every regular file of src into dst (created). */
static inline int tu_copy_dir(const char *src, const char *dst)
{
    mkdir(dst, 0755);
    DIR *d = opendir(src);
    if (!d)
        return -1;
    struct dirent *e;
    int rc = 0;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.' || !strcmp(e->d_name, "golden.safetensors"))
            continue;
        char a[1024], b[1024];
        tu_fmt(a, sizeof a, "%s/%s", src, e->d_name);
        tu_fmt(b, sizeof b, "%s/%s", dst, e->d_name);
        size_t len;
        uint8_t *buf = tu_slurp(a, &len);
        if (!buf || tu_spit(b, buf, len))
            rc = -1;
        free(buf);
    }
    closedir(d);
    return rc;
}

static inline void tu_rm_rf(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        char p[1024];
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        unlink(p);
    }
    closedir(d);
    rmdir(dir);
}

/* A fresh temporary directory name under $TMPDIR (created). */
static inline void tu_tmpdir(char *buf, size_t n, const char *tag)
{
    const char *t = getenv("TMPDIR");
    snprintf(buf, n, "%s/qchat-%s-XXXXXX", t && *t ? t : "/tmp", tag);
    if (!mkdtemp(buf))
        buf[0] = 0;
}

/* Runs `qchat ARGS`; stdout/stderr into heap strings; returns exit status
 * (-1 when it did not exit normally, e.g. a crash). */
static inline int tu_run_qchat(const char *args, char **out, char **err)
{
    const char *bin = getenv("QCHAT_BIN");
    if (!bin || !*bin)
        bin = "./qchat";
    char dir[512], cmd[4096], po[600], pe[600];
    tu_tmpdir(dir, sizeof dir, "run");
    snprintf(po, sizeof po, "%s/out", dir);
    snprintf(pe, sizeof pe, "%s/err", dir);
    snprintf(cmd, sizeof cmd, "%s %s >%s 2>%s", bin, args, po, pe);
    int st = system(cmd);
    size_t len;
    *out = (char *)tu_slurp(po, &len);
    *err = (char *)tu_slurp(pe, &len);
    if (!*out)
        *out = calloc(1, 1);
    if (!*err)
        *err = calloc(1, 1);
    tu_rm_rf(dir);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* Opens one corpus file; returns the reader's status and fills err. */
typedef int (*tu_corpus_fn)(const uint8_t *buf, size_t len, const char *name, qc_err *err);

/* Replays a fuzz corpus directory as one check: ok-* files must be accepted,
 * bad-* rejected cleanly (QC_EXIT_CHECKPOINT with a one-line message), and the
 * fuzzer's finds (hash names) may go either way, but only cleanly. */
static inline void tu_corpus_replay(const char *check, const char *cdir, tu_corpus_fn open_fn)
{
    DIR *d = opendir(cdir);
    if (!d) {
        char why[300];
        snprintf(why, sizeof why, "%s not found (run from the project root)", cdir);
        th_skip(check, why);
        return;
    }
    int n = 0, bad = 0;
    char why[1500] = "";
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        char p[1400];
        snprintf(p, sizeof p, "%s/%s", cdir, e->d_name);
        size_t len = 0;
        uint8_t *buf = tu_slurp(p, &len);
        if (!buf)
            continue;
        n++;
        qc_err err = {0};
        int rc = open_fn(buf, len, e->d_name, &err);
        int clean_reject = rc == QC_EXIT_CHECKPOINT && err.msg[0] && !strchr(err.msg, '\n');
        int ok = !strncmp(e->d_name, "ok-", 3)    ? rc == 0
                 : !strncmp(e->d_name, "bad-", 4) ? clean_reject
                                                  : rc == 0 || clean_reject;
        if (!ok && !bad++)
            snprintf(why, sizeof why, "%s: rc=%d %s", e->d_name, rc, err.msg);
        free(buf);
    }
    closedir(d);
    CHECK(check, !bad && n > 0, "%d of %d files: %s", bad, n, why);
}

#endif
