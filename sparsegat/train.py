"""Node classification with graph attention: :func:`fit` and the ``sparsegat train`` command.

:func:`fit` trains any ``sparsegat.nn`` model on a node-classification data set
from Python (full-batch epochs, an evaluation after each, early stopping, the
best state restored); :func:`build_model` builds the two-layer network that
``sparsegat train`` uses.

The command's defaults are the GAT paper's Cora recipe (Velickovic et al., ICLR
2018): 8 heads x 8 hidden features with ELU, one output head (averaged), dropout
0.6 on the inputs of both layers and on the attention weights, Adam with lr 0.005
and weight decay 5e-4, row-normalised features, 300 epochs with an evaluation
after every epoch; the reported test accuracy is the one at the epoch of best
validation accuracy (the first such epoch, as PyG's example keeps it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, NamedTuple, Sequence, TextIO

import numpy as np

__all__ = ["fit", "FitResult", "EpochStats", "build_model", "main"]

SCORE_CHOICES = ("additive", "gatv2", "cosine", "dot", "scaled_dot", "euclidean")
PROG = "sparsegat train"


# ---------------------------------------------------------------------- training from Python
class EpochStats(NamedTuple):
    """The figures of one epoch: training loss, then accuracies after the update.

    ``test`` is NaN when the data set has no test split.
    """

    epoch: int
    loss: float
    train: float
    val: float
    test: float


@dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes
    ----------
    history : list of EpochStats
        One entry per epoch run (fewer than ``epochs`` after an early stop).
    best : EpochStats
        The epoch of best validation accuracy (the first one, on ties).
    best_state : dict of str to array, or None
        Copies of the parameters at ``best.epoch`` (qualified names, as
        ``Module.named_parameters``); None when ``restore_best=False``.
    stopped_early : bool
        True when ``patience`` ended the training before ``epochs``.
    seconds : float
        Wall time of the epochs, evaluations included.
    first_epoch_seconds : float
        Wall time of the first epoch (it includes any kernel compilation).
    """

    history: list[EpochStats] = field(default_factory=list)
    best: EpochStats = EpochStats(0, math.nan, 0.0, -1.0, 0.0)
    best_state: dict[str, Any] | None = None
    stopped_early: bool = False
    seconds: float = 0.0
    first_epoch_seconds: float = 0.0

    @property
    def last(self) -> EpochStats:
        """The figures of the last epoch run."""
        return self.history[-1]

    @property
    def best_epoch(self) -> int:
        return self.best.epoch


class _Splits(NamedTuple):
    """Node indices of the splits, in the array library of the labels (``test`` None when absent)."""

    train: Any
    val: Any
    test: Any


def _splits(data: Any, xp: Any) -> _Splits:
    """The node indices of every split, by the mask rule of :func:`sparsegat.nn.softmax_cross_entropy`
    (boolean masks or index arrays; ambiguous 0/1 integer masks refused)."""
    from .nn.loss import mask_indices

    n = int(data.y.shape[0])
    idx = {}
    for name in ("train_mask", "val_mask", "test_mask"):
        mask = getattr(data, name, None)
        if mask is None and name != "test_mask":
            raise ValueError(f"data has no {name}")
        rows = None if mask is None else mask_indices(mask, n, xp, name)
        if rows is not None and rows.shape[0] == 0:
            raise ValueError(f"data.{name} selects no node")
        idx[name] = rows
    return _Splits(idx["train_mask"], idx["val_mask"], idx["test_mask"])


def _frozen_refs(model: Any, names: Iterable[str]) -> list[tuple[Any, str]]:
    """``(layer, key)`` of every parameter named in ``names`` (ValueError for an unknown name)."""
    refs = {name: (layer, key) for name, layer, key in model.named_parameters()}
    names = list(names)
    unknown = [n for n in names if n not in refs]
    if unknown:
        raise ValueError(f"freeze names parameters the model does not have: {unknown}")
    return [refs[n] for n in names]


def _train_step(model: Any, x: Any, g: Any, y: Any, train_idx: Any, optimizer: Any,
                frozen: list[tuple[Any, str]]) -> float:
    """One full-batch step: forward in training mode, loss, backward, frozen gradients dropped, update."""
    from .nn import softmax_cross_entropy

    logits = model.forward(x, g, training=True)
    loss, dlogits = softmax_cross_entropy(logits, y, train_idx)
    model.backward(dlogits)
    for layer, key in frozen:
        layer.grads.pop(key, None)
    optimizer.step()
    return loss


