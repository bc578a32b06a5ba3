"""The backends' optional dense functions (``csr_matmul``, ``adam_update``) against plain NumPy/SciPy.

The layers and optimizers reach them through the registry
(:func:`sparsegat.backends.optional_function`): the numba backend implements both.
These tests check that the two paths agree (to rounding for the product, bit for bit
for Adam), that malformed CSR matrices are refused before any kernel reads them, that
the plain path is taken where the compiled one does not apply, and that a layer's
``backend=`` decides for its optimizer too.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("numba")

from sparsegat import nn, optim  # noqa: E402
from sparsegat.backends import get_backend, optional_function  # noqa: E402
from sparsegat.nn.module import sparse_dense_matmul  # noqa: E402

NUMBA = get_backend("numba")


@pytest.fixture
def calls(monkeypatch):
    """Counts the numba backend's csr_matmul and adam_update calls (still running them)."""
    counts = {"csr_matmul": 0, "adam_update": 0}
    for name in counts:
        real = getattr(NUMBA, name)

        def spy(*args, _real=real, _name=name):
            counts[_name] += 1
            return _real(*args)

        monkeypatch.setattr(NUMBA, name, spy)
    return counts


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
    got = NUMBA.csr_matmul(x.indptr, x.indices, x.data, w)
    assert got.dtype == w.dtype and got.shape == (x.shape[0], w.shape[1])
    ref = (x.astype(np.float64) @ w.astype(np.float64))
    tol = 1e-5 if w.dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got, ref, rtol=tol, atol=tol * max(1.0, float(np.abs(ref).max(initial=0))))


def test_csr_matmul_is_used_only_where_it_applies(monkeypatch, calls):
    x = sp.random(5, 4, density=0.5, format="csr", dtype=np.float32, random_state=0)
    w = np.ones((4, 3), np.float32)
    ref = x.toarray() @ w
    for xx, ww, backend in [(x.toarray(), w, None),              # dense x
                            (x.tocsc(), w, None),                # not CSR
                            (x, w.astype(np.float64), None),     # mixed dtypes
                            (x, w, "numpy")]:                    # the reference backend asked for
        np.testing.assert_allclose(sparse_dense_matmul(xx, ww, backend), ref, rtol=1e-6)
    assert calls["csr_matmul"] == 0
    assert optional_function("csr_matmul", "numpy", "numpy") is None
    monkeypatch.setenv("SPARSEGAT_BACKEND", "numpy")
    sparse_dense_matmul(x, w)
    assert calls["csr_matmul"] == 0
    monkeypatch.delenv("SPARSEGAT_BACKEND")
    np.testing.assert_allclose(sparse_dense_matmul(x, w), ref, rtol=1e-6)
    assert calls["csr_matmul"] == 1


@pytest.mark.parametrize("fmt", ["csr", "csc"])
@pytest.mark.parametrize("corrupt", ["index_high", "index_negative", "indptr_end", "indptr_decreasing"])
def test_malformed_sparse_input_is_refused_before_any_kernel(corrupt, fmt, calls):
    """scipy checks little of a CSR's arrays (and nothing once they are modified in place):
    the layers check them all before converting or multiplying."""
    bad = sp.random(6, 5, density=0.5, format=fmt, dtype=np.float32, random_state=1)
    if corrupt == "index_high":
        bad.indices[0] = 10**6
    elif corrupt == "index_negative":
        bad.indices[-1] = -1
    elif corrupt == "indptr_end":
        bad.indptr[-1] -= 1
    else:
        bad.indptr[2], bad.indptr[3] = bad.indptr[3] + 1, bad.indptr[2]
    with pytest.raises(ValueError, match="^x: "):
        nn.Linear(5, 2).forward(bad)
    assert calls["csr_matmul"] == 0


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
def test_compiled_adam_is_bitwise_the_numpy_adam(monkeypatch, calls, dtype, cls, kw):
    """Ten steps with random gradients: the compiled update and the NumPy one give the
    same bits in every parameter and every state array."""
    rng = np.random.default_rng(5)
    grads = [[rng.standard_normal(p.shape).astype(dtype) for p in (lay.params[k] for _, lay, k in
              _two_layer_params(dtype).named_parameters())] for _ in range(10)]
    results = []
    for backend in ("numba", "numpy"):
        monkeypatch.setenv("SPARSEGAT_BACKEND", backend)
        model = _two_layer_params(dtype)
        opt = cls(model, **kw)
        for step in grads:
            for (_, layer, key), g in zip(model.named_parameters(), step):
                layer.grads[key] = g
            opt.step()
        results.append(([layer.params[key].copy() for _, layer, key in model.named_parameters()],
                         opt.state_dict()))
    assert calls["adam_update"] == 10 * 4  # the numba run only, every parameter
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


