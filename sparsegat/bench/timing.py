"""Timing and peak-memory measurement for ``sparsegat bench``.

Protocol of one measurement (:func:`measure`):

1. **First call**, timed alone and reported as ``first_s``. It includes whatever
   happens once per process and signature: Numba JIT compilation, CUDA module
   loading, building the graph's cached transposed structure, PyTorch's lazy
   initialisation. It is never part of the statistics.
2. ``warmup`` further calls, not timed.
3. ``repeat`` timed calls, with Python's garbage collector off (as ``timeit``
   does). Statistics: median, min, max, quartiles, mean, standard deviation.
   With ``max_time`` the repetitions stop early once that many seconds have been
   spent and at least ``min(3, repeat)`` calls were timed.
4. One more call for **peak memory**, kept apart so that probing cannot disturb
   the timings.

Clocks. CPU work is timed with ``time.perf_counter`` around the call. GPU work
(CuPy, torch on CUDA) is timed with CUDA events recorded on the current stream
before and after the call, after a device synchronisation, and read after the
end event has completed; the elapsed time therefore covers the host-side launch
overhead as well as the kernels, like a wall clock with synchronisation.

Peak memory is the extra memory a call needs above what is in use just before
it (inputs and, for backward, the forward context are already allocated and are
not counted; outputs and temporaries are):

- host, method ``rss-hwm`` (Linux): free heap pages are returned to the kernel
  (``malloc_trim(0)``; skipped with ``HostMemoryProbe(trim=False)``, so that
  heap pages freed earlier and reused by the call are not counted), the
  process's peak resident set (``VmHWM``) is reset by
  writing ``5`` to ``/proc/self/clear_refs``, and the result is
  ``VmHWM after the call - VmRSS before it``. It sees every allocation the call
  touches (NumPy, Numba's runtime, PyTorch's CPU allocator, BLAS buffers) at page
  granularity; another thread allocating at the same time would be counted too.
- host, method ``tracemalloc`` (fallback elsewhere): the peak traced by
  :mod:`tracemalloc`, which sees Python and NumPy allocations only (not Numba or
  PyTorch), so it can under-report.
- GPU, CuPy, :class:`CupyLiveMemoryProbe`: the peak of the bytes held by live
  allocations of the pool during the call beyond those live before (a CuPy
  memory hook counts every allocation and free).
- GPU, CuPy, :class:`CupyMemoryProbe`: the default memory pool is emptied (``free_all_blocks``) before
  the call; the result is ``pool.total_bytes()`` after the call minus the bytes in
  use before. The pool only grows when no cached block fits, so this is the
  call's peak pool footprint (an upper bound of its peak allocation: blocks are
  rounded to 512 bytes and may fragment).
- GPU, torch: ``torch.cuda.max_memory_allocated()`` after
  ``reset_peak_memory_stats()``, minus ``memory_allocated()`` before.

Scripts that time a few fixed calls over and over (the layer benchmarks in
``bench/``) use :func:`time_calls` instead of :func:`measure`: warm-up calls,
then ``repeat`` timed calls per measurement, no separate first call, the garbage
collector left on; and :func:`run_json` to run a measurement in a fresh process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import json
import math
import os
import subprocess
import time
import tracemalloc
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

# ---------------------------------------------------------------------------- statistics


def summarize(times: list[float]) -> dict[str, float]:
    """Median, min, max, quartiles, mean and standard deviation of ``times`` (seconds)."""
    if not times:
        return {}
    a = np.asarray(times, dtype=np.float64)
    q1, med, q3 = np.percentile(a, [25, 50, 75])
    return {
        "median_s": float(med),
        "min_s": float(a.min()),
        "max_s": float(a.max()),
        "q1_s": float(q1),
        "q3_s": float(q3),
        "mean_s": float(a.mean()),
        "std_s": float(a.std(ddof=1)) if a.size > 1 else 0.0,
    }


@dataclass
class Measurement:
    """One timed operation: first call, repetitions and peak memory."""

    first_s: float
    times_s: list[float]
    warmup: int
    peak_host_bytes: int | None = None
    host_memory_method: str | None = None
    peak_gpu_bytes: int | None = None
    gpu_memory_method: str | None = None
    clock: str = "perf_counter"
    stopped_early: bool = False
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out = {
            "first_s": self.first_s,
            "times_s": list(self.times_s),
            "repeat": len(self.times_s),
            "warmup": self.warmup,
            "clock": self.clock,
            "stopped_early": self.stopped_early,
            "peak_host_bytes": self.peak_host_bytes,
            "host_memory_method": self.host_memory_method,
            "peak_gpu_bytes": self.peak_gpu_bytes,
            "gpu_memory_method": self.gpu_memory_method,
        }
        out.update(summarize(self.times_s))
        return out


# ---------------------------------------------------------------------------- clocks


class CpuClock:
    """Wall-clock time of a call with ``time.perf_counter``."""

    name = "perf_counter"

    def sync(self) -> None:
        pass

    def time(self, fn: Callable[[], Any]) -> float:
        t0 = time.perf_counter()
        result = fn()
        t1 = time.perf_counter()
        del result
        return t1 - t0


class CupyClock:
    """CUDA events around the call on CuPy's current stream (device synchronised first)."""

    name = "cuda-events(cupy)"

    def __init__(self) -> None:
        import cupy

        self._cupy = cupy
        self._start = cupy.cuda.Event()
        self._end = cupy.cuda.Event()

    def sync(self) -> None:
        self._cupy.cuda.Device().synchronize()

    def time(self, fn: Callable[[], Any]) -> float:
        cp = self._cupy
        self.sync()
        self._start.record()
        result = fn()
        self._end.record()
        self._end.synchronize()
        del result
        return cp.cuda.get_elapsed_time(self._start, self._end) / 1e3


