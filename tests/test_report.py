"""`keras_fanin.report` and `keras-fanin report` on logs of real `fit()` runs."""

import json
import math
import os
import pathlib
import shutil
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest
from PIL import Image  # a TensorBoard dependency: an independent PNG decoder

import keras_fanin
from keras_fanin_logs._cli import main
from keras_fanin_logs._records import records
from keras_fanin_logs._report import report
from keras_fanin_logs.judge import (
    DEAD_WARN_FRACTION,
    DEPTH_RATIO_WARN,
    SATURATED_WARN_FRACTION,
)
from tests.helpers import PROBE, TRAIN, read_scalars

LONG = "a_layer_with_a_name_much_too_long_for_one_table_column"
LAYERS = ["hidden", "squash", LONG, "out"]


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(128, 8)).astype("float32")
    # About 30% positives: the output bias's gradient (mean of p - y, with
    # p = 0.5 while the layer before is dead) is never 0 on a batch.
    return x, (x[:, :1] > 0.5).astype("float32")


def _model():
    # A tanh layer with huge weights saturates; a ReLU layer with a bias of
    # -100 is dead from the start, so no gradient reaches the layers before
    # it: vanishing gradients too.
    return keras.Sequential([
        keras.Input((8,)),
        keras.layers.Dense(16, activation="relu", name="hidden"),
        keras.layers.Dense(
            4, activation="tanh", name="squash",
            kernel_initializer=keras.initializers.RandomNormal(stddev=30.0),
        ),
        keras.layers.Dense(
            16, activation="relu", name=LONG,
            bias_initializer=keras.initializers.Constant(-100.0),
        ),
        keras.layers.Dense(1, activation="sigmoid", name="out"),
    ])  # fmt: skip


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    """One tiny fit() with GradientHealth (step and probe), and its warnings."""
    log_dir = tmp_path_factory.mktemp("report")
    keras.utils.set_random_seed(0)  # module fixtures run before conftest's seed
    x, y = _data()
    model = _model()
    model.compile("sgd", "binary_crossentropy")
    health = keras_fanin.GradientHealth(
        log_dir, (x, y), every_n_steps=1, probe_every_n_steps=2
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(x, y, batch_size=32, epochs=2, verbose=0, callbacks=[health])
    raised = [
        str(w.message)
        for w in caught
        if issubclass(w.category, keras_fanin.GradientHealthWarning)
    ]
    return log_dir, raised


def _first(series, threshold, bad=()):
    steps = [s for s, v in series if v > threshold and s not in bad]
    return min(steps) if steps else None


def _bad_steps(scalars):
    return {s for series in scalars.values() for s, v in series if not math.isfinite(v)}


def _check_against_event_files(result, log_dir, runs):
    """Every value of the report equals what TensorBoard's reader reads."""
    assert list(result.runs) == runs
    for run in runs:
        scalars = read_scalars(log_dir, run)
        bad = _bad_steps(scalars)
        got = result.runs[run]
        assert [layer.name for layer in got.layers] == LAYERS
        steps = {s for tag, series in scalars.items() for s, _ in series}
        assert (got.first_step, got.last_step) == (min(steps), max(steps))
        assert got.logged_steps == len(steps)
        for layer in got.layers:
            saturated = next(
                (f"saturated_{kind}_fraction" for kind in ("sigmoid", "tanh")
                 if f"saturated_{kind}_fraction/{layer.name}" in scalars),
                "none",
            )  # fmt: skip
            for attr, signal in [
                ("grad_norm", "grad_norm"),
                ("update_ratio", "update_ratio"),
                ("dead_fraction", "dead_relu_fraction"),
                ("saturated_fraction", saturated),
            ]:
                series = scalars.get(f"{signal}/{layer.name}")
                want = None if series is None else series[-1][1]
                value = getattr(layer, attr)
                if want is not None and math.isnan(want):
                    assert math.isnan(value), (layer.name, attr)
                else:
                    assert value == want, (layer.name, attr)
            dead = scalars.get(f"dead_relu_fraction/{layer.name}")
            want = None if dead is None else _first(dead, DEAD_WARN_FRACTION, bad)
            assert layer.first_dead_step == want, layer.name
            sat = scalars.get(f"{saturated}/{layer.name}")
            want = None if sat is None else _first(sat, SATURATED_WARN_FRACTION, bad)
            assert layer.first_saturated_step == want, layer.name
            nonfinite = [
                s
                for tag, series in scalars.items()
                if tag.split("/", 1)[-1] == layer.name
                for s, v in series
                if not math.isfinite(v)
            ]
            assert layer.first_nonfinite_step == (min(nonfinite) if nonfinite else None)
        first = dict(scalars["grad_norm/hidden"])
        last = dict(scalars["grad_norm/out"])
        vanishing = [
            s
            for s in first
            if s in last and s not in bad and last[s] > 0
            and first[s] / last[s] < 1 / DEPTH_RATIO_WARN
        ]  # fmt: skip
        assert got.vanishing_since == (min(vanishing) if vanishing else None)


def test_report_equals_the_event_files(logs):
    log_dir, raised = logs
    result = report(log_dir)
    _check_against_event_files(result, log_dir, [TRAIN, PROBE])
    layers = {layer.name: layer for layer in result.runs[TRAIN].layers}
    # The conditions this model was built to show, from the first step.
    assert layers[LONG].first_dead_step == 0
    assert layers["squash"].first_saturated_step == 0
    assert result.runs[TRAIN].vanishing_since == 0
    probe_loss = read_scalars(log_dir, PROBE)["probe_loss"][-1][1]
    assert result.runs[PROBE].probe_loss == probe_loss
    # The warnings GradientHealth raised, each once, are in the logs.
    texts = [t for run in result.runs.values() for _, t in run.warnings]
    assert raised and sorted(texts) == sorted(raised)


def test_table_fits_100_columns(logs):
    log_dir, _ = logs
    result = report(log_dir)
    text = str(result)
    assert max(len(line) for line in text.splitlines()) <= 100
    assert LONG not in text.split("warnings")[0]  # cut in the table
    rows = [line for line in text.splitlines() if line.startswith(LONG[:12])]
    assert len(rows) == 2 and "..." in rows[0]
    hidden = result.runs[TRAIN].layers[0]
    row = next(line for line in text.splitlines() if line.startswith("hidden "))
    assert f"{hidden.grad_norm:.3g}" in row.split()
    assert f"{hidden.update_ratio:.3g}" in row.split()


def test_probe_only_run(logs, tmp_path):
    log_dir, _ = logs
    shutil.copytree(log_dir / PROBE, tmp_path / PROBE)
    result = report(tmp_path)
    _check_against_event_files(result, tmp_path, [PROBE])
    assert all(layer.update_ratio is None for layer in result.runs[PROBE].layers)


def test_interrupted_and_diverged_run(tmp_path, capsys):
    x, y = _data()
    model = _model()
    # Not cross-entropy: torch's raises on a NaN probability.
    model.compile("sgd", "mse")

    class Sabotage(keras.callbacks.Callback):
        seen = 0

        def on_train_batch_end(self, batch, logs=None):
            self.seen += 1
            if self.seen == 6:  # NaN weights from step 6 on
                # Through self.model: on JAX that syncs the training state
                # first, so the assignment reaches the next step.
                kernel = self.model.get_layer("squash").kernel
                kernel.assign(np.full(kernel.shape, np.nan, "float32"))
            if self.seen == 10:  # killed in the third epoch
                raise RuntimeError("interrupted")

    health = keras_fanin.GradientHealth(tmp_path, every_n_steps=1, warn=False)
    with pytest.raises(RuntimeError, match="interrupted"):
        model.fit(x, y, batch_size=32, epochs=3, verbose=0,
                  callbacks=[health, Sabotage()])  # fmt: skip
    # A record cut short by the crash at the end of the file.
    (events,) = (tmp_path / TRAIN).iterdir()
    with open(events, "ab") as file:
        file.write(b"\x40\x00\x00\x00\x00\x00\x00\x00\x12")

    result = report(tmp_path)
    _check_against_event_files(result, tmp_path, [TRAIN])
    layers = {layer.name: layer for layer in result.runs[TRAIN].layers}
    # Every step that ran: the exception writes what the buffer held.
    assert result.runs[TRAIN].last_step == 9
    assert layers["squash"].first_nonfinite_step == 6
    assert math.isnan(layers["squash"].grad_norm)

    assert main(["report", str(tmp_path), "--json"]) == 0
    out = capsys.readouterr().out

    def strict(constant):
        raise AssertionError(f"not JSON: {constant}")

    data = json.loads(out, parse_constant=strict)
    squash = data["runs"][TRAIN]["layers"][1]
    assert squash["name"] == "squash" and squash["grad_norm"] == "nan"
    assert squash["first_nonfinite_step"] == 6
    hidden = data["runs"][TRAIN]["layers"][0]
    assert hidden["first_nonfinite_step"] == layers["hidden"].first_nonfinite_step
    assert hidden["update_ratio"] == str(layers["hidden"].update_ratio)


def test_png_has_a_band_per_layer(logs, tmp_path, capsys):
    log_dir, _ = logs
    path = tmp_path / "flow.png"
    assert main(["report", str(log_dir), "--png", str(path)]) == 0
    assert "hidden" in capsys.readouterr().out
    with Image.open(path) as image:
        assert image.format == "PNG" and image.mode == "RGB"
        pixels = np.asarray(image)
    picture = report(log_dir).picture()
    np.testing.assert_array_equal(pixels, picture.rgb)
    assert picture.layers == LAYERS and picture.row_height >= 4
    # Each layer one band of rows in both panels.
    panels = [
        pixels[top:bottom, left:right] for top, left, bottom, right in picture.panels
    ]
    for panel in panels:
        bands = panel.reshape(len(LAYERS), picture.row_height, *panel.shape[1:])
        assert (bands == bands[:, :1]).all()
    # Left panel, last column: brightness grows with the layer's last grad
    # norm (viridis); the layers without gradient (0) are the darkest.
    scalars = read_scalars(log_dir, TRAIN)
    norms = [scalars[f"grad_norm/{name}"][-1][1] for name in LAYERS]
    last = [pixels[picture.cell(0, row, -1)[:2]] for row in range(len(LAYERS))]
    brightness = np.array(last).astype(int).sum(axis=1)
    assert (
        np.argsort(brightness, kind="stable").tolist()
        == np.argsort(norms, kind="stable").tolist()
    )
    # Right panel: the dead layer is the brightest stripe.
    last = [pixels[picture.cell(1, row, -1)[:2]] for row in range(len(LAYERS))]
    assert np.array(last).astype(int).sum(axis=1).argmax() == LAYERS.index(LONG)


def test_no_logs_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(ValueError, match="No GradientHealth logs in log_dir="):
        report(tmp_path)
    with pytest.raises(ValueError, match="missing"):
        report(tmp_path / "missing")
    with pytest.raises(TypeError, match="Argument `log_dir` must be a path"):
        report(3)
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and str(tmp_path) in err
    assert main([]) == 2


def _console_script():
    script = pathlib.Path(sys.executable).with_name("keras-fanin")
    return [str(script)] if script.exists() else [sys.executable, "-m", "keras_fanin"]


def test_command_line_on_jax_logs(tmp_path):
    """`keras-fanin report` in a fresh process, on logs JAX wrote: it never
    imports keras or TensorFlow, and prints only its own output."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    train = f"""
import numpy as np, keras, keras_fanin
x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
                          keras.layers.Dense(1)])
