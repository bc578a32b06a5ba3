"""``sparsegat train``: node classification with a two-layer graph attention network.

Defaults are the GAT paper's Cora recipe (Velickovic et al., ICLR 2018): 8 heads x
8 hidden features with ELU, one output head (averaged), dropout 0.6 on the
inputs of both layers and on the attention weights, Adam with lr 0.005 and
weight decay 5e-4, row-normalised features, 300 epochs with an evaluation after
every epoch; the reported test accuracy is the one at the epoch of best
validation accuracy (the first such epoch, as PyG's example keeps it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Any, Sequence

import numpy as np

SCORE_CHOICES = ("additive", "gatv2", "cosine", "dot", "scaled_dot", "euclidean")
PROG = "sparsegat train"


class UsageError(Exception):
    """A bad command-line argument (exit status 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse would print and sys.exit
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description=(
        "Train a two-layer graph attention network for node classification on an .npz data set "
        "(layout of shared/data/README.md) or, without --data, on a built-in synthetic graph "
        "(a contextual stochastic block model with distractor nodes, where attention pays off). "
        "Defaults are the GAT paper's Cora recipe. Progress goes to stderr, the summary to stdout."))
    p.add_argument("--data", metavar="FILE.npz", help="data set file (default: the built-in synthetic graph)")
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
    p.add_argument("--save", metavar="FILE.npz", help="write the parameters of the best validation epoch")
    p.add_argument("--threads", type=int, default=0, metavar="N",
                   help="threads of the numba kernels (default 0: numba's default, all cores)")
    p.add_argument("--blas-threads", type=int, default=1, metavar="N",
                   help="threads of NumPy's OpenBLAS for the small dense products (default 1; 0 leaves it alone)")
    p.add_argument("--json", action="store_true", help="end with one line of JSON with the results on stdout")
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
    if a.score not in ("additive", "gatv2") and a.output_heads != 1:
        raise UsageError(f"--output-heads must be 1 with --score {a.score} (GraphAttention has no head averaging)")


def build_model(score: str, in_dim: int, num_classes: int, hidden: int = 8, heads: int = 8,
                output_heads: int = 1, dropout: float = 0.6, seed: int = 0, backend: str | None = None,
                dtype: Any = np.float32) -> Any:
    """``Dropout -> conv(in, hidden x heads) -> ELU -> Dropout -> conv(heads*hidden, classes)``.

    ``conv`` is GATConv (``score="additive"``), GATv2Conv (``"gatv2"``) or
    GraphAttention with that score and ``residual=False``; the output layer
    averages its heads (``concat=False``).
    """
    from . import nn

    seeds = [int(s.generate_state(1)[0]) for s in np.random.SeedSequence(seed).spawn(6)]
    common = dict(dtype=dtype, backend=backend)
    if score in ("additive", "gatv2"):
        conv = nn.GATConv if score == "additive" else nn.GATv2Conv
        first = conv(in_dim, hidden, heads=heads, dropout=dropout, seed=seeds[1], **common)
        last = conv(heads * hidden, num_classes, heads=output_heads, concat=False, dropout=dropout,
                    seed=seeds[4], **common)
    else:
        first = nn.GraphAttention(in_dim, hidden, heads=heads, score=score, residual=False, dropout=dropout,
                                  seed=seeds[1], **common)
        last = nn.GraphAttention(heads * hidden, num_classes, heads=1, score=score, residual=False,
                                 dropout=dropout, seed=seeds[4], **common)
    return nn.Sequential(nn.Dropout(dropout, seed=seeds[0]), first, nn.ELU(),
                         nn.Dropout(dropout, seed=seeds[3]), last)


#: Parameters frozen at zero by --uniform-attention: every edge of a row then gets the same score.
_UNIFORM_FREEZE = {"GATConv": ("att_src", "att_dst"), "GATv2Conv": ("att",),
                   "GraphAttention": ("W_q", "W_k", "tau")}


def _frozen(model: Any) -> list[tuple[Any, str]]:
    out = []
    for _, layer, key in model.named_parameters():
        if key in _UNIFORM_FREEZE.get(type(layer).__name__, ()):
            out.append((layer, key))
    return out


def _non_negative(x: Any) -> bool:
    values = x.data if hasattr(x, "nnz") else x
    return bool(values.size == 0 or values.min() >= 0)


def _describe_model(a: argparse.Namespace, in_dim: int, classes: int, nparams: int) -> str:
    name = {"additive": "GATConv", "gatv2": "GATv2Conv"}.get(a.score, f"GraphAttention[{a.score}]")
    heads_out = f"{a.output_heads} head{'s' if a.output_heads > 1 else ''}, mean"
    return (f"{name}({in_dim} -> {a.heads} heads x {a.hidden}) -> ELU -> {name}({a.heads * a.hidden} -> "
            f"{classes}, {heads_out}); dropout {a.dropout}"
            f"{'; attention frozen uniform' if a.uniform_attention else ''}; {nparams:,} parameters")


