"""Fan-scaled initializers with a tunable gain: `FanScaling` and its presets.

They subclass the public `keras.initializers.VarianceScaling` so that
`EinsumDense` and `MultiHeadAttention`, which rebuild a `VarianceScaling` with
the kernel's `input_axes` / `output_axes`, give attention kernels the right fans.
Only `keras.*` APIs are used, so they run on any Keras backend.
"""

import math

import keras

from keras_fanin._fans import MODES, check_axes, compute_fans, fan_for_mode
from keras_fanin._validation import (
    check_non_negative_finite,
    check_one_of,
    check_positive_finite,
)

DISTRIBUTIONS = ("truncated_normal", "normal", "uniform")
# Keras spells an untruncated normal "untruncated_normal" ("normal" means
# truncated there); this maps our names onto Keras's for its base class.
_KERAS_DISTRIBUTION = {
    "truncated_normal": "truncated_normal",
    "normal": "untruncated_normal",
    "uniform": "uniform",
}
# Std of a standard normal truncated to [-2, 2]: dividing by it makes the
# truncated draw have exactly the promised std.
_TRUNCATED_STD = 0.87962566103423978
_SQRT3 = math.sqrt(3.0)  # a uniform on [-a, a] has std a / sqrt(3)


def _check_seed(seed):
    if seed is None or isinstance(seed, (dict, keras.random.SeedGenerator)):
        return seed
    if isinstance(seed, int) and not isinstance(seed, bool):
        return seed
    raise TypeError(
        "Argument `seed` must be None, an int or a `keras.random.SeedGenerator`. "
        f"Received: seed={seed!r} of type {type(seed).__name__}"
    )


