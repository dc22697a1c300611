/* harness.h — the tiny test harness every tests/test_*.c uses.
 *
 * Each check prints one line: "ok <name>", "FAIL <name>: <why>" or
 * "skip <name>: <reason>". tests/run.sh counts those lines across all binaries
 * and scripts. A binary that crashes or exits non-zero counts as a failure. */
#ifndef QC_HARNESS_H
#define QC_HARNESS_H

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int th_failed_count;

static inline void th_result(int ok, const char *name, const char *fmt, ...)
{
    if (ok) {
        printf("ok %s\n", name);
    } else {
        th_failed_count++;
        printf("FAIL %s: ", name);
        va_list ap;
        va_start(ap, fmt);
        vprintf(fmt, ap);
        va_end(ap);
        printf("\n");
    }
    fflush(stdout);
}

static inline void th_skip(const char *name, const char *reason)
{
    printf("skip %s: %s\n", name, reason);
    fflush(stdout);
}

/* CHECK(name, cond, fmt, ...): one named check. */
#define CHECK(name, cond, ...) th_result((cond) ? 1 : 0, (name), __VA_ARGS__)

/* Root of ../shared/fixtures (overridable with QCHAT_FIXTURES). */
static inline const char *th_fixtures(void)
{
    const char *e = getenv("QCHAT_FIXTURES");
    return e && *e ? e : "../shared/fixtures";
}

/* Writes the path of a fixture model directory into buf. */
static inline const char *th_model_dir(char *buf, size_t n, const char *model)
{
    snprintf(buf, n, "%s/models/%s", th_fixtures(), model);
    return buf;
}

/* ||a - ref|| / ||ref|| over n values (||a - ref|| when ref is all zero);
 * infinity when anything is NaN. */
static inline double th_rel_l2(const float *a, const float *ref, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - ref[i];
        num += d * d;
        den += (double)ref[i] * ref[i];
    }
    if (num != num)
        return INFINITY;
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* Every name of a test binary reported skipped with one reason (e.g. a
 * binary built without CUDA). */
static inline void th_skip_all(const char *const *names, int n, const char *reason)
{
    for (int i = 0; i < n; i++) th_skip(names[i], reason);
}

/* The xorshift64 step every test's deterministic random stream uses (each
 * test keeps its own state and seed, so its data stay what they were). */
static inline uint64_t th_xorshift(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static inline int th_exit(void) { return th_failed_count ? 1 : 0; }

#endif
