"""The ``numba`` backend against the reference (``numpy``) backend.

Every test calls the public API with ``backend="numba"`` and compares with
``backend="numpy"`` (or with finite differences, or with itself for determinism):

- parity of forward, weights and every gradient, for every score configuration,
  with and without ``edge_bias``, dropout and ``tau``, on hypothesis graphs with
  empty rows, hub rows, bipartite shapes, int32/int64 indices, float32/float64;
- graphs with hub rows and hub columns of thousands of neighbours;
- finite-difference gradients in float64 through the numba backend;
- bitwise-deterministic backward (run twice, and with 1 thread vs the default);
- dropout keep/drop decisions identical to :mod:`sparsegat.dropout`;
- empty graphs, extreme cosine norms, the int64 kernels, lazy import, default dispatch
  (large magnitudes for every score: tests/test_attention_properties.py, which runs
  on this backend too).

float32 results are compared with the float64 reference on the same (float32-rounded)
inputs, with :func:`strategies.tolerance`. The first run compiles the kernels
(about 2-4 s per kernel on the 2-core dev machine, see ``docs/numba.md``); later
runs load them from Numba's on-disk cache.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

numba = pytest.importorskip("numba")

import sparsegat as sg  # noqa: E402
from sparsegat import CSRGraph  # noqa: E402
from sparsegat.backends import get_backend, select_backend  # noqa: E402
from sparsegat.dropout import drop_threshold, keep_mask, mix_seed  # noqa: E402
from sparsegat.spec import SCALAR_SCORES, SCORES, TAU_SCORES  # noqa: E402

from strategies import (SCORE_CONFIG_IDS, SCORE_CONFIGS, AttentionInputs,  # noqa: E402
                        attention_problems, csr_graphs, mixed_graphs, random_graph, tolerance)

dtypes = st.sampled_from([np.float32, np.float64])
configs = pytest.mark.parametrize("config", SCORE_CONFIGS, ids=SCORE_CONFIG_IDS)
scores = pytest.mark.parametrize("score", SCORES)
rates = st.sampled_from([0.0, 0.0, 0.3, 0.75])


# ---------------------------------------------------------------------------- helpers
def run(g, inputs, kwargs, backend, dout_seed=0, dtype=None, **extra):
    """(out, weights, grads dict) of one backend; inputs converted to ``dtype`` first."""
    if dtype is not None:
        inputs = inputs.astype(dtype)
        kwargs = {**kwargs, **inputs.options()}
    out, ctx = sg.attention_forward(g, inputs.q, inputs.k, inputs.v, **kwargs, **extra, backend=backend)
    w = sg.attention_weights(g, inputs.q, inputs.k, **kwargs, **extra, backend=backend)
    dout = np.random.default_rng(dout_seed).standard_normal(out.shape).astype(out.dtype)
    grads = dict(sg.attention_backward(ctx, dout).items())
    return out, w, grads, ctx


def assert_close(name, got, ref, dtype):
    rtol, atol = tolerance(dtype)
    ref = np.asarray(ref, dtype=np.float64)
    scale = max(1.0, float(np.max(np.abs(ref)))) if ref.size else 1.0
    np.testing.assert_allclose(np.asarray(got, dtype=np.float64), ref, rtol=rtol, atol=atol * scale,
                               err_msg=name)


def assert_matches_reference(g, inputs, kwargs, dtype, **extra):
    """numba in ``dtype`` against numpy in float64 on the same (``dtype``-rounded) inputs."""
    rounded = inputs.astype(dtype)
    out, w, grads, ctx = run(g, rounded, {**kwargs, **rounded.options()}, "numba", **extra)
    assert ctx.backend == "numba"
    ref64 = rounded.astype(np.float64)
    r_out, r_w, r_grads, _ = run(g, ref64, {**kwargs, **ref64.options()}, "numpy", **extra)
    assert out.dtype == dtype and w.dtype == dtype
    assert out.shape == r_out.shape and w.shape == r_w.shape
    assert_close("out", out, r_out, dtype)
    assert_close("weights", w, r_w, dtype)
    assert sorted(grads) == sorted(r_grads)
    for name, ref in r_grads.items():
        got = grads[name]
        assert got.dtype == dtype and got.shape == ref.shape, name
        assert np.all(np.isfinite(got)), name
        if kwargs["score"] == "cosine" and name in ("q", "k"):
            # Below the norm floor the cosine gradient is tau / eps (1e8) times the score
            # gradient, which for single-edge rows or exact ties is a rounding residue of
            # (dout . v_j - dout . out_i): ill-conditioned, compared only where the norm
            # is above the floor.
            x = ref64.q if name == "q" else ref64.k
            ok = np.sqrt(np.sum(x * x, axis=-1)) > 1e-6
            got, ref = got[ok], ref[ok]
        assert_close(f"grad {name}", got, ref, dtype)
    if kwargs["score"] in TAU_SCORES:
        assert grads["tau"].shape == ()


def grads_bytes(grads):
    return {name: (a.dtype, a.shape, a.tobytes()) for name, a in grads.items()}


def problems(config, dtype=np.float64, graphs=None, **input_kwargs):
    return attention_problems(configs=[config], dtype=dtype,
                              graphs=graphs if graphs is not None else mixed_graphs(), **input_kwargs)


# ---------------------------------------------------------------------------- parity
@configs
@given(data=st.data())
def test_matches_reference(config, data):
    """Forward, weights and every gradient agree with the reference, all options drawn."""
    dtype = data.draw(dtypes)
    p = data.draw(problems(config))
    rate = data.draw(rates)
    seed = data.draw(st.integers(0, 2**64 - 1))
    assert_matches_reference(p.g, p.inputs, p.config, dtype, dropout=rate, seed=seed)


FORWARD_FORMS = {"one_pass": dict(TWO_PASS_MIN_HEADS=10**9),
                 "two_pass": dict(TWO_PASS_MIN_HEADS=1, TWO_PASS_MAX_BYTES=2**62)}


@configs
@pytest.mark.parametrize("form", sorted(FORWARD_FORMS))
@given(data=st.data())
def test_each_forward_form_matches_reference(config, form, data):
    """Both forms of the forward kernel (online softmax, two passes) agree with the reference.

    The backend picks one by heads and array size; here each is forced on every
    drawn problem, and backward runs on the row statistics it saved.
    """
    from sparsegat.backends.numba import backend as nb

    dtype = data.draw(dtypes)
    p = data.draw(problems(config))
    rate = data.draw(rates)
    seed = data.draw(st.integers(0, 2**64 - 1))
    with pytest.MonkeyPatch.context() as mp:
        for name, value in FORWARD_FORMS[form].items():
            mp.setattr(nb, name, value)
        assert_matches_reference(p.g, p.inputs, p.config, dtype, dropout=rate, seed=seed)


@st.composite
def hub_graphs(draw):
    """Graphs with rows of thousands of edges (destination hubs) or columns of thousands
    of edges (source hubs), plus empty and sparse rows; int32 or int64 indices."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    index_dtype = draw(st.sampled_from([np.int32, np.int64]))
    many = draw(st.integers(1500, 3000))
    few = draw(st.integers(2, 6))
    if draw(st.booleans()):  # destination hubs: few rows attending to (nearly) all of many sources
        n_dst, n_src = few, many
        src, dst = [], []
        for i in range(n_dst):
            kind = 0 if i == 0 else rng.integers(0, 3)  # row 0 always a hub
            cols = (np.flatnonzero(rng.random(n_src) < 0.97) if kind == 0 else
                    rng.choice(n_src, size=3, replace=False) if kind == 1 else np.array([], dtype=np.int64))
            src.append(cols)
            dst.append(np.full(cols.shape[0], i))
        src, dst = np.concatenate(src), np.concatenate(dst)
    else:  # source hubs: many rows, each with 0-3 random sources and the few hub sources
        n_dst, n_src = many, few + 20
        deg = rng.integers(0, 4, size=n_dst)
        dst = np.repeat(np.arange(n_dst), deg)
        src = rng.integers(0, n_src, size=dst.shape[0])
        hub_rows = np.flatnonzero(rng.random(n_dst) < 0.9)
        dst = np.concatenate([dst, np.repeat(hub_rows, few)])
        src = np.concatenate([src, np.tile(np.arange(few), hub_rows.shape[0])])
    return CSRGraph.from_edge_index(src, dst, num_src=n_src, num_dst=n_dst, index_dtype=index_dtype)