@keras.saving.register_keras_serializable(package="keras_fanin")
class FanScaling(keras.initializers.VarianceScaling):
    """Draws weights with a std of `gain / sqrt(fan)`.

    `stddev = gain / sqrt(fan)`, where `fan` is `fan_in`, `fan_out` or
    `(fan_in + fan_out) / 2` for `mode` `"fan_in"`, `"fan_out"`, `"fan_avg"`.
    This is the general form that `He`, `LeCun` and `Xavier` specialise. The
    `gain` is a hyperparameter: a multiplier on the standard deviation worth
    tuning once the more important hyperparameters are settled.

    Fans follow Keras's layout: a kernel is `(..., in, out)` and the leading
    axes of a rank >= 3 kernel (a convolution's receptive field) multiply both
    fans. `EinsumDense` and `MultiHeadAttention` pass `input_axes` and
    `output_axes` themselves.

    `distribution` says which law has that std:

    - `"truncated_normal"` (default, as Keras's presets): a normal cut at two
      standard deviations of the underlying normal and rescaled so that the
      result has exactly `stddev`;
    - `"normal"`: an untruncated normal. Careful: in Keras's own
      `VarianceScaling`, `"normal"` is an alias of the truncated normal; here it
      means what it says, as in PyTorch and JAX;
    - `"uniform"`: uniform on `[-limit, limit]` with `limit = stddev * sqrt(3)`.

    Examples:

    >>> init = keras_fanin.FanScaling(gain=2.0, mode="fan_avg")
    >>> values = init(shape=(256, 128))
    >>> layer = keras.layers.Dense(128, kernel_initializer=init)

    Args:
        gain: Positive finite float, the multiplier on the standard deviation.
        mode: One of `"fan_in"`, `"fan_out"`, `"fan_avg"`.
        distribution: One of `"truncated_normal"`, `"normal"`, `"uniform"`.
        seed: None, an int, or a `keras.random.SeedGenerator`. An int or `None`
            draws the same values on every call (an unseeded initializer picks
            its seed once, reproducibly after `keras.utils.set_random_seed`); a
            `SeedGenerator` advances, so every call draws new values.
        input_axes: Optional list of the kernel axes holding the input units.
        output_axes: Optional list of the kernel axes holding the output units.
            Both must be given for either to take effect.

    Reference:
        - [LeCun et al., 1998](http://yann.lecun.com/exdb/publis/pdf/lecun-98b.pdf)
    """

    def __init__(
        self,
        gain: float = 1.0,
        mode: str = "fan_in",
        distribution: str = "truncated_normal",
        seed: int | keras.random.SeedGenerator | None = None,
        input_axes: list[int] | None = None,
        output_axes: list[int] | None = None,
    ):
        self._setup(gain, mode, 1.0, distribution, seed, input_axes, output_axes)

    def _setup(self, gain, mode, numerator, distribution, seed, input_axes, axes_out):
        """Validates every argument, then lets Keras's base class store its own."""
        gain = check_positive_finite("gain", gain)
        check_one_of("mode", mode, MODES)
        check_one_of("distribution", distribution, DISTRIBUTIONS)
        seed = _check_seed(seed)
        input_axes, axes_out = check_axes(input_axes, axes_out)
        super().__init__(
            scale=1.0,
            mode=mode,
            distribution=_KERAS_DISTRIBUTION[distribution],
            seed=seed,
            input_axes=input_axes,
            output_axes=axes_out,
        )
        self.gain = gain
        self.distribution = distribution
        self.scale = gain**2 * numerator  # the variance multiplier, Keras's name
        self._numerator = numerator
        self._seed_argument = seed

    def stddev(self, shape) -> float:
        """Returns the standard deviation this initializer draws for `shape`."""
        fan_in, fan_out = compute_fans(shape, self.input_axes, self.output_axes)
        return self.gain * math.sqrt(
            self._numerator / fan_for_mode(fan_in, fan_out, self.mode)
        )

    def __call__(self, shape, dtype=None):
        # None means floatx, always a float: skip the check on the common path.
        if dtype is not None:
            dtype = keras.backend.standardize_dtype(dtype)
            if not keras.backend.is_float_dtype(dtype):
                raise TypeError(
                    f"{type(self).__name__} only draws floating-point weights. "
                    f"Received: dtype={dtype!r}"
                )
        stddev = self.stddev(shape)
        if self.distribution == "truncated_normal":
            return keras.random.truncated_normal(
                shape, stddev=stddev / _TRUNCATED_STD, dtype=dtype, seed=self.seed
            )
        if self.distribution == "normal":
            return keras.random.normal(
                shape, stddev=stddev, dtype=dtype, seed=self.seed
            )
        limit = stddev * _SQRT3
        return keras.random.uniform(
            shape, minval=-limit, maxval=limit, dtype=dtype, seed=self.seed
        )

    def _base_config(self, **specific):
        # Constructor order, so that configs read like the call that made them.
        return {
            "gain": self.gain,
            **specific,
            "distribution": self.distribution,
            "seed": keras.saving.serialize_keras_object(self._seed_argument),
            "input_axes": self.input_axes,
            "output_axes": self.output_axes,
        }

    def get_config(self):
        return self._base_config(mode=self.mode)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


@keras.saving.register_keras_serializable(package="keras_fanin")
class He(FanScaling):
    """He (Kaiming) initializer for ReLU and leaky-ReLU layers.

    `stddev = gain * sqrt(2 / ((1 + negative_slope**2) * fan_in))`

    A ReLU zeroes half of its inputs, so a variance of `2 / fan_in` keeps the
    activations' scale constant with depth where `1 / fan_in` halves it at every
    layer. For a leaky ReLU, pass its `negative_slope`. Use it for ReLU
    networks; see `LeCun` for tanh and SELU.

    Examples:

    >>> init = keras_fanin.He(distribution="uniform")
    >>> values = init(shape=(256, 128))
    >>> layer = keras.layers.Dense(
    ...     128, activation="relu", kernel_initializer=keras_fanin.He()
    ... )
    >>> leaky = keras.layers.Dense(
    ...     128, kernel_initializer=keras_fanin.He(negative_slope=0.2)
    ... )

    Args:
        gain: Positive finite float, a multiplier on the standard deviation
            (on top of He's `sqrt(2)`).
        negative_slope: The leaky ReLU's slope for negative inputs, `>= 0`
            (`0` is a plain ReLU).
        distribution: One of `"truncated_normal"`, `"normal"` (untruncated),
            `"uniform"`; see `FanScaling`.
        seed: None, an int, or a `keras.random.SeedGenerator`; see `FanScaling`.
        input_axes: Optional list of the kernel axes holding the input units.
        output_axes: Optional list of the kernel axes holding the output units.

    Reference:
        - [He et al., 2015](https://arxiv.org/abs/1502.01852)
    """

    def __init__(
        self,
        gain: float = 1.0,
        negative_slope: float = 0.0,
        distribution: str = "truncated_normal",
        seed: int | keras.random.SeedGenerator | None = None,
        input_axes: list[int] | None = None,
        output_axes: list[int] | None = None,
    ):
        slope = check_non_negative_finite("negative_slope", negative_slope)
        self._setup(
            gain,
            "fan_in",
            2.0 / (1.0 + slope**2),
            distribution,
            seed,
            input_axes,
            output_axes,
        )
        self.negative_slope = slope

    def get_config(self):
        return self._base_config(negative_slope=self.negative_slope)


