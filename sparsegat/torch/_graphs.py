"""The graph as operator arguments: ``CSRGraph`` <-> index tensors.

Custom operators take only tensors and scalars, so a graph reaches them as its
``indptr`` and ``indices`` tensors plus ``n_src``. Inside the operator, :func:`lookup`
maps those tensors back to the live :class:`~sparsegat.CSRGraph`, so that the
structures cached on it (the transposed structure, the Numba and CUDA segment plans)
are built once and reused by every call.

The mapping can never return the wrong graph:

- A registry entry is keyed by the tensors' device, dtype, data pointer, length and
  stride (and ``n_src``), and holds *weak* references to the very tensor objects it
  was registered with and the version counters they had.
- It is used only while those tensors are alive, still at the keyed data pointer and
  unmodified in place (version counters unchanged). A live tensor keeps its memory, so
  no other allocation can sit at that pointer: whatever tensor the operator received,
  it views the same, unchanged memory. The entry goes away with the tensors (a weakref
  callback), so it never pins a graph by itself.
- Anything else (tensors the operator has not seen, copies made by a compiler, tensors
  modified in place) is rebuilt into a new graph with full validation
  (``CSRGraph(indptr, indices, shape)``) and registered for the tensors it came from.

The tensors of a :class:`TorchGraph` are views of the graph's own (read-only) index
arrays: registering them costs nothing and they must never be written to.
"""

from __future__ import annotations

import warnings
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..graph import CSRGraph
from ._interop import to_array


class TorchGraph:
    """A :class:`~sparsegat.CSRGraph` as PyTorch sees it: its index arrays as tensors.

    Build one with :func:`as_torch_graph`. The tensors share the graph's memory (no
    copy): ``torch.from_numpy`` on the host, DLPack on the GPU. They are read-only by
    contract: writing to them is undefined behaviour (on the host it would write into
    memory the graph seals).

    Pass a ``TorchGraph`` instead of a ``CSRGraph`` to code compiled with
    :func:`torch.compile`: it is a plain object whose tensors ``torch.compile`` treats
    as inputs, while finding it from a ``CSRGraph`` needs Python lookups that a
    compiled graph cannot contain.

    Attributes
    ----------
    graph : CSRGraph
        The graph (kept alive as long as this object).
    indptr, indices : torch.Tensor
        Its index arrays, int32 or int64, on ``device``.
    n_dst, n_src : int
        Its shape.
    """

    def __init__(self, graph: CSRGraph) -> None:
        if not isinstance(graph, CSRGraph):
            raise TypeError(f"graph must be a sparsegat.CSRGraph, got {type(graph).__name__}")
        self.graph = graph
        self.indptr = _index_tensor(graph.indptr)
        self.indices = _index_tensor(graph.indices)
        self.n_dst, self.n_src = graph.shape
        register(self.indptr, self.indices, self.n_src, graph)

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_dst, n_src)``."""
        return (self.n_dst, self.n_src)

    @property
    def nnz(self) -> int:
        """Number of edges."""
        return self.graph.nnz

    @property
    def device(self) -> torch.device:
        """Where the index tensors (and so the operands) live."""
        return self.indices.device

    def __repr__(self) -> str:
        return f"TorchGraph(shape={self.shape}, nnz={self.nnz}, device={str(self.device)!r})"


def _index_tensor(a: Any) -> torch.Tensor:
    """A tensor viewing the graph's index array ``a`` (NumPy or CuPy), never a copy."""
    # Outside inference mode: inference tensors have no version counter to check.
    with torch.inference_mode(False):
        if isinstance(a, np.ndarray):
            with warnings.catch_warnings():
                # The graph's host arrays are read-only by design; the tensor is too, by contract.
                warnings.filterwarnings("ignore", message=".*not writable.*", category=UserWarning)
                return torch.from_numpy(a)
        return torch.from_dlpack(a)


#: id(graph) -> weak reference to its most recent TorchGraph (which holds the graph).
_BY_GRAPH: dict[int, weakref.ref] = {}


def as_torch_graph(g: CSRGraph | TorchGraph, device: Any = None) -> TorchGraph:
    """The :class:`TorchGraph` of ``g``, reused while one is alive.

    Parameters
    ----------
    g : CSRGraph or TorchGraph
        The graph (a ``TorchGraph`` is returned as is when no ``device`` change is asked).
    device : torch.device or str, optional
        Put the graph there first: ``"cpu"`` for the host (``g.to("numpy")``), ``"cuda"``
        or ``"cuda:i"`` for a GPU (``g.to("cupy")`` on device ``i``, which needs CuPy).

    Returns
    -------
    TorchGraph
    """
    if isinstance(g, TorchGraph):
        if device is None or torch.device(device) == g.device:
            return g
        g = g.graph
    if not isinstance(g, CSRGraph):
        raise TypeError(f"g must be a sparsegat.CSRGraph or a TorchGraph, got {type(g).__name__}")
    if device is not None:
        g = _moved(g, torch.device(device))
    ref = _BY_GRAPH.get(id(g))
    tg = ref() if ref is not None else None
    if tg is not None and tg.graph is g:
        return tg
    tg = TorchGraph(g)
    key = id(g)

    def forget(r: weakref.ref, key: int = key) -> None:
        if _BY_GRAPH.get(key) is r:
            _BY_GRAPH.pop(key, None)

    _BY_GRAPH[key] = weakref.ref(tg, forget)
    return tg


