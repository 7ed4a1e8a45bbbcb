"""The record stays right in every workflow (issue 18): one strictly increasing
step axis per run, whatever ends or repeats a `fit()`, and a model left
exactly as it was. Runs on every backend (tests/test_backends.py)."""

import os
import warnings

import keras
import numpy as np
import pytest

from keras_fanin import GradientHealth, GradientHealthWarning, report
from tests.helpers import PROBE, TRAIN, grad_norms, read_scalars

BACKEND = keras.backend.backend()
FEATURES, BATCH = 8, 16


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(112, FEATURES)).astype("float32")  # 7 batches
    y = (x[:, :1] - x[:, 1:2] > 0).astype("float32")
    return x, y


def mlp(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((FEATURES,)),
        keras.layers.Dense(16, activation="relu", name="h1"),
        keras.layers.Dense(16, activation="tanh", name="h2"),
        keras.layers.Dense(1, activation="sigmoid", name="out"),
    ])  # fmt: skip


def fit(model, data, callbacks, **kwargs):
    kwargs = {"batch_size": BATCH, "verbose": 0, "shuffle": False, **kwargs}
    return model.fit(*data, callbacks=callbacks, **kwargs)


def steps(log_dir, tag="grad_norm/h1", run=TRAIN):
    return [s for s, _ in read_scalars(log_dir, run)[tag]]


def attributes(model):
    """Every instance attribute GradientHealth may wrap, by identity."""
    optimizer = model.optimizer
    owners = [model, optimizer, *model.layers]
    if optimizer is not None and hasattr(optimizer, "inner_optimizer"):
        owners.append(optimizer.inner_optimizer)
    names = ("train_step", "make_train_function", "compute_loss_and_updates",
             "compute_loss", "apply", "stateless_apply", "apply_gradients",
             "call")  # fmt: skip
    return {
        (i, name): id(vars(obj)[name]) if name in vars(obj) else None
        for i, obj in enumerate(owners)
        for name in names
    }


# -- one step axis -------------------------------------------------------------


def test_fine_tuning_with_a_new_optimizer_appends(tmp_path, data):
    model = mlp()
    health = GradientHealth(tmp_path, every_n_steps=2)
    model.compile(keras.optimizers.Adam(0.01), "binary_crossentropy")
    fit(model, data, [health], epochs=2)  # 14 steps
    model.layers[0].trainable = False
    model.compile(keras.optimizers.SGD(0.01), "binary_crossentropy")
    fit(model, data, [health], epochs=2)
    assert steps(tmp_path, "grad_norm/h2") == list(range(0, 28, 2))
    # The frozen layer has no gradient in the second fit().
    assert steps(tmp_path, "grad_norm/h1") == list(range(0, 14, 2))


def test_a_new_callback_on_the_same_log_dir_appends(tmp_path, data):
    model = mlp()
    model.compile(keras.optimizers.SGD(0.01), "binary_crossentropy")
    fit(model, data, [GradientHealth(tmp_path, every_n_steps=3)])  # 7 steps
    fit(model, data, [GradientHealth(tmp_path, every_n_steps=3)])
    assert steps(tmp_path) == [0, 3, 6, 9, 12]


def test_gradient_accumulation_with_an_odd_batch_count(tmp_path, data):
    model = mlp()
    optimizer = keras.optimizers.SGD(0.01, gradient_accumulation_steps=2)
    model.compile(optimizer, "binary_crossentropy")
    health = GradientHealth(tmp_path, every_n_steps=1)
    fit(model, data, [health])  # 7 batches
    fit(model, data, [health])
    assert steps(tmp_path) == list(range(14))


def test_initial_epoch_and_train_on_batch_between_fits(tmp_path, data):
    model = mlp()
    model.compile(keras.optimizers.SGD(0.01), "binary_crossentropy")
    health = GradientHealth(tmp_path, every_n_steps=2)
    fit(model, data, [health], epochs=2)  # 14 steps
    model.train_on_batch(data[0][:BATCH], data[1][:BATCH])
    fit(model, data, [health], epochs=3, initial_epoch=2)  # 7 more
    assert steps(tmp_path) == list(range(0, 21, 2))


