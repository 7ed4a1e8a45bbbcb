"""The GRADIENT HEALTH tab: logs of real `fit()` calls, a real TensorBoard
server that finds the plugin through the package's entry point, and the page
in headless Chromium, checked against TensorBoard's own event reader."""

import base64
import importlib.metadata
import math
import os
import pathlib
import re
import shutil
import subprocess
import sys
import urllib.parse
import warnings

import keras
import numpy as np
import pytest

import keras_fanin
from keras_fanin_logs import _histogram
from keras_fanin_logs._report import report
from tests.helpers import (
    get_json,
    read_histograms,
    read_scalars,
    run_python,
    tensorboard_server,
)

ROOT = pathlib.Path(__file__).resolve().parent.parent
ENTRY_POINT = "keras_fanin_logs._dashboard:GradientHealthPlugin"
TRAIN = "gradient_health/train"
RUNS = {name: f"{name}/{TRAIN}" for name in ("he", "lecun", "sick")}
DEPTH = 8
LAYERS = [f"dense_{i}" for i in range(1, DEPTH + 1)] + ["out"]
REL = 1e-3  # what the page shows: 4 significant figures


def _model(scheme, dead=False):
    # A ReLU layer with a bias of -100 is dead from the first step.
    hidden = [
        keras.layers.Dense(
            32, activation="relu", kernel_initializer=scheme(), name=f"dense_{i}",
            bias_initializer=keras.initializers.Constant(-100.0 if dead and i == 5 else 0.0),
        )
        for i in range(1, DEPTH + 1)
    ]  # fmt: skip
    return keras.Sequential(
        [keras.Input((16,)), *hidden, keras.layers.Dense(1, name="out")]
    )


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    """Three tiny fits, each its own GradientHealth log_dir under one root:
    He and LeCun on an 8-layer ReLU MLP, and a sick one (a dead layer, then
    NaN from a learning rate of 1e4); He's with histograms. Returns the root and every run's
    scalars as TensorBoard's reader reads them."""
    root = tmp_path_factory.mktemp("dashboard")
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    # Small inputs: a layer's grad norm is then mostly its bias's, the
    # backward signal alone, whose variance LeCun's 1/n halves at every ReLU
    # layer and He's 2/n keeps (2^-3.5 over 8 layers).
    x = rng.normal(scale=0.1, size=(256, 16)).astype("float32")
    y = rng.normal(size=(256, 1)).astype("float32")
    for name, scheme, dead, rate in [
        ("he", keras_fanin.He, False, 0.01),
        ("lecun", keras_fanin.LeCun, False, 0.01),
        ("sick", keras_fanin.He, True, 1e4),
    ]:
        model = _model(scheme, dead)
        model.compile(keras.optimizers.SGD(rate), "mse")
        # He's run with histograms at every logged step.
        health = keras_fanin.GradientHealth(
            root / name, every_n_steps=1, histograms=1 if name == "he" else None
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(x, y, batch_size=32, epochs=2, verbose=0, callbacks=[health])
    return root, {run: read_scalars(root, run) for run in RUNS.values()}


def _plugin_env(tmp_path):
    """The environment under which `tensorboard` finds this checkout's plugin.

    An install of this checkout declares the entry point; an older editable
    install does not, so this checkout's setup.py writes its metadata into a
    directory put first on the path, as an install would.
    """
    points = importlib.metadata.entry_points(group="tensorboard_plugins")
    if any(point.value == ENTRY_POINT for point in points):
        return {}
    subprocess.run(
        [sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(tmp_path)],
        cwd=ROOT, check=True, capture_output=True,
    )  # fmt: skip
    path = [str(tmp_path), str(ROOT), os.environ.get("PYTHONPATH", "")]
    return {"PYTHONPATH": os.pathsep.join(p for p in path if p)}


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory):
    return _plugin_env(tmp_path_factory.mktemp("metadata"))


@pytest.fixture(scope="module")
def server(logs, plugin_env):
    root, expected = logs

    def ready(tags):
        return all(set(tags.get(run, {})) == set(expected[run]) for run in expected)

    # TensorBoard's default loader (its Rust data server where installed);
    # the Python loader's read is tested apart, below.
    args = ("--load_fast", "auto")
    with tensorboard_server(root, ready, args=args, env=plugin_env) as url:
        yield url


