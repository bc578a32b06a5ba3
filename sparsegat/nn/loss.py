"""Loss and metrics for node classification."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from ..arrays import array_kind, namespace


class LossAndGrad(NamedTuple):
    """A loss and its gradient with respect to the logits (unpacks as ``loss, dlogits``)."""

    loss: float
    dlogits: Any


def mask_indices(mask: Any, n: int, xp: Any, name: str = "mask") -> Any:
    """Row indices (int64) selected by ``mask``, None for all nodes.

    ``mask`` selects the nodes that count, in one of these explicit forms:

    * ``None``: every node;
    * a boolean array of shape ``(n,)``: the nodes where it is True;
    * an integer array (any signed or unsigned dtype), 1-D, of node indices in
      ``[0, n)``; a node listed twice counts twice.

    An integer array of length ``n`` holding only 0s and 1s (``mask.astype(int)``)
    is ambiguous, a 0/1 mask or the indices of nodes 0 and 1, and raises
    ``TypeError``: pass ``mask.astype(bool)`` for a mask or ``np.flatnonzero(mask)``
    for indices. Other dtypes (float, complex, object) and masked arrays raise
    ``TypeError``. An empty ``mask`` selects no node.
    """
    if mask is None:
        return None
    if isinstance(mask, np.ma.MaskedArray):
        raise TypeError(f"{name} must be a boolean mask or an integer index array, got a masked array "
                        f"(its mask would be ignored)")
    if isinstance(mask, (list, tuple)) and len(mask) == 0:
        return xp.zeros(0, dtype=np.int64)
    mask = xp.asarray(mask)
    if mask.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(mask.shape)}")
    if mask.dtype == bool:
        if mask.shape[0] != n:
            raise ValueError(f"{name}: a boolean mask must have one entry per node ({n}), got {mask.shape[0]}")
        return xp.flatnonzero(mask)
    if mask.dtype.kind not in "iu":
        if mask.size == 0:
            return xp.zeros(0, dtype=np.int64)
        raise TypeError(f"{name} must be a boolean mask or integer node indices, got dtype {mask.dtype}")
    if mask.size == 0:
        return mask.astype(np.int64)
    lo, hi = int(mask.min()), int(mask.max())
    if lo < 0 or hi >= n:
        raise ValueError(f"{name}: node indices must lie in [0, {n}), got values from {lo} to {hi}")
    if mask.shape[0] == n and hi <= 1 and n > 0:
        raise TypeError(f"{name} is an integer array of {n} zeros and ones, one per node: ambiguous between "
                        f"a 0/1 mask and the indices of nodes 0 and 1; pass {name}.astype(bool) for a mask "
                        f"or np.flatnonzero({name}) for indices")
    return mask.astype(np.int64, copy=False)


def _logits(logits: Any, kinds: str, what: str) -> tuple[Any, Any]:
    """``(xp, logits)`` checked: a 2-D NumPy or CuPy array of a dtype kind in ``kinds``."""
    kind = array_kind(logits)
    if kind is None or isinstance(logits, np.ma.MaskedArray):
        what_got = "a masked array" if isinstance(logits, np.ma.MaskedArray) else type(logits).__name__
        raise TypeError(f"logits must be a NumPy or CuPy array, got {what_got}")
    if logits.ndim != 2:
        raise ValueError(f"logits must be 2-D (nodes, classes), got shape {tuple(logits.shape)}")
    if logits.dtype.kind not in kinds:
        raise TypeError(f"logits must be {what}, got dtype {logits.dtype}")
    return namespace(kind), logits


def _labels(labels: Any, n: int, xp: Any) -> Any:
    """``labels`` checked: 1-D integers, one per node (range checked on the selected ones)."""
    if isinstance(labels, np.ma.MaskedArray):
        raise TypeError("labels must be an integer array, got a masked array (its mask would be ignored)")
    labels = xp.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(f"labels must have shape ({n},), got {tuple(labels.shape)}")
    if labels.dtype.kind not in "iu":
        raise TypeError(f"labels must be integers, got dtype {labels.dtype}")
    return labels


def _check_range(y: Any, classes: int) -> Any:
    """Selected labels checked to lie in ``[0, classes)`` (before any cast: uint64 cannot wrap), as int64."""
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= classes:
        raise ValueError(f"labels must lie in [0, {classes}), got values from {lo} to {hi}")
    return y.astype(np.int64, copy=False)


def softmax_cross_entropy(logits: Any, labels: Any, mask: Any = None) -> LossAndGrad:
    """Mean cross-entropy of a softmax over classes, on the nodes selected by ``mask``.

    Parameters
    ----------
    logits : array, shape (n, classes)
    labels : integer array, shape (n,)
        Class of every node (only the masked ones are read).
    mask : boolean array (n,) or integer indices, optional
        The nodes that count (all when None); see below.

    Returns
    -------
    LossAndGrad
        ``loss`` (float): ``-mean_{i in mask} log softmax(logits_i)[labels_i]``;
        ``dlogits`` (array ``(n, classes)``): its gradient,
        ``(softmax(logits_i) - onehot(labels_i)) / m`` on the ``m`` masked rows,
        zero elsewhere.

    Raises
    ------
    TypeError
        Non-float logits, non-integer labels, an ambiguous or non-integer mask.
    ValueError
        Shapes that disagree, labels outside ``[0, classes)`` on the selected
        nodes, indices outside ``[0, n)``, a mask that selects no node.

    Notes
    -----
    ``mask`` is ``None`` (every node), a boolean array of shape ``(n,)`` or an integer
    index array; an integer array of ``n`` zeros and ones is ambiguous and refused.
    :func:`mask_indices` gives the rule in full.

    Examples
    --------
    >>> import numpy as np
    >>> from sparsegat import nn
    >>> loss, dlogits = nn.softmax_cross_entropy(np.zeros((3, 2)), np.array([0, 1, 1]), np.array([0, 2]))
    >>> round(loss, 4), dlogits.shape
    (0.6931, (3, 2))
    """
    xp, logits = _logits(logits, "f", "a float array")
    n, classes = logits.shape
    labels = _labels(labels, n, xp)
    rows = mask_indices(mask, n, xp)
    z = logits if rows is None else logits[rows]
    y = labels if rows is None else labels[rows]
    m = int(z.shape[0])
    if m == 0:
        raise ValueError("the mask selects no nodes")
    y = _check_range(y, classes)
    z = z - z.max(axis=1, keepdims=True)
    ez = xp.exp(z)
    se = ez.sum(axis=1, keepdims=True)
    idx = xp.arange(m)
    logp_true = z[idx, y] - xp.log(se[:, 0])
    loss = -float(logp_true.sum()) / m
    d = ez / se
    d[idx, y] -= 1.0
    d *= 1.0 / m
    if rows is None:
        return LossAndGrad(loss, d.astype(logits.dtype, copy=False))
    dlogits = xp.zeros_like(logits)
    dlogits[rows] = d
    return LossAndGrad(loss, dlogits)


def accuracy(logits: Any, labels: Any, mask: Any = None) -> float:
    """Fraction of the masked nodes whose arg-max class is their label.

    ``logits`` ``(n, classes)`` of real numbers, ``labels`` ``(n,)`` integers, ``mask``
    as for :func:`softmax_cross_entropy` (the same rule; ambiguous 0/1 integer masks
    raise ``TypeError``). Labels are not range-checked: a label outside
    ``[0, classes)`` is simply never predicted.
    """
    xp, logits = _logits(logits, "fiu", "an array of real numbers")
    labels = _labels(labels, logits.shape[0], xp)
    rows = mask_indices(mask, logits.shape[0], xp)
    pred = logits.argmax(axis=1)
    if rows is not None:
        pred, labels = pred[rows], labels[rows]
    if pred.shape[0] == 0:
        raise ValueError("the mask selects no nodes")
    return float((pred == labels).mean())
