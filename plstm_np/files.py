"""Files written atomically: a crash or an interruption never leaves a truncated file.

This module has one concern, writing a file so that it holds either its old content or
the complete new one, and it is the only place in plstm_np that does so: checkpoints
(:meth:`plstm_np.Network.save`), training logs (:func:`plstm_np.train`) and the experiments'
JSON files all go through :func:`atomic_write`. It imports no other plstm_np module.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile

__all__ = ["atomic_write", "refuse_existing", "write_json_atomic"]

_UMASK = os.umask(0)  # read once (reading it means setting it) and restored at once
os.umask(_UMASK)


def refuse_existing(path, overwrite):
    """Raise FileExistsError if ``path`` exists and ``overwrite`` is false.

    Parameters
    ----------
    path : str or os.PathLike
    overwrite : bool

    Raises
    ------
    FileExistsError
        ``"<path> exists; pass overwrite=True to replace it"``.
    """
    if not overwrite and os.path.exists(path):
        raise FileExistsError(f"{os.fspath(path)} exists; pass overwrite=True to replace it")


def atomic_write(path, write, *, overwrite=True, mode="wb"):
    """Write ``path`` through a temporary file in the same folder, then rename it into place.

    Parameters
    ----------
    path : str or os.PathLike
        The file to write. Its folder must exist.
    write : callable
        Called once with the open temporary file; it writes the whole content.
    overwrite : bool
        Replace an existing ``path`` (default); with False an existing file raises
        FileExistsError (see :func:`refuse_existing`) before anything is written.
    mode : {'wb', 'w'}
        Binary, or UTF-8 text.

    Notes
    -----
    The temporary file, ``.plstm_np-<random><suffix of path>.tmp``, is created by
    :func:`tempfile.mkstemp` in the target's folder and replaces ``path`` with
    :func:`os.replace` (atomic on one file system). On any exception, ``KeyboardInterrupt``
    included, it is removed and the exception re-raised, so ``path`` holds either its old
    content or the complete new one. The file gets the permissions :func:`open` would give
    a new file (``0o666`` less the umask; mkstemp's own are ``0o600``).
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"mode must be 'wb' or 'w', got {mode!r}")
    path = os.fspath(path)
    refuse_existing(path, overwrite)
    folder = os.path.dirname(os.path.abspath(path))
    suffix = os.path.splitext(path)[1] + ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=".plstm_np-", suffix=suffix, dir=folder)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            write(f)
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json_atomic(path, obj):
    """Write ``obj`` as JSON to ``path`` through a temporary file in the same folder.

    Parameters
    ----------
    path : str or Path
        The file to (over)write. Its folder must exist.
    obj : object
        Anything :func:`json.dump` accepts; written with ``indent=1``.

    Notes
    -----
    See :func:`atomic_write`: ``path`` holds either its old content or the complete new one,
    and no temporary file is left behind, even when ``obj`` cannot be serialised.
    """
    atomic_write(path, lambda f: json.dump(obj, f, indent=1), mode="w")
