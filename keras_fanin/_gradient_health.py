"""`GradientHealth`: per-layer gradient and activation health in TensorBoard."""

import math
import os
import tempfile
import warnings

import keras
import numpy as np
import tensorflow as tf

from keras_fanin._fans import compute_fans, fan_for_mode
from keras_fanin._gains import calculate_gain, recommended_initializer
from keras_fanin._health_stats import (
    RELUS,
    SIGNALS,
    build_stats_function,
    find_units,
)
from keras_fanin._initializers import FanScaling
from keras_fanin._validation import check_positive_finite, check_positive_int

# Documented warning thresholds (see the class docstring).
DEAD_WARN_FRACTION = 0.5
SATURATED_WARN_FRACTION = 0.5
DEPTH_RATIO_WARN = 1e3
RUN_NAME = "gradient_health"


class GradientHealthWarning(UserWarning):
    """A warning from `GradientHealth` about a layer that does not train well."""


def _check_log_dir(log_dir):
    if not isinstance(log_dir, str | os.PathLike):
        raise TypeError(
            f"Argument `log_dir` must be a path (str or os.PathLike). "
            f"Received: log_dir={log_dir!r}"
        )
    path = os.path.join(os.fspath(log_dir), RUN_NAME)
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise ValueError(
            f"Argument `log_dir` must be a writable directory. Received: "
            f"log_dir={os.fspath(log_dir)!r}, which cannot be written ({error})"
        ) from None
    return os.fspath(log_dir)


def _to_tensor(value):
    if isinstance(value, np.ndarray) and value.dtype.kind == "f":
        value = value.astype(keras.config.floatx())  # as Keras's data adapters do
    return tf.convert_to_tensor(value)


def _check_data(data):
    if isinstance(data, tf.data.Dataset):
        data = next(iter(data))
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
        x, y = tf.nest.map_structure(_to_tensor, (x, y))
        if sample_weight is not None:
            sample_weight = _to_tensor(sample_weight)
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"Argument `data` must hold arrays or tensors. Could not convert: {error}"
        ) from None
    leaves = [t for t in tf.nest.flatten((x, y, sample_weight)) if t is not None]
    sizes = sorted({int(t.shape[0]) if t.shape.rank else -1 for t in leaves})
    if len(sizes) != 1 or sizes[0] < 1:
        raise ValueError(
            "Argument `data` must hold a non-empty batch with the same number of "
            "examples in x, y (and sample_weight); -1 marks a scalar. "
            f"Received batch sizes: {sizes}"
        )
    return x, y, sample_weight


def _initial_std(initializer, shape):
    """The std `initializer` draws for `shape`, or None when it does not say."""
    if isinstance(initializer, FanScaling):
        return initializer.stddev(shape)
    if isinstance(initializer, keras.initializers.VarianceScaling):
        fan_in, fan_out = compute_fans(shape)
        fan = fan_for_mode(fan_in, fan_out, initializer.mode)
        return math.sqrt(initializer.scale / fan)
    if isinstance(initializer, keras.initializers.RandomNormal):
        return float(initializer.stddev)
    if isinstance(initializer, keras.initializers.RandomUniform):
        return (initializer.maxval - initializer.minval) / math.sqrt(12)
    return None


