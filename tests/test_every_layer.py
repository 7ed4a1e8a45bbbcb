"""No layer is invisible (issue 18): `check`, GradientHealth's advice and
`report` judge every layer with kernels, each with the fan rule it really has.

Depthwise and separable convolutions, recurrent layers, embeddings, attention
(and the layers of a user's composite layer), on hand-written fans, on stacks
drawn right and badly scaled, and on Keras Applications built with
`weights=None`. A badly scaled copy is the same model with every kernel
initializer replaced by `RandomNormal(std)`.
"""

import math
import warnings

import keras
import numpy as np
import pytest

import keras_fanin
from keras_fanin._check import check
from keras_fanin._fans import compute_fans, layer_kernels
from keras_fanin.health._advice import kernel_advice
from keras_fanin.health._units import Unit, find_units
from keras_fanin_logs._report import report
from tests.helpers import TRAIN, read_scalars

INITIALIZERS = (
    "kernel_initializer",
    "depthwise_initializer",
    "pointwise_initializer",
    "recurrent_initializer",
    "embeddings_initializer",
)


def scaled(model, std):
    """A copy of `model` whose kernel initializers all draw N(0, std)."""

    def replace(config):
        if isinstance(config, dict):
            return {
                k: keras.initializers.serialize(
                    keras.initializers.RandomNormal(stddev=std)
                )
                if k in INITIALIZERS
                else replace(v)
                for k, v in config.items()
            }
        if isinstance(config, list):
            return [replace(v) for v in config]
        return config

    return keras.models.clone_model(
        model,
        clone_function=lambda layer: type(layer).from_config(
            replace(layer.get_config())
        ),
    )


def built(layer, *shapes):
    inputs = [np.zeros(s, "float32") for s in shapes]
    layer(*inputs)
    return layer


def kernels_by_name(layer):
    return {k.name: k for k in layer_kernels(layer)}


# -- the fan rule of each kernel, written out by hand -------------------------


def test_depthwise_kernels_sum_one_channel_over_the_receptive_field():
    dw = built(keras.layers.DepthwiseConv2D(3, depth_multiplier=2), (1, 8, 8, 16))
    (kernel,) = layer_kernels(dw)
    assert kernel.shape == (3, 3, 16, 2)
    # Keras's layout rule would say 3 * 3 * 16 = 144: the channels are not summed.
    assert (kernel.fan_in, kernel.fan_out) == (9, 18)
    assert compute_fans(kernel.shape) == (144, 18)
    assert kernel.argument == "depthwise_initializer"
    sep = built(keras.layers.SeparableConv1D(32, 5, depth_multiplier=2), (1, 20, 8))
    depthwise, pointwise = layer_kernels(sep)
    assert (depthwise.name, depthwise.fan_in, depthwise.stage) == (
        "depthwise_kernel", 5, 0,
    )  # fmt: skip
    assert not depthwise.activated  # no activation between the two kernels
    assert (pointwise.name, pointwise.fan_in, pointwise.stage) == (
        "pointwise_kernel", 16, 1,
    )  # fmt: skip
    assert pointwise.activated


