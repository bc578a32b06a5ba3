"""``attention_forward`` / ``attention_backward`` over a partitioned graph, on Dask.

Block ``b`` runs the ordinary backend (numba or numpy on CPU workers, cupy on GPU
workers) on its rows: ``q`` of its rows, ``k`` and ``v`` of its halo (gathered to its
worker), its slice of ``edge_bias``, and the dropout offset of its first edge. ``out``
and ``dq`` (and the ``edge_bias`` gradient) stay partitioned like the blocks; the
``dk``/``dv`` partials are added into the owners' chunks, and ``att``/``tau``, along a
fixed tree over block indices (:mod:`sparsegat.distributed.gather`): the backward is
bitwise repeatable whatever the scheduling.
"""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..arrays import namespace
from ..attention import _check_finite_inputs, _check_forward_result, _check_options_fit, _check_results, _make_spec
from ..backends import BACKEND_NAMES, get_backend, select_backend
from ..spec import SCALAR_SCORES, TAU_SCORES, AttentionSpec, Gradients
from .gather import gather_plan, gather_rows, scatter_sum, tree_sum
from .partition import GraphBlock, PartitionedGraph

__all__ = ["attention_forward", "attention_backward", "DistributedContext", "row_array", "edge_array",
           "block_tasks"]

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


# ---------------------------------------------------------------------- blocks on the cluster
def _scheduler_id() -> Any:
    """The current distributed client's id (None with Dask's local schedulers)."""
    try:
        from distributed import default_client
        return default_client().id
    except (ImportError, ValueError):
        return None


def block_tasks(pg: PartitionedGraph) -> list[Any]:
    """One ``Delayed`` per block, persisted on the cluster once per client.

    A block is a literal of the task graph, so when a worker holding it dies the
    scheduler makes it again from that literal (unlike ``client.scatter``).
    """
    import dask
    from dask import delayed

    client = _scheduler_id()
    state = pg._dask.get("blocks")
    if state is not None and state[0] == client:
        return state[1]
    tasks = [delayed(block, name=f"sparsegat-block-{pg.token}-{block.index}", traverse=False)
             for block in pg.blocks]
    persisted = list(dask.persist(*tasks))
    pg._dask["blocks"] = (client, persisted)
    return persisted


def row_array(pg: PartitionedGraph, x: Any) -> Any:
    """A NumPy/CuPy node array ``(n_dst, ...)`` as a Dask array chunked like the blocks."""
    import dask.array as da

    return da.from_array(x, chunks=(pg.row_chunks,) + tuple(x.shape[1:]), asarray=False)


def edge_array(pg: PartitionedGraph, x: Any) -> Any:
    """A per-edge array ``(nnz, H)`` (CSR order of ``pg.graph``) chunked like the blocks' edges."""
    import dask.array as da

    return da.from_array(x, chunks=(pg.edge_chunks,) + tuple(x.shape[1:]), asarray=False)


# ---------------------------------------------------------------------- validation
def _kind_of(name: str, x: Any) -> str:
    meta = getattr(x, "_meta", None)
    module = type(meta).__module__.split(".")[0]
    if module == "numpy":
        return "numpy"
    if module == "cupy":
        return "cupy"
    raise TypeError(f"{name} must be a Dask array of NumPy or CuPy chunks, got chunks of {type(meta).__name__}")


def _check_dask(name: str, x: Any, pg: PartitionedGraph, ndim: int, rows: int) -> Any:
    """A Dask array of float32/float64 NumPy or CuPy chunks, on the partition's device, with
    ``rows`` rows and ``ndim`` dimensions; its other axes merged into one chunk."""
    import dask.array as da

    if not isinstance(x, da.Array):
        raise TypeError(f"{name} must be a dask.array.Array, got {type(x).__name__} (wrap a NumPy array "
                        f"with sparsegat.distributed.row_array(pg, {name}) or dask.array.from_array)")
    kind = _kind_of(name, x)
    if kind != pg.device:
        raise TypeError(f"{name} has {kind} chunks but the partitioned graph is for {pg.device} workers; "
                        f"use pg.to({kind!r})")
    if np.dtype(x.dtype) not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got {x.dtype}")
    if x.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(x.shape)}")
    if any(np.isnan(s) for s in x.shape):
        raise ValueError(f"{name} has unknown chunk sizes {x.chunks}; call {name}.compute_chunk_sizes() first")
    if x.shape[0] != rows:
        raise ValueError(f"{name} must have {rows} rows, got shape {tuple(x.shape)}")
    if any(len(c) > 1 for c in x.chunks[1:]):
        x = x.rechunk({i: -1 for i in range(1, ndim)})
    return x


