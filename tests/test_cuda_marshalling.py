"""Kernel arguments are marshalled as CuPy marshals them, on every CuPy version.

CuPy before 14.0 passes ``None`` as a pointer to an empty slot, a non-null garbage
address (cupy/cupy#9046), so the backend passes an absent array as ``launch.NULL``
(``np.uint64(0)``, 8 zero bytes) and the emulation harness refuses ``None`` the way a
GPU would misread it: loudly. A "u8" zero is a null pointer for a pointer parameter,
a nonzero one is refused. The forward, weights and backward of every score without
``edge_bias`` or ``att`` run through the harness in ``tests/test_cuda_emulated.py``
(and there the kernels test ``bias != nullptr`` on the NULL they get); here the
orchestration is also checked without a compiler, by a runtime that only records.
"""

from __future__ import annotations

import ctypes
import math
from typing import Any, Sequence

import numpy as np
import pytest

from sparsegat import CSRGraph
from sparsegat.backends.cuda import launch as cl
from sparsegat.spec import SCORES, TAU_SCORES, AttentionSpec

from cuda_emulation import harness

F64, I64 = np.dtype(np.float64), np.dtype(np.int64)
needs_cxx = pytest.mark.skipif(not harness.compiler_available(), reason=f"no host C++ compiler ({harness.CXX})")


# ---------------------------------------------------------------------- no compiler needed
class RecordingRuntime:
    """A :class:`cl.Runtime` that records every launch and runs nothing."""

    xp = np

    def __init__(self) -> None:
        self.launches: list[tuple[str, tuple]] = []

    def prepare(self, names: Sequence[str]) -> None:
        pass

    def launch(self, name: str, grid: tuple, block: tuple, args: tuple) -> None:
        self.launches.append((name, args))

    @staticmethod
    def pointer(a: np.ndarray) -> int:
        return a.ctypes.data


def _graph(hub: bool) -> CSRGraph:
    """Rows with a few edges and an empty row; ``hub`` adds a row of 300 edges (partials)."""
    rows = [[0, 2], [], [1, 3, 4]] + ([list(range(300))] if hub else [])
    indptr = np.cumsum([0] + [len(r) for r in rows])
    indices = np.array([j for r in rows for j in r], dtype=np.int64)
    return CSRGraph(indptr, indices, (len(rows), 300 if hub else 5))


def _run_all(score: str, bias: bool, hub: bool) -> RecordingRuntime:
    g = _graph(hub)
    rng = np.random.default_rng(0)
    H, D, Dv = 2, 3, 4
    tail = (H,) if score == "additive" else (H, D)
    q = rng.standard_normal((g.shape[0],) + tail)
    k = rng.standard_normal((g.shape[1],) + tail)
    v = rng.standard_normal((g.shape[1], H, Dv))
    att = rng.standard_normal((H, D)) if score == "gatv2" else None
    edge_bias = rng.standard_normal((g.nnz, H)) if bias else None
    spec = AttentionSpec(score, 0.5 if score in TAU_SCORES else 1.0, 0.2)
    rt = RecordingRuntime()
    out, saved = cl.forward(g, q, k, v, att, edge_bias, spec, rt)
    cl.weights(g, q, k, att, edge_bias, spec, rt)
    cl.backward(g, q, k, v, att, edge_bias, spec, out, saved, np.ones_like(out), rt)
    return rt


@pytest.mark.parametrize("hub", [False, True], ids=["short-rows", "hub-row"])
@pytest.mark.parametrize("bias", [False, True], ids=["no-bias", "bias"])
@pytest.mark.parametrize("score", SCORES)
def test_no_launch_passes_none(score, bias, hub):
    """Every argument of every launch is an array or a NumPy scalar; absent arrays
    (edge_bias, att, v and out of weights, scores, partial buffers) are NULL."""
    rt = _run_all(score, bias, hub)
    assert rt.launches
    for name, args in rt.launches:
        for i, a in enumerate(args):
            assert a is not None, f"{name}: argument {i} is None"
            assert isinstance(a, (np.ndarray, np.generic)), f"{name}: argument {i} is {type(a).__name__}"
    fwd = [args for name, args in rt.launches if cl.kernel_base_name(name) == "sg_attn_fwd"]
    edge_bias_slot = 9  # (seg_ptr, seg_row, seg_slot, n_seg, indices, q, k, v, att, edge_bias, ...)
    for args in fwd:
        assert (args[edge_bias_slot] is cl.NULL) == (not bias)


def test_null_is_eight_zero_bytes():
    assert cl.NULL.dtype == np.uint64 and cl.NULL == 0 and cl.NULL.nbytes == ctypes.sizeof(ctypes.c_void_p)
    assert cl.nullable(None) is cl.NULL
    x = np.zeros(3)
    assert cl.nullable(x) is x


# ---------------------------------------------------------------------- through the harness
@pytest.fixture(scope="module")
def rt() -> harness.EmulatedRuntime:
    names = [cl.helper_kernel_name("sg_column_sum", F64),
             cl.helper_kernel_name("sg_attn_fwd_merge", F64, I64)]
    libs, _ = harness.build_libraries(names, jobs=1)
    return harness.EmulatedRuntime(libs)


def _column_sum_args(out: Any) -> tuple:
    x = np.arange(8.0).reshape(4, 2)
    return (x, np.int64(4), np.int64(2), np.int64(512), out)


@needs_cxx
def test_a_launch_with_none_fails(rt):
    name = cl.helper_kernel_name("sg_column_sum", F64)
    with pytest.raises(TypeError, match=r"argument 4 is None; CuPy < 14 .*launch\.NULL"):
        rt.launch(name, (1, 1, 1), (32, 8, 1), _column_sum_args(None))


@needs_cxx
def test_a_nonzero_u8_for_a_pointer_is_refused(rt):
    name = cl.helper_kernel_name("sg_column_sum", F64)
    with pytest.raises(TypeError, match=r"argument 4: kernel parameter is \*f8, got a nonzero u8"):
        rt.launch(name, (1, 1, 1), (32, 8, 1), _column_sum_args(np.uint64(64)))
    with pytest.raises(TypeError, match=r"argument 1: kernel parameter is i8, got u8"):
        rt.launch(name, (1, 1, 1), (32, 8, 1), (np.zeros((4, 2)), np.uint64(4), np.int64(2), np.int64(512),
                                                  np.empty((1, 2))))
    out = np.empty((1, 2))
    rt.launch(name, (1, 1, 1), (32, 8, 1), _column_sum_args(out))
    np.testing.assert_array_equal(out[0], [12.0, 16.0])


@needs_cxx
def test_null_is_accepted_for_a_pointer(rt):
    """sg_attn_fwd_merge with Dv = 0 takes NULL for part_acc and out (as weights passes
    them) and writes the row statistics of two segments."""
    name = cl.helper_kernel_name("sg_attn_fwd_merge", F64, I64)
    part_ml = np.array([[[1.0, 2.0]], [[3.0, 0.5]]])  # (slot, head, (m, l))
    rmax, rlog = np.empty((1, 1)), np.empty((1, 1))
    grid, block = cl.elementwise_launch(1)
    rt.launch(name, grid, block, (np.array([0]), np.array([0, 2]), np.int64(1), np.int32(1), np.int32(0),
                                  cl.NULL, part_ml, np.float64(1.0), cl.NULL, rmax, rlog))
    assert rmax[0, 0] == 3.0
    assert math.isclose(rlog[0, 0], math.log(2.0 * math.exp(-2.0) + 0.5), rel_tol=1e-15)
