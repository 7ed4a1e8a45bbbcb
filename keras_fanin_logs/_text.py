"""Plain-text and JSON output shared by `check` and `report`: one home for both."""

import math
from collections.abc import Sequence
from typing import Any

# ((header, width, align), ...) of a table.
Columns = Sequence[tuple[str, int, str]]

WIDTH = 100  # a terminal's columns; every table and wrapped line fits


def sig3(value: float | None) -> str:
    """A number with the 3 significant figures that mean something; "-" if None."""
    return "-" if value is None else f"{value:.3g}"


def cut(text: object, width: int) -> str:
    """`text` cut to `width` characters, keeping both ends (nested layer names)."""
    string = str(text)
    if len(string) <= width:
        return string
    head = (width - 3) // 2
    return string[:head] + "..." + string[-(width - 3 - head) :]


def row(cells: Sequence[object], columns: Columns) -> str:
    """One table row: `columns` is `((header, width, align), ...)`."""
    return " ".join(
        f"{cut(cell, width):{align}{width}}"
        for cell, (_, width, align) in zip(cells, columns, strict=True)
    ).rstrip()


def header(columns: Columns) -> str:
    return row([title for title, _, _ in columns], columns)


def json_safe(value: Any) -> Any:
    """Plain data for strict JSON: NaN and infinities become "nan", "inf"."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
