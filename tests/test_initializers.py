import inspect
import json
import math
import warnings

import keras
import numpy as np
import pytest
from scipy import stats

import keras_fanin
from keras_fanin import (
    FanScaling,
    He,
    LeCun,
    SharedSeedWarning,
    Xavier,
    calculate_gain,
)
from tests.helpers import assert_config_round_trips, round_trip

TRUNCATED_STD = 0.87962566103423978
DENSE = (400, 300)  # 120,000 values
CONV = (3, 3, 96, 128)  # 110,592 values, receptive field 9


def expected_std(init, shape):
    """The std each initializer promises, written out from the formulas."""
    receptive = math.prod(shape[:-2])
    fan_in, fan_out = shape[-2] * receptive, shape[-1] * receptive
    if isinstance(init, He):
        return init.gain * math.sqrt(2 / ((1 + init.negative_slope**2) * fan_in))
    if isinstance(init, LeCun):
        return init.gain * math.sqrt(1 / fan_in)
    if isinstance(init, Xavier):
        return init.gain * math.sqrt(2 / (fan_in + fan_out))
    fan = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}
    return init.gain / math.sqrt(fan[init.mode])


def promised_law(distribution, std):
    if distribution == "truncated_normal":
        return stats.truncnorm(-2, 2, scale=std / TRUNCATED_STD)
    if distribution == "normal":
        return stats.norm(scale=std)
    limit = std * math.sqrt(3)
    return stats.uniform(loc=-limit, scale=2 * limit)


FACTORIES = {
    "He": lambda **kw: He(**kw),
    "He_leaky": lambda **kw: He(negative_slope=0.2, **kw),
    "LeCun": lambda **kw: LeCun(**kw),
    "Xavier": lambda **kw: Xavier(**kw),
    "FanScaling_fan_in": lambda **kw: FanScaling(mode="fan_in", **kw),
    "FanScaling_fan_out": lambda **kw: FanScaling(mode="fan_out", **kw),
    "FanScaling_fan_avg": lambda **kw: FanScaling(mode="fan_avg", **kw),
}


@pytest.mark.parametrize("name", sorted(FACTORIES))
@pytest.mark.parametrize("shape", [DENSE, CONV], ids=["dense", "conv"])
@pytest.mark.parametrize("distribution", ["truncated_normal", "normal", "uniform"])
@pytest.mark.parametrize("gain", [0.5, 1.0, 2.5])
def test_std_and_law(name, shape, distribution, gain):
    init = FACTORIES[name](gain=gain, distribution=distribution, seed=7)
    values = keras.ops.convert_to_numpy(init(shape)).ravel().astype(np.float64)
    std = expected_std(init, shape)
    assert values.size >= 100_000
    assert init.stddev(shape) == pytest.approx(std, rel=1e-12)
    assert np.std(values) == pytest.approx(std, rel=0.02)
    assert abs(np.mean(values)) < 0.02 * std
    assert stats.kstest(values, promised_law(distribution, std).cdf).pvalue > 1e-3


def test_ks_test_has_power_to_reject_the_wrong_law():
    """The law check above can fail: each law is rejected as another law."""
    shape, std = DENSE, math.sqrt(2 / DENSE[0])
    for drawn, claimed in [
        ("truncated_normal", "normal"),
        ("normal", "truncated_normal"),
        ("uniform", "normal"),
    ]:
        values = keras.ops.convert_to_numpy(He(distribution=drawn, seed=3)(shape))
        law = promised_law(claimed, std)
        assert stats.kstest(values.ravel(), law.cdf).pvalue < 1e-6, (drawn, claimed)


