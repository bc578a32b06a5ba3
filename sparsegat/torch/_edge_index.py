"""PyG's ``edge_index`` to a :class:`~sparsegat.CSRGraph` and the permutation into CSR order."""

from __future__ import annotations

import inspect
import weakref
from dataclasses import dataclass

import numpy as np
import torch

from ..graph import CSRGraph
from ._graphs import _moved, _version


@dataclass
class _Built:
    ref: weakref.ref
    key: tuple
    graph: CSRGraph
    perm: torch.Tensor
    perm_version: int | None


#: id(edge_index) -> what was built from it; valid only while ``ref`` still points to
#: that very tensor, unmodified (the key holds its pointer, layout and version). The
#: entry goes when the tensor does (weakref callback), so it pins nothing for long.
_BUILT: dict[int, _Built] = {}


def graph_from_edge_index(edge_index: torch.Tensor, num_nodes: int | None = None) -> tuple[CSRGraph, torch.Tensor]:
    """The :class:`~sparsegat.CSRGraph` of a PyG ``edge_index``, and its edge permutation.

    Parameters
    ----------
    edge_index : torch.Tensor, shape (2, E)
        Integer tensor, sources in row 0 and targets (the nodes that attend) in row 1,
        PyG's ``flow="source_to_target"``.
    num_nodes : int, optional
        Number of nodes; default ``edge_index.max() + 1`` (0 without edges), as PyG infers it.

    Returns
    -------
    graph : CSRGraph
        Square ``(num_nodes, num_nodes)`` graph, on the host for a CPU ``edge_index`` and
        on its GPU for a CUDA one. Repeated edges are multi-edges, as in PyG.
    perm : torch.Tensor
        int64, shape ``(nnz,)``, on ``edge_index.device``: ``perm[c]`` is the column of
        ``edge_index`` stored at CSR position ``c``, so ``edge_attr[perm]`` is in CSR
        order (e.g. for ``edge_bias``). Do not modify it (it is cached).

    Notes
    -----
    The result is cached per ``edge_index`` tensor object and reused while that tensor
    lives unmodified (same memory, same version counter), so calling this every forward
    pass costs a dictionary lookup. Building it reads ``edge_index`` on the host (one
    device-to-host copy for a CUDA tensor).
    """
    if not isinstance(edge_index, torch.Tensor):
        raise TypeError(f"edge_index must be a torch.Tensor, got {type(edge_index).__name__}")
    if edge_index.dtype == torch.bool or edge_index.is_floating_point() or edge_index.is_complex():
        raise TypeError(f"edge_index must have an integer dtype, got {edge_index.dtype}")
    if edge_index.dim() != 2 or edge_index.shape[0] != 2:
        raise ValueError(f"edge_index must have shape (2, E), got {tuple(edge_index.shape)}")
    if num_nodes is not None and (isinstance(num_nodes, bool) or not isinstance(num_nodes, (int, np.integer))):
        raise TypeError(f"num_nodes must be None or an integer, got {num_nodes!r}")
    key = (edge_index.data_ptr(), tuple(edge_index.shape), edge_index.stride(), edge_index.dtype,
           edge_index.device, _version(edge_index), None if num_nodes is None else int(num_nodes))
    hit = _BUILT.get(id(edge_index))
    if (hit is not None and hit.ref() is edge_index and hit.key == key and None not in (key[5], hit.perm_version)
            and _version(hit.perm) == hit.perm_version):
        return hit.graph, hit.perm
    host = edge_index.detach().cpu().numpy()
    src, dst = host[0], host[1]
    n = int(num_nodes) if num_nodes is not None else (int(host.max()) + 1 if host.size else 0)
    graph, perm = _csr_with_perm(src, dst, n)
    if edge_index.device.type != "cpu":
        graph = _moved(graph, edge_index.device)
    perm_t = torch.from_numpy(perm).to(edge_index.device)
    _remember(edge_index, key, graph, perm_t)
    return graph, perm_t


def _remember(edge_index: torch.Tensor, key: tuple, graph: CSRGraph, perm: torch.Tensor) -> None:
    ident = id(edge_index)

    def forget(r: weakref.ref, ident: int = ident) -> None:
        hit = _BUILT.get(ident)
        if hit is not None and hit.ref is r:
            _BUILT.pop(ident, None)

    _BUILT[ident] = _Built(weakref.ref(edge_index, forget), key, graph, perm, _version(perm))


def _csr_with_perm(src: np.ndarray, dst: np.ndarray, n: int) -> tuple[CSRGraph, np.ndarray]:
    """The ``(n, n)`` graph of the edges ``src -> dst`` and each stored edge's input position."""
    if "return_perm" in inspect.signature(CSRGraph.from_edge_index).parameters:
        return CSRGraph.from_edge_index(src, dst, num_src=n, num_dst=n, return_perm=True)
    return _csr_with_perm_by_sorting(src, dst, n)


def _csr_with_perm_by_sorting(src: np.ndarray, dst: np.ndarray, n: int) -> tuple[CSRGraph, np.ndarray]:
    """For a ``CSRGraph.from_edge_index`` without ``return_perm`` (which merges repeated
    edges): the same stable sort by ``(dst, src)``, keeping the first of each repeat."""
    graph = CSRGraph.from_edge_index(src, dst, num_src=n, num_dst=n)
    order = np.lexsort((src, dst))
    s, d = src[order], dst[order]
    keep = np.ones(order.shape[0], dtype=bool)
    keep[1:] = (s[1:] != s[:-1]) | (d[1:] != d[:-1])
    return graph, order[keep].astype(np.int64)


def clear_cache() -> None:
    """Forget every graph built from an ``edge_index``."""
    _BUILT.clear()
