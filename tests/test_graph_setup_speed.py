"""The linear-time graph builders (sparsegat/_graph_build.py) against straightforward oracles.

``from_edge_index``, ``from_scipy``, ``with_self_loops`` and ``transposed`` sort with
SciPy's stable counting sorts and merge passes; the oracles below sort with
``np.lexsort``/``np.argsort(kind="stable")`` as the library once did. Every builder is
run along each of its paths: the counting sort, the ``lexsort`` fallback (many nodes,
few edges) and the pure NumPy fallback (without SciPy's private routines), and must
give bitwise the same arrays, dtypes, ``perm`` and errors.
"""

from __future__ import annotations

import contextlib
import re

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsegat import CSRGraph
from sparsegat import _graph_build as build

from strategies import INDEX_DTYPES, csr_graphs

PATHS = ("counting", "lexsort", "no_sparsetools")


@contextlib.contextmanager
def build_path(path):
    """Force one path of the builders: ``counting`` always, ``lexsort`` for every edge
    list (SciPy's routines still transpose), or ``no_sparsetools`` (NumPy only)."""
    saved = build.SPARSETOOLS, build.NODES_PER_EDGE, build.MIN_COUNTING_NODES
    try:
        if path == "counting":
            build.NODES_PER_EDGE, build.MIN_COUNTING_NODES = 1 << 40, 1 << 40
        elif path == "lexsort":
            build.NODES_PER_EDGE, build.MIN_COUNTING_NODES = 0, -1
        else:
            build.SPARSETOOLS = None
        yield
    finally:
        build.SPARSETOOLS, build.NODES_PER_EDGE, build.MIN_COUNTING_NODES = saved


# ---------------------------------------------------------------------------- oracles
def oracle_csr(src, dst, n_dst, duplicates="keep"):
    """``(indptr, indices, perm)`` by a stable lexsort, or the ``duplicates="error"`` message."""
    src, dst = np.asarray(src, dtype=np.int64), np.asarray(dst, dtype=np.int64)
    perm = np.lexsort((src, dst))
    s, d = src[perm], dst[perm]
    if duplicates != "keep" and s.size:
        rep = np.concatenate([[False], (s[1:] == s[:-1]) & (d[1:] == d[:-1])])
        if duplicates == "error" and rep.any():
            first = int(perm[rep].min())
            return (f"edge {first} (src={int(src[first])}, dst={int(dst[first])}) repeats an earlier edge; "
                    f"pass duplicates='keep' (multi-edges) or 'merge'")
        s, d, perm = s[~rep], d[~rep], perm[~rep]
    indptr = np.concatenate([[0], np.cumsum(np.bincount(d, minlength=n_dst))])
    return indptr, s, perm


def graph_rows(g):
    return np.repeat(np.arange(g.n_dst), np.diff(np.asarray(g.indptr)))


def oracle_self_loops(g, replace):
    """``(indptr, indices)`` of ``g.with_self_loops(replace=replace)`` by a lexsort of the edge list."""
    rows, cols = graph_rows(g), np.asarray(g.indices, dtype=np.int64)
    m = min(g.shape)
    if replace:
        keep = cols != rows
        rows, cols, add = rows[keep], cols[keep], np.arange(m)
    else:
        has = np.zeros(m, dtype=bool)
        has[rows[(cols == rows) & (rows < m)]] = True
        add = np.flatnonzero(~has)
    indptr, indices, _ = oracle_csr(np.concatenate([cols, add]), np.concatenate([rows, add]), g.n_dst)
    return indptr, indices


def oracle_transposed(g):
    indices = np.asarray(g.indices)
    order = np.argsort(indices, kind="stable")
    t_indptr = np.concatenate([[0], np.cumsum(np.bincount(indices, minlength=g.n_src))])
    return t_indptr, graph_rows(g)[order], order


def assert_graph(g, indptr, indices, shape, dtype):
    assert g.shape == shape and g.index_dtype == dtype
    assert g.indptr.dtype == dtype and g.indices.dtype == dtype
    np.testing.assert_array_equal(g.indptr, indptr)
    np.testing.assert_array_equal(g.indices, indices)
    assert not g.indptr.flags.writeable and not g.indices.flags.writeable


