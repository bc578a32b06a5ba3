"""Kernels for the layers' dense work on NumPy arrays: the sparse-feature product and Adam.

The numba backend's optional ``csr_matmul`` and ``adam_update`` (:mod:`.backend`) call
them; the layers and optimizers reach them through the registry. On a
graph like Cora these steps cost about as much as the attention itself when left
to SciPy and NumPy: SciPy's CSR product runs on one thread, and NumPy's Adam makes
ten passes and several temporaries per parameter array.

* :func:`csr_matmul_rows`: ``out = x @ w`` for a CSR ``x``, parallel over rows
  (SciPy's product runs on one thread). ``x.T @ dy`` stays with SciPy: a
  compiled scatter over the nonzeros measured slower than SciPy's (docs/numba.md).
* :func:`add_blockdiag_rows`: ``dh += G @ A.T`` for an ``A`` made of block-diagonal
  parts (a layer's attention vectors): two multiply-adds per output instead of BLAS's
  product over all ``P*H`` columns with a small inner dimension, one pass over ``dh``.
* :func:`adam_update`: one pass of Adam/AdamW over a parameter array with the
  operations, order and rounding of :meth:`sparsegat.optim.Adam._update`, so
  both paths give bitwise-identical parameters (no fast-math).
"""

from __future__ import annotations

import math

from numba import njit, prange

_OPTIONS = dict(parallel=True, cache=True, error_model="numpy", nogil=True)


@njit(fastmath={"nsz", "contract"}, **_OPTIONS)
def csr_matmul_rows(indptr, indices, data, w, out):
    """``out[i] = sum_p data[p] * w[indices[p]]`` over row ``i``'s nonzeros, in CSR order."""
    C = w.shape[1]
    zero = out.dtype.type(0)
    for i in prange(out.shape[0]):
        oi = out[i]
        for c in range(C):
            oi[c] = zero
        for p in range(indptr[i], indptr[i + 1]):
            a = data[p]
            wr = w[indices[p]]
            for c in range(C):
                oi[c] += a * wr[c]


@njit(fastmath={"nsz", "contract"}, **_OPTIONS)
def add_blockdiag_rows(dh, G, A, C):
    """``dh[i, j] += sum_p G[i, p*H + h] * A[j, p*H + h]`` with ``h = j // C``: ``dh += G @ A.T``
    when every part ``A[:, p*H:(p+1)*H]`` is block-diagonal with blocks of ``C`` rows."""
    n, HC = dh.shape
    H = HC // C
    P = G.shape[1] // H
    for i in prange(n):
        for h in range(H):
            for c in range(C):
                j = h * C + c
                acc = dh[i, j]
                for p in range(P):
                    acc += G[i, p * H + h] * A[j, p * H + h]
                dh[i, j] = acc


@njit(cache=True, error_model="numpy", nogil=True)  # serial: waking threads costs more
def adam_update(p, g, m, v, vmax, amsgrad, negate, weight_decay, decay_factor, one_minus_b1, b2,
                one_minus_b2, step_size, inv_bias2_sqrt, eps):
    """One Adam step on flat arrays, in place (``p``, ``m``, ``v``, and ``vmax`` with ``amsgrad``).

    Scalars come in the arrays' dtype. ``weight_decay`` is the L2 term added to the
    gradient (0 for AdamW) and ``decay_factor`` the decoupled factor ``1 - lr * wd``
    applied to ``p`` first (1 for Adam).
    """
    for i in range(p.shape[0]):
        gi = -g[i] if negate else g[i]
        pi = p[i] * decay_factor
        if weight_decay != 0:
            gi = gi + weight_decay * pi
        mi = m[i] + one_minus_b1 * (gi - m[i])
        vi = v[i] * b2
        vi = vi + one_minus_b2 * (gi * gi)
        m[i] = mi
        v[i] = vi
        if amsgrad:
            vi = max(vmax[i], vi)
            vmax[i] = vi
        denom = math.sqrt(vi) * inv_bias2_sqrt
        denom = denom + eps
        p[i] = pi - step_size * (mi / denom)
