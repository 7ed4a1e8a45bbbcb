"""The real training step on JAX: the same signals as `_step_tf`, inside the
jitted, stateless train step.

JAX's step is a pure function of its state `(trainable, non_trainable,
optimizer, metrics)`, so the buffer must travel in that state: three
variables (step counter, step numbers, rows) are added to the model's loss
tracker metric, whose state Keras threads through every step and writes back
at each sync (which `Callback.model` triggers, so a flush reads them after
one). Wrapped while `fit()` runs:

- `model.train_step`: sees the weights before and after the step (no copy:
  JAX arrays are immutable), writes the row and advances the counter;
- `optimizer.stateless_apply`: stashes the gradients it is handed (still
  scaled under `LossScaleOptimizer`; unscaled here with its `dynamic_scale`);
- `model.compute_loss_and_updates` and each unit's `call`: the layer outputs of
  the training forward pass, reduced inside the gradient trace and carried out
  of it through the metrics state (values from inside `jax.value_and_grad`
  may only leave through its auxiliary output).

One `jax.lax.cond` chooses between Keras's own step and the logged one. Under
`keras.distribution.DataParallel` the gradients are already the global ones
and the reductions run on sharded arrays, so the numbers equal one device's.
"""

import jax
import jax.numpy as jnp
import keras
import numpy as np

from keras_fanin.health import _stats
from keras_fanin.health._hook import StepHook
from keras_fanin.health._units import first_float

_NAMES = ("gradient_health_counter", "gradient_health_steps", "gradient_health_rows")


