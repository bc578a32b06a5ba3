"""Bad input to the public functions: every rule raises ValueError/TypeError naming the argument.

Validation happens at the boundary, before any backend runs; calls that pass validation
use ``backend="numpy"`` (the reference) unless the test is about dispatch.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

import sparsegat as sg
from sparsegat import CSRGraph
from sparsegat.backends import ENV_VAR, is_available, select_backend
from sparsegat.spec import SCALAR_SCORES, SCORES, TAU_SCORES

N_DST, N_SRC, H, D, DV = 4, 5, 2, 3, 2


@pytest.fixture(autouse=True)
def _no_backend_env(monkeypatch):
    """Tests here control SPARSEGAT_BACKEND themselves."""
    monkeypatch.delenv(ENV_VAR, raising=False)


def graph(index_dtype=np.int32):
    # rows: 0 <- {0, 2, 4}, 1 <- {}, 2 <- {1}, 3 <- {0, 1, 2, 3, 4}
    src = [0, 2, 4, 1, 0, 1, 2, 3, 4]
    dst = [0, 0, 0, 2, 3, 3, 3, 3, 3]
    return CSRGraph.from_edge_index(src, dst, num_src=N_SRC, num_dst=N_DST, index_dtype=index_dtype)


def make(score, dtype=np.float64, edge_bias=True, seed=0):
    """A valid (g, arrays) pair; arrays has q, k, v, att, edge_bias."""
    rng = np.random.default_rng(seed)
    g = graph()
    tail = (H,) if score in SCALAR_SCORES else (H, D)
    arrays = {
        "q": rng.standard_normal((N_DST,) + tail).astype(dtype),
        "k": rng.standard_normal((N_SRC,) + tail).astype(dtype),
        "v": rng.standard_normal((N_SRC, H, DV)).astype(dtype),
        "att": rng.standard_normal((H, D)).astype(dtype) if score == "gatv2" else None,
        "edge_bias": rng.standard_normal((g.nnz, H)).astype(dtype) if edge_bias else None,
    }
    return g, arrays


def forward(g, a, **kw):
    kw.setdefault("backend", "numpy")
    return sg.attention_forward(g, a["q"], a["k"], a["v"], att=a["att"], edge_bias=a["edge_bias"], **kw)


def weights(g, a, **kw):
    kw.setdefault("backend", "numpy")
    return sg.attention_weights(g, a["q"], a["k"], att=a["att"], edge_bias=a["edge_bias"], **kw)


CALLS = {"forward": forward, "weights": weights}
call_param = pytest.mark.parametrize("call", list(CALLS.values()), ids=list(CALLS))


def call_and_input_param(names):
    """Parametrize over (call, input name), leaving out ``v`` for attention_weights (it takes none)."""
    return pytest.mark.parametrize("call,name", [
        pytest.param(c, n, id=f"{cid}-{n}") for cid, c in CALLS.items() for n in names
        if not (c is weights and n == "v")])


def check(exc, pattern, call, g, a, **kw):
    """``call`` raises ``exc`` whose message matches ``pattern``."""
    with pytest.raises(exc, match=pattern):
        call(g, a, **kw)


# ============================================================================ valid calls
@pytest.mark.parametrize("score", SCORES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_valid_inputs_pass(score, dtype):
    """The baseline of every test below: these inputs are accepted."""
    g, a = make(score, dtype)
    tau = 1.5 if score in TAU_SCORES else 1.0
    out, ctx = forward(g, a, score=score, tau=tau, dropout=0.25, seed=3)
    assert out.shape == (N_DST, H, DV) and out.dtype == dtype
    w = weights(g, a, score=score, tau=tau)
    assert w.shape == (g.nnz, H) and w.dtype == dtype
    grads = sg.attention_backward(ctx, np.ones_like(out))
    assert grads.q.shape == a["q"].shape


# ============================================================================ the graph argument
@call_param
@pytest.mark.parametrize("bad", [None, np.eye(3), "g", (np.array([0, 1]), np.array([0]))])
def test_g_not_a_graph(call, bad):
    _, a = make("dot")
    check(TypeError, r"g must be a CSRGraph", call, bad, a, score="dot")


def test_g_scipy_matrix_not_accepted():
    import scipy.sparse as sp

    _, a = make("dot")
    check(TypeError, r"g must be a CSRGraph, got csr_matrix", forward, sp.eye(4, 5, format="csr"), a, score="dot")


# ============================================================================ non-arrays
@call_and_input_param(["q", "k", "v", "att", "edge_bias"])
@pytest.mark.parametrize("make_bad", [lambda x: 1.0, lambda x: "array", lambda x: np.float64(1.0),
                                      lambda x: object()],
                         ids=["float", "str", "numpy-scalar", "object"])
def test_non_array_input(call, name, make_bad):
    score = "gatv2" if name == "att" else "dot"
    g, a = make(score)
    a[name] = make_bad(a[name])
    check(TypeError, rf"\b{name} must be a NumPy or CuPy array", call, g, a, score=score)


@call_and_input_param(["q", "k", "v"])
def test_required_input_none(call, name):
    """None for a required array is a TypeError naming it (it was an AttributeError)."""
    g, a = make("dot")
    a[name] = None
    check(TypeError, rf"\b{name} must be a NumPy or CuPy array \(or a nested list\), got None", call, g, a,
          score="dot")


@call_and_input_param(["q", "k", "v", "att", "edge_bias"])
def test_nested_lists_are_converted(call, name):
    """NumPy array-likes (nested lists) are converted once, like NumPy functions do."""
    g, a = make("gatv2")
    want = call(g, a, score="gatv2")
    got = call(g, {**a, name: a[name].tolist()}, score="gatv2")
    want, got = (r[0] if isinstance(r, tuple) else r for r in (want, got))
    assert np.array_equal(got, want)


@call_param
def test_list_of_integers_refused_by_dtype(call):
    g, a = make("dot")
    a["q"] = np.ones(a["q"].shape, dtype=np.int64).tolist()
    check(TypeError, r"q must have dtype float32 or float64, got int64", call, g, a, score="dot")


@call_param
def test_ragged_list_refused(call):
    g, a = make("dot")
    a["k"] = [[[1.0, 2.0, 3.0]], [[1.0]]]
    check(TypeError, r"k must be a NumPy or CuPy array, or convertible to one", call, g, a, score="dot")


@call_and_input_param(["q", "k", "v", "att", "edge_bias"])
def test_masked_arrays_refused(call, name):
    """A masked array's mask would be silently ignored: refused."""
    g, a = make("gatv2")
    a[name] = np.ma.masked_array(a[name], mask=np.zeros(a[name].shape, dtype=bool))
    check(TypeError, rf"\b{name} is a masked array", call, g, a, score="gatv2")


