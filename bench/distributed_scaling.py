"""Time, per-worker peak memory and bytes moved of the distributed attention step.

    python bench/distributed_scaling.py --nodes 100000 --degree 16 --workers 1 2
    python bench/distributed_scaling.py --nodes 1000000 --degree 16 --workers 1 2 --repeat 3

For each worker count: a local cluster of that many single-threaded worker processes,
a graph of ``--nodes`` nodes with ``--degree`` uniform random in-edges per node (plus a
self-loop), ``--parts`` blocks per worker, and one forward + backward of the ``additive``
score (GAT's, H=8, C=8, float32). Prints one JSON line per worker count: seconds per
step (best of ``--repeat``), each worker's peak RSS, the bytes the workers sent each
other during one step, and the model's prediction of those bytes (docs/distributed.md).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def model_bytes(pg, heads: int, dv: int, itemsize: int) -> dict:
    """Bytes the model predicts one forward + backward moves between blocks."""
    remote = int(pg.remote_sizes().sum())
    row = (heads * dv + heads) * itemsize  # a gathered k (H) and v (H*Dv) row
    return {"gather": remote * row, "reduce": remote * row, "remote_rows": remote}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=100_000)
    p.add_argument("--degree", type=int, default=16)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--parts", type=int, default=1, help="blocks per worker")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--reorder", choices=("rcm",), default=None)
    p.add_argument("--backend", default=None)
    a = p.parse_args()
    # Dask only now: --help works without the 'distributed' extra
    import dask
    import dask.array as da
    from distributed import Client

    import sparsegat as sg
    from sparsegat.distributed import partition_graph
    from sparsegat.distributed.cluster import local_cluster
    from sparsegat.distributed.ops import attention_backward, attention_forward, row_array

    rng = np.random.default_rng(0)
    n, H, C = a.nodes, 8, 8
    src = rng.integers(0, n, n * a.degree)
    dst = np.repeat(np.arange(n), a.degree)
    g = sg.CSRGraph.from_edge_index(src, dst, num_src=n, num_dst=n).with_self_loops()
    a_dst = rng.standard_normal((n, H), dtype=np.float32)
    a_src = rng.standard_normal((n, H), dtype=np.float32)
    h = rng.standard_normal((n, H, C), dtype=np.float32)
    for workers in a.workers:
        pg = partition_graph(g, workers * a.parts, reorder=a.reorder)
        with local_cluster(workers) as cluster, Client(cluster) as client:
            q = row_array(pg, a_dst).persist()
            k = row_array(pg, a_src).persist()
            v = row_array(pg, h).persist()
            dout = row_array(pg, np.ones((n, H, C), np.float32)).persist()
            times, sent = [], []
            for _ in range(a.repeat):
                before = sum(client.run(lambda dask_worker: dask_worker.transfer_outgoing_bytes_total).values())
                t0 = time.perf_counter()
                out, ctx = attention_forward(pg, q, k, v, score="additive", backend=a.backend)
                grads = attention_backward(ctx, dout)
                dask.compute(grads.q, grads.k, grads.v)
                times.append(time.perf_counter() - t0)
                after = sum(client.run(lambda dask_worker: dask_worker.transfer_outgoing_bytes_total).values())
                sent.append(after - before)
                del out, ctx, grads
            peak = client.run(lambda: __import__("resource").getrusage(__import__("resource").RUSAGE_SELF).ru_maxrss)
        print(json.dumps({"nodes": n, "edges": g.nnz, "workers": workers, "parts": pg.parts,
                          "halo_fraction": pg.halo_fraction, "seconds": min(times),
                          "peak_rss_mib_per_worker": sorted(v / 1024 for v in peak.values()),
                          "bytes_sent_measured": min(sent), "bytes_model": model_bytes(pg, H, C, 4)}), flush=True)


if __name__ == "__main__":
    main()
