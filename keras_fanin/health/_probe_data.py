"""The probe batch (validated once, kept as NumPy, converted by each backend),
and what every backend's probe shares: building an unbuilt model on the batch,
knowing when the model changed, and reading a measurement.

Backend-agnostic: a `tf.data.Dataset` is accepted when TensorFlow is already
imported by the user (it never imports TensorFlow itself).
"""

import sys

import keras
import numpy as np

from keras_fanin._numpy import to_numpy


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


def has_loss(model):
    """Whether the probe can compute the model's loss: compiled with one, or
    `compute_loss` overridden. A model whose `train_step` computes its own
    loss (compiled without one) gives the probe its activations only."""
    import keras

    return (
        getattr(model, "loss", None) is not None
        or type(model).compute_loss is not keras.Model.compute_loss
    )


def _to_numpy(value):
    if value is None:
        return None
    array = np.asarray(to_numpy(value))
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


class ProbeBase:
    """The lifecycle `_probe_tf.Probe` and `_probe_stateless.StatelessProbe`
    share. Subclasses build `self._fn` in `_build(model)` and read one
    measurement vector (a buffer row, then the loss) in `_vector()`."""

    def __init__(self, batch, saturation_eps, training):
        self.numpy_batch = batch
        self.eps, self.training = saturation_eps, training
        self.units = self.layout = self._fn = self._key = self.model = None
        self.has_loss = True

    def _misfit(self, error):
        # The original message names the mismatch; it is cut short because
        # some errors print whole tensors.
        detail = str(error).strip().splitlines()[0][:300] if str(error) else ""
        return ValueError(
            f"Argument `data` does not fit the model {self.model.name!r}: "
            f"(x, y) shapes {shapes(self.numpy_batch[:2])}. "
            f"{type(error).__name__}: {detail}"
        )

    def prepare(self, model, x):
        """(Re)builds the function for `model` if needed; True when it did.

        `x` is the probe's input in the backend's tensors.
        """
        self.model = model
        if not model.built:
            # TensorFlow's fit() builds a model while tracing its train
            # function, after `on_train_begin`; the probe needs the weights
            # now. One eager forward pass on the probe builds it as fit would.
            try:
                model(x, training=False)
            except Exception as error:  # noqa: BLE001 - re-raised with context
                raise self._misfit(error) from error
        self.has_loss = has_loss(model)
        key = (
            id(model),
            tuple(id(v) for v in model.trainable_weights),
            id(getattr(model, "loss", None)),
            self.has_loss,
        )
        if self._fn is not None and key == self._key:
            return False
        try:
            self._build(model)  # traces now: a probe that does not fit fails
        except Exception as error:  # noqa: BLE001 - re-raised with context
            raise self._misfit(error) from error
        self._key = key
        return True

    def measure(self):
        """`(record, codes, loss)` of one measurement: one host transfer."""
        vector = self._vector()
        row, loss = vector[:-1], float(vector[-1])
        record = {tag: float(row[col]) for col, tag in self.layout.tags()}
        return record, self.layout.codes(row), loss if self.has_loss else None
