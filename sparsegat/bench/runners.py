"""What is timed: cases, inputs, and the sparsegat backends' callables.

A :class:`Case` fixes everything but the backend: graph, heads, feature sizes,
score, dtype and operation. Inputs are drawn once per case on the host from the
seed, so every backend (and PyG) sees the same numbers; each backend then gets
its own copy of the graph (so cached structures, such as the transposed graph
built by the first backward call, are paid by every backend in its first call)
and of the arrays on its device.

Operations:

``forward``
    ``attention_forward(g, q, k, v, score=...)``.
``backward``
    ``attention_backward(ctx, dout)`` on a context made once by an untimed forward.
``layer``
    One training step of a GAT layer: forward of
    ``sparsegat.nn.GATConv(in_dim, Dv, heads=H, backend=...)`` with
    ``training=True`` (self-loops added by the layer, cached on the graph after
    the first call) and its ``backward(dy)`` (parameter gradients and ``dx``).
    ``x`` has ``n_src`` rows; on a non-square graph the first ``n_dst`` are the
    destinations (needs ``n_dst <= n_src``). Score and ``D`` do not apply to the layer.

Every runner (:class:`SparsegatRunner`, :class:`~sparsegat.bench.pyg.PygRunner`,
:class:`~sparsegat.bench.torch_runner.TorchRunner`,
:class:`~sparsegat.bench.jax_runner.JaxRunner`) has ``name``, ``device`` and
``implementation(op)`` (recorded with each result), ``prepare(case, bg, inputs)``,
which returns a zero-argument callable doing ``case.op`` once (waiting for its result)
or raises :class:`Skip`, and ``clock_and_probes(memory)``, which returns the clock and
the host and GPU memory probes (or None) of :func:`sparsegat.bench.timing.measure`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..backends import get_backend, is_available
from ..graph import CSRGraph
from .graphs import BenchGraph

OPS = ("forward", "backward", "layer")
SPARSEGAT_BACKENDS = ("numpy", "numba", "cupy")
NEGATIVE_SLOPE = 0.2


class Skip(Exception):
    """This backend cannot run this case; the message says why (reported, not an error)."""


@dataclass(frozen=True)
class Case:
    """Everything but the backend. ``d`` is None for ``additive`` and the layer."""

    graph_index: int
    op: str
    heads: int
    d: int | None
    dv: int
    score: str
    dtype: str
    in_dim: int | None = None

    def key(self) -> tuple:
        return (self.graph_index, self.op, self.heads, self.d, self.dv, self.score, self.dtype, self.in_dim)

    def config(self) -> dict[str, Any]:
        return {"op": self.op, "heads": self.heads, "d": self.d, "dv": self.dv, "score": self.score,
                "dtype": self.dtype, "in_dim": self.in_dim}

    def label(self) -> str:
        dt = {"float32": "f32", "float64": "f64"}.get(self.dtype, self.dtype)
        if self.op == "layer":
            return f"H{self.heads} in{self.in_dim} out{self.dv} gat {dt}"
        d = "" if self.d is None else f" D{self.d}"
        return f"H{self.heads}{d} Dv{self.dv} {self.score} {dt}"


# ---------------------------------------------------------------------------- inputs


@dataclass
class HostInputs:
    """Host (NumPy) inputs of one case, shared by all backends."""

    q: np.ndarray | None = None
    k: np.ndarray | None = None
    v: np.ndarray | None = None
    att: np.ndarray | None = None
    dout: np.ndarray | None = None
    x: np.ndarray | None = None
    dy: np.ndarray | None = None


def make_inputs(case: Case, g: CSRGraph, seed: int) -> HostInputs:
    """Random inputs of ``case`` on ``g`` (standard normal, scaled to keep scores moderate)."""
    rng = np.random.default_rng([seed, case.heads, case.d or 0, case.dv, case.in_dim or 0])
    dtype = np.dtype(case.dtype)
    n_dst, n_src = g.shape
    H, Dv = case.heads, case.dv

    def normal(*shape: int, scale: float = 1.0) -> np.ndarray:
        a = rng.standard_normal(shape, dtype=np.float64 if dtype == np.float64 else np.float32)
        if scale != 1.0:
            a *= scale
        return a.astype(dtype, copy=False)

    if case.op == "layer":
        return HostInputs(x=normal(n_src, case.in_dim), dy=normal(n_dst, H * Dv))
    if case.score == "additive":
        q, k = normal(n_dst, H), normal(n_src, H)
    else:
        s = 1.0 / np.sqrt(np.sqrt(case.d))
        q, k = normal(n_dst, H, case.d, scale=s), normal(n_src, H, case.d, scale=s)
    att = normal(H, case.d, scale=1.0 / np.sqrt(case.d)) if case.score == "gatv2" else None
    return HostInputs(q=q, k=k, v=normal(n_src, H, Dv), att=att, dout=normal(n_dst, H, Dv))


def fresh_graph(g: CSRGraph) -> CSRGraph:
    """A new graph object with the same structure and no cached derived structures."""
    return CSRGraph(np.array(g.indptr), np.array(g.indices), g.shape)


# ---------------------------------------------------------------------------- availability


def error_line(exc: BaseException) -> str:
    """``'Type: first line of the message'``: an exception in one line."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def default_cpu_backend() -> str:
    """The backend that runs sparsegat's kernels for host arrays here (numba, else numpy), as the
    adapters (:mod:`sparsegat.torch`, :mod:`sparsegat.jax`) pick it by default."""
    from ..backends import select_backend

    try:
        return select_backend("numpy")
    except Exception as exc:  # e.g. $SPARSEGAT_BACKEND names a GPU backend: the calls will say so
        return f"? ({error_line(exc)})"


