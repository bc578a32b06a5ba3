"""The attention graph of a layer call: PyG's ``edge_index`` with PyG's self-loop rule, cached.

PyG's ``GATConv`` and ``GATv2Conv`` remove every self-loop of ``edge_index`` and append
one loop per node (``remove_self_loops`` then ``add_self_loops``), on every call. The
layers of :mod:`sparsegat.torch.layers` do the same once per ``edge_index`` tensor:
:func:`layer_graph` builds the :class:`~sparsegat.CSRGraph` of the edges PyG attends
over, in PyG's order (the input's non-loop edges, then the loops ``0..m-1``), together
with the permutation from CSR order back to that order, and caches it per tensor, as
:func:`~sparsegat.torch.graph_from_edge_index` does.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from ..graph import CSRGraph
from ._graphs import TorchGraph, _moved, _version, as_torch_graph


@dataclass(eq=False)
class LayerGraph:
    """The graph a layer attends over, and how its edges relate to the caller's.

    Attributes
    ----------
    tg : TorchGraph
        The attention graph, ``(n_dst, n_src)``, on the device of the tensors.
    perm : torch.Tensor or None
        int64 ``(nnz,)``: ``perm[c]`` is the position, in the layer's edge order, of the
        edge at CSR position ``c``; None when the two orders are the same (a graph
        passed as is). The layer's edge order is PyG's: the kept input edges in input
        order, then the ``num_loops`` added loops ``(i, i)``, ``i = 0..num_loops-1``.
    keep : torch.Tensor or None
        int64: the input columns that are kept (the non-loops) when loops were
        replaced; None when every input edge is kept.
    num_loops : int
        Number of loops appended (0 without ``add_self_loops``).
    num_input_edges : int
        Number of edges (columns) of the caller's ``edge_index`` (``nnz`` for a graph).
    """

    tg: TorchGraph
    perm: torch.Tensor | None
    keep: torch.Tensor | None
    num_loops: int
    num_input_edges: int
    _lazy: dict = field(default_factory=dict)

    @property
    def n_dst(self) -> int:
        return self.tg.n_dst

    @property
    def n_src(self) -> int:
        return self.tg.n_src

    @property
    def nnz(self) -> int:
        return int(self.tg.indices.shape[0])

    def _cached(self, name: str, build: Callable[[], torch.Tensor]) -> torch.Tensor:
        """An index tensor built once; outside inference mode, so that autograd may save
        it even when it was first needed under ``torch.inference_mode()``."""
        if name not in self._lazy:
            with torch.inference_mode(False):
                self._lazy[name] = build()
        return self._lazy[name]

    def rows(self) -> torch.Tensor:
        """int64 ``(nnz,)``: the destination (row) of each edge, CSR order."""
        return self._cached("rows", lambda: _rows(self.tg))

    def cols(self) -> torch.Tensor:
        """int64 ``(nnz,)``: the source (column) of each edge, CSR order."""
        return self._cached("cols", lambda: self.tg.indices.long())

    def kept_dst(self, edge_index: torch.Tensor) -> torch.Tensor:
        """int64: the destination of each kept input edge of ``edge_index`` (the tensor
        this graph was built from), for the loops' edge features."""
        def build() -> torch.Tensor:
            dst = edge_index[1].long()
            return dst if self.keep is None else dst[self.keep]

        return self._cached("kept_dst", build)

    def to_layer_order(self, values: torch.Tensor) -> torch.Tensor:
        """Per-edge ``values`` in CSR order, put in the layer's (PyG's) edge order."""
        if self.perm is None:
            return values
        return values[self._cached("inv_perm", lambda: torch.argsort(self.perm))]

    def edge_index_out(self, edge_index: torch.Tensor | None) -> torch.Tensor:
        """int64 ``(2, nnz)``: the edges attended over, in the layer's edge order, as PyG
        returns them with the attention weights; ``edge_index`` is the tensor this graph
        was built from (None for a graph given as is: its CSR order). A new tensor per
        call (the caller may modify it)."""
        if edge_index is None:
            return torch.stack([self.cols(), self.rows()])
        ei = edge_index.long()
        if self.keep is not None:
            ei = ei[:, self.keep]
        loops = torch.arange(self.num_loops, device=ei.device).expand(2, -1)
        return torch.cat([ei, loops], dim=1)


