"""Public attention functions: validate once, pick a backend, call it."""

from __future__ import annotations

import math
import operator
from typing import Any

import numpy as np

from .arrays import array_kind, namespace, to_numpy, write_into
from .backends import array_kind_of, get_backend, select_backend
from .dropout import drop_threshold, mix_seed
from .graph import CSRGraph
from .spec import (ROW_INV_DENOM, ROW_LOG_DENOM, ROW_MAX, SCALAR_SCORES, SCORES, SLOPE_SCORES, TAU_SCORES,
                   AttentionContext, AttentionSpec, Gradients)

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _real(name: str, value: Any) -> float:
    """A finite real number from a Python/NumPy real scalar or a size-1 real array."""
    if isinstance(value, (bool, np.bool_, str, bytes)):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    if hasattr(value, "dtype") and hasattr(value, "shape"):  # NumPy/CuPy arrays and NumPy scalars
        if isinstance(value, np.ma.MaskedArray):
            raise TypeError(f"{name} must be a real number, got a masked array")
        if np.dtype(value.dtype).kind not in "iuf":
            raise TypeError(f"{name} must be a real number, got an array of dtype {value.dtype}")
        if getattr(value, "size", 0) != 1:
            raise TypeError(f"{name} must be a real number, got an array of shape {tuple(value.shape)}")
        value = value.reshape(()).item()
    try:
        out = float(operator.index(value)) if isinstance(value, (int, np.integer)) else float(value)
    except OverflowError:
        shown = repr(value) if len(repr(value)) <= 40 else f"an integer of {len(str(abs(value)))} digits"
        raise ValueError(f"{name} must be finite, got {shown}, beyond the range of a float") from None
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number, got {value!r}") from None
    if not math.isfinite(out):
        raise ValueError(f"{name} must be finite, got {out}")
    return out


def _check_options_fit(spec: AttentionSpec, dtype: np.dtype) -> None:
    """``tau`` and ``negative_slope`` (where the score uses them) must be finite in the inputs' dtype."""
    used = [("tau", spec.tau)] if spec.score in TAU_SCORES else []
    if spec.score in SLOPE_SCORES:
        used.append(("negative_slope", spec.negative_slope))
    for name, value in used:
        with np.errstate(over="ignore"):
            fits = bool(np.isfinite(dtype.type(value)))
        if not fits:
            raise ValueError(f"{name}={value!r} is not finite in the inputs' dtype {dtype} (largest "
                             f"{float(np.finfo(dtype).max):.4g}); use a smaller {name} or float64 inputs")


def _make_spec(score: Any, tau: Any, negative_slope: Any, dropout: Any, seed: Any) -> AttentionSpec:
    if not isinstance(score, str) or score not in SCORES:
        raise ValueError(f"score must be one of {', '.join(SCORES)}; got {score!r}")
    tau = _real("tau", tau)
    if score not in TAU_SCORES and tau != 1.0:
        raise ValueError(f"tau applies only to the scores {', '.join(TAU_SCORES)}; got tau={tau} "
                         f"with score={score!r}")
    negative_slope = _real("negative_slope", negative_slope)
    dropout = _real("dropout", dropout)
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
    if seed is not None:
        if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"seed must be None or an integer, got {seed!r}")
        if not 0 <= int(seed) < 2**64:
            raise ValueError(f"seed must lie in [0, 2**64), got {int(seed)}")
        seed = int(seed)
    if dropout == 0.0:
        return AttentionSpec(score, tau, negative_slope, 0.0, 0, 0, seed)
    if seed is None:
        # No seed: draw one, and keep it in the context so backward drops the same edges.
        seed = int(np.random.default_rng().integers(0, 2**63))
    return AttentionSpec(score, tau, negative_slope, dropout, mix_seed(seed), drop_threshold(dropout), seed)


