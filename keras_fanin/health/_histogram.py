"""The fixed bins of GradientHealth's histograms, and how they are written.

The edges are powers of two, one bin per octave (about 3.3 a decade) for
magnitudes from `2**-34` (5.8e-11) to `2**14` (16384), mirrored for negative
values; beside them, one bin each side for the magnitudes below (down to
float32's smallest normal, `2**-126`) and above (up to float32's largest), and
one bin, `[-2**-126, 2**-126)`, for zero (of either sign) and the subnormals,
which a device may flush to zero. NaN and inf are in no bin: they are counted
apart. Every finite float32 lies in exactly one bin, as `numpy.histogram(x,
EDGES)` bins it (left-closed bins, the last one closed).

Why powers of two: the bin of a float32 is then read off its bits, an
exponent, with a shift (`octave_codes`): exact by construction, where a
rounded `log10` misplaces values near the edges, and one pass over the
tensor, where a search over 100 edges takes seven. Why that range: an update
of learning rate 1e-4 times a gradient of 1e-6 is 1e-10; a weight or gradient
beyond 1e4 has exploded. Values outside it are still counted, in the
under- and overflow bins.

No backend is imported here: the device computes raw octave codes
(`_stats.histogram_counts`), and `CODE_TO_BIN` maps them onto the bins.
"""

import numpy as np

LOWEST, HIGHEST = -34, 14  # the octave edges 2**LOWEST .. 2**HIGHEST
_SMALLEST_NORMAL = 2.0**-126
_LARGEST = float(np.finfo(np.float32).max)
_OCTAVES = 2.0 ** np.arange(LOWEST, HIGHEST + 1)

# Float64 values that float32 holds exactly, so the device's float32 view
# and numpy's float64 comparisons agree on every value.
EDGES = np.concatenate([
    [-_LARGEST], -_OCTAVES[::-1], [-_SMALLEST_NORMAL, _SMALLEST_NORMAL],
    _OCTAVES, [_LARGEST],
])  # fmt: skip
BINS = len(EDGES) - 1  # 101; the counts' last slot (index BINS) is non-finite
ZERO_BIN = BINS // 2

# A float32's bits as an int32 `b`; its sign-magnitude key `s` (`b` for a
# positive value, minus its magnitude bits for a negative one) orders values
# as the floats do, and `s >> 23` (arithmetic) is its octave, -256..255. Its
# code is `(s >> 23) + 256`; NaN and inf get code `NONFINITE_CODE`.
SHIFT = 23
SIGN_MASK = 0x7FFFFFFF
INF_BITS = 0x7F800000
CODE_OFFSET = 256
NONFINITE_CODE = 512
CODES = NONFINITE_CODE + 1


def _code_to_bin():
    octave = np.arange(-CODE_OFFSET, CODE_OFFSET, dtype=np.int64)
    # A key strictly inside each octave: every key of an octave has one bin,
    # since every edge is the first key of an octave (the largest float
    # closes the last bin).
    key = octave * 2**SHIFT + 1
    bits = np.abs(key).astype(np.uint32).view(np.float32)
    with np.errstate(invalid="ignore"):  # the NaN codes
        values = np.where(key < 0, -bits, bits).astype(np.float64)
        out = np.searchsorted(EDGES[1:-1], values, side="right")
    out[~np.isfinite(values)] = BINS  # codes the device never gives a value
    return np.append(out, BINS).astype(np.int32)


CODE_TO_BIN = _code_to_bin()


def spans(counts):
    """`[k, 3]` float64 rows `(left, right, count)` of the non-empty span of
    `counts` (`BINS` bin counts), as TensorBoard's histogram summaries hold
    them; None when every bin is empty.

    Empty bins at either end are left out, so TensorBoard's linear axis spans
    the data; the overflow bins are drawn one octave wide (their counts are
    exact, their values lie anywhere beyond), so no edge is infinite or at
    float32's largest.
    """
    counts = np.asarray(counts)[:BINS]
    filled = np.flatnonzero(counts)
    if not len(filled):
        return None
    first, last = filled[0], filled[-1] + 1
    left, right = EDGES[:-1].copy(), EDGES[1:].copy()
    left[0], right[-1] = -(2.0 ** (HIGHEST + 1)), 2.0 ** (HIGHEST + 1)
    return np.stack(
        [left[first:last], right[first:last], counts[first:last].astype(np.float64)],
        axis=1,
    )
