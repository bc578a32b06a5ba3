"""The Planetoid citation data sets (Cora, CiteSeer, PubMed) from their eight raw files.

The public entry point is :func:`sparsegat.datasets.planetoid`; this module finds,
downloads and verifies the files (:func:`fetch`) and turns them into a
:class:`~sparsegat.datasets.Dataset` (:func:`assemble`), the way the standard loaders
(Kipf's GCN ``load_data``, PyTorch Geometric's ``read_planetoid_data``) do.

The pickled files are read only by the restricted unpickler of
:mod:`sparsegat._restricted_pickle`, and every array it returns is checked here (shapes that
agree between files, CSR structures by :func:`sparsegat.csr_format.check_csr`, node ids
in range) before anything is built from it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, NamedTuple, TextIO

import numpy as np

from ._restricted_pickle import MAX_PICKLE_BYTES, CSRParts, load_pickle
from .csr_format import check_csr
from .datasets import MAX_CLASSES, MAX_FEATURES, Dataset, DatasetError
from .graph import CSRGraph

__all__ = ["NAMES", "FILES", "DEFAULT_URL", "default_root", "fetch", "assemble", "load"]

#: The data sets, by the names :func:`sparsegat.datasets.planetoid` takes (any case).
NAMES = ("cora", "citeseer", "pubmed")
#: The eight raw files of each data set: ``ind.{name}.{file}``.
FILES = ("x", "tx", "allx", "y", "ty", "ally", "graph", "test.index")
#: Where missing files are downloaded from (the public Planetoid repository), ``+ filename``.
DEFAULT_URL = "https://github.com/kimiyoung/planetoid/raw/master/data/"
#: Environment variables: the default root folder, and another URL base (a mirror, ``file://``...).
ROOT_ENV, URL_ENV = "SPARSEGAT_DATA", "SPARSEGAT_PLANETOID_URL"
#: Validation nodes of the standard split: the ``NUM_VAL`` nodes right after the training nodes.
NUM_VAL = 500
_SCHEMES = ("https", "http", "file")
_TIMEOUT_S = 60


class _Expected(NamedTuple):
    """What a raw file must be: its size and SHA-256, or (unknown) the shape it must unpickle to."""

    size: int | None
    sha256: str | None
    shape: tuple[int, int] | None = None


def _table(rows: str) -> dict[str, _Expected]:
    out = {}
    for line in rows.split(";"):
        file, size, digest = line.split()
        out[file] = _Expected(int(size), digest)
    return out


#: Size in bytes and SHA-256 of every file of the Planetoid release.
CHECKSUMS: dict[str, dict[str, _Expected]] = {
    "cora": _table(
        "x 22119 23cfa55d91c6f624233f5eb7b6e3f141f1bd2b2ae39608a63cf5d084bb27baab;"
        "tx 148025 b9afbaa4a400df991f6f02ef677e1e44da55ffc04801fd02f9e673987829226a;"
        "allx 257305 9419ba2f26f5c35243db64aba110e0f35a04851609e0dc5433450676ca6b8543;"
        "y 4054 94465c14eb53e04ca262198dcbb2521ee8af60fb3f3d546cd6ca24a511b0e7d1;"
        "ty 28135 41f5ac76596a1699cc33f53084a2419e92961c42bb75f36fc38e616d348532ad;"
        "ally 47959 2b998f5cc7fedc86e7f97ca2498f47a1ffc1462c29e2d578b23bf3f62b6e7d71;"
        "graph 59847 58f13302f39dde8852dad6fe6d15b89b077b6d7f837626bce671ef80344b383d;"
        "test.index 5000 297ce89af2b51a6a194181c7dbe1796c6a1cf9cd9349a88383b1b1e227867875"),
    "citeseer": _table(
        "x 31087 d20de19150741e555de0ed037195630fc194114ebc7fd72ced62810148aa22f6;"
        "tx 260321 539a8906a2da97628d212f2fdd668c109a8b3f0d36574b59e5d3fd5b5303da21;"
        "allx 595021 2ac30345d95c9ec933a817ee0bdd6a5f077f8c184a20e696910192d534414668;"
        "y 3014 8ba87e515d8e3ee3cf52f6d2c5b86aa73f11ecad825a808455209ec26cd54924;"
        "ty 24135 55e5bd1ba1e733a04598753ad1a8d57957f4b8f89e74519f41f4f4938767e4ce;"
        "ally 55623 f704b2d986dde6c2669934de1f3ae5696a6cf9455c0f6b2646a2d135ea0a1c95;"
        "graph 61987 d79a4ef9d3e7169aee8946145f6b7306e35bc79bffad26346cfb94e10e9912a7;"
        "test.index 5000 2af990671580b6b2df5d158d1038f8292e30c9cd821b5453f399659b25b723d4"),
    "pubmed": _table(
        "x 23172 fbe9cb5c47200d1b7769a26e579be3b7130b556831f9d850e77c4c74f2599b33;"
        "tx 405505 4eb5f5d0f30f26497eb0ac6ac9719d09c67e284f1ed0385c93f3ef27a671da3d;"
        "y 854 e6c807633307a07ed659249006536a147c7999c797f11a2560752990181b41b3;"
        "ty 12135 ee2e0d4819d9fbcc403689c3bf2e49face401b605932f093bc58ab6461130fdd;"
        "ally 224739 0c37bbe3b5014ec365e9d393cf4791925e5ed94fb194305d74f064a8d7b50f0e;"
        "graph 471808 5b89f0036ca22909471f1e6558eb42fa06e0c730a577bde5b058b40638f81dc9;"
        "test.index 6000 b101d421688bbaecbd82e8a18f1e282378d6830f3a37666f28ebc47f844341b5"),
}
# PubMed's allx has no published checksum: it must unpickle to a CSR matrix of this shape
# (one row per row of the checksummed ally, the 500 features of x and tx), checked again on loading.
CHECKSUMS["pubmed"]["allx"] = _Expected(None, None, (18717, 500))


# ---------------------------------------------------------------------- arguments
def check_name(name: Any) -> str:
    """``name`` in lower case, if it is one of :data:`NAMES` (any case); else ValueError/TypeError."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a string ({', '.join(NAMES)}), got {type(name).__name__}")
    key = name.lower()
    if key not in NAMES:
        raise ValueError(f"name must be one of {', '.join(NAMES)} (any case), got {name!r}")
    return key


