"""The graph: a canonical CSR structure of shape ``(n_dst, n_src)``.

Row ``i`` is destination node ``i``; its column indices are the source nodes
``j`` it attends to (messages flow ``j -> i``), as in PyG and DGL.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .arrays import array_kind, check_host_allocation, namespace as _namespace, to_numpy
from . import _graph_build as _build
from .csr_format import check_csr, row_ids as _row_ids

INT32_MAX = np.iinfo(np.int32).max
INT64_MAX = np.iinfo(np.int64).max


def choose_index_dtype(*sizes: int) -> np.dtype:
    """Return int32 when every size fits in it, int64 otherwise."""
    return np.dtype(np.int32) if max(sizes, default=0) <= INT32_MAX else np.dtype(np.int64)


def _check_shape(shape: Any) -> tuple[int, int]:
    try:
        n_dst, n_src = shape
    except (TypeError, ValueError):
        raise ValueError(f"shape must be a pair (n_dst, n_src), got {shape!r}") from None
    out = []
    for name, n in (("n_dst", n_dst), ("n_src", n_src)):
        if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)):
            raise ValueError(f"shape {name} must be an integer, got {n!r}")
        if n < 0:
            raise ValueError(f"shape {name} must be non-negative, got {int(n)}")
        if n > INT64_MAX - 1:
            raise ValueError(f"shape {name}={int(n)} overflows int64 indices")
        out.append(int(n))
    return out[0], out[1]


def sealed(a: Any) -> Any:
    """A read-only copy of the NumPy array ``a`` that nobody can make writeable again.

    The data lives in an immutable ``bytes`` object: NumPy lets ``flags.writeable`` be
    set back to True only when the memory's ultimate owner is writeable, and ``bytes``
    is not, so neither the returned array nor any view of it can be written. An array
    that is already sealed is returned as is (no copy). CuPy arrays have no writeable
    flag and are returned unchanged: GPU graph arrays must not be modified.
    """
    if not isinstance(a, np.ndarray):
        return a
    if _is_sealed(a):
        return a
    a = np.ascontiguousarray(a)
    out = np.frombuffer(a.tobytes(), dtype=a.dtype).reshape(a.shape)
    return out


def _is_sealed(a: np.ndarray) -> bool:
    if a.flags.writeable:
        return False
    base = a
    while isinstance(base, np.ndarray):
        if base.flags.writeable or base.flags.owndata:
            return False
        base = base.base
    return isinstance(base, bytes)


def _seal_all(obj: Any) -> Any:
    """``obj`` with every NumPy array in it (tuples, lists, dicts, dataclasses) sealed (for ``cached``)."""
    import dataclasses
    import types

    if isinstance(obj, np.ndarray):
        return sealed(obj)
    if isinstance(obj, tuple):
        items = [_seal_all(x) for x in obj]
        return type(obj)(*items) if hasattr(obj, "_fields") else tuple(items)
    if isinstance(obj, list):
        return tuple(_seal_all(x) for x in obj)
    if isinstance(obj, (dict, types.MappingProxyType)):
        return types.MappingProxyType({k: _seal_all(v) for k, v in obj.items()})
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        changes = {f.name: _seal_all(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
        return dataclasses.replace(obj, **changes)
    return obj


def _as_index_array(name: str, a: Any, xp: Any, ndim: int = 1, copy: bool = True) -> Any:
    """Return ``a`` as an ``ndim``-D int32/int64 array of namespace ``xp`` (a copy, sealed on the host).

    With ``copy=False``, ``a`` as a validated ``ndim``-D integer array of namespace ``xp``,
    of its own integer dtype and not copied (the caller copies what it keeps).
    """
    arr = xp.asarray(a)
    if isinstance(a, (list, tuple)) and arr.size == 0:
        arr = arr.astype(np.int64)  # an empty Python list is an empty edge list, not float data
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got an array of shape {tuple(arr.shape)}")
    if arr.dtype.kind not in "iu":
        raise ValueError(f"{name} must have an integer dtype, got {arr.dtype}")
    if arr.dtype.kind == "u" and arr.size and int(arr.max()) > INT64_MAX:
        raise ValueError(f"{name} has values up to {int(arr.max())}, which overflow int64 indices")
    if not copy:
        return arr
    if arr.dtype not in (np.int32, np.int64):
        arr = arr.astype(np.int64)
    # Copy before checking: the graph owns its arrays, so later changes by the caller (even
    # from another thread, between the check and the use) cannot break it.
    return sealed(arr) if xp is np else arr.copy()


def _edge_arrays(src: Any, dst: Any) -> tuple[np.ndarray, np.ndarray, int, int]:
    """``(src, dst, max_src, max_dst)``: the edge lists as validated 1-D host integer arrays
    (not copied, any integer dtype) and their largest ids (-1 when empty); ``dst=None``
    splits a ``(2, E)`` ``src``."""
    host = (lambda a: a if isinstance(a, (list, tuple)) else to_numpy(a))
    if dst is None:
        edge_index = _as_index_array("edge_index", host(src), np, ndim=2, copy=False)
        if edge_index.shape[0] != 2:
            raise ValueError(f"edge_index must have shape (2, E), got {edge_index.shape}")
        src, dst = edge_index[0], edge_index[1]
    else:
        src = _as_index_array("src", host(src), np, copy=False)
        dst = _as_index_array("dst", host(dst), np, copy=False)
    if src.shape != dst.shape:
        raise ValueError(f"src and dst must have the same length, got {src.shape[0]} and {dst.shape[0]}")
    for name, a in (("src", src), ("dst", dst)):
        if a.size and int(a.min()) < 0:
            raise ValueError(f"{name} must be non-negative, got {int(a.min())}")
    return src, dst, (int(src.max()) if src.size else -1), (int(dst.max()) if dst.size else -1)


def _owned_ids(name: str, a: np.ndarray, n: int, dtype: np.dtype) -> np.ndarray:
    """A C-contiguous copy of the checked ids ``a`` in ``dtype``, checked again.

    The sorting routines trust the ids, so they get a copy that the caller cannot
    change (even from another thread) after the check; the copy is checked again, as the
    caller may have changed ``a`` between the first check and the copy.
    """
    out = a.astype(dtype, order="C", copy=True)
    if out.size and (int(out.min()) < 0 or int(out.max()) >= n):
        raise ValueError(f"{name} changed while the graph was being built from it")
    return out


def _edge_shape(max_src: int, max_dst: int, num_src: Any, num_dst: Any) -> tuple[int, int]:
    """``(n_dst, n_src)``: both counts as given, one count for a square graph, or PyG's inference."""
    if num_src is None and num_dst is None:
        num_src = num_dst = max(max_src, max_dst) + 1
    elif num_src is None or num_dst is None:
        num_src = num_dst = num_src if num_dst is None else num_dst
    return _check_shape((num_dst, num_src))


