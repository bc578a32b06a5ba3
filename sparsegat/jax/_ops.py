"""The attention operator as a :func:`jax.custom_vjp` whose backward is sparsegat's own.

``attention_op(op, q, k, v, att, tau, edge_bias, seed)``: ``op`` (an :class:`Op`) holds
the graph and the static options; the others are JAX arrays, ``att``, ``tau``,
``edge_bias`` and ``seed`` None where absent. The forward saves as residuals the
inputs, ``out`` and the backend's per-row softmax statistics with their layout code
(O(nnz*H + n*H) at most, never anything of size nnz*H*D); the backward stages
:func:`sparsegat.attention_backward` with them. ``seed`` is the dropout seed as two
uint32 words ``(hi, lo)``: the same operand reaches forward and backward, so both drop
the same edges.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import numpy as np

from . import _callbacks
from ._callbacks import Op


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def attention_op(op: Op, q: Any, k: Any, v: Any, att: Any, tau: Any, edge_bias: Any, seed: Any) -> Any:
    """``out`` of the attention operator (see the module docstring)."""
    out, _, _ = _callbacks.forward(op, q, k, v, att, tau, edge_bias, seed)
    return out


def _fwd(op: Op, q: Any, k: Any, v: Any, att: Any, tau: Any, edge_bias: Any, seed: Any) -> tuple:
    out, stats, code = _callbacks.forward(op, q, k, v, att, tau, edge_bias, seed)
    return out, (q, k, v, att, tau, edge_bias, seed, out, stats, code)


def _bwd(op: Op, residuals: tuple, dout: Any) -> tuple:
    q, k, v, att, tau, edge_bias, seed, out, stats, code = residuals
    dq, dk, dv, datt, dtau, dbias = _callbacks.backward(op, q, k, v, att, tau, edge_bias, seed, out, stats,
                                                        code, dout)
    if tau is not None:
        dtau = dtau.astype(tau.dtype).reshape(tau.shape)
    dseed = None if seed is None else np.zeros(seed.shape, dtype=jax.dtypes.float0)  # integers: no gradient
    return dq, dk, dv, datt, dtau, dbias, dseed


attention_op.defvjp(_fwd, _bwd)
