"""The graph: a canonical CSR structure of shape ``(n_dst, n_src)``.

Row ``i`` is destination node ``i``; its column indices are the source nodes
``j`` it attends to (messages flow ``j -> i``), as in PyG and DGL.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .arrays import array_kind, namespace as _namespace, to_numpy
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


def _as_index_array(name: str, a: Any, xp: Any) -> Any:
    """Return ``a`` as a 1-D int32/int64 array of namespace ``xp`` (a copy, sealed on the host)."""
    arr = xp.asarray(a)
    if isinstance(a, (list, tuple)) and arr.size == 0:
        arr = arr.astype(np.int64)  # an empty Python list is an empty edge list, not float data
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got an array of shape {tuple(arr.shape)}")
    if arr.dtype.kind not in "iu":
        raise ValueError(f"{name} must have an integer dtype, got {arr.dtype}")
    if arr.dtype.kind == "u" and arr.size and int(arr.max()) > INT64_MAX:
        raise ValueError(f"{name} has values up to {int(arr.max())}, which overflow int64 indices")
    if arr.dtype not in (np.int32, np.int64):
        arr = arr.astype(np.int64)
    # Copy before checking: the graph owns its arrays, so later changes by the caller (even
    # from another thread, between the check and the use) cannot break it.
    return sealed(arr) if xp is np else arr.copy()


class CSRGraph:
    """A graph in canonical CSR form: column indices strictly increasing in each row.

    Parameters
    ----------
    indptr : array of int, shape (n_dst + 1,)
        Row pointers.
    indices : array of int, shape (nnz,)
        Source node of each edge, sorted and unique within each row.
    shape : tuple of int
        ``(n_dst, n_src)``.

    Notes
    -----
    The raw constructor validates strictly and rejects anything non-canonical;
    use :meth:`from_scipy` or :meth:`from_edge_index` to canonicalise. The index
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
        check_csr(indptr, indices, (n_dst, n_src), name="CSRGraph", canonical=True, dims=("n_dst", "n_src"))
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

        Entries are sorted and duplicates merged. Explicitly stored zeros count
        as edges (the structure, not the values, defines the graph).
        """
        import scipy.sparse as sp

        if not sp.issparse(A):
            raise TypeError(f"A must be a scipy.sparse matrix or array, got {type(A).__name__}")
        if len(A.shape) != 2:
            raise ValueError(f"A must be 2-D, got shape {A.shape}")
        # SciPy checks only O(1) properties when it builds a CSR/CSC/BSR matrix, and its
        # conversions trust indptr/indices: check them fully before anything reads them.
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
        return cls.from_edge_index(cols, rows, num_src=A.shape[1], num_dst=A.shape[0], index_dtype=index_dtype)

    @classmethod
    def from_edge_index(cls, src: Any, dst: Any, num_src: int | None = None,
                        num_dst: int | None = None, *, index_dtype: Any = None) -> "CSRGraph":
        """Build from edge lists ``src[e] -> dst[e]``; sorts and merges duplicates.

        Parameters
        ----------
        src, dst : array of int, shape (E,)
            Source and destination node of each edge.
        num_src, num_dst : int, optional
            Node counts; default ``max + 1`` of the given ids (0 when empty).
        index_dtype : dtype, optional
            int32 or int64; by default the smallest that fits.
        """
        src = _as_index_array("src", src if isinstance(src, (list, tuple)) else to_numpy(src), np)
        dst = _as_index_array("dst", dst if isinstance(dst, (list, tuple)) else to_numpy(dst), np)
        if src.shape != dst.shape:
            raise ValueError(f"src and dst must have the same length, got {src.shape[0]} and {dst.shape[0]}")
        for name, a in (("src", src), ("dst", dst)):
            if a.size and int(a.min()) < 0:
                raise ValueError(f"{name} must be non-negative, got {int(a.min())}")
        if num_src is None:
            num_src = int(src.max()) + 1 if src.size else 0
        if num_dst is None:
            num_dst = int(dst.max()) + 1 if dst.size else 0
        n_dst, n_src = _check_shape((num_dst, num_src))
        for name, a, n in (("src", src, n_src), ("dst", dst, n_dst)):
            if a.size and int(a.max()) >= n:
                raise ValueError(f"{name} has node id {int(a.max())}, out of range for {n} nodes")
        order = np.lexsort((src, dst))
        src, dst = src[order], dst[order]
        if src.size:
            keep = np.empty(src.shape[0], dtype=bool)
            keep[0] = True
            keep[1:] = (src[1:] != src[:-1]) | (dst[1:] != dst[:-1])
            src, dst = src[keep], dst[keep]
        dtype = _resolve_index_dtype(index_dtype, n_dst, n_src, src.shape[0])
        indptr = np.zeros(n_dst + 1, dtype=dtype)
        np.cumsum(np.bincount(dst, minlength=n_dst), out=indptr[1:])
        return cls._trusted(indptr, src.astype(dtype), (n_dst, n_src))

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
            indptr, indices = to_numpy(self.indptr), to_numpy(self.indices)
            dtype = self.index_dtype
            # Stable sort by source keeps destinations increasing within a column.
            t_perm = np.argsort(indices, kind="stable").astype(dtype)
            t_indptr = np.zeros(self.n_src + 1, dtype=dtype)
            np.cumsum(np.bincount(indices, minlength=self.n_src), out=t_indptr[1:])
            rows = _row_ids(indptr, dtype)
            t_indices = rows[t_perm]
            if self.device == "cupy":
                import cupy

                t_indptr, t_indices, t_perm = (cupy.asarray(a) for a in (t_indptr, t_indices, t_perm))
            object.__setattr__(self, "_transposed", _seal_all((t_indptr, t_indices, t_perm)))
        return self._transposed

    def cached(self, key: str, build: Any) -> Any:
        """Return ``build()`` cached on this graph under ``key`` (for backends' own structures).

        What is stored is made immutable like the graph: every NumPy array in it (also
        inside tuples, lists, dicts and dataclasses) becomes a read-only array that
        cannot be made writeable again (arrays already so are kept without a copy);
        lists become tuples and dicts read-only mappings.
        """
        if key not in self._other:
            self._other[key] = _seal_all(build())
        return self._other[key]

    # ------------------------------------------------------------------ transformations
    def with_self_loops(self) -> "CSRGraph":
        """Return a new graph with every missing ``(i, i)`` edge added.

        For a non-square graph ``(n_dst, n_src)`` these are the loops ``i < min(n_dst, n_src)``,
        as PyG's ``add_self_loops`` does for a bipartite pair.
        """
        n_dst, n_src = self.shape
        indptr, indices = to_numpy(self.indptr), to_numpy(self.indices)
        rows = _row_ids(indptr, np.int64)
        loops = np.arange(min(n_dst, n_src), dtype=np.int64)
        g = CSRGraph.from_edge_index(np.concatenate([indices.astype(np.int64), loops]),
                                     np.concatenate([rows, loops]),
                                     num_src=n_src, num_dst=n_dst, index_dtype=self.index_dtype)
        return g.to(self.device)

    def with_index_dtype(self, dtype: Any) -> "CSRGraph":
        """Return the same graph with int32 or int64 index arrays."""
        dtype = _resolve_index_dtype(dtype, self.n_dst, self.n_src, self.nnz)
        if dtype == self.index_dtype:
            return self
        return CSRGraph._trusted(self.indptr.astype(dtype), self.indices.astype(dtype), self.shape)

    def to(self, device: str) -> "CSRGraph":
        """Return the graph on ``"numpy"`` (host) or ``"cupy"`` (GPU); itself if already there."""
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
        if self._transposed is not None:
            object.__setattr__(g, "_transposed", _seal_all(tuple(move(a) for a in self._transposed)))
        return g

    def to_scipy(self) -> Any:
        """Return the structure as a ``scipy.sparse.csr_matrix`` with unit values."""
        import scipy.sparse as sp

        indptr, indices = to_numpy(self.indptr), to_numpy(self.indices)
        return sp.csr_matrix((np.ones(indices.shape[0]), indices, indptr), shape=self.shape)


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
