"""``sparsegat.warmup`` and the one-line notice when kernels compile (instead of a silent pause)."""

from __future__ import annotations

import logging

import pytest

import sparsegat as sg

numba = pytest.importorskip("numba")
from sparsegat.backends.numba import compile_notice  # noqa: E402


def _jitted_in(module: str):
    """A fresh (uncached) Numba function whose ``__module__`` is ``module``."""
    namespace = {"__name__": module}
    exec("def twice(x):\n    return 2 * x\n", namespace)
    return numba.njit(namespace["twice"])


def test_a_compile_of_our_kernels_is_announced_once_per_label(caplog):
    ours = _jitted_in("sparsegat.backends.numba.probe")
    theirs = _jitted_in("someone_else")
    label = "float64/a-test-label"
    with caplog.at_level(logging.WARNING, logger="sparsegat"):
        with compile_notice.working_on(label):
            ours(1.0)       # compiles: announced
            ours(1)         # another signature, same label: not again
            ours(2.0)       # no compile at all
        with compile_notice.working_on("float64/another-label"):
            theirs(1.0)     # not ours: nothing
    notices = [r.getMessage() for r in caplog.records if "compiling Numba kernels" in r.getMessage()]
    assert notices == [f"sparsegat: compiling Numba kernels for {label}, cached for later runs "
                       f"(sparsegat.warmup() compiles them ahead of time)"]
    assert label in compile_notice.said() and "float64/another-label" not in compile_notice.said()


def test_warmup_prepares_the_asked_kernels_and_then_they_are_ready():
    times = sg.warmup(scores=["dot"], dtypes=["float64"], layers=False)
    assert list(times) == ["float64/dot"] and times["float64/dot"] >= 0
    from sparsegat.backends.numba.forward import forward_kernel

    assert forward_kernel("dot").signatures  # compiled or loaded: no compile left for a first call


def test_warmup_refuses_bad_arguments():
    with pytest.raises(ValueError, match="unknown score 'dott'"):
        sg.warmup(scores=["dott"])
    with pytest.raises(ValueError, match="float32 and float64, got float16"):
        sg.warmup(dtypes=["float16"])
    with pytest.raises(ValueError, match="backend must be 'numba' or 'cupy'"):
        sg.warmup(backend="numpy")
