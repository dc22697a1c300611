/* format.c — names and sizes of dtypes and weight formats, tensor shapes as text (format.h).
 * The spellings are contracts: safetensors dtype strings, and the canonical
 * format names of checkpoint-formats.md that `qchat inspect --json` prints. */
#include <stdio.h>
#include <string.h>

#include "format.h"

static const struct {
    const char *name;
    size_t size;
} dtype_table[QC_DT_COUNT] = {
    [QC_DT_INVALID] = {"INVALID", 0}, [QC_DT_BF16] = {"BF16", 2},
    [QC_DT_F16] = {"F16", 2},         [QC_DT_F32] = {"F32", 4},
    [QC_DT_F64] = {"F64", 8},         [QC_DT_F8_E4M3] = {"F8_E4M3", 1},
    [QC_DT_F8_E5M2] = {"F8_E5M2", 1}, [QC_DT_F8_E8M0] = {"F8_E8M0", 1},
    [QC_DT_BOOL] = {"BOOL", 1},       [QC_DT_U8] = {"U8", 1},
    [QC_DT_I8] = {"I8", 1},           [QC_DT_U16] = {"U16", 2},
    [QC_DT_I16] = {"I16", 2},         [QC_DT_U32] = {"U32", 4},
    [QC_DT_I32] = {"I32", 4},         [QC_DT_U64] = {"U64", 8},
    [QC_DT_I64] = {"I64", 8},
};

const char *qc_dtype_name(qc_dtype dt)
{
    return (unsigned)dt < QC_DT_COUNT ? dtype_table[dt].name : "INVALID";
}

qc_dtype qc_dtype_from_name(const char *s)
{
    if (!s)
        return QC_DT_INVALID;
    for (int i = 1; i < QC_DT_COUNT; i++)
        if (!strcmp(s, dtype_table[i].name))
            return (qc_dtype)i;
    return QC_DT_INVALID;
}

size_t qc_dtype_size(qc_dtype dt)
{
    return (unsigned)dt < QC_DT_COUNT ? dtype_table[dt].size : 0;
}

void qc_tensor_shape_str(const qc_tensor *t, char *buf, size_t n)
{
    size_t o = (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < t->ndim && o < n; i++)
        o += (size_t)snprintf(buf + o, n - o, "%s%lld", i ? ", " : "", (long long)t->shape[i]);
    if (o < n)
        snprintf(buf + o, n - o, "]");
}

static const struct {
    const char *name, *family;
} format_table[QC_FMT_COUNT] = {
    [QC_FMT_NONE] = {"none", "none"},
    [QC_FMT_BF16] = {"bf16", "BF16"},
    [QC_FMT_F16] = {"f16", "BF16"},
    [QC_FMT_F32] = {"f32", "BF16"},
    [QC_FMT_FP8_BLOCK] = {"fp8-block", "FP8"},
    [QC_FMT_FP8_TENSOR] = {"fp8-tensor", "FP8"},
    [QC_FMT_FP8_CHANNEL] = {"fp8-channel", "FP8"},
    [QC_FMT_GPTQ] = {"gptq", "INT4"},
    [QC_FMT_AWQ] = {"awq", "INT4"},
    [QC_FMT_CT_INT] = {"ct-int", "INT4"},
    [QC_FMT_NVFP4_CT] = {"nvfp4-ct", "NVFP4"},
    [QC_FMT_NVFP4_MODELOPT] = {"nvfp4-modelopt", "NVFP4"},
    [QC_FMT_MXFP4_CT] = {"mxfp4-ct", "MXFP4"},
};

const char *qc_format_name(qc_format f)
{
    return (unsigned)f < QC_FMT_COUNT ? format_table[f].name : "none";
}

const char *qc_format_family(qc_format f)
{
    return (unsigned)f < QC_FMT_COUNT ? format_table[f].family : "none";
}
