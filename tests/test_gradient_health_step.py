"""GradientHealth on the real training step (issue 11), read back from the
event files and checked against independent autodiff computations
(`tf.GradientTape`, `jax.grad`, `torch.autograd`)."""

import json
import math
import warnings

import keras
import numpy as np
import pytest

import keras_fanin
from keras_fanin import GradientHealth, GradientHealthWarning
from keras_fanin.health import _callback
from tests.helpers import (
    TRAIN,
    grad_norms,
    independent_gradients,
    layer_norms,
    read_scalars,
    run_python,
)

BACKEND = keras.backend.backend()

FEATURES = 8
BATCH = 16


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(160, FEATURES)).astype("float32")
    y = (x[:, :1] - x[:, 1:2] > 0).astype("float32")
    return x, y


def mlp(seed=0, name_prefix=""):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((FEATURES,)),
        keras.layers.Dense(16, activation="relu", name=f"{name_prefix}h1"),
        keras.layers.Dense(16, activation="tanh", name=f"{name_prefix}h2"),
        keras.layers.Dense(1, activation="sigmoid", name=f"{name_prefix}out"),
    ])  # fmt: skip


def fit(model, data, health, epochs=1, **kwargs):
    kwargs = {"batch_size": BATCH, "verbose": 0, "shuffle": False, **kwargs}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(*data, epochs=epochs, callbacks=[health], **kwargs)
    return [str(w.message) for w in caught if w.category is GradientHealthWarning]


def tape_norms(model, x, y):
    return grad_norms(model, x, y, training=True)


class WeightsPerStep(keras.callbacks.Callback):
    """Keeps the weights before every step (a host sync per step: tests only)."""

    def __init__(self):
        super().__init__()
        self.weights = []

    def on_train_batch_begin(self, batch, logs=None):
        self.weights.append([w.copy() for w in self.model.get_weights()])


