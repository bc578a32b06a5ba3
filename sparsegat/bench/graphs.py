"""Synthetic graph families for benchmarks, reproducible from a seed.

Every generator returns a canonical :class:`sparsegat.CSRGraph` (rows sorted,
no duplicate edges); merging duplicates can leave slightly fewer edges than
``nodes * degree``, so reports always use the real ``nnz``.

- ``uniform``: square, ``n`` nodes; every row draws ``degree`` sources uniformly
  at random (Erdős–Rényi-like, all rows about the same length).
- ``powerlaw``: square and symmetric, Chung–Lu graph with expected degrees
  following a power law of exponent 2.5 and mean ``degree``: a few hub rows with
  thousands of edges and many short rows (load imbalance, as in social and
  citation graphs).
- ``bipartite``: non-square, ``n`` destination nodes and ``2 n`` source nodes;
  every destination draws ``degree`` sources with Zipf-like popularity (as
  users attending to items), so the transposed (source-side) structure is skewed.

Two edge-list generators serve the layer benchmarks in ``bench/``:
:func:`chung_lu_edges` (a directed power-law edge list, as PyG takes it) and
:func:`uniform_graph_with_loops` (uniform random edges plus every self-loop, built
with NumPy or on the GPU with CuPy).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..graph import CSRGraph

FAMILIES = ("uniform", "powerlaw", "bipartite")
POWERLAW_EXPONENT = 2.5
BIPARTITE_SOURCE_RATIO = 2


@dataclass
class BenchGraph:
    """A graph to benchmark plus the description the reports print."""

    name: str
    graph: CSRGraph
    family: str
    seed: int | None = None
    source: str | None = None
    requested: dict = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """JSON-ready description: sizes, degree statistics, where it came from."""
        g = self.graph
        deg = np.asarray(g.degrees())
        return {
            "name": self.name,
            "family": self.family,
            "seed": self.seed,
            "file": self.source,
            "requested": dict(self.requested),
            "n_dst": g.n_dst,
            "n_src": g.n_src,
            "nnz": g.nnz,
            "avg_degree": float(g.nnz / g.n_dst) if g.n_dst else 0.0,
            "max_degree": int(deg.max()) if deg.size else 0,
            "empty_rows": int((deg == 0).sum()),
            "index_dtype": str(g.index_dtype),
            "square": g.n_dst == g.n_src,
        }


def _csr_from_sorted_rows(cols: np.ndarray, n_src: int) -> CSRGraph:
    """CSR from an (n, d) array of column ids, each row sorted; drops repeats in a row."""
    n, d = cols.shape
    keep = np.ones(cols.shape, dtype=bool)
    if d > 1:
        keep[:, 1:] = cols[:, 1:] != cols[:, :-1]
    counts = keep.sum(axis=1)
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    return CSRGraph(indptr, cols[keep], (n, n_src)).with_index_dtype(None)


def _check_sizes(**sizes: int) -> None:
    for name, value in sizes.items():
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{name} must be an integer, got {value!r}")
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")


def uniform(nodes: int, degree: int, seed: int = 0) -> CSRGraph:
    """Square graph; every row draws ``degree`` sources uniformly (repeats merged)."""
    _check_sizes(nodes=nodes, degree=degree)
    rng = np.random.default_rng(seed)
    d = min(degree, nodes)
    cols = rng.integers(0, nodes, size=(nodes, d), dtype=np.int64)
    cols.sort(axis=1)
    return _csr_from_sorted_rows(cols, nodes)


def _rank_weights(n: int, exponent: float) -> np.ndarray:
    """Chung–Lu expected-degree weights ``w_i = (i + 1) ** (-1 / (exponent - 1))``, not normalised."""
    return (np.arange(n, dtype=np.float64) + 1.0) ** (-1.0 / (exponent - 1.0))


def _powerlaw_weights(n: int, exponent: float) -> np.ndarray:
    """:func:`_rank_weights` normalised to sum 1."""
    w = _rank_weights(n, exponent)
    return w / w.sum()


def powerlaw(nodes: int, degree: int, seed: int = 0, exponent: float = POWERLAW_EXPONENT) -> CSRGraph:
    """Square symmetric Chung–Lu graph with power-law degrees of mean about ``degree``.

    Endpoints are drawn with probability proportional to the power-law weights,
    both directions kept, self-loops and repeats dropped; draws are topped up a
    few times so the mean degree ends close to the one asked (within about 2 %
    unless the graph is too small to hold it).
    """
    _check_sizes(nodes=nodes, degree=degree)
    rng = np.random.default_rng(seed)
    n = nodes
    cdf = np.cumsum(_powerlaw_weights(n, exponent))
    cdf[-1] = 1.0
    target = min(n * degree, n * (n - 1))
    keys = np.empty(0, dtype=np.int64)
    for _ in range(8):
        missing = target - keys.size
        if missing <= 0.02 * target:
            break
        pairs = missing // 2 + 1
        u = np.searchsorted(cdf, rng.random(pairs), side="right")
        v = np.searchsorted(cdf, rng.random(pairs), side="right")
        ok = u != v
        u, v = u[ok], v[ok]
        new = np.concatenate([u * n + v, v * n + u])
        keys = np.unique(np.concatenate([keys, new]))
    dst, src = np.divmod(keys, n)
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(dst, minlength=n), out=indptr[1:])
    return CSRGraph(indptr, src, (n, n)).with_index_dtype(None)


def bipartite(nodes: int, degree: int, seed: int = 0,
              ratio: int = BIPARTITE_SOURCE_RATIO) -> CSRGraph:
    """Non-square graph: ``nodes`` destinations, ``ratio * nodes`` sources of Zipf-like popularity."""
    _check_sizes(nodes=nodes, degree=degree)
    rng = np.random.default_rng(seed)
    n_src = ratio * nodes
    cdf = np.cumsum(_powerlaw_weights(n_src, POWERLAW_EXPONENT))
    cdf[-1] = 1.0
    # Shuffle popularity over source ids so hubs are not all at the start.
    perm = rng.permutation(n_src)
    d = min(degree, n_src)
    cols = perm[np.searchsorted(cdf, rng.random((nodes, d)), side="right")].astype(np.int64)
    cols.sort(axis=1)
    return _csr_from_sorted_rows(cols, n_src)


def chung_lu_edges(nodes: int, edges: int, exponent: float = POWERLAW_EXPONENT,
                   seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(src, dst)``: ``edges`` distinct directed edges (no self-loops) of a Chung–Lu graph.

    Both endpoints are drawn with probability proportional to the rank weights of
    :func:`_rank_weights` over a random relabelling of the nodes, so in- and
    out-degrees follow a power law (hubs with thousands of neighbours) scattered
    over the id range. The edges come in random order, int64.
    """
    _check_sizes(nodes=nodes, edges=edges)
    n = nodes
    if edges > n * (n - 1):
        raise ValueError(f"{n} nodes hold at most {n * (n - 1)} directed edges without self-loops, "
                         f"asked for {edges}")
    rng = np.random.default_rng(seed)
    w = _rank_weights(n, exponent)[rng.permutation(n)]
    cdf = np.cumsum(w)
    cdf /= cdf[-1]
    keys = np.empty(0, dtype=np.int64)
    draw = edges
    while keys.size < edges:
        src = np.minimum(np.searchsorted(cdf, rng.random(draw)), n - 1)
        dst = np.minimum(np.searchsorted(cdf, rng.random(draw)), n - 1)
        k = (src * n + dst)[src != dst]
        keys = np.unique(np.concatenate([keys, k]))
        draw = int((edges - keys.size) * 1.5) + 1000
    keys = rng.permutation(keys)[:edges]
    return keys // n, keys % n


