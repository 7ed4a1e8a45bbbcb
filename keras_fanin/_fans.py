"""Fan rules: the one place that says how many units feed into and out of a weight.

Both the initializers and `GradientHealth`'s advice use these functions.
"""

import numbers
from collections.abc import Iterable

from keras_fanin._validation import check_one_of, describe

MODES = ("fan_in", "fan_out", "fan_avg")


def _is_int(value):
    # Python and numpy ints; bools (Python's and numpy's) are not dimensions.
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _as_int_tuple(name, value, what):
    """`value` as a tuple of ints, or a TypeError naming `name`."""
    if (
        isinstance(value, (str, bytes))
        or not isinstance(value, Iterable)
        or getattr(value, "ndim", 1) != 1
    ):
        raise TypeError(
            f"Argument `{name}` must be {what}. Received: {name}={describe(value)} "
            f"of type {type(value).__name__}"
        )
    items = tuple(value)
    for i, item in enumerate(items):
        if not _is_int(item):
            raise TypeError(
                f"Argument `{name}` must be {what}; item {i} is {describe(item)} "
                f"of type {type(item).__name__}. Received: {name}={describe(value)}"
            )
    return tuple(int(item) for item in items)


def check_shape(shape):
    """Returns `shape` as a tuple of Python ints, or raises naming `shape`."""
    what = "a sequence of non-negative integers"
    dims = _as_int_tuple("shape", shape, what)
    if any(d < 0 for d in dims):
        raise ValueError(
            f"Argument `shape` must be {what}. Received: shape={describe(shape)}"
        )
    return dims


def _check_axes(name, axes, rank):
    """`axes` as a list of ints; with `rank`, also checks them against the kernel."""
    if axes is None:
        return None
    axes = _as_int_tuple(name, axes, "None or a sequence of integers")
    if rank is not None and any(not -rank <= a < rank for a in axes):
        raise ValueError(
            f"Argument `{name}` holds an axis outside a kernel of rank {rank}. "
            f"Received: {name}={list(axes)!r}"
        )
    distinct = {a % rank for a in axes} if rank is not None else set(axes)
    if len(distinct) < len(axes):
        raise ValueError(
            f"Argument `{name}` holds the same axis twice. "
            f"Received: {name}={list(axes)!r}"
        )
    return list(axes)


def check_axes(input_axes, output_axes):
    """Validates the `input_axes` / `output_axes` pair of an initializer."""
    return _check_axes("input_axes", input_axes, None), _check_axes(
        "output_axes", output_axes, None
    )


def compute_fans(shape, input_axes=None, output_axes=None):
    """Returns `(fan_in, fan_out)` of a kernel in Keras's layout.

    A kernel is `(..., in, out)`: for rank >= 3 the leading axes are the
    receptive field, which multiplies both fans (convolutions of any rank,
    transposed, depthwise and separable ones). A vector counts as `in == out`.
    When both `input_axes` and `output_axes` are given (as `EinsumDense` and
    `MultiHeadAttention` do), the fans are the products of those axes instead.

    Args:
        shape: The kernel shape, a sequence of non-negative ints (Python or
            numpy ints; not bools or floats).
        input_axes: Optional sequence of axes holding the input units.
        output_axes: Optional sequence of axes holding the output units.

    Returns:
        A tuple of ints `(fan_in, fan_out)`.

    Raises:
        TypeError: If `shape` is not a sequence of ints, or an axes argument is
            neither None nor a sequence of ints.
        ValueError: If a dimension is negative, or the axes pair (when both are
            given) names an axis outside the kernel or the same axis twice.
    """
    shape = check_shape(shape)
    both = input_axes is not None and output_axes is not None
    rank = len(shape) if both else None  # one axes argument alone is ignored
    input_axes = _check_axes("input_axes", input_axes, rank)
    output_axes = _check_axes("output_axes", output_axes, rank)
    if both:
        fan_in = fan_out = 1
        for axis in input_axes:
            fan_in *= shape[axis]
        for axis in output_axes:
            fan_out *= shape[axis]
        return fan_in, fan_out
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    receptive_field = 1
    for dim in shape[:-2]:
        receptive_field *= dim
    return shape[-2] * receptive_field, shape[-1] * receptive_field


def fan_for_mode(fan_in, fan_out, mode):
    """Returns the fan that `mode` divides the variance by (at least 1).

    Clamping at 1 keeps empty kernels (a zero-sized axis) from dividing by zero,
    as Keras's `VarianceScaling` does.
    """
    check_one_of("mode", mode, MODES)
    if mode == "fan_in":
        fan = fan_in
    elif mode == "fan_out":
        fan = fan_out
    else:
        fan = (fan_in + fan_out) / 2.0
    return max(1.0, float(fan))
