"""What every attention layer of ``sparsegat.nn`` shares: the graph it attends over
(PyG's self-loop rule), attention-dropout seeds, input checks, and the block-diagonal
forms of per-head attention vectors."""

from __future__ import annotations

from typing import Any, NamedTuple

from ..attention import attention_forward, attention_weights
from ..backends import BACKEND_NAMES
from ..graph import CSRGraph
from .edges import SELF_LOOPS_KEY as SELF_LOOPS_KEY
from .edges import LoopedGraph, self_loops
from .module import Module, as_input, check_grad, check_probability, input_kind


def graph_with_self_loops(g: CSRGraph, *, return_edge_ids: bool = False) -> Any:
    """The graph the attention layers use with ``add_self_loops=True``; built once, cached on ``g``.

    PyG's ``GATConv`` rule: every existing loop of ``g`` is removed and one loop
    ``(i, i)`` is added for every node ``i < min(n_dst, n_src)`` (for a bipartite
    graph, as PyG's ``add_self_loops(num_nodes=min(size))``); the same graph as
    ``g.with_self_loops(replace=True)``.

    Parameters
    ----------
    g : CSRGraph
    return_edge_ids : bool
        Also return ``edge_ids`` (int64, ``(nnz,)`` of the looped graph): for each of its
        edges in CSR order, the CSR position in ``g`` of the same edge, or -1 for an
        added loop. ``w[edge_ids >= 0]`` are the entries of per-edge results ``w`` that
        belong to edges of ``g``, at the positions ``edge_ids[edge_ids >= 0]`` of ``g``.

    Returns
    -------
    CSRGraph, or (CSRGraph, ndarray) with ``return_edge_ids=True``.
    """
    if not isinstance(g, CSRGraph):
        raise TypeError(f"g must be a sparsegat.CSRGraph, got {type(g).__name__}")
    lg = self_loops(g)
    return (lg.graph, lg.edge_ids) if return_edge_ids else lg.graph


def block_diag(xp: Any, att: Any) -> Any:
    """``(H, C) -> (H*C, H)`` with ``att[h]`` in block ``h``: ``h_flat @ A`` gives ``att_h . h_ih`` per head."""
    H, C = att.shape
    A = xp.zeros((H, C, H), dtype=att.dtype)
    idx = xp.arange(H)
    A[idx, :, idx] = att
    return A.reshape(H * C, H)


def block_diag_part(xp: Any, M: Any, H: int, C: int, col0: int) -> Any:
    """The ``(H, C)`` diagonal blocks of columns ``col0 .. col0+H`` of an ``(H*C, ...)`` matrix."""
    idx = xp.arange(H)
    return xp.ascontiguousarray(M.reshape(H, C, -1)[idx, :, col0 + idx])


class Input(NamedTuple):
    """A layer input checked against the graph."""

    x: Any          #: the input in the layer's dtype (sparse inputs as CSR)
    kind: str       #: "numpy" or "cupy"
    sparse: bool    #: a scipy/cupyx sparse matrix (no gradient flows into it)
    x_dst: Any      #: its first n_dst rows: the destination nodes


class AttentionLayer(Module):
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
        #: ``ctx.att``, ``ctx.edge_bias``, ``ctx.spec``): enough to recompute the attention weights.
        self.last_context: Any = None

    def _check_graph(self, g: Any) -> CSRGraph:
        if not isinstance(g, CSRGraph):
            raise TypeError(f"{type(self).__name__} needs a sparsegat.CSRGraph as g, got {type(g).__name__}")
        return g

    def _looped(self, g: Any) -> tuple[LoopedGraph | None, CSRGraph]:
        """``(looped, graph used)``: PyG's self-loop version of ``g`` with its edge map, or ``(None, g)``."""
        g = self._check_graph(g)
        if not self.add_self_loops:
            return None, g
        lg = self_loops(g)
        return lg, lg.graph

    def _graph(self, g: Any) -> CSRGraph:
        return self._looped(g)[1]

    def _attention_dropout(self, training: bool) -> tuple[float, int | None]:
        """``(p, seed)`` for this forward: a fresh seed from the layer's generator in training."""
        if training and self.dropout > 0.0:
            return self.dropout, int(self._rng.integers(0, 2**63))
        return 0.0, None

    def _attend(self, g2: CSRGraph, q: Any, k: Any, v: Any, training: bool, want_weights: bool,
                **score: Any) -> tuple[Any, Any, Any]:
        """One operator call: ``(out, ctx, weights)``; the weights (with the forward's dropout)
        only when asked for, else None. ``score`` holds ``score=``, ``att=``, ``edge_bias=``."""
        p, seed = self._attention_dropout(training)
        kw = dict(score, negative_slope=getattr(self, "negative_slope", 0.2), dropout=p, seed=seed,
                  backend=self.backend)
        out, ctx = attention_forward(g2, q, k, v, **kw)
        self.last_context = ctx
        weights = attention_weights(g2, q, k, **kw) if want_weights else None
        return out, ctx, weights

    def _inputs(self, x: Any, g2: CSRGraph, in_dim: int) -> Input:
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
                             f"nodes, so it needs n_dst <= n_src; got graph shape {g2.shape} (pass "
                             f"x=(x_src, x_dst) for separate destination features)")
        x_dst = x if n_dst == n_src else x[:n_dst]
        return Input(x, kind, sparse, x_dst)

    def _check_dy(self, dy: Any, shape: tuple[int, ...], kind: str, name: str = "dy") -> Any:
        return check_grad(type(self).__name__, dy, shape, self.dtype, kind, name)

