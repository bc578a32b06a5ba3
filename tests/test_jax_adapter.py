"""``sparsegat.jax``: the attention operator as a JAX custom_vjp, and the functional GAT layers.

Every score and option is checked, forward and ``jax.grad``, under ``jax.jit``, against a
pure-JAX reference written here (gathers, ``jax.ops.segment_max``/``segment_sum``):
float64 to 1e-9, float32 to 1e-4; plus finite differences in float64
(``jax.test_util.check_grads``), determinism, zero copy of the operands on the CPU,
``lax.scan``, ``vmap``, the ``pure_callback`` route, dropout seeds, errors, the layers
against PyTorch Geometric, and the GPU route where there is one.
"""

from __future__ import annotations

import importlib.util
import logging
import subprocess
import sys

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402
from jax.test_util import check_grads  # noqa: E402

import sparsegat as sg  # noqa: E402
import sparsegat.jax as sj  # noqa: E402
from sparsegat.dropout import drop_threshold, keep_mask, mix_seed  # noqa: E402
from sparsegat.jax import _callbacks  # noqa: E402
from sparsegat.spec import COSINE_EPS, SCORES  # noqa: E402

HAS_PYG = all(importlib.util.find_spec(m) is not None for m in ("torch", "torch_geometric"))
TOL = {np.float64: 1e-9, np.float32: 1e-4}


@pytest.fixture(autouse=True, scope="module")
def x64():
    """64-bit JAX for this module (float64 tests), restored afterwards."""
    before = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", before)


def make_graph() -> sg.CSRGraph:
    """Bipartite (7 destinations, 6 sources): an empty row, a multi-edge, a hub row."""
    src = [0, 1, 1, 2, 3, 0, 1, 2, 3, 4, 5, 5, 4, 2, 0, 3]
    dst = [0, 0, 0, 1, 1, 2, 2, 2, 2, 2, 2, 3, 4, 4, 6, 6]   # row 5 is empty; 1 -> 0 twice
    return sg.CSRGraph.from_edge_index(src, dst, num_src=6, num_dst=7)


G = make_graph()


# ---------------------------------------------------------------------- the pure-JAX reference
def _leaky(z, slope):
    return jnp.where(z > 0, z, slope * z)


def _unit(x):
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), COSINE_EPS)


def reference(g, q, k, v, score="dot", att=None, tau=1.0, negative_slope=0.2, edge_bias=None, dropout=0.0,
              seed=None):
    """The operator in plain JAX: per-edge gathers, segment max/sum over the CSR rows."""
    rows = jnp.asarray(np.asarray(g.row_ids(), dtype=np.int32))
    cols = jnp.asarray(np.asarray(g.indices, dtype=np.int32))
    n = g.n_dst
    if score == "additive":
        s = _leaky(q[rows] + k[cols], negative_slope)
    elif score == "gatv2":
        s = (att * _leaky(q[rows] + k[cols], negative_slope)).sum(-1)
    elif score == "euclidean":
        d = q[rows] - k[cols]
        s = -tau * (d * d).sum(-1)
    elif score == "cosine":
        s = tau * (_unit(q)[rows] * _unit(k)[cols]).sum(-1)
    else:
        s = (q[rows] * k[cols]).sum(-1)
        if score == "scaled_dot":
            s = s / np.sqrt(q.shape[-1])
    if edge_bias is not None:
        s = s + edge_bias
    m = jax.ops.segment_max(s, rows, n, indices_are_sorted=True)
    m = jax.lax.stop_gradient(jnp.where(jnp.isfinite(m), m, 0))
    e = jnp.exp(s - m[rows])
    a = e / jax.ops.segment_sum(e, rows, n, indices_are_sorted=True)[rows]
    if dropout:
        keep = keep_mask(mix_seed(seed), 0, g.nnz, a.shape[1], drop_threshold(dropout))
        a = jnp.where(jnp.asarray(keep), a / (1 - dropout), 0)
    return jax.ops.segment_sum(a[..., None] * v[cols], rows, n, indices_are_sorted=True)


