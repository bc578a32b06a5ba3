"""The counter-based keep/drop rule of attention dropout (reference implementation).

Every backend decides whether edge position ``e`` (CSR order), head ``h`` of a
graph with ``H`` heads is kept from integers alone, so all backends drop exactly
the same edges and backward needs no stored mask:

    counter = e * H + h                              (uint64, wrapping)
    z       = splitmix64(splitmix64(seed) ^ counter)
    keep    = (z >> 11) >= threshold,   threshold = round(p * 2**53)

    splitmix64(x): x += 0x9E3779B97F4A7C15
                   x  = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9
                   x  = (x ^ (x >> 27)) * 0x94D049BB133111EB
                   return x ^ (x >> 31)          (all uint64, wrapping)

Kept weights are scaled by ``1 / (1 - p)``. ``splitmix64(seed)`` is computed once
on the host (:func:`mix_seed`) and passed to kernels as ``seed_key``.
"""

from __future__ import annotations

import numpy as np

GOLDEN = 0x9E3779B97F4A7C15
MIX1 = 0xBF58476D1CE4E5B9
MIX2 = 0x94D049BB133111EB
MASK64 = (1 << 64) - 1


def splitmix64_int(x: int) -> int:
    """splitmix64 finaliser on a Python int (host side, exact)."""
    x = (x + GOLDEN) & MASK64
    x = ((x ^ (x >> 30)) * MIX1) & MASK64
    x = ((x ^ (x >> 27)) * MIX2) & MASK64
    return x ^ (x >> 31)


def mix_seed(seed: int) -> int:
    """The per-call key ``splitmix64(seed)`` that kernels combine with the counter."""
    return splitmix64_int(int(seed) & MASK64)


def drop_threshold(p: float) -> int:
    """Integer threshold on the top 53 bits of the hash: drop iff ``(z >> 11) < threshold``."""
    return int(round(float(p) * (1 << 53)))


def splitmix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on a uint64 array (wrapping arithmetic)."""
    x = x + np.uint64(GOLDEN)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(MIX1)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(MIX2)
    return x ^ (x >> np.uint64(31))


def keep_mask(seed_key: int, edge_start: int, edge_stop: int, heads: int, threshold: int) -> np.ndarray:
    """Keep decisions for edge positions ``[edge_start, edge_stop)``, shape (stop - start, heads)."""
    e = np.arange(edge_start, edge_stop, dtype=np.uint64)[:, None]
    h = np.arange(heads, dtype=np.uint64)[None, :]
    counter = e * np.uint64(heads) + h
    with np.errstate(over="ignore"):
        z = splitmix64(np.uint64(seed_key) ^ counter)
    return (z >> np.uint64(11)) >= np.uint64(threshold)
