"""The activation -> gain table: the one place that maps a nonlinearity to its gain.

`calculate_gain` serves users and the initializers' docs; `GradientHealth` uses
`recommended_initializer` from the same table for its advice.
"""

import inspect
import math
import numbers

import keras

from keras_fanin._validation import check_non_negative_finite, describe

_DEFAULT_LEAKY_SLOPE = 0.01  # PyTorch's default, so that the values match theirs.


def _leaky_relu_gain(slope):
    try:
        return math.sqrt(2.0 / (1.0 + slope**2))  # PyTorch's formula, to the bit
    except OverflowError:  # slope > ~1.3e154, where 1 + slope**2 == slope**2
        return math.sqrt(2.0) / slope


# name -> (gain as a function of the parameter, initializer to advise).
_TABLE = {
    "linear": (lambda _: 1.0, "keras_fanin.Xavier()"),
    "conv1d": (lambda _: 1.0, "keras_fanin.Xavier()"),
    "conv2d": (lambda _: 1.0, "keras_fanin.Xavier()"),
    "conv3d": (lambda _: 1.0, "keras_fanin.Xavier()"),
    "conv_transpose1d": (lambda _: 1.0, "keras_fanin.Xavier()"),
    "conv_transpose2d": (lambda _: 1.0, "keras_fanin.Xavier()"),
    "conv_transpose3d": (lambda _: 1.0, "keras_fanin.Xavier()"),
    "sigmoid": (lambda _: 1.0, "keras_fanin.Xavier()"),
    "tanh": (lambda _: 5.0 / 3.0, "keras_fanin.LeCun()"),
    "relu": (lambda _: math.sqrt(2.0), "keras_fanin.He()"),
    "leaky_relu": (
        _leaky_relu_gain,
        "keras_fanin.He(negative_slope=<the layer's slope>)",
    ),
    # Self-normalising nets want LeCun's variance exactly; 3/4 is the gain
    # PyTorch recommends for SELU and is kept here so the tables agree.
    "selu": (lambda _: 0.75, "keras_fanin.LeCun()"),
}
# ReLU6 is a ReLU wherever a well-initialised unit sits (|x| << 6).
_ALIASES = {"identity": "linear", "leakyrelu": "leaky_relu", "relu6": "relu"}


def _lookup(nonlinearity, name):
    key = name.lower()
    key = _ALIASES.get(key, key)
    if key not in _TABLE:
        raise ValueError(
            f"Unknown nonlinearity {name!r}: argument `nonlinearity` must be one "
            f"of {sorted({*_TABLE, *_ALIASES})}. "
            f"Received: nonlinearity={describe(nonlinearity)}"
        )
    return key


def _function_default_slope(function):
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


def _resolve(nonlinearity):
    """Returns `(table name, slope or None, whether it came from a layer)`.

    The slope is the one the object itself fixes: a layer's `negative_slope`, or
    a leaky-ReLU function's default.
    """
    if isinstance(nonlinearity, keras.layers.LeakyReLU):
        return "leaky_relu", nonlinearity.negative_slope, True
    if isinstance(nonlinearity, keras.layers.ReLU):
        slope = nonlinearity.negative_slope  # max_value keeps it a ReLU
        return ("leaky_relu", slope, True) if slope else ("relu", None, True)
    if isinstance(nonlinearity, keras.layers.Activation):
        return _resolve(nonlinearity.activation)[0:2] + (True,)
    if isinstance(nonlinearity, keras.layers.Layer):
        raise ValueError(
            "Argument `nonlinearity` must be a name, an activation function or a "
            "Keras `ReLU`, `LeakyReLU` or `Activation` layer; for a layer with an "
            "`activation` argument, pass `layer.activation`. "
            f"Received: nonlinearity={describe(nonlinearity)}"
        )
    if isinstance(nonlinearity, str):
        return _lookup(nonlinearity, nonlinearity), None, False
    if callable(nonlinearity):
        name = _lookup(
            nonlinearity, getattr(nonlinearity, "__name__", describe(nonlinearity))
        )
        slope = _function_default_slope(nonlinearity) if name == "leaky_relu" else None
        return name, slope, False
    raise TypeError(
        "Argument `nonlinearity` must be a string, an activation function or a "
        "Keras activation layer. "
        f"Received: nonlinearity={describe(nonlinearity)} "
        f"of type {type(nonlinearity).__name__}"
    )