# ---------------------------------------------------------------------------- strategies
@st.composite
def edge_lists(draw, max_n=12, max_edges=40):
    """``(src, dst, n_dst, n_src)``: ids from a small range (so that pairs repeat), any
    integer input dtype, square or bipartite, empty graphs and empty edge lists included."""
    n_dst = draw(st.integers(0, max_n))
    n_src = draw(st.one_of(st.just(n_dst), st.integers(0, max_n)))
    n_edges = draw(st.integers(0, max_edges)) if n_dst and n_src else 0
    src = draw(st.lists(st.integers(0, max(n_src - 1, 0)), min_size=n_edges, max_size=n_edges))
    dst = draw(st.lists(st.integers(0, max(n_dst - 1, 0)), min_size=n_edges, max_size=n_edges))
    dtype = draw(st.sampled_from([np.int32, np.int64, np.uint16, np.int8]))
    return np.array(src, dtype=dtype), np.array(dst, dtype=dtype), n_dst, n_src


# ---------------------------------------------------------------------------- from_edge_index
@pytest.mark.parametrize("path", PATHS)
@settings(max_examples=40, deadline=None)
@given(edges=edge_lists(), duplicates=st.sampled_from(["keep", "merge", "error"]),
       index_dtype=st.sampled_from([None, np.int32, np.int64]), return_perm=st.booleans())
def test_from_edge_index_matches_lexsort(path, edges, duplicates, index_dtype, return_perm):
    src, dst, n_dst, n_src = edges
    src_before, dst_before = src.copy(), dst.copy()
    expected = oracle_csr(src, dst, n_dst, duplicates)
    with build_path(path):
        call = lambda: CSRGraph.from_edge_index(src, dst, num_src=n_src, num_dst=n_dst, index_dtype=index_dtype,
                                                duplicates=duplicates, return_perm=return_perm)
        if isinstance(expected, str):
            with pytest.raises(ValueError, match=re.escape(expected)):
                call()
            return
        out = call()
    g, perm = out if return_perm else (out, None)
    assert_graph(g, expected[0], expected[1], (n_dst, n_src), np.dtype(index_dtype or np.int32))
    if return_perm:
        assert perm.dtype == np.int64
        np.testing.assert_array_equal(perm, expected[2])
    np.testing.assert_array_equal(src, src_before)  # the caller's arrays are never modified
    np.testing.assert_array_equal(dst, dst_before)


@pytest.mark.parametrize("path", PATHS)
@settings(max_examples=25, deadline=None)
@given(edges=edge_lists())
def test_edge_index_forms_agree(path, edges):
    """PyG's ``(2, E)`` array (also a Fortran-ordered one, and node counts inferred), strided
    and byte-swapped arrays all give the graph of the plain lists."""
    src, dst, _, _ = edges
    n = max(src.tolist() + dst.tolist(), default=-1) + 1
    expected = oracle_csr(src, dst, n)
    with build_path(path):
        forms = [
            CSRGraph.from_edge_index(np.stack([src, dst]), return_perm=True),
            CSRGraph.from_edge_index(np.asfortranarray(np.stack([src, dst])), return_perm=True),
            CSRGraph.from_edge_index(np.repeat(src, 2)[::2], np.repeat(dst, 2)[::2], return_perm=True),
            CSRGraph.from_edge_index(src.astype(">i8"), dst.astype(">i8"), return_perm=True),
            CSRGraph.from_edge_index(src.tolist(), dst.tolist(), return_perm=True),
        ]
    for g, perm in forms:
        assert_graph(g, expected[0], expected[1], (n, n), np.dtype(np.int32))
        np.testing.assert_array_equal(perm, expected[2])


@pytest.mark.parametrize("path", PATHS)
def test_from_edge_index_graph_owns_its_arrays(path):
    src, dst = np.array([2, 0, 1, 0]), np.array([1, 1, 0, 1])
    with build_path(path):
        g, perm = CSRGraph.from_edge_index(src, dst, return_perm=True)
    src[:], dst[:] = 0, 0
    np.testing.assert_array_equal(g.indptr, [0, 1, 4, 4])
    np.testing.assert_array_equal(g.indices, [1, 0, 0, 2])
    np.testing.assert_array_equal(perm, [2, 1, 3, 0])


