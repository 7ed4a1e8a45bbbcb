import math

import keras
import numpy as np
import pytest

from keras_fanin import He, LeCun, Xavier, compute_fans


@pytest.mark.parametrize(
    "shape, axes, fans",
    [
        ((), (None, None), (1, 1)),
        ((7,), (None, None), (7, 7)),
        ((400, 300), (None, None), (400, 300)),
        ((5, 64, 128), (None, None), (320, 640)),
        ((3, 3, 96, 128), (None, None), (864, 1152)),
        ((3, 3, 3, 16, 32), (None, None), (432, 864)),
        ((256, 8, 32), ([0], [1, 2]), (256, 256)),
        ((8, 32, 256), ([0, 1], [2]), (256, 256)),
        ((256, 8, 32), ([0], None), (2048, 8192)),  # one of the pair is ignored
        ((0, 5), (None, None), (0, 5)),
    ],
)
def test_compute_fans(shape, axes, fans):
    assert compute_fans(shape, *axes) == fans


@pytest.mark.parametrize(
    "shape, error, message",
    [
        ((-3, 4), ValueError, r"Argument `shape` must be a sequence of non-negative integers. Received: shape=\(-3, 4\)"),
        ((3, -1, 4), ValueError, r"shape=\(3, -1, 4\)"),
        ((2.7, 4), TypeError, r"Argument `shape` must be a sequence of non-negative integers; item 0 is 2.7 of type float"),
        ((np.float64(3.0), 4), TypeError, r"item 0 is np.float64\(3.0\) of type float64"),
        ((True, 4), TypeError, r"item 0 is True of type bool"),
        ((np.bool_(True), 4), TypeError, r"item 0 is np.True_ of type bool"),
        ([3, None], TypeError, r"item 1 is None of type NoneType"),
        (5, TypeError, r"Argument `shape` must be a sequence of non-negative integers. Received: shape=5 of type int"),
        ("34", TypeError, r"Received: shape='34' of type str"),
        (np.int64(3), TypeError, r"Received: shape=np.int64\(3\) of type int64"),
    ],
)  # fmt: skip
def test_bad_shapes_are_refused_naming_shape(shape, error, message):
    with pytest.raises(error, match=message):
        compute_fans(shape)


def test_non_integer_dimensions_are_value_errors_in_keras_style():
    """`compute_fans((2.7, 4))` raises a ValueError, as Keras does for a shape it
    cannot read (and, as before, a TypeError: both `except`s catch it)."""
    message = (
        r"^Argument `shape` must be a sequence of non-negative integers; item 0 is "
        r"2.7 of type float. Received: shape=\(2.7, 4\)$"
    )
    for call in (
        lambda: compute_fans((2.7, 4)),
        lambda: He().stddev((2.7, 4)),
        lambda: He(seed=0)((2.7, 4)),
    ):
        with pytest.raises(ValueError, match=message) as info:
            call()
        assert isinstance(info.value, TypeError)
    for shape in [(4, np.float32(2.0)), (4, 2.0), (None, 4), (4, True)]:
        with pytest.raises(ValueError, match=r"Received: shape="):
            compute_fans(shape)
    # Integers of numpy's integer types stay dimensions.
    dims = (np.uint8(3), np.int16(4), np.int64(5))
    assert compute_fans(dims) == (12, 15)


def test_numpy_int_dims_are_accepted_as_python_ints():
    for shape in [(np.int64(3), np.int32(4)), np.array([3, 4]), [3, 4]]:
        fans = compute_fans(shape)
        assert fans == (3, 4) and {type(f) for f in fans} == {int}
    kernel = keras.Variable(np.zeros((2, 3, 5), "float32"))
    assert compute_fans(kernel.shape) == (6, 10)


