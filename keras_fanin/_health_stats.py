"""Which layers GradientHealth measures, and the one compiled function that does it.

Data flow: the probe batch goes through `model(x, training=...)` inside a
`tf.function` and a `keras.StatelessScope` (so a training-mode probe updates no
BatchNorm statistics, seed or other state); while it traces, each measured
layer's `call` is wrapped so that its output tensor is captured in the same
graph. The loss gradient and every per-layer reduction are computed there too,
and the function returns ONE float32 vector (a few scalars per layer), so that
a logging event costs one device -> host transfer whatever the number of
layers. `StatsLayout` says which slot of that vector is which TensorBoard tag.
"""

import dataclasses

import keras
import tensorflow as tf

SIGNALS = (
    "grad_norm",
    "activation_std",
    "dead_relu_fraction",
    "saturated_sigmoid_fraction",
    "saturated_tanh_fraction",
)
RELUS = frozenset({"relu", "relu6"})
# A leaky unit whose input is negative for every example still passes
# `negative_slope` times the gradient, so it can come back: it is counted with
# the same rule as a dead ReLU, for comparison, but never called dead.
LEAKY_RELUS = frozenset({"leaky_relu"})


def activation_name(layer):
    """The name of the activation a layer's output goes through, or None."""
    if isinstance(layer, keras.layers.ReLU):
        # A ReLU layer with a negative slope is leaky.
        return "relu" if not layer.negative_slope else "leaky_relu"
    if isinstance(layer, keras.layers.LeakyReLU):
        return "leaky_relu"
    if isinstance(layer, keras.layers.RNN):
        return None  # an RNN's output is a gated mix, not its activation
    fn = getattr(layer, "activation", None)
    return getattr(fn, "__name__", None) if callable(fn) else None


@dataclasses.dataclass
class Unit:
    """A measured layer: a leaf of the model's layer tree."""

    layer: keras.Layer
    name: str  # one TensorBoard path component
    depth: int  # position in the model's layer order
    weight_slots: list  # indices into model.trainable_weights

    @property
    def activation(self):
        return activation_name(self.layer)


def find_units(model):
    """Leaf layers of `model` in order, recursing into nested models."""
    units, seen, names = [], set(), {}

    def visit(container, prefix):
        for layer in container.layers:
            if id(layer) in seen or isinstance(layer, keras.layers.InputLayer):
                continue
            seen.add(id(layer))
            if isinstance(layer, keras.Model):
                visit(layer, f"{prefix}{layer.name}.")
                continue
            # Names are unique within a model; a clash across nested models is
            # resolved with the enclosing model's name, dot-joined to stay one
            # path component.
            name = layer.name if layer.name not in names else prefix + layer.name
            names[name] = layer
            units.append(Unit(layer, name, len(units), []))

    visit(model, "")
    slot = {id(v): i for i, v in enumerate(model.trainable_weights)}
    for unit in units:
        unit.weight_slots = [
            slot[id(v)] for v in unit.layer.trainable_weights if id(v) in slot
        ]
    return units


@dataclasses.dataclass
class StatsLayout:
    """Maps the compiled function's output vector to tags, filled while tracing."""

    tags: list = dataclasses.field(default_factory=list)  # (signal, unit) per slot
    # unit name -> slot of a non-finite code (see `nonfinite_code`), per kind.
    weight_bad: dict = dataclasses.field(default_factory=dict)
    grad_bad: dict = dataclasses.field(default_factory=dict)
    act_bad: dict = dataclasses.field(default_factory=dict)
    loss_slot: int = 0


def _unit_axis(layer, rank):
    if rank > 2 and getattr(layer, "data_format", None) == "channels_first":
        return 1
    return rank - 1


def nonfinite_code(tensors):
    """0 if every value is finite; + 1 if any is inf; + 2 if any is NaN.

    NaN and inf are told apart because they mean different things to the user
    (inf: overflow, e.g. exploding activations; NaN: inf - inf, 0 * inf, or a
    NaN weight), and because ReLU maps NaN to 0 on some builds, so a NaN is
    only seen where it is, not downstream.
    """
    tensors = [tf.convert_to_tensor(t) for t in tensors if t is not None]
    codes = [
        2.0 * tf.cast(tf.reduce_any(tf.math.is_nan(t)), tf.float32)
        + tf.cast(tf.reduce_any(tf.math.is_inf(t)), tf.float32)
        for t in tensors
        if t.dtype.is_floating
    ]
    if not codes:
        return tf.constant(0.0)
    # max over tensors of (2 nan + inf) loses "inf in one, NaN in another";
    # combine the two bits separately.
    stacked = tf.stack(codes)
    has_nan = tf.reduce_any(stacked >= 2.0)
    has_inf = tf.reduce_any(tf.math.floormod(stacked, 2.0) > 0.5)
    return 2.0 * tf.cast(has_nan, tf.float32) + tf.cast(has_inf, tf.float32)


def describe_nonfinite(code):
    """'NaN', 'inf' or 'NaN and inf' for a code of `nonfinite_code`."""
    code = int(code)
    return {1: "inf", 2: "NaN", 3: "NaN and inf"}.get(code, "")


