"""``sparsegat.csr_format``: the one CSR check and ``row_ids``, and every way malformed
CSR arrays reach the library (``CSRGraph``, ``CSRGraph.from_scipy``, ``datasets.load_npz``,
the bench reader) is refused with a ``ValueError`` that names the array and the value."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings, strategies as st

from sparsegat import CSRGraph, datasets
from sparsegat.bench import readers
from sparsegat.csr_format import check_csr, row_ids

# Pointers whose neighbour differences wrap around: indptr[1:] - indptr[:-1] is >= 0
# everywhere, although indptr[2] < indptr[1].
WRAP32 = (np.array([0, 2**30 + 1, -2**30 - 1, 0], np.int32), np.array([], np.int32))
WRAP64 = (np.array([0, 2**62 + 1, -2**62 - 1, 3], np.int64), np.array([0, 1, 2], np.int64))
WRAPS = pytest.mark.parametrize("indptr,indices", [WRAP32, WRAP64], ids=["int32", "int64"])
# SciPy accepts these at construction (its cheap check), and tocoo then writes out of bounds.
BAD_SCIPY = ([0, 1, 2], [0, 1, 10**6, 3])


def test_wraparound_differences_look_valid():
    for indptr, _ in (WRAP32, WRAP64):
        assert (np.diff(indptr) >= 0).all()  # the trap that a subtraction-based check falls into


# ---------------------------------------------------------------------------- check_csr
class TestCheckCsr:
    def test_valid(self):
        check_csr(np.array([0, 2, 2, 3]), np.array([0, 4, 1]), (3, 5), canonical=True)
        check_csr(np.array([0]), np.array([], np.int32), (0, 0), canonical=True)
        check_csr(np.array([0, 0], np.uint64), np.array([], np.uint8), (1, 0))

    @WRAPS
    def test_wraparound_refused(self, indptr, indices):
        with pytest.raises(ValueError, match=r"g: indptr must be non-decreasing.*indptr\[2\]=-\d+ < indptr\[1\]"):
            check_csr(indptr, indices, (3, 3), name="g")

    def test_uint64_pointers(self):
        big = np.uint64(2**64 - 1)
        with pytest.raises(ValueError, match=r"indptr\[-1\]=18446744073709551615 must equal len\(indices\)=1"):
            check_csr(np.array([0, big], np.uint64), np.array([0]), (1, 1))
        with pytest.raises(ValueError, match=r"decreases at row 1: indptr\[2\]=0 < indptr\[1\]=18446744073709551615"):
            check_csr(np.array([0, big, 0], np.uint64), np.array([], np.int64), (2, 1))

    @pytest.mark.parametrize("indptr,indices,shape,pattern", [
        ([0, 1], [0], (2, 1), r"indptr must have length n_rows \+ 1 = 3 \(2 rows\), got 2"),
        ([1, 1], [0], (1, 1), r"indptr\[0\] must be 0, got 1"),
        ([0, 2], [0], (1, 1), r"indptr\[-1\]=2 must equal len\(indices\)=1"),
        ([0, 2, 1], [0], (2, 1), r"indptr must be non-decreasing, but it decreases at row 1: indptr\[2\]=1 < indptr\[1\]=2"),
        ([0, 1], [-4], (1, 3), r"indices must lie in \[0, n_cols=3\), got -4"),
        ([0, 1], [3], (1, 3), r"indices must lie in \[0, n_cols=3\), got 3"),
        ([0, 1], [0], (1, 0), r"indices must lie in \[0, n_cols=0\), got 0"),
        ([0], [], (-1, 0), r"shape must be non-negative, got \(-1, 0\)"),
    ])
    def test_messages_name_array_and_value(self, indptr, indices, shape, pattern):
        with pytest.raises(ValueError, match=rf"^x: {pattern}"):
            check_csr(np.array(indptr, np.int64), np.array(indices, np.int64), shape, name="x")

    def test_dtype_and_ndim(self):
        with pytest.raises(ValueError, match=r"indices must hold integers, got dtype float64"):
            check_csr(np.array([0, 1]), np.array([0.0]), (1, 1))
        with pytest.raises(ValueError, match=r"indptr must hold integers, got dtype bool"):
            check_csr(np.array([False, True]), np.array([0]), (1, 1))
        with pytest.raises(ValueError, match=r"indptr must be 1-D, got an array of shape \(1, 2\)"):
            check_csr(np.array([[0, 1]]), np.array([0]), (1, 1))
        with pytest.raises(ValueError, match=r"indices must be 1-D, got an array of shape None"):
            check_csr(np.array([0, 1]), [0], (1, 1))

    def test_custom_names(self):
        with pytest.raises(ValueError, match=r"^f: x_indptr must have length len\(y\) \+ 1 = 3 \(2 rows\)"):
            check_csr(np.array([0]), np.array([], np.int64), (2, 4), name="f", arrays=("x_indptr", "x_indices"),
                      dims=("len(y)", "F"))
        with pytest.raises(ValueError, match=r"^f: x_indices must lie in \[0, F=4\), got 9"):
            check_csr(np.array([0, 1]), np.array([9]), (1, 4), name="f", arrays=("x_indptr", "x_indices"),
                      dims=("len(y)", "F"))

    def test_data_length(self):
        check_csr(np.array([0, 1]), np.array([0]), (1, 1), data=np.ones(1))
        with pytest.raises(ValueError, match=r"data has shape \(2,\), but there are 1 indices"):
            check_csr(np.array([0, 1]), np.array([0]), (1, 1), data=np.ones(2))
        with pytest.raises(ValueError, match=r"data has shape \(2,\)"):
            check_csr(np.array([0, 1]), np.array([0]), (1, 1), data=np.ones(2), full=False)

    def test_cheap_tier_is_o1(self):
        # The cheap tier checks lengths and the ends of indptr only.
        check_csr(*WRAP64, (3, 3), full=False)
        check_csr(np.array([0, 1]), np.array([99]), (1, 1), full=False)
        with pytest.raises(ValueError, match=r"indptr\[-1\]"):
            check_csr(np.array([0, 5]), np.array([0]), (1, 1), full=False)

    def test_canonical_tier(self):
        check_csr(np.array([0, 2, 3]), np.array([1, 0, 0]), (2, 2))  # unsorted is fine without canonical
        with pytest.raises(ValueError, match=r"indices of row 0 are not strictly increasing \(unsorted"):
            check_csr(np.array([0, 2, 3]), np.array([1, 0, 0]), (2, 2), canonical=True)
        with pytest.raises(ValueError, match=r"row 1 .*duplicate column 1"):
            check_csr(np.array([0, 1, 3]), np.array([0, 1, 1]), (2, 2), canonical=True)
        # canonical implies the full tier
        with pytest.raises(ValueError, match="non-decreasing"):
            check_csr(*WRAP64, (3, 3), full=False, canonical=True)


# ---------------------------------------------------------------------------- agreement with SciPy
@st.composite
def csr_arrays(draw):
    """CSR arrays of modest values (no wraparound), valid or with one corruption."""
    n_rows, n_cols = draw(st.integers(0, 5)), draw(st.integers(0, 5))
    lengths = draw(st.lists(st.integers(0, 4), min_size=n_rows, max_size=n_rows))
    indptr = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int64)
    nnz = int(indptr[-1])
    indices = np.array(draw(st.lists(st.integers(0, max(n_cols - 1, 0)), min_size=nnz, max_size=nnz)),
                       dtype=np.int64)
    corruption = draw(st.sampled_from(["none", "indptr value", "index value", "swap indptr",
                                       "drop index", "extra index", "drop pointer"]))
    if corruption == "indptr value":
        indptr[draw(st.integers(0, n_rows))] = draw(st.integers(-3, nnz + 3))
    elif corruption == "index value" and nnz:
        indices[draw(st.integers(0, nnz - 1))] = draw(st.integers(-3, n_cols + 3))
    elif corruption == "swap indptr" and n_rows >= 1:
        a, b = draw(st.integers(0, n_rows)), draw(st.integers(0, n_rows))
        indptr[[a, b]] = indptr[[b, a]]
    elif corruption == "drop index" and nnz:
        indices = indices[1:]
    elif corruption == "extra index":
        indices = np.append(indices, draw(st.integers(0, n_cols + 1)))
    elif corruption == "drop pointer":
        indptr = indptr[:-1]
    dtypes = st.sampled_from([np.int32, np.int64])
    return indptr.astype(draw(dtypes)), indices.astype(draw(dtypes)), (n_rows, n_cols)


def _scipy_accepts(indptr, indices, shape) -> bool:
    A = sp.csr_matrix(shape, dtype=np.float64)
    A.indptr, A.indices, A.data = indptr.copy(), indices.copy(), np.ones(indices.shape[0])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            A.check_format(full_check=True)
    except ValueError:
        return False
    return True


def _accepts(indptr, indices, shape) -> bool:
    try:
        check_csr(indptr, indices, shape)
    except ValueError:
        return False
    return True


@settings(max_examples=200, deadline=None)
@given(csr_arrays())
def test_full_check_agrees_with_scipy(arrays):
    """Without wraparound, check_csr accepts what SciPy's full ``check_format`` accepts,
    except for SciPy's two leniencies: ``indptr[-1] < len(indices)`` (SciPy prunes the
    tail) and an ``indptr`` that is not all zeros when ``indptr[-1] == 0`` (SciPy skips
    its full check when there are no stored entries)."""
    indptr, indices, shape = arrays
    scipy_ok = _scipy_accepts(indptr, indices, shape)
    strict = (indptr.shape[0] == shape[0] + 1 and int(indptr[-1]) == indices.shape[0]
              and (int(indptr[-1]) > 0 or not indptr.any()))
    assert _accepts(indptr, indices, shape) == (scipy_ok and strict)


# ---------------------------------------------------------------------------- row_ids
@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint64])
def test_row_ids(dtype):
    indptr = np.array([0, 2, 2, 5, 6], dtype=dtype)
    expected = np.repeat(np.arange(4), np.diff(indptr.astype(np.int64)))
    out = row_ids(indptr)
    assert out.dtype == dtype and np.array_equal(out, expected)
    out = row_ids(indptr, np.int64)
    assert out.dtype == np.int64 and np.array_equal(out, expected)
    assert row_ids(np.array([0], dtype)).shape == (0,)


def test_graph_row_ids_uses_helper():
    g = CSRGraph.from_edge_index([0, 2, 1, 0], [1, 0, 1, 2], index_dtype=np.int32)
    assert g.row_ids().dtype == np.int32
    assert np.array_equal(g.row_ids(), row_ids(g.indptr))
    assert np.array_equal(g.row_ids(), [0, 1, 1, 2])


# ---------------------------------------------------------------------------- CSRGraph
@WRAPS
def test_graph_refuses_wraparound(indptr, indices):
    with pytest.raises(ValueError, match=r"CSRGraph: indptr must be non-decreasing"):
        CSRGraph(indptr, indices, (3, 3))


def test_graph_refuses_last_step_down():
    # indptr[-1] == nnz, but the last row has length -1.
    with pytest.raises(ValueError, match=r"decreases at row 1: indptr\[2\]=1 < indptr\[1\]=2"):
        CSRGraph([0, 2, 1], [0], (2, 3))


@pytest.mark.parametrize("fmt", ["csr", "csc"])
def test_from_scipy_checks_before_converting(fmt):
    indices, indptr = np.array(BAD_SCIPY[0]), np.array(BAD_SCIPY[1])
    make = sp.csr_matrix if fmt == "csr" else sp.csc_matrix
    A = make((np.ones(3), indices, indptr), shape=(3, 3))  # SciPy accepts it
    with pytest.raises(ValueError, match=r"^A: indptr must be non-decreasing.*indptr\[2\]=1000000"):
        CSRGraph.from_scipy(A)
    A = make((np.ones(1), np.array([7]), np.array([0, 1, 1, 1])), shape=(3, 3))
    dim = "A.shape[1]" if fmt == "csr" else "A.shape[0]"
    with pytest.raises(ValueError, match=rf"^A: indices must lie in \[0, {re.escape(dim)}=3\), got 7"):
        CSRGraph.from_scipy(A)


def test_from_scipy_wraparound():
    indptr, indices = WRAP64
    A = sp.csr_matrix((3, 3))
    A.indptr, A.indices, A.data = indptr, indices, np.ones(3)
    with pytest.raises(ValueError, match="non-decreasing"):
        CSRGraph.from_scipy(A)


def test_from_scipy_bsr_checked():
    A = sp.bsr_matrix(np.eye(4), blocksize=(2, 2))
    A.indices = np.array([0, 5], dtype=A.indices.dtype)
    with pytest.raises(ValueError, match=r"^A: indices must lie in \[0, n_block_cols=2\), got 5"):
        CSRGraph.from_scipy(A)


def test_from_scipy_keeps_explicit_zeros_and_merges_duplicates():
    A = sp.csr_matrix((np.array([0.0, 1.0, 2.0]), np.array([2, 0, 2]), np.array([0, 3, 3])), shape=(2, 3))
    for B in (A, A.tocsc()):
        g = CSRGraph.from_scipy(B)
        assert np.array_equal(g.indptr, [0, 2, 2]) and np.array_equal(g.indices, [0, 2])


# ---------------------------------------------------------------------------- data files
def _dataset_arrays(n=4):
    return dict(indptr=np.array([0, 1, 2, 3, 4]), indices=np.array([1, 0, 3, 2]), y=np.array([0, 1, 0, 1]),
                x=np.ones((n, 2), np.float32), train_mask=np.ones(n, bool), val_mask=np.ones(n, bool),
                test_mask=np.ones(n, bool))


def test_load_npz_valid_and_unsorted_rows(tmp_path):
    arrays = _dataset_arrays()
    arrays.update(indptr=np.array([0, 2, 2, 3, 4]), indices=np.array([3, 1, 3, 2]))
    np.savez(tmp_path / "d.npz", **arrays)
    ds = datasets.load_npz(tmp_path / "d.npz")
    assert np.array_equal(ds.graph.indptr, [0, 2, 2, 3, 4]) and np.array_equal(ds.graph.indices, [1, 3, 3, 2])


@pytest.mark.parametrize("indptr,indices,pattern", [
    (np.array([0, 2, 1, 3, 4]), np.array([1, 0, 3, 2]), r"graph: indptr must be non-decreasing, but it "
                                                         r"decreases at row 1: indptr\[2\]=1 < indptr\[1\]=2"),
    (np.array([0, 2**62 + 1, -2**62 - 1, 3, 4]), np.array([1, 0, 3, 2]), r"graph: indptr must be non-decreasing"),
    (np.array([0, 2**30 + 1, -2**30 - 1, 0, 0], np.int32), np.array([], np.int32), r"graph: indptr must be non-decreasing"),
    (np.array([0, 1, 2]), np.array([1, 0]), r"graph: indptr must have length len\(y\) \+ 1 = 5 \(4 rows\), got 3"),
    (np.array([0, 1, 2, 3, 4]), np.array([1, 0, 9, 2]), r"graph: indices must lie in \[0, len\(y\)=4\), got 9"),
    (np.array([0, 1, 2, 3, 4.0]), np.array([1, 0, 3, 2]), r"graph: indptr must hold integers, got dtype float64"),
])
def test_load_npz_refuses_bad_graph(tmp_path, indptr, indices, pattern):
    arrays = _dataset_arrays()
    arrays.update(indptr=indptr, indices=indices)
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(datasets.DatasetError, match=rf"^{re.escape(str(path))}: {pattern}"):
        datasets.load_npz(path)


@pytest.mark.parametrize("x_indptr,x_indices,x_data,pattern", [
    (np.array([0, 2**62 + 1, -2**62 - 1, 1, 1]), np.array([0]), np.ones(1), r"x_indptr must be non-decreasing"),
    (np.array([0, 1, 1, 1, 1]), np.array([5]), np.ones(1), r"x_indices must lie in \[0, x_shape\[1\]=3\), got 5"),
    (np.array([0, 1, 1, 1, 1]), np.array([0]), np.ones(2), r"data has shape \(2,\), but there are 1 x_indices"),
    (np.array([0, 1, 1, 1]), np.array([0]), np.ones(1), r"x_indptr must have length len\(y\) \+ 1 = 5"),
])
def test_load_npz_refuses_bad_sparse_features(tmp_path, x_indptr, x_indices, x_data, pattern):
    arrays = _dataset_arrays()
    del arrays["x"]
    arrays.update(x_indptr=x_indptr, x_indices=x_indices, x_data=x_data, x_shape=np.array([4, 3]))
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(datasets.DatasetError, match=rf"bad\.npz: feature CSR arrays: {pattern}"):
        datasets.load_npz(path)


def test_load_npz_sparse_features_valid(tmp_path):
    arrays = _dataset_arrays()
    del arrays["x"]
    arrays.update(x_indptr=np.array([0, 2, 2, 3, 3], np.int32), x_indices=np.array([2, 2, 0], np.int32),
                  x_data=np.array([1.0, 2.0, 4.0]), x_shape=np.array([4, 3]))
    np.savez(tmp_path / "d.npz", **arrays)
    x = datasets.load_npz(tmp_path / "d.npz").x
    assert sp.issparse(x) and x.dtype == np.float32
    np.testing.assert_array_equal(x.toarray(), [[0, 0, 3], [0, 0, 0], [4, 0, 0], [0, 0, 0]])


# ---------------------------------------------------------------------------- bench reader
@WRAPS
def test_bench_reader_refuses_wraparound(tmp_path, indptr, indices):
    path = tmp_path / "wrap.npz"
    np.savez(path, indptr=indptr, indices=indices)
    with pytest.raises(ValueError, match=r"wrap\.npz: indptr must be non-decreasing"):
        readers.read_graph(path)


@pytest.mark.parametrize("fmt", ["csr", "csc"])
def test_bench_reader_scipy_file_checked_before_conversion(tmp_path, fmt):
    make = sp.csr_matrix if fmt == "csr" else sp.csc_matrix
    A = make((np.ones(3), np.array(BAD_SCIPY[0]), np.array(BAD_SCIPY[1])), shape=(3, 3))
    path = tmp_path / "bad_scipy.npz"
    sp.save_npz(path, A)
    with pytest.raises(ValueError, match=r"bad_scipy\.npz: invalid graph \(A: indptr must be non-decreasing"):
        readers.read_graph(path)


def test_bench_reader_shape_array(tmp_path):
    path = tmp_path / "g.npz"
    np.savez(path, indptr=np.array([0, 1]), indices=np.array([0]), shape=np.array([3, 3]))
    with pytest.raises(ValueError, match=r"g\.npz: indptr must have length n_dst \+ 1 = 4 \(3 rows\), got 2"):
        readers.read_graph(path)
    np.savez(path, indptr=np.array([0, 1]), indices=np.array([4]), shape=np.array([1, 4]))
    with pytest.raises(ValueError, match=r"g\.npz: indices must lie in \[0, n_src=4\), got 4"):
        readers.read_graph(path)
    np.savez(path, indptr=np.array([0, 1]), indices=np.array([3]), shape=np.array([1, 4]))
    assert readers.read_graph(path).graph.shape == (1, 4)