def limit_blas_threads(n: int = 1) -> bool:
    """Ask the OpenBLAS that NumPy loaded to use ``n`` threads; True when it could be told.

    The dense products of a GAT on a graph like Cora are tiny (thousands x 64);
    OpenBLAS's worker threads gain nothing on them but spin between calls and
    compete with the attention kernels' own threads, and on a busy machine a
    descheduled worker turns a 40 us product into milliseconds. Only the
    ``sparsegat train`` process does this (a library must not change its host's
    thread pools). Linux only (it reads /proc/self/maps); elsewhere a no-op.
    """
    import ctypes

    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "openblas" in line.lower() and ".so" in line}
    except OSError:
        return False
    done = False
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
                     "openblas_set_num_threads64_", "openblas_set_num_threads"):
            fn = getattr(lib, name, None)
            if fn is not None:
                fn(ctypes.c_int(n))
                done = True
                break
    return done


def keep_freed_memory() -> bool:
    """Let glibc's malloc keep freed memory for reuse; True when it could be told.

    Every epoch allocates and frees the same few dozen arrays of 100 KB to 1 MB.
    With glibc's defaults, blocks that size come from fresh ``mmap`` pages (or the
    heap top is trimmed back to the OS) and every use starts with page faults:
    about 15% of an epoch on Cora. Raising the mmap and trim thresholds makes
    freed blocks get reused. Only the ``sparsegat train`` process does this (a
    library must not change its host's allocator); elsewhere than glibc, a no-op.
    """
    import ctypes

    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the interpreter runs on
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    return all(mallopt(ctypes.c_int(opt), ctypes.c_int(value)) == 1
               for opt, value in ((m_mmap_threshold, 32 << 20), (m_trim_threshold, 256 << 20),
                                  (m_top_pad, 16 << 20)))


def distractor_attention(model: Any, data: Any) -> tuple[float, float] | None:
    """How much attention the first layer pays to distractor neighbours (synthetic data only).

    Returns ``(attention, uniform)``: over the labelled nodes and the heads, the
    mean total weight of the edges from distractors, and what uniform weights
    would give (the mean share of distractors among the neighbours, self-loop
    included). Reads the attention inputs the last (evaluation) forward cached.
    """
    from .arrays import to_numpy
    from .attention import attention_weights

    if data.distractors is None:
        return None
    ctx = getattr(model[1], "last_context", None)
    if ctx is None:
        return None
    spec = ctx.spec
    w = to_numpy(attention_weights(ctx.graph, ctx.q, ctx.k, score=spec.score, att=ctx.att, tau=spec.tau,
                                   negative_slope=spec.negative_slope, backend=ctx.backend))
    g = ctx.graph
    indptr, indices = to_numpy(g.indptr), to_numpy(g.indices)
    rows = np.repeat(np.arange(g.n_dst), np.diff(indptr))
    from_distractor = data.distractors[indices]
    labelled = ~data.distractors
    mass = np.bincount(rows, weights=w.mean(axis=1) * from_distractor, minlength=g.n_dst)
    share = np.bincount(rows, weights=from_distractor, minlength=g.n_dst) / np.maximum(np.diff(indptr), 1)
    return float(mass[labelled].mean()), float(share[labelled].mean())


