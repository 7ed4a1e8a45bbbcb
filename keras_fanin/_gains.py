"""The activation -> gain table: the one place that maps a nonlinearity to its gain.

`calculate_gain` serves users and the initializers' docs; `GradientHealth` uses
`recommended_initializer` from the same table for its advice.
"""

import math

from keras_fanin._validation import check_non_negative_finite

_DEFAULT_LEAKY_SLOPE = 0.01  # PyTorch's default, so that the values match theirs.


def _leaky_relu_gain(slope):
    return math.sqrt(2.0 / (1.0 + slope**2))


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
_ALIASES = {"identity": "linear", "leakyrelu": "leaky_relu"}


def _normalize(nonlinearity):
    if callable(nonlinearity) and not isinstance(nonlinearity, str):
        nonlinearity = getattr(nonlinearity, "__name__", repr(nonlinearity))
    if not isinstance(nonlinearity, str):
        raise TypeError(
            "Argument `nonlinearity` must be a string or an activation function. "
            f"Received: nonlinearity={nonlinearity!r}"
        )
    name = nonlinearity.lower()
    name = _ALIASES.get(name, name)
    if name not in _TABLE:
        raise ValueError(
            f"Unknown nonlinearity {nonlinearity!r}: argument `nonlinearity` must be "
            f"one of {sorted(_TABLE)}. Received: nonlinearity={nonlinearity!r}"
        )
    return name


def calculate_gain(nonlinearity, param: float | None = None) -> float:
    """Returns the recommended gain for a nonlinearity.

    The gain is the factor that keeps the variance of activations constant
    through a layer followed by `nonlinearity`: multiply a LeCun (`1 / fan_in`)
    standard deviation by it. The values are those PyTorch users know:

    | nonlinearity | gain |
    |---|---|
    | linear, conv*, sigmoid | `1` |
    | tanh | `5 / 3` |
    | relu | `sqrt(2)` |
    | leaky_relu | `sqrt(2 / (1 + negative_slope**2))` |
    | selu | `3 / 4` |

    `keras_fanin.LeCun(gain=calculate_gain("relu"))` draws the same law as
    `keras_fanin.He()`, whose own `gain` multiplies on top of its `sqrt(2)`.

    Examples:

    >>> keras_fanin.calculate_gain("tanh")
    1.6666666666666667
    >>> init = keras_fanin.LeCun(gain=keras_fanin.calculate_gain("tanh"))
    >>> layer = keras.layers.Dense(64, activation="tanh", kernel_initializer=init)

    Args:
        nonlinearity: The name of the activation (case-insensitive), or a
            Keras activation function such as `keras.activations.relu`.
        param: The negative slope for `"leaky_relu"` (default `0.01`, as in
            PyTorch); must be left `None` for every other nonlinearity.

    Returns:
        The gain, a Python float.

    Reference:
        - [He et al., 2015](https://arxiv.org/abs/1502.01852)
        - [Glorot & Bengio, 2010](http://proceedings.mlr.press/v9/glorot10a.html)
    """
    name = _normalize(nonlinearity)
    if name == "leaky_relu":
        slope = _DEFAULT_LEAKY_SLOPE if param is None else param
        slope = check_non_negative_finite("param", slope)
        return _leaky_relu_gain(slope)
    if param is not None:
        raise ValueError(
            f"Argument `param` is only used by 'leaky_relu' and must be None for "
            f"{name!r}. Received: param={param!r}"
        )
    return _TABLE[name][0](None)


def recommended_initializer(nonlinearity):
    """Returns the initializer to advise for a nonlinearity, or None if unknown."""
    try:
        return _TABLE[_normalize(nonlinearity)][1]
    except (TypeError, ValueError):
        return None
