"""Properties of the attention operator, on every CPU backend installed here.

Each test runs once per backend (the reference ``numpy`` and, when installed, the
fused ``numba`` kernels), selected through ``SPARSEGAT_BACKEND`` by a module-scoped
fixture, so the same properties hold for the oracle and for the fast backend.

Every score function is covered: softmax rows sum to 1, agreement with the
independent dense oracle (``dense_reference.py``), empty rows, invariance under
relabelling nodes and under per-row shifts of ``edge_bias``, the dropout rule,
determinism, large magnitudes, dtypes and index dtypes.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sparsegat as sg
from sparsegat import CSRGraph
from sparsegat.dropout import drop_threshold, keep_mask, mix_seed, splitmix64_int
from sparsegat.spec import COSINE_EPS, SCALAR_SCORES, SCORES, TAU_SCORES

from dense_reference import edge_list, reference_forward, reference_weights
from strategies import (SCORE_CONFIG_IDS, SCORE_CONFIGS, attention_problems,
                        csr_graphs, mixed_graphs, random_graph, tolerance)

BACKEND = None  # dispatch through SPARSEGAT_BACKEND, set by the fixture below


@pytest.fixture(scope="module", autouse=True,
                params=["numpy"] + [pytest.param("numba", marks=pytest.mark.skipif(
                    not sg.backends.is_available("numba"), reason="numba is not installed"))])
def cpu_backend(request):
    """Runs the module once per CPU backend (module scope: hypothesis allows it)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPARSEGAT_BACKEND", request.param)
        yield request.param
dtypes = st.sampled_from([np.float32, np.float64])
configs = pytest.mark.parametrize("config", SCORE_CONFIGS, ids=SCORE_CONFIG_IDS)
scores = pytest.mark.parametrize("score", SCORES)


def fwd(p, backend=BACKEND, **kw):
    i = p.inputs
    return sg.attention_forward(p.g, i.q, i.k, i.v, **p.kwargs(), **kw, backend=backend)


def wts(p, backend=BACKEND, **kw):
    i = p.inputs
    return sg.attention_weights(p.g, i.q, i.k, **p.kwargs(), **kw, backend=backend)


def dout_for(out, seed=0):
    return np.random.default_rng(seed).standard_normal(out.shape).astype(out.dtype)


def assert_grads_equal(ga, gb):
    assert [n for n, _ in ga.items()] == [n for n, _ in gb.items()]
    for (name, a), (_, b) in zip(ga.items(), gb.items()):
        assert a.dtype == b.dtype and np.array_equal(a, b), name


def assert_grads_close(p, ga, gb, rtol, atol):
    """Gradients equal up to rounding. For ``cosine`` the q/k gradient of a node row is
    amplified by ``1 / max(norm, eps)`` (up to 1e8 at the norm floor), so is its rounding."""
    assert [n for n, _ in ga.items()] == [n for n, _ in gb.items()]
    for (name, a), (_, b) in zip(ga.items(), gb.items()):
        tol = atol
        if p.score == "cosine" and name in ("q", "k"):
            x = getattr(p.inputs, name)
            norm = np.maximum(np.linalg.norm(x.astype(np.float64), axis=-1), COSINE_EPS)
            tol = atol * np.maximum(1.0, 1.0 / norm)[..., None]
        assert np.all(np.abs(b - a) <= tol + rtol * np.abs(a)), (name, np.max(np.abs(b - a)))


def row_sums(g, w):
    """Per-row sums of per-edge values (n_dst, H), in float64."""
    out = np.zeros((g.n_dst,) + w.shape[1:])
    np.add.at(out, edge_list(g)[0], w.astype(np.float64))
    return out


def problems(config, dtype=np.float64, **graph_kwargs):
    """Problems for one score configuration. Graphs have at least one edge here: graphs
    without edges are covered, for every score and shape, by test_graph_without_edges."""
    graph_kwargs.setdefault("min_edges", 1)
    graph_kwargs.setdefault("min_n", 1)
    return attention_problems(configs=[config], dtype=dtype, graphs=mixed_graphs(**graph_kwargs))


