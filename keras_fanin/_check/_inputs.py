"""The batch `check` runs on: the user's, checked, or standard-normal; and a
model loaded from a `.keras` file."""

import math
import os

import keras
import numpy as np

from keras_fanin._check._measure import SEED
from keras_fanin._validation import describe
from keras_fanin.health._probe_data import shapes

# Synthetic inputs: at most 64 examples and about a million input values.
_MAX_BATCH = 64


_MAX_INPUT_VALUES = 2**20


def load_model(path):
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(
            f"Argument `model` is a path to no file: {path!r} does not exist."
        )
    if not path.endswith(".keras"):
        raise ValueError(
            "Argument `model` must be a Keras model or the path of a `.keras` "
            f"file. Received: model={path!r}"
        )
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as error:  # noqa: BLE001 - a bad file, in one line
        detail = " ".join(str(error).split())[:300]
        raise ValueError(
            f"Argument `model`: could not load {path!r} "
            f"({type(error).__name__}: {detail})"
        ) from error


def check_x(x):
    """`x` as NumPy leaves (same structure), or a TypeError/ValueError."""
    if isinstance(x, (str, bytes)) or x is None:
        raise TypeError(
            "Argument `x` must be an array or tensor (or a list, tuple or dict "
            f"of them). Received: x={describe(x)} of type {type(x).__name__}"
        )
    try:
        arrays = keras.tree.map_structure(lambda a: np.asarray(a), x)
    except Exception as error:  # noqa: BLE001 - re-raised with the argument
        raise TypeError(
            "Argument `x` must be an array or tensor (or a list, tuple or dict "
            f"of them). Received: x of type {type(x).__name__} ({error})"
        ) from None
    leaves = keras.tree.flatten(arrays)
    if not leaves or any(a.dtype == object for a in leaves):
        raise TypeError(
            "Argument `x` must be an array or tensor (or a list, tuple or dict "
            f"of them). Received: x={describe(x)} of type {type(x).__name__}"
        )
    sizes = sorted({int(a.shape[0]) if a.ndim else -1 for a in leaves})
    if len(sizes) != 1 or sizes[0] < 1:
        raise ValueError(
            "Argument `x` must be a non-empty batch, with the same number of "
            f"examples in every input (-1 marks a scalar). Received: x with "
            f"shapes {shapes(arrays)}"
        )
    return keras.tree.map_structure(
        lambda a: a.astype(keras.config.floatx()) if a.dtype.kind == "f" else a,
        arrays,
    )


def synthetic_x(model):
    """Standard-normal inputs of the model's input shape, or a ValueError."""
    spec = None
    for attribute in ("input", "inputs"):  # a Sequential only has `inputs`
        try:
            spec = getattr(model, attribute)
            break
        except (AttributeError, ValueError):
            continue
    if isinstance(spec, list) and len(spec) == 1:
        spec = spec[0]
    if spec is None:
        raise ValueError(
            f"Model {model.name!r} has no known input shape (an unbuilt or "
            "subclassed model): pass a batch of inputs, e.g. "
            "`keras_fanin.check(model, x=x_train[:64])`."
        )
    leaves = keras.tree.flatten(spec)
    for t in leaves:
        dims = tuple(t.shape)[1:]
        if any(d is None for d in dims):
            raise ValueError(
                f"Model {model.name!r} has an input of shape {tuple(t.shape)}, "
                "with unknown dimensions: pass a batch of inputs as `x`."
            )
        if not keras.backend.standardize_dtype(t.dtype).startswith("float"):
            raise ValueError(
                f"Model {model.name!r} has an input of dtype {t.dtype} (not "
                "float), which standard-normal inputs cannot stand for: pass a "
                "batch of inputs as `x`."
            )
    size = sum(math.prod(tuple(t.shape)[1:]) for t in leaves)
    batch = max(2, min(_MAX_BATCH, _MAX_INPUT_VALUES // max(1, size)))
    rng = np.random.default_rng(SEED)
    return keras.tree.map_structure(
        lambda t: rng.standard_normal((batch, *tuple(t.shape)[1:])).astype(
            keras.backend.standardize_dtype(t.dtype)
        ),
        spec,
    )


def misfit(model, x, error):
    detail = str(error).strip().splitlines()[0][:300] if str(error) else ""
    return ValueError(
        f"Argument `x` does not fit the model {model.name!r}: x shapes "
        f"{shapes(x)}. {type(error).__name__}: {detail}"
    )
