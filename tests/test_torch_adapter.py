"""The PyTorch adapter ``sparsegat.torch``: custom operators (opcheck, gradcheck,
torch.compile), zero-copy hand-off, the graph handle, parity with the core, bad inputs,
PyG ``edge_index``; CUDA tests (marker ``gpu``) skip without a GPU and CuPy.

The CPU tests run the NumPy reference backend (``backend="numpy"``): no Numba compile.
"""

from __future__ import annotations

import gc
import importlib.util
import subprocess
import sys

import numpy as np
import pytest

import sparsegat as sg

torch = pytest.importorskip("torch")
st = pytest.importorskip("sparsegat.torch")

from sparsegat.torch import _edge_index, _graphs, _interop, _ops  # noqa: E402

HAS_NUMBA = importlib.util.find_spec("numba") is not None
HAS_CUDA = torch.cuda.is_available() and importlib.util.find_spec("cupy") is not None
TAU = ("cosine", "euclidean")
F64 = torch.float64


def small_graph(n: int = 6) -> sg.CSRGraph:
    """A square graph with a self-loop, a hub and an empty destination row (node n-1)."""
    src = [0, 1, 2, 3, 4, 0, 2, 4, 1, 1, 3]
    dst = [1, 2, 0, 0, 0, 3, 3, 2, 1, 4, 4]
    return sg.CSRGraph.from_edge_index(src, dst, num_src=n, num_dst=n)


def inputs(g: sg.CSRGraph, score: str, heads: int = 2, d: int = 3, dv: int = 2, *, bias: bool = False,
           tau_tensor: bool = False, dtype=F64, device: str = "cpu", requires_grad: bool = True, seed: int = 0):
    """Keyword arguments of ``st.attention`` (apart from ``g``) for ``score``."""
    gen = torch.Generator().manual_seed(seed)

    def t(*shape):
        x = torch.randn(*shape, generator=gen, dtype=dtype).to(device)
        return x.requires_grad_(requires_grad)

    scalar = score == "additive"
    kw = dict(q=t(g.n_dst, heads) if scalar else t(g.n_dst, heads, d),
              k=t(g.n_src, heads) if scalar else t(g.n_src, heads, d), v=t(g.n_src, heads, dv), score=score)
    if score == "gatv2":
        kw["att"] = t(heads, d)
    if bias:
        kw["edge_bias"] = t(g.nnz, heads)
    if score in TAU:
        kw["tau"] = (torch.tensor(0.7, dtype=dtype, device=device).requires_grad_(requires_grad)
                     if tau_tensor else 0.7)
    return kw


def op_args(tg, kw: dict, dropout: float = 0.0, seed: int | None = None, backend: str = "numpy") -> tuple:
    """The positional arguments of ``torch.ops.sparsegat.attention_forward``."""
    tau = kw.get("tau", 1.0)
    tau_tensor = tau if isinstance(tau, torch.Tensor) else None
    return (tg.indptr, tg.indices, tg.n_src, kw["q"], kw["k"], kw["v"], kw.get("att"), tau_tensor,
            1.0 if tau_tensor is not None else float(tau), 0.2, kw.get("edge_bias"), dropout,
            None if seed is None else torch.tensor(seed), kw["score"], backend, True)


def numpy_kw(kw: dict) -> dict:
    return {n: (x.detach().cpu().numpy() if isinstance(x, torch.Tensor) and n != "tau" else
                (float(x.detach()) if n == "tau" else x)) for n, x in kw.items()}


# ---------------------------------------------------------------------- operator registration
def test_import_registers_the_operators_and_loads_no_backend():
    code = ("import sys, torch, sparsegat.torch; "
            "assert hasattr(torch.ops.sparsegat, 'attention_forward'); "
            "assert hasattr(torch.ops.sparsegat, 'attention_backward'); "
            "loaded = [m for m in ('numba', 'cupy', 'torch_geometric') if m in sys.modules]; "
            "assert not loaded, loaded")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("score", sg.SCORES)
def test_opcheck_every_score(score):
    g = small_graph()
    tg = st.as_torch_graph(g)
    kw = inputs(g, score, bias=True, tau_tensor=score in TAU)
    torch.library.opcheck(_ops.attention_forward_op, op_args(tg, kw, dropout=0.25, seed=3))


