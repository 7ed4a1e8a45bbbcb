"""GradientHealth on the models and workflows a new user brings (issue 9).

Each test here failed before its fix: a second fit(), a reused callback, unbuilt
models, BatchNorm, NaN weights, nested sample weights, remote log dirs and
datasets that are empty or unbatched.
"""

import os
import re
import warnings

import keras
import numpy as np
import pytest

import keras_fanin
from keras_fanin import GradientHealth, GradientHealthWarning
from keras_fanin.health import _callback
from keras_fanin_logs.judge import DEAD_WARN_FRACTION
from tests.helpers import PROBE, grad_norms, read_scalars

FEATURES = 8


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(128, FEATURES)).astype("float32")
    y = (x[:, :1] - x[:, 1:2] > 0).astype("float32")
    return x, y


def mlp(name="mlp", hidden=("h1", "h2")):
    layers = [keras.Input((FEATURES,))]
    for i, layer_name in enumerate(hidden):
        layers.append(keras.layers.Dense(
            16, activation="relu", name=layer_name,
            kernel_initializer=keras_fanin.He(seed=i)))  # fmt: skip
    layers.append(keras.layers.Dense(1, activation="sigmoid", name="out"))
    return keras.Sequential(layers, name=name)


def fit(model, data, health, **kwargs):
    kwargs = {"batch_size": 32, "epochs": 1, "verbose": 0, **kwargs}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(*data, callbacks=[health], **kwargs)
    return [str(w.message) for w in caught if w.category is GradientHealthWarning]


def assert_norms_match(scalars, model, probe, **kwargs):
    expected = grad_norms(model, *probe, **kwargs)
    assert expected
    for name, norm in expected.items():
        assert scalars[f"grad_norm/{name}"][-1][1] == pytest.approx(
            norm, rel=1e-5, abs=1e-9
        ), name


def test_second_fit_after_freeze_unfreeze_and_recompile(tmp_path, data):
    model = mlp()
    health = GradientHealth(tmp_path, data, every_n_steps=None, probe_every_n_steps=2)
    model.layers[0].trainable = False
    model.compile(keras.optimizers.SGD(0.05), "binary_crossentropy")
    fit(model, data, health)  # 4 steps
    assert "grad_norm/h1" not in health.probe_history
    model.layers[0].trainable = True
    model.compile(keras.optimizers.SGD(0.05), "binary_crossentropy")
    fit(model, data, health)  # a new optimizer: steps go on
    fit(model, data, health)  # the same compiled model again: steps go on
    scalars = read_scalars(tmp_path, PROBE)
    # Step 4 was measured at the end of the first fit(), while h1 was frozen.
    assert [s for s, _ in scalars["grad_norm/h1"]] == [6, 8, 10, 12]
    assert [s for s, _ in scalars["grad_norm/h2"]] == [0, 2, 4, 6, 8, 10, 12]
    assert_norms_match(scalars, model, data)
    # One event file per fit(), all in the one run.
    assert len(os.listdir(tmp_path / "gradient_health" / "probe")) == 3


def test_callback_reused_on_another_model_measures_that_model(tmp_path, data):
    health = GradientHealth(tmp_path, data, every_n_steps=None, probe_every_n_steps=100)
    first = mlp("first", ("a1", "a2"))
    first.compile("sgd", "binary_crossentropy")
    fit(first, data, health)
    second = mlp("second", ("b1", "b2", "b3"))
    second.compile("sgd", "binary_crossentropy")
    fit(second, data, health)
    scalars = read_scalars(tmp_path, PROBE)
    assert {"grad_norm/b1", "grad_norm/b3", "dead_relu_fraction/b3"} <= set(scalars)
    assert_norms_match(scalars, second, data)


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.hidden = keras.layers.Dense(16, activation="relu", name="sub_hidden")
        self.out = keras.layers.Dense(1, activation="sigmoid", name="sub_out")

    def call(self, x):
        return self.out(self.hidden(x))


def test_unbuilt_subclassed_and_input_less_sequential(tmp_path, data):
    for name, model in [
        ("subclassed", Subclassed()),
        ("sequential", keras.Sequential([
            keras.layers.Dense(16, activation="relu", name="sub_hidden"),
            keras.layers.Dense(1, activation="sigmoid", name="sub_out")])),
    ]:  # fmt: skip
        assert not model.built
        model.compile("sgd", "binary_crossentropy")
        health = GradientHealth(
            tmp_path / name, data, every_n_steps=None, probe_every_n_steps=2
        )
        fit(model, data, health)
        scalars = read_scalars(tmp_path / name, PROBE)
        assert {"grad_norm/sub_hidden", "grad_norm/sub_out",
                "dead_relu_fraction/sub_hidden"} <= set(scalars), name  # fmt: skip
        assert_norms_match(scalars, model, data)


