"""Linear-time building blocks of :class:`~sparsegat.CSRGraph` on the host.

A graph is built with a counting sort, not a comparison sort over all edges: SciPy's
compiled ``coo_tocsr`` (``scipy.sparse._sparsetools``) places every edge into its
destination's bucket in input order (stable), carrying a payload (the edge ids, which
become ``perm``); ``csr_sort_indices`` then sorts each row by source, which is short
and stays in cache (the same two steps as SciPy's own COO -> canonical CSR). That row
sort is not stable, so where a row holds copies of an edge their ids are put back in
input order, touching only those copies: the result is exactly that of a stable
``lexsort((src, dst))``. Transposing a graph is one ``csr_tocsc`` (stable: rows stay
in order within a column); adding self-loops is one merge pass. Everything else is a
linear NumPy pass, in the graph's index dtype (int32 whenever the sizes fit).

The callers in :mod:`sparsegat.graph` validate every input first: these functions
trust their arguments (ids in range, ``indptr`` and ``indices`` of one native int32 or
int64 dtype, C-contiguous), because SciPy's routines do not check them.

When the node counts dwarf the number of edges (the counting sort is O(nodes + edges))
or SciPy lacks the private routines, :func:`use_counting_sort` is False and the caller
falls back to ``np.lexsort``, which gives the same arrays.
"""

from __future__ import annotations

from typing import Any

import numpy as np

INT32_MAX = np.iinfo(np.int32).max


def _load_sparsetools() -> Any:
    """SciPy's compiled sparse routines, or None when this SciPy does not have them."""
    try:
        from scipy.sparse import _sparsetools
    except ImportError:  # pragma: no cover - every SciPy >= 1.8 has the module
        return None
    if not all(hasattr(_sparsetools, name) for name in ("coo_tocsr", "csr_tocsc", "csr_sort_indices")):
        return None  # pragma: no cover
    return _sparsetools


_UNLOADED: Any = object()
#: ``scipy.sparse._sparsetools`` (None without it: the NumPy fallbacks are used), loaded on
#: first use so that ``import sparsegat`` does not import SciPy; read it through :func:`sparsetools`.
SPARSETOOLS: Any = _UNLOADED


def sparsetools() -> Any:
    """:data:`SPARSETOOLS`, loaded on the first call."""
    global SPARSETOOLS
    if SPARSETOOLS is _UNLOADED:
        SPARSETOOLS = _load_sparsetools()
    return SPARSETOOLS

#: A counting sort over ``n`` buckets costs about as much as ``n / NODES_PER_EDGE`` edges:
#: beyond that many nodes per edge (plus a small constant) ``lexsort`` is cheaper.
NODES_PER_EDGE = 4
MIN_COUNTING_NODES = 1 << 16


def use_counting_sort(n_dst: int, n_src: int, nnz: int) -> bool:
    """Whether :func:`sort_edges` should be used for these sizes (else ``np.lexsort``)."""
    return sparsetools() is not None and n_dst + n_src <= NODES_PER_EDGE * nnz + MIN_COUNTING_NODES


def work_dtype(*sizes: int) -> np.dtype:
    """int32 when every size (nodes, edges) fits in it, int64 otherwise."""
    return np.dtype(np.int32) if max(sizes, default=0) <= INT32_MAX else np.dtype(np.int64)