class JaxStepHook(StepHook):
    """Installs the wrappers on one compiled model and owns its buffer."""

    def __init__(self, model, layout, every_n_steps, capacity, saturation_eps,
                 activations, start_step):  # fmt: skip
        super().__init__(
            model, layout, every_n_steps, capacity, saturation_eps, activations
        )
        tracker = model.metrics[0]
        self.counter = tracker.add_variable((), "zeros", dtype="int32", name=_NAMES[0])
        self.steps = tracker.add_variable(
            (capacity,), keras.initializers.Constant(-1), dtype="int32", name=_NAMES[1]
        )
        self.rows = tracker.add_variable(
            (capacity, layout.width),
            keras.initializers.Constant(np.nan),
            dtype="float32",
            name=_NAMES[2],
        )
        self.counter.assign(start_step)
        self._plain = False
        self._grads = None
        self._outputs = None

    # -- install / uninstall -------------------------------------------------

    def install(self):
        model = self.model
        self._set(model, "train_step", self._wrap_train_step(model.train_step))
        self._set(
            self.optimizer,
            "stateless_apply",
            self._wrap_stateless_apply(self.optimizer.stateless_apply),
        )
        if self.activations:
            self._set(
                model,
                "compute_loss_and_updates",
                self._wrap_loss(model.compute_loss_and_updates),
            )
            for unit in self.layout.units:
                self._set(unit.layer, "call", self._wrap_call(unit, unit.layer.call))
        model.make_train_function(force=True)

    # -- in the step -------------------------------------------------------------

    def _slots(self):
        """Where the counter, steps and rows sit in the metrics state."""
        ids = [id(v) for v in self.model.metrics_variables]
        return [ids.index(id(v)) for v in (self.counter, self.steps, self.rows)]

    def _log_now(self, counter):
        return counter % self.every_n == 0

    def _wrap_loss(self, original):
        def compute_loss_and_updates(*args, **kwargs):
            training = kwargs.get("training", False)
            if not training or self._plain:
                return original(*args, **kwargs)
            self._outputs = {}
            try:
                loss, aux = original(*args, **kwargs)
            finally:
                outputs, self._outputs = self._outputs, None
            metrics = list(aux[3])
            _, _, rows_slot = self._slots()
            cols, keys = [], []
            for unit, _ in outputs.values():
                for signal in _stats.output_signals(unit.activation):
                    cols.append(self.layout.column(unit.index, signal))
                    keys.append((unit.index, signal))
            if not cols:
                return loss, aux

            def compute():
                values = {}
                for unit, out in outputs.values():
                    stats = _stats.output_stats(
                        unit.layer, out, unit.activation, self.eps
                    )
                    for signal, value in stats.items():
                        values[(unit.index, signal)] = value
                return jnp.stack([jnp.float32(values[k]) for k in keys])

            stats = compute()
            self.layout.written.update(cols)
            self._act_cols = cols
            # Carried out of the gradient trace in the rows slot's last row
            # (the step writes its own row afterwards).
            rows = metrics[rows_slot]
            metrics[rows_slot] = rows.at[-1, jnp.asarray(cols)].set(stats)
            return loss, (*aux[:3], metrics)

        return compute_loss_and_updates

    def _wrap_call(self, unit, original):
        def call(*args, **kwargs):
            output = original(*args, **kwargs)
            if self._outputs is not None and unit.index not in self._outputs:
                out = first_float(output)
                if out is not None:
                    self._outputs[unit.index] = (unit, out)
            return output

        return call

    def _wrap_stateless_apply(self, original):
        def stateless_apply(optimizer_variables, grads, trainable_variables):
            self.applied = True
            scale = None
            if self.loss_scaled:
                ids = [id(v) for v in self.optimizer.variables]
                scale = optimizer_variables[ids.index(id(self.optimizer.dynamic_scale))]
            self._grads = (list(grads), scale)
            return original(optimizer_variables, grads, trainable_variables)

        return stateless_apply

    def _wrap_train_step(self, original):
        def plain(state, data):
            # Keras's own step: traced with every wrapper passing through.
            self._plain = True
            try:
                logs, state = original(state, data)
            finally:
                self._plain = False
            return logs, self._advance(state)

        def logged(state, data):
            self._grads, self._act_cols = None, []
            before = state[0]
            logs, state = original(state, data)
            trainable, non_trainable, optimizer_vars, metrics = state
            metrics = list(metrics)
            counter_slot, steps_slot, rows_slot = self._slots()
            counter = metrics[counter_slot]
            rows, steps = metrics[rows_slot], metrics[steps_slot]
            grads, self._grads = self._grads, None
            # The last row carries the activation stats out of the gradient
            # trace; the ring is the rows before it.
            row = (counter // self.every_n) % (self.capacity - 1)
            full = jnp.full((self.layout.width,), jnp.nan, jnp.float32)
            if self._act_cols:
                idx = jnp.asarray(self._act_cols)
                full = full.at[idx].set(rows[-1][idx])
            update_cols, update_values = self._update_stats(grads, before, trainable)
            self.layout.written.update(update_cols)
            if update_cols:
                full = full.at[jnp.asarray(update_cols)].set(update_values)
            metrics[rows_slot] = rows.at[row].set(full)
            metrics[steps_slot] = steps.at[row].set(counter)
            state = (trainable, non_trainable, optimizer_vars, metrics)
            return logs, self._advance(state)

        def train_step(state, data):
            # One lax.cond around the whole step, not around the reductions:
            # inside it, the weights before the update must outlive it (for
            # `update_ratio`), which stops XLA from updating the donated
            # weights in place; the plain branch keeps Keras's in-place step.
            self.traces += 1
            counter = state[3][self._slots()[0]]
            return jax.lax.cond(self._log_now(counter), logged, plain, state, data)

        return train_step

    def _advance(self, state):
        metrics = list(state[3])
        slot = self._slots()[0]
        metrics[slot] = metrics[slot] + 1
        return (*state[:3], metrics)

    def _update_stats(self, grads, before, after):
        """`(columns, values)` of the gradient, update and weight signals."""
        if grads is None:
            return [], None
        grads, scale = grads
        units_of = self.units_of(self.model.trainable_variables)
        kept = [
            (g, a, b, index)
            for g, a, b, index in zip(grads, after, before, units_of, strict=True)
            if g is not None
        ]
        units = sorted({i for *_, i in kept if i is not None})
        col = self.layout.column
        cols = []
        for index in units:
            cols += [col(index, s) for s in ("grad_norm", "update_ratio", "weight_norm",
                                             "weight_bad")]  # fmt: skip
            if not self.loss_scaled:
                cols.append(col(index, "grad_bad"))
        clipped = bool(self.global_clipnorm or self.clipnorm)
        if clipped:
            cols += [self.layout.global_column("clip/global_grad_norm"),
                     self.layout.global_column("clip/factor")]  # fmt: skip
        if not cols:
            return [], None

        def compute():
            s = 1.0 if scale is None else jnp.float32(scale)
            sums = jnp.stack([
                jnp.stack([
                    jnp.sum(jnp.square(jnp.float32(g) / s)),
                    jnp.sum(jnp.square(jnp.float32(a))),
                    jnp.sum(jnp.square(jnp.float32(b))),
                    jnp.sum(jnp.square(jnp.float32(a) - jnp.float32(b))),
                ])
                for g, a, b, _ in kept
            ])  # fmt: skip
            values = []
            for index in units:
                rows = jnp.asarray([k for k, (*_, i) in enumerate(kept) if i == index])
                g2, a2, b2, d2 = jnp.sum(sums[rows], 0)
                values += [jnp.sqrt(g2), jnp.sqrt(d2) / jnp.sqrt(b2), jnp.sqrt(a2),
                           _stats.code_of_sum(b2)]  # fmt: skip
                if not self.loss_scaled:
                    values.append(_stats.code_of_sum(g2))
            if clipped:
                total = jnp.sqrt(jnp.sum(sums[:, 0]))
                if self.global_clipnorm:
                    factor = jnp.minimum(1.0, self.global_clipnorm / total)
                else:
                    factor = jnp.min(
                        jnp.minimum(1.0, self.clipnorm / jnp.sqrt(sums[:, 0]))
                    )
                values += [total, factor]
            return jnp.stack([jnp.float32(v) for v in values])

        return cols, compute()

    # -- on the host (after a state sync) ------------------------------------

    def read(self):
        steps = np.asarray(keras.ops.convert_to_numpy(self.steps)).astype(np.int64)
        rows = np.asarray(keras.ops.convert_to_numpy(self.rows))
        return steps[:-1].copy(), rows[:-1].copy()

    def read_counter(self):
        return int(keras.ops.convert_to_numpy(self.counter))

    def set_counter(self, step):
        self.counter.assign(step)

    def nonfinite(self):
        _, rows = self.read()
        cols = [
            self.layout.column(u.index, s)
            for u in self.layout.units
            for s in ("grad_bad", "weight_bad", "activation_bad")
        ]
        values = rows[:, cols]
        return bool(np.any(values[np.isfinite(values)] > 0))
