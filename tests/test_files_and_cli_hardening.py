"""Issue 11, graphs, files and command lines: immutable graphs, safe file reading, no tracebacks.

Each test names the class of defect it guards against; every one failed before the fix.
"""

from __future__ import annotations

import copy
import io
import os
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import scipy.sparse as sp

import sparsegat as sg
from sparsegat import CSRGraph, datasets, nn
from sparsegat.bench import readers


# ---------------------------------------------------------------------- helpers
def _cannot_write(a):
    """``a`` is read-only, and neither it nor any array below it can be made writeable."""
    assert isinstance(a, np.ndarray)
    with pytest.raises(ValueError):
        a[...] = 0
    base = a
    while isinstance(base, np.ndarray):
        with pytest.raises(ValueError):
            base.flags.writeable = True
        base = base.base


def _npy_bytes(header: dict, data: bytes = b"") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue() + data


def _zip(path, members: dict[str, bytes], compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression) as z:
        for name, payload in members.items():
            z.writestr(name, payload)
    return path


def _npy(a) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.asarray(a), allow_pickle=False)
    return buf.getvalue()


def _valid_dataset_arrays(n=6):
    A = sp.random(n, n, density=0.4, format="csr", random_state=0)
    return dict(indptr=A.indptr.astype(np.int64), indices=A.indices.astype(np.int64),
                x=np.ones((n, 3), np.float32), y=np.arange(n) % 2,
                train_mask=np.arange(n) < 2, val_mask=(np.arange(n) >= 2) & (np.arange(n) < 4),
                test_mask=np.arange(n) >= 4)


def _huge_header_npz(path, key="indptr", others=None):
    """An .npz whose member ``key`` declares 2**40 int64 values but holds 16 bytes."""
    members = {f"{k}.npy": _npy(v) for k, v in (others or {}).items()}
    members[f"{key}.npy"] = _npy_bytes({"descr": "<i8", "fortran_order": False, "shape": (2 ** 40,)}, b"\0" * 16)
    return _zip(path, members)


# ---------------------------------------------------------------------- class 1: immutable graphs
@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
def test_graph_arrays_and_caches_cannot_be_made_writeable(index_dtype):
    g = CSRGraph.from_edge_index([0, 1, 2, 2, 0], [1, 2, 0, 1, 0], index_dtype=index_dtype)
    for a in (g.indptr, g.indices, g.row_ids(), *g.transposed()):
        _cannot_write(a)
    # The backends' own caches (numba keeps int32 copies of an int64 graph) are sealed too.
    q = np.random.default_rng(0).standard_normal((3, 2, 4))
    for backend in sg.available_backends():
        if backend == "cupy":
            continue
        out, ctx = sg.attention_forward(g, q, q, q, backend=backend)
        sg.attention_backward(ctx, np.ones_like(out))
    seen = 0
    for key in list(g._other):
        value = g.cached(key, lambda: None)
        for a in (value if isinstance(value, tuple) else (value,)):
            if isinstance(a, np.ndarray):
                _cannot_write(a)
                seen += 1
    if "numba" in sg.available_backends():
        assert seen >= 7


def test_cached_structures_are_sealed_in_containers():
    g = CSRGraph.from_edge_index([0, 1], [1, 0])
    got = g.cached("test.list", lambda: [np.arange(3), {"a": np.zeros(2)}])
    assert isinstance(got, tuple)
    _cannot_write(got[0])
    _cannot_write(got[1]["a"])
    with pytest.raises(TypeError):
        got[1]["b"] = 1
    assert g.cached("test.list", lambda: 1 / 0) is got
    # Arrays already sealed (the graph's own) are cached without a copy.
    assert g.cached("test.own", lambda: g.indices) is g.indices


def test_graph_attributes_cannot_be_reassigned():
    g = CSRGraph([0, 1, 2], [1, 0], (2, 2))
    for name, value in (("indices", np.array([5, 5])), ("indptr", np.array([0, 0, 2])), ("shape", (9, 9)),
                        ("extra", 1)):
        with pytest.raises(AttributeError, match="immutable"):
            setattr(g, name, value)
    with pytest.raises(AttributeError):
        del g.indices
    assert g.shape == (2, 2) and list(g.indices) == [1, 0]
    # Copies and pickles still work (a graph is a value).
    assert copy.deepcopy(g) is g and copy.copy(g) is g
    h = pickle.loads(pickle.dumps(g))
    assert h.shape == g.shape and np.array_equal(h.indptr, g.indptr) and np.array_equal(h.indices, g.indices)
    _cannot_write(h.indices)


