"""What every backend's step hook shares: its settings and the wrapping.

A hook wraps instance attributes (`model.train_step`, the optimizer's apply,
each unit's `call`) while `fit()` runs; `uninstall` puts back exactly what
was there and makes Keras trace its own train function again.
"""

import keras

from keras_fanin._patch import Patches


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

    def _set(self, obj, name, value):
        self._patches.set(obj, name, value)

    @property
    def installed(self):
        return bool(self._patches)

    def uninstall(self):
        self._patches.restore()
        # The traced function holds the wrappers: make Keras trace its own.
        self.model.train_function = None

    def units_of(self, variables):
        """The index of the unit owning each variable (None for none)."""
        unit_of = {
            id(v): unit.index
            for unit in self.layout.units
            for v in unit.layer.trainable_weights
        }
        return [unit_of.get(id(v)) for v in variables]
