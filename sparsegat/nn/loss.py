"""Loss and metrics for node classification."""

from __future__ import annotations

from typing import Any, NamedTuple

from ..arrays import array_kind, namespace


class LossAndGrad(NamedTuple):
    """A loss and its gradient with respect to the logits (unpacks as ``loss, dlogits``)."""

    loss: float
    dlogits: Any


def _rows(mask: Any, n: int, xp: Any) -> Any:
    """Row indices selected by ``mask``: None (all), a boolean mask (n,) or integer indices."""
    if mask is None:
        return None
    mask = xp.asarray(mask)
    if mask.ndim != 1:
        raise ValueError(f"mask must be 1-D, got shape {tuple(mask.shape)}")
    if mask.dtype == bool:
        if mask.shape[0] != n:
            raise ValueError(f"boolean mask must have one entry per node ({n}), got {mask.shape[0]}")
        return xp.flatnonzero(mask)
    if mask.dtype.kind not in "iu":
        raise TypeError(f"mask must be boolean or integer indices, got dtype {mask.dtype}")
    if mask.size and (int(mask.min()) < 0 or int(mask.max()) >= n):
        raise ValueError(f"mask indices must lie in [0, {n}), got values from {int(mask.min())} to {int(mask.max())}")
    return mask


def softmax_cross_entropy(logits: Any, labels: Any, mask: Any = None) -> LossAndGrad:
    """Mean cross-entropy of a softmax over classes, on the nodes selected by ``mask``.

    Parameters
    ----------
    logits : array, shape (n, classes)
    labels : integer array, shape (n,)
        Class of every node (only the masked ones are read).
    mask : boolean array (n,) or integer indices, optional
        The nodes that count (all when None).

    Returns
    -------
    LossAndGrad
        ``loss`` (float): ``-mean_{i in mask} log softmax(logits_i)[labels_i]``;
        ``dlogits`` (array ``(n, classes)``): its gradient,
        ``(softmax(logits_i) - onehot(labels_i)) / m`` on the ``m`` masked rows,
        zero elsewhere.

    Examples
    --------
    >>> import numpy as np
    >>> from sparsegat import nn
    >>> loss, dlogits = nn.softmax_cross_entropy(np.zeros((3, 2)), np.array([0, 1, 1]), np.array([0, 2]))
    >>> round(loss, 4), dlogits.shape
    (0.6931, (3, 2))
    """
    kind = array_kind(logits)
    if kind is None:
        raise TypeError(f"logits must be a NumPy or CuPy array, got {type(logits).__name__}")
    xp = namespace(kind)
    if logits.ndim != 2:
        raise ValueError(f"logits must be 2-D (nodes, classes), got shape {tuple(logits.shape)}")
    n, classes = logits.shape
    labels = xp.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(f"labels must have shape ({n},), got {tuple(labels.shape)}")
    if labels.dtype.kind not in "iu":
        raise TypeError(f"labels must be integers, got dtype {labels.dtype}")
    rows = _rows(mask, n, xp)
    z = logits if rows is None else logits[rows]
    y = labels if rows is None else labels[rows]
    m = int(z.shape[0])
    if m == 0:
        raise ValueError("the mask selects no nodes")
    if int(y.min()) < 0 or int(y.max()) >= classes:
        raise ValueError(f"labels must lie in [0, {classes}), got values from {int(y.min())} to {int(y.max())}")
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
    """Fraction of the masked nodes whose arg-max class is their label."""
    xp = namespace(logits)
    labels = xp.asarray(labels)
    rows = _rows(mask, logits.shape[0], xp)
    pred = logits.argmax(axis=1)
    if rows is not None:
        pred, labels = pred[rows], labels[rows]
    if pred.shape[0] == 0:
        raise ValueError("the mask selects no nodes")
    return float((pred == labels).mean())
