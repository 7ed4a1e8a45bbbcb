"""The activation -> gain table: the one place that maps a nonlinearity to its gain.

`calculate_gain` serves users, `resolve_gain` the initializers' `gain`
argument, and `GradientHealth` and `check` use `recommended_initializer` and
`calculate_gain` from here for their advice.
"""

import functools
import inspect
import math
import numbers
from collections.abc import Callable
from typing import Any, Literal, NamedTuple, TypeAlias

import keras
import numpy as np

from keras_fanin._numpy import to_numpy
from keras_fanin._validation import (
    check_non_negative_finite,
    check_positive_float32,
    describe,
)

_DEFAULT_LEAKY_SLOPE = 0.01  # PyTorch's default, so that the values match theirs.
METHODS = ("pytorch", "second_moment")

# An activation: its name, a function, or a Keras activation layer (a
# callable too).
Nonlinearity: TypeAlias = str | Callable[..., Any]
# An initializer's `gain`: a number, or the activation whose gain it is.
Gain: TypeAlias = float | Nonlinearity
Floats: TypeAlias = np.ndarray[Any, np.dtype[np.float64]]


def _leaky_relu_gain(slope: float) -> float:
    try:
        return math.sqrt(2.0 / (1.0 + slope**2))  # PyTorch's formula, to the bit
    except OverflowError:  # slope > ~1.3e154, where 1 + slope**2 == slope**2
        return math.sqrt(2.0) / slope


# PyTorch's `calculate_gain` table: name -> (gain as a function of the
# parameter, initializer to advise). These names keep PyTorch's values.
_TABLE: dict[str, tuple[Callable[[Any], float], tuple[str, tuple[Any, ...]]]] = {
    "linear": (lambda _: 1.0, ("Xavier", ())),
    "conv1d": (lambda _: 1.0, ("Xavier", ())),
    "conv2d": (lambda _: 1.0, ("Xavier", ())),
    "conv3d": (lambda _: 1.0, ("Xavier", ())),
    "conv_transpose1d": (lambda _: 1.0, ("Xavier", ())),
    "conv_transpose2d": (lambda _: 1.0, ("Xavier", ())),
    "conv_transpose3d": (lambda _: 1.0, ("Xavier", ())),
    "sigmoid": (lambda _: 1.0, ("Xavier", ())),
    "tanh": (lambda _: 5.0 / 3.0, ("LeCun", (("gain", "tanh"),))),
    "relu": (lambda _: math.sqrt(2.0), ("He", ())),
    # The slope is the activation's own (`Advice.kwargs` fills it in).
    "leaky_relu": (_leaky_relu_gain, ("He", (("negative_slope", None),))),
    # Self-normalising nets want LeCun's variance exactly; 3/4 is the gain
    # PyTorch recommends for SELU and is kept here so the tables agree.
    "selu": (lambda _: 0.75, ("LeCun", ())),
}
# ReLU6 is a ReLU wherever a well-initialised unit sits (|x| << 6).
_ALIASES = {"identity": "linear", "leakyrelu": "leaky_relu", "relu6": "relu"}
# Not elementwise: they end a network, where no next layer's scale depends on
# them, and Glorot's gain of 1 is the convention (as for "linear").
_OUTPUT = ("softmax", "log_softmax", "sparsemax")
# Names for activations that Keras only reaches with an argument.
_NAMED_VARIANTS = {
    "gelu_approximate": functools.partial(keras.activations.gelu, approximate=True),
    "gelu_tanh": functools.partial(keras.activations.gelu, approximate=True),
}


