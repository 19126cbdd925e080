"""Module namespaces on a worker: by-value functions of one module share one, as imported
modules do, so that what an initializer or an earlier task sets in a global, later tasks see.

cloudpickle pickles a function of `__main__` (a script, a notebook) or of a module sent by
value whole, with the current values of the globals it names, and unpickles each pickle into a
fresh dictionary of its own: an initializer's `global MODEL; MODEL = load()` would land where no
task looks. Here every such function of module M is made with the one namespace this worker
keeps for M.

The values a pickle brings for its globals enter that namespace when they are news: at the
worker's first sight of a name, and whenever the controller's own value has changed since it
last sent that name (a notebook cell that sets `THRESHOLD = 5` again is seen by the next map).
A value the worker set (an initializer's model, a cache a task filled, `everywhere`) stays
while the controller's value of that name stays the same. A module, a function or a class is
always the controller's, so that a redefined helper is used.
"""

from __future__ import annotations

import builtins
import hashlib
import io
import pickle
import re
import sys
import types
from collections.abc import Sequence
from typing import Any

import cloudpickle.cloudpickle as _cloudpickle

from batchcrew.protocol import Buffer

# cloudpickle's own reconstructors, named in every by-value function's pickle (cloudpickle's
# `_dynamic_function_reduce`): the function is made from its code and a globals dictionary,
# then its state (defaults, closure, the globals it names) is set on it.
_MAKE_FUNCTION = "_make_function"
_SET_STATE = "_function_setstate"
_MARK = re.compile(re.escape(_MAKE_FUNCTION.encode()))
_DEFINITIONS = (types.ModuleType, types.FunctionType, type)


class Namespaces:
    """The module namespaces of one worker, and the unpickling that uses them.

    `live`: use the namespaces of the modules already loaded in this process (`sys.modules`)
    and never replace a name they hold: for tasks run in the controller's own process, where
    `__main__` is the user's own script, whose functions then see its live globals.
    """

    def __init__(self, *, live: bool = False) -> None:
        self._live = live
        self._spaces: dict[str, dict[str, Any]] = {}
        self._ours: set[int] = set()  # ids of the namespaces above
        # By namespace, for each global a pickle brought a value for: the last such value's
        # fingerprint, to tell whether the controller has changed it since.
        self._marks: dict[int, dict[str, Any]] = {}

    def load(self, data: Buffer, buffers: Sequence[Buffer] = ()) -> Any:
        """Unpickle what `protocol.dump_*` made, making by-value functions in this worker's
        namespaces. Only ever call it on frames from an authenticated peer."""
        if _MARK.search(data) is None:  # no by-value function in it: the fast, plain path
            return pickle.loads(data, buffers=buffers)  # (searched in place: no copy)
        return _Unpickler(self, io.BytesIO(data), buffers=buffers).load()

    def namespace(self, module: str) -> dict[str, Any] | None:
        """The namespace kept for `module`, if a function of it was seen."""
        return self._spaces.get(module)

    def make_function(
        self,
        code: types.CodeType,
        globals: dict[str, Any],
        name: str | None,
        argdefs: tuple[Any, ...] | None,
        closure: tuple[Any, ...] | None,
    ) -> types.FunctionType:
        module = globals.get("__name__")
        if not isinstance(module, str):
            return _cloudpickle._make_function(code, globals, name, argdefs, closure)  # type: ignore[no-any-return]
        space = self._spaces.get(module)
        if space is None:
            found = sys.modules.get(module) if self._live else None
            if found is not None:
                space = vars(found)
            else:
                # `__name__`, `__file__`, `__package__` and `__path__`, as cloudpickle sends
                # them: relative imports inside the functions resolve as at home.
                space = dict(globals)
                space["__builtins__"] = builtins
            self._spaces[module] = space
            self._ours.add(id(space))
        filename = space.get("__file__")
        if isinstance(filename, str):
            code = _located(code, filename)
        return types.FunctionType(code, space, name, argdefs, closure)

    def set_state(self, function: types.FunctionType, state: tuple[Any, Any]) -> None:
        values, slots = state
        space = function.__globals__
        if id(space) in self._ours:
            slots = {**slots, "__globals__": self._taken(space, slots["__globals__"])}
        _cloudpickle._function_setstate(function, (values, slots))
        space.setdefault("__builtins__", builtins)

    def _taken(self, space: dict[str, Any], brought: dict[str, Any]) -> dict[str, Any]:
        """Which of the values a pickle brings for its globals enter `space`: a name's first
        value; a module, function or class always (the controller's definition); and a
        value the controller changed since it last sent that name. A value the worker set
        (an initializer, a task, `everywhere`) stays while the controller's stays the same."""
        if self._live:
            return {key: value for key, value in brought.items() if key not in space}
        marks = self._marks.setdefault(id(space), {})
        taken: dict[str, Any] = {}
        for key, value in brought.items():
            if isinstance(value, _DEFINITIONS):
                taken[key] = value
                continue
            mark = _fingerprint(value)
            if key not in space or marks.get(key, _UNSEEN) != mark:
                taken[key] = value
                marks[key] = mark
        return taken


def _fingerprint(value: Any) -> Any:
    """What tells two values the controller sent apart: a small plain value itself, else a
    digest of its pickle (so that a large global is not held twice); a value that does not
    pickle here is never the same as another."""
    if type(value) in _SMALL and (not isinstance(value, str | bytes) or len(value) <= 256):
        return (type(value), value)
    digest = hashlib.blake2b(digest_size=16)

    def take(buffer: pickle.PickleBuffer) -> None:
        digest.update(buffer.raw())

    try:
        data = pickle.dumps(value, protocol=5, buffer_callback=take)
    except Exception:
        try:
            data = _cloudpickle.dumps(value, protocol=5, buffer_callback=take)
        except Exception:
            return object()
    digest.update(data)
    return digest.digest()


_SMALL = (type(None), bool, int, float, complex, str, bytes)
_UNSEEN = object()


def _located(code: types.CodeType, filename: str) -> types.CodeType:
    """`code`, and the code nested in it, named after the file it was defined in.

    cloudpickle sends by-value code as "<dynamic-code>" (so that its pickle does not depend
    on where it was made); the module's `__file__` travels with it, and naming it again makes
    tracebacks and pdb point at the user's own file and lines.
    """
    if code.co_filename != _DYNAMIC:
        return code
    consts = tuple(
        _located(const, filename) if isinstance(const, types.CodeType) else const
        for const in code.co_consts
    )
    return code.replace(co_filename=filename, co_consts=consts)


_DYNAMIC = "<dynamic-code>"  # cloudpickle's co_filename for by-value code (`_code_reduce`)


class _Unpickler(pickle.Unpickler):
    def __init__(self, namespaces: Namespaces, file: io.BytesIO, buffers: Sequence[Buffer]):
        super().__init__(file, buffers=buffers)
        self._namespaces = namespaces

    def find_class(self, module: str, name: str) -> Any:
        if module == _cloudpickle.__name__:
            if name == _MAKE_FUNCTION:
                return self._namespaces.make_function
            if name == _SET_STATE:
                return self._namespaces.set_state
        return super().find_class(module, name)
