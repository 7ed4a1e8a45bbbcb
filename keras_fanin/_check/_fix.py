"""`fix`: re-draws the kernels `check` flags with the initializer it advises."""

import os
from typing import Any

import keras

from keras_fanin._check._check import check
from keras_fanin._check._inputs import load_model
from keras_fanin._check._records import CheckReport
from keras_fanin._numpy import to_numpy
from keras_fanin._seeds import check_seed
from keras_fanin._validation import describe


def fix(
    model: keras.Model | str | os.PathLike[str],
    x: Any = None,
    *,
    force: bool = False,
    seed: int | keras.random.SeedGenerator | None = None,
) -> CheckReport:
    """Re-draws the kernels `check` flags, with the initializer it advises.

    `check(model, x)` runs first. Each kernel of a layer one of its verdicts
    names (a chain whose signal drifts, gradients that vanish or explode, a
    signal that vanishes, units a too-large std saturates or kills) is drawn
    again with what the verdict says to use: `He()` for the ReLU family,
    `LeCun(gain=<activation>)` or the gain table's preset for the rest,
    `LeCun()` for a kernel no activation follows, `'orthogonal'` for a
    recurrent kernel; with the kernel's own fan axes where Keras's layout rule
    does not give them (a depthwise kernel). The new initializer is also
    written into the layer (or its RNN cell), so that `get_config()`, a saved
    `.keras` file and `from_config` draw the same law again. Then `check`
    runs again; its report is returned, with `fixed` listing what was redrawn.

    Left alone: layers no verdict names, normalizations, embeddings, kernels
    whose activation has no known gain, and kernels whose initializer the
    layer's config does not hold on its own (`MultiHeadAttention`'s
    projections share one).

    Examples:

    >>> model = keras.Sequential([keras.Input((64,))] + [
    ...     keras.layers.Dense(128, activation="relu") for _ in range(30)])
    >>> keras_fanin.check(model).ok  # Glorot: the signal shrinks ~2^-15
    False
    >>> report = keras_fanin.fix(model)  # each kernel re-drawn with He()
    >>> report.ok, model.layers[0].kernel_initializer
    (True, <keras_fanin...He ...>)

    Args:
        model: A Keras model, or the path of a `.keras` file (then the fixed
            model is `report.model`).
        x: A batch of inputs for `check`, or None for standard-normal inputs
            of the model's input shape.
        force: Fix a model whose optimizer has already taken steps, throwing
            away what it learned in the layers re-drawn.
        seed: None (draws follow Keras's global seed, as an unseeded
            initializer's do), an int (the i-th kernel re-drawn gets `seed +
            i`, distinct and reproducible, also from the saved config), or a
            `keras.random.SeedGenerator` that every new initializer shares,
            advancing at each draw, as one initializer instance passed to
            every layer does.

    Returns:
        The `CheckReport` of the fixed model.

    Raises:
        TypeError: If `force` is not a bool, `seed` neither None, an int nor
            a `SeedGenerator`, or as `check` raises.
        ValueError: If the model has trained and `force` is False, or as
            `check` raises.
    """
    if not isinstance(force, bool):
        raise TypeError(
            f"Argument `force` must be a bool. Received: force={describe(force)} "
            f"of type {type(force).__name__}"
        )
    check_seed(seed)
    if isinstance(seed, dict):  # a serialized generator: not here
        raise TypeError(
            "Argument `seed` must be None, an int or a `keras.random.SeedGenerator`. "
            f"Received: seed={describe(seed)} of type dict"
        )
    if isinstance(model, (str, os.PathLike)):
        model = load_model(model)
    steps = _steps_taken(model)
    if steps and not force:
        raise ValueError(
            f"Model {getattr(model, 'name', '?')!r} has trained: its optimizer "
            f"has taken {steps} step(s). `fix` re-draws kernels, which would "
            "throw away what they learned; fix before training, or pass "
            "`force=True` to re-draw them anyway."
        )
    before = check(model, x)
    fixed: list[tuple[str, str, str]] = []
    for layer, fixes in before.advised:
        if isinstance(layer, keras.layers.Embedding):
            continue
        for kernel_fix in fixes:
            kernel_seed = seed + len(fixed) if isinstance(seed, int) else seed
            done = _redraw(layer, kernel_fix, kernel_seed)
            if done is not None:
                fixed.append(done)
    after = check(model, x)
    after.fixed = fixed
    return after


def _steps_taken(model: Any) -> int:
    optimizer = getattr(model, "optimizer", None)
    iterations = getattr(optimizer, "iterations", None)
    if iterations is None:
        return 0
    try:
        return int(to_numpy(iterations))
    except (TypeError, ValueError):
        return 0


def _redraw(layer: Any, kernel_fix: Any, seed: Any) -> tuple[str, str, str] | None:
    """Draws one kernel again and writes its initializer into the layer;
    `(layer, argument, initializer)` texts, or None where it is left alone."""
    kernel, advice = kernel_fix.kernel, kernel_fix.advice
    owner, argument = kernel.owner, kernel.argument
    if advice is None or owner is None or argument is None:
        return None
    axes: dict[str, list[int]] = {}
    if advice == "orthogonal":
        initializer = keras.initializers.Orthogonal(seed=seed)
    else:
        if kernel.input_axes is not None:
            axes = {
                "input_axes": list(kernel.input_axes),
                "output_axes": list(kernel.output_axes),
            }
        try:
            initializer = advice.make(**axes, seed=seed)
        except (TypeError, ValueError):  # a gain by a name no table knows
            initializer = None
        if initializer is None:
            return None
    previous = getattr(owner, argument, None)
    setattr(owner, argument, initializer)
    if not _in_config(layer, argument, initializer):
        # The config would bring the old one back: not fixed, left as it was.
        setattr(owner, argument, previous)
        return None
    variable = kernel.variable
    value = initializer(tuple(variable.shape), dtype=variable.dtype)
    variable.assign(value)
    return (layer.name, argument, _text(advice, axes))


def _in_config(layer: Any, argument: str, initializer: Any) -> bool:
    """Whether the layer's config holds `initializer` under `argument`,
    at any depth (an RNN's cell, a bidirectional layer's directions)."""
    wanted = keras.initializers.serialize(initializer)

    def find(value: object) -> bool:
        if isinstance(value, dict):
            if value.get(argument) == wanted:
                return True
            return any(find(v) for v in value.values())
        if isinstance(value, list | tuple):
            return any(find(v) for v in value)
        return False

    return find(layer.get_config())


def _text(advice: Any, axes: dict[str, list[int]]) -> str:
    if advice == "orthogonal":
        return "keras.initializers.Orthogonal()"
    text = str(advice)
    if axes:
        extra = ", ".join(f"{k}={v}" for k, v in axes.items())
        text = f"{text[:-1]}{'' if text.endswith('()') else ', '}{extra})"
    return text
