"""`GradientHealth`: per-layer gradient and activation health in TensorBoard."""

import math
import os
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
    describe_nonfinite,
    find_units,
)
from keras_fanin._initializers import FanScaling
from keras_fanin._validation import check_positive_finite, check_positive_int

# Documented warning thresholds (see the class docstring).
DEAD_WARN_FRACTION = 0.5
SATURATED_WARN_FRACTION = 0.5
DEPTH_RATIO_WARN = 1e3
RUN_NAME = "gradient_health"
# `history` keeps the newest points of each tag; the event files keep them all.
HISTORY_LIMIT = 1000
# One custom-scalars chart per signal: title -> the regex of its tags.
CHART_PATTERNS = {signal: rf"^{signal}/" for signal in SIGNALS} | {
    "probe_loss": r"^probe_loss$"
}


class GradientHealthWarning(UserWarning):
    """A warning from `GradientHealth` about a layer that does not train well."""


def _check_log_dir(log_dir):
    """Checks that `log_dir` can be written, creating nothing.

    A remote path (`gs://`, `s3://`, `hdfs://`, `ram://`, ...) is left to
    `tf.io.gfile` and the summary writer, which open it at `on_train_begin`.
    A local path must be a directory, or not exist yet below a writable one.
    """
    if not isinstance(log_dir, str | os.PathLike):
        raise TypeError(
            f"Argument `log_dir` must be a path (str or os.PathLike). "
            f"Received: log_dir={log_dir!r}"
        )
    path = os.fspath(log_dir)
    if "://" in path:
        return path
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    problem = None
    if not os.path.isdir(existing):
        problem = f"{existing!r} is not a directory"
    elif not os.access(existing, os.W_OK | os.X_OK):
        problem = f"{existing!r} is not writable"
    if problem:
        raise ValueError(
            f"Argument `log_dir` must be a writable directory. Received: "
            f"log_dir={path!r}, which cannot be written ({problem})"
        )
    return path


def _to_tensor(value):
    if value is None:
        return None
    if isinstance(value, np.ndarray) and value.dtype.kind == "f":
        value = value.astype(keras.config.floatx())  # as Keras's data adapters do
    return tf.convert_to_tensor(value)


def _shapes(structure):
    """Shapes (never values) of every leaf, for error messages."""
    return tf.nest.map_structure(
        lambda t: tuple(t.shape) if hasattr(t, "shape") else type(t).__name__,
        structure,
    )


def _first_batch(dataset):
    try:
        return next(iter(dataset))
    except StopIteration:
        raise ValueError(
            "Argument `data` is an empty tf.data.Dataset: it yields no batch. "
            "Pass a dataset that yields at least one `(x, y)` batch, e.g. "
            "`val_ds.take(1)`."
        ) from None


