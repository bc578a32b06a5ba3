"""Read the user's own graph for ``sparsegat bench --graph FILE``.

Formats, chosen by the file name's ending:

``.npz``
    Either a matrix written by ``scipy.sparse.save_npz`` (any sparse format),
    or plain arrays ``indptr`` and ``indices`` (the layout of the data sets in
    ``docs/data.md``, e.g. ``cora.npz``), with an optional ``shape``
    array ``(n_dst, n_src)``; without it the graph is square with
    ``len(indptr) - 1`` nodes. Never unpickled.
``.mtx`` (also ``.mtx.gz``, ``.mm``)
    Matrix Market coordinate format (``scipy.io.mmread``); symmetric files are
    expanded to both triangles by SciPy. The header is checked before SciPy reads
    the file: ``array`` (dense) files, non-square symmetric, skew-symmetric or
    hermitian ones, and entry counts larger than the file can hold are refused.
anything else (``.txt``, ``.edges``, ``.el``, ``.tsv``, ``.csv``, ...)
    An edge list: one edge per line, ``src dst`` as two non-negative integers
    written with ASCII digits only (no sign, ``_`` or other scripts' digits)
    separated by spaces, tabs or a comma; further columns (weights) are ignored;
    lines starting with ``#`` or ``%`` and blank lines are skipped. Node ids run
    from 0; the graph is square with ``max id + 1`` nodes.

The stored entries of a matrix are the edges: row ``i`` is destination ``i``
and its columns are the sources it attends to (as in :class:`sparsegat.CSRGraph`).
In an edge list, line ``u v`` is an edge from source ``u`` to destination ``v``.
Duplicate edges are merged and rows sorted. Any unreadable or malformed file
raises :class:`ValueError` with the file name and what is wrong; CSR arrays (plain
or from SciPy) are checked by :func:`sparsegat.csr_format.check_csr` before use.
``.npz`` files are read by :func:`sparsegat.datasets.read_npz_arrays` (sizes checked
against the bytes present, nothing unpickled). A file may not declare more nodes than
``max(MIN_NODE_LIMIT, NODES_PER_EDGE * edges)``: sizes that no data backs (a node id
of ``2**45``, a Matrix Market size of ``2**40``) are refused before anything is allocated.
"""

from __future__ import annotations

import os
import re
from typing import Any

import numpy as np

from ..csr_format import check_csr, row_ids
from ..datasets import read_npz_arrays
from ..graph import CSRGraph
from .graphs import BenchGraph

MTX_SUFFIXES = (".mtx", ".mtx.gz", ".mtx.bz2", ".mm")
_SPLIT = re.compile(r"[\s,;]+")
_ID = re.compile(r"[0-9]+")  # ASCII digits only: int() would also take '1_0', '+1' and other scripts' digits
_INT64_MAX = (1 << 63) - 1

#: Node counts a file may declare: at most max(MIN_NODE_LIMIT, NODES_PER_EDGE * edges).
MIN_NODE_LIMIT = 1 << 24
NODES_PER_EDGE = 64
#: Bytes of the shortest Matrix Market entry line ("1 1\n"), and the most gzip can expand.
_MIN_MTX_ENTRY_BYTES = 4
_MAX_GZIP_RATIO = 1100
_SCIPY_FORMATS = ("csr", "csc", "bsr", "coo", "dia")


def check_node_counts(path: str, edges: int, **sizes: int) -> None:
    """Refuse node counts that the file's data cannot back (``ValueError``), before any allocation."""
    limit = max(MIN_NODE_LIMIT, NODES_PER_EDGE * int(edges))
    for what, n in sizes.items():
        if n > limit:
            raise ValueError(f"{path}: {what}={n} nodes for {edges} edges is too many; a graph file may have at most "
                             f"max({MIN_NODE_LIMIT}, {NODES_PER_EDGE} * edges) = {limit} nodes")


