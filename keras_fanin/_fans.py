"""Fan rules: the one place that says how many units feed into and out of a weight.

The initializers, `check` and `GradientHealth`'s advice use these functions:
`compute_fans` for a kernel in Keras's layout, `layer_kernels` for the fan rule
each weight of a layer really has (depthwise, separable, recurrent, embedding,
einsum and attention kernels included).
"""

import dataclasses
import numbers
from collections.abc import Iterable
from typing import Any, Literal, SupportsIndex, TypeAlias

import keras

from keras_fanin._validation import check_one_of, describe

MODES = ("fan_in", "fan_out", "fan_avg")
Mode: TypeAlias = Literal["fan_in", "fan_out", "fan_avg"]

# A kernel shape or a list of axes: Python or NumPy ints (a TensorShape, a
# tuple, `array.shape`).
ShapeLike: TypeAlias = Iterable[SupportsIndex]
Axes: TypeAlias = tuple[int, ...]


class _DimensionError(ValueError, TypeError):
    """A dimension that is not an integer. A `ValueError`, as Keras raises for
    a shape it cannot read, and a `TypeError`, as keras_fanin raised before."""


def _is_int(value: object) -> bool:
    # Python and numpy ints; bools (Python's and numpy's) are not dimensions.
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _as_int_tuple(
    name: str,
    value: object,
    what: str,
    item_error: type[Exception] = TypeError,
) -> Axes:
    """`value` as a tuple of ints, or a TypeError (`item_error` for a bad
    item) naming `name`."""
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
            raise item_error(
                f"Argument `{name}` must be {what}; item {i} is {describe(item)} "
                f"of type {type(item).__name__}. Received: {name}={describe(value)}"
            )
    return tuple(int(item) for item in items)


def check_shape(shape: object) -> Axes:
    """Returns `shape` as a tuple of Python ints, or raises naming `shape`."""
    what = "a sequence of non-negative integers"
    dims = _as_int_tuple("shape", shape, what, _DimensionError)
    if any(d < 0 for d in dims):
        raise ValueError(
            f"Argument `shape` must be {what}. Received: shape={describe(shape)}"
        )
    return dims


def _check_axes(name: str, axes: object, rank: int | None) -> list[int] | None:
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


def check_axes(
    input_axes: object, output_axes: object
) -> tuple[list[int] | None, list[int] | None]:
    """Validates the `input_axes` / `output_axes` pair of an initializer."""
    return _check_axes("input_axes", input_axes, None), _check_axes(
        "output_axes", output_axes, None
    )