def _evaluate(model: Any, x: Any, g: Any, y: Any, splits: _Splits, epoch: int, loss: float) -> EpochStats:
    """Accuracies of an evaluation forward on every split."""
    correct = model.forward(x, g, training=False).argmax(axis=1) == y
    test = math.nan if splits.test is None else float(correct[splits.test].mean())
    return EpochStats(epoch, loss, float(correct[splits.train].mean()), float(correct[splits.val].mean()), test)


def _snapshot(model: Any) -> dict[str, Any]:
    """Copies of every parameter (the model's ``state_dict`` holds the live arrays)."""
    return {name: layer.params[key].copy() for name, layer, key in model.named_parameters()}


def _restore(model: Any, state: dict[str, Any]) -> None:
    for name, layer, key in model.named_parameters():
        layer.params[key] = state[name].copy()


def _log_epoch(log: TextIO, stats: EpochStats, epochs: int, best: EpochStats) -> None:
    print(f"epoch {stats.epoch:4d}/{epochs}  loss {stats.loss:.4f}  train {stats.train:.3f}  val {stats.val:.3f}  "
          f"test {stats.test:.3f}  (best val {best.val:.3f} at {best.epoch})", file=log, flush=True)


def fit(model: Any, data: Any, optimizer: Any, *, epochs: int = 200, patience: int | None = None,
        restore_best: bool = True, freeze: Iterable[str] = (), log: TextIO | None = None,
        log_every: int = 0) -> FitResult:
    """Train ``model`` for node classification, full batch, with an evaluation after every epoch.

    Every epoch runs a training forward on the whole graph, the softmax
    cross-entropy on the training nodes, the backward pass and one
    ``optimizer.step()``, then an evaluation forward (``training=False``) that
    gives the accuracies of every split. The best epoch is the first one with
    the highest validation accuracy.

    Parameters
    ----------
    model : sparsegat.nn.Module
        Maps ``(x, graph)`` to logits ``(n, classes)``.
    data : sparsegat.datasets.Dataset or similar
        Anything with ``x`` (dense or sparse features), ``graph`` (a
        :class:`sparsegat.CSRGraph`), ``y`` (integer labels), ``train_mask`` and
        ``val_mask`` (boolean masks or node indices) and optionally ``test_mask``.
        ``x``, ``graph``, ``y`` and the parameters must live on the same device
        (NumPy or CuPy); ``x`` is used as it is (no normalisation).
    optimizer : sparsegat.optim.Optimizer
        Built on ``model``'s parameters.
    epochs : int
        Most epochs to run.
    patience : int, optional
        Stop after ``patience`` epochs without a better validation accuracy
        (None: run every epoch).
    restore_best : bool
        Keep a copy of the parameters of the best epoch (``best_state``) and load
        them back into ``model`` at the end.
    freeze : iterable of str
        Qualified names of parameters to hold fixed (``"1.att_src"``): their
        gradients are dropped before every step.
    log : file, optional
        Where progress lines go (default ``sys.stderr``) when ``log_every > 0``.
    log_every : int
        A progress line every ``log_every`` epochs, and after the first and the
        last (0: none).

    Returns
    -------
    FitResult
        The history, the best epoch's figures and state, and the wall time.

    Examples
    --------
    >>> from sparsegat import datasets, optim
    >>> from sparsegat.train import build_model, fit
    >>> data = datasets.synthetic(seed=0)
    >>> model = build_model("additive", data.num_features, data.num_classes, hidden=4, heads=2)
    >>> opt = optim.Adam(model, lr=0.01, weight_decay=5e-4)
    >>> result = fit(model, data, opt, epochs=30, patience=10)
    >>> result.best.val > data.majority_accuracy(data.val_mask)
    True
    """
    if int(epochs) < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    if patience is not None and int(patience) < 1:
        raise ValueError(f"patience must be None or at least 1, got {patience}")
    from .arrays import namespace

    log = sys.stderr if log is None else log
    x, g, y = data.x, data.graph, data.y
    splits = _splits(data, namespace(y))
    frozen = _frozen_refs(model, freeze)
    result = FitResult()
    t0 = time.perf_counter()
    for epoch in range(1, int(epochs) + 1):
        loss = _train_step(model, x, g, y, splits.train, optimizer, frozen)
        stats = _evaluate(model, x, g, y, splits, epoch, loss)
        result.history.append(stats)
        if stats.val > result.best.val:
            result.best = stats
            if restore_best:
                result.best_state = _snapshot(model)
        if epoch == 1:
            result.first_epoch_seconds = time.perf_counter() - t0
        if log_every and (epoch % log_every == 0 or epoch == 1 or epoch == epochs):
            _log_epoch(log, stats, epochs, result.best)
        if patience is not None and epoch - result.best.epoch >= patience and epoch < epochs:
            result.stopped_early = True
            break
    result.seconds = time.perf_counter() - t0
    if restore_best and result.best_state is not None:
        _restore(model, result.best_state)
    return result


