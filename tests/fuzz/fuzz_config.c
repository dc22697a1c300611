/* fuzz_config.c — libFuzzer target for the config reader: the input is
 * parsed as config.json and as generation_config.json. Accepted configs must
 * satisfy the invariants the engine sizes its buffers from. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static qc_config cfg; /* large: keep it off the stack */
    qc_err err = {0};
    int rc = qc_config_parse((const char *)data, size, "config.json", &cfg, &err);
    if (rc) {
        if (rc != QC_EXIT_CHECKPOINT || !err.msg[0] || strchr(err.msg, '\n'))
            abort();
    } else {
        if (cfg.num_hidden_layers < 1 || cfg.num_hidden_layers > QC_MAX_LAYERS ||
            cfg.n_full_layers + cfg.n_linear_layers != cfg.num_hidden_layers ||
            cfg.hidden_size < 1 || cfg.num_attention_heads % cfg.num_key_value_heads ||
            cfg.rotary_dim < 2 || cfg.rotary_dim > cfg.head_dim ||
            (cfg.n_linear_layers && cfg.linear_num_value_heads % cfg.linear_num_key_heads))
            abort();
    }
    rc = qc_config_parse_generation((const char *)data, size, "generation_config.json", &cfg, &err);
    if (rc && (rc != QC_EXIT_CHECKPOINT || strchr(err.msg, '\n')))
        abort();
    if (!rc && (cfg.gen.n_eos < 0 || cfg.gen.n_eos > QC_MAX_EOS))
        abort();
    return 0;
}
