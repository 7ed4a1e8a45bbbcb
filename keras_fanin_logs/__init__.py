"""keras_fanin_logs: GradientHealth's logs read back, without keras or TensorFlow.

The readers of what `keras_fanin.GradientHealth` writes live here, apart from
`keras_fanin` itself, because `import keras_fanin` must import keras (its
initializers register with Keras's serialization when the package loads, and
Keras only auto-imports its own packages). `keras-fanin report` and the
TensorBoard dashboard import this package alone, so they start in a fraction
of a second and never load a backend. The thresholds and verdicts
(`keras_fanin_logs.judge`) are shared with the callback's advice and `check`.

Use `keras_fanin.report`, which is `keras_fanin_logs.report`.
"""

from keras_fanin_logs._report import LayerReport, Report, RunReport, report

__all__ = ["LayerReport", "Report", "RunReport", "report"]