def build_model(score: str, in_dim: int, num_classes: int, hidden: int = 8, heads: int = 8,
                output_heads: int = 1, dropout: float = 0.6, seed: int = 0, backend: str | None = None,
                dtype: Any = np.float32) -> Any:
    """The two-layer network of ``sparsegat train``.

    ``Dropout -> conv(in_dim, hidden x heads) -> ELU -> Dropout -> conv(heads*hidden, num_classes)``,
    a :class:`sparsegat.nn.Sequential` whose parameters are named ``"1.*"``
    (first attention layer) and ``"4.*"`` (output layer), as in the files of
    ``sparsegat train --save``.

    Parameters
    ----------
    score : str
        ``"additive"``: :class:`~sparsegat.nn.GATConv`; ``"gatv2"``:
        :class:`~sparsegat.nn.GATv2Conv`; ``"cosine"``, ``"dot"``,
        ``"scaled_dot"`` or ``"euclidean"``: :class:`~sparsegat.nn.GraphAttention`
        with that score and ``residual=False``.
    in_dim, num_classes : int
        Input features and output classes.
    hidden, heads : int
        Features per head and heads of the hidden layer (concatenated).
    output_heads : int
        Heads of the output layer, averaged (``concat=False``); must be 1 for
        GraphAttention.
    dropout : float
        Feature dropout before each layer and attention dropout inside both.
    seed : int
        Seeds every layer's initialisation and dropout.
    backend : str, optional
        The attention backend of both layers (None: by array type).
    dtype : float32 or float64

    Returns
    -------
    sparsegat.nn.Sequential

    Examples
    --------
    >>> from sparsegat.train import build_model
    >>> model = build_model("additive", 1433, 7)
    >>> model.num_parameters()
    92373
    """
    from . import nn

    # Six seeds, of which four are used (the two unused slots keep earlier models' seeds).
    drop_in, first_seed, _, drop_hidden, last_seed, _ = (
        int(s.generate_state(1)[0]) for s in np.random.SeedSequence(seed).spawn(6))
    common = dict(dtype=dtype, backend=backend)
    if score in ("additive", "gatv2"):
        conv = nn.GATConv if score == "additive" else nn.GATv2Conv
        first = conv(in_dim, hidden, heads=heads, dropout=dropout, seed=first_seed, **common)
        last = conv(heads * hidden, num_classes, heads=output_heads, concat=False, dropout=dropout,
                    seed=last_seed, **common)
    else:
        first = nn.GraphAttention(in_dim, hidden, heads=heads, score=score, residual=False, dropout=dropout,
                                  seed=first_seed, **common)
        last = nn.GraphAttention(heads * hidden, num_classes, heads=1, score=score, residual=False,
                                 dropout=dropout, seed=last_seed, **common)
    return nn.Sequential(nn.Dropout(dropout, seed=drop_in), first, nn.ELU(),
                         nn.Dropout(dropout, seed=drop_hidden), last)