def _as_array(name: str, a: Any) -> Any:
    """``a`` as a NumPy or CuPy array: arrays as they are, NumPy array-likes (nested lists,
    objects with ``__array__``) converted once with :func:`numpy.asarray`.

    Refused with ``TypeError`` naming the argument: None, scalars and strings, masked arrays
    (their mask would be ignored), and arrays of other GPU libraries (which
    ``numpy.asarray`` would silently copy to the host).
    """
    if a is None:
        raise TypeError(f"{name} must be a NumPy or CuPy array (or a nested list), got None")
    if isinstance(a, np.ma.MaskedArray):
        raise TypeError(f"{name} is a masked array (numpy.ma), whose mask would be ignored; "
                        f"pass {name}.filled(value) or drop the masked entries")
    kind = array_kind(a)
    if kind == "cupy":
        return a
    if kind == "numpy":
        return a if type(a) is np.ndarray else np.asarray(a)  # subclasses (np.matrix, memmap) as plain arrays
    if isinstance(a, (str, bytes, int, float, complex, np.generic)):
        raise TypeError(f"{name} must be a NumPy or CuPy array (or a nested list), got {type(a).__name__}")
    if _on_gpu(a):
        raise TypeError(f"{name} is a {type(a).__module__}.{type(a).__name__} on a GPU; pass a CuPy array "
                        f"(cupy.from_dlpack({name})) or a NumPy array, it is not copied to the host silently")
    try:
        out = np.asarray(a)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be a NumPy or CuPy array, or convertible to one; "
                        f"{type(a).__name__} is not: {exc}") from None
    if out.dtype == object:
        raise TypeError(f"{name} must be a NumPy or CuPy array, or convertible to one of numbers; "
                        f"{type(a).__name__} converts to an array of objects")
    return out


def _on_gpu(a: Any) -> bool:
    """True for an array object of another library that lives in GPU memory (torch, JAX, Numba...)."""
    if hasattr(a, "__cuda_array_interface__"):
        return True
    device = getattr(a, "__dlpack_device__", None)
    if callable(device):
        try:
            return int(device()[0]) != 1  # DLPack's kDLCPU
        except Exception:  # noqa: BLE001 - not a usable DLPack object: let numpy decide
            return False
    return False


def _check_float(name: str, a: Any, ndim: int) -> None:
    if np.dtype(a.dtype) not in FLOAT_DTYPES:
        raise TypeError(f"{name} must have dtype float32 or float64, got {a.dtype}")
    if a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(a.shape)}")


def _check_inputs(g: Any, arrays: dict[str, Any], score: str,
                  required: tuple[str, ...]) -> tuple[str, np.dtype, dict[str, Any]]:
    """Validate the graph and the arrays ``q``, ``k``, ``v``, ``att``, ``edge_bias`` (the
    optional ones None where absent); return (array kind, dtype, the arrays as NumPy/CuPy arrays)."""
    if not isinstance(g, CSRGraph):
        raise TypeError(f"g must be a CSRGraph, got {type(g).__name__}")
    arrays = {n: (None if a is None and n not in required else _as_array(n, a)) for n, a in arrays.items()}
    q, k, v, att, edge_bias = (arrays[n] for n in ("q", "k", "v", "att", "edge_bias"))
    kind = array_kind_of(list(arrays.items()))
    if g.device != kind:
        raise TypeError(f"g is on {g.device!r} but the arrays are {kind} arrays; use g.to({kind!r})")
    scalar = score in SCALAR_SCORES
    _check_float("q", q, 2 if scalar else 3)
    _check_float("k", k, 2 if scalar else 3)
    n_dst, n_src = g.shape
    if q.shape[0] != n_dst:
        raise ValueError(f"q must have n_dst={n_dst} rows, got shape {tuple(q.shape)}")
    if k.shape[0] != n_src:
        raise ValueError(f"k must have n_src={n_src} rows, got shape {tuple(k.shape)}")
    if q.shape[1:] != k.shape[1:]:
        raise ValueError(f"q and k must agree in heads and features, got {tuple(q.shape)} and {tuple(k.shape)}")
    heads = q.shape[1]
    if heads < 1 or (not scalar and q.shape[2] < 1):
        raise ValueError(f"q must have at least one head and one feature, got shape {tuple(q.shape)}")
    dtype = np.dtype(q.dtype)
    named = [("k", k)]
    if v is not None:
        _check_float("v", v, 3)
        if v.shape[0] != n_src or v.shape[1] != heads or v.shape[2] < 1:
            raise ValueError(f"v must have shape (n_src={n_src}, heads={heads}, Dv>=1), got {tuple(v.shape)}")
        named.append(("v", v))
    if score == "gatv2":
        if att is None:
            raise ValueError("score='gatv2' needs att of shape (heads, D)")
        _check_float("att", att, 2)
        if tuple(att.shape) != tuple(q.shape[1:]):
            raise ValueError(f"att must have shape (heads, D)={tuple(q.shape[1:])}, got {tuple(att.shape)}")
        named.append(("att", att))
    elif att is not None:
        raise ValueError(f"att applies only to score='gatv2', got att with score={score!r}")
    if edge_bias is not None:
        _check_float("edge_bias", edge_bias, 2)
        if tuple(edge_bias.shape) != (g.nnz, heads):
            raise ValueError(f"edge_bias must have shape (nnz, heads)=({g.nnz}, {heads}), "
                             f"got {tuple(edge_bias.shape)}")
        named.append(("edge_bias", edge_bias))
    for name, a in named:
        if np.dtype(a.dtype) != dtype:
            raise TypeError(f"mixed dtypes: q is {dtype} but {name} is {a.dtype}")
    return kind, dtype, arrays


