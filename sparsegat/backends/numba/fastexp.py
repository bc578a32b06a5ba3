"""``exp`` without a library call, so that it inlines and pipelines inside the kernels.

Numba compiles ``math.exp`` to a call into libm (there is no SVML here), which
costs tens of cycles per call and stops LLVM from vectorising loops around it.
The kernels evaluate one exponential per edge and head (twice: forward, then
backward recomputes ``p``), so :func:`exp` is written out: Cody-Waite range
reduction ``x = n ln2 + r``, a polynomial (float32: the Cephes ``expf``
minimax polynomial, ~1 ulp) or Pade form (float64: the Cephes ``exp``
rational approximation, ~1 ulp) for ``e^r``, and ``2^n`` assembled from bits.

Only arguments ``x <= 0`` occur in the kernels (``s - max``). Below the
smallest normal result (float32: x < -87.33, float64: x < -708.39) the result
is 0 rather than a denormal; NaN gives NaN; +inf is not supported (never passed).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, types
from numba.extending import overload

from .intrinsics import bitcast_int_to_float

_LOG2E = 1.4426950408889634

# float32 (Cephes expf)
_F_LO = np.float32(-87.33654)
_F_C1 = np.float32(0.693359375)
_F_C2 = np.float32(-2.12194440e-4)
_F_P0 = np.float32(1.9875691500e-4)
_F_P1 = np.float32(1.3981999507e-3)
_F_P2 = np.float32(8.3334519073e-3)
_F_P3 = np.float32(4.1665795894e-2)
_F_P4 = np.float32(1.6666665459e-1)
_F_P5 = np.float32(5.0000001201e-1)
_F_LOG2E = np.float32(_LOG2E)
_F_HALF = np.float32(0.5)
_F_ONE = np.float32(1.0)
_F_ZERO = np.float32(0.0)

# float64 (Cephes exp)
_D_LO = -708.3964185322641
_D_C1 = 6.93145751953125e-1
_D_C2 = 1.42860682030941723212e-6
_D_P0 = 1.26177193074810590878e-4
_D_P1 = 3.02994407707441961300e-2
_D_P2 = 9.99999999999999999910e-1
_D_Q0 = 3.00198505138664455042e-6
_D_Q1 = 2.52448340349684104192e-3
_D_Q2 = 2.27265548208155028766e-1
_D_Q3 = 2.00000000000000000009e0


def exp(x):  # pragma: no cover - replaced by the overload in compiled code
    """``e**x`` for ``x <= 0`` (see the module docstring); float32 or float64."""
    return math.exp(x)


# Compiled as functions of their own, without fast-math: a caller's ``reassoc`` flag
# would otherwise fold the two-constant reduction ``x - n*C1 - n*C2`` into one and
# cost float64 two decimal digits. LLVM still inlines them (with their own flags).
@njit(cache=True, fastmath=False, error_model="numpy")
def exp_f32(x):
    """:func:`exp` for float32."""
    if not x >= _F_LO:
        return x if x != x else _F_ZERO  # NaN stays NaN; underflow gives 0
    n = np.floor(x * _F_LOG2E + _F_HALF)
    r = x - n * _F_C1 - n * _F_C2
    y = ((((_F_P0 * r + _F_P1) * r + _F_P2) * r + _F_P3) * r + _F_P4) * r + _F_P5
    y = y * r * r + r + _F_ONE
    return y * bitcast_int_to_float(np.int32((np.int32(n) + np.int32(127)) << np.int32(23)))


@njit(cache=True, fastmath=False, error_model="numpy")
def exp_f64(x):
    """:func:`exp` for float64."""
    if not x >= _D_LO:
        return x if x != x else 0.0
    n = np.floor(x * _LOG2E + 0.5)
    r = x - n * _D_C1 - n * _D_C2
    rr = r * r
    px = r * ((_D_P0 * rr + _D_P1) * rr + _D_P2)
    y = px / ((((_D_Q0 * rr + _D_Q1) * rr + _D_Q2) * rr + _D_Q3) - px)
    y = 1.0 + 2.0 * y
    return y * bitcast_int_to_float(np.int64((np.int64(n) + np.int64(1023)) << np.int64(52)))


@overload(exp)
def _exp_overload(x):
    if x == types.float32:
        return lambda x: exp_f32(x)
    if x == types.float64:
        return lambda x: exp_f64(x)
    return None

