"""sparsegat's attention operator and GAT layer written in pure JAX, for comparison.

What one writes in JAX without sparsegat: per-edge gathers ``q[rows]``, ``k[cols]``,
``v[cols]``, per-edge scores, a numerically stable softmax over each destination with
:func:`jax.ops.segment_max` / :func:`jax.ops.segment_sum` over the CSR rows, and
``segment_sum`` of the weighted values; the backward is JAX's autodiff. Per-edge
arrays of ``nnz*H*D`` values are materialised (sparsegat's kernels never do).

Used by ``sparsegat bench --backends jax-pure`` (:mod:`sparsegat.bench.jax_runner`)
and by ``bench/jax_attention.py``. Only JAX is needed (not
:mod:`sparsegat.jax`). Scalars are Python floats, so float32 inputs stay float32
when ``jax_enable_x64`` is on.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..graph import CSRGraph
from ..spec import COSINE_EPS, SCORES

__all__ = ["edge_arrays", "pure_attention", "gat_params", "pure_gat_conv"]


def edge_arrays(g: CSRGraph, device: Any = None) -> tuple[jax.Array, jax.Array]:
    """``(rows, cols)`` of ``g`` as int32 JAX arrays (destination and source of every edge, CSR order)."""
    rows = np.asarray(g.row_ids()).astype(np.int32)
    cols = np.asarray(g.indices).astype(np.int32)
    return jax.device_put(rows, device), jax.device_put(cols, device)


def pure_attention(q: Any, k: Any, v: Any, rows: Any, cols: Any, n_dst: int, score: str, att: Any = None,
                   tau: float = 1.0, negative_slope: float = 0.2) -> jax.Array:
    """The operator of :func:`sparsegat.attention_forward` in JAX primitives: ``(n_dst, H, Dv)``.

    ``rows``/``cols`` as :func:`edge_arrays` gives them (sorted ``rows``, as CSR order
    has them); ``q``, ``k`` are ``(n, H, D)`` (``(n, H)`` for ``additive``), ``v`` is
    ``(n_src, H, Dv)``, ``att`` the ``(H, D)`` vector of ``gatv2``. Destinations
    without edges get zeros.
    """
    if score in ("additive", "gatv2"):
        z = q[rows] + k[cols]
        z = jnp.where(z > 0, z, negative_slope * z)
        s = z if score == "additive" else (att * z).sum(-1)
    elif score == "euclidean":
        s = -tau * ((q[rows] - k[cols]) ** 2).sum(-1)
    elif score in ("dot", "scaled_dot", "cosine"):
        if score == "cosine":
            q = q / jnp.maximum(jnp.linalg.norm(q, axis=-1, keepdims=True), COSINE_EPS)
            k = k / jnp.maximum(jnp.linalg.norm(k, axis=-1, keepdims=True), COSINE_EPS)
        s = (q[rows] * k[cols]).sum(-1)
        if score == "scaled_dot":
            s = s / math.sqrt(q.shape[-1])
        elif score == "cosine":
            s = tau * s
    else:
        raise ValueError(f"unknown score {score!r}; choose from {', '.join(SCORES)}")
    m = jax.lax.stop_gradient(jax.ops.segment_max(s, rows, n_dst, indices_are_sorted=True))
    e = jnp.exp(s - jnp.where(jnp.isfinite(m), m, 0)[rows])
    a = e / jax.ops.segment_sum(e, rows, n_dst, indices_are_sorted=True)[rows]
    return jax.ops.segment_sum(a[..., None] * v[cols], rows, n_dst, indices_are_sorted=True)


def gat_params(in_dim: int, out_dim: int, heads: int, dtype: Any = np.float32, seed: int = 0
               ) -> dict[str, np.ndarray]:
    """Parameters of a ``GATConv(in_dim, out_dim, heads)`` in sparsegat's layout, NumPy arrays.

    PyG's initialisation drawn from ``numpy.random.default_rng(seed)``: Glorot-uniform
    ``W (in_dim, heads*out_dim)``, ``att_src``, ``att_dst (heads, out_dim)``; zero
    ``bias (heads*out_dim,)``. The layout of :mod:`sparsegat.jax.gat_conv`.
    """
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)

    def glorot(shape: tuple[int, int]) -> np.ndarray:
        bound = math.sqrt(6.0 / (shape[0] + shape[1]))
        return rng.uniform(-bound, bound, shape).astype(dtype)

    return {"W": glorot((in_dim, heads * out_dim)), "att_src": glorot((heads, out_dim)),
            "att_dst": glorot((heads, out_dim)), "bias": np.zeros(heads * out_dim, dtype)}


def pure_gat_conv(params: dict[str, Any], x: Any, rows: Any, cols: Any, n_dst: int,
                  negative_slope: float = 0.2) -> jax.Array:
    """PyG's ``GATConv`` (heads concatenated, no dropout) with :func:`pure_attention`.

    ``rows``/``cols`` are the edges attended over (self-loops included: build them
    from :func:`sparsegat.nn.graph_with_self_loops`); ``x`` is ``(n, in_dim)`` with
    ``n_dst`` destinations first. The math of :func:`sparsegat.jax.gat_conv.apply`.
    """
    W, att_src, att_dst = params["W"], params["att_src"], params["att_dst"]
    heads, out_dim = att_src.shape
    h = (x @ W).reshape(x.shape[0], heads, out_dim)
    a_src = jnp.einsum("nhc,hc->nh", h, att_src)
    a_dst = jnp.einsum("nhc,hc->nh", h[:n_dst], att_dst)
    out = pure_attention(a_dst, a_src, h, rows, cols, n_dst, "additive", negative_slope=negative_slope)
    out = out.reshape(n_dst, heads * out_dim)
    if "bias" in params:
        out = out + params["bias"]
    return out
