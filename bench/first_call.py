#!/usr/bin/env python
"""The first layer call of a fresh process: with Numba's on-disk cache warm, and cold.

Each measurement is a fresh interpreter that imports sparsegat, builds a ``GATConv``
(``--in-dim`` -> ``--heads`` x ``--out``, float32) and a seeded uniform graph, then times
its first forward+backward, and a second one. "warm": the kernels are in Numba's cache
(a run before filled it); "cold": ``NUMBA_CACHE_DIR`` points at a new empty folder, so
everything is compiled (the notice on stderr says so).

Usage::

    python bench/first_call.py                # warm and cold, 2708 nodes
    python bench/first_call.py --no-cold      # warm only
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

CHILD = """
import json, sys, time
t0 = time.perf_counter()
import numpy as np
import sparsegat as sg
from sparsegat.bench.graphs import uniform
t_import = time.perf_counter() - t0
n, in_dim, heads, out = (int(a) for a in sys.argv[1:5])
g = uniform(n, 8, seed=0)
rng = np.random.default_rng(0)
x = rng.standard_normal((n, in_dim)).astype(np.float32)
layer = sg.nn.GATConv(in_dim, out, heads=heads, dtype=np.float32, seed=0)
dy = np.ones((n, heads * out), np.float32)
times = []
for _ in range(2):
    t = time.perf_counter()
    layer.forward(x, g, training=True)
    layer.backward(dy)
    times.append(time.perf_counter() - t)
print(json.dumps({"import_s": t_import, "first_s": times[0], "second_s": times[1]}))
"""


def child(args: argparse.Namespace, env: dict[str, str]) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(args.nodes), str(args.in_dim), str(args.heads),
                          str(args.out)], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1]) | {"stderr": out.stderr.strip()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=2708)
    ap.add_argument("--in-dim", type=int, default=64)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--out", type=int, default=8)
    ap.add_argument("--runs", type=int, default=3, help="warm processes")
    ap.add_argument("--no-cold", action="store_true")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    results: dict[str, list] = {"warm": []}
    child(args, dict(os.environ))  # fills the cache
    for _ in range(args.runs):
        results["warm"].append(child(args, dict(os.environ)))
    if not args.no_cold:
        with tempfile.TemporaryDirectory() as cache:
            results["cold"] = [child(args, dict(os.environ, NUMBA_CACHE_DIR=cache))]
    for kind, runs in results.items():
        for r in runs:
            print(f"{kind}: import {r['import_s']:.2f} s, first forward+backward {r['first_s']:.2f} s, "
                  f"second {r['second_s'] * 1e3:.1f} ms" + (f"; stderr: {r['stderr']}" if r["stderr"] else ""))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
