/* The counting loop of a calibration histogram (calibrate.py: _count) in C: it is most of a
 * calibration's statistics time, and numpy needs five passes over the data for it. A plain C library
 * (no Python API) built at install (setup.py) and loaded with ctypes, which releases the GIL, so the
 * calibration's threads count tensors in parallel. Without it, calibrate.py counts with numpy.
 *
 * Adds to counts[0..bins) the histogram of x[0..n) over [lo, lo + bins / scale]: the bin of a value is
 * (int64)((x - lo) * scale) computed in float32, as the numpy path computes it, clamped to the bins
 * (a value at the top edge goes to the last bin). Preconditions (calibrate.py: _count): x finite and
 * within the range, scale finite, so (x - lo) * scale is in [0, bins] and converts without overflow.
 * scratch: 4 x bins zeroed counters; four interleaved count arrays keep a run of equal values (a
 * ReLU's zeros) from serialising on one counter. */
#include <stdint.h>

static inline int64_t bin_of(float v, float lo, float scale, int64_t last) {
    int64_t b = (int64_t)((v - lo) * scale);  /* in [0, bins]: defined (see the preconditions) */
    return b > last ? last : (b < 0 ? 0 : b);  /* integer clamps: 5x faster on a ReLU's zeros than float ones */
}

void qaic_count_bins(const float *x, int64_t n, float lo, float scale, int64_t bins, int64_t *scratch,
                     int64_t *counts) {
    int64_t *c0 = scratch, *c1 = scratch + bins, *c2 = scratch + 2 * bins, *c3 = scratch + 3 * bins;
    const int64_t last = bins - 1;
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        c0[bin_of(x[i], lo, scale, last)]++;
        c1[bin_of(x[i + 1], lo, scale, last)]++;
        c2[bin_of(x[i + 2], lo, scale, last)]++;
        c3[bin_of(x[i + 3], lo, scale, last)]++;
    }
    for (; i < n; i++)
        c0[bin_of(x[i], lo, scale, last)]++;
    for (int64_t b = 0; b < bins; b++)
        counts[b] += c0[b] + c1[b] + c2[b] + c3[b];
}
