"""Plain-PyTorch pieces of the GAT layers: initialisation, self-loop edge features,
edge-wise softmax and the operator's dropout rule.

Everything here is ordinary differentiable PyTorch (gather, scatter), used where the
fused operator does not apply: the attention weights returned on request, and
GATv2 with edge features (the unfused path of :mod:`sparsegat.torch.layers`).
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch

from ..dropout import MASK64, drop_threshold, keep_mask, mix_seed

_FLOATS = (torch.float32, torch.float64)
#: fill_value strings -> how the loops' edge features reduce the incoming edges' (PyG's names).
FILL_REDUCTIONS = ("add", "sum", "mean", "min", "max", "mul")


# ---------------------------------------------------------------------- initialisation (PyG's inits)
def glorot_(t: torch.Tensor) -> None:
    """PyG's ``glorot``: uniform in ``+-sqrt(6 / (size(-2) + size(-1)))``."""
    bound = math.sqrt(6.0 / (t.size(-2) + t.size(-1)))
    with torch.no_grad():
        t.uniform_(-bound, bound)


def fan_in_uniform_(t: torch.Tensor, fan_in: int) -> None:
    """PyG's ``uniform(fan_in, t)`` (its ``Linear`` biases): uniform in ``+-1/sqrt(fan_in)``."""
    bound = 1.0 / math.sqrt(fan_in)
    with torch.no_grad():
        t.uniform_(-bound, bound)


# ---------------------------------------------------------------------- checks
def check_features(name: str, x: torch.Tensor) -> None:
    """``x`` is a 2-D float32/float64 tensor."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _FLOATS:
        half = (" (the attention kernels have no half-precision variants: use float32, e.g. "
                "model.float() and x.float(), outside autocast)" if x.dtype in (torch.float16, torch.bfloat16)
                else "")
        raise TypeError(f"{name} must have dtype float32 or float64, got {x.dtype}{half}")
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D (nodes, features), got shape {tuple(x.shape)}")


def check_fill_value(fill_value: object) -> None:
    """PyG's accepted ``fill_value``: None, a number, a tensor or a reduction name."""
    if fill_value is None or isinstance(fill_value, torch.Tensor):
        return
    if isinstance(fill_value, str):
        if fill_value not in FILL_REDUCTIONS:
            raise ValueError(f"fill_value must be a number, a tensor or one of {FILL_REDUCTIONS}, "
                             f"got {fill_value!r}")
        return
    if not isinstance(fill_value, numbers.Real):
        raise TypeError(f"fill_value must be a number, a tensor or one of {FILL_REDUCTIONS}, got {fill_value!r}")


# ---------------------------------------------------------------------- self-loop edge features
def loop_edge_attr(edge_attr: torch.Tensor, dst: torch.Tensor, num_loops: int, n_dst: int,
                   fill_value: object) -> torch.Tensor:
    """The features of the loops ``(i, i)``, ``i < num_loops``: PyG's ``add_self_loops`` rule.

    Parameters
    ----------
    edge_attr : torch.Tensor, shape (E, D)
        Features of the (non-loop) edges.
    dst : torch.Tensor, shape (E,)
        int64 destination of each edge.
    num_loops, n_dst : int
        Number of loops; number of destination nodes (``>= num_loops``).
    fill_value : None, number, tensor or str
        None: ones; a number: that value; a tensor: broadcast to every loop; a
        reduction name: that reduction of the features of the edges into the node
        (``"mean"`` and the others give 0 for a node without incoming edges, as PyG).

    Returns
    -------
    torch.Tensor, shape (num_loops, D)
    """
    size = (num_loops,) + tuple(edge_attr.shape[1:])
    if fill_value is None:
        return edge_attr.new_ones(size)
    if isinstance(fill_value, torch.Tensor):
        loop = fill_value.to(edge_attr.device, edge_attr.dtype)
        if loop.dim() != edge_attr.dim():
            loop = loop.unsqueeze(0)
        return loop.expand(size)
    if not isinstance(fill_value, str):
        return edge_attr.new_full(size, float(fill_value))
    # Reduce over every destination row (bipartite: rows beyond the loops are dropped after).
    rows = max(n_dst, num_loops)
    full = (rows,) + tuple(edge_attr.shape[1:])
    index = dst.view(-1, *([1] * (edge_attr.dim() - 1))).expand_as(edge_attr)
    if fill_value in ("add", "sum", "mean"):
        out = edge_attr.new_zeros(full).index_add(0, dst, edge_attr)
        if fill_value == "mean":
            count = torch.bincount(dst, minlength=rows).clamp(min=1).to(edge_attr.dtype)
            out = out / count.view(-1, *([1] * (edge_attr.dim() - 1)))
    elif fill_value == "mul":
        out = edge_attr.new_ones(full).scatter_reduce(0, index, edge_attr, reduce="prod", include_self=True)
    else:
        out = edge_attr.new_zeros(full).scatter_reduce(0, index, edge_attr, reduce=f"a{fill_value}",
                                                       include_self=False)
    return out[:num_loops]


# ---------------------------------------------------------------------- edge-wise softmax, dropout
def edge_softmax(scores: torch.Tensor, rows: torch.Tensor, n_dst: int) -> torch.Tensor:
    """Softmax of ``scores (nnz, H)`` over the edges of each destination row ``rows (nnz,)``."""
    index = rows.unsqueeze(1).expand_as(scores)
    top = scores.new_zeros((n_dst, scores.shape[1])).scatter_reduce(0, index, scores.detach(), reduce="amax",
                                                                    include_self=False)
    e = (scores - top[rows]).exp()
    denom = e.new_zeros((n_dst, scores.shape[1])).index_add(0, rows, e)
    return e / denom[rows]


def draw_seed() -> torch.Tensor:
    """A dropout seed from PyTorch's default generator, as the operator draws one (0-d int64)."""
    return torch.randint(0, 2**63 - 1, (), dtype=torch.int64)


def dropout_scale(seed: torch.Tensor, p: float, nnz: int, heads: int, like: torch.Tensor) -> torch.Tensor:
    """``keep / (1 - p)``, shape ``(nnz, heads)``: the operator's dropout decisions for ``seed``
    (``sparsegat.dropout``: edge positions in CSR order), so that weights computed here are
    those the operator uses. Reads the seed on the host."""
    key = mix_seed(int(seed.reshape(()).item()) & MASK64)
    keep = keep_mask(key, 0, nnz, heads, drop_threshold(p))
    return torch.from_numpy(np.ascontiguousarray(keep)).to(like.device, like.dtype) * (1.0 / (1.0 - p))