def test_recurrent_embedding_attention_and_composite_fans():
    lstm = kernels_by_name(built(keras.layers.LSTM(12), (1, 5, 7)))
    assert (lstm["kernel"].fan_in, lstm["recurrent_kernel"].fan_in) == (7, 12)
    assert lstm["recurrent_kernel"].side and lstm["kernel"].gated
    bi = kernels_by_name(
        built(keras.layers.Bidirectional(keras.layers.GRU(4)), (1, 5, 3))
    )
    assert sorted(bi) == [
        "backward/kernel", "backward/recurrent_kernel",
        "forward/kernel", "forward/recurrent_kernel",
    ]  # fmt: skip
    assert bi["forward/kernel"].fan_in == 3
    (table,) = layer_kernels(built(keras.layers.Embedding(100, 8), (1, 4)))
    assert (table.name, table.fan_in, table.fan_out) == ("embeddings", 1, 8)
    mha = keras.layers.MultiHeadAttention(num_heads=4, key_dim=6)
    mha = kernels_by_name(built(mha, (1, 5, 10), (1, 5, 10)))
    assert {n: (k.fan_in, k.stage, k.side) for n, k in mha.items()} == {
        "query/kernel": (10, 0, True),
        "key/kernel": (10, 0, True),
        "value/kernel": (10, 0, False),
        "attention_output/kernel": (24, 1, False),  # heads * key_dim
    }
    block = built(Block(), (1, 5, 16))
    attention = block.attention.name
    names = [k.name for k in layer_kernels(block)]
    assert names == [
        f"{attention}/query/kernel", f"{attention}/key/kernel",
        f"{attention}/value/kernel", f"{attention}/attention_output/kernel",
        f"{block.ffn.name}/{block.ffn.layers[0].name}/kernel",
        f"{block.ffn.name}/{block.ffn.layers[1].name}/kernel",
    ]  # fmt: skip
    assert layer_kernels(keras.layers.BatchNormalization()) == []


def test_every_layer_with_kernels_is_a_kernel_unit():
    inputs = keras.Input((6,), dtype="int32")
    h = keras.layers.Embedding(20, 8, name="emb")(inputs)
    h = keras.layers.SeparableConv1D(8, 3, padding="same", name="sep")(h)
    h = keras.layers.DepthwiseConv1D(3, padding="same", name="dw")(h)
    h = keras.layers.MultiHeadAttention(2, 4, name="mha")(h, h)
    h = keras.layers.LayerNormalization(name="ln")(h)
    h = keras.layers.LSTM(4, name="lstm")(h)
    model = keras.Model(inputs, keras.layers.Dense(1, name="out")(h))
    kernel = {u.name: u.has_kernel for u in find_units(model)}
    assert kernel == {
        "emb": True, "sep": True, "dw": True, "mha": True, "ln": False,
        "lstm": True, "out": True,
    }  # fmt: skip


# -- check --------------------------------------------------------------------


def separable_stack(init, depth=12, width=16):
    """The issue's stack: SeparableConv1D ReLU layers and a Dense head."""
    layers = [keras.Input((24, width))]
    for _ in range(depth):
        layers.append(
            keras.layers.SeparableConv1D(
                width, 3, padding="same", activation="relu",
                depthwise_initializer=init("depthwise"),
                pointwise_initializer=init("pointwise"),
            )
        )  # fmt: skip
    layers += [keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(4)]
    return keras.Sequential(layers)


def _advised(kind):
    # What check advises: the depthwise kernel's own fans (it is linear:
    # nothing between it and the pointwise kernel), He for the ReLU.
    if kind == "depthwise":
        return keras_fanin.LeCun(input_axes=[0], output_axes=[0, 2])
    return keras_fanin.He()


def test_separable_stack_drawn_with_std_001_is_flagged():
    bad = separable_stack(lambda _: keras.initializers.RandomNormal(stddev=0.01))
    report = check(bad)
    assert not report.ok
    assert [r.layer_type for r in report.layers] == ["SeparableConv1D"] * 12 + ["Dense"]
    problem = report.problems[0]
    assert problem.startswith("12 relu layers initialised with RandomNormal")
    assert "signal shrinks" in problem
    assert (
        "use depthwise_initializer=keras_fanin.LeCun(input_axes=[0], "
        "output_axes=[0, 2]) and pointwise_initializer=keras_fanin.He()" in problem
    )
    first = report.layers[0]
    depthwise, pointwise = first.kernels
    assert (depthwise.fan_in, depthwise.activation) == (3, "linear")
    assert (pointwise.fan_in, pointwise.activation) == (16, "relu")
    assert depthwise.ratio == pytest.approx(0.01 * math.sqrt(3))
    assert pointwise.ratio == pytest.approx(0.01 / math.sqrt(2 / 16))
    assert first.ratio == pytest.approx(depthwise.ratio * pointwise.ratio)
    text = str(report)
    assert max(len(line) for line in text.splitlines()) <= 100
    assert "  depthwise" in text and "  pointwise" in text


