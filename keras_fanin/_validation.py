"""Argument checks shared by every public entry point, with Keras-style messages."""

import math
import numbers


def _check_finite_real(name, value, what, ok):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"Argument `{name}` must be a {what} finite number. "
            f"Received: {name}={value!r} of type {type(value).__name__}"
        )
    if not math.isfinite(value) or not ok(value):
        raise ValueError(
            f"Argument `{name}` must be a {what} finite number. "
            f"Received: {name}={value!r}"
        )
    return float(value)


def check_positive_finite(name, value):
    """Returns `value` as a float, or raises if it is not a positive finite number."""
    return _check_finite_real(name, value, "positive", lambda v: v > 0)


def check_non_negative_finite(name, value):
    """Returns `value` as a float, or raises if it is not a finite number >= 0."""
    return _check_finite_real(name, value, "non-negative", lambda v: v >= 0)


def check_positive_int(name, value):
    """Returns `value`, or raises if it is not an int >= 1 (bools are refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"Argument `{name}` must be a positive integer. "
            f"Received: {name}={value!r} of type {type(value).__name__}"
        )
    if value < 1:
        raise ValueError(
            f"Argument `{name}` must be a positive integer. Received: {name}={value!r}"
        )
    return int(value)


def check_one_of(name, value, allowed):
    """Returns `value`, or raises if it is not one of the strings in `allowed`."""
    if not isinstance(value, str) or value not in allowed:
        choices = "{" + ", ".join(repr(a) for a in allowed) + "}"
        raise ValueError(
            f"Argument `{name}` must be one of {choices}. Received: {name}={value!r}"
        )
    return value
