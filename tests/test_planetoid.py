"""sparsegat.datasets.planetoid: the raw Planetoid files, their checksums, downloads and the restricted unpickler.

No test needs the network: downloads come from ``file://`` folders the tests write, with
the checksum table patched to the files written. The real Cora files are reached only
through the ``planetoid_path`` fixture of ``conftest.py`` (skipped when absent).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import re
import struct
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from sparsegat import _restricted_pickle as _pickle, datasets, train
from sparsegat import planetoid as pl
from sparsegat._restricted_pickle import CSRParts, PickleRefused, load_pickle
from sparsegat.datasets import DatasetError, planetoid


# ---------------------------------------------------------------------- writing Python 2 pickles
class G:
    """A global reference ``module name`` (the GLOBAL opcode)."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name


class Ops:
    """Opcodes written as they are (for crafted pickles)."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw


class Py2Writer:
    """Protocol-2 pickles as Python 2 wrote the Planetoid files: GLOBAL opcodes, byte strings, numpy's
    ``_reconstruct`` + BUILD for arrays, NEWOBJ + BUILD(dict) for ``csr_matrix``, ``defaultdict(list)``."""

    def __init__(self) -> None:
        self.out = bytearray(b"\x80\x02")

    def put(self, v) -> "Py2Writer":
        out = self.out
        if isinstance(v, Ops):
            out += v.raw
        elif isinstance(v, G):
            out += b"c" + v.module.encode() + b"\n" + v.name.encode() + b"\n"
        elif v is None:
            out += b"N"
        elif isinstance(v, bool):
            out += b"\x88" if v else b"\x89"
        elif isinstance(v, int):
            out += b"J" + struct.pack("<i", v)
        elif isinstance(v, (str, bytes)):  # a Python 2 str: a byte string
            raw = v.encode("latin1") if isinstance(v, str) else v
            out += (b"U" + bytes([len(raw)]) if len(raw) < 256 else b"T" + struct.pack("<I", len(raw))) + raw
        elif isinstance(v, tuple):
            out += b"("
            for item in v:
                self.put(item)
            out += b"t"
        elif isinstance(v, list):
            out += b"]"
            for item in v:
                self.put(item).out.extend(b"a")
        elif isinstance(v, np.dtype):
            self.put(G("numpy", "dtype")).put((v.str[1:], 0, 1))
            out += b"R"
            self.put((3, "|" if v.itemsize == 1 else "<", None, None, None, -1, -1, 0))
            out += b"b"
        elif isinstance(v, np.ndarray):
            self.put(G("numpy.core.multiarray", "_reconstruct")).put((G("numpy", "ndarray"), (0,), "b"))
            out += b"R"
            v = np.ascontiguousarray(v, dtype=v.dtype.newbyteorder("<"))
            self.put((1, v.shape, v.dtype, False, v.tobytes()))
            out += b"b"
        elif sp.issparse(v):
            v = sp.csr_matrix(v)
            self.put(G("scipy.sparse.csr", "csr_matrix"))
            out += b")\x81"
            self.put({"format": "csr", "_shape": v.shape, "indptr": v.indptr.astype(np.int32),
                      "indices": v.indices.astype(np.int32), "data": v.data, "maxprint": 50})
            out += b"b"
        elif isinstance(v, dict):
            out += b"}"
            for key, value in v.items():
                self.put(key).put(value)
                out += b"s"
        else:
            raise TypeError(type(v))
        return self

    def graph(self, adjacency: dict) -> bytes:
        """``defaultdict(list)`` with ``adjacency``'s items."""
        self.put(G("collections", "defaultdict")).put((G("__builtin__", "list"),))
        self.out += b"R"
        for key, value in adjacency.items():
            self.put(key).put(value)
            self.out += b"s"
        return self.done()

    def done(self) -> bytes:
        return bytes(self.out) + b"."


def py2(obj) -> bytes:
    return Py2Writer().put(obj).done()


def one_hot(labels, classes):
    out = np.zeros((len(labels), classes), dtype=np.int32)
    out[np.arange(len(labels)), labels] = 1
    return out


