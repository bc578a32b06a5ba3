#!/usr/bin/env python
"""One GAT layer step on a GPU: sparsegat's nn.GATConv (cupy backend) against PyG's GATConv on CUDA.

Workloads (synthetic graphs of the size of two public data sets, uniform random
edges plus self-loops, float32):

- ``arxiv``:  169,343 nodes, 2,315,598 directed edges, 128 -> 3 heads x 64
  (the size of ogbn-arxiv);
- ``reddit``: 232,965 nodes, 114,615,892 directed edges, 602 -> 4 heads x 64
  (the size of Reddit);
- ``fused``:  the fused attention forward alone, 100,000 nodes of in-degree 16,
  one head of 128 features (``additive``: GAT's per-node scalar terms and 128-wide
  values; and ``dot``: 128-wide queries, keys and values), with the effective
  memory bandwidth.

The layer is ``GATConv(in, C, heads=H, add_self_loops=False)`` on a graph that
already holds its self-loops, with the same parameters on both sides
(:func:`sparsegat.bench.layers.sparsegat_gatconv`, :func:`sparsegat.bench.pyg.pyg_gatconv`);
the outputs are compared. A step is forward, then backward of ``sum(out * R)`` for a
fixed random ``R``, with gradients of ``W``, ``att_src``, ``att_dst``, ``bias`` (``x``
needs none, as the first layer of a model: ``input_grad = False``).

Timing: CUDA events around each call, median of ``--repeats`` after ``--warmup``
calls. Peak memory: the largest amount of device memory held by live allocations
during one warm step beyond what was live before it (inputs, parameters, and the
graph with its cached transposed structure), through a CuPy memory hook for
sparsegat and ``torch.cuda.max_memory_allocated`` for PyG. sparsegat runs first; then
its layer, graph and outputs are dropped and CuPy's memory pools give their blocks back
to the driver, so that PyG finds the device as free as sparsegat did (PyTorch's cache is
emptied in turn before the next workload). A phase (forward, step, of either side) that
runs out of memory, whatever the error (PyTorch raises some as a plain ``RuntimeError``:
``CUDA out of memory``, ``CUBLAS_STATUS_ALLOC_FAILED``), is reported as ``OOM`` with the
message under ``<phase>_error``; the memory is freed and the benchmark goes on.

Fused-forward bandwidth: the bytes of :func:`sparsegat.bench.traffic.fused_forward_bytes`
(``compulsory``: every array once; ``requested``: the per-edge gathers of k_j and v_j
at every edge) over the kernel time (the forward kernels alone, replayed back to back
without Python in between, :mod:`sparsegat.bench.kernels`).

Usage (on a machine with an NVIDIA GPU, CuPy and, for the comparison, torch and PyG)::

    python bench/gatconv_gpu.py                       # all workloads
    python bench/gatconv_gpu.py --only arxiv fused    # some of them
    python bench/gatconv_gpu.py --scale 0.05          # smaller graphs, a quick run
    python bench/gatconv_gpu.py --json results.json
    python bench/gatconv_gpu.py --check-cpu           # no GPU: check the layer against
                                                      # PyG on CPU (numpy backend)
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
from sparsegat.bench.graphs import uniform_graph_with_loops
from sparsegat.bench.layers import relative_error, sparsegat_gatconv
from sparsegat.bench.timing import call_unless_oom, free_device_memory, time_calls

WORKLOADS = {
    "arxiv": dict(nodes=169_343, edges=2_315_598, in_dim=128, heads=3, out_dim=64),
    "reddit": dict(nodes=232_965, edges=114_615_892, in_dim=602, heads=4, out_dim=64),
}
FUSED = dict(nodes=100_000, degree=16, heads=1, dim=128)
SLOPE = 0.2


def gat_params(in_dim: int, heads: int, out_dim: int, seed: int) -> dict[str, np.ndarray]:
    """Glorot-uniform ``W``, ``att_src``, ``att_dst`` and a small uniform bias (host arrays)."""
    rng = np.random.default_rng(seed)

    def glorot(fan_in: int, fan_out: int, shape: tuple) -> np.ndarray:
        return (rng.uniform(-1, 1, shape) * np.sqrt(6.0 / (fan_in + fan_out))).astype(np.float32)

    return {"W": glorot(in_dim, heads * out_dim, (in_dim, heads * out_dim)),
            "att_src": glorot(heads, out_dim, (heads, out_dim)),
            "att_dst": glorot(heads, out_dim, (heads, out_dim)),
            "bias": rng.uniform(-0.1, 0.1, heads * out_dim).astype(np.float32)}


def layer_calls(layer: Any, g: Any, x: Any, R: Any) -> tuple[Callable[[], Any], Callable[[], Any]]:
    """``(forward, step)`` of a sparsegat layer: an inference forward, and forward + backward."""
    def forward() -> Any:
        return layer.forward(x, g)

    def step() -> Any:
        layer.forward(x, g, training=True)
        return layer.backward(R)

    return forward, step


def timed_ms(fn: Callable[[], Any], args: argparse.Namespace, clock: Any) -> dict[str, float]:
    ts = time_calls({"": fn}, warmup=args.warmup, repeat=args.repeats, clock=clock)[""]
    return {"median_ms": statistics.median(ts) * 1e3, "min_ms": min(ts) * 1e3}


def _gib(b: float | None) -> str:
    return "-" if b is None else f"{b / 2**30:.3f} GiB"


def _ms(t: Any) -> str:
    """A timing as printed: ``1.23 ms``, ``OOM``, or ``-`` when not measured."""
    if isinstance(t, dict):
        return f"{t['median_ms']:.2f} ms"
    return "-" if t is None else str(t)


def phase(res: dict[str, Any], name: str, fn: Callable[[], dict[str, Any]]) -> bool:
    """Merge the dict ``fn()`` returns into ``res``; when it runs out of memory, record
    ``res[name] = "OOM"`` and the message under ``name + "_error"``, free the device's
    idle memory and return False."""
    out, error = call_unless_oom(fn)
    if error is None:
        res.update(out)
        return True
    res[name] = "OOM"
    res[f"{name}_error"] = error
    return False


# ----------------------------------------------------------------------------- workloads
def bench_layer(spec: dict, args: argparse.Namespace) -> dict[str, Any]:
    """One layer workload: sparsegat's side, then (its memory freed) PyG's."""
    import cupy

    n = max(64, int(spec["nodes"] * args.scale))
    m = max(64, int(spec["edges"] * args.scale))
    in_dim, H, C = spec["in_dim"], spec["heads"], spec["out_dim"]
    res: dict[str, Any] = {"nodes": n, "in_dim": in_dim, "heads": H, "out_dim": C}
    data: dict[str, Any] = {}

    def setup() -> dict[str, Any]:
        t0 = time.perf_counter()
        g, src, dst = uniform_graph_with_loops(cupy, n, edges=m, seed=1)
        cupy.cuda.Device().synchronize()
        build_s = time.perf_counter() - t0
        rng = np.random.default_rng(2)
        data.update(g=g, src=src, dst=dst, params=gat_params(in_dim, H, C, seed=3),
                    x=cupy.asarray(rng.standard_normal((n, in_dim)).astype(np.float32)),
                    R=cupy.asarray(rng.standard_normal((n, H * C)).astype(np.float32)))
        return {"edges_with_self_loops": g.nnz, "graph_build_s": build_s}

    if not phase(res, "setup", setup):
        data.clear()
        free_device_memory()
        return res
    y_ref = bench_sparsegat_layer(res, data, args)
    # Free what sparsegat holds before PyG runs: its layer, graph and outputs, and the
    # pool's idle blocks (PyG allocates through PyTorch, which cannot use them).
    del data["g"]
    free_device_memory()
    if not args.skip_pyg:
        bench_pyg_layer(res, data, y_ref, args)
    data.clear()
    free_device_memory()
    return res


def bench_sparsegat_layer(res: dict[str, Any], data: dict[str, Any], args: argparse.Namespace) -> Any:
    """sparsegat's side of a layer workload, into ``res``; returns its forward output on
    the host (None if it ran out of memory) for the comparison with PyG."""
    from sparsegat.bench.timing import CupyClock, CupyLiveMemoryProbe

    g, x, R = data["g"], data["x"], data["R"]
    layer = sparsegat_gatconv(data["params"], backend="cupy", add_self_loops=False, device="cupy")
    layer.input_grad = False
    fwd, step = layer_calls(layer, g, x, R)
    clock, probe = CupyClock(), CupyLiveMemoryProbe()

    def measured(what: str, fn: Callable[[], Any]) -> Callable[[], dict[str, Any]]:
        def run() -> dict[str, Any]:
            fn()  # compile kernels, build and cache the graph's structures
            return {f"sparsegat_{what}": timed_ms(fn, args, clock), f"sparsegat_{what}_peak_bytes": probe.measure(fn)}
        return run

    phase(res, "sparsegat_forward", measured("forward", fwd))
    phase(res, "sparsegat_step", measured("step", step))
    out: dict[str, Any] = {}

    def output() -> dict[str, Any]:
        out["y"] = fwd().get()  # on the host: nothing of sparsegat's stays on the device
        return {}

    def graph_bytes() -> dict[str, Any]:
        return {"graph_bytes": int(g.indptr.nbytes + g.indices.nbytes + sum(a.nbytes for a in g.transposed()))}

    phase(res, "sparsegat_output", output)
    phase(res, "graph_bytes", graph_bytes)
    return out.get("y")


def bench_pyg_layer(res: dict[str, Any], data: dict[str, Any], y_ref: Any, args: argparse.Namespace) -> None:
    """PyG's side of a layer workload, into ``res``; takes the edge arrays out of ``data``
    (so that they are freed once PyG's edge index is built)."""
    try:
        import torch
        import torch_geometric
    except ImportError as exc:
        res["pyg"] = f"not installed ({exc.__class__.__name__})"
        return
    from sparsegat.bench.pyg import pyg_gatconv
    from sparsegat.bench.timing import TorchCudaClock, TorchCudaMemoryProbe

    res["pyg_version"] = torch_geometric.__version__
    tx, tR = torch.from_dlpack(data["x"]), torch.from_dlpack(data["R"])
    state: dict[str, Any] = {}

    def setup() -> dict[str, Any]:
        state["conv"] = pyg_gatconv(data["params"], add_self_loops=False, negative_slope=SLOPE, device="cuda")
        state["edge_index"] = torch.stack([torch.from_dlpack(data.pop("src")), torch.from_dlpack(data.pop("dst"))])
        return {}

    def pfwd() -> Any:
        with torch.no_grad():
            return state["conv"](tx, state["edge_index"])

    def pstep() -> Any:
        conv = state["conv"]
        conv.zero_grad(set_to_none=True)
        y = conv(tx, state["edge_index"])
        (y * tR).sum().backward()
        return y

    clock, probe = TorchCudaClock(), TorchCudaMemoryProbe()

    def forward() -> dict[str, Any]:
        out = {}
        if y_ref is not None:
            y = pfwd().cpu().numpy()
            out["max_abs_diff_vs_pyg"] = float(np.max(np.abs(y - y_ref))) if y.size else 0.0
            del y
        return dict(out, pyg_forward=timed_ms(pfwd, args, clock), pyg_forward_peak_bytes=probe.measure(pfwd))

    def step() -> dict[str, Any]:
        return {"pyg_step": timed_ms(pstep, args, clock), "pyg_step_peak_bytes": probe.measure(pstep)}

    try:
        ready = phase(res, "pyg_setup", setup)
        free_device_memory()  # the pool blocks of src and dst, now copied into the edge index
        if ready:
            phase(res, "pyg_forward", forward)
            if "conv" in state:
                state["conv"].zero_grad(set_to_none=True)
            phase(res, "pyg_step", step)
        else:
            res["pyg_forward"] = res["pyg_step"] = "OOM"
    finally:
        state.clear()
        free_device_memory()
    for what in ("forward", "step"):
        a, b = res.get(f"sparsegat_{what}"), res.get(f"pyg_{what}")
        if isinstance(a, dict) and isinstance(b, dict):
            res[f"speedup_{what}"] = b["median_ms"] / a["median_ms"]
            res[f"memory_ratio_{what}"] = res[f"pyg_{what}_peak_bytes"] / max(1, res[f"sparsegat_{what}_peak_bytes"])


def bench_fused(args: argparse.Namespace) -> dict[str, Any]:
    """The fused-forward workload; a score that runs out of memory is reported as ``OOM``."""
    import cupy

    n = max(64, int(FUSED["nodes"] * args.scale))
    deg, H, D = FUSED["degree"], FUSED["heads"], FUSED["dim"]
    out: dict[str, Any] = {"nodes": n, "heads": H, "dim": D}
    data: dict[str, Any] = {}

    def setup() -> dict[str, Any]:
        data["g"] = uniform_graph_with_loops(cupy, n, degree=deg, seed=4)[0]
        return {"edges": data["g"].nnz}

    if phase(out, "setup", setup):
        rng = np.random.default_rng(5)
        for score in ("additive", "dot"):
            phase(out, score, lambda: {score: bench_fused_score(data["g"], score, rng, args)})
    data.clear()
    free_device_memory()
    return out


def bench_fused_score(g: Any, score: str, rng: np.random.Generator, args: argparse.Namespace) -> dict[str, Any]:
    """Kernel time, API-call time and bandwidth of the fused forward with ``score``."""
    import cupy

    from sparsegat.bench.kernels import record_forward, row_segments
    from sparsegat.bench.timing import CupyClock
    from sparsegat.bench.traffic import fused_forward_bytes

    n, H, D = g.n_dst, FUSED["heads"], FUSED["dim"]
    clock = CupyClock()
    qk = (n, H) if score == "additive" else (n, H, D)
    q = cupy.asarray(rng.standard_normal(qk).astype(np.float32))
    k = cupy.asarray(rng.standard_normal(qk).astype(np.float32))
    v = cupy.asarray(rng.standard_normal((n, H, D)).astype(np.float32))
    kernels = record_forward(g, q, k, v, score=score, negative_slope=SLOPE)  # compiles, plans

    def twenty_replays() -> None:
        for _ in range(20):
            kernels.replay()

    def api() -> Any:
        return sparsegat.attention_forward(g, q, k, v, score=score, negative_slope=SLOPE)[0]

    kernel_ms = timed_ms(twenty_replays, args, clock)["median_ms"] / 20
    Dq = 1 if score == "additive" else D
    nbytes = fused_forward_bytes(g.nnz, n, row_segments(g, score, Dq, D, np.float32), H, Dq, D)
    return {
        "kernels": kernels.names,
        "kernel_ms": kernel_ms,
        "api_call": timed_ms(api, args, clock),
        "compulsory_bytes": nbytes["compulsory"],
        "requested_bytes": nbytes["requested"],
        "compulsory_GBps": nbytes["compulsory"] / (kernel_ms * 1e-3) / 1e9,
        "requested_GBps": nbytes["requested"] / (kernel_ms * 1e-3) / 1e9,
    }


def check_cpu(args: argparse.Namespace) -> int:
    """Without a GPU: the layer (numpy backend) against PyG's GATConv on torch CPU."""
    import torch

    from sparsegat.bench.pyg import pyg_gatconv, pyg_gatconv_grads

    n, m, in_dim, H, C = 300, 3000, 16, 3, 8
    g, src, dst = uniform_graph_with_loops(np, n, edges=m, seed=1)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((n, in_dim)).astype(np.float32)
    R = rng.standard_normal((n, H * C)).astype(np.float32)
    params = gat_params(in_dim, H, C, seed=3)
    layer = sparsegat_gatconv(params, backend="numpy", add_self_loops=False)
    layer.input_grad = False
    y = layer.forward(x, g, training=True)
    layer.backward(R)
    conv = pyg_gatconv(params, add_self_loops=False, negative_slope=SLOPE)
    ty = conv(torch.as_tensor(x), torch.stack([torch.as_tensor(src), torch.as_tensor(dst)]))
    (ty * torch.as_tensor(R)).sum().backward()
    errs = {"out": relative_error(y, ty.detach().numpy())}
    errs.update((k, relative_error(layer.grads[k], v)) for k, v in pyg_gatconv_grads(conv).items())
    print("max relative difference vs PyG (CPU):", {k: f"{v:.2e}" for k, v in errs.items()})
    return 0 if max(errs.values()) < 1e-4 else 1


def print_layer(wl: str, r: dict[str, Any]) -> None:
    line = [f"{wl}: n={r['nodes']} nnz={r.get('edges_with_self_loops', '-')} "
            f"{r['in_dim']}->{r['heads']}x{r['out_dim']}"]
    for what in ("forward", "step"):
        line.append(f"  {what:8s} sparsegat {_ms(r.get(f'sparsegat_{what}'))}, "
                    f"{_gib(r.get(f'sparsegat_{what}_peak_bytes'))}"
                    f" | PyG {_ms(r.get(f'pyg_{what}'))}, {_gib(r.get(f'pyg_{what}_peak_bytes'))}"
                    + (f" | {r[f'speedup_{what}']:.1f}x faster, {r[f'memory_ratio_{what}']:.1f}x less memory"
                       if f"speedup_{what}" in r else ""))
    if "max_abs_diff_vs_pyg" in r:
        line.append(f"  max |out - out_PyG| = {r['max_abs_diff_vs_pyg']:.2e}")
    line += [f"  {key}: {value}" for key, value in r.items() if key.endswith("_error")]
    print("\n".join(line))


def print_fused(r: dict[str, Any]) -> None:
    for score in ("additive", "dot"):
        s = r.get(score, "-")
        head = f"fused forward {score:8s} n={r['nodes']} nnz={r.get('edges', '-')} H={r['heads']} D={r['dim']}: "
        if not isinstance(s, dict):
            print(head + f"{s} {r.get(f'{score}_error', r.get('setup_error', ''))}")
            continue
        print(head + f"kernel {s['kernel_ms']:.3f} ms (API call {s['api_call']['median_ms']:.3f} ms), "
              f"{s['compulsory_GBps']:.0f} GB/s compulsory, {s['requested_GBps']:.0f} GB/s requested")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", choices=["arxiv", "reddit", "fused"], default=["arxiv", "reddit", "fused"])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--scale", type=float, default=1.0, help="shrink node and edge counts (quick runs)")
    ap.add_argument("--skip-pyg", action="store_true")
    ap.add_argument("--json", help="write the results to this file")
    ap.add_argument("--check-cpu", action="store_true", help="no GPU needed: check the layer against PyG on CPU")
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
        # Each phase catches its own out-of-memory errors; this catches one between them.
        if wl == "fused":
            r, error = call_unless_oom(lambda: bench_fused(args))
        else:
            r, error = call_unless_oom(lambda: bench_layer(WORKLOADS[wl], args))
        if error is not None:
            results[wl] = {"error": f"OOM: {error}"}
            print(f"{wl}: OOM ({error})")
        elif wl == "fused":
            print_fused(results.setdefault(wl, r))
        else:
            print_layer(wl, results.setdefault(wl, r))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
