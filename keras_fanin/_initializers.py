"""Fan-scaled initializers with a tunable gain: `FanScaling` and its presets.

They subclass the public `keras.initializers.VarianceScaling` so that
`EinsumDense` and `MultiHeadAttention`, which rebuild a `VarianceScaling` with
the kernel's `input_axes` / `output_axes`, give attention kernels the right fans.
Only `keras.*` APIs are used, so they run on any Keras backend.
"""

import math
from collections.abc import Sequence
from typing import Any, Literal, TypeAlias

import keras
import numpy as np

from keras_fanin._fans import (
    MODES,
    Axes,
    Mode,
    ShapeLike,
    check_axes,
    check_shape,
    compute_fans,
    fan_for_mode,
)
from keras_fanin._gains import Gain, is_activation, names_activation, resolve_gain
from keras_fanin._seeds import FAN_SCALED_CONSEQUENCE, note_draw
from keras_fanin._seeds import check_seed as _check_seed
from keras_fanin._validation import (
    check_non_negative_float32,
    check_one_of,
    check_positive_float32,
    describe,
)

DISTRIBUTIONS = ("truncated_normal", "normal", "uniform")
Distribution: TypeAlias = Literal["truncated_normal", "normal", "uniform"]
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


# erf(sqrt(2)): the mass of a standard normal within two sigmas.
_ERF_SQRT2 = math.erf(math.sqrt(2.0))


def _truncate(values: Any, sigma: float) -> Any:
    """Maps the draws beyond two sigmas into them, keeping the truncated law.

    Keras's torch backend keeps the first of four normal draws that lands
    within two sigmas, and an out-of-range one when all four miss (p = 4e-6:
    about 40 values past 2 sigmas, some past 3, in 1e7 draws). Such a value
    `x` is a normal conditioned on `|x| > 2`; `p = P(2 < |X| < |x|) / P(|X| > 2)`
    is then uniform, and `sqrt(2) * erfinv(erf(sqrt(2)) * (2p - 1))` is a
    normal truncated to two sigmas, as the kept draws are.
    """
    dtype = keras.backend.standardize_dtype(values.dtype)
    z = keras.ops.cast(values, "float32") / sigma
    tail = (keras.ops.erf(keras.ops.abs(z) / math.sqrt(2.0)) - _ERF_SQRT2) / (
        1.0 - _ERF_SQRT2
    )
    tail = keras.ops.clip(tail, 0.0, 1.0)
    inside = keras.ops.clip(
        math.sqrt(2.0) * keras.ops.erfinv(_ERF_SQRT2 * (2.0 * tail - 1.0)), -2.0, 2.0
    )
    inside = keras.ops.cast(inside * sigma, dtype)
    return keras.ops.where(keras.ops.abs(z) > 2.0, inside, values)


