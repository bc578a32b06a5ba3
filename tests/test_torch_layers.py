"""The PyG-compatible layers ``sparsegat.torch.GATConv`` and ``GATv2Conv``.

Parity with PyG (marker ``pyg``, skipped without torch_geometric): state dicts both
ways, outputs, every parameter gradient and the input gradient, on a multigraph with
repeated edges and self-loops, for every option; attention weights in PyG's edge
order. Without PyG: caching, dropout, dtypes, errors, ``torch.compile``. CUDA tests
(marker ``gpu``) skip without a GPU.

The CPU tests run the NumPy reference backend (``backend="numpy"``): no Numba compile.
"""

from __future__ import annotations

import importlib.util

import pytest

torch = pytest.importorskip("torch")
st = pytest.importorskip("sparsegat.torch")

import torch.nn.functional as F  # noqa: E402

from sparsegat.torch import _layer_graph  # noqa: E402

HAS_PYG = importlib.util.find_spec("torch_geometric") is not None
HAS_CUDA = torch.cuda.is_available() and importlib.util.find_spec("cupy") is not None
F64 = torch.float64
LAYERS = ("GATConv", "GATv2Conv")
#: float64 parity tolerance (absolute and relative).
TOL64 = dict(rtol=1e-9, atol=1e-9)

#: 6 nodes; repeated edges (2->0 twice, 3->1 three times), self-loops (0->0, 2->2 twice, 4->4),
#: node 5 without incoming edges.
EDGES = [[0, 1, 2, 2, 3, 3, 3, 0, 1, 4, 2, 2, 4, 5], [1, 2, 0, 0, 1, 1, 1, 0, 3, 2, 2, 2, 4, 3]]


def needs_pyg(test):
    """Marker ``pyg``, skipped without torch_geometric."""
    return pytest.mark.pyg(pytest.mark.skipif(not HAS_PYG, reason="needs torch_geometric")(test))


def edge_index(device: str = "cpu") -> torch.Tensor:
    return torch.tensor(EDGES, device=device)


def features(n: int, f: int, dtype=F64, seed: int = 0, device: str = "cpu") -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, f, generator=gen, dtype=dtype).to(device).requires_grad_(True)


def pyg_layer(name: str, *args, **kw) -> torch.nn.Module:
    import torch_geometric.nn as pyg_nn

    return getattr(pyg_nn, name)(*args, **kw)


def our_layer(name: str, *args, **kw) -> torch.nn.Module:
    return getattr(st, name)(*args, backend="numpy", **kw)


def pair(name: str, *args, dtype=F64, **kw) -> tuple[torch.nn.Module, torch.nn.Module]:
    """A PyG layer with random parameters (biases included) and ours loaded from its state dict."""
    torch.manual_seed(1)
    theirs = pyg_layer(name, *args, **kw).to(dtype)
    with torch.no_grad():
        for p in theirs.parameters():
            p.copy_(torch.randn_like(p) * 0.5)  # non-zero biases, larger attention vectors
    ours = our_layer(name, *args, **kw).to(dtype)
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


def run(layer, x, ei, edge_attr=None, **kw):
    return layer(x, ei, edge_attr, return_attention_weights=True, **kw)