def test_separable_stack_with_the_advised_initializers_is_ok():
    report = check(separable_stack(_advised))
    assert report.ok, report.problems
    assert all(
        k.ratio == pytest.approx(1.0) for r in report.layers[:-1] for k in r.kernels
    )
    # He() alone draws the depthwise kernel with Keras's layout fans (3 * 16):
    # 1/4 of the std, layer after layer.
    he = check(separable_stack(lambda _: keras_fanin.He()))
    assert not he.ok
    assert "depthwise_initializer=keras_fanin.LeCun(input_axes=[0]" in he.problems[0]


def rnn_stack(kind, init=None, depth=3, units=16, features=8):
    kwargs = {} if init is None else {"kernel_initializer": init(),
                                      "recurrent_initializer": init()}  # fmt: skip
    layers = [keras.Input((10, features))]
    for i in range(depth):
        layer = getattr(keras.layers, kind)(
            units, return_sequences=i < depth - 1, **kwargs
        )
        layers.append(layer)
    layers.append(keras.layers.Dense(1))
    return keras.Sequential(layers)


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_rnn_stacks_ok_at_init_and_flagged_when_badly_scaled(kind):
    good = check(rnn_stack(kind))
    assert good.ok, good.problems
    layer = good.layers[0]
    assert (layer.activation, layer.gated) == ("rnn", True)
    assert [k.name for k in layer.kernels] == ["kernel", "recurrent_kernel"]
    # Keras's defaults sit below LeCun's std, inside the gated band.
    assert 0.4 < layer.kernels[0].ratio < 1 and 0.4 < layer.kernels[1].ratio < 1

    def normal(std):
        return lambda: keras.initializers.RandomNormal(stddev=std)

    small = check(rnn_stack(kind, normal(0.01)))
    assert any(
        p.startswith("3 rnn layers initialised with RandomNormal")
        and "signal shrinks" in p
        and "recurrent_initializer='orthogonal'" in p
        for p in small.problems
    ), small.problems
    large = check(rnn_stack(kind, normal(10.0)))
    assert any("(rnn, its gates)" in p for p in large.problems), large.problems
    assert large.layers[0].saturated_fraction > 0.5


class Block(keras.layers.Layer):
    """A user's post-LN Transformer block, built from Keras layers."""

    def __init__(self, width=16, heads=2, hidden=32, init="glorot_uniform", **kw):
        super().__init__(**kw)
        self.attention = keras.layers.MultiHeadAttention(
            heads, width // heads, kernel_initializer=init
        )
        self.ffn = keras.Sequential([
            keras.layers.Dense(hidden, "relu", kernel_initializer=init),
            keras.layers.Dense(width, kernel_initializer=init),
        ])  # fmt: skip
        self.norm1 = keras.layers.LayerNormalization()
        self.norm2 = keras.layers.LayerNormalization()

    def call(self, x):
        x = self.norm1(x + self.attention(x, x))
        return self.norm2(x + self.ffn(x))


def functional_transformer(width=16, heads=2, hidden=32):
    inputs = keras.Input((8, width))
    a = keras.layers.MultiHeadAttention(heads, width // heads, name="mha")(
        inputs, inputs
    )
    h = keras.layers.LayerNormalization()(keras.layers.Add()([inputs, a]))
    f = keras.layers.Dense(hidden, activation="relu", name="ffn_in")(h)
    f = keras.layers.Dense(width, name="ffn_out")(f)
    h = keras.layers.LayerNormalization()(keras.layers.Add()([h, f]))
    h = keras.layers.GlobalAveragePooling1D()(h)
    outputs = keras.layers.Dense(3, activation="softmax", name="head")(h)
    return keras.Model(inputs, outputs)


def block_transformer(init="glorot_uniform"):
    inputs = keras.Input((8, 16))
    h = Block(init=init, name="block")(inputs)
    h = keras.layers.GlobalAveragePooling1D()(h)
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(h))


