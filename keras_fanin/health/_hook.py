"""What every backend's step hook shares: its settings, the wrapping, and the
`Watch` that runs the hooks of one model.

A hook wraps instance attributes (the optimizer's apply, each unit's `call`)
while `fit()` runs; the model's `Watch` owns `model.train_step`,
`model.train_function` and `model.make_train_function` for all the hooks on
it (two GradientHealth callbacks in one `fit()` each get their own steps).
`uninstall` puts back exactly what was there and makes Keras trace its own
train function again. A `fit()` that ends without `on_train_end` (an
exception, an interrupt) is cleaned up by the watch: at once when it is
raised in the step, else at the model's next `make_train_function()`, which
Keras calls at the start of every `fit()` and `train_on_batch()`.
"""

import itertools
from typing import Any, NamedTuple

import keras

from keras_fanin._patch import Patches
from keras_fanin.health import _stats
from keras_fanin.health._layout import NONFINITE


class UpdatePlan(NamedTuple):
    """What a logged step reduces of the optimizer's update, fixed at trace
    time: `_stats.update_values` turns per-variable sums into `cols`."""

    kept: list  # positions of the variables with a gradient
    segments: list  # each kept variable's unit, as a segment id (units: none)
    units: int  # how many units own a kept variable
    signals: tuple  # per-unit signals, in the order of `cols`
    cols: list  # buffer columns: signal by signal, unit by unit; then the
    # global gradient norm (when a variable has a gradient), then clipping
    clipped: bool  # whether the two clipping columns end `cols`
    unit_ids: list  # the layout's index of each segment's unit


class Watch:
    """The hooks on one model, and the train function that runs them.

    Keras's `make_train_function` binds whatever `model.train_step` is. For
    a choice of which hooks log a step (`active`, one bool per hook), the
    watch stacks each hook's logged or plain step over the model's own and
    makes Keras's train function around it, once per choice; the backend's
    `dispatch` picks one per step on the host.
    """

    def __init__(self, model):
        self.model = model
        self.hooks = []
        self.functions = {}
        self.make = model.make_train_function  # Keras's own
        self.step = model.train_step  # the model's own step
        self._patches = Patches()
        self._patches.set(model, "train_step", self.step)
        self._patches.set(model, "make_train_function", self._make_elsewhere)
        self.train_function = None

    @classmethod
    def of(cls, model):
        watch = _watches.get(id(model))
        if watch is None or watch.model is not model:
            watch = _watches[id(model)] = cls(model)
        return watch

    def add(self, hook):
        hook.watch = self
        hook.install_wrappers()
        self.hooks.append(hook)
        self._rebuild()

    def remove(self, hook):
        if hook not in self.hooks:
            return
        self.hooks.remove(hook)
        hook.restore_wrappers()
        if self.hooks:
            # Made again only if a step runs: a hook goes at the end of its
            # fit(), when the others go too (an abort in a distributed JAX
            # epoch could not make them then).
            self.functions.clear()
            self.train_function = self.model.train_function = self._remade
            return
        self._patches.restore()
        self.functions.clear()
        # The traced function holds the wrappers: make Keras trace its own.
        self.model.train_function = None
        if _watches.get(id(self.model)) is self:
            del _watches[id(self.model)]

    def abort(self):
        """Ends every hook's fit: what they hold is written, all is restored."""
        for hook in reversed(self.hooks):
            if hook.on_abort is not None:
                hook.on_abort()
        for hook in reversed(list(self.hooks)):
            self.remove(hook)

    def function(self, active, made_from=None):
        """Keras's train function around the step with `active` hooks logging:
        one mode per hook, `PLAIN`, `LOGGED` or `HISTOGRAMS` (logged, with
        the histograms).

        Kept by the first hook across `fit()` calls, keyed by what it was made
        from: a later `fit()` of the same compiled model runs the functions
        already traced, as Keras's own `fit()` does, instead of tracing anew.
        """
        function = self.functions.get(active)
        if function is not None:
            return function
        key = (active, made_from or self._made_from())
        made = self.hooks[0].made
        function = made.get(key)
        if function is None:
            step = self.step
            for hook, mode in zip(self.hooks, active, strict=True):
                step = (
                    hook.logged_step(step, histograms=mode == HISTOGRAMS)
                    if mode
                    else hook.plain_step(step)
                )
            object.__setattr__(self.model, "train_step", step)
            try:
                self.make(force=True)
            finally:
                object.__setattr__(self.model, "train_step", self.step)
            function = made[key] = self.model.train_function
        self.functions[active] = function
        self.model.train_function = self.train_function
        return function

    def _made_from(self):
        """What a made train function depends on: the hooks, the model's own
        step, its compilation (a `compile()` makes a new loss tracker) and
        the variables it trains."""
        model = self.model
        metrics = model.metrics
        return (
            tuple(id(hook) for hook in self.hooks),
            id(getattr(self.step, "__func__", self.step)),
            id(model.optimizer),
            id(metrics[0]) if metrics else None,
            int(getattr(model, "steps_per_execution", 1) or 1),
            repr(getattr(model, "jit_compile", None)),
            bool(getattr(model, "run_eagerly", False)),
            tuple(id(v) for v in model.trainable_variables),
        )

    def make_all(self):
        """Makes the function of every choice now, before `fit()` steps: on
        JAX, Keras purges the variables during a distributed epoch, and
        making one then fails. Making costs no tracing (that comes with a
        function's first call), so only the choices that run are traced."""
        made_from = self._made_from()
        for active in itertools.product(*(hook.modes for hook in self.hooks)):
            self.function(active, made_from)

    def _remade(self, *args):
        self._rebuild()
        return self.train_function(*args)

    def _rebuild(self):
        self.functions.clear()
        self.train_function = type(self.hooks[0]).train_function_for(self)
        self.model.train_function = self.train_function

    def _make_elsewhere(self, force=False):
        # A fit() or train_on_batch() starting while hooks are in: the fit()
        # that put them in ended without `on_train_end`.
        self.abort()
        return self.model.make_train_function(force=force)


