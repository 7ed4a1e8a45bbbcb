"""Cost of GradientHealth on a steady-state fit(), measured side by side.

Three models (an 8x512 ReLU MLP; a small CNN with BatchNorm on 32x32x3; a
2-block Transformer encoder, d_model 128, sequence 64) are trained with each
configuration in turn, interleaved round by round (the order reversed every
other round). Each fit runs 12 epochs (`--epochs`); the first compiles, the
other 11 are timed. Printed, each as the median over rounds of the ratio to
the same round's fit without callbacks: the whole run (the timed epochs
summed, slow ones included: what a user waits for) and the best epoch (the
steady state, robust to a busy machine), for:

- GradientHealth watching the real step at every step, gradients, updates and
  weights only (`activations=False`), and with the in-step activation signals;
- GradientHealth at its defaults (the real step every 25 steps), and with
  `histograms=4` (a histogram every 100 steps), and at every step with
  `histograms=1` (a histogram every step);
- the fixed-probe mode at its default (a probe every 100 steps);
- Keras's own `TensorBoard(histogram_freq=1)`, the peer;
- a hand-written `train_step` that also returns per-layer gradient norms in
  its logs: the floor for what watching the step can cost.

Then: the cost of a logged step against depth (MLPs of 10, 50 and 100 layers),
the number of traces of the train step, the process's memory over 5000
logged steps, and the cost of a loop of short fits (`--parts fits`: 10 x
`fit(epochs=1)` of a 21-layer MLP, the first one's compile and traces
included, with GradientHealth at its defaults and without).

    python benchmarks/bench_gradient_health.py            # full run (~15 min)
    python benchmarks/bench_gradient_health.py --quick    # a smoke run
    python benchmarks/bench_gradient_health.py --backend jax   # or torch
    python benchmarks/bench_gradient_health.py --models mlp --parts compare

On JAX and torch the hand-written floor and Keras's TensorBoard callback
(TensorFlow summaries) are left out.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time


def _args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run")
    parser.add_argument(
        "--backend", choices=("tensorflow", "jax", "torch"), default="tensorflow"
    )
    parser.add_argument(
        "--models", default="all", help="comma-separated subset: mlp,cnn,transformer"
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved rounds (default 3)"
    )
    parser.add_argument(
        "--configs",
        default="all",
        help="comma-separated words picking configurations (always with "
        "'no callback'), e.g. 'defaults,floor'",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=12,
        help="epochs per fit in compare (default 12: the first compiles, the "
        "other 11 are timed)",
    )
    parser.add_argument(
        "--parts",
        default="compare,depth,memory,fits",
        help="comma-separated subset of compare,depth,memory,fits",
    )
    return parser.parse_args(argv)


ARGS = _args(sys.argv[1:]) if __name__ == "__main__" else _args([])
os.environ["KERAS_BACKEND"] = ARGS.backend  # before Keras is imported
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_fanin  # noqa: E402

BATCH = 128


EPOCHS = 3 if ARGS.quick else max(2, ARGS.epochs)  # the first one compiles


class EpochTimer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.times = []

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if epoch:
            self.times.append(time.perf_counter() - self.start)

    @property
    def best(self):
        return min(self.times)

    @property
    def whole(self):
        return sum(self.times)


class NormsInLogs(keras.Model):
    """The floor: Keras's step plus per-layer gradient norms in the logs
    (TensorFlow only: it computes its own gradients)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def call(self, x, training=False):
        return self.inner(x, training=training)

    def train_step(self, data):
        import tensorflow as tf

        x, y = data
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self.compute_loss(x=x, y=y, y_pred=y_pred, training=True)
        variables = self.trainable_variables
        grads = tape.gradient(loss, variables)
        self.optimizer.apply(grads, variables)
        logs = {"loss": loss}
        by_layer = {}
        for g, v in zip(grads, variables, strict=True):
            by_layer.setdefault(v.path.rsplit("/", 1)[0], []).append(g)
        for name, gs in by_layer.items():
            logs[f"grad_norm/{name}"] = tf.linalg.global_norm(gs)  # noqa: F821
        return logs


