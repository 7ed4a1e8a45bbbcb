"""The GRADIENT HEALTH dashboard at scale: each route's time and the page's draw.

Writes GradientHealth logs of 5 runs x 100 layers x 10,000 logged steps (five
signals a layer, as a ReLU Dense layer logs them: about 1 GB of event files,
written straight from NumPy in GradientHealth's own format in a few seconds),
starts a real `tensorboard` on 127.0.0.1 (its default loader, the Rust data
server, unless `--load_fast false`), waits until every run is loaded, then
times each data route of the plugin (first call, then the median of repeats)
and the page's draw in headless Chromium (Playwright), from navigation to the
dashboard's "drawn" mark, with the TensorBoard page around it and without.

    python benchmarks/bench_dashboard.py
    python benchmarks/bench_dashboard.py --layers 30 --steps 2000  # quicker
    python benchmarks/bench_dashboard.py --load_fast false         # Python loader
    python benchmarks/bench_dashboard.py --logdir big              # keep the logs

"First" is a run's first request, which reads its series from the data
server; later requests answer from what the plugin kept. Each first call is
made under a fresh `/experiment/<id>/` prefix (TensorBoard's experiment-id
middleware strips it; the plugin keys what it keeps by experiment), so the
same server gives first and later figures.
"""

import argparse
import gzip
import os
import pathlib
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

# EventWriter picks its file system by the Keras backend: no TensorFlow needed.
os.environ.setdefault("KERAS_BACKEND", "numpy")

import numpy as np  # noqa: E402

from keras_fanin_logs import _signals  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
# A ReLU net's signals: the names GradientHealth logs, up to the dead fraction.
SIGNALS = _signals.SIGNALS[:5]
RUNS = ("he", "lecun", "dead_layers", "exploding", "diverged")


def _profiles(run, layers, steps, rng):
    """`[steps, layers, signals]` float32 values of one made-up run."""
    depth = np.arange(layers) / max(layers - 1, 1)
    time_ = np.linspace(0, 1, steps)[:, None]
    # The first over the last layer's grad norm: 1 (He), 1e-6, 1e5.
    spread = {"lecun": -6.0, "exploding": 5.0}.get(run, 0.0)
    grad = 0.3 * 10 ** (spread * (1 - depth))[None, :] * (1 + 0.5 * time_)
    grad = grad * np.exp(0.2 * rng.standard_normal((steps, layers)))
    update = 1e-3 * np.exp(0.3 * rng.standard_normal((steps, layers)))
    weight = 8.0 + time_ + 0.1 * rng.standard_normal((steps, layers))
    std = 0.8 * np.exp(0.1 * rng.standard_normal((steps, layers)))
    dead = np.clip(0.1 + 0.05 * rng.standard_normal((steps, layers)), 0, 1)
    if run == "dead_layers":  # 20 layers die at 30% of the run
        dying = (time_ > 0.3) & (depth > 0.4) & (depth < 0.6)
        dead = np.where(dying, 0.9, dead)
        grad = np.where(dying, 0.0, grad)
    values = np.stack([grad, update, weight, std, dead], axis=-1)
    if run == "diverged":  # NaN from 90% of the run, inf in the deep half first
        values[int(0.9 * steps) :, layers // 2 :, 0] = np.inf
        values[int(0.9 * steps) + 1 :] = np.nan
    return values.astype("<f4")


def generate(root, layers=100, steps=10_000, seed=0):
    """Writes the logs under `root/<run>/gradient_health/train`; their size."""
    from keras_fanin.health._writer import EventWriter, _value_prefix, _varint

    rng = np.random.default_rng(seed)
    names = [f"dense_{i}" for i in range(1, layers + 1)]
    tags = [f"{signal}/{name}" for name in names for signal in SIGNALS]
    # One step's Summary with zeros where each float goes: the writer's own
    # per-tag bytes, so a step costs a copy and a scatter.
    template, offsets = bytearray(), []
    for tag in tags:
        template += _value_prefix(tag)
        offsets.append(len(template))
        template += b"\0\0\0\0"
    template = np.frombuffer(bytes(template), np.uint8)
    cells = (np.asarray(offsets)[:, None] + np.arange(4)).ravel()
    for run in RUNS:
        values = _profiles(run, layers, steps, rng).reshape(steps, -1)
        writer = EventWriter(os.path.join(root, run, "gradient_health", "train"))
        table = [(name, "relu", True) for name in names]
        writer.write_text(0, "layers", [(n, a, "kernel") for n, a, _ in table])
        writer.write_layer_table(0, table)
        writer.write_step(0, dict(zip(tags, values[0].tolist(), strict=True)))
        summary = template.copy()
        length = b"\x2a" + _varint(len(summary))
        for step in range(1, steps):
            summary[cells] = values[step].view(np.uint8)
            writer._writer.write(
                b"\x09"
                + struct.pack("<d", time.time())
                + b"\x10"
                + _varint(step)
                + length
                + summary.tobytes()
            )
        writer.close()
    return sum(p.stat().st_size for p in pathlib.Path(root).rglob("*"))


def _plugin_env(scratch):
    """The environment under which `tensorboard` finds this checkout's plugin
    (its setup.py's metadata first on the path unless an install declares it)."""
    import importlib.metadata

    value = "keras_fanin_logs._dashboard:GradientHealthPlugin"
    if any(
        p.value == value
        for p in importlib.metadata.entry_points(group="tensorboard_plugins")
    ):
        return dict(os.environ)
    subprocess.run(
        [sys.executable, "setup.py", "-q", "egg_info", "--egg-base", scratch],
        cwd=ROOT, check=True, capture_output=True,
    )  # fmt: skip
    path = [scratch, str(ROOT), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p)}