@configs
@settings(max_examples=4)
@given(data=st.data())
def test_hub_rows_and_columns_with_thousands_of_neighbours(config, data):
    dtype = data.draw(dtypes)
    p = data.draw(problems(config, graphs=hub_graphs(), heads=2, dim=3, dim_v=2))
    degrees = np.diff(np.asarray(p.g.indptr))
    in_degrees = np.bincount(np.asarray(p.g.indices), minlength=p.g.n_src)
    assert max(degrees.max(), in_degrees.max()) >= 1000
    rate = data.draw(rates)
    assert_matches_reference(p.g, p.inputs, p.config, dtype, dropout=rate, seed=data.draw(st.integers(0, 99)))


@scores
def test_power_law_graph_float32(score):
    """A larger power-law graph (hubs, empty rows) in float32, bias and dropout on."""
    rng = np.random.default_rng(11)
    n, m = 3000, 30000
    w = np.arange(1, n + 1) ** -0.7
    w /= w.sum()
    src, dst = rng.choice(n, size=m, p=w), rng.choice(n, size=m, p=w)
    g = CSRGraph.from_edge_index(src, dst, num_src=n, num_dst=n)
    assert np.any(np.diff(np.asarray(g.indptr)) == 0) and np.diff(np.asarray(g.indptr)).max() > 500
    heads, dim, dim_v = 4, 8, 16
    tail = (heads,) if score in SCALAR_SCORES else (heads, dim)
    q = rng.uniform(-1, 1, (n,) + tail)
    k = rng.uniform(-1, 1, (n,) + tail)
    v = rng.uniform(-1, 1, (n, heads, dim_v))
    att = rng.uniform(-1, 1, (heads, dim)) if score == "gatv2" else None
    bias = rng.uniform(-1, 1, (g.nnz, heads))
    tau = 1.3 if score in TAU_SCORES else 1.0
    assert_matches_reference(g, AttentionInputs(q, k, v, att, bias, tau), {"score": score}, np.float32,
                             dropout=0.2, seed=7)


