"""The names GradientHealth logs under: one home for the writer and the readers."""

import json

# `<log_dir>/gradient_health/<run>`: the training steps and the probe.
RUN_NAME = "gradient_health"
RUNS = ("train", "probe")

# The dashboard's summary: the layer table as JSON, once per event file, beside
# the `layers` text. TensorBoard lists a log dir's data by plugin name, so the
# dashboard's tab is active exactly where GradientHealth wrote.
PLUGIN_NAME = "gradient_health"
LAYERS_TAG = "gradient_health/layers"

# Signals logged as `<signal>/<layer>`, in chart order.
SIGNALS = (
    "grad_norm",
    "update_ratio",
    "weight_norm",
    "activation_std",
    "dead_relu_fraction",
    "saturated_sigmoid_fraction",
    "saturated_tanh_fraction",
)
# The per-layer fractions: dead ReLUs, then saturated sigmoid and tanh outputs.
FRACTIONS = SIGNALS[4:]
# The model-wide gradient norm, logged at every logged step under this tag.
GLOBAL_GRAD_NORM = "global_grad_norm"
# Per-layer histograms (`GradientHealth(histograms=...)`), as `<signal>/<layer>`:
# the gradient, the weights after the step and the update.
HISTOGRAMS = ("grad_hist", "weight_hist", "update_hist")


def encode_layers(rows) -> bytes:
    """The `LAYERS_TAG` payload of `[(name, activation or "", has_kernel), ...]`."""
    table = [[str(n), str(a or ""), bool(k)] for n, a, k in rows]
    return json.dumps({"version": 1, "layers": table}).encode()


def decode_layers(data) -> list:
    """`[(name, activation or None, has_kernel), ...]` from an `encode_layers`
    payload; `[]` from one it cannot read."""
    try:
        table = json.loads(data)
        return [(str(n), a or None, bool(k)) for n, a, k in table["layers"]]
    except (ValueError, TypeError, KeyError):
        return []
