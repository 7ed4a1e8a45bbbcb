"""GradientHealth under Keras's own multi-host engine (issue 19): JAX's
`keras.distribution` across two real processes on 127.0.0.1
(`jax.distributed`, gloo CPU collectives), each with its own log_dir as on
separate hosts. Only process 0 writes and warns, and what it writes equals a
one-process run over the same global batches: under `DataParallel` (a
`tf.data.Dataset` Keras shards per process) and under `ModelParallel` with
kernels sharded across the two processes."""

import importlib.util
import json
import os
import subprocess
import sys
import time

import pytest

from tests.helpers import PROBE, TRAIN, free_port, read_scalars

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="needs jax"),
]

WORKER = r"""
import json, os, sys, warnings
mode, processes, index, port, out = sys.argv[1:6]
processes, index = int(processes), int(index)
import jax
if processes > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{port}", processes, index,
                               initialization_timeout=60)
import numpy as np
sharded = processes > 1 and mode == "data"
if sharded:
    import tensorflow as tf
import keras, keras_fanin

rng = np.random.default_rng(0)
x = rng.normal(size=(128, 12)).astype("float32")
y = (x[:, :1] - x[:, 1:2] > 0).astype("float32")
info = {}
if processes > 1 and mode == "data":
    keras.distribution.set_distribution(keras.distribution.DataParallel(
        devices=keras.distribution.list_devices()))
elif processes > 1:
    # A (batch, model) mesh whose model axis runs across the processes: each
    # kernel is split between them; each process holds both batch shards.
    grid = np.array([[f"cpu:{d.id}" for d in jax.devices() if d.process_index == p]
                     for p in range(processes)]).T
    mesh = keras.distribution.DeviceMesh(grid.shape, ["batch", "model"], grid)
    layouts = keras.distribution.LayoutMap(mesh)
    layouts[".*hidden/kernel"] = (None, "model")
    layouts[".*hidden/bias"] = ("model",)
    layouts[".*out/kernel"] = ("model", None)
    # The step buffer split too: no process can read it alone.
    layouts[".*gradient_health_rows"] = (None, "model")
    keras.distribution.set_distribution(keras.distribution.ModelParallel(
        layout_map=layouts, batch_dim_name="batch", auto_shard_dataset=False))

def data():
    if sharded:  # the global batches; Keras shards them per process
        return tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
    # Alone, or under ModelParallel: each process holds both batch shards.
    return x, y

inputs = keras.Input((12,))
hidden = keras.layers.Dense(16, activation="relu", name="hidden",
                            kernel_initializer=keras_fanin.He(seed=1))(inputs)
dead = keras.layers.Dense(4, activation="relu", name="dead",
                          kernel_initializer=keras_fanin.He(seed=3),
                          bias_initializer=keras.initializers.Constant(-100.0))(hidden)
merged = keras.layers.Concatenate(name="merge")([hidden, dead])
model = keras.Model(inputs, keras.layers.Dense(
    1, activation="sigmoid", name="out",
    kernel_initializer=keras_fanin.Xavier(seed=2))(merged))
model.compile(keras.optimizers.Adam(0.01), "binary_crossentropy")
kernel = model.get_layer("hidden").kernel.value
info["kernel_split"] = not (kernel.is_fully_addressable or kernel.is_fully_replicated)
log_dir = os.path.join(os.path.dirname(out), f"logs{index}" if processes > 1 else "logs")
histories = []
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    # With DataParallel, a second callback after the first: its fit() goes
    # on at the run's next step, which process 1 cannot read on its own disk.
    for epochs in (2, 1) if mode == "data" else (2,):
        health = keras_fanin.GradientHealth(log_dir, (x[:64], y[:64]),
                                            every_n_steps=3, probe_every_n_steps=2)
        batches = data()
        kwargs = {} if sharded else {"batch_size": 32, "shuffle": False}
        model.fit(*(batches if isinstance(batches, tuple) else (batches,)),
                  epochs=epochs, verbose=0, callbacks=[health], **kwargs)
        histories.append([health.history, health.probe_history])
info["warnings"] = [str(w.message) for w in caught
                    if issubclass(w.category, keras_fanin.GradientHealthWarning)]
info["histories"] = histories
with open(out, "w") as f:
    json.dump(info, f)
"""