def _contiguous(kind: str, arrays: dict[str, Any]) -> dict[str, Any]:
    xp = namespace(kind)
    return {n: None if a is None else xp.ascontiguousarray(a) for n, a in arrays.items()}


# ---------------------------------------------------------------------- out= arrays
def _check_out(name: str, a: Any, shape: tuple, dtype: np.dtype, kind: str, inputs: dict[str, Any]) -> Any:
    """An ``out=`` array checked to fit (None passes): kind, shape, dtype, layout, no overlap."""
    if a is None:
        return None
    if array_kind(a) != kind:
        raise TypeError(f"{name} must be a {kind} array like the inputs, got {type(a).__name__}")
    if tuple(a.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(a.shape)}")
    if np.dtype(a.dtype) != dtype:
        raise TypeError(f"{name} must have dtype {dtype} like the inputs, got {a.dtype}")
    if not a.flags.c_contiguous or (kind == "numpy" and not a.flags.writeable):
        raise ValueError(f"{name} must be a C-contiguous, writeable array")
    xp = namespace(kind)
    for other, x in inputs.items():
        if x is not None and xp.may_share_memory(a, x):
            raise ValueError(f"{name} shares memory with {other}; pass a separate array")
    return a


def _gradient_targets(ctx: AttentionContext, out: Any, kind: str, dout: Any) -> dict[str, Any]:
    """``attention_backward``'s ``out=`` mapping, checked: gradient name -> array."""
    if out is None:
        return {}
    if not isinstance(out, dict):
        raise TypeError(f"out must be a dict of gradient name -> array, got {type(out).__name__}")
    dtype = np.dtype(ctx.out.dtype)
    shapes = {"q": ctx.q.shape, "k": ctx.k.shape, "v": ctx.v.shape}
    if ctx.att is not None:
        shapes["att"] = ctx.att.shape
    if ctx.spec.score in TAU_SCORES:
        shapes["tau"] = ()
    if ctx.edge_bias is not None:
        shapes["edge_bias"] = ctx.edge_bias.shape
    inputs = {"q": ctx.q, "k": ctx.k, "v": ctx.v, "att": ctx.att, "edge_bias": ctx.edge_bias,
              "out of the forward pass": ctx.out, "dout": dout}
    targets: dict[str, Any] = {}
    for name, a in out.items():
        if name not in shapes:
            raise ValueError(f"out has a key {name!r}; this call's gradients are {', '.join(shapes)}")
        targets[name] = _check_out(f"out[{name!r}]", a, shapes[name], dtype, kind, inputs)
    for i, (n1, a1) in enumerate(targets.items()):
        for n2, a2 in list(targets.items())[i + 1:]:
            if namespace(kind).may_share_memory(a1, a2):
                raise ValueError(f"out[{n1!r}] and out[{n2!r}] share memory; pass separate arrays")
    return targets


# ---------------------------------------------------------------------- the NaN/inf rule
def _finite_flags(arrays: list[Any]) -> list[bool]:
    """Whether every entry of each array is finite (``None`` and empty arrays are).

    Two reductions per array (min and max propagate NaN), no temporary of an array's
    size, and one device-to-host transfer for all of them: on a GPU each transfer is a
    synchronisation, so the checks of one call cost one round trip, not two per array.
    """
    present = [a for a in arrays if a is not None and a.size]
    if not present:
        return [True] * len(arrays)
    ends = [e for a in present for e in (a.min(), a.max())]
    host = to_numpy(namespace(present[0]).stack(ends)).reshape(-1, 2)
    ok = iter(np.isfinite(host).all(axis=1).tolist())
    return [True if a is None or not a.size else next(ok) for a in arrays]


