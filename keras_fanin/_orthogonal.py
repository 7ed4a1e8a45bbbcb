"""The orthogonal family with a gain: `Orthogonal` and `DeltaOrthogonal`.

Both draw a Haar-distributed orthogonal matrix from the QR decomposition of a
normal one, with `keras.random` and `keras.ops` only, so they run on any Keras
backend. `lsuv` bakes the scale it finds into an `Orthogonal`'s `gain`.
"""

import math
import random
from typing import Any

import keras

from keras_fanin._fans import Axes, ShapeLike, check_shape
from keras_fanin._gains import Gain, resolve_gain
from keras_fanin._initializers import _FLOAT_RANGE
from keras_fanin._seeds import check_seed, note_draw


def _orthogonal_matrix(rows: int, cols: int, dtype: str, seed: Any) -> Any:
    """A `(rows, cols)` matrix with orthonormal columns (tall) or rows (wide).

    Haar-distributed: the QR decomposition of a standard normal matrix, with
    each column of Q multiplied by the sign of R's diagonal (Mezzadri, 2007);
    without that correction Q is not uniform over the orthogonal group.
    """
    # QR needs float32 or float64 on every backend; float16 inputs are refused
    # by some, so half precision is computed in float32 and cast at the end.
    work = "float64" if dtype == "float64" else "float32"
    tall = (max(rows, cols), min(rows, cols))
    a = keras.random.normal(tall, dtype=work, seed=seed)
    q, r = keras.ops.linalg.qr(a)
    # 1 - 2 * (d < 0) rather than sign(d): sign(0) would zero a column.
    d = keras.ops.diagonal(r)
    q = q * (1.0 - 2.0 * keras.ops.cast(d < 0, q.dtype))
    return q if rows >= cols else keras.ops.transpose(q)


def _check_dtype(cls_name: str, dtype: Any) -> str:
    if dtype is None:
        floatx: str = keras.config.floatx()
        return floatx
    name: str = keras.backend.standardize_dtype(dtype)
    if not keras.backend.is_float_dtype(name):
        raise TypeError(
            f"{cls_name} only draws floating-point weights. Received: dtype={name!r}"
        )
    return name


@keras.saving.register_keras_serializable(package="keras_fanin")
class Orthogonal(keras.initializers.Initializer):
    """Draws a random orthogonal matrix times `gain`.

    `W^T W = gain**2 * I` for a tall kernel (`rows >= cols`) and
    `W W^T = gain**2 * I` for a wide one, where a kernel of any rank >= 2 is
    read as a `(prod(shape[:-1]), shape[-1])` matrix, as Keras's own
    `keras.initializers.Orthogonal` flattens it (a convolution's receptive
    field and input channels form the rows). The orthogonal matrix is uniform
    (Haar) over the orthogonal group: the QR decomposition of a standard normal
    matrix with the signs of R's diagonal moved into Q.

    Unlike Keras's, `gain` is validated and may be an activation:
    `Orthogonal(gain="tanh")` draws with `calculate_gain("tanh")`, as PyTorch's
    `orthogonal_(w, gain=calculate_gain("tanh"))` does. The config stores the
    resolved number (and, as `gain_source`, the activation's name for
    reading), so a saved model never needs the function.

    Examples:

    >>> values = keras_fanin.Orthogonal(gain=2.0, seed=0)(shape=(256, 128))
    >>> layer = keras.layers.Dense(
    ...     128, "tanh", kernel_initializer=keras_fanin.Orthogonal(gain="tanh")
    ... )

    Args:
        gain: Positive finite float that float32 can hold, the multiplier on
            the orthogonal matrix (its singular values all equal `gain`). Or
            an activation (a name, an elementwise function, a Keras
            activation layer): its `calculate_gain`.
        seed: None, an int, or a `keras.random.SeedGenerator`. An int or `None`
            draws the same values on every call (an unseeded initializer picks
            its seed once, reproducibly after `keras.utils.set_random_seed`); a
            `SeedGenerator` advances, so every call draws new values.
        gain_source: The name of the activation a numeric `gain` came from,
            kept for reading; `get_config` fills it in. Leave it `None`.

    Reference:
        - [Saxe et al., 2014](https://arxiv.org/abs/1312.6120)
        - [Mezzadri, 2007](https://arxiv.org/abs/math-ph/0609050)
    """

    def __init__(
        self,
        gain: Gain = 1.0,
        seed: int | keras.random.SeedGenerator | None = None,
        gain_source: str | None = None,
    ) -> None:
        self.gain, self.gain_source = resolve_gain(gain, gain_source)
        seed = check_seed(seed)
        self._seed_argument = seed
        if isinstance(seed, dict):  # a serialized SeedGenerator, from a config
            seed = keras.saving.deserialize_keras_object(seed)
        if seed is None:
            # What Keras's own random initializers do: pick an int seed once,
            # from Python's RNG, which `keras.utils.set_random_seed` seeds.
            seed = random.randint(1, int(1e9))
        self.seed = seed

    def _min_rank(self) -> int:
        return 2

    def _check_call(self, shape: ShapeLike, dtype: Any) -> tuple[Axes, str]:
        dtype = _check_dtype(type(self).__name__, dtype)
        shape = check_shape(shape)
        if len(shape) < self._min_rank():
            raise ValueError(
                f"{type(self).__name__} needs a kernel of rank at least "
                f"{self._min_rank()}. Received: shape={shape} of rank {len(shape)}"
            )
        return shape, dtype

    def _check_gain_fits(self, dtype: str, typical: float) -> None:
        """Raises if `gain` overflows `dtype`, or every weight rounds to 0 in it."""
        if dtype not in _FLOAT_RANGE:  # a float dtype of a future Keras
            return
        largest, smallest = _FLOAT_RANGE[dtype]
        # An orthogonal matrix's entries lie in [-1, 1], of typical size `typical`.
        if self.gain > largest or self.gain * typical < smallest:
            raise ValueError(
                f"Argument `gain` does not fit a draw in {dtype}: {type(self).__name__}"
                f" draws values up to {self.gain:.6g} of typical size "
                f"{self.gain * typical:.6g}, outside [{smallest:.6g}, {largest:.6g}]."
                f" Change `gain` or draw in a wider dtype. Received: gain={self.gain!r}"
            )

    def __call__(self, shape: ShapeLike, dtype: Any = None) -> Any:
        """Draws a kernel of `shape` in `dtype` (default: `keras.config.floatx()`).

        Raises:
            TypeError: If `dtype` is not a float dtype, or `shape` not a
                sequence of ints.
            ValueError: If a dimension is negative, the rank is below 2, or
                `dtype` cannot hold `gain`.
        """
        shape, dtype = self._check_call(shape, dtype)
        if 0 in shape:
            return keras.ops.zeros(shape, dtype=dtype)
        self._check_gain_fits(dtype, self._typical_entry(shape))
        values = keras.ops.cast(self.gain * self._unit(shape, dtype), dtype)
        note_draw(self, shape)
        return values

    def _typical_entry(self, shape: Axes) -> float:
        return 1.0 / math.sqrt(max(math.prod(shape[:-1]), shape[-1]))

    def _unit(self, shape: Axes, dtype: str) -> Any:
        """The draw with gain 1, in float32 (float64 for a float64 `dtype`).

        `lsuv` rescales this same tensor, so that the kernels it sets are
        bit for bit those that `Orthogonal(gain, seed)` draws from a config.
        """
        rows, cols = math.prod(shape[:-1]), shape[-1]
        q = _orthogonal_matrix(rows, cols, dtype, self.seed)
        return keras.ops.reshape(q, shape)

    def get_config(self) -> dict[str, Any]:
        return {
            "gain": self.gain,
            "seed": keras.saving.serialize_keras_object(self._seed_argument),
            "gain_source": self.gain_source,
        }

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


