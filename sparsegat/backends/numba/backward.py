"""Backward kernels: no atomics, every output element written by one thread.

With ``p`` the softmax weights, ``kk = keep * keep_scale`` (1 without dropout),
``a = p * kk`` and ``Delta_i = dout_i . out_i``::

    dv_j  = sum_i a_ij dout_i
    ds_ij = p_ij * (kk_ij * (dout_i . v_j) - Delta_i)

Three passes:

1. :func:`pack_rows` (row-parallel): ``pack[i, h] = (rowmax, rowinv, Delta, q)``
   (``q`` for ``additive`` only), the per-row numbers the next pass gathers, in
   one cache line per row for 4 heads in float32.
2. ``source_pass`` (parallel over the *source* nodes, through the graph's cached
   transposed structure): for each edge ``(i <- j)`` recompute the score and ``p``
   from the saved row maxima and inverse sums, then ``dv_j``, ``ds_ij`` and
   ``dk_j``. Each thread owns the source rows it writes; ``ds`` is stored at the
   edge's CSR position (distinct for every edge), and is also the ``edge_bias``
   gradient.
3. ``dest_pass`` (row-parallel): ``dq_i`` from ``ds`` read in CSR order, plus
   per-chunk partials of the ``att`` and ``tau`` gradients, summed afterwards in
   chunk order (chunks depend only on the graph: bitwise reproducible).

``dout_i . v_j`` needs ``v_j`` and ``dout_i`` together; the source pass has
``v_j`` at hand and gathers ``dout_i``, so the big per-edge gather (``H*Dv``
numbers) happens once per edge in the whole backward pass.
"""

from __future__ import annotations

import functools

import numpy as np
from numba import njit, prange

from ._source import SOURCE_DIGEST
from .dropout import keep
from .fastexp import exp
from .forward import ACC_BLOCK, KERNEL_OPTIONS
from .intrinsics import PREFETCH_DISTANCE, prefetch_row, prefetch_row_for_write
from .scores import (ADDITIVE, COSINE, DOT, EUCLIDEAN, FASTMATH, GATV2, SCALED_DOT, SCORE_CODES,
                     edge_score, leaky_relu, leaky_relu_grad)


@njit(**KERNEL_OPTIONS)
def pack_rows(out, dout, rowmax, rowinv, q, with_q, pack):
    """``pack[i, h] = (rowmax, rowinv, dout_i . out_i, q[i, h] if with_q else 0)``."""
    H = out.shape[1]
    Dv = out.shape[2]
    zero = out.dtype.type(0)
    for i in prange(out.shape[0]):
        for h in range(H):
            acc = zero
            for d in range(Dv):
                acc += dout[i, h, d] * out[i, h, d]
            pack[i, h, 0] = rowmax[i, h]
            pack[i, h, 1] = rowinv[i, h]
            pack[i, h, 2] = acc
            pack[i, h, 3] = q[i, h] if with_q else zero


@njit(inline="always", cache=True, fastmath=FASTMATH)
def _zero3(a, b, c):
    """Zero the float64 totals ``a`` (H, n), ``b`` (H, m), ``c`` (H,)."""
    for h in range(c.shape[0]):
        c[h] = 0.0
        for d in range(a.shape[1]):
            a[h, d] = 0.0
        for d in range(b.shape[1]):
            b[h, d] = 0.0


@njit(inline="always", cache=True, fastmath=FASTMATH)
def _flush3(a, b, c, at, bt, ct):
    """Add the block sums ``a``, ``b``, ``c`` into the float64 totals ``at``, ``bt``, ``ct``
    and zero the block sums."""
    zero = a.dtype.type(0)
    for h in range(c.shape[0]):
        ct[h] += c[h]
        c[h] = zero
        for d in range(a.shape[1]):
            at[h, d] += a[h, d]
            a[h, d] = zero
        for d in range(b.shape[1]):
            bt[h, d] += b[h, d]
            b[h, d] = zero


@njit(inline="always", cache=True, fastmath=FASTMATH)
def _unload3(a, b, c, at, bt, ct):
    """The totals back into the block buffers, rounded to their dtype."""
    t = a.dtype.type
    for h in range(c.shape[0]):
        c[h] = t(ct[h])
        for d in range(a.shape[1]):
            a[h, d] = t(at[h, d])
        for d in range(b.shape[1]):
            b[h, d] = t(bt[h, d])


