"""Helpers shared by the tests: subprocess runner, config round trips, event
file readers and an independent gradient on every backend."""

import contextlib
import os
import subprocess
import sys


def run_python(code, env=None, timeout=240):
    """Runs `code` in a fresh interpreter and returns its stdout (raises on failure)."""
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


def free_port():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get_json(url):
    import json
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


@contextlib.contextmanager
def tensorboard_server(
    log_dir, ready, timeout=90, args=(), env=None, python=sys.executable, cwd=None
):
    """A real `tensorboard` server on 127.0.0.1 over `log_dir`.

    Yields its root URL once `ready(tags)` holds for the `{run: {tag: ...}}`
    its scalars plugin serves (or `timeout` seconds passed). `args` go after
    the defaults (a later flag wins), `env` over the current environment (a
    value of None removes the variable); `python` (another environment's
    interpreter) runs it from `cwd`.
    """
    import time

    port = free_port()
    full_env = {**os.environ, **(env or {})}
    server = subprocess.Popen(
        [python, "-m", "tensorboard.main", "--logdir", str(log_dir),
         "--host", "127.0.0.1", "--port", str(port), "--load_fast", "false",
         "--reload_interval", "1", *args],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=cwd,
        env={key: value for key, value in full_env.items() if value is not None},
    )  # fmt: skip
    root = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert server.poll() is None, "tensorboard exited"
            try:
                tags = get_json(f"{root}/data/plugin/scalars/tags")
            except OSError:
                tags = {}
            if ready(tags):
                break
            time.sleep(0.5)
        yield root
    finally:
        server.terminate()
        server.wait(timeout=30)


def independent_gradients(model, x, y, loss=None, training=True):
    """The gradients of `loss(y, model(x))` for `model.trainable_weights`, as
    NumPy arrays, from the backend's own autodiff, none of keras_fanin's code:
    `tf.GradientTape`, `jax.grad` or `torch.autograd.grad` over the model
    called in a `keras.StatelessScope` (no BatchNorm statistic or seed moves).
    `loss` defaults to binary cross-entropy."""
    import keras
    import numpy as np

    loss = loss or keras.losses.BinaryCrossentropy()
    variables = model.trainable_weights
    others = [v for v in model.weights if all(v is not w for w in variables)]

    def value(trainable):
        mapping = [*zip(variables, trainable, strict=True)]
        mapping += [(v, v.value) for v in others]
        with keras.StatelessScope(state_mapping=mapping):
            return loss(y, model(x, training=training))

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        trainable = [tf.identity(v.value) for v in variables]
        with tf.GradientTape() as tape:
            tape.watch(trainable)
            result = value(trainable)
        grads = tape.gradient(result, trainable)
    elif backend == "jax":
        import jax

        grads = jax.grad(value)([v.value for v in variables])
    elif backend == "torch":
        import torch

        leaves = [v.value.detach().requires_grad_(True) for v in variables]
        grads = torch.autograd.grad(value(leaves), leaves, allow_unused=True)
    else:
        raise NotImplementedError(backend)
    return [
        np.zeros(v.shape, "float32") if g is None else keras.ops.convert_to_numpy(g)
        for v, g in zip(variables, grads, strict=True)
    ]


def layer_norms(model, tensors):
    """Per-layer L2 norms of per-variable arrays aligned with trainable_weights."""
    import math

    import numpy as np

    by_var = dict(zip([id(v) for v in model.trainable_weights], tensors, strict=True))
    return {
        layer.name: math.sqrt(
            sum(
                float(np.sum(np.square(np.asarray(by_var[id(v)], "float64"))))
                for v in layer.trainable_weights
            )
        )
        for layer in model.layers
        if layer.trainable_weights
    }


def grad_norms(model, x, y, loss=None, training=True):
    """Per-layer gradient norms from `independent_gradients`."""
    return layer_norms(model, independent_gradients(model, x, y, loss, training))


def round_trip(obj):
    """Serializes `obj` with Keras and deserializes it back, as saving does."""
    import keras

    return keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(obj)
    )


def assert_config_round_trips(init, shape):
    """`from_config(get_config())` and Keras's serialization give `init` back:
    the same class and config, and, with an int seed, the same draw."""
    import keras
    import numpy as np

    config = init.get_config()
    rebuilt = type(init).from_config(config)
    restored = round_trip(init)
    for again in (rebuilt, restored):
        assert type(again) is type(init)
        assert again.get_config() == config
    if isinstance(config["seed"], int):  # an unseeded one picks a new seed
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(rebuilt(shape)),
            keras.ops.convert_to_numpy(init(shape)),
        )


def _accumulator(log_dir, run):
    """A loaded TensorBoard EventAccumulator over one run, keeping every tensor."""
    import os

    from tensorboard.backend.event_processing import event_accumulator

    acc = event_accumulator.EventAccumulator(
        os.path.join(str(log_dir), run), size_guidance={event_accumulator.TENSORS: 0}
    )
    acc.Reload()
    return acc


TRAIN = "gradient_health/train"
PROBE = "gradient_health/probe"


def read_scalars(log_dir, run=TRAIN):
    """Reads every scalar of a run with TensorBoard's own event reader.

    Returns `{tag: [(step, value), ...]}` (TF2 summaries are stored as tensors).
    """
    from tensorboard.util import tensor_util

    acc = _accumulator(log_dir, run)
    return {
        tag: [
            (e.step, float(tensor_util.make_ndarray(e.tensor_proto)))
            for e in acc.Tensors(tag)
        ]
        for tag in acc.Tags()["tensors"]
        if acc.SummaryMetadata(tag).plugin_data.plugin_name == "scalars"
    }


def custom_scalars_layout(log_dir, run=TRAIN):
    """The custom-scalars layout proto written into a run, or None."""
    from tensorboard.plugins.custom_scalar import layout_pb2
    from tensorboard.util import tensor_util

    acc = _accumulator(log_dir, run)
    tag = "custom_scalars__config__"
    if tag not in acc.Tags()["tensors"]:
        return None
    raw = tensor_util.make_ndarray(acc.Tensors(tag)[0].tensor_proto).item()
    return layout_pb2.Layout.FromString(raw)


def read_histograms(log_dir, run=TRAIN):
    """`{tag: [(step, [k, 3] array)]}` of the histograms plugin's tags, read
    with TensorBoard's EventAccumulator."""
    from tensorboard.util import tensor_util

    acc = _accumulator(log_dir, run)
    return {
        tag: [(e.step, tensor_util.make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)]
        for tag in acc.Tags()["tensors"]
        if acc.SummaryMetadata(tag).plugin_data.plugin_name == "histograms"
    }  # fmt: skip