def assert_parity(theirs, ours, x, ei, edge_attr=None, tol=TOL64, **kw):
    """Outputs, attention weights (PyG's edge order) and every gradient agree."""
    y_t, (ei_t, a_t) = run(theirs, x, ei, edge_attr, **kw)
    y_o, (ei_o, a_o) = run(ours, x, ei, edge_attr, **kw)
    assert y_o.shape == y_t.shape and y_o.dtype == y_t.dtype
    torch.testing.assert_close(y_o, y_t, **tol)
    assert torch.equal(ei_o, ei_t)
    assert a_o.shape == a_t.shape
    torch.testing.assert_close(a_o, a_t, **tol)
    gen = torch.Generator().manual_seed(5)
    R = torch.randn(y_t.shape, generator=gen, dtype=y_t.dtype)
    S = torch.randn(a_t.shape, generator=gen, dtype=a_t.dtype)
    xs = [t for t in (x if isinstance(x, (tuple, list)) else (x,)) if t is not None]
    extra = [edge_attr] if edge_attr is not None and edge_attr.requires_grad else []
    names = [n for n, _ in theirs.named_parameters()]
    assert names == [n for n, _ in ours.named_parameters()] or sorted(names) == sorted(
        n for n, _ in ours.named_parameters())
    p_t, p_o = dict(theirs.named_parameters()), dict(ours.named_parameters())
    g_t = torch.autograd.grad((y_t * R).sum() + (a_t * S).sum(), xs + extra + [p_t[n] for n in names],
                              allow_unused=True)
    g_o = torch.autograd.grad((y_o * R).sum() + (a_o * S).sum(), xs + extra + [p_o[n] for n in names],
                              allow_unused=True)
    labels = [f"x{i}" for i in range(len(xs))] + ["edge_attr"] * len(extra) + names
    for label, a, b in zip(labels, g_o, g_t):
        if b is None:
            assert a is None or not a.abs().any(), label
        else:
            torch.testing.assert_close(a, b, msg=label, **tol)


# ---------------------------------------------------------------------- state dicts
CONFIGS = [
    ("GATConv", (6, 4), dict(heads=3)),
    ("GATConv", ((6, 5), 4), dict(heads=2, edge_dim=3, residual=True)),
    ("GATConv", (6, 4), dict(heads=2, concat=False, bias=False, residual=True, edge_dim=1)),
    ("GATv2Conv", (6, 4), dict(heads=3)),
    ("GATv2Conv", ((6, 5), 4), dict(heads=2, edge_dim=3, residual=True)),
    ("GATv2Conv", (6, 4), dict(heads=2, share_weights=True, bias=False, concat=False)),
]


@pytest.mark.parametrize("name,args,kw", CONFIGS)
@needs_pyg
def test_state_dict_has_pygs_keys_and_shapes_both_ways(name, args, kw):
    theirs, ours = pyg_layer(name, *args, **kw), our_layer(name, *args, **kw)
    sd_t, sd_o = theirs.state_dict(), ours.state_dict()
    assert {k: tuple(v.shape) for k, v in sd_o.items()} == {k: tuple(v.shape) for k, v in sd_t.items()}
    ours.load_state_dict(sd_t)          # PyG -> ours (strict)
    theirs2 = pyg_layer(name, *args, **kw)
    theirs2.load_state_dict(ours.state_dict())  # ours -> PyG (strict)
    for k, v in theirs2.state_dict().items():
        assert torch.equal(v, sd_t[k]), k
    assert repr(ours) == repr(theirs)


def test_initialisation_follows_pygs_rules():
    conv = st.GATConv(100, 10, heads=4, edge_dim=20, residual=True)
    for p, fan in ((conv.lin.weight, 140), (conv.att_src, 14), (conv.att_edge, 14), (conv.lin_edge.weight, 60)):
        bound = (6.0 / fan) ** 0.5
        assert p.abs().max() <= bound and p.abs().max() > 0.8 * bound
    assert not conv.bias.any()
    v2 = st.GATv2Conv(100, 10, heads=4)
    assert 0.08 < v2.lin_l.bias.abs().max() <= 0.1  # 1 / sqrt(fan_in)
    assert st.GATv2Conv(8, 4, share_weights=True).lin_r is not None


# ---------------------------------------------------------------------- parity with PyG
@pytest.mark.parametrize("name", LAYERS)
@pytest.mark.parametrize("kw", [dict(heads=3), dict(heads=2, concat=False), dict(heads=2, residual=True),
                                dict(heads=2, add_self_loops=False), dict(heads=1, bias=False),
                                dict(heads=2, negative_slope=0.05)],
                         ids=["plain", "mean-heads", "residual", "no-loops", "no-bias", "slope"])
@needs_pyg
def test_matches_pyg_on_a_multigraph(name, kw):
    theirs, ours = pair(name, 5, 4, **kw)
    assert_parity(theirs, ours, features(6, 5), edge_index())