def test_opcheck_plain_options_and_backward_op():
    g = small_graph()
    tg = st.as_torch_graph(g)
    kw = inputs(g, "cosine", requires_grad=False)  # tau as a float, no bias, no dropout
    args = op_args(tg, kw)
    torch.library.opcheck(_ops.attention_forward_op, args)
    out, stats, layout = _ops.attention_forward_op(*args)
    bwd = args[:13] + ("cosine", True, out, stats, layout, torch.randn_like(out))
    torch.library.opcheck(_ops.attention_backward_op, bwd)


def test_layout_codes_name_the_backend_and_its_statistics():
    from sparsegat.backends import BACKEND_NAMES
    from sparsegat.spec import ROW_INV_DENOM, ROW_LOG_DENOM, ROW_MAX

    for backend in BACKEND_NAMES:
        for keys in ((ROW_MAX, ROW_LOG_DENOM), (ROW_MAX, ROW_INV_DENOM)):
            assert _ops._layout(_ops._layout_code(backend, keys)) == (backend, keys)
    with pytest.raises(RuntimeError, match="saved the statistics"):
        _ops._layout_code("numpy", (ROW_MAX,))


# ---------------------------------------------------------------------- gradients
@pytest.mark.parametrize("score", sg.SCORES)
@pytest.mark.parametrize("options", ["plain", "all"])
def test_gradcheck(score, options):
    """float64 gradients of q, k, v (and att, tau as a tensor, edge_bias, with dropout at a
    fixed seed) match finite differences."""
    g = small_graph()
    full = options == "all"
    kw = inputs(g, score, bias=full, tau_tensor=full and score in TAU)
    names = [n for n, x in kw.items() if isinstance(x, torch.Tensor)]
    extra = dict(dropout=0.3, seed=11) if full else {}

    def f(*tensors):
        return st.attention(g, **{**kw, **dict(zip(names, tensors))}, **extra, backend="numpy")

    assert torch.autograd.gradcheck(f, [kw[n] for n in names], eps=1e-6, atol=1e-6)


def test_parity_with_the_core_forward_and_backward():
    g = small_graph()
    for score in sg.SCORES:
        kw = inputs(g, score, bias=True, tau_tensor=score in TAU)
        out = st.attention(g, **kw, dropout=0.2, seed=5, backend="numpy")
        dout = torch.randn_like(out)
        out.backward(dout)
        ref, ctx = sg.attention_forward(g, **numpy_kw(kw), dropout=0.2, seed=5, backend="numpy")
        grads = sg.attention_backward(ctx, dout.numpy())
        np.testing.assert_array_equal(out.detach().numpy(), ref)
        for name, grad in grads.items():
            np.testing.assert_allclose(kw[name].grad.numpy(), grad, rtol=1e-12, atol=1e-12, err_msg=name)


@pytest.mark.skipif(not HAS_NUMBA, reason="numba is not installed")
def test_default_cpu_backend_matches_the_reference():
    """Without ``backend=``, CPU tensors go to the registry's choice (Numba here); its
    statistics (an inverse denominator) travel to its own backward."""
    g = small_graph()
    kw = inputs(g, "dot")
    out = st.attention(g, **kw)
    out.sum().backward()
    ref = {n: kw[n].grad.clone() for n in ("q", "k", "v")}
    for n in ("q", "k", "v"):
        kw[n].grad = None
    out_np = st.attention(g, **kw, backend="numpy")
    out_np.sum().backward()
    torch.testing.assert_close(out, out_np)
    for n in ("q", "k", "v"):
        torch.testing.assert_close(ref[n], kw[n].grad)