def run(a: argparse.Namespace, log: Any = None, out: Any = None) -> dict[str, Any]:
    """Train as the parsed arguments say; print progress to ``log`` (stderr) and the summary to ``out`` (stdout).

    Returns the figures that ``--json`` prints.
    """
    log = sys.stderr if log is None else log
    out = sys.stdout if out is None else out
    from . import nn, optim
    from .backends import get_backend, select_backend
    from .datasets import load_npz, row_normalize, synthetic

    t_start = time.perf_counter()
    # Before any parallel kernel starts OpenMP (numba's default threading layer): idle
    # OpenMP workers sleep instead of spinning for long. Spinning workers wait out a busy
    # core at every barrier; on a shared 2-core machine the default spin (about 3 ms in
    # libgomp) made Cora's 300 epochs 5x slower. libgomp still spins 30000 rounds
    # (~0.3 ms) first: a sleeping worker takes ~50 us to wake, a spinning one ~2 us, and
    # an epoch starts a dozen parallel kernels with gaps shorter than that. Settings the
    # user made win.
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        os.environ.setdefault("GOMP_SPINCOUNT", "30000")
    if a.blas_threads:
        limit_blas_threads(a.blas_threads)
    keep_freed_memory()
    if a.data is not None:
        data = load_npz(a.data)
    else:
        data = synthetic(seed=a.seed)
    # Row-normalise non-negative features (bag-of-words, as the paper and PyG's NormalizeFeatures);
    # signed features (the synthetic Gaussian ones) are left alone: their row sums mean nothing.
    x = row_normalize(data.x) if _non_negative(data.x) else data.x
    kind = "cupy" if a.backend == "cupy" else "numpy"
    backend = select_backend(kind, a.backend)
    get_backend(backend)  # fail early, with the reason, when it cannot be imported
    if a.threads and backend == "numba":
        import numba

        if a.threads > numba.config.NUMBA_NUM_THREADS:
            raise UsageError(f"--threads {a.threads} exceeds numba's maximum of {numba.config.NUMBA_NUM_THREADS} "
                             f"(NUMBA_NUM_THREADS)")
        numba.set_num_threads(a.threads)
    g, y = data.graph, data.y
    masks = {"train": data.train_mask, "val": data.val_mask, "test": data.test_mask}
    model = build_model(a.score, data.num_features, data.num_classes, a.hidden, a.heads, a.output_heads,
                        a.dropout, a.seed, backend)
    frozen = _frozen(model) if a.uniform_attention else []
    for layer, key in frozen:
        layer.params[key][...] = 0
    xp = np
    if kind == "cupy":
        import cupy
        import cupyx.scipy.sparse as csp

        xp = cupy
        x = csp.csr_matrix(x) if data.features_sparse else cupy.asarray(x)
        g, y = g.to("cupy"), cupy.asarray(y)
        model.to("cupy")
    idx = {k: xp.asarray(np.flatnonzero(m)) for k, m in masks.items()}
    opt = optim.Adam(model, lr=a.lr, weight_decay=a.weight_decay)
    print(f"data      {data.describe()}", file=out)
    print(f"model     {_describe_model(a, data.num_features, data.num_classes, model.num_parameters())}", file=out)
    print(f"optimizer Adam lr {a.lr:g}, weight decay {a.weight_decay:g}; backend {backend}; seed {a.seed}", file=out)
    out.flush()

    best = {"val": -1.0, "test": 0.0, "train": 0.0, "epoch": 0}
    best_params: dict[str, Any] | None = None
    t0 = time.perf_counter()
    first_epoch_s = 0.0
    loss = float("nan")
    for epoch in range(1, a.epochs + 1):
        logits = model.forward(x, g, training=True)
        loss, dlogits = nn.softmax_cross_entropy(logits, y, idx["train"])
        model.backward(dlogits)
        for layer, key in frozen:
            layer.grads.pop(key, None)
        opt.step()
        correct = model.forward(x, g, training=False).argmax(axis=1) == y
        acc = {k: float(correct[i].mean()) for k, i in idx.items()}
        if acc["val"] > best["val"]:
            best = {"val": acc["val"], "test": acc["test"], "train": acc["train"], "epoch": epoch}
            if a.save:
                best_params = {n: layer.params[key].copy() for n, layer, key in model.named_parameters()}
        if epoch == 1:
            first_epoch_s = time.perf_counter() - t0
        if a.log_every and (epoch % a.log_every == 0 or epoch == 1 or epoch == a.epochs):
            print(f"epoch {epoch:4d}/{a.epochs}  loss {loss:.4f}  train {acc['train']:.3f}  val {acc['val']:.3f}  "
                  f"test {acc['test']:.3f}  (best val {best['val']:.3f} at {best['epoch']})", file=log, flush=True)
    train_seconds = time.perf_counter() - t0
    if a.save and best_params is not None:
        for n, layer, key in model.named_parameters():
            layer.params[key] = best_params[n]
        nn.save_params(model, a.save)

    majority = data.majority_accuracy()
    distract = distractor_attention(model, data)
    result = {
        "test_accuracy": best["test"],
        "val_accuracy": best["val"],
        "best_epoch": best["epoch"],
        "final_test_accuracy": acc["test"],
        "final_val_accuracy": acc["val"],
        "final_train_loss": loss,
        "majority_test_accuracy": majority,
        "epochs": a.epochs,
        "train_seconds": train_seconds,
        "first_epoch_seconds": first_epoch_s,
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
        result["distractor_attention"], result["distractor_share"] = distract
    print(f"result    test accuracy {best['test']:.3f} at the best validation epoch {best['epoch']} "
          f"(val {best['val']:.3f}); last epoch: val {acc['val']:.3f}, test {acc['test']:.3f}", file=out)
    print(f"baseline  majority class {majority:.3f} on the test nodes", file=out)
    if distract is not None:
        print(f"attention the first layer gives {100 * distract[0]:.0f}% of its weight to distractor neighbours; "
              f"uniform weights would give them {100 * distract[1]:.0f}%", file=out)
    print(f"time      {a.epochs} epochs in {train_seconds:.2f} s ({1000 * train_seconds / a.epochs:.1f} ms per "
          f"epoch with its evaluation; the first took {first_epoch_s:.2f} s)", file=out)
    if a.save:
        print(f"saved     parameters of epoch {best['epoch']} to {a.save}", file=out)
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
        print(f"{PROG}: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return 1
    except (DatasetError, ValueError, TypeError, OSError, ImportError) as exc:
        if os.environ.get("SPARSEGAT_DEBUG"):
            raise
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
