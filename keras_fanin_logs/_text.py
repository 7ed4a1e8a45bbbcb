"""Plain-text and JSON output shared by `check` and `report`: one home for both."""

import math

WIDTH = 100  # a terminal's columns; every table and wrapped line fits


def sig3(value) -> str:
    """A number with the 3 significant figures that mean something; "-" if None."""
    return "-" if value is None else f"{value:.3g}"


def cut(text, width) -> str:
    """`text` cut to `width` characters, keeping both ends (nested layer names)."""
    text = str(text)
    if len(text) <= width:
        return text
    head = (width - 3) // 2
    return text[:head] + "..." + text[-(width - 3 - head) :]


def row(cells, columns) -> str:
    """One table row: `columns` is `((header, width, align), ...)`."""
    return " ".join(
        f"{cut(cell, width):{align}{width}}"
        for cell, (_, width, align) in zip(cells, columns, strict=True)
    ).rstrip()


def header(columns) -> str:
    return row([title for title, _, _ in columns], columns)


def json_safe(value):
    """Plain data for strict JSON: NaN and infinities become "nan", "inf"."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
