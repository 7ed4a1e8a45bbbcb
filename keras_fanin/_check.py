"""`check`: is a model initialised right? One forward and backward pass, pre-training.

For every layer with kernels (dense, convolution, depthwise, separable,
recurrent, embedding, attention: every weight `_fans.layer_kernels` knows a
fan rule for) it compares the std each initializer draws with the std the
fan rule and the activation's gain recommend (`_fans`, `_gains`: the homes
the initializers use), and measures the signal by depth. Verdicts need both
the prediction and the measurement to agree, so that a heuristic gain (tanh's
5/3, SELU's 3/4) never raises a false alarm on its own; only a signal that
all but vanishes (or explodes) is a problem by measurement alone.

The pass wraps each leaf layer's `call` (and a kernel layer's own
`activation`, to see the pre-activation) for its duration; which layer feeds
which is read off the identity of the tensors passed between them, so it works
for Sequential, Functional and subclassed models on every backend. Layers a
user builds from other layers (a Transformer block) are looked into; Keras's
own (`MultiHeadAttention`, `LSTM`, `Bidirectional`) are judged whole, each
kernel with its place on the layer's signal.
"""

import argparse
import collections
import dataclasses
import json
import math
import os
import sys

import keras
import numpy as np

from keras_fanin._fans import layer_kernels, sublayers
from keras_fanin._gains import calculate_gain, recommended_initializer
from keras_fanin._numpy import to_numpy
from keras_fanin._patch import Patches
from keras_fanin._validation import describe
from keras_fanin.health import _stats
from keras_fanin.health._advice import (
    DEAD_WARN_FRACTION,
    DEPTH_RATIO_WARN,
    SATURATED_WARN_FRACTION,
    drawn_std,
    try_text,
)
from keras_fanin.health._probe_data import shapes
from keras_fanin.health._units import activation_name, find_units, first_float
from keras_fanin_logs._text import WIDTH, header, json_safe, row, sig3

# A chain of layers is flagged when the signal's scale drifts beyond this
# factor (either way) by its last layer, both measured and predicted, and at
# least `_MIN_OFF_LAYERS` of its layers draw a std off the recommendation by
# more than `_LAYER_TOLERANCE` in that direction: one layer a little off, or
# one off layer at the end of a shallow net, is not a problem.
DRIFT_LIMIT = 2.0
_LAYER_TOLERANCE = 1.25
_MIN_OFF_LAYERS = 2
# An RNN's gates (sigmoid, tanh) do not pass their input's scale on in
# proportion, and its healthy draws sit well below LeCun's std: Keras's
# Glorot kernel and orthogonal recurrent kernel 0.5 to 0.65 of it, PyTorch's
# uniform(+-1/sqrt(units)) 0.58. A gated kernel is off beyond this factor, and
# only the part of its ratio beyond it predicts a drift.
_GATED_TOLERANCE = 4.0
# A normalization divides by sqrt(variance + epsilon): with a variance under 1%
# of its epsilon it scales the signal by about std / sqrt(epsilon) instead of
# resetting it (std 0.01 kernels in a BatchNorm net), so a chain goes on.
_WEAK_NORMALIZATION = 0.01
# float32 holds about 7 significant digits: a signal a million times below its
# start is rounding noise next to anything of the first scale (a bias, a
# residual). This needs no prediction to be a problem.
VANISHED = 1e-6
SATURATION_EPS = 1e-3  # GradientHealth's default
# Synthetic inputs: at most 64 examples and about a million input values.
_MAX_BATCH = 64
_MAX_INPUT_VALUES = 2**20
_SEED = 0

LOSS = (
    "sum(y * r) / batch over the model's float outputs y, with "
    "r = numpy.random.default_rng(0).standard_normal(y.shape) (a random "
    "projection: its gradient at the output is standard normal whatever the "
    "output's scale)"
)

_NORMALIZATION = tuple(
    getattr(keras.layers, name)
    for name in (
        "BatchNormalization",
        "LayerNormalization",
        "GroupNormalization",
        "UnitNormalization",
        "RMSNormalization",
        "Normalization",
    )
    if hasattr(keras.layers, name)
)
_ACTIVATION_LAYERS = (
    keras.layers.Activation,
    keras.layers.ReLU,
    keras.layers.LeakyReLU,
    keras.layers.PReLU,
    keras.layers.ELU,
    keras.layers.Softmax,
)
# Between a kernel and its activation these change no unit's nonlinearity.
_LOOK_THROUGH = _NORMALIZATION + (
    keras.layers.Dropout,  # and SpatialDropout*
    keras.layers.GaussianDropout,
    keras.layers.GaussianNoise,
    keras.layers.AlphaDropout,
    keras.layers.Add,
    keras.layers.Average,
    keras.layers.Reshape,  # MobileNet's 1x1 head, reshaped, then its softmax
    keras.layers.Flatten,
)


@dataclasses.dataclass
class KernelRecord:
    """One kernel of a layer: its fan rule, the std drawn, its gradient.

    `activation` is the nonlinearity whose gain applies ("linear" for a kernel
    no activation follows, such as a separable convolution's depthwise kernel
    or an attention projection; "gates" for an RNN's). `on_path`: the kernel
    carries the signal (attention queries and keys and recurrent kernels do
    not); the layer's `ratio` multiplies the ratios of those.
    """

    name: str
    shape: tuple
    fan_in: int
    argument: str | None  # the layer's argument for its initializer
    initializer: str | None
    activation: str
    drawn_std: float
    drawn_from: str
    recommended_std: float | None
    ratio: float | None
    on_path: bool
    grad_norm: float | None


