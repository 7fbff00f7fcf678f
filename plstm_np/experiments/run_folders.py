"""Run folders: the files of one training run, what state a folder is in, and its text log.

A run folder (what :func:`~plstm_np.experiments.run_training` writes) holds:

==================  ===========================================================================
``config.json``     the run's configuration, written first
``log.json``        every epoch's record, rewritten after each epoch
``checkpoint.npz``  the network with the lowest validation loss and its optimizer
``last.npz``        the resume state after the last complete epoch (the network, its
                    optimizer, and the loop's state: see :func:`plstm_np.train`), written last
``run.log``         the run's messages and one line per epoch, in plain text
``test_rhos.json``  N-MNIST reproductions: the checkpoint's figures at other event rates
``.run.lock``       there while a process trains the run or writes its files there
                    (:func:`run_folder_lock`), removed when it is done
==================  ===========================================================================

:func:`inspect_run` says whether a folder holds nothing, an unfinished run that can resume
or a complete run, and refuses, naming the keys, a folder whose run was made with another
configuration: runs are never mixed.
"""
from __future__ import annotations

import collections
import contextlib
import json
import os
import time
import zipfile
from pathlib import Path

import numpy as np

from ..files import atomic_write

__all__ = ["RUN_FILES", "RunStatus", "inspect_run", "config_differences", "read_state",
           "read_run_files", "write_run_files", "remove_run_files", "RunLog", "numba_threads",
           "LOCK_FILE", "RunFolderInUse", "run_folder_lock"]

#: The files of a run folder, in the order a finished run's files are copied into one
#: (:func:`write_run_files`): ``log.json`` last, so that a folder whose copy was
#: interrupted never looks complete.
RUN_FILES = ("checkpoint.npz", "last.npz", "run.log", "test_rhos.json", "config.json",
             "log.json")

#: The lock file of a run folder (:func:`run_folder_lock`); not a run file: it is there only
#: while a process holds the folder (or after one was killed, until the next holder is done).
LOCK_FILE = ".run.lock"

try:
    import fcntl
except ImportError:  # Windows: no advisory locks here (see run_folder_lock)
    fcntl = None


class RunFolderInUse(OSError):
    """Another process holds the run folder's lock: it is training the run there."""


@contextlib.contextmanager
def run_folder_lock(run_dir):
    """Hold the lock of ``run_dir`` (its ``.run.lock``) for the duration of the block.

    Two processes training into one folder (a sweep started twice on the same output
    folder, say) would each write their epochs into the same files; with the lock the
    second raises :class:`RunFolderInUse` before it reads or writes any run file. The lock
    is the operating system's (``flock``), so it goes with its holder however that ends (a
    kill, a crash): a lock file left by a killed process locks nothing, and the next
    holder removes it. On exit the lock file is removed, and so is the folder if the block
    created it and left it empty. Where ``fcntl`` is missing (Windows) the block runs
    unlocked.

    Parameters
    ----------
    run_dir : str or Path

    Raises
    ------
    RunFolderInUse
        Naming the folder and the holder's process id.
    """
    run_dir = Path(run_dir)
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = None if fcntl is None else _acquire(run_dir / LOCK_FILE)
    try:
        yield run_dir
    finally:
        if fd is not None:
            (run_dir / LOCK_FILE).unlink(missing_ok=True)  # while still held: see _acquire
            os.close(fd)
        if created and not any(run_dir.iterdir()):
            run_dir.rmdir()


