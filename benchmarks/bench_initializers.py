"""Draws per second of each keras_fanin initializer against Keras's own counterpart.

Both sides draw the same shapes, with the same law and seed, interleaved round by
round so that machine noise hits both alike; the printed ratio is the median over
rounds of (our time / Keras's time): <= 1.02 is the target.

    python benchmarks/bench_initializers.py            # full run
    python benchmarks/bench_initializers.py --quick    # a smoke run (used by the tests)
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

import keras_fanin  # noqa: E402

PAIRS = {
    "He / HeNormal": (keras_fanin.He, keras.initializers.HeNormal),
    "He(uniform) / HeUniform": (
        lambda seed: keras_fanin.He(distribution="uniform", seed=seed),
        keras.initializers.HeUniform,
    ),
    "LeCun / LecunNormal": (keras_fanin.LeCun, keras.initializers.LecunNormal),
    "Xavier / GlorotNormal": (keras_fanin.Xavier, keras.initializers.GlorotNormal),
    "Xavier(uniform) / GlorotUniform": (
        lambda seed: keras_fanin.Xavier(distribution="uniform", seed=seed),
        keras.initializers.GlorotUniform,
    ),
    "FanScaling(normal) / VarianceScaling": (
        lambda seed: keras_fanin.FanScaling(
            mode="fan_avg", distribution="normal", seed=seed
        ),
        lambda seed: keras.initializers.VarianceScaling(
            mode="fan_avg", distribution="untruncated_normal", seed=seed
        ),
    ),
}
SHAPES = {
    "small dense (64, 64)": (64, 64),
    "small conv (3, 3, 16, 32)": (3, 3, 16, 32),
    "large dense (2048, 2048)": (2048, 2048),
    "large conv (3, 3, 256, 512)": (3, 3, 256, 512),
}


def time_calls(init, shape, calls):
    start = time.perf_counter()
    for _ in range(calls):
        keras.ops.convert_to_numpy(init(shape))
    return time.perf_counter() - start


def measure(ours, theirs, shape, rounds, seconds):
    """Median over interleaved rounds of our time / Keras's time, and our rate."""
    for init in (ours, theirs):  # warm up kernels and caches
        time_calls(init, shape, 3)
    per_call = time_calls(theirs, shape, 5) / 5
    calls = max(2, round(seconds / per_call))
    ratios, our_times = [], []
    for i in range(rounds):
        order = (ours, theirs) if i % 2 == 0 else (theirs, ours)
        times = {id(init): time_calls(init, shape, calls) for init in order}
        ratios.append(times[id(ours)] / times[id(theirs)])
        our_times.append(times[id(ours)])
    return statistics.median(ratios), calls / statistics.median(our_times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few rounds, smoke run")
    args = parser.parse_args()
    rounds, seconds = (3, 0.01) if args.quick else (21, 0.08)
    print(f"keras {keras.__version__}, backend {keras.backend.backend()}")
    print(f"{'initializer pair':38s} {'shape':28s} {'draws/s':>9s} {'ratio':>6s}")
    worst = 0.0
    for pair, (ours_factory, theirs_factory) in PAIRS.items():
        for label, shape in SHAPES.items():
            ratio, rate = measure(
                ours_factory(seed=1), theirs_factory(seed=1), shape, rounds, seconds
            )
            worst = max(worst, ratio)
            print(f"{pair:38s} {label:28s} {rate:9.0f} {ratio:6.3f}")
    print(f"worst ratio (ours / keras): {worst:.3f} (target <= 1.02)")


if __name__ == "__main__":
    main()