def test_tau_tensor_gets_a_gradient_only_when_it_requires_one():
    g = small_graph()
    kw = inputs(g, "euclidean", tau_tensor=True)
    st.attention(g, **kw, backend="numpy").sum().backward()
    _, ctx = sg.attention_forward(g, **numpy_kw(kw), backend="numpy")
    expected = sg.attention_backward(ctx, np.ones(ctx.out.shape)).tau
    np.testing.assert_allclose(kw["tau"].grad.numpy(), expected, rtol=1e-12)
    kw = inputs(g, "cosine", tau_tensor=True, requires_grad=False)
    kw["q"].requires_grad_(True)
    st.attention(g, **kw, backend="numpy").sum().backward()
    assert kw["tau"].grad is None and kw["q"].grad is not None
    # A one-element tau of another dtype and shape gets a gradient of its own dtype and shape.
    kw = inputs(g, "cosine")
    kw["tau"] = torch.tensor([0.7], dtype=torch.float32, requires_grad=True)
    st.attention(g, **kw, backend="numpy").sum().backward()
    assert kw["tau"].grad.shape == (1,) and kw["tau"].grad.dtype == torch.float32


def test_dropout_seeds_come_from_torch_and_are_shared_with_backward():
    g = small_graph()
    kw = inputs(g, "dot")
    torch.manual_seed(0)
    drawn = int(torch.randint(0, 2**63 - 1, (), dtype=torch.int64))
    torch.manual_seed(0)
    a = st.attention(g, **kw, dropout=0.5, backend="numpy")
    b = st.attention(g, **kw, dropout=0.5, seed=drawn, backend="numpy")
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.manual_seed(0)
    a = st.attention(g, **kw, dropout=0.5, backend="numpy")
    a.sum().backward()
    ga = kw["q"].grad.clone()
    kw["q"].grad = None
    st.attention(g, **kw, dropout=0.5, seed=drawn, backend="numpy").sum().backward()
    torch.testing.assert_close(ga, kw["q"].grad, rtol=0, atol=0)
    # Seeds of the full unsigned range reach the core unchanged.
    big = 2**64 - 5
    out = st.attention(g, **kw, dropout=0.5, seed=big, backend="numpy")
    ref, _ = sg.attention_forward(g, **numpy_kw(kw), dropout=0.5, seed=big, backend="numpy")
    np.testing.assert_array_equal(out.detach().numpy(), ref)


def test_float32_and_non_contiguous_inputs():
    g = small_graph()
    kw = inputs(g, "scaled_dot", dtype=torch.float32)
    base = torch.randn(g.n_src, 4, 2, dtype=torch.float32, requires_grad=True)
    kw["v"] = base.transpose(1, 2)  # (n, 2, 4) non-contiguous view
    out = st.attention(g, **kw, backend="numpy")
    assert out.dtype == torch.float32 and out.is_contiguous()
    out.sum().backward()
    ref, _ = sg.attention_forward(g, **numpy_kw(kw), backend="numpy")
    np.testing.assert_allclose(out.detach().numpy(), ref, rtol=1e-6)
    assert base.grad.shape == base.shape


# ---------------------------------------------------------------------- zero copy and the graph handle
def test_tensors_reach_the_core_and_come_back_without_copies(monkeypatch):
    g = small_graph()
    kw = inputs(g, "dot", bias=True)
    seen = {}
    real = _ops.core_forward

    def spy(graph, q, k, v, **options):
        out, ctx = real(graph, q, k, v, **options)
        seen.update(graph=graph, q=q.ctypes.data, k=k.ctypes.data, v=v.ctypes.data,
                    bias=options["edge_bias"].ctypes.data, out=out.ctypes.data)
        return out, ctx

    monkeypatch.setattr(_ops, "core_forward", spy)
    out = st.attention(g, **kw, backend="numpy")
    assert seen["graph"] is g  # the live graph: its cached structures are reused
    assert (seen["q"], seen["k"], seen["v"], seen["bias"]) == tuple(
        kw[n].data_ptr() for n in ("q", "k", "v", "edge_bias"))
    assert out.data_ptr() == seen["out"]
    t = torch.randn(3, 4)
    assert _interop.to_array(t).ctypes.data == t.data_ptr()