class TorchCudaClock:
    """CUDA events around the call on torch's current stream (device synchronised first)."""

    name = "cuda-events(torch)"

    def __init__(self) -> None:
        import torch

        self._torch = torch
        self._start = torch.cuda.Event(enable_timing=True)
        self._end = torch.cuda.Event(enable_timing=True)

    def sync(self) -> None:
        self._torch.cuda.synchronize()

    def time(self, fn: Callable[[], Any]) -> float:
        self.sync()
        self._start.record()
        result = fn()
        self._end.record()
        self._end.synchronize()
        del result
        return self._start.elapsed_time(self._end) / 1e3


# ---------------------------------------------------------------------------- memory probes


def _proc_status_kib(field_name: str) -> int | None:
    try:
        with open("/proc/self/status", "r", encoding="ascii") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _load_malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


class HostMemoryProbe:
    """Extra host memory one call needs; see the module docstring for the methods.

    ``trim=False`` keeps freed heap pages resident before the call (no
    ``malloc_trim``). After :meth:`measure` with method ``rss-hwm``,
    :attr:`rss_before_bytes` holds the resident set just before the call.
    """

    def __init__(self, trim: bool = True) -> None:
        self._trim = _load_malloc_trim() if trim else None
        self.method = "rss-hwm" if self._hwm_resettable() else "tracemalloc"
        self.rss_before_bytes: int | None = None

    @staticmethod
    def _reset_hwm() -> bool:
        try:
            with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
                f.write("5")
            return True
        except OSError:
            return False

    def _hwm_resettable(self) -> bool:
        return (_proc_status_kib("VmHWM") is not None and _proc_status_kib("VmRSS") is not None
                and self._reset_hwm())

    def measure(self, fn: Callable[[], Any]) -> int:
        gc.collect()
        if self.method == "tracemalloc":
            tracemalloc.start()
            try:
                result = fn()
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            del result
            return int(peak)
        if self._trim is not None:
            self._trim(0)
        self._reset_hwm()
        before = _proc_status_kib("VmRSS") or 0
        self.rss_before_bytes = before * 1024
        result = fn()
        peak = _proc_status_kib("VmHWM") or before
        del result
        return max(0, peak - before) * 1024