def test_grad_norm_of_every_step_equals_a_gradient_tape(tmp_path, data):
    x, y = data
    model = mlp()
    model.compile(keras.optimizers.SGD(0.1), "binary_crossentropy")
    recorder = WeightsPerStep()
    health = GradientHealth(tmp_path, every_n_steps=1)
    model.fit(x, y, batch_size=BATCH, epochs=2, verbose=0, shuffle=False,
              callbacks=[recorder, health])  # fmt: skip
    scalars = read_scalars(tmp_path)
    steps = len(x) // BATCH * 2
    assert [s for s, _ in scalars["grad_norm/h1"]] == list(range(steps))
    reference = mlp()
    for step, weights in enumerate(recorder.weights):
        reference.set_weights(weights)
        i = step % (len(x) // BATCH)
        batch = slice(i * BATCH, (i + 1) * BATCH)
        for name, norm in tape_norms(reference, x[batch], y[batch]).items():
            assert scalars[f"grad_norm/{name}"][step][1] == pytest.approx(
                norm, rel=1e-5
            ), (name, step)
    # The same numbers are in history, and every tag of the step is there.
    assert set(scalars) == set(health.history) == {
        f"{signal}/{name}"
        for name in ("h1", "h2", "out")
        for signal in ("grad_norm", "update_ratio", "weight_norm", "activation_std")
    } | {"dead_relu_fraction/h1", "saturated_tanh_fraction/h2",
         "saturated_sigmoid_fraction/out", "global_grad_norm"}  # fmt: skip


def test_update_ratio_and_weight_norm_of_one_step(tmp_path, data):
    x, y = data
    model = mlp()
    model.compile(keras.optimizers.Adam(0.01), "binary_crossentropy")
    before = model.get_weights()
    health = GradientHealth(tmp_path, every_n_steps=1)
    fit(model, (x[:BATCH], y[:BATCH]), health)
    after = model.get_weights()
    delta = layer_norms(model, [a - b for a, b in zip(after, before, strict=True)])
    prior = layer_norms(model, before)
    final = layer_norms(model, after)
    for name in ("h1", "h2", "out"):
        [(step, ratio)] = health.history[f"update_ratio/{name}"]
        assert step == 0
        assert ratio == pytest.approx(delta[name] / prior[name], rel=1e-5)
        assert health.history[f"weight_norm/{name}"][0][1] == pytest.approx(
            final[name], rel=1e-6
        )


def test_steps_per_execution_and_jit_log_every_step_at_its_own_number(tmp_path, data):
    if BACKEND == "torch":
        # Keras allows neither steps_per_execution on torch; torch.compile
        # traces the step once, so GradientHealth refuses jit_compile there.
        model = mlp()
        model.compile("sgd", "binary_crossentropy", jit_compile=True)
        with pytest.raises(ValueError, match=r"`jit_compile=True` on torch"):
            fit(model, data, GradientHealth(tmp_path, every_n_steps=1))
        return
    runs = {}
    for name, kwargs in [
        ("plain", {}),
        ("spe4", {"steps_per_execution": 4}),  # 10 batches: 4 + 4 + 2
        ("jit", {"jit_compile": True, "steps_per_execution": 3}),
        ("jit1", {"jit_compile": True}),  # the host picks between two XLA steps
    ]:
        model = mlp()
        model.compile(keras.optimizers.SGD(0.1), "binary_crossentropy", **kwargs)
        health = GradientHealth(tmp_path / name, every_n_steps=1)
        fit(model, data, health, epochs=2)
        runs[name] = read_scalars(tmp_path / name)
    assert set(runs["spe4"]) == set(runs["plain"]) == set(runs["jit"])
    assert set(runs["jit1"]) == set(runs["plain"])
    for tag, series in runs["plain"].items():
        assert [s for s, _ in series] == list(range(20)), tag
        for other in ("spe4", "jit", "jit1"):
            assert [s for s, _ in runs[other][tag]] == list(range(20)), (other, tag)
            np.testing.assert_allclose(
                [v for _, v in runs[other][tag]], [v for _, v in series],
                rtol=1e-4, atol=1e-7, err_msg=f"{other} {tag}",
            )  # fmt: skip


@pytest.mark.parametrize("spe", [1, 3])
def test_every_n_steps_and_flushes_keep_each_logged_step_once(
    tmp_path, data, monkeypatch, spe
):
    if BACKEND == "torch" and spe > 1:
        pytest.skip("Keras has no steps_per_execution on torch")
    monkeypatch.setattr(_callback, "FLUSH_ROWS", 4)  # many flushes in one epoch
    reads, host_reads = [], []
    read = _callback.GradientHealth._flush

    def counted(self, **kwargs):
        reads.append(self._step)
        hook = self._hook
        if "read" not in vars(hook):  # count the buffer's host reads too
            rows = hook.read
            hook.read = lambda: host_reads.append(self._step) or rows()
        return read(self, **kwargs)

    monkeypatch.setattr(_callback.GradientHealth, "_flush", counted)
    model = mlp()
    model.compile(keras.optimizers.SGD(0.1), "binary_crossentropy",
                  steps_per_execution=spe)  # fmt: skip
    health = GradientHealth(tmp_path, every_n_steps=2)
    fit(model, data, health, epochs=3)
    steps = [s for s, _ in read_scalars(tmp_path)["grad_norm/h1"]]
    assert steps == list(range(0, 30, 2))
    # 5 logged steps an epoch: one flush within it (at 4 rows), one at its
    # end, one at the end of training; not one a step once past 4 rows.
    assert len(reads) == 3 * 2 + 1, reads
    # A flush with nothing new reads nothing: the one at the end of training,
    # and with 3 steps an execution, each epoch's end (the flush at step 9
    # had every logged step up to it).
    assert len(host_reads) == (3 * 2 if spe == 1 else 3), host_reads
    assert health._hook.traces <= 2  # no retracing after the first step
    # Fits starting between two logged steps: 30 and 32 logged, then none
    # in a one-step fit at 33, and no warning that the step was not seen.
    x, y = data
    assert not fit(model, (x[: 3 * BATCH], y[: 3 * BATCH]), health)
    assert not fit(model, (x[:BATCH], y[:BATCH]), health)
    steps = [s for s, _ in read_scalars(tmp_path)["grad_norm/h1"]]
    assert steps == list(range(0, 34, 2))
    # Read once per fit that logged something (the 3-step one), not by the
    # one-step fit that logged nothing.
    assert len(host_reads) == (3 * 2 if spe == 1 else 3) + 1, host_reads
    assert health.history["grad_norm/h1"][-1][0] == 32


def test_one_callback_across_steps_per_execution_and_eager_fits(tmp_path, data):
    # The TF hook counts steps on the host with steps_per_execution=1 and on
    # the device otherwise; a callback and optimizer kept across recompiles
    # must carry the step number from one way to the other.
    if BACKEND == "torch":
        pytest.skip("Keras has no steps_per_execution on torch")
    optimizer = keras.optimizers.SGD(0.1)
    model = mlp()
    health = GradientHealth(tmp_path, every_n_steps=4)
    for kwargs in ({"steps_per_execution": 3}, {}, {"run_eagerly": True},
                   {"steps_per_execution": 3}):  # fmt: skip
        model.compile(optimizer, "binary_crossentropy", **kwargs)
        fit(model, data, health)  # 10 steps each
    steps = [s for s, _ in read_scalars(tmp_path)["grad_norm/h1"]]
    assert steps == list(range(0, 40, 4))


def test_gradient_accumulation_counts_batches(tmp_path, data):
    x, y = data
    model = mlp()
    model.compile(
        keras.optimizers.SGD(0.1, gradient_accumulation_steps=2),
        "binary_crossentropy",
    )
    recorder = WeightsPerStep()
    health = GradientHealth(tmp_path, every_n_steps=1)
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, shuffle=False,
              callbacks=[recorder, health])  # fmt: skip
    iterations = keras.ops.convert_to_numpy(model.optimizer.iterations)
    assert int(iterations) == 5  # 10 batches, 5 updates
    scalars = read_scalars(tmp_path)
    assert [s for s, _ in scalars["grad_norm/h1"]] == list(range(10))
    reference = mlp()
    for step, weights in enumerate(recorder.weights):
        reference.set_weights(weights)
        batch = slice(step * BATCH, (step + 1) * BATCH)
        expected = tape_norms(reference, x[batch], y[batch])["h1"]
        assert scalars["grad_norm/h1"][step][1] == pytest.approx(expected, rel=1e-5)
        # Weights move on every second batch only.
        ratio = scalars["update_ratio/h1"][step][1]
        assert (ratio > 0) == (step % 2 == 1), step


