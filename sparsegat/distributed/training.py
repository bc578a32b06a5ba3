"""Full-graph training of the two-layer GAT of ``sparsegat train`` on a Dask cluster.

The model is the one :func:`sparsegat.train.build_model` builds (``--score additive``:
``Dropout -> GATConv -> ELU -> Dropout -> GATConv``); its parameters live on the
client, where the existing optimizer updates them once per step. One step is one
Dask graph over the row blocks of the looped graph:

- projections ``h = x @ W`` and the attention terms are row-local (each block its rows);
- each block gathers ``[h | a_src]`` of its halo, runs the attention operator's block
  (:mod:`sparsegat.distributed.ops`), and ends its rows of the layer;
- backward, the key/value partials go back to their owner blocks
  (:func:`~sparsegat.distributed.gather.scatter_sum`) and every weight gradient is the
  sum of per-block partials along a fixed tree over block indices: a step gives
  bitwise the same gradients on any number of workers and in any scheduling order.

Feature dropout is counter-based here (the hash of :mod:`sparsegat.dropout` on the
global ``(row, feature)`` position, or the stored entry of sparse features), so each
block draws its part of the mask alone; attention dropout uses the layers' own seeds
and global edge ids, so it drops exactly what one process drops. With dropout 0 a
step's gradients equal one process's to rounding.
"""

from __future__ import annotations

import math
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any, TextIO

import numpy as np

from ..arrays import namespace
from ..dropout import drop_threshold, keep_mask, mix_seed
from .gather import gather_plan, gather_rows, scatter_sum, tree_sum
from .ops import _block_backward, _block_forward, _pick, block_tasks
from .partition import PartitionedGraph, partition_graph

__all__ = ["DistributedGAT", "fit"]


# ---------------------------------------------------------------------- per-block task bodies
def _rows_of(x: Any, r0: int, r1: int) -> Any:
    return x[r0:r1]


def _feature_dropout(x: Any, r0: int, entry0: int, p: float, seed: int | None) -> Any:
    """Counter-based dropout of a block's rows: dense entry ``(i, f)`` is counter
    ``(r0 + i) * F + f``, a sparse stored entry its global position ``entry0 + e``."""
    if seed is None or p == 0.0:
        return x
    key, thr, scale = mix_seed(seed), drop_threshold(p), 1.0 / (1.0 - p)
    if hasattr(x, "nnz"):  # scipy CSR rows: drop stored entries (their zeros need no dropping)
        keep = keep_mask(key, entry0, entry0 + int(x.nnz), 1, thr)[:, 0]
        out = x.copy()
        out.data = np.where(keep, out.data * out.dtype.type(scale), out.dtype.type(0))
        return out
    keep = keep_mask(key, r0, r0 + x.shape[0], x.shape[1], thr)
    return np.where(keep, x * x.dtype.type(scale), x.dtype.type(0))


def _block_diag(att: np.ndarray) -> np.ndarray:
    H, C = att.shape
    A = np.zeros((H, C, H), dtype=att.dtype)
    A[np.arange(H), :, np.arange(H)] = att
    return A.reshape(H * C, H)


def _block_diag_part(M: np.ndarray, H: int, C: int) -> np.ndarray:
    return np.ascontiguousarray(M.reshape(H, C, H)[np.arange(H), :, np.arange(H)])


def _project(x: Any, params: dict, heads: int) -> dict:
    """Row-local part of a GATConv forward: ``h``, the attention terms, and ``[h | a_src]``."""
    h = np.asarray(x @ params["W"])
    a_src = h @ _block_diag(params["att_src"])
    a_dst = h @ _block_diag(params["att_dst"])
    return {"x": x, "h": h, "a_dst": np.ascontiguousarray(a_dst), "kv": np.concatenate([h, a_src], axis=1)}


def _layer_forward(block: Any, proj: dict, halo: np.ndarray, params: dict, heads: int, concat: bool,
                   spec: Any, backend: str | None) -> dict:
    n_rows, HC = proj["h"].shape
    C = HC // heads
    v = np.ascontiguousarray(halo[:, :HC].reshape(-1, heads, C))
    k = np.ascontiguousarray(halo[:, HC:])
    fwd = _block_forward(block, proj["a_dst"], k, v, None, None, spec, backend)
    out = fwd[0]
    y = out.reshape(n_rows, HC) if concat else out.mean(axis=1)
    if "bias" in params:
        y = y + params["bias"]
    return {"fwd": fwd, "k": k, "v": v, "y": y}