def mlp(depth=8, width=512, features=512, classes=10):
    layers = [keras.Input((features,))]
    layers += [
        keras.layers.Dense(width, activation="relu", kernel_initializer="he_normal")
        for _ in range(depth)
    ]
    layers.append(keras.layers.Dense(classes, activation="softmax"))
    return keras.Sequential(layers)


def cnn():
    inputs = keras.Input((32, 32, 3))
    h = inputs
    for filters in (32, 64, 128):
        h = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(h)
        h = keras.layers.BatchNormalization()(h)
        h = keras.layers.ReLU()(h)
        h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(h))


def transformer(blocks=2, d_model=128, seq=64, heads=4, vocab=1000):
    inputs = keras.Input((seq,), dtype="int32")
    h = keras.layers.Embedding(vocab, d_model)(inputs)
    for _ in range(blocks):
        attention = keras.layers.MultiHeadAttention(heads, d_model // heads)(h, h)
        h = keras.layers.LayerNormalization()(h + attention)
        ff = keras.layers.Dense(4 * d_model, activation="gelu")(h)
        h = keras.layers.LayerNormalization()(h + keras.layers.Dense(d_model)(ff))
    h = keras.layers.GlobalAveragePooling1D()(h)
    return keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(h))


# name: (builder, input maker, steps an epoch in the full run).
MODELS = {
    "8x512 MLP": (
        mlp,
        lambda rng, n: rng.normal(size=(n, 512)).astype("float32"),
        100,
    ),
    "CNN + BatchNorm 32x32x3": (
        cnn,
        lambda rng, n: rng.normal(size=(n, 32, 32, 3)).astype("float32"),
        30,
    ),
    "Transformer 2x128, seq 64": (
        transformer,
        lambda rng, n: rng.integers(0, 1000, size=(n, 64)).astype("int32"),
        15,
    ),
}

CONFIGS = [
    "no callback",
    "real step, every step, no activations",
    "real step, every step",
    "GradientHealth defaults (every 25 steps)",
    "histograms=4 (every 100 steps), defaults",
    "real step, every step, histograms=1",
    "probe mode (every 100 steps)",
    "Keras TensorBoard(histogram_freq=1)",
    "hand-written train_step (floor)",
]


def callbacks_for(config, log_dir, probe):
    if config == "real step, every step, no activations":
        return [keras_fanin.GradientHealth(log_dir, every_n_steps=1, activations=False)]
    if config == "real step, every step":
        return [keras_fanin.GradientHealth(log_dir, every_n_steps=1)]
    if config == "GradientHealth defaults (every 25 steps)":
        return [keras_fanin.GradientHealth(log_dir)]
    if config == "histograms=4 (every 100 steps), defaults":
        return [keras_fanin.GradientHealth(log_dir, histograms=4)]
    if config == "real step, every step, histograms=1":
        return [keras_fanin.GradientHealth(log_dir, every_n_steps=1, histograms=1)]
    if config == "probe mode (every 100 steps)":
        return [keras_fanin.GradientHealth(log_dir, probe, every_n_steps=None)]
    if config == "Keras TensorBoard(histogram_freq=1)":
        return [keras.callbacks.TensorBoard(log_dir, histogram_freq=1)]
    return []


def epoch_time(build, make_x, config, steps, log_dir):
    rng = np.random.default_rng(0)
    x = make_x(rng, steps * BATCH)
    y = rng.integers(0, 10, size=(steps * BATCH,))
    model = build()
    if config == "hand-written train_step (floor)":
        model = NormsInLogs(model)
    model.compile(keras.optimizers.SGD(0.01), "sparse_categorical_crossentropy")
    timer = EpochTimer()
    extra = callbacks_for(config, log_dir, (x[:BATCH], y[:BATCH]))
    model.fit(
        x, y, batch_size=BATCH, epochs=EPOCHS, verbose=0, callbacks=[*extra, timer]
    )
    traces = (
        extra[0]._hook.traces if extra and getattr(extra[0], "_hook", None) else None
    )
    return timer.times, traces


