#!/usr/bin/env python
"""One GAT layer step on CPU: sparsegat's nn.GATConv (numba backend) against PyG's GATConv.

Workload: a seeded power-law graph (Chung-Lu, exponent 2.5) of 100k nodes and 1.6M
distinct directed edges, self-loops added by the layers; 128 input features;
4 heads x 32 features; float32. The layer is PyG's ``GATConv(128, 32, heads=4)``:
``h = x W``, per-node terms ``a_src = <h_j, att_src>``, ``a_dst = <h_i, att_dst>``,
``e_ij = LeakyReLU(a_dst_i + a_src_j)``, softmax over each row, ``out_i = sum_j a_ij h_j``,
concatenated heads plus bias. A step is forward, then backward of ``sum(out * R)``
for a fixed random ``R``: gradients of ``W``, ``att_src``, ``att_dst`` and ``bias``.

Outputs and gradients of the two layers are compared first. Then each group of
measurements runs in a fresh process of its own (so that no other library's thread
pools or caches are around), in ``--rounds`` alternating rounds (so that load from
other processes tends to hit every group alike):

- ``sparsegat nn.GATConv``: with the input gradient ``dx`` computed, and again with
  ``layer.input_grad = False`` ("no dx"), which is what PyG does here (its ``x``
  does not require a gradient);
- ``PyG GATConv``: ``torch_geometric.nn.GATConv`` on torch CPU with the same
  parameters, with the environment as it is and again with ``OMP_WAIT_POLICY=PASSIVE``
  (torch's OpenMP threads then sleep instead of spinning while they wait: much faster
  when another process wants a core, a little slower on an idle machine); speed-ups
  are against the faster of the two.

Times (:func:`sparsegat.bench.timing.time_calls`): every timed run after ``--warmup``
untimed ones; the table gives the median and the minimum over all rounds. Peak extra
memory is measured in a fresh process per measurement: inputs are built, everything is
compiled/initialised on a tiny graph, then the peak resident set (``VmHWM``, reset
through ``/proc/self/clear_refs``) minus the resident set just before the call, for a
single first call on the big graph (for sparsegat that includes building the graph's
cached structures). The memory-bandwidth bound of the attention kernels counts the
bytes they must stream and gather (:func:`sparsegat.bench.traffic.attention_traffic`)
and divides by a STREAM-like triad and a random 512-byte-row gather measured in the
same process as the kernels.

Usage::

    python bench/gatconv_cpu.py                  # the configuration above
    python bench/gatconv_cpu.py --nodes 20000 --edges 300000 --repeats 3   # quicker
    python bench/gatconv_cpu.py --json out.json  # also write the figures as JSON
    python bench/gatconv_cpu.py --threads 1      # every library on one thread
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Iterator

import numpy as np

from sparsegat.bench.graphs import chung_lu_edges
from sparsegat.bench.layers import add_layer_workload_arguments, aligned_copy, relative_error, sparsegat_gatconv
from sparsegat.bench.timing import HostMemoryProbe, SubprocessError, run_json, time_calls
from sparsegat.bench.traffic import attention_traffic, measure_bandwidth, memory_bound

NN, PYG, PYG_PASSIVE = "sparsegat nn.GATConv", "PyG GATConv", "PyG GATConv, OMP passive"
#: Extra environment of a group's process.
GROUP_ENV = {PYG_PASSIVE: {"OMP_WAIT_POLICY": "PASSIVE"}}
#: (our measurement, PyG's) pairs of the speed-up lines, and of the memory ratios.
SPEEDUPS = (("forward", "forward"), ("forward+backward", "forward+backward"),
            ("forward+backward, no dx", "forward+backward"))
MEMORY = ((f"{NN}: forward", "forward"), (f"{NN}: forward+backward, no dx", "forward+backward"))


class Problem:
    """Graph, features, parameters and the output gradient ``R`` of one benchmark run."""

    def __init__(self, args: argparse.Namespace) -> None:
        import sparsegat as sg

        n, heads, c, fin = args.nodes, args.heads, args.out, args.in_dim
        self.src, self.dst = chung_lu_edges(n, args.edges, seed=args.seed)
        self.g = sg.CSRGraph.from_edge_index(self.src, self.dst, num_src=n, num_dst=n)
        rng = np.random.default_rng(args.seed + 1)
        f32 = np.float32
        self.x = aligned_copy(rng.standard_normal((n, fin)).astype(f32))  # as torch aligns its tensors
        lim = np.sqrt(6.0 / (fin + heads * c))
        W = rng.uniform(-lim, lim, (fin, heads * c)).astype(f32)
        lim = np.sqrt(6.0 / (1 + c))
        att_src = rng.uniform(-lim, lim, (heads, c)).astype(f32)
        att_dst = rng.uniform(-lim, lim, (heads, c)).astype(f32)
        bias = (0.1 * rng.standard_normal(heads * c)).astype(f32)
        self.params = {"W": W, "att_src": att_src, "att_dst": att_dst, "bias": bias}
        self.R = rng.standard_normal((n, heads * c)).astype(f32)
        self.n, self.heads, self.c = n, heads, c


def nn_layer(p: Problem, input_grad: bool = True) -> Any:
    layer = sparsegat_gatconv(p.params, backend="numba")
    layer.input_grad = input_grad
    return layer


class PygLayer:
    """``torch_geometric.nn.GATConv`` with the same parameters, on torch CPU, and its inputs."""

    def __init__(self, p: Problem) -> None:
        import torch

        from sparsegat.bench.pyg import pyg_gatconv

        self.torch = torch
        self.conv = pyg_gatconv(p.params)
        # Without self-loops: GATConv adds them itself (add_self_loops=True), on every call.
        self.edge_index = torch.from_numpy(np.stack([p.src, p.dst]).astype(np.int64))
        self.x, self.R = torch.from_numpy(p.x), torch.from_numpy(p.R)

    def forward(self) -> Any:
        return self.conv(self.x, self.edge_index)

    def forward_no_grad(self) -> Any:
        with self.torch.no_grad():
            return self.conv(self.x, self.edge_index)

    def step(self) -> None:
        self.conv.zero_grad(set_to_none=True)
        self.forward().backward(self.R)


def measurements(p: Problem, group: str) -> dict[str, Callable[[], Any]]:
    """Name -> zero-argument callable of every timed measurement of ``group``."""
    if group == NN:
        layer, no_dx = nn_layer(p), nn_layer(p, input_grad=False)
        return {f"{NN}: forward": lambda: layer.forward(p.x, p.g, training=True),
                f"{NN}: forward+backward": lambda: (layer.forward(p.x, p.g, training=True), layer.backward(p.R)),
                f"{NN}: forward+backward, no dx":
                    lambda: (no_dx.forward(p.x, p.g, training=True), no_dx.backward(p.R))}
    if group in (PYG, PYG_PASSIVE):
        pyg = PygLayer(p)
        return {f"{group}: forward": pyg.forward, f"{group}: forward+backward": pyg.step,
                f"{group}: forward (no_grad)": pyg.forward_no_grad}
    raise ValueError(group)


def check_agreement(p: Problem) -> dict[str, float]:
    """Max relative differences between sparsegat's and PyG's outputs and gradients."""
    from sparsegat.bench.pyg import pyg_gatconv_grads

    layer = nn_layer(p)
    y = layer.forward(p.x, p.g, training=True)
    layer.backward(p.R)
    pyg = PygLayer(p)
    y_pyg = pyg.forward()
    y_pyg.backward(pyg.R)
    report = {"nn vs PyG: out": relative_error(y, y_pyg.detach().numpy())}
    for name, g in pyg_gatconv_grads(pyg.conv).items():
        report[f"nn vs PyG: d{name}"] = relative_error(layer.grads[name], g)
    return report


def time_attention_only(p: Problem, warmup: int, repeats: int) -> dict[str, float]:
    """Median times of the attention operator alone (numba backend) on the layer's own inputs."""
    import sparsegat as sg

    layer = nn_layer(p)
    layer.forward(p.x, p.g, training=True)
    ctx = layer.last_context
    q, k, v = (np.ascontiguousarray(a) for a in (ctx.q, ctx.k, ctx.v))
    R = p.R.reshape(p.n, p.heads, p.c)
    fwd = lambda: sg.attention_forward(ctx.graph, q, k, v, score="additive", backend="numba")  # noqa: E731
    _, fwd_ctx = fwd()
    bwd = lambda: sg.attention_backward(fwd_ctx, R)  # noqa: E731
    times = time_calls({"forward": fwd, "backward": bwd}, warmup=warmup, repeat=repeats)
    return {k: statistics.median(v) for k, v in times.items()}


