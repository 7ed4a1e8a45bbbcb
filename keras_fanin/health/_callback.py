"""`GradientHealth`: the Keras lifecycle around the step hook and the probe.

Data flows one way: step hook (or probe) -> on-device statistics -> (flush)
-> history + advice + event files. See docs/design.md.
"""

import inspect
import numbers
import os
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np

from keras_fanin._validation import check_positive_finite, check_positive_int
from keras_fanin.health._advice import Advisor
from keras_fanin.health._layout import SIGNALS, Layout
from keras_fanin.health._runstate import has_events, read_shared_state, write_state
from keras_fanin.health._tuner import tuner_trial
from keras_fanin.health._units import find_units
from keras_fanin.health._writer import EventWriter
from keras_fanin_logs import _histogram
from keras_fanin_logs._picture import DESCRIPTION, gradient_flow
from keras_fanin_logs._signals import GLOBAL_GRAD_NORM, RUN_NAME

TRAIN_RUN = f"{RUN_NAME}/train"
PROBE_RUN = f"{RUN_NAME}/probe"
# `history` keeps the newest points of each tag; the event files keep them all.
HISTORY_LIMIT = 1000
# `histogram_history` keeps the newest histograms of each tag.
HISTOGRAM_HISTORY_LIMIT = 100
# Logged rows between two host reads of the step buffer (at most; every epoch
# end and the end of training flush too). A crash loses at most these.
FLUSH_ROWS = 64
# One custom-scalars chart per signal: title -> the regex of its tags. Each
# chart overlays the `train` and `probe` runs.
CHART_PATTERNS = (
    {signal: rf"^{signal}/" for signal in SIGNALS}
    | {GLOBAL_GRAD_NORM: rf"^{GLOBAL_GRAD_NORM}$"}
    | {"clip": r"^clip/"}
    | {"probe_loss": r"^probe_loss$"}
)
# A gradient-flow picture of `history` every this many logged rows of a run,
# and one at the end of training: about 12 ms for 30 layers x 1000 steps.
PICTURE_ROWS = 256
# At a fit()'s end, a picture is drawn only if the last one ended at least
# this many times its own drawing time ago: pictures stay under ~2% of a loop
# of short fits (each drawn one costs 3-10 ms, a short JAX fit 2-3 ms).
PICTURE_BUDGET = 50
# Chosen from benchmarks/: a logged step costs up to ~30% of a CPU step on an
# optimizer-bound MLP, so every 25 steps keeps fit() within about 2%.
DEFAULT_EVERY_N_STEPS = 25
# {tag: [(step, value), ...]}, the newest `HISTORY_LIMIT` points of each.
History = dict[str, list[tuple[int, float]]]
# Step numbers live in int32 on the device under JAX.
MAX_EVERY_N_STEPS = 2**31 - 1


def _check_log_dir(log_dir: object) -> str:
    """Checks that `log_dir` can be written, creating nothing.

    A remote path (`gs://`, `s3://`, `hdfs://`, `ram://`, ...) is left to the
    event writer, which opens it through `tf.io.gfile` when training starts.
    A local path must be a directory, or not exist yet below a writable one.
    """
    if not isinstance(log_dir, str | os.PathLike):
        raise TypeError(
            f"Argument `log_dir` must be a path (str or os.PathLike). "
            f"Received: log_dir={log_dir!r}"
        )
    path = os.fspath(log_dir)
    if not path:
        raise ValueError(
            "Argument `log_dir` must be a non-empty path (use '.' for the "
            "current directory). Received: log_dir=''"
        )
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