def test_truncation_is_at_two_underlying_sigmas_and_normal_is_untruncated():
    std = math.sqrt(2 / DENSE[0])
    trunc = keras.ops.convert_to_numpy(He(seed=1)(DENSE))
    normal = keras.ops.convert_to_numpy(He(distribution="normal", seed=1)(DENSE))
    uniform = keras.ops.convert_to_numpy(He(distribution="uniform", seed=1)(DENSE))
    assert np.abs(trunc).max() <= 2 * std / TRUNCATED_STD * (1 + 1e-6)
    assert np.abs(trunc).max() > 1.95 * std / TRUNCATED_STD
    assert np.abs(normal).max() > 3.5 * std
    assert np.abs(uniform).max() <= std * math.sqrt(3) * (1 + 1e-6)


@pytest.mark.parametrize("name", sorted(FACTORIES))
@pytest.mark.parametrize("distribution", ["truncated_normal", "normal", "uniform"])
def test_gain_scales_the_same_draw(name, distribution):
    base_init = FACTORIES[name](gain=1.0, distribution=distribution, seed=11)
    base = keras.ops.convert_to_numpy(base_init(CONV))
    for gain in (0.25, 1.7, 3.0):
        scaled = FACTORIES[name](gain=gain, distribution=distribution, seed=11)(CONV)
        # Equal up to float32 rounding: a uniform draw is `-limit + u * 2 * limit`,
        # whose rounding error is absolute (a few ulps of `limit`), not relative.
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(scaled),
            gain * base,
            rtol=2e-6,
            atol=1e-6 * gain * base_init.stddev(CONV),
        )


@pytest.mark.parametrize(
    "ours, theirs",
    [
        (He(seed=5), keras.initializers.HeNormal(seed=5)),
        (He(distribution="uniform", seed=5), keras.initializers.HeUniform(seed=5)),
        (LeCun(seed=5), keras.initializers.LecunNormal(seed=5)),
        (
            LeCun(distribution="uniform", seed=5),
            keras.initializers.LecunUniform(seed=5),
        ),
        (Xavier(seed=5), keras.initializers.GlorotNormal(seed=5)),
        (
            Xavier(distribution="uniform", seed=5),
            keras.initializers.GlorotUniform(seed=5),
        ),
        (
            FanScaling(mode="fan_out", distribution="normal", seed=5),
            keras.initializers.VarianceScaling(
                mode="fan_out", distribution="untruncated_normal", seed=5
            ),
        ),
    ],
    ids=repr,
)
def test_gain_one_matches_keras_builtin_with_same_seed(ours, theirs):
    for shape in (DENSE, (5, 7, 3, 8)):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(ours(shape)),
            keras.ops.convert_to_numpy(theirs(shape)),
            rtol=1e-6,
        )


def test_int_seed_and_none_repeat_and_seed_generator_advances():
    shape = (64, 32)
    seeded = He(seed=3)
    with pytest.warns(SharedSeedWarning):
        np.testing.assert_array_equal(seeded(shape), seeded(shape))
    unseeded = He()
    with pytest.warns(SharedSeedWarning):
        np.testing.assert_array_equal(unseeded(shape), unseeded(shape))
    assert not np.array_equal(He(seed=3)(shape), He(seed=4)(shape))
    advancing = He(seed=keras.random.SeedGenerator(3))
    first, second = advancing(shape), advancing(shape)
    assert not np.array_equal(first, second)
    again = He(seed=keras.random.SeedGenerator(3))
    np.testing.assert_array_equal(first, again(shape))


def test_set_random_seed_makes_unseeded_initializers_reproducible():
    keras.utils.set_random_seed(99)
    first = keras.ops.convert_to_numpy(He()((64, 32)))
    other = keras.ops.convert_to_numpy(He()((64, 32)))
    keras.utils.set_random_seed(99)
    np.testing.assert_array_equal(first, He()((64, 32)))
    assert not np.array_equal(first, other)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_float_dtypes(dtype):
    if (
        dtype == "float64"
        and keras.backend.standardize_dtype(keras.ops.zeros(1, "float64").dtype)
        != "float64"
    ):
        pytest.skip("JAX without x64 enabled has no float64")
    values = He(seed=1)((300, 200), dtype=dtype)
    assert keras.backend.standardize_dtype(values.dtype) == dtype
    std = float(np.std(keras.ops.convert_to_numpy(keras.ops.cast(values, "float32"))))
    assert std == pytest.approx(math.sqrt(2 / 300), rel=0.03)


