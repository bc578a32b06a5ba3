"""Graph attention layers: GATConv, GATv2Conv (PyG's functions) and GraphAttention.

All three project node features with dense weights, call the sparse attention
operator :func:`sparsegat.attention_forward` once per forward pass and
:func:`sparsegat.attention_backward` once per backward pass, and do the rest
(projections, attention-vector products, head concat/mean, residual, bias)
with a handful of dense array operations of the input's array library.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from ..arrays import namespace
from ..attention import attention_backward, attention_forward
from ..backends import BACKEND_NAMES
from ..graph import CSRGraph
from . import init
from .module import (Module, as_input, check_grad, check_positive_int, check_probability, input_kind,
                     sparse_dense_matmul, sparse_t_matmul)

#: Cache key of the self-loop version of a graph (kept on the graph itself, see CSRGraph.cached).
SELF_LOOPS_KEY = "sparsegat.nn:with_self_loops"

#: The score functions GraphAttention takes (additive and gatv2 are GATConv and GATv2Conv).
GRAPH_ATTENTION_SCORES = ("cosine", "dot", "scaled_dot", "euclidean")


def graph_with_self_loops(g: CSRGraph) -> CSRGraph:
    """``g.with_self_loops()`` (for a non-square graph the loops ``i < min(n_dst, n_src)``,
    as PyG does for a bipartite pair), built once and cached on ``g``."""
    return g.cached(SELF_LOOPS_KEY, g.with_self_loops)


def _block_diag(xp: Any, att: Any) -> Any:
    """``(H, C) -> (H*C, H)`` with ``att[h]`` in block ``h``: ``h_flat @ A`` gives ``att_h . h_ih`` per head."""
    H, C = att.shape
    A = xp.zeros((H, C, H), dtype=att.dtype)
    idx = xp.arange(H)
    A[idx, :, idx] = att
    return A.reshape(H * C, H)


def _block_diag_part(xp: Any, M: Any, H: int, C: int, col0: int) -> Any:
    """The ``(H, C)`` diagonal blocks of columns ``col0 .. col0+H`` of an ``(H*C, ...)`` matrix."""
    idx = xp.arange(H)
    return xp.ascontiguousarray(M.reshape(H, C, -1)[idx, :, col0 + idx])


class _Input(NamedTuple):
    """A layer input checked against the graph."""

    x: Any          #: the input in the layer's dtype (sparse inputs as CSR)
    kind: str       #: "numpy" or "cupy"
    sparse: bool    #: a scipy/cupyx sparse matrix (no gradient flows into it)
    x_dst: Any      #: its first n_dst rows: the destination nodes


class _GATCache(NamedTuple):
    """What GATConv.backward needs from its forward."""

    inp: _Input
    h: Any          #: x @ W, (n_src, heads*out_dim)
    ctx: Any        #: the operator's context
    A: Any          #: [A_src | A_dst], the block-diagonal attention vectors (heads*out_dim, 2*heads)
    W: Any


class _GATv2Cache(NamedTuple):
    """What GATv2Conv.backward needs from its forward."""

    inp: _Input
    ctx: Any
    W_src: Any
    W_dst: Any      #: None with share_weights=True


class _StreamsCache(NamedTuple):
    """What GraphAttention.backward needs from its forward."""

    q: _Input       #: the input of each stream (the same one three times for a single array)
    k: _Input
    v: _Input
    single: bool    #: one array fed all three streams
    ctx: Any
    W_q: Any
    W_k: Any
    W_v: Any


class _AttentionLayer(Module):
    """Shared plumbing: graph preparation, attention-dropout seeds, backend choice."""

    def __init__(self, dtype: Any, seed: Any, backend: str | None, add_self_loops: bool,
                 dropout: float) -> None:
        super().__init__(dtype, seed)
        if backend is not None and backend not in BACKEND_NAMES:
            raise ValueError(f"backend must be None or one of {', '.join(BACKEND_NAMES)}; got {backend!r}")
        self.backend = backend
        self.add_self_loops = bool(add_self_loops)
        self.dropout = check_probability("dropout", dropout)
        #: The operator's context of the latest forward (``ctx.graph``, ``ctx.q``, ``ctx.k``,
        #: ``ctx.att``, ``ctx.spec``): enough to recompute the attention weights.
        self.last_context: Any = None

    def _graph(self, g: Any) -> CSRGraph:
        if not isinstance(g, CSRGraph):
            raise TypeError(f"{type(self).__name__} needs a sparsegat.CSRGraph as g, got {type(g).__name__}")
        return graph_with_self_loops(g) if self.add_self_loops else g

    def _attention_dropout(self, training: bool) -> tuple[float, int | None]:
        """``(p, seed)`` for this forward: a fresh seed from the layer's generator in training."""
        if training and self.dropout > 0.0:
            return self.dropout, int(self._rng.integers(0, 2**63))
        return 0.0, None

    def _inputs(self, x: Any, g2: CSRGraph, in_dim: int) -> _Input:
        """``x`` checked against the graph, with its kind, sparsity and destination rows."""
        kind = input_kind(x)
        x, sparse = as_input(x, self.dtype)
        n_dst, n_src = g2.shape
        if x.shape[0] != n_src:
            raise ValueError(f"{type(self).__name__}: x has {x.shape[0]} rows but the graph has "
                             f"n_src={n_src} source nodes")
        if x.shape[1] != in_dim:
            raise ValueError(f"{type(self).__name__} expects {in_dim} input features, got x of shape "
                             f"{tuple(x.shape)}")
        if n_dst > n_src:
            raise ValueError(f"{type(self).__name__} takes the first n_dst rows of x as the destination "
                             f"nodes, so it needs n_dst <= n_src; got graph shape {g2.shape}")
        x_dst = x if n_dst == n_src else x[:n_dst]
        return _Input(x, kind, sparse, x_dst)

    def _check_dy(self, dy: Any, shape: tuple[int, ...], kind: str, name: str = "dy") -> Any:
        return check_grad(type(self).__name__, dy, shape, self.dtype, kind, name)


