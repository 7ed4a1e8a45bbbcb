"""GradientHealth under tf.distribute.MirroredStrategy over two logical CPUs."""

import json

import pytest

from tests.helpers import run_python

SCRIPT = r"""
import json, os, sys
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras, keras_fanin

def run(log_dir, strategy, fit_in_scope=True):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 12)).astype("float32")
    y = (x[:, :1] > 0).astype("float32")
    with strategy.scope():
        model = keras.Sequential([
            keras.Input((12,)),
            keras.layers.Dense(32, activation="relu", name="hidden",
                               kernel_initializer=keras_fanin.He(seed=1)),
            keras.layers.Dense(1, activation="sigmoid", name="out",
                               kernel_initializer=keras_fanin.Xavier(seed=2)),
        ])
        model.compile(keras.optimizers.SGD(0.1), "binary_crossentropy")
    health = keras_fanin.GradientHealth(log_dir, (x[:64], y[:64]), every_n_steps=1,
                                        probe_every_n_steps=2)
    fit = lambda: model.fit(x, y, batch_size=64, epochs=2, shuffle=False, verbose=0,
                            callbacks=[health])
    if fit_in_scope:
        # Inside the scope Keras divides losses by the replica count and
        # distributed variables need a replica context: both are handled.
        with strategy.scope():
            fit()
    else:
        fit()
    files = [f for run in ("train", "probe")
             for f in os.listdir(os.path.join(log_dir, "gradient_health", run))]
    return {"history": health.history, "probe": health.probe_history,
            "files": len(files),
            "replicas": strategy.num_replicas_in_sync}

out = {
    "mirrored": run(sys.argv[1] + "/mirrored",
                    tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])),
    "mirrored_outside": run(sys.argv[1] + "/outside",
                            tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]),
                            fit_in_scope=False),
    "single": run(sys.argv[1] + "/single", tf.distribute.get_strategy()),
}
print(json.dumps(out))
"""


@pytest.mark.slow
def test_mirrored_strategy_matches_single_device(tmp_path):
    code = SCRIPT.replace("sys.argv[1]", repr(str(tmp_path)))
    result = json.loads(run_python(code).strip().splitlines()[-1])
    single = result["single"]
    assert single["replicas"] == 1
    for mirrored in (result["mirrored"], result["mirrored_outside"]):
        assert mirrored["replicas"] == 2
        assert mirrored["files"] == 2  # one writer per run
        # The probe: every replica measures the whole probe batch.
        assert set(mirrored["probe"]) == set(single["probe"])
        for tag, series in single["probe"].items():
            other = mirrored["probe"][tag]
            assert [s for s, _ in other] == [s for s, _ in series] == [0, 2, 4, 6, 8]
            for (_, a), (_, b) in zip(other, series, strict=True):
                assert a == pytest.approx(b, rel=1e-4, abs=1e-7), tag
        # The real step: gradients after the all-reduce equal the single-device
        # gradients of the global batch; so do updates and weights. Activation
        # signals are the first replica's half batch: not compared.
        for tag, series in single["history"].items():
            if not tag.startswith(("grad_norm/", "update_ratio/", "weight_norm/")):
                continue
            other = mirrored["history"][tag]
            assert [s for s, _ in other] == [s for s, _ in series] == list(range(8))
            for (_, a), (_, b) in zip(other, series, strict=True):
                assert a == pytest.approx(b, rel=1e-4, abs=1e-7), tag