class _FakeGPUArray:
    """Stands for a torch/JAX/Numba array in GPU memory: NumPy could convert it, by copying."""

    def __init__(self, x, how):
        self._x, self._how = x, how

    def __array__(self, dtype=None, copy=None):
        return self._x

    def __getattr__(self, attr):
        if attr == "__cuda_array_interface__" and self._how == "cai":
            return {"shape": self._x.shape, "typestr": self._x.dtype.str, "data": (0, False), "version": 3}
        raise AttributeError(attr)

    def __dlpack_device__(self):
        return (2, 0) if self._how == "dlpack" else (1, 0)


@call_param
@pytest.mark.parametrize("how", ["cai", "dlpack"])
def test_gpu_arrays_of_other_libraries_refused(call, how):
    """Never copied to the host silently."""
    g, a = make("dot")
    a["q"] = _FakeGPUArray(a["q"], how)
    check(TypeError, r"q is a .*_FakeGPUArray on a GPU; pass a CuPy array", call, g, a, score="dot")


@call_param
def test_cpu_array_likes_with_dlpack_accepted(call):
    g, a = make("dot")
    want = call(g, a, score="dot")
    got = call(g, {**a, "q": _FakeGPUArray(a["q"], "cpu")}, score="dot")
    want, got = (r[0] if isinstance(r, tuple) else r for r in (want, got))
    assert np.array_equal(got, want)


def test_non_array_dout():
    g, a = make("dot")
    out, ctx = forward(g, a, score="dot")
    for bad in (None, 1.0, "dout"):
        with pytest.raises(TypeError, match=r"dout must be a NumPy or CuPy array"):
            sg.attention_backward(ctx, bad)
    with pytest.raises(TypeError, match=r"dout is a masked array"):
        sg.attention_backward(ctx, np.ma.masked_array(np.ones_like(out)))
    want = sg.attention_backward(ctx, np.ones_like(out))
    got = sg.attention_backward(ctx, np.ones_like(out).tolist())
    for (n, x), (m, y) in zip(want.items(), got.items()):
        assert n == m and np.array_equal(x, y), n


