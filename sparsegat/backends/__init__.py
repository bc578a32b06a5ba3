"""Backend registry and array-type dispatch.

A backend is a module implementing the functions in :data:`BACKEND_FUNCTIONS`
with the signatures of :mod:`sparsegat.backends.numpy` (the reference), and
any of :data:`OPTIONAL_FUNCTIONS` it can do faster than plain NumPy/CuPy code.
Each backend lives in one place: ``numpy.py``, ``numba/``, ``cuda/``. Backends
are imported lazily: numba and cupy are touched only when chosen.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from types import ModuleType
from typing import Any, Callable, Iterable

from ..arrays import array_kind

__all__ = [
    "BACKEND_FUNCTIONS",
    "OPTIONAL_FUNCTIONS",
    "BACKEND_NAMES",
    "ENV_VAR",
    "is_available",
    "available_backends",
    "get_backend",
    "select_backend",
    "array_kind_of",
    "optional_function",
]

#: The function set every backend implements, name for name.
BACKEND_FUNCTIONS = ("forward", "backward", "weights")
#: Dense helpers of the layers and optimizers that a backend may implement (see
#: :func:`optional_function`); where it does not, callers use plain array code.
#: ``csr_matmul(indptr, indices, data, w) -> x @ w`` for a CSR ``x`` that has passed
#: :func:`sparsegat.csr_format.check_csr`; ``adam_update(p, g, m, v, vmax, step, lr,
#: betas, eps, weight_decay, decoupled, amsgrad, maximize)`` updates in place.
OPTIONAL_FUNCTIONS = ("csr_matmul", "adam_update", "add_blockdiag_product")

#: Backend name -> (module, array kind it takes, what to install).
_BACKENDS = {
    "numpy": ("sparsegat.backends.numpy", "numpy", None),
    "numba": ("sparsegat.backends.numba.backend", "numpy", "numba"),
    "cupy": ("sparsegat.backends.cuda.backend", "cupy", "cupy"),  # the room is cuda/
}
BACKEND_NAMES = tuple(_BACKENDS)
ENV_VAR = "SPARSEGAT_BACKEND"

_loaded: dict[str, ModuleType] = {}


def _check_name(name: Any, argument: str = "backend") -> str:
    if not isinstance(name, str) or name not in _BACKENDS:
        raise ValueError(f"{argument} must be one of {', '.join(BACKEND_NAMES)}; got {name!r}")
    return name


def is_available(name: str) -> bool:
    """True when backend ``name`` can be imported here (its package is installed)."""
    _check_name(name)
    requirement = _BACKENDS[name][2]
    if requirement is None:
        return True
    return importlib.util.find_spec(requirement) is not None


def available_backends() -> list[str]:
    """Names of the backends whose packages are installed."""
    return [n for n in BACKEND_NAMES if is_available(n)]


def get_backend(name: str) -> ModuleType:
    """Import (once) and return backend ``name``, checking it implements the function set."""
    _check_name(name)
    if name not in _loaded:
        module_name, _, requirement = _BACKENDS[name]
        if not is_available(name):
            raise ValueError(f"backend {name!r} is not available: {requirement} is not installed "
                             f"(pip install 'sparsegat[{'cuda12' if name == 'cupy' else name}]')")
        module = importlib.import_module(module_name)
        missing = [f for f in BACKEND_FUNCTIONS if not callable(getattr(module, f, None))]
        if missing:
            raise RuntimeError(f"backend {name!r} lacks {missing}")
        _loaded[name] = module
    return _loaded[name]


def array_kind_of(arrays: Iterable[tuple[str, Any]]) -> str:
    """The common array kind of named arrays (None entries skipped); TypeError when mixed."""
    kinds = {}
    for arg, a in arrays:
        if a is None:
            continue
        kind = array_kind(a)
        if kind is None:
            raise TypeError(f"{arg} must be a NumPy or CuPy array, got {type(a).__name__}")
        kinds.setdefault(kind, arg)
    if len(kinds) > 1:
        raise TypeError("arrays of different kinds: " + ", ".join(f"{a} is {k}" for k, a in kinds.items()))
    return next(iter(kinds), "numpy")


def select_backend(kind: str, backend: str | None = None) -> str:
    """Name of the backend for arrays of ``kind``: ``backend``, else $SPARSEGAT_BACKEND, else by kind."""
    source = "backend"
    if backend is None and os.environ.get(ENV_VAR):
        backend, source = os.environ[ENV_VAR], ENV_VAR
    if backend is None:
        if kind == "cupy":
            return "cupy"
        return "numba" if is_available("numba") else "numpy"
    _check_name(backend, source)
    takes = _BACKENDS[backend][1]
    if takes != kind:
        missing = "" if is_available(backend) else (
            f"; besides, {_BACKENDS[backend][2]} is not installed here "
            f"(pip install 'sparsegat[{'cuda12' if backend == 'cupy' else backend}]')")
        raise TypeError(f"{source}={backend!r} takes {takes} arrays, but the inputs are {kind} arrays{missing}")
    return backend


def optional_function(name: str, kind: str, backend: str | None = None) -> Callable[..., Any] | None:
    """Backend function ``name`` (one of :data:`OPTIONAL_FUNCTIONS`) for arrays of ``kind``.

    The backend is the one :func:`select_backend` picks for ``kind`` and ``backend``;
    None when that backend does not implement ``name`` (the caller then runs plain
    NumPy/CuPy code, which gives the same results to rounding).
    """
    if name not in OPTIONAL_FUNCTIONS:
        raise ValueError(f"name must be one of {', '.join(OPTIONAL_FUNCTIONS)}; got {name!r}")
    return getattr(get_backend(select_backend(kind, backend)), name, None)