def _elu_dropout(layer: dict, r0: int, p: float, seed: int | None) -> dict:
    y = layer["y"]
    z = np.where(y > 0, y, np.expm1(np.minimum(y, 0)))
    return {"z": z, "x": _feature_dropout(z, r0, 0, p, seed)}


def _loss(logits: np.ndarray, y: np.ndarray, train: np.ndarray, scale: float) -> tuple[float, np.ndarray]:
    """Summed cross-entropy over the block's training rows and ``scale`` times its gradient."""
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    rows = np.flatnonzero(train)
    loss = float(-logp[rows, y[rows]].sum())
    d = np.zeros_like(logits)
    d[rows] = np.exp(logp[rows])
    d[rows, y[rows]] -= 1
    return loss, d * logits.dtype.type(scale)


def _correct(logits: np.ndarray, y: np.ndarray, masks: tuple) -> tuple:
    hit = logits.argmax(axis=1) == y
    return tuple(int(hit[m].sum()) for m in masks)


def _layer_backward_block(block: Any, proj: dict, layer: dict, dy: np.ndarray, heads: int, concat: bool,
                          spec: Any) -> tuple[np.ndarray, np.ndarray]:
    """The attention block's backward: ``(da_dst (rows, H), packed [dv | da_src] halo partial)``."""
    n_rows, HC = proj["h"].shape
    C = HC // heads
    dout = dy.reshape(n_rows, heads, C) if concat else np.repeat((dy / heads)[:, None, :], heads, axis=1)
    g = _block_backward(block, layer["fwd"], proj["a_dst"], layer["k"], layer["v"], None, None, spec,
                        np.ascontiguousarray(dout), True)
    return g["q"], np.concatenate([g["v"].reshape(-1, HC), g["k"]], axis=1)


def _layer_param_grads(proj: dict, da_dst: np.ndarray, owned: np.ndarray, dy: np.ndarray, params: dict,
                       heads: int, want_dx: bool) -> dict:
    """Row-local end of a layer's backward on the owner's rows: weight-gradient partials and dx."""
    h = proj["h"]
    HC = h.shape[1]
    C = HC // heads
    dv, da_src = owned[:, :HC], owned[:, HC:]
    dh = dv + da_src @ _block_diag(params["att_src"]).T + da_dst @ _block_diag(params["att_dst"]).T
    x = proj["x"]
    out = {"W": np.asarray(x.T @ dh), "att_src": _block_diag_part(h.T @ da_src, heads, C),
           "att_dst": _block_diag_part(h.T @ da_dst, heads, C)}
    if "bias" in params:
        out["bias"] = dy.sum(axis=0)
    if want_dx:
        out["dx"] = dh @ params["W"].T
    return out


def _hidden_grad(dx: np.ndarray, hidden: dict, r0: int, p: float, seed: int | None) -> np.ndarray:
    """Back through the hidden dropout and the ELU."""
    if seed is not None and p != 0.0:
        keep = keep_mask(mix_seed(seed), r0, r0 + dx.shape[0], dx.shape[1], drop_threshold(p))
        dx = np.where(keep, dx * dx.dtype.type(1.0 / (1.0 - p)), dx.dtype.type(0))
    z = hidden["z"]
    return dx * np.where(z > 0, 1.0, z + 1.0).astype(dx.dtype)


def _get(d: dict, key: str) -> Any:
    return d[key]


# ---------------------------------------------------------------------- the model
@dataclass
class _Layer:
    module: Any     # the GATConv of the client's model
    heads: int
    concat: bool


