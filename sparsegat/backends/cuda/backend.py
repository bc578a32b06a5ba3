"""The ``cupy`` backend: fused, deterministic CUDA kernels through ``cupy.RawModule``.

The kernels are the C++ templates in ``sparsegat/backends/cuda/*.cu`` (templated on value type
float/double, index type int/long long, score function, vector width and register
tile), instantiated through NVRTC ``name_expressions``. Everything between the
public API and a launch (segment plans, launch geometry, scratch buffers, argument
types, merge and reduction passes) lives in :mod:`sparsegat.backends.cuda.launch`,
which the emulated tests run on the CPU; this module only adds CuPy: compiling and
caching modules, launching kernels, allocating arrays.

Compiled modules are memoised per device and kernel configuration (score, dtypes,
vector width, tile) for the life of the process. Across processes only CuPy's disk
cache (``CUPY_CACHE_DIR``) can help, and it reads these modules (built with
``name_expressions``) back only from CuPy 14.2 on, which the ``cuda12``/``cuda13``
extras ask for: older CuPy compiles every configuration again with NVRTC in every
process, about 0.75 s each. See "Compilation and caching" in ``docs/cuda.md``.

Every launch passes absent arrays as :data:`launch.NULL` (``np.uint64(0)``): CuPy before
14.0 turns ``None`` into a non-null garbage pointer (cupy/cupy#9046), so
:meth:`CupyRuntime.launch` refuses ``None`` outright.

This module imports CuPy; the registry imports it only when CuPy arrays or
``backend="cupy"`` are used. See ``docs/cuda.md``.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Sequence

import cupy

from ...arrays import write_into
from ...spec import AttentionSpec
from . import launch

#: (device id, name expression) -> cupy.RawKernel
_FUNCTIONS: dict[tuple[int, str], Any] = {}
#: (device id, names of one configuration) -> cupy.RawModule (kept alive)
_MODULES: dict[tuple[int, tuple[str, ...]], Any] = {}


@lru_cache(maxsize=1)
def _source() -> str:
    return launch.module_source()


class CupyRuntime:
    """:class:`launch.Runtime` over CuPy arrays and RawModule kernels."""

    xp = cupy

    @staticmethod
    def _device() -> int:
        return cupy.cuda.runtime.getDevice()

    def prepare(self, names: Sequence[str]) -> None:
        dev = self._device()
        if all((dev, n) in _FUNCTIONS for n in names):
            return
        key = (dev, tuple(names))
        module = cupy.RawModule(code=_source(), options=launch.NVRTC_OPTIONS,
                                name_expressions=tuple(names))
        for n in names:
            _FUNCTIONS[(dev, n)] = module.get_function(n)
        _MODULES[key] = module

    def launch(self, name: str, grid: tuple, block: tuple, args: tuple) -> None:
        _refuse_none(name, args)
        kernel = _FUNCTIONS.get((self._device(), name))
        if kernel is None:
            self.prepare([name])
            kernel = _FUNCTIONS[(self._device(), name)]
        kernel(tuple(int(x) for x in grid), tuple(int(x) for x in block), args)

    @staticmethod
    def pointer(a: Any) -> int:
        return int(a.data.ptr)


def _refuse_none(name: str, args: tuple) -> None:
    """Raise TypeError if a launch argument is None (a garbage pointer on CuPy < 14)."""
    for i, a in enumerate(args):
        if a is None:
            raise TypeError(f"{name}: argument {i} is None; CuPy < 14 passes None as a non-null "
                            f"pointer (cupy/cupy#9046); pass launch.NULL")


_RUNTIME = CupyRuntime()


def forward(g: Any, q: Any, k: Any, v: Any, att: Any, edge_bias: Any, spec: AttentionSpec,
            out: Any = None) -> tuple[Any, dict]:
    """Fused forward (copied into ``out`` when given, on the current stream); saves the
    per-row max score and log-denominator, (n_dst, H) each."""
    result, saved = launch.forward(g, q, k, v, att, edge_bias, spec, _RUNTIME)
    return write_into(out, result), saved


def backward(g: Any, q: Any, k: Any, v: Any, att: Any, edge_bias: Any, spec: AttentionSpec,
             out: Any, saved: dict, dout: Any, *, into: dict | None = None) -> dict:
    """Deterministic backward (no floating-point atomics): bitwise identical from run to
    run. (``into`` is accepted as by the other backends; the caller copies the results there.)"""
    return launch.backward(g, q, k, v, att, edge_bias, spec, out, saved, dout, _RUNTIME)


def weights(g: Any, q: Any, k: Any, att: Any, edge_bias: Any, spec: AttentionSpec) -> Any:
    """Attention weights (nnz, H) in CSR order, after dropout."""
    return launch.weights(g, q, k, att, edge_bias, spec, _RUNTIME)
