"""The reference backend: plain NumPy/SciPy, the oracle every other backend is tested against.

Clarity over speed, but no Python loop over nodes or edges: segment reductions over
``indptr``, sparse products per head, and per-edge feature work in bounded edge
chunks, so nothing of size nnz x H x D is ever held. The derivations are in
``docs/math.md``.
"""

from __future__ import annotations

import functools
from typing import Any, Iterator

import numpy as np
import scipy.sparse as sp

from ..arrays import write_into
from ..dropout import keep_mask
from ..spec import COSINE_EPS, ROW_LOG_DENOM, ROW_MAX, AttentionSpec

#: Per-edge feature work is done on at most this many numbers at a time.
CHUNK_ELEMENTS = 1 << 22


# ---------------------------------------------------------------------- helpers
def _edge_chunks(nnz: int, width: int) -> Iterator[slice]:
    """Slices of edge positions such that a chunk holds about CHUNK_ELEMENTS numbers of ``width`` each."""
    step = max(1, CHUNK_ELEMENTS // max(1, width))
    for start in range(0, nnz, step):
        yield slice(start, min(start + step, nnz))


def _head_matrix(g: Any, values: np.ndarray) -> sp.csr_matrix:
    """The (n_dst, n_src) sparse matrix with ``values`` (nnz,) on the graph's structure."""
    return sp.csr_matrix((values, g.indices, g.indptr), shape=g.shape)


def _scatter_sum(index: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """``out[i] = sum of values[e] over e with index[e] == i``, deterministic, shape (n, *values.shape[1:])."""
    e = index.shape[0]
    if e == 0:
        return np.zeros((n,) + values.shape[1:], dtype=values.dtype)
    onehot = sp.csr_matrix((np.ones(e, dtype=values.dtype), (index, np.arange(e))), shape=(n, e))
    return np.asarray(onehot @ values.reshape(e, -1)).reshape((n,) + values.shape[1:])


def _leaky_relu(z: np.ndarray, slope: float) -> np.ndarray:
    return np.where(z > 0, z, z * z.dtype.type(slope))


def _leaky_relu_grad(z: np.ndarray, slope: float) -> np.ndarray:
    return np.where(z > 0, z.dtype.type(1), z.dtype.type(slope))


def _unit_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(x / max(norm(x), eps), max(norm(x), eps))`` over the last axis."""
    # Scale by the largest entry first so that squaring cannot overflow.
    big = np.max(np.abs(x), axis=-1, keepdims=True)
    big = np.where(big > 0, big, x.dtype.type(1))
    norm = big[..., 0] * np.sqrt(np.sum((x / big) ** 2, axis=-1))
    norm = np.maximum(norm, x.dtype.type(COSINE_EPS))
    return x / norm[..., None], norm


def _segment_reduce(ufunc: np.ufunc, values: np.ndarray, indptr: np.ndarray) -> np.ndarray:
    """Per-row ``ufunc.reduce`` of ``values`` (nnz, ...) over CSR rows; 0 for empty rows."""
    n = indptr.shape[0] - 1
    out = np.zeros((n,) + values.shape[1:], dtype=values.dtype)
    nonempty = indptr[1:] > indptr[:-1]
    if values.shape[0]:
        # reduceat misreads empty segments, so reduce over the non-empty rows only.
        out[nonempty] = ufunc.reduceat(values, indptr[:-1][nonempty], axis=0)
    return out


def _segment_max(values: np.ndarray, indptr: np.ndarray) -> np.ndarray:
    """Per-row max of ``values`` (nnz, H); 0 for empty rows."""
    return _segment_reduce(np.maximum, values, indptr)


def _segment_sum(values: np.ndarray, indptr: np.ndarray) -> np.ndarray:
    """Per-row sum of ``values`` (nnz, ...); 0 for empty rows."""
    return _segment_reduce(np.add, values, indptr)


# ---------------------------------------------------------------------- scores
def _scores(g: Any, q: np.ndarray, k: np.ndarray, att: Any, edge_bias: Any, spec: AttentionSpec) -> np.ndarray:
    """Score ``s`` of every edge and head, shape (nnz, H), in CSR order."""
    rows, cols = g.row_ids(), g.indices
    score = spec.score
    if score == "additive":
        s = _leaky_relu(q[rows] + k[cols], spec.negative_slope)
    else:
        heads, dim = q.shape[1], q.shape[2]
        s = np.empty((g.nnz, heads), dtype=q.dtype)
        if score == "cosine":
            q, _ = _unit_rows(q)
            k, _ = _unit_rows(k)
        for c in _edge_chunks(g.nnz, heads * dim):
            qe, ke = q[rows[c]], k[cols[c]]
            if score in ("dot", "scaled_dot", "cosine"):
                s[c] = np.sum(qe * ke, axis=-1)
            elif score == "euclidean":
                d = qe - ke
                s[c] = np.sum(d * d, axis=-1)
            else:  # gatv2
                s[c] = np.sum(att * _leaky_relu(qe + ke, spec.negative_slope), axis=-1)
        if score == "scaled_dot":
            s *= q.dtype.type(1.0 / np.sqrt(dim))
        elif score == "cosine":
            s *= q.dtype.type(spec.tau)
        elif score == "euclidean":
            s *= q.dtype.type(-spec.tau)
    if edge_bias is not None:
        s += edge_bias
    return s


def _softmax(g: Any, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row softmax of the scores: ``(p, m, log_denom)``, ``p = exp((s - m[row]) - log_denom[row])``.

    The row max ``m`` and ``log_denom`` stay separate: folding them into one
    log-sum-exp would lose ``log_denom`` to rounding when ``|m|`` is huge.
    """
    m = _segment_max(s, g.indptr)
    rows = g.row_ids()
    shifted = s - m[rows]
    denom = _segment_sum(np.exp(shifted), g.indptr)
    log_denom = np.log(np.maximum(denom, 1))  # 1 for empty rows, whose value is unused
    return np.exp(shifted - log_denom[rows]), m, log_denom


def _dropped(p: np.ndarray, spec: AttentionSpec) -> np.ndarray:
    """Weights after dropout: ``p * keep / (1 - dropout)``."""
    if spec.dropout == 0.0:
        return p
    keep = keep_mask(spec.seed_key, spec.edge_offset, spec.edge_offset + p.shape[0], p.shape[1], spec.threshold)
    return np.where(keep, p * p.dtype.type(spec.keep_scale), p.dtype.type(0))


def _aggregate(g: Any, a: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``out[i, h] = sum_j a[ij, h] v[j, h]`` via one sparse product per head."""
    out = np.empty((g.n_dst, v.shape[1], v.shape[2]), dtype=v.dtype)
    for h in range(v.shape[1]):
        out[:, h, :] = _head_matrix(g, a[:, h]) @ v[:, h, :]
    return out


# ---------------------------------------------------------------------- the function set
def _quiet(fn: Any) -> Any:
    """Run ``fn`` without NumPy's overflow/invalid warnings: a score that overflows is reported
    once, as a ``ValueError`` naming it, by the public functions (the NaN/inf rule of
    ``docs/contract.md``), not as a stream of RuntimeWarnings from inside the reference."""
    @functools.wraps(fn)
    def quiet(*args: Any, **kwargs: Any) -> Any:
        with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
            return fn(*args, **kwargs)
    return quiet


@_quiet
def weights(g: Any, q: np.ndarray, k: np.ndarray, att: Any, edge_bias: Any, spec: AttentionSpec) -> np.ndarray:
    """Attention weights of every edge, (nnz, H) in CSR order, after dropout."""
    p, _, _ = _softmax(g, _scores(g, q, k, att, edge_bias, spec))
    return _dropped(p, spec)


@_quiet
def forward(g: Any, q: np.ndarray, k: np.ndarray, v: np.ndarray, att: Any, edge_bias: Any,
            spec: AttentionSpec, out: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """Scores, row softmax, dropout, aggregation (copied into ``out`` when given); saves
    the row max and log-denominator (n_dst, H)."""
    p, m, log_denom = _softmax(g, _scores(g, q, k, att, edge_bias, spec))
    return write_into(out, _aggregate(g, _dropped(p, spec), v)), {ROW_MAX: m, ROW_LOG_DENOM: log_denom}


@_quiet
def backward(g: Any, q: np.ndarray, k: np.ndarray, v: np.ndarray, att: Any, edge_bias: Any,
             spec: AttentionSpec, out: np.ndarray, saved: dict, dout: np.ndarray,
             *, into: dict | None = None) -> dict:
    """Gradients of every input; see ``docs/math.md`` for the derivation. (``into`` is
    accepted as by the other backends; the caller copies the results there.)"""
    rows, cols = g.row_ids(), g.indices
    heads = v.shape[1]
    s = _scores(g, q, k, att, edge_bias, spec)
    p = np.exp((s - saved[ROW_MAX][rows]) - saved[ROW_LOG_DENOM][rows])
    a = _dropped(p, spec)

    grads: dict = {}
    # Values: dv_j = sum_i a_ij dout_i.
    dv = np.empty_like(v)
    for h in range(heads):
        dv[:, h, :] = _head_matrix(g, a[:, h]).T @ dout[:, h, :]
    grads["v"] = dv

    # Through the softmax: ds_ij = p_ij (keep*scale*(dout_i . v_j) - Delta_i), Delta_i = dout_i . out_i.
    da = np.empty_like(p)
    for c in _edge_chunks(g.nnz, heads * v.shape[2]):
        da[c] = np.sum(dout[rows[c]] * v[cols[c]], axis=-1)
    dp = _dropped(da, spec)  # same keep mask and scale as the forward
    delta = np.sum(dout * out, axis=-1)
    ds = p * (dp - delta[rows])
    if edge_bias is not None:
        grads["edge_bias"] = ds
    grads.update(_score_backward(g, q, k, att, ds, spec))
    return grads


def _score_backward(g: Any, q: np.ndarray, k: np.ndarray, att: Any, ds: np.ndarray,
                    spec: AttentionSpec) -> dict:
    """Push the score gradient ``ds`` (nnz, H) into q, k and the score's own parameters."""
    rows, cols = g.row_ids(), g.indices
    score, dtype = spec.score, q.dtype.type
    n_dst, n_src = g.shape

    if score == "additive":
        dz = ds * _leaky_relu_grad(q[rows] + k[cols], spec.negative_slope)
        return {"q": _scatter_sum(rows, dz, n_dst), "k": _scatter_sum(cols, dz, n_src)}

    heads, dim = q.shape[1], q.shape[2]
    if score == "gatv2":
        dq, dk = np.zeros_like(q), np.zeros_like(k)
        datt = np.zeros_like(att)
        for c in _edge_chunks(g.nnz, heads * dim):
            z = q[rows[c]] + k[cols[c]]
            datt += np.einsum("eh,ehd->hd", ds[c], _leaky_relu(z, spec.negative_slope))
            dz = ds[c][..., None] * att * _leaky_relu_grad(z, spec.negative_slope)
            dq += _scatter_sum(rows[c], dz, n_dst)
            dk += _scatter_sum(cols[c], dz, n_src)
        return {"q": dq, "k": dk, "att": datt}

    if score == "cosine":
        qh, qn = _unit_rows(q)
        kh, kn = _unit_rows(k)
        gq, gk = _pair_products(g, ds, kh, qh)
        c = np.empty_like(ds)
        for ch in _edge_chunks(g.nnz, heads * dim):
            c[ch] = np.sum(qh[rows[ch]] * kh[cols[ch]], axis=-1)
        tau = dtype(spec.tau)
        return {"q": _cosine_input_grad(gq, qh, qn, tau), "k": _cosine_input_grad(gk, kh, kn, tau),
                "tau": np.asarray(np.sum(ds * c), dtype=q.dtype)}

    gq, gk = _pair_products(g, ds, k, q)
    if score in ("dot", "scaled_dot"):
        scale = dtype(1.0 / np.sqrt(dim)) if score == "scaled_dot" else dtype(1)
        return {"q": gq * scale, "k": gk * scale}

    # euclidean: s = -tau |q_i - k_j|^2
    tau = dtype(spec.tau)
    row_sum = _segment_sum(ds, g.indptr)
    col_sum = _scatter_sum(cols, ds, n_src)
    dist = np.empty_like(ds)
    for ch in _edge_chunks(g.nnz, heads * dim):
        d = q[rows[ch]] - k[cols[ch]]
        dist[ch] = np.sum(d * d, axis=-1)
    return {"q": dtype(-2) * tau * (row_sum[..., None] * q - gq),
            "k": dtype(-2) * tau * (col_sum[..., None] * k - gk),
            "tau": np.asarray(-np.sum(ds * dist), dtype=q.dtype)}


def _pair_products(g: Any, ds: np.ndarray, k: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(sum_j ds_ij k_j, sum_i ds_ij q_i)`` per head: the bilinear part of every vector score."""
    gq = np.empty((g.n_dst,) + k.shape[1:], dtype=k.dtype)
    gk = np.empty((g.n_src,) + q.shape[1:], dtype=q.dtype)
    for h in range(ds.shape[1]):
        m = _head_matrix(g, ds[:, h])
        gq[:, h, :] = m @ k[:, h, :]
        gk[:, h, :] = m.T @ q[:, h, :]
    return gq, gk


def _cosine_input_grad(gx: np.ndarray, xh: np.ndarray, xn: np.ndarray, tau: Any) -> np.ndarray:
    """Gradient through ``xh = x / max(norm(x), eps)`` given ``gx = dL/dxh / tau``."""
    radial = np.sum(gx * xh, axis=-1, keepdims=True)
    above = (xn > xh.dtype.type(COSINE_EPS))[..., None]
    return tau / xn[..., None] * np.where(above, gx - radial * xh, gx)
