import inspect
import itertools

import keras
import numpy as np
import pytest
from scipy import stats

from keras_fanin._orthogonal import DeltaOrthogonal, Orthogonal
from tests.helpers import assert_config_round_trips, round_trip


def to_numpy(x):
    return keras.ops.convert_to_numpy(keras.ops.cast(x, "float32")).astype(np.float64)


def gram(matrix):
    """`W^T W` for a tall matrix and `W W^T` for a wide one."""
    return (
        matrix.T @ matrix if matrix.shape[0] >= matrix.shape[1] else matrix @ matrix.T
    )


def haar_entry_cdf(n):
    """CDF of one entry of a Haar orthogonal n x n matrix: t**2 ~ Beta(1/2, (n-1)/2)."""
    beta = stats.beta(0.5, (n - 1) / 2)
    return lambda t: 0.5 + 0.5 * np.sign(t) * beta.cdf(t * t)


SHAPES = {
    "square": (64, 64),
    "tall": (96, 40),
    "wide": (40, 96),
    "conv1d": (3, 16, 24),  # rows 48 > cols 24: tall
    "conv2d_tall": (3, 3, 8, 32),  # rows 72 > cols 32
    "conv2d_wide": (1, 1, 16, 48),  # rows 16 < cols 48
}


# The conftest's per-test Keras reset costs ~0.2 s, so cases are looped, not
# parametrized, to keep this file within its CI time budget.
def test_orthogonal_gram_is_gain_squared_identity():
    for (name, shape), gain in itertools.product(SHAPES.items(), [0.5, 1.0, 3.0]):
        values = Orthogonal(gain=gain, seed=5)(shape)
        assert tuple(values.shape) == shape, name
        g = gram(to_numpy(values).reshape(-1, shape[-1]))
        np.testing.assert_allclose(
            g, gain**2 * np.eye(len(g)), rtol=0, atol=1e-5 * gain**2, err_msg=name
        )


def test_flattening_and_draw_match_keras_orthogonal():
    # Same seed, same normal draw, same QR: Keras's own initializer with the
    # same gain gives the same kernel, so the flattening is Keras's.
    for shape in [(3, 3, 8, 32), (5, 7, 4), (10, 30)]:
        ours = to_numpy(Orthogonal(gain=1.7, seed=11)(shape))
        theirs = to_numpy(keras.initializers.Orthogonal(gain=1.7, seed=11)(shape))
        np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-7)


def test_gain_scales_the_same_draw():
    base = to_numpy(Orthogonal(seed=2)((30, 20)))
    np.testing.assert_allclose(
        to_numpy(Orthogonal(gain=2.5, seed=2)((30, 20))), 2.5 * base, rtol=1e-6
    )


def test_entries_follow_the_haar_law_and_diagonal_signs_are_fair():
    n = 400  # 160,000 entries
    w = to_numpy(Orthogonal(seed=3)((n, n)))
    assert stats.kstest(w.ravel(), haar_entry_cdf(n)).pvalue > 1e-3
    positive = int((np.diag(w) > 0).sum())
    assert stats.binomtest(positive, n).pvalue > 1e-3


def test_diagonal_sign_test_rejects_qr_without_the_sign_correction():
    n = 400
    q, _ = keras.ops.linalg.qr(keras.random.normal((n, n), seed=3))
    positive = int((np.diag(to_numpy(q)) > 0).sum())
    assert stats.binomtest(positive, n).pvalue < 1e-6


def test_int_seed_and_none_repeat_and_seed_generator_advances():
    shape = (16, 8)
    np.testing.assert_array_equal(
        to_numpy(Orthogonal(seed=3)(shape)), to_numpy(Orthogonal(seed=3)(shape))
    )
    unseeded = Orthogonal()
    np.testing.assert_array_equal(to_numpy(unseeded(shape)), to_numpy(unseeded(shape)))
    assert not np.array_equal(
        to_numpy(Orthogonal(seed=3)(shape)), to_numpy(Orthogonal(seed=4)(shape))
    )
    advancing = Orthogonal(seed=keras.random.SeedGenerator(3))
    first, second = to_numpy(advancing(shape)), to_numpy(advancing(shape))
    assert not np.array_equal(first, second)
    again = Orthogonal(seed=keras.random.SeedGenerator(3))
    np.testing.assert_array_equal(first, to_numpy(again(shape)))


def test_set_random_seed_makes_unseeded_draws_reproducible():
    keras.utils.set_random_seed(99)
    first = to_numpy(Orthogonal()((16, 8)))
    other = to_numpy(DeltaOrthogonal()((3, 8, 8)))
    keras.utils.set_random_seed(99)
    np.testing.assert_array_equal(first, to_numpy(Orthogonal()((16, 8))))
    np.testing.assert_array_equal(other, to_numpy(DeltaOrthogonal()((3, 8, 8))))


