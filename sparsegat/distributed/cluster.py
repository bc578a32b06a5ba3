"""Connecting to a Dask cluster: a local cluster of worker processes or a scheduler's address."""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator

__all__ = ["connect", "local_cluster"]


def local_cluster(workers: int, threads: int | None = None, **kwargs: Any) -> Any:
    """A ``distributed.LocalCluster`` of ``workers`` processes of ``threads`` threads each
    (default: the cores shared out, at least 1), whose Numba kernels use that many threads."""
    from distributed import LocalCluster

    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    threads = threads or max(1, (os.cpu_count() or 1) // workers)
    env = {"NUMBA_NUM_THREADS": str(threads), "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1"}
    kwargs.setdefault("dashboard_address", None)
    return LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, env=env, **kwargs)


@contextlib.contextmanager
def connect(scheduler: str | None = None, workers: int | None = None) -> Iterator[Any]:
    """A ``distributed.Client`` for the duration of a ``with`` block.

    Parameters
    ----------
    scheduler : str, optional
        Address of a running scheduler (``tcp://host:8786``; CPU workers from
        ``dask worker``, GPU workers from ``dask cuda worker``).
    workers : int, optional
        Without ``scheduler``: start a local cluster of this many worker processes
        (closed at the end of the block).
    """
    from distributed import Client

    if scheduler is not None and workers:
        raise ValueError("give either scheduler (an address) or workers (a local cluster), not both")
    if scheduler is None and not workers:
        raise ValueError("connect needs scheduler=ADDRESS or workers=N")
    if scheduler is not None:
        with Client(scheduler) as client:
            yield client
        return
    with local_cluster(int(workers)) as cluster, Client(cluster) as client:
        yield client