def test_graph_handle_views_the_graph_and_maps_back_to_it():
    g = small_graph()
    tg = st.as_torch_graph(g)
    assert st.as_torch_graph(g) is tg and st.as_torch_graph(tg) is tg
    assert tg.indptr.data_ptr() == g.indptr.ctypes.data and tg.indices.data_ptr() == g.indices.ctypes.data
    assert tg.shape == g.shape and tg.nnz == g.nnz and tg.device == torch.device("cpu")
    assert _graphs.lookup(tg.indptr, tg.indices, tg.n_src) is g
    # Tensors it has never seen (a compiler's copy) give an equal graph, validated and then reused.
    ip, ix = tg.indptr.clone(), tg.indices.clone()
    h = _graphs.lookup(ip, ix, tg.n_src)
    assert h is not g and np.array_equal(h.indices, g.indices) and h.shape == g.shape
    assert _graphs.lookup(ip, ix, tg.n_src) is h
    # Modified in place: the mapping is not trusted any more, the tensors are read again.
    assert int(ix[0]) == 2
    ix[0] = 0  # row 0 becomes (0, 3, 4)
    h2 = _graphs.lookup(ip, ix, tg.n_src)
    assert h2 is not h and int(h2.indices[0]) == 0
    with pytest.raises(ValueError, match="CSRGraph"):
        _graphs.lookup(ip, torch.full_like(ix, 99), tg.n_src)  # rebuilt graphs are validated


def test_registry_entries_die_with_their_tensors():
    g = small_graph()
    tg = st.TorchGraph(g)
    key = _graphs._key(tg.indptr, tg.indices, tg.n_src)
    assert _graphs._REGISTRY[key].graph is g
    del tg
    gc.collect()
    assert key not in _graphs._REGISTRY


# ---------------------------------------------------------------------- torch.compile
class _Layer(torch.nn.Module):
    def __init__(self, fin: int, fout: int, heads: int, score: str, backend: str | None) -> None:
        super().__init__()
        self.heads, self.fout, self.score, self.backend = heads, fout, score, backend
        self.lin = torch.nn.Linear(fin, 3 * heads * fout, dtype=F64)

    def forward(self, tg, x):
        q, k, v = self.lin(x).view(x.shape[0], 3, self.heads, self.fout).unbind(1)
        return st.attention(tg, q, k, v, score=self.score, dropout=0.2,
                            backend=self.backend).flatten(1)


class _Net(torch.nn.Module):
    def __init__(self, backend: str | None) -> None:
        super().__init__()
        self.l1, self.l2 = _Layer(4, 3, 2, "scaled_dot", backend), _Layer(6, 2, 1, "euclidean", backend)

    def forward(self, tg, x):
        return self.l2(tg, torch.relu(self.l1(tg, x)))


def _compile_and_compare(backend: str, device: str = "cpu") -> None:
    g = small_graph()
    tg = st.as_torch_graph(g if device == "cpu" else g.to("cupy"))
    torch.manual_seed(0)
    net = _Net("numpy" if device == "cpu" else None).to(device)
    x = torch.randn(g.n_dst, 4, dtype=F64, device=device)
    compiled = torch.compile(net, fullgraph=True, backend=backend)
    results = []
    for model in (net, compiled):
        net.zero_grad()
        torch.manual_seed(1)
        y = model(tg, x)
        y.square().sum().backward()
        results.append((y.detach(), [p.grad.clone() for p in net.parameters()]))
    if backend != "inductor":  # inductor draws the dropout seeds with its own generator
        torch.testing.assert_close(results[0], results[1])


def test_compile_fullgraph_two_layer_model():
    _compile_and_compare("aot_eager")


@pytest.mark.slow
def test_compile_fullgraph_inductor():
    _compile_and_compare("inductor")


def test_compile_refuses_a_csrgraph_with_a_clear_message():
    g = small_graph()
    f = torch.compile(lambda x: st.attention(g, x, x, x, backend="numpy"), fullgraph=True, backend="eager")
    with pytest.raises(Exception, match="as_torch_graph"):
        f(torch.randn(g.n_dst, 1, 2, dtype=F64))


