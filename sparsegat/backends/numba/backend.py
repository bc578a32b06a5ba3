"""The ``numba`` backend: fused, parallel CPU kernels (see ``docs/numba.md``).

A thin module: it prepares outputs and per-graph structures and calls the kernels
of this folder (:mod:`sparsegat.backends.numba`), specialised on the score in use. Importing it
imports numba; the registry imports it only when the backend is chosen.
Threads follow ``numba.set_num_threads`` / ``NUMBA_NUM_THREADS``.

Compiled specialisations are kept few: the score is baked into each kernel
(one kernel family per score, built on first use), the edge bias is a runtime
flag, and graph indices are handed to the kernels as int32 whenever the graph
fits in int32 (an int64 graph that fits gets int32 copies, cached on the graph),
so the kernels compile once per (score, float dtype) in practice and int64
kernels only for graphs beyond int32's range. Set :data:`NATIVE_INDEX_DTYPE`
to True to always use the graph's own index dtype (the tests do, once).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from ...arrays import aligned_empty
from .backward import backward_kernels, pack_rows
from .compile_notice import working_on
from .threads import quiet_workers_before_start, threads_for
from .dense import adam_update as adam_kernel, add_blockdiag_rows, csr_matmul_rows
from .dropout import dropout_key
from .forward import cosine_unit, forward_kernel, forward_repair_kernel, weights_kernel
from .partition import balanced_chunks
from .scores import ADDITIVE, COSINE, SCORE_CODES
from ...spec import COSINE_EPS, ROW_INV_DENOM, ROW_MAX, TAU_SCORES, AttentionSpec

quiet_workers_before_start()  # before the first parallel kernel starts OpenMP

#: Hand the kernels the graph's own index dtype even when int32 would do.
NATIVE_INDEX_DTYPE = False

_INT32_MAX = np.iinfo(np.int32).max

#: The forward kernel's two-pass form is used for at least this many heads (below, its
#: branch-free loops over the heads gain nothing) while the gathered arrays (``k`` and ``v``)
#: take at most ``TWO_PASS_MAX_BYTES``, so that they mostly stay in a core's L2 cache; beyond
#: that the one-pass online softmax is faster (docs/numba.md). Tests set both to force a form.
TWO_PASS_MIN_HEADS = 4
TWO_PASS_MAX_BYTES = 1 << 20


def _kernel_index_dtype(g: Any) -> np.dtype:
    if NATIVE_INDEX_DTYPE or g.index_dtype == np.int32:
        return g.index_dtype
    fits = max(g.n_dst, g.n_src, g.nnz) < _INT32_MAX
    return np.dtype(np.int32) if fits else g.index_dtype


def _csr(g: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(indptr, indices, row_chunks)`` as the kernels take them (cached on the graph)."""
    dtype = _kernel_index_dtype(g)

    def build() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        indptr, indices = g.indptr.astype(dtype, copy=False), g.indices.astype(dtype, copy=False)
        return _ro(indptr), _ro(indices), _ro(balanced_chunks(indptr))

    return g.cached(f"numba.csr.{dtype}", build)