def _missing(what):
    """A browser test without its browser: a failure in CI, else a skip."""
    message = f"needs {what}"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("the playwright module: pip install playwright")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        _missing("Chromium: apt-get install chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def page(browser, server):
    """TensorBoard's page on the GRADIENT HEALTH tab, drawn; with the console
    errors and uncaught exceptions of the page and its iframe."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors = []
    page.on("console", lambda m: m.type == "error" and errors.append(m.text))
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{server}/#gradient_health")
    frame = page.frame_locator('iframe[src*="gradient_health"]')
    frame.locator("body[data-drawn]").wait_for(timeout=30_000)
    yield page, frame, errors
    page.close()


def _query(route, **params):
    return f"/data/plugin/gradient_health/{route}?{urllib.parse.urlencode(params)}"


def _number(text):
    return {"NaN": math.nan, "inf": math.inf, "-inf": -math.inf}.get(text) or float(
        text
    )


def _close(shown, value):
    if math.isnan(value):
        return math.isnan(shown)
    return shown == pytest.approx(value, rel=REL, abs=0)


def test_the_plugin_imports_neither_keras_nor_tensorflow():
    out = run_python(
        "import sys\n"
        "from keras_fanin_logs._dashboard import GradientHealthPlugin\n"
        "from tensorboard.plugins import base_plugin\n"
        "plugin = GradientHealthPlugin(base_plugin.TBContext())\n"
        "assert plugin.frontend_metadata().es_module_path == '/index.js'\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('keras', 'tensorflow', 'jax', 'torch', 'keras_fanin')))"
    )
    assert out.strip() == "[]"


@pytest.mark.slow
def test_routes_judge_as_report_does(server, logs):
    root, expected = logs
    runs = get_json(server + _query("runs"))
    assert [r["run"] for r in runs["runs"]] == sorted(RUNS.values())
    for entry in runs["runs"]:
        assert [name for name, _, _ in entry["layers"]] == LAYERS
    reported = report(root).to_dict()["runs"]
    for run, scalars in expected.items():
        verdicts = get_json(server + _query("verdicts", run=run))
        # The same function judged the same points: the same table.
        assert verdicts["layers"] == reported[run]["layers"], run
        for key in ("vanishing_since", "exploding_since", "first_step", "last_step"):
            assert verdicts[key] == reported[run][key], (run, key)
        assert [w["step"] for w in verdicts["warnings"]] == [
            w["step"] for w in reported[run]["warnings"]
        ]
        matrix = get_json(server + _query("matrix", run=run, signal="grad_norm"))
        values = np.frombuffer(base64.b64decode(matrix["values"]), "<f4")
        values = values.reshape(len(matrix["layers"]), len(matrix["steps"]))
        for r, layer in enumerate(matrix["layers"]):
            want = dict(scalars[f"grad_norm/{layer}"])
            got = dict(zip(matrix["steps"], values[r].tolist(), strict=True))
            assert set(want) == set(got)
            np.testing.assert_array_equal(
                [got[s] for s in sorted(want)], [want[s] for s in sorted(want)]
            )
    sick = get_json(server + _query("verdicts", run=RUNS["sick"]))
    assert {p["kind"] for p in sick["problems"]} >= {"dead", "nonfinite"}
    assert get_json(server + _query("verdicts", run=RUNS["he"]))["problems"] == []


@pytest.mark.slow
def test_the_tab_is_active_only_over_gradient_health_logs(server, plugin_env, tmp_path):
    listing = get_json(f"{server}/data/plugins_listing")["gradient_health"]
    assert listing["enabled"] is True
    assert listing["loading_mechanism"] == {
        "type": "IFRAME",
        "module_path": "/data/plugin/gradient_health/index.js",
    }
    # A log dir with other scalars only, as Keras's TensorBoard callback writes.
    from tensorboard.summary import Writer

    writer = Writer(str(tmp_path / "fit" / "train"))
    for step in range(3):
        writer.add_scalar("epoch_loss", 1.0 / (step + 1), step=step)
    writer.close()
    with tensorboard_server(
        tmp_path, lambda tags: "epoch_loss" in tags.get("fit/train", {}), env=plugin_env
    ) as other:
        listing = get_json(f"{other}/data/plugins_listing")
        assert listing["gradient_health"]["enabled"] is False
        assert get_json(other + _query("runs"))["runs"] == []


@pytest.mark.slow
def test_the_page_shows_every_layer_and_report_values(page, logs):
    browser_page, frame, errors = page
    _, expected = logs
    tab = browser_page.get_by_role("tab", name=re.compile("gradient health", re.I))
    assert tab.get_attribute("aria-selected") == "true"
    for name, run in RUNS.items():
        table = frame.locator(f'details.verdict-run[data-run="{run}"]')
        assert table.locator("td.layer").all_inner_texts() == LAYERS, name
        labels = frame.locator(f'.heat-run[data-run="{run}"] .layer-label')
        assert labels.evaluate_all("ls => ls.map(l => l.textContent)") == LAYERS
        scalars = expected[run]
        for row in table.locator("tr.layer-row").all():
            layer = row.get_attribute("data-layer")
            for column, signal in (("grad_norm", "grad_norm"),
                                   ("update_ratio", "update_ratio")):  # fmt: skip
                shown = _number(row.locator(f"td.{column}").inner_text())
                assert _close(shown, scalars[f"{signal}/{layer}"][-1][1]), (run, layer)
    # Without hovering: which run is sick, and how, in words.
    summary = frame.locator('.summary-run[data-run="sick/gradient_health/train"]')
    assert summary.get_attribute("data-verdict") == "nonfinite"
    assert "dense_5" in summary.inner_text()
    healthy = frame.locator(f'.summary-run[data-run="{RUNS["he"]}"]')
    assert healthy.get_attribute("data-verdict") == "ok"
    assert not errors


@pytest.mark.slow
def test_hover_shows_the_logged_values(page, logs):
    _, frame, errors = page
    _, expected = logs
    tip = frame.locator(".tooltip")
    canvas = frame.locator(f'canvas.heatmap[data-run="{RUNS["lecun"]}"]').first
    rows = int(canvas.get_attribute("data-rows"))
    cols = int(canvas.get_attribute("data-cols"))
    box = canvas.bounding_box()
    for r, c in [(0, 0), (rows - 1, cols - 1), (3, cols // 2)]:
        canvas.hover(
            position={
                "x": (c + 0.5) * box["width"] / cols,
                "y": (r + 0.5) * box["height"] / rows,
            }
        )
        data = tip.evaluate("t => ({...t.dataset})")
        assert data["layer"] == LAYERS[r]
        points = dict(expected[RUNS["lecun"]][f"grad_norm/{data['layer']}"])
        assert _close(_number(data["shown"]), points[int(data["step"])]), data
    # The depth profile's points, hovered: whichever point lies on top (the
    # lines of the first and the latest step may cross there).
    for layer in ("dense_1", "dense_3", "out"):
        frame.locator(
            f'circle.pt[data-run="{RUNS["he"]}"][data-layer="{layer}"]'
        ).first.hover(force=True)
        data = tip.evaluate("t => ({...t.dataset})")
        points = dict(expected[data["run"]][f"grad_norm/{data['layer']}"])
        assert _close(_number(data["shown"]), points[int(data["step"])]), data
    assert not errors


@pytest.mark.slow
def test_the_depth_profile_shows_lecun_vanishing(page, logs):
    _, frame, errors = page
    _, expected = logs

    def ratio(name):
        # The first logged step's line: dense_1 over the last hidden layer.
        run = RUNS[name]
        values = {}
        for layer in ("dense_1", f"dense_{DEPTH}"):
            point = frame.locator(
                f'.profile-chart [data-run="{run}"][data-layer="{layer}"][data-first="1"]'
            )
            value = float(point.get_attribute("data-value"))
            step = int(point.get_attribute("data-step"))
            assert value == dict(expected[run][f"grad_norm/{layer}"])[step]
            values[layer] = value
        return values["dense_1"] / values[f"dense_{DEPTH}"]

    # LeCun's 1/n halves the variance at each ReLU layer, He's 2/n keeps it.
    assert ratio("lecun") < ratio("he") / 4
    assert not errors


@pytest.mark.slow
def test_a_row_click_draws_the_layer_over_the_steps(page, logs):
    _, frame, errors = page
    run = RUNS["he"]
    frame.locator(
        f'details.verdict-run[data-run="{run}"] tr[data-layer="dense_2"]'
    ).click()
    detail = frame.locator(f'details.verdict-run[data-run="{run}"] tr.series-detail')
    detail.locator("svg.series-chart").first.wait_for()
    signals = detail.locator("path.series-line").evaluate_all(
        "ps => ps.map(p => p.dataset.signal)"
    )
    assert {"grad_norm", "update_ratio", "dead_relu_fraction"} <= set(signals)
    assert not errors


@pytest.mark.slow
def test_dark_mode_follows_the_system(browser, server):
    page = browser.new_page(color_scheme="dark")
    page.goto(f"{server}/#gradient_health")
    frame = page.frame_locator('iframe[src*="gradient_health"]')
    frame.locator("body[data-drawn]").wait_for(timeout=30_000)
    assert frame.locator("html").get_attribute("data-theme") == "dark"
    background = frame.locator("body").evaluate(
        "b => getComputedStyle(b).backgroundColor"
    )
    assert sum(map(int, re.findall(r"\d+", background)[:3])) < 3 * 100, background
    page.close()


def _bin_counts(spans):
    """`{bin: count}` of the non-empty bins of histogram rows as GradientHealth
    writes them."""
    bins = _histogram.bins_of(spans).tolist()
    return {b: n for b, n in zip(bins, spans[:, 2].tolist(), strict=True) if n}


@pytest.mark.slow
def test_the_distribution_route_holds_the_written_histograms(server, logs):
    root, _ = logs
    written = read_histograms(root, RUNS["he"])
    for signal in ("grad_hist", "weight_hist", "update_hist"):
        data = get_json(
            server + _query("distribution", run=RUNS["he"], layer="dense_3")
        )
        series = data["signals"][signal]
        events = written[f"{signal}/dense_3"]
        assert series["steps"] == [step for step, _ in events]
        for row, (_, spans) in zip(series["counts"], events, strict=True):
            got = {series["first"] + i: n for i, n in enumerate(row) if n}
            assert got == _bin_counts(spans)
    assert data["edges"] == _histogram.EDGES.tolist()
    # Runs without histograms answer with none.
    lecun = get_json(
        server + _query("distribution", run=RUNS["lecun"], layer="dense_3")
    )
    assert lecun["signals"] == {}


@pytest.mark.slow
def test_a_row_click_draws_the_layer_distribution(page, logs):
    _, frame, errors = page
    root, _ = logs
    run = RUNS["he"]
    frame.locator(
        f'details.verdict-run[data-run="{run}"] tr[data-layer="dense_3"]'
    ).click()
    box = frame.locator('.dist-box[data-layer="dense_3"]')
    canvas = box.locator("canvas.distribution")
    canvas.wait_for()
    radios = box.locator("input[type=radio]")
    assert radios.evaluate_all("rs => rs.map(r => r.value)") == [
        "grad_hist", "weight_hist", "update_hist"
    ]  # fmt: skip
    written = read_histograms(root, run)
    tip = frame.locator(".tooltip")
    for signal in ("grad_hist", "update_hist"):
        box.locator(f'input[value="{signal}"]').check()
        canvas = box.locator(f'canvas.distribution[data-signal="{signal}"]')
        rows, cols = (int(canvas.get_attribute(f"data-{k}")) for k in ("rows", "cols"))
        steps = [step for step, _ in written[f"{signal}/dense_3"]]
        assert cols == len(steps)
        size = canvas.bounding_box()
        for r in range(rows):
            c = r % cols
            canvas.hover(position={"x": (c + 0.5) * size["width"] / cols,
                                   "y": (r + 0.5) * size["height"] / rows})  # fmt: skip
            data = tip.evaluate("t => ({...t.dataset})")
            spans = dict(written[f"{signal}/dense_3"])[int(data["step"])]
            assert int(data["step"]) == steps[c]
            assert int(data["count"]) == _bin_counts(spans).get(int(data["bin"]), 0)
    assert not errors
