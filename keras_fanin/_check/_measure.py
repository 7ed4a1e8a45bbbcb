"""The pass `check` measures: one training-mode forward and backward pass that
changes no state, with every leaf layer's call recorded."""

import math

import keras
import numpy as np

from keras_fanin._check._layers import NORMALIZATION, inner, layer_activation
from keras_fanin._fans import sublayers
from keras_fanin._numpy import to_numpy
from keras_fanin._patch import Patches
from keras_fanin.health import _stats
from keras_fanin.health._units import first_float

SATURATION_EPS = 1e-3  # GradientHealth's default


SEED = 0


def _std(x):
    """The std of a tensor in float32, scaled first so that 1e27-sized
    activations (a 30-layer net drawn with std 1) do not overflow their squares."""
    x = keras.ops.cast(keras.ops.stop_gradient(x), "float32")
    scale = keras.ops.max(keras.ops.abs(x))
    ok = keras.ops.logical_and(keras.ops.isfinite(scale), scale > 0)
    scale = keras.ops.where(ok, scale, 1.0)
    s = x / scale
    centred = s - keras.ops.mean(s)
    return scale * keras.ops.sqrt(keras.ops.mean(keras.ops.square(centred)))


def _floats(structure):
    return [
        t
        for t in keras.tree.flatten(structure)
        if getattr(t, "dtype", None) is not None
        and not isinstance(t, np.ndarray)
        and keras.backend.standardize_dtype(t.dtype).startswith(("float", "bfloat"))
    ]


# Where a sigmoid gate is within `SATURATION_EPS` of 0 or 1.
_GATE_SATURATION = math.log((1 - SATURATION_EPS) / SATURATION_EPS)


def _gate_saturation(inputs, kernel):
    """The fraction of an RNN's gate pre-activations from its inputs alone,
    `inputs @ kernel` (the part computed before its loop), whose sigmoid is
    within `SATURATION_EPS` of 0 or 1."""
    x = keras.ops.reshape(keras.ops.cast(inputs, "float32"), (-1, kernel.shape[0]))
    z = keras.ops.matmul(x, keras.ops.cast(kernel, "float32"))
    return keras.ops.mean(
        keras.ops.cast(keras.ops.abs(z) > _GATE_SATURATION, "float32")
    )


