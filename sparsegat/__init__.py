"""sparsegat: graph attention on CSR sparse matrices, forward and hand-written backward.

The same calls run on NumPy arrays (CPU: NumPy reference, fused Numba kernels)
and CuPy arrays (GPU: CUDA kernels); the backend follows the array type.
"""

from .attention import attention_backward, attention_forward, attention_weights
from .backends import available_backends, get_backend
from .graph import CSRGraph
from .spec import SCORES, AttentionContext, AttentionSpec, Gradients

__version__ = "0.1.0"

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
    "__version__",
]