def sparsegat_backend_status(name: str) -> str | None:
    """None when sparsegat backend ``name`` can run here, else the reason it cannot."""
    try:
        if not is_available(name):
            return "its package is not installed"
        get_backend(name)
        if name == "cupy":
            import cupy

            if cupy.cuda.runtime.getDeviceCount() < 1:
                return "no CUDA GPU is visible"
    except Exception as exc:  # any import-time failure just means: not usable here
        text = str(exc).strip().splitlines()
        return f"cannot be loaded ({type(exc).__name__}: {text[0] if text else ''})"
    return None


# ---------------------------------------------------------------------------- sparsegat runner


class SparsegatRunner:
    """Prepares and returns the timed callables of one sparsegat backend."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.device = "cuda" if name == "cupy" else "cpu"
        self.kind = "cupy" if name == "cupy" else "numpy"

    def implementation(self, op: str) -> str:
        if op == "layer":
            return "sparsegat.nn.GATConv"
        return f"sparsegat.attention_{op}"

    def _move(self, a: np.ndarray | None) -> Any:
        if a is None or self.kind == "numpy":
            return a
        import cupy

        return cupy.asarray(a)

    def prepare(self, case: Case, bg: BenchGraph, inputs: HostInputs) -> Callable[[], Any]:
        """Return a zero-argument callable that runs ``case.op`` once on this backend."""
        from .. import attention_backward, attention_forward

        g = fresh_graph(bg.graph).to(self.kind)
        name = self.name
        if case.op == "layer":
            return self._layer(case, g, inputs)
        q, k, v, att, dout = (self._move(a) for a in (inputs.q, inputs.k, inputs.v, inputs.att, inputs.dout))
        kwargs = {"score": case.score, "att": att, "backend": name}
        if case.op == "forward":
            return lambda: attention_forward(g, q, k, v, **kwargs)
        _, ctx = attention_forward(g, q, k, v, **kwargs)
        return lambda: attention_backward(ctx, dout)

    def _layer(self, case: Case, g: CSRGraph, inputs: HostInputs) -> Callable[[], Any]:
        from ..nn import GATConv

        if g.n_dst > g.n_src:
            raise Skip(f"the layer step needs n_dst <= n_src, this graph is {g.shape[0]}x{g.shape[1]}")
        x, dy = self._move(inputs.x), self._move(inputs.dy)
        layer = GATConv(case.in_dim, case.dv, heads=case.heads, dtype=np.dtype(case.dtype), seed=0,
                        backend=self.name)
        if self.kind == "cupy":
            layer.to("cupy")

        def step() -> Any:
            y = layer.forward(x, g, training=True)
            return y, layer.backward(dy)

        return step

    def clock_and_probes(self, memory: bool) -> tuple[Any, Any, Any]:
        from .timing import CpuClock, CupyClock, CupyMemoryProbe, HostMemoryProbe

        if self.kind == "cupy":
            return CupyClock(), None, (CupyMemoryProbe() if memory else None)
        return CpuClock(), (HostMemoryProbe() if memory else None), None