def read_graph(path: str | os.PathLike, symmetrize: bool = False) -> BenchGraph:
    """Read a graph file (``.npz``, ``.mtx`` or an edge list) into a :class:`BenchGraph`.

    Parameters
    ----------
    path : str or path-like
        The file; its ending picks the format (see the module docstring).
    symmetrize : bool
        Add the reverse of every edge (square graphs only).

    Raises
    ------
    ValueError
        The file is missing, unreadable, or not a valid graph of its format.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ValueError(f"graph file {path!r} does not exist")
    if os.path.isdir(path):
        raise ValueError(f"graph file {path!r} is a directory, not a file")
    lower = path.lower()
    if lower.endswith(".npz"):
        g, kind = _read_npz(path), "npz"
    elif lower.endswith(MTX_SUFFIXES):
        g, kind = _read_mtx(path), "mtx"
    else:
        g, kind = _read_edge_list(path), "edgelist"
    if symmetrize:
        if g.n_dst != g.n_src:
            raise ValueError(f"{path}: cannot symmetrize a non-square graph of shape {g.shape}")
        A = g.to_scipy()
        g = CSRGraph.from_scipy(A + A.T)
    name = os.path.basename(path)
    return BenchGraph(name=name, graph=g, family=f"file:{kind}", seed=None, source=os.path.abspath(path),
                      requested={"symmetrize": bool(symmetrize)})


def _read_npz(path: str) -> CSRGraph:
    arrays = read_npz_arrays(path, "a graph (.npz of scipy.sparse.save_npz, or indptr and indices arrays)")
    if "format" in arrays:  # scipy.sparse.save_npz always writes a 'format' entry
        return _from_scipy_npz(path, arrays)
    if "indptr" in arrays and "indices" in arrays:
        return _from_csr_arrays(path, arrays)
    keys = ", ".join(sorted(arrays)) or "none"
    raise ValueError(f"{path}: .npz file holds neither a scipy.sparse matrix (save_npz) nor "
                     f"'indptr' and 'indices' arrays; its keys are: {keys}")


def _from_scipy_npz(path: str, arrays: dict[str, np.ndarray]) -> CSRGraph:
    """What ``scipy.sparse.load_npz`` builds, from the arrays already read (and size-checked) once."""
    import scipy.sparse as sp

    fmt = arrays["format"]
    fmt = fmt.item() if fmt.shape == () and fmt.dtype.kind in "SU" else None
    fmt = fmt.decode("ascii", "replace") if isinstance(fmt, bytes) else fmt
    if fmt not in _SCIPY_FORMATS:
        raise ValueError(f"{path}: 'format' must name one of the sparse formats {', '.join(_SCIPY_FORMATS)}, "
                         f"got {arrays['format']!r}")
    need = {"csr": ("data", "indices", "indptr"), "csc": ("data", "indices", "indptr"),
            "bsr": ("data", "indices", "indptr"), "dia": ("data", "offsets"), "coo": ("data", "row", "col")}[fmt]
    missing = [k for k in need + ("shape",) if k not in arrays]
    if missing:
        raise ValueError(f"{path}: scipy.sparse {fmt} .npz file without the arrays {', '.join(missing)}")
    shape = _shape(path, arrays["shape"])
    data = arrays["data"]
    edges = int(data.size) if fmt in ("bsr", "dia") else int(data.shape[0]) if data.ndim else 0
    check_node_counts(path, edges, n_dst=shape[0], n_src=shape[1])
    try:
        if fmt in ("csr", "csc", "bsr"):
            cls = {"csr": sp.csr_matrix, "csc": sp.csc_matrix, "bsr": sp.bsr_matrix}[fmt]
            A = cls((data, arrays["indices"], arrays["indptr"]), shape=shape)
        elif fmt == "dia":
            A = sp.dia_matrix((data, arrays["offsets"]), shape=shape)
        else:
            A = sp.coo_matrix((data, (arrays["row"], arrays["col"])), shape=shape)
    except Exception as exc:  # scipy raises several types for malformed arrays
        raise ValueError(f"{path}: malformed scipy.sparse .npz file ({_reason(exc)})") from None
    return _from_matrix(path, A)


def _shape(path: str, a: np.ndarray) -> tuple[int, int]:
    shape = np.asarray(a).ravel()
    if shape.size != 2 or shape.dtype.kind not in "iu" or int(shape.min()) < 0:
        raise ValueError(f"{path}: 'shape' must be two non-negative integers (n_dst, n_src), got {a!r}")
    return int(shape[0]), int(shape[1])


def _from_matrix(path: str, A: Any) -> CSRGraph:
    import scipy.sparse as sp

    if not sp.issparse(A):
        raise ValueError(f"{path}: expected a sparse matrix, got a dense {type(A).__name__} "
                         f"of shape {getattr(A, 'shape', '?')}")
    if len(A.shape) != 2:
        raise ValueError(f"{path}: expected a 2-D matrix, got shape {A.shape}")
    try:
        return CSRGraph.from_scipy(A)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path}: invalid graph ({exc})") from None


def _from_csr_arrays(path: str, arrays: dict[str, np.ndarray]) -> CSRGraph:
    indptr, indices = arrays["indptr"], arrays["indices"]
    if indptr.ndim == 1 and indptr.size == 0:
        raise ValueError(f"{path}: 'indptr' is empty (it needs n_dst + 1 >= 1 entries)")
    n_dst = indptr.shape[0] - 1 if indptr.ndim == 1 else 0
    n_src = n_dst
    if "shape" in arrays:
        n_dst, n_src = _shape(path, arrays["shape"])
    check_node_counts(path, int(indices.size), n_src=n_src)  # n_dst is backed by indptr's length
    check_csr(indptr, indices, (n_dst, n_src), name=path, dims=("n_dst", "n_src"))
    return CSRGraph.from_edge_index(indices.astype(np.int64), row_ids(indptr, np.int64),
                                    num_src=n_src, num_dst=n_dst, duplicates="merge")


def _read_mtx(path: str) -> CSRGraph:
    import scipy.io

    _check_mtx_header(path)
    try:
        A = scipy.io.mmread(path)
    except Exception as exc:  # mmread raises ValueError, OSError, IndexError, ... on bad input
        raise ValueError(f"{path}: not a valid Matrix Market file ({_reason(exc)})") from None
    if not hasattr(A, "tocoo"):
        raise ValueError(f"{path}: Matrix Market 'array' (dense) format is not a graph; "
                         f"use the 'coordinate' format")
    return _from_matrix(path, A)


def _open_mtx(path: str) -> Any:
    lower = path.lower()
    if lower.endswith(".gz"):
        import gzip

        return gzip.open(path, "rb")
    if lower.endswith(".bz2"):
        import bz2

        return bz2.open(path, "rb")
    return open(path, "rb")


def _check_mtx_header(path: str) -> None:
    """Refuse what SciPy would accept silently or answer with a huge allocation: dense
    ``array`` files, non-square symmetric matrices, sizes and entry counts the file cannot hold."""
    try:
        with _open_mtx(path) as f:
            banner = f.readline(1024).decode("ascii", "replace").split()
            if len(banner) != 5 or banner[0].lower() != "%%matrixmarket" or banner[1].lower() != "matrix":
                raise ValueError(f"{path}: not a valid Matrix Market file (the first line must be "
                                 f"'%%MatrixMarket matrix coordinate FIELD SYMMETRY')")
            layout, field, symmetry = (t.lower() for t in banner[2:])
            if layout == "array":
                raise ValueError(f"{path}: Matrix Market 'array' (dense) format is not a graph; "
                                 f"use the 'coordinate' format")
            if layout != "coordinate":
                raise ValueError(f"{path}: unknown Matrix Market format {banner[2]!r} (expected 'coordinate')")
            line = f.readline(1024)
            while line and (not line.strip() or line.lstrip().startswith(b"%")):
                line = f.readline(1024)
            header_end = f.tell() if hasattr(f, "tell") else 0
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a valid Matrix Market file ({_reason(exc)})") from None
    sizes = line.split()
    if len(sizes) != 3 or not all(_ID.fullmatch(t.decode("ascii", "replace")) for t in sizes):
        raise ValueError(f"{path}: the size line must be three non-negative integers 'rows cols entries', "
                         f"got {line.strip().decode('ascii', 'replace')!r}")
    rows, cols, nnz = (int(t) for t in sizes)
    if symmetry != "general" and rows != cols:
        raise ValueError(f"{path}: a {symmetry} matrix must be square, but the header says {rows} x {cols}")
    on_disk = os.path.getsize(path)
    lower = path.lower()
    if lower.endswith(".gz"):
        room = _MAX_GZIP_RATIO * on_disk
    elif lower.endswith(".bz2"):
        room = None  # bzip2 can expand by far more; SciPy's reader stops at the end of the data
    else:
        room = on_disk - header_end
    if room is not None and nnz * _MIN_MTX_ENTRY_BYTES > room:
        raise ValueError(f"{path}: the header declares {nnz} entries, more than the file can hold "
                         f"(at most {room // _MIN_MTX_ENTRY_BYTES})")
    check_node_counts(path, nnz * (1 if symmetry == "general" else 2), rows=rows, cols=cols)


def _node_id(path: str, lineno: int, text: str, field: str) -> int:
    if not _ID.fullmatch(field):
        if field.startswith("-") and _ID.fullmatch(field[1:]):
            raise ValueError(f"{path}, line {lineno}: node ids must be non-negative, got {text!r}")
        raise ValueError(f"{path}, line {lineno}: node ids must be integers written with the ASCII "
                         f"digits 0-9, got {field!r} in {text!r}")
    if len(field) > 19 or int(field) >= _INT64_MAX:
        raise ValueError(f"{path}, line {lineno}: node id {field} is too large (ids must be below 2**63 - 1)")
    return int(field)


def _read_edge_list(path: str) -> CSRGraph:
    src: list[int] = []
    dst: list[int] = []
    try:
        with open(path, "r", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                text = line.strip()
                if not text or text[0] in "#%":
                    continue
                fields = [x for x in _SPLIT.split(text) if x]
                if len(fields) < 2:
                    raise ValueError(f"{path}, line {lineno}: expected two integer node ids "
                                     f"'src dst', got {text!r}")
                u, v = _node_id(path, lineno, text, fields[0]), _node_id(path, lineno, text, fields[1])
                src.append(u)
                dst.append(v)
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text edge list (it is not UTF-8 text); "
                         f"binary graphs must be .npz or .mtx") from None
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the file ({_reason(exc)})") from None
    if not src:
        raise ValueError(f"{path}: the edge list has no edges")
    n = max(max(src), max(dst)) + 1
    check_node_counts(path, len(src), nodes=n)
    return CSRGraph.from_edge_index(np.asarray(src, dtype=np.int64), np.asarray(dst, dtype=np.int64),
                                    num_src=n, num_dst=n, duplicates="merge")


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