# ============================================================================ shapes
@call_param
@pytest.mark.parametrize("score", SCORES)
def test_q_wrong_ndim(call, score):
    g, a = make(score)
    a["q"] = a["q"][..., None] if score in SCALAR_SCORES else a["q"][..., 0]
    want = 2 if score in SCALAR_SCORES else 3
    check(ValueError, rf"q must be {want}-D, got shape", call, g, a, score=score)


@call_param
@pytest.mark.parametrize("score", SCORES)
def test_k_wrong_ndim(call, score):
    g, a = make(score)
    a["k"] = a["k"][..., None] if score in SCALAR_SCORES else a["k"][..., 0]
    want = 2 if score in SCALAR_SCORES else 3
    check(ValueError, rf"k must be {want}-D, got shape", call, g, a, score=score)


@call_param
@pytest.mark.parametrize("score", ["dot", "additive"])
def test_q_wrong_rows(call, score):
    g, a = make(score)
    a["q"] = np.concatenate([a["q"], a["q"][:1]])
    check(ValueError, rf"q must have n_dst={N_DST} rows, got shape \({N_DST + 1},", call, g, a, score=score)


@call_param
@pytest.mark.parametrize("score", ["dot", "additive"])
def test_k_wrong_rows(call, score):
    g, a = make(score)
    a["k"] = a["k"][:-1]
    check(ValueError, rf"k must have n_src={N_SRC} rows, got shape \({N_SRC - 1},", call, g, a, score=score)


def test_q_k_swapped_on_bipartite_graph():
    g, a = make("dot")
    a["q"], a["k"] = a["k"], a["q"]
    check(ValueError, r"q must have n_dst=4 rows", forward, g, a, score="dot")


@call_param
@pytest.mark.parametrize("score", SCORES)
def test_q_k_heads_mismatch(call, score):
    g, a = make(score)
    a["k"] = np.concatenate([a["k"], a["k"][:, :1]], axis=1)
    check(ValueError, r"q and k must agree in heads and features", call, g, a, score=score)


@call_param
@pytest.mark.parametrize("score", ["dot", "scaled_dot", "cosine", "euclidean", "gatv2"])
def test_q_k_features_mismatch(call, score):
    g, a = make(score)
    a["q"] = a["q"][:, :, :2]
    if score == "gatv2":
        a["att"] = a["att"][:, :2]
    check(ValueError, r"q and k must agree in heads and features.*\(4, 2, 2\).*\(5, 2, 3\)", call, g, a,
          score=score)


@call_param
def test_zero_heads_or_features(call):
    g, a = make("dot")
    a["q"], a["k"], a["v"] = a["q"][:, :0], a["k"][:, :0], a["v"][:, :0]
    a["edge_bias"] = None
    check(ValueError, r"q must have at least one head and one feature", call, g, a, score="dot")
    g, a = make("dot")
    a["q"], a["k"] = a["q"][:, :, :0], a["k"][:, :, :0]
    check(ValueError, r"q must have at least one head and one feature", call, g, a, score="dot")


@pytest.mark.parametrize("score", SCORES)
@pytest.mark.parametrize("shape", [(N_SRC + 1, H, DV), (N_SRC - 1, H, DV), (N_SRC, H + 1, DV),
                                   (N_SRC, H - 1, DV), (N_SRC, H, 0)])
def test_v_wrong_shape(score, shape):
    g, a = make(score)
    a["v"] = np.zeros(shape)
    check(ValueError, rf"v must have shape \(n_src={N_SRC}, heads={H}, Dv>=1\), got {re.escape(str(shape))}",
          forward, g, a, score=score)


def test_v_wrong_ndim():
    g, a = make("dot")
    a["v"] = a["v"][..., 0]
    check(ValueError, r"v must be 3-D", forward, g, a, score="dot")


@call_param
def test_gatv2_without_att(call):
    g, a = make("gatv2")
    a["att"] = None
    check(ValueError, r"gatv2.*needs att", call, g, a, score="gatv2")


