"""keras_fanin: fan-in initializers with a tunable gain for Keras 3."""

from keras_fanin._fans import compute_fans
from keras_fanin._gains import calculate_gain
from keras_fanin._initializers import FanScaling, He, LeCun, Xavier
from keras_fanin.version import __version__

__all__ = [
    "FanScaling",
    "He",
    "LeCun",
    "Xavier",
    "__version__",
    "calculate_gain",
    "compute_fans",
]