def test_compiled_adam_declines_non_contiguous_parameters(calls):
    """A parameter that is a strided view goes through the NumPy update (and still updates)."""
    model = nn.Linear(6, 4, seed=0)
    base = np.zeros((6, 8), np.float32)
    base[:, ::2] = model.params["W"]
    model.params["W"] = base[:, ::2]
    model.grads["W"] = np.ones((6, 4), np.float32)
    model.grads["b"] = np.ones(4, np.float32)
    before = model.params["W"].copy()
    optim.Adam(model, lr=0.1).step()
    assert np.all(model.params["W"] < before)  # positive gradients: every weight went down
    assert np.all(base[:, 1::2] == 0)
    assert calls["adam_update"] == 1  # the bias only
    # the NumPy update of the strided view gives the compiled update's bits on a contiguous copy
    twin = nn.Linear(6, 4, seed=0)
    twin.params["W"] = before.copy()
    twin.grads = {"W": np.ones((6, 4), np.float32), "b": np.ones(4, np.float32)}
    optim.Adam(twin, lr=0.1).step()
    assert calls["adam_update"] == 3
    assert np.array_equal(model.params["W"], twin.params["W"])
    assert np.array_equal(model.params["b"], twin.params["b"])


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_integer_and_read_only_parameters_never_reach_the_update(monkeypatch, calls, backend):
    """An int64 parameter (the compiled update used to write INT64_MIN into it) and a read-only
    one (a numba TypingError) are refused with a clear error on both paths."""
    monkeypatch.setenv("SPARSEGAT_BACKEND", backend)
    model = nn.Linear(3, 2, seed=0)
    opt = optim.Adam(model, lr=0.1)
    model.params["W"] = np.arange(6, dtype=np.int64).reshape(3, 2)
    model.grads = {"W": np.ones((3, 2), np.float32), "b": np.ones(2, np.float32)}
    with pytest.raises(TypeError, match="parameter 'W' has dtype int64"):
        opt.step()
    assert model.params["W"].tolist() == [[0, 1], [2, 3], [4, 5]]
    ro = np.ones((3, 2), np.float32)
    ro.flags.writeable = False
    model.params["W"] = ro
    with pytest.raises(ValueError, match="parameter 'W' is a read-only array"):
        opt.step()
    assert calls["adam_update"] == 0


@pytest.mark.parametrize("backend", ["numpy", "numba", None])
def test_the_optimizer_follows_the_layer_backend(calls, backend):
    """A layer built with ``backend="numpy"`` gets the NumPy Adam; numba (or the default) the kernel."""
    layer = nn.GATConv(6, 4, heads=2, seed=0, backend=backend)
    for _, owner, key in layer.named_parameters():
        owner.grads[key] = np.ones_like(owner.params[key])
    optim.Adam(layer, lr=0.01).step()
    n_params = len(list(layer.named_parameters()))
    assert n_params >= 3 and calls["adam_update"] == (0 if backend == "numpy" else n_params)


@pytest.mark.parametrize("alpha", [1.0, 0.3, 2.5])
def test_elu_matches_its_definition_everywhere(alpha):
    x = np.concatenate([np.linspace(-60.0, 60.0, 2001), [0.0, -0.0, 1e-300, -1e-300, np.inf, -np.inf]])
    for dtype in (np.float32, np.float64):
        xd = x.astype(dtype)[None, :]
        y = nn.ELU(alpha).forward(xd)
        ref = np.where(xd > 0, xd, dtype(alpha) * np.expm1(np.minimum(xd, 0)))
        assert y.dtype == dtype and np.array_equal(y, ref)
    assert np.isnan(nn.ELU(alpha).forward(np.array([[np.nan]]))).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("parts", [1, 2])
def test_blockdiag_product_matches_the_matmul(dtype, parts):
    """``dh += G @ A.T`` for A of block-diagonal parts (the GAT attention vectors)."""
    from sparsegat.nn.base import block_diag

    rng = np.random.default_rng(parts)
    n, H, C = 37, 3, 5
    A = np.concatenate([block_diag(np, rng.standard_normal((H, C)).astype(dtype)) for _ in range(parts)], axis=1)
    G = rng.standard_normal((n, parts * H)).astype(dtype)
    dh = rng.standard_normal((n, H * C)).astype(dtype)
    expected = dh + G @ A.T
    NUMBA.add_blockdiag_product(dh, G, A, C)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(dh, expected, rtol=tol, atol=tol)
    assert optional_function("add_blockdiag_product", "numpy", "numba") is NUMBA.add_blockdiag_product
    assert optional_function("add_blockdiag_product", "numpy", "numpy") is None