# ---------------------------------------------------------------------- small raw data sets
def small_raw(*, num_train=5, n_all=510, test_ids=None, features=6, classes=3, seed=0, zero_label_rows=()):
    """The eight raw files (bytes) of a small data set, and the arrays they hold.

    ``test_ids`` defaults to 8 ids in ``[n_all, n_all + 10)``, two left out: a CiteSeer-like
    case where the missing ids must be padded.
    """
    rng = np.random.default_rng(seed)
    if test_ids is None:
        test_ids = n_all + np.array([3, 0, 9, 4, 1, 7, 6, 2])  # 5 and 8 are missing
    test_ids = np.asarray(test_ids)
    n_test = len(test_ids)
    allx = sp.random(n_all, features, density=0.4, format="csr", random_state=seed, dtype=np.float32)
    allx.data[:] = 1.0
    tx = sp.random(n_test, features, density=0.4, format="csr", random_state=seed + 1, dtype=np.float32)
    tx.data[:] = rng.integers(1, 4, size=tx.nnz)
    labels_all = rng.integers(0, classes, size=n_all)
    labels_test = rng.integers(0, classes, size=n_test)
    ally, ty = one_hot(labels_all, classes), one_hot(labels_test, classes)
    ally[list(zero_label_rows)] = 0
    n = int(test_ids.max()) + 1
    adjacency = {i: [] for i in range(n)}
    for _ in range(3 * n):
        u, v = (int(a) for a in rng.integers(0, n, size=2))
        adjacency[u].append(v)  # one direction only, with repeats and self-loops: the loader symmetrises
    adjacency[0] += [0, 1, 1]
    raw = {"x": py2(allx[:num_train]), "tx": py2(tx), "allx": py2(allx), "y": py2(ally[:num_train]),
           "ty": py2(ty), "ally": py2(ally), "graph": Py2Writer().graph(adjacency),
           "test.index": "".join(f"{i}\n" for i in test_ids).encode()}
    arrays = dict(allx=allx, tx=tx, ally=ally, ty=ty, test=test_ids, adjacency=adjacency, n=n)
    return raw, arrays


def pyg_reference(arrays, num_train):
    """PyG's ``read_planetoid_data`` steps, literally, in dense NumPy (CiteSeer branch: pad the test range)."""
    allx, tx, ally, ty, test = (arrays[k] for k in ("allx", "tx", "ally", "ty", "test"))
    tx, ally = tx.toarray(), ally.astype(np.float64)
    sorted_test = np.sort(test)
    span = int(test.max() - test.min()) + 1
    tx_ext = np.zeros((span, tx.shape[1]))
    tx_ext[sorted_test - test.min()] = tx
    ty_ext = np.zeros((span, ty.shape[1]))
    ty_ext[sorted_test - test.min()] = ty
    x = np.concatenate([allx.toarray(), tx_ext])
    x[test] = x[sorted_test]
    y = np.concatenate([ally, ty_ext]).argmax(axis=1)
    y[test] = y[sorted_test]
    n = y.shape[0]
    src = [k for k, vs in arrays["adjacency"].items() for _ in vs]
    dst = [v for vs in arrays["adjacency"].values() for v in vs]
    edges = {(s, d) for s, d in zip(src, dst) if s != d}
    edges |= {(d, s) for s, d in edges}
    train_mask = np.arange(n) < num_train
    val_mask = (np.arange(n) >= num_train) & (np.arange(n) < num_train + 500)
    test_mask = np.isin(np.arange(n), test)
    return x, y, edges, train_mask, val_mask, test_mask


def edge_set(graph):
    indptr, indices = np.asarray(graph.indptr), np.asarray(graph.indices)
    rows = np.repeat(np.arange(graph.shape[0]), np.diff(indptr))
    return set(zip(indices.tolist(), rows.tolist()))