def make_inputs(score, dtype, *, bias=True, tau_array=True, seed=0, g=G, heads=2, d=3, dv=4):
    """A dict of the operator's array inputs for ``score`` (the differentiable ones)."""
    rng = np.random.default_rng(seed)
    qk = (heads,) if score == "additive" else (heads, d)
    p = {"q": rng.standard_normal((g.n_dst,) + qk), "k": rng.standard_normal((g.n_src,) + qk),
         "v": rng.standard_normal((g.n_src, heads, dv))}
    if score == "gatv2":
        p["att"] = rng.standard_normal((heads, d))
    if score in ("cosine", "euclidean") and tau_array:
        p["tau"] = np.asarray(0.7)
    if bias:
        p["edge_bias"] = 0.5 * rng.standard_normal((g.nnz, heads))
    return {n: jnp.asarray(a, dtype=dtype) for n, a in p.items()}


def close(a, b, dtype):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    tol = TOL[dtype]
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol * max(1.0, float(np.abs(b).max(initial=0.0))))


def loss_of(fn, cotangent):
    return lambda p: (fn(p) * cotangent).sum()


# ---------------------------------------------------------------------- forward and gradients
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("score", SCORES)
def test_forward_and_grad_match_the_reference_under_jit(score, dtype):
    p = make_inputs(score, dtype)
    options = dict(score=score, negative_slope=0.15, dropout=0.3, seed=11)
    ours = jax.jit(lambda p: sj.attention(G, **p, **options))
    ref = jax.jit(lambda p: reference(G, **p, **options))
    out = ours(p)
    assert out.dtype == dtype and out.shape == (G.n_dst, 2, 4)
    close(out, ref(p), dtype)
    assert np.all(np.asarray(out)[5] == 0)  # the empty row
    R = jnp.asarray(np.random.default_rng(1).standard_normal(out.shape), dtype=dtype)
    grads = jax.jit(jax.grad(loss_of(ours, R)))(p)
    expected = jax.jit(jax.grad(loss_of(ref, R)))(p)
    assert set(grads) == set(p)
    for name in p:
        assert grads[name].shape == p[name].shape and grads[name].dtype == dtype, name
        close(grads[name], expected[name], dtype)


@pytest.mark.parametrize("score", SCORES)
def test_without_bias_dropout_or_traced_tau(score):
    p = make_inputs(score, np.float64, bias=False, tau_array=False)
    tau = 0.4 if score in ("cosine", "euclidean") else 1.0
    value, grads = jax.jit(jax.value_and_grad(lambda p: (sj.attention(G, **p, score=score, tau=tau) ** 2).sum()))(p)
    ref = jax.value_and_grad(lambda p: (reference(G, **p, score=score, tau=tau) ** 2).sum())
    ref_value, ref_grads = jax.jit(ref)(p)
    close(value, ref_value, np.float64)
    for name in p:
        close(grads[name], ref_grads[name], np.float64)


def test_forward_matches_the_core_on_every_backend():
    p = make_inputs("gatv2", np.float64)
    host = {n: np.asarray(a) for n, a in p.items()}
    for backend in sg.available_backends():
        if backend == "cupy":
            continue
        out = sj.attention(G, **p, score="gatv2", dropout=0.25, seed=3, backend=backend)
        ref, _ = sg.attention_forward(G, **host, score="gatv2", dropout=0.25, seed=3, backend=backend)
        np.testing.assert_array_equal(np.asarray(out), ref)


@pytest.mark.parametrize("score,options", [("dot", {}), ("cosine", {}), ("euclidean", {"dropout": 0.4, "seed": 5}),
                                           ("gatv2", {"negative_slope": 0.3}), ("additive", {})])
def test_finite_differences_float64(score, options):
    p = make_inputs(score, np.float64)
    f = jax.jit(lambda p: sj.attention(G, **p, score=score, **options))
    check_grads(f, (p,), order=1, modes=["rev"])


def test_backward_is_deterministic():
    p = make_inputs("dot", np.float64)
    grad = jax.jit(jax.grad(lambda p: (sj.attention(G, **p, dropout=0.2, seed=4) ** 2).sum()))
    first, second = grad(p), grad(p)
    for name in p:
        np.testing.assert_array_equal(np.asarray(first[name]), np.asarray(second[name]))


