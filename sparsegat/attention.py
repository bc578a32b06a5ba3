"""Public attention functions: validate once, pick a backend, call it."""

from __future__ import annotations

import math
import operator
from typing import Any

import numpy as np

from .arrays import namespace
from .backends import array_kind_of, get_backend, select_backend
from .dropout import drop_threshold, mix_seed
from .graph import CSRGraph
from .spec import SCALAR_SCORES, SCORES, TAU_SCORES, AttentionContext, AttentionSpec, Gradients

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _real(name: str, value: Any) -> float:
    """A finite real number from a Python/NumPy scalar or a size-1 array."""
    if isinstance(value, (bool, np.bool_, str, bytes)):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    if hasattr(value, "shape") and getattr(value, "size", 0) == 1:
        value = value.reshape(()).item() if hasattr(value, "reshape") else value
    try:
        out = float(operator.index(value)) if isinstance(value, (int, np.integer)) else float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number, got {value!r}") from None
    if not math.isfinite(out):
        raise ValueError(f"{name} must be finite, got {out}")
    return out


def _make_spec(score: Any, tau: Any, negative_slope: Any, dropout: Any, seed: Any) -> AttentionSpec:
    if not isinstance(score, str) or score not in SCORES:
        raise ValueError(f"score must be one of {', '.join(SCORES)}; got {score!r}")
    tau = _real("tau", tau)
    if score not in TAU_SCORES and tau != 1.0:
        raise ValueError(f"tau applies only to the scores {', '.join(TAU_SCORES)}; got tau={tau} "
                         f"with score={score!r}")
    negative_slope = _real("negative_slope", negative_slope)
    dropout = _real("dropout", dropout)
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
    if seed is not None:
        if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"seed must be None or an integer, got {seed!r}")
        if not 0 <= int(seed) < 2**64:
            raise ValueError(f"seed must lie in [0, 2**64), got {int(seed)}")
        seed = int(seed)
    if dropout == 0.0:
        return AttentionSpec(score, tau, negative_slope, 0.0, 0, 0, seed)
    if seed is None:
        # No seed: draw one, and keep it in the context so backward drops the same edges.
        seed = int(np.random.default_rng().integers(0, 2**63))
    return AttentionSpec(score, tau, negative_slope, dropout, mix_seed(seed), drop_threshold(dropout), seed)


def _check_float(name: str, a: Any, ndim: int) -> None:
    if np.dtype(a.dtype) not in FLOAT_DTYPES:
        raise TypeError(f"{name} must have dtype float32 or float64, got {a.dtype}")
    if a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(a.shape)}")


def _check_inputs(g: Any, q: Any, k: Any, v: Any | None, att: Any, edge_bias: Any,
                  score: str) -> tuple[str, np.dtype]:
    """Validate graph/array shapes and dtypes; return (array kind, dtype)."""
    if not isinstance(g, CSRGraph):
        raise TypeError(f"g must be a CSRGraph, got {type(g).__name__}")
    kind = array_kind_of([("q", q), ("k", k), ("v", v), ("att", att), ("edge_bias", edge_bias)])
    if g.device != kind:
        raise TypeError(f"g is on {g.device!r} but the arrays are {kind} arrays; use g.to({kind!r})")
    scalar = score in SCALAR_SCORES
    _check_float("q", q, 2 if scalar else 3)
    _check_float("k", k, 2 if scalar else 3)
    n_dst, n_src = g.shape
    if q.shape[0] != n_dst:
        raise ValueError(f"q must have n_dst={n_dst} rows, got shape {tuple(q.shape)}")
    if k.shape[0] != n_src:
        raise ValueError(f"k must have n_src={n_src} rows, got shape {tuple(k.shape)}")
    if q.shape[1:] != k.shape[1:]:
        raise ValueError(f"q and k must agree in heads and features, got {tuple(q.shape)} and {tuple(k.shape)}")
    heads = q.shape[1]
    if heads < 1 or (not scalar and q.shape[2] < 1):
        raise ValueError(f"q must have at least one head and one feature, got shape {tuple(q.shape)}")
    dtype = np.dtype(q.dtype)
    named = [("k", k)]
    if v is not None:
        _check_float("v", v, 3)
        if v.shape[0] != n_src or v.shape[1] != heads or v.shape[2] < 1:
            raise ValueError(f"v must have shape (n_src={n_src}, heads={heads}, Dv>=1), got {tuple(v.shape)}")
        named.append(("v", v))
    if score == "gatv2":
        if att is None:
            raise ValueError("score='gatv2' needs att of shape (heads, D)")
        _check_float("att", att, 2)
        if tuple(att.shape) != tuple(q.shape[1:]):
            raise ValueError(f"att must have shape (heads, D)={tuple(q.shape[1:])}, got {tuple(att.shape)}")
        named.append(("att", att))
    elif att is not None:
        raise ValueError(f"att applies only to score='gatv2', got att with score={score!r}")
    if edge_bias is not None:
        _check_float("edge_bias", edge_bias, 2)
        if tuple(edge_bias.shape) != (g.nnz, heads):
            raise ValueError(f"edge_bias must have shape (nnz, heads)=({g.nnz}, {heads}), "
                             f"got {tuple(edge_bias.shape)}")
        named.append(("edge_bias", edge_bias))
    for name, a in named:
        if np.dtype(a.dtype) != dtype:
            raise TypeError(f"mixed dtypes: q is {dtype} but {name} is {a.dtype}")
    return kind, dtype


