"""GradientHealth and the initializers on every Keras backend (issue 13).

Each backend runs in its own process (Keras picks its backend once per
process). The TensorFlow suite is this file's process; the JAX and torch runs
are subprocesses, checked here against the TensorFlow numbers, which the
other tests check against tf.GradientTape.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import TRAIN, read_scalars, run_python

BACKENDS = ("tensorflow", "jax", "torch")

SCRIPT = r"""
import json, os, sys
import numpy as np
import keras, keras_fanin

log_dir, weights_file = sys.argv[1], sys.argv[2]
rng = np.random.default_rng(0)
x = rng.normal(size=(96, 8)).astype("float32")
y = (x[:, :1] - x[:, 1:2] > 0).astype("float32")
inputs = keras.Input((8,))
h = keras.layers.Dense(16, activation="relu", name="h1")(inputs)
h = keras.layers.Dense(16, activation="tanh", name="h2")(h)
dead = keras.layers.Dense(8, activation="relu", name="dead")(h)
merged = keras.layers.Concatenate(name="merge")([h, dead])
model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid", name="out")(merged))
weights = np.load(weights_file)
model.set_weights([weights[f"w{i}"] for i in range(len(weights.files))])
model.compile(keras.optimizers.SGD(0.1, global_clipnorm=0.5), "binary_crossentropy")
health = keras_fanin.GradientHealth(log_dir, (x[:48], y[:48]), every_n_steps=1,
                                    probe_every_n_steps=2)
model.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0, callbacks=[health])
probe = json.loads(json.dumps(health.probe_history))
# The same callback on an unbuilt subclassed model, a second fit().
class Net(keras.Model):
    def __init__(self):
        super().__init__()
        self.a = keras.layers.Dense(8, activation="relu", name="sub_a")
        self.b = keras.layers.Dense(1, activation="sigmoid", name="sub_b")
    def call(self, x):
        return self.b(self.a(x))
net = Net()
net.compile(keras.optimizers.Adam(0.01), "binary_crossentropy")
net.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[health])
net.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[health])
print(json.dumps({
    "backend": keras.backend.backend(),
    "history": health.history,
    "probe": probe,
    "tensorflow_imported": "tensorflow" in sys.modules,
    "restored": "train_step" not in vars(model)
                and "call" not in vars(model.get_layer("h1")),
}))
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("backends")
    rng = np.random.default_rng(1)
    shapes = [(8, 16), (16,), (16, 16), (16,), (16, 8), (8,), (24, 1), (1,)]
    weights = [rng.normal(scale=0.4, size=s).astype("float32") for s in shapes]
    weights[5][:] = -100.0  # the dead layer's bias
    np.savez(root / "weights.npz", **{f"w{i}": w for i, w in enumerate(weights)})
    script = root / "run.py"
    script.write_text(SCRIPT)
    out = {}
    for backend in BACKENDS:
        env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
        proc = subprocess.run(
            [sys.executable, str(script), str(root / backend), str(root / "weights.npz")],
            capture_output=True, text=True, env=env, timeout=300,
        )  # fmt: skip
        assert proc.returncode == 0, f"{backend}: {proc.stderr[-4000:]}"
        out[backend] = json.loads(proc.stdout.strip().splitlines()[-1])
        out[backend]["log_dir"] = root / backend
    return out


@pytest.mark.slow
def test_same_numbers_on_every_backend(runs):
    reference = runs["tensorflow"]["history"]
    assert {"grad_norm/h1", "update_ratio/h2", "weight_norm/out",
            "dead_relu_fraction/dead", "saturated_tanh_fraction/h2",
            "clip/factor", "grad_norm/sub_a"} <= set(reference)  # fmt: skip
    for backend in ("jax", "torch"):
        history = runs[backend]["history"]
        assert set(history) == set(reference), backend
        for tag, series in reference.items():
            other = history[tag]
            assert [s for s, _ in other] == [s for s, _ in series], (backend, tag)
            if "/sub_" in tag:
                continue  # the subclassed model draws its own weights per backend
            # The first step sees identical weights and batch: 1e-5. Later
            # steps carry float32 rounding of different kernels forward.
            rel = 1e-5
            for (step, a), (_, b) in zip(other, series, strict=True):
                if step >= 6:  # the subclassed model's steps (global tags)
                    continue
                assert a == pytest.approx(b, rel=rel, abs=1e-6), (backend, tag, step)
                rel = 1e-4
    assert reference["dead_relu_fraction/dead"][-1][1] == 1.0
    # The probe: the same fixed batch, measured on each backend.
    probe = runs["tensorflow"]["probe"]
    assert {"grad_norm/h1", "probe_loss", "dead_relu_fraction/dead"} <= set(probe)
    for backend in ("jax", "torch"):
        other = runs[backend]["probe"]
        assert set(other) == set(probe), backend
        for tag, series in probe.items():
            assert [s for s, _ in other[tag]] == [s for s, _ in series] == [0, 2, 4, 6]
            rel = 1e-5
            for (_, a), (_, b) in zip(other[tag], series, strict=True):
                assert a == pytest.approx(b, rel=rel, abs=1e-6), (backend, tag)
                rel = 1e-4
    # The callback moved to another (unbuilt at first) model: the run's step
    # axis goes on after the first model's 6 steps, through both its fit()s.
    assert [s for s, _ in reference["grad_norm/sub_a"]] == list(range(6, 12))