# ============================================================================ softmax rows
@configs
@given(data=st.data())
def test_weights_of_nonempty_rows_sum_to_one(config, data):
    dtype = data.draw(dtypes)
    p = data.draw(problems(config, dtype))
    w = wts(p)
    g = p.g
    assert w.shape == (g.nnz, p.inputs.q.shape[1]) and w.dtype == dtype
    assert np.all(w >= 0) and np.all(w <= 1 + 1e-6)
    sums = row_sums(g, w)
    nonempty = np.diff(np.asarray(g.indptr)) > 0
    np.testing.assert_allclose(sums[nonempty], 1.0, rtol=0, atol=1e-12 if dtype == np.float64 else 1e-5)
    assert np.all(sums[~nonempty] == 0)


# ============================================================================ dense oracle
@configs
@given(data=st.data())
def test_forward_and_weights_agree_with_dense_reference(config, data):
    dtype = data.draw(dtypes)
    p = data.draw(problems(config, dtype, multi_edges=False))  # the oracle has one cell per (i, j)
    dropout = data.draw(st.sampled_from([0.0, 0.0, 0.4]))
    seed = data.draw(st.integers(0, 2**64 - 1))
    out, ctx = fwd(p, dropout=dropout, seed=seed)
    w = wts(p, dropout=dropout, seed=seed)
    i = p.inputs
    kwargs = dict(p.kwargs(), dropout=dropout, seed=seed)
    ref_out = reference_forward(p.g, i.q, i.k, i.v, **kwargs)
    ref_w = reference_weights(p.g, i.q, i.k, **kwargs)
    rtol, atol = tolerance(dtype)
    assert out.dtype == dtype and out.shape == ref_out.shape
    np.testing.assert_allclose(w, ref_w, rtol=rtol, atol=atol)
    np.testing.assert_allclose(out, ref_out, rtol=rtol, atol=atol * 10)


@scores
@given(data=st.data())
def test_empty_rows_give_zero(score, data):
    """Insert an empty destination row: its output and q gradient are exactly 0 and
    nothing else changes (edge positions, hence the dropout mask, are the same)."""
    p = data.draw(problems({"score": score}, data.draw(dtypes)))
    g, i = p.g, p.inputs
    r = data.draw(st.integers(0, g.n_dst))
    indptr = np.insert(np.asarray(g.indptr), r, g.indptr[r])
    g2 = CSRGraph(indptr, np.asarray(g.indices), (g.n_dst + 1, g.n_src))
    q2 = np.insert(i.q, r, i.q[0] if g.n_dst else 1.0, axis=0)
    p2 = p._replace(g=g2, inputs=i._replace(q=q2))
    out, ctx = fwd(p, dropout=0.3, seed=1)
    out2, ctx2 = fwd(p2, dropout=0.3, seed=1)
    assert np.all(out2[r] == 0)
    rtol, atol = tolerance(p.inputs.q.dtype)
    np.testing.assert_allclose(np.delete(out2, r, axis=0), out, rtol=rtol, atol=atol)
    dout = dout_for(out)
    dout2 = np.insert(dout, r, 1.0, axis=0)
    g1, g2_ = sg.attention_backward(ctx, dout), sg.attention_backward(ctx2, dout2)
    assert np.all(g2_.q[r] == 0)
    for (name, a), (_, b) in zip(g1.items(), g2_.items()):
        if name == "q":
            b = np.delete(b, r, axis=0)
        assert np.all(np.isfinite(b)), name
        np.testing.assert_allclose(b, a, rtol=10 * rtol, atol=10 * atol, err_msg=name)


@pytest.mark.parametrize("score", SCORES)
@pytest.mark.parametrize("shape", [(3, 4), (3, 0), (0, 2), (0, 0)])
def test_graph_without_edges(score, shape):
    n_dst, n_src = shape
    g = CSRGraph(np.zeros(n_dst + 1, dtype=np.int64), np.zeros(0, dtype=np.int64), (n_dst, n_src))
    rng = np.random.default_rng(0)
    tail = (2,) if score in SCALAR_SCORES else (2, 3)
    q, k, v = rng.random((n_dst,) + tail), rng.random((n_src,) + tail), rng.random((n_src, 2, 4))
    att = rng.random((2, 3)) if score == "gatv2" else None
    tau = 2.0 if score in TAU_SCORES else 1.0
    bias = np.zeros((0, 2))
    out, ctx = sg.attention_forward(g, q, k, v, score=score, att=att, tau=tau, edge_bias=bias,
                                    dropout=0.5, seed=0, backend=BACKEND)
    assert out.shape == (n_dst, 2, 4) and np.all(out == 0)
    grads = sg.attention_backward(ctx, np.ones_like(out))
    for name, x in (("q", q), ("k", k), ("v", v), ("att", att), ("edge_bias", bias)):
        gr = getattr(grads, name)
        assert (gr is None) == (x is None), name
        if x is not None:
            assert gr.shape == x.shape and np.all(gr == 0), name
    assert (grads.tau is None) == (score not in TAU_SCORES)
    if grads.tau is not None:
        assert grads.tau == 0
    w = sg.attention_weights(g, q, k, score=score, att=att, tau=tau, backend=BACKEND)
    assert w.shape == (0, 2)


