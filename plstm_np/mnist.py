"""Readers for the shipped MNIST test set (idx format) and the UCI 8x8 digits (csv).

Only the 10,000 MNIST *test* images are shipped (``plstm_np/data/mnist``; the 60,000 training
images are not), so pixel-by-pixel MNIST splits the test images into its own train and
validation sets (:func:`plstm_np.tasks.train_val_split`). The 8x8 digits
(``plstm_np/data/sklearn_digits``, the file behind scikit-learn's ``load_digits``) give a
64-step variant for quick runs. Sources and licences: ``plstm_np/data/README.md``.
"""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

__all__ = ["MNIST_DIR", "DIGITS_FILE", "read_idx", "load_mnist", "load_digits"]

_DATA = Path(__file__).resolve().parent / "data"
MNIST_DIR = _DATA / "mnist"
DIGITS_FILE = _DATA / "sklearn_digits" / "digits.csv.gz"


def read_idx(path):
    """Read an idx file of uint8 data (gzip-compressed if the name ends in ``.gz``).

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    ndarray of uint8
        Shaped by the header's dimensions, e.g. (10000, 28, 28) for images.

    Raises
    ------
    ValueError
        Naming the file, when the header is not an idx uint8 header or the payload size
        does not match it.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not an idx file of uint8 data (magic {data[:4].hex()})")
    nd = data[3]
    header = 4 + 4 * nd
    if len(data) < header:
        raise ValueError(f"{path}: truncated idx header")
    dims = tuple(int(d) for d in np.frombuffer(data[4:header], dtype=">u4"))
    payload = np.frombuffer(data, dtype=np.uint8, offset=header)
    if payload.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says shape {dims} ({int(np.prod(dims))} bytes) but "
                         f"the file holds {payload.size} bytes of data")
    return payload.reshape(dims).copy()


def load_mnist(folder=None):
    """The MNIST test set: 10,000 images of 28x28 and their labels.

    Parameters
    ----------
    folder : str or Path, optional
        Holding ``t10k-images-idx3-ubyte.gz`` and ``t10k-labels-idx1-ubyte.gz``; default the
        packaged copy.

    Returns
    -------
    images : ndarray (N, 28, 28) uint8, 0..255 (0 = background)
    labels : ndarray (N,) int64
    """
    folder = MNIST_DIR if folder is None else Path(folder)
    images = read_idx(folder / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(folder / "t10k-labels-idx1-ubyte.gz").astype(np.int64)
    if len(images) != len(labels):
        raise ValueError(f"{folder}: {len(images)} images but {len(labels)} labels")
    return images, labels


def load_digits(path=None):
    """The UCI 8x8 handwritten digits (1,797 images, the file behind sklearn's ``load_digits``).

    Parameters
    ----------
    path : str or Path, optional
        A gzip csv of rows ``64 pixels, label``; default the packaged copy.

    Returns
    -------
    images : ndarray (N, 8, 8) uint8, 0..16
    labels : ndarray (N,) int64
    """
    path = DIGITS_FILE if path is None else Path(path)
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64, ndmin=2)
    if table.shape[1] != 65:
        raise ValueError(f"{path}: expected 65 columns (64 pixels + label), got {table.shape[1]}")
    return table[:, :64].reshape(-1, 8, 8).astype(np.uint8), table[:, 64]