# ---------------------------------------------------------------------- bad inputs
def test_bad_inputs_raise_clear_errors():
    g = small_graph()
    kw = inputs(g, "dot", requires_grad=False)
    for dtype in (torch.float16, torch.bfloat16):
        with pytest.raises(TypeError, match=f"q must have dtype float32 or float64, got {dtype}.*half"):
            st.attention(g, **{**kw, "q": kw["q"].to(dtype)})
    with pytest.raises(TypeError, match="mixed dtypes"):  # the core's message
        st.attention(g, **{**kw, "k": kw["k"].float()}, backend="numpy")
    with pytest.raises(ValueError, match="q must have n_dst=6 rows"):  # the core's message
        st.attention(g, **{**kw, "q": kw["q"][:3]}, backend="numpy")
    with pytest.raises(TypeError, match="g is on cpu but the tensors are on meta"):
        st.attention(g, **{n: (x.to("meta") if isinstance(x, torch.Tensor) else x) for n, x in kw.items()})
    with pytest.raises(TypeError, match="q is on cpu but k is on meta"):
        st.attention(g, **{**kw, "k": kw["k"].to("meta")})
    with pytest.raises(TypeError, match="q must be a torch.Tensor"):
        st.attention(g, **{**kw, "q": kw["q"].numpy()})
    with pytest.raises(TypeError, match="g must be a sparsegat.CSRGraph"):
        st.attention(g.to_scipy(), **kw)
    with pytest.raises(ValueError, match="tau applies only"):
        st.attention(g, **kw, tau=0.5, backend="numpy")
    with pytest.raises(TypeError, match="one-element floating tensor"):
        st.attention(g, **{**kw, "score": "cosine"}, tau=torch.ones(2))
    with pytest.raises(ValueError, match=r"seed must lie in \[0, 2\*\*64\)"):
        st.attention(g, **kw, dropout=0.1, seed=-1)
    with pytest.raises(ValueError, match="dropout must lie in"):
        st.attention(g, **kw, dropout=1.0, backend="numpy")
    with pytest.raises(ValueError, match="needs a seed tensor"):
        _ops.attention_forward_op(*op_args(st.as_torch_graph(g), kw, dropout=0.5))


# ---------------------------------------------------------------------- PyG edge_index
def test_graph_from_edge_index_orders_edges_and_caches():
    edge_index = torch.tensor([[3, 0, 1, 2, 0, 2], [0, 2, 2, 0, 1, 2]])
    g, perm = st.graph_from_edge_index(edge_index)
    assert g.shape == (4, 4) and perm.dtype == torch.int64 and perm.shape == (g.nnz,)
    rows = np.repeat(np.arange(g.n_dst), np.diff(g.indptr))
    np.testing.assert_array_equal(edge_index[0, perm].numpy(), g.indices)
    np.testing.assert_array_equal(edge_index[1, perm].numpy(), rows)
    assert st.graph_from_edge_index(edge_index)[0] is g  # cached per tensor
    assert st.graph_from_edge_index(edge_index, num_nodes=6)[0].shape == (6, 6)
    edge_index[0, 0] = 1  # in place: rebuilt
    g2, perm2 = st.graph_from_edge_index(edge_index)
    assert g2 is not g
    np.testing.assert_array_equal(edge_index[0, perm2].numpy(), g2.indices)
    # Per-edge features in PyG order reach the operator in CSR order through perm.
    bias = torch.randn(edge_index.shape[1], 1, dtype=F64)
    kw = inputs(g2, "dot", heads=1, requires_grad=False)
    out = st.attention(g2, **kw, edge_bias=bias[perm2], backend="numpy")
    ref, _ = sg.attention_forward(g2, **numpy_kw(kw), edge_bias=bias[perm2].numpy(), backend="numpy")
    np.testing.assert_array_equal(out.numpy(), ref)
    multi, perm3 = st.graph_from_edge_index(torch.tensor([[0, 0, 1], [1, 1, 0]]))  # a repeated edge
    assert multi.nnz == 3 and sorted(perm3.tolist()) == [0, 1, 2]  # kept as a multi-edge, as in PyG
    with pytest.raises(ValueError, match=r"shape \(2, E\)"):
        st.graph_from_edge_index(edge_index[:1])
    with pytest.raises(TypeError, match="integer dtype"):
        st.graph_from_edge_index(edge_index.double())