@call_param
@pytest.mark.parametrize("score", [s for s in SCORES if s != "gatv2"])
def test_att_with_other_score(call, score):
    g, a = make(score)
    a["att"] = np.ones((H, D))
    check(ValueError, rf"att applies only to score='gatv2'.*{score}", call, g, a, score=score)


@call_param
@pytest.mark.parametrize("shape", [(H, D + 1), (H + 1, D), (D, H), (H * D,), (1, H, D)])
def test_att_wrong_shape(call, shape):
    g, a = make("gatv2")
    a["att"] = np.ones(shape)
    pattern = r"att must be 2-D" if len(shape) != 2 else rf"att must have shape \(heads, D\)=\({H}, {D}\), got"
    check(ValueError, pattern, call, g, a, score="gatv2")


@call_param
@pytest.mark.parametrize("score", SCORES)
@pytest.mark.parametrize("delta", [(1, 0), (-1, 0), (0, 1), (0, -1)])
def test_edge_bias_wrong_shape(call, score, delta):
    g, a = make(score)
    shape = (g.nnz + delta[0], H + delta[1])
    a["edge_bias"] = np.zeros(shape)
    check(ValueError, rf"edge_bias must have shape \(nnz, heads\)=\({g.nnz}, {H}\), got {re.escape(str(shape))}",
          call, g, a, score=score)


@call_param
def test_edge_bias_wrong_ndim(call):
    g, a = make("dot")
    a["edge_bias"] = a["edge_bias"][:, 0]
    check(ValueError, r"edge_bias must be 2-D", call, g, a, score="dot")


def test_edge_bias_of_dense_shape_refused():
    g, a = make("dot")
    a["edge_bias"] = np.zeros((N_DST, N_SRC, H))
    check(ValueError, r"edge_bias must be 2-D", forward, g, a, score="dot")


# ============================================================================ dtypes
@call_and_input_param(["q", "k", "v", "att", "edge_bias"])
@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.float16, np.complex128, np.bool_, object])
def test_non_float_dtype(call, name, dtype):
    g, a = make("gatv2")
    a[name] = a[name].astype(dtype)
    check(TypeError, rf"\b{name} must have dtype float32 or float64, got {np.dtype(dtype)}", call, g, a,
          score="gatv2")


@call_and_input_param(["k", "v", "att", "edge_bias"])
def test_mixed_dtypes(call, name):
    for base, other in ((np.float64, np.float32), (np.float32, np.float64)):
        g, a = make("gatv2", dtype=base)
        a[name] = a[name].astype(other)
        check(TypeError, rf"mixed dtypes: q is {np.dtype(base)} but {name} is {np.dtype(other)}", call, g, a,
              score="gatv2")


def test_dout_wrong_dtype_and_shape():
    for dtype, other in ((np.float64, np.float32), (np.float32, np.float64)):
        g, a = make("dot", dtype=dtype)
        out, ctx = forward(g, a, score="dot")
        with pytest.raises(TypeError, match=rf"dout must have dtype {np.dtype(dtype)}.*got {np.dtype(other)}"):
            sg.attention_backward(ctx, out.astype(other))
        with pytest.raises(TypeError, match=r"dout must have dtype"):
            sg.attention_backward(ctx, np.ones(out.shape, dtype=np.int64))
    g, a = make("dot")
    out, ctx = forward(g, a, score="dot")
    for shape in [(N_DST, H, DV + 1), (N_DST + 1, H, DV), (N_DST, H), (N_DST, H, DV, 1), ()]:
        with pytest.raises(ValueError, match=rf"dout must have the shape of out.*got {re.escape(str(shape))}"):
            sg.attention_backward(ctx, np.ones(shape))


# ============================================================================ score, options
@call_param
@pytest.mark.parametrize("bad", ["Dot", "softmax", "", None, 3, ("dot",)])
def test_unknown_score(call, bad):
    g, a = make("dot")
    check(ValueError, rf"score must be one of .*got {re.escape(repr(bad))}", call, g, a, score=bad)


@call_param
@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, -1e-300, math.nan, math.inf, -math.inf])
def test_dropout_out_of_range(call, bad):
    g, a = make("dot")
    check(ValueError, r"dropout must", call, g, a, score="dot", dropout=bad, seed=0)


