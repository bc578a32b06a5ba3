"""sparsegat's JAX adapter (:mod:`sparsegat.jax`) and the same work in pure JAX, on the CPU.

Backends ``jax`` and ``jax-pure``, used only when JAX can be imported (``jax`` also
needs :mod:`sparsegat.jax`); JAX is imported only when one of them is selected.
Arrays are put on JAX's CPU device; every computation is :func:`jax.jit`-compiled
(the compilation is part of the first call), and every timed call waits for its
result (``block_until_ready``).

``jax``
    :func:`sparsegat.jax.attention` (sparsegat's kernels on XLA's buffers, the default
    CPU backend's: Numba when installed) and, for the layer,
    :func:`sparsegat.jax.gat_conv.apply`.
``jax-pure``
    The same operator and layer in JAX primitives: gathers and
    ``jax.ops.segment_max``/``segment_sum``
    (:func:`sparsegat.bench.jaxref.pure_attention`, :func:`~sparsegat.bench.jaxref.pure_gat_conv`),
    differentiated by JAX. The graph's ``rows``/``cols`` are arguments of the
    compiled functions, not constants.

``forward``
    The jitted operator ``attention(q, k, v)`` (inference-style: JAX records nothing
    for a backward outside a transformation).
``backward``
    The backward alone, as for the other backends: ``jax.vjp`` of the jitted forward,
    taken once untimed, then the jitted VJP applied to ``dout`` (the gradient of
    ``sum(out * dout)`` with respect to ``q``, ``k``, ``v`` and ``att``; the same as
    :func:`jax.grad` gives), its residuals passed as arguments.
``layer``
    One jitted training step: ``jax.vjp`` of ``apply(params, x)`` with
    ``training=True`` (no dropout; self-loops added by PyG's rule, the looped graph
    built in the first call and cached on the graph), applied to ``dy``: ``y`` and the
    gradients of the parameters and ``x``. Parameters: PyG's initialisation
    (:func:`sparsegat.bench.jaxref.gat_params`, seed 0), the same for both. Square
    graphs only (``gat_conv.apply`` takes one node set).

float64 cases need 64-bit JAX: ``sparsegat bench`` turns ``jax_enable_x64`` on for
the whole run (:func:`enable_x64`) when ``--dtype`` has float64; float32 arrays stay
float32.
"""

from __future__ import annotations

import importlib.util
from typing import Any, Callable

import numpy as np

from .graphs import BenchGraph
from .runners import NEGATIVE_SLOPE, Case, HostInputs, Skip, default_cpu_backend, error_line, fresh_graph

JAX_NAMES = ("jax", "jax-pure")


def jax_status(name: str) -> str | None:
    """None when backend ``name`` (``jax`` or ``jax-pure``) can run here, else the reason it cannot."""
    if importlib.util.find_spec("jax") is None:
        return "jax is not installed"
    try:
        import jax

        if name == "jax":
            import sparsegat.jax  # noqa: F401
        jax.devices("cpu")
    except Exception as exc:  # a broken install is "not available", not a crash
        what = "sparsegat.jax" if name == "jax" else "jax"
        return f"cannot use {what} on the CPU ({error_line(exc)})"
    return None


def enable_x64() -> bool:
    """Turn on ``jax_enable_x64`` (for float64 cases); True when it was off."""
    import jax

    if jax.config.jax_enable_x64:
        return False
    jax.config.update("jax_enable_x64", True)
    return True


