"""CSRGraph: validation (docs/contract.md, section 2), canonicalising constructors, derived structures."""

from __future__ import annotations

import importlib.util
import re

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsegat import CSRGraph
from sparsegat.graph import INT32_MAX, INT64_MAX, choose_index_dtype

from strategies import INDEX_DTYPES, csr_graphs

HAS_CUPY = importlib.util.find_spec("cupy") is not None


def edges_of(g):
    """Set of (dst, src) pairs of a graph, from its raw arrays."""
    indptr, indices = np.asarray(g.indptr), np.asarray(g.indices)
    return {(i, int(indices[p])) for i in range(g.shape[0]) for p in range(indptr[i], indptr[i + 1])}


def edge_multiset(g):
    """Sorted list of (dst, src) pairs of a graph, one per stored edge (multi-edges repeat)."""
    indptr, indices = np.asarray(g.indptr), np.asarray(g.indices)
    return sorted((i, int(indices[p])) for i in range(g.shape[0]) for p in range(indptr[i], indptr[i + 1]))


def assert_canonical(g, strict=True):
    """indptr/indices consistent and increasing within every row (strictly, unless multi-edges are allowed)."""
    indptr, indices = np.asarray(g.indptr), np.asarray(g.indices)
    assert indptr.shape == (g.shape[0] + 1,)
    assert indptr[0] == 0 and indptr[-1] == indices.shape[0] == g.nnz
    assert np.all(np.diff(indptr) >= 0)
    for i in range(g.shape[0]):
        row = indices[indptr[i]:indptr[i + 1]]
        assert np.all(np.diff(row) > 0) if strict else np.all(np.diff(row) >= 0)
        assert np.all((row >= 0) & (row < g.shape[1]))
    assert indptr.dtype == indices.dtype == g.index_dtype
    assert g.index_dtype in INDEX_DTYPES


def raises(match):
    return pytest.raises(ValueError, match=match)