# ============================================================================ invariances
def relabel(p, sigma, pi):
    """The same problem with destination i renamed sigma[i] and source j renamed pi[j].

    Returns the new problem and the new CSR position of each old edge.
    """
    g, i = p.g, p.inputs
    n_dst, n_src = g.shape
    rows, cols = edge_list(g)
    new_rows, new_cols = sigma[rows], pi[cols]
    g2, order = CSRGraph.from_edge_index(new_cols, new_rows, num_src=n_src, num_dst=n_dst,
                                         index_dtype=g.index_dtype, return_perm=True)
    pos = np.argsort(order)  # copies of a multi-edge keep their order, so this is well defined
    r2, c2 = edge_list(g2)
    assert np.array_equal(r2[pos], new_rows) and np.array_equal(c2[pos], new_cols)

    def perm(x, s):
        y = np.empty_like(x)
        y[s] = x
        return y

    bias = None
    if i.edge_bias is not None:
        bias = np.empty_like(i.edge_bias)
        bias[pos] = i.edge_bias
    inputs = i._replace(q=perm(i.q, sigma), k=perm(i.k, pi), v=perm(i.v, pi), edge_bias=bias)
    return p._replace(g=g2, inputs=inputs), pos


@configs
@given(data=st.data())
def test_invariant_under_relabelling_nodes(config, data):
    p = data.draw(problems(config))
    n_dst, n_src = p.g.shape
    sigma = np.asarray(data.draw(st.permutations(range(n_dst))), dtype=np.int64)
    pi = np.asarray(data.draw(st.permutations(range(n_src))), dtype=np.int64)
    p2, pos = relabel(p, sigma, pi)
    out, ctx = fwd(p)
    out2, ctx2 = fwd(p2)
    np.testing.assert_allclose(out2[sigma], out, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(wts(p2)[pos], wts(p), rtol=1e-10, atol=1e-12)
    dout = dout_for(out)
    dout2 = np.empty_like(dout)
    dout2[sigma] = dout
    g1, g2 = sg.attention_backward(ctx, dout), sg.attention_backward(ctx2, dout2)
    back = g2.__class__(q=g2.q[sigma], k=g2.k[pi], v=g2.v[pi], att=g2.att, tau=g2.tau,
                        edge_bias=None if g2.edge_bias is None else g2.edge_bias[pos])
    assert_grads_close(p, g1, back, rtol=1e-9, atol=1e-11)


@configs
@given(data=st.data())
def test_invariant_under_per_row_shift_of_edge_bias(config, data):
    p = data.draw(problems(config, min_n=1))
    g, i = p.g, p.inputs
    heads = i.q.shape[1]
    c = data.draw(st.sampled_from([1.0, 50.0, -30.0])) * np.random.default_rng(
        data.draw(st.integers(0, 2**32 - 1))).uniform(-1, 1, size=(g.n_dst, heads))
    base = i.edge_bias if i.edge_bias is not None else np.zeros((g.nnz, heads))
    p0 = p._replace(inputs=i._replace(edge_bias=base))
    p1 = p._replace(inputs=i._replace(edge_bias=base + c[np.asarray(g.row_ids())]))
    out0, ctx0 = fwd(p0)
    out1, ctx1 = fwd(p1)
    np.testing.assert_allclose(out1, out0, rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(wts(p1), wts(p0), rtol=1e-9, atol=1e-11)
    dout = dout_for(out0)
    g0, g1 = sg.attention_backward(ctx0, dout), sg.attention_backward(ctx1, dout)
    assert_grads_close(p, g0, g1, rtol=1e-8, atol=1e-10)


# ============================================================================ dropout
@scores
@given(data=st.data())
def test_dropout_zero_equals_no_dropout(score, data):
    p = data.draw(problems({"score": score}, data.draw(dtypes)))
    out, ctx = fwd(p)
    seed = data.draw(st.one_of(st.none(), st.integers(0, 2**64 - 1)))
    out0, ctx0 = fwd(p, dropout=0.0, seed=seed)
    assert np.array_equal(out, out0)
    assert np.array_equal(wts(p), wts(p, dropout=0.0, seed=seed))
    dout = dout_for(out)
    assert_grads_equal(sg.attention_backward(ctx, dout), sg.attention_backward(ctx0, dout))


@scores
@given(data=st.data())
def test_dropout_is_repeatable_and_matches_the_hash(score, data):
    dtype = data.draw(dtypes)
    p = data.draw(problems({"score": score}, dtype))
    rate = data.draw(st.sampled_from([0.1, 0.5, 0.9]))
    seed = data.draw(st.integers(0, 2**64 - 1))
    out_a, ctx_a = fwd(p, dropout=rate, seed=seed)
    out_b, ctx_b = fwd(p, dropout=rate, seed=seed)
    assert np.array_equal(out_a, out_b)
    w = wts(p, dropout=rate, seed=seed)
    assert np.array_equal(w, wts(p, dropout=rate, seed=seed))
    w0 = wts(p)
    heads = w0.shape[1]
    keep = keep_mask(mix_seed(seed), 0, p.g.nnz, heads, drop_threshold(rate))
    expected = np.where(keep, w0 * dtype(1.0 / (1.0 - rate)), 0)
    assert w.dtype == dtype
    assert np.array_equal(w != 0, keep & (w0 != 0))
    np.testing.assert_allclose(w, expected, rtol=1e-6 if dtype == np.float32 else 1e-14, atol=0)
    dout = dout_for(out_a)
    assert_grads_equal(sg.attention_backward(ctx_a, dout), sg.attention_backward(ctx_b, dout))


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.85])
def test_kept_fraction_close_to_one_minus_p(rate):
    rng = np.random.default_rng(5)
    g = random_graph(rng, 300, 250, density=0.1)
    heads = 3
    q, k = rng.standard_normal((300, heads, 4)), rng.standard_normal((250, heads, 4))
    n = g.nnz * heads
    sigma = np.sqrt(rate * (1 - rate) / n)
    masks = []
    for seed in (0, 1, 2**63 + 12345):
        w = sg.attention_weights(g, q, k, score="dot", dropout=rate, seed=seed, backend=BACKEND)
        kept = w != 0
        assert abs(kept.mean() - (1 - rate)) < 5 * sigma, (seed, kept.mean())
        # no head or edge region is systematically dropped
        for h in range(heads):
            assert abs(kept[:, h].mean() - (1 - rate)) < 5 * np.sqrt(rate * (1 - rate) / g.nnz)
        masks.append(kept)
    # different seeds drop different edges
    assert not np.array_equal(masks[0], masks[1]) and not np.array_equal(masks[1], masks[2])


