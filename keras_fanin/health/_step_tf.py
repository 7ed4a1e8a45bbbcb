"""The real training step on TensorFlow: what the optimizer applies, and the
training forward pass, reduced on the device into a ring buffer.

Three instance attributes are wrapped while `fit()` runs, then restored
(`install` / `uninstall`); the train function is re-made after each, so a
model whose train function was traced before gets a fresh one, and a later
`fit()` without the callback runs Keras's own step again:

- `model.train_step`: marks which trace is a training trace, and after the
  step writes the step number and advances the callback's step counter;
- `optimizer.apply(grads, trainable_variables)`: sees the gradients the
  optimizer is handed, before clipping and, under `LossScaleOptimizer`,
  still scaled (they are unscaled here, in float32); reads the weights before
  and after the update for `update_ratio` and `weight_norm`;
- each unit's `call`: reduces the layer's output from the training forward
  pass (std, dead / saturated fraction, finiteness).

On a logged step (the counter is a multiple of `every_n_steps`) the numbers go
into row `(counter // every_n_steps) % capacity` of a `tf.Variable`; on other
steps a `tf.cond` skips all of it, so the step costs what Keras's costs. The
host reads the buffer once per flush (`read`). Under a multi-replica strategy
a `tf.cond` may not hold a synchronisation point, so there the gradients are
all-reduced (Keras's `apply` gets each replica's share, before the all-reduce)
and the weights copied on every step, and only the reductions are skipped.
"""

import numpy as np
import tensorflow as tf

from keras_fanin.health import _stats
from keras_fanin.health._hook import StepHook
from keras_fanin.health._units import first_float


def _local(variable_factory, strategy):
    # ON_READ with ONLY_FIRST_REPLICA: each replica keeps its own copy (no
    # synchronisation in the step); the host reads the first replica's.
    with strategy.scope():
        return variable_factory(
            trainable=False,
            synchronization=tf.VariableSynchronization.ON_READ,
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
        )


def _per_variable_sums(grads, after, before, scale):
    """`[variables, 4]`: |g|^2, |w_after|^2, |w_before|^2, |after - before|^2."""
    rows = []
    for g, a, b in zip(grads, after, before, strict=True):
        g = tf.cast(g, tf.float32) / scale
        a, b = tf.cast(a, tf.float32), tf.cast(b, tf.float32)
        rows.append(
            tf.stack([tf.reduce_sum(g * g), tf.reduce_sum(a * a),
                      tf.reduce_sum(b * b), tf.reduce_sum(tf.square(a - b))])
        )  # fmt: skip
    return tf.stack(rows)