# ---------------------------------------------------------------------------- finite differences
def _fd_problem(score, seed, bias):
    rng = np.random.default_rng(seed)
    g = random_graph(rng, 7, 6, density=0.5, empty_rows=1, index_dtype=np.int64)
    heads, dim, dim_v = 2, 3, 2
    tail = (heads,) if score in SCALAR_SCORES else (heads, dim)
    arrays = {"q": rng.uniform(-1, 1, (7,) + tail), "k": rng.uniform(-1, 1, (6,) + tail),
              "v": rng.uniform(-1, 1, (6, heads, dim_v))}
    if score == "gatv2":
        arrays["att"] = rng.uniform(-1, 1, (heads, dim))
    if bias:
        arrays["edge_bias"] = rng.uniform(-1, 1, (g.nnz, heads))
    if score in TAU_SCORES:
        arrays["tau"] = np.array(1.7)
    return g, arrays, rng


def _loss(g, arrays, score, R, **kw):
    a = dict(arrays)
    tau = float(a.pop("tau", 1.0))
    q, k, v = a.pop("q"), a.pop("k"), a.pop("v")
    out, ctx = sg.attention_forward(g, q, k, v, score=score, tau=tau, backend="numba", **a, **kw)
    return float(np.sum(out * R)), out, ctx


@scores
@pytest.mark.parametrize("variant", ["plain", "bias+dropout"])
@pytest.mark.parametrize("seed", [0, 1])
def test_gradients_match_finite_differences(score, variant, seed):
    """Central differences of ``sum(out * R)`` (float64) along random directions and
    at single coordinates, against the numba backward."""
    bias = variant != "plain"
    kw = {"dropout": 0.4, "seed": 3} if bias else {}
    g, arrays, rng = _fd_problem(score, seed, bias)
    _, out, ctx = _loss(g, arrays, score, 0.0, **kw)
    R = rng.standard_normal(out.shape)
    grads = sg.attention_backward(ctx, R)
    h = 1e-6
    for name, x in arrays.items():
        grad = getattr(grads, name)
        assert grad is not None and grad.shape == x.shape, name
        directions = [rng.standard_normal(x.shape)]
        for flat in rng.choice(max(x.size, 1), size=min(3, x.size), replace=False):
            e = np.zeros(x.size)
            e[flat] = 1.0
            directions.append(e.reshape(x.shape))
        for d in directions:
            plus = dict(arrays, **{name: x + h * d})
            minus = dict(arrays, **{name: x - h * d})
            fd = (_loss(g, plus, score, R, **kw)[0] - _loss(g, minus, score, R, **kw)[0]) / (2 * h)
            an = float(np.sum(grad * d))
            assert abs(fd - an) <= 1e-6 * max(1.0, abs(fd)), (name, fd, an)


