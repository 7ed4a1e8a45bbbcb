"""`check`'s verdicts: each kernel against its fan rule, chains of layers
whose signal drifts, vanishing signals and gradients, and the advice."""

import collections
import dataclasses
import math
from typing import NamedTuple

import numpy as np

from keras_fanin._check._graph import WEAK_NORMALIZATION
from keras_fanin._check._layers import inner, layer_activation
from keras_fanin._check._measure import SATURATION_EPS
from keras_fanin._check._records import KernelRecord
from keras_fanin._gains import Advice, calculate_gain, recommended
from keras_fanin.health import _stats
from keras_fanin.health._advice import drawn_std, try_text
from keras_fanin_logs.judge import (
    DEAD_WARN_FRACTION,
    DEPTH_RATIO_WARN,
    SATURATED_WARN_FRACTION,
)

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


# float32 holds about 7 significant digits: a signal a million times below its
# start is rounding noise next to anything of the first scale (a bias, a
# residual). This needs no prediction to be a problem.
VANISHED = 1e-6


def l2_norm(g):
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


def nonfinite_text(array):
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


def activation_of(layer, following, gated):
    """`(display name, object for calculate_gain or None)` of a kernel layer."""
    if gated:
        return "rnn", None
    own = getattr(inner(layer), "activation", None)
    name = layer_activation(layer)
    if callable(own) and name not in (None, "linear"):
        return name, own
    if following is not None:
        name = layer_activation(following)
        if name is None:
            name = type(following).__name__.lower()
        return name, following
    return "linear", "linear"


@dataclasses.dataclass
class Judged:
    """What a layer's verdicts and advice need beside its `LayerRecord`."""

    activation: object  # for calculate_gain, or None
    name: str
    kernels: list  # `_fans.Kernel`s, in the order of `record.kernels`
    records: list  # their `KernelRecord`s
    flagged: bool = False  # a verdict advises re-drawing it (what `fix` does)


class KernelFix(NamedTuple):
    """A kernel to re-draw, and with what."""

    kernel: object  # a `_fans.Kernel`
    text: str  # the advice, as `check` writes it
    advice: object  # an `Advice`, "orthogonal", or None where no gain is known


def kernel_record(kernel, judged, grad):
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
        grad_norm=l2_norm(grad),
    )


def path_ratio(kernels, records):
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


def kernel_fixes(judged):
    """One `KernelFix` per kernel off its fan rule (every kernel on the signal
    if none is off alone)."""
    pairs = list(zip(judged.kernels, judged.records, strict=True))

    def off(kernel, record):
        tolerance = _GATED_TOLERANCE if kernel.gated else _LAYER_TOLERANCE
        return record.ratio is not None and not (
            1 / tolerance <= record.ratio <= tolerance
        )

    chosen = [k for k, r in pairs if off(k, r)] or [k for k, _ in pairs if not k.side]
    fixes = []
    for kernel in chosen:
        if kernel.gated and kernel.side:
            advice, text = "orthogonal", "'orthogonal'"
        elif kernel.gated or not kernel.activated:
            advice = Advice("LeCun")
            text = str(advice)
        else:
            advice = advised(judged.activation, judged.name)
            text = _NO_GAIN if advice is None else str(advice)
        fixes.append(KernelFix(kernel, try_text(kernel, text, len(pairs) > 1), advice))
    return fixes


def _fix(judged):
    """The initializers to use, one per argument of the layer's."""
    texts, arguments = [], set()
    for fix in kernel_fixes(judged):
        if fix.kernel.argument in arguments:  # attention's four, one argument
            continue
        arguments.add(fix.kernel.argument)
        texts.append(fix.text)
    return " and ".join(dict.fromkeys(texts))  # a bidirectional layer's twice


def _gain(activation):
    if activation is None:
        return None
    try:
        return calculate_gain(activation)
    except (TypeError, ValueError):
        return None


_NO_GAIN = "an initializer with std = gain / sqrt(fan_in)"


def advised(activation, name):
    """The `Advice` for a kernel `activation` follows: the gain table's, or
    `LeCun(gain=name)` where the table's preset does not draw
    `calculate_gain(activation) / sqrt(fan_in)`; None where no gain is known."""
    gain = _gain(activation)
    if gain is None:
        return None
    advice = recommended(activation)
    if advice in (None, Advice("LeCun"), Advice("Xavier")) and not (
        math.isclose(gain, 1.0)
    ):
        return Advice("LeCun", (("gain", name),))
    return advice or Advice("LeCun")


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
    for k in judged:
        objects[k].flagged = True
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
    for k in off:
        objects[k].flagged = True
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
        f"{WEAK_NORMALIZATION:.0%} of their epsilon ({variance:.3g} against "
        f"{epsilon:g} in {name!r}): dividing by about sqrt(epsilon), they pass "
        "the signal on shrunk instead of resetting its scale. Raise the std of "
        "the kernels before them (see the ratio column)."
    )


def problems_of(calls, names, records, objects, chains, stats, grads_bad, weak=()):
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
        ratio = _top_ratio(r)
        for k in bad:  # each one its kernels saturate or kill
            if _saturates(records[k]):
                objects[k].flagged = True
        if _saturates(r):
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


def _top_ratio(record):
    """A layer's ratio; attention's largest, as it saturates through its
    queries and keys."""
    if len(record.kernels) > 1:
        ratios = [k.ratio for k in record.kernels if k.ratio is not None]
        return max(ratios, default=None)
    return record.ratio


def _saturates(record):
    """Whether a layer's kernels draw enough above the fan rule to saturate
    or kill its units."""
    ratio = _top_ratio(record)
    return ratio is not None and ratio > _tolerance(record) and not record.normalized


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
            for q in before:
                objects[q].flagged = True
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


def chains_of(order, records, successors, opaque):
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
