"""The GAT layer of the layer benchmarks in ``bench/``: set-up helpers.

A benchmark draws the parameters of one ``GATConv`` once, as a dict in
sparsegat's layout (``W (in_dim, heads*out)``, ``att_src``/``att_dst (heads,
out)``, ``bias (heads*out,)``), and builds both sides from it: sparsegat's
:class:`sparsegat.nn.GATConv` with :func:`sparsegat_gatconv` and PyG's with
:func:`sparsegat.bench.pyg.pyg_gatconv`; :func:`relative_error` compares their
outputs and gradients.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from ..arrays import ALIGNMENT, aligned_empty, to_numpy

GATCONV_PARAMS = ("W", "att_src", "att_dst", "bias")


def aligned_copy(a: np.ndarray, alignment: int = ALIGNMENT) -> np.ndarray:
    """A C-contiguous copy of ``a`` whose data starts on an ``alignment``-byte boundary.

    NumPy's large arrays start 16 bytes past a page boundary; some BLAS kernels
    (OpenBLAS's ``x.T @ y`` with a tall ``x``) are several times slower on such data,
    so benchmark inputs are aligned the way torch aligns its tensors.
    """
    a = np.asarray(a)
    out = aligned_empty(a.shape, a.dtype, alignment)
    out[...] = a
    return out


def sparsegat_gatconv(params: dict[str, Any], *, backend: str | None = None, add_self_loops: bool = True,
                      device: str = "numpy") -> Any:
    """:class:`sparsegat.nn.GATConv` holding copies of ``params`` (on ``device``: numpy or cupy)."""
    from ..nn import GATConv

    W, att_src = to_numpy(params["W"]), to_numpy(params["att_src"])
    heads, out = att_src.shape
    layer = GATConv(W.shape[0], out, heads=heads, add_self_loops=add_self_loops, dtype=W.dtype, seed=0,
                    backend=backend)
    for key in GATCONV_PARAMS:
        layer.params[key] = to_numpy(params[key]).copy()
    if device != "numpy":
        layer.to(device)
    return layer


def relative_error(a: Any, b: Any) -> float:
    """``max |a - b| / max |b|`` (host or GPU arrays, torch tensors via ``.numpy()`` first)."""
    a, b = to_numpy(a).astype(np.float64), to_numpy(b).astype(np.float64)
    return float(np.max(np.abs(a - b)) / max(1e-30, float(np.max(np.abs(b)))))


def add_layer_workload_arguments(ap: argparse.ArgumentParser) -> None:
    """The options of the 100k-node GAT layer workload shared by the layer-step scripts
    (``bench/gatconv_cpu.py``, ``bench/torch_gatconv_cpu.py``): graph and layer sizes,
    seed, and the timing protocol (warm-up calls, timed repeats, alternating rounds)."""
    ap.add_argument("--nodes", type=int, default=100_000)
    ap.add_argument("--edges", type=int, default=1_600_000, help="directed edges before self-loops")
    ap.add_argument("--in-dim", dest="in_dim", type=int, default=128)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--out", type=int, default=32, help="features per head")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7, help="timed runs per measurement and round")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of the timing processes")