def test_few_edges_among_many_nodes_use_lexsort():
    """A huge node count with few edges neither allocates per-node sorting buckets nor
    changes the result."""
    n = 10**7
    assert not build.use_counting_sort(n, n, 3)
    g, perm = CSRGraph.from_edge_index([n - 1, 5, 5], [7, n - 2, 7], num_src=n, num_dst=n, return_perm=True)
    assert g.indptr[8] == 2 and list(g.indices) == [5, n - 1, 5]
    np.testing.assert_array_equal(perm, [2, 0, 1])


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("shape", [(0, 0), (0, 4), (4, 0), (3, 3), (2, 5)])
def test_empty_edge_lists(path, shape):
    n_dst, n_src = shape
    with build_path(path):
        for duplicates in ("keep", "merge", "error"):
            g, perm = CSRGraph.from_edge_index([], [], num_src=n_src, num_dst=n_dst, duplicates=duplicates,
                                               return_perm=True)
            assert_graph(g, np.zeros(n_dst + 1), [], shape, np.dtype(np.int32))
            assert perm.shape == (0,) and perm.dtype == np.int64
            assert g.transposed()[0].shape == (n_src + 1,)
            h = g.with_self_loops()
            assert h.nnz == min(shape) and h.index_dtype == np.int32


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("call, message", [
    (lambda: CSRGraph.from_edge_index([0, -1], [0, 1]), "src must be non-negative, got -1"),
    (lambda: CSRGraph.from_edge_index([0, 1], [0, 5], num_src=3, num_dst=3),
     "dst has node id 5, out of range for 3 nodes"),
    (lambda: CSRGraph.from_edge_index([0, 1], [0]), "src and dst must have the same length"),
    (lambda: CSRGraph.from_edge_index([0, 1, 0], [1, 1, 1], duplicates="error", index_dtype="float32"),
     re.escape("edge 2 (src=0, dst=1) repeats an earlier edge")),
    (lambda: CSRGraph.from_edge_index([0, 1], [1, 1], index_dtype="float32"), "index_dtype must be int32 or int64"),
    (lambda: CSRGraph.from_edge_index(np.zeros((3, 2), dtype=int)), re.escape("edge_index must have shape (2, E)")),
])
def test_errors_are_unchanged(path, call, message):
    with build_path(path), pytest.raises(ValueError, match=message):
        call()


# ---------------------------------------------------------------------------- from_scipy
def unsorted_csr(src, dst, n_dst, n_src, index_dtype):
    """A CSR of the edges with each row in input order (unsorted, repeated entries apart)."""
    order = np.argsort(dst, kind="stable")
    indptr = np.concatenate([[0], np.cumsum(np.bincount(dst, minlength=n_dst))]).astype(index_dtype)
    data = np.ones(len(src))
    return sp.csr_matrix((data, src[order].astype(index_dtype), indptr), shape=(n_dst, n_src))


@pytest.mark.parametrize("path", PATHS)
@settings(max_examples=30, deadline=None)
@given(edges=edge_lists(), scipy_index_dtype=st.sampled_from(INDEX_DTYPES),
       index_dtype=st.sampled_from([None, np.int64]))
def test_from_scipy_matches_lexsort(path, edges, scipy_index_dtype, index_dtype):
    src, dst, n_dst, n_src = (x.astype(np.int64) if isinstance(x, np.ndarray) else x for x in edges)
    indptr, indices, _ = oracle_csr(src, dst, n_dst, "merge")
    A = unsorted_csr(src, dst, n_dst, n_src, scipy_index_dtype)
    coo = sp.coo_matrix((np.ones(len(src)), (dst, src)), shape=(n_dst, n_src))
    matrices = {
        "unsorted csr": A,
        "canonical csr": coo.tocsr(),
        "sorted csr with repeats": sp.csr_matrix((np.ones(len(indices) * 2), np.repeat(indices, 2),
                                                  indptr * 2), shape=(n_dst, n_src)),
        "unsorted csc": unsorted_csr(dst, src, n_src, n_dst, scipy_index_dtype).T,
        "csc": coo.tocsc(),
        "coo": coo,
        "lil": coo.tolil(),
    }
    for name, M in matrices.items():
        before = (M.indptr.copy(), M.indices.copy()) if M.format in ("csr", "csc") else None
        with build_path(path):
            g = CSRGraph.from_scipy(M, index_dtype=index_dtype)
        assert_graph(g, indptr, indices, (n_dst, n_src), np.dtype(index_dtype or np.int32))
        if before is not None:  # the matrix is not modified (SciPy's flags included)
            np.testing.assert_array_equal(M.indptr, before[0])
            np.testing.assert_array_equal(M.indices, before[1])


@pytest.mark.parametrize("path", PATHS)
def test_from_scipy_errors_are_unchanged(path):
    A = sp.csr_matrix((np.ones(3), np.array([0, 1, 7]), np.array([0, 2, 3])), shape=(2, 3))
    with build_path(path), pytest.raises(ValueError, match=r"A: indices must lie in \[0, A.shape\[1\]=3\)"):
        CSRGraph.from_scipy(A)
    B = sp.csr_matrix((np.ones(3), np.array([0, 1, 2]), np.array([0, 2, 3])), shape=(2, 3))
    B.indptr = np.array([0, 4, 3])
    with build_path(path), pytest.raises(ValueError, match="indptr must be non-decreasing"):
        CSRGraph.from_scipy(B)
    with build_path(path), pytest.raises(ValueError, match="index_dtype must be int32 or int64"):
        CSRGraph.from_scipy(sp.eye(3, format="csc"), index_dtype=np.float64)