@pytest.mark.parametrize("name", LAYERS)
@pytest.mark.parametrize("fill_value", ["mean", "add", "min", "max", "mul", 0.5, "tensor"])
@needs_pyg
def test_edge_features_match_pyg_for_every_fill_value(name, fill_value):
    fill = torch.tensor([0.3, -1.0], dtype=F64) if fill_value == "tensor" else fill_value
    theirs, ours = pair(name, 5, 4, heads=2, edge_dim=2, fill_value=fill)
    ea = features(len(EDGES[0]), 2, seed=3)
    assert_parity(theirs, ours, features(6, 5), edge_index(), ea)


@pytest.mark.parametrize("name", LAYERS)
@needs_pyg
def test_one_dimensional_edge_attr_matches_pyg(name):
    theirs, ours = pair(name, 5, 4, heads=2, edge_dim=1, residual=True)
    ea = torch.randn(len(EDGES[0]), dtype=F64, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
    assert_parity(theirs, ours, features(6, 5), edge_index(), ea)


@pytest.mark.parametrize("name", LAYERS)
@pytest.mark.parametrize("edge_dim", [None, 2])
@needs_pyg
def test_bipartite_matches_pyg(name, edge_dim):
    theirs, ours = pair(name, (5, 3), 4, heads=2, residual=True, edge_dim=edge_dim)
    x = (features(6, 5), features(4, 3, seed=1))   # 6 sources, 4 destinations
    ei = torch.tensor([[0, 5, 2, 2, 3, 1, 4, 0], [1, 2, 0, 0, 3, 1, 2, 0]])
    ea = features(ei.shape[1], 2, seed=4) if edge_dim else None
    assert_parity(theirs, ours, x, ei, ea)


@needs_pyg
def test_gatconv_without_destination_features_matches_pyg():
    theirs, ours = pair("GATConv", 5, 4, heads=2)
    assert_parity(theirs, ours, (features(6, 5), None), edge_index())
    theirs, ours = pair("GATConv", 5, 4, heads=2)
    assert_parity(theirs, ours, (features(6, 5), features(6, 5, seed=2)), edge_index(), size=(6, 6))


@pytest.mark.parametrize("name", LAYERS)
@needs_pyg
def test_float32_matches_pyg(name):
    theirs, ours = pair(name, 5, 4, heads=2, edge_dim=2, dtype=torch.float32)
    x, ea = features(6, 5, dtype=torch.float32), features(len(EDGES[0]), 2, dtype=torch.float32, seed=3)
    assert_parity(theirs, ours, x, edge_index(), tol=dict(rtol=1e-4, atol=1e-4))
    assert_parity(theirs, ours, x, edge_index(), ea, tol=dict(rtol=1e-4, atol=1e-4))


@pytest.mark.parametrize("name", LAYERS)
@pytest.mark.parametrize("loops", [True, False])
@needs_pyg
def test_empty_edge_index_matches_pyg(name, loops):
    theirs, ours = pair(name, 5, 4, heads=2, add_self_loops=loops)
    ei = torch.empty(2, 0, dtype=torch.long)
    x = features(4, 5)
    y_t, (ei_t, a_t) = theirs(x, ei, return_attention_weights=True)
    y_o, (ei_o, a_o) = ours(x, ei, return_attention_weights=True)
    torch.testing.assert_close(y_o, y_t, **TOL64)
    assert torch.equal(ei_o, ei_t) and a_o.shape == a_t.shape == (4 if loops else 0, 2)
    if loops:
        assert_parity(theirs, ours, x, ei)


@needs_pyg
def test_two_layer_model_matches_pyg_in_eval_mode():
    """PyG's GAT recipe (dropout 0.6, which eval mode turns off), weights swapped in."""

    def model(mod, **backend):
        torch.manual_seed(0)
        c1 = mod.GATConv(5, 8, heads=4, dropout=0.6, **backend).double()
        c2 = mod.GATConv(32, 3, heads=1, concat=False, dropout=0.6, **backend).double()
        return torch.nn.ModuleList([c1, c2])

    import torch_geometric.nn as pyg_nn

    theirs, ours = model(pyg_nn), model(st, backend="numpy")
    ours.load_state_dict(theirs.state_dict())
    theirs.eval(), ours.eval()
    x, ei = features(6, 5), edge_index()
    ys = [m[1](F.elu(m[0](x, ei)), ei) for m in (theirs, ours)]
    torch.testing.assert_close(ys[1], ys[0], **TOL64)


# ---------------------------------------------------------------------- graphs and caching
def test_graph_is_built_once_per_edge_index_and_rebuilt_when_it_changes():
    ei = edge_index()
    a = _layer_graph.layer_graph(ei, 6, 6, True)
    assert _layer_graph.layer_graph(ei, 6, 6, True) is a
    assert _layer_graph.layer_graph(ei, 6, 6, False) is not a
    assert _layer_graph.layer_graph(ei.clone(), 6, 6, True) is not a
    # PyG's rule: loops removed, one per node added; the permutation maps CSR to PyG order.
    assert a.nnz == len(EDGES[0]) - 4 + 6 and a.num_loops == 6
    out = a.edge_index_out(ei)
    rows, cols = a.rows(), a.cols()
    assert torch.equal(out[0][a.perm], cols) and torch.equal(out[1][a.perm], rows)
    ei[0, 0] = 4  # in place: a new graph
    b = _layer_graph.layer_graph(ei, 6, 6, True)
    assert b is not a and int(b.edge_index_out(ei)[0, 0]) == 4
    st.clear_caches()
    assert _layer_graph.layer_graph(ei, 6, 6, True) is not b


def test_layer_reuses_the_cached_graph_across_calls(monkeypatch):
    conv = st.GATConv(5, 4, heads=2, backend="numpy").double()
    ei, x = edge_index(), features(6, 5)
    conv(x, ei)
    built = []
    real = _layer_graph._build
    monkeypatch.setattr(_layer_graph, "_build", lambda *a: built.append(a) or real(*a))
    conv(x, ei)
    st.GATConv(5, 3, backend="numpy").double()(x, ei)
    assert built == []
    conv(x, ei.clone())
    assert len(built) == 1


@pytest.mark.parametrize("name", LAYERS)
def test_a_graph_first_built_in_inference_mode_serves_training(name):
    conv = our_layer(name, 5, 4, heads=2, edge_dim=2).double()
    ei, x = edge_index(), features(6, 5)
    ea = features(ei.shape[1], 2, seed=3)
    with torch.inference_mode():
        conv(x, ei, ea, return_attention_weights=True)
    y, (_, alpha) = conv(x, ei, ea, return_attention_weights=True)
    (y.sum() + alpha.sum()).backward()
    assert x.grad is not None and ea.grad is not None


@pytest.mark.parametrize("name", LAYERS)
def test_a_graph_given_as_is_matches_the_edge_index_path(name):
    conv = our_layer(name, 5, 4, heads=2, edge_dim=2).double()
    ei, x = edge_index(), features(6, 5)
    tg = st.gat_graph(ei)
    ea = features(ei.shape[1], 2, seed=3)
    y, (ei_out, alpha) = conv(x, ei, ea, return_attention_weights=True)
    # Edge features of the given graph in its CSR order: the layer's own (loops included) permuted.
    lg = _layer_graph.layer_graph(ei, 6, 6, True)
    ea_csr = conv._layer_edge_attr(ea, lg, ei, x)[lg.perm]
    for g in (tg, tg.graph):
        y2, (ei2, alpha2) = conv(x, g, ea_csr, return_attention_weights=True)
        torch.testing.assert_close(y2, y, **TOL64)
        assert ei2.shape == ei_out.shape  # CSR order
        torch.testing.assert_close(alpha2, alpha[lg.perm], **TOL64)
        assert torch.equal(ei2, ei_out[:, lg.perm])


def test_gat_graph_bipartite_and_without_loops():
    ei = torch.tensor([[0, 5, 2], [1, 2, 0]])
    tg = st.gat_graph(ei, (6, 3))
    assert tg.shape == (3, 6) and tg.nnz == 6
    assert st.gat_graph(ei, 6, add_self_loops=False).nnz == 3


# ---------------------------------------------------------------------- dropout
@pytest.mark.parametrize("name", LAYERS)
@pytest.mark.parametrize("edge_dim", [None, 2])
def test_dropout_is_reproducible_and_the_weights_are_the_ones_used(name, edge_dim):
    conv = our_layer(name, 5, 4, heads=2, dropout=0.5, edge_dim=edge_dim).double()
    ei, x = edge_index(), features(6, 5)
    ea = features(ei.shape[1], 2, seed=3) if edge_dim else None
    torch.manual_seed(7)
    y1, (ei_out, alpha) = conv(x, ei, ea, return_attention_weights=True)
    torch.manual_seed(7)
    y2 = conv(x, ei, ea)
    torch.testing.assert_close(y1, y2, rtol=0, atol=0)
    assert (alpha == 0).any() and (alpha > 1).any() if name == "GATConv" else (alpha == 0).any()
    # out = sum_j alpha_ij v_j + bias, with the returned (dropped and rescaled) weights
    v = conv.lin(x) if name == "GATConv" else conv.lin_l(x)
    msg = alpha.unsqueeze(-1) * v.view(-1, 2, 4)[ei_out[0]]
    manual = torch.zeros(6, 2, 4, dtype=F64).index_add(0, ei_out[1], msg).reshape(6, 8) + conv.bias
    torch.testing.assert_close(y1, manual, **TOL64)
    conv.eval()
    y3, (_, a3) = conv(x, ei, ea, return_attention_weights=True)
    sums = torch.zeros(6, 2, dtype=F64).index_add(0, ei_out[1], a3)
    torch.testing.assert_close(sums, torch.ones_like(sums), **TOL64)


def test_attention_takes_a_seed_tensor():
    g = st.gat_graph(edge_index()).graph
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(6, 2, 3, generator=gen, dtype=F64) for _ in range(3))
    kw = dict(dropout=0.5, backend="numpy")
    big = 2**64 - 5  # its 64 bits as an int64 tensor
    torch.testing.assert_close(st.attention(g, q, k, v, seed=torch.tensor(big - 2**64), **kw),
                               st.attention(g, q, k, v, seed=big, **kw), rtol=0, atol=0)
    with pytest.raises(TypeError, match="one-element int64"):
        st.attention(g, q, k, v, seed=torch.tensor(1.0), **kw)


