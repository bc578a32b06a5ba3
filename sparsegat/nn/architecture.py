"""A model's architecture as JSON-ready data, and the model rebuilt from it.

:func:`describe` turns a model of the built-in layers into nested dicts of plain
values (layer type names and constructor arguments); :func:`build` calls the
constructors again. ``build`` is written for data read from a file, which may be
malformed or hostile: only the layer types of :data:`LAYER_TYPES` can be named,
every argument is checked for its JSON type before a constructor sees it, and
sizes are bounded so that a few bytes of JSON cannot make it allocate gigabytes.
Nothing from the data is ever executed or imported.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from .gat import GATConv, GATv2Conv, GraphAttention
from .layers import ELU, Dropout, Linear, ReLU, Sequential
from .module import Module

#: Deepest nesting of containers accepted by :func:`build` (real models nest one or two levels).
MAX_DEPTH = 32


def _dtype_name(layer: Module) -> str:
    return np.dtype(layer.dtype).name


def _fill_value(value: Any) -> Any:
    """A layer's checked ``fill_value`` (str, float or float64 array) as a JSON value."""
    if isinstance(value, np.ndarray):
        return [float(v) for v in value]
    return value


def _heads_args(layer: Any) -> dict[str, Any]:
    """The constructor arguments GATConv and GATv2Conv share."""
    return {"in_dim": list(layer.in_dim) if isinstance(layer.in_dim, tuple) else layer.in_dim,
            "out_dim": layer.out_dim, "heads": layer.heads, "concat": layer.concat,
            "negative_slope": layer.negative_slope, "dropout": layer.dropout,
            "add_self_loops": layer.add_self_loops, "residual": layer.residual,
            "edge_dim": layer.edge_dim, "fill_value": _fill_value(layer.fill_value),
            "dtype": _dtype_name(layer)}


def _describe_gatconv(layer: Any) -> dict[str, Any]:
    return {**_heads_args(layer), "bias": "bias" in layer.params}


def _describe_gatv2conv(layer: Any) -> dict[str, Any]:
    return {**_heads_args(layer), "bias": layer.has_bias, "share_weights": layer.share_weights}


def _describe_graph_attention(layer: Any) -> dict[str, Any]:
    return {"in_dim": layer.in_dim, "out_dim": layer.out_dim, "heads": layer.heads, "score": layer.score,
            "residual": layer.residual, "tau": layer.tau, "learn_tau": "tau" in layer.params,
            "dropout": layer.dropout, "add_self_loops": layer.add_self_loops, "dtype": _dtype_name(layer)}


#: JSON type of every constructor argument, per layer type: "int", "float", "bool", "str",
#: "dtype", "in_dim" (an int or a pair of ints), "int?" (an int or null), "fill" (a string,
#: a number or a list of numbers).
_GAT_ARGS = {"in_dim": "in_dim", "out_dim": "int", "heads": "int", "concat": "bool", "negative_slope": "float",
             "dropout": "float", "add_self_loops": "bool", "residual": "bool", "edge_dim": "int?",
             "fill_value": "fill", "dtype": "dtype", "bias": "bool"}


class LayerType:
    """How one layer type is described and rebuilt."""

    def __init__(self, cls: type, args: dict[str, str], describe: Callable[[Any], dict[str, Any]],
                 has_backend: bool = False) -> None:
        self.cls = cls
        self.args = args
        self.describe = describe
        self.has_backend = has_backend


