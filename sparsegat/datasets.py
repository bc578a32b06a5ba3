"""Node-classification data sets: ``.npz`` files, the Planetoid citation graphs and a synthetic graph.

:func:`planetoid` reads Cora, CiteSeer and PubMed from the raw files of the Planetoid
release (downloaded and checksummed on first use, unpickled only by a restricted
unpickler; see ``docs/data.md``).

The file layout (documented in ``docs/data.md``): ``indptr``, ``indices`` (the graph as
CSR, row ``i`` = node ``i``, columns = the nodes it receives messages from);
node features either sparse (``x_indptr``, ``x_indices``, ``x_data``, ``x_shape``)
or dense (``x``); ``y`` (integer labels); ``train_mask``, ``val_mask``, ``test_mask``
(booleans). Files are opened with ``allow_pickle=False``, and every CSR structure is
checked by :func:`sparsegat.csr_format.check_csr` before it is used.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from typing import Any

import numpy as np

from .csr_format import check_csr, row_ids
from .graph import CSRGraph

__all__ = ["Dataset", "DatasetError", "load_npz", "planetoid", "read_npz_arrays", "synthetic", "row_normalize"]

#: A deflate stream expands at most about 1032 times; a member that claims more is lying.
_MAX_DEFLATE_RATIO = 1100
#: Sparse features may declare at most this many columns (the first layer's weight has one row per feature).
MAX_FEATURES = 1 << 24
#: Labels are stored as int64 and the output layer gets ``max(y) + 1`` classes: refuse more than this.
MAX_CLASSES = 1 << 20


class DatasetError(ValueError):
    """A data file that cannot be used, with the reason."""


@dataclass
class Dataset:
    """A node-classification problem.

    Attributes
    ----------
    name : str
    graph : CSRGraph
        Square, without the self-loops the layers add themselves.
    x : ndarray (n, d) or scipy.sparse.csr_matrix
        Node features (float32).
    y : ndarray (n,) int64
    train_mask, val_mask, test_mask : ndarray (n,) bool
    num_classes : int
    distractors : ndarray (n,) bool or None
        The distractor nodes of :func:`synthetic`.
    """

    name: str
    graph: CSRGraph
    x: Any
    y: np.ndarray
    train_mask: np.ndarray
    val_mask: np.ndarray
    test_mask: np.ndarray
    num_classes: int
    #: For the synthetic graph: True for the distractor nodes (None for files).
    distractors: np.ndarray | None = None

    @property
    def num_nodes(self) -> int:
        """The number of nodes, ``len(y)``."""
        return int(self.y.shape[0])

    @property
    def num_features(self) -> int:
        """The number of feature columns of ``x``."""
        return int(self.x.shape[1])

    @property
    def features_sparse(self) -> bool:
        """Whether ``x`` is a scipy.sparse matrix (rather than a dense array)."""
        return not isinstance(self.x, np.ndarray)

    def majority_accuracy(self, mask: np.ndarray | None = None) -> float:
        """Accuracy on ``mask`` (default: the test nodes) of always predicting the majority class.

        The majority class is the most common label outside the test nodes (the
        training split alone is often balanced, which would make the baseline
        meaningless).

        Parameters
        ----------
        mask : ndarray (n,) bool, optional
            The nodes to score; default ``test_mask``.

        Returns
        -------
        float
            The fraction of ``mask``'s nodes whose label is the majority class.
        """
        mask = self.test_mask if mask is None else mask
        majority = int(np.bincount(self.y[~self.test_mask], minlength=self.num_classes).argmax())
        return float((self.y[mask] == majority).mean())

    def describe(self) -> str:
        """One line: name, nodes, edges, features, classes and the sizes of the splits."""
        if self.features_sparse:
            density = self.x.nnz / max(1, self.x.shape[0] * self.x.shape[1])
            feats = f"{self.num_features} features (sparse, {100 * density:.1f}% non-zero)"
        else:
            feats = f"{self.num_features} features (dense)"
        return (f"{self.name}: {self.num_nodes} nodes, {self.graph.nnz} edges, {feats}, "
                f"{self.num_classes} classes, {int(self.train_mask.sum())}/{int(self.val_mask.sum())}/"
                f"{int(self.test_mask.sum())} train/val/test nodes")


def row_normalize(x: Any) -> Any:
    """Divide every row by its sum (rows summing to 0 stay 0): PyG's ``NormalizeFeatures`` for non-negative features.

    Parameters
    ----------
    x : ndarray (n, d) or scipy.sparse matrix
        Features; float32 stays float32.

    Returns
    -------
    ndarray or scipy.sparse.csr_matrix
        Dense for a dense ``x``, CSR (with sorted indices) for a sparse one.
    """
    import scipy.sparse as sp

    if sp.issparse(x):
        x = sp.csr_matrix(x)
        sums = np.asarray(x.sum(axis=1)).ravel()
        scale = np.divide(1.0, sums, out=np.zeros_like(sums, dtype=np.float64), where=sums != 0)
        out = x.multiply(scale[:, None].astype(x.dtype)).tocsr()
        out.sort_indices()
        return out
    x = np.asarray(x)
    sums = x.sum(axis=1, keepdims=True)
    safe = np.where(sums == 0, 1, sums)
    return (x / safe).astype(x.dtype, copy=False)


# ---------------------------------------------------------------------- npz files
_REQUIRED = ("indptr", "indices", "y", "train_mask", "val_mask", "test_mask")
_SPARSE_X = ("x_indptr", "x_indices", "x_data", "x_shape")
_MASKS = ("train_mask", "val_mask", "test_mask")


def _fail(path: Any, msg: str) -> DatasetError:
    return DatasetError(f"{os.fspath(path)}: {msg}")


def load_npz(path: str | os.PathLike, name: str | None = None) -> Dataset:
    """Load a data set from an ``.npz`` file in the layout of ``docs/data.md``.

    Parameters
    ----------
    path : str or path-like
        The ``.npz`` archive (opened without unpickling).
    name : str, optional
        The data set's name; default the file name without its extension.

    Returns
    -------
    Dataset

    Raises
    ------
    DatasetError (a ValueError)
        With the file name and what is wrong: not a readable ``.npz`` archive,
        pickled (object) arrays, missing keys, wrong shapes or dtypes, a malformed
        CSR structure (graph or sparse features), labels that are negative, masks
        that are not boolean or select no node.
    FileNotFoundError
        When ``path`` does not exist.
    """
    path = os.fspath(path)
    data = _read_arrays(path)
    y, num_classes = _labels(path, data)
    n = int(y.shape[0])
    graph = _graph(path, data, n)
    x = _features(path, data, n)
    masks = _masks(path, data, n)
    name = name or os.path.splitext(os.path.basename(path))[0]
    return Dataset(name, graph, x, y, masks["train_mask"], masks["val_mask"], masks["test_mask"], num_classes)


def read_npz_arrays(path: str | os.PathLike, what: str = "an .npz archive", *,
                    error: type[ValueError] = ValueError) -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` archive ``path``, read safely; the one reader of ``.npz`` files.

    Used by :func:`load_npz`, ``sparsegat bench --graph`` and ``nn.load_params``. Nothing
    is unpickled or executed, and nothing is allocated before its size has been checked
    against the bytes the file actually holds. Refused with ``error`` (a ``ValueError``
    subclass) naming the file and the problem: a file that is not a zip archive (a
    single ``.npy`` array, a Matrix Market or text file...), a member that is not an
    ``.npy`` array, an object (pickled) array, a header whose shape and dtype do not
    match the member's size, a member larger than the file, a compressed member that
    claims to expand more than deflate can, corrupt or truncated data.

    Parameters
    ----------
    path : str or path-like
    what : str
        What the file should be, for the messages (``"a data set (.npz)"``).
    error : ValueError subclass
        The exception type raised.

    Raises
    ------
    FileNotFoundError
        When ``path`` does not exist.
    """
    path = os.fspath(path)

    def fail(msg: str) -> ValueError:
        return error(f"{path}: {msg}")

    if not os.path.exists(path):
        raise FileNotFoundError(2, "No such file or directory", path)
    if os.path.isdir(path):
        raise fail(f"is a directory, not {what}")
    try:
        with open(path, "rb") as f:
            head = f.read(6)
        on_disk = os.path.getsize(path)
        if not zipfile.is_zipfile(path):
            if head == b"\x93NUMPY":
                raise fail(f"holds a single array (an .npy file), so it is not {what}")
            raise fail(f"not a readable .npz archive (not a zip of .npy arrays), so not {what}")
        with zipfile.ZipFile(path) as archive:
            data: dict[str, np.ndarray] = {}
            for info in archive.infolist():
                if info.is_dir():
                    continue
                key = _npz_member_key(info, fail)
                if key in data:
                    raise fail(f"holds the array {key!r} twice")
                data[key] = _read_member(archive, info, key, on_disk, fail)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, RuntimeError,
            NotImplementedError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise fail(f"not a readable .npz archive ({_reason(exc)})") from None
    except ValueError as exc:
        if isinstance(exc, error):
            raise
        raise fail(f"not a readable .npz archive ({_reason(exc)})") from None
    return data


