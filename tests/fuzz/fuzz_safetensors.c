/* fuzz_safetensors.c — libFuzzer target for the safetensors header parser
 * (`make fuzz`, then build/fuzz/fuzz_safetensors tests/corpus/safetensors).
 * Every input must either open (and then every tensor's bytes must lie inside
 * the input) or be rejected with a one-line QC_EXIT_CHECKPOINT message. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    qc_st *st = NULL;
    qc_err err = {0};
    int rc = qc_st_open_buffer(data, size, "fuzz.safetensors", &st, &err);
    if (rc) {
        if (rc != QC_EXIT_CHECKPOINT || !err.msg[0] || strchr(err.msg, '\n'))
            abort();
        return 0;
    }
    for (size_t i = 0; i < qc_st_count(st); i++) {
        const qc_tensor *t = qc_st_at(st, i);
        const uint8_t *p = t->data;
        if (p < data || p + t->nbytes > data + size || qc_st_find(st, t->name) != t)
            abort();
        if (t->nbytes) /* ASan catches a read outside the buffer */
            (void)((volatile const uint8_t *)p)[t->nbytes - 1];
    }
    qc_st_free(st);
    return 0;
}