# ============================================================================ raw constructor
class TestRawConstructor:
    def test_valid_graph_attributes(self):
        g = CSRGraph(np.array([0, 2, 2, 3]), np.array([0, 3, 1]), (3, 4))
        assert g.shape == (3, 4) and g.n_dst == 3 and g.n_src == 4 and g.nnz == 3
        assert np.array_equal(g.indptr, [0, 2, 2, 3]) and np.array_equal(g.indices, [0, 3, 1])
        assert np.array_equal(g.degrees(), [2, 0, 1])
        assert np.array_equal(g.row_ids(), [0, 0, 2])
        assert g.device == "numpy"
        assert "shape=(3, 4)" in repr(g) and "nnz=3" in repr(g)

    def test_lists_accepted(self):
        g = CSRGraph([0, 1, 2], [1, 0], (2, 2))
        assert edges_of(g) == {(0, 1), (1, 0)}
        assert_canonical(g)

    @pytest.mark.parametrize("dtype", INDEX_DTYPES)
    def test_index_dtype_kept(self, dtype):
        g = CSRGraph(np.array([0, 1, 2], dtype=dtype), np.array([1, 0], dtype=dtype), (2, 2))
        assert g.index_dtype == dtype
        assert g.indptr.dtype == g.indices.dtype == dtype

    @pytest.mark.parametrize("dtype", [np.int8, np.int16, np.uint8, np.uint16, np.uint32, np.uint64])
    def test_other_integer_dtypes_become_int32_or_int64(self, dtype):
        g = CSRGraph(np.array([0, 1, 2], dtype=dtype), np.array([1, 0], dtype=dtype), (2, 2))
        assert g.index_dtype in INDEX_DTYPES
        assert edges_of(g) == {(0, 1), (1, 0)}

    def test_mixed_int32_int64_arrays_give_one_dtype(self):
        g = CSRGraph(np.array([0, 1, 2], dtype=np.int32), np.array([1, 0], dtype=np.int64), (2, 2))
        assert g.indptr.dtype == g.indices.dtype
        assert g.index_dtype in INDEX_DTYPES

    def test_empty_graphs(self):
        g = CSRGraph(np.array([0]), np.array([], dtype=np.int64), (0, 0))
        assert g.shape == (0, 0) and g.nnz == 0
        g = CSRGraph(np.zeros(4, dtype=np.int64), np.array([], dtype=np.int64), (3, 0))
        assert g.shape == (3, 0) and g.nnz == 0
        g = CSRGraph(np.array([0]), np.array([], dtype=np.int32), (0, 5))
        assert g.shape == (0, 5) and g.nnz == 0

    def test_row_boundary_drop_is_allowed(self):
        # Row 0 = [1, 2], row 1 empty, row 2 = [0], row 3 = [0, 2]: canonical.
        g = CSRGraph(np.array([0, 2, 2, 3, 5]), np.array([1, 2, 0, 0, 2]), (4, 3))
        assert edges_of(g) == {(0, 1), (0, 2), (2, 0), (3, 0), (3, 2)}

    # ---------------------------------------------------------------- lengths
    def test_indptr_wrong_length(self):
        with raises(r"indptr.*n_dst \+ 1 = 4.*got 3"):
            CSRGraph(np.array([0, 1, 2]), np.array([0, 1]), (3, 2))
        with raises(r"indptr.*n_dst \+ 1 = 2.*got 3"):
            CSRGraph(np.array([0, 1, 2]), np.array([0, 1]), (1, 2))

    def test_indptr_last_not_nnz(self):
        with raises(r"indptr\[-1\]=2.*len\(indices\)=3"):
            CSRGraph(np.array([0, 1, 2]), np.array([0, 1, 1]), (2, 2))
        with raises(r"indptr\[-1\]=3.*len\(indices\)=2"):
            CSRGraph(np.array([0, 1, 3]), np.array([0, 1]), (2, 2))

    def test_empty_indptr(self):
        with pytest.raises(ValueError, match="indptr"):
            CSRGraph(np.array([], dtype=np.int64), np.array([], dtype=np.int64), (0, 0))

    def test_indptr_first_not_zero(self):
        with raises(r"indptr\[0\] must be 0, got 1"):
            CSRGraph(np.array([1, 1, 2]), np.array([0]), (2, 2))
        with raises(r"indptr\[0\] must be 0, got -1"):
            CSRGraph(np.array([-1, 0, 1]), np.array([0, 1]), (2, 2))

    def test_indptr_decreasing(self):
        with raises(r"indptr.*non-decreasing.*indptr\[2\]=1.*indptr\[1\]=3"):
            CSRGraph(np.array([0, 3, 1, 3]), np.array([0, 1, 2]), (3, 3))

    # ---------------------------------------------------------------- indices
    def test_indices_negative(self):
        with raises(r"indices.*\[0, n_src=3\).*-1"):
            CSRGraph(np.array([0, 2]), np.array([-1, 1]), (1, 3))

    def test_indices_too_large(self):
        with raises(r"indices.*\[0, n_src=3\).*got 3"):
            CSRGraph(np.array([0, 2]), np.array([0, 3]), (1, 3))
        with raises(r"indices.*n_src=0.*got 0"):
            CSRGraph(np.array([0, 1]), np.array([0]), (1, 0))

    def test_unsorted_row(self):
        with raises(r"row 1.*unsorted.*column 0 after 2.*from_scipy"):
            CSRGraph(np.array([0, 1, 3]), np.array([0, 2, 0]), (2, 3))

    def test_duplicate_in_row_is_a_multi_edge(self):
        g = CSRGraph(np.array([0, 2, 2]), np.array([1, 1]), (2, 3))
        assert g.nnz == 2 and edges_of(g) == {(0, 1)}

    def test_unsorted_after_empty_rows(self):
        # rows: [2], [], [], [2, 1]
        with raises(r"row 3.*unsorted"):
            CSRGraph(np.array([0, 1, 1, 1, 3]), np.array([2, 2, 1]), (4, 3))

    @given(g=csr_graphs(min_n=1, max_n=8), data=st.data())
    def test_any_duplicate_is_kept(self, g, data):
        deg = np.diff(g.indptr)
        rows = np.flatnonzero(deg >= 1)
        if rows.size == 0:
            return
        i = int(data.draw(st.sampled_from(rows.tolist())))
        p = int(data.draw(st.integers(int(g.indptr[i]), int(g.indptr[i + 1]) - 1)))
        indices = np.insert(np.asarray(g.indices), p, g.indices[p])
        indptr = np.asarray(g.indptr).copy()
        indptr[i + 1:] += 1
        h = CSRGraph(indptr, indices, g.shape)
        assert h.nnz == g.nnz + 1 and np.array_equal(h.indices, indices)

    @given(g=csr_graphs(min_n=2, max_n=8, multi_edges=False), data=st.data())
    def test_any_unsorted_row_is_rejected(self, g, data):
        deg = np.diff(g.indptr)
        rows = np.flatnonzero(deg >= 2)
        if rows.size == 0:
            return
        i = int(data.draw(st.sampled_from(rows.tolist())))
        lo, hi = int(g.indptr[i]), int(g.indptr[i + 1])
        a = int(data.draw(st.integers(lo, hi - 2)))
        b = int(data.draw(st.integers(a + 1, hi - 1)))
        indices = np.asarray(g.indices).copy()
        indices[[a, b]] = indices[[b, a]]
        with raises(rf"row {i}.*not sorted \(unsorted"):
            CSRGraph(np.asarray(g.indptr), indices, g.shape)

    @given(g=csr_graphs(max_n=8))
    def test_canonical_graphs_roundtrip(self, g):
        h = CSRGraph(np.asarray(g.indptr), np.asarray(g.indices), g.shape)
        assert h.shape == g.shape and h.index_dtype == g.index_dtype
        assert np.array_equal(h.indptr, g.indptr) and np.array_equal(h.indices, g.indices)
        assert_canonical(h, strict=False)

    # ---------------------------------------------------------------- shape
    @pytest.mark.parametrize("shape,pattern", [
        ((-1, 3), r"n_dst must be non-negative, got -1"),
        ((3, -2), r"n_src must be non-negative, got -2"),
        ((2.0, 3), r"n_dst must be an integer, got 2\.0"),
        ((2, "3"), r"n_src must be an integer, got '3'"),
        ((True, 3), r"n_dst must be an integer, got True"),
        ((2, 3, 4), r"shape must be a pair.*\(2, 3, 4\)"),
        (5, r"shape must be a pair.*5"),
        (None, r"shape must be a pair.*None"),
    ])
    def test_bad_shape(self, shape, pattern):
        with raises(pattern):
            CSRGraph(np.array([0, 0, 0]), np.array([], dtype=np.int64), shape)

    def test_numpy_integer_shape_accepted(self):
        g = CSRGraph(np.array([0, 1]), np.array([0]), (np.int64(1), np.int32(2)))
        assert g.shape == (1, 2) and all(type(n) is int for n in g.shape)

    def test_shape_overflow(self):
        with raises(r"n_src=.*overflows int64"):
            CSRGraph(np.array([0]), np.array([], dtype=np.int64), (0, 2**63))

    # ---------------------------------------------------------------- dtypes
    @pytest.mark.parametrize("which", ["indptr", "indices"])
    @pytest.mark.parametrize("dtype", [np.float64, np.float32, np.bool_, np.complex128])
    def test_non_integer_dtype(self, which, dtype):
        indptr, indices = np.array([0, 1, 2]), np.array([0, 1])
        args = {"indptr": indptr, "indices": indices}
        args[which] = args[which].astype(dtype) if dtype is not np.bool_ else np.ones_like(args[which], dtype=bool)
        with raises(rf"{which} must have an integer dtype, got {np.dtype(dtype)}"):
            CSRGraph(args["indptr"], args["indices"], (2, 2))

    def test_object_and_string_arrays(self):
        with raises(r"indices must have an integer dtype"):
            CSRGraph(np.array([0, 1]), np.array(["0"]), (1, 1))
        with raises(r"indptr must have an integer dtype"):
            CSRGraph(np.array([0, None], dtype=object), np.array([0]), (1, 1))

    @pytest.mark.parametrize("which", ["indptr", "indices"])
    def test_not_1d(self, which):
        args = {"indptr": np.array([0, 1, 2]), "indices": np.array([0, 1])}
        args[which] = args[which][None, :]
        with raises(rf"{which} must be 1-D.*{re.escape(str(tuple(args[which].shape)))}"):
            CSRGraph(args["indptr"], args["indices"], (2, 2))

    def test_uint64_overflow(self):
        big = np.uint64(INT64_MAX) + np.uint64(1)
        with raises(rf"indices has values up to {int(big)}.*overflow"):
            CSRGraph(np.array([0, 1], dtype=np.uint64), np.array([big], dtype=np.uint64), (1, 2))
        with raises(rf"indptr has values up to {2**64 - 1}.*overflow"):
            CSRGraph(np.array([0, 2**64 - 1], dtype=np.uint64), np.array([0], dtype=np.uint64), (1, 2))

    def test_uint64_in_range_accepted(self):
        g = CSRGraph(np.array([0, 1], dtype=np.uint64), np.array([1], dtype=np.uint64), (1, 2))
        assert edges_of(g) == {(0, 1)} and g.index_dtype in INDEX_DTYPES

    def test_int32_arrays_with_huge_shape_never_give_an_int32_graph(self):
        # int32 node ids cannot address a graph with 2**31 source nodes: either refuse
        # (index overflow) or widen to int64; never keep int32.
        indptr, indices = np.array([0, 1], dtype=np.int32), np.array([5], dtype=np.int32)
        try:
            g = CSRGraph(indptr, indices, (1, INT32_MAX + 1))
        except ValueError as exc:
            assert "overflow" in str(exc)
        else:
            assert g.index_dtype == np.int64

    # ---------------------------------------------------------------- ownership
    def test_inputs_not_modified_and_not_aliased(self):
        indptr, indices = np.array([0, 2, 3], dtype=np.int64), np.array([0, 2, 1], dtype=np.int64)
        ip0, ix0 = indptr.copy(), indices.copy()
        g = CSRGraph(indptr, indices, (2, 3))
        assert np.array_equal(indptr, ip0) and np.array_equal(indices, ix0)
        assert indptr.flags.writeable and indices.flags.writeable
        indptr[1] = 1
        indices[0] = 2
        assert np.array_equal(g.indptr, ip0) and np.array_equal(g.indices, ix0)

    def test_graph_arrays_cannot_be_written(self):
        g = CSRGraph(np.array([0, 1]), np.array([0]), (1, 1))
        with pytest.raises(ValueError):
            g.indices[0] = 0