@functools.lru_cache(maxsize=None)
def backward_kernels(score: str):
    """``(source_pass, dest_pass)`` specialised on ``score`` (built on first use)."""
    SID = SCORE_CODES[score]
    DIGEST = SOURCE_DIGEST  # part of the cache key (see _source.py)

    @njit(**KERNEL_OPTIONS)
    def source_pass(t_indptr, t_indices, t_perm, tchunks, q, k, v, att, bias, has_bias, qnorm, knorm,
                    tau, slope, scale, dropout, seed_key, threshold, keep_scale,
                    dout, pack, ds_buf, dk, dv):
        DIGEST  # noqa: B018 - keeps the source digest in the closure: a cache key
        H = v.shape[1]
        Dv = v.shape[2]
        Dk = 1 if SID == ADDITIVE else k.shape[2]
        zero = v.dtype.type(0)
        one = v.dtype.type(1)
        for c in prange(tchunks.shape[0] - 1):
            dva = np.empty((H, Dv), v.dtype)
            dka = np.empty((H, Dk), v.dtype)
            bsum = np.empty(H, v.dtype)
            # Columns longer than ACC_BLOCK edges: block sums added into float64 totals.
            dvt = np.empty((H, Dv), np.float64)
            dkt = np.empty((H, Dk), np.float64)
            bst = np.empty(H, np.float64)
            edge_end = t_indptr[tchunks[c + 1]]
            for j in range(tchunks[c], tchunks[c + 1]):
                vj = v[j]
                p0 = t_indptr[j]
                long_col = t_indptr[j + 1] - p0 > ACC_BLOCK
                for h in range(H):
                    for d in range(Dv):
                        dva[h, d] = zero
                    for d in range(Dk):
                        dka[h, d] = zero
                    bsum[h] = zero
                if long_col:
                    _zero3(dvt, dkt, bst)
                for p in range(p0, t_indptr[j + 1]):
                    if p + PREFETCH_DISTANCE < edge_end:
                        i_next = t_indices[p + PREFETCH_DISTANCE]
                        e_next = t_perm[p + PREFETCH_DISTANCE]
                        prefetch_row(dout, i_next)
                        prefetch_row(pack, i_next)
                        if SID != ADDITIVE:
                            prefetch_row(q, i_next)
                        prefetch_row_for_write(ds_buf, e_next)
                        if has_bias:
                            prefetch_row(bias, e_next)
                    i = t_indices[p]
                    e = t_perm[p]
                    douti = dout[i]
                    for h in range(H):
                        if SID == ADDITIVE:
                            z = pack[i, h, 3] + k[j, h]
                            s = leaky_relu(z, slope)
                            aux = z
                        else:
                            s, aux = edge_score(SID, q, i, k, j, h, att, qnorm, knorm, tau, slope, scale)
                        if has_bias:
                            s += bias[e, h]
                        pr = exp(s - pack[i, h, 0]) * pack[i, h, 1]
                        kk = one
                        if dropout:
                            kk = keep_scale if keep(seed_key, e, H, h, threshold) else zero
                        dot = zero
                        for d in range(Dv):
                            dot += douti[h, d] * vj[h, d]
                        ds = pr * (kk * dot - pack[i, h, 2])
                        ds_buf[e, h] = ds
                        a = pr * kk  # 0 for a dropped edge: no branch to mispredict
                        for d in range(Dv):
                            dva[h, d] += a * douti[h, d]
                        if SID == ADDITIVE:
                            dka[h, 0] += ds * leaky_relu_grad(aux, slope, one)
                        elif SID == DOT:
                            for d in range(Dk):
                                dka[h, d] += ds * q[i, h, d]
                        elif SID == SCALED_DOT:
                            w = ds * scale
                            for d in range(Dk):
                                dka[h, d] += w * q[i, h, d]
                        elif SID == COSINE:  # q, k: unit vectors
                            for d in range(Dk):
                                dka[h, d] += ds * q[i, h, d]
                            bsum[h] += ds * aux
                        elif SID == EUCLIDEAN:
                            w = (tau + tau) * ds
                            for d in range(Dk):
                                dka[h, d] += w * (q[i, h, d] - k[j, h, d])
                        else:  # GATV2
                            for d in range(Dk):
                                dka[h, d] += ds * att[h, d] * leaky_relu_grad(q[i, h, d] + k[j, h, d],
                                                                              slope, one)
                    if long_col and (p - p0) % ACC_BLOCK == ACC_BLOCK - 1:
                        _flush3(dva, dka, bsum, dvt, dkt, bst)
                if long_col:
                    _flush3(dva, dka, bsum, dvt, dkt, bst)
                    _unload3(dva, dka, bsum, dvt, dkt, bst)
                dvj = dv[j]
                for h in range(H):
                    for d in range(Dv):
                        dvj[h, d] = dva[h, d]
                    if SID == ADDITIVE:
                        dk[j, h] = dka[h, 0]
                    elif SID == COSINE:
                        # dk_j = tau/nk_j (sum_i ds qh_i - (sum_i ds c_ij) [nk_j > eps] kh_j)
                        inv = knorm[j, h, 0]
                        b = bsum[h] * knorm[j, h, 1]
                        for d in range(Dk):
                            dk[j, h, d] = tau * inv * (dka[h, d] - b * k[j, h, d])
                    else:
                        for d in range(Dk):
                            dk[j, h, d] = dka[h, d]

    @njit(**KERNEL_OPTIONS)
    def dest_pass(indptr, indices, chunks, q, k, att, qnorm, knorm, tau, slope, scale,
                  ds_buf, dq, att_part, tau_part):
        DIGEST  # noqa: B018 - keeps the source digest in the closure: a cache key
        H = ds_buf.shape[1]
        Dq = 1 if SID == ADDITIVE else q.shape[2]
        zero = ds_buf.dtype.type(0)
        one = ds_buf.dtype.type(1)
        for c in prange(chunks.shape[0] - 1):
            dqa = np.empty((H, Dq), ds_buf.dtype)
            bsum = np.empty(H, ds_buf.dtype)
            # Rows longer than ACC_BLOCK edges: block sums added into float64 totals.
            dqt = np.empty((H, Dq), np.float64)
            bst = np.empty(H, np.float64)
            nothing = np.empty((H, 0), ds_buf.dtype)
            nothing_t = np.empty((H, 0), np.float64)
            taup = 0.0  # float64, like att_part: sums over the whole chunk
            if SID == GATV2:
                for h in range(H):
                    for d in range(Dq):
                        att_part[c, h, d] = zero
            edge_end = indptr[chunks[c + 1]]
            for i in range(chunks[c], chunks[c + 1]):
                for h in range(H):
                    for d in range(Dq):
                        dqa[h, d] = zero
                    bsum[h] = zero
                e0 = indptr[i]
                long_row = indptr[i + 1] - e0 > ACC_BLOCK
                if long_row:
                    _zero3(dqt, nothing_t, bst)
                for e in range(e0, indptr[i + 1]):
                    if e + PREFETCH_DISTANCE < edge_end:
                        prefetch_row(k, indices[e + PREFETCH_DISTANCE])
                    j = indices[e]
                    for h in range(H):
                        ds = ds_buf[e, h]
                        if SID == ADDITIVE:
                            dqa[h, 0] += ds * leaky_relu_grad(q[i, h] + k[j, h], slope, one)
                        elif SID == DOT:
                            for d in range(Dq):
                                dqa[h, d] += ds * k[j, h, d]
                        elif SID == SCALED_DOT:
                            w = ds * scale
                            for d in range(Dq):
                                dqa[h, d] += w * k[j, h, d]
                        elif SID == COSINE:
                            _, cij = edge_score(SID, q, i, k, j, h, att, qnorm, knorm, tau, slope, scale)
                            for d in range(Dq):
                                dqa[h, d] += ds * k[j, h, d]
                            bsum[h] += ds * cij
                            taup += ds * cij
                        elif SID == EUCLIDEAN:
                            w = -(tau + tau) * ds
                            dist = zero
                            for d in range(Dq):
                                t = q[i, h, d] - k[j, h, d]
                                dist += t * t
                                dqa[h, d] += w * t
                            taup -= ds * dist
                        else:  # GATV2
                            for d in range(Dq):
                                z = q[i, h, d] + k[j, h, d]
                                dqa[h, d] += ds * att[h, d] * leaky_relu_grad(z, slope, one)
                                att_part[c, h, d] += ds * leaky_relu(z, slope)
                    if long_row and (e - e0) % ACC_BLOCK == ACC_BLOCK - 1:
                        _flush3(dqa, nothing, bsum, dqt, nothing_t, bst)
                if long_row:
                    _flush3(dqa, nothing, bsum, dqt, nothing_t, bst)
                    _unload3(dqa, nothing, bsum, dqt, nothing_t, bst)
                for h in range(H):
                    if SID == ADDITIVE:
                        dq[i, h] = dqa[h, 0]
                    elif SID == COSINE:
                        inv = qnorm[i, h, 0]
                        b = bsum[h] * qnorm[i, h, 1]
                        for d in range(Dq):
                            dq[i, h, d] = tau * inv * (dqa[h, d] - b * q[i, h, d])
                    else:
                        for d in range(Dq):
                            dq[i, h, d] = dqa[h, d]
            tau_part[c] = taup

    return source_pass, dest_pass