class GradientHealth(keras.callbacks.Callback):
    """Logs per-layer gradient norms, dead ReLUs and saturated units to TensorBoard.

    Every `every_n_steps` training steps (and at the start and end of training)
    it runs the probe batch `data` through the model in inference mode and
    writes, for each layer, TensorBoard scalars `<signal>/<layer name>` at step
    = the optimizer's iteration count, into the run `<log_dir>/gradient_health`:

    - `grad_norm/<layer>`: the L2 norm of the loss gradient over all of the
      layer's trainable weights (every layer with trainable weights);
    - `activation_std/<layer>`: the std of the layer's output, which grows as
      `1.5^L` or shrinks as `0.5^L` with depth when weights are badly scaled;
    - `dead_relu_fraction/<layer>`: for a layer whose output goes through a ReLU
      (`activation="relu"`, `Activation("relu")`, `keras.layers.ReLU()`): the
      fraction of its units (features, or channels of a convolution) that
      output zero for every example and position of the probe batch. For a
      leaky ReLU (`activation="leaky_relu"`, `LeakyReLU()`, `ReLU` with a
      `negative_slope`) the same count: the units whose input is negative for
      every example. Those are not dead (they still pass `negative_slope`
      times the gradient, and can come back), so they raise no warning; the
      shared tag lets TensorBoard overlay a ReLU run and its leaky fix;
    - `saturated_sigmoid_fraction/<layer>`: for a sigmoid layer, the fraction of
      outputs within `saturation_eps` of 0 or 1, where the derivative
      `y (1 - y)` is below `saturation_eps` and the gradient has vanished;
    - `saturated_tanh_fraction/<layer>`: for a tanh layer, the fraction of
      outputs with `|y| > 1 - saturation_eps`.

    A custom-scalars layout groups each signal into one multi-line chart. The
    same numbers are kept in Python in `history` (`{tag: [(step, value), ...]}`).

    Everything is computed in one compiled TensorFlow function that returns one
    vector: one device-to-host transfer per logging event, whatever the number
    of layers, traced once. Layers are found in Sequential, Functional (nested
    too) and subclassed models; activations that a subclassed model applies as
    plain functions, not layers, are not seen.

    It warns (`GradientHealthWarning`, once per layer and condition) when more
    than half of a layer's ReLU units are dead, when more than half of a sigmoid
    or tanh layer's outputs are saturated, when the first layer's gradient norm
    is over 1000 times smaller (vanishing) or larger (exploding) than the last
    layer's, and when NaN or inf appear (naming the layer where they appear
    first). Non-finite values never stop training unless `stop_on_nonfinite`.

    Examples:

    >>> health = keras_fanin.GradientHealth("logs", data=(x_val[:256], y_val[:256]))
    >>> model.fit(x, y, epochs=5, callbacks=[health])
    >>> health.history["dead_relu_fraction/dense_1"][-1]
    (1000, 0.03125)

    Then `tensorboard --logdir logs`.

    Args:
        log_dir: Directory for the event files (written under
            `<log_dir>/gradient_health`). Must be writable: checked at
            construction.
        data: The probe batch `(x, y)` or `(x, y, sample_weight)`, fixed so that
            the curves are comparable over time (a `tf.data.Dataset` gives its
            first batch). Checked against the model before the first step.
        every_n_steps: Positive int, how often to measure. Each measurement costs
            about one training step on the probe batch.
        saturation_eps: Positive float below 0.5, the distance from a sigmoid's
            (or tanh's) bounds that counts as saturated. Default `1e-3`.
        stop_on_nonfinite: If True, stop training (`model.stop_training`) when a
            gradient or activation is NaN or inf. Default False: warn and go on.
        warn: If False, emit no `GradientHealthWarning`.
    """

    def __init__(
        self,
        log_dir: str | os.PathLike,
        data,
        every_n_steps: int = 100,
        saturation_eps: float = 1e-3,
        stop_on_nonfinite: bool = False,
        warn: bool = True,
    ):
        super().__init__()
        self.every_n_steps = check_positive_int("every_n_steps", every_n_steps)
        self.saturation_eps = check_positive_finite("saturation_eps", saturation_eps)
        if self.saturation_eps >= 0.5:
            raise ValueError(
                "Argument `saturation_eps` must be below 0.5. "
                f"Received: saturation_eps={saturation_eps!r}"
            )
        for name, flag in (("stop_on_nonfinite", stop_on_nonfinite), ("warn", warn)):
            if not isinstance(flag, bool):
                raise TypeError(
                    f"Argument `{name}` must be a bool. Received: {name}={flag!r}"
                )
        self.stop_on_nonfinite, self.warn = stop_on_nonfinite, warn
        self.log_dir = _check_log_dir(log_dir)
        self._probe = _check_data(data)
        self.history = {}
        self._writer = None
        self._fn = self._layout = self._units = None
        self._warned = set()
        self._last_step = None

    # -- Keras hooks ---------------------------------------------------------

    def on_train_begin(self, logs=None):
        self._prepare()
        self._step0 = int(self.model.optimizer.iterations.numpy())
        self._measure(self._step0)

    def on_epoch_begin(self, epoch, logs=None):
        self._step0 = int(self.model.optimizer.iterations.numpy())

    def on_train_batch_begin(self, batch, logs=None):
        # Called before step `batch` runs, so `step0 + batch` steps are done.
        # Hooking the batch *begin* leaves Keras free to dispatch the batch-end
        # hooks asynchronously, with no per-step host sync of the logs.
        step = self._step0 + batch
        if step // self.every_n_steps > self._last_step // self.every_n_steps:
            self._measure(step)

    def on_train_end(self, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        if step != self._last_step:
            self._measure(step)
        self.close()

    def close(self):
        """Flushes and closes the event file (also done at the end of training)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    # -- measurement ---------------------------------------------------------

    def _prepare(self):
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(
                os.path.join(self.log_dir, RUN_NAME)
            )
            self._write_layout()
        if self._fn is not None:
            return
        self._units = find_units(self.model)
        fn, layout = build_stats_function(self.model, self._units, self.saturation_eps)
        try:
            fn(*self._probe)  # traces now: a probe that does not fit fails here
        except Exception as error:  # noqa: BLE001 - re-raised with context
            shapes = tf.nest.map_structure(lambda t: tuple(t.shape), self._probe[:2])
            raise ValueError(
                f"Argument `data` does not fit the model {self.model.name!r}: "
                f"(x, y) shapes {shapes}. {type(error).__name__}: {error}"
            ) from error
        self._fn, self._layout = fn, layout
        self._write_fn = tf.function(self._write_all, autograph=False)

    def _write_all(self, vector, step):
        with self._writer.as_default(step=step):
            for i, (signal, name) in enumerate(self._layout.tags):
                if signal in SIGNALS:
                    tf.summary.scalar(f"{signal}/{name}", vector[i])
                elif signal == "loss":
                    tf.summary.scalar("probe_loss", vector[i])

    def _measure(self, step):
        vector = self._fn(*self._probe)
        self._write_fn(vector, tf.constant(step, tf.int64))
        self._writer.flush()
        self._last_step = step
        values = vector.numpy()  # the one transfer to the host
        record = {}
        for (signal, name), value in zip(self._layout.tags, values, strict=True):
            if signal in SIGNALS:
                tag = f"{signal}/{name}"
                record[tag] = float(value)
                self.history.setdefault(tag, []).append((step, float(value)))
        self.history.setdefault("probe_loss", []).append(
            (step, float(values[self._layout.loss_slot]))
        )
        self._check(step, values, record)

    # -- advice --------------------------------------------------------------

    def _warn(self, key, message):
        if self.warn and key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, GradientHealthWarning, stacklevel=2)

    def _kernel_advice(self, unit, activation, initializer):
        """Advice on the layer's kernel from the fan rule and the gain table.

        Judges the std the layer's `kernel_initializer` drew, when it says so,
        rather than the kernel now: by the time a unit dies, training has moved
        the kernel away from its initial scale.
        """
        kernel = getattr(unit.layer, "kernel", None)
        if kernel is None:
            return f" Try {initializer} for its kernel."
        shape = tuple(kernel.shape)
        fan_in, _ = compute_fans(shape)
        target = calculate_gain(activation) / math.sqrt(max(1, fan_in))
        actual = _initial_std(getattr(unit.layer, "kernel_initializer", None), shape)
        if actual is None:
            actual = float(np.std(keras.ops.convert_to_numpy(kernel)))
            what = "Its kernel std is"
        else:
            what = "Its kernel was initialised with std"
        if abs(actual / target - 1) < 0.15:
            return (
                f" {what} {actual:.3g}, already the fan-in rule for {activation!r} "
                f"(fan_in={fan_in})."
            )
        return (
            f" {what} {actual:.3g}; for {activation!r} and fan_in={fan_in} the "
            f"fan-in rule gives {target:.3g}: try {initializer}."
        )

    def _check(self, step, values, record):
        layout = self._layout
        bad_acts = [n for n, i in layout.act_finite.items() if values[i] < 1]
        bad_grads = [n for n, i in layout.grad_finite.items() if values[i] < 1]
        if bad_acts or bad_grads or not math.isfinite(values[layout.loss_slot]):
            where = (
                f"activations first at layer {bad_acts[0]!r}"
                if bad_acts
                else f"gradients at layers {bad_grads}"
            )
            self._warn(
                ("nonfinite",),
                f"GradientHealth: NaN or inf at step {step}: {where}. A sigmoid "
                "that rounds to exactly 1.0, exploding activations or a too-high "
                "learning rate are the usual causes. Logs written so far are kept"
                + ("; stopping training." if self.stop_on_nonfinite else "."),
            )
            if self.stop_on_nonfinite:
                self.model.stop_training = True
        for unit in self._units:
            dead = record.get(f"dead_relu_fraction/{unit.name}")
            if (
                unit.activation in RELUS
                and dead is not None
                and dead > DEAD_WARN_FRACTION
            ):
                self._warn(
                    (unit.name, "dead"),
                    f"GradientHealth: {dead:.0%} of the ReLU units of layer "
                    f"{unit.name!r} are dead at step {step} (zero for every probe "
                    "example). Try a LeakyReLU with "
                    f"{recommended_initializer('leaky_relu')} or a lower learning "
                    "rate."
                    + self._kernel_advice(
                        unit, "relu", recommended_initializer("relu")
                    ),
                )
            for kind in ("sigmoid", "tanh"):
                saturated = record.get(f"saturated_{kind}_fraction/{unit.name}")
                if saturated is not None and saturated > SATURATED_WARN_FRACTION:
                    self._warn(
                        (unit.name, kind),
                        f"GradientHealth: {saturated:.0%} of the {kind} outputs of "
                        f"layer {unit.name!r} are saturated at step {step}, where "
                        "their gradient vanishes. Normalise the inputs or lower the "
                        "gain."
                        + self._kernel_advice(
                            unit, kind, recommended_initializer(kind)
                        ),
                    )
        norms = [
            (u.name, record[f"grad_norm/{u.name}"])
            for u in self._units
            if f"grad_norm/{u.name}" in record
        ]
        if len(norms) >= 2 and all(math.isfinite(v) for _, v in norms):
            (first, g_first), (last, g_last) = norms[0], norms[-1]
            ratio = g_first / g_last if g_last > 0 else math.inf
            if ratio < 1 / DEPTH_RATIO_WARN or ratio > DEPTH_RATIO_WARN:
                kind = "vanishing" if ratio < 1 else "exploding"
                self._warn(
                    ("depth", kind),
                    f"GradientHealth: {kind} gradients at step {step}: the first "
                    f"layer {first!r} has gradient norm {g_first:.3g}, the last "
                    f"layer {last!r} {g_last:.3g} (ratio {ratio:.3g}). Scale each "
                    "kernel by its fan-in: keras_fanin.He() for ReLU, "
                    "keras_fanin.LeCun() for tanh/SELU, keras_fanin.Xavier() for "
                    "sigmoid and linear layers.",
                )

    def _write_layout(self):
        from tensorboard.plugins.custom_scalar import layout_pb2
        from tensorboard.plugins.custom_scalar import summary as cs_summary

        charts = [
            layout_pb2.Chart(
                title=signal,
                multiline=layout_pb2.MultilineChartContent(tag=[rf"^{signal}/.*"]),
            )
            for signal in (*SIGNALS, "probe_loss")
        ]
        layout = layout_pb2.Layout(
            category=[layout_pb2.Category(title="gradient health", chart=charts)]
        )
        with self._writer.as_default():
            tf.summary.experimental.write_raw_pb(
                cs_summary.pb(layout).SerializeToString(), step=0
            )
