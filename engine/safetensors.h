/* safetensors.h — read-only access to the tensors of a checkpoint as its
 * producer wrote them: one model.safetensors, or every shard named in
 * model.safetensors.index.json (extra shards such as
 * model_extra_tensors.safetensors included).
 *
 * Each file is memory-mapped read-only; qc_tensor.data points into the map.
 * Opening reads only the headers, never the data regions, so a 50 GB
 * checkpoint opens in milliseconds. Validation is strict: every fault found
 * returns QC_EXIT_CHECKPOINT with a one-line message naming file and fault:
 *   header length beyond the file, header not a JSON object, unknown dtype,
 *   bad shape, shape x dtype != byte range, offsets out of bounds, overlapping
 *   or out of order, gaps/trailing bytes, the same tensor twice (also across
 *   shards), a shard named in the index but missing, the index naming a
 *   tensor that its shard does not hold.
 *
 * The set (qc_st) owns the mappings, the tensor table and the names. */
#ifndef QC_SAFETENSORS_H
#define QC_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "format.h"
#include "util.h"

typedef struct qc_st qc_st;

/* Opens the tensors of checkpoint directory dir: the index when
 * model.safetensors.index.json exists, else model.safetensors. */
int qc_st_open_dir(const char *dir, qc_st **out, qc_err *err);

/* Opens one safetensors file (e.g. golden.safetensors). */
int qc_st_open_file(const char *path, qc_st **out, qc_err *err);

/* Parses a whole safetensors file image held in memory (the fuzz target and
 * tests use this). buf must outlive the set; label names it in errors. */
int qc_st_open_buffer(const void *buf, size_t len, const char *label, qc_st **out, qc_err *err);

void qc_st_free(qc_st *st);

/* Lookup by full tensor name; NULL when absent. O(log n). */
const qc_tensor *qc_st_find(const qc_st *st, const char *name);

/* Iteration over all tensors, sorted by name: i in [0, qc_st_count). */
size_t qc_st_count(const qc_st *st);
const qc_tensor *qc_st_at(const qc_st *st, size_t i);

/* Files of the set: path (as opened) and total size in bytes. */
int qc_st_nfiles(const qc_st *st);
const char *qc_st_file_path(const qc_st *st, int shard);
uint64_t qc_st_file_size(const qc_st *st, int shard);

/* A string entry of the file's "__metadata__" object (first shard that has
 * it), or NULL. */
const char *qc_st_metadata(const qc_st *st, const char *key);

#endif