# ----------------------------------------------------------------------------- measuring processes
def timing_probe(args: argparse.Namespace) -> dict[str, Any]:
    """In a fresh process: the times of one group, plus, for sparsegat, the attention
    operator alone and the machine's bandwidths (for the memory model)."""
    p = Problem(args)
    out: dict[str, Any] = {"times": time_calls(measurements(p, args.probe_group), warmup=args.warmup,
                                               repeat=args.repeats)}
    if args.probe_group == NN:
        out["attention"] = time_attention_only(p, args.warmup, args.repeats)
        out["bandwidth"] = measure_bandwidth()
    return out


def memory_probe(args: argparse.Namespace) -> dict[str, Any]:
    """In a fresh process: peak extra resident memory of one measurement's first call."""
    name = args.probe
    group = name.split(":")[0]
    p = Problem(args)
    tiny = Problem(argparse.Namespace(**{**vars(args), "nodes": 300, "edges": 2000}))
    for fn in measurements(tiny, group).values():  # compile / load kernels, init torch
        fn()
    fn = measurements(p, group)[name]
    probe = HostMemoryProbe(trim=False)
    if probe.method != "rss-hwm":
        return {"name": name, "error": "cannot reset the peak RSS (/proc/self/clear_refs)"}
    extra = probe.measure(fn)
    return {"name": name, "extra_peak_bytes": extra, "rss_before_bytes": probe.rss_before_bytes}