def _moved(g: CSRGraph, device: torch.device) -> CSRGraph:
    """``g`` on the torch ``device``: the host, or GPU ``device.index``."""
    if device.type == "cpu":
        return g.to("numpy")
    if device.type != "cuda":
        raise ValueError(f"device must be a CPU or CUDA device, got {device}")
    import cupy

    index = device.index if device.index is not None else torch.cuda.current_device()
    if g.device == "cupy" and g.indices.device.id != index:
        raise ValueError(f"the graph is on GPU {g.indices.device.id}, not on {device}; "
                         f"move it with g.to('numpy') first")
    with cupy.cuda.Device(index):
        return g.to("cupy")


# ---------------------------------------------------------------------- tensors -> graph
@dataclass
class _Entry:
    graph: CSRGraph
    pointers: tuple[int, int]
    versions: tuple[int, int]
    refs: tuple[weakref.ref, ...] = ()

    def valid(self) -> bool:
        """The registered tensors are alive, at their keyed memory and unmodified."""
        tensors = [r() for r in self.refs]
        return len(tensors) == 2 and all(t is not None and t.data_ptr() == p and _version(t) == v
                   for t, p, v in zip(tensors, self.pointers, self.versions))


#: key of (indptr, indices, n_src) -> entry. Plain dict operations only (atomic under the
#: GIL): a race can at worst drop an entry, which costs a rebuild, never a wrong graph.
_REGISTRY: dict[tuple, _Entry] = {}


def _key(indptr: torch.Tensor, indices: torch.Tensor, n_src: int) -> tuple:
    return (indptr.device, indptr.dtype, indices.dtype, int(n_src),
            indptr.data_ptr(), indptr.numel(), indptr.stride(),
            indices.data_ptr(), indices.numel(), indices.stride())


def _version(t: torch.Tensor) -> int | None:
    try:
        return int(t._version)
    except RuntimeError:  # inference tensors have no version counter
        return None


def register(indptr: torch.Tensor, indices: torch.Tensor, n_src: int, graph: CSRGraph) -> None:
    """Map the tensors ``(indptr, indices)`` to ``graph`` while they live unmodified."""
    versions = (_version(indptr), _version(indices))
    if None in versions:
        return  # cannot tell later whether they were modified: never trust them
    key = _key(indptr, indices, n_src)
    entry = _Entry(graph, (indptr.data_ptr(), indices.data_ptr()), versions)

    def drop(_: weakref.ref, key: tuple = key, entry: _Entry = entry) -> None:
        if _REGISTRY.get(key) is entry:
            _REGISTRY.pop(key, None)

    entry.refs = (weakref.ref(indptr, drop), weakref.ref(indices, drop))
    _REGISTRY[key] = entry


def lookup(indptr: torch.Tensor, indices: torch.Tensor, n_src: int) -> CSRGraph:
    """The graph of the index tensors: the registered one, else rebuilt and validated.

    On CUDA, call inside :func:`~sparsegat.torch._interop.device_context` (a rebuilt
    graph's arrays are then allocated and checked on PyTorch's stream).
    """
    if indptr.dim() == 1 and indices.dim() == 1:
        entry = _REGISTRY.get(_key(indptr, indices, n_src))
        if entry is not None and entry.valid():
            return entry.graph
    if indptr.device != indices.device:
        raise TypeError(f"indptr is on {indptr.device} but indices is on {indices.device}")
    if indptr.dim() != 1 or indptr.numel() < 1:
        raise ValueError(f"indptr must be 1-D with n_dst + 1 >= 1 entries, got shape {tuple(indptr.shape)}")
    # Unknown tensors: the constructor copies and checks them in full.
    graph = CSRGraph(to_array(indptr), to_array(indices), (indptr.numel() - 1, int(n_src)))
    register(indptr, indices, n_src, graph)
    return graph


def clear_cache() -> None:
    """Forget every tensor-to-graph mapping (graphs are then rebuilt from their tensors)."""
    _REGISTRY.clear()
    _BY_GRAPH.clear()
