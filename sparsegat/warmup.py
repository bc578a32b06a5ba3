"""``sparsegat.warmup``: compile the kernels ahead of time, so that no first call pauses.

The Numba kernels are compiled once per (score, float dtype) and kept in Numba's
on-disk cache; a process that finds them there loads them in a fraction of a second.
:func:`warmup` runs every asked-for specialisation once on a tiny graph (forward,
backward and the attention weights, and the layers' dense kernels), so that a later
process, or the rest of this one, never compiles. ``sparsegat warmup`` on the command
line does the same.
"""

from __future__ import annotations

import argparse
import time
from typing import Iterable, Sequence

import numpy as np

from .spec import SCORES

#: The float dtypes the kernels are built for.
DTYPES = ("float32", "float64")


def warmup(scores: Iterable[str] = SCORES, dtypes: Iterable[str] = DTYPES, *, backend: str | None = None,
           backward: bool = True, layers: bool = True) -> dict[str, float]:
    """Compile (or load from the on-disk cache) the kernels of ``scores`` x ``dtypes``.

    Parameters
    ----------
    scores : iterable of str
        Scores to prepare (default: all of :data:`sparsegat.SCORES`).
    dtypes : iterable of {"float32", "float64"}
        Float dtypes to prepare (default: both).
    backend : {"numba", "cupy"}, optional
        Whose kernels (default: ``"numba"`` when installed; the NumPy reference
        compiles nothing). ``"cupy"`` compiles the CUDA modules on the current GPU.
    backward : bool
        Also the backward kernels (a training run needs them).
    layers : bool
        Also the dense kernels the layers and the optimiser use (``numba`` only).

    Returns
    -------
    dict
        Seconds spent per ``"dtype/score"`` (and ``"layers"``): several seconds for a
        compilation, milliseconds for a load from the cache. Empty when there is
        nothing to compile.
    """
    from .attention import attention_backward, attention_forward, attention_weights
    from .backends import available_backends, get_backend

    scores, dtypes = list(scores), [np.dtype(d) for d in dtypes]
    for s in scores:
        if s not in SCORES:
            raise ValueError(f"scores: unknown score {s!r}; choose from {', '.join(SCORES)}")
    for d in dtypes:
        if d not in (np.float32, np.float64):
            raise ValueError(f"dtypes: the kernels exist for float32 and float64, got {d}")
    if backend is None:
        if "numba" not in available_backends():
            return {}
        backend = "numba"
    if backend not in ("numba", "cupy"):
        raise ValueError(f"backend must be 'numba' or 'cupy' (the NumPy reference compiles nothing), got {backend!r}")
    get_backend(backend)  # ImportError naming the extra when it is missing
    xp = np
    if backend == "cupy":
        import cupy as xp  # noqa: F811
    g = _tiny_graph(backend)
    times: dict[str, float] = {}
    for dtype in dtypes:
        for score in scores:
            start = time.perf_counter()
            q, k, v, att = _inputs(xp, g, score, dtype)
            out, ctx = attention_forward(g, q, k, v, score=score, att=att, backend=backend)
            attention_weights(g, q, k, score=score, att=att, backend=backend)
            if backward:
                attention_backward(ctx, xp.ones_like(out))
            times[f"{dtype}/{score}"] = time.perf_counter() - start
    if layers and backend == "numba":
        start = time.perf_counter()
        _layer_kernels(dtypes)
        times["layers"] = time.perf_counter() - start
    return times


def _tiny_graph(backend: str):
    from .graph import CSRGraph

    g = CSRGraph.from_edge_index([0, 1, 2, 1, 2, 0], [0, 1, 2, 0, 1, 2], num_src=3, num_dst=3)
    return g.to("cupy") if backend == "cupy" else g


def _inputs(xp, g, score: str, dtype: np.dtype) -> tuple:
    rng = np.random.default_rng(0)
    qk = (1,) if score == "additive" else (1, 2)
    q = xp.asarray(rng.standard_normal((g.n_dst,) + qk).astype(dtype))
    k = xp.asarray(rng.standard_normal((g.n_src,) + qk).astype(dtype))
    v = xp.asarray(rng.standard_normal((g.n_src, 1, 2)).astype(dtype))
    att = xp.asarray(rng.standard_normal((1, 2)).astype(dtype)) if score == "gatv2" else None
    return q, k, v, att


def _layer_kernels(dtypes: list[np.dtype]) -> None:
    """The numba backend's sparse-feature product and Adam step, per dtype."""
    from .backends.numba import backend as nb
    from .backends.numba.compile_notice import working_on

    indptr, indices = np.array([0, 1, 2], np.int32), np.array([0, 1], np.int32)
    for dtype in dtypes:
        with working_on(f"the layers ({dtype})"):
            nb.csr_matmul(indptr, indices, np.ones(2, dtype), np.ones((2, 2), dtype))
            p, g_, m, v = (np.ones(3, dtype) for _ in range(4))
            nb.adam_update(p, g_, m, v, None, 1, 1e-3, (0.9, 0.999), 1e-8, 0.0, False, False, False)


def main(argv: Sequence[str] | None = None) -> int:
    """``sparsegat warmup``: :func:`warmup` from the command line; prints the time per kernel set."""
    parser = argparse.ArgumentParser(prog="sparsegat warmup", description=__doc__.splitlines()[0])
    parser.add_argument("--scores", nargs="+", default=list(SCORES), choices=SCORES, metavar="SCORE",
                        help=f"scores to prepare (default: all of {', '.join(SCORES)})")
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=DTYPES, metavar="DTYPE",
                        help="float dtypes to prepare (default: float32 float64)")
    parser.add_argument("--backend", choices=["numba", "cupy"], default=None,
                        help="whose kernels (default: numba when installed)")
    parser.add_argument("--no-backward", action="store_true", help="forward and weights kernels only")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    times = warmup(args.scores, args.dtypes, backend=args.backend, backward=not args.no_backward)
    if not times:
        print("sparsegat warmup: nothing to compile (Numba is not installed; pip install 'sparsegat[numba]')")
        return 0
    for label, seconds in times.items():
        print(f"{label:<22} {seconds:8.2f} s")
    print(f"{'total':<22} {time.perf_counter() - start:8.2f} s")
    return 0
