"""Layers, models and losses on top of the sparse attention operator.

Every layer has ``params`` and ``grads`` (dicts of arrays of the active
backend: NumPy or CuPy), ``forward(x, g, training=...)`` and
``backward(dy) -> dx``. See ``docs/nn.md``.
"""

from .gat import GATConv as GATConv
from .gat import GATv2Conv as GATv2Conv
from .gat import GraphAttention as GraphAttention
from .gat import graph_with_self_loops as graph_with_self_loops
from .init import glorot as glorot
from .layers import ELU as ELU
from .layers import Dropout as Dropout
from .layers import Linear as Linear
from .layers import ReLU as ReLU
from .layers import Sequential as Sequential
from .loss import LossAndGrad as LossAndGrad
from .loss import accuracy as accuracy
from .loss import softmax_cross_entropy as softmax_cross_entropy
from .module import Module as Module
from .checkpoint import load_model as load_model
from .checkpoint import read_model_file as read_model_file
from .checkpoint import save_model as save_model
from .params import load_params as load_params
from .params import save_params as save_params
from .state import LoadResult as LoadResult
from .state import ParameterView as ParameterView

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
    "LossAndGrad",
    "accuracy",
    "save_params",
    "load_params",
    "save_model",
    "load_model",
    "read_model_file",
    "LoadResult",
    "ParameterView",
    "glorot",
]
