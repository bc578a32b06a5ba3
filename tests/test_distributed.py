"""sparsegat.distributed: the partition, and the operator and training on a two-worker
Dask cluster (one ``LocalCluster(processes=True)`` for the whole module)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import scipy.sparse as sp

import sparsegat as sg
from sparsegat.distributed import partition_graph
from sparsegat.distributed.partition import edge_balanced_bounds

# ---------------------------------------------------------------------- partition (NumPy only)


def _graph(n=120, density=0.06, seed=1, hubs=True):
    A = sp.random(n, n, density=density, random_state=seed, format="lil")
    if hubs:
        A[3, :] = 1.0  # a hub row: edge balance must not split it
    A = A.tocsr()
    A.setdiag(1.0)
    return sg.CSRGraph.from_scipy(A)


def test_bounds_balance_edges_not_rows():
    indptr = np.concatenate([[0], np.cumsum([100] + [1] * 99)])  # one hub then 99 single-edge rows
    b = edge_balanced_bounds(indptr, 2)
    assert b.tolist() == [0, 1, 100]  # the hub alone, as many edges as the rest
    b = edge_balanced_bounds(np.zeros(6, dtype=np.int64), 5)  # no edges: one row each
    assert b.tolist() == [0, 1, 2, 3, 4, 5]


def test_blocks_renumber_their_columns():
    g = _graph()
    pg = partition_graph(g, 4)
    assert pg.row_bounds[0] == 0 and pg.row_bounds[-1] == g.n_dst and sum(pg.row_chunks) == g.n_dst
    assert sum(pg.edge_chunks) == g.nnz
    for b in pg.blocks:
        ip = np.asarray(g.indptr)
        global_cols = np.asarray(g.indices[ip[b.row_start]:ip[b.row_stop]])
        np.testing.assert_array_equal(b.halo[np.asarray(b.graph.indices)], global_cols)
        assert b.graph.shape == (b.n_rows, b.halo.shape[0]) and np.all(np.diff(b.halo) > 0)
    assert 0 < pg.halo_fraction < 1 and pg.replication >= 1


def test_partition_rejects_bad_arguments():
    g = _graph()
    with pytest.raises(TypeError, match="CSRGraph"):
        partition_graph(g.to_scipy(), 2)
    with pytest.raises(ValueError, match="parts"):
        partition_graph(g, 0)
    with pytest.raises(ValueError, match="parts"):
        partition_graph(g, g.n_dst + 1)
    with pytest.raises(TypeError, match="parts"):
        partition_graph(g, 2.0)
    with pytest.raises(ValueError, match="reorder"):
        partition_graph(g, 2, reorder="metis")
    bip = sg.CSRGraph.from_edge_index([0, 1], [1, 2], num_src=2, num_dst=3)
    with pytest.raises(ValueError, match="square"):
        partition_graph(bip, 2, reorder="rcm")


def test_reordering_shrinks_the_halo_of_a_shuffled_band():
    n = 400
    rng = np.random.default_rng(0)
    band = sp.diags([1.0] * 5, [-2, -1, 0, 1, 2], shape=(n, n), format="csr")
    perm = rng.permutation(n)
    g = sg.CSRGraph.from_scipy(band[perm][:, perm])
    plain, rcm = partition_graph(g, 4), partition_graph(g, 4, reorder="rcm")
    assert rcm.halo_fraction < 0.2 < plain.halo_fraction
    x = np.arange(n)
    np.testing.assert_array_equal(rcm.from_partition_order(rcm.to_partition_order(x)), x)


# ---------------------------------------------------------------------- on a cluster
dask = pytest.importorskip("dask")
distributed = pytest.importorskip("distributed")
da = pytest.importorskip("dask.array")
sd = pytest.importorskip("sparsegat.distributed.ops")


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                           env={"NUMBA_NUM_THREADS": "1"})
    c = Client(cluster)
    yield c
    c.close()
    cluster.close()


def _inputs(g, score, dtype, heads=2, d=3, dv=4, seed=0):
    rng = np.random.default_rng(seed)
    n = g.n_dst
    shape = (n, heads) if score == "additive" else (n, heads, d)
    q, k = rng.standard_normal(shape).astype(dtype), rng.standard_normal(shape).astype(dtype)
    v = rng.standard_normal((n, heads, dv)).astype(dtype)
    att = rng.standard_normal((heads, d)).astype(dtype) if score == "gatv2" else None
    eb = rng.standard_normal((g.nnz, heads)).astype(dtype)
    dout = rng.standard_normal((n, heads, dv)).astype(dtype)
    tau = 0.7 if score in ("cosine", "euclidean") else 1.0
    return q, k, v, att, eb, dout, tau


def _run(pg, q, k, v, att, eb, dout, tau, score, k_chunks=37, backend="numpy", **kw):
    kd = da.from_array(k, chunks=(k_chunks,) + k.shape[1:])
    vd = da.from_array(v, chunks=(53,) + v.shape[1:])
    out, ctx = sd.attention_forward(pg, sd.row_array(pg, q), kd, vd, score=score, att=att, tau=tau,
                                    edge_bias=sd.edge_array(pg, eb), backend=backend, **kw)
    grads = sd.attention_backward(ctx, sd.row_array(pg, dout))
    computed = dask.compute(out, dict(grads.items()))
    return computed[0], computed[1]


def test_block_edge_offset_reproduces_the_dropout_of_the_whole_graph():
    """The hook the blocks need: AttentionSpec.edge_offset, honoured by every CPU backend."""
    import dataclasses

    from sparsegat.attention import _make_spec
    from sparsegat.backends import available_backends, get_backend

    g = _graph()
    q, k, v, att, eb, dout, tau = _inputs(g, "dot", np.float64)
    spec = _make_spec("dot", 1.0, 0.2, 0.5, 7)
    r0, r1 = 40, 90
    e0, e1 = int(g.indptr[r0]), int(g.indptr[r1])
    sub = sg.CSRGraph(np.asarray(g.indptr[r0:r1 + 1]) - e0, g.indices[e0:e1], (r1 - r0, g.n_src))
    for name in [b for b in ("numpy", "numba") if b in available_backends()]:
        whole, _ = get_backend(name).forward(g, q, k, v, None, None, spec)
        block, _ = get_backend(name).forward(sub, q[r0:r1], k, v, None, None,
                                             dataclasses.replace(spec, edge_offset=e0))
        np.testing.assert_allclose(block, whole[r0:r1], rtol=1e-14, atol=1e-14, err_msg=name)


def _compare_with_one_process(pg, g, dtype, scores, backend):
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == np.float64 else dict(rtol=1e-5, atol=1e-5)
    for score in scores:
        q, k, v, att, eb, dout, tau = _inputs(g, score, dtype)
        out, ctx = sg.attention_forward(g, q, k, v, score=score, att=att, tau=tau, edge_bias=eb, dropout=0.3,
                                        seed=11, backend=backend)
        want = sg.attention_backward(ctx, dout)
        got_out, got = _run(pg, q, k, v, att, eb, dout, tau, score, backend=backend, dropout=0.3, seed=11)
        np.testing.assert_allclose(got_out, out, **tol, err_msg=score)
        assert set(got) == {n for n, _ in want.items()}
        for name, w in want.items():
            assert got[name].dtype == w.dtype and got[name].shape == w.shape, (score, name)
            scale = max(1.0, float(np.abs(w).max()))
            np.testing.assert_allclose(got[name], w, rtol=tol["rtol"], atol=tol["atol"] * scale,
                                       err_msg=f"{score} d{name}")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_forward_and_every_gradient_equal_one_process(client, dtype):
    """Every score, edge bias and dropout; the numpy backend on the workers (no compilation)."""
    g = _graph()
    _compare_with_one_process(partition_graph(g, 3), g, dtype, sg.SCORES, "numpy")


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_numba_workers_equal_one_process(client, dtype):
    """The numba backend on the workers (each worker compiles its kernels: slow)."""
    pytest.importorskip("numba")
    g = _graph()
    _compare_with_one_process(partition_graph(g, 3), g, dtype, sg.SCORES, "numba")


def test_backward_is_bitwise_repeatable(client):
    g = _graph(seed=4)
    pg = partition_graph(g, 4)
    q, k, v, att, eb, dout, tau = _inputs(g, "gatv2", np.float64)
    first = _run(pg, q, k, v, att, eb, dout, tau, "gatv2", dropout=0.2, seed=3)
    second = _run(pg, q, k, v, att, eb, dout, tau, "gatv2", k_chunks=120, dropout=0.2, seed=3)
    np.testing.assert_array_equal(first[0], second[0])
    for name in first[1]:
        if name == "k":  # another chunking of k reduces into other chunks: equal values, same tree
            np.testing.assert_allclose(first[1][name], second[1][name], rtol=1e-13)
        else:
            np.testing.assert_array_equal(first[1][name], second[1][name], err_msg=name)
    third = _run(pg, q, k, v, att, eb, dout, tau, "gatv2", dropout=0.2, seed=3)
    for name in first[1]:
        np.testing.assert_array_equal(first[1][name], third[1][name], err_msg=name)


@pytest.mark.slow
def test_a_worker_killed_during_backward_gives_the_same_result(client):
    g = _graph(n=600, density=0.02, seed=5)
    pg = partition_graph(g, 6)
    q, k, v, att, eb, dout, tau = _inputs(g, "cosine", np.float64, seed=2)
    want = _run(pg, q, k, v, att, eb, dout, tau, "cosine", dropout=0.1, seed=9)
    kd = da.from_array(k, chunks=(100,) + k.shape[1:])
    vd = da.from_array(v, chunks=(100,) + v.shape[1:])
    out, ctx = sd.attention_forward(pg, sd.row_array(pg, q), kd, vd, score="cosine", tau=tau,
                                    edge_bias=sd.edge_array(pg, eb), dropout=0.1, seed=9, backend="numpy")
    grads = sd.attention_backward(ctx, sd.row_array(pg, dout))

    def slow(x):  # keeps the backward running long enough to kill a worker in it
        time.sleep(1.5)
        return x

    dgrads = {n: a.map_blocks(slow, dtype=a.dtype) for n, a in grads.items()}
    futures = client.compute(dgrads)
    victim = list(client.scheduler_info()["workers"])[0]
    killer = threading.Timer(0.5, lambda: client.run(lambda: __import__("os")._exit(1), workers=[victim]))
    killer.start()
    got = futures.result(timeout=120)
    killer.join()
    for name, w in want[1].items():
        np.testing.assert_array_equal(got[name], w, err_msg=name)
    client.wait_for_workers(2, timeout=60)


def test_bad_inputs_are_refused_clearly(client):
    g = _graph()
    pg = partition_graph(g, 3)
    q, k, v, att, eb, dout, tau = _inputs(g, "dot", np.float64)
    kd, vd = da.from_array(k, chunks=(40, 2, 3)), da.from_array(v, chunks=(40, 2, 4))
    with pytest.raises(ValueError, match="q must be chunked like the partition's row_chunks"):
        sd.attention_forward(pg, da.from_array(q, chunks=(40, 2, 3)), kd, vd)
    with pytest.raises(TypeError, match="q must be a dask.array.Array"):
        sd.attention_forward(pg, q, kd, vd)
    with pytest.raises(TypeError, match="pg.to"):
        sd.attention_forward(pg.to("cupy"), sd.row_array(pg, q), kd, vd)
    with pytest.raises(TypeError, match="PartitionedGraph"):
        sd.attention_forward(g, sd.row_array(pg, q), kd, vd)
    with pytest.raises(ValueError, match="edge_bias must be chunked"):
        sd.attention_forward(pg, sd.row_array(pg, q), kd, vd, edge_bias=da.from_array(eb, chunks=(50, 2)))
    with pytest.raises(TypeError, match="mixed dtypes"):
        sd.attention_forward(pg, sd.row_array(pg, q), kd.astype(np.float32), vd)
    bad = q.copy()
    bad[5, 0, 0] = np.nan
    with pytest.raises(ValueError, match="q contains NaN"):
        sd.attention_forward(pg, sd.row_array(pg, bad), kd, vd)
    out, ctx = sd.attention_forward(pg, sd.row_array(pg, q), kd, vd)
    with pytest.raises(ValueError, match="dout must be chunked"):
        sd.attention_backward(ctx, da.from_array(dout, chunks=(60, 2, 4)))
    with pytest.raises(TypeError, match="DistributedContext"):
        sd.attention_backward(None, sd.row_array(pg, dout))


def test_reordered_partition_matches_the_reordered_graph(client):
    g = _graph(seed=8)
    pg = partition_graph(g, 3, reorder="rcm")
    q, k, v, att, eb, dout, tau = _inputs(g, "scaled_dot", np.float64)
    q, k, v, dout = (pg.to_partition_order(a) for a in (q, k, v, dout))
    eb = eb[pg.edge_perm]
    out, ctx = sg.attention_forward(pg.graph, q, k, v, score="scaled_dot", edge_bias=eb, dropout=0.2, seed=1,
                                    backend="numpy")
    want = sg.attention_backward(ctx, dout)
    got_out, got = _run(pg, q, k, v, None, eb, dout, 1.0, "scaled_dot", dropout=0.2, seed=1)
    np.testing.assert_allclose(got_out, out, rtol=1e-12, atol=1e-12)
    for name, w in want.items():
        np.testing.assert_allclose(got[name], w, rtol=1e-12, atol=1e-12, err_msg=name)


def test_training_step_gradients_equal_one_process(client):
    from sparsegat import datasets, nn
    from sparsegat.distributed.training import DistributedGAT
    from sparsegat.train import build_model

    data = datasets.synthetic(seed=0)
    model = build_model("additive", data.num_features, data.num_classes, hidden=4, heads=2, dropout=0.0,
                        dtype=np.float64, backend="numpy")
    logits = model.forward(data.x, data.graph, training=True)
    loss, dlogits = nn.softmax_cross_entropy(logits, data.y, data.train_mask)
    model.backward(dlogits)
    want = {name: layer.grads[key].copy() for name, layer, key in model.named_parameters()}
    gat = DistributedGAT(model, data, 3, backend="numpy")
    got_loss, grads = dask.compute(*gat.step_graph())
    assert got_loss / gat.counts[0] == pytest.approx(loss, rel=1e-12)
    assert set(grads) == set(want)
    for name, w in want.items():
        np.testing.assert_allclose(grads[name], w, rtol=1e-10, atol=1e-12, err_msg=name)


def test_cli_on_the_cluster_saves_a_model_file_that_predict_reads(client, tmp_path, capsys):
    """``sparsegat train --scheduler ADDRESS --save`` writes a self-describing model file, as
    the one-process run does, and ``sparsegat predict`` runs it."""
    from sparsegat import nn
    from sparsegat.predict import main as predict_main
    from sparsegat.train import main as train_main

    path = tmp_path / "model.npz"
    assert train_main(["--scheduler", client.scheduler.address, "--epochs", "2", "--backend", "numpy",
                       "--hidden", "4", "--heads", "2", "--save", str(path)]) == 0
    model = nn.load_model(str(path))
    assert sum(p.size for p in model.parameters()) > 0
    out = tmp_path / "classes.npy"
    assert predict_main(["--model", str(path), "--out", str(out)]) == 0
    classes = np.load(out)
    assert classes.ndim == 1 and classes.size > 0
