"""The KerasTuner trial a `fit()` runs for, so that each gets its own run.

KerasTuner gives Keras's `TensorBoard` callback the directory
`<log_dir>/<trial_id>/execution<k>` by patching `log_dir` on callbacks whose
class is named `TensorBoard`; GradientHealth writes to the same place. The
trial is read off the tuner's `run_trial` frame (its `trial` and `execution`
locals), found on the Python stack under `fit()`.
"""

import inspect
import sys


def tuner_trial():
    """`(trial_id, execution)` when a KerasTuner tuner runs this `fit()`."""
    if "keras_tuner" not in sys.modules:
        return None
    tuner_class = getattr(sys.modules["keras_tuner"], "Tuner", None)
    if tuner_class is None:
        return None
    trial, execution = None, 0
    frame = inspect.currentframe()
    try:
        while frame is not None:
            if isinstance(frame.f_locals.get("self"), tuner_class):
                found = frame.f_locals.get("trial")
                if trial is None and hasattr(found, "trial_id"):
                    trial = found
                if isinstance(frame.f_locals.get("execution"), int):
                    execution = frame.f_locals["execution"]
            frame = frame.f_back
    finally:
        del frame
    if trial is None:
        return None
    return str(trial.trial_id), execution
