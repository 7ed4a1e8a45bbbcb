"""`keras_fanin.report`: what GradientHealth logged, read back from its event files.

The event files are read here, record by record (`_records`), and each
`Event` is parsed with TensorBoard's generated protobuf classes; neither keras
nor TensorFlow is imported, so `keras-fanin report` answers a small log
directory in a fraction of a second. A long run's history is kept as float64
arrays rather than one protobuf object per point, and a file-by-file count
can be shown while a large directory is read. The verdicts come from `judge`,
as the callback's warnings do.
"""

import array
import dataclasses
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeAlias

import numpy as np
from tensorboard.compat.proto import event_pb2, types_pb2

from keras_fanin_logs import judge
from keras_fanin_logs._picture import Picture, gradient_flow, layer_rows
from keras_fanin_logs._records import (
    event_files,
    is_dir,
    join,
    read_bytes,
    records,
    walk,
)
from keras_fanin_logs._signals import (
    FRACTIONS,
    GLOBAL_GRAD_NORM,
    HISTOGRAMS,
    RUN_NAME,
    RUNS,
    SIGNALS,
)
from keras_fanin_logs._text import WIDTH, header, json_safe, row, sig3

NAME_WIDTH = 28

Floats: TypeAlias = np.ndarray[Any, np.dtype[np.float64]]
# {tag: (steps, values)}, float64 arrays in step order.
History: TypeAlias = dict[str, tuple[Floats, Floats]]
# {layer name: (activation or None, has a kernel)}, in forward order.
LayerTable: TypeAlias = dict[str, tuple[str | None, bool]]


@dataclasses.dataclass
class LayerReport:
    """One layer's row: the latest values and when each condition began.

    `dead_fraction` is the fraction of units negative for every example
    (leaky ReLUs are measured too, but never called dead), `saturated_fraction`
    that of saturated sigmoid or tanh outputs; `first_*_step` is the first
    logged step over the warning threshold (None if never), skipping steps
    with a NaN or inf, where the advice skips them too.
    """

    name: str
    activation: str | None
    grad_norm: float | None
    update_ratio: float | None
    dead_fraction: float | None
    saturated_fraction: float | None
    first_dead_step: int | None
    first_saturated_step: int | None
    first_nonfinite_step: int | None


@dataclasses.dataclass
class RunReport:
    """One run (`gradient_health/train` or `gradient_health/probe`)."""

    run: str
    first_step: int | None
    last_step: int | None
    logged_steps: int
    layers: list[LayerReport]
    vanishing_since: int | None
    exploding_since: int | None
    probe_loss: float | None
    warnings: list[tuple[int, str]]
    history: History = dataclasses.field(repr=False)
    # The latest norm of the whole gradient (the train run's; None before).
    global_grad_norm: float | None = None

    def picture(self) -> Picture | None:
        """The gradient-flow `Picture` of the whole run (None without layers)."""
        picture: Picture | None = gradient_flow(
            self.history, [layer.name for layer in self.layers]
        )
        return picture


