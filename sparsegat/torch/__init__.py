"""PyTorch adapter: sparsegat's attention kernels as PyTorch operators.

``import sparsegat.torch`` registers the custom operators
``torch.ops.sparsegat.attention_forward`` and ``torch.ops.sparsegat.attention_backward``
and exposes them as one differentiable function, :func:`attention`, that works in eager
mode, under autograd and under :func:`torch.compile`; :class:`GATConv` and
:class:`GATv2Conv` are PyTorch Geometric's layers on top of it. Tensors reach the kernels without
copies: CPU tensors as NumPy views, CUDA tensors as CuPy views through DLPack, launched
on PyTorch's current stream with PyTorch's caching allocator. See ``docs/torch.md``.

``import sparsegat`` never imports torch; this subpackage does (``pip install
"sparsegat[torch]"``).
"""

from __future__ import annotations

from ._edge_index import clear_cache as _clear_edge_index_cache
from ._edge_index import graph_from_edge_index
from ._functional import attention
from ._graphs import TorchGraph, as_torch_graph
from ._graphs import clear_cache as _clear_graph_cache
from ._layer_graph import clear_cache as _clear_layer_graph_cache
from ._layer_graph import gat_graph
from .layers import GATConv, GATv2Conv

__all__ = ["attention", "TorchGraph", "as_torch_graph", "graph_from_edge_index", "gat_graph", "GATConv",
           "GATv2Conv", "clear_caches"]


def clear_caches() -> None:
    """Forget the tensor-to-graph and ``edge_index``-to-graph mappings, the layers' included
    (they are rebuilt on use)."""
    _clear_graph_cache()
    _clear_edge_index_cache()
    _clear_layer_graph_cache()