def compare(rounds, quick, log_root, models, picked="all"):
    configs = CONFIGS
    if picked != "all":
        words = picked.split(",")
        configs = [
            c for c in configs if c == "no callback" or any(w in c for w in words)
        ]
    if keras.backend.backend() != "tensorflow":
        configs = [c for c in configs if "TensorBoard" not in c and "floor" not in c]
    for name, (build, make_x, steps) in MODELS.items():
        if (
            models != "all"
            and name.split()[-1].lower() not in models
            and not any(m in name.lower() for m in models.split(","))
        ):
            continue
        steps = 10 if quick else steps
        times = {c: [] for c in configs}
        wholes = {c: [] for c in configs}
        slowest = {}
        traces = set()
        for r in range(rounds):
            for config in configs if r % 2 == 0 else configs[::-1]:
                log_dir = os.path.join(log_root, name[:3], str(r), config[:8])
                epochs, count = epoch_time(build, make_x, config, steps, log_dir)
                times[config].append(min(epochs))
                wholes[config].append(sum(epochs))
                slowest[config] = max(slowest.get(config, 0), max(epochs) / steps)
                if count is not None:
                    traces.add(count)
        print(f"\n{name} ({keras.backend.backend()}): batch {BATCH}, "
              f"{steps} steps/epoch, epochs 2-{EPOCHS} timed, {rounds} "
              f"interleaved rounds; train_step traces per fit: "
              f"{sorted(traces)}")  # fmt: skip
        print(f"  {'configuration':42s} {'whole s':>7s} {'ratio':>6s} "
              f"{'best epoch s':>12s} {'ratio':>6s}  ms/step: best, slowest "
              "epoch")  # fmt: skip
        for config in configs:
            # The whole run (every timed epoch summed, slow ones included)
            # and the best epoch, each the median over rounds of the ratio
            # to the same round's fit without callbacks.
            whole = [t / b for t, b in zip(wholes[config], wholes["no callback"],
                                           strict=True)]  # fmt: skip
            best = [t / b for t, b in zip(times[config], times["no callback"],
                                          strict=True)]  # fmt: skip
            print(f"  {config:42s} {statistics.median(wholes[config]):7.3f} "
                  f"{statistics.median(whole):6.3f} "
                  f"{statistics.median(times[config]):12.3f} "
                  f"{statistics.median(best):6.3f}  "
                  f"{min(times[config]) / steps * 1e3:5.1f} "
                  f"{slowest[config] * 1e3:5.1f}")  # fmt: skip


def depth_cost(steps, log_root, rounds):
    """Time per step with the real step logged every step, and without."""
    print("\nCost of a logged step against depth (width 128, batch 128, every step):")
    print(f"  {'layers':>6s} {'plain ms':>9s} {'logged ms':>10s} {'ratio':>6s}")
    for depth in (10, 50, 100):
        times = {"plain": [], "logged": []}
        for r in range(rounds):
            for kind in ("plain", "logged") if r % 2 == 0 else ("logged", "plain"):
                cbs = (
                    []
                    if kind == "plain"
                    else [keras_fanin.GradientHealth(
                        os.path.join(log_root, f"depth{depth}_{r}"), every_n_steps=1)]
                )  # fmt: skip
                seconds, _ = epoch_time(
                    lambda d=depth: mlp(d, 128, 128), lambda rng, n: rng.normal(
                        size=(n, 128)).astype("float32"), "no callback", steps, None
                ) if kind == "plain" else _timed(depth, steps, cbs)  # fmt: skip
                times[kind].append(seconds / steps)
        plain, logged = (statistics.median(times[k]) for k in ("plain", "logged"))
        print(f"  {depth:6d} {plain * 1e3:9.2f} {logged * 1e3:10.2f} "
              f"{logged / plain:6.3f}")  # fmt: skip