def bn_net(seed=0):
    inputs = keras.Input((FEATURES,))
    h = inputs
    for i in range(3):
        h = keras.layers.Dense(32, use_bias=False, name=f"dense{i}",
                               kernel_initializer=keras_fanin.He(seed=seed + i))(h)  # fmt: skip
        h = keras.layers.BatchNormalization(name=f"bn{i}")(h)
        h = keras.layers.ReLU(name=f"relu{i}")(h)
        h = keras.layers.Dropout(0.2, name=f"drop{i}")(h)
    outputs = keras.layers.Dense(1, activation="sigmoid", name="out")(h)
    model = keras.Model(inputs, outputs)
    model.compile(keras.optimizers.SGD(0.05), "binary_crossentropy")
    return model


def test_batchnorm_probe_in_training_mode_changes_no_state(tmp_path, data):
    """Training mode by default (the step's own BatchNorm behaviour), yet the
    probe moves no statistic or seed: training is identical with and without."""
    x, y = data
    shifted = (x * 5.0 + 3.0, y)  # far from the untrained moving statistics
    trained = []
    for health in (
        None,
        GradientHealth(tmp_path, shifted, every_n_steps=None, probe_every_n_steps=1),
    ):
        keras.utils.set_random_seed(7)
        model = bn_net()
        model.fit(*shifted, batch_size=32, epochs=2, verbose=0, shuffle=False,
                  callbacks=[health] if health else [])  # fmt: skip
        trained.append([w.copy() for w in model.get_weights()])
    for a, b in zip(*trained, strict=True):
        np.testing.assert_array_equal(a, b)

    # The probe's numbers are the training-mode gradients (no dropout here:
    # the reference draws other masks, so compare a dropout-free twin).
    keras.utils.set_random_seed(7)
    model = bn_net()
    for layer in model.layers:
        if isinstance(layer, keras.layers.Dropout):
            layer.rate = 0.0
    health = GradientHealth(
        tmp_path / "nodrop", shifted, every_n_steps=None, probe_every_n_steps=100
    )
    fit(model, shifted, health)
    assert_norms_match(read_scalars(tmp_path / "nodrop", PROBE), model, shifted)


def test_advice_names_only_layers_with_a_kernel(tmp_path, data):
    """30 LeCun ReLU layers vanish. A BatchNorm in front has weights but no
    kernel: the depth warning names the first Dense layer instead, and a dead
    `ReLU` layer (no kernel either) gets no initializer advice."""
    shift = keras.initializers.Constant(-100.0)
    layers = [keras.Input((FEATURES,)), keras.layers.BatchNormalization(name="bn_in")]
    for i in range(30):
        layers.append(keras.layers.Dense(32, activation="relu", name=f"d{i}",
                                         kernel_initializer=keras_fanin.LeCun(seed=i)))  # fmt: skip
    layers += [keras.layers.Dense(8, bias_initializer=shift, name="pre"),
               keras.layers.ReLU(name="dead_act"),
               keras.layers.Dense(1, activation="sigmoid", name="out")]  # fmt: skip
    model = keras.Sequential(layers)
    model.compile(keras.optimizers.SGD(1e-4), "binary_crossentropy")
    health = GradientHealth(tmp_path, data, every_n_steps=None, probe_every_n_steps=100)
    messages = fit(model, data, health)
    depth = [m for m in messages if "vanishing gradients" in m]
    assert len(depth) == 1
    assert "first layer 'd0'" in depth[0] and "last layer 'out'" in depth[0]
    dead = [m for m in messages if "are dead" in m]
    named = {re.search(r"layer '(\w+)'", m)[1]: m for m in dead}
    assert len(named) == len(dead)  # each layer once
    assert "kernel" not in named.pop("dead_act")
    # As the signal vanishes, a deep layer can have most of its units dead for
    # every probe example; whether one does depends on the draw, and each
    # backend draws its own weights. Any such warning must match the logs.
    for name in named:
        fraction = health.probe_history[f"dead_relu_fraction/{name}"][0][1]
        assert name.startswith("d") and fraction > DEAD_WARN_FRACTION, name
    assert not any("bn_in" in m for m in messages)


def test_nan_kernel_is_reported_as_nan_and_stops(tmp_path, data):
    model = mlp()
    # Not cross-entropy: torch's raises on a NaN probability (in Keras's own
    # training step as well).
    model.compile("sgd", "mse")
    kernel = model.get_layer("h2").kernel
    kernel.assign(np.full(kernel.shape, np.nan, "float32"))
    health = GradientHealth(
        tmp_path,
        data,
        every_n_steps=None,
        probe_every_n_steps=1,
        stop_on_nonfinite=True,
    )
    messages = fit(model, data, health, epochs=3)
    assert len(messages) == 1, messages
    assert "NaN in the weights of layer 'h2'" in messages[0]
    assert "stopping training" in messages[0]
    assert int(model.optimizer.iterations.numpy()) <= 1
    # ReLU(NaN) reads as 0 downstream; that must not be called dead/vanishing.
    assert not any("dead" in m or "vanishing" in m for m in messages)


