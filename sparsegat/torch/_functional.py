"""``sparsegat.torch.attention``: the attention operator as a differentiable PyTorch function."""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
import torch

from ..graph import CSRGraph
from . import _ops  # noqa: F401 - registers torch.ops.sparsegat.*
from ._graphs import TorchGraph, as_torch_graph

_FLOATS = (torch.float32, torch.float64)
_HALF = (torch.float16, torch.bfloat16)


def attention(g: CSRGraph | TorchGraph, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, score: str = "dot",
              att: torch.Tensor | None = None, tau: float | torch.Tensor = 1.0, negative_slope: float = 0.2,
              edge_bias: torch.Tensor | None = None, dropout: float = 0.0, seed: int | torch.Tensor | None = None, *,
              backend: str | None = None, check_finite: bool = True) -> torch.Tensor:
    """Sparse graph attention on tensors, differentiable with respect to every tensor input.

    The operator of :func:`sparsegat.attention_forward` (same arguments, shapes and
    semantics) as the PyTorch custom operator ``torch.ops.sparsegat.attention_forward``,
    whose backward is ``torch.ops.sparsegat.attention_backward``; it works under
    :func:`torch.compile` (``fullgraph=True``) and autograd, and passes
    :func:`torch.library.opcheck`.

    Parameters
    ----------
    g : CSRGraph or TorchGraph
        The graph, on the device of the tensors (a CSRGraph on the host for CPU
        tensors, on the GPU for CUDA tensors). Inside :func:`torch.compile`, pass the
        :class:`TorchGraph` of :func:`as_torch_graph` (built outside the compiled code).
    q, k, v : torch.Tensor
        float32 or float64, shapes as in :func:`sparsegat.attention_forward`.
    score : str
        One of :data:`sparsegat.SCORES`.
    att : torch.Tensor, optional
        ``(H, D)`` attention vector of ``gatv2``.
    tau : float or torch.Tensor
        Temperature of ``cosine``/``euclidean``: a number, or a one-element floating
        tensor (on any device) that gets a gradient when it requires one.
    negative_slope : float
        LeakyReLU slope of ``additive`` and ``gatv2``.
    edge_bias : torch.Tensor, optional
        ``(nnz, H)`` score bias in CSR order (see :func:`graph_from_edge_index` for
        putting PyG edge features into that order).
    dropout : float
        Attention dropout probability in [0, 1).
    seed : int or torch.Tensor, optional
        Dropout seed in ``[0, 2**64)``, or a one-element int64 tensor holding its 64
        bits (as drawn inside compiled code, where a Python int would need a host
        read). Without one (and ``dropout > 0``) a seed is drawn from PyTorch's
        default CPU generator, so :func:`torch.manual_seed` makes the dropped edges
        reproducible; forward and backward use the same seed.
    backend : {"numpy", "numba", "cupy"}, optional
        As in the core; by default Numba (else NumPy) for CPU tensors, CUDA kernels
        for CUDA tensors.
    check_finite : bool
        As in the core: refuse NaN/inf inputs (and gradients of the output).

    Returns
    -------
    torch.Tensor
        ``out`` of shape ``(n_dst, H, Dv)``, on the tensors' device.

    Raises
    ------
    TypeError
        For a tensor of another dtype than float32/float64 (float16 and bfloat16
        included), tensors on different devices or on another device than the graph,
        and, from the core, mixed dtypes.
    ValueError
        For wrong shapes and options (the core's messages).
    """
    tg = _torch_graph(g)
    _check_tensors(tg, dict(q=q, k=k, v=v, att=att, edge_bias=edge_bias))
    tau_tensor, tau_value = _tau(tau)
    negative_slope, dropout = _real("negative_slope", negative_slope), _real("dropout", dropout)
    seed_tensor = _seed(seed, dropout)
    if backend is not None and not isinstance(backend, str):
        raise ValueError(f"backend must be None or a backend name, got {backend!r}")
    contiguous = [None if t is None else t.contiguous() for t in (q, k, v, att, edge_bias)]
    q, k, v, att, edge_bias = contiguous  # made contiguous once, here, where autograd sees it
    out, _, _ = torch.ops.sparsegat.attention_forward(
        tg.indptr, tg.indices, tg.n_src, q, k, v, att, tau_tensor, tau_value, negative_slope, edge_bias,
        dropout, seed_tensor, score, backend or "", bool(check_finite))
    return out


def _torch_graph(g: Any) -> TorchGraph:
    if isinstance(g, TorchGraph):
        return g
    if isinstance(g, CSRGraph):
        if torch.compiler.is_compiling():
            raise TypeError("inside torch.compile, pass the graph as a TorchGraph built outside the compiled "
                            "code (tg = sparsegat.torch.as_torch_graph(g)); finding it from a CSRGraph takes "
                            "Python lookups a compiled graph cannot hold")
        return as_torch_graph(g)
    raise TypeError(f"g must be a sparsegat.CSRGraph or a sparsegat.torch.TorchGraph, got {type(g).__name__}")


def _check_tensors(tg: TorchGraph, tensors: dict[str, torch.Tensor | None]) -> None:
    """Tensor types, float dtypes and devices; shapes and the rest are the core's to check."""
    device, first = None, None
    for name, t in tensors.items():
        if t is None and name in ("att", "edge_bias"):
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in _FLOATS:
            half = (f" (the kernels have no half-precision variants: cast with {name}.float())"
                    if t.dtype in _HALF else "")
            raise TypeError(f"{name} must have dtype float32 or float64, got {t.dtype}{half}")
        if device is None:
            device, first = t.device, name
        elif t.device != device:
            raise TypeError(f"{first} is on {device} but {name} is on {t.device}; put all tensors on one device")
    if device != tg.device:
        raise TypeError(f"g is on {tg.device} but the tensors are on {device}; "
                        f"use sparsegat.torch.as_torch_graph(g, device={str(device)!r})")


def _real(name: str, x: Any) -> float:
    # Range and finiteness are the core's to check, with its messages.
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {x!r}")
    return float(x)


def _tau(tau: Any) -> tuple[torch.Tensor | None, float]:
    """``(tau_tensor, tau_value)``: a tensor tau is read inside the operator."""
    if isinstance(tau, torch.Tensor):
        if not tau.is_floating_point() or tau.numel() != 1:
            raise TypeError(f"tau must be a real number or a one-element floating tensor, "
                            f"got a {tau.dtype} tensor of shape {tuple(tau.shape)}")
        return tau, 1.0
    return None, _real("tau", tau)


def _seed(seed: Any, dropout: float) -> torch.Tensor | None:
    """The seed as an int64 tensor of its 64 bits (a given one as is); None without dropout.

    A tensor, not an int, so that a seed drawn here stays a graph value under
    torch.compile, and the backward receives exactly the forward's seed.
    """
    if isinstance(seed, torch.Tensor):
        if seed.dtype != torch.int64 or seed.numel() != 1:
            raise TypeError(f"a seed tensor must be a one-element int64 tensor (the seed's 64 bits), "
                            f"got a {seed.dtype} tensor of shape {tuple(seed.shape)}")
        return seed.reshape(()) if dropout > 0.0 else None
    if seed is not None:
        if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"seed must be None or an integer, got {seed!r}")
        if not 0 <= int(seed) < 2**64:
            raise ValueError(f"seed must lie in [0, 2**64), got {int(seed)}")
    if not dropout > 0.0:
        return None
    if seed is None:
        return torch.randint(0, 2**63 - 1, (), dtype=torch.int64)
    bits = int(seed)
    return torch.tensor(bits - 2**64 if bits >= 2**63 else bits, dtype=torch.int64)
