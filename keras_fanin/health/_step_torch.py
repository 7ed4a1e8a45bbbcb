"""The real training step on PyTorch: the same signals as `_step_tf`, eagerly.

Keras's torch step runs eagerly, so Python knows every step: on a logged step
the wrappers reduce on the device (fused multi-tensor norms, as torch's own
`clip_grad_norm_` computes them) and write one row of a device tensor with no
host sync; other steps cost nothing but a Python comparison. The host copies
the buffer once per flush. The wrapped attributes are those of `_step_tf`:
`model.train_step`, `optimizer.apply` and each unit's `call`. With
`histograms=k`, every `k`-th logged step also buckets the gradient, the
weights and the update (`_stats.histogram_counts`) into a second ring.
"""

import keras
import numpy as np
import torch

from keras_fanin.health import _stats
from keras_fanin.health._hook import HISTOGRAMS, PLAIN, StepHook
from keras_fanin.health._units import first_float
from keras_fanin_logs import _histogram
from keras_fanin_logs._signals import HISTOGRAMS as HIST_SIGNALS


def _norms(tensors):
    """L2 norm of each tensor, in float32, in as few kernels as torch allows."""
    tensors = [t.float() for t in tensors]
    foreach_norm = getattr(torch, "_foreach_norm", None)
    if foreach_norm is not None:
        return torch.stack(foreach_norm(tensors))
    return torch.stack([torch.linalg.vector_norm(t) for t in tensors])


