"""How the kernels use the threads: one thread for small work, dynamic chunks for large.

A parallel kernel wakes Numba's workers and ends at a barrier. On a quiet machine that
costs microseconds; on a busy one (another process on the cores, or BLAS threads still
spinning) a worker that is not running holds every barrier up for a scheduler time
slice, and small kernels became 20-50x slower. So:

- work below :data:`SERIAL_WORK` (several milliseconds on one core) runs on the calling
  thread alone (``numba.set_num_threads(1)`` for the call: no wake-up, no barrier),
  as PyTorch does below its grain size;
- larger work hands the row chunks out dynamically (``numba.parallel_chunksize``), so a
  descheduled worker delays one chunk, not a fixed half of the rows.

Neither changes results: rows are split into the same chunks either way, and every
per-chunk partial is reduced in chunk order (see :mod:`.partition`).

And idle workers should not spin long: libgomp's default (about 3 ms of spinning after
every kernel) takes the cores from whatever runs next (BLAS, XLA, the rest of a training
step). :func:`quiet_workers_before_start` gives OpenMP the ``sparsegat train`` settings
(``OMP_WAIT_POLICY=PASSIVE``, ``GOMP_SPINCOUNT`` about 0.3 ms) when this backend is
loaded before Numba has started its threading layer and the user has set neither, so a
library user gets the command line's behaviour without environment variables.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import numba
from numba.np.ufunc import parallel as _numba_parallel

from ..._tuning import quiet_openmp_workers

#: Work (edges x heads x features, about one multiply-add each) below which a call runs on one
#: thread: about 7 ms forward on the 2-core VM, where a second thread paid only above this
#: (docs/performance.md, bench/kernel_threads.py).
SERIAL_WORK = 1 << 24
#: Row chunks (:mod:`.partition`) a thread takes at a time when chunks are handed out dynamically.
CHUNKS_PER_GRAB = 2


@contextlib.contextmanager
def threads_for(work: int) -> Iterator[None]:
    """Run the kernels called inside the block on the threads that ``work`` is worth."""
    threads = numba.get_num_threads()
    if threads == 1:
        yield
    elif work < SERIAL_WORK:
        numba.set_num_threads(1)
        try:
            yield
        finally:
            numba.set_num_threads(threads)
    else:
        with numba.parallel_chunksize(CHUNKS_PER_GRAB):
            yield


def quiet_workers_before_start() -> bool:
    """Set libgomp's waiting as ``sparsegat train`` does, if OpenMP has not started; True when set.

    libgomp reads its environment once, when Numba's threading layer loads it (at the
    first parallel kernel of the process); afterwards this changes nothing and returns
    False, as it does when ``OMP_WAIT_POLICY`` is already set (the user's choice wins).
    """
    if getattr(_numba_parallel, "_is_initialized", True):
        return False
    return quiet_openmp_workers()