def _npz_member_key(info: zipfile.ZipInfo, fail: Any) -> str:
    name = info.filename
    if not name.endswith(".npy"):
        raise fail(f"member {name!r} is not an .npy array (an .npz archive holds only .npy arrays)")
    return name[:-4]


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, key: str, on_disk: int, fail: Any) -> np.ndarray:
    """One ``.npy`` member, after checking its header against the bytes present."""
    fmt = np.lib.format
    if info.compress_size > on_disk:
        raise fail(f"array {key!r} claims {info.compress_size} stored bytes, more than the whole file "
                   f"({on_disk} bytes): the archive is truncated or corrupt")
    if info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size:
        raise fail(f"array {key!r}: corrupt zip entry (stored member of {info.file_size} bytes "
                   f"in {info.compress_size})")
    if info.compress_type == zipfile.ZIP_DEFLATED and info.file_size > _MAX_DEFLATE_RATIO * info.compress_size + 4096:
        raise fail(f"array {key!r} claims {info.file_size} bytes from {info.compress_size} compressed ones, "
                   f"more than deflate can expand: the archive is corrupt")
    with archive.open(info) as fp:
        try:
            version = fmt.read_magic(fp)
            if version == (1, 0):
                shape, fortran, dtype = fmt.read_array_header_1_0(fp)
            else:
                shape, fortran, dtype = fmt.read_array_header_2_0(fp)
        except (ValueError, EOFError) as exc:
            raise fail(f"array {key!r} is not a valid .npy array ({_reason(exc)})") from None
        header = fp.tell()
    if dtype.hasobject:
        raise fail(f"array {key!r} is an object array, which would need unpickling; refused")
    count = 1
    for n in shape:
        count *= int(n)
    nbytes = count * dtype.itemsize
    if header + nbytes != info.file_size:
        raise fail(f"array {key!r} declares shape {tuple(shape)} of {dtype} ({nbytes} bytes), but the member "
                   f"holds {info.file_size - header} bytes of data")
    with archive.open(info) as fp:
        try:
            return fmt.read_array(fp, allow_pickle=False)
        except (ValueError, EOFError) as exc:
            raise fail(f"array {key!r} cannot be read ({_reason(exc)})") from None


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _read_arrays(path: str) -> dict[str, np.ndarray]:
    """Every array of the archive (never unpickled), after checking the required keys are there."""
    data = read_npz_arrays(path, "a data set (an .npz archive of arrays in the layout of docs/data.md)",
                           error=DatasetError)
    missing = [k for k in _REQUIRED if k not in data]
    if not _has_sparse_features(data) and "x" not in data:
        missing.append("x (or x_indptr, x_indices, x_data, x_shape)")
    if missing:
        raise _fail(path, f"missing arrays {', '.join(missing)} (found {', '.join(sorted(data)) or 'none'})")
    return data


