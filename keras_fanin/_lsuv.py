"""LSUV: layer-sequential unit-variance initialisation, baked into the config.

One forward pass of the batch does the whole run. Each kernel layer's `call` is
wrapped for that pass (an attribute on the instance, removed afterwards): when
the model reaches the layer, its input has been computed by layers already
rescaled, and the wrapper iterates on that input, calling only this layer,
before handing the layer's output on. So each input is computed once, however
the model is written (Sequential, Functional, subclassed, nested), and the run
costs one pass plus one or two extra calls of each kernel layer.
"""

import dataclasses
import math
import numbers
import random
import warnings
from collections.abc import Callable
from typing import Any

import keras
import numpy as np

from keras_fanin._numpy import to_numpy
from keras_fanin._orthogonal import Orthogonal
from keras_fanin._patch import Patches
from keras_fanin._validation import (
    FLOAT32_MAX,
    FLOAT32_TINY,
    check_positive_finite,
    check_positive_int,
    describe,
)

# Layers whose `call` is `activation(linear(x))`: their output after the last
# rescale is the activation of the pre-activation just measured, which saves
# calling them once more. Other layers are called again.
_ACTIVATION_LAST = tuple(
    getattr(keras.layers, name)
    for name in (
        "Dense",
        "EinsumDense",
        "Conv1D",
        "Conv2D",
        "Conv3D",
        "Conv1DTranspose",
        "Conv2DTranspose",
        "Conv3DTranspose",
    )
)


class _Assign(keras.layers.Layer):
    """Assigns a variable with no autocast scope open.

    Inside a mixed-precision layer's call, Keras's torch backend assigns into
    the float16 copy that the scope hands out, and the variable never changes;
    a layer with `autocast=False` closes the scope while it runs.
    """

    def __init__(self, variable: Any) -> None:
        super().__init__(autocast=False, dtype=variable.dtype)
        # A function: not tracked as a weight.
        self.target: Callable[[], Any] = lambda: variable

    def call(self, value: Any) -> Any:
        self.target().assign(value)
        return value


class LSUVWarning(UserWarning):
    """Warns that `lsuv` could not bring a layer's output variance to 1."""


@dataclasses.dataclass(frozen=True)
class LSUVRecord:
    """What `lsuv` did to one layer.

    Attributes:
        layer: The layer's name.
        scale: The gain baked into its `Orthogonal` kernel initializer.
        seed: The seed of that initializer.
        iterations: How many rescales it took (0: the orthonormal kernel was
            already within `tol`).
        variance_before: The output variance with the orthonormal kernel.
        variance_after: The output variance with the kernel it ended with.
        converged: Whether `|variance_after - 1| < tol`.
    """

    layer: str
    scale: float
    seed: int
    iterations: int
    variance_before: float
    variance_after: float
    converged: bool


def _check_x(x: Any) -> None:
    """Raises unless every array in `x` is a non-empty batch of finite numbers."""
    leaves = keras.tree.flatten(x)
    if not leaves:
        raise ValueError(
            f"Argument `x` must hold at least one array. Received: x={describe(x)}"
        )
    for leaf in leaves:
        try:
            array = np.asarray(to_numpy(leaf))
        except Exception as error:  # what each backend raises differs
            raise TypeError(
                "Argument `x` must be an array, a tensor or a structure of them. "
                f"Received: x={describe(x)} of type {type(x).__name__}"
            ) from error
        if array.dtype == object or not (
            np.issubdtype(array.dtype, np.number) or array.dtype == bool
        ):
            raise TypeError(
                "Argument `x` must hold numbers. "
                f"Received: x={describe(x)} with dtype {array.dtype}"
            )
        if array.ndim == 0 or array.shape[0] == 0 or array.size == 0:
            raise ValueError(
                "Argument `x` must be a non-empty batch (LSUV measures variances "
                f"over it). Received: x={describe(x)} of shape {array.shape}"
            )
        if np.issubdtype(array.dtype, np.inexact) and not np.all(np.isfinite(array)):
            raise ValueError(
                "Argument `x` must hold finite numbers only; it holds NaN or inf. "
                f"Received: x={describe(x)}"
            )