def test_dropout_without_seed_draws_one_and_keeps_it():
    rng = np.random.default_rng(0)
    g = random_graph(rng, 30, 30, density=0.3)
    q, k, v = rng.standard_normal((30, 2, 3)), rng.standard_normal((30, 2, 3)), rng.standard_normal((30, 2, 2))
    out, ctx = sg.attention_forward(g, q, k, v, score="dot", dropout=0.5, backend=BACKEND)
    seed = ctx.spec.seed
    assert isinstance(seed, int)
    again, ctx2 = sg.attention_forward(g, q, k, v, score="dot", dropout=0.5, seed=seed, backend=BACKEND)
    assert np.array_equal(out, again)
    dout = dout_for(out)
    assert_grads_equal(sg.attention_backward(ctx, dout), sg.attention_backward(ctx2, dout))
    other, _ = sg.attention_forward(g, q, k, v, score="dot", dropout=0.5, backend=BACKEND)
    assert not np.array_equal(out, other)  # two unseeded calls draw different seeds


@given(seed=st.integers(0, 2**64 - 1), start=st.integers(0, 2**40), heads=st.integers(1, 5),
       rate=st.floats(0.0, 0.99))
@settings(max_examples=50)
def test_keep_mask_matches_documented_hash(seed, start, heads, rate):
    """keep_mask (used by the dense oracle) is the rule written in sparsegat.dropout."""
    mask = keep_mask(mix_seed(seed), start, start + 4, heads, drop_threshold(rate))
    key = splitmix64_int((seed + 0) & (2**64 - 1))
    assert mix_seed(seed) == key
    thr = round(rate * 2**53)
    for e in range(4):
        for h in range(heads):
            counter = ((start + e) * heads + h) & (2**64 - 1)
            z = splitmix64_int(key ^ counter)
            assert mask[e, h] == ((z >> 11) >= thr)