class DistributedGAT:
    """The two-layer GAT of ``sparsegat train`` (``--score additive``), trained on Dask.

    Parameters
    ----------
    model : sparsegat.nn.Sequential
        From :func:`sparsegat.train.build_model` with ``score="additive"``; its
        parameters stay on the client and are updated there.
    data : Dataset-like
        ``x`` (dense or SciPy sparse), ``graph``, ``y``, ``train_mask``, ``val_mask``,
        optional ``test_mask``, all on the host.
    parts : int
        Row blocks of the looped graph (a small multiple of the workers).
    reorder : {None, "rcm"}
        Locality reordering before partitioning.
    backend : str, optional
        The attention backend of the blocks (default: dispatch on the workers).
    """

    def __init__(self, model: Any, data: Any, parts: int, *, reorder: str | None = None,
                 backend: str | None = None) -> None:
        from ..nn import GATConv, graph_with_self_loops
        from ..nn.loss import mask_indices

        layers = [m for _, m in model.children()]
        kinds = [type(m).__name__ for m in layers]
        if kinds != ["Dropout", "GATConv", "ELU", "Dropout", "GATConv"]:
            raise ValueError(f"DistributedGAT trains the model of build_model(score='additive') "
                             f"(Dropout, GATConv, ELU, Dropout, GATConv), got {kinds}")
        for conv in (layers[1], layers[4]):
            if (not isinstance(conv, GATConv) or conv.pair_in_dim or conv.residual or conv.edge_dim is not None
                    or not conv.add_self_loops):
                raise ValueError("DistributedGAT needs GATConv layers with one in_dim, self-loops, no residual "
                                 "and no edge features")
        self.model = model
        self.drop = (layers[0], layers[3])
        self.layers = (_Layer(layers[1], layers[1].heads, layers[1].concat),
                       _Layer(layers[4], layers[4].heads, layers[4].concat))
        self.backend = backend
        g2 = graph_with_self_loops(data.graph)
        self.pg: PartitionedGraph = partition_graph(g2, parts, reorder=reorder)
        pg = self.pg
        n = g2.n_dst
        x, y = data.x, np.asarray(data.y)
        masks = []
        for name in ("train_mask", "val_mask", "test_mask"):
            m = getattr(data, name, None)
            keep = np.zeros(n, dtype=bool)
            if m is not None:
                keep[mask_indices(m, n, np, name)] = True
            masks.append(pg.to_partition_order(keep) if m is not None else None)
        x, y = pg.to_partition_order(x), pg.to_partition_order(y)
        self.counts = [int(m.sum()) if m is not None else 0 for m in masks]
        self._has_test = masks[2] is not None
        sparse = hasattr(x, "nnz")
        if sparse:
            x = x.tocsr()
        self._entry0 = [int(x.indptr[b.row_start]) if sparse else 0 for b in pg.blocks]
        self._data = self._persist_rows(x, y, masks)

    def _persist_rows(self, x: Any, y: np.ndarray, masks: list) -> list:
        """Per block ``(x rows, y rows, masks)``, persisted on the cluster like the blocks."""
        import dask
        from dask import delayed

        out = []
        for b in self.pg.blocks:
            r0, r1 = b.row_start, b.row_stop
            ms = tuple(np.zeros(r1 - r0, bool) if m is None else m[r0:r1] for m in masks)
            out.append(delayed((x[r0:r1], y[r0:r1], ms), name=f"sparsegat-rows-{self.pg.token}-{b.index}",
                               traverse=False))
        return list(dask.persist(*out))

    # -------------------------------------------------------------- one graph per step
    def _params(self, i: int) -> dict:
        return {k: np.asarray(v) for k, v in self.layers[i].module.params.items()}

    def _forward_graph(self, training: bool, token: str) -> dict:
        from dask import delayed

        from ..attention import _make_spec

        pg, P = self.pg, self.pg.parts
        blocks = block_tasks(pg)
        plan = gather_plan(pg, pg.row_chunks)
        d = lambda f: delayed(f, pure=False)  # noqa: E731
        seeds = []
        for drop, layer in zip(self.drop, self.layers):
            p_feat = drop.p if training else 0.0
            s_feat = int(drop._rng.integers(0, 2**63)) if training and drop.p > 0 else None
            p_att, s_att = layer.module._attention_dropout(training)
            seeds.append((p_feat, s_feat, _make_spec("additive", 1.0, layer.module.negative_slope, p_att, s_att)))
        state: dict[str, Any] = {"seeds": seeds, "params": [self._params(0), self._params(1)]}
        xin = [d(_pick)(self._data[b], 0) for b in range(P)]
        xin = [d(_feature_dropout)(xin[b], pg.blocks[b].row_start, self._entry0[b], seeds[0][0], seeds[0][1])
               for b in range(P)]
        for i, layer in enumerate(self.layers):
            params = state["params"][i]
            proj = [d(_project)(xin[b], params, layer.heads, dask_key_name=f"gat-proj{i}-{token}-{b}")
                    for b in range(P)]
            kv = [d(_get)(p, "kv") for p in proj]
            halo = gather_rows(kv, plan, f"gat-kv{i}-{token}")
            lay = [d(_layer_forward)(blocks[b], proj[b], halo[b], params, layer.heads, layer.concat, seeds[i][2],
                                     self.backend, dask_key_name=f"gat-layer{i}-{token}-{b}") for b in range(P)]
            state[f"proj{i}"], state[f"layer{i}"] = proj, lay
            if i == 0:
                hidden = [d(_elu_dropout)(lay[b], pg.blocks[b].row_start, seeds[1][0], seeds[1][1])
                          for b in range(P)]
                state["hidden"] = hidden
                xin = [d(_get)(h, "x") for h in hidden]
        state["logits"] = [d(_get)(lay, "y") for lay in state["layer1"]]
        return state

    def step_graph(self) -> tuple[Any, dict]:
        """The Dask tasks of one training step: ``(summed loss, {qualified name: gradient})``."""
        from dask import delayed

        token = uuid.uuid4().hex[:10]
        pg, P = self.pg, self.pg.parts
        d = lambda f: delayed(f, pure=False)  # noqa: E731
        state = self._forward_graph(True, token)
        blocks = block_tasks(pg)
        plan = gather_plan(pg, pg.row_chunks)
        scale = 1.0 / max(self.counts[0], 1)
        losses = [d(_loss)(state["logits"][b], d(lambda t: t[1])(self._data[b]),
                           d(lambda t: t[2][0])(self._data[b]), scale) for b in range(P)]
        dy = [d(_pick)(lo, 1) for lo in losses]
        loss = tree_sum([d(_pick)(lo, 0) for lo in losses], f"gat-loss-{token}")
        grads: dict[str, Any] = {}
        names = {0: "1", 1: "4"}
        for i in (1, 0):
            layer, params, spec = self.layers[i], state["params"][i], state["seeds"][i][2]
            back = [d(_layer_backward_block)(blocks[b], state[f"proj{i}"][b], state[f"layer{i}"][b], dy[b],
                                             layer.heads, layer.concat, spec) for b in range(P)]
            owned = scatter_sum([d(_pick)(t, 1) for t in back], plan, f"gat-dkv{i}-{token}")
            parts = [d(_layer_param_grads)(state[f"proj{i}"][b], d(_pick)(back[b], 0), owned[b], dy[b], params,
                                           layer.heads, i == 1) for b in range(P)]
            for key in params:
                grads[f"{names[i]}.{key}"] = tree_sum([d(_get)(p, key) for p in parts], f"gat-d{i}{key}-{token}")
            if i == 1:
                p_h, s_h = state["seeds"][1][0], state["seeds"][1][1]
                dy = [d(_hidden_grad)(d(_get)(parts[b], "dx"), state["hidden"][b], pg.blocks[b].row_start, p_h, s_h)
                      for b in range(P)]
        return loss, grads

    def train_step(self, optimizer: Any, frozen: tuple = ()) -> float:
        """One step: the distributed forward and backward, then ``optimizer.step()`` on the client.
        Returns the mean training loss."""
        import dask

        loss, grads = self.step_graph()
        loss, values = dask.compute(loss, grads)
        refs = {name: (layer, key) for name, layer, key in self.model.named_parameters()}
        for name, value in values.items():
            layer, key = refs[name]
            layer.grads[key] = np.asarray(value, dtype=layer.params[key].dtype)
        for name in frozen:
            layer, key = refs[name]
            layer.grads.pop(key, None)
        optimizer.step()
        return float(loss) / max(self.counts[0], 1)

    def evaluate(self) -> tuple[float, float, float]:
        """Accuracies ``(train, val, test)`` of an evaluation forward (test NaN without a test split)."""
        import dask
        from dask import delayed

        state = self._forward_graph(False, uuid.uuid4().hex[:10])
        tasks = [delayed(lambda lg, t: _correct(lg, t[1], t[2]), pure=False)(state["logits"][b], self._data[b])
                 for b in range(self.pg.parts)]
        hits = np.array(dask.compute(*tasks), dtype=np.int64).sum(axis=0)
        acc = [float(h) / c if c else math.nan for h, c in zip(hits, self.counts)]
        if not self._has_test:
            acc[2] = math.nan
        return acc[0], acc[1], acc[2]