def test_user_arrays_are_copied_and_sealed():
    indptr, indices = np.array([0, 1, 2]), np.array([1, 0])
    g = CSRGraph(indptr, indices, (2, 2))
    indices[:] = 7
    assert list(g.indices) == [1, 0]
    _cannot_write(g.indptr)
    _cannot_write(g.with_index_dtype(np.int32).indices)


# ---------------------------------------------------------------------- class 2: one CSR check everywhere
def test_last_indptr_step_is_checked_in_every_constructor(tmp_path):
    with pytest.raises(ValueError, match="non-decreasing"):
        CSRGraph([0, 2, 1], [0], (2, 3))
    with pytest.raises(ValueError, match="non-decreasing"):
        CSRGraph.from_scipy(sp.csr_matrix((np.ones(1), np.array([0]), np.array([0, 2, 1])), shape=(2, 3)))
    path = tmp_path / "g.npz"
    np.savez(path, indptr=np.array([0, 2, 1]), indices=np.array([0]), shape=np.array([2, 3]))
    with pytest.raises(ValueError, match="g.npz: indptr must be non-decreasing"):
        readers.read_graph(path)
    arrays = _valid_dataset_arrays()
    arrays["indptr"] = arrays["indptr"].copy()
    arrays["indptr"][-2] = arrays["indptr"][-1] + 1
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(datasets.DatasetError, match="d.npz: graph: indptr must be non-decreasing"):
        datasets.load_npz(tmp_path / "d.npz")


# ---------------------------------------------------------------------- class 3: files
def test_npz_headers_declaring_more_data_than_present_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"huge\.npz: array 'indptr' declares shape \(1099511627776,\)"):
        readers.read_graph(_huge_header_npz(tmp_path / "huge.npz", others={"indices": np.zeros(0, np.int64)}))
    with pytest.raises(datasets.DatasetError, match=r"huge_data\.npz: array 'y' declares shape"):
        datasets.load_npz(_huge_header_npz(tmp_path / "huge_data.npz", key="y"))
    with pytest.raises(ValueError, match=r"huge_params\.npz: array 'W' declares shape"):
        nn.load_params(nn.Linear(2, 2), _huge_header_npz(tmp_path / "huge_params.npz", key="W"))


def test_lying_zip_sizes_are_refused_before_allocating(tmp_path):
    path = tmp_path / "lie.npz"
    _zip(path, {"W.npy": _npy(np.zeros(4))}, zipfile.ZIP_DEFLATED)
    raw = bytearray(path.read_bytes())
    # Claim a 2**31-byte uncompressed member in the central directory: far beyond deflate's ratio.
    cd = raw.rfind(b"PK\x01\x02")
    raw[cd + 24:cd + 28] = (2 ** 31).to_bytes(4, "little")
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"lie\.npz: array 'W' claims 2147483648 bytes"):
        nn.load_params(nn.Linear(2, 2), path)


def test_non_npy_members_are_refused(tmp_path):
    arrays = _valid_dataset_arrays()
    members = {f"{k}.npy": _npy(v) for k, v in arrays.items()}
    members["README.txt"] = b"hello"
    _zip(tmp_path / "d.npz", members)
    with pytest.raises(datasets.DatasetError, match=r"d\.npz: member 'README.txt' is not an \.npy array"):
        datasets.load_npz(tmp_path / "d.npz")
    _zip(tmp_path / "g.npz", {"indptr.npy": _npy([0, 0]), "indices.npy": _npy(np.zeros(0, int)), "x": b"1"})
    with pytest.raises(ValueError, match=r"g\.npz: member 'x' is not an \.npy array"):
        readers.read_graph(tmp_path / "g.npz")


