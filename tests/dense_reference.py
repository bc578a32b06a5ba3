"""An independent dense oracle of the attention operator, for small graphs.

Written straight from the formulas of docs/math.md, sharing no code with the
backends: every score is computed for *all* ``(i, j)`` pairs as a dense
``(n_dst, n_src, H)`` tensor, the graph becomes a boolean mask, the softmax runs
over the masked axis with ``-inf`` for non-edges, and the dropout keep decisions
(from :func:`sparsegat.dropout.keep_mask`, the documented hash) are scattered to the
dense layout. Everything is computed in float64 whatever the input dtype, and
results are float64.

Memory is O(n_dst * n_src * H * D): for tests on graphs of tens of nodes only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sparsegat.dropout import drop_threshold, keep_mask, mix_seed
from sparsegat.spec import COSINE_EPS


def edge_list(g: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, cols)`` of every edge in CSR order, by a plain loop over rows."""
    indptr = np.asarray(g.indptr).tolist()
    indices = np.asarray(g.indices).tolist()
    rows, cols = [], []
    for i in range(g.shape[0]):
        for p in range(indptr[i], indptr[i + 1]):
            rows.append(i)
            cols.append(indices[p])
    return np.array(rows, dtype=np.int64), np.array(cols, dtype=np.int64)


def dense_mask(g: Any) -> np.ndarray:
    """Boolean adjacency ``(n_dst, n_src)``: True where ``(i <- j)`` is an edge."""
    rows, cols = edge_list(g)
    mask = np.zeros(g.shape, dtype=bool)
    mask[rows, cols] = True
    return mask


def to_dense(g: Any, edge_values: np.ndarray, fill: float = 0.0) -> np.ndarray:
    """Scatter per-edge values ``(nnz, ...)`` in CSR order to ``(n_dst, n_src, ...)``."""
    rows, cols = edge_list(g)
    edge_values = np.asarray(edge_values, dtype=np.float64)
    out = np.full(g.shape + edge_values.shape[1:], fill, dtype=np.float64)
    out[rows, cols] = edge_values
    return out


def from_dense(g: Any, dense: np.ndarray) -> np.ndarray:
    """Gather ``(n_dst, n_src, ...)`` at the edges, in CSR order: ``(nnz, ...)``."""
    rows, cols = edge_list(g)
    return dense[rows, cols]


def _leaky(x: np.ndarray, slope: float) -> np.ndarray:
    return np.where(x > 0, x, slope * x)


def dense_scores(q: Any, k: Any, score: str, att: Any = None, tau: float = 1.0,
                 negative_slope: float = 0.2) -> np.ndarray:
    """Scores of every pair ``(i, j)``: ``(n_dst, n_src, H)`` float64 (no bias, no mask)."""
    q = np.asarray(q, dtype=np.float64)
    k = np.asarray(k, dtype=np.float64)
    if score == "dot":
        return np.einsum("ihd,jhd->ijh", q, k)
    if score == "scaled_dot":
        return np.einsum("ihd,jhd->ijh", q, k) / np.sqrt(q.shape[-1])
    if score == "cosine":
        nq = np.maximum(np.sqrt(np.sum(q * q, axis=-1)), COSINE_EPS)
        nk = np.maximum(np.sqrt(np.sum(k * k, axis=-1)), COSINE_EPS)
        return tau * np.einsum("ihd,jhd->ijh", q, k) / (nq[:, None, :] * nk[None, :, :])
    if score == "euclidean":
        diff = q[:, None, :, :] - k[None, :, :, :]
        return -tau * np.sum(diff * diff, axis=-1)
    if score == "additive":
        return _leaky(q[:, None, :] + k[None, :, :], negative_slope)
    if score == "gatv2":
        att = np.asarray(att, dtype=np.float64)
        z = _leaky(q[:, None, :, :] + k[None, :, :, :], negative_slope)
        return np.einsum("ijhd,hd->ijh", z, att)
    raise ValueError(f"unknown score {score!r}")


def dense_keep(g: Any, heads: int, dropout: float, seed: int | None) -> np.ndarray:
    """Dropout factors ``keep / (1 - p)`` scattered to ``(n_dst, n_src, H)`` (1 without dropout)."""
    if dropout == 0.0:
        return np.ones(g.shape + (heads,))
    keep = keep_mask(mix_seed(seed), 0, g.nnz, heads, drop_threshold(dropout))
    return to_dense(g, keep.astype(np.float64) / (1.0 - dropout))


def dense_probabilities(g: Any, q: Any, k: Any, score: str = "dot", att: Any = None,
                        tau: float = 1.0, negative_slope: float = 0.2,
                        edge_bias: Any = None) -> np.ndarray:
    """Softmax weights before dropout, dense ``(n_dst, n_src, H)``; 0 off the graph
    and on rows without edges."""
    s = dense_scores(q, k, score, att, tau, negative_slope)
    if edge_bias is not None:
        s = s + to_dense(g, edge_bias)
    mask = dense_mask(g)[:, :, None]
    s = np.where(mask, s, -np.inf)
    m = np.max(s, axis=1, keepdims=True) if s.shape[1] else np.full(s.shape[:1] + (1,) + s.shape[2:], -np.inf)
    m = np.where(np.isfinite(m), m, 0.0)  # empty rows: every entry is -inf
    e = np.where(mask, np.exp(s - m), 0.0)
    z = np.sum(e, axis=1, keepdims=True)
    return np.where(z > 0, e / np.where(z > 0, z, 1.0), 0.0)


def dense_weights(g: Any, q: Any, k: Any, score: str = "dot", att: Any = None, tau: float = 1.0,
                  negative_slope: float = 0.2, edge_bias: Any = None, dropout: float = 0.0,
                  seed: int | None = None) -> np.ndarray:
    """Attention weights after dropout, dense ``(n_dst, n_src, H)`` float64."""
    p = dense_probabilities(g, q, k, score, att, tau, negative_slope, edge_bias)
    return p * dense_keep(g, p.shape[2], dropout, seed)


def reference_weights(g: Any, q: Any, k: Any, **kwargs: Any) -> np.ndarray:
    """What ``attention_weights`` must return: ``(nnz, H)`` float64 in CSR order."""
    return from_dense(g, dense_weights(g, q, k, **kwargs))


def reference_forward(g: Any, q: Any, k: Any, v: Any, **kwargs: Any) -> np.ndarray:
    """What ``attention_forward`` must return as ``out``: ``(n_dst, H, Dv)`` float64."""
    a = dense_weights(g, q, k, **kwargs)
    return np.einsum("ijh,jhd->ihd", a, np.asarray(v, dtype=np.float64))