def _has_sparse_features(data: dict[str, np.ndarray]) -> bool:
    return all(k in data for k in _SPARSE_X)


def _labels(path: str, data: dict[str, np.ndarray]) -> tuple[np.ndarray, int]:
    """``y`` as int64 and the number of classes; ``len(y)`` is the number of nodes."""
    y = data["y"]
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise _fail(path, f"'y' must be a 1-D integer array of labels, got shape {y.shape} dtype {y.dtype}")
    if y.shape[0] == 0:
        raise _fail(path, "'y' is empty: the data set has no nodes")
    if int(y.min()) < 0:
        raise _fail(path, f"labels must be >= 0, got {int(y.min())}")
    if int(y.max()) >= MAX_CLASSES:  # before the cast: uint64 labels >= 2**63 would wrap to negative
        raise _fail(path, f"labels must be < {MAX_CLASSES} (the classes are 0 .. max(y)), got {int(y.max())}")
    y = y.astype(np.int64)
    return y, int(y.max()) + 1


def _graph(path: str, data: dict[str, np.ndarray], n: int) -> CSRGraph:
    """The square graph of ``indptr``/``indices`` (rows may be unsorted or repeat a column)."""
    indptr, indices = data["indptr"], data["indices"]
    try:
        check_csr(indptr, indices, (n, n), name="graph", dims=("len(y)", "len(y)"))
    except ValueError as exc:
        raise _fail(path, str(exc)) from None
    return CSRGraph.from_edge_index(indices.astype(np.int64), row_ids(indptr, np.int64), num_src=n, num_dst=n,
                                    duplicates="merge")  # the file layout's meaning (docs/data.md)