def compute_fans(
    shape: ShapeLike,
    input_axes: ShapeLike | None = None,
    output_axes: ShapeLike | None = None,
) -> tuple[int, int]:
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
        TypeError: If `shape` is not a sequence, or an axes argument is
            neither None nor a sequence of ints.
        ValueError: If a dimension is not an integer (`2.7`, `True`, `None`;
            this error is a `TypeError` too) or is negative, or the axes pair
            (when both are given) names an axis outside the kernel or the same
            axis twice.
    """
    shape = check_shape(shape)
    both = input_axes is not None and output_axes is not None
    rank = len(shape) if both else None  # one axes argument alone is ignored
    inputs = _check_axes("input_axes", input_axes, rank)
    outputs = _check_axes("output_axes", output_axes, rank)
    if inputs is not None and outputs is not None:
        fan_in = fan_out = 1
        for axis in inputs:
            fan_in *= shape[axis]
        for axis in outputs:
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


def fan_for_mode(fan_in: float, fan_out: float, mode: str) -> float:
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


# -- the fan rule of each weight of a layer ----------------------------------


@dataclasses.dataclass(frozen=True)
class Kernel:
    """A weight of a layer that a fan rule applies to, with that rule's fans.

    `input_axes` / `output_axes` hold the units feeding into / out of each
    weight (None: Keras's layout, `compute_fans(shape)`). `stage` orders a
    layer's kernels along its signal (a separable convolution's depthwise
    kernel is 0, its pointwise kernel 1; kernels of one stage act side by
    side, as a bidirectional layer's two directions), None where the layer's
    wiring is unknown. A `side` kernel shapes the signal without carrying it:
    attention queries and keys, recurrent kernels. The layer's activation
    follows an `activated` kernel, so its gain applies; the others feed a
    linear map (gain 1). A `gated` kernel feeds an RNN's sigmoid and tanh
    gates. `axes_given`: the layer hands the axes to a `VarianceScaling`
    initializer that has none (as `EinsumDense` does).
    """

    name: str  # within the layer: "kernel", "depthwise_kernel", "query/kernel"
    variable: Any
    argument: str | None  # the layer's constructor argument for its initializer
    initializer: Any
    input_axes: tuple[int, ...] | None
    output_axes: tuple[int, ...] | None
    fan_in: int
    fan_out: int
    stage: int | None = 0
    side: bool = False
    activated: bool = True
    gated: bool = False
    axes_given: bool = False
    # The object whose `argument` attribute holds the initializer (the layer,
    # or an RNN's cell): where `fix` writes a new one.
    owner: Any = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def shape(self) -> Axes:
        return tuple(int(d) for d in self.variable.shape)


def depthwise_axes(rank: int) -> tuple[Axes, Axes]:
    """`(input_axes, output_axes)` of a depthwise kernel `(*field, channels,
    multiplier)`: each output sums one channel over the receptive field, and
    each input feeds the field times the multiplier outputs. (Keras's layout
    rule would also multiply the fan-in by the channels, which are not summed.)
    """
    field = tuple(range(rank - 2))
    return field, (*field, rank - 1)


def einsum_axes(equation: str) -> tuple[Axes, Axes]:
    """`(input_axes, output_axes)` of an `EinsumDense` kernel, as Keras reads
    them: a kernel axis the output has is an output axis, one only the input
    has an input axis."""
    inputs, rest = equation.split(",")
    kernel, output = rest.split("->")
    kernel = kernel.replace(".", "")
    input_axes = tuple(
        i for i, d in enumerate(kernel) if d not in output and d in inputs
    )
    return input_axes, tuple(i for i, d in enumerate(kernel) if d in output)


# An embedding's output is one row per token: one input unit feeds it.
EMBEDDING_AXES = ((), (1,))
# The sub-layers of `MultiHeadAttention` and `GroupQueryAttention`, by name:
# (stage, side). Values then the output projection carry the signal; queries
# and keys only set the attention weights.
_ATTENTION = {
    "query": (0, True),
    "key": (0, True),
    "value": (0, False),
    "attention_output": (1, False),
}


def _kernel(
    name: str,
    variable: Any,
    layer: Any,
    argument: str,
    axes: tuple[Axes, Axes] | None = None,
    **flags: Any,
) -> Kernel:
    input_axes, output_axes = axes if axes is not None else (None, None)
    fan_in, fan_out = compute_fans(tuple(variable.shape), input_axes, output_axes)
    return Kernel(
        name,
        variable,
        argument,
        getattr(layer, argument, None),
        input_axes,
        output_axes,
        fan_in,
        fan_out,
        **flags,
        owner=layer,
    )


def sublayers(layer: Any) -> list[Any]:
    """The layers `layer` holds as attributes (one level down), in order."""
    if isinstance(layer, keras.Model):
        return [s for s in layer.layers if not isinstance(s, keras.layers.InputLayer)]
    found: list[Any] = []
    seen = {id(layer)}

    def add(value: object) -> None:
        if isinstance(value, keras.layers.Layer):
            if id(value) not in seen:
                seen.add(id(value))
                found.append(value)
        elif isinstance(value, list | tuple):
            for item in value:
                if isinstance(item, keras.layers.Layer):
                    add(item)
        elif isinstance(value, dict):
            for item in value.values():
                if isinstance(item, keras.layers.Layer):
                    add(item)

    for value in vars(layer).values():
        add(value)
    return found


def layer_kernels(layer: Any, _above: tuple[int, ...] = ()) -> list[Kernel]:
    """The kernels of `layer` and of the layers inside it, each with its fan rule.

    Dense, convolution and `EinsumDense` kernels; depthwise and separable
    convolutions (a depthwise kernel's fan-in is its receptive field only);
    recurrent layers' kernels and recurrent kernels; embeddings (fan-in 1);
    attention projections; the kernels of wrappers (`TimeDistributed`,
    `Bidirectional`) and of any layer or model built from others. Empty for a
    layer without such a weight (an activation, a normalization's scale and
    offset) and for one not built yet.
    """
    if isinstance(layer, keras.layers.Bidirectional):
        return [
            dataclasses.replace(k, name=f"{direction}/{k.name}")
            for direction in ("forward", "backward")
            for k in layer_kernels(getattr(layer, f"{direction}_layer"))
        ]
    if isinstance(layer, keras.layers.RNN):
        cells = getattr(layer.cell, "cells", [layer.cell])
        kernels: list[Kernel] = []
        for stage, cell in enumerate(cells):
            prefix = f"cell_{stage}/" if len(cells) > 1 else ""
            for name, argument, side in (
                ("kernel", "kernel_initializer", False),
                ("recurrent_kernel", "recurrent_initializer", True),
            ):
                variable = getattr(cell, name, None)
                if variable is not None:
                    kernels.append(
                        _kernel(
                            prefix + name,
                            variable,
                            cell,
                            argument,
                            stage=stage,
                            side=side,
                            activated=False,
                            gated=True,
                        )
                    )
        return kernels
    if isinstance(layer, keras.layers.Wrapper):  # TimeDistributed and the like
        return layer_kernels(layer.layer)
    separable = (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)
    if isinstance(layer, separable):
        depthwise = getattr(layer, "depthwise_kernel", None)
        pointwise = getattr(layer, "pointwise_kernel", None)
        if depthwise is None or pointwise is None:
            return []
        axes = depthwise_axes(len(depthwise.shape))
        return [
            _kernel(
                "depthwise_kernel",
                depthwise,
                layer,
                "depthwise_initializer",
                axes,
                activated=False,
            ),
            _kernel(
                "pointwise_kernel", pointwise, layer, "pointwise_initializer", stage=1
            ),
        ]
    if isinstance(layer, (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)):
        kernel = getattr(layer, "kernel", None)
        if kernel is None:  # tf.keras's name
            kernel = getattr(layer, "depthwise_kernel", None)
        if kernel is None:
            return []
        axes = depthwise_axes(len(kernel.shape))
        return [_kernel("kernel", kernel, layer, "depthwise_initializer", axes)]
    if isinstance(layer, keras.layers.EinsumDense):
        kernel = getattr(layer, "kernel", None)
        if kernel is None:
            return []
        axes = einsum_axes(layer.equation)
        return [
            _kernel(
                "kernel", kernel, layer, "kernel_initializer", axes, axes_given=True
            )
        ]
    if isinstance(layer, keras.layers.Embedding):
        table = getattr(layer, "embeddings", None)
        if table is None:
            return []
        return [
            _kernel(
                "embeddings", table, layer, "embeddings_initializer", EMBEDDING_AXES
            )
        ]
    own = getattr(layer, "kernel", None)
    own = [] if own is None else [_kernel("kernel", own, layer, "kernel_initializer")]
    # A sub-layer that holds a layer above it would otherwise recurse forever.
    above = (*_above, id(layer))
    inner = [sub for sub in sublayers(layer) if id(sub) not in above]
    attention = {s.name for s in inner} >= set(_ATTENTION)
    kernels = []
    for sub in inner:
        for k in layer_kernels(sub, above):
            if attention and sub.name in _ATTENTION:
                stage, side = _ATTENTION[sub.name]
                k = dataclasses.replace(k, stage=stage, side=side, activated=stage == 1)
            else:
                k = dataclasses.replace(k, stage=None)
            kernels.append(dataclasses.replace(k, name=f"{sub.name}/{k.name}"))
    # A layer's own kernel alone (with an activation layer as a sub-layer, say)
    # keeps its place on the signal; mixed with others, the wiring is unknown.
    if own and kernels:
        own = [dataclasses.replace(own[0], stage=None)]
    return own + kernels
