"""The same operations with PyTorch Geometric, for comparison (CPU, and CUDA with a GPU).

Backends ``pyg`` (torch on the CPU) and ``pyg-cuda`` (torch on the GPU), used
only when ``torch`` and ``torch_geometric`` can be imported; torch is imported
only when one of them is selected.

``forward`` / ``backward``
    The attention operator written the way PyG's attention convolutions
    (``GATConv``, ``GATv2Conv``, ``TransformerConv``) compute it inside
    ``MessagePassing``: gather per-edge ``q_i`` and ``k_j`` from the edge index,
    per-edge scores, ``torch_geometric.utils.softmax`` over each destination,
    per-edge messages ``a_ij * v_j`` and ``torch_geometric.utils.scatter`` (sum)
    into the destinations. Per-edge tensors of size ``nnz*H*D`` are materialised
    (sparsegat never does), and backward is torch autograd
    (``torch.autograd.grad`` with ``retain_graph=True`` on a graph built by one
    untimed forward). The timed forward records the autograd graph, as a
    training forward does (sparsegat's forward likewise returns the context its
    backward needs).
``layer``
    ``torch_geometric.nn.GATConv(in_dim, Dv, heads=H)`` (self-loops added by the
    layer, as sparsegat's) forward plus ``torch.autograd.grad`` of ``x`` and
    every parameter.

Helpers of the layer benchmarks in ``bench/``: :func:`edge_index` (a graph as
PyG's edge index), :func:`pyg_gatconv` (PyG's ``GATConv`` holding given
parameters) and :func:`pyg_gatconv_grads` (its gradients in sparsegat's layout).
"""

from __future__ import annotations

import importlib.util
import math
from typing import Any, Callable

import numpy as np

from ..arrays import to_numpy
from ..graph import CSRGraph
from .graphs import BenchGraph
from .runners import NEGATIVE_SLOPE, Case, HostInputs, Skip

PYG_BACKENDS = ("pyg", "pyg-cuda")
COSINE_EPS = 1e-8