def _contiguous(kind: str, *arrays: Any) -> list[Any]:
    xp = namespace(kind)
    return [None if a is None else xp.ascontiguousarray(a) for a in arrays]


def attention_forward(g: CSRGraph, q: Any, k: Any, v: Any, score: str = "dot", att: Any = None,
                      tau: float = 1.0, negative_slope: float = 0.2, edge_bias: Any = None,
                      dropout: float = 0.0, seed: int | None = None,
                      backend: str | None = None) -> tuple[Any, AttentionContext]:
    """Sparse graph attention: per-edge scores, a softmax over each row, aggregation of values.

    Parameters
    ----------
    g : CSRGraph
        Graph of shape ``(n_dst, n_src)``; row ``i`` attends to its columns.
    q : array, shape (n_dst, H, D), or (n_dst, H) for ``score="additive"``
        Queries (destination side).
    k : array, shape (n_src, H, D), or (n_src, H) for ``score="additive"``
        Keys (source side).
    v : array, shape (n_src, H, Dv)
        Values.
    score : {"dot", "scaled_dot", "cosine", "euclidean", "additive", "gatv2"}
        Score function, see ``docs/math.md``.
    att : array, shape (H, D), optional
        Attention vector of ``gatv2`` (required there, refused elsewhere).
    tau : float
        Temperature of ``cosine`` and ``euclidean``.
    negative_slope : float
        LeakyReLU slope of ``additive`` and ``gatv2``.
    edge_bias : array, shape (nnz, H), optional
        Added to every score, in CSR order.
    dropout : float
        Attention dropout probability in [0, 1).
    seed : int, optional
        Dropout seed; the keep/drop decision is a hash of ``(seed, edge, head)``.
        Drawn at random when dropout is on and no seed is given.
    backend : {"numpy", "numba", "cupy"}, optional
        Overrides dispatch by array type (and ``$SPARSEGAT_BACKEND``).

    Returns
    -------
    out : array, shape (n_dst, H, Dv)
        Aggregated values; zero for rows without edges.
    ctx : AttentionContext
        Everything :func:`attention_backward` needs.
    """
    spec = _make_spec(score, tau, negative_slope, dropout, seed)
    kind, _ = _check_inputs(g, q, k, v, att, edge_bias, spec.score)
    name = select_backend(kind, backend)
    q, k, v, att, edge_bias = _contiguous(kind, q, k, v, att, edge_bias)
    out, saved = get_backend(name).forward(g, q, k, v, att, edge_bias, spec)
    return out, AttentionContext(g, q, k, v, att, edge_bias, spec, name, out, saved)


def attention_backward(ctx: AttentionContext, dout: Any) -> Gradients:
    """Gradients of a loss with respect to every input of :func:`attention_forward`.

    Parameters
    ----------
    ctx : AttentionContext
        The context returned by the forward pass.
    dout : array, shape (n_dst, H, Dv)
        Gradient of the loss with respect to ``out``.

    Returns
    -------
    Gradients
        ``q``, ``k``, ``v`` always; ``att`` for ``gatv2``; ``tau`` (a 0-d array)
        for ``cosine`` and ``euclidean``; ``edge_bias`` when one was given.
        Deterministic: bitwise identical from run to run on every backend.
    """
    if not isinstance(ctx, AttentionContext):
        raise TypeError(f"ctx must be the AttentionContext returned by attention_forward, got {type(ctx).__name__}")
    kind = array_kind_of([("dout", dout)])
    if kind != ctx.graph.device:
        raise TypeError(f"dout is a {kind} array but the forward pass ran on {ctx.graph.device} arrays")
    if tuple(dout.shape) != tuple(ctx.out.shape):
        raise ValueError(f"dout must have the shape of out, {tuple(ctx.out.shape)}, got {tuple(dout.shape)}")
    if np.dtype(dout.dtype) != np.dtype(ctx.out.dtype):
        raise TypeError(f"dout must have dtype {ctx.out.dtype} like out, got {dout.dtype}")
    (dout,) = _contiguous(kind, dout)
    grads = get_backend(ctx.backend).backward(ctx.graph, ctx.q, ctx.k, ctx.v, ctx.att, ctx.edge_bias,
                                              ctx.spec, ctx.out, ctx.saved, dout)
    return Gradients(**grads)


def attention_weights(g: CSRGraph, q: Any, k: Any, score: str = "dot", att: Any = None,
                      tau: float = 1.0, negative_slope: float = 0.2, edge_bias: Any = None,
                      dropout: float = 0.0, seed: int | None = None,
                      backend: str | None = None) -> Any:
    """Attention weights ``a_ijh`` of every edge, shape (nnz, H), in CSR order.

    Arguments as in :func:`attention_forward`. With dropout, the weights are
    those the forward pass uses: dropped edges are 0 and kept ones scaled by
    ``1 / (1 - dropout)``. Non-empty rows sum to 1 without dropout.
    """
    spec = _make_spec(score, tau, negative_slope, dropout, seed)
    kind, _ = _check_inputs(g, q, k, None, att, edge_bias, spec.score)
    name = select_backend(kind, backend)
    q, k, att, edge_bias = _contiguous(kind, q, k, att, edge_bias)
    return get_backend(name).weights(g, q, k, att, edge_bias, spec)
