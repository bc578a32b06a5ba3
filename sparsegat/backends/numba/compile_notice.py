"""One line on stderr when this package's kernels are compiled, instead of a silent pause.

A kernel's first call in a process either loads its machine code from Numba's on-disk
cache (``cache=True``: a fraction of a second) or, on a new machine or after an
upgrade, compiles it (several seconds per score and dtype). Numba announces only real
compilations, through its ``"numba:compile"`` event (cache hits raise none), so a
listener on that event says exactly when the pause is a compile, once per kind of work
(:func:`working_on`) and process, through the ``sparsegat`` logger (WARNING, so that
Python's last-resort handler prints it on stderr when the application has configured
no logging; ``logging.getLogger("sparsegat").setLevel(logging.ERROR)`` silences it).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
from typing import Any, Iterator

from numba.core import event

#: The logger the notice goes to.
LOG = logging.getLogger("sparsegat")
#: What the kernels being called are for (a label such as "float32/additive").
_WORK: contextvars.ContextVar[str | None] = contextvars.ContextVar("sparsegat_numba_work", default=None)
_SAID: set[str] = set()
_LOCK = threading.Lock()
_PACKAGE = __name__.rsplit(".", 1)[0] + "."


class _CompileNotice(event.Listener):
    """Logs the first compilation of one of this package's kernels per label."""

    def on_start(self, ev: Any) -> None:
        dispatcher = ev.data.get("dispatcher") if isinstance(ev.data, dict) else None
        module = getattr(getattr(dispatcher, "py_func", None), "__module__", "") or ""
        if not module.startswith(_PACKAGE):
            return  # another library's Numba code
        label = _WORK.get() or "the layers"
        with _LOCK:
            if label in _SAID:
                return
            _SAID.add(label)
        LOG.warning("sparsegat: compiling Numba kernels for %s, cached for later runs "
                    "(sparsegat.warmup() compiles them ahead of time)", label)

    def on_end(self, ev: Any) -> None:
        pass


_LISTENER = _CompileNotice()
event.register("numba:compile", _LISTENER)


@contextlib.contextmanager
def working_on(label: str) -> Iterator[None]:
    """Name the work of the kernels called inside the block, for the notice."""
    token = _WORK.set(label)
    try:
        yield
    finally:
        _WORK.reset(token)


def said() -> frozenset[str]:
    """The labels announced so far in this process (for tests)."""
    with _LOCK:
        return frozenset(_SAID)
