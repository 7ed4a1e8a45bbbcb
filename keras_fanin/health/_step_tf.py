"""The real training step on TensorFlow: what the optimizer applies, and the
training forward pass, reduced on the device into a ring buffer.

Instance attributes are wrapped while `fit()` runs, then restored
(`install` / `uninstall`); the train function is re-made after each, so a
model whose train function was traced before gets a fresh one, and a later
`fit()` without the callback runs Keras's own step again:

- `model.train_step`: marks which trace is the logged step's, and after the
  step writes the step number and the row;
- `optimizer.apply(grads, trainable_variables)`: sees the gradients the
  optimizer is handed, before clipping and, under `LossScaleOptimizer`,
  still scaled (they are unscaled here, in float32); reads the weights before
  and after the update for `update_ratio` and `weight_norm`;
- each unit's `call`: reduces the layer's output from the training forward
  pass (std, dead / saturated fraction, finiteness).

With `steps_per_execution=1` (Keras's default), `model.train_function` is
made twice by `model.make_train_function`: once around Keras's own
`train_step`, run on the steps not logged, and once around the logged step;
the host counts the steps and picks one per step, as on JAX. The unlogged
steps then run Keras's step untouched, with no `tf.cond` in it. The logged
step knows its own number from a device counter the host sets once per
`fit()`, so choosing costs no transfer.

With `steps_per_execution > 1` the steps of an execution run inside one
`tf.while_loop` the host cannot split, so there one train function does it
all: a device counter counts every step, and on steps not logged a `tf.cond`
skips the statistics (one `tf.cond` in `apply`, one at the end of the step).

The row of a logged step is `(step // every_n_steps) % capacity` of a
`tf.Variable`; the host reads the buffer once per flush (`read`). Under a
multi-replica strategy Keras's `apply` gets each replica's share, before the
all-reduce; the logged step all-reduces the gradients itself. A `tf.cond` may
not hold a synchronisation point there, so with `steps_per_execution > 1` the
gradients are all-reduced and the weights copied on every step, and only the
reductions are skipped.

With `histograms=k` a third train function runs every `k`-th logged step:
the logged step plus the bucketing of the gradient, the weights and the
update (`_stats.histogram_counts`), written into a ring of its own; with
`steps_per_execution > 1` a `tf.cond` on the counter skips the bucketing,
and a logged step without it writes the ring's spare row.
"""

import numpy as np
import tensorflow as tf

from keras_fanin.health import _stats
from keras_fanin.health._hook import StepHook, guarded
from keras_fanin.health._units import first_float
from keras_fanin_logs import _histogram
from keras_fanin_logs._signals import HISTOGRAMS as HIST_SIGNALS

# What Keras's train function raises at the end of the data: no step ran.
_END_OF_DATA = (StopIteration, tf.errors.OutOfRangeError)


def _local(variable_factory, strategy):
    # ON_READ with ONLY_FIRST_REPLICA: each replica keeps its own copy (no
    # synchronisation in the step); the host reads the first replica's.
    with strategy.scope():
        return variable_factory(
            trainable=False,
            synchronization=tf.VariableSynchronization.ON_READ,
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
        )


