"""``sparsegat.jax.attention``: the attention operator as a differentiable JAX function."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..arrays import namespace
from ..attention import _check_inputs, _check_options_fit, _make_spec  # the core's checks, run once at trace time
from ..backends import BACKEND_NAMES
from ..spec import TAU_SCORES
from ._callbacks import Op
from ._graph import GraphKey, as_graph
from ._ops import attention_op

_U32 = np.dtype(np.uint32)


def attention(g: Any, q: Any, k: Any, v: Any, score: str = "dot", att: Any = None, tau: Any = 1.0,
              negative_slope: float = 0.2, edge_bias: Any = None, dropout: float = 0.0, seed: Any = None, *,
              backend: str | None = None, check_finite: bool | None = None) -> jax.Array:
    """Sparse graph attention on JAX arrays, differentiable with respect to every array input.

    The operator of :func:`sparsegat.attention_forward` (same arguments, shapes and
    semantics) as a :func:`jax.custom_vjp` whose backward is sparsegat's hand-written
    one. It works eagerly and under :func:`jax.jit`, :func:`jax.grad`,
    :func:`jax.value_and_grad`, :func:`jax.lax.scan` and :func:`jax.vmap` (a batched call
    runs the kernels once per batch element). The kernels read XLA's buffers in place
    (:func:`jax.experimental.buffer_callback`); see ``docs/jax.md``.

    Parameters
    ----------
    g : CSRGraph
        The graph, a static value: close over it (or pass it as a static argument of
        :func:`jax.jit`); it is never traced. A host graph serves CPU and GPU arrays
        alike (it is copied to a GPU once, and cached).
    q, k, v : jax.Array
        float32 or float64 (float64 needs ``jax_enable_x64``); shapes as in
        :func:`sparsegat.attention_forward`. NumPy arrays are converted with
        :func:`jax.numpy.asarray`.
    score : str
        One of :data:`sparsegat.SCORES`.
    att : jax.Array, optional
        ``(H, D)`` attention vector of ``gatv2`` (required there, refused elsewhere).
    tau : float or jax.Array
        Temperature of ``cosine`` and ``euclidean``: a number (a compile-time constant)
        or a one-element floating array, which may be traced and gets a gradient.
    negative_slope : float
        LeakyReLU slope of ``additive`` and ``gatv2`` (a compile-time constant).
    edge_bias : jax.Array, optional
        ``(nnz, H)`` score bias in CSR order.
    dropout : float
        Attention dropout probability in ``[0, 1)`` (a compile-time constant).
    seed : int, integer array or PRNG key
        Dropout seed, required when ``dropout > 0``: a Python integer in
        ``[0, 2**64)``; a one-element integer array (its bits: a 32-bit one gives the
        seeds below ``2**32``, an int64 one all 64 bits), which may be traced, so that a
        jitted step draws a new mask every step; or a JAX PRNG key (``jax.random.key``
        or a legacy ``uint32[2]`` key), from which 64 bits are drawn. Forward and
        backward use the same seed; the same integer gives the same mask as the core.
    backend : {"numpy", "numba", "cupy"}, optional
        As in the core; by default Numba (else NumPy) for CPU arrays, CUDA kernels on a GPU.
    check_finite : bool, optional
        As in the core: refuse NaN/inf inputs and gradients of the output. Those values
        are only known when the computation runs, so this error comes from inside the
        callback (a ``jax.errors.JaxRuntimeError`` carrying the core's message). By
        default (None) on the CPU only: on a GPU the check would synchronise XLA's
        stream, and an error raised inside a GPU callback is not reliably reported, so
        there NaN/inf propagate as in the rest of JAX (``jax_debug_nans`` finds them);
        any other failure of a GPU callback is logged (logger ``sparsegat.jax``) and
        its results are NaN.

    Returns
    -------
    jax.Array
        ``out`` of shape ``(n_dst, H, Dv)``.

    Raises
    ------
    TypeError
        When tracing: ``g`` not a CSRGraph, arrays of another dtype than float32/float64
        or of mixed dtypes, a traced ``dropout`` or ``negative_slope``, a seed that is
        neither an integer nor a key.
    ValueError
        When tracing: wrong shapes and options (the core's messages), ``dropout > 0``
        without a seed, a traced ``tau`` with a score that has none.
    """
    graph = as_graph(g)
    arrays = {"q": _array("q", q), "k": _array("k", k), "v": _array("v", v),
              "att": None if att is None else _array("att", att),
              "edge_bias": None if edge_bias is None else _array("edge_bias", edge_bias)}
    negative_slope = _static("negative_slope", negative_slope)
    dropout = _static("dropout", dropout)
    tau_array, tau_value = _tau(tau, score)
    seed_words, seed_value = _seed(seed)
    spec = _make_spec(score, tau_value, negative_slope, dropout, seed_value)  # the core's option checks
    if spec.dropout > 0.0 and seed_words is None:
        raise ValueError("dropout > 0 needs a seed (JAX has no global random state): pass seed= a Python "
                         "integer, an integer array (which may be traced) or a PRNG key such as "
                         "jax.random.key(0), so that a jitted step can draw a new mask every step")
    _, dtype, _ = _check_inputs(graph, {n: None if a is None else _standin(graph, a) for n, a in arrays.items()},
                                spec.score, ("q", "k", "v"))  # the core's array checks, on stand-ins
    _check_options_fit(spec, dtype)
    if backend is not None and (not isinstance(backend, str) or backend not in BACKEND_NAMES):
        raise ValueError(f"backend must be None or one of {', '.join(BACKEND_NAMES)}; got {backend!r}")
    op = Op(GraphKey(graph), spec.score, None if tau_array is not None else spec.tau, spec.negative_slope,
            spec.dropout, backend, None if check_finite is None else bool(check_finite))
    return attention_op(op, arrays["q"], arrays["k"], arrays["v"], arrays["att"], tau_array,
                        arrays["edge_bias"], seed_words if spec.dropout > 0.0 else None)


# ---------------------------------------------------------------------- arguments
def _array(name: str, x: Any) -> jax.Array:
    """``x`` as a JAX array (tracers and arrays as they are; NumPy arrays and lists converted)."""
    if x is None:
        raise TypeError(f"{name} must be a JAX array, got None")
    if isinstance(x, jax.Array):
        return x
    if isinstance(x, (str, bytes)):
        raise TypeError(f"{name} must be a JAX array, got {type(x).__name__}")
    try:
        return jnp.asarray(x)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be a JAX array or convertible to one; {type(x).__name__} is not: {exc}") from None


def _standin(graph: Any, a: jax.Array) -> Any:
    """A NumPy (or CuPy, for a GPU graph) array of ``a``'s shape and dtype that holds no memory
    (a broadcast zero), on which the core's shape and dtype checks run when tracing."""
    xp = namespace(graph.device)
    return xp.broadcast_to(xp.zeros((), dtype=np.dtype(a.dtype)), tuple(a.shape))


def _is_traced(x: Any) -> bool:
    return isinstance(x, jax.core.Tracer)


def _static(name: str, x: Any) -> Any:
    """A compile-time option: refuse traced values (the kernels are built for its value)."""
    if _is_traced(x):
        raise TypeError(f"{name} must be a number known when tracing (it is a compile-time constant of the "
                        f"operator), got a traced value; pass a Python float")
    return x


def _tau(tau: Any, score: Any) -> tuple[jax.Array | None, Any]:
    """``(tau_array, tau_value)``: a JAX array tau is an operand (0-d) and gets a gradient;
    anything else is a constant checked by the core (``tau_value``)."""
    if not isinstance(tau, jax.Array):
        return None, tau
    dtype = np.dtype(tau.dtype)
    if dtype.kind != "f" or tau.size != 1:
        raise TypeError(f"tau must be a real number or a one-element floating array, got an array of dtype "
                        f"{dtype} and shape {tuple(tau.shape)}")
    if score not in TAU_SCORES:
        raise ValueError(f"tau applies only to the scores {', '.join(TAU_SCORES)}; got a tau array with "
                         f"score={score!r} (pass no tau)")
    return tau, 1.0  # the value is checked when the computation runs (finite, by the core)


def _seed(seed: Any) -> tuple[jax.Array | None, Any]:
    """``(words, value)``: the seed as a ``uint32[2]`` array ``(hi, lo)`` (None without dropout),
    and what the core's option check sees (the integer, or None for an array seed)."""
    if seed is None or isinstance(seed, (bool, np.bool_)):
        return None, seed  # the core refuses booleans with its message
    if isinstance(seed, (int, np.integer)):
        value = int(seed)
        if not 0 <= value < 2**64:
            return None, value  # the core names the range
        return jnp.asarray(np.array([value >> 32, value & 0xFFFFFFFF], dtype=_U32)), value
    if isinstance(seed, np.ndarray):
        seed = jnp.asarray(seed)
    if not isinstance(seed, jax.Array):
        raise TypeError(f"seed must be None, an integer, an integer array or a JAX PRNG key, got {seed!r}")
    dtype = seed.dtype
    if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        if seed.shape != ():
            raise TypeError(f"a PRNG key seed must be a single key, got keys of shape {tuple(seed.shape)}")
        return jax.random.bits(seed, (2,), jnp.uint32), 0
    dtype = np.dtype(dtype)
    if dtype == _U32 and tuple(seed.shape) == (2,):  # a legacy key, jax.random.PRNGKey(...)
        return jax.random.bits(seed, (2,), jnp.uint32), 0
    if dtype.kind not in "iu" or seed.size != 1:
        raise TypeError(f"a seed array must be a one-element integer array or a PRNG key, got an array of "
                        f"dtype {dtype} and shape {tuple(seed.shape)}")
    s = seed.reshape(())
    if dtype.itemsize == 8:
        bits = jax.lax.bitcast_convert_type(s, jnp.uint64)
        hi = jax.lax.shift_right_logical(bits, jnp.uint64(32)).astype(jnp.uint32)
        lo = (bits & jnp.uint64(0xFFFFFFFF)).astype(jnp.uint32)
    else:  # 8 to 32 bits: the 32-bit two's complement pattern
        hi = jnp.zeros((), jnp.uint32)
        lo = jax.lax.bitcast_convert_type(s.astype(jnp.int32 if dtype.kind == "i" else jnp.uint32), jnp.uint32)
    return jnp.stack([hi, lo]), 0