@call_param
@pytest.mark.parametrize("bad", [None, [0.1], True, 1j, np.array([0.1, 0.2])])
def test_dropout_not_a_number(call, bad):
    g, a = make("dot")
    check(TypeError, r"dropout must be a real number", call, g, a, score="dot", dropout=bad, seed=0)


@call_param
def test_dropout_just_below_one_accepted(call):
    g, a = make("dot")
    call(g, a, score="dot", dropout=np.nextafter(1.0, 0.0), seed=0)
    call(g, a, score="dot", dropout=np.float32(0.5), seed=0)


@call_param
@pytest.mark.parametrize("score", TAU_SCORES)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, np.float64("nan"), np.array(np.inf)])
def test_tau_not_finite(call, score, bad):
    g, a = make(score)
    check(ValueError, r"tau must be finite", call, g, a, score=score, tau=bad)


@call_param
@pytest.mark.parametrize("bad", [None, [2.0], np.ones(2), True, 2j])
def test_tau_not_a_number(call, bad):
    g, a = make("cosine")
    check(TypeError, r"tau must be a real number", call, g, a, score="cosine", tau=bad)


@call_param
@pytest.mark.parametrize("score", TAU_SCORES)
def test_tau_scalar_types_accepted(call, score):
    g, a = make(score)
    ref = call(g, a, score=score, tau=2.0)
    ref = ref[0] if isinstance(ref, tuple) else ref
    for tau in (2, np.float32(2.0), np.int64(2), np.array(2.0), np.array([2.0])):
        got = call(g, a, score=score, tau=tau)
        got = got[0] if isinstance(got, tuple) else got
        assert np.array_equal(got, ref)


@call_param
@pytest.mark.parametrize("score", [s for s in SCORES if s not in TAU_SCORES])
@pytest.mark.parametrize("tau", [2.0, 0.0, -1.0])
def test_tau_with_non_tau_score(call, score, tau):
    g, a = make(score)
    check(ValueError, rf"tau applies only to the scores cosine, euclidean.*tau={tau}.*{score}", call, g, a,
          score=score, tau=tau)
    call(g, a, score=score, tau=1.0)  # the default is accepted


@call_param
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_negative_slope_not_finite(call, bad):
    g, a = make("additive")
    check(ValueError, r"negative_slope must be finite", call, g, a, score="additive", negative_slope=bad)
    check(TypeError, r"negative_slope must be a real number", call, g, a, score="additive",
          negative_slope=None)


@call_param
@pytest.mark.parametrize("bad", [np.array([True]), np.array(True), np.array(["2.0"]), np.array([b"2"]),
                                 np.array([2 + 0j]), np.array([2.0], dtype=object),
                                 np.ma.masked_array([2.0])],
                         ids=["bool1", "bool0d", "str", "bytes", "complex", "object", "masked"])
def test_tau_arrays_of_non_real_dtype_refused(call, bad):
    """Size-1 arrays must hold a real number: booleans and strings are not silently read as one."""
    g, a = make("cosine")
    check(TypeError, r"tau must be a real number", call, g, a, score="cosine", tau=bad)


@call_param
@pytest.mark.parametrize("name,score", [("tau", "cosine"), ("negative_slope", "additive"),
                                        ("dropout", "dot")])
def test_integers_beyond_float_range(call, name, score):
    """10**400 was an OverflowError."""
    g, a = make(score)
    check(ValueError, rf"{name} must be finite, got an integer of 401 digits, beyond the range of a float", call, g, a,
          score=score, **{name: 10**400}, seed=0)


@call_param
@pytest.mark.parametrize("name,score", [("tau", "euclidean"), ("tau", "cosine"), ("negative_slope", "additive"),
                                        ("negative_slope", "gatv2")])
def test_options_must_be_finite_in_the_input_dtype(call, name, score):
    """1e300 is a finite Python float but inf in float32: refused there, accepted in float64."""
    g, a = make(score, np.float32)
    check(ValueError, rf"{name}=1e\+300 is not finite in the inputs' dtype float32", call, g, a, score=score,
          **{name: 1e300})
    g, a = make(score, np.float64, edge_bias=False)
    if name == "negative_slope":
        call(g, a, score=score, **{name: 1e300})  # finite in float64 (and small inputs keep scores finite)
    if name == "tau":  # the largest float32 itself is fine (with inputs small enough for the scores)
        g, a = make(score, np.float32, edge_bias=False)
        a["q"], a["k"] = a["q"] * np.float32(1e-20), a["k"] * np.float32(1e-20)
        call(g, a, score=score, tau=float(np.finfo(np.float32).max))