def test_mixed_float16_grad_norms_are_unscaled(tmp_path, data):
    x, y = data
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = mlp()
        model.compile(keras.optimizers.SGD(0.1), "binary_crossentropy")
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
        weights = model.get_weights()
        health = GradientHealth(tmp_path, every_n_steps=1)
        fit(model, (x[:BATCH], y[:BATCH]), health)
    finally:
        keras.config.set_dtype_policy("float32")
    reference = mlp()
    reference.set_weights(weights)
    for name, norm in tape_norms(reference, x[:BATCH], y[:BATCH]).items():
        assert health.history[f"grad_norm/{name}"][0][1] == pytest.approx(
            norm, rel=1e-2
        ), name


@pytest.mark.parametrize("clip", ["global_clipnorm", "clipnorm"])
def test_clipping_is_reported(tmp_path, data, clip):
    x, y = data
    model = mlp()
    model.compile(keras.optimizers.SGD(0.1, **{clip: 0.05}), "binary_crossentropy")
    weights = model.get_weights()
    health = GradientHealth(tmp_path, every_n_steps=1)
    fit(model, (x[:BATCH], y[:BATCH]), health)
    reference = mlp()
    reference.set_weights(weights)
    grads = independent_gradients(reference, x[:BATCH], y[:BATCH])
    norms = [float(np.linalg.norm(g)) for g in grads]
    total = math.sqrt(sum(n * n for n in norms))
    expected = (
        0.05 / total if clip == "global_clipnorm" else min(0.05 / n for n in norms)
    )
    assert health.history["clip/global_grad_norm"][0][1] == pytest.approx(
        total, rel=1e-5
    )
    assert health.history["clip/factor"][0][1] == pytest.approx(expected, rel=1e-5)
    # The grad norms are those before clipping.
    assert health.history["grad_norm/h1"][0][1] > 0.05


def test_dead_layer_and_nan_kernel_from_the_training_step(tmp_path, data):
    shift = keras.initializers.Constant(-100.0)
    model = keras.Sequential([
        keras.Input((FEATURES,)),
        keras.layers.Dense(16, activation="relu", name="alive",
                           kernel_initializer=keras_fanin.He(seed=0)),
        keras.layers.Dense(8, activation="relu", bias_initializer=shift, name="dead"),
        keras.layers.Dense(1, activation="sigmoid", name="out"),
    ])  # fmt: skip
    model.compile(keras.optimizers.SGD(0.01), "binary_crossentropy")
    health = GradientHealth(tmp_path / "dead", every_n_steps=1)
    messages = fit(model, data, health)
    assert health.history["dead_relu_fraction/dead"][-1][1] == 1.0
    assert health.history["dead_relu_fraction/alive"][-1][1] < 0.2
    assert sum("'dead' are dead" in m and "of the batch" in m for m in messages) == 1

    model = mlp()
    # Not cross-entropy: torch's raises on a NaN probability (in Keras's own
    # training step as well).
    model.compile(keras.optimizers.SGD(0.01), "mse")
    kernel = model.get_layer("h2").kernel
    kernel.assign(np.full(kernel.shape, np.nan, "float32"))
    health = GradientHealth(tmp_path / "nan", every_n_steps=1, stop_on_nonfinite=True)
    messages = fit(model, data, health, epochs=3)
    assert len(messages) == 1, messages
    assert "NaN in the weights of layer 'h2'" in messages[0]
    assert int(model.optimizer.iterations.numpy()) <= 2  # stopped at once


