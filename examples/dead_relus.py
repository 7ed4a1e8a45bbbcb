"""Dying ReLUs, seen in GradientHealth, and the forum thread's fix.

A 3-layer ReLU MLP trained on the bundled digits with Adam at a too-high
learning rate (0.03): big updates push many units' inputs below zero for every
example, where a ReLU's gradient is exactly zero, so they never come back.
GradientHealth's `dead_relu_fraction` shows it and its warning names the
layer. Two fixes, trained from the same seed:

- the forum thread's: LeakyReLU (`activation="leaky_relu"`, slope 0.2) with
  `keras_fanin.He(negative_slope=0.2)`, at the same learning rate: a leaky unit
  on the negative side still passes 0.2 times the gradient, so it comes back;
  GradientHealth counts its units with the same rule, so the fraction (and the
  TensorBoard chart, where both runs overlay) is comparable;
- the cause's: the same ReLU network at a sane learning rate (0.001).

    python examples/dead_relus.py               # about 15 s on 2 cores
    python examples/dead_relus.py --epochs 3    # quicker

Same-shape layers are named alike in every run, so `tensorboard --logdir
logs/dead_relus` draws the three runs on one `dead_relu_fraction` chart per
layer.
"""

import argparse
import os

# TF 2.21 logs a harmless C++ "error" about a MapDataset attribute at every
# fit(); level 3 keeps the example's output readable.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
from common import deterministic_ops, fit_with_health, load_data, signal  # noqa: E402

import keras_fanin  # noqa: E402

SLOPE = 0.2  # keras.activations.leaky_relu's default negative slope
RUNS = {
    # name: (activation, kernel initializer, Adam learning rate)
    "relu_lr0.03": ("relu", lambda: keras_fanin.He(), 0.03),
    "leaky_relu_lr0.03": (
        "leaky_relu",
        lambda: keras_fanin.He(negative_slope=SLOPE),
        0.03,
    ),
    "relu_lr0.001": ("relu", lambda: keras_fanin.He(), 0.001),
}


def build(activation, initializer, depth, width):
    layers = [keras.Input((64,))]
    layers += [
        keras.layers.Dense(
            width,
            activation=activation,
            kernel_initializer=initializer(),
            name=f"hidden_{i}",
        )
        for i in range(1, depth + 1)
    ]
    layers.append(keras.layers.Dense(10, activation="softmax", name="softmax"))
    return keras.Sequential(layers)


def run(
    epochs=8,
    depth=3,
    width=128,
    log_root="logs/dead_relus",
    seed=0,
    runs=tuple(RUNS),
    verbose=True,
):
    """Trains each run; returns `{run: results}`.

    Each result has `dead_fraction` (`{layer: fraction}` at the end of training,
    from GradientHealth's history), `max_dead_fraction`, `val_accuracy`,
    `warnings` (GradientHealth's messages) and `log_dir`.
    """
    unknown = sorted(set(runs) - set(RUNS))
    if unknown:
        raise ValueError(f"Unknown runs {unknown}; choose from {list(RUNS)}.")
    deterministic_ops()
    x_train, x_val, y_train, y_val = load_data(seed)
    results = {}
    for name in runs:
        activation, initializer, learning_rate = RUNS[name]
        keras.utils.set_random_seed(seed)
        model = build(activation, initializer, depth, width)
        model.compile(
            keras.optimizers.Adam(learning_rate),
            "sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
        log_dir = os.path.join(log_root, name)
        health = keras_fanin.GradientHealth(
            log_dir,
            (x_train[:256], y_train[:256]),
            every_n_steps=None,
            probe_every_n_steps=10,
        )
        _, messages = fit_with_health(
            model, health, x_train, y_train, batch_size=32, epochs=epochs
        )
        _, val_accuracy = model.evaluate(x_val, y_val, verbose=0)
        dead = {
            layer: series[-1][1]
            for layer, series in signal(health, "dead_relu_fraction").items()
        }
        results[name] = {
            "dead_fraction": dead,
            "max_dead_fraction": max(dead.values()),
            "val_accuracy": float(val_accuracy),
            "warnings": messages,
            "log_dir": log_dir,
        }
        if verbose:
            r = results[name]
            print(
                f"  {name:18s} dead fraction per layer "
                + " ".join(f"{v:4.2f}" for v in dead.values())
                + f"   val_accuracy {r['val_accuracy']:.3f}"
            )
            for message in r["warnings"]:
                print(f"      warning: {message}")
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-dir", default="logs/dead_relus")
    args = parser.parse_args(argv)
    print(
        "Fraction of each hidden layer's units that output 0 for every probe "
        f"example, after {args.epochs} epochs (from GradientHealth):"
    )
    results = run(epochs=args.epochs, seed=args.seed, log_root=args.log_dir)
    print(f"\nOpen the logs with: tensorboard --logdir {args.log_dir}")
    return results


if __name__ == "__main__":
    main()
