"""Which layers GradientHealth watches and which signals each one gets.

Backend-agnostic (keras only): shared by the TensorFlow, JAX and torch hooks.
"""

import dataclasses

import keras
import numpy as np

from keras_fanin._fans import layer_kernels, sublayers
from keras_fanin._patch import Patches
from keras_fanin_logs.judge import LEAKY_RELUS, RELUS


def activation_name(layer):
    """The name of the activation a layer's output goes through, or None."""
    if isinstance(layer, keras.layers.ReLU):
        # A ReLU layer with a negative slope is leaky.
        return "relu" if not layer.negative_slope else "leaky_relu"
    if isinstance(layer, keras.layers.LeakyReLU):
        return "leaky_relu"
    if isinstance(layer, keras.layers.RNN):
        return None  # an RNN's output is a gated mix, not its activation
    fn = getattr(layer, "activation", None)
    return getattr(fn, "__name__", None) if callable(fn) else None


def activation_signal(activation):
    """The activation-specific signal of a layer's output, or None."""
    if activation in RELUS | LEAKY_RELUS:
        return "dead_relu_fraction"
    if activation in ("sigmoid", "tanh"):
        return f"saturated_{activation}_fraction"
    return None


@dataclasses.dataclass
class Unit:
    """A watched layer: a leaf of the model's layer tree."""

    layer: keras.Layer
    name: str  # one TensorBoard path component
    index: int  # position in the model's layer order (forward order)
    _has_kernel: bool = False

    @property
    def activation(self):
        return activation_name(self.layer)

    @property
    def has_kernel(self):
        """Whether the layer (or a layer inside it) has a weight with a fan
        rule: a kernel, a depthwise or pointwise kernel, a recurrent kernel, an
        embedding table, attention projections (`keras_fanin._fans`)."""
        # Cached once true: a layer does not lose its kernel, and the advice
        # asks for every unit at every logged step.
        if not self._has_kernel:
            self._has_kernel = bool(layer_kernels(self.layer))
        return self._has_kernel


def unit_axis(layer, rank):
    """The axis of a layer output that indexes its units (features, channels)."""
    if rank > 2 and getattr(layer, "data_format", None) == "channels_first":
        return 1
    return rank - 1


# Keras's composite layers, whole: their wiring inside is known to `_fans`
# (and an RNN's cell runs inside a loop, where no call can be recorded).
_WHOLE = (
    keras.layers.MultiHeadAttention,
    keras.layers.GroupQueryAttention,
    keras.layers.RNN,
    keras.layers.Bidirectional,
    keras.layers.Wrapper,
)


def _is_composite(layer):
    """A layer built from other layers that Keras does not ship whole (a
    user's Transformer block, a KerasHub layer): its parts can be told apart."""
    return (
        not type(layer).__module__.startswith("keras.")
        and not isinstance(layer, _WHOLE)
        and any(sub.weights for sub in sublayers(layer))
    )


def find_units(model, composites=False):
    """Leaf layers of `model` in order, recursing into nested models.

    Works before the model is built: a subclassed model tracks the layers it
    assigns as attributes, a Sequential model lists its layers. With
    `composites`, layers built from other layers (not Keras's own, such as
    `MultiHeadAttention` or `LSTM`, which stay whole) are recursed into too.
    """
    units, seen, names = [], set(), set()

    def visit(container, prefix):
        for layer in sublayers(container):
            if id(layer) in seen or isinstance(layer, keras.layers.InputLayer):
                continue
            seen.add(id(layer))
            if isinstance(layer, keras.Model) or (composites and _is_composite(layer)):
                visit(layer, f"{prefix}{layer.name}.")
                continue
            # Names are unique within a model; a clash across nested models is
            # resolved with the enclosing model's name, dot-joined to stay one
            # path component.
            name = layer.name if layer.name not in names else prefix + layer.name
            names.add(name)
            units.append(Unit(layer, name, len(units)))

    visit(model, "")
    return units


def first_float(output):
    """The first floating-point tensor of a layer's output, or None."""
    for tensor in keras.tree.flatten(output):
        dtype = getattr(tensor, "dtype", None)
        if dtype is not None and not isinstance(tensor, np.ndarray):
            if keras.backend.standardize_dtype(dtype).startswith(("float", "bfloat")):
                return tensor
    return None


def weight_slots(units, variables):
    """For each unit, the indices in `variables` of its trainable weights."""
    slot = {id(v): i for i, v in enumerate(variables)}
    return [
        [slot[id(v)] for v in unit.layer.trainable_weights if id(v) in slot]
        for unit in units
    ]


class Capture:
    """Wraps each unit's `call` while one forward pass runs (or traces), and
    keeps each unit's output; a shared layer is measured on its first call."""

    def __init__(self, units):
        self.units, self.outputs, self._patches = units, {}, Patches()

    def __enter__(self):
        for unit in self.units:
            layer, key = unit.layer, unit.index
            original = layer.call

            def call(*args, _original=original, _key=key, **kwargs):
                output = _original(*args, **kwargs)
                self.outputs.setdefault(_key, output)
                return output

            self._patches.set(layer, "call", call)
        return self

    def __exit__(self, *exc):
        self._patches.restore()
