"""A tiny optimizer library: SGD, Adam and AdamW with PyTorch's update rules.

An optimizer holds references to the *layers* that own the parameters, not to
the arrays: every :meth:`Optimizer.step` reads ``layer.params[name]`` and
``layer.grads[name]`` afresh and updates the parameter in place, so assigning a
new array to ``params[name]`` is fine. Parameters without a gradient are
skipped. Everything works the same on NumPy and CuPy arrays (the state lives
where the parameter does).

Validation (``TypeError`` for a wrong type, ``ValueError`` for a wrong value,
each naming the parameter or hyper-parameter and the value):

* hyper-parameters, by the same checks in the constructor, in every
  :meth:`Optimizer.step` (so ``opt.lr = float("nan")`` is caught before it
  reaches a parameter) and in :meth:`Optimizer.load_state_dict`: real numbers
  (not strings or bools), finite and ``>= 0``; Adam's betas in ``[0, 1)``;
  flags (``nesterov``, ``amsgrad``, ``maximize``) bools or 0/1;
* parameters, at construction and every step: a float32 or float64 NumPy or
  CuPy array still present in its layer's ``params`` (``ValueError`` naming it
  once deleted) and writable (a read-only array is refused with ``ValueError``,
  not copied: a copy would silently stop sharing it with whoever else holds it;
  assign ``layer.params[key] = p.copy()`` yourself);
* gradients, every step, before any parameter is updated: an array of the
  parameter's kind (lists are refused), of a real dtype (cast to the
  parameter's), of the parameter's shape;
* :meth:`Optimizer.load_state_dict`: every hyper-parameter present and valid,
  every buffer of every parameter present (exactly the optimizer's buffers),
  of the parameter's shape, of a real float dtype, finite (second moments
  ``>= 0``), and ``step`` a positive integer; nothing changes unless all of it
  is valid.

    model = sparsegat.nn.Sequential(...)
    opt = sparsegat.optim.Adam(model, lr=0.005, weight_decay=5e-4)
    ...; model.backward(dlogits); opt.step()
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from .arrays import array_kind, namespace, to_numpy
from .backends import optional_function

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "clip_grad_norm_", "clip_grad_value_", "lr_scheduler",
           "StepLR", "CosineAnnealingLR", "LinearLR", "SequentialLR", "EarlyStopping"]

#: The parameter dtypes the optimizers update.
PARAM_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _number(name: str, value: Any, low: float = 0.0) -> float:
    """A finite real number ``>= low`` (TypeError for strings, bools, arrays and other types)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or v < low:
        raise ValueError(f"{name} must be a finite number >= {low}, got {value!r}")
    return v


