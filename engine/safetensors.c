/* safetensors.c — see safetensors.h.
 *
 * File layout: u64 little-endian header length H, H bytes of JSON, then the
 * data region. The header maps tensor name -> {dtype, shape, data_offsets
 * [begin, end)} relative to the data region, plus an optional "__metadata__"
 * object of strings. We accept exactly what the reference implementation
 * accepts: the tensors, sorted by offset, must tile the data region with no
 * gap, no overlap and nothing after the last one. */
#include "safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* A header larger than this is rejected before parsing (the reference
 * implementation's limit is 100 MB; real 27B shards are < 100 KB). */
#define ST_MAX_HEADER (100u << 20)

typedef struct st_file {
    char *path;           /* as opened, for messages */
    const uint8_t *base;  /* whole file image */
    size_t size;
    bool mapped;          /* base is an mmap we own (else a caller buffer) */
} st_file;

typedef struct st_meta {
    char *key, *value;
} st_meta;

struct qc_st {
    st_file *files;
    int nfiles;
    qc_tensor *tensors; /* sorted by name once complete */
    size_t n, cap;
    st_meta *meta;
    size_t nmeta;
};

/* Basename of a path, for shorter messages where the dir is obvious. */
static const char *st_base(const char *path)
{
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

static int st_push(qc_st *st, const qc_tensor *t, qc_err *err)
{
    qc_tensor *nt = qc_grow(st->tensors, &st->cap, st->n, sizeof *nt, 256);
    if (!nt)
        return qc_err_set(err, QC_EXIT_RUNTIME, "out of memory for the tensor table");
    st->tensors = nt;
    st->tensors[st->n++] = *t;
    return QC_OK;
}

static int st_add_file(qc_st *st, const char *path, const uint8_t *base, size_t size, bool mapped,
                       qc_err *err)
{
    st_file *nf = realloc(st->files, (size_t)(st->nfiles + 1) * sizeof *nf);
    if (!nf)
        return qc_err_set(err, QC_EXIT_RUNTIME, "out of memory for the file table");
    st->files = nf;
    st_file *f = &st->files[st->nfiles];
    f->path = strdup(path);
    if (!f->path)
        return qc_err_set(err, QC_EXIT_RUNTIME, "out of memory");
    f->base = base;
    f->size = size;
    f->mapped = mapped;
    st->nfiles++;
    return QC_OK;
}

static int cmp_offset(const void *a, const void *b)
{
    const qc_tensor *x = *(const qc_tensor *const *)a, *y = *(const qc_tensor *const *)b;
    const uint8_t *px = x->data, *py = y->data;
    if (px != py)
        return px < py ? -1 : 1;
    /* empty tensors may share an offset with the next; keep them first */
    return x->nbytes < y->nbytes ? -1 : x->nbytes > y->nbytes;
}

static int cmp_name(const void *a, const void *b)
{
    const qc_tensor *x = a, *y = b;
    return strcmp(x->name, y->name);
}

/* Reads a JSON number that must be a non-negative integer below 2^53. */
static bool st_json_u64(const cJSON *v, uint64_t *out)
{
    if (!cJSON_IsNumber(v))
        return false;
    double d = v->valuedouble;
    if (!(d >= 0) || d > 9007199254740992.0 || d != (double)(uint64_t)d)
        return false;
    *out = (uint64_t)d;
    return true;
}

static int st_parse_metadata(qc_st *st, const cJSON *md, const char *path, qc_err *err)
{
    if (!cJSON_IsObject(md))
        return qc_err_set(err, QC_EXIT_CHECKPOINT, "%s: header __metadata__ is not an object", path);
    for (const cJSON *e = md->child; e; e = e->next) {
        if (!cJSON_IsString(e))
            return qc_err_set(err, QC_EXIT_CHECKPOINT,
                              "%s: header __metadata__ entry '%s' is not a string", path, e->string);
        st_meta *nm = realloc(st->meta, (st->nmeta + 1) * sizeof *nm);
        if (!nm)
            return qc_err_set(err, QC_EXIT_RUNTIME, "out of memory");
        st->meta = nm;
        nm[st->nmeta].key = strdup(e->string);
        nm[st->nmeta].value = strdup(e->valuestring);
        st->nmeta++;
        if (!nm[st->nmeta - 1].key || !nm[st->nmeta - 1].value)
            return qc_err_set(err, QC_EXIT_RUNTIME, "out of memory");
    }
    return QC_OK;
}

/* Parses one tensor entry of the header of file `shard`. */
static int st_parse_entry(qc_st *st, const cJSON *e, int shard, const uint8_t *data,
                          uint64_t data_len, qc_err *err)
{
    const char *path = st->files[shard].path, *name = e->string;
    if (!cJSON_IsObject(e))
        return qc_err_set(err, QC_EXIT_CHECKPOINT, "%s: tensor %s: entry is not an object", path,
                          name);
    const cJSON *jd = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    const cJSON *js = cJSON_GetObjectItemCaseSensitive(e, "shape");
    const cJSON *jo = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    if (!cJSON_IsString(jd))
        return qc_err_set(err, QC_EXIT_CHECKPOINT, "%s: tensor %s: missing or non-string dtype",
                          path, name);
    qc_tensor t = {0};
    t.dtype = qc_dtype_from_name(jd->valuestring);
    if (t.dtype == QC_DT_INVALID)
        return qc_err_set(err, QC_EXIT_CHECKPOINT, "%s: tensor %s: unknown dtype '%.40s'", path,
                          name, jd->valuestring);
    if (!cJSON_IsArray(js))
        return qc_err_set(err, QC_EXIT_CHECKPOINT, "%s: tensor %s: missing or non-array shape",
                          path, name);
    int nd = cJSON_GetArraySize(js);
    if (nd > QC_MAX_DIMS)
        return qc_err_set(err, QC_EXIT_CHECKPOINT, "%s: tensor %s: %d dimensions (at most %d)",
                          path, name, nd, QC_MAX_DIMS);
    t.ndim = nd;
    uint64_t numel = 1;
    bool overflow = false;
    int i = 0;
    for (const cJSON *d = js->child; d; d = d->next, i++) {
        uint64_t v;
        if (!st_json_u64(d, &v))
            return qc_err_set(err, QC_EXIT_CHECKPOINT,
                              "%s: tensor %s: shape entry %d is not a non-negative integer", path,
                              name, i);
        t.shape[i] = (int64_t)v;
        if (v && numel > UINT64_MAX / 64 / v)
            overflow = true;
        numel *= v;
    }
    if (overflow || numel > (UINT64_MAX >> 8))
        return qc_err_set(err, QC_EXIT_CHECKPOINT, "%s: tensor %s: shape too large", path, name);
    t.numel = (int64_t)numel;
    uint64_t nbytes = numel * qc_dtype_size(t.dtype);
    if (!cJSON_IsArray(jo) || cJSON_GetArraySize(jo) != 2)
        return qc_err_set(err, QC_EXIT_CHECKPOINT,
                          "%s: tensor %s: data_offsets is not a [begin, end] pair", path, name);
    uint64_t b, en;
    if (!st_json_u64(jo->child, &b) || !st_json_u64(jo->child->next, &en))
        return qc_err_set(err, QC_EXIT_CHECKPOINT,
                          "%s: tensor %s: data_offsets are not non-negative integers", path, name);
    if (en < b)
        return qc_err_set(err, QC_EXIT_CHECKPOINT,
                          "%s: tensor %s: data_offsets [%llu, %llu] out of order (end before begin)",
                          path, name, (unsigned long long)b, (unsigned long long)en);
    if (en > data_len)
        return qc_err_set(err, QC_EXIT_CHECKPOINT,
                          "%s: tensor %s: data_offsets [%llu, %llu] out of bounds: the data region "
                          "is %llu bytes (truncated file?)",
                          path, name, (unsigned long long)b, (unsigned long long)en,
                          (unsigned long long)data_len);
    if (en - b != nbytes)
        return qc_err_set(err, QC_EXIT_CHECKPOINT,
                          "%s: tensor %s: shape x dtype is %llu bytes but data_offsets span %llu",
                          path, name, (unsigned long long)nbytes, (unsigned long long)(en - b));
    t.name = strdup(name);
    if (!t.name)
        return qc_err_set(err, QC_EXIT_RUNTIME, "out of memory");
    t.data = data + b;
    t.nbytes = (size_t)nbytes;
    t.shard = shard;
    int rc = st_push(st, &t, err);
    if (rc)
        free((char *)t.name);
    return rc;
}

/* Checks that the tensors of file `shard` (indices [first, st->n)) tile its
 * data region exactly. */
static int st_check_tiling(qc_st *st, size_t first, const uint8_t *data, uint64_t data_len,
                           qc_err *err)
{
    const char *path = st->files[st->nfiles - 1].path;
    size_t m = st->n - first;
    if (!m) {
        if (data_len)
            return qc_err_set(err, QC_EXIT_CHECKPOINT,
                              "%s: %llu bytes of data after the header but no tensors", path,
                              (unsigned long long)data_len);
        return QC_OK;
    }
    const qc_tensor **ord = malloc(m * sizeof *ord);
    if (!ord)
        return qc_err_set(err, QC_EXIT_RUNTIME, "out of memory");
    for (size_t i = 0; i < m; i++)
        ord[i] = &st->tensors[first + i];
    qsort(ord, m, sizeof *ord, cmp_offset);
    uint64_t pos = 0;
    const char *prev = NULL;
    int rc = QC_OK;
    for (size_t i = 0; i < m && !rc; i++) {
        uint64_t b = (uint64_t)((const uint8_t *)ord[i]->data - data);
        if (b < pos)
            rc = qc_err_set(err, QC_EXIT_CHECKPOINT,
                            "%s: tensor %s: data_offsets overlap those of %s", path, ord[i]->name,
                            prev);
        else if (b > pos)
            rc = qc_err_set(err, QC_EXIT_CHECKPOINT,
                            "%s: tensor %s: data_offsets leave a gap of %llu bytes before it",
                            path, ord[i]->name, (unsigned long long)(b - pos));
        pos = b + ord[i]->nbytes;
        prev = ord[i]->name;
    }
    if (!rc && pos != data_len)
        rc = qc_err_set(err, QC_EXIT_CHECKPOINT,
                        "%s: %llu bytes of data after the last tensor", path,
                        (unsigned long long)(data_len - pos));
    free(ord);
    return rc;
}

/* Parses the file image just added as the set's last file. */
static int st_parse_image(qc_st *st, qc_err *err)
{
    int shard = st->nfiles - 1;
    const st_file *f = &st->files[shard];
    if (f->size < 8)
        return qc_err_set(err, QC_EXIT_CHECKPOINT,
                          "%s: truncated file (%zu bytes, less than the 8-byte header length)",
                          f->path, f->size);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | f->base[i];
    if (hlen > f->size - 8)
        return qc_err_set(err, QC_EXIT_CHECKPOINT,
                          "%s: header length %llu beyond the file (%zu bytes): truncated file?",
                          f->path, (unsigned long long)hlen, f->size);
    if (hlen > ST_MAX_HEADER)
        return qc_err_set(err, QC_EXIT_CHECKPOINT, "%s: header length %llu is over 100 MB",
                          f->path, (unsigned long long)hlen);
    if (hlen < 2)
        return qc_err_set(err, QC_EXIT_CHECKPOINT, "%s: header is not a JSON object (%llu bytes)",
                          f->path, (unsigned long long)hlen);
    const char *hdr = (const char *)f->base + 8;
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(hdr, (size_t)hlen, &end, 0);
    if (!root)
        return qc_err_set(err, QC_EXIT_CHECKPOINT, "%s: header is not valid JSON", f->path);
    /* writers pad the header to 8 bytes with spaces; anything else after the
     * JSON value is garbage */
    for (const char *p = end; p && p < hdr + hlen; p++)
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            cJSON_Delete(root);
            return qc_err_set(err, QC_EXIT_CHECKPOINT,
                              "%s: header is not valid JSON (garbage after the JSON value)",
                              f->path);
        }
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return qc_err_set(err, QC_EXIT_CHECKPOINT, "%s: header is not a JSON object", f->path);
    }
    const uint8_t *data = f->base + 8 + hlen;
    uint64_t data_len = f->size - 8 - hlen;
    size_t first = st->n;
    int rc = QC_OK;
    for (const cJSON *e = root->child; e && !rc; e = e->next) {
        if (!e->string)
            continue;
        if (!strcmp(e->string, "__metadata__"))
            rc = st_parse_metadata(st, e, f->path, err);
        else
            rc = st_parse_entry(st, e, shard, data, data_len, err);
    }
    cJSON_Delete(root);
    if (!rc)
        rc = st_check_tiling(st, first, data, data_len, err);
    return rc;
}

