"""Early stopping with the best state kept: the loop of ``sparsegat.train.fit`` for hand-written loops.

Exposed as ``sparsegat.optim.EarlyStopping``::

    stopper = sg.optim.EarlyStopping(model, patience=100)
    for epoch in range(1000):
        ...                                   # train one epoch
        if stopper.step(val_accuracy):        # keeps a copy of the best state
            break
    stopper.restore_best()                    # the model as it was at its best epoch
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

__all__ = ["EarlyStopping"]


class EarlyStopping:
    """Track a validation score, keep a copy of the best state, say when to stop.

    Parameters
    ----------
    model : sparsegat.nn.Module
        Whose state (``model.state_dict()``: copies, in the model's array library)
        is kept at every improvement.
    patience : int, optional
        :meth:`step` returns True once ``patience`` steps in a row bring no
        improvement (None: never; the helper then only keeps the best state).
    mode : "max" or "min"
        Whether a higher score (accuracy) or a lower one (loss) is better.
    min_delta : float
        How much better than the best a score must be to count as an improvement
        (``>= 0``). With 0, ties do not count: the best epoch is the first one that
        reached the best score, as ``fit`` keeps it.

    Attributes
    ----------
    best_score : float
        The best score so far (``-inf`` / ``inf`` before the first step).
    best_epoch : int
        The step (1-based) that gave it; 0 before any improvement.
    best_state : dict or None
        Copies of the parameters at ``best_epoch``.
    num_steps, num_bad_steps : int
        Steps so far, and steps since the last improvement.
    improved : bool
        Whether the latest step improved the best score.
    """

    def __init__(self, model: Any, *, patience: int | None = None, mode: str = "max",
                 min_delta: float = 0.0) -> None:
        from .nn.module import Module

        if not isinstance(model, Module):
            raise TypeError(f"model must be a sparsegat.nn Module, got {type(model).__name__}")
        if patience is not None and (isinstance(patience, (bool, np.bool_))
                                     or not isinstance(patience, numbers.Integral) or patience < 1):
            raise ValueError(f"patience must be None or a positive integer, got {patience!r}")
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        if isinstance(min_delta, (bool, np.bool_)) or not isinstance(min_delta, numbers.Real):
            raise TypeError(f"min_delta must be a real number, got {min_delta!r}")
        if not (math.isfinite(min_delta) and min_delta >= 0):
            raise ValueError(f"min_delta must be a finite number >= 0, got {min_delta!r}")
        self.model = model
        self.patience = None if patience is None else int(patience)
        self.mode = mode
        self.min_delta = float(min_delta)
        self.best_score = -math.inf if mode == "max" else math.inf
        self.best_epoch = 0
        self.best_state: dict[str, Any] | None = None
        self.num_steps = 0
        self.num_bad_steps = 0
        self.improved = False

    def _better(self, score: float) -> bool:
        if self.mode == "max":
            return score > self.best_score + self.min_delta
        return score < self.best_score - self.min_delta

    def step(self, score: float) -> bool:
        """Record one epoch's score; returns True when training should stop.

        An improvement keeps a copy of the model's parameters. A NaN score never
        improves (it counts as a step without improvement).
        """
        if isinstance(score, (bool, np.bool_)) or not isinstance(score, numbers.Real):
            raise TypeError(f"score must be a real number (a Python or NumPy float), got {score!r}")
        score = float(score)
        self.num_steps += 1
        self.improved = not math.isnan(score) and self._better(score)
        if self.improved:
            self.best_score, self.best_epoch, self.num_bad_steps = score, self.num_steps, 0
            self.best_state = self.model.state_dict()
        else:
            self.num_bad_steps += 1
        return self.should_stop

    @property
    def should_stop(self) -> bool:
        """True once ``patience`` steps in a row have brought no improvement."""
        return self.patience is not None and self.num_bad_steps >= self.patience

    def restore_best(self) -> Any:
        """Load the best state into the model (``RuntimeError`` before any improvement); returns the model."""
        if self.best_state is None:
            raise RuntimeError("no best state yet: step() has not seen an improving score")
        self.model.load_state_dict(self.best_state)
        return self.model

    def state_dict(self) -> dict[str, Any]:
        """The counters, the settings and the best state (copies)."""
        return {"patience": self.patience, "mode": self.mode, "min_delta": self.min_delta,
                "best_score": self.best_score, "best_epoch": self.best_epoch, "num_steps": self.num_steps,
                "num_bad_steps": self.num_bad_steps, "improved": self.improved,
                "best_state": None if self.best_state is None else {k: v.copy() for k, v in self.best_state.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved (the best state is checked against the model)."""
        if not isinstance(state_dict, dict):
            raise TypeError(f"state_dict must be a dict made by EarlyStopping.state_dict(), "
                            f"got {type(state_dict).__name__}")
        expected = {"patience", "mode", "min_delta", "best_score", "best_epoch", "num_steps", "num_bad_steps",
                    "improved", "best_state"}
        missing, unknown = sorted(expected - set(state_dict)), sorted(set(state_dict) - expected)
        if missing or unknown:
            raise ValueError(f"state_dict for EarlyStopping: missing {missing}, unknown {unknown}")
        fresh = EarlyStopping(self.model, patience=state_dict["patience"], mode=state_dict["mode"],
                              min_delta=state_dict["min_delta"])
        counters = {}
        for key in ("best_epoch", "num_steps", "num_bad_steps"):
            v = state_dict[key]
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral) or v < 0:
                raise ValueError(f"state_dict[{key!r}] must be an integer >= 0, got {v!r}")
            counters[key] = int(v)
        best = state_dict["best_state"]
        if best is not None:
            _check_state_like_model(self.model, best)
        score = state_dict["best_score"]
        if isinstance(score, (bool, np.bool_)) or not isinstance(score, numbers.Real):
            raise TypeError(f"state_dict['best_score'] must be a real number, got {score!r}")
        fresh.best_score = float(score)
        fresh.improved = bool(state_dict["improved"])
        self.__dict__.update(fresh.__dict__, **counters,
                             best_state=None if best is None else {k: v.copy() for k, v in best.items()})


def _check_state_like_model(model: Any, state: Any) -> None:
    """``state`` must name exactly the model's parameters, with their shapes (ValueError otherwise)."""
    if not isinstance(state, dict):
        raise TypeError(f"state_dict['best_state'] must be a dict of arrays, got {type(state).__name__}")
    current = model.state_dict(keep_vars=True)
    if set(state) != set(current):
        raise ValueError(f"state_dict['best_state'] names {sorted(state)}, the model has {sorted(current)}")
    for name, value in state.items():
        if tuple(getattr(value, "shape", ())) != tuple(current[name].shape):
            raise ValueError(f"state_dict['best_state'][{name!r}] has shape {getattr(value, 'shape', None)}, "
                             f"the parameter {tuple(current[name].shape)}")
