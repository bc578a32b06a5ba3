"""Kernel time of the CUDA backend's fused forward, without Python work in between.

:func:`record_forward` runs one ``attention_forward`` of the ``cupy`` backend
through a runtime that records every kernel launch (name, grid, block,
arguments); :meth:`KernelReplay.replay` then launches the same kernels on the same
buffers again, so that timing back-to-back replays between two CUDA events
measures the kernels alone. :func:`row_segments` is the size of the row plan
those kernels work through, for :func:`sparsegat.bench.traffic.fused_forward_bytes`.
Both use the public functions of ``sparsegat.backends.cuda`` (its launch planner and
runtime), as the backend itself calls them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..arrays import to_numpy


@dataclass(frozen=True)
class KernelLaunch:
    """One recorded kernel launch."""

    name: str
    grid: tuple
    block: tuple
    args: tuple


@dataclass
class KernelReplay:
    """The kernel launches of one recorded call, and the runtime that replays them."""

    runtime: Any
    launches: list[KernelLaunch] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [k.name for k in self.launches]

    def replay(self) -> None:
        """Launch every recorded kernel again, in order, with the same arguments."""
        for k in self.launches:
            self.runtime.launch(k.name, k.grid, k.block, k.args)


def record_forward(g: Any, q: Any, k: Any, v: Any, *, score: str, negative_slope: float = 0.2,
                   tau: float = 1.0) -> KernelReplay:
    """Run the ``cupy`` backend's fused forward once on CuPy arrays, recording its launches.

    The first call also compiles the kernels and builds the graph's row plan, so a
    replay afterwards does neither.
    """
    from ..backends.cuda import backend as cuda_backend, launch
    from ..spec import AttentionSpec

    class Recorder(cuda_backend.CupyRuntime):
        def __init__(self, replay: KernelReplay) -> None:
            self._replay = replay

        def launch(self, name: str, grid: tuple, block: tuple, args: tuple) -> None:
            self._replay.launches.append(KernelLaunch(name, grid, block, args))
            super().launch(name, grid, block, args)

    replay = KernelReplay(runtime=cuda_backend.CupyRuntime())
    launch.forward(g, q, k, v, None, None, AttentionSpec(score, tau, negative_slope), Recorder(replay))
    return replay


def row_segments(g: Any, score: str = "dot", D: int = 1, Dv: int = 1, dtype: Any = "float32") -> int:
    """Segments of the CUDA backend's row plan of ``g`` for a call of ``score`` with feature
    sizes ``D`` (1 for additive) and ``Dv`` in ``dtype`` (its public planner, run on the host):
    the segment length follows the call's lane geometry."""
    import numpy as np

    from ..backends.cuda import launch

    geom = launch.feature_geometry(score, D, Dv, np.dtype(dtype).itemsize)
    return int(launch.build_segment_plan(to_numpy(g.indptr), geom.segment_edges, g.index_dtype)["n_seg"])
