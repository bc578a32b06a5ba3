"""Multi-edges are edges: each copy of a repeated ``(i, j)`` pair has its own score,
softmax term, dropout decision and gradient, on every backend (PyG's and DGL's meaning).

The defining identity: ``m`` copies of an edge with biases ``b_1..b_m`` act on the
softmax like one edge whose bias is ``log(sum exp(b_c))``; with equal biases, one edge
with bias ``b + log(m)``, and each copy then gets ``1/m`` of that edge's weight.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sparsegat
from sparsegat import CSRGraph
from sparsegat.backends import is_available

from strategies import SCORE_CONFIGS, attention_inputs, csr_graphs

BACKENDS = [b for b in ("numpy", "numba") if is_available(b)]


def _merged_with_log_counts(g: CSRGraph) -> tuple[CSRGraph, np.ndarray, np.ndarray]:
    """The simple graph of ``g``, ``log(multiplicity)`` per merged edge and, per edge of
    ``g``, the position of its merged edge."""
    rows = np.repeat(np.arange(g.n_dst), np.diff(g.indptr))
    merged, first = CSRGraph.from_edge_index(np.asarray(g.indices), rows, num_src=g.n_src, num_dst=g.n_dst,
                                             duplicates="merge", return_perm=True)
    key = rows * g.n_src + np.asarray(g.indices)
    slot = np.searchsorted(key[first], key)
    counts = np.bincount(slot, minlength=merged.nnz)
    return merged, np.log(counts), slot


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=15)
@given(data=st.data())
def test_copies_act_like_one_edge_with_log_count_bias(backend, data):
    g = data.draw(csr_graphs(min_n=1, max_n=8, multi_edges=True, min_edges=1))
    config = data.draw(st.sampled_from(SCORE_CONFIGS))
    inp = data.draw(attention_inputs(g, config["score"], np.float64, edge_bias=False))
    kwargs = {**config, **inp.options()}
    kwargs.pop("edge_bias", None)
    merged, log_counts, slot = _merged_with_log_counts(g)
    H = inp.q.shape[1]
    out, _ = sparsegat.attention_forward(g, inp.q, inp.k, inp.v, backend=backend, **kwargs)
    bias = np.repeat(log_counts[:, None], H, axis=1)
    ref, _ = sparsegat.attention_forward(merged, inp.q, inp.k, inp.v, edge_bias=bias, backend="numpy", **kwargs)
    np.testing.assert_allclose(out, ref, rtol=1e-10, atol=1e-12)
    w = sparsegat.attention_weights(g, inp.q, inp.k, backend=backend, **kwargs)
    w_merged = sparsegat.attention_weights(merged, inp.q, inp.k, edge_bias=bias, backend="numpy", **kwargs)
    counts = np.exp(log_counts)
    np.testing.assert_allclose(w, (w_merged / counts[:, None])[slot], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients_of_copies_sum_to_the_merged_edge(backend):
    """The bias gradient of each copy is its share; dq, dk, dv equal the merged graph's."""
    rng = np.random.default_rng(0)
    src = np.array([0, 1, 1, 2, 1, 0, 3, 3, 3])
    dst = np.array([0, 0, 0, 1, 0, 2, 2, 2, 3])
    g = CSRGraph.from_edge_index(src, dst, num_src=4, num_dst=4)
    assert g.nnz == 9
    merged, log_counts, slot = _merged_with_log_counts(g)
    H, D = 2, 3
    q, k, v = (rng.standard_normal((4, H, D)) for _ in range(3))
    b = np.repeat(log_counts[:, None], H, axis=1)
    out, ctx = sparsegat.attention_forward(g, q, k, v, backend=backend)
    ref, rctx = sparsegat.attention_forward(merged, q, k, v, edge_bias=b, backend="numpy")
    dout = rng.standard_normal(out.shape)
    grads = sparsegat.attention_backward(ctx, dout)
    rgrads = sparsegat.attention_backward(rctx, dout)
    for name in ("q", "k", "v"):
        np.testing.assert_allclose(getattr(grads, name), getattr(rgrads, name), rtol=1e-10, atol=1e-12)
    # with an edge_bias on the multigraph: the copies' gradients add up to the merged edge's
    eb = rng.standard_normal((g.nnz, H)) * 0.1
    _, ctx_b = sparsegat.attention_forward(g, q, k, v, edge_bias=eb, backend=backend)
    db = sparsegat.attention_backward(ctx_b, dout).edge_bias
    lse = np.zeros((merged.nnz, H))
    np.add.at(lse, slot, np.exp(eb))
    _, rctx_b = sparsegat.attention_forward(merged, q, k, v, edge_bias=np.log(lse), backend="numpy")
    rdb = sparsegat.attention_backward(rctx_b, dout).edge_bias
    summed = np.zeros_like(rdb)
    np.add.at(summed, slot, db)
    np.testing.assert_allclose(summed, rdb, rtol=1e-9, atol=1e-12)


def test_with_self_loops_keeps_multi_edges_and_replace_gives_one_loop():
    g = CSRGraph.from_edge_index([0, 0, 1, 1, 2], [0, 0, 1, 2, 2], num_src=3, num_dst=4)
    h = g.with_self_loops()
    rows = np.repeat(np.arange(4), np.diff(h.indptr))
    loops = np.bincount(rows[np.asarray(h.indices) == rows], minlength=4)
    assert loops.tolist() == [2, 1, 1, 0]  # existing double loop kept, missing loops added (i < 3)
    r = g.with_self_loops(replace=True)
    rows = np.repeat(np.arange(4), np.diff(r.indptr))
    assert np.bincount(rows[np.asarray(r.indices) == rows], minlength=4).tolist() == [1, 1, 1, 0]
    assert r.nnz == 4  # the (2 <- 1) edge and three loops


def test_transposed_structure_of_a_multigraph():
    g = CSRGraph.from_edge_index([1, 1, 0, 1], [0, 0, 1, 1], num_src=2, num_dst=2)
    t_indptr, t_indices, t_perm = g.transposed()
    assert np.array_equal(t_indptr, [0, 1, 4]) and np.array_equal(t_indices, [1, 0, 0, 1])
    assert np.array_equal(np.asarray(g.indices)[t_perm], [0, 1, 1, 1])