# ---------------------------------------------------------------------- zero copy, routes
def test_the_kernels_read_xla_buffers_in_place(monkeypatch):
    """The NumPy arrays the core receives are views of JAX's operand buffers, and the ones
    it writes ``out`` and the gradients into are views of XLA's result buffers."""
    seen = {}
    core_forward, core_backward = _callbacks.core_forward, _callbacks.core_backward

    def address(a):
        return a.__array_interface__["data"][0]

    def spy_forward(g, q, k, v, **kw):
        seen["graph"] = g
        seen["forward"] = (address(q), address(v))
        seen["out"] = address(kw["out"])
        return core_forward(g, q, k, v, **kw)

    def spy_backward(ctx, dout, **kw):
        seen["backward"] = (address(ctx.q), address(ctx.v))
        seen["grads"] = {n: address(a) for n, a in kw["out"].items()}
        return core_backward(ctx, dout, **kw)

    monkeypatch.setattr(_callbacks, "core_forward", spy_forward)
    monkeypatch.setattr(_callbacks, "core_backward", spy_backward)
    p = make_inputs("dot", np.float32)
    q, k, v = p["q"], p["k"], p["v"]
    y = jax.jit(lambda q, k, v: sj.attention(G, q, k, v))(q, k, v).block_until_ready()
    assert seen["forward"] == (q.unsafe_buffer_pointer(), v.unsafe_buffer_pointer())
    assert seen["out"] == y.unsafe_buffer_pointer()
    assert seen["graph"] is G  # the very graph object, with its cached structures
    grads = jax.jit(jax.grad(lambda q, k, v: sj.attention(G, q, k, v).sum(), argnums=(0, 1, 2)))(q, k, v)
    jax.block_until_ready(grads)
    assert seen["backward"] == (q.unsafe_buffer_pointer(), v.unsafe_buffer_pointer())
    assert seen["grads"] == {n: a.unsafe_buffer_pointer() for n, a in zip("qkv", grads)}


def test_a_failing_gpu_callback_is_logged_and_gives_nan(caplog):
    """On a GPU an error inside the callback is logged and its results are NaN (and the
    layout code -1, which the backward refuses); on the host it is raised."""
    outs = (np.zeros((2, 3)), np.zeros((2, 2)), np.zeros((), np.int32), None)
    with caplog.at_level(logging.ERROR, logger="sparsegat.jax"):
        with _callbacks._contained("cupy", outs, np.asarray):
            raise ValueError("boom")
    assert np.isnan(outs[0]).all() and np.isnan(outs[1]).all() and int(outs[2]) == -1
    assert "boom" in caplog.text and "results are NaN" in caplog.text
    with pytest.raises(ValueError, match="layout -1"):
        _callbacks.layout(-1)
    with pytest.raises(ValueError, match="boom"):
        with _callbacks._contained("numpy", outs, np.asarray):
            raise ValueError("boom")