def calculate_gain(nonlinearity, param: float | None = None) -> float:
    """Returns the recommended gain for a nonlinearity.

    The gain is the factor that keeps the variance of activations constant
    through a layer followed by `nonlinearity`: multiply a LeCun (`1 / fan_in`)
    standard deviation by it. For PyTorch's names the values are those of
    PyTorch's `torch.nn.init.calculate_gain`:

    | nonlinearity | gain |
    |---|---|
    | linear (identity), conv*, sigmoid | `1` |
    | tanh | `5 / 3` |
    | relu, relu6 | `sqrt(2)` |
    | leaky_relu | `sqrt(2 / (1 + negative_slope**2))` |
    | selu | `3 / 4` |

    Careful with the leaky ReLU's slope. By name, `"leaky_relu"` with
    `param=None` uses PyTorch's default slope `0.01`, not Keras's: Keras's
    `keras.activations.leaky_relu` defaults to `0.2` (and its `LeakyReLU` layer
    to `0.3`). Given a Keras object, the gain follows the slope that object
    applies: a `LeakyReLU` or `ReLU(negative_slope=...)` layer's own slope, and a
    leaky-ReLU function's own default (`0.2` for `keras.activations.leaky_relu`)
    unless `param` says otherwise.

    `keras_fanin.LeCun(gain=calculate_gain("relu"))` draws the same law as
    `keras_fanin.He()`, whose own `gain` multiplies on top of its `sqrt(2)`.

    Examples:

    >>> keras_fanin.calculate_gain("tanh")
    1.6666666666666667
    >>> keras_fanin.calculate_gain(keras.layers.LeakyReLU(negative_slope=0.2))
    1.3867504905630728
    >>> init = keras_fanin.LeCun(gain=keras_fanin.calculate_gain("tanh"))
    >>> layer = keras.layers.Dense(64, activation="tanh", kernel_initializer=init)

    Args:
        nonlinearity: The name of the activation (case-insensitive), a Keras
            activation function such as `keras.activations.relu`, or a Keras
            `ReLU`, `LeakyReLU` or `Activation` layer.
        param: The negative slope of a leaky ReLU, a finite number `>= 0`
            (default: `0.01` for the name `"leaky_relu"`, a function's own
            default for a function). Must be left `None` for a layer, which
            carries its own slope, and for every other nonlinearity.

    Returns:
        The gain, a Python float.

    Raises:
        TypeError: If `nonlinearity` is of another type, or `param` is not a
            number.
        ValueError: If `nonlinearity` is not in the table, or `param` is
            negative, not finite, or given where it is not used.

    Reference:
        - [He et al., 2015](https://arxiv.org/abs/1502.01852)
        - [Glorot & Bengio, 2010](http://proceedings.mlr.press/v9/glorot10a.html)
    """
    name, own_slope, from_layer = _resolve(nonlinearity)
    if param is not None and from_layer:
        raise ValueError(
            "Argument `param` must be None when `nonlinearity` is a Keras layer, "
            f"whose own slope is used. Received: param={describe(param)}"
        )
    if name == "leaky_relu":
        if param is not None:
            slope = check_non_negative_finite("param", param)
        elif own_slope is not None:
            slope = check_non_negative_finite("negative_slope", own_slope)
        else:
            slope = _DEFAULT_LEAKY_SLOPE
        return _leaky_relu_gain(slope)
    if param is not None:
        raise ValueError(
            f"Argument `param` is only used by 'leaky_relu' and must be None for "
            f"{name!r}. Received: param={describe(param)}"
        )
    return _TABLE[name][0](None)


def recommended_initializer(nonlinearity):
    """Returns the initializer to advise for a nonlinearity, or None if unknown."""
    try:
        return _TABLE[_resolve(nonlinearity)[0]][1]
    except (TypeError, ValueError):
        return None