def _check_finite_inputs(arrays: dict[str, Any]) -> None:
    """``check_finite=True``: refuse NaN and +-inf in any input, naming the first bad one."""
    for name, ok in zip(arrays, _finite_flags(list(arrays.values()))):
        if not ok:
            raise ValueError(f"{name} contains NaN or infinite values; pass finite {name} (to mask an edge, "
                             f"give it a large negative finite edge_bias such as -1e9, or remove the edge), "
                             f"or check_finite=False to skip this check (results for non-finite inputs "
                             f"are then unspecified)")


def _first_bad(a: Any) -> tuple[int, ...]:
    """Index of the first non-finite entry of ``a`` (only called when there is one)."""
    bad = np.flatnonzero(~np.isfinite(to_numpy(a)))
    return tuple(int(i) for i in np.unravel_index(int(bad[0]), a.shape)) if bad.size else ()


def _remedy(score: str, dtype: np.dtype) -> str:
    fixes = {"dot": ["smaller q and k", "score='scaled_dot'"], "scaled_dot": ["smaller q and k"],
             "cosine": ["a smaller tau"], "euclidean": ["smaller q and k", "a smaller tau"],
             "additive": ["smaller q and k"], "gatv2": ["smaller q, k and att"]}[score]
    fixes.append("a smaller edge_bias")
    if dtype == np.float32:
        fixes.append("float64 inputs")
    return ", ".join(fixes[:-1]) + " or " + fixes[-1]


def _unchecked(check_finite: bool) -> str:
    return "" if check_finite else " (or an input is not finite: check_finite=False skipped that check)"


def _scores_overflowed(spec: AttentionSpec, dtype: np.dtype, stat: Any, check_finite: bool) -> ValueError:
    """The error for a non-finite row maximum or softmax denominator (saved by every
    backend, (n_dst, H) each; 0 for empty rows): a score overflowed (+-inf or NaN)."""
    row, head = _first_bad(stat)
    return ValueError(f"the {spec.score!r} scores of row {row} (head {head}) overflowed {dtype} "
                      f"(a score is inf or NaN although the inputs are finite)"
                      f"{_unchecked(check_finite)}; use {_remedy(spec.score, dtype)}")


def _result_overflowed(name: str, a: Any, spec: AttentionSpec, dtype: np.dtype, check_finite: bool,
                       what: str) -> ValueError:
    """The error for a result that is not finite although the inputs are, naming it."""
    at = _first_bad(a)
    where = f" at index {at}" if at else ""
    return ValueError(f"non-finite value in {name}{where} although the inputs are finite"
                      f"{_unchecked(check_finite)}: {what} overflowed {dtype}; use {_remedy(spec.score, dtype)}")


def _check_results(results: dict[str, Any], spec: AttentionSpec, dtype: np.dtype, check_finite: bool,
                   what: str) -> None:
    """Refuse non-finite results (one transfer for all of them), naming the first."""
    for (name, a), ok in zip(results.items(), _finite_flags(list(results.values()))):
        if not ok:
            raise _result_overflowed(name, a, spec, dtype, check_finite, what)


def _check_forward_result(spec: AttentionSpec, dtype: np.dtype, saved: dict, out: Any, check_finite: bool) -> None:
    """The NaN/inf rule after a forward pass of any backend: its saved row statistics
    (O(n_dst*H)) name the row whose scores overflowed; else a non-finite ``out``
    (O(n_dst*H*Dv)) is refused. One transfer for all the checks."""
    stats = [saved.get(key) for key in (ROW_MAX, ROW_LOG_DENOM, ROW_INV_DENOM)]
    flags = _finite_flags(stats + [out])
    for stat, ok in zip(stats, flags):
        if not ok:
            raise _scores_overflowed(spec, dtype, stat, check_finite)
    if not flags[-1]:
        raise _result_overflowed("out", out, spec, dtype, check_finite,
                                 f"a {spec.score!r} score or the weighted sum of v")