def write_files(folder: Path, name: str, raw: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for f, data in raw.items():
        (folder / f"ind.{name}.{f}").write_bytes(data)


@pytest.fixture
def patched_table(monkeypatch):
    """Make the checksum table of ``name`` that of the given raw files (so small test files verify)."""
    def patch(name: str, raw: dict) -> None:
        table = {f: pl._Expected(len(d), hashlib.sha256(d).hexdigest()) for f, d in raw.items()}
        monkeypatch.setitem(pl.CHECKSUMS, name, table)
    return patch


# ---------------------------------------------------------------------- the real Cora files
def test_real_cora(planetoid_path):
    data = planetoid("cora", root=planetoid_path, download=False)
    g = data.graph
    assert (data.num_nodes, g.nnz, data.num_features, data.num_classes) == (2708, 10556, 1433, 7)
    assert [int(m.sum()) for m in (data.train_mask, data.val_mask, data.test_mask)] == [140, 500, 1000]
    assert not (data.train_mask & data.val_mask).any() and not (data.val_mask & data.test_mask).any()
    assert np.array_equal(np.flatnonzero(data.train_mask), np.arange(140))
    assert np.array_equal(np.flatnonzero(data.val_mask), np.arange(140, 640))
    a = sp.csr_matrix((np.ones(g.nnz), np.asarray(g.indices), np.asarray(g.indptr)), shape=g.shape)
    assert (a != a.T).nnz == 0, "not symmetric"
    assert a.diagonal().sum() == 0, "self-loops"
    assert a.max() == 1, "duplicate edges"
    assert data.features_sparse and data.x.dtype == np.float32 and data.y.dtype == np.int64
    assert np.bincount(data.y).tolist() == [351, 217, 418, 818, 426, 298, 180]
    assert data.name == "cora"


def test_real_cora_downloaded_from_a_file_mirror(planetoid_path, tmp_path):
    """The real checksum table, through the download path: every file verified, then kept."""
    root = tmp_path / "empty" / "root"
    data = planetoid("cora", root=root, url=planetoid_path.resolve().as_uri())
    assert data.num_nodes == 2708 and data.graph.nnz == 10556
    for f in pl.FILES:
        assert (root / f"ind.cora.{f}").read_bytes() == (planetoid_path / f"ind.cora.{f}").read_bytes()


def test_real_cora_matches_cora_npz(planetoid_path, cora_path):
    raw, npz = planetoid("Cora", root=planetoid_path, download=False), datasets.load_npz(cora_path)
    assert np.array_equal(raw.y, npz.y) and raw.num_classes == npz.num_classes
    for m in ("train_mask", "val_mask", "test_mask"):
        assert np.array_equal(getattr(raw, m), getattr(npz, m)), m
    assert edge_set(raw.graph) == edge_set(npz.graph)
    assert (raw.x != npz.x).nnz == 0


def test_real_files_reference_only_the_admitted_globals(planetoid_path):
    """What ``pickletools`` shows the real files use, all of it admitted (and nothing else is)."""
    import pickletools

    seen = set()
    for f in ("x", "tx", "allx", "y", "ty", "ally", "graph"):
        for op, arg, _ in pickletools.genops((planetoid_path / f"ind.cora.{f}").read_bytes()):
            if op.name == "GLOBAL":
                seen.add(arg.replace(" ", "."))
    assert seen == {"numpy.core.multiarray._reconstruct", "numpy.ndarray", "numpy.dtype",
                    "scipy.sparse.csr.csr_matrix", "collections.defaultdict", "__builtin__.list"}
    assert seen <= set(_pickle.ADMITTED_GLOBALS)
    assert set(_pickle.ADMITTED_GLOBALS) - seen == {"numpy._core.multiarray._reconstruct",
                                                    "scipy.sparse._csr.csr_matrix", "builtins.list"}


def test_real_pickles_match_the_standard_unpickler(planetoid_path):
    """The restricted reader gives exactly what pickle.load (trusted here: checksummed files) gives."""
    for f in ("y", "x", "graph"):
        data = (planetoid_path / f"ind.cora.{f}").read_bytes()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SciPy's deprecated scipy.sparse.csr path
            ref = pickle.loads(data, encoding="latin1")
        ours = load_pickle(data)
        if isinstance(ours, CSRParts):
            assert ours.shape == ref.shape
            for key in ("indptr", "indices", "data"):
                assert np.array_equal(getattr(ours, key), getattr(ref, key))
        elif isinstance(ours, np.ndarray):
            assert np.array_equal(ours, ref) and ours.dtype == ref.dtype
        else:
            assert ours == dict(ref)


# ---------------------------------------------------------------------- small files
def test_writer_produces_the_real_format():
    """The test writer's pickles load with the standard unpickler into the real objects (trusted: ours)."""
    x = sp.csr_matrix(np.array([[0, 1.5, 0], [2, 0, 0]], dtype=np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = pickle.loads(py2(x), encoding="latin1")
    assert sp.issparse(ref) and (ref != x).nnz == 0
    y = one_hot([2, 0, 1], 3)
    assert np.array_equal(pickle.loads(py2(y), encoding="latin1"), y)
    assert dict(pickle.loads(Py2Writer().graph({0: [1], 1: [0]}), encoding="latin1")) == {0: [1], 1: [0]}


def test_small_citeseer_like_matches_pyg_steps():
    raw, arrays = small_raw(zero_label_rows=(7, 30))
    data = pl.assemble("citeseer", raw, "mem")
    x, y, edges, train_mask, val_mask, test_mask = pyg_reference(arrays, num_train=5)
    assert data.num_nodes == arrays["n"] == 520
    assert np.allclose(data.x.toarray(), x) and np.array_equal(data.y, y)
    assert edge_set(data.graph) == edges
    assert np.array_equal(data.train_mask, train_mask) and np.array_equal(data.val_mask, val_mask)
    assert np.array_equal(data.test_mask, test_mask)
    padded = [515, 518]  # the two ids test.index lacks
    assert data.x[padded].nnz == 0 and data.y[padded].tolist() == [0, 0]
    assert not (data.train_mask | data.val_mask | data.test_mask)[padded].any()
    assert data.y[[7, 30]].tolist() == [0, 0]  # all-zero label rows: argmax 0, as PyG
    assert data.num_classes == 3 and int(data.test_mask.sum()) == 8


def test_test_rows_go_to_their_ids():
    raw, arrays = small_raw()
    data = pl.assemble("cora", raw, "mem")
    tx, ty = arrays["tx"].toarray(), arrays["ty"].argmax(axis=1)
    for j, node in enumerate(arrays["test"]):
        assert np.array_equal(data.x[node].toarray()[0], tx[j]) and data.y[node] == ty[j]
    assert (data.x[:510] != arrays["allx"]).nnz == 0


def test_contiguous_test_ids_need_no_padding():
    raw, arrays = small_raw(test_ids=510 + np.random.default_rng(1).permutation(10))
    data = pl.assemble("cora", raw, "mem")
    assert data.num_nodes == 520
    x, y, edges, *_ = pyg_reference(arrays, num_train=5)
    assert np.allclose(data.x.toarray(), x) and np.array_equal(data.y, y) and edge_set(data.graph) == edges


def test_name_case_and_errors_of_arguments(tmp_path):
    with pytest.raises(ValueError, match="name must be one of cora, citeseer, pubmed.*'reddit'"):
        planetoid("reddit", root=tmp_path)
    with pytest.raises(TypeError, match="name must be a string"):
        planetoid(3, root=tmp_path)
    with pytest.raises(TypeError, match="root must be a folder path or None, got int"):
        planetoid("cora", root=3)
    with pytest.raises(TypeError, match="download must be True or False"):
        planetoid("cora", root=tmp_path, download="no")
    with pytest.raises(ValueError, match="url must be an https, http, file address.*ftp://"):
        planetoid("cora", root=tmp_path / "empty", url="ftp://example.org/data/")
    with pytest.raises(FileNotFoundError, match=r"missing Planetoid files ind\.cora\.x, .*download=False"):
        planetoid("cora", root=tmp_path / "empty", download=False)


# ---------------------------------------------------------------------- downloads and checksums
def test_file_url_download_into_empty_root(tmp_path, patched_table):
    raw, arrays = small_raw()
    write_files(tmp_path / "mirror", "pubmed", raw)
    patched_table("pubmed", raw)
    root = tmp_path / "cache" / "planetoid"
    log = io.StringIO()
    data = planetoid("PubMed", root=root, url=(tmp_path / "mirror").as_uri(), log=log)
    assert sorted(p.name for p in root.iterdir()) == sorted(f"ind.pubmed.{f}" for f in pl.FILES)
    assert data.num_nodes == 520 and data.name == "pubmed"
    assert log.getvalue().count("downloading") == 8
    # Second call: everything is there, nothing is downloaded (the mirror may go away).
    for p in (tmp_path / "mirror").iterdir():
        p.unlink()
    again = planetoid("pubmed", root=root, url=(tmp_path / "mirror").as_uri(), log=log)
    assert log.getvalue().count("downloading") == 8 and np.array_equal(again.y, data.y)


def test_default_root_and_url_from_the_environment(tmp_path, patched_table, monkeypatch):
    raw, _ = small_raw()
    write_files(tmp_path / "mirror", "cora", raw)
    patched_table("cora", raw)
    monkeypatch.setenv("SPARSEGAT_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("SPARSEGAT_PLANETOID_URL", (tmp_path / "mirror").as_uri() + "/")
    assert pl.default_root() == tmp_path / "data"
    data = planetoid("cora")
    assert data.num_nodes == 520 and (tmp_path / "data" / "ind.cora.graph").is_file()
    monkeypatch.delenv("SPARSEGAT_DATA")
    assert pl.default_root() == Path.home() / ".cache" / "sparsegat" / "planetoid"


def test_wrong_checksum_of_a_download_is_not_kept(tmp_path, patched_table):
    raw, _ = small_raw()
    write_files(tmp_path / "mirror", "cora", raw)
    patched_table("cora", raw)
    good = pl.CHECKSUMS["cora"]["ty"]
    pl.CHECKSUMS["cora"]["ty"] = pl._Expected(good.size, "0" * 64)
    root = tmp_path / "root"
    with pytest.raises(ValueError, match=rf"ind\.cora\.ty downloaded from file:.*SHA-256 {good.sha256} "
                                         rf"\(\d+ bytes\), expected 0{{64}} .*not kept") as info:
        planetoid("cora", root=root, url=(tmp_path / "mirror").as_uri())
    assert isinstance(info.value, DatasetError)
    assert not (root / "ind.cora.ty").exists()
    assert not [p for p in root.iterdir() if p.name.endswith(".part")]


def test_a_larger_download_is_cut_and_refused(tmp_path, patched_table):
    raw, _ = small_raw()
    write_files(tmp_path / "mirror", "cora", raw)
    patched_table("cora", raw)
    (tmp_path / "mirror" / "ind.cora.y").write_bytes(raw["y"] + b"\0" * 10_000)
    with pytest.raises(ValueError, match=r"ind\.cora\.y downloaded .*wrong checksum"):
        planetoid("cora", root=tmp_path / "root", url=(tmp_path / "mirror").as_uri())
    assert not (tmp_path / "root" / "ind.cora.y").exists()


def test_wrong_checksum_of_a_local_file_is_reported_and_left(tmp_path, patched_table):
    raw, _ = small_raw()
    write_files(tmp_path, "cora", raw)
    patched_table("cora", raw)
    (tmp_path / "ind.cora.graph").write_bytes(raw["graph"] + b"extra")  # larger: still hashed and reported
    with pytest.raises(ValueError, match=r"ind\.cora\.graph: wrong checksum: SHA-256 [0-9a-f]{64} .*expected "
                                         r"[0-9a-f]{64} .*delete it to download it again"):
        planetoid("cora", root=tmp_path, download=False)
    assert (tmp_path / "ind.cora.graph").exists()


def test_missing_mirror_file_is_an_oserror_naming_the_url(tmp_path, patched_table):
    raw, _ = small_raw()
    patched_table("cora", raw)
    (tmp_path / "mirror").mkdir()
    with pytest.raises(OSError, match=r"could not download file:.*ind\.cora\.x"):
        planetoid("cora", root=tmp_path / "root", url=(tmp_path / "mirror").as_uri())


def test_real_checksums_table():
    assert set(pl.CHECKSUMS) == set(pl.NAMES)
    for name, table in pl.CHECKSUMS.items():
        assert set(table) == set(pl.FILES), name
    assert pl.CHECKSUMS["cora"]["x"][:2] == (22119, "23cfa55d91c6f624233f5eb7b6e3f141f1bd2b2ae39608a63cf5d084bb27baab")
    assert pl.CHECKSUMS["pubmed"]["allx"].sha256 is None  # no published checksum: structure checked


def test_pubmed_allx_without_checksum_is_checked_by_structure(tmp_path, patched_table, monkeypatch):
    raw, _ = small_raw()
    write_files(tmp_path / "mirror", "pubmed", raw)
    patched_table("pubmed", raw)
    monkeypatch.setitem(pl.CHECKSUMS["pubmed"], "allx", pl._Expected(None, None, (510, 6)))
    assert planetoid("pubmed", root=tmp_path / "ok", url=(tmp_path / "mirror").as_uri()).num_nodes == 520
    monkeypatch.setitem(pl.CHECKSUMS["pubmed"], "allx", pl._Expected(None, None, (18717, 500)))
    with pytest.raises(ValueError, match=r"ind\.pubmed\.allx downloaded .*expected a csr_matrix of shape "
                                         r"\(18717, 500\), got shape \(510, 6\).*not kept"):
        planetoid("pubmed", root=tmp_path / "bad", url=(tmp_path / "mirror").as_uri())
    assert not (tmp_path / "bad" / "ind.pubmed.allx").exists()


# ---------------------------------------------------------------------- hostile and broken pickles
def _reduce_call(module, name, *args) -> bytes:
    return Py2Writer().put(G(module, name)).put(tuple(args)).put(Ops(b"R")).done()


class _Evil:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.mark.parametrize("make", ["os.system", "posix.system", "builtins.eval", "subprocess.Popen",
                                  "builtins.exec", "protocol4_os_system", "builtins.getattr"])
def test_malicious_pickle_never_runs(tmp_path, make):
    marker = tmp_path / "pwned"
    cmd = f"touch {marker}"
    code = f"open({str(marker)!r}, 'w').close()"
    if make == "protocol4_os_system":  # what pickle.dumps writes today: STACK_GLOBAL
        data = pickle.dumps(_Evil(os.system, cmd), protocol=4)
        name = f"{os.system.__module__}.system"
    elif make in ("os.system", "posix.system"):
        data, name = _reduce_call(*make.split("."), cmd), make
    elif make == "subprocess.Popen":
        data, name = _reduce_call("subprocess", "Popen", ["sh", "-c", cmd]), make
    elif make == "builtins.getattr":
        data, name = _reduce_call("builtins", "getattr", 1, "real"), make
    else:
        data, name = _reduce_call(*make.split("."), code), make
    with pytest.raises(PickleRefused, match="refused to load the global " + re.escape(name)):
        load_pickle(data)
    assert not marker.exists()
    # Through the whole loader: the same refusal, naming the file.
    raw, _ = small_raw()
    raw["graph"] = data
    with pytest.raises(DatasetError, match=rf"mem/ind\.cora\.graph: refused to load the global"):
        pl.assemble("cora", raw, "mem")
    assert not marker.exists()


def test_malicious_pickle_in_a_subprocess_leaves_no_trace(tmp_path):
    """The same, in a fresh interpreter (no state of the test process can hide a side effect)."""
    marker = tmp_path / "pwned"
    (tmp_path / "evil").write_bytes(_reduce_call("os", "system", f"touch {marker}"))
    script = ("import sys\nfrom sparsegat._restricted_pickle import load_pickle\n"
              "try:\n    load_pickle(open(sys.argv[1], 'rb').read())\nexcept ValueError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "evil")], capture_output=True, text=True,
                         timeout=60)
    assert "refused to load the global os.system" in out.stdout and not marker.exists()


def _array_state(shape, dtype_code, raw, order="<") -> bytes:
    """``_reconstruct(ndarray, (0,), 'b')`` then BUILD with a hand-made state."""
    w = Py2Writer().put(G("numpy.core.multiarray", "_reconstruct")).put((G("numpy", "ndarray"), (0,), "b"))
    w.put(Ops(b"R")).put(Ops(b"("))
    w.put(1).put(shape)
    w.put(G("numpy", "dtype")).put((dtype_code, 0, 1)).put(Ops(b"R"))
    w.put((3, order, None, None, None, -1, -1, 0)).put(Ops(b"b"))
    w.put(False).put(raw).put(Ops(b"tb"))
    return w.done()


@pytest.mark.parametrize("data, message", [
    (_array_state((2,), "O", b"\0" * 16), "dtype 'O' is not a plain numeric type"),
    (_array_state((2,), "V8", b"\0" * 16), "dtype 'V8' is not a plain numeric type"),
    (_array_state((2,), "i4", b"\0" * 4), r"needs 8 bytes of data, got 4"),
    (_array_state((1 << 30, 1 << 9), "f8", b"\0" * 8), "needs 4398046511104 bytes"),
    (_array_state((2, 2, 2), "i1", b"\0" * 8), "shape must be 1 or 2"),
    (_array_state((-1,), "i1", b""), "shape must be 1 or 2 non-negative"),
    (_array_state((2,), "i4", b"\0" * 8, order="x"), "malformed dtype state"),
    (Py2Writer().put(G("numpy.core.multiarray", "_reconstruct"))
     .put((G("scipy.sparse.csr", "csr_matrix"), (0,), "b")).put(Ops(b"R")).done(),
     "_reconstruct may only make an empty numpy.ndarray"),
    (Py2Writer().put(G("collections", "defaultdict")).put((G("numpy", "dtype"),)).put(Ops(b"R")).done(),
     "default factory"),
    (_reduce_call("__builtin__", "list", [1, 2]), "may only appear as an argument"),
    (Py2Writer().put(G("scipy.sparse.csr", "csr_matrix")).put(Ops(b")\x81")).put(
        {"format": "csc", "_shape": (1, 1)}).put(Ops(b"b")).done(), "format must be 'csr'"),
    (Py2Writer().put(G("scipy.sparse.csr", "csr_matrix")).put(Ops(b")\x81")).put(
        {"_shape": (1, 1), "indptr": [0, 1]}).put(Ops(b"b")).done(), "'indptr' must be a numpy array"),
    (py2([1, 2, 3]), "holds a list"),
    (py2(5), "holds a int"),
    (b"\x80\x02}q\x00(X\x01\x00\x00\x00aK\x01u}b.", "not a readable Planetoid pickle"),  # BUILD on a dict
    (b"\x80\x02(X\x01\x00\x00\x00aq\x01Ne.", "not a readable"),  # garbage opcode sequence
    (b"\x80\x02K\x01Q.", "not a readable Planetoid pickle .*persistent"),  # BINPERSID
    (b"", "not a readable Planetoid pickle"),
    (b"not a pickle at all", "not a readable Planetoid pickle"),
])
def test_abuse_of_the_admitted_names_is_refused(data, message):
    with pytest.raises(ValueError, match=message):
        load_pickle(data)


def test_a_pickle_cannot_alter_the_stand_ins_for_later_files():
    """BUILD on an admitted global (a function's attributes, a class) fails and changes nothing."""
    for g in (G("numpy.core.multiarray", "_reconstruct"), G("collections", "defaultdict"), G("numpy", "ndarray"),
              G("__builtin__", "list"), G("numpy", "dtype"), G("scipy.sparse.csr", "csr_matrix")):
        for state in ({"_func": None}, (None, {"_func": None, "__defaults__": (1,)})):
            with pytest.raises(ValueError):
                load_pickle(Py2Writer().put(g).put(state).put(Ops(b"b")).done())
    y = one_hot([0, 1], 2)
    assert np.array_equal(load_pickle(py2(y)), y)
    assert load_pickle(Py2Writer().graph({0: [1]})) == {0: [1]}


def test_a_dtype_state_cannot_change_numpys_builtin_dtypes():
    before = np.dtype("f8").byteorder
    arr = load_pickle(_array_state((2,), "f8", np.array([1.0, 2.0], ">f8").tobytes(), order=">"))
    assert arr.tolist() == [1.0, 2.0] and arr.dtype == np.float64 and np.dtype("f8").byteorder == before


def test_truncated_pickles_are_value_errors(planetoid_path):
    data = (planetoid_path / "ind.cora.y").read_bytes()
    for cut in list(range(0, 200)) + list(range(200, len(data), 97)):
        with pytest.raises(ValueError):
            load_pickle(data[:cut])


def test_corrupt_pickles_are_value_errors_or_checked_data():
    """Random byte flips in small real-format pickles: a ValueError or a checked value, never anything else."""
    rng = np.random.default_rng(0)
    raw, _ = small_raw()
    for f in ("y", "x", "graph"):
        data = raw[f]
        for _ in range(150):
            bad = bytearray(data)
            for pos in rng.integers(2, len(bad), size=3):
                bad[pos] = int(rng.integers(0, 256))
            try:
                out = load_pickle(bytes(bad))
            except ValueError:
                continue
            assert isinstance(out, (np.ndarray, CSRParts, dict))


def test_truncated_or_corrupt_files_through_the_loader():
    raw, _ = small_raw()
    for f in ("x", "tx", "allx", "y", "ty", "ally", "graph"):
        broken = dict(raw, **{f: raw[f][: len(raw[f]) // 2]})
        with pytest.raises(DatasetError, match=rf"mem/ind\.cora\.{f}: not a readable Planetoid pickle"):
            pl.assemble("cora", broken, "mem")


# ---------------------------------------------------------------------- files that disagree
def _with(raw, **files):
    return dict(raw, **{k.replace("_", "."): v for k, v in files.items()})


@pytest.mark.parametrize("change, message", [
    (dict(test_index=b"510\n511\nabc\n"), r"test\.index: line 3 is not a non-negative integer"),
    (dict(test_index=b"510\n510\n511\n512\n513\n514\n515\n516\n"), "repeats a node id"),
    (dict(test_index=b"511\n512\n513\n514\n515\n516\n517\n518\n"), "must start right after the 510 allx nodes"),
    (dict(test_index=b"510\n511\n512\n513\n514\n515\n516\n99999999\n"), "leaves too many gaps"),
    (dict(test_index=b"510\n511\n"), r"2 ids, but tx has 8 rows"),
    (dict(test_index=b"\xff\xfe"), "not a text file"),
    (dict(test_index=b""), "no node ids"),
    (dict(graph=Py2Writer().graph({0: [1, 600]})), "node id 600 is out of range for 520 nodes"),
    (dict(graph=Py2Writer().graph({-1: [1]})), "node id -1 is out of range"),
    (dict(graph=Py2Writer().graph({0: [1, "2"]})), "adjacency list of node 0 holds a value that is not an int"),
    (dict(graph=Py2Writer().graph({"0": [1]})), "expected int keys and list values"),
    (dict(graph=py2(one_hot([0], 2))), "expected a dict of adjacency lists"),
    (dict(ty=py2(one_hot([0, 1, 2], 3))), r"ind\.cora\.ty: 3 rows, but ind\.cora\.tx has 8"),
    (dict(y=py2(one_hot([0] * 5, 4))), "same number of classes"),
    (dict(x=py2(sp.csr_matrix((5, 7), dtype=np.float32))), "same number of features"),
    (dict(x=py2(np.zeros((5, 6)))), "expected a scipy.sparse csr_matrix of features"),
    (dict(ally=py2(np.zeros(510))), "expected a 2-D array of one-hot labels"),
    (dict(ally=py2(np.full((510, 3), np.nan))), "labels contain NaN"),
    (dict(allx=py2(sp.csr_matrix(np.full((510, 6), np.inf, dtype=np.float32)))), "NaN or infinity"),
])
def test_files_that_disagree(change, message):
    raw, _ = small_raw()
    with pytest.raises(DatasetError, match=message):
        pl.assemble("cora", _with(raw, **change), "mem")


def test_bad_csr_structure_is_caught_by_check_csr():
    raw, _ = small_raw()
    w = Py2Writer().put(G("scipy.sparse.csr", "csr_matrix")).put(Ops(b")\x81"))
    w.put({"_shape": (5, 6), "indptr": np.array([0, 1, 2, 3, 4, 5], np.int32),
           "indices": np.array([0, 1, 2, 3, 60], np.int32), "data": np.ones(5, np.float32)}).put(Ops(b"b"))
    with pytest.raises(DatasetError, match=r"ind\.cora\.x: csr_matrix: indices must lie in \[0, n_cols=6\)"):
        pl.assemble("cora", dict(raw, x=w.done()), "mem")


def test_too_few_nodes_for_the_split():
    raw, _ = small_raw(n_all=300, test_ids=300 + np.arange(4))
    with pytest.raises(DatasetError, match="too few for the 5 training and 500 validation nodes"):
        pl.assemble("cora", raw, "mem")


# ---------------------------------------------------------------------- the command line
def _run(capsys, *args):
    rc = train.main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def test_train_on_cora_by_name(capsys, monkeypatch, planetoid_path):
    monkeypatch.setenv("SPARSEGAT_DATA", str(planetoid_path))
    rc, out, err = _run(capsys, "--data", "cora", "--epochs", "40", "--json", "--log-every", "0")
    assert rc == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["num_nodes"] == 2708 and result["num_edges"] == 10556 and result["data"] == "cora"
    assert result["test_accuracy"] > 0.72 > result["majority_test_accuracy"] + 0.3


def test_train_data_names_and_files(capsys, monkeypatch, tmp_path):
    rc, _, err = _run(capsys, "--data", "citeseer2")
    assert rc == 1 and err.strip() == ("sparsegat train: error: --data citeseer2: no such file, and not a data "
                                       "set name (cora, citeseer, pubmed)")
    # A name whose files cannot be fetched: one line naming the address.
    monkeypatch.setenv("SPARSEGAT_DATA", str(tmp_path / "root"))
    monkeypatch.setenv("SPARSEGAT_PLANETOID_URL", (tmp_path / "nowhere").as_uri())
    rc, _, err = _run(capsys, "--data", "CiteSeer", "--epochs", "1")
    lines = err.strip().splitlines()
    assert rc == 1 and "could not download file:" in lines[-1] and "ind.citeseer.x" in lines[-1]
    assert lines[-1].startswith("sparsegat train: error:")
