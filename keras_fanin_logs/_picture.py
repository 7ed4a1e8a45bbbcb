"""The gradient-flow picture: a layer x step heatmap, encoded as PNG by hand.

Two panels side by side, one row per layer in forward order (top to bottom),
one column per logged step (or per bin of steps on a long run): on the left
`log10(grad_norm)` (viridis: dark is small, bright is large), on the right the
layer's dead-ReLU or saturated fraction (inferno: black is 0, bright is 1).
Vanishing gradients show as a band that darkens towards the top, a dying layer
as a bright stripe on the right. Magenta marks a NaN or inf, grey a layer
without that signal. The picture reads on its own: layer names label the
rows, a step axis runs under the panels, and each panel has a colour bar with
its scale (text in `_font`'s built-in bitmap font). Built from
`{tag: [(step, value), ...]}` (GradientHealth's `history`, or what
`keras_fanin.report` reads back) with NumPy alone, and encoded with `zlib` and
`struct`: no imaging library is needed.
"""

import dataclasses
import struct
import zlib

import numpy as np

from keras_fanin_logs import _font
from keras_fanin_logs._signals import FRACTIONS, SIGNALS

# At most this many step columns: a longer history is binned (equal numbers of
# logged steps per column), so the PNG stays small on any run length.
MAX_COLUMNS = 256
# Pixel budget of one panel; each cell is scaled up to fill it, within bounds.
PANEL_WIDTH, PANEL_HEIGHT = 512, 480
MAX_CELL_WIDTH, MAX_ROW_HEIGHT = 8, 16
GAP = 6  # white columns between the two panels' areas
NONFINITE_RGB = (255, 0, 255)
MISSING_RGB = (128, 128, 128)
BACKGROUND = 255  # white
TEXT_RGB = (32, 32, 32)
# Longer layer names keep their head and tail around "..": at 10 characters
# 100 layers x 256 columns fit in 1100 pixels of width.
MAX_LABEL_CHARS = 10
# A panel of a few steps is narrow; its area still fits the title, the axis
# and the colour bar.
MIN_AREA_WIDTH = 160
BAR_WIDTH, BAR_HEIGHT = 256, 10
BORDER = 3  # white pixels around everything
TICK = 3  # length of a tick mark


def _lut(anchors):
    """A 256-entry RGB table interpolated between evenly spaced anchors."""
    anchors = np.asarray(anchors, dtype=np.float64)
    x = np.linspace(0, 1, len(anchors))
    t = np.linspace(0, 1, 256)
    return (
        np.stack([np.interp(t, x, anchors[:, c]) for c in range(3)], axis=1)
        .round()
        .astype(np.uint8)
    )


# matplotlib's viridis and inferno at nine evenly spaced points.
VIRIDIS = _lut([
    (68, 1, 84), (71, 44, 122), (59, 81, 139), (44, 113, 142), (33, 144, 141),
    (39, 173, 129), (92, 200, 99), (170, 220, 50), (253, 231, 37),
])  # fmt: skip
INFERNO = _lut([
    (0, 0, 4), (31, 12, 72), (85, 15, 109), (136, 34, 106), (186, 54, 85),
    (227, 89, 51), (249, 140, 10), (249, 201, 50), (252, 255, 164),
])  # fmt: skip


