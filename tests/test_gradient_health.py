import math
import os
import warnings

import keras
import numpy as np
import pytest

import keras_fanin
from keras_fanin import GradientHealth, GradientHealthWarning
from tests.helpers import PROBE, custom_scalars_layout, grad_norms, read_scalars

BACKEND = keras.backend.backend()

FEATURES = 20


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, FEATURES)).astype("float32")
    y = (x[:, :1] + x[:, 1:2] > 0).astype("float32")
    return x, y


def diagnostic_model():
    """A healthy He ReLU layer feeding a dead ReLU branch, a saturated sigmoid
    branch and a tanh branch, so that gradients still reach the healthy layer."""
    inputs = keras.Input((FEATURES,))
    h = keras.layers.Dense(
        64, activation="relu", kernel_initializer=keras_fanin.He(seed=1), name="healthy"
    )(inputs)
    dead = keras.layers.Dense(
        32,
        activation="relu",
        bias_initializer=keras.initializers.Constant(-100.0),
        name="dead",
    )(h)
    saturated = keras.layers.Dense(
        32,
        activation="sigmoid",
        kernel_initializer=keras.initializers.RandomNormal(stddev=50.0, seed=2),
        name="saturated",
    )(h)
    tanh = keras.layers.Activation("tanh", name="tanh_act")(
        keras.layers.Dense(16, name="linear")(h)
    )
    merged = keras.layers.Concatenate(name="concat")([dead, saturated, tanh])
    outputs = keras.layers.Dense(1, activation="sigmoid", name="out")(merged)
    return keras.Model(inputs, outputs)


def fit(model, data, callback, epochs=1, batch_size=32, loss="binary_crossentropy",
        **kwargs):  # fmt: skip
    x, y = data
    model.compile(keras.optimizers.SGD(0.01), loss)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(x, y, batch_size=batch_size, epochs=epochs, verbose=0,
                  callbacks=[callback], **kwargs)  # fmt: skip
    return [w for w in caught if issubclass(w.category, GradientHealthWarning)]


def tape_grad_norms(model, x, y):
    """Per-layer gradient norms from an independent autodiff computation."""
    return grad_norms(model, x, y, training=False)


def test_signals_tags_values_and_warnings(tmp_path, data):
    x, y = data
    probe = (x[:128], y[:128])
    model = diagnostic_model()
    health = GradientHealth(tmp_path, probe, every_n_steps=None, probe_every_n_steps=3)
    caught = fit(model, data, health, epochs=2)
    scalars = read_scalars(tmp_path, PROBE)

    weighted = ["healthy", "dead", "linear", "saturated", "out"]
    expected = (
        {f"grad_norm/{n}" for n in weighted}
        | {f"activation_std/{n}" for n in [*weighted, "tanh_act", "concat"]}
        | {"dead_relu_fraction/healthy", "dead_relu_fraction/dead"}
        | {"saturated_sigmoid_fraction/saturated", "saturated_sigmoid_fraction/out"}
        | {"saturated_tanh_fraction/tanh_act", "probe_loss"}
    )
    assert set(scalars) == expected
    # 8 steps an epoch, 2 epochs: at start, every 3 steps, and at the end.
    steps = [0, 3, 6, 9, 12, 15, 16]
    assert int(model.optimizer.iterations.numpy()) == 16
    for tag, series in scalars.items():
        assert [s for s, _ in series] == steps, tag
        np.testing.assert_allclose(
            [v for _, v in series], [v for _, v in health.probe_history[tag]], rtol=1e-6
        )

    last = {tag: series[-1][1] for tag, series in scalars.items()}
    assert last["dead_relu_fraction/dead"] == 1.0
    assert last["activation_std/dead"] == 0.0
    assert last["grad_norm/dead"] == 0.0
    assert last["dead_relu_fraction/healthy"] < 0.1
    assert last["saturated_sigmoid_fraction/saturated"] > 0.9
    assert last["saturated_sigmoid_fraction/out"] < 0.1

    # grad_norm equals an independent autodiff computation on the probe.
    for name, norm in tape_grad_norms(model, *probe).items():
        assert last[f"grad_norm/{name}"] == pytest.approx(norm, rel=1e-5, abs=1e-9)

    messages = [str(w.message) for w in caught]
    assert sum("'dead' are dead" in m for m in messages) == 1  # once, not per step
    assert sum("sigmoid outputs of layer 'saturated'" in m for m in messages) == 1
    assert not any("'healthy'" in m and "dead" in m for m in messages)
    assert any("keras_fanin.He()" in m for m in messages)
    assert any("keras_fanin.Xavier()" in m for m in messages)
    # Advice judges the std the kernel was initialised with, not the trained one.
    saturated_msg = next(m for m in messages if "'saturated'" in m)
    assert "initialised with std 50;" in saturated_msg
    dead_msg = next(m for m in messages if "'dead' are dead" in m)
    glorot_std = math.sqrt(2 / (64 + 32))  # Keras's default kernel initializer
    assert f"initialised with std {glorot_std:.3g};" in dead_msg


