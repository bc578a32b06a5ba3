#!/usr/bin/env python
"""Graph set-up on CPU: building a ``CSRGraph`` and its cached structures against SciPy.

Workload: ``--nodes`` nodes and ``nodes * degree`` random directed edges (uniform
source and destination ids, int64, repeated pairs included), drawn once with a fixed
seed. Every operation is timed on the same edges:

- the peer: SciPy's ``coo_matrix((ones, (dst, src)), shape).tocsr()`` followed by
  ``sum_duplicates()`` (float64 unit values; duplicates summed into one entry);
- ``CSRGraph.from_edge_index`` with ``duplicates="keep"``, ``"merge"``, and
  ``"keep"`` with ``return_perm=True``;
- ``CSRGraph.from_scipy`` of a canonical SciPy CSR (the peer's result) and of an
  unsorted one (rows in input order, repeated entries stored apart);
- ``g.with_self_loops()`` and ``g.with_self_loops(replace=True)``;
- ``g.transposed()`` uncached: each call on a fresh graph over the same (already
  checked) arrays, so the structure is really built;
- the self-loop cache of the ``nn`` layers (``nn.graph_with_self_loops`` with the
  edge ids); with numba installed, an attention forward+backward (``additive``, one
  head, one feature) on a fresh looped graph, which builds the numba backend's cached
  plans (kernel-dtype CSR and transposed arrays, balanced chunks), against a later one;
  and the first ``GATConv`` forward+backward on a fresh graph against a later one (the
  kernels compiled beforehand on a tiny graph, so the difference is the graph set-up).

A fresh graph is built before its timed call (``CSRGraph(indptr, indices, shape)``
over the arrays of one built graph), outside the timed interval. Each operation runs
once per round, ``--repeat`` rounds (round-robin, so that load from other processes
tends to hit every operation alike); the table gives the median and the minimum
(seconds) and the ratio of the median to SciPy's median. The load average
(``os.getloadavg``) is recorded before and after.

Usage::

    python bench/graph_setup.py                          # 1M nodes, 16M edges
    python bench/graph_setup.py --nodes 100000 --repeat 3
    python bench/graph_setup.py --json graph_setup.json  # also write the figures
    python bench/graph_setup.py --skip-layer             # graph operations only
    python bench/graph_setup.py --only from_edge,transposed  # a subset (SciPy's figure always)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable

import numpy as np
import scipy
import scipy.sparse as sp

import sparsegat as sg
from sparsegat.bench.timing import summarize

PEER = "scipy coo->csr + sum_duplicates"


def random_edges(nodes: int, degree: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(src, dst)``: ``nodes * degree`` uniform random int64 ids."""
    rng = np.random.default_rng(seed)
    edges = nodes * degree
    return rng.integers(0, nodes, edges, dtype=np.int64), rng.integers(0, nodes, edges, dtype=np.int64)


def unsorted_csr(src: np.ndarray, dst: np.ndarray, n: int) -> Any:
    """A SciPy CSR of the edges whose rows keep the input order (unsorted, duplicates apart)."""
    order = np.argsort(dst, kind="stable")
    indptr = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(np.bincount(dst, minlength=n), out=indptr[1:])
    A = sp.csr_matrix((np.ones(src.shape[0]), src[order].astype(np.int32), indptr), shape=(n, n))
    A.has_sorted_indices = False
    return A


def fresh(g: sg.CSRGraph) -> sg.CSRGraph:
    """A graph over the same (sealed, so not copied) arrays, with nothing cached on it."""
    return sg.CSRGraph(g.indptr, g.indices, g.shape)


#: An operation: ``(setup, call)``; ``call(setup())`` is timed, ``setup()`` is not.
Operation = tuple[Callable[[], Any], Callable[[Any], Any]]


def _plain(fn: Callable[[], Any]) -> Operation:
    return (lambda: None), (lambda _: fn())


def graph_operations(src: np.ndarray, dst: np.ndarray, n: int) -> dict[str, Operation]:
    """The timed graph operations, peer first."""
    ones = np.ones(src.shape[0])
    canonical = sp.coo_matrix((ones, (dst, src)), shape=(n, n)).tocsr()
    canonical.sum_duplicates()
    unsorted = unsorted_csr(src, dst, n)
    g = sg.CSRGraph.from_edge_index(src, dst, num_src=n, num_dst=n)

    def peer() -> Any:
        A = sp.coo_matrix((ones, (dst, src)), shape=(n, n)).tocsr()
        A.sum_duplicates()
        return A

    return {
        PEER: _plain(peer),
        "from_edge_index keep": _plain(lambda: sg.CSRGraph.from_edge_index(src, dst, num_src=n, num_dst=n)),
        "from_edge_index merge": _plain(lambda: sg.CSRGraph.from_edge_index(src, dst, num_src=n, num_dst=n,
                                                                            duplicates="merge")),
        "from_edge_index keep+perm": _plain(lambda: sg.CSRGraph.from_edge_index(src, dst, num_src=n, num_dst=n,
                                                                                return_perm=True)),
        "from_scipy canonical": _plain(lambda: sg.CSRGraph.from_scipy(canonical)),
        "from_scipy unsorted": _plain(lambda: sg.CSRGraph.from_scipy(unsorted)),
        "with_self_loops()": _plain(lambda: g.with_self_loops()),
        "with_self_loops(replace=True)": _plain(lambda: g.with_self_loops(replace=True)),
        "transposed() uncached": (lambda: fresh(g), lambda h: h.transposed()),
    }