class CupyMemoryProbe:
    """Peak footprint of CuPy's default memory pool during one call."""

    method = "cupy-pool"

    def __init__(self) -> None:
        import cupy

        self._cupy = cupy

    def measure(self, fn: Callable[[], Any]) -> int:
        cp = self._cupy
        pool = cp.get_default_memory_pool()
        cp.cuda.Device().synchronize()
        pool.free_all_blocks()
        before = pool.used_bytes()
        result = fn()
        cp.cuda.Device().synchronize()
        peak = pool.total_bytes() - before
        del result
        return max(0, int(peak))


class CupyLiveMemoryProbe:
    """Peak bytes of live CuPy pool allocations during one call beyond those live before it."""

    method = "cupy-live-peak"

    def __init__(self) -> None:
        import cupy
        from cupy.cuda import memory_hook

        class PeakHook(memory_hook.MemoryHook):
            name = "sparsegat_bench_peak"

            def __init__(self) -> None:
                self.current = self.peak = 0

            def malloc_postprocess(self, **kw: Any) -> None:
                self.current += kw["mem_size"]
                self.peak = max(self.peak, self.current)

            def free_postprocess(self, **kw: Any) -> None:
                self.current -= kw["mem_size"]

        self._cupy = cupy
        self._hook = PeakHook

    def measure(self, fn: Callable[[], Any]) -> int:
        self._cupy.cuda.Device().synchronize()
        hook = self._hook()
        with hook:
            result = fn()
            self._cupy.cuda.Device().synchronize()
        del result
        return int(hook.peak)


class TorchCudaMemoryProbe:
    """``torch.cuda.max_memory_allocated`` during one call, above what was allocated before."""

    method = "torch-max-allocated"

    def __init__(self) -> None:
        import torch

        self._torch = torch

    def measure(self, fn: Callable[[], Any]) -> int:
        torch = self._torch
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        result = fn()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
        del result
        return max(0, int(peak))


# ---------------------------------------------------------------------------- the protocol


def measure(fn: Callable[[], Any], *, clock: Any = None, warmup: int = 1, repeat: int = 5,
            max_time: float | None = None, host_probe: Any = None, gpu_probe: Any = None) -> Measurement:
    """Time ``fn()`` by the protocol of the module docstring and probe its peak memory.

    Parameters
    ----------
    fn : callable
        Runs the operation once; everything it needs is prepared beforehand.
    clock : CpuClock, CupyClock or TorchCudaClock
        How one call is timed (default :class:`CpuClock`).
    warmup : int
        Untimed calls after the first call.
    repeat : int
        Timed calls (at least 1).
    max_time : float, optional
        Stop repeating once this many seconds were spent on timed calls and at
        least ``min(3, repeat)`` calls were made.
    host_probe, gpu_probe : optional
        Memory probes; each makes one extra, untimed call.
    """
    if repeat < 1:
        raise ValueError(f"repeat must be at least 1, got {repeat}")
    if warmup < 0:
        raise ValueError(f"warmup must be non-negative, got {warmup}")
    clock = clock or CpuClock()
    first = clock.time(fn)
    for _ in range(warmup):
        fn()
    clock.sync()
    times: list[float] = []
    stopped = False
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        spent = 0.0
        for i in range(repeat):
            t = clock.time(fn)
            times.append(t)
            spent += t
            if (max_time is not None and i + 1 < repeat and i + 1 >= min(3, repeat)
                    and spent > max_time):
                stopped = True
                break
    finally:
        if gc_was_enabled:
            gc.enable()
    m = Measurement(first_s=first, times_s=times, warmup=warmup, clock=clock.name, stopped_early=stopped)
    if host_probe is not None:
        m.peak_host_bytes = host_probe.measure(fn)
        m.host_memory_method = host_probe.method
    if gpu_probe is not None:
        m.peak_gpu_bytes = gpu_probe.measure(fn)
        m.gpu_memory_method = gpu_probe.method
    return m