@dataclasses.dataclass
class LayerRecord:
    """One layer with kernels, in forward order, as `check` saw it.

    Stds are of the whole tensor over the batch; `pre_std` is the
    pre-activation's (the kernel layer's output before its activation, which
    the fan rule keeps at a constant scale), `out_std` the activation's output.
    `kernels` lists each kernel (`KernelRecord`); the kernel fields here are
    those of the kernel the activation follows (the only one, for most
    layers), `ratio` the product of the ratios along the layer's signal (a
    separable convolution's depthwise then pointwise kernel) and `grad_norm`
    that of all its kernels.
    """

    name: str
    layer_type: str
    activation: str
    initializer: str | None
    kernel_shape: tuple
    fan_in: int
    drawn_std: float
    drawn_from: str  # "initializer", or "kernel" when the initializer does not say
    recommended_std: float | None  # None: no gain known for the activation
    ratio: float | None  # drawn_std / recommended_std
    normalized: bool  # its output reaches a normalization before any kernel
    input_std: float | None
    pre_std: float | None
    out_std: float | None
    grad_norm: float | None  # None: the kernel is not trainable (or no gradient)
    dead_fraction: float | None = None
    saturated_fraction: float | None = None
    nonfinite: str = ""  # "", "NaN", "inf" or "NaN and inf" (outputs or gradient)
    kernels: list = dataclasses.field(default_factory=list)
    gated: bool = False  # an RNN: judged with `_GATED_TOLERANCE`

    def to_dict(self):
        return {k: json_safe(v) for k, v in dataclasses.asdict(self).items()}


_COLUMNS = (
    # (header, width, align)
    ("#", 3, ">"),
    ("layer", 15, "<"),
    ("activation", 10, "<"),
    ("initializer", 13, "<"),
    ("std", 8, ">"),
    ("fan rule", 8, ">"),
    ("ratio", 8, ">"),
    ("pre std", 8, ">"),
    ("out std", 8, ">"),
    ("grad norm", 9, ">"),
)


@dataclasses.dataclass
class CheckReport:
    """What `check` found: `layers` (`LayerRecord`s), `problems` (verdict lines).

    `str(report)` is a table that fits 100 columns, then the verdicts;
    `report.to_dict()` is the same for JSON.
    """

    model_name: str
    layers: list
    problems: list
    input_shapes: object  # the shapes of the batch the pass ran on
    loss: str = LOSS

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {
            "model": self.model_name,
            "ok": self.ok,
            "problems": list(self.problems),
            "layers": [r.to_dict() for r in self.layers],
            "input_shapes": self.input_shapes,
            "loss": self.loss,
        }

    def __str__(self):
        batch = _shape_text(self.input_shapes)
        lines = [f"keras_fanin.check: model {self.model_name!r}, inputs {batch}"]
        if not self.layers:
            lines.append("No layer with a kernel: nothing to check.")
            return "\n".join(lines)
        lines.append(header(_COLUMNS))
        several = False
        for i, r in enumerate(self.layers, 1):
            ratio = sig3(r.ratio) + ("*" if r.normalized else "")
            if len(r.kernels) > 1:
                several = True
                cells = (i, r.name, r.activation, "", "", "", ratio, sig3(r.pre_std),
                         sig3(r.out_std), sig3(r.grad_norm))  # fmt: skip
                lines.append(row(cells, _COLUMNS))
                for k in r.kernels:
                    std = sig3(k.drawn_std) + ("k" if k.drawn_from == "kernel" else "")
                    short = k.name.replace("_kernel", "").replace(
                        "attention_output", "output"
                    )
                    cells = ("", f"  {short}", k.activation, k.initializer or "-",
                             std, sig3(k.recommended_std),
                             sig3(k.ratio) + ("" if k.on_path else "s"), "", "",
                             sig3(k.grad_norm))  # fmt: skip
                    lines.append(row(cells, _COLUMNS))
                continue
            std = sig3(r.drawn_std) + ("k" if r.drawn_from == "kernel" else "")
            cells = (i, r.name, r.activation, r.initializer or "-", std,
                     sig3(r.recommended_std), ratio, sig3(r.pre_std), sig3(r.out_std),
                     sig3(r.grad_norm))  # fmt: skip
            lines.append(row(cells, _COLUMNS))
        lines.append(
            "std: drawn by the initializer (k: measured on the kernel); fan rule: "
            "gain / sqrt(fan_in);"
        )
        lines.append(
            "ratio: std / fan rule (*: normalised next, so not compounded); pre/out "
            "std: before/after"
        )
        lines.append(
            "the activation, on one training-mode pass; grad norm: of the kernels, "
            "for a random projection."
        )
        if several:
            lines.append(
                "Indented: each kernel of a layer with several; the layer's ratio "
                "multiplies those on its"
            )
            lines.append(
                "signal (s: beside it, as attention queries and keys, recurrent "
                "kernels)."
            )
        if self.ok:
            lines.append("OK: no problem found.")
        else:
            n = len(self.problems)
            lines.append(f"{n} problem{'s' if n > 1 else ''} found:")
            for problem in self.problems:
                lines.extend(_wrap(f"- {problem}", WIDTH, "  "))
        return "\n".join(lines)


def _shape_text(input_shapes):
    return ", ".join(str(tuple(s)) for s in input_shapes) or "-"


def _wrap(text, width, indent):
    import textwrap

    return textwrap.wrap(text, width, subsequent_indent=indent, break_on_hyphens=False)


# -- the pass ----------------------------------------------------------------


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


def _inner(layer):
    """The layer a wrapper (`TimeDistributed`) applies, or `layer` itself."""
    return layer.layer if isinstance(layer, keras.layers.Wrapper) else layer


def _activation_name(layer):
    if isinstance(layer, keras.layers.Softmax):
        return "softmax"
    return activation_name(_inner(layer))


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