# ---------------------------------------------------------------------- the command line
class UsageError(Exception):
    """A bad command-line argument (exit status 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse would print and sys.exit
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description=(
        "Train a two-layer graph attention network for node classification on a Planetoid data set "
        "(cora, citeseer, pubmed), an .npz data set (layout in docs/data.md) or, without --data, on a "
        "built-in synthetic graph "
        "(a contextual stochastic block model with distractor nodes, where attention pays off). "
        "Defaults are the GAT paper's Cora recipe. Progress goes to stderr, the summary to stdout."))
    p.add_argument("--data", metavar="NAME|FILE.npz",
                   help="cora, citeseer or pubmed (Planetoid raw files from $SPARSEGAT_DATA or "
                        "~/.cache/sparsegat/planetoid, downloaded when missing), or a data set file "
                        "(default: the built-in synthetic graph)")
    p.add_argument("--epochs", type=int, default=300, help="training epochs, one evaluation after each (default: 300)")
    p.add_argument("--lr", type=float, default=0.005, help="Adam learning rate (default: 0.005)")
    p.add_argument("--weight-decay", type=float, default=5e-4, help="Adam (L2) weight decay (default: 5e-4)")
    p.add_argument("--heads", type=int, default=8, help="attention heads of the hidden layer (default: 8)")
    p.add_argument("--hidden", type=int, default=8, help="features per head of the hidden layer (default: 8)")
    p.add_argument("--output-heads", type=int, default=1, help="heads of the output layer, averaged (default: 1)")
    p.add_argument("--dropout", type=float, default=0.6, help="dropout on layer inputs and attention weights (default: 0.6)")
    p.add_argument("--score", choices=SCORE_CHOICES, default="additive",
                   help="additive (default): GATConv; gatv2: GATv2Conv; the others: GraphAttention with that similarity")
    p.add_argument("--uniform-attention", action="store_true",
                   help="baseline: freeze the attention at uniform weights (a mean over neighbours)")
    p.add_argument("--backend", choices=("numpy", "numba", "cupy"), default=None,
                   help="attention backend (default: numba when installed, else numpy; cupy runs on the GPU)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initialisation, dropout and synthetic data (default: 0)")
    p.add_argument("--log-every", type=int, default=20, metavar="N", help="progress line every N epochs, 0 for none (default: 20)")
    p.add_argument("--save", metavar="FILE.npz",
                   help="write the model of the best validation epoch (architecture and parameters; "
                        "nn.load_model and 'sparsegat predict' read it)")
    p.add_argument("--threads", type=int, default=0, metavar="N",
                   help="threads of the numba kernels (default 0: numba's default, all cores)")
    p.add_argument("--blas-threads", type=int, default=1, metavar="N",
                   help="threads of NumPy's BLAS for the small dense products (default 1; 0 leaves it alone)")
    p.add_argument("--json", action="store_true", help="end with one line of JSON with the results on stdout")
    dist = p.add_argument_group("distributed (full-graph training on Dask; docs/distributed.md)")
    dist.add_argument("--workers", type=int, default=0, metavar="N",
                      help="train on a local Dask cluster of N worker processes")
    dist.add_argument("--scheduler", metavar="ADDRESS", help="train on the Dask cluster of this scheduler")
    dist.add_argument("--parts", type=int, default=0, metavar="P",
                      help="row blocks of the graph (default: one per worker)")
    dist.add_argument("--reorder", choices=("rcm",), default=None,
                      help="renumber the nodes for locality (reverse Cuthill-McKee) before partitioning")
    return p


def _check_args(a: argparse.Namespace) -> None:
    if a.epochs < 1:
        raise UsageError(f"--epochs must be at least 1, got {a.epochs}")
    for name in ("heads", "hidden", "output_heads"):
        if getattr(a, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(a, name)}")
    if not (math.isfinite(a.lr) and a.lr > 0):
        raise UsageError(f"--lr must be a positive number, got {a.lr}")
    if not (math.isfinite(a.weight_decay) and a.weight_decay >= 0):
        raise UsageError(f"--weight-decay must be a number >= 0, got {a.weight_decay}")
    if not 0.0 <= a.dropout < 1.0:
        raise UsageError(f"--dropout must lie in [0, 1), got {a.dropout}")
    if a.seed < 0:
        raise UsageError(f"--seed must be >= 0, got {a.seed}")
    if a.threads < 0:
        raise UsageError(f"--threads must be >= 0, got {a.threads}")
    if a.blas_threads < 0:
        raise UsageError(f"--blas-threads must be >= 0, got {a.blas_threads}")
    if a.log_every < 0:
        raise UsageError(f"--log-every must be >= 0, got {a.log_every}")
    if a.workers < 0 or a.parts < 0:
        raise UsageError(f"--workers and --parts must be >= 0, got {a.workers} and {a.parts}")
    if a.workers and a.scheduler:
        raise UsageError("give --workers (a local cluster) or --scheduler (a running one), not both")
    if (a.parts or a.reorder) and not (a.workers or a.scheduler):
        raise UsageError("--parts and --reorder apply with --workers or --scheduler")
    if a.score not in ("additive", "gatv2") and a.output_heads != 1:
        raise UsageError(f"--output-heads must be 1 with --score {a.score} (GraphAttention has no head averaging)")


#: Parameters frozen at zero by --uniform-attention: every edge of a row then gets the same score.
_UNIFORM_FREEZE = {"GATConv": ("att_src", "att_dst"), "GATv2Conv": ("att",),
                   "GraphAttention": ("W_q", "W_k", "tau")}


def _uniform_attention_params(model: Any) -> list[str]:
    """Qualified names of the parameters that --uniform-attention holds at zero."""
    return [name for name, layer, key in model.named_parameters()
            if key in _UNIFORM_FREEZE.get(type(layer).__name__, ())]


def _non_negative(x: Any) -> bool:
    values = x.data if hasattr(x, "nnz") else x
    return bool(values.size == 0 or values.min() >= 0)


def _describe_model(a: argparse.Namespace, in_dim: int, classes: int, nparams: int) -> str:
    name = {"additive": "GATConv", "gatv2": "GATv2Conv"}.get(a.score, f"GraphAttention[{a.score}]")
    heads_out = f"{a.output_heads} head{'s' if a.output_heads > 1 else ''}, mean"
    return (f"{name}({in_dim} -> {a.heads} heads x {a.hidden}) -> ELU -> {name}({a.heads * a.hidden} -> "
            f"{classes}, {heads_out}); dropout {a.dropout}"
            f"{'; attention frozen uniform' if a.uniform_attention else ''}; {nparams:,} parameters")


class DistractorAttention(NamedTuple):
    """Attention the first layer pays to distractor neighbours, and what uniform weights would pay."""

    attention: float
    uniform: float


def _first_attention_layer(model: Any) -> Any:
    """The first sub-layer that keeps the attention context of its latest forward (or None)."""
    for _, layer in model.children():
        if hasattr(layer, "last_context"):
            return layer
    return None


def distractor_attention(model: Any, data: Any) -> DistractorAttention | None:
    """How much attention the first layer pays to distractor neighbours (synthetic data only).

    Over the labelled nodes and the heads: ``attention``, the mean total weight
    of the edges from distractors, and ``uniform``, what uniform weights would
    give (the mean share of distractors among the neighbours, self-loop
    included). Reads the attention inputs the last (evaluation) forward cached;
    None without distractors or without such a forward.
    """
    from .arrays import to_numpy
    from .attention import attention_weights

    layer = _first_attention_layer(model)
    ctx = None if layer is None else layer.last_context
    if data.distractors is None or ctx is None:
        return None
    spec, g = ctx.spec, ctx.graph
    w = to_numpy(attention_weights(g, ctx.q, ctx.k, score=spec.score, att=ctx.att, tau=spec.tau,
                                   negative_slope=spec.negative_slope, backend=ctx.backend))
    rows, degrees = to_numpy(g.row_ids()), to_numpy(g.degrees())
    from_distractor = data.distractors[to_numpy(g.indices)]
    labelled = ~data.distractors
    mass = np.bincount(rows, weights=w.mean(axis=1) * from_distractor, minlength=g.n_dst)
    share = np.bincount(rows, weights=from_distractor, minlength=g.n_dst) / np.maximum(degrees, 1)
    return DistractorAttention(float(mass[labelled].mean()), float(share[labelled].mean()))


class _Arrays(NamedTuple):
    """The arrays :func:`fit` trains on, on the device of the model."""

    x: Any
    graph: Any
    y: Any
    train_mask: Any
    val_mask: Any
    test_mask: Any


def _load_data(a: argparse.Namespace, log: Any = None) -> tuple[Any, Any]:
    """``(data set, features)``: non-negative features row-normalised."""
    from .datasets import load_npz, planetoid, row_normalize, synthetic

    if a.data is None:
        data = synthetic(seed=a.seed)
    elif _is_planetoid_name(a.data):
        data = planetoid(a.data, log=log)
    else:
        data = _load_file(a.data, load_npz)
    # Row-normalise non-negative features (bag-of-words, as the paper and PyG's NormalizeFeatures);
    # signed features (the synthetic Gaussian ones) are left alone: their row sums mean nothing.
    x = row_normalize(data.x) if _non_negative(data.x) else data.x
    return data, x


def _is_planetoid_name(value: str) -> bool:
    """``--data cora`` (any case) names a Planetoid data set; a file of that name is given as ``./cora``."""
    from .planetoid import NAMES

    return value.lower() in NAMES


def _load_file(path: str, load_npz: Any) -> Any:
    """``load_npz(path)``, with a hint when the file is a graph format that ``--data`` does not take."""
    from .datasets import DatasetError
    from .planetoid import NAMES

    if not os.path.exists(path) and not path.lower().endswith(".npz"):
        raise DatasetError(f"--data {path}: no such file, and not a data set name ({', '.join(NAMES)})")
    try:
        return load_npz(path)
    except DatasetError as exc:
        if not path.lower().endswith(".npz") and "not a readable .npz" in str(exc):
            raise DatasetError(f"{path}: --data takes a data set, an .npz archive of arrays in the layout of "
                               f"docs/data.md (numpy.savez); Matrix Market files and edge lists hold a graph "
                               f"without features or labels (use them with 'sparsegat bench --graph')") from None
        raise


def _one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line (the command line prints exactly one line per error)."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _choose_backend(a: argparse.Namespace) -> tuple[str, str]:
    """``(backend, array kind)``, the backend imported (failing early, with the reason) and threaded."""
    from ._tuning import set_numba_threads
    from .backends import get_backend, select_backend

    kind = "cupy" if a.backend == "cupy" else "numpy"
    backend = select_backend(kind, a.backend)
    get_backend(backend)
    if a.threads and backend == "numba":
        try:
            set_numba_threads(a.threads)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    return backend, kind


def _on_device(kind: str, data: Any, x: Any, model: Any) -> _Arrays:
    """The training arrays on ``kind``'s device; the model moved there too."""
    g, y = data.graph, data.y
    if kind == "cupy":
        import cupy
        import cupyx.scipy.sparse as csp

        x = csp.csr_matrix(x) if data.features_sparse else cupy.asarray(x)
        g, y = g.to("cupy"), cupy.asarray(y)
        model.to("cupy")
    return _Arrays(x, g, y, data.train_mask, data.val_mask, data.test_mask)


