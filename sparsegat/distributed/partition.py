"""A CSR graph split into row blocks balanced by edges, each with its compact halo.

NumPy and SciPy only (no Dask): a partition can be built, inspected and saved on a
machine without Dask. Block ``b`` owns the destination rows ``[row_start, row_stop)``
and their edges ``[edge_start, edge_stop)`` (CSR positions of the whole graph); its
``graph`` has those rows with every column renumbered into ``halo``, the sorted
global ids of the source nodes it reads (its key/value rows).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..graph import CSRGraph, choose_index_dtype

__all__ = ["GraphBlock", "PartitionedGraph", "partition_graph", "edge_balanced_bounds", "locality_order"]

REORDERINGS = (None, "rcm")


@dataclass(frozen=True, eq=False)
class GraphBlock:
    """One row block of a :class:`PartitionedGraph` (a plain record; pickles small).

    Attributes
    ----------
    index : int
        Position of the block (0 .. P-1): reductions run in this order.
    row_start, row_stop : int
        Its destination rows in the whole graph.
    edge_start, edge_stop : int
        CSR positions of its edges in the whole graph (``edge_start`` is the dropout
        offset: the block drops exactly the edges the whole graph drops).
    graph : CSRGraph
        Shape ``(row_stop - row_start, len(halo))``: its rows, columns renumbered.
    halo : ndarray of int64
        Sorted global ids of the source nodes its edges read.
    """

    index: int
    row_start: int
    row_stop: int
    edge_start: int
    edge_stop: int
    graph: CSRGraph
    halo: np.ndarray

    @property
    def n_rows(self) -> int:
        return self.row_stop - self.row_start

    @property
    def nnz(self) -> int:
        return self.edge_stop - self.edge_start

    def remote_columns(self) -> int:
        """Halo columns outside the block's own row range (for a square graph partitioned
        by the same bounds on both sides, the rows gathered from other blocks)."""
        lo, hi = np.searchsorted(self.halo, [self.row_start, self.row_stop])
        return int(self.halo.shape[0] - (hi - lo))

    def __dask_tokenize__(self) -> tuple:
        return ("sparsegat.GraphBlock", self.index, self.row_start, self.row_stop, self.edge_start,
                self.edge_stop, int(self.halo.shape[0]))


@dataclass(eq=False)
class PartitionedGraph:
    """A :class:`~sparsegat.CSRGraph` split into ``P`` row blocks balanced by edges.

    Build one with :func:`partition_graph`. Node arrays of the destination side are
    chunked like the blocks (``row_chunks``); per-edge arrays (``edge_bias``) like
    ``edge_chunks``. With a locality reordering, the partition is of the reordered
    graph ``pg.graph``: bring node arrays into its order with :meth:`to_partition_order`
    and per-edge arrays with ``x[pg.edge_perm]``.

    Attributes
    ----------
    blocks : list of GraphBlock
    shape : (int, int)
        ``(n_dst, n_src)`` of the whole graph.
    nnz : int
    row_bounds : ndarray of int64, (P + 1,)
        Block ``b`` owns rows ``row_bounds[b] .. row_bounds[b + 1]``.
    edge_bounds : ndarray of int64, (P + 1,)
    device : {"numpy", "cupy"}
        Where the blocks' kernels run (the array kind of the workers' chunks).
    graph : CSRGraph
        The whole (possibly reordered) graph, kept on the client only, for reference
        and tests; workers only ever receive blocks.
    permutation : ndarray of int64 or None
        With a reordering, ``permutation[new] = old`` (node ids); None otherwise.
    edge_perm : ndarray of int64 or None
        With a reordering, the original CSR position of each edge of ``graph``.
    """

    blocks: list[GraphBlock]
    shape: tuple[int, int]
    nnz: int
    row_bounds: np.ndarray
    edge_bounds: np.ndarray
    device: str
    graph: CSRGraph
    permutation: np.ndarray | None = None
    edge_perm: np.ndarray | None = None
    token: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    #: Dask-side state (persisted blocks, gather plans), filled by sparsegat.distributed.
    _dask: dict = field(default_factory=dict, repr=False)

    @property
    def parts(self) -> int:
        return len(self.blocks)

    @property
    def row_chunks(self) -> tuple[int, ...]:
        """Rows per block: the row chunks of ``q``, ``out``, ``dout`` (Dask ``chunks[0]``)."""
        return tuple(int(n) for n in np.diff(self.row_bounds))

    @property
    def edge_chunks(self) -> tuple[int, ...]:
        """Edges per block: the row chunks of ``edge_bias`` and its gradient."""
        return tuple(int(n) for n in np.diff(self.edge_bounds))

    def halo_sizes(self) -> np.ndarray:
        """``len(halo)`` of every block: the key/value rows each block reads."""
        return np.array([b.halo.shape[0] for b in self.blocks], dtype=np.int64)

    def remote_sizes(self) -> np.ndarray:
        """Halo rows of every block that lie outside its own row range."""
        return np.array([b.remote_columns() for b in self.blocks], dtype=np.int64)

    @property
    def halo_fraction(self) -> float:
        """Fraction of the gathered key/value rows that come from other blocks:
        ``sum(remote) / sum(halo)`` (0 for one block; meaningful for square graphs,
        whose source rows are owned by the same bounds)."""
        total = int(self.halo_sizes().sum())
        return float(self.remote_sizes().sum()) / total if total else 0.0

    @property
    def replication(self) -> float:
        """``sum(len(halo)) / n_src``: how many copies of each source row the blocks hold."""
        return float(self.halo_sizes().sum()) / self.shape[1] if self.shape[1] else 0.0

    def to(self, device: str) -> "PartitionedGraph":
        """The same partition for workers of ``device`` ("numpy" or "cupy"); the blocks stay
        host arrays here and move to the GPU on the worker that runs them."""
        if device not in ("numpy", "cupy"):
            raise ValueError(f"device must be 'numpy' or 'cupy', got {device!r}")
        if device == self.device:
            return self
        return PartitionedGraph(self.blocks, self.shape, self.nnz, self.row_bounds, self.edge_bounds, device,
                                self.graph, self.permutation, self.edge_perm)

    def to_partition_order(self, x: Any) -> Any:
        """``x[permutation]``: node data of the original graph in the partition's node order."""
        return x if self.permutation is None else x[self.permutation]

    def from_partition_order(self, x: Any) -> Any:
        """The inverse of :meth:`to_partition_order`."""
        if self.permutation is None:
            return x
        inverse = np.empty_like(self.permutation)
        inverse[self.permutation] = np.arange(self.permutation.shape[0])
        return x[inverse]

    def describe(self) -> str:
        nnz = np.diff(self.edge_bounds)
        return (f"{self.parts} blocks of {self.shape[0]:,} rows, {self.nnz:,} edges (edges per block "
                f"{int(nnz.min()):,}..{int(nnz.max()):,}); halo fraction {self.halo_fraction:.3f}, "
                f"replication {self.replication:.2f}")

    def __repr__(self) -> str:
        return f"PartitionedGraph({self.describe()}, device={self.device!r})"