@dataclasses.dataclass
class Picture:
    """A gradient-flow picture: `rgb` is `uint8[height, width, 3]`.

    `layers` are the rows' layer names (top to bottom), each `row_height`
    pixels tall; each step column is `cell_width` pixels wide. The grad-norm
    colors span `10**low` (darkest) to `10**high` (brightest); `steps` is
    `(first, last, logged)` of the steps shown. Where things are drawn:
    `panels` and `bars` hold `(top, left, bottom, right)` pixel boxes (bottom
    and right exclusive) of the two heatmaps and their colour bars (grad norm
    first), `ticks` the `(column, step)` pairs on the step axis, and `texts`
    every `(text, top, left)` drawn with `_font`.
    """

    rgb: np.ndarray
    layers: list
    row_height: int
    low: float
    high: float
    steps: tuple
    cell_width: int
    panels: tuple
    bars: tuple
    ticks: list
    texts: list

    @property
    def height(self):
        return self.rgb.shape[0]

    @property
    def width(self):
        return self.rgb.shape[1]

    def cell(self, panel, row, column):
        """The `(top, left, bottom, right)` pixel box of one heatmap cell.

        `panel` is 0 for the grad norm, 1 for the dead/saturated fraction;
        `row` and `column` count from the end when negative, as indices do.
        """
        top, left, _, right = self.panels[panel]
        top += (row % len(self.layers)) * self.row_height
        left += (column % ((right - left) // self.cell_width)) * self.cell_width
        return top, left, top + self.row_height, left + self.cell_width

    def png(self):
        return encode_png(self.rgb)

    def legend(self):
        first, last, logged = self.steps
        return (
            f"Rows: {len(self.layers)} layers in forward order, top to bottom "
            f"({', '.join(self.layers)}). Columns: steps {first} to {last} "
            f"({logged} logged). Left: log10 grad norm from {self.low:g} (dark) "
            f"to {self.high:g} (bright). Right: dead-ReLU or saturated fraction "
            "from 0 (black) to 1 (bright). Magenta: NaN or inf; grey: no such "
            "signal."
        )


DESCRIPTION = (
    "Gradient flow: one row per layer in forward order (top to bottom, names "
    "on the left), one column per logged step (step axis below). Left: log10 "
    "grad norm (dark = small, bright = large), right: dead-ReLU or saturated "
    "fraction (black = 0, bright = 1), each with its colour bar. Magenta: NaN "
    "or inf; grey: no such signal. The same in words: `gradient_flow_legend`."
)


def _series(series):
    """`(steps, values)` float64 arrays of `[(step, value), ...]` or a pair."""
    if isinstance(series, tuple) and len(series) == 2:
        steps, values = series
        return np.asarray(steps, np.float64), np.asarray(values, np.float64)
    array = np.asarray(series, np.float64).reshape(-1, 2)
    return array[:, 0], array[:, 1]


def layer_rows(tags, layers=None):
    """The layers with per-layer signals among `tags`, in forward order.

    `layers` gives the forward order when known; otherwise it is the order in
    which the layers' tags first appear (GradientHealth writes each step's
    tags in forward order).
    """
    present = []
    for tag in tags:
        signal, _, name = tag.partition("/")
        if signal in SIGNALS and name and name not in present:
            present.append(name)
    if layers is None:
        return present
    ordered = [name for name in layers if name in present]
    return ordered + [name for name in present if name not in ordered]


def _cells(rows, columns, n_columns):
    """Per-cell means of finite values and flags of non-finite ones.

    `rows`: one `(steps, values)` or None per row; `columns(steps)` maps steps
    to column indices.
    """
    size = len(rows) * n_columns
    total, count = np.zeros(size), np.zeros(size)
    bad = np.zeros(size, bool)
    for r, row in enumerate(rows):
        if row is None:
            continue
        steps, values = row
        cell = r * n_columns + columns(steps)
        finite = np.isfinite(values)
        total += np.bincount(cell[finite], values[finite], minlength=size)
        count += np.bincount(cell[finite], minlength=size)
        bad[cell[~finite]] = True
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / count
    return mean.reshape(len(rows), n_columns), bad.reshape(len(rows), n_columns)


def _paint(mean, bad, lut, low, high):
    index = np.clip(np.round((mean - low) / (high - low) * 255), 0, 255)
    rgb = lut[np.nan_to_num(index).astype(np.intp)]
    rgb[np.isnan(mean)] = MISSING_RGB
    rgb[bad] = NONFINITE_RGB
    return rgb


def gradient_flow(history, layers=None, max_columns=MAX_COLUMNS):
    """Builds the gradient-flow `Picture` of `history`, or None without layers.

    Args:
        history: `{tag: [(step, value), ...]}` or `{tag: (steps, values)}`,
            GradientHealth's tags (`grad_norm/<layer>`, ...); other tags are
            ignored.
        layers: Optional layer names in forward order.
        max_columns: The most step columns; longer histories are binned.
    """
    names = layer_rows(history, layers)
    if not names:
        return None
    grads, fractions = [], []
    for name in names:
        grads.append(history.get(f"grad_norm/{name}"))
        fraction = next((history[f"{f}/{name}"] for f in FRACTIONS
                         if f"{f}/{name}" in history), None)  # fmt: skip
        fractions.append(fraction)
    grads = [None if s is None else _series(s) for s in grads]
    fractions = [None if s is None else _series(s) for s in fractions]
    every = [s[0] for s in grads + fractions if s is not None]
    steps = np.unique(np.concatenate(every)) if every else np.zeros(0)
    if not len(steps):
        steps = np.zeros(1)  # layers with other signals only: one grey column
    n_columns = min(len(steps), max_columns)

    def columns(s):
        return (np.searchsorted(steps, s) * n_columns // len(steps)).astype(np.intp)

    positive = [g[1][np.isfinite(g[1]) & (g[1] > 0)] for g in grads if g is not None]
    positive = np.log10(np.concatenate(positive)) if positive else np.zeros(0)
    if len(positive):
        # + 0.0 turns -0.0 into 0.0, for the legend.
        low = float(np.floor(positive.min())) + 0.0
        high = float(np.ceil(positive.max())) + 0.0
    else:
        low, high = -1.0, 0.0
    high = max(high, low + 1)
    # A zero norm (log10 is -inf) is drawn at the bottom of the scale, not as
    # a fault; a negative one cannot occur.
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = [
            None if g is None else (g[0], np.where(g[1] == 0, low, np.log10(g[1])))
            for g in grads
        ]
    grad_mean, grad_bad = _cells(logs, columns, n_columns)
    frac_mean, frac_bad = _cells(fractions, columns, n_columns)

    cell_width = int(np.clip(PANEL_WIDTH // n_columns, 1, MAX_CELL_WIDTH))
    row_height = int(np.clip(PANEL_HEIGHT // len(names), 1, MAX_ROW_HEIGHT))
    heatmaps = [
        _paint(grad_mean, grad_bad, VIRIDIS, low, high),
        _paint(frac_mean, frac_bad, INFERNO, 0.0, 1.0),
    ]
    shown = (int(steps[0]), int(steps[-1]), len(steps)) if every else (0, 0, 0)
    ticks = _step_ticks(steps, n_columns) if every else []
    drawn = _draw(heatmaps, names, row_height, cell_width, low, high, ticks)
    return Picture(
        layers=names, row_height=row_height, cell_width=cell_width, low=low,
        high=high, steps=shown, **drawn,
    )  # fmt: skip


def _shorten(name):
    """`name`, or its head and tail around ".." when it is too long."""
    if len(name) <= MAX_LABEL_CHARS:
        return name
    head = (MAX_LABEL_CHARS - 1) // 2
    return name[:head] + ".." + name[len(name) - (MAX_LABEL_CHARS - 2 - head) :]


def _nice_interval(target):
    """The smallest 1, 2 or 5 times a power of ten that is at least `target`."""
    target = max(target, 1.0)
    power = 10.0 ** np.floor(np.log10(target))
    return next(f * power for f in (1, 2, 5, 10) if f * power >= target)


def _step_ticks(steps, n_columns):
    """`(column, step)` candidates for the step axis, most important first.

    The first and the last logged step, then round numbers between them (a
    multiple of 1, 2 or 5 times a power of ten, 1 to 4 of them), each shown
    as the logged step nearest to it, in the column that holds that step.
    """

    def tick(i):
        return int(i * n_columns // len(steps)), int(steps[i])

    ticks = [tick(0), tick(len(steps) - 1)]
    span = steps[-1] - steps[0]
    if span <= 0:
        return ticks[:1]
    interval = _nice_interval(span / 5)
    values = np.arange(np.ceil(steps[0] / interval), steps[-1] / interval) * interval
    for value in values[(values > steps[0]) & (values < steps[-1])]:
        i = int(np.searchsorted(steps, value))  # the first step >= value
        if value - steps[i - 1] < steps[i] - value:
            i -= 1
        ticks.append(tick(i))
    return ticks


def _decade_ticks(low, high, width):
    """`(x, text)` of powers of ten on a colour bar `width` pixels wide.

    Both ends, then every 1st, 2nd, 5th, 10th, ... decade between them, the
    first of those strides whose labels do not crowd each other.
    """
    low, high = int(low), int(high)
    per_decade = (width - 1) / (high - low)
    text_width = max(_font.text_width(f"1e{d:+d}") for d in (low, high))
    stride = int(_nice_interval((text_width + _font.ADVANCE) / per_decade))
    between = [d for d in range(low + 1, high) if d % stride == 0]
    return [
        (int(round((d - low) * per_decade)), f"1e{d:+d}") for d in [low, high, *between]
    ]


class _Canvas:
    """A white RGB image with the texts drawn on it."""

    def __init__(self, height, width):
        # A scalar fill is a memset; a per-channel one is 100 times slower.
        self.rgb = np.full((height, width, 3), BACKGROUND, np.uint8)
        self.texts = []

    def fill(self, top, left, bottom, right, rgb):
        self.rgb[top:bottom, left:right] = rgb

    @staticmethod
    def place(text, x, within):
        """The left edge of `text` centred at `x`, moved inside `within`."""
        width = _font.text_width(text)
        low, high = within
        return int(max(low, min(x - width // 2, high - width)))

    def text(self, text, top, left):
        mask = _font.render(text).astype(bool)
        height, width = mask.shape
        self.rgb[top : top + height, left : left + width][mask] = TEXT_RGB
        self.texts.append((text, top, left))


def _spread(candidates, within, gap=_font.ADVANCE):
    """The `(x, text, left)` labels of `candidates` that do not crowd each other.

    `candidates` are `(x, text)` pairs, most important first; each label is
    centred at `x` (moved inside `within`) and kept when it stays `gap`
    pixels away from every label kept before it.
    """
    kept = []
    for x, text in candidates:
        left = _Canvas.place(text, x, within)
        right = left + _font.text_width(text)
        if all(right + gap <= k[2] or left >= k[3] + gap for k in kept):
            kept.append((x, text, left, right))
    return sorted((x, text, left) for x, text, left, _ in kept)


def _draw(heatmaps, names, row_height, cell_width, low, high, ticks):
    """The picture's pixels and geometry: `Picture`'s `rgb`, `panels`, ...

    Left to right: the layer names, the grad-norm area, the fraction area;
    top to bottom: the titles, the heatmaps, the step axis, the colour bars,
    the key to magenta and grey. An area is as wide as its heatmap, or
    `MIN_AREA_WIDTH` when that is wider.
    """
    line = _font.GLYPH_HEIGHT
    rows, n_columns = heatmaps[0].shape[:2]
    labels = [_shorten(name) for name in names]
    label_width = max(_font.text_width(t) for t in [*labels, "step"])
    panel_width, panel_height = n_columns * cell_width, rows * row_height
    area = max(panel_width, MIN_AREA_WIDTH)
    lefts = [BORDER + label_width + 2 + TICK]
    lefts.append(lefts[0] + area + GAP)
    top = BORDER + line + 4
    bottom = top + panel_height
    axis_top = bottom + TICK + 2
    bar_top = axis_top + line + 6
    bar_bottom = bar_top + BAR_HEIGHT
    scale_top = bar_bottom + TICK + 2
    key_top = scale_top + line + 6
    canvas = _Canvas(key_top + line + BORDER, lefts[1] + area + BORDER)
    label_right = lefts[0] - TICK - 2

    titles = ("log10 grad norm", "dead or saturated fraction")
    for left, title, heatmap in zip(lefts, titles, heatmaps, strict=True):
        at = _Canvas.place(title, left + panel_width // 2, (left, left + area))
        canvas.text(title, BORDER, at)
        cells = np.repeat(np.repeat(heatmap, row_height, 0), cell_width, 1)
        canvas.fill(top, left, bottom, left + panel_width, cells)
    panels = tuple((top, left, bottom, left + panel_width) for left in lefts)

    # Every k-th row's name, its caps centred on the row: one text line
    # (8 pixels and a blank one) never overlaps the next.
    every = -(-(line + 1) // row_height)
    for row in range(0, rows, every):
        middle = top + row * row_height + row_height // 2
        canvas.fill(middle, lefts[0] - TICK - 1, middle + 1, lefts[0] - 1, TEXT_RGB)
        left = label_right - _font.text_width(labels[row])
        canvas.text(labels[row], middle - _font.CAP_HEIGHT // 2, left)

    if ticks:
        canvas.text("step", axis_top, label_right - _font.text_width("step"))
        candidates = [
            (column * cell_width + cell_width // 2, str(step), column, step)
            for column, step in ticks
        ]
        shown = _spread([c[:2] for c in candidates], (0, area))
        keep = {(x, text) for x, text, _ in shown}
        ticks = sorted({c[2:] for c in candidates if c[:2] in keep})
        for left in lefts:
            for x, text, at in shown:
                canvas.fill(bottom, left + x, bottom + TICK, left + x + 1, TEXT_RGB)
                canvas.text(text, axis_top, left + at)

    # Each bar is inset by half its end labels, so that every label, the
    # ends' too, is centred under its tick.
    ends = [(f"1e{int(low):+d}", f"1e{int(high):+d}"), ("0", "1")]
    insets = [max(_font.text_width(t) for t in pair) // 2 + 1 for pair in ends]
    widths = [min(area - 2 * inset, BAR_WIDTH) for inset in insets]
    fractions = (0, 1, 0.5, 0.25, 0.75)
    scales = [
        (VIRIDIS, _decade_ticks(low, high, widths[0])),
        (INFERNO, [(round(f * (widths[1] - 1)), f"{f:g}") for f in fractions]),
    ]
    bars = []
    for left, inset, width, (lut, candidates) in zip(
        lefts, insets, widths, scales, strict=True
    ):
        left += inset
        ramp = lut[np.round(np.linspace(0, 255, width)).astype(np.intp)]
        canvas.fill(bar_top, left, bar_bottom, left + width, ramp)
        bars.append((bar_top, left, bar_bottom, left + width))
        for x, text, at in _spread(candidates, (-inset, area - inset)):
            canvas.fill(bar_bottom, left + x, bar_bottom + TICK, left + x + 1, TEXT_RGB)
            canvas.text(text, scale_top, left + at)

    x = lefts[0]
    for rgb, text in ((NONFINITE_RGB, "NaN or inf"), (MISSING_RGB, "no signal")):
        size = _font.CAP_HEIGHT
        canvas.fill(key_top, x, key_top + size, x + size, rgb)
        canvas.text(text, key_top, x + size + 3)
        x += size + 3 + _font.text_width(text) + 3 * _font.ADVANCE
    return dict(
        rgb=canvas.rgb, panels=panels, bars=tuple(bars), ticks=ticks,
        texts=canvas.texts,
    )  # fmt: skip


def _chunk(kind, data):
    return (
        struct.pack(">I", len(data))
        + kind
        + data
        + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def encode_png(rgb):
    """PNG bytes of a `uint8[height, width, 3]` image.

    Each scanline is stored with PNG's "Up" filter (the difference from the
    line above): the picture repeats each row of cells over several pixel
    lines, which then compress to almost nothing.
    """
    rgb = np.ascontiguousarray(rgb, np.uint8)
    height, width, _ = rgb.shape
    lines = rgb.reshape(height, width * 3)
    raw = np.empty((height, width * 3 + 1), np.uint8)
    raw[:, 0] = 2  # filter type Up
    raw[0, 1:] = lines[0]
    np.subtract(lines[1:], lines[:-1], out=raw[1:, 1:])  # wraps modulo 256
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(raw.tobytes(), 6))
        + _chunk(b"IEND", b"")
    )
