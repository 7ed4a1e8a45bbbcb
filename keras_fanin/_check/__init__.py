"""`check`: is a model initialised right? One forward and backward pass, pre-training.

For every layer with kernels (dense, convolution, depthwise, separable,
recurrent, embedding, attention: every weight `_fans.layer_kernels` knows a
fan rule for) it compares the std each initializer draws with the std the
fan rule and the activation's gain recommend (`_fans`, `_gains`: the homes
the initializers use), and measures the signal by depth. Verdicts need both
the prediction and the measurement to agree, so that a heuristic gain (tanh's
5/3, SELU's 3/4) never raises a false alarm on its own; only a signal that
all but vanishes (or explodes) is a problem by measurement alone.

The pass wraps each leaf layer's `call` (and a kernel layer's own
`activation`, to see the pre-activation) for its duration; which layer feeds
which is read off the identity of the tensors passed between them, so it works
for Sequential, Functional and subclassed models on every backend. Layers a
user builds from other layers (a Transformer block) are looked into; Keras's
own (`MultiHeadAttention`, `LSTM`, `Bidirectional`) are judged whole, each
kernel with its place on the layer's signal.

Measuring (`_measure`, `_graph`, `_inputs`), judging (`_judge`) and the
report (`_records`) each have their own module; `_check` puts them together,
and `_fix` re-draws what the verdicts advise.
"""

from keras_fanin._check._check import check
from keras_fanin._check._cli import cli_main, fix_main
from keras_fanin._check._fix import fix
from keras_fanin._check._records import CheckReport, KernelRecord, LayerRecord

__all__ = [
    "CheckReport",
    "KernelRecord",
    "LayerRecord",
    "check",
    "cli_main",
    "fix",
    "fix_main",
]
