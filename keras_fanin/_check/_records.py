"""What `check` returns: a record per layer and kernel, and the report's table."""

import dataclasses
from typing import Any

from keras_fanin_logs._text import WIDTH, header, json_safe, row, sig3

LOSS = (
    "sum(y * r) / batch over the model's float outputs y, with "
    "r = numpy.random.default_rng(0).standard_normal(y.shape) (a random "
    "projection: its gradient at the output is standard normal whatever the "
    "output's scale)"
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
    shape: tuple[int, ...]
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
    kernel_shape: tuple[int, ...]
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
    kernels: list[KernelRecord] = dataclasses.field(default_factory=list)
    gated: bool = False  # an RNN: judged with `_GATED_TOLERANCE`

    def to_dict(self) -> dict[str, Any]:
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
    layers: list[LayerRecord]
    problems: list[str]
    input_shapes: list[list[int]]  # the shapes of the batch the pass ran on
    loss: str = LOSS
    # What `fix` re-drew: `(layer, argument, initializer)` texts; empty from
    # `check`.
    fixed: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)
    # The model checked (loaded, for a path) and the batch, for `fix()`.
    model: Any = dataclasses.field(default=None, repr=False, compare=False)
    x: Any = dataclasses.field(default=None, repr=False, compare=False)
    # `(layer, [KernelFix])` of each layer a verdict advises re-drawing.
    advised: list[tuple[Any, list[Any]]] = dataclasses.field(
        default_factory=list, repr=False, compare=False
    )

    @property
    def ok(self) -> bool:
        return not self.problems

    def fix(self, *, force: bool = False) -> "CheckReport":
        """`keras_fanin.fix(report.model, report.x, force=force)`: re-draws
        what this report advises re-drawing, then checks again."""
        from keras_fanin._check._fix import fix

        return fix(self.model, self.x, force=force)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model_name,
            "ok": self.ok,
            "problems": list(self.problems),
            "layers": [r.to_dict() for r in self.layers],
            "input_shapes": self.input_shapes,
            "loss": self.loss,
            "fixed": [list(f) for f in self.fixed],
        }

    def __str__(self) -> str:
        batch = _shape_text(self.input_shapes)
        lines = [f"keras_fanin.check: model {self.model_name!r}, inputs {batch}"]
        if not self.layers:
            lines.append("No layer with a kernel: nothing to check.")
            return "\n".join(lines)
        lines.append(header(_COLUMNS))
        several = False
        cells: tuple[object, ...]
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
        if self.fixed:
            n = len(self.fixed)
            lines.append(f"Fixed: {n} kernel{'s' if n > 1 else ''} drawn again:")
            # One line for the layers alike, in forward order.
            groups: dict[tuple[str, str], list[str]] = {}
            for layer, argument, init in self.fixed:
                groups.setdefault((argument, init), []).append(layer)
            for (argument, init), names in groups.items():
                where = repr(names[0])
                if len(names) > 1:
                    where = f"{len(names)} layers, {names[0]!r} to {names[-1]!r}"
                lines.extend(_wrap(f"- {where}: {argument}={init}", WIDTH, "  "))
        if self.ok:
            lines.append("OK: no problem found.")
        else:
            n = len(self.problems)
            lines.append(f"{n} problem{'s' if n > 1 else ''} found:")
            for problem in self.problems:
                lines.extend(_wrap(f"- {problem}", WIDTH, "  "))
        return "\n".join(lines)


def _shape_text(input_shapes: list[list[int]]) -> str:
    return ", ".join(str(tuple(s)) for s in input_shapes) or "-"


def _wrap(text: str, width: int, indent: str) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width, subsequent_indent=indent, break_on_hyphens=False)