def _rows(tg: TorchGraph) -> torch.Tensor:
    counts = (tg.indptr[1:] - tg.indptr[:-1]).long()
    return torch.repeat_interleave(torch.arange(tg.n_dst, device=tg.device), counts, output_size=int(tg.indices.shape[0]))


def graph_as_given(g: CSRGraph | TorchGraph, n_src: int, n_dst: int, device: torch.device) -> LayerGraph:
    """A graph passed to a layer: attended over as is (no loops added), CSR edge order."""
    tg = as_torch_graph(g)
    if tg.device != device:
        raise TypeError(f"the graph is on {tg.device} but the features are on {device}; "
                        f"use sparsegat.torch.as_torch_graph(g, device={str(device)!r})")
    if (tg.n_dst, tg.n_src) != (n_dst, n_src):
        raise ValueError(f"the graph has shape (n_dst, n_src) = {tg.shape} but the features give "
                         f"({n_dst}, {n_src})")
    # Built per call (a few attributes): caching it beside the TorchGraph would keep the graph alive.
    return LayerGraph(tg, None, None, 0, int(tg.indices.shape[0]))


# ---------------------------------------------------------------------- edge_index -> graph, cached
@dataclass
class _TensorEntry:
    ref: weakref.ref
    key: tuple
    built: dict  # (n_src, n_dst, add_self_loops) -> LayerGraph


#: id(edge_index) -> what was built from it, valid while ``ref`` points to that very
#: tensor with the same memory, layout and version counter (``key``).
_BUILT: dict[int, _TensorEntry] = {}
#: Configurations remembered per tensor (a tensor used with more shapes rebuilds).
_MAX_CONFIGS = 8


def layer_graph(edge_index: torch.Tensor, n_src: int, n_dst: int, add_self_loops: bool) -> LayerGraph:
    """The attention graph of a PyG ``edge_index`` for features of ``n_src`` source and
    ``n_dst`` destination nodes, with PyG's ``GATConv`` self-loop rule when asked.

    Parameters
    ----------
    edge_index : torch.Tensor, shape (2, E)
        Integer tensor: sources in row 0, targets in row 1, on the features' device.
    n_src, n_dst : int
        Node counts of the two sides (equal for a plain graph).
    add_self_loops : bool
        Remove every loop of ``edge_index`` and add one per node ``i < min(n_src, n_dst)``.

    Returns
    -------
    LayerGraph
        Cached per ``edge_index`` tensor while it lives unmodified; do not modify it.
    """
    _check_edge_index(edge_index)
    if torch.compiler.is_compiling():
        raise TypeError("inside torch.compile, pass the graph as a TorchGraph built outside the compiled code "
                        "(sparsegat.torch.gat_graph(edge_index) applies the layers' self-loop rule); "
                        "finding the graph of an edge_index takes Python lookups a compiled graph cannot hold")
    version = _version(edge_index)
    key = (edge_index.data_ptr(), tuple(edge_index.shape), edge_index.stride(), edge_index.dtype,
           edge_index.device, version)
    config = (int(n_src), int(n_dst), bool(add_self_loops))
    hit = _BUILT.get(id(edge_index))
    if hit is not None and (hit.ref() is not edge_index or hit.key != key or version is None):
        hit = None
    if hit is not None and config in hit.built:
        return hit.built[config]
    with torch.inference_mode(False):  # tensors autograd may save later, whatever the mode now
        lg = _build(edge_index, *config)
    if version is not None:
        if hit is None:
            hit = _remember(edge_index, key)
        if len(hit.built) >= _MAX_CONFIGS:
            hit.built.clear()
        hit.built[config] = lg
    return lg