def _check_row_chunks(name: str, x: Any, expected: tuple[int, ...], what: str) -> None:
    if tuple(int(c) for c in x.chunks[0]) != tuple(expected):
        shown = tuple(x.chunks[0]) if len(x.chunks[0]) <= 8 else f"{len(x.chunks[0])} chunks"
        want = expected if len(expected) <= 8 else f"{len(expected)} chunks"
        raise ValueError(f"{name} must be chunked like the partition's {what}, {want}, got row chunks {shown}; "
                         f"use {name}.rechunk({{0: pg.{what}}})")


def _row_delayed(x: Any) -> list[Any]:
    return list(x.to_delayed().reshape(-1))


def _small(name: str, a: Any) -> Any:
    """A small parameter array (``att``) as a host or device array (Dask arrays computed)."""
    if a is None:
        return None
    if hasattr(a, "dask"):
        a = a.compute()
    if type(a).__module__.split(".")[0] != "cupy":
        a = np.asarray(a)
    if np.dtype(a.dtype) not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got {a.dtype}")
    return a


# ---------------------------------------------------------------------- task bodies
def _on(kind: str, a: Any) -> Any:
    if a is None:
        return None
    xp = namespace(kind)
    return xp.ascontiguousarray(xp.asarray(a))


def _block_graph(block: GraphBlock, kind: str) -> Any:
    return block.graph if kind == "numpy" else block.graph.to("cupy")


def _checked_finite(name: str, chunk: Any) -> None:
    _check_finite_inputs({name: chunk})


def _block_label(block: GraphBlock) -> str:
    return f"block {block.index} (rows {block.row_start}..{block.row_stop - 1}; rows below are numbered from its first)"


def _block_forward(block: GraphBlock, q: Any, k: Any, v: Any, att: Any, edge_bias: Any, spec: AttentionSpec,
                   backend: str | None) -> tuple[Any, dict, str]:
    kind = "cupy" if type(q).__module__.split(".")[0] == "cupy" else "numpy"
    q, k, v, att, edge_bias = (_on(kind, a) for a in (q, k, v, att, edge_bias))
    name = select_backend(kind, backend)
    spec = dataclasses.replace(spec, edge_offset=block.edge_start)
    out, saved = get_backend(name).forward(_block_graph(block, kind), q, k, v, att, edge_bias, spec)
    try:
        _check_forward_result(spec, np.dtype(q.dtype), saved, out, True)
    except ValueError as exc:
        raise ValueError(f"{_block_label(block)}: {exc}") from None
    return out, saved, name


def _block_backward(block: GraphBlock, fwd: tuple, q: Any, k: Any, v: Any, att: Any, edge_bias: Any,
                    spec: AttentionSpec, dout: Any, check_finite: bool) -> dict:
    out, saved, name = fwd
    kind = "cupy" if type(q).__module__.split(".")[0] == "cupy" else "numpy"
    q, k, v, att, edge_bias, dout = (_on(kind, a) for a in (q, k, v, att, edge_bias, dout))
    if check_finite:
        _check_finite_inputs({"dout": dout})
    spec = dataclasses.replace(spec, edge_offset=block.edge_start)
    grads = get_backend(name).backward(_block_graph(block, kind), q, k, v, att, edge_bias, spec, out, saved, dout)
    try:
        _check_results({f"the gradient of {n}": g for n, g in grads.items()}, spec, np.dtype(q.dtype), check_finite,
                       f"a {spec.score!r} score (or a product with its gradient)")
    except ValueError as exc:
        raise ValueError(f"{_block_label(block)}: {exc}") from None
    return grads