class TFStepHook(StepHook):
    """Installs the wrappers on one compiled model and owns its buffer."""

    def __init__(self, model, layout, every_n_steps, capacity, saturation_eps,
                 activations, start_step):  # fmt: skip
        super().__init__(
            model, layout, every_n_steps, capacity, saturation_eps, activations
        )
        strategy = model.distribute_strategy
        width = layout.width
        self.counter = _local(
            lambda **kw: tf.Variable(np.int64(start_step), **kw), strategy
        )
        self.steps = _local(
            lambda **kw: tf.Variable(np.full([capacity], -1, np.int64), **kw),
            strategy,
        )
        self.rows = _local(
            lambda **kw: tf.Variable(
                np.full([capacity, width], np.nan, np.float32), **kw
            ),
            strategy,
        )
        self.nonfinite_seen = _local(lambda **kw: tf.Variable(False, **kw), strategy)
        self._distributed = strategy.num_replicas_in_sync > 1
        self._train_graph = None
        self._pending, self._outputs = {}, {}
        self._bad_columns = {
            layout.column(unit.index, signal)
            for unit in layout.units
            for signal in ("activation_bad", "weight_bad", "grad_bad")
        }

    # -- install / uninstall -------------------------------------------------

    def install(self):
        self._set(
            self.model, "train_step", self._wrap_train_step(self.model.train_step)
        )
        self._set(self.optimizer, "apply", self._wrap_apply(self.optimizer.apply))
        if self.activations:
            for unit in self.layout.units:
                self._set(unit.layer, "call", self._wrap_call(unit, unit.layer.call))
        self.model.make_train_function(force=True)

    # -- in the step -------------------------------------------------------------

    def _log_now(self):
        return tf.equal(self.counter.read_value() % self.every_n, 0)

    def _row(self):
        return (self.counter.read_value() // self.every_n) % self.capacity

    def _when_logged(self, compute, keys):
        """`compute()` (a dict of scalars) on a logged step, NaNs otherwise."""

        def run():
            values = compute()
            return {k: tf.reshape(tf.cast(values[k], tf.float32), []) for k in keys}

        def skip():
            return {k: tf.constant(np.nan, tf.float32) for k in keys}

        return tf.cond(self._log_now(), run, skip)

    def _write_row(self):
        """On a logged step: reduces the stashed layer outputs, then writes the
        step number and every value of the step into its row, in one scatter."""
        values = dict(self._pending)
        for unit, out in self._outputs.values():
            stats = _stats.output_stats(unit.layer, out, unit.activation, self.eps)
            for signal, value in stats.items():
                values[self.layout.column(unit.index, signal)] = value
        self.layout.written.update(values)
        row, step = self._row(), self.counter.read_value()
        cols = sorted(values)
        indices = tf.stack(
            [tf.fill([len(cols)], row), tf.constant(cols, tf.int64)], axis=1
        )
        updates = tf.stack(
            [tf.reshape(tf.cast(values[c], tf.float32), []) for c in cols]
        )
        if self._distributed:
            # Sync-on-read variables take whole assignments only; once per
            # logged step, the buffer is small.
            self.steps.assign(
                tf.tensor_scatter_nd_update(self.steps.read_value(), [[row]], [step])
            )
            self.rows.assign(
                tf.tensor_scatter_nd_update(self.rows.read_value(), indices, updates)
            )
        else:
            self.steps.scatter_nd_update([[row]], [step])
            self.rows.scatter_nd_update(indices, updates)
        bad = [updates[i] > 0 for i, c in enumerate(cols) if c in self._bad_columns]
        if bad:
            self.nonfinite_seen.assign(
                tf.logical_or(self.nonfinite_seen, tf.reduce_any(tf.stack(bad)))
            )
        return tf.constant(True)

    def _wrap_train_step(self, original):
        def train_step(*args, **kwargs):
            self.traces += 1
            self._train_graph = tf.compat.v1.get_default_graph()
            self._pending, self._outputs = {}, {}
            try:
                logs = original(*args, **kwargs)
            finally:
                self._train_graph = None
            if self._pending or self._outputs:
                # One tf.cond a step for all the layers' reductions and the
                # write: on other steps it is all the step costs.
                tf.cond(self._log_now(), self._write_row, lambda: tf.constant(False))
            self.counter.assign_add(1)
            return logs

        return train_step

    def _wrap_call(self, unit, original):
        def call(*args, **kwargs):
            output = original(*args, **kwargs)
            # Only the training trace is measured, not evaluate()'s or the
            # probe's; nor Keras's build-time call in a scratch graph. A shared
            # layer is measured on its first call.
            if (
                self._train_graph is not None
                and tf.compat.v1.get_default_graph() is self._train_graph
                and unit.index not in self._outputs
            ):
                out = first_float(output)
                if out is not None:
                    # Reduced at the end of the step, on logged steps only.
                    self._outputs[unit.index] = (unit, out)
            return output

        return call

    def _wrap_apply(self, original):
        def apply(grads, trainable_variables=None):
            self.applied = True
            grads = list(grads)
            variables = (
                list(trainable_variables)
                if trainable_variables is not None
                else list(self.model.trainable_variables)
            )
            # Build outside the tf.cond below: no variable may be created in it.
            if not self.optimizer.built:
                self.optimizer.build(variables)
            keys = self._update_keys(variables)

            def run_original():
                if trainable_variables is None:
                    return original(grads)
                return original(grads, trainable_variables=trainable_variables)

            context = tf.distribute.get_replica_context()
            if not self._distributed:

                def logged():
                    before = [tf.identity(tf.convert_to_tensor(v)) for v in variables]
                    run_original()
                    values = self._update_stats(grads, variables, before)
                    return {k: tf.reshape(values[k], []) for k in keys}

                def plain():
                    run_original()
                    return {k: tf.constant(np.nan, tf.float32) for k in keys}

                values = tf.cond(self._log_now(), logged, plain)
            else:
                # No synchronisation point may sit in a tf.cond in a replica
                # context: reduce and copy on every step, reduce in the cond.
                dense = [
                    tf.convert_to_tensor(g) if g is not None else None for g in grads
                ]
                present = [g for g in dense if g is not None]
                summed = iter(context.all_reduce("SUM", present))
                reduced = [next(summed) if g is not None else None for g in dense]
                before = [tf.identity(tf.convert_to_tensor(v)) for v in variables]
                run_original()
                values = self._when_logged(
                    lambda: self._update_stats(reduced, variables, before), keys
                )
            self._pending.update(values)

        return apply

    def _update_keys(self, variables):
        """The columns `_update_stats` fills, known before it is traced."""
        col, keys = self.layout.column, []
        for index in sorted({i for i in self.units_of(variables) if i is not None}):
            keys += [
                col(index, s) for s in ("grad_norm", "update_ratio", "weight_norm")
            ]
            bad = ["weight_bad"] + ([] if self.loss_scaled else ["grad_bad"])
            keys += [col(index, s) for s in bad]
        if self.global_clipnorm or self.clipnorm:
            keys += [
                self.layout.global_column("clip/global_grad_norm"),
                self.layout.global_column("clip/factor"),
            ]
        return keys

    def _update_stats(self, grads, variables, before):
        layout = self.layout
        kept = [
            (tf.convert_to_tensor(g), tf.convert_to_tensor(v), b, index)
            for g, v, b, index in zip(
                grads, variables, before, self.units_of(variables), strict=True
            )
            if g is not None
        ]
        if not kept:
            return {}
        scale = (
            tf.convert_to_tensor(self.optimizer.dynamic_scale)
            if self.loss_scaled
            else tf.constant(1.0)
        )
        sums = _per_variable_sums(
            [g for g, _, _, _ in kept],
            [v for _, v, _, _ in kept],
            [b for _, _, b, _ in kept],
            tf.cast(scale, tf.float32),
        )
        values = {}
        for index in sorted({i for *_, i in kept if i is not None}):
            rows = [k for k, (*_, i) in enumerate(kept) if i == index]
            g2, a2, b2, d2 = tf.unstack(tf.reduce_sum(tf.gather(sums, rows), 0))
            col = lambda s, i=index: layout.column(i, s)  # noqa: E731
            values[col("grad_norm")] = tf.sqrt(g2)
            values[col("update_ratio")] = tf.sqrt(d2) / tf.sqrt(b2)
            values[col("weight_norm")] = tf.sqrt(a2)
            # The weights this step ran with: after the update, a NaN in one
            # layer has already spread to the others through the gradients.
            values[col("weight_bad")] = _stats.code_of_sum(b2)
            if not self.loss_scaled:
                # Under loss scaling, non-finite gradients are routine: the step
                # is skipped and the scale lowered. Only weights are checked.
                values[col("grad_bad")] = _stats.code_of_sum(g2)
        if self.global_clipnorm or self.clipnorm:
            norms = tf.sqrt(sums[:, 0])
            total = tf.sqrt(tf.reduce_sum(sums[:, 0]))
            if self.global_clipnorm:
                factor = tf.minimum(1.0, self.global_clipnorm / total)
            else:
                factor = tf.reduce_min(tf.minimum(1.0, self.clipnorm / norms))
            values[layout.global_column("clip/global_grad_norm")] = total
            values[layout.global_column("clip/factor")] = factor
        return values

    # -- on the host -------------------------------------------------------------

    def read(self):
        """`(steps, rows)` of the buffer: the one host read of a flush."""
        return self.steps.numpy(), self.rows.numpy()

    def read_counter(self):
        return int(self.counter.numpy())

    def set_counter(self, step):
        self.counter.assign(step)

    def nonfinite(self):
        """Whether a logged step saw NaN or inf: one scalar read."""
        return bool(self.nonfinite_seen.numpy())
