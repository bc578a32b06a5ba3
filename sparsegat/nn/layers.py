"""Dense building blocks: Linear, ELU, ReLU, Dropout and the Sequential container."""

from __future__ import annotations

from typing import Any, Callable, Iterable, NamedTuple

import numpy as np

from ..arrays import array_kind, namespace
from . import init
from .module import (Module, _check_sparse_structure, as_input, check_grad, check_positive_int,
                     check_probability, input_kind, is_sparse, sparse_dense_matmul, sparse_t_matmul)


def _map(f: Callable[[Any], Any], x: Any) -> Any:
    """Apply ``f`` to an array, or to each element of a tuple of arrays (residual streams)."""
    if isinstance(x, tuple):
        return tuple(None if a is None else f(a) for a in x)
    return f(x)


def _map2(f: Callable[[Any, Any], Any], a: Any, b: Any) -> Any:
    if isinstance(a, tuple):
        return tuple(None if (u is None or v is None) else f(u, v) for u, v in zip(a, b))
    return None if a is None or b is None else f(a, b)


class _Spec(NamedTuple):
    """Shape, dtype and array kind of a forward output: what its gradient must match."""

    shape: tuple[int, ...]
    dtype: Any
    kind: str | None


def _spec(y: Any) -> Any:
    """The ``_Spec`` of an output (a tuple of them for streams; None for sparse or absent ones)."""
    if type(y) is tuple:
        return tuple(_spec(a) for a in y)
    if y is None or is_sparse(y):
        return None
    return _Spec(tuple(y.shape), y.dtype, array_kind(y))


def _check_like(owner: str, dy: Any, spec: Any) -> Any:
    """``dy`` checked against the output spec (tuples entry by entry; None entries pass)."""
    if type(spec) is tuple:  # streams (a _Spec is a NamedTuple, hence the exact type)
        if not isinstance(dy, tuple) or len(dy) != len(spec):
            raise TypeError(f"{owner}.backward: the output of forward was a tuple of {len(spec)} arrays, so dy "
                            f"must be one too, got {type(dy).__name__}"
                            f"{f' of {len(dy)}' if isinstance(dy, tuple) else ''}")
        return tuple(None if (d is None or s is None) else check_grad(owner, d, s.shape, s.dtype, s.kind,
                                                                       f"dy[{i}]")
                     for i, (d, s) in enumerate(zip(dy, spec)))
    if spec is None or dy is None:
        return None
    return check_grad(owner, dy, spec.shape, spec.dtype, spec.kind)


def _float_input(owner: str, x: Any, allow_sparse: bool = False, check_structure: bool = False) -> Any:
    """``x`` (or each array of a tuple) checked to be a float array (or a float sparse matrix)."""
    if isinstance(x, tuple):
        return tuple(None if a is None else _float_input(owner, a, allow_sparse, check_structure) for a in x)
    if allow_sparse and is_sparse(x):
        if np.dtype(x.dtype).kind != "f":
            raise TypeError(f"{owner} needs float inputs, got a sparse matrix of dtype {x.dtype}; "
                            f"convert it with x.astype(np.float32)")
        if check_structure:
            _check_sparse_structure("x", x)
        return x
    if array_kind(x) is None or isinstance(x, np.ma.MaskedArray):
        what = "a masked array" if isinstance(x, np.ma.MaskedArray) else type(x).__name__
        raise TypeError(f"{owner} takes a NumPy or CuPy array (or a tuple of them), got {what}")
    if x.dtype.kind != "f":
        raise TypeError(f"{owner} needs float inputs, got x of dtype {x.dtype}")
    return x


class Linear(Module):
    """``y = x @ W + b``.

    Parameters
    ----------
    in_dim, out_dim : int
        Feature sizes.
    bias : bool
        Learn ``b``.
    dtype : float32 (default) or float64
    seed : int, optional
        Initialisation as PyG's ``Linear(..., weight_initializer="glorot")``:
        Glorot-uniform ``W``, ``b ~ U(-1/sqrt(in_dim), 1/sqrt(in_dim))``.

    ``params``: ``W (in_dim, out_dim)``, ``b (out_dim,)``.

    ``x`` may be dense ``(n, in_dim)`` or a scipy.sparse / cupyx sparse matrix
    (bag-of-words features): the product is then sparse @ dense, and backward
    computes only ``dW = x.T @ dy`` and returns ``None`` (no gradient flows into
    sparse inputs).
    """

    def __init__(self, in_dim: int, out_dim: int, bias: bool = True, *, dtype: Any = np.float32,
                 seed: Any = None) -> None:
        super().__init__(dtype, seed)
        self.in_dim = check_positive_int("in_dim", in_dim)
        self.out_dim = check_positive_int("out_dim", out_dim)
        self.params["W"] = init.glorot((self.in_dim, self.out_dim), self._rng, self.dtype)
        if bias:
            self.params["b"] = init.uniform_fan_in((self.out_dim,), self.in_dim, self._rng, self.dtype)

    def forward(self, x: Any, g: Any = None, *, training: bool | None = None) -> Any:
        training = self._is_training(training)
        kind = input_kind(x)
        x, sparse = as_input(x, self.dtype)
        if x.shape[1] != self.in_dim:
            raise ValueError(f"Linear expects {self.in_dim} input features, got x of shape {tuple(x.shape)}")
        W = self._param("W", kind)
        y = sparse_dense_matmul(x, W)
        has_bias = "b" in self.params
        if has_bias:
            y += self._param("b", kind)
        self._save_for_backward((x, sparse, kind, W, has_bias), bool(training))
        return y

    def _backward(self, saved: Any, dy: Any) -> Any:
        x, sparse, kind, W, has_bias = saved
        dy = check_grad("Linear", dy, (x.shape[0], self.out_dim), self.dtype, kind)
        self.grads["W"] = sparse_t_matmul(x, dy)
        if has_bias:
            self.grads["b"] = dy.sum(axis=0)
        if sparse or not self.input_grad:
            return None
        return dy @ W.T

    def extra_repr(self) -> str:
        return f"{self.in_dim}, {self.out_dim}, bias={'b' in self.params}"


