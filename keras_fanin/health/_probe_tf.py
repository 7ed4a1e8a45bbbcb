"""The optional fixed probe batch, measured by one compiled TensorFlow function.

The probe goes through `model(x, training=...)` inside a `tf.function` and a
`keras.StatelessScope` (so a training-mode probe changes no BatchNorm
statistic, seed or other state); while it traces, each unit's `call` is
wrapped so that its output is captured in the same graph. The loss gradient
and every reduction are computed there too, and the function returns ONE
float32 vector laid out as a row of the real step's buffer (`Layout`) plus the
loss: one device -> host transfer per measurement, whatever the depth.
"""

import keras
import numpy as np
import tensorflow as tf

from keras_fanin.health import _stats
from keras_fanin.health._layout import Layout
from keras_fanin.health._probe_data import ProbeBase
from keras_fanin.health._units import Capture, find_units, first_float, weight_slots


def build_probe_function(model, units, layout, saturation_eps, training,
                         with_loss=True):  # fmt: skip
    """`fn(x, y, sample_weight)` -> one float32 vector: a buffer row + the loss.

    With `training=True` the forward pass runs in training mode (BatchNorm
    normalises with the probe's own batch statistics, as in the training step)
    inside a `keras.StatelessScope`, so that no state changes.
    """
    written = set()

    def stats(x, y, sample_weight):
        values = {}
        with (
            Capture(units) as capture,
            tf.GradientTape() as tape,
            keras.StatelessScope(),
        ):
            y_pred = model(x, training=training)
            if with_loss:
                loss = model.compute_loss(
                    x=x, y=y, y_pred=y_pred, sample_weight=sample_weight,
                    training=training,
                )  # fmt: skip
                # Keras divides each loss by the replica count under a
                # tf.distribute strategy; undo it, as Keras does for its logs,
                # so the numbers equal a single-device run on the whole batch.
                replicas = tf.distribute.get_strategy().num_replicas_in_sync
                loss = loss * tf.cast(replicas, loss.dtype)
            else:
                loss = tf.constant(np.nan, tf.float32)
        weights = model.trainable_weights
        grads = tape.gradient(loss, weights) if weights and with_loss else []
        slots = weight_slots(units, weights)
        for unit, unit_slots in zip(units, slots, strict=True):
            if unit_slots and with_loss:
                unit_grads = [grads[i] for i in unit_slots if grads[i] is not None]
                col = layout.column
                values[col(unit.index, "grad_norm")] = tf.sqrt(
                    _stats.sum_of_squares(unit_grads)
                )
                values[col(unit.index, "grad_bad")] = _stats.nonfinite_code(unit_grads)
                values[col(unit.index, "weight_bad")] = _stats.nonfinite_code(
                    [tf.convert_to_tensor(weights[i]) for i in unit_slots]
                )
            out = first_float(capture.outputs.get(unit.index))
            if out is None:
                continue
            for signal, value in _stats.output_stats(
                unit.layer, out, unit.activation, saturation_eps
            ).items():
                values[layout.column(unit.index, signal)] = value
        written.clear()
        written.update(values)
        row = [tf.constant(np.nan, tf.float32)] * layout.width
        for col, value in values.items():
            row[col] = tf.reshape(tf.cast(value, tf.float32), [])
        return tf.stack([*row, tf.cast(loss, tf.float32)])

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

    return tf.function(run, autograph=False, reduce_retracing=True), written


class Probe(ProbeBase):
    """A fixed probe batch and the compiled function that measures it."""

    def __init__(self, batch, saturation_eps, training):
        super().__init__(batch, saturation_eps, training)
        # Converted once: the same tensors at every measurement.
        self.batch = tf.nest.map_structure(
            lambda a: None if a is None else tf.convert_to_tensor(a), batch
        )

    def prepare(self, model):
        return super().prepare(model, self.batch[0])

    def _build(self, model):
        units = find_units(model)
        layout = Layout(units)
        fn, written = build_probe_function(
            model, units, layout, self.eps, self.training, self.has_loss
        )
        fn(*self.batch)  # traces now
        layout.written = written
        self.units, self.layout, self._fn = units, layout, fn

    def _vector(self):
        return self._fn(*self.batch).numpy()
