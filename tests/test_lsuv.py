import keras
import numpy as np
import pytest

from keras_fanin._lsuv import LSUVRecord, LSUVWarning, lsuv
from keras_fanin._orthogonal import Orthogonal

TOL = 0.1


def to_numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x), dtype=np.float64)


@pytest.fixture(scope="module")
def x():
    # Off-centre and wide, so that the first layer has something to correct.
    rng = np.random.default_rng(0)
    return (0.5 + 3.0 * rng.standard_normal((64, 6, 6, 3))).astype("float32")


def einsum():
    return keras.layers.EinsumDense(
        "ab,bc->ac", output_shape=16, bias_axes="c", activation="relu"
    )


def functional():
    inner = keras.Sequential([keras.layers.Dense(24, activation="tanh"), einsum()])
    inputs = keras.Input((6, 6, 3))
    conv = keras.layers.Conv2D(8, 3, activation="relu")
    flat = keras.layers.Flatten()
    head = keras.layers.Dense(5)
    model = keras.Model(inputs, head(inner(flat(conv(inputs)))))
    return model, [conv, flat, *inner.layers, head]


def sequential():
    layers = [
        keras.layers.Conv2D(8, 3, activation="relu"),
        keras.layers.Flatten(),
        keras.layers.Dense(16, activation="relu"),
        einsum(),
        keras.layers.Dense(5),
    ]
    return keras.Sequential([keras.Input((6, 6, 3)), *layers]), layers


class Block(keras.layers.Layer):
    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(units, activation="relu")

    def call(self, inputs):
        return self.dense(inputs)