def test_corrupt_checkpoint_is_a_value_error(tmp_path):
    model = nn.Linear(3, 2, seed=0)
    path = tmp_path / "p.npz"
    nn.save_params(model, path)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 3] ^= 0xFF  # inside the data of a stored member: a CRC error on reading
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"p\.npz"):
        nn.load_params(nn.Linear(3, 2, seed=1), path)
    path.write_bytes(bytes(raw[: len(raw) // 2]))  # truncated
    with pytest.raises(ValueError, match=r"p\.npz"):
        nn.load_params(nn.Linear(3, 2, seed=1), path)


def test_object_arrays_are_never_unpickled(tmp_path):
    path = tmp_path / "obj.npz"
    np.savez(path, W=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match=r"obj\.npz: array 'W' is an object array"):
        nn.load_params(nn.Linear(2, 2), path, strict=False)


def test_uint64_labels_do_not_wrap(tmp_path):
    arrays = _valid_dataset_arrays()
    arrays["y"] = np.array([0, 1, 0, 1, 0, 2 ** 64 - 1], np.uint64)
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(datasets.DatasetError, match=r"d\.npz: labels must be < \d+ .*got 18446744073709551615"):
        datasets.load_npz(tmp_path / "d.npz")


def test_sparse_feature_arrays_are_checked_before_scipy(tmp_path):
    arrays = _valid_dataset_arrays()
    del arrays["x"]
    arrays.update(x_indptr=np.array([0, 2 ** 31 - 1, -2 ** 31 + 1, 0, 0, 0, 0], np.int32),
                  x_indices=np.zeros(0, np.int32), x_data=np.zeros(0, np.float32), x_shape=np.array([6, 3]))
    np.savez(tmp_path / "wrap.npz", **arrays)
    with pytest.raises(datasets.DatasetError, match=r"wrap\.npz: feature CSR arrays: x_indptr must be non-decreasing"):
        datasets.load_npz(tmp_path / "wrap.npz")
    arrays.update(x_indptr=np.zeros(7, np.int64), x_shape=np.array([6, 2 ** 40]))
    np.savez(tmp_path / "wide.npz", **arrays)
    with pytest.raises(datasets.DatasetError, match=r"wide\.npz: 'x_shape' declares 1099511627776 features"):
        datasets.load_npz(tmp_path / "wide.npz")


@pytest.mark.parametrize("line, message", [
    ("0 35184372088832", r"nodes=35184372088833 nodes for 2 edges"),        # 2**45: no MemoryError
    ("0 9223372036854775808", r"node id 9223372036854775808 is too large"),  # 2**63: no OverflowError
    ("1_0 2", r"ASCII digits 0-9, got '1_0'"),
    ("\u0661\u0662 3", r"ASCII digits 0-9"),                               # Arabic-Indic digits
    ("+1 2", r"ASCII digits 0-9, got '\+1'"),
    ("-1 2", r"must be non-negative"),
])
def test_edge_list_ids(tmp_path, line, message):
    path = tmp_path / "g.txt"
    path.write_text(f"0 1\n{line}\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"g\.txt(, line 2)?: .*{message}"):
        readers.read_graph(path)


@pytest.mark.parametrize("text, message", [
    ("%%MatrixMarket matrix coordinate pattern general\n1099511627776 1099511627776 1\n1 1\n",
     r"rows=1099511627776 nodes for 1 edges"),
    ("%%MatrixMarket matrix coordinate pattern general\n3 3 1099511627776\n1 1\n",
     r"the header declares 1099511627776 entries, more than the file can hold"),
    ("%%MatrixMarket matrix coordinate pattern symmetric\n3 4 1\n1 1\n",
     r"a symmetric matrix must be square, but the header says 3 x 4"),
    ("%%MatrixMarket matrix array real general\n100000 100000\n1\n", r"Matrix Market 'array' \(dense\) format"),
    ("%%MatrixMarket matrix coordinate pattern general\n1_0 3 1\n1 1\n", r"the size line"),
])
def test_mtx_headers(tmp_path, text, message):
    path = tmp_path / "g.mtx"
    path.write_text(text)
    with pytest.raises(ValueError, match=rf"g\.mtx: {message}"):
        readers.read_graph(path)


def test_scipy_npz_with_huge_shape(tmp_path):
    path = tmp_path / "s.npz"
    np.savez(path, format=np.array(b"coo"), shape=np.array([2 ** 40, 2 ** 40]), data=np.ones(1),
             row=np.array([0]), col=np.array([0]))
    with pytest.raises(ValueError, match=r"s\.npz: n_dst=1099511627776 nodes for 1 edges"):
        readers.read_graph(path)
    np.savez(path, indptr=np.array([0, 1]), indices=np.array([0]), shape=np.array([1, 2 ** 40]))
    with pytest.raises(ValueError, match=r"s\.npz: n_src=1099511627776 nodes for 1 edges"):
        readers.read_graph(path)


def test_valid_files_still_read(tmp_path):
    A = sp.random(20, 20, density=0.2, format="csr", random_state=1)
    sp.save_npz(tmp_path / "a.npz", A)
    sp.save_npz(tmp_path / "c.npz", A, compressed=True)
    for name in ("a.npz", "c.npz"):
        g = readers.read_graph(tmp_path / name).graph
        assert g.shape == (20, 20) and g.nnz == A.nnz
    (tmp_path / "s.mtx").write_text("%%MatrixMarket matrix coordinate pattern symmetric\n3 3 2\n2 1\n3 3\n")
    assert readers.read_graph(tmp_path / "s.mtx").graph.nnz == 3
    (tmp_path / "e.csv").write_text("# comment\n0,1,0.5\n2 1\n")
    assert readers.read_graph(tmp_path / "e.csv").graph.shape == (3, 3)
    np.savez_compressed(tmp_path / "d.npz", **_valid_dataset_arrays())
    assert datasets.load_npz(tmp_path / "d.npz").num_nodes == 6


# ---------------------------------------------------------------------- class 4: command lines
def _cli(*args, cwd):
    env = dict(os.environ, SPARSEGAT_DEBUG="")
    env.pop("SPARSEGAT_DEBUG")
    return subprocess.run([sys.executable, "-m", "sparsegat", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def _assert_one_line_error(res, code, *names):
    assert res.returncode == code, res.stderr
    assert "Traceback" not in res.stderr and "Traceback" not in res.stdout
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    for name in names:
        assert name in lines[0], lines[0]
    return lines[0]


def test_train_cli_bad_files(tmp_path):
    _huge_header_npz(tmp_path / "huge.npz", key="y")
    line = _assert_one_line_error(_cli("train", "--data", "huge.npz", "--epochs", "1", cwd=tmp_path), 1,
                                  "huge.npz", "declares shape")
    assert line.startswith("sparsegat train: error:")
    (tmp_path / "graph.mtx").write_text("%%MatrixMarket matrix coordinate pattern general\n2 2 1\n1 2\n")
    line = _assert_one_line_error(_cli("train", "--data", "graph.mtx", cwd=tmp_path), 1, "graph.mtx", ".npz")
    assert "pickle" not in line and "docs/data.md" in line
    _assert_one_line_error(_cli("train", "--data", "missing.npz", cwd=tmp_path), 1, "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 broken")
    _assert_one_line_error(_cli("train", "--data", "junk.npz", cwd=tmp_path), 1, "junk.npz")


def test_train_cli_bad_usage(tmp_path):
    res = _cli("train", "--epochs", "0", cwd=tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1] == "sparsegat train: error: --epochs must be at least 1, got 0"


def test_bench_cli_bad_files(tmp_path):
    (tmp_path / "ids.txt").write_text("0 1\n0 35184372088832\n")
    (tmp_path / "sym.mtx").write_text("%%MatrixMarket matrix coordinate pattern symmetric\n3 4 1\n1 1\n")
    _huge_header_npz(tmp_path / "huge.npz", others={"indices": np.zeros(0, np.int64)})
    for name, what in (("ids.txt", "nodes"), ("sym.mtx", "square"), ("huge.npz", "declares shape"),
                       ("missing.txt", "does not exist")):
        line = _assert_one_line_error(_cli("bench", "--graph", name, "--quiet", cwd=tmp_path), 1, name, what)
        assert line.startswith("sparsegat bench: error:")
    res = _cli("bench", "--graph", cwd=tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr
