"""The layer protocol shared by every ``sparsegat.nn`` layer, and input helpers."""

from __future__ import annotations

from typing import Any, Iterator, Mapping

import numpy as np

from ..arrays import array_kind, namespace, to_numpy
from ..backends import optional_function
from ..blas_threads import SMALL_PRODUCT, blas_threads_for, t_matmul
from ..csr_format import check_csr
from . import state as _state
from .state import LoadResult, ParameterView

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
    """``(x, is_sparse)`` with ``x`` 2-D in the layer's dtype; sparse inputs become CSR.

    Dense inputs must have a float dtype; sparse inputs a real one (bool, integer or
    float: counts and 0/1 features convert exactly). Complex, object, string and
    masked inputs are refused (``TypeError``): converting them would drop the
    imaginary part or the mask silently.
    """
    kind = input_kind(x)
    if isinstance(x, np.ma.MaskedArray):
        raise TypeError(f"{name} must be a plain array, got a masked array (its mask would be ignored); "
                        f"pass {name}.filled(value) or the rows you mean")
    if is_sparse(x):
        if len(x.shape) != 2:
            raise ValueError(f"{name} must be 2-D, got shape {x.shape}")
        if np.dtype(x.dtype).kind not in "biuf":
            raise TypeError(f"{name} must hold real numbers, got a sparse matrix of dtype {x.dtype} "
                            f"(converting it would drop the imaginary part)")
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
    """``x.T @ dy`` for a sparse or dense ``x``: the weight gradient of a linear map
    (dense NumPy: :func:`sparsegat.blas_threads.t_matmul`)."""
    out = x.T @ dy if is_sparse(x) else t_matmul(x, dy)
    if is_sparse(out):  # pragma: no cover - sparse @ dense is dense in scipy and cupyx
        out = out.toarray()
    return out