def edge_balanced_bounds(indptr: np.ndarray, parts: int) -> np.ndarray:
    """Row bounds of ``parts`` blocks holding about ``nnz / parts`` edges each.

    Each block gets at least one row; a hub row is never split (a block's edges are
    whole rows), so a block may exceed the target by one row's edges.

    Parameters
    ----------
    indptr : ndarray, (n + 1,)
    parts : int
        1 <= parts <= n.

    Returns
    -------
    ndarray of int64, (parts + 1,): strictly increasing, from 0 to n.
    """
    indptr = np.asarray(indptr, dtype=np.int64)
    n, nnz = indptr.shape[0] - 1, int(indptr[-1])
    targets = (np.arange(parts + 1, dtype=np.float64) * (nnz / parts)) if parts else np.zeros(1)
    bounds = np.searchsorted(indptr, targets, side="left").astype(np.int64)
    bounds[0], bounds[-1] = 0, n
    # Strictly increasing with at least one row per block: c = bounds - i must be
    # non-decreasing within [0, n - parts].
    steps = np.arange(parts + 1, dtype=np.int64)
    c = np.maximum.accumulate(np.clip(bounds - steps, 0, n - parts))
    out = c + steps
    out[-1] = n
    return out


def locality_order(g: CSRGraph) -> np.ndarray:
    """A node order that keeps neighbours close (reverse Cuthill-McKee on ``A + A.T``).

    Returns ``perm`` with ``perm[new] = old``; square graphs only.
    """
    import scipy.sparse as sp
    from scipy.sparse.csgraph import reverse_cuthill_mckee

    n = g.n_dst
    a = sp.csr_matrix((np.ones(g.nnz, dtype=np.int8), np.asarray(g.indices), np.asarray(g.indptr)),
                      shape=g.shape)
    sym = (a + a.T).tocsr()
    sym.sum_duplicates()
    return np.asarray(reverse_cuthill_mckee(sym, symmetric_mode=True), dtype=np.int64).reshape(n)


