"""What the examples share: the digits they train on, and fit() with GradientHealth.

The data is scikit-learn's bundled 8x8 digits: 1797 images of the digits 0-9
as 64 features, shipped inside scikit-learn, so nothing is downloaded.
"""

import warnings

from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import keras_fanin


def deterministic_ops():
    """Makes TensorFlow's kernels deterministic (JAX and torch on a CPU are)."""
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


CHANCE = 0.1  # ten balanced classes


def load_data(seed=0):
    """Returns `x_train, x_val, y_train, y_val` (float32 features, int labels).

    Standardised per feature (zero mean, unit variance: the inputs the fan-in
    rule assumes) and split 75/25 with every class in both parts.
    """
    digits = load_digits()
    x = digits.data.astype("float32")
    x = (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-6)
    return train_test_split(
        x, digits.target, test_size=0.25, random_state=seed, stratify=digits.target
    )


def fit_with_health(model, health, x, y, callbacks=(), **fit_kwargs):
    """`model.fit(x, y, ...)` with `health` attached, quietly.

    Returns `(history, messages)`: the Keras History and the text of every
    `GradientHealthWarning` raised, so that an example can report them.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", keras_fanin.GradientHealthWarning)
        history = model.fit(
            x, y, verbose=0, callbacks=[health, *callbacks], **fit_kwargs
        )
    messages = [
        str(w.message)
        for w in caught
        if issubclass(w.category, keras_fanin.GradientHealthWarning)
    ]
    return history, messages


def signal(health, name):
    """`{layer: [(step, value), ...]}` for one GradientHealth signal."""
    prefix = f"{name}/"
    return {
        tag[len(prefix) :]: series
        for tag, series in health.probe_history.items()
        if tag.startswith(prefix)
    }
