"""The per-layer statistics, in `keras.ops`, for use inside a compiled step.

Every function returns float32 scalars and runs on any backend, so that the
same reductions serve the TensorFlow, JAX and torch hooks and the probe.
"""

import keras
from keras import ops

from keras_fanin.health._units import activation_signal, unit_axis
from keras_fanin_logs import _histogram
from keras_fanin_logs.judge import LEAKY_RELUS, RELUS


def _f32(x):
    dtype = getattr(x, "dtype", None)
    if dtype is not None and keras.backend.standardize_dtype(dtype) == "float32":
        return x  # a cast op saved: on torch each one costs Python time
    return ops.cast(x, "float32")


def sum_of_squares(tensors):
    """The squared L2 norm of a list of tensors, in float32 (0 for none)."""
    total = _f32(0.0)
    for t in tensors:
        total = total + ops.sum(ops.square(_f32(t)))
    return total


def nonfinite_code(tensors):
    """0 if every value is finite; + 1 if any is inf; + 2 if any is NaN.

    NaN and inf are told apart because they mean different things to the user
    (inf: an overflow; NaN: inf - inf, 0 * inf, or a NaN weight), and because
    ReLU maps NaN to 0 on some builds, so a NaN is only seen where it is.
    """
    has_nan, has_inf = False, False
    for t in tensors:
        has_nan = ops.logical_or(has_nan, ops.any(ops.isnan(t)))
        has_inf = ops.logical_or(has_inf, ops.any(ops.isinf(t)))
    return 2.0 * _f32(has_nan) + _f32(has_inf)


def code_of_sum(total):
    """The `nonfinite_code` read off a sum (or mean) already computed.

    NaN anywhere makes the sum NaN; inf makes it inf (both signs: NaN). From a
    sum of squares, finite values beyond about 1.8e19 read as inf too (their
    squares overflow float32): for weights and gradients that large, which
    have exploded in effect. Saves a pass over the tensors.
    """
    return 2.0 * _f32(ops.isnan(total)) + _f32(ops.isinf(total))


def update_values(sums, plan, clipnorm=None, global_clipnorm=None):
    """The vector of `plan.cols` (an `UpdatePlan`) from per-variable sums.

    `sums` is `[len(plan.kept), 4]` float32: per variable with a gradient,
    |g|^2 (unscaled), |w_after|^2, |w_before|^2 and |w_after - w_before|^2.
    One segment sum gathers them per unit, so the op count does not grow with
    the number of layers (on TensorFlow and torch each op has a fixed cost).
    """
    per_unit = ops.segment_sum(
        sums, ops.convert_to_tensor(plan.segments, "int32"), plan.units + 1
    )[: plan.units]
    # Whole-matrix ops, then columns: on torch each keras.ops call costs tens
    # of microseconds of Python, whatever its size.
    roots = ops.sqrt(per_unit)  # |g|, |w_after|, |w_before|, |update|
    codes = code_of_sum(per_unit)
    by_signal = {
        "grad_norm": roots[:, 0],
        "update_ratio": roots[:, 3] / roots[:, 2],
        "weight_norm": roots[:, 1],
        # The weights the step ran with: after the update, a NaN in one layer
        # has already spread to the others through the gradients.
        "weight_bad": codes[:, 2],
        "grad_bad": codes[:, 0],
    }
    parts = [by_signal[s] for s in plan.signals] if plan.units else []
    g2s = sums[:, 0]
    # Over every variable with a gradient, a unit's or not.
    total = ops.sqrt(ops.sum(g2s))
    if plan.kept:
        parts.append(ops.reshape(total, (1,)))
    if plan.clipped:
        if global_clipnorm:
            factor = ops.minimum(1.0, global_clipnorm / total)
        else:
            factor = ops.min(ops.minimum(1.0, clipnorm / ops.sqrt(g2s)))
        parts.append(ops.stack([total, _f32(factor)]))
    if not parts:
        return ops.zeros((0,), "float32")
    return ops.concatenate(parts, 0)


def describe_nonfinite(code):
    """'NaN', 'inf' or 'NaN and inf' for a code of `nonfinite_code`."""
    return {1: "inf", 2: "NaN", 3: "NaN and inf"}.get(int(code), "")


