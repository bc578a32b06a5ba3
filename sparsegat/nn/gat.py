"""Graph attention layers: GATConv, GATv2Conv (PyG's functions) and GraphAttention.

All three project node features with dense weights, call the sparse attention
operator :func:`sparsegat.attention_forward` once per forward pass and
:func:`sparsegat.attention_backward` once per backward pass, and do the rest
(projections, attention-vector products, head concat/mean, residual, bias, edge
features) with a handful of dense array operations of the input's array library.

Edge features (``edge_dim``) enter the score inside PyG's LeakyReLU, where the
operator's ``edge_bias`` (added after the score function) cannot put them; the
layers then compute the ``(nnz, heads)`` scores themselves and hand them to the
operator as ``edge_bias`` of an ``additive`` score with zero node terms (which is
the bias alone), so softmax, dropout and aggregation stay fused. See ``docs/nn.md``
for the memory each path needs.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from ..arrays import namespace
from ..attention import attention_backward, attention_forward
from ..backends import optional_function
from ..blas_threads import small_products_on_one_thread, t_matmul
from ..graph import CSRGraph
from . import init
from .base import SELF_LOOPS_KEY, AttentionLayer, Input, block_diag, block_diag_part, graph_with_self_loops
from .edges import col_sum, edge_chunks, row_sum, scatter_sum
from .heads import EdgeInputs, HeadsLayer, NodeInputs, leaky_relu, leaky_relu_grad
from .module import check_positive_int, sparse_dense_matmul, sparse_t_matmul

__all__ = ["GATConv", "GATv2Conv", "GraphAttention", "graph_with_self_loops", "SELF_LOOPS_KEY"]

#: The score functions GraphAttention takes (additive and gatv2 are GATConv and GATv2Conv).
GRAPH_ATTENTION_SCORES = ("cosine", "dot", "scaled_dot", "euclidean")


class _GATCache(NamedTuple):
    """What GATConv.backward needs from its forward."""

    inp: NodeInputs
    h_src: Any      #: x_src @ W_src, (n_src, heads*out_dim)
    h_dst: Any      #: x_dst @ W_dst, (n_dst, heads*out_dim), or None without destination features
    ctx: Any        #: the operator's context
    A_src: Any      #: block-diagonal att_src (heads*out_dim, heads)
    A_dst: Any
    W_src: Any      #: the projection weights (the same array twice for a shared W)
    W_dst: Any
    edges: EdgeInputs | None
    z: Any          #: with edge features: the scores before LeakyReLU, (nnz, heads)
    P: Any          #: with edge features: W_edge @ A_edge, (edge_dim, heads)
    W_edge: Any
    A_edge: Any


class _GATv2Cache(NamedTuple):
    """What GATv2Conv.backward needs from its forward."""

    inp: NodeInputs
    ctx: Any
    W_src: Any
    W_dst: Any      #: W_src with share_weights=True
    edges: EdgeInputs | None
    xl: Any         #: with edge features: x_src @ W_src + b_src, (n_src, heads, out_dim)
    xr: Any         #: with edge features: the destination side, (n_dst, heads, out_dim)
    W_edge: Any
    att: Any


class _StreamsCache(NamedTuple):
    """What GraphAttention.backward needs from its forward."""

    q: Input        #: the input of each stream (the same one three times for a single array)
    k: Input
    v: Input
    single: bool    #: one array fed all three streams
    ctx: Any
    W_q: Any
    W_k: Any
    W_v: Any


_HEADS_ARGS = """
    Parameters
    ----------
    in_dim : int or (int, int)
        Input features (PyG's ``in_channels``); a pair ``(in_src, in_dst)`` gives the
        sources and the destinations separate projection weights.
    out_dim : int
        Features per head.
    heads : int
    concat : bool
        Concatenate heads (output ``heads * out_dim``) or average them (``out_dim``).
    negative_slope : float
        LeakyReLU slope of the scores.
    dropout : float
        Attention dropout, applied in training forwards through the operator's
        ``dropout``/``seed`` with a fresh seed drawn from the layer's generator.
    add_self_loops : bool
        PyG's rule: remove every existing loop, add one loop ``(i, i)`` per node
        ``i < min(n_dst, n_src)`` (the looped graph and its edge map are built once and
        cached on the graph).
    edge_dim : int, optional
        Width of the edge features ``forward`` takes as ``edge_attr`` (PyG's ``edge_dim``).
    fill_value : "mean", "add", float or array of edge_dim numbers
        Edge features of the added self-loops: the mean or sum of the features of the
        node's incoming non-loop edges (0 for a node without any), or a constant
        (PyG's ``fill_value``; ``"mean"`` by default).
    bias : bool
    residual : bool
        Add ``x_dst @ W_res``, a bias-free linear map ``(in_dst, total_out)`` that
        PyG 2.8 always creates for ``residual=True`` (also when the sizes agree).
    dtype, seed, backend
        Parameter dtype (float32 default); initialisation seed (as PyG: Glorot
        weights and attention vectors, zero bias); operator backend (``None``:
        dispatch by array type).
"""

_FORWARD_DOC = """
    ``forward(x, g, edge_attr=None, *, training=None, return_attention_weights=False)``
    (``training=None``: the layer's mode, set by ``train()``/``eval()``):

    * ``x``: one array ``(n_src, in_dim)`` (dense or sparse; the destinations are its
      first ``n_dst`` rows), or a pair ``(x_src, x_dst)`` with ``x_src (n_src, in_src)``
      and ``x_dst (n_dst, in_dst)``{missing_dst}.
    * ``g``: a :class:`~sparsegat.CSRGraph` of shape ``(n_dst, n_src)``.
    * ``edge_attr``: ``(g.nnz, edge_dim)`` (or ``(g.nnz,)`` when ``edge_dim=1``), one
      row per edge of ``g`` in CSR order (bring features given in ``edge_index``
      order there with the ``perm`` of ``CSRGraph.from_edge_index(...,
      return_perm=True)``: ``edge_attr[perm]``).
    * returns ``(n_dst, total_out)``; with ``return_attention_weights=True`` the pair
      ``(out, (g_used, alpha))``: the graph the layer attended over (with its
      self-loops; ``nn.graph_with_self_loops(g, return_edge_ids=True)`` maps its
      edges to those of ``g``) and the weights ``(g_used.nnz, heads)`` in its CSR
      order, with the forward's attention dropout (PyG's ``(edge_index, alpha)``).

    ``backward(dy)`` returns the gradient of ``x`` in its form (``None`` for sparse
    inputs and a missing ``x_dst``) and sets ``edge_attr_grad`` (the shape of
    ``edge_attr``, CSR order of ``g``) when the forward had edge features.
    Parameters a forward did not use (``att_dst`` and ``W_res`` without ``x_dst``,
    ``W_edge`` and ``att_edge`` without ``edge_attr``) get no entry in ``grads``,
    as PyTorch leaves their ``.grad`` None.
"""


class GATConv(HeadsLayer):
    __doc__ = """The graph attention layer of Velickovic et al. (2018): exactly PyG's ``GATConv``.

    ``h_src = x_src @ W_src``, ``h_dst = x_dst @ W_dst`` (one ``W`` for both when
    ``in_dim`` is an int) viewed as ``(n, heads, out_dim)``; per edge ``j -> i`` and
    head ``h`` the score ``LeakyReLU(att_dst_h . h_dst_ih + att_src_h . h_src_jh +
    att_edge_h . e_ijh)`` with ``e_ij = edge_attr_ij @ W_edge`` (when ``edge_dim`` is
    set and ``edge_attr`` given; the ``att_dst`` term is left out for
    ``x=(x_src, None)``, as PyG does), a softmax over the incoming edges of ``i``,
    attention dropout, ``out_i = sum_j a_ij h_src_j``; heads are concatenated
    (``concat=True``) or averaged; then ``+ x_dst @ W_res`` when ``residual=True``
    and ``+ bias``.
""" + _HEADS_ARGS + """
    ``params``: ``W (in_dim, heads*out_dim)``, or ``W_src (in_src, heads*out_dim)`` and
    ``W_dst (in_dst, heads*out_dim)`` for a pair ``in_dim``; ``att_src``, ``att_dst``
    ``(heads, out_dim)``; ``W_res (in_dst, total_out)`` when ``residual=True``;
    ``W_edge (edge_dim, heads*out_dim)`` and ``att_edge (heads, out_dim)`` with
    ``edge_dim``; ``bias (heads*out_dim,)`` or ``(out_dim,)`` when ``concat=False``.
    PyG's ``lin.weight`` is ``W.T`` (``lin_src``/``lin_dst``: ``W_src.T``/``W_dst.T``),
    ``lin_edge.weight`` is ``W_edge.T``, and its ``att_src`` is ``att_src[None]``
    (``att_dst``, ``att_edge`` likewise).
""" + _FORWARD_DOC.format(missing_dst=", or ``(x_src, None)``: no destination term in the "
                          "score, no residual (PyG's rule; the output has ``g.n_dst`` rows)")

    def __init__(self, in_dim: Any, out_dim: int, heads: int = 1, concat: bool = True,
                 negative_slope: float = 0.2, dropout: float = 0.0, add_self_loops: bool = True,
                 bias: bool = True, residual: bool = False, *, edge_dim: int | None = None,
                 fill_value: Any = "mean", dtype: Any = np.float32, seed: Any = None,
                 backend: str | None = None) -> None:
        super().__init__(in_dim, out_dim, heads, concat, negative_slope, dropout, add_self_loops, residual,
                         edge_dim, fill_value, dtype, seed, backend)
        H, C = self.heads, self.out_dim
        rng, dt = self._rng, self.dtype
        if self.pair_in_dim:
            self.params["W_src"] = init.glorot((self.in_src, H * C), rng, dt)
            self.params["W_dst"] = init.glorot((self.in_dst, H * C), rng, dt)
        else:
            self.params["W"] = init.glorot((self.in_src, H * C), rng, dt)
        self.params["att_src"] = init.glorot((H, C), rng, dt)
        self.params["att_dst"] = init.glorot((H, C), rng, dt)
        if self.residual:
            self.params["W_res"] = init.glorot((self.in_dst, self.total_out), rng, dt)
        if self.edge_dim is not None:
            self.params["W_edge"] = init.glorot((self.edge_dim, H * C), rng, dt)
            self.params["att_edge"] = init.glorot((H, C), rng, dt)
        if bias:
            self.params["bias"] = init.zeros((self.total_out,), dt)

    def _weight_names(self) -> tuple[str, str | None]:
        return ("W_src", "W_dst") if self.pair_in_dim else ("W", None)

    @small_products_on_one_thread
    def forward(self, x: Any, g: Any = None, edge_attr: Any = None, *, training: bool | None = None,
                return_attention_weights: bool = False) -> Any:
        training = self._is_training(training)
        lg, g2 = self._looped(g)
        inp = self._node_inputs(x, g2)
        edges = self._edge_inputs(edge_attr, g, lg, inp.kind)
        xp = namespace(inp.kind)
        n_dst, n_src = g2.shape
        H, C = self.heads, self.out_dim
        ws, wd = self._weight_names()
        W_src = self._param(ws, inp.kind)
        W_dst = W_src if wd is None else self._param(wd, inp.kind)
        h_src, h_dst = self._project(inp, W_src, W_dst, wd is None)
        A_src = block_diag(xp, self._param("att_src", inp.kind))
        A_dst = block_diag(xp, self._param("att_dst", inp.kind))
        a_src, a_dst = _node_terms(xp, h_src, h_dst, A_src, A_dst, inp.single and wd is None)
        hv = h_src.reshape(n_src, H, C)
        if edges is None:
            q = a_dst if a_dst is not None else xp.zeros((n_dst, H), dtype=self.dtype)
            out, ctx, alpha = self._attend(g2, q, a_src, hv, training, return_attention_weights, score="additive")
            z = P = W_edge = A_edge = None
        else:
            W_edge = self._param("W_edge", inp.kind)
            A_edge = block_diag(xp, self._param("att_edge", inp.kind))
            P = W_edge @ A_edge
            z = _additive_edge_logits(g2, a_src, a_dst, edges.attr @ P)
            zero_dst, zero_src = xp.zeros((n_dst, H), self.dtype), xp.zeros((n_src, H), self.dtype)
            out, ctx, alpha = self._attend(g2, zero_dst, zero_src, hv, training, return_attention_weights,
                                           score="additive", edge_bias=leaky_relu(xp, z, self.negative_slope))
        cache = _GATCache(inp, h_src, h_dst, ctx, A_src, A_dst, W_src, W_dst, edges, z, P, W_edge, A_edge)
        self._save_for_backward(cache, bool(training))
        y = self._output(out, inp.x_dst, inp.kind)
        return (y, (g2, alpha)) if return_attention_weights else y

    def _project(self, inp: NodeInputs, W_src: Any, W_dst: Any, shared: bool) -> tuple[Any, Any]:
        """``(h_src, h_dst)``; ``h_dst`` is a view of ``h_src`` for one array and a shared ``W``."""
        h_src = sparse_dense_matmul(inp.x_src, W_src, self.backend)
        if inp.x_dst is None:
            return h_src, None
        if inp.single and shared:
            return h_src, h_src[:inp.x_dst.shape[0]]
        return h_src, sparse_dense_matmul(inp.x_dst, W_dst, self.backend)

    def _backward(self, saved: Any, dy: Any) -> Any:
        c = saved
        g2 = c.ctx.graph
        n_dst, n_src = g2.shape
        dy = self._check_dy(dy, (n_dst, self.total_out), c.inp.kind)
        xp = namespace(dy)
        H, C = self.heads, self.out_dim
        gr = attention_backward(c.ctx, self._operator_dout(dy, n_dst))
        if c.edges is None:
            da_src, da_dst = gr.k, gr.q
            self._edge_param_grads_missing(("W_edge", "att_edge"))
        else:
            dz = gr.edge_bias * leaky_relu_grad(xp, c.z, self.negative_slope)
            da_src, da_dst = col_sum(g2, dz), row_sum(g2, dz)
            self._gat_edge_grads(c, dz)
        dh_src = gr.v.reshape(n_src, H * C)  # a new array (backend contract): updated in place
        dh_dst = self._att_grads(xp, c, dh_src, da_src, da_dst)
        ws, wd = self._weight_names()
        dh_dst = self._projection_grads(c.inp, dh_src, dh_dst, (ws, wd), (None, None))
        return self._input_grads(c.inp, dh_src, dh_dst, c.W_src, c.W_dst, dy)

    def _att_grads(self, xp: Any, c: _GATCache, dh_src: Any, da_src: Any, da_dst: Any) -> Any:
        """``att_src``/``att_dst`` gradients; adds the source term to ``dh_src``, returns ``dh_dst``."""
        H, C = self.heads, self.out_dim
        if c.h_dst is None:
            _add_blockdiag(xp, dh_src, da_src, c.A_src, C, self.backend)
            self.grads["att_src"] = block_diag_part(xp, t_matmul(c.h_src, da_src), H, C, 0)
            self.grads.pop("att_dst", None)
            return None
        if c.h_dst.shape[0] == c.h_src.shape[0] and c.inp.single and c.W_src is c.W_dst:
            # Square, one array, one W: both terms with one product each way, h @ [A_src | A_dst].
            G = xp.concatenate([da_src, da_dst], axis=1)
            _add_blockdiag(xp, dh_src, G, xp.concatenate([c.A_src, c.A_dst], axis=1), C, self.backend)
            M = t_matmul(c.h_src, G)
            self.grads["att_src"] = block_diag_part(xp, M, H, C, 0)
            self.grads["att_dst"] = block_diag_part(xp, M, H, C, H)
            return None
        _add_blockdiag(xp, dh_src, da_src, c.A_src, C, self.backend)
        self.grads["att_src"] = block_diag_part(xp, t_matmul(c.h_src, da_src), H, C, 0)
        self.grads["att_dst"] = block_diag_part(xp, t_matmul(c.h_dst, da_dst), H, C, 0)
        dh_dst = xp.zeros((da_dst.shape[0], c.A_dst.shape[0]), dtype=da_dst.dtype)
        _add_blockdiag(xp, dh_dst, da_dst, c.A_dst, C, self.backend)
        return dh_dst

    def _gat_edge_grads(self, c: _GATCache, dz: Any) -> None:
        """Gradients of ``W_edge``, ``att_edge`` and ``edge_attr`` from ``dz`` (nnz, heads)."""
        xp = namespace(dz)
        H, C = self.heads, self.out_dim
        dP = c.edges.attr.T @ dz                     # (edge_dim, H)
        self.grads["W_edge"] = dP @ c.A_edge.T
        self.grads["att_edge"] = block_diag_part(xp, c.W_edge.T @ dP, H, C, 0)
        self.edge_attr_grad = self._edge_attr_grad(c.edges, dz @ c.P.T) if self.input_grad else None


def _add_blockdiag(xp: Any, dh: Any, G: Any, A: Any, block: int, backend: str | None) -> None:
    """``dh += G @ A.T`` for ``A`` of block-diagonal parts (attention vectors): the
    backend's one-pass ``add_blockdiag_product`` on NumPy arrays where it has one (BLAS
    runs that product, whose inner dimension is the number of heads, at a fraction of
    memory speed), else the product."""
    kind = "numpy" if xp is np else "cupy"
    add = optional_function("add_blockdiag_product", kind, backend) if kind == "numpy" else None
    if add is not None and dh.flags.c_contiguous and dh.dtype == G.dtype == A.dtype:
        add(dh, G, A, block)
    else:
        dh += G @ A.T


def _node_terms(xp: Any, h_src: Any, h_dst: Any, A_src: Any, A_dst: Any, prefix: bool) -> tuple[Any, Any]:
    """``(a_src, a_dst)``: per-node attention terms ``(n, heads)``; ``a_dst`` None without ``h_dst``.

    ``prefix``: ``h_dst`` is the first rows of ``h_src``, so one product ``h_src @ [A_src | A_dst]``
    gives both.
    """
    if h_dst is None:
        return h_src @ A_src, None
    if prefix:
        H = A_src.shape[1]
        a = h_src @ xp.concatenate([A_src, A_dst], axis=1)
        return a[:, :H], a[:h_dst.shape[0], H:]
    return h_src @ A_src, h_dst @ A_dst


def _additive_edge_logits(g2: CSRGraph, a_src: Any, a_dst: Any, a_edge: Any) -> Any:
    """``a_dst[i] + a_src[j] + a_edge[e]`` per edge ``e = (i <- j)``: GATConv's score before LeakyReLU."""
    z = a_edge
    z += a_src[g2.indices]
    if a_dst is not None:
        z += a_dst[g2.row_ids()]
    return z


class GATv2Conv(HeadsLayer):
    __doc__ = """The dynamic graph attention of Brody et al. (2022): exactly PyG's ``GATv2Conv``.

    ``x_l = x_src @ W_src + b_src`` (sources and values) and ``x_r = x_dst @ W_dst +
    b_dst`` (destinations), both ``(n, heads, out_dim)``; per edge ``j -> i`` the score
    ``att_h . LeakyReLU(x_r_ih + x_l_jh + e_ijh)`` with ``e_ij = edge_attr_ij @ W_edge``
    when ``edge_dim`` is set and ``edge_attr`` given; softmax, attention dropout,
    ``out_i = sum_j a_ij x_l_j``; concat or mean over heads, ``+ x_dst @ W_res`` when
    ``residual=True``, ``+ bias``.

    Without edge features this is one fused ``gatv2`` operator call (O(nnz*heads)
    memory). With them, ``e_ij`` enters every feature inside the LeakyReLU, which no
    ``(nnz, heads)`` bias can express: the layer computes the scores itself, in chunks
    of edges of at most ``edges.CHUNK_ELEMENTS`` numbers (``chunk x heads x out_dim``),
    and passes them to the operator as ``edge_bias``; backward recomputes each chunk.
    Memory beyond the operator's: the ``(nnz, heads)`` scores, the ``(nnz, edge_dim)``
    edge features, and one chunk at a time (a few arrays of ``CHUNK_ELEMENTS`` numbers);
    never an ``nnz x heads x out_dim`` array for graphs larger than one chunk.
""" + _HEADS_ARGS + """
    share_weights : bool
        Both sides use ``W_src``/``b_src`` (PyG's ``lin_r = lin_l``).

    ``params``: ``W_src (in_src, heads*out_dim)``, ``W_dst (in_dst, heads*out_dim)``
    with ``b_src``, ``b_dst`` ``(heads*out_dim,)`` (PyG's ``lin_l``, ``lin_r``; the
    biases exist when ``bias=True``; no ``W_dst``/``b_dst`` with ``share_weights=True``),
    ``W_edge (edge_dim, heads*out_dim)`` with ``edge_dim`` (PyG's ``lin_edge.weight``
    is ``W_edge.T``), ``W_res``, ``att (heads, out_dim)`` (PyG's ``att[None]``),
    ``bias``. Initialisation as PyG: Glorot weights and ``att``, ``b_src``/``b_dst``
    uniform in ``±1/sqrt(in_dim)``, zero ``bias``.
""" + _FORWARD_DOC.format(missing_dst=" (``(x_src, None)`` is refused, as PyG asserts "
                          "``x_r is not None``)")

    allows_missing_dst = False

    def __init__(self, in_dim: Any, out_dim: int, heads: int = 1, concat: bool = True,
                 negative_slope: float = 0.2, dropout: float = 0.0, add_self_loops: bool = True,
                 bias: bool = True, residual: bool = False, share_weights: bool = False, *,
                 edge_dim: int | None = None, fill_value: Any = "mean", dtype: Any = np.float32,
                 seed: Any = None, backend: str | None = None) -> None:
        super().__init__(in_dim, out_dim, heads, concat, negative_slope, dropout, add_self_loops, residual,
                         edge_dim, fill_value, dtype, seed, backend)
        self.share_weights = bool(share_weights)
        if self.share_weights and self.in_src != self.in_dst:
            raise ValueError(f"share_weights=True uses W_src for both sides, so in_dim must be one width; "
                             f"got in_dim={self.in_dim}")
        self.has_bias = bool(bias)
        H, C = self.heads, self.out_dim
        rng, dt = self._rng, self.dtype
        # Same draw order as PyG's reset_parameters: lin_l, lin_r, lin_edge, res, att.
        self.params["W_src"] = init.glorot((self.in_src, H * C), rng, dt)
        if bias:
            self.params["b_src"] = init.uniform_fan_in((H * C,), self.in_src, rng, dt)
        if not self.share_weights:
            self.params["W_dst"] = init.glorot((self.in_dst, H * C), rng, dt)
            if bias:
                self.params["b_dst"] = init.uniform_fan_in((H * C,), self.in_dst, rng, dt)
        if self.edge_dim is not None:
            self.params["W_edge"] = init.glorot((self.edge_dim, H * C), rng, dt)
        if self.residual:
            self.params["W_res"] = init.glorot((self.in_dst, self.total_out), rng, dt)
        self.params["att"] = init.glorot((H, C), rng, dt)
        if bias:
            self.params["bias"] = init.zeros((self.total_out,), dt)

    def _names(self) -> tuple[tuple[str, str | None], tuple[str | None, str | None]]:
        """Names of the projection weights and biases (``None``: shared or absent)."""
        b_src = "b_src" if self.has_bias else None
        if self.share_weights:
            return ("W_src", None), (b_src, None)
        return ("W_src", "W_dst"), (b_src, "b_dst" if self.has_bias else None)

    def _linear(self, x: Any, w: str, b: str | None, kind: str) -> Any:
        out = sparse_dense_matmul(x, self._param(w, kind), self.backend)
        if b is not None:
            out += self._param(b, kind)
        return out

    @small_products_on_one_thread
    def forward(self, x: Any, g: Any = None, edge_attr: Any = None, *, training: bool | None = None,
                return_attention_weights: bool = False) -> Any:
        training = self._is_training(training)
        lg, g2 = self._looped(g)
        inp = self._node_inputs(x, g2)
        edges = self._edge_inputs(edge_attr, g, lg, inp.kind)
        kind = inp.kind
        n_dst, n_src = g2.shape
        H, C = self.heads, self.out_dim
        (ws, wd), (bs, bd) = self._names()
        xl = self._linear(inp.x_src, ws, bs, kind).reshape(n_src, H, C)
        if self.share_weights and inp.single:
            xr = xl[:n_dst]
        elif self.share_weights:
            xr = self._linear(inp.x_dst, ws, bs, kind).reshape(n_dst, H, C)
        else:
            xr = self._linear(inp.x_dst, wd, bd, kind).reshape(n_dst, H, C)
        W_src = self._param(ws, kind)
        W_dst = W_src if wd is None else self._param(wd, kind)
        att = self._param("att", kind)
        if edges is None:
            out, ctx, alpha = self._attend(g2, xr, xl, xl, training, return_attention_weights,
                                           score="gatv2", att=att)
            cache = _GATv2Cache(inp, ctx, W_src, W_dst, None, None, None, None, None)
        else:
            xp = namespace(kind)
            W_edge = self._param("W_edge", kind)
            s = _gatv2_edge_scores(g2, xr, xl, edges.attr, W_edge, att, self.negative_slope)
            zero_dst, zero_src = xp.zeros((n_dst, H), self.dtype), xp.zeros((n_src, H), self.dtype)
            out, ctx, alpha = self._attend(g2, zero_dst, zero_src, xl, training, return_attention_weights,
                                           score="additive", edge_bias=s)
            cache = _GATv2Cache(inp, ctx, W_src, W_dst, edges, xl, xr, W_edge, att)
        self._save_for_backward(cache, bool(training))
        y = self._output(out, inp.x_dst, kind)
        return (y, (g2, alpha)) if return_attention_weights else y

    def _backward(self, saved: Any, dy: Any) -> Any:
        c = saved
        n_dst, n_src = c.ctx.graph.shape
        dy = self._check_dy(dy, (n_dst, self.total_out), c.inp.kind)
        H, C = self.heads, self.out_dim
        gr = attention_backward(c.ctx, self._operator_dout(dy, n_dst))
        if c.edges is None:
            self.grads["att"] = gr.att
            dxl = gr.k + gr.v
            dxr = gr.q
            self._edge_param_grads_missing(("W_edge",))
        else:
            datt, dxr, dxl_e, dW_edge, d_attr = _gatv2_edge_backward(
                c.ctx.graph, c.xr, c.xl, c.edges.attr, c.W_edge, c.att, self.negative_slope, gr.edge_bias,
                self.input_grad)
            self.grads["att"] = datt
            self.grads["W_edge"] = dW_edge
            dxl = gr.v + dxl_e
            self.edge_attr_grad = None if d_attr is None else self._edge_attr_grad(c.edges, d_attr)
        dxl = dxl.reshape(n_src, H * C)
        dxr = dxr.reshape(n_dst, H * C)
        w, b = self._names()
        dxr = self._projection_grads(c.inp, dxl, dxr, w, b)
        return self._input_grads(c.inp, dxl, dxr, c.W_src, c.W_dst, dy)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, share_weights={self.share_weights}"


def _gatv2_logits(g2: CSRGraph, xr: Any, xl: Any, attr: Any, W_edge: Any, a: int, b: int) -> Any:
    """``x_r_i + x_l_j + attr_e @ W_edge`` for the edges ``a .. b``: ``(b - a, heads, out_dim)``."""
    H, C = xl.shape[1:]
    z = (attr[a:b] @ W_edge).reshape(b - a, H, C)
    z += xr[g2.row_ids()[a:b]]
    z += xl[g2.indices[a:b]]
    return z


def _gatv2_edge_scores(g2: CSRGraph, xr: Any, xl: Any, attr: Any, W_edge: Any, att: Any,
                       slope: float) -> Any:
    """GATv2's scores with edge features, ``(nnz, heads)``, one chunk of edges at a time."""
    xp = namespace(xl)
    H, C = att.shape
    s = xp.empty((g2.nnz, H), dtype=xl.dtype)
    for a, b in edge_chunks(g2.nnz, H * C):
        z = _gatv2_logits(g2, xr, xl, attr, W_edge, a, b)
        s[a:b] = xp.einsum("ehc,hc->eh", leaky_relu(xp, z, slope), att)
    return s


def _gatv2_edge_backward(g2: CSRGraph, xr: Any, xl: Any, attr: Any, W_edge: Any, att: Any, slope: float,
                         ds: Any, want_attr: bool) -> tuple[Any, Any, Any, Any, Any]:
    """Gradients of :func:`_gatv2_edge_scores` given ``ds`` (nnz, heads), chunk by chunk.

    Returns ``(datt, dxr, dxl, dW_edge, dattr)`` (``dattr`` None unless ``want_attr``).
    """
    xp = namespace(xl)
    n_dst, n_src = g2.shape
    H, C = att.shape
    datt = xp.zeros((H, C), dtype=xl.dtype)
    dxr = xp.zeros((n_dst, H * C), dtype=xl.dtype)
    dxl = xp.zeros((n_src, H * C), dtype=xl.dtype)
    dW = xp.zeros(W_edge.shape, dtype=xl.dtype)
    dattr = xp.empty(attr.shape, dtype=xl.dtype) if want_attr else None
    chunks = edge_chunks(g2.nnz, H * C)
    for a, b in chunks:
        z = _gatv2_logits(g2, xr, xl, attr, W_edge, a, b)
        datt += xp.einsum("eh,ehc->hc", ds[a:b], leaky_relu(xp, z, slope))
        dz = (ds[a:b, :, None] * att) * leaky_relu_grad(xp, z, slope)
        dz = dz.reshape(b - a, H * C)
        dxr += row_sum(g2, dz, a, b)
        dxl += col_sum(g2, dz) if len(chunks) == 1 else scatter_sum(g2.indices[a:b], dz, n_src)
        dW += attr[a:b].T @ dz
        if dattr is not None:
            dattr[a:b] = dz @ W_edge.T
    return datt, dxr.reshape(n_dst, H, C), dxl.reshape(n_src, H, C), dW, dattr


class GraphAttention(AttentionLayer):
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

    def _streams(self, x: Any, g2: CSRGraph) -> tuple[list[Input], bool]:
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

    def forward(self, x: Any, g: Any = None, *, training: bool | None = None) -> Any:
        training = self._is_training(training)
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

        def back(stream: Input, d: Any, W: Any, dst_only: bool) -> Any:
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
