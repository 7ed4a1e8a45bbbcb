"""The probe batch: validated once, kept as NumPy, converted by each backend.

Backend-agnostic: a `tf.data.Dataset` is accepted when TensorFlow is already
imported by the user (it never imports TensorFlow itself).
"""

import sys

import keras
import numpy as np


def shapes(structure):
    """Shapes (never values) of every leaf, for error messages."""
    return keras.tree.map_structure(
        lambda t: tuple(t.shape) if hasattr(t, "shape") else type(t).__name__,
        structure,
    )


def _is_dataset(data):
    tf = sys.modules.get("tensorflow")
    return tf is not None and isinstance(data, tf.data.Dataset)


def _first_batch(dataset):
    try:
        return next(iter(dataset))
    except StopIteration:
        raise ValueError(
            "Argument `data` is an empty tf.data.Dataset: it yields no batch. "
            "Pass a dataset that yields at least one `(x, y)` batch, e.g. "
            "`val_ds.take(1)`."
        ) from None


def _to_numpy(value):
    if value is None:
        return None
    array = np.asarray(keras.ops.convert_to_numpy(value))
    if array.dtype == object:
        raise TypeError("not an array")
    if array.dtype.kind == "f":
        array = array.astype(keras.config.floatx())  # as Keras's data adapters do
    return array


def check_data(data):
    """Validates a probe batch; returns `(x, y, sample_weight)` as NumPy."""
    from_dataset = _is_dataset(data)
    if from_dataset:
        data = _first_batch(data)
    if not isinstance(data, tuple | list) or len(data) not in (2, 3):
        raise TypeError(
            "Argument `data` must be a probe batch `(x, y)` or `(x, y, sample_weight)` "
            f"(or a tf.data.Dataset yielding one). Received: data of type "
            f"{type(data).__name__}"
            + (f" with {len(data)} elements" if isinstance(data, tuple | list) else "")
        )
    x, y, sample_weight = (*data, None)[:3]
    if x is None or y is None:
        raise ValueError(
            "Argument `data` must hold both `x` and `y`: the loss gradient needs "
            f"targets. Received: x={type(x).__name__}, y={type(y).__name__}"
        )
    try:
        x, y, sample_weight = keras.tree.map_structure(
            _to_numpy, (x, y, sample_weight), none_is_leaf=True
        )
    except (TypeError, ValueError) as error:
        leaves = sorted({type(v).__name__ for v in keras.tree.flatten((x, y))})
        raise TypeError(
            "Argument `data` must hold arrays or tensors (nested in lists, tuples "
            f"or dicts). Received leaves of types {leaves}, which could not be "
            f"converted ({type(error).__name__})."
        ) from None
    leaves = [t for t in keras.tree.flatten((x, y, sample_weight)) if t is not None]
    sizes = sorted({int(t.shape[0]) if t.ndim else -1 for t in leaves})
    if from_dataset and (len(sizes) != 1 or sizes[0] < 1):
        raise ValueError(
            "Argument `data` must be a tf.data.Dataset of batches, but its first "
            f"element looks unbatched: shapes (x, y) = {shapes((x, y))}. Call "
            "`.batch(batch_size)` on the dataset."
        )
    if len(sizes) != 1 or sizes[0] < 1:
        raise ValueError(
            "Argument `data` must hold a non-empty batch with the same number of "
            "examples in x, y (and sample_weight); -1 marks a scalar. "
            f"Received batch sizes: {sizes}"
        )
    return x, y, sample_weight