@pytest.mark.slow
def test_event_files_without_tensorflow_read_by_tensorboard(runs):
    for backend in ("jax", "torch"):
        run = runs[backend]
        assert not run["tensorflow_imported"], backend
        assert run["restored"], backend
        scalars = read_scalars(run["log_dir"], TRAIN)
        assert set(scalars) == set(run["history"]), backend
        for tag, series in run["history"].items():
            assert [s for s, _ in scalars[tag]] == [s for s, _ in series]
            np.testing.assert_allclose(
                [v for _, v in scalars[tag]], [v for _, v in series], rtol=1e-6
            )


# What runs again on JAX and on torch: the files whose code differs by
# backend (the random draws, the step hooks, the probe, check's measuring).
# Not again: the fans and the gain table (shape rules and numpy integrals,
# checked on TensorFlow) and report (a reader that imports no backend; it
# reads JAX's and torch's event files in the tests above).
TEST_FILES = (
    "tests/test_initializers.py",
    # GradientHealth (probe, models, the real step, histograms) and check;
    # the `tf_only` tests skip themselves.
    "tests/test_gradient_health.py", "tests/test_gradient_health_models.py",
    "tests/test_gradient_health_step.py", "tests/test_histograms.py",
    "tests/test_check.py", "tests/test_fix.py",
    # The step axis and the model's lifecycle across fit() calls (issue 18).
    "tests/test_record.py", "tests/test_record_faults.py",
    "tests/test_custom_steps.py",
)  # fmt: skip
# On torch only, which runs the above in less than half JAX's time (JAX
# compiles each new shape): the orthogonal family, LSUV and every layer with
# kernels judged (issue 18; Keras Applications on TensorFlow only).
MORE_FILES = {
    "jax": (),
    "torch": ("tests/test_orthogonal.py", "tests/test_lsuv.py",
              "tests/test_every_layer.py"),
}  # fmt: skip
DESELECT = "not applications"


@pytest.mark.slow
def test_test_files_pass_on_jax_and_torch(tmp_path):
    """The initializer and GradientHealth test files, whole, on JAX and on torch
    (`TEST_FILES`, `MORE_FILES`): one pytest process per backend, both at once
    (each mostly waits on one core; this process only waits)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    procs = {}
    for backend in ("jax", "torch"):
        log = open(tmp_path / f"{backend}.log", "w+")  # noqa: SIM115 (closed below)
        procs[backend] = (log, subprocess.Popen(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfEs",
             "-k", DESELECT, *TEST_FILES, *MORE_FILES[backend]],
            stdout=log, stderr=subprocess.STDOUT, text=True, cwd=root,
            env={**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"},
        ))  # fmt: skip
    failures = {}
    for backend, (log, proc) in procs.items():
        try:
            proc.wait(timeout=900)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.seek(0)
        output = log.read()
        log.close()
        if proc.returncode != 0 or " passed" not in output:
            failures[backend] = output[-4000:]
    assert not failures, "\n\n".join(f"{b}:\n{o}" for b, o in failures.items())


def test_import_never_imports_tensorflow_on_jax_and_torch():
    for backend in ("jax", "torch"):
        out = run_python(
            "import sys, keras_fanin\n"
            "from keras_fanin import GradientHealth\n"
            "GradientHealth('logs_unused')\n"
            "print('tensorflow' in sys.modules)\n",
            env={"KERAS_BACKEND": backend},
        )
        assert out.strip().splitlines()[-1] == "False", backend


DATA_PARALLEL = r"""
import json, os, sys
import numpy as np
import keras, keras_fanin

def run(log_dir, parallel):
    if parallel:
        devices = keras.distribution.list_devices("cpu")
        assert len(devices) == 2, devices
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(128, 12)).astype("float32")
    y = (x[:, :1] > 0).astype("float32")
    model = keras.Sequential([
        keras.Input((12,)),
        keras.layers.Dense(16, activation="relu", name="hidden",
                           kernel_initializer=keras_fanin.He(seed=1)),
        keras.layers.Dense(1, activation="sigmoid", name="out",
                           kernel_initializer=keras_fanin.Xavier(seed=2)),
    ])
    model.compile(keras.optimizers.SGD(0.1), "binary_crossentropy")
    health = keras_fanin.GradientHealth(log_dir, (x[:64], y[:64]), every_n_steps=1,
                                        probe_every_n_steps=2)
    model.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0,
              callbacks=[health])
    files = sum(len(os.listdir(os.path.join(log_dir, "gradient_health", r)))
                for r in ("train", "probe"))
    return {"history": health.history, "probe": health.probe_history,
            "files": files}

print(json.dumps(run(sys.argv[1], sys.argv[2] == "parallel")))
"""


@pytest.mark.slow
def test_jax_data_parallel_equals_one_device(tmp_path):
    script = tmp_path / "dp.py"
    script.write_text(DATA_PARALLEL)
    out = {}
    for mode in ("parallel", "single"):
        env = {**os.environ, "KERAS_BACKEND": "jax",
               "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}  # fmt: skip
        proc = subprocess.run(
            [sys.executable, str(script), str(tmp_path / mode), mode],
            capture_output=True, text=True, env=env, timeout=300,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-4000:]
        out[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["parallel"]["files"] == 2  # one writer per run
    for kind in ("history", "probe"):
        single, parallel = out["single"][kind], out["parallel"][kind]
        assert set(parallel) == set(single) and single
        for tag, series in single.items():
            assert [s for s, _ in parallel[tag]] == [s for s, _ in series]
            for (_, a), (_, b) in zip(parallel[tag], series, strict=True):
                assert a == pytest.approx(b, rel=1e-4, abs=1e-7), (kind, tag)