def test_default_dtype_follows_floatx():
    assert keras.backend.standardize_dtype(He(seed=1)((4, 4)).dtype) == "float32"


@pytest.mark.parametrize("dtype", ["int32", "int64", "bool", "uint8"])
def test_non_float_dtype_is_a_type_error(dtype):
    with pytest.raises(TypeError, match=f"He only draws floating-point.*{dtype}"):
        He()((4, 4), dtype=dtype)


BAD_ARGUMENTS = [
    (He, {"gain": -1}, ValueError, r"Argument `gain` must be a positive finite number. Received: gain=-1"),
    (He, {"gain": 0}, ValueError, r"gain=0"),
    (He, {"gain": float("nan")}, ValueError, r"gain=nan"),
    (He, {"gain": float("inf")}, ValueError, r"gain=inf"),
    (He, {"gain": "2"}, TypeError, r"Argument `gain` must be a positive finite number. Received: gain='2'"),
    (He, {"gain": True}, TypeError, r"gain=True"),
    (He, {"gain": None}, TypeError, r"gain=None"),
    (He, {"negative_slope": -0.1}, ValueError, r"Argument `negative_slope` must be a non-negative finite number. Received: negative_slope=-0.1"),
    (He, {"negative_slope": float("nan")}, ValueError, r"negative_slope=nan"),
    (He, {"negative_slope": "0.2"}, TypeError, r"negative_slope='0.2'"),
    (He, {"distribution": "gaussian"}, ValueError, r"Argument `distribution` must be one of \{'truncated_normal', 'normal', 'uniform'\}. Received: distribution='gaussian'"),
    (LeCun, {"distribution": "untruncated_normal"}, ValueError, r"distribution='untruncated_normal'"),
    (Xavier, {"distribution": None}, ValueError, r"distribution=None"),
    (FanScaling, {"mode": "fan_x"}, ValueError, r"Argument `mode` must be one of \{'fan_in', 'fan_out', 'fan_avg'\}. Received: mode='fan_x'"),
    (FanScaling, {"seed": 1.5}, TypeError, r"Argument `seed` must be None, an int or a `keras.random.SeedGenerator`. Received: seed=1.5"),
    (LeCun, {"seed": "42"}, TypeError, r"seed='42'"),
    (Xavier, {"gain": -2.0}, ValueError, r"gain=-2.0"),
    (FanScaling, {"input_axes": 0, "output_axes": [1]}, TypeError, r"Argument `input_axes` must be None or a sequence of integers"),
    (FanScaling, {"input_axes": np.int64(0), "output_axes": [1]}, TypeError, r"Argument `input_axes` must be None or a sequence of integers. Received: input_axes=np.int64\(0\)"),
    (FanScaling, {"input_axes": [0], "output_axes": [1.0]}, TypeError, r"Argument `output_axes` must be None or a sequence of integers; item 0 is 1.0 of type float"),
    (FanScaling, {"input_axes": [0, 0], "output_axes": [1]}, ValueError, r"Argument `input_axes` holds the same axis twice. Received: input_axes=\[0, 0\]"),
]  # fmt: skip


@pytest.mark.parametrize("cls, kwargs, error, message", BAD_ARGUMENTS)
def test_bad_arguments_fail_at_construction(cls, kwargs, error, message):
    with pytest.raises(error, match=message):
        cls(**kwargs)


@pytest.mark.parametrize("cls", [FanScaling, He, LeCun, Xavier])
@pytest.mark.parametrize(
    "gain, received",
    [
        (1e200, r"gain=1e\+200"),  # its square overflowed a Python float
        (1e39, r"gain=1e\+39"),  # inf in float32
        (1e-46, r"gain=1e-46"),  # 0 in float32
        (10**400, r"gain=<int of 1329 bits>"),  # too large for a float at all
    ],
    ids=["1e200", "1e39", "1e-46", "10**400"],
)
def test_gain_float32_cannot_hold_is_a_value_error_naming_gain(cls, gain, received):
    with pytest.raises(ValueError, match=r"Argument `gain` must be a positive finite "):
        cls(gain=gain)
    with pytest.raises(ValueError, match=received):
        cls(gain=gain)


