"""Starts a real `tensorboard` server on 127.0.0.1 and reads the scalars over HTTP."""

import re
import time
import urllib.parse
import urllib.request

import keras
import numpy as np
import pytest

import keras_fanin
from keras_fanin_logs._report import report
from tests.helpers import PROBE, TRAIN, get_json, read_scalars, tensorboard_server


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A tiny fit() with GradientHealth and a real TensorBoard server on its logs.

    Yields `(server URL, log_dir, expected scalars per run, scalar tags served)`,
    once every scalar tag is served; shared by the tests of this module.
    """
    tmp_path = tmp_path_factory.mktemp("served")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(128, 8)).astype("float32")
    y = (x[:, :1] > 0).astype("float32")
    model = keras.Sequential([
        keras.Input((8,)),
        keras.layers.Dense(16, activation="relu", name="hidden"),
        keras.layers.Dense(8, activation="tanh", name="squash"),
        keras.layers.Dense(1, activation="sigmoid", name="out"),
    ])  # fmt: skip
    model.compile("sgd", "binary_crossentropy")
    health = keras_fanin.GradientHealth(
        tmp_path, (x, y), every_n_steps=1, probe_every_n_steps=2
    )
    model.fit(x, y, batch_size=32, epochs=2, verbose=0, callbacks=[health])
    expected = {run: read_scalars(tmp_path, run) for run in (TRAIN, PROBE)}

    served = {}

    def ready(tags):
        served.clear()
        served.update(tags)
        return all(set(tags.get(r, {})) == set(expected[r]) for r in expected)

    with tensorboard_server(tmp_path, ready) as root:
        yield root, tmp_path, expected, served


@pytest.mark.slow
def test_scalars_through_tensorboard_http_api(served):
    root, _, expected, served = served
    base = f"{root}/data/plugin/scalars"
    for run in expected:
        assert set(served.get(run, {})) == set(expected[run]), run
    for run, tag in [
        (TRAIN, "grad_norm/hidden"), (TRAIN, "update_ratio/out"),
        (TRAIN, "dead_relu_fraction/hidden"), (PROBE, "grad_norm/hidden"),
        (PROBE, "probe_loss"),
    ]:  # fmt: skip
        query = urllib.parse.urlencode({"run": run, "tag": tag})
        series = get_json(f"{base}/scalars?{query}")
        assert [(step, value) for _, step, value in series] == [
            (step, pytest.approx(value, rel=1e-6)) for step, value in expected[run][tag]
        ]
    tags = set(served[TRAIN]) | set(served[PROBE])
    layout = get_json(f"{root}/data/plugin/custom_scalars/layout")
    charts = layout["category"][0]["chart"]
    assert {c["title"] for c in charts} == {
        "grad_norm", "update_ratio", "weight_norm", "activation_std",
        "dead_relu_fraction", "saturated_sigmoid_fraction",
        "saturated_tanh_fraction", "probe_loss", "global_grad_norm",
    }  # fmt: skip
    # Every chart shows exactly the tags of its signal (the probe_loss
    # chart was once empty: its pattern wanted a '/' the tag lacks), and no
    # chart is empty: no clipping is configured here, so no clip chart.
    for chart in charts:
        (pattern,) = chart["multiline"]["tag"]
        shown = {t for t in tags if re.search(pattern, t)}
        title = chart["title"]
        assert shown == {t for t in tags if t.split("/")[0] == title}, title
        assert shown, title


@pytest.mark.slow
def test_gradient_flow_picture_in_the_images_tab(served):
    root, log_dir, _, _ = served
    base = f"{root}/data/plugin/images"
    deadline, tags = time.monotonic() + 30, {}
    while time.monotonic() < deadline:
        tags = get_json(f"{base}/tags")
        if all("gradient_flow" in tags.get(run, {}) for run in (TRAIN, PROBE)):
            break
        time.sleep(0.5)
    for run in (TRAIN, PROBE):
        assert tags[run]["gradient_flow"]["samples"] == 1, run
        query = urllib.parse.urlencode({"run": run, "tag": "gradient_flow"})
        (image,) = get_json(f"{base}/images?{query}")  # one, at the end
        with urllib.request.urlopen(
            f"{base}/individualImage?{image['query']}", timeout=10
        ) as response:
            assert response.headers["Content-Type"] == "image/png"
            png = response.read()
        # The very picture `report` draws from the same logs, at the last step.
        logged = report(log_dir).runs[run]
        assert [layer.name for layer in logged.layers] == ["hidden", "squash", "out"]
        picture = logged.picture()
        assert image["step"] == picture.steps[1] == logged.last_step
        assert png == picture.png()