def layer_operations(src: np.ndarray, dst: np.ndarray, n: int) -> dict[str, Operation]:
    """The first-use structures of a ``GATConv`` step, and the step itself, first and later."""
    from sparsegat.nn import graph_with_self_loops

    g = sg.CSRGraph.from_edge_index(src, dst, num_src=n, num_dst=n)
    ops: dict[str, Operation] = {
        "nn self-loop cache": (lambda: fresh(g), lambda h: graph_with_self_loops(h, return_edge_ids=True)),
    }
    if "numba" not in sg.available_backends():
        return ops
    looped = graph_with_self_loops(g)
    q, k, v = (np.zeros((n, 1), np.float32), np.zeros((n, 1), np.float32), np.zeros((n, 1, 1), np.float32))

    def attend(h: sg.CSRGraph) -> Any:
        out, ctx = sg.attention_forward(h, q, k, v, score="additive", backend="numba")
        return sg.attention_backward(ctx, out)

    attend(fresh(looped))  # compile
    ops["numba attention, first call (plans built)"] = (lambda: fresh(looped), attend)
    ops["numba attention, later call"] = _plain(lambda: attend(looped))
    layer, x, R = _layer(n)
    tiny = sg.CSRGraph.from_edge_index(src[:64] % 8, dst[:64] % 8, num_src=8, num_dst=8)
    _step(layer, tiny, x[:8], R[:8])  # compile the kernels before timing anything
    warm = fresh(g)
    _step(layer, warm, x, R)
    ops["layer first forward+backward"] = (lambda: fresh(g), lambda h: _step(layer, h, x, R))
    ops["layer later forward+backward"] = _plain(lambda: _step(layer, warm, x, R))
    return ops


def _layer(n: int) -> tuple[Any, np.ndarray, np.ndarray]:
    from sparsegat.nn import GATConv

    in_dim, heads, out = 16, 2, 8
    rng = np.random.default_rng(1)
    layer = GATConv(in_dim, out, heads=heads, dtype=np.float32, seed=0, backend="numba")
    x = rng.standard_normal((n, in_dim)).astype(np.float32)
    R = rng.standard_normal((n, heads * out)).astype(np.float32)
    return layer, x, R


def _step(layer: Any, g: sg.CSRGraph, x: np.ndarray, R: np.ndarray) -> Any:
    layer.forward(x, g, training=True)
    return layer.backward(R)


def time_once(op: Operation) -> float:
    """Seconds of one ``call(setup())``, the setup left out and its result released first."""
    setup, call = op
    arg = setup()
    t0 = time.perf_counter()
    call(arg)
    return time.perf_counter() - t0


def table(times: dict[str, list[float]]) -> str:
    """The results as a Markdown table: median, min and median / SciPy's median."""
    peer = statistics.median(times[PEER])
    lines = ["| operation | median s | min s | x SciPy |", "|---|---:|---:|---:|"]
    for name, t in times.items():
        med = statistics.median(t)
        lines.append(f"| {name} | {med:.3f} | {min(t):.3f} | {med / peer:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=1_000_000)
    ap.add_argument("--degree", type=int, default=16, help="random edges per node")
    ap.add_argument("--repeat", type=int, default=5, help="rounds: timed runs per operation")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", default=None, help="comma-separated substrings: time only matching operations")
    ap.add_argument("--skip-layer", action="store_true", help="leave out the nn/numba first-use figures")
    ap.add_argument("--json", default=None, metavar="PATH", help="also write the figures as JSON")
    args = ap.parse_args(argv)

    load_before = os.getloadavg()
    src, dst = random_edges(args.nodes, args.degree, args.seed)
    ops = graph_operations(src, dst, args.nodes)
    if not args.skip_layer:
        try:
            ops.update(layer_operations(src, dst, args.nodes))
        except Exception as exc:  # the layer figures are extras: report and go on with the rest
            print(f"layer figures skipped: {type(exc).__name__}: {exc}", file=sys.stderr)
    if args.only:
        keys = args.only.split(",")
        ops = {k: f for k, f in ops.items() if k == PEER or any(s in k for s in keys)}
    times: dict[str, list[float]] = {name: [] for name in ops}
    for round_ in range(args.repeat):  # round-robin, so that a burst of load hits every operation alike
        for name, op in ops.items():
            times[name].append(time_once(op))
            print(f"round {round_ + 1}: {name}: {times[name][-1]:.3f} s", file=sys.stderr, flush=True)
    load_after = os.getloadavg()
    print(f"{args.nodes} nodes, {src.shape[0]} edges; load average {load_before[0]:.2f} before, "
          f"{load_after[0]:.2f} after; numpy {np.__version__}, scipy {scipy.__version__}")
    print(table(times))
    if args.json:
        peer = statistics.median(times[PEER])
        out = {
            "nodes": args.nodes, "edges": int(src.shape[0]), "repeat": args.repeat, "seed": args.seed,
            "load_before": load_before, "load_after": load_after,
            "numpy": np.__version__, "scipy": scipy.__version__, "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "results": {k: {"times_s": t, **summarize(t), "ratio_to_scipy": statistics.median(t) / peer}
                        for k, t in times.items()},
        }
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
