"""A short tour of keras_fanin's initializers (the README's first command).

Prints each initializer's promised std next to the std of a real draw, then
pushes random inputs through a 30-layer ReLU stack to show the lecture's point:
with He the activations keep their scale; with LeCun's 1/n they halve at every
layer; with a gain of 1.5 on He they grow as 1.5^L.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_fanin  # noqa: E402

SHAPE = (512, 512)
DEPTH = 30


def main():
    keras.utils.set_random_seed(0)
    print(f"Draws of shape {SHAPE} (fan_in = fan_out = {SHAPE[0]}):")
    print(f"  {'initializer':68s} {'promised std':>12s} {'measured':>9s}")
    for init in [
        keras_fanin.He(),
        keras_fanin.He(negative_slope=0.2, distribution="uniform"),
        keras_fanin.LeCun(gain=keras_fanin.calculate_gain("tanh")),
        keras_fanin.Xavier(distribution="normal"),
        keras_fanin.FanScaling(gain=2.0, mode="fan_out"),
    ]:
        values = keras.ops.convert_to_numpy(init(SHAPE))
        label = repr(init).split(", seed")[0] + ")"
        print(f"  {label:68s} {init.stddev(SHAPE):12.5f} {np.std(values):9.5f}")

    print(f"\nActivation std through {DEPTH} ReLU layers of width {SHAPE[0]}:")
    x = np.random.default_rng(0).normal(size=(256, SHAPE[0])).astype("float32")
    # A SeedGenerator advances, so every layer gets its own draw (an int seed
    # would give all 30 layers the same matrix).
    schemes = {
        "He": keras_fanin.He(seed=keras.random.SeedGenerator(1)),
        "LeCun (1/n)": keras_fanin.LeCun(seed=keras.random.SeedGenerator(1)),
        "He, gain 1.5": keras_fanin.He(gain=1.5, seed=keras.random.SeedGenerator(1)),
    }
    print(f"  {'layer':>5s} " + " ".join(f"{name:>14s}" for name in schemes))
    acts = {name: x for name in schemes}
    for depth in range(1, DEPTH + 1):
        for name, init in schemes.items():
            layer = keras.layers.Dense(
                SHAPE[0], activation="relu", kernel_initializer=init
            )
            acts[name] = keras.ops.convert_to_numpy(layer(acts[name]))
        if depth in (1, 5, 10, 20, 30):
            row = " ".join(f"{np.std(acts[n]):14.3e}" for n in schemes)
            print(f"  {depth:5d} {row}")
    print(
        "\nHe keeps the scale; 1/n shrinks it by ~sqrt(2) per layer; gain 1.5 grows it."
    )


if __name__ == "__main__":
    main()
