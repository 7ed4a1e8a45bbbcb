"""GradientHealth under tf.distribute.MultiWorkerMirroredStrategy: two worker
processes on 127.0.0.1; only the chief writes, and the step's gradients equal
a single-process run on the same global batch."""

import json
import os
import socket
import subprocess
import sys

import pytest

from tests.helpers import run_python

WORKER = r"""
import json, os, sys
import numpy as np
import tensorflow as tf
strategy = tf.distribute.MultiWorkerMirroredStrategy()
import keras, keras_fanin

log_dir, out = sys.argv[1], sys.argv[2]
keras.utils.set_random_seed(0)
rng = np.random.default_rng(0)
x = rng.normal(size=(128, 12)).astype("float32")
y = (x[:, :1] > 0).astype("float32")
with strategy.scope():
    model = keras.Sequential([
        keras.Input((12,)),
        keras.layers.Dense(16, activation="relu", name="hidden",
                           kernel_initializer=keras_fanin.He(seed=1)),
        keras.layers.Dense(1, activation="sigmoid", name="out",
                           kernel_initializer=keras_fanin.Xavier(seed=2)),
    ])
    model.compile(keras.optimizers.SGD(0.1), "binary_crossentropy")
health = keras_fanin.GradientHealth(log_dir, every_n_steps=1)
dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
options = tf.data.Options()
options.experimental_distribute.auto_shard_policy = (
    tf.data.experimental.AutoShardPolicy.DATA)
model.fit(dataset.with_options(options), epochs=2, verbose=0, callbacks=[health])
with open(out, "w") as f:
    json.dump({"history": health.history,
               "replicas": strategy.num_replicas_in_sync}, f)
"""

SINGLE = WORKER.replace(
    "strategy = tf.distribute.MultiWorkerMirroredStrategy()",
    "strategy = tf.distribute.get_strategy()",
).replace("sys.argv[1], sys.argv[2]", "LOG_DIR, OUT")


KERAS_MWMS_BUG = "Attempt to convert a value (PerReplica"


def free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.slow
def test_only_the_chief_writes_and_gradients_equal_one_process(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    workers = [f"127.0.0.1:{port}" for port in free_ports(2)]
    procs = []
    try:
        for index in range(2):
            env = {
                **os.environ,
                "TF_CPP_MIN_LOG_LEVEL": "3",
                "TF_CONFIG": json.dumps(
                    {
                        "cluster": {"worker": workers},
                        "task": {"type": "worker", "index": index},
                    }
                ),  # fmt: skip
            }
            procs.append(subprocess.Popen(
                [sys.executable, str(script), str(tmp_path / f"logs{index}"),
                 str(tmp_path / f"out{index}.json")],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            ))  # fmt: skip
        errors = [proc.communicate(timeout=240)[1] for proc in procs]
        if any(KERAS_MWMS_BUG in err for err in errors):
            # Keras 3's fit() cannot start under this strategy: its
            # `_maybe_symbolic_build` reduces the first distributed batch with
            # `strategy.reduce`, which MultiWorkerMirroredStrategy refuses for
            # it. Not ours to fix; the test runs in full once Keras is fixed.
            pytest.xfail("keras-team/keras#20585: fit() fails under MWMS")
        for proc, err in zip(procs, errors, strict=True):
            assert proc.returncode == 0, err[-3000:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    chief, other = (json.loads((tmp_path / f"out{i}.json").read_text()) for i in (0, 1))
    assert chief["replicas"] == 2
    # Worker 0 is the chief: it writes; the other worker writes nothing at all.
    assert os.listdir(tmp_path / "logs0" / "gradient_health" / "train")
    assert not (tmp_path / "logs1").exists()
    single = json.loads(
        run_python(
            SINGLE.replace("LOG_DIR", repr(str(tmp_path / "single"))).replace(
                "OUT", repr(str(tmp_path / "single.json"))
            )
            + "\nprint(open(OUT).read())".replace(
                "OUT", repr(str(tmp_path / "single.json"))
            )
        )
        .strip()
        .splitlines()[-1]
    )
    assert single["replicas"] == 1
    for tag in ("grad_norm/hidden", "grad_norm/out", "update_ratio/hidden"):
        ours, reference = chief["history"][tag], single["history"][tag]
        assert [s for s, _ in ours] == [s for s, _ in reference] == list(range(8))
        for (_, a), (_, b) in zip(ours, reference, strict=True):
            assert a == pytest.approx(b, rel=1e-4), tag
    # The non-chief measures too (its advice still works); it only does not write.
    assert other["history"]["grad_norm/hidden"] == chief["history"]["grad_norm/hidden"]
