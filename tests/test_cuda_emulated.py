"""The CUDA kernels of the ``cupy`` backend, run on the CPU and checked against the reference.

The ``.cu`` sources are compiled once per session with the host C++ compiler against
``tests/cuda_emulation/cuda_emu.h`` (block threads as OS threads, warp shuffles
through an exchange buffer) and driven by the backend's own orchestration,
:mod:`sparsegat.backends.cuda.launch`, over NumPy arrays: the same segment plans,
launch geometry, scratch buffers, merge/reduction passes and argument C types as on
a GPU. Results are compared with the NumPy reference backend (through the public
API) computed in float64.

Every kernel is covered: ``sg_attn_fwd`` (forward, weights), ``sg_attn_fwd_merge``
(hub rows split into segments), ``sg_attn_weights_fin`` (weights),
``sg_attn_bwd_rows``, ``sg_attn_bwd_cols``, ``sg_sum_partials`` (hub rows and hub
columns), ``sg_column_sum`` (att and tau gradients, and directly), with empty rows
and columns, rows of hundreds of neighbours, both float dtypes and both index dtypes.
"""

from __future__ import annotations

import platform
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

import sparsegat
from sparsegat import CSRGraph
from sparsegat.attention import _check_forward_result
from sparsegat.backends.cuda import launch as cl
from sparsegat.dropout import drop_threshold, keep_mask, mix_seed
from sparsegat.spec import COSINE_EPS, ROW_LOG_DENOM, ROW_MAX, SCORES, TAU_SCORES, AttentionSpec

from cuda_emulation import harness

pytestmark = [
    pytest.mark.cuda_emulated,
    pytest.mark.skipif(not harness.compiler_available(), reason=f"no host C++ compiler ({harness.CXX})"),
]

F32, F64 = np.dtype(np.float32), np.dtype(np.float64)
I32, I64 = np.dtype(np.int32), np.dtype(np.int64)
DTYPE_COMBOS = [(F32, I32), (F64, I64), (F32, I64), (F64, I32)]
TAU = 0.75  # exact in float32

# Feature sizes of the configurations under test: (D, Dv).
SMALL_DIMS = (8, 8)      # vectorised loads: 4 floats / 2 doubles per lane
ODD_DIMS = (3, 5)        # scalar loads
WIDE_DIMS = (300, 72)    # double: several feature tiles (grid.y > 1) with NACC = 4


# ---------------------------------------------------------------------- graphs and inputs
def _graph(rows: list[list[int]], n_src: int, index_dtype: Any) -> CSRGraph:
    indptr = np.zeros(len(rows) + 1, dtype=index_dtype)
    np.cumsum([len(r) for r in rows], out=indptr[1:])
    indices = np.array([j for r in rows for j in sorted(set(r))], dtype=index_dtype)
    return CSRGraph(indptr, indices, (len(rows), n_src))


def small_graph(index_dtype: Any, seed: int = 0) -> CSRGraph:
    """40 x 36 bipartite: empty rows, single edges, one row attending to every source
    (36 > 32 edges: more than a warp's worth), and sources nobody attends to."""
    rng = np.random.default_rng(seed)
    n_dst, n_src = 40, 36
    rows = []
    for i in range(n_dst):
        if i % 9 == 4:
            rows.append([])
        elif i == 7:
            rows.append(list(range(n_src)))
        else:
            rows.append(list(rng.choice(n_src - 3, size=int(rng.integers(1, 7)), replace=False)))
    return _graph(rows, n_src, index_dtype)


def hub_graph(index_dtype: Any, seed: int = 1) -> CSRGraph:
    """600 x 600: rows of 600 and 560 neighbours and a column attended by every non-empty
    row (about 565 destinations), all longer than the segment length of every geometry
    they run with (512 edges for 16 groups, float32 SMALL_DIMS; 256 for 8 groups, float64),
    so they are split and merged; empty rows, a sparse rest."""
    rng = np.random.default_rng(seed)
    n = 600
    rows = []
    for i in range(n):
        if i % 17 == 5:
            rows.append([])
            continue
        if i == 1:
            r = list(range(n))
        elif i == 2:
            r = list(rng.choice(n, size=560, replace=False))
        else:
            r = list(rng.choice(np.arange(1, n), size=int(rng.integers(0, 3)), replace=False))
        rows.append(sorted(set(r) | {0}))  # column 0 is a hub column
    return _graph(rows, n, index_dtype)


