"""Class predictions of a saved model: :func:`predict` and the ``sparsegat predict`` command.

``sparsegat predict --model best.npz --data NAME|FILE.npz`` reads a model file of
``sparsegat train --save`` (or :func:`sparsegat.nn.save_model`), reads the data set
as ``sparsegat train --data`` does (a Planetoid name, an ``.npz`` file in the layout
of ``docs/data.md``, or without ``--data`` the built-in synthetic graph of
``--seed``), applies the preprocessing the file records (row-normalised features
for ``sparsegat train``'s models), runs one evaluation forward, prints the
accuracy on each split and writes the predicted classes (``--out``) and the class
probabilities (``--probabilities``) as ``.npy`` arrays.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, NamedTuple, Sequence, TextIO

import numpy as np

__all__ = ["Prediction", "predict", "input_width", "main"]

PROG = "sparsegat predict"


class Prediction(NamedTuple):
    """What :func:`predict` returns, in the array library of the model."""

    classes: Any          #: ``(n,)`` int64: the most probable class of every node
    probabilities: Any    #: ``(n, classes)``: the softmax of the logits


def predict(model: Any, x: Any, graph: Any) -> Prediction:
    """Class predictions and probabilities of ``model`` on every node, from one evaluation forward.

    The forward runs with ``training=False`` whatever the model's mode (which is left
    as it was).

    Parameters
    ----------
    model : sparsegat.nn.Module
        Maps ``(x, graph)`` to logits ``(n, classes)``.
    x : array or sparse matrix
        Node features, as the model was trained on them (same preprocessing).
    graph : sparsegat.CSRGraph

    Returns
    -------
    Prediction
        ``classes (n,)`` and ``probabilities (n, classes)`` (rows sum to 1).
    """
    from .arrays import array_kind, namespace
    from .nn.module import Module

    if not isinstance(model, Module):
        raise TypeError(f"model must be a sparsegat.nn Module, got {type(model).__name__}")
    logits = model.forward(x, graph, training=False)
    if array_kind(logits) is None or logits.ndim != 2:
        what = f"shape {tuple(logits.shape)}" if hasattr(logits, "shape") else type(logits).__name__
        raise ValueError(f"the model must output logits (nodes, classes), got {what}")
    xp = namespace(logits)
    shifted = logits - logits.max(axis=1, keepdims=True)
    prob = xp.exp(shifted)
    prob /= prob.sum(axis=1, keepdims=True)
    return Prediction(logits.argmax(axis=1).astype(np.int64), prob)


def input_width(model: Any) -> int | None:
    """The feature width the first layer with an ``in_dim`` takes (its source width for a pair), or None."""
    for layer in _layers(model):
        in_dim = getattr(layer, "in_dim", None)
        if in_dim is not None:
            return int(in_dim[0]) if isinstance(in_dim, tuple) else int(in_dim)
    return None


def _layers(model: Any) -> Any:
    """Every layer of ``model`` in forward order, containers expanded."""
    children = model.children()
    if not children:
        yield model
    for _, child in children:
        yield from _layers(child)


# ---------------------------------------------------------------------- the command line
def build_parser() -> argparse.ArgumentParser:
    from .train import _Parser

    p = _Parser(prog=PROG, description=(
        "Run a model saved by 'sparsegat train --save' (or sparsegat.nn.save_model) on a node-classification "
        "data set: class predictions and probabilities for every node, and the accuracy on each split. "
        "The summary goes to stdout."))
    p.add_argument("--model", required=True, metavar="FILE.npz", help="a model file (sparsegat train --save)")
    p.add_argument("--data", metavar="NAME|FILE.npz",
                   help="cora, citeseer or pubmed, or a data set file (layout in docs/data.md), read as "
                        "'sparsegat train --data' reads it (default: the built-in synthetic graph of --seed)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic graph without --data (default: 0)")
    p.add_argument("--out", metavar="FILE.npy", help="write the predicted classes, int64 (n,)")
    p.add_argument("--probabilities", metavar="FILE.npy", help="write the class probabilities, (n, classes)")
    p.add_argument("--backend", choices=("numpy", "numba", "cupy"), default=None,
                   help="attention backend (default: numba when installed, else numpy; cupy runs on the GPU)")
    p.add_argument("--json", action="store_true", help="end with one line of JSON with the results on stdout")
    return p


class _Checked(NamedTuple):
    """A model file checked against a data set: everything :func:`run` needs."""

    model: Any
    metadata: dict[str, Any]
    version: str
    data: Any
    x: Any


def _model_and_data(a: argparse.Namespace, log: TextIO) -> _Checked:
    """The model of ``--model`` and the data of ``--data``, preprocessed as the file records, and matching."""
    from .nn.checkpoint import read_model_file
    from .train import _load_data

    saved = read_model_file(a.model)
    data, x_train_rule = _load_data(argparse.Namespace(data=a.data, seed=a.seed), log)
    x = x_train_rule if saved.metadata.get("row_normalize") is True else data.x
    width = input_width(saved.model)
    if width is not None and width != data.num_features:
        raise ValueError(f"{a.model}: the model takes {width} input features (its first layer's in_dim), but "
                         f"the data set {data.name} has {data.num_features}; it was trained on other data")
    return _Checked(saved.model, saved.metadata, saved.version, data, x)


def _accuracies(classes: np.ndarray, data: Any) -> dict[str, float]:
    correct = classes == data.y
    return {split: float(correct[getattr(data, f"{split}_mask")].mean())
            for split in ("train", "val", "test") if getattr(data, f"{split}_mask").any()}


def run(a: argparse.Namespace, log: TextIO | None = None, out: TextIO | None = None) -> dict[str, Any]:
    """Predict as the parsed arguments say; the summary goes to ``out``; returns what ``--json`` prints."""
    from .arrays import to_numpy
    from .train import _choose_backend, _on_device

    log = sys.stderr if log is None else log
    out = sys.stdout if out is None else out
    a.threads = 0  # _choose_backend's numba thread setting: numba's default
    checked = _model_and_data(a, log)
    backend, kind = _choose_backend(a)
    model, data = checked.model, checked.data
    for layer in _layers(model):
        if hasattr(layer, "backend"):
            layer.backend = backend
    arrays = _on_device(kind, data, checked.x, model)
    result = predict(model, arrays.x, arrays.graph)
    classes, prob = to_numpy(result.classes), to_numpy(result.probabilities)
    num_classes = int(prob.shape[1])
    if data.num_classes > num_classes:
        raise ValueError(f"{a.model}: the model predicts {num_classes} classes, but the data set {data.name} "
                         f"has labels up to {data.num_classes - 1}; it was trained on other data")
    if a.out:
        np.save(a.out, classes)
    if a.probabilities:
        np.save(a.probabilities, prob)
    accuracy = _accuracies(classes, data)
    summary = {"model": a.model, "model_version": checked.version, "data": a.data or "synthetic",
               "num_nodes": data.num_nodes, "num_classes": num_classes, "backend": backend,
               "row_normalized": checked.x is not data.x, "accuracy": accuracy,
               "predicted_counts": np.bincount(classes, minlength=num_classes).tolist(),
               "out": a.out, "probabilities": a.probabilities}
    _print_summary(summary, data, out)
    return summary


def _print_summary(s: dict[str, Any], data: Any, out: TextIO) -> None:
    print(f"model     {s['model']} (sparsegat {s['model_version']}), {s['num_classes']} classes", file=out)
    print(f"data      {data.describe()}{'; features row-normalised' if s['row_normalized'] else ''}", file=out)
    shown = ", ".join(f"{split} {acc:.3f}" for split, acc in s["accuracy"].items())
    print(f"accuracy  {shown}", file=out)
    print(f"predicted {', '.join(f'class {c}: {n}' for c, n in enumerate(s['predicted_counts']))}", file=out)
    for key, what in (("out", "classes"), ("probabilities", "probabilities")):
        if s[key]:
            print(f"saved     {what} to {s[key]}", file=out)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``sparsegat predict``; returns the exit status (0 ok, 1 bad file or failure, 2 bad arguments)."""
    from .datasets import DatasetError
    from .train import UsageError, _one_line

    parser = build_parser()
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
        if args.seed < 0:
            raise UsageError(f"--seed must be >= 0, got {args.seed}")
    except UsageError as exc:
        parser.print_usage(sys.stderr)
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    try:
        result = run(args)
    except FileNotFoundError as exc:
        where = exc.filename or _one_line(exc)
        print(f"{PROG}: error: {where}: {(exc.strerror or 'no such file').lower()}", file=sys.stderr)
        return 1
    except (DatasetError, ValueError, TypeError, OSError, ImportError, MemoryError) as exc:
        if os.environ.get("SPARSEGAT_DEBUG"):
            raise
        print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
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
