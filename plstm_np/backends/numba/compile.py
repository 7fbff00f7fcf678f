"""How the Numba backend compiles: the flags every kernel gets, and its on-disk cache.

Compilation is lazy: the decorators here define dispatchers and compile nothing; each kernel
is compiled on its first call, once per signature, and cached on disk when
:data:`plstm_np.config.NUMBA_CACHE` is on (see :mod:`plstm_np.config` for every knob).

Flags. The kernels may reassociate sums and fuse multiply-adds
(:data:`plstm_np.config.NUMBA_REASSOC`: the fast-math flags ``reassoc`` and ``contract``
only), which lets LLVM vectorise dot products; full fast-math only with
:data:`plstm_np.config.NUMBA_FASTMATH`. Every function uses NumPy's error model: a float
division carries no ZeroDivisionError branch, which would stop LLVM from vectorising loops
(no division in the kernels can be by zero). The phase gets no fast-math flag at all
(:func:`exact`): it must stay bitwise equal to NumPy's.

Cache. Numba keys a cached kernel on its own source file only, so a kernel in
:mod:`~plstm_np.backends.numba.forward` would be served stale after an edit of the cell
maths it inlines from another module. The kernels here are cached under a stamp that hashes
every source file they are compiled from (:data:`SOURCE_FILES`), so that any edit of any of
them recompiles. Caching is used only with the default flags: Numba's cache index does not
include fastmath, so a cache written with other flags could be served by mistake.

Plain Python. Under ``NUMBA_DISABLE_JIT=1`` these decorators return the Python functions
unchanged (Numba's own behaviour) and :mod:`~plstm_np.backends.numba.intrinsics` swaps its
LLVM intrinsics for pure-Python twins, so the whole backend runs, slowly, as Python: for
line coverage and for stepping through a kernel in a debugger.
"""
from __future__ import annotations

import hashlib
import os
import types

import numba
from numba.core.caching import (
    CompileResultCacheImpl,
    FunctionCache,
    InTreeCacheLocator,
    UserProvidedCacheLocator,
    UserWideCacheLocator,
)

from ... import config

__all__ = ["FASTMATH", "CACHE", "PLAIN_PYTHON", "kernel", "device", "exact", "source_stamp",
           "SOURCE_FILES"]

#: True when Numba's JIT is disabled (``NUMBA_DISABLE_JIT=1``): everything runs as Python.
PLAIN_PYTHON = bool(numba.config.DISABLE_JIT)

CACHE = bool(config.NUMBA_CACHE) and not config.NUMBA_FASTMATH and bool(config.NUMBA_REASSOC)
if config.NUMBA_FASTMATH:
    FASTMATH = True
elif config.NUMBA_REASSOC:
    FASTMATH = {"reassoc", "contract"}
else:
    FASTMATH = False

_HERE = os.path.dirname(os.path.abspath(__file__))
#: The files the compiled kernels are built from: this subpackage, the shared scalar maths
#: and the knobs.
SOURCE_FILES = tuple(sorted(
    [os.path.join(_HERE, name) for name in os.listdir(_HERE) if name.endswith(".py")]
    + [os.path.join(_HERE, os.pardir, os.pardir, "scalar_math.py"),
       os.path.join(_HERE, os.pardir, os.pardir, "config.py")]))


def source_stamp(files=SOURCE_FILES):
    """A hash of the contents of ``files``: the cache stamp of every kernel."""
    digest = hashlib.sha256()
    for path in files:
        with open(path, "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()


class _StampedLocators:
    """Numba's cache locators, with :func:`source_stamp` as the stamp of the source."""

    def get_source_stamp(self):
        return source_stamp()


class _UserProvided(_StampedLocators, UserProvidedCacheLocator):
    pass


class _InTree(_StampedLocators, InTreeCacheLocator):
    pass


class _UserWide(_StampedLocators, UserWideCacheLocator):
    pass


class _CacheImpl(CompileResultCacheImpl):
    # Numba's own class attribute is a list, read (iterated) by Numba, never mutated.
    _locator_classes = [_UserProvided, _InTree, _UserWide]  # noqa: RUF012


class _Cache(FunctionCache):
    """Numba's function cache, stamped with every source file of the backend."""

    _impl_class = _CacheImpl


def _dispatcher(fn, **flags):
    """``numba.njit(fn, **flags)`` with the backend's cache (when caching is on)."""
    dispatcher = numba.njit(fn, cache=False, **flags)
    if CACHE and not PLAIN_PYTHON:
        # what Dispatcher.enable_caching() does, with the stamped cache
        dispatcher._cache = _Cache(dispatcher.py_func)
    return dispatcher


def kernel(fn, parallel):
    """Compile ``fn`` lazily as a kernel, under a name of its own for each variant (so the
    serial and parallel variants do not share cache files)."""
    suffix = "_parallel" if parallel else "_serial"
    clone = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + suffix,
                               fn.__defaults__, fn.__closure__)
    clone.__qualname__ = fn.__qualname__ + suffix
    clone.__module__ = fn.__module__
    clone.__doc__ = fn.__doc__
    return _dispatcher(clone, parallel=parallel and bool(config.NUMBA_PARALLEL),
                       fastmath=FASTMATH, nogil=True, error_model="numpy")


def device(fn):
    """A scalar or row helper, inlined into the kernels (compiled as part of them)."""
    return numba.njit(fn, fastmath=FASTMATH, inline="always", error_model="numpy")


def exact(fn, inline):
    """A helper compiled without any fast-math flag (the phase: bitwise equal to NumPy's);
    ``inline`` for the kernels' copy, else a dispatcher callable from Python."""
    if inline:
        return numba.njit(fn, error_model="numpy", inline="always")
    return _dispatcher(fn, error_model="numpy")
