"""Graph structures built on the graph's own device, and kept by ``CSRGraph.to``.

``transposed()``, ``row_ids()`` and the CUDA segment plans are computed with the array
namespace of the graph (CuPy on the GPU). Without a GPU, these tests check them

- on NumPy, against the host algorithms they replace (bitwise: values, dtypes, the
  stable order of the transposition);
- on a strict fake CuPy (:class:`DeviceArray`, :func:`fake_cupy`): arrays that NumPy
  refuses (no implicit conversion, no NumPy function, no iteration, as CuPy's), and a
  namespace with only functions CuPy has, with CuPy's restrictions
  (``repeat`` takes no array of counts, ``argsort`` only sorts stably, ``bincount``
  fails on an empty array). A NumPy-only call or a Python loop over nodes or edges on
  the device path raises there.

On a machine with CuPy, :func:`test_real_cupy_matches_host` runs the same comparison
on the GPU.
"""

from __future__ import annotations

import importlib.util
import operator
import sys
import types
from typing import Any

import numpy as np
import pytest

import sparsegat.csr_format as csr_format
import sparsegat.graph as graph_module
from sparsegat import CSRGraph
from sparsegat.backends.cuda import launch as cl
from sparsegat.graph import HOST_ONLY_CACHES, _is_sealed


