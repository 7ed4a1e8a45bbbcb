"""Thresholds, warnings and the fix each warning advises.

Fed one measurement at a time, from the real training step or from the probe:
`{tag: value}` for the logged signals, and the non-finite codes per layer. The
advice names initializers from the same gain table and fan rule the
initializers use (`keras_fanin._gains`, `keras_fanin._fans`).
"""

import math
import warnings
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import keras
import numpy as np

from keras_fanin._fans import Axes, Kernel, compute_fans, fan_for_mode, layer_kernels
from keras_fanin._gains import calculate_gain, recommended_initializer
from keras_fanin._numpy import to_numpy
from keras_fanin.health._stats import describe_nonfinite
from keras_fanin_logs import judge


class GradientHealthWarning(UserWarning):
    """A warning from `GradientHealth` about a layer that does not train well."""


def initial_std(
    initializer: Any, shape: Axes, axes: tuple[Axes | None, Axes | None] | None = None
) -> float | None:
    """The std `initializer` draws for `shape`, or None when it does not say.

    `axes` is the `(input_axes, output_axes)` pair a layer hands to a
    `VarianceScaling` that has none of its own, as `EinsumDense` does.
    """
    if isinstance(initializer, keras.initializers.VarianceScaling):
        own = (initializer.input_axes, initializer.output_axes)
        if None not in own or axes is None:
            axes = own
        fan_in, fan_out = compute_fans(shape, *axes)
        fan = fan_for_mode(fan_in, fan_out, initializer.mode)
        # `FanScaling` keeps Keras's `scale` as its gain**2 times its numerator.
        return math.sqrt(initializer.scale / fan)
    if isinstance(initializer, keras.initializers.RandomNormal):
        return float(initializer.stddev)
    if isinstance(initializer, keras.initializers.RandomUniform):
        spread: float = (initializer.maxval - initializer.minval) / math.sqrt(12)
        return spread
    return None


def drawn_std(kernel: Kernel) -> tuple[float, str]:
    """`(std, "initializer")` that a `_fans.Kernel`'s initializer drew, or
    `(std, "kernel")` measured on the kernel when the initializer does not say."""
    axes = (kernel.input_axes, kernel.output_axes) if kernel.axes_given else None
    std = initial_std(kernel.initializer, kernel.shape, axes)
    if std is not None:
        return std, "initializer"
    return float(np.std(to_numpy(kernel.variable))), "kernel"


def try_text(kernel: Kernel, initializer: str, named: bool = False) -> str:
    """How to pass `initializer` (a preset's text) for `kernel`: with the
    kernel's own axes where its fan rule is not Keras's layout rule (a
    depthwise kernel, an embedding), and named by the layer's argument unless
    that is `kernel_initializer` and not `named`."""
    preset = initializer.startswith("keras_fanin.") and initializer.endswith(")")
    if preset and kernel.input_axes is not None and not kernel.axes_given:
        axes = (
            f"input_axes={list(kernel.input_axes)}, "
            f"output_axes={list(kernel.output_axes or ())}"
        )
        head = initializer[:-1]
        initializer = f"{head}{'' if head.endswith('(') else ', '}{axes})"
    if kernel.argument is not None and (
        named or kernel.argument != "kernel_initializer"
    ):
        initializer = f"{kernel.argument}={initializer}"
    return initializer