# ---------------------------------------------------------------------------- determinism
@configs
@settings(max_examples=10)
@given(data=st.data())
def test_backward_is_bitwise_deterministic(config, data):
    """Same inputs, same bits: twice in a row, and with 1 thread vs the default."""
    dtype = data.draw(dtypes)
    p = data.draw(problems(config, dtype, graphs=st.one_of(csr_graphs(), hub_graphs())))
    rate = data.draw(rates)
    kwargs = dict(p.kwargs(), dropout=rate, seed=5)
    i = p.inputs
    out, ctx = sg.attention_forward(p.g, i.q, i.k, i.v, **kwargs, backend="numba")
    dout = np.random.default_rng(1).standard_normal(out.shape).astype(dtype)
    first = grads_bytes(sg.attention_backward(ctx, dout))
    assert grads_bytes(sg.attention_backward(ctx, dout)) == first
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        out1, ctx1 = sg.attention_forward(p.g, i.q, i.k, i.v, **kwargs, backend="numba")
        assert out1.tobytes() == out.tobytes()
        assert grads_bytes(sg.attention_backward(ctx1, dout)) == first
    finally:
        numba.set_num_threads(threads)


# ---------------------------------------------------------------------------- dropout
@scores
@settings(max_examples=10)
@given(data=st.data())
def test_dropout_keeps_exactly_the_reference_edges(score, data):
    dtype = data.draw(dtypes)
    p = data.draw(problems({"score": score}, dtype))
    rate = data.draw(st.sampled_from([0.1, 0.5, 0.9]))
    seed = data.draw(st.integers(0, 2**64 - 1))
    w = sg.attention_weights(p.g, p.inputs.q, p.inputs.k, **p.kwargs(), dropout=rate, seed=seed,
                             backend="numba")
    w0 = sg.attention_weights(p.g, p.inputs.q, p.inputs.k, **p.kwargs(), backend="numba")
    ref = sg.attention_weights(p.g, p.inputs.q, p.inputs.k, **p.kwargs(), dropout=rate, seed=seed,
                               backend="numpy")
    keep = keep_mask(mix_seed(seed), 0, p.g.nnz, w.shape[1], drop_threshold(rate))
    assert np.array_equal(w != 0, keep & (w0 != 0))
    assert np.array_equal(w != 0, ref != 0)


@given(seed=st.integers(0, 2**64 - 1), start=st.integers(0, 2**62), heads=st.integers(1, 7),
       rate=st.floats(0.0, 0.999))
@settings(max_examples=50)
def test_compiled_keep_rule_is_the_reference_hash(seed, start, heads, rate):
    """The compiled hash, also where ``e * H + h`` wraps around 2**64."""
    from sparsegat.backends.numba.dropout import keep_mask as compiled_keep_mask

    key, thr = mix_seed(seed), drop_threshold(rate)
    expected = keep_mask(key, start, start + 6, heads, thr)
    got = compiled_keep_mask(np.uint64(key), start, start + 6, heads, np.uint64(thr))
    assert np.array_equal(got, expected)


# ---------------------------------------------------------------------------- edge cases
@pytest.mark.parametrize("shape", [(3, 4), (0, 4), (3, 0), (0, 0)])
@scores
def test_graphs_without_edges(shape, score):
    g = CSRGraph(np.zeros(shape[0] + 1, dtype=np.int32), np.zeros(0, dtype=np.int32), shape)
    heads, dim, dv = 2, 3, 2
    tail = (heads,) if score in SCALAR_SCORES else (heads, dim)
    rng = np.random.default_rng(0)
    q, k = rng.standard_normal((shape[0],) + tail), rng.standard_normal((shape[1],) + tail)
    v = rng.standard_normal((shape[1], heads, dv))
    att = rng.standard_normal((heads, dim)) if score == "gatv2" else None
    out, ctx = sg.attention_forward(g, q, k, v, score=score, att=att, backend="numba")
    assert out.shape == (shape[0], heads, dv) and np.all(out == 0)
    grads = sg.attention_backward(ctx, np.ones_like(out))
    for name, a in grads.items():
        assert np.all(a == 0), name
    assert sg.attention_weights(g, q, k, score=score, att=att, backend="numba").shape == (0, heads)