def make_inputs(g: CSRGraph, score: str, dtype: Any, dims: tuple[int, int], heads: int = 2,
                bias: bool = True, seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    D, Dv = dims
    n_dst, n_src = g.shape
    tail = (heads,) if score == "additive" else (heads, D)
    out = {
        "q": rng.uniform(-1, 1, (n_dst,) + tail),
        "k": rng.uniform(-1, 1, (n_src,) + tail),
        "v": rng.uniform(-1, 1, (n_src, heads, Dv)),
        "att": rng.uniform(-1, 1, (heads, D)) if score == "gatv2" else None,
        "edge_bias": rng.uniform(-1, 1, (g.nnz, heads)) if bias else None,
    }
    return {k: None if a is None else np.ascontiguousarray(a, dtype=dtype) for k, a in out.items()}


def make_spec(score: str, dropout: float = 0.0, seed: int = 7, slope: float = 0.2) -> AttentionSpec:
    tau = TAU if score in ("cosine", "euclidean") else 1.0
    if dropout == 0.0:
        return AttentionSpec(score, tau, slope)
    return AttentionSpec(score, tau, slope, dropout, mix_seed(seed), drop_threshold(dropout), seed)


def _geometries(score: str, dtype: Any, dims: tuple[int, int]) -> list[cl.FeatureGeometry]:
    D = 1 if score == "additive" else dims[0]
    return [cl.feature_geometry(score, D, dv, np.dtype(dtype).itemsize) for dv in (dims[1], 0)]


# Every configuration the tests run; the session fixture compiles exactly these.
CONFIGS: list[tuple[str, np.dtype, np.dtype, tuple[int, int]]] = []
for _score in SCORES:
    for _dt, _it in DTYPE_COMBOS:
        CONFIGS.append((_score, _dt, _it, SMALL_DIMS))
    CONFIGS.append((_score, F32, I32, ODD_DIMS))
for _score in ("gatv2", "cosine", "euclidean", "dot"):
    CONFIGS.append((_score, F64, I64, WIDE_DIMS))
for _score in SCORES:  # the finite-difference checks: float64, scalar loads
    CONFIGS.append((_score, F64, I64, ODD_DIMS))


def _all_names() -> set[str]:
    names = set()
    for score, dt, it, dims in CONFIGS:
        for geom in _geometries(score, dt, dims):
            names |= set(cl.config_kernel_names(score, dt, it, geom))
    return names


@pytest.fixture(scope="module")
def rt() -> harness.EmulatedRuntime:
    libs, seconds = harness.build_libraries(_all_names())
    print(f"\n[cuda_emulated] {len(_all_names())} kernel instantiations in {len(libs)} libraries, "
          f"built in {seconds:.1f} s (0 when cached)")
    return harness.EmulatedRuntime(libs)


# ---------------------------------------------------------------------- oracle
def _f64(x: Any) -> Any:
    return None if x is None else np.asarray(x, dtype=np.float64)


def reference(g: CSRGraph, inp: dict, spec: AttentionSpec, dout: np.ndarray | None = None):
    """(out, weights, grads) of the NumPy reference backend in float64."""
    kw = dict(score=spec.score, att=_f64(inp["att"]), tau=spec.tau, negative_slope=spec.negative_slope,
              edge_bias=_f64(inp["edge_bias"]), dropout=spec.dropout, seed=spec.seed, backend="numpy")
    out, ctx = sparsegat.attention_forward(g, _f64(inp["q"]), _f64(inp["k"]), _f64(inp["v"]), **kw)
    w = sparsegat.attention_weights(g, _f64(inp["q"]), _f64(inp["k"]), **kw)
    grads = None
    if dout is not None:
        grads = dict(sparsegat.attention_backward(ctx, _f64(dout)).items())
    return out, w, grads


def assert_close(name: str, got: np.ndarray, want: np.ndarray, dtype: Any) -> None:
    got = np.asarray(got)
    assert got.dtype == np.dtype(dtype), f"{name}: dtype {got.dtype}, expected {dtype}"
    assert got.shape == np.shape(want), f"{name}: shape {got.shape}, expected {np.shape(want)}"
    assert np.all(np.isfinite(got)), f"{name}: non-finite values"
    rtol, atol = (1e-10, 1e-12) if np.dtype(dtype) == F64 else (2e-4, 2e-5)
    scale = max(1.0, float(np.max(np.abs(want)))) if np.size(want) else 1.0
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol * scale, err_msg=name)


def check_all(rt: harness.EmulatedRuntime, g: CSRGraph, score: str, dtype: Any, dims: tuple[int, int],
              dropout: float = 0.0, bias: bool = True, seed: int = 0, heads: int = 2) -> dict:
    """Forward, weights and backward of the emulated kernels against the reference."""
    inp = make_inputs(g, score, dtype, dims, heads=heads, bias=bias, seed=seed)
    spec = make_spec(score, dropout, seed=seed + 11)
    dout = np.random.default_rng(seed + 1).uniform(-1, 1, (g.shape[0], heads, dims[1])).astype(dtype)
    r_out, r_w, r_grads = reference(g, inp, spec, dout)

    out, saved = cl.forward(g, inp["q"], inp["k"], inp["v"], inp["att"], inp["edge_bias"], spec, rt)
    assert_close("out", out, r_out, dtype)
    assert np.all(out[np.diff(g.indptr) == 0] == 0), "empty rows must give out = 0"
    assert set(saved) == {ROW_MAX, ROW_LOG_DENOM} and saved[ROW_MAX].shape == (g.shape[0], heads)

    w = cl.weights(g, inp["q"], inp["k"], inp["att"], inp["edge_bias"], spec, rt)
    assert_close("weights", w, r_w, dtype)

    grads = cl.backward(g, inp["q"], inp["k"], inp["v"], inp["att"], inp["edge_bias"], spec, out, saved,
                        dout, rt)
    assert set(grads) == set(r_grads), (sorted(grads), sorted(r_grads))
    for name, want in r_grads.items():
        assert_close(f"d{name}", grads[name], want, dtype)
    return dict(inp=inp, spec=spec, out=out, saved=saved, grads=grads, dout=dout, weights=w)