def _run(tmp_path, mode, devices_per_process):
    """Two processes of one distributed run and a one-process reference, at
    once, each bounded in time; returns their outputs."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    port = str(free_port())
    env = {
        **os.environ,
        "KERAS_BACKEND": "jax",
        "JAX_PLATFORMS": "cpu",
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices_per_process}",
    }
    runs = {"process0": (2, 0), "process1": (2, 1), "reference": (1, 0)}
    procs = {}
    for name, (processes, index) in runs.items():
        (tmp_path / name).mkdir()
        out = tmp_path / name / "out.json"
        log = open(tmp_path / f"{name}.log", "w")  # noqa: SIM115 (closed below)
        command = [sys.executable, str(script), mode, str(processes), str(index),
                   port, str(out)]  # fmt: skip
        procs[name] = (log, subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env
        ))  # fmt: skip
    # A process waiting on a collective the other never enters would hang.
    deadline = time.monotonic() + 240
    failures = {}
    for name, (log, proc) in procs.items():
        try:
            proc.wait(timeout=max(1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            failures[name] = "timed out (killed, with the others)\n"
            for _, other in procs.values():
                other.kill()
            proc.wait()
        log.close()
        if proc.returncode != 0:
            output = (tmp_path / f"{name}.log").read_text()[-3000:]
            failures[name] = failures.get(name, "") + output
    for _, proc in procs.values():  # killed above, if any ran over
        proc.wait()
    assert not failures, "\n\n".join(f"{n}:\n{o}" for n, o in failures.items())
    return {
        name: json.loads((tmp_path / name / "out.json").read_text()) for name in runs
    }


def _assert_same_events(log_dir, reference_dir):
    """Every scalar of both runs at the same steps, within 1e-5 relative."""
    for run in (TRAIN, PROBE):
        ours, expected = read_scalars(log_dir, run), read_scalars(reference_dir, run)
        assert set(ours) == set(expected) and expected, run
        for tag, series in expected.items():
            assert [s for s, _ in ours[tag]] == [s for s, _ in series], (run, tag)
            for (step, a), (_, b) in zip(ours[tag], series, strict=True):
                assert a == pytest.approx(b, rel=1e-5, abs=1e-9), (run, tag, step)


def _assert_only_process_0_writes(tmp_path, out, steps):
    written = tmp_path / "process0" / "logs0" / "gradient_health"
    assert {p.name for p in written.iterdir()} == {"train", "probe", "steps.json"}
    assert json.loads((written / "steps.json").read_text())["next_step"] == steps
    assert not (tmp_path / "process1" / "logs1").exists()
    # Both processes measure alike (each could stop training alike); only
    # process 0 warns, as the one-process run does.
    assert out["process1"]["histories"] == out["process0"]["histories"]
    assert out["process1"]["warnings"] == []
    assert out["process0"]["warnings"] == out["reference"]["warnings"]
    assert any("'dead'" in w for w in out["process0"]["warnings"])


def test_data_parallel_over_two_processes_equals_one_process(tmp_path):
    out = _run(tmp_path, "data", devices_per_process=1)
    _assert_only_process_0_writes(tmp_path, out, steps=12)
    # The second fit() went on at step 8 on both processes.
    history = out["process0"]["histories"][1][0]
    assert [s for s, _ in history["grad_norm/hidden"]] == [9]
    _assert_same_events(
        tmp_path / "process0" / "logs0", tmp_path / "reference" / "logs"
    )


def test_model_parallel_kernels_split_across_processes_equal_one_device(tmp_path):
    out = _run(tmp_path, "model", devices_per_process=2)
    assert out["process0"]["kernel_split"] and not out["reference"]["kernel_split"]
    _assert_only_process_0_writes(tmp_path, out, steps=8)
    # grad_norm, weight_norm and update_ratio are the whole variables' (and
    # the activation signals the whole batch's): one device's numbers.
    scalars = read_scalars(tmp_path / "process0" / "logs0", TRAIN)
    assert {"grad_norm/hidden", "weight_norm/hidden", "update_ratio/hidden",
            "update_ratio/out"} <= set(scalars)  # fmt: skip
    _assert_same_events(
        tmp_path / "process0" / "logs0", tmp_path / "reference" / "logs"
    )