# ============================================================================ index dtype choice
class TestIndexDtype:
    def test_choose_index_dtype(self):
        assert choose_index_dtype() == np.int32
        assert choose_index_dtype(0, 10, 100) == np.int32
        assert choose_index_dtype(INT32_MAX) == np.int32
        assert choose_index_dtype(5, INT32_MAX + 1) == np.int64

    def test_from_edge_index_default_is_smallest(self):
        g = CSRGraph.from_edge_index([0, 1], [1, 0])
        assert g.index_dtype == np.int32
        # A huge source count forces int64 (only indptr of n_dst + 1 is allocated).
        g = CSRGraph.from_edge_index([INT32_MAX + 5], [0], num_src=INT32_MAX + 6, num_dst=1)
        assert g.index_dtype == np.int64 and g.shape == (1, INT32_MAX + 6)
        assert edges_of(g) == {(0, INT32_MAX + 5)}

    @pytest.mark.parametrize("dtype", INDEX_DTYPES)
    def test_explicit_index_dtype(self, dtype):
        g = CSRGraph.from_edge_index([0, 1], [1, 0], index_dtype=dtype)
        assert g.index_dtype == dtype and g.indptr.dtype == dtype
        g = CSRGraph.from_scipy(sp.eye(3, format="csr"), index_dtype=dtype)
        assert g.index_dtype == dtype

    @pytest.mark.parametrize("bad", [np.float32, "float64", np.int16, "nonsense", np.uint32])
    def test_bad_index_dtype(self, bad):
        with raises(r"index_dtype must be int32 or int64"):
            CSRGraph.from_edge_index([0, 1], [1, 0], index_dtype=bad)

    def test_int32_too_small(self):
        with raises(r"index_dtype int32 overflows"):
            CSRGraph.from_edge_index([INT32_MAX + 5], [0], index_dtype=np.int32)

    @given(g=csr_graphs(max_n=8))
    def test_with_index_dtype(self, g):
        for dtype in INDEX_DTYPES:
            h = g.with_index_dtype(dtype)
            assert h.index_dtype == dtype and h.shape == g.shape
            assert np.array_equal(h.indptr, g.indptr) and np.array_equal(h.indices, g.indices)
            assert_canonical(h, strict=False)
        assert g.with_index_dtype(g.index_dtype) is g