class _Recorder:
    """Wraps each leaf layer's `call` for one pass and records every call: the
    layer, its input and output tensors (for the graph, kept alive so that no
    id is reused) and its statistics as backend scalars (`stats[call]`). A
    kernel layer's own `activation` is wrapped too, for the pre-activation;
    the input's std is kept for kernel and normalization layers, and an RNN's
    gate saturation (`gates`: `{unit: [input kernels]}`)."""

    def __init__(self, units, kernel_keys, gates):
        self.units, self.kernel_keys, self.gates = units, kernel_keys, gates
        self.input_keys = kernel_keys | {
            u.index for u in units if isinstance(u.layer, _NORMALIZATION)
        }
        self.calls, self.stats = [], []  # (unit index, inputs, outputs); dicts
        self.model_outputs = []
        self._open, self._patches, self._projections = {}, Patches(), {}

    def _wrap_call(self, unit):
        original = unit.layer.call
        activation = _activation_name(unit.layer)

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
            target = _inner(layer)
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
    rng = np.random.default_rng(_SEED)
    total = keras.ops.convert_to_tensor(0.0, "float32")
    for y in _floats(outputs):
        r = rng.standard_normal(tuple(y.shape)).astype("float32")
        batch = max(1, int(y.shape[0])) if len(y.shape) else 1
        y = keras.ops.cast(y, "float32")
        total = total + keras.ops.sum(y * keras.ops.convert_to_tensor(r)) / batch
    return total


def _forward_backward(model, x, recorder):
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


# -- the graph ---------------------------------------------------------------


def _consumers(calls, model_outputs):
    """`{call: [consumer calls]}` and the calls that feed a model output.

    Calls are the recorder's, in order. Read off tensor identity: a call
    consumes another whose output tensor it was given. When no edge is found
    at all (layers that copy their inputs), call order stands in for the graph.
    """
    producer = {}
    for node, (_, _, outputs) in enumerate(calls):
        for t in outputs:
            producer.setdefault(id(t), node)
    consumers = collections.defaultdict(list)
    for node, (_, inputs, _) in enumerate(calls):
        for t in inputs:
            source = producer.get(id(t))
            if source is not None and source != node and node not in consumers[source]:
                consumers[source].append(node)
    feeds_output = {producer[id(t)] for t in model_outputs if id(t) in producer}
    if not consumers and len(calls) > 1:
        consumers = {a: [a + 1] for a in range(len(calls) - 1)}
        feeds_output = {len(calls) - 1}
    return consumers, feeds_output


def _follow(start, layers, consumers, feeds_output, kernel_layers, weak):
    """What a kernel layer's output reaches before the next layer with weights.

    Returns `(activation call or None, normalized, next kernel calls)`:
    the first activation layer reached through normalizations, dropouts and
    adds; whether every path meets a normalization before a kernel, a layer
    with other weights, or the model's output; and the kernel layers reached
    on paths with no normalization. `kernel_layers` holds the ids of the
    layers with kernels, `weak` the calls of normalizations that do not reset
    the scale (`_WEAK_NORMALIZATION`): the signal goes on through them.
    """
    activation, normalized, kernels = None, start not in feeds_output, []
    reached = False
    seen = {start}
    # (node, still looking for the activation, past a normalization)
    frontier = collections.deque([(start, True, False)])
    while frontier:
        node, direct, past_norm = frontier.popleft()
        for nxt in consumers.get(node, []):
            if nxt in seen:
                continue
            seen.add(nxt)
            layer = layers[nxt]
            if direct and activation is None and isinstance(layer, _ACTIVATION_LAYERS):
                activation = nxt
            if past_norm:
                if direct and isinstance(layer, _LOOK_THROUGH):
                    frontier.append((nxt, True, True))
                continue
            reached = True
            if isinstance(layer, _NORMALIZATION) and nxt not in weak:
                # The scale is reset here; only the activation search goes on.
                frontier.append((nxt, direct, True))
                continue
            if id(layer) in kernel_layers:
                kernels.append(nxt)
                normalized = False
            elif layer.trainable_weights and not isinstance(layer, _NORMALIZATION):
                normalized = False  # weights with no fan rule (PReLU): opaque
            else:
                if nxt in feeds_output:
                    normalized = False
                frontier.append(
                    (nxt, direct and isinstance(layer, _LOOK_THROUGH), False)
                )
    return activation, normalized and reached, kernels


# -- inputs ------------------------------------------------------------------


def _load(path):
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(
            f"Argument `model` is a path to no file: {path!r} does not exist."
        )
    if not path.endswith(".keras"):
        raise ValueError(
            "Argument `model` must be a Keras model or the path of a `.keras` "
            f"file. Received: model={path!r}"
        )
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as error:  # noqa: BLE001 - a bad file, in one line
        detail = " ".join(str(error).split())[:300]
        raise ValueError(
            f"Argument `model`: could not load {path!r} "
            f"({type(error).__name__}: {detail})"
        ) from error


def _check_x(x):
    """`x` as NumPy leaves (same structure), or a TypeError/ValueError."""
    if isinstance(x, (str, bytes)) or x is None:
        raise TypeError(
            "Argument `x` must be an array or tensor (or a list, tuple or dict "
            f"of them). Received: x={describe(x)} of type {type(x).__name__}"
        )
    try:
        arrays = keras.tree.map_structure(lambda a: np.asarray(a), x)
    except Exception as error:  # noqa: BLE001 - re-raised with the argument
        raise TypeError(
            "Argument `x` must be an array or tensor (or a list, tuple or dict "
            f"of them). Received: x of type {type(x).__name__} ({error})"
        ) from None
    leaves = keras.tree.flatten(arrays)
    if not leaves or any(a.dtype == object for a in leaves):
        raise TypeError(
            "Argument `x` must be an array or tensor (or a list, tuple or dict "
            f"of them). Received: x={describe(x)} of type {type(x).__name__}"
        )
    sizes = sorted({int(a.shape[0]) if a.ndim else -1 for a in leaves})
    if len(sizes) != 1 or sizes[0] < 1:
        raise ValueError(
            "Argument `x` must be a non-empty batch, with the same number of "
            f"examples in every input (-1 marks a scalar). Received: x with "
            f"shapes {shapes(arrays)}"
        )
    return keras.tree.map_structure(
        lambda a: a.astype(keras.config.floatx()) if a.dtype.kind == "f" else a,
        arrays,
    )