def fit(gat: DistributedGAT, optimizer: Any, *, epochs: int, frozen: tuple = (), log: TextIO | None = None,
        log_every: int = 0, restore_best: bool = True) -> Any:
    """:func:`sparsegat.train.fit` on a :class:`DistributedGAT`: a step and an evaluation per
    epoch, the best validation epoch's state kept. Returns a :class:`sparsegat.train.FitResult`."""
    from ..train import EpochStats, FitResult, _log_epoch, _restore, _snapshot

    log = sys.stderr if log is None else log
    result = FitResult()
    t0 = time.perf_counter()
    for epoch in range(1, int(epochs) + 1):
        loss = gat.train_step(optimizer, frozen)
        stats = EpochStats(epoch, loss, *gat.evaluate())
        result.history.append(stats)
        if stats.val > result.best.val:
            result.best = stats
            if restore_best:
                result.best_state = _snapshot(gat.model)
        if epoch == 1:
            result.first_epoch_seconds = time.perf_counter() - t0
        if log_every and (epoch % log_every == 0 or epoch == 1 or epoch == epochs):
            _log_epoch(log, stats, epochs, result.best)
    result.seconds = time.perf_counter() - t0
    if restore_best and result.best_state is not None:
        _restore(gat.model, result.best_state)
    return result


