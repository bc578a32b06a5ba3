#!/usr/bin/env python
"""One thread against two for the numba kernels, by size: where should ``SERIAL_WORK`` be?

For uniform graphs of degree 16 and growing size (dot score, 4 heads x 32, float32),
the forward and the backward of the numba backend are timed with every call forced
onto one thread (``threads.SERIAL_WORK`` huge) and with every call on all threads in
dynamic chunks (``SERIAL_WORK = 0``); medians of ``--repeat`` calls. A backend
diagnostic: it sets the constant of ``sparsegat/backends/numba/threads.py``.

Usage::

    python bench/kernel_threads.py
    python bench/kernel_threads.py --nodes 1000 10000 --repeat 20
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def run(n: int, serial: bool, repeat: int) -> tuple[float, float, int]:
    import sparsegat as sg
    from sparsegat.backends.numba import threads
    from sparsegat.bench.graphs import uniform

    g = uniform(n, 16, seed=0)
    q = np.random.default_rng(0).standard_normal((n, 4, 32)).astype(np.float32)
    threads.SERIAL_WORK = (1 << 62) if serial else 0
    out, ctx = sg.attention_forward(g, q, q, q, backend="numba", check_finite=False)
    dout = np.ones_like(out)
    sg.attention_backward(ctx, dout, check_finite=False)
    fwd, bwd = [], []
    for _ in range(repeat):
        t = time.perf_counter()
        out, ctx = sg.attention_forward(g, q, q, q, backend="numba", check_finite=False)
        fwd.append(time.perf_counter() - t)
        t = time.perf_counter()
        sg.attention_backward(ctx, dout, check_finite=False)
        bwd.append(time.perf_counter() - t)
    return float(np.median(fwd)) * 1e3, float(np.median(bwd)) * 1e3, g.nnz * 4 * 64


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, nargs="+", default=[500, 1000, 2000, 4000, 10000, 30000, 100000])
    ap.add_argument("--repeat", type=int, default=0, help="calls per measurement (default: 40, 8 from 30k nodes)")
    args = ap.parse_args(argv)
    for n in args.nodes:
        repeat = args.repeat or (40 if n <= 10000 else 8)
        s, p = run(n, True, repeat), run(n, False, repeat)
        print(f"n={n:7d} work={s[2]:>11d}: forward 1 thread {s[0]:8.3f} ms, all threads {p[0]:8.3f} ms | "
              f"backward {s[1]:8.3f} / {p[1]:8.3f} ms", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
