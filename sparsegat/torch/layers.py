"""PyG-compatible GAT layers on the sparsegat attention operator.

:class:`GATConv` and :class:`GATv2Conv` take PyTorch Geometric's constructor
arguments, have its parameter names and shapes (so ``load_state_dict`` of a PyG
layer's ``state_dict`` works both ways) and its ``forward`` calls. Projections, the
edge-feature projection, the residual and the bias are PyTorch modules under PyTorch's
autograd; the sparse attention itself (scores, edge-wise softmax, attention dropout,
aggregation) is the custom operator of :func:`sparsegat.torch.attention`:

- ``GATConv``: score ``"additive"`` with ``q = <x_dst W, att_dst>``,
  ``k = <x_src W, att_src>``, ``v = x_src W`` and the edge features' term
  ``<e W_e, att_edge>`` as ``edge_bias``;
- ``GATv2Conv``: score ``"gatv2"`` with ``att``, ``q = x_dst W_r``, ``k = v = x_src W_l``.
  With edge features the edge term sits inside GATv2's LeakyReLU, per feature, which
  the operator cannot take: that case runs unfused, in plain PyTorch gathers and
  scatters (PyG's algorithm, PyG's memory), with the operator's dropout rule.

See ``docs/torch.md`` ("Layers").
"""

from __future__ import annotations

import numbers
from typing import Any, Union

import torch
import torch.nn.functional as F

from ..graph import CSRGraph
from ._functional import attention
from ._graphs import TorchGraph
from ._layer_graph import LayerGraph, graph_as_given, layer_graph
from ._layer_ops import (check_features, check_fill_value, draw_seed, dropout_scale, edge_softmax, fan_in_uniform_,
                         glorot_, loop_edge_attr)

__all__ = ["GATConv", "GATv2Conv"]

#: What a layer's ``edge_index`` argument may be.
Graph = Union[torch.Tensor, CSRGraph, TorchGraph]


def _linear(fin: int, fout: int, bias: bool) -> torch.nn.Linear:
    return torch.nn.Linear(fin, fout, bias=bias)


def _check_channels(in_channels: Any, out_channels: Any, heads: Any) -> tuple[int, ...]:
    ins = in_channels if isinstance(in_channels, (tuple, list)) else (in_channels,)
    if len(ins) not in (1, 2):
        raise ValueError(f"in_channels must be an int or a pair (src, dst), got {in_channels!r}")
    for name, n in [("in_channels", i) for i in ins] + [("out_channels", out_channels), ("heads", heads)]:
        if isinstance(n, bool) or not isinstance(n, numbers.Integral):
            raise TypeError(f"{name} must be an integer, got {n!r}")
        if n == -1 and name == "in_channels":
            raise ValueError("lazy in_channels=-1 is not supported by sparsegat.torch layers: give the sizes")
        if n < 1:
            raise ValueError(f"{name} must be positive, got {n}")
    return tuple(int(i) for i in ins)