def run_cli(a: Any, log: Any = None, out: Any = None) -> dict[str, Any]:
    """``sparsegat train --workers N`` / ``--scheduler ADDRESS``: the command's run on a cluster."""
    from .. import nn, optim
    from ..train import (UsageError, _describe_model, _frozen_refs, _load_data, _print_summary, _summary,
                         _uniform_attention_params, build_model)
    from .cluster import connect

    log = sys.stderr if log is None else log
    out = sys.stdout if out is None else out
    if a.score != "additive":
        raise UsageError(f"--workers/--scheduler train the GATConv model (--score additive), got --score {a.score}")
    if a.backend == "cupy" and a.scheduler is None:
        raise UsageError("--backend cupy needs GPU workers: start a dask_cuda.LocalCUDACluster (or dask-cuda-worker) "
                         "and pass --scheduler ADDRESS")
    t_start = time.perf_counter()
    data, x = _load_data(a, log)
    model = build_model(a.score, data.num_features, data.num_classes, a.hidden, a.heads, a.output_heads,
                        a.dropout, a.seed, a.backend)
    frozen = _uniform_attention_params(model) if a.uniform_attention else []
    for layer, key in _frozen_refs(model, frozen):
        layer.params[key][...] = 0
    opt = optim.Adam(model, lr=a.lr, weight_decay=a.weight_decay)
    with connect(scheduler=a.scheduler, workers=a.workers) as client:
        workers = len(client.scheduler_info().get("workers", {}))
        parts = a.parts or max(workers, 1)
        arrays = type("Data", (), {})()
        arrays.x, arrays.graph, arrays.y = x, data.graph, data.y
        arrays.train_mask, arrays.val_mask = data.train_mask, data.val_mask
        arrays.test_mask = getattr(data, "test_mask", None)
        gat = DistributedGAT(model, arrays, parts, reorder=a.reorder, backend=a.backend)
        print(f"data      {data.describe()}", file=out)
        print(f"model     {_describe_model(a, data.num_features, data.num_classes, model.num_parameters())}", file=out)
        print(f"cluster   {workers} workers ({a.scheduler or 'local processes'}); {gat.pg.describe()}", file=out)
        print(f"optimizer Adam lr {a.lr:g}, weight decay {a.weight_decay:g}; seed {a.seed}", file=out)
        out.flush()
        fitted = fit(gat, opt, epochs=a.epochs, frozen=tuple(frozen), log=log, log_every=a.log_every,
                     restore_best=True)
    if a.save:  # a self-describing model file, as the one-process run writes (sparsegat predict reads it)
        from ..train import _model_file_metadata

        nn.save_model(model, a.save, metadata=_model_file_metadata(a, data, fitted))
    result = _summary(a, data, fitted, a.backend or "default", None, t_start)
    result.update(workers=workers, parts=parts, halo_fraction=gat.pg.halo_fraction)
    _print_summary(a, fitted, result["majority_test_accuracy"], None, out)
    return result
