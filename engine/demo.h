/* demo.h — where the shipped demo model lives. qchat with no checkpoint (the
 * TUI, `qchat run -p`) uses it. */
#ifndef QC_DEMO_H
#define QC_DEMO_H

#define QC_DEMO_PATH_MAX 4200

/* Fills paths with the demo checkpoint directories found (bf16, fp8, int4,
 * nvfp4, in that order) and returns how many. Looks in demo/ next to the
 * executable, then ../share/qchat/demo relative to it, then ./demo. */
int qc_demo_find(char paths[][QC_DEMO_PATH_MAX], int max);

#endif