def _features(path: str, data: dict[str, np.ndarray], n: int) -> Any:
    """Float32 features: a CSR matrix from the ``x_*`` arrays when present, else the dense ``x``."""
    if _has_sparse_features(data):
        x = _sparse_features(path, data, n)
        values = x.data
    else:
        x = data["x"]
        if x.ndim != 2 or x.shape[0] != n or x.dtype.kind not in "biuf" or x.shape[1] < 1:
            raise _fail(path, f"'x' must be a numeric array of shape ({n}, features), got shape {x.shape} dtype {x.dtype}")
        x = values = x.astype(np.float32)
    if not np.isfinite(values).all():
        raise _fail(path, "features contain NaN or infinity")
    return x


def _sparse_features(path: str, data: dict[str, np.ndarray], n: int) -> Any:
    import scipy.sparse as sp

    x_shape = data["x_shape"]
    if x_shape.shape != (2,) or x_shape.dtype.kind not in "iu":
        raise _fail(path, f"'x_shape' must be two integers, got {x_shape!r}")
    rows_x, cols_x = int(x_shape[0]), int(x_shape[1])
    if rows_x != n or cols_x < 1:
        raise _fail(path, f"'x_shape' is ({rows_x}, {cols_x}) but there are {n} nodes")
    if cols_x > MAX_FEATURES:
        raise _fail(path, f"'x_shape' declares {cols_x} features, more than the {MAX_FEATURES} allowed "
                          f"(a model would need a weight row per feature)")
    x_indptr, x_indices, x_data = data["x_indptr"], data["x_indices"], data["x_data"]
    if x_data.ndim != 1 or x_data.dtype.kind not in "biuf":
        raise _fail(path, f"'x_data' must be a 1-D numeric array, got shape {x_data.shape} dtype {x_data.dtype}")
    try:
        check_csr(x_indptr, x_indices, (n, cols_x), name="feature CSR arrays", data=x_data,
                  arrays=("x_indptr", "x_indices"), dims=("len(y)", "x_shape[1]"))
    except ValueError as exc:
        raise _fail(path, str(exc)) from None
    x = sp.csr_matrix((x_data.astype(np.float32), x_indices.astype(np.int64), x_indptr.astype(np.int64)),
                      shape=(n, cols_x))
    x.sum_duplicates()
    return x