@pytest.mark.parametrize("dtype,scale", [(np.float64, 1e200), (np.float64, 1e-200), (np.float32, 1e25)])
def test_cosine_extreme_norms_stay_finite(dtype, scale):
    rng = np.random.default_rng(1)
    g = random_graph(rng, 12, 10, density=0.4, empty_rows=1)
    q = (rng.uniform(-1, 1, (12, 2, 4)) * scale).astype(dtype)
    k = (rng.uniform(-1, 1, (10, 2, 4)) * scale).astype(dtype)
    v = rng.uniform(-1, 1, (10, 2, 3)).astype(dtype)
    out, ctx = sg.attention_forward(g, q, k, v, score="cosine", tau=2.0, backend="numba")
    ref, rctx = sg.attention_forward(g, q, k, v, score="cosine", tau=2.0, backend="numpy")
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-6)
    for name, a in sg.attention_backward(ctx, np.ones_like(out)).items():
        assert np.all(np.isfinite(a)), name


@configs
@settings(max_examples=10)
@given(data=st.data())
def test_int32_and_int64_graphs_identical(config, data):
    dtype = data.draw(dtypes)
    p = data.draw(problems(config, dtype))
    results = []
    for index_dtype in (np.int32, np.int64):
        g = p.g.with_index_dtype(index_dtype)
        out, w, grads, _ = run(g, p.inputs, p.kwargs(), "numba", dropout=0.3, seed=2)
        results.append((out.tobytes(), w.tobytes(), grads_bytes(grads)))
    assert results[0] == results[1]


def test_int64_kernels(monkeypatch):
    """The kernels compiled for int64 indices (used for graphs beyond int32) agree too."""
    nb = get_backend("numba")
    monkeypatch.setattr(nb, "NATIVE_INDEX_DTYPE", True)
    rng = np.random.default_rng(4)
    g = random_graph(rng, 30, 25, density=0.3, empty_rows=2, index_dtype=np.int64)
    inputs = AttentionInputs(rng.uniform(-1, 1, (30, 2, 3)), rng.uniform(-1, 1, (25, 2, 3)),
                             rng.uniform(-1, 1, (25, 2, 4)), rng.uniform(-1, 1, (2, 3)),
                             rng.uniform(-1, 1, (g.nnz, 2)), 1.0)
    assert_matches_reference(g, inputs, {"score": "gatv2"}, np.float64, dropout=0.3, seed=1)


# ---------------------------------------------------------------------------- contract
def test_inputs_untouched_and_saved_is_small():
    rng = np.random.default_rng(3)
    g = random_graph(rng, 40, 30, density=0.3, empty_rows=3)
    q, k = rng.standard_normal((40, 3, 5)), rng.standard_normal((30, 3, 5))
    v, bias = rng.standard_normal((30, 3, 4)), rng.standard_normal((g.nnz, 3))
    copies = [a.copy() for a in (q, k, v, bias)]
    for score in ("cosine", "dot"):
        out, ctx = sg.attention_forward(g, q, k, v, score=score, edge_bias=bias, dropout=0.2, seed=1,
                                        backend="numba")
        out_copy = out.copy()
        dout = rng.standard_normal(out.shape)
        sg.attention_backward(ctx, dout)
        assert all(np.array_equal(a, b) for a, b in zip((q, k, v, bias), copies))
        assert np.array_equal(out, out_copy)
        saved = sum(a.size for a in ctx.saved.values())
        assert saved <= 2 * (g.n_dst + g.n_src) * 3 * 2  # O(n*H): no per-edge storage at all


def test_default_backend_for_numpy_arrays_is_numba(monkeypatch):
    monkeypatch.delenv("SPARSEGAT_BACKEND", raising=False)
    assert select_backend("numpy") == "numba"
    rng = np.random.default_rng(0)
    g = random_graph(rng, 5, 5)
    q = rng.standard_normal((5, 1, 2))
    _, ctx = sg.attention_forward(g, q, q, q, score="dot")
    assert ctx.backend == "numba"


def test_backend_module_imports_numba_only_when_loaded():
    code = ("import sys, numpy as np, sparsegat as sg\n"
            "g = sg.CSRGraph.from_edge_index([0, 1], [1, 0])\n"
            "q = np.ones((2, 1, 2))\n"
            "sg.attention_forward(g, q, q, q, backend='numpy')\n"
            "assert 'numba' not in sys.modules, 'numba imported before the backend was chosen'\n"
            "sg.attention_forward(g, q, q, q, backend='numba')\n"
            "assert 'numba' in sys.modules\n")
    env = dict(os.environ)
    env.pop("SPARSEGAT_BACKEND", None)
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=300)