def test_leaky_relus_use_the_dead_rule_but_are_never_called_dead(tmp_path, data):
    """Leaky units pushed negative for every example count like dead ReLUs
    (one chart for a ReLU run and its leaky fix), yet still get a gradient, so
    no 'dead' warning; the ReLU twin of the same layer gets none."""
    shift = keras.initializers.Constant(-100.0)
    inputs = keras.Input((FEATURES,))
    healthy = keras.layers.Dense(
        64,
        activation="leaky_relu",
        kernel_initializer=keras_fanin.He(negative_slope=0.2, seed=1),
        name="healthy_leaky",
    )(inputs)
    stuck = keras.layers.Dense(32, activation="leaky_relu", bias_initializer=shift,
                               name="stuck_leaky")(healthy)  # fmt: skip
    pre = keras.layers.Dense(16, bias_initializer=shift, name="pre")(healthy)
    layer_form = keras.layers.LeakyReLU(0.1, name="leaky_layer")(pre)
    relu_form = keras.layers.ReLU(negative_slope=0.1, name="relu_slope")(pre)
    dead = keras.layers.Dense(16, activation="relu", bias_initializer=shift,
                              name="dead_relu")(healthy)  # fmt: skip
    merged = keras.layers.Concatenate()([stuck, layer_form, relu_form, dead])
    model = keras.Model(inputs, keras.layers.Dense(1)(merged))
    health = GradientHealth(
        tmp_path, (data[0][:128], data[1][:128]), every_n_steps=None
    )
    # Logits: inputs near -20 saturate a sigmoid output, where only TF's
    # cross-entropy (which finds the logits behind a sigmoid) has a gradient;
    # the clipped probability of JAX and torch has none, for any layer.
    caught = fit(model, data, health, loss=keras.losses.BinaryCrossentropy(True))
    last = {tag: series[-1][1] for tag, series in read_scalars(tmp_path, PROBE).items()}

    for name in ["stuck_leaky", "leaky_layer", "relu_slope", "dead_relu"]:
        assert last[f"dead_relu_fraction/{name}"] == 1.0, name
    assert last["dead_relu_fraction/healthy_leaky"] < 0.1
    # The difference that matters: the leaky layer still learns, the ReLU not.
    assert last["grad_norm/stuck_leaky"] > 1e-4
    assert last["grad_norm/dead_relu"] == 0.0
    dead_warnings = [str(w.message) for w in caught if "are dead" in str(w.message)]
    assert len(dead_warnings) == 1 and "'dead_relu'" in dead_warnings[0]


def test_custom_scalars_layout_groups_each_signal(tmp_path, data):
    fit(
        diagnostic_model(),
        data,
        GradientHealth(tmp_path, data, every_n_steps=None, probe_every_n_steps=50),
    )
    layout = custom_scalars_layout(tmp_path, PROBE)
    charts = {c.title: list(c.multiline.tag) for c in layout.category[0].chart}
    assert charts["grad_norm"] == [r"^grad_norm/"]
    assert set(charts) >= {"grad_norm", "activation_std", "dead_relu_fraction"}


