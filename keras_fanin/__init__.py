"""keras_fanin: fan-in initializers with a tunable gain, and a gradient-health callback.

`GradientHealth` is imported on first use: it is the only TensorFlow-specific
part, so `import keras_fanin` stays cheap and backend-agnostic.
"""

from typing import TYPE_CHECKING

from keras_fanin._fans import compute_fans
from keras_fanin._gains import calculate_gain
from keras_fanin._initializers import FanScaling, He, LeCun, Xavier
from keras_fanin._seeds import SharedSeedWarning
from keras_fanin.version import __version__

if TYPE_CHECKING:
    from keras_fanin.health import GradientHealth, GradientHealthWarning

__all__ = [
    "FanScaling",
    "GradientHealth",
    "GradientHealthWarning",
    "He",
    "LeCun",
    "SharedSeedWarning",
    "Xavier",
    "__version__",
    "calculate_gain",
    "compute_fans",
]


def __getattr__(name):
    if name in ("GradientHealth", "GradientHealthWarning"):
        from keras_fanin import health

        return getattr(health, name)
    raise AttributeError(f"module 'keras_fanin' has no attribute {name!r}")
