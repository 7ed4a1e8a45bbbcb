"""The fixed bins of GradientHealth's histograms, and how they are written.

One bin per octave of magnitude (about 3.3 a decade) from `2**-34` (5.8e-11)
to `2**14` (16384), mirrored for negative values; beside them, one bin each
side for the magnitudes below (down to float32's smallest normal, `2**-126`)
and above (up to float32's largest), and one bin for zero (of either sign) and
the subnormals, which a device may flush to zero. NaN and inf are in no bin:
they are counted apart. Every finite float32 lies in exactly one bin, as
`numpy.histogram(x, EDGES)` bins it (left-closed bins, the last one closed).

Why octaves: the bin of a float32 is then its top nine bits, sign and
exponent, read with one shift (`_stats.histogram_codes`): exact by
construction, where a rounded `log10` misplaces values near the edges, and
one cheap pass over the tensor, where a search over 100 edges takes seven.
The positive edges are the powers of two; the negative ones sit one float32
below them in magnitude (`-2**k * (1 - 2**-24)`), so that numpy's left-closed
bins hold, on both sides, exactly the floats of one exponent (with the powers
themselves as edges, `-2**k` would start the bin of the octave below its
own). Why that range: an update of learning rate 1e-4 times a gradient of
1e-6 is 1e-10; a weight or gradient beyond 1e4 has exploded. Values outside
it are still counted, in the under- and overflow bins.

No backend is imported here: the device counts raw codes, the top nine bits
of each value (`CODES` of them), and `CODE_TO_BIN` maps them onto the bins.
"""

from typing import Any

import numpy as np

LOWEST, HIGHEST = -34, 14  # the octave edges 2**LOWEST .. 2**HIGHEST
_SMALLEST_NORMAL = 2.0**-126
_LARGEST = float(np.finfo(np.float32).max)
_OCTAVES = 2.0 ** np.arange(LOWEST, HIGHEST + 1)
# 1 - 2**-24: the float32 below 1, so `-2**k * _BELOW` is the float32 next
# to `-2**k` towards zero.
_BELOW = 1.0 - 2.0**-24

# Float64 values that float32 holds exactly, so the device's float32 bits and
# numpy's float64 comparisons agree on every value.
EDGES = np.concatenate([
    [-_LARGEST], -_OCTAVES[::-1] * _BELOW,
    [-(_SMALLEST_NORMAL - 2.0**-149), _SMALLEST_NORMAL],  # 2**-149: a subnormal's step
    _OCTAVES, [_LARGEST],
])  # fmt: skip
BINS = len(EDGES) - 1  # 101; the counts' last slot (index BINS) is non-finite
ZERO_BIN = BINS // 2

# A value's code: its float32 bits shifted right by `SHIFT`, masked to nine
# bits, `sign * 256 + exponent`. Exponent 255 is NaN and inf, of either sign.
SHIFT = 23
CODES = 512
SIGN_CODE = 256


def _code_to_bin():
    codes = np.arange(CODES, dtype=np.int64)
    exponent = codes % SIGN_CODE
    # A value of each code (the smallest mantissa above the exponent's power):
    # every float of one code has one bin, as the edges sit between codes.
    bits = ((exponent << SHIFT) | 1).astype(np.uint32).view(np.float32)
    with np.errstate(invalid="ignore"):  # the NaN codes' values
        values = np.where(codes >= SIGN_CODE, -bits.astype(np.float64), bits)
        out = np.searchsorted(EDGES[1:-1], values, side="right")
    out[exponent == 255] = BINS  # NaN and inf
    return out.astype(np.int32)


CODE_TO_BIN = _code_to_bin()


def spans(counts: Any) -> np.ndarray | None:
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


def bins_of(spans: Any) -> np.ndarray:
    """The bin index of each row of `spans` (as `spans` writes them, the
    overflow bins' drawn edges included): the bin its midpoint lies in."""
    spans = np.asarray(spans, np.float64).reshape(-1, 3)
    middle = (spans[:, 0] + spans[:, 1]) / 2
    return np.searchsorted(EDGES[1:-1], middle, side="right")
