"""Plain records passed between the public API and the backends."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SCORES = ("dot", "scaled_dot", "cosine", "euclidean", "additive", "gatv2")
#: Scores whose q and k are (n, H) per-node terms instead of (n, H, D) vectors.
SCALAR_SCORES = ("additive",)
#: Scores that use the temperature ``tau`` (and so have a ``tau`` gradient).
TAU_SCORES = ("cosine", "euclidean")
#: Scores that use ``negative_slope`` (LeakyReLU).
SLOPE_SCORES = ("additive", "gatv2")
#: Norm floor of the cosine score: ``max(norm(x), COSINE_EPS)``.
COSINE_EPS = 1e-8
#: Integer code of each score, the one numbering of every compiled backend: the Numba
#: kernels are specialised on it and the CUDA templates take it as their ``SCORE``
#: argument (``common.cuh``'s enum is checked against this table by a test).
SCORE_CODES = {name: code for code, name in enumerate(SCORES)}

#: Keys of the per-row softmax statistics (each ``(n_dst, H)``) a backend saves for its
#: backward: the row's largest score, and the log of the softmax denominator relative to
#: it (the reference and CUDA) or its inverse (numba). Only the backend that saved them
#: reads them.
ROW_MAX = "row_max"
ROW_LOG_DENOM = "row_log_denom"
ROW_INV_DENOM = "row_inv_denom"


@dataclass(frozen=True)
class AttentionSpec:
    """Validated options of one attention call.

    Attributes
    ----------
    score : str
        One of :data:`SCORES`.
    tau : float
        Temperature of ``cosine`` and ``euclidean`` (1.0 for the others).
    negative_slope : float
        LeakyReLU slope of ``additive`` and ``gatv2``.
    dropout : float
        Attention dropout probability in [0, 1).
    seed_key : int
        ``splitmix64(seed)`` (see :mod:`sparsegat.dropout`); 0 without dropout.
    threshold : int
        Drop iff ``(hash >> 11) < threshold``; 0 without dropout.
    seed : int or None
        The seed the caller gave (or the one drawn for them).
    edge_offset : int
        CSR position, in a larger graph, of this graph's first edge: dropout decides
        edge ``e`` as edge ``edge_offset + e`` of that graph, so a row block of a
        partitioned graph (:mod:`sparsegat.distributed`) drops exactly the edges the
        whole graph would. 0 (the graph is the whole graph) everywhere else.
    """

    score: str
    tau: float = 1.0
    negative_slope: float = 0.2
    dropout: float = 0.0
    seed_key: int = 0
    threshold: int = 0
    seed: int | None = None
    edge_offset: int = 0

    @property
    def keep_scale(self) -> float:
        """Factor applied to kept weights: ``1 / (1 - dropout)``."""
        return 1.0 / (1.0 - self.dropout)


@dataclass
class AttentionContext:
    """What :func:`sparsegat.attention_backward` needs; returned by the forward pass.

    Holds references to the inputs and the backend's ``saved`` arrays, which are
    O(nnz*H + n*H) at most. Do not modify the inputs or the output in place
    between forward and backward.
    """

    graph: Any
    q: Any
    k: Any
    v: Any
    att: Any
    edge_bias: Any
    spec: AttentionSpec
    backend: str
    out: Any
    saved: dict = field(default_factory=dict)


@dataclass
class Gradients:
    """Gradients of the attention operator; a field is None where it does not apply."""

    q: Any = None
    k: Any = None
    v: Any = None
    att: Any = None
    tau: Any = None
    edge_bias: Any = None

    def items(self) -> list[tuple[str, Any]]:
        """(name, gradient) pairs of the gradients that apply."""
        return [(n, g) for n, g in vars(self).items() if g is not None]
