"""The thresholds and verdicts on GradientHealth's signals: one home for them.

The callback's warnings, `keras_fanin.check`, `keras-fanin report` and the
TensorBoard dashboard all judge with these functions, so a layer called dead
in one is dead in every other. Each takes a float or a NumPy array of them
(a run's history) and answers elementwise; NaN is never over a threshold.
"""

from typing import Any

import numpy as np
import numpy.typing as npt

# Documented warning thresholds (see GradientHealth's docstring).
DEAD_WARN_FRACTION = 0.5
SATURATED_WARN_FRACTION = 0.5
DEPTH_RATIO_WARN = 1e3

RELUS = frozenset({"relu", "relu6"})
# A leaky unit whose input is negative for every example still passes
# `negative_slope` times the gradient, so it can come back: it is counted with
# the same rule as a dead ReLU, for comparison, but never called dead.
LEAKY_RELUS = frozenset({"leaky_relu"})


def can_die(activation: str | None) -> bool:
    """Whether a layer with `activation` is judged for dead units.

    None (logs without the layer table, where a leaky ReLU cannot be told from
    a ReLU) is judged as a ReLU.
    """
    return activation is None or activation in RELUS


def dead(fraction: npt.ArrayLike) -> Any:
    """Whether a dead-ReLU fraction is over `DEAD_WARN_FRACTION`."""
    with np.errstate(invalid="ignore"):
        return np.greater(fraction, DEAD_WARN_FRACTION)


def saturated(fraction: npt.ArrayLike) -> Any:
    """Whether a saturated sigmoid or tanh fraction is over its threshold."""
    with np.errstate(invalid="ignore"):
        return np.greater(fraction, SATURATED_WARN_FRACTION)


def depth_ratio(first: npt.ArrayLike, last: npt.ArrayLike) -> Any:
    """The first over the last kernel layer's gradient norm, NaN where it says
    nothing: a non-finite norm, or a last layer with no gradient at all (an
    output weighted 0, a dead head)."""
    a, b = np.asarray(first, np.float64), np.asarray(last, np.float64)
    ok = np.isfinite(a) & np.isfinite(b) & (b > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(ok, a / np.where(ok, b, 1.0), np.nan)


def depth_verdict(ratio: float) -> str | None:
    """ "vanishing", "exploding" or None for one `depth_ratio`."""
    if vanishing(ratio):
        return "vanishing"
    if exploding(ratio):
        return "exploding"
    return None


def vanishing(ratio: npt.ArrayLike) -> Any:
    """Whether a `depth_ratio` says the gradient vanishes towards the input."""
    with np.errstate(invalid="ignore"):
        return np.less(ratio, 1 / DEPTH_RATIO_WARN)


def exploding(ratio: npt.ArrayLike) -> Any:
    """Whether a `depth_ratio` says the gradient grows towards the input."""
    with np.errstate(invalid="ignore"):
        return np.greater(ratio, DEPTH_RATIO_WARN)
