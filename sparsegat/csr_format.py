"""The one check of CSR arrays, in the style of SciPy's ``check_format``.

Every place that takes CSR arrays from outside (``CSRGraph``, the data loaders, the
benchmark readers, the layers' sparse inputs) calls :func:`check_csr` before any
kernel reads them, so that no input can make a kernel index out of bounds.

Two tiers, as in SciPy: the cheap one checks lengths, dtypes and the two ends of
``indptr`` (O(1) work on the data); the full one also checks that ``indptr`` never
decreases and that every column index lies in ``[0, n_cols)`` (O(nnz)), and with
``canonical=True`` that the columns of each row strictly increase. Comparisons never
subtract indices, so wraparound of int32/int64 values cannot hide a bad pointer.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .arrays import namespace, to_numpy


def check_csr(indptr: Any, indices: Any, shape: tuple[int, int], *, name: str = "graph",
              full: bool = True, canonical: bool = False) -> None:
    """Raise ``ValueError`` unless ``(indptr, indices)`` is a valid CSR structure of ``shape``.

    Parameters
    ----------
    indptr, indices : array of int
        Row pointers ``(n_rows + 1,)`` and column indices ``(nnz,)``, NumPy or CuPy.
    shape : tuple of int
        ``(n_rows, n_cols)``, non-negative integers.
    name : str
        What the arrays are, for the error messages (``"x"``, ``"graph"``, a file name).
    full : bool
        Also check that ``indptr`` is non-decreasing and ``indices`` in range (O(nnz)).
    canonical : bool
        Also check that the columns of each row strictly increase (sorted, no duplicates).

    Raises
    ------
    ValueError
        Naming ``name`` and the first bad value found.
    """
    n_rows, n_cols = (int(s) for s in shape)
    for arg, a in (("indptr", indptr), ("indices", indices)):
        if getattr(a, "ndim", None) != 1:
            raise ValueError(f"{name}: {arg} must be a 1-D array, got shape {getattr(a, 'shape', None)}")
        if a.dtype.kind not in "iu":
            raise ValueError(f"{name}: {arg} must have an integer dtype, got {a.dtype}")
    nnz = int(indices.shape[0])
    if indptr.shape[0] != n_rows + 1:
        raise ValueError(f"{name}: indptr must have length n_rows + 1 = {n_rows + 1}, got {indptr.shape[0]}")
    if int(indptr[0]) != 0:
        raise ValueError(f"{name}: indptr[0] must be 0, got {int(indptr[0])}")
    if int(indptr[-1]) != nnz:
        raise ValueError(f"{name}: indptr[-1]={int(indptr[-1])} must equal len(indices)={nnz}")
    if not (full or canonical):
        return
    # Compare neighbours directly: indptr[1:] - indptr[:-1] can wrap around and look valid.
    down = indptr[1:] < indptr[:-1]
    if n_rows and bool(down.any()):
        row = int(namespace(down).flatnonzero(down)[0])
        raise ValueError(f"{name}: indptr must be non-decreasing, but indptr[{row + 1}]={int(indptr[row + 1])} "
                         f"< indptr[{row}]={int(indptr[row])}")
    if nnz == 0:
        return
    lo, hi = int(indices.min()), int(indices.max())
    if lo < 0 or hi >= n_cols:
        raise ValueError(f"{name}: column indices must lie in [0, n_cols={n_cols}), got {lo if lo < 0 else hi}")
    if canonical:
        _check_rows_increase(indptr, indices, name)


def _check_rows_increase(indptr: Any, indices: Any, name: str) -> None:
    """Within a row, indices strictly increase; a drop is allowed only where a new row starts."""
    nnz = int(indices.shape[0])
    bad = indices[1:] <= indices[:-1]
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
        raise ValueError(f"{name}: indices of row {row} are not strictly increasing ({problem} column "
                         f"{int(indices[pos])} after {int(indices[pos - 1])}); use "
                         f"CSRGraph.from_scipy or CSRGraph.from_edge_index to canonicalise")
