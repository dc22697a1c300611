/* st_write.c — see st_write.h. */
#include "st_write.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

char *qc_stw_build_header(const qc_stw_entry *e, size_t n, const char *const *meta, size_t *len,
                          qc_err *err)
{
    cJSON *root = cJSON_CreateObject();
    bool ok = root != NULL;
    if (ok && meta) {
        cJSON *m = cJSON_AddObjectToObject(root, "__metadata__");
        for (size_t i = 0; ok && meta[i] && meta[i + 1]; i += 2)
            ok = cJSON_AddStringToObject(m, meta[i], meta[i + 1]) != NULL;
    }
    int64_t off = 0;
    for (size_t i = 0; ok && i < n; i++) {
        cJSON *t = cJSON_AddObjectToObject(root, e[i].name);
        cJSON *sh = t && cJSON_AddStringToObject(t, "dtype", e[i].dtype)
                        ? cJSON_AddArrayToObject(t, "shape") : NULL;
        for (int d = 0; sh && d < e[i].ndim; d++)
            cJSON_AddItemToArray(sh, cJSON_CreateNumber((double)e[i].shape[d]));
        cJSON *of = sh ? cJSON_AddArrayToObject(t, "data_offsets") : NULL;
        ok = of != NULL;
        if (ok) {
            cJSON_AddItemToArray(of, cJSON_CreateNumber((double)off));
            cJSON_AddItemToArray(of, cJSON_CreateNumber((double)(off + e[i].nbytes)));
        }
        off += e[i].nbytes;
    }
    char *s = ok ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    size_t js = s ? strlen(s) : 0, padded = (js + 7) & ~(size_t)7;
    char *h = s ? malloc(8 + padded) : NULL;
    if (!h) {
        free(s);
        qc_err_set(err, QC_EXIT_RUNTIME, "out of memory building a safetensors header");
        return NULL;
    }
    for (int i = 0; i < 8; i++)
        h[i] = (char)(uint8_t)((uint64_t)padded >> (8 * i));
    memcpy(h + 8, s, js);
    memset(h + 8 + js, ' ', padded - js);
    free(s);
    *len = 8 + padded;
    return h;
}

int qc_stw_put_bytes(qc_stw_sink *s, const void *p, size_t n, qc_err *err)
{
    if (n && fwrite(p, 1, n, s->f) != n)
        return qc_err_set(err, QC_EXIT_RUNTIME, "%s: write failed: %s", s->path, strerror(errno));
    s->written += (int64_t)n;
    return QC_OK;
}

int qc_stw_write_file(const char *path, const char *head, size_t head_len, qc_stw_body_fn body,
                      void *ctx, qc_err *err)
{
    size_t pl = strlen(path) + 16;
    char *tmp = malloc(pl);
    if (!tmp)
        return qc_err_set(err, QC_EXIT_RUNTIME, "out of memory");
    /* same directory, so the rename is atomic; a unique name, so a stale or
     * concurrent temp file never collides */
    snprintf(tmp, pl, "%s.tmp.XXXXXX", path);
    int fd = mkstemp(tmp);
    if (fd < 0) {
        int rc = qc_err_set(err, QC_EXIT_RUNTIME, "%s: cannot create: %s", path, strerror(errno));
        free(tmp);
        return rc;
    }
    /* mkstemp makes it 0600; a written checkpoint should read like any other file */
    (void)fchmod(fd, 0644);
    qc_stw_sink s = {fdopen(fd, "wb"), tmp, 0};
    int rc = s.f ? QC_OK : qc_err_set(err, QC_EXIT_RUNTIME, "%s: %s", tmp, strerror(errno));
    if (!rc)
        rc = qc_stw_put_bytes(&s, head, head_len, err);
    if (!rc && body)
        rc = body(&s, ctx, err);
    if (!rc && (fflush(s.f) != 0 || fsync(fileno(s.f)) != 0))
        rc = qc_err_set(err, QC_EXIT_RUNTIME, "%s: flush failed: %s", tmp, strerror(errno));
    bool closed = s.f ? fclose(s.f) == 0 : close(fd) == 0;
    if (!closed && !rc)
        rc = qc_err_set(err, QC_EXIT_RUNTIME, "%s: close failed: %s", tmp, strerror(errno));
    if (!rc && rename(tmp, path) != 0)
        rc = qc_err_set(err, QC_EXIT_RUNTIME, "%s: rename failed: %s", path, strerror(errno));
    if (rc)
        unlink(tmp);
    free(tmp);
    return rc;
}