def _synthetic_x(model):
    """Standard-normal inputs of the model's input shape, or a ValueError."""
    spec = None
    for attribute in ("input", "inputs"):  # a Sequential only has `inputs`
        try:
            spec = getattr(model, attribute)
            break
        except (AttributeError, ValueError):
            continue
    if isinstance(spec, list) and len(spec) == 1:
        spec = spec[0]
    if spec is None:
        raise ValueError(
            f"Model {model.name!r} has no known input shape (an unbuilt or "
            "subclassed model): pass a batch of inputs, e.g. "
            "`keras_fanin.check(model, x=x_train[:64])`."
        )
    leaves = keras.tree.flatten(spec)
    for t in leaves:
        dims = tuple(t.shape)[1:]
        if any(d is None for d in dims):
            raise ValueError(
                f"Model {model.name!r} has an input of shape {tuple(t.shape)}, "
                "with unknown dimensions: pass a batch of inputs as `x`."
            )
        if not keras.backend.standardize_dtype(t.dtype).startswith("float"):
            raise ValueError(
                f"Model {model.name!r} has an input of dtype {t.dtype} (not "
                "float), which standard-normal inputs cannot stand for: pass a "
                "batch of inputs as `x`."
            )
    size = sum(math.prod(tuple(t.shape)[1:]) for t in leaves)
    batch = max(2, min(_MAX_BATCH, _MAX_INPUT_VALUES // max(1, size)))
    rng = np.random.default_rng(_SEED)
    return keras.tree.map_structure(
        lambda t: rng.standard_normal((batch, *tuple(t.shape)[1:])).astype(
            keras.backend.standardize_dtype(t.dtype)
        ),
        spec,
    )


def _misfit(model, x, error):
    detail = str(error).strip().splitlines()[0][:300] if str(error) else ""
    return ValueError(
        f"Argument `x` does not fit the model {model.name!r}: x shapes "
        f"{shapes(x)}. {type(error).__name__}: {detail}"
    )


# -- the records and verdicts -------------------------------------------------


def _norm(g):
    """The L2 norm of an array in float64, scaled so that huge values do not
    overflow; None for no gradient."""
    if g is None:
        return None
    g = np.asarray(g, dtype="float64")
    if g.size == 0:
        return 0.0
    scale = float(np.max(np.abs(g)))
    if not math.isfinite(scale) or scale == 0:
        return scale if math.isfinite(scale) else float("nan")
    return scale * float(np.sqrt(np.sum(np.square(g / scale))))


def _nonfinite_text(array):
    if array is None:
        return ""
    array = np.asarray(array)
    code = 2 * bool(np.isnan(array).any()) + bool(np.isinf(array).any())
    return _stats.describe_nonfinite(code)


def _initializer_name(init):
    if init is None:
        return None
    name = type(init).__name__
    gain = getattr(init, "gain", None)
    if isinstance(gain, (int, float)) and gain != 1:
        name += f"({gain:.3g})"
    return name


def _activation_of(layer, following, gated):
    """`(display name, object for calculate_gain or None)` of a kernel layer."""
    if gated:
        return "rnn", None
    own = getattr(_inner(layer), "activation", None)
    name = _activation_name(layer)
    if callable(own) and name not in (None, "linear"):
        return name, own
    if following is not None:
        name = _activation_name(following)
        if name is None:
            name = type(following).__name__.lower()
        return name, following
    return "linear", "linear"


@dataclasses.dataclass
class _Judged:
    """What a layer's verdicts and advice need beside its `LayerRecord`."""

    activation: object  # for calculate_gain, or None
    name: str
    kernels: list  # `_fans.Kernel`s, in the order of `record.kernels`
    records: list  # their `KernelRecord`s


def _kernel_record(kernel, judged, grad):
    """The `KernelRecord` of one kernel: the gain of the activation that
    follows it (1 for a linear map or an RNN's gates) over its fan-in."""
    drawn, source = drawn_std(kernel)
    if kernel.gated:
        gain, shown = 1.0, "gates"  # the sigmoid's gain, PyTorch's table
    elif kernel.activated:
        gain, shown = _gain(judged.activation), judged.name
    else:
        gain, shown = 1.0, "linear"
    recommended = None if gain is None else gain / math.sqrt(max(1, kernel.fan_in))
    return KernelRecord(
        name=kernel.name,
        shape=kernel.shape,
        fan_in=kernel.fan_in,
        argument=kernel.argument,
        initializer=_initializer_name(kernel.initializer),
        activation=shown,
        drawn_std=float(drawn),
        drawn_from=source,
        recommended_std=recommended,
        ratio=None if not recommended else float(drawn) / recommended,
        on_path=not kernel.side,
        grad_norm=_norm(grad),
    )


def _path_ratio(kernels, records):
    """The product, stage by stage along the signal, of the kernels' ratios
    (side by side kernels by their root mean square); None if one is unknown."""
    stages = collections.defaultdict(list)
    for kernel, record in zip(kernels, records, strict=True):
        if kernel.side:
            continue
        if kernel.stage is None or record.ratio is None:
            return None
        stages[kernel.stage].append(record.ratio)
    if not stages:
        return None
    return math.prod(math.sqrt(sum(r * r for r in v) / len(v)) for v in stages.values())


def _tolerance(record):
    return _GATED_TOLERANCE if record.gated else _LAYER_TOLERANCE


def _is_off(record, shrinks):
    """Whether a layer's ratio is off the fan rule in that direction."""
    if record.ratio is None:
        return False
    if shrinks:
        return record.ratio < 1 / _tolerance(record)
    return record.ratio > _tolerance(record)


def _factor(record):
    """The scale factor a layer's drawn stds predict for its output: its ratio,
    or for an RNN the part of it below the gated band (gates bound the
    output, so a ratio above the band saturates rather than grows)."""
    if not record.gated or record.ratio is None:
        return record.ratio
    return min(1.0, record.ratio * _GATED_TOLERANCE)


def _fix(judged):
    """The initializers to use: one per kernel off its fan rule (every kernel
    on the signal if none is off alone), named by the layer's argument."""
    pairs = list(zip(judged.kernels, judged.records, strict=True))

    def off(kernel, record):
        tolerance = _GATED_TOLERANCE if kernel.gated else _LAYER_TOLERANCE
        return record.ratio is not None and not (
            1 / tolerance <= record.ratio <= tolerance
        )

    chosen = [(k, r) for k, r in pairs if off(k, r)] or [
        (k, r) for k, r in pairs if not k.side
    ]
    texts, arguments = [], set()
    for kernel, _ in chosen:
        if kernel.argument in arguments:  # attention's four, one argument
            continue
        arguments.add(kernel.argument)
        if kernel.gated:
            text = "'orthogonal'" if kernel.side else "keras_fanin.LeCun()"
        elif kernel.activated:
            text = _advice(judged.activation, judged.name)
        else:
            text = "keras_fanin.LeCun()"
        texts.append(try_text(kernel, text, named=len(pairs) > 1))
    return " and ".join(dict.fromkeys(texts))  # a bidirectional layer's twice


def _gain(activation):
    if activation is None:
        return None
    try:
        return calculate_gain(activation)
    except (TypeError, ValueError):
        return None


def _advice(activation, name):
    """The initializer to advise: the gain table's, or `LeCun(gain=...)` where
    the table's preset does not draw `calculate_gain(activation) / sqrt(fan_in)`."""
    advice = recommended_initializer(activation)
    gain = _gain(activation)
    if gain is None:
        return "an initializer with std = gain / sqrt(fan_in)"
    if advice in (None, "keras_fanin.LeCun()", "keras_fanin.Xavier()") and not (
        math.isclose(gain, 1.0)
    ):
        return f"keras_fanin.LeCun(gain={name!r})"
    return advice or "keras_fanin.LeCun()"


def _power_of_two(factor):
    if factor == 0:
        return "to 0"
    if not math.isfinite(factor):
        return "to inf"
    return f"about 2^{round(math.log2(factor))}"


def _beyond(factor):
    """Whether a scale factor is beyond `DRIFT_LIMIT` either way (0, inf: yes)."""
    if factor is None:
        return False
    if factor == 0 or math.isinf(factor):
        return True
    return abs(math.log2(factor)) > math.log2(DRIFT_LIMIT)


def _most_common(values):
    return collections.Counter(values).most_common(1)[0][0]


def _drift_problem(chain, records, objects):
    """The verdict for one chain of un-normalised kernel layers, or None."""
    first, last = records[chain[0]], records[chain[-1]]
    span = [records[k] for k in chain[1:]]
    unknown = any(r.ratio is None for r in span)
    predicted = math.prod(_factor(r) for r in span if r.ratio is not None)
    a, b = first.pre_std, last.pre_std
    if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)):
        return None  # non-finite: the NaN/inf verdict says it
    measured = b / a if a > 0 else None
    if measured is None:
        if unknown or not _beyond(predicted):
            return None
        direction = predicted < 1
    else:
        if not _beyond(measured):
            return None
        direction = measured < 1
        if not unknown and not (_beyond(predicted) and (predicted < 1) == direction):
            return None  # the initializers are right: depth or architecture
    off = [k for k in chain if _is_off(records[k], direction)]
    if not unknown and len(off) < _MIN_OFF_LAYERS:
        return None
    judged = off or chain
    act = _most_common(records[k].activation for k in judged)
    judged = [k for k in judged if records[k].activation == act]
    init = _most_common(records[k].initializer or "?" for k in judged)
    n = len(judged)
    factor = measured if measured is not None else predicted
    verb = "shrinks" if direction else "grows"
    what = (
        f"measured x{factor:.3g} in pre-activation std from {first.name!r} to "
        f"{last.name!r}"
        if measured is not None
        else "predicted"
    )
    why = (
        f"predicted x{predicted:.3g} from each layer's drawn std vs the fan rule's"
        if not unknown
        else "no gain is known for some of these activations"
    )
    return (verb, act, init), (
        f"{n} {act} layer{'s' if n > 1 else ''} initialised with {init}: the "
        f"signal {verb} {_power_of_two(factor)} by the last layer ({what}; "
        f"{why}); use {_fixes(objects, judged)}."
    )


