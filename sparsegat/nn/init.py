"""Parameter initialisers (the ones PyTorch Geometric uses), drawn with NumPy generators.

Parameters are always drawn on the host with a :class:`numpy.random.Generator`,
so a given ``seed`` gives the same model on NumPy and CuPy; ``Module.to("cupy")``
moves them afterwards.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def glorot(shape: tuple[int, ...], rng: np.random.Generator, dtype: Any = np.float32) -> np.ndarray:
    """Glorot (Xavier) uniform as PyG's ``inits.glorot``: ``U(-a, a)``, ``a = sqrt(6 / (shape[-2] + shape[-1]))``.

    PyG stores a linear weight as ``(out, in)`` and we store ``(in, out)``; the
    bound only depends on ``in + out``, so the distributions agree. For the
    attention vectors ``(heads, out_dim)`` the bound uses ``heads + out_dim``, as
    PyG's ``(1, heads, out_dim)`` parameter does.
    """
    fan = shape[-2] + shape[-1]
    bound = math.sqrt(6.0 / fan) if fan > 0 else 0.0
    return rng.uniform(-bound, bound, size=shape).astype(dtype)


def uniform_fan_in(shape: tuple[int, ...], fan_in: int, rng: np.random.Generator,
                   dtype: Any = np.float32) -> np.ndarray:
    """``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``: PyG's default bias of ``Linear`` (``inits.uniform``)."""
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    return rng.uniform(-bound, bound, size=shape).astype(dtype)


def zeros(shape: tuple[int, ...], dtype: Any = np.float32) -> np.ndarray:
    """Zeros (PyG's ``inits.zeros``, used for the output bias of the attention layers)."""
    return np.zeros(shape, dtype=dtype)