def default_root() -> Path:
    """``$SPARSEGAT_DATA`` when set, else ``~/.cache/sparsegat/planetoid``."""
    env = os.environ.get(ROOT_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "sparsegat" / "planetoid"


def _url_base(url: str | None) -> str:
    """The download base (argument, else ``$SPARSEGAT_PLANETOID_URL``, else :data:`DEFAULT_URL`), ending in ``/``."""
    base = url if url is not None else os.environ.get(URL_ENV) or DEFAULT_URL
    if not isinstance(base, str):
        raise TypeError(f"url must be a string, got {type(base).__name__}")
    scheme = urllib.parse.urlsplit(base).scheme.lower()
    if scheme not in _SCHEMES:
        raise ValueError(f"url must be an {', '.join(_SCHEMES)} address, got {base!r}")
    return base if base.endswith("/") else base + "/"


def filename(name: str, file: str) -> str:
    """``ind.{name}.{file}``, the name of a raw file in the release."""
    return f"ind.{name}.{file}"


# ---------------------------------------------------------------------- files
def fetch(name: str, root: Path, download: bool = True, url: str | None = None,
          log: TextIO | None = None) -> dict[str, bytes]:
    """The verified bytes of the eight raw files of ``name``, downloading the missing ones into ``root``.

    Parameters
    ----------
    name : str
        One of :data:`NAMES` (lower case).
    root : Path
        The folder that holds (or receives) the files.
    download : bool
        Download missing files; without it a missing file raises ``FileNotFoundError``.
    url : str, optional
        Base address of the files (default :data:`DEFAULT_URL`).
    log : text stream, optional
        Receives one line per file downloaded.

    Returns
    -------
    dict
        ``{file: bytes}`` for the eight entries of :data:`FILES`.
    """
    missing = [f for f in FILES if not (root / filename(name, f)).is_file()]
    if missing and not download:
        raise FileNotFoundError(2, f"missing Planetoid files {', '.join(filename(name, f) for f in missing)} "
                                   f"(download=False)", str(root))
    if missing:
        base = _url_base(url)
        root.mkdir(parents=True, exist_ok=True)
        for f in missing:
            _download(base + filename(name, f), root / filename(name, f), CHECKSUMS[name][f], log)
    return {f: _read_verified(root / filename(name, f), CHECKSUMS[name][f]) for f in FILES}


def _download(url: str, dest: Path, expected: _Expected, log: TextIO | None) -> None:
    """Download ``url`` to ``dest`` via a temporary file that is kept only once verified."""
    if log is not None:
        print(f"note      downloading {url} to {dest.parent}", file=log, flush=True)
    data = _get(url, expected.size)
    try:
        _verify(data, expected, f"{dest.name} downloaded from {url}")
    except DatasetError as exc:
        raise DatasetError(f"{exc}; the download was not kept") from None
    # Written under a temporary name and renamed: the folder never holds a partial file.
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _get(url: str, size: int | None) -> bytes:
    """The body of ``url``, read up to one byte past ``size`` (or the pickle limit) so a larger file shows."""
    limit = size if size is not None else MAX_PICKLE_BYTES
    chunks, total = [], 0
    try:
        with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as response:
            while total <= limit:
                chunk = response.read(min(1 << 20, limit + 1 - total))
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise OSError(f"could not download {url}: {reason}") from None
    return b"".join(chunks)


def _read_verified(path: Path, expected: _Expected) -> bytes:
    """The bytes of ``path``, read once, after checking them against ``expected``."""
    on_disk = path.stat().st_size
    if on_disk > MAX_PICKLE_BYTES:  # never read a huge file into memory just to find its hash is wrong
        raise DatasetError(f"{path}: {on_disk} bytes, more than any Planetoid file "
                           f"({MAX_PICKLE_BYTES}); delete it to download it again")
    data = path.read_bytes()
    try:
        _verify(data, expected, str(path))
    except DatasetError as exc:
        raise DatasetError(f"{exc}; delete it to download it again") from None
    return data


def _verify(data: bytes, expected: _Expected, what: str) -> None:
    """Size and SHA-256 against the table; for a file without a checksum, the shape it unpickles to."""
    if expected.sha256 is not None:
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected.sha256 or len(data) != expected.size:
            raise DatasetError(f"{what}: wrong checksum: SHA-256 {actual} ({len(data)} bytes), expected "
                               f"{expected.sha256} ({expected.size} bytes)")
        return
    try:
        parts = load_pickle(data)
    except ValueError as exc:
        raise DatasetError(f"{what}: {exc} (this file has no published checksum: its structure is checked)") from None
    if not isinstance(parts, CSRParts) or parts.shape != expected.shape:
        got = f"shape {parts.shape}" if isinstance(parts, CSRParts) else f"a {type(parts).__name__}"
        raise DatasetError(f"{what}: expected a csr_matrix of shape {expected.shape}, got {got} "
                           f"(this file has no published checksum: its structure is checked)")


# ---------------------------------------------------------------------- parsing
def _unpickle(data: bytes, where: str) -> Any:
    try:
        return load_pickle(data)
    except ValueError as exc:
        raise DatasetError(f"{where}: {exc}") from None


def _features(data: bytes, where: str) -> Any:
    """A float32 CSR matrix from a pickled ``csr_matrix``, its structure and values checked first."""
    import scipy.sparse as sp

    parts = _unpickle(data, where)
    if not isinstance(parts, CSRParts):
        raise DatasetError(f"{where}: expected a scipy.sparse csr_matrix of features, got a {type(parts).__name__}")
    rows, cols = parts.shape
    if not 1 <= cols <= MAX_FEATURES:
        raise DatasetError(f"{where}: the features must have between 1 and {MAX_FEATURES} columns, got {cols}")
    if parts.data.ndim != 1 or parts.data.dtype.kind not in "biuf":
        raise DatasetError(f"{where}: csr_matrix data must be 1-D numbers, got shape {parts.data.shape} "
                           f"dtype {parts.data.dtype}")
    try:
        check_csr(parts.indptr, parts.indices, (rows, cols), name="csr_matrix", data=parts.data)
    except ValueError as exc:
        raise DatasetError(f"{where}: {exc}") from None
    values = parts.data.astype(np.float32)
    if not np.isfinite(values).all():
        raise DatasetError(f"{where}: features contain NaN or infinity")
    x = sp.csr_matrix((values, parts.indices.astype(np.int64), parts.indptr.astype(np.int64)), shape=(rows, cols))
    x.sum_duplicates()
    return x


def _one_hot(data: bytes, where: str) -> np.ndarray:
    """A 2-D array of label indicators (one row per node, one column per class), finite."""
    a = _unpickle(data, where)
    if not isinstance(a, np.ndarray) or a.ndim != 2:
        got = f"shape {a.shape}" if isinstance(a, np.ndarray) else f"a {type(a).__name__}"
        raise DatasetError(f"{where}: expected a 2-D array of one-hot labels, got {got}")
    if not 1 <= a.shape[1] <= MAX_CLASSES:
        raise DatasetError(f"{where}: the labels must have between 1 and {MAX_CLASSES} columns, got {a.shape[1]}")
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise DatasetError(f"{where}: labels contain NaN or infinity")
    return a


def _test_index(data: bytes, where: str) -> np.ndarray:
    """The node ids of ``test.index``: one non-negative integer per line."""
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise DatasetError(f"{where}: not a text file of node ids") from None
    ids = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        if not line.isdigit():
            raise DatasetError(f"{where}: line {number} is not a non-negative integer: {line[:40]!r}")
        ids.append(int(line))
    if not ids:
        raise DatasetError(f"{where}: no node ids")
    if max(ids) >= 1 << 40:
        raise DatasetError(f"{where}: node id {max(ids)} is out of range")
    return np.asarray(ids, dtype=np.int64)


def _adjacency(data: bytes, where: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(src, dst)`` of every adjacency-list entry of the pickled graph, ids checked to lie in ``[0, n)``."""
    graph = _unpickle(data, where)
    if not isinstance(graph, dict):
        raise DatasetError(f"{where}: expected a dict of adjacency lists, got a {type(graph).__name__}")
    src: list[int] = []
    dst: list[int] = []
    for key, neighbours in graph.items():
        if type(key) is not int or type(neighbours) is not list:
            raise DatasetError(f"{where}: expected int keys and list values, got a {type(key).__name__} key "
                               f"with a {type(neighbours).__name__}")
        if not all(type(v) is int for v in neighbours):
            raise DatasetError(f"{where}: the adjacency list of node {key} holds a value that is not an int")
        src.extend([key] * len(neighbours))
        dst.extend(neighbours)
    # Python ints, compared before any conversion: a huge id must not wrap around in int64.
    for bad in (min(min(graph, default=0), min(dst, default=0)), max(max(graph, default=0), max(dst, default=0))):
        if not 0 <= bad < n:
            raise DatasetError(f"{where}: node id {bad} is out of range for {n} nodes")
    return np.asarray(src, dtype=np.int64), np.asarray(dst, dtype=np.int64)


# ---------------------------------------------------------------------- assembling
def assemble(name: str, raw: dict[str, bytes], where: str) -> Dataset:
    """The data set of the eight raw files ``raw`` (as :func:`fetch` returns them).

    Node ids: the rows of ``allx``/``ally`` are nodes ``0 .. len(allx) - 1``; row ``j`` of
    ``tx``/``ty`` is node ``test.index[j]``. The test ids must start right after the
    ``allx`` nodes; ids missing from their range (CiteSeer's isolated nodes) become
    nodes with zero features and label 0, in no split, as in PyG and Kipf's GCN.
    Labels are the argmax of the one-hot rows (an all-zero row gives 0, as PyG).
    Splits: the ``len(y)`` first nodes train, the next 500 validate, the test ids test.
    The graph is symmetrised, without self-loops or duplicate edges.
    """
    def at(file: str) -> str:
        return f"{where}/{filename(name, file)}"

    x, tx, allx = (_features(raw[f], at(f)) for f in ("x", "tx", "allx"))
    y, ty, ally = (_one_hot(raw[f], at(f)) for f in ("y", "ty", "ally"))
    test = _test_index(raw["test.index"], at("test.index"))
    _check_agreement(name, at, x, tx, allx, y, ty, ally)
    n = _check_test_ids(test, allx.shape[0], tx.shape[0], at("test.index"))
    if y.shape[0] + NUM_VAL > allx.shape[0]:
        raise DatasetError(f"{at('allx')}: {allx.shape[0]} nodes, too few for the {y.shape[0]} training "
                           f"and {NUM_VAL} validation nodes of the standard split")
    rows = _row_of_node(test, allx.shape[0], tx.shape[0], n)
    features, labels = _stack(rows, allx, tx, ally, ty, n)
    src, dst = _adjacency(raw["graph"], at("graph"), n)
    masks = _masks(n, y.shape[0], test)
    return Dataset(name, _symmetric_graph(src, dst, n), features, labels, *masks, num_classes=int(ally.shape[1]))


def _check_agreement(name: str, at: Any, x: Any, tx: Any, allx: Any, y: np.ndarray, ty: np.ndarray,
                     ally: np.ndarray) -> None:
    """Features share their columns, labels theirs, and every feature file has a label file of its rows."""
    if not x.shape[1] == tx.shape[1] == allx.shape[1]:
        raise DatasetError(f"{at('x')}: x, tx and allx must have the same number of features, got "
                           f"{x.shape[1]}, {tx.shape[1]} and {allx.shape[1]}")
    if not y.shape[1] == ty.shape[1] == ally.shape[1]:
        raise DatasetError(f"{at('y')}: y, ty and ally must have the same number of classes, got "
                           f"{y.shape[1]}, {ty.shape[1]} and {ally.shape[1]}")
    for feats, labs, fx, fy in ((x, y, "x", "y"), (tx, ty, "tx", "ty"), (allx, ally, "allx", "ally")):
        if feats.shape[0] != labs.shape[0]:
            raise DatasetError(f"{at(fy)}: {labs.shape[0]} rows, but {filename(name, fx)} has {feats.shape[0]}")
    if x.shape[0] < 1:
        raise DatasetError(f"{at('x')}: no training nodes")


def _check_test_ids(test: np.ndarray, n_all: int, n_test: int, where: str) -> int:
    """The number of nodes, ``max(test) + 1``, after checking the ids against the shapes."""
    if test.shape[0] != n_test:
        raise DatasetError(f"{where}: {test.shape[0]} ids, but tx has {n_test} rows")
    if np.unique(test).shape[0] != test.shape[0]:
        raise DatasetError(f"{where}: repeats a node id")
    if int(test.min()) != n_all:
        raise DatasetError(f"{where}: the test ids must start right after the {n_all} allx nodes, "
                           f"got {int(test.min())}")
    # The ids span at most twice the test rows: the gaps are padded nodes (15 in CiteSeer).
    if int(test.max()) >= n_all + 2 * n_test:
        raise DatasetError(f"{where}: node id {int(test.max())} leaves too many gaps for {n_test} test nodes")
    return int(test.max()) + 1


def _row_of_node(test: np.ndarray, n_all: int, n_test: int, n: int) -> np.ndarray:
    """For each node, its row in ``[allx; tx; padding]``: the padding rows go to the ids test.index lacks."""
    rows = np.full(n, -1, dtype=np.int64)
    rows[:n_all] = np.arange(n_all)
    rows[test] = n_all + np.arange(n_test)
    gaps = np.flatnonzero(rows < 0)
    rows[gaps] = n_all + n_test + np.arange(gaps.shape[0])
    return rows


def _stack(rows: np.ndarray, allx: Any, tx: Any, ally: np.ndarray, ty: np.ndarray,
           n: int) -> tuple[Any, np.ndarray]:
    """Features (float32 CSR) and int64 labels of every node, padded nodes zero and label 0."""
    import scipy.sparse as sp

    pad = n - allx.shape[0] - tx.shape[0]
    zeros = sp.csr_matrix((pad, allx.shape[1]), dtype=np.float32)
    features = sp.vstack([allx, tx, zeros], format="csr")[rows]
    features.sort_indices()
    onehot = np.concatenate([ally, ty, np.zeros((pad, ally.shape[1]), dtype=ally.dtype)])[rows]
    return features, onehot.argmax(axis=1).astype(np.int64)


def _masks(n: int, num_train: int, test: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    train, val, tst = (np.zeros(n, dtype=bool) for _ in range(3))
    train[:num_train] = True
    val[num_train:num_train + NUM_VAL] = True
    tst[test] = True
    return train, val, tst


def _symmetric_graph(src: np.ndarray, dst: np.ndarray, n: int) -> CSRGraph:
    """Both directions of every edge, self-loops dropped, duplicates merged."""
    keep = src != dst
    pairs = np.stack([np.concatenate([src[keep], dst[keep]]), np.concatenate([dst[keep], src[keep]])], axis=1)
    pairs = np.unique(pairs, axis=0)  # merged here: from_edge_index may keep repeated edges as multi-edges
    return CSRGraph.from_edge_index(pairs[:, 0], pairs[:, 1], num_src=n, num_dst=n)


def load(name: Any, root: str | os.PathLike | None = None, download: bool = True, *, url: str | None = None,
         log: TextIO | None = None) -> Dataset:
    """:func:`sparsegat.datasets.planetoid` (documented there)."""
    key = check_name(name)
    if root is not None and not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"root must be a folder path or None, got {type(root).__name__}")
    if not isinstance(download, bool):
        raise TypeError(f"download must be True or False, got {download!r}")
    folder = default_root() if root is None else Path(os.fspath(root)).expanduser()
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(20, "root is not a directory", str(folder))
    raw = fetch(key, folder, download, url, log)
    return assemble(key, raw, str(folder))
