"""The release: what `python -m build` makes, checked as PyPI would, and the
wheel installed, without this checkout, into a fresh virtual environment."""

import importlib.metadata
import json
import os
import pathlib
import re
import subprocess
import sys
import tarfile
import time
import urllib.request
import zipfile

import keras
import numpy as np
import pytest

import keras_fanin
from tests.helpers import get_json, tensorboard_server

ROOT = pathlib.Path(__file__).resolve().parents[1]
ENTRY_POINT = "gradient_health = keras_fanin_logs._dashboard:GradientHealthPlugin"
BACKENDS = ("tensorflow", "jax", "torch")
# Not the checkout: what a user's process sees (PYTHONPATH would put it back).
USER_ENV = {"PYTHONPATH": None, "TF_CPP_MIN_LOG_LEVEL": "3"}

# Run in the fresh environment, one process a backend: the wheel's package,
# its installed metadata, and a model saved by this checkout loaded back.
PROBE = """
import importlib.metadata, json, sys
import keras, keras_fanin
model = keras.saving.load_model(sys.argv[1])
layers = model.layers[1:]
print(json.dumps({
    "backend": keras.backend.backend(),
    "file": keras_fanin.__file__,
    "version": keras_fanin.__version__,
    "distribution": importlib.metadata.version("keras-fanin"),
    "configs": [layer.get_config()["kernel_initializer"] for layer in layers],
    "types": [type(layer.kernel_initializer).__name__ for layer in layers],
    "weights": [w.tolist() for w in model.get_weights()],
    "draw": list(keras_fanin.He(seed=1)((3, 2)).shape),
    "lazy": keras_fanin.GradientHealth.__module__,
}))
"""

# The `tensorboard_plugins` entry point as TensorBoard loads it.
PLUGIN_PROBE = """
import importlib.metadata, json, sys
from tensorboard import default
(point,) = [
    p for p in importlib.metadata.entry_points(group="tensorboard_plugins")
    if p.name == "gradient_health"
]
plugin = point.load()
print(json.dumps({
    "value": point.value,
    "dynamic": plugin in default.get_dynamic_plugins(),
    "file": sys.modules[plugin.__module__].__file__,
}))
"""


def changelog_version():
    """The newest version heading of CHANGELOG.md (`## [X.Y.Z] - date`)."""
    text = (ROOT / "CHANGELOG.md").read_text()
    found = re.search(r"^## \[(\d+\.\d+\.\d+[^\]]*)\]", text, re.MULTILINE)
    assert found, "CHANGELOG.md has no version heading"
    return found.group(1)


def _run(command, cwd, env=None, timeout=600):
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        env={key: value for key, value in full_env.items() if value is not None},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc.stdout


def _pins():
    """The backends as this environment has them, so pip reuses its cache."""

    def version(*names):
        for name in names:
            try:
                return importlib.metadata.version(name).split("+")[0]
            except importlib.metadata.PackageNotFoundError:
                pass
        pytest.fail(f"the test extra installs {names[0]}")

    return [
        f"tensorflow-cpu=={version('tensorflow-cpu', 'tensorflow')}",
        f"jax=={version('jax')}",
        f"jaxlib=={version('jaxlib')}",
        # torch's local label (+cpu) names the index, not the release.
        f"torch=={version('torch')}",
    ]


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    """`python -m build`'s sdist, then the wheel built from that sdist."""
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--outdir", out, ROOT], cwd=out)
    return out


def test_version_is_the_changelogs_newest():
    assert keras_fanin.__version__ == changelog_version()


def test_build_makes_an_sdist_and_a_wheel_that_twine_passes(dist):
    version = keras_fanin.__version__
    assert sorted(path.name for path in dist.iterdir()) == [
        f"keras_fanin-{version}-py3-none-any.whl",
        f"keras_fanin-{version}.tar.gz",
    ]
    out = _run([sys.executable, "-m", "twine", "check", "--strict", "*"], cwd=dist)
    assert out.count("PASSED") == 2
    # The sdist runs its own tests and keeps the changelog.
    with tarfile.open(dist / f"keras_fanin-{version}.tar.gz") as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    assert {"CHANGELOG.md", "LICENSE", "tests/conftest.py", "tests/helpers.py",
            "docs/design.md", "examples/deep_relu_init.py"} <= names  # fmt: skip


