"""Finite-difference gradient checks (float64) for every layer of sparsegat.nn and the loss,
plus the layer protocol: shapes, dtypes, dropout, parameter assignment, sparse inputs."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import scipy.sparse as sp

import sparsegat as sg
from sparsegat import nn

EPS = 1e-6


# ---------------------------------------------------------------------- helpers
def random_graph(n_dst: int, n_src: int, density: float, seed: int, empty_row: bool = True) -> sg.CSRGraph:
    rng = np.random.default_rng(seed)
    A = (rng.random((n_dst, n_src)) < density).astype(float)
    if empty_row:
        A[n_dst // 2] = 0.0  # a destination without incoming edges
    A[0, 0] = 1.0  # one self-loop already present (layers must not duplicate it)
    return sg.CSRGraph.from_scipy(sp.csr_matrix(A))


def _like(y, rng):
    if isinstance(y, tuple):
        return tuple(rng.normal(size=a.shape) for a in y)
    return rng.normal(size=y.shape)


def _dot(y, r) -> float:
    if isinstance(y, tuple):
        return float(sum((a * b).sum() for a, b in zip(y, r)))
    return float((y * r).sum())


def numeric_grad(f, a: np.ndarray) -> np.ndarray:
    out = np.zeros_like(a)
    for idx in np.ndindex(a.shape):
        old = a[idx]
        a[idx] = old + EPS
        fp = f()
        a[idx] = old - EPS
        fm = f()
        a[idx] = old
        out[idx] = (fp - fm) / (2 * EPS)
    return out


def assert_close(num, ana, what):
    assert ana is not None, f"{what}: no analytic gradient"
    assert ana.shape == num.shape, f"{what}: shape {ana.shape} vs {num.shape}"
    err = np.abs(num - ana)
    tol = 1e-6 + 1e-5 * np.abs(num)
    assert (err <= tol).all(), f"{what}: max error {err.max():.3g} (max |grad| {np.abs(num).max():.3g})"


def gradcheck(layer: nn.Module, x, g, training: bool = False, check_x: bool = True, seed: int = 0):
    """Check every parameter gradient and dx of ``layer`` at input ``x`` against central differences.

    The layer is deep-copied before every evaluation, so forwards that draw random
    numbers (dropout) draw the same ones each time.
    """
    rng = np.random.default_rng(seed)
    snapshot = copy.deepcopy(layer)
    y = layer.forward(x, g, training=training)
    R = _like(y, rng)
    dx = layer.backward(R)
    grads = {name: lay.grads.get(key) for name, lay, key in layer.named_parameters()}

    state = {"x": x}

    def loss(name=None, value=None):
        fresh = copy.deepcopy(snapshot)
        if name is not None:
            fresh.state_dict(keep_vars=True)[name][...] = value  # the live arrays
        return _dot(fresh.forward(state["x"], g, training=training), R)

    checked = 0
    for name, arr in snapshot.state_dict().items():
        work = arr.copy()
        num = numeric_grad(lambda: loss(name, work), work)
        assert_close(num, grads[name], f"d/d {name}")
        checked += 1
    assert checked == len(grads)
    if check_x:
        xs = x if isinstance(x, tuple) else (x,)
        dxs = dx if isinstance(x, tuple) else (dx,)
        for i, xi in enumerate(xs):
            work = xi.copy()

            def fx(i=i, work=work):
                state["x"] = tuple(work if j == i else a for j, a in enumerate(xs)) if isinstance(x, tuple) else work
                return loss()

            num = numeric_grad(fx, work)
            state["x"] = x
            assert_close(num, dxs[i], f"dx[{i}]")
    return y, dx


@pytest.fixture(scope="module")
def graph():
    return random_graph(9, 9, 0.3, seed=1)


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(2).normal(size=(9, 4))


# ---------------------------------------------------------------------- GATConv
@pytest.mark.parametrize("concat", [True, False])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("self_loops", [True, False])
def test_gatconv_gradients(graph, x, concat, bias, residual, self_loops):
    layer = nn.GATConv(4, 3, heads=2, concat=concat, bias=bias, residual=residual,
                       add_self_loops=self_loops, negative_slope=0.3, dtype=np.float64, seed=0)
    if bias:
        layer.params["bias"] = np.random.default_rng(5).normal(size=layer.params["bias"].shape)
    y, _ = gradcheck(layer, x, graph)
    assert y.shape == (9, 6 if concat else 3)


def test_gatconv_gradients_with_attention_dropout(graph, x):
    layer = nn.GATConv(4, 3, heads=2, dropout=0.4, residual=True, dtype=np.float64, seed=0)
    gradcheck(layer, x, graph, training=True)


def test_gatconv_bipartite_graph(x):
    g = random_graph(6, 9, 0.4, seed=3)
    layer = nn.GATConv(4, 2, heads=2, residual=True, dtype=np.float64, seed=0)
    y, dx = gradcheck(layer, x, g)
    assert y.shape == (6, 4) and dx.shape == (9, 4)


def test_gatconv_layouts_and_defaults():
    layer = nn.GATConv(5, 3, heads=4)
    assert layer.params["W"].shape == (5, 12)
    assert layer.params["att_src"].shape == (4, 3) and layer.params["att_dst"].shape == (4, 3)
    assert layer.params["bias"].shape == (12,) and not layer.params["bias"].any()
    assert all(p.dtype == np.float32 for p in layer.params.values())
    mean = nn.GATConv(5, 3, heads=4, concat=False, residual=True)
    assert mean.params["bias"].shape == (3,) and mean.params["W_res"].shape == (5, 3)
    assert "bias" not in nn.GATConv(5, 3, bias=False).params
    # Glorot bounds as PyG: sqrt(6 / (fan_in + fan_out)) and sqrt(6 / (heads + out_dim)) for att
    big = nn.GATConv(200, 50, heads=2, seed=0)
    assert np.abs(big.params["W"]).max() <= np.sqrt(6 / 300) + 1e-7
    assert np.abs(big.params["W"]).max() > 0.9 * np.sqrt(6 / 300)
    assert np.abs(big.params["att_src"]).max() <= np.sqrt(6 / 52) + 1e-7
    # Same seed, same parameters; different seed, different ones
    a, b, c = nn.GATConv(5, 3, seed=7), nn.GATConv(5, 3, seed=7), nn.GATConv(5, 3, seed=8)
    assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)
    assert not np.array_equal(a.params["W"], c.params["W"])


def test_gatconv_float32_matches_float64(graph, x):
    l64 = nn.GATConv(4, 3, heads=2, dtype=np.float64, seed=0)
    l32 = nn.GATConv(4, 3, heads=2, dtype=np.float32, seed=0)
    y64 = l64.forward(x, graph)
    y32 = l32.forward(x.astype(np.float32), graph)
    assert y32.dtype == np.float32
    np.testing.assert_allclose(y32, y64, rtol=1e-4, atol=1e-5)
    # float64 input to a float32 layer is cast
    assert l32.forward(x, graph).dtype == np.float32


def test_gatconv_attention_dropout_seeds(graph, x):
    layer = nn.GATConv(4, 3, heads=2, dropout=0.5, seed=0, dtype=np.float64)
    a = layer.forward(x, graph, training=True)
    b = layer.forward(x, graph, training=True)
    assert not np.allclose(a, b), "each training forward draws a fresh dropout seed"
    e1 = layer.forward(x, graph, training=False)
    e2 = layer.forward(x, graph)  # training defaults to False
    np.testing.assert_array_equal(e1, e2)
    nodrop = nn.GATConv(4, 3, heads=2, dropout=0.0, seed=0, dtype=np.float64)
    np.testing.assert_allclose(e1, nodrop.forward(x, graph), rtol=1e-12)
    # Same layer seed: same sequence of dropout seeds
    again = nn.GATConv(4, 3, heads=2, dropout=0.5, seed=0, dtype=np.float64)
    np.testing.assert_array_equal(again.forward(x, graph, training=True), a)


def test_params_assignment_is_used(graph, x):
    layer = nn.GATConv(4, 3, heads=2, dtype=np.float64, seed=0)
    y0 = layer.forward(x, graph)
    layer.params["W"] = layer.params["W"] * 2.0
    layer.params["att_src"] = np.zeros((2, 3))
    layer.params["att_dst"] = np.zeros((2, 3))
    y1 = layer.forward(x, graph)
    assert not np.allclose(y0, y1)
    # zero attention vectors: a uniform mean over each row (self-loops added) of x @ W
    g2 = nn.graph_with_self_loops(graph)
    A = g2.to_scipy()
    mean = sp.diags(1 / A.sum(axis=1).A1) @ A
    np.testing.assert_allclose(y1, mean @ (x @ layer.params["W"]), rtol=1e-10, atol=1e-12)


def test_self_loop_graph_is_cached(graph):
    a = nn.graph_with_self_loops(graph)
    assert a is nn.graph_with_self_loops(graph)
    present = int((graph.to_scipy().diagonal() != 0).sum())
    assert present >= 1 and a.nnz == graph.nnz + graph.n_dst - present  # loops already there are kept once
    g = random_graph(4, 6, 0.5, seed=0, empty_row=False)
    b = nn.graph_with_self_loops(g)
    dense = b.to_scipy().toarray()
    assert b.shape == (4, 6) and all(dense[i, i] == 1 for i in range(4))


def test_self_loops_come_from_the_graph(graph):
    """The layers' self-loop graph is CSRGraph.with_self_loops(replace=True), PyG's rule (one place
    adds loops): a doubled loop becomes one; a bipartite graph keeps its edges and gains exactly the
    loops (i, i), i < n_dst."""
    doubled = sg.CSRGraph.from_edge_index([0, 1, 1, 2, 2], [0, 1, 1, 0, 0])  # loop (1, 1) twice
    for g in (graph, doubled):
        a, b = nn.graph_with_self_loops(g), g.with_self_loops(replace=True)
        np.testing.assert_array_equal(a.indptr, b.indptr)
        np.testing.assert_array_equal(a.indices, b.indices)
    assert nn.graph_with_self_loops(doubled).nnz == 5  # 2 -> 0 twice, and one loop per node
    g = random_graph(4, 6, 0.5, seed=1, empty_row=True)
    loops = nn.graph_with_self_loops(g).to_scipy().toarray()
    expected = g.to_scipy().toarray()
    expected[np.arange(4), np.arange(4)] = 1
    np.testing.assert_array_equal(loops, expected)
    assert nn.graph_with_self_loops(g).index_dtype == g.index_dtype


@pytest.mark.parametrize("make", [lambda: nn.GATConv(4, 3, heads=2), lambda: nn.GATv2Conv(4, 3, heads=2),
                                  lambda: nn.GraphAttention(4, 3, heads=2, residual=False)])
def test_attention_layers_backward_before_forward(make):
    layer = make()
    with pytest.raises(RuntimeError, match=f"{type(layer).__name__}.backward called before forward"):
        layer.backward(np.zeros((3, 6)))


def test_softmax_cross_entropy_returns_a_record():
    logits, labels = np.array([[2.0, 0.0], [0.0, 1.0]]), np.array([0, 1])
    res = nn.softmax_cross_entropy(logits, labels)
    assert isinstance(res, nn.LossAndGrad)
    loss, dlogits = res
    assert res.loss == loss and res.dlogits is dlogits and dlogits.shape == (2, 2)
    p0, p1 = 1 / (1 + np.exp(-2.0)), 1 / (1 + np.exp(-1.0))  # softmax of the true classes
    assert loss == pytest.approx(-(np.log(p0) + np.log(p1)) / 2, rel=1e-14)
    np.testing.assert_allclose(dlogits, [[(p0 - 1) / 2, (1 - p0) / 2], [(1 - p1) / 2, (p1 - 1) / 2]], rtol=1e-14)


def test_gatconv_bad_inputs(graph, x):
    layer = nn.GATConv(4, 3)
    with pytest.raises(ValueError, match="input features"):
        layer.forward(np.zeros((9, 5), np.float32), graph)
    with pytest.raises(ValueError, match="rows"):
        layer.forward(np.zeros((8, 4), np.float32), graph)
    with pytest.raises(TypeError, match="CSRGraph"):
        layer.forward(x, graph.to_scipy())
    with pytest.raises(RuntimeError, match="before forward"):
        nn.GATConv(4, 3).backward(np.zeros((9, 3), np.float32))
    with pytest.raises(ValueError):
        nn.GATConv(4, 3, dropout=1.0)
    with pytest.raises(ValueError):
        nn.GATConv(0, 3)
    with pytest.raises(TypeError):
        nn.GATConv(4, 3, dtype=np.int32)
    with pytest.raises(ValueError, match="backend"):
        nn.GATConv(4, 3, backend="torch")
    layer.forward(x, graph)
    with pytest.raises(ValueError, match="dy must have shape"):
        layer.backward(np.zeros((9, 4), np.float32))


# ---------------------------------------------------------------------- GATv2Conv
@pytest.mark.parametrize("share_weights", [False, True])
@pytest.mark.parametrize("concat", [True, False])
@pytest.mark.parametrize("residual", [False, True])
def test_gatv2conv_gradients(graph, x, share_weights, concat, residual):
    layer = nn.GATv2Conv(4, 3, heads=2, concat=concat, residual=residual, share_weights=share_weights,
                         negative_slope=0.25, dtype=np.float64, seed=0)
    layer.params["bias"] = np.random.default_rng(5).normal(size=layer.params["bias"].shape)
    gradcheck(layer, x, graph)


def test_gatv2conv_no_bias_dropout_and_bipartite(x):
    g = random_graph(6, 9, 0.4, seed=4)
    layer = nn.GATv2Conv(4, 2, heads=2, bias=False, dropout=0.3, dtype=np.float64, seed=0)
    assert set(layer.params) == {"W_src", "W_dst", "att"}
    y, dx = gradcheck(layer, x, g, training=True)
    assert y.shape == (6, 4) and dx.shape == (9, 4)


def test_gatv2conv_layouts():
    layer = nn.GATv2Conv(5, 3, heads=4)
    assert {k: v.shape for k, v in layer.params.items()} == {
        "W_src": (5, 12), "b_src": (12,), "W_dst": (5, 12), "b_dst": (12,), "att": (4, 3), "bias": (12,)}
    assert np.abs(layer.params["b_src"]).max() <= 1 / np.sqrt(5)
    shared = nn.GATv2Conv(5, 3, heads=4, share_weights=True)
    assert "W_dst" not in shared.params and "b_dst" not in shared.params


# ---------------------------------------------------------------------- GraphAttention
@pytest.mark.parametrize("score", ["cosine", "dot", "scaled_dot", "euclidean"])
def test_graph_attention_residual_gradients(graph, x, score):
    layer = nn.GraphAttention(4, 3, heads=2, score=score, residual=True, dtype=np.float64, seed=0,
                              **({"tau": 1.5} if score in ("cosine", "euclidean") else {}))
    out, dx = gradcheck(layer, x, graph)
    assert isinstance(out, tuple) and len(out) == 3 and all(o.shape == (9, 6) for o in out)
    assert dx.shape == x.shape
    if score in ("cosine", "euclidean"):
        assert layer.params["tau"].shape == (1,)
        assert layer.grads["tau"].shape == (1,)


@pytest.mark.parametrize("score", ["cosine", "euclidean"])
def test_graph_attention_stream_input_and_plain_output(graph, score):
    """A second layer takes the (q, k, v) tuple of a residual layer and returns one array."""
    rng = np.random.default_rng(3)
    streams = tuple(rng.normal(size=(9, 6)) for _ in range(3))
    layer = nn.GraphAttention(6, 2, heads=1, score=score, residual=False, dropout=0.3, dtype=np.float64, seed=1)
    out, dx = gradcheck(layer, streams, graph, training=True)
    assert out.shape == (9, 2) and isinstance(dx, tuple) and len(dx) == 3


def test_graph_attention_residual_is_q_plus_context(graph, x):
    layer = nn.GraphAttention(4, 3, heads=2, score="dot", residual=True, dtype=np.float64, seed=0)
    q1, k1, v1 = layer.forward(x, graph)
    plain = nn.GraphAttention(4, 3, heads=2, score="dot", residual=False, dtype=np.float64, seed=0)
    c = plain.forward(x, graph)
    np.testing.assert_allclose(q1, x @ layer.params["W_q"] + c, rtol=1e-12)
    np.testing.assert_allclose(k1, x @ layer.params["W_k"] + c, rtol=1e-12)
    np.testing.assert_allclose(v1, x @ layer.params["W_v"] + c, rtol=1e-12)
    # dy entries may be None (treated as zero)
    layer.forward(x, graph)
    dx = layer.backward((None, np.ones_like(k1), None))
    layer.forward(x, graph)
    dx_zeros = layer.backward((np.zeros_like(q1), np.ones_like(k1), np.zeros_like(v1)))
    np.testing.assert_array_equal(dx, dx_zeros)
    assert np.abs(dx).max() > 0


def test_graph_attention_stack_in_sequential(graph, x):
    model = nn.Sequential(nn.GraphAttention(4, 3, heads=2, score="cosine", dtype=np.float64, seed=0),
                          nn.ELU(), nn.Dropout(0.2, seed=1),
                          nn.GraphAttention(6, 2, heads=1, score="cosine", residual=False, dtype=np.float64, seed=2))
    y, dx = gradcheck(model, x, graph, training=True)
    assert y.shape == (9, 2) and dx.shape == x.shape


def test_graph_attention_bad_arguments(graph, x):
    with pytest.raises(ValueError, match="score"):
        nn.GraphAttention(4, 3, score="additive")
    with pytest.raises(ValueError, match="tau"):
        nn.GraphAttention(4, 3, score="dot", tau=2.0)
    g = random_graph(5, 9, 0.4, seed=0)
    with pytest.raises(ValueError, match="square"):
        nn.GraphAttention(4, 3, residual=True).forward(x.astype(np.float32), g)
    assert "tau" not in nn.GraphAttention(4, 3, score="cosine", learn_tau=False).params


# ---------------------------------------------------------------------- dense layers
def test_linear_dense_gradients(x):
    gradcheck(nn.Linear(4, 3, dtype=np.float64, seed=0), x, None)
    gradcheck(nn.Linear(4, 3, bias=False, dtype=np.float64, seed=0), x, None)


@pytest.mark.parametrize("fmt", ["csr", "coo", "csr_array"])
def test_linear_sparse_input(x, fmt):
    rng = np.random.default_rng(0)
    dense = x * (rng.random(x.shape) < 0.4)
    xs = {"csr": sp.csr_matrix, "coo": sp.coo_matrix, "csr_array": sp.csr_array}[fmt](dense)
    layer = nn.Linear(4, 3, dtype=np.float64, seed=0)
    ref = nn.Linear(4, 3, dtype=np.float64, seed=0)
    y = layer.forward(xs, None)
    assert isinstance(y, np.ndarray)
    np.testing.assert_allclose(y, ref.forward(dense, None), rtol=1e-12)
    R = rng.normal(size=y.shape)
    assert layer.backward(R) is None  # no gradient into sparse features
    ref.backward(R)
    np.testing.assert_allclose(layer.grads["W"], ref.grads["W"], rtol=1e-12)
    np.testing.assert_allclose(layer.grads["b"], ref.grads["b"], rtol=1e-12)
    # parameter gradients by finite differences through the sparse path
    gradcheck(nn.Linear(4, 3, dtype=np.float64, seed=0), xs, None, check_x=False)


def test_gatconv_sparse_input_matches_dense(graph, x):
    rng = np.random.default_rng(0)
    dense = x * (rng.random(x.shape) < 0.5)
    for make in (lambda: nn.GATConv(4, 3, heads=2, residual=True, dtype=np.float64, seed=0),
                 lambda: nn.GATv2Conv(4, 3, heads=2, residual=True, dtype=np.float64, seed=0),
                 lambda: nn.GraphAttention(4, 3, heads=2, score="cosine", residual=False, dtype=np.float64, seed=0)):
        a, b = make(), make()
        ya = a.forward(sp.csr_matrix(dense), graph)
        yb = b.forward(dense, graph)
        np.testing.assert_allclose(ya, yb, rtol=1e-10, atol=1e-12)
        R = rng.normal(size=ya.shape)
        assert a.backward(R) is None
        b.backward(R)
        for k in a.params:
            np.testing.assert_allclose(a.grads[k], b.grads[k], rtol=1e-9, atol=1e-12)


def test_activations_gradients(x):
    gradcheck(nn.ELU(), x, None)
    gradcheck(nn.ELU(alpha=0.5), x, None)
    gradcheck(nn.ReLU(), x, None)
    y = nn.ELU().forward(np.array([[-50.0, -1.0, 0.0, 2.0]]), None)
    np.testing.assert_allclose(y, [[np.expm1(-50.0), np.expm1(-1.0), 0.0, 2.0]])
    np.testing.assert_array_equal(nn.ReLU().forward(np.array([[-1.0, 0.0, 3.0]]), None), [[0.0, 0.0, 3.0]])


def test_dropout(x):
    layer = nn.Dropout(0.5, seed=0)
    assert layer.forward(x, None) is x  # identity outside training
    big = np.ones((200, 50))
    y = layer.forward(big, None, training=True)
    kept = y != 0
    assert 0.4 < kept.mean() < 0.6
    np.testing.assert_allclose(y[kept], 2.0)
    dx = layer.backward(np.full_like(big, 3.0))
    np.testing.assert_array_equal(dx, np.where(kept, 6.0, 0.0))
    gradcheck(nn.Dropout(0.3, seed=1), x, None, training=True)
    # sparse inputs: surviving entries scaled, structure only shrinks, no gradient
    xs = sp.random(300, 40, density=0.1, random_state=0, format="csr")
    ys = nn.Dropout(0.6, seed=2).forward(xs, None, training=True)
    assert sp.issparse(ys) and ys.shape == xs.shape
    assert 0.3 < ys.nnz / xs.nnz < 0.5
    diff = (ys - xs / 0.4).tocsr()
    diff.eliminate_zeros()
    rows, cols = ys.nonzero()
    np.testing.assert_allclose(np.asarray(ys[rows, cols]).ravel(), np.asarray(xs[rows, cols]).ravel() / 0.4)
    with pytest.raises(ValueError):
        nn.Dropout(1.0)


def test_sequential_gradients(graph, x):
    model = nn.Sequential(nn.Dropout(0.3, seed=0),
                          nn.GATConv(4, 3, heads=2, dropout=0.3, dtype=np.float64, seed=1),
                          nn.ELU(), nn.Dropout(0.3, seed=2),
                          nn.GATv2Conv(6, 2, heads=2, concat=False, dropout=0.2, dtype=np.float64, seed=3),
                          nn.ReLU(), nn.Linear(2, 3, dtype=np.float64, seed=4))
    y, dx = gradcheck(model, x, graph, training=True)
    assert y.shape == (9, 3)
    names = [n for n, _, _ in model.named_parameters()]
    assert names[:4] == ["1.W", "1.att_src", "1.att_dst", "1.bias"] and names[-2:] == ["6.W", "6.b"]
    assert model.num_parameters() == sum(p.size for p in model.state_dict().values())
    assert len(model) == 7 and isinstance(model[1], nn.GATConv)
    with pytest.raises(TypeError):
        nn.Sequential(nn.ELU(), "relu")


def test_sequential_stops_at_sparse_input(graph):
    xs = sp.random(9, 4, density=0.5, random_state=0, format="csr")
    model = nn.Sequential(nn.Dropout(0.5, seed=0), nn.GATConv(4, 2, heads=2, seed=1), nn.ELU(),
                          nn.Linear(4, 3, seed=2))
    y = model.forward(xs, graph, training=True)
    assert model.backward(np.ones_like(y)) is None
    assert set(model[1].grads) == {"W", "att_src", "att_dst", "bias"}
    # in evaluation (dropout off) the gradients are those of the same model on the dense features
    dense = nn.Sequential(nn.Dropout(0.5, seed=0), nn.GATConv(4, 2, heads=2, seed=1), nn.ELU(),
                          nn.Linear(4, 3, seed=2))
    ys, yd = model.forward(xs, graph), dense.forward(xs.toarray().astype(np.float32), graph)
    np.testing.assert_allclose(ys, yd, rtol=1e-5, atol=1e-6)
    R = np.random.default_rng(0).normal(size=ys.shape).astype(np.float32)
    assert model.backward(R) is None and dense.backward(R).shape == (9, 4)
    dense_grads = {n: lay.grads[k] for n, lay, k in dense.named_parameters()}
    for name, lay, key in model.named_parameters():
        np.testing.assert_allclose(lay.grads[key], dense_grads[name], rtol=1e-4, atol=1e-6)


def test_zero_grad_and_repr(graph, x):
    model = nn.Sequential(nn.GATConv(4, 2, seed=0), nn.ELU())
    model.backward(np.ones_like(model.forward(x.astype(np.float32), graph)))
    assert model[0].grads
    model.zero_grad()
    assert not model[0].grads
    assert "GATConv(4, 2" in repr(model)


# ---------------------------------------------------------------------- loss
def test_softmax_cross_entropy_gradient():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(7, 4)) * 3
    labels = rng.integers(0, 4, size=7)
    for mask in (None, np.array([True, False, True, True, False, False, True]), np.array([1, 5])):
        loss, d = nn.softmax_cross_entropy(logits, labels, mask)
        work = logits.copy()
        num = numeric_grad(lambda: nn.softmax_cross_entropy(work, labels, mask)[0], work)
        assert_close(num, d, "dlogits")
    # the value against a direct computation
    m = np.array([0, 2, 3])
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    expected = -np.mean(np.log(p[m, labels[m]]))
    assert nn.softmax_cross_entropy(logits, labels, m)[0] == pytest.approx(expected, rel=1e-12)
    # huge logits stay finite
    loss, d = nn.softmax_cross_entropy(np.array([[1e4, -1e4], [0.0, 1e4]]), np.array([0, 0]))
    assert np.isfinite(loss) and np.isfinite(d).all() and loss == pytest.approx(5e3)
    assert nn.softmax_cross_entropy(logits.astype(np.float32), labels)[1].dtype == np.float32


def test_softmax_cross_entropy_bad_inputs():
    logits = np.zeros((3, 2))
    with pytest.raises(ValueError, match="no nodes"):
        nn.softmax_cross_entropy(logits, np.array([0, 1, 0]), np.zeros(3, bool))
    with pytest.raises(ValueError, match="labels"):
        nn.softmax_cross_entropy(logits, np.array([0, 2, 0]))
    with pytest.raises(ValueError):
        nn.softmax_cross_entropy(logits, np.array([0, 1]))
    with pytest.raises(ValueError):
        nn.softmax_cross_entropy(logits, np.array([0, 1, 0]), np.array([True, False]))
    with pytest.raises(TypeError):
        nn.softmax_cross_entropy(logits, np.array([0.0, 1.0, 0.0]))
    assert nn.accuracy(np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]), np.array([0, 1, 1])) == pytest.approx(2 / 3)
    assert nn.accuracy(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([0, 0]), np.array([1])) == 0.0


# ---------------------------------------------------------------------- input_grad
@pytest.mark.parametrize("make", [
    lambda: nn.GATConv(5, 3, heads=2, residual=True, seed=0, dtype=np.float64),
    lambda: nn.GATv2Conv(5, 3, heads=2, residual=True, seed=0, dtype=np.float64),
    lambda: nn.GraphAttention(5, 3, heads=2, score="dot", residual=False, seed=0, dtype=np.float64),
    lambda: nn.GraphAttention(5, 3, heads=2, score="cosine", residual=True, seed=0, dtype=np.float64),
    lambda: nn.Linear(5, 3, seed=0, dtype=np.float64),
], ids=["GATConv", "GATv2Conv", "GraphAttention", "GraphAttention-residual", "Linear"])
def test_input_grad_false_skips_dx_and_changes_nothing_else(make):
    """``layer.input_grad = False``: backward returns None, every parameter gradient is
    the same as with the input gradient computed."""
    g = random_graph(7, 7, 0.4, seed=2)
    x = np.random.default_rng(1).normal(size=(7, 5))
    results = []
    for flag in (True, False):
        layer = make()
        layer.input_grad = flag
        y = layer.forward(x, g)
        dx = layer.backward(_like(y, np.random.default_rng(3)))
        results.append((dx, {k: v.copy() for k, v in layer.grads.items()}))
    (dx_on, grads_on), (dx_off, grads_off) = results
    assert dx_on is not None and (dx_off is None or all(d is None for d in dx_off))
    assert sorted(grads_on) == sorted(grads_off)
    for name in grads_on:
        assert np.array_equal(grads_on[name], grads_off[name]), name


# ---------------------------------------------------------------------- hardening (issue 11)
def _pairing_cases():
    g = random_graph(9, 9, 0.3, seed=1)
    return [
        ("GATConv", lambda: nn.GATConv(4, 3, heads=2, dropout=0.3, dtype=np.float64, seed=0), g),
        ("GATv2Conv", lambda: nn.GATv2Conv(4, 3, heads=2, dropout=0.3, dtype=np.float64, seed=0), g),
        ("GraphAttention", lambda: nn.GraphAttention(4, 3, heads=2, score="cosine", residual=True, dropout=0.3,
                                                     dtype=np.float64, seed=0), g),
        ("Linear", lambda: nn.Linear(4, 3, dtype=np.float64, seed=0), None),
        ("Dropout", lambda: nn.Dropout(0.5, seed=0), None),
        ("Sequential", lambda: nn.Sequential(nn.Dropout(0.4, seed=0),
                                             nn.GATConv(4, 3, heads=2, dropout=0.3, dtype=np.float64, seed=1),
                                             nn.ELU(), nn.ReLU(), nn.Linear(6, 2, dtype=np.float64, seed=2)), g),
    ]


def _grads(layer):
    return {name: lay.grads[key].copy() for name, lay, key in layer.named_parameters()}


def _same(a, b):
    if isinstance(a, dict):
        return sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)
    if isinstance(a, tuple):
        return all(_same(u, v) for u, v in zip(a, b))
    return np.array_equal(a, b)


@pytest.mark.parametrize("name,make,g", _pairing_cases(), ids=[c[0] for c in _pairing_cases()])
def test_backward_belongs_to_the_training_forward_not_a_later_eval_forward(name, make, g):
    """An evaluation forward between a training forward and its backward (logging a validation
    accuracy mid-step) changes nothing: backward uses the training forward; a second backward
    of the same forward raises; with no training forward, backward uses the latest forward."""
    rng = np.random.default_rng(7)
    x, x_eval = rng.normal(size=(9, 4)), rng.normal(size=(9, 4))
    ref = make()
    y = ref.forward(x, g, training=True)
    R = _like(y, np.random.default_rng(3))
    dx_ref = ref.backward(R)
    test = make()
    assert _same(test.forward(x, g, training=True), y)
    test.forward(x_eval, g, training=False)  # the evaluation forward in between
    dx = test.backward(R)
    assert _same(dx, dx_ref)
    assert _same(_grads(test), _grads(ref))
    with pytest.raises(RuntimeError, match="twice"):
        test.backward(R)
    # no training forward pending: the latest (evaluation) forward, as a fresh layer would do it
    test.forward(x_eval, g, training=False)
    fresh = make()
    fresh.forward(x_eval, g, training=False)
    assert _same(test.backward(R), fresh.backward(R))
    assert _same(_grads(test), _grads(fresh))
    with pytest.raises(RuntimeError, match="twice"):
        test.backward(R)


def test_a_failed_backward_retires_nothing(graph, x):
    layer = nn.GATConv(4, 3, heads=2, dtype=np.float64, seed=0)
    y = layer.forward(x, graph, training=True)
    with pytest.raises(ValueError, match=r"dy must have shape \(9, 6\)"):
        layer.backward(np.zeros((9, 5)))
    assert layer.backward(np.ones_like(y)).shape == x.shape  # the forward is still there


@pytest.mark.parametrize("make,g", [(lambda: nn.GATConv(4, 3, dtype=np.float64, seed=0), "graph"),
                                    (lambda: nn.Linear(4, 3, dtype=np.float64, seed=0), None),
                                    (lambda: nn.ELU(), None), (lambda: nn.ReLU(), None),
                                    (lambda: nn.Dropout(0.5, seed=0), None)],
                         ids=["GATConv", "Linear", "ELU", "ReLU", "Dropout"])
def test_backward_refuses_lists_and_wrong_gradients(make, g, graph, x):
    g = graph if g == "graph" else None
    layer = make()
    y = layer.forward(x, g, training=True)
    owner = type(layer).__name__
    with pytest.raises(TypeError, match=f"{owner}.backward: dy must be a numpy array.*got list"):
        layer.backward(np.ones_like(y).tolist())
    with pytest.raises(TypeError, match="real numbers, got dtype complex128"):
        layer.backward(np.ones_like(y) + 1j)
    with pytest.raises(ValueError, match=f"{owner}.backward: dy must have shape {tuple(y.shape)}".replace("(", r"\(")
                       .replace(")", r"\)")):
        layer.backward(np.ones((y.shape[0] + 1, y.shape[1])))
    layer.backward(np.ones_like(y))  # still paired with its forward


def test_deleted_parameter_is_a_clear_error(graph, x):
    layer = nn.GATConv(4, 3, dtype=np.float64, seed=0)
    del layer.params["att_src"]
    with pytest.raises(ValueError, match="GATConv.params has no 'att_src'"):
        layer.forward(x, graph)


@pytest.mark.parametrize("make", [lambda: nn.Linear(4, 3), lambda: nn.GATConv(4, 3), lambda: nn.Dropout(0.5)],
                         ids=["Linear", "GATConv", "Dropout"])
def test_complex_and_masked_inputs_are_refused(make, graph):
    dense = np.random.default_rng(0).normal(size=(9, 4))
    xc = sp.csr_matrix(dense * (np.abs(dense) > 0.5) * (1 + 2j))
    layer = make()
    with pytest.raises(TypeError, match="complex"):
        layer.forward(xc, graph, training=True)
    with pytest.raises(TypeError, match="masked"):
        layer.forward(np.ma.masked_array(dense, mask=dense > 1), graph, training=True)


def test_integer_sparse_features_convert_exactly(x):
    counts = sp.csr_matrix(np.random.default_rng(0).integers(0, 3, size=(9, 4)))
    a, b = nn.Linear(4, 3, dtype=np.float64, seed=0), nn.Linear(4, 3, dtype=np.float64, seed=0)
    np.testing.assert_array_equal(a.forward(counts), b.forward(counts.astype(np.float64)))
    with pytest.raises(TypeError, match="Dropout needs float inputs"):
        nn.Dropout(0.5).forward(counts, training=True)


def test_dropout_checks_sparse_input_before_converting_it():
    bad = sp.random(6, 5, density=0.5, format="csc", dtype=np.float32, random_state=1)
    bad.indices[0] = 10**6
    with pytest.raises(ValueError, match="^x: "):
        nn.Dropout(0.5, seed=0).forward(bad, training=True)


def test_graph_attention_stream_tuple_on_a_non_square_graph_matches_the_reference():
    """(x_q, x_k, x_v) on a bipartite graph: q from the first n_dst rows of x_q, k and v from all
    rows, against a direct call of the operator; gradients by finite differences."""
    g = random_graph(5, 8, 0.5, seed=4)
    rng = np.random.default_rng(1)
    streams = tuple(rng.normal(size=(8, 4)) for _ in range(3))
    layer = nn.GraphAttention(4, 3, heads=2, score="scaled_dot", residual=False, dtype=np.float64, seed=2)
    y = layer.forward(streams, g)
    g2 = nn.graph_with_self_loops(g)
    Wq, Wk, Wv = (layer.params[k] for k in ("W_q", "W_k", "W_v"))
    ref, _ = sg.attention_forward(g2, (streams[0][:5] @ Wq).reshape(5, 2, 3), (streams[1] @ Wk).reshape(8, 2, 3),
                                  (streams[2] @ Wv).reshape(8, 2, 3), score="scaled_dot", backend="numpy")
    assert y.shape == (5, 6)
    np.testing.assert_allclose(y, ref.reshape(5, 6), rtol=1e-12, atol=1e-14)
    out, dx = gradcheck(nn.GraphAttention(4, 3, heads=2, score="scaled_dot", residual=False, dtype=np.float64,
                                          seed=2), streams, g)
    assert [d.shape for d in dx] == [(8, 4)] * 3
    assert not dx[0][5:].any()  # only the destination rows of x_q reach the output


# ---------------------------------------------------------------------- masks
def test_masks_bool_or_indices_and_ambiguous_integer_masks_are_refused():
    rng = np.random.default_rng(0)
    logits, labels = rng.normal(size=(6, 3)), rng.integers(0, 3, size=6)
    bool_mask = np.array([True, False, True, True, False, False])
    idx = np.flatnonzero(bool_mask)
    for f in (lambda m: nn.softmax_cross_entropy(logits, labels, m)[0], lambda m: nn.accuracy(logits, labels, m)):
        assert f(bool_mask) == f(idx) == f(idx.astype(np.uint64)) == f(list(idx))
        for ambiguous in (bool_mask.astype(np.int64), bool_mask.astype(np.uint8), bool_mask.astype(int).tolist()):
            with pytest.raises(TypeError, match="ambiguous.*astype\\(bool\\).*flatnonzero"):
                f(ambiguous)
        assert f(np.array([0, 1])) == f(np.array([True, True, False, False, False, False]))  # short: indices
        with pytest.raises(TypeError, match="dtype float64"):
            f(bool_mask.astype(float))
        with pytest.raises(TypeError, match="masked"):
            f(np.ma.masked_array(idx))
        with pytest.raises(ValueError, match="one entry per node"):
            f(bool_mask[:5])
        with pytest.raises(ValueError, match=r"\[0, 6\)"):
            f(np.array([0, 6]))
    # accuracy checks its labels like the loss does
    with pytest.raises(ValueError, match="labels must have shape"):
        nn.accuracy(logits, labels[:1])
    with pytest.raises(TypeError, match="logits"):
        nn.accuracy(logits.tolist(), labels)


def test_unsigned_labels_are_range_checked_before_any_cast():
    logits = np.zeros((3, 2))
    y = np.array([0, 1, 1], np.uint64)
    assert nn.softmax_cross_entropy(logits, y)[0] == nn.softmax_cross_entropy(logits, y.astype(np.int64))[0]
    with pytest.raises(ValueError, match="labels must lie in \\[0, 2\\), got values from 0 to 18446744073709551615"):
        nn.softmax_cross_entropy(logits, np.array([0, 2**64 - 1, 1], np.uint64))
    with pytest.raises(TypeError, match="complex"):
        nn.softmax_cross_entropy(logits + 0j, y)
