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
"""

from __future__ import annotations

import importlib.util
import math
from typing import Any, Callable

import numpy as np

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


class PygRunner:
    """Prepares and returns the timed callables of PyG on the CPU or on CUDA."""

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
        g = bg.graph
        indptr = np.asarray(g.indptr, dtype=np.int64)
        dst = np.repeat(np.arange(g.n_dst, dtype=np.int64), np.diff(indptr))
        return self._t(np.asarray(g.indices, dtype=np.int64)), self._t(dst)

    def prepare(self, case: Case, bg: BenchGraph, inputs: HostInputs) -> Callable[[], Any]:
        torch = self._torch
        src, dst = self._edges(bg)
        n_dst = bg.graph.n_dst
        if case.op == "layer":
            return self._layer(case, bg, src, dst, inputs)
        q, k, v = self._t(inputs.q, True), self._t(inputs.k, True), self._t(inputs.v, True)
        att = self._t(inputs.att, True)
        score = case.score

        def forward() -> Any:
            return edge_attention(q, k, v, att, src, dst, n_dst, score)

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

    def _layer(self, case: Case, bg: BenchGraph, src: Any, dst: Any, inputs: HostInputs) -> Callable[[], Any]:
        torch = self._torch
        from torch_geometric.nn import GATConv

        g = bg.graph
        if g.n_dst > g.n_src:
            raise Skip(f"the layer step needs n_dst <= n_src, this graph is {g.n_dst}x{g.n_src}")
        dtype = torch.float64 if case.dtype == "float64" else torch.float32
        torch.manual_seed(0)
        conv = GATConv(case.in_dim, case.dv, heads=case.heads, negative_slope=NEGATIVE_SLOPE,
                       add_self_loops=True).to(device=self._dev, dtype=dtype)
        edge_index = torch.stack([src, dst])
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