def test_thread_count_follows_numba_setting():
    rng = np.random.default_rng(0)
    g = random_graph(rng, 200, 200, density=0.05)
    q = rng.standard_normal((200, 2, 4))
    threads = numba.get_num_threads()
    results = []
    try:
        for n in sorted({1, threads}):
            numba.set_num_threads(n)
            out, ctx = sg.attention_forward(g, q, q, q, score="scaled_dot", backend="numba")
            results.append(out.tobytes())
    finally:
        numba.set_num_threads(threads)
    assert all(r == results[0] for r in results)


# ---------------------------------------------------------------------- the inlined exp
@pytest.mark.parametrize("dtype,ulps", [(np.float32, 2), (np.float64, 2)])
def test_fast_exp_is_within_two_ulp_of_libm_on_the_kernels_range(dtype, ulps):
    """The kernels' exp (Cody-Waite reduction and a Cephes polynomial) on x <= 0, the only
    arguments they pass: within 2 ulp of NumPy's exp where the result is normal, 0 below the
    smallest normal result (no denormals), NaN for NaN."""
    from numba import njit

    from sparsegat.backends.numba.fastexp import exp

    @njit
    def exp_all(x):
        out = np.empty_like(x)
        for i in range(x.size):
            out[i] = exp(x[i])
        return out

    rng = np.random.default_rng(0)
    tiny = np.finfo(dtype).tiny
    lowest = np.log(tiny).astype(dtype)  # below this the exact result is denormal
    x = np.concatenate([-np.abs(rng.standard_normal(20000)) * s for s in (1e-6, 1.0, 30.0, 300.0)]
                       + [np.linspace(float(lowest), 0.0, 20001), [0.0, -0.0]]).astype(dtype)
    got, ref = exp_all(x), np.exp(x)
    normal = ref >= tiny
    spacing = np.spacing(ref[normal])
    assert np.max(np.abs(got[normal] - ref[normal]) / spacing) <= ulps
    assert np.all(got[~normal] >= 0) and np.all(got[~normal] <= tiny)
    assert np.array_equal(exp_all(np.array([-1e30, -np.inf], dtype)), np.zeros(2, dtype))
    assert np.isnan(exp_all(np.array([np.nan], dtype)))[0]


# ---------------------------------------------------------------------------- numerics (issue 11)
@pytest.mark.parametrize("form", sorted(FORWARD_FORMS))
@pytest.mark.parametrize("dtype,big", [(np.float32, 2e38), (np.float64, 1e308)])
def test_values_near_the_dtype_max_give_finite_outputs(form, dtype, big, monkeypatch):
    """The weighted mean of values near the dtype's maximum is finite: the kernel must not
    form the (overflowing) unnormalised sum as its result. Rows of 1 to 600 edges (one
    longer than the kernels' ACC_BLOCK), with and without dropout, every score."""
    from sparsegat.backends.numba import backend as nb

    for name, value in FORWARD_FORMS[form].items():
        monkeypatch.setattr(nb, name, value)
    rng = np.random.default_rng(5)
    degrees = [0, 1, 2, 7, 40, 600]
    n_src = 600
    src = np.concatenate([rng.choice(n_src, d, replace=False) for d in degrees])
    dst = np.repeat(np.arange(len(degrees)), degrees)
    g = CSRGraph.from_edge_index(src, dst, num_src=n_src, num_dst=len(degrees))
    heads = 4
    for score in ("additive", "dot"):
        tail = (heads,) if score in SCALAR_SCORES else (heads, 3)
        q = rng.uniform(-1, 1, (g.n_dst,) + tail).astype(dtype)
        k = rng.uniform(-1, 1, (n_src,) + tail).astype(dtype)
        v = (big * rng.uniform(0.5, 1.0, (n_src, heads, 2))).astype(dtype)
        v[:, :, 1] *= -1
        for rate in (0.0, 0.3):
            ref, _ = sg.attention_forward(g, q.astype(np.float64), k.astype(np.float64), v.astype(np.float64),
                                          score=score, dropout=rate, seed=3, backend="numpy")
            out, ctx = sg.attention_forward(g, q, k, v, score=score, dropout=rate, seed=3, backend="numba")
            ok = np.isfinite(ref.astype(dtype))
            assert np.all(np.isfinite(out[ok])), (score, rate)
            np.testing.assert_allclose(out[ok] / big, ref[ok] / big, rtol=1e-4, atol=1e-5)
            if rate == 0.0:
                assert ok.all()  # a mean of finite values: finite (no dropout scale)
                grads = sg.attention_backward(ctx, np.full(out.shape, 1e-3 / big, dtype))
                for name, a in grads.items():
                    assert np.all(np.isfinite(a)), (score, name)


