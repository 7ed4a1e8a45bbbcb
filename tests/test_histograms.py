"""GradientHealth's histograms and global gradient norm (issue 21, part 1):
bin counts against `numpy.histogram` on the same edges, read back with
TensorBoard's own reader and server."""

import json
import warnings

import keras
import numpy as np
import pytest

from keras_fanin import GradientHealth
from keras_fanin.health import _callback, _stats
from keras_fanin.health._hook import UpdatePlan
from keras_fanin_logs import _histogram
from tests import test_gradient_health_step as step_tests
from tests.helpers import (
    TRAIN,
    get_json,
    independent_gradients,
    read_histograms,
    run_python,
    tensorboard_server,
)
from tests.test_gradient_health_step import DETERMINISM

BACKEND = keras.backend.backend()
EDGES = GradientHealth.HISTOGRAM_EDGES
BINS = len(EDGES) - 1
SIGNALS = ("grad_hist", "weight_hist", "update_hist")
FEATURES, BATCH = 6, 8


def reference(values):
    """`numpy.histogram` on the edges, then the non-finite count."""
    values = np.ravel(np.asarray(values, "float32"))
    counts, _ = np.histogram(values, EDGES)
    return np.append(counts, np.sum(~np.isfinite(values)))


def awkward_values():
    """Every edge, the floats on either side of it, both zeros, subnormals,
    NaN and both infinities, and values over 90 decades."""
    edges = EDGES.astype("float32")
    big, small = np.float32(np.inf), np.float32(-np.inf)
    rng = np.random.default_rng(0)
    with np.errstate(over="ignore"):
        spread = rng.normal(size=300) * 10.0 ** rng.uniform(-45, 38, 300)
        return np.concatenate([
            edges, np.nextafter(edges, big), np.nextafter(edges, small),
            [0.0, -0.0, 1e-40, -1e-40, 1e-45, -1e-45, np.nan, -np.nan, big, small],
            spread.astype("float32"),
        ]).astype("float32")  # fmt: skip


def backend_count():
    """The bincount each backend's step hook uses, and a compiler."""
    if BACKEND == "tensorflow":
        import tensorflow as tf

        def count(codes):
            return tf.math.unsorted_segment_sum(
                tf.ones_like(codes), codes, _histogram.CODES
            )

        return count, lambda f: tf.function(f, jit_compile=True)
    if BACKEND == "jax":
        import jax
        import jax.numpy as jnp

        return lambda codes: jnp.bincount(codes, length=_histogram.CODES), jax.jit
    import torch

    def count(codes):
        return torch.bincount(codes, minlength=_histogram.CODES).int()

    return count, lambda f: f


def test_bucketing_equals_numpy_histogram_on_awkward_values():
    values = awkward_values()
    count, compiled = backend_count()
    plan = UpdatePlan([0, 1], [0, 0], 1, (), [], False, [0])
    half = len(values) // 2

    def counts(x):
        parts = [(x[:half], False), (x[half:], False)]
        negated = [(x[:half], True), (x[half:], True)]
        return _stats.histogram_counts([parts, negated], plan, count)

    x = keras.ops.convert_to_tensor(values)
    for run in (counts, compiled(counts)):  # eagerly, and compiled (XLA)
        got = keras.ops.convert_to_numpy(run(x))
        np.testing.assert_array_equal(got[0, 0], reference(values))
        np.testing.assert_array_equal(got[0, 1], reference(-values))
    assert got[0, 0, BINS] >= 4  # NaN, -NaN, inf, -inf: in no bin
    assert got[0, 0, BINS // 2] >= 9  # the zero bin: +-0 and the subnormals


def test_bins_are_fixed_and_written_finite():
    assert BINS == 101 and np.all(np.diff(EDGES) > 0)
    assert np.array_equal(EDGES.astype("float32").astype("float64"), EDGES)
    # Powers of two; on the negative side the float32 next to each towards
    # zero, so a bin holds exactly the floats of one exponent there too.
    powers = 2.0 ** np.arange(-126, 15)
    positive, negative = EDGES[BINS // 2 + 1 : -1], EDGES[1 : BINS // 2 + 1]
    assert set(positive) <= set(powers) and len(positive) == 50
    towards_zero = np.nextafter(-powers.astype("float32"), np.float32(0))
    assert set(negative) <= set(towards_zero.astype("float64"))
    counts = reference([0.0, 3.0, -5e-3, 1e30])
    spans = _histogram.spans(counts)
    # The non-empty span only: from the bin of -5e-3 to the overflow bin,
    # drawn one octave wide.
    assert spans[0, 0] == np.float32(-(2.0**-7)) * np.float32(1 - 2.0**-24)
    assert spans[-1].tolist() == [2.0**14, 2.0**15, 1]
    assert spans[:, 2].sum() == 4 and np.all(np.isfinite(spans))
    assert _histogram.spans(np.zeros(BINS + 1)) is None


def mlp(seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((FEATURES,)),
        keras.layers.Dense(5, activation="relu", name="h1"),
        keras.layers.Dense(1, activation="sigmoid", name="out"),
    ])  # fmt: skip
    kernel, bias = model.get_layer("h1").get_weights()
    # Values exactly on edges; a dead unit (bias -100): exact zero gradients.
    kernel[0, :4] = [2.0**-3, -(2.0**-5), 0.0, 1.0]
    bias[-1] = -100.0
    model.get_layer("h1").set_weights([kernel, bias])
    return model


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6 * BATCH, FEATURES)).astype("float32")
    y = (x[:, :1] > 0).astype("float32")
    return x, y