class JaxRunner:
    """Prepares and returns the timed callables of ``jax`` or ``jax-pure`` on JAX's CPU device."""

    def __init__(self, name: str) -> None:
        import jax

        if name not in JAX_NAMES:
            raise ValueError(f"unknown JAX backend {name!r}")
        self.name = name
        self.device = "cpu"
        self.pure = name == "jax-pure"
        self.kernel_backend = None if self.pure else default_cpu_backend()
        self._jax = jax
        self._cpu = jax.devices("cpu")[0]

    def implementation(self, op: str) -> str:
        if self.pure:
            what = "pure JAX GATConv" if op == "layer" else "pure JAX: gathers + segment_max/segment_sum"
        else:
            what = (f"sparsegat.jax.gat_conv.apply ({self.kernel_backend} kernels)" if op == "layer"
                    else f"sparsegat.jax.attention ({self.kernel_backend} kernels)")
        how = {"forward": "jax.jit", "backward": "jitted jax.vjp backward",
               "layer": "jitted forward + jax.vjp"}.get(op, "jax.jit")
        return f"{what}, {how}"

    def _put(self, a: np.ndarray | None) -> Any:
        return None if a is None else self._jax.device_put(np.ascontiguousarray(a), self._cpu)

    def prepare(self, case: Case, bg: BenchGraph, inputs: HostInputs) -> Callable[[], Any]:
        """Return a zero-argument callable that runs ``case.op`` once and waits for it."""
        jax = self._jax
        if case.dtype == "float64" and not jax.config.jax_enable_x64:
            raise Skip("float64 needs jax_enable_x64 (set JAX_ENABLE_X64=1)")
        g = fresh_graph(bg.graph)
        if case.op == "layer":
            return self._layer(case, g, inputs)
        op, graph_args = self._operator(case, g)
        q, k, v, att, dout = (self._put(a) for a in (inputs.q, inputs.k, inputs.v, inputs.att, inputs.dout))
        wrt = [a for a in (q, k, v, att) if a is not None]
        forward = jax.jit(op)
        if case.op == "forward":
            return lambda: jax.block_until_ready(forward(wrt, graph_args))
        _, vjp_fn = jax.vjp(lambda *w: forward(list(w), graph_args), *wrt)
        backward = jax.jit(lambda fn, ct: fn(ct))
        return lambda: jax.block_until_ready(backward(vjp_fn, dout))

    def _operator(self, case: Case, g: Any) -> tuple[Callable[[list[Any], tuple], Any], tuple]:
        """``(op, graph_args)``: ``op(wrt, graph_args)`` computes ``out`` from ``wrt = [q, k, v(, att)]``."""
        score = case.score
        if self.pure:
            from .jaxref import edge_arrays, pure_attention

            n_dst = g.n_dst

            def op(wrt: list[Any], graph: tuple) -> Any:
                q, k, v, att = (list(wrt) + [None])[:4]
                return pure_attention(q, k, v, *graph, n_dst, score, att, negative_slope=NEGATIVE_SLOPE)

            return op, edge_arrays(g, self._cpu)
        import sparsegat.jax as sj

        def op(wrt: list[Any], graph: tuple) -> Any:  # the graph is static: closed over
            q, k, v, att = (list(wrt) + [None])[:4]
            return sj.attention(g, q, k, v, score=score, att=att, negative_slope=NEGATIVE_SLOPE)

        return op, ()

    def _layer(self, case: Case, g: Any, inputs: HostInputs) -> Callable[[], Any]:
        jax = self._jax
        from .jaxref import gat_params

        if g.n_dst != g.n_src:
            raise Skip(f"the JAX GAT layer takes square graphs (gat_conv.apply), this graph is {g.n_dst}x{g.n_src}")
        params = {k: self._put(a) for k, a in gat_params(case.in_dim, case.dv, case.heads, case.dtype).items()}
        x, dy = self._put(inputs.x), self._put(inputs.dy)
        if self.pure:
            from ..nn import graph_with_self_loops
            from .jaxref import edge_arrays, pure_gat_conv

            n = g.n_dst
            graph_args = edge_arrays(graph_with_self_loops(g), self._cpu)

            def layer(p: Any, xx: Any, graph: tuple) -> Any:
                return pure_gat_conv(p, xx, *graph, n, negative_slope=NEGATIVE_SLOPE)
        else:
            from sparsegat.jax import gat_conv

            graph_args = ()

            def layer(p: Any, xx: Any, graph: tuple) -> Any:  # the graph is static: closed over
                return gat_conv.apply(p, xx, g, negative_slope=NEGATIVE_SLOPE, training=True)

        def train_step(p: Any, xx: Any, ct: Any, graph: tuple) -> Any:
            y, vjp_fn = jax.vjp(lambda p_, x_: layer(p_, x_, graph), p, xx)
            return y, vjp_fn(ct)

        step = jax.jit(train_step)
        return lambda: jax.block_until_ready(step(params, x, dy, graph_args))

    def clock_and_probes(self, memory: bool) -> tuple[Any, Any, Any]:
        from .timing import CpuClock, HostMemoryProbe

        return CpuClock(), (HostMemoryProbe() if memory else None), None