# ============================================================================ from_scipy
def _scipy_variants(A):
    """The same structure as coo/csr/csc, matrix and array types."""
    out = []
    for fmt in ("coo", "csr", "csc"):
        out.append(getattr(sp, f"{fmt}_matrix")(A))
        if hasattr(sp, f"{fmt}_array"):
            out.append(getattr(sp, f"{fmt}_array")(A))
    return out


class TestFromScipy:
    @given(g=csr_graphs(max_n=9))
    def test_all_formats_give_the_same_graph(self, g):
        dense = np.zeros(g.shape)
        for (i, j) in edges_of(g):
            dense[i, j] = 1.0 + i + 0.5 * j  # values do not matter, only the structure
        for A in _scipy_variants(dense):
            h = CSRGraph.from_scipy(A)
            assert h.shape == g.shape, type(A)
            assert edges_of(h) == edges_of(g), type(A)
            assert_canonical(h)

    def test_duplicates_merged(self):
        A = sp.coo_matrix((np.ones(5), ([0, 0, 1, 0, 1], [2, 2, 0, 1, 0])), shape=(2, 3))
        g = CSRGraph.from_scipy(A)
        assert g.nnz == 3 and edges_of(g) == {(0, 1), (0, 2), (1, 0)}
        assert np.array_equal(g.indptr, [0, 2, 3]) and np.array_equal(g.indices, [1, 2, 0])

    def test_duplicates_cancelling_to_zero_still_an_edge(self):
        A = sp.coo_matrix((np.array([1.0, -1.0]), ([0, 0], [1, 1])), shape=(1, 2))
        assert edges_of(CSRGraph.from_scipy(A)) == {(0, 1)}

    def test_explicit_zeros_are_edges(self):
        A = sp.csr_matrix((np.array([0.0, 2.0]), np.array([0, 1]), np.array([0, 1, 2])), shape=(2, 2))
        assert A.nnz == 2
        assert edges_of(CSRGraph.from_scipy(A)) == {(0, 0), (1, 1)}

    def test_unsorted_csr_sorted(self):
        A = sp.csr_matrix((np.ones(4), np.array([3, 0, 2, 1]), np.array([0, 3, 4])), shape=(2, 4))
        assert not A.has_sorted_indices
        data, ind, ptr = A.data.copy(), A.indices.copy(), A.indptr.copy()
        g = CSRGraph.from_scipy(A)
        assert np.array_equal(g.indptr, [0, 3, 4]) and np.array_equal(g.indices, [0, 2, 3, 1])
        # the input is not modified (not even sorted in place)
        assert np.array_equal(A.indices, ind) and np.array_equal(A.indptr, ptr) and np.array_equal(A.data, data)

    def test_duplicate_csr_entries_merged_and_input_untouched(self):
        A = sp.csr_matrix((np.ones(3), np.array([1, 1, 0]), np.array([0, 3])), shape=(1, 2))
        ind = A.indices.copy()
        g = CSRGraph.from_scipy(A)
        assert np.array_equal(g.indices, [0, 1])
        assert np.array_equal(A.indices, ind) and A.nnz == 3

    def test_non_square_and_empty(self):
        g = CSRGraph.from_scipy(sp.csr_matrix((3, 5)))
        assert g.shape == (3, 5) and g.nnz == 0 and np.array_equal(g.indptr, [0, 0, 0, 0])
        g = CSRGraph.from_scipy(sp.random(4, 7, density=0.5, format="csc", random_state=1))
        assert g.shape == (4, 7)

    def test_other_formats(self):
        A = sp.random(5, 6, density=0.4, format="lil", random_state=0)
        expected = set(zip(*A.nonzero()))
        for B in (A, A.todok(), A.tobsr(), A.todia()):
            assert edges_of(CSRGraph.from_scipy(B)) == {(int(i), int(j)) for i, j in expected}

    @pytest.mark.parametrize("bad", [np.eye(3), [[1, 0], [0, 1]], None, "A"])
    def test_not_sparse(self, bad):
        with pytest.raises(TypeError, match=r"A must be a scipy\.sparse"):
            CSRGraph.from_scipy(bad)


