"""`BackupAndRestore` through a real TensorBoard server (issue 18): after a
crash and a resumed `fit()`, the server shows one line through the restart,
whatever the callbacks' order, in one process or two. The points logged
after the last backup are superseded, not doubled."""

import os
import subprocess
import sys
import urllib.parse

import keras
import numpy as np
import pytest

from keras_fanin import GradientHealth
from keras_fanin_logs import report
from tests.helpers import TRAIN, get_json, tensorboard_server

pytestmark = pytest.mark.slow

EPOCHS, BATCHES = 4, 7  # 28 steps; the crash comes in epoch 2, after 3 of them
CRASH_AT = 2 * BATCHES + 3

SCRIPT = r"""
import os, sys
import numpy as np
import keras, keras_fanin

log_dir, backup, crash = sys.argv[1], sys.argv[2], sys.argv[3] == "crash"
rng = np.random.default_rng(0)
x = rng.normal(size=(112, 8)).astype("float32")
y = (x[:, :1] > 0).astype("float32")
keras.utils.set_random_seed(0)
model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu",
    name="h1"), keras.layers.Dense(1, activation="sigmoid", name="out")])
model.compile(keras.optimizers.SGD(0.05), "binary_crossentropy")

class Die(keras.callbacks.Callback):
    seen = 0
    def on_train_batch_end(self, batch, logs=None):
        Die.seen += 1
        if Die.seen > int(sys.argv[4]):
            os._exit(3)  # the process dies: no exception, no on_train_end

callbacks = [keras.callbacks.BackupAndRestore(backup),
             keras_fanin.GradientHealth(log_dir, every_n_steps=1)]
if crash:
    callbacks.append(Die())
model.fit(x, y, batch_size=16, epochs=int(sys.argv[5]), verbose=0, shuffle=False,
          callbacks=callbacks)
"""


def model_and_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(BATCHES * 16, 8)).astype("float32")
    y = (x[:, :1] > 0).astype("float32")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((8,)),
        keras.layers.Dense(16, activation="relu", name="h1"),
        keras.layers.Dense(1, activation="sigmoid", name="out"),
    ])  # fmt: skip
    model.compile(keras.optimizers.SGD(0.05), "binary_crossentropy")
    return model, x, y


class Crash(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seen = 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen > CRASH_AT - 1:
            raise RuntimeError("preempted")


def crash_and_resume(log_dir, backup, order, new_callback):
    model, x, y = model_and_data()
    health = GradientHealth(log_dir, every_n_steps=1)
    restore = keras.callbacks.BackupAndRestore(backup)
    first = [health, restore] if order == "health_first" else [restore, health]
    kwargs = {"batch_size": 16, "epochs": EPOCHS, "verbose": 0, "shuffle": False}
    with pytest.raises(RuntimeError, match="preempted"):
        model.fit(x, y, callbacks=[*first, Crash()], **kwargs)
    if new_callback:
        health = GradientHealth(log_dir, every_n_steps=1)
    then = [health, restore] if order == "health_first" else [restore, health]
    history = model.fit(x, y, callbacks=then, **kwargs)
    assert len(history.history["loss"]) == EPOCHS - 2  # resumed at epoch 2


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("restore")
    runs = {}
    for order in ("health_first", "restore_first"):
        for new_callback in (False, True):
            name = f"{order}{'_new' if new_callback else ''}"
            crash_and_resume(root / name, root / f"backup_{name}", order, new_callback)
            runs[name] = root / name
    # Two processes: the first dies mid-epoch with os._exit, the second resumes.
    script = root / "train.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    for step in ("crash", "resume"):
        proc = subprocess.run(
            [sys.executable, str(script), str(root / "processes"),
             str(root / "backup_processes"), step, str(CRASH_AT), str(EPOCHS)],
            env=env, capture_output=True, text=True, timeout=240,
        )  # fmt: skip
        assert proc.returncode == (3 if step == "crash" else 0), proc.stderr[-3000:]
    runs["processes"] = root / "processes"

    def ready(tags):
        return all(f"{name}/{TRAIN}" in tags for name in runs)

    with tensorboard_server(root, ready) as url:
        yield f"{url}/data/plugin/scalars", runs


@pytest.mark.parametrize(
    "name",
    ["health_first", "restore_first", "health_first_new", "restore_first_new",
     "processes"],
)  # fmt: skip
def test_the_server_shows_one_line_through_the_restart(served, name):
    base, runs = served
    query = urllib.parse.urlencode({"run": f"{name}/{TRAIN}", "tag": "grad_norm/h1"})
    points = get_json(f"{base}/scalars?{query}")
    assert [step for _, step, _ in points] == list(range(EPOCHS * BATCHES))
    # The reader behind the server agrees.
    from tensorboard.backend.event_processing import plugin_event_accumulator

    reader = plugin_event_accumulator.EventAccumulator(str(runs[name] / TRAIN))
    reader.Reload()
    read = [e.step for e in reader.Tensors("grad_norm/h1")]
    assert read == list(range(EPOCHS * BATCHES))
    # The event files hold the superseded points too; the server shows the
    # resumed run's values there.
    on_disk = raw_points(runs[name] / TRAIN, "grad_norm/h1")
    resumed = dict(on_disk)  # the later write of a step wins
    for _, step, value in points:
        assert value == pytest.approx(resumed[step], rel=1e-6)
    if name != "processes":  # os._exit lost what was not flushed
        doubled = len(on_disk) - len(resumed)
        assert doubled == CRASH_AT - 2 * BATCHES
    # `keras-fanin report` drops the superseded points as the server does.
    steps, values = report(runs[name]).runs[TRAIN].history["grad_norm/h1"]
    assert list(steps) == [step for _, step, _ in points]
    assert list(values) == pytest.approx([v for _, _, v in points], rel=1e-6)


def raw_points(run_dir, tag):
    """Every `(step, value)` of `tag` in the event files, in file order."""
    from tensorboard.backend.event_processing import event_file_loader
    from tensorboard.util import tensor_util

    out = []
    for name in sorted(os.listdir(run_dir)):
        for event in event_file_loader.EventFileLoader(str(run_dir / name)).Load():
            for value in event.summary.value:
                if value.tag == tag:
                    array = tensor_util.make_ndarray(value.tensor)
                    out.append((event.step, float(array)))
    return out
