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

import contextlib
import functools
import threading
from typing import Any, Callable, Iterator

#: Products of fewer multiply-adds than this run on one BLAS thread (about 0.1 ms on one core).
SMALL_PRODUCT = 1 << 23

_controllers: list[Any] | None = None
_lock = threading.Lock()


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