# ============================================================================ from_edge_index
class TestFromEdgeIndex:
    def test_basic(self):
        g = CSRGraph.from_edge_index(src=[0, 2, 1], dst=[1, 0, 1], num_src=3, num_dst=2)
        assert g.shape == (2, 3)
        assert edges_of(g) == {(1, 0), (0, 2), (1, 1)}
        assert np.array_equal(g.indptr, [0, 1, 3]) and np.array_equal(g.indices, [2, 0, 1])

    def test_duplicates_kept_merged_or_refused(self):
        src, dst = np.array([1, 1, 0, 1]), np.array([0, 0, 0, 0])
        g = CSRGraph.from_edge_index(src, dst)
        assert g.nnz == 4 and np.array_equal(g.indices, [0, 1, 1, 1])
        g = CSRGraph.from_edge_index(src, dst, duplicates="merge")
        assert g.nnz == 2 and np.array_equal(g.indices, [0, 1])
        with raises(r"edge 1 \(src=1, dst=0\) repeats an earlier edge"):
            CSRGraph.from_edge_index(src, dst, duplicates="error")
        with raises(r"duplicates must be 'keep', 'merge' or 'error', got 'sum'"):
            CSRGraph.from_edge_index(src, dst, duplicates="sum")

    def test_num_nodes(self):
        g = CSRGraph.from_edge_index([0], [0], num_src=4, num_dst=3)
        assert g.shape == (3, 4) and np.array_equal(g.indptr, [0, 1, 1, 1])
        e = np.array([], dtype=np.int64)
        assert CSRGraph.from_edge_index(e, e, num_src=2).shape == (2, 2)  # one count: square
        assert CSRGraph.from_edge_index([4], [0], num_dst=6).shape == (6, 6)
        g = CSRGraph.from_edge_index(np.array([], dtype=np.int64), np.array([], dtype=np.int64))
        assert g.shape == (0, 0) and g.nnz == 0

    def test_inferred_shape_is_square_as_in_pyg(self):
        # The largest id on either side: x of 5 nodes fits, whichever side holds id 4.
        assert CSRGraph.from_edge_index([0, 4], [1, 0]).shape == (5, 5)
        assert CSRGraph.from_edge_index([0, 1], [4, 0]).shape == (5, 5)
        with raises(r"src has node id 4, out of range for 3 nodes"):
            CSRGraph.from_edge_index([0, 4], [1, 0], num_dst=3)

    @given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 5)), max_size=40),
           st.sampled_from([np.int32, np.int64, np.uint16]))
    def test_matches_multiset_of_edges(self, pairs, dtype):
        src = np.array([p[0] for p in pairs], dtype=dtype)
        dst = np.array([p[1] for p in pairs], dtype=dtype)
        s0, d0 = src.copy(), dst.copy()
        g, perm = CSRGraph.from_edge_index(src, dst, num_src=7, num_dst=6, return_perm=True)
        assert g.shape == (6, 7) and g.nnz == len(pairs)
        assert_canonical(g, strict=False)
        rows = np.repeat(np.arange(6), np.diff(g.indptr))
        # perm maps CSR positions to input positions; ties keep input order
        assert np.array_equal(src[perm], g.indices) and np.array_equal(dst[perm], rows)
        assert sorted(perm.tolist()) == list(range(len(pairs)))
        assert all(perm[c] < perm[c + 1] for c in range(g.nnz - 1)
                   if rows[c] == rows[c + 1] and g.indices[c] == g.indices[c + 1])
        merged = CSRGraph.from_edge_index(src, dst, num_src=7, num_dst=6, duplicates="merge")
        assert edges_of(merged) == {(d, s) for s, d in pairs}
        assert_canonical(merged)
        assert np.array_equal(src, s0) and np.array_equal(dst, d0)

    def test_edge_index_array_and_its_errors(self):
        g, perm = CSRGraph.from_edge_index(np.array([[0, 2, 1, 2], [1, 0, 1, 0]]), return_perm=True)
        assert g.shape == (3, 3) and np.array_equal(g.indices, [2, 2, 0, 1]) and np.array_equal(perm, [1, 3, 0, 2])
        with raises(r"edge_index must have shape \(2, E\), got \(3, 2\)"):
            CSRGraph.from_edge_index(np.zeros((3, 2), dtype=np.int64))
        with raises(r"edge_index must be 2-D"):
            CSRGraph.from_edge_index(np.zeros(4, dtype=np.int64))

    def test_absurd_inferred_size_is_refused_not_killed(self):
        with pytest.raises(MemoryError, match="destination nodes"):
            CSRGraph.from_edge_index([2**45], [0])

    def test_empty_python_lists(self):
        # An empty list has no integer dtype of its own (NumPy makes it float64), but
        # an empty edge list is still a valid edge list.
        g = CSRGraph.from_edge_index([], [], num_src=2, num_dst=3)
        assert g.shape == (3, 2) and g.nnz == 0

    def test_length_mismatch(self):
        with raises(r"src and dst must have the same length, got 3 and 2"):
            CSRGraph.from_edge_index([0, 1, 2], [0, 1])

    def test_negative_ids(self):
        with raises(r"src must be non-negative, got -1"):
            CSRGraph.from_edge_index([0, -1], [0, 1])
        with raises(r"dst must be non-negative, got -3"):
            CSRGraph.from_edge_index([0, 1], [-3, 1])

    def test_ids_out_of_range(self):
        with raises(r"src has node id 3, out of range for 3 nodes"):
            CSRGraph.from_edge_index([0, 3], [0, 1], num_src=3, num_dst=2)
        with raises(r"dst has node id 2, out of range for 2 nodes"):
            CSRGraph.from_edge_index([0, 1], [0, 2], num_src=3, num_dst=2)

    def test_bad_num_nodes(self):
        e = np.array([], dtype=np.int64)
        with raises(r"n_src must be non-negative, got -1"):
            CSRGraph.from_edge_index(e, e, num_src=-1, num_dst=0)
        with raises(r"n_dst must be an integer"):
            CSRGraph.from_edge_index([0], [0], num_src=1, num_dst=1.5)

    def test_non_integer_ids(self):
        with raises(r"src must have an integer dtype, got float64"):
            CSRGraph.from_edge_index(np.array([0.0, 1.0]), np.array([0, 1]))
        with raises(r"dst must have an integer dtype, got bool"):
            CSRGraph.from_edge_index(np.array([0, 1]), np.array([True, False]))

    def test_not_1d(self):
        with raises(r"src must be 1-D"):
            CSRGraph.from_edge_index(np.zeros((2, 2), dtype=np.int64), np.zeros(4, dtype=np.int64))

    def test_uint64_overflow(self):
        with raises(r"src has values up to .*overflow"):
            CSRGraph.from_edge_index(np.array([2**63], dtype=np.uint64), np.array([0], dtype=np.uint64))


