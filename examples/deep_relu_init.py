"""The lecture's claim on real data: a 30-layer plain ReLU MLP on the digits.

Trains the same 30-layer ReLU network (width 128) on scikit-learn's bundled
8x8 digits with `keras_fanin.He`, `keras_fanin.LeCun`, `keras_fanin.Xavier`
and two naive fixed stds (0.01 and 1.0), with `GradientHealth` attached to
every run, and shows

- the activation std at each depth at initialisation (a table, and a PNG):
  He keeps it; LeCun's `1 / n` halves the variance at every ReLU layer, so the
  std shrinks as `0.5^(L/2)`; a fixed std vanishes or explodes as
  `(std * sqrt(n / 2))^L`;
- the validation accuracy per scheme after training (He learns, LeCun and
  Xavier stall at chance, the fixed stds vanish or blow up);
- each run's first and last layers' gradient norms at step 0, read back from
  GradientHealth's own TensorBoard event files, and the warnings it raised;
- where the logs are and the command that opens them.

For the square 128x128 hidden layers Xavier's `2 / (n_in + n_out)` is LeCun's
`1 / n`, so the two behave alike; only the first layer (64 -> 128) differs.

    python examples/deep_relu_init.py               # about 70 s on 2 cores
    python examples/deep_relu_init.py --epochs 5    # quicker, same code path
    python examples/deep_relu_init.py --schemes He LeCun

The run is deterministic given `--seed` (TensorFlow's op determinism is on).
"""

import argparse
import math
import os
import textwrap
import time

# TF 2.21 logs a harmless C++ "error" about a MapDataset attribute at every
# fit(); level 3 keeps the demo's output readable.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from common import CHANCE, deterministic_ops, fit_with_health, load_data  # noqa: E402

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
        # float64: a fixed std of 1.0 reaches 1e27 at depth 30, whose square
        # overflows float32.
        values = keras.ops.convert_to_numpy(h).astype("float64")
        stds.append(float(np.std(values)) if np.isfinite(values).all() else math.inf)
    return stds


