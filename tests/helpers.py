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
