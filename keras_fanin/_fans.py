"""Fan rules: the one place that says how many units feed into and out of a weight.

Both the initializers and `GradientHealth`'s advice use these functions.
"""

from keras_fanin._validation import check_one_of

MODES = ("fan_in", "fan_out", "fan_avg")


def _check_axes(name, axes, rank):
    if axes is None:
        return None
    if isinstance(axes, int) or not all(
        isinstance(a, int) and not isinstance(a, bool) for a in axes
    ):
        raise TypeError(
            f"Argument `{name}` must be None or a sequence of integers. "
            f"Received: {name}={axes!r}"
        )
    if rank is not None and any(not -rank <= a < rank for a in axes):
        raise ValueError(
            f"Argument `{name}` holds an axis outside a kernel of rank {rank}. "
            f"Received: {name}={axes!r}"
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
        shape: The kernel shape, a sequence of non-negative ints.
        input_axes: Optional sequence of axes holding the input units.
        output_axes: Optional sequence of axes holding the output units.

    Returns:
        A tuple of ints `(fan_in, fan_out)`.
    """
    shape = tuple(int(d) for d in shape)
    if input_axes is not None and output_axes is not None:
        _check_axes("input_axes", input_axes, len(shape))
        _check_axes("output_axes", output_axes, len(shape))
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