def _grad_rms(record):
    if record.grad_norm is None or not math.isfinite(record.grad_norm):
        return None
    size = sum(math.prod(k.shape) for k in record.kernels)
    return record.grad_norm / math.sqrt(max(1, size))


def _gradient_problem(chain, records, objects):
    """Gradients that vanish or explode along a chain, as the drawn stds predict.

    Per-weight (rms) gradients, judged at `DEPTH_RATIO_WARN` as GradientHealth
    judges them: their scale also follows the layers' widths, so a tighter
    limit would flag healthy pyramids.
    """
    first, last = records[chain[0]], records[chain[-1]]
    a, b = _grad_rms(first), _grad_rms(last)
    if a is None or b is None or b == 0:
        return None
    ratio = a / b
    if 1 / DEPTH_RATIO_WARN <= ratio <= DEPTH_RATIO_WARN:
        return None
    ratios = [records[k].ratio for k in chain]
    if any(r is None for r in ratios) or not _beyond(math.prod(ratios)):
        return None
    off = [k for k in chain if _is_off(records[k], True) or _is_off(records[k], False)]
    if len(off) < _MIN_OFF_LAYERS:
        return None
    act = _most_common(records[k].activation for k in off)
    off = [k for k in off if records[k].activation == act]
    init = _most_common(records[k].initializer or "?" for k in off)
    kind = "vanish" if ratio < 1 else "explode"
    return (kind, act, init), (
        f"{len(off)} {act} layer{'s' if len(off) > 1 else ''} initialised with "
        f"{init}: gradients {kind} with depth (per weight, {first.name!r} gets "
        f"{ratio:.3g}x the gradient of {last.name!r}; their drawn stds are "
        f"{records[off[0]].ratio:.3g}x the fan rule's); use "
        f"{_fixes(objects, off)}."
    )