def test_negative_slope_unused_by_the_score_is_not_checked_against_the_dtype():
    g, a = make("dot", np.float32)
    forward(g, a, score="dot", negative_slope=1e300)


@call_param
@pytest.mark.parametrize("name,value,score", [("dropout", "0.1", "dot"), ("tau", "2", "cosine"),
                                              ("negative_slope", "0.2", "additive"),
                                              ("tau", b"2", "euclidean")])
def test_numeric_options_refuse_strings(call, name, value, score):
    g, a = make(score)
    check(TypeError, rf"{name} must be a real number", call, g, a, score=score, **{name: value})


@call_param
@pytest.mark.parametrize("bad", [-1, 2**64, 2**70, -(2**63)])
def test_seed_out_of_range(call, bad):
    g, a = make("dot")
    check(ValueError, rf"seed must lie in \[0, 2\*\*64\), got {bad}", call, g, a, score="dot", dropout=0.5, seed=bad)


@call_param
@pytest.mark.parametrize("bad", [1.5, 1.0, "1", True, np.float64(3), np.array([1]), [1]])
def test_seed_not_an_integer(call, bad):
    g, a = make("dot")
    check(TypeError, r"seed must be None or an integer", call, g, a, score="dot", dropout=0.5, seed=bad)


@call_param
def test_seed_integer_types_accepted(call):
    g, a = make("dot")
    ref = call(g, a, score="dot", dropout=0.5, seed=7)
    ref = ref[0] if isinstance(ref, tuple) else ref
    for seed in (np.int64(7), np.uint64(7), np.int32(7)):
        got = call(g, a, score="dot", dropout=0.5, seed=seed)
        got = got[0] if isinstance(got, tuple) else got
        assert np.array_equal(got, ref)
    call(g, a, score="dot", dropout=0.5, seed=2**64 - 1)
    call(g, a, score="dot", seed=5)  # a seed without dropout is harmless


# ============================================================================ backends and dispatch
@call_param
@pytest.mark.parametrize("bad", ["torch", "NumPy", "", 0])
def test_unknown_backend(call, bad):
    g, a = make("dot")
    check(ValueError, rf"backend must be one of numpy, numba, cupy; got {re.escape(repr(bad))}", call, g, a,
          score="dot", backend=bad)


@call_param
def test_backend_that_cannot_take_numpy_arrays(call):
    g, a = make("dot")
    check(TypeError, r"backend='cupy' takes cupy arrays, but the inputs are numpy arrays", call, g, a,
          score="dot", backend="cupy")


@call_param
@pytest.mark.skipif(is_available("cupy"), reason="CuPy is installed")
def test_backend_cupy_without_cupy_says_so(call):
    """Both problems are named: the array kind and the missing package."""
    g, a = make("dot")
    check(TypeError, r"backend='cupy' takes cupy arrays, but the inputs are numpy arrays; besides, cupy is "
                     r"not installed here \(pip install 'sparsegat\[cuda12\]'\)", call, g, a,
          score="dot", backend="cupy")


def test_default_dispatch_of_numpy_arrays():
    assert select_backend("numpy") == ("numba" if is_available("numba") else "numpy")
    assert select_backend("numpy", "numpy") == "numpy"


@call_param
def test_env_override_valid(call, monkeypatch):
    g, a = make("dot")
    monkeypatch.setenv(ENV_VAR, "numpy")
    assert select_backend("numpy") == "numpy"
    res = call(g, a, score="dot", backend=None)
    if isinstance(res, tuple):
        assert res[1].backend == "numpy"


def test_env_empty_means_unset(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "")
    assert select_backend("numpy") == ("numba" if is_available("numba") else "numpy")


@call_param
@pytest.mark.parametrize("bad", ["torch", "NUMPY", " numpy"])
def test_env_override_invalid(call, monkeypatch, bad):
    g, a = make("dot")
    monkeypatch.setenv(ENV_VAR, bad)
    check(ValueError, rf"{ENV_VAR} must be one of numpy, numba, cupy; got {re.escape(repr(bad))}", call, g, a,
          score="dot", backend=None)


