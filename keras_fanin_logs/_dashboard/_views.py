"""What each dashboard route answers, from one run's series (plain data for JSON).

The verdicts are `report`'s (`run_report`, `depth_ratio`, `judge`): the
dashboard adds only the words of its summary line. The layer x step matrices
travel as little-endian float32 in base64 (the values GradientHealth wrote are
float32, so nothing is lost; NaN and inf pass as themselves) with, unless
every layer logged every step, a byte per cell saying whether it did.
"""

import base64
import dataclasses
import math

import numpy as np

from keras_fanin_logs import _histogram, judge
from keras_fanin_logs._picture import layer_rows
from keras_fanin_logs._report import (
    depth_ratio,
    depth_verdicts,
    run_report,
    warning_text,
)
from keras_fanin_logs._signals import FRACTIONS, SIGNALS
from keras_fanin_logs._text import json_safe

# Heatmap columns at most: more logged steps are thinned evenly (the last kept).
MAX_STEPS = 1000
# Per layer, the first of these it logged: the heatmap's and profile's
# "dead or saturated" and "saturated" rows.
PSEUDO_SIGNALS = {"fraction": FRACTIONS, "saturated_fraction": FRACTIONS[1:]}
THRESHOLDS = {
    "dead": judge.DEAD_WARN_FRACTION,
    "saturated": judge.SATURATED_WARN_FRACTION,
    "depth_ratio": judge.DEPTH_RATIO_WARN,
}


def names(run):
    """The run's layers with per-layer signals, in forward order."""
    return layer_rows(run.history, list(run.layers) or None)


def layer_tag(history, signal, name):
    """The tag holding `signal` (or a `PSEUDO_SIGNALS` one) of layer `name`."""
    for candidate in PSEUDO_SIGNALS.get(signal, (signal,)):
        if f"{candidate}/{name}" in history:
            return f"{candidate}/{name}"
    return None


def _steps(series):
    every = [s for s, _ in series if len(s)]
    steps = np.unique(np.concatenate(every)) if every else np.zeros(0)
    if len(steps) > MAX_STEPS:
        keep = np.unique(np.round(np.linspace(0, len(steps) - 1, MAX_STEPS)))
        steps = steps[keep.astype(np.intp)]
    return steps


def _b64(array):
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii")


def matrix(run, signal):
    """`signal` of every layer at the run's logged steps (layers x steps)."""
    if signal not in SIGNALS and signal not in PSEUDO_SIGNALS:
        raise ValueError(
            f"Unknown signal {signal!r}: one of {[*SIGNALS, *PSEUDO_SIGNALS]}"
        )
    rows = names(run)
    tags = [layer_tag(run.history, signal, name) for name in rows]
    series = [run.history[t] for t in tags if t is not None]
    steps = _steps(series)
    values = np.full((len(rows), len(steps)), np.nan, "<f4")
    present = np.zeros((len(rows), len(steps)), np.uint8)
    for r, tag in enumerate(tags):
        if tag is None or not len(steps):
            continue
        s, v = run.history[tag]
        at = np.minimum(np.searchsorted(steps, s), len(steps) - 1)
        hit = steps[at] == s
        values[r, at[hit]] = v[hit]
        present[r, at[hit]] = 1
    return {
        "signal": signal,
        "layers": rows,
        "tags": tags,
        "steps": [int(s) for s in steps],
        "values": _b64(values),
        # None: every layer logged every step (the common case, half the bytes).
        "present": None if present.all() else _b64(present),
    }


def layer(run, name):
    """Every signal `name` logged: `{signal: {"steps": [...], "values": [...]}}`."""
    out = {}
    for signal in SIGNALS:
        series = run.history.get(f"{signal}/{name}")
        if series is not None:
            steps, values = series
            out[signal] = {
                "steps": [int(s) for s in steps],
                "values": [float(v) for v in values],
            }
    return json_safe({"layer": name, "signals": out})


def _power(ratio):
    """`2^-12.3 (0.0002x)`: a ratio spanning orders of magnitude, in words."""
    return f"2^{math.log2(ratio):.1f} ({ratio:.2g}x)"


def _value(series, step):
    steps, values = series
    return float(values[np.searchsorted(steps, step)])


def _at(steps, ratio, first):
    """`(step, ratio)` at the first (or last) step with a finite ratio."""
    ok = np.flatnonzero(np.isfinite(ratio))
    if not len(ok):
        return None
    i = ok[0] if first else ok[-1]
    return int(steps[i]), float(ratio[i])


