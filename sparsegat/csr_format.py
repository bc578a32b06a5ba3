"""The one check of CSR arrays, in the style of SciPy's ``check_format``.

Every place that takes CSR arrays from outside (``CSRGraph`` and its ``from_scipy``,
the data loaders, the benchmark readers, the layers' sparse inputs) calls
:func:`check_csr` before any kernel or SciPy routine reads them, so that no input can
make a kernel index out of bounds.

Two tiers, as in SciPy: the cheap one checks dimensions, dtypes, lengths and the two
ends of ``indptr`` (O(1) work on the data); the full one also checks that ``indptr``
never decreases and that every column index lies in ``[0, n_cols)`` (O(nnz)), and
with ``sorted_rows=True`` that the columns of each row never decrease (repeated
columns are multi-edges) or with ``canonical=True`` that they strictly increase. Comparisons
never subtract indices, so wraparound of int32/int64 values cannot hide a bad pointer
(SciPy's own full check uses ``np.diff(indptr)``, which wraps, and skips the check
when ``indptr[-1] == 0``; it also accepts ``indptr[-1] < len(indices)`` and prunes,
where this check refuses).

:func:`row_ids` expands a checked ``indptr`` into the row of every stored entry.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .arrays import namespace, to_numpy

__all__ = ["check_csr", "row_ids"]


def check_csr(indptr: Any, indices: Any, shape: tuple[int, int], *, name: str = "graph",
              full: bool = True, canonical: bool = False, sorted_rows: bool = False, data: Any = None,
              arrays: tuple[str, str] = ("indptr", "indices"),
              dims: tuple[str, str] = ("n_rows", "n_cols")) -> None:
    """Raise ``ValueError`` unless ``(indptr, indices)`` is a valid CSR structure of ``shape``.

    Parameters
    ----------
    indptr, indices : array of int
        Row pointers ``(n_rows + 1,)`` and column indices ``(nnz,)``, NumPy or CuPy,
        any integer dtype (int32, int64, unsigned).
    shape : tuple of int
        ``(n_rows, n_cols)``, non-negative integers.
    name : str
        What the arrays are, for the error messages (``"x"``, ``"CSRGraph"``, a file name).
    full : bool
        Also check that ``indptr`` is non-decreasing and ``indices`` in range (O(nnz)).
        Without it, only O(1) properties are checked.
    canonical : bool
        Also check that the columns of each row strictly increase (sorted, no
        duplicates, SciPy's canonical format); implies ``full``.
    sorted_rows : bool
        Also check that the columns of each row never decrease (sorted; a repeated
        column is a multi-edge, as in :class:`~sparsegat.CSRGraph`); implies ``full``.
    data : array, optional
        The stored values: when given, must be an array whose first axis has the
        length of ``indices`` (checked in both tiers).
    arrays : pair of str
        How the messages call ``indptr`` and ``indices`` (e.g. ``("x_indptr", "x_indices")``).
    dims : pair of str
        How the messages call ``n_rows`` and ``n_cols`` (e.g. ``("n_dst", "n_src")``).

    Raises
    ------
    ValueError
        Naming ``name``, the array and the first bad value found.

    Examples
    --------
    >>> import numpy as np
    >>> check_csr(np.array([0, 2, 3]), np.array([0, 1, 1]), (2, 2))
    >>> check_csr(np.array([0, 2, 1]), np.array([0]), (2, 2), name="g")
    Traceback (most recent call last):
        ...
    ValueError: g: indptr must be non-decreasing, but it decreases at row 1: indptr[2]=1 < indptr[1]=2
    """
    p_name, i_name = arrays
    r_name, c_name = dims
    n_rows, n_cols = (int(s) for s in shape)
    if n_rows < 0 or n_cols < 0:
        raise ValueError(f"{name}: shape must be non-negative, got ({n_rows}, {n_cols})")
    for arg, a in ((p_name, indptr), (i_name, indices)):
        if getattr(a, "ndim", None) != 1:
            raise ValueError(f"{name}: {arg} must be 1-D, got an array of shape {getattr(a, 'shape', None)}")
        if a.dtype.kind not in "iu":
            raise ValueError(f"{name}: {arg} must hold integers, got dtype {a.dtype}")
    nnz = int(indices.shape[0])
    if indptr.shape[0] != n_rows + 1:
        raise ValueError(f"{name}: {p_name} must have length {r_name} + 1 = {n_rows + 1} ({n_rows} rows), "
                         f"got {indptr.shape[0]}")
    if int(indptr[0]) != 0:
        raise ValueError(f"{name}: {p_name}[0] must be 0, got {int(indptr[0])}")
    full = full or canonical or sorted_rows
    if full:  # before indptr[-1]: a decreasing pointer is the likelier cause of a wrong end
        # Compare neighbours directly: indptr[1:] - indptr[:-1] can wrap around and look valid.
        down = indptr[1:] < indptr[:-1]
        if n_rows and bool(down.any()):
            row = int(namespace(down).flatnonzero(down)[0])
            raise ValueError(f"{name}: {p_name} must be non-decreasing, but it decreases at row {row}: "
                             f"{p_name}[{row + 1}]={int(indptr[row + 1])} < {p_name}[{row}]={int(indptr[row])}")
    if int(indptr[-1]) != nnz:
        raise ValueError(f"{name}: {p_name}[-1]={int(indptr[-1])} must equal len({i_name})={nnz}")
    if data is not None and (getattr(data, "ndim", 0) < 1 or int(data.shape[0]) != nnz):
        raise ValueError(f"{name}: data has shape {getattr(data, 'shape', None)}, but there are {nnz} "
                         f"{i_name} (one value per stored entry)")
    if not full or nnz == 0:
        return
    lo, hi = int(indices.min()), int(indices.max())
    if lo < 0 or hi >= n_cols:
        raise ValueError(f"{name}: {i_name} must lie in [0, {c_name}={n_cols}), got {lo if lo < 0 else hi} "
                         f"(out of range)")
    if canonical or sorted_rows:
        _check_rows_sorted(indptr, indices, name, i_name, strict=canonical)


def _check_rows_sorted(indptr: Any, indices: Any, name: str, i_name: str, strict: bool) -> None:
    """Within a row, indices increase (strictly when ``strict``); a drop is allowed only
    where a new row starts."""
    nnz = int(indices.shape[0])
    bad = (indices[1:] <= indices[:-1]) if strict else (indices[1:] < indices[:-1])
    if not bool(bad.any()):
        return
    xp = namespace(indices)
    starts = indptr[1:-1]
    starts = starts[(starts > 0) & (starts < nnz)]
    bad[starts - 1] = False
    if bool(bad.any()):
        pos = int(xp.flatnonzero(bad)[0]) + 1
        row = int(np.searchsorted(to_numpy(indptr), pos, side="right")) - 1
        problem = "duplicate" if int(indices[pos]) == int(indices[pos - 1]) else "unsorted"
        order = "strictly increasing" if strict else "sorted"
        raise ValueError(f"{name}: {i_name} of row {row} are not {order} ({problem} column "
                         f"{int(indices[pos])} after {int(indices[pos - 1])}); use "
                         f"CSRGraph.from_scipy or CSRGraph.from_edge_index to sort them")


def row_ids(indptr: Any, dtype: Any = None) -> Any:
    """The row of every stored entry, in CSR order: ``repeat(arange(n_rows), diff(indptr))``.

    Parameters
    ----------
    indptr : array of int, shape (n_rows + 1,)
        Row pointers already checked by :func:`check_csr` (NumPy or CuPy).
    dtype : dtype, optional
        Of the result; default ``indptr.dtype``.

    Returns
    -------
    array, shape (indptr[-1],)
        On the device of ``indptr``.
    """
    dtype = np.dtype(indptr.dtype if dtype is None else dtype)
    xp = namespace(indptr)
    if xp is np:
        counts = np.diff(indptr)
        if counts.dtype != np.intp:
            counts = counts.astype(np.intp)  # np.repeat refuses uint64 counts; values fit after the check
        return np.repeat(np.arange(indptr.shape[0] - 1, dtype=dtype), counts)
    pos = xp.arange(int(indptr[-1]), dtype=dtype)  # cupy.repeat takes no array of counts
    return (xp.searchsorted(indptr, pos, side="right") - 1).astype(dtype)
