"""Tensors to the arrays the core takes, and back, without copies.

CPU tensors become NumPy arrays (``Tensor.numpy``, ``torch.from_numpy``) and CUDA
tensors CuPy arrays (DLPack both ways); every array shares the tensor's memory. On
CUDA, :func:`device_context` makes CuPy launch on PyTorch's current stream and
allocate from PyTorch's caching allocator, so the outputs of an operator are
PyTorch-allocated memory ordered on PyTorch's stream, as if PyTorch had computed them.
"""

from __future__ import annotations

import contextlib
from functools import lru_cache
from typing import Any, Iterator

import numpy as np
import torch


def to_array(t: torch.Tensor | None) -> Any:
    """``t`` as a NumPy (CPU) or CuPy (CUDA) array sharing its memory; None stays None.

    The tensor is detached first (the core never records autograd history) and made
    contiguous only when it is not (one copy, which the core would otherwise make).
    On CUDA, call inside :func:`device_context` so that DLPack's stream hand-off is a
    no-op (producer and consumer stream are the same).
    """
    if t is None:
        return None
    t = t.detach()
    if not t.is_contiguous():
        t = t.contiguous()
    if t.device.type == "cpu":
        return t.numpy()
    import cupy

    return cupy.from_dlpack(t)


def from_array(a: Any) -> torch.Tensor:
    """A tensor sharing the memory of the NumPy or CuPy array ``a`` (a 0-d one for a NumPy scalar)."""
    if isinstance(a, (np.ndarray, np.generic)):
        a = np.asarray(a)
        if not a.flags.writeable:  # torch has no read-only tensors: never alias read-only memory
            a = a.copy()
        return torch.from_numpy(a)
    return torch.from_dlpack(a)


@contextlib.contextmanager
def device_context(device: torch.device) -> Iterator[None]:
    """Where the core runs for tensors on ``device``: nothing to set up on the CPU; on
    CUDA, CuPy's current device, stream and allocator set to PyTorch's.

    - device: the tensors' GPU, so CuPy kernels and allocations go there;
    - stream: :func:`torch.cuda.current_stream` wrapped as a CuPy stream, so the kernels
      are ordered after the PyTorch work that produced the inputs and before the work
      that consumes the outputs, with no synchronisation;
    - allocator: PyTorch's caching allocator (as pytorch-pfn-extras does), so temporaries
      and outputs come from, and return to, PyTorch's memory pool instead of a second
      pool beside it.
    """
    if device.type != "cuda":
        yield
        return
    import cupy

    index = device.index if device.index is not None else torch.cuda.current_device()
    ptr = torch.cuda.current_stream(index).cuda_stream
    # PyTorch's default stream is the legacy null stream (pointer 0).
    stream = cupy.cuda.ExternalStream(ptr, index) if ptr else cupy.cuda.Stream.null
    with cupy.cuda.Device(index), stream, cupy.cuda.using_allocator(_torch_allocator().malloc):
        yield


def _torch_malloc(size: int, device_id: int) -> int:
    # Allocations are tied to a stream in PyTorch's pool: the current one, on which
    # device_context made CuPy launch too.
    return torch.cuda.caching_allocator_alloc(size, device_id, torch.cuda.current_stream(device_id))


def _torch_free(ptr: int, device_id: int) -> None:
    torch.cuda.caching_allocator_delete(ptr)


@lru_cache(maxsize=1)
def _torch_allocator() -> Any:
    """CuPy allocator over PyTorch's caching allocator (built once, on first CUDA use)."""
    import cupy

    return cupy.cuda.PythonFunctionAllocator(_torch_malloc, _torch_free)