# ---------------------------------------------------------------------- tests: kernels vs reference
@pytest.mark.parametrize("dtype,index_dtype", DTYPE_COMBOS, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("score", SCORES)
def test_small_graph_all_kernels(rt, score, dtype, index_dtype):
    """Forward, weights, every gradient; empty rows, a 36-neighbour row, edge bias, dropout."""
    g = small_graph(index_dtype)
    dropout = 0.3 if dtype == F64 else 0.0
    check_all(rt, g, score, dtype, SMALL_DIMS, dropout=dropout, bias=index_dtype == I32)


@pytest.mark.parametrize("score", SCORES)
def test_unvectorised_feature_sizes(rt, score):
    """D = 3, Dv = 5: scalar loads, lanes per edge not a divisor of the feature size."""
    check_all(rt, small_graph(I32, seed=3), score, F32, ODD_DIMS, dropout=0.2, seed=3)


@pytest.mark.parametrize("score", SCORES)
def test_hub_rows_and_columns(rt, score):
    """Rows of 600 and 560 neighbours and a column of about 565 destinations, split into
    segments and merged (sg_attn_fwd_merge, sg_sum_partials); one head or two."""
    odd = SCORES.index(score) % 2
    dtype, index_dtype = (F64, I64) if odd else (F32, I32)
    g = hub_graph(index_dtype)
    chunk = _geometries(score, dtype, SMALL_DIMS)[0].segment_edges
    plan = cl.build_segment_plan(np.asarray(g.indptr), chunk, g.index_dtype)
    cplan = cl.build_segment_plan(np.asarray(g.transposed()[0]), chunk, g.index_dtype)
    assert plan["n_long"] == 2 and cplan["n_long"] >= 1
    check_all(rt, g, score, dtype, SMALL_DIMS, dropout=0.25, seed=5, heads=1 + odd)


@pytest.mark.parametrize("score", ["gatv2", "cosine", "euclidean", "dot"])
def test_wide_features_use_several_tiles(rt, score):
    """D = 300, Dv = 72 in float64: NACC = 4 and two feature tiles along grid.y."""
    g = small_graph(I64, seed=4)
    c = check_all(rt, g, score, F64, WIDE_DIMS, seed=4)
    geom = cl.feature_geometry(score, WIDE_DIMS[0], WIDE_DIMS[1], 8)
    assert geom.nacc == 4 and geom.tiles(WIDE_DIMS[0]) == 2
    assert any(name.startswith("sg_attn_bwd_rows") and grid[1] == 2 for name, grid, _ in rt.log)
    del c


# ---------------------------------------------------------------------- dropout, edge cases
@pytest.mark.parametrize("dtype", [F32, F64], ids=lambda d: d.name)
def test_dropout_keep_decisions_are_bit_identical(rt, dtype):
    """Dropped edges are exactly those of sparsegat.dropout.keep_mask, kept ones scaled."""
    g = hub_graph(I32)
    for p, seed in [(0.5, 3), (0.1, 2**63 + 5), (0.9, 0)]:
        spec = make_spec("dot", p, seed=seed)
        inp = make_inputs(g, "dot", dtype, SMALL_DIMS, bias=False)
        w = cl.weights(g, inp["q"], inp["k"], None, None, spec, rt)
        keep = keep_mask(spec.seed_key, 0, g.nnz, 2, spec.threshold)
        assert np.array_equal(w != 0, keep), f"p={p} seed={seed}"
        ref = reference(g, inp, spec)[1]
        assert_close("weights", w, ref, dtype)


def test_dropout_of_a_row_block_counts_edges_from_its_offset(rt):
    """A block of a larger graph (``edge_offset``, sparsegat.distributed) drops the edges
    that graph drops: the mask of CSR positions ``[offset, offset + nnz)``."""
    import dataclasses

    g = hub_graph(I32)
    inp = make_inputs(g, "dot", F64, SMALL_DIMS, bias=False)
    spec = dataclasses.replace(make_spec("dot", 0.5, seed=3), edge_offset=1000)
    w = cl.weights(g, inp["q"], inp["k"], None, None, spec, rt)
    keep = keep_mask(spec.seed_key, 1000, 1000 + g.nnz, 2, spec.threshold)
    assert np.array_equal(w != 0, keep)
    assert not np.array_equal(keep, keep_mask(spec.seed_key, 0, g.nnz, 2, spec.threshold))
    from sparsegat.backends import numpy as reference_backend  # takes the spec, offset and all

    q, k, v = (_f64(inp[n]) for n in "qkv")
    assert_close("weights", w, reference_backend.weights(g, q, k, None, None, spec), F64)
    out, saved = cl.forward(g, q, k, v, None, None, spec, rt)
    ref_out, ref_saved = reference_backend.forward(g, q, k, v, None, None, spec)
    assert_close("out", out, ref_out, F64)
    dout = np.random.default_rng(0).standard_normal(out.shape)
    grads = cl.backward(g, q, k, v, None, None, spec, out, saved, dout, rt)
    ref = reference_backend.backward(g, q, k, v, None, None, spec, ref_out, ref_saved, dout)
    for name in "qkv":
        assert_close(f"d{name}", grads[name], ref[name], F64)


@pytest.mark.parametrize("index_dtype", [I32, I64], ids=lambda d: d.name)
@pytest.mark.parametrize("shape,rows", [((0, 0), []), ((0, 5), []), ((4, 0), [[]] * 4),
                                        ((5, 3), [[]] * 5)], ids=["0x0", "0x5", "4x0", "no-edges"])
def test_graphs_without_edges(rt, shape, rows, index_dtype):
    g = _graph(rows, shape[1], index_dtype)
    for score in ("dot", "gatv2", "cosine"):
        inp = make_inputs(g, score, F64, SMALL_DIMS)
        spec = make_spec(score)
        out, saved = cl.forward(g, inp["q"], inp["k"], inp["v"], inp["att"], inp["edge_bias"], spec, rt)
        assert out.shape == (shape[0], 2, SMALL_DIMS[1]) and np.all(out == 0)
        dout = np.ones_like(out)
        grads = cl.backward(g, inp["q"], inp["k"], inp["v"], inp["att"], inp["edge_bias"], spec, out,
                            saved, dout, rt)
        for name, a in grads.items():
            assert np.all(a == 0), name
        assert grads["q"].shape == inp["q"].shape and grads["k"].shape == inp["k"].shape
        w = cl.weights(g, inp["q"], inp["k"], inp["att"], inp["edge_bias"], spec, rt)
        assert w.shape == (0, 2)


def test_backward_is_bitwise_deterministic(rt):
    g = small_graph(I32)
    inp = make_inputs(g, "gatv2", F32, SMALL_DIMS)
    spec = make_spec("gatv2", 0.2)
    out, saved = cl.forward(g, inp["q"], inp["k"], inp["v"], inp["att"], inp["edge_bias"], spec, rt)
    dout = np.random.default_rng(0).standard_normal(out.shape).astype(np.float32)
    runs = [cl.backward(g, inp["q"], inp["k"], inp["v"], inp["att"], inp["edge_bias"], spec, out, saved,
                        dout, rt) for _ in range(2)]
    for name in runs[0]:
        assert runs[0][name].tobytes() == runs[1][name].tobytes(), name


def test_misaligned_arrays_fall_back_to_scalar_loads(rt):
    """A C-contiguous view that is not 16-byte aligned must not be read with vector loads."""
    g = small_graph(I32)
    inp = make_inputs(g, "dot", F32, SMALL_DIMS)
    buf = np.empty(inp["q"].size + 1, dtype=np.float32)
    q = buf[1:].reshape(inp["q"].shape)
    q[...] = inp["q"]
    assert rt.pointer(q) % 16 != 0
    spec = make_spec("dot")
    rt.log.clear()
    out, _ = cl.forward(g, q, inp["k"], inp["v"], None, inp["edge_bias"], spec, rt)
    assert rt.log[0][0] == cl.attention_kernel_name("sg_attn_fwd", "dot", F32, I32,
                                                    cl.feature_geometry("dot", 8, 8, 4, aligned=False))
    assert_close("out", out, reference(g, dict(inp, q=q), spec)[0], F32)


@pytest.mark.parametrize("R,C", [(1, 1), (5000, 1), (3000, 7), (0, 3), (70000, 2)])
def test_column_sum_kernel(rt, R, C):
    """sg_column_sum alone: one pass or several, against NumPy."""
    x = np.random.default_rng(R + C).standard_normal((R, C))
    got = cl.column_sum(rt, x)
    assert got.shape == (C,)
    np.testing.assert_allclose(got, x.sum(axis=0), rtol=1e-12, atol=1e-12)
    assert got.tobytes() == cl.column_sum(rt, x).tobytes()


def test_launch_arguments_are_type_checked(rt):
    """The emulator refuses an argument whose C type differs from the kernel's parameter."""
    name = cl.helper_kernel_name("sg_column_sum", F64)
    x = np.zeros((4, 2))
    out = np.empty((1, 2))
    rt.launch(name, (1, 1, 1), (32, 8, 1), (x, np.int64(4), np.int64(2), np.int64(512), out))
    with pytest.raises(TypeError, match="argument 1"):
        rt.launch(name, (1, 1, 1), (32, 8, 1), (x, np.int32(4), np.int64(2), np.int64(512), out))
    with pytest.raises(TypeError, match="argument 0"):
        rt.launch(name, (1, 1, 1), (32, 8, 1), (x.astype(np.float32), np.int64(4), np.int64(2),
                                                  np.int64(512), out))
    with pytest.raises(TypeError):
        rt.launch(name, (1, 1, 1), (32, 8, 1), (x, 4, np.int64(2), np.int64(512), out))


@pytest.mark.parametrize("slope", [0.0, 1.7])
@pytest.mark.parametrize("score", ["additive", "gatv2"])
def test_negative_slopes(rt, score, slope):
    g = small_graph(I32, seed=6)
    inp = make_inputs(g, score, F64, SMALL_DIMS, seed=6)
    spec = make_spec(score, slope=slope)
    dout = np.random.default_rng(2).uniform(-1, 1, (g.shape[0], 2, SMALL_DIMS[1]))
    r_out, _, r_grads = reference(g, inp, spec, dout)
    out, saved = cl.forward(g, inp["q"], inp["k"], inp["v"], inp["att"], inp["edge_bias"], spec, rt)
    assert_close("out", out, r_out, F64)
    grads = cl.backward(g, inp["q"], inp["k"], inp["v"], inp["att"], inp["edge_bias"], spec, out, saved,
                        dout, rt)
    for name, want in r_grads.items():
        assert_close(f"d{name}", grads[name], want, F64)


def test_cosine_norm_floor(rt):
    """Zero query and key vectors: the cosine's eps floor (the gradient scales with 1/eps)."""
    g = small_graph(I64, seed=8)
    inp = make_inputs(g, "cosine", F64, SMALL_DIMS, seed=8)
    inp["q"][7] = 0.0  # the 36-neighbour row
    inp["k"][[0, 5]] = 0.0
    spec = make_spec("cosine")
    dout = np.random.default_rng(3).uniform(-1, 1, (g.shape[0], 2, SMALL_DIMS[1]))
    r_out, _, r_grads = reference(g, inp, spec, dout)
    out, saved = cl.forward(g, inp["q"], inp["k"], inp["v"], None, inp["edge_bias"], spec, rt)
    assert_close("out", out, r_out, F64)
    grads = cl.backward(g, inp["q"], inp["k"], inp["v"], None, inp["edge_bias"], spec, out, saved, dout, rt)
    assert np.max(np.abs(r_grads["q"][7])) > 1e6  # really on the floor branch
    for name, want in r_grads.items():
        np.testing.assert_allclose(grads[name], want, rtol=1e-9, atol=1e-11, err_msg=name)


def test_huge_scores_keep_precise_weights(rt):
    """Scores around 1e6 in float32: the softmax statistics are kept as (max, log-denominator)
    so p = exp((s - max) - logden) loses nothing (a folded log-sum-exp would round to 1/16)."""
    g = small_graph(I32, seed=9)
    rng = np.random.default_rng(9)
    H, (D, Dv) = 2, SMALL_DIMS
    q = (rng.integers(-2, 3, (g.shape[0], H, D)) * 0.5).astype(np.float32)  # exact scores
    k = (rng.integers(-2, 3, (g.shape[1], H, D)) * 0.5).astype(np.float32)
    v = rng.uniform(-1, 1, (g.shape[1], H, Dv)).astype(np.float32)
    rows = np.repeat(np.arange(g.shape[0]), np.diff(g.indptr))
    bias = np.repeat((1e6 + 1024.0 * rows)[:, None], H, axis=1).astype(np.float32)
    inp = dict(q=q, k=k, v=v, att=None, edge_bias=bias)
    spec = make_spec("dot")
    dout = rng.uniform(-1, 1, (g.shape[0], H, Dv)).astype(np.float32)
    r_out, r_w, r_grads = reference(g, inp, spec, dout)
    out, saved = cl.forward(g, q, k, v, None, bias, spec, rt)
    assert float(np.max(saved[ROW_MAX])) > 1e6
    assert_close("out", out, r_out, F32)
    assert_close("weights", cl.weights(g, q, k, None, bias, spec, rt), r_w, F32)
    grads = cl.backward(g, q, k, v, None, bias, spec, out, saved, dout, rt)
    for name, want in r_grads.items():
        assert_close(f"d{name}", grads[name], want, F32)


@pytest.mark.parametrize("dtype,scale,bias_scale", [(F64, 1e3, None), (F32, 1e3, None), (F32, 1.0, 1e30),
                                                    (F32, 1e-30, None)], ids=["f64-1e3", "f32-1e3", "f32-bias1e30",
                                                                              "f32-1e-30"])
@pytest.mark.parametrize("score", SCORES)
def test_large_magnitudes_stay_finite(rt, score, dtype, scale, bias_scale):
    """Finite inputs of any magnitude give finite outputs, weights and gradients (and
    match the reference in float64)."""
    g = small_graph(I32, seed=10)
    inp = make_inputs(g, score, dtype, SMALL_DIMS, bias=bias_scale is not None, seed=10)
    inp["q"] = (inp["q"] * scale).astype(dtype)
    inp["k"] = (inp["k"] * scale).astype(dtype)
    if bias_scale is not None:
        inp["edge_bias"] = (inp["edge_bias"] * bias_scale).astype(dtype)
    spec = make_spec(score)
    out, saved = cl.forward(g, inp["q"], inp["k"], inp["v"], inp["att"], inp["edge_bias"], spec, rt)
    w = cl.weights(g, inp["q"], inp["k"], inp["att"], inp["edge_bias"], spec, rt)
    grads = cl.backward(g, inp["q"], inp["k"], inp["v"], inp["att"], inp["edge_bias"], spec, out, saved,
                        np.ones_like(out), rt)
    for name, a in [("out", out), ("weights", w), *grads.items()]:
        assert np.all(np.isfinite(a)), name
    if dtype == F64 and bias_scale is None:
        r_out, r_w, _ = reference(g, inp, spec)
        np.testing.assert_allclose(w, r_w, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(out, r_out, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("dtype,scale", [(F64, 1e200), (F64, 1e-200), (F32, 1e25), (F32, 1e-25)])
def test_cosine_extreme_norms(rt, dtype, scale):
    """Norms that overflow or underflow when squared: scaled norms, as the reference."""
    g = small_graph(I64, seed=11)
    inp = make_inputs(g, "cosine", dtype, SMALL_DIMS, seed=11)
    inp["q"] = (inp["q"].astype(np.float64) * scale).astype(dtype)
    inp["k"] = (inp["k"].astype(np.float64) * scale).astype(dtype)
    spec = make_spec("cosine")
    out, saved = cl.forward(g, inp["q"], inp["k"], inp["v"], None, inp["edge_bias"], spec, rt)
    r_out = reference(g, dict(inp, q=inp["q"].astype(np.float64), k=inp["k"].astype(np.float64)), spec)[0]
    np.testing.assert_allclose(out, r_out, rtol=1e-4, atol=1e-6)
    grads = cl.backward(g, inp["q"], inp["k"], inp["v"], None, inp["edge_bias"], spec, out, saved,
                        np.ones_like(out), rt)
    for name, a in grads.items():
        assert np.all(np.isfinite(a)), name


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"),
                    reason="the emulation flushes subnormals through x86's MXCSR only")
def test_subnormals_flush_in_float32_only_as_with_ftz(rt):
    """CuPy compiles with -ftz=true (cl.CUPY_ADDED_OPTIONS): float32 subnormals are zero in
    the kernels' arithmetic, so values of 3e-39 average to out = 0 and give dv = 0 where the
    reference (which keeps subnormals) gives 3e-39; the difference stays within the
    subnormal range. float64 subnormals are kept, as on the GPU."""
    assert "-ftz=true" in cl.CUPY_ADDED_OPTIONS
    g = small_graph(I32)
    spec = make_spec("dot")
    tiny32 = float(np.finfo(np.float32).smallest_normal)
    inp = make_inputs(g, "dot", F32, SMALL_DIMS, bias=False)
    inp["v"] = np.full_like(inp["v"], tiny32 / 4)
    dout = np.full((g.shape[0], 2, SMALL_DIMS[1]), tiny32 / 4, dtype=np.float32)
    r_out, _, r_grads = reference(g, inp, spec, dout)
    out, saved = cl.forward(g, inp["q"], inp["k"], inp["v"], None, None, spec, rt)
    grads = cl.backward(g, inp["q"], inp["k"], inp["v"], None, None, spec, out, saved, dout, rt)
    assert np.all(out == 0) and np.all(grads["v"] == 0)
    assert np.max(np.abs(r_out)) > 0 and np.max(np.abs(r_grads["v"])) > 0
    np.testing.assert_allclose(out, r_out, rtol=0, atol=tiny32)

    inp64 = make_inputs(g, "dot", F64, SMALL_DIMS, bias=False)
    inp64["v"] = np.full_like(inp64["v"], 1e-310)  # subnormal in float64
    out64, _ = cl.forward(g, inp64["q"], inp64["k"], inp64["v"], None, None, spec, rt)
    assert np.all(out64[np.diff(g.indptr) > 0] != 0)
    np.testing.assert_allclose(out64, reference(g, inp64, spec)[0], rtol=1e-9, atol=0)


# ---------------------------------------------------------------------- values near the dtype's max
@pytest.mark.parametrize("dtype,index_dtype,dropout", [(F32, I32, 0.0), (F64, I64, 0.0), (F32, I32, 0.2)],
                         ids=["f32", "f64", "f32-dropout"])
def test_values_near_the_dtype_max_give_finite_exact_outputs(rt, dtype, index_dtype, dropout):
    """|v| near the dtype's maximum (2e38 in float32): the output is a weighted mean of the
    values, finite and equal to the reference. The accumulator is kept normalised (a sum
    of p * v before dividing by the row sum overflowed to inf), in the fused kernel, in the
    merge of the groups and in sg_attn_fwd_merge (rows of 600 and 560 neighbours)."""
    g = hub_graph(index_dtype)
    inp = make_inputs(g, "dot", dtype, SMALL_DIMS, seed=12)
    top = float(np.finfo(dtype).max)
    rng = np.random.default_rng(12)
    sign = np.where(np.arange(SMALL_DIMS[1]) % 3 == 1, -1.0, 1.0)  # one sign per feature: sums overflow
    v = rng.uniform(0.5, 1.0, inp["v"].shape) * sign * (0.6 * top)
    inp["v"] = v.astype(dtype)
    spec = make_spec("dot", dropout, seed=4)
    out, saved = cl.forward(g, inp["q"], inp["k"], inp["v"], None, inp["edge_bias"], spec, rt)
    assert np.all(np.isfinite(out)) and np.all(np.isfinite(saved[ROW_MAX]))
    assert np.all(np.isfinite(saved[ROW_LOG_DENOM]))
    _check_forward_result(spec, dtype, saved, out, True)  # the public boundary accepts it
    r_out = reference(g, inp, spec)[0]
    assert float(np.max(np.abs(r_out))) > 0.3 * top
    rtol = 1e-12 if dtype == F64 else 2e-6
    np.testing.assert_allclose(out / top, r_out / top, rtol=rtol, atol=rtol)
    w = cl.weights(g, inp["q"], inp["k"], None, inp["edge_bias"], spec, rt)
    assert_close("weights", w, reference(g, inp, spec)[1], dtype)


def test_long_float32_row_error_does_not_grow_with_the_degree(rt):
    """One float32 row of 100,000 edges (196 segments of 16 groups) against float64: the
    segments are merged in double, so the error stays at the level of a short row (a float
    merge of 391 segments was off by ~6e-7 relative here, and growing with the degree)."""
    H = 2
    errors = {}
    for deg in (300, 100_000):
        rng = np.random.default_rng(deg)
        g = CSRGraph(np.array([0, deg], np.int32), np.arange(deg, dtype=np.int32), (1, deg))
        q = rng.uniform(-1, 1, (1, H, SMALL_DIMS[0])).astype(np.float32)
        k = rng.uniform(-1, 1, (deg, H, SMALL_DIMS[0])).astype(np.float32)
        v = rng.uniform(0, 1, (deg, H, SMALL_DIMS[1])).astype(np.float32)  # one sign: no cancellation
        spec = make_spec("dot")
        out, saved = cl.forward(g, q, k, v, None, None, spec, rt)
        r_out = reference(g, dict(q=q, k=k, v=v, att=None, edge_bias=None), spec)[0]
        errors[deg] = float(np.max(np.abs(out - r_out)) / np.max(np.abs(r_out)))
    assert errors[100_000] < 2.5e-7, errors
    assert errors[100_000] < 4 * max(errors[300], 6e-8), errors


# ---------------------------------------------------------------------- finite differences (float64)
FD_EPS = 1e-6
FD_DIMS = ODD_DIMS  # (D, Dv) = (3, 5): scalar loads, whatever the arrays' alignment
FD_SAMPLE = 24     # entries checked per array


def _fd_loss(rt, g: CSRGraph, arrays: dict, spec: AttentionSpec, R: np.ndarray) -> float:
    out, _ = cl.forward(g, arrays["q"], arrays["k"], arrays["v"], arrays.get("att"), arrays.get("edge_bias"),
                        spec, rt)
    return float(np.sum(out * R))


def _fd_analytic(rt, g: CSRGraph, arrays: dict, spec: AttentionSpec, seed: int = 0):
    out, saved = cl.forward(g, arrays["q"], arrays["k"], arrays["v"], arrays.get("att"), arrays.get("edge_bias"),
                            spec, rt)
    R = np.random.default_rng(seed + 1000).standard_normal(out.shape)
    grads = cl.backward(g, arrays["q"], arrays["k"], arrays["v"], arrays.get("att"), arrays.get("edge_bias"),
                        spec, out, saved, R, rt)
    return R, grads


def _fd_directional(rt, g, arrays, spec, R, name, idx, step, side=0) -> float:
    """Central (side 0) or one-sided (side +-1) difference of the loss in ``arrays[name][idx]``."""
    arrays = {n: (None if a is None else a.copy()) for n, a in arrays.items()}
    x = arrays[name]
    orig = x[idx]
    if side == 0:
        x[idx] = orig + step
        plus = _fd_loss(rt, g, arrays, spec, R)
        x[idx] = orig - step
        return (plus - _fd_loss(rt, g, arrays, spec, R)) / (2 * step)
    base = _fd_loss(rt, g, arrays, spec, R)
    x[idx] = orig + side * step
    return side * (_fd_loss(rt, g, arrays, spec, R) - base) / step


def _fd_tau(rt, g, arrays, spec, R) -> float:
    plus = _fd_loss(rt, g, arrays, replace(spec, tau=spec.tau + FD_EPS), R)
    return (plus - _fd_loss(rt, g, arrays, replace(spec, tau=spec.tau - FD_EPS), R)) / (2 * FD_EPS)


def _fd_case(score: str, *, n_dst=5, n_src=6, heads=2, edge_bias=True, hub=False, seed=0):
    """A graph (empty row, several edges per row; ``hub``: a row of 300 neighbours, split
    into segments) and float64 inputs with every LeakyReLU argument and norm away from a kink."""
    rng = np.random.default_rng(seed)
    if hub:
        n_src = 300
        rows = [list(range(n_src)), [], [1, 4, 7]]
    else:
        rows = [list(rng.choice(n_src, size=int(rng.integers(1, n_src)), replace=False)) for _ in range(n_dst)]
        rows[1] = []
    g = _graph(rows, n_src, I64)
    D, Dv = FD_DIMS
    tail = (heads,) if score == "additive" else (heads, D)
    r_idx, c_idx = np.repeat(np.arange(len(rows)), np.diff(g.indptr)), np.asarray(g.indices)
    for _ in range(10_000):
        q = rng.standard_normal((len(rows),) + tail)
        k = rng.standard_normal((n_src,) + tail)
        if score in ("additive", "gatv2") and np.min(np.abs(q[r_idx] + k[c_idx])) < 1e-2:
            continue
        if score == "cosine" and min(np.min(np.linalg.norm(q, axis=-1)), np.min(np.linalg.norm(k, axis=-1))) < 0.1:
            continue
        break
    arrays = {"q": q, "k": k, "v": rng.standard_normal((n_src, heads, Dv)),
              "att": rng.standard_normal((heads, D)) if score == "gatv2" else None,
              "edge_bias": rng.standard_normal((g.nnz, heads)) if edge_bias else None}
    return g, arrays


FD_CASES = [
    ("dot-edge_bias", "dot", {}, dict(tau=1.0)),
    ("scaled_dot-dropout", "scaled_dot", {"seed": 1}, dict(tau=1.0, dropout=0.3)),
    ("cosine-tau", "cosine", {"seed": 2}, dict(tau=2.5)),
    ("euclidean-dropout", "euclidean", {"seed": 3}, dict(tau=0.6, dropout=0.25)),
    ("additive-slope", "additive", {"seed": 4}, dict(tau=1.0, slope=0.05)),
    ("gatv2-edge_bias", "gatv2", {"seed": 5}, dict(tau=1.0, slope=1.7)),
    ("dot-hub-row", "dot", {"hub": True, "seed": 6}, dict(tau=1.0, dropout=0.2)),
]


@pytest.mark.parametrize("score,case_kwargs,opts", [c[1:] for c in FD_CASES], ids=[c[0] for c in FD_CASES])
def test_gradients_match_finite_differences(rt, score, case_kwargs, opts):
    """The emulated CUDA backward against central differences of the emulated forward, for
    every input with a gradient (as tests/test_gradients.py does for numpy and numba); the
    hub case takes its row of 300 neighbours through the segment merges both ways."""
    g, arrays = _fd_case(score, **case_kwargs)
    spec = replace(make_spec(score, opts.get("dropout", 0.0), seed=9, slope=opts.get("slope", 0.2)),
                   tau=opts["tau"])
    R, grads = _fd_analytic(rt, g, arrays, spec)
    expected = {"q", "k", "v"} | ({"att"} if score == "gatv2" else set()) | (
        {"tau"} if score in TAU_SCORES else set()) | ({"edge_bias"} if arrays["edge_bias"] is not None else set())
    assert set(grads) == expected
    rng = np.random.default_rng(0)
    for name in sorted(expected - {"tau"}):
        x = arrays[name]
        indices = list(np.ndindex(x.shape))
        if len(indices) > FD_SAMPLE:  # a sample of the entries (every difference is two forwards)
            pick = np.sort(rng.choice(len(indices), size=FD_SAMPLE, replace=False))
            indices = [indices[i] for i in pick]
        for idx in indices:
            want = _fd_directional(rt, g, arrays, spec, R, name, idx, FD_EPS)
            np.testing.assert_allclose(grads[name][idx], want, rtol=1e-6, atol=1e-8, err_msg=f"d{name}{idx}")
    if "tau" in expected:
        np.testing.assert_allclose(grads["tau"], _fd_tau(rt, g, arrays, spec, R), rtol=1e-6, atol=1e-8)
    assert any(np.any(grads[n] != 0) for n in expected)


def _kink_case(score: str, offset: float):
    """Row 0 of a 3 x 4 graph with every LeakyReLU argument exactly at ``offset`` (q and k
    are binary fractions, so offset 0 gives z = 0 exactly)."""
    g = _graph([[0, 1, 2], [0, 3], [1]], 4, I64)
    rng = np.random.default_rng(3)
    heads, D = 2, FD_DIMS[0]
    if score == "additive":
        q = np.array([[0.5, -0.25], [0.75, 0.125], [-0.375, 0.5]])
        k = rng.choice([-1.5, -0.75, 1.25, 2.0], size=(4, heads))
    else:
        q = rng.choice([-1.0, -0.5, 0.5, 1.0], size=(3, heads, D))
        k = rng.choice([-1.5, 1.5], size=(4, heads, D))
    k[[0, 1, 2]] = -q[0] + offset
    arrays = {"q": q, "k": k, "v": rng.standard_normal((4, heads, FD_DIMS[1])),
              "att": rng.standard_normal((heads, D)) if score == "gatv2" else None, "edge_bias": None}
    return g, arrays


@pytest.mark.parametrize("slope", [0.2, 0.0])
@pytest.mark.parametrize("score", ["additive", "gatv2"])
def test_gradient_at_the_leaky_relu_kink(rt, score, slope):
    """LeakyReLU arguments exactly 0: the slope branch (lrelu'(0) = slope, docs/math.md),
    i.e. the difference quotient from the left; beside the kink (z = +-1e-4) the central
    difference."""
    spec = AttentionSpec(score, 1.0, slope)
    for offset in (0.0, 1e-4, -1e-4):
        g, arrays = _kink_case(score, offset)
        R, grads = _fd_analytic(rt, g, arrays, spec, seed=7)
        for name in ("q", "k") + (("att",) if score == "gatv2" else ()):
            for idx in np.ndindex(arrays[name].shape):
                if offset == 0.0 and name != "att":
                    want = _fd_directional(rt, g, arrays, spec, R, name, idx, 1e-7, side=-1)
                else:
                    want = _fd_directional(rt, g, arrays, spec, R, name, idx, 1e-6)
                np.testing.assert_allclose(grads[name][idx], want, rtol=1e-5, atol=1e-6,
                                           err_msg=f"d{name}{idx} offset {offset}")


@pytest.mark.parametrize("norm", [0.0, 3e-9, 1.01e-8, 5e-8])
def test_cosine_gradient_near_the_norm_floor(rt, norm):
    """Rows of q and k with norms below, just above and above COSINE_EPS: ``tau / eps * G``
    below the floor, the projected gradient above; steps are a fraction of the norm so
    that they do not cross the floor."""
    rng = np.random.default_rng(11)
    g = _graph([[0, 1, 3], [], [1, 2, 4, 5], [3], [0, 5]], 6, I64)
    heads, (D, Dv) = 2, FD_DIMS
    q = rng.standard_normal((5, heads, D))
    k = rng.standard_normal((6, heads, D))
    for x, rows in ((q, [0, 2]), (k, [1, 3])):
        for r in rows:
            u = rng.standard_normal((heads, D))
            x[r] = norm * u / np.linalg.norm(u, axis=-1, keepdims=True)
    arrays = {"q": q, "k": k, "v": rng.standard_normal((6, heads, Dv)), "att": None, "edge_bias": None}
    spec = AttentionSpec("cosine", 1.5, 0.2)
    R, grads = _fd_analytic(rt, g, arrays, spec, seed=1)
    for name, rows in (("q", [0, 2]), ("k", [1, 3])):
        for r in rows:
            scale = np.abs(grads[name][r]).max() + 1e-300
            for idx in np.ndindex(heads, D):
                full = (r,) + idx
                step = max(norm, COSINE_EPS) * 1e-4 if norm <= 2 * COSINE_EPS else norm * 1e-4
                want = _fd_directional(rt, g, arrays, spec, R, name, full, step)
                assert abs(grads[name][full] - want) <= 1e-4 * scale + 1e-6, (name, full, grads[name][full], want)
    np.testing.assert_allclose(grads["tau"], _fd_tau(rt, g, arrays, spec, R), rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------- geometry (no compiler needed)
def test_segment_plan_covers_every_edge_once():
    rng = np.random.default_rng(0)
    deg = np.concatenate([rng.integers(0, 5, 50), [0, 256, 257, 1000, 513, 0]])
    indptr = np.concatenate([[0], np.cumsum(deg)])
    p = cl.build_segment_plan(indptr, 256, np.int32)
    seg_ptr, seg_row = p["seg_ptr"].astype(np.int64), p["seg_row"].astype(np.int64)
    assert seg_ptr[0] == 0 and seg_ptr[-1] == indptr[-1] and np.all(np.diff(seg_ptr) >= 0)
    assert np.all(np.diff(seg_ptr) <= 256)
    assert np.array_equal(np.unique(seg_row), np.arange(len(deg)))  # every row, empty ones too
    assert np.all(seg_ptr[:-1] >= indptr[seg_row]) and np.all(seg_ptr[1:] <= indptr[seg_row + 1])
    long_rows = np.flatnonzero(deg > 256)
    assert np.array_equal(p["long_row"], long_rows)
    slots = p["seg_slot"]
    assert np.array_equal(np.sort(slots[slots >= 0]), np.arange(p["n_slots"]))
    for r, row in enumerate(p["long_row"]):
        owned = np.flatnonzero(seg_row == row)
        assert np.array_equal(slots[owned], np.arange(p["long_ptr"][r], p["long_ptr"][r + 1]))
    assert np.all(slots[deg[seg_row] <= 256] == -1)


@pytest.mark.parametrize("score,D,Dv,itemsize,expect", [
    ("dot", 128, 128, 4, (4, 32, 1)),
    ("dot", 64, 64, 4, (4, 16, 1)),
    ("additive", 1, 64, 4, (4, 16, 1)),
    ("additive", 1, 0, 8, (2, 1, 1)),
    ("dot", 3, 5, 4, (1, 8, 1)),
    ("gatv2", 300, 72, 8, (2, 32, 4)),
    ("dot", 1024, 1024, 4, (4, 32, 4)),
    ("dot", 8, 8, 8, (2, 4, 1)),
])
def test_feature_geometry(score, D, Dv, itemsize, expect):
    geom = cl.feature_geometry(score, D, Dv, itemsize)
    assert (geom.vec, geom.lpe, geom.nacc) == expect
    assert 32 % geom.lpe == 0 and geom.tiles(max(D, Dv)) * geom.tile >= max(D, Dv)


@pytest.mark.parametrize("lpe,edges", [(32, 64), (16, 64), (8, 128), (4, 256), (2, 512), (1, 1024)])
def test_segment_length_follows_the_group_count(lpe, edges):
    """About SEGMENT_ITERATIONS serial steps per group: 32 * (32 / lpe) edges, at least 64."""
    geom = cl.FeatureGeometry(4, lpe, 1)
    assert geom.segment_edges == edges == max(cl.SEGMENT_MIN_EDGES, cl.SEGMENT_ITERATIONS * geom.groups)


@pytest.mark.parametrize("D,n_seg", [(128, 4), (8, 1)])
def test_calls_cut_rows_by_their_geometry(rt, D, n_seg):
    """One row of 200 edges: with D = 128 float32 (one group of 32 lanes) four segments of
    50 edges, merged; with D = 8 (16 groups, 512 edges a segment) a single warp, no merge."""
    deg, H = 200, 2
    g = CSRGraph(np.array([0, deg], np.int32), np.arange(deg, dtype=np.int32), (1, deg))
    rng = np.random.default_rng(D)
    q = rng.uniform(-1, 1, (1, H, D)).astype(np.float32)
    k = rng.uniform(-1, 1, (deg, H, D)).astype(np.float32)
    v = rng.uniform(-1, 1, (deg, H, D)).astype(np.float32)
    spec = make_spec("dot", 0.2, seed=3)
    rt.log.clear()
    out, saved = cl.forward(g, q, k, v, None, None, spec, rt)
    fwd = [grid for name, grid, _ in rt.log if name.startswith("sg_attn_fwd<")]
    assert fwd == [(cl._cdiv(n_seg * H, cl.WARPS_PER_BLOCK), 1, 1)]
    assert any(name.startswith("sg_attn_fwd_merge") for name, _, _ in rt.log) == (n_seg > 1)
    inp = dict(q=q, k=k, v=v, att=None, edge_bias=None)
    dout = rng.uniform(-1, 1, out.shape).astype(np.float32)
    r_out, r_w, r_grads = reference(g, inp, spec, dout)
    assert_close("out", out, r_out, F32)
    assert_close("weights", cl.weights(g, q, k, None, None, spec, rt), r_w, F32)
    grads = cl.backward(g, q, k, v, None, None, spec, out, saved, dout, rt)
    for name, want in r_grads.items():
        assert_close(f"d{name}", grads[name], want, F32)


def test_warp_launch_geometry():
    grid, block = cl.warp_launch(10, 3, 2)
    assert block == (128, 1, 1) and grid == (8, 2, 1)  # 30 warps, 4 a block
    assert cl.elementwise_launch(10**9)[0][0] == cl.MAX_ELEMENTWISE_BLOCKS


def test_resource_script_uses_the_launch_module():
    """bench/cuda_resources.py takes kernel names and geometry from launch.py and covers
    every kernel."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "bench" / "cuda_resources.py"
    spec = importlib.util.spec_from_file_location("cuda_resources_under_test", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.module_source() == cl.module_source()
    assert set(mod.ATTENTION + mod.HELPERS) == set(cl.KERNEL_FILES)
    g = cl.feature_geometry("dot", 128, 128, 4)
    assert mod.geometry("dot", 128, 128, 4)["segment_edges"] == g.segment_edges
    assert mod.attention_kernel_name("sg_attn_fwd", "dot", F32, I32, g.vec, g.nacc) == \
        cl.attention_kernel_name("sg_attn_fwd", "dot", F32, I32, g)
