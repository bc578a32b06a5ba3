#!/usr/bin/env python
"""Tiny forward / weights / backward of every score on the ``cupy`` backend, against the
NumPy reference in float64: the first thing to run on a new GPU machine.

Small enough to run under ``CUDA_LAUNCH_BLOCKING=1`` and ``compute-sanitizer`` in a few
seconds per configuration. Each configuration uses a graph with an empty row, a hub row
longer than a segment (so the merge kernels run), a hub column, and a repeated-looking
bipartite shape; inputs without ``edge_bias``/``att`` exercise the null pointer
arguments. Prints one line per configuration and exits 1 on the first mismatch or
non-finite result.

Usage::

    python bench/gpu_smoke.py            # every score x float32/float64 x int32/int64
    python bench/gpu_smoke.py --quick    # three configurations (for the sanitizers)
    python bench/gpu_smoke.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import numpy as np

import sparsegat
from sparsegat import CSRGraph
from sparsegat.spec import SCORES

#: (score, dtype, index dtype, with edge_bias) of ``--quick``.
QUICK = (("dot", np.float32, np.int32, False), ("gatv2", np.float64, np.int64, True),
         ("cosine", np.float32, np.int64, False))
#: Edges of the hub row: more than the longest row segment (1024 edges, at one lane per edge).
HUB = 1100
TOL = {np.dtype(np.float32): 2e-4, np.dtype(np.float64): 1e-10}


def smoke_graph(n_dst: int, n_src: int, hub: int, index_dtype: Any, seed: int = 0) -> CSRGraph:
    """``n_dst x n_src``: random rows of 0-5 edges, row 0 empty, row 1 a hub of ``hub``
    edges, every row also attending to source 0 (a hub column)."""
    rng = np.random.default_rng(seed)
    deg = rng.integers(0, 6, n_dst)
    deg[0], deg[1] = 0, 0
    dst = np.repeat(np.arange(n_dst), deg)
    src = rng.integers(0, n_src, dst.shape[0])
    dst = np.concatenate([dst, np.full(hub, 1), np.arange(2, n_dst)])
    src = np.concatenate([src, rng.choice(n_src, hub, replace=hub > n_src), np.zeros(n_dst - 2, np.int64)])
    return CSRGraph.from_edge_index(src, dst, num_src=n_src, num_dst=n_dst, index_dtype=index_dtype)


def run_config(score: str, dtype: Any, index_dtype: Any, with_bias: bool, H: int = 2, D: int = 8,
               Dv: int = 8, seed: int = 0) -> dict[str, float]:
    """Max relative difference to the reference of each result of one configuration."""
    import cupy

    n_dst, n_src = 40, 1200
    g = smoke_graph(n_dst, n_src, hub=HUB, index_dtype=index_dtype, seed=seed)
    rng = np.random.default_rng(seed + 1)
    qk_shape = (lambda n: (n, H)) if score == "additive" else (lambda n: (n, H, D))
    host = {"q": rng.uniform(-1, 1, qk_shape(n_dst)), "k": rng.uniform(-1, 1, qk_shape(n_src)),
            "v": rng.uniform(-1, 1, (n_src, H, Dv))}
    opts: dict[str, Any] = {"score": score}
    if score == "gatv2":
        opts["att"] = rng.uniform(-1, 1, (H, D))
    if score in ("cosine", "euclidean"):
        opts["tau"] = 0.7
    if with_bias:
        opts["edge_bias"] = rng.uniform(-1, 1, (g.nnz, H))
    dout = rng.uniform(-1, 1, (n_dst, H, Dv))

    ref_out, ref_ctx = sparsegat.attention_forward(g, host["q"], host["k"], host["v"], backend="numpy", **opts)
    ref = {"out": ref_out, "weights": sparsegat.attention_weights(g, host["q"], host["k"], backend="numpy", **opts)}
    ref.update(sparsegat.attention_backward(ref_ctx, dout).items())

    dev = (lambda a: cupy.asarray(np.asarray(a, dtype=dtype)))
    gg = g.to("cupy")
    dopts = {k: (dev(v) if isinstance(v, np.ndarray) else v) for k, v in opts.items()}
    out, ctx = sparsegat.attention_forward(gg, dev(host["q"]), dev(host["k"]), dev(host["v"]), **dopts)
    got = {"out": out, "weights": sparsegat.attention_weights(gg, dev(host["q"]), dev(host["k"]), **dopts)}
    got.update(sparsegat.attention_backward(ctx, dev(dout)).items())
    cupy.cuda.runtime.deviceSynchronize()

    errors = {}
    for name, want in ref.items():
        have = cupy.asnumpy(got[name]).astype(np.float64)
        if have.shape != np.shape(want) or not np.all(np.isfinite(have)):
            errors[name] = float("inf")
            continue
        scale = max(1.0, float(np.max(np.abs(want)))) if np.size(want) else 1.0
        errors[name] = float(np.max(np.abs(have - want)) / scale) if np.size(want) else 0.0
    return errors


def configurations(quick: bool) -> list[tuple]:
    if quick:
        return list(QUICK)
    return [(s, dt, it, s == "dot") for s in SCORES for dt in (np.float32, np.float64)
            for it in (np.int32, np.int64)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="three configurations only")
    ap.add_argument("--json", help="write the per-configuration errors here")
    args = ap.parse_args(argv)
    try:
        import cupy

        cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # no CuPy, driver or device
        print(f"gpu_smoke: needs CuPy and a CUDA GPU ({exc.__class__.__name__}: {exc})", file=sys.stderr)
        return 2
    results, failed = [], False
    for score, dtype, index_dtype, with_bias in configurations(args.quick):
        label = f"{score:10s} {np.dtype(dtype).name} {np.dtype(index_dtype).name} bias={with_bias}"
        t0 = time.perf_counter()
        try:
            errors = run_config(score, dtype, index_dtype, with_bias)
        except Exception as exc:  # report every configuration, then fail
            print(f"{label}: ERROR {exc.__class__.__name__}: {exc}", flush=True)
            results.append({"config": label, "error": f"{exc.__class__.__name__}: {exc}"})
            failed = True
            continue
        worst = max(errors.values())
        ok = worst <= TOL[np.dtype(dtype)]
        failed |= not ok
        print(f"{label}: {'ok' if ok else 'MISMATCH'} max rel diff {worst:.1e} "
              f"({time.perf_counter() - t0:.2f} s)"
              + ("" if ok else f" {errors}"), flush=True)
        results.append({"config": label, "ok": ok, "errors": errors, "seconds": time.perf_counter() - t0})
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
