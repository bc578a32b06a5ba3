"""A restricted unpickler for the Python 2 pickles of the Planetoid release, and nothing else.

The raw Planetoid files (``ind.{name}.x``, ``.tx``, ``.allx``, ``.y``, ``.ty``,
``.ally``, ``.graph``) are protocol-2 pickles written by Python 2: NumPy arrays,
SciPy ``csr_matrix`` objects and a ``collections.defaultdict`` of lists. A pickle
is a program that can call any importable function (``os.system``,
``builtins.eval``...), so :func:`load_pickle` never lets it reach one:

* :meth:`RestrictedUnpickler.find_class` maps the few ``(module, name)`` pairs the
  format uses (``_ADMITTED``, listed in ``docs/data.md``) onto inert stand-ins
  defined here, and refuses every other global with :class:`PickleRefused`,
  naming ``module.name``. Nothing is ever imported by name.
* The stand-ins only record and check the state the pickle hands them: no NumPy
  or SciPy constructor and no ``__setstate__`` of theirs runs during unpickling
  (``np.dtype.__setstate__`` could otherwise alter a built-in dtype, and a SciPy
  matrix would take any attribute the pickle sets). Arrays are rebuilt with
  ``np.frombuffer`` from raw bytes of a checked length, of plain numeric dtypes
  only (no object, structured or sub-array dtypes), one or two dimensions.
* The result is plain data: :class:`numpy.ndarray`, :class:`CSRParts` (the
  arrays of a CSR matrix, for the caller to check with
  :func:`sparsegat.csr_format.check_csr` before building a matrix) or ``dict``.

Any other failure (truncated or corrupt data, a stand-in used the wrong way) is a
``ValueError`` with the reason, never a crash.
"""

from __future__ import annotations

import io
import math
import pickle
from typing import Any, NamedTuple

import numpy as np

__all__ = ["CSRParts", "PickleRefused", "RestrictedUnpickler", "load_pickle", "MAX_PICKLE_BYTES"]

#: Refuse pickles larger than this (the largest Planetoid file, PubMed's ``allx``, is about 7.5 MB).
MAX_PICKLE_BYTES = 256 << 20

#: NumPy type codes an array may have: booleans, integers and floats (never ``O``, ``V``, ``S``...).
_NUMERIC_CODES = frozenset(
    ["b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8"])
_BYTE_ORDERS = frozenset("<>|=")


class PickleRefused(ValueError):
    """A pickle that references a global outside the admitted set (it might run code)."""


class CSRParts(NamedTuple):
    """The unchecked parts of a pickled ``scipy.sparse.csr_matrix``."""

    shape: tuple[int, int]
    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray


# ---------------------------------------------------------------------- the stand-ins
class _Global:
    """An admitted global: an immutable wrapper that calls ``func`` (or refuses to be called).

    Immutable, and refusing any BUILD state, so that a pickle cannot change it for
    the next file (BUILD on a plain function would write into its attributes).
    """

    __slots__ = ("_name", "_func")

    def __init__(self, name: str, func: Any = None) -> None:
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_func", func)

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError(f"{self._name} is read-only")

    def __setstate__(self, state: Any) -> None:
        raise ValueError(f"{self._name} cannot be given a state")

    def __call__(self, *args: Any) -> Any:
        if self._func is None:
            raise ValueError(f"{self._name} may only appear as an argument here, not be called")
        return self._func(*args)

    def __repr__(self) -> str:
        return f"<{self._name}>"


_NDARRAY = _Global("numpy.ndarray")
_LIST = _Global("builtins.list")


def _raw_bytes(raw: Any, what: str) -> bytes:
    # Python 2 ``str`` arrives as ``str`` under encoding="latin1"; latin1 maps it back byte for byte.
    if isinstance(raw, str):
        return raw.encode("latin1")
    if isinstance(raw, (bytes, bytearray)):
        return bytes(raw)
    raise ValueError(f"{what} must be a byte string, got {type(raw).__name__}")


