/* st_write.h — the one safetensors writer: builds the header (u64 length +
 * JSON, padded with spaces to a multiple of 8 so the data region is 8-byte
 * aligned, as the format recommends) and writes a whole file atomically.
 * Used by quantize, synth (header only: it streams shards itself) and score. */
#ifndef QC_ST_WRITE_H
#define QC_ST_WRITE_H

#include <stdint.h>
#include <stdio.h>

#include "util.h"

/* One tensor of the header, in file order; its data follows the previous
 * tensor's with no gap. */
typedef struct qc_stw_entry {
    const char *name;
    const char *dtype; /* safetensors dtype string: "BF16", "F32", "U8", ... */
    int ndim;
    const int64_t *shape;
    int64_t nbytes;
} qc_stw_entry;

/* Builds the 8-byte little-endian length followed by the padded JSON header
 * for n entries with contiguous data_offsets. meta is NULL or a
 * NULL-terminated key, value, key, value, ... list for "__metadata__".
 * Returns a heap buffer (caller frees) and its total size in *len, or NULL
 * and err set on out of memory. */
char *qc_stw_build_header(const qc_stw_entry *e, size_t n, const char *const *meta, size_t *len,
                          qc_err *err);

/* Where a body callback writes; counts the bytes it has taken. */
typedef struct qc_stw_sink {
    FILE *f;
    const char *path; /* the temp file, for error messages */
    int64_t written;
} qc_stw_sink;

/* Appends n bytes; on failure sets err naming the file. */
int qc_stw_put_bytes(qc_stw_sink *s, const void *p, size_t n, qc_err *err);

/* Writes the tensor data after the header; returns QC_OK or a QC_EXIT_* code. */
typedef int (*qc_stw_body_fn)(qc_stw_sink *s, void *ctx, qc_err *err);

/* Writes head (from qc_stw_build_header) then body() into a temp file next to
 * path, fsyncs it and renames it over path, so readers never see a partial
 * file. On any failure the temp file is removed and path is untouched.
 * body may be NULL: then head is the whole file (quantize's text side files). */
int qc_stw_write_file(const char *path, const char *head, size_t head_len, qc_stw_body_fn body,
                      void *ctx, qc_err *err);

#endif
