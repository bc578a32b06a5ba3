"""Array-kind detection without importing CuPy (array-API style dispatch)."""

from __future__ import annotations

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


def to_numpy(x: Any) -> np.ndarray:
    """Return ``x`` as a NumPy array (copying from the GPU where needed)."""
    if array_kind(x) == "cupy":
        return x.get()
    return np.asarray(x)
