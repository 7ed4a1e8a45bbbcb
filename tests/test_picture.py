"""The gradient-flow picture and its built-in font, on hand-made histories."""

import itertools
import struct
import time
import zlib

import numpy as np
import pytest

from keras_fanin_logs import _font
from keras_fanin_logs._picture import (
    INFERNO,
    MISSING_RGB,
    NONFINITE_RGB,
    TEXT_RGB,
    VIRIDIS,
    gradient_flow,
)


def _history(n_layers, n_steps, every=1, name="dense_{}"):
    """Grad norms falling as 0.5^depth towards the input; some dead ReLUs."""
    steps = np.arange(n_steps) * every
    history = {}
    for depth in range(n_layers):
        layer = name.format(depth)
        norms = np.full(n_steps, 0.5 ** (n_layers - depth))
        history[f"grad_norm/{layer}"] = list(zip(steps, norms, strict=True))
        if depth % 3:
            dead = np.linspace(0, 1, n_steps) * depth / n_layers
            history[f"dead_relu_fraction/{layer}"] = list(zip(steps, dead, strict=True))
    return history


def _decode(png):
    """The RGB pixels of an 8-bit RGB PNG, by PNG's own rules (filters 0-2)."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, at = {}, 8
    while at < len(png):
        (length,) = struct.unpack(">I", png[at : at + 4])
        kind, data = png[at + 4 : at + 8], png[at + 8 : at + 8 + length]
        (crc,) = struct.unpack(">I", png[at + 8 + length : at + 12 + length])
        assert crc == zlib.crc32(kind + data)
        chunks[kind] = chunks.get(kind, b"") + data
        at += 12 + length
    width, height, depth, color, *_ = struct.unpack(">IIBBBBB", chunks[b"IHDR"])
    assert (depth, color) == (8, 2) and b"IEND" in chunks
    raw = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), np.uint8)
    raw = raw.reshape(height, width * 3 + 1)
    rows = np.zeros((height + 1, width * 3), np.uint8)  # row -1: zeros
    for y, (kind, line) in enumerate(zip(raw[:, 0], raw[:, 1:], strict=True)):
        if kind == 0:
            rows[y + 1] = line
        elif kind == 1:  # Sub: add the pixel to the left
            pixels = line.reshape(width, 3).astype(np.int64)
            rows[y + 1] = (np.cumsum(pixels, axis=0) % 256).reshape(-1)
        elif kind == 2:  # Up: add the pixel above
            rows[y + 1] = line + rows[y]
        else:
            raise AssertionError(f"filter {kind} not decoded here")
    return rows[1:].reshape(height, width, 3)


def _dark(picture):
    return (picture.rgb == TEXT_RGB).all(axis=-1)


def _find(picture, text, top, left, bottom, right):
    """`(top, left)` of each place in the box where exactly `text` is drawn.

    Exactly: the font's pixels of `text` are dark and all others in its box
    are not.
    """
    mask = _font.render(text).astype(bool)
    region = _dark(picture)[top:bottom, left:right]
    if mask.shape[0] > region.shape[0] or mask.shape[1] > region.shape[1]:
        return []
    windows = np.lib.stride_tricks.sliding_window_view(region, mask.shape)
    ys, xs = np.nonzero((windows == mask).all(axis=(-2, -1)))
    return [(int(y) + top, int(x) + left) for y, x in zip(ys, xs, strict=True)]


def _box_of(picture, panel, row, column):
    top, left, bottom, right = picture.cell(panel, row, column)
    return picture.rgb[top:bottom, left:right]


def test_every_glyph_renders_and_differs():
    required = "_-./:()+e^[],%x "
    for c in (
        required + "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    ):
        assert c in _font.CHARACTERS, c
    masks = {}
    for c in _font.CHARACTERS:
        mask = _font.render(c)
        assert mask.shape == (_font.GLYPH_HEIGHT, _font.GLYPH_WIDTH), c
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}, c
        assert mask.any() or c == " ", c
        # Only descenders reach the 8th row.
        assert not mask[-1].any() or c in "gjpqy,;_", c
        masks[mask.tobytes()] = masks.get(mask.tobytes(), "") + c
    unknown = _font.render("\u00e9")
    masks[unknown.tobytes()] = masks.get(unknown.tobytes(), "") + "(box)"
    assert len(masks) == len(_font.CHARACTERS) + 1, [
        chars for chars in masks.values() if len(chars) > 1
    ]


def test_render_lays_glyphs_out_and_scales():
    text = "relu_30 (1e-5)"
    mask = _font.render(text)
    assert mask.shape == (8, _font.text_width(text)) == (8, 6 * len(text) - 1)
    for i, c in enumerate(text):
        glyph = mask[:, 6 * i : 6 * i + 5]
        np.testing.assert_array_equal(glyph, _font.render(c))
        if i + 1 < len(text):
            assert not mask[:, 6 * i + 5].any()  # the blank column between
    big = _font.render(text, scale=3)
    np.testing.assert_array_equal(big, np.kron(mask, np.ones((3, 3), np.uint8)))
    assert _font.render("").shape == (8, 0) and _font.text_width("") == 0
    with pytest.raises(ValueError, match="Argument `scale` must be a positive"):
        _font.render("a", scale=0)


def test_cells_keep_their_colours():
    steps = range(10)
    history = {
        # Forward order: "first" then "last"; the scale is 1e-3 .. 1e+0.
        "grad_norm/first": [(s, 1e-3) for s in steps],
        "grad_norm/last": [(s, np.nan if s == 4 else 1.0) for s in steps],
        "dead_relu_fraction/last": [(s, 1.0) for s in steps],
        "saturated_tanh_fraction/first": [(s, 0.0) for s in steps],
    }
    picture = gradient_flow(history, ["first", "last"])
    assert picture.layers == ["first", "last"]
    assert (picture.low, picture.high, picture.steps) == (-3.0, 0.0, (0, 9, 10))
    assert picture.row_height >= 8 and picture.cell_width >= 2
    for column in steps:
        assert (_box_of(picture, 0, 0, column) == VIRIDIS[0]).all()
        expected = NONFINITE_RGB if column == 4 else VIRIDIS[255]
        assert (_box_of(picture, 0, 1, column) == expected).all(), column
        assert (_box_of(picture, 1, 0, column) == INFERNO[0]).all()
        assert (_box_of(picture, 1, 1, column) == INFERNO[255]).all()
    assert picture.cell(1, -1, -1) == picture.cell(1, 1, 9)
    assert picture.cell(1, 1, 9)[3] == picture.panels[1][3]
    # A layer without a fraction (or a grad norm) is grey in that panel.
    del history["saturated_tanh_fraction/first"]
    picture = gradient_flow(history, ["first", "last"])
    top, left, bottom, right = picture.panels[1]
    assert (
        picture.rgb[top : top + picture.row_height, left:right] == MISSING_RGB
    ).all()
    assert (_box_of(picture, 1, 1, 0) == INFERNO[255]).all()
    # The colour bars run through the whole colour map.
    for (top, left, bottom, right), lut in zip(
        picture.bars, (VIRIDIS, INFERNO), strict=True
    ):
        bar = picture.rgb[top:bottom, left:right]
        assert (bar == bar[:1]).all()
        np.testing.assert_array_equal(bar[0, [0, -1]], lut[[0, 255]])
    # The key: a magenta and a grey swatch.
    for rgb in (NONFINITE_RGB, MISSING_RGB):
        below = picture.rgb[picture.bars[0][2] :]
        assert (below == rgb).all(axis=-1).sum() == _font.CAP_HEIGHT**2


def test_layer_names_are_drawn_against_their_rows():
    long = "a_layer_with_a_name_much_too_long"
    names = [f"dense_{i}" for i in range(29)] + [long]
    history = _history(30, 50, name="{}")
    history = {
        tag.split("/")[0] + "/" + names[int(tag.split("/")[1])]: series
        for tag, series in history.items()
    }
    picture = gradient_flow(history)
    assert picture.layers == names
    top, left, bottom, _ = picture.panels[0]
    for row, name in enumerate(names):
        text = "a_la..long" if name == long else name
        middle = top + row * picture.row_height + picture.row_height // 2
        hits = _find(picture, text, middle - 12, 0, middle + 12, left)
        # The middle line of its capitals is the row's.
        assert [h for h in hits if h[0] + _font.CAP_HEIGHT // 2 == middle], (row, hits)
        # The tick from the name to the row.
        assert _dark(picture)[middle, left - 4 : left - 1].all()
    assert not _find(picture, long[:10], 0, 0, picture.height, left)


def test_step_ticks_and_colour_scales_are_labelled():
    history = _history(30, 300, every=25)  # steps 0 .. 7475, binned
    picture = gradient_flow(history)
    assert picture.steps == (0, 7475, 300)
    assert (picture.low, picture.high) == (-10.0, 0.0)
    first, last = picture.ticks[0], picture.ticks[-1]
    assert first == (0, 0) and last == (255, 7475)
    assert 3 <= len(picture.ticks) <= 6
    dark = _dark(picture)
    for panel in (0, 1):
        top, left, bottom, right = picture.panels[panel]
        axis = (bottom, left - 10, bottom + 20, right + 10)
        for column, step in picture.ticks:
            _, x, *_ = picture.cell(panel, 0, column)
            x += picture.cell_width // 2
            assert dark[bottom : bottom + 3, x].all()  # the tick mark
            hits = _find(picture, str(step), *axis)
            width = _font.text_width(str(step))
            assert [h for h in hits if h[1] <= x < h[1] + width], (panel, step)
    for (_, left, bottom, right), ends in zip(
        picture.bars, [("1e-10", "1e+0"), ("0", "1")], strict=True
    ):
        scale = (bottom, left - 20, bottom + 20, right + 20)
        for x, text in zip((left, right - 1), ends, strict=True):
            assert dark[bottom : bottom + 3, x].all()
            hits = _find(picture, text, *scale)
            width = _font.text_width(text)
            assert [h for h in hits if h[1] <= x < h[1] + width], text
    # The panels' titles, and the name of the axis.
    top, _, bottom, _ = picture.panels[0]
    for text in ("log10 grad norm", "dead or saturated fraction"):
        assert len(_find(picture, text, 0, 0, top, picture.width)) == 1
    assert len(_find(picture, "step", bottom, 0, bottom + 20, left)) == 1


def test_png_decodes_to_the_picture():
    history = _history(7, 40)
    history["grad_norm/dense_3"][5] = (5, float("inf"))
    picture = gradient_flow(history)
    png = picture.png()
    np.testing.assert_array_equal(_decode(png), picture.rgb)
    assert picture.rgb.shape == (picture.height, picture.width, 3)


@pytest.mark.parametrize(
    "n_layers, n_steps", [(1, 1), (4, 7), (30, 256), (100, 1000), (700, 3)]
)
def test_sizes_and_no_overlaps(n_layers, n_steps):
    picture = gradient_flow(_history(n_layers, n_steps, name="conv2d_block_{}"))
    if (n_layers, n_steps) == (100, 1000):
        assert picture.width <= 1100 and picture.height <= 700
        assert picture.cell_width * 256 == picture.panels[0][3] - picture.panels[0][1]
    assert picture.width <= 1100 and picture.height <= 800
    boxes = [
        (top, left, top + _font.GLYPH_HEIGHT, left + _font.text_width(text))
        for text, top, left in picture.texts
    ]
    boxes += [*picture.panels, *picture.bars]
    for box in boxes:
        top, left, bottom, right = box
        assert 0 <= top < bottom <= picture.height, box
        assert 0 <= left < right <= picture.width, box
    for a, b in itertools.combinations(boxes, 2):
        apart = a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]
        assert apart, (a, b)
    # Every k-th layer is labelled, and all when the rows are tall enough.
    labelled = [text for text, _, left in picture.texts if left < picture.panels[0][1]]
    labelled.remove("step")
    every = -(-(_font.GLYPH_HEIGHT + 1) // picture.row_height)
    assert len(labelled) == len(range(0, n_layers, every))
    if picture.row_height > _font.GLYPH_HEIGHT:
        assert len(labelled) == n_layers
    assert 1 <= len(picture.ticks) <= 6
    if n_steps > 100:
        assert len(picture.ticks) >= 3


def test_draw_and_encode_are_fast():
    history = _history(30, 256)
    start = time.perf_counter()
    for _ in range(5):
        png = gradient_flow(history).png()
    seconds = (time.perf_counter() - start) / 5
    assert len(png) < 60_000
    assert seconds < 0.25, seconds  # about 15 ms on a busy 2-core machine
