"""What every backend's step hook shares: its settings and the wrapping.

A hook wraps instance attributes (`model.train_step`, the optimizer's apply,
each unit's `call`) while `fit()` runs; `uninstall` puts back exactly what
was there and makes Keras trace its own train function again.
"""

from typing import NamedTuple

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
    cols: list  # buffer columns: signal by signal, unit by unit; then clipping
    clipped: bool  # whether the two clipping columns end `cols`


class StepHook:
    """Base of `TFStepHook`, `JaxStepHook` and `TorchStepHook`."""

    def __init__(self, model, layout, every_n_steps, capacity, saturation_eps,
                 activations):  # fmt: skip
        self.model, self.layout = model, layout
        self.every_n, self.capacity = every_n_steps, capacity
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

    def usable(self):
        """Whether this hook still fits its model (same model and optimizer
        assumed); a recompile may have replaced what it keeps state in."""
        return True

    def _set(self, obj, name, value):
        self._patches.set(obj, name, value)

    @property
    def installed(self):
        return bool(self._patches)

    def uninstall(self):
        self._patches.restore()
        # The traced function holds the wrappers: make Keras trace its own.
        self.model.train_function = None

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
        clipped = bool(kept) and bool(self.global_clipnorm or self.clipnorm)
        if clipped:
            cols += [
                self.layout.global_column("clip/global_grad_norm"),
                self.layout.global_column("clip/factor"),
            ]
        return UpdatePlan(kept, segments, len(units), signals, cols, clipped)

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
