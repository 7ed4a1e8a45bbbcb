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

With `histograms=k` every `k`-th logged step runs a third function: the
logged step plus the bucketing of the gradient, the weights and the update
(`_stats.histogram_counts`), written into two more loss-tracker variables
(the histogram ring's steps and counts).
"""

import inspect
import itertools
import warnings

import jax.numpy as jnp
import keras
import numpy as np

from keras_fanin.health import _stats
from keras_fanin.health._advice import GradientHealthWarning
from keras_fanin.health._hook import PLAIN, StepHook, guarded
from keras_fanin.health._hosts import host_value
from keras_fanin.health._units import activation_signal, first_float
from keras_fanin_logs import _histogram
from keras_fanin_logs._signals import HISTOGRAMS as HIST_SIGNALS

_NAMES = ("gradient_health_step", "gradient_health_steps", "gradient_health_rows",
          "gradient_health_hist_steps", "gradient_health_hist_rows")  # fmt: skip


class JaxStepHook(StepHook):
    """Installs the wrappers on one compiled model and owns its buffer."""

    def __init__(self, model, layout, every_n_steps, capacity, saturation_eps,
                 activations, start_step, histograms=None):  # fmt: skip
        super().__init__(
            model, layout, every_n_steps, capacity, saturation_eps, activations,
            histograms,
        )  # fmt: skip
        tracker = model.metrics[0]
        # The number of the next logged step: the host picks it, the device
        # knows it without a transfer.
        self.next_logged = tracker.add_variable(
            (), "zeros", dtype="int32", name=_NAMES[0]
        )
        self.steps = tracker.add_variable(
            (capacity,), keras.initializers.Constant(-1), dtype="int32", name=_NAMES[1]
        )
        # Zeros, not NaN: under a multi-process distribution JAX checks that
        # every process places the same initial value, and NaN != NaN. A slot
        # is read only once a logged step wrote it whole (NaN where unmeasured).
        self.rows = tracker.add_variable(
            (capacity, layout.width),
            "zeros",
            dtype="float32",
            name=_NAMES[2],
        )
        self.hist_steps = self.hist_rows = None
        if histograms:
            self.hist_steps = tracker.add_variable(
                (self.hist_capacity,), keras.initializers.Constant(-1),
                dtype="int32", name=_NAMES[3],
            )  # fmt: skip
            self.hist_rows = tracker.add_variable(
                (self.hist_capacity, len(layout.units), len(HIST_SIGNALS),
                 _histogram.BINS + 1),
                "zeros", dtype="int32", name=_NAMES[4],
            )  # fmt: skip
        self.set_counter(start_step)  # steps run: the host counts them
        self._logging = False  # tracing the logged step: the wrappers record
        self._grads = None
        self._outputs = None

    # -- install / uninstall -------------------------------------------------

    def install_wrappers(self):
        model = self.model
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

    def usable(self):
        # `compile()` makes a new loss tracker: the buffer went with the old.
        ids = {id(v) for v in self.model.metrics_variables}
        return all(id(v) in ids for v in self._buffers())

    def _buffers(self):
        out = [self.next_logged, self.steps, self.rows]
        return out + ([self.hist_steps, self.hist_rows] if self.histograms else [])

    # -- on the host, every step -----------------------------------------------

    @staticmethod
    def train_function_for(watch):
        """A train function running, for each step, Keras's train function
        around the step of the hooks that log it.

        Keras's train function takes `(state, iterator)` and runs up to
        `steps_per_execution` steps, pulling a batch for each and stopping
        early when the iterator runs out. Here it is handed a slice of the
        iterator: the steps up to the next logged one (plain), or the logged
        one alone, so every step inside an execution is counted and logged at
        its own number.
        """
        model, hooks = watch.model, watch.hooks
        for hook in hooks:
            hook.set_counter(hook.step)
        plain = (PLAIN,) * len(hooks)
        watch.make_all()

        def choose(limit):
            phases = [hook.step % hook.every_n for hook in hooks]
            if 0 in phases:
                active = tuple(hook.mode(hook.step) for hook in hooks)
                return watch.functions[active], 1
            gap = min(h.every_n - p for h, p in zip(hooks, phases, strict=True))
            return watch.functions[plain], min(limit, gap)

        def advance(count):
            for hook in hooks:
                hook.step += count

        def run(state, iterator):
            # Read per call, as Keras's own function does.
            spe = max(1, int(getattr(model, "steps_per_execution", 1) or 1))
            if spe == 1:
                out = choose(1)[0](state, iterator)
                advance(1)
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
                    advance(batches.count)
                left -= batches.count
                state = out[1]
                if batches.count < k:
                    break
            return out

        return guarded(run, watch)

    # -- in the step -------------------------------------------------------------

    def _slots(self):
        """Where the next logged step, steps and rows sit in the metrics state
        (and the histogram ring's steps and rows, with histograms)."""
        ids = [id(v) for v in self.model.metrics_variables]
        return [ids.index(id(v)) for v in self._buffers()]

    def _wrap_loss(self, original):
        signature = _signature(original)

        def compute_loss_and_updates(*args, **kwargs):
            if not self._logging or not _training(signature, args, kwargs):
                return original(*args, **kwargs)
            self._outputs = {}
            try:
                result = original(*args, **kwargs)
            finally:
                outputs, self._outputs = self._outputs, None
            if not outputs:
                return result
            # The stats may only leave `jax.value_and_grad` through the
            # auxiliary output: in the metrics state, when it carries it
            # (Keras's own method does, as its 4th item) and the step threads
            # it back. Any other auxiliary output is the model's own: left
            # as it is.
            aux = result[1] if _is_pair(result) else None
            position = self._metrics_position(aux)
            if position is None:
                self._activations_unavailable(
                    "the model's `compute_loss_and_updates` returns its own "
                    "auxiliary output, without Keras's metrics state, and values "
                    "computed inside `jax.value_and_grad` can leave it only "
                    "through that output"
                )
                return result
            cols, stats = _stats.layer_outputs(
                outputs.values(), self.eps, self.layout.column
            )
            if not cols:
                return result
            self.layout.written.update(cols)
            self._act_cols = cols
            # Carried out of the gradient trace in the rows slot's last row
            # (the step writes its own row afterwards).
            rows_slot = self._slots()[2]
            metrics = list(aux[position])
            rows = metrics[rows_slot]
            metrics[rows_slot] = rows.at[-1, jnp.asarray(cols)].set(stats)
            return result[0], _replaced(aux, position, metrics)

        return compute_loss_and_updates

    def _metrics_position(self, aux):
        """The index of the metrics state in a `compute_loss_and_updates`
        auxiliary output (a tuple or list), or None: the item holding, at
        this hook's slots, values shaped like its three variables."""
        if not isinstance(aux, tuple | list):
            return None
        size = len(self.model.metrics_variables)
        slots = list(zip(self._slots(), self._buffers(), strict=True))
        for position in reversed(range(len(aux))):  # Keras's own: the last
            item = aux[position]
            if (
                isinstance(item, tuple | list)
                and len(item) == size
                and all(
                    tuple(getattr(item[slot], "shape", (None,))) == tuple(v.shape)
                    for slot, v in slots
                )
            ):
                return position
        return None

    def _activations_unavailable(self, why):
        """One GradientHealthWarning, once per hook, for the activation
        signals the logged step cannot carry out (the step runs unchanged).

        Through `on_unavailable(key, message)` when the callback sets it (its
        advisor: once per callback, `warn=False`, the event file's text),
        else `warnings.warn`.
        """
        noted = self.__dict__.setdefault("unavailable", {})
        key = ("no_activations",)
        if key in noted:
            return
        signals = ["activation_std"] + sorted({
            activation_signal(u.activation) for u in self.layout.units
        } - {None})  # fmt: skip
        noted[key] = message = (
            "GradientHealth: the activation signals of the training step "
            f"({', '.join(signals)}) are unavailable: {why}. Training itself is "
            "unchanged. Pass `data=` (a probe batch) to GradientHealth for the "
            "probe's activation signals."
        )
        report = getattr(self, "on_unavailable", None)
        if report is not None:
            report(key, message)
        else:
            warnings.warn(message, GradientHealthWarning, stacklevel=2)

    def _wrap_call(self, unit, original):
        def call(*args, **kwargs):
            output = original(*args, **kwargs)
            if self._outputs is not None:
                if unit.index not in self._outputs:
                    out = first_float(output)
                    if out is not None:
                        self._outputs[unit.index] = (unit, out)
            elif self._logging:
                self._activations_unavailable(
                    f"the training step calls layer {unit.name!r} outside "
                    "`model.compute_loss_and_updates` (in a loss function of its "
                    "own), and values computed inside `jax.value_and_grad` can "
                    "leave it only through its outputs"
                )
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

    def logged_step(self, original, histograms=False):
        def train_step(state, data):
            self.traces += 1
            self._grads, self._act_cols = None, []
            before = state[0]
            step_slot, steps_slot, rows_slot = self._slots()[:3]
            rows_in = state[3][rows_slot]
            self._logging = True
            try:
                logs, state = original(state, data)
            finally:
                self._logging = False
            trainable, non_trainable, optimizer_vars, metrics = state
            metrics = list(metrics)
            step = metrics[step_slot]
            rows, steps = metrics[rows_slot], metrics[steps_slot]
            if self._act_cols and rows is rows_in:
                # The step returned the metrics state it was given, not the
                # one that carried the activation statistics out.
                self.layout.written.difference_update(self._act_cols)
                self._act_cols = []
                self._activations_unavailable(
                    "the training step returns the metrics state it was given, "
                    "not the one `compute_loss_and_updates` returned"
                )
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
            if histograms:
                self._write_hist(metrics, step, grads, before, trainable)
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

    def _write_hist(self, metrics, step, grads, before, after):
        """Writes the step's histogram counts into its row of the ring."""
        if grads is None:
            return
        grads, scale = grads
        plan = self.update_plan(grads, self.model.trainable_variables)
        if not plan.units:
            return
        s = 1.0 if scale is None else jnp.float32(scale)
        signals = ([], [], [])
        for k in plan.kept:
            a, b = jnp.float32(after[k]), jnp.float32(before[k])
            for part, x in zip(signals, (jnp.float32(grads[k]) / s, a, a - b),
                               strict=True):  # fmt: skip
                part.append((x, False))
        counts = _stats.histogram_counts(
            signals, plan, lambda codes: jnp.bincount(codes, length=_histogram.CODES)
        )
        self.layout.hist_written.update(plan.unit_ids)
        steps_slot, rows_slot = self._slots()[3:]
        row = self.hist_row(step)
        rows = metrics[rows_slot]
        metrics[rows_slot] = rows.at[row, jnp.asarray(plan.unit_ids)].set(counts)
        metrics[steps_slot] = metrics[steps_slot].at[row].set(step)

    # -- on the host (after a state sync) ------------------------------------

    def read(self):
        steps = host_value(self.steps).astype(np.int64)
        rows = host_value(self.rows)
        return steps[:-1].copy(), rows[:-1].copy()

    def forget_rows(self):
        self.steps.assign(np.full([self.capacity], -1, np.int32))
        if self.histograms:
            self.hist_steps.assign(np.full([self.hist_capacity], -1, np.int32))

    def read_histograms(self):
        """`(steps, counts)` of the histogram ring, read with the rows."""
        steps = host_value(self.hist_steps).astype(np.int64)
        return steps, host_value(self.hist_rows)

    def read_counter(self):
        return self.step

    def set_counter(self, step):
        # Assigned every time, even to the same number: after a step that
        # raised, the host has counted a batch the device never stepped.
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


def _signature(function):
    try:
        return inspect.signature(function)
    except (TypeError, ValueError):
        return None


def _training(signature, args, kwargs):
    """The `training` argument of a `compute_loss_and_updates` call, passed by
    keyword (as Keras and the keras.io guides do) or by position; True when
    the method takes none (it is called in the training step)."""
    if "training" in kwargs:
        return kwargs["training"]
    if signature is None:
        return False
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError:
        return False
    bound.apply_defaults()
    return bound.arguments.get("training", True)


def _is_pair(result):
    return isinstance(result, tuple | list) and len(result) == 2


def _replaced(aux, position, item):
    """`aux` (a tuple, named tuple or list) with its item `position` replaced."""
    items = list(aux)
    item_type = type(aux[position])
    items[position] = item if item_type is list else item_type(item)
    if isinstance(aux, list):
        return items
    return type(aux)(*items) if hasattr(aux, "_fields") else type(aux)(items)


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