def _summary(a: argparse.Namespace, data: Any, fitted: FitResult, backend: str,
             distract: DistractorAttention | None, t_start: float) -> dict[str, Any]:
    """The figures that ``--json`` prints (``total_seconds``: since ``t_start``, a ``perf_counter`` time)."""
    best, last = fitted.best, fitted.last
    result = {
        "test_accuracy": best.test,
        "val_accuracy": best.val,
        "best_epoch": best.epoch,
        "final_test_accuracy": last.test,
        "final_val_accuracy": last.val,
        "final_train_loss": last.loss,
        "majority_test_accuracy": data.majority_accuracy(),
        "epochs": a.epochs,
        "train_seconds": fitted.seconds,
        "first_epoch_seconds": fitted.first_epoch_seconds,
        "total_seconds": time.perf_counter() - t_start,
        "backend": backend,
        "score": a.score,
        "uniform_attention": bool(a.uniform_attention),
        "seed": a.seed,
        "data": a.data if a.data is not None else "synthetic",
        "num_nodes": data.num_nodes,
        "num_edges": data.graph.nnz,
    }
    if distract is not None:
        result["distractor_attention"], result["distractor_share"] = distract.attention, distract.uniform
    return result


def _print_summary(a: argparse.Namespace, fitted: FitResult, majority: float,
                   distract: DistractorAttention | None, out: TextIO) -> None:
    best, last, seconds = fitted.best, fitted.last, fitted.seconds
    print(f"result    test accuracy {best.test:.3f} at the best validation epoch {best.epoch} "
          f"(val {best.val:.3f}); last epoch: val {last.val:.3f}, test {last.test:.3f}", file=out)
    print(f"baseline  majority class {majority:.3f} on the test nodes", file=out)
    if distract is not None:
        print(f"attention the first layer gives {100 * distract.attention:.0f}% of its weight to distractor "
              f"neighbours; uniform weights would give them {100 * distract.uniform:.0f}%", file=out)
    print(f"time      {a.epochs} epochs in {seconds:.2f} s ({1000 * seconds / a.epochs:.1f} ms per "
          f"epoch with its evaluation; the first took {fitted.first_epoch_seconds:.2f} s)", file=out)
    if a.save:
        print(f"saved     the model of epoch {best.epoch} to {a.save} (sparsegat predict --model {a.save})", file=out)