def _masks(path: str, data: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    masks = {}
    for key in _MASKS:
        m = data[key]
        if m.dtype != np.bool_ or m.shape != (n,):
            raise _fail(path, f"'{key}' must be a boolean array of shape ({n},), got shape {m.shape} dtype {m.dtype}")
        if not m.any():
            raise _fail(path, f"'{key}' selects no node")
        masks[key] = m.copy()
    return masks


# ---------------------------------------------------------------------- Planetoid
def planetoid(name: str, root: str | os.PathLike | None = None, download: bool = True, *,
              url: str | None = None, log: Any = None) -> Dataset:
    """Cora, CiteSeer or PubMed with the standard Planetoid split, from the release's raw files.

    Reads the eight files ``ind.{name}.{x,tx,allx,y,ty,ally,graph,test.index}`` from
    ``root``, downloading the missing ones, and checks every file against the SHA-256
    of the release before reading it (PubMed's ``allx`` has no published checksum:
    its size and structure are checked instead). The pickled files are read by a
    restricted unpickler that admits only the NumPy, SciPy and ``collections``
    names the format uses, so a crafted file cannot run code (``docs/data.md``).

    The result matches PyTorch Geometric's ``Planetoid`` (and Kipf's GCN loader):

    * nodes: the ``allx`` rows, then the test nodes at the ids of ``test.index``;
      ids missing from the test range (CiteSeer's 15 isolated nodes) are padded
      with zero features and label 0, and are in no split;
    * labels: the argmax of the one-hot rows, int64 (an all-zero row gives 0);
    * splits: train = the first ``len(y)`` nodes (140 / 120 / 60), val = the next
      500, test = the 1000 ids of ``test.index``;
    * graph: symmetrised, without self-loops or duplicate edges (Cora: 2708 nodes,
      10556 directed edges);
    * features: a float32 ``scipy.sparse.csr_matrix`` (not row-normalised).

    Parameters
    ----------
    name : str
        ``"cora"``, ``"citeseer"`` or ``"pubmed"`` (any case).
    root : str or path-like, optional
        The folder of the raw files. Default: ``$SPARSEGAT_DATA`` when set, else
        ``~/.cache/sparsegat/planetoid``. Created when files must be downloaded.
    download : bool
        Download missing files (default). With False a missing file raises
        ``FileNotFoundError``.
    url : str, optional
        Base address the file names are appended to: an ``https://``, ``http://`` or
        ``file://`` URL. Default: ``$SPARSEGAT_PLANETOID_URL`` when set, else
        ``https://github.com/kimiyoung/planetoid/raw/master/data/``.
    log : text stream, optional
        Receives one line per file downloaded (``sparsegat train`` passes stderr).

    Returns
    -------
    Dataset
        Named ``name`` in lower case.

    Raises
    ------
    ValueError
        ``name`` is not one of the three, or ``url`` has another scheme.
    TypeError
        ``name`` is not a string, or ``download`` not a bool.
    DatasetError (a ValueError)
        A file whose checksum differs (naming the file, the expected and the
        actual SHA-256; a download that fails it is not kept; a file already in
        ``root`` is left for you to delete), or that is corrupt, truncated,
        references anything but the admitted globals, or disagrees with the other
        files (shapes, node ids out of range).
    FileNotFoundError
        ``download=False`` and files are missing.
    OSError
        A download failed (no network, HTTP error), with the URL.

    Examples
    --------
    >>> from sparsegat.datasets import planetoid
    >>> data = planetoid("cora")                                  # doctest: +SKIP
    >>> data.describe()                                           # doctest: +SKIP
    'cora: 2708 nodes, 10556 edges, 1433 features (sparse, 1.3% non-zero), 7 classes, 140/500/1000 ...'
    """
    from .planetoid import load  # here: the module imports this one, and urllib is only needed here

    return load(name, root, download, url=url, log=log)


# ---------------------------------------------------------------------- synthetic data
def synthetic(num_nodes: int = 1600, num_classes: int = 4, num_features: int = 16, degree: float = 4.0,
              homophily: float = 0.8, distractors: float = 0.5, distractor_degree: float = 6.0,
              signal: float = 1.3, distractor_scale: float = 1.0, flag: float = 2.0, flag_features: int = 8,
              train_per_class: int = 20, num_val: int = 500, num_test: int = 1000, seed: int = 0) -> Dataset:
    """A contextual stochastic block model with distractor nodes, where attention pays off.

    * ``num_nodes`` labelled nodes: class ``y`` uniform over ``num_classes``;
      features ``signal * mu_y + N(0, I)`` in ``num_features - flag_features``
      dimensions (the class means ``mu_c`` are random unit vectors), and
      ``flag_features`` more features that are 0. Their edges (mean degree
      ``degree``) stay within the class with probability ``homophily``.
    * ``distractors * num_nodes`` unlabelled distractor nodes (in no split) that
      look like ordinary nodes of a random class, ``signal * mu_c +
      distractor_scale * N(0, I)``, except for the flag features, which are
      ``flag``; each labelled node gets about ``distractor_degree`` of them as
      neighbours, uniformly at random. (The flag is repeated over several
      features so that input dropout cannot hide it.)

    The graph is symmetric, without self-loops. With the defaults 60% of a
    node's neighbours are distractors whose features point to random classes:
    a mean over neighbours (a GCN, or a GAT with its attention frozen,
    ``sparsegat train --uniform-attention``) mixes their misleading messages
    into every node, while attention can learn from the flag to ignore them
    (GAT's attention ranks a node's neighbours by a score of the source alone
    plus a constant, which is exactly what this needs). With the default
    ``sparsegat train`` (300 epochs), seeds 0, 1, 2 give test accuracies of
    0.69 / 0.78 / 0.89 with attention against 0.58 / 0.71 / 0.79 with uniform
    attention; the majority class gets 0.26. Splits as Planetoid's:
    ``train_per_class`` training nodes per class, then ``num_val`` validation and
    ``num_test`` test nodes, all among the labelled nodes.

    Parameters
    ----------
    num_nodes, num_classes, num_features : int
        Labelled nodes, classes, and features per node (flag features included).
    degree : float
        Mean number of labelled neighbours of a labelled node.
    homophily : float
        Probability that a labelled-labelled edge stays within the class.
    distractors : float
        Distractor nodes, as a fraction of ``num_nodes``.
    distractor_degree : float
        Mean number of distractor neighbours of a labelled node.
    signal, distractor_scale, flag : float
        Length of the class means, noise scale of the distractors, value of their flag features.
    flag_features : int
        Features that flag the distractors (``1 <= flag_features < num_features``).
    train_per_class, num_val, num_test : int
        Sizes of the splits.
    seed : int
        Seed of everything random.

    Returns
    -------
    Dataset
        With ``distractors`` set (the distractor nodes, in no split).

    Raises
    ------
    ValueError
        When ``num_nodes`` is too small for the splits, or ``flag_features`` out of range.
    """
    if num_nodes < num_classes * train_per_class + num_val + num_test:
        raise ValueError(f"num_nodes={num_nodes} is too small for the splits "
                         f"({num_classes}*{train_per_class} + {num_val} + {num_test})")
    if not 1 <= flag_features < num_features:
        raise ValueError(f"need 1 <= flag_features < num_features, got {flag_features} and {num_features}")
    rng = np.random.default_rng(seed)
    n = int(num_nodes)
    n_noise = int(round(distractors * n))
    total = n + n_noise
    d = num_features - flag_features
    y = rng.integers(0, num_classes, size=n)
    mu = rng.normal(size=(num_classes, d))
    mu /= np.linalg.norm(mu, axis=1, keepdims=True)
    x = np.zeros((total, num_features), dtype=np.float32)
    x[:n, :d] = signal * mu[y] + rng.normal(size=(n, d))
    fake = rng.integers(0, num_classes, size=n_noise)
    x[n:, :d] = signal * mu[fake] + distractor_scale * rng.normal(size=(n_noise, d))
    x[n:, d:] = flag

    # Labelled-labelled edges: each node starts degree/2 of them (symmetrised below).
    m = int(round(n * degree / 2))
    src = rng.integers(0, n, size=m)
    dst = rng.integers(0, n, size=m)
    same = rng.random(m) < homophily
    by_class = [np.flatnonzero(y == c) for c in range(num_classes)]
    for c in range(num_classes):
        pick = same & (y[src] == c)
        dst[pick] = rng.choice(by_class[c], size=int(pick.sum()))
    # Distractor edges: distractor_degree per labelled node on average.
    if n_noise:
        m2 = int(round(n * distractor_degree))
        src = np.concatenate([src, n + rng.integers(0, n_noise, size=m2)])
        dst = np.concatenate([dst, rng.integers(0, n, size=m2)])
    keep = src != dst
    src, dst = src[keep], dst[keep]
    graph = CSRGraph.from_edge_index(np.concatenate([src, dst]), np.concatenate([dst, src]),
                                     num_src=total, num_dst=total, duplicates="merge")

    order = rng.permutation(n)
    train = np.zeros(total, dtype=bool)
    for c in range(num_classes):
        train[order[y[order] == c][:train_per_class]] = True
    rest = order[~train[order]]
    val = np.zeros(total, dtype=bool)
    test = np.zeros(total, dtype=bool)
    val[rest[:num_val]] = True
    test[rest[num_val:num_val + num_test]] = True
    labels = np.concatenate([y, rng.integers(0, num_classes, size=n_noise)]).astype(np.int64)
    is_distractor = np.zeros(total, dtype=bool)
    is_distractor[n:] = True
    return Dataset("synthetic CSBM with distractors", graph, x, labels, train, val, test, int(num_classes),
                   is_distractor)
