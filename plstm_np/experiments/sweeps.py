"""Sweeps: many independent training runs, one after the other, in parallel processes on this
machine (joblib), or on a Dask distributed cluster (:func:`run_sweep`, what
``plstm-np reproduce --jobs N`` and ``--scheduler ADDRESS`` use).

Every run resumes: it trains in its run folder (:mod:`~plstm_np.experiments.run_folders`)
with ``resume=True``, so that a sweep interrupted anywhere continues each unfinished run from
its last complete epoch, bitwise as if it had never stopped.

Threads. The runs of one process share the machine's cores: with ``jobs`` processes each run
gets ``threads`` Numba threads (default: the cores divided by ``jobs``), and the BLAS of each
process as many. The number of threads is part of a run's arithmetic (the parallel kernels
give each thread one chunk of the batch and sum the chunks in order), so the same runs with
the same ``threads`` give bitwise the same results serially, in processes or on a cluster.

Dask. The workers need no shared disk: a task receives the configuration and the bytes of an
unfinished run's files, trains in a temporary folder of the worker, and returns the run's
summary and the bytes of its files (log, history, checkpoints, ``run.log``), which the client
writes into the results folder. A worker that dies mid-run is replaced by its nanny and the
scheduler runs the task again (up to its ``allowed-failures``). Run the workers with one
thread each (``dask worker ADDRESS --nthreads 1``): a run's parallelism is its Numba threads,
by default the worker machine's cores divided by the worker's threads. dask is imported only
here, and only when a scheduler is given (the extra ``plstm_np[distributed]``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path

from tqdm import tqdm

from ..backends import get_backend
from .run_folders import read_run_files, remove_run_files, run_folder_lock, write_run_files
from .runs import run_training

__all__ = ["SweepRun", "SchedulerUnreachableError", "available_cores", "check_sweep_options",
           "connect", "run_sweep", "run_here", "run_remote"]


@dataclasses.dataclass(frozen=True)
class SweepRun:
    """One run of a sweep.

    Attributes
    ----------
    name : str
        Shown in messages and Dask task keys (e.g. ``'plstm-async/seed0'``).
    cfg : dict
        Its configuration (:func:`~plstm_np.experiments.default_config`).
    run_dir : Path
        Its run folder on this machine.
    """

    name: str
    cfg: dict
    run_dir: Path


class SchedulerUnreachableError(ConnectionError):
    """No Dask scheduler answered at the given address within the connect timeout."""


def available_cores():
    """The cores this process may run on (its affinity where the OS says, else the count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def check_sweep_options(jobs=1, threads=None, scheduler=None, connect_timeout=10.0):
    """Raise ValueError naming the first invalid option of a sweep.

    Parameters
    ----------
    jobs : int
        Processes on this machine (>= 1).
    threads : int, optional
        Numba threads per run (>= 1).
    scheduler : str, optional
        A Dask scheduler address (``tcp://host:port``, ``host:port``, ...); excludes
        ``jobs > 1``.
    connect_timeout : float
        Seconds to wait for the scheduler (> 0).
    """
    for name, value in (("jobs", jobs), ("threads", threads)):
        if value is None and name == "threads":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if not (isinstance(connect_timeout, (int, float)) and 0 < connect_timeout < float("inf")):
        raise ValueError(f"connect_timeout must be a number of seconds > 0, "
                         f"got {connect_timeout!r}")
    if scheduler is not None:
        if not isinstance(scheduler, str) or not scheduler.strip():
            raise ValueError(f"scheduler must be a Dask scheduler address such as "
                             f"tcp://host:8786, got {scheduler!r}")
        if jobs != 1:
            raise ValueError(f"jobs={jobs} and scheduler={scheduler!r} exclude each other: "
                             f"on a cluster the workers set the parallelism")


def connect(address, timeout=10.0):
    """A ``distributed.Client`` of the scheduler at ``address``.

    Parameters
    ----------
    address : str
        ``tcp://host:port`` (or ``host:port``; any address distributed accepts).
    timeout : float
        Seconds to wait for the scheduler.

    Returns
    -------
    distributed.Client
        Close it when done.

    Raises
    ------
    ImportError
        dask.distributed is not installed (``pip install 'plstm_np[distributed]'``).
    SchedulerUnreachableError
        Nothing answered at ``address`` within ``timeout`` seconds.
    ValueError
        ``address`` is not an address distributed understands.
    """
    check_sweep_options(scheduler=address, connect_timeout=timeout)
    try:
        from distributed import Client
        from distributed.comm import parse_address
        from distributed.comm.addressing import parse_host_port
        from distributed.comm.registry import backends
    except ImportError as err:
        raise ImportError(f"--scheduler needs dask.distributed ({err}); install it with "
                          f"pip install 'plstm_np[distributed]'") from None
    start = time.monotonic()

    def unreachable(err):
        return SchedulerUnreachableError(
            f"no Dask scheduler answered at {address!r} within {timeout:g} s "
            f"({time.monotonic() - start:.1f} s: {type(err).__name__}: {err}); check the "
            f"address, or give more time with --connect-timeout")

    try:
        scheme, location = parse_address(address)
        if scheme not in backends:
            raise ValueError(f"unknown scheme {scheme!r} (known: {sorted(backends)})")
        if scheme == "tcp":
            host, port = parse_host_port(location)
    except (ValueError, TypeError) as err:
        raise ValueError(f"scheduler {address!r} is not a Dask address such as "
                         f"tcp://host:8786: {err}") from None
    if scheme == "tcp":  # a plain socket first: a Client that never connected warns at exit
        try:
            socket.create_connection((host, port), timeout=timeout).close()
        except OSError as err:
            raise unreachable(err) from None
    try:
        return Client(address, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError) as err:
        raise unreachable(err) from None


@contextlib.contextmanager
def _numba_threads(backend, threads):
    """Run the block with ``threads`` Numba threads (in this thread; Numba's setting is
    per thread), restoring the earlier count after; nothing off Numba or without ``threads``."""
    if threads is None or backend != "numba":
        yield
        return
    get_backend("numba")  # applies config.NUM_THREADS once: before ours, not after
    import numba

    most = numba.config.NUMBA_NUM_THREADS
    if threads > most:
        raise ValueError(f"threads={threads} is more than the {most} Numba threads this "
                         f"process may start (NUMBA_NUM_THREADS)")
    before = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        yield
    finally:
        numba.set_num_threads(before)


def _summary(run):
    """What a run sends back: picklable, small (the history, not the network)."""
    return {k: run[k] for k in ("config", "history", "final", "seconds", "n_train", "n_val",
                                "resumed_from")}


def run_here(cfg, run_dir, threads=None, overwrite=False, progress=False, callback=None):
    """Train (or resume) one run in ``run_dir`` on this machine, with ``threads`` Numba
    threads; what a sweep's process runs.

    Parameters
    ----------
    cfg : dict
    run_dir : str or Path
    threads : int, optional
        Numba threads (default: leave this process's count).
    overwrite : bool
        Replace an earlier run there instead of resuming it.
    progress : bool
        The run's progress bar.
    callback : callable, optional
        See :func:`~plstm_np.experiments.run_training`.

    Returns
    -------
    dict
        The run's summary: ``config``, ``history``, ``final``, ``seconds``, ``n_train``,
        ``n_val``, ``resumed_from``. Its messages are in ``run_dir/run.log``.

    The sweep holds the folder's lock (:func:`run_sweep`); this function does not take it.
    """
    with _numba_threads(cfg["backend"], threads):
        return _summary(run_training(cfg, run_dir, progress=progress, overwrite=overwrite,
                                     resume=not overwrite, log=lambda message: None,
                                     callback=callback, lock=False))


def run_remote(cfg, files, threads=None):
    """A Dask task: resume (or start) one run from the bytes of its files, in a temporary
    folder of the worker, and return its summary and files (no shared disk needed).

    Parameters
    ----------
    cfg : dict
    files : dict
        ``{name: bytes}`` of the run's files so far (:func:`read_run_files`; empty: a new
        run).
    threads : int, optional
        Numba threads (default: the worker machine's cores divided by the worker's threads).

    Returns
    -------
    dict
        ``summary`` (see :func:`run_here`), ``files`` (``{name: bytes}`` of the finished
        run folder), ``worker`` (its address).
    """
    address = None
    try:
        from distributed import get_worker

        worker = get_worker()
        address = worker.address
        if threads is None:
            threads = max(1, available_cores() // max(1, int(worker.state.nthreads)))
    except (ImportError, ValueError, AttributeError):  # not in a worker (tests, debugging)
        pass
    with tempfile.TemporaryDirectory(prefix="plstm-np-run-") as folder:
        write_run_files(folder, files)
        summary = run_here(cfg, folder, threads=threads)
        return dict(summary=summary, files=read_run_files(folder), worker=address)


def run_sweep(runs, *, jobs=1, threads=None, client=None, overwrite=False, progress=False,
              bar=False, log=print, label="runs", remote_task=None, retries=2, on_done=None):
    """Train (or resume) every run of ``runs``; return their summaries in the same order.

    Parameters
    ----------
    runs : list of SweepRun
    jobs : int
        Processes on this machine: 1 runs them here, one after the other; more runs them in
        joblib (loky) processes, at most ``jobs`` at a time.
    threads : int, optional
        Numba threads per run (default: with ``jobs > 1`` the available cores divided by
        ``jobs``; with one job this process's count; on a cluster, see :func:`run_remote`).
    client : distributed.Client, optional
        Run on this Dask cluster instead (:func:`connect`); ``jobs`` must be 1.
    overwrite : bool
        Train every run afresh, deleting an earlier run's files in its folder (otherwise
        unfinished runs resume).
    progress : bool
        The runs' own progress bars (serial runs only).
    bar : bool
        A tqdm bar on stderr over the sweep: runs done, elapsed time and ETA.
    log : callable
        Receives a line per finished run.
    label : str
        The bar's description.
    remote_task : callable, optional
        What a Dask worker runs for one run, ``remote_task(cfg, files, threads)`` (default
        :func:`run_remote`; a wrapper may add instrumentation around it).
    retries : int
        Dask: further tries of a run whose task raised (a worker that died does not count:
        the scheduler reschedules its tasks itself).
    on_done : callable, optional
        ``on_done(run, summary)``, called in this process as each run finishes, its files
        (``last.npz`` among them) in its folder, while the others train: what must be done
        with a run's last network (testing it, say) is then done before the sweep ends or
        is interrupted.

    Returns
    -------
    list of dict
        Each run's summary (see :func:`run_here`).

    Raises
    ------
    RunFolderInUse
        Another process holds one of the run folders (another sweep into the same folder,
        say); nothing is trained. This process holds every run folder's lock
        (:func:`~plstm_np.experiments.run_folders.run_folder_lock`) until it returns.
    """
    check_sweep_options(jobs, threads)
    if client is not None and jobs != 1:
        raise ValueError(f"jobs={jobs} and a Dask client exclude each other")
    runs = list(runs)
    with contextlib.ExitStack() as locks:
        for run in runs:
            locks.enter_context(run_folder_lock(run.run_dir))
        return _run_sweep(runs, jobs, threads, client, overwrite, progress, bar, log, label,
                          remote_task, retries, on_done)


def _run_sweep(runs, jobs, threads, client, overwrite, progress, bar, log, label, remote_task,
               retries, on_done):
    """:func:`run_sweep` with the run folders' locks held."""
    if threads is None and jobs > 1:
        threads = max(1, available_cores() // jobs)
    summaries = [None] * len(runs)
    progress_bar = tqdm(total=len(runs), desc=label, unit="run", disable=not bar or not runs,
                        file=sys.stderr, dynamic_ncols=True)

    def done(index, summary, where=""):
        summaries[index] = summary
        with tqdm.external_write_mode(file=sys.stderr):
            resumed = summary["resumed_from"]
            log(f"{runs[index].name}: {len(summary['history'])} epochs "
                + (f"(resumed after epoch {resumed}) " if resumed else "")
                + f"in {summary['seconds']:.1f} s{where}")
            if on_done is not None:
                on_done(runs[index], summary)
        progress_bar.update()

    try:
        if client is not None:
            _run_on_cluster(client, runs, threads, overwrite, remote_task or run_remote,
                            retries, done)
        elif jobs == 1 or len(runs) <= 1:
            for i, run in enumerate(runs):
                done(i, run_here(run.cfg, run.run_dir, threads, overwrite,
                                 progress and not bar))
        else:
            _run_in_processes(runs, jobs, threads, overwrite, done)
    finally:
        progress_bar.close()
    return summaries


def _run_in_processes(runs, jobs, threads, overwrite, done):
    """joblib's loky processes; each process's BLAS and Numba get ``threads`` threads."""
    from joblib import Parallel, delayed, parallel_config

    def indexed(i, run):
        return i, run_here(run.cfg, run.run_dir, threads, overwrite)

    with parallel_config(backend="loky", inner_max_num_threads=threads):
        results = Parallel(n_jobs=min(jobs, len(runs)), return_as="generator_unordered")(
            delayed(indexed)(i, run) for i, run in enumerate(runs))
        for i, summary in results:
            done(i, summary)


def _run_on_cluster(client, runs, threads, overwrite, task, retries, done):
    """Submit every run, write each one's files into its folder as it comes back."""
    from distributed import as_completed

    sweep = uuid.uuid4().hex[:8]
    futures = {}
    for i, run in enumerate(runs):
        if overwrite:
            remove_run_files(run.run_dir)
        files = read_run_files(run.run_dir)  # an unfinished run continues on the worker
        key = f"plstm-np-{run.name.replace('/', '-')}-{sweep}"
        futures[client.submit(task, run.cfg, files, threads, key=key, pure=False,
                              retries=retries)] = i
    try:
        for future in as_completed(futures, loop=client.loop):
            out = future.result()
            i = futures[future]
            write_run_files(runs[i].run_dir, out["files"])
            done(i, out["summary"], f" on {out['worker']}" if out.get("worker") else "")
    except BaseException:
        client.cancel(list(futures))
        raise