def test_loss_scale_skipped_steps_keep_their_numbers(tmp_path, data):
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = mlp()
        # A scale far over float16's range: every step overflows and is skipped.
        optimizer = keras.optimizers.LossScaleOptimizer(
            keras.optimizers.SGD(0.01), initial_scale=2.0**60
        )
        model.compile(optimizer, "binary_crossentropy")
        health = GradientHealth(tmp_path, every_n_steps=1, warn=False)
        fit(model, data, [health])
        fit(model, data, [health])
    finally:
        keras.config.set_dtype_policy("float32")
    assert steps(tmp_path) == list(range(14))
    assert steps(tmp_path, "activation_std/h1") == list(range(14))


@pytest.mark.parametrize("spe", [1, 3])
def test_two_callbacks_in_one_fit_each_log_their_own_steps(tmp_path, data, spe):
    if spe > 1 and BACKEND == "torch":
        pytest.skip("Keras's torch backend refuses steps_per_execution > 1")
    model = mlp()
    model.compile(
        keras.optimizers.SGD(0.05), "binary_crossentropy", steps_per_execution=spe
    )
    before = attributes(model)
    every_2 = GradientHealth(tmp_path / "a", every_n_steps=2)
    every_1 = GradientHealth(tmp_path / "b", every_n_steps=1)
    fit(model, data, [every_2, every_1], epochs=2)  # 14 steps
    assert attributes(model) == before
    assert steps(tmp_path / "a") == list(range(0, 14, 2))
    assert steps(tmp_path / "b") == list(range(14))
    both = dict(read_scalars(tmp_path / "b")["grad_norm/h2"])
    for step, value in read_scalars(tmp_path / "a")["grad_norm/h2"]:
        assert value == pytest.approx(both[step], rel=1e-6)
    # The model trains on without them: Keras's own step, nothing logged.
    fit(model, data, [])
    assert len(every_1.history["grad_norm/h1"]) == 14


def test_a_fit_that_runs_no_step_says_nothing(tmp_path, data):
    model = mlp()
    model.compile(keras.optimizers.SGD(0.01), "binary_crossentropy")
    health = GradientHealth(tmp_path, every_n_steps=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", GradientHealthWarning)
        fit(model, data, [health], epochs=0)
        fit(model, data, [health], epochs=2, initial_epoch=2)
    fit(model, data, [health])
    assert steps(tmp_path) == list(range(7))


def test_layout_lists_only_what_the_run_writes(tmp_path, data):
    from tests.helpers import custom_scalars_layout

    model = mlp()
    model.compile(keras.optimizers.SGD(0.01), "binary_crossentropy")
    fit(model, data, [GradientHealth(tmp_path, every_n_steps=1)])
    layout = custom_scalars_layout(tmp_path, TRAIN)
    titles = {chart.title for c in layout.category for chart in c.chart}
    written = {tag.split("/")[0] for tag in read_scalars(tmp_path)}
    assert titles == written
    assert "saturated_sigmoid_fraction" in titles  # the sigmoid output layer
    assert "clip" not in titles and "probe_loss" not in titles


# -- what ends a fit() ---------------------------------------------------------


class Interrupt(keras.callbacks.Callback):
    """Raises `error` at the end of the train batch `at` (0-based, in the fit)."""

    def __init__(self, error, at):
        super().__init__()
        self.error, self.at, self.seen = error, at, 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen > self.at:
            raise self.error


@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError("crash")])
def test_an_interrupted_fit_leaves_the_model_as_it_was(tmp_path, data, error):
    model = mlp()
    model.compile(keras.optimizers.SGD(0.05), "binary_crossentropy")
    before = attributes(model)
    health = GradientHealth(tmp_path, every_n_steps=1)
    with pytest.raises(type(error) if isinstance(error, Exception) else error):
        fit(model, data, [health, Interrupt(error, at=3)], epochs=2)
    assert attributes(model) == before
    # What was logged before the interrupt is on disk.
    assert steps(tmp_path) == [0, 1, 2, 3]
    fit(model, data, [])  # no callback: Keras's own step, nothing logged
    assert steps(tmp_path) == [0, 1, 2, 3]
    assert len(health.history["grad_norm/h1"]) == 4
    fit(model, data, [health])  # the record goes on after what ran
    assert steps(tmp_path)[4:] == list(range(4, 11))


