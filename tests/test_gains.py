import inspect
import math

import keras
import numpy as np
import pytest

from keras_fanin import FanScaling, He, LeCun, calculate_gain
from keras_fanin._gains import recommended_initializer

# PyTorch's torch.nn.init.calculate_gain table, written out.
PYTORCH_TABLE = {
    "linear": 1.0,
    "conv1d": 1.0,
    "conv2d": 1.0,
    "conv3d": 1.0,
    "conv_transpose1d": 1.0,
    "conv_transpose2d": 1.0,
    "conv_transpose3d": 1.0,
    "sigmoid": 1.0,
    "tanh": 5.0 / 3.0,
    "relu": math.sqrt(2.0),
    "leaky_relu": math.sqrt(2.0 / (1 + 0.01**2)),
    "selu": 0.75,
}


@pytest.mark.parametrize("name, gain", sorted(PYTORCH_TABLE.items()))
def test_matches_pytorch_table(name, gain):
    assert calculate_gain(name) == pytest.approx(gain, rel=1e-15)
    assert calculate_gain(name.upper()) == pytest.approx(gain, rel=1e-15)


@pytest.mark.parametrize("slope", [0.0, 0.01, 0.2, 1.0, 3.0])
def test_leaky_relu_slope(slope):
    assert calculate_gain("leaky_relu", slope) == pytest.approx(
        math.sqrt(2 / (1 + slope**2))
    )


def test_keras_activation_functions_are_accepted():
    assert calculate_gain(keras.activations.relu) == pytest.approx(math.sqrt(2))
    assert calculate_gain(keras.activations.tanh) == pytest.approx(5 / 3)
    assert calculate_gain(keras.activations.leaky_relu, 0.2) == pytest.approx(
        math.sqrt(2 / 1.04)
    )


def leaky(slope):
    return math.sqrt(2 / (1 + slope**2))


@pytest.mark.parametrize(
    "make_layer, gain",
    [
        (lambda: keras.layers.ReLU(), math.sqrt(2)),
        (lambda: keras.layers.ReLU(max_value=6.0), math.sqrt(2)),
        (lambda: keras.layers.ReLU(negative_slope=0.1), leaky(0.1)),
        (lambda: keras.layers.ReLU(negative_slope=0.1, max_value=6.0), leaky(0.1)),
        (lambda: keras.layers.LeakyReLU(negative_slope=0.2), leaky(0.2)),
        (lambda: keras.layers.LeakyReLU(), leaky(0.3)),  # Keras's layer default
        (lambda: keras.layers.Activation("tanh"), 5 / 3),
        (lambda: keras.layers.Activation("sigmoid"), 1.0),
        (lambda: keras.layers.Activation(keras.activations.relu6), math.sqrt(2)),
        (lambda: keras.layers.Activation("leaky_relu"), leaky(0.2)),
    ],
    ids=[
        "ReLU", "ReLU_max", "ReLU_slope", "ReLU_slope_max", "LeakyReLU_0.2",
        "LeakyReLU_default", "Activation_tanh", "Activation_sigmoid",
        "Activation_relu6", "Activation_leaky_relu",
    ],
)  # fmt: skip
def test_keras_activation_layers_give_the_gain_of_what_they_apply(make_layer, gain):
    layer = make_layer()
    assert calculate_gain(layer) == pytest.approx(gain, rel=1e-15)
    assert recommended_initializer(layer) is not None


@pytest.mark.parametrize("relu6", ["relu6", "ReLU6", keras.activations.relu6])
def test_relu6_has_the_relu_gain(relu6):
    assert calculate_gain(relu6) == math.sqrt(2)
    assert recommended_initializer(relu6) == "keras_fanin.He()"


def test_leaky_relu_slope_by_name_is_pytorchs_and_by_keras_object_is_keras():
    keras_default = (
        inspect.signature(keras.activations.leaky_relu)
        .parameters["negative_slope"]
        .default
    )
    assert keras_default == 0.2
    assert calculate_gain("leaky_relu") == leaky(0.01)
    assert calculate_gain(keras.activations.leaky_relu) == leaky(keras_default)
    assert calculate_gain(keras.activations.leaky_relu, 0.05) == leaky(0.05)
    layer = keras.layers.LeakyReLU(negative_slope=0.25)
    assert calculate_gain(layer) == calculate_gain("leaky_relu", 0.25)