class _GATBase(torch.nn.Module):
    """What GATConv and GATv2Conv share: options, graph, edge features, output."""

    def _init_options(self, in_channels: Any, out_channels: int, heads: int, concat: bool, negative_slope: float,
                      dropout: float, add_self_loops: bool, edge_dim: int | None, fill_value: Any,
                      residual: bool, backend: str | None, kwargs: dict) -> tuple[int, ...]:
        if kwargs:
            raise TypeError(f"{type(self).__name__} does not take PyG's MessagePassing options "
                            f"{sorted(kwargs)} (aggregation and flow are fixed: sum over incoming edges)")
        ins = _check_channels(in_channels, out_channels, heads)
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        if edge_dim is not None and (isinstance(edge_dim, bool) or not isinstance(edge_dim, numbers.Integral)
                                     or edge_dim < 1):
            raise ValueError(f"edge_dim must be None or a positive integer, got {edge_dim!r}")
        check_fill_value(fill_value)
        self.in_channels = in_channels
        self.out_channels = int(out_channels)
        self.heads = int(heads)
        self.concat = bool(concat)
        self.negative_slope = float(negative_slope)
        self.dropout = float(dropout)
        self.add_self_loops = bool(add_self_loops)
        self.edge_dim = None if edge_dim is None else int(edge_dim)
        self.fill_value = fill_value
        self.residual = bool(residual)
        self.backend = backend
        return ins

    def _init_residual_and_bias(self, in_dst: int, bias: bool) -> None:
        """PyG's ``res`` (a linear map of the destinations' inputs) and ``bias``, or ``None``."""
        if self.residual:
            self.res = _linear(in_dst, self._total_out(), bias=False)
        else:
            self.register_parameter("res", None)
        if bias:
            self.bias = torch.nn.Parameter(torch.empty(self._total_out()))
        else:
            self.register_parameter("bias", None)

    def _total_out(self) -> int:
        return self.out_channels * (self.heads if self.concat else 1)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.in_channels}, {self.out_channels}, heads={self.heads})"

    # ------------------------------------------------------------------ graph and edge features
    def _graph(self, edge_index: Graph, n_src: int, n_dst: int, device: torch.device) -> LayerGraph:
        if isinstance(edge_index, (CSRGraph, TorchGraph)):
            return graph_as_given(edge_index, n_src, n_dst, device)
        if isinstance(edge_index, torch.Tensor) and edge_index.device != device:
            raise TypeError(f"edge_index is on {edge_index.device} but the features are on {device}")
        return layer_graph(edge_index, n_src, n_dst, self.add_self_loops)

    def _layer_edge_attr(self, edge_attr: torch.Tensor, lg: LayerGraph, edge_index: Graph,
                         like: torch.Tensor) -> torch.Tensor:
        """``edge_attr`` in the layer's edge order, ``(nnz, D)``: loops' features appended as PyG does."""
        if not isinstance(edge_attr, torch.Tensor):
            raise TypeError(f"edge_attr must be a torch.Tensor, got {type(edge_attr).__name__}")
        if edge_attr.dtype != like.dtype or edge_attr.device != like.device:
            raise TypeError(f"edge_attr must have the features' dtype and device ({like.dtype}, {like.device}), "
                            f"got {edge_attr.dtype} on {edge_attr.device}")
        ea = edge_attr.view(-1, 1) if edge_attr.dim() == 1 else edge_attr
        if ea.dim() != 2 or ea.shape[0] != lg.num_input_edges:
            raise ValueError(f"edge_attr must have shape ({lg.num_input_edges}, edge_dim) or "
                             f"({lg.num_input_edges},), one row per edge, got {tuple(edge_attr.shape)}")
        if lg.keep is not None:
            ea = ea[lg.keep]
        if lg.num_loops:
            assert isinstance(edge_index, torch.Tensor)
            loops = loop_edge_attr(ea, lg.kept_dst(edge_index), lg.num_loops, lg.n_dst, self.fill_value)
            ea = torch.cat([ea, loops], dim=0)
        return ea

    def _edge_projection(self, edge_attr: torch.Tensor, lg: LayerGraph, edge_index: Graph,
                         like: torch.Tensor) -> torch.Tensor:
        """``lin_edge`` of the edge features, ``(nnz, H, C)``, in CSR order."""
        ea = self._layer_edge_attr(edge_attr, lg, edge_index, like)
        e = self.lin_edge(ea).view(-1, self.heads, self.out_channels)
        return e if lg.perm is None else e[lg.perm]

    # ------------------------------------------------------------------ dropout and output
    def _active_dropout(self) -> float:
        return self.dropout if self.training and self.dropout > 0.0 else 0.0

    def _finish(self, out: torch.Tensor, res: torch.Tensor | None) -> torch.Tensor:
        out = out.reshape(-1, self.heads * self.out_channels) if self.concat else out.mean(dim=1)
        if res is not None:
            out = out + res
        if self.bias is not None:
            out = out + self.bias
        return out

    def _weights(self, scores: torch.Tensor, lg: LayerGraph, p: float, seed: torch.Tensor | None) -> torch.Tensor:
        """Attention weights ``(nnz, H)`` in CSR order from raw scores, with the operator's dropout."""
        alpha = edge_softmax(scores, lg.rows(), lg.n_dst)
        if p > 0.0:
            assert seed is not None
            alpha = alpha * dropout_scale(seed, p, lg.nnz, self.heads, alpha)
        return alpha

    @staticmethod
    def _aggregate(alpha: torch.Tensor, v: torch.Tensor, lg: LayerGraph) -> torch.Tensor:
        """Unfused ``out_i = sum_j alpha_ij v_j``, ``(n_dst, H, C)``, by gather and scatter."""
        return v.new_zeros((lg.n_dst,) + tuple(v.shape[1:])).index_add(0, lg.rows(),
                                                                        alpha.unsqueeze(-1) * v[lg.cols()])

    @staticmethod
    def _returned(out: torch.Tensor, alpha: torch.Tensor, lg: LayerGraph,
                  edge_index: Graph) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        ei = edge_index if isinstance(edge_index, torch.Tensor) else None
        return out, (lg.edge_index_out(ei), lg.to_layer_order(alpha))


