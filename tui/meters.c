/* meters.c — see meters.h. */
#include "meters.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

double meter_percentile(const double *v, int n, double p)
{
    if (n <= 0)
        return 0;
    double *s = malloc((size_t)n * sizeof *s);
    if (!s)
        return 0;
    memcpy(s, v, (size_t)n * sizeof *s);
    qsort(s, (size_t)n, sizeof *s, cmp_double);
    double pos = (p / 100.0) * (n - 1);
    if (pos < 0)
        pos = 0;
    if (pos > n - 1)
        pos = n - 1;
    int lo = (int)floor(pos);
    int hi = lo + 1 < n ? lo + 1 : lo;
    double r = s[lo] + (s[hi] - s[lo]) * (pos - lo);
    free(s);
    return r;
}

int meter_sparkline(const double *v, int n, int width, char *out, size_t outlen)
{
    if (outlen == 0)
        return 0;
    out[0] = 0;
    if (width <= 0 || n <= 0)
        return 0;
    int start = n > width ? n - width : 0;
    double lo = v[start], hi = v[start];
    for (int i = start; i < n; i++) {
        if (v[i] < lo)
            lo = v[i];
        if (v[i] > hi)
            hi = v[i];
    }
    int g = 0;
    size_t o = 0;
    for (int i = start; i < n && o + 4 <= outlen; i++, g++) {
        int level = hi > lo ? (int)((v[i] - lo) / (hi - lo) * 7.0 + 0.5) : 0;
        if (level < 0)
            level = 0;
        if (level > 7)
            level = 7;
        /* U+2581 + level: E2 96 81..88 */
        out[o++] = (char)0xE2;
        out[o++] = (char)0x96;
        out[o++] = (char)(0x81 + level);
    }
    out[o] = 0;
    return g;
}

double meter_loop_score(const int32_t *ids, int n, int ngram, int window)
{
    if (ngram < 1 || window < 1 || n < ngram + 1)
        return 0;
    int start = n > window ? n - window : 0;
    int m = n - start;
    int positions = 0, repeats = 0;
    for (int i = start + ngram - 1; i < n; i++) {
        positions++;
        /* Does the n-gram ending at i occur ending at some j < i in the window? */
        for (int j = start + ngram - 1; j < i; j++) {
            int k = 0;
            while (k < ngram && ids[i - k] == ids[j - k])
                k++;
            if (k == ngram) {
                repeats++;
                break;
            }
        }
    }
    (void)m;
    return positions ? (double)repeats / positions : 0;
}

void meter_split(const uint64_t *vals, int n, int width, int *cells)
{
    long double total = 0;
    for (int i = 0; i < n; i++) {
        total += vals[i];
        cells[i] = 0;
    }
    if (total <= 0 || width <= 0)
        return;
    long double rem[64];
    int used = 0;
    for (int i = 0; i < n && i < 64; i++) {
        long double exact = vals[i] / total * width;
        cells[i] = (int)exact;
        rem[i] = exact - cells[i];
        used += cells[i];
    }
    /* Give every non-zero value one cell first, taking from the largest. */
    for (int i = 0; i < n && i < 64; i++) {
        if (vals[i] && cells[i] == 0) {
            if (used < width) {
                cells[i] = 1;
                used++;
                rem[i] = 0;
            } else {
                int big = -1;
                for (int j = 0; j < n; j++)
                    if (cells[j] > 1 && (big < 0 || cells[j] > cells[big]))
                        big = j;
                if (big >= 0) {
                    cells[big]--;
                    cells[i] = 1;
                    rem[i] = 0;
                }
            }
        }
    }
    while (used < width) {
        int best = -1;
        for (int i = 0; i < n && i < 64; i++)
            if (vals[i] && (best < 0 || rem[i] > rem[best]))
                best = i;
        if (best < 0)
            break;
        cells[best]++;
        rem[best] = -1;
        used++;
    }
}

void meter_fmt_count(long long v, char *out, size_t outlen)
{
    char digits[32];
    int neg = v < 0;
    snprintf(digits, sizeof digits, "%lld", neg ? -v : v);
    int nd = (int)strlen(digits);
    char buf[48];
    int o = 0;
    if (neg)
        buf[o++] = '-';
    for (int i = 0; i < nd; i++) {
        buf[o++] = digits[i];
        if ((nd - i - 1) % 3 == 0 && i != nd - 1)
            buf[o++] = ',';
    }
    buf[o] = 0;
    snprintf(out, outlen, "%s", buf);
}

void meter_fmt_bytes(uint64_t bytes, char *out, size_t outlen)
{
    double gb = (double)bytes / 1e9;
    if (gb >= 10)
        snprintf(out, outlen, "%.1f GB", gb);
    else if (gb >= 1)
        snprintf(out, outlen, "%.2f GB", gb);
    else if (bytes >= 1000000)
        snprintf(out, outlen, "%.0f MB", (double)bytes / 1e6);
    else if (bytes >= 1000)
        snprintf(out, outlen, "%.0f kB", (double)bytes / 1e3);
    else
        snprintf(out, outlen, "%llu B", (unsigned long long)bytes);
}