class TorchStepHook(StepHook):
    """Installs the wrappers on one compiled model and owns its buffer."""

    def __init__(self, model, layout, every_n_steps, capacity, saturation_eps,
                 activations, start_step, histograms=None):  # fmt: skip
        super().__init__(
            model, layout, every_n_steps, capacity, saturation_eps, activations,
            histograms,
        )  # fmt: skip
        device = keras.ops.convert_to_tensor(0.0).device
        self.rows = torch.full((capacity, layout.width), float("nan"), device=device)
        self.steps = np.full([capacity], -1, np.int64)  # the host knows each step
        self.step = start_step
        self._nonfinite = torch.zeros((), dtype=torch.bool, device=device)
        self._logging = False
        self._values, self._outputs = [], {}
        self._indices = {}
        self._before = {}  # copies of the weights before a logged update
        self._hist = False  # this step writes histograms
        if histograms:
            self.hist_rows = torch.zeros(
                (self.hist_capacity, len(layout.units), len(HIST_SIGNALS),
                 _histogram.BINS + 1),
                dtype=torch.int32, device=device,
            )  # fmt: skip
            self.hist_steps = np.full([self.hist_capacity], -1, np.int64)

    # -- install / uninstall -------------------------------------------------

    def install_wrappers(self):
        model = self.model
        # Keras's torch train function looks `model.train_step` up per step.
        self._set(model, "train_step", self.logged_step(model.train_step))
        self._set(self.optimizer, "apply", self._wrap_apply(self.optimizer.apply))
        if self.activations:
            for unit in self.layout.units:
                self._set(unit.layer, "call", self._wrap_call(unit, unit.layer.call))

    @staticmethod
    def train_function_for(watch):
        watch.make(force=True)
        return watch.model.train_function

    def restore_wrappers(self):
        super().restore_wrappers()
        self._before.clear()

    # -- in the step -------------------------------------------------------------

    def logged_step(self, original):
        def train_step(*args, **kwargs):
            mode = self.mode(self.step)
            self._logging, self._hist = mode != PLAIN, mode == HISTOGRAMS
            self._values, self._outputs = [], {}
            try:
                logs = original(*args, **kwargs)
            except BaseException:
                self._logging = False
                if self.watch is not None:
                    self.watch.abort()
                raise
            finally:
                logged, self._logging = self._logging, False
            if logged:
                self._write_row()
            self.step += 1
            return logs

        return train_step

    def _wrap_call(self, unit, original):
        def call(*args, **kwargs):
            output = original(*args, **kwargs)
            if self._logging and unit.index not in self._outputs:
                out = first_float(output)
                if out is not None:
                    self._outputs[unit.index] = (unit, out.detach())
            return output

        return call

    def _wrap_apply(self, original):
        def apply(grads, trainable_variables=None):
            self.applied = True
            if not self._logging:
                if trainable_variables is None:
                    return original(grads)
                return original(grads, trainable_variables=trainable_variables)
            grads = list(grads)
            variables = (
                list(trainable_variables)
                if trainable_variables is not None
                else list(self.model.trainable_variables)
            )
            plan = self.update_plan(grads, variables)
            if not plan.cols:
                if trainable_variables is None:
                    return original(grads)
                return original(grads, trainable_variables=trainable_variables)
            kept = [variables[k].value.detach() for k in plan.kept]
            with torch.no_grad():
                # The optimizer updates the weights in place: keep a copy, in
                # buffers kept across steps (a fresh allocation per step
                # costs more than the copy on a CPU).
                b_norms = _norms(kept)
                before = self._buffers([variables[k] for k in plan.kept], kept)
                for buffer, weight in zip(before, kept, strict=True):
                    buffer.copy_(weight)
            result = (
                original(grads)
                if trainable_variables is None
                else original(grads, trainable_variables=trainable_variables)
            )
            with torch.no_grad():
                after = [variables[k].value.detach() for k in plan.kept]
                self._update_stats(grads, plan, after, before, b_norms)
                if self._hist and plan.units:
                    self._write_hist(grads, plan, after, before)
            return result

        return apply

    def _buffers(self, variables, weights):
        """Tensors shaped like `weights`, made once per set of `variables`
        (keyed by the Keras variables: `.value.detach()` is a new tensor
        object on every call)."""
        key = tuple(id(v) for v in variables)
        if key not in self._before:
            self._before[key] = [torch.empty_like(w) for w in weights]
        return self._before[key]

    def _update_stats(self, grads, plan, after, before, b_norms):
        g_norms = _norms([grads[k] for k in plan.kept])
        if self.loss_scaled:
            scale = keras.ops.convert_to_tensor(self.optimizer.dynamic_scale)
            g_norms = g_norms / scale.float()
        a_norms = _norms(after)
        for buffer, weight in zip(before, after, strict=True):
            buffer.sub_(weight)  # in place: the update, negated
        sums = torch.stack([g_norms, a_norms, b_norms, _norms(before)], 1) ** 2
        values = _stats.update_values(sums, plan, self.clipnorm, self.global_clipnorm)
        self._values.append((plan.cols, values))

    def _write_hist(self, grads, plan, after, negated_updates):
        """Writes the histogram counts of this step into its ring row (the
        copies of the weights before now hold the update, negated)."""
        scale = None
        if self.loss_scaled:
            scale = keras.ops.convert_to_tensor(self.optimizer.dynamic_scale).float()
        gs = [grads[k].float() for k in plan.kept]
        if scale is not None:
            gs = [g / scale for g in gs]
        signals = (
            [(g, False) for g in gs],
            [(a, False) for a in after],
            [(u, True) for u in negated_updates],
        )
        counts = _stats.histogram_counts(
            signals,
            plan,
            lambda codes: torch.bincount(codes, minlength=_histogram.CODES).int(),
        )
        row = self.hist_row(self.step)
        key = ("hist", *plan.unit_ids)
        if key not in self._indices:
            self._indices[key] = torch.tensor(
                plan.unit_ids, device=self.hist_rows.device
            )
        self.hist_rows[row, self._indices[key]] = counts
        self.hist_steps[row] = self.step
        self.layout.hist_written.update(plan.unit_ids)

    def _write_row(self):
        with torch.no_grad():
            cols, updates, bad = self.row_values(self._values, self._outputs.values())
        if not cols:
            return
        row = (self.step // self.every_n) % self.capacity
        key = tuple(cols)
        if key not in self._indices:  # the same columns every logged step
            self._indices[key] = torch.tensor(cols, device=self.rows.device)
        self.rows[row, self._indices[key]] = updates
        self.steps[row] = self.step
        if bad:
            self._nonfinite |= (updates[bad] > 0).any()

    # -- on the host -------------------------------------------------------------

    def read(self):
        """`(steps, rows)` of the buffer: the one device-to-host copy of a flush."""
        return self.steps.copy(), self.rows.cpu().numpy()

    def forget_rows(self):
        self.steps[:] = -1
        if self.histograms:
            self.hist_steps[:] = -1

    def read_histograms(self):
        """`(steps, counts)` of the histogram ring: one device-to-host copy."""
        return self.hist_steps.copy(), self.hist_rows.cpu().numpy()

    def read_counter(self):
        return self.step

    def set_counter(self, step):
        self.step = step

    def nonfinite(self):
        return bool(self._nonfinite.item())
