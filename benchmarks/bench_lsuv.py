"""Time of `keras_fanin.lsuv` against a naive LSUV that re-runs the model per step.

The naive LSUV is what the old Keras LSUV scripts do: for each layer, for each
iteration, run the whole model on the batch and read that layer's output. It
costs about `depth * (1 + iterations)` forward passes; `lsuv` does one pass
with each kernel layer's call wrapped, calling a layer again only on its own
input. Both start from the same orthonormal kernels, rescale the same
pre-activations, and stop at the same `tol` and `max_iter`.

MLPs of `depth` Dense(width) + tanh layers, a batch of `batch` standard-normal
rows, interleaved repeats, best time of each. The table also gives each time in
forward passes of the model (`model(x)` in inference mode), and lsuv's time
without the orthonormal draws (a normal matrix and its QR per layer), which
any LSUV pays and which, at batch 256, weighs more than a forward pass.

    python benchmarks/bench_lsuv.py                    # depths 10, 30, 100
    python benchmarks/bench_lsuv.py --depths 10 --repeats 1
"""

import argparse
import math
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_fanin._lsuv import lsuv  # noqa: E402
from keras_fanin._orthogonal import Orthogonal  # noqa: E402


def mlp(depth, width):
    layers = [keras.Input((width,))]
    for _ in range(depth):
        # Dense without activation, so that `layer.output` is the pre-activation
        # the naive LSUV reads.
        layers += [keras.layers.Dense(width), keras.layers.Activation("tanh")]
    return keras.Sequential(layers)


def naive_lsuv(model, x, tol=0.1, max_iter=10, seed=0):
    """LSUV re-running the whole model for every variance it measures."""
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    outputs = keras.Model(model.inputs[0], [layer.output for layer in dense])
    rng = np.random.default_rng(seed)
    iterations = []
    for i, layer in enumerate(dense):
        shape = tuple(layer.kernel.shape)
        unit = Orthogonal(seed=int(rng.integers(1, 2**31 - 1)))(shape)
        layer.kernel.assign(unit)
        gain, steps = 1.0, 0
        while True:
            out = outputs(x, training=False)[i]
            variance = float(keras.ops.convert_to_numpy(keras.ops.var(out)))
            if abs(variance - 1.0) < tol or steps == max_iter:
                break
            gain /= math.sqrt(variance)
            layer.kernel.assign(gain * unit)
            steps += 1
        iterations.append(steps)
    return iterations


def draw_time(model, seed=0):
    """The orthonormal draws alone (normal + QR per layer): LSUV's fixed cost."""
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    for layer in model.layers:
        if isinstance(layer, keras.layers.Dense):
            init = Orthogonal(seed=int(rng.integers(1, 2**31 - 1)))
            keras.ops.convert_to_numpy(init(tuple(layer.kernel.shape)))
    return time.perf_counter() - start


def forward_time(model, x, calls=5):
    model(x, training=False)  # warm up
    start = time.perf_counter()
    for _ in range(calls):
        keras.ops.convert_to_numpy(model(x, training=False))
    return (time.perf_counter() - start) / calls


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", type=int, nargs="+", default=[10, 30, 100])
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    x = np.random.default_rng(0).standard_normal((args.batch, args.width))
    x = x.astype("float32")
    print(
        f"backend {keras.backend.backend()}, width {args.width}, batch {args.batch}, "
        f"best of {args.repeats}"
    )
    header = (
        f"{'depth':>5} {'forward ms':>10} {'draws ms':>9} {'lsuv ms':>9} "
        f"{'(passes)':>8} {'(w/o draws)':>11} {'naive ms':>10} {'(passes)':>9} "
        f"{'naive/lsuv':>10} {'iters/layer':>11}"
    )
    print(header)
    print("-" * len(header))
    for depth in args.depths:
        keras.utils.set_random_seed(0)
        model = mlp(depth, args.width)
        lsuv(model, x, seed=0)  # warm up both paths (tracing, kernels)
        naive_lsuv(model, x, seed=0)
        ours, theirs, draws = math.inf, math.inf, math.inf
        for _ in range(args.repeats):
            draws = min(draws, draw_time(model))
            start = time.perf_counter()
            report = lsuv(model, x, seed=0)
            ours = min(ours, time.perf_counter() - start)
            start = time.perf_counter()
            iterations = naive_lsuv(model, x, seed=0)
            theirs = min(theirs, time.perf_counter() - start)
        assert [r.iterations for r in report] == iterations
        forward = forward_time(model, x)
        print(
            f"{depth:>5} {forward * 1e3:>10.1f} {draws * 1e3:>9.1f} "
            f"{ours * 1e3:>9.1f} {ours / forward:>8.1f} "
            f"{(ours - draws) / forward:>11.1f} {theirs * 1e3:>10.1f} "
            f"{theirs / forward:>9.1f} {theirs / ours:>10.1f} "
            f"{np.mean(iterations):>11.2f}"
        )


if __name__ == "__main__":
    main()
