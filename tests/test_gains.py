import inspect
import math

import keras
import numpy as np
import pytest

from keras_fanin import He, LeCun, calculate_gain
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
    assert recommended_initializer(keras.activations.tanh) == "keras_fanin.LeCun()"
    assert recommended_initializer("sigmoid") == "keras_fanin.Xavier()"
    assert recommended_initializer("softplus_unknown") is None
    assert recommended_initializer("gelu") == "keras_fanin.LeCun(gain='gelu')"
    assert recommended_initializer(lambda x: x) is None
    assert recommended_initializer(keras.layers.ReLU()) == "keras_fanin.He()"
    assert recommended_initializer(keras.layers.Activation("tanh")) == (
        "keras_fanin.LeCun()"
    )
    assert recommended_initializer(keras.layers.PReLU()) is None
