#!/usr/bin/env python
"""One GAT layer step on CPU in PyTorch: ``sparsegat.torch.GATConv`` against PyG's ``GATConv``.

The workload of ``bench/gatconv_cpu.py``: a seeded power-law graph (Chung-Lu,
exponent 2.5) of 100k nodes and 1.6M distinct directed edges as a PyG ``edge_index``
(self-loops added by the layers), 128 input features, 4 heads x 32 features,
float32, ``GATConv(128, 32, heads=4)`` in training mode without dropout. Both layers
hold the same parameters (ours loaded from PyG's ``state_dict``) and see the same
``x`` and ``edge_index`` tensors; ``x`` needs no gradient (as in a first layer).

Measurements, per library:

- ``forward``: ``conv(x, edge_index)`` with autograd recording (as in training);
- ``forward+backward``: that, then ``out.backward(R)`` for a fixed random ``R``
  (gradients of every parameter);
- ``forward (no_grad)``: inference.

sparsegat's layer builds the CSR graph with PyG's self-loop rule on its first call
with an ``edge_index`` tensor and reuses it afterwards (warm-up calls cover that);
PyG removes and adds the loops on every call. Each library runs in a fresh process
of its own, in ``--rounds`` alternating rounds; times are
:func:`sparsegat.bench.timing.time_calls` (``--warmup`` untimed calls, then
``--repeats`` timed ones; medians and minima over all rounds). Peak extra memory:
a fresh process per measurement, inputs built and one call made, then the peak
resident set minus the resident set just before a second call
(:class:`~sparsegat.bench.timing.HostMemoryProbe`), i.e. the steady state of a
training loop.

Usage::

    python bench/torch_gatconv_cpu.py                       # the configuration above
    python bench/torch_gatconv_cpu.py --nodes 2000 --edges 20000 --repeats 2 --rounds 1
    python bench/torch_gatconv_cpu.py --json out.json --threads 4
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from typing import Any, Callable

import numpy as np

from sparsegat.bench.graphs import chung_lu_edges
from sparsegat.bench.layers import add_layer_workload_arguments
from sparsegat.bench.timing import HostMemoryProbe, SubprocessError, run_json, time_calls

OURS, PYG = "sparsegat.torch GATConv", "PyG GATConv"
WHAT = ("forward", "forward+backward", "forward (no_grad)")


class Problem:
    """The two layers (same parameters), ``x``, ``edge_index`` and the output gradient ``R``."""

    def __init__(self, args: argparse.Namespace) -> None:
        import torch
        import torch_geometric.nn as pyg_nn

        import sparsegat.torch as st

        src, dst = chung_lu_edges(args.nodes, args.edges, seed=args.seed)
        self.edge_index = torch.from_numpy(np.stack([src, dst]).astype(np.int64))
        gen = torch.Generator().manual_seed(args.seed + 1)
        self.x = torch.randn(args.nodes, args.in_dim, generator=gen)
        self.R = torch.randn(args.nodes, args.heads * args.out, generator=gen)
        torch.manual_seed(args.seed)
        self.pyg = pyg_nn.GATConv(args.in_dim, args.out, heads=args.heads)
        with torch.no_grad():
            self.pyg.bias.normal_(0.0, 0.1)
        self.ours = st.GATConv(args.in_dim, args.out, heads=args.heads, backend=args.backend)
        self.ours.load_state_dict(self.pyg.state_dict())
        self.torch = torch

    def layer(self, group: str) -> Any:
        return {OURS: self.ours, PYG: self.pyg}[group]

    def calls(self, group: str) -> dict[str, Callable[[], Any]]:
        """Measurement name -> zero-argument callable."""
        conv, torch = self.layer(group), self.torch

        def forward() -> Any:
            return conv(self.x, self.edge_index)

        def step() -> None:
            conv.zero_grad(set_to_none=True)
            forward().backward(self.R)

        def no_grad() -> Any:
            with torch.no_grad():
                return forward()

        return dict(zip((f"{group}: {w}" for w in WHAT), (forward, step, no_grad)))


def relative_error(a: Any, b: Any) -> float:
    """``max |a - b| / max |b|``."""
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))


def check_agreement(p: Problem) -> dict[str, float]:
    """Relative differences of the outputs and every parameter gradient (ours against PyG's)."""
    out = {}
    for conv in (p.pyg, p.ours):
        conv.zero_grad(set_to_none=True)
        y = conv(p.x, p.edge_index)
        y.backward(p.R)
        out[conv] = y
    report = {"out": relative_error(out[p.ours], out[p.pyg])}
    theirs = dict(p.pyg.named_parameters())
    for name, param in p.ours.named_parameters():
        report[f"d{name}"] = relative_error(param.grad, theirs[name].grad)
    return report


# ----------------------------------------------------------------------------- measuring processes
def timing_probe(args: argparse.Namespace) -> dict[str, Any]:
    p = Problem(args)
    return {"times": time_calls(p.calls(args.probe_group), warmup=args.warmup, repeat=args.repeats)}


def memory_probe(args: argparse.Namespace) -> dict[str, Any]:
    name = args.probe
    p = Problem(args)
    fn = p.calls(name.split(":")[0])[name]
    fn()  # the graph cache, kernels and torch's lazy initialisation
    probe = HostMemoryProbe(trim=False)
    if probe.method != "rss-hwm":
        return {"name": name, "error": "cannot reset the peak RSS (/proc/self/clear_refs)"}
    return {"name": name, "extra_peak_bytes": probe.measure(fn), "rss_before_bytes": probe.rss_before_bytes}


def in_subprocess(args: argparse.Namespace, extra: list[str]) -> dict[str, Any]:
    """This script with ``extra`` (a probe option) in a fresh process; its JSON, or ``{"error": ...}``."""
    env = dict(os.environ)
    if args.threads:
        for var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[var] = str(args.threads)
    cmd = [sys.executable, os.path.abspath(__file__), *extra, "--threads", str(args.threads),
           "--nodes", str(args.nodes), "--edges", str(args.edges), "--in-dim", str(args.in_dim),
           "--heads", str(args.heads), "--out", str(args.out), "--seed", str(args.seed),
           "--warmup", str(args.warmup), "--repeats", str(args.repeats)]
    if args.backend:
        cmd += ["--backend", args.backend]
    try:
        return run_json(cmd, env)
    except SubprocessError as exc:
        return {"error": str(exc)}


# ----------------------------------------------------------------------------- the run and its report
def _fmt_bytes(b: float) -> str:
    return f"{b / 2**20:,.0f} MiB" if b < 2**30 else f"{b / 2**30:,.2f} GiB"


def run_timings(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    all_times: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for group in (OURS, PYG):
            probe = in_subprocess(args, ["--probe-group", group])
            if "error" in probe:
                print(f"{group}: failed: {probe['error']}")
                continue
            for name, ts in probe["times"].items():
                all_times.setdefault(name, []).extend(ts)
    results = {name: {"median_s": statistics.median(ts), "min_s": min(ts), "all_s": ts}
               for name, ts in all_times.items()}
    print(f"\n{'measurement (%d rounds, a fresh process per library)' % args.rounds:48s} {'median':>10s} {'min':>10s}")
    for name, r in results.items():
        print(f"{name:48s} {r['median_s'] * 1e3:7.1f} ms {r['min_s'] * 1e3:7.1f} ms")
    for what in WHAT:
        ours, pyg = results.get(f"{OURS}: {what}"), results.get(f"{PYG}: {what}")
        if ours and pyg:
            print(f"speed-up over PyG, {what}: {pyg['median_s'] / ours['median_s']:.2f}x (medians), "
                  f"{pyg['min_s'] / ours['min_s']:.2f}x (minima)")
    return results


def report_memory(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    names = [f"{g}: {w}" for g in (OURS, PYG) for w in WHAT[:2]]
    memory = {name: in_subprocess(args, ["--probe", name]) for name in names}
    print("\npeak extra resident memory of a steady-state call, fresh process (VmHWM - VmRSS before):")
    for name, r in memory.items():
        print(f"  {name:48s} " + (_fmt_bytes(r["extra_peak_bytes"]) if "extra_peak_bytes" in r
                                  else r.get("error", "?")))
    for what in WHAT[:2]:
        a, b = memory[f"{OURS}: {what}"], memory[f"{PYG}: {what}"]
        if "extra_peak_bytes" in a and "extra_peak_bytes" in b and a["extra_peak_bytes"]:
            print(f"  PyG / sparsegat, {what}: {b['extra_peak_bytes'] / a['extra_peak_bytes']:.1f}x")
    return memory


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_layer_workload_arguments(ap)
    ap.add_argument("--backend", help="sparsegat backend (default: the registry's choice, numba when installed)")
    ap.add_argument("--threads", type=int, default=0,
                    help="threads of Numba, torch and BLAS in the measuring processes (default: the libraries')")
    ap.add_argument("--no-memory", action="store_true", help="skip the memory processes")
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
    import torch
    import torch_geometric

    p = Problem(args)
    info = {"nodes": args.nodes, "edges_without_loops": int(p.edge_index.shape[1]), "in_dim": args.in_dim,
            "heads": args.heads, "features_per_head": args.out, "dtype": "float32", "backend": args.backend,
            "torch": torch.__version__, "torch_geometric": torch_geometric.__version__,
            "torch_threads": args.threads or torch.get_num_threads(), "cpus": os.cpu_count(),
            "loadavg_start": os.getloadavg(), "command": " ".join([os.path.basename(sys.executable), *sys.argv])}
    print(f"graph: {args.nodes:,} nodes, {info['edges_without_loops']:,} edges + self-loops; "
          f"GATConv({args.in_dim}, {args.out}, heads={args.heads}), float32; "
          f"torch {torch.__version__} ({info['torch_threads']} threads), PyG {torch_geometric.__version__}; "
          f"load average {info['loadavg_start']}")
    agreement = check_agreement(p)
    print("agreement with PyG (max |a-b| / max |b|): " + ", ".join(f"{k} {v:.1e}" for k, v in agreement.items()))
    del p
    results = run_timings(args)
    memory = {} if args.no_memory else report_memory(args)
    info["loadavg_end"] = os.getloadavg()
    print(f"\nload average at the end: {info['loadavg_end']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"info": info, "agreement": agreement, "times": results, "memory": memory}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