def test_splitmix64_known_values():
    # Reference values of splitmix64 with state 0 (the sequence of Vigna's splitmix64.c).
    assert splitmix64_int(0) == 0xE220A8397B1DCDAF
    assert splitmix64_int(0x9E3779B97F4A7C15) == 0x6E789E6AA1B965F4


# ============================================================================ determinism
@configs
@given(data=st.data())
def test_repeated_calls_bitwise_identical(config, data):
    p = data.draw(problems(config, data.draw(dtypes)))
    rate = data.draw(st.sampled_from([0.0, 0.3]))
    out_a, ctx_a = fwd(p, dropout=rate, seed=42)
    out_b, ctx_b = fwd(p, dropout=rate, seed=42)
    assert np.array_equal(out_a, out_b)
    assert np.array_equal(wts(p, dropout=rate, seed=42), wts(p, dropout=rate, seed=42))
    dout = dout_for(out_a)
    first = sg.attention_backward(ctx_a, dout)
    assert_grads_equal(first, sg.attention_backward(ctx_a, dout))
    assert_grads_equal(first, sg.attention_backward(ctx_b, dout))


# ============================================================================ magnitudes
def _big_problem(score, dtype, scale, bias_scale=None, seed=0):
    rng = np.random.default_rng(seed)
    g = random_graph(rng, 25, 20, density=0.3, empty_rows=2)
    heads, dim = 2, 4
    tail = (heads,) if score in SCALAR_SCORES else (heads, dim)
    q = (rng.uniform(-1, 1, (25,) + tail) * scale).astype(dtype)
    k = (rng.uniform(-1, 1, (20,) + tail) * scale).astype(dtype)
    v = rng.uniform(-1, 1, (20, heads, 3)).astype(dtype)
    att = rng.uniform(-1, 1, (heads, dim)).astype(dtype) if score == "gatv2" else None
    bias = None
    if bias_scale is not None:
        rows = np.asarray(g.row_ids())
        offset = rng.choice([-1.0, 1.0], size=(g.n_dst, heads)) * bias_scale
        bias = (offset[rows] + rng.uniform(-1, 1, (g.nnz, heads)) * bias_scale).astype(dtype)
    tau = 3.0 if score in TAU_SCORES else 1.0
    return g, q, k, v, att, bias, tau


def _check_finite_everything(g, q, k, v, att, bias, tau, score):
    out, ctx = sg.attention_forward(g, q, k, v, score=score, att=att, tau=tau, edge_bias=bias, backend=BACKEND)
    assert np.all(np.isfinite(out)), "out"
    w = sg.attention_weights(g, q, k, score=score, att=att, tau=tau, edge_bias=bias, backend=BACKEND)
    assert np.all(np.isfinite(w)), "weights"
    nonempty = np.diff(np.asarray(g.indptr)) > 0
    np.testing.assert_allclose(row_sums(g, w)[nonempty], 1.0, atol=1e-5)
    grads = sg.attention_backward(ctx, np.ones_like(out))
    for name, gr in grads.items():
        assert np.all(np.isfinite(gr)), name
    return out, w


