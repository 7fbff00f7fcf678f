"""Losses with their hand-derived gradients: softmax cross-entropy and mean squared error.

Both average over the samples (and, for a read-out at every step, over the valid steps
only), so that the loss of a batch does not depend on its padding.
"""
from __future__ import annotations

import numpy as np

__all__ = ["softmax", "softmax_cross_entropy", "mean_squared_error", "LOSSES"]


def softmax(logits):
    """Softmax over the last axis, shifted by the maximum for stability."""
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _weights(shape, mask, dtype):
    """Per-row weights ``1 / number of valid rows``, zero where ``mask`` is False."""
    w = np.ones(shape, dtype) if mask is None else mask.astype(dtype)
    count = w.sum()
    return w / count if count > 0 else w


def softmax_cross_entropy(logits, labels, mask=None):
    """Mean softmax cross-entropy and its gradient.

    Parameters
    ----------
    logits : ndarray (..., C)
    labels : int ndarray (...)
        Class indices in [0, C).
    mask : bool ndarray (...), optional
        Which rows count (valid steps of a per-step read-out).

    Returns
    -------
    loss : float
    dlogits : ndarray (..., C)
    """
    p = softmax(logits)
    w = _weights(labels.shape, mask, logits.dtype)
    picked = np.take_along_axis(p, labels[..., None], axis=-1)[..., 0]
    loss = -(w * np.log(np.maximum(picked, np.finfo(p.dtype).tiny))).sum()
    dlogits = p.copy()
    np.put_along_axis(dlogits, labels[..., None], picked[..., None] - 1, axis=-1)
    return float(loss), dlogits * w[..., None]


def mean_squared_error(pred, target, mask=None):
    """Mean (over samples, valid steps and outputs) squared error and its gradient.

    Parameters
    ----------
    pred, target : ndarray (..., C)
    mask : bool ndarray (...), optional

    Returns
    -------
    loss : float
    dpred : ndarray (..., C)
    """
    C = pred.shape[-1]
    w = _weights(pred.shape[:-1], mask, pred.dtype)[..., None] / C
    diff = pred - target
    return float((w * diff * diff).sum()), 2 * w * diff


LOSSES = {"cross_entropy": softmax_cross_entropy, "mse": mean_squared_error}