class _HeadsLayer(_AttentionLayer):
    """What GATConv and GATv2Conv share: heads concatenated or averaged, residual, bias."""

    def __init__(self, in_dim: int, out_dim: int, heads: int, concat: bool, negative_slope: float,
                 dropout: float, add_self_loops: bool, residual: bool, dtype: Any, seed: Any,
                 backend: str | None) -> None:
        super().__init__(dtype, seed, backend, add_self_loops, dropout)
        self.in_dim = check_positive_int("in_dim", in_dim)
        self.out_dim = check_positive_int("out_dim", out_dim)
        self.heads = check_positive_int("heads", heads)
        self.concat = bool(concat)
        self.negative_slope = float(negative_slope)
        self.residual = bool(residual)
        self.total_out = self.heads * self.out_dim if self.concat else self.out_dim

    def _output(self, out: Any, x_dst: Any, kind: str) -> Any:
        """The layer's output from the operator's ``out``: heads, then residual and bias."""
        # Never modify `out` in place: the backward pass reads it from ctx.
        n_dst = out.shape[0]
        y = out.reshape(n_dst, self.heads * self.out_dim) if self.concat else out.mean(axis=1)
        if self.residual:
            y = y + sparse_dense_matmul(x_dst, self._param("W_res", kind), self.backend)
        if "bias" in self.params:
            y = y + self._param("bias", kind)
        return y

    def _residual_backward(self, x_dst: Any, dy: Any, dx: Any) -> Any:
        """Add the ``x_dst @ W_res`` path's gradients (when ``residual``) and return ``dx``."""
        if self.residual:
            self.grads["W_res"] = sparse_t_matmul(x_dst, dy)
            if dx is not None:
                dx[:x_dst.shape[0]] += dy @ self.params["W_res"].T
        return dx

    def _operator_dout(self, dy: Any, n_dst: int) -> Any:
        """The bias gradient (into ``grads``) and the operator's ``dout`` ``(n_dst, H, C)``."""
        H, C = self.heads, self.out_dim
        if "bias" in self.params:
            self.grads["bias"] = dy.sum(axis=0)
        if self.concat:
            return dy.reshape(n_dst, H, C)
        return namespace(dy).broadcast_to((dy * (1.0 / H))[:, None, :], (n_dst, H, C))

    def extra_repr(self) -> str:
        return (f"{self.in_dim}, {self.out_dim}, heads={self.heads}, concat={self.concat}, "
                f"dropout={self.dropout}, residual={self.residual}")


