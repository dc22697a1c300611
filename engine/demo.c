/* demo.c — see demo.h. */
#include "demo.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

int qc_demo_find(char paths[][QC_DEMO_PATH_MAX], int max)
{
    char exe[4096] = "";
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = 0;
        char *sl = strrchr(exe, '/');
        if (sl)
            *sl = 0;
    }
    char bases[3][QC_DEMO_PATH_MAX];
    snprintf(bases[0], sizeof bases[0], "%s/demo", exe);
    snprintf(bases[1], sizeof bases[1], "%s/../share/qchat/demo", exe);
    snprintf(bases[2], sizeof bases[2], "demo");
    static const char *const fmts[] = {"bf16", "fp8", "int4", "nvfp4"};
    for (int b = 0; b < 3; b++) {
        if (!exe[0] && b < 2)
            continue;
        int k = 0;
        for (int f = 0; f < 4 && k < max; f++) {
            snprintf(paths[k], QC_DEMO_PATH_MAX, "%.4000s/%s", bases[b], fmts[f]);
            char cfg[4300];
            snprintf(cfg, sizeof cfg, "%s/config.json", paths[k]);
            if (access(cfg, R_OK) == 0)
                k++;
        }
        if (k)
            return k;
    }
    return 0;
}
