"""Graph attention beyond one machine, on Dask (``pip install "sparsegat[distributed]"``).

- :func:`partition_graph`, :class:`PartitionedGraph`: a CSR graph split into row
  blocks balanced by edges, each with its compact halo (NumPy only);
- :func:`attention_forward`, :func:`attention_backward`: the operator over a
  partitioned graph with Dask arrays, one block per task (``sparsegat.distributed.ops``);
- :func:`train_step`, :func:`fit`: full-graph training of the two-layer GAT of
  ``sparsegat train`` (``sparsegat.distributed.training``);
- :func:`connect`: a ``dask.distributed`` client of a local cluster or a scheduler.

Importing this package imports no Dask; the names that need it load it on first use.
See ``docs/distributed.md``.
"""

from __future__ import annotations

from typing import Any

from .partition import GraphBlock, PartitionedGraph, edge_balanced_bounds, locality_order, partition_graph

__all__ = ["partition_graph", "PartitionedGraph", "GraphBlock", "edge_balanced_bounds", "locality_order",
           "attention_forward", "attention_backward", "DistributedContext", "row_array", "edge_array",
           "DistributedGAT", "fit", "connect"]

_LAZY = {
    "attention_forward": "ops", "attention_backward": "ops", "DistributedContext": "ops",
    "row_array": "ops", "edge_array": "ops",
    "DistributedGAT": "training", "fit": "training",
    "connect": "cluster",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        try:
            module = importlib.import_module(f".{_LAZY[name]}", __name__)
        except ImportError as exc:  # dask or distributed missing
            raise ImportError(f"sparsegat.distributed.{name} needs dask and distributed: "
                              f'pip install "sparsegat[distributed]" ({exc})') from exc
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