# ---------------------------------------------------------------------- dtypes and errors
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", LAYERS)
def test_half_precision_raises_type_error(name, dtype):
    conv = our_layer(name, 5, 4).to(dtype)
    with pytest.raises(TypeError, match="float32 or float64"):
        conv(features(6, 5).detach().to(dtype), edge_index())


def test_bad_arguments_raise_clear_errors():
    x, ei = features(6, 5), edge_index()
    with pytest.raises(TypeError, match="MessagePassing options"):
        st.GATConv(5, 4, aggr="mean")
    with pytest.raises(ValueError, match="lazy"):
        st.GATConv(-1, 4)
    with pytest.raises(ValueError, match="fill_value"):
        st.GATConv(5, 4, fill_value="median")
    with pytest.raises(ValueError, match="dropout"):
        st.GATv2Conv(5, 4, dropout=1.0)
    with pytest.raises(ValueError, match="edge_dim"):
        our_layer("GATv2Conv", 5, 4).double()(x, ei, features(ei.shape[1], 2))
    with pytest.raises(ValueError, match="destination features"):
        our_layer("GATv2Conv", 5, 4).double()((x, None), ei)
    conv = our_layer("GATConv", 5, 4, edge_dim=2).double()
    with pytest.raises(ValueError, match=r"edge_attr must have shape \(14, edge_dim\)"):
        conv(x, ei, features(3, 2))
    with pytest.raises(TypeError, match="edge_attr must have the features' dtype"):
        conv(x, ei, features(ei.shape[1], 2, dtype=torch.float32))
    with pytest.raises(ValueError, match="out of range"):
        conv(features(3, 5), ei)
    with pytest.raises(ValueError, match="must be 2-D"):
        conv(features(6, 5)[None], ei)
    with pytest.raises(TypeError, match="integer dtype"):
        conv(x, ei.double())
    with pytest.raises(TypeError, match="sparse adjacency"):
        conv(features(2, 5), torch.eye(2).to_sparse())
    with pytest.raises(ValueError, match="size="):
        conv(x, ei, size=(5, 6))
    with pytest.raises(ValueError, match="shape"):
        conv(x, st.gat_graph(ei, 7))