def _check_edge_index(edge_index: torch.Tensor) -> None:
    if not isinstance(edge_index, torch.Tensor):
        raise TypeError(f"edge_index must be a torch.Tensor, a sparsegat.CSRGraph or a TorchGraph, "
                        f"got {type(edge_index).__name__}")
    if edge_index.layout != torch.strided:
        raise TypeError(f"edge_index must be a dense (2, E) tensor, got a {edge_index.layout} tensor "
                        f"(sparse adjacency matrices are not supported)")
    if edge_index.dtype == torch.bool or edge_index.is_floating_point() or edge_index.is_complex():
        raise TypeError(f"edge_index must have an integer dtype, got {edge_index.dtype}")
    if edge_index.dim() != 2 or edge_index.shape[0] != 2:
        raise ValueError(f"edge_index must have shape (2, E), got {tuple(edge_index.shape)}")


def _remember(edge_index: torch.Tensor, key: tuple) -> _TensorEntry:
    ident = id(edge_index)

    def forget(r: weakref.ref, ident: int = ident, built: dict = _BUILT) -> None:
        entry = built.get(ident)
        if entry is not None and entry.ref is r:
            built.pop(ident, None)

    entry = _TensorEntry(weakref.ref(edge_index, forget), key, {})
    _BUILT[ident] = entry
    return entry


def _build(edge_index: torch.Tensor, n_src: int, n_dst: int, add_self_loops: bool) -> LayerGraph:
    device = edge_index.device
    host = edge_index.detach().cpu().numpy()
    src, dst = host[0].astype(np.int64, copy=False), host[1].astype(np.int64, copy=False)
    num_loops, keep = 0, None
    if add_self_loops:
        num_loops = min(n_src, n_dst)
        loop = src == dst
        if loop.any():
            keep = np.flatnonzero(~loop)
            src, dst = src[keep], dst[keep]
        loops = np.arange(num_loops, dtype=np.int64)
        src, dst = np.concatenate([src, loops]), np.concatenate([dst, loops])
    graph, perm = CSRGraph.from_edge_index(src, dst, num_src=n_src, num_dst=n_dst, return_perm=True)
    if device.type != "cpu":
        graph = _moved(graph, device)
    identity = perm.size == 0 or bool(np.array_equal(perm, np.arange(perm.size)))
    perm_t = None if identity else torch.from_numpy(perm).to(device)
    keep_t = None if keep is None else torch.from_numpy(keep.astype(np.int64)).to(device)
    return LayerGraph(as_torch_graph(graph), perm_t, keep_t, num_loops, int(host.shape[1]))


def gat_graph(edge_index: torch.Tensor, num_nodes: int | tuple[int, int] | None = None, *,
              add_self_loops: bool = True, device: torch.device | str | None = None) -> TorchGraph:
    """The graph :class:`~sparsegat.torch.GATConv` attends over, as a :class:`TorchGraph`.

    For code compiled with :func:`torch.compile`, which cannot look graphs up from an
    ``edge_index``: build this outside and pass it to the layers instead of
    ``edge_index`` (they then add no loops of their own).

    Parameters
    ----------
    edge_index : torch.Tensor, shape (2, E)
        PyG's ``edge_index`` (sources in row 0, targets in row 1).
    num_nodes : int or (int, int), optional
        Node count, or ``(n_src, n_dst)`` of a bipartite graph; default
        ``edge_index.max() + 1``.
    add_self_loops : bool
        Apply PyG's rule (remove loops, add one per node), as the layers do by default.
    device : torch.device or str, optional
        Where the graph goes; default ``edge_index.device``.

    Returns
    -------
    TorchGraph
        Its edges are in CSR order: per-edge data for it (``edge_attr``) must be too.
    """
    _check_edge_index(edge_index)
    if isinstance(num_nodes, (tuple, list)):
        n_src, n_dst = (int(n) for n in num_nodes)
    elif num_nodes is None:
        n_src = n_dst = int(edge_index.max()) + 1 if edge_index.numel() else 0
    else:
        n_src = n_dst = int(num_nodes)
    lg = _build(edge_index, n_src, n_dst, add_self_loops)
    return lg.tg if device is None else as_torch_graph(lg.tg, device=device)


def clear_cache() -> None:
    """Forget every graph built for a layer."""
    _BUILT.clear()