def _fixes(objects, keys, most=3):
    """The distinct fixes of some layers (a 1x1 and a depthwise convolution
    need different ones), the first `most`."""
    return " and ".join(list(dict.fromkeys(_fix(objects[k]) for k in keys))[:most])


def _weak_problem(weak):
    """The line on normalizations whose inputs are too small to normalise.

    `weak` is `[(layer name, input variance, epsilon)]`, not empty.
    """
    name, variance, epsilon = min(weak, key=lambda w: w[1] / w[2])
    n = len(weak)
    return (
        f"{n} normalization layer{'s' if n > 1 else ''} (first "
        f"{weak[0][0]!r}) get{'' if n > 1 else 's'} inputs with a variance under "
        f"{_WEAK_NORMALIZATION:.0%} of their epsilon ({variance:.3g} against "
        f"{epsilon:g} in {name!r}): dividing by about sqrt(epsilon), they pass "
        "the signal on shrunk instead of resetting its scale. Raise the std of "
        "the kernels before them (see the ratio column)."
    )


def _problems(calls, names, records, objects, chains, stats, grads_bad, weak=()):
    problems = []
    for node, (unit, _, _) in enumerate(calls):  # the first layer where it appears
        code = stats[node].get("out_bad", 0.0)
        if code:
            problems.append(
                f"Non-finite values ({_stats.describe_nonfinite(code)}) in the output "
                f"of layer {names[unit]!r} at initialisation: an exploding signal "
                "or a NaN weight. Check the initializers' stds in the table."
            )
            break
    if grads_bad:
        names = [r.name for r, _ in grads_bad]
        problems.append(
            f"Non-finite gradients ({grads_bad[0][1]}) for the kernels of "
            f"{len(names)} layer(s), first {names[0]!r}, at initialisation."
        )
    grouped = {}
    for chain in chains:
        found = _drift_problem(chain, records, objects) or _gradient_problem(
            chain, records, objects
        )
        if found:
            key, text = found
            grouped.setdefault(key, []).append((text, chain))
    for items in grouped.values():
        # One line for many chains alike (each block of a net, say).
        text, more = items[0][0], items[1:]
        if more:
            spans = ", ".join(
                f"{records[c[0]].name!r} to {records[c[-1]].name!r}"
                for _, c in more[:3]
            )
            text += (
                f" The same in {len(more)} more chain{'s' if len(more) > 1 else ''}"
                f" ({spans}{', ...' if len(more) > 3 else ''})."
            )
        problems.append(text)
    # A weak normalization matters where a chain runs on through it; alone
    # (inputs far from the scale the model expects), the next one resets.
    if grouped and weak:
        problems.append(_weak_problem(weak))
    if not problems:
        problem = _vanished_problem(records, objects)
        if problem:
            problems.append(problem)
    for signal, limit, text in (
        ("dead_fraction", DEAD_WARN_FRACTION, "ReLU units are dead (zero for every "
         "example of the batch)"),
        ("saturated_fraction", SATURATED_WARN_FRACTION, "outputs are saturated "
         f"(within {SATURATION_EPS:g} of an asymptote, where the gradient vanishes)"),
    ):  # fmt: skip
        bad = [k for k, r in records.items() if (getattr(r, signal) or 0.0) > limit]
        if not bad:
            continue
        worst = max(bad, key=lambda k: getattr(records[k], signal))
        r = records[worst]
        fix = "normalise the inputs or lower the initial std"
        ratio = r.ratio
        if len(r.kernels) > 1:  # attention saturates through its queries and keys
            ratios = [k.ratio for k in r.kernels if k.ratio is not None]
            ratio = max(ratios, default=None)
        if ratio is not None and ratio > _tolerance(r) and not r.normalized:
            fix = (
                f"its kernel{'s draw up to' if len(r.kernels) > 1 else ' draws'} "
                f"{ratio:.3g}x the fan rule's std; use {_fix(objects[worst])}"
            )
        where = r.activation
        if r.gated:
            where += ", its gates"
        elif any(not k.on_path for k in r.kernels):
            where = "its attention weights"
        problems.append(
            f"{len(bad)} layer{'s' if len(bad) > 1 else ''} at initialisation "
            f"where most {text}: {getattr(r, signal):.0%} in {r.name!r} "
            f"({where}); {fix}."
        )
    return problems