def test_huge_slope_gives_a_tiny_gain_not_an_overflow():
    assert calculate_gain("leaky_relu", 1e200) == pytest.approx(
        math.sqrt(2) / 1e200, rel=1e-12
    )


@pytest.mark.parametrize(
    "make_layer, param, error, message",
    [
        (lambda: keras.layers.PReLU(), None, ValueError, r"Argument `nonlinearity` must be a name, an activation function or a Keras `ReLU`, `LeakyReLU`, `ELU`, `Softmax` or `Activation` layer.*Received: nonlinearity=<PReLU"),
        (lambda: keras.layers.Dense(4, activation="relu"), None, ValueError, r"pass `layer.activation`"),
        (lambda: keras.layers.Activation("gelu"), 0.1, ValueError, r"Argument `param` must be None when `nonlinearity` is a Keras layer"),
        (lambda: keras.layers.LeakyReLU(0.2), 0.1, ValueError, r"Argument `param` must be None when `nonlinearity` is a Keras layer, whose own slope is used. Received: param=0.1"),
        (lambda: keras.layers.ReLU(), 0.1, ValueError, r"Argument `param` must be None"),
    ],
    ids=["PReLU", "Dense", "Activation_gelu_param", "LeakyReLU_param", "ReLU_param"],
)  # fmt: skip
def test_bad_layers(make_layer, param, error, message):
    with pytest.raises(error, match=message):
        calculate_gain(make_layer(), param)


def test_lecun_with_relu_gain_is_he():
    shape = (300, 200)
    np.testing.assert_allclose(
        LeCun(gain=calculate_gain("relu"), seed=3)(shape),
        He(seed=3)(shape),
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        LeCun(gain=calculate_gain("leaky_relu", 0.2), seed=3)(shape),
        He(negative_slope=0.2, seed=3)(shape),
        rtol=1e-6,
    )


@pytest.mark.parametrize(
    "args, error, message",
    [
        (("swish_2",), ValueError, r"Unknown nonlinearity 'swish_2'"),
        (("",), ValueError, r"Unknown nonlinearity ''"),
        ((3,), TypeError, r"Argument `nonlinearity` must be a string"),
        (("leaky_relu", -0.1), ValueError, r"Argument `param` must be a non-negative"),
        (("leaky_relu", "0.1"), TypeError, r"param='0.1'"),
        (("leaky_relu", float("nan")), ValueError, r"param=nan"),
        (("relu", 0.2), ValueError, r"Argument `param` is only used by 'leaky_relu'"),
        ((None,), TypeError, r"Argument `nonlinearity` must be a string, an activation function or a Keras activation layer. Received: nonlinearity=None of type NoneType"),
        (("relu6", 0.2), ValueError, r"Argument `param` is only used by 'leaky_relu' and must be None for 'relu'"),
        ((keras.activations.elu, 0.5), ValueError, r"Argument `param` is only used by 'leaky_relu' and must be None for 'elu'"),
        (("leaky_relu", float("inf")), ValueError, r"Argument `param` must be a non-negative finite number. Received: param=inf"),
        (("leaky_relu", 10**400), ValueError, r"Argument `param` must be a non-negative finite number. Received: param=<int of 1329 bits>"),
        (("leaky_relu", True), TypeError, r"param=True of type bool"),
        (("relu", np.zeros(10_000)), ValueError, r"Received: param=<ndarray of shape \(10000,\) and dtype float64>$"),
    ],
)  # fmt: skip
def test_bad_input(args, error, message):
    with pytest.raises(error, match=message):
        calculate_gain(*args)