@dataclasses.dataclass
class Report:
    """What `keras_fanin.report` returns: one `RunReport` per run found.

    `str(report)` is the table `keras-fanin report` prints (100 columns);
    `to_dict()` the data `--json` prints.
    """

    log_dir: str
    runs: dict[str, RunReport]

    def picture(self, run: str | None = None) -> Picture | None:
        """The gradient-flow picture of `run` (default: train, else probe)."""
        if run is None:
            run = next(iter(self.runs))
        return self.runs[run].picture()

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON: NaN and inf become the strings "nan", "inf"."""
        runs = {}
        for name, run in self.runs.items():
            data = {
                f.name: getattr(run, f.name)
                for f in dataclasses.fields(run)
                if f.name not in ("run", "history", "layers", "warnings")
            }
            data["layers"] = [dataclasses.asdict(layer) for layer in run.layers]
            data["warnings"] = [{"step": s, "text": t} for s, t in run.warnings]
            runs[name] = data
        safe: dict[str, Any] = json_safe({"log_dir": self.log_dir, "runs": runs})
        return safe

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False)

    def __str__(self) -> str:
        return "\n\n".join(_format_run(run) for run in self.runs.values())


def report(
    log_dir: str | os.PathLike[str], progress: Callable[[str], object] | None = None
) -> Report:
    """Reads GradientHealth's event files under `log_dir` into a `Report`.

    Per layer, in forward order: the latest grad norm, update ratio and
    dead-ReLU or saturated fraction; the first step at which each crossed
    GradientHealth's warning threshold, and the first with a NaN or inf; per
    run, the first step with vanishing or exploding gradients (first over
    last kernel layer's grad norm beyond 1000x) and the warnings
    GradientHealth raised. Works on logs from any backend, and on runs that
    were interrupted (the steps flushed so far) or diverged (NaN and inf are
    reported, not errors).

    Examples:

    >>> health = keras_fanin.GradientHealth("logs")
    >>> model.fit(x, y, epochs=5, callbacks=[health])
    >>> print(keras_fanin.report("logs"))
    >>> keras_fanin.report("logs").runs["gradient_health/train"].layers[0]

    or `keras-fanin report logs [--json] [--png flow.png]` in a shell.

    Args:
        log_dir: The `log_dir` given to `GradientHealth` (or its
            `gradient_health` subdirectory), or a directory above several of
            them: every run below it is read, named by its path.
        progress: Optional callable receiving a short progress line while
            event files are read.

    Raises:
        ValueError: when `log_dir` holds no GradientHealth event files.
    """
    if not isinstance(log_dir, str | os.PathLike):
        raise TypeError(
            "Argument `log_dir` must be a path (str or os.PathLike). "
            f"Received: log_dir={log_dir!r} of type {type(log_dir).__name__}"
        )
    log_dir = os.fspath(log_dir)
    if progress is not None and not callable(progress):
        raise TypeError(
            f"Argument `progress` must be callable or None. Received: "
            f"progress={progress!r}"
        )
    runs = _find_runs(log_dir)
    if not runs:
        raise ValueError(
            f"No GradientHealth logs in log_dir={log_dir!r}: expected event "
            f"files under {os.path.join(log_dir, RUN_NAME, 'train')!r} or "
            f"{os.path.join(log_dir, RUN_NAME, 'probe')!r} (or in a "
            f"{RUN_NAME!r} directory below it), as written by "
            "keras_fanin.GradientHealth(log_dir)."
        )
    total = sum(len(files) for files in runs.values())
    done = 0
    out: dict[str, RunReport] = {}
    for run, files in runs.items():
        reader = _RunReader()
        for path in files:
            done += 1
            reader.read(path, progress and _counter(progress, run, done, total))
        out[run] = reader.finish(run)
    if progress is not None:
        progress("")
    return Report(log_dir, out)


def _counter(
    progress: Callable[[str], object], run: str, done: int, total: int
) -> Callable[[int], None]:
    def show(events: int) -> None:
        progress(f"reading {run}: file {done}/{total}, {events} events")

    return show


def _find_runs(log_dir: str) -> dict[str, list[str]]:
    """`{run: [event file, ...]}` under `log_dir` or its `gradient_health`.

    A directory above several GradientHealth `log_dir`s (as `tensorboard
    --logdir` takes one) gives every run below it, named by its path.
    """
    for base in (join(log_dir, RUN_NAME), log_dir):
        runs = {
            f"{RUN_NAME}/{run}": files
            for run in RUNS
            if (files := event_files(join(base, run)))
        }
        if runs:
            return runs
    runs = {}
    if not is_dir(log_dir):
        return runs
    for directory, subdirectories, _ in sorted(walk(log_dir)):
        subdirectories.sort()
        if os.path.basename(directory.rstrip("/")) != RUN_NAME:
            continue
        subdirectories.clear()  # nothing of ours lies deeper
        prefix = os.path.relpath(directory, log_dir).replace(os.sep, "/")
        for run in RUNS:
            if files := event_files(join(directory, run)):
                runs[f"{prefix}/{run}"] = files
    return runs


def _strings(tensor: Any) -> list[list[str]]:
    from tensorboard.util import tensor_util

    array = tensor_util.make_ndarray(tensor)
    return [
        [c.decode("utf-8", "replace") for c in np.atleast_1d(row)]
        for row in np.atleast_1d(array)
    ]


class _RunReader:
    """Streams one run's events into arrays."""

    def __init__(self) -> None:
        # tag -> (array of steps, array of values)
        self.series: dict[str, tuple[array.array[float], array.array[float]]] = {}
        self.layers: LayerTable = {}  # the newest table last
        self.warnings: list[tuple[int, str]] = []

    def read(self, path: str, show: Callable[[int], None] | None = None) -> None:
        events = 0
        for record in records(read_bytes(path)):
            event = event_pb2.Event.FromString(record)
            events += 1
            if show is not None and events % 5000 == 0:
                show(events)
            step = event.step
            if event.session_log.status == event_pb2.SessionLog.START:
                self._restart(step)
            for value in event.summary.value:
                tag, tensor = value.tag, value.tensor
                if tag == "layers":
                    self._table(_strings(tensor))
                elif tag == "warnings":
                    self.warnings += [(step, row[0]) for row in _strings(tensor)]
                elif tensor.dtype not in (
                    types_pb2.DT_FLOAT,
                    types_pb2.DT_DOUBLE,
                ) or (tag.partition("/")[0] in HISTOGRAMS):
                    continue  # pictures, legends, the custom-scalars layout
                else:
                    number = (
                        tensor.float_val[0]
                        if len(tensor.float_val) == 1
                        else float(np.ravel(_ndarray(tensor))[0])
                    )
                    steps, values = self.series.setdefault(
                        tag, (array.array("d"), array.array("d"))
                    )
                    steps.append(step)
                    values.append(number)
        if show is not None:
            show(events)

    def _restart(self, step: int) -> None:
        """A (re)start at `step` (a `fit()` resumed by `BackupAndRestore`)
        supersedes what was read at `step` and after, as TensorBoard's reader
        purges it: the resumed run's points replace them."""
        for tag, (steps, values) in self.series.items():
            if any(s >= step for s in steps):
                keep = [i for i, s in enumerate(steps) if s < step]
                self.series[tag] = (
                    array.array("d", (steps[i] for i in keep)),
                    array.array("d", (values[i] for i in keep)),
                )
        self.warnings = [(s, text) for s, text in self.warnings if s < step]

    def _table(self, rows: list[list[str]]) -> None:
        table = [(row[0], row[1], row[2] == "kernel") for row in rows]
        self.layers = merge_layers(self.layers, table)

    def finish(self, run: str) -> RunReport:
        history = {
            tag: (np.frombuffer(s, np.float64), np.frombuffer(v, np.float64))
            for tag, (s, v) in self.series.items()
        }
        return run_report(run, history, self.layers, self.warnings)


def merge_layers(
    layers: LayerTable, rows: Iterable[tuple[str, str | None, object]]
) -> LayerTable:
    """The layer table `{name: (activation, has_kernel)}` after reading a newer
    one, `rows` of `(name, activation or None, has_kernel)`: a later fit's
    model comes first; layers only an earlier one had follow."""
    table = {
        name: (activation or None, bool(kernel)) for name, activation, kernel in rows
    }
    return table | {k: v for k, v in layers.items() if k not in table}


def run_report(
    run: str,
    history: History,
    layers: LayerTable | None = None,
    warnings: Iterable[tuple[int, str]] = (),
) -> RunReport:
    """Judges one run's series: the table `report` prints and the dashboard shows.

    Args:
        run: The run's name.
        history: `{tag: (steps, values)}` float64 arrays in step order, every
            scalar the run logged (a NaN or inf in any of them, `probe_loss`
            and `clip/...` included, makes its step one the verdicts skip).
        layers: `{name: (activation, has_kernel)}` in forward order (see
            `merge_layers`), or None where the logs lack the layer table.
        warnings: `[(step, text), ...]` GradientHealth raised.
    """
    table = layers or {}
    nonfinite = [s[~np.isfinite(v)] for s, v in history.values()]
    bad = np.unique(np.concatenate(nonfinite)) if nonfinite else np.zeros(0)
    names = layer_rows(history, list(table) or None)
    rows = [_layer(name, history, bad, table) for name in names]
    per_layer = [
        s for tag, (s, _) in history.items() if tag.partition("/")[0] in SIGNALS
    ]
    if "probe_loss" in history:
        per_layer.append(history["probe_loss"][0])
    steps = np.unique(np.concatenate(per_layer)) if per_layer else np.zeros(0)
    vanishing, exploding = _depth_since(history, names, table, bad)
    loss = history.get("probe_loss")
    return RunReport(
        run=run,
        first_step=int(steps[0]) if len(steps) else None,
        last_step=int(steps[-1]) if len(steps) else None,
        logged_steps=len(steps),
        layers=rows,
        vanishing_since=vanishing,
        exploding_since=exploding,
        probe_loss=float(loss[1][-1]) if loss is not None else None,
        global_grad_norm=(
            float(norm[1][-1]) if (norm := history.get(GLOBAL_GRAD_NORM)) else None
        ),
        warnings=list(warnings),
        history=history,
    )


def _layer(name: str, history: History, bad: Floats, layers: LayerTable) -> LayerReport:
    activation, _ = layers.get(name, (None, False))

    def latest(signal: str) -> float | None:
        series = history.get(f"{signal}/{name}")
        return float(series[1][-1]) if series is not None else None

    def first_over(signal: str, judged: Callable[[Floats], Any]) -> int | None:
        series = history.get(f"{signal}/{name}")
        if series is None:
            return None
        steps, values = series
        over = judged(values) & ~np.isin(steps, bad)
        return int(steps[over].min()) if over.any() else None

    saturated = next(
        (f for f in FRACTIONS[1:] if f"{f}/{name}" in history), FRACTIONS[1]
    )
    pieces = [
        series[0][~np.isfinite(series[1])]
        for signal in SIGNALS
        if (series := history.get(f"{signal}/{name}")) is not None
    ]
    nonfinite = np.concatenate(pieces) if pieces else np.zeros(0)
    return LayerReport(
        name=name,
        activation=activation,
        grad_norm=latest("grad_norm"),
        update_ratio=latest("update_ratio"),
        dead_fraction=latest("dead_relu_fraction"),
        saturated_fraction=latest(saturated),
        first_dead_step=(
            first_over("dead_relu_fraction", judge.dead)
            if judge.can_die(activation)
            else None
        ),
        first_saturated_step=first_over(saturated, judge.saturated),
        first_nonfinite_step=int(nonfinite.min()) if len(nonfinite) else None,
    )


def depth_ratio(
    history: History,
    names: list[str],
    layers: Mapping[str, tuple[str | None, bool]] | None = None,
) -> tuple[str, str, Floats, Floats] | None:
    """`(first, last, steps, ratio)`: the layers the depth check compares and,
    at each step both logged, `judge.depth_ratio` of their grad norms; None
    with fewer than two such layers.

    As the advice judges: the first and last layers with a kernel (all layers
    with a grad norm when the logs lack the layer table), in forward order.
    """
    kernels = [
        n
        for n in names
        if f"grad_norm/{n}" in history
        and (not layers or layers.get(n, (None, False))[1])
    ]
    if len(kernels) < 2:
        return None
    s_first, g_first = history[f"grad_norm/{kernels[0]}"]
    s_last, g_last = history[f"grad_norm/{kernels[-1]}"]
    steps, i, j = np.intersect1d(s_first, s_last, return_indices=True)
    return kernels[0], kernels[-1], steps, judge.depth_ratio(g_first[i], g_last[j])


def _depth_since(
    history: History, names: list[str], layers: LayerTable, bad: Floats
) -> tuple[int | None, int | None]:
    """First steps of vanishing and exploding gradients, skipping `bad` steps."""
    depth = depth_ratio(history, names, layers)
    if depth is None:
        return None, None
    _, _, steps, ratio = depth
    ratio[np.isin(steps, bad)] = np.nan

    def first(mask: Any) -> int | None:
        return int(steps[mask].min()) if mask.any() else None

    return first(judge.vanishing(ratio)), first(judge.exploding(ratio))


def _ndarray(tensor: Any) -> Any:
    from tensorboard.util import tensor_util

    return tensor_util.make_ndarray(tensor)


_COLUMNS = (
    ("layer", NAME_WIDTH, "<"),
    ("activation", 10, "<"),
    ("grad norm", 9, ">"),
    ("update", 9, ">"),
    ("dead/sat", 8, ">"),
    ("crossed at", 10, ">"),
    ("non-finite at", 13, ">"),
)


def _wrap(text: str, first: str, rest: str) -> str:
    import textwrap

    return textwrap.fill(
        text,
        WIDTH,
        initial_indent=first,
        subsequent_indent=rest,
        break_on_hyphens=False,
    )


def depth_verdicts(run: RunReport) -> list[str]:
    """The vanishing / exploding lines of `run`'s report (none if healthy)."""
    return [
        f"{kind} gradients from step {step} (first over last kernel layer's "
        f"grad norm beyond {judge.DEPTH_RATIO_WARN:g}x)"
        for kind, step in (
            ("vanishing", run.vanishing_since),
            ("exploding", run.exploding_since),
        )  # fmt: skip
        if step is not None
    ]


def warning_text(text: str) -> str:
    """A raised warning as the report shows it, without its "GradientHealth: "."""
    return re.sub(r"^GradientHealth: ", "", text)


def _format_run(run: RunReport) -> str:
    if run.logged_steps:
        span = f"steps {run.first_step} to {run.last_step} ({run.logged_steps} logged)"
    else:
        span = "no steps logged"
    lines = [f"{run.run}: {span}"]
    if run.probe_loss is not None:
        lines[0] += f", probe loss {sig3(run.probe_loss)}"
    if run.global_grad_norm is not None:
        lines[0] += f", global grad norm {sig3(run.global_grad_norm)}"
    lines.append(header(_COLUMNS))
    for layer in run.layers:
        fraction = layer.dead_fraction
        if fraction is None:
            fraction = layer.saturated_fraction
        crossed = layer.first_dead_step
        if crossed is None:
            crossed = layer.first_saturated_step
        lines.append(
            row(
                [
                    layer.name,
                    (layer.activation or "")[:10],
                    sig3(layer.grad_norm),
                    sig3(layer.update_ratio),
                    sig3(fraction),
                    "-" if crossed is None else str(crossed),
                    "-"
                    if layer.first_nonfinite_step is None
                    else str(layer.first_nonfinite_step),
                ],
                _COLUMNS,
            )  # fmt: skip
        )
    lines.append(
        _wrap(
            f"update: ||w_after - w_before|| / ||w_before||. crossed at: the first "
            f"step with a dead-ReLU fraction over {judge.DEAD_WARN_FRACTION:g} or a "
            f"saturated fraction over {judge.SATURATED_WARN_FRACTION:g}.",
            "",
            "",
        )
    )
    lines += depth_verdicts(run)
    if run.warnings:
        lines.append(f"warnings ({len(run.warnings)}):")
        for step, text in run.warnings:
            lines.append(_wrap(warning_text(text), f"  step {step}: ", "    "))
    else:
        lines.append("warnings: none")
    return "\n".join(lines)
