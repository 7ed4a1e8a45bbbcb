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
    ],
)
def test_bad_input(args, error, message):
    with pytest.raises(error, match=message):
        calculate_gain(*args)


def test_recommended_initializer_comes_from_the_same_table():
    assert recommended_initializer("relu") == "keras_fanin.He()"
    assert recommended_initializer(keras.activations.tanh) == "keras_fanin.LeCun()"
    assert recommended_initializer("sigmoid") == "keras_fanin.Xavier()"
    assert recommended_initializer("softplus_unknown") is None