def _attention_saturation(query, key):
    """`_softmax_saturation` of the attention weights `softmax(q . k /
    sqrt(key_dim))` over the keys, from projections `(batch, positions, heads,
    key_dim)` (key heads repeated to the query's, as grouped-query attention
    shares them); masks aside. None for other shapes."""
    if len(query.shape) != 4 or len(key.shape) != 4:
        return None
    heads, key_heads = query.shape[2], key.shape[2]
    if heads != key_heads:
        if not heads or not key_heads or heads % key_heads:
            return None
        key = keras.ops.repeat(key, heads // key_heads, axis=2)
    query = keras.ops.cast(query, "float32")
    key = keras.ops.cast(key, "float32")
    scores = keras.ops.einsum("bqhd,bkhd->bhqk", query, key)
    scores = scores / math.sqrt(max(1, int(query.shape[-1])))
    return _softmax_saturation(keras.ops.softmax(scores, axis=-1))


def _softmax_saturation(probabilities):
    """The fraction of softmax outputs whose largest probability is within
    `SATURATION_EPS` of 1: one-hot already, where the gradient vanishes."""
    top = keras.ops.max(keras.ops.cast(probabilities, "float32"), axis=-1)
    return keras.ops.mean(keras.ops.cast(top > 1.0 - SATURATION_EPS, "float32"))


class Recorder:
    """Wraps each leaf layer's `call` for one pass and records every call: the
    layer, its input and output tensors (for the graph, kept alive so that no
    id is reused) and its statistics as backend scalars (`stats[call]`). A
    kernel layer's own `activation` is wrapped too, for the pre-activation;
    the input's std is kept for kernel and normalization layers, and an RNN's
    gate saturation (`gates`: `{unit: [input kernels]}`)."""

    def __init__(self, units, kernel_keys, gates):
        self.units, self.kernel_keys, self.gates = units, kernel_keys, gates
        self.input_keys = kernel_keys | {
            u.index for u in units if isinstance(u.layer, NORMALIZATION)
        }
        self.calls, self.stats = [], []  # (unit index, inputs, outputs); dicts
        self.model_outputs = []
        self._open, self._patches, self._projections = {}, Patches(), {}

    def _wrap_call(self, unit):
        original = unit.layer.call
        activation = layer_activation(unit.layer)

        def call(*args, **kwargs):
            stats = {}
            self._open[unit.index] = stats
            output = original(*args, **kwargs)
            self.calls.append(
                (
                    unit.index,
                    keras.tree.flatten((args, kwargs)),
                    keras.tree.flatten(output),
                )
            )
            self.stats.append(stats)
            out = first_float(output)
            if out is not None:
                stats["out_std"] = _std(out)
                signals = _stats.output_stats(
                    unit.layer, out, activation, SATURATION_EPS
                )
                stats["out_bad"] = signals["activation_bad"]
                for name, value in signals.items():
                    if name.startswith(("dead", "saturated")):
                        stats[name] = value
                if activation == "softmax":
                    stats["saturated_softmax_fraction"] = _softmax_saturation(out)
            projections = self._projections.pop(unit.index, {})
            if "query" in projections and "key" in projections:
                saturation = _attention_saturation(
                    projections["query"], projections["key"]
                )
                if saturation is not None:
                    stats["saturated_softmax_fraction"] = saturation
            if unit.index in self.input_keys:
                inputs = _floats((args, kwargs))
                if inputs:
                    stats["input_std"] = _std(inputs[0])
                    kernels = [
                        k
                        for k in self.gates.get(unit.index, ())
                        if inputs[0].shape[-1] == k.shape[0]
                    ]
                    if kernels:
                        stats["saturated_gates_fraction"] = keras.ops.mean(
                            keras.ops.stack(
                                [_gate_saturation(inputs[0], k) for k in kernels]
                            )
                        )
            return output

        return call

    def _wrap_projection(self, unit, role, original):
        """An attention layer's query or key projection: its first output is
        kept, for the attention weights (which Keras computes in one fused
        op when it can, with no `Softmax` layer to watch)."""

        def call(*args, **kwargs):
            output = original(*args, **kwargs)
            stats = self._open.get(unit.index)
            if stats is not None:
                self._projections.setdefault(unit.index, {}).setdefault(role, output)
            return output

        return call

    def _wrap_activation(self, unit, original):
        def activation(x, *args, **kwargs):
            stats = self._open.get(unit.index)
            if stats is not None and "pre_std" not in stats:
                stats["pre_std"] = _std(x)
            return original(x, *args, **kwargs)

        return activation

    def __enter__(self):
        for unit in self.units:
            layer, key = unit.layer, unit.index
            self._patches.set(layer, "call", self._wrap_call(unit))
            if key in self.kernel_keys:
                for sub in sublayers(layer):
                    if sub.name in ("query", "key") and isinstance(
                        sub, keras.layers.EinsumDense
                    ):
                        self._patches.set(
                            sub, "call", self._wrap_projection(unit, sub.name, sub.call)
                        )
            target = inner(layer)
            own = vars(target).get("activation")
            if (
                key in self.kernel_keys
                and callable(own)
                and not isinstance(target, keras.layers.RNN)
            ):
                self._patches.set(
                    target, "activation", self._wrap_activation(unit, own)
                )
        return self

    def __exit__(self, *exc):
        self._patches.restore()


def _projection_loss(outputs):
    """`sum(y * r) / batch` over the float outputs, `r` fixed standard normal."""
    rng = np.random.default_rng(SEED)
    total = keras.ops.convert_to_tensor(0.0, "float32")
    for y in _floats(outputs):
        r = rng.standard_normal(tuple(y.shape)).astype("float32")
        batch = max(1, int(y.shape[0])) if len(y.shape) else 1
        y = keras.ops.cast(y, "float32")
        total = total + keras.ops.sum(y * keras.ops.convert_to_tensor(r)) / batch
    return total


def forward_backward(model, x, recorder):
    """One training-mode pass that changes no state, and the loss gradient.

    Returns `(outputs, stats, grads)`: the model's outputs, the recorder's
    statistics as floats, and one gradient per trainable variable (or None).
    """
    variables = list(model.trainable_variables)
    backend = keras.backend.backend()

    def forward(mapping):
        with keras.StatelessScope(state_mapping=mapping), recorder:
            outputs = model(x, training=True)
        # The tensors the recorded calls produced (JAX's tracers), for the graph.
        recorder.model_outputs = keras.tree.flatten(outputs)
        return outputs, _projection_loss(outputs)

    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            outputs, loss = forward(None)
        grads = tape.gradient(loss, variables) if variables else []
        stats = recorder.stats
    elif backend == "jax":
        import jax

        def f(values):
            outputs, loss = forward(list(zip(variables, values, strict=True)))
            return loss, (outputs, recorder.stats)

        values = [v.value for v in variables]
        (_, (outputs, stats)), grads = jax.value_and_grad(f, has_aux=True)(values)
    elif backend == "torch":
        import torch

        leaves = [v.value.detach().requires_grad_(True) for v in variables]
        outputs, loss = forward(list(zip(variables, leaves, strict=True)))
        grads = torch.autograd.grad(loss, leaves, allow_unused=True) if leaves else []
        stats = recorder.stats
    else:  # numpy, openvino: a forward pass, no gradient
        outputs, _ = forward(None)
        grads = [None] * len(variables)
        stats = recorder.stats
    stats = [{name: float(to_numpy(v)) for name, v in call.items()} for call in stats]
    grads = [None if g is None else to_numpy(g) for g in grads]
    return outputs, stats, dict(zip((id(v) for v in variables), grads, strict=True))