@keras.saving.register_keras_serializable(package="keras_fanin")
class FanScaling(keras.initializers.VarianceScaling):
    """Draws weights with a std of `gain / sqrt(fan)`.

    `stddev = gain / sqrt(fan)`, where `fan` is `fan_in`, `fan_out` or
    `(fan_in + fan_out) / 2` for `mode` `"fan_in"`, `"fan_out"`, `"fan_avg"`.
    This is the general form that `He`, `LeCun` and `Xavier` specialise. The
    `gain` is a hyperparameter: a multiplier on the standard deviation worth
    tuning once the more important hyperparameters are settled. Given an
    activation instead of a number (`gain="gelu"`,
    `gain=keras.activations.silu`), the gain is `calculate_gain(activation)`:
    what PyTorch's `kaiming_normal_(nonlinearity=...)` draws with `"fan_in"`.
    The config stores the resolved number (and, as `gain_source`, the
    activation's name for reading), so a saved model never needs the function.

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
    >>> silu = keras_fanin.FanScaling(gain=keras.activations.silu)
    >>> layer = keras.layers.Dense(128, "silu", kernel_initializer=silu)

    Args:
        gain: Positive finite float, the multiplier on the standard deviation;
            float32 must hold it (at most `3.4e38`). Or an activation (a
            name, an elementwise function, a Keras activation layer): its
            `calculate_gain`.
        mode: One of `"fan_in"`, `"fan_out"`, `"fan_avg"`.
        distribution: One of `"truncated_normal"`, `"normal"`, `"uniform"`.
        seed: None, an int, or a `keras.random.SeedGenerator`. An int or `None`
            draws the same values on every call (an unseeded initializer picks
            its seed once, reproducibly after `keras.utils.set_random_seed`); a
            `SeedGenerator` advances, so every call draws new values.
        input_axes: Optional list of the kernel axes holding the input units.
        output_axes: Optional list of the kernel axes holding the output units.
            Both must be given for either to take effect.
        gain_source: The name of the activation a numeric `gain` came from,
            kept for reading; `get_config` fills it in. Leave it `None`.

    Reference:
        - [LeCun et al., 1998](http://yann.lecun.com/exdb/publis/pdf/lecun-98b.pdf)
        - [He et al., 2015](https://arxiv.org/abs/1502.01852)
    """

    def __init__(
        self,
        gain: Gain = 1.0,
        mode: Mode = "fan_in",
        distribution: Distribution = "truncated_normal",
        seed: int | keras.random.SeedGenerator | None = None,
        input_axes: Sequence[int] | None = None,
        output_axes: Sequence[int] | None = None,
        gain_source: str | None = None,
    ) -> None:
        self._setup(
            gain, mode, 1.0, distribution, seed, input_axes, output_axes, gain_source
        )

    def _setup(
        self,
        gain: object,
        mode: object,
        numerator: float,
        distribution: object,
        seed: object,
        input_axes: object,
        axes_out: object,
        gain_source: str | None = None,
    ) -> None:
        """Validates every argument, then lets Keras's base class store its own."""
        gain, source = resolve_gain(gain, gain_source)
        check_one_of("mode", mode, MODES)
        distribution = check_one_of("distribution", distribution, DISTRIBUTIONS)
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
        self.gain_source = source
        self.distribution = distribution
        self.scale = gain**2 * numerator  # the variance multiplier, Keras's name
        self._numerator = numerator
        self._seed_argument = seed

    def stddev(self, shape: ShapeLike) -> float:
        """Returns the standard deviation this initializer draws for `shape`.

        A finite Python float (the exact value, before any rounding to the
        weights' dtype), for any shape; `shape` is checked as `compute_fans`
        checks it.
        """
        fan_in, fan_out = compute_fans(shape, self.input_axes, self.output_axes)
        return self.gain * math.sqrt(
            self._numerator / fan_for_mode(fan_in, fan_out, self.mode)
        )

    def _std_arguments(self) -> str:
        """The arguments that set the std, for error messages."""
        if self.gain_source is not None:
            return f"gain={self.gain!r} (from {self.gain_source!r})"
        return f"gain={self.gain!r}"

    def _check_draw(
        self, shape: Axes, dtype: str, stddev: float, requested: str | None = None
    ) -> None:
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

    def __call__(self, shape: ShapeLike, dtype: Any = None) -> Any:
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
        note_draw(self, shape, FAN_SCALED_CONSEQUENCE)
        return values

    def _draw(self, shape: Axes, dtype: str, stddev: float) -> Any:
        if self.distribution == "truncated_normal":
            sigma = stddev / _TRUNCATED_STD
            values = keras.random.truncated_normal(
                shape, stddev=sigma, dtype=dtype, seed=self.seed
            )
            if keras.backend.backend() == "torch":
                values = _truncate(values, sigma)
            return values
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

    def _base_config(self, **specific: Any) -> dict[str, Any]:
        # Constructor order, so that configs read like the call that made them.
        return {
            "gain": self.gain,
            **specific,
            "distribution": self.distribution,
            "seed": keras.saving.serialize_keras_object(self._seed_argument),
            "input_axes": self.input_axes,
            "output_axes": self.output_axes,
        }

    def get_config(self) -> dict[str, Any]:
        return {**self._base_config(mode=self.mode), "gain_source": self.gain_source}

    def __repr__(self) -> str:
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
        distribution: Distribution = "truncated_normal",
        seed: int | keras.random.SeedGenerator | None = None,
        input_axes: Sequence[int] | None = None,
        output_axes: Sequence[int] | None = None,
    ) -> None:
        if is_activation(gain) and names_activation(gain):
            raise ValueError(
                "Argument `gain` of `He` must be a number: He already carries "
                "the ReLU's gain sqrt(2) (and a leaky ReLU's through "
                "`negative_slope`), and `gain` multiplies on top of it, so an "
                "activation's gain would be applied twice. For another "
                f"activation use keras_fanin.LeCun(gain={describe(gain)}) or "
                f"keras_fanin.FanScaling(gain={describe(gain)}). "
                f"Received: gain={describe(gain)}"
            )
        check_positive_float32("gain", gain)
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

    def _std_arguments(self) -> str:
        return f"gain={self.gain!r} and negative_slope={self.negative_slope!r}"

    def get_config(self) -> dict[str, Any]:
        return self._base_config(negative_slope=self.negative_slope)


