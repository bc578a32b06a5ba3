"""Splitting rows into chunks of about equal work, independent of the thread count.

A chunk is a range of consecutive rows whose cost (edges plus a per-row
overhead) is about ``total / MAX_CHUNKS`` but at least ``MIN_CHUNK_COST``. Numba's
``prange`` hands equal numbers of chunks to its threads, so equal-cost chunks
balance power-law graphs; a hub row bigger than a chunk gets a chunk of its own.
The split depends only on the graph, never on the number of threads, so per-chunk
partial sums (``att``, ``tau``) are reduced in the same order on any machine
configuration: results are bitwise reproducible.
"""

from __future__ import annotations

import numpy as np

MAX_CHUNKS = 1024
MIN_CHUNK_COST = 2048
ROW_COST = 2


def balanced_chunks(indptr: np.ndarray) -> np.ndarray:
    """Chunk boundaries (int64, increasing, from 0 to n) over the rows of ``indptr``."""
    n = int(indptr.shape[0]) - 1
    if n <= 0:
        return np.zeros(1, dtype=np.int64)
    cost = indptr.astype(np.int64) + ROW_COST * np.arange(n + 1, dtype=np.int64)
    total = int(cost[-1])
    nchunks = max(1, min(MAX_CHUNKS, total // MIN_CHUNK_COST, n))
    targets = (np.arange(1, nchunks, dtype=np.int64) * total) // nchunks
    inner = np.searchsorted(cost, targets, side="left")
    return np.unique(np.concatenate(([0], inner, [n]))).astype(np.int64)