def _flag(name: str, value: Any) -> bool:
    """A bool (or the integers 0 and 1)."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, numbers.Integral) and int(value) in (0, 1):
        return bool(value)
    raise TypeError(f"{name} must be True or False, got {value!r}")


def _positive_step(name: str, value: Any) -> int:
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a positive integer, got {value!r}")
    if int(value) < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


class Optimizer:
    """Base class: collects ``(name, layer, key)`` parameter references and per-parameter state.

    Parameters
    ----------
    model : Module, ``model.parameters()`` or iterable of Modules
        Whose parameters to optimise (``named_parameters()`` of each; with several
        modules, names are prefixed by the module's position, ``"0:"``, ``"1:"``).
    """

    #: Hyper-parameter names, in the order of the constructor (saved by state_dict).
    hyper: tuple[str, ...] = ()

    def __init__(self, model: Any) -> None:
        from .nn.module import Module
        from .nn.state import ParameterView

        if isinstance(model, ParameterView):  # model.parameters(), as torch.optim takes it
            model = model.module
        if isinstance(model, Module):
            refs = list(model.named_parameters())
        else:
            try:
                modules = list(model)
            except TypeError:
                raise TypeError(f"model must be a sparsegat.nn Module or an iterable of them, "
                                f"got {type(model).__name__}") from None
            refs = []
            for i, m in enumerate(modules):
                if not isinstance(m, Module):
                    raise TypeError(f"model[{i}] is a {type(m).__name__}, not a sparsegat.nn Module")
                refs += [(f"{i}:{name}", layer, key) for name, layer, key in m.named_parameters()]
        if not refs:
            raise ValueError("the model has no parameters to optimise")
        self._refs = refs
        self.state: dict[str, dict[str, Any]] = {}
        for name, layer, key in refs:
            self._parameter(name, layer, key)

    # ------------------------------------------------------------------ checks
    def _validated(self, values: dict[str, Any]) -> dict[str, Any]:
        """The hyper-parameters ``values`` checked (and normalised) as the constructor checks them."""
        return dict(values)

    def _buffers(self, hyper: dict[str, Any]) -> tuple[str, ...]:
        """Names of the state buffers of a parameter that has been stepped, under ``hyper``."""
        return ()

    def _hyper_values(self) -> dict[str, Any]:
        return {h: getattr(self, h) for h in self.hyper}

    @staticmethod
    def _parameter(name: str, layer: Any, key: str) -> Any:
        """``layer.params[key]``, checked: present, a float32/float64 array, writable."""
        p = layer.params.get(key)
        if p is None:
            raise ValueError(f"parameter {name!r} is no longer in {type(layer).__name__}.params[{key!r}] (deleted "
                             f"after the optimizer was built); put it back or make a new optimizer")
        if array_kind(p) is None or isinstance(p, np.ma.MaskedArray):
            raise TypeError(f"parameter {name!r} must be a NumPy or CuPy array, got {type(p).__name__}")
        if p.dtype not in PARAM_DTYPES:
            raise TypeError(f"parameter {name!r} has dtype {p.dtype}; the optimizers update float32 and float64 "
                            f"parameters only")
        if not getattr(p.flags, "writeable", True):
            raise ValueError(f"parameter {name!r} is a read-only array; the optimizer updates parameters in "
                             f"place: assign a writable copy, {type(layer).__name__}.params[{key!r}] = p.copy()")
        return p

    @staticmethod
    def _gradient(name: str, g: Any, p: Any) -> Any:
        """The gradient of parameter ``name`` checked against it and cast to its dtype."""
        kind = array_kind(p)
        if array_kind(g) != kind or isinstance(g, np.ma.MaskedArray):
            got = "a masked array" if isinstance(g, np.ma.MaskedArray) else (
                f"a {array_kind(g)} array" if array_kind(g) else type(g).__name__)
            raise TypeError(f"gradient of {name!r} must be a {kind} array like the parameter, got {got}")
        if g.dtype.kind not in "iuf":
            raise TypeError(f"gradient of {name!r} must hold real numbers, got dtype {g.dtype}")
        if tuple(g.shape) != tuple(p.shape):
            raise ValueError(f"gradient of {name!r} has shape {tuple(g.shape)}, the parameter {tuple(p.shape)}")
        return g.astype(p.dtype, copy=False)

    # ------------------------------------------------------------------ the update
    def step(self) -> None:
        """Update every parameter that has a gradient, in place.

        Everything is checked first (hyper-parameters, parameters, gradients, state
        shapes): an error leaves every parameter and buffer as it was.
        """
        for h, v in self._validated(self._hyper_values()).items():
            setattr(self, h, v)
        work = []
        for name, layer, key in self._refs:
            p = self._parameter(name, layer, key)
            g = layer.grads.get(key)
            if g is None:
                continue
            g = self._gradient(name, g, p)
            for buf_name, buf in self.state.get(name, {}).items():
                if hasattr(buf, "shape") and tuple(buf.shape) != tuple(p.shape):
                    raise ValueError(f"optimizer state {buf_name!r} of {name!r} has shape {tuple(buf.shape)} but "
                                     f"the parameter now has shape {tuple(p.shape)}; make a new optimizer")
            work.append((name, layer, p, g))
        for name, layer, p, g in work:
            state = self.state.setdefault(name, {})
            self._update(namespace(p), p, g, state, getattr(layer, "backend", None))

    def _update(self, xp: Any, p: Any, g: Any, state: dict[str, Any], backend: str | None) -> None:
        """Update ``p`` in place; ``backend`` is the owning layer's ``backend=`` (None: by array kind)."""
        raise NotImplementedError

    def zero_grad(self) -> None:
        """Drop the gradients of every optimised parameter."""
        for _, layer, key in self._refs:
            layer.grads.pop(key, None)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """``{"type", "hyper": {...}, "state": {param name: {buffer: array or int}}}`` (copies, on the host)."""
        return {
            "type": type(self).__name__,
            "hyper": {h: getattr(self, h) for h in self.hyper},
            "state": {name: {k: (to_numpy(v).copy() if hasattr(v, "shape") else v) for k, v in s.items()}
                      for name, s in self.state.items()},
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore hyper-parameters and buffers saved by :meth:`state_dict`.

        Everything is validated before anything changes: the optimizer type; every
        hyper-parameter present and passing the constructor's checks; for every
        parameter with state, exactly this optimizer's buffers (under the loaded
        hyper-parameters: Adam's ``step``, ``exp_avg``, ``exp_avg_sq`` and, with
        ``amsgrad``, ``max_exp_avg_sq``; SGD's ``momentum_buffer`` with momentum),
        each of the parameter's shape, a real float dtype and finite values
        (second moments ``>= 0``), and ``step`` a positive integer. Buffers are
        moved to where each parameter lives and cast to its dtype. ``ValueError``
        (``TypeError`` for wrong types) names the entry and the value.
        """
        if not isinstance(state_dict, dict) or "state" not in state_dict:
            raise ValueError("state_dict must be a dict made by Optimizer.state_dict()")
        kind = state_dict.get("type")
        if kind != type(self).__name__:
            raise ValueError(f"state_dict is for {kind}, not {type(self).__name__}")
        hyper_in = state_dict.get("hyper")
        if not isinstance(hyper_in, dict):
            raise ValueError(f"state_dict['hyper'] must be a dict of hyper-parameters, got {type(hyper_in).__name__}")
        unknown = [h for h in hyper_in if h not in self.hyper]
        if unknown:
            raise ValueError(f"unknown hyper-parameter {unknown[0]!r} for {type(self).__name__}")
        missing = [h for h in self.hyper if h not in hyper_in]
        if missing:
            raise ValueError(f"state_dict['hyper'] lacks {', '.join(map(repr, missing))}")
        hyper = self._validated(dict(hyper_in))
        buffers = self._buffers(hyper)
        states = state_dict["state"]
        if not isinstance(states, dict):
            raise ValueError(f"state_dict['state'] must be a dict, got {type(states).__name__}")
        params = {name: self._parameter(name, layer, key) for name, layer, key in self._refs}
        new_state: dict[str, dict[str, Any]] = {}
        for name, s in states.items():
            if name not in params:
                raise ValueError(f"state_dict has state for {name!r}, which this optimizer does not hold")
            if not isinstance(s, dict):
                raise ValueError(f"state of {name!r} must be a dict of buffers, got {type(s).__name__}")
            missing = [k for k in buffers if k not in s]
            if missing:
                raise ValueError(f"state of {name!r} lacks the buffer {missing[0]!r} "
                                 f"({type(self).__name__} keeps {', '.join(buffers) or 'none'})")
            extra = [k for k in s if k not in buffers]
            if extra:
                raise ValueError(f"state of {name!r} has the unknown buffer {extra[0]!r} "
                                 f"({type(self).__name__} keeps {', '.join(buffers) or 'none'})")
            p = params[name]
            xp = namespace(array_kind(p) or "numpy")
            entry: dict[str, Any] = {}
            for k, v in s.items():
                what = f"state {k!r} of {name!r}"
                if k == "step":
                    entry[k] = _positive_step(what, v)
                    continue
                if not hasattr(v, "shape") or not hasattr(v, "dtype"):
                    raise TypeError(f"{what} must be an array, got {type(v).__name__}")
                if tuple(v.shape) != tuple(p.shape):
                    raise ValueError(f"{what} has shape {tuple(v.shape)}, the parameter {tuple(p.shape)}")
                if np.dtype(v.dtype).kind != "f":
                    raise TypeError(f"{what} must be a float array, got dtype {v.dtype}")
                host = to_numpy(v).astype(p.dtype)
                if not np.isfinite(host).all():
                    raise ValueError(f"{what} has values that are not finite (in the parameter's dtype {p.dtype})")
                if k in ("exp_avg_sq", "max_exp_avg_sq") and (host < 0).any():
                    raise ValueError(f"{what} is a second moment and must be >= 0, got a minimum of {host.min()}")
                entry[k] = xp.asarray(host)
            new_state[name] = entry
        for h, v in hyper.items():
            setattr(self, h, v)
        self.state = new_state

    def __repr__(self) -> str:
        args = ", ".join(f"{h}={getattr(self, h)!r}" for h in self.hyper)
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """Stochastic gradient descent as ``torch.optim.SGD``.

    ``g = grad + weight_decay * p``; with momentum ``b = momentum * b + (1 - dampening) * g``
    (``b = g`` at the first step), then ``g = g + momentum * b`` (nesterov) or ``g = b``;
    ``p -= lr * g`` (``maximize`` flips the sign of the gradient).
    """

    hyper = ("lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize")

    def __init__(self, model: Any, lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False, maximize: bool = False) -> None:
        super().__init__(model)
        values = self._validated(dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                                      nesterov=nesterov, maximize=maximize))
        for h, v in values.items():
            setattr(self, h, v)

    def _validated(self, values: dict[str, Any]) -> dict[str, Any]:
        out = {h: _number(h, values[h]) for h in ("lr", "momentum", "dampening", "weight_decay")}
        out["nesterov"] = _flag("nesterov", values["nesterov"])
        out["maximize"] = _flag("maximize", values["maximize"])
        if out["nesterov"] and (out["momentum"] <= 0 or out["dampening"] != 0):
            raise ValueError("nesterov momentum needs momentum > 0 and dampening = 0 (as torch.optim.SGD)")
        return out

    def _buffers(self, hyper: dict[str, Any]) -> tuple[str, ...]:
        return ("momentum_buffer",) if hyper["momentum"] else ()

    def _update(self, xp: Any, p: Any, g: Any, state: dict[str, Any], backend: str | None) -> None:
        if self.maximize:
            g = -g
        if self.weight_decay:
            g = g + self.weight_decay * p
        if self.momentum:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = g.copy()
            else:
                buf *= self.momentum
                buf += (1.0 - self.dampening) * g
            g = g + self.momentum * buf if self.nesterov else buf
        p -= self.lr * g


class Adam(Optimizer):
    """Adam as ``torch.optim.Adam`` (L2 weight decay added to the gradient; ``amsgrad`` optional).

    With ``t`` the parameter's step count: ``g = grad + weight_decay * p``,
    ``m += (1 - beta1) * (g - m)``, ``v = beta2 * v + (1 - beta2) * g * g``,
    ``p -= lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)``
    (``v`` replaced by its running maximum with ``amsgrad``).
    """

    hyper = ("lr", "betas", "eps", "weight_decay", "amsgrad", "maximize")
    _decoupled = False

    def __init__(self, model: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, amsgrad: bool = False,
                 maximize: bool = False) -> None:
        super().__init__(model)
        values = self._validated(dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                                      maximize=maximize))
        for h, v in values.items():
            setattr(self, h, v)

    def _validated(self, values: dict[str, Any]) -> dict[str, Any]:
        betas = values["betas"]
        if isinstance(betas, (str, bytes)) or not hasattr(betas, "__len__") or len(betas) != 2:
            raise TypeError(f"betas must be a pair of numbers, got {betas!r}")
        b1, b2 = _number("betas[0]", betas[0]), _number("betas[1]", betas[1])
        if not (b1 < 1.0 and b2 < 1.0):
            raise ValueError(f"betas must lie in [0, 1), got {betas!r}")
        return {"lr": _number("lr", values["lr"]), "betas": (b1, b2), "eps": _number("eps", values["eps"]),
                "weight_decay": _number("weight_decay", values["weight_decay"]),
                "amsgrad": _flag("amsgrad", values["amsgrad"]), "maximize": _flag("maximize", values["maximize"])}

    def _buffers(self, hyper: dict[str, Any]) -> tuple[str, ...]:
        return ("step", "exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if hyper["amsgrad"] else ())

    def _update(self, xp: Any, p: Any, g: Any, state: dict[str, Any], backend: str | None) -> None:
        b1, b2 = self.betas
        if not state:
            state["step"] = 0
            state["exp_avg"] = xp.zeros_like(p)
            state["exp_avg_sq"] = xp.zeros_like(p)
        if self.amsgrad and "max_exp_avg_sq" not in state:
            state["max_exp_avg_sq"] = xp.zeros_like(p)
        state["step"] += 1
        t = state["step"]
        # The backend's own Adam (numba: the same arithmetic in one compiled pass), if it has one.
        if self._fused_update(p, g, state, backend):
            return
        if self.maximize:
            g = -g
        if self.weight_decay:
            if self._decoupled:
                p *= 1.0 - self.lr * self.weight_decay
            else:
                g = g + self.weight_decay * p
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m += (1.0 - b1) * (g - m)          # torch: exp_avg.lerp_(grad, 1 - beta1)
        v *= b2
        v += (1.0 - b2) * (g * g)
        if self.amsgrad:
            vmax = state["max_exp_avg_sq"]
            xp.maximum(vmax, v, out=vmax)
            v = vmax
        step_size = self.lr / (1.0 - b1 ** t)
        denom = xp.sqrt(v)
        denom *= 1.0 / math.sqrt(1.0 - b2 ** t)
        denom += self.eps
        p -= step_size * (m / denom)


    def _fused_update(self, p: Any, g: Any, state: dict[str, Any], backend: str | None) -> bool:
        """Run the backend's ``adam_update`` when it has one and the arrays suit it."""
        arrays = [p, g, state["exp_avg"], state["exp_avg_sq"]] + ([state["max_exp_avg_sq"]] if self.amsgrad else [])
        kind = array_kind(p)
        if not all(array_kind(a) == kind and a.dtype == p.dtype and a.flags.c_contiguous
                   and a.shape == p.shape for a in arrays):
            return False
        update = optional_function("adam_update", kind, backend)
        if update is None:
            return False
        update(p, g, state["exp_avg"], state["exp_avg_sq"], state.get("max_exp_avg_sq"), state["step"],
               self.lr, self.betas, self.eps, self.weight_decay, self._decoupled, self.amsgrad, self.maximize)
        return True


class AdamW(Adam):
    """AdamW as ``torch.optim.AdamW``: decoupled weight decay ``p *= 1 - lr * weight_decay``, then Adam."""

    _decoupled = True

    def __init__(self, model: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False,
                 maximize: bool = False) -> None:
        super().__init__(model, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, maximize=maximize)


# Training helpers that work with any optimizer (their own modules; here so that
# ``sparsegat.optim`` is the one place to look, as ``torch.optim`` is).
from . import lr_scheduler as lr_scheduler  # noqa: E402
from .early_stopping import EarlyStopping as EarlyStopping  # noqa: E402
from .grad_clip import clip_grad_norm_ as clip_grad_norm_  # noqa: E402
from .grad_clip import clip_grad_value_ as clip_grad_value_  # noqa: E402
from .lr_scheduler import CosineAnnealingLR as CosineAnnealingLR  # noqa: E402
from .lr_scheduler import LinearLR as LinearLR  # noqa: E402
from .lr_scheduler import SequentialLR as SequentialLR  # noqa: E402
from .lr_scheduler import StepLR as StepLR  # noqa: E402