def _get(url):
    start = time.perf_counter()
    with urllib.request.urlopen(
        urllib.request.Request(url, headers={"Accept-Encoding": "gzip"}), timeout=60
    ) as response:
        body = response.read()
        gzipped = response.headers.get("Content-Encoding") == "gzip"
    seconds = time.perf_counter() - start
    return seconds, len(body), gzip.decompress(body) if gzipped else body


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_loaded(root, layers, steps, timeout):
    """Until every run's last layer serves its last step."""
    import json

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = 0
        for run in RUNS:
            query = urllib.parse.urlencode(
                {
                    "run": f"{run}/gradient_health/train",
                    "tag": f"grad_norm/dense_{layers}",
                }
            )
            try:
                _, _, body = _get(f"{root}/data/plugin/scalars/scalars?{query}")
                done += json.loads(body)[-1][1] == steps - 1
            except (OSError, ValueError, IndexError):
                pass
        if done == len(RUNS):
            return True
        time.sleep(2)
    return False


def _routes(root, layers, repeats):
    """`[(route, first seconds (the slowest run), later median seconds, bytes
    sent gzipped (the last run's))]`."""
    rows = []
    fresh = iter(range(10**6))
    for route, params in [
        ("runs", {}),
        ("verdicts", {}),
        ("matrix", {"signal": "grad_norm"}),
        ("matrix", {"signal": "fraction"}),
        ("layer", {"layer": f"dense_{layers // 2}"}),
    ]:
        firsts, laters, size = [], [], 0
        for run in RUNS if route != "runs" else [None]:
            query = dict(params)
            if run is not None:
                query["run"] = f"{run}/gradient_health/train"
            path = (
                f"data/plugin/gradient_health/{route}?{urllib.parse.urlencode(query)}"
            )
            first, size, _ = _get(f"{root}/experiment/cold{next(fresh)}/{path}")
            firsts.append(first)
            laters += [_get(f"{root}/{path}")[0] for _ in range(repeats)]
        label = route + (f" ({params['signal']})" if "signal" in params else "")
        rows.append((label, max(firsts), statistics.median(laters), size))
    return rows