def in_subprocess(args: argparse.Namespace, extra: list[str]) -> dict[str, Any]:
    """Run this script with ``extra`` (a probe option) in a fresh process with the group's
    thread settings; its JSON result, or ``{"error": ...}``."""
    env = dict(os.environ)
    group = extra[-1].split(":")[0]
    if args.threads:
        for var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[var] = str(args.threads)
    if args.blas_threads != "default" and group.startswith("sparsegat"):
        env["OPENBLAS_NUM_THREADS"] = args.blas_threads
    env.update(GROUP_ENV.get(group, {}))
    cmd = [sys.executable, os.path.abspath(__file__), *extra, "--threads", str(args.threads),
           "--blas-threads", args.blas_threads, "--nodes", str(args.nodes), "--edges", str(args.edges),
           "--in-dim", str(args.in_dim), "--heads", str(args.heads), "--out", str(args.out),
           "--seed", str(args.seed), "--warmup", str(args.warmup), "--repeats", str(args.repeats)]
    try:
        return run_json(cmd, env)
    except SubprocessError as exc:
        return {"error": str(exc)}


# ----------------------------------------------------------------------------- the run and its report
def _fmt_bytes(b: float) -> str:
    return f"{b / 2**20:,.0f} MiB" if b < 2**30 else f"{b / 2**30:,.2f} GiB"