def sort_edges(src: np.ndarray, dst: np.ndarray, n_dst: int, n_src: int,
               with_perm: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``(indptr, indices, perm)`` of the edges ``src[e] -> dst[e]`` in CSR order.

    Parameters
    ----------
    src, dst : ndarray
        Validated ids (``0 <= src < n_src``, ``0 <= dst < n_dst``), both of the int32 or
        int64 dtype that :func:`work_dtype` gives for the sizes, C-contiguous.
    n_dst, n_src : int
        Node counts.
    with_perm : bool
        Also compute ``perm`` (int64): the input position of every edge in CSR order.

    Returns
    -------
    indptr, indices : ndarray
        Of the dtype of ``src``: rows by destination, sources sorted in each row,
        copies of an edge in input order (as a stable ``lexsort((src, dst))`` gives).
    perm : ndarray of int64, or None
    """
    nnz = src.shape[0]
    dtype = src.dtype
    # The routines need a payload; without perm one byte per edge is the cheapest. With it,
    # int64 ids cost no more to sort than int32 ones and need no widening afterwards.
    payload = np.arange(nnz, dtype=np.int64) if with_perm else np.zeros(nnz, dtype=np.int8)
    indptr = np.empty(n_dst + 1, dtype=dtype)
    indices = np.empty(nnz, dtype=dtype)
    perm = np.empty_like(payload)
    sparsetools().coo_tocsr(n_dst, n_src, nnz, dst, src, payload, indptr, indices, perm)
    del payload
    # Rows are in input order now; sorting each one (short, cache-resident) is cheaper than
    # a second bucket pass. The sort is not stable: only ``perm`` can tell the copies of an
    # edge apart, so their input order is restored there.
    sparsetools().csr_sort_indices(n_dst, indptr, indices, perm)
    if not with_perm:
        return indptr, indices, None
    repeat = repeated(indptr, indices)
    if repeat.any():
        _sort_runs(perm, repeat)
    return indptr, indices, perm


def _sort_runs(values: np.ndarray, repeat: np.ndarray) -> None:
    """Sort ``values`` in place within every run of repeated entries (``repeat[e]``: entry
    ``e`` repeats entry ``e - 1``); only the entries of such runs are touched."""
    member = repeat.copy()
    member[:-1] |= repeat[1:]  # the first entry of a run is followed by a repeat
    at = np.flatnonzero(member)
    run = np.cumsum(~repeat[at])  # a new run starts at each member that repeats nothing
    part = values[at]
    values[at] = part[np.lexsort((part, run))]


def transpose(indptr: np.ndarray, indices: np.ndarray, n_cols: int,
              payload: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(t_indptr, t_indices, t_payload)``: the CSR structure grouped by column, stably.

    Parameters
    ----------
    indptr, indices : ndarray
        A valid CSR structure (rows need not be sorted), one int32/int64 dtype.
    n_cols : int
        Number of columns.
    payload : ndarray, optional
        One value per entry, carried along (int8, int32 or int64); by default the CSR
        position of each entry, in the index dtype.

    Returns
    -------
    tuple of ndarray
        Column pointers, the row of each entry (increasing within a column, entries of
        a row in their CSR order) and the payload in that order.
    """
    dtype = indices.dtype
    n_rows, nnz = indptr.shape[0] - 1, indices.shape[0]
    if payload is None:
        payload = np.arange(nnz, dtype=dtype)
    t_indptr = np.empty(n_cols + 1, dtype=dtype)
    t_indices = np.empty(nnz, dtype=dtype)
    t_payload = np.empty_like(payload)
    sparsetools().csr_tocsc(n_rows, n_cols, indptr, indices, payload, t_indptr, t_indices, t_payload)
    return t_indptr, t_indices, t_payload


def sort_rows(indptr: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """The columns of every row sorted, as a new array; ``indptr`` is unchanged.

    Not stable, which does not matter for a structure alone: equal columns of a row are
    indistinguishable.
    """
    out = indices.copy()
    sparsetools().csr_sort_indices(indptr.shape[0] - 1, indptr, out, np.zeros(out.shape[0], dtype=np.int8))
    return out


def rows_unsorted(indptr: np.ndarray, indices: np.ndarray) -> bool:
    """Whether a column index decreases inside some row."""
    down = indices[1:] < indices[:-1]
    _clear_row_starts(down, indptr, offset=1)
    return bool(down.any())


def repeated(indptr: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Boolean mask (nnz,): entry ``e`` repeats entry ``e - 1`` of the same row (rows sorted)."""
    nnz = indices.shape[0]
    mask = np.empty(nnz, dtype=bool)
    if nnz:
        mask[0] = False
        np.equal(indices[1:], indices[:-1], out=mask[1:])
        _clear_row_starts(mask, indptr, offset=0)
    return mask


def _clear_row_starts(mask: np.ndarray, indptr: np.ndarray, offset: int) -> None:
    """Set ``mask[p - offset] = False`` for every position ``p`` where a row starts."""
    starts = indptr[1:-1]
    starts = starts[(starts >= offset) & (starts - offset < mask.shape[0])]
    mask[starts - offset] = False


def drop(indptr: np.ndarray, indices: np.ndarray, perm: np.ndarray | None,
         mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The CSR structure without the entries where ``mask`` is True (new arrays)."""
    gone = np.flatnonzero(mask)
    if gone.size == 0:
        return indptr, indices, perm
    keep = ~mask
    rows_gone = np.searchsorted(indptr, gone, side="right") - 1
    removed = np.zeros(indptr.shape[0], dtype=np.int64)
    np.cumsum(np.bincount(rows_gone, minlength=indptr.shape[0] - 1), out=removed[1:])
    new_indptr = (indptr - removed).astype(indptr.dtype, copy=False)
    return new_indptr, indices[keep], (None if perm is None else perm[keep])


def with_self_loops(indptr: np.ndarray, indices: np.ndarray, shape: tuple[int, int], replace: bool,
                    edge_ids: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``(indptr, indices, ids)``: the structure with self-loops merged in.

    A loop ``(i, i)`` is added to every row ``i < min(shape)`` that lacks one (with
    ``replace``, to every such row, after every existing loop is removed), at the place
    that keeps the row sorted: after the row's columns below ``i``. Rows ``>= min(shape)``
    are copied as they are.

    Returns
    -------
    indptr : ndarray of int64
    indices : ndarray
        Of the dtype of ``indices``.
    ids : ndarray of int64 or None
        With ``edge_ids``: for every edge, its position in the input, -1 for an added loop.
    """
    n_dst, n_src = shape
    m = min(n_dst, n_src)
    head = int(indptr[m])  # the edges of rows < m; the others are copied as they are
    head_ptr = indptr[:m + 1]
    rows = np.repeat(np.arange(m, dtype=indices.dtype), np.diff(head_ptr))
    cols = indices[:head]
    is_loop = cols == rows
    # Number of columns below i in row i: where the loop goes (loops are not below).
    below = np.zeros(head + 1, dtype=indices.dtype)
    np.cumsum(cols < rows, out=below[1:])
    n_below = below[head_ptr[1:]] - below[head_ptr[:-1]]
    del below
    loop_rows = rows[is_loop]
    del rows
    loops_removed = np.zeros(m + 1, dtype=np.int64)
    keep = None  # the input edges that stay, when not all of them do
    if replace:
        add = np.arange(m, dtype=np.int64)
        if loop_rows.size:
            np.cumsum(np.bincount(loop_rows, minlength=m), out=loops_removed[1:])
            keep = np.ones(indices.shape[0], dtype=bool)
            keep[:head] = ~is_loop
            indices = indices[keep]
    else:
        lacks = np.ones(m, dtype=bool)
        lacks[loop_rows] = False
        add = np.flatnonzero(lacks)
    del is_loop
    # Old positions (after removal) at which each loop goes, then their final positions.
    at = indptr[add].astype(np.int64) - loops_removed[add] + n_below[add]
    loop_pos = at + np.arange(add.shape[0], dtype=np.int64)
    total = indices.shape[0] + add.shape[0]
    out = np.empty(total, dtype=indices.dtype)
    old = np.ones(total, dtype=bool)
    old[loop_pos] = False
    out[loop_pos] = add
    out[old] = indices
    # Pointers: minus the loops removed before each row, plus the loops added before it.
    added = np.zeros(m + 1, dtype=np.int64)
    lacks_any = np.zeros(m, dtype=np.int64)
    lacks_any[add] = 1
    np.cumsum(lacks_any, out=added[1:])
    shift = added - loops_removed
    new_indptr = indptr.astype(np.int64)
    new_indptr[:m + 1] += shift
    new_indptr[m + 1:] += shift[-1]
    ids = None
    if edge_ids:
        ids = np.full(total, -1, dtype=np.int64)
        ids[old] = np.arange(indptr[-1], dtype=np.int64) if keep is None else np.flatnonzero(keep)
    return new_indptr, out, ids