class ELU(Module):
    """``y = x`` for ``x > 0``, ``alpha * (exp(x) - 1)`` otherwise (elementwise; tuples map)."""

    def __init__(self, alpha: float = 1.0) -> None:
        super().__init__()
        self.alpha = float(alpha)
        if not self.alpha > 0:
            raise ValueError(f"alpha must be positive, got {alpha!r}")

    def _one(self, x: Any) -> Any:
        xp = namespace(x)
        y = xp.minimum(x, 0)
        xp.expm1(y, out=y)
        if self.alpha != 1.0:
            y *= self.alpha
        if self.alpha <= 1.0:
            # alpha * expm1(min(x, 0)) is 0 <= x for x > 0 and >= x for x <= 0 (alpha <= 1):
            # the max is the ELU, with one pass and one temporary fewer.
            xp.maximum(x, y, out=y)
        else:
            y += xp.maximum(x, 0)
        return y

    def _grad(self, dy: Any, y: Any) -> Any:
        # dy/dx = 1 where x > 0 (exactly where y > 0), y + alpha elsewhere
        xp = namespace(dy)
        if self.alpha == 1.0:
            # y + 1 > 1 exactly where y > 0, and lies in (0, 1] elsewhere: min(y + 1, 1) is the derivative
            d = y + 1.0
            xp.minimum(d, 1.0, out=d)
            d *= dy
            return d
        return xp.where(y > 0, dy, dy * (y + self.alpha))

    def forward(self, x: Any, g: Any = None, *, training: bool | None = None) -> Any:
        training = self._is_training(training)
        y = _map(self._one, _float_input("ELU", x))
        self._save_for_backward(y, bool(training))
        return y

    def _backward(self, saved: Any, dy: Any) -> Any:
        return _map2(self._grad, _check_like("ELU", dy, _spec(saved)), saved)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"


class ReLU(Module):
    """``y = max(x, 0)`` (elementwise; tuples map)."""

    def __init__(self) -> None:
        super().__init__()

    def forward(self, x: Any, g: Any = None, *, training: bool | None = None) -> Any:
        training = self._is_training(training)
        x = _float_input("ReLU", x)
        y = _map(lambda a: namespace(a).maximum(a, 0), x)
        self._save_for_backward((_map(lambda a: a > 0, x), _spec(y)), bool(training))
        return y

    def _backward(self, saved: Any, dy: Any) -> Any:
        keep, spec = saved
        return _map2(lambda a, m: a * m, _check_like("ReLU", dy, spec), keep)


class _Dropped(NamedTuple):
    """One dropout result: the output and its keep mask (None for sparse inputs: no backward)."""

    y: Any
    keep: Any


