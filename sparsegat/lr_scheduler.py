"""Learning-rate schedules as ``torch.optim.lr_scheduler``: StepLR, CosineAnnealingLR, LinearLR, SequentialLR.

A scheduler sets ``optimizer.lr`` at construction (epoch 0) and at every
:meth:`LRScheduler.step` (call it once per epoch, after ``optimizer.step()``).
The rate is a function of the epoch, ``base_lr * factor(epoch)``, with the closed
forms of PyTorch's schedules (the tests compare them with torch's to 1e-12).
``base_lr`` is the optimizer's rate when its first scheduler was built, kept as
``optimizer.initial_lr`` (PyTorch's ``initial_lr``), so a warm-up and a decay
built one after the other share it. Each scheduler sets the rate outright, so
combine schedules with :class:`SequentialLR`, not by stepping two on one
optimizer. Exposed as ``sparsegat.optim.lr_scheduler`` (and the classes as
``sparsegat.optim.StepLR`` etc.).
"""

from __future__ import annotations

import bisect
import math
import numbers
from typing import Any, Sequence

import numpy as np

__all__ = ["LRScheduler", "StepLR", "CosineAnnealingLR", "LinearLR", "SequentialLR"]


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a positive integer, got {value!r}")
    if int(value) < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _real(name: str, value: Any, low: float, high: float = math.inf, low_open: bool = False) -> float:
    """A finite real number in ``[low, high]`` (``(low, high]`` with ``low_open``)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or v > high or v < low or (low_open and v == low):
        bounds = f"{'(' if low_open else '['}{low:g}, {high:g}]"
        raise ValueError(f"{name} must be a finite number in {bounds}, got {value!r}")
    return v


class LRScheduler:
    """Base class: ``optimizer.lr = base_lr * factor(epoch)`` at construction and every :meth:`step`.

    Parameters
    ----------
    optimizer : sparsegat.optim.Optimizer
        Anything with a numeric ``lr`` attribute.
    """

    #: Hyper-parameter names (saved by :meth:`state_dict`, checked by :meth:`load_state_dict`).
    hyper: tuple[str, ...] = ()

    def __init__(self, optimizer: Any) -> None:
        lr = getattr(optimizer, "lr", None)
        if isinstance(lr, (bool, np.bool_)) or not isinstance(lr, numbers.Real):
            raise TypeError(f"optimizer must be a sparsegat.optim optimizer (with a numeric lr), "
                            f"got {type(optimizer).__name__}")
        self.optimizer = optimizer
        if getattr(optimizer, "initial_lr", None) is None:
            optimizer.initial_lr = float(lr)
        self.base_lr = _real("optimizer.initial_lr", optimizer.initial_lr, 0.0)
        self.last_epoch = -1
        self.step()

    def factor(self, epoch: int) -> float:
        """The multiple of ``base_lr`` at ``epoch`` (0 at construction)."""
        raise NotImplementedError

    def lr_at(self, epoch: int) -> float:
        """The learning rate this schedule gives at ``epoch``."""
        return self.base_lr * self.factor(epoch)

    def step(self) -> None:
        """Advance one epoch and set ``optimizer.lr``."""
        self.last_epoch += 1
        self._last_lr = self.lr_at(self.last_epoch)
        self.optimizer.lr = self._last_lr

    def get_last_lr(self) -> list[float]:
        """``[lr]`` set by the latest step (a list of one rate, as torch's one per parameter group)."""
        return [self._last_lr]

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """``{"type", "base_lr", "last_epoch", <hyper-parameters>}``: plain Python values."""
        return {"type": type(self).__name__, "base_lr": self.base_lr, "last_epoch": self.last_epoch,
                **{h: getattr(self, h) for h in self.hyper}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved (validated first; nothing changes on an error).

        As in PyTorch, ``optimizer.lr`` is not touched: restore the optimizer's own
        state too (it holds the rate), or call :meth:`step`.
        """
        state = self._checked_state(state_dict)
        for key, value in state.items():
            setattr(self, key, value)
        self._last_lr = self.lr_at(self.last_epoch)

    def _checked_state(self, state_dict: Any) -> dict[str, Any]:
        if not isinstance(state_dict, dict):
            raise TypeError(f"state_dict must be a dict made by {type(self).__name__}.state_dict(), "
                            f"got {type(state_dict).__name__}")
        if state_dict.get("type") != type(self).__name__:
            raise ValueError(f"state_dict is for {state_dict.get('type')!r}, not {type(self).__name__}")
        expected = {"type", "base_lr", "last_epoch", *self.hyper}
        missing, unknown = sorted(expected - set(state_dict)), sorted(set(state_dict) - expected)
        if missing or unknown:
            raise ValueError(f"state_dict for {type(self).__name__}: missing {missing}, unknown {unknown}")
        last = state_dict["last_epoch"]
        if isinstance(last, (bool, np.bool_)) or not isinstance(last, numbers.Integral) or last < 0:
            raise ValueError(f"state_dict['last_epoch'] must be an integer >= 0, got {last!r}")
        checked = self._validated({h: state_dict[h] for h in self.hyper})
        return {"base_lr": _real("state_dict['base_lr']", state_dict["base_lr"], 0.0),
                "last_epoch": int(last), **checked}

    def _validated(self, values: dict[str, Any]) -> dict[str, Any]:
        """The hyper-parameters checked as the constructor checks them."""
        return values

    def __repr__(self) -> str:
        args = ", ".join(f"{h}={getattr(self, h)!r}" for h in self.hyper)
        return f"{type(self).__name__}({args}{', ' if args else ''}last_epoch={self.last_epoch})"


class StepLR(LRScheduler):
    """``lr = base_lr * gamma ** (epoch // step_size)`` (``torch.optim.lr_scheduler.StepLR``)."""

    hyper = ("step_size", "gamma")

    def __init__(self, optimizer: Any, step_size: int, gamma: float = 0.1) -> None:
        for k, v in self._validated({"step_size": step_size, "gamma": gamma}).items():
            setattr(self, k, v)
        super().__init__(optimizer)

    def _validated(self, values: dict[str, Any]) -> dict[str, Any]:
        return {"step_size": _positive_int("step_size", values["step_size"]),
                "gamma": _real("gamma", values["gamma"], 0.0, low_open=True)}

    def factor(self, epoch: int) -> float:
        return self.gamma ** (epoch // self.step_size)


class CosineAnnealingLR(LRScheduler):
    """``lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * epoch / T_max)) / 2``
    (``torch.optim.lr_scheduler.CosineAnnealingLR``; past ``T_max`` the cosine goes on, as torch's)."""

    hyper = ("T_max", "eta_min")

    def __init__(self, optimizer: Any, T_max: int, eta_min: float = 0.0) -> None:
        for k, v in self._validated({"T_max": T_max, "eta_min": eta_min}).items():
            setattr(self, k, v)
        super().__init__(optimizer)

    def _validated(self, values: dict[str, Any]) -> dict[str, Any]:
        return {"T_max": _positive_int("T_max", values["T_max"]),
                "eta_min": _real("eta_min", values["eta_min"], 0.0)}

    def lr_at(self, epoch: int) -> float:
        return self.eta_min + (self.base_lr - self.eta_min) * (1 + math.cos(math.pi * epoch / self.T_max)) / 2

    def factor(self, epoch: int) -> float:
        return self.lr_at(epoch) / self.base_lr if self.base_lr else 1.0


class LinearLR(LRScheduler):
    """Linear warm-up (or decay) of the factor from ``start_factor`` to ``end_factor`` over ``total_iters``
    epochs, then constant (``torch.optim.lr_scheduler.LinearLR``, with its defaults)."""

    hyper = ("start_factor", "end_factor", "total_iters")

    def __init__(self, optimizer: Any, start_factor: float = 1.0 / 3, end_factor: float = 1.0,
                 total_iters: int = 5) -> None:
        values = {"start_factor": start_factor, "end_factor": end_factor, "total_iters": total_iters}
        for k, v in self._validated(values).items():
            setattr(self, k, v)
        super().__init__(optimizer)

    def _validated(self, values: dict[str, Any]) -> dict[str, Any]:
        return {"start_factor": _real("start_factor", values["start_factor"], 0.0, 1.0, low_open=True),
                "end_factor": _real("end_factor", values["end_factor"], 0.0, 1.0),
                "total_iters": _positive_int("total_iters", values["total_iters"])}

    def factor(self, epoch: int) -> float:
        done = min(epoch, self.total_iters) / self.total_iters
        return self.start_factor + (self.end_factor - self.start_factor) * done


class SequentialLR(LRScheduler):
    """Schedules one after another: ``schedulers[i]`` from epoch ``milestones[i-1]`` on, counting its
    epochs from 0 there (``torch.optim.lr_scheduler.SequentialLR``); e.g. a linear warm-up, then a cosine.

    Parameters
    ----------
    optimizer : sparsegat.optim.Optimizer
        The optimizer every scheduler of ``schedulers`` was built on.
    schedulers : sequence of LRScheduler
    milestones : sequence of int
        ``len(schedulers) - 1`` increasing positive epochs.
    """

    hyper = ("milestones",)

    def __init__(self, optimizer: Any, schedulers: Sequence[LRScheduler], milestones: Sequence[int]) -> None:
        schedulers = list(schedulers)
        if not schedulers:
            raise ValueError("schedulers must hold at least one scheduler")
        for i, s in enumerate(schedulers):
            if not isinstance(s, LRScheduler) or isinstance(s, SequentialLR):
                raise TypeError(f"schedulers[{i}] must be a StepLR, CosineAnnealingLR or LinearLR, "
                                f"got {type(s).__name__}")
            if s.optimizer is not optimizer:
                raise ValueError(f"schedulers[{i}] was built on another optimizer than the SequentialLR's")
        self.schedulers = schedulers
        self.milestones = self._validated({"milestones": milestones})["milestones"]
        super().__init__(optimizer)

    def _validated(self, values: dict[str, Any]) -> dict[str, Any]:
        milestones = values["milestones"]
        if isinstance(milestones, (str, bytes)) or not hasattr(milestones, "__len__"):
            raise TypeError(f"milestones must be a list of epochs, got {milestones!r}")
        out = [_positive_int(f"milestones[{i}]", m) for i, m in enumerate(milestones)]
        if len(out) != len(self.schedulers) - 1:
            raise ValueError(f"milestones must hold len(schedulers) - 1 = {len(self.schedulers) - 1} epochs, "
                             f"got {len(out)}")
        if any(b <= a for a, b in zip(out, out[1:])):
            raise ValueError(f"milestones must increase, got {out}")
        return {"milestones": out}

    def lr_at(self, epoch: int) -> float:
        i = bisect.bisect_right(self.milestones, epoch)
        start = self.milestones[i - 1] if i else 0
        return self.schedulers[i].lr_at(epoch - start)

    def state_dict(self) -> dict[str, Any]:
        """As the base class, plus ``"schedulers"``: the state dict of each scheduler."""
        return {**super().state_dict(), "schedulers": [s.state_dict() for s in self.schedulers]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not isinstance(state_dict, dict):
            raise TypeError(f"state_dict must be a dict made by SequentialLR.state_dict(), "
                            f"got {type(state_dict).__name__}")
        inner = state_dict.get("schedulers")
        if not isinstance(inner, list) or len(inner) != len(self.schedulers):
            raise ValueError(f"state_dict['schedulers'] must be a list of {len(self.schedulers)} state dicts")
        own = self._checked_state({k: v for k, v in state_dict.items() if k != "schedulers"})
        checked = [s._checked_state(d) for s, d in zip(self.schedulers, inner)]
        for s, c in zip(self.schedulers, checked):
            for key, value in c.items():
                setattr(s, key, value)
            s._last_lr = s.lr_at(s.last_epoch)
        for key, value in own.items():
            setattr(self, key, value)
        self._last_lr = self.lr_at(self.last_epoch)
