"""The custom operators ``sparsegat::attention_forward`` and ``sparsegat::attention_backward``.

Both run the core's public functions (:func:`sparsegat.attention_forward`,
:func:`sparsegat.attention_backward`) on NumPy or CuPy views of the tensors, so the
core validates the inputs once, with its own messages, and picks the backend. Each
has a fake (meta) implementation for ``torch.compile`` and ``torch.export``; the
forward's autograd formula (``register_autograd``) calls the backward operator, so a
compiled graph holds both as opaque nodes and needs no graph break.

The forward returns three tensors: ``out``, the backend's two per-row softmax
statistics stacked as ``(2, n_dst, H)``, and a 0-d int64 CPU tensor naming the
backend and the keys of those statistics (:func:`_layout_code`), so that the backward
hands them back to the backend that saved them, under its own keys.
"""

# No ``from __future__ import annotations``: the annotations are the operators' schemas.
from typing import Optional

import torch

from ..arrays import namespace
from ..attention import _make_spec  # the one place a spec is made: backward rebuilds the forward's
from ..attention import attention_backward as core_backward
from ..attention import attention_forward as core_forward
from ..backends import BACKEND_NAMES
from ..dropout import MASK64
from ..spec import ROW_INV_DENOM, ROW_LOG_DENOM, ROW_MAX, AttentionContext
from ._graphs import lookup
from ._interop import device_context, from_array, to_array

#: The statistic keys a backend may save; the layout code numbers them by position here.
_STAT_KEYS = (ROW_MAX, ROW_LOG_DENOM, ROW_INV_DENOM)


def _layout_code(backend: str, keys: tuple) -> int:
    """The backend and the keys of its two statistics as one integer, the same in every process."""
    if len(keys) != 2 or not set(keys) <= set(_STAT_KEYS):
        raise RuntimeError(f"backend {backend!r} saved the statistics {keys}; the operator carries two "
                           f"of {_STAT_KEYS}")
    n = len(_STAT_KEYS)
    return (BACKEND_NAMES.index(backend) * n + _STAT_KEYS.index(keys[0])) * n + _STAT_KEYS.index(keys[1])