def test_non_finite_values_still_propagate():
    """The repair of overflowing rows leaves genuine NaN/inf inputs alone: NaN values
    give NaN outputs (in the rows that attend to them only)."""
    g = CSRGraph.from_edge_index(np.array([0, 1, 1, 2]), np.array([0, 0, 1, 1]), num_src=3, num_dst=2)
    q = np.zeros((2, 1))
    k = np.zeros((3, 1))
    v = np.ones((3, 1, 2))
    v[2, 0, 0] = np.nan
    from sparsegat.backends.numba import backend as nb
    from sparsegat.spec import AttentionSpec

    out, _ = nb.forward(g, q, k, v, None, None, AttentionSpec("additive", 1.0, 0.2))
    assert np.all(out[0] == 1.0) and np.isnan(out[1, 0, 0]) and out[1, 0, 1] == 1.0


def _long_row_errors(n):
    """float32 numba against float64 numpy on a star: row 0 attends to ``n`` sources, and
    source 0 is attended by ``n`` rows (a long column); max errors relative to the scale."""
    rng = np.random.default_rng(n)
    src = np.concatenate([np.arange(n), np.zeros(n - 1, np.int64)])
    dst = np.concatenate([np.zeros(n, np.int64), np.arange(1, n)])
    g = CSRGraph.from_edge_index(src, dst, num_src=n, num_dst=n)
    heads, dv = 2, 3
    q = rng.standard_normal((n, heads)).astype(np.float32)
    k = rng.standard_normal((n, heads)).astype(np.float32)
    v = (rng.standard_normal((n, heads, dv)) + 1.0).astype(np.float32)
    dout = (rng.standard_normal((n, heads, dv)) + 1.0).astype(np.float32)
    bias = np.zeros((g.nnz, heads), np.float32)  # for ds, the edge_bias gradient
    f64 = [a.astype(np.float64) for a in (q, k, v, dout, bias)]
    ref, rctx = sg.attention_forward(g, *f64[:3], edge_bias=f64[4], score="additive", backend="numpy")
    rgrads = dict(sg.attention_backward(rctx, f64[3]).items())
    rw = sg.attention_weights(g, *f64[:2], score="additive", backend="numpy")
    out, ctx = sg.attention_forward(g, q, k, v, edge_bias=bias, score="additive", backend="numba")
    grads = dict(sg.attention_backward(ctx, dout).items())
    w = sg.attention_weights(g, q, k, score="additive", backend="numba")
    err = {"out": np.max(np.abs(out[0] - ref[0])) / np.max(np.abs(ref[0])),
           "weights": np.max(np.abs(w[:n] - rw[:n])) / np.max(np.abs(rw[:n])),
           "dv": np.max(np.abs(grads["v"][0] - rgrads["v"][0])) / np.max(np.abs(rgrads["v"][0])),
           # dq_0 = sum_j ds_0j lrelu'(z_0j) cancels (sum_j ds_0j = 0): relative to sum |ds_0j|
           "dq": np.abs(grads["q"][0] - rgrads["q"][0]).max() / np.abs(rgrads["edge_bias"][:n]).sum(0).max()}
    return err


@pytest.mark.parametrize("form", sorted(FORWARD_FORMS))
def test_float32_error_of_long_rows_and_columns_does_not_grow_with_degree(form, monkeypatch):
    """A row of 2e5 edges and a column of 2e5 edges in float32 against float64: the
    error bound is the one of a row of a few edges (block sums go into float64 totals;
    summed naively the error grows linearly, ~1e-3 at 1e6 edges)."""
    from sparsegat.backends.numba import backend as nb

    for name, value in FORWARD_FORMS[form].items():
        monkeypatch.setattr(nb, name, value)
    for n in (3000, 200_000):
        err = _long_row_errors(n)
        for name, e in err.items():
            assert e < 1e-5, (n, name, e)