@keras.saving.register_keras_serializable(package="keras_fanin")
class DeltaOrthogonal(Orthogonal):
    """Delta-orthogonal convolution kernels: zero but for an orthogonal centre tap.

    `W[c_1, ..., c_d, :, :] = gain * H`, with `c_i = k_i // 2` the centre of
    each spatial axis and `H` a random `(in, out)` matrix with orthonormal
    rows (`H H^T = I`); every other tap is exactly 0. At initialisation the
    convolution is a per-pixel orthogonal map, so the network is an orthogonal
    MLP at every pixel and achieves dynamical isometry: a tanh CNN of thousands
    of layers trains without normalisation (Xiao et al., 2018).

    For a kernel `(*spatial, in, out)` of a Conv1D/2D/3D (rank 3 to 5, or
    higher). The construction needs `in <= out` (an orthogonal map cannot
    widen to fewer channels without discarding some); `in > out` raises a
    `ValueError`, as in the paper. For an even kernel size the centre tap is
    `k // 2`, the later of the two middle taps.

    Examples:

    >>> values = keras_fanin.DeltaOrthogonal(seed=0)(shape=(3, 3, 64, 64))
    >>> layer = keras.layers.Conv2D(
    ...     64, 3, padding="same", activation="tanh",
    ...     kernel_initializer=keras_fanin.DeltaOrthogonal(),
    ... )

    Args:
        gain: Positive finite float that float32 can hold, the multiplier on
            the centre tap's orthogonal matrix; or an activation, as for
            `Orthogonal`.
        seed: None, an int, or a `keras.random.SeedGenerator`; see `Orthogonal`.
        gain_source: Filled in by `get_config`; leave it `None`.

    Reference:
        - [Xiao et al., 2018](https://arxiv.org/abs/1806.05393)
    """

    def _min_rank(self) -> int:
        return 3

    def __call__(self, shape: ShapeLike, dtype: Any = None) -> Any:
        """Draws a kernel of `shape` in `dtype` (default: `keras.config.floatx()`).

        Raises:
            TypeError: If `dtype` is not a float dtype, or `shape` not a
                sequence of ints.
            ValueError: If a dimension is negative, the rank is below 3, the
                kernel has more input than output channels, or `dtype` cannot
                hold `gain`.
        """
        return super().__call__(shape, dtype)

    def _check_call(self, shape: ShapeLike, dtype: Any) -> tuple[Axes, str]:
        shape, dtype = super()._check_call(shape, dtype)
        fan_in, fan_out = shape[-2:]
        if fan_in > fan_out:
            raise ValueError(
                "DeltaOrthogonal needs at most as many input as output channels "
                "(an orthogonal centre tap maps `in` channels into `out` without "
                f"loss only when in <= out). Received: shape={shape} with "
                f"in={fan_in} > out={fan_out}"
            )
        return shape, dtype

    def _typical_entry(self, shape: Axes) -> float:
        return 1.0 / math.sqrt(shape[-1])

    def _unit(self, shape: Axes, dtype: str) -> Any:
        spatial, (fan_in, fan_out) = shape[:-2], shape[-2:]
        h = _orthogonal_matrix(fan_in, fan_out, dtype, self.seed)
        centre = [0.0] * math.prod(spatial)
        flat_centre = 0
        for k in spatial:
            flat_centre = flat_centre * k + k // 2
        centre[flat_centre] = 1.0
        tap = keras.ops.reshape(
            keras.ops.convert_to_tensor(centre, dtype=h.dtype), (*spatial, 1, 1)
        )
        return tap * h
