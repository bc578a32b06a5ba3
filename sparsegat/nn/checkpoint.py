"""Model files that describe themselves: ``save_model`` and ``load_model``.

A model file is the ``.npz`` parameter file of :func:`sparsegat.nn.save_params`
(one array per parameter, under its qualified name) plus one more array,
``__sparsegat_model__``: the UTF-8 bytes (``uint8``) of a JSON record with the
architecture (layer types and constructor arguments, :mod:`.architecture`), the
sparsegat version that wrote it and optional metadata. Everything in it is a
plain numeric array, so it is read with ``allow_pickle=False`` and
:func:`load_params` still reads its parameters; nothing from the file is ever
unpickled, imported or executed.
"""

from __future__ import annotations

import json
import os
from typing import Any, NamedTuple

import numpy as np

from .. import _version
from ..arrays import to_numpy
from . import architecture
from .module import Module
from .params import MODEL_RECORD_KEY

#: The ``format`` field of the record, and the versions of the layout this code reads.
FORMAT = "sparsegat.model"
FORMAT_VERSION = 1
#: Largest JSON record accepted (real ones are a few kilobytes).
MAX_RECORD_BYTES = 1 << 20


class ModelFile(NamedTuple):
    """What :func:`read_model_file` returns."""

    model: Module                #: the rebuilt model, parameters loaded, in evaluation mode
    metadata: dict[str, Any]     #: the ``metadata`` given to :func:`save_model` (``{}`` when none)
    version: str                 #: the sparsegat version that wrote the file


def save_model(model: Module, path: str | os.PathLike, *, metadata: dict[str, Any] | None = None) -> None:
    """Write ``model``'s architecture and parameters to the ``.npz`` file ``path``.

    :func:`load_model` rebuilds the model from the file alone. Parameters are
    stored as :func:`save_params` stores them (host copies, qualified names), so
    ``load_params`` reads the file too. numpy adds ``.npz`` to a path without it.

    Parameters
    ----------
    model : Module
        Built from ``Sequential``, ``Linear``, ``ELU``, ``ReLU``, ``Dropout``,
        ``GATConv``, ``GATv2Conv`` and ``GraphAttention`` (the types a file can
        name). Seeds and ``backend=`` are not recorded.
    path : str or path-like
    metadata : dict, optional
        Anything JSON can hold without NaN or infinity (``sparsegat train`` records
        its data set, preprocessing and best epoch), given back by
        :func:`read_model_file`.

    Raises
    ------
    TypeError
        ``model`` is not a Module, or ``metadata`` not a JSON-serialisable dict.
    ValueError
        A layer type a file cannot describe, or non-numeric parameters.
    """
    record = {"format": FORMAT, "format_version": FORMAT_VERSION, "sparsegat_version": _version.__version__,
              "architecture": architecture.describe(model), "metadata": _checked_metadata(metadata)}
    arrays = {}
    for name, layer, key in model.named_parameters():
        a = to_numpy(layer.params[key])
        if a.dtype.kind != "f":
            raise ValueError(f"parameter {name!r} has dtype {a.dtype}; only float parameters can be saved")
        arrays[name] = a
    text = json.dumps(record, allow_nan=False, separators=(",", ":"))
    arrays[MODEL_RECORD_KEY] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    np.savez(path, **arrays)


def _checked_metadata(metadata: Any) -> dict[str, Any]:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict, got {type(metadata).__name__}")
    try:
        json.dumps(metadata, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"metadata must hold JSON values only (no NaN or infinity): {exc}") from None
    return metadata


def load_model(path: str | os.PathLike, *, backend: str | None = None) -> Module:
    """The model saved by :func:`save_model` in ``path``, rebuilt, with its parameters, in evaluation mode.

    Parameters
    ----------
    path : str or path-like
    backend : str, optional
        ``backend=`` of the attention layers (``None``: dispatch by array type).

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ValueError
        Anything wrong with the file, naming it: not an ``.npz`` archive of plain
        arrays (object arrays are refused, never unpickled), no architecture record
        (a file of ``save_params``), a record that is not JSON or names an unknown
        layer type or ill-typed arguments, a newer format, sizes beyond what the
        file holds, parameters missing, unexpected or of the wrong shape or dtype.
    """
    return read_model_file(path, backend=backend).model


def read_model_file(path: str | os.PathLike, *, backend: str | None = None) -> ModelFile:
    """:func:`load_model`, with the file's metadata and the version that wrote it."""
    from ..backends import BACKEND_NAMES
    from ..datasets import read_npz_arrays

    if backend is not None and backend not in BACKEND_NAMES:
        raise ValueError(f"backend must be None or one of {', '.join(BACKEND_NAMES)}; got {backend!r}")
    where = os.fspath(path)
    arrays = read_npz_arrays(path, "a model file (.npz written by nn.save_model)")
    raw = arrays.pop(MODEL_RECORD_KEY, None)
    if raw is None:
        raise ValueError(f"{where}: no architecture record ({MODEL_RECORD_KEY!r}): a parameter file of "
                         f"nn.save_params or an older sparsegat; build the model in code and use nn.load_params")
    record = _parse_record(raw, where)
    numbers = sum(int(a.size) for a in arrays.values())
    try:
        model = architecture.build(record["architecture"], numbers, backend)
        model.load_state_dict(arrays)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {exc}") from None
    return ModelFile(model.eval(), record["metadata"], record["sparsegat_version"])


def _parse_record(raw: np.ndarray, where: str) -> dict[str, Any]:
    """The JSON record of a model file, checked field by field."""
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise ValueError(f"{where}: {MODEL_RECORD_KEY!r} must be a 1-D uint8 array (UTF-8 JSON), "
                         f"got {raw.dtype} of shape {raw.shape}")
    if raw.size > MAX_RECORD_BYTES:
        raise ValueError(f"{where}: the architecture record has {raw.size:,} bytes, more than the "
                         f"{MAX_RECORD_BYTES:,} accepted")

    def no_constants(name: str) -> Any:
        raise ValueError(f"{name} is not a JSON number")

    try:
        record = json.loads(raw.tobytes().decode("utf-8"), parse_constant=no_constants)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ValueError(f"{where}: the architecture record is not valid JSON ({exc})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ValueError(f"{where}: the architecture record is not a {FORMAT!r} record")
    version = record.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"{where}: format_version must be a positive integer, got {version!r:.40}")
    if version > FORMAT_VERSION:
        raise ValueError(f"{where}: written in model-file format {version} (by sparsegat "
                         f"{record.get('sparsegat_version')!r:.40}); this sparsegat "
                         f"({_version.__version__}) reads format {FORMAT_VERSION}: upgrade it")
    expected = {"format", "format_version", "sparsegat_version", "architecture", "metadata"}
    missing, unknown = sorted(expected - set(record)), sorted(set(record) - expected)
    if missing or unknown:
        raise ValueError(f"{where}: the architecture record has missing fields {missing} and unknown fields "
                         f"{unknown}")
    if not isinstance(record["sparsegat_version"], str):
        raise ValueError(f"{where}: sparsegat_version must be a string")
    if not isinstance(record["metadata"], dict):
        raise ValueError(f"{where}: metadata must be a JSON object")
    return record