def _timed(depth, steps, callbacks):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(steps * BATCH, 128)).astype("float32")
    y = rng.integers(0, 10, size=(steps * BATCH,))
    model = mlp(depth, 128, 128)
    model.compile(keras.optimizers.SGD(0.01), "sparse_categorical_crossentropy")
    timer = EpochTimer()
    model.fit(x, y, batch_size=BATCH, epochs=EPOCHS, verbose=0,
              callbacks=[*callbacks, timer])  # fmt: skip
    return timer.best, None


def rss_mb():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def memory(steps, log_root):
    """Resident memory over `steps` logged steps (every step, small MLP)."""

    class Rss(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.samples = []

        def on_epoch_end(self, epoch, logs=None):
            self.samples.append(rss_mb())

    rng = np.random.default_rng(0)
    x = rng.normal(size=(500 * 32, 32)).astype("float32")
    y = rng.integers(0, 10, size=(500 * 32,))
    model = mlp(4, 64, 32)
    model.compile(keras.optimizers.SGD(0.01), "sparse_categorical_crossentropy")
    rss = Rss()
    health = keras_fanin.GradientHealth(log_root, every_n_steps=1)
    model.fit(x, y, batch_size=32, epochs=steps // 500, verbose=0,
              callbacks=[health, rss])  # fmt: skip
    print(f"\nMemory over {steps} logged steps (RSS after each 500, MB): "
          + " ".join(f"{m:.0f}" for m in rss.samples))  # fmt: skip


def short_fits(rounds, log_root, fits=10):
    """A loop of short fits (notebooks, KerasTuner, folds): 10 x fit(epochs=1)
    of one compiled 21-layer MLP, 4 steps each, compile and traces included.
    Printed: the whole loop, and the later fits alone (the cost of a call)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4 * 64, 32)).astype("float32")
    y = rng.integers(0, 10, size=(4 * 64,))
    kinds = ("no callback", "GradientHealth defaults", "Keras TensorBoard")
    times = {kind: [] for kind in kinds}
    later = {kind: [] for kind in kinds}
    for r in range(rounds):
        for kind in kinds if r % 2 == 0 else kinds[::-1]:
            model = mlp(20, 32, 32)
            model.compile(keras.optimizers.SGD(0.01), "sparse_categorical_crossentropy")
            log_dir = os.path.join(log_root, f"fits{r}")
            cbs = {
                "no callback": [],
                "GradientHealth defaults": [
                    keras_fanin.GradientHealth(log_dir, warn=False)
                ],
                "Keras TensorBoard": [keras.callbacks.TensorBoard(log_dir + "_tb")],
            }[kind]
            each = []
            for _ in range(fits):
                start = time.perf_counter()
                model.fit(x, y, batch_size=64, epochs=1, verbose=0, callbacks=cbs)
                each.append(time.perf_counter() - start)
            times[kind].append(sum(each))
            later[kind].append(sum(each[1:]))
    print(f"\n{fits} x fit(epochs=1), 21-layer MLP, 4 steps each (median of "
          f"{rounds} rounds): the whole loop (compile and traces included), "
          f"and one of fits 2-{fits} (the cost of a call)")  # fmt: skip
    base, base_rest = (statistics.median(t[kinds[0]]) for t in (times, later))
    for kind in kinds:
        whole, rest = statistics.median(times[kind]), statistics.median(later[kind])
        each = rest / (fits - 1) * 1e3
        print(f"  {kind:26s} {whole:6.2f} s {whole / base:5.2f}x   "
              f"{each:6.2f} ms {rest / base_rest:5.2f}x")  # fmt: skip


def main():
    args = ARGS
    rounds = 1 if args.quick else args.rounds
    with tempfile.TemporaryDirectory() as log_root:
        parts = args.parts.split(",")
        if "compare" in parts:
            compare(rounds, args.quick, log_root, args.models, args.configs)
        if "depth" in parts:
            depth_cost(10 if args.quick else 50, log_root, 1 if args.quick else 3)
        if "memory" in parts:
            memory(1000 if args.quick else 5000, os.path.join(log_root, "memory"))
        if "fits" in parts:
            short_fits(1 if args.quick else args.rounds, log_root)


if __name__ == "__main__":
    main()
