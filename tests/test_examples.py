"""The science tests: each example, in a reduced mode through its own command
line (`main(argv)`), must show what the docs say it shows
(docs/getting-started.md, docs/check-and-fix.md).

Each example runs in a fresh interpreter, because the examples turn on
TensorFlow's op determinism, which is process-wide.
"""

import json
import math
import os

import pytest

from tests.helpers import run_python

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "examples")
MARK = "RESULTS-JSON "


def run_example(module, argv, timeout=300):
    """Runs `examples/<module>.py`'s `main(argv)`; returns (results, stdout)."""
    code = (
        "import json, sys\n"
        f"sys.path.insert(0, {EXAMPLES!r})\n"
        f"import {module}\n"
        f"results = {module}.main({argv!r})\n"
        f"print({MARK!r} + json.dumps(results))\n"
    )
    out = run_python(code, timeout=timeout)
    line = next(x for x in out.splitlines() if x.startswith(MARK))
    return json.loads(line[len(MARK) :]), out


# -- the demo: 30 ReLU layers --------------------------------------------------

DEPTH, WIDTH = 30, 128


@pytest.fixture(scope="module")
def deep(tmp_path_factory):
    root = tmp_path_factory.mktemp("deep_relu_init")
    argv = ["--epochs", "5", "--log-dir", str(root / "logs"),
            "--plot", str(root / "demo.png"),
            "--fix", "LeCun", "Xavier", "fixed std 0.01"]  # fmt: skip
    results, out = run_example("deep_relu_init", argv)
    return results, out, root


def test_demo_he_learns_and_lecun_stalls_at_30_layers(deep):
    results, _, _ = deep
    he, lecun, xavier = results["He"], results["LeCun"], results["Xavier"]
    chance = 0.1
    assert he["val_accuracy"] > chance + 0.3
    assert lecun["val_accuracy"] < chance + 0.05
    assert xavier["val_accuracy"] < chance + 0.05
    assert results["fixed std 0.01"]["val_accuracy"] < chance + 0.05
    # Read back from GradientHealth's event files: LeCun's first-layer
    # gradient is orders of magnitude below He's, while the last layers'
    # gradients are within two orders: the gradient vanished on the way down.
    assert lecun["grad_norm_first"] < 1e-3 * he["grad_norm_first"]
    assert he["grad_norm_first"] > 1e-2 * he["grad_norm_last"]
    assert lecun["grad_norm_first"] < 1e-2 * lecun["grad_norm_last"]
    assert any("vanishing" in m for m in lecun["warnings"])
    assert not any("vanishing" in m or "exploding" in m for m in he["warnings"])
    # keras_fanin.check said so before training.
    assert he["check_problems"] == []
    assert lecun["check_problems"] and xavier["check_problems"]
    assert results["fixed std 0.01"]["check_problems"]


@pytest.mark.parametrize("scheme", ["LeCun", "Xavier", "fixed std 0.01"])
def test_demo_fixed_networks_pass_check_and_train_like_he(deep, scheme):
    """`keras_fanin.fix` re-draws the 30 flagged ReLU kernels with He(), from
    the seed He's network draws with: then it is He's network and trains as
    it does (docs/check-and-fix.md quotes 20 epochs; this is the examples' 5)."""
    results, _, _ = deep
    he, fixed = results["He"], results[f"{scheme} + fix"]
    assert results[scheme]["check_problems"]
    assert fixed["check_problems"] == []
    assert abs(fixed["val_accuracy"] - he["val_accuracy"]) <= 0.03
    assert fixed["grad_norm_first"] == pytest.approx(he["grad_norm_first"], rel=1e-5)
    assert fixed["activation_std"] == pytest.approx(he["activation_std"], rel=1e-5)
    assert not fixed["warnings"]


def test_demo_exploding_init_is_stopped_by_gradient_health(deep):
    results, _, _ = deep
    exploding = results["fixed std 1.0"]
    assert exploding["diverged_at_step"] is not None
    assert any("non-finite values" in m for m in exploding["warnings"])
    # stop_on_nonfinite ended training before the 5 epochs.
    assert len(exploding["val_accuracy_per_epoch"]) < 5