def test_traced_once_and_one_event_file(tmp_path, data):
    health = GradientHealth(tmp_path, data, every_n_steps=None, probe_every_n_steps=2)
    if BACKEND == "jax":
        # The jitted probe runs its Python (the stateless forward pass) only
        # while jax.jit traces it.
        passes, forward = [], health._probe._loss
        health._probe._loss = lambda *args: passes.append(1) or forward(*args)
    fit(diagnostic_model(), data, health, epochs=2)
    if BACKEND == "tensorflow":
        assert health._probe._fn.experimental_get_tracing_count() == 1
    elif BACKEND == "jax":
        assert len(passes) == 1
    # torch runs the probe eagerly: nothing is traced.
    assert sorted(os.listdir(tmp_path / "gradient_health")) == ["probe", "steps.json"]
    assert len(os.listdir(tmp_path / "gradient_health" / "probe")) == 1


def test_activation_std_follows_depth_with_bad_scale(tmp_path, data):
    """The lecture's picture: a gain of 1.5 on He grows the activations with depth."""
    layers = [keras.Input((FEATURES,))]
    for i in range(12):
        layers.append(keras.layers.Dense(
            64, activation="relu", name=f"d{i}",
            kernel_initializer=keras_fanin.He(gain=1.5, seed=keras.random.SeedGenerator(i)),
        ))  # fmt: skip
    layers.append(keras.layers.Dense(1, activation="sigmoid", name="out"))
    health = GradientHealth(tmp_path, data, every_n_steps=None, probe_every_n_steps=100)
    fit(keras.Sequential(layers), data, health, batch_size=256)
    stds = [health.probe_history[f"activation_std/d{i}"][0][1] for i in range(12)]
    growth = (stds[-1] / stds[1]) ** (1 / 10)
    assert 1.3 < growth < 1.7


def test_functional_nested_and_subclassed_models(tmp_path, data):
    inner = keras.Sequential(
        [
            keras.Input((32,)),
            keras.layers.Dense(16, activation="relu", name="inner_relu"),
        ],
        name="inner",
    )
    inputs = keras.Input((FEATURES,))
    h = keras.layers.Dense(32, name="stem")(inputs)
    h = keras.layers.ReLU(name="relu_layer")(h)
    h = inner(h)
    outputs = keras.layers.Dense(1, activation="sigmoid", name="head")(h)
    functional = keras.Model(inputs, outputs)
    health = GradientHealth(
        tmp_path / "functional", data, every_n_steps=None, probe_every_n_steps=100
    )
    fit(functional, data, health)
    assert {"dead_relu_fraction/relu_layer", "dead_relu_fraction/inner_relu",
            "grad_norm/inner_relu", "grad_norm/stem", "saturated_sigmoid_fraction/head",
            } <= set(read_scalars(tmp_path / "functional", PROBE))  # fmt: skip

    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.hidden = keras.layers.Dense(
                32,
                activation="relu",
                bias_initializer=keras.initializers.Constant(-100.0),
                name="sub_dead",
            )
            self.act = keras.layers.Activation("sigmoid", name="sub_sigmoid")
            self.head = keras.layers.Dense(1, name="sub_head")

        def call(self, x):
            return keras.activations.sigmoid(self.head(self.act(self.hidden(x))))

    net = Net()
    net(data[0][:2])
    health = GradientHealth(
        tmp_path / "subclassed", data, every_n_steps=None, probe_every_n_steps=100
    )
    fit(net, data, health)
    scalars = read_scalars(tmp_path / "subclassed", PROBE)
    assert scalars["dead_relu_fraction/sub_dead"][-1][1] == 1.0
    assert "saturated_sigmoid_fraction/sub_sigmoid" in scalars
    assert "grad_norm/sub_head" in scalars
    for name, norm in tape_grad_norms(net, *data).items():
        assert scalars[f"grad_norm/{name}"][-1][1] == pytest.approx(
            norm, rel=1e-5, abs=1e-9
        )


