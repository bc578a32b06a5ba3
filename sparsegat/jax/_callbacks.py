"""The forward and backward passes as XLA callbacks that run the core's public functions.

Each pass is staged out as one callback with static result shapes:

- forward: ``(out, stats, layout)``, where ``stats`` is the backend's two per-row softmax
  statistics stacked as ``(2, n_dst, H)`` (the row maximum and the log-denominator on
  NumPy and CUDA, the row maximum and the inverse denominator on Numba) and ``layout`` an
  int32 scalar naming the backend and the keys of those statistics, so that the
  backward hands them back to the backend that saved them, under its own keys;
- backward: ``(dq, dk, dv, datt, dtau, dedge_bias)``, the last three None where the
  input was not given (``dtau`` a 0-d array of the inputs' dtype).

**Routes.** On the CPU, CUDA and ROCm the callbacks are
:func:`jax.experimental.buffer_callback`\\ s: the core reads XLA's operand buffers in
place (NumPy views on the host, CuPy views on a GPU, launched on XLA's stream) and write
``out`` and the gradients into XLA's result buffers (``out=`` of the core: the Numba
kernels directly, the other backends by one copy; the small softmax statistics are
copied). Elsewhere (another platform, a GPU without
CuPy, or a JAX without ``buffer_callback``) they are :func:`jax.pure_callback`\\ s: JAX
copies the operands to the host and the results back, and the host backends run. The
choice is made per platform with :func:`jax.lax.platform_dependent`, so one traced
function lowers correctly for whichever device it is compiled for.

Both routes call :func:`sparsegat.attention_forward` and
:func:`sparsegat.attention_backward`, which validate the arrays and apply the NaN/inf
rule; host calls are serialised by a lock (XLA may run independent callbacks on several
threads at once, and Numba's parallel kernels must not be entered concurrently).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import threading
from dataclasses import dataclass
from typing import Any, Iterator

import jax
import numpy as np

from ..attention import _make_spec  # the one place a spec is made: backward rebuilds the forward's
from ..attention import attention_backward as core_backward
from ..attention import attention_forward as core_forward
from ..backends import BACKEND_NAMES
from ..spec import ROW_INV_DENOM, ROW_LOG_DENOM, ROW_MAX, AttentionContext
from . import _buffers
from ._graph import GraphKey, graph_on

try:  # jax >= 0.6.2; experimental, so its absence is survivable
    from jax.experimental.buffer_callback import buffer_callback
except ImportError:  # pragma: no cover - depends on the installed JAX
    buffer_callback = None

#: The statistic keys a backend may save; :func:`layout_code` numbers them by position here.
_STAT_KEYS = (ROW_MAX, ROW_LOG_DENOM, ROW_INV_DENOM)
#: Where GPU callback errors are reported (see :func:`_contained`).
_LOG = logging.getLogger("sparsegat.jax")
#: Host calls one at a time (see the module docstring).
_HOST_LOCK = threading.Lock()
#: "buffer", "pure" or None (per platform): which route new traces take (tests use :func:`forced_route`).
_FORCED: str | None = None


@dataclass(frozen=True)
class Op:
    """The static options of one operator call (hashable: ``jax.custom_vjp``'s non-differentiable argument).

    ``tau`` is the temperature when it is a constant, None when it is a traced operand.
    """

    graph: GraphKey
    score: str
    tau: float | None
    negative_slope: float
    dropout: float
    backend: str | None
    check_finite: bool | None


# ---------------------------------------------------------------------- layout of the statistics
def layout_code(backend: str, keys: tuple) -> int:
    """The backend and the keys of its two statistics as one integer."""
    if len(keys) != 2 or not set(keys) <= set(_STAT_KEYS):
        raise RuntimeError(f"backend {backend!r} saved the statistics {keys}; the operator carries two "
                           f"of {_STAT_KEYS}")
    n = len(_STAT_KEYS)
    return (BACKEND_NAMES.index(backend) * n + _STAT_KEYS.index(keys[0])) * n + _STAT_KEYS.index(keys[1])


def layout(code: int) -> tuple[str, tuple[str, str]]:
    """``(backend, keys)`` of :func:`layout_code` (ValueError for a code it never makes, such
    as the -1 of a failed GPU forward)."""
    n = len(_STAT_KEYS)
    if not 0 <= code < len(BACKEND_NAMES) * n * n:
        raise ValueError(f"no forward pass produced the statistics layout {code} (did it fail?)")
    return BACKEND_NAMES[code // (n * n)], (_STAT_KEYS[code // n % n], _STAT_KEYS[code % n])


# ---------------------------------------------------------------------- the core calls
def _options(op: Op, tau: Any, seed: Any) -> tuple[float, int | None]:
    """``(tau, seed)`` as numbers: the traced temperature and the seed's two 32-bit words read."""
    tau_value = op.tau if tau is None else float(_buffers.to_host(tau).reshape(()))
    if seed is None:
        return tau_value, None
    hi, lo = (int(w) for w in _buffers.to_host(seed).reshape(2))
    return tau_value, (hi << 32) | lo


def checks_finite(op: Op, kind: str) -> bool:
    """The core's ``check_finite`` for arrays of ``kind``: the user's choice, else on the host only."""
    return op.check_finite if op.check_finite is not None else kind == "numpy"


def run_forward(op: Op, kind: str, device_id: int | None, q: Any, k: Any, v: Any, att: Any, tau: Any,
                edge_bias: Any, seed: Any, out: Any = None) -> tuple[Any, Any, Any, int]:
    """``(out, stat0, stat1, layout code)`` of :func:`sparsegat.attention_forward` on arrays
    of ``kind``, ``out`` written into the given array when there is one."""
    tau_value, seed_value = _options(op, tau, seed)
    g = graph_on(op.graph.graph, kind, device_id)
    out, ctx = core_forward(g, q, k, v, score=op.score, att=att, tau=tau_value,
                            negative_slope=op.negative_slope, edge_bias=edge_bias, dropout=op.dropout,
                            seed=seed_value, backend=op.backend, check_finite=checks_finite(op, kind), out=out)
    keys = tuple(ctx.saved)
    code = layout_code(ctx.backend, keys)
    return out, ctx.saved[keys[0]], ctx.saved[keys[1]], code


def run_backward(op: Op, kind: str, device_id: int | None, q: Any, k: Any, v: Any, att: Any, tau: Any,
                 edge_bias: Any, seed: Any, out: Any, stats: Any, code: Any, dout: Any,
                 into: dict | None = None) -> tuple:
    """``(dq, dk, dv, datt, dtau, dedge_bias)`` of :func:`sparsegat.attention_backward` (None
    where not given), written into the arrays of ``into`` (gradient name -> array) where given."""
    tau_value, seed_value = _options(op, tau, seed)
    backend, keys = layout(int(_buffers.to_host(code).reshape(())))
    g = graph_on(op.graph.graph, kind, device_id)
    spec = _make_spec(op.score, tau_value, op.negative_slope, op.dropout, seed_value)
    ctx = AttentionContext(g, q, k, v, att, edge_bias, spec, backend, out, {keys[0]: stats[0], keys[1]: stats[1]})
    grads = core_backward(ctx, dout, check_finite=checks_finite(op, kind), out=into)
    dtau = None
    if tau is not None:  # a traced tau: only for the scores that have one (checked when tracing)
        dtau = grads.tau
    return (grads.q, grads.k, grads.v, grads.att if att is not None else None, dtau,
            grads.edge_bias if edge_bias is not None else None)


# ---------------------------------------------------------------------- the two routes
@contextlib.contextmanager
def _host_lock(kind: str) -> Iterator[None]:
    if kind == "numpy":
        with _HOST_LOCK:
            yield
    else:
        yield


#: The names of the backward callback's results, in order (the core's gradient names).
_GRADIENT_NAMES = ("q", "k", "v", "att", "tau", "edge_bias")


def _forward_buffers(op: Op, ctx: Any, outs: tuple, q: Any, k: Any, v: Any, att: Any, tau: Any,
                     edge_bias: Any, seed: Any) -> None:
    with _buffers.views(ctx, q) as (kind, device_id, view), _host_lock(kind), _contained(kind, outs, view):
        args = [view(a) for a in (q, k, v, att, tau, edge_bias, seed)]
        o_out, o_stats, o_code = (view(o) for o in outs)
        _, stat0, stat1, code = run_forward(op, kind, device_id, *args, out=o_out)  # out written in place
        _buffers.write(o_stats[0], stat0)
        _buffers.write(o_stats[1], stat1)
        _buffers.write(o_code, code)


def _backward_buffers(op: Op, ctx: Any, outs: tuple, *operands: Any) -> None:
    with _buffers.views(ctx, operands[0]) as (kind, device_id, view), _host_lock(kind), \
            _contained(kind, outs, view):
        into = {name: view(o) for name, o in zip(_GRADIENT_NAMES, outs) if o is not None}
        run_backward(op, kind, device_id, *(view(a) for a in operands), into=into)  # written in place


@contextlib.contextmanager
def _contained(kind: str, outs: tuple, view: Any) -> Iterator[None]:
    """On a GPU, an error of the core is logged and the results filled with NaN instead of
    raised: an exception escaping a GPU buffer callback stalled the whole process (JAX
    0.11.2, H200; see ``docs/jax.md``). On the host it propagates (JAX raises it)."""
    if kind == "numpy":
        yield
        return
    try:
        yield
    except Exception:  # noqa: BLE001 - reported, and visible as NaN results
        _LOG.exception("sparsegat.jax: the GPU callback failed; its results are NaN")
        for o in outs:
            if o is not None:
                target = view(o)
                target[...] = np.nan if target.dtype.kind == "f" else -1


def _forward_host(op: Op, *operands: Any) -> tuple:
    args = [None if a is None else np.asarray(a) for a in operands]
    with _HOST_LOCK:
        out, stat0, stat1, code = run_forward(op, "numpy", None, *args)
    return out, np.stack([stat0, stat1]).astype(out.dtype, copy=False), np.asarray(code, dtype=np.int32)


def _backward_host(op: Op, *operands: Any) -> tuple:
    args = [None if a is None else np.asarray(a) for a in operands]
    with _HOST_LOCK:
        return run_backward(op, "numpy", None, *args)


def _gpu_buffers_usable() -> bool:
    return importlib.util.find_spec("cupy") is not None


def _staged(host_fn: Any, buffer_fn: Any, result: Any, operands: tuple) -> Any:
    """The callback for the platform the computation is compiled for (see the module docstring)."""
    def pure(*a: Any) -> Any:
        return jax.pure_callback(host_fn, result, *a, vmap_method="sequential")

    route = _FORCED
    if buffer_callback is None or route == "pure":
        return pure(*operands)

    def buffers(*a: Any) -> Any:
        return buffer_callback(buffer_fn, result, vmap_method="sequential")(*a)

    gpu = buffers if route == "buffer" or _gpu_buffers_usable() else pure
    return jax.lax.platform_dependent(*operands, cpu=buffers, cuda=gpu, rocm=gpu, default=pure)


def forward(op: Op, q: Any, k: Any, v: Any, att: Any, tau: Any, edge_bias: Any, seed: Any) -> tuple:
    """Staged forward pass: ``(out, stats, layout)``."""
    n_dst, heads = q.shape[0], q.shape[1]
    result = (jax.ShapeDtypeStruct((n_dst, heads, v.shape[2]), v.dtype),
              jax.ShapeDtypeStruct((2, n_dst, heads), v.dtype),
              jax.ShapeDtypeStruct((), np.int32))
    operands = (q, k, v, att, tau, edge_bias, seed)
    return _staged(lambda *a: _forward_host(op, *a), lambda ctx, outs, *a: _forward_buffers(op, ctx, outs, *a),
                   result, operands)


def backward(op: Op, q: Any, k: Any, v: Any, att: Any, tau: Any, edge_bias: Any, seed: Any, out: Any,
             stats: Any, code: Any, dout: Any) -> tuple:
    """Staged backward pass: ``(dq, dk, dv, datt, dtau, dedge_bias)``, None where not given."""
    def like(a: Any) -> Any:
        return None if a is None else jax.ShapeDtypeStruct(a.shape, a.dtype)

    result = (like(q), like(k), like(v), like(att),
              None if tau is None else jax.ShapeDtypeStruct((), q.dtype), like(edge_bias))
    operands = (q, k, v, att, tau, edge_bias, seed, out, stats, code, dout)
    return _staged(lambda *a: _backward_host(op, *a), lambda ctx, outs, *a: _backward_buffers(op, ctx, outs, *a),
                   result, operands)


@contextlib.contextmanager
def forced_route(route: str | None) -> Iterator[None]:
    """Trace with ``route`` ("buffer", "pure" or None for the per-platform choice); for tests."""
    global _FORCED
    if route not in (None, "buffer", "pure"):
        raise ValueError(f"route must be None, 'buffer' or 'pure', got {route!r}")
    before, _FORCED = _FORCED, route
    try:
        yield
    finally:
        _FORCED = before