def test_edge_permutation_fallback_agrees_without_repeated_edges():
    rng = np.random.default_rng(0)
    pairs = rng.choice(49, size=20, replace=False)
    src, dst = pairs % 7, pairs // 7
    g1, p1 = _edge_index._csr_with_perm(src, dst, 7)
    g2, p2 = _edge_index._csr_with_perm_by_sorting(src, dst, 7)
    np.testing.assert_array_equal(p1, p2)
    np.testing.assert_array_equal(g1.indices, g2.indices)
    np.testing.assert_array_equal(g1.indptr, g2.indptr)


# ---------------------------------------------------------------------- CUDA (skipped here)
gpu = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU, torch with CUDA and CuPy")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("score", sg.SCORES)
def test_cuda_matches_cpu(score):
    g = small_graph()
    kw = inputs(g, score, bias=True, tau_tensor=score in TAU)
    kw_gpu = {n: (x.detach().cuda().requires_grad_(True) if isinstance(x, torch.Tensor) else x)
              for n, x in kw.items()}
    out = st.attention(g, **kw, dropout=0.2, seed=3, backend="numpy")
    out_gpu = st.attention(g.to("cupy"), **kw_gpu, dropout=0.2, seed=3)
    assert out_gpu.device.type == "cuda"
    dout = torch.randn_like(out)
    out.backward(dout)
    out_gpu.backward(dout.cuda())
    torch.testing.assert_close(out_gpu.cpu(), out.detach())
    for n, x in kw.items():
        if isinstance(x, torch.Tensor):
            torch.testing.assert_close(kw_gpu[n].grad.cpu(), x.grad, msg=n)


@pytest.mark.gpu
@gpu
def test_cuda_zero_copy_stream_and_allocator(monkeypatch):
    """CuPy views the tensors' memory, runs on PyTorch's current (non-default) stream and
    allocates the output from PyTorch's caching allocator."""
    import cupy

    g = small_graph().to("cupy")
    kw = inputs(g, "dot", device="cuda", requires_grad=False)
    seen = {}
    real = _ops.core_forward

    def spy(graph, q, k, v, **options):
        seen.update(q=q.data.ptr, stream=cupy.cuda.get_current_stream().ptr)
        out, ctx = real(graph, q, k, v, **options)
        seen["out"] = out.data.ptr
        return out, ctx

    monkeypatch.setattr(_ops, "core_forward", spy)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        out = st.attention(g, **kw)
    stream.synchronize()
    assert seen["q"] == kw["q"].data_ptr() and seen["out"] == out.data_ptr()
    assert seen["stream"] == stream.cuda_stream
    segments = [(s["address"], s["address"] + s["total_size"]) for s in torch.cuda.memory_snapshot()]
    assert any(lo <= out.data_ptr() < hi for lo, hi in segments)
    ref, _ = sg.attention_forward(g.to("numpy"), **numpy_kw(kw), backend="numpy")
    np.testing.assert_allclose(out.cpu().numpy(), ref, rtol=1e-10)


@pytest.mark.gpu
@gpu
def test_cuda_opcheck_and_compile():
    g = small_graph()
    tg = st.as_torch_graph(g, device="cuda")
    kw = inputs(g, "gatv2", bias=True, device="cuda")
    torch.library.opcheck(_ops.attention_forward_op, op_args(tg, kw, dropout=0.2, seed=1, backend=""))
    _compile_and_compare("aot_eager", device="cuda")


@pytest.mark.gpu
@gpu
def test_cuda_device_mismatch():
    g = small_graph()
    kw = inputs(g, "dot", device="cuda", requires_grad=False)
    with pytest.raises(TypeError, match="g is on cpu but the tensors are on cuda"):
        st.attention(g, **kw)


@pytest.mark.gpu
@gpu
def test_cuda_edge_index_gives_a_gpu_graph():
    edge_index = torch.tensor([[1, 2, 0, 2], [0, 0, 1, 1]], device="cuda")
    g, perm = st.graph_from_edge_index(edge_index, num_nodes=3)
    assert g.device == "cupy" and perm.device == edge_index.device
    assert st.as_torch_graph(g).device == edge_index.device
    torch.testing.assert_close(edge_index[0, perm].cpu(), torch.tensor([1, 2, 0, 2]))
