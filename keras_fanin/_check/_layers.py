"""Which layers `check` looks through, normalises at, or takes an activation from."""

import keras

from keras_fanin.health._units import activation_name

NORMALIZATION = tuple(
    getattr(keras.layers, name)
    for name in (
        "BatchNormalization",
        "LayerNormalization",
        "GroupNormalization",
        "UnitNormalization",
        "RMSNormalization",
        "Normalization",
    )
    if hasattr(keras.layers, name)
)


ACTIVATION_LAYERS = (
    keras.layers.Activation,
    keras.layers.ReLU,
    keras.layers.LeakyReLU,
    keras.layers.PReLU,
    keras.layers.ELU,
    keras.layers.Softmax,
)


# Between a kernel and its activation these change no unit's nonlinearity.
LOOK_THROUGH = NORMALIZATION + (
    keras.layers.Dropout,  # and SpatialDropout*
    keras.layers.GaussianDropout,
    keras.layers.GaussianNoise,
    keras.layers.AlphaDropout,
    keras.layers.Add,
    keras.layers.Average,
    keras.layers.Reshape,  # MobileNet's 1x1 head, reshaped, then its softmax
    keras.layers.Flatten,
)


def inner(layer):
    """The layer a wrapper (`TimeDistributed`) applies, or `layer` itself."""
    return layer.layer if isinstance(layer, keras.layers.Wrapper) else layer


def layer_activation(layer):
    if isinstance(layer, keras.layers.Softmax):
        return "softmax"
    return activation_name(inner(layer))