def _vanished_problem(records, objects):
    """A signal that all but vanishes (or explodes) on its way, by measurement
    alone: a kernel layer's input std beyond `VANISHED` of the first one's."""
    measured = [r for r in records.values() if r.input_std is not None]
    if len(measured) < 2:
        return None
    first = measured[0]
    if not (math.isfinite(first.input_std) and first.input_std > 0):
        return None
    for k, r in ((k, r) for k, r in records.items() if r.input_std is not None):
        if not math.isfinite(r.input_std):
            return None  # the NaN/inf verdict says it
        factor = r.input_std / first.input_std
        if VANISHED <= factor <= 1 / VANISHED:
            continue
        shrinks = factor < 1
        before = [q for q, s in records.items() if q < k and _is_off(s, shrinks)]
        if before:
            off = records[before[0]]
            cause = (
                f"{len(before)} layer{'s' if len(before) > 1 else ''} before it "
                f"draw{'' if len(before) > 1 else 's'} a std off the fan rule "
                f"(first {off.name!r}, {off.ratio:.3g}x); use "
                f"{_fix(objects[before[0]])}"
            )
        else:
            cause = (
                "no layer before it draws a std off the fan rule that way: depth "
                "or architecture (normalise, or add residual connections)"
            )
        return (
            f"The signal {'vanishes' if shrinks else 'explodes'}: layer "
            f"{r.name!r} gets inputs of std {r.input_std:.3g}, {factor:.3g}x "
            f"those of {first.name!r}; {cause}."
        )
    return None


def _chains(order, records, successors, opaque):
    """The chains of kernel layers, each ending where no kernel layer follows
    but through a normalization; along the longest path in a graph. A layer
    whose output is normalised ends a chain (the drift up to its
    pre-activation is real) and starts none. `opaque` layers (kernels wired in
    an unknown way) are in none."""
    best = {}
    for k in order:
        if k in opaque:
            continue
        preds = [p for p in best if k in successors[p]]
        best[k] = max((best[p] for p in preds), key=len, default=[]) + [k]
    extended = {k for chain in best.values() for k in chain[:-1]}
    return [chain for k, chain in best.items() if k not in extended and len(chain) > 1]


