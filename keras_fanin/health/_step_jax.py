"""The real training step on JAX: the same signals as `_step_tf`, inside the
jitted, stateless train step.

JAX's step is a pure function of its state `(trainable, non_trainable,
optimizer, metrics)`, so the buffer must travel in that state: three
variables (the logged step's number, step numbers, rows) are added to the
model's loss tracker metric, whose state Keras threads through every step and
writes back at each sync (which `Callback.model` triggers, so a flush reads
them after one). Wrapped while `fit()` runs:

- `model.train_function`: Keras's own train function, made twice by
  `model.make_train_function` (same jit, donation and output shardings): once
  around Keras's `train_step`, run on the steps not logged, and once around
  the logged step. The host counts the steps and picks one per step;
- `model.train_step`, for the logged function: sees the weights before and
  after the step (no copy: JAX arrays are immutable) and writes the row;
- `optimizer.stateless_apply`: stashes the gradients it is handed (still
  scaled under `LossScaleOptimizer`; unscaled here with its `dynamic_scale`);
- `model.compute_loss_and_updates` and each unit's `call`: the layer outputs of
  the training forward pass, reduced inside the gradient trace and carried out
  of it through the metrics state (values from inside `jax.value_and_grad`
  may only leave through its auxiliary output).

The wrappers pass through while the plain step traces, so it compiles to
Keras's own step; with no `lax.cond` in it, XLA updates the donated state in
place on every step. Under `keras.distribution.DataParallel` the gradients
are already the global ones and the reductions run on sharded arrays, so the
numbers equal one device's.
"""

import itertools

import jax.numpy as jnp
import keras
import numpy as np

from keras_fanin.health import _stats
from keras_fanin.health._hook import StepHook
from keras_fanin.health._units import first_float

_NAMES = ("gradient_health_step", "gradient_health_steps", "gradient_health_rows")


