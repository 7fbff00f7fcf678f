"""Sweeps: the runs of a reproduction in joblib processes and on a real Dask cluster (two
worker processes on loopback) give bitwise the serial results; a worker that dies mid-run is
replaced and the run done again; an unfinished run resumes on a worker from the bytes of its
files; an unreachable scheduler fails fast and writes nothing; bad options are named."""
import json
import os
import socket
import time

import pytest
from test_resume import (
    Interrupted,
    assert_same_run_folders,
    stop_after,
    strip_seconds,
    without_seconds,
)

from plstm_np import experiments as ex
from plstm_np.cli import main
from plstm_np.experiments import sweeps
from plstm_np.experiments.run_folders import RUN_FILES, inspect_run, read_state, write_run_files

distributed = pytest.importorskip("distributed")

CONDITIONS = ["plstm-async", "lstm-async"]
QUICK = dict(quick=True, seeds=2, conditions=CONDITIONS, epochs=2, threads=1,
             log=lambda m: None)


def run_dirs(root):
    return sorted(p.relative_to(root) for p in (root / "frequency" / "runs").glob("*/seed*"))


def assert_same_sweep(a_root, a, b_root, b):
    assert strip_seconds(a) == strip_seconds(b)
    assert run_dirs(a_root) == run_dirs(b_root) and len(run_dirs(a_root)) == 4
    for rel in run_dirs(a_root):
        assert_same_run_folders(a_root / rel, b_root / rel)
        text = (b_root / rel / "run.log").read_text()  # each run's own log, in its folder
        assert "epoch=1 " in text and "epoch=2 " in text and "done: 2 epochs" in text


@pytest.fixture(scope="module")
def serial(tmp_path_factory):
    root = tmp_path_factory.mktemp("serial")
    return root, ex.reproduce("frequency", root, jobs=1, **QUICK)


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=None) as c:
        yield c


def test_joblib_processes_give_the_serial_results(tmp_path, serial):
    messages = []
    got = ex.reproduce("frequency", tmp_path, jobs=2, **dict(QUICK, log=messages.append))
    assert any("in 2 processes" in m for m in messages)
    assert_same_sweep(serial[0], serial[1], tmp_path, got)


def test_dask_cluster_gives_the_serial_results_and_resumes_unfinished_runs(tmp_path, serial,
                                                                          cluster):
    # one run left unfinished here (after its epoch 1): the worker continues it from the
    # bytes of its files, the others start on the workers
    rel = "frequency/runs/lstm-async/seed1"
    cfg = json.loads((serial[0] / rel / "config.json").read_text())
    unfinished = tmp_path / rel
    with pytest.raises(Interrupted):
        sweeps.run_here(cfg, unfinished, threads=1, callback=stop_after(1))  # as the sweep's
    assert inspect_run(unfinished, cfg).kind == "unfinished"
    messages = []
    got = ex.reproduce("frequency", tmp_path, scheduler=cluster.scheduler_address,
                       **dict(QUICK, log=messages.append))
    assert any("on the Dask cluster" in m for m in messages)
    assert any("lstm-async/seed1: 2 epochs (resumed after epoch 1)" in m for m in messages)
    assert_same_sweep(serial[0], serial[1], tmp_path, got)


def test_a_dask_worker_that_dies_mid_run_is_replaced_and_the_run_done(tmp_path, serial,
                                                                     cluster):
    marker = tmp_path / "died"

    def dies_once(cfg, files, threads):
        # the first run to start kills its worker process (no clean-up, as a crash)
        if not marker.exists():
            marker.write_text(str(os.getpid()))
            os._exit(1)
        return sweeps.run_remote(cfg, files, threads)

    runs = [sweeps.SweepRun(str(rel), json.loads((serial[0] / rel / "config.json").read_text()),
                            tmp_path / rel) for rel in run_dirs(serial[0])]
    with distributed.Client(cluster.scheduler_address, set_as_default=False) as client:
        summaries = sweeps.run_sweep(runs, client=client, threads=1, remote_task=dies_once,
                                     log=lambda m: None)
    assert marker.exists()
    for run, summary in zip(runs, summaries):
        reference = json.loads((serial[0] / run.name / "log.json").read_text())
        assert without_seconds(summary["history"]) == without_seconds(reference)
        assert_same_run_folders(serial[0] / run.name, run.run_dir)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_scheduler_fails_fast_and_writes_nothing(tmp_path, capsys):
    address = f"tcp://127.0.0.1:{_free_port()}"
    start = time.monotonic()
    with pytest.raises(sweeps.SchedulerUnreachableError, match="no Dask scheduler answered"):
        ex.reproduce("frequency", tmp_path / "out", scheduler=address, connect_timeout=2,
                     **dict(QUICK, threads=None))
    assert time.monotonic() - start < 15  # the connect timeout, not distributed's 30 s
    assert not (tmp_path / "out").exists()
    code = main(["reproduce", "frequency", "--quick", "--out", str(tmp_path / "out"),
                 "--scheduler", address, "--connect-timeout", "2"])
    assert code == 2 and address in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kwargs, words", [
    (dict(jobs=0), "jobs must be an integer >= 1"),
    (dict(threads=0), "threads must be an integer >= 1"),
    (dict(jobs=2.5), "jobs must be an integer >= 1"),
    (dict(jobs=2, scheduler="tcp://127.0.0.1:8786"), "exclude each other"),
    (dict(scheduler="nohost"), "not a Dask address"),
    (dict(scheduler="bogus://x:1"), "unknown scheme 'bogus'"),
    (dict(scheduler="tcp://127.0.0.1:1", connect_timeout=0), "connect_timeout"),
])
def test_bad_sweep_options_are_named(tmp_path, kwargs, words):
    with pytest.raises(ValueError, match=words):
        ex.reproduce("frequency", tmp_path / "out", **{**QUICK, "threads": None, **kwargs})
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, words", [
    (["--jobs", "0"], "--jobs"),
    (["--threads", "x"], "--threads"),
    (["--connect-timeout", "-1"], "--connect-timeout"),
])
def test_bad_sweep_options_on_the_command_line(argv, words, capsys):
    with pytest.raises(SystemExit) as info:
        main(["reproduce", "frequency", "--quick"] + argv)
    assert info.value.code == 2 and words in capsys.readouterr().err


def test_more_threads_than_numba_may_start_is_refused(tmp_path):
    import numba

    with pytest.raises(ValueError, match="NUMBA_NUM_THREADS"):
        ex.reproduce("frequency", tmp_path, **dict(QUICK, seeds=1, conditions=["lstm-async"],
                                                   threads=numba.config.NUMBA_NUM_THREADS + 1))


def test_run_files_round_trip(tmp_path):
    with pytest.raises(ValueError, match="not run files"):
        write_run_files(tmp_path, {"evil.sh": b""})
    assert set(RUN_FILES) >= {"config.json", "log.json", "checkpoint.npz", "last.npz",
                              "run.log"}


def test_jobs_split_the_cores_into_numba_threads_by_default(tmp_path):
    ex.reproduce("frequency", tmp_path, jobs=2, **dict(QUICK, threads=None, epochs=1))
    expected = max(1, sweeps.available_cores() // 2)
    states = sorted((tmp_path / "frequency" / "runs").glob("*/seed*/last.npz"))
    assert len(states) == 4
    assert {read_state(p)["numba_threads"] for p in states} == {expected}