class GATConv(_GATBase):
    r"""PyG's ``GATConv`` (Veličković et al., "Graph Attention Networks") on the fused operator.

    .. math::
        \alpha_{ij} = \mathrm{softmax}_j\,\mathrm{LeakyReLU}(a_{dst}^\top \Theta_{dst} x_i
        + a_{src}^\top \Theta_{src} x_j + a_{e}^\top \Theta_e e_{ij}), \qquad
        x'_i = \textstyle\sum_j \alpha_{ij} \Theta_{src} x_j

    Parameters
    ----------
    in_channels : int or (int, int)
        Input size, or ``(src, dst)`` sizes of a bipartite layer (separate ``lin_src``
        and ``lin_dst``). Lazy ``-1`` is not supported.
    out_channels : int
        Features per head.
    heads : int
        Attention heads.
    concat : bool
        Concatenate the heads (``heads * out_channels`` outputs), else average them.
    negative_slope : float
        LeakyReLU slope.
    dropout : float
        Attention dropout in training mode: the operator's counter-based rule, with a
        seed drawn from PyTorch's default generator per call (``torch.manual_seed``
        makes runs reproducible; the dropped edges differ from PyG's).
    add_self_loops : bool
        Remove the loops of ``edge_index`` and add one per node (PyG's rule), for an
        ``edge_index``; a ``CSRGraph``/``TorchGraph`` is attended over as given.
    edge_dim : int, optional
        Edge feature size: adds ``lin_edge`` and ``att_edge``.
    fill_value : str, number or tensor
        Features of the added loops: ``"mean"`` (default), ``"add"``, ``"min"``,
        ``"max"``, ``"mul"`` of the edges into the node, or a constant.
    bias : bool
        Learn an output bias.
    residual : bool
        Add a learned projection of the destination features (``res``).
    backend : str, optional
        The operator's backend (``"numpy"``, ``"numba"``, ``"cupy"``); by default the
        registry's choice for the tensors' device. Not a PyG argument.

    Notes
    -----
    Parameters (PyG's names and shapes): ``lin.weight (H*C, F)`` or ``lin_src.weight``,
    ``lin_dst.weight``; ``att_src``, ``att_dst``, ``att_edge (1, H, C)``;
    ``lin_edge.weight (H*C, edge_dim)``; ``res.weight (total_out, F_dst)``;
    ``bias (total_out,)``.
    """

    def __init__(self, in_channels: int | tuple[int, int], out_channels: int, heads: int = 1, concat: bool = True,
                 negative_slope: float = 0.2, dropout: float = 0.0, add_self_loops: bool = True,
                 edge_dim: int | None = None, fill_value: float | torch.Tensor | str = "mean", bias: bool = True,
                 residual: bool = False, *, backend: str | None = None, **kwargs: Any) -> None:
        super().__init__()
        ins = self._init_options(in_channels, out_channels, heads, concat, negative_slope, dropout, add_self_loops,
                                 edge_dim, fill_value, residual, backend, kwargs)
        hc = self.heads * self.out_channels
        self.lin = self.lin_src = self.lin_dst = None
        if len(ins) == 1 and not isinstance(in_channels, (tuple, list)):
            self.lin = _linear(ins[0], hc, bias=False)
        else:
            self.lin_src = _linear(ins[0], hc, bias=False)
            self.lin_dst = _linear(ins[-1], hc, bias=False)
        self.att_src = torch.nn.Parameter(torch.empty(1, self.heads, self.out_channels))
        self.att_dst = torch.nn.Parameter(torch.empty(1, self.heads, self.out_channels))
        if self.edge_dim is not None:
            self.lin_edge = _linear(self.edge_dim, hc, bias=False)
            self.att_edge = torch.nn.Parameter(torch.empty(1, self.heads, self.out_channels))
        else:
            self.lin_edge = None
            self.register_parameter("att_edge", None)
        self._init_residual_and_bias(ins[-1], bias)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PyG's initialisation: Glorot weights and attention vectors, zero bias."""
        for lin in (self.lin, self.lin_src, self.lin_dst, self.lin_edge, self.res):
            if lin is not None:
                glorot_(lin.weight)
        for att in (self.att_src, self.att_dst, self.att_edge):
            if att is not None:
                glorot_(att)
        if self.bias is not None:
            torch.nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor | tuple[torch.Tensor, torch.Tensor | None], edge_index: Graph,
                edge_attr: torch.Tensor | None = None, size: tuple[int, int] | None = None,
                return_attention_weights: bool | None = None
                ) -> torch.Tensor | tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """The layer's output, as PyG's ``GATConv.forward``.

        Parameters
        ----------
        x : torch.Tensor or (torch.Tensor, torch.Tensor or None)
            Node features ``(N, F)``, or ``(x_src, x_dst)`` of a bipartite graph
            (``x_dst=None``: no destination term, ``N_src`` outputs).
        edge_index : torch.Tensor, CSRGraph or TorchGraph
            PyG's ``(2, E)`` ``edge_index`` (its graph, with self-loops per
            ``add_self_loops``, is built once per tensor and cached), or the graph to
            attend over as given (``(n_dst, n_src)``, loops included); inside
            :func:`torch.compile` pass a ``TorchGraph``
            (:func:`sparsegat.torch.gat_graph`).
        edge_attr : torch.Tensor, optional
            ``(E, edge_dim)`` or ``(E,)`` edge features, in the order of ``edge_index``
            (CSR order for a graph). Ignored without ``edge_dim``, as PyG does.
        size : (int, int), optional
            ``(N_src, N_dst)``, as PyG's ``size``.
        return_attention_weights : bool, optional
            When true, also return ``(edge_index, alpha)``: the edges attended over
            (loops included) in PyG's order, ``(2, E')``, and their weights
            ``(E', heads)``, differentiable, after dropout.

        Returns
        -------
        torch.Tensor ``(N_dst, heads * out_channels)`` (``out_channels`` when
        ``concat=False``), and the pair above when asked.
        """
        H, C = self.heads, self.out_channels
        res, h_src, h_dst = self._project(x)
        n_src = h_src.shape[0]
        n_dst = h_dst.shape[0] if h_dst is not None else n_src
        if size is not None:
            n_src, n_dst = _check_size(size, n_src, n_dst, h_dst is not None)
        lg = self._graph(edge_index, n_src, n_dst, h_src.device)
        k = (h_src * self.att_src).sum(dim=-1)
        q = (h_dst * self.att_dst).sum(dim=-1) if h_dst is not None else k.new_zeros((n_dst, H))
        p = self._active_dropout()
        seed = draw_seed() if p > 0.0 else None
        alpha = None
        if edge_attr is None or self.lin_edge is None:
            out = attention(lg.tg, q, k, h_src, score="additive", negative_slope=self.negative_slope,
                            dropout=p, seed=seed, backend=self.backend)
            if return_attention_weights:
                alpha = self._weights(self._scores(q, k, None, lg), lg, p, seed)
        else:  # unfused: the edge term inside the LeakyReLU
            e = self._edge_projection(edge_attr, lg, edge_index, h_src)
            alpha = self._weights(self._scores(q, k, (e * self.att_edge).sum(dim=-1), lg), lg, p, seed)
            out = self._aggregate(alpha, h_src, lg)
        out = self._finish(out, res)
        if not return_attention_weights:
            return out
        assert alpha is not None
        return self._returned(out, alpha, lg, edge_index)

    def _scores(self, q: torch.Tensor, k: torch.Tensor, e: torch.Tensor | None, lg: LayerGraph) -> torch.Tensor:
        """``(nnz, H)`` raw GAT scores in CSR order."""
        z = q[lg.rows()] + k[lg.cols()]
        if e is not None:
            z = z + e
        return F.leaky_relu(z, self.negative_slope)

    def _project(self, x: Any) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
        """``(res, h_src, h_dst)``: the residual term and the projected features ``(N, H, C)``."""
        H, C = self.heads, self.out_channels
        if isinstance(x, torch.Tensor):
            check_features("x", x)
            res = self.res(x) if self.res is not None else None
            if self.lin is not None:
                h_src = h_dst = self.lin(x).view(-1, H, C)
            else:
                h_src, h_dst = self.lin_src(x).view(-1, H, C), self.lin_dst(x).view(-1, H, C)
            return res, h_src, h_dst
        x_src, x_dst = _pair(x)
        check_features("x_src", x_src)
        if x_dst is not None:
            check_features("x_dst", x_dst)
        res = self.res(x_dst) if x_dst is not None and self.res is not None else None
        lin_src = self.lin if self.lin is not None else self.lin_src
        lin_dst = self.lin if self.lin is not None else self.lin_dst
        h_src = lin_src(x_src).view(-1, H, C)
        h_dst = lin_dst(x_dst).view(-1, H, C) if x_dst is not None else None
        return res, h_src, h_dst


