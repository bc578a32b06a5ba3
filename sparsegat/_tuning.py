"""Process tuning for the ``sparsegat train`` command: OpenMP waiting, BLAS threads, malloc.

A library must not change its host process's thread pools or allocator for good,
so :func:`tune_process` is called only by the command line
(:func:`sparsegat.train.main`), which owns its process. The library does the part
that concerns its own threads by itself: the numba backend applies
:func:`quiet_openmp_workers` when it loads before Numba has started OpenMP (see
:mod:`sparsegat.backends.numba.threads`), and the layers limit BLAS to one thread
around small products only (:mod:`sparsegat.blas_threads`). Each setting was
measured to matter for a GAT on a graph the size of Cora (see ``docs/numba.md``);
each is a small function that does one thing and says whether it could, and
:func:`tune_process` applies them all in the right order.

BLAS threads are limited through ``threadpoolctl`` (installed with the ``numba``
extra). Without it, :func:`limit_blas_threads` changes nothing and
:func:`tune_process` returns a note saying so.
"""

from __future__ import annotations

import ctypes
import os
import sys
from dataclasses import dataclass
from typing import MutableMapping

__all__ = ["Tuning", "tune_process", "quiet_openmp_workers", "limit_blas_threads", "keep_freed_memory",
           "set_numba_threads"]

#: libgomp's spin count before an idle worker sleeps when OMP_WAIT_POLICY=PASSIVE is set by us.
GOMP_SPINCOUNT = "30000"

#: The note returned when BLAS threads were asked for but threadpoolctl is not installed.
NO_THREADPOOLCTL = ("BLAS threads left as they are: threadpoolctl is not installed "
                    "(pip install threadpoolctl, or the 'numba' extra)")


@dataclass(frozen=True)
class Tuning:
    """What :func:`tune_process` changed.

    Attributes
    ----------
    openmp_passive : bool
        ``OMP_WAIT_POLICY=PASSIVE`` (and ``GOMP_SPINCOUNT``) were set.
    blas_threads : int or None
        The BLAS thread limit applied, or None when nothing was limited.
    malloc_tuned : bool
        glibc's malloc accepted the thresholds of :func:`keep_freed_memory`.
    notes : tuple of str
        Why a requested setting could not be applied (for the user).
    """

    openmp_passive: bool
    blas_threads: int | None
    malloc_tuned: bool
    notes: tuple[str, ...] = ()


def quiet_openmp_workers(environ: MutableMapping[str, str] | None = None) -> bool:
    """Make idle OpenMP workers sleep soon instead of spinning; True when it set anything.

    Must run before any parallel kernel starts OpenMP (numba's default threading
    layer), which reads the environment once. Spinning workers wait out a busy
    core at every barrier; on a loaded machine with few cores libgomp's default
    spin (about 3 ms) made Cora's 300 epochs 5x slower. ``GOMP_SPINCOUNT=30000``
    (~0.3 ms) still lets a worker catch the next kernel of the same epoch: a
    sleeping worker takes ~50 us to wake, a spinning one ~2 us, and an epoch
    starts a dozen parallel kernels with gaps shorter than that. Settings the
    user made win: nothing changes when ``OMP_WAIT_POLICY`` is already set.
    """
    env = os.environ if environ is None else environ
    if "OMP_WAIT_POLICY" in env:
        return False
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    env.setdefault("GOMP_SPINCOUNT", GOMP_SPINCOUNT)
    return True


def limit_blas_threads(n: int = 1) -> bool:
    """Limit the BLAS libraries loaded in this process to ``n`` threads; True when one was told.

    The dense products of a GAT on a graph like Cora are tiny (thousands x 64);
    BLAS worker threads gain nothing on them but spin between calls and compete
    with the attention kernels' own threads, and on a busy machine a descheduled
    worker turns a 40 us product into milliseconds. Uses ``threadpoolctl``
    (the limit stays for the rest of the process); returns False, changing
    nothing, when it is not installed or finds no BLAS.
    """
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return False
    blas = ThreadpoolController().select(user_api="blas")
    if not blas.lib_controllers:
        return False
    blas.limit(limits=int(n))
    return True


def keep_freed_memory() -> bool:
    """Let glibc's malloc keep freed memory for reuse; True when it could be told.

    Every epoch allocates and frees the same few dozen arrays of 100 KB to 1 MB.
    With glibc's defaults, blocks that size come from fresh ``mmap`` pages (or
    the heap top is trimmed back to the OS) and every use starts with page
    faults: about 15% of an epoch on Cora. Raising the mmap and trim thresholds
    makes freed blocks get reused. Elsewhere than glibc on Linux, a no-op
    returning False.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the interpreter runs on
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    return all(mallopt(ctypes.c_int(opt), ctypes.c_int(value)) == 1
               for opt, value in ((m_mmap_threshold, 32 << 20), (m_trim_threshold, 256 << 20),
                                  (m_top_pad, 16 << 20)))


def set_numba_threads(n: int) -> None:
    """Run numba's parallel kernels on ``n`` threads (ValueError above ``NUMBA_NUM_THREADS``)."""
    import numba

    if n > numba.config.NUMBA_NUM_THREADS:
        raise ValueError(f"--threads {n} exceeds numba's maximum of {numba.config.NUMBA_NUM_THREADS} "
                         f"(NUMBA_NUM_THREADS)")
    numba.set_num_threads(n)


def tune_process(blas_threads: int = 1) -> Tuning:
    """Apply every setting, in order: OpenMP waiting, BLAS threads (0: leave alone), malloc.

    Call it first thing in a process that owns its host (a command-line run),
    before any parallel kernel has started.
    """
    passive = quiet_openmp_workers()
    notes: list[str] = []
    limited = None
    if blas_threads:
        if limit_blas_threads(blas_threads):
            limited = int(blas_threads)
        elif not _has_threadpoolctl():
            notes.append(NO_THREADPOOLCTL)
    return Tuning(passive, limited, keep_freed_memory(), tuple(notes))


def _has_threadpoolctl() -> bool:
    import importlib.util

    return importlib.util.find_spec("threadpoolctl") is not None