def _transposed(g: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(t_indptr, t_indices, t_perm, col_chunks)`` as the kernels take them (cached)."""
    dtype = _kernel_index_dtype(g)

    def build() -> tuple[np.ndarray, ...]:
        t = tuple(a.astype(dtype, copy=False) for a in g.transposed())
        return tuple(_ro(a) for a in t + (balanced_chunks(t[0]),))

    return g.cached(f"numba.transposed.{dtype}", build)


# Outputs are allocated on 64-byte (cache-line) boundaries (aligned_empty): OpenBLAS's
# ``a.T @ b`` (the weight gradient ``x.T @ dv`` of a layer) runs up to ~25x faster when ``a``
# is aligned (measured; see docs/numba.md).


def _ro(a: np.ndarray) -> np.ndarray:
    """A read-only view of ``a``: every array a kernel only reads is passed read-only, so
    that Numba (which types read-only and writeable arrays apart) compiles one variant
    whether the caller's arrays (or the graph's, which are read-only) are writeable or not."""
    view = a.view()
    view.flags.writeable = False
    return view


def _dummy(dtype: np.dtype, ndim: int) -> np.ndarray:
    return _ro(np.zeros((1,) * ndim, dtype=dtype))


def _score_inputs(q: np.ndarray, k: np.ndarray, spec: AttentionSpec) -> tuple:
    """``(q, k, qnorm, knorm)`` as the kernels take them: for ``cosine`` the unit vectors
    ``x / max(norm x, eps)`` and ``(n, H, 2)`` arrays of ``(1 / max(norm, eps), norm > eps)``
    (recomputed when needed, never saved); the inputs themselves otherwise."""
    if SCORE_CODES[spec.score] != COSINE:
        return _ro(q), _ro(k), None, None
    out = []
    for x in (q, k):
        unit = np.empty_like(x)
        norms = np.empty(x.shape[:2] + (2,), dtype=x.dtype)
        cosine_unit(_ro(x), x.dtype.type(COSINE_EPS), unit, norms)
        out.append((_ro(unit), _ro(norms)))
    return out[0][0], out[1][0], out[0][1], out[1][1]


class KernelOptions(NamedTuple):
    """The kernels' arguments after ``k``/``v``, in the kernels' parameter order (the forward,
    weights and source-side kernels take them all, splatted; the destination side by name)."""

    att: np.ndarray           # (H, D) for gatv2, else a dummy
    bias: np.ndarray          # (nnz, H) edge bias, else a dummy
    has_bias: bool
    qnorm: np.ndarray         # cosine: (n, H, 2) inverse norms and flags, else a dummy
    knorm: np.ndarray
    tau: Any                  # scalars in the inputs' dtype
    slope: Any
    scale: Any
    dropout: bool
    seed_key: np.ndarray      # (seed_key, edge_offset), uint64 (dropout.dropout_key)
    threshold: np.uint64
    keep_scale: Any


def _options(q: np.ndarray, att: Any, edge_bias: Any, qnorm: Any, knorm: Any,
             spec: AttentionSpec) -> KernelOptions:
    """The kernels' options, with read-only dummies for the arrays that do not apply."""
    t = q.dtype.type
    scale = 1.0 / math.sqrt(q.shape[2]) if q.ndim == 3 else 1.0
    dummy3 = _dummy(q.dtype, 3)
    return KernelOptions(
        att=_ro(att) if att is not None else _dummy(q.dtype, 2),
        bias=_ro(edge_bias) if edge_bias is not None else _dummy(q.dtype, 2), has_bias=edge_bias is not None,
        qnorm=dummy3 if qnorm is None else qnorm, knorm=dummy3 if knorm is None else knorm,
        tau=t(spec.tau), slope=t(spec.negative_slope), scale=t(scale),
        dropout=bool(spec.dropout > 0.0), seed_key=dropout_key(spec.seed_key, spec.edge_offset),
        threshold=np.uint64(spec.threshold), keep_scale=t(spec.keep_scale))


