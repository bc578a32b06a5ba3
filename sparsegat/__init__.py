"""sparsegat: graph attention on CSR sparse matrices, forward and hand-written backward.

The same calls run on NumPy arrays (CPU: NumPy reference, fused Numba kernels)
and CuPy arrays (GPU: CUDA kernels); the backend follows the array type.

The subpackages ``sparsegat.nn``, ``sparsegat.optim``, ``sparsegat.datasets`` and
``sparsegat.train`` (``fit``) are loaded on first use (``sg.nn.GATConv``), so ``import sparsegat`` stays cheap and imports
neither Numba nor CuPy.
"""

from __future__ import annotations

import importlib
from typing import Any

from ._version import __version__
from .attention import attention_backward as attention_backward
from .attention import attention_forward as attention_forward
from .attention import attention_weights as attention_weights
from .backends import available_backends as available_backends
from .backends import get_backend as get_backend
from .graph import CSRGraph as CSRGraph
from .spec import SCORES as SCORES
from .spec import AttentionContext as AttentionContext
from .spec import AttentionSpec as AttentionSpec
from .spec import Gradients as Gradients
from .warmup import warmup as warmup

#: Subpackages imported on first attribute access (PEP 562).
_LAZY_SUBMODULES = ("nn", "optim", "datasets", "train")

__all__ = [
    "CSRGraph",
    "attention_forward",
    "attention_backward",
    "attention_weights",
    "available_backends",
    "get_backend",
    "AttentionContext",
    "AttentionSpec",
    "Gradients",
    "SCORES",
    "warmup",
    "__version__",
    "nn",
    "optim",
    "datasets",
    "train",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY_SUBMODULES:
        module = importlib.import_module(f".{name}", __name__)
        globals()[name] = module
        return module
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_SUBMODULES))