model.compile("sgd", "mse")
health = keras_fanin.GradientHealth({str(tmp_path)!r}, every_n_steps=1)
model.fit(x, x[:, :1], batch_size=16, epochs=1, verbose=0, callbacks=[health])
"""
    subprocess.run(
        [sys.executable, "-c", train], check=True, timeout=240,
        env={**env, "KERAS_BACKEND": "jax"},
    )  # fmt: skip
    png = tmp_path / "flow.png"
    # Without TF_CPP_MIN_LOG_LEVEL: TensorFlow's start-up lines would show.
    proc = subprocess.run(
        [*_console_script(), "report", str(tmp_path), "--json", "--png", str(png)],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Only the PNG's legend: no progress line (not a terminal), no TF start-up.
    assert proc.stderr.startswith(f"wrote {png} "), proc.stderr
    assert "tensorflow" not in proc.stderr.lower() and "I0000" not in proc.stderr
    data = json.loads(proc.stdout)
    scalars = read_scalars(tmp_path)
    layers = data["runs"][TRAIN]["layers"]
    assert [layer["name"] for layer in layers] == ["dense", "dense_1"]
    for layer in layers:
        assert layer["grad_norm"] == scalars[f"grad_norm/{layer['name']}"][-1][1]
    with Image.open(png) as image:
        np.testing.assert_array_equal(np.asarray(image), report(tmp_path).picture().rgb)
    # Every module the command imports, from Python's own import log.
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "keras_fanin_logs", "report",
         str(tmp_path)],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines()}
    assert "keras_fanin_logs._report" in imported
    heavy = {
        m
        for m in imported
        if m.split(".")[0] in ("keras", "tensorflow", "jax", "torch", "keras_fanin")
    }
    assert not heavy, sorted(heavy)[:10]
    missing = subprocess.run(
        [*_console_script(), "report", str(tmp_path / "missing")],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert missing.returncode == 2 and missing.stdout == ""
    assert missing.stderr.count("\n") == 1
    assert missing.stderr.startswith("keras-fanin report: error: No GradientHealth")


def test_a_file_cut_short_or_corrupted_reads_up_to_the_damage(logs, tmp_path):
    """A run still being written ends in a partial record; a damaged one in a
    bad CRC: both read every whole record before it, as TensorBoard does."""
    log_dir, _ = logs
    (path,) = (log_dir / TRAIN).glob("events.out.tfevents.*")
    content = path.read_bytes()
    whole = list(records(content))
    cut = tmp_path / "cut" / TRAIN
    cut.mkdir(parents=True)
    (cut / path.name).write_bytes(content[: len(content) - len(whole[-1]) // 2])
    assert len(list(records((cut / path.name).read_bytes()))) == len(whole) - 1
    # TensorBoard's own reader on the same cut file.
    expected = read_scalars(tmp_path / "cut")
    shown = report(tmp_path / "cut").runs[TRAIN].history
    assert set(shown) == set(expected) and expected
    for tag, points in expected.items():
        steps, values = shown[tag]
        assert list(steps) == [s for s, _ in points]
        assert np.allclose(values, [v for _, v in points], rtol=0, equal_nan=True)
    damaged = bytearray(content)
    damaged[len(content) - len(whole[-1]) - 2] ^= 0xFF  # inside the last record
    assert len(list(records(bytes(damaged)))) == len(whole) - 1
    assert list(records(content[:11])) == []


def test_a_directory_above_several_log_dirs_reports_every_run(logs, tmp_path):
    """As `tensorboard --logdir` takes the parent of several runs."""
    log_dir, _ = logs
    shutil.copytree(log_dir / "gradient_health", tmp_path / "He" / "gradient_health")
    shutil.copytree(log_dir / PROBE, tmp_path / "nested" / "LeCun" / PROBE)
    result = report(tmp_path)
    assert list(result.runs) == [f"He/{TRAIN}", f"He/{PROBE}", f"nested/LeCun/{PROBE}"]
    alone = report(log_dir)
    for name, run in result.runs.items():
        expected = alone.runs[name.split("/", 1)[1] if name.startswith("He") else PROBE]
        assert [layer.grad_norm for layer in run.layers] == [
            layer.grad_norm for layer in expected.layers
        ]
    assert f"nested/LeCun/{PROBE}" in str(result)


def test_a_remote_log_dir_reads_through_fsspec(logs):
    """A path with a scheme goes through TensorBoard's TF-free `gfile` (here
    fsspec's in-memory file system, which torch's install brings): the same
    report as the local copy."""
    fsspec = pytest.importorskip("fsspec")
    log_dir, _ = logs
    memory = fsspec.filesystem("memory")
    for path in log_dir.rglob("*"):
        if path.is_file():
            target = f"/remote_logs/{path.relative_to(log_dir).as_posix()}"
            memory.pipe(target, path.read_bytes())
    remote, local = report("memory://remote_logs"), report(log_dir)
    assert list(remote.runs) == list(local.runs)
    for name, run in local.runs.items():
        assert [layer.grad_norm for layer in remote.runs[name].layers] == [
            layer.grad_norm for layer in run.layers
        ]
        assert remote.runs[name].logged_steps == run.logged_steps > 0
