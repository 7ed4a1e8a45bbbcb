"""Several JAX processes, one run (`jax.distributed` and `keras.distribution`).

Every process runs the same `fit()`, and each train function is one program
over every process's devices: all processes must run the same functions in
the same order, or the collectives inside them never meet. So every process
keeps the callback's whole state (it counts the steps, logs and probes at
the same ones, reads the same numbers) and only process 0 writes files or
warns. What a process reads on the host comes through here: the step buffer
and the probe's vector (a local copy when replicated, else gathered by every
process at once) and the run's step axis (process 0's, broadcast: another
host may not see its `steps.json`).
"""

import json

import keras
import numpy as np

from keras_fanin._numpy import to_numpy


def _multi_process():
    if keras.backend.backend() != "jax":
        return False
    import jax

    return jax.process_count() > 1


def host_value(x):
    """`x` (a tensor or variable) as a NumPy array on this process.

    A global JAX array that no process holds whole is gathered: a collective,
    so every process calls this at the same point (they all flush alike).
    """
    if isinstance(x, keras.Variable):
        x = x.value
    if _multi_process():
        import jax

        if (
            isinstance(x, jax.Array)
            and not x.is_fully_addressable
            and not x.is_fully_replicated
        ):
            from jax.experimental import multihost_utils

            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(to_numpy(x))


def from_chief(read):
    """`read()` (a JSON value) as process 0 reads it, on every process.

    Alone, just `read()`. Else every process calls this at the same point:
    process 0 reads and broadcasts (two collectives), the others read nothing.
    """
    if not _multi_process():
        return read()
    import jax
    from jax.experimental import multihost_utils

    data = json.dumps(read()).encode() if jax.process_index() == 0 else b""
    size = int(multihost_utils.broadcast_one_to_all(np.int32(len(data))))
    padded = np.frombuffer(data.ljust(size, b"\0"), np.uint8)
    data = multihost_utils.broadcast_one_to_all(padded)
    return json.loads(bytes(np.asarray(data, np.uint8)).decode())