class WeightsPerStep(step_tests.WeightsPerStep):
    """The weights before every step, and after the last."""

    def on_train_end(self, logs=None):
        self.weights.append([w.copy() for w in self.model.get_weights()])


def fit(model, data, *callbacks, epochs=1):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(*data, batch_size=BATCH, epochs=epochs, verbose=0,
                  shuffle=False, callbacks=list(callbacks))  # fmt: skip


def test_counts_equal_numpy_for_gradient_weights_and_update(tmp_path, data):
    x, y = data
    model = mlp()
    model.compile(keras.optimizers.SGD(0.5), "binary_crossentropy")
    recorder = WeightsPerStep()
    health = GradientHealth(tmp_path, every_n_steps=1, histograms=2)
    fit(model, data, recorder, health)
    steps = [s for s, _ in health.histogram_history["grad_hist/h1"]]
    assert steps == [0, 2, 4]
    reference_model = mlp()
    layers = {"h1": [0, 1], "out": [2, 3]}  # positions in get_weights()
    for step in steps:
        before, after = recorder.weights[step], recorder.weights[step + 1]
        reference_model.set_weights(before)
        batch = slice(step * BATCH, (step + 1) * BATCH)
        grads = independent_gradients(reference_model, x[batch], y[batch])
        for name, slots in layers.items():
            expected = {
                "grad_hist": [grads[i] for i in slots],
                "weight_hist": [after[i] for i in slots],
                "update_hist": [after[i] - before[i] for i in slots],
            }
            for signal, arrays in expected.items():
                values = np.concatenate([a.ravel() for a in arrays])
                got = dict(health.histogram_history[f"{signal}/{name}"])[step]
                np.testing.assert_array_equal(got, reference(values), (signal, step))
    # The dead unit's gradient, exact zeros, is in the zero bin.
    first = dict(health.histogram_history["grad_hist/h1"])[0]
    assert first[BINS // 2] >= FEATURES + 1


def test_nonfinite_weights_are_counted_apart(tmp_path, data):
    model = mlp()
    # Not cross-entropy: torch's raises on a NaN probability.
    model.compile(keras.optimizers.SGD(0.1), "mse")
    kernel = model.get_layer("out").kernel
    values = keras.ops.convert_to_numpy(kernel).copy()
    values[:2, 0] = [np.nan, np.inf]
    kernel.assign(values)
    health = GradientHealth(tmp_path, every_n_steps=1, histograms=1)
    x, y = data
    fit(model, (x[:BATCH], y[:BATCH]), health)
    [(step, counts)] = health.histogram_history["weight_hist/out"]
    after = np.concatenate([w.ravel() for w in model.get_layer("out").get_weights()])
    np.testing.assert_array_equal(counts, reference(after))
    assert counts[BINS] >= 2 and counts.sum() == after.size


def test_global_grad_norm_of_every_logged_step(tmp_path, data):
    x, y = data
    model = mlp()
    model.compile(keras.optimizers.SGD(0.1), "binary_crossentropy")
    recorder = WeightsPerStep()
    health = GradientHealth(tmp_path, every_n_steps=2)
    fit(model, data, recorder, health)
    series = health.history["global_grad_norm"]
    assert [s for s, _ in series] == [0, 2, 4]
    reference_model = mlp()
    for step, norm in series:
        reference_model.set_weights(recorder.weights[step])
        batch = slice(step * BATCH, (step + 1) * BATCH)
        grads = independent_gradients(reference_model, x[batch], y[batch])
        total = np.sqrt(sum(np.sum(np.square(g.astype("float64"))) for g in grads))
        assert norm == pytest.approx(total, rel=1e-5), step
    assert "global_grad_norm" in _callback.CHART_PATTERNS


def test_histogram_events_through_tensorboard(tmp_path, data):
    model = mlp()
    model.compile(keras.optimizers.SGD(0.1), "binary_crossentropy")
    health = GradientHealth(tmp_path, every_n_steps=2, histograms=2)
    fit(model, data, health, epochs=2)  # 12 steps: logged 0, 2, ..., 10
    events = read_histograms(tmp_path)
    tags = {f"{s}/{name}" for s in SIGNALS for name in ("h1", "out")}
    assert set(events) == tags
    for tag, series in events.items():
        assert [s for s, _ in series] == [0, 4, 8], tag
        for step, buckets in series:
            counts = dict(health.histogram_history[tag])[step]
            np.testing.assert_array_equal(buckets, _histogram.spans(counts))
            assert buckets.shape[1] == 3 and np.all(np.isfinite(buckets))
    # The scalars are still scalars: `report` reads no histogram as one.
    from keras_fanin_logs._report import report

    run = report(tmp_path).runs[TRAIN]
    assert not any(t.partition("/")[0] in SIGNALS for t in run.history)
    assert run.global_grad_norm == pytest.approx(
        health.history["global_grad_norm"][-1][1]
    )
    if BACKEND != "tensorflow":
        return  # one server is enough: the files are the same
    with tensorboard_server(tmp_path, lambda tags: TRAIN in tags) as root:
        served = get_json(f"{root}/data/plugin/histograms/tags")
    assert set(served[TRAIN]) == tags


@pytest.mark.parametrize(
    "every_n, histograms, steps, rows, hists",
    [
        # Histograms at 0 and 8; flushes at 4 rows (steps 0-3: one
        # histogram), 8 rows (4-7: none, no histogram read), the epoch's
        # end (8-9); none at the end of training (nothing new).
        (1, 8, 10, 3, 2),
        # Logged 0, 2, ..., 10, histograms at 0, 4, 8: flushes at step 7
        # and at the epoch's end, each with a histogram.
        (2, 2, 12, 2, 2),
    ],
)
def test_histograms_are_read_only_at_flushes(
    tmp_path, data, monkeypatch, every_n, histograms, steps, rows, hists
):
    monkeypatch.setattr(_callback, "FLUSH_ROWS", 4)
    reads = {"rows": 0, "histograms": 0}
    flush = _callback.GradientHealth._flush

    def counted(self, **kwargs):
        hook = self._hook
        if "read" not in vars(hook):
            for name, key in (("read", "rows"), ("read_histograms", "histograms")):
                method = getattr(hook, name)

                def wrapped(method=method, key=key):
                    reads[key] += 1
                    return method()

                setattr(hook, name, wrapped)
        return flush(self, **kwargs)

    monkeypatch.setattr(_callback.GradientHealth, "_flush", counted)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(steps * BATCH, FEATURES)).astype("float32")
    y = (x[:, :1] > 0).astype("float32")
    model = mlp()
    model.compile(keras.optimizers.SGD(0.1), "binary_crossentropy")
    health = GradientHealth(tmp_path, every_n_steps=every_n, histograms=histograms)
    fit(model, (x, y), health)
    assert reads == {"rows": rows, "histograms": hists}, reads
    period = every_n * histograms
    expected = list(range(0, steps, period))
    assert [s for s, _ in health.histogram_history["grad_hist/h1"]] == expected