# ============================================================================ with_self_loops
class TestSelfLoops:
    @given(g=csr_graphs(max_n=9, bipartite=False))
    def test_adds_exactly_the_missing_diagonal(self, g):
        before = (np.asarray(g.indptr).copy(), np.asarray(g.indices).copy())
        h = g.with_self_loops()
        n = g.shape[0]
        diag = {(i, i) for i in range(n)}
        assert edge_multiset(h) == sorted(edge_multiset(g) + sorted(diag - edges_of(g)))  # multi-edges kept
        assert h.nnz == g.nnz + len(diag - edges_of(g))
        assert h.shape == g.shape and h.index_dtype == g.index_dtype
        assert_canonical(h, strict=False)
        assert np.array_equal(g.indptr, before[0]) and np.array_equal(g.indices, before[1])
        h2 = h.with_self_loops()
        assert np.array_equal(h2.indptr, h.indptr) and np.array_equal(h2.indices, h.indices)

    @given(g=csr_graphs(max_n=9, bipartite=True))
    def test_non_square_gets_the_loops_of_the_shorter_side(self, g):
        h = g.with_self_loops()
        diag = {(i, i) for i in range(min(g.shape))}
        assert edge_multiset(h) == sorted(edge_multiset(g) + sorted(diag - edges_of(g)))
        assert h.shape == g.shape and h.index_dtype == g.index_dtype
        assert_canonical(h, strict=False)