class GATv2Conv(_GATBase):
    r"""PyG's ``GATv2Conv`` (Brody et al., "How Attentive are Graph Attention Networks?").

    .. math::
        \alpha_{ij} = \mathrm{softmax}_j\, a^\top \mathrm{LeakyReLU}(\Theta_r x_i + \Theta_l x_j
        + \Theta_e e_{ij}), \qquad x'_i = \textstyle\sum_j \alpha_{ij} \Theta_l x_j

    Parameters are those of :class:`GATConv`, plus ``share_weights`` (``lin_r`` is
    ``lin_l``); ``bias`` also gives ``lin_l`` and ``lin_r`` their biases, as in PyG.
    Without edge features the attention runs in the fused operator (score
    ``"gatv2"``). With ``edge_dim`` and ``edge_attr`` the edge term is inside the
    LeakyReLU, per feature, where the operator cannot take it: that call runs
    **unfused**, in plain PyTorch (PyG's algorithm: ``(nnz, H, C)`` edge tensors), with
    the operator's dropout rule.

    Notes
    -----
    Parameters (PyG's names and shapes): ``lin_l.weight (H*C, F_src)``, ``lin_l.bias``,
    ``lin_r.weight (H*C, F_dst)``, ``lin_r.bias``, ``att (1, H, C)``,
    ``lin_edge.weight (H*C, edge_dim)``, ``res.weight``, ``bias``.
    """

    def __init__(self, in_channels: int | tuple[int, int], out_channels: int, heads: int = 1, concat: bool = True,
                 negative_slope: float = 0.2, dropout: float = 0.0, add_self_loops: bool = True,
                 edge_dim: int | None = None, fill_value: float | torch.Tensor | str = "mean", bias: bool = True,
                 share_weights: bool = False, residual: bool = False, *, backend: str | None = None,
                 **kwargs: Any) -> None:
        super().__init__()
        ins = self._init_options(in_channels, out_channels, heads, concat, negative_slope, dropout, add_self_loops,
                                 edge_dim, fill_value, residual, backend, kwargs)
        self.share_weights = bool(share_weights)
        hc = self.heads * self.out_channels
        self.lin_l = _linear(ins[0], hc, bias=bias)
        self.lin_r = self.lin_l if self.share_weights else _linear(ins[-1], hc, bias=bias)
        self.att = torch.nn.Parameter(torch.empty(1, self.heads, self.out_channels))
        self.lin_edge = _linear(self.edge_dim, hc, bias=False) if self.edge_dim is not None else None
        self._init_residual_and_bias(ins[-1], bias)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PyG's initialisation: Glorot weights and ``att``, fan-in uniform ``lin_*`` biases, zero bias."""
        for lin in (self.lin_l, self.lin_r, self.lin_edge, self.res):
            if lin is not None:
                glorot_(lin.weight)
                if lin.bias is not None:
                    fan_in_uniform_(lin.bias, lin.in_features)
        glorot_(self.att)
        if self.bias is not None:
            torch.nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor | tuple[torch.Tensor, torch.Tensor], edge_index: Graph,
                edge_attr: torch.Tensor | None = None, return_attention_weights: bool | None = None
                ) -> torch.Tensor | tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """The layer's output, as PyG's ``GATv2Conv.forward``.

        Arguments and results as in :meth:`GATConv.forward` (without ``size``);
        ``x_dst`` may not be None (as in PyG). ``edge_attr`` without ``edge_dim``
        raises ``ValueError``.
        """
        H, C = self.heads, self.out_channels
        if isinstance(x, torch.Tensor):
            check_features("x", x)
            res = self.res(x) if self.res is not None else None
            h_l = self.lin_l(x).view(-1, H, C)
            h_r = h_l if self.share_weights else self.lin_r(x).view(-1, H, C)
        else:
            x_l, x_r = _pair(x)
            if x_r is None:
                raise ValueError("GATv2Conv needs destination features: x=(x_src, x_dst) with x_dst not None")
            check_features("x_src", x_l)
            check_features("x_dst", x_r)
            res = self.res(x_r) if self.res is not None else None
            h_l, h_r = self.lin_l(x_l).view(-1, H, C), self.lin_r(x_r).view(-1, H, C)
        if edge_attr is not None and self.lin_edge is None:
            raise ValueError("edge_attr was given but the layer has no edge_dim (PyG asserts here too)")
        lg = self._graph(edge_index, h_l.shape[0], h_r.shape[0], h_l.device)
        att = self.att.reshape(H, C)
        p = self._active_dropout()
        seed = draw_seed() if p > 0.0 else None
        alpha = None
        if edge_attr is None:
            out = attention(lg.tg, h_r, h_l, h_l, score="gatv2", att=att, negative_slope=self.negative_slope,
                            dropout=p, seed=seed, backend=self.backend)
            if return_attention_weights:
                alpha = self._weights(self._scores(h_r, h_l, None, att, lg), lg, p, seed)
        else:  # unfused: the edge term inside the LeakyReLU
            e = self._edge_projection(edge_attr, lg, edge_index, h_l)
            alpha = self._weights(self._scores(h_r, h_l, e, att, lg), lg, p, seed)
            out = self._aggregate(alpha, h_l, lg)
        out = self._finish(out, res)
        if not return_attention_weights:
            return out
        assert alpha is not None
        return self._returned(out, alpha, lg, edge_index)

    def _scores(self, h_r: torch.Tensor, h_l: torch.Tensor, e: torch.Tensor | None, att: torch.Tensor,
                lg: LayerGraph) -> torch.Tensor:
        """``(nnz, H)`` raw GATv2 scores in CSR order."""
        z = h_r[lg.rows()] + h_l[lg.cols()]
        if e is not None:
            z = z + e
        return (F.leaky_relu(z, self.negative_slope) * att).sum(dim=-1)


def _pair(x: Any) -> tuple[Any, Any]:
    if not isinstance(x, (tuple, list)) or len(x) != 2:
        raise TypeError(f"x must be a tensor or a pair (x_src, x_dst), got {type(x).__name__}")
    return x[0], x[1]


def _check_size(size: Any, n_src: int, n_dst: int, dst_given: bool) -> tuple[int, int]:
    """PyG's ``size=(N_src, N_dst)``: must agree with the features it describes."""
    if not isinstance(size, (tuple, list)) or len(size) != 2:
        raise ValueError(f"size must be a pair (N_src, N_dst), got {size!r}")
    s_src, s_dst = int(size[0]), int(size[1])
    if s_src != n_src or (dst_given and s_dst != n_dst):
        raise ValueError(f"size={tuple(size)} disagrees with the features: {n_src} source"
                         + (f" and {n_dst} destination nodes" if dst_given else " nodes"))
    return s_src, s_dst
