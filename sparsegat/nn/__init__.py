"""Layers, models and losses on top of the sparse attention operator.

Every layer has ``params`` and ``grads`` (dicts of arrays of the active
backend: NumPy or CuPy), ``forward(x, g, training=...)`` and
``backward(dy) -> dx``. See ``docs/nn.md``.
"""

from .gat import GATConv, GATv2Conv, GraphAttention, graph_with_self_loops
from .init import glorot
from .layers import ELU, Dropout, Linear, ReLU, Sequential
from .loss import accuracy, softmax_cross_entropy
from .module import Module
from .params import load_params, save_params

__all__ = [
    "Module",
    "Linear",
    "ELU",
    "ReLU",
    "Dropout",
    "Sequential",
    "GATConv",
    "GATv2Conv",
    "GraphAttention",
    "graph_with_self_loops",
    "softmax_cross_entropy",
    "accuracy",
    "save_params",
    "load_params",
    "glorot",
]
