#!/usr/bin/env python
"""One GAT layer step on CPU: sparsegat's numba backend against PyG's GATConv.

The workload of issue 3: a seeded power-law graph (Chung-Lu, exponent 2.5) of
100k nodes and ~1.6M directed edges, self-loops added; 128 input features;
4 heads x 32 features; float32. The layer is PyG's ``GATConv(128, 32, heads=4)``:
``h = x W``, per-node terms ``a_src = <h_j, att_src>``, ``a_dst = <h_i, att_dst>``,
``e_ij = LeakyReLU(a_dst_i + a_src_j)``, softmax over each row, ``out_i = sum_j a_ij h_j``,
concatenated heads plus bias. A step is forward, then backward of ``sum(out * R)``
for a fixed random ``R`` (``x`` needs no gradient, as the first layer of a model):
gradients of ``W``, ``att_src``, ``att_dst`` and ``bias``.

Measured in one run, each group of measurements in a fresh process of its own
(so that no other library's thread pools or caches are around), in ``--rounds``
alternating rounds (so that load from other processes on this shared 2-core
machine tends to hit every group alike):

- ``sparsegat op``: the layer written with the operator (``attention_forward`` with
  ``score="additive"`` on the numba backend) plus NumPy dense work for the projection
  and the parameter gradients (the two big GEMMs split over threads, each on a one-thread
  OpenBLAS, see :class:`Gemm` and ``--blas-threads``);
- ``sparsegat nn.GATConv``: the package's layer (when present), with the input gradient
  ``dx`` computed, and again with ``layer.input_grad = False`` ("no dx"), which is what
  PyG does here (its ``x`` does not require a gradient);
- ``PyG GATConv``: ``torch_geometric.nn.GATConv`` on torch CPU with the same parameters
  (outputs and gradients are compared with ours first), with the environment as it
  is and again with ``OMP_WAIT_POLICY=PASSIVE``; speed-ups are against the faster.

Times: every timed run after ``--warmup`` untimed ones; the table gives the median
and the minimum over all rounds. Peak extra memory is measured in a fresh
subprocess per measurement: inputs are built, everything is compiled/initialised
on a tiny graph, then the peak resident set (``VmHWM``, reset through
``/proc/self/clear_refs``) minus the resident set just before the call, for a
single first call on the big graph (for sparsegat that includes building the
graph's cached structures). The memory-bandwidth bound of the attention kernels
counts the bytes they must stream and gather (see :func:`traffic_model`) and
divides by a STREAM-like triad and a random 512-byte-row gather measured in the
same process.

Usage::

    python bench/gatconv_cpu.py                  # the issue's configuration
    python bench/gatconv_cpu.py --nodes 20000 --edges 300000 --repeats 3   # quicker
    python bench/gatconv_cpu.py --json out.json  # also write the figures as JSON
    python bench/gatconv_cpu.py --threads 1      # every library on one thread
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any, Callable

import numpy as np


# ----------------------------------------------------------------------------- inputs
def power_law_edges(n: int, m: int, exponent: float = 2.5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``m`` distinct directed edges ``src -> dst`` (no self-loops) of a Chung-Lu graph.

    Both endpoints are drawn with probability proportional to ``rank**(-1/(exponent-1))``
    over a random relabelling of the nodes, so in- and out-degrees follow a power law
    (hubs with thousands of neighbours) and hubs are scattered over the id range.
    """
    rng = np.random.default_rng(seed)
    w = (np.arange(1, n + 1, dtype=np.float64)) ** (-1.0 / (exponent - 1.0))
    w = w[rng.permutation(n)]
    cdf = np.cumsum(w)
    cdf /= cdf[-1]
    keys = np.empty(0, dtype=np.int64)
    draw = m
    while keys.size < m:
        src = np.minimum(np.searchsorted(cdf, rng.random(draw)), n - 1)
        dst = np.minimum(np.searchsorted(cdf, rng.random(draw)), n - 1)
        k = (src * n + dst)[src != dst]
        keys = np.unique(np.concatenate([keys, k]))
        draw = int((m - keys.size) * 1.5) + 1000
    keys = rng.permutation(keys)[:m]
    return keys // n, keys % n