def test_huge_negative_slope_is_a_value_error_naming_it():
    with pytest.raises(
        ValueError,
        match=r"Argument `negative_slope` must be a non-negative finite number that "
        r"float32 can hold, at most 3.4028235e\+38. Received: negative_slope=1e\+200",
    ):
        He(negative_slope=1e200)


# The largest value of each dtype, and how far a draw reaches in stds: the
# truncated normal's cut, no normal sampler's tail, and the uniform's
# `maxval - minval = 2 * limit`.
DTYPE_MAX = {
    "float16": 65504.0,
    "bfloat16": 3.3895313892515355e38,
    "float32": 3.4028234663852886e38,
}
REACH = {
    "truncated_normal": 2 / TRUNCATED_STD,
    "normal": 10.0,
    "uniform": 2 * math.sqrt(3),
}


@pytest.mark.parametrize("dtype", sorted(DTYPE_MAX))
@pytest.mark.parametrize("distribution", sorted(REACH))
def test_a_draw_the_dtype_cannot_hold_is_a_value_error_never_inf(dtype, distribution):
    # fan_out of (n, 1) is 1, so the std is the gain itself.
    shape, limit = (100_000, 1), DTYPE_MAX[dtype] / REACH[distribution]
    too_large = FanScaling(gain=1.05 * limit, mode="fan_out", distribution=distribution)
    with pytest.raises(
        ValueError,
        match=rf"Argument `gain` is too large for a '{distribution}' draw in {dtype}.*Received: gain=",
    ):
        too_large(shape, dtype=dtype)
    fits = FanScaling(
        gain=0.95 * limit, mode="fan_out", distribution=distribution, seed=2
    )
    values = keras.ops.convert_to_numpy(
        keras.ops.cast(fits(shape, dtype=dtype), "float32")
    )
    assert np.isfinite(values).all()
    assert np.abs(values).max() > 0.1 * limit


def test_a_std_beyond_float32_draws_in_float64_and_stddev_stays_finite():
    init = He(gain=3e38, distribution="uniform", seed=1)  # std 3e38 * sqrt(2)
    # stddev is the exact value, whatever dtype the weights are drawn in.
    assert init.stddev((1, 1)) == pytest.approx(3e38 * math.sqrt(2), rel=1e-12)
    assert math.isfinite(init.stddev((0, 5)))
    with pytest.raises(
        ValueError,
        match=r"He with gain=3e\+38 and negative_slope=0.0 draws a kernel of shape \(1, 1\) with std 4.24264e\+38",
    ):
        init((1, 1))  # floatx, float32
    if (
        keras.backend.standardize_dtype(keras.ops.zeros(1, "float64").dtype)
        != "float64"
    ):
        # JAX without x64 draws float64 as float32: refused, not inf.
        with pytest.raises(ValueError, match="drew the requested float64 as float32"):
            init((1, 1000), dtype="float64")
        return
    values = keras.ops.convert_to_numpy(init((1, 1000), dtype="float64"))  # fan_in 1
    assert np.isfinite(values).all() and np.abs(values).max() > 1e38


def test_a_std_that_rounds_to_zero_is_a_value_error_not_zero_weights():
    init = He(gain=1e-30, seed=1)  # std 1.4e-31: 0 in float16, fine in float32
    with pytest.raises(
        ValueError,
        match=r"Argument `gain` is too small for a draw in float16.*every weight would be 0. .*Received: gain=1e-30",
    ):
        init((100, 100), dtype="float16")
    assert np.count_nonzero(keras.ops.convert_to_numpy(init((100, 100)))) > 9000
    with pytest.raises(ValueError, match="too small for a draw in float32"):
        LeCun(gain=1e-44)((100, 100))  # std 1e-45, below float32's 1.4e-45


