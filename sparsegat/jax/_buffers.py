"""XLA's buffers as the arrays the core takes, without copies.

Inside a :func:`jax.experimental.buffer_callback` every operand and result is a
``Buffer``: on the CPU it exposes the NumPy ``__array__`` protocol (``numpy.asarray``
returns a view of XLA's memory: read-only for operands, writeable for results), on a
GPU the ``__cuda_array_interface__`` protocol (``cupy.asarray`` returns a view of the
device memory). :func:`views` turns a callback's buffers into such views and, on a GPU,
makes CuPy launch on XLA's stream (``ExecutionContext.stream``) on the buffers' device,
so the kernels are ordered after the work that produced the operands and before the work
that reads the results, with no synchronisation.

The callbacks of :func:`jax.pure_callback` (the fallback route) get host arrays and
need none of this.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import numpy as np

#: DLPack device types (``__dlpack_device__()[0]``) of host memory.
_DLPACK_HOST = (1, 3)  # kDLCPU, kDLCUDAHost


def kind_of(buf: Any) -> str:
    """``"numpy"`` for a buffer in host memory, ``"cupy"`` for one in GPU memory."""
    device = getattr(buf, "__dlpack_device__", None)
    if callable(device):
        return "numpy" if int(device()[0]) in _DLPACK_HOST else "cupy"
    return "numpy"


@contextlib.contextmanager
def views(ctx: Any, first: Any) -> Iterator[tuple[str, int | None, Callable[[Any], Any]]]:
    """``(kind, device_id, view)`` for the buffers of one callback; ``view(buf)`` is a
    NumPy (host) or CuPy (GPU) array sharing the buffer's memory (None stays None).

    ``first`` is any operand buffer (they all live on one device). On a GPU the block
    runs with CuPy's current device set to the buffers' device and its current stream
    set to ``ctx.stream``, XLA's stream for this computation.
    """
    kind = kind_of(first)
    if kind == "numpy":
        yield kind, None, _host_view
        return
    import cupy

    probe = cupy.asarray(first)
    device_id = int(probe.device.id)
    stream = cupy.cuda.ExternalStream(int(ctx.stream), device_id)
    with cupy.cuda.Device(device_id), stream:
        yield kind, device_id, _device_view


def _host_view(buf: Any) -> Any:
    return None if buf is None else np.asarray(buf)


def _device_view(buf: Any) -> Any:
    import cupy

    return None if buf is None else cupy.asarray(buf)


def write(dst: Any, src: Any) -> None:
    """Copy ``src`` into the result view ``dst`` (on a GPU: a kernel on the current stream)."""
    dst[...] = src


def to_host(a: Any) -> np.ndarray:
    """A small array (a scalar option, the seed) on the host: one device-to-host copy on a GPU."""
    if type(a).__module__.startswith("cupy"):
        return a.get()
    return np.asarray(a)