def check(model, x=None) -> CheckReport:
    """Checks a model's initialisation before training: one forward and backward pass.

    For every layer with kernels, in forward order: its activation (its own,
    or the activation layer that follows it, through a normalization), and
    for each kernel its initializer and the std it draws, and the std the fan
    rule and the activation's gain recommend, `gain / sqrt(fan_in)` (the rule
    `keras_fanin`'s initializers draw) with the fan-in the kernel really has:
    a depthwise kernel's receptive field (not times its channels), an
    embedding's 1, an attention projection's input axes; gain 1 where no
    activation follows (a separable convolution's depthwise kernel, attention
    projections, an RNN's gates). A layer's ratio multiplies those of the
    kernels along its signal. Layers built from other layers by the user (a
    Transformer block) are judged layer by layer. Then the signal by depth from
    one training-mode pass on `x` that changes no state (BatchNorm normalises
    with the batch's statistics, as in training), and each kernel's gradient
    norm for the loss `sum(y * r) / batch`, summed over the float outputs `y`,
    with `r = numpy.random.default_rng(0).standard_normal(y.shape)` (a random
    projection: its gradient at the output is standard normal whatever the
    output's scale, so the norms compare the backward signal by depth).

    Verdicts, one line each:

    - The signal drifts: along a chain of layers with no normalization in
      between, the pre-activation std of the last layer is more than 2x (or
      less than 1/2x) that of the first, AND the drawn stds predict it: their
      ratios to the fan rule's, compounded over the chain, are beyond 2x the
      same way, with at least two layers off by more than 25% (an RNN: more
      than 4x, as its gates bound its output). A layer whose output is
      normalised (BatchNorm, LayerNorm, ...) before the next kernel ends a
      chain: its scale is reset, whatever its std; unless the normalization's
      input variance is under 1% of its epsilon, where it cannot normalise.
      Such weak normalizations get a line of their own. Chains alike (each
      block of a network) share one line.
    - Gradients vanish or explode along such a chain (per weight, beyond
      1000x), as the drawn stds predict.
    - The signal vanishes or explodes by a factor of a million between the
      first layer's input and a later one's, whatever the initializers.
    - Non-finite values in an output or a gradient.
    - More than half the units of a ReLU layer dead, of a tanh or sigmoid
      layer's outputs saturated, as `GradientHealth` warns; of a softmax's
      outputs one-hot (within 0.001 of 1), attention weights included; or of
      an RNN's gate pre-activations from its inputs saturated.

    Examples:

    >>> model = keras.Sequential([keras.Input((64,))] + [
    ...     keras.layers.Dense(128, activation="relu") for _ in range(30)])
    >>> report = keras_fanin.check(model)
    >>> report.ok  # Glorot on 30 ReLU layers: the signal shrinks ~2^-15
    False
    >>> print(report)  # the table, then one line per problem

    Args:
        model: A Keras model, or the path of a `.keras` file.
        x: A batch of inputs (an array or tensor, or a list, tuple or dict of
            them), or None for standard-normal inputs of the model's input
            shape (up to 64 examples).

    Returns:
        A `CheckReport`: `.layers`, `.problems`, `.ok`, `str()` and
        `.to_dict()`.

    Raises:
        TypeError: If `model` is neither a Keras model nor a path, or `x` is
            not arrays.
        ValueError: If the path is not a `.keras` file, `x` is omitted for a
            model with no known input shape (or a non-float input), or `x`
            does not fit the model.

    Reference:
        - [He et al., 2015](https://arxiv.org/abs/1502.01852)
        - [Glorot & Bengio, 2010](http://proceedings.mlr.press/v9/glorot10a.html)
    """
    if isinstance(model, (str, os.PathLike)):
        model = _load(model)
    if not isinstance(model, keras.Model):
        raise TypeError(
            "Argument `model` must be a Keras model or the path of a `.keras` "
            f"file. Received: model={describe(model)} of type {type(model).__name__}"
        )
    x = _synthetic_x(model) if x is None else _check_x(x)
    x = keras.tree.map_structure(keras.ops.convert_to_tensor, x)
    input_shapes = [list(np.shape(t)) for t in keras.tree.flatten(x)]
    if not model.built:
        try:
            model(x, training=False)  # builds it, as fit() would
        except Exception as error:  # noqa: BLE001 - re-raised with context
            raise _misfit(model, x, error) from error
    units = find_units(model, composites=True)
    layers_by_index = {u.index: u.layer for u in units}
    kernels_of = {u.index: layer_kernels(u.layer) for u in units}
    kernel_keys = {k for k, kernels in kernels_of.items() if kernels}
    if not kernel_keys:
        return CheckReport(model.name, [], [], input_shapes)
    gates = {
        key: [
            k.variable
            for k in kernels
            if k.gated and not k.side and k.stage == 0 and len(k.shape) == 2
        ]
        for key, kernels in kernels_of.items()
    }
    recorder = _Recorder(units, kernel_keys, gates)
    try:
        outputs, stats, grads = _forward_backward(model, x, recorder)
    except Exception as error:  # noqa: BLE001 - re-raised with context
        raise _misfit(model, x, error) from error
    layer_of = [layers_by_index[unit] for unit, _, _ in recorder.calls]
    first_call = {}
    for node, (unit, _, _) in enumerate(recorder.calls):
        first_call.setdefault(unit, node)
    consumers, feeds_output = _consumers(recorder.calls, recorder.model_outputs)
    kernel_layers = {id(layers_by_index[k]) for k in kernel_keys}
    names_by_index = {u.index: u.name for u in units}
    weak, weak_layers = set(), {}
    for node, layer in enumerate(layer_of):
        epsilon = float(getattr(layer, "epsilon", 0.0) or 0.0)
        std = stats[node].get("input_std") if epsilon > 0 else None
        if isinstance(layer, _NORMALIZATION) and std is not None:
            if std**2 < _WEAK_NORMALIZATION * epsilon:
                weak.add(node)
                name = names_by_index[recorder.calls[node][0]]
                weak_layers.setdefault(name, (name, std**2, epsilon))
    records, objects, successors, grads_bad, opaque = {}, {}, {}, [], set()
    for unit in units:
        if unit.index not in kernel_keys or unit.index not in first_call:
            continue
        layer, node = unit.layer, first_call[unit.index]
        kernels = kernels_of[unit.index]
        act_node, normalized, next_nodes = _follow(
            node, layer_of, consumers, feeds_output, kernel_layers, weak
        )
        following = None if act_node is None else layer_of[act_node]
        successors[unit.index] = {recorder.calls[n][0] for n in next_nodes}
        path = [k for k in kernels if not k.side] or kernels
        gated = all(k.gated for k in path)
        act_name, act = _activation_of(layer, following, gated)
        judged = _Judged(act, act_name, kernels, [])
        kernel_grads = [grads.get(id(k.variable)) for k in kernels]
        judged.records = [
            _kernel_record(k, judged, g)
            for k, g in zip(kernels, kernel_grads, strict=True)
        ]
        objects[unit.index] = judged
        if any(k.stage is None for k in kernels):
            opaque.add(unit.index)
        # The kernel the activation follows: the last one along the signal.
        main = max(
            range(len(kernels)),
            key=lambda i: (not kernels[i].side, kernels[i].stage or 0, i),
        )
        main_record = judged.records[main]
        norms = [r.grad_norm for r in judged.records if r.grad_norm is not None]
        grad_norm = _norm(np.asarray(norms)) if norms else None
        grad_text = next((t for g in kernel_grads if (t := _nonfinite_text(g))), "")
        own = stats[node]
        after = stats[act_node] if act is following is not None else own
        record = LayerRecord(
            name=unit.name,
            layer_type=type(layer).__name__,
            activation=act_name,
            initializer="+".join(
                dict.fromkeys(r.initializer or "?" for r in judged.records)
            ),
            kernel_shape=main_record.shape,
            fan_in=main_record.fan_in,
            drawn_std=main_record.drawn_std,
            drawn_from=main_record.drawn_from,
            recommended_std=main_record.recommended_std,
            ratio=_path_ratio(kernels, judged.records),
            normalized=normalized,
            input_std=own.get("input_std"),
            pre_std=own.get("pre_std", own.get("out_std")),
            out_std=after.get("out_std"),
            grad_norm=grad_norm,
            dead_fraction=after.get("dead_relu_fraction"),
            saturated_fraction=next(
                (
                    after[f"saturated_{kind}_fraction"]
                    for kind in ("tanh", "sigmoid", "softmax", "gates")
                    if f"saturated_{kind}_fraction" in after
                ),
                None,
            ),
            nonfinite=_stats.describe_nonfinite(
                int(own.get("out_bad", 0)) | int(after.get("out_bad", 0))
            )
            or grad_text,
            kernels=judged.records,
            gated=gated,
        )
        if grad_text:
            grads_bad.append((record, grad_text))
        records[unit.index] = record
    chains = _chains(list(records), records, successors, opaque)
    problems = _problems(
        recorder.calls,
        names_by_index,
        records,
        objects,
        chains,
        stats,
        grads_bad,
        list(weak_layers.values()),
    )
    return CheckReport(model.name, list(records.values()), problems, input_shapes)


# -- the command line --------------------------------------------------------


def cli_main(argv: list[str]) -> int:
    """`keras-fanin check MODEL.keras [--json]`: 0 if no problem, 1 if any, 2 on
    a usage error (one line on stderr, never a traceback)."""
    parser = argparse.ArgumentParser(
        prog="keras-fanin check",
        description="Check a saved Keras model's initialisation before training: "
        "one forward and backward pass on standard-normal inputs.",
    )
    parser.add_argument("model", help="path of a .keras file")
    parser.add_argument("--json", action="store_true", help="print JSON")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse has printed the usage and the error
        return int(exit_.code or 0)
    try:
        report = check(args.model)
    except (OSError, TypeError, ValueError) as error:
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"keras-fanin check: error: {message}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report)
    return 0 if report.ok else 1
