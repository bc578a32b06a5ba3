"""Compiled paths for the layers' and optimisers' dense work on NumPy arrays.

When the attention of a layer runs on the ``numba`` backend (the default for
NumPy arrays when numba is installed, see :func:`sparsegat.backends.select_backend`),
its sparse-feature product ``x @ W`` and the Adam update run in the kernels of
:mod:`sparsegat.numba_kernels.dense` instead of SciPy/NumPy. Each function returns ``None`` when it does not apply (CuPy arrays, dense
``x``, the ``numpy`` backend, numba not installed, unusual layouts), and the
caller then does the plain array-library computation: results agree to
rounding (products) or bit for bit (Adam), which tests/test_nn_compiled.py checks.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..backends import select_backend


def enabled(backend: str | None = None) -> bool:
    """True when NumPy work under ``backend`` (None: the default rule) goes to numba."""
    return select_backend("numpy", backend) == "numba"


def _csr_parts(x: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """``(indptr, indices, data)`` of a scipy CSR matrix, checked so that no kernel reads
    out of bounds (scipy's constructor does not check the indices); None for anything else."""
    if not (type(x).__module__.startswith("scipy.sparse") and getattr(x, "format", None) == "csr"):
        return None
    indptr, indices, data = x.indptr, x.indices, x.data
    rows, cols = x.shape
    nnz = indices.shape[0]
    if (indptr.shape[0] != rows + 1 or data.shape[0] != nnz or indptr[0] != 0 or indptr[-1] != nnz
            or (rows and np.diff(indptr).min() < 0)
            or (nnz and (indices.min() < 0 or indices.max() >= cols))):
        raise ValueError(f"x: a malformed CSR matrix of shape {x.shape} (indptr or indices out of range)")
    return indptr, indices, data


def csr_matmul(x: Any, w: Any, backend: str | None = None) -> np.ndarray | None:
    """``x @ w`` for a scipy CSR ``x`` and a NumPy ``w`` of the same dtype, or None."""
    parts = _csr_parts(x)
    if parts is None or not isinstance(w, np.ndarray) or w.dtype != x.dtype or not enabled(backend):
        return None
    from ..numba_kernels.dense import csr_matmul_rows

    out = np.empty((x.shape[0], w.shape[1]), dtype=w.dtype)
    csr_matmul_rows(*parts, np.ascontiguousarray(w), out)
    return out


def adam_update(p: Any, g: Any, state: dict[str, Any], *, lr: float, betas: tuple[float, float],
                eps: float, weight_decay: float, decoupled: bool, amsgrad: bool,
                maximize: bool) -> bool:
    """Adam's step on ``p`` in place (``state`` already holds ``step``, ``exp_avg``,
    ``exp_avg_sq``); False when it does not apply and the caller must do it."""
    m, v = state["exp_avg"], state["exp_avg_sq"]
    arrays = [p, g, m, v] + ([state["max_exp_avg_sq"]] if amsgrad else [])
    if not all(isinstance(a, np.ndarray) and a.dtype == p.dtype and a.flags.c_contiguous
               and a.shape == p.shape for a in arrays) or not enabled():
        return False
    from ..numba_kernels.dense import adam_update as kernel

    t = p.dtype.type
    b1, b2 = betas
    step = state["step"]
    wd = weight_decay if (weight_decay and not decoupled) else 0.0
    decay = 1.0 - lr * weight_decay if (weight_decay and decoupled) else 1.0
    flat = [a.reshape(-1) for a in arrays]
    vmax = flat[4] if amsgrad else flat[3]
    kernel(flat[0], flat[1], flat[2], flat[3], vmax, amsgrad, maximize, t(wd), t(decay), t(1.0 - b1), t(b2),
           t(1.0 - b2), t(lr / (1.0 - b1 ** step)), t(1.0 / math.sqrt(1.0 - b2 ** step)), t(eps))
    return True
