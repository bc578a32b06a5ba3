#!/usr/bin/env python
"""First-call compile time and cached start-up of the numba backend, per score.

For each score, two fresh processes share a new, empty Numba cache directory
(``NUMBA_CACHE_DIR``): the first compiles everything it calls (cold), the
second finds the machine code on disk (cached start-up). Each process times
``import sparsegat`` and then the first ``attention_forward``,
``attention_backward`` and ``attention_weights`` on a small graph (float32,
int32 indices; compile time does not depend on the graph size). The times
include Numba's own start-up in the process (importing numba, initialising
LLVM and the threading layer on the first parallel call).

Usage::

    python bench/numba_compile_times.py [--scores additive,dot] [--dtype float32]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

from sparsegat.bench.timing import run_json

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
import sparsegat as sg
t_import = time.perf_counter() - t0
score, dtype = sys.argv[1], np.dtype(sys.argv[2])
rng = np.random.default_rng(0)
g = sg.CSRGraph.from_edge_index(rng.integers(0, 50, 400), rng.integers(0, 50, 400), num_src=50, num_dst=50)
H, D = 2, 4
tail = (H,) if score == "additive" else (H, D)
q = rng.standard_normal((50,) + tail).astype(dtype)
v = rng.standard_normal((50, H, 3)).astype(dtype)
att = rng.standard_normal((H, D)).astype(dtype) if score == "gatv2" else None
t = time.perf_counter()
out, ctx = sg.attention_forward(g, q, q, v, score=score, att=att, backend="numba")
t_fwd = time.perf_counter() - t
t = time.perf_counter()
sg.attention_backward(ctx, out)
t_bwd = time.perf_counter() - t
t = time.perf_counter()
sg.attention_weights(g, q, q, score=score, att=att, backend="numba")
t_w = time.perf_counter() - t
t = time.perf_counter()
out, ctx = sg.attention_forward(g, q, q, v, score=score, att=att, backend="numba")
sg.attention_backward(ctx, out)
t_again = time.perf_counter() - t
print(json.dumps({"import": t_import, "forward": t_fwd, "backward": t_bwd, "weights": t_w,
                  "forward+backward again": t_again}))
"""


def run(score: str, dtype: str, cache_dir: str) -> dict:
    """Times of one fresh process using the Numba cache in ``cache_dir``."""
    return run_json([sys.executable, "-c", CHILD, score, dtype], dict(os.environ, NUMBA_CACHE_DIR=cache_dir))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scores", default="dot,scaled_dot,cosine,euclidean,additive,gatv2")
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args()
    print(f"load average {os.getloadavg()}")
    print(f"{'score':11s} {'':6s} {'import':>7s} {'forward':>8s} {'backward':>9s} {'weights':>8s} {'again':>7s}  (s)")
    results = {}
    for score in args.scores.split(","):
        with tempfile.TemporaryDirectory() as cache:
            cold = run(score, args.dtype, cache)
            warm = run(score, args.dtype, cache)
        results[score] = {"cold": cold, "cached": warm}
        for label, r in (("cold", cold), ("cached", warm)):
            print(f"{score:11s} {label:6s} {r['import']:7.2f} {r['forward']:8.2f} {r['backward']:9.2f} "
                  f"{r['weights']:8.2f} {r['forward+backward again']:7.3f}")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