def _raise_repeated(perm: np.ndarray, repeat: np.ndarray, src: np.ndarray, dst: np.ndarray) -> None:
    """Raise the ``duplicates="error"`` error for the earliest input edge that repeats a pair."""
    first = int(perm[repeat].min())
    raise ValueError(f"edge {first} (src={int(src[first])}, dst={int(dst[first])}) "
                     f"repeats an earlier edge; pass duplicates='keep' (multi-edges) or 'merge'")


def _lexsorted(src: np.ndarray, dst: np.ndarray, duplicates: str) -> tuple[np.ndarray, np.ndarray]:
    """``(indices, perm)`` of the edges in CSR order by a stable ``lexsort`` (repeats dropped
    unless ``duplicates="keep"``); the fallback of the counting sort."""
    perm = np.lexsort((src, dst))  # stable: copies of an edge keep their input order
    indices, rows = src[perm], dst[perm]
    if indices.size and duplicates != "keep":
        repeat = np.zeros(indices.shape[0], dtype=bool)
        repeat[1:] = (indices[1:] == indices[:-1]) & (rows[1:] == rows[:-1])
        if duplicates == "error" and repeat.any():
            _raise_repeated(perm, repeat, src, dst)
        indices, perm = indices[~repeat], perm[~repeat]
    return indices, perm