#: The layer types a model file may name. Subclasses are not described: their
#: constructors may take other arguments.
LAYER_TYPES: dict[str, LayerType] = {
    "Linear": LayerType(Linear, {"in_dim": "int", "out_dim": "int", "bias": "bool", "dtype": "dtype"},
                        lambda l: {"in_dim": l.in_dim, "out_dim": l.out_dim, "bias": "b" in l.params,
                                   "dtype": _dtype_name(l)}),
    "ELU": LayerType(ELU, {"alpha": "float"}, lambda l: {"alpha": l.alpha}),
    "ReLU": LayerType(ReLU, {}, lambda l: {}),
    "Dropout": LayerType(Dropout, {"p": "float"}, lambda l: {"p": l.p}),
    "GATConv": LayerType(GATConv, _GAT_ARGS, _describe_gatconv, has_backend=True),
    "GATv2Conv": LayerType(GATv2Conv, {**_GAT_ARGS, "share_weights": "bool"}, _describe_gatv2conv,
                           has_backend=True),
    "GraphAttention": LayerType(GraphAttention, {"in_dim": "int", "out_dim": "int", "heads": "int", "score": "str",
                                                 "residual": "bool", "tau": "float", "learn_tau": "bool",
                                                 "dropout": "float", "add_self_loops": "bool", "dtype": "dtype"},
                                _describe_graph_attention, has_backend=True),
}


# ---------------------------------------------------------------------- describe
def describe(model: Module) -> dict[str, Any]:
    """The architecture of ``model`` as JSON-ready data.

    ``{"type": "Sequential", "layers": [...]}`` for a container, ``{"type": name,
    "args": {...}}`` for a layer, with the constructor arguments that rebuild it
    (not ``seed`` or ``backend``: the parameters come from the file, and the backend
    is a choice of the machine that loads it).

    Raises
    ------
    TypeError
        ``model`` is not a :class:`~sparsegat.nn.Module`.
    ValueError
        A layer type that cannot be described (a custom layer or a subclass), naming it.
    """
    if not isinstance(model, Module):
        raise TypeError(f"model must be a sparsegat.nn layer or model, got {type(model).__name__}")
    return _describe(model, "model")


def _describe(layer: Module, where: str) -> dict[str, Any]:
    name = type(layer).__name__
    if type(layer) is Sequential:
        return {"type": "Sequential",
                "layers": [_describe(child, f"{where}[{i}]") for i, child in enumerate(layer.layers)]}
    spec = LAYER_TYPES.get(name)
    if spec is None or type(layer) is not spec.cls:
        known = ", ".join(["Sequential", *LAYER_TYPES])
        raise ValueError(f"{where} is a {type(layer).__module__}.{name}, which a model file cannot describe "
                         f"(it records the layer types {known}); save its parameters with nn.save_params "
                         f"and rebuild the model in code")
    return {"type": name, "args": spec.describe(layer)}


# ---------------------------------------------------------------------- build
def build(spec: Any, max_numbers: int, backend: str | None = None) -> Module:
    """The model that ``spec`` (from :func:`describe`, read back from JSON) describes.

    Parameters
    ----------
    spec : dict
        The architecture record.
    max_numbers : int
        Most numbers one layer may hold, approximately (a model file passes the
        count of numbers its arrays hold): a layer whose sizes ask for more is
        refused before it allocates anything.
    backend : str, optional
        ``backend=`` of the attention layers.

    Raises
    ------
    ValueError
        Malformed records: an unknown layer type, missing, unknown or ill-typed
        arguments, values the constructor refuses, sizes beyond ``max_numbers``,
        nesting deeper than :data:`MAX_DEPTH`; the message names the layer
        (``model[1]``) and the argument.
    """
    return _build(spec, "model", 0, max_numbers, backend)


