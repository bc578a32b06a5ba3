"""Reusable hypothesis strategies and helpers for the sparsegat test suites.

Import them from any test file (``tests/conftest.py`` puts this directory on
``sys.path``)::

    from strategies import csr_graphs, attention_inputs, attention_problems, SCORE_CONFIGS

What is here:

- :func:`csr_graphs`: canonical :class:`~sparsegat.CSRGraph` objects with empty rows,
  hub rows (a destination attending to all or nearly all sources), bipartite
  (non-square) shapes, and int32 or int64 indices.
- :func:`attention_inputs`: ``q, k, v, att, edge_bias, tau`` of the right shapes for a
  graph and a score, bounded so that float32 results can be compared with a float64
  oracle, with occasional exact ties and zero vectors.
- :data:`SCORE_CONFIGS` / :func:`score_configs`: the score configurations every suite
  should cover (each score, LeakyReLU slopes for ``additive``/``gatv2``).
- :func:`attention_problems`: graph, configuration and inputs drawn together, with
  :meth:`AttentionProblem.kwargs` giving the keyword arguments of
  ``attention_forward``.
- :func:`random_graph`: a plain (non-hypothesis) random graph for bigger tests.
- :func:`tolerance`: ``(rtol, atol)`` for comparing a result of a given dtype with a
  float64 oracle.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import numpy as np
from hypothesis import strategies as st

from sparsegat import CSRGraph
from sparsegat.spec import SCALAR_SCORES, SCORES, SLOPE_SCORES, TAU_SCORES  # noqa: F401 (re-exported)

INDEX_DTYPES = (np.dtype(np.int32), np.dtype(np.int64))

#: Added to the bias of one edge per row by ``attention_inputs(dominant=True)``: more than
#: the ~709 that ``exp`` can take in float64, so a row maximum that misses this edge shows.
DOMINANT_BIAS = 1000.0
FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


#: Score configurations every suite should cover: keyword arguments of
#: ``attention_forward`` other than the arrays and ``tau`` (which
#: :func:`attention_inputs` draws for the scores that use it).
SCORE_CONFIGS: tuple[dict[str, Any], ...] = (
    {"score": "dot"},
    {"score": "scaled_dot"},
    {"score": "cosine"},
    {"score": "euclidean"},
    {"score": "additive"},
    {"score": "additive", "negative_slope": 0.0},
    {"score": "additive", "negative_slope": 1.7},
    {"score": "gatv2"},
    {"score": "gatv2", "negative_slope": 0.01},
)


def score_config_id(config: dict[str, Any]) -> str:
    """A short pytest id for a score configuration, e.g. ``"additive-ns0.0"``."""
    out = config["score"]
    if "negative_slope" in config:
        out += f"-ns{config['negative_slope']}"
    return out


#: Ids of :data:`SCORE_CONFIGS`, for ``pytest.mark.parametrize(..., ids=SCORE_CONFIG_IDS)``.
SCORE_CONFIG_IDS = tuple(score_config_id(c) for c in SCORE_CONFIGS)


def score_configs(scores: Sequence[str] = SCORES) -> st.SearchStrategy[dict[str, Any]]:
    """Strategy drawing one of :data:`SCORE_CONFIGS` whose score is in ``scores``."""
    configs = [c for c in SCORE_CONFIGS if c["score"] in scores]
    if not configs:
        raise ValueError(f"no score configuration for scores {scores!r}")
    return st.sampled_from(configs)


# ---------------------------------------------------------------------------- graphs
def _row_columns(draw: Any, n_src: int, max_sparse_degree: int, multi_edges: bool = False) -> list[int]:
    """Columns of one row: empty, sparse (a few random sources), a hub (nearly all), or
    (with ``multi_edges``) sparse with a repeated source."""
    if n_src == 0:
        return []
    # 0-1: empty, 2: hub, 3: multi-edges (else sparse), 4-9: sparse.  Shrinks towards empty rows.
    kind = draw(st.integers(0, 9))
    if kind <= 1:
        return []
    if kind == 2:
        missing = draw(st.sets(st.integers(0, n_src - 1), max_size=max(0, n_src // 4)))
        return [j for j in range(n_src) if j not in missing]
    if kind == 3 and multi_edges:
        cols = draw(st.lists(st.integers(0, n_src - 1), min_size=1, max_size=max(1, max_sparse_degree)))
        copies = draw(st.integers(1, 3))
        return sorted(cols + [cols[0]] * copies)
    return sorted(draw(st.sets(st.integers(0, n_src - 1), min_size=1,
                               max_size=min(n_src, max_sparse_degree))))


@st.composite
def csr_graphs(draw: Any, min_n: int = 0, max_n: int = 10, bipartite: bool | None = None,
               index_dtype: Any = None, max_sparse_degree: int = 4, self_loops: bool = False,
               min_edges: int = 0, multi_edges: bool = True) -> CSRGraph:
    """Strategy for CSR graphs of shape ``(n_dst, n_src)``.

    Every row is independently empty, sparse (1 to ``max_sparse_degree`` random
    sources), a hub (every source, less at most a quarter of them) or, with
    ``multi_edges``, sparse with a source repeated up to 3 times, so graphs have
    empty rows, hub rows, rows with a single edge and multi-edges. The graph is built
    through the raw ``CSRGraph(indptr, indices, shape)`` constructor with arrays
    of the chosen index dtype, so ``g.index_dtype`` is that dtype.

    Parameters
    ----------
    min_n, max_n : int
        Bounds of ``n_dst`` and ``n_src`` (inclusive). ``min_n=0`` allows graphs
        without nodes.
    bipartite : bool or None
        True: ``n_src`` is drawn separately and differs from ``n_dst`` whenever
        ``max_n > min_n`` (a non-square graph). False: square. None: either.
    index_dtype : int32, int64 or None
        Index dtype of the graph; None draws one of the two.
    max_sparse_degree : int
        Most edges of a sparse (non-hub) row.
    self_loops : bool
        Add every missing ``(i, i)`` (square graphs only, so it implies
        ``bipartite=False``).
    min_edges : int
        At least this many edges (0 or 1 are sensible; needs ``min_n >= 1``):
        when the drawn rows have fewer, a hub row is added.
    multi_edges : bool
        Allow repeated sources in a row (False for the dense oracle, which has one
        cell per ``(i, j)`` pair).
    """
    if not 0 <= min_n <= max_n:
        raise ValueError(f"need 0 <= min_n <= max_n, got {min_n}, {max_n}")
    if self_loops:
        if bipartite:
            raise ValueError("self_loops needs a square graph, not bipartite=True")
        bipartite = False
    if bipartite is None:
        bipartite = draw(st.booleans())
    n_dst = draw(st.integers(min_n, max_n))
    if bipartite and max_n > min_n:
        span = max_n - min_n + 1
        offset = draw(st.integers(1, span - 1))
        n_src = min_n + (n_dst - min_n + offset) % span
    elif bipartite:
        n_src = n_dst
    else:
        n_src = n_dst
    if index_dtype is None:
        index_dtype = draw(st.sampled_from(INDEX_DTYPES))
    index_dtype = np.dtype(index_dtype)
    rows = [_row_columns(draw, n_src, max_sparse_degree, multi_edges) for _ in range(n_dst)]
    if sum(map(len, rows)) < min_edges and n_dst and n_src:
        i = draw(st.integers(0, n_dst - 1))
        rows[i] = list(range(n_src))
    if self_loops:
        rows = [sorted(r + [i]) if i not in r else r for i, r in enumerate(rows)]
    indptr = np.zeros(n_dst + 1, dtype=index_dtype)
    np.cumsum([len(r) for r in rows], out=indptr[1:])
    indices = np.array([j for r in rows for j in r], dtype=index_dtype)
    g = CSRGraph(indptr, indices, (n_dst, n_src))
    assert g.index_dtype == index_dtype and g.shape == (n_dst, n_src)
    return g


@st.composite
def large_csr_graphs(draw: Any, min_chunks: int = 2, hub_degree: tuple[int, int] = (40, 400),
                     index_dtype: Any = None) -> CSRGraph:
    """Strategy for graphs big enough to split into several numba chunks.

    A few hundred rows (see ``sparsegat.backends.numba.partition``: a chunk costs at
    least ``MIN_CHUNK_COST``, so such a graph has at least ``min_chunks`` chunks), with
    empty rows, sparse rows, a few high-degree rows (``hub_degree`` edges: above 10,
    sometimes above the kernels' ``ACC_BLOCK`` of 256) and a hub column; square or not.
    Drawn from a seeded NumPy generator so that it shrinks as a unit.
    """
    from sparsegat.backends.numba.partition import MIN_CHUNK_COST, ROW_COST

    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if index_dtype is None:
        index_dtype = draw(st.sampled_from(INDEX_DTYPES))
    n_dst = draw(st.integers(150, 500))
    n_src = n_dst if draw(st.booleans()) else draw(st.integers(hub_degree[1], hub_degree[1] + 200))
    n_hubs = draw(st.integers(1, 4))
    deg = rng.integers(0, 14, size=n_dst)
    deg[rng.random(n_dst) < 0.15] = 0  # empty rows
    hubs = rng.choice(n_dst, size=n_hubs, replace=False)
    deg[hubs] = rng.integers(hub_degree[0], hub_degree[1] + 1, size=n_hubs)
    deg = np.minimum(deg, n_src)
    # Enough edges for min_chunks chunks: top up the sparse rows.
    need = min_chunks * MIN_CHUNK_COST + 1 - ROW_COST * n_dst
    while int(deg.sum()) < need:
        deg = np.minimum(deg + 1, n_src)
    hub_col = int(rng.integers(0, n_src))
    cols = []
    for i in range(n_dst):
        c = rng.choice(n_src, size=int(deg[i]), replace=False)
        if deg[i] and hub_col not in c and rng.random() < 0.8:  # a source hub (a long column)
            c[0] = hub_col
        cols.append(np.sort(c))
    indptr = np.zeros(n_dst + 1, dtype=index_dtype)
    np.cumsum(deg, out=indptr[1:])
    indices = np.concatenate(cols).astype(index_dtype) if n_dst else np.zeros(0, index_dtype)
    return CSRGraph(indptr, indices, (n_dst, n_src))


def mixed_graphs(large: float = 0.2, **small_kwargs: Any) -> st.SearchStrategy[CSRGraph]:
    """Mostly :func:`csr_graphs` (``small_kwargs``), with probability about ``large`` a
    :func:`large_csr_graphs` (several numba chunks, high-degree rows)."""
    small = csr_graphs(**small_kwargs)
    big = large_csr_graphs(index_dtype=small_kwargs.get("index_dtype"))
    n = max(1, round(1 / large) - 1) if large > 0 else 0
    return st.integers(0, n).flatmap(lambda r: big if (large > 0 and r == 0) else small)


def random_graph(rng: np.random.Generator, n_dst: int, n_src: int | None = None,
                 density: float = 0.3, empty_rows: int = 0, index_dtype: Any = np.int32) -> CSRGraph:
    """A random graph (not a strategy): each edge present with probability ``density``.

    ``empty_rows`` rows (the last ones) are left without edges; every other row has
    at least one edge. Built with ``CSRGraph.from_edge_index``.
    """
    n_src = n_dst if n_src is None else n_src
    mask = rng.random((n_dst, n_src)) < density
    if n_src:
        mask[np.arange(n_dst), rng.integers(0, n_src, size=n_dst)] = True
    if empty_rows:
        mask[n_dst - empty_rows:] = False
    dst, src = np.nonzero(mask)
    return CSRGraph.from_edge_index(src, dst, num_src=n_src, num_dst=n_dst, index_dtype=index_dtype)


# ---------------------------------------------------------------------------- inputs
class AttentionInputs(NamedTuple):
    """Arrays and temperature of one attention call (``att``/``edge_bias`` may be None)."""

    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    att: np.ndarray | None
    edge_bias: np.ndarray | None
    tau: float

    def options(self) -> dict[str, Any]:
        """``att``, ``tau`` and ``edge_bias`` as keyword arguments of ``attention_forward``."""
        return {"att": self.att, "tau": self.tau, "edge_bias": self.edge_bias}

    def astype(self, dtype: Any) -> "AttentionInputs":
        """The same inputs converted to ``dtype``."""
        conv = (lambda a: None if a is None else a.astype(dtype))
        return AttentionInputs(conv(self.q), conv(self.k), conv(self.v), conv(self.att),
                               conv(self.edge_bias), self.tau)


def _values(rng: np.random.Generator, shape: tuple[int, ...], style: str, scale: float) -> np.ndarray:
    if style == "grid":
        # Multiples of 1/2: exact in float32, so scores tie exactly (ties in the row max).
        return rng.integers(-2, 3, size=shape).astype(np.float64) * 0.5 * scale
    x = rng.uniform(-1.0, 1.0, size=shape) * scale
    if style == "zeros" and shape[0]:
        # Some node rows exactly zero: the cosine norm floor, zero distances.
        x[rng.random(shape[0]) < 0.3] = 0.0
    return x


@st.composite
def attention_inputs(draw: Any, g: CSRGraph, score: str, dtype: Any = np.float64,
                     heads: int | None = None, dim: int | None = None, dim_v: int | None = None,
                     edge_bias: bool | None = None, tau: float | None = None,
                     scale: float | None = None, bias_scale: float = 2.0,
                     styles: Sequence[str] = ("uniform", "grid", "zeros"),
                     dominant: bool | None = None) -> AttentionInputs:
    """Strategy for the inputs of one attention call on graph ``g`` with score ``score``.

    Shapes: ``q (n_dst, H, D)``, ``k (n_src, H, D)`` (``(n, H)`` for ``additive``),
    ``v (n_src, H, Dv)``, ``att (H, D)`` for ``gatv2`` else None,
    ``edge_bias (nnz, H)`` or None; ``tau`` a float, 1.0 for the scores that do not
    use it (the public API refuses other values there).

    Values are uniform in ``[-scale, scale]`` with ``scale <= 1.5`` by default (so
    scores stay below ~50 and float32 agrees with float64 to ~1e-5), or an exact
    grid of halves (ties), or have some node rows exactly zero. ``edge_bias`` is
    uniform in ``[-bias_scale, bias_scale]``. ``tau`` is drawn in
    ``[-2, 3]`` (negative and zero temperatures are valid) unless given.
    Arrays are C-contiguous of ``dtype``; they are drawn from a seeded NumPy
    generator (the seed is the hypothesis draw), so they shrink as a unit.

    Parameters
    ----------
    heads, dim, dim_v : int, optional
        ``H``, ``D``, ``Dv``; drawn in 1..3 or 4..6 (the numba two-pass form needs 4+),
        1..4, 1..3 when not given.
    edge_bias : bool, optional
        Whether to draw an edge bias; drawn when None.
    styles : sequence of str
        Value styles to draw from: ``"uniform"``, ``"grid"`` (exact ties, zeros),
        ``"zeros"`` (some node rows zero). Gradient checks use ``("uniform",)`` to
        stay away from the kinks of LeakyReLU and of the cosine norm floor.
    dominant : bool, optional
        With an edge bias: one edge per row and head (at a random position, the last
        one included) gets ``+DOMINANT_BIAS``, so that its score exceeds the others
        by more than ``exp`` can take in either float dtype (a wrong row maximum then
        overflows instead of cancelling out). Drawn (about 1 in 4) when None.
    """
    if score not in SCORES:
        raise ValueError(f"unknown score {score!r}")
    dtype = np.dtype(dtype)
    heads = draw(st.one_of(st.integers(1, 3), st.integers(4, 6))) if heads is None else heads
    dim = draw(st.integers(1, 4)) if dim is None else dim
    dim_v = draw(st.integers(1, 3)) if dim_v is None else dim_v
    if edge_bias is None:
        edge_bias = draw(st.booleans())
    if tau is None:
        tau = draw(st.one_of(st.just(1.0), st.floats(-2.0, 3.0, allow_nan=False, width=32))) \
            if score in TAU_SCORES else 1.0
    if scale is None:
        scale = draw(st.sampled_from([1.0, 0.25, 1.5]))
    style = draw(st.sampled_from(list(styles)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n_dst, n_src = g.shape
    qk_tail = (heads,) if score in SCALAR_SCORES else (heads, dim)
    q = _values(rng, (n_dst,) + qk_tail, style, scale)
    k = _values(rng, (n_src,) + qk_tail, style, scale)
    v = rng.uniform(-1.0, 1.0, size=(n_src, heads, dim_v))
    att = rng.uniform(-1.0, 1.0, size=(heads, dim)) if score == "gatv2" else None
    bias = rng.uniform(-bias_scale, bias_scale, size=(g.nnz, heads)) if edge_bias else None
    if dominant is None:
        dominant = bool(edge_bias) and draw(st.integers(0, 3)) == 0
    if dominant and bias is not None:
        indptr = np.asarray(g.indptr, dtype=np.int64)
        deg = np.diff(indptr)
        rows = np.flatnonzero(deg)
        for h in range(heads):
            pos = indptr[rows] + (rng.random(rows.shape[0]) * deg[rows]).astype(np.int64)
            if rows.shape[0]:
                last = rng.random(rows.shape[0]) < 0.3  # often the row's last edge
                pos[last] = indptr[rows + 1][last] - 1
            bias[pos, h] += DOMINANT_BIAS
    return AttentionInputs(q, k, v, att, bias, float(tau)).astype(dtype)


class AttentionProblem(NamedTuple):
    """A graph, a score configuration and inputs drawn together."""

    g: CSRGraph
    config: dict[str, Any]
    inputs: AttentionInputs

    @property
    def score(self) -> str:
        return self.config["score"]

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``attention_forward`` (score, slope, att, tau, edge_bias)."""
        return {**self.config, **self.inputs.options()}

    def weight_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``attention_weights`` (the same: no ``v`` there)."""
        return self.kwargs()


@st.composite
def attention_problems(draw: Any, scores: Sequence[str] = SCORES, dtype: Any = np.float64,
                       configs: Sequence[dict[str, Any]] | None = None,
                       graphs: st.SearchStrategy[CSRGraph] | None = None,
                       **input_kwargs: Any) -> AttentionProblem:
    """Strategy for ``(g, config, inputs)``: a graph from ``graphs`` (default
    :func:`csr_graphs`), a configuration from ``configs`` (default the
    :data:`SCORE_CONFIGS` of ``scores``) and :func:`attention_inputs` for them.
    Extra keyword arguments go to :func:`attention_inputs`.
    """
    config = draw(st.sampled_from(list(configs)) if configs is not None else score_configs(scores))
    g = draw(graphs if graphs is not None else csr_graphs())
    inputs = draw(attention_inputs(g, config["score"], dtype, **input_kwargs))
    return AttentionProblem(g, dict(config), inputs)


def tolerance(dtype: Any) -> tuple[float, float]:
    """``(rtol, atol)`` for comparing a result of ``dtype`` with a float64 oracle,
    on inputs from :func:`attention_inputs` (values of order 1)."""
    return (1e-9, 1e-11) if np.dtype(dtype) == np.float64 else (2e-4, 2e-5)