# ---------------------------------------------------------------------------- self-loops
def loopy_graphs():
    """Graphs with and without loops: the shared strategy, and edge lists (bipartite,
    multi-edges, repeated loops) built by ``from_edge_index``."""
    from_lists = edge_lists().map(lambda e: CSRGraph.from_edge_index(e[0], e[1], num_src=e[3], num_dst=e[2]))
    return st.one_of(csr_graphs(max_n=12), csr_graphs(max_n=12, self_loops=True), from_lists)


@pytest.mark.parametrize("path", PATHS)
@settings(max_examples=40, deadline=None)
@given(g=loopy_graphs(), replace=st.booleans())
def test_with_self_loops_matches_oracle(path, g, replace):
    indptr, indices = oracle_self_loops(g, replace)
    with build_path(path):
        h = g.with_self_loops(replace=replace)
    assert_graph(h, indptr, indices, g.shape, g.index_dtype)
    with build_path(path):  # idempotent once every node has its loop
        again = h.with_self_loops(replace=replace)
    np.testing.assert_array_equal(again.indices, h.indices)


def test_with_self_loops_keeps_existing_copies_in_place():
    g = CSRGraph.from_edge_index([1, 1, 0, 2, 1], [1, 1, 1, 1, 2], num_src=3, num_dst=4)
    assert list(g.with_self_loops().indices) == [0, 0, 1, 1, 2, 1, 2]
    assert list(g.with_self_loops(replace=True).indices) == [0, 0, 1, 2, 1, 2]
    assert list(g.with_self_loops(replace=True).indptr) == [0, 1, 4, 6, 6]


# ---------------------------------------------------------------------------- transposed
@pytest.mark.parametrize("path", PATHS)
@settings(max_examples=40, deadline=None)
@given(g=csr_graphs(max_n=12))
def test_transposed_matches_stable_argsort(path, g):
    expected = oracle_transposed(g)
    with build_path(path):
        t = CSRGraph._trusted(g.indptr, g.indices, g.shape).transposed()
    for got, want in zip(t, expected):
        assert got.dtype == g.index_dtype
        np.testing.assert_array_equal(got, want)
        assert not got.flags.writeable


# ---------------------------------------------------------------------------- building blocks
@settings(max_examples=30, deadline=None)
@given(edges=edge_lists(max_n=20, max_edges=60))
def test_sort_rows(edges):
    src, dst, n_dst, n_src = (x.astype(np.int32) if isinstance(x, np.ndarray) else x for x in edges)
    A = unsorted_csr(src, dst, n_dst, n_src, np.int32)
    sorted_indices = build.sort_rows(A.indptr, A.indices)
    rows = np.repeat(np.arange(n_dst), np.diff(A.indptr))
    np.testing.assert_array_equal(sorted_indices, A.indices[np.lexsort((A.indices, rows))])
    assert build.rows_unsorted(A.indptr, A.indices) == (not np.array_equal(sorted_indices, A.indices))


@pytest.mark.parametrize("path", PATHS)
@settings(max_examples=30, deadline=None)
@given(g=loopy_graphs(), replace=st.booleans())
def test_self_loops_with_edge_ids(path, g, replace):
    """The map back to the input graph (what the ``nn`` layers cache) matches a lexsort
    of the kept edges followed by the loops."""
    from sparsegat.graph import self_loops_with_edge_ids

    rows, cols = graph_rows(g), np.asarray(g.indices, dtype=np.int64)
    kept = np.flatnonzero(cols != rows) if replace else np.arange(g.nnz)
    m = min(g.shape)
    gets_loop = np.ones(m, dtype=bool)
    if not replace:
        gets_loop[rows[cols == rows]] = False
    indptr, indices = oracle_self_loops(g, replace)
    with build_path(path):
        h, ids = self_loops_with_edge_ids(g, replace=replace)
    assert_graph(h, indptr, indices, g.shape, g.index_dtype)
    assert ids.dtype == np.int64 and ids.shape == (h.nnz,)
    np.testing.assert_array_equal(ids[ids >= 0], kept)  # the input edges, in their CSR order
    new_rows = graph_rows(h)[ids < 0]
    np.testing.assert_array_equal(new_rows, np.flatnonzero(gets_loop))  # one new loop per such row
    np.testing.assert_array_equal(np.asarray(h.indices)[ids < 0], new_rows)
