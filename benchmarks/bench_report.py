"""Time of `keras-fanin report LOGDIR` from process start, and of its import.

Writes GradientHealth logs of a 9-layer MLP (every step logged, and a probe),
then runs the `keras-fanin report` command in fresh processes and prints the
median wall time from process start to exit, next to a bare `python -c pass`
(the interpreter's own start-up) and `python -c "import tensorflow"` (what
the command cost when it read through TensorBoard's TF-importing loader).

    python benchmarks/bench_report.py
    python benchmarks/bench_report.py --epochs 50 --repeats 9
"""

import argparse
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def write_logs(log_dir, epochs):
    import keras
    import numpy as np

    import keras_fanin

    rng = np.random.default_rng(0)
    x = rng.normal(size=(512, 32)).astype("float32")
    y = (x[:, :1] > 0).astype("float32")
    model = keras.Sequential(
        [keras.Input((32,))]
        + [keras.layers.Dense(64, activation="relu") for _ in range(8)]
        + [keras.layers.Dense(1, activation="sigmoid")]
    )
    model.compile("sgd", "binary_crossentropy")
    health = keras_fanin.GradientHealth(
        log_dir, (x[:64], y[:64]), every_n_steps=1, probe_every_n_steps=10
    )
    model.fit(x, y, batch_size=32, epochs=epochs, verbose=0, callbacks=[health])


def wall(command, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as log_dir:
        write_logs(log_dir, args.epochs)
        script = pathlib.Path(sys.executable).with_name("keras-fanin")
        report = [str(script)] if script.exists() else [
            sys.executable, "-m", "keras_fanin_logs"]  # fmt: skip
        size = sum(p.stat().st_size for p in pathlib.Path(log_dir).rglob("*"))
        rows = (
            ("python -c pass", [sys.executable, "-c", "pass"]),
            ("keras-fanin report", [*report, "report", log_dir]),
            ("keras-fanin report --json", [*report, "report", log_dir, "--json"]),
            ("python -c 'import tensorflow'",
             [sys.executable, "-c", "import tensorflow"]),
        )  # fmt: skip
        print(
            f"9-layer MLP, {args.epochs} epochs x 16 steps, every step logged: "
            f"{size / 1e3:.0f} kB of event files; median of {args.repeats}"
        )
        for name, command in rows:
            print(f"  {name:32s} {wall(command, args.repeats):6.2f} s")


if __name__ == "__main__":
    main()