@keras.saving.register_keras_serializable(package="keras_fanin")
class LeCun(FanScaling):
    """LeCun initializer: the lecture's `1 / n` variance, for tanh and SELU.

    `stddev = gain * sqrt(1 / fan_in)`

    Keeps the variance of a layer's pre-activations equal to that of its inputs.
    With gain 1 it is the init self-normalising SELU networks require; for
    another activation pass it as `gain` (`LeCun(gain="gelu")` draws
    `calculate_gain("gelu") / sqrt(fan_in)`, as PyTorch's
    `kaiming_normal_(nonlinearity=...)` does); for ReLU use `He`.

    Examples:

    >>> values = keras_fanin.LeCun()(shape=(256, 128))
    >>> layer = keras.layers.Dense(
    ...     128, activation="selu", kernel_initializer=keras_fanin.LeCun()
    ... )
    >>> layer = keras.layers.Dense(
    ...     128, activation="gelu", kernel_initializer=keras_fanin.LeCun("gelu")
    ... )

    Args:
        gain: Positive finite float, the multiplier on the standard deviation;
            float32 must hold it. Or an activation (a name, an elementwise
            function, a Keras activation layer): its `calculate_gain`.
        distribution: One of `"truncated_normal"`, `"normal"` (untruncated),
            `"uniform"`; see `FanScaling`.
        seed: None, an int, or a `keras.random.SeedGenerator`; see `FanScaling`.
        input_axes: Optional list of the kernel axes holding the input units.
        output_axes: Optional list of the kernel axes holding the output units.
        gain_source: The name of the activation a numeric `gain` came from,
            kept for reading; `get_config` fills it in. Leave it `None`.

    Reference:
        - [LeCun et al., 1998](http://yann.lecun.com/exdb/publis/pdf/lecun-98b.pdf)
        - [Klambauer et al., 2017](https://arxiv.org/abs/1706.02515)
    """

    def __init__(
        self,
        gain: Gain = 1.0,
        distribution: Distribution = "truncated_normal",
        seed: int | keras.random.SeedGenerator | None = None,
        input_axes: Sequence[int] | None = None,
        output_axes: Sequence[int] | None = None,
        gain_source: str | None = None,
    ) -> None:
        self._setup(
            gain,
            "fan_in",
            1.0,
            distribution,
            seed,
            input_axes,
            output_axes,
            gain_source,
        )

    def get_config(self) -> dict[str, Any]:
        return {**self._base_config(), "gain_source": self.gain_source}


@keras.saving.register_keras_serializable(package="keras_fanin")
class Xavier(FanScaling):
    """Xavier (Glorot) initializer: the variance averaged over both fans.

    `stddev = gain * sqrt(2 / (fan_in + fan_out))`

    A compromise between keeping the forward activations (`fan_in`) and the
    backward gradients (`fan_out`) at a constant scale; the usual choice for
    sigmoid, softmax and linear layers. Given an activation as `gain`
    (`Xavier(gain="tanh")`), Glorot's std is multiplied by its
    `calculate_gain`, as PyTorch's `xavier_normal_(gain=calculate_gain("tanh"))`.

    Examples:

    >>> values = keras_fanin.Xavier(distribution="uniform")(shape=(256, 128))
    >>> layer = keras.layers.Dense(
    ...     10, activation="softmax", kernel_initializer=keras_fanin.Xavier()
    ... )
    >>> layer = keras.layers.Dense(
    ...     64, activation="tanh", kernel_initializer=keras_fanin.Xavier("tanh")
    ... )

    Args:
        gain: Positive finite float, the multiplier on the standard deviation;
            float32 must hold it. Or an activation (a name, an elementwise
            function, a Keras activation layer): its `calculate_gain`.
        distribution: One of `"truncated_normal"`, `"normal"` (untruncated),
            `"uniform"`; see `FanScaling`.
        seed: None, an int, or a `keras.random.SeedGenerator`; see `FanScaling`.
        input_axes: Optional list of the kernel axes holding the input units.
        output_axes: Optional list of the kernel axes holding the output units.
        gain_source: The name of the activation a numeric `gain` came from,
            kept for reading; `get_config` fills it in. Leave it `None`.

    Reference:
        - [Glorot & Bengio, 2010](http://proceedings.mlr.press/v9/glorot10a.html)
    """

    def __init__(
        self,
        gain: Gain = 1.0,
        distribution: Distribution = "truncated_normal",
        seed: int | keras.random.SeedGenerator | None = None,
        input_axes: Sequence[int] | None = None,
        output_axes: Sequence[int] | None = None,
        gain_source: str | None = None,
    ) -> None:
        self._setup(
            gain,
            "fan_avg",
            1.0,
            distribution,
            seed,
            input_axes,
            output_axes,
            gain_source,
        )

    def get_config(self) -> dict[str, Any]:
        return {**self._base_config(), "gain_source": self.gain_source}