static int st_map_file(qc_st *st, const char *path, int missing_code, const char *missing_why,
                       qc_err *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT)
            return qc_err_set(err, missing_code, "%s: %s", path, missing_why);
        return qc_err_set(err, QC_EXIT_CHECKPOINT, "%s: cannot open: %s", path, strerror(errno));
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return qc_err_set(err, QC_EXIT_CHECKPOINT, "%s: not a regular file", path);
    }
    size_t size = (size_t)sb.st_size;
    const uint8_t *base = NULL;
    if (size > 0) {
        void *m = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED) {
            close(fd);
            return qc_err_set(err, QC_EXIT_RUNTIME, "%s: mmap failed: %s", path, strerror(errno));
        }
        base = m;
    }
    close(fd);
    int rc = st_add_file(st, path, base, size, size > 0, err);
    if (rc) {
        if (base)
            munmap((void *)base, size);
        return rc;
    }
    return st_parse_image(st, err);
}

/* Sorts by name and rejects a name that occurs twice (in one file or two). */
static int st_finish(qc_st *st, qc_err *err)
{
    if (st->n)
        qsort(st->tensors, st->n, sizeof *st->tensors, cmp_name);
    for (size_t i = 1; i < st->n; i++) {
        const qc_tensor *a = &st->tensors[i - 1], *b = &st->tensors[i];
        if (!strcmp(a->name, b->name)) {
            if (a->shard == b->shard)
                return qc_err_set(err, QC_EXIT_CHECKPOINT, "%s: tensor %s appears twice",
                                  st->files[a->shard].path, a->name);
            return qc_err_set(err, QC_EXIT_CHECKPOINT, "%s: tensor %s is also in %s",
                              st->files[b->shard].path, a->name,
                              st_base(st->files[a->shard].path));
        }
    }
    return QC_OK;
}


