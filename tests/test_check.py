"""`keras_fanin.check` and `keras-fanin check`: verdicts on real models, numbers
against an independent NumPy forward and backward pass, the command's exit codes."""

import json
import math
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_fanin
from keras_fanin._check import check, cli_main
from tests.helpers import run_python

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
DEPTH, WIDTH = 30, 128


def _demo_build():
    sys.path.insert(0, EXAMPLES)
    try:
        from deep_relu_init import SCHEMES, build
    finally:
        sys.path.remove(EXAMPLES)
    return SCHEMES, build


@pytest.fixture(scope="module")
def demo_reports():
    """The demo's five 30-layer ReLU nets (docs/getting-started.md), built once,
    checked once."""
    schemes, build = _demo_build()
    return {s: check(build(s, DEPTH, WIDTH, 0)) for s in schemes}


def test_demo_flags_every_scheme_but_he(demo_reports):
    assert demo_reports["He"].ok, demo_reports["He"].problems
    for scheme in ("LeCun", "Xavier", "fixed std 0.01", "fixed std 1.0"):
        report = demo_reports[scheme]
        assert not report.ok, scheme
        (problem,) = [p for p in report.problems if "relu layers" in p]
        assert problem.startswith("30 relu layers initialised with ")
        assert "use keras_fanin.He()" in problem
        grows = scheme == "fixed std 1.0"
        assert ("grows" if grows else "shrinks") in problem, problem


def test_demo_lecun_shrinks_by_the_predicted_power_of_two(demo_reports):
    # LeCun halves the variance at each ReLU layer: 29 layers after the
    # first, then the softmax layer (Xavier, 128 -> 10) scales by
    # sqrt(2 / 138) / sqrt(1 / 128).
    report = demo_reports["LeCun"]
    predicted = 0.5 ** (29 / 2) * math.sqrt(2 / 138) / math.sqrt(1 / 128)
    assert f"predicted x{predicted:.3g}" in report.problems[0]
    first, last = report.layers[0], report.layers[-1]
    measured = last.pre_std / first.pre_std
    assert f"measured x{measured:.3g}" in report.problems[0]
    # One draw of 30 random layers: seeds 0-5 gave 0.15 to 1.2 on TF and 0.19
    # to 0.81 on JAX (each backend draws its own weights).
    assert 0.1 < measured / predicted < 4


def test_demo_table_stds_follow_the_fan_rule(demo_reports):
    report = demo_reports["He"]
    assert [r.name for r in report.layers] == [
        *(f"relu_{i}" for i in range(1, DEPTH + 1)),
        "softmax",
    ]
    first, hidden, head = report.layers[0], report.layers[1], report.layers[-1]
    assert first.drawn_std == pytest.approx(math.sqrt(2 / 64))
    assert hidden.recommended_std == pytest.approx(math.sqrt(2 / 128))
    assert hidden.ratio == pytest.approx(1.0)
    assert (head.activation, head.initializer) == ("softmax", "Xavier")
    assert head.drawn_std == pytest.approx(math.sqrt(2 / 138))
    lecun = demo_reports["LeCun"].layers[1]
    assert lecun.ratio == pytest.approx(math.sqrt(0.5))
    fixed = demo_reports["fixed std 1.0"].layers[1]
    assert (fixed.initializer, fixed.drawn_std) == ("RandomNormal", 1.0)
    # std 1 reaches ~1e27 by layer 30: measured without overflow.
    assert math.isfinite(demo_reports["fixed std 1.0"].layers[-2].pre_std)
    assert demo_reports["fixed std 1.0"].layers[-2].pre_std > 1e20


def test_str_fits_100_columns_and_json_round_trips(demo_reports):
    for report in demo_reports.values():
        text = str(report)
        assert max(len(line) for line in text.splitlines()) <= 100
        assert text.count("\n") > DEPTH
        data = json.loads(json.dumps(report.to_dict()))
        assert data["ok"] == report.ok
        assert data["problems"] == report.problems
        assert len(data["layers"]) == DEPTH + 1
    assert "OK: no problem found." in str(demo_reports["He"])
    assert "1 problem found:" in str(demo_reports["LeCun"])


