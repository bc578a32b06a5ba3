"""Forward kernels: one sweep per destination row with an online softmax.

``forward_kernel(score)`` and ``weights_kernel(score)`` build (once per score,
lazily) a parallel kernel specialised on that score; Numba then compiles it per
argument types (float32/float64; the index dtype) the first time each
combination is called and caches the machine code on disk (``cache=True``).

Rows are processed in chunks of roughly equal work (:mod:`.partition`); a
``prange`` over the chunks spreads them over Numba's threads. A row is
computed in one of two ways, picked per call by the caller (``two_pass``):

* one pass with an online (running-max) softmax: for each edge and head the
  score, the running max/sum update and the weighted sum of values. Each
  edge's rows of ``k`` and ``v`` are gathered once, interleaved with the
  arithmetic: the faster form when those gathers miss the caches (large graphs).
* two passes: the row's scores and their maximum into a small per-chunk
  buffer, then weights, sums and the weighted values in short branch-free
  loops over the heads: about 1.5x faster when the gathered arrays sit in
  cache and the per-head branches of the online form are the bottleneck
  (Cora-sized graphs; measured in docs/numba.md).

Both accumulate in a per-chunk buffer of ``H x Dv`` numbers written to
``out[i]`` once, prefetch the rows of ``v`` (and ``k``) a few edges ahead, and
save the row maxima and inverse row sums, ``(n_dst, H)`` each, for backward.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from numba import njit, prange

from ._source import SOURCE_DIGEST
from .dropout import keep
from .fastexp import exp
from .intrinsics import PREFETCH_DISTANCE, prefetch_row
from .scores import ADDITIVE, FASTMATH, SCORE_CODES, edge_score

#: Options shared by every kernel: parallel (``prange``), cached on disk, the fast-math
#: flags of :data:`.scores.FASTMATH`, ``error_model="numpy"`` (no ZeroDivisionError
#: checks: divisions follow IEEE), and the GIL released while a kernel runs.
KERNEL_OPTIONS = dict(parallel=True, cache=True, fastmath=FASTMATH, error_model="numpy", nogil=True)


#: Rows longer than this many edges sum their softmax denominators and weighted values
#: block by block into float64 totals (the error then does not grow with the degree).
ACC_BLOCK = 256


@njit(inline="always", cache=True, fastmath=FASTMATH)
def _flush(l, acc, lt, acct):
    """Add the block sums ``l``, ``acc`` into the float64 totals ``lt``, ``acct``; zero them."""
    zero = l.dtype.type(0)
    for h in range(l.shape[0]):
        lt[h] += l[h]
        l[h] = zero
        for d in range(acc.shape[1]):
            acct[h, d] += acc[h, d]
            acc[h, d] = zero


@functools.lru_cache(maxsize=None)
def forward_kernel(score: str):
    """The forward kernel of ``score`` (built on first use)."""
    SID = SCORE_CODES[score]
    DIGEST = SOURCE_DIGEST  # part of the cache key (see _source.py)

    @njit(**KERNEL_OPTIONS)
    def attention_forward_rows(indptr, indices, chunks, q, k, v, att, bias, has_bias, qnorm, knorm,
                               tau, slope, scale, dropout, seed_key, threshold, keep_scale, two_pass,
                               out, rowmax, rowinv, flags):
        DIGEST  # noqa: B018 - keeps the source digest in the closure: a cache key
        H = v.shape[1]
        Dv = v.shape[2]
        zero = v.dtype.type(0)
        one = v.dtype.type(1)
        big = np.finfo(v.dtype).max
        for c in prange(chunks.shape[0] - 1):
            row0 = chunks[c]
            row1 = chunks[c + 1]
            edge_end = indptr[row1]
            max_degree = 0
            if two_pass:
                for i in range(row0, row1):
                    max_degree = max(max_degree, indptr[i + 1] - indptr[i])
            sc = np.empty((max_degree, H), v.dtype)  # one row's scores (two-pass only)
            m = np.empty(H, v.dtype)
            l = np.empty(H, v.dtype)
            w = np.empty(H, v.dtype)
            acc = np.empty((H, Dv), v.dtype)
            # Rows longer than ACC_BLOCK edges: the sums of each block of ACC_BLOCK edges
            # (l, acc) are added into float64 totals, so that the rounding error does not
            # grow with the degree (a float32 row of 1e6 edges summed naively is off by
            # ~1e-3).
            lt = np.empty(H, np.float64)
            acct = np.empty((H, Dv), np.float64)
            bad = False  # a non-finite output in this chunk: the caller re-checks it
            for i in range(row0, row1):
                start = indptr[i]
                stop = indptr[i + 1]
                oi = out[i]
                if stop == start:
                    for h in range(H):
                        for d in range(Dv):
                            oi[h, d] = zero
                        rowmax[i, h] = zero
                        rowinv[i, h] = zero
                    continue
                long_row = stop - start > ACC_BLOCK
                for h in range(H):
                    l[h] = zero
                    for d in range(Dv):
                        acc[h, d] = zero
                    if long_row:
                        lt[h] = 0.0
                        for d in range(Dv):
                            acct[h, d] = 0.0
                # The scores: in the two-pass form only stored (pass 1); in the one-pass
                # form folded at once into an online (running-max) softmax, so each
                # edge's rows of k and v are gathered once. (One call site of
                # edge_score: Numba's IR inliner mishandles a second one.)
                for e in range(start, stop):
                    if e + PREFETCH_DISTANCE < edge_end and not (two_pass and SID == ADDITIVE):
                        jn = indices[e + PREFETCH_DISTANCE]
                        prefetch_row(k, jn)
                        if not two_pass:
                            prefetch_row(v, jn)
                    j = indices[e]
                    vj = v[j]
                    for h in range(H):
                        s, _ = edge_score(SID, q, i, k, j, h, att, qnorm, knorm, tau, slope, scale)
                        if has_bias:
                            s += bias[e, h]
                        if two_pass:
                            sc[e - start, h] = s
                            continue
                        if e == start:
                            m[h] = s
                            l[h] = one
                            x = one
                        elif s > m[h]:
                            corr = exp(m[h] - s)
                            m[h] = s
                            l[h] = l[h] * corr + one
                            for d in range(Dv):
                                acc[h, d] *= corr
                            if long_row:
                                lt[h] *= corr
                                for d in range(Dv):
                                    acct[h, d] *= corr
                            x = one
                        else:
                            x = exp(s - m[h])
                            l[h] += x
                        if dropout:
                            if not keep(seed_key, e, H, h, threshold):
                                continue
                            x = x * keep_scale
                        for d in range(Dv):
                            acc[h, d] += x * vj[h, d]
                    if long_row and not two_pass and (e - start) % ACC_BLOCK == ACC_BLOCK - 1:
                        _flush(l, acc, lt, acct)
                if two_pass:
                    # Pass 2: the row max, then weights, sums, dropout and the weighted
                    # values in short branch-free loops over the heads.
                    for h in range(H):
                        m[h] = sc[0, h]
                    for r in range(1, stop - start):
                        for h in range(H):
                            s = sc[r, h]
                            m[h] = s if s > m[h] else m[h]  # a NaN score never becomes the max
                    for e in range(start, stop):
                        if e + PREFETCH_DISTANCE < edge_end:
                            jn = indices[e + PREFETCH_DISTANCE]
                            prefetch_row(v, jn)
                            prefetch_row(k, jn)
                        for h in range(H):
                            x = exp(sc[e - start, h] - m[h])
                            l[h] += x
                            w[h] = x
                        if dropout:
                            for h in range(H):
                                w[h] = w[h] * keep_scale if keep(seed_key, e, H, h, threshold) else zero
                        vj = v[indices[e]]
                        for h in range(H):
                            wh = w[h]
                            for d in range(Dv):
                                acc[h, d] += wh * vj[h, d]
                        if long_row and (e - start) % ACC_BLOCK == ACC_BLOCK - 1:
                            _flush(l, acc, lt, acct)
                if long_row:
                    _flush(l, acc, lt, acct)
                    for h in range(H):
                        inv64 = 1.0 / lt[h]
                        for d in range(Dv):
                            o = v.dtype.type(acct[h, d] * inv64)
                            oi[h, d] = o
                            bad |= not abs(o) <= big
                        rowmax[i, h] = m[h]
                        rowinv[i, h] = v.dtype.type(inv64)
                    continue
                for h in range(H):
                    inv = one / l[h]
                    for d in range(Dv):
                        o = acc[h, d] * inv
                        oi[h, d] = o
                        bad |= not abs(o) <= big
                    rowmax[i, h] = m[h]
                    rowinv[i, h] = inv
            flags[c] = bad

    return attention_forward_rows


@functools.lru_cache(maxsize=None)
def forward_repair_kernel(score: str):
    """The rare-path kernel that recomputes the rows of flagged chunks whose output is not finite.

    The forward kernel sums ``x * v_j`` (``x = exp(s - m) <= 1``) before dividing by the
    row sum ``l``, which overflows when ``|v|`` is near the dtype's maximum although the
    weighted mean does not (``v = 2e38`` in float32). Such rows are recomputed here from
    the saved row statistics as ``sum (x / l) v_j`` in float64, which overflows only when
    the result itself does. Rows whose output is non-finite for another reason (NaN or
    inf inputs) get the same result again. Serial and compiled only when first needed.
    """
    SID = SCORE_CODES[score]
    DIGEST = SOURCE_DIGEST  # part of the cache key (see _source.py)

    @njit(cache=True, fastmath=FASTMATH, error_model="numpy", nogil=True)
    def attention_forward_repair(indptr, indices, chunks, q, k, v, att, bias, has_bias, qnorm, knorm,
                                 tau, slope, scale, dropout, seed_key, threshold, keep_scale,
                                 flags, out, rowmax, rowinv):
        DIGEST  # noqa: B018 - keeps the source digest in the closure: a cache key
        H = v.shape[1]
        Dv = v.shape[2]
        big = np.finfo(v.dtype).max
        acct = np.empty((H, Dv), np.float64)
        for c in range(chunks.shape[0] - 1):
            if not flags[c]:
                continue
            for i in range(chunks[c], chunks[c + 1]):
                oi = out[i]
                finite = True
                for h in range(H):
                    for d in range(Dv):
                        finite &= abs(oi[h, d]) <= big
                if finite:
                    continue
                for h in range(H):
                    for d in range(Dv):
                        acct[h, d] = 0.0
                for e in range(indptr[i], indptr[i + 1]):
                    j = indices[e]
                    for h in range(H):
                        s, _ = edge_score(SID, q, i, k, j, h, att, qnorm, knorm, tau, slope, scale)
                        if has_bias:
                            s += bias[e, h]
                        p = np.float64(exp(s - rowmax[i, h])) * np.float64(rowinv[i, h])
                        if dropout:
                            if not keep(seed_key, e, H, h, threshold):
                                continue
                            p *= np.float64(keep_scale)
                        for d in range(Dv):
                            acct[h, d] += p * np.float64(v[j, h, d])
                for h in range(H):
                    for d in range(Dv):
                        oi[h, d] = v.dtype.type(acct[h, d])

    return attention_forward_repair


@functools.lru_cache(maxsize=None)
def weights_kernel(score: str):
    """The kernel that writes the (nnz, H) attention weights of ``score``."""
    SID = SCORE_CODES[score]
    DIGEST = SOURCE_DIGEST  # part of the cache key (see _source.py)

    @njit(**KERNEL_OPTIONS)
    def attention_weights_rows(indptr, indices, chunks, q, k, att, bias, has_bias, qnorm, knorm,
                               tau, slope, scale, dropout, seed_key, threshold, keep_scale, w):
        DIGEST  # noqa: B018 - keeps the source digest in the closure: a cache key
        H = w.shape[1]
        zero = w.dtype.type(0)
        one = w.dtype.type(1)
        for c in prange(chunks.shape[0] - 1):
            m = np.empty(H, w.dtype)
            l = np.empty(H, w.dtype)
            lt = np.empty(H, np.float64)
            edge_end = indptr[chunks[c + 1]]
            for i in range(chunks[c], chunks[c + 1]):
                start = indptr[i]
                stop = indptr[i + 1]
                for e in range(start, stop):
                    if e + PREFETCH_DISTANCE < edge_end:
                        prefetch_row(k, indices[e + PREFETCH_DISTANCE])
                    j = indices[e]
                    for h in range(H):
                        s, _ = edge_score(SID, q, i, k, j, h, att, qnorm, knorm, tau, slope, scale)
                        if has_bias:
                            s += bias[e, h]
                        w[e, h] = s
                        if e == start or s > m[h]:
                            m[h] = s
                if stop == start:
                    continue
                for h in range(H):
                    lt[h] = 0.0  # float64: the error does not grow with the degree
                for e in range(start, stop):
                    for h in range(H):
                        x = exp(w[e, h] - m[h])
                        w[e, h] = x
                        lt[h] += x
                for h in range(H):
                    l[h] = w.dtype.type(1.0 / lt[h])
                for e in range(start, stop):
                    for h in range(H):
                        a = w[e, h] * l[h]
                        if dropout:
                            a = a * keep_scale if keep(seed_key, e, H, h, threshold) else zero
                        w[e, h] = a

    return attention_weights_rows


@njit(parallel=True, cache=True, error_model="numpy", nogil=True)
def cosine_unit(x, eps, unit, norms):
    """Unit vectors and norm floors of the cosine score, without fast-math.

    ``unit[n, h] = x[n, h] / max(norm, eps)``, ``norms[n, h] = (1 / max(norm, eps),
    1 if norm > eps else 0)``. The norm is scaled by the largest entry first, as the
    reference does, so that squaring cannot overflow (float64 entries of 1e200,
    float32 of 1e25). The kernels then work on the unit vectors only, so no product
    of raw entries (which may overflow where the cosine cannot) is ever formed.
    """
    one = x.dtype.type(1)
    zero = x.dtype.type(0)
    for n in prange(x.shape[0]):
        for h in range(x.shape[1]):
            big = zero
            for d in range(x.shape[2]):
                big = max(big, abs(x[n, h, d]))
            norm = zero
            if big > zero:
                acc = zero
                for d in range(x.shape[2]):
                    t = x[n, h, d] / big
                    acc += t * t
                norm = big * math.sqrt(acc)
            floor = norm if norm > eps else eps
            for d in range(x.shape[2]):
                unit[n, h, d] = x[n, h, d] / floor
            norms[n, h, 0] = one / floor
            norms[n, h, 1] = one if norm > eps else zero