def kernel_advice(layer: Any, activation: str, initializer: str | None) -> str:
    """Advice on a layer's kernel from the fan rule and the gain table.

    Judges the std the layer's initializer drew, when it says so, rather than
    the kernel now: by the time a unit dies, training has moved the kernel
    away from its initial scale. The kernel judged is the one the activation
    follows (a separable convolution's pointwise kernel), with its own fan
    rule (`keras_fanin._fans.layer_kernels`). A layer without one (an
    `Activation`, `ReLU`, or a normalization layer) gets no kernel advice:
    what feeds it may be normalised, so no initializer can be blamed.
    """
    kernels = [k for k in layer_kernels(layer) if k.activated and not k.side]
    if not kernels:
        return ""
    kernel = kernels[-1]
    fan_in = kernel.fan_in
    target = calculate_gain(activation) / math.sqrt(max(1, fan_in))
    actual, source = drawn_std(kernel)
    noun = kernel.name.split("/")[-1].replace("_", " ")
    if source == "kernel":
        what = f"Its {noun} std is"
    else:
        what = f"Its {noun} was initialised with std"
    if abs(actual / target - 1) < 0.15:
        return (
            f" {what} {actual:.3g}, already the fan-in rule for {activation!r} "
            f"(fan_in={fan_in})."
        )
    # The gain table names one for every activation the advice is about.
    assert initializer is not None
    return (
        f" {what} {actual:.3g}; for {activation!r} and fan_in={fan_in} the "
        f"fan-in rule gives {target:.3g}: try {try_text(kernel, initializer)}."
    )