class GATConv(_HeadsLayer):
    """The graph attention layer of Velickovic et al. (2018): exactly PyG's ``GATConv``.

    ``h = x @ W`` viewed as ``(n, heads, out_dim)``; per edge ``j -> i`` and head
    ``h`` the score ``LeakyReLU(att_dst_h . h_ih + att_src_h . h_jh)``, a softmax
    over the incoming edges of ``i`` (self-loops added unless
    ``add_self_loops=False``), attention dropout, ``out_i = sum_j a_ij h_j``; heads
    are concatenated (``concat=True``) or averaged; then ``+ x @ W_res`` when
    ``residual=True`` and ``+ bias``.

    Parameters
    ----------
    in_dim, out_dim : int
        Input features and features per head.
    heads : int
    concat : bool
        Concatenate heads (output ``heads * out_dim``) or average them (``out_dim``).
    negative_slope : float
        LeakyReLU slope of the scores.
    dropout : float
        Attention dropout, applied in training forwards through the operator's
        ``dropout``/``seed`` with a fresh seed drawn from the layer's generator.
    add_self_loops : bool
        Add the missing ``(i, i)`` edges (cached on the graph, built once).
    bias : bool
    residual : bool
        Add ``x_dst @ W_res``, a bias-free linear map ``(in_dim, total_out)`` that
        PyG 2.8 always creates for ``residual=True`` (also when the sizes agree).
    dtype, seed, backend
        Parameter dtype (float32 default); initialisation seed (Glorot weights
        and attention vectors, zero bias, as PyG); operator backend (``None``:
        dispatch by array type).

    ``params``: ``W (in_dim, heads*out_dim)``, ``att_src (heads, out_dim)``,
    ``att_dst (heads, out_dim)``, ``bias (heads*out_dim,)`` or ``(out_dim,)`` when
    ``concat=False``, ``W_res (in_dim, total_out)`` when ``residual=True``.
    PyG's ``lin.weight`` is ``W.T`` and its ``att_src`` is ``att_src[None]``.

    ``forward(x, g)``: ``x (n_src, in_dim)`` dense or sparse; ``g`` of shape
    ``(n_dst, n_src)``; for a non-square graph the destination nodes are the first
    ``n_dst`` rows of ``x``. Returns ``(n_dst, total_out)``.
    """

    def __init__(self, in_dim: int, out_dim: int, heads: int = 1, concat: bool = True,
                 negative_slope: float = 0.2, dropout: float = 0.0, add_self_loops: bool = True,
                 bias: bool = True, residual: bool = False, *, dtype: Any = np.float32, seed: Any = None,
                 backend: str | None = None) -> None:
        super().__init__(in_dim, out_dim, heads, concat, negative_slope, dropout, add_self_loops, residual,
                         dtype, seed, backend)
        H, C = self.heads, self.out_dim
        rng, dt = self._rng, self.dtype
        self.params["W"] = init.glorot((self.in_dim, H * C), rng, dt)
        self.params["att_src"] = init.glorot((H, C), rng, dt)
        self.params["att_dst"] = init.glorot((H, C), rng, dt)
        if self.residual:
            self.params["W_res"] = init.glorot((self.in_dim, self.total_out), rng, dt)
        if bias:
            self.params["bias"] = init.zeros((self.total_out,), dt)

    def forward(self, x: Any, g: Any = None, *, training: bool = False) -> Any:
        g2 = self._graph(g)
        inp = self._inputs(x, g2, self.in_dim)
        x, kind = inp.x, inp.kind
        xp = namespace(kind)
        n_dst, n_src = g2.shape
        H, C = self.heads, self.out_dim
        W = self._param("W", kind)
        att_src, att_dst = self._param("att_src", kind), self._param("att_dst", kind)
        h = sparse_dense_matmul(x, W, self.backend)
        hv = h.reshape(n_src, H, C)
        # Both per-node attention terms with one small dense product: h @ [A_src | A_dst],
        # the A block-diagonal (H*C, H) forms of att_src and att_dst.
        A = xp.concatenate([_block_diag(xp, att_src), _block_diag(xp, att_dst)], axis=1)
        if n_dst == n_src:
            a = h @ A
            a_src, a_dst = a[:, :H], a[:, H:]
        else:
            a_src, a_dst = h @ A[:, :H], h[:n_dst] @ A[:, H:]
        p, seed = self._attention_dropout(training)
        out, ctx = attention_forward(g2, a_dst, a_src, hv, score="additive",
                                     negative_slope=self.negative_slope, dropout=p, seed=seed,
                                     backend=self.backend)
        self.last_context = ctx
        self._save_for_backward(_GATCache(inp, h, ctx, A, W), bool(training))
        return self._output(out, inp.x_dst, kind)

    def _backward(self, saved: Any, dy: Any) -> Any:
        inp, h, ctx, A, W = saved
        n_dst, n_src = ctx.graph.shape
        dy = self._check_dy(dy, (n_dst, self.total_out), inp.kind)
        xp = namespace(dy)
        H, C = self.heads, self.out_dim
        gr = attention_backward(ctx, self._operator_dout(dy, n_dst))
        dh = gr.v.reshape(n_src, H * C)  # a new array (backend contract): updated in place
        if n_dst == n_src:
            G = xp.concatenate([gr.k, gr.q], axis=1)  # (n, 2H)
            dh += G @ A.T
            M = h.T @ G                                # (H*C, 2H)
            self.grads["att_src"] = _block_diag_part(xp, M, H, C, 0)
            self.grads["att_dst"] = _block_diag_part(xp, M, H, C, H)
        else:
            dh += gr.k @ A[:, :H].T
            dh[:n_dst] += gr.q @ A[:, H:].T
            self.grads["att_src"] = _block_diag_part(xp, h.T @ gr.k, H, C, 0)
            self.grads["att_dst"] = _block_diag_part(xp, h[:n_dst].T @ gr.q, H, C, 0)
        self.grads["W"] = sparse_t_matmul(inp.x, dh)
        dx = None if inp.sparse or not self.input_grad else dh @ W.T
        return self._residual_backward(inp.x_dst, dy, dx)