@scores
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("scale,bias_scale", [(1e3, None), (1.0, 1e30), (1e3, 1e30), (1e-30, None)])
def test_large_magnitudes_stay_finite(score, dtype, scale, bias_scale, request):
    g, q, k, v, att, bias, tau = _big_problem(score, dtype, scale, bias_scale)
    out, w = _check_finite_everything(g, q, k, v, att, bias, tau, score)
    if dtype == np.float64 and bias_scale is None:
        # still the right answer, not just a finite one
        kw = dict(score=score, att=att, tau=tau)
        np.testing.assert_allclose(w, reference_weights(g, q, k, **kw), rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(out, reference_forward(g, q, k, v, **kw), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("dtype,offset", [(np.float64, 1e17), (np.float64, -1e300), (np.float64, 1e300),
                                          (np.float32, 1e8), (np.float32, -1e30)])
def test_huge_per_row_bias_keeps_rows_normalised(dtype, offset):
    """A per-row constant so large that the scores round to it: every edge of a row ties,
    so the weights are uniform and still sum to 1."""
    g = CSRGraph.from_edge_index([0, 1, 2, 0, 1, 2], [0, 0, 0, 1, 1, 2])
    rng = np.random.default_rng(0)
    q, k, v = (rng.uniform(-1, 1, s).astype(dtype) for s in ((3, 1, 2), (3, 1, 2), (3, 1, 1)))
    bias = np.full((g.nnz, 1), offset, dtype=dtype)
    w = sg.attention_weights(g, q, k, edge_bias=bias, backend=BACKEND)
    np.testing.assert_allclose(w.ravel(), [1 / 3, 1 / 3, 1 / 3, 1 / 2, 1 / 2, 1], rtol=1e-6)
    out, ctx = sg.attention_forward(g, q, k, v, edge_bias=bias, backend=BACKEND)
    np.testing.assert_allclose(out[:, 0, 0], [v[:, 0, 0].mean(), v[:2, 0, 0].mean(), v[2, 0, 0]], rtol=1e-5)
    grads = sg.attention_backward(ctx, np.ones_like(out))
    for name, gr in grads.items():
        assert np.all(np.isfinite(gr)), name


@pytest.mark.parametrize("scale", [1e150, 1e200, 1e-200])
def test_cosine_extreme_norms_stay_finite(scale):
    for dtype in (np.float64,):
        g, q, k, v, att, bias, tau = _big_problem("cosine", dtype, scale)
        _check_finite_everything(g, q, k, v, att, bias, tau, "cosine")


def test_float32_cosine_large_norms_stay_finite():
    g, q, k, v, att, bias, tau = _big_problem("cosine", np.float32, 1e25)
    _check_finite_everything(g, q, k, v, att, bias, tau, "cosine")


# ============================================================================ dtypes
@configs
@given(data=st.data())
def test_dtype_kept_and_float32_close_to_float64(config, data):
    p64 = data.draw(problems(config, np.float64, multi_edges=False))  # compared with the dense oracle
    p32 = p64._replace(inputs=p64.inputs.astype(np.float32))
    out64, ctx64 = fwd(p64)
    out32, ctx32 = fwd(p32)
    assert out64.dtype == np.float64 and out32.dtype == np.float32
    w32 = wts(p32)
    assert w32.dtype == np.float32
    # compare both with the float64 answer on the float32-rounded inputs
    i = p32.inputs
    ref = reference_forward(p32.g, i.q, i.k, i.v, **p32.kwargs())
    rtol, atol = tolerance(np.float32)
    np.testing.assert_allclose(out32, ref, rtol=rtol, atol=10 * atol)
    dout = dout_for(out64)
    g64 = sg.attention_backward(ctx64, dout)
    g32 = sg.attention_backward(ctx32, dout.astype(np.float32))
    for (name, a), (_, b) in zip(g64.items(), g32.items()):
        assert a.dtype == np.float64 and b.dtype == np.float32, name
        assert a.shape == b.shape, name


@configs
@given(data=st.data())
def test_int32_and_int64_graphs_identical(config, data):
    dtype = data.draw(dtypes)
    p = data.draw(problems(config, dtype))
    rate = data.draw(st.sampled_from([0.0, 0.3]))
    p32 = p._replace(g=p.g.with_index_dtype(np.int32))
    p64 = p._replace(g=p.g.with_index_dtype(np.int64))
    assert p32.g.index_dtype == np.int32 and p64.g.index_dtype == np.int64
    out_a, ctx_a = fwd(p32, dropout=rate, seed=9)
    out_b, ctx_b = fwd(p64, dropout=rate, seed=9)
    assert np.array_equal(out_a, out_b)
    assert np.array_equal(wts(p32, dropout=rate, seed=9), wts(p64, dropout=rate, seed=9))
    dout = dout_for(out_a)
    assert_grads_equal(sg.attention_backward(ctx_a, dout), sg.attention_backward(ctx_b, dout))


def test_the_module_runs_on_the_backend_it_names(cpu_backend):
    """Guards the fixture: the dispatch really picks the backend of this run of the module."""
    g = random_graph(np.random.default_rng(0), 6, density=0.5)
    x = np.ones((6, 2, 3))
    _, ctx = sg.attention_forward(g, x, x, x, score="dot", backend=BACKEND)
    assert ctx.backend == cpu_backend