@pytest.mark.parametrize(
    "shape, error",
    [
        ((-3, 4), ValueError),
        ((2.7, 4), TypeError),
        ((True, 4), TypeError),
        (5, TypeError),
    ],
)
def test_stddev_and_call_check_the_shape(shape, error):
    match = r"Argument `shape` must be a sequence of non-negative integers"
    with pytest.raises(error, match=match):
        He().stddev(shape)
    with pytest.raises(error, match=match):
        He(seed=1)(shape)


def test_numpy_int_axes_are_accepted_and_configs_hold_python_ints():
    init = FanScaling(input_axes=np.array([0]), output_axes=[np.int64(1), np.int32(2)])
    config = init.get_config()
    assert config["input_axes"] == [0] and config["output_axes"] == [1, 2]
    assert {type(a) for a in config["input_axes"] + config["output_axes"]} == {int}
    json.dumps(config)
    plain = FanScaling(input_axes=[0], output_axes=[1, 2])
    assert init.stddev((256, 8, 32)) == plain.stddev((256, 8, 32)) == 1 / 16


def test_axes_outside_the_kernel_fail_with_a_clear_error():
    init = FanScaling(input_axes=[0], output_axes=[5])
    with pytest.raises(ValueError, match="output_axes.*rank 2"):
        init((4, 4))


ALL_CLASSES = [FanScaling, He, LeCun, Xavier]


@pytest.mark.parametrize("cls", ALL_CLASSES)
def test_config_holds_every_constructor_argument(cls):
    params = set(inspect.signature(cls.__init__).parameters) - {"self"}
    assert set(cls().get_config()) == params


@pytest.mark.parametrize(
    "init",
    [
        He(gain=1.3, negative_slope=0.1, distribution="uniform", seed=4),
        LeCun(gain=0.7, distribution="normal", seed=None),
        Xavier(gain=2.0, seed=keras.random.SeedGenerator(8)),
        FanScaling(gain=0.9, mode="fan_out", input_axes=[0], output_axes=[1, 2]),
    ],
    ids=lambda i: type(i).__name__,
)
def test_from_config_and_serialization_round_trip(init):
    assert_config_round_trips(init, (8, 6))


def test_registered_under_package_name_and_resolved_by_string():
    for cls in ALL_CLASSES:
        name = f"keras_fanin>{cls.__name__}"
        assert keras.saving.get_registered_name(cls) == name
        assert isinstance(keras.initializers.get(name), cls)
    layer = keras.layers.Dense(64, kernel_initializer="keras_fanin>He")
    layer.build((None, 512))
    assert isinstance(layer.kernel_initializer, He)
    std = float(np.std(keras.ops.convert_to_numpy(layer.kernel)))
    assert std == pytest.approx(math.sqrt(2 / 512), rel=0.05)


def test_repr_reads_like_the_constructor_call():
    assert repr(He(gain=2.0, seed=3)) == (
        "He(gain=2.0, negative_slope=0.0, distribution='truncated_normal', "
        "seed=3, input_axes=None, output_axes=None)"
    )


def test_public_names():
    assert sorted(keras_fanin.__all__) == keras_fanin.__all__
    for name in keras_fanin.__all__:
        assert getattr(keras_fanin, name) is not None


# --- activations as gains, and the shared-seed trap (issue 12) ---------------


