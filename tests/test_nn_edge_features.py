"""GATConv and GATv2Conv with PyG's forms of input: edge features (``edge_dim``) with the
self-loop ``fill_value``, PyG's self-loop rule on multigraphs, bipartite pairs
``(x_src, x_dst)`` and pair ``in_dim``, and ``return_attention_weights``.

Gradients of every parameter, of ``x`` and of ``edge_attr`` by central differences in
float64; the PyG comparisons are in ``test_nn_pyg.py``."""

from __future__ import annotations

import copy

import numpy as np
import pytest

import sparsegat as sg
from sparsegat import nn
from sparsegat.nn import edges as nn_edges

from test_nn_layers import numeric_grad  # central differences, the same EPS

FILLS = ["mean", "add", 0.5, np.array([1.0, -2.0])]
FILL_IDS = ["mean", "add", "number", "array"]


# ---------------------------------------------------------------------- helpers
def multigraph(n_dst: int, n_src: int, n_edges: int, seed: int) -> tuple[sg.CSRGraph, np.ndarray, np.ndarray]:
    """``(g, perm, edge_index)``: random edges plus repeated edges, a doubled self-loop and a plain one."""
    rng = np.random.default_rng(seed)
    src, dst = rng.integers(0, n_src, n_edges), rng.integers(0, n_dst, n_edges)
    src = np.concatenate([src, src[:3], [1, 1, 0]])
    dst = np.concatenate([dst, dst[:3], [1, 1, 0]])
    ei = np.stack([src, dst])
    g, perm = sg.CSRGraph.from_edge_index(ei, num_src=n_src, num_dst=n_dst, return_perm=True)
    return g, perm, ei


def _close(num: np.ndarray, ana, what: str) -> None:
    assert ana is not None, f"{what}: no analytic gradient"
    assert ana.shape == num.shape, f"{what}: shape {ana.shape} vs {num.shape}"
    err = np.abs(num - ana)
    assert (err <= 1e-6 + 1e-5 * np.abs(num)).all(), f"{what}: max error {err.max():.3g}"


def edge_gradcheck(layer, x, g, edge_attr, training: bool = False) -> tuple:
    """Every parameter gradient, the input gradient(s) and ``edge_attr_grad`` against central
    differences; the layer is deep-copied before each evaluation (same dropout draws)."""
    snapshot = copy.deepcopy(layer)
    y = layer.forward(x, g, edge_attr, training=training)
    R = np.random.default_rng(0).normal(size=y.shape)
    dx = layer.backward(R)
    state = {"x": x, "e": edge_attr}

    def loss(name=None, value=None):
        fresh = copy.deepcopy(snapshot)
        if name is not None:
            fresh.params[name] = value
        return float((fresh.forward(state["x"], g, state["e"], training=training) * R).sum())

    for name, arr in snapshot.params.items():
        work = arr.copy()
        _close(numeric_grad(lambda: loss(name, work), work), layer.grads.get(name), f"d/d {name}")
    xs, dxs = (x, dx) if isinstance(x, tuple) else ((x,), (dx,))
    for i, xi in enumerate(xs):
        if xi is None:
            assert dxs[i] is None
            continue
        work = xi.copy()
        state["x"] = tuple(work if j == i else a for j, a in enumerate(xs)) if isinstance(x, tuple) else work
        _close(numeric_grad(loss, work), dxs[i], f"dx[{i}]")
        state["x"] = x
    if edge_attr is not None:
        work = edge_attr.copy()
        state["e"] = work
        _close(numeric_grad(loss, work), layer.edge_attr_grad, "d/d edge_attr")
    return y, dx


def _layer(cls, in_dim=3, **kw):
    kw.setdefault("heads", 2)
    layer = cls(in_dim, 2, dtype=np.float64, seed=0, **kw)
    if "bias" in layer.params:
        layer.params["bias"] = np.random.default_rng(5).normal(size=layer.params["bias"].shape)
    return layer