def _mlp(hidden, activation, init, depth=3, inputs=8, outputs=4):
    layers = [keras.Input((inputs,))]
    layers += [
        keras.layers.Dense(
            hidden,
            activation,
            kernel_initializer=init() if callable(init) else init,
            bias_initializer=keras.initializers.RandomNormal(stddev=0.1),
        )
        for _ in range(depth)
    ]
    layers.append(keras.layers.Dense(outputs))
    return keras.Sequential(layers)


def test_numbers_match_a_numpy_forward_and_backward_pass():
    model = _mlp(16, "relu", keras_fanin.He)
    x = np.random.default_rng(5).standard_normal((32, 8)).astype("float32")
    report = check(model, x)
    weights = [
        [np.asarray(w, "float64") for w in layer.get_weights()]
        for layer in model.layers
    ]
    hs, zs = [x.astype("float64")], []
    for i, (w, b) in enumerate(weights):
        zs.append(hs[-1] @ w + b)
        hs.append(np.maximum(zs[-1], 0) if i < len(weights) - 1 else zs[-1])
    # The documented loss: sum(y * r) / batch, r = default_rng(0) normal.
    r = np.random.default_rng(0).standard_normal(hs[-1].shape)
    delta, grads = r / len(x), []
    for i in reversed(range(len(weights))):
        grads.insert(0, hs[i].T @ delta)
        delta = delta @ weights[i][0].T
        if i > 0:
            delta = delta * (zs[i - 1] > 0)
    for i, record in enumerate(report.layers):
        assert record.input_std == pytest.approx(np.std(hs[i]), rel=1e-4)
        assert record.pre_std == pytest.approx(np.std(zs[i]), rel=1e-4)
        assert record.out_std == pytest.approx(np.std(hs[i + 1]), rel=1e-4)
        assert record.grad_norm == pytest.approx(np.linalg.norm(grads[i]), rel=1e-4)
        alive = (hs[i + 1] > 0).any(axis=0)
        if record.activation == "relu":
            assert record.dead_fraction == pytest.approx(1 - alive.mean())
    assert report.ok


def _resnet(blocks=3, width=8):
    """A small ResNet v1: Conv2D + BatchNorm + ReLU, residual adds, a strided
    block with a projection shortcut; Keras's default (Glorot) initializers."""
    inputs = keras.Input((12, 12, 3))
    h = keras.layers.Conv2D(width, 3, padding="same", use_bias=False)(inputs)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.ReLU()(h)
    for b in range(blocks):
        stride = 2 if b == 1 else 1
        shortcut = h
        h = keras.layers.Conv2D(width, 3, stride, padding="same", use_bias=False)(h)
        h = keras.layers.BatchNormalization()(h)
        h = keras.layers.Activation("relu")(h)
        h = keras.layers.Conv2D(width, 3, padding="same", use_bias=False)(h)
        h = keras.layers.BatchNormalization()(h)
        if stride > 1:
            shortcut = keras.layers.Conv2D(width, 1, stride, use_bias=False)(shortcut)
            shortcut = keras.layers.BatchNormalization()(shortcut)
        h = keras.layers.ReLU()(keras.layers.Add()([h, shortcut]))
    h = keras.layers.GlobalAveragePooling2D()(h)
    outputs = keras.layers.Dense(10, activation="softmax")(h)
    return keras.Model(inputs, outputs, name="resnet")


