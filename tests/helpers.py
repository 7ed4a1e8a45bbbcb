"""Helpers shared by the tests: subprocess runner and config round trips."""

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


def round_trip(obj):
    """Serializes `obj` with Keras and deserializes it back, as saving does."""
    import keras

    return keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(obj)
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
