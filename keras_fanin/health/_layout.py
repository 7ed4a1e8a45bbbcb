"""Where each statistic lives in the on-device buffer, and its TensorBoard tag.

A buffer row holds one logged step: a fixed number of columns per unit (every
signal a layer could have; those it does not have stay NaN and are never
written out) and a few for the whole model. The layout is fixed before the
train function is traced, so the buffer can be allocated before any model is
built; the columns actually written are recorded while tracing.
"""

from keras_fanin_logs._signals import GLOBAL_GRAD_NORM, HISTOGRAMS, SIGNALS

# Per-unit codes of `nonfinite_code`: read by the advice, not logged.
NONFINITE = ("grad_bad", "weight_bad", "activation_bad")
UNIT_COLUMNS = SIGNALS + NONFINITE
# Model-wide signals, logged under their own name.
GLOBALS = (GLOBAL_GRAD_NORM, "clip/global_grad_norm", "clip/factor")


class Layout:
    """Maps (unit index, signal) and model-wide signals to buffer columns."""

    def __init__(self, units):
        self.units = list(units)
        self.width = len(self.units) * len(UNIT_COLUMNS) + len(GLOBALS)
        self.written = set()  # columns some trace writes
        self.hist_written = set()  # units whose histograms some trace writes

    def column(self, unit_index, signal):
        return unit_index * len(UNIT_COLUMNS) + UNIT_COLUMNS.index(signal)

    def signal_of(self, column):
        """The signal a per-unit column holds (None for a model-wide one)."""
        if column >= len(self.units) * len(UNIT_COLUMNS):
            return None
        return UNIT_COLUMNS[column % len(UNIT_COLUMNS)]

    def global_column(self, signal):
        return len(self.units) * len(UNIT_COLUMNS) + GLOBALS.index(signal)

    def tags(self):
        """`[(column, tag)]` of every written, logged column, in a stable order."""
        out = []
        for unit in self.units:
            for signal in SIGNALS:
                col = self.column(unit.index, signal)
                if col in self.written:
                    out.append((col, f"{signal}/{unit.name}"))
        for signal in GLOBALS:
            col = self.global_column(signal)
            if col in self.written:
                out.append((col, signal))
        return out

    def hist_tags(self):
        """`[(unit index, position, tag)]` of every written histogram: the
        unit's row and the signal's position in the histogram buffer."""
        return [
            (unit.index, k, f"{signal}/{unit.name}")
            for unit in self.units
            if unit.index in self.hist_written
            for k, signal in enumerate(HISTOGRAMS)
        ]

    def codes(self, row):
        """`{kind: {unit name: code}}` of the non-finite codes in one row."""
        kinds = {"grad_bad": "gradients", "weight_bad": "weights",
                 "activation_bad": "activations"}  # fmt: skip
        out = {kind: {} for kind in kinds.values()}
        for unit in self.units:
            for column, kind in kinds.items():
                col = self.column(unit.index, column)
                if col in self.written and row[col] == row[col] and row[col] > 0:
                    out[kind][unit.name] = int(row[col])
        return out
