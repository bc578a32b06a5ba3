"""The ``cupy`` backend on a real GPU: property-based parity with the NumPy reference
(forward, weights, every gradient), bitwise-deterministic backward, dropout identity,
hub rows. Skipped cleanly when CuPy or a CUDA device is missing (the kernels are
still checked on every CI run by ``test_cuda_emulated.py`` and ``test_cuda_compile.py``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sparsegat
from sparsegat import CSRGraph
from sparsegat.dropout import keep_mask, mix_seed, drop_threshold

from strategies import SCORE_CONFIGS, attention_inputs, attention_problems, csr_graphs, tolerance


def _gpu_available() -> bool:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # ImportError, no driver, no device
        return False


GPU = _gpu_available()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not GPU, reason="needs CuPy and a CUDA GPU")]

if GPU:
    import cupy


# ---------------------------------------------------------------------- helpers
def _f64(a: Any) -> Any:
    return None if a is None else np.asarray(a, dtype=np.float64)


def _gpu(a: Any) -> Any:
    return None if a is None else cupy.asarray(a)


def run_both(g: CSRGraph, q, k, v, dout, kwargs: dict, dtype: Any, dropout: float = 0.0, seed: int = 0):
    """(reference results in float64, cupy results as NumPy) for forward, weights, backward."""
    kw = dict(kwargs, dropout=dropout, seed=seed if dropout else None)
    ref_kw = dict(kw, att=_f64(kw.get("att")), edge_bias=_f64(kw.get("edge_bias")))
    r_out, r_ctx = sparsegat.attention_forward(g, _f64(q), _f64(k), _f64(v), backend="numpy", **ref_kw)
    r_w = sparsegat.attention_weights(g, _f64(q), _f64(k), backend="numpy", **ref_kw)
    r_grads = dict(sparsegat.attention_backward(r_ctx, _f64(dout)).items())

    gg = g.to("cupy")
    cast = (lambda a: None if a is None else _gpu(np.asarray(a, dtype=dtype)))
    gpu_kw = dict(kw, att=cast(kw.get("att")), edge_bias=cast(kw.get("edge_bias")))
    out, ctx = sparsegat.attention_forward(gg, cast(q), cast(k), cast(v), **gpu_kw)
    assert ctx.backend == "cupy" and isinstance(out, cupy.ndarray) and out.dtype == dtype
    w = sparsegat.attention_weights(gg, cast(q), cast(k), **gpu_kw)
    grads = sparsegat.attention_backward(ctx, cast(dout))
    got = {"out": out.get(), "weights": w.get(), **{n: a.get() for n, a in grads.items()}}
    want = {"out": r_out, "weights": r_w, **r_grads}
    return got, want, (ctx, cast(dout))


def assert_parity(got: dict, want: dict, dtype: Any) -> None:
    assert set(got) == set(want), (sorted(got), sorted(want))
    rtol, atol = tolerance(dtype)
    for name, w in want.items():
        a = got[name]
        assert a.dtype == np.dtype(dtype), name
        assert a.shape == np.shape(w), name
        assert np.all(np.isfinite(a)), name
        scale = max(1.0, float(np.max(np.abs(w)))) if np.size(w) else 1.0
        np.testing.assert_allclose(a, w, rtol=rtol, atol=atol * scale, err_msg=name)


def hub_graph(rng: np.random.Generator, n: int, hub: int, index_dtype: Any) -> CSRGraph:
    """n x n with a few hub rows (up to `hub` neighbours), a hub column, empty rows."""
    src, dst = [], []
    deg = rng.integers(0, 6, n)
    deg[rng.choice(n, 3, replace=False)] = [hub, hub // 2, 33]
    deg[rng.choice(n, max(1, n // 20), replace=False)] = 0
    for i, d in enumerate(deg):
        cols = rng.choice(n, size=min(int(d), n), replace=False)
        src += list(cols)
        dst += [i] * len(cols)
    hub_col = int(rng.integers(0, n))
    src += [hub_col] * n
    dst += list(range(n))
    return CSRGraph.from_edge_index(np.array(src), np.array(dst), num_src=n, num_dst=n, index_dtype=index_dtype)


# ---------------------------------------------------------------------- property-based parity
@settings(max_examples=60)
@given(data=st.data(), dtype=st.sampled_from([np.float32, np.float64]),
       dropout=st.sampled_from([0.0, 0.0, 0.4]), seed=st.integers(0, 2**64 - 1))
def test_parity_with_reference_small_graphs(data, dtype, dropout, seed):
    """Every score configuration on hypothesis graphs (empty rows, hubs, bipartite, both
    index dtypes): forward, weights and every gradient against the float64 reference."""
    p = data.draw(attention_problems())
    q, k, v = p.inputs.q, p.inputs.k, p.inputs.v
    dout = np.random.default_rng(seed % 2**32).uniform(-1, 1, (p.g.shape[0],) + v.shape[1:])
    got, want, _ = run_both(p.g, q, k, v, dout, p.kwargs(), np.dtype(dtype), dropout, seed)
    assert_parity(got, want, dtype)


@settings(max_examples=30)
@given(data=st.data(), dtype=st.sampled_from([np.float32, np.float64]),
       dims=st.sampled_from([(1, 1), (3, 5), (4, 4), (8, 16), (64, 64), (128, 128), (130, 7), (300, 72)]),
       heads=st.integers(1, 4), index_dtype=st.sampled_from([np.int32, np.int64]),
       hub=st.sampled_from([40, 300, 3000]), dropout=st.sampled_from([0.0, 0.25]))
def test_parity_with_reference_hub_graphs(data, dtype, dims, heads, index_dtype, hub, dropout):
    """Feature sizes that select every vector width, lanes-per-edge and tile count, on
    graphs with hub rows and a hub column split into several segments."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    g = hub_graph(rng, max(hub + 10, 64), hub, index_dtype)
    config = data.draw(st.sampled_from(SCORE_CONFIGS))
    D, Dv = dims
    inp = data.draw(attention_inputs(g, config["score"], np.float64, heads=heads, dim=D, dim_v=Dv,
                                     styles=("uniform",)))
    dout = rng.uniform(-1, 1, (g.shape[0], heads, Dv))
    kwargs = {**config, **inp.options()}
    got, want, _ = run_both(g, inp.q, inp.k, inp.v, dout, kwargs, np.dtype(dtype), dropout, 12345)
    assert_parity(got, want, dtype)


