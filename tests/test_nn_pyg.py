"""Parity with PyTorch Geometric: GATConv and GATv2Conv with identical weights give the same
outputs and the same gradients of every parameter and of the input features.

Skipped when torch or torch_geometric is not importable (the optional ``pyg`` extra)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import sparsegat as sg
from sparsegat import nn

pytestmark = pytest.mark.pyg

torch = pytest.importorskip("torch")
pyg_nn = pytest.importorskip("torch_geometric.nn")


def _graph(n: int, seed: int) -> sg.CSRGraph:
    rng = np.random.default_rng(seed)
    A = rng.random((n, n)) < 0.2
    A = A | A.T
    A[n - 1] = False  # an isolated destination (gets only its self-loop, or nothing)
    A[2, 2] = True    # an existing self-loop: PyG removes and re-adds it, we keep it once
    return sg.CSRGraph.from_scipy(sp.csr_matrix(A.astype(float)))


def _edge_index(g: sg.CSRGraph):
    dst = np.repeat(np.arange(g.n_dst), np.diff(np.asarray(g.indptr)))
    return torch.tensor(np.stack([np.asarray(g.indices), dst]), dtype=torch.long)


def _t(a):
    return torch.tensor(np.asarray(a), dtype=torch.float64)


def _run_both(layer, module, x, g, rng):
    y = layer.forward(x, g)
    R = rng.normal(size=y.shape)
    dx = layer.backward(R)
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    yt = module(xt, _edge_index(g))
    (yt * _t(R)).sum().backward()
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-9, atol=1e-12)
    return y


def _close(ours, theirs, what):
    np.testing.assert_allclose(ours, theirs.detach().numpy(), rtol=1e-9, atol=1e-12, err_msg=what)


@pytest.mark.parametrize("concat", [True, False])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("self_loops", [True, False])
def test_gatconv_matches_pyg(concat, residual, bias, self_loops):
    rng = np.random.default_rng(0)
    g = _graph(25, seed=1)
    x = rng.normal(size=(25, 6))
    layer = nn.GATConv(6, 4, heads=3, concat=concat, residual=residual, bias=bias,
                       add_self_loops=self_loops, negative_slope=0.3, dtype=np.float64, seed=0)
    if bias:
        layer.params["bias"] = rng.normal(size=layer.params["bias"].shape)
    module = pyg_nn.GATConv(6, 4, heads=3, concat=concat, residual=residual, bias=bias,
                            add_self_loops=self_loops, negative_slope=0.3).double()
    with torch.no_grad():
        module.lin.weight.copy_(_t(layer.params["W"].T))
        module.att_src.copy_(_t(layer.params["att_src"][None]))
        module.att_dst.copy_(_t(layer.params["att_dst"][None]))
        if bias:
            module.bias.copy_(_t(layer.params["bias"]))
        if residual:
            module.res.weight.copy_(_t(layer.params["W_res"].T))
    _run_both(layer, module, x, g, rng)
    _close(layer.grads["W"], module.lin.weight.grad.T, "W")
    _close(layer.grads["att_src"], module.att_src.grad[0], "att_src")
    _close(layer.grads["att_dst"], module.att_dst.grad[0], "att_dst")
    if bias:
        _close(layer.grads["bias"], module.bias.grad, "bias")
    if residual:
        _close(layer.grads["W_res"], module.res.weight.grad.T, "W_res")


@pytest.mark.parametrize("share_weights", [False, True])
@pytest.mark.parametrize("concat", [True, False])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_gatv2conv_matches_pyg(share_weights, concat, residual, bias):
    rng = np.random.default_rng(1)
    g = _graph(25, seed=2)
    x = rng.normal(size=(25, 6))
    layer = nn.GATv2Conv(6, 4, heads=3, concat=concat, residual=residual, bias=bias,
                         share_weights=share_weights, negative_slope=0.15, dtype=np.float64, seed=0)
    if bias:
        layer.params["bias"] = rng.normal(size=layer.params["bias"].shape)
    module = pyg_nn.GATv2Conv(6, 4, heads=3, concat=concat, residual=residual, bias=bias,
                              share_weights=share_weights, negative_slope=0.15).double()
    with torch.no_grad():
        module.lin_l.weight.copy_(_t(layer.params["W_src"].T))
        if not share_weights:
            module.lin_r.weight.copy_(_t(layer.params["W_dst"].T))
        if bias:
            module.lin_l.bias.copy_(_t(layer.params["b_src"]))
            if not share_weights:
                module.lin_r.bias.copy_(_t(layer.params["b_dst"]))
            module.bias.copy_(_t(layer.params["bias"]))
        module.att.copy_(_t(layer.params["att"][None]))
        if residual:
            module.res.weight.copy_(_t(layer.params["W_res"].T))
    _run_both(layer, module, x, g, rng)
    _close(layer.grads["W_src"], module.lin_l.weight.grad.T, "W_src")
    _close(layer.grads["att"], module.att.grad[0], "att")
    if not share_weights:
        _close(layer.grads["W_dst"], module.lin_r.weight.grad.T, "W_dst")
    if bias:
        _close(layer.grads["b_src"], module.lin_l.bias.grad, "b_src")
        if not share_weights:
            _close(layer.grads["b_dst"], module.lin_r.bias.grad, "b_dst")
        _close(layer.grads["bias"], module.bias.grad, "bias")
    if residual:
        _close(layer.grads["W_res"], module.res.weight.grad.T, "W_res")


def test_gat_model_with_sparse_features_matches_pyg():
    """The two-layer Cora model of `sparsegat train` on sparse features, in float32, against PyG's."""
    from sparsegat.train import build_model

    rng = np.random.default_rng(3)
    g = _graph(40, seed=5)
    xs = sp.random(40, 30, density=0.1, random_state=0, format="csr", dtype=np.float32)
    model = build_model("additive", 30, 5, hidden=4, heads=3, dropout=0.6, seed=0)
    conv1, conv2 = model[1], model[4]
    m1 = pyg_nn.GATConv(30, 4, heads=3)
    m2 = pyg_nn.GATConv(12, 5, heads=1, concat=False)
    with torch.no_grad():
        for ours, theirs in ((conv1, m1), (conv2, m2)):
            theirs.lin.weight.copy_(torch.tensor(ours.params["W"].T))
            theirs.att_src.copy_(torch.tensor(ours.params["att_src"][None]))
            theirs.att_dst.copy_(torch.tensor(ours.params["att_dst"][None]))
    y = model.forward(xs, g)  # evaluation: no dropout
    R = rng.normal(size=y.shape).astype(np.float32)
    model.backward(R)
    xt = torch.tensor(xs.toarray())
    ei = _edge_index(g)
    yt = m2(torch.nn.functional.elu(m1(xt, ei)), ei)
    (yt * torch.tensor(R)).sum().backward()
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(conv1.grads["W"], m1.lin.weight.grad.numpy().T, rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(conv2.grads["att_dst"], m2.att_dst.grad.numpy()[0], rtol=1e-3, atol=1e-5)
