"""PyG's ``GATConv`` as a functional JAX layer: :func:`init` a parameter dict, :func:`apply` it.

``h = x @ W`` viewed as ``(n, heads, out_dim)``; for every edge ``j -> i`` and head ``k``
the score ``LeakyReLU(att_dst_k . h_ik + att_src_k . h_jk)``; a softmax over the incoming
edges of ``i``; attention dropout; ``out_i = sum_j a_ij h_j``; heads concatenated or
averaged; ``+ x @ W_res`` with a residual; ``+ bias``. The sparse part is one call of
:func:`sparsegat.jax.attention` with ``score="additive"``, ``q = att_dst . h_i``,
``k = att_src . h_j``, ``v = h``.

Parameters (a dict of arrays, a pytree), and PyG's names for them (:func:`to_pyg`,
:func:`from_pyg`):

=========  ===============================  ==================
name       shape                            PyG
=========  ===============================  ==================
W          (in_dim, heads * out_dim)        ``lin.weight.T``
att_src    (heads, out_dim)                 ``att_src[0]``
att_dst    (heads, out_dim)                 ``att_dst[0]``
bias       (heads * out_dim,) or (out_dim,)  ``bias``
W_res      (in_dim, heads * out_dim or       ``res.weight.T``
           out_dim)
=========  ===============================  ==================
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._functional import attention
from ._graph import as_graph
from ._layers import attention_seed, check_dims, check_input, finish_output, float_dtype, glorot, prepare_graph

__all__ = ["init", "apply", "to_pyg", "from_pyg"]


def init(key: jax.Array, in_dim: int, out_dim: int, heads: int = 1, *, concat: bool = True, bias: bool = True,
         residual: bool = False, dtype: Any = jnp.float32) -> dict[str, jax.Array]:
    """Parameters of a ``GATConv(in_dim, out_dim, heads)`` with PyG's initialisation.

    Glorot-uniform ``W``, ``att_src``, ``att_dst`` and ``W_res``, zero ``bias``.

    Parameters
    ----------
    key : jax.Array
        A JAX PRNG key.
    in_dim, out_dim, heads : int
        Input features, output features per head, heads.
    concat : bool
        Heads concatenated (``bias`` and ``W_res`` then have ``heads * out_dim``
        columns) or averaged (``out_dim``); pass the same value to :func:`apply`.
    bias, residual : bool
        Whether ``bias`` and ``W_res`` exist.
    dtype : float32 or float64
        float64 needs ``jax_enable_x64``.

    Returns
    -------
    dict
        ``W``, ``att_src``, ``att_dst`` and, where asked, ``bias`` and ``W_res``.
    """
    check_dims(in_dim=in_dim, out_dim=out_dim, heads=heads)
    dtype = float_dtype(dtype)
    total = heads * out_dim if concat else out_dim
    k_w, k_src, k_dst, k_res = jax.random.split(key, 4)
    params = {"W": glorot(k_w, (in_dim, heads * out_dim), dtype),
              "att_src": glorot(k_src, (heads, out_dim), dtype),
              "att_dst": glorot(k_dst, (heads, out_dim), dtype)}
    if bias:
        params["bias"] = jnp.zeros((total,), dtype)
    if residual:
        params["W_res"] = glorot(k_res, (in_dim, total), dtype)
    return params


def apply(params: dict[str, jax.Array], x: Any, g: Any, *, concat: bool = True, negative_slope: float = 0.2,
          dropout: float = 0.0, add_self_loops: bool = True, training: bool = False, key: Any = None,
          seed: Any = None, backend: str | None = None) -> jax.Array:
    """The layer's output for node features ``x`` on the square graph ``g``.

    Parameters
    ----------
    params : dict
        As returned by :func:`init` (or :func:`from_pyg`).
    x : jax.Array, shape (n, in_dim)
        Node features, of the parameters' dtype.
    g : CSRGraph
        The graph, static (closed over); ``n`` nodes.
    concat : bool
        As given to :func:`init`.
    negative_slope : float
        LeakyReLU slope of the scores.
    dropout : float
        Attention dropout probability, applied when ``training``.
    add_self_loops : bool
        Attend over :func:`sparsegat.jax.prepare_graph` ``(g)`` (PyG's rule: one loop per
        node; built once and cached on ``g``) rather than ``g`` as given.
    training : bool
        Apply attention dropout.
    key, seed : optional
        The dropout seed when training with dropout: a JAX PRNG key (split or fold it
        per step) or an integer (which may be traced); see :func:`sparsegat.jax.attention`.
    backend : str, optional
        As in :func:`sparsegat.jax.attention`.

    Returns
    -------
    jax.Array
        ``(n, heads * out_dim)`` with ``concat``, else ``(n, out_dim)``.
    """
    W, att_src, att_dst = params["W"], params["att_src"], params["att_dst"]
    heads, out_dim = att_src.shape
    graph = prepare_graph(as_graph(g), add_self_loops)
    x = check_input(x, graph, W.dtype)
    h = (x @ W).reshape(x.shape[0], heads, out_dim)
    a_src = jnp.einsum("nhc,hc->nh", h, att_src)
    a_dst = jnp.einsum("nhc,hc->nh", h, att_dst)
    p, s = attention_seed(dropout, training, key, seed)
    out = attention(graph, a_dst, a_src, h, score="additive", negative_slope=negative_slope, dropout=p, seed=s,
                    backend=backend)
    return finish_output(out, x, params, concat)


def to_pyg(params: dict[str, Any]) -> dict[str, np.ndarray]:
    """The parameters under PyG's ``GATConv`` ``state_dict`` names, as NumPy arrays."""
    out = {"lin.weight": np.asarray(params["W"]).T, "att_src": np.asarray(params["att_src"])[None],
           "att_dst": np.asarray(params["att_dst"])[None]}
    if "bias" in params:
        out["bias"] = np.asarray(params["bias"])
    if "W_res" in params:
        out["res.weight"] = np.asarray(params["W_res"]).T
    return out


def from_pyg(state_dict: dict[str, Any], dtype: Any = None) -> dict[str, jax.Array]:
    """Parameters from a PyG ``GATConv`` ``state_dict`` (tensors or arrays), in ``dtype``
    (default: the weights' own)."""
    def arr(name: str) -> np.ndarray:
        t = state_dict[name]
        a = t.detach().cpu().numpy() if hasattr(t, "detach") else np.asarray(t)
        return a.astype(dtype) if dtype is not None else a

    params = {"W": arr("lin.weight").T, "att_src": arr("att_src")[0], "att_dst": arr("att_dst")[0]}
    if "bias" in state_dict:
        params["bias"] = arr("bias")
    if "res.weight" in state_dict:
        params["W_res"] = arr("res.weight").T
    return {k: jnp.asarray(v) for k, v in params.items()}
