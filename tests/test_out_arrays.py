"""``out=`` of :func:`attention_forward` and :func:`attention_backward`: results written into
the caller's arrays (what the JAX adapter uses to fill XLA's buffers in place), bitwise as
without ``out=``, and every misuse refused with a clear error."""

from __future__ import annotations

import numpy as np
import pytest

import sparsegat as sg
from sparsegat.attention import attention_backward, attention_forward

BACKENDS = [b for b in sg.available_backends() if b != "cupy"]
G = sg.CSRGraph.from_edge_index([0, 1, 1, 2, 3, 0, 2, 4], [0, 0, 0, 1, 1, 2, 2, 4], num_src=5, num_dst=5)


def inputs(score="gatv2", dtype=np.float64, heads=2, d=3, dv=3):
    rng = np.random.default_rng(0)
    qk = (heads,) if score == "additive" else (heads, d)
    p = dict(q=rng.standard_normal((G.n_dst,) + qk).astype(dtype),
             k=rng.standard_normal((G.n_src,) + qk).astype(dtype),
             v=rng.standard_normal((G.n_src, heads, dv)).astype(dtype),
             edge_bias=rng.standard_normal((G.nnz, heads)).astype(dtype))
    if score == "gatv2":
        p["att"] = rng.standard_normal((heads, d)).astype(dtype)
    return p


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("score", ["gatv2", "euclidean", "additive"])
def test_results_written_into_the_given_arrays_bitwise(backend, score):
    p = inputs(score)
    options = dict(score=score, dropout=0.3, seed=5, backend=backend)
    expected, ctx = attention_forward(G, **p, **options)
    target = np.full_like(expected, np.nan)
    out, ctx2 = attention_forward(G, **p, **options, out=target)
    assert out is target
    np.testing.assert_array_equal(out, expected)

    dout = np.random.default_rng(1).standard_normal(expected.shape)
    grads = attention_backward(ctx, dout)
    names = [n for n in ("q", "k", "v", "att", "tau", "edge_bias") if getattr(grads, n) is not None]
    into = {n: np.full_like(getattr(grads, n), np.nan) for n in names}
    given = attention_backward(ctx2, dout, out=into)
    for n in names:
        assert getattr(given, n) is into[n], n
        np.testing.assert_array_equal(into[n], getattr(grads, n))


def test_a_subset_of_gradients_can_be_given():
    p = inputs("dot")
    del p["edge_bias"]
    out, ctx = attention_forward(G, **p, backend=BACKENDS[-1])
    dout = np.ones_like(out)
    dk = np.empty_like(p["k"])
    grads = attention_backward(ctx, dout, out={"k": dk})
    assert grads.k is dk and grads.q is not None and grads.v is not None


def test_misuse_is_refused():
    p = inputs("dot", dv=3)
    del p["edge_bias"]
    out, ctx = attention_forward(G, **p)
    dout = np.ones_like(out)
    with pytest.raises(ValueError, match=r"out must have shape \(5, 2, 3\)"):
        attention_forward(G, **p, out=np.empty((5, 2, 4)))
    with pytest.raises(TypeError, match="out must have dtype float64"):
        attention_forward(G, **p, out=np.empty((5, 2, 3), np.float32))
    with pytest.raises(TypeError, match="out must be a numpy array"):
        attention_forward(G, **p, out=[[0.0]])
    with pytest.raises(ValueError, match="C-contiguous, writeable"):
        attention_forward(G, **p, out=np.empty((5, 2, 6))[:, :, ::2])
    frozen = np.empty((5, 2, 3))
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="C-contiguous, writeable"):
        attention_forward(G, **p, out=frozen)
    with pytest.raises(ValueError, match="out shares memory with q"):
        attention_forward(G, **p, out=p["q"])
    with pytest.raises(TypeError, match="out must be a dict"):
        attention_backward(ctx, dout, out=[np.empty_like(p["q"])])
    with pytest.raises(ValueError, match="key 'att'"):
        attention_backward(ctx, dout, out={"att": np.empty((2, 3))})
    with pytest.raises(ValueError, match=r"out\['q'\] shares memory with k"):
        attention_backward(ctx, dout, out={"q": p["k"]})
    shared = np.empty((2,) + p["q"].shape)
    with pytest.raises(ValueError, match=r"out\['q'\] and out\['k'\] share memory"):
        attention_backward(ctx, dout, out={"q": shared[0], "k": shared[0]})
    assert np.isfinite(p["q"]).all()  # nothing written before the checks