def test_errors_never_print_array_contents():
    """A kernel passed for its shape is described by type and shape, not values."""
    kernel = np.random.default_rng(0).normal(size=(300, 400))
    cases = [
        (kernel, {}, r"shape=<ndarray of shape \(300, 400\) and dtype float64>"),
        (
            [kernel[0], 3],
            {},
            r"item 0 is <ndarray of shape \(400,\) and dtype float64>",
        ),
        (
            list(kernel[0]),
            {},
            r"item 0 is np.float64\(.*Received: shape=<list of length 400>",
        ),
        (
            (3, 4),
            {"input_axes": kernel, "output_axes": [1]},
            r"input_axes=<ndarray of shape \(300, 400\)",
        ),
    ]
    for shape, axes, message in cases:
        with pytest.raises(TypeError, match=message) as info:
            compute_fans(shape, **axes)
        assert len(str(info.value)) < 250, str(info.value)


@pytest.mark.parametrize(
    "axes, error, message",
    [
        (([0.5], [1]), TypeError, r"Argument `input_axes` must be None or a sequence of integers; item 0 is 0.5 of type float"),
        (([0], [True]), TypeError, r"Argument `output_axes` .* item 0 is True of type bool"),
        ((np.int64(0), [1]), TypeError, r"Argument `input_axes` must be None or a sequence of integers. Received: input_axes=np.int64\(0\)"),
        (([0], 1.5), TypeError, r"Argument `output_axes` must be None or a sequence of integers. Received: output_axes=1.5"),
        (([0, -2], [1]), ValueError, r"Argument `input_axes` holds the same axis twice. Received: input_axes=\[0, -2\]"),
        (([0], [2]), ValueError, r"Argument `output_axes` holds an axis outside a kernel of rank 2"),
    ],
)  # fmt: skip
def test_bad_axes_are_refused_naming_the_argument(axes, error, message):
    with pytest.raises(error, match=message):
        compute_fans((4, 6), *axes)


def test_numpy_int_axes_are_accepted():
    fans = compute_fans((256, 8, 32), np.array([0]), [np.int64(1), np.int32(-1)])
    assert fans == (256, 256)


def test_empty_kernel_does_not_divide_by_zero():
    assert He().stddev((0, 5)) == pytest.approx(math.sqrt(2.0))
    assert keras.ops.convert_to_numpy(He(seed=1)((0, 5))).shape == (0, 5)


def kernel_std(variable):
    return float(np.std(keras.ops.convert_to_numpy(variable)))


def build(layer, input_shape):
    layer.build(input_shape)
    return layer


# (layer factory taking an initializer, input shape, {weight name: fan_in}),
# with each fan_in written out by hand from the kernel's shape in Keras's layout.
LAYERS = {
    "Dense": (
        lambda i: keras.layers.Dense(300, kernel_initializer=i),
        (None, 400),
        {"kernel": 400},
    ),
    "Conv1D": (
        lambda i: keras.layers.Conv1D(128, 5, kernel_initializer=i),
        (None, 32, 64),
        {"kernel": 5 * 64},
    ),
    "Conv2D": (
        lambda i: keras.layers.Conv2D(128, 3, kernel_initializer=i),
        (None, 16, 16, 96),
        {"kernel": 9 * 96},
    ),
    "Conv3D": (
        lambda i: keras.layers.Conv3D(32, 3, kernel_initializer=i),
        (None, 8, 8, 8, 16),
        {"kernel": 27 * 16},
    ),
    # Keras stores a transposed kernel as (h, w, filters, in): its rule, which
    # these initializers follow as VarianceScaling does, reads shape[-2].
    "Conv2DTranspose": (
        lambda i: keras.layers.Conv2DTranspose(64, 3, kernel_initializer=i),
        (None, 8, 8, 128),
        {"kernel": 9 * 64},
    ),
    "Conv1DTranspose": (
        lambda i: keras.layers.Conv1DTranspose(128, 5, kernel_initializer=i),
        (None, 16, 64),
        {"kernel": 5 * 128},
    ),
    "SeparableConv2D": (
        lambda i: keras.layers.SeparableConv2D(
            128, 3, depthwise_initializer=i, pointwise_initializer=i
        ),
        (None, 16, 16, 1024),
        {"depthwise_kernel": 9 * 1024, "pointwise_kernel": 1024},
    ),
    "DepthwiseConv2D": (
        lambda i: keras.layers.DepthwiseConv2D(
            3, depth_multiplier=4, depthwise_initializer=i
        ),
        (None, 16, 16, 512),
        {"kernel": 9 * 512},
    ),
    "Embedding": (
        lambda i: keras.layers.Embedding(1000, 128, embeddings_initializer=i),
        (None, 10),
        {"embeddings": 1000},
    ),
    "LSTM": (
        lambda i: keras.layers.LSTM(128, kernel_initializer=i, recurrent_initializer=i),
        (None, 5, 256),
        {"kernel": 256, "recurrent_kernel": 128},
    ),
    "GRU": (
        lambda i: keras.layers.GRU(128, kernel_initializer=i, recurrent_initializer=i),
        (None, 5, 256),
        {"kernel": 256, "recurrent_kernel": 128},
    ),
    "EinsumDense": (
        lambda i: keras.layers.EinsumDense(
            "abc,cde->abde", output_shape=(None, 16, 32), kernel_initializer=i
        ),
        (None, 10, 512),
        {"kernel": 512},
    ),
}