def aligned(a: np.ndarray) -> np.ndarray:
    """A copy of ``a`` whose data starts on a 64-byte boundary."""
    from sparsegat.backends.numba.backend import aligned_empty

    out = aligned_empty(a.shape, a.dtype)
    out[...] = a
    return out


class Problem:
    """Graph, features, parameters and the output gradient ``R`` of one benchmark run."""

    def __init__(self, args: argparse.Namespace) -> None:
        import sparsegat as sg

        n, heads, c, fin = args.nodes, args.heads, args.out, args.in_dim
        self.src, self.dst = power_law_edges(n, args.edges, seed=args.seed)
        self.g_raw = sg.CSRGraph.from_edge_index(self.src, self.dst, num_src=n, num_dst=n)
        self.g = self.g_raw.with_self_loops()
        rng = np.random.default_rng(args.seed + 1)
        f32 = np.float32
        # 64-byte aligned like torch's allocations (numpy's large arrays sit 16 bytes past a
        # page boundary; OpenBLAS's x.T @ dh is ~25x slower then on this machine).
        self.x = aligned(rng.standard_normal((n, fin)).astype(f32))
        lim = np.sqrt(6.0 / (fin + heads * c))
        self.W = rng.uniform(-lim, lim, (fin, heads * c)).astype(f32)
        lim = np.sqrt(6.0 / (1 + c))
        self.att_src = rng.uniform(-lim, lim, (heads, c)).astype(f32)
        self.att_dst = rng.uniform(-lim, lim, (heads, c)).astype(f32)
        self.bias = (0.1 * rng.standard_normal(heads * c)).astype(f32)
        self.R = rng.standard_normal((n, heads * c)).astype(f32)
        self.n, self.heads, self.c = n, heads, c


