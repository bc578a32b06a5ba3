"""The layer protocol shared by every ``sparsegat.nn`` layer, and input helpers."""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from ..arrays import array_kind, namespace, to_numpy
from ..backends import optional_function
from ..csr_format import check_csr

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def check_dtype(dtype: Any) -> np.dtype:
    """The float dtype of a layer: float32 or float64."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from None
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dt}")
    return dt


def check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_probability(name: str, value: Any) -> float:
    try:
        p = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number in [0, 1), got {value!r}") from None
    if not 0.0 <= p < 1.0:
        raise ValueError(f"{name} must lie in [0, 1), got {value!r}")
    return p


def is_sparse(x: Any) -> bool:
    """True for scipy.sparse and cupyx.scipy.sparse matrices and arrays (without importing either)."""
    module = type(x).__module__
    return module.startswith("scipy.sparse") or module.startswith("cupyx.scipy.sparse")


def input_kind(x: Any) -> str:
    """``"numpy"`` or ``"cupy"`` for a dense or sparse input; TypeError for anything else."""
    if is_sparse(x):
        return "cupy" if type(x).__module__.startswith("cupyx") else "numpy"
    kind = array_kind(x)
    if kind is None:
        raise TypeError(f"x must be a NumPy or CuPy array or a scipy/cupyx sparse matrix, "
                        f"got {type(x).__name__}")
    return kind


def as_input(x: Any, dtype: np.dtype, name: str = "x") -> tuple[Any, bool]:
    """``(x, is_sparse)`` with ``x`` 2-D in the layer's dtype; sparse inputs become CSR."""
    kind = input_kind(x)
    if is_sparse(x):
        if len(x.shape) != 2:
            raise ValueError(f"{name} must be 2-D, got shape {x.shape}")
        _check_sparse_structure(name, x)
        if x.format != "csr":
            x = x.tocsr()
        if x.dtype != dtype:
            x = x.astype(dtype)
        return x, True
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (nodes, features), got shape {tuple(x.shape)}")
    if x.dtype.kind != "f":
        raise TypeError(f"{name} must be a float array, got dtype {x.dtype}")
    if x.dtype != dtype:
        x = x.astype(dtype)
    del kind
    return x, False


def _check_sparse_structure(name: str, x: Any) -> None:
    """Check a scipy/cupyx CSR or CSC input before anything converts or reads it (SciPy
    accepts out-of-range indices at construction, and ``tocsr`` would then write out of
    bounds); other formats are converted by SciPy from arrays it checks itself."""
    fmt = getattr(x, "format", None)
    if fmt == "csr":
        check_csr(x.indptr, x.indices, x.shape, name=name, data=x.data)
    elif fmt == "csc":
        check_csr(x.indptr, x.indices, x.shape[::-1], name=name, data=x.data, dims=("n_cols", "n_rows"))


def sparse_dense_matmul(x: Any, w: Any, backend: str | None = None) -> Any:
    """``x @ w`` for a sparse or dense ``x`` and a dense ``w``; always a dense array.

    A scipy CSR ``x`` with a NumPy ``w`` of its dtype goes to the backend's ``csr_matmul``
    where the backend chosen for NumPy arrays has one (numba), else to SciPy.
    """
    if is_sparse(x) and x.format == "csr" and isinstance(w, np.ndarray) and w.dtype == x.dtype:
        matmul = optional_function("csr_matmul", "numpy", backend)
        if matmul is not None:
            return matmul(x.indptr, x.indices, x.data, w)
    return x @ w


def sparse_t_matmul(x: Any, dy: Any) -> Any:
    """``x.T @ dy`` for a sparse or dense ``x``: the weight gradient of a linear map."""
    out = x.T @ dy
    if is_sparse(out):  # pragma: no cover - sparse @ dense is dense in scipy and cupyx
        out = out.toarray()
    return out