_watches: dict[int, Any] = {}  # id(model) -> its Watch while hooks are on it

# What a hook does in a step: nothing, log it, or log it with histograms.
PLAIN, LOGGED, HISTOGRAMS = 0, 1, 2


def guarded(function, watch, end_of_data=(StopIteration,)):
    """`function` (a train function), ending the watch's fit() when it raises
    anything but `end_of_data` (the data ran out: no step ran)."""

    def train_function(*args):
        try:
            return function(*args)
        except end_of_data:
            raise
        except BaseException:
            watch.abort()
            raise

    return train_function


class StepHook:
    """Base of `TFStepHook`, `JaxStepHook` and `TorchStepHook`."""

    def __init__(self, model, layout, every_n_steps, capacity, saturation_eps,
                 activations, histograms=None):  # fmt: skip
        self.model, self.layout = model, layout
        self.every_n, self.capacity = every_n_steps, capacity
        # Histograms every `histograms` logged steps, in a ring of their own
        # that a flush empties as it does the rows' (None: none).
        self.histograms = histograms
        self.hist_capacity = -(-capacity // histograms) + 1 if histograms else 0
        self.modes = (PLAIN, LOGGED, HISTOGRAMS) if histograms else (PLAIN, LOGGED)
        self.eps, self.activations = saturation_eps, activations
        self.optimizer = model.optimizer
        self.loss_scaled = isinstance(
            self.optimizer, keras.optimizers.LossScaleOptimizer
        )
        # Clipping is configured on the optimizer that applies the update.
        inner = getattr(self.optimizer, "inner_optimizer", self.optimizer)
        self.clipnorm = getattr(inner, "clipnorm", None)
        self.global_clipnorm = getattr(inner, "global_clipnorm", None)
        self._patches = Patches()
        self.traces = 0  # train_step traces, for tests of retracing
        self.applied = False  # whether the step reached the optimizer
        self.watch = None
        self.made = {}  # train functions made with this hook first, kept
        self.on_abort = None  # called when the watch ends a fit() early
        # `(key, message)`: a signal the step cannot give (the callback's
        # advisor warns once and logs it).
        self.on_unavailable = None

    def usable(self):
        """Whether this hook still fits its model (same model and optimizer
        assumed); a recompile may have replaced what it keeps state in."""
        return True

    def _set(self, obj, name, value):
        self._patches.set(obj, name, value)

    def mode(self, step):
        """`PLAIN`, `LOGGED` or `HISTOGRAMS`: what this hook does at `step`."""
        if step % self.every_n:
            return PLAIN
        if self.histograms and (step // self.every_n) % self.histograms == 0:
            return HISTOGRAMS
        return LOGGED

    def hist_row(self, step):
        """The histogram ring's row of a histogram step."""
        return (step // (self.every_n * self.histograms)) % self.hist_capacity

    @property
    def installed(self):
        return self.watch is not None and self in self.watch.hooks

    def install(self):
        Watch.of(self.model).add(self)

    def uninstall(self):
        if self.watch is not None:
            self.watch.remove(self)

    def install_wrappers(self):
        """Wraps the optimizer's apply and the units' calls (per backend)."""
        raise NotImplementedError

    def restore_wrappers(self):
        self._patches.restore()

    def forget_rows(self):
        """Marks every buffer row unwritten (its step number -1)."""
        raise NotImplementedError

    def plain_step(self, inner):
        def train_step(*args, **kwargs):
            # Keras's own step: traced with every wrapper passing through.
            self.traces += 1
            return inner(*args, **kwargs)

        return train_step

    def update_plan(self, grads, variables):
        """The `UpdatePlan` of one `optimizer.apply(grads, variables)`."""
        owners = self.units_of(variables)
        kept = [k for k, g in enumerate(grads) if g is not None]
        units = sorted({owners[k] for k in kept if owners[k] is not None})
        # A variable no unit owns sums into one more segment, dropped.
        segments = [
            units.index(owners[k]) if owners[k] is not None else len(units)
            for k in kept
        ]
        signals = ("grad_norm", "update_ratio", "weight_norm", "weight_bad")
        if not self.loss_scaled:
            # Under loss scaling, non-finite gradients are routine: the step is
            # skipped and the scale lowered. Only weights are checked.
            signals += ("grad_bad",)
        cols = [self.layout.column(u, s) for s in signals for u in units]
        if kept:
            cols.append(self.layout.global_column("global_grad_norm"))
        clipped = bool(kept) and bool(self.global_clipnorm or self.clipnorm)
        if clipped:
            cols += [
                self.layout.global_column("clip/global_grad_norm"),
                self.layout.global_column("clip/factor"),
            ]
        return UpdatePlan(kept, segments, len(units), signals, cols, clipped, units)

    def row_values(self, pending, outputs):
        """`(cols, vector, bad)` of one logged step, for its one write.

        `pending` is `[(cols, vector)]` from the optimizer's apply, `outputs`
        `[(unit, output)]` from the forward pass; a column written twice (two
        `apply` calls in one step) keeps its last value. `bad` are the
        positions of the non-finite codes. `(None, None, None)` for none.
        """
        cols, parts = [], []
        for part_cols, values in pending:
            cols += part_cols
            parts.append(values)
        out_cols, values = _stats.layer_outputs(outputs, self.eps, self.layout.column)
        if out_cols:
            cols += out_cols
            parts.append(values)
        if not cols:
            return None, None, None
        updates = keras.ops.concatenate(parts, 0)
        last = {c: i for i, c in enumerate(cols)}
        if len(last) < len(cols):
            keep = sorted(last.values())
            cols, updates = [cols[i] for i in keep], keras.ops.take(updates, keep)
        self.layout.written.update(cols)
        bad = [i for i, c in enumerate(cols) if self.layout.signal_of(c) in NONFINITE]
        return cols, updates, bad

    def units_of(self, variables):
        """The index of the unit owning each variable (None for none)."""
        unit_of = {
            id(v): unit.index
            for unit in self.layout.units
            for v in unit.layer.trainable_weights
        }
        return [unit_of.get(id(v)) for v in variables]