def _check_tol(tol: object) -> float:
    tol = check_positive_finite("tol", tol)
    if tol >= 1:
        raise ValueError(
            "Argument `tol` must be in (0, 1): a layer converges when "
            f"|variance - 1| < tol. Received: tol={tol!r}"
        )
    return tol


def _check_seed(seed: object) -> int | None:
    if seed is not None and (
        isinstance(seed, bool) or not isinstance(seed, numbers.Integral)
    ):
        raise TypeError(
            "Argument `seed` must be None or an int. "
            f"Received: seed={describe(seed)} of type {type(seed).__name__}"
        )
    # int(): a NumPy int seeds the same stream.
    return None if seed is None else int(seed)


def _layers(root: Any) -> list[Any]:
    """Every layer reachable from `root` through its attributes, `root` first."""
    found: list[Any] = []
    seen: set[int] = set()
    stack = [root]
    while stack:
        obj = stack.pop()
        if isinstance(obj, keras.layers.Layer):
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            found.append(obj)
            stack.extend(reversed(list(vars(obj).values())))
        elif isinstance(obj, (list, tuple)):
            stack.extend(reversed(obj))
        elif isinstance(obj, dict):
            stack.extend(reversed(list(obj.values())))
    return found


def _kernel_layers(model: Any) -> tuple[list[Any], list[Any]]:
    """The layers whose `kernel` LSUV sets, and those it must leave alone."""
    fit: list[Any] = []
    skipped: list[Any] = []
    for layer in _layers(model):
        kernel = getattr(layer, "kernel", None)
        if kernel is None:
            continue
        if (
            # A recurrent cell runs inside the backend's loop (a `lax.scan`
            # on JAX), once per step: no single input to fit it on.
            hasattr(layer, "recurrent_kernel")
            or getattr(layer, "quantization_mode", None) is not None
            # With LoRA enabled `kernel` is a sum, not the variable.
            or not isinstance(kernel, keras.Variable)
            or len(kernel.shape) < 2
            or not keras.backend.is_float_dtype(kernel.dtype)
        ):
            skipped.append(layer)
        else:
            fit.append(layer)
    return fit, skipped


def _variance(outputs: Any) -> float:
    # The first float output: a Dense or Conv layer has just one.
    for out in keras.tree.flatten(outputs):
        if keras.backend.is_float_dtype(keras.backend.standardize_dtype(out.dtype)):
            out = keras.ops.stop_gradient(keras.ops.cast(out, "float32"))
            return float(keras.ops.var(out))
    raise ValueError("lsuv: a kernel layer returned no floating-point output.")