@pytest.mark.parametrize(
    "make, base",
    [
        (lambda g: LeCun(gain=g, seed=4), lambda: LeCun(seed=4)),
        (lambda g: FanScaling(gain=g, seed=4), lambda: FanScaling(seed=4)),
        (lambda g: Xavier(gain=g, seed=4), lambda: Xavier(seed=4)),
    ],
    ids=["LeCun", "FanScaling", "Xavier"],
)
@pytest.mark.parametrize(
    "activation, name",
    [
        ("gelu", "gelu"),
        (keras.activations.silu, "silu"),
        ("tanh", "tanh"),
        (keras.layers.LeakyReLU(negative_slope=0.2), "LeakyReLU(0.2)"),
        (lambda x: keras.ops.tanh(x) * 1.5, "<lambda>"),
    ],
    ids=["gelu", "silu", "tanh", "LeakyReLU", "lambda"],
)
def test_an_activation_as_gain_is_its_calculated_gain(make, base, activation, name):
    init = make(activation)
    gain = calculate_gain(activation)
    assert init.gain == gain
    assert init.gain_source == name
    # The same draw as the numeric gain: PyTorch's kaiming_normal_ /
    # xavier_normal_(gain=calculate_gain(...)) law, scaled exactly.
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(init(CONV)),
        gain * keras.ops.convert_to_numpy(base()(CONV)),
        rtol=1e-6,
        atol=1e-7,
    )
    # The config holds the number (and the name, for reading): a saved model
    # never needs the function, and the round trip draws the same kernel.
    config = init.get_config()
    assert config["gain"] == gain and config["gain_source"] == name
    assert json.loads(json.dumps(config)) == config
    again = round_trip(init)
    assert (again.gain, again.gain_source) == (gain, name)


def test_a_model_with_a_lambda_gain_saves_and_loads_without_the_lambda(tmp_path):
    init = LeCun(gain=lambda x: keras.ops.tanh(x) * 1.5, seed=1)
    model = keras.Sequential(
        [keras.Input((16,)), keras.layers.Dense(8, kernel_initializer=init)]
    )
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    layer_init = loaded.layers[0].kernel_initializer
    assert (layer_init.gain, layer_init.gain_source) == (init.gain, "<lambda>")
    rebuilt = keras.Sequential.from_config(model.get_config())
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(rebuilt.layers[0].kernel),
        keras.ops.convert_to_numpy(model.layers[0].kernel),
    )


@pytest.mark.parametrize("activation", ["gelu", "relu", keras.activations.silu])
def test_he_refuses_an_activation_and_says_what_to_use(activation):
    with pytest.raises(
        ValueError, match=r"Argument `gain` of `He` must be a number.*LeCun\(gain="
    ):
        He(gain=activation)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"gain": "swish_2"}, ValueError, r"Unknown nonlinearity 'swish_2': argument `gain` must be one of"),
        ({"gain": lambda x: x * float("nan")}, ValueError, r"Argument `gain` returned non-finite values"),
        ({"gain": lambda x: 0.0 * x}, ValueError, r"Argument `gain` has no gain: <lambda> has second moment 0"),
        ({"gain": lambda x: keras.ops.exp(x * 30.0)}, ValueError, r"Argument `gain` (returned non-finite|must be a positive finite number that float32)"),
        ({"gain": keras.activations.softmax}, None, None),  # an output activation: 1
        ({"gain": lambda x: x / keras.ops.sum(x)}, ValueError, r"Argument `gain` must act elementwise"),
        ({"gain": keras.layers.Dense(3)}, ValueError, r"Argument `gain` must be a name, an activation function"),
        ({"gain": [1.0]}, TypeError, r"Argument `gain` must be a positive number or an activation"),
        ({"gain": 1.0, "gain_source": 3}, TypeError, r"Argument `gain_source` must be None or a string. Received: gain_source=3"),
        ({"gain": "gelu", "gain_source": "tanh"}, ValueError, r"Argument `gain_source` names the activation a numeric `gain` came from"),
    ],
)  # fmt: skip
def test_bad_activation_gains(kwargs, error, message):
    if error is None:
        assert LeCun(**kwargs).gain == 1.0
        return
    with pytest.raises(error, match=message):
        LeCun(**kwargs)


