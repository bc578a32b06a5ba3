"""Finite-difference checks of the hand-written backward pass, in float64, on every CPU
backend (the module runs once per backend: the reference and numba; the CUDA kernels
get the same checks in emulation, tests/test_cuda_emulated.py).

For a random scalar loss ``L = sum(out * R)``, ``attention_backward(ctx, R)`` must match
central differences ``(L(x + eps) - L(x - eps)) / (2 eps)`` for every input it returns
a gradient for: q, k, v, att (gatv2), tau (cosine, euclidean) and edge_bias. Inputs are
kept away from the points where the score is not differentiable (LeakyReLU at 0, the
cosine norm floor), so the checks are tight.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import sparsegat as sg
from sparsegat import CSRGraph
from sparsegat.spec import SCALAR_SCORES, SCORES, SLOPE_SCORES
from sparsegat.spec import TAU_SCORES

from dense_reference import edge_list
from strategies import attention_inputs, csr_graphs, random_graph

BACKEND = "numpy"  # set per module run by the fixture below
EPS = 1e-6
RTOL, ATOL = 1e-6, 1e-8
KINK_MARGIN = 1e-2  # |q_i + k_j| (LeakyReLU argument) and norms stay this far from a kink


@pytest.fixture(scope="module", autouse=True,
                params=["numpy"] + [pytest.param("numba", marks=pytest.mark.skipif(
                    not sg.backends.is_available("numba"), reason="numba is not installed"))])
def grad_backend(request):
    """Runs the module once per CPU backend (module scope: hypothesis allows it)."""
    global BACKEND
    old, BACKEND = BACKEND, request.param
    yield request.param
    BACKEND = old


# ---------------------------------------------------------------------------- helpers
def loss(g, arrays: dict, options: dict, R: np.ndarray) -> float:
    out, _ = sg.attention_forward(g, arrays["q"], arrays["k"], arrays["v"], att=arrays.get("att"),
                                  edge_bias=arrays.get("edge_bias"), backend=BACKEND, **options)
    return float(np.sum(out * R))


def numerical_gradients(g, arrays: dict, options: dict, R: np.ndarray) -> dict:
    """Central differences of ``loss`` for every array in ``arrays`` and for ``tau``."""
    arrays = {n: a.copy() for n, a in arrays.items() if a is not None}
    out = {}
    for name, x in arrays.items():
        grad = np.zeros_like(x)
        for idx in np.ndindex(x.shape):
            orig = x[idx]
            x[idx] = orig + EPS
            plus = loss(g, arrays, options, R)
            x[idx] = orig - EPS
            minus = loss(g, arrays, options, R)
            x[idx] = orig
            grad[idx] = (plus - minus) / (2 * EPS)
        out[name] = grad
    if options.get("score") in TAU_SCORES:
        tau = options.get("tau", 1.0)
        plus = loss(g, arrays, {**options, "tau": tau + EPS}, R)
        minus = loss(g, arrays, {**options, "tau": tau - EPS}, R)
        out["tau"] = np.asarray((plus - minus) / (2 * EPS))
    return out


def check_gradients(g, arrays: dict, options: dict, seed: int = 0) -> Any:
    """Compare attention_backward with central differences; check the None fields."""
    score = options["score"]
    out, ctx = sg.attention_forward(g, arrays["q"], arrays["k"], arrays["v"], att=arrays.get("att"),
                                    edge_bias=arrays.get("edge_bias"), backend=BACKEND, **options)
    R = np.random.default_rng(seed + 1000).standard_normal(out.shape)
    grads = sg.attention_backward(ctx, R)
    numeric = numerical_gradients(g, arrays, options, R)

    expected_fields = {"q", "k", "v"}
    if score == "gatv2":
        expected_fields.add("att")
    if score in TAU_SCORES:
        expected_fields.add("tau")
    if arrays.get("edge_bias") is not None:
        expected_fields.add("edge_bias")
    for name in ("q", "k", "v", "att", "tau", "edge_bias"):
        value = getattr(grads, name)
        assert (value is not None) == (name in expected_fields), f"{name} is {value!r}"
    assert {n for n, _ in grads.items()} == expected_fields

    for name in expected_fields:
        got = getattr(grads, name)
        want = numeric[name]
        assert isinstance(got, np.ndarray) and got.dtype == np.float64, name
        assert got.shape == want.shape, (name, got.shape, want.shape)
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, err_msg=f"gradient of {name} ({score})")
    # the check is not vacuous: with edges and no dropout some gradient is non-zero
    if g.nnz and not options.get("dropout"):
        assert any(np.any(getattr(grads, n) != 0) for n in expected_fields)
    return grads


def _ok_for_fd(g, score, q, k) -> bool:
    """True when no edge sits near a kink of the score."""
    rows, cols = edge_list(g)
    if score in SLOPE_SCORES and rows.size:
        if np.min(np.abs(q[rows] + k[cols])) < KINK_MARGIN:
            return False
    if score == "cosine":
        if q.size and np.min(np.linalg.norm(q, axis=-1)) < 0.1:
            return False
        if k.size and np.min(np.linalg.norm(k, axis=-1)) < 0.1:
            return False
    return True


def make_case(score, *, n_dst=6, n_src=None, heads=2, dim=3, dim_v=2, edge_bias=False, empty_rows=1,
              density=0.45, seed=0):
    """A random graph and float64 inputs away from kinks."""
    rng = np.random.default_rng(seed)
    n_src = n_dst if n_src is None else n_src
    g = random_graph(rng, n_dst, n_src, density=density, empty_rows=empty_rows)
    tail = (heads,) if score in SCALAR_SCORES else (heads, dim)
    for _ in range(10_000):
        q = rng.standard_normal((n_dst,) + tail)
        k = rng.standard_normal((n_src,) + tail)
        if _ok_for_fd(g, score, q, k):
            break
    else:  # pragma: no cover
        raise RuntimeError("could not draw inputs away from kinks")
    arrays = {"q": q, "k": k, "v": rng.standard_normal((n_src, heads, dim_v))}
    if score == "gatv2":
        arrays["att"] = rng.standard_normal((heads, dim))
    if edge_bias:
        arrays["edge_bias"] = rng.standard_normal((g.nnz, heads))
    return g, arrays


# ---------------------------------------------------------------------------- the cases
def _cases():
    """(id, score, make_case kwargs, options) covering every score with every option."""
    cases = []
    for score in SCORES:
        tau = {"cosine": 2.5, "euclidean": 0.6}.get(score)
        extra = {"tau": tau} if tau is not None else {}
        cases += [
            (f"{score}-plain", score, {}, {}),
            (f"{score}-edge_bias", score, {"edge_bias": True}, {}),
            (f"{score}-dropout", score, {"seed": 1}, {"dropout": 0.35, "seed": 123}),
            (f"{score}-bipartite", score, {"n_dst": 5, "n_src": 7, "empty_rows": 2, "seed": 2}, {}),
            (f"{score}-bipartite-tall", score, {"n_dst": 7, "n_src": 3, "seed": 3, "heads": 1, "dim": 2}, {}),
            (f"{score}-all-options", score,
             {"n_dst": 6, "n_src": 4, "empty_rows": 2, "edge_bias": True, "seed": 4, "heads": 3},
             {"dropout": 0.2, "seed": 2**63 + 5, **extra,
              **({"negative_slope": 0.05} if score in SLOPE_SCORES else {})}),
        ]
        if score in TAU_SCORES:
            cases += [
                (f"{score}-tau", score, {"seed": 5}, {"tau": tau}),
                (f"{score}-negative-tau", score, {"seed": 6, "edge_bias": True}, {"tau": -0.7}),
            ]
        if score in SLOPE_SCORES:
            cases += [
                (f"{score}-slope0", score, {"seed": 7}, {"negative_slope": 0.0}),
                (f"{score}-slope1.7", score, {"seed": 8, "edge_bias": True}, {"negative_slope": 1.7}),
            ]
    cases.append(("dot-hub-row", "dot", {"n_dst": 4, "n_src": 9, "density": 1.0, "empty_rows": 1, "seed": 9},
                  {}))
    cases.append(("scaled_dot-wide", "scaled_dot", {"dim": 7, "dim_v": 5, "heads": 1, "seed": 10}, {}))
    return cases


CASES = _cases()


@pytest.mark.parametrize("score,case_kwargs,options", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_gradients_match_finite_differences(score, case_kwargs, options):
    g, arrays = make_case(score, **case_kwargs)
    assert g.nnz > 0
    grads = check_gradients(g, arrays, {"score": score, **options})
    if "tau" in options or score in TAU_SCORES:
        assert grads.tau.shape == () and grads.tau.dtype == np.float64
    # rows without edges contribute nothing
    empty = np.diff(np.asarray(g.indptr)) == 0
    assert np.all(grads.q[empty] == 0)
    no_out_edges = np.bincount(np.asarray(g.indices), minlength=g.n_src) == 0
    assert np.all(grads.k[no_out_edges] == 0) and np.all(grads.v[no_out_edges] == 0)


def test_dropout_changes_the_gradient():
    """Guard against a backward that ignores the dropout mask: with and without dropout
    the gradients differ, and each matches its own finite differences (above)."""
    g, arrays = make_case("dot", seed=11, edge_bias=True)
    R = np.random.default_rng(0).standard_normal((g.n_dst, 2, 2))
    grads = []
    for options in ({}, {"dropout": 0.5, "seed": 3}):
        out, ctx = sg.attention_forward(g, arrays["q"], arrays["k"], arrays["v"],
                                        edge_bias=arrays["edge_bias"], backend=BACKEND, **options)
        grads.append(sg.attention_backward(ctx, R))
    for name in ("q", "k", "v", "edge_bias"):
        assert not np.allclose(getattr(grads[0], name), getattr(grads[1], name)), name


def test_gradients_with_dropout_at_a_drawn_seed():
    """Without a seed the forward draws one; backward must use the same mask."""
    g, arrays = make_case("euclidean", seed=12, edge_bias=True)
    out, ctx = sg.attention_forward(g, arrays["q"], arrays["k"], arrays["v"], score="euclidean", tau=0.8,
                                    edge_bias=arrays["edge_bias"], dropout=0.4, backend=BACKEND)
    seed = ctx.spec.seed
    check_gradients(g, arrays, {"score": "euclidean", "tau": 0.8, "dropout": 0.4, "seed": seed})
    R = np.random.default_rng(1000).standard_normal(out.shape)
    _, ctx2 = sg.attention_forward(g, arrays["q"], arrays["k"], arrays["v"], score="euclidean", tau=0.8,
                                   edge_bias=arrays["edge_bias"], dropout=0.4, seed=seed, backend=BACKEND)
    a, b = sg.attention_backward(ctx, R), sg.attention_backward(ctx2, R)
    for (n, x), (_, y) in zip(a.items(), b.items()):
        assert np.array_equal(x, y), n


@pytest.mark.parametrize("score", SCORES)
def test_float32_gradients_keep_dtype_and_agree(score):
    g, arrays = make_case(score, seed=13, edge_bias=True)
    options = {"score": score, "dropout": 0.25, "seed": 1}
    if score in TAU_SCORES:
        options["tau"] = 1.5
    R = np.random.default_rng(0).standard_normal((g.n_dst, 2, 2))
    grads = {}
    for dtype in (np.float64, np.float32):
        a = {n: x.astype(dtype) for n, x in arrays.items()}
        out, ctx = sg.attention_forward(g, a["q"], a["k"], a["v"], att=a.get("att"), edge_bias=a["edge_bias"],
                                        backend=BACKEND, **options)
        grads[dtype] = sg.attention_backward(ctx, R.astype(dtype))
    for (name, g64), (_, g32) in zip(grads[np.float64].items(), grads[np.float32].items()):
        assert g32.dtype == np.float32 and g64.dtype == np.float64, name
        np.testing.assert_allclose(g32, g64, rtol=1e-3, atol=1e-4, err_msg=name)


# ---------------------------------------------------------------------------- hypothesis
@settings(max_examples=15)
@given(data=st.data(), score=st.sampled_from(SCORES))
def test_gradients_on_hypothesis_graphs(data, score):
    g = data.draw(csr_graphs(min_n=1, max_n=5, min_edges=1))
    inputs = data.draw(attention_inputs(g, score, np.float64, heads=data.draw(st.integers(1, 2)),
                                        dim=data.draw(st.integers(1, 3)), dim_v=2, styles=("uniform",),
                                        scale=1.0))
    assume(_ok_for_fd(g, score, inputs.q, inputs.k))
    options = {"score": score, "tau": inputs.tau}
    if score not in TAU_SCORES:
        options.pop("tau")
    if score in SLOPE_SCORES:
        options["negative_slope"] = data.draw(st.sampled_from([0.2, 0.0, 1.3]))
    if data.draw(st.booleans()):
        options.update(dropout=0.3, seed=data.draw(st.integers(0, 2**64 - 1)))
    arrays = {"q": inputs.q, "k": inputs.k, "v": inputs.v, "att": inputs.att, "edge_bias": inputs.edge_bias}
    check_gradients(g, {n: a for n, a in arrays.items() if a is not None}, options)


# ---------------------------------------------------------------------------- kinks
def _directional(g, arrays, options, R, name, idx, step, side):
    """One-sided (side=+1/-1) or central (side=0) difference of the loss in ``arrays[name][idx]``."""
    arrays = {n: a.copy() for n, a in arrays.items()}
    x = arrays[name]
    orig = x[idx]
    if side == 0:
        x[idx] = orig + step
        plus = loss(g, arrays, options, R)
        x[idx] = orig - step
        return (plus - loss(g, arrays, options, R)) / (2 * step)
    base = loss(g, arrays, options, R)
    x[idx] = orig + side * step
    return side * (loss(g, arrays, options, R) - base) / step


def _kink_case(score, offset):
    """Rows 0 and 1 of a 3 x 4 graph with every LeakyReLU argument of row 0 at ``offset``
    (exactly 0 for offset 0: q and k are exact binary fractions)."""
    g = CSRGraph.from_edge_index(np.array([0, 1, 2, 1, 3, 0]), np.array([0, 0, 0, 1, 1, 2]),
                                 num_src=4, num_dst=3)
    rng = np.random.default_rng(3)
    heads, dim = 2, 3
    if score == "additive":
        q = np.array([[0.5, -0.25], [0.75, 0.125], [-0.375, 0.5]])
        k = rng.choice([-1.5, -0.75, 1.25, 2.0], size=(4, heads))
        k[[0, 1, 2]] = -q[0] + offset  # z = q_0 + k_j = offset on row 0
    else:
        q = rng.choice([-1.0, -0.5, 0.5, 1.0], size=(3, heads, dim))
        k = rng.choice([-1.5, 1.5], size=(4, heads, dim))
        k[[0, 1, 2]] = -q[0] + offset
    arrays = {"q": q, "k": k, "v": rng.standard_normal((4, heads, 2))}
    if score == "gatv2":
        arrays["att"] = rng.standard_normal((heads, dim))
    return g, arrays


@pytest.mark.parametrize("slope", [0.2, 0.0, 1.7])
@pytest.mark.parametrize("score", SLOPE_SCORES)
def test_gradient_at_the_leaky_relu_kink(score, slope):
    """LeakyReLU arguments exactly 0: the gradient is the one-sided derivative of the
    slope branch (lrelu'(0) = slope, docs/math.md), i.e. the difference quotient from the
    left; just beside the kink (z = +-1e-4) it is the ordinary central difference."""
    options = {"score": score, "negative_slope": slope}
    for offset in (0.0, 1e-4, -1e-4):
        g, arrays = _kink_case(score, offset)
        out, ctx = sg.attention_forward(g, arrays["q"], arrays["k"], arrays["v"], att=arrays.get("att"),
                                        backend=BACKEND, **options)
        R = np.random.default_rng(7).standard_normal(out.shape)
        grads = dict(sg.attention_backward(ctx, R).items())
        for name in ("q", "k"):
            for idx in np.ndindex(arrays[name].shape):
                if offset == 0.0:
                    # q grows: z > 0 for row 0 (the other branch); k of row 0's sources: likewise.
                    want = _directional(g, arrays, options, R, name, idx, 1e-7, side=-1)
                else:
                    want = _directional(g, arrays, options, R, name, idx, 1e-6, side=0)
                np.testing.assert_allclose(grads[name][idx], want, rtol=1e-5, atol=1e-6,
                                           err_msg=f"{name}{idx} offset {offset}")
        if score == "gatv2":
            for idx in np.ndindex(arrays["att"].shape):
                want = _directional(g, arrays, options, R, "att", idx, 1e-6, side=0)
                np.testing.assert_allclose(grads["att"][idx], want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("norm", [0.0, 3e-9, 9.9e-9, 1.01e-8, 5e-8])
def test_cosine_gradient_below_and_near_the_norm_floor(norm):
    """Rows of q and k with norms below, at and just above COSINE_EPS (1e-8): the gradient
    is ``tau / eps * G`` below the floor and the projected one above (docs/math.md);
    difference steps are a fraction of the norm so that they do not cross the floor."""
    from sparsegat.spec import COSINE_EPS

    rng = np.random.default_rng(11)
    g = random_graph(rng, 5, 6, density=0.5, empty_rows=1)
    heads, dim = 2, 3
    q = rng.standard_normal((5, heads, dim))
    k = rng.standard_normal((6, heads, dim))
    for x, rows in ((q, [0, 2]), (k, [1, 3])):
        for r in rows:
            u = rng.standard_normal((heads, dim))
            x[r] = norm * u / np.linalg.norm(u, axis=-1, keepdims=True)
    arrays = {"q": q, "k": k, "v": rng.standard_normal((6, heads, 2))}
    options = {"score": "cosine", "tau": 1.5}
    out, ctx = sg.attention_forward(g, q, k, arrays["v"], backend=BACKEND, **options)
    R = np.random.default_rng(1).standard_normal(out.shape)
    grads = dict(sg.attention_backward(ctx, R).items())
    for name, rows in (("q", [0, 2]), ("k", [1, 3])):
        for r in rows:
            for idx in np.ndindex(heads, dim):
                full = (r,) + idx
                step = max(norm, COSINE_EPS) * 1e-4 if norm <= 2 * COSINE_EPS else norm * 1e-4
                want = _directional(g, arrays, options, R, name, full, step, side=0)
                got = grads[name][full]
                # the gradient is ~1/|x| times the others: compare relative to the row's size
                scale = np.abs(grads[name][r]).max() + 1e-300
                assert abs(got - want) <= 1e-4 * scale + 1e-6, (name, full, got, want)
    np.testing.assert_allclose(grads["tau"], _directional_tau(g, arrays, options, R), rtol=1e-5, atol=1e-7)


def _directional_tau(g, arrays, options, R):
    tau = options["tau"]
    plus = loss(g, arrays, {**options, "tau": tau + EPS}, R)
    minus = loss(g, arrays, {**options, "tau": tau - EPS}, R)
    return (plus - minus) / (2 * EPS)