def describe(args: argparse.Namespace, p: Problem, with_pyg: bool, built_s: float) -> dict[str, Any]:
    """The run's description (the JSON's ``info``), printed as two lines."""
    import numba

    info: dict[str, Any] = {
        "nodes": p.n, "edges_without_loops": int(p.src.shape[0]), "nnz_with_loops": p.g.nnz + p.n,
        "max_in_degree": int(np.diff(p.g.indptr).max()) + 1,
        "max_out_degree": int(np.bincount(p.g.indices, minlength=p.n).max()) + 1,
        "heads": p.heads, "features_per_head": p.c, "in_dim": args.in_dim, "dtype": "float32",
        "numba_threads": numba.get_num_threads(), "numba": numba.__version__, "numpy": np.__version__,
        "cpus": os.cpu_count(), "loadavg_start": os.getloadavg(), "blas_threads": args.blas_threads,
        "command": " ".join([os.path.basename(sys.executable), *sys.argv])}
    if with_pyg:
        import torch
        import torch_geometric

        info.update(torch=torch.__version__, torch_geometric=torch_geometric.__version__,
                    torch_threads=torch.get_num_threads())
    print(f"graph: {p.n:,} nodes, {p.src.shape[0]:,} edges + self-loops = {info['nnz_with_loops']:,} "
          f"(max in-degree {info['max_in_degree']:,}, max out-degree {info['max_out_degree']:,}); "
          f"built in {built_s:.1f} s")
    if args.threads:
        info["numba_threads"] = info["torch_threads"] = args.threads
    info["threads_option"] = args.threads
    print(f"threads: numba {info['numba_threads']}"
          + (f", torch {info['torch_threads']}" if with_pyg else "")
          + f", OpenBLAS (sparsegat) {args.blas_threads}; load average {info['loadavg_start']}")
    return info


#: The competing process of ``--competitor``: NumPy products forever, with NumPy's default threads.
COMPETITOR = ("import numpy as np\n"
              "a = np.random.default_rng(0).standard_normal((1500, 1500)).astype(np.float32)\n"
              "while True:\n    a @ a\n")


@contextlib.contextmanager
def competitor(on: bool) -> Iterator[None]:
    """With ``on``, another numerical process runs for the duration of the block."""
    if not on:
        yield
        return
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    proc = subprocess.Popen([sys.executable, "-c", COMPETITOR], env=env)
    time.sleep(2.0)  # let it reach its loop
    print(f"competitor running (pid {proc.pid}): 1500x1500 float32 products in a loop")
    try:
        yield
    finally:
        proc.kill()
        proc.wait()


def run_timings(args: argparse.Namespace, groups: list[str]) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Alternating rounds of one fresh process per group: ``(results by name, first probe by group)``."""
    probes: dict[str, dict[str, Any]] = {}
    all_times: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for group in groups:
            probe = in_subprocess(args, ["--probe-group", group])
            if "error" in probe:
                print(f"{group}: failed: {probe['error']}")
                continue
            probes.setdefault(group, probe)
            for name, ts in probe["times"].items():
                all_times.setdefault(name, []).extend(ts)
    results = {name: {"median_s": statistics.median(ts), "min_s": min(ts), "all_s": ts}
               for name, ts in all_times.items()}
    print(f"\n{'measurement (%d rounds, a fresh process per group)' % args.rounds:46s} {'median':>9s} {'min':>9s}")
    for name, r in results.items():
        print(f"{name:46s} {r['median_s'] * 1e3:7.0f} ms {r['min_s'] * 1e3:7.0f} ms")
    return results, probes


def report_speedups(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Speed-ups of sparsegat over the faster PyG run, per measurement."""
    print()
    speedup = {}
    for what, pyg_what in SPEEDUPS:
        ours = results.get(f"{NN}: {what}")
        pygs = [r for r in (results.get(f"{PYG}: {pyg_what}"), results.get(f"{PYG_PASSIVE}: {pyg_what}")) if r]
        if ours and pygs:
            med = min(r["median_s"] for r in pygs)
            low = min(r["min_s"] for r in pygs)
            speedup[f"nn.GATConv {what}"] = med / ours["median_s"]
            print(f"speed-up of {NN} over the faster PyG, {what}: {med / ours['median_s']:.1f}x (medians), "
                  f"{low / ours['min_s']:.1f}x (minima)")
    return speedup


