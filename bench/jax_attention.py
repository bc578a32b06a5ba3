#!/usr/bin/env python
"""Sparse attention in JAX: sparsegat.jax.attention against the same operator in pure JAX, on CPU or GPU.

Workload: a seeded uniform graph (every node draws ``--degree`` sources uniformly; repeats
merged, so slightly fewer edges than nodes x degree), default 100k nodes and about 1.6M
edges; ``--heads`` x ``--features`` per head (4 x 32), ``Dv = D``; float32; score ``dot``
(``--score`` picks any of sparsegat's scores).

- ``sparsegat.jax``: :func:`sparsegat.jax.attention`, the fused kernels reading XLA's
  buffers in place (``jax.experimental.buffer_callback``), with sparsegat's hand-written
  backward: on the CPU those of the ``--backend`` (Numba by default), on a GPU
  (``--platform gpu``) the CUDA kernels of the ``cupy`` backend on XLA's stream;
- ``pure JAX``: the operator written with JAX primitives, as one would without
  sparsegat: per-edge gathers ``q[rows]``, ``k[cols]``, ``v[cols]``, the scores, a
  numerically stable softmax with ``jax.ops.segment_max``/``segment_sum`` over the CSR
  rows, and ``segment_sum`` of the weighted values; its backward is JAX's autodiff.

Both are ``jax.jit``-compiled. Forward is ``out = attention(q, k, v)``;
forward+backward is ``jax.value_and_grad`` of ``sum(out * R)`` for a fixed random ``R``
with respect to ``q``, ``k`` and ``v``. Outputs and gradients of the two are compared
first. Times (:func:`sparsegat.bench.timing.time_calls`, ``block_until_ready`` inside the
timed call): ``--repeat`` timed calls after ``--warmup`` untimed ones, median and minimum.
Peak extra host memory (:class:`sparsegat.bench.timing.HostMemoryProbe`: the peak resident
set during one call minus the resident set before it) is measured in a fresh process per
implementation and pass, after one untimed call, so compilation and the graph's cached
structures are not counted: the steady state of a training loop. On a GPU the peak is
not measured (``--no-memory`` implied): XLA's and CuPy's pools each hold their own.

Usage::

    python bench/jax_attention.py                            # the configuration above
    python bench/jax_attention.py --nodes 20000 --repeat 3   # quicker
    python bench/jax_attention.py --score additive --json out.json
    python bench/jax_attention.py --platform gpu --repeat 10     # on JAX's first GPU
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Callable

import numpy as np

OURS, PURE, DIRECT = "sparsegat.jax", "pure JAX", "sparsegat (no JAX)"
PASSES = ("forward", "forward+backward")
SCORES = ("dot", "scaled_dot", "cosine", "euclidean", "additive", "gatv2")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=100_000)
    parser.add_argument("--degree", type=int, default=16)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--features", type=int, default=32, help="features per head (D = Dv)")
    parser.add_argument("--score", choices=SCORES, default="dot")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--platform", choices=["cpu", "gpu"], default="cpu",
                        help="JAX platform to run on (gpu: sparsegat's cupy backend on XLA's stream)")
    parser.add_argument("--backend", choices=["numba", "numpy"], default=None,
                        help="sparsegat's CPU backend (default: numba when installed); ignored on a GPU")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    parser.add_argument("--measure-memory", nargs=2, metavar=("IMPL", "PASS"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


class Problem:
    """Graph, inputs, ``R`` and the two jitted implementations of one configuration."""

    def __init__(self, args: argparse.Namespace) -> None:
        os.environ["JAX_PLATFORMS"] = args.platform if args.platform == "cpu" else "cuda,cpu"
        import jax

        if args.dtype == "float64":
            jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp

        import sparsegat.jax as sj
        from sparsegat.bench.graphs import uniform

        self.jax, self.jnp = jax, jnp
        self.g = uniform(args.nodes, args.degree, seed=args.seed)
        n, heads, d = args.nodes, args.heads, args.features
        rng = np.random.default_rng(args.seed + 1)
        dtype = np.dtype(args.dtype)
        qk = (n, heads) if args.score == "additive" else (n, heads, d)
        self.inputs = {"q": jnp.asarray(rng.standard_normal(qk), dtype),
                       "k": jnp.asarray(rng.standard_normal(qk), dtype),
                       "v": jnp.asarray(rng.standard_normal((n, heads, d)), dtype)}
        self.options: dict[str, Any] = {"score": args.score}
        if args.score == "gatv2":
            self.options["att"] = jnp.asarray(rng.standard_normal((heads, d)), dtype)
        self.R = jnp.asarray(rng.standard_normal((n, heads, d)), dtype)
        self.rows = jnp.asarray(np.asarray(self.g.row_ids()).astype(np.int32))
        self.cols = jnp.asarray(np.asarray(self.g.indices).astype(np.int32))
        g, options = self.g, self.options
        backend = None if args.platform == "gpu" else args.backend
        self.ops = {OURS: lambda q, k, v: sj.attention(g, q, k, v, backend=backend, **options),
                    PURE: lambda q, k, v: self.pure_attention(q, k, v, **options)}

    def pure_attention(self, q: Any, k: Any, v: Any, score: str, att: Any = None) -> Any:
        """The operator in JAX primitives (no sparsegat): :func:`sparsegat.bench.jaxref.pure_attention`."""
        from sparsegat.bench.jaxref import pure_attention

        return pure_attention(q, k, v, self.rows, self.cols, self.g.n_dst, score, att)

    def calls(self, impl: str) -> dict[str, Callable[[], Any]]:
        """Pass name -> zero-argument call that runs the jitted pass and waits for it."""
        jax = self.jax
        op, R, x = self.ops[impl], self.R, self.inputs
        forward = jax.jit(op)
        step = jax.jit(jax.value_and_grad(lambda q, k, v: (op(q, k, v) * R).sum(), argnums=(0, 1, 2)))
        return {"forward": lambda: forward(x["q"], x["k"], x["v"]).block_until_ready(),
                "forward+backward": lambda: jax.block_until_ready(step(x["q"], x["k"], x["v"]))}


def direct_calls(p: Problem, args: argparse.Namespace) -> dict[str, Callable[[], Any]]:
    """The same passes through sparsegat's own functions on NumPy arrays (no JAX): the
    operator's time, against which the callback's overhead is measured. The backward
    gets ``dout = R``, as ``grad`` of ``sum(out * R)`` hands it."""
    import sparsegat as sg

    x = {n: np.asarray(a) for n, a in p.inputs.items()}
    options = dict(p.options)
    if "att" in options:
        options["att"] = np.asarray(options["att"])
    R = np.asarray(p.R)

    def forward() -> Any:
        return sg.attention_forward(p.g, x["q"], x["k"], x["v"], backend=args.backend, **options)

    def step() -> Any:
        _, ctx = forward()
        return sg.attention_backward(ctx, R)

    return {"forward": forward, "forward+backward": step}


def relative_error(a: Any, b: Any) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def compare(p: Problem) -> dict[str, float]:
    """Relative errors of sparsegat's output and gradients against pure JAX's."""
    jax, R, x = p.jax, p.R, p.inputs
    args = (x["q"], x["k"], x["v"])
    errors = {"out": relative_error(jax.jit(p.ops[OURS])(*args), jax.jit(p.ops[PURE])(*args))}
    grads = {impl: jax.jit(jax.grad(lambda q, k, v, op=op: (op(q, k, v) * R).sum(), argnums=(0, 1, 2)))(*args)
             for impl, op in p.ops.items()}
    for name, a, b in zip("qkv", grads[OURS], grads[PURE]):
        errors[f"d{name}"] = relative_error(a, b)
    return errors


def measure_memory(args: argparse.Namespace) -> None:
    """Child process: peak extra host memory of one call of one pass, as a JSON line."""
    from sparsegat.bench.timing import HostMemoryProbe

    impl, name = args.measure_memory
    call = Problem(args).calls(impl)[name]
    call()  # compiled, graph structures cached: the steady state
    probe = HostMemoryProbe()
    print(json.dumps({"peak_host_bytes": probe.measure(call), "method": probe.method}))


def child_command(args: argparse.Namespace, impl: str, name: str) -> list[str]:
    keep = ["--nodes", str(args.nodes), "--degree", str(args.degree), "--heads", str(args.heads),
            "--features", str(args.features), "--score", args.score, "--dtype", args.dtype,
            "--seed", str(args.seed), "--platform", args.platform] + (
                ["--backend", args.backend] if args.backend else [])
    return [sys.executable, os.path.abspath(__file__), *keep, "--measure-memory", impl, name]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.measure_memory:
        measure_memory(args)
        return 0
    from sparsegat.bench.timing import cpu_threads, format_seconds, run_json, summarize, time_calls

    p = Problem(args)
    if args.platform == "gpu":
        args.no_memory = True
    device = p.inputs["q"].devices().pop()
    print(f"JAX device: {device.platform} {getattr(device, 'device_kind', '')}")
    print(f"uniform graph: {p.g.n_dst} nodes, {p.g.nnz} edges; H={args.heads}, D=Dv={args.features}, "
          f"score={args.score}, {args.dtype}; {cpu_threads()} CPU threads; JAX {p.jax.__version__}")
    errors = compare(p)
    print("relative error of sparsegat.jax against pure JAX: "
          + ", ".join(f"{n} {e:.1e}" for n, e in errors.items()))
    results: dict[str, dict[str, Any]] = {}
    impls = (OURS, PURE) if args.platform == "gpu" else (OURS, DIRECT, PURE)
    for impl in impls:
        calls = direct_calls(p, args) if impl == DIRECT else p.calls(impl)
        times = time_calls(calls, warmup=args.warmup, repeat=args.repeat)
        for name, t in times.items():
            results[f"{impl}: {name}"] = summarize(t)
    if not args.no_memory:
        for impl in (OURS, PURE):
            for name in PASSES:
                results[f"{impl}: {name}"].update(run_json(child_command(args, impl, name)))
    print(f"\n{'measurement':<34} {'median':>10} {'min':>10} {'peak extra memory':>18}")
    for key, r in results.items():
        mem = r.get("peak_host_bytes")
        print(f"{key:<34} {format_seconds(r['median_s']):>10} {format_seconds(r['min_s']):>10} "
              f"{'-' if mem is None else f'{mem / 2**20:.0f} MiB':>18}")
    if DIRECT in impls:
        for name in PASSES:
            ours, direct = results[f"{OURS}: {name}"], results[f"{DIRECT}: {name}"]
            print(f"{name}: the JAX callback costs {100 * (ours['median_s'] / direct['median_s'] - 1):+.1f}% "
                  f"over the operator called directly (median; {100 * (ours['min_s'] / direct['min_s'] - 1):+.1f}% "
                  f"by the minimum)")
    for name in PASSES:
        ours, pure = results[f"{OURS}: {name}"], results[f"{PURE}: {name}"]
        line = f"{name}: sparsegat.jax is {pure['median_s'] / ours['median_s']:.2f}x the speed of pure JAX"
        if ours.get("peak_host_bytes") and pure.get("peak_host_bytes"):
            line += f", with {ours['peak_host_bytes'] / pure['peak_host_bytes']:.2f}x its peak extra memory"
        print(line)
    if args.json:
        doc = {"config": {k: v for k, v in vars(args).items() if k not in ("json", "measure_memory")},
               "graph": {"n": p.g.n_dst, "nnz": p.g.nnz}, "errors": errors, "results": results,
               "jax": p.jax.__version__, "threads": cpu_threads(),
               "device": f"{device.platform} {getattr(device, 'device_kind', '')}"}
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