class JaxStepHook(StepHook):
    """Installs the wrappers on one compiled model and owns its buffer."""

    def __init__(self, model, layout, every_n_steps, capacity, saturation_eps,
                 activations, start_step):  # fmt: skip
        super().__init__(
            model, layout, every_n_steps, capacity, saturation_eps, activations
        )
        tracker = model.metrics[0]
        # The number of the next logged step: the host picks it, the device
        # knows it without a transfer.
        self.next_logged = tracker.add_variable(
            (), "zeros", dtype="int32", name=_NAMES[0]
        )
        self.steps = tracker.add_variable(
            (capacity,), keras.initializers.Constant(-1), dtype="int32", name=_NAMES[1]
        )
        self.rows = tracker.add_variable(
            (capacity, layout.width),
            keras.initializers.Constant(np.nan),
            dtype="float32",
            name=_NAMES[2],
        )
        self.set_counter(start_step)  # steps run: the host counts them
        self._logging = False  # tracing the logged step: the wrappers record
        self._grads = None
        self._outputs = None

    # -- install / uninstall -------------------------------------------------

    def install(self):
        model = self.model
        original = model.train_step
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
        # Keras jits whatever `model.train_step` is when it makes the function.
        self._set(model, "train_step", self._plain_step(original))
        model.make_train_function(force=True)
        plain = model.train_function
        object.__setattr__(model, "train_step", self._logged_step(original))
        model.make_train_function(force=True)
        logged = model.train_function
        model.train_function = self._dispatch(plain, logged)

    def usable(self):
        # `compile()` makes a new loss tracker: the buffer went with the old.
        ids = {id(v) for v in self.model.metrics_variables}
        return all(id(v) in ids for v in (self.next_logged, self.steps, self.rows))

    # -- on the host, every step -----------------------------------------------

    def _dispatch(self, plain, logged):
        """A train function running `plain` or `logged` for each step.

        Keras's train function takes `(state, iterator)` and runs up to
        `steps_per_execution` steps, pulling a batch for each and stopping
        early when the iterator runs out. Here it is handed a slice of the
        iterator: the steps up to the next logged one (plain), or the logged
        one alone, so every step inside an execution is counted and logged at
        its own number.
        """
        every_n = self.every_n

        def choose(limit):
            step = self.step
            if step % every_n:
                return plain, min(limit, every_n - step % every_n)
            return logged, 1

        def train_function(state, iterator):
            # Read per call, as Keras's own function does.
            spe = max(1, int(getattr(self.model, "steps_per_execution", 1) or 1))
            if spe == 1:
                out = choose(1)[0](state, iterator)
                self.step += 1
                return out
            out, left = None, spe
            while left:
                function, k = choose(left)
                batches = _Counted(itertools.islice(iterator, k))
                try:
                    out = function(state, batches)
                except StopIteration:
                    if out is None:  # no batch at all: as Keras's own function
                        raise
                    break  # the state was not donated: no step ran
                finally:
                    self.step += batches.count
                left -= batches.count
                state = out[1]
                if batches.count < k:
                    break
            return out

        return train_function

    # -- in the step -------------------------------------------------------------

    def _slots(self):
        """Where the next logged step, steps and rows sit in the metrics state."""
        ids = [id(v) for v in self.model.metrics_variables]
        return [ids.index(id(v)) for v in (self.next_logged, self.steps, self.rows)]

    def _wrap_loss(self, original):
        def compute_loss_and_updates(*args, **kwargs):
            training = kwargs.get("training", False)
            if not training or not self._logging:
                return original(*args, **kwargs)
            self._outputs = {}
            try:
                loss, aux = original(*args, **kwargs)
            finally:
                outputs, self._outputs = self._outputs, None
            metrics = list(aux[3])
            _, _, rows_slot = self._slots()
            cols, stats = _stats.layer_outputs(
                outputs.values(), self.eps, self.layout.column
            )
            if not cols:
                return loss, aux
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
            if self._logging:
                scale = None
                if self.loss_scaled:
                    ids = [id(v) for v in self.optimizer.variables]
                    dynamic_scale = id(self.optimizer.dynamic_scale)
                    scale = optimizer_variables[ids.index(dynamic_scale)]
                self._grads = (list(grads), scale)
            return original(optimizer_variables, grads, trainable_variables)

        return stateless_apply

    def _plain_step(self, original):
        def train_step(state, data):
            # Keras's own step: traced with every wrapper passing through.
            self.traces += 1
            return original(state, data)

        return train_step

    def _logged_step(self, original):
        def train_step(state, data):
            self.traces += 1
            self._grads, self._act_cols = None, []
            before = state[0]
            self._logging = True
            try:
                logs, state = original(state, data)
            finally:
                self._logging = False
            trainable, non_trainable, optimizer_vars, metrics = state
            metrics = list(metrics)
            step_slot, steps_slot, rows_slot = self._slots()
            step = metrics[step_slot]
            rows, steps = metrics[rows_slot], metrics[steps_slot]
            grads, self._grads = self._grads, None
            # The last row carries the activation stats out of the gradient
            # trace; the ring is the rows before it.
            row = (step // self.every_n) % (self.capacity - 1)
            full = jnp.full((self.layout.width,), jnp.nan, jnp.float32)
            if self._act_cols:
                idx = jnp.asarray(self._act_cols)
                full = full.at[idx].set(rows[-1][idx])
            update_cols, update_values = self._update_stats(grads, before, trainable)
            self.layout.written.update(update_cols)
            if update_cols:
                full = full.at[jnp.asarray(update_cols)].set(update_values)
            metrics[rows_slot] = rows.at[row].set(full)
            metrics[steps_slot] = steps.at[row].set(step)
            # The host runs this step at the multiples of `every_n` only.
            metrics[step_slot] = step + self.every_n
            return logs, (trainable, non_trainable, optimizer_vars, metrics)

        return train_step

    def _update_stats(self, grads, before, after):
        """`(columns, values)` of the gradient, update and weight signals."""
        if grads is None:
            return [], None
        grads, scale = grads
        plan = self.update_plan(grads, self.model.trainable_variables)
        if not plan.cols:
            return [], None
        s = 1.0 if scale is None else jnp.float32(scale)
        sums = jnp.stack([
            jnp.stack([
                jnp.sum(jnp.square(jnp.float32(grads[k]) / s)),
                jnp.sum(jnp.square(jnp.float32(after[k]))),
                jnp.sum(jnp.square(jnp.float32(before[k]))),
                jnp.sum(jnp.square(jnp.float32(after[k]) - jnp.float32(before[k]))),
            ])
            for k in plan.kept
        ])  # fmt: skip
        values = _stats.update_values(sums, plan, self.clipnorm, self.global_clipnorm)
        return plan.cols, values

    # -- on the host (after a state sync) ------------------------------------

    def read(self):
        steps = np.asarray(keras.ops.convert_to_numpy(self.steps)).astype(np.int64)
        rows = np.asarray(keras.ops.convert_to_numpy(self.rows))
        return steps[:-1].copy(), rows[:-1].copy()

    def read_counter(self):
        return self.step

    def set_counter(self, step):
        self.step = step
        self.next_logged.assign(-(-step // self.every_n) * self.every_n)

    def nonfinite(self):
        _, rows = self.read()
        cols = [
            self.layout.column(u.index, s)
            for u in self.layout.units
            for s in ("grad_bad", "weight_bad", "activation_bad")
        ]
        values = rows[:, cols]
        return bool(np.any(values[np.isfinite(values)] > 0))


class _Counted:
    """An iterator counting the batches taken from it."""

    def __init__(self, iterator):
        self.iterator, self.count = iterator, 0

    def __iter__(self):
        return self

    def __next__(self):
        item = next(self.iterator)
        self.count += 1
        return item