@functools.cache
def _quadrature() -> tuple[Floats, Floats]:
    """Nodes and weights of `E[g(z)]` for `z ~ N(0, 1)`, as numpy float64 arrays.

    Composite 6-point Gauss-Legendre on panels 1/20 wide over [-12, 12]
    (2,880 nodes), not one Gauss-Hermite rule: Gauss-Hermite's error is that
    of the function's smoothness, and at 101 nodes it is 1.2% off for
    `hard_shrink` (a jump at 0.5) and 0.6% for `hard_tanh` (kinks at 1). Here
    every kink and jump of Keras's piecewise activations (0, 0.5, 1, 3, 6) is a
    panel edge, smooth ones are exact to ~1e-12, and the Gaussian weight
    beyond 12 is below 1e-32.
    """
    x, w = np.polynomial.legendre.leggauss(6)
    edges = np.linspace(-12.0, 12.0, 481)
    half = np.diff(edges)[0] / 2
    centres = (edges[:-1] + edges[1:]) / 2
    nodes = (centres[:, None] + half * x[None, :]).ravel()
    weights = (half * w[None, :] * np.ones_like(centres)[:, None]).ravel()
    return nodes, weights * np.exp(-(nodes**2) / 2) / math.sqrt(2 * math.pi)


def _evaluate(
    function: Callable[..., Any], nodes: Floats, label: str, arg: str, received: Any
) -> Floats:
    """`function(nodes)` as float64 numpy, or a ValueError naming `arg`."""
    try:
        values = function(keras.ops.convert_to_tensor(nodes.astype("float32")))
        values = to_numpy(values)
    except Exception:  # a NumPy-only function, or one that refuses a tensor
        try:
            values = np.asarray(function(nodes), dtype="float64")
        except Exception as error:
            raise ValueError(
                f"Argument `{arg}` must be an activation that takes one tensor and "
                f"returns one of the same shape; calling {label} on a "
                f"float32 vector raised {type(error).__name__}: {error}. "
                f"Received: {arg}={describe(received)}"
            ) from error
    values = np.asarray(values, dtype="float64")
    if values.shape != nodes.shape:
        raise ValueError(
            f"Argument `{arg}` must act elementwise: {label} turned a vector of "
            f"shape {nodes.shape} into shape {values.shape}. "
            f"Received: {arg}={describe(received)}"
        )
    return values