def test_resnet_with_batchnorm_raises_no_false_alarm():
    model = _resnet()
    moving = [w.numpy().copy() for w in model.non_trainable_weights]
    report = check(model)
    assert report.ok, report.problems
    convs = [r for r in report.layers if r.layer_type == "Conv2D"]
    assert len(convs) == 8
    # Glorot is off the ReLU fan rule, but every conv is normalised next.
    assert all(r.normalized and r.activation == "relu" for r in convs)
    # The first conv, 3x3, 3 -> 8 channels: Glorot's std over He's.
    glorot, he = math.sqrt(2 / (27 + 72)), math.sqrt(2 / 27)
    assert convs[0].ratio == pytest.approx(glorot / he)
    assert not report.layers[-1].normalized
    # Training-mode BatchNorm, yet no moving statistic changed.
    for before, after in zip(moving, model.non_trainable_weights, strict=True):
        np.testing.assert_array_equal(before, after.numpy())


@pytest.mark.parametrize(
    "activation, init, verdict",
    [
        ("tanh", lambda: keras_fanin.LeCun(gain=keras_fanin.calculate_gain("tanh")), None),
        # The biases (std 0.1) hold the pre-activations' std; the signal from
        # the inputs vanishes, as the gradients show.
        ("tanh", lambda: keras.initializers.RandomNormal(stddev=0.01), "vanish"),
        # std 2 over fan-in 32: pre-activations of std ~11, ~70% beyond
        # atanh(0.999). (std 1 gives ~48%, at the 50% threshold: a coin flip.)
        ("tanh", lambda: keras.initializers.RandomNormal(stddev=2.0), "saturated"),
        ("sigmoid", keras.initializers.GlorotUniform, None),
        ("sigmoid", lambda: keras.initializers.RandomNormal(stddev=0.01), "vanish"),
    ],
)  # fmt: skip
def test_tanh_and_sigmoid_nets(activation, init, verdict):
    report = check(_mlp(32, activation, init, depth=8, inputs=32))
    if verdict is None:
        assert report.ok, report.problems
    else:
        assert any(verdict in p for p in report.problems), report.problems
        assert all(r.activation == activation for r in report.layers[:-1])


class _Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        init = lambda: keras.initializers.RandomNormal(stddev=0.02)  # noqa: E731
        self.hidden = [
            keras.layers.Dense(32, kernel_initializer=init()) for _ in range(5)
        ]
        self.relu = keras.layers.ReLU()  # one layer, called five times
        self.head = keras.layers.Dense(3)

    def call(self, x):
        for dense in self.hidden:
            x = self.relu(dense(x))
        return self.head(x)


def test_subclassed_model_with_a_shared_activation_layer():
    x = np.random.default_rng(1).standard_normal((16, 12)).astype("float32")
    model = _Subclassed()
    with pytest.raises(ValueError, match="no known input shape"):
        check(model)
    report = check(model, x)
    assert [r.activation for r in report.layers] == ["relu"] * 5 + ["linear"]
    (problem,) = report.problems
    assert problem.startswith("5 relu layers initialised with RandomNormal")


def test_unbuilt_sequential_is_built_on_x():
    model = keras.Sequential(
        [keras.layers.Dense(32, "relu", kernel_initializer=keras_fanin.He())
         for _ in range(6)]
    )  # fmt: skip
    x = np.random.default_rng(2).standard_normal((16, 20)).astype("float32")
    report = check(model, x)
    assert model.built and report.ok and len(report.layers) == 6
    assert report.layers[0].fan_in == 20


def test_model_without_kernels_is_an_empty_ok_report():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Activation("relu")])
    report = check(model)
    assert report.ok and report.layers == [] and report.problems == []
    assert "No layer with a kernel" in str(report)


