"""The gain as a hyperparameter, searched with KerasTuner.

The lecture calls the variance multiplier "another parameter you could tune".
This grid-searches `keras_fanin.Xavier(gain=...)` for the 4-layer sigmoid MLP
of `examples/saturated_sigmoid.py` on the bundled digits, scoring each gain by
its best validation accuracy, and prints the score per gain and the best gain.
The gain is an ordinary `hp.Choice`; every trial trains from the same seed, so
the search is deterministic and only the gain differs between trials.

    python examples/tune_gain.py               # about 20 s on 2 cores
    python examples/tune_gain.py --epochs 2 --gains 1 4 16    # quicker
"""

import argparse
import os

# TF 2.21 logs a harmless C++ "error" about a MapDataset attribute at every
# fit(); level 3 keeps the example's output readable.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import keras_tuner  # noqa: E402
from common import deterministic_ops, load_data  # noqa: E402
from saturated_sigmoid import build  # noqa: E402

GAINS = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)


def search(
    gains=GAINS,
    epochs=5,
    directory="logs/tune_gain",
    seed=0,
    verbose=True,
):
    """Runs the grid search; returns `(best_gain, {gain: score})`."""
    deterministic_ops()
    x_train, x_val, y_train, y_val = load_data(seed)

    def build_model(hp):
        keras.utils.set_random_seed(seed)  # same draws for every trial
        return build(hp.Choice("gain", list(gains)))

    tuner = keras_tuner.GridSearch(
        build_model,
        objective="val_accuracy",
        directory=directory,
        project_name="xavier_gain",
        overwrite=True,
        seed=seed,
    )
    tuner.search(
        x_train,
        y_train,
        validation_data=(x_val, y_val),
        batch_size=32,
        epochs=epochs,
        verbose=0,
    )
    scores = {
        float(t.hyperparameters.get("gain")): float(t.score)
        for t in tuner.oracle.trials.values()
    }
    best = float(tuner.get_best_hyperparameters(1)[0].get("gain"))
    if verbose:
        print(f"  {'gain':>6s}  best val_accuracy in {epochs} epochs")
        for gain in sorted(scores):
            mark = "  <- best" if gain == best else ""
            print(f"  {gain:6g}  {scores[gain]:.3f}{mark}")
        print(f"\nBest gain: {best:g} (val_accuracy {scores[best]:.3f})")
    return best, scores


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gains", type=float, nargs="+", default=list(GAINS))
    parser.add_argument("--dir", default="logs/tune_gain")
    args = parser.parse_args(argv)
    print("Grid search over Xavier's gain for a 4-layer sigmoid MLP on the digits:")
    return search(
        gains=tuple(args.gains), epochs=args.epochs, directory=args.dir, seed=args.seed
    )


if __name__ == "__main__":
    main()