def _reordered(g: CSRGraph, perm: np.ndarray) -> tuple[CSRGraph, np.ndarray]:
    """``g`` with node ``perm[i]`` renamed ``i`` on both sides, and the edge map."""
    inverse = np.empty_like(perm)
    inverse[perm] = np.arange(perm.shape[0], dtype=np.int64)
    rows = inverse[np.asarray(g.row_ids(), dtype=np.int64)]
    cols = inverse[np.asarray(g.indices, dtype=np.int64)]
    g2, edge_perm = CSRGraph.from_edge_index(cols, rows, num_src=g.n_src, num_dst=g.n_dst,
                                              index_dtype=g.index_dtype, duplicates="keep", return_perm=True)
    return g2, np.asarray(edge_perm, dtype=np.int64)


def _block(g: CSRGraph, index: int, r0: int, r1: int) -> GraphBlock:
    indptr = np.asarray(g.indptr)
    e0, e1 = int(indptr[r0]), int(indptr[r1])
    cols = np.asarray(g.indices[e0:e1])
    halo = np.unique(cols).astype(np.int64)
    dtype = choose_index_dtype(r1 - r0, halo.shape[0], e1 - e0)
    local = np.searchsorted(halo, cols).astype(dtype)
    local_indptr = (indptr[r0:r1 + 1].astype(np.int64) - e0).astype(dtype)
    # Columns stay sorted within each row (searchsorted is monotone): the checks pass.
    return GraphBlock(index, int(r0), int(r1), e0, e1, CSRGraph(local_indptr, local, (r1 - r0, halo.shape[0])),
                      halo)


def partition_graph(g: CSRGraph, parts: int, *, reorder: str | None = None,
                    device: str | None = None) -> PartitionedGraph:
    """Split ``g`` into ``parts`` row blocks with about the same number of edges.

    Parameters
    ----------
    g : CSRGraph
        The whole graph (host or GPU; it is partitioned on the host).
    parts : int
        Number of blocks, ``1 <= parts <= g.n_dst``; typically a small multiple of
        the number of workers.
    reorder : {None, "rcm"}
        ``"rcm"``: renumber the nodes of a square graph by reverse Cuthill-McKee
        first, so that blocks read fewer rows of other blocks (smaller halos).
        Node arrays must then be given in the new order (:meth:`PartitionedGraph.to_partition_order`).
    device : {"numpy", "cupy"}, optional
        Where the blocks' kernels run; ``g.device`` by default.

    Returns
    -------
    PartitionedGraph

    Raises
    ------
    TypeError
        ``g`` is not a CSRGraph; ``parts`` is not an integer.
    ValueError
        ``parts`` outside ``[1, n_dst]``; an unknown ``reorder``; ``reorder`` of a
        non-square graph; an unknown ``device``.
    """
    if not isinstance(g, CSRGraph):
        raise TypeError(f"g must be a sparsegat.CSRGraph, got {type(g).__name__}")
    if isinstance(parts, (bool, np.bool_)) or not isinstance(parts, (int, np.integer)):
        raise TypeError(f"parts must be an integer, got {parts!r}")
    parts = int(parts)
    if not 1 <= parts <= max(g.n_dst, 1) or g.n_dst == 0:
        raise ValueError(f"parts must lie in [1, n_dst={g.n_dst}], got {parts}")
    if reorder not in REORDERINGS:
        raise ValueError(f"reorder must be one of {REORDERINGS}, got {reorder!r}")
    device = g.device if device is None else device
    if device not in ("numpy", "cupy"):
        raise ValueError(f"device must be 'numpy' or 'cupy', got {device!r}")
    host = g.to("numpy")
    perm = edge_perm = None
    if reorder is not None:
        if host.n_dst != host.n_src:
            raise ValueError(f"reorder={reorder!r} renumbers rows and columns alike and needs a square "
                             f"graph, got shape {host.shape}")
        perm = locality_order(host)
        host, edge_perm = _reordered(host, perm)
    rows = edge_balanced_bounds(np.asarray(host.indptr), parts)
    blocks = [_block(host, b, int(rows[b]), int(rows[b + 1])) for b in range(parts)]
    edges = np.asarray(host.indptr, dtype=np.int64)[rows]
    return PartitionedGraph(blocks, host.shape, host.nnz, rows, edges, device, host, perm, edge_perm)
