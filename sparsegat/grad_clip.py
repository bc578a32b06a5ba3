"""Gradient clipping as ``torch.nn.utils.clip_grad_norm_`` and ``clip_grad_value_``.

Gradients live in the layers' ``grads`` dicts, not on the parameter arrays, so
these functions take what the optimizers take: a model, ``model.parameters()``
or a list of models. Parameters without a gradient are skipped (PyTorch skips
``p.grad is None``). The clipped gradients replace the arrays in ``grads`` (new
arrays, in the parameter's dtype and array library), so an array that someone
else holds, or that two entries share, is never scaled twice. Exposed as
``sparsegat.optim.clip_grad_norm_`` and ``sparsegat.optim.clip_grad_value_``.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from .arrays import namespace, to_numpy

__all__ = ["clip_grad_norm_", "clip_grad_value_"]


def parameter_refs(model: Any) -> list[tuple[str, Any, str]]:
    """``(name, layer, key)`` of every parameter of a Module, a ``model.parameters()`` view or a
    list of those (names prefixed ``"0:"``, ``"1:"`` for several, as the optimizers name them)."""
    from .nn.module import Module
    from .nn.state import ParameterView

    if isinstance(model, ParameterView):
        model = model.module
    if isinstance(model, Module):
        return list(model.named_parameters())
    if isinstance(model, (str, bytes)) or not hasattr(model, "__iter__"):
        raise TypeError(f"model must be a sparsegat.nn Module, model.parameters() or a list of them, "
                        f"got {type(model).__name__}")
    refs = []
    for i, m in enumerate(model):
        if isinstance(m, ParameterView):
            m = m.module
        if not isinstance(m, Module):
            raise TypeError(f"model[{i}] is a {type(m).__name__}, not a sparsegat.nn Module")
        refs += [(f"{i}:{name}", layer, key) for name, layer, key in m.named_parameters()]
    return refs


def _gradients(model: Any) -> list[tuple[Any, str, Any]]:
    """``(layer, key, gradient)`` of every parameter that has one, each checked against its parameter."""
    from .optim import Optimizer

    out = []
    for name, layer, key in parameter_refs(model):
        g = layer.grads.get(key)
        if g is None:
            continue
        p = layer.params.get(key)
        if p is None:
            raise ValueError(f"parameter {name!r} has a gradient but is no longer in "
                             f"{type(layer).__name__}.params[{key!r}]")
        out.append((layer, key, Optimizer._gradient(name, g, p)))
    return out


def _real(name: str, value: Any) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    v = float(value)
    if math.isnan(v) or v < 0:
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    return v


def _vector_norm(g: Any, p: float) -> float:
    """The ``p``-norm of one gradient, on its device, read back as a Python float."""
    if g.size == 0:
        return 0.0
    xp = namespace(g)
    if p == math.inf:
        return float(to_numpy(xp.abs(g).max()))
    if p == 2.0:
        return math.sqrt(float(to_numpy((g * g).sum())))
    if p == 1.0:
        return float(to_numpy(xp.abs(g).sum()))
    return float(to_numpy(xp.power(xp.abs(g), p).sum())) ** (1.0 / p)


def clip_grad_norm_(model: Any, max_norm: float, norm_type: float = 2.0,
                    error_if_nonfinite: bool = False) -> float:
    """Scale all gradients together so that their joint norm is at most ``max_norm``.

    As ``torch.nn.utils.clip_grad_norm_``: the total norm is the ``norm_type``-norm
    of the vector of every gradient's norm (the norm of all gradients as one
    vector); when ``max_norm / (total + 1e-6) < 1`` every gradient is multiplied by
    that factor. A NaN or infinite total makes the gradients NaN (or raises, with
    ``error_if_nonfinite=True``), as in PyTorch.

    Parameters
    ----------
    model : Module, model.parameters() or list of Modules
        Whose gradients (``layer.grads``) to clip; parameters without one are skipped.
    max_norm : float
        Largest allowed total norm (>= 0).
    norm_type : float
        ``p`` of the p-norm: a positive number or ``math.inf`` (the largest entry).
    error_if_nonfinite : bool
        Raise ``RuntimeError`` (and change nothing) when the total norm is NaN or infinite.

    Returns
    -------
    float
        The total norm of the gradients before clipping (0.0 when there are none).

    Raises
    ------
    TypeError, ValueError
        A bad argument, or a gradient that does not match its parameter, naming it.
    """
    max_norm = _real("max_norm", max_norm)
    p = _real("norm_type", norm_type)
    if p == 0:
        raise ValueError(f"norm_type must be positive (or math.inf), got {norm_type!r}")
    grads = _gradients(model)
    if not grads:
        return 0.0
    norms = np.array([_vector_norm(g, p) for _, _, g in grads], dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        total = float(np.linalg.norm(norms, ord=p))
    if error_if_nonfinite and not math.isfinite(total):
        raise RuntimeError(f"the total norm of order {norm_type} of the gradients is {total}, so they cannot "
                           f"be clipped; set error_if_nonfinite=False to clip anyway (the gradients become NaN)")
    coef = max_norm / (total + 1e-6)
    if not coef >= 1.0:  # NaN scales too, as torch's clamp(coef, max=1) does
        with np.errstate(invalid="ignore"):  # inf * 0 is NaN here on purpose (PyTorch's result)
            for layer, key, g in grads:
                layer.grads[key] = g * coef
    return total


def clip_grad_value_(model: Any, clip_value: float) -> None:
    """Clip every gradient entry to ``[-clip_value, clip_value]`` (``torch.nn.utils.clip_grad_value_``).

    Parameters
    ----------
    model : Module, model.parameters() or list of Modules
        Whose gradients to clip; parameters without one are skipped.
    clip_value : float
        A number >= 0. NaN entries stay NaN, as with ``torch.clamp``.
    """
    v = _real("clip_value", clip_value)
    for layer, key, g in _gradients(model):
        layer.grads[key] = namespace(g).clip(g, -v, v).astype(g.dtype, copy=False)