def test_lifecycle_second_fit_new_model_and_an_already_traced_model(tmp_path, data):
    model = mlp()
    model.compile(keras.optimizers.SGD(0.1), "binary_crossentropy")
    model.fit(*data, batch_size=BATCH, epochs=1, verbose=0)  # traced without us
    health = GradientHealth(tmp_path, every_n_steps=1)
    fit(model, data, health)
    fit(model, data, health)  # the same callback again: steps go on
    steps = [s for s, _ in read_scalars(tmp_path)["grad_norm/h1"]]
    # The run's own step axis: from 0, whatever the optimizer ran before.
    assert steps == list(range(20))
    # Everything is restored: Keras's own step runs again without us.
    assert "train_step" not in vars(model)
    assert "apply" not in vars(model.optimizer)
    assert all("call" not in vars(layer) for layer in model.layers)
    model.fit(*data, batch_size=BATCH, epochs=1, verbose=0)
    assert [s for s, _ in health.history["grad_norm/h1"]][-1] == 19

    other = mlp(seed=1, name_prefix="b_")
    other.compile(keras.optimizers.SGD(0.1), "binary_crossentropy")
    fit(other, data, health)  # another model, the same run: steps go on
    assert [s for s, _ in health.history["grad_norm/b_h1"]] == list(range(20, 30))


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.hidden = keras.layers.Dense(16, activation="relu", name="sub_hidden")
        self.out = keras.layers.Dense(1, activation="sigmoid", name="sub_out")

    def call(self, x):
        return self.out(self.hidden(x))


class OwnTrainStep(keras.Model):
    """A model that overrides train_step, as the Keras guide shows."""

    def __init__(self):
        super().__init__()
        self.hidden = keras.layers.Dense(16, activation="relu", name="own_hidden")
        self.out = keras.layers.Dense(1, activation="sigmoid", name="own_out")

    def call(self, x):
        return self.out(self.hidden(x))

    def train_step(self, data):
        import tensorflow as tf

        x, y = data
        with tf.GradientTape() as tape:
            loss = self.compute_loss(x=x, y=y, y_pred=self(x, training=True))
        grads = tape.gradient(loss, self.trainable_variables)
        self.optimizer.apply_gradients(
            zip(grads, self.trainable_variables, strict=True)
        )
        return {"loss": loss}


def _unbuilt(name):
    if name == "subclassed":
        return Subclassed(), ("sub_hidden", "sub_out")
    if name == "sequential":
        return keras.Sequential([
            keras.layers.Dense(16, activation="relu", name="seq_hidden"),
            keras.layers.Dense(1, activation="sigmoid", name="seq_out"),
        ]), ("seq_hidden", "seq_out")  # fmt: skip
    return OwnTrainStep(), ("own_hidden", "own_out")


@pytest.mark.parametrize(
    "name",
    # OwnTrainStep's train_step is written with tf.GradientTape.
    ["subclassed", "sequential", pytest.param("own", marks=pytest.mark.tf_only)],
)
def test_unbuilt_and_own_train_step_models(tmp_path, data, name):
    x, y = data
    model, layers = _unbuilt(name)
    assert not model.built
    model.compile(keras.optimizers.SGD(0.1), "binary_crossentropy")
    recorder = WeightsPerStep()
    health = GradientHealth(tmp_path / name, every_n_steps=1)
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, shuffle=False,
              callbacks=[health, recorder])  # fmt: skip
    scalars = read_scalars(tmp_path / name)
    for layer in layers:
        assert [s for s, _ in scalars[f"grad_norm/{layer}"]] == list(range(10))
    # Step 1 (the model is built by then): an independent gradient.
    model.set_weights(recorder.weights[1])
    norms = tape_norms(model, x[BATCH : 2 * BATCH], y[BATCH : 2 * BATCH])
    for layer in layers:
        assert scalars[f"grad_norm/{layer}"][1][1] == pytest.approx(
            norms[layer], rel=1e-5
        ), (name, layer)


