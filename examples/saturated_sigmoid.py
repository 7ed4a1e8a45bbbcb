"""Saturated sigmoids under a too-large init, seen in GradientHealth, fixed by the gain.

A 4-layer sigmoid MLP on the bundled digits, initialised with
`keras_fanin.Xavier(gain=g)` for three gains and trained the same way:

- gain 16: the first layer's pre-activations have a std of about 15, so
  about half of the sigmoids sit within 1e-3 of 0 or 1, where their derivative
  `y (1 - y)` is below 1e-3 and the gradient vanishes. GradientHealth's
  `saturated_sigmoid_fraction` shows it from step 0 and its warning names the
  layers; the network learns slowly;
- gain 4: few outputs saturate (6% in the first layer), and it learns
  fastest. A sigmoid's slope at 0 is 1/4, so keeping the signal's variance
  through a sigmoid layer takes a gain of about 4 (the "4 x Glorot" rule of the
  Theano tutorials);
- gain 1 (`calculate_gain("sigmoid")`, PyTorch's table value): nothing
  saturates either, but each layer passes the signal's deviations at the
  sigmoid's slope of about 1/4, so little of the input reaches the top and,
  with SGD, it sits near chance for most of the run: the table's gain is a
  starting point, not the optimum.

The gain is a hyperparameter: `examples/tune_gain.py` searches it.

    python examples/saturated_sigmoid.py               # about 15 s on 2 cores
    python examples/saturated_sigmoid.py --epochs 3    # quicker
"""

import argparse
import os

# TF 2.21 logs a harmless C++ "error" about a MapDataset attribute at every
# fit(); level 3 keeps the example's output readable.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
from common import deterministic_ops, fit_with_health, load_data, signal  # noqa: E402

import keras_fanin  # noqa: E402

GAINS = (16.0, 4.0, keras_fanin.calculate_gain("sigmoid"))


def build(gain, depth=4, width=64):
    """`depth` sigmoid layers initialised with `Xavier(gain=gain)`, then softmax,
    compiled for training (SGD with momentum, the same for every gain)."""
    layers = [keras.Input((64,))]
    layers += [
        keras.layers.Dense(
            width,
            activation="sigmoid",
            kernel_initializer=keras_fanin.Xavier(gain=gain),
            name=f"sigmoid_{i}",
        )
        for i in range(1, depth + 1)
    ]
    layers.append(keras.layers.Dense(10, activation="softmax", name="softmax"))
    model = keras.Sequential(layers)
    model.compile(
        keras.optimizers.SGD(0.05, momentum=0.9),
        "sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def run(
    gains=GAINS,
    epochs=10,
    depth=4,
    width=64,
    log_root="logs/saturated_sigmoid",
    seed=0,
    verbose=True,
):
    """Trains one model per gain; returns `{gain: results}`.

    Each result has `saturated_at_start` and `saturated_at_end`
    (`{layer: fraction}` from GradientHealth's history), `val_accuracy` after
    training, `val_accuracy_per_epoch`, `warnings` and `log_dir`.
    """
    deterministic_ops()
    x_train, x_val, y_train, y_val = load_data(seed)
    results = {}
    for gain in gains:
        keras.utils.set_random_seed(seed)
        model = build(gain, depth, width)
        log_dir = os.path.join(log_root, f"gain_{gain:g}")
        health = keras_fanin.GradientHealth(
            log_dir,
            (x_train[:256], y_train[:256]),
            every_n_steps=None,
            probe_every_n_steps=20,
        )
        history, messages = fit_with_health(
            model,
            health,
            x_train,
            y_train,
            validation_data=(x_val, y_val),
            batch_size=32,
            epochs=epochs,
        )
        # Only the hidden layers have this signal: the head is a softmax.
        saturated = signal(health, "saturated_sigmoid_fraction")
        accuracy = [float(v) for v in history.history["val_accuracy"]]
        results[gain] = {
            "saturated_at_start": {k: s[0][1] for k, s in saturated.items()},
            "saturated_at_end": {k: s[-1][1] for k, s in saturated.items()},
            "val_accuracy": accuracy[-1],
            "val_accuracy_per_epoch": accuracy,
            "warnings": messages,
            "log_dir": log_dir,
        }
        if verbose:
            report_one(gain, results[gain])
    return results


def report_one(gain, r):
    start = " ".join(f"{v:4.2f}" for v in r["saturated_at_start"].values())
    end = " ".join(f"{v:4.2f}" for v in r["saturated_at_end"].values())
    curve = " ".join(f"{v:.2f}" for v in r["val_accuracy_per_epoch"])
    print(f"  Xavier(gain={gain:g})")
    print(f"    saturated fraction per layer: step 0 [{start}]  end [{end}]")
    print(f"    val_accuracy per epoch: {curve}")
    for message in r["warnings"]:
        print(f"    warning: {message}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-dir", default="logs/saturated_sigmoid")
    args = parser.parse_args(argv)
    print(
        "A 4-layer sigmoid MLP on the digits; fraction of sigmoid outputs within "
        "1e-3 of 0 or 1 (from GradientHealth):"
    )
    results = run(epochs=args.epochs, seed=args.seed, log_root=args.log_dir)
    print(f"\nOpen the logs with: tensorboard --logdir {args.log_dir}")
    return results


if __name__ == "__main__":
    main()
