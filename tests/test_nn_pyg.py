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


# ---------------------------------------------------------------------- PyG's input forms
# Multigraphs given as PyG edge_index (repeated edges, a doubled self-loop), edge features with
# every fill_value, bipartite pairs, and the attention weights PyG returns, mapped to our order.

#: PyG parameter name -> (our name, layout): "T" transposed (Linear weights), "1" att[None], "" as is.
_PYG_NAMES = {"lin.weight": ("W", "T"), "lin_src.weight": ("W_src", "T"), "lin_dst.weight": ("W_dst", "T"),
              "lin_l.weight": ("W_src", "T"), "lin_r.weight": ("W_dst", "T"), "lin_l.bias": ("b_src", ""),
              "lin_r.bias": ("b_dst", ""), "lin_edge.weight": ("W_edge", "T"), "res.weight": ("W_res", "T"),
              "att_src": ("att_src", "1"), "att_dst": ("att_dst", "1"), "att_edge": ("att_edge", "1"),
              "att": ("att", "1"), "bias": ("bias", "")}


def _pyg_layout(a, layout):
    """Our array in PyG's layout."""
    return a.T if layout == "T" else (a[None] if layout == "1" else a)


def _our_layout(a, layout):
    """PyG's array in our layout."""
    return a.T if layout == "T" else (a[0] if layout == "1" else a)