# ----------------------------------------------------------------------------- sparsegat (operator)
class Gemm:
    """The layer's two big GEMMs split by rows over threads, each a one-thread OpenBLAS call.

    ``x @ W`` writes row blocks of the output; ``x.T @ y`` sums per-block products in
    block order (deterministic). With OPENBLAS_NUM_THREADS=1 (the default of this
    script for the sparsegat processes) the blocks run in parallel with a single join,
    which is as fast as OpenBLAS's own threads on an idle machine and does not collapse
    when another process takes a core (see ``--blas-threads``).
    """

    def __init__(self, threads: int) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.threads = max(1, threads)
        self.pool = ThreadPoolExecutor(self.threads) if self.threads > 1 else None

    def _blocks(self, n: int) -> list[slice]:
        step = -(-n // self.threads)
        return [slice(s, min(s + step, n)) for s in range(0, n, step)] or [slice(0, 0)]

    def matmul(self, x: np.ndarray, w: np.ndarray, out: np.ndarray) -> np.ndarray:
        if self.pool is None:
            return np.matmul(x, w, out=out)
        list(self.pool.map(lambda b: np.matmul(x[b], w, out=out[b]), self._blocks(x.shape[0])))
        return out

    def t_matmul(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        if self.pool is None:
            return x.T @ y
        parts = list(self.pool.map(lambda b: x[b].T @ y[b], self._blocks(x.shape[0])))
        total = parts[0]
        for part in parts[1:]:
            total += part
        return total


class OpLayer:
    """GATConv written with the operator; parameter gradients in :attr:`grads`.

    Forward: ``h = x W`` (into a 64-byte aligned buffer; see :class:`Gemm`), ``a_src = <h_j, att_src>`` and
    ``a_dst = <h_i, att_dst>`` (einsum), ``attention_forward(..., score="additive")``,
    ``+ bias``. Backward: ``attention_backward``, then the parameter gradients without
    forming ``dh = dv + dk att_src + dq att_dst``: ``dW = x.T dv + (x.T [dk dq]) A.T``
    with ``A`` the block-diagonal (H*C, 2H) matrix of the attention vectors.
    """

    def __init__(self, p: Problem, backend: str = "numba") -> None:
        import numba

        self.p, self.backend = p, backend
        self.gemm = Gemm(numba.get_num_threads())
        H, C = p.heads, p.c
        A = np.zeros((H * C, 2 * H), dtype=np.float32)
        for h in range(H):
            A[h * C:(h + 1) * C, h] = p.att_src[h]
            A[h * C:(h + 1) * C, H + h] = p.att_dst[h]
        self.A = A
        self.grads: dict[str, np.ndarray] = {}

    def forward(self) -> np.ndarray:
        import sparsegat as sg
        from sparsegat.backends.numba.backend import aligned_empty

        p, H, C = self.p, self.p.heads, self.p.c
        h = self.gemm.matmul(p.x, p.W, aligned_empty((p.n, H * C), np.float32))
        hv = h.reshape(p.n, H, C)
        a_src = np.einsum("nhc,hc->nh", hv, p.att_src)
        a_dst = np.einsum("nhc,hc->nh", hv, p.att_dst)
        out, ctx = sg.attention_forward(p.g, a_dst, a_src, hv, score="additive",
                                        negative_slope=0.2, backend=self.backend)
        self._cache = (hv, ctx)
        return out.reshape(p.n, H * C) + p.bias

    def backward(self, dy: np.ndarray) -> None:
        import sparsegat as sg

        p, H, C = self.p, self.p.heads, self.p.c
        hv, ctx = self._cache
        gr = sg.attention_backward(ctx, dy.reshape(p.n, H, C))
        self.grads["bias"] = dy.sum(axis=0)
        dkq = np.concatenate([gr.k, gr.q], axis=1)             # (n, 2H): d a_src, d a_dst
        self.grads["W"] = self.gemm.t_matmul(p.x, gr.v.reshape(p.n, H * C)) + (p.x.T @ dkq) @ self.A.T
        self.grads["att_src"] = np.einsum("nh,nhc->hc", gr.k, hv)
        self.grads["att_dst"] = np.einsum("nh,nhc->hc", gr.q, hv)


# ----------------------------------------------------------------------------- sparsegat (nn layer)
def make_nn_layer(p: Problem) -> Any:
    """``sparsegat.nn.GATConv`` with the benchmark's parameters, or None when unavailable."""
    try:
        from sparsegat.nn import GATConv
    except ImportError:
        return None
    layer = GATConv(p.x.shape[1], p.c, heads=p.heads, dtype=np.float32, seed=0, backend="numba")
    layer.params["W"] = p.W.copy()
    layer.params["att_src"] = p.att_src.copy()
    layer.params["att_dst"] = p.att_dst.copy()
    layer.params["bias"] = p.bias.copy()
    return layer


# ----------------------------------------------------------------------------- PyG
class PygLayer:
    """``torch_geometric.nn.GATConv`` with the same parameters, on torch CPU."""

    def __init__(self, p: Problem) -> None:
        import torch
        from torch_geometric.nn import GATConv

        self.torch = torch
        self.conv = GATConv(p.x.shape[1], p.c, heads=p.heads)
        with torch.no_grad():
            self.conv.lin.weight.copy_(torch.from_numpy(p.W.T.copy()))
            self.conv.att_src.copy_(torch.from_numpy(p.att_src)[None])
            self.conv.att_dst.copy_(torch.from_numpy(p.att_dst)[None])
            self.conv.bias.copy_(torch.from_numpy(p.bias))
        # Without self-loops: GATConv adds them itself (add_self_loops=True), on every call.
        self.edge_index = torch.from_numpy(np.stack([p.src, p.dst]).astype(np.int64))
        self.x = torch.from_numpy(p.x)
        self.R = torch.from_numpy(p.R)

    def forward(self) -> Any:
        return self.conv(self.x, self.edge_index)

    def forward_no_grad(self) -> Any:
        with self.torch.no_grad():
            return self.conv(self.x, self.edge_index)

    def step(self) -> None:
        self.conv.zero_grad(set_to_none=True)
        self.forward().backward(self.R)

    def grads(self) -> dict[str, np.ndarray]:
        c = self.conv
        return {"W": c.lin.weight.grad.numpy().T, "att_src": c.att_src.grad.numpy()[0],
                "att_dst": c.att_dst.grad.numpy()[0], "bias": c.bias.grad.numpy()}


# ----------------------------------------------------------------------------- measurements
GROUPS = {
    "sparsegat op": ("forward", "forward+backward"),
    "sparsegat nn.GATConv": ("forward", "forward+backward", "forward+backward, no dx"),
    "PyG GATConv": ("forward", "forward+backward", "forward (no_grad)"),
    "PyG GATConv, OMP passive": ("forward", "forward+backward", "forward (no_grad)"),
}
#: Extra environment of a group's process. torch's OpenMP threads spin while they wait;
#: with OMP_WAIT_POLICY=PASSIVE they sleep, which is much faster whenever another
#: process wants a core of this 2-core machine (and a little slower on an idle one),
#: so PyG runs both ways and the speed-up is taken against the faster.
GROUP_ENV = {"PyG GATConv, OMP passive": {"OMP_WAIT_POLICY": "PASSIVE"}}


def measurements(p: Problem, group: str) -> dict[str, Callable[[], Any]]:
    """Name -> zero-argument callable of every timed measurement of ``group``."""
    if group == "sparsegat op":
        op = OpLayer(p)
        return {"sparsegat op: forward": op.forward,
                "sparsegat op: forward+backward": lambda: (op.forward(), op.backward(p.R))}
    if group == "sparsegat nn.GATConv":
        layer = make_nn_layer(p)
        if layer is None:
            return {}
        no_dx = make_nn_layer(p)
        no_dx.input_grad = False
        return {"sparsegat nn.GATConv: forward": lambda: layer.forward(p.x, p.g_raw, training=True),
                "sparsegat nn.GATConv: forward+backward":
                    lambda: (layer.forward(p.x, p.g_raw, training=True), layer.backward(p.R)),
                "sparsegat nn.GATConv: forward+backward, no dx":
                    lambda: (no_dx.forward(p.x, p.g_raw, training=True), no_dx.backward(p.R))}
    if group.startswith("PyG GATConv"):
        pyg = PygLayer(p)
        return {f"{group}: forward": pyg.forward, f"{group}: forward+backward": pyg.step,
                f"{group}: forward (no_grad)": pyg.forward_no_grad}
    raise ValueError(group)


def check_agreement(p: Problem, with_pyg: bool) -> dict[str, float]:
    """Max relative differences between sparsegat (op, nn) and PyG outputs and gradients."""
    op = OpLayer(p)
    y = op.forward().copy()
    op.backward(p.R)
    report: dict[str, float] = {}

    def rel(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.max(np.abs(a - b)) / max(1e-30, float(np.max(np.abs(b)))))

    layer = make_nn_layer(p)
    if layer is not None:
        y_nn = layer.forward(p.x, p.g_raw, training=True)
        layer.backward(p.R)
        report["nn vs op: out"] = rel(y_nn, y)
        for name in ("W", "att_src", "att_dst", "bias"):
            report[f"nn vs op: d{name}"] = rel(layer.grads[name], op.grads[name])
    if with_pyg:
        pyg = PygLayer(p)
        pyg.conv.zero_grad(set_to_none=True)
        y_pyg = pyg.forward()
        y_pyg.backward(pyg.R)
        report["op vs PyG: out"] = rel(y, y_pyg.detach().numpy())
        for name, g in pyg.grads().items():
            report[f"op vs PyG: d{name}"] = rel(op.grads[name], g)
    return report


def time_all(fns: dict[str, Callable[[], Any]], warmup: int, repeats: int) -> dict[str, list[float]]:
    """Warm up, then time each measurement ``repeats`` times (one after another)."""
    times: dict[str, list[float]] = {}
    for name, fn in fns.items():
        for _ in range(warmup):
            fn()
        times[name] = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def timing_probe(args: argparse.Namespace) -> dict[str, Any]:
    """Runs in a fresh subprocess: the times of one group (so no other library's thread
    pools or caches are around), plus, for "sparsegat op", the attention operator alone."""
    p = Problem(args)
    fns = measurements(p, args.probe_group)
    out: dict[str, Any] = {"times": time_all(fns, args.warmup, args.repeats)}
    if args.probe_group == "sparsegat op":
        out["attention"] = time_attention_only(p, args.warmup, args.repeats)
        out["bandwidth"] = measure_bandwidth()
    return out


def _subprocess(args: argparse.Namespace, extra: list[str]) -> dict[str, Any]:
    env = dict(os.environ)
    group = extra[-1].split(":")[0]
    if args.threads:
        for var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[var] = str(args.threads)
    if args.blas_threads != "default" and group.startswith("sparsegat"):
        env["OPENBLAS_NUM_THREADS"] = args.blas_threads
    env.update(GROUP_ENV.get(group, {}))
    cmd = [sys.executable, os.path.abspath(__file__), *extra, "--threads", str(args.threads),
           "--blas-threads", args.blas_threads,
           "--nodes", str(args.nodes), "--edges", str(args.edges), "--in-dim", str(args.in_dim),
           "--heads", str(args.heads), "--out", str(args.out), "--seed", str(args.seed),
           "--warmup", str(args.warmup), "--repeats", str(args.repeats)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if res.returncode != 0:
        lines = res.stderr.strip().splitlines()
        return {"error": lines[-1] if lines else f"exit status {res.returncode}"}
    return json.loads(res.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- memory (subprocess)
def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def memory_probe(args: argparse.Namespace) -> dict[str, Any]:
    """Runs in a fresh subprocess: peak extra resident memory of one measurement, first call."""
    import gc

    name = args.probe
    group = name.split(":")[0]
    p = Problem(args)
    tiny = Problem(argparse.Namespace(**{**vars(args), "nodes": 300, "edges": 2000}))
    for fn in measurements(tiny, group).values():  # compile / load kernels, init torch
        fn()
    fn = measurements(p, group)[name]
    gc.collect()
    if not _reset_peak():
        return {"name": name, "error": "cannot reset the peak RSS (/proc/self/clear_refs)"}
    before = _proc_status_kib("VmRSS")
    result = fn()
    peak = _proc_status_kib("VmHWM")
    del result
    return {"name": name, "extra_peak_bytes": (peak - before) * 1024, "rss_before_bytes": before * 1024}


def measure_memory(args: argparse.Namespace, names: list[str]) -> dict[str, dict[str, Any]]:
    return {name: _subprocess(args, ["--probe", name]) for name in names}


# ----------------------------------------------------------------------------- bandwidth model
def measure_bandwidth() -> dict[str, float]:
    """STREAM-like triad and a random 512-byte-row gather, GB/s (best of 5, numba threads)."""
    import numba

    @numba.njit(parallel=True, cache=False)
    def triad(a, b, c, s):  # pragma: no cover - compiled
        for i in numba.prange(a.shape[0]):
            a[i] = b[i] + s * c[i]

    @numba.njit(parallel=True, cache=False)
    def gather(idx, v, out):  # pragma: no cover - compiled
        nb = idx.shape[0] // 4096
        for t in numba.prange(nb):
            acc = np.zeros(v.shape[1], v.dtype)
            for e in range(t * 4096, (t + 1) * 4096):
                r = v[idx[e]]
                for d in range(v.shape[1]):
                    acc[d] += r[d]
            out[t] = acc[0]

    n = 1 << 25
    a, b, c = np.zeros(n, np.float32), np.ones(n, np.float32), np.ones(n, np.float32)
    best = []
    for _ in range(6):
        t0 = time.perf_counter()
        triad(a, b, c, np.float32(3))
        best.append(time.perf_counter() - t0)
    triad_gbs = 3 * 4 * n / min(best[1:]) / 1e9
    rng = np.random.default_rng(0)
    v = rng.random((100_000, 128), dtype=np.float32)
    idx = rng.integers(0, v.shape[0], 1 << 21).astype(np.int32)
    o = np.zeros(idx.shape[0] // 4096, np.float32)
    best = []
    for _ in range(6):
        t0 = time.perf_counter()
        gather(idx, v, o)
        best.append(time.perf_counter() - t0)
    gather_gbs = idx.shape[0] * 512 / min(best[1:]) / 1e9
    return {"triad_GBps": triad_gbs, "gather_512B_rows_GBps": gather_gbs}


def traffic_model(n: int, nnz: int, heads: int, c: int, itemsize: int = 4, idx: int = 4) -> dict[str, dict[str, float]]:
    """Bytes the attention kernels move (additive score), split into streamed and gathered.

    "streamed": arrays read or written once, in order (CSR structure, per-row data,
    outputs); "gathered": per-edge rows fetched at random node ids (``v_j`` in
    forward, ``dout_i`` and the packed row data in the source pass, ``k_j`` and the
    ``ds`` scatter), counted as a full row per edge, i.e. as if no gathered row
    were ever found in cache (an upper bound; hubs make it pessimistic).
    """
    row = heads * c * itemsize          # one node's v / out / dout row (512 B)
    small = heads * itemsize            # one node's q / k / lse-like row (16 B)
    line = 64
    fwd_stream = idx * (n + 1) + idx * nnz + small * n + row * n + 2 * small * n
    fwd_gather = nnz * (row + max(small, line) / 4)        # v_j; k_j shares its line with 3 neighbours
    pack_stream = 2 * row * n + 3 * small * n + 4 * small * n
    src_stream = idx * (n + 1) + 2 * idx * nnz + row * n + small * n + row * n + small * n
    src_gather = nnz * (row + 4 * small + 2 * line)        # dout_i, pack_i, ds line read+write
    dst_stream = idx * (n + 1) + idx * nnz + small * nnz + 2 * small * n
    dst_gather = nnz * line / 4
    return {"forward": {"streamed": fwd_stream, "gathered": fwd_gather},
            "backward": {"streamed": pack_stream + src_stream + dst_stream,
                         "gathered": src_gather + dst_gather}}


def time_attention_only(p: Problem, warmup: int, repeats: int) -> dict[str, float]:
    """Median times of the attention operator alone (numba backend), for the bandwidth model."""
    import sparsegat as sg

    H, C = p.heads, p.c
    hv = aligned(p.x @ p.W).reshape(p.n, H, C)
    a_src = np.einsum("nhc,hc->nh", hv, p.att_src)
    a_dst = np.einsum("nhc,hc->nh", hv, p.att_dst)
    R = p.R.reshape(p.n, H, C)
    fwd = lambda: sg.attention_forward(p.g, a_dst, a_src, hv, score="additive", backend="numba")  # noqa: E731
    _, ctx = fwd()
    bwd = lambda: sg.attention_backward(ctx, R)  # noqa: E731
    times = time_all({"forward": fwd, "backward": bwd}, warmup, repeats)
    return {k: statistics.median(v) for k, v in times.items()}


# ----------------------------------------------------------------------------- main
def _fmt_bytes(b: float) -> str:
    return f"{b / 2**20:,.0f} MiB" if b < 2**30 else f"{b / 2**30:,.2f} GiB"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=100_000)
    ap.add_argument("--edges", type=int, default=1_600_000, help="directed edges before self-loops")
    ap.add_argument("--in-dim", dest="in_dim", type=int, default=128)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--out", type=int, default=32, help="features per head")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7, help="timed runs per measurement and round")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of the timing processes")
    ap.add_argument("--no-pyg", action="store_true", help="skip PyG")
    ap.add_argument("--no-nn", action="store_true", help="skip sparsegat.nn.GATConv")
    ap.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    ap.add_argument("--blas-threads", default="1",
                    help="OPENBLAS_NUM_THREADS for the sparsegat processes (numpy's GEMMs), or 'default'. "
                         "1 by default: OpenBLAS's multi-threaded sgemm for x.T @ dh (K = 100k, M = N = 128) "
                         "synchronises its threads per K block and slows down up to 25x as soon as anything "
                         "else runs on the 2 cores; one thread per call is robust (about 40 ms per GEMM "
                         "here), and the 'sparsegat op' layer splits its two big GEMMs over threads itself "
                         "(class Gemm: about 24 ms each on 2 threads, as fast as OpenBLAS's own threads on "
                         "an idle machine). sparsegat.nn.GATConv's GEMMs then run on one thread")
    ap.add_argument("--threads", type=int, default=0,
                    help="threads of Numba, torch (OpenMP/MKL) and OpenBLAS in the measuring processes "
                         "(default: the libraries' defaults, i.e. one per core)")
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("--probe", help=argparse.SUPPRESS)
    ap.add_argument("--probe-group", dest="probe_group", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.probe:
        print(json.dumps(memory_probe(args)))
        return 0
    if args.probe_group:
        print(json.dumps(timing_probe(args)))
        return 0

    import numba

    with_pyg = not args.no_pyg
    if with_pyg:
        try:
            import torch
            import torch_geometric
        except ImportError:
            print("torch_geometric not installed: skipping PyG")
            with_pyg = False
    t0 = time.perf_counter()
    p = Problem(args)
    info: dict[str, Any] = {
        "nodes": p.n, "edges_without_loops": int(p.src.shape[0]), "nnz_with_loops": p.g.nnz,
        "max_in_degree": int(np.diff(p.g.indptr).max()),
        "max_out_degree": int(np.bincount(p.g.indices, minlength=p.n).max()),
        "heads": p.heads, "features_per_head": p.c, "in_dim": args.in_dim, "dtype": "float32",
        "numba_threads": numba.get_num_threads(), "numba": numba.__version__, "numpy": np.__version__,
        "cpus": os.cpu_count(), "loadavg_start": os.getloadavg(), "blas_threads": args.blas_threads,
        "command": " ".join([os.path.basename(sys.executable), *sys.argv])}
    if with_pyg:
        info.update(torch=torch.__version__, torch_geometric=torch_geometric.__version__,
                    torch_threads=torch.get_num_threads())
    print(f"graph: {p.n:,} nodes, {p.src.shape[0]:,} edges + self-loops = {p.g.nnz:,} "
          f"(max in-degree {info['max_in_degree']:,}, max out-degree {info['max_out_degree']:,}); "
          f"built in {time.perf_counter() - t0:.1f} s")
    if args.threads:
        info["numba_threads"] = info["torch_threads"] = args.threads
    info["threads_option"] = args.threads
    print(f"threads: numba {info['numba_threads']}"
          + (f", torch {info['torch_threads']}" if with_pyg else "")
          + f", OpenBLAS (sparsegat) {args.blas_threads}; load average {info['loadavg_start']}")

    agreement = check_agreement(p, with_pyg)
    print("agreement (max |a-b| / max |b|): " + ", ".join(f"{k} {v:.1e}" for k, v in agreement.items()))
    del p

    groups = (["sparsegat op"] + ([] if args.no_nn else ["sparsegat nn.GATConv"])
              + (["PyG GATConv", "PyG GATConv, OMP passive"] if with_pyg else []))
    # Rounds of one fresh process per group, alternating, so that load from other
    # processes on the machine tends to hit every group alike.
    probes: dict[str, dict[str, Any]] = {}
    all_times: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for group in groups:
            probe = _subprocess(args, ["--probe-group", group])
            if "error" in probe:
                print(f"{group}: failed: {probe['error']}")
                continue
            probes.setdefault(group, probe)
            for name, ts in probe["times"].items():
                all_times.setdefault(name, []).extend(ts)
    results: dict[str, dict[str, Any]] = {
        name: {"median_s": statistics.median(ts), "min_s": min(ts), "all_s": ts} for name, ts in all_times.items()}
    print(f"\n{'measurement (%d rounds, a fresh process per group)' % args.rounds:46s} {'median':>9s} {'min':>9s}")
    for name, r in results.items():
        print(f"{name:46s} {r['median_s'] * 1e3:7.0f} ms {r['min_s'] * 1e3:7.0f} ms")
    speedup = {}
    if with_pyg:
        print()
        for who, what, pyg_what in (("sparsegat op", "forward", "forward"),
                                    ("sparsegat op", "forward+backward", "forward+backward"),
                                    ("sparsegat nn.GATConv", "forward", "forward"),
                                    ("sparsegat nn.GATConv", "forward+backward", "forward+backward"),
                                    ("sparsegat nn.GATConv", "forward+backward, no dx", "forward+backward")):
            ours = results.get(f"{who}: {what}")
            pygs = [r for r in (results.get(f"PyG GATConv: {pyg_what}"),
                                results.get(f"PyG GATConv, OMP passive: {pyg_what}")) if r]
            if ours and pygs:
                med = min(r["median_s"] for r in pygs)
                low = min(r["min_s"] for r in pygs)
                key = what if who == "sparsegat op" else f"nn.GATConv {what}"
                speedup[key] = med / ours["median_s"]
                print(f"speed-up of {who} over the faster PyG, {what}: {speedup[key]:.1f}x (medians), "
                      f"{low / ours['min_s']:.1f}x (minima)")

    bound = {}
    op_probe = probes.get("sparsegat op", {})
    if "attention" in op_probe:
        bw, att = op_probe["bandwidth"], op_probe["attention"]
        model = traffic_model(info["nodes"], info["nnz_with_loops"], args.heads, args.out)
        print(f"\nbandwidth: triad {bw['triad_GBps']:.1f} GB/s, random 512-byte row gather "
              f"{bw['gather_512B_rows_GBps']:.1f} GB/s (uniform over a 51 MB array; the model counts every "
              f"gathered row as a miss, so hub rows found in cache can make a kernel beat it)")
        for what in ("forward", "backward"):
            m = model[what]
            t_stream = m["streamed"] / (bw["triad_GBps"] * 1e9)
            t_gather = m["gathered"] / (bw["gather_512B_rows_GBps"] * 1e9)
            bound[what] = {"streamed_bytes": m["streamed"], "gathered_bytes": m["gathered"],
                           "bound_s": t_stream + t_gather, "measured_s": att[what]}
            effective = (m["streamed"] + m["gathered"]) / att[what] / 1e9
            bound[what]["effective_GBps"] = effective
            print(f"attention {what:8s}: {att[what] * 1e3:5.0f} ms measured, {effective:4.1f} GB/s effective; "
                  f"memory model {1e3 * (t_stream + t_gather):4.0f} ms = {_fmt_bytes(m['streamed'])} streamed at "
                  f"triad speed + {_fmt_bytes(m['gathered'])} gathered at random-gather speed "
                  f"(measured / model = {att[what] / (t_stream + t_gather):.2f})")

    memory = {}
    if not args.no_memory:
        names = ["sparsegat op: forward", "sparsegat op: forward+backward"]
        if not args.no_nn:
            names += ["sparsegat nn.GATConv: forward", "sparsegat nn.GATConv: forward+backward, no dx"]
        if with_pyg:
            names += ["PyG GATConv: forward", "PyG GATConv: forward+backward"]
        memory = measure_memory(args, names)
        print("\npeak extra resident memory, first call, fresh process (VmHWM - VmRSS before):")
        for name, r in memory.items():
            print(f"  {name:46s} " + (_fmt_bytes(r["extra_peak_bytes"]) if "extra_peak_bytes" in r
                                      else r.get("error", "?")))
        if with_pyg:
            for ours, what in (("sparsegat op: forward", "forward"),
                               ("sparsegat op: forward+backward", "forward+backward"),
                               ("sparsegat nn.GATConv: forward", "forward"),
                               ("sparsegat nn.GATConv: forward+backward, no dx", "forward+backward")):
                a, b = memory.get(ours, {}), memory.get(f"PyG GATConv: {what}", {})
                if "extra_peak_bytes" in a and "extra_peak_bytes" in b:
                    print(f"  PyG GATConv: {what} / {ours}: {b['extra_peak_bytes'] / a['extra_peak_bytes']:.1f}x")

    info["loadavg_end"] = os.getloadavg()
    print(f"\nload average at the end: {info['loadavg_end']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"info": info, "agreement": agreement, "times": results, "speedup": speedup,
                       "bound": bound, "memory": memory}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
