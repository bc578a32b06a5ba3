"""Per-edge score functions, compiled.

Every kernel is specialised on one score: the factories in :mod:`.forward` and
:mod:`.backward` close over a constant score id, and the helpers here are
inlined at the Numba IR level (``inline="always"``), so Numba's dead-branch
pruning keeps only the code of the score in use. Nothing of size nnz x H x D
exists anywhere: scores are recomputed from ``q[i, h]`` and ``k[j, h]`` on the fly.
"""

from __future__ import annotations

from numba import njit

from ...spec import SCORE_CODES

#: The score codes the kernels branch on, named (values from :data:`sparsegat.spec.SCORE_CODES`).
DOT, SCALED_DOT, COSINE, EUCLIDEAN, ADDITIVE, GATV2 = (
    SCORE_CODES[s] for s in ("dot", "scaled_dot", "cosine", "euclidean", "additive", "gatv2"))

#: Fast-math flags of every kernel: reassociation lets LLVM vectorise the
#: D- and Dv-length reductions (the result is still a fixed function of the
#: inputs, so runs stay bitwise identical). No ``nnan``/``ninf``: NaN and inf
#: propagate as IEEE says.
FASTMATH = {"nsz", "arcp", "contract", "reassoc"}


@njit(inline="always", cache=True, fastmath=FASTMATH)
def leaky_relu(z, slope):
    """LeakyReLU: ``z`` for ``z > 0`` else ``slope * z``."""
    return z if z > 0 else slope * z


@njit(inline="always", cache=True, fastmath=FASTMATH)
def leaky_relu_grad(z, slope, one):
    """Derivative of :func:`leaky_relu`: ``one`` for ``z > 0`` else ``slope`` (``slope`` at 0)."""
    return one if z > 0 else slope


@njit(inline="always", cache=True, fastmath=FASTMATH)
def edge_score(sid, q, i, k, j, h, att, qnorm, knorm, tau, slope, scale):
    """Score of edge ``(i <- j)``, head ``h``, without the edge bias; returns ``(s, aux)``.

    ``aux`` is what the backward pass needs again: the cosine ``c`` (``s = tau * c``),
    the squared euclidean distance, the additive pre-activation ``z``; 0 otherwise.
    For ``cosine``, ``q`` and ``k`` are the unit vectors ``x / max(norm x, eps)`` and
    ``qnorm[i, h] = (1 / max(norm q_ih, eps), norm q_ih > eps)`` (likewise ``knorm``).
    """
    if sid == ADDITIVE:
        z = q[i, h] + k[j, h]
        return leaky_relu(z, slope), z
    elif sid == GATV2:
        acc = q.dtype.type(0)
        for d in range(q.shape[2]):
            acc += att[h, d] * leaky_relu(q[i, h, d] + k[j, h, d], slope)
        return acc, q.dtype.type(0)
    elif sid == EUCLIDEAN:
        acc = q.dtype.type(0)
        for d in range(q.shape[2]):
            t = q[i, h, d] - k[j, h, d]
            acc += t * t
        return -tau * acc, acc
    elif sid == COSINE:
        # q and k are the unit vectors q / max(norm q, eps) (see forward.cosine_unit).
        c = q.dtype.type(0)
        for d in range(q.shape[2]):
            c += q[i, h, d] * k[j, h, d]
        return tau * c, c
    else:
        acc = q.dtype.type(0)
        for d in range(q.shape[2]):
            acc += q[i, h, d] * k[j, h, d]
        if sid == DOT:
            return acc, q.dtype.type(0)
        else:  # SCALED_DOT
            return acc * scale, q.dtype.type(0)