class CSRGraph:
    """A graph in CSR form: column indices sorted (non-decreasing) in each row.

    Parameters
    ----------
    indptr : array of int, shape (n_dst + 1,)
        Row pointers.
    indices : array of int, shape (nnz,)
        Source node of each edge, sorted within each row; a repeated source is a
        multi-edge (each copy has its own score and softmax term, as in PyG and DGL).
    shape : tuple of int
        ``(n_dst, n_src)``.

    Notes
    -----
    The raw constructor validates strictly and rejects unsorted rows and every other
    malformed input; use :meth:`from_scipy` or :meth:`from_edge_index` to sort. The index
    dtype of the arrays given (int32 or int64) is kept when the sizes fit it, so
    tests can exercise both; other integer dtypes become int64.

    A graph is immutable: ``indptr``, ``indices`` and ``shape`` cannot be reassigned,
    and on the host its arrays and every cached structure (``transposed()``,
    ``row_ids()``, whatever ``cached`` stores) are read-only, in memory whose
    ``writeable`` flag cannot be set back to True. CuPy arrays have no such flag:
    the arrays of a graph on the GPU must not be modified.
    """

    __slots__ = ("_indptr", "_indices", "_shape", "_transposed", "_row_ids", "_other")

    def __init__(self, indptr: Any, indices: Any, shape: tuple[int, int]) -> None:
        kind = array_kind(indptr) or array_kind(indices) or "numpy"
        xp = _namespace(kind)
        n_dst, n_src = _check_shape(shape)
        indptr = _as_index_array("indptr", indptr, xp)
        indices = _as_index_array("indices", indices, xp)
        if array_kind(indptr) != array_kind(indices):
            raise TypeError("indptr and indices must both be NumPy arrays or both be CuPy arrays")
        check_csr(indptr, indices, (n_dst, n_src), name="CSRGraph", sorted_rows=True, dims=("n_dst", "n_src"))
        dtype = np.promote_types(indptr.dtype, indices.dtype)
        if dtype == np.int32 and max(n_dst, n_src, int(indices.shape[0])) > INT32_MAX:
            dtype = np.dtype(np.int64)
        self._init(indptr.astype(dtype, copy=False), indices.astype(dtype, copy=False), (n_dst, n_src))

    def _init(self, indptr: Any, indices: Any, shape: tuple[int, int]) -> None:
        _set = object.__setattr__
        _set(self, "_indptr", sealed(indptr))
        _set(self, "_indices", sealed(indices))
        _set(self, "_shape", (int(shape[0]), int(shape[1])))
        _set(self, "_transposed", None)
        _set(self, "_row_ids", None)
        _set(self, "_other", {})

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"CSRGraph is immutable: cannot set {name!r}; build a new graph instead")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"CSRGraph is immutable: cannot delete {name!r}")

    def __copy__(self) -> "CSRGraph":
        return self

    def __deepcopy__(self, memo: Any) -> "CSRGraph":
        return self

    def __reduce__(self) -> Any:
        return (CSRGraph, (to_numpy(self._indptr), to_numpy(self._indices), self._shape))

    @classmethod
    def _trusted(cls, indptr: Any, indices: Any, shape: tuple[int, int]) -> "CSRGraph":
        """Build without validation from arrays known to be canonical (internal)."""
        g = cls.__new__(cls)
        g._init(indptr, indices, shape)
        return g

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_scipy(cls, A: Any, *, index_dtype: Any = None) -> "CSRGraph":
        """Build from any scipy.sparse matrix or array; stored entries are edges.

        Entries are sorted and duplicate entries merged into one edge (SciPy's meaning:
        duplicates are summed into one entry). Explicitly stored zeros count
        as edges (the structure, not the values, defines the graph).
        """
        import scipy.sparse as sp

        if not sp.issparse(A):
            raise TypeError(f"A must be a scipy.sparse matrix or array, got {type(A).__name__}")
        if len(A.shape) != 2:
            raise ValueError(f"A must be 2-D, got shape {A.shape}")
        # SciPy checks only O(1) properties when it builds a CSR/CSC/BSR matrix, and its
        # conversions trust indptr/indices: check them fully before anything reads them.
        if A.format in ("csr", "csc") and _build.sparsetools() is not None:
            return cls._from_compressed(A, index_dtype)
        if A.format == "csr":
            check_csr(A.indptr, A.indices, A.shape, name="A", dims=("A.shape[0]", "A.shape[1]"))
            rows, cols = _row_ids(A.indptr, np.int64), A.indices
        elif A.format == "csc":
            check_csr(A.indptr, A.indices, A.shape[::-1], name="A", dims=("A.shape[1]", "A.shape[0]"))
            rows, cols = A.indices, _row_ids(A.indptr, np.int64)
        else:
            if A.format == "bsr":
                (R, C), (M, N) = A.blocksize, A.shape
                check_csr(A.indptr, A.indices, (M // R, N // C), name="A", data=A.data,
                          dims=("n_block_rows", "n_block_cols"))
            coo = A.tocoo()
            rows, cols = coo.row, coo.col
        return cls.from_edge_index(cols, rows, num_src=A.shape[1], num_dst=A.shape[0], index_dtype=index_dtype,
                                   duplicates="merge")

    @classmethod
    def _from_compressed(cls, A: Any, index_dtype: Any) -> "CSRGraph":
        """:meth:`from_scipy` of a CSR or CSC matrix without a global sort: sorted rows are
        kept, unsorted ones sorted row by row, a CSC transposed by one counting sort;
        then repeated entries are merged in one pass."""
        n_dst, n_src = (int(n) for n in A.shape)
        by_rows = A.format == "csr"
        # Check sealed copies (no copy when A already holds sealed arrays): the routines
        # below trust them, so the caller must not be able to change them after the check.
        indptr, indices = sealed(np.asarray(A.indptr)), sealed(np.asarray(A.indices))
        if by_rows:
            check_csr(indptr, indices, (n_dst, n_src), name="A", dims=("A.shape[0]", "A.shape[1]"))
        else:
            check_csr(indptr, indices, (n_src, n_dst), name="A", dims=("A.shape[1]", "A.shape[0]"))
        work = _build.work_dtype(n_dst, n_src, int(indices.shape[0]))
        indptr, indices = indptr.astype(work, copy=False), indices.astype(work, copy=False)
        if not by_rows:  # one stable transposition sorts the rows of a CSC
            no_payload = np.zeros(indices.shape[0], dtype=np.int8)
            indptr, indices, _ = _build.transpose(indptr, indices, n_dst, no_payload)
        elif _build.rows_unsorted(indptr, indices):
            indices = _build.sort_rows(indptr, indices)
        indptr, indices, _ = _build.drop(indptr, indices, None, _build.repeated(indptr, indices))
        dtype = _resolve_index_dtype(index_dtype, n_dst, n_src, indices.shape[0])
        check_host_allocation((n_dst + 1) * (dtype.itemsize + 8), f"a graph of {n_dst} destination nodes")
        return cls._trusted(indptr.astype(dtype, copy=False), indices.astype(dtype, copy=False), (n_dst, n_src))

    @classmethod
    def from_edge_index(cls, src: Any, dst: Any = None, num_src: int | None = None,
                        num_dst: int | None = None, *, index_dtype: Any = None, duplicates: str = "keep",
                        return_perm: bool = False) -> "CSRGraph | tuple[CSRGraph, np.ndarray]":
        """Build from edges ``src[e] -> dst[e]`` (or PyG's ``edge_index``), sorted into CSR order.

        Parameters
        ----------
        src, dst : array of int, shape (E,)
            Source and destination node of each edge. With ``dst`` omitted, ``src`` is
            one ``(2, E)`` array: PyG's ``edge_index``, sources in row 0 and targets
            (the nodes that attend) in row 1.
        num_src, num_dst : int, optional
            Node counts. With both, the graph is ``(num_dst, num_src)`` (bipartite
            when they differ); with one of them, square of that size; with neither,
            square with ``max id + 1`` nodes over both sides, as PyG infers it (0 when
            there are no edges).
        index_dtype : dtype, optional
            int32 or int64; by default the smallest that fits.
        duplicates : {"keep", "merge", "error"}
            A repeated ``(src, dst)`` pair is a multi-edge: ``"keep"`` keeps every copy
            as its own edge (its own score and softmax term, as in PyG and DGL),
            ``"merge"`` keeps the first, ``"error"`` raises ``ValueError`` naming the
            first repeated pair.
        return_perm : bool
            Also return ``perm`` (int64, one per stored edge): ``perm[c]`` is the input
            position of the edge stored at CSR position ``c``, so ``edge_attr[perm]``
            puts per-edge data into CSR order (e.g. for ``edge_bias``) and
            ``w_csr[argsort(perm)]`` (without merged edges) gives back the input order.

        Returns
        -------
        CSRGraph, or (CSRGraph, ndarray) with ``return_perm=True``.
        """
        if duplicates not in ("keep", "merge", "error"):
            raise ValueError(f"duplicates must be 'keep', 'merge' or 'error', got {duplicates!r}")
        src, dst, max_src, max_dst = _edge_arrays(src, dst)
        n_dst, n_src = _edge_shape(max_src, max_dst, num_src, num_dst)
        for name, top, n in (("src", max_src, n_src), ("dst", max_dst, n_dst)):
            if top >= n:
                raise ValueError(f"{name} has node id {top}, out of range for {n} nodes")
        nnz = int(src.shape[0])
        work = _build.work_dtype(n_dst, n_src, nnz)
        src, dst = _owned_ids("src", src, n_src, work), _owned_ids("dst", dst, n_dst, work)
        if _build.use_counting_sort(n_dst, n_src, nnz):
            indptr, indices, perm = _build.sort_edges(src, dst, n_dst, n_src, with_perm=return_perm)
            if duplicates != "keep":
                repeat = _build.repeated(indptr, indices)
                if duplicates == "error" and repeat.any():
                    _raise_repeated(_build.sort_edges(src, dst, n_dst, n_src, with_perm=True)[2], repeat, src, dst)
                indptr, indices, perm = _build.drop(indptr, indices, perm, repeat)
        else:  # few edges among many nodes: a comparison sort beats O(nodes) counting
            indptr, indices, perm = None, *_lexsorted(src, dst, duplicates)
        dtype = _resolve_index_dtype(index_dtype, n_dst, n_src, indices.shape[0])
        check_host_allocation((n_dst + 1) * (dtype.itemsize + 8), f"a graph of {n_dst} destination nodes")
        if indptr is None:
            indptr = np.zeros(n_dst + 1, dtype=dtype)
            np.cumsum(np.bincount(dst[perm], minlength=n_dst), out=indptr[1:])
        g = cls._trusted(indptr.astype(dtype, copy=False), indices.astype(dtype, copy=False), (n_dst, n_src))
        return (g, perm.astype(np.int64, copy=False)) if return_perm else g

    # ------------------------------------------------------------------ properties
    @property
    def indptr(self) -> Any:
        """Row pointers, shape ``(n_dst + 1,)`` (read-only)."""
        return self._indptr

    @property
    def indices(self) -> Any:
        """Source node of every edge in CSR order, shape ``(nnz,)`` (read-only)."""
        return self._indices

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_dst, n_src)``."""
        return self._shape

    @property
    def n_dst(self) -> int:
        """Number of destination nodes (rows)."""
        return self.shape[0]

    @property
    def n_src(self) -> int:
        """Number of source nodes (columns)."""
        return self.shape[1]

    @property
    def nnz(self) -> int:
        """Number of edges."""
        return int(self.indices.shape[0])

    @property
    def index_dtype(self) -> np.dtype:
        """The dtype of ``indptr`` and ``indices`` (int32 or int64)."""
        return np.dtype(self.indices.dtype)

    @property
    def device(self) -> str:
        """``"numpy"`` or ``"cupy"``: where the arrays live."""
        return array_kind(self.indices) or "numpy"

    def __repr__(self) -> str:
        return (f"CSRGraph(shape={self.shape}, nnz={self.nnz}, index_dtype={self.index_dtype}, "
                f"device={self.device!r})")

    # ------------------------------------------------------------------ derived structures
    def degrees(self) -> Any:
        """In-degree of every destination node (row lengths)."""
        return self.indptr[1:] - self.indptr[:-1]

    def row_ids(self) -> Any:
        """Destination node of every edge in CSR order (cached), shape (nnz,)."""
        if self._row_ids is None:
            object.__setattr__(self, "_row_ids", sealed(_row_ids(self.indptr, self.index_dtype)))
        return self._row_ids

    def transposed(self) -> tuple[Any, Any, Any]:
        """The transposed structure that source-side backward passes use (cached).

        Returns
        -------
        t_indptr : array, shape (n_src + 1,)
            Column pointers.
        t_indices : array, shape (nnz,)
            For each source node, its destination nodes in increasing order.
        t_perm : array, shape (nnz,)
            CSR position of each of those edges: ``indices[t_perm[p]]`` is the
            source node that owns position ``p``.
        """
        if self._transposed is None:
            rows = self._row_ids  # reuse the edge rows when already cached; never cache them here
            t = transpose_csr(self.indptr, self.indices, self.n_src, self.index_dtype, rows=rows)
            object.__setattr__(self, "_transposed", _seal_all(t))
        return self._transposed

    def cached(self, key: str, build: Any) -> Any:
        """Return ``build()`` cached on this graph under ``key`` (for backends' own structures).

        What is stored is made immutable like the graph: every NumPy array in it (also
        inside tuples, lists, dicts and dataclasses) becomes a read-only array that
        cannot be made writeable again (arrays already so are kept without a copy);
        lists become tuples and dicts read-only mappings.

        :meth:`to` carries the entries to the other device, their arrays converted (and
        sealed on the host), except those of host-only backends (keys starting with one
        of :data:`HOST_ONLY_CACHES`) when moving to the GPU.
        """
        if key not in self._other:
            self._other[key] = _seal_all(build())
        return self._other[key]

    # ------------------------------------------------------------------ transformations
    def with_self_loops(self, *, replace: bool = False) -> "CSRGraph":
        """Return a new graph with a self-loop ``(i, i)`` on every node that lacks one.

        For a non-square graph ``(n_dst, n_src)`` these are the loops ``i < min(n_dst, n_src)``,
        as PyG's ``add_self_loops`` does for a bipartite pair. Multi-edges are kept.

        Parameters
        ----------
        replace : bool
            False (default): existing loops stay (a node with two loops keeps both) and
            only missing ones are added. True: every existing loop is removed first and
            exactly one loop per node added, PyG's ``GATConv`` rule
            (``remove_self_loops`` then ``add_self_loops``).
        """
        return self_loops_with_edge_ids(self, replace=replace, edge_ids=False)[0].to(self.device)

    def with_index_dtype(self, dtype: Any) -> "CSRGraph":
        """Return the same graph with int32 or int64 index arrays."""
        dtype = _resolve_index_dtype(dtype, self.n_dst, self.n_src, self.nnz)
        if dtype == self.index_dtype:
            return self
        return CSRGraph._trusted(self.indptr.astype(dtype), self.indices.astype(dtype), self.shape)

    def to(self, device: str) -> "CSRGraph":
        """Return the graph on ``"numpy"`` (host) or ``"cupy"`` (GPU); itself if already there.

        The cached structures that exist (``transposed()``, ``row_ids()``, the entries of
        :meth:`cached`) are converted too, not rebuilt; on the host they are sealed like
        the graph's own arrays.
        """
        if device not in ("numpy", "cupy"):
            raise ValueError(f"device must be 'numpy' or 'cupy', got {device!r}")
        if device == self.device:
            return self
        if device == "cupy":
            try:
                import cupy
            except ImportError as exc:
                raise ValueError("device='cupy' needs CuPy, which is not installed "
                                 "(pip install 'sparsegat[cuda12]')") from exc
            move = cupy.asarray
        else:
            move = to_numpy
        g = CSRGraph._trusted(move(self.indptr), move(self.indices), self.shape)
        _carry_caches(self, g, move, device)
        return g

    def to_scipy(self) -> Any:
        """Return the structure as a ``scipy.sparse.csr_matrix`` with unit values.

        Each copy of a multi-edge is its own stored entry (SciPy sums them when it
        converts to dense or canonical form).
        """
        import scipy.sparse as sp

        indptr, indices = to_numpy(self.indptr), to_numpy(self.indices)
        return sp.csr_matrix((np.ones(indices.shape[0]), indices, indptr), shape=self.shape)


def self_loops_with_edge_ids(g: CSRGraph, *, replace: bool = True,
                             edge_ids: bool = True) -> tuple[CSRGraph, np.ndarray | None]:
    """``g.with_self_loops(replace=replace)`` on the host, and where its edges come from.

    One merge pass over the sorted rows (no sort): the loops go in after each row's
    columns below ``i``, the other edges keep their order.

    Parameters
    ----------
    g : CSRGraph
        On either device (the result is on the host).
    replace : bool
        As :meth:`CSRGraph.with_self_loops`.
    edge_ids : bool
        Also return the map back to ``g``.

    Returns
    -------
    graph : CSRGraph
        On the host, in ``g``'s index dtype.
    ids : ndarray of int64 or None
        ``(graph.nnz,)``: the CSR position in ``g`` of every edge, -1 for an added loop
        (``None`` without ``edge_ids``).
    """
    n_dst, n_src = g.shape
    indptr, indices, ids = _build.with_self_loops(to_numpy(g.indptr), to_numpy(g.indices), g.shape,
                                                  replace=bool(replace), edge_ids=edge_ids)
    dtype = _resolve_index_dtype(g.index_dtype, n_dst, n_src, indices.shape[0])
    out = CSRGraph._trusted(indptr.astype(dtype), indices.astype(dtype, copy=False), g.shape)
    return out, ids


#: Key prefixes of :meth:`CSRGraph.cached` entries that only host backends read:
#: :meth:`CSRGraph.to` leaves them behind when it moves a graph to the GPU.
HOST_ONLY_CACHES = ("numba.",)


def transpose_csr(indptr: Any, indices: Any, n_src: int, dtype: Any, rows: Any = None) -> tuple[Any, Any, Any]:
    """``(t_indptr, t_indices, t_perm)`` of a CSR structure, computed on its own device.

    Parameters
    ----------
    indptr, indices : array of int
        A valid CSR structure, rows sorted (NumPy or CuPy; computed with that namespace).
    n_src : int
        Number of columns.
    dtype : dtype
        Index dtype of the results (int32 or int64, large enough for the sizes).
    rows : array, optional
        The row of every edge (``row_ids(indptr)``), when already at hand.

    Returns
    -------
    tuple of arrays
        As :meth:`CSRGraph.transposed`. The sort by column is stable: the edges of a
        column keep their CSR order (destinations never decrease), and NumPy and CuPy
        give the same arrays.
    """
    xp = _namespace(indices)
    dtype = np.dtype(dtype)
    if xp is np and _build.sparsetools() is not None:  # a counting sort, stable like the one below
        work = np.promote_types(indptr.dtype, indices.dtype)
        t = _build.transpose(np.ascontiguousarray(indptr, dtype=work), np.ascontiguousarray(indices, dtype=work),
                             n_src)
        return tuple(a.astype(dtype, copy=False) for a in t)
    # A stable sort keeps CSR order among the edges of a column. CuPy's argsort is always
    # stable (documented since CuPy 7; older releases take no ``kind``).
    order = xp.argsort(indices, kind="stable") if xp is np else xp.argsort(indices)
    t_perm = order.astype(dtype)
    # Column pointers by searching the sorted columns, not bincount: cupy.bincount reads
    # max(x) first, which fails on an empty array, and its atomics serialise on hub columns.
    # Columns 0..n_src-1 only (n_src itself may not fit the index dtype); the end is nnz.
    starts = xp.searchsorted(indices[order], xp.arange(n_src, dtype=indices.dtype), side="left")
    del order
    t_indptr = xp.concatenate([starts.astype(dtype), xp.full((1,), indices.shape[0], dtype=dtype)])
    if rows is None:
        rows = _row_ids(indptr, dtype)
    return t_indptr, rows[t_perm].astype(dtype, copy=False), t_perm


def _carry_caches(src: CSRGraph, dst: CSRGraph, move: Any, device: str) -> None:
    """Give ``dst`` (``src`` moved to ``device`` by ``move``) the converted caches of ``src``."""
    _set = object.__setattr__
    if src._transposed is not None:
        _set(dst, "_transposed", _seal_all(_moved(src._transposed, move, device)))
    if src._row_ids is not None:
        _set(dst, "_row_ids", sealed(move(src._row_ids)))
    for key, value in src._other.items():
        if device == "cupy" and key.startswith(HOST_ONLY_CACHES):
            continue
        dst._other[key] = _seal_all(_moved(value, move, device))


def _moved(obj: Any, move: Any, device: str) -> Any:
    """``obj`` with every array in it (tuples, dicts, dataclasses, graphs) moved by ``move``."""
    import dataclasses
    import types

    if isinstance(obj, CSRGraph):
        return obj.to(device)
    if array_kind(obj) is not None:
        return move(obj)
    if isinstance(obj, tuple):
        items = [_moved(x, move, device) for x in obj]
        return type(obj)(*items) if hasattr(obj, "_fields") else tuple(items)
    if isinstance(obj, list):
        return [_moved(x, move, device) for x in obj]
    if isinstance(obj, (dict, types.MappingProxyType)):
        return {k: _moved(v, move, device) for k, v in obj.items()}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        changes = {f.name: _moved(getattr(obj, f.name), move, device) for f in dataclasses.fields(obj) if f.init}
        return dataclasses.replace(obj, **changes)
    return obj


def _resolve_index_dtype(index_dtype: Any, n_dst: int, n_src: int, nnz: int) -> np.dtype:
    needed = choose_index_dtype(n_dst, n_src, nnz)
    if index_dtype is None:
        return needed
    try:
        dtype = np.dtype(index_dtype)
    except TypeError:
        raise ValueError(f"index_dtype must be int32 or int64, got {index_dtype!r}") from None
    if dtype not in (np.int32, np.int64):
        raise ValueError(f"index_dtype must be int32 or int64, got {dtype}")
    if dtype == np.int32 and needed == np.int64:
        raise ValueError(f"index_dtype int32 overflows for shape ({n_dst}, {n_src}) with {nnz} edges")
    return dtype
