"""The gradient-flow picture: a layer x step heatmap, encoded as PNG by hand.

Two panels side by side, one row per layer in forward order (top to bottom),
one column per logged step (or per bin of steps on a long run): on the left
`log10(grad_norm)` (viridis: dark is small, bright is large), on the right the
layer's dead-ReLU or saturated fraction (inferno: black is 0, bright is 1).
Vanishing gradients show as a band that darkens towards the top, a dying layer
as a bright stripe on the right. Magenta marks a NaN or inf, grey a layer
without that signal. Built from `{tag: [(step, value), ...]}` (GradientHealth's
`history`, or what `keras_fanin.report` reads back) with NumPy alone, and
encoded with `zlib` and `struct`: no imaging library is needed.
"""

import dataclasses
import struct
import zlib

import numpy as np

from keras_fanin_logs._signals import FRACTIONS, SIGNALS

# At most this many step columns: a longer history is binned (equal numbers of
# logged steps per column), so the PNG stays small on any run length.
MAX_COLUMNS = 256
# Pixel budget of one panel; each cell is scaled up to fill it, within bounds.
PANEL_WIDTH, PANEL_HEIGHT = 512, 480
MAX_CELL_WIDTH, MAX_ROW_HEIGHT = 8, 16
GAP = 4  # white columns between the two panels
NONFINITE_RGB = (255, 0, 255)
MISSING_RGB = (128, 128, 128)


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
    pixels tall; the grad-norm colors span `10**low` (darkest) to `10**high`
    (brightest); `steps` is `(first, last, logged)` of the steps shown.
    """

    rgb: np.ndarray
    layers: list
    row_height: int
    low: float
    high: float
    steps: tuple

    @property
    def height(self):
        return self.rgb.shape[0]

    @property
    def width(self):
        return self.rgb.shape[1]

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
    "Gradient flow: one row per layer in forward order (top to bottom), one "
    "column per logged step. Left: log10 grad norm (dark = small, bright = "
    "large; the scale is in the `gradient_flow_legend` text). Right: dead-ReLU "
    "or saturated fraction (black = 0, bright = 1). Magenta: NaN or inf; grey: "
    "no such signal."
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
    left = _paint(grad_mean, grad_bad, VIRIDIS, low, high)
    right = _paint(frac_mean, frac_bad, INFERNO, 0.0, 1.0)
    gap = np.full((len(names), 1, 3), 255, np.uint8)
    scale = [cell_width] * n_columns
    rgb = np.concatenate(
        [
            np.repeat(left, scale, axis=1),
            np.repeat(gap, GAP, axis=1),
            np.repeat(right, scale, axis=1),
        ],
        axis=1,
    )
    rgb = np.repeat(rgb, row_height, axis=0)
    shown = (int(steps[0]), int(steps[-1]), len(steps)) if every else (0, 0, 0)
    return Picture(rgb, names, row_height, low, high, shown)


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