def _second_moment_gain(
    function: Callable[..., Any], label: str, arg: str, received: Any
) -> float:
    """`1 / sqrt(E[f(z)^2])` for `z ~ N(0, 1)`, by quadrature."""
    nodes, weights = _quadrature()
    values = _evaluate(function, nodes, label, arg, received)
    if not np.all(np.isfinite(values)):
        raise ValueError(
            f"Argument `{arg}` returned non-finite values on standard-normal "
            f"inputs ({label} at {nodes[~np.isfinite(values)][0]:.3g}), so no gain "
            f"keeps its scale. Received: {arg}={describe(received)}"
        )
    # A function that mixes its inputs (softmax, a normalisation) changes its
    # outputs when its input vector is cut in half; an elementwise one does not.
    head = nodes[: nodes.size // 2]
    if not np.allclose(
        _evaluate(function, head, label, arg, received), values[: head.size]
    ):
        raise ValueError(
            f"Argument `{arg}` must act elementwise, as an activation does; "
            f"{label} mixes its inputs. Received: {arg}={describe(received)}"
        )
    moment = float(np.sum(weights * values**2))
    if not 0 < moment < math.inf:
        raise ValueError(
            f"Argument `{arg}` has no gain: {label} has second moment {moment:.3g} "
            "on standard-normal inputs, so the gain that keeps it, "
            "1 / sqrt(moment), is not a positive finite number. "
            f"Received: {arg}={describe(function)}"
        )
    return 1.0 / math.sqrt(moment)


@functools.cache
def _named_second_moment_gain(name: str, arg: str) -> float:
    return _second_moment_gain(_function_of(name), repr(name), arg, name)


def _function_of(name: str) -> Callable[..., Any]:
    if name in _NAMED_VARIANTS:
        return _NAMED_VARIANTS[name]
    if name in _TABLE:
        name = "linear" if name.startswith("conv") else name
        if name == "leaky_relu":
            return functools.partial(
                keras.activations.leaky_relu, negative_slope=_DEFAULT_LEAKY_SLOPE
            )
    function: Callable[..., Any] = keras.activations.get(name)
    return function


def _known_names() -> list[str]:
    keras_names = [
        n
        for n in dir(keras.activations)
        if not n.startswith("_") and n not in ("get", "serialize", "deserialize")
    ]
    return sorted({*_TABLE, *_ALIASES, *_OUTPUT, *_NAMED_VARIANTS, *keras_names})


def _lookup(nonlinearity: Any, name: str, arg: str) -> str:
    """A string's canonical name, or a ValueError listing the known ones."""
    key = name.lower()
    key = _ALIASES.get(key, key)
    if key in _TABLE or key in _OUTPUT or key in _NAMED_VARIANTS:
        return key
    try:
        keras.activations.get(key)
    except (ValueError, TypeError):
        raise ValueError(
            f"Unknown nonlinearity {name!r}: argument `{arg}` must be one of "
            f"{_known_names()}, or an activation function. "
            f"Received: {arg}={describe(nonlinearity)}"
        ) from None
    return key


def _function_default_slope(function: Callable[..., Any]) -> float | None:
    """The default slope a leaky-ReLU function declares, or None.

    Keras's and TensorFlow's default to 0.2, PyTorch's and JAX's to 0.01: the
    gain is that of the slope the function applies when called as an activation.
    """
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return None
    for name in ("negative_slope", "alpha"):
        default = getattr(parameters.get(name), "default", None)
        if isinstance(default, numbers.Real) and not isinstance(default, bool):
            return float(default)
    return None


class _Spec:
    """What a nonlinearity resolved to: a name, its slope, or a bare function."""

    def __init__(
        self,
        label: str,
        name: str | None = None,
        slope: float | None = None,
        function: Callable[..., Any] | None = None,
        layer: bool = False,
    ) -> None:
        self.label = label  # for messages and configs
        self.name = name  # a canonical name, or None for a bare function
        self.slope = slope  # a leaky ReLU's own slope, or None
        self.function = function  # evaluated when `name` is None
        self.layer = layer  # whether it came from a layer (which fixes its slope)


def _keras_name(function: Callable[..., Any]) -> str | None:
    """The name Keras knows `function` by, or None."""
    name = getattr(function, "__name__", None)
    if not isinstance(name, str):
        return None
    try:
        return name if keras.activations.get(name) is function else None
    except (ValueError, TypeError):
        return None


def _label(function: Any) -> str:
    """A short readable name: `gelu(approximate=True)` for a partial."""
    if isinstance(function, functools.partial):
        arguments = [repr(a) for a in function.args] + [
            f"{k}={v!r}" for k, v in function.keywords.items()
        ]
        return f"{_label(function.func)}({', '.join(arguments)})"
    name = getattr(function, "__name__", None)
    return name if isinstance(name, str) else describe(function)


def _resolve(nonlinearity: Any, arg: str = "nonlinearity") -> _Spec:
    if isinstance(nonlinearity, keras.layers.LeakyReLU):
        slope = nonlinearity.negative_slope
        return _Spec(f"LeakyReLU({slope})", "leaky_relu", slope, layer=True)
    if isinstance(nonlinearity, keras.layers.ReLU):
        slope = nonlinearity.negative_slope  # max_value keeps it a ReLU
        if slope:
            return _Spec(f"ReLU({slope})", "leaky_relu", slope, layer=True)
        return _Spec("relu", "relu", layer=True)
    if isinstance(nonlinearity, keras.layers.ELU):
        alpha = float(nonlinearity.alpha)
        function = functools.partial(keras.activations.elu, alpha=alpha)
        return _Spec(f"ELU({alpha})", function=function, layer=True)
    if isinstance(nonlinearity, keras.layers.Softmax):
        return _Spec("softmax", "softmax", layer=True)
    if isinstance(nonlinearity, keras.layers.Activation):
        spec = _resolve(nonlinearity.activation, arg)
        spec.layer = True
        return spec
    if isinstance(nonlinearity, keras.layers.Layer):
        raise ValueError(
            f"Argument `{arg}` must be a name, an activation function or a "
            "Keras `ReLU`, `LeakyReLU`, `ELU`, `Softmax` or `Activation` layer; "
            "for a layer with an `activation` argument, pass `layer.activation`. "
            f"Received: {arg}={describe(nonlinearity)}"
        )
    if isinstance(nonlinearity, str):
        key = _lookup(nonlinearity, nonlinearity, arg)
        return _Spec(key, key)
    if callable(nonlinearity):
        own = getattr(nonlinearity, "__name__", None)
        name = _ALIASES.get(own.lower(), own.lower()) if isinstance(own, str) else None
        if name in _TABLE or name in _OUTPUT:
            slope = (
                _function_default_slope(nonlinearity) if name == "leaky_relu" else None
            )
            return _Spec(name, name, slope)
        known = _keras_name(nonlinearity)
        if known is not None:
            return _Spec(known, known)
        return _Spec(_label(nonlinearity), function=nonlinearity)
    raise TypeError(
        f"Argument `{arg}` must be a string, an activation function or a "
        f"Keras activation layer. Received: {arg}={describe(nonlinearity)} "
        f"of type {type(nonlinearity).__name__}"
    )


def _gain(spec: _Spec, param: float | None, method: str, arg: str) -> float:
    if param is not None and spec.layer:
        raise ValueError(
            f"Argument `param` must be None when `{arg}` is a Keras layer, "
            f"whose own slope is used. Received: param={describe(param)}"
        )
    if spec.name == "leaky_relu":
        if param is not None:
            slope = check_non_negative_finite("param", param)
        elif spec.slope is not None:
            slope = check_non_negative_finite("negative_slope", spec.slope)
        else:
            slope = _DEFAULT_LEAKY_SLOPE
        # Both conventions agree here: E[leaky_relu(z)^2] = (1 + slope^2) / 2.
        return _leaky_relu_gain(slope)
    if param is not None:
        raise ValueError(
            f"Argument `param` is only used by 'leaky_relu' and must be None for "
            f"{spec.label!r}. Received: param={describe(param)}"
        )
    if spec.name in _OUTPUT:
        return 1.0
    if spec.name is None:
        assert spec.function is not None  # a spec without a name holds a function
        return _second_moment_gain(spec.function, spec.label, arg, spec.function)
    if method == "pytorch" and spec.name in _TABLE:
        return _TABLE[spec.name][0](None)
    return _named_second_moment_gain(spec.name, arg)


def calculate_gain(
    nonlinearity: Nonlinearity,
    param: float | None = None,
    method: Literal["pytorch", "second_moment"] = "pytorch",
) -> float:
    """Returns the recommended gain for a nonlinearity.

    The gain multiplies a LeCun (`1 / fan_in`) standard deviation so that the
    scale of the signal survives a layer followed by `nonlinearity`. Two
    conventions:

    - PyTorch's names keep PyTorch's values (`method="pytorch"`, the default),
      so that a model ported from `torch.nn.init` draws the same law:

      | nonlinearity | gain |
      |---|---|
      | linear (identity), conv*, sigmoid | `1` |
      | tanh | `5 / 3` |
      | relu, relu6 | `sqrt(2)` |
      | leaky_relu | `sqrt(2 / (1 + negative_slope**2))` |
      | selu | `3 / 4` |

    - Every other activation (and every one with `method="second_moment"`)
      gets the gain that keeps the second moment of the signal through a
      layer, for standard-normal pre-activations `z`:
      `gain = 1 / sqrt(E[f(z)^2])`, computed by Gauss quadrature and cached.
      A layer with `std = gain / sqrt(fan_in)` then gives the next layer
      pre-activations of second moment 1. It is `sqrt(2)` for ReLU (as
      PyTorch) and 1.00 for SELU; gelu 1.534, silu/swish 1.677, mish 1.487,
      elu 1.245, softplus 1.042, softsign 2.338, hard_sigmoid 1.898.

    Where the two differ, and why:

    - tanh: PyTorch 5/3 = 1.667, second moment 1.593. PyTorch's is an
      empirical value that pushes tanh a little into its nonlinear range.
    - sigmoid: PyTorch 1, second moment 1.846. PyTorch treats sigmoid as
      linear; its slope is 1/4, so a gain of 1 shrinks the signal at every
      layer (see `examples/saturated_sigmoid.py`).
    - selu: PyTorch 3/4, second moment 1.000. PyTorch chose 3/4 for gradient
      flow; it shrinks the signal about 20x over 50 layers. `LeCun()` (gain
      1) is SELU's self-normalising init.

    A gain keeps the signal over many layers only where the convention's
    fixed point is stable: the map `q -> gain^2 E[f(sqrt(q) z)^2]` has slope
    at most 1 at `q = 1` for ReLU, leaky ReLU, ELU, softplus, softsign, tanh
    and sigmoid. For GELU, SiLU and Mish its slope is about 1.14, 1.17 and
    1.08: no scalar gain holds the scale over tens of layers (a small
    deviation grows), which is why such networks rely on normalisation.

    `softmax`, `log_softmax` and `sparsemax` end a network, where no next
    layer's scale depends on them: their gain is 1, Glorot's convention.

    Careful with the leaky ReLU's slope. By name, `"leaky_relu"` with
    `param=None` uses PyTorch's default slope `0.01`, not Keras's: Keras's
    `keras.activations.leaky_relu` defaults to `0.2` (and its `LeakyReLU` layer
    to `0.3`). Given a Keras object, the gain follows the slope that object
    applies: a `LeakyReLU` or `ReLU(negative_slope=...)` layer's own slope, and a
    leaky-ReLU function's own default (`0.2` for `keras.activations.leaky_relu`)
    unless `param` says otherwise.

    Examples:

    >>> keras_fanin.calculate_gain("tanh")
    1.6666666666666667
    >>> round(keras_fanin.calculate_gain("gelu"), 4)
    1.5335
    >>> keras_fanin.calculate_gain(keras.layers.LeakyReLU(negative_slope=0.2))
    1.3867504905630728
    >>> init = keras_fanin.LeCun(gain="gelu")  # gain = calculate_gain("gelu")
    >>> layer = keras.layers.Dense(64, activation="gelu", kernel_initializer=init)

    Args:
        nonlinearity: The name of a Keras activation (case-insensitive;
            `"gelu"` is the exact GELU, `"gelu_tanh"` its tanh approximation),
            any elementwise activation function (a Keras activation, a
            `functools.partial` of one, a lambda), or a Keras `ReLU`,
            `LeakyReLU`, `ELU`, `Softmax` or `Activation` layer.
        param: The negative slope of a leaky ReLU, a finite number `>= 0`
            (default: `0.01` for the name `"leaky_relu"`, a function's own
            default for a function). Must be left `None` for a layer, which
            carries its own slope, and for every other nonlinearity.
        method: `"pytorch"` (PyTorch's values for PyTorch's names, the second
            moment for the rest) or `"second_moment"` (the second moment for
            every activation).

    Returns:
        The gain, a Python float.

    Raises:
        TypeError: If `nonlinearity` is of another type, or `param` is not a
            number.
        ValueError: If `nonlinearity` is an unknown name, not elementwise,
            returns non-finite values on standard-normal inputs or has no
            finite positive gain; or `param` is negative, not finite, or given
            where it is not used.

    Reference:
        - [He et al., 2015](https://arxiv.org/abs/1502.01852)
        - [Glorot & Bengio, 2010](http://proceedings.mlr.press/v9/glorot10a.html)
        - [Klambauer et al., 2017](https://arxiv.org/abs/1706.02515)
        - [Poole et al., 2016](https://arxiv.org/abs/1606.05340) (the
          second-moment map and its fixed point)
    """
    if method not in METHODS:
        raise ValueError(
            "Argument `method` must be one of {'pytorch', 'second_moment'}. "
            f"Received: method={describe(method)}"
        )
    return _gain(_resolve(nonlinearity), param, method, "nonlinearity")


def is_activation(value: object) -> bool:
    """Whether an initializer's `gain` is an activation rather than a number."""
    return isinstance(value, (str, keras.layers.Layer)) or (
        callable(value) and not isinstance(value, numbers.Number)
    )


def names_activation(value: object) -> bool:
    """Whether `calculate_gain` knows what `value` is (without computing a gain)."""
    try:
        _resolve(value)
    except (TypeError, ValueError):
        return False
    return True


def resolve_gain(
    gain: object, gain_source: str | None = None, name: str = "gain"
) -> tuple[float, str | None]:
    """Resolves an initializer's `gain` argument: a number or an activation.

    Returns `(gain, source)`: a number is checked (positive, held by float32)
    and returned with the `gain_source` a config carries (the name of the
    activation it came from, for reading); an activation (anything
    `calculate_gain` takes) gives `calculate_gain(activation)` and the
    activation's name. Errors name the argument `name`.
    """
    if gain_source is not None:
        if is_activation(gain):
            raise ValueError(
                f"Argument `gain_source` names the activation a numeric `{name}` "
                f"came from; it must be None when `{name}` is an activation. "
                f"Received: {name}={describe(gain)}, "
                f"gain_source={describe(gain_source)}"
            )
        if not isinstance(gain_source, str):
            raise TypeError(
                "Argument `gain_source` must be None or a string. "
                f"Received: gain_source={describe(gain_source)} of type "
                f"{type(gain_source).__name__}"
            )
    if isinstance(gain, bool) or not (
        isinstance(gain, numbers.Real) or is_activation(gain)
    ):
        raise TypeError(
            f"Argument `{name}` must be a positive number or an activation (a "
            "name, a function or a Keras activation layer). "
            f"Received: {name}={describe(gain)} of type {type(gain).__name__}"
        )
    if isinstance(gain, numbers.Real):
        return check_positive_float32(name, gain), gain_source
    spec = _resolve(gain, name)
    value = _gain(spec, None, "pytorch", name)
    return check_positive_float32(name, value), spec.label


class Advice(NamedTuple):
    """An initializer to advise: a `keras_fanin` class name and its arguments.

    `str(advice)` is how to write it; `advice.make(**axes)` makes it.
    """

    name: str  # "He", "LeCun" or "Xavier"
    kwargs: tuple[tuple[str, Any], ...] = ()  # ((argument, value), ...); None: unknown

    def __str__(self) -> str:
        arguments = ", ".join(
            f"{k}={_UNKNOWN if v is None else repr(v)}" for k, v in self.kwargs
        )
        return f"keras_fanin.{self.name}({arguments})"

    def make(self, **kwargs: Any) -> Any:
        """The initializer itself, with `kwargs` (axes) added; None while an
        argument is unknown."""
        if any(v is None for _, v in self.kwargs):
            return None
        import keras_fanin

        return getattr(keras_fanin, self.name)(**dict(self.kwargs), **kwargs)


_UNKNOWN = "<the layer's slope>"


def recommended(nonlinearity: object) -> Advice | None:
    """The `Advice` for a nonlinearity, or None if unknown."""
    try:
        spec = _resolve(nonlinearity)
    except (TypeError, ValueError):
        return None
    if spec.name in _TABLE:
        name, kwargs = _TABLE[spec.name][1]
        if spec.name == "leaky_relu":
            kwargs = (("negative_slope", spec.slope),)
        return Advice(name, kwargs)
    if spec.name in _OUTPUT:
        return Advice("Xavier")
    if spec.name is not None:
        return Advice("LeCun", (("gain", spec.name),))
    return None


def recommended_initializer(nonlinearity: object) -> str | None:
    """Returns the initializer to advise for a nonlinearity, or None if unknown."""
    advice = recommended(nonlinearity)
    return None if advice is None else str(advice)