class _DtypeStub:
    """Stands in for ``numpy.dtype(code, align, copy)``; BUILD may set only the byte order."""

    def __init__(self, code: Any, align: Any = 0, copy: Any = 1) -> None:
        if isinstance(code, (bytes, bytearray)):
            code = bytes(code).decode("latin1")
        if not isinstance(code, str) or code not in _NUMERIC_CODES:
            raise ValueError(f"dtype {_brief(code)} is not a plain numeric type "
                             f"({', '.join(sorted(_NUMERIC_CODES))})")
        self.code = code
        self.byteorder = "="

    def __setstate__(self, state: Any) -> None:
        # NumPy's state: (version, byteorder, subarray, names, fields, elsize, alignment[, flags]).
        if not isinstance(state, tuple) or len(state) < 5 or state[1] not in _BYTE_ORDERS:
            raise ValueError("malformed dtype state")
        if any(part is not None for part in state[2:5]):
            raise ValueError("structured or sub-array dtypes are refused")
        self.byteorder = state[1]

    @property
    def dtype(self) -> np.dtype:
        dt = np.dtype(self.code)
        return dt if self.byteorder in "|=" else dt.newbyteorder(self.byteorder)


class _ArrayStub:
    """Stands in for the empty array of ``numpy.core.multiarray._reconstruct``; BUILD fills it."""

    array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        # NumPy's state: (version, shape, dtype, is_fortran, raw data).
        if not isinstance(state, tuple) or len(state) != 5:
            raise ValueError("malformed array state")
        _, shape, dtype, fortran, raw = state
        if not isinstance(dtype, _DtypeStub):
            raise ValueError(f"array dtype must be a numpy dtype, got {type(dtype).__name__}")
        self.array = _build_array(_shape(shape), dtype.dtype, bool(fortran), _raw_bytes(raw, "array data"))


def _shape(shape: Any) -> tuple[int, ...]:
    if (not isinstance(shape, tuple) or not 1 <= len(shape) <= 2
            or not all(type(n) is int and 0 <= n < 1 << 40 for n in shape)):
        raise ValueError(f"array shape must be 1 or 2 non-negative integers, got {_brief(shape)}")
    return shape


def _build_array(shape: tuple[int, ...], dtype: np.dtype, fortran: bool, raw: bytes) -> np.ndarray:
    """The array of ``raw``, after checking that its length is exactly what ``shape`` needs."""
    need = math.prod(shape) * dtype.itemsize
    if len(raw) != need:
        raise ValueError(f"array of shape {shape} and dtype {dtype} needs {need} bytes of data, got {len(raw)}")
    flat = np.frombuffer(raw, dtype=dtype)
    if dtype.kind == "b":  # any byte other than 0 and 1 would make an invalid NumPy bool
        flat = np.frombuffer(raw, dtype=np.uint8) != 0
    return flat.reshape(shape, order="F" if fortran else "C").astype(dtype.newbyteorder("="), order="C")


def _reconstruct(subtype: Any, shape: Any, typecode: Any) -> _ArrayStub:
    # NumPy pickles every array as _reconstruct(ndarray, (0,), b"b") followed by BUILD(state).
    if subtype is not _NDARRAY or shape != (0,) or typecode not in ("b", b"b"):
        raise ValueError("_reconstruct may only make an empty numpy.ndarray")
    return _ArrayStub()


class _CSRStub:
    """Stands in for ``scipy.sparse.csr_matrix``: NEWOBJ makes it empty, BUILD hands it a dict."""

    state: dict[str, Any] | None = None

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise ValueError(f"csr_matrix state must be a dict, got {type(state).__name__}")
        self.state = state

    def parts(self) -> CSRParts:
        state = self.state
        if state is None:
            raise ValueError("csr_matrix without state")
        if state.get("format", "csr") != "csr":
            raise ValueError(f"sparse matrix format must be 'csr', got {_brief(state.get('format'))}")
        shape = state.get("_shape", state.get("shape"))
        if (not isinstance(shape, tuple) or len(shape) != 2
                or not all(type(n) is int and 0 <= n < 1 << 40 for n in shape)):
            raise ValueError(f"csr_matrix shape must be two non-negative integers, got {_brief(shape)}")
        arrays = []
        for key in ("indptr", "indices", "data"):
            value = state.get(key)
            if not isinstance(value, _ArrayStub) or value.array is None:
                raise ValueError(f"csr_matrix {key!r} must be a numpy array, got {type(value).__name__}")
            arrays.append(value.array)
        return CSRParts(shape, *arrays)


