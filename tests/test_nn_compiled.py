"""The compiled (numba) paths of the layers' dense work against the plain NumPy/SciPy ones.

:mod:`sparsegat.nn.compiled` sends ``x @ W`` for a scipy CSR ``x`` and the Adam
update to numba kernels when the numba backend is in use; these tests check that
the two paths agree (to rounding for the product, bit for bit for Adam), that
malformed CSR matrices are refused before any kernel reads them, and that the
plain path is taken where the compiled one does not apply.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("numba")

from sparsegat import nn, optim  # noqa: E402
from sparsegat.nn import compiled  # noqa: E402


@st.composite
def csr_problems(draw):
    """A scipy CSR ``x`` (empty rows and columns likely), a dense ``w``, in one float dtype."""
    rows = draw(st.integers(0, 40))
    cols = draw(st.integers(1, 30))
    out = draw(st.integers(1, 70))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    index_dtype = draw(st.sampled_from([np.int32, np.int64]))
    density = draw(st.sampled_from([0.0, 0.05, 0.3, 1.0]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    x = sp.random(rows, cols, density=density, format="csr", dtype=dtype, random_state=rng)
    x.indices = x.indices.astype(index_dtype)
    x.indptr = x.indptr.astype(index_dtype)
    w = rng.standard_normal((cols, out)).astype(dtype)
    return x, w


@settings(deadline=None, max_examples=60)
@given(csr_problems())
def test_csr_matmul_matches_scipy(problem):
    x, w = problem
    got = compiled.csr_matmul(x, w)
    assert got is not None and got.dtype == w.dtype and got.shape == (x.shape[0], w.shape[1])
    ref = (x.astype(np.float64) @ w.astype(np.float64))
    tol = 1e-5 if w.dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got, ref, rtol=tol, atol=tol * max(1.0, float(np.abs(ref).max(initial=0))))


def test_csr_matmul_declines_where_it_does_not_apply(monkeypatch):
    x = sp.random(5, 4, density=0.5, format="csr", dtype=np.float32, random_state=0)
    w = np.ones((4, 3), np.float32)
    assert compiled.csr_matmul(x.toarray(), w) is None          # dense x
    assert compiled.csr_matmul(x.tocsc(), w) is None            # not CSR
    assert compiled.csr_matmul(x, w.astype(np.float64)) is None  # mixed dtypes
    assert compiled.csr_matmul(x, w, backend="numpy") is None   # the reference backend asked for
    monkeypatch.setenv("SPARSEGAT_BACKEND", "numpy")
    assert compiled.csr_matmul(x, w) is None
    monkeypatch.delenv("SPARSEGAT_BACKEND")
    assert compiled.csr_matmul(x, w) is not None


@pytest.mark.parametrize("corrupt", ["index_high", "index_negative", "indptr_end", "indptr_decreasing"])
def test_malformed_csr_is_refused_before_any_kernel(corrupt):
    """scipy checks little of a CSR's arrays (and nothing once they are modified in place):
    the compiled path checks them all."""
    bad = sp.random(6, 5, density=0.5, format="csr", dtype=np.float32, random_state=1)
    if corrupt == "index_high":
        bad.indices[0] = 5
    elif corrupt == "index_negative":
        bad.indices[-1] = -1
    elif corrupt == "indptr_end":
        bad.indptr[-1] -= 1
    else:
        bad.indptr[2], bad.indptr[3] = bad.indptr[3] + 1, bad.indptr[2]
    with pytest.raises(ValueError, match="x: a malformed CSR"):
        compiled.csr_matmul(bad, np.ones((5, 2), np.float32))


def test_layers_use_the_compiled_product_and_agree_with_the_reference_backend():
    """A GATConv on sparse input gives the same output on backend numba (compiled x @ W)
    and numpy (SciPy's product), to float32 rounding."""
    from sparsegat import CSRGraph

    rng = np.random.default_rng(0)
    x = sp.random(30, 12, density=0.2, format="csr", dtype=np.float32, random_state=rng)
    g = CSRGraph.from_scipy(sp.random(30, 30, density=0.1, format="csr", random_state=rng))
    outs = []
    for backend in ("numba", "numpy"):
        layer = nn.GATConv(12, 4, heads=2, seed=3, backend=backend)
        outs.append(layer.forward(x, g))
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-5, atol=1e-6)


