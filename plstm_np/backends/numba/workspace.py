"""The Numba backend's workspace: reused arrays, the per-thread store, BLAS threads, chunks.

- Reused arrays (:func:`reusable`): the large per-call arrays (``h``, the stored block)
  reuse the memory of the previous call's once nothing refers to them: fresh memory that
  size costs page faults worth a large part of a training step.
- While the dense kernels run, the BLAS they call is held single-threaded
  (:class:`SerialBLAS`): its own threads would contend with the kernels'.
- The dense kernels cut the batch into one chunk per thread (:func:`num_chunks`).
"""
from __future__ import annotations

import sys
import threading

import numba
import numpy as np

from ... import config

__all__ = ["thread_store", "reusable", "clear_workspace", "SerialBLAS", "num_chunks"]

_store = threading.local()


def thread_store():
    """The calling thread's dict of kept objects (reused arrays under ``"arrays"``, weight
    layouts under ``"layouts"``)."""
    return _store.__dict__


def reusable(name, shape, dtype):
    """An uninitialised array for the role ``name``: one this thread handed out before,
    with the same shape and dtype, that nothing else refers to any more (no caller, cache
    or view), else a new one, kept for later calls (the last ``_POOL_SIZE`` per role).

    A training step allocates tens of MB of arrays of the same shapes over and over; a
    fresh allocation that large comes from the OS as zeroed pages, and the page faults
    cost a large part of a step. Reusing the memory of arrays nobody holds avoids them and
    changes no result: every caller overwrites the array before reading it. Arrays above
    ``_POOL_MAX_BYTES`` are never kept, so the memory held back stays bounded (at most
    ``_POOL_SIZE`` x ``_POOL_MAX_BYTES`` per role and thread; :func:`clear_workspace`
    releases it).
    """
    if np.prod(shape) * np.dtype(dtype).itemsize > _POOL_MAX_BYTES:
        return np.empty(shape, dtype)
    pool = thread_store().setdefault("arrays", {}).setdefault(name, [])
    for i in range(len(pool)):  # no local name for a candidate: it would count
        if (pool[i].shape == shape and pool[i].dtype == dtype
                and _refcount_in_pool(pool, i) == _UNUSED_REFS):
            return pool[i]
    array = np.empty(shape, dtype)
    pool.append(array)
    del pool[:-_POOL_SIZE]
    return array


_POOL_SIZE = 3  # arrays kept per role and thread (a network has one per layer in use)
_POOL_MAX_BYTES = 64 << 20  # larger arrays are allocated afresh every time


def clear_workspace():
    """Drop the arrays this thread keeps for reuse.

    The training and evaluation kernels reuse the memory of their large arrays once nothing
    refers to them (see :func:`reusable`), and the weight layouts made for unchanged
    parameters (see :func:`~plstm_np.backends.numba.layouts.cached_layouts`); this
    releases what the calling thread keeps (freed once nothing else refers to it). Results
    never depend on it.
    """
    thread_store().pop("arrays", None)
    thread_store().pop("layouts", None)


def _refcount_in_pool(pool, i):
    """References to ``pool[i]``, counted the same way for the calibration below (so that
    interpreters that count borrowed references differently still agree with it)."""
    return sys.getrefcount(pool[i])


_UNUSED_REFS = _refcount_in_pool([np.empty(0)], 0)  # an array only a list refers to


class SerialBLAS:
    """Context manager: the BLAS that Numba's ``np.dot`` calls runs single-threaded inside
    it (when :data:`plstm_np.config.SERIAL_BLAS` is on and that BLAS can be told).

    The dense kernels give each of their threads a chunk of the batch and call BLAS from
    every thread; an OpenBLAS that also starts its own threads for a product oversubscribes
    the cores (measured here: the README's training run 4x slower on 2 cores). Numba's
    ``np.dot`` calls SciPy's OpenBLAS; its thread count is set to 1 on entry and restored
    on exit, as a thread-pool limiter would do. Without SciPy's OpenBLAS (another BLAS, or
    a platform without it) this does nothing.
    """

    _controls = None  # (get, set) ctypes functions, or () when unavailable

    @classmethod
    def _find(cls):
        if cls._controls is None:
            cls._controls = ()
            try:
                import ctypes
                import glob
                import os

                import scipy
                import scipy.linalg.cython_blas  # loads the library

                root = os.path.dirname(scipy.__file__)
                patterns = [os.path.join(root, os.pardir, "scipy.libs", "*openblas*"),
                            os.path.join(root, ".dylibs", "*openblas*")]
                for path in sorted(p for pattern in patterns for p in glob.glob(pattern)):
                    lib = ctypes.CDLL(path)  # the one already loaded
                    for prefix in ("scipy_openblas", "openblas"):
                        get = getattr(lib, prefix + "_get_num_threads", None)
                        set_ = getattr(lib, prefix + "_set_num_threads", None)
                        if get is not None and set_ is not None:
                            get.restype, get.argtypes = ctypes.c_int, []
                            set_.restype, set_.argtypes = None, [ctypes.c_int]
                            cls._controls = (get, set_)
                            return cls._controls
            except (ImportError, OSError):
                pass
        return cls._controls

    def __enter__(self):
        self._restore = None
        controls = self._find() if config.SERIAL_BLAS else ()
        if controls:
            get, set_ = controls
            threads = get()
            if threads > 1:
                set_(1)
                self._restore = threads
        return self

    def __exit__(self, *exc):
        if self._restore is not None:
            self._find()[1](self._restore)
        return False


def num_chunks(B):
    """Chunks of the batch for the dense kernels: one per thread (at most B)."""
    threads = numba.get_num_threads() if config.NUMBA_PARALLEL else 1
    return max(1, min(B, threads))


def packed_order(lengths, nchunks):
    """The order in which the dense kernels take the rows of a batch (packed sequences).

    Chunk ``c`` owns positions ``c * B // nchunks`` to ``(c + 1) * B // nchunks`` of the
    returned permutation; the rows sorted by decreasing length are dealt to the chunks in
    turn, so that every chunk gets a similar share of the work and, within a chunk, the rows
    still running at any step come first (the kernels' products then skip the others).

    Parameters
    ----------
    lengths : ndarray (B,) of int64
    nchunks : int

    Returns
    -------
    ndarray (B,) of int64
        A permutation of ``range(B)``.
    """
    B = len(lengths)
    bounds = [(c * B // nchunks, (c + 1) * B // nchunks) for c in range(nchunks)]
    fill = [b0 for b0, _ in bounds]
    order = np.empty(B, np.int64)
    c = 0
    for row in np.argsort(-lengths, kind="stable"):
        while fill[c] == bounds[c][1]:  # that chunk is full: the next one
            c = (c + 1) % nchunks
        order[fill[c]] = row
        fill[c] += 1
        c = (c + 1) % nchunks
    return order