def test_sample_weights_in_probe(tmp_path, data):
    x, y = data
    weights = np.where(np.arange(len(x)) % 2 == 0, 1.0, 0.0).astype("float32")
    health = GradientHealth(
        tmp_path, (x, y, weights), every_n_steps=None, probe_every_n_steps=100
    )
    model = diagnostic_model()
    fit(model, data, health)
    half = GradientHealth(
        tmp_path / "half", (x[::2], y[::2]), every_n_steps=None, probe_every_n_steps=100
    )
    half.set_model(model)
    half._probe.prepare(model)
    _, _, half_loss = half._probe.measure()
    # Zero-weighted examples change the mean's denominator only: the weighted
    # loss over all examples is half of the loss over the weighted half.
    assert health.probe_history["probe_loss"][-1][1] == pytest.approx(
        half_loss / 2, rel=1e-5
    )


def test_nonfinite_values_warn_once_keep_logs_and_training_goes_on(tmp_path, data):
    x, _ = data
    y = (x[:, :1] * 1e3).astype("float32")
    model = keras.Sequential([
        keras.Input((FEATURES,)),
        keras.layers.Dense(64, activation="relu", name="a"),
        keras.layers.Dense(1, name="b"),
    ])  # fmt: skip
    model.compile(keras.optimizers.SGD(1e6), "mse")
    health = GradientHealth(tmp_path, (x, y), every_n_steps=None, probe_every_n_steps=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(
            x, y, batch_size=32, epochs=3, verbose=0, callbacks=[health]
        )
    assert len(history.history["loss"]) == 3  # fit went on
    nonfinite = [w for w in caught if "non-finite values" in str(w.message)]
    assert len(nonfinite) == 1
    message = str(nonfinite[0].message)
    assert "'a'" in message or "'b'" in message
    assert "NaN" in message or "inf" in message
    scalars = read_scalars(tmp_path, PROBE)
    steps = [s for s, _ in scalars["grad_norm/a"]]
    assert steps == list(range(25))  # every step kept, 24 steps + the start
    series = [v for _, v in scalars["grad_norm/a"]]
    assert math.isfinite(series[0])
    assert not all(math.isfinite(v) for v in series)
    # The last point is the backend's own gradient at the NaN weights: NaN on
    # TF and torch, 0 on JAX, whose relu has gradient 0 at NaN.
    expected = grad_norms(model, x, y, keras.losses.MeanSquaredError())["a"]
    assert series[-1] == pytest.approx(expected, nan_ok=True)
    assert math.isfinite(series[-1]) == (BACKEND == "jax")


def test_stop_on_nonfinite(tmp_path, data):
    x, _ = data
    y = (x[:, :1] * 1e3).astype("float32")
    model = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(1e6), "mse")
    health = GradientHealth(
        tmp_path,
        (x, y),
        every_n_steps=None,
        probe_every_n_steps=1,
        stop_on_nonfinite=True,
    )
    with pytest.warns(GradientHealthWarning, match="stopping training"):
        model.fit(x, y, batch_size=32, epochs=5, verbose=0, callbacks=[health])
    assert int(model.optimizer.iterations.numpy()) < 5 * 8