def test_recommended_initializer_comes_from_the_same_table():
    assert recommended_initializer("relu") == "keras_fanin.He()"
    assert recommended_initializer(keras.activations.tanh) == (
        "keras_fanin.LeCun(gain='tanh')"
    )
    assert recommended_initializer("sigmoid") == "keras_fanin.Xavier()"
    assert recommended_initializer("softplus_unknown") is None
    assert recommended_initializer("gelu") == "keras_fanin.LeCun(gain='gelu')"
    assert recommended_initializer(lambda x: x) is None
    assert recommended_initializer(keras.layers.ReLU()) == "keras_fanin.He()"
    assert recommended_initializer(keras.layers.Activation("tanh")) == (
        "keras_fanin.LeCun(gain='tanh')"
    )
    assert recommended_initializer(keras.layers.PReLU()) is None


# --- a gain for any activation: the second-moment convention (issue 12) -------

# Every elementwise activation Keras names (threshold needs arguments; glu and
# the softmax family are not elementwise).
ELEMENTWISE = [
    "celu", "elu", "exponential", "gelu", "gelu_tanh", "hard_shrink",
    "hard_sigmoid", "hard_silu", "hard_swish", "hard_tanh", "leaky_relu",
    "linear", "log_sigmoid", "mish", "relu", "relu6", "selu", "sigmoid", "silu",
    "soft_shrink", "softplus", "softsign", "sparse_plus", "sparse_sigmoid",
    "squareplus", "swish", "tanh", "tanh_shrink",
]  # fmt: skip


def _function(name):
    from keras_fanin._gains import _function_of

    return _function_of(name)


def _apply(function, x):
    return keras.ops.convert_to_numpy(function(keras.ops.convert_to_tensor(x)))


@pytest.fixture(scope="module")
def normal_samples():
    return np.random.default_rng(12).standard_normal((4096, 256)).astype("float32")


@pytest.mark.parametrize("name", ELEMENTWISE)
def test_one_layer_with_the_gain_keeps_the_second_moment(name, normal_samples):
    """Monte Carlo over 1e6 standard-normal pre-activations against the quadrature,
    then through a real layer drawn with the gain."""
    gain = calculate_gain(name, method="second_moment")
    activations = _apply(_function(name), normal_samples).astype("float64")
    assert gain**2 * np.mean(activations**2) == pytest.approx(1.0, rel=0.02)
    # A layer multiplies the second moment by gain^2 exactly, in expectation
    # over its kernel. For an activation with a mean (sigmoid's is 85% of its
    # second moment) one kernel's error is that of the squared column sums, a
    # chi-square over its units: 8 draws of 4096 units bring it to ~0.7%.
    inputs = activations[:64].astype("float32")
    init = FanScaling(gain, distribution="normal", seed=keras.random.SeedGenerator(5))
    following = [
        inputs @ keras.ops.convert_to_numpy(init((256, 4096))) for _ in range(8)
    ]
    expected = gain**2 * np.mean(inputs.astype("float64") ** 2)
    measured = np.mean(np.square(following, dtype="float64"))
    assert measured == pytest.approx(expected, rel=0.02)


def test_the_second_moment_gains_of_the_docs_and_pytorchs_where_they_differ():
    doc = {
        "relu": 1.414, "selu": 1.000, "gelu": 1.534, "silu": 1.677, "mish": 1.487,
        "elu": 1.245, "softplus": 1.042, "softsign": 2.338, "hard_sigmoid": 1.898,
        "tanh": 1.593, "sigmoid": 1.846,
    }  # fmt: skip
    for name, value in doc.items():
        assert calculate_gain(name, method="second_moment") == pytest.approx(
            value, abs=6e-4
        )
        assert f"{value:.3f}" in calculate_gain.__doc__ or name in ("relu",)
    assert calculate_gain("tanh") == 5 / 3 and calculate_gain("sigmoid") == 1.0
    assert calculate_gain("selu") == 0.75
    assert calculate_gain("gelu") == calculate_gain("gelu", method="second_moment")
    exact, tanh_approx = calculate_gain("gelu"), calculate_gain("gelu_tanh")
    assert exact != tanh_approx and exact == pytest.approx(tanh_approx, rel=1e-3)
    with pytest.raises(ValueError, match=r"Argument `method` must be one of"):
        calculate_gain("relu", method="torch")


