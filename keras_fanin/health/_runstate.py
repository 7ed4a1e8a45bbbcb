"""Where a run's step axis stands: kept beside its event files.

Every `fit()` appends its steps after the last one already in the run, also
from a new process or a new callback on the same `log_dir`. The callback
keeps `<log_dir>/gradient_health/steps.json` up to date: the next step
number, the step of the last probe measurement, and while a `fit()` runs,
the step at which each of its epochs began.
A `fit()` that resumes one that did not end (`BackupAndRestore`) starts at
the step where its first epoch began before. Logs written before this file
existed give their newest step from the event files themselves.
"""

import json
import os

from tensorboard.compat.proto import event_pb2

from keras_fanin.health._hosts import from_chief
from keras_fanin.health._writer import gfile
from keras_fanin_logs._records import event_files, join, read_bytes, records
from keras_fanin_logs._signals import RUNS

STATE_FILE = "steps.json"


def read_state(root):
    """`(next_step, open_epochs, probe_last)` of the run under `root`:
    `open_epochs` is `{epoch: step}` of a fit() that did not end (or None),
    `probe_last` the step of the last probe measurement (or None); `(0, None,
    None)` for a new run."""
    fs = gfile()
    path = os.path.join(root, STATE_FILE)
    try:
        if fs.exists(path):
            with fs.GFile(path, "r") as f:
                state = json.loads(f.read())
            if not isinstance(state, dict):
                raise ValueError("not a JSON object")
            open_epochs = state.get("open")
            if open_epochs is not None:
                open_epochs = {int(k): int(v) for k, v in open_epochs.items()}
            probe_last = state.get("probe_last")
            probe_last = None if probe_last is None else int(probe_last)
            return int(state["next_step"]), open_epochs, probe_last
    except (ValueError, KeyError, TypeError, OSError):
        pass  # unreadable: fall back on the event files
    return _newest_step(root) + 1, None, None


def read_shared_state(root):
    """`read_state` as process 0 reads it, on every process of a multi-process
    JAX run: they must log the same steps, and another host may not see the
    file (or see it before process 0 updates it)."""

    def read():
        next_step, open_epochs, probe_last = read_state(root)
        if open_epochs is not None:
            open_epochs = sorted(open_epochs.items())  # JSON keys are strings
        return next_step, open_epochs, probe_last

    next_step, open_epochs, probe_last = from_chief(read)
    if open_epochs is not None:
        open_epochs = {int(k): int(v) for k, v in open_epochs}
    return next_step, open_epochs, probe_last


def write_state(root, next_step, open_epochs, probe_last=None):
    state = {"next_step": int(next_step)}
    if open_epochs is not None:
        state["open"] = {str(k): int(v) for k, v in open_epochs.items()}
    if probe_last is not None:
        state["probe_last"] = int(probe_last)
    data = json.dumps(state).encode()
    path = os.path.join(root, STATE_FILE)
    if "://" in path:
        fs = gfile()
        fs.makedirs(root)
        with fs.GFile(path, "w") as f:
            f.write(data.decode())
        return
    # A fit() writes this a few times; replacing or truncating a file frees
    # its blocks, which on a disk mounted with `discard` costs a synchronous
    # TRIM (0.2 ms each, about a tenth of a short JAX fit). So the file is
    # overwritten in place, padded with spaces JSON ignores, in one write (a
    # write torn by a crash reads as unreadable: the event files say where
    # the run stands, as for logs without this file).
    try:
        fd = os.open(path, os.O_WRONLY)
    except FileNotFoundError:
        fd = None
    if fd is not None:
        try:
            size = os.fstat(fd).st_size
            if len(data) <= size:
                os.pwrite(fd, data.ljust(size), 0)
                return
        finally:
            os.close(fd)
    # New, or outgrown: written whole with room to spare, then renamed, so a
    # crash leaves the old file or the new one.
    os.makedirs(root, exist_ok=True)
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "wb") as f:
        f.write(data.ljust(max(_PADDED, 2 * len(data))))
    os.replace(temporary, path)


_PADDED = 256


def has_events(run_dir):
    """Whether a run directory already holds event files."""
    fs = gfile()
    return fs.isdir(run_dir) and any("tfevents" in n for n in fs.listdir(run_dir))


def _newest_step(root):
    """The largest step in each run's newest event file that has one.

    Read with `report`'s reader, which needs no TensorFlow on JAX or torch.
    """
    newest = -1
    for run in RUNS:
        for path in reversed(event_files(join(root, run))):
            steps = [
                event.step
                for event in map(event_pb2.Event.FromString, records(read_bytes(path)))
                if event.HasField("summary")
            ]
            if steps:
                newest = max(newest, max(steps))
                break
    return newest