def _acquire(path):
    """A descriptor of ``path`` holding its flock, with this process's id written in it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise RunFolderInUse(
                f"run folder {path.parent} is in use: process {holder} is training the run "
                f"there; wait for it to end, or choose another folder") from None
        except BaseException:
            os.close(fd)
            raise
        # a holder unlinks the file as it lets go: a lock taken on the unlinked file, in
        # that instant, would lock nothing, so take the file that is there now
        try:
            current = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode("ascii"), 0)
            return fd
        os.close(fd)


#: What :func:`inspect_run` finds: ``kind`` is ``'new'`` (nothing to keep: no files, or only
#: the configuration of a run interrupted in its first epoch), ``'unfinished'`` (resumable
#: from ``last.npz`` after ``epochs_done`` epochs) or ``'complete'`` (``history`` holds every
#: epoch, or early stopping ended it).
RunStatus = collections.namedtuple("RunStatus", "kind epochs_done history")


#: Configuration keys added after runs were published, with the value a configuration saved
#: before them meant (every other missing key counts as None).
ADDED_KEYS = {"time_input": True}


def config_differences(saved, cfg, ignore=("backend",)):
    """``[(key, saved value, value now), ...]`` for the keys on which two run configurations
    differ (``ignore`` aside; a missing key counts as its :data:`ADDED_KEYS` value, or
    None)."""
    saved, cfg = ({**ADDED_KEYS, **c} for c in (saved, cfg))
    return [(k, saved.get(k), cfg.get(k)) for k in sorted(set(saved) | set(cfg))
            if k not in ignore and saved.get(k) != cfg.get(k)]


def _refuse_other_config(run_dir, saved, cfg, *, extend=False):
    """Refuse a run folder made with another configuration. ``extend``: the folder keeps
    its resume state, so more epochs than it was started with are no difference (the run
    goes on from its last epoch)."""
    differ = config_differences(saved, cfg)
    if extend:
        differ = [d for d in differ if not (d[0] == "epochs" and more_epochs(d[1], d[2]))]
    if differ:
        hint = ("; a run can be given more epochs only while it keeps its resume state "
                "(last.npz)" if [d[0] for d in differ] == ["epochs"]
                and more_epochs(*differ[0][1:]) else "")
        raise FileExistsError(f"{run_dir} holds a run with another configuration ("
                              + ", ".join(f"{k}: {a!r} there, {b!r} now" for k, a, b in differ)
                              + f"){hint}; choose another --out or pass --overwrite")


def more_epochs(there, now):
    """Whether ``now`` asks for more epochs than ``there`` (both ints)."""
    return isinstance(there, int) and isinstance(now, int) and now > there


def read_state(path):
    """The metadata of a resume state (``last.npz``) without rebuilding its network.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    dict
        The checkpoint's user metadata: ``config`` (the run's), ``epoch``, the epoch's
        record and ``resume`` (see :func:`plstm_np.train`).

    Raises
    ------
    ValueError
        If the file is not a readable checkpoint with a resume state.
    """
    try:
        with np.load(path, allow_pickle=False) as archive:
            meta = json.loads(archive["__meta__"].tobytes().decode("utf-8"))
    except (zipfile.BadZipFile, KeyError, ValueError, OSError, EOFError) as err:
        raise ValueError(f"{path} is not a readable resume state: {err}") from err
    metadata = meta.get("metadata") or {}
    if "resume" not in metadata:
        raise ValueError(f"{path} holds no resume state (metadata['resume'])")
    return metadata


def inspect_run(run_dir, cfg):
    """What ``run_dir`` holds for a run of configuration ``cfg``.

    Parameters
    ----------
    run_dir : str or Path
    cfg : dict
        The run's configuration (its ``backend`` is not compared: the same run may be
        continued on another machine).

    Returns
    -------
    RunStatus

    Raises
    ------
    FileExistsError
        The folder holds a run made with another configuration (the differing keys are
        named), or an unfinished run without a resume state (made before runs saved one).
    """
    run_dir = Path(run_dir)
    paths = {name: run_dir / name for name in RUN_FILES}
    if paths["config.json"].exists():
        _refuse_other_config(run_dir, json.loads(paths["config.json"].read_text()), cfg,
                             extend=paths["last.npz"].exists())
    history = None
    if paths["log.json"].exists():
        history = json.loads(paths["log.json"].read_text())
    if paths["last.npz"].exists():
        meta = read_state(paths["last.npz"])
        _refuse_other_config(run_dir, meta.get("config") or {}, cfg, extend=True)
        state = meta["resume"]
        patience = cfg.get("patience")
        done = state["epoch"] >= cfg["epochs"] or (patience is not None
                                                   and state["stale"] >= patience)
        if done:
            return RunStatus("complete", state["epoch"], state["history"])
        return RunStatus("unfinished", state["epoch"], None)
    if history is not None and paths["config.json"].exists() and len(history) >= cfg["epochs"]:
        return RunStatus("complete", len(history), history)  # its last.npz may be deleted
    kept = [name for name in ("log.json", "checkpoint.npz") if paths[name].exists()]
    if kept:
        raise FileExistsError(
            f"{run_dir} holds an unfinished run without a resume state (last.npz): "
            f"{', '.join(kept)} exist(s), {len(history or [])} of {cfg['epochs']} epochs "
            f"logged; it cannot be continued: choose another --out or pass --overwrite")
    return RunStatus("new", 0, None)


def read_run_files(run_dir):
    """``{name: bytes}`` of the run files (:data:`RUN_FILES`) present in ``run_dir``."""
    run_dir = Path(run_dir)
    return {name: (run_dir / name).read_bytes() for name in RUN_FILES
            if (run_dir / name).is_file()}


def write_run_files(run_dir, files):
    """Write ``{name: bytes}`` into ``run_dir`` (created if needed), each file atomically, in
    the order of :data:`RUN_FILES` (``log.json`` last). Names outside it raise ValueError."""
    unknown = set(files) - set(RUN_FILES)
    if unknown:
        raise ValueError(f"not run files: {sorted(unknown)} (expected some of {RUN_FILES})")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in RUN_FILES:
        if name in files:
            atomic_write(run_dir / name, lambda f, data=files[name]: f.write(data))


def remove_run_files(run_dir):
    """Delete the run files of ``run_dir`` (what overwriting a run replaces), so that no file
    of an earlier run is left next to a new one's."""
    for name in RUN_FILES:
        (Path(run_dir) / name).unlink(missing_ok=True)


class RunLog:
    """The plain-text log of a run (``run.log``): one timestamped line per message, the
    whole file rewritten atomically after each, an earlier part kept (a resumed run
    continues its log).

    Parameters
    ----------
    path : str or Path, optional
        None: the lines are only kept in memory (:attr:`lines`).
    echo : callable, optional
        Also receives every message (e.g. ``print``).
    """

    def __init__(self, path=None, echo=None):
        self.path = None if path is None else Path(path)
        self.echo = echo
        self.lines = []
        if self.path is not None and self.path.exists():
            self.lines = self.path.read_text(encoding="utf-8").splitlines()

    def __call__(self, message, echo=True):
        """Log ``message`` (to :attr:`echo` too unless ``echo`` is False)."""
        self.lines.append(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}")
        if self.path is not None:
            text = "\n".join(self.lines) + "\n"
            atomic_write(self.path, lambda f: f.write(text), mode="w")
        if echo and self.echo is not None:
            self.echo(message)


def numba_threads(backend):
    """The Numba threads a run on ``backend`` uses now (None off Numba). The parallel kernels
    split a batch into one chunk per thread, so another count rounds differently: a resumed
    run records and compares it."""
    if backend != "numba":
        return None
    import numba  # only here: importing the experiments loads no Numba

    return int(numba.get_num_threads())