def forward(g: Any, q: np.ndarray, k: np.ndarray, v: np.ndarray, att: Any, edge_bias: Any,
            spec: AttentionSpec, out: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """Attention forward into ``out`` (allocated when None); saves the row maxima and
    inverse row sums, (n_dst, H) each."""
    with working_on(f"{v.dtype}/{spec.score}"), threads_for(attention_work(g, q, v)):
        return _forward(g, q, k, v, att, edge_bias, spec, out)


def attention_work(g: Any, q: np.ndarray, v: np.ndarray | None) -> int:
    """About the multiply-adds of one pass: per edge and head, the score's and the value's features."""
    per_edge = (q.shape[2] if q.ndim == 3 else 1) + (v.shape[2] if v is not None else 0)
    return g.nnz * q.shape[1] * per_edge + g.shape[0]


def _forward(g: Any, q: np.ndarray, k: np.ndarray, v: np.ndarray, att: Any, edge_bias: Any,
             spec: AttentionSpec, out: np.ndarray | None) -> tuple[np.ndarray, dict]:
    n_dst, heads, dv = g.shape[0], v.shape[1], v.shape[2]
    if out is None:
        out = aligned_empty((n_dst, heads, dv), v.dtype)
    rowmax = np.empty((n_dst, heads), dtype=v.dtype)
    rowinv = np.empty((n_dst, heads), dtype=v.dtype)
    qs, ks, qn, kn = _score_inputs(q, k, spec)
    indptr, indices, chunks = _csr(g)
    two_pass = heads >= TWO_PASS_MIN_HEADS and ks.nbytes + v.nbytes <= TWO_PASS_MAX_BYTES
    options = _options(q, att, edge_bias, qn, kn, spec)
    flags = np.zeros(chunks.shape[0], dtype=np.uint8)  # chunks with a non-finite output
    forward_kernel(spec.score)(indptr, indices, chunks, qs, ks, _ro(v), *options, two_pass,
                               out, rowmax, rowinv, flags)
    if flags.any():  # rare: |v| near the dtype's maximum (or NaN/inf inputs)
        forward_repair_kernel(spec.score)(indptr, indices, chunks, qs, ks, _ro(v), *options, _ro(flags),
                                          out, _ro(rowmax), _ro(rowinv))
    return out, {ROW_MAX: rowmax, ROW_INV_DENOM: rowinv}


def backward(g: Any, q: np.ndarray, k: np.ndarray, v: np.ndarray, att: Any, edge_bias: Any,
             spec: AttentionSpec, out: np.ndarray, saved: dict, dout: np.ndarray,
             *, into: dict | None = None) -> dict:
    """Gradients of every input; deterministic (no atomics, fixed reduction order).

    ``into`` maps gradient names to arrays the kernels write directly (``q``, ``k``,
    ``v``, ``edge_bias``; others are left to the caller)."""
    with working_on(f"{v.dtype}/{spec.score}"), threads_for(2 * attention_work(g, q, v)):
        return _backward(g, q, k, v, att, edge_bias, spec, out, saved, dout, into or {})


def _backward(g: Any, q: np.ndarray, k: np.ndarray, v: np.ndarray, att: Any, edge_bias: Any,
              spec: AttentionSpec, out: np.ndarray, saved: dict, dout: np.ndarray, into: dict) -> dict:

    def result(name: str, shape: tuple) -> np.ndarray:
        return into[name] if name in into else aligned_empty(shape, dtype)

    source_pass, dest_pass = backward_kernels(spec.score)
    dtype = v.dtype
    n_dst, heads = out.shape[0], out.shape[1]
    qs, ks, qn, kn = _score_inputs(q, k, spec)
    options = _options(q, att, edge_bias, qn, kn, spec)

    additive = SCORE_CODES[spec.score] == ADDITIVE
    pack = aligned_empty((n_dst, heads, 4), dtype)
    pack_rows(_ro(out), _ro(dout), _ro(saved[ROW_MAX]), _ro(saved[ROW_INV_DENOM]),
              _ro(q) if additive else _dummy(dtype, 2), additive, pack)

    t_indptr, t_indices, t_perm, tchunks = _transposed(g)
    ds = result("edge_bias", (g.nnz, heads)) if edge_bias is not None else aligned_empty((g.nnz, heads), dtype)
    dk = result("k", k.shape)
    dv = result("v", v.shape)
    source_pass(t_indptr, t_indices, t_perm, tchunks, qs, ks, _ro(v), *options, _ro(dout), _ro(pack),
                ds, dk, dv)

    indptr, indices, chunks = _csr(g)
    nchunks = chunks.shape[0] - 1
    dq = result("q", q.shape)
    # Per-chunk partials in float64: each sums over every edge of its chunk.
    att_part = np.empty(((nchunks,) + att.shape) if att is not None else (1, 1, 1), dtype=np.float64)
    tau_part = np.empty(max(nchunks, 1), dtype=np.float64)
    dest_pass(indptr, indices, chunks, qs, ks, options.att, options.qnorm, options.knorm, options.tau,
              options.slope, options.scale, _ro(ds), dq, att_part, tau_part)

    grads = {"q": dq, "k": dk, "v": dv}
    if att is not None:
        grads["att"] = _ordered_sum(att_part[:nchunks], att.shape, dtype)
    if spec.score in TAU_SCORES:
        grads["tau"] = _ordered_sum(tau_part[:nchunks], (), dtype)
    if edge_bias is not None:
        grads["edge_bias"] = ds
    return grads


def _ordered_sum(parts: np.ndarray, shape: tuple, dtype: np.dtype) -> np.ndarray:
    """Sum of per-chunk partials, one chunk after another (a fixed order)."""
    total = np.zeros(shape, dtype=np.float64)
    for p in parts:
        total += p
    return total.astype(dtype)


def weights(g: Any, q: np.ndarray, k: np.ndarray, att: Any, edge_bias: Any,
            spec: AttentionSpec) -> np.ndarray:
    """The (nnz, H) attention weights after softmax (and dropout), in CSR order."""
    w = aligned_empty((g.nnz, q.shape[1]), q.dtype)
    with working_on(f"{q.dtype}/{spec.score} (weights)"), threads_for(attention_work(g, q, None)):
        qs, ks, qn, kn = _score_inputs(q, k, spec)
        indptr, indices, chunks = _csr(g)
        weights_kernel(spec.score)(indptr, indices, chunks, qs, ks, *_options(q, att, edge_bias, qn, kn, spec), w)
    return w


# ---------------------------------------------------------------------- optional dense helpers
def csr_matmul(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``x @ w`` for a CSR ``x = (indptr, indices, data)`` already checked by
    :func:`sparsegat.csr_format.check_csr`, parallel over rows (SciPy's runs on one thread)."""
    out = np.empty((indptr.shape[0] - 1, w.shape[1]), dtype=w.dtype)
    csr_matmul_rows(indptr, indices, data, np.ascontiguousarray(w), out)
    return out


def add_blockdiag_product(dh: np.ndarray, G: np.ndarray, A: np.ndarray, block: int) -> None:
    """``dh += G @ A.T`` in place, for ``A`` (H*block, P*H) made of ``P`` block-diagonal parts
    with blocks of ``block`` rows (a layer's attention vectors), ``dh`` (n, H*block) C-contiguous,
    all of one float dtype. One pass over ``dh``, two multiply-adds per entry for ``P = 2``."""
    with working_on(f"the layers ({dh.dtype})"), threads_for(dh.size * (G.shape[1] // max(1, dh.shape[1] // block))):
        add_blockdiag_rows(dh, np.ascontiguousarray(G), np.ascontiguousarray(A), block)


def adam_update(p: np.ndarray, g: np.ndarray, m: np.ndarray, v: np.ndarray, vmax: np.ndarray | None,
                step: int, lr: float, betas: tuple[float, float], eps: float, weight_decay: float,
                decoupled: bool, amsgrad: bool, maximize: bool) -> None:
    """Adam's (AdamW's with ``decoupled``) step on ``p`` in place, in one pass, bitwise as
    :class:`sparsegat.optim.Adam`'s NumPy arithmetic. Arrays: C-contiguous, one shape and dtype."""
    t = p.dtype.type
    b1, b2 = betas
    wd = weight_decay if (weight_decay and not decoupled) else 0.0
    decay = 1.0 - lr * weight_decay if (weight_decay and decoupled) else 1.0
    flat = [a.reshape(-1) for a in (p, g, m, v)]
    vmax_flat = vmax.reshape(-1) if amsgrad else flat[3]
    adam_kernel(*flat, vmax_flat, amsgrad, maximize, t(wd), t(decay), t(1.0 - b1), t(b2), t(1.0 - b2),
                t(lr / (1.0 - b1 ** step)), t(1.0 / math.sqrt(1.0 - b2 ** step)), t(eps))

