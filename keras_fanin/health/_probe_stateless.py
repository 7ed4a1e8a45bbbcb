"""The optional probe batch on JAX and torch, through `model.stateless_call`.

The same measurement as `_probe_tf`: a training-mode (or inference-mode)
forward pass that changes no state (stateless: the new non-trainable values
are dropped), the loss gradient, and the per-layer reductions, returned as
one vector laid out as a buffer row plus the loss. Only the gradient call is
the backend's own: `jax.value_and_grad` under `jax.jit`, or
`torch.autograd.grad`.
"""

import inspect

import keras
import numpy as np

from keras_fanin.health import _stats
from keras_fanin.health._hosts import host_value
from keras_fanin.health._layout import Layout
from keras_fanin.health._probe_data import ProbeBase
from keras_fanin.health._units import Capture, find_units, first_float, weight_slots


def _accepts_training(model):
    """Whether `model.call` takes `training` (as Keras checks before passing it)."""
    parameters = inspect.signature(model.call).parameters.values()
    return any(
        p.name == "training" or p.kind is inspect.Parameter.VAR_KEYWORD
        for p in parameters
    )


class StatelessProbe(ProbeBase):
    """A fixed probe batch and the function that measures it, on JAX or torch."""

    @property
    def batch(self):
        return self.numpy_batch

    def prepare(self, model):
        self._tensors = keras.tree.map_structure(
            lambda a: None if a is None else keras.ops.convert_to_tensor(a),
            self.numpy_batch,
            none_is_leaf=True,
        )
        return super().prepare(model, self._tensors[0])

    def _build(self, model):
        self.units = find_units(model)
        self.layout = Layout(self.units)
        self._slots = weight_slots(self.units, model.trainable_variables)
        self._fn = (
            self._jax_function()
            if keras.backend.backend() == "jax"
            else self._torch_measure
        )
        self._vector()  # a probe that does not fit fails here

    def _loss(self, trainable, x, y, sample_weight):
        """The stateless forward pass and loss; `(loss, {column: stat})`."""
        model = self.model
        non_trainable = [v.value for v in model.non_trainable_variables]
        metrics = [v.value for v in model.metrics_variables]
        kwargs = {"training": self.training} if _accepts_training(model) else {}
        with Capture(self.units) as capture:
            y_pred, _ = model.stateless_call(trainable, non_trainable, x, **kwargs)
        if self.has_loss:
            loss, _ = model.stateless_compute_loss(
                trainable, non_trainable, metrics, x=x, y=y, y_pred=y_pred,
                sample_weight=sample_weight, training=self.training,
            )  # fmt: skip
        else:  # activations only; no gradient is read
            loss = keras.ops.zeros(())
        values = {}
        for unit in self.units:
            out = first_float(capture.outputs.get(unit.index))
            if out is None:
                continue
            for signal, value in _stats.output_stats(
                unit.layer, out, unit.activation, self.eps
            ).items():
                values[self.layout.column(unit.index, signal)] = value
        return loss, values

    def _row(self, loss, values, grads, trainable):
        col = self.layout.column
        for unit, slots in zip(self.units, self._slots, strict=True):
            if not slots or not self.has_loss:
                continue
            unit_grads = [grads[i] for i in slots if grads[i] is not None]
            values[col(unit.index, "grad_norm")] = keras.ops.sqrt(
                _stats.sum_of_squares(unit_grads)
            )
            values[col(unit.index, "grad_bad")] = _stats.nonfinite_code(unit_grads)
            values[col(unit.index, "weight_bad")] = _stats.nonfinite_code(
                [trainable[i] for i in slots]
            )
        self.layout.written = set(values)
        row = [keras.ops.convert_to_tensor(np.float32(np.nan))] * self.layout.width
        for c, value in values.items():
            row[c] = keras.ops.reshape(keras.ops.cast(value, "float32"), ())
        return keras.ops.stack([*row, keras.ops.cast(loss, "float32")])

    def _jax_function(self):
        import jax

        def vector(trainable, x, y, sample_weight):
            (loss, values), grads = jax.value_and_grad(
                lambda tv: self._loss(tv, x, y, sample_weight), has_aux=True
            )(trainable)
            return self._row(loss, values, grads, trainable)

        jitted = jax.jit(vector)
        return lambda trainable, *batch: jitted(trainable, *batch)

    def _torch_measure(self, trainable, x, y, sample_weight):
        import torch

        leaves = [t.detach().requires_grad_(True) for t in trainable]
        # An unseeded Dropout draws its mask from torch's global generator
        # (Keras's torch fast path), which stateless_call cannot keep apart:
        # fork it, or every probe would change the masks training draws next.
        device = leaves[0].device if leaves else torch.device("cpu")
        accelerated = device.type != "cpu"
        with torch.random.fork_rng(
            devices=[device.index or 0] if accelerated else [],
            device_type=device.type if accelerated else None,
        ):
            loss, values = self._loss(leaves, x, y, sample_weight)
        grads = (
            torch.autograd.grad(loss, leaves, allow_unused=True)
            if self.has_loss
            else [None] * len(leaves)
        )
        with torch.no_grad():
            values = {c: v.detach() for c, v in values.items()}
            return self._row(loss.detach(), values, list(grads), leaves)

    def _vector(self):
        trainable = [v.value for v in self.model.trainable_variables]
        return host_value(self._fn(trainable, *self._tensors))
