"""Backend values to NumPy, quietly.

`keras.ops.convert_to_numpy` calls `np.array(x)`: on a Keras `Variable`, a
TensorFlow or a torch tensor, NumPy 2 then warns (`DeprecationWarning: __array__
implementation doesn't accept a copy keyword`) on every call.
"""

from typing import Any

import keras
import numpy as np


def to_numpy(x: Any) -> np.ndarray[Any, Any]:
    """`x` (a tensor, a Keras variable, an array) as a NumPy array."""
    if isinstance(x, keras.Variable):
        x = x.value
    if keras.backend.backend() == "torch":
        import torch

        if isinstance(x, torch.Tensor):
            x = x.detach().cpu()
            if x.dtype == torch.bfloat16:
                x = x.float()
            return np.asarray(x.numpy())
    if keras.backend.backend() == "tensorflow" and hasattr(x, "numpy"):
        return np.asarray(x.numpy())  # an eager tensor
    array: np.ndarray[Any, Any] = np.asarray(keras.ops.convert_to_numpy(x))
    return array
