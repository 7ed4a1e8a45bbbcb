"""The record after faults: a fit() resumed by the same callback, a step that
failed inside an execution, a `steps.json` that is not an object. Each was a
defect found by trying GradientHealth as a stranger would; each test failed
before its fix."""

import json
import os

import keras
import numpy as np
import pytest

from keras_fanin import GradientHealth
from tests import test_record as record
from tests.helpers import TRAIN
from tests.test_record import BATCH, FEATURES, fit, mlp

BACKEND = keras.backend.backend()
data = record.data  # the same module-scoped fixture


def served(log_dir, tag="grad_norm/h1", run=TRAIN):
    """`[(step, value)]` as TensorBoard's server reads them: its reader
    (plugin_event_accumulator) drops the points a session-log START
    supersedes. (The legacy event_accumulator that `helpers.read_scalars`
    uses does not purge tensors at a START, so it shows superseded points.)"""
    from tensorboard.backend.event_processing import plugin_event_accumulator
    from tensorboard.util import tensor_util

    reader = plugin_event_accumulator.EventAccumulator(
        os.path.join(str(log_dir), run), size_guidance={"tensors": 0}
    )
    reader.Reload()
    return [
        (e.step, float(tensor_util.make_ndarray(e.tensor_proto)))
        for e in reader.Tensors(tag)
    ]


def _crash_and_resume(tmp_path, data, same_callback, how):
    """5 epochs of 7 steps; a crash at step 25 (epoch 3). `backup`: a
    batch-level backup every 10 steps (the last at step 19, in epoch 2), so
    the resumed fit() re-runs epochs 2, 3 and 4 from the step-19 weights.
    `initial_epoch`: no backup; the user resumes by hand with
    `fit(initial_epoch=2)` from the weights the crash left."""
    model = mlp()
    model.compile(keras.optimizers.SGD(0.05), "binary_crossentropy")
    health = GradientHealth(tmp_path / "logs", every_n_steps=1)
    if how == "backup":
        restore = [keras.callbacks.BackupAndRestore(tmp_path / "backup", save_freq=10)]
        kwargs = {}
    else:
        restore, kwargs = [], {"initial_epoch": 2}
    with pytest.raises(RuntimeError, match="preempted"):
        fit(model, data, [health, *restore, record.CrashAt(26)], epochs=5)
    if not same_callback:
        health = GradientHealth(tmp_path / "logs", every_n_steps=1)
    history = fit(model, data, [health, *restore], epochs=5, **kwargs)
    assert len(history.history["loss"]) == 3  # resumed at epoch 2
    return served(tmp_path / "logs")


@pytest.mark.parametrize("how", ["backup", "initial_epoch"])
def test_a_resume_by_the_same_callback_logs_the_resumed_values(tmp_path, data, how):
    """The same GradientHealth instance resumes a crashed fit() in the same
    process. Its step buffer held the rows the crashed fit() logged past the
    resume point (steps 21..25 here): they must not pass for the resumed
    fit()'s, whose values equal a new callback's (a fresh buffer)."""
    same = _crash_and_resume(tmp_path / "same", data, True, how)
    new = _crash_and_resume(tmp_path / "new", data, False, how)
    assert [s for s, _ in same] == list(range(35))
    assert [s for s, _ in new] == list(range(35))
    # Training is the same in both: the values must be too.
    np.testing.assert_allclose([v for _, v in same], [v for _, v in new], rtol=1e-5)


class FixedBatch(keras.layers.Layer):
    """Accepts batches of 16 only: a partial last batch fails to trace."""

    def call(self, x):
        if isinstance(x.shape[0], int) and x.shape[0] != BATCH:
            raise ValueError(f"batches of {BATCH} only, got {x.shape[0]}")
        return x


def _fit_after_a_failed_execution(tmp_path, data, same_callback):
    x, y = data
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((FEATURES,)),
        keras.layers.Dense(16, activation="relu", name="h1"),
        FixedBatch(),
        keras.layers.Dense(1, name="out"),
    ])  # fmt: skip
    model.compile(keras.optimizers.SGD(0.05), "mse", steps_per_execution=3)
    health = GradientHealth(tmp_path, every_n_steps=1)
    # 6 batches of 16 and one of 8, alone in the third execution: it fails to
    # trace before anything runs, so Keras's state is intact.
    with pytest.raises(ValueError, match="batches of 16 only"):
        fit(model, (x[:104], y[:104]), [health])
    with open(tmp_path / "gradient_health" / "steps.json") as f:
        start = json.loads(f.read())["next_step"]
    if not same_callback:
        health = GradientHealth(tmp_path, every_n_steps=1)
    for _ in range(2):
        fit(model, (x[:96], y[:96]), [health])  # the remainder dropped
    return start, served(tmp_path)


@pytest.mark.skipif(
    BACKEND != "jax",
    reason="JAX's host-counted steps (TensorFlow traces the partial batch with "
    "an unknown batch size; torch has no steps_per_execution)",
)
def test_fits_after_a_step_failed_in_an_execution_keep_their_step_numbers(
    tmp_path, data
):
    """JAX: the failed execution's batch is counted by the host (7 steps)
    while the device's next-logged-step counter stays at 6. The next fit()
    must set it again, or every later logged step is written one step low
    and each fit() loses its last."""
    start, same = _fit_after_a_failed_execution(tmp_path / "same", data, True)
    start_new, new = _fit_after_a_failed_execution(tmp_path / "new", data, False)
    assert start == start_new
    expected = list(range(6)) + list(range(start, start + 12))
    assert [s for s, _ in new] == expected
    assert [s for s, _ in same] == expected
    np.testing.assert_allclose([v for _, v in same], [v for _, v in new], rtol=1e-5)


@pytest.mark.parametrize("text", ["7", "[7]", '"7"'])
def test_a_steps_json_that_is_not_an_object_falls_back_on_the_event_files(
    tmp_path, data, text
):
    """A garbled steps.json falls back on the event files, also one that
    parses as JSON but not as an object."""
    model = mlp()
    model.compile(keras.optimizers.SGD(0.05), "binary_crossentropy")
    fit(model, data, [GradientHealth(tmp_path, every_n_steps=1)])  # steps 0..6
    (tmp_path / "gradient_health" / "steps.json").write_text(text)
    fit(model, data, [GradientHealth(tmp_path, every_n_steps=1)])
    assert [s for s, _ in served(tmp_path)] == list(range(14))
