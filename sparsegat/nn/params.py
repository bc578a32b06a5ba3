"""Parameter files: ``.npz`` archives of plain numeric arrays, never unpickled."""

from __future__ import annotations

import os

import numpy as np

from ..arrays import array_kind, namespace, to_numpy
from .module import Module

#: The array of a model file (:func:`sparsegat.nn.save_model`) that holds its architecture
#: record; not a parameter, so :func:`load_params` leaves it aside.
MODEL_RECORD_KEY = "__sparsegat_model__"


def save_params(model: Module, path: str | os.PathLike) -> None:
    """Write every parameter of ``model`` to the ``.npz`` file ``path``.

    Keys are the qualified names of :meth:`Module.named_parameters` (``"0.W"``,
    ``"2.att_src"``); arrays are copied to the host. numpy adds ``.npz`` to a
    path without it. Object (or other non-numeric) arrays are refused with
    ``ValueError``, so every file we write loads with ``allow_pickle=False``.
    """
    if not isinstance(model, Module):
        raise TypeError(f"model must be a sparsegat.nn layer or model, got {type(model).__name__}")
    arrays = {}
    for name, layer, key in model.named_parameters():
        a = to_numpy(layer.params[key])
        if a.dtype.kind not in "biuf":
            raise ValueError(f"parameter {name!r} has dtype {a.dtype}; only numeric arrays can be saved")
        arrays[name] = a
    np.savez(path, **arrays)


def load_params(model: Module, path: str | os.PathLike, strict: bool = True) -> Module:
    """Read parameters written by :func:`save_params` into ``model``, in place; returns ``model``.

    The file is opened with ``allow_pickle=False``: object arrays are refused
    with ``ValueError`` and nothing is ever unpickled. Every array must match the
    name and shape of a parameter of ``model``; it is converted to that
    parameter's dtype and array library (so a file saved from a GPU model loads
    into a CPU model and back). With ``strict=True`` (default) missing or
    unexpected names are errors too. Nothing is changed unless the whole file
    is valid. Model files of :func:`sparsegat.nn.save_model` are read too (their
    architecture record is not a parameter and is left aside).
    """
    if not isinstance(model, Module):
        raise TypeError(f"model must be a sparsegat.nn layer or model, got {type(model).__name__}")
    loaded = _read_arrays(path)
    loaded.pop(MODEL_RECORD_KEY, None)  # a model file's architecture record
    targets = {name: (layer, key) for name, layer, key in model.named_parameters()}
    unexpected = sorted(set(loaded) - set(targets))
    missing = sorted(set(targets) - set(loaded))
    if strict and (unexpected or missing):
        raise ValueError(f"{os.fspath(path)!r} does not match the model: missing {missing}, unexpected {unexpected}")
    for name in sorted(set(loaded) & set(targets)):
        layer, key = targets[name]
        if tuple(loaded[name].shape) != tuple(layer.params[key].shape):
            raise ValueError(f"{os.fspath(path)!r}: {name!r} has shape {tuple(loaded[name].shape)}, "
                             f"the model's has {tuple(layer.params[key].shape)}")
    for name in sorted(set(loaded) & set(targets)):
        layer, key = targets[name]
        current = layer.params[key]
        xp = namespace(array_kind(current) or "numpy")
        layer.params[key] = xp.asarray(loaded[name].astype(current.dtype))
    return model


def _read_arrays(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` file ``path``, numeric only, never unpickled (ValueError otherwise).

    Read by :func:`sparsegat.datasets.read_npz_arrays`: a corrupt or truncated archive, a
    member that is not an ``.npy`` array, an object array or a header that declares more
    data than the file holds is a ``ValueError`` naming the file, before any allocation.
    """
    from ..datasets import read_npz_arrays

    loaded = read_npz_arrays(path, "a parameter file (.npz written by nn.save_params)")
    for name, a in loaded.items():
        if a.dtype.kind not in "biuf":
            raise ValueError(f"{os.fspath(path)!r}: array {name!r} has dtype {a.dtype}; "
                             f"only numeric arrays are accepted")
    return loaded
