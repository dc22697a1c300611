/* meters.h — the numbers behind the Latency, Tokens and VRAM panes: latency
 * percentiles, the per-token sparkline, the repetition/loop score and the
 * segmented memory bar. Pure functions, unit-tested. */
#ifndef TUI_METERS_H
#define TUI_METERS_H

#include <stddef.h>
#include <stdint.h>

/* p-th percentile (0..100) of n values by linear interpolation between the
 * order statistics (numpy's default); 0 when n is 0. Does not modify v. */
double meter_percentile(const double *v, int n, double p);

/* Sparkline of the last `width` values (or fewer) scaled between their min
 * and max into the eight block glyphs U+2581..U+2588. Writes UTF-8 into out
 * (3 bytes a glyph, NUL-terminated) and returns the number of glyphs. */
int meter_sparkline(const double *v, int n, int width, char *out, size_t outlen);

/* Repetition score of the last `window` ids: the fraction of positions whose
 * n-gram (ending there) already occurred earlier in the window. 0 = no
 * repetition, near 1 = the model is looping. */
double meter_loop_score(const int32_t *ids, int n, int ngram, int window);

/* Splits `width` cells among n values in proportion (largest remainder); a
 * non-zero value gets at least one cell while cells remain. Sum == width when
 * any value is non-zero, else 0. */
void meter_split(const uint64_t *vals, int n, int width, int *cells);

/* "1,204" style thousands separators. */
void meter_fmt_count(long long v, char *out, size_t outlen);
/* Bytes as "19.1 GB" / "1.25 GB", or MB / kB below 1 GB
 * ("512 MB", "12 kB"). */
void meter_fmt_bytes(uint64_t bytes, char *out, size_t outlen);

#endif