def _defaultdict(factory: Any) -> dict:
    # The graph is defaultdict(list); the factory only matters for missing keys, so a dict will do.
    if factory is not _LIST:
        raise ValueError("defaultdict may only have list as its default factory")
    return {}


#: The globals the Planetoid pickles reference (old and new module paths), and their stand-ins.
_ADMITTED: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _Global("numpy.core.multiarray._reconstruct", _reconstruct),
    ("numpy._core.multiarray", "_reconstruct"): _Global("numpy._core.multiarray._reconstruct", _reconstruct),
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _DtypeStub,
    ("scipy.sparse.csr", "csr_matrix"): _CSRStub,
    ("scipy.sparse._csr", "csr_matrix"): _CSRStub,
    ("collections", "defaultdict"): _Global("collections.defaultdict", _defaultdict),
    ("__builtin__", "list"): _LIST,
    ("builtins", "list"): _LIST,
}

#: ``module.name`` of every admitted global, for documentation and messages.
ADMITTED_GLOBALS = tuple(f"{m}.{n}" for m, n in _ADMITTED)


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler whose globals are the inert stand-ins of ``_ADMITTED``, and no others."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ADMITTED[(module, name)]
        except (KeyError, TypeError):
            raise PickleRefused(
                f"refused to load the global {module}.{name}: a Planetoid file may only reference "
                f"numpy arrays, scipy.sparse.csr_matrix and collections.defaultdict(list)") from None


# ---------------------------------------------------------------------- loading
def load_pickle(data: bytes) -> Any:
    """Unpickle ``data`` (a Planetoid file's bytes) with :class:`RestrictedUnpickler`.

    Parameters
    ----------
    data : bytes
        The whole file, at most :data:`MAX_PICKLE_BYTES`.

    Returns
    -------
    numpy.ndarray, CSRParts or dict
        A NumPy array (a plain numeric dtype, 1 or 2 dimensions), the unchecked
        parts of a CSR matrix, or the graph as a ``dict`` (keys and values as the
        pickle gave them: the caller checks them).

    Raises
    ------
    PickleRefused
        When the pickle references any other global (``os.system``...), naming it.
    ValueError
        When the data is truncated, corrupt or not of the Planetoid format.
    """
    if len(data) > MAX_PICKLE_BYTES:
        raise ValueError(f"{len(data)} bytes, more than the {MAX_PICKLE_BYTES} a Planetoid file may have")
    try:
        obj = RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    except PickleRefused:
        raise
    except Exception as exc:  # only the stand-ins and the pickle machinery run: any failure is bad data
        raise ValueError(f"not a readable Planetoid pickle ({type(exc).__name__}: {_first_line(exc)})") from None
    return _resolve(obj)


def _resolve(obj: Any) -> Any:
    """The plain value behind a top-level stand-in."""
    if isinstance(obj, _ArrayStub):
        if obj.array is None:
            raise ValueError("not a readable Planetoid pickle (an array without data)")
        return obj.array
    if isinstance(obj, _CSRStub):
        try:
            return obj.parts()
        except ValueError as exc:
            raise ValueError(f"not a readable Planetoid pickle ({exc})") from None
    if type(obj) is dict:
        return obj
    raise ValueError(f"not a Planetoid pickle: it holds a {type(obj).__name__}, not an array, "
                     f"a csr_matrix or a dict")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else "no details"


def _brief(value: Any) -> str:
    """A short description of ``value`` for a message (never the repr of a large structure)."""
    if isinstance(value, (int, float, str, type(None))):
        return repr(value)[:60]
    if isinstance(value, tuple) and len(value) <= 4 and all(isinstance(v, (int, str)) for v in value):
        return repr(value)[:60]
    return f"a {type(value).__name__}"