@pytest.fixture(scope="module")
def mg():
    return multigraph(6, 6, 9, seed=1)


# ---------------------------------------------------------------------- gradients
@pytest.mark.parametrize("fill", FILLS, ids=FILL_IDS)
@pytest.mark.parametrize("cls", [nn.GATConv, nn.GATv2Conv])
def test_edge_feature_gradients_each_fill_value(mg, cls, fill):
    g, _, _ = mg
    rng = np.random.default_rng(2)
    x, e = rng.normal(size=(6, 3)), rng.normal(size=(g.nnz, 2))
    layer = _layer(cls, edge_dim=2, fill_value=fill, residual=True, negative_slope=0.3)
    y, dx = edge_gradcheck(layer, x, g, e)
    assert y.shape == (6, 4) and dx.shape == (6, 3) and layer.edge_attr_grad.shape == e.shape


@pytest.mark.parametrize("cls", [nn.GATConv, nn.GATv2Conv])
@pytest.mark.parametrize("concat", [True, False])
def test_edge_features_without_self_loops_mean_heads_and_1d_attr(mg, cls, concat):
    g, _, _ = mg
    rng = np.random.default_rng(3)
    x, e = rng.normal(size=(6, 3)), rng.normal(size=(g.nnz,))
    layer = _layer(cls, edge_dim=1, heads=3, concat=concat, add_self_loops=False, bias=False)
    y, _ = edge_gradcheck(layer, x, g, e)
    assert layer.edge_attr_grad.shape == (g.nnz,)  # the shape edge_attr was given in
    assert y.shape == (6, 6 if concat else 2)


@pytest.mark.parametrize("cls", [nn.GATConv, nn.GATv2Conv])
def test_edge_feature_gradients_with_attention_dropout(mg, cls):
    g, _, _ = mg
    rng = np.random.default_rng(4)
    layer = _layer(cls, edge_dim=2, dropout=0.4)
    edge_gradcheck(layer, rng.normal(size=(6, 3)), g, rng.normal(size=(g.nnz, 2)), training=True)


@pytest.mark.parametrize("cls", [nn.GATConv, nn.GATv2Conv])
def test_bipartite_pair_gradients(cls):
    """x=(x_src, x_dst) with in_dim=(in_src, in_dst): separate projections, residual from x_dst."""
    g, _, _ = multigraph(4, 6, 8, seed=2)
    rng = np.random.default_rng(5)
    x = (rng.normal(size=(6, 3)), rng.normal(size=(4, 2)))
    layer = _layer(cls, in_dim=(3, 2), edge_dim=2, residual=True)
    assert layer.params["W_src"].shape == (3, 4) and layer.params["W_dst"].shape == (2, 4)
    assert layer.params["W_res"].shape == (2, 4)
    y, (dx_src, dx_dst) = edge_gradcheck(layer, x, g, rng.normal(size=(g.nnz, 2)))
    assert y.shape == (4, 4) and dx_src.shape == (6, 3) and dx_dst.shape == (4, 2)


@pytest.mark.parametrize("cls,kw", [(nn.GATConv, {}), (nn.GATv2Conv, {}), (nn.GATv2Conv, {"share_weights": True})],
                         ids=["GATConv", "GATv2Conv", "GATv2Conv-shared"])
def test_pair_input_with_one_weight_and_more_destinations_than_sources(cls, kw):
    """An int in_dim with a pair input uses one projection for both sides; n_dst > n_src works
    with a pair (the destinations need not be rows of x_src)."""
    g, _, _ = multigraph(7, 5, 10, seed=3)
    rng = np.random.default_rng(6)
    x = (rng.normal(size=(5, 3)), rng.normal(size=(7, 3)))
    layer = _layer(cls, residual=True, **kw)
    y, _ = edge_gradcheck(layer, x, g, None)
    assert y.shape == (7, 4)