def _check_data(data):
    from_dataset = isinstance(data, tf.data.Dataset)
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
        x, y, sample_weight = tf.nest.map_structure(_to_tensor, (x, y, sample_weight))
    except (TypeError, ValueError) as error:
        leaves = sorted({type(v).__name__ for v in tf.nest.flatten((x, y))})
        raise TypeError(
            "Argument `data` must hold arrays or tensors (nested in lists, tuples "
            f"or dicts). Received leaves of types {leaves}, which could not be "
            f"converted ({type(error).__name__})."
        ) from None
    leaves = [t for t in tf.nest.flatten((x, y, sample_weight)) if t is not None]
    sizes = sorted({int(t.shape[0]) if t.shape.rank else -1 for t in leaves})
    if from_dataset and (len(sizes) != 1 or sizes[0] < 1):
        raise ValueError(
            "Argument `data` must be a tf.data.Dataset of batches, but its first "
            f"element looks unbatched: shapes (x, y) = {_shapes((x, y))}. Call "
            "`.batch(batch_size)` on the dataset."
        )
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
    it runs the probe batch `data` through the model and writes, for each
    layer, TensorBoard scalars `<signal>/<layer name>` at step = the
    optimizer's iteration count, into the run `<log_dir>/gradient_health`:

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

    The probe runs in training mode by default (`probe_training=True`), as the
    training step does, so BatchNorm normalises with the probe's batch
    statistics; it runs inside a `keras.StatelessScope`, so it changes no
    state (moving statistics, seed generators). Dropout is active in that mode.

    A custom-scalars layout groups each signal into one multi-line chart. The
    newest 1000 points of each tag are kept in Python in `history`
    (`{tag: [(step, value), ...]}`); the event files keep every point.

    Everything is computed in one compiled TensorFlow function that returns one
    vector: one device-to-host transfer per logging event, whatever the number
    of layers, traced once per model. Layers are found in Sequential,
    Functional (nested too) and subclassed models, built or not (an unbuilt
    model is built on the probe batch at the start of training); activations
    that a subclassed model applies as plain functions, not layers, are not
    seen. One instance can serve several `fit()` calls, on the same model
    (recompiled, partly frozen) or on another one. It acts in `fit()` only:
    `evaluate()` and `predict()` ignore it.

    It warns (`GradientHealthWarning`, once per layer and condition) when more
    than half of a layer's ReLU units are dead, when more than half of a sigmoid
    or tanh layer's outputs are saturated, when the first layer's gradient norm
    is over 1000 times smaller (vanishing) or larger (exploding) than the last
    layer's (among layers with a kernel), and when NaN or inf appear in weights,
    activations or gradients (naming the layer where they appear first, and
    which of the two). While values are non-finite, the dead, saturated and
    depth checks are skipped: they would only restate the NaN. Non-finite
    values never stop training unless `stop_on_nonfinite`.

    Examples:

    >>> health = keras_fanin.GradientHealth("logs", data=(x_val[:256], y_val[:256]))
    >>> model.fit(x, y, epochs=5, callbacks=[health])
    >>> health.history["dead_relu_fraction/dense_1"][-1]
    (1000, 0.03125)

    Then `tensorboard --logdir logs`.

    Args:
        log_dir: Directory for the event files (written under
            `<log_dir>/gradient_health`). A local path must be writable
            (checked at construction, creating nothing); a remote one
            (`gs://...`) is opened through `tf.io.gfile` when training starts.
        data: The probe batch `(x, y)` or `(x, y, sample_weight)`, fixed so that
            the curves are comparable over time (a `tf.data.Dataset` gives its
            first batch). `x`, `y` and `sample_weight` may be nested as the
            model's inputs and outputs are (e.g. dicts per output). Checked
            against the model before the first step.
        every_n_steps: Positive int, how often to measure. Each measurement costs
            about one training step on the probe batch.
        saturation_eps: Positive float below 0.5, the distance from a sigmoid's
            (or tanh's) bounds that counts as saturated. Default `1e-3`.
        stop_on_nonfinite: If True, stop training (`model.stop_training`) when a
            weight, gradient or activation is NaN or inf. Default False: warn
            and go on.
        warn: If False, emit no `GradientHealthWarning`.
        probe_training: If True (default), run the probe in training mode
            without changing any state; if False, in inference mode
            (BatchNorm uses its moving statistics, no dropout).
    """

    def __init__(
        self,
        log_dir: str | os.PathLike,
        data,
        every_n_steps: int = 100,
        saturation_eps: float = 1e-3,
        stop_on_nonfinite: bool = False,
        warn: bool = True,
        probe_training: bool = True,
    ):
        super().__init__()
        if keras.backend.backend() != "tensorflow":
            raise ValueError(
                "GradientHealth needs the TensorFlow backend for now; Keras is "
                f"running on {keras.backend.backend()!r}. Set "
                "KERAS_BACKEND=tensorflow (the initializers work on every "
                "backend)."
            )
        self.every_n_steps = check_positive_int("every_n_steps", every_n_steps)
        self.saturation_eps = check_positive_finite("saturation_eps", saturation_eps)
        if self.saturation_eps >= 0.5:
            raise ValueError(
                "Argument `saturation_eps` must be below 0.5. "
                f"Received: saturation_eps={saturation_eps!r}"
            )
        flags = {
            "stop_on_nonfinite": stop_on_nonfinite,
            "warn": warn,
            "probe_training": probe_training,
        }
        for name, flag in flags.items():
            if not isinstance(flag, bool):
                raise TypeError(
                    f"Argument `{name}` must be a bool. Received: {name}={flag!r}"
                )
        self.stop_on_nonfinite, self.warn = stop_on_nonfinite, warn
        self.probe_training = probe_training
        self.log_dir = _check_log_dir(log_dir)
        self._probe = _check_data(data)
        self.history = {}
        self._writer = None
        self._fn = self._layout = self._units = self._prepared_for = None
        self._warned = set()
        self._last_step = None

    # -- Keras hooks ---------------------------------------------------------

    def on_train_begin(self, logs=None):
        rebuilt = self._prepare()
        self._step0 = int(self.model.optimizer.iterations.numpy())
        if rebuilt or self._step0 != self._last_step:
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
        try:
            step = int(self.model.optimizer.iterations.numpy())
            if step != self._last_step:
                self._measure(step)
        finally:
            self.close()

    def close(self):
        """Flushes and closes the event file (also done at the end of training).

        A later `fit()` opens a new event file in the same run directory.
        """
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            self._write_fn = None

    # -- measurement ---------------------------------------------------------

    def _open_writer(self):
        try:
            self._writer = tf.summary.create_file_writer(
                os.path.join(self.log_dir, RUN_NAME)
            )
        except (tf.errors.OpError, OSError) as error:
            raise ValueError(
                f"Argument `log_dir` could not be opened for writing: "
                f"log_dir={self.log_dir!r} ({type(error).__name__}: "
                f"{str(error)[:200]})"
            ) from None
        self._write_layout()
        # The compiled writer captures the writer resource when traced, so each
        # writer gets its own (a closed writer's resource no longer exists).
        self._write_fn = tf.function(self._write_all, autograph=False)

    def _model_key(self):
        """What the compiled stats depend on: retraced when any of it changes."""
        model = self.model
        return (
            id(model),
            tuple(id(v) for v in model.trainable_weights),
            id(getattr(model, "loss", None)),
        )

    def _prepare(self):
        """Opens the writer and (re)builds the stats for this model if needed.

        Returns True when the stats function was (re)built.
        """
        model = self.model
        if not model.built:
            # TensorFlow's fit() builds a model while tracing its train
            # function, after `on_train_begin`; the probe needs the weights
            # now. One eager forward pass on the probe builds it as fit would.
            try:
                model(self._probe[0], training=False)
            except Exception as error:  # noqa: BLE001 - re-raised with context
                raise self._misfit(error) from error
        key = self._model_key()
        rebuild = self._fn is None or key != self._prepared_for
        if rebuild:
            units = find_units(model)
            fn, layout = build_stats_function(
                model, units, self.saturation_eps, self.probe_training
            )
            try:
                fn(*self._probe)  # traces now: a probe that does not fit fails here
            except Exception as error:  # noqa: BLE001 - re-raised with context
                raise self._misfit(error) from error
            self._units, self._fn, self._layout = units, fn, layout
            self._prepared_for = key
        if self._writer is None:
            self._open_writer()
        return rebuild

    def _misfit(self, error):
        shapes = _shapes(self._probe[:2])
        # The original message names the mismatch; it is cut short because some
        # errors print whole tensors.
        detail = str(error).strip().splitlines()[0][:300] if str(error) else ""
        return ValueError(
            f"Argument `data` does not fit the model {self.model.name!r}: "
            f"(x, y) shapes {shapes}. {type(error).__name__}: {detail}"
        )

    def _write_all(self, vector, step):
        with self._writer.as_default(step=step):
            for i, (signal, name) in enumerate(self._layout.tags):
                if signal in SIGNALS:
                    tf.summary.scalar(f"{signal}/{name}", vector[i])
                elif signal == "loss":
                    tf.summary.scalar("probe_loss", vector[i])

    def _record(self, tag, step, value):
        series = self.history.setdefault(tag, [])
        series.append((step, value))
        if len(series) > HISTORY_LIMIT:
            del series[0]

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
                self._record(tag, step, float(value))
        self._record("probe_loss", step, float(values[self._layout.loss_slot]))
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
        the kernel away from its initial scale. A layer without a kernel (an
        `Activation`, `ReLU`, or a normalization layer) gets no kernel advice:
        what feeds it may be normalised, so no initializer can be blamed.
        """
        kernel = getattr(unit.layer, "kernel", None)
        if kernel is None:
            return ""
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

    def _nonfinite(self, step, values):
        """Warns about NaN/inf; returns True when any value is non-finite."""
        layout = self._layout
        kinds = {"weights": layout.weight_bad, "activations": layout.act_bad}
        first = None
        for unit in self._units:  # forward order: the first layer where it appears
            for what, slots in kinds.items():
                code = values[slots[unit.name]] if unit.name in slots else 0
                if code and first is None:
                    first = (unit.name, what, describe_nonfinite(code))
        bad_grads = [
            (name, describe_nonfinite(values[i]))
            for name, i in layout.grad_bad.items()
            if values[i]
        ]
        loss = float(values[layout.loss_slot])
        if first is None and not bad_grads and math.isfinite(loss):
            return False
        if first is not None:
            name, what, kind = first
            where = f"{kind} in the {what} of layer {name!r} (the first layer)"
        elif bad_grads:
            kind = " and ".join(sorted({k for _, k in bad_grads}))
            where = (
                f"{kind} in the gradients of layers {[n for n, _ in bad_grads]}, "
                "with finite weights and activations"
            )
        else:
            where = f"the probe loss is {loss}"
        self._warn(
            ("nonfinite",),
            f"GradientHealth: non-finite values at step {step}: {where}. A "
            "sigmoid that rounds to exactly 1.0, exploding activations or a "
            "too-high learning rate are the usual causes. Logs written so far "
            "are kept" + ("; stopping training." if self.stop_on_nonfinite else "."),
        )
        if self.stop_on_nonfinite:
            self.model.stop_training = True
        return True

    def _check(self, step, values, record):
        if self._nonfinite(step, values):
            # NaN weights read as dead ReLUs (ReLU maps NaN to 0) and vanishing
            # gradients; the NaN is the news, the rest would mislead.
            return
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
        # Depth is judged on layers with a kernel, which the advice is about
        # (a BatchNorm's scale and offset have no fan-in rule).
        norms = [
            (u.name, record[f"grad_norm/{u.name}"])
            for u in self._units
            if f"grad_norm/{u.name}" in record
            and getattr(u.layer, "kernel", None) is not None
        ]
        # A last layer with no gradient at all (an output weighted 0, a dead
        # head) says nothing about depth: no ratio is taken.
        if (
            len(norms) >= 2
            and all(math.isfinite(v) for _, v in norms)
            and norms[-1][1] > 0
        ):
            (first, g_first), (last, g_last) = norms[0], norms[-1]
            ratio = g_first / g_last
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
                multiline=layout_pb2.MultilineChartContent(tag=[pattern]),
            )
            for signal, pattern in CHART_PATTERNS.items()
        ]
        layout = layout_pb2.Layout(
            category=[layout_pb2.Category(title="gradient health", chart=charts)]
        )
        with self._writer.as_default():
            tf.summary.experimental.write_raw_pb(
                cs_summary.pb(layout).SerializeToString(), step=0
            )
