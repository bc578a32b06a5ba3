"""The NaN/inf rule (docs/contract.md, "Non-finite values"), on every CPU backend.

1. Finite inputs give finite results, or a ValueError naming what overflowed (a score,
   ``out``, a gradient): never NaN or inf silently.
2. ``check_finite=True`` (the default) refuses NaN/inf in ``q``, ``k``, ``v``, ``att``,
   ``edge_bias`` and ``dout`` with a ValueError naming the argument, so every backend
   treats them alike; ``check_finite=False`` skips that check, and then the results are
   unspecified but the call never crashes: it returns or raises ValueError.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

import sparsegat as sg
from sparsegat.backends import available_backends
from sparsegat.spec import SCALAR_SCORES, SCORES, TAU_SCORES, AttentionSpec

BACKENDS = [b for b in ("numpy", "numba") if b in available_backends()]
backend_param = pytest.mark.parametrize("backend", BACKENDS)
F32, F64 = np.dtype(np.float32), np.dtype(np.float64)
H, D, DV = 2, 4, 3


def graph() -> sg.CSRGraph:
    # rows: 0 <- {0, 1, 2}, 1 <- {}, 2 <- {1}, 3 <- {0, 2}
    return sg.CSRGraph.from_edge_index([0, 1, 2, 1, 0, 2], [0, 0, 0, 2, 3, 3], num_src=3, num_dst=4)


def inputs(score: str, dtype, seed: int = 0, bias: bool = True) -> dict:
    rng = np.random.default_rng(seed)
    g = graph()
    tail = (H,) if score in SCALAR_SCORES else (H, D)
    return dict(
        q=rng.uniform(-1, 1, (4,) + tail).astype(dtype),
        k=rng.uniform(-1, 1, (3,) + tail).astype(dtype),
        v=rng.uniform(-1, 1, (3, H, DV)).astype(dtype),
        att=rng.uniform(-1, 1, (H, D)).astype(dtype) if score == "gatv2" else None,
        edge_bias=rng.uniform(-1, 1, (g.nnz, H)).astype(dtype) if bias else None,
    )


def options(score: str) -> dict:
    return dict(score=score, tau=0.5 if score in TAU_SCORES else 1.0)


def forward(a: dict, backend: str, **kw):
    return sg.attention_forward(graph(), a["q"], a["k"], a["v"], att=a["att"], edge_bias=a["edge_bias"],
                                backend=backend, **kw)


def weights(a: dict, backend: str, **kw):
    return sg.attention_weights(graph(), a["q"], a["k"], att=a["att"], edge_bias=a["edge_bias"],
                                backend=backend, **kw)


# ============================================================================ 1. overflow of finite inputs
def overflowing(case: str, dtype) -> tuple[str, dict]:
    """Finite inputs whose scores overflow the dtype (the reproducers of issue 11)."""
    big = {F32: 1e20, F64: 1e160}[np.dtype(dtype)]
    top = np.finfo(dtype).max
    if case in ("dot", "scaled_dot"):      # q . k = D * big**2 -> inf
        a = inputs(case, dtype)
        a["q"][:], a["k"][:] = big, big
        return case, a
    if case == "dot-nan":                  # big**2 - big**2 -> inf - inf = NaN
        a = inputs("dot", dtype)
        a["q"][:] = big
        a["k"][:] = big
        a["k"][..., 1::2] = -big
        return "dot", a
    if case == "euclidean":                # -tau |q - k|^2 -> -inf on every edge
        a = inputs(case, dtype)
        a["q"][:], a["k"][:] = big, -big
        return case, a
    if case == "additive":                 # q + k beyond the largest float
        a = inputs(case, dtype)
        a["q"][:], a["k"][:] = top, top
        return case, a
    if case == "additive-negative":        # -max - max -> -inf on every edge
        a = inputs("additive", dtype)
        a["q"][:], a["k"][:] = -top, -top
        return "additive", a
    if case == "gatv2":                    # att 0 times an overflowed LeakyReLU -> NaN
        a = inputs(case, dtype)
        a["q"][:], a["k"][:] = top, top
        a["att"][:, 0] = 0
        return case, a
    if case == "edge_bias":                # a finite bias near the top plus a positive score
        a = inputs("dot", dtype)
        a["q"][:] = a["k"][:] = {F32: 1e16, F64: 1e150}[np.dtype(dtype)]  # scores far below the top...
        a["edge_bias"][:] = top                                             # ...but above its last ulp
        return "dot", a
    raise AssertionError(case)


OVERFLOW_CASES = ["dot", "scaled_dot", "dot-nan", "euclidean", "additive", "additive-negative", "gatv2",
                  "edge_bias"]


@backend_param
@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
@pytest.mark.parametrize("case", OVERFLOW_CASES)
def test_overflowing_scores_raise_in_forward(backend, dtype, case):
    score, a = overflowing(case, dtype)
    with pytest.raises(ValueError, match=rf"the '{score}' scores of row \d+ \(head \d+\) overflowed {dtype}.*; use "):
        forward(a, backend, **options(score))


@backend_param
@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
@pytest.mark.parametrize("case", OVERFLOW_CASES)
def test_overflowing_scores_raise_in_weights(backend, dtype, case):
    score, a = overflowing(case, dtype)
    with pytest.raises(ValueError, match=rf"non-finite value in the weights .*'{score}' score overflowed {dtype}"):
        weights(a, backend, **options(score))


@backend_param
def test_the_message_suggests_remedies(backend):
    score, a = overflowing("dot", F32)
    with pytest.raises(ValueError, match=r"score='scaled_dot'.*float64 inputs"):
        forward(a, backend, **options(score))
    score, a = overflowing("dot", F64)
    with pytest.raises(ValueError, match=r"score='scaled_dot'") as info:
        forward(a, backend, **options(score))
    assert "float64 inputs" not in str(info.value)


@backend_param
@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
@pytest.mark.parametrize("score", SCORES)
def test_large_finite_scores_stay_finite(backend, dtype, score):
    """Just below the limits nothing is refused, and the result agrees with the reference."""
    a = inputs(score, dtype)
    scale = {F32: 1e18, F64: 1e153}[np.dtype(dtype)] if score not in ("additive", "gatv2") else \
        float(np.finfo(dtype).max) / 8
    a["q"], a["k"] = a["q"] * dtype.type(scale), a["k"] * dtype.type(scale)
    if score == "gatv2":
        a["att"] = a["att"] * dtype.type(1e-3)
    kw = options(score)
    if score == "euclidean":
        kw["tau"] = 1e-3 / scale ** 2 * 1e3
    out, ctx = forward(a, backend, **kw)
    ref, _ = forward(a, "numpy", **kw)
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out, ref, rtol=2e-4 if dtype == F32 else 1e-9, atol=1e-5)
    assert np.all(np.isfinite(weights(a, backend, **kw)))


@backend_param
def test_overflow_in_backward_names_the_gradient(backend):
    """One edge's euclidean score is -inf (weight 0: the forward is right), but the tau
    gradient multiplies its zero weight by an infinite distance."""
    a = inputs("euclidean", F32, bias=False)
    a["q"][:] = 0
    a["k"][:] = 0
    a["k"][2] = 1e20               # rows 0 and 3 see sources 0 and 2: only source 2's score overflows
    out, ctx = forward(a, backend, score="euclidean", tau=0.5)
    assert np.all(np.isfinite(out))
    with pytest.raises(ValueError, match=r"non-finite value in the gradient of tau although the inputs are "
                                         r"finite: a 'euclidean' score"):
        sg.attention_backward(ctx, np.ones_like(out))


@pytest.mark.skipif("numba" not in BACKENDS, reason="numba not installed")
def test_backends_agree_on_an_infinite_bias_now_refused():
    """numpy gave a NaN row and numba the limit for an edge_bias of +inf: both refuse it now."""
    a = inputs("dot", F64)
    a["edge_bias"][0, 0] = np.inf
    for backend in BACKENDS:
        with pytest.raises(ValueError, match=r"edge_bias contains NaN or infinite values"):
            forward(a, backend, score="dot")


# ============================================================================ 2. check_finite
ARRAY_NAMES = ["q", "k", "v", "att", "edge_bias"]
BAD_VALUES = [math.nan, math.inf, -math.inf]


@backend_param
@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
@pytest.mark.parametrize("name", ARRAY_NAMES)
@pytest.mark.parametrize("bad", BAD_VALUES, ids=str)
def test_check_finite_refuses_non_finite_inputs(backend, dtype, name, bad):
    score = "gatv2" if name == "att" else "dot"
    a = inputs(score, dtype)
    a[name].flat[a[name].size // 2] = bad
    with pytest.raises(ValueError, match=rf"^{name} contains NaN or infinite values; .*check_finite=False"):
        forward(a, backend, score=score)
    if name != "v":
        with pytest.raises(ValueError, match=rf"^{name} contains NaN or infinite values"):
            weights(a, backend, score=score)


@backend_param
@pytest.mark.parametrize("bad", BAD_VALUES, ids=str)
def test_check_finite_refuses_non_finite_dout(backend, bad):
    a = inputs("dot", F32)
    out, ctx = forward(a, backend, score="dot")
    dout = np.ones_like(out)
    dout[1, 0, 2] = bad
    with pytest.raises(ValueError, match=r"^dout contains NaN or infinite values"):
        sg.attention_backward(ctx, dout)


@backend_param
def test_check_finite_sees_strided_inputs(backend):
    """The check runs on the contiguous copies, so a NaN in a strided view is found."""
    a = inputs("dot", F64)
    big = np.zeros(a["v"].shape[:-1] + (2 * DV,))
    big[..., ::2] = a["v"]
    big[2, 1, 4] = np.nan
    a["v"] = big[..., ::2]
    with pytest.raises(ValueError, match=r"^v contains NaN"):
        forward(a, backend, score="dot")


@backend_param
@pytest.mark.parametrize("score", SCORES)
@pytest.mark.parametrize("name", ARRAY_NAMES)
@pytest.mark.parametrize("bad", BAD_VALUES, ids=str)
@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_check_finite_false_never_crashes(backend, score, name, bad, dropout):
    """Unspecified results, but a result or a ValueError: never another exception or a crash."""
    if name == "att" and score != "gatv2":
        return
    a = inputs(score, F32)
    a[name].flat[::3] = bad
    kw = dict(**options(score), dropout=dropout, seed=3, check_finite=False)
    try:
        out, ctx = forward(a, backend, **kw)
    except ValueError as exc:
        assert "check_finite=False skipped that check" in str(exc)
    else:
        assert out.shape == (4, H, DV)
        grads = sg.attention_backward(ctx, np.ones_like(out), check_finite=False)
        assert grads.q.shape == a["q"].shape
    try:
        w = weights(a, backend, **kw)
    except ValueError as exc:
        assert "check_finite=False skipped that check" in str(exc)
    else:
        assert w.shape == (graph().nnz, H)


@backend_param
def test_check_finite_false_with_finite_inputs_is_the_same(backend):
    a = inputs("gatv2", F64)
    out, ctx = forward(a, backend, score="gatv2")
    out2, ctx2 = forward(a, backend, score="gatv2", check_finite=False)
    assert np.array_equal(out, out2)
    g1 = sg.attention_backward(ctx, np.ones_like(out))
    g2 = sg.attention_backward(ctx2, np.ones_like(out), check_finite=False)
    for (n, x), (m, y) in zip(g1.items(), g2.items()):
        assert n == m and np.array_equal(x, y)
    assert np.array_equal(weights(a, backend, score="gatv2"), weights(a, backend, score="gatv2", check_finite=False))


@backend_param
def test_check_finite_false_nan_dout_does_not_crash(backend):
    a = inputs("cosine", F32)
    out, ctx = forward(a, backend, score="cosine")
    dout = np.full_like(out, np.nan)
    try:
        sg.attention_backward(ctx, dout, check_finite=False)
    except ValueError as exc:
        assert "check_finite=False skipped that check" in str(exc)


# ============================================================================ 3. the CUDA kernels, emulated
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(scope="module")
def emulated():
    from cuda_emulation import harness
    from sparsegat.backends.cuda import launch as cl

    if not harness.compiler_available():
        pytest.skip(f"no host C++ compiler ({harness.CXX})")
    names = set()
    for score in ("dot", "euclidean", "additive"):
        d = 1 if score == "additive" else D
        for dv in (DV, 0):
            names |= set(cl.config_kernel_names(score, F32, np.dtype(np.int32), cl.feature_geometry(score, d, dv, 4)))
    libs, _ = harness.build_libraries(names)
    return cl, harness.EmulatedRuntime(libs)


def _emulated_forward_check(emulated, case):
    from sparsegat.attention import _check_forward_result

    cl, rt = emulated
    score, a = overflowing(case, F32)
    g = graph().with_index_dtype(np.int32)
    out, saved = cl.forward(g, a["q"], a["k"], a["v"], a["att"], a["edge_bias"], AttentionSpec(**options(score)), rt)
    _check_forward_result(AttentionSpec(**options(score)), F32, saved, out, True)


@pytest.mark.cuda_emulated
@pytest.mark.parametrize("case", ["dot", "dot-nan", "additive", "edge_bias"])
def test_cuda_emulated_overflow_is_refused_at_the_boundary(emulated, case):
    """The public boundary's check covers the CUDA backend for scores that overflow to +inf
    or NaN: the kernels save the row statistics of every non-empty row as computed (NaN
    here), so the boundary names the scores, as for the CPU backends."""
    score = overflowing(case, F32)[0]
    with pytest.raises(ValueError, match=rf"the '{score}' scores of row \d+ \(head \d+\) overflowed float32"):
        _emulated_forward_check(emulated, case)


@pytest.mark.cuda_emulated
@pytest.mark.parametrize("case", ["euclidean", "additive-negative"])
def test_cuda_emulated_all_minus_inf_rows_are_refused(emulated, case):
    """Every score of a row -inf (l = 0): the kernel saves log(0) = -inf, not the 0 of an
    empty row, so the boundary refuses it."""
    score = overflowing(case, F32)[0]
    with pytest.raises(ValueError, match=rf"the '{score}' scores of row \d+ \(head \d+\) overflowed float32"):
        _emulated_forward_check(emulated, case)


@pytest.mark.cuda_emulated
def test_cuda_emulated_empty_rows_keep_zero_statistics(emulated):
    """Only an empty row saves rmax = rlog = 0 (and out = 0); finite scores pass the boundary."""
    from sparsegat.attention import _check_forward_result
    from sparsegat.spec import ROW_LOG_DENOM, ROW_MAX

    cl, rt = emulated
    a = inputs("dot", F32)
    g = graph().with_index_dtype(np.int32)  # row 1 has no edges
    spec = AttentionSpec("dot")
    out, saved = cl.forward(g, a["q"], a["k"], a["v"], None, a["edge_bias"], spec, rt)
    _check_forward_result(spec, F32, saved, out, True)
    assert np.all(out[1] == 0) and np.all(saved[ROW_MAX][1] == 0) and np.all(saved[ROW_LOG_DENOM][1] == 0)
    assert np.all(saved[ROW_LOG_DENOM][[0, 3]] > 0)  # rows of several edges: log l > 0


def _minus_inf_row_case(long_row: bool):
    """Row 0 with every edge_bias -inf (all its scores -inf), row 3 with one -inf score
    among finite ones; ``long_row``: row 0 has 300 edges, two segments of the emulated
    geometry (D = 4, Dv = 3: 8 groups, 256 edges a segment), so sg_attn_fwd_merge saves
    its statistics."""
    n_src = 300 if long_row else 3
    first = list(range(n_src)) if long_row else [0, 1, 2]
    rows = [first, [], [1], [0, 2]]
    indptr = np.cumsum([0] + [len(r) for r in rows])
    g = sg.CSRGraph(indptr, np.array([j for r in rows for j in r]), (4, n_src)).with_index_dtype(np.int32)
    rng = np.random.default_rng(5)
    a = dict(q=rng.uniform(-1, 1, (4, H, D)).astype(F32), k=rng.uniform(-1, 1, (n_src, H, D)).astype(F32),
             v=rng.uniform(-1, 1, (n_src, H, DV)).astype(F32), att=None,
             edge_bias=rng.uniform(-1, 1, (g.nnz, H)).astype(F32))
    a["edge_bias"][:len(first)] = -np.inf   # row 0: every score -inf
    a["edge_bias"][-1, 0] = -np.inf         # row 3, head 0: one -inf score, one finite
    return g, a


@pytest.mark.cuda_emulated
@pytest.mark.parametrize("long_row", [False, True], ids=["one-segment", "merged"])
def test_cuda_emulated_minus_inf_rows_match_the_reference(emulated, long_row):
    """(check_finite=False inputs) A row whose scores are all -inf saves what the numpy
    backend saves, ROW_MAX = -inf and ROW_LOG_DENOM = NaN (not the 0, 0 of an empty row),
    in the fused kernel and in the merge of a row's segments, so the shared boundary check
    refuses it for every backend; a single -inf score beside a finite one has weight 0."""
    from sparsegat.attention import _check_forward_result
    from sparsegat.backends import numpy as ref
    from sparsegat.spec import ROW_LOG_DENOM, ROW_MAX

    cl, rt = emulated
    g, a = _minus_inf_row_case(long_row)
    spec = AttentionSpec("dot")
    args = (g, a["q"], a["k"], a["v"], None, a["edge_bias"], spec)
    out, saved = cl.forward(*args, rt)
    r_out, r_saved = ref.forward(*args)
    assert np.all(saved[ROW_MAX][0] == -np.inf) and np.all(np.isnan(saved[ROW_LOG_DENOM][0]))
    for key in (ROW_MAX, ROW_LOG_DENOM):
        np.testing.assert_array_equal(saved[key][0], r_saved[key][0], err_msg=key)
        assert np.all(saved[key][1] == 0), key  # the empty row
        np.testing.assert_allclose(saved[key][2:], r_saved[key][2:], rtol=1e-6, atol=1e-6, err_msg=key)
    np.testing.assert_allclose(out[1:], r_out[1:], rtol=1e-5, atol=1e-6)
    for stats, result in ((saved, out), (r_saved, r_out)):
        with pytest.raises(ValueError, match=r"the 'dot' scores of row 0 \(head 0\) overflowed float32"):
            _check_forward_result(spec, F32, stats, result, False)
    w = cl.weights(g, a["q"], a["k"], None, a["edge_bias"], spec, rt)
    r_w = ref.weights(g, a["q"], a["k"], None, a["edge_bias"], spec)
    assert w[-1, 0] == 0 and r_w[-1, 0] == 0 and w[-2, 0] == 1 and r_w[-2, 0] == 1
    np.testing.assert_array_equal(np.isnan(w), np.isnan(r_w))
    np.testing.assert_allclose(w[-3:], r_w[-3:], rtol=1e-6, atol=1e-7)  # rows 2 and 3


@pytest.mark.parametrize("long_row", [False, True], ids=["one-segment", "merged"])
def test_all_minus_inf_row_is_refused_by_the_reference(long_row):
    """The public boundary with check_finite=False: the numpy backend's statistics of the
    all -inf row are refused (the CUDA backend saves the same, test above)."""
    g, a = _minus_inf_row_case(long_row)
    with pytest.raises(ValueError, match=r"the 'dot' scores of row 0 \(head 0\) overflowed float32"):
        sg.attention_forward(g, a["q"], a["k"], a["v"], edge_bias=a["edge_bias"], backend="numpy",
                             check_finite=False)