class Module:
    """Base class of every layer and model.

    Attributes
    ----------
    params : dict[str, array]
        The learnable arrays, of the active backend (NumPy or CuPy). Assigning
        a new array to ``params[name]`` is supported: layers read their
        parameters at every forward pass.
    grads : dict[str, array]
        Gradients of the last :meth:`backward`, under the names of ``params``;
        each backward overwrites them (no accumulation).

    A layer caches what its backward needs during :meth:`forward`, so every
    ``backward`` belongs to the latest ``forward`` of that layer, and a layer
    object is used once per forward pass (share weights by assigning the same
    array to two layers' ``params``, not by calling one layer twice).
    """

    def __init__(self, dtype: Any = np.float32, seed: Any = None) -> None:
        self.dtype = check_dtype(dtype)
        self.params: dict[str, Any] = {}
        self.grads: dict[str, Any] = {}
        self._rng = np.random.default_rng(seed)
        #: False: ``backward`` skips the input gradient and returns None (a first layer,
        #: whose input is data, as PyG skips it for inputs without ``requires_grad``).
        self.input_grad = True

    # ------------------------------------------------------------------ protocol
    def forward(self, x: Any, g: Any = None, *, training: bool = False) -> Any:
        raise NotImplementedError

    def backward(self, dy: Any) -> Any:
        raise NotImplementedError

    def __call__(self, x: Any, g: Any = None, *, training: bool = False) -> Any:
        return self.forward(x, g, training=training)

    # ------------------------------------------------------------------ parameters
    def children(self) -> list[tuple[str, "Module"]]:
        """Named sub-layers (containers override this)."""
        return []

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, "Module", str]]:
        """``(qualified name, owning layer, key)`` for every parameter, in a fixed order.

        Qualified names are dotted paths such as ``"0.W"`` or ``"2.att_src"``; they
        name parameters in :func:`save_params` files and optimizer state.
        """
        for key in list(self.params):
            yield prefix + key, self, key
        for name, child in self.children():
            yield from child.named_parameters(f"{prefix}{name}.")

    def state_dict(self) -> dict[str, Any]:
        """``{qualified name: array}`` of every parameter (the arrays themselves, not copies)."""
        return {name: layer.params[key] for name, layer, key in self.named_parameters()}

    def num_parameters(self) -> int:
        """Total number of learnable numbers."""
        return int(sum(int(layer.params[key].size) for _, layer, key in self.named_parameters()))

    def zero_grad(self) -> None:
        """Forget every gradient (backward overwrites them anyway)."""
        self.grads.clear()
        for _, child in self.children():
            child.zero_grad()

    def to(self, device: str) -> "Module":
        """Move every parameter to ``"numpy"`` (host) or ``"cupy"`` (GPU), in place; returns self."""
        if device not in ("numpy", "cupy"):
            raise ValueError(f"device must be 'numpy' or 'cupy', got {device!r}")
        move = to_numpy if device == "numpy" else namespace("cupy").asarray
        for key in list(self.params):
            self.params[key] = move(self.params[key])
        for key in list(self.grads):
            self.grads[key] = move(self.grads[key])
        self._moved(device)
        for _, child in self.children():
            child.to(device)
        return self

    def _moved(self, device: str) -> None:
        """Hook for layers that keep device-side state besides params and grads."""

    @property
    def device(self) -> str:
        """Where the parameters live: ``"numpy"`` or ``"cupy"`` (``"numpy"`` without parameters)."""
        for _, layer, key in self.named_parameters():
            return array_kind(layer.params[key]) or "numpy"
        return "numpy"

    def _param(self, key: str, like: Any = None) -> Any:
        """``params[key]``, checked to live where the input does."""
        p = self.params[key]
        if like is not None and array_kind(p) != like:
            raise TypeError(f"{type(self).__name__}.params[{key!r}] is a {array_kind(p) or type(p).__name__} "
                            f"array but the input is a {like} array; move the model with .to({like!r})")
        return p

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"