def test_arguments_are_validated():
    model = _mlp(8, "relu", keras_fanin.He)
    with pytest.raises(TypeError, match="Argument `model` must be a Keras model"):
        check(keras.layers.Dense(3))
    with pytest.raises(ValueError, match="does not exist"):
        check("missing.keras")
    with pytest.raises(TypeError, match="Argument `x` must be an array"):
        check(model, x="abc")
    with pytest.raises(ValueError, match="Argument `x` must be a non-empty batch"):
        check(model, x=np.zeros((0, 8), "float32"))
    with pytest.raises(ValueError, match="Argument `x` does not fit the model"):
        check(model, x=np.zeros((4, 7), "float32"))
    ints = keras.Sequential(
        [keras.Input((5,), dtype="int32"), keras.layers.Embedding(9, 4)]
    )
    with pytest.raises(ValueError, match="dtype int32"):
        check(ints)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("check")
    paths = {}
    for name, init in (("good", keras_fanin.He), ("bad", keras_fanin.LeCun)):
        model = _mlp(32, "relu", init, depth=8, inputs=16)
        paths[name] = str(root / f"{name}.keras")
        model.save(paths[name])
    return paths


def test_keras_path_and_cli_exit_codes(saved, capsys):
    report = check(saved["bad"])
    assert (
        not report.ok and "8 relu layers initialised with LeCun" in report.problems[0]
    )
    assert cli_main([saved["good"]]) == 0
    assert "OK: no problem found." in capsys.readouterr().out
    assert cli_main([saved["bad"], "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["problems"] == report.problems
    assert cli_main([saved["good"] + ".missing.keras"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err


@pytest.mark.skipif(
    not os.path.exists(os.path.join(ROOT, "keras_fanin", "__main__.py")),
    reason="the `python -m keras_fanin` entry point has not landed",
)
def test_python_m_keras_fanin_check(saved):
    proc = subprocess.run(
        [sys.executable, "-m", "keras_fanin", "check", saved["bad"]],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "8 relu layers initialised with LeCun" in proc.stdout


def test_jax_backend_in_a_subprocess():
    code = (
        "import keras, keras_fanin\n"
        "from keras_fanin._check import check\n"
        "def mlp(init):\n"
        "    return keras.Sequential([keras.Input((16,))] + [keras.layers.Dense(\n"
        "        32, 'relu', kernel_initializer=init()) for _ in range(8)])\n"
        "he, lecun = check(mlp(keras_fanin.He)), check(mlp(keras_fanin.LeCun))\n"
        "print(keras.backend.backend(), he.ok, lecun.ok, lecun.layers[1].grad_norm > 0)\n"
    )
    out = run_python(code, env={"KERAS_BACKEND": "jax"})
    assert out.split() == ["jax", "True", "False", "True"]


def _depthwise_stack(init, depth=6, channels=8):
    layers = [keras.Input((12, 12, channels))]
    layers += [
        keras.layers.DepthwiseConv2D(
            3, padding="same", activation="relu", depthwise_initializer=init()
        )
        for _ in range(depth)
    ]
    layers += [keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2)]
    return keras.Sequential(layers)


def test_depthwise_kernels_are_judged_by_their_receptive_field():
    # He() reads a depthwise kernel (3, 3, 8, 1) in Keras's layout: fan-in 72,
    # where each output sums 9 inputs. The signal shrinks by sqrt(8) a layer.
    report = check(_depthwise_stack(keras_fanin.He))
    assert [r.fan_in for r in report.layers[:-1]] == [9] * 6
    assert report.layers[1].ratio == pytest.approx(1 / math.sqrt(8))
    (problem,) = report.problems
    assert problem.startswith("6 relu layers initialised with He: the signal shrinks")
    fix = (
        "depthwise_initializer=keras_fanin.He(input_axes=[0, 1], output_axes=[0, 1, 3])"
    )
    assert problem.endswith(f"use {fix}.")
    fixed = check(
        _depthwise_stack(
            lambda: keras_fanin.He(input_axes=[0, 1], output_axes=[0, 1, 3])
        )
    )
    assert fixed.ok, fixed.problems
    data = json.loads(json.dumps(fixed.to_dict()))
    (kernel,) = data["layers"][0]["kernels"]
    assert (kernel["name"], kernel["fan_in"], kernel["argument"]) == (
        "kernel", 9, "depthwise_initializer",
    )  # fmt: skip
    assert kernel["ratio"] == pytest.approx(1.0)