def _second_moment_by_depth(activation, gain, depth, draws, batch=256, width=256):
    """Mean over `draws` MLPs of each layer's pre-activation second moment."""
    function = (
        keras.activations.get(activation) if isinstance(activation, str) else activation
    )
    # All of a network's kernels in one draw: axes 1 and 2 are each kernel's
    # inputs and outputs, so the fans are a (width, width) Dense kernel's.
    init = LeCun(gain=gain, input_axes=[1], output_axes=[2])
    rng = np.random.default_rng(0)
    moments = np.zeros(depth)
    for draw in range(draws):
        kernels = keras.ops.convert_to_numpy(
            LeCun.from_config({**init.get_config(), "seed": draw})(
                (depth, width, width)
            )
        )
        h = rng.standard_normal((batch, width)).astype("float32")
        for depth_index in range(depth):
            h = _apply(function, h) @ kernels[depth_index]
            moments[depth_index] += np.mean(h.astype("float64") ** 2) / draws
    return moments / moments[0]


@pytest.mark.slow
@pytest.mark.parametrize(
    "activation", ["elu", "softplus", "softsign", "tanh", "sigmoid", "selu"]
)
def test_stable_activations_keep_the_scale_through_50_layers(activation):
    gain = calculate_gain(activation, method="second_moment")
    moments = _second_moment_by_depth(activation, gain, depth=50, draws=3)
    assert 0.5 < moments.min() and moments.max() < 2.0, moments


@pytest.mark.slow
@pytest.mark.parametrize("activation", ["relu", keras.activations.leaky_relu])
def test_relu_keeps_the_scale_on_average_its_map_is_marginal(activation):
    """ReLU's second-moment map is linear (slope exactly 1): nothing pulls a
    finite-width network back, so one 50-layer draw wanders (a factor ~1.9 at
    one sigma at width 256) while the mean over draws stays at 1."""
    gain = calculate_gain(activation, method="second_moment")
    moments = _second_moment_by_depth(activation, gain, depth=50, draws=16, batch=32)
    assert 0.5 < moments[-1] < 2.0, moments


def test_selu_pytorch_gain_shrinks_and_lecun_gain_one_is_self_normalising():
    shrunk = _second_moment_by_depth("selu", "selu", depth=50, draws=1)
    assert calculate_gain("selu") == 0.75 and shrunk[-1] < 1 / 10  # ~20x
    kept = _second_moment_by_depth("selu", 1.0, depth=50, draws=1)
    assert 0.5 < kept[-1] < 2.0


def _map_slope(name, samples):
    """Slope at q=1 of q -> gain^2 E[f(sqrt(q) z)^2], by Monte Carlo (common z)."""
    function, gain = _function(name), calculate_gain(name, method="second_moment")

    def moment(q):
        values = _apply(function, samples * np.float32(math.sqrt(q)))
        return gain**2 * np.mean(values.astype("float64") ** 2)

    return (moment(1.05) - moment(0.95)) / 0.1


def test_the_documented_stability_of_each_fixed_point(normal_samples):
    for name in ("relu", "elu", "softplus", "softsign", "tanh", "sigmoid"):
        assert _map_slope(name, normal_samples) <= 1.0 + 2e-3, name
    for name, documented in (("gelu", 1.14), ("silu", 1.17), ("mish", 1.08)):
        slope = _map_slope(name, normal_samples)
        assert slope == pytest.approx(documented, abs=0.01), name
        assert f"{documented}" in calculate_gain.__doc__


@pytest.mark.parametrize("activation", ["gelu", "silu", "mish"])
def test_unstable_activations_at_depth_10_own_gain_beats_the_relu_gain(activation):
    own = _second_moment_by_depth(activation, activation, depth=10, draws=3)[-1]
    relu_gain = _second_moment_by_depth(activation, math.sqrt(2), depth=10, draws=3)
    assert 0.5 < own < 2.0
    assert abs(math.log(relu_gain[-1])) > abs(math.log(own))
    assert relu_gain[-1] < 0.5  # sqrt(2) is below their gains: the signal fades