def _output_sums(layer, output, activation, saturation_eps):
    """`(mean, mean square, fraction or None)` of one layer output: the
    reductions that need the whole tensor."""
    out = _f32(ops.stop_gradient(output))
    # One pass for the mean and one for the mean square (the std from their
    # difference, which float32 resolves well enough for a diagnostic), instead
    # of a two-pass std and a third pass for finiteness: activations can be the
    # largest tensors of a step. Finiteness is read off the mean, not the mean
    # square: outputs of 1e26 are finite (if exploding), their squares are not.
    mean, mean_square = ops.mean(out), ops.mean(ops.square(out))
    fraction = None
    rank = len(out.shape)
    if activation in RELUS | LEAKY_RELUS:
        axis = unit_axis(layer, rank)
        others = tuple(a for a in range(rank) if a != axis)
        alive = ops.any(out > 0, axis=others) if others else out > 0
        fraction = 1.0 - ops.mean(_f32(alive))
    elif activation == "sigmoid":
        eps = saturation_eps
        fraction = ops.mean(_f32(ops.logical_or(out < eps, out > 1.0 - eps)))
    elif activation == "tanh":
        fraction = ops.mean(_f32(ops.abs(out) > 1.0 - saturation_eps))
    return mean, mean_square, fraction


def _std_of(mean, mean_square):
    return ops.sqrt(ops.maximum(mean_square - mean * mean, 0.0))


def output_stats(layer, output, activation, saturation_eps):
    """`{signal: scalar}` for one layer output: its std, finiteness, and the
    dead / saturated fraction its activation calls for."""
    mean, mean_square, fraction = _output_sums(
        layer, output, activation, saturation_eps
    )
    stats = {
        "activation_std": _std_of(mean, mean_square),
        "activation_bad": code_of_sum(mean),
    }
    if fraction is not None:
        stats[activation_signal(activation)] = fraction
    return stats


def layer_outputs(outputs, saturation_eps, column):
    """`(columns, vector)` of `output_stats` for many units at once.

    `outputs` is `[(unit, output)]`, `column(unit_index, signal)` a buffer
    column. The whole-tensor reductions run per layer; the rest runs once on
    the stacked results, so a step with many layers adds few ops.
    """
    outputs = list(outputs)
    if not outputs:
        return [], None
    means, squares, fractions, fraction_cols = [], [], [], []
    for unit, out in outputs:
        mean, mean_square, fraction = _output_sums(
            unit.layer, out, unit.activation, saturation_eps
        )
        means.append(mean)
        squares.append(mean_square)
        if fraction is not None:
            fractions.append(_f32(fraction))
            signal = activation_signal(unit.activation)
            fraction_cols.append(column(unit.index, signal))
    mean, mean_square = ops.stack(means), ops.stack(squares)
    parts = [_std_of(mean, mean_square), code_of_sum(mean)]
    if fractions:
        parts.append(ops.stack(fractions))
    cols = [column(unit.index, "activation_std") for unit, _ in outputs]
    cols += [column(unit.index, "activation_bad") for unit, _ in outputs]
    return cols + fraction_cols, ops.concatenate(parts, 0)


def histogram_codes(x, negate=False):
    """Each value's histogram code (`_histogram`), an int32 vector: its top
    nine bits, sign and exponent, read with one shift and no rounded
    logarithm. `negate` codes `-x` instead (exact: the sign bit flips)."""
    bits = ops.view(ops.reshape(_f32(x), (-1,)), "int32")
    # Masked: the shift of a negative int32 keeps its sign on some backends.
    codes = ops.bitwise_and(
        ops.right_shift(bits, _histogram.SHIFT), _histogram.CODES - 1
    )
    return ops.bitwise_xor(codes, _histogram.SIGN_CODE) if negate else codes


def histogram_counts(signals, plan, count):
    """`[plan.units, len(signals), BINS + 1]` int32 counts of each unit's
    values in the `_histogram` bins (the last slot: NaN and inf).

    `signals` holds, per signal, `(tensor, negate)` per kept variable of
    `plan`; `count(codes)` is the backend's bincount of one variable's codes
    into `CODES` slots. One bucketing and one count per variable, then one
    segment sum to the units and one to the bins.
    """
    raw = ops.stack(
        [ops.stack([count(histogram_codes(x, neg)) for x, neg in tensors])
         for tensors in signals],
        axis=1,
    )  # fmt: skip
    per_unit = ops.segment_sum(
        raw, ops.convert_to_tensor(plan.segments, "int32"), plan.units + 1
    )[: plan.units]
    per_code = ops.transpose(
        ops.reshape(per_unit, (plan.units * len(signals), _histogram.CODES))
    )
    bins = ops.segment_sum(
        per_code,
        ops.convert_to_tensor(_histogram.CODE_TO_BIN, "int32"),
        _histogram.BINS + 1,
    )
    return ops.reshape(
        ops.transpose(bins), (plan.units, len(signals), _histogram.BINS + 1)
    )
