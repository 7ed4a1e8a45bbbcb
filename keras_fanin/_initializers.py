"""Fan-scaled initializers with a tunable gain: `FanScaling` and its presets.

They subclass the public `keras.initializers.VarianceScaling` so that
`EinsumDense` and `MultiHeadAttention`, which rebuild a `VarianceScaling` with
the kernel's `input_axes` / `output_axes`, give attention kernels the right fans.
Only `keras.*` APIs are used, so they run on any Keras backend.
"""

import math

import keras
import numpy as np

from keras_fanin._fans import (
    MODES,
    check_axes,
    check_shape,
    compute_fans,
    fan_for_mode,
)
from keras_fanin._validation import (
    check_non_negative_float32,
    check_one_of,
    check_positive_float32,
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
# The largest magnitude a draw computes, in stds: a truncated normal stops at
# two underlying sigmas; the backends compute a uniform as
# `minval + u * (maxval - minval)`, where `maxval - minval = 2 * limit`; and no
# backend's normal sampler goes past ~9.5 stds (Box-Muller on 64-bit uniforms
# tops out at sqrt(2 * ln(2**64)) = 9.4).
_REACH = {
    "truncated_normal": 2.0 / _TRUNCATED_STD,
    "normal": 10.0,
    "uniform": 2.0 * _SQRT3,
}
# (largest finite value, smallest positive value) of Keras's float dtypes;
# numpy knows neither bfloat16 nor the float8s, so they are written out.
_FLOAT_RANGE = {
    "float16": (65504.0, 2.0**-24),
    "bfloat16": (3.3895313892515355e38, 2.0**-133),
    "float32": (3.4028234663852886e38, 2.0**-149),
    "float64": (1.7976931348623157e308, 2.0**-1074),
    "float8_e4m3fn": (448.0, 2.0**-9),
    "float8_e5m2": (57344.0, 2.0**-16),
}


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

    A draw never returns inf or all-zero weights: when the dtype cannot hold the
    values the draw computes (up to `2.27 * stddev` for the truncated normal,
    `10 * stddev` for the normal, `2 * limit` for the uniform) or `stddev`
    rounds to zero in it, calling the initializer raises a `ValueError` naming
    `gain`.

    Examples:

    >>> init = keras_fanin.FanScaling(gain=2.0, mode="fan_avg")
    >>> values = init(shape=(256, 128))
    >>> layer = keras.layers.Dense(128, kernel_initializer=init)

    Args:
        gain: Positive finite float, the multiplier on the standard deviation;
            float32 must hold it (at most `3.4e38`).
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
        gain = check_positive_float32("gain", gain)
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
        """Returns the standard deviation this initializer draws for `shape`.

        A finite Python float (the exact value, before any rounding to the
        weights' dtype), for any shape; `shape` is checked as `compute_fans`
        checks it.
        """
        fan_in, fan_out = compute_fans(shape, self.input_axes, self.output_axes)
        return self.gain * math.sqrt(
            self._numerator / fan_for_mode(fan_in, fan_out, self.mode)
        )

    def _std_arguments(self):
        """The arguments that set the std, for error messages."""
        return f"gain={self.gain!r}"

    def _check_draw(self, shape, dtype, stddev, requested=None):
        """Raises if a draw in `dtype` would hold inf, or round every weight to 0."""
        if dtype not in _FLOAT_RANGE:  # a float dtype of a future Keras
            return
        largest, smallest = _FLOAT_RANGE[dtype]
        reach = stddev * _REACH[self.distribution]
        where = (
            f"{type(self).__name__} with {self._std_arguments()} draws a kernel of "
            f"shape {shape} with std {stddev:.6g}"
        )
        if requested not in (None, dtype):
            where += f" (the backend drew the requested {requested} as {dtype})"
        if reach > largest:
            raise ValueError(
                f"Argument `gain` is too large for a {self.distribution!r} draw in "
                f"{dtype}: {where}, and the draw computes values up to "
                f"{reach:.6g}, beyond {dtype}'s largest value {largest:.6g}. Lower "
                f"`gain` or draw in a wider dtype. Received: gain={self.gain!r}"
            )
        if stddev < smallest:
            raise ValueError(
                f"Argument `gain` is too small for a draw in {dtype}: {where}, "
                f"below {dtype}'s smallest positive value {smallest:.6g}, so every "
                "weight would be 0. Raise `gain` or draw in a wider dtype. "
                f"Received: gain={self.gain!r}"
            )

    def __call__(self, shape, dtype=None):
        """Draws a kernel of `shape` in `dtype` (default: `keras.config.floatx()`).

        Raises:
            TypeError: If `dtype` is not a float dtype, or `shape` not a
                sequence of ints.
            ValueError: If a dimension is negative, or `dtype` cannot hold the
                draw (see the class docstring).
        """
        if dtype is None:
            dtype = keras.config.floatx()
        else:
            dtype = keras.backend.standardize_dtype(dtype)
            if not keras.backend.is_float_dtype(dtype):
                raise TypeError(
                    f"{type(self).__name__} only draws floating-point weights. "
                    f"Received: dtype={dtype!r}"
                )
        shape = check_shape(shape)
        stddev = self.stddev(shape)
        self._check_draw(shape, dtype, stddev)
        values = self._draw(shape, dtype, stddev)
        drawn = keras.backend.standardize_dtype(values.dtype)
        if drawn != dtype:  # JAX without x64 draws float64 as float32
            self._check_draw(shape, drawn, stddev, requested=dtype)
        return values

    def _draw(self, shape, dtype, stddev):
        if self.distribution == "truncated_normal":
            return keras.random.truncated_normal(
                shape, stddev=stddev / _TRUNCATED_STD, dtype=dtype, seed=self.seed
            )
        if self.distribution == "normal":
            return keras.random.normal(
                shape, stddev=stddev, dtype=dtype, seed=self.seed
            )
        limit = stddev * _SQRT3
        if dtype == "float64":
            # TF's uniform casts a Python-float bound through float32 (an error
            # past 3.4e38, rounding below); numpy's float64 is a float too.
            limit = np.float64(limit)
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
            (on top of He's `sqrt(2)`); float32 must hold it.
        negative_slope: The leaky ReLU's slope for negative inputs, a finite
            float `>= 0` that float32 holds (`0` is a plain ReLU).
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
        slope = check_non_negative_float32("negative_slope", negative_slope)
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

    def _std_arguments(self):
        return f"gain={self.gain!r} and negative_slope={self.negative_slope!r}"

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
        gain: Positive finite float, the multiplier on the standard deviation;
            float32 must hold it.
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
        gain: Positive finite float, the multiplier on the standard deviation;
            float32 must hold it.
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