def _earliest(layers, attr):
    """`(step, layer, " and 3 more layers")` of the first layer (by step, then
    forward order) whose `attr` is set; None if none."""
    hits = [
        (step, i, layer.name)
        for i, layer in enumerate(layers)
        if (step := getattr(layer, attr)) is not None
    ]
    if not hits:
        return None
    step, _, name = min(hits)
    more = len(hits) - 1
    return step, name, f" and {more} more layer{'s' * (more > 1)}" if more else ""


def verdicts(name, run):
    """The run's `report` table, its verdict lines and warnings, and a summary.

    `problems` lists, worst first, one sentence per condition `report`'s
    verdicts found (vanishing or exploding gradients, NaN or inf, dead or
    saturated layers): the words a newcomer reads first.
    """
    report = run_report(name, run.history, run.layers, run.warnings)
    order = [layer.name for layer in report.layers]
    depth = depth_ratio(run.history, order, run.layers)
    summary = None
    problems = []
    if depth is not None:
        first, last, steps, ratio = depth
        start, end = _at(steps, ratio, True), _at(steps, ratio, False)
        summary = {
            "first": first,
            "last": last,
            "start": start and {"step": start[0], "ratio": start[1]},
            "end": end and {"step": end[0], "ratio": end[1]},
        }
        for kind, since, toward in (
            ("vanishing", report.vanishing_since, "vanish"),
            ("exploding", report.exploding_since, "explode"),
        ):
            if since is None:
                continue
            text = f"gradients {toward} towards the input from step {since}"
            if since in steps:
                g_first = _value(run.history[f"grad_norm/{first}"], since)
                g_last = _value(run.history[f"grad_norm/{last}"], since)
                if g_first == 0:
                    text += (
                        f": {first} gets no gradient ({last}'s grad norm is "
                        f"{g_last:.3g})"
                    )
                else:
                    text += (
                        f": {first}'s grad norm ({g_first:.3g}) is "
                        f"{_power(g_first / g_last)} of {last}'s ({g_last:.3g})"
                    )
            problems.append({"kind": kind, "step": since, "text": text})
    nonfinite = _earliest(report.layers, "first_nonfinite_step")
    if nonfinite:
        step, where, more = nonfinite
        problems.insert(
            0,
            {
                "kind": "nonfinite",
                "step": step,
                "text": f"NaN or inf from step {step}, in {where}{more}",
            },
        )
    for kind, attr, threshold in (
        ("dead", "first_dead_step", judge.DEAD_WARN_FRACTION),
        ("saturated", "first_saturated_step", judge.SATURATED_WARN_FRACTION),
    ):
        listed = _earliest(report.layers, attr)
        if listed:
            step, where, more = listed
            problems.append(
                {
                    "kind": kind,
                    "step": step,
                    "text": f"{where}{more} {kind} (over {threshold:g} of "
                    f"units) from step {step}",
                }
            )
    data = {
        "run": name,
        "first_step": report.first_step,
        "last_step": report.last_step,
        "logged_steps": report.logged_steps,
        "probe_loss": report.probe_loss,
        "vanishing_since": report.vanishing_since,
        "exploding_since": report.exploding_since,
        "layers": [dataclasses.asdict(layer) for layer in report.layers],
        "verdicts": depth_verdicts(report),
        "warnings": [
            {"step": step, "text": warning_text(text)} for step, text in report.warnings
        ],
        "depth": summary,
        "problems": problems,
        "thresholds": THRESHOLDS,
    }
    return json_safe(data)


def distribution(name, histograms):
    """One layer's histograms over the steps, on the fixed bins: per signal,
    `{"steps": [...], "first": b, "counts": [[...], ...]}`, the counts of bins
    `first` on (the span any step filled), one row a step."""
    out = {}
    for signal, points in histograms.items():
        rows = np.zeros((len(points), _histogram.BINS), np.int64)
        for i, (_, spans) in enumerate(points):
            spans = np.asarray(spans, np.float64).reshape(-1, 3)
            if len(spans):
                rows[i, _histogram.bins_of(spans)] = spans[:, 2]
        filled = np.flatnonzero(rows.sum(axis=0))
        first, last = (filled[0], filled[-1] + 1) if len(filled) else (0, 0)
        out[signal] = {
            "steps": [step for step, _ in points],
            "first": int(first),
            "counts": rows[:, first:last].tolist(),
        }
    return {
        "layer": name,
        "edges": [float(e) for e in _histogram.EDGES],
        "zero_bin": _histogram.ZERO_BIN,
        "signals": out,
    }