class TFStepHook(StepHook):
    """Installs the wrappers on one compiled model and owns its buffer."""

    def __init__(self, model, layout, every_n_steps, capacity, saturation_eps,
                 activations, start_step, histograms=None):  # fmt: skip
        super().__init__(
            model, layout, every_n_steps, capacity, saturation_eps, activations,
            histograms,
        )  # fmt: skip
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
        if histograms:
            # One more row, written by the logged steps without histograms
            # when a tf.cond chooses (`steps_per_execution > 1`), never read.
            rows = self.hist_capacity + 1
            shape = [rows, len(layout.units), len(HIST_SIGNALS), _histogram.BINS + 1]
            self.hist_steps = _local(
                lambda **kw: tf.Variable(np.full([rows], -1, np.int64), **kw),
                strategy,
            )
            self.hist_rows = _local(
                lambda **kw: tf.Variable(np.zeros(shape, np.int32), **kw), strategy
            )
        self._distributed = strategy.num_replicas_in_sync > 1
        # Chosen per fit() in `install`: the host picks the logged step's
        # function (`steps_per_execution=1`), or a device counter and a
        # `tf.cond` do inside one function.
        self._dispatching = False
        self.step = start_step  # steps run, counted on the host when dispatching
        self._train_graph = None
        self._pending, self._outputs = [], {}
        self._hist, self._pending_hist = False, []

    # -- install / uninstall -------------------------------------------------

    def install_wrappers(self):
        self._set(self.optimizer, "apply", self._wrap_apply(self.optimizer.apply))
        if self.activations:
            for unit in self.layout.units:
                self._set(unit.layer, "call", self._wrap_call(unit, unit.layer.call))

    @staticmethod
    def train_function_for(watch):
        """The model's train function for the hooks of `watch`."""
        model, hooks = watch.model, watch.hooks
        spe = int(getattr(model, "steps_per_execution", 1) or 1)
        for hook in hooks:
            hook._dispatching = spe == 1
            hook.set_counter(hook.step)  # in this fit()'s meaning
        if spe != 1:
            # One function; each hook's counter and tf.cond choose in it.
            function = watch.function(tuple(max(hook.modes) for hook in hooks))
            return guarded(function, watch, _END_OF_DATA)
        watch.make_all()

        def train_function(iterator):
            active = tuple(hook.mode(hook.step) for hook in hooks)
            out = watch.functions[active](iterator)  # at the data's end, raises
            for hook in hooks:
                hook.step += 1
            return out

        return guarded(train_function, watch, _END_OF_DATA)

    # -- in the step -------------------------------------------------------------

    def _log_now(self):
        return tf.equal(self.counter.read_value() % self.every_n, 0)

    def _row(self):
        return (self.counter.read_value() // self.every_n) % self.capacity

    def _branch(self, logged, plain):
        """`logged()` on a logged step, `plain()` on others: in the logged
        step's own function, `logged()` alone."""
        if self._dispatching:
            return logged()
        return tf.cond(self._log_now(), logged, plain)

    def _when_logged(self, compute, plan):
        """`compute()` (`_stats_of`'s) on a logged step, `_no_stats` otherwise."""
        return self._branch(compute, lambda: self._no_stats(plan))

    def _hist_now(self):
        """On a logged step: whether it is one with histograms."""
        logged = self.counter.read_value() // self.every_n
        return tf.equal(logged % self.histograms, 0)

    def _with_hist(self, plan):
        return self._hist and plan.units > 0

    def _no_stats(self, plan):
        """What `_stats_of` gives, for a step that computes nothing."""
        values = tf.fill([len(plan.cols)], np.float32(np.nan))
        if not self._with_hist(plan):
            return (values,)
        shape = [plan.units, len(HIST_SIGNALS), _histogram.BINS + 1]
        return values, tf.zeros(shape, tf.int32)

    def _stats_of(self, grads, variables, before, plan):
        """`(values,)`, or `(values, histogram counts)` with histograms."""
        values = self._update_stats(grads, variables, before, plan)
        if not self._with_hist(plan):
            return (values,)
        if self._dispatching:  # the host ran this function for histograms
            return values, self._hist_counts(grads, variables, before, plan)
        counts = tf.cond(
            self._hist_now(),
            lambda: self._hist_counts(grads, variables, before, plan),
            lambda: self._no_stats(plan)[1],
        )
        return values, counts

    def _write_row(self):
        """On a logged step: reduces the stashed layer outputs, then writes the
        step number and every value of the step into its row, in one scatter."""
        cols, updates, bad = self.row_values(self._pending, self._outputs.values())
        if not cols:
            return tf.constant(True)
        row, step = self._row(), self.counter.read_value()
        indices = tf.stack(
            [tf.fill([len(cols)], row), tf.constant(cols, tf.int64)], axis=1
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
        if bad:
            self.nonfinite_seen.assign(
                tf.logical_or(
                    self.nonfinite_seen, tf.reduce_any(tf.gather(updates, bad) > 0)
                )
            )
        if self._pending_hist:
            self._write_hist(step)
        return tf.constant(True)

    def _write_hist(self, step):
        """Writes the histogram counts of the step into its row of the ring
        (with a tf.cond choosing, a step without histograms writes the spare
        row); a unit written twice (two `apply` calls) keeps its last."""
        units, parts = [], []
        for unit_ids, counts in self._pending_hist:
            units += unit_ids
            parts.append(counts)
        counts = tf.concat(parts, 0)
        last = {u: i for i, u in enumerate(units)}
        if len(last) < len(units):
            keep = sorted(last.values())
            units, counts = [units[i] for i in keep], tf.gather(counts, keep)
        self.layout.hist_written.update(units)
        row = self.hist_row(self.counter.read_value())
        if not self._dispatching:
            row = tf.where(self._hist_now(), row, self.hist_capacity)
        indices = tf.stack(
            [tf.fill([len(units)], row), tf.constant(units, tf.int64)], axis=1
        )
        if self._distributed:
            self.hist_steps.assign(
                tf.tensor_scatter_nd_update(
                    self.hist_steps.read_value(), [[row]], [step]
                )
            )
            self.hist_rows.assign(
                tf.tensor_scatter_nd_update(
                    self.hist_rows.read_value(), indices, counts
                )
            )
        else:
            self.hist_steps.scatter_nd_update([[row]], [step])
            self.hist_rows.scatter_nd_update(indices, counts)

    def logged_step(self, original, histograms=False):
        def train_step(*args, **kwargs):
            self.traces += 1
            self._train_graph = tf.compat.v1.get_default_graph()
            self._pending, self._outputs = [], {}
            self._hist, self._pending_hist = histograms, []
            try:
                logs = original(*args, **kwargs)
            finally:
                self._train_graph = None
            if self._pending or self._outputs or self._pending_hist:
                # One branch for all the layers' reductions and the write.
                self._branch(self._write_row, lambda: tf.constant(False))
            # Dispatching, the host runs this step at the multiples of
            # `every_n` only, and the counter holds the next one.
            self.counter.assign_add(self.every_n if self._dispatching else 1)
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
            if self._train_graph is None:  # Keras's own step, or not a training trace
                if trainable_variables is None:
                    return original(grads)
                return original(grads, trainable_variables=trainable_variables)
            grads = list(grads)
            variables = (
                list(trainable_variables)
                if trainable_variables is not None
                else list(self.model.trainable_variables)
            )
            # Build outside the tf.cond below: no variable may be created in it.
            if not self.optimizer.built:
                self.optimizer.build(variables)
            plan = self.update_plan(grads, variables)

            def run_original():
                if trainable_variables is None:
                    return original(grads)
                return original(grads, trainable_variables=trainable_variables)

            context = tf.distribute.get_replica_context()
            # Under another hook's wrapper (two callbacks), the update may not
            # run in this hook's tf.cond: the other hook's statistics would
            # be made in the branch and used outside it.
            stacked = not self._dispatching and self.watch.hooks.index(self) > 0
            if not self._distributed and not stacked:

                def logged():
                    before = [tf.identity(tf.convert_to_tensor(v)) for v in variables]
                    run_original()
                    return self._stats_of(grads, variables, before, plan)

                def plain():
                    run_original()
                    return self._no_stats(plan)

                stats = self._branch(logged, plain)
            else:
                # No synchronisation point may sit in a tf.cond in a replica
                # context: outside one, reduce and copy (on every step when a
                # tf.cond chooses), and compute the statistics in it.
                reduced = grads
                if self._distributed:
                    dense = [
                        tf.convert_to_tensor(g) if g is not None else None
                        for g in grads
                    ]
                    present = [g for g in dense if g is not None]
                    summed = iter(context.all_reduce("SUM", present))
                    reduced = [next(summed) if g is not None else None for g in dense]
                before = [tf.identity(tf.convert_to_tensor(v)) for v in variables]
                run_original()
                stats = self._when_logged(
                    lambda: self._stats_of(reduced, variables, before, plan), plan
                )
            if plan.cols:
                self._pending.append((plan.cols, stats[0]))
            if len(stats) > 1:
                self._pending_hist.append((plan.unit_ids, stats[1]))

        return apply

    def _update_stats(self, grads, variables, before, plan):
        """The vector of `plan.cols`: four fused reductions a variable."""
        if not plan.kept:
            return tf.zeros([0], tf.float32)
        squares = []
        for k in plan.kept:
            g = tf.cast(tf.convert_to_tensor(grads[k]), tf.float32)
            a = tf.cast(tf.convert_to_tensor(variables[k]), tf.float32)
            b = tf.cast(before[k], tf.float32)
            # l2_loss: sum(x^2) / 2 in one kernel, no squared copy.
            squares += [tf.nn.l2_loss(g), tf.nn.l2_loss(a), tf.nn.l2_loss(b),
                        tf.nn.l2_loss(a - b)]  # fmt: skip
        sums = 2.0 * tf.reshape(tf.stack(squares), [len(plan.kept), 4])
        if self.loss_scaled:
            scale = tf.cast(self.optimizer.dynamic_scale, tf.float32)
            sums = sums * tf.stack([1.0 / (scale * scale), 1.0, 1.0, 1.0])
        return _stats.update_values(sums, plan, self.clipnorm, self.global_clipnorm)

    def _hist_counts(self, grads, variables, before, plan):
        """`[plan.units, 3, BINS + 1]` counts of the gradient (unscaled), the
        weights after the update and the update, per unit."""
        scale = None
        if self.loss_scaled:
            scale = tf.cast(self.optimizer.dynamic_scale, tf.float32)
        signals = ([], [], [])
        for k in plan.kept:
            g = tf.cast(tf.convert_to_tensor(grads[k]), tf.float32)
            a = tf.cast(tf.convert_to_tensor(variables[k]), tf.float32)
            b = tf.cast(before[k], tf.float32)
            for part, x in zip(signals, (g if scale is None else g / scale, a, a - b),
                               strict=True):  # fmt: skip
                part.append((x, False))
        return _stats.histogram_counts(signals, plan, self._count)

    def _count(self, codes):
        """The bincount of one variable's histogram codes."""
        if getattr(self.model, "jit_compile", False):
            # XLA needs a static size, which bincount's output does not have.
            return tf.math.unsorted_segment_sum(
                tf.ones_like(codes), codes, _histogram.CODES
            )
        return tf.math.bincount(
            codes, minlength=_histogram.CODES, maxlength=_histogram.CODES
        )

    # -- on the host -------------------------------------------------------------

    def read(self):
        """`(steps, rows)` of the buffer: the one host read of a flush."""
        return self.steps.numpy(), self.rows.numpy()

    def forget_rows(self):
        self.steps.assign(np.full([self.capacity], -1, np.int64))
        if self.histograms:
            self.hist_steps.assign(np.full(self.hist_steps.shape, -1, np.int64))

    def read_histograms(self):
        """`(steps, counts)` of the histogram ring, read with the rows."""
        size = self.hist_capacity
        return self.hist_steps.numpy()[:size], self.hist_rows.numpy()[:size]

    def read_counter(self):
        if not self._dispatching:
            self.step = int(self.counter.numpy())
        return self.step

    def set_counter(self, step):
        self.step = step
        if self._dispatching:  # the number of the next logged step
            self.counter.assign(-(-step // self.every_n) * self.every_n)
        else:
            self.counter.assign(step)

    def nonfinite(self):
        """Whether a logged step saw NaN or inf: one scalar read."""
        return bool(self.nonfinite_seen.numpy())