def test_validation_and_probe_traces_are_not_counted_as_training(tmp_path, data):
    x, y = data
    model = mlp()
    model.compile(keras.optimizers.SGD(0.1), "binary_crossentropy")
    health = GradientHealth(tmp_path, (x[:32], y[:32]), every_n_steps=1,
                            probe_every_n_steps=5)  # fmt: skip
    fit(model, data, health, epochs=2, validation_data=(x[:32], y[:32]))
    assert [s for s, _ in health.history["grad_norm/h1"]] == list(range(20))
    assert [s for s, _ in health.probe_history["grad_norm/h1"]] == [0, 5, 10, 15, 20]
    assert set(read_scalars(tmp_path)) == set(health.history)


DETERMINISM = r"""
import json, numpy as np, keras, keras_fanin, tempfile
if keras.backend.backend() == "tensorflow":
    import tensorflow as tf
    tf.config.experimental.enable_op_determinism()
rng = np.random.default_rng(0)
x = rng.normal(size=(256, 8)).astype("float32")
y = (x[:, :1] > 0).astype("float32")
out = []
for watch in (False, True):
    keras.utils.set_random_seed(3)
    model = keras.Sequential([
        keras.Input((8,)),
        keras.layers.Dense(32, activation="relu"),
        keras.layers.BatchNormalization(),
        keras.layers.Dropout(0.3),
        keras.layers.Dense(1, activation="sigmoid"),
    ])
    model.compile(keras.optimizers.Adam(0.01), "binary_crossentropy")
    callbacks = ([keras_fanin.GradientHealth(tempfile.mkdtemp(), (x[:64], y[:64]),
                  every_n_steps=1, probe_every_n_steps=3)] if watch else [])
    model.fit(x, y, batch_size=32, epochs=3, verbose=0, callbacks=callbacks)
    out.append([w.tolist() for w in model.get_weights()])
print(json.dumps(out[0] == out[1]))
"""


@pytest.mark.slow
def test_training_is_unchanged_by_watching_it():
    assert json.loads(run_python(DETERMINISM).strip().splitlines()[-1]) is True


def test_bad_real_step_arguments(tmp_path):
    with pytest.raises(ValueError, match="nothing to watch"):
        GradientHealth(tmp_path, every_n_steps=None)
    with pytest.raises(TypeError, match="Argument `activations` must be a bool"):
        GradientHealth(tmp_path, activations="yes")
    with pytest.raises(
        ValueError, match="Argument `probe_every_n_steps` must be a positive integer"
    ):
        GradientHealth(tmp_path, probe_every_n_steps=0)


def test_trained_run_default_is_the_train_run(tmp_path, data):
    model = mlp()
    model.compile(keras.optimizers.SGD(0.1), "binary_crossentropy")
    health = GradientHealth(tmp_path)  # the defaults: every 25 steps
    fit(model, data, health, epochs=3)
    assert [s for s, _ in read_scalars(tmp_path, TRAIN)["grad_norm/h1"]] == [0, 25]


class ManualUpdates(OwnTrainStep):
    """A train_step that updates the weights itself, never via the optimizer."""

    def train_step(self, data):
        import tensorflow as tf

        x, y = data
        with tf.GradientTape() as tape:
            loss = self.compute_loss(x=x, y=y, y_pred=self(x, training=True))
        grads = tape.gradient(loss, self.trainable_variables)
        for g, v in zip(grads, self.trainable_variables, strict=True):
            v.assign_sub(0.1 * g)
        return {"loss": loss}


@pytest.mark.tf_only  # ManualUpdates's train_step is written with tf.GradientTape
def test_own_step_without_the_optimizer_gets_one_clear_warning(tmp_path, data):
    model = ManualUpdates()
    model.compile(keras.optimizers.SGD(0.1), "binary_crossentropy")
    messages = fit(model, data, GradientHealth(tmp_path, every_n_steps=1))
    [message] = [m for m in messages if "never called" in m]
    assert "grad_norm, update_ratio and weight_norm are unavailable" in message
    scalars = read_scalars(tmp_path)
    assert "activation_std/own_hidden" in scalars
    assert not any(tag.startswith("grad_norm/") for tag in scalars)