class Net(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.conv = keras.layers.Conv2D(8, 3, activation="relu")
        self.flat = keras.layers.Flatten()
        self.blocks = [Block(16), Block(16)]
        self.mix = einsum()
        self.head = keras.layers.Dense(5)

    def call(self, inputs):
        h = self.flat(self.conv(inputs))
        for block in self.blocks:
            h = block(h)
        return self.head(self.mix(h))


def subclassed():
    net = Net()  # unbuilt: lsuv builds it
    return net, [net.conv, net.flat, *(b.dense for b in net.blocks), net.mix, net.head]


def preactivation_variances(chain, x):
    """Each kernel layer's output variance before its activation, measured apart.

    Runs the chain by hand and applies to each kernel layer's input a linear
    copy of the layer (same config, same weights): nothing of lsuv's own
    machinery is used.
    """
    h, variances = x, {}
    for layer in chain:
        if hasattr(layer, "kernel"):
            config = {**layer.get_config(), "activation": "linear"}
            copy = type(layer).from_config(config)
            copy(h)
            copy.set_weights([to_numpy(w) for w in layer.weights])
            variances[layer.name] = float(np.var(to_numpy(copy(h))))
        h = layer(h)
    return variances


def kernels(chain):
    return [to_numpy(layer.kernel) for layer in chain if hasattr(layer, "kernel")]


def test_every_kernel_layer_output_has_unit_variance_in_forward_order(x):
    for build in (sequential, functional, subclassed):
        model, chain = build()
        report = lsuv(model, x, tol=TOL, max_iter=10, seed=1)
        names = [layer.name for layer in chain if hasattr(layer, "kernel")]
        assert [r.layer for r in report] == names, build.__name__
        assert all(isinstance(r, LSUVRecord) and r.converged for r in report)
        measured = preactivation_variances(chain, x)
        assert set(measured) == set(names)
        for record in report:
            assert abs(measured[record.layer] - 1.0) < TOL, (build.__name__, record)
            assert record.variance_after == pytest.approx(measured[record.layer], 1e-4)
        # The first layer sees the wide input: its scale is far from 1.
        assert report[0].variance_before > 4.0 and report[0].iterations >= 1


def test_found_scales_are_baked_into_the_config_and_survive_a_keras_round_trip(
    x, tmp_path
):
    model, chain = functional()
    report = lsuv(model, x, tol=TOL, seed=2)
    by_name = {layer.name: layer for layer in chain}
    for record in report:
        config = by_name[record.layer].get_config()["kernel_initializer"]
        assert config["registered_name"] == "keras_fanin>Orthogonal"
        assert config["config"] == {
            "gain": record.scale,
            "seed": record.seed,
            "gain_source": None,
        }
        # The kernel is exactly what that initializer draws.
        layer = by_name[record.layer]
        drawn = Orthogonal(gain=record.scale, seed=record.seed)(layer.kernel.shape)
        np.testing.assert_array_equal(to_numpy(drawn), to_numpy(layer.kernel))

    path = tmp_path / "lsuv.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    for source in (model, loaded):
        rebuilt = keras.Model.from_config(source.get_config())
        inner = rebuilt.layers[3]
        rebuilt_chain = [*rebuilt.layers[1:3], *inner.layers, rebuilt.layers[4]]
        for ours, theirs in zip(kernels(chain), kernels(rebuilt_chain), strict=True):
            np.testing.assert_array_equal(ours, theirs)
        for name, variance in preactivation_variances(rebuilt_chain, x).items():
            assert abs(variance - 1.0) < TOL, name


def test_subclassed_layers_record_their_scale_in_their_own_config(x):
    model, chain = subclassed()
    report = lsuv(model, x, seed=3)
    assert len(report) == 5
    dense = model.blocks[1].dense
    record = next(r for r in report if r.layer == dense.name)
    assert dense.get_config()["kernel_initializer"]["config"]["gain"] == record.scale
    assert not any("call" in vars(layer) for layer in chain + [model])


def test_mixed_precision_kernels_are_set_in_their_own_dtype(x):
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model, chain = sequential()
        report = lsuv(model, x, seed=7)
        rebuilt = keras.Sequential.from_config(model.get_config())
    finally:
        keras.config.set_dtype_policy("float32")
    assert all(r.converged and r.iterations >= 1 for r in report[:1])
    assert all(abs(r.variance_after - 1.0) < TOL for r in report)
    assert all(layer.kernel.dtype == "float32" for layer in rebuilt.layers[::2])
    rebuilt_chain = rebuilt.layers
    for ours, theirs in zip(kernels(chain), kernels(rebuilt_chain), strict=True):
        np.testing.assert_array_equal(ours, theirs)


class Count(keras.layers.Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.calls = 0

    def call(self, inputs):
        self.calls += 1
        return inputs


class CountingDense(keras.layers.Dense):
    calls = 0

    def call(self, inputs):
        CountingDense.calls += 1
        return super().call(inputs)


def test_each_layer_input_is_computed_once(x):
    counters = [Count(), Count(), Count()]
    counting = CountingDense(32, activation="relu")
    model = keras.Sequential(
        [
            keras.Input((6, 6, 3)),
            keras.layers.Flatten(),
            counters[0],
            keras.layers.Dense(32, activation="relu"),
            counters[1],
            counting,
            counters[2],
            keras.layers.Dense(4),
        ]
    )
    for counter in counters:  # building the model traced each call once
        counter.calls = 0
    CountingDense.calls = 0
    report = lsuv(model, x, seed=4)
    # One forward pass: every layer between the kernel layers ran once...
    assert [c.calls for c in counters] == [1, 1, 1]
    # ...and a kernel layer ran once per variance it measured, plus once for
    # its output where lsuv cannot reuse the last one (a subclass' own call).
    record = next(r for r in report if r.layer == counting.name)
    assert CountingDense.calls == record.iterations + 2


def test_seed_makes_the_run_reproducible(x):
    first_model, first_chain = sequential()
    first = lsuv(first_model, x, seed=5)
    keras.backend.clear_session()
    second_model, second_chain = sequential()
    second = lsuv(second_model, x, seed=5)
    assert [r.seed for r in first] == [r.seed for r in second]
    for a, b in zip(kernels(first_chain), kernels(second_chain), strict=True):
        np.testing.assert_array_equal(a, b)
    third_model, _ = sequential()
    assert [r.seed for r in lsuv(third_model, x, seed=6)] != [r.seed for r in first]


class Cubic(keras.layers.Layer):
    """A layer with a kernel whose output variance goes as the scale**6."""

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(input_shape[-1], 8), name="kernel")

    def call(self, inputs):
        return keras.ops.matmul(inputs, self.kernel) ** 3


def test_a_layer_that_cannot_converge_warns_and_says_so_in_the_report(x):
    model = keras.Sequential([keras.Input((6, 6, 3)), keras.layers.Flatten(), Cubic()])
    with pytest.warns(LSUVWarning, match=r"variance of layer 'cubic' to 1.*max_iter=3"):
        (record,) = lsuv(model, x, max_iter=3, seed=0)
    assert not record.converged and record.iterations == 3
    assert abs(record.variance_after - 1.0) >= TOL

    dead = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    with pytest.warns(
        LSUVWarning, match=r"variance of layer 'dense.*' to 1.*: 0 after 0"
    ):
        (record,) = lsuv(dead, np.zeros((8, 4), "float32"))
    assert record.variance_after == 0.0 and not record.converged


def test_recurrent_kernels_are_left_alone_with_a_warning():
    model = keras.Sequential(
        [keras.Input((5, 3)), keras.layers.SimpleRNN(4), keras.layers.Dense(2)]
    )
    before = to_numpy(model.layers[0].cell.kernel)
    x = np.random.default_rng(1).standard_normal((16, 5, 3)).astype("float32")
    with pytest.warns(LSUVWarning, match=r"leaves layer .*SimpleRNNCell"):
        report = lsuv(model, x)
    assert [r.layer for r in report] == [model.layers[1].name]
    np.testing.assert_array_equal(before, to_numpy(model.layers[0].cell.kernel))


class Boom(keras.layers.Layer):
    """Fails on data; its shape is declared so that building the model works."""

    def call(self, inputs):
        raise RuntimeError("boom")

    def compute_output_shape(self, input_shape):
        return input_shape


def snapshot(model):
    return [to_numpy(w) for w in model.weights], [
        keras.saving.serialize_keras_object(getattr(layer, "kernel_initializer", None))
        for layer in model.layers
    ]


def assert_unchanged(model, before):
    weights, initializers = snapshot(model)
    for a, b in zip(before[0], weights, strict=True):
        np.testing.assert_array_equal(a, b)
    assert initializers == before[1]
    assert not any("call" in vars(layer) for layer in model.layers)


BAD_CALLS = [
    (lambda m, x: lsuv("model", x), TypeError, r"Argument `model` must be a Keras"),
    (lambda m, x: lsuv(m, x[:0]), ValueError, r"Argument `x` must be a non-empty"),
    (lambda m, x: lsuv(m, np.full_like(x, np.nan)), ValueError, r"finite.*x=<"),
    (lambda m, x: lsuv(m, x.astype(str)), TypeError, r"Argument `x` must hold numbers"),
    (lambda m, x: lsuv(m, []), ValueError, r"Argument `x` must hold at least one"),
    (lambda m, x: lsuv(m, x, tol=0), ValueError, r"Argument `tol`.*tol=0"),
    (lambda m, x: lsuv(m, x, tol=1.5), ValueError, r"in \(0, 1\).*tol=1.5"),
    (lambda m, x: lsuv(m, x, tol="0.1"), TypeError, r"tol='0.1'"),
    (lambda m, x: lsuv(m, x, max_iter=0), ValueError, r"`max_iter`.*max_iter=0"),
    (lambda m, x: lsuv(m, x, max_iter=2.5), TypeError, r"max_iter=2.5"),
    (lambda m, x: lsuv(m, x, seed="1"), TypeError, r"Argument `seed`.*seed='1'"),
]


def test_bad_input_is_refused_and_changes_nothing(x):
    model, _ = functional()
    before = snapshot(model)
    for call, error, message in BAD_CALLS:
        with pytest.raises(error, match=message):
            call(model, x)
        assert_unchanged(model, before)

    no_kernels = keras.Sequential([keras.Input((4,)), keras.layers.Activation("relu")])
    with pytest.raises(ValueError, match=r"Argument `model` has no layer with a"):
        lsuv(no_kernels, np.ones((8, 4), "float32"))


def test_a_failure_mid_pass_restores_every_kernel(x):
    # The first Dense is rescaled before Boom raises: it must be put back.
    model = keras.Sequential(
        [
            keras.Input((6, 6, 3)),
            keras.layers.Flatten(),
            keras.layers.Dense(8),
            Boom(),
            keras.layers.Dense(4),
        ]
    )
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="boom"):
        lsuv(model, x)
    assert_unchanged(model, before)