def report_bound(info: dict[str, Any], probe: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Measured attention-kernel times against the memory model."""
    if "attention" not in probe:
        return {}
    bw, att = probe["bandwidth"], probe["attention"]
    model = attention_traffic(info["nodes"], info["nnz_with_loops"], info["heads"], info["features_per_head"])
    print(f"\nbandwidth: triad {bw['triad_GBps']:.1f} GB/s, random 512-byte row gather "
          f"{bw['gather_512B_rows_GBps']:.1f} GB/s (uniform over a 51 MB array; the model counts every "
          f"gathered row as a miss, so hub rows found in cache can make a kernel beat it)")
    bound = {}
    for what in ("forward", "backward"):
        b = bound[what] = memory_bound(model[what], bw, att[what])
        print(f"attention {what:8s}: {att[what] * 1e3:5.0f} ms measured, {b['effective_GBps']:4.1f} GB/s effective; "
              f"memory model {1e3 * b['bound_s']:4.0f} ms = {_fmt_bytes(b['streamed_bytes'])} streamed at "
              f"triad speed + {_fmt_bytes(b['gathered_bytes'])} gathered at random-gather speed "
              f"(measured / model = {att[what] / b['bound_s']:.2f})")
    return bound


def report_memory(args: argparse.Namespace, with_pyg: bool) -> dict[str, dict[str, Any]]:
    """Peak extra memory of each measurement's first call, one fresh process each."""
    names = [ours for ours, _ in MEMORY] + ([f"{PYG}: forward", f"{PYG}: forward+backward"] if with_pyg else [])
    memory = {name: in_subprocess(args, ["--probe", name]) for name in names}
    print("\npeak extra resident memory, first call, fresh process (VmHWM - VmRSS before):")
    for name, r in memory.items():
        print(f"  {name:46s} " + (_fmt_bytes(r["extra_peak_bytes"]) if "extra_peak_bytes" in r
                                  else r.get("error", "?")))
    for ours, what in MEMORY if with_pyg else ():
        a, b = memory.get(ours, {}), memory.get(f"{PYG}: {what}", {})
        if "extra_peak_bytes" in a and "extra_peak_bytes" in b:
            print(f"  {PYG}: {what} / {ours}: {b['extra_peak_bytes'] / a['extra_peak_bytes']:.1f}x")
    return memory


def pyg_installed() -> bool:
    try:
        import torch  # noqa: F401
        import torch_geometric  # noqa: F401
    except ImportError:
        print("torch_geometric not installed: skipping PyG")
        return False
    return True


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_layer_workload_arguments(ap)
    ap.add_argument("--no-pyg", action="store_true", help="skip PyG")
    ap.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    ap.add_argument("--blas-threads", default="1",
                    help="OPENBLAS_NUM_THREADS for the sparsegat processes (NumPy's GEMMs), or 'default'. "
                         "1 by default: OpenBLAS's multi-threaded sgemm for x.T @ dh (K = 100k, M = N = 128) "
                         "synchronises its threads per K block and slows down many times over as soon as "
                         "another process takes a core; one thread per call is robust")
    ap.add_argument("--threads", type=int, default=0,
                    help="threads of Numba, torch (OpenMP/MKL) and OpenBLAS in the measuring processes "
                         "(default: the libraries' defaults, i.e. one per core)")
    ap.add_argument("--competitor", action="store_true",
                    help="time beside another numerical process (a loop of 1500x1500 float32 NumPy products "
                         "with NumPy's default threads), as on a shared server")
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("--probe", help=argparse.SUPPRESS)
    ap.add_argument("--probe-group", dest="probe_group", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.probe:
        print(json.dumps(memory_probe(args)))
        return 0
    if args.probe_group:
        print(json.dumps(timing_probe(args)))
        return 0
    with_pyg = not args.no_pyg and pyg_installed()
    t0 = time.perf_counter()
    p = Problem(args)
    info = describe(args, p, with_pyg, time.perf_counter() - t0)
    agreement = check_agreement(p) if with_pyg else {}
    if agreement:
        print("agreement (max |a-b| / max |b|): " + ", ".join(f"{k} {v:.1e}" for k, v in agreement.items()))
    del p
    gc.collect()
    with competitor(args.competitor):
        results, probes = run_timings(args, [NN] + ([PYG, PYG_PASSIVE] if with_pyg else []))
    speedup = report_speedups(results) if with_pyg else {}
    bound = report_bound(info, probes.get(NN, {}))
    memory = {} if args.no_memory else report_memory(args, with_pyg)
    info["loadavg_end"] = os.getloadavg()
    print(f"\nload average at the end: {info['loadavg_end']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"info": info, "agreement": agreement, "times": results, "speedup": speedup,
                       "bound": bound, "memory": memory}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