def _first_float(output):
    for tensor in tf.nest.flatten(output):
        if tf.is_tensor(tensor) and tensor.dtype.is_floating:
            return tf.cast(tensor, tf.float32)
    return None


class _Capture:
    """Wraps each unit's `call` for the duration of one trace."""

    def __init__(self, units):
        self.units, self.outputs, self._saved = units, {}, {}

    def __enter__(self):
        for unit in self.units:
            layer, key = unit.layer, unit.name
            self._saved[key] = vars(layer).get("call")
            original = layer.call

            def call(*args, _original=original, _key=key, **kwargs):
                output = _original(*args, **kwargs)
                # A shared layer is measured on its first call.
                self.outputs.setdefault(_key, output)
                return output

            object.__setattr__(layer, "call", call)
        return self

    def __exit__(self, *exc):
        for unit in self.units:
            saved = self._saved.get(unit.name)
            if saved is None:
                object.__delattr__(unit.layer, "call")
            else:
                object.__setattr__(unit.layer, "call", saved)


def build_stats_function(model, units, saturation_eps, training):
    """Returns `(fn, layout)`: `fn(x, y, sample_weight)` -> one float32 vector.

    With `training=True` the forward pass runs in training mode (BatchNorm
    normalises with the probe's own batch statistics, as in the training step)
    inside a `keras.StatelessScope`, so that no state changes: the moving
    statistics, seed generators and any other variable assigned during the
    call are left as they were.
    """
    layout = StatsLayout()
    eps = float(saturation_eps)

    def stats(x, y, sample_weight):
        values = []
        layout.tags.clear()

        def put(tag, value):
            layout.tags.append(tag)
            values.append(tf.reshape(tf.cast(value, tf.float32), []))
            return len(values) - 1

        with (
            _Capture(units) as capture,
            tf.GradientTape() as tape,
            keras.StatelessScope(),
        ):
            y_pred = model(x, training=training)
            loss = model.compute_loss(
                x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training
            )
            # Keras divides each loss by the replica count under a
            # tf.distribute strategy; undo it, as Keras does for its logs, so
            # the numbers equal a single-device run on the whole probe batch.
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            loss = loss * tf.cast(replicas, loss.dtype)
        weights = model.trainable_weights
        grads = tape.gradient(loss, weights) if weights else []
        layout.loss_slot = put(("loss", None), loss)
        for unit in units:
            unit_grads = [grads[i] for i in unit.weight_slots if grads[i] is not None]
            if unit.weight_slots:
                squares = [
                    tf.reduce_sum(tf.square(tf.cast(g, tf.float32))) for g in unit_grads
                ]
                put(
                    ("grad_norm", unit.name),
                    tf.sqrt(tf.add_n(squares)) if squares else 0.0,
                )
                layout.grad_bad[unit.name] = put(
                    ("grad_bad", unit.name), nonfinite_code(unit_grads)
                )
                layout.weight_bad[unit.name] = put(
                    ("weight_bad", unit.name),
                    nonfinite_code([weights[i] for i in unit.weight_slots]),
                )
            out = _first_float(capture.outputs.get(unit.name))
            if out is None:
                continue
            put(("activation_std", unit.name), tf.math.reduce_std(out))
            layout.act_bad[unit.name] = put(
                ("activation_bad", unit.name), nonfinite_code([out])
            )
            activation = unit.activation
            if activation in RELUS | LEAKY_RELUS and out.shape.rank:
                axis = _unit_axis(unit.layer, out.shape.rank)
                others = [a for a in range(out.shape.rank) if a != axis]
                alive = tf.reduce_any(out > 0, axis=others) if others else out > 0
                put(
                    ("dead_relu_fraction", unit.name),
                    1.0 - tf.reduce_mean(tf.cast(alive, tf.float32)),
                )
            elif activation == "sigmoid":
                saturated = (out < eps) | (out > 1.0 - eps)
                put(
                    ("saturated_sigmoid_fraction", unit.name),
                    tf.reduce_mean(tf.cast(saturated, tf.float32)),
                )
            elif activation == "tanh":
                saturated = tf.abs(out) > 1.0 - eps
                put(
                    ("saturated_tanh_fraction", unit.name),
                    tf.reduce_mean(tf.cast(saturated, tf.float32)),
                )
        return tf.stack(values)

    def run(x, y, sample_weight):
        # Inside a strategy's scope (fit() called under `strategy.scope()`),
        # distributed variables can only be read in a replica context. Every
        # replica then measures the whole probe batch; the first one's numbers
        # are returned, equal to a single-device run.
        if tf.distribute.has_strategy() and tf.distribute.in_cross_replica_context():
            strategy = tf.distribute.get_strategy()
            per_replica = strategy.run(stats, args=(x, y, sample_weight))
            return strategy.experimental_local_results(per_replica)[0]
        return stats(x, y, sample_weight)

    return tf.function(run, autograph=False, reduce_retracing=True), layout