def pyg_status(name: str) -> str | None:
    """None when PyG backend ``name`` can run here, else the reason it cannot."""
    for module in ("torch", "torch_geometric"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed"
    try:
        import torch
        import torch_geometric  # noqa: F401
    except Exception as exc:  # a broken install is "not available", not a crash
        return f"cannot import torch/torch_geometric ({type(exc).__name__}: {exc})"
    if name == "pyg-cuda" and not torch.cuda.is_available():
        return "torch sees no CUDA GPU"
    return None


def edge_attention(q: Any, k: Any, v: Any, att: Any, src: Any, dst: Any, n_dst: int, score: str,
                   tau: float = 1.0, negative_slope: float = NEGATIVE_SLOPE) -> Any:
    """sparsegat's attention operator in PyG's edge-wise style (see the module docstring)."""
    import torch
    import torch.nn.functional as F
    from torch_geometric.utils import scatter, softmax

    if score == "additive":
        s = F.leaky_relu(q[dst] + k[src], negative_slope)
    elif score == "gatv2":
        s = (F.leaky_relu(q[dst] + k[src], negative_slope) * att).sum(-1)
    elif score in ("dot", "scaled_dot"):
        s = (q[dst] * k[src]).sum(-1)
        if score == "scaled_dot":
            s = s / math.sqrt(q.shape[-1])
    elif score == "cosine":
        qn = q / q.norm(dim=-1, keepdim=True).clamp_min(COSINE_EPS)
        kn = k / k.norm(dim=-1, keepdim=True).clamp_min(COSINE_EPS)
        s = tau * (qn[dst] * kn[src]).sum(-1)
    elif score == "euclidean":
        s = -tau * (q[dst] - k[src]).pow(2).sum(-1)
    else:
        raise Skip(f"score {score!r} has no PyG version here")
    a = softmax(s, dst, num_nodes=n_dst)
    return scatter(a.unsqueeze(-1) * v[src], dst, dim=0, dim_size=n_dst, reduce="sum")


def edge_index(g: CSRGraph) -> np.ndarray:
    """PyG's edge index of ``g``: ``(2, nnz)`` int64, sources then destinations, in CSR order."""
    return np.stack([to_numpy(g.indices), to_numpy(g.row_ids())]).astype(np.int64)


def pyg_gatconv(params: dict[str, Any], *, add_self_loops: bool = True,
                negative_slope: float = NEGATIVE_SLOPE, device: str = "cpu") -> Any:
    """``torch_geometric.nn.GATConv`` on ``device`` holding copies of sparsegat-layout ``params``.

    ``params`` as :func:`sparsegat.bench.layers.sparsegat_gatconv` takes them (NumPy or
    CuPy arrays); PyG's ``lin.weight`` is ``W.T``, its ``att_src`` is ``att_src[None]``.
    No dropout; heads concatenated.
    """
    import torch
    from torch_geometric.nn import GATConv

    W, att_src, att_dst, bias = (to_numpy(params[k]) for k in ("W", "att_src", "att_dst", "bias"))
    heads, out = att_src.shape
    conv = GATConv(W.shape[0], out, heads=heads, negative_slope=negative_slope, dropout=0.0,
                   add_self_loops=add_self_loops).to(device)

    def t(a: np.ndarray) -> Any:
        return torch.as_tensor(np.ascontiguousarray(a), device=device)

    with torch.no_grad():
        conv.lin.weight.copy_(t(W.T))
        conv.att_src.copy_(t(att_src)[None])
        conv.att_dst.copy_(t(att_dst)[None])
        conv.bias.copy_(t(bias))
    return conv


def pyg_gatconv_grads(conv: Any) -> dict[str, np.ndarray]:
    """The parameter gradients of a PyG ``GATConv`` after ``backward``, in sparsegat's layout."""
    def host(t: Any) -> np.ndarray:
        return t.detach().cpu().numpy()

    return {"W": host(conv.lin.weight.grad).T, "att_src": host(conv.att_src.grad)[0],
            "att_dst": host(conv.att_dst.grad)[0], "bias": host(conv.bias.grad)}


class PygRunner:
    """Prepares and returns the timed callables of PyG on the CPU or on CUDA.

    :class:`sparsegat.bench.torch_runner.TorchRunner` times ``sparsegat.torch`` the same
    way by overriding :meth:`_operator` (the attention operator) and :meth:`_gatconv`
    (the layer).
    """

    def __init__(self, name: str) -> None:
        import torch

        self.name = name
        self.device = "cuda" if name == "pyg-cuda" else "cpu"
        self._torch = torch
        self._dev = torch.device(self.device)

    def implementation(self, op: str) -> str:
        if op == "layer":
            return "torch_geometric.nn.GATConv + autograd"
        if op == "forward":
            return "edge-wise: torch_geometric.utils.softmax + scatter"
        return "edge-wise: torch autograd"

    def _t(self, a: np.ndarray | None, grad: bool = False) -> Any:
        if a is None:
            return None
        t = self._torch.from_numpy(np.ascontiguousarray(a)).to(self._dev)
        return t.requires_grad_(grad)

    def _edges(self, bg: BenchGraph) -> tuple[Any, Any]:
        src, dst = edge_index(bg.graph)
        return self._t(src), self._t(dst)

    def _operator(self, case: Case, bg: BenchGraph) -> Callable[..., Any]:
        """``op(q, k, v, att)``: the attention operator of ``case`` on ``bg``, as this runner computes it."""
        src, dst = self._edges(bg)
        n_dst, score = bg.graph.n_dst, case.score
        return lambda q, k, v, att: edge_attention(q, k, v, att, src, dst, n_dst, score)

    def prepare(self, case: Case, bg: BenchGraph, inputs: HostInputs) -> Callable[[], Any]:
        torch = self._torch
        if case.op == "layer":
            return self._layer(case, bg, inputs)
        op = self._operator(case, bg)
        q, k, v = self._t(inputs.q, True), self._t(inputs.k, True), self._t(inputs.v, True)
        att = self._t(inputs.att, True)

        def forward() -> Any:
            return op(q, k, v, att)

        if case.op == "forward":
            # A training forward: autograd records what backward needs, as sparsegat's
            # forward returns its context.
            return forward
        out = forward()
        dout = self._t(inputs.dout)
        wrt = [t for t in (q, k, v, att) if t is not None]

        def backward() -> Any:
            return torch.autograd.grad(out, wrt, grad_outputs=dout, retain_graph=True)

        return backward

    def _gatconv(self, case: Case, dtype: Any) -> Any:
        """The layer of the ``layer`` step: PyG's ``GATConv`` with its own initialisation from seed 0."""
        from torch_geometric.nn import GATConv

        self._torch.manual_seed(0)
        return GATConv(case.in_dim, case.dv, heads=case.heads, negative_slope=NEGATIVE_SLOPE,
                       add_self_loops=True).to(device=self._dev, dtype=dtype)

    def _layer(self, case: Case, bg: BenchGraph, inputs: HostInputs) -> Callable[[], Any]:
        torch = self._torch
        g = bg.graph
        if g.n_dst > g.n_src:
            raise Skip(f"the layer step needs n_dst <= n_src, this graph is {g.n_dst}x{g.n_src}")
        dtype = torch.float64 if case.dtype == "float64" else torch.float32
        conv = self._gatconv(case, dtype)
        edge_index = torch.stack(self._edges(bg))
        x = self._t(inputs.x, True)
        dy = self._t(inputs.dy)
        wrt = [x] + [p for p in conv.parameters() if p.requires_grad]
        n_dst, square = g.n_dst, g.n_dst == g.n_src

        def step() -> Any:
            if square:
                y = conv(x, edge_index)
            else:  # a bipartite pair (x_src, x_dst): the first n_dst rows of x are the destinations
                y = conv((x, x[:n_dst]), edge_index, size=(x.shape[0], n_dst))
            return y.detach(), torch.autograd.grad(y, wrt, grad_outputs=dy)

        return step

    def clock_and_probes(self, memory: bool) -> tuple[Any, Any, Any]:
        from .timing import CpuClock, HostMemoryProbe, TorchCudaClock, TorchCudaMemoryProbe

        if self.device == "cuda":
            return TorchCudaClock(), None, (TorchCudaMemoryProbe() if memory else None)
        return CpuClock(), (HostMemoryProbe() if memory else None), None
