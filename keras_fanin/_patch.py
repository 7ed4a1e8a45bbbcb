"""Instance attributes set for a while and put back exactly as they were.

GradientHealth's step hooks, its probe, `check` and `lsuv` all wrap methods
of live objects (a layer's `call`, `model.train_step`, an optimizer's apply)
through public attribute assignment; this is the one place that does it.
"""

_MISSING = object()


class Patches:
    """Sets attributes on instances and restores them, newest first.

    An attribute the instance did not have itself (a method of its class) is
    deleted again, so the class's own comes back; one it had is put back.
    """

    def __init__(self):
        self._saved = []

    def set(self, obj, name, value):
        self._saved.append((obj, name, vars(obj).get(name, _MISSING)))
        # object.__setattr__: a Keras layer's own __setattr__ would track it.
        object.__setattr__(obj, name, value)

    def restore(self):
        for obj, name, old in reversed(self._saved):
            if old is _MISSING:
                object.__delattr__(obj, name)
            else:
                object.__setattr__(obj, name, old)
        self._saved.clear()

    def __bool__(self):
        return bool(self._saved)
