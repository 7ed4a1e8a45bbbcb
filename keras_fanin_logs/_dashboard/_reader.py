"""GradientHealth's runs read through TensorBoard's data provider.

Whatever TensorBoard reads (a local or remote log dir, the Rust data server or
the Python multiplexer, runs still being written) the dashboard reads the same
way: `{tag: (steps, values)}` per run, as `report` reads the event files, plus
the layer table and the warnings. A run's series are read once and kept until
its newest points change (a `read_last_scalars` at most once a second: the
page asks for several views of a run at once, and TensorBoard reloads its
data every few seconds).

Everything goes through the provider's public methods (`read_scalars`,
`read_last_scalars`, `read_tensors`): the provider builds one Python object per
point, about 0.35 s for 100 layers x 5 signals x 250 points, paid once per run
and change, not per route.
"""

import collections
import threading
import time

import numpy as np
from tensorboard.data import provider

from keras_fanin_logs._report import merge_layers
from keras_fanin_logs._signals import (
    HISTOGRAMS,
    LAYERS_TAG,
    PLUGIN_NAME,
    RUN_NAME,
    SIGNALS,
    decode_layers,
)

SCALARS = "scalars"
TEXT = "text"
HISTOGRAM_PLUGIN = "histograms"
# Scalars per series when TensorBoard's `--samples_per_plugin` says nothing:
# a heatmap's width, and what keeps 5 cold runs of 100 layers drawing within
# 2 s (the provider builds a Python object per point; 500 took 3.2 s).
DEFAULT_SAMPLES = 250
# Enough for any layer table or warning series TensorBoard keeps.
TENSOR_SAMPLES = 1000
# Histograms per series: a distribution chart's columns.
HISTOGRAM_SAMPLES = 500
CACHED_RUNS = 32
# Seconds a run's kept series are served without asking whether they moved.
FRESH = 1.0


def _strings(array):
    """Rows of strings of a text summary's tensor (a list is one column)."""
    array = np.asarray(array, dtype=object)
    rows = array.reshape(-1, 1) if array.ndim < 2 else array
    return [
        [c.decode("utf-8", "replace") if isinstance(c, bytes) else str(c) for c in r]
        for r in rows
    ]


class Run:
    """One run as read: `history`, `layers` (`{name: (activation, has_kernel)}`,
    forward order) and `warnings` (`[(step, text)]`)."""

    def __init__(self, history, layers, warnings):
        self.history = history
        self.layers = layers
        self.warnings = warnings
        self.derived = {}  # what routes computed from it, by key


