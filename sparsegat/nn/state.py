"""In-memory parameter state: ``Module.state_dict`` copies and ``Module.load_state_dict`` checks.

Kept apart from :mod:`sparsegat.nn.module` (the layer protocol) and from
:mod:`sparsegat.nn.params` (files): this is the dict form of the same named
parameters, with the checks a dict from elsewhere needs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Iterator, NamedTuple

import numpy as np

from ..arrays import array_kind, namespace, to_numpy


class LoadResult(NamedTuple):
    """What :meth:`Module.load_state_dict` did not match (as ``torch.nn.Module.load_state_dict``)."""

    missing_keys: list[str]      #: parameters of the model the dict does not hold (kept as they were)
    unexpected_keys: list[str]   #: entries of the dict the model has no parameter for (ignored)


class ParameterView:
    """The parameter arrays of a module, as PyTorch's ``model.parameters()``.

    Iterating gives the arrays themselves (live, in :meth:`Module.named_parameters`
    order; ``len()`` counts them). Unlike a bare iterator it can be iterated again,
    and it remembers the module, so the optimizers and the gradient-clipping
    functions accept it in place of the model (gradients live in the layers'
    ``grads``, not on the arrays).
    """

    def __init__(self, module: Any) -> None:
        self.module = module

    def __iter__(self) -> Iterator[Any]:
        for _, layer, key in self.module.named_parameters():
            yield layer.params[key]

    def __len__(self) -> int:
        return sum(1 for _ in self.module.named_parameters())

    def __repr__(self) -> str:
        return f"ParameterView({type(self.module).__name__}, {len(self)} arrays)"


def state_dict(module: Any, keep_vars: bool = False) -> dict[str, Any]:
    """``{qualified name: array}``: copies (``keep_vars=False``) or the live arrays."""
    if keep_vars:
        return {name: layer.params[key] for name, layer, key in module.named_parameters()}
    return {name: layer.params[key].copy() for name, layer, key in module.named_parameters()}


def load_state_dict(module: Any, state: Any, strict: bool = True) -> LoadResult:
    """Copy the arrays of ``state`` into ``module``'s parameters; see :meth:`Module.load_state_dict`."""
    if not isinstance(state, Mapping):
        raise TypeError(f"state_dict must be a mapping of parameter names to arrays, got {type(state).__name__}")
    if not isinstance(strict, (bool, np.bool_)):
        raise TypeError(f"strict must be True or False, got {strict!r}")
    targets = {name: (layer, key) for name, layer, key in module.named_parameters()}
    bad_names = [k for k in state if not isinstance(k, str)]
    if bad_names:
        raise TypeError(f"state_dict keys must be parameter names (str), got {bad_names[0]!r}")
    missing = [name for name in targets if name not in state]
    unexpected = [name for name in state if name not in targets]
    if strict and (missing or unexpected):
        raise ValueError(f"state_dict does not match the {type(module).__name__}: missing {missing}, "
                         f"unexpected {unexpected} (strict=False loads the names both have)")
    # Check everything before changing anything: a bad entry leaves the model as it was.
    converted = {}
    for name, (layer, key) in targets.items():
        if name in state:
            converted[name] = _converted(name, state[name], layer.params[key])
    for name, value in converted.items():
        layer, key = targets[name]
        current = layer.params[key]
        if getattr(getattr(current, "flags", None), "writeable", True):
            current[...] = value  # in place: arrays shared between layers stay shared
        else:
            layer.params[key] = value
    return LoadResult(missing, unexpected)


def _converted(name: str, value: Any, current: Any) -> Any:
    """``value`` checked against the parameter ``current``, in its dtype and array library."""
    kind = array_kind(value)
    if kind is None or isinstance(value, np.ma.MaskedArray):
        what = "a masked array" if isinstance(value, np.ma.MaskedArray) else type(value).__name__
        raise TypeError(f"state_dict[{name!r}] must be a NumPy or CuPy array, got {what}")
    if np.dtype(value.dtype).kind != "f":
        raise TypeError(f"state_dict[{name!r}] has dtype {value.dtype}; parameters take float arrays "
                        f"(float32 or float64, cast to the parameter's {current.dtype})")
    if tuple(value.shape) != tuple(current.shape):
        raise ValueError(f"state_dict[{name!r}] has shape {tuple(value.shape)}, the parameter has "
                         f"{tuple(current.shape)}")
    target = array_kind(current) or "numpy"
    if kind != target:
        value = to_numpy(value) if target == "numpy" else namespace(target).asarray(value)
    return value.astype(current.dtype, copy=True)
