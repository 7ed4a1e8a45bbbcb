"""Argument checks shared by every public entry point, with Keras-style messages."""

import math
import numbers
from collections.abc import Callable, Collection
from typing import Any

import numpy as np

# float32's largest finite value and smallest positive (subnormal) one: a gain
# outside them is inf or 0 once a float32 weight is drawn with it.
FLOAT32_MAX = float(np.finfo(np.float32).max)
FLOAT32_TINY = float(np.finfo(np.float32).smallest_subnormal)


def _check_finite_real(
    name: str, value: object, what: str, ok: Callable[[Any], bool]
) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"Argument `{name}` must be a {what} finite number. "
            f"Received: {name}={describe(value)} of type {type(value).__name__}"
        )
    try:
        finite = math.isfinite(value)
    except OverflowError:  # an int too large for a float
        finite = False
    if not finite or not ok(value):
        raise ValueError(
            f"Argument `{name}` must be a {what} finite number. "
            f"Received: {name}={describe(value)}"
        )
    return float(value)


def check_positive_finite(name: str, value: object) -> float:
    """Returns `value` as a float, or raises if it is not a positive finite number."""
    return _check_finite_real(name, value, "positive", lambda v: v > 0)


def check_non_negative_finite(name: str, value: object) -> float:
    """Returns `value` as a float, or raises if it is not a finite number >= 0."""
    return _check_finite_real(name, value, "non-negative", lambda v: v >= 0)


def check_positive_float32(name: str, value: object) -> float:
    """Returns `value` as a float, or raises unless float32 holds it as a number > 0.

    That is, unless it lies in `[FLOAT32_TINY, FLOAT32_MAX]`: a larger value is
    inf in float32 (and its square overflows a Python float near 1.3e154), a
    smaller one rounds to 0.
    """
    value = check_positive_finite(name, value)
    if not FLOAT32_TINY <= value <= FLOAT32_MAX:
        raise ValueError(
            f"Argument `{name}` must be a positive finite number that float32 "
            f"can hold, between {FLOAT32_TINY:.7g} and {FLOAT32_MAX:.8g}. "
            f"Received: {name}={value!r}"
        )
    return value


def check_non_negative_float32(name: str, value: object) -> float:
    """Returns `value` as a float, or raises unless it is in `[0, FLOAT32_MAX]`."""
    value = check_non_negative_finite(name, value)
    if value > FLOAT32_MAX:
        raise ValueError(
            f"Argument `{name}` must be a non-negative finite number that float32 "
            f"can hold, at most {FLOAT32_MAX:.8g}. Received: {name}={value!r}"
        )
    return value


def describe(value: Any, limit: int = 80) -> str:
    """`repr(value)`, or its type and shape (or length) where that would be long.

    Error messages use it so that a kernel passed by mistake for its shape is
    never printed value by value.
    """
    shape = getattr(value, "shape", None)
    if shape is not None and not isinstance(value, (tuple, list)) and len(shape):
        dtype = getattr(value, "dtype", None)
        text = f"<{type(value).__name__} of shape {tuple(shape)}"
        return text + (f" and dtype {dtype}>" if dtype is not None else ">")
    if isinstance(value, (tuple, list)) and len(value) > limit // 2:
        return f"<{type(value).__name__} of length {len(value)}>"
    if isinstance(value, int) and value.bit_length() > 3 * limit:
        # Python refuses to print ints past 4300 digits; nobody reads 80 of them.
        return f"<{type(value).__name__} of {value.bit_length()} bits>"
    text = repr(value)
    return text if len(text) <= limit else f"<{type(value).__name__}>"


def check_positive_int(name: str, value: object, maximum: int | None = None) -> int:
    """Returns `value`, or raises if it is not an int >= 1 (bools are refused),
    or is over `maximum`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"Argument `{name}` must be a positive integer. "
            f"Received: {name}={value!r} of type {type(value).__name__}"
        )
    number = int(value)  # exact for any Integral
    if number < 1:
        raise ValueError(
            f"Argument `{name}` must be a positive integer. Received: {name}={value!r}"
        )
    if maximum is not None and number > maximum:
        raise ValueError(
            f"Argument `{name}` must be a positive integer of at most {maximum}. "
            f"Received: {name}={value!r}"
        )
    return number


def check_one_of(name: str, value: object, allowed: Collection[str]) -> str:
    """Returns `value`, or raises if it is not one of the strings in `allowed`."""
    if not isinstance(value, str) or value not in allowed:
        choices = "{" + ", ".join(repr(a) for a in allowed) + "}"
        raise ValueError(
            f"Argument `{name}` must be one of {choices}. Received: {name}={value!r}"
        )
    return value
