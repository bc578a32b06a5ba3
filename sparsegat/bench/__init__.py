"""``sparsegat bench``: time sparse attention on every available backend (and PyG, the adapters, JAX).

The package also holds what the workload scripts in the repository's ``bench/``
folder share, so that no script carries its own generator, clock or model.

Modules
-------
graphs
    Synthetic graph families (uniform, power-law, bipartite) and edge-list
    generators, reproducible from a seed.
readers
    The user's own graph from a SciPy ``.npz``, a Matrix Market ``.mtx`` or an edge list.
timing
    Repetitions, warm-up, first-call time, CUDA-event timing, peak memory, measuring
    processes.
traffic
    Bytes models of the operations and kernels, and measured memory bandwidth.
runners
    One runner per backend (numpy, numba, cupy) that prepares inputs and the timed calls;
    the protocol every runner follows.
pyg
    The same operations with PyTorch Geometric (CPU, and CUDA where there is a GPU),
    and PyG's ``GATConv`` holding given parameters.
torch_runner
    The same operations through sparsegat's PyTorch adapter (``sparsegat.torch``) on the CPU.
jax_runner
    The same operations through sparsegat's JAX adapter (``sparsegat.jax``) and in pure
    JAX, on the CPU.
jaxref
    The attention operator and GAT layer written in pure JAX (gathers and segment reductions).
layers
    sparsegat's ``nn.GATConv`` holding given parameters, aligned inputs, comparisons.
kernels
    Kernel time of the CUDA backend's fused forward, without Python in between.
report
    The table on stdout, the JSON file, bandwidth and speed-up.
plot_data
    What the plot shows, without matplotlib: which series are lines, names, tick labels, caption.
plot
    The ``--plot`` figure (matplotlib, imported lazily); ``python -m sparsegat.bench.plot``
    draws a saved JSON file again.
busy
    The load-average rule behind the busy-machine notes and the plot's warning.
cli
    ``sparsegat bench`` argument parsing and the sweep loop.

The command is ``sparsegat bench`` (or ``python -m sparsegat bench``); see
``docs/benchmarks.md``. Everything here uses the public API of sparsegat, except
``kernels``, which drives the CUDA backend's public launch functions directly.
"""

from .graphs import FAMILIES, make_graph
from .readers import read_graph

__all__ = ["FAMILIES", "make_graph", "read_graph"]