def _checked_sum(name: str, total: Any, spec: AttentionSpec) -> Any:
    """The NaN/inf rule on a reduced gradient (finite partials can still add up to inf)."""
    _check_results({f"the gradient of {name}": total}, spec, np.dtype(total.dtype), True,
                   f"a sum of {name} partials")
    return total


def _pick(d: Any, key: Any) -> Any:
    return d[key]


def _meta(kind: str, dtype: np.dtype, ndim: int) -> Any:
    return namespace(kind).empty((0,) * ndim, dtype=dtype)


# ---------------------------------------------------------------------- the context
@dataclass
class DistributedContext:
    """What :func:`attention_backward` needs: the forward's persisted per-block results
    (``out`` and the saved row statistics on the workers), the gathered halos, and the
    inputs' per-block tasks. Release it to free that worker memory."""

    pg: PartitionedGraph
    spec: AttentionSpec
    backend: str | None
    dtype: np.dtype
    kind: str
    q: list
    k_halo: list
    v_halo: list
    att: Any
    edge_bias: list | None
    forward: list
    out: Any
    k_chunks: tuple
    v_chunks: tuple
    k_shape: tuple
    v_shape: tuple


# ---------------------------------------------------------------------- public functions
def attention_forward(pg: PartitionedGraph, q: Any, k: Any, v: Any, score: str = "dot", att: Any = None,
                      tau: float = 1.0, negative_slope: float = 0.2, edge_bias: Any = None,
                      dropout: float = 0.0, seed: int | None = None, backend: str | None = None,
                      check_finite: bool = True) -> tuple[Any, DistributedContext]:
    """Sparse graph attention over a partitioned graph, one block per Dask task.

    The arguments are those of :func:`sparsegat.attention_forward`, with ``pg`` for
    the graph and Dask arrays for the node and edge data.

    Parameters
    ----------
    pg : PartitionedGraph
    q : dask.array.Array, (n_dst, H, D), or (n_dst, H) for ``additive``
        Row-chunked exactly like the blocks (``chunks[0] == pg.row_chunks``).
    k, v : dask.array.Array, (n_src, H, D) / (n_src, H, Dv)
        Any row chunking; each block gathers the rows of its halo.
    score, att, tau, negative_slope, dropout, seed, check_finite
        As in :func:`sparsegat.attention_forward`; dropout drops exactly the edges
        the whole graph drops (each block offsets its edge ids by its first edge).
    edge_bias : dask.array.Array, (nnz, H), optional
        Chunked like ``pg.edge_chunks`` (CSR order of ``pg.graph``).
    backend : {"numpy", "numba", "cupy"}, optional
        The backend every block runs (default: dispatch on the worker by array type).

    Returns
    -------
    out : dask.array.Array, (n_dst, H, Dv)
        Chunked like the blocks, backed by results persisted on the workers.
    ctx : DistributedContext

    Raises
    ------
    TypeError, ValueError
        As the single-process function, plus: inputs that are not Dask arrays, chunks
        on the wrong device for ``pg``, ``q`` or ``edge_bias`` chunked unlike the blocks.
    """
    import dask
    import dask.array as da
    from dask import delayed

    if not isinstance(pg, PartitionedGraph):
        raise TypeError(f"pg must be a sparsegat.distributed.PartitionedGraph, got {type(pg).__name__} "
                        f"(build one with partition_graph(g, parts))")
    spec = _make_spec(score, tau, negative_slope, dropout, seed)
    if backend is not None and backend not in BACKEND_NAMES:
        raise ValueError(f"backend must be None or one of {', '.join(BACKEND_NAMES)}; got {backend!r}")
    n_dst, n_src = pg.shape
    scalar = spec.score in SCALAR_SCORES
    q = _check_dask("q", q, pg, 2 if scalar else 3, n_dst)
    k = _check_dask("k", k, pg, 2 if scalar else 3, n_src)
    v = _check_dask("v", v, pg, 3, n_src)
    _check_row_chunks("q", q, pg.row_chunks, "row_chunks")
    if q.shape[1:] != k.shape[1:]:
        raise ValueError(f"q and k must agree in heads and features, got {tuple(q.shape)} and {tuple(k.shape)}")
    heads = q.shape[1]
    if heads < 1 or (not scalar and q.shape[2] < 1):
        raise ValueError(f"q must have at least one head and one feature, got shape {tuple(q.shape)}")
    if v.shape[1] != heads or v.shape[2] < 1:
        raise ValueError(f"v must have shape (n_src={n_src}, heads={heads}, Dv>=1), got {tuple(v.shape)}")
    dtype = np.dtype(q.dtype)
    att = _small("att", att)
    if spec.score == "gatv2":
        if att is None:
            raise ValueError("score='gatv2' needs att of shape (heads, D)")
        if tuple(att.shape) != tuple(q.shape[1:]):
            raise ValueError(f"att must have shape (heads, D)={tuple(q.shape[1:])}, got {tuple(att.shape)}")
    elif att is not None:
        raise ValueError(f"att applies only to score='gatv2', got att with score={spec.score!r}")
    if edge_bias is not None:
        edge_bias = _check_dask("edge_bias", edge_bias, pg, 2, pg.nnz)
        if edge_bias.shape[1] != heads:
            raise ValueError(f"edge_bias must have shape (nnz, heads)=({pg.nnz}, {heads}), "
                             f"got {tuple(edge_bias.shape)}")
        _check_row_chunks("edge_bias", edge_bias, pg.edge_chunks, "edge_chunks")
    for name, a in (("k", k), ("v", v), ("att", att), ("edge_bias", edge_bias)):
        if a is not None and np.dtype(a.dtype) != dtype:
            raise TypeError(f"mixed dtypes: q is {dtype} but {name} is {a.dtype}")
    _check_options_fit(spec, dtype)

    token = uuid.uuid4().hex[:12]
    qd, kd, vd = _row_delayed(q), _row_delayed(k), _row_delayed(v)
    ebd = _row_delayed(edge_bias) if edge_bias is not None else None
    if check_finite:  # the NaN/inf rule on every chunk, before any kernel runs
        check = delayed(_checked_finite, pure=False)
        named = [("q", qd), ("k", kd), ("v", vd)] + ([("edge_bias", ebd)] if ebd is not None else [])
        dask.compute(*[check(name, c) for name, chunks in named for c in chunks])
        if att is not None:
            _check_finite_inputs({"att": att})
    blocks = block_tasks(pg)
    k_halo = gather_rows(kd, gather_plan(pg, k.chunks[0]), f"sparsegat-k-{token}")
    v_halo = gather_rows(vd, gather_plan(pg, v.chunks[0]), f"sparsegat-v-{token}")
    fwd = delayed(_block_forward, pure=False)
    tasks = [fwd(blocks[b], qd[b], k_halo[b], v_halo[b], att, None if ebd is None else ebd[b], spec, backend,
                 dask_key_name=f"sparsegat-forward-{token}-{b}") for b in range(pg.parts)]
    tasks, k_halo, v_halo = dask.persist(tasks, k_halo, v_halo)
    # Wait here, as the single-process call returns when done, and raise its errors now.
    dask.compute(*[delayed(len, pure=False)(t) for t in tasks])
    kind = pg.device
    pick = delayed(_pick, pure=False)
    outs = [da.from_delayed(pick(t, 0), shape=(blk.n_rows, heads, v.shape[2]), dtype=dtype,
                            meta=_meta(kind, dtype, 3)) for t, blk in zip(tasks, pg.blocks)]
    out = da.concatenate(outs, axis=0)
    ctx = DistributedContext(pg, spec, backend, dtype, kind, qd, list(k_halo), list(v_halo), att, ebd, list(tasks),
                             out, tuple(k.chunks[0]), tuple(v.chunks[0]), tuple(k.shape), tuple(v.shape))
    return out, ctx