# ---------------------------------------------------------------------- torch.compile
class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = st.GATConv(5, 4, heads=2, dropout=0.5, backend="numpy").double()
        self.c2 = st.GATConv(8, 3, heads=1, concat=False, backend="numpy").double()

    def forward(self, x, g):
        return self.c2(F.elu(self.c1(x, g)), g)


def test_compile_fullgraph_two_layer_model_with_a_torch_graph():
    torch.manual_seed(0)
    net, ei, x = _Net(), edge_index(), features(6, 5)
    tg = st.gat_graph(ei)
    compiled = torch.compile(net, fullgraph=True, backend="aot_eager")
    results = []
    for model, g in ((net, ei), (compiled, tg)):
        net.zero_grad()
        torch.manual_seed(1)
        y = model(x, g)
        y.square().sum().backward()
        results.append((y.detach(), [p.grad.clone() for p in net.parameters()]))
    torch.testing.assert_close(results[1], results[0])


def test_compile_fullgraph_unfused_gatv2_with_edge_features_in_eval_mode():
    conv = our_layer("GATv2Conv", 5, 4, heads=2, edge_dim=2).double().eval()
    ei, x = edge_index(), features(6, 5)
    tg = st.gat_graph(ei)
    ea = features(tg.nnz, 2, seed=3)
    compiled = torch.compile(conv, fullgraph=True, backend="aot_eager")
    y, (e, alpha) = compiled(x, tg, ea, return_attention_weights=True)
    y_ref, (e_ref, alpha_ref) = conv(x, tg, ea, return_attention_weights=True)
    torch.testing.assert_close(y, y_ref, **TOL64)
    torch.testing.assert_close(alpha, alpha_ref, **TOL64)
    assert torch.equal(e, e_ref)