@call_param
def test_env_override_wrong_array_kind(call, monkeypatch):
    g, a = make("dot")
    monkeypatch.setenv(ENV_VAR, "cupy")
    check(TypeError, rf"{ENV_VAR}='cupy' takes cupy arrays", call, g, a, score="dot", backend=None)


def test_backend_argument_beats_env(monkeypatch):
    g, a = make("dot")
    monkeypatch.setenv(ENV_VAR, "torch")
    out, ctx = forward(g, a, score="dot", backend="numpy")
    assert ctx.backend == "numpy"


def test_validation_runs_before_backend_choice():
    """A bad input is reported as such whatever backend was asked for."""
    g, a = make("dot")
    a["q"] = a["q"].astype(np.int64)
    for backend in ("numpy", "numba", "cupy", None):
        check(TypeError, r"q must have dtype", forward, g, a, score="dot", backend=backend)


# ============================================================================ backward's ctx
@pytest.mark.parametrize("bad", [None, {}, "ctx", 0])
def test_ctx_wrong_type(bad):
    with pytest.raises(TypeError, match=r"ctx must be the AttentionContext returned by attention_forward"):
        sg.attention_backward(bad, np.ones((N_DST, H, DV)))


def test_ctx_is_the_forward_tuple():
    g, a = make("dot")
    res = forward(g, a, score="dot")
    with pytest.raises(TypeError, match=r"ctx must be the AttentionContext.*got tuple"):
        sg.attention_backward(res, np.ones_like(res[0]))


# ============================================================================ inputs never modified
def _frozen_copies(a):
    """Copies to compare with, and the originals made read-only so any in-place write raises."""
    copies = {n: None if x is None else x.copy() for n, x in a.items()}
    for x in a.values():
        if x is not None:
            x.flags.writeable = False
    return copies


@pytest.mark.parametrize("score", SCORES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_inputs_never_modified(score, dtype):
    g, a = make(score, dtype)
    indptr, indices = g.indptr.copy(), g.indices.copy()
    copies = _frozen_copies(a)
    tau = 0.7 if score in TAU_SCORES else 1.0
    out, ctx = forward(g, a, score=score, tau=tau, dropout=0.3, seed=11)
    out_copy = out.copy()
    dout = np.random.default_rng(1).standard_normal(out.shape).astype(dtype)
    dout_copy = dout.copy()
    dout.flags.writeable = False
    grads = sg.attention_backward(ctx, dout)
    weights(g, a, score=score, tau=tau, dropout=0.3, seed=11)
    for name, c in copies.items():
        if c is not None:
            assert np.array_equal(a[name], c), name
    assert np.array_equal(dout, dout_copy) and np.array_equal(out, out_copy)
    assert np.array_equal(g.indptr, indptr) and np.array_equal(g.indices, indices)
    # gradients are new arrays, not views of the inputs
    for name, gr in grads.items():
        src = a.get(name)
        if src is not None:
            assert not np.shares_memory(gr, src), name
        assert not np.shares_memory(gr, dout), name


@pytest.mark.parametrize("score", SCORES)
def test_non_contiguous_inputs_accepted(score):
    """Strided views are valid input and give the same results as contiguous copies."""
    g, a = make(score)
    strided = {}
    for name, x in a.items():
        if x is None:
            continue
        big = np.zeros(x.shape[:-1] + (2 * x.shape[-1],), dtype=x.dtype)
        big[..., ::2] = x
        strided[name] = big[..., ::2]
        assert not strided[name].flags.c_contiguous
    b = {**a, **strided}
    tau = 1.3 if score in TAU_SCORES else 1.0
    out_a, ctx_a = forward(g, a, score=score, tau=tau)
    out_b, ctx_b = forward(g, b, score=score, tau=tau)
    assert np.array_equal(out_a, out_b)
    dout = np.ones_like(out_a)
    ga, gb = sg.attention_backward(ctx_a, dout), sg.attention_backward(ctx_b, np.asfortranarray(dout))
    for (na, xa), (nb, xb) in zip(ga.items(), gb.items()):
        assert na == nb and np.array_equal(xa, xb), na
    assert np.array_equal(weights(g, a, score=score, tau=tau), weights(g, b, score=score, tau=tau))
