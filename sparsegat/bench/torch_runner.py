"""sparsegat's PyTorch adapter (:mod:`sparsegat.torch`) on the CPU, for comparison with PyG.

Backend ``torch``, used only when ``torch`` and :mod:`sparsegat.torch` can be
imported (PyG is not needed); torch is imported only when it is selected. It runs
what a PyTorch user of sparsegat runs, timed the way ``pyg`` is
(:class:`sparsegat.bench.pyg.PygRunner`, whose protocol this runner shares):

``forward``
    ``sparsegat.torch.attention(tg, q, k, v, score=..., att=...)`` on CPU tensors that
    require gradients, so autograd records the graph, as in training (and as the
    ``pyg`` forward does). ``tg`` is the graph's :class:`sparsegat.torch.TorchGraph`,
    built once outside the timed calls. The kernels are the default CPU backend's
    (Numba when installed, else NumPy; ``$SPARSEGAT_BACKEND`` picks another).
``backward``
    ``torch.autograd.grad(out, [q, k, v, att], grad_outputs=dout, retain_graph=True)``
    (the gradient of ``sum(out * dout)``) on an ``out`` of one untimed forward: the
    operator's registered backward, ``torch.ops.sparsegat.attention_backward``.
``layer``
    ``sparsegat.torch.GATConv(in_dim, Dv, heads=H)`` built as the ``pyg`` runner
    builds PyG's ``GATConv`` (``torch.manual_seed(0)`` then the constructor: PyG's
    initialisation, so both layers hold the same parameters), called on the same
    ``edge_index`` tensor (the looped CSR graph is built in the first call and cached
    for that tensor), then ``torch.autograd.grad`` of ``x`` and every parameter.
"""

from __future__ import annotations

import importlib.util
from typing import Any, Callable

from .graphs import BenchGraph
from .pyg import PygRunner
from .runners import NEGATIVE_SLOPE, Case, default_cpu_backend, error_line, fresh_graph

TORCH_NAMES = ("torch",)


def torch_status(name: str = "torch") -> str | None:
    """None when backend ``name`` (``torch``) can run here, else the reason it cannot."""
    if importlib.util.find_spec("torch") is None:
        return "torch is not installed"
    try:
        import sparsegat.torch  # noqa: F401
    except Exception as exc:  # a broken install is "not available", not a crash
        return f"cannot import sparsegat.torch ({error_line(exc)})"
    return None


class TorchRunner(PygRunner):
    """Prepares and returns the timed callables of :mod:`sparsegat.torch` on CPU tensors."""

    def __init__(self, name: str = "torch") -> None:
        if name not in TORCH_NAMES:
            raise ValueError(f"unknown torch backend {name!r}")
        super().__init__(name)
        import sparsegat.torch as st

        self._st = st
        self.kernel_backend = default_cpu_backend()

    def implementation(self, op: str) -> str:
        if op == "layer":
            return f"sparsegat.torch.GATConv ({self.kernel_backend} kernels) + autograd"
        if op == "forward":
            return f"sparsegat.torch.attention ({self.kernel_backend} kernels), autograd recording"
        return f"sparsegat.torch.attention: torch autograd ({self.kernel_backend} kernels)"

    def _operator(self, case: Case, bg: BenchGraph) -> Callable[..., Any]:
        st, score = self._st, case.score
        tg = st.as_torch_graph(fresh_graph(bg.graph))
        return lambda q, k, v, att: st.attention(tg, q, k, v, score=score, att=att)

    def _gatconv(self, case: Case, dtype: Any) -> Any:
        self._torch.manual_seed(0)
        return self._st.GATConv(case.in_dim, case.dv, heads=case.heads, negative_slope=NEGATIVE_SLOPE,
                                add_self_loops=True).to(device=self._dev, dtype=dtype)