def _layout(code: int) -> tuple:
    """``(backend, keys)`` of :func:`_layout_code`."""
    n = len(_STAT_KEYS)
    return BACKEND_NAMES[code // (n * n)], (_STAT_KEYS[code // n % n], _STAT_KEYS[code % n])


def _tau(tau: float, tau_tensor: Optional[torch.Tensor]) -> float:
    # One host read (a synchronisation on CUDA): the kernels take tau as a scalar argument.
    return tau if tau_tensor is None else float(tau_tensor.detach().reshape(()).item())


def _seed(seed: Optional[torch.Tensor], dropout: float) -> Optional[int]:
    """The unsigned 64-bit seed carried by the int64 tensor ``seed``."""
    if seed is None:
        if dropout > 0.0:
            # The core would draw its own seed, which the backward could not know.
            raise ValueError("sparsegat::attention_forward needs a seed tensor when dropout > 0")
        return None
    return int(seed.reshape(()).item()) & MASK64


def _tensor(a: object) -> torch.Tensor:
    t = from_array(a)
    return t if t.is_contiguous() else t.contiguous()  # the fake kernels promise contiguous outputs


@torch.library.custom_op("sparsegat::attention_forward", mutates_args=())
def attention_forward_op(indptr: torch.Tensor, indices: torch.Tensor, n_src: int, q: torch.Tensor,
                         k: torch.Tensor, v: torch.Tensor, att: Optional[torch.Tensor],
                         tau_tensor: Optional[torch.Tensor], tau: float, negative_slope: float,
                         edge_bias: Optional[torch.Tensor], dropout: float, seed: Optional[torch.Tensor],
                         score: str, backend: str, check_finite: bool
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(out, stats, layout)`` of :func:`sparsegat.attention_forward` on the graph of
    ``(indptr, indices, n_src)``; ``tau_tensor`` (when given) overrides ``tau``, ``seed``
    is an int64 tensor holding the unsigned seed's bits, ``backend=""`` picks by device."""
    with device_context(q.device):
        g = lookup(indptr, indices, n_src)
        out, ctx = core_forward(g, to_array(q), to_array(k), to_array(v), score=score, att=to_array(att),
                                tau=_tau(tau, tau_tensor), negative_slope=negative_slope,
                                edge_bias=to_array(edge_bias), dropout=dropout, seed=_seed(seed, dropout),
                                backend=backend or None, check_finite=check_finite)
        keys = tuple(ctx.saved)
        code = _layout_code(ctx.backend, keys)
        stats = namespace(out).stack([ctx.saved[keys[0]], ctx.saved[keys[1]]])
        return _tensor(out), _tensor(stats), torch.tensor(code, dtype=torch.int64)


@attention_forward_op.register_fake
def _(indptr, indices, n_src, q, k, v, att, tau_tensor, tau, negative_slope, edge_bias, dropout, seed,
      score, backend, check_finite):
    if q.dim() not in (2, 3) or v.dim() != 3:
        raise ValueError(f"q must be 2-D or 3-D and v 3-D, got shapes {tuple(q.shape)} and {tuple(v.shape)}")
    n_dst, heads = q.shape[0], q.shape[1]
    out = torch.empty((n_dst, heads, v.shape[2]), dtype=v.dtype, device=v.device)
    stats = torch.empty((2, n_dst, heads), dtype=v.dtype, device=v.device)
    return out, stats, torch.empty((), dtype=torch.int64)


@torch.library.custom_op("sparsegat::attention_backward", mutates_args=())
def attention_backward_op(indptr: torch.Tensor, indices: torch.Tensor, n_src: int, q: torch.Tensor,
                          k: torch.Tensor, v: torch.Tensor, att: Optional[torch.Tensor],
                          tau_tensor: Optional[torch.Tensor], tau: float, negative_slope: float,
                          edge_bias: Optional[torch.Tensor], dropout: float, seed: Optional[torch.Tensor],
                          score: str, check_finite: bool, out: torch.Tensor, stats: torch.Tensor,
                          layout: torch.Tensor, dout: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                     torch.Tensor]:
    """``(dq, dk, dv, datt, dtau, dedge_bias)`` of :func:`sparsegat.attention_backward`;
    ``datt``, ``dtau`` and ``dedge_bias`` are empty ``(0,)`` tensors where ``att``,
    ``tau_tensor`` or ``edge_bias`` was not given (``dtau`` is 0 for a score without tau)."""
    backend, keys = _layout(int(layout.item()))
    with device_context(q.device):
        g = lookup(indptr, indices, n_src)
        arrays = [to_array(x) for x in (q, k, v, att, edge_bias, out)]
        spec = _make_spec(score, _tau(tau, tau_tensor), negative_slope, dropout, _seed(seed, dropout))
        saved = {keys[0]: to_array(stats[0]), keys[1]: to_array(stats[1])}
        ctx = AttentionContext(g, *arrays[:5], spec, backend, arrays[5], saved)
        grads = core_backward(ctx, to_array(dout), check_finite=check_finite)
        dq, dk, dv = (_tensor(grads.q), _tensor(grads.k), _tensor(grads.v))
        datt = _tensor(grads.att) if att is not None else q.new_empty(0)
        dbias = _tensor(grads.edge_bias) if edge_bias is not None else q.new_empty(0)
        if tau_tensor is None:
            dtau = q.new_empty(0)
        elif grads.tau is None:  # the score has no tau: the output does not depend on it
            dtau = torch.zeros(tau_tensor.shape, dtype=tau_tensor.dtype, device=tau_tensor.device)
        else:
            dtau = _tensor(grads.tau).reshape(tau_tensor.shape).to(tau_tensor.device, tau_tensor.dtype)
    return dq, dk, dv, datt, dtau, dbias


@attention_backward_op.register_fake
def _(indptr, indices, n_src, q, k, v, att, tau_tensor, tau, negative_slope, edge_bias, dropout, seed,
      score, check_finite, out, stats, layout, dout):
    def like(x):
        return q.new_empty(0) if x is None else torch.empty(x.shape, dtype=x.dtype, device=x.device)

    return like(q), like(k), like(v), like(att), like(tau_tensor), like(edge_bias)


# ---------------------------------------------------------------------- autograd
#: Positions of the forward operator's differentiable inputs.
_Q, _K, _V, _ATT, _TAU, _BIAS = 3, 4, 5, 6, 7, 10


def _setup_context(ctx, inputs, output):
    (indptr, indices, n_src, q, k, v, att, tau_tensor, tau, negative_slope, edge_bias, dropout, seed,
     score, backend, check_finite) = inputs
    out, stats, layout = output
    ctx.save_for_backward(indptr, indices, q, k, v, att, tau_tensor, edge_bias, seed, out, stats, layout)
    ctx.options = (n_src, tau, negative_slope, dropout, score, check_finite)
    ctx.mark_non_differentiable(stats, layout)


def _backward(ctx, dout, _dstats, _dlayout):
    indptr, indices, q, k, v, att, tau_tensor, edge_bias, seed, out, stats, layout = ctx.saved_tensors
    n_src, tau, negative_slope, dropout, score, check_finite = ctx.options
    dq, dk, dv, datt, dtau, dbias = torch.ops.sparsegat.attention_backward(
        indptr, indices, n_src, q, k, v, att, tau_tensor, tau, negative_slope, edge_bias, dropout, seed,
        score, check_finite, out, stats, layout, dout)
    grads = [None] * 16
    need = ctx.needs_input_grad
    for i, grad in ((_Q, dq), (_K, dk), (_V, dv), (_ATT, datt), (_TAU, dtau), (_BIAS, dbias)):
        if need[i]:
            grads[i] = grad
    return tuple(grads)


attention_forward_op.register_autograd(_backward, setup_context=_setup_context)
