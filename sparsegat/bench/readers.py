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
    expanded to both triangles by SciPy.
anything else (``.txt``, ``.edges``, ``.el``, ``.tsv``, ``.csv``, ...)
    An edge list: one edge per line, ``src dst`` as two non-negative integers
    separated by spaces, tabs or a comma; further columns (weights) are ignored;
    lines starting with ``#`` or ``%`` and blank lines are skipped. Node ids run
    from 0; the graph is square with ``max id + 1`` nodes.

The stored entries of a matrix are the edges: row ``i`` is destination ``i``
and its columns are the sources it attends to (as in :class:`sparsegat.CSRGraph`).
In an edge list, line ``u v`` is an edge from source ``u`` to destination ``v``.
Duplicate edges are merged and rows sorted. Any unreadable or malformed file
raises :class:`ValueError` with the file name and what is wrong; CSR arrays (plain
or from SciPy) are checked by :func:`sparsegat.csr_format.check_csr` before use.
"""

from __future__ import annotations

import os
import re
import zipfile
from typing import Any

import numpy as np

from ..csr_format import check_csr, row_ids
from ..graph import CSRGraph
from .graphs import BenchGraph

MTX_SUFFIXES = (".mtx", ".mtx.gz", ".mtx.bz2", ".mm")
_SPLIT = re.compile(r"[\s,;]+")


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
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise ValueError(f"{path}: not a readable .npz file ({_reason(exc)})") from None
    if "format" in arrays:  # scipy.sparse.save_npz always writes a 'format' entry
        return _from_scipy_npz(path)
    if "indptr" in arrays and "indices" in arrays:
        return _from_csr_arrays(path, arrays)
    keys = ", ".join(sorted(arrays)) or "none"
    raise ValueError(f"{path}: .npz file holds neither a scipy.sparse matrix (save_npz) nor "
                     f"'indptr' and 'indices' arrays; its keys are: {keys}")


def _from_scipy_npz(path: str) -> CSRGraph:
    import scipy.sparse as sp

    try:
        A = sp.load_npz(path)
    except Exception as exc:  # scipy raises several types for corrupt members
        raise ValueError(f"{path}: malformed scipy.sparse .npz file ({_reason(exc)})") from None
    return _from_matrix(path, A)


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
        shape = np.asarray(arrays["shape"]).ravel()
        if shape.size != 2 or shape.dtype.kind not in "iu":
            raise ValueError(f"{path}: 'shape' must be two integers (n_dst, n_src), got {arrays['shape']!r}")
        n_dst, n_src = int(shape[0]), int(shape[1])
    check_csr(indptr, indices, (n_dst, n_src), name=path, dims=("n_dst", "n_src"))
    return CSRGraph.from_edge_index(indices.astype(np.int64), row_ids(indptr, np.int64),
                                    num_src=n_src, num_dst=n_dst)


def _read_mtx(path: str) -> CSRGraph:
    import scipy.io

    try:
        A = scipy.io.mmread(path)
    except Exception as exc:  # mmread raises ValueError, OSError, IndexError, ... on bad input
        raise ValueError(f"{path}: not a valid Matrix Market file ({_reason(exc)})") from None
    if not hasattr(A, "tocoo"):
        raise ValueError(f"{path}: Matrix Market 'array' (dense) format is not a graph; "
                         f"use the 'coordinate' format")
    return _from_matrix(path, A)


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
                try:
                    u, v = int(fields[0]), int(fields[1])
                except ValueError:
                    raise ValueError(f"{path}, line {lineno}: node ids must be integers, "
                                     f"got {text!r}") from None
                if u < 0 or v < 0:
                    raise ValueError(f"{path}, line {lineno}: node ids must be non-negative, got {text!r}")
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
    return CSRGraph.from_edge_index(np.asarray(src, dtype=np.int64), np.asarray(dst, dtype=np.int64),
                                    num_src=n, num_dst=n)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