def test_interrupted_training_keeps_what_was_logged(tmp_path, data):
    class Interrupt(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 6:
                raise KeyboardInterrupt

    model = diagnostic_model()
    model.compile("sgd", "binary_crossentropy")
    health = GradientHealth(tmp_path, data, every_n_steps=None, probe_every_n_steps=2)
    with pytest.raises(KeyboardInterrupt):
        model.fit(
            *data, batch_size=32, epochs=3, verbose=0, callbacks=[health, Interrupt()]
        )
    steps = [s for s, _ in read_scalars(tmp_path, PROBE)["grad_norm/healthy"]]
    assert steps == [0, 2, 4, 6]


def test_probe_that_does_not_fit_fails_before_the_first_step(tmp_path, data):
    x, y = data
    model = diagnostic_model()
    model.compile("sgd", "binary_crossentropy")
    before = [w.copy() for w in model.get_weights()]
    for probe, message in [
        ((x[:, :5], y), r"Argument `data` does not fit the model"),
        (
            (x, np.zeros((len(x), 7), "float32")),
            r"Argument `data` does not fit the model",
        ),
    ]:
        health = GradientHealth(tmp_path, probe)
        with pytest.raises(ValueError, match=message):
            model.fit(x, y, epochs=1, verbose=0, callbacks=[health])
        assert int(model.optimizer.iterations.numpy()) == 0
    for w, b in zip(model.get_weights(), before, strict=True):
        np.testing.assert_array_equal(w, b)


def test_dataset_probe_takes_its_first_batch(tmp_path, data):
    import tensorflow as tf  # tf.data feeds fit() on every backend

    ds = tf.data.Dataset.from_tensor_slices(data).batch(64)
    health = GradientHealth(tmp_path, ds, every_n_steps=None, probe_every_n_steps=100)
    assert int(health._probe.batch[0].shape[0]) == 64


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"every_n_steps": 0}, ValueError, r"Argument `every_n_steps` must be a positive integer. Received: every_n_steps=0"),
        ({"every_n_steps": -3}, ValueError, r"every_n_steps=-3"),
        ({"every_n_steps": 2.5}, TypeError, r"every_n_steps=2.5"),
        ({"every_n_steps": True}, TypeError, r"every_n_steps=True"),
        ({"saturation_eps": 0}, ValueError, r"Argument `saturation_eps` must be a positive finite number"),
        ({"saturation_eps": 0.7}, ValueError, r"must be below 0.5"),
        ({"saturation_eps": "small"}, TypeError, r"saturation_eps='small'"),
        ({"stop_on_nonfinite": "yes"}, TypeError, r"Argument `stop_on_nonfinite` must be a bool"),
        ({"warn": 1}, TypeError, r"Argument `warn` must be a bool"),
        ({"data": [1, 2, 3, 4]}, TypeError, r"Argument `data` must be a probe batch"),
        ({"data": np.zeros((4, 3))}, TypeError, r"Argument `data` must be a probe batch"),
        ({"data": (np.zeros((4, 3)), None)}, ValueError, r"must hold both `x` and `y`"),
        ({"data": (np.zeros((4, 3)), np.zeros((5, 1)))}, ValueError, r"same number of examples.*\[4, 5\]"),
        ({"data": (np.zeros((0, 3)), np.zeros((0, 1)))}, ValueError, r"non-empty batch"),
        ({"data": ("abc", object())}, TypeError, r"must hold arrays or tensors"),
        ({"log_dir": 3}, TypeError, r"Argument `log_dir` must be a path"),
        ({"log_dir": ""}, ValueError, r"Argument `log_dir` must be a non-empty path"),
        ({"every_n_steps": 2**63}, ValueError, r"must be a positive integer of at most 2147483647. Received: every_n_steps=9223372036854775808"),
        ({"every_n_steps": 2**31}, ValueError, r"at most 2147483647"),
        ({"probe_every_n_steps": 2**40}, ValueError, r"Argument `probe_every_n_steps` must be a positive integer of at most"),
    ],
)  # fmt: skip
def test_bad_arguments(tmp_path, kwargs, error, message):
    args = {"log_dir": tmp_path, "data": (np.zeros((4, 3)), np.zeros((4, 1))), **kwargs}
    with pytest.raises(error, match=message):
        GradientHealth(**args)


def test_unwritable_log_dir_names_the_path(tmp_path):
    afile = tmp_path / "a_file"
    afile.write_text("not a directory")
    probe = (np.zeros((4, 3)), np.zeros((4, 1)))
    for bad in (afile, afile / "below"):
        with pytest.raises(
            ValueError, match=rf"log_dir='{bad}', which cannot be written"
        ):
            GradientHealth(bad, probe)