# ============================================================================ transposed structure
class TestTransposed:
    @settings(max_examples=40)
    @given(g=csr_graphs(max_n=12))
    def test_matches_scipy_transpose(self, g):
        indptr, indices = np.asarray(g.indptr), np.asarray(g.indices)
        # Store CSR position + 1 as data so scipy's transpose carries the permutation.
        A = sp.csr_matrix((np.arange(1, g.nnz + 1, dtype=np.float64), indices.astype(np.int64),
                           indptr.astype(np.int64)), shape=g.shape)
        T = A.T.tocsr()
        T.sort_indices()
        t_indptr, t_indices, t_perm = g.transposed()
        assert t_indptr.shape == (g.n_src + 1,) and t_indices.shape == t_perm.shape == (g.nnz,)
        for a in (t_indptr, t_indices, t_perm):
            assert a.dtype == g.index_dtype
        assert np.array_equal(t_indptr, T.indptr)
        assert np.array_equal(t_indices, T.indices)
        assert np.array_equal(t_perm, T.data.astype(np.int64) - 1)
        # t_perm is a permutation of the CSR positions mapping each transposed slot to its edge
        assert np.array_equal(np.sort(t_perm), np.arange(g.nnz))
        rows = np.repeat(np.arange(g.n_dst), np.diff(indptr))
        for j in range(g.n_src):
            for p in range(t_indptr[j], t_indptr[j + 1]):
                e = t_perm[p]
                assert indices[e] == j and rows[e] == t_indices[p]
        # cached
        assert g.transposed() is g.transposed()

    def test_small_example(self):
        # rows: 0 <- {1, 2}, 1 <- {}, 2 <- {0, 2}
        g = CSRGraph(np.array([0, 2, 2, 4]), np.array([1, 2, 0, 2]), (3, 3))
        t_indptr, t_indices, t_perm = g.transposed()
        assert np.array_equal(t_indptr, [0, 1, 2, 4])
        assert np.array_equal(t_indices, [2, 0, 0, 2])
        assert np.array_equal(t_perm, [2, 0, 1, 3])

    @given(g=csr_graphs(max_n=8))
    def test_row_ids_and_degrees(self, g):
        rows = np.array([i for i, j in edge_multiset(g)], dtype=np.int64)
        assert np.array_equal(g.row_ids(), rows)
        assert g.row_ids().dtype == g.index_dtype
        assert np.array_equal(g.degrees(), [sum(1 for (i, _) in edge_multiset(g) if i == r) for r in range(g.n_dst)])

    @settings(max_examples=30)
    @given(g=csr_graphs(max_n=12))
    def test_transposition_is_stable(self, g):
        # Ties in the sort by column keep CSR order, whatever the device that sorts.
        indices = np.asarray(g.indices)
        t_indptr, t_indices, t_perm = g.transposed()
        assert np.array_equal(t_perm, np.lexsort((np.arange(g.nnz), indices)))
        assert np.array_equal(t_indptr, np.concatenate([[0], np.cumsum(np.bincount(indices, minlength=g.n_src))]))
        assert np.array_equal(t_indices, np.asarray(g.row_ids())[t_perm])
        for a in (t_indptr, t_indices, t_perm):
            assert a.dtype == g.index_dtype and not a.flags.writeable

    def test_transposed_of_an_edgeless_graph(self):
        for shape in ((0, 0), (3, 0), (0, 4), (3, 4)):
            g = CSRGraph(np.zeros(shape[0] + 1, dtype=np.int32), np.zeros(0, dtype=np.int32), shape)
            t_indptr, t_indices, t_perm = g.transposed()
            assert np.array_equal(t_indptr, np.zeros(shape[1] + 1)) and t_indptr.dtype == np.int32
            assert t_indices.shape == t_perm.shape == (0,)

    def test_cached_builds_once(self):
        g = CSRGraph.from_edge_index([0], [0])
        calls = []
        first = g.cached("thing", lambda: calls.append(1) or object())
        assert g.cached("thing", lambda: calls.append(1) or object()) is first
        assert len(calls) == 1


# ============================================================================ to()
class TestTo:
    def test_to_numpy_is_identity(self):
        g = CSRGraph.from_edge_index([0, 1], [1, 0])
        assert g.to("numpy") is g

    def test_to_numpy_keeps_every_cache(self):
        g = CSRGraph.from_edge_index([0, 1, 1], [1, 0, 1])
        t, rows, thing = g.transposed(), g.row_ids(), g.cached("thing", lambda: (np.arange(2),))
        h = g.to("numpy")
        assert h.transposed() is t and h.row_ids() is rows
        assert h.cached("thing", lambda: pytest.fail("rebuilt")) is thing

    @pytest.mark.parametrize("bad", ["gpu", "cuda", "NUMPY", None, 0])
    def test_bad_device(self, bad):
        g = CSRGraph.from_edge_index([0, 1], [1, 0])
        with raises(r"device must be 'numpy' or 'cupy', got"):
            g.to(bad)

    @pytest.mark.skipif(HAS_CUPY, reason="CuPy is installed")
    def test_to_cupy_without_cupy(self):
        g = CSRGraph.from_edge_index([0, 1], [1, 0])
        with raises(r"CuPy"):
            g.to("cupy")