def time_calls(fns: dict[str, Callable[[], Any]], *, warmup: int, repeat: int,
               clock: Any = None) -> dict[str, list[float]]:
    """Times of every callable of ``fns``, one measurement after another.

    Each gets ``warmup`` untimed calls, then ``repeat`` timed ones. Without a
    ``clock``, ``time.perf_counter`` around the bare call, which also releases the
    call's result inside the timed interval (as a training loop drops the previous
    step's outputs); with a clock (:class:`CupyClock`, :class:`TorchCudaClock`) its
    :meth:`time`, after a synchronisation following the warm-up.
    """
    if repeat < 1:
        raise ValueError(f"repeat must be at least 1, got {repeat}")
    times: dict[str, list[float]] = {}
    for name, fn in fns.items():
        for _ in range(warmup):
            fn()
        times[name] = []
        if clock is not None:
            clock.sync()
            times[name] = [clock.time(fn) for _ in range(repeat)]
            continue
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


class SubprocessError(RuntimeError):
    """A measuring process failed; the message is the last line it wrote to stderr."""


def run_json(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``cmd`` in a fresh process and parse the last line of its stdout as JSON.

    Raises :class:`SubprocessError` (with the process's last stderr line, and its
    whole output in ``.output``) when it exits with a non-zero status or prints no JSON.
    """
    res = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    lines = res.stdout.strip().splitlines()
    if res.returncode == 0 and lines:
        try:
            return json.loads(lines[-1])
        except json.JSONDecodeError:
            pass
    err = res.stderr.strip().splitlines()
    exc = SubprocessError(err[-1] if err else f"exit status {res.returncode}, no JSON on stdout")
    exc.output = res.stdout + res.stderr  # type: ignore[attr-defined]
    raise exc


def format_seconds(t: float | None) -> str:
    """``1.23 ms`` style; ``-`` for None or NaN."""
    if t is None or (isinstance(t, float) and math.isnan(t)):
        return "-"
    if t >= 1.0:
        return f"{t:.3g} s"
    if t >= 1e-3:
        return f"{t * 1e3:.3g} ms"
    return f"{t * 1e6:.3g} us"


def cpu_threads() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


# ---------------------------------------------------------------------------- running out of device memory
#: Texts by which an error says that the device ran out of memory. PyTorch raises
#: several as a plain ``RuntimeError`` (a cuBLAS handle or workspace, a failed kernel
#: launch), CuPy as ``CUDARuntimeError`` or ``CUBLASError``; matched case-insensitively.
OOM_MARKERS = ("out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "CUSPARSE_STATUS_ALLOC_FAILED",
               "CUSOLVER_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED", "cudaErrorMemoryAllocation",
               "CUDA_ERROR_OUT_OF_MEMORY")


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` says that memory ran out (host or device, any library).

    ``MemoryError`` (CuPy's ``OutOfMemoryError`` is one), PyTorch's
    ``OutOfMemoryError``, and any error whose message holds one of :data:`OOM_MARKERS`.
    """
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    text = str(exc).lower()
    return any(marker.lower() in text for marker in OOM_MARKERS)


def free_device_memory() -> None:
    """Give the device memory that CuPy's pools and PyTorch's cache hold unused back to the driver.

    Collects garbage first (cycles, such as a traceback's frames, can hold arrays), so
    that what is unreachable is freed; a library that was never imported is left alone.
    Between the two sides of a comparison, this keeps one library's idle blocks from
    making the other run out of memory.
    """
    import sys

    gc.collect()
    cupy = sys.modules.get("cupy")
    if cupy is not None and hasattr(cupy, "get_default_memory_pool"):
        cupy.cuda.Device().synchronize()
        cupy.get_default_memory_pool().free_all_blocks()
        cupy.get_default_pinned_memory_pool().free_all_blocks()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def call_unless_oom(fn: Callable[[], Any], free: Callable[[], None] = free_device_memory) -> tuple[Any, str | None]:
    """``(fn(), None)``, or ``(None, message)`` when ``fn`` runs out of memory.

    After an out-of-memory error, ``free()`` runs once the exception is gone (its
    traceback holds the frames, and so the arrays, of the failed call), so that the
    next measurement starts with the memory the failed one held. Other errors propagate.
    The message is the first line of the error, after its type name.
    """
    try:
        return fn(), None
    except Exception as exc:  # noqa: BLE001 - only out-of-memory errors are handled
        if not is_out_of_memory(exc):
            raise
        lines = str(exc).strip().splitlines()
        message = f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    free()
    return None, message
