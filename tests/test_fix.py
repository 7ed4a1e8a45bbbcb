"""`keras_fanin.fix`: re-draws what `check` flags with what it advises, writes
the initializer into the config, and checks again."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from scipy import stats

import keras_fanin
from keras_fanin._numpy import to_numpy

DEPTH, WIDTH = 30, 128


def relu_net(init="glorot_uniform", depth=DEPTH, width=WIDTH):
    return keras.Sequential(
        [keras.Input((64,))]
        + [
            keras.layers.Dense(width, activation="relu", kernel_initializer=init)
            for _ in range(depth)
        ]
        + [keras.layers.Dense(10, activation="softmax")]
    )


def kernels(model):
    return [to_numpy(w) for w in model.weights]


def test_a_glorot_relu_net_is_fixed_with_he_and_keeps_it_through_keras_file(
    tmp_path,
):
    model = relu_net()
    assert not keras_fanin.check(model).ok
    report = keras_fanin.fix(model)
    assert report.ok, report.problems
    hidden = model.layers[:DEPTH]
    assert [layer for layer, _, _ in report.fixed] == [x.name for x in hidden]
    assert {(a, i) for _, a, i in report.fixed} == {
        ("kernel_initializer", "keras_fanin.He()")
    }
    assert "Fixed: 30 kernels drawn again" in str(report)
    assert report.to_dict()["fixed"][0] == [hidden[0].name, "kernel_initializer",
                                            "keras_fanin.He()"]  # fmt: skip
    # The kernels follow He's law: truncated normal, std sqrt(2 / fan_in).
    drawn = np.concatenate([to_numpy(x.kernel).ravel() for x in hidden[1:]])
    assert np.std(drawn) == pytest.approx(np.sqrt(2 / WIDTH), rel=0.02)
    # The config holds it, so a saved model draws the same law again.
    path = tmp_path / "fixed.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    for layer in loaded.layers[:DEPTH]:
        init = layer.kernel_initializer
        assert isinstance(init, keras_fanin.He)
        assert init.get_config() == keras_fanin.He().get_config()
    config = loaded.layers[1].kernel_initializer.get_config()
    redrawn = to_numpy(keras_fanin.He.from_config(config)((WIDTH, WIDTH)))
    assert stats.ks_2samp(redrawn.ravel(), drawn).pvalue > 1e-3
    # The output layer was not flagged: untouched.
    assert isinstance(model.layers[-1].kernel_initializer,
                      keras.initializers.GlorotUniform)  # fmt: skip


def test_leaves_alone_what_check_does_not_flag():
    inputs = keras.Input((16,), dtype="int32")
    x = keras.layers.Embedding(50, 32, embeddings_initializer="uniform")(inputs)
    x = keras.layers.Flatten()(x)
    for _ in range(4):
        x = keras.layers.Dense(64, kernel_initializer="glorot_uniform")(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU()(x)
    model = keras.Model(inputs, keras.layers.Dense(3)(x))
    x_batch = np.random.default_rng(0).integers(0, 50, size=(32, 16))
    assert keras_fanin.check(model, x_batch).ok  # normalised: nothing to fix
    before = kernels(model)
    report = keras_fanin.fix(model, x_batch)
    assert report.ok and report.fixed == []
    for a, b in zip(before, kernels(model), strict=True):
        np.testing.assert_array_equal(a, b)


def test_only_the_flagged_layers_are_drawn_again():
    # 12 tanh layers at std 0.05 shrink the signal 2^-22; a linear head and a
    # well-drawn first layer are not flagged and keep their weights bit for bit.
    small = keras.initializers.RandomNormal(stddev=0.05, seed=1)
    first_init = keras_fanin.LeCun(gain="tanh", seed=0)
    model = keras.Sequential(
        [keras.Input((32,)), keras.layers.Dense(32, activation="tanh",
                                                kernel_initializer=first_init)]
        + [keras.layers.Dense(32, activation="tanh", kernel_initializer=small)
           for _ in range(12)]
        + [keras.layers.Dense(4)]
    )  # fmt: skip
    first, head = kernels(model)[:2], kernels(model)[-2:]
    assert not keras_fanin.check(model).ok
    report = keras_fanin.fix(model)
    assert report.ok, report.problems
    names = {layer for layer, _, _ in report.fixed}
    assert names == {layer.name for layer in model.layers[1:13]}
    assert {i for _, _, i in report.fixed} == {"keras_fanin.LeCun(gain='tanh')"}
    for a, b in zip(first + head, kernels(model)[:2] + kernels(model)[-2:],
                    strict=True):  # fmt: skip
        np.testing.assert_array_equal(a, b)


def test_a_depthwise_kernel_is_drawn_with_its_own_fan_axes(tmp_path):
    small = keras.initializers.RandomNormal(stddev=0.01, seed=0)
    model = keras.Sequential(
        [keras.Input((16, 16, 8))]
        + [keras.layers.DepthwiseConv2D(3, padding="same", activation="relu",
                                        depthwise_initializer=small)
           for _ in range(6)]
        + [keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2)]
    )  # fmt: skip
    report = keras_fanin.fix(model)
    assert report.ok, report.problems
    fixed = {(a, i) for _, a, i in report.fixed}
    assert fixed == {("depthwise_initializer",
                      "keras_fanin.He(input_axes=[0, 1], output_axes=[0, 1, 3])")}  # fmt: skip
    # Fan-in 9 (the receptive field), not 9 x 8 channels.
    kernel = to_numpy(model.layers[2].kernel)
    assert np.std(kernel) == pytest.approx(np.sqrt(2 / 9), rel=0.2)
    model.save(tmp_path / "dw.keras")
    loaded = keras.saving.load_model(tmp_path / "dw.keras")
    config = loaded.layers[2].depthwise_initializer.get_config()
    assert config["input_axes"] == [0, 1] and config["output_axes"] == [0, 1, 3]


def test_a_trained_model_is_refused_unless_forced():
    model = relu_net(depth=12)
    model.compile(keras.optimizers.SGD(0.01), "sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    model.fit(rng.normal(size=(32, 64)), rng.integers(0, 10, 32), epochs=1,
              batch_size=16, verbose=0)  # fmt: skip
    before = kernels(model)
    with pytest.raises(ValueError, match=r"has taken 2 step\(s\).*force=True"):
        keras_fanin.fix(model)
    for a, b in zip(before, kernels(model), strict=True):
        np.testing.assert_array_equal(a, b)  # refused before touching anything
    assert keras_fanin.fix(model, force=True).ok


@pytest.mark.parametrize("force", ["yes", 1, None])
def test_force_must_be_a_bool(force):
    with pytest.raises(TypeError, match="Argument `force` must be a bool"):
        keras_fanin.fix(relu_net(depth=2), force=force)


@pytest.mark.parametrize("seed", ["0", 1.5, True, {"seed": 1}])
def test_seed_must_be_an_int_or_a_seed_generator(seed):
    with pytest.raises(TypeError, match="Argument `seed` must be None, an int or"):
        keras_fanin.fix(relu_net(depth=2), seed=seed)


def test_seeds_make_the_draws_reproducible(tmp_path):
    a, b = relu_net(depth=12), relu_net(depth=12)
    keras_fanin.fix(a, seed=7)
    keras_fanin.fix(b, seed=7)
    for x, y in zip(a.layers[:12], b.layers[:12], strict=True):  # the fixed
        np.testing.assert_array_equal(to_numpy(x.kernel), to_numpy(y.kernel))
    # Each layer its own seed, kept in the config.
    seeds = [layer.kernel_initializer.get_config()["seed"] for layer in a.layers[:12]]
    assert seeds == list(range(7, 19))
    # A generator shared by every new initializer draws what one He
    # instance on that generator draws, layer after layer.
    c = relu_net(depth=12)
    keras_fanin.fix(c, seed=keras.random.SeedGenerator(3))
    he = keras_fanin.He(seed=keras.random.SeedGenerator(3))
    for layer in c.layers[:12]:
        expected = to_numpy(he(tuple(layer.kernel.shape)))
        np.testing.assert_allclose(to_numpy(layer.kernel), expected, rtol=1e-6)


def test_check_report_fix_uses_the_same_model_and_batch():
    model = relu_net(depth=12)
    x = np.random.default_rng(1).normal(size=(16, 64)).astype("float32")
    report = keras_fanin.check(model, x)
    assert report.model is model and report.x is x and not report.ok
    fixed = report.fix()
    assert fixed.ok and fixed.model is model and fixed.input_shapes == [[16, 64]]


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="the command line is the same on every backend: run once",
)
def test_command_line_fix_writes_the_fixed_model(tmp_path):
    source, out = tmp_path / "in.keras", tmp_path / "out.keras"
    relu_net(depth=12).save(source)

    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "keras_fanin", "fix", *map(str, args)],
            capture_output=True, text=True, timeout=120,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        )  # fmt: skip

    done = run(source, out)
    assert done.returncode == 0, done.stderr
    assert "Fixed: 12 kernels drawn again" in done.stdout
    loaded = keras.saving.load_model(out)
    assert keras_fanin.check(loaded).ok
    assert isinstance(loaded.layers[0].kernel_initializer, keras_fanin.He)
    bad = run(source, tmp_path / "out.h5")
    assert bad.returncode == 2
    # One line of its own (TensorFlow's start-up lines may come before it).
    assert [x for x in bad.stderr.splitlines() if "keras-fanin" in x] == [
        f"keras-fanin fix: error: OUT must be a .keras path. Received: "
        f"{str(tmp_path / 'out.h5')!r}"
    ]
    missing = run(tmp_path / "nope.keras", out)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
