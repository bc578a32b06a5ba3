"""The graph as JAX sees it: a compile-time constant, keyed by identity, moved once per device.

A :class:`~sparsegat.CSRGraph` never becomes a traced value: the operator closes over
it. :class:`GraphKey` is the hashable handle that the operator's static options hold
(``jax.jit`` and ``jax.custom_vjp`` compare static values with ``==`` and hash them),
keyed by the graph object itself, so the same graph reuses its compilations and no
hashing of index arrays ever happens. The graph's cached structures (transposed
structure, Numba and CUDA plans) live on the graph and are built on first use, then
reused by every call and every recompilation.

Where the kernels run on another device than the graph's arrays (a host graph with GPU
buffers, or the reverse), :func:`graph_on` moves it once and caches the copy on the graph
under a key naming that device (``CSRGraph.cached``); such an entry stays correct when the
graph is moved with :meth:`CSRGraph.to`, which carries it along.
"""

from __future__ import annotations

from typing import Any

from ..graph import CSRGraph

#: ``CSRGraph.cached`` key of the host copy of a GPU graph.
HOST_KEY = "jax.on_host"
#: ``CSRGraph.cached`` key prefix of the copy of a graph on GPU ``i`` (``jax.on_cuda.i``).
CUDA_KEY = "jax.on_cuda."


class GraphKey:
    """A :class:`~sparsegat.CSRGraph` as a static value: hashed and compared by identity.

    Two keys are equal exactly when they hold the same graph object, so a compilation
    cached for one graph can never serve another, even one with equal arrays.
    """

    __slots__ = ("graph",)

    def __init__(self, graph: CSRGraph) -> None:
        if not isinstance(graph, CSRGraph):
            raise TypeError(f"g must be a sparsegat.CSRGraph, got {type(graph).__name__}")
        self.graph = graph

    def __hash__(self) -> int:
        return id(self.graph)

    def __eq__(self, other: object) -> bool:
        return type(other) is GraphKey and other.graph is self.graph

    def __repr__(self) -> str:
        return f"GraphKey({self.graph!r})"


def graph_on(g: CSRGraph, kind: str, device_id: int | None = None) -> CSRGraph:
    """``g`` with its arrays on the host (``kind="numpy"``) or on GPU ``device_id`` (``"cupy"``).

    ``g`` itself when it is already there; otherwise a copy made once and cached on ``g``.
    """
    if kind == "numpy":
        return g if g.device == "numpy" else g.cached(HOST_KEY, lambda: g.to("numpy"))
    import cupy

    if g.device == "cupy" and int(g.indices.device.id) == device_id:
        return g
    host = graph_on(g, "numpy")
    with cupy.cuda.Device(device_id):
        return host.cached(f"{CUDA_KEY}{device_id}", lambda: host.to("cupy"))


def as_graph(g: Any) -> CSRGraph:
    """``g`` checked to be a :class:`~sparsegat.CSRGraph` (``TypeError`` naming ``g`` otherwise)."""
    if not isinstance(g, CSRGraph):
        raise TypeError(f"g must be a sparsegat.CSRGraph (a static value closed over by the traced "
                        f"function, not a traced argument), got {type(g).__name__}")
    return g
