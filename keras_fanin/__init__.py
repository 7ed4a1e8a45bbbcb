"""keras_fanin: fan-in initializers with a tunable gain, and a gradient-health callback.

`GradientHealth`, `check`, `fix` and `report` are imported on first use: they pull in
the callback's machinery and TensorBoard's reader, so `import keras_fanin` stays
cheap and backend-agnostic.
"""

from typing import TYPE_CHECKING, Any

from keras_fanin._fans import compute_fans
from keras_fanin._gains import calculate_gain
from keras_fanin._initializers import FanScaling, He, LeCun, Xavier
from keras_fanin._lsuv import LSUVRecord, LSUVWarning, lsuv
from keras_fanin._orthogonal import DeltaOrthogonal, Orthogonal
from keras_fanin._seeds import SharedSeedWarning
from keras_fanin.version import __version__

if TYPE_CHECKING:
    from keras_fanin._check import CheckReport, check, fix
    from keras_fanin.health import GradientHealth, GradientHealthWarning
    from keras_fanin_logs import Report, report

__all__ = [
    "CheckReport",
    "DeltaOrthogonal",
    "FanScaling",
    "GradientHealth",
    "GradientHealthWarning",
    "He",
    "LSUVRecord",
    "LSUVWarning",
    "LeCun",
    "Orthogonal",
    "Report",
    "SharedSeedWarning",
    "Xavier",
    "__version__",
    "calculate_gain",
    "check",
    "compute_fans",
    "fix",
    "lsuv",
    "report",
]

_LAZY = {
    "GradientHealth": "keras_fanin.health",
    "GradientHealthWarning": "keras_fanin.health",
    "check": "keras_fanin._check",
    "CheckReport": "keras_fanin._check",
    "fix": "keras_fanin._check",
    "report": "keras_fanin_logs",
    "Report": "keras_fanin_logs",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'keras_fanin' has no attribute {name!r}")