# ---------------------------------------------------------------------- public functions
def attention_forward(g: CSRGraph, q: Any, k: Any, v: Any, score: str = "dot", att: Any = None,
                      tau: float = 1.0, negative_slope: float = 0.2, edge_bias: Any = None,
                      dropout: float = 0.0, seed: int | None = None,
                      backend: str | None = None, check_finite: bool = True, *,
                      out: Any = None) -> tuple[Any, AttentionContext]:
    """Sparse graph attention: per-edge scores, a softmax over each row, aggregation of values.

    Parameters
    ----------
    g : CSRGraph
        Graph of shape ``(n_dst, n_src)``; row ``i`` attends to its columns.
    q : array, shape (n_dst, H, D), or (n_dst, H) for ``score="additive"``
        Queries (destination side). NumPy or CuPy arrays; NumPy array-likes
        (nested lists) are converted with :func:`numpy.asarray`.
    k : array, shape (n_src, H, D), or (n_src, H) for ``score="additive"``
        Keys (source side).
    v : array, shape (n_src, H, Dv)
        Values.
    score : {"dot", "scaled_dot", "cosine", "euclidean", "additive", "gatv2"}
        Score function, see ``docs/math.md``.
    att : array, shape (H, D), optional
        Attention vector of ``gatv2`` (required there, refused elsewhere).
    tau : float
        Temperature of ``cosine`` and ``euclidean``; finite in the inputs' dtype.
    negative_slope : float
        LeakyReLU slope of ``additive`` and ``gatv2``; finite in the inputs' dtype.
    edge_bias : array, shape (nnz, H), optional
        Added to every score, in CSR order.
    dropout : float
        Attention dropout probability in [0, 1).
    seed : int, optional
        Dropout seed; the keep/drop decision is a hash of ``(seed, edge, head)``.
        Drawn at random when dropout is on and no seed is given.
    backend : {"numpy", "numba", "cupy"}, optional
        Overrides dispatch by array type (and ``$SPARSEGAT_BACKEND``).
    check_finite : bool, default True
        Refuse (``ValueError`` naming the argument) ``q``, ``k``, ``v``, ``att`` or
        ``edge_bias`` holding NaN or infinite values. ``False`` skips this check (two
        reductions per input) for speed; results for non-finite inputs are then
        unspecified (possibly NaN, or a ``ValueError``), but never a crash.
    out : array, shape (n_dst, H, Dv), optional
        Where to write the result (as NumPy's ``out=``): C-contiguous, writeable, of the
        inputs' dtype and array type, sharing no memory with an input. The Numba kernels
        write into it directly; the other backends copy their result into it.

    Returns
    -------
    out : array, shape (n_dst, H, Dv)
        Aggregated values; zero for rows without edges (the ``out`` argument when given).
    ctx : AttentionContext
        Everything :func:`attention_backward` needs.

    Raises
    ------
    ValueError
        Also when, for finite inputs, a score overflows the dtype (``inf`` or NaN; the
        message names the score and the row) or ``out`` does: the result is never
        silently non-finite.
    """
    spec = _make_spec(score, tau, negative_slope, dropout, seed)
    kind, dtype, arrays = _check_inputs(g, dict(q=q, k=k, v=v, att=att, edge_bias=edge_bias), spec.score,
                                        ("q", "k", "v"))
    _check_options_fit(spec, dtype)
    name = select_backend(kind, backend)
    arrays = _contiguous(kind, arrays)
    if check_finite:
        _check_finite_inputs(arrays)
    q, k, v, att, edge_bias = (arrays[n] for n in ("q", "k", "v", "att", "edge_bias"))
    out = _check_out("out", out, (g.n_dst, v.shape[1], v.shape[2]), dtype, kind, arrays)
    out, saved = get_backend(name).forward(g, q, k, v, att, edge_bias, spec, out=out)
    _check_forward_result(spec, dtype, saved, out, check_finite)
    return out, AttentionContext(g, q, k, v, att, edge_bias, spec, name, out, saved)


