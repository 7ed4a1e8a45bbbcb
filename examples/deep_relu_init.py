"""The lecture's claim on real data: a 30-layer plain ReLU MLP on the digits.

Trains the same 30-layer ReLU network on scikit-learn's bundled 8x8 digits
with keras_fanin.He, keras_fanin.LeCun, keras_fanin.Xavier and two naive fixed
stds (0.01 and 1.0), with GradientHealth attached to each run, and shows

- the activation std at each depth at initialisation (table + PNG): He keeps
  it, 1/n halves the variance at every ReLU layer, a fixed std vanishes or
  explodes as (std * sqrt(n / 2))^L;
- validation accuracy per scheme after training;
- the first and last layers' gradient norms, read back from GradientHealth's
  own TensorBoard logs;
- where the logs are and the command that opens them.

    python examples/deep_relu_init.py                 # full run, a few minutes
    python examples/deep_relu_init.py --epochs 3      # quicker

Work in progress (issue 5): the initialisation picture and the gradient norms
read back from GradientHealth's logs are right, but the training budget is not
tuned yet: at 20 epochs He reaches ~0.42 validation accuracy against LeCun's
~0.19, not yet the clear "He learns" outcome the README will promise.
"""

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

import keras_fanin  # noqa: E402

SCHEMES = {
    "He": lambda seed: keras_fanin.He(seed=seed),
    "LeCun": lambda seed: keras_fanin.LeCun(seed=seed),
    "Xavier": lambda seed: keras_fanin.Xavier(seed=seed),
    "fixed std 0.01": lambda seed: keras.initializers.RandomNormal(
        stddev=0.01, seed=seed
    ),
    "fixed std 1.0": lambda seed: keras.initializers.RandomNormal(
        stddev=1.0, seed=seed
    ),
}


def load_data(seed=0):
    digits = load_digits()
    x = (digits.data / 16.0).astype("float32")
    x = (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-6)  # zero mean, unit variance
    return train_test_split(
        x, digits.target, test_size=0.25, random_state=seed, stratify=digits.target
    )


def build(scheme, depth, width, seed):
    # A SeedGenerator advances, so every layer gets its own draw.
    init = SCHEMES[scheme](keras.random.SeedGenerator(seed))
    layers = [keras.Input((64,))]
    layers += [
        keras.layers.Dense(
            width, activation="relu", kernel_initializer=init, name=f"relu_{i}"
        )
        for i in range(1, depth + 1)
    ]
    layers.append(
        keras.layers.Dense(
            10,
            activation="softmax",
            name="softmax",
            kernel_initializer=keras_fanin.Xavier(seed=seed),
        )
    )
    return keras.Sequential(layers, name=scheme.replace(" ", "_").replace(".", ""))


def activation_stds(model, x):
    """Std of each hidden layer's output at initialisation, layer by layer."""
    stds, h = [], x
    for layer in model.layers[:-1]:
        h = layer(h)
        stds.append(float(np.std(keras.ops.convert_to_numpy(h))))
    return stds


def read_grad_norms(log_dir):
    """First-step gradient norms per layer, read back from the event files."""
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.util import tensor_util

    acc = event_accumulator.EventAccumulator(
        os.path.join(log_dir, "gradient_health"),
        size_guidance={event_accumulator.TENSORS: 0},
    )
    acc.Reload()
    return {
        tag.split("/", 1)[1]: [
            float(tensor_util.make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)
        ]
        for tag in acc.Tags()["tensors"]
        if tag.startswith("grad_norm/")
    }


class Progress(keras.callbacks.Callback):
    def __init__(self, scheme):
        super().__init__()
        self.scheme = scheme

    def on_epoch_end(self, epoch, logs=None):
        print(
            f"\r  {self.scheme:15s} epoch {epoch + 1:3d}/{self.params['epochs']}"
            f"  loss {logs['loss']:.4f}  val_accuracy {logs['val_accuracy']:.3f}",
            end="",
            flush=True,
        )


def run(
    learning_rate=0.01,
    depth=30,
    width=128,
    epochs=40,
    log_root="logs/deep_relu_init",
    seed=0,
    plot_path="deep_relu_init.png",
    schemes=tuple(SCHEMES),
    verbose=True,
):
    """Trains every scheme and returns `{scheme: results}`; writes logs and a plot."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    x_train, x_val, y_train, y_val = load_data(seed)
    results = {}
    for scheme in schemes:
        keras.utils.set_random_seed(seed)
        model = build(scheme, depth, width, seed)
        stds = activation_stds(model, x_train[:512])
        model.compile(
            keras.optimizers.SGD(learning_rate, momentum=0.9),
            "sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
        log_dir = os.path.join(log_root, model.name)
        health = keras_fanin.GradientHealth(
            log_dir, (x_train[:256], y_train[:256]), every_n_steps=20, warn=False
        )
        start = time.perf_counter()
        history = model.fit(
            x_train,
            y_train,
            validation_data=(x_val, y_val),
            batch_size=64,
            epochs=epochs,
            verbose=0,
            shuffle=True,
            callbacks=[health, *([Progress(scheme)] if verbose else [])],
        )
        if verbose:
            print(f"  ({time.perf_counter() - start:.0f} s)")
        norms = read_grad_norms(log_dir)
        results[scheme] = {
            "activation_std": stds,
            "val_accuracy": float(history.history["val_accuracy"][-1]),
            "grad_norm_first": norms["relu_1"][0],
            "grad_norm_last": norms[f"relu_{depth}"][0],
            "log_dir": log_dir,
        }
    if plot_path:
        plot(results, plot_path)
    return results


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for scheme, r in results.items():
        stds = np.maximum(r["activation_std"], 1e-45)
        ax.semilogy(range(1, len(stds) + 1), stds, marker=".", label=scheme)
    ax.set_xlabel("layer")
    ax.set_ylabel("activation std at initialisation")
    ax.set_title(f"{len(stds)}-layer ReLU MLP on the digits")
    ax.legend()
    ax.grid(True, which="major", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(results, log_root, plot_path):
    depth = len(next(iter(results.values()))["activation_std"])
    rows = [1, 5, 10, 20, depth]
    print(f"\nActivation std at initialisation, by depth ({plot_path}):")
    print(f"  {'layer':>5s} " + " ".join(f"{s:>15s}" for s in results))
    for i in rows:
        print(
            f"  {i:5d} "
            + " ".join(f"{r['activation_std'][i - 1]:15.3e}" for r in results.values())
        )
    print(
        "\nAfter training (chance is 0.10), gradient norms at step 0 from "
        "GradientHealth's logs:"
    )
    print(
        f"  {'scheme':15s} {'val_accuracy':>12s} {'grad relu_1':>12s} "
        f"{'grad relu_' + str(depth):>12s}"
    )
    for scheme, r in results.items():
        print(
            f"  {scheme:15s} {r['val_accuracy']:12.3f} {r['grad_norm_first']:12.3e}"
            f" {r['grad_norm_last']:12.3e}"
        )
    print(f"\nTensorBoard logs: {os.path.abspath(log_root)}")
    print(f"Open them with:   tensorboard --logdir {log_root}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--log-dir", default="logs/deep_relu_init")
    parser.add_argument("--plot", default="deep_relu_init.png")
    args = parser.parse_args(argv)
    print(f"Training a {args.depth}-layer ReLU MLP on the digits with each scheme:")
    results = run(
        depth=args.depth, epochs=args.epochs, log_root=args.log_dir, plot_path=args.plot
    )
    report(results, args.log_dir, args.plot)


if __name__ == "__main__":
    sys.exit(main())