def _build(spec: Any, where: str, depth: int, max_numbers: int, backend: str | None) -> Module:
    if depth > MAX_DEPTH:
        raise ValueError(f"{where}: containers nested more than {MAX_DEPTH} deep")
    if not isinstance(spec, dict):
        raise ValueError(f"{where} must be a JSON object with 'type', got {type(spec).__name__}")
    kind = spec.get("type")
    if kind == "Sequential":
        _exact_keys(spec, {"type", "layers"}, where)
        layers = spec["layers"]
        if not isinstance(layers, list):
            raise ValueError(f"{where}.layers must be a list, got {type(layers).__name__}")
        return Sequential(*[_build(s, f"{where}[{i}]", depth + 1, max_numbers, backend)
                            for i, s in enumerate(layers)])
    layer_type = LAYER_TYPES.get(kind) if isinstance(kind, str) else None
    if layer_type is None:
        known = ", ".join(["Sequential", *LAYER_TYPES])
        raise ValueError(f"{where} has the unknown layer type {kind!r} (known: {known})")
    _exact_keys(spec, {"type", "args"}, where)
    raw = spec["args"]
    if not isinstance(raw, dict):
        raise ValueError(f"{where}.args must be a JSON object, got {type(raw).__name__}")
    _exact_keys(raw, set(layer_type.args), f"{where} ({kind}) args")
    args = {name: _value(raw[name], expected, f"{where}.{name}") for name, expected in layer_type.args.items()}
    _check_size(kind, args, where, max_numbers)
    if layer_type.has_backend:
        args["backend"] = backend
    try:
        return layer_type.cls(**args)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where} ({kind}): {exc}") from None


def _exact_keys(obj: dict[str, Any], expected: set[str], where: str) -> None:
    missing = sorted(expected - set(obj))
    unknown = sorted(set(obj) - expected)
    if missing or unknown:
        raise ValueError(f"{where}: " + "; ".join(
            ([f"missing {', '.join(map(repr, missing))}"] if missing else [])
            + ([f"unknown {', '.join(map(repr, unknown))}"] if unknown else [])))


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _value(v: Any, expected: str, where: str) -> Any:
    """One argument checked against its JSON type (ValueError naming it otherwise)."""
    ok = {
        "int": _is_int(v),
        "int?": v is None or _is_int(v),
        "float": _is_number(v),
        "bool": isinstance(v, bool),
        "str": isinstance(v, str),
        "dtype": v in ("float32", "float64"),
        "in_dim": _is_int(v) or (isinstance(v, list) and len(v) == 2 and all(map(_is_int, v))),
        "fill": isinstance(v, str) or _is_number(v)
                or (isinstance(v, list) and 0 < len(v) <= 1 << 16 and all(map(_is_number, v))),
    }[expected]
    if not ok:
        what = {"int": "an integer", "int?": "an integer or null", "float": "a finite number",
                "bool": "true or false", "str": "a string", "dtype": '"float32" or "float64"',
                "in_dim": "an integer or a pair of integers", "fill": "a string, a number or a list of numbers"}
        raise ValueError(f"{where} must be {what[expected]}, got {v!r:.80}")
    if expected == "in_dim" and isinstance(v, list):
        return tuple(v)
    if expected == "dtype":
        return np.dtype(v)
    if expected == "float":
        return float(v)
    return v


def _check_size(kind: str, args: dict[str, Any], where: str, max_numbers: int) -> None:
    """Refuse sizes whose parameters would exceed ``max_numbers`` (checked before allocating).

    The estimate is the layer's largest weights, ``in_dim x heads*out_dim`` (plus
    ``edge_dim x heads*out_dim``): a lower bound of what its constructor allocates.
    """
    if "in_dim" not in args:
        return  # no parameters sized by the record
    sizes = {k: args[k] for k in ("in_dim", "out_dim", "heads", "edge_dim") if args.get(k) is not None}
    flat = [x for v in sizes.values() for x in (v if isinstance(v, tuple) else (v,))]
    if any(x < 1 for x in flat):
        return  # the constructor names the bad value
    in_dim = sizes["in_dim"]
    width = sizes.get("heads", 1) * sizes["out_dim"]
    numbers = (max(in_dim) if isinstance(in_dim, tuple) else in_dim) * width + sizes.get("edge_dim", 0) * width
    if numbers > max_numbers:
        shown = ", ".join(f"{k}={v}" for k, v in sizes.items())
        raise ValueError(f"{where} ({kind}): its sizes ({shown}) call for about {numbers:,} parameters, "
                         f"more than the {max_numbers:,} numbers the file holds")