def named_weights(layer):
    return {w.path.split("/")[-1]: w for w in layer.weights}


@pytest.mark.parametrize("kind", sorted(LAYERS))
@pytest.mark.parametrize(
    "init, formula",
    [
        (He(seed=2), lambda fan_in: math.sqrt(2 / fan_in)),
        (He(gain=0.5, negative_slope=0.3, seed=2), lambda f: 0.5 * math.sqrt(2 / (1.09 * f))),
        (LeCun(gain=5 / 3, seed=2), lambda fan_in: 5 / 3 * math.sqrt(1 / fan_in)),
    ],
    ids=["He", "He_leaky_gain", "LeCun_tanh"],
)  # fmt: skip
def test_fan_in_in_every_layer_kind(kind, init, formula):
    factory, input_shape, fans = LAYERS[kind]
    weights = named_weights(build(factory(init), input_shape))
    for name, fan_in in fans.items():
        # A few thousand values at least: the sample std is within ~2% here.
        assert np.size(weights[name]) >= 4096, name
        assert kernel_std(weights[name]) == pytest.approx(formula(fan_in), rel=0.05), (
            name
        )


def test_multi_head_attention_kernels_get_fans_from_their_axes():
    d_model, heads, key_dim = 256, 8, 32
    mha = keras.layers.MultiHeadAttention(
        num_heads=heads, key_dim=key_dim, kernel_initializer=He(seed=4)
    )
    x = np.zeros((2, 10, d_model), "float32")
    mha(x, x)
    for dense in (mha.query_dense, mha.key_dense, mha.value_dense):
        assert tuple(dense.kernel.shape) == (d_model, heads, key_dim)
        assert kernel_std(dense.kernel) == pytest.approx(
            math.sqrt(2 / d_model), rel=0.03
        )
    # The output projection's inputs are heads * key_dim = 256 units as well.
    assert kernel_std(mha.output_dense.kernel) == pytest.approx(
        math.sqrt(2 / (heads * key_dim)), rel=0.03
    )
    # Without the axes, the receptive-field rule would have given sqrt(2/2048).
    assert kernel_std(mha.query_dense.kernel) > 2 * math.sqrt(2 / (d_model * heads))


def test_einsum_dense_xavier_uses_both_axes():
    layer = keras.layers.EinsumDense(
        "ab,bcd->acd", output_shape=(16, 64), kernel_initializer=Xavier(seed=1)
    )
    layer.build((None, 1024))
    assert kernel_std(layer.kernel) == pytest.approx(
        math.sqrt(2 / (1024 + 16 * 64)), rel=0.03
    )