class _Run:
    """The state of one `lsuv` call: which layers are done, and their records."""

    def __init__(
        self,
        tol: float,
        max_iter: int,
        rng: np.random.Generator,
        dtypes: dict[int, str],
    ) -> None:
        self.tol, self.max_iter, self.rng = tol, max_iter, rng
        # Each kernel's own dtype, read outside the call: within a
        # mixed-precision call `kernel.dtype` is the compute dtype.
        self.dtypes = dtypes
        self.records: dict[int, LSUVRecord] = {}  # by layer id, in the order reached
        self.units: dict[int, tuple[Any, int, float]] = {}  # id -> (layer, seed, gain)
        self.calls: dict[int, Callable[..., Any]] = {}  # id -> the layer's own `call`
        self.patches = Patches()

    def wrap(self, layer: Any) -> None:
        self.calls[id(layer)] = layer.call

        def call(*args: Any, **kwargs: Any) -> Any:
            original = self.calls[id(layer)]
            if id(layer) in self.records:  # a shared layer, called again
                return original(*args, **kwargs)
            return self.fit(layer, original, args, kwargs)

        self.patches.set(layer, "call", call)

    def fit(
        self,
        layer: Any,
        original: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        kernel = layer.kernel
        shape = tuple(kernel.shape)
        dtype = self.dtypes[id(layer)]
        seed = int(self.rng.integers(1, 2**31 - 1))
        unit = Orthogonal(seed=seed)._unit(shape, dtype)
        activation: Any = getattr(layer, "activation", None)
        linear_first = callable(activation)
        mixed = keras.backend.standardize_dtype(layer.compute_dtype) != dtype
        assign = _Assign(kernel) if mixed else kernel.assign

        def measure(gain: float) -> tuple[Any, float]:
            assign(keras.ops.cast(gain * unit, dtype))
            if not linear_first:
                out = original(*args, **kwargs)
                return out, _variance(out)
            # The layer's output before its own activation, as the paper's
            # conv/FC "output blob" (Caffe runs the nonlinearity as a layer).
            layer.activation = keras.activations.linear
            try:
                out = original(*args, **kwargs)
            finally:
                layer.activation = activation
            return out, _variance(out)

        gain, iterations = 1.0, 0
        out, variance = measure(gain)
        before = variance
        while abs(variance - 1.0) >= self.tol and iterations < self.max_iter:
            if not (math.isfinite(variance) and variance > 0):
                break  # a dead or constant input: no scale reaches variance 1
            new_gain = gain / math.sqrt(variance)
            if not FLOAT32_TINY <= new_gain <= FLOAT32_MAX:
                break
            gain = new_gain
            iterations += 1
            out, variance = measure(gain)
        self.units[id(layer)] = (layer, seed, gain)
        self.records[id(layer)] = LSUVRecord(
            layer=layer.name,
            scale=gain,
            seed=seed,
            iterations=iterations,
            variance_before=before,
            variance_after=variance,
            converged=abs(variance - 1.0) < self.tol,
        )
        if linear_first and isinstance(layer, _ACTIVATION_LAST):
            if type(layer).call in {cls.call for cls in _ACTIVATION_LAST}:
                return activation(out)
        return original(*args, **kwargs)


def lsuv(
    model: keras.layers.Layer,
    x: Any,
    tol: float = 0.1,
    max_iter: int = 10,
    seed: int | None = None,
) -> list[LSUVRecord]:
    """Layer-sequential unit-variance initialisation, recorded in the config.

    For every layer with a `kernel` (Dense, Conv1D/2D/3D and their transposes,
    EinsumDense, also inside nested and subclassed models), in the order the
    model calls them: set the kernel to an orthonormal draw, then rescale it
    until the layer's output variance on the batch `x` is 1 within `tol`:

    `W <- W / sqrt(Var(layer(input)))`, at most `max_iter` times per layer.

    The variance is that of the layer's output before its own activation (the
    paper's conv/FC output; with `activation="relu"` fused into a Dense, the
    pre-activation), over every element of the batch. Biases are left as they
    are: the paper's algorithm rescales weights only, and starts, as Keras
    does by default, from zero biases.

    Each layer's kernel initializer is then replaced by
    `keras_fanin.Orthogonal(gain=<scale found>, seed=<its seed>)`, and the
    kernel is exactly what that initializer draws. So
    `keras.Model.from_config(model.get_config())` and a `.keras` round trip
    rebuild the same kernels without the data (with the default zero biases,
    the same network).

    The pass runs in inference mode (`training=False`: no dropout, batch
    normalisation with its moving statistics). Layers whose weights are not
    called `kernel` (`DepthwiseConv2D`, `SeparableConv2D`'s two kernels) are
    left as they are; recurrent cells, quantized and LoRA-enabled layers too,
    with a warning. An `EinsumDense` kernel is drawn orthogonal as Keras
    flattens it (`(prod(shape[:-1]), shape[-1])`), whatever its einsum's
    input and output axes; the rescale still sets its variance.

    Cost: one forward pass of `x`, plus one call of each kernel layer per
    variance it measures, on that layer's input alone (the first rescale of
    a zero-bias linear layer lands on variance 1, so two calls), plus one
    orthonormal draw per kernel (a normal matrix and its QR), which any LSUV
    pays. Measured on TensorFlow CPU (`benchmarks/bench_lsuv.py`, width 256,
    batch 256): about 1.5 to 3 forward passes without the draws. An unbuilt
    model is first built on one sample.

    Examples:

    >>> model = keras.Sequential([
    ...     keras.Input((64,)),
    ...     keras.layers.Dense(128, activation="relu"),
    ...     keras.layers.Dense(10),
    ... ])
    >>> report = keras_fanin.lsuv(model, np.random.normal(size=(256, 64)))
    >>> [round(r.variance_after, 2) for r in report]  # doctest: +SKIP
    [1.0, 1.0]
    >>> rebuilt = keras.Sequential.from_config(model.get_config())  # same kernels

    Args:
        model: A Keras model (or layer) holding the kernel layers. It must run
            eagerly when called, as Keras models do outside `fit`.
        x: A batch of the model's inputs (an array, a tensor, or the structure
            the model takes): non-empty, finite.
        tol: The tolerance on `|variance - 1|`, in (0, 1).
        max_iter: The most rescales per layer, a positive int.
        seed: None or an int: the seed of the per-layer seeds. `None` draws one
            from Python's RNG, reproducibly after `keras.utils.set_random_seed`.

    Returns:
        A list of `LSUVRecord`, one per kernel layer, in forward order.

    Raises:
        TypeError, ValueError: For a bad argument, a model without kernel
            layers, or an `x` the model cannot take; the model is then left
            exactly as it was.

    Warns:
        LSUVWarning: For each layer whose variance is not within `tol` after
            `max_iter` rescales (or has no variance to rescale), for kernel
            layers the pass did not reach and for those LSUV cannot fit
            (recurrent, quantized, LoRA-enabled).

    Reference:
        - [Mishkin & Matas, 2015](https://arxiv.org/abs/1511.06422)
        - [Saxe et al., 2014](https://arxiv.org/abs/1312.6120)
    """
    if not isinstance(model, keras.layers.Layer):
        raise TypeError(
            "Argument `model` must be a Keras model or layer. "
            f"Received: model={describe(model)} of type {type(model).__name__}"
        )
    _check_x(x)
    tol = _check_tol(tol)
    max_iter = check_positive_int("max_iter", max_iter)
    seed = _check_seed(seed)
    if not model.built:
        model(keras.tree.map_structure(lambda a: a[:1], x), training=False)
    layers, skipped = _kernel_layers(model)
    if not layers:
        raise ValueError(
            "Argument `model` has no layer with a kernel LSUV can set (Dense, "
            f"Conv, EinsumDense, ...). Received: model={model.name!r}"
        )
    for layer in skipped:
        warnings.warn(
            f"lsuv leaves layer {layer.name!r} ({type(layer).__name__}) as it is: "
            "recurrent, quantized and LoRA-enabled kernels are not rescaled.",
            LSUVWarning,
            stacklevel=2,
        )
    rng = np.random.default_rng(random.randint(1, 2**31 - 1) if seed is None else seed)
    dtypes = {
        id(layer): keras.backend.standardize_dtype(layer.kernel.dtype)
        for layer in layers
    }
    run = _Run(tol, max_iter, rng, dtypes)
    saved = [(layer, keras.ops.copy(layer.kernel.value)) for layer in layers]
    try:
        for layer in layers:
            run.wrap(layer)
        model(x, training=False)
    except BaseException:
        for layer, value in saved:
            layer.kernel.assign(value)
        raise
    finally:
        run.patches.restore()
    for layer, seed_, gain in run.units.values():
        if hasattr(layer, "kernel_initializer"):
            layer.kernel_initializer = Orthogonal(gain=gain, seed=seed_)
    records = list(run.records.values())
    for record in records:
        if not record.converged:
            warnings.warn(
                "lsuv did not bring the output variance of layer "
                f"{record.layer!r} to 1 within tol={tol}: "
                f"{record.variance_after:.4g} after {record.iterations} rescales "
                f"(max_iter={max_iter}). A dead or constant input, a strongly "
                "nonlinear layer, or too small a "
                f"batch; the layer keeps scale {record.scale:.4g}.",
                LSUVWarning,
                stacklevel=2,
            )
    unreached = [layer.name for layer in layers if id(layer) not in run.records]
    if unreached:
        warnings.warn(
            f"lsuv left layers {unreached} as they were: the forward pass on `x` "
            "in inference mode did not call them.",
            LSUVWarning,
            stacklevel=2,
        )
    return records
