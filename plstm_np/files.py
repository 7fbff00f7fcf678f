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
import secrets

__all__ = ["atomic_write", "refuse_existing", "write_json_atomic", "TEMP_PREFIX"]

#: The name of a temporary file is ``TEMP_PREFIX + <16 hex digits> + <suffix of path> + '.tmp'``.
TEMP_PREFIX = ".plstm_np-"


def refuse_existing(path, overwrite):
    """Raise FileExistsError if ``path`` exists and ``overwrite`` is false.

    Parameters
    ----------
    path : str or os.PathLike
    overwrite : bool

    Raises
    ------
    IsADirectoryError
        ``path`` is a directory (whatever ``overwrite``: no file can replace it).
    FileExistsError
        ``"<path> exists; pass overwrite=True to replace it"``.
    """
    if os.path.isdir(path):
        raise IsADirectoryError(f"path {os.fspath(path)} is a directory, not a file: name "
                                f"the file to write in it")
    if not overwrite and os.path.exists(path):
        raise FileExistsError(f"{os.fspath(path)} exists; pass overwrite=True to replace it")


def _check_target(path):
    """``path`` as a str, or a clear error if it cannot name a file to write."""
    path = os.fspath(path)
    if not isinstance(path, str):  # bytes paths: keep the messages simple
        path = os.fsdecode(path)
    if not path.strip():
        raise ValueError(f"path must name a file, got {path!r}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"cannot write {path}: its folder {folder} does not exist")
    return path, folder


def _create_temp(folder, suffix):
    """Create a new temporary file in ``folder``, as :func:`open` would create a file (mode
    ``0o666`` less the umask, which the system applies), and return ``(fd, path)``."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = os.path.join(folder, f"{TEMP_PREFIX}{secrets.token_hex(8)}{suffix}")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary file name in {folder}")


def _fsync_folder(folder):
    """Make a rename in ``folder`` durable (best effort: POSIX only, errors ignored)."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


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

    Raises
    ------
    ValueError
        ``path`` is empty, or ``mode`` is neither ``'wb'`` nor ``'w'``.
    IsADirectoryError
        ``path`` is a directory.
    FileNotFoundError
        The folder of ``path`` does not exist.
    FileExistsError
        ``path`` exists and ``overwrite`` is false.

    Notes
    -----
    The content goes to a temporary file ``.plstm_np-<16 hex digits><suffix of path>.tmp``
    (:data:`TEMP_PREFIX`) in the target's folder, is flushed and :func:`os.fsync`-ed, and
    the file replaces ``path`` with :func:`os.replace` (atomic on one file system); the
    folder is then fsync-ed too (best effort, POSIX), so that the rename survives a power
    loss. On any exception, ``KeyboardInterrupt`` included, the temporary file is removed
    and the exception re-raised, so ``path`` holds either its old content or the complete
    new one. A process killed outright (SIGKILL, power loss) cannot clean up: its
    temporary file may remain, under the name above; it never replaces ``path`` and may
    be deleted.

    A new file gets the permissions :func:`open` would give it (``0o666`` less the umask);
    a replaced file keeps its own, as when :func:`open` rewrites it.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"mode must be 'wb' or 'w', got {mode!r}")
    path, folder = _check_target(path)
    refuse_existing(path, overwrite)  # a directory too
    fd, tmp = _create_temp(folder, os.path.splitext(path)[1] + ".tmp")
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(FileNotFoundError):  # a replaced file keeps its mode
            os.chmod(tmp, os.stat(path).st_mode & 0o7777)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_folder(folder)


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