def test_gatconv_without_destination_features():
    """x=(x_src, None): PyG drops the att_dst term and the residual; those get no gradient."""
    g, _, _ = multigraph(4, 6, 8, seed=4)
    rng = np.random.default_rng(7)
    layer = _layer(nn.GATConv, edge_dim=2, residual=True)
    layer.grads["att_dst"] = "stale"  # a previous backward's entry must go
    x = (rng.normal(size=(6, 3)), None)
    e = rng.normal(size=(g.nnz, 2))
    y = layer.forward(x, g, e)
    dx = layer.backward(np.ones_like(y))
    assert dx[1] is None and "att_dst" not in layer.grads and "W_res" not in layer.grads
    # the same as zero att_dst and zero W_res with any x_dst
    ref = _layer(nn.GATConv, edge_dim=2, residual=True)
    ref.params["att_dst"] = np.zeros_like(ref.params["att_dst"])
    ref.params["W_res"] = np.zeros_like(ref.params["W_res"])
    np.testing.assert_allclose(y, ref.forward((x[0], rng.normal(size=(4, 3))), g, e), rtol=1e-12, atol=1e-14)


def test_one_array_with_a_pair_in_dim_uses_both_weights(mg):
    g, _, _ = mg
    x = np.random.default_rng(8).normal(size=(6, 3))
    layer = _layer(nn.GATConv, in_dim=(3, 3), residual=True)
    y, dx = edge_gradcheck(layer, x, g, None)
    same = _layer(nn.GATConv, in_dim=(3, 3), residual=True)
    np.testing.assert_allclose(same.forward((x, x), g), y, rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------- GATv2 edge chunks
def test_gatv2_edge_chunks_give_the_same_results(mg, monkeypatch):
    """Scores and gradients computed one chunk of edges at a time equal those of one chunk."""
    g, _, _ = mg
    rng = np.random.default_rng(9)
    x, e = rng.normal(size=(6, 3)), rng.normal(size=(g.nnz, 2))
    results = []
    for chunk in (nn_edges.CHUNK_ELEMENTS, 4 * 3, 1):  # one chunk; 3 edges a chunk; 1 edge a chunk
        monkeypatch.setattr(nn_edges, "CHUNK_ELEMENTS", chunk)
        layer = _layer(nn.GATv2Conv, edge_dim=2, residual=True)
        y = layer.forward(x, g, e)
        dx = layer.backward(np.ones_like(y))
        results.append((y, dx, dict(layer.grads), layer.edge_attr_grad))
    assert len(nn_edges.edge_chunks(g.nnz + 6, 4)) == g.nnz + 6
    for y, dx, grads, de in results[1:]:
        np.testing.assert_allclose(y, results[0][0], rtol=1e-13, atol=1e-14)
        np.testing.assert_allclose(dx, results[0][1], rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(de, results[0][3], rtol=1e-12, atol=1e-13)
        for k in grads:
            np.testing.assert_allclose(grads[k], results[0][2][k], rtol=1e-12, atol=1e-13, err_msg=k)


# ---------------------------------------------------------------------- self-loops and fill values
def test_self_loop_rule_replaces_every_loop_and_maps_edges(mg):
    g, _, _ = mg
    g2, edge_ids = nn.graph_with_self_loops(g, return_edge_ids=True)
    ref = g.with_self_loops(replace=True)
    np.testing.assert_array_equal(g2.indptr, ref.indptr)
    np.testing.assert_array_equal(g2.indices, ref.indices)
    assert nn.graph_with_self_loops(g) is g2  # cached on g
    rows, rows2 = np.asarray(g.row_ids()), np.asarray(g2.row_ids())
    cols, cols2 = np.asarray(g.indices), np.asarray(g2.indices)
    kept = edge_ids >= 0
    assert (rows2[kept] == rows[edge_ids[kept]]).all() and (cols2[kept] == cols[edge_ids[kept]]).all()
    assert (rows2[~kept] == cols2[~kept]).all() and np.array_equal(rows2[~kept], np.arange(6))
    # every non-loop edge of g exactly once (multi-edges included), no loop of g
    assert sorted(edge_ids[kept]) == list(np.flatnonzero(rows != cols))
    assert int((rows == cols).sum()) >= 3  # the doubled loop (1, 1) and (0, 0) were there


def test_self_loops_of_a_bipartite_graph(mg):
    g, _, _ = multigraph(4, 6, 8, seed=5)
    g2 = nn.graph_with_self_loops(g)
    dense = g2.to_scipy().toarray()
    assert g2.shape == (4, 6) and all(dense[i, i] == 1 for i in range(4))
    with pytest.raises(TypeError, match="CSRGraph"):
        nn.graph_with_self_loops(g.to_scipy())


@pytest.mark.parametrize("fill", FILLS, ids=FILL_IDS)
def test_loop_edge_features_follow_pyg(mg, fill):
    """A loop's features: mean/sum over the node's incoming non-loop edges (0 without any), or the constant."""
    g, _, _ = mg
    e = np.random.default_rng(10).normal(size=(g.nnz, 2))
    lg = nn_edges.self_loops(g)
    got = nn_edges.loop_edge_attr(lg, e, nn_edges.check_fill_value(fill, 2))
    rows, cols = np.asarray(g.row_ids()), np.asarray(g.indices)
    kept = lg.edge_ids >= 0
    np.testing.assert_array_equal(got[kept], e[lg.edge_ids[kept]])
    for i, pos in enumerate(lg.loop_pos):
        into = e[(rows == i) & (cols != i)]
        if isinstance(fill, str):
            want = into.sum(axis=0) if fill == "add" else (into.mean(axis=0) if len(into) else np.zeros(2))
        else:
            want = np.broadcast_to(fill, (2,))
        np.testing.assert_allclose(got[pos], want, rtol=1e-14, atol=1e-15)


def test_edge_dim_without_edge_attr_uses_no_edge_term(mg):
    g, _, _ = mg
    x = np.random.default_rng(11).normal(size=(6, 3))
    for cls in (nn.GATConv, nn.GATv2Conv):
        with_e, plain = _layer(cls, edge_dim=2), _layer(cls)
        for k in plain.params:
            with_e.params[k] = plain.params[k]
        with_e.grads["W_edge"] = "stale"
        y = with_e.forward(x, g)
        np.testing.assert_allclose(y, plain.forward(x, g), rtol=1e-13, atol=1e-14)
        with_e.backward(np.ones_like(y))
        assert "W_edge" not in with_e.grads and "att_edge" not in with_e.grads and with_e.edge_attr_grad is None


# ---------------------------------------------------------------------- attention weights
@pytest.mark.parametrize("cls", [nn.GATConv, nn.GATv2Conv])
@pytest.mark.parametrize("with_edges", [False, True])
def test_return_attention_weights(mg, cls, with_edges):
    """``(out, (g_used, alpha))``: the looped graph and the weights the forward used, dropout included."""
    g, _, _ = mg
    rng = np.random.default_rng(12)
    x = rng.normal(size=(6, 3))
    e = rng.normal(size=(g.nnz, 2)) if with_edges else None
    layer = _layer(cls, edge_dim=2 if with_edges else None, dropout=0.5, bias=False, concat=False)
    y, (g2, alpha) = layer.forward(x, g, e, return_attention_weights=True)
    assert g2 is nn.graph_with_self_loops(g) and alpha.shape == (g2.nnz, 2)
    row_sums = np.add.reduceat(alpha, np.asarray(g2.indptr[:-1]), axis=0)
    np.testing.assert_allclose(row_sums, 1.0, rtol=1e-12)
    np.testing.assert_allclose(layer.forward(x, g, e), y, rtol=1e-14)  # evaluation: same output
    # training: the output is exactly the aggregation with the (dropped, rescaled) weights returned
    y_t, (_, alpha_t) = layer.forward(x, g, e, training=True, return_attention_weights=True)
    assert (alpha_t == 0).any()
    v = layer.last_context.v  # (n_src, heads, out_dim): the values
    agg = np.zeros((6, 2, 2))
    np.add.at(agg, np.asarray(g2.row_ids()), alpha_t[:, :, None] * v[np.asarray(g2.indices)])
    np.testing.assert_allclose(y_t, agg.mean(axis=1), rtol=1e-12, atol=1e-14)
    layer.backward(np.ones_like(y_t))  # the training forward is still the one backward belongs to


# ---------------------------------------------------------------------- protocol
def test_backward_pairs_with_the_training_forward_and_its_edge_attr(mg):
    g, _, _ = mg
    rng = np.random.default_rng(13)
    x, e1, e2 = rng.normal(size=(6, 3)), rng.normal(size=(g.nnz, 2)), rng.normal(size=(g.nnz, 2))
    ref, test = _layer(nn.GATv2Conv, edge_dim=2), _layer(nn.GATv2Conv, edge_dim=2)
    R = rng.normal(size=(6, 4))
    ref.forward(x, g, e1, training=True)
    ref.backward(R)
    test.forward(x, g, e1, training=True)
    test.forward(x, g, e2)  # evaluation forward in between
    test.backward(R)
    np.testing.assert_array_equal(test.edge_attr_grad, ref.edge_attr_grad)
    for k in ref.grads:
        np.testing.assert_array_equal(test.grads[k], ref.grads[k])


@pytest.mark.parametrize("cls", [nn.GATConv, nn.GATv2Conv])
def test_input_grad_false_skips_x_and_edge_attr_gradients_only(mg, cls):
    g, _, _ = mg
    rng = np.random.default_rng(14)
    x, e = rng.normal(size=(6, 3)), rng.normal(size=(g.nnz, 2))
    grads = []
    for flag in (True, False):
        layer = _layer(cls, edge_dim=2, residual=True)
        layer.input_grad = flag
        dx = layer.backward(np.ones_like(layer.forward(x, g, e)))
        assert (dx is None) == (not flag) and (layer.edge_attr_grad is None) == (not flag)
        grads.append(dict(layer.grads))
    for k in grads[0]:
        np.testing.assert_array_equal(grads[0][k], grads[1][k])


@pytest.mark.parametrize("cls", [nn.GATConv, nn.GATv2Conv])
def test_float32_edge_features_match_float64(mg, cls):
    g, _, _ = mg
    rng = np.random.default_rng(15)
    x, e = rng.normal(size=(6, 3)), rng.normal(size=(g.nnz, 2))
    l64 = cls(3, 2, heads=2, edge_dim=2, dtype=np.float64, seed=0)
    l32 = cls(3, 2, heads=2, edge_dim=2, dtype=np.float32, seed=0)
    y32 = l32.forward(x.astype(np.float32), g, e)  # float64 edge_attr is cast
    assert y32.dtype == np.float32
    np.testing.assert_allclose(y32, l64.forward(x, g, e), rtol=1e-4, atol=1e-5)
    l32.backward(np.ones_like(y32))
    assert l32.edge_attr_grad.dtype == np.float32 and l32.grads["W_edge"].dtype == np.float32


def test_layer_call_takes_edge_attr_and_sequential_models_still_work(mg):
    g, _, _ = mg
    rng = np.random.default_rng(16)
    x, e = rng.normal(size=(6, 3)), rng.normal(size=(g.nnz, 2))
    layer = _layer(nn.GATConv, edge_dim=2)
    np.testing.assert_array_equal(layer(x, g, e), layer.forward(x, g, e))
    model = nn.Sequential(nn.GATConv(3, 2, heads=2, dtype=np.float64, seed=0), nn.ELU())
    assert model.forward(x, g).shape == (6, 4)
    assert "edge_dim=2" in repr(layer) and "fill_value='mean'" in repr(layer)


def test_an_optimizer_leaves_unused_edge_parameters_alone(mg):
    g, _, _ = mg
    x = np.random.default_rng(17).normal(size=(6, 3))
    layer = _layer(nn.GATConv, edge_dim=2)
    before = layer.params["W_edge"].copy()
    opt = sg.optim.Adam(layer, lr=0.1, weight_decay=0.1)
    layer.backward(np.ones_like(layer.forward(x, g)))
    opt.step()
    np.testing.assert_array_equal(layer.params["W_edge"], before)


# ---------------------------------------------------------------------- bad arguments
def test_bad_edge_attr(mg):
    g, _, _ = mg
    x = np.zeros((6, 3))
    with pytest.raises(ValueError, match="without edge_dim"):
        _layer(nn.GATConv).forward(x, g, np.zeros((g.nnz, 2)))
    layer = _layer(nn.GATv2Conv, edge_dim=2)
    with pytest.raises(ValueError, match=rf"edge_attr must have shape \(nnz, edge_dim\) = \({g.nnz}, 2\)"):
        layer.forward(x, g, np.zeros((g.nnz + 1, 2)))
    with pytest.raises(ValueError, match="edge_attr must have shape"):
        layer.forward(x, g, np.zeros((g.nnz,)))  # 1-D only for edge_dim=1
    with pytest.raises(TypeError, match="edge_attr must be a dense numpy array, got list"):
        layer.forward(x, g, np.zeros((g.nnz, 2)).tolist())
    with pytest.raises(TypeError, match="float"):
        layer.forward(x, g, np.zeros((g.nnz, 2), dtype=np.int64))
    with pytest.raises(ValueError, match="edge_dim must be a positive integer, got 0"):
        nn.GATConv(3, 2, edge_dim=0)


@pytest.mark.parametrize("fill,err,match", [
    ("max", ValueError, "fill_value must be 'mean', 'add'.*got 'max'"),
    (True, TypeError, "fill_value must be .* got True"),
    (None, TypeError, "fill_value must be .* got None"),
    (float("nan"), ValueError, "fill_value must be finite"),
    ([1.0, 2.0, 3.0], ValueError, r"shape \(edge_dim,\) = \(2,\)"),
    (object(), TypeError, "fill_value must be .* got object"),
])
def test_bad_fill_value(fill, err, match):
    with pytest.raises(err, match=match):
        nn.GATv2Conv(3, 2, edge_dim=2, fill_value=fill)


def test_bad_node_inputs(mg):
    g, _, _ = mg
    with pytest.raises(ValueError, match=r"in_dim must be a positive integer or a pair"):
        nn.GATConv((3, 2, 1), 2)
    with pytest.raises(ValueError, match=r"in_dim\[1\] must be a positive integer"):
        nn.GATConv((3, 0), 2)
    with pytest.raises(ValueError, match="share_weights=True uses W_src for both sides"):
        nn.GATv2Conv((3, 2), 2, share_weights=True)
    pair = nn.GATConv((3, 2), 2, dtype=np.float64)
    with pytest.raises(ValueError, match="different widths: pass x=\\(x_src, x_dst\\)"):
        pair.forward(np.zeros((6, 3)), g)
    with pytest.raises(ValueError, match="x_dst has 5 rows but the graph has n_dst=6"):
        pair.forward((np.zeros((6, 3)), np.zeros((5, 2))), g)
    with pytest.raises(ValueError, match="expects 2 input features in x_dst"):
        pair.forward((np.zeros((6, 3)), np.zeros((6, 3))), g)
    with pytest.raises(ValueError, match="one array or a pair"):
        pair.forward((np.zeros((6, 3)),) * 3, g)
    with pytest.raises(ValueError, match=r"x=\(x_src, None\) is refused"):
        nn.GATv2Conv(3, 2).forward((np.zeros((6, 3)), None), g)