def read_grad_norms(log_dir):
    """Gradient norms per layer, `{layer: [(step, value), ...]}`, read back from
    GradientHealth's event files with TensorBoard's own reader."""
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.util import tensor_util

    acc = event_accumulator.EventAccumulator(
        os.path.join(log_dir, "gradient_health", "probe"),
        size_guidance={event_accumulator.TENSORS: 0},
    )
    acc.Reload()
    return {
        tag.split("/", 1)[1]: [
            (e.step, float(tensor_util.make_ndarray(e.tensor_proto)))
            for e in acc.Tensors(tag)
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
            f"  loss {logs['loss']:9.4g}  val_accuracy {logs['val_accuracy']:.3f}",
            end="",
            flush=True,
        )


def train(
    scheme,
    data,
    *,
    depth,
    width,
    epochs,
    learning_rate,
    batch_size,
    log_root,
    seed,
    verbose,
    fix=False,
):
    """Trains one scheme (after `keras_fanin.fix` if `fix`); returns its
    results (see `run`)."""
    x_train, x_val, y_train, y_val = data
    keras.utils.set_random_seed(seed)
    model = build(scheme, depth, width, seed)
    # Before any training: is this network initialised right?
    verdict = keras_fanin.check(model, x_train[:64])
    if fix:
        # Re-draw what check flags with what it advises, then check again;
        # with the seed He's network draws with, so the two can be compared.
        seed_generator = keras.random.SeedGenerator(seed)
        verdict = keras_fanin.fix(model, x_train[:64], seed=seed_generator)
    stds = activation_stds(model, x_train[:512])
    model.compile(
        keras.optimizers.SGD(learning_rate, momentum=0.9),
        "sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    log_dir = os.path.join(log_root, model.name + ("_fixed" if fix else ""))
    health = keras_fanin.GradientHealth(
        log_dir,
        (x_train[:256], y_train[:256]),
        every_n_steps=None,
        probe_every_n_steps=50,
        stop_on_nonfinite=True,
    )
    start = time.perf_counter()
    history, messages = fit_with_health(
        model,
        health,
        x_train,
        y_train,
        callbacks=[Progress(scheme)] if verbose else [],
        validation_data=(x_val, y_val),
        batch_size=batch_size,
        epochs=epochs,
    )
    seconds = time.perf_counter() - start
    if verbose:
        print(f"  ({seconds:.0f} s)")
    val_loss, val_accuracy = model.evaluate(x_val, y_val, verbose=0)
    nonfinite = [
        s for s, v in health.probe_history["probe_loss"] if not math.isfinite(v)
    ]
    norms = read_grad_norms(log_dir)
    return {
        "activation_std": stds,
        "val_accuracy": float(val_accuracy),
        "val_loss": float(val_loss),
        "val_accuracy_per_epoch": [float(v) for v in history.history["val_accuracy"]],
        "diverged_at_step": nonfinite[0] if nonfinite else None,
        "grad_norm_first": norms["relu_1"][0][1],
        "grad_norm_last": norms[f"relu_{depth}"][0][1],
        "warnings": messages,
        "check_problems": verdict.problems,
        "log_dir": log_dir,
        "seconds": seconds,
    }


def run(
    depth=30,
    width=128,
    epochs=20,
    learning_rate=0.002,
    batch_size=16,
    log_root="logs/deep_relu_init",
    seed=0,
    plot_path="deep_relu_init.png",
    schemes=tuple(SCHEMES),
    verbose=True,
    fix=(),
):
    """Trains every scheme in `schemes` and returns `{scheme: results}`.

    Each result has `activation_std` (per hidden layer, at initialisation),
    `val_accuracy` and `val_loss` after training, `val_accuracy_per_epoch`,
    `diverged_at_step` (the first step GradientHealth saw NaN/inf, or None),
    `grad_norm_first` / `grad_norm_last` (step 0, from the event files),
    `warnings` (GradientHealth's messages), `check_problems`
    (`keras_fanin.check`'s verdicts before training), `log_dir` and
    `seconds`. The schemes in `fix` are also trained after
    `keras_fanin.fix(model, x)`, as `"<scheme> + fix"`. Writes TensorBoard
    logs under `log_root` and, if `plot_path`, a PNG.
    """
    unknown = sorted(set(schemes) - set(SCHEMES))
    if unknown:
        raise ValueError(f"Unknown schemes {unknown}; choose from {list(SCHEMES)}.")
    deterministic_ops()
    data = load_data(seed)
    settings = dict(
        depth=depth,
        width=width,
        epochs=epochs,
        learning_rate=learning_rate,
        batch_size=batch_size,
        log_root=log_root,
        seed=seed,
        verbose=verbose,
    )
    results = {scheme: train(scheme, data, **settings) for scheme in schemes}
    for scheme in fix:
        results[f"{scheme} + fix"] = train(scheme, data, **settings, fix=True)
    if plot_path:
        plot(results, plot_path)
    return results


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for scheme, r in results.items():
        stds = np.clip(r["activation_std"], 1e-45, 1e38)
        (line,) = left.semilogy(range(1, len(stds) + 1), stds, marker=".", label=scheme)
        accuracy = r["val_accuracy_per_epoch"]
        label = scheme
        if r["diverged_at_step"] is not None:
            label += f" (NaN/inf at step {r['diverged_at_step']}, stopped)"
        right.plot(
            range(1, len(accuracy) + 1),
            accuracy,
            marker=".",
            color=line.get_color(),
            label=label,
        )
    depth = len(stds)
    left.set_xlabel("layer")
    left.set_ylabel("activation std at initialisation")
    left.set_title(f"Signal through {depth} ReLU layers")
    left.grid(True, which="major", alpha=0.3)
    left.legend(fontsize=8)
    right.axhline(CHANCE, color="gray", linestyle=":", label="chance")
    right.set_xlabel("epoch")
    right.set_ylabel("validation accuracy")
    right.set_ylim(0, 1)
    right.xaxis.get_major_locator().set_params(integer=True)
    right.set_title("Training on the digits (SGD + momentum)")
    right.grid(True, alpha=0.3)
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def report(results, log_root, plot_path=None):
    depth = len(next(iter(results.values()))["activation_std"])
    rows = sorted({1, 2, 5, 10, 20, depth} & set(range(1, depth + 1)))
    where = f" ({plot_path})" if plot_path else ""
    print(f"\nActivation std at initialisation, by depth{where}:")
    print(f"  {'layer':>5s} " + " ".join(f"{s:>15s}" for s in results))
    for i in rows:
        print(
            f"  {i:5d} "
            + " ".join(f"{r['activation_std'][i - 1]:15.3e}" for r in results.values())
        )
    print(
        f"\nAfter training (chance is {CHANCE:.2f}); gradient norms at step 0, "
        "read back from GradientHealth's logs:"
    )
    print(
        f"  {'scheme':20s} {'val_accuracy':>12s} {'grad relu_1':>12s} "
        f"{'grad relu_' + str(depth):>13s}  {'check':7s}  GradientHealth warnings"
    )
    for scheme, r in results.items():
        accuracy = f"{r['val_accuracy']:12.3f}"
        if r["diverged_at_step"] is not None:
            accuracy = f"{'NaN@' + str(r['diverged_at_step']):>12s}"
        kinds = sorted({_warning_kind(m) for m in r["warnings"]})
        verdict = "flagged" if r["check_problems"] else "ok"
        print(
            f"  {scheme:20s} {accuracy} {r['grad_norm_first']:12.3e}"
            f" {r['grad_norm_last']:13.3e}  {verdict:7s}  {', '.join(kinds) or '-'}"
        )
    print(
        "\ncheck: keras_fanin.check(model, x) before training (one forward and "
        "backward pass);\n  what it said:"
    )
    for scheme, r in results.items():
        for problem in r["check_problems"] or ["no problem found"]:
            print(
                textwrap.fill(
                    f"{scheme}: {problem}",
                    98,
                    initial_indent="  ",
                    subsequent_indent="    ",
                )
            )
    print(f"\nTensorBoard logs: {os.path.abspath(log_root)}")
    print(f"Open them with:   tensorboard --logdir {log_root}")


def _warning_kind(message):
    # "NaN" first: that message also names exploding activations as a cause.
    for kind in ("NaN", "vanishing", "exploding", "dead", "saturated"):
        if kind in message:
            return kind
    return "other"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--schemes", nargs="+", choices=list(SCHEMES), default=list(SCHEMES)
    )
    parser.add_argument("--log-dir", default="logs/deep_relu_init")
    parser.add_argument("--plot", default="deep_relu_init.png")
    parser.add_argument(
        "--fix",
        nargs="*",
        choices=list(SCHEMES),
        metavar="SCHEME",
        help="also train these schemes after keras_fanin.fix(model, x) "
        "(none named: every one but He)",
    )
    args = parser.parse_args(argv)
    if args.fix == []:
        args.fix = [s for s in args.schemes if s != "He"]
    print(
        f"Training a {args.depth}-layer ReLU MLP on the digits with each scheme "
        f"({args.epochs} epochs):"
    )
    results = run(
        depth=args.depth,
        epochs=args.epochs,
        seed=args.seed,
        schemes=tuple(args.schemes),
        log_root=args.log_dir,
        plot_path=args.plot,
        fix=tuple(args.fix or ()),
    )
    report(results, args.log_dir, args.plot)
    return results


if __name__ == "__main__":
    main()