def test_multi_output_dict_model_with_dataset_and_dict_sample_weight(tmp_path, data):
    x, y = data
    inputs = keras.Input((FEATURES,), name="features")
    h = keras.layers.Dense(16, activation="relu", name="trunk")(inputs)
    outputs = {
        "cls": keras.layers.Dense(1, activation="sigmoid", name="cls")(h),
        "reg": keras.layers.Dense(1, name="reg")(h),
    }
    model = keras.Model({"features": inputs}, outputs)
    model.compile("sgd", {"cls": "binary_crossentropy", "reg": "mse"})
    ys = {"cls": y, "reg": x[:, :1]}
    weights = {"cls": np.ones(len(x), "float32"), "reg": np.zeros(len(x), "float32")}
    probe = ({"features": x}, ys, weights)
    health = GradientHealth(tmp_path, probe, every_n_steps=None, probe_every_n_steps=2)
    import tensorflow as tf  # tf.data feeds fit() on every backend

    dataset = tf.data.Dataset.from_tensor_slices(({"features": x}, ys, weights))
    messages = fit(model, (dataset.batch(32),), health, batch_size=None)
    # The zero-weighted head has no gradient: no "exploding" by division by 0.
    assert messages == []
    scalars = read_scalars(tmp_path, PROBE)
    assert {"grad_norm/trunk", "grad_norm/cls", "grad_norm/reg"} <= set(scalars)
    # The zero-weighted output has no gradient; the probe loss is Keras's own.
    assert scalars["grad_norm/reg"][-1][1] == 0.0
    loss = model.evaluate(*probe[:2], sample_weight=weights, batch_size=len(x),
                          verbose=0, return_dict=True)  # fmt: skip
    assert scalars["probe_loss"][-1][1] == pytest.approx(loss["loss"], rel=1e-5)


def test_errors_never_print_array_contents(tmp_path, data):
    x, y = data
    marker = np.full((len(x), 3), 98765.4321, "float32")  # does not fit the model
    model = mlp()
    model.compile("sgd", "binary_crossentropy")
    with pytest.raises(ValueError, match="does not fit the model") as error:
        fit(model, data, GradientHealth(tmp_path, (marker, y)))
    assert "98765" not in str(error.value)
    with pytest.raises(TypeError) as error:
        GradientHealth(tmp_path, (x, y, {"cls": marker, "bad": object()}))
    assert "98765" not in str(error.value)


def test_remote_log_dir_is_checked_not_created(tmp_path, data, monkeypatch):
    monkeypatch.chdir(tmp_path)
    GradientHealth("gs://some-bucket/logs", data)
    GradientHealth(tmp_path / "not" / "yet", data)
    assert os.listdir(tmp_path) == []  # checked, not created


@pytest.mark.tf_only  # ram:// is a file system of TensorFlow's tf.io.gfile
def test_remote_log_dir_goes_through_gfile_and_creates_nothing_local(
    tmp_path, data, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    # ram:// is TensorFlow's in-memory file system: a real remote-style path.
    model = mlp()
    model.compile("sgd", "binary_crossentropy")
    fit(
        model,
        data,
        GradientHealth(
            "ram://health/logs", data, every_n_steps=None, probe_every_n_steps=2
        ),
    )
    assert os.listdir(tmp_path) == []
    scalars = read_scalars("ram://health/logs", PROBE)
    assert [s for s, _ in scalars["grad_norm/h1"]] == [0, 2, 4]


def _tf_data():
    import tensorflow as tf  # tf.data feeds fit() on every backend

    return tf.data


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda x, y: _tf_data().Dataset.from_tensor_slices((x, y)).take(0).batch(4),
         ValueError, r"empty tf.data.Dataset.*at least one"),
        (lambda x, y: _tf_data().Dataset.from_tensor_slices((x, y)),
         ValueError, r"looks unbatched.*\.batch\(batch_size\)"),
    ],
)  # fmt: skip
def test_dataset_probe_errors_say_what_to_do(tmp_path, data, make, error, message):
    with pytest.raises(error, match=message):
        GradientHealth(tmp_path, make(*data))


def test_history_is_capped(tmp_path, data, monkeypatch):
    monkeypatch.setattr(_callback, "HISTORY_LIMIT", 3)
    model = mlp()
    model.compile("sgd", "binary_crossentropy")
    health = GradientHealth(tmp_path, data, every_n_steps=None, probe_every_n_steps=1)
    fit(model, data, health, epochs=2)  # 8 steps: 9 points
    assert [s for s, _ in health.probe_history["grad_norm/h1"]] == [6, 7, 8]
    assert len(read_scalars(tmp_path, PROBE)["grad_norm/h1"]) == 9  # the files keep all
