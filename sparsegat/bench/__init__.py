"""``sparsegat bench``: time sparse attention on every available backend (and PyG).

Modules
-------
graphs
    Synthetic graph families (uniform, power-law, bipartite) with a seed.
readers
    The user's own graph from a SciPy ``.npz``, a Matrix Market ``.mtx`` or an edge list.
timing
    Repetitions, warm-up, first-call time, CUDA-event timing, peak memory.
runners
    One runner per backend (numpy, numba, cupy) that prepares inputs and the timed calls.
pyg
    The same operations with PyTorch Geometric (CPU, and CUDA where there is a GPU).
report
    The table on stdout, the JSON file, the plot, bandwidth and speed-up.
cli
    ``sparsegat bench`` argument parsing and the sweep loop.

The command is ``sparsegat bench`` (or ``python -m sparsegat bench``); see
``docs/benchmarks.md``. Everything here uses only the public API of sparsegat.
"""

from .graphs import FAMILIES, make_graph
from .readers import read_graph

__all__ = ["FAMILIES", "make_graph", "read_graph"]