def test_pure_callback_route_gives_the_same_results():
    p = make_inputs("euclidean", np.float64)

    def value_and_grad():
        return jax.jit(jax.value_and_grad(lambda p: (sj.attention(G, **p, score="euclidean", dropout=0.3,
                                                                   seed=2) ** 2).sum()))(p)

    buffer_route = value_and_grad()
    with _callbacks.forced_route("pure"):
        pure_route = value_and_grad()
    for a, b in zip(jax.tree.leaves(buffer_route), jax.tree.leaves(pure_route)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    jaxpr = str(jax.make_jaxpr(lambda p: sj.attention(G, **p, score="euclidean"))(p))
    assert "buffer_callback" in jaxpr and "platform_index" in jaxpr


# ---------------------------------------------------------------------- transformations
def test_scan_matches_a_python_loop():
    p = make_inputs("scaled_dot", np.float64, bias=False, dv=3)
    k, v = p["k"][:6], p["v"]
    q0 = p["q"][:6]
    g = sg.CSRGraph.from_edge_index([0, 1, 2, 3, 4, 5, 5, 0], [1, 2, 3, 4, 5, 0, 1, 1], num_src=6, num_dst=6)

    def step(q, s):
        out = sj.attention(g, q, k, v, score="scaled_dot", dropout=0.3, seed=s)
        return out, out.sum()

    def run(q0):
        return jax.lax.scan(step, q0, jnp.arange(4, dtype=jnp.uint32))[1].sum()

    value, grad = jax.jit(jax.value_and_grad(run))(q0)
    q, total = q0, 0.0
    for s in range(4):
        q, y = step(q, s)
        total += y
    close(value, total, np.float64)
    assert grad.shape == q0.shape and np.all(np.isfinite(np.asarray(grad)))


def test_checkpoint_vjp_and_what_is_refused():
    p = make_inputs("cosine", np.float64)

    def f(q, tau):
        return (sj.attention(G, q, p["k"], p["v"], score="cosine", tau=tau) ** 2).sum()

    tau = jnp.asarray(0.5)
    np.testing.assert_allclose(np.asarray(jax.grad(jax.checkpoint(f))(p["q"], tau)),
                               np.asarray(jax.grad(f)(p["q"], tau)), rtol=1e-12)
    out, vjp = jax.vjp(lambda q: sj.attention(G, q, p["k"], p["v"]), p["q"])
    assert vjp(jnp.ones_like(out))[0].shape == p["q"].shape
    with pytest.raises(TypeError, match="forward-mode"):
        jax.jvp(lambda q: sj.attention(G, q, p["k"], p["v"]), (p["q"],), (p["q"],))
    with pytest.raises(ValueError, match="do not support JVP"):  # derivatives of the backward
        jax.grad(lambda q: jax.grad(f)(q, tau).sum())(p["q"])


def test_vmap_runs_once_per_batch_element():
    p = make_inputs("dot", np.float64)
    qs = jnp.stack([p["q"], 2 * p["q"], -p["q"]])
    seeds = jnp.arange(3, dtype=jnp.int32)

    def f(q, s):
        return sj.attention(G, q, p["k"], p["v"], edge_bias=p["edge_bias"], dropout=0.5, seed=s)

    batched = jax.jit(jax.vmap(f))(qs, seeds)
    grads = jax.jit(jax.vmap(jax.grad(lambda q, s: f(q, s).sum())))(qs, seeds)
    for i in range(3):
        np.testing.assert_allclose(np.asarray(batched[i]), np.asarray(f(qs[i], seeds[i])), rtol=1e-12)
        np.testing.assert_allclose(np.asarray(grads[i]), np.asarray(jax.grad(lambda q: f(q, seeds[i]).sum())(qs[i])),
                                   rtol=1e-12)
    # unbatched operands next to batched ones; a batched seed alone draws a mask per element
    masks = jax.vmap(lambda s: f(p["q"], s))(seeds)
    assert not np.array_equal(np.asarray(masks[0]), np.asarray(masks[1]))


# ---------------------------------------------------------------------- dropout seeds
def test_seeds_python_traced_and_keys():
    p = make_inputs("dot", np.float64)
    host = {n: np.asarray(a) for n, a in p.items()}

    def f(seed):
        return sj.attention(G, **p, dropout=0.5, seed=seed)

    core, _ = sg.attention_forward(G, **host, dropout=0.5, seed=12345, backend="numpy")
    for seed in (12345, np.int64(12345), jnp.int32(12345), jnp.uint32(12345), jnp.int64(12345)):
        np.testing.assert_allclose(np.asarray(f(seed)), core, rtol=1e-12, err_msg=repr(seed))
    big = 2**63 + 17  # all 64 bits: a Python int and an int64 array holding the same bits
    core_big, _ = sg.attention_forward(G, **host, dropout=0.5, seed=big, backend="numpy")
    np.testing.assert_allclose(np.asarray(f(big)), core_big, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(f(jnp.asarray(big - 2**64, dtype=jnp.int64))), core_big, rtol=1e-12)
    # a jitted step with a traced seed: one compilation, a new mask per seed
    traces = []

    @jax.jit
    def step(key):
        traces.append(1)
        return sj.attention(G, **p, dropout=0.5, seed=jax.random.randint(key, (), 0, 2**31 - 1))

    a, b = step(jax.random.key(0)), step(jax.random.key(1))
    assert len(traces) == 1 and not np.array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(np.asarray(step(jax.random.key(0))), np.asarray(a))
    # PRNG keys (typed and legacy) as seeds
    np.testing.assert_array_equal(np.asarray(f(jax.random.key(7))), np.asarray(f(jax.random.PRNGKey(7))))
    # without dropout the seed is ignored
    np.testing.assert_array_equal(np.asarray(sj.attention(G, **p, seed=1)), np.asarray(sj.attention(G, **p)))


# ---------------------------------------------------------------------- errors
def test_bad_inputs_raise_clear_errors():
    p = make_inputs("dot", np.float32)
    q, k, v = p["q"], p["k"], p["v"]
    with pytest.raises(TypeError, match="g must be a sparsegat.CSRGraph"):
        sj.attention(G.to_scipy(), q, k, v)
    with pytest.raises(ValueError, match="q must have n_dst=7 rows"):
        sj.attention(G, q[:3], k, v)
    with pytest.raises(TypeError, match="q must have dtype float32 or float64, got float16"):
        sj.attention(G, q.astype(jnp.float16), k, v)
    with pytest.raises(TypeError, match="mixed dtypes"):
        sj.attention(G, q, k.astype(jnp.float64), v)
    with pytest.raises(TypeError, match="v must be a JAX array, got None"):
        sj.attention(G, q, k, None)
    with pytest.raises(ValueError, match="edge_bias must have shape"):
        sj.attention(G, q, k, v, edge_bias=jnp.zeros((3, 2), jnp.float32))
    with pytest.raises(ValueError, match="score must be one of"):
        sj.attention(G, q, k, v, score="bogus")
    with pytest.raises(ValueError, match="needs a seed"):
        sj.attention(G, q, k, v, dropout=0.1)
    with pytest.raises(ValueError, match="dropout must lie in"):
        sj.attention(G, q, k, v, dropout=1.0, seed=1)
    with pytest.raises(TypeError, match="dropout must be a number known when tracing"):
        jax.jit(lambda d: sj.attention(G, q, k, v, dropout=d, seed=1))(0.1)
    with pytest.raises(ValueError, match="tau applies only"):
        sj.attention(G, q, k, v, tau=jnp.float32(2.0))
    with pytest.raises(TypeError, match="one-element floating array"):
        sj.attention(G, q, k, v, score="cosine", tau=jnp.ones(2, jnp.float32))
    with pytest.raises(TypeError, match="seed array must be a one-element integer"):
        sj.attention(G, q, k, v, dropout=0.2, seed=jnp.float32(1))
    with pytest.raises(ValueError, match=r"seed must lie in \[0, 2\*\*64\)"):
        sj.attention(G, q, k, v, dropout=0.2, seed=-1)
    with pytest.raises(ValueError, match="backend must be"):
        sj.attention(G, q, k, v, backend="cuda")
    # values are only known when the computation runs: the core's message from inside the callback
    with pytest.raises(Exception, match="q contains NaN or infinite values"):
        jax.jit(lambda q: sj.attention(G, q, k, v))(q.at[0, 0, 0].set(jnp.nan)).block_until_ready()
    with pytest.raises(Exception, match="check_finite=False skipped that check"):  # the core's NaN/inf rule
        sj.attention(G, q.at[0, 0, 0].set(jnp.nan), k, v, check_finite=False).block_until_ready()


# ---------------------------------------------------------------------- the package
def test_importing_the_adapter_loads_no_kernel_library():
    code = ("import sys, sparsegat, sparsegat.jax\n"
            "bad = [m for m in ('numba', 'cupy', 'torch') if m in sys.modules]\n"
            "assert not bad, bad\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


# ---------------------------------------------------------------------- layers
def _features(n, d, dtype, seed=0):
    return jnp.asarray(np.random.default_rng(seed).standard_normal((n, d)), dtype=dtype)


SQUARE = sg.CSRGraph.from_edge_index([0, 1, 2, 3, 4, 4, 5, 1, 3, 3], [1, 2, 3, 4, 5, 0, 0, 0, 1, 3], num_src=6,
                                     num_dst=6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layers_init_names_shapes_and_dtypes(dtype):
    key = jax.random.key(0)
    p1 = sj.gat_conv.init(key, 5, 3, heads=2, residual=True, dtype=dtype)
    assert {n: a.shape for n, a in p1.items()} == {"W": (5, 6), "att_src": (2, 3), "att_dst": (2, 3),
                                                  "bias": (6,), "W_res": (5, 6)}
    p2 = sj.gatv2_conv.init(key, 6, 4, heads=1, concat=False, dtype=dtype)
    assert {n: a.shape for n, a in p2.items()} == {"W_l": (6, 4), "b_l": (4,), "W_r": (6, 4), "b_r": (4,),
                                                  "att": (1, 4), "bias": (4,)}
    assert all(a.dtype == dtype for a in jax.tree.leaves((p1, p2)))
    y = jax.jit(lambda p, x: sj.gat_conv.apply(p, x, SQUARE))(p1, _features(6, 5, dtype))
    assert y.shape == (6, 6) and y.dtype == dtype


def test_layers_training_step_with_dropout_keys():
    key = jax.random.key(0)
    p1 = sj.gat_conv.init(key, 5, 3, heads=2)
    p2 = sj.gatv2_conv.init(key, 6, 4, heads=1, concat=False)
    x = _features(6, 5, np.float32)

    def loss(params, key):
        k1, k2 = jax.random.split(key)
        h = jax.nn.elu(sj.gat_conv.apply(params[0], x, SQUARE, dropout=0.5, training=True, key=k1))
        y = sj.gatv2_conv.apply(params[1], h, SQUARE, concat=False, dropout=0.5, training=True, key=k2)
        return (y ** 2).mean()

    step = jax.jit(jax.value_and_grad(loss))
    value, grads = step((p1, p2), jax.random.key(3))
    other, _ = step((p1, p2), jax.random.key(4))
    assert np.isfinite(float(value)) and float(value) != float(other)  # a new dropout mask per key
    assert jax.tree.structure(grads) == jax.tree.structure((p1, p2))
    assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree.leaves(grads))
    with pytest.raises(ValueError, match="needs key="):
        sj.gat_conv.apply(p1, x, SQUARE, dropout=0.5, training=True)


def test_layer_errors():
    params = sj.gat_conv.init(jax.random.key(0), 5, 3)
    with pytest.raises(ValueError, match="one row per node"):
        sj.gat_conv.apply(params, _features(4, 5, np.float32), SQUARE)
    with pytest.raises(TypeError, match="x has dtype float64"):
        sj.gat_conv.apply(params, _features(6, 5, np.float64), SQUARE)
    with pytest.raises(TypeError, match="heads must be an integer"):
        sj.gat_conv.init(jax.random.key(0), 5, 3, heads=2.0)
    with pytest.raises(TypeError, match="g must be a sparsegat.CSRGraph"):
        sj.gat_conv.apply(params, _features(6, 5, np.float32), None)


@pytest.mark.pyg
@pytest.mark.skipif(not HAS_PYG, reason="needs torch and torch_geometric")
@pytest.mark.parametrize("layer,options", [
    ("gat", dict(heads=2)), ("gat", dict(heads=3, concat=False, residual=True)),
    ("gatv2", dict(heads=2)), ("gatv2", dict(heads=2, concat=False, share_weights=True, bias=False, residual=True))])
def test_layers_match_pyg(layer, options):
    import torch
    from torch_geometric.nn import GATConv, GATv2Conv

    module = sj.gat_conv if layer == "gat" else sj.gatv2_conv
    params = module.init(jax.random.key(1), 5, 4, dtype=np.float64, **options)
    pyg_cls = GATConv if layer == "gat" else GATv2Conv
    conv = pyg_cls(5, 4, **options).double()
    conv.load_state_dict({n: torch.from_numpy(a.copy()) for n, a in module.to_pyg(params).items()})
    x = _features(6, 5, np.float64)
    edge_index = torch.from_numpy(np.stack([np.asarray(SQUARE.indices), np.asarray(SQUARE.row_ids())]).astype(np.int64))
    tx = torch.from_numpy(np.asarray(x).copy()).requires_grad_(True)
    ty = conv(tx, edge_index)
    R = np.random.default_rng(2).standard_normal(ty.shape)
    (ty * torch.from_numpy(R)).sum().backward()
    concat = options.get("concat", True)

    def f(params, x):
        return (module.apply(params, x, SQUARE, concat=concat) * R).sum()

    y = module.apply(params, x, SQUARE, concat=concat)
    close(y, ty.detach().numpy(), np.float64)
    grads, gx = jax.jit(jax.grad(f, argnums=(0, 1)))(params, x)
    close(gx, tx.grad.numpy(), np.float64)
    pyg_grads = {n: t.grad.numpy() for n, t in conv.named_parameters()}
    for name, grad in module.to_pyg(grads).items():
        if name in pyg_grads and not (layer == "gatv2" and options.get("share_weights") and name.startswith("lin_r")):
            close(grad, pyg_grads[name], np.float64)
    again = module.from_pyg(conv.state_dict(), share_weights=options.get("share_weights", False)) \
        if layer == "gatv2" else module.from_pyg(conv.state_dict())
    assert set(again) == set(params)
    for name in params:
        np.testing.assert_array_equal(np.asarray(again[name]), np.asarray(params[name]))


# ---------------------------------------------------------------------- GPU
def _gpu_devices():
    try:
        return jax.devices("gpu")
    except RuntimeError:
        return []


NEEDS_GPU = pytest.mark.skipif(not _gpu_devices() or importlib.util.find_spec("cupy") is None,
                               reason="needs a JAX GPU device and CuPy")


@pytest.mark.gpu
@NEEDS_GPU
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("score", SCORES)
def test_gpu_buffers_match_the_cpu(score, dtype):
    gpu, cpu = _gpu_devices()[0], jax.devices("cpu")[0]
    p = make_inputs(score, dtype)
    options = dict(score=score, dropout=0.3, seed=9)

    def value_and_grad(p):
        return jax.value_and_grad(lambda p: (sj.attention(G, **p, **options) ** 2).sum())(p)

    on_gpu = jax.jit(value_and_grad)(jax.device_put(p, gpu))
    on_cpu = jax.jit(value_and_grad)(jax.device_put(p, cpu))
    for a, b in zip(jax.tree.leaves(on_gpu), jax.tree.leaves(on_cpu)):
        assert list(a.devices())[0].platform == "gpu"
        close(a, b, dtype)


@pytest.mark.gpu
@NEEDS_GPU
def test_gpu_kernels_read_xla_buffers_in_place(monkeypatch):
    """On a GPU the CuPy arrays the core receives are views of XLA's device buffers, and
    the graph is moved to that device once and then reused."""
    seen = {}
    core_forward, core_backward = _callbacks.core_forward, _callbacks.core_backward

    def spy_forward(g, q, k, v, **kw):
        seen["forward"] = (type(q).__module__, q.data.ptr, v.data.ptr)
        seen.setdefault("graphs", []).append(g)
        return core_forward(g, q, k, v, **kw)

    def spy_backward(ctx, dout, **kw):
        seen["backward"] = (ctx.q.data.ptr, ctx.v.data.ptr, ctx.backend)
        return core_backward(ctx, dout, **kw)

    monkeypatch.setattr(_callbacks, "core_forward", spy_forward)
    monkeypatch.setattr(_callbacks, "core_backward", spy_backward)
    p = jax.device_put(make_inputs("dot", np.float32, bias=False), _gpu_devices()[0])
    q, k, v = p["q"], p["k"], p["v"]
    for _ in range(2):
        jax.jit(lambda q, k, v: sj.attention(G, q, k, v))(q, k, v).block_until_ready()
    assert seen["forward"] == ("cupy", q.unsafe_buffer_pointer(), v.unsafe_buffer_pointer())
    assert seen["graphs"][0] is seen["graphs"][1] and seen["graphs"][0].device == "cupy"
    jax.jit(jax.grad(lambda q, k, v: sj.attention(G, q, k, v).sum()))(q, k, v).block_until_ready()
    assert seen["backward"] == (q.unsafe_buffer_pointer(), v.unsafe_buffer_pointer(), "cupy")


@pytest.mark.gpu
@NEEDS_GPU
def test_gpu_layer_training_steps_in_scan_match_the_cpu():
    """Two GAT layers, dropout keys, ten jitted SGD steps inside lax.scan: GPU as CPU."""
    gpu, cpu = _gpu_devices()[0], jax.devices("cpu")[0]
    key = jax.random.key(0)
    params = [sj.gat_conv.init(key, 5, 3, heads=2, dtype=np.float64),
              sj.gat_conv.init(jax.random.key(1), 6, 2, heads=1, dtype=np.float64)]
    x = _features(6, 5, np.float64)

    def loss(params, key, x):
        k1, k2 = jax.random.split(key)
        h = jax.nn.elu(sj.gat_conv.apply(params[0], x, SQUARE, dropout=0.5, training=True, key=k1))
        y = sj.gat_conv.apply(params[1], h, SQUARE, dropout=0.5, training=True, key=k2)
        return ((y - 0.5) ** 2).mean()

    def train(params, x_on):
        def step(params, key):
            value, grads = jax.value_and_grad(loss)(params, key, x_on)
            return jax.tree.map(lambda p, g: p - 0.1 * g, params, grads), value
        return jax.lax.scan(step, params, jax.random.split(jax.random.key(3), 10))

    on_gpu = jax.jit(train)(jax.device_put(params, gpu), jax.device_put(x, gpu))
    on_cpu = jax.jit(train)(jax.device_put(params, cpu), jax.device_put(x, cpu))
    for a, b in zip(jax.tree.leaves(on_gpu), jax.tree.leaves(on_cpu)):
        close(a, b, np.float64)