def test_compile_refuses_an_edge_index_with_a_clear_message():
    net = _Net()
    f = torch.compile(net, fullgraph=True, backend="eager")
    with pytest.raises(Exception, match="gat_graph"):
        f(features(6, 5), edge_index())


# ---------------------------------------------------------------------- default backend, CUDA
@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("numba") is None, reason="needs numba")
def test_default_backend_matches_numpy():
    ref = our_layer("GATConv", 5, 4, heads=2).double()
    conv = st.GATConv(5, 4, heads=2).double()
    conv.load_state_dict(ref.state_dict())
    x, ei = features(6, 5), edge_index()
    torch.testing.assert_close(conv(x, ei), ref(x, ei), **TOL64)


gpu = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU, torch with CUDA and CuPy")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("name", LAYERS)
def test_cuda_matches_cpu(name):
    ref = our_layer(name, 5, 4, heads=2, edge_dim=2, residual=True).double()
    conv = getattr(st, name)(5, 4, heads=2, edge_dim=2, residual=True).double().cuda()
    conv.load_state_dict(ref.state_dict())
    ei, x = edge_index(), features(6, 5)
    ea = features(ei.shape[1], 2, seed=3)
    x_gpu, ei_gpu, ea_gpu = x.detach().cuda().requires_grad_(True), ei.cuda(), ea.detach().cuda()
    for e, e_gpu in ((None, None), (ea, ea_gpu)):
        y, (ei_out, alpha) = ref(x, ei, e, return_attention_weights=True)
        y_gpu, (ei_gpu_out, alpha_gpu) = conv(x_gpu, ei_gpu, e_gpu, return_attention_weights=True)
        assert y_gpu.device.type == "cuda"
        torch.testing.assert_close(y_gpu.cpu(), y, **TOL64)
        torch.testing.assert_close(alpha_gpu.cpu(), alpha, **TOL64)
        assert torch.equal(ei_gpu_out.cpu(), ei_out)
        (g,) = torch.autograd.grad(y.sum(), x)
        (g_gpu,) = torch.autograd.grad(y_gpu.sum(), x_gpu)
        torch.testing.assert_close(g_gpu.cpu(), g, **TOL64)
    conv.train()
    torch.manual_seed(3)
    conv(x_gpu, ei_gpu).sum().backward()
