"""Instance attributes set for a while and put back exactly as they were.

GradientHealth's step hooks, its probe, `check` and `lsuv` all wrap methods
of live objects (a layer's `call`, `model.train_step`, an optimizer's apply)
through public attribute assignment; this is the one place that does it.

Several wrappers may stack on one attribute (two GradientHealth callbacks in
one `fit()`), and they may be taken off in any order: each attribute keeps
its chain of wrappers, and one taken off from the middle is spliced out, so
that when the last goes the attribute is what it was before the first.
"""

from typing import Any

_MISSING = object()
# (id(obj), name) -> the live patches of that attribute, oldest first.
_chains: dict[tuple[int, str], list["_Patch"]] = {}


class _Patch:
    __slots__ = ("obj", "name", "saved", "value")

    def __init__(self, obj: Any, name: str, saved: Any, value: Any) -> None:
        self.obj, self.name, self.saved, self.value = obj, name, saved, value


def _put(obj: Any, name: str, value: Any) -> None:
    # object.__setattr__: a Keras layer's own __setattr__ would track it.
    if value is _MISSING:
        if name in vars(obj):
            object.__delattr__(obj, name)
    else:
        object.__setattr__(obj, name, value)


class Patches:
    """Sets attributes on instances and restores them, newest first.

    An attribute the instance did not have itself (a method of its class) is
    deleted again, so the class's own comes back; one it had is put back.
    """

    def __init__(self) -> None:
        self._saved: list[_Patch] = []

    def set(self, obj: Any, name: str, value: Any) -> None:
        patch = _Patch(obj, name, vars(obj).get(name, _MISSING), value)
        self._saved.append(patch)
        _chains.setdefault((id(obj), name), []).append(patch)
        _put(obj, name, value)

    def restore(self) -> None:
        for patch in reversed(self._saved):
            _restore(patch)
        self._saved.clear()

    def __bool__(self) -> bool:
        return bool(self._saved)


def _restore(patch: _Patch) -> None:
    key = (id(patch.obj), patch.name)
    chain = _chains.get(key, [])
    if patch not in chain:
        return
    at = chain.index(patch)
    if at + 1 < len(chain):
        # A newer wrapper sits on this one: it gets what this one replaced.
        chain[at + 1].saved = patch.saved
    elif vars(patch.obj).get(patch.name, _MISSING) is patch.value:
        _put(patch.obj, patch.name, patch.saved)
    # else: something else replaced the attribute since; it is left alone.
    del chain[at]
    if not chain:
        del _chains[key]
