"""Array-kind detection without importing CuPy (array-API style dispatch)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np


def array_kind(x: Any) -> str | None:
    """Return ``"numpy"`` or ``"cupy"`` for an array of that library, else None.

    CuPy is recognised by the module of the array's type, so it is never imported here.
    """
    if isinstance(x, np.ndarray):
        return "numpy"
    module = type(x).__module__
    if module == "cupy" or module.startswith("cupy."):
        return "cupy"
    return None


def namespace(kind_or_array: Any) -> Any:
    """Return the array module (numpy or cupy) for a kind name or an array."""
    kind = kind_or_array if isinstance(kind_or_array, str) else array_kind(kind_or_array)
    if kind == "cupy":
        import cupy

        return cupy
    return np


#: Byte boundary of :func:`aligned_empty`: a cache line (torch aligns its CPU tensors so).
ALIGNMENT = 64


def aligned_empty(shape: tuple, dtype: Any, alignment: int = ALIGNMENT) -> np.ndarray:
    """``np.empty(shape, dtype)`` whose data starts on an ``alignment``-byte boundary.

    NumPy's large arrays start 16 bytes past a page boundary. Rows of 2^k bytes in an
    aligned array never straddle a cache line, and some BLAS kernels (OpenBLAS's
    ``a.T @ b`` with a tall ``a``) run several times faster on aligned data.
    """
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    buf = np.empty(nbytes + alignment, dtype=np.uint8)
    start = (-buf.ctypes.data) % alignment
    return buf[start:start + nbytes].view(dtype).reshape(shape)


def to_numpy(x: Any) -> np.ndarray:
    """Return ``x`` as a NumPy array (copying from the GPU where needed)."""
    if array_kind(x) == "cupy":
        return x.get()
    return np.asarray(x)


def physical_memory_bytes() -> int | None:
    """Total physical memory of this machine, or None where the OS does not say."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def check_host_allocation(nbytes: int, what: str) -> None:
    """Raise ``MemoryError`` naming ``what`` when ``nbytes`` exceed the machine's memory.

    NumPy allocates zeroed arrays lazily, so an absurd size (a node id of 2**40 read
    as a node count) would not fail at once but get the process killed when the pages
    are written; refuse it up front instead.
    """
    total = physical_memory_bytes()
    if total is not None and nbytes > total:
        raise MemoryError(f"{what} would need {nbytes / 2**30:.1f} GiB, more than this machine's "
                          f"{total / 2**30:.1f} GiB of memory")


def write_into(target: Any, result: Any) -> Any:
    """``result`` copied into ``target`` (unless it is that array already); ``result`` when no
    target: the ``out=`` rule of the operator's functions and backends."""
    if target is None or target is result:
        return result
    target[...] = result
    return target