# ---------------------------------------------------------------------- the host algorithms replaced
def host_segment_plan(indptr: np.ndarray, chunk: int, index_dtype: Any) -> dict[str, Any]:
    """``build_segment_plan`` as it was before it became device-generic (NumPy only)."""
    indptr = np.asarray(indptr, dtype=np.int64)
    n = indptr.shape[0] - 1
    deg = np.diff(indptr)
    nseg = np.maximum(1, -(-deg // chunk))
    size = -(-deg // nseg)
    first = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(nseg, out=first[1:])
    n_seg = int(first[-1])
    seg_row = np.repeat(np.arange(n, dtype=np.int64), nseg)
    local = np.arange(n_seg, dtype=np.int64) - first[seg_row]
    begin = np.minimum(indptr[seg_row] + local * size[seg_row], indptr[seg_row + 1])
    seg_ptr = np.append(begin, indptr[-1] if n else 0)
    multi = nseg[seg_row] > 1
    seg_slot = np.where(multi, np.cumsum(multi) - 1, -1)
    long_row = np.flatnonzero(nseg > 1)
    long_ptr = np.zeros(long_row.shape[0] + 1, dtype=np.int64)
    np.cumsum(nseg[long_row], out=long_ptr[1:])
    dtype = np.dtype(index_dtype)
    conv = (lambda a: np.ascontiguousarray(a, dtype=dtype))
    return dict(seg_ptr=conv(seg_ptr), seg_row=conv(seg_row), seg_slot=conv(seg_slot),
                long_row=conv(long_row), long_ptr=conv(long_ptr), n_seg=n_seg,
                n_long=int(long_row.shape[0]), n_slots=int(multi.sum()))


def host_transposed(g: CSRGraph) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``CSRGraph.transposed`` as it was before it became device-generic (NumPy only)."""
    indptr, indices, dtype = np.asarray(g.indptr), np.asarray(g.indices), g.index_dtype
    t_perm = np.argsort(indices, kind="stable").astype(dtype)
    t_indptr = np.zeros(g.n_src + 1, dtype=dtype)
    np.cumsum(np.bincount(indices, minlength=g.n_src), out=t_indptr[1:])
    rows = np.repeat(np.arange(g.n_dst, dtype=dtype), np.diff(indptr))
    return t_indptr, rows[t_perm], t_perm


# ---------------------------------------------------------------------- graphs
def random_graph(seed: int, n_dst: int, n_src: int, hubs: int = 0, hub_degree: int = 0,
                 density: float = 0.2, index_dtype: Any = np.int32) -> CSRGraph:
    """Uniform random edges (some rows and columns empty) plus ``hubs`` rows of ``hub_degree``."""
    rng = np.random.default_rng(seed)
    m = int(density * n_dst * n_src)
    dst = rng.integers(0, max(n_dst, 1), m) if n_dst and n_src else np.zeros(0, np.int64)
    src = rng.integers(0, max(n_src, 1), m) if n_dst and n_src else np.zeros(0, np.int64)
    if hubs and n_dst and n_src:
        rows = rng.choice(n_dst, size=min(hubs, n_dst), replace=False)
        dst = np.concatenate([dst, np.repeat(rows, hub_degree)])
        src = np.concatenate([src, rng.integers(0, n_src, rows.shape[0] * hub_degree)])
    return CSRGraph.from_edge_index(src, dst, num_src=n_src, num_dst=n_dst, index_dtype=index_dtype)


#: (seed, n_dst, n_src, hubs, hub_degree, density): empty graphs, zero rows or columns,
#: empty rows, rows of exactly one chunk, hub rows of several chunks.
GRAPHS = [
    (0, 0, 0, 0, 0, 0.0),
    (1, 0, 5, 0, 0, 0.0),
    (2, 7, 0, 0, 0, 0.0),
    (3, 9, 9, 0, 0, 0.0),
    (4, 30, 20, 0, 0, 0.05),
    (5, 50, 40, 3, 700, 0.1),
    (6, 300, 2000, 5, 1500, 0.01),
    (7, 64, 600, 4, 256, 0.02),
]


def graphs(index_dtype: Any = np.int32) -> list[CSRGraph]:
    out = [random_graph(*p, index_dtype=index_dtype) for p in GRAPHS]
    # rows of exactly one chunk, an empty row, a row one edge over a chunk
    indptr = np.array([0, 256, 256, 512, 769], dtype=index_dtype)
    indices = np.concatenate([np.arange(256), np.arange(256), np.arange(257)]).astype(index_dtype)
    out.append(CSRGraph(indptr, indices, (4, 300)))
    return out


#: The array fields of a segment plan.
PLAN_ARRAYS = ("seg_ptr", "seg_row", "seg_slot", "long_row", "long_ptr")


def assert_same(got: Any, want: Any) -> None:
    """Bitwise equal: the same dtype and values (a device array is read back first)."""
    if hasattr(got, "get"):
        got = got.get()
    assert isinstance(got, np.ndarray) and got.dtype == want.dtype, (type(got), getattr(got, "dtype", None))
    assert np.array_equal(got, want)


def assert_same_plan(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for key, value in want.items():
        if isinstance(value, np.ndarray):
            assert_same(got[key], value)
        else:
            assert type(got[key]) is int and got[key] == value, key


# ---------------------------------------------------------------------- a strict fake CuPy
#: Sizes of the arrays copied between host and fake device (``asarray`` of host data, ``get``).
TRANSFERS: list[int] = []


class DeviceArray:
    """A NumPy array posing as a CuPy array, which NumPy cannot read (as CuPy's)."""

    __array_ufunc__ = None  # numpy_array + device_array raises, as with CuPy

    def __init__(self, a: np.ndarray) -> None:
        assert isinstance(a, np.ndarray)
        self._a = a

    def __array__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("implicit conversion of a device array to a NumPy array")

    def __array_function__(self, func: Any, types_: Any, args: Any, kwargs: Any) -> Any:
        return NotImplemented  # NumPy functions refuse device arrays

    def __iter__(self) -> Any:
        raise TypeError("iteration over a device array (a Python loop over its elements)")

    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    nbytes = property(lambda self: self._a.nbytes)

    def __len__(self) -> int:
        return len(self._a)

    def __getitem__(self, key: Any) -> Any:
        return _wrap(self._a[_unwrap(key)])

    def __setitem__(self, key: Any, value: Any) -> None:
        self._a[_unwrap(key)] = _unwrap(value)

    def __int__(self) -> int:  # a read back to the host, as int() of a CuPy scalar array
        return int(self._a)

    def __bool__(self) -> bool:
        return bool(self._a)

    def get(self) -> np.ndarray:
        TRANSFERS.append(self._a.size)
        return self._a.copy()

    def astype(self, dtype: Any, copy: bool = True) -> "DeviceArray":
        return DeviceArray(self._a.astype(dtype, copy=copy))

    def copy(self) -> "DeviceArray":
        return DeviceArray(self._a.copy())

    def any(self) -> "DeviceArray":
        return _wrap(self._a.any())

    def all(self) -> "DeviceArray":
        return _wrap(self._a.all())

    def sum(self) -> "DeviceArray":
        return _wrap(self._a.sum())

    def min(self) -> "DeviceArray":
        return _wrap(self._a.min())

    def max(self) -> "DeviceArray":
        return _wrap(self._a.max())


# array_kind() recognises CuPy by the module of the array's type.
DeviceArray.__module__ = "cupy._fake"


def _binary(op: Any, reflected: bool = False) -> Any:
    def method(self: DeviceArray, other: Any) -> Any:
        other = _unwrap(other)
        return _wrap(op(other, self._a) if reflected else op(self._a, other))
    return method


for _name, _op in [("add", operator.add), ("sub", operator.sub), ("mul", operator.mul),
                   ("floordiv", operator.floordiv), ("mod", operator.mod), ("and", operator.and_),
                   ("or", operator.or_)]:
    setattr(DeviceArray, f"__{_name}__", _binary(_op))
    setattr(DeviceArray, f"__r{_name}__", _binary(_op, reflected=True))
for _name in ("lt", "le", "gt", "ge", "eq", "ne"):
    setattr(DeviceArray, f"__{_name}__", _binary(getattr(operator, _name)))
DeviceArray.__neg__ = lambda self: DeviceArray(-self._a)
DeviceArray.__invert__ = lambda self: DeviceArray(~self._a)
DeviceArray.__hash__ = None


def _wrap(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return DeviceArray(x)
    if isinstance(x, np.generic):
        return DeviceArray(np.asarray(x))  # CuPy returns 0-d arrays, not NumPy scalars
    return x


def _unwrap(x: Any) -> Any:
    if isinstance(x, DeviceArray):
        return x._a
    if isinstance(x, np.ndarray):
        raise TypeError("a NumPy array where CuPy takes device arrays only")
    if isinstance(x, (tuple, list)):
        return type(x)(_unwrap(v) for v in x)
    return x


def fake_cupy() -> types.ModuleType:
    """A module ``cupy`` of :class:`DeviceArray` with only what CuPy has, and CuPy's limits."""
    xp = types.ModuleType("cupy")
    xp.ndarray = DeviceArray
    for name in ("int8", "int16", "int32", "int64", "intp", "uint32", "uint64", "float32", "float64", "bool_"):
        setattr(xp, name, getattr(np, name))

    def plain(name: str) -> Any:
        f = getattr(np, name)
        return lambda *args, **kwargs: _wrap(f(*_unwrap(args), **_unwrap(kwargs)))

    for name in ("arange", "zeros", "empty", "full", "ones", "concatenate", "cumsum", "searchsorted", "diff",
                 "maximum", "minimum", "where", "flatnonzero", "empty_like", "zeros_like", "unique", "stack"):
        setattr(xp, name, plain(name))

    def asarray(a: Any, dtype: Any = None) -> DeviceArray:
        if isinstance(a, DeviceArray):
            return a if dtype is None or a.dtype == dtype else a.astype(dtype)
        TRANSFERS.append(np.size(a))
        return DeviceArray(np.array(a, dtype=dtype))  # a transfer: a copy

    def ascontiguousarray(a: DeviceArray, dtype: Any = None) -> DeviceArray:
        return DeviceArray(np.ascontiguousarray(_unwrap(a), dtype=dtype))

    def argsort(a: DeviceArray, axis: int = -1, kind: Any = None) -> DeviceArray:
        if kind not in (None, "stable"):
            raise ValueError("CuPy's argsort sorts stably only")
        return DeviceArray(np.argsort(_unwrap(a), axis=axis, kind="stable"))

    def repeat(a: DeviceArray, repeats: Any, axis: Any = None) -> DeviceArray:
        if not isinstance(repeats, (int, list, tuple)):
            raise ValueError("cupy.repeat takes an int, a list or a tuple of repeats, not an array")
        return DeviceArray(np.repeat(_unwrap(a), repeats, axis=axis))

    def bincount(x: DeviceArray, weights: Any = None, minlength: Any = None) -> DeviceArray:
        size = int(x.max()) + 1  # CuPy reads max(x) first: an empty x raises
        return DeviceArray(np.bincount(_unwrap(x), _unwrap(weights), max(size, minlength or 0)))

    xp.asarray, xp.array = asarray, asarray
    xp.ascontiguousarray, xp.argsort, xp.repeat, xp.bincount = ascontiguousarray, argsort, repeat, bincount
    return xp


@pytest.fixture
def fake_xp(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """The fake CuPy, installed as ``cupy`` for the test."""
    xp = fake_cupy()
    monkeypatch.setitem(sys.modules, "cupy", xp)
    TRANSFERS.clear()
    return xp


def test_the_fake_refuses_numpy_only_calls(fake_xp):
    a = fake_xp.asarray(np.array([3, 1, 2]))
    with pytest.raises(TypeError):
        np.argsort(a, kind="stable")
    with pytest.raises(TypeError):
        np.asarray(a)
    with pytest.raises(TypeError):
        [int(v) for v in a]
    with pytest.raises(TypeError):
        np.arange(3) + a
    with pytest.raises(ValueError):
        fake_xp.repeat(a, a)
    with pytest.raises(ValueError):
        fake_xp.bincount(fake_xp.zeros(0, dtype=np.int64), minlength=3)
    # The old host algorithms are caught:
    with pytest.raises((TypeError, ValueError)):
        host_segment_plan(a, 256, np.int32)
    assert_same(fake_xp.argsort(a, kind="stable"), np.array([1, 2, 0]))


# ---------------------------------------------------------------------- segment plans
@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
@pytest.mark.parametrize("chunk", [1, 3, 256])
def test_segment_plan_matches_host_algorithm(index_dtype, chunk):
    for g in graphs(index_dtype):
        for indptr in (g.indptr, g.transposed()[0]):
            want = host_segment_plan(indptr, chunk, index_dtype)
            assert_same_plan(cl.build_segment_plan(indptr, chunk, index_dtype), want)


@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
def test_segment_plan_on_the_device(fake_xp, index_dtype):
    for g in graphs(index_dtype):
        want = host_segment_plan(g.indptr, 4, index_dtype)
        indptr = fake_xp.asarray(g.indptr)
        TRANSFERS.clear()
        got = cl.build_segment_plan(indptr, 4, index_dtype)
        assert not TRANSFERS  # built on the device: no array went through the host
        for key in PLAN_ARRAYS:
            assert isinstance(got[key], DeviceArray), key
        assert_same_plan(got, want)


def test_segment_plan_accepts_a_list_and_keeps_the_int32_limit():
    assert_same_plan(cl.build_segment_plan([0, 2, 2, 9], 4, np.int32),
                     host_segment_plan(np.array([0, 2, 2, 9]), 4, np.int32))
    with pytest.raises(ValueError, match="too large for int32 segment plans"):
        cl.build_segment_plan(np.array([0, 2**31 - 2]), 1, np.int32)


def test_plan_is_built_in_the_runtime_namespace(fake_xp):
    g = random_graph(*GRAPHS[5]).to("cupy")
    for which, indptr in (("rows", g.indptr), ("cols", g.transposed()[0])):
        plan = cl._plan(g, which, fake_xp, chunk=8)
        assert isinstance(plan.seg_ptr, DeviceArray)
        want = host_segment_plan(indptr.get(), 8, g.index_dtype)
        assert_same_plan({k: getattr(plan, k) for k in want}, want)
        assert cl._plan(g, which, fake_xp, chunk=8) is plan


# ---------------------------------------------------------------------- transposed structure, row ids
@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
def test_transposed_matches_host_algorithm(index_dtype):
    for g in graphs(index_dtype):
        got, want = g.transposed(), host_transposed(g)
        for a, b in zip(got, want):
            assert_same(a, b)
            assert _is_sealed(a)


@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
def test_transposed_and_row_ids_on_the_device(fake_xp, index_dtype):
    for g in graphs(index_dtype):
        d = g.to("cupy")
        assert d.device == "cupy"
        TRANSFERS.clear()
        d.transposed(), d.row_ids()
        assert not TRANSFERS  # built on the device: no array went through the host
        for a, b in zip(d.transposed(), host_transposed(g)):
            assert isinstance(a, DeviceArray)
            assert_same(a, b)
        assert_same(d.row_ids(), np.asarray(g.row_ids()))


def test_transposed_reuses_cached_row_ids(fake_xp):
    g = random_graph(*GRAPHS[4]).to("cupy")
    rows = g.row_ids()
    t = g.transposed()
    assert_same(t[1], host_transposed(g.to("numpy"))[1])
    assert g.row_ids() is rows


# ---------------------------------------------------------------------- to() keeps the caches
def _fill_caches(g: CSRGraph) -> dict[str, Any]:
    """Build every cached structure of the host graph ``g``; return them by name."""
    from sparsegat.nn.gat import SELF_LOOPS_KEY

    return {"transposed": g.transposed(), "row_ids": g.row_ids(),
            "rows": cl._plan(g, "rows", np, chunk=4), "cols": cl._plan(g, "cols", np, chunk=4),
            "loops": g.cached(SELF_LOOPS_KEY, g.with_self_loops),
            "host_only": g.cached(HOST_ONLY_CACHES[0] + "test", lambda: (np.arange(3),)),
            "other": g.cached("test.dict", lambda: {"a": [np.arange(4)], "n": 3})}


def _forbid_rebuilds(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a cached structure was rebuilt")

    monkeypatch.setattr(graph_module, "transpose_csr", fail)
    monkeypatch.setattr(graph_module, "_row_ids", fail)
    monkeypatch.setattr(csr_format, "row_ids", fail)
    monkeypatch.setattr(cl, "build_segment_plan", fail)


def test_to_numpy_keeps_the_same_caches():
    g = random_graph(*GRAPHS[5])
    before = _fill_caches(g)
    assert g.to("numpy") is g
    after = _fill_caches(g)
    assert all(after[k] is v for k, v in before.items())


def test_round_trip_carries_every_cache_without_rebuilding(fake_xp, monkeypatch):
    from sparsegat.nn.gat import SELF_LOOPS_KEY

    g = random_graph(*GRAPHS[5])
    host = _fill_caches(g)
    _forbid_rebuilds(monkeypatch)

    d = g.to("cupy")
    assert sum(TRANSFERS) > 2 * g.nnz  # the caches were copied over, not rebuilt
    for a, b in zip(d.transposed(), host["transposed"]):
        assert isinstance(a, DeviceArray)
        assert_same(a, b)
    assert_same(d.row_ids(), host["row_ids"])
    for which in ("rows", "cols"):
        plan, want = cl._plan(d, which, fake_xp, chunk=4), host[which]
        assert isinstance(plan.seg_row, DeviceArray) and plan.n_seg == want.n_seg
        assert_same(plan.seg_slot, want.seg_slot)
    loops = d.cached(SELF_LOOPS_KEY, None)
    assert loops.device == "cupy" and isinstance(loops.indices, DeviceArray)
    assert not any(k.startswith(HOST_ONLY_CACHES) for k in d._other)  # host-only: left behind
    assert_same(d.cached("test.dict", None)["a"][0], np.arange(4))

    back = d.to("numpy")
    assert back.device == "numpy"
    got = {"transposed": back.transposed(), "row_ids": back.row_ids(),
           "rows": cl._plan(back, "rows", np, chunk=4), "cols": cl._plan(back, "cols", np, chunk=4),
           "loops": back.cached(SELF_LOOPS_KEY, None), "other": back.cached("test.dict", None)}
    for a, b in zip(got["transposed"], host["transposed"]):
        assert_same(a, b)
        assert _is_sealed(a)
    assert_same(got["row_ids"], host["row_ids"]) and _is_sealed(got["row_ids"])
    for which in ("rows", "cols"):
        for key in PLAN_ARRAYS:
            a = getattr(got[which], key)
            assert_same(a, getattr(host[which], key))
            assert _is_sealed(a), (which, key)
        assert got[which].n_slots == host[which].n_slots
    assert_same(got["loops"].indices, np.asarray(host["loops"].indices))
    assert _is_sealed(got["loops"].indices)
    assert_same(got["other"]["a"][0], np.arange(4)) and _is_sealed(got["other"]["a"][0])
    with pytest.raises(TypeError):
        got["other"]["a"] = None  # still a read-only mapping
    with pytest.raises(ValueError):
        got["transposed"][2][0] = 0


def test_to_carries_only_what_exists(fake_xp):
    g = random_graph(*GRAPHS[4])
    d = g.to("cupy")
    assert d._transposed is None and d._row_ids is None and not d._other


# ---------------------------------------------------------------------- a real GPU, when there is one
def _gpu() -> bool:
    if importlib.util.find_spec("cupy") is None:
        return False
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no driver, no device
        return False


@pytest.mark.gpu
@pytest.mark.skipif(not _gpu(), reason="needs CuPy and a CUDA GPU")
@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
def test_real_cupy_matches_host(index_dtype):
    import cupy

    for g in graphs(index_dtype):
        d = g.to("cupy")
        for a, b in zip(d.transposed(), host_transposed(g)):
            assert isinstance(a, cupy.ndarray)
            assert_same(a, b)
        assert_same(d.row_ids(), np.asarray(g.row_ids()))
        for chunk in (1, 3, 256):
            for indptr, host_indptr in ((d.indptr, g.indptr), (d.transposed()[0], g.transposed()[0])):
                got = cl.build_segment_plan(indptr, chunk, index_dtype)
                assert isinstance(got["seg_ptr"], cupy.ndarray)
                assert_same_plan(got, host_segment_plan(host_indptr, chunk, index_dtype))
        back = d.to("numpy")
        for a, b in zip(back.transposed(), g.transposed()):
            assert_same(a, b)
            assert _is_sealed(a)


# ---------------------------------------------------------------------- benchmarks: running out of memory
# (bench/gatconv_gpu.py records an out-of-memory phase and goes on; its GPU runs need a device.)
@pytest.mark.parametrize("exc, oom", [
    (MemoryError("out of memory allocating 1,024 bytes"), True),
    (type("OutOfMemoryError", (RuntimeError,), {})("CUDA out of memory. Tried to allocate 2.00 GiB"), True),
    (RuntimeError("CUDA out of memory. Tried to allocate 117.00 GiB"), True),
    (RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"), True),
    (RuntimeError("cudaErrorMemoryAllocation: out of memory"), True),
    (RuntimeError("CUDA error: an illegal memory access was encountered"), False),
    (ValueError("x must be 2-D"), False),
])
def test_out_of_memory_errors_are_recognised(exc, oom):
    from sparsegat.bench.timing import is_out_of_memory

    assert is_out_of_memory(exc) is oom


def test_call_unless_oom_frees_after_the_failed_call_is_gone():
    import weakref

    from sparsegat.bench.timing import call_unless_oom

    class Big:
        pass

    refs, freed = [], []

    def fails() -> None:
        big = Big()  # held by the failing frame, so by the traceback
        refs.append(weakref.ref(big))
        raise RuntimeError("CUDA out of memory. Tried to allocate 8.00 GiB\nmore details")

    def free() -> None:
        freed.append(refs[0]() is None)

    assert call_unless_oom(lambda: 3, free) == (3, None) and not freed
    assert call_unless_oom(fails, free) == (None, "RuntimeError: CUDA out of memory. Tried to allocate 8.00 GiB")
    assert freed == [True]
    with pytest.raises(ValueError):
        call_unless_oom(lambda: int("x"), free)
    assert freed == [True]


def test_gpu_benchmark_records_oom_per_phase_and_goes_on(capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "gatconv_gpu.py"
    spec = importlib.util.spec_from_file_location("gatconv_gpu_under_test", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    def oom() -> dict:
        raise RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`")

    timing = {"median_ms": 2.0, "min_ms": 1.5}
    res = {"nodes": 10, "edges_with_self_loops": 30, "in_dim": 4, "heads": 2, "out_dim": 3}
    assert bench.phase(res, "sparsegat_forward", lambda: {"sparsegat_forward": timing,
                                                          "sparsegat_forward_peak_bytes": 2**30})
    assert not bench.phase(res, "sparsegat_step", oom)
    assert not bench.phase(res, "pyg_forward", oom)
    assert bench.phase(res, "pyg_step", lambda: {"pyg_step": timing, "pyg_step_peak_bytes": 2**31})
    assert res["sparsegat_step"] == res["pyg_forward"] == "OOM"
    assert "CUBLAS_STATUS_ALLOC_FAILED" in res["pyg_forward_error"]
    assert res["sparsegat_forward"] == timing and res["pyg_step"] == timing
    bench.print_layer("tiny", res)
    printed = capsys.readouterr().out
    assert "sparsegat 2.00 ms, 1.000 GiB | PyG OOM" in printed and "pyg_forward_error" in printed
    bench.print_fused({"nodes": 5, "heads": 1, "dim": 8, "setup": "OOM", "setup_error": "MemoryError: x"})
    assert "additive" in capsys.readouterr().out