def test_bad_histograms_argument(tmp_path):
    for bad in (0, -1, 2.0, True, "4"):
        with pytest.raises(
            ValueError,
            match=r"Argument `histograms` must be None or a positive integer\. "
            rf"Received: histograms={bad!r}",
        ):
            GradientHealth(tmp_path, histograms=bad)
    with pytest.raises(ValueError, match="every_n_steps=None"):
        GradientHealth(tmp_path, (np.zeros((2, 1)), np.zeros((2, 1))),
                       every_n_steps=None, histograms=4)  # fmt: skip
    assert GradientHealth(tmp_path, histograms=4).histograms == 4
    assert GradientHealth(tmp_path).histograms is None


@pytest.mark.slow
def test_training_is_unchanged_by_histograms():
    script = DETERMINISM.replace("every_n_steps=1,", "every_n_steps=1, histograms=1,")
    assert script != DETERMINISM
    out = run_python(script, env={"KERAS_BACKEND": BACKEND})
    assert json.loads(out.strip().splitlines()[-1]) is True


def test_no_histogram_buffer_without_histograms(tmp_path, data):
    model = mlp()
    model.compile(keras.optimizers.SGD(0.1), "binary_crossentropy")
    health = GradientHealth(tmp_path, every_n_steps=1)
    fit(model, data, health)
    assert health._hook.modes == (0, 1) and not health.histogram_history
    assert not hasattr(health._hook, "hist_rows") or health._hook.hist_rows is None
    assert not read_histograms(tmp_path)


def test_steps_per_execution_gives_the_same_histograms(tmp_path, data):
    if BACKEND == "torch":
        pytest.skip("Keras has no steps_per_execution on torch")
    runs = {}
    for spe in (1, 4):  # 6 steps: executions of 4 and 2
        model = mlp()
        model.compile(keras.optimizers.SGD(0.1), "binary_crossentropy",
                      steps_per_execution=spe)  # fmt: skip
        health = GradientHealth(tmp_path / str(spe), every_n_steps=1, histograms=2)
        fit(model, data, health)
        runs[spe] = health.histogram_history
    assert set(runs[1]) == set(runs[4])
    for tag, series in runs[1].items():
        assert [s for s, _ in series] == [0, 2, 4], tag
        for (_, one), (_, four) in zip(series, runs[4][tag], strict=True):
            np.testing.assert_array_equal(one, four, tag)