def attention_backward(ctx: AttentionContext, dout: Any, check_finite: bool = True, *,
                       out: dict[str, Any] | None = None) -> Gradients:
    """Gradients of a loss with respect to every input of :func:`attention_forward`.

    Parameters
    ----------
    ctx : AttentionContext
        The context returned by the forward pass.
    dout : array, shape (n_dst, H, Dv)
        Gradient of the loss with respect to ``out`` (a NumPy array-like is converted
        with :func:`numpy.asarray`).
    check_finite : bool, default True
        Refuse a ``dout`` holding NaN or infinite values (``ValueError``). ``False``
        skips the check; results for a non-finite ``dout`` are then unspecified.
    out : dict, optional
        Arrays to write gradients into, keyed by the names of :class:`Gradients`
        (``"q"``, ``"k"``, ``"v"``, ``"att"``, ``"tau"``, ``"edge_bias"``; any subset of
        those the call returns), each with the rules of ``out`` in
        :func:`attention_forward`. The Numba kernels write ``q``, ``k``, ``v`` and
        ``edge_bias`` directly; everything else is copied in.

    Returns
    -------
    Gradients
        ``q``, ``k``, ``v`` always; ``att`` for ``gatv2``; ``tau`` (a 0-d array)
        for ``cosine`` and ``euclidean``; ``edge_bias`` when one was given.
        Deterministic: bitwise identical from run to run on every backend.

    Raises
    ------
    ValueError
        Also when a gradient overflows the dtype for finite inputs (it names the
        gradient): gradients are never silently non-finite.
    """
    if not isinstance(ctx, AttentionContext):
        raise TypeError(f"ctx must be the AttentionContext returned by attention_forward, got {type(ctx).__name__}")
    dout = _as_array("dout", dout)
    kind = array_kind_of([("dout", dout)])
    if kind != ctx.graph.device:
        raise TypeError(f"dout is a {kind} array but the forward pass ran on {ctx.graph.device} arrays")
    if tuple(dout.shape) != tuple(ctx.out.shape):
        raise ValueError(f"dout must have the shape of out, {tuple(ctx.out.shape)}, got {tuple(dout.shape)}")
    if np.dtype(dout.dtype) != np.dtype(ctx.out.dtype):
        raise TypeError(f"dout must have dtype {ctx.out.dtype} like out, got {dout.dtype}")
    dout = _contiguous(kind, {"dout": dout})["dout"]
    if check_finite:
        _check_finite_inputs({"dout": dout})
    targets = _gradient_targets(ctx, out, kind, dout)
    grads = get_backend(ctx.backend).backward(ctx.graph, ctx.q, ctx.k, ctx.v, ctx.att, ctx.edge_bias,
                                              ctx.spec, ctx.out, ctx.saved, dout, into=targets)
    grads = {name: write_into(targets.get(name), grad) for name, grad in grads.items()}
    _check_results({f"the gradient of {name}": grad for name, grad in grads.items()}, ctx.spec,
                   np.dtype(ctx.out.dtype), check_finite,
                   f"a {ctx.spec.score!r} score (or a product with its gradient)")
    return Gradients(**grads)


def attention_weights(g: CSRGraph, q: Any, k: Any, score: str = "dot", att: Any = None,
                      tau: float = 1.0, negative_slope: float = 0.2, edge_bias: Any = None,
                      dropout: float = 0.0, seed: int | None = None,
                      backend: str | None = None, check_finite: bool = True) -> Any:
    """Attention weights ``a_ijh`` of every edge, shape (nnz, H), in CSR order.

    Arguments as in :func:`attention_forward` (``check_finite`` covers ``q``, ``k``,
    ``att`` and ``edge_bias``). With dropout, the weights are those the forward pass
    uses: dropped edges are 0 and kept ones scaled by ``1 / (1 - dropout)``. Non-empty
    rows sum to 1 without dropout. A score that overflows for finite inputs raises
    ``ValueError``, as in the forward pass.
    """
    spec = _make_spec(score, tau, negative_slope, dropout, seed)
    kind, dtype, arrays = _check_inputs(g, dict(q=q, k=k, v=None, att=att, edge_bias=edge_bias),
                                        spec.score, ("q", "k"))
    _check_options_fit(spec, dtype)
    name = select_backend(kind, backend)
    arrays = _contiguous(kind, arrays)
    if check_finite:
        _check_finite_inputs(arrays)
    w = get_backend(name).weights(g, arrays["q"], arrays["k"], arrays["att"], arrays["edge_bias"], spec)
    _check_results({"the weights": w}, spec, dtype, check_finite, f"a {spec.score!r} score")
    return w