# ---------------------------------------------------------------------- determinism, dropout, dispatch
@pytest.mark.parametrize("score", ["dot", "cosine", "euclidean", "additive", "gatv2"])
def test_backward_is_bitwise_deterministic(score):
    rng = np.random.default_rng(0)
    g = hub_graph(rng, 4000, 3000, np.int32)
    n, H, D = g.shape[0], 3, 64
    x = (lambda *shape: cupy.asarray(rng.uniform(-1, 1, shape).astype(np.float32)))
    qk = (n, H) if score == "additive" else (n, H, D)
    kw = dict(score=score, tau=0.5 if score in ("cosine", "euclidean") else 1.0,
              att=x(H, D) if score == "gatv2" else None, edge_bias=x(g.nnz, H), dropout=0.1, seed=3)
    gg = g.to("cupy")
    out, ctx = sparsegat.attention_forward(gg, x(*qk), x(*qk), x(n, H, D), **kw)
    dout = cupy.asarray(rng.standard_normal(out.shape).astype(np.float32))
    first = sparsegat.attention_backward(ctx, dout)
    for _ in range(3):
        again = sparsegat.attention_backward(ctx, dout)
        for name, a in first.items():
            assert a.get().tobytes() == getattr(again, name).get().tobytes(), name


@pytest.mark.parametrize("p,seed", [(0.5, 1), (0.1, 2**63 + 7), (0.9, 0)])
def test_dropout_decisions_match_the_reference_hash(p, seed):
    rng = np.random.default_rng(1)
    g = hub_graph(rng, 600, 500, np.int64)
    q = cupy.asarray(rng.standard_normal((600, 2, 16)))
    k = cupy.asarray(rng.standard_normal((600, 2, 16)))
    w = sparsegat.attention_weights(g.to("cupy"), q, k, score="dot", dropout=p, seed=seed).get()
    keep = keep_mask(mix_seed(seed), 0, g.nnz, 2, drop_threshold(p))
    assert np.array_equal(w != 0, keep)


def test_dispatch_picks_cupy_and_keeps_dtypes():
    rng = np.random.default_rng(2)
    g = hub_graph(rng, 50, 40, np.int64).to("cupy")
    q = cupy.asarray(rng.standard_normal((50, 2, 8)).astype(np.float32))
    out, ctx = sparsegat.attention_forward(g, q, q, q)
    assert ctx.backend == "cupy" and out.dtype == np.float32 and isinstance(out, cupy.ndarray)
    grads = sparsegat.attention_backward(ctx, cupy.ones_like(out))
    assert all(isinstance(a, cupy.ndarray) and a.dtype == np.float32 for _, a in grads.items())


def test_misaligned_views():
    rng = np.random.default_rng(3)
    g = hub_graph(rng, 100, 50, np.int32)
    buf = cupy.asarray(rng.standard_normal(100 * 2 * 8 + 1).astype(np.float32))
    q = buf[1:].reshape(100, 2, 8)  # C-contiguous, 4 bytes off 16-byte alignment
    k = cupy.asarray(rng.standard_normal((100, 2, 8)).astype(np.float32))
    out, _ = sparsegat.attention_forward(g.to("cupy"), q, k, k)
    ref, _ = sparsegat.attention_forward(g, q.get().astype(np.float64), k.get().astype(np.float64),
                                         k.get().astype(np.float64), backend="numpy")
    np.testing.assert_allclose(out.get(), ref, rtol=2e-4, atol=2e-5)


@settings(max_examples=10)
@given(g=csr_graphs(min_n=0, max_n=3))
def test_tiny_and_empty_graphs(g):
    q = cupy.ones((g.shape[0], 1, 2))
    k = cupy.ones((g.shape[1], 1, 2))
    out, ctx = sparsegat.attention_forward(g.to("cupy"), q, k, k)
    grads = sparsegat.attention_backward(ctx, cupy.ones_like(out))
    assert out.shape == (g.shape[0], 1, 2) and grads.k.shape == k.shape
