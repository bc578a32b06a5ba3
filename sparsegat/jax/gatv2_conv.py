"""PyG's ``GATv2Conv`` as a functional JAX layer: :func:`init` a parameter dict, :func:`apply` it.

``x_l = x @ W_l + b_l`` (sources) and ``x_r = x @ W_r + b_r`` (destinations), viewed as
``(n, heads, out_dim)``; for every edge ``j -> i`` the score
``sum_c att_kc * LeakyReLU(x_r[i,k,c] + x_l[j,k,c])``; a softmax over the incoming
edges of ``i``; attention dropout; ``out_i = sum_j a_ij x_l[j]``; heads concatenated or
averaged; ``+ x @ W_res``; ``+ bias``. The sparse part is one call of
:func:`sparsegat.jax.attention` with ``score="gatv2"``, ``q = x_r``, ``k = v = x_l``.

Parameters (a dict of arrays, a pytree), and PyG's names for them (:func:`to_pyg`,
:func:`from_pyg`); with ``share_weights=True`` there is no ``W_r``/``b_r`` (``W_l``
serves both sides, as PyG's shared ``lin_l``):

=========  ===============================  ===================
name       shape                            PyG
=========  ===============================  ===================
W_l        (in_dim, heads * out_dim)        ``lin_l.weight.T``
b_l        (heads * out_dim,)               ``lin_l.bias``
W_r        (in_dim, heads * out_dim)        ``lin_r.weight.T``
b_r        (heads * out_dim,)               ``lin_r.bias``
att        (heads, out_dim)                 ``att[0]``
bias       (heads * out_dim,) or (out_dim,)  ``bias``
W_res      (in_dim, heads * out_dim or       ``res.weight.T``
           out_dim)
=========  ===============================  ===================
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._functional import attention
from ._graph import as_graph
from ._layers import (attention_seed, check_dims, check_input, fan_in_uniform, finish_output, float_dtype, glorot,
                      prepare_graph)

__all__ = ["init", "apply", "to_pyg", "from_pyg"]


def init(key: jax.Array, in_dim: int, out_dim: int, heads: int = 1, *, concat: bool = True, bias: bool = True,
         residual: bool = False, share_weights: bool = False, dtype: Any = jnp.float32) -> dict[str, jax.Array]:
    """Parameters of a ``GATv2Conv(in_dim, out_dim, heads)`` with PyG's initialisation.

    Glorot-uniform weights and ``att``; ``b_l``, ``b_r`` uniform in ``±1/sqrt(in_dim)``;
    zero ``bias``. With ``bias=False`` none of the three biases exists (as in PyG).
    Other arguments as in :func:`sparsegat.jax.gat_conv.init`.
    """
    check_dims(in_dim=in_dim, out_dim=out_dim, heads=heads)
    dtype = float_dtype(dtype)
    total = heads * out_dim if concat else out_dim
    keys = jax.random.split(key, 6)
    params = {"W_l": glorot(keys[0], (in_dim, heads * out_dim), dtype)}
    if bias:
        params["b_l"] = fan_in_uniform(keys[1], (heads * out_dim,), in_dim, dtype)
    if not share_weights:
        params["W_r"] = glorot(keys[2], (in_dim, heads * out_dim), dtype)
        if bias:
            params["b_r"] = fan_in_uniform(keys[3], (heads * out_dim,), in_dim, dtype)
    params["att"] = glorot(keys[4], (heads, out_dim), dtype)
    if bias:
        params["bias"] = jnp.zeros((total,), dtype)
    if residual:
        params["W_res"] = glorot(keys[5], (in_dim, total), dtype)
    return params


def apply(params: dict[str, jax.Array], x: Any, g: Any, *, concat: bool = True, negative_slope: float = 0.2,
          dropout: float = 0.0, add_self_loops: bool = True, training: bool = False, key: Any = None,
          seed: Any = None, backend: str | None = None) -> jax.Array:
    """The layer's output for node features ``x`` on the square graph ``g``.

    Arguments as in :func:`sparsegat.jax.gat_conv.apply`; ``params`` as returned by
    :func:`init` (without ``W_r`` for shared weights).

    Returns
    -------
    jax.Array
        ``(n, heads * out_dim)`` with ``concat``, else ``(n, out_dim)``.
    """
    att = params["att"]
    heads, out_dim = att.shape
    graph = prepare_graph(as_graph(g), add_self_loops)
    x = check_input(x, graph, att.dtype)
    n = x.shape[0]
    x_l = x @ params["W_l"]
    if "b_l" in params:
        x_l = x_l + params["b_l"]
    if "W_r" in params:
        x_r = x @ params["W_r"]
        if "b_r" in params:
            x_r = x_r + params["b_r"]
    else:
        x_r = x_l
    x_l = x_l.reshape(n, heads, out_dim)
    x_r = x_r.reshape(n, heads, out_dim)
    p, s = attention_seed(dropout, training, key, seed)
    out = attention(graph, x_r, x_l, x_l, score="gatv2", att=att, negative_slope=negative_slope, dropout=p,
                    seed=s, backend=backend)
    return finish_output(out, x, params, concat)


def to_pyg(params: dict[str, Any]) -> dict[str, np.ndarray]:
    """The parameters under PyG's ``GATv2Conv`` ``state_dict`` names, as NumPy arrays
    (with shared weights, ``lin_r`` repeats ``lin_l``, as PyG's ``state_dict`` does)."""
    shared = "W_r" not in params
    out = {"lin_l.weight": np.asarray(params["W_l"]).T,
           "lin_r.weight": np.asarray(params["W_l" if shared else "W_r"]).T,
           "att": np.asarray(params["att"])[None]}
    if "b_l" in params:
        out["lin_l.bias"] = np.asarray(params["b_l"])
        out["lin_r.bias"] = np.asarray(params["b_l" if shared else "b_r"])
    if "bias" in params:
        out["bias"] = np.asarray(params["bias"])
    if "W_res" in params:
        out["res.weight"] = np.asarray(params["W_res"]).T
    return out


def from_pyg(state_dict: dict[str, Any], dtype: Any = None, *, share_weights: bool = False) -> dict[str, jax.Array]:
    """Parameters from a PyG ``GATv2Conv`` ``state_dict`` (tensors or arrays), in ``dtype``
    (default: the weights' own); ``share_weights`` as the PyG layer was built."""
    def arr(name: str) -> np.ndarray:
        t = state_dict[name]
        a = t.detach().cpu().numpy() if hasattr(t, "detach") else np.asarray(t)
        return a.astype(dtype) if dtype is not None else a

    params = {"W_l": arr("lin_l.weight").T}
    if "lin_l.bias" in state_dict:
        params["b_l"] = arr("lin_l.bias")
    if not share_weights:
        params["W_r"] = arr("lin_r.weight").T
        if "lin_r.bias" in state_dict:
            params["b_r"] = arr("lin_r.bias")
    params["att"] = arr("att")[0]
    if "bias" in state_dict:
        params["bias"] = arr("bias")
    if "res.weight" in state_dict:
        params["W_res"] = arr("res.weight").T
    return {k: jnp.asarray(v) for k, v in params.items()}