def test_the_wheel_has_the_version_entry_points_and_data(dist):
    (wheel,) = dist.glob("*.whl")
    version = keras_fanin.__version__
    info = f"keras_fanin-{version}.dist-info"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = archive.read(f"{info}/METADATA").decode()
        points = archive.read(f"{info}/entry_points.txt").decode()
    assert re.search(r"^Version: (.+)$", metadata, re.MULTILINE)[1] == version
    assert "keras-fanin = keras_fanin_logs._cli:main" in points
    assert ENTRY_POINT in points
    static = ROOT / "keras_fanin_logs" / "_dashboard" / "static"
    wanted = {
        path.relative_to(ROOT).as_posix()
        for folder in ("keras_fanin", "keras_fanin_logs")
        for path in (ROOT / folder).rglob("*")
        if path.suffix == ".py" or path.name == "py.typed" or path.parent == static
    }
    assert wanted - names == set()
    assert {"keras_fanin/py.typed", "keras_fanin_logs/py.typed"} <= names
    assert f"{info}/licenses/LICENSE" in names


@pytest.mark.slow
def test_the_wheel_works_in_a_fresh_environment(dist, tmp_path):
    (wheel,) = dist.glob("*.whl")
    env = tmp_path / "venv"
    user = tmp_path / "user"
    user.mkdir()
    _run([sys.executable, "-m", "venv", env], cwd=user)
    python = env / "bin" / "python"
    # --no-compile: byte-compiling TensorFlow and torch at install time
    # doubled it; a user's first import compiles what it uses.
    _run(
        [python, "-m", "pip", "install", "--no-compile", f"{wheel}[cpu]", *_pins()],
        cwd=user,
        env=USER_ENV,
    )
    _run([python, "-m", "pip", "check"], cwd=user, env=USER_ENV)

    inputs = keras.Input((6,))
    x = keras.layers.Dense(
        4, activation="relu", kernel_initializer=keras_fanin.He(gain=1.2, seed=1)
    )(inputs)
    x = keras.layers.Dense(
        4, kernel_initializer=keras_fanin.FanScaling(mode="fan_avg", seed=2)
    )(x)
    outputs = keras.layers.Dense(1, kernel_initializer=keras_fanin.LeCun(seed=3))(x)
    model = keras.Model(inputs, outputs)
    model.save(user / "model.keras")
    expected_configs = json.loads(
        json.dumps(
            [layer.get_config()["kernel_initializer"] for layer in model.layers[1:]]
        )
    )

    site = env.resolve()
    for backend in BACKENDS:
        out = _run(
            [python, "-c", PROBE, user / "model.keras"],
            cwd=user,
            env={**USER_ENV, "KERAS_BACKEND": backend},
        )
        seen = json.loads(out.strip().splitlines()[-1])
        assert seen["backend"] == backend
        assert pathlib.Path(seen["file"]).resolve().is_relative_to(site)
        assert seen["version"] == seen["distribution"] == keras_fanin.__version__
        assert seen["configs"] == expected_configs
        assert seen["types"] == ["He", "FanScaling", "LeCun"]
        for loaded, weight in zip(seen["weights"], model.get_weights(), strict=True):
            np.testing.assert_array_equal(np.asarray(loaded, "float32"), weight)
        assert seen["draw"] == [3, 2]
        assert seen["lazy"].startswith("keras_fanin.health")

    help_text = _run([env / "bin" / "keras-fanin", "--help"], cwd=user, env=USER_ENV)
    assert help_text.startswith("usage: keras-fanin")

    plugin = json.loads(_run([python, "-c", PLUGIN_PROBE], cwd=user, env=USER_ENV))
    assert plugin["value"] == ENTRY_POINT.split(" = ")[1]
    assert plugin["dynamic"]
    assert pathlib.Path(plugin["file"]).resolve().is_relative_to(site)

    logs = user / "logs"
    logs.mkdir()
    with tensorboard_server(
        logs, lambda tags: True, env=USER_ENV, python=python, cwd=user
    ) as url:
        listing = _when_up(f"{url}/data/plugins_listing")
        assert listing["gradient_health"]["tab_name"] == "Gradient health"
        # The tab's script is package data: served from the wheel's copy.
        with urllib.request.urlopen(
            f"{url}/data/plugin/gradient_health/index.js"
        ) as page:
            assert page.status == 200


def _when_up(url, timeout=90):
    """`url`'s JSON once the server answers (an empty logdir has no tags to
    wait for)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return get_json(url)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
