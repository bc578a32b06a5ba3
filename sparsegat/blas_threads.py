"""BLAS threads for the layers' dense products: one thread for small products.

OpenBLAS (NumPy's and SciPy's) runs every product on all cores and then keeps its
workers spinning for a while. For the small products of a layer on a small graph
(thousands x 64) the threads gain nothing, and their spinning takes the cores from the
attention kernels' own threads: a user's training loop on a small graph ran 13x slower
than ``sparsegat train``, which limits BLAS to one thread for the whole process. A
library must not change its host's thread pools for good, so the layers limit BLAS
around each *small* product only (:func:`blas_threads_for`), and leave large products,
where threads pay, to BLAS as configured. Uses ``threadpoolctl`` (the ``numba``
extra); without it, a no-op.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import os
import threading
from typing import Any, Callable, Iterator

#: Products of fewer multiply-adds than this run on one BLAS thread (about a millisecond on one core).
SMALL_PRODUCT = 1 << 26

#: Rows per block of :func:`t_matmul` (a fixed split: results do not depend on the thread count).
ROWS_PER_BLOCK = 1 << 14

_controllers: list[Any] | None = None
_lock = threading.Lock()
_pool: concurrent.futures.ThreadPoolExecutor | None = None


def _blas_controllers() -> list[Any]:
    """The BLAS libraries loaded in this process (found once; empty without threadpoolctl)."""
    global _controllers
    if _controllers is None:
        with _lock:
            if _controllers is None:
                try:
                    from threadpoolctl import ThreadpoolController
                except ImportError:
                    _controllers = []
                else:
                    _controllers = list(ThreadpoolController().select(user_api="blas").lib_controllers)
    return _controllers


def product_size(a: Any, b: Any) -> int:
    """Multiply-adds of ``a @ b`` for 2-d ``a`` (m x k) and ``b`` (k x n)."""
    return int(a.shape[0]) * int(a.shape[1]) * int(b.shape[-1] if b.ndim > 1 else 1)


@contextlib.contextmanager
def blas_threads_for(work: int) -> Iterator[None]:
    """Run the BLAS calls inside the block on one thread when ``work`` (multiply-adds) is small."""
    if work >= SMALL_PRODUCT:
        yield
        return
    controllers = _blas_controllers()
    before = [c.num_threads for c in controllers]
    changed = [c for c, n in zip(controllers, before) if n != 1]
    for c in changed:
        c.set_num_threads(1)
    try:
        yield
    finally:
        for c, n in zip(controllers, before):
            if n != 1:
                c.set_num_threads(n)


def matmul(a: Any, b: Any) -> Any:
    """``a @ b``, on one BLAS thread when the product is small (NumPy arrays; others as they are)."""
    if type(a).__module__ != "numpy" or a.ndim != 2:
        return a @ b
    with blas_threads_for(product_size(a, b)):
        return a @ b


def layer_work(x: Any, out_cols: int) -> int:
    """Multiply-adds of a layer's projection ``x @ W`` (``x`` an array, a sparse matrix or
    a ``(x_src, x_dst)`` pair, measured on its source side), ``W`` with ``out_cols`` columns."""
    if isinstance(x, (tuple, list)) and x:
        x = x[0]
    shape = getattr(x, "shape", ())
    if len(shape) != 2:
        return SMALL_PRODUCT  # unknown: leave BLAS alone (the layer's checks will speak)
    return int(shape[0]) * int(shape[1]) * int(out_cols)


def small_products_on_one_thread(forward: Callable[..., Any]) -> Callable[..., Any]:
    """A layer's ``forward(self, x, ...)`` run under :func:`blas_threads_for` its
    projection's size (``self.total_out`` columns), remembered for its backward
    (``Module.backward`` uses ``self._blas_work``)."""
    @functools.wraps(forward)
    def wrapped(self: Any, x: Any, *args: Any, **kwargs: Any) -> Any:
        work = layer_work(x, getattr(self, "total_out", 1))
        self._blas_work = work
        with blas_threads_for(work):
            return forward(self, x, *args, **kwargs)

    return wrapped


def _block_pool() -> concurrent.futures.ThreadPoolExecutor:
    global _pool
    if _pool is None:
        with _lock:
            if _pool is None:
                _pool = concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1,
                                                              thread_name_prefix="sparsegat-blas")
    return _pool


def t_matmul(a: Any, b: Any) -> Any:
    """``a.T @ b`` for tall NumPy ``a`` (n x k) and ``b`` (n x m): a weight gradient.

    OpenBLAS splits such a product (large n, small k and m) into blocks of n and
    synchronises its threads after each; when another process holds a core, each wait
    lasts a scheduler time slice, and a 17 ms product took 2.4 s. Here the rows are split
    into fixed blocks of :data:`ROWS_PER_BLOCK`, each block's product runs on one BLAS
    thread, the blocks are handed to a pool of threads as they come free (a descheduled
    thread delays one block, not the product), and the partial products are summed in
    block order: the same result whatever the thread count or the scheduling. Small or
    non-NumPy products are ``a.T @ b`` (small ones on one BLAS thread).
    """
    n = int(a.shape[0])
    if type(a).__module__ != "numpy" or type(b).__module__ != "numpy" or a.ndim != 2 or b.ndim != 2 \
            or n < 2 * ROWS_PER_BLOCK or not _blas_controllers():
        with blas_threads_for(n * int(a.shape[1]) * int(b.shape[1]) if a.ndim == 2 and b.ndim == 2 else 0):
            return a.T @ b
    starts = range(0, n, ROWS_PER_BLOCK)
    with blas_threads_for(0):  # one BLAS thread per block: the pool runs blocks side by side
        parts = list(_block_pool().map(lambda s: a[s:s + ROWS_PER_BLOCK].T @ b[s:s + ROWS_PER_BLOCK], starts))
    out = parts[0]
    for p in parts[1:]:
        out += p
    return out