def _page(root, chromium, repeats):
    """`{page: (first, later, iframe)}`: seconds from navigation to the
    dashboard drawn, on its own page and in TensorBoard's (where `iframe` is
    when TensorBoard's own page made the tab's iframe, a median)."""
    from playwright.sync_api import sync_playwright

    out = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True)
        for name, path in [
            ("dashboard page alone", "data/plugin_entry.html?name=gradient_health"),
            ("TensorBoard, GRADIENT HEALTH tab", "#gradient_health"),
        ]:
            times, frames = [], []
            for i in range(repeats + 1):
                # The first load under a fresh experiment: nothing kept yet.
                prefix = f"experiment/page{len(out)}/" if i == 0 else ""
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                start = time.perf_counter()
                page.goto(f"{root}/{prefix}{path}")
                frame = page
                if path.startswith("#"):
                    page.wait_for_selector('iframe[src*="gradient_health"]')
                    frames.append(time.perf_counter() - start)
                    frame = page.frame_locator('iframe[src*="gradient_health"]')
                frame.locator("body[data-drawn]").wait_for(timeout=120_000)
                times.append(time.perf_counter() - start)
                page.close()
            iframe = statistics.median(frames) if frames else None
            out[name] = (times[0], statistics.median(times[1:]), iframe)
        browser.close()
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=100)
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--load_fast", default=None, help="passed to tensorboard")
    parser.add_argument("--logdir", help="write (or reuse) the logs here")
    parser.add_argument("--timeout", type=float, default=900, help="load wait, s")
    args = parser.parse_args()
    scratch = tempfile.mkdtemp(prefix="bench_dashboard_")
    log_dir = args.logdir or os.path.join(scratch, "logs")
    try:
        if not os.path.isdir(log_dir) or not os.listdir(log_dir):
            start = time.perf_counter()
            size = generate(log_dir, args.layers, args.steps)
            print(
                f"wrote {len(RUNS)} runs x {args.layers} layers x {args.steps} "
                f"steps x {len(SIGNALS)} signals: {size / 1e9:.2f} GB in "
                f"{time.perf_counter() - start:.1f} s"
            )
        port = _free_port()
        command = [
            sys.executable, "-m", "tensorboard.main", "--logdir", log_dir,
            "--host", "127.0.0.1", "--port", str(port),
        ]  # fmt: skip
        if args.load_fast is not None:
            command += ["--load_fast", args.load_fast]
        server = subprocess.Popen(
            command,
            env=_plugin_env(scratch),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        root = f"http://127.0.0.1:{port}"
        try:
            start = time.perf_counter()
            if not _wait_loaded(root, args.layers, args.steps, args.timeout):
                sys.exit(f"tensorboard did not load the logs in {args.timeout:g} s")
            loader = "Python" if args.load_fast == "false" else "default (Rust)"
            print(
                f"tensorboard ({loader} loader) loaded them in "
                f"{time.perf_counter() - start:.0f} s"
            )
            print(f"{'route':24s} {'first':>8s} {'later':>8s} {'gzip bytes':>10s}")
            for label, first, later, size in _routes(root, args.layers, args.repeats):
                print(f"{label:24s} {first:7.3f}s {later:7.3f}s {size:10d}")
            chromium = shutil.which("chromium") or shutil.which("chromium-browser")
            if chromium is None:
                print("page draw: no Chromium (apt-get install chromium)")
                return
            for name, (first, later, iframe) in _page(
                root, chromium, args.repeats
            ).items():
                made = f" (its iframe made at {iframe:.2f} s)" if iframe else ""
                print(
                    f"page drawn, {name}: first {first:.2f} s, later {later:.2f} s"
                    + made
                )
        finally:
            server.terminate()
            server.wait(timeout=30)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
