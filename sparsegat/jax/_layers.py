"""What the functional GAT layers share: graph preparation, PyG's initialisers, dropout seeds."""

from __future__ import annotations

import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..graph import CSRGraph
from ._graph import as_graph


def prepare_graph(g: CSRGraph, add_self_loops: bool = True) -> CSRGraph:
    """The graph a GAT layer attends over: ``g`` itself, or with PyG's self-loops.

    With ``add_self_loops=True`` this is :func:`sparsegat.nn.graph_with_self_loops`
    (PyG's ``GATConv`` rule: every node gets exactly one loop), built once and cached on
    ``g``, so calling it at every trace costs a lookup. The layers call it themselves;
    call it to build the looped graph ahead of time, or to size an ``edge_bias``.
    """
    g = as_graph(g)
    if not add_self_loops:
        return g
    from ..nn import graph_with_self_loops

    return graph_with_self_loops(g)


def check_dims(**dims: Any) -> None:
    """Positive integer sizes, ``TypeError``/``ValueError`` naming the argument."""
    for name, n in dims.items():
        if isinstance(n, bool) or not isinstance(n, numbers.Integral):
            raise TypeError(f"{name} must be an integer, got {n!r}")
        if n < 1:
            raise ValueError(f"{name} must be positive, got {n}")


def float_dtype(dtype: Any) -> np.dtype:
    """float32 or float64 (the latter only with ``jax_enable_x64``)."""
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    if dtype == np.float64 and not jax.config.jax_enable_x64:
        raise ValueError("dtype float64 needs 64-bit JAX: jax.config.update('jax_enable_x64', True)")
    return dtype


def glorot(key: jax.Array, shape: tuple[int, ...], dtype: np.dtype) -> jax.Array:
    """PyG's ``glorot``: uniform in ``±sqrt(6 / (shape[-2] + shape[-1]))``."""
    bound = float(np.sqrt(6.0 / (shape[-2] + shape[-1])))
    return jax.random.uniform(key, shape, dtype, -bound, bound)


def fan_in_uniform(key: jax.Array, shape: tuple[int, ...], fan_in: int, dtype: np.dtype) -> jax.Array:
    """PyG's ``Linear`` bias: uniform in ``±1 / sqrt(fan_in)``."""
    bound = float(1.0 / np.sqrt(fan_in))
    return jax.random.uniform(key, shape, dtype, -bound, bound)


def attention_seed(dropout: Any, training: bool, key: Any, seed: Any) -> tuple[float, Any]:
    """``(dropout, seed)`` for the operator: no dropout unless training; then a key or a seed is needed."""
    if not training or not dropout:
        return 0.0, None
    if key is not None and seed is not None:
        raise ValueError("give key= or seed=, not both")
    if key is None and seed is None:
        raise ValueError(f"training with dropout={dropout} needs key= (a JAX PRNG key, e.g. "
                         f"jax.random.fold_in(key, step)) or seed= (an integer, which may be traced)")
    return dropout, key if key is not None else seed


def check_input(x: Any, g: CSRGraph, dtype: Any) -> jax.Array:
    """``x`` as a 2-D array with one row per node of the square graph ``g``, of the parameters' dtype."""
    if not isinstance(x, jax.Array):
        x = jnp.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"x must be 2-D (nodes, features), got shape {tuple(x.shape)}")
    if g.n_dst != g.n_src or x.shape[0] != g.n_src:
        raise ValueError(f"x must have one row per node of a square graph: x has {x.shape[0]} rows, "
                         f"the graph is {g.shape}")
    if np.dtype(x.dtype) != np.dtype(dtype):
        raise TypeError(f"x has dtype {x.dtype} but the parameters are {np.dtype(dtype)}; cast one of them")
    return x


def finish_output(out: Any, x: Any, params: dict[str, Any], concat: bool) -> Any:
    """The attention output ``(n, H, C)`` as a layer's result: heads concatenated (or
    averaged), plus the residual ``x @ W_res`` and the ``bias`` where the layer has them."""
    n, heads, out_dim = out.shape
    out = out.reshape(n, heads * out_dim) if concat else out.mean(axis=1)
    if "W_res" in params:
        out = out + x @ params["W_res"]
    if "bias" in params:
        out = out + params["bias"]
    return out