class GATv2Conv(_HeadsLayer):
    """The dynamic graph attention of Brody et al. (2022): exactly PyG's ``GATv2Conv``.

    ``x_l = x @ W_src + b_src`` (sources and values) and ``x_r = x_dst @ W_dst + b_dst``
    (destinations), both ``(n, heads, out_dim)``; per edge ``j -> i`` the score
    ``att_h . LeakyReLU(x_r_ih + x_l_jh)``, softmax, attention dropout,
    ``out_i = sum_j a_ij x_l_j``; concat or mean over heads, ``+ x_dst @ W_res``
    when ``residual=True``, ``+ bias``.

    ``params``: ``W_src``, ``W_dst`` ``(in_dim, heads*out_dim)`` with ``b_src``, ``b_dst``
    ``(heads*out_dim,)`` (PyG's ``lin_l``, ``lin_r``; the biases exist when
    ``bias=True``), ``att (heads, out_dim)``, ``bias``, ``W_res`` when
    ``residual=True``. With ``share_weights=True`` there is no ``W_dst``/``b_dst``:
    both sides use ``W_src``/``b_src`` (PyG's ``lin_r = lin_l``). Initialisation as
    PyG: Glorot weights and ``att``, ``b_src``/``b_dst`` uniform in
    ``±1/sqrt(in_dim)``, zero ``bias``. Other arguments as :class:`GATConv`.
    """

    def __init__(self, in_dim: int, out_dim: int, heads: int = 1, concat: bool = True,
                 negative_slope: float = 0.2, dropout: float = 0.0, add_self_loops: bool = True,
                 bias: bool = True, residual: bool = False, share_weights: bool = False, *,
                 dtype: Any = np.float32, seed: Any = None, backend: str | None = None) -> None:
        super().__init__(in_dim, out_dim, heads, concat, negative_slope, dropout, add_self_loops, residual,
                         dtype, seed, backend)
        self.share_weights = bool(share_weights)
        self.has_bias = bool(bias)
        H, C = self.heads, self.out_dim
        rng, dt = self._rng, self.dtype
        # Same draw order as PyG's reset_parameters: lin_l, lin_r, res, att.
        self.params["W_src"] = init.glorot((self.in_dim, H * C), rng, dt)
        if bias:
            self.params["b_src"] = init.uniform_fan_in((H * C,), self.in_dim, rng, dt)
        if not self.share_weights:
            self.params["W_dst"] = init.glorot((self.in_dim, H * C), rng, dt)
            if bias:
                self.params["b_dst"] = init.uniform_fan_in((H * C,), self.in_dim, rng, dt)
        if self.residual:
            self.params["W_res"] = init.glorot((self.in_dim, self.total_out), rng, dt)
        self.params["att"] = init.glorot((H, C), rng, dt)
        if bias:
            self.params["bias"] = init.zeros((self.total_out,), dt)

    def forward(self, x: Any, g: Any = None, *, training: bool = False) -> Any:
        g2 = self._graph(g)
        inp = self._inputs(x, g2, self.in_dim)
        x, kind, x_dst = inp.x, inp.kind, inp.x_dst
        n_dst, n_src = g2.shape
        H, C = self.heads, self.out_dim
        W_src = self._param("W_src", kind)
        xl = sparse_dense_matmul(x, W_src, self.backend)
        if self.has_bias:
            xl += self._param("b_src", kind)
        xl = xl.reshape(n_src, H, C)
        if self.share_weights:
            xr = xl[:n_dst]
            W_dst = None
        else:
            W_dst = self._param("W_dst", kind)
            xr = sparse_dense_matmul(x_dst, W_dst, self.backend)
            if self.has_bias:
                xr += self._param("b_dst", kind)
            xr = xr.reshape(n_dst, H, C)
        att = self._param("att", kind)
        p, seed = self._attention_dropout(training)
        out, ctx = attention_forward(g2, xr, xl, xl, score="gatv2", att=att,
                                     negative_slope=self.negative_slope, dropout=p, seed=seed,
                                     backend=self.backend)
        self.last_context = ctx
        self._save_for_backward(_GATv2Cache(inp, ctx, W_src, W_dst), bool(training))
        return self._output(out, x_dst, kind)

    def _backward(self, saved: Any, dy: Any) -> Any:
        inp, ctx, W_src, W_dst = saved
        x, x_dst = inp.x, inp.x_dst
        n_dst, n_src = ctx.graph.shape
        dy = self._check_dy(dy, (n_dst, self.total_out), inp.kind)
        H, C = self.heads, self.out_dim
        gr = attention_backward(ctx, self._operator_dout(dy, n_dst))
        self.grads["att"] = gr.att
        dxl = gr.k + gr.v
        dxr = gr.q.reshape(n_dst, H * C)
        if self.share_weights:
            dxl[:n_dst] += gr.q
        dxl = dxl.reshape(n_src, H * C)
        self.grads["W_src"] = sparse_t_matmul(x, dxl)
        if self.has_bias:
            self.grads["b_src"] = dxl.sum(axis=0)
        dx = None if inp.sparse or not self.input_grad else dxl @ W_src.T
        if not self.share_weights:
            self.grads["W_dst"] = sparse_t_matmul(x_dst, dxr)
            if self.has_bias:
                self.grads["b_dst"] = dxr.sum(axis=0)
            if dx is not None:
                dx[:n_dst] += dxr @ W_dst.T
        return self._residual_backward(x_dst, dy, dx)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, share_weights={self.share_weights}"