def _is_chief(model: Any) -> bool:
    """Whether this process writes: the chief of a multi-worker run, or alone."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        return bool(model.distribute_strategy.extended.should_save_summary)
    if backend == "jax":
        import jax

        return bool(jax.process_index() == 0)
    return True


def _check_supported(model: Any, backend: str) -> None:
    """A clear error before the first step for what the hooks cannot reach."""
    problem = None
    if backend == "jax" and keras.config.is_nnx_enabled():
        problem = (
            "with Flax NNX enabled, Keras's JAX trainer calls the class's "
            "`train_step`, not the instance's, so the step cannot be watched "
            "through public APIs"
        )
    elif backend == "torch" and getattr(model, "jit_compile", False) is True:
        problem = (
            "with `jit_compile=True` on torch, `torch.compile` traces the step "
            "once and the wrappers that watch it are not supported"
        )
    if problem:
        raise ValueError(
            f"GradientHealth cannot watch the training step here: {problem}. "
            "Use `every_n_steps=None` with a probe batch (`data=`), or compile "
            "without it."
        )


def _check_bool(name: str, flag: object) -> bool:
    if not isinstance(flag, bool):
        raise TypeError(f"Argument `{name}` must be a bool. Received: {name}={flag!r}")
    return flag


def _record(
    history: dict[str, Any], tag: str, step: int, value: Any, limit: int | None = None
) -> None:
    series = history.setdefault(tag, [])
    series.append((step, value))
    if len(series) > (HISTORY_LIMIT if limit is None else limit):
        del series[0]


def _check_histograms(histograms: Any, every_n_steps: int | None) -> int | None:
    if histograms is None:
        return None
    if (
        isinstance(histograms, bool)
        or not isinstance(histograms, numbers.Integral)
        or histograms < 1
    ):
        raise ValueError(
            "Argument `histograms` must be None or a positive integer. "
            f"Received: histograms={histograms!r}"
        )
    if every_n_steps is None:
        raise ValueError(
            "Argument `histograms` needs the training step watched: it counts "
            "logged steps, and `every_n_steps=None` logs none. Received: "
            f"histograms={histograms!r}, every_n_steps=None"
        )
    k = int(histograms)
    if every_n_steps * k > MAX_EVERY_N_STEPS:
        raise ValueError(
            "Argument `histograms` times `every_n_steps` must be at most "
            f"{MAX_EVERY_N_STEPS}. Received: histograms={histograms!r}, "
            f"every_n_steps={every_n_steps!r}"
        )
    return k


class GradientHealth(keras.callbacks.Callback):
    """Logs per-layer gradient and activation health of `fit()` to TensorBoard.

    By default it watches the real training step: the gradients the optimizer
    applies and the training forward pass, reduced on the device inside the
    compiled train function, kept there in a small buffer and read by the host
    once per flush (at most every 64 logged steps, at every epoch end and at
    the end of training). Every `every_n_steps` steps it logs, per layer, into
    the TensorBoard run `<log_dir>/gradient_health/train`, at the step number
    (`0` is the first batch; one step = one batch, see below):

    - `grad_norm/<layer>`: the L2 norm of the gradient the optimizer applies
      to the layer's trainable weights: after the all-reduce under a
      multi-replica strategy, unscaled under `LossScaleOptimizer` (in
      float32), before clipping;
    - `update_ratio/<layer>`: `||w_after - w_before|| / ||w_before||` over the
      layer's trainable weights, for the step (about `1e-3` is the usual
      healthy order); `weight_norm/<layer>`: `||w_after||`;
    - `activation_std/<layer>`: the std of the layer's output in the training
      forward pass, which grows as `1.5^L` or shrinks as `0.5^L` with depth
      when weights are badly scaled;
    - `dead_relu_fraction/<layer>`: for a layer whose output goes through a
      ReLU (`activation="relu"`, `Activation("relu")`, `keras.layers.ReLU()`):
      the fraction of its units (features, or channels of a convolution) that
      output zero for every example and position of the batch. Leaky ReLUs
      (`"leaky_relu"`, `LeakyReLU()`, `ReLU(negative_slope=...)`) are counted
      by the same rule (units negative for every example) but never called
      dead: they still pass `negative_slope` times the gradient;
    - `saturated_sigmoid_fraction/<layer>`: for a sigmoid layer, the fraction
      of outputs within `saturation_eps` of 0 or 1, where the derivative
      `y (1 - y)` is below `saturation_eps`; `saturated_tanh_fraction/<layer>`:
      for a tanh layer, the fraction with `|y| > 1 - saturation_eps`;
    - `global_grad_norm`: the L2 norm of the whole gradient, over every
      trained variable (unscaled, before clipping): what clipping compares
      with its threshold, and the first curve to read for a loss spike;
    - with `clipnorm` or `global_clipnorm` set on the optimizer:
      `clip/global_grad_norm` (the same number as `global_grad_norm`) and
      `clip/factor` (1 when the step was not clipped, else the factor the
      clipping scaled the gradient by; with `clipnorm`, the smallest over
      the variables).

    With `histograms=k`, every `k`-th logged step also writes, per layer,
    histograms of the values of the gradient (`grad_hist/<layer>`), of the
    weights after the update (`weight_hist/<layer>`) and of the update
    `w_after - w_before` (`update_hist/<layer>`), over all of the layer's
    trainable weights, for TensorBoard's HISTOGRAMS and DISTRIBUTIONS tabs.
    The bins are fixed (`GradientHealth.HISTOGRAM_EDGES`): one per octave of
    magnitude from `2**-34` (5.8e-11) to `2**14` (16384), mirrored for
    negative values (their edges one float32 towards zero from the powers of
    two), one each side below and above that range, and one for
    zero and float32's subnormals; NaN and inf are counted apart. Counts are
    exact: `numpy.histogram(values, HISTOGRAM_EDGES)` gives the same. They
    are computed in the logged step on the device, kept there with the other
    statistics and read at the same flushes. TensorBoard draws only the span
    of non-empty bins, the overflow bins one octave wide. The newest 100 of
    each tag are kept in `histogram_history`: `{tag: [(step, counts), ...]}`,
    `counts` an int64 array of `len(HISTOGRAM_EDGES)` slots, the bins' and
    the non-finite values' count last.

    With a probe batch `data`, it also measures that fixed batch every
    `probe_every_n_steps` steps (and at the start and end of training) with
    one extra forward and backward pass, into the run
    `<log_dir>/gradient_health/probe` under the same tags (`grad_norm`, the
    activation signals) plus `probe_loss`, so TensorBoard overlays both. The
    probe runs in training mode by default (`probe_training=True`), inside a
    `keras.StatelessScope`, so it changes no state (BatchNorm statistics,
    seeds); dropout is active in that mode.

    What a step is: one batch, one call of the model's train step. With
    `steps_per_execution=k` each of the `k` steps of an execution is logged at
    its own number. With `gradient_accumulation_steps=k` the optimizer is
    handed each batch's gradient and updates the weights every `k` batches:
    `grad_norm` is then the batch's gradient, and `update_ratio` is 0 on the
    batches that only accumulate.

    A custom-scalars layout groups each signal into one multi-line chart. The
    newest 1000 points of each tag are kept in Python: `history` (the real
    step) and `probe_history` (`{tag: [(step, value), ...]}`); the event
    files keep every point.

    Layers are found in Sequential, Functional (nested too) and subclassed
    models, built or not; activations that a subclassed model applies as
    plain functions, not layers, are not seen, and a shared layer is measured
    on its first call. One instance can serve several `fit()` calls, on the
    same model (recompiled, partly frozen) or on another one. It acts in
    `fit()` only: `evaluate()` and `predict()` ignore it. To watch the step it
    wraps `model.train_step`, `model.optimizer.apply` and each layer's `call`
    while `fit()` runs and restores them at the end of training (and makes
    Keras re-trace its train function, then and at the start).

    It warns (`GradientHealthWarning`, once per layer and condition) when more
    than half of a layer's ReLU units are dead, when more than half of a
    sigmoid or tanh layer's outputs are saturated, when the first layer's
    gradient norm is over 1000 times smaller (vanishing) or larger (exploding)
    than the last layer's (among layers with a kernel), and when NaN or inf
    appear in weights, activations or gradients (naming which, and the first
    layer where they appear). While values are non-finite, the dead,
    saturated and depth checks are skipped: they would only restate the NaN.

    Distributed: under `tf.distribute.MirroredStrategy` and JAX's
    `keras.distribution` (`DataParallel`, `ModelParallel`, one process or
    several through `jax.distributed`), gradients, updates and weights are
    those of the global batch and of whole variables (activations too on JAX;
    under `MirroredStrategy`, the first replica's share). Only one process
    writes and warns: the chief (TensorFlow), process 0 (JAX).

    Examples:

    >>> health = keras_fanin.GradientHealth("logs")
    >>> model.fit(x, y, epochs=5, callbacks=[health])
    >>> health.history["dead_relu_fraction/dense_1"][-1]
    (1870, 0.03125)

    Then `tensorboard --logdir logs`.

    Args:
        log_dir: Directory for the event files (written under
            `<log_dir>/gradient_health`). A local path must be writable
            (checked at construction, creating nothing); a remote one
            (`gs://...`) is opened through `tf.io.gfile` when training starts.
        data: Optional probe batch `(x, y)` or `(x, y, sample_weight)`, fixed
            so that its curves are comparable over time (a `tf.data.Dataset`
            gives its first batch); nested as the model's inputs and outputs
            are. Checked against the model before the first step.
        every_n_steps: Positive int, how often to log the real step (default
            25: about 2% of plain `fit()` time in `benchmarks/`), or None to
            not watch the step (then `data` is required).
        probe_every_n_steps: Positive int, how often to measure the probe.
            Each measurement costs about one training step on the probe batch.
        saturation_eps: Positive float below 0.5, the distance from a sigmoid's
            (or tanh's) bounds that counts as saturated. Default `1e-3`.
        activations: If True (default), reduce each layer's output in the
            training step (std, dead and saturated fractions); False keeps to
            the gradients, weights and updates.
        stop_on_nonfinite: If True, stop training (`model.stop_training`) when a
            weight, gradient or activation is NaN or inf; it then reads one
            flag from the device per step. Default False: warn and go on.
        warn: If False, emit no `GradientHealthWarning`.
        probe_training: If True (default), run the probe in training mode
            without changing any state; if False, in inference mode
            (BatchNorm uses its moving statistics, no dropout).
        histograms: None (default: no histograms) or a positive int `k`:
            per-layer histograms of the gradient, the weights and the
            update every `k`-th logged step (with the default
            `every_n_steps=25`, `histograms=4` gives one every 100 steps).
            It counts every value, three per weight: on a 2-core CPU a
            histogram step took 35-50% longer than a logged step without
            (benchmarks/), so keep `k` large there. Needs `every_n_steps`.
    """

    HISTOGRAM_EDGES = _histogram.EDGES

    def __init__(
        self,
        log_dir: str | os.PathLike[str],
        data: Any = None,
        every_n_steps: int | None = DEFAULT_EVERY_N_STEPS,
        probe_every_n_steps: int = 100,
        saturation_eps: float = 1e-3,
        activations: bool = True,
        stop_on_nonfinite: bool = False,
        warn: bool = True,
        probe_training: bool = True,
        histograms: int | None = None,
    ) -> None:
        super().__init__()
        if every_n_steps is not None:
            every_n_steps = check_positive_int(
                "every_n_steps", every_n_steps, MAX_EVERY_N_STEPS
            )
        self.every_n_steps = every_n_steps
        self.histograms = _check_histograms(histograms, every_n_steps)
        self.probe_every_n_steps = check_positive_int(
            "probe_every_n_steps", probe_every_n_steps, MAX_EVERY_N_STEPS
        )
        self.saturation_eps = check_positive_finite("saturation_eps", saturation_eps)
        if self.saturation_eps >= 0.5:
            raise ValueError(
                "Argument `saturation_eps` must be below 0.5. "
                f"Received: saturation_eps={saturation_eps!r}"
            )
        self.activations = _check_bool("activations", activations)
        self.stop_on_nonfinite = _check_bool("stop_on_nonfinite", stop_on_nonfinite)
        self.warn = _check_bool("warn", warn)
        self.probe_training = _check_bool("probe_training", probe_training)
        self.log_dir = _check_log_dir(log_dir)
        # The lifecycle's state is None until the Keras hook that sets it runs
        # (on_train_begin before any batch): `Any` where mypy cannot follow that.
        self._probe: Any = None
        if data is not None:
            from keras_fanin.health._probe_data import check_data

            batch = check_data(data)
            if keras.backend.backend() == "tensorflow":
                from keras_fanin.health._probe_tf import Probe

                self._probe = Probe(batch, self.saturation_eps, self.probe_training)
            else:
                from keras_fanin.health._probe_stateless import StatelessProbe

                self._probe = StatelessProbe(
                    batch, self.saturation_eps, self.probe_training
                )
        elif every_n_steps is None:
            raise ValueError(
                "GradientHealth has nothing to watch: pass `data` (a probe batch) "
                "or an `every_n_steps` for the training step. Received: "
                "data=None, every_n_steps=None"
            )
        self.history: History = {}
        self.probe_history: History = {}
        self.histogram_history: dict[str, list[tuple[int, Any]]] = {}
        self._advisor = Advisor(warn, stop_on_nonfinite)
        self._writers: dict[str, EventWriter] = {}
        self._hook: Any = None
        self._hook_key: tuple[int, int] | None = None
        self._units: Any = None
        # The step axis: one per run directory, shared by every fit().
        self._root: Any = None  # log_dir, or a KerasTuner trial's directory in it
        self._next_step: Any = None  # the run's next step number, once known
        # {epoch: step} of a fit() that did not end
        self._open_epochs: dict[int, int] | None = None
        self._fit_epochs: dict[int, int] = {}  # {epoch: step} of the current fit()
        self._in_fit = False  # between on_train_begin and on_train_end
        self._starting = False  # in fit(), before its first epoch
        self._step = 0  # steps run, as far as the host knows
        self._resumed_at: int | None = None  # the step a resumed fit() restarted at
        self._epoch_start = 0
        self._last_batch: int | None = None
        self._flushed_through = -1
        self._probe_last: Any = None
        # run -> rows logged since its last picture
        self._since_picture: dict[str, int] = {}
        # run -> (when its last picture was done, its cost, the rows it shows)
        self._pictured: dict[str, tuple[float, float, int]] = {}
        self._tabled: set[str] = set()  # runs whose open writer has the layer table
        # run -> chart titles in its open writer's layout
        self._charted: dict[str, set[str]] = {}
        self._guarded: Any = None  # the CallbackList whose exceptions end the fit

    # -- Keras hooks ---------------------------------------------------------

    def set_model(self, model: Any) -> None:
        super().set_model(model)
        # Keras's CallbackList sets each callback's model as it is made: from
        # it, an exception raised by any callback of this fit() (which ends
        # the fit() without `on_train_end`) also restores the model at once.
        frame = inspect.currentframe()
        caller = frame.f_back if frame is not None else None
        owner = caller.f_locals.get("self") if caller is not None else None
        del caller
        if isinstance(owner, keras.callbacks.CallbackList) and owner is not (
            self._guarded
        ):
            self._guarded = owner
            for name in _GUARDED:
                method = getattr(owner, name, None)
                if method is not None:
                    object.__setattr__(owner, name, self._guard(method))

    def _guard(self, method: Callable[..., Any]) -> Callable[..., Any]:
        def guarded(*args: Any, **kwargs: Any) -> Any:
            try:
                return method(*args, **kwargs)
            except BaseException:
                if self._hook is not None and self._hook.watch is not None:
                    self._hook.watch.abort()
                raise

        return guarded

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        if self._in_fit:
            self._end_abandoned_fit()
        root = self._root_for_fit()
        self._check_alone_in(root)
        if root != self._root:
            self.close()
            self._root, self._next_step = root, None
        if self._next_step is None:
            self._next_step, self._open_epochs, probe_last = read_shared_state(
                self._state_dir()
            )
            if self._probe_last is None:
                self._probe_last = probe_last
        # Every process of a multi-process run measures and advises alike
        # (a stop is taken by all); only the one that writes warns.
        self._advisor.warn = self.warn and _is_chief(self.model)
        self._in_fit, self._starting = True, True
        self._fit_epochs = {}
        self._step = self._next_step
        self._resumed_at = None
        if self.every_n_steps is not None:
            self._start_hook()

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self._starting:
            # After every `on_train_begin`: a BackupAndRestore listed after
            # this callback has restored the model and chosen the epoch.
            self._starting = False
            self._begin_steps(epoch)
        self._epoch_start = self._step
        self._last_batch = None
        self._fit_epochs[epoch] = self._step
        self._save_state()

    def on_train_batch_begin(
        self, batch: int, logs: dict[str, Any] | None = None
    ) -> None:
        # Called before the execution starting at `batch` runs: `step` steps
        # are done. Hooking the batch *begin* leaves Keras free to dispatch
        # the batch-end hooks asynchronously, with no per-step host sync.
        step = self._epoch_start + batch
        self._step = step
        if self._hook is not None:
            pending = self._logged_between(self._flushed_through + 1, step)
            if pending >= FLUSH_ROWS or (
                self.stop_on_nonfinite and self._nonfinite_now()
            ):
                self._flush()
                self._save_state()
        else:
            self._last_batch = batch
        if self._probe is not None:
            n = self.probe_every_n_steps
            if step // n > self._probe_last // n:
                self._measure_probe(step)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self._hook is not None:
            self._flush()
        else:
            self._step = self._epoch_start + self._batches_in_epoch()
        self._save_state()

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        try:
            ran = not self._starting
            if self._hook is not None:
                if self._hook.installed:
                    self._flush()
                if ran:
                    self._check_step_was_seen()
            if ran and self._probe is not None and self._step != self._probe_last:
                self._measure_probe(self._step)
            for run in list(self._since_picture):
                self._picture(run, force=True)
            self._next_step = max(self._next_step, self._step)
            self._in_fit, self._open_epochs = False, None
            self._save_state()
        finally:
            if self._hook is not None:
                self._hook.uninstall()
            self.close()

    def _begin_steps(self, epoch: int) -> None:
        """Numbers this fit()'s first step: after the run's last, or, for a
        fit() resuming one that did not end, where its `epoch` began."""
        start = self._next_step
        resumed = self._open_epochs or {}
        self._open_epochs = None
        # A BackupAndRestore in this fit() restarts the epoch it backed up,
        # the first one too (a batch-level backup); without one, a fit() that
        # starts again from the first epoch is a new one, appended.
        restores = self._guarded is not None and any(
            isinstance(c, keras.callbacks.BackupAndRestore)
            for c in getattr(self._guarded, "callbacks", ())
        )
        if epoch in resumed and (restores or epoch != min(resumed)):
            start = resumed[epoch]
            self._supersede(start)
        self._step = self._epoch_start = start
        if self._hook is not None:
            self._sync()
            if start < self._hook.read_counter():
                # The step axis goes back (a resumed fit() supersedes what a
                # crashed one logged): rows it left unflushed, numbered from
                # `start` on, must not pass for this fit()'s.
                self._hook.forget_rows()
            self._hook.set_counter(start)
            self._flushed_through = start - 1
        if self._probe is not None:
            self._probe.prepare(self.model)
            # The weights a fit() starts from were measured at the end of the
            # one before: a step is never written twice.
            if start != self._probe_last:
                self._measure_probe(start)

    def _supersede(self, step: int) -> None:
        """Drops what was logged from `step` on, in `history` and, through a
        restart event, in what TensorBoard shows."""
        for history in (self.history, self.probe_history, self.histogram_history):
            for tag, series in history.items():
                history[tag] = [(s, v) for s, v in series if s < step]
        if self._probe_last is not None and self._probe_last >= step:
            self._probe_last = None
        self._resumed_at = step
        for run in self._runs():
            writer = self._writer(run)  # it marks the restart at `step`
            if writer is not None:
                writer.flush()

    def _end_abandoned_fit(self) -> None:
        """The previous fit() ended without `on_train_end` (an exception, an
        interrupt): what it left is written, and its epochs kept, so that a
        resumed fit() can take over from one of them."""
        if self._hook is not None and self._hook.installed:
            self._salvage()
            self._hook.uninstall()
        self._open_epochs = self._fit_epochs or None
        self._next_step = max(self._next_step, self._step)
        self._in_fit = False
        self.close()

    def _salvage(self) -> None:
        """Writes what the step buffer holds, if it can still be read."""
        try:
            self._flush(salvage=True)
        except Exception:  # noqa: BLE001 - a failed step may leave it unreadable
            pass

    def _batches_in_epoch(self) -> int:
        spe = int(getattr(self.model, "steps_per_execution", 1) or 1)
        return self._last_batch + spe if self._last_batch is not None else 0

    def _check_step_was_seen(self) -> None:
        """One clear warning when the model's own train step hid the gradients."""
        hook = self._hook
        if hook.applied or not self.model.trainable_weights:
            return
        self._advisor.warn_once(
            ("no_apply",),
            "GradientHealth: the model's train step never called "
            "`model.optimizer.apply` (or `apply_gradients`), so grad_norm, "
            "update_ratio and weight_norm are unavailable"
            + (
                "; the activation signals still come from the training forward pass"
                if self.activations and not getattr(hook, "unavailable", None)
                else ""
            )
            + ". Call the optimizer in your train_step, or pass `data=` for the "
            "probe's gradient norms.",
        )
        self._log_warnings(self._writer(TRAIN_RUN), self._step)

    def close(self) -> None:
        """Flushes and closes the event files (also done at the end of training).

        A later `fit()` opens new event files in the same run directories.
        """
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()
        self._tabled.clear()
        self._charted.clear()

    # -- the step axis -------------------------------------------------------

    def _root_for_fit(self) -> str:
        """Where this fit()'s runs go: `log_dir`, or under KerasTuner, the
        trial's directory as Keras's TensorBoard callback gets it."""
        trial = tuner_trial()
        if trial is None:
            return self.log_dir
        trial_id, execution = trial
        return os.path.join(self.log_dir, trial_id, f"execution{execution}")

    def _check_alone_in(self, root: str) -> None:
        """Two callbacks of one fit() writing one run would each write the
        other's steps again: a clear error before any step runs."""
        for other in getattr(self._guarded, "callbacks", ()):
            if (
                other is not self
                and isinstance(other, GradientHealth)
                and os.path.abspath(other._root_for_fit()) == os.path.abspath(root)
            ):
                raise ValueError(
                    "Two GradientHealth callbacks in one fit() write to the same "
                    f"log_dir={self.log_dir!r}: their runs would mix. Give each "
                    "its own log_dir."
                )

    def _state_dir(self) -> str:
        return os.path.join(self._root, RUN_NAME)

    def _runs(self) -> list[str]:
        runs = [TRAIN_RUN] if self.every_n_steps is not None else []
        return runs + ([PROBE_RUN] if self._probe is not None else [])

    def _save_state(self) -> None:
        if not _is_chief(self.model):
            return
        next_step = max(self._next_step, self._step, self._flushed_through + 1)
        write_state(
            self._state_dir(),
            next_step,
            self._fit_epochs if self._in_fit else None,
            self._probe_last,
        )

    # -- the real step -------------------------------------------------------

    def _sync(self) -> Any:
        """Brings the device state back into the model's variables.

        On JAX, Keras keeps the training state outside the variables during an
        epoch and writes it back when a callback reads `self.model`; the step
        buffer and the probe's weights are read after that. Elsewhere a no-op.
        """
        return self.model

    def _nonfinite_now(self) -> bool:
        self._sync()
        return bool(self._hook.nonfinite())

    def _logged_between(self, first: int, last: int, every: int | None = None) -> int:
        """How many logged steps (multiples of `every`, by default
        `every_n_steps`) lie in `[first, last)`."""
        n = every or self.every_n_steps
        assert n is not None  # only called with a step hook
        return max(0, (last - 1) // n - (first - 1) // n) if last > first else 0

    def _start_hook(self) -> None:
        backend = keras.backend.backend()
        hook_class: type[Any]
        if backend == "tensorflow":
            from keras_fanin.health._step_tf import TFStepHook

            hook_class = TFStepHook
        elif backend == "jax":
            from keras_fanin.health._step_jax import JaxStepHook

            hook_class = JaxStepHook
        elif backend == "torch":
            from keras_fanin.health._step_torch import TorchStepHook

            hook_class = TorchStepHook
        else:
            raise ValueError(
                f"GradientHealth cannot watch the training step on the "
                f"{backend!r} backend (TensorFlow, JAX and torch are supported). "
                "Pass `every_n_steps=None` and use another backend for the probe."
            )
        model = self.model
        _check_supported(model, backend)
        key = (id(model), id(model.optimizer))
        if self._hook is None or key != self._hook_key or not self._hook.usable():
            self._units = find_units(model)
            spe = int(getattr(model, "steps_per_execution", 1) or 1)
            assert self.every_n_steps is not None  # a step hook is asked for
            per_execution = -(-spe // self.every_n_steps) + 1
            self._hook = hook_class(
                model,
                Layout(self._units),
                self.every_n_steps,
                capacity=FLUSH_ROWS + per_execution + 1,
                saturation_eps=self.saturation_eps,
                activations=self.activations,
                start_step=self._step,
                histograms=self.histograms,
            )
            self._hook_key = key
        self._hook.on_abort = self._on_abort
        self._hook.on_unavailable = self._advisor.warn_once
        self._hook.set_counter(self._step)
        self._flushed_through = self._step - 1
        self._hook.install()

    def _on_abort(self) -> None:
        """The watch ends this fit() early (the step raised, or a new fit()
        began without `on_train_end`): write what the buffer holds."""
        self._salvage()
        self._save_state()
        self.close()

    def _flush(self, salvage: bool = False) -> None:
        """Reads the step buffer once and writes, records and checks its rows."""
        hook = self._hook
        self._sync()
        # The steps run so far; the epoch still began where it began (a flush
        # within an epoch moving it would make every later batch look 64
        # logged steps past the last flush, and flush again).
        self._step = hook.read_counter()
        # Nothing logged since the last flush (a short fit() between logged
        # steps, the end of a fit() after its last epoch's): no read. After a
        # step raised, the one at the counter counts too: it may have written
        # its row before it raised.
        last = self._step + 1 if salvage else self._step
        if not self._logged_between(self._flushed_through + 1, last):
            return
        steps, rows = hook.read()
        new = np.flatnonzero(steps > self._flushed_through)
        if not len(new):
            return
        layout = hook.layout
        tags = layout.tags()
        writer = self._writer(TRAIN_RUN)
        self._flush_histograms(hook, writer, last)
        first = int(steps[new].min())
        self._write_layers(TRAIN_RUN, writer, self._units, first)
        self._write_charts(TRAIN_RUN, writer, [tag for _, tag in tags], first)
        stop = False
        for i in new[np.argsort(steps[new])]:
            step, row = int(steps[i]), rows[i]
            record = {tag: float(row[col]) for col, tag in tags}
            for tag, value in record.items():
                _record(self.history, tag, step, value)
            if writer is not None:
                writer.write_step(step, record)
            stop |= self._advisor.check(
                self._units, step, record, layout.codes(row), where="batch"
            )
            self._log_warnings(writer, step)
        self._flushed_through = int(steps[new].max())
        # A step that raised after its row was written was not counted.
        self._step = max(self._step, self._flushed_through + 1)
        self._picture(TRAIN_RUN, new_rows=len(new))
        if writer is not None:
            writer.flush()
        if stop:
            self.model.stop_training = True

    def _flush_histograms(self, hook: Any, writer: Any, last: int) -> None:
        """Reads the histogram ring, only when a histogram step ran since the
        last flush, and writes and records its new rows."""
        if not hook.histograms or not self.every_n_steps or not self.histograms:
            return
        period = self.every_n_steps * self.histograms
        if not self._logged_between(self._flushed_through + 1, last, period):
            return
        steps, counts = hook.read_histograms()
        tags = hook.layout.hist_tags()
        new = np.flatnonzero(steps > self._flushed_through)
        for i in new[np.argsort(steps[new])]:
            step = int(steps[i])
            spans = {}
            for unit, k, tag in tags:
                row = counts[i, unit, k].astype(np.int64)
                _record(self.histogram_history, tag, step, row,
                        HISTOGRAM_HISTORY_LIMIT)  # fmt: skip
                span = _histogram.spans(row)
                if span is not None:
                    spans[tag] = span
            if writer is not None and spans:
                writer.write_histograms(step, spans)

    # -- the probe -----------------------------------------------------------

    def _measure_probe(self, step: int) -> None:
        self._sync()
        record, codes, loss = self._probe.measure()
        self._probe_last = step
        if loss is None:
            self._advisor.warn_once(
                ("probe_no_loss",),
                "GradientHealth: the model was compiled without a loss (its "
                "train step computes its own), so the probe cannot compute "
                "one: its grad_norm and probe_loss are unavailable; its "
                "activation signals are logged.",
            )
        logged = record if loss is None else {**record, "probe_loss": loss}
        for tag, value in logged.items():
            _record(self.probe_history, tag, step, value)
        writer = self._writer(PROBE_RUN)
        self._write_layers(PROBE_RUN, writer, self._probe.units, step)
        self._write_charts(PROBE_RUN, writer, list(logged), step)
        if writer is not None:
            writer.write_step(step, logged)
        if self._advisor.check(
            self._probe.units, step, record, codes, loss=loss, where="probe"
        ):
            self.model.stop_training = True
        self._log_warnings(writer, step)
        self._picture(PROBE_RUN, new_rows=1)
        if writer is not None:
            writer.flush()

    # -- writing ---------------------------------------------------------------

    def _log_warnings(self, writer: EventWriter | None, step: int) -> None:
        """Writes the warnings just raised as text, for `keras_fanin.report`."""
        raised = self._advisor.take_raised()
        if raised and writer is not None:
            writer.write_text(step, "warnings", raised)

    def _write_layers(
        self, run: str, writer: EventWriter | None, units: Sequence[Any], step: int
    ) -> None:
        """Writes the watched layers once per event file, in forward order."""
        if writer is None or run in self._tabled or not units:
            return
        self._tabled.add(run)
        writer.write_text(
            step,
            "layers",
            [
                (u.name, u.activation or "", "kernel" if u.has_kernel else "")
                for u in units
            ],
        )
        # The dashboard's copy: its plugin name is what makes its tab active.
        writer.write_layer_table(
            step, [(u.name, u.activation or "", u.has_kernel) for u in units]
        )

    def _write_charts(
        self, run: str, writer: EventWriter | None, tags: list[str], step: int
    ) -> None:
        """Writes the custom-scalars layout of the signals the run writes, in
        each event file, again when a signal first appears."""
        if writer is None:
            return
        charted = self._charted.setdefault(run, set())
        titles = {title for tag in tags for title in _chart_titles(tag)}
        if titles <= charted:
            return
        charted |= titles
        writer.write_layout(
            {t: p for t, p in CHART_PATTERNS.items() if t in charted}, step
        )

    def _picture(self, run: str, new_rows: int = 0, force: bool = False) -> None:
        """Writes the run's gradient-flow picture when `PICTURE_ROWS` are new."""
        rows = self._since_picture.get(run, 0) + new_rows
        self._since_picture[run] = rows
        if not rows or (rows < PICTURE_ROWS and not force):
            return
        drawn = self._pictured.get(run)
        shown = 0 if drawn is None else drawn[2]  # the rows it shows
        if rows < PICTURE_ROWS and drawn is not None:
            # At a fit()'s end: not again while the last one is recent next
            # to what it cost, or a loop of short fits would spend more time
            # drawing than training; its rows wait for the next picture. Also
            # once as many wait as it shows: a fast loop's picture doubles,
            # and what it costs in all stays about twice the last one's.
            end, cost, _ = drawn
            recent = time.perf_counter() - end < PICTURE_BUDGET * cost
            if recent and rows < shown:
                return
        self._since_picture[run] = 0
        start = time.perf_counter()
        try:
            self._draw_picture(run)
        finally:
            end = time.perf_counter()
            self._pictured[run] = (end, end - start, shown + rows)

    def _draw_picture(self, run: str) -> None:
        writer = self._writer(run)
        if writer is None:
            return
        if run == TRAIN_RUN:
            history, units = self.history, self._units
        else:
            history, units = self.probe_history, self._probe.units
        picture = gradient_flow(history, [u.name for u in units or ()])
        if picture is None:
            return
        step = picture.steps[1]
        png = picture.png()
        writer.write_image(
            step, "gradient_flow", png, picture.width, picture.height, DESCRIPTION
        )
        writer.write_text(step, "gradient_flow_legend", [picture.legend()])

    def _writer(self, run: str) -> EventWriter | None:
        """The run's event writer, opened on first use; None on a non-chief."""
        if run in self._writers:
            return self._writers[run]
        if not _is_chief(self.model):
            return None  # a non-chief worker of a multi-worker strategy
        path = os.path.join(self._root, run)
        try:
            fresh = not has_events(path)
            writer = EventWriter(path)
        except Exception as error:  # noqa: BLE001 - any file-system error
            raise ValueError(
                f"Argument `log_dir` could not be opened for writing: "
                f"log_dir={self.log_dir!r} ({type(error).__name__}: "
                f"{str(error)[:200]})"
            ) from None
        # TensorBoard's reader takes a run's first session-log START as its
        # start and any later one as a restart, dropping what it read at that
        # step and after: a run's first file starts with one, and a resumed
        # fit()'s file supersedes with one what the interrupted fit() logged
        # past its backup. An appending fit() writes none (its steps are new).
        if fresh:
            writer.write_restart(0)
        elif self._resumed_at is not None:
            writer.write_restart(self._resumed_at)
        self._writers[run] = writer
        return writer


# The CallbackList methods fit() calls between its steps.
_GUARDED = (
    "on_train_begin",
    "on_epoch_begin",
    "on_epoch_end",
    "on_train_batch_begin",
    "on_train_batch_end",
)


def _chart_titles(tag: str) -> list[str]:
    """The custom-scalars charts a tag appears in."""
    return [
        title for title, pattern in CHART_PATTERNS.items() if re.match(pattern, tag)
    ]
