"""Attention-dropout keep/drop rule, compiled: mirrors :mod:`sparsegat.dropout` bit for bit.

``keep((seed_key, edge_offset), e, heads, h, threshold)`` is True when CSR position ``e``, head
``h`` is kept::

    z    = splitmix64(seed_key ^ ((edge_offset + e) * heads + h))   (uint64, wrapping)
    keep = (z >> 11) >= threshold

All arithmetic is done on explicit ``uint64`` values: in Numba, mixing uint64
with a signed integer promotes to float64, which would silently break the hash.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ...dropout import GOLDEN as _GOLDEN, MIX1 as _MIX1, MIX2 as _MIX2

GOLDEN = np.uint64(_GOLDEN)
MIX1 = np.uint64(_MIX1)
MIX2 = np.uint64(_MIX2)
S30 = np.uint64(30)
S27 = np.uint64(27)
S31 = np.uint64(31)
S11 = np.uint64(11)


@njit(inline="always", cache=True)
def splitmix64(x):
    """splitmix64 finaliser on a uint64 (wrapping)."""
    x = x + GOLDEN
    x = (x ^ (x >> S30)) * MIX1
    x = (x ^ (x >> S27)) * MIX2
    return x ^ (x >> S31)


@njit(inline="always", cache=True)
def keep(key, e, heads, h, threshold):
    """Keep decision of CSR position ``e``, head ``h``; ``key`` is the uint64 pair
    ``(seed_key, edge_offset)`` (:func:`dropout_key`), ``threshold`` a uint64."""
    counter = (np.uint64(e) + key[1]) * np.uint64(heads) + np.uint64(h)
    z = splitmix64(key[0] ^ counter)
    return (z >> S11) >= threshold


def dropout_key(seed_key: int, edge_offset: int) -> np.ndarray:
    """The kernels' dropout key: ``(seed_key, edge_offset)`` as a read-only uint64 pair
    (``edge_offset``: ``AttentionSpec.edge_offset``, 0 but for the row blocks of
    :mod:`sparsegat.distributed`)."""
    key = np.array([seed_key, edge_offset], dtype=np.uint64)
    key.flags.writeable = False
    return key


@njit(cache=True)
def keep_mask(seed_key, edge_start, edge_stop, heads, threshold):
    """Keep decisions for positions ``[edge_start, edge_stop)``, shape (stop - start, heads).

    The compiled twin of :func:`sparsegat.dropout.keep_mask`, used by the tests.
    """
    out = np.empty((edge_stop - edge_start, heads), dtype=np.bool_)
    key = np.zeros(2, dtype=np.uint64)
    key[0] = seed_key
    for e in range(edge_start, edge_stop):
        for h in range(heads):
            out[e - edge_start, h] = keep(key, e, heads, h, threshold)
    return out
