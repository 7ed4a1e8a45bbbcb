import json
import pathlib
import re

import keras
import numpy as np

import keras_fanin
from tests.helpers import run_python

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_package_uses_public_apis_only():
    private = re.compile(r"\b(keras\.src|tensorflow\.python)\b")
    offenders = [
        str(path.relative_to(ROOT))
        for folder in ("keras_fanin", "keras_fanin_logs", "examples", "benchmarks")
        for path in (ROOT / folder).rglob("*.py")
        if private.search(path.read_text())
    ]
    assert offenders == []


def test_the_log_readers_import_no_backend():
    """`keras-fanin report` and the thresholds load without keras or a backend."""
    out = run_python(
        "import sys\n"
        "import keras_fanin_logs, keras_fanin_logs.judge, keras_fanin_logs._cli\n"
        "heavy = ('keras', 'keras_fanin', 'tensorflow', 'jax', 'torch')\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & set(heavy)))"
    )
    assert out.strip() == "[]"


def test_import_adds_nothing_beyond_keras():
    out = run_python(
        "import sys, keras\n"
        "before = set(sys.modules)\n"
        "import keras_fanin\n"
        "added = {m.split('.')[0] for m in set(sys.modules) - before}\n"
        "print(sorted(added - {'keras_fanin', 'keras_fanin_logs'}))"
    )
    assert out.strip() == "[]"


def test_initializers_are_backend_agnostic_on_jax():
    out = run_python(
        "import sys, math, numpy as np, keras, keras_fanin\n"
        "assert keras.backend.backend() == 'jax'\n"
        "x = np.asarray(keras_fanin.He(seed=1)((500, 400)))\n"
        "layer = keras.layers.Dense(8, kernel_initializer='keras_fanin>LeCun')\n"
        "layer.build((None, 4))\n"
        "print('tensorflow' in sys.modules, float(np.std(x)) / math.sqrt(2 / 500))",
        env={"KERAS_BACKEND": "jax"},
    )
    imported_tf, ratio = out.split()
    assert imported_tf == "False"
    assert abs(float(ratio) - 1) < 0.02


def test_saved_model_loads_in_a_fresh_process_without_custom_objects(tmp_path):
    inputs = keras.Input((12,))
    x = keras.layers.Dense(
        16, activation="relu", kernel_initializer=keras_fanin.He(gain=1.2, seed=1)
    )(inputs)
    x = keras.layers.Dense(
        16,
        activation="tanh",
        kernel_initializer=keras_fanin.LeCun(distribution="uniform", seed=2),
    )(x)
    x = keras.layers.Dense(
        16, kernel_initializer=keras_fanin.FanScaling(mode="fan_avg", seed=3)
    )(x)
    outputs = keras.layers.Dense(
        1, activation="sigmoid", kernel_initializer=keras_fanin.Xavier(gain=0.5)
    )(x)
    model = keras.Model(inputs, outputs)
    model.compile("sgd", "binary_crossentropy")
    data = np.random.default_rng(0).normal(size=(32, 12)).astype("float32")
    model.fit(data, (data[:, :1] > 0).astype("float32"), epochs=1, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    expected = {
        layer.name: layer.get_config()["kernel_initializer"]
        for layer in model.layers[1:]
    }
    out = run_python(
        "import json, sys, numpy as np, keras, keras_fanin\n"
        f"model = keras.saving.load_model({str(path)!r})\n"
        "configs = {l.name: l.get_config()['kernel_initializer'] for l in model.layers[1:]}\n"
        "types = {l.name: type(l.kernel_initializer).__name__ for l in model.layers[1:]}\n"
        f"np.savez({str(tmp_path / 'w.npz')!r}, *model.get_weights())\n"
        "print(json.dumps([configs, types]))"
    )
    configs, types = json.loads(out.strip().splitlines()[-1])
    assert configs == json.loads(json.dumps(expected))
    assert list(types.values()) == ["He", "LeCun", "FanScaling", "Xavier"]
    loaded = np.load(tmp_path / "w.npz")
    for i, weight in enumerate(model.get_weights()):
        np.testing.assert_array_equal(loaded[f"arr_{i}"], weight)


def test_ruff_lint_and_format_are_clean():
    import subprocess
    import sys

    for args in (["check", "."], ["format", "--check", "."]):
        proc = subprocess.run(
            [sys.executable, "-m", "ruff", *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