def _model_file_metadata(a: argparse.Namespace, data: Any, fitted: FitResult) -> dict[str, Any]:
    """What ``--save`` records beside the model: the preprocessing ``sparsegat predict`` repeats, and provenance."""
    return {"command": "sparsegat train", "data": a.data if a.data is not None else "synthetic", "seed": a.seed,
            "row_normalize": _non_negative(data.x), "num_features": data.num_features,
            "num_classes": data.num_classes, "best_epoch": fitted.best.epoch, "val_accuracy": fitted.best.val,
            "test_accuracy": None if math.isnan(fitted.best.test) else fitted.best.test}


def run(a: argparse.Namespace, log: Any = None, out: Any = None) -> dict[str, Any]:
    """Train as the parsed arguments say; print progress to ``log`` (stderr) and the summary to ``out`` (stdout).

    Tunes the process first (see :mod:`sparsegat._tuning`). Returns the figures that ``--json`` prints.
    """
    from . import nn, optim
    from ._tuning import tune_process

    log = sys.stderr if log is None else log
    out = sys.stdout if out is None else out
    if getattr(a, "workers", 0) or getattr(a, "scheduler", None):  # on a Dask cluster
        from .distributed.training import run_cli
        return run_cli(a, log, out)
    t_start = time.perf_counter()
    for note in tune_process(a.blas_threads).notes:
        print(f"note      {note}", file=log)
    data, x = _load_data(a, log)
    backend, kind = _choose_backend(a)
    model = build_model(a.score, data.num_features, data.num_classes, a.hidden, a.heads, a.output_heads,
                        a.dropout, a.seed, backend)
    frozen = _uniform_attention_params(model) if a.uniform_attention else []
    for layer, key in _frozen_refs(model, frozen):
        layer.params[key][...] = 0
    arrays = _on_device(kind, data, x, model)
    opt = optim.Adam(model, lr=a.lr, weight_decay=a.weight_decay)
    print(f"data      {data.describe()}", file=out)
    print(f"model     {_describe_model(a, data.num_features, data.num_classes, model.num_parameters())}", file=out)
    print(f"optimizer Adam lr {a.lr:g}, weight decay {a.weight_decay:g}; backend {backend}; seed {a.seed}", file=out)
    out.flush()

    fitted = fit(model, arrays, opt, epochs=a.epochs, restore_best=bool(a.save), freeze=frozen, log=log,
                 log_every=a.log_every)
    if a.save:  # a model file: the architecture too, so that load_model and `sparsegat predict` need nothing else
        nn.save_model(model, a.save, metadata=_model_file_metadata(a, data, fitted))
    distract = distractor_attention(model, data)
    result = _summary(a, data, fitted, backend, distract, t_start)
    _print_summary(a, fitted, result["majority_test_accuracy"], distract, out)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``sparsegat train``; returns the exit status (0 ok, 1 bad data or failure, 2 bad arguments)."""
    from .datasets import DatasetError

    parser = build_parser()
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
        _check_args(args)
    except UsageError as exc:
        parser.print_usage(sys.stderr)
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    try:
        result = run(args)
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except FileNotFoundError as exc:
        if exc.filename:
            print(f"{PROG}: error: {exc.filename}: {(exc.strerror or 'no such file').lower()}", file=sys.stderr)
        else:
            print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except (DatasetError, ValueError, TypeError, OSError, ImportError) as exc:
        if os.environ.get("SPARSEGAT_DEBUG"):
            raise
        print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except MemoryError:
        if os.environ.get("SPARSEGAT_DEBUG"):
            raise
        print(f"{PROG}: error: out of memory (data set {args.data or 'synthetic'})", file=sys.stderr)
        return 1
    except Exception as exc:  # a bug: one line, never a traceback (SPARSEGAT_DEBUG=1 shows it)
        if os.environ.get("SPARSEGAT_DEBUG"):
            raise
        print(f"{PROG}: internal error: {type(exc).__name__}: {_one_line(exc)} "
              f"(rerun with SPARSEGAT_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