def check_grad(owner: str, dy: Any, shape: tuple[int, ...], dtype: Any, kind: str | None,
               name: str = "dy") -> Any:
    """``dy`` checked against the output it is the gradient of, cast to ``dtype``.

    ``TypeError`` for anything but an array of the output's kind (NumPy or CuPy; lists
    are refused, not guessed at) or for a non-real dtype; ``ValueError`` for another
    shape. Real arrays of another dtype are cast.
    """
    dkind = array_kind(dy)
    if dkind is None or isinstance(dy, np.ma.MaskedArray):
        what = "a masked array" if isinstance(dy, np.ma.MaskedArray) else type(dy).__name__
        raise TypeError(f"{owner}.backward: {name} must be a {kind or 'NumPy'} array like the output of "
                        f"forward, got {what}")
    if kind is not None and dkind != kind:
        raise TypeError(f"{owner}.backward: {name} is a {dkind} array but the output of forward is a {kind} array")
    if dy.dtype.kind not in "biuf":
        raise TypeError(f"{owner}.backward: {name} must hold real numbers, got dtype {dy.dtype}")
    if tuple(dy.shape) != tuple(shape):
        raise ValueError(f"{owner}.backward: {name} must have shape {tuple(shape)} (the output's), "
                         f"got {tuple(dy.shape)}")
    if dy.dtype != dtype:
        dy = dy.astype(dtype)
    return dy


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
    training : bool
        The mode of forwards called without ``training=`` (dropout on in training),
        set with :meth:`train` and :meth:`eval` on a module and all its sub-modules.
        False for a new module (PyTorch's start in training mode).

    A layer caches what its backward needs during :meth:`forward`; a layer
    object is used once per forward pass (share weights by assigning the same
    array to two layers' ``params``, not by calling one layer twice).

    **Which forward a backward belongs to.** ``backward`` uses the most recent
    training-mode forward (``training=True``) that has not been backpropagated
    yet; an evaluation forward (``training=False``) does not replace it, so
    logging a validation accuracy between a training forward and its backward
    is harmless. When there is no such training forward, ``backward`` uses the
    most recent evaluation forward. A backward retires every forward made before
    it: calling ``backward`` a second time without a new forward raises
    ``RuntimeError`` (as PyTorch does without ``retain_graph``), and so does a
    backward before any forward. A backward that raises (a ``dy`` of the wrong
    shape, say) retires nothing. The same rule holds for every layer and for
    :class:`Sequential`.
    """

    def __init__(self, dtype: Any = np.float32, seed: Any = None) -> None:
        self.dtype = check_dtype(dtype)
        self.params: dict[str, Any] = {}
        self.grads: dict[str, Any] = {}
        self._rng = np.random.default_rng(seed)
        #: False: ``backward`` skips the input gradient and returns None (a first layer,
        #: whose input is data, as PyG skips it for inputs without ``requires_grad``).
        self.input_grad = True
        self._saved_train: Any = None
        self._saved_eval: Any = None
        self._backward_runs = 0
        #: The mode a forward without ``training=`` runs in (``train()``/``eval()``). False at
        #: construction, unlike PyTorch, so code written before modes existed keeps evaluating.
        self.training = False

    # ------------------------------------------------------------------ protocol
    def forward(self, x: Any, g: Any = None, *, training: bool | None = None) -> Any:
        raise NotImplementedError

    def train(self, mode: bool = True) -> "Module":
        """Set training mode (dropout on) on this module and every sub-module; returns self.

        A forward called without ``training=`` runs in the module's mode; an explicit
        ``training=True``/``False`` overrides it for that call (and for the layers
        inside a container).
        """
        if not isinstance(mode, (bool, np.bool_)):
            raise TypeError(f"mode must be True or False, got {mode!r}")
        self.training = bool(mode)
        for _, child in self.children():
            child.train(mode)
        return self

    def eval(self) -> "Module":
        """Set evaluation mode (dropout off) on this module and every sub-module; returns self."""
        return self.train(False)

    def _is_training(self, training: bool | None) -> bool:
        """The mode of one forward: the ``training=`` argument when given, else the module's mode."""
        if training is None:
            return bool(getattr(self, "training", False))
        return bool(training)

    def backward(self, dy: Any) -> Any:
        """Gradients of the parameters (into ``grads``) and of the input (returned).

        Belongs to the forward chosen by the rule in the class docstring (the latest
        training forward not yet backpropagated, else the latest forward);
        ``RuntimeError`` when every forward has been backpropagated already.
        """
        saved = self._saved_for_backward()
        with blas_threads_for(getattr(self, "_blas_work", SMALL_PRODUCT)):  # as its forward ran
            dx = self._backward(saved, dy)
        self._saved_train = self._saved_eval = None
        self._backward_runs = getattr(self, "_backward_runs", 0) + 1
        return dx

    def _backward(self, saved: Any, dy: Any) -> Any:
        """The layer's backward pass, given what its forward saved."""
        raise NotImplementedError

    def _save_for_backward(self, saved: Any, training: bool) -> None:
        """Keep what backward needs: training and evaluation forwards in separate slots."""
        if training:
            self._saved_train = saved
        else:
            self._saved_eval = saved

    def _saved_for_backward(self) -> Any:
        """What the forward that the next backward belongs to saved (RuntimeError if none is left)."""
        saved = getattr(self, "_saved_train", None)
        if saved is None:
            saved = getattr(self, "_saved_eval", None)
        if saved is None:
            name = type(self).__name__
            if getattr(self, "_backward_runs", 0):
                raise RuntimeError(f"{name}.backward called twice for the same forward: every forward has "
                                   f"been backpropagated already (a backward frees what its forward saved); "
                                   f"run forward again")
            raise RuntimeError(f"{name}.backward called before forward")
        return saved

    def __call__(self, x: Any, g: Any = None, *, training: bool | None = None) -> Any:
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

    def parameters(self) -> ParameterView:
        """The parameter arrays, as PyTorch's ``model.parameters()`` (a re-iterable view).

        The optimizers and ``sparsegat.optim.clip_grad_norm_`` accept it in place of
        the model: it remembers the module, whose layers hold the gradients.
        """
        return ParameterView(self)

    def state_dict(self, keep_vars: bool = False) -> dict[str, Any]:
        """``{qualified name: copy of the array}`` of every parameter, in its own array library.

        Copies, so a state kept as "the best so far" does not change as training goes
        on. ``keep_vars=True`` gives the live arrays instead (writing into them
        changes the model).
        """
        return _state.state_dict(self, keep_vars)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> LoadResult:
        """Copy the arrays of ``state_dict`` into the parameters; returns ``(missing_keys, unexpected_keys)``.

        Every value must be a NumPy or CuPy float array of the parameter's shape
        (``TypeError`` for another type or a non-float dtype, ``ValueError`` for
        another shape, each naming the entry); it is cast to the parameter's dtype
        and moved to where the parameter lives, and copied into the parameter's array
        (arrays shared between layers stay shared). With ``strict=True`` (default)
        missing or unexpected names are a ``ValueError``. Nothing changes unless
        every entry is valid.
        """
        return _state.load_state_dict(self, state_dict, strict)

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
        """``params[key]``, checked to be there and to live where the input does."""
        p = self.params.get(key)
        if p is None:
            raise ValueError(f"{type(self).__name__}.params has no {key!r} (it was deleted or set to None); "
                             f"the layer needs it: assign an array of shape and dtype of the original")
        if like is not None and array_kind(p) != like:
            raise TypeError(f"{type(self).__name__}.params[{key!r}] is a {array_kind(p) or type(p).__name__} "
                            f"array but the input is a {like} array; move the model with .to({like!r})")
        return p

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"