def _two_layer_params(dtype):
    model = nn.Sequential(nn.Linear(7, 5, dtype=dtype, seed=0), nn.ELU(), nn.Linear(5, 3, dtype=dtype, seed=1))
    return model


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cls,kw", [
    (optim.Adam, dict(lr=0.01)),
    (optim.Adam, dict(lr=0.005, weight_decay=5e-4)),
    (optim.Adam, dict(lr=0.02, betas=(0.8, 0.99), eps=1e-6, amsgrad=True, maximize=True)),
    (optim.AdamW, dict(lr=0.01, weight_decay=0.1)),
    (optim.AdamW, dict(lr=0.01, weight_decay=0.0, amsgrad=True)),
], ids=["adam", "adam-l2", "adam-amsgrad-maximize", "adamw", "adamw-nodecay-amsgrad"])
def test_compiled_adam_is_bitwise_the_numpy_adam(monkeypatch, dtype, cls, kw):
    """Ten steps with random gradients: the compiled update and the NumPy one give the
    same bits in every parameter and every state array."""
    rng = np.random.default_rng(5)
    grads = [[rng.standard_normal(p.shape).astype(dtype) for p in (lay.params[k] for _, lay, k in
              _two_layer_params(dtype).named_parameters())] for _ in range(10)]
    results = []
    for use_numba in (True, False):
        monkeypatch.setattr(compiled, "enabled", (lambda backend=None: True) if use_numba
                            else (lambda backend=None: False))
        model = _two_layer_params(dtype)
        opt = cls(model, **kw)
        for step in grads:
            for (_, layer, key), g in zip(model.named_parameters(), step):
                layer.grads[key] = g
            opt.step()
        results.append(([layer.params[key].copy() for _, layer, key in model.named_parameters()],
                         opt.state_dict()))
    (p_numba, s_numba), (p_numpy, s_numpy) = results
    for a, b in zip(p_numba, p_numpy):
        assert a.dtype == dtype and np.array_equal(a, b)
    flat_numba, flat_numpy = _flatten(s_numba), _flatten(s_numpy)
    assert sorted(flat_numba) == sorted(flat_numpy)
    for key, value in flat_numba.items():
        assert np.array_equal(np.asarray(value), np.asarray(flat_numpy[key])), key


def _flatten(state, prefix=""):
    out = {}
    if isinstance(state, dict):
        for k, v in state.items():
            out.update(_flatten(v, f"{prefix}/{k}"))
    elif isinstance(state, (list, tuple)):
        for i, v in enumerate(state):
            out.update(_flatten(v, f"{prefix}/{i}"))
    else:
        out[prefix] = state
    return out


def test_compiled_adam_declines_non_contiguous_parameters(monkeypatch):
    """A parameter that is a strided view goes through the NumPy update (and still updates)."""
    model = nn.Linear(6, 4, seed=0)
    base = np.zeros((6, 8), np.float32)
    base[:, ::2] = model.params["W"]
    model.params["W"] = base[:, ::2]
    model.grads["W"] = np.ones((6, 4), np.float32)
    model.grads["b"] = np.ones(4, np.float32)
    state = {"step": 1, "exp_avg": np.zeros((6, 4), np.float32), "exp_avg_sq": np.zeros((6, 4), np.float32)}
    assert not compiled.adam_update(model.params["W"], model.grads["W"], state, lr=0.1, betas=(0.9, 0.999),
                                    eps=1e-8, weight_decay=0.0, decoupled=False, amsgrad=False, maximize=False)
    before = model.params["W"].copy()
    optim.Adam(model, lr=0.1).step()
    assert np.all(model.params["W"] < before)  # positive gradients: every weight went down
    assert np.all(base[:, 1::2] == 0)


@pytest.mark.parametrize("alpha", [1.0, 0.3, 2.5])
def test_elu_matches_its_definition_everywhere(alpha):
    x = np.concatenate([np.linspace(-60.0, 60.0, 2001), [0.0, -0.0, 1e-300, -1e-300, np.inf, -np.inf]])
    for dtype in (np.float32, np.float64):
        xd = x.astype(dtype)[None, :]
        y = nn.ELU(alpha).forward(xd)
        ref = np.where(xd > 0, xd, dtype(alpha) * np.expm1(np.minimum(xd, 0)))
        assert y.dtype == dtype and np.array_equal(y, ref)
    assert np.isnan(nn.ELU(alpha).forward(np.array([[np.nan]]))).all()