class CrashingStep(keras.Sequential):
    """A user's train_step that fails on its first call."""

    def train_step(self, *args, **kwargs):
        raise ValueError("the user's step fails")


def test_a_crash_in_the_users_step_leaves_the_model_as_it_was(tmp_path, data):
    model = CrashingStep([keras.Input((FEATURES,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(0.05), "mse")
    before = attributes(model)
    with pytest.raises(ValueError, match="the user's step fails"):
        fit(model, data, [GradientHealth(tmp_path, every_n_steps=1)])
    assert attributes(model) == before


def test_stop_training_and_two_callbacks_restore_everything(tmp_path, data):
    model = mlp()
    model.compile(keras.optimizers.SGD(0.05), "binary_crossentropy")
    before = attributes(model)
    stop = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda b, logs: setattr(model, "stop_training", b >= 2)
    )
    a = GradientHealth(tmp_path / "a", every_n_steps=1)
    b = GradientHealth(tmp_path / "b", every_n_steps=2, data=data)
    fit(model, data, [a, stop, b], epochs=3)
    assert attributes(model) == before
    assert steps(tmp_path / "a") == [0, 1, 2]


# -- other runs -----------------------------------------------------------------


@pytest.mark.slow
def test_keras_tuner_gives_each_trial_its_own_run(tmp_path, data):
    import keras_tuner

    def build(hp):
        model = mlp()
        lr = hp.Choice("lr", [0.01, 0.1])
        model.compile(keras.optimizers.SGD(lr), "binary_crossentropy")
        return model

    tuner = keras_tuner.GridSearch(
        build, objective="loss", directory=tmp_path / "tuner", overwrite=True
    )
    health = GradientHealth(tmp_path / "logs", every_n_steps=1)
    tuner.search(*data, epochs=1, batch_size=BATCH, verbose=0, callbacks=[health])
    trials = tuner.oracle.trials
    assert len(trials) == 2
    for trial_id in trials:
        run = tmp_path / "logs" / trial_id / "execution0"
        assert steps(run) == list(range(7))
    assert not (tmp_path / "logs" / "gradient_health").exists()


def test_probe_and_step_values_after_a_recompile_match_autodiff(tmp_path, data):
    model = mlp()
    model.compile(keras.optimizers.Adam(0.01), "binary_crossentropy")
    health = GradientHealth(tmp_path, data=data, every_n_steps=4)
    fit(model, data, [health])
    model.compile(keras.optimizers.SGD(0.0), "binary_crossentropy")
    fit(model, data, [health])
    probe = read_scalars(tmp_path, PROBE)["grad_norm/h1"]
    assert [s for s, _ in probe] == sorted({s for s, _ in probe})
    expected = grad_norms(model, *data)["h1"]
    assert probe[-1][0] == 14
    assert probe[-1][1] == pytest.approx(expected, rel=1e-5)
    assert os.path.exists(tmp_path / "gradient_health" / "steps.json")


def test_logs_without_steps_json_append_after_their_newest_event(tmp_path, data):
    """Logs written before `steps.json` existed (or with it lost): the next
    fit() starts after the newest step in the event files."""
    model = mlp()
    model.compile(keras.optimizers.SGD(0.05), "binary_crossentropy")
    fit(model, data, [GradientHealth(tmp_path, every_n_steps=2)])
    os.remove(tmp_path / "gradient_health" / "steps.json")
    fit(model, data, [GradientHealth(tmp_path, every_n_steps=2)])
    assert steps(tmp_path) == [0, 2, 4, 6, 8, 10, 12]  # steps 7-13: every 2nd


def test_reading_values_raises_no_numpy_copy_warning(data):
    from keras_fanin._numpy import to_numpy

    model = mlp()
    model.compile(keras.optimizers.SGD(0.01), "binary_crossentropy")
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        assert to_numpy(model.optimizer.iterations) == 0
        kernel = to_numpy(model.layers[0].kernel)
        assert kernel.shape == (FEATURES, 16)
        doubled = to_numpy(keras.ops.convert_to_tensor(kernel) * 2)
        np.testing.assert_allclose(doubled, kernel * 2)


def test_the_largest_every_n_steps_trains(tmp_path, data):
    model = mlp()
    model.compile(keras.optimizers.SGD(0.01), "binary_crossentropy")
    health = GradientHealth(tmp_path, every_n_steps=2**31 - 1)
    fit(model, data, [health])
    fit(model, data, [health])
    assert steps(tmp_path) == [0]


class OwnOptimizer(keras.Sequential):
    """A GAN-style step: its own optimizer, `model.optimizer` never moves."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.own = keras.optimizers.SGD(0.05)

    def train_step(self, data):
        import tensorflow as tf

        x, y = data
        with tf.GradientTape() as tape:
            loss = self.compute_loss(x=x, y=y, y_pred=self(x, training=True))
        grads = tape.gradient(loss, self.trainable_variables)
        self.own.apply(grads, self.trainable_variables)
        return {"loss": loss}


@pytest.mark.tf_only
def test_a_step_with_its_own_optimizer_numbers_every_fit(tmp_path, data):
    model = OwnOptimizer([
        keras.Input((FEATURES,)),
        keras.layers.Dense(16, activation="relu", name="h1"),
        keras.layers.Dense(1, activation="sigmoid", name="out"),
    ])  # fmt: skip
    model.compile(keras.optimizers.SGD(0.05), "binary_crossentropy")
    health = GradientHealth(tmp_path, every_n_steps=2, warn=False)
    fit(model, data, [health])
    fit(model, data, [health])
    assert int(model.optimizer.iterations) == 0
    # No gradient reaches `model.optimizer`; the forward pass is still seen.
    assert steps(tmp_path, "activation_std/h1") == list(range(0, 14, 2))


class CrashAt(keras.callbacks.Callback):
    def __init__(self, at):
        super().__init__()
        self.at, self.seen = at, 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen == self.at:
            raise RuntimeError("preempted")


@pytest.mark.parametrize("health_first", [True, False])
def test_backup_and_restore_resumes_the_step_axis(tmp_path, data, health_first):
    """The line TensorBoard's reader draws goes through the restart once
    (tests/test_backup_restore.py checks it through a real server)."""
    from tensorboard.backend.event_processing import plugin_event_accumulator

    model = mlp()
    model.compile(keras.optimizers.SGD(0.05), "binary_crossentropy")
    health = GradientHealth(tmp_path / "logs", every_n_steps=1)
    restore = keras.callbacks.BackupAndRestore(tmp_path / "backup")
    order = [health, restore] if health_first else [restore, health]
    with pytest.raises(RuntimeError, match="preempted"):
        fit(model, data, [*order, CrashAt(7 + 3)], epochs=3)  # in epoch 1
    history = fit(model, data, order, epochs=3)
    assert len(history.history["loss"]) == 2  # resumed at epoch 1
    reader = plugin_event_accumulator.EventAccumulator(
        str(tmp_path / "logs" / TRAIN), size_guidance={"tensors": 0}
    )
    reader.Reload()
    assert [e.step for e in reader.Tensors("grad_norm/h1")] == list(range(21))
    assert [s for s, _ in health.history["grad_norm/h1"]] == list(range(21))


def test_two_callbacks_on_one_log_dir_in_one_fit_is_a_clear_error(tmp_path, data):
    model = mlp()
    model.compile(keras.optimizers.SGD(0.05), "binary_crossentropy")
    before = attributes(model)
    one, two = (GradientHealth(tmp_path, every_n_steps=k) for k in (1, 3))
    with pytest.raises(ValueError, match="write to the same log_dir"):
        fit(model, data, [one, two])
    assert attributes(model) == before
    fit(model, data, [one])  # alone, it works
    assert steps(tmp_path) == list(range(7))


def test_a_probe_point_at_the_end_of_a_fit_stays(tmp_path, data):
    model = mlp()
    model.compile(keras.optimizers.SGD(0.05), "binary_crossentropy")
    health = GradientHealth(tmp_path, data=data, every_n_steps=1)
    fit(model, data, [health])
    fit(model, data, [health])
    from tensorboard.backend.event_processing import plugin_event_accumulator

    reader = plugin_event_accumulator.EventAccumulator(
        str(tmp_path / PROBE), size_guidance={"tensors": 0}
    )
    reader.Reload()
    assert [e.step for e in reader.Tensors("probe_loss")] == [0, 7, 14]


class BadBatch(keras.utils.PyDataset):
    """Fails on its third batch."""

    def __init__(self, x, y):
        super().__init__()
        self.x, self.y = x, y

    def __len__(self):
        return 4

    def __getitem__(self, i):
        if i == 2:
            raise ValueError("a bad batch")
        return self.x[i * BATCH : (i + 1) * BATCH], self.y[i * BATCH : (i + 1) * BATCH]


def test_a_fit_failing_in_its_data_leaves_a_right_step_axis(tmp_path, data):
    model = mlp()
    model.compile(keras.optimizers.SGD(0.05), "binary_crossentropy")
    before = attributes(model)
    health = GradientHealth(tmp_path, every_n_steps=1)
    fit(model, data, [health])  # steps 0..6
    with pytest.raises(Exception, match="a bad batch"):
        model.fit(BadBatch(*data), epochs=1, verbose=0, callbacks=[health])
    if BACKEND == "jax":
        # Keras's JAX trainer leaves the variables unset after an error in
        # the data: its next fit() fails, with or without GradientHealth,
        # after the model's wrappers are taken off.
        with pytest.raises(TypeError):
            fit(model, data, [])
        assert attributes(model) == before
        return
    fit(model, data, [health])
    assert attributes(model) == before
    logged = steps(tmp_path)
    assert logged == sorted(set(logged)) and logged[:7] == list(range(7))
    # The bad fit's steps that ran (how many batches a backend's loader
    # fetches ahead before the error reaches fit() varies).
    assert len(logged) - 7 - 7 in (0, 1, 2)
    assert logged[-7:] == list(range(logged[-7], logged[-7] + 7))


@pytest.mark.parametrize("health_first", [True, False])
def test_a_batch_level_backup_in_the_first_epoch_supersedes(
    tmp_path, data, health_first
):
    model = mlp()
    model.compile(keras.optimizers.SGD(0.05), "binary_crossentropy")
    health = GradientHealth(tmp_path / "logs", every_n_steps=1)
    restore = keras.callbacks.BackupAndRestore(tmp_path / "backup", save_freq=2)
    order = [health, restore] if health_first else [restore, health]
    with pytest.raises(RuntimeError, match="preempted"):
        fit(model, data, [*order, CrashAt(3)], epochs=2)  # in epoch 0
    fit(model, data, order, epochs=2)  # epoch 0 again, from the backup
    from tensorboard.backend.event_processing import plugin_event_accumulator

    reader = plugin_event_accumulator.EventAccumulator(
        str(tmp_path / "logs" / TRAIN), size_guidance={"tensors": 0}
    )
    reader.Reload()
    assert [e.step for e in reader.Tensors("grad_norm/h1")] == list(range(14))


def test_a_new_probe_callback_on_the_same_log_dir_writes_no_step_twice(tmp_path, data):
    model = mlp()
    model.compile(keras.optimizers.SGD(0.05), "binary_crossentropy")
    for _ in range(2):  # as a second process would, with a new callback
        fit(model, data, [GradientHealth(tmp_path, data=data, every_n_steps=2)])
    from tensorboard.backend.event_processing import plugin_event_accumulator

    reader = plugin_event_accumulator.EventAccumulator(
        str(tmp_path / PROBE), size_guidance={"tensors": 0}
    )
    reader.Reload()
    assert [e.step for e in reader.Tensors("probe_loss")] == [0, 7, 14]


@pytest.mark.skipif(BACKEND == "torch", reason="torch's step runs eagerly")
def test_a_later_fit_reuses_the_traced_functions(tmp_path, data):
    model = mlp()
    optimizer = keras.optimizers.SGD(0.05)
    model.compile(optimizer, "binary_crossentropy")
    health = GradientHealth(tmp_path, every_n_steps=3)
    fit(model, data, [health])
    traced = health._hook.traces
    assert traced == 2  # Keras's own step and the logged one
    for _ in range(3):
        fit(model, data, [health])
    assert health._hook.traces == traced
    assert steps(tmp_path) == list(range(0, 28, 3))
    # A compile() makes them anew (same optimizer, another loss).
    hook = health._hook
    model.compile(optimizer, "mse")
    fit(model, data, [health])
    before = traced if health._hook is hook else 0  # JAX makes a new hook
    assert health._hook.traces - before == 2
    assert steps(tmp_path) == list(range(0, 35, 3))


def test_steps_json_is_rewritten_in_place_and_whole_when_outgrown(tmp_path):
    from keras_fanin.health._runstate import STATE_FILE, read_state, write_state

    root = tmp_path / "gradient_health"
    path = root / STATE_FILE
    write_state(str(root), 5, {0: 0})
    inode = os.stat(path).st_ino
    write_state(str(root), 9, {0: 0, 1: 5})
    assert os.stat(path).st_ino == inode  # rewritten where it was
    assert read_state(str(root)) == (9, {0: 0, 1: 5}, None)
    many = {epoch: 10 * epoch for epoch in range(100)}
    write_state(str(root), 1000, many, probe_last=990)
    assert read_state(str(root)) == (1000, many, 990)  # outgrown: a new file
    write_state(str(root), 1001, None)  # shorter: the rest is blank
    assert read_state(str(root)) == (1001, None, None)


def test_pictures_at_the_end_of_fits_keep_to_their_budget(tmp_path, data, monkeypatch):
    """A loop of short fits does not redraw the picture at every end; the
    rows it leaves out wait for the next picture, which comes at the latest
    when as many wait as the last one shows."""
    from keras_fanin.health import _callback
    from tests.helpers import _accumulator

    def pictures():
        return [e.step for e in _accumulator(tmp_path, TRAIN).Tensors("gradient_flow")]

    model = mlp()
    model.compile(keras.optimizers.SGD(0.05), "binary_crossentropy")
    health = GradientHealth(tmp_path, every_n_steps=1)
    monkeypatch.setattr(_callback, "PICTURE_BUDGET", 1e9)  # the last is recent
    for _ in range(5):
        fit(model, data, [health])
    # 7 rows a fit: drawn after the first fit, then once as many rows wait
    # as the last picture shows (7, then 14); fit 5's rows wait.
    assert pictures() == [6, 13, 27]
    monkeypatch.setattr(_callback, "PICTURE_BUDGET", 0)
    fit(model, data, [health])
    assert pictures() == [6, 13, 27, 41]
    (picture,) = [run.picture() for name, run in report(tmp_path).runs.items()
                  if name.endswith("train")]  # fmt: skip
    assert picture.steps == (0, 41, 42)  # every row, those waiting too
