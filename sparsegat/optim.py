"""A tiny optimizer library: SGD, Adam and AdamW with PyTorch's update rules.

An optimizer holds references to the *layers* that own the parameters, not to
the arrays: every :meth:`Optimizer.step` reads ``layer.params[name]`` and
``layer.grads[name]`` afresh and updates the parameter in place, so assigning a
new array to ``params[name]`` is fine. Parameters without a gradient are
skipped. Everything works the same on NumPy and CuPy arrays (the state lives
where the parameter does).

    model = sparsegat.nn.Sequential(...)
    opt = sparsegat.optim.Adam(model, lr=0.005, weight_decay=5e-4)
    ...; model.backward(dlogits); opt.step()
"""

from __future__ import annotations

import math
from typing import Any

from .arrays import array_kind, namespace, to_numpy
from .backends import optional_function

__all__ = ["Optimizer", "SGD", "Adam", "AdamW"]


def _number(name: str, value: Any, low: float = 0.0) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v) or v < low:
        raise ValueError(f"{name} must be a finite number >= {low}, got {value!r}")
    return v


class Optimizer:
    """Base class: collects ``(name, layer, key)`` parameter references and per-parameter state.

    Parameters
    ----------
    model : Module or iterable of Modules
        Whose parameters to optimise (``named_parameters()`` of each; with several
        modules, names are prefixed by the module's position, ``"0:"``, ``"1:"``).
    """

    #: Hyper-parameter names, in the order of the constructor (saved by state_dict).
    hyper: tuple[str, ...] = ()

    def __init__(self, model: Any) -> None:
        from .nn.module import Module

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

    # ------------------------------------------------------------------ the update
    def step(self) -> None:
        """Update every parameter that has a gradient, in place."""
        for name, layer, key in self._refs:
            g = layer.grads.get(key)
            if g is None:
                continue
            p = layer.params[key]
            if tuple(g.shape) != tuple(p.shape):
                raise ValueError(f"gradient of {name!r} has shape {tuple(g.shape)}, the parameter {tuple(p.shape)}")
            state = self.state.setdefault(name, {})
            for buf_name, buf in state.items():
                if hasattr(buf, "shape") and tuple(buf.shape) != tuple(p.shape):
                    raise ValueError(f"optimizer state {buf_name!r} of {name!r} has shape {tuple(buf.shape)} but "
                                     f"the parameter now has shape {tuple(p.shape)}; make a new optimizer")
            self._update(namespace(p), p, g.astype(p.dtype, copy=False), state, getattr(layer, "backend", None))

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

        Buffers are moved to where each parameter lives and cast to its dtype;
        unknown parameter names, wrong shapes or another optimizer type raise
        ``ValueError``.
        """
        if not isinstance(state_dict, dict) or "state" not in state_dict:
            raise ValueError("state_dict must be a dict made by Optimizer.state_dict()")
        kind = state_dict.get("type")
        if kind != type(self).__name__:
            raise ValueError(f"state_dict is for {kind}, not {type(self).__name__}")
        params = {name: layer.params[key] for name, layer, key in self._refs}
        new_state: dict[str, dict[str, Any]] = {}
        for name, s in state_dict["state"].items():
            if name not in params:
                raise ValueError(f"state_dict has state for {name!r}, which this optimizer does not hold")
            p = params[name]
            xp = namespace(array_kind(p) or "numpy")
            entry = {}
            for k, v in s.items():
                if hasattr(v, "shape"):
                    if tuple(v.shape) != tuple(p.shape):
                        raise ValueError(f"state {k!r} of {name!r} has shape {tuple(v.shape)}, the parameter {tuple(p.shape)}")
                    entry[k] = xp.asarray(to_numpy(v).astype(p.dtype))
                else:
                    entry[k] = v
            new_state[name] = entry
        for h, v in state_dict.get("hyper", {}).items():
            if h not in self.hyper:
                raise ValueError(f"unknown hyper-parameter {h!r} for {type(self).__name__}")
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
        self.lr = _number("lr", lr)
        self.momentum = _number("momentum", momentum)
        self.dampening = _number("dampening", dampening)
        self.weight_decay = _number("weight_decay", weight_decay)
        self.nesterov = bool(nesterov)
        self.maximize = bool(maximize)
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError("nesterov momentum needs momentum > 0 and dampening = 0 (as torch.optim.SGD)")

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
        self.lr = _number("lr", lr)
        try:
            b1, b2 = betas
        except (TypeError, ValueError):
            raise TypeError(f"betas must be a pair of numbers, got {betas!r}") from None
        b1, b2 = _number("betas[0]", b1), _number("betas[1]", b2)
        if not (b1 < 1.0 and b2 < 1.0):
            raise ValueError(f"betas must lie in [0, 1), got {betas!r}")
        self.betas = (b1, b2)
        self.eps = _number("eps", eps)
        self.weight_decay = _number("weight_decay", weight_decay)
        self.amsgrad = bool(amsgrad)
        self.maximize = bool(maximize)

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


