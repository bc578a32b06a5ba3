"""Memory-traffic models and measured memory bandwidth.

The effective bandwidth of ``sparsegat bench`` is
``GB/s = model bytes / median time / 1e9``. :func:`model_bytes` counts every array
the operation's interface reads or writes, each exactly once, at its real dtype
(``b`` bytes per float, ``ib`` per index; ``D' = 1`` for ``additive``, whose
``q`` and ``k`` are per-node terms; ``att`` only for ``gatv2``):

- forward: graph ``(n_dst + 1 + nnz) * ib``, reads ``q, k, v, att``, writes ``out``;
- backward: graph, reads ``q, k, v, att, out, dout``, writes ``dq, dk, dv, datt``;
- layer: the graph with self-loops twice (forward and backward), ``x`` and the
  parameters (``W``, ``att_src``, ``att_dst``, ``bias``) read twice, ``y`` written,
  ``dy`` read, ``dx`` and the parameter gradients written.

Intermediates (per-edge scores, saved softmax statistics, the transposed graph,
PyG's per-edge tensors) are not counted: the figure is a lower bound of the
traffic and comparable across backends, and a backend that moves more than the
compulsory bytes shows a lower effective bandwidth.

For the layer benchmarks in ``bench/``, :func:`attention_traffic` splits the bytes
of the CPU attention kernels (additive score) into streamed and gathered ones, to
be divided by the two bandwidths of :func:`measure_bandwidth` (a STREAM-like triad
and a random row gather).
:func:`fused_forward_bytes` counts the bytes of the CUDA fused forward kernel.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

# ---------------------------------------------------------------------------- sparsegat bench


def model_bytes(op: str, graph: dict[str, Any], config: dict[str, Any]) -> int:
    """Compulsory bytes of one operation of ``sparsegat bench`` (see the module docstring)."""
    b = np.dtype(config["dtype"]).itemsize
    ib = np.dtype(graph["index_dtype"]).itemsize
    n_d, n_s, nnz = graph["n_dst"], graph["n_src"], graph["nnz"]
    H, Dv = config["heads"], config["dv"]
    if op == "layer":
        n = n_d
        nnz_loops = graph.get("nnz_with_self_loops", nnz + n)
        structure = (n + 1 + nnz_loops) * ib
        x = n * config["in_dim"] * b
        params = (config["in_dim"] * H * Dv + 3 * H * Dv) * b
        y = n * H * Dv * b
        forward = structure + x + params + y          # reads graph, x, params; writes y
        backward = structure + x + params + y + x + params  # reads graph, x, params, dy; writes dx, dparams
        return forward + backward
    structure = (n_d + 1 + nnz) * ib
    width = 1 if config["score"] == "additive" else config["d"]
    q, k = n_d * H * width * b, n_s * H * width * b
    v, out = n_s * H * Dv * b, n_d * H * Dv * b
    att = H * config["d"] * b if config["score"] == "gatv2" else 0
    if op == "forward":
        return structure + q + k + v + att + out
    return structure + 2 * (q + k + v + att) + out + out


# ---------------------------------------------------------------------------- CPU attention kernels


def attention_traffic(n: int, nnz: int, heads: int, c: int, itemsize: int = 4,
                      idx: int = 4) -> dict[str, dict[str, float]]:
    """Bytes the CPU attention kernels move (additive score), split into streamed and gathered.

    "streamed": arrays read or written once, in order (CSR structure, per-row data,
    outputs); "gathered": per-edge rows fetched at random node ids (``v_j`` in
    forward, ``dout_i`` and the packed row data in the source pass, ``k_j`` and the
    ``ds`` scatter), counted as a full row per edge, i.e. as if no gathered row
    were ever found in cache (an upper bound; hubs make it pessimistic).

    Returns ``{"forward": {"streamed": bytes, "gathered": bytes}, "backward": {...}}``
    for ``n`` square-graph nodes, ``nnz`` edges, ``heads`` heads of ``c`` features.
    """
    row = heads * c * itemsize          # one node's v / out / dout row
    small = heads * itemsize            # one node's q / k / lse-like row
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


def memory_bound(traffic: dict[str, float], bandwidth: dict[str, float], measured_s: float) -> dict[str, float]:
    """Lower time bound of one kernel pass: streamed bytes at triad speed plus gathered
    bytes at random-gather speed (``bandwidth`` as :func:`measure_bandwidth` returns it),
    with the effective bandwidth of a pass that took ``measured_s`` seconds."""
    t_stream = traffic["streamed"] / (bandwidth["triad_GBps"] * 1e9)
    t_gather = traffic["gathered"] / (bandwidth["gather_512B_rows_GBps"] * 1e9)
    total = traffic["streamed"] + traffic["gathered"]
    return {"streamed_bytes": traffic["streamed"], "gathered_bytes": traffic["gathered"],
            "bound_s": t_stream + t_gather, "measured_s": measured_s,
            "effective_GBps": total / measured_s / 1e9}


def measure_bandwidth(elements: int = 1 << 25, rows: int = 100_000,
                      gathers: int = 1 << 21) -> dict[str, float]:
    """STREAM-like triad and a random 512-byte-row gather in GB/s (best of 5, Numba threads).

    The triad runs over three float32 arrays of ``elements``; the gather reads
    ``gathers`` rows picked uniformly from ``rows`` rows of 128 float32 (512 bytes),
    summed per block of 4096 rows. Needs numba.
    """
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

    def best_of_five(fn: Any, *args: Any) -> float:
        times = []
        for _ in range(6):  # the first call compiles
            t0 = time.perf_counter()
            fn(*args)
            times.append(time.perf_counter() - t0)
        return min(times[1:])

    n = elements
    a, b, c = np.zeros(n, np.float32), np.ones(n, np.float32), np.ones(n, np.float32)
    triad_gbs = 3 * 4 * n / best_of_five(triad, a, b, c, np.float32(3)) / 1e9
    rng = np.random.default_rng(0)
    v = rng.random((rows, 128), dtype=np.float32)
    idx = rng.integers(0, v.shape[0], gathers).astype(np.int32)
    o = np.zeros(idx.shape[0] // 4096, np.float32)
    gather_gbs = idx.shape[0] * 512 / best_of_five(gather, idx, v, o) / 1e9
    return {"triad_GBps": triad_gbs, "gather_512B_rows_GBps": gather_gbs}


# ---------------------------------------------------------------------------- CUDA fused forward


def fused_forward_bytes(nnz: int, n: int, n_segments: int, heads: int, d: int, dv: int,
                        itemsize: int = 4, idx: int = 4) -> dict[str, int]:
    """Bytes of the CUDA fused forward kernel on a square graph, two ways.

    ``d`` is the query/key width (1 for ``additive``), ``dv`` the value width,
    ``n_segments`` the segments of the kernel's row plan
    (:func:`sparsegat.bench.kernels.row_segments`).

    - ``compulsory``: every array the kernel touches counted once (indices, the
      segment plan, q, k, v, out and the two per-row statistics);
    - ``requested``: what the kernel asks the memory system for, with the per-edge
      gathers of ``k_j`` and ``v_j`` counted at every edge (what L2 must serve).
    """
    index_bytes = nnz * idx + (n_segments + 1) * idx + 2 * n_segments * idx  # indices, seg_ptr/row/slot
    once = n * heads * d * itemsize + n * heads * dv * itemsize + 2 * n * heads * itemsize  # q, out, stats
    compulsory = index_bytes + once + n * heads * d * itemsize + n * heads * dv * itemsize  # + k, v once
    requested = index_bytes + once + nnz * heads * (d + dv) * itemsize  # + k_j and v_j at every edge
    return {"compulsory": int(compulsory), "requested": int(requested)}