class GraphAttention(_AttentionLayer):
    """Similarity attention with separate query, key and value projections.

    ``q = x_q @ W_q``, ``k = x_k @ W_k``, ``v = x_v @ W_v``, each viewed as
    ``(n, heads, out_dim)``; the attention output (the *context*)
    ``c_i = sum_j a_ij v_j`` with ``a`` the softmax over ``i``'s incoming edges of
    the score ``score`` (``cosine``, ``dot``, ``scaled_dot`` or ``euclidean``, see
    ``docs/contract.md``), flattened to ``(n, heads*out_dim)``.

    * ``residual=False``: returns ``c``.
    * ``residual=True`` (the default, the seed's update): returns the tuple
      ``(q + c, k + c, v + c)``, each ``(n, heads*out_dim)``: every stream gets the
      same context added, and the next ``GraphAttention`` takes the tuple as its
      input, projecting stream ``q`` with its ``W_q``, ``k`` with ``W_k`` and ``v``
      with ``W_v``. Needs a square graph (a node's context is added to its own
      q, k and v). ``ELU``, ``ReLU`` and ``Dropout`` map over such tuples, and
      a final ``GraphAttention(residual=False)`` turns the streams back into
      one array.

    The input ``x`` is one array (dense or sparse; used for all three
    streams) or a tuple ``(x_q, x_k, x_v)``; backward returns a gradient of the
    same form (``None`` for sparse inputs), and takes ``dy`` of the output's form
    (a tuple for ``residual=True``; ``None`` entries count as zeros).

    ``params``: ``W_q``, ``W_k``, ``W_v`` ``(in_dim, heads*out_dim)`` (Glorot), and
    for ``cosine``/``euclidean`` with ``learn_tau=True`` the temperature ``tau``
    of shape ``(1,)`` (AGNN's learnable beta), initialised to ``tau``.
    """

    def __init__(self, in_dim: int, out_dim: int, heads: int = 1, score: str = "cosine",
                 residual: bool = True, *, tau: float = 1.0, learn_tau: bool = True,
                 dropout: float = 0.0, add_self_loops: bool = True, dtype: Any = np.float32,
                 seed: Any = None, backend: str | None = None) -> None:
        super().__init__(dtype, seed, backend, add_self_loops, dropout)
        if score not in GRAPH_ATTENTION_SCORES:
            raise ValueError(f"score must be one of {', '.join(GRAPH_ATTENTION_SCORES)}; got {score!r} "
                             f"(use GATConv for 'additive' and GATv2Conv for 'gatv2')")
        self.in_dim = check_positive_int("in_dim", in_dim)
        self.out_dim = check_positive_int("out_dim", out_dim)
        self.heads = check_positive_int("heads", heads)
        self.score = score
        self.residual = bool(residual)
        self.uses_tau = score in ("cosine", "euclidean")
        self.tau = float(tau)
        if not self.uses_tau and self.tau != 1.0:
            raise ValueError(f"tau applies only to the scores cosine and euclidean, got score={score!r}")
        H, C = self.heads, self.out_dim
        for name in ("W_q", "W_k", "W_v"):
            self.params[name] = init.glorot((self.in_dim, H * C), self._rng, self.dtype)
        if self.uses_tau and learn_tau:
            self.params["tau"] = np.full((1,), self.tau, dtype=self.dtype)

    def _tau(self) -> float:
        if "tau" in self.params:
            return float(self.params["tau"].reshape(-1)[0])
        return self.tau

    def _streams(self, x: Any, g2: CSRGraph) -> tuple[list[_Input], bool]:
        """The checked inputs of the q, k and v streams, and whether one array feeds all three."""
        if isinstance(x, tuple):
            if len(x) != 3:
                raise ValueError(f"GraphAttention takes one array or a tuple (x_q, x_k, x_v), got a tuple of {len(x)}")
            streams = [self._inputs(a, g2, self.in_dim) for a in x]
            single = False
        else:
            streams = [self._inputs(x, g2, self.in_dim)] * 3
            single = True
        if any(s.kind != streams[0].kind for s in streams):
            raise TypeError("GraphAttention: x_q, x_k and x_v must all be NumPy or all be CuPy arrays")
        return streams, single

    def forward(self, x: Any, g: Any = None, *, training: bool = False) -> Any:
        g2 = self._graph(g)
        n_dst, n_src = g2.shape
        if self.residual and n_dst != n_src:
            raise ValueError(f"GraphAttention(residual=True) adds each node's context to its own q, k, v, "
                             f"so it needs a square graph; got shape {g2.shape}")
        (sq, sk, sv), single = self._streams(x, g2)
        kind = sq.kind
        H, C = self.heads, self.out_dim
        Wq, Wk, Wv = (self._param(n, kind) for n in ("W_q", "W_k", "W_v"))
        q = sparse_dense_matmul(sq.x_dst, Wq, self.backend)
        k = sparse_dense_matmul(sk.x, Wk, self.backend)
        v = sparse_dense_matmul(sv.x, Wv, self.backend)
        p, seed = self._attention_dropout(training)
        tau = self._tau() if self.uses_tau else 1.0
        out, ctx = attention_forward(g2, q.reshape(n_dst, H, C), k.reshape(n_src, H, C),
                                     v.reshape(n_src, H, C), score=self.score, tau=tau, dropout=p,
                                     seed=seed, backend=self.backend)
        self.last_context = ctx
        c = out.reshape(n_dst, H * C)
        self._save_for_backward(_StreamsCache(sq, sk, sv, single, ctx, Wq, Wk, Wv), bool(training))
        if self.residual:
            return (q + c, k + c, v + c)
        return c

    def _context_grad(self, dy: Any, shape: tuple[int, int], kind: str) -> tuple[Any, list[Any]]:
        """``(dc, direct)``: the gradient of the context, and of each stream's residual path (or None)."""
        if not self.residual:
            return self._check_dy(dy, shape, kind), [None, None, None]
        if not isinstance(dy, tuple) or len(dy) != 3:
            raise ValueError("GraphAttention(residual=True).backward takes a tuple (dq, dk, dv) "
                             "like its output")
        direct = [None if d is None else self._check_dy(d, shape, kind, f"dy[{i}]") for i, d in enumerate(dy)]
        present = [d for d in direct if d is not None]
        if not present:
            raise ValueError("GraphAttention.backward: every gradient of the tuple is None")
        dc = present[0].copy()
        for d in present[1:]:
            dc += d
        return dc, direct

    def _backward(self, saved: Any, dy: Any) -> Any:
        c = saved
        n_dst, n_src = c.ctx.graph.shape
        H, C = self.heads, self.out_dim
        dc, direct = self._context_grad(dy, (n_dst, H * C), c.q.kind)
        gr = attention_backward(c.ctx, dc.reshape(n_dst, H, C))
        dq = gr.q.reshape(n_dst, H * C)
        dk = gr.k.reshape(n_src, H * C)
        dv = gr.v.reshape(n_src, H * C)
        for d, extra in zip((dq, dk, dv), direct):
            if extra is not None:
                d += extra
        if "tau" in self.params:
            self.grads["tau"] = gr.tau.reshape(1).astype(self.dtype)
        self.grads["W_q"] = sparse_t_matmul(c.q.x_dst, dq)
        self.grads["W_k"] = sparse_t_matmul(c.k.x, dk)
        self.grads["W_v"] = sparse_t_matmul(c.v.x, dv)
        return self._input_grads(c, dq, dk, dv)

    def _input_grads(self, c: _StreamsCache, dq: Any, dk: Any, dv: Any) -> Any:
        """The gradient of the input (one array, or one per stream; None for sparse inputs)."""
        n_dst, n_src = c.ctx.graph.shape

        def back(stream: _Input, d: Any, W: Any, dst_only: bool) -> Any:
            if stream.sparse or not self.input_grad:  # sparse input: no gradient
                return None
            if not dst_only:
                return d @ W.T
            xp = namespace(d)
            out = xp.zeros((n_src, self.in_dim), dtype=self.dtype)
            out[:n_dst] = d @ W.T
            return out

        if c.single:
            if c.q.sparse or not self.input_grad:
                return None
            dx = dk @ c.W_k.T
            dx += dv @ c.W_v.T
            dx[:n_dst] += dq @ c.W_q.T
            return dx
        return (back(c.q, dq, c.W_q, n_dst != n_src), back(c.k, dk, c.W_k, False),
                back(c.v, dv, c.W_v, False))

    def extra_repr(self) -> str:
        return (f"{self.in_dim}, {self.out_dim}, heads={self.heads}, score={self.score!r}, "
                f"residual={self.residual}")
