"""GradientHealth: per-layer gradient and activation health in TensorBoard."""

from keras_fanin.health._advice import GradientHealthWarning
from keras_fanin.health._callback import GradientHealth

__all__ = ["GradientHealth", "GradientHealthWarning"]