def test_float_dtypes():
    dtypes = ["float16", "bfloat16", "float32", "float64"]
    for cls, dtype in itertools.product([Orthogonal, DeltaOrthogonal], dtypes):
        values = cls(seed=1)((3, 16, 16), dtype=dtype)
        # JAX without x64 draws float64 as float32, as it makes every float64.
        expected = keras.backend.standardize_dtype(keras.ops.zeros(1, dtype).dtype)
        assert keras.backend.standardize_dtype(values.dtype) == expected
        matrix = to_numpy(values)
        matrix = matrix[1] if cls is DeltaOrthogonal else matrix.reshape(-1, 16)
        atol = {"float16": 3e-3, "bfloat16": 3e-2}.get(dtype, 1e-5)
        np.testing.assert_allclose(
            gram(matrix), np.eye(16), rtol=0, atol=atol, err_msg=f"{cls} {dtype}"
        )


KERNELS = {
    "conv1d": (3, 8, 16),
    "conv2d": (3, 5, 8, 16),
    "conv3d": (3, 3, 3, 12, 12),
    "conv2d_even": (4, 2, 6, 10),
}


def test_delta_orthogonal_centre_tap_is_orthogonal_and_the_rest_exactly_zero():
    gain = 1.5
    for name, shape in KERNELS.items():
        values = to_numpy(DeltaOrthogonal(gain=gain, seed=7)(shape))
        assert values.shape == shape, name
        centre = tuple(k // 2 for k in shape[:-2])
        tap = values[centre]
        np.testing.assert_allclose(
            tap @ tap.T, gain**2 * np.eye(shape[-2]), atol=1e-5 * gain**2, err_msg=name
        )
        rest = values.copy()
        rest[centre] = 0.0
        assert np.count_nonzero(rest) == 0, name
        assert np.count_nonzero(tap) == tap.size, name


def test_delta_orthogonal_conv_is_a_per_pixel_orthogonal_map():
    # With "same" padding, a delta-orthogonal Conv2D maps every pixel's
    # channels through the centre tap alone: its norm is kept exactly.
    conv = keras.layers.Conv2D(
        16, 3, padding="same", use_bias=False, kernel_initializer=DeltaOrthogonal()
    )
    x = keras.random.normal((2, 6, 6, 8), seed=1)
    y = to_numpy(conv(x))
    tap = to_numpy(conv.kernel)[1, 1]
    np.testing.assert_allclose(y, to_numpy(x) @ tap, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        np.linalg.norm(y, axis=-1), np.linalg.norm(to_numpy(x), axis=-1), rtol=1e-5
    )


def test_delta_orthogonal_refuses_more_inputs_than_outputs_and_low_rank():
    with pytest.raises(ValueError, match=r"in=16 > out=8"):
        DeltaOrthogonal()((3, 3, 16, 8))
    with pytest.raises(ValueError, match=r"rank at least 3. Received: shape=\(8, 8\)"):
        DeltaOrthogonal()((8, 8))


def test_config_holds_every_constructor_argument_and_repr_reads_like_a_call():
    for cls in (Orthogonal, DeltaOrthogonal):
        params = set(inspect.signature(cls.__init__).parameters) - {"self"}
        assert set(cls().get_config()) == params
    assert repr(Orthogonal(gain=2.0, seed=3)) == (
        "Orthogonal(gain=2.0, seed=3, gain_source=None)"
    )


def test_an_activation_gain_is_its_calculate_gain_and_the_config_keeps_its_name():
    from keras_fanin._gains import calculate_gain

    for cls, shape in [(Orthogonal, (40, 30)), (DeltaOrthogonal, (3, 8, 16))]:
        for activation in ("tanh", keras.activations.silu):
            init = cls(gain=activation, seed=4)
            expected = calculate_gain(activation)
            assert init.gain == expected
            np.testing.assert_allclose(
                to_numpy(init(shape)),
                expected * to_numpy(cls(seed=4)(shape)),
                rtol=1e-6,
            )
            config = init.get_config()
            assert config["gain"] == expected and isinstance(config["gain"], float)
            assert config["gain_source"] in ("tanh", "silu")
            assert round_trip(init).get_config() == config


def test_from_config_and_serialization_round_trip():
    for init in [
        Orthogonal(gain=1.3, seed=4),
        Orthogonal(gain=0.7),
        DeltaOrthogonal(gain=2.0, seed=keras.random.SeedGenerator(8)),
    ]:
        assert_config_round_trips(init, (3, 8, 8))


def test_registered_under_package_name_and_resolved_by_string():
    for cls in (Orthogonal, DeltaOrthogonal):
        name = f"keras_fanin>{cls.__name__}"
        assert keras.saving.get_registered_name(cls) == name
        assert isinstance(keras.initializers.get(name), cls)
    layer = keras.layers.Dense(32, kernel_initializer="keras_fanin>Orthogonal")
    layer.build((None, 64))
    assert isinstance(layer.kernel_initializer, Orthogonal)
    np.testing.assert_allclose(
        gram(to_numpy(layer.kernel)), np.eye(32), rtol=0, atol=1e-5
    )


def test_model_survives_keras_save_and_load(tmp_path):
    inputs = keras.Input((8, 8, 4))
    h = keras.layers.Conv2D(
        8, 3, padding="same", kernel_initializer=DeltaOrthogonal(gain=1.2, seed=1)
    )(inputs)
    h = keras.layers.Flatten()(h)
    outputs = keras.layers.Dense(10, kernel_initializer=Orthogonal(gain=0.5, seed=2))(h)
    model = keras.Model(inputs, outputs)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    for ours, theirs in zip(model.layers, loaded.layers, strict=True):
        if hasattr(ours, "kernel"):
            assert type(theirs.kernel_initializer) is type(ours.kernel_initializer)
            assert (
                theirs.kernel_initializer.get_config()
                == ours.kernel_initializer.get_config()
            )
            np.testing.assert_array_equal(
                to_numpy(theirs.kernel), to_numpy(ours.kernel)
            )
    # A model rebuilt from the config alone draws the same kernels again.
    fresh = keras.Model.from_config(model.get_config())
    for ours, theirs in zip(model.layers, fresh.layers, strict=True):
        if hasattr(ours, "kernel"):
            np.testing.assert_array_equal(
                to_numpy(theirs.kernel), to_numpy(ours.kernel)
            )


BAD_ARGUMENTS = [
    (
        {"gain": -1},
        ValueError,
        r"Argument `gain` must be a positive finite number. Received: gain=-1",
    ),  # noqa: E501
    ({"gain": 0}, ValueError, r"gain=0"),
    ({"gain": float("nan")}, ValueError, r"gain=nan"),
    ({"gain": 1e39}, ValueError, r"float32 can hold.*gain=1e\+39"),
    ({"gain": None}, TypeError, r"gain=None"),
    ({"gain": True}, TypeError, r"gain=True"),
    ({"seed": 1.5}, TypeError, r"Argument `seed` must be None, an int or.*seed=1.5"),
    ({"seed": "3"}, TypeError, r"seed='3'"),
    ({"gain": "no_such_activation"}, ValueError, r"gain='no_such_activation'"),
    ({"gain": "tanh", "gain_source": "tanh"}, ValueError, r"Argument `gain_source`"),
    ({"gain": 1.0, "gain_source": 3}, TypeError, r"gain_source=3 of type int"),
]


def test_bad_arguments_fail_at_construction():
    for cls, (kwargs, error, message) in itertools.product(
        [Orthogonal, DeltaOrthogonal], BAD_ARGUMENTS
    ):
        with pytest.raises(error, match=message):
            cls(**kwargs)


BAD_SHAPES = [
    ((4,), ValueError, r"rank at least 2. Received: shape=\(4,\) of rank 1"),
    ((), ValueError, r"rank at least 2"),
    ((4.0, 3), TypeError, r"Argument `shape` must be a sequence of non-negative"),
    ((4, -3), ValueError, r"Argument `shape`"),
    ("44", TypeError, r"Argument `shape`"),
]


def test_bad_shapes_and_dtypes_are_clear_errors():
    for shape, error, message in BAD_SHAPES:
        with pytest.raises(error, match=message):
            Orthogonal()(shape)
    for cls, dtype in itertools.product(
        [Orthogonal, DeltaOrthogonal], ["int32", "bool"]
    ):
        with pytest.raises(
            TypeError, match=f"{cls.__name__} only draws floating-point"
        ):
            cls()((3, 4, 4), dtype=dtype)


def test_a_gain_the_dtype_cannot_hold_is_a_value_error_never_inf():
    with pytest.raises(
        ValueError, match=r"Argument `gain` does not fit a draw in float16"
    ):
        Orthogonal(gain=1e5)((8, 8), dtype="float16")
    with pytest.raises(ValueError, match=r"does not fit a draw in float16"):
        DeltaOrthogonal(gain=1e-9)((3, 8, 8), dtype="float16")


def test_empty_kernels_are_empty():
    assert tuple(Orthogonal()((0, 5)).shape) == (0, 5)
    assert tuple(DeltaOrthogonal()((3, 0, 4)).shape) == (3, 0, 4)


def test_a_wide_kernel_scales_every_input_norm_by_gain():
    # Keras computes `x @ W`; with W W^T = gain**2 I every input's norm is
    # multiplied by gain exactly, and every singular value is gain.
    w = to_numpy(Orthogonal(gain=2.0, seed=0)((20, 50)))
    x = np.random.default_rng(0).standard_normal((100, 20))
    np.testing.assert_allclose(
        np.linalg.norm(x @ w, axis=1), 2.0 * np.linalg.norm(x, axis=1), rtol=1e-5
    )
    np.testing.assert_allclose(np.linalg.svd(w, compute_uv=False), 2.0, rtol=1e-5)