class Reader:
    """Reads GradientHealth's runs from a `DataProvider`, one run at a time."""

    def __init__(self, data_provider, samples=None):
        self._provider = data_provider
        self.samples = samples or DEFAULT_SAMPLES
        # (experiment, run) -> (its newest points, Run, when they were checked)
        self._cache = collections.OrderedDict()
        self._locks = collections.defaultdict(threading.Lock)
        self._lock = threading.Lock()

    def runs(self, ctx, experiment):
        """`{run: layer table}` of the runs GradientHealth wrote, sorted.

        A run counts when it holds the dashboard's layer table, or (logs
        written before it existed) the `layers` text in a `gradient_health`
        run directory.
        """
        ours = self._tables(ctx, experiment, PLUGIN_NAME, LAYERS_TAG, None)
        older = self._tables(ctx, experiment, TEXT, "layers", None)
        runs = dict(ours)
        for run, table in older.items():
            if run not in runs and RUN_NAME in run.split("/"):
                runs[run] = table
        return dict(sorted(runs.items()))

    def run(self, ctx, experiment, run):
        """The `Run` named `run`, read again only if its newest points moved;
        None if `run` holds no per-layer signal."""
        with self._lock:
            cached = self._cache.get((experiment, run))
        if cached is not None and time.monotonic() - cached[2] < FRESH:
            return cached[1]
        last = self._provider.read_last_scalars(
            ctx,
            experiment_id=experiment,
            plugin_name=SCALARS,
            run_tag_filter=provider.RunTagFilter(runs=[run]),
        ).get(run, {})
        if not any(tag.partition("/")[0] in SIGNALS for tag in last):
            return None
        key = tuple(sorted((t, d.step, d.wall_time) for t, d in last.items()))
        with self._lock:
            lock = self._locks[experiment, run]
        with lock:
            cached = self._cache.get((experiment, run))
            value = cached[1] if cached is not None and cached[0] == key else None
            if value is None:
                value = self._read(ctx, experiment, run)
            with self._lock:
                self._cache[experiment, run] = (key, value, time.monotonic())
                self._cache.move_to_end((experiment, run))
                while len(self._cache) > CACHED_RUNS:
                    self._cache.popitem(last=False)
            return value

    def _scalars(self, ctx, experiment, run):
        """`{tag: (steps, values)}`: every scalar series of `run`."""
        scalars = self._provider.read_scalars(
            ctx,
            experiment_id=experiment,
            plugin_name=SCALARS,
            downsample=self.samples,
            run_tag_filter=provider.RunTagFilter(runs=[run]),
        ).get(run, {})
        history = {}
        for tag, data in scalars.items():
            steps = np.fromiter((d.step for d in data), np.float64, len(data))
            values = np.fromiter((d.value for d in data), np.float64, len(data))
            history[tag] = (steps, values)
        return history

    def _read(self, ctx, experiment, run):
        history = self._scalars(ctx, experiment, run)
        layers = self._tables(ctx, experiment, PLUGIN_NAME, LAYERS_TAG, run)
        if not layers:
            layers = self._tables(ctx, experiment, TEXT, "layers", run)
        warnings = []
        texts = self._provider.read_tensors(
            ctx,
            experiment_id=experiment,
            plugin_name=TEXT,
            downsample=TENSOR_SAMPLES,
            run_tag_filter=provider.RunTagFilter(runs=[run], tags=["warnings"]),
        )
        for datum in texts.get(run, {}).get("warnings", []):
            warnings += [(int(datum.step), row[0]) for row in _strings(datum.numpy)]
        return Run(history, layers.get(run, {}), warnings)

    def _tables(self, ctx, experiment, plugin, tag, run):
        """`{run: {name: (activation, has_kernel)}}` from each run's layer tables."""
        data = self._provider.read_tensors(
            ctx,
            experiment_id=experiment,
            plugin_name=plugin,
            downsample=TENSOR_SAMPLES,
            run_tag_filter=provider.RunTagFilter(
                runs=None if run is None else [run], tags=[tag]
            ),
        )
        tables = {}
        for name, tags in data.items():
            layers = {}
            for datum in tags.get(tag, []):
                if plugin == PLUGIN_NAME:
                    rows = decode_layers(np.asarray(datum.numpy).item())
                else:
                    rows = [
                        (r[0], r[1], r[2] == "kernel")
                        for r in _strings(datum.numpy)
                        if len(r) == 3
                    ]
                layers = merge_layers(layers, rows)
            tables[name] = layers
        return tables

    def histograms(self, ctx, experiment, run, layer):
        """`{signal: [(step, spans)]}` of one layer's histograms (`spans`: the
        `[k, 3]` rows `(left, right, count)` GradientHealth wrote), step order."""
        tags = [f"{signal}/{layer}" for signal in HISTOGRAMS]
        data = self._provider.read_tensors(
            ctx,
            experiment_id=experiment,
            plugin_name=HISTOGRAM_PLUGIN,
            downsample=HISTOGRAM_SAMPLES,
            run_tag_filter=provider.RunTagFilter(runs=[run], tags=tags),
        ).get(run, {})
        out = {}
        for signal, tag in zip(HISTOGRAMS, tags, strict=True):
            points = sorted(data.get(tag, []), key=lambda d: d.step)
            if points:
                out[signal] = [(int(d.step), np.asarray(d.numpy)) for d in points]
        return out
