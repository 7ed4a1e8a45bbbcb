"""`check`: is a model initialised right? One pass, forward and backward."""

import os
from typing import Any

import keras
import numpy as np

from keras_fanin._check._graph import WEAK_NORMALIZATION, follow, graph_of
from keras_fanin._check._inputs import check_x, load_model, misfit, synthetic_x
from keras_fanin._check._judge import (
    Judged,
    activation_of,
    chains_of,
    kernel_fixes,
    kernel_record,
    l2_norm,
    nonfinite_text,
    path_ratio,
    problems_of,
)
from keras_fanin._check._layers import NORMALIZATION
from keras_fanin._check._measure import Recorder, forward_backward
from keras_fanin._check._records import CheckReport, LayerRecord
from keras_fanin._fans import layer_kernels
from keras_fanin._validation import describe
from keras_fanin.health import _stats
from keras_fanin.health._units import find_units


def check(model: keras.Model | str | os.PathLike[str], x: Any = None) -> CheckReport:
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
        model = load_model(model)
    if not isinstance(model, keras.Model):
        raise TypeError(
            "Argument `model` must be a Keras model or the path of a `.keras` "
            f"file. Received: model={describe(model)} of type {type(model).__name__}"
        )
    given = x
    x = synthetic_x(model) if x is None else check_x(x)
    x = keras.tree.map_structure(keras.ops.convert_to_tensor, x)
    input_shapes = [list(np.shape(t)) for t in keras.tree.flatten(x)]
    if not model.built:
        try:
            model(x, training=False)  # builds it, as fit() would
        except Exception as error:  # noqa: BLE001 - re-raised with context
            raise misfit(model, x, error) from error
    units = find_units(model, composites=True)
    layers_by_index = {u.index: u.layer for u in units}
    kernels_of = {u.index: layer_kernels(u.layer) for u in units}
    kernel_keys = {k for k, kernels in kernels_of.items() if kernels}
    if not kernel_keys:
        return CheckReport(model.name, [], [], input_shapes, model=model, x=given)
    gates = {
        key: [
            k.variable
            for k in kernels
            if k.gated and not k.side and k.stage == 0 and len(k.shape) == 2
        ]
        for key, kernels in kernels_of.items()
    }
    recorder = Recorder(units, kernel_keys, gates)
    try:
        outputs, stats, grads = forward_backward(model, x, recorder)
    except Exception as error:  # noqa: BLE001 - re-raised with context
        raise misfit(model, x, error) from error
    layer_of = [layers_by_index[unit] for unit, _, _ in recorder.calls]
    first_call: dict[int, int] = {}
    for node, (unit, _, _) in enumerate(recorder.calls):
        first_call.setdefault(unit, node)
    consumers, feeds_output = graph_of(recorder.calls, recorder.model_outputs)
    kernel_layers = {id(layers_by_index[k]) for k in kernel_keys}
    names_by_index = {u.index: u.name for u in units}
    weak: set[int] = set()
    weak_layers: dict[str, tuple[str, float, float]] = {}
    for node, layer in enumerate(layer_of):
        epsilon = float(getattr(layer, "epsilon", 0.0) or 0.0)
        std = stats[node].get("input_std") if epsilon > 0 else None
        if isinstance(layer, NORMALIZATION) and std is not None:
            if std**2 < WEAK_NORMALIZATION * epsilon:
                weak.add(node)
                name = names_by_index[recorder.calls[node][0]]
                weak_layers.setdefault(name, (name, std**2, epsilon))
    records, objects, successors, grads_bad, opaque = {}, {}, {}, [], set()
    for unit in units:
        if unit.index not in kernel_keys or unit.index not in first_call:
            continue
        layer, node = unit.layer, first_call[unit.index]
        kernels = kernels_of[unit.index]
        act_node, normalized, next_nodes = follow(
            node, layer_of, consumers, feeds_output, kernel_layers, weak
        )
        following = None if act_node is None else layer_of[act_node]
        successors[unit.index] = {recorder.calls[n][0] for n in next_nodes}
        path = [k for k in kernels if not k.side] or kernels
        gated = all(k.gated for k in path)
        act_name, act = activation_of(layer, following, gated)
        judged = Judged(act, act_name, kernels, [])
        kernel_grads = [grads.get(id(k.variable)) for k in kernels]
        judged.records = [
            kernel_record(k, judged, g)
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
        grad_norm = l2_norm(np.asarray(norms)) if norms else None
        grad_text = next((t for g in kernel_grads if (t := nonfinite_text(g))), "")
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
            ratio=path_ratio(kernels, judged.records),
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
    chains = chains_of(list(records), records, successors, opaque)
    problems = problems_of(
        recorder.calls,
        names_by_index,
        records,
        objects,
        chains,
        stats,
        grads_bad,
        list(weak_layers.values()),
    )
    advised = [
        (layers_by_index[k], kernel_fixes(judged))
        for k, judged in objects.items()
        if judged.flagged
    ]
    return CheckReport(
        model.name,
        list(records.values()),
        problems,
        input_shapes,
        model=model,
        x=given,
        advised=advised,
    )