def test_transformer_blocks_ok_at_init_and_flagged_when_badly_scaled():
    for model in (functional_transformer(), block_transformer()):
        report = check(model)
        assert report.ok, report.problems
    # check looks into a user's block: its attention and feed-forward layers.
    model = block_transformer()
    block = model.get_layer("block")
    names = [r.name for r in check(model).layers]
    assert names[:3] == [
        block.attention.name,
        block.ffn.layers[0].name,
        block.ffn.layers[1].name,
    ]

    report = check(scaled(functional_transformer(), 10.0))
    text = " ".join(report.problems)
    # The feed-forward chain grows; attention and the head saturate.
    assert "signal grows" in text and "'ffn_in' to 'ffn_out'" in text
    mha = next(r for r in report.layers if r.name == "mha")
    assert mha.saturated_fraction > 0.9
    assert [k.on_path for k in mha.kernels] == [False, False, True, True]
    # A user's block drawn with std 10 (the head is Keras's): its attention
    # saturates, and its feed-forward net grows.
    model = block_transformer(keras.initializers.RandomNormal(stddev=10.0))
    block = model.get_layer("block")
    problems = check(model).problems
    (saturated,) = [p for p in problems if "saturated" in p]
    assert f"in {block.attention.name!r} (its attention weights)" in saturated
    assert "use kernel_initializer=keras_fanin.LeCun()." in saturated
    assert any(f"from {block.ffn.layers[0].name!r}" in p for p in problems)


def test_a_vanishing_signal_is_never_ok():
    """Every kernel follows the fan rule, yet a layer in between scales the
    signal by 1e-7: no initializer predicts it, and it is still a problem."""
    he = keras_fanin.He
    model = keras.Sequential([
        keras.Input((16,)),
        keras.layers.Dense(16, "relu", kernel_initializer=he(), name="a"),
        keras.layers.Dense(16, "relu", kernel_initializer=he(), name="b"),
        keras.layers.Rescaling(1e-7),
        keras.layers.Dense(16, "relu", kernel_initializer=he(), name="c"),
        keras.layers.Dense(1, name="head"),
    ])  # fmt: skip
    report = check(model)
    (problem,) = report.problems
    assert problem.startswith("The signal vanishes: layer 'c' gets inputs of std")
    assert "no layer before it draws a std off the fan rule" in problem
    without = keras.Sequential(
        [keras.Input((16,))]
        + [layer for layer in model.layers if layer.name != "rescaling"]
    )
    assert check(without).ok


# -- Keras Applications, weights=None ------------------------------------------


def _application(name):
    if name == "Xception":  # 71 x 71 is its smallest input
        return keras.applications.Xception(
            weights=None, input_shape=(71, 71, 3), classes=10
        )
    return keras.applications.MobileNet(
        weights=None, input_shape=(32, 32, 3), alpha=0.25, classes=10
    )


@pytest.mark.parametrize(
    "name", ["MobileNet", pytest.param("Xception", marks=pytest.mark.slow)]
)
def test_applications_ok_at_init_and_flagged_when_badly_scaled(name):
    model = _application(name)
    x = np.random.default_rng(0).standard_normal((2, *model.input_shape[1:]))
    x = x.astype("float32")
    report = check(model, x)
    assert report.ok, report.problems
    kinds = {r.layer_type for r in report.layers}
    assert {"SeparableConv2D" if name == "Xception" else "DepthwiseConv2D"} <= kinds
    # BatchNorm follows every convolution: Keras's depthwise Glorot, far below
    # the depthwise fan rule, is normalised before it compounds.
    depthwise = [r for r in report.layers if "Depthwise" in r.layer_type]
    assert all(r.normalized for r in depthwise)

    # std 0.01: the inputs of the BatchNorms fall below their epsilon, which
    # then shrinks the signal instead of normalising it.
    small = check(scaled(model, 0.01), x)
    assert any("signal shrinks" in p for p in small.problems), small.problems
    assert any("normalization layers" in p for p in small.problems)
    # std 10: BatchNorm absorbs it, but the softmax head saturates.
    large = check(scaled(model, 10.0), x)
    assert any(
        "saturated" in p and "(softmax)" in p and "keras_fanin.Xavier()" in p
        for p in large.problems
    ), large.problems