def test_one_seeded_instance_in_many_layers_warns_once():
    init = He(seed=0)
    with pytest.warns(
        SharedSeedWarning, match=r"drew a kernel of shape \(32, 32\) a second time"
    ) as caught:
        model = keras.Sequential(
            [keras.Input((32,))]
            + [
                keras.layers.Dense(32, "relu", kernel_initializer=init)
                for _ in range(5)
            ]
        )
    assert sum(w.category is SharedSeedWarning for w in caught) == 1
    kernels = [keras.ops.convert_to_numpy(layer.kernel) for layer in model.layers]
    for kernel in kernels[1:]:
        np.testing.assert_array_equal(kernel, kernels[0])


@pytest.mark.parametrize(
    "layers_of",
    [
        lambda: [He(seed=keras.random.SeedGenerator(0))] * 3,  # advances
        lambda: [He(), He(), He()],  # one instance each
        lambda: [He(seed=0)] * 1,
    ],
    ids=["SeedGenerator", "own_instances", "single"],
)
def test_no_shared_seed_warning_where_the_draws_differ(layers_of):
    with warnings.catch_warnings():
        warnings.simplefilter("error", SharedSeedWarning)
        inits = layers_of()
        model = keras.Sequential(
            [keras.Input((32,))]
            + [keras.layers.Dense(32, kernel_initializer=init) for init in inits]
        )
        shared = He(seed=1)  # same instance, different shapes: different draws
        shared((32, 16)), shared((16, 32))
    kernels = [keras.ops.convert_to_numpy(layer.kernel) for layer in model.layers]
    assert all(
        not np.array_equal(a, b) for a, b in zip(kernels, kernels[1:], strict=False)
    )


def test_the_shared_seed_warning_tells_the_truth_about_the_drift():
    """One shared matrix makes the scale a lottery; one instance a layer does not."""
    x = np.random.default_rng(0).standard_normal((1024, 128)).astype("float32")

    def rms(kernels):
        h = x
        for kernel in kernels:
            h = np.maximum(h @ kernel, 0.0)
        return float(np.sqrt(np.mean(h**2)))

    def draw(seed):
        return keras.ops.convert_to_numpy(He(seed=seed)((128, 128)))

    shared = [rms([draw(s)] * 30) for s in range(8)]
    own = [rms([draw(100 * s + i) for i in range(30)]) for s in range(8)]
    # The message quotes TensorFlow's draws (0.17 to 83, and 0.44 to 0.77);
    # other backends draw other matrices, with the same spread.
    assert max(shared) / min(shared) > 20
    assert np.std(np.log(shared)) > 3 * np.std(np.log(own))


def test_the_truncated_normal_is_truly_truncated_on_every_backend():
    """No value beyond two underlying sigmas in 1e7 draws (Keras's torch sampler
    alone leaves ~40 there), and the values mapped back keep the law's std."""
    init = LeCun(seed=21)
    shape = (10_000, 1_000)
    values = keras.ops.convert_to_numpy(init(shape)).ravel()
    sigma = init.stddev(shape) / 0.87962566103423978
    assert np.max(np.abs(values)) <= 2 * sigma * (1 + 1e-6)
    assert np.std(values) == pytest.approx(init.stddev(shape), rel=2e-3)


def test_the_mapping_back_inside_keeps_the_truncated_law():
    """Values beyond two sigmas are mapped inside by the law's own CDF: fed
    normal draws conditioned on |x| > 2, it returns a two-sigma truncated
    normal (KS test), and leaves every value inside untouched."""
    from keras_fanin._initializers import _truncate

    rng = np.random.default_rng(3)
    x = rng.standard_normal(400_000).astype("float32")
    mapped = keras.ops.convert_to_numpy(_truncate(keras.ops.convert_to_tensor(x), 1.0))
    inside = np.abs(x) <= 2
    np.testing.assert_array_equal(mapped[inside], x[inside])
    tail = mapped[~inside]
    assert tail.size > 15_000 and np.max(np.abs(tail)) <= 2.0
    assert stats.kstest(tail, stats.truncnorm(-2, 2).cdf).pvalue > 1e-3
