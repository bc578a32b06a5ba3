"""Edge features and PyG's self-loop rule for the attention layers of ``sparsegat.nn``.

Three pieces, each small and device-agnostic (NumPy or CuPy, by the arrays given):

* :func:`self_loops`: the graph a layer attends over with ``add_self_loops=True``
  (PyG's ``remove_self_loops`` then ``add_self_loops``: every existing loop removed,
  one loop ``(i, i)`` added for every ``i < min(n_dst, n_src)``), together with the
  map from its edges back to the input graph's, built once and cached on the graph.
* :func:`loop_edge_attr` / :func:`loop_edge_attr_backward`: edge features carried
  onto that graph, with PyG's ``fill_value`` for the new loops, and their gradient.
* :func:`row_sum`, :func:`col_sum`, :func:`scatter_sum`: per-node sums of per-edge
  values (the gradients of per-node terms that enter per-edge scores), as products of
  0/1 sparse matrices with the values: deterministic, no atomics.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from ..arrays import array_kind, namespace, to_numpy
from ..graph import CSRGraph, self_loops_with_edge_ids

#: Cache key (``CSRGraph.cached``) of a graph's :class:`LoopedGraph`.
SELF_LOOPS_KEY = "sparsegat.nn:self_loops"

#: Cache key of ``arange(nnz)`` in the graph's index dtype (the column indices of :func:`row_sum`).
EDGE_IDS_KEY = "sparsegat.nn:edge_ids"

#: The reductions ``fill_value`` takes as a string (``"add"`` and ``"sum"`` are the same).
FILL_REDUCTIONS = ("mean", "add", "sum")

#: Edge-chunk size, in numbers, of the per-feature work of ``GATv2Conv`` with edge features:
#: a chunk of ``e`` edges materialises ``e * heads * out_dim`` numbers at a time.
CHUNK_ELEMENTS = 1 << 22


class LoopedGraph(NamedTuple):
    """A graph with PyG's self-loops and the map back to the graph it was built from.

    All index arrays are int64, on the graph's device.
    """

    graph: CSRGraph  #: the graph with loops, shape of the input graph
    edge_ids: Any    #: (graph.nnz,): CSR position in the input graph of each edge, -1 for an added loop
    kept_pos: Any    #: positions in ``graph`` of the edges that come from the input graph
    kept_src: Any    #: their positions in the input graph (``edge_ids[kept_pos]``)
    loop_pos: Any    #: (m,): position in ``graph`` of the loop ``(i, i)``, i < m = min(n_dst, n_src)
    in_count: Any    #: (m,): number of non-loop input edges into node i (for ``fill_value="mean"``)


def self_loops(g: CSRGraph) -> LoopedGraph:
    """``g`` with PyG's ``GATConv`` self-loop rule, and the edge map; built once, cached on ``g``.

    Parameters
    ----------
    g : CSRGraph

    Returns
    -------
    LoopedGraph
        ``graph`` equals ``g.with_self_loops(replace=True)``: the edges of ``g`` that
        are not loops, in their CSR order, and one loop per node ``i < min(n_dst, n_src)``
        (existing loops, multiple ones included, are removed first).
    """
    return g.cached(SELF_LOOPS_KEY, lambda: _build_self_loops(g))


def _build_self_loops(g: CSRGraph) -> LoopedGraph:
    m = min(g.shape)
    g2, edge_ids = self_loops_with_edge_ids(g)  # one merge pass over the sorted rows, no sort
    kept_pos = np.flatnonzero(edge_ids >= 0)
    loop_pos = np.flatnonzero(edge_ids < 0)  # one per row i < m, in row order
    in_count = np.diff(to_numpy(g2.indptr))[:m].astype(np.int64) - 1  # row i < m less its one loop
    arrays = (edge_ids, kept_pos, edge_ids[kept_pos], loop_pos, in_count)
    if g.device != "numpy":
        xp = namespace(g.device)
        arrays = tuple(xp.asarray(a) for a in arrays)
    return LoopedGraph(g2.to(g.device), *arrays)


# ---------------------------------------------------------------------- fill values
def check_fill_value(fill_value: Any, edge_dim: int | None) -> Any:
    """``fill_value`` checked: ``"mean"``, ``"add"``, a real number, or an array of ``edge_dim`` numbers.

    Returns the string (``"sum"`` becomes ``"add"``), a Python float, or a float64
    NumPy array of shape ``(edge_dim,)``. ``TypeError`` for other types, ``ValueError``
    for other strings, non-finite numbers and arrays of another shape.
    """
    if isinstance(fill_value, str):
        if fill_value not in FILL_REDUCTIONS:
            raise ValueError(f"fill_value must be 'mean', 'add', a number or an array of edge_dim numbers; "
                             f"got {fill_value!r} (the reductions max, min and mul are not supported)")
        return "add" if fill_value == "sum" else fill_value
    if isinstance(fill_value, (bool, np.bool_)) or fill_value is None:
        raise TypeError(f"fill_value must be 'mean', 'add', a number or an array, got {fill_value!r}")
    if isinstance(fill_value, (int, float, np.integer, np.floating)):
        value = float(fill_value)
        if not np.isfinite(value):
            raise ValueError(f"fill_value must be finite, got {fill_value!r}")
        return value
    kind = array_kind(fill_value)
    if kind is None and not isinstance(fill_value, (list, tuple)):
        raise TypeError(f"fill_value must be 'mean', 'add', a number or an array, got {type(fill_value).__name__}")
    arr = np.asarray(to_numpy(fill_value) if kind else fill_value)
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"fill_value must hold real numbers, got dtype {arr.dtype}")
    if arr.ndim == 0:
        return check_fill_value(float(arr), edge_dim)
    arr = arr.astype(np.float64)
    if arr.ndim != 1 or (edge_dim is not None and arr.shape[0] != edge_dim):
        raise ValueError(f"an array fill_value must have shape (edge_dim,) = ({edge_dim},), got {np.shape(fill_value)}")
    if not np.isfinite(arr).all():
        raise ValueError("fill_value must be finite")
    return arr


def loop_edge_attr(lg: LoopedGraph, edge_attr: Any, fill_value: Any) -> Any:
    """Edge features ``(g.nnz, D)`` of the input graph carried onto ``lg.graph`` ``(nnz, D)``.

    Kept edges take their own features; the loop of node ``i`` takes ``fill_value``:
    ``"mean"`` or ``"add"`` of the features of ``i``'s incoming non-loop edges (0 for a
    node without any, as PyG's ``scatter``), or the given constant(s).
    """
    xp = namespace(edge_attr)
    D = edge_attr.shape[1]
    out = xp.zeros((lg.graph.nnz, D), dtype=edge_attr.dtype)
    out[lg.kept_pos] = edge_attr[lg.kept_src]
    if isinstance(fill_value, str):
        loops = row_sum(lg.graph, out)[:lg.loop_pos.shape[0]]  # loop rows are still zero
        if fill_value == "mean":
            loops /= xp.maximum(lg.in_count, 1).astype(edge_attr.dtype)[:, None]
        out[lg.loop_pos] = loops
    else:
        out[lg.loop_pos] = xp.asarray(fill_value, dtype=edge_attr.dtype)
    return out


def loop_edge_attr_backward(lg: LoopedGraph, d_attr: Any, fill_value: Any, nnz: int) -> Any:
    """The gradient ``(nnz, D)`` of the input graph's edge features, given that of :func:`loop_edge_attr`.

    Features of removed loops get 0; with ``"mean"``/``"add"`` every kept edge into
    node ``i`` also receives (a share of) the gradient of ``i``'s loop.
    """
    xp = namespace(d_attr)
    D = d_attr.shape[1]
    kept = d_attr[lg.kept_pos]
    if isinstance(fill_value, str):
        m = lg.loop_pos.shape[0]
        d_loop = xp.zeros((lg.graph.n_dst, D), dtype=d_attr.dtype)
        d_loop[:m] = d_attr[lg.loop_pos]
        if fill_value == "mean":
            d_loop[:m] /= xp.maximum(lg.in_count, 1).astype(d_attr.dtype)[:, None]
        kept += d_loop[lg.graph.row_ids()[lg.kept_pos]]
    out = xp.zeros((nnz, D), dtype=d_attr.dtype)
    out[lg.kept_src] = kept
    return out


# ---------------------------------------------------------------------- per-node sums of per-edge values
def _ones_matrix(xp: Any, indptr: Any, indices: Any, shape: tuple[int, int], dtype: Any) -> Any:
    """A CSR matrix of ones with the given structure (scipy on the host, cupyx on the GPU)."""
    data = xp.ones(indices.shape[0], dtype=dtype)
    if xp is np:
        import scipy.sparse as sp

        return sp.csr_matrix((data, indices, indptr), shape=shape)
    import cupyx.scipy.sparse as csp  # pragma: no cover - GPU only

    return csp.csr_matrix((data, indices.astype(xp.int32), indptr.astype(xp.int32)), shape=shape)


def _sum_2d(S: Any, values: Any) -> Any:
    """``S @ values`` for values of any trailing shape, the result shaped ``(S.shape[0], *rest)``."""
    rest = values.shape[1:]
    out = S @ values.reshape(values.shape[0], -1)
    return out.reshape((S.shape[0],) + rest)


def row_sum(g: CSRGraph, values: Any, start: int = 0, stop: int | None = None) -> Any:
    """``out[i] = sum of values[e]`` over the edges ``e`` of row ``i`` (CSR order).

    ``values`` holds the edges ``start .. stop`` of ``g`` (all of them by default), so a
    chunk of consecutive edges can be summed on its own. Shape ``(n_dst, *values.shape[1:])``.
    """
    xp = namespace(values)
    stop = g.nnz if stop is None else stop
    if start == 0 and stop == g.nnz:
        ids = g.cached(EDGE_IDS_KEY, lambda: namespace(g.device).arange(g.nnz, dtype=g.index_dtype))
        S = _ones_matrix(xp, g.indptr, ids, (g.n_dst, g.nnz), values.dtype)
    else:
        indptr = xp.clip(g.indptr, start, stop) - start
        S = _ones_matrix(xp, indptr, xp.arange(stop - start, dtype=indptr.dtype), (g.n_dst, stop - start),
                         values.dtype)
    return _sum_2d(S, values)


def col_sum(g: CSRGraph, values: Any) -> Any:
    """``out[j] = sum of values[e]`` over the edges ``e`` whose source is ``j``; ``(n_src, ...)``."""
    t_indptr, _, t_perm = g.transposed()
    S = _ones_matrix(namespace(values), t_indptr, t_perm, (g.n_src, g.nnz), values.dtype)
    return _sum_2d(S, values)


def scatter_sum(index: Any, values: Any, n: int) -> Any:
    """``out[index[e]] += values[e]``, shape ``(n, ...)``, by a stable sort of ``index``."""
    xp = namespace(values)
    order = xp.argsort(index, kind="stable") if xp is np else xp.argsort(index)
    indptr = xp.searchsorted(index[order], xp.arange(n + 1, dtype=index.dtype), side="left")
    S = _ones_matrix(xp, indptr.astype(np.int64), order.astype(np.int64), (n, index.shape[0]), values.dtype)
    return _sum_2d(S, values)


def edge_chunks(nnz: int, per_edge: int) -> list[tuple[int, int]]:
    """Consecutive ``(start, stop)`` edge ranges of at most ``CHUNK_ELEMENTS // per_edge`` edges."""
    step = max(1, CHUNK_ELEMENTS // max(per_edge, 1))
    return [(a, min(a + step, nnz)) for a in range(0, nnz, step)]
