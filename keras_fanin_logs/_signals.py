"""The names GradientHealth logs under: one home for the writer and the readers."""

# `<log_dir>/gradient_health/<run>`: the training steps and the probe.
RUN_NAME = "gradient_health"
RUNS = ("train", "probe")

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