@pytest.mark.parametrize(
    "scheme, factor",
    [
        # Per ReLU layer of width n the std is multiplied by
        # init_std * sqrt(n / 2): He keeps it, 1/n divides it by sqrt(2).
        ("He", 1.0),
        ("LeCun", math.sqrt(0.5)),
        ("fixed std 0.01", 0.01 * math.sqrt(WIDTH / 2)),
        ("fixed std 1.0", 1.0 * math.sqrt(WIDTH / 2)),
    ],
)
def test_demo_activation_std_follows_the_law(deep, scheme, factor):
    stds = deep[0][scheme]["activation_std"]
    assert len(stds) == DEPTH
    measured = math.log10(stds[-1] / stds[0])
    predicted = (DEPTH - 1) * math.log10(factor)
    # 29 random layers multiply in some noise: within a factor of 30 over a
    # range of up to 10^33.
    assert measured == pytest.approx(predicted, abs=1.5)


def test_demo_prints_the_tables_logs_and_plot(deep):
    results, out, root = deep
    assert "Activation std at initialisation" in out
    assert f"tensorboard --logdir {root / 'logs'}" in out
    assert (root / "demo.png").stat().st_size > 10_000
    for scheme in results.values():
        assert os.listdir(os.path.join(scheme["log_dir"], "gradient_health"))


def test_demo_is_deterministic_given_its_seed(deep, tmp_path):
    results, _, _ = deep
    argv = ["--epochs", "5", "--log-dir", str(tmp_path), "--plot", ""]
    again, _ = run_example("deep_relu_init", [*argv, "--schemes", "LeCun"])
    assert set(again) == {"LeCun"}
    for scheme in ("LeCun",):
        for key in ("val_accuracy_per_epoch", "grad_norm_first", "activation_std"):
            assert again[scheme][key] == results[scheme][key], (scheme, key)


# -- dead ReLUs ----------------------------------------------------------------


@pytest.fixture(scope="module")
def dead(tmp_path_factory):
    root = tmp_path_factory.mktemp("dead_relus")
    return run_example("dead_relus", ["--epochs", "3", "--log-dir", str(root)])[0]


def test_dead_relus_seen_and_warned(dead):
    high = dead["relu_lr0.03"]
    assert high["max_dead_fraction"] > 0.5
    assert any("are dead" in m for m in high["warnings"])


def test_leaky_relu_with_he_negative_slope_lowers_the_dead_fraction(dead):
    high, leaky = dead["relu_lr0.03"], dead["leaky_relu_lr0.03"]
    assert leaky["max_dead_fraction"] < high["max_dead_fraction"] / 4
    assert not any("are dead" in m for m in leaky["warnings"])
    # A sane learning rate is the other fix.
    assert dead["relu_lr0.001"]["max_dead_fraction"] < 0.2


# -- saturated sigmoids --------------------------------------------------------


@pytest.fixture(scope="module")
def saturated(tmp_path_factory):
    root = tmp_path_factory.mktemp("saturated_sigmoid")
    results = run_example(
        "saturated_sigmoid", ["--epochs", "3", "--log-dir", str(root)]
    )
    return {float(gain): r for gain, r in results[0].items()}


def test_large_gain_saturates_and_is_warned(saturated):
    big = saturated[16.0]
    # First layer: pre-activations ~ N(0, (16 * sqrt(2 / 128))^2 * 64 * E[x^2])
    # with standardised inputs (E[x^2] ~ 61/64: three digit pixels are always
    # 0); a sigmoid output is within 1e-3 of its bounds when |z| > logit(0.999).
    sigma = 16 * math.sqrt(2 / 128) * math.sqrt(61)
    predicted = math.erfc(math.log(999) / sigma / math.sqrt(2))
    assert big["saturated_at_start"]["sigmoid_1"] == pytest.approx(predicted, abs=0.1)
    assert all(v > 0.3 for v in big["saturated_at_start"].values())
    assert any("sigmoid outputs of layer 'sigmoid_1'" in m for m in big["warnings"])


def test_proper_gain_keeps_sigmoids_unsaturated_and_learns_faster(saturated):
    fixed = saturated[4.0]
    assert max(fixed["saturated_at_start"].values()) < 0.1
    assert max(fixed["saturated_at_end"].values()) < 0.1
    assert not any("saturated" in m for m in fixed["warnings"])
    assert fixed["val_accuracy"] > saturated[16.0]["val_accuracy"] + 0.1


# -- the gain as a hyperparameter ---------------------------------------------


def test_keras_tuner_finds_the_gain_that_keeps_the_signal(tmp_path):
    (best, scores), out = run_example(
        "tune_gain",
        ["--epochs", "2", "--gains", "1", "4", "16", "--dir", str(tmp_path)],
    )
    scores = {float(g): s for g, s in scores.items()}
    assert set(scores) == {1.0, 4.0, 16.0}
    assert best == 4.0
    assert scores[4.0] > scores[1.0] + 0.3
    assert scores[4.0] > scores[16.0]
    assert "Best gain: 4" in out
