"""What GATConv and GATv2Conv share: PyG's input forms (one array or a pair
``(x_src, x_dst)``, ``in_channels`` as an int or a pair), edge features with their
self-loop fill, heads concatenated or averaged, residual, bias, and the gradients of
the input projections."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from ..arrays import array_kind, namespace
from ..graph import CSRGraph
from .base import AttentionLayer
from .edges import LoopedGraph, check_fill_value, loop_edge_attr, loop_edge_attr_backward
from .module import as_input, check_positive_int, input_kind, is_sparse, sparse_dense_matmul, sparse_t_matmul


class NodeInputs(NamedTuple):
    """The node features of GATConv/GATv2Conv checked against the graph."""

    x_src: Any       #: (n_src, in_src) in the layer's dtype (sparse inputs as CSR)
    x_dst: Any       #: (n_dst, in_dst): the second array of a pair, or the first n_dst rows of a
    #:                  single array; None for a pair (x_src, None)
    kind: str        #: "numpy" or "cupy"
    src_sparse: bool
    dst_sparse: bool
    single: bool     #: one array: x_dst is x_src[:n_dst]


class EdgeInputs(NamedTuple):
    """Edge features checked against the input graph and carried onto the graph used."""

    attr: Any                   #: (nnz of the graph used, edge_dim), the layer's dtype
    looped: LoopedGraph | None  #: the self-loop map (None without add_self_loops)
    nnz: int                    #: edges of the input graph
    shape: tuple[int, ...]      #: shape of the edge_attr given (its gradient gets it)


def check_in_dim(in_dim: Any) -> tuple[int, int, bool]:
    """``(in_src, in_dst, pair)`` from an int or a pair ``(in_src, in_dst)`` (PyG's ``in_channels``)."""
    if isinstance(in_dim, (tuple, list)):
        if len(in_dim) != 2:
            raise ValueError(f"in_dim must be a positive integer or a pair (in_src, in_dst), got {in_dim!r}")
        return check_positive_int("in_dim[0]", in_dim[0]), check_positive_int("in_dim[1]", in_dim[1]), True
    n = check_positive_int("in_dim", in_dim)
    return n, n, False


class HeadsLayer(AttentionLayer):
    """Base of GATConv and GATv2Conv: inputs, edge features, heads, residual, bias."""

    #: False for GATv2Conv: a pair (x_src, None) is refused (PyG asserts x_r is not None).
    allows_missing_dst = True

    def __init__(self, in_dim: Any, out_dim: int, heads: int, concat: bool, negative_slope: float,
                 dropout: float, add_self_loops: bool, residual: bool, edge_dim: int | None,
                 fill_value: Any, dtype: Any, seed: Any, backend: str | None) -> None:
        super().__init__(dtype, seed, backend, add_self_loops, dropout)
        self.in_src, self.in_dst, self.pair_in_dim = check_in_dim(in_dim)
        self.in_dim = (self.in_src, self.in_dst) if self.pair_in_dim else self.in_src
        self.out_dim = check_positive_int("out_dim", out_dim)
        self.heads = check_positive_int("heads", heads)
        self.concat = bool(concat)
        self.negative_slope = float(negative_slope)
        self.residual = bool(residual)
        self.total_out = self.heads * self.out_dim if self.concat else self.out_dim
        self.edge_dim = None if edge_dim is None else check_positive_int("edge_dim", edge_dim)
        self.fill_value = check_fill_value(fill_value, self.edge_dim)
        #: Gradient of the ``edge_attr`` of the forward the latest backward belonged to (its shape,
        #: CSR order of the graph given); None without edge features or with ``input_grad=False``.
        self.edge_attr_grad: Any = None

    def __call__(self, x: Any, g: Any = None, edge_attr: Any = None, *, training: bool | None = None,
                 return_attention_weights: bool = False) -> Any:
        return self.forward(x, g, edge_attr, training=training, return_attention_weights=return_attention_weights)

    # ------------------------------------------------------------------ inputs
    def _node_input(self, x: Any, name: str, rows: int, cols: int, what: str) -> tuple[Any, str, bool]:
        kind = input_kind(x)
        arr, sparse = as_input(x, self.dtype, name)
        if arr.shape[0] != rows:
            raise ValueError(f"{type(self).__name__}: {name} has {arr.shape[0]} rows but the graph has "
                             f"{what}={rows}")
        if arr.shape[1] != cols:
            raise ValueError(f"{type(self).__name__} expects {cols} input features in {name}, got {name} of "
                             f"shape {tuple(arr.shape)}")
        return arr, kind, sparse

    def _node_inputs(self, x: Any, g2: CSRGraph) -> NodeInputs:
        """``x`` (one array, or a pair ``(x_src, x_dst)``) checked against the graph."""
        n_dst, n_src = g2.shape
        if isinstance(x, (tuple, list)):
            return self._pair_inputs(x, n_dst, n_src)
        if self.in_src != self.in_dst:
            raise ValueError(f"{type(self).__name__}(in_dim={self.in_dim}) has sources and destinations of "
                             f"different widths: pass x=(x_src, x_dst), got one array")
        inp = self._inputs(x, g2, self.in_src)
        return NodeInputs(inp.x, inp.x_dst, inp.kind, inp.sparse, inp.sparse, True)

    def _pair_inputs(self, x: Any, n_dst: int, n_src: int) -> NodeInputs:
        if len(x) != 2:
            raise ValueError(f"{type(self).__name__} takes x as one array or a pair (x_src, x_dst), "
                             f"got a {type(x).__name__} of {len(x)}")
        x_src, kind, src_sparse = self._node_input(x[0], "x_src", n_src, self.in_src, "n_src")
        if x[1] is None:
            if not self.allows_missing_dst:
                raise ValueError(f"{type(self).__name__} needs destination features: x=(x_src, None) is "
                                 f"refused (PyG's GATv2Conv asserts x_r is not None)")
            return NodeInputs(x_src, None, kind, src_sparse, False, False)
        x_dst, dkind, dst_sparse = self._node_input(x[1], "x_dst", n_dst, self.in_dst, "n_dst")
        if dkind != kind:
            raise TypeError(f"{type(self).__name__}: x_src is a {kind} array but x_dst a {dkind} array")
        return NodeInputs(x_src, x_dst, kind, src_sparse, dst_sparse, False)

    def _edge_inputs(self, edge_attr: Any, g: CSRGraph, lg: LoopedGraph | None, kind: str) -> EdgeInputs | None:
        """``edge_attr`` (CSR order of ``g``) checked and carried onto the graph used, or None."""
        if edge_attr is None:
            return None
        name = type(self).__name__
        if self.edge_dim is None:
            raise ValueError(f"{name} got edge_attr but was built without edge_dim (pass edge_dim= to use "
                             f"edge features)")
        if is_sparse(edge_attr) or array_kind(edge_attr) is None or isinstance(edge_attr, np.ma.MaskedArray):
            what = "a masked array" if isinstance(edge_attr, np.ma.MaskedArray) else type(edge_attr).__name__
            raise TypeError(f"{name}: edge_attr must be a dense {kind} array, got {what}")
        if array_kind(edge_attr) != kind:
            raise TypeError(f"{name}: edge_attr is a {array_kind(edge_attr)} array but x is a {kind} array")
        if edge_attr.dtype.kind != "f":
            raise TypeError(f"{name}: edge_attr must be a float array, got dtype {edge_attr.dtype}")
        shape = tuple(edge_attr.shape)
        ok = shape == (g.nnz, self.edge_dim) or (self.edge_dim == 1 and shape == (g.nnz,))
        if not ok:
            raise ValueError(f"{name}: edge_attr must have shape (nnz, edge_dim) = ({g.nnz}, {self.edge_dim})"
                             f"{' or (nnz,)' if self.edge_dim == 1 else ''}, one row per edge of g in CSR "
                             f"order; got {shape}")
        ea = edge_attr.reshape(g.nnz, self.edge_dim).astype(self.dtype, copy=False)
        if lg is not None:
            ea = loop_edge_attr(lg, ea, self.fill_value)
        return EdgeInputs(ea, lg, g.nnz, shape)

    # ------------------------------------------------------------------ output
    def _output(self, out: Any, x_dst: Any, kind: str) -> Any:
        """The layer's output from the operator's ``out``: heads, then residual and bias."""
        # Never modify `out` in place: the backward pass reads it from ctx.
        n_dst = out.shape[0]
        y = out.reshape(n_dst, self.heads * self.out_dim) if self.concat else out.mean(axis=1)
        if self.residual and x_dst is not None:
            y = y + sparse_dense_matmul(x_dst, self._param("W_res", kind), self.backend)
        if "bias" in self.params:
            y = y + self._param("bias", kind)
        return y

    def _operator_dout(self, dy: Any, n_dst: int) -> Any:
        """The bias gradient (into ``grads``) and the operator's ``dout`` ``(n_dst, H, C)``."""
        H, C = self.heads, self.out_dim
        if "bias" in self.params:
            self.grads["bias"] = dy.sum(axis=0)
        if self.concat:
            return dy.reshape(n_dst, H, C)
        return namespace(dy).broadcast_to((dy * (1.0 / H))[:, None, :], (n_dst, H, C))

    # ------------------------------------------------------------------ backward helpers
    def _projection_grads(self, inp: NodeInputs, d_src: Any, d_dst: Any, w: tuple[str, str | None],
                          b: tuple[str | None, str | None]) -> Any:
        """Gradients of ``x_src @ W_src + b_src`` and ``x_dst @ W_dst + b_dst`` into ``grads``.

        ``w``/``b`` name the parameters; a ``None`` destination weight means both sides
        use the source one (a shared ``W``, or ``share_weights``). ``d_dst`` is None when
        there are no destination features. Returns ``d_dst``, or None when it was folded
        into ``d_src`` (one array input with a shared weight: ``d_src`` is updated in place).
        """
        shared = w[1] is None
        if shared and inp.single and d_dst is not None:
            d_src[:d_dst.shape[0]] += d_dst
            d_dst_left = None
        else:
            d_dst_left = d_dst
        g_src = sparse_t_matmul(inp.x_src, d_src)
        b_src = d_src.sum(axis=0) if b[0] is not None else None
        if shared and d_dst_left is not None:
            g_src += sparse_t_matmul(inp.x_dst, d_dst_left)
            if b_src is not None:
                b_src += d_dst_left.sum(axis=0)
        self.grads[w[0]] = g_src
        if b[0] is not None:
            self.grads[b[0]] = b_src
        if not shared:
            self._set_or_drop(w[1], None if d_dst is None else sparse_t_matmul(inp.x_dst, d_dst))
            if b[1] is not None:
                self._set_or_drop(b[1], None if d_dst is None else d_dst.sum(axis=0))
        return d_dst_left

    def _set_or_drop(self, name: str, grad: Any) -> None:
        """``grads[name] = grad``, or no entry when the forward did not use the parameter (PyTorch's None)."""
        if grad is None:
            self.grads.pop(name, None)
        else:
            self.grads[name] = grad

    def _input_grads(self, inp: NodeInputs, d_src: Any, d_dst: Any, W_src: Any, W_dst: Any, dy: Any) -> Any:
        """The residual's weight gradient, and the input gradient in the input's form.

        ``d_dst`` None means no destination path (folded into ``d_src``, or absent).
        """
        has_res = self.residual and inp.x_dst is not None
        if self.residual:
            self._set_or_drop("W_res", sparse_t_matmul(inp.x_dst, dy) if has_res else None)
        if not self.input_grad:
            return None if inp.single else (None, None)
        W_res = self.params["W_res"] if has_res else None
        if inp.single:
            if inp.src_sparse:
                return None
            dx = d_src @ W_src.T
            n_dst = dy.shape[0]
            if d_dst is not None:
                dx[:n_dst] += d_dst @ W_dst.T
            if W_res is not None:
                dx[:n_dst] += dy @ W_res.T
            return dx
        dx_src = None if inp.src_sparse else d_src @ W_src.T
        dx_dst = None
        if inp.x_dst is not None and not inp.dst_sparse:
            dx_dst = d_dst @ W_dst.T if d_dst is not None else namespace(dy).zeros(inp.x_dst.shape, self.dtype)
            if W_res is not None:
                dx_dst += dy @ W_res.T
        return dx_src, dx_dst

    def _edge_attr_grad(self, edges: EdgeInputs, d_attr: Any) -> Any:
        """The gradient of the ``edge_attr`` given, from that of the edge features used."""
        if edges.looped is not None:
            d_attr = loop_edge_attr_backward(edges.looped, d_attr, self.fill_value, edges.nnz)
        return d_attr.reshape(edges.shape)

    def _edge_param_grads_missing(self, names: tuple[str, ...]) -> None:
        """No edge features in this forward: the edge parameters get no gradient."""
        for name in names:
            self.grads.pop(name, None)
        self.edge_attr_grad = None

    def extra_repr(self) -> str:
        edge = f", edge_dim={self.edge_dim}, fill_value={self.fill_value!r}" if self.edge_dim else ""
        return (f"{self.in_dim}, {self.out_dim}, heads={self.heads}, concat={self.concat}, "
                f"dropout={self.dropout}, residual={self.residual}{edge}")


def leaky_relu(xp: Any, z: Any, slope: float) -> Any:
    """LeakyReLU as a new array (``max(z, slope*z)`` in two passes for slopes in [0, 1])."""
    if 0.0 <= slope <= 1.0:
        out = z * slope
        return xp.maximum(z, out, out=out)
    return xp.where(z > 0, z, z * slope)


def leaky_relu_grad(xp: Any, z: Any, slope: float) -> Any:
    """Its derivative, with the library's convention at the kink: ``slope`` at 0."""
    return xp.where(z > 0, xp.ones((), dtype=z.dtype), xp.asarray(slope, dtype=z.dtype))