def uniform_graph_with_loops(xp: Any, nodes: int, edges: int | None = None, degree: int | None = None,
                             seed: int = 0) -> tuple[CSRGraph, Any, Any]:
    """``(g, src, dst)``: uniform random edges plus every self-loop, built with ``xp``.

    ``xp`` is ``numpy`` or ``cupy`` (the graph and the arrays then live on the GPU).
    Either ``edges`` edges with both endpoints uniform, or ``degree`` uniform
    sources for every destination (then without added self-loops); repeats are
    merged. ``g`` is canonical with int32 indices; ``src``/``dst`` (int64) are its
    edges in CSR order, the edge index PyG takes.
    """
    if (edges is None) == (degree is None):
        raise ValueError("give exactly one of edges and degree")
    _check_sizes(nodes=nodes, **({"edges": edges} if degree is None else {"degree": degree}))
    n = nodes
    rng = xp.random.default_rng(seed)
    if degree is not None:
        dst = xp.repeat(xp.arange(n, dtype=xp.int64), degree)
        src = rng.integers(0, n, size=n * degree, dtype=xp.int64)
        loops = xp.zeros(0, dtype=xp.int64)
    else:
        dst = rng.integers(0, n, size=edges, dtype=xp.int64)
        src = rng.integers(0, n, size=edges, dtype=xp.int64)
        loops = xp.arange(n, dtype=xp.int64) * (n + 1)
    key = xp.unique(xp.concatenate([dst * n + src, loops]))  # sorted by (dst, src), no repeats
    del src, dst
    dst, src = key // n, key % n
    del key
    indptr = xp.zeros(n + 1, dtype=xp.int64)
    indptr[1:] = xp.cumsum(xp.bincount(dst, minlength=n))
    g = CSRGraph(indptr.astype(xp.int32), src.astype(xp.int32), (n, n))
    return g, src, dst


_GENERATORS = {"uniform": uniform, "powerlaw": powerlaw, "bipartite": bipartite}


def make_graph(family: str, nodes: int, degree: int, seed: int = 0) -> BenchGraph:
    """Build a synthetic graph of ``family`` (one of :data:`FAMILIES`)."""
    if family not in _GENERATORS:
        raise ValueError(f"unknown graph family {family!r}; choose from {', '.join(FAMILIES)}")
    g = _GENERATORS[family](nodes, degree, seed)
    return BenchGraph(name=f"{family}-n{nodes}-d{degree}", graph=g, family=family, seed=seed,
                      requested={"nodes": nodes, "degree": degree})