/* Messages quote names from the files; keep them one printable line. */
static int st_clean(int rc, qc_err *err)
{
    if (rc && err)
        for (char *p = err->msg; *p; p++)
            if ((unsigned char)*p < 0x20 || *p == 0x7f)
                *p = '?';
    return rc;
}

static qc_st *st_new(qc_err *err)
{
    return qc_calloc(1, sizeof(qc_st), err, "safetensors set");
}

int qc_st_open_file(const char *path, qc_st **out, qc_err *err)
{
    *out = NULL;
    qc_st *st = st_new(err);
    if (!st)
        return QC_EXIT_RUNTIME;
    int rc = st_map_file(st, path, QC_EXIT_CHECKPOINT, "file not found", err);
    if (!rc)
        rc = st_finish(st, err);
    if (rc) {
        qc_st_free(st);
        return st_clean(rc, err);
    }
    *out = st;
    return QC_OK;
}

int qc_st_open_buffer(const void *buf, size_t len, const char *label, qc_st **out, qc_err *err)
{
    *out = NULL;
    qc_st *st = st_new(err);
    if (!st)
        return QC_EXIT_RUNTIME;
    int rc = st_add_file(st, label, buf, len, false, err);
    if (!rc)
        rc = st_parse_image(st, err);
    if (!rc)
        rc = st_finish(st, err);
    if (rc) {
        qc_st_free(st);
        return st_clean(rc, err);
    }
    *out = st;
    return QC_OK;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Opens every shard the index names; then checks that each tensor the index
 * maps is in the shard it names. */
static int st_open_index(qc_st *st, const char *dir, const char *ipath, qc_err *err)
{
    char *text = NULL;
    size_t len = 0;
    int rc = qc_read_file(ipath, &text, &len, QC_EXIT_CHECKPOINT, err);
    if (rc)
        return rc;
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    if (!root)
        return qc_err_set(err, QC_EXIT_CHECKPOINT, "%s: not valid JSON", ipath);
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    if (!cJSON_IsObject(wm)) {
        cJSON_Delete(root);
        return qc_err_set(err, QC_EXIT_CHECKPOINT, "%s: no \"weight_map\" object", ipath);
    }
    int n = cJSON_GetArraySize(wm);
    const char **names = calloc((size_t)n + 1, sizeof *names);
    if (!names) {
        cJSON_Delete(root);
        return qc_err_set(err, QC_EXIT_RUNTIME, "out of memory");
    }
    int m = 0;
    for (const cJSON *e = wm->child; e && !rc; e = e->next) {
        if (!cJSON_IsString(e))
            rc = qc_err_set(err, QC_EXIT_CHECKPOINT, "%s: weight_map entry %s is not a file name",
                            ipath, e->string);
        else if (!*e->valuestring || strchr(e->valuestring, '/') ||
                 !strcmp(e->valuestring, "..") || !strcmp(e->valuestring, "."))
            rc = qc_err_set(err, QC_EXIT_CHECKPOINT,
                            "%s: weight_map names shard '%.200s', not a file of the directory",
                            ipath, e->valuestring);
        else
            names[m++] = e->valuestring;
    }
    if (!rc && m == 0)
        rc = qc_err_set(err, QC_EXIT_CHECKPOINT, "%s: weight_map is empty", ipath);
    if (!rc) {
        qsort(names, (size_t)m, sizeof *names, cmp_str);
        for (int i = 0; i < m && !rc; i++) {
            if (i && !strcmp(names[i], names[i - 1]))
                continue;
            char *p = qc_path_join(dir, names[i]);
            if (!p) {
                rc = qc_err_set(err, QC_EXIT_RUNTIME, "out of memory");
                break;
            }
            char why[300];
            snprintf(why, sizeof why, "shard named in %s is missing", st_base(ipath));
            rc = st_map_file(st, p, QC_EXIT_CHECKPOINT, why, err);
            free(p);
        }
    }
    if (!rc)
        rc = st_finish(st, err);
    /* every mapped tensor must live in the shard the index says */
    for (const cJSON *e = wm->child; e && !rc; e = e->next) {
        const qc_tensor *t = qc_st_find(st, e->string);
        if (!t)
            rc = qc_err_set(err, QC_EXIT_CHECKPOINT, "%s/%s: tensor %s named in %s is missing",
                            dir, e->valuestring, e->string, st_base(ipath));
        else if (strcmp(st_base(st->files[t->shard].path), e->valuestring))
            rc = qc_err_set(err, QC_EXIT_CHECKPOINT,
                            "%s: tensor %s is in %s, not in %s as the index says", ipath,
                            e->string, st_base(st->files[t->shard].path), e->valuestring);
    }
    free(names);
    cJSON_Delete(root);
    return rc;
}

int qc_st_open_dir(const char *dir, qc_st **out, qc_err *err)
{
    *out = NULL;
    qc_st *st = st_new(err);
    if (!st)
        return QC_EXIT_RUNTIME;
    char *ipath = qc_path_join(dir, "model.safetensors.index.json");
    char *spath = qc_path_join(dir, "model.safetensors");
    int rc;
    if (!ipath || !spath)
        rc = qc_err_set(err, QC_EXIT_RUNTIME, "out of memory");
    else if (access(ipath, F_OK) == 0)
        rc = st_open_index(st, dir, ipath, err);
    else {
        rc = st_map_file(st, spath, QC_EXIT_CHECKPOINT,
                         "not found (nor model.safetensors.index.json)", err);
        if (!rc)
            rc = st_finish(st, err);
    }
    free(ipath);
    free(spath);
    if (rc) {
        qc_st_free(st);
        return st_clean(rc, err);
    }
    *out = st;
    return QC_OK;
}

void qc_st_free(qc_st *st)
{
    if (!st)
        return;
    for (size_t i = 0; i < st->n; i++)
        free((char *)st->tensors[i].name);
    free(st->tensors);
    for (int i = 0; i < st->nfiles; i++) {
        if (st->files[i].mapped)
            munmap((void *)st->files[i].base, st->files[i].size);
        free(st->files[i].path);
    }
    free(st->files);
    for (size_t i = 0; i < st->nmeta; i++) {
        free(st->meta[i].key);
        free(st->meta[i].value);
    }
    free(st->meta);
    free(st);
}

const qc_tensor *qc_st_find(const qc_st *st, const char *name)
{
    if (!st || !name || !st->n)
        return NULL;
    qc_tensor key = {.name = name};
    return bsearch(&key, st->tensors, st->n, sizeof key, cmp_name);
}

size_t qc_st_count(const qc_st *st) { return st ? st->n : 0; }

const qc_tensor *qc_st_at(const qc_st *st, size_t i)
{
    return st && i < st->n ? &st->tensors[i] : NULL;
}

int qc_st_nfiles(const qc_st *st) { return st ? st->nfiles : 0; }

const char *qc_st_file_path(const qc_st *st, int shard)
{
    return st && shard >= 0 && shard < st->nfiles ? st->files[shard].path : NULL;
}

uint64_t qc_st_file_size(const qc_st *st, int shard)
{
    return st && shard >= 0 && shard < st->nfiles ? st->files[shard].size : 0;
}

const char *qc_st_metadata(const qc_st *st, const char *key)
{
    for (size_t i = 0; st && i < st->nmeta; i++)
        if (!strcmp(st->meta[i].key, key))
            return st->meta[i].value;
    return NULL;
}