def _multigraph_edge_index(n_src: int, n_dst: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    src, dst = rng.integers(0, n_src, 24), rng.integers(0, n_dst, 24)
    src = np.concatenate([src, src[:5], [1, 1, 2]])  # 5 repeated edges, loop (1, 1) twice, (2, 2)
    dst = np.concatenate([dst, dst[:5], [1, 1, 2]])
    return np.stack([src, dst])


def _pyg_positions(edge_index: np.ndarray, perm: np.ndarray, edge_ids: np.ndarray) -> np.ndarray:
    """For each edge of our looped graph (CSR order), its position in the edge_index PyG returns:
    the input's non-loop edges in input order, then the loops 0, 1, ..."""
    nonloop = edge_index[0] != edge_index[1]
    rank = np.cumsum(nonloop) - 1
    out = np.empty(len(edge_ids), dtype=np.int64)
    kept = edge_ids >= 0
    out[kept] = rank[perm[edge_ids[kept]]]
    out[~kept] = nonloop.sum() + np.arange((~kept).sum())
    return out


_FORM_CASES = [
    ("fill-mean", {}), ("fill-add", {"fill_value": "add"}), ("fill-number", {"fill_value": 0.5}),
    ("fill-array", {"fill_value": np.array([1.0, -2.0, 0.3])}), ("edge_dim-1", {"edge_dim": 1}),
    ("no-edge-features", {"edge_dim": None}), ("mean-heads", {"heads": 3, "concat": False}),
    ("no-self-loops", {"add_self_loops": False}), ("pair-int-in_dim", {"form": "pair"}),
    ("pair-in_dim", {"form": "pair", "in_dim": (4, 3)}), ("bipartite-single-x", {"form": "single"}),
]
_GATCONV_CASES = _FORM_CASES + [("no-x_dst", {"form": "no_dst"})]
_GATV2_CASES = _FORM_CASES + [("shared", {"share_weights": True}),
                              ("shared-pair", {"share_weights": True, "form": "pair"})]


def _compare_forms(cls, pyg_cls, case: dict, rng) -> None:
    case = dict(case)
    form, in_dim = case.pop("form", "square"), case.pop("in_dim", 4)
    kw = {"heads": 2, "concat": True, "residual": True, "negative_slope": 0.3, "edge_dim": 3, **case}
    n_src, n_dst = (7, 7) if form == "square" else (7, 5)
    ei = _multigraph_edge_index(n_src, n_dst, seed=0)
    g, perm = sg.CSRGraph.from_edge_index(ei, num_src=n_src, num_dst=n_dst, return_perm=True)
    layer = cls(in_dim, 3, dtype=np.float64, seed=0, **kw)
    layer.params["bias"] = rng.normal(size=layer.params["bias"].shape)
    if isinstance(kw.get("fill_value"), np.ndarray):
        kw["fill_value"] = _t(kw["fill_value"])
    module = pyg_cls(in_dim, 3, **kw).double()
    with torch.no_grad():
        for name, p in module.named_parameters():
            ours, layout = _PYG_NAMES[name]
            p.copy_(_t(_pyg_layout(layer.params[ours], layout)))
    in_src, in_dst = in_dim if isinstance(in_dim, tuple) else (in_dim, in_dim)
    x_src = rng.normal(size=(n_src, in_src))
    x_dst = None if form == "no_dst" else rng.normal(size=(n_dst, in_dst))
    x = (x_src, x_dst) if form in ("pair", "no_dst") else x_src
    e_in = rng.normal(size=(ei.shape[1], kw["edge_dim"])) if kw["edge_dim"] else None  # PyG's edge order
    if kw["edge_dim"] == 1:
        e_in = e_in[:, 0]  # 1-D, as PyG takes it
    y, (g2, alpha) = layer.forward(x, g, None if e_in is None else e_in[perm], return_attention_weights=True)
    R = rng.normal(size=y.shape)
    dx = layer.backward(R)

    xt = tuple(None if a is None else _t(a).requires_grad_() for a in x) if isinstance(x, tuple) else \
        _t(x).requires_grad_()
    et = None if e_in is None else _t(e_in).requires_grad_()
    extra = {"size": (n_src, n_dst)} if pyg_cls is pyg_nn.GATConv and form != "square" else {}
    if form == "single":  # PyG has no "first n_dst rows" convention: give it the pair
        xt = (xt, xt[:n_dst])
    yt, (ei_used, alpha_t) = module(xt, torch.tensor(ei), et, return_attention_weights=True, **extra)
    (yt * _t(R)).sum().backward()

    _close(y, yt, "out")
    if kw.get("add_self_loops", True):
        _, edge_ids = nn.graph_with_self_loops(g, return_edge_ids=True)
        pos = _pyg_positions(ei, perm, edge_ids)
        np.testing.assert_array_equal(ei_used.numpy()[:, pos], np.stack([g2.indices, g2.row_ids()]))
    else:
        pos = perm
    _close(alpha, alpha_t[pos], "attention weights")
    for name, p in module.named_parameters():
        ours, layout = _PYG_NAMES[name]
        if p.grad is None:  # unused by this forward (att_dst and res without x_dst)
            assert ours not in layer.grads, ours
            continue
        _close(layer.grads[ours], _our_layout(p.grad, layout), f"d {ours}")
    if et is not None:
        _close(layer.edge_attr_grad[np.argsort(perm)], et.grad, "d edge_attr")
    if form == "single":
        _close(dx, xt[0].grad, "dx")
    elif isinstance(x, tuple):
        _close(dx[0], xt[0].grad, "dx_src")
        assert (dx[1] is None) == (x_dst is None)
        if x_dst is not None:
            _close(dx[1], xt[1].grad, "dx_dst")
    else:
        _close(dx, xt.grad, "dx")


@pytest.mark.parametrize("case", [c for _, c in _GATCONV_CASES], ids=[n for n, _ in _GATCONV_CASES])
def test_gatconv_input_forms_match_pyg(case):
    _compare_forms(nn.GATConv, pyg_nn.GATConv, case, np.random.default_rng(10))


@pytest.mark.parametrize("case", [c for _, c in _GATV2_CASES], ids=[n for n, _ in _GATV2_CASES])
def test_gatv2conv_input_forms_match_pyg(case):
    _compare_forms(nn.GATv2Conv, pyg_nn.GATv2Conv, case, np.random.default_rng(11))


def test_gatv2conv_edge_features_in_chunks_match_pyg(monkeypatch):
    """The chunked GATv2 edge path (3 edges per chunk here) against PyG."""
    from sparsegat.nn import edges

    monkeypatch.setattr(edges, "CHUNK_ELEMENTS", 3 * 2 * 3)
    _compare_forms(nn.GATv2Conv, pyg_nn.GATv2Conv, {}, np.random.default_rng(12))
