"""JAX adapter: sparsegat's attention kernels as a differentiable JAX function.

:func:`attention` is the operator of :func:`sparsegat.attention_forward` as a
:func:`jax.custom_vjp` whose backward is sparsegat's hand-written one; it works under
:func:`jax.jit`, :func:`jax.grad`, :func:`jax.lax.scan` and :func:`jax.vmap`. The
kernels read and write XLA's buffers in place through
:func:`jax.experimental.buffer_callback` (NumPy views on the CPU, CuPy views on XLA's
stream on a GPU). :mod:`~sparsegat.jax.gat_conv` and :mod:`~sparsegat.jax.gatv2_conv`
are PyG's ``GATConv`` and ``GATv2Conv`` as functional layers (``init`` and ``apply`` on
a parameter pytree). See ``docs/jax.md``.

``import sparsegat`` never imports JAX; this subpackage does (``pip install
"sparsegat[jax]"``), but loads neither Numba nor CuPy until a call needs them.
"""

from __future__ import annotations

from . import gat_conv, gatv2_conv
from ._functional import attention
from ._layers import prepare_graph

__all__ = ["attention", "gat_conv", "gatv2_conv", "prepare_graph"]