def attention_backward(ctx: DistributedContext, dout: Any, check_finite: bool = True) -> Gradients:
    """Gradients of every input of :func:`attention_forward`, as lazy Dask arrays.

    Parameters
    ----------
    ctx : DistributedContext
    dout : dask.array.Array, (n_dst, H, Dv)
        Chunked like the blocks.
    check_finite : bool
        Refuse a ``dout`` with NaN or inf (``ValueError`` when computed).

    Returns
    -------
    Gradients
        Dask arrays: ``q`` and ``edge_bias`` chunked like the blocks (rows, edges),
        ``k`` and ``v`` chunked like the forward's ``k`` and ``v``; ``att`` and ``tau``
        single chunks. Every sum runs along a fixed tree over block indices: computing
        them twice gives bitwise the same arrays, whatever the workers and the order.
    """
    import dask.array as da
    from dask import delayed

    if not isinstance(ctx, DistributedContext):
        raise TypeError(f"ctx must be the DistributedContext returned by sparsegat.distributed.attention_forward, "
                        f"got {type(ctx).__name__}")
    pg, spec = ctx.pg, ctx.spec
    dout = _check_dask("dout", dout, pg, 3, pg.shape[0])
    if tuple(dout.shape) != tuple(ctx.out.shape):
        raise ValueError(f"dout must have the shape of out, {tuple(ctx.out.shape)}, got {tuple(dout.shape)}")
    if np.dtype(dout.dtype) != ctx.dtype:
        raise TypeError(f"dout must have dtype {ctx.dtype} like out, got {dout.dtype}")
    _check_row_chunks("dout", dout, pg.row_chunks, "row_chunks")
    token = uuid.uuid4().hex[:12]
    dd = _row_delayed(dout)
    blocks = block_tasks(pg)
    bwd = delayed(_block_backward, pure=False)
    grads = [bwd(blocks[b], ctx.forward[b], ctx.q[b], ctx.k_halo[b], ctx.v_halo[b], ctx.att,
                 None if ctx.edge_bias is None else ctx.edge_bias[b], spec, dd[b], bool(check_finite),
                 dask_key_name=f"sparsegat-backward-{token}-{b}") for b in range(pg.parts)]
    pick = delayed(_pick, pure=False)
    part = {name: [pick(g, name, dask_key_name=f"sparsegat-{name}-part-{token}-{b}") for b, g in enumerate(grads)]
            for name in ("q", "k", "v")}
    kind, dtype = ctx.kind, ctx.dtype
    heads = ctx.out.shape[1]
    q_tail = tuple(ctx.k_shape[1:])
    dq = da.concatenate([da.from_delayed(p, shape=(blk.n_rows,) + q_tail, dtype=dtype,
                                         meta=_meta(kind, dtype, 1 + len(q_tail)))
                         for p, blk in zip(part["q"], pg.blocks)], axis=0)
    checked = delayed(_checked_sum, pure=False)
    result: dict[str, Any] = {"q": dq}
    for name, chunks, shape in (("k", ctx.k_chunks, ctx.k_shape), ("v", ctx.v_chunks, ctx.v_shape)):
        owners = scatter_sum(part[name], gather_plan(pg, chunks), f"sparsegat-d{name}-{token}")
        owners = [checked(name, o, spec, dask_key_name=f"sparsegat-d{name}-{token}-chunk-{c}")
                  for c, o in enumerate(owners)]
        result[name] = da.concatenate([da.from_delayed(o, shape=(n,) + shape[1:], dtype=dtype,
                                                       meta=_meta(kind, dtype, len(shape)))
                                       for o, n in zip(owners, chunks)], axis=0)
    if spec.score == "gatv2":
        total = tree_sum([pick(g, "att") for g in grads], f"sparsegat-datt-{token}")
        result["att"] = da.from_delayed(checked("att", total, spec), shape=tuple(ctx.att.shape), dtype=dtype,
                                        meta=_meta(kind, dtype, 2))
    if spec.score in TAU_SCORES:
        total = tree_sum([pick(g, "tau") for g in grads], f"sparsegat-dtau-{token}")
        result["tau"] = da.from_delayed(checked("tau", total, spec), shape=(), dtype=dtype,
                                        meta=_meta(kind, dtype, 0))
    if ctx.edge_bias is not None:
        result["edge_bias"] = da.concatenate(
            [da.from_delayed(pick(g, "edge_bias"), shape=(blk.nnz, heads), dtype=dtype, meta=_meta(kind, dtype, 2))
             for g, blk in zip(grads, pg.blocks)], axis=0)
    return Gradients(**result)