class Advisor:
    """Turns measurements into warnings, once per layer and condition."""

    def __init__(self, warn: bool, stop_on_nonfinite: bool) -> None:
        self.warn, self.stop_on_nonfinite = warn, stop_on_nonfinite
        self._warned: set[Hashable] = set()
        self._raised: list[str] = []  # texts warned since the last `take_raised`

    def warn_once(self, key: Hashable, message: str | Callable[..., str]) -> None:
        """A warning not tied to one measurement (e.g. a signal unavailable)."""
        self._warn(key, message)

    def _warn(self, key: Hashable, message: str | Callable[..., str]) -> None:
        """Warns once per key; `message` may be a callable, built only then."""
        if self.warn and key not in self._warned:
            self._warned.add(key)
            text = message() if callable(message) else message
            warnings.warn(text, GradientHealthWarning, stacklevel=3)
            self._raised.append(text)

    def take_raised(self) -> list[str]:
        """The warnings raised since the last call, for the event file."""
        raised, self._raised = self._raised, []
        return raised

    def check(
        self,
        units: Sequence[Any],
        step: int,
        record: Mapping[str, float],
        codes: Mapping[str, Mapping[str, int]],
        loss: float | None = None,
        where: str = "batch",
    ) -> bool:
        """Checks one measurement; returns True when training should stop.

        Args:
            units: the watched units, in forward order.
            step: the step the measurement is logged at.
            record: `{tag: value}` of the logged signals.
            codes: `{"weights" | "activations" | "gradients": {unit: code}}`
                of `nonfinite_code`s above 0.
            loss: the measured loss, if any.
            where: what the fractions are over ("batch" or "probe").
        """
        if self._nonfinite(units, step, codes, loss):
            # NaN weights read as dead ReLUs (ReLU maps NaN to 0) and vanishing
            # gradients; the NaN is the news, the rest would mislead.
            return self.stop_on_nonfinite
        for unit in units:
            dead = record.get(f"dead_relu_fraction/{unit.name}")
            if (
                dead is not None
                and unit.activation is not None
                and judge.can_die(unit.activation)
                and judge.dead(dead)
            ):
                self._warn(
                    (unit.name, "dead"),
                    lambda unit=unit, dead=dead: (
                        f"GradientHealth: {dead:.0%} of the ReLU units of layer "
                        f"{unit.name!r} are dead at step {step} (zero for every "
                        f"example of the {where}). Try a LeakyReLU with "
                        f"{recommended_initializer('leaky_relu')} or a lower learning "
                        "rate."
                        + kernel_advice(
                            unit.layer, "relu", recommended_initializer("relu")
                        )
                    ),
                )
            for kind in ("sigmoid", "tanh"):
                saturated = record.get(f"saturated_{kind}_fraction/{unit.name}")
                if saturated is not None and judge.saturated(saturated):
                    self._warn(
                        (unit.name, kind),
                        lambda unit=unit, kind=kind, saturated=saturated: (
                            f"GradientHealth: {saturated:.0%} of the {kind} outputs of "
                            f"layer {unit.name!r} are saturated at step {step}, where "
                            "their gradient vanishes. Normalise the inputs or "
                            "lower the gain."
                            + kernel_advice(
                                unit.layer, kind, recommended_initializer(kind)
                            )
                        ),
                    )
        self._depth(units, step, record)
        return False

    def _nonfinite(
        self,
        units: Sequence[Any],
        step: int,
        codes: Mapping[str, Mapping[str, int]],
        loss: float | None,
    ) -> bool:
        first: tuple[str, str, str] | None = None
        for unit in units:  # forward order: the first layer where it appears
            for what in ("weights", "activations"):
                code = codes.get(what, {}).get(unit.name)
                if code and first is None:
                    first = (unit.name, what, describe_nonfinite(code))
        bad_grads = codes.get("gradients", {})
        loss_bad = loss is not None and not math.isfinite(loss)
        if first is None and not bad_grads and not loss_bad:
            return False
        if first is not None:
            name, what, kind = first
            where = f"{kind} in the {what} of layer {name!r} (the first layer)"
        elif bad_grads:
            kind = " and ".join(
                sorted({describe_nonfinite(c) for c in bad_grads.values()})
            )
            where = (
                f"{kind} in the gradients of layers {list(bad_grads)}, with finite "
                "weights and activations"
            )
        else:
            where = f"the loss is {loss}"
        self._warn(
            ("nonfinite",),
            f"GradientHealth: non-finite values at step {step}: {where}. A "
            "sigmoid that rounds to exactly 1.0, exploding activations or a "
            "too-high learning rate are the usual causes. Logs written so far "
            "are kept" + ("; stopping training." if self.stop_on_nonfinite else "."),
        )
        return True

    def _depth(
        self, units: Sequence[Any], step: int, record: Mapping[str, float]
    ) -> None:
        # Depth is judged on layers with a kernel, which the advice is about
        # (a BatchNorm's scale and offset have no fan-in rule).
        norms = [
            (u.name, record[f"grad_norm/{u.name}"])
            for u in units
            if f"grad_norm/{u.name}" in record and u.has_kernel
        ]
        if len(norms) < 2:
            return
        (first, g_first), (last, g_last) = norms[0], norms[-1]
        # NaN (no verdict) where a norm is not finite or the last one is 0.
        ratio = float(judge.depth_ratio(g_first, g_last))
        kind = judge.depth_verdict(ratio)
        if kind is not None:
            self._warn(
                ("depth", kind),
                lambda: (
                    f"GradientHealth: {kind} gradients at step {step}: the first "
                    f"layer {first!r} has gradient norm {g_first:.3g}, the last "
                    f"layer {last!r} {g_last:.3g} (ratio {ratio:.3g}). Scale each "
                    "kernel by its fan-in: keras_fanin.He() for ReLU, "
                    "keras_fanin.LeCun(gain='tanh') for tanh, keras_fanin.LeCun() "
                    "for SELU, keras_fanin.Xavier() for sigmoid and linear layers."
                    + _depthwise_note(units)
                ),
            )


def _depthwise_note(units: Sequence[Any]) -> str:
    """A sentence on depthwise kernels, whose fan-in Keras's layout rule (and
    so an initializer given only the shape) overstates, if a unit has one."""
    for unit in units:
        for kernel in layer_kernels(unit.layer):
            if kernel.argument == "depthwise_initializer":
                # A separable convolution's depthwise kernel feeds no activation.
                example = (
                    "keras_fanin.He()" if kernel.activated else "keras_fanin.LeCun()"
                )
                return (
                    " A depthwise kernel sums one channel over its receptive "
                    f"field: pass its axes, as in layer {unit.name!r}'s "
                    f"{try_text(kernel, example)}"
                    f"{' for ReLU' if kernel.activated else ''} "
                    "(keras_fanin.check(model) names each layer's fix)."
                )
    return ""