# -- GradientHealth's advice and report -----------------------------------------


def _fit(model, log_dir, x, y, loss):
    model.compile(keras.optimizers.SGD(1e-3), loss)
    health = keras_fanin.GradientHealth(log_dir, every_n_steps=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[health])
    return [
        str(w.message)
        for w in caught
        if issubclass(w.category, keras_fanin.GradientHealthWarning)
    ]


def _layer_table(log_dir):
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.util import tensor_util

    acc = event_accumulator.EventAccumulator(
        str(log_dir / TRAIN), size_guidance={event_accumulator.TENSORS: 0}
    )
    acc.Reload()
    rows = tensor_util.make_ndarray(acc.Tensors("layers")[0].tensor_proto)
    return {r[0].decode(): r[2].decode() for r in rows}


def test_gradient_health_sees_separable_layers_vanish(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 24, 16)).astype("float32")
    y = rng.standard_normal((64, 4)).astype("float32")
    model = separable_stack(
        lambda _: keras.initializers.RandomNormal(stddev=0.01), depth=6
    )
    messages = _fit(model, tmp_path, x, y, "mse")
    separable = [layer.name for layer in model.layers[:6]]
    assert _layer_table(tmp_path) == {
        **dict.fromkeys(separable, "kernel"),
        "global_average_pooling1d": "",
        "dense": "kernel",
    }
    (depth,) = [m for m in messages if "vanishing gradients" in m]
    assert f"first layer {separable[0]!r}" in depth
    assert (
        "depthwise_initializer=keras_fanin.LeCun(input_axes=[0], output_axes=[0, 2])"
        in depth
    )
    scalars = read_scalars(tmp_path)
    first = scalars[f"grad_norm/{separable[0]}"][0][1]
    last = scalars["grad_norm/dense"][0][1]
    assert first < 1e-3 * last
    result = report(tmp_path)
    assert result.runs[TRAIN].vanishing_since == 0
    assert "vanishing gradients from step 0" in str(result)
    # The dead-unit advice names the kernel that the ReLU follows.
    layer = model.layers[3]
    advice = kernel_advice(layer, "relu", "keras_fanin.He()")
    assert advice.startswith(" Its pointwise kernel was initialised with std 0.01")
    assert "try pointwise_initializer=keras_fanin.He()" in advice


def test_gradient_health_judges_lstm_stacks(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 10, 8)).astype("float32")
    y = rng.standard_normal((64, 1)).astype("float32")
    healthy = _fit(rnn_stack("LSTM"), tmp_path / "good", x, y, "mse")
    assert not any("gradients at step" in m for m in healthy), healthy
    assert report(tmp_path / "good").runs[TRAIN].vanishing_since is None

    large = rnn_stack("LSTM", lambda: keras.initializers.RandomNormal(stddev=10.0))
    messages = _fit(large, tmp_path / "bad", x, y, "mse")
    (exploding,) = [m for m in messages if "exploding gradients at step" in m]
    assert f"the first layer {large.layers[0].name!r}" in exploding
    step = int(exploding.split("at step ")[1].split(":")[0])
    assert step <= 1  # each backend draws its own weights
    assert report(tmp_path / "bad").runs[TRAIN].exploding_since == step


def test_gradient_health_transformer_block_raises_no_false_alarm(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 8, 16)).astype("float32")
    y = rng.integers(0, 3, 64)
    model = functional_transformer()
    messages = _fit(model, tmp_path, x, y, "sparse_categorical_crossentropy")
    assert messages == []
    table = _layer_table(tmp_path)
    assert table["mha"] == "kernel" and table["layer_normalization"] == ""
    run = report(tmp_path).runs[TRAIN]
    assert (run.vanishing_since, run.exploding_since) == (None, None)


def test_unit_kernel_cache_starts_false_until_built():
    layer = keras.layers.SeparableConv2D(4, 3)
    unit = Unit(layer, "sep", 0)
    assert not unit.has_kernel  # not built: no kernel yet
    layer.build((None, 8, 8, 3))
    assert unit.has_kernel