class Dropout(Module):
    """Feature dropout: in training, zero each entry with probability ``p`` and scale the rest by ``1/(1-p)``.

    The identity when ``training=False`` or ``p == 0``. Sparse inputs stay
    sparse: only their stored entries are dropped (dropping a zero changes
    nothing), and no gradient flows back into them. Masks come from the
    layer's own generator (``seed=``); on CuPy from a CuPy generator seeded
    from it. Tuples (residual streams) get independent masks.
    """

    def __init__(self, p: float = 0.5, *, seed: Any = None) -> None:
        super().__init__(seed=seed)
        self.p = check_probability("p", p)
        self._cupy_rng: Any = None

    def _moved(self, device: str) -> None:
        self._cupy_rng = None

    def _uniform(self, kind: str, shape: tuple[int, ...], dtype: Any) -> Any:
        if kind == "cupy":
            if self._cupy_rng is None:
                cupy = namespace("cupy")
                self._cupy_rng = cupy.random.RandomState(int(self._rng.integers(0, 2**63)))
            return self._cupy_rng.random_sample(shape, dtype=dtype)
        return self._rng.random(shape, dtype=dtype)

    def _keep(self, kind: str, shape: tuple[int, ...], dtype: Any) -> Any:
        """Boolean keep mask of the given shape: each entry kept with probability ``1 - p``."""
        if kind == "cupy":
            return self._uniform(kind, shape, np.float32 if dtype == np.float32 else np.float64) >= self.p
        # Raw 32-bit draws compared with round(p * 2**32): exact to 2**-32, and about twice
        # as fast as drawing floats.
        size = int(np.prod(shape))
        bits = self._rng.bit_generator.random_raw((size + 1) // 2).view(np.uint32)[:size]
        return (bits >= np.uint32(min(round(self.p * 2**32), 2**32 - 1))).reshape(shape)

    def _one(self, x: Any) -> _Dropped:
        kind = input_kind(x)
        scale = 1.0 / (1.0 - self.p)
        if is_sparse(x):
            # Keep only the surviving entries: the sparse products downstream get cheaper.
            xp = namespace(kind)
            x = x.tocsr()
            keep = self._keep(kind, (int(x.nnz),), x.dtype)
            kept_before = xp.zeros(int(x.nnz) + 1, dtype=x.indptr.dtype)
            xp.cumsum(keep, dtype=kept_before.dtype, out=kept_before[1:])
            indptr = kept_before[x.indptr]
            pos = xp.flatnonzero(keep)
            data = x.data.take(pos)
            data *= x.dtype.type(scale)
            return _Dropped(type(x)((data, x.indices.take(pos), indptr), shape=x.shape), None)
        keep = self._keep(kind, tuple(x.shape), x.dtype)
        y = x * keep
        y *= x.dtype.type(scale)
        return _Dropped(y, keep)

    def forward(self, x: Any, g: Any = None, *, training: bool | None = None) -> Any:
        training = self._is_training(training)
        active = training and self.p != 0.0
        # Float inputs only (scaling an integer array would truncate); a sparse input's
        # arrays are checked before anything converts or indexes them.
        x = _float_input("Dropout", x, allow_sparse=True, check_structure=active)
        if not active:
            self._save_for_backward(("identity", _spec(x)), training)
            return x
        out = _map(self._one, x)
        if isinstance(x, tuple):
            y = tuple(None if o is None else o.y for o in out)
            keep = tuple(None if o is None else o.keep for o in out)
        else:
            y, keep = out.y, out.keep
        self._save_for_backward((keep, _spec(y)), training)
        return y

    def _grad(self, dy: Any, keep: Any) -> Any:
        dx = dy * keep
        dx *= dx.dtype.type(1.0 / (1.0 - self.p))
        return dx

    def _backward(self, saved: Any, dy: Any) -> Any:
        keep, spec = saved
        dy = _check_like("Dropout", dy, spec)
        if isinstance(keep, str):
            return dy
        return _map2(self._grad, dy, keep)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Sequential(Module):
    """Layers applied in order; ``backward`` runs them in reverse.

    Every layer gets the same graph ``g``; a ``training=`` argument is passed on to
    every layer, and without one each layer runs in its own mode (``train()`` and
    ``eval()`` set it on all of them). Parameters are
    named ``"<index>.<name>"`` (``"0.W"``, ``"2.att_src"``). Backward stops early
    (returning ``None``) when a layer returns ``None``, as a layer fed sparse
    features does.
    """

    def __init__(self, *layers: Module) -> None:
        super().__init__()
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise TypeError(f"Sequential takes sparsegat.nn layers, got {type(layer).__name__} at position {i}")
        self.layers: list[Module] = list(layers)

    def children(self) -> list[tuple[str, Module]]:
        return [(str(i), layer) for i, layer in enumerate(self.layers)]

    def append(self, layer: Module) -> "Sequential":
        if not isinstance(layer, Module):
            raise TypeError(f"Sequential takes sparsegat.nn layers, got {type(layer).__name__}")
        self.layers.append(layer)
        return self

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, i: int) -> Module:
        return self.layers[i]

    def __iter__(self) -> Iterable[Module]:
        return iter(self.layers)

    def forward(self, x: Any, g: Any = None, *, training: bool | None = None) -> Any:
        for layer in self.layers:
            x = layer.forward(x, g, training=training)  # None: each layer runs in its own mode
        self._save_for_backward(True, self._is_training(training))
        return x

    def _backward(self, saved: Any, dy: Any) -> Any:
        # Each layer picks its own forward by the same rule, so all pick the same pass.
        for layer in reversed(self.layers):
            if dy is None:
                return None
            dy = layer.backward(dy)
        return dy

    def __repr__(self) -> str:
        inner = "\n".join(f"  ({i}): {layer!r}" for i, layer in enumerate(self.layers))
        return f"Sequential(\n{inner}\n)"
