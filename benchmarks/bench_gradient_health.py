"""Cost of GradientHealth on a steady-state fit(), measured side by side.

An 8x512 ReLU MLP (batch 128, 200 steps an epoch) is trained for two epochs
with each configuration in turn, interleaved round by round; the second epoch is
timed. Printed: the median ratio of each configuration's epoch time over the
same fit without callbacks, for GradientHealth at its defaults, at
every_n_steps=1, and for Keras's own TensorBoard(histogram_freq=1) as the peer;
the one-off setup cost (first probe: tracing); and how the cost of one
measurement grows with depth (10, 50, 100 layers).

    python benchmarks/bench_gradient_health.py            # full run (~5 min)
    python benchmarks/bench_gradient_health.py --quick    # a smoke run
"""

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_fanin  # noqa: E402

BATCH = 128


class EpochTimer(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.last = time.perf_counter() - self.start


def mlp(depth, width, features):
    layers = [keras.Input((features,))]
    layers += [
        keras.layers.Dense(
            width, activation="relu", kernel_initializer=keras_fanin.He()
        )
        for _ in range(depth)
    ]
    layers.append(keras.layers.Dense(10, activation="softmax"))
    model = keras.Sequential(layers)
    model.compile(keras.optimizers.SGD(0.01), "sparse_categorical_crossentropy")
    return model


def data(steps, features):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(steps * BATCH, features)).astype("float32")
    y = rng.integers(0, 10, size=(steps * BATCH,))
    return x, y


def second_epoch_time(config, depth, width, steps, log_root):
    x, y = data(steps, width)
    model = mlp(depth, width, width)
    timer = EpochTimer()
    callbacks = {
        "no callback": [],
        "GradientHealth (defaults)": lambda: [
            keras_fanin.GradientHealth(log_root, (x[:BATCH], y[:BATCH]))
        ],
        "GradientHealth every_n_steps=1": lambda: [
            keras_fanin.GradientHealth(
                log_root, (x[:BATCH], y[:BATCH]), every_n_steps=1
            )
        ],
        "Keras TensorBoard(histogram_freq=1)": lambda: [
            keras.callbacks.TensorBoard(log_root, histogram_freq=1)
        ],
    }[config]
    extra = callbacks() if callable(callbacks) else callbacks
    model.fit(x, y, batch_size=BATCH, epochs=2, verbose=0, callbacks=[*extra, timer])
    return timer.last


def probe_cost(depth, width, log_root, repeats):
    """Setup (first probe, with tracing) and the median time of one measurement."""
    x, y = data(2, width)
    model = mlp(depth, width, width)
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
    health = keras_fanin.GradientHealth(log_root, (x[:BATCH], y[:BATCH]))
    health.set_model(model)
    start = time.perf_counter()
    health.on_train_begin()
    setup = time.perf_counter() - start
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        health._measure(i + 1)
        times.append(time.perf_counter() - start)
    health.close()
    step = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.train_on_batch(x[:BATCH], y[:BATCH])
        step.append(time.perf_counter() - start)
    return setup, statistics.median(times), statistics.median(step)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run")
    args = parser.parse_args()
    rounds, steps = (1, 20) if args.quick else (7, 200)
    configs = [
        "no callback",
        "GradientHealth (defaults)",
        "GradientHealth every_n_steps=1",
        "Keras TensorBoard(histogram_freq=1)",
    ]
    times = {c: [] for c in configs}
    with tempfile.TemporaryDirectory() as log_root:
        for r in range(rounds):
            order = configs if r % 2 == 0 else configs[::-1]
            for config in order:
                times[config].append(
                    second_epoch_time(
                        config, 8, 512, steps, os.path.join(log_root, str(r))
                    )
                )
        print(f"8x512 ReLU MLP, batch {BATCH}, {steps} steps/epoch, second epoch, "
              f"{rounds} interleaved rounds")  # fmt: skip
        base = times["no callback"]
        for config in configs:
            ratios = [t / b for t, b in zip(times[config], base, strict=True)]
            epoch = statistics.median(times[config])
            print(f"  {config:38s} median epoch {epoch:6.3f} s"
                  f"  ratio {statistics.median(ratios):.3f}")  # fmt: skip

        print("\nCost of one measurement vs depth (width 128, probe batch 128):")
        print(f"  {'layers':>6s} {'setup s':>8s} {'probe ms':>9s} {'step ms':>8s} "
              f"{'probe/step':>10s}")  # fmt: skip
        for depth in (10, 50, 100):
            setup, probe, step = probe_cost(
                depth, 128, os.path.join(log_root, f"d{depth}"), 5 if args.quick else 30
            )
            print(f"  {depth:6d} {setup:8.2f} {probe * 1e3:9.2f} {step * 1e3:8.2f} "
                  f"{probe / step:10.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
