#!/usr/bin/env python
"""One GAT layer step on a GPU: sparsegat's ``cupy`` backend against PyG's GATConv on CUDA.

Workloads of issue 5 (synthetic graphs of the size of the real data sets, uniform
random edges plus self-loops, float32):

- ``arxiv``:  169,343 nodes, 2,315,598 directed edges, 128 -> 3 heads x 64;
- ``reddit``: 232,965 nodes, 114,615,892 directed edges, 602 -> 4 heads x 64;
- ``fused``:  the fused attention forward alone, 100,000 nodes of in-degree 16,
  one head of 128 features (``additive``: GAT's per-node scalar terms and 128-wide
  values; and ``dot``: 128-wide queries, keys and values), with the effective
  memory bandwidth.

The layer is PyG's ``GATConv(in, C, heads=H, add_self_loops=False)`` on a graph that
already holds its self-loops: ``h = x W``, ``a_src = <h_j, att_src>``, ``a_dst = <h_i,
att_dst>``, ``e_ij = LeakyReLU(a_dst_i + a_src_j)``, softmax over each row, ``out_i =
sum_j a_ij h_j``, concatenated heads plus bias. sparsegat runs the same function with
``attention_forward(score="additive")`` and CuPy dense algebra; PyG gets the same
parameters and the outputs are compared. A step is forward, then backward of
``sum(out * R)`` for a fixed random ``R``, with gradients of ``W``, ``att_src``,
``att_dst``, ``bias`` (``x`` needs none, as the first layer of a model).

Timing: CUDA events around each call, median of ``--repeats`` after ``--warmup``
calls. Peak memory: the largest amount of device memory held by live allocations
during one warm step beyond what was live before it (inputs, parameters, and the
graph with its cached transposed structure), through a CuPy memory hook for
sparsegat and ``torch.cuda.max_memory_allocated`` for PyG. A PyG run that runs out of
memory is reported as ``OOM``.

Fused-forward bandwidth, two byte counts over the kernel time (the forward kernel
alone, replayed back to back without Python in between):

- ``compulsory``: every array the kernel touches counted once (indices, segment
  plan, q, k, v, out and the two per-row statistics);
- ``requested``: what the kernel asks the memory system for, with the per-edge
  gathers of k_j and v_j counted at every edge (what L2 must serve).

Usage (on a machine with an NVIDIA GPU, CuPy and, for the comparison, torch and PyG)::

    python bench/gatconv_gpu.py                       # all workloads
    python bench/gatconv_gpu.py --only arxiv fused    # some of them
    python bench/gatconv_gpu.py --scale 0.05          # smaller graphs, a quick run
    python bench/gatconv_gpu.py --json results.json
    python bench/gatconv_gpu.py --check-cpu           # no GPU: check the layer math
                                                      # (NumPy backend vs PyG on CPU)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any, Callable

import numpy as np

import sparsegat
from sparsegat import CSRGraph

WORKLOADS = {
    "arxiv": dict(nodes=169_343, edges=2_315_598, in_dim=128, heads=3, out_dim=64),
    "reddit": dict(nodes=232_965, edges=114_615_892, in_dim=602, heads=4, out_dim=64),
}
FUSED = dict(nodes=100_000, degree=16, heads=1, dim=128)
SLOPE = 0.2


# ----------------------------------------------------------------------------- graphs
def random_graph(xp: Any, n: int, m: int, seed: int, degree: int | None = None) -> tuple[CSRGraph, Any, Any]:
    """``(g, src, dst)``: ``m`` uniform random edges (or ``degree`` per row) plus every
    self-loop, canonical CSR of int32 indices built on the device of ``xp``.
    ``src``/``dst`` (int64) are the edge list in CSR order, for PyG."""
    rng = xp.random.default_rng(seed)
    if degree is not None:
        dst = xp.repeat(xp.arange(n, dtype=xp.int64), degree)
        src = rng.integers(0, n, size=n * degree, dtype=xp.int64)
        loops = xp.zeros(0, dtype=xp.int64)
    else:
        dst = rng.integers(0, n, size=m, dtype=xp.int64)
        src = rng.integers(0, n, size=m, dtype=xp.int64)
        loops = xp.arange(n, dtype=xp.int64) * (n + 1)
    key = xp.unique(xp.concatenate([dst * n + src, loops]))  # sorted by (dst, src), no duplicates
    del src, dst
    dst, src = key // n, key % n
    del key
    indptr = xp.zeros(n + 1, dtype=xp.int64)
    indptr[1:] = xp.cumsum(xp.bincount(dst, minlength=n))
    g = CSRGraph(indptr.astype(xp.int32), src.astype(xp.int32), (n, n))
    return g, src, dst


# ----------------------------------------------------------------------------- the layer
class GatParams:
    """GATConv parameters (PyG layouts transposed to ``x @ W``)."""

    def __init__(self, xp: Any, in_dim: int, heads: int, out_dim: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        glorot = (lambda fan_in, fan_out, shape: rng.uniform(-1, 1, shape) * np.sqrt(6.0 / (fan_in + fan_out)))
        self.W = xp.asarray(glorot(in_dim, heads * out_dim, (in_dim, heads * out_dim)).astype(np.float32))
        self.att_src = xp.asarray(glorot(heads, out_dim, (heads, out_dim)).astype(np.float32))
        self.att_dst = xp.asarray(glorot(heads, out_dim, (heads, out_dim)).astype(np.float32))
        self.bias = xp.asarray(rng.uniform(-0.1, 0.1, heads * out_dim).astype(np.float32))
        self.heads, self.out_dim = heads, out_dim


def sg_forward(g: CSRGraph, x: Any, P: GatParams) -> tuple[Any, tuple]:
    n, H, C = x.shape[0], P.heads, P.out_dim
    hv = (x @ P.W).reshape(n, H, C)
    a_src = (hv * P.att_src).sum(axis=-1)
    a_dst = (hv * P.att_dst).sum(axis=-1)
    out, ctx = sparsegat.attention_forward(g, a_dst, a_src, hv, score="additive", negative_slope=SLOPE)
    return out.reshape(n, H * C) + P.bias, (hv, ctx)


def sg_backward(x: Any, P: GatParams, cache: tuple, dy: Any) -> dict[str, Any]:
    hv, ctx = cache
    n, H, C = hv.shape
    gr = sparsegat.attention_backward(ctx, dy.reshape(n, H, C))
    dhv = gr.v + gr.k[..., None] * P.att_src + gr.q[..., None] * P.att_dst
    return {"W": x.T @ dhv.reshape(n, H * C),
            "att_src": (gr.k[..., None] * hv).sum(axis=0),
            "att_dst": (gr.q[..., None] * hv).sum(axis=0),
            "bias": dy.sum(axis=0)}


def pyg_layer(P: GatParams, in_dim: int, device: str) -> Any:
    import torch
    from torch_geometric.nn import GATConv

    conv = GATConv(in_dim, P.out_dim, heads=P.heads, add_self_loops=False, negative_slope=SLOPE,
                   dropout=0.0).to(device)
    t = (lambda a: torch.as_tensor(np.asarray(_host(a)), device=device))
    with torch.no_grad():
        conv.lin.weight.copy_(t(P.W).T)
        conv.att_src.copy_(t(P.att_src)[None])
        conv.att_dst.copy_(t(P.att_dst)[None])
        conv.bias.copy_(t(P.bias))
    return conv


def _host(a: Any) -> np.ndarray:
    return a.get() if hasattr(a, "get") else np.asarray(a)


# ----------------------------------------------------------------------------- timing and memory
def time_cupy(fn: Callable[[], Any], repeats: int, warmup: int) -> dict[str, float]:
    import cupy

    for _ in range(warmup):
        fn()
    cupy.cuda.Device().synchronize()
    times = []
    for _ in range(repeats):
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, end))
    return {"median_ms": statistics.median(times), "min_ms": min(times)}


def time_torch(fn: Callable[[], Any], repeats: int, warmup: int) -> dict[str, float]:
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return {"median_ms": statistics.median(times), "min_ms": min(times)}


def cupy_peak_bytes(fn: Callable[[], Any]) -> int:
    """Peak bytes of live CuPy pool allocations during ``fn()`` beyond those live before."""
    import cupy
    from cupy.cuda import memory_hook

    class Peak(memory_hook.MemoryHook):
        name = "sparsegat_peak"

        def __init__(self) -> None:
            self.current = self.peak = 0

        def malloc_postprocess(self, **kw: Any) -> None:
            self.current += kw["mem_size"]
            self.peak = max(self.peak, self.current)

        def free_postprocess(self, **kw: Any) -> None:
            self.current -= kw["mem_size"]

    cupy.cuda.Device().synchronize()
    hook = Peak()
    with hook:
        result = fn()
        cupy.cuda.Device().synchronize()
    del result
    return hook.peak


def torch_peak_bytes(fn: Callable[[], Any]) -> int:
    import torch

    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    result = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del result
    return peak


def _gib(b: float | None) -> str:
    return "-" if b is None else f"{b / 2**30:.3f} GiB"


# ----------------------------------------------------------------------------- workloads
def bench_layer(name: str, spec: dict, args: argparse.Namespace) -> dict[str, Any]:
    import cupy

    n = max(64, int(spec["nodes"] * args.scale))
    m = max(64, int(spec["edges"] * args.scale))
    in_dim, H, C = spec["in_dim"], spec["heads"], spec["out_dim"]
    t0 = time.perf_counter()
    g, src, dst = random_graph(cupy, n, m, seed=1)
    cupy.cuda.Device().synchronize()
    res: dict[str, Any] = {"nodes": n, "edges_with_self_loops": g.nnz, "in_dim": in_dim, "heads": H,
                           "out_dim": C, "graph_build_s": time.perf_counter() - t0}
    rng = np.random.default_rng(2)
    x = cupy.asarray(rng.standard_normal((n, in_dim)).astype(np.float32))
    R = cupy.asarray(rng.standard_normal((n, H * C)).astype(np.float32))
    P = GatParams(cupy, in_dim, H, C, seed=3)

    def fwd() -> Any:
        return sg_forward(g, x, P)[0]

    def step() -> Any:
        y, cache = sg_forward(g, x, P)
        return sg_backward(x, P, cache, R)

    step()  # compile kernels, build and cache the transposed structure and plans
    res["sparsegat_forward"] = time_cupy(fwd, args.repeats, args.warmup)
    res["sparsegat_step"] = time_cupy(step, args.repeats, args.warmup)
    res["sparsegat_forward_peak_bytes"] = cupy_peak_bytes(fwd)
    res["sparsegat_step_peak_bytes"] = cupy_peak_bytes(step)
    res["graph_bytes"] = int(g.indptr.nbytes + g.indices.nbytes + sum(a.nbytes for a in g.transposed()))

    if args.skip_pyg:
        return res
    try:
        import torch
        import torch_geometric  # noqa: F401
    except ImportError as exc:
        res["pyg"] = f"not installed ({exc.__class__.__name__})"
        return res
    res["pyg_version"] = torch_geometric.__version__
    dev = "cuda"
    conv = pyg_layer(P, in_dim, dev)
    for p_ in conv.parameters():
        p_.requires_grad_(True)
    tx = torch.from_dlpack(x)
    tR = torch.from_dlpack(R)
    edge_index = torch.stack([torch.from_dlpack(src), torch.from_dlpack(dst)])
    del src, dst

    def pfwd() -> Any:
        with torch.no_grad():
            return conv(tx, edge_index)

    def pstep() -> Any:
        conv.zero_grad(set_to_none=True)
        y = conv(tx, edge_index)
        (y * tR).sum().backward()
        return y

    try:
        y_pyg = pfwd()
        y_sg = fwd()
        res["max_abs_diff_vs_pyg"] = float(torch.max(torch.abs(y_pyg - torch.from_dlpack(y_sg))).item())
        del y_pyg, y_sg
        res["pyg_forward"] = time_torch(pfwd, args.repeats, args.warmup)
        res["pyg_forward_peak_bytes"] = torch_peak_bytes(pfwd)
        res["pyg_step"] = time_torch(pstep, args.repeats, args.warmup)
        res["pyg_step_peak_bytes"] = torch_peak_bytes(pstep)
    except torch.cuda.OutOfMemoryError as exc:
        res.setdefault("pyg_forward", "OOM")
        res.setdefault("pyg_step", "OOM")
        res["pyg_error"] = str(exc).splitlines()[0]
    finally:
        conv.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()
    for what in ("forward", "step"):
        a, b = res.get(f"sparsegat_{what}"), res.get(f"pyg_{what}")
        if isinstance(a, dict) and isinstance(b, dict):
            res[f"speedup_{what}"] = b["median_ms"] / a["median_ms"]
            res[f"memory_ratio_{what}"] = res[f"pyg_{what}_peak_bytes"] / max(1, res[f"sparsegat_{what}_peak_bytes"])
    return res


def bench_fused(args: argparse.Namespace) -> dict[str, Any]:
    import cupy

    from sparsegat.backends.cuda import backend as cupy_backend, launch as cuda_launch
    from sparsegat.spec import AttentionSpec

    n = max(64, int(FUSED["nodes"] * args.scale))
    deg, H, D = FUSED["degree"], FUSED["heads"], FUSED["dim"]
    g, _, _ = random_graph(cupy, n, 0, seed=4, degree=deg)
    rng = np.random.default_rng(5)
    out: dict[str, Any] = {"nodes": n, "edges": g.nnz, "heads": H, "dim": D}

    class Recorder(cupy_backend.CupyRuntime):
        def __init__(self) -> None:
            self.calls: list[tuple] = []

        def launch(self, name: str, grid: tuple, block: tuple, args_: tuple) -> None:
            self.calls.append((name, grid, block, args_))
            super().launch(name, grid, block, args_)

    for score in ("additive", "dot"):
        qk = (n, H) if score == "additive" else (n, H, D)
        q = cupy.asarray(rng.standard_normal(qk).astype(np.float32))
        k = cupy.asarray(rng.standard_normal(qk).astype(np.float32))
        v = cupy.asarray(rng.standard_normal((n, H, D)).astype(np.float32))
        spec = AttentionSpec(score, 1.0, SLOPE)
        rec = Recorder()
        cuda_launch.forward(g, q, k, v, None, None, spec, rec)  # compile, plan, record the launches
        kernels = [c for c in rec.calls]
        names = [c[0] for c in kernels]

        def replay() -> None:
            for name, grid, block, a in kernels:
                cupy_backend.CupyRuntime.launch(rec, name, grid, block, a)

        def api() -> Any:
            return sparsegat.attention_forward(g, q, k, v, score=score, negative_slope=SLOPE)[0]

        # Kernel time: 20 back-to-back replays between two events, per replay.
        for _ in range(args.warmup):
            replay()
        cupy.cuda.Device().synchronize()
        per = []
        for _ in range(args.repeats):
            s, e = cupy.cuda.Event(), cupy.cuda.Event()
            s.record()
            for _ in range(20):
                replay()
            e.record()
            e.synchronize()
            per.append(cupy.cuda.get_elapsed_time(s, e) / 20)
        kernel_ms = statistics.median(per)
        api_t = time_cupy(api, args.repeats, args.warmup)
        plan = cuda_launch._plan(g, "rows", cupy)
        f, i4 = 4, 4  # float32 values, int32 indices
        Dq = 1 if score == "additive" else D
        index_bytes = g.nnz * i4 + (plan.n_seg + 1) * i4 + 2 * plan.n_seg * i4  # indices, seg_ptr/row/slot
        once = n * H * Dq * f + n * H * D * f + 2 * n * H * f  # q, out, row max and log-denominator
        compulsory = index_bytes + once + n * H * Dq * f + n * H * D * f  # + k and v once each
        requested = index_bytes + once + g.nnz * H * (Dq + D) * f  # + k_j and v_j at every edge
        out[score] = {
            "kernels": names,
            "kernel_ms": kernel_ms,
            "api_call": api_t,
            "compulsory_bytes": compulsory,
            "requested_bytes": requested,
            "compulsory_GBps": compulsory / (kernel_ms * 1e-3) / 1e9,
            "requested_GBps": requested / (kernel_ms * 1e-3) / 1e9,
        }
    return out


def check_cpu(args: argparse.Namespace) -> int:
    """Without a GPU: the layer math (NumPy backend) against PyG's GATConv on torch CPU."""
    import torch

    n, m, in_dim, H, C = 300, 3000, 16, 3, 8
    g, src, dst = random_graph(np, n, m, seed=1)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((n, in_dim)).astype(np.float32)
    R = rng.standard_normal((n, H * C)).astype(np.float32)
    P = GatParams(np, in_dim, H, C, seed=3)
    y, cache = sg_forward(g, x, P)
    grads = sg_backward(x, P, cache, R)
    conv = pyg_layer(P, in_dim, "cpu")
    ei = torch.stack([torch.as_tensor(src), torch.as_tensor(dst)])
    ty = conv(torch.as_tensor(x), ei)
    (ty * torch.as_tensor(R)).sum().backward()
    errs = {"out": np.abs(ty.detach().numpy() - y).max(),
            "W": np.abs(conv.lin.weight.grad.numpy().T - grads["W"]).max(),
            "att_src": np.abs(conv.att_src.grad.numpy()[0] - grads["att_src"]).max(),
            "att_dst": np.abs(conv.att_dst.grad.numpy()[0] - grads["att_dst"]).max(),
            "bias": np.abs(conv.bias.grad.numpy() - grads["bias"]).max()}
    print("max abs difference vs PyG (CPU):", {k: f"{v:.2e}" for k, v in errs.items()})
    return 0 if max(errs.values()) < 1e-3 else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", choices=["arxiv", "reddit", "fused"], default=["arxiv", "reddit", "fused"])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--scale", type=float, default=1.0, help="shrink node and edge counts (quick runs)")
    ap.add_argument("--skip-pyg", action="store_true")
    ap.add_argument("--json", help="write the results to this file")
    ap.add_argument("--check-cpu", action="store_true", help="no GPU needed: check the layer math against PyG on CPU")
    args = ap.parse_args(argv)
    if args.check_cpu:
        return check_cpu(args)
    try:
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.runtime.getDevice())
    except Exception as exc:  # no CuPy, no driver, no device
        print(f"gatconv_gpu: needs CuPy and a CUDA GPU ({exc.__class__.__name__}: {exc})", file=sys.stderr)
        return 2
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    results: dict[str, Any] = {"device": name, "cupy": cupy.__version__, "sparsegat": sparsegat.__version__,
                               "scale": args.scale, "repeats": args.repeats}
    print(f"device: {name}; cupy {cupy.__version__}; scale {args.scale}")
    for wl in args.only:
        if wl == "fused":
            r = results["fused"] = bench_fused(args)
            for score in ("additive", "dot"):
                s = r[score]
                print(f"fused forward {score:8s} n={r['nodes']} nnz={r['edges']} H={r['heads']} D={r['dim']}: "
                      f"kernel {s['kernel_ms']:.3f} ms (API call {s['api_call']['median_ms']:.3f} ms), "
                      f"{s['compulsory_GBps']:.0f} GB/s compulsory, {s['requested_GBps']:.0f} GB/s requested")
        else:
            r = results[wl] = bench_layer(wl, WORKLOADS[wl], args)
            line = [f"{wl}: n={r['nodes']} nnz={r['edges_with_self_loops']} {r['in_dim']}->{r['heads']}x{r['out_dim']}"]
            for what in ("forward", "step"):
                sg, pg = r[f"sparsegat_{what}"], r.get(f"pyg_{what}")
                pgs = pg if isinstance(pg, str) else (f"{pg['median_ms']:.2f} ms" if pg else "-")
                line.append(f"  {what:8s} sparsegat {sg['median_ms']:.2f} ms, {_gib(r[f'sparsegat_{what}_peak_bytes'])}"
                            f" | PyG {pgs}, {_gib(r.get(f'pyg_{what}_peak_bytes'))}"
                            + (f" | {r[f'speedup_{what}']:.1f}x faster, {r[f'memory_ratio_{what}']:.1f}x less memory"
                               if f"speedup_{what}" in r else ""))
            if "max_abs_diff_vs_pyg" in r:
                line.append(f"  max |out - out_PyG| = {r['max_abs_diff_vs_pyg']:.2e}")
            print("\n".join(line))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
