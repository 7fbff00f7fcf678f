"""A batch of padded, timestamped sequences with their targets."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from .validation import as_rng

__all__ = ["Dataset"]


@dataclass(frozen=True)
class Dataset:
    """Padded sequences, timestamps, lengths and targets, sliced together.

    Parameters
    ----------
    x : ndarray (N, T, D) or None
        Input features (None when a network reads only ``tokens``).
    t : ndarray (N, T) float64
        Timestamps of every step.
    y : ndarray
        Targets: class labels (N,) int, or (N, T) int for a read-out at every step; or
        regression targets (N, C) / (N, T, C) float.
    lengths : ndarray (N,) int or None
        Valid steps per sequence (None: all T).
    tokens : ndarray (N, T) int or None
        Discrete event addresses for an :class:`plstm_np.Embedding` (e.g. N-MNIST pixels).

    Examples
    --------
    >>> val[:4]                 # the first four sequences, still a Dataset
    >>> for batch in train.batches(32, rng=0): ...
    """

    x: np.ndarray | None
    t: np.ndarray
    y: np.ndarray
    lengths: np.ndarray | None = None
    tokens: np.ndarray | None = None

    def __post_init__(self):
        n = len(self.t)
        for name in ("x", "y", "lengths", "tokens"):
            value = getattr(self, name)
            if value is not None and len(value) != n:
                raise ValueError(f"Dataset.{name} has {len(value)} rows but t has {n}")

    def __len__(self):
        return len(self.t)

    def __getitem__(self, index):
        """The sequences at ``index`` (a slice, an int array or a boolean mask)."""
        if isinstance(index, (int, np.integer)):
            index = slice(index, index + 1 if index != -1 else None)
        return Dataset(**{name: None if v is None else v[index] for name, v in self._fields()})

    def _fields(self):
        return ((f.name, getattr(self, f.name)) for f in dataclasses.fields(self))

    def replace(self, **changes):
        """A copy with some fields replaced."""
        return dataclasses.replace(self, **changes)

    @property
    def steps(self):
        """Number of valid steps in every sequence, as an int64 array."""
        if self.lengths is None:
            return np.full(len(self), self.t.shape[1], np.int64)
        return np.asarray(self.lengths, np.int64)

    def trimmed(self):
        """The same sequences with padding cut to the longest valid length."""
        T = int(self.steps.max()) if len(self) else 0
        if T == self.t.shape[1]:
            return self
        cut = {name: v[:, :T] for name, v in (("x", self.x), ("t", self.t),
                                              ("tokens", self.tokens)) if v is not None}
        per_step = self.y.ndim == 3 or (self.y.ndim == 2 and self.y.dtype.kind in "iu")
        if per_step:  # targets at every step: (N, T) labels or (N, T, C) values
            cut["y"] = self.y[:, :T]
        return self.replace(**cut)

    def batches(self, batch_size, *, shuffle=True, rng=None, drop_last=False):
        """Iterate over mini-batches, each trimmed to its longest sequence.

        Parameters
        ----------
        batch_size : int
        shuffle : bool
            Visit the sequences in a random order drawn from ``rng``.
        rng : Generator, int or None
        drop_last : bool
            Skip a final batch smaller than ``batch_size``.
        """
        order = as_rng(rng).permutation(len(self)) if shuffle else np.arange(len(self))
        stop = len(self) - (len(self) % batch_size if drop_last else 0)
        for start in range(0, stop, batch_size):
            yield self[order[start:start + batch_size]].trimmed()