@keras.saving.register_keras_serializable(package="keras_fanin")
class LeCun(FanScaling):
    """LeCun initializer: the lecture's `1 / n` variance, for tanh and SELU.

    `stddev = gain * sqrt(1 / fan_in)`

    Keeps the variance of a layer's pre-activations equal to that of its inputs.
    It is the right scale for tanh (try `gain=calculate_gain("tanh")`) and the
    one self-normalising SELU networks require; for ReLU use `He`.

    Examples:

    >>> values = keras_fanin.LeCun()(shape=(256, 128))
    >>> layer = keras.layers.Dense(
    ...     128, activation="selu", kernel_initializer=keras_fanin.LeCun()
    ... )

    Args:
        gain: Positive finite float, the multiplier on the standard deviation.
        distribution: One of `"truncated_normal"`, `"normal"` (untruncated),
            `"uniform"`; see `FanScaling`.
        seed: None, an int, or a `keras.random.SeedGenerator`; see `FanScaling`.
        input_axes: Optional list of the kernel axes holding the input units.
        output_axes: Optional list of the kernel axes holding the output units.

    Reference:
        - [LeCun et al., 1998](http://yann.lecun.com/exdb/publis/pdf/lecun-98b.pdf)
        - [Klambauer et al., 2017](https://arxiv.org/abs/1706.02515)
    """

    def __init__(
        self,
        gain: float = 1.0,
        distribution: str = "truncated_normal",
        seed: int | keras.random.SeedGenerator | None = None,
        input_axes: list[int] | None = None,
        output_axes: list[int] | None = None,
    ):
        self._setup(gain, "fan_in", 1.0, distribution, seed, input_axes, output_axes)

    def get_config(self):
        return self._base_config()


@keras.saving.register_keras_serializable(package="keras_fanin")
class Xavier(FanScaling):
    """Xavier (Glorot) initializer: the variance averaged over both fans.

    `stddev = gain * sqrt(2 / (fan_in + fan_out))`

    A compromise between keeping the forward activations (`fan_in`) and the
    backward gradients (`fan_out`) at a constant scale; the usual choice for
    sigmoid, softmax and linear layers.

    Examples:

    >>> values = keras_fanin.Xavier(distribution="uniform")(shape=(256, 128))
    >>> layer = keras.layers.Dense(
    ...     10, activation="softmax", kernel_initializer=keras_fanin.Xavier()
    ... )

    Args:
        gain: Positive finite float, the multiplier on the standard deviation.
        distribution: One of `"truncated_normal"`, `"normal"` (untruncated),
            `"uniform"`; see `FanScaling`.
        seed: None, an int, or a `keras.random.SeedGenerator`; see `FanScaling`.
        input_axes: Optional list of the kernel axes holding the input units.
        output_axes: Optional list of the kernel axes holding the output units.

    Reference:
        - [Glorot & Bengio, 2010](http://proceedings.mlr.press/v9/glorot10a.html)
    """

    def __init__(
        self,
        gain: float = 1.0,
        distribution: str = "truncated_normal",
        seed: int | keras.random.SeedGenerator | None = None,
        input_axes: list[int] | None = None,
        output_axes: list[int] | None = None,
    ):
        self._setup(gain, "fan_avg", 1.0, distribution, seed, input_axes, output_axes)

    def get_config(self):
        return self._base_config()
