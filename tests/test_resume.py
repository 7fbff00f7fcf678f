"""Resume: a run interrupted after epoch k (an exception, or a process that dies without any
clean-up) and resumed is bitwise the uninterrupted run: history (wall-clock seconds aside),
parameters, Adam's state, the batch order, the checkpoints. And the refusals: a half-finished
folder is never silently replaced or mixed with another configuration or protocol."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import plstm_np as pl
from plstm_np import experiments as ex
from plstm_np.cli import main
from plstm_np.experiments import run_folders
from plstm_np.experiments.run_folders import inspect_run, read_state

REPO = Path(__file__).resolve().parents[1]


class Interrupted(Exception):
    """Raised by a callback: the run stops after an epoch, as if killed there."""


def stop_after(k):
    def callback(epoch, record):
        if epoch == k:
            raise Interrupted(epoch)
    return callback


def tiny(**kw):
    """A 4-epoch frequency run of a few seconds on the Numba backend (the protocol's fresh
    data every epoch unless ``fresh_data=False``)."""
    cfg = dict(n_train=16, n_val=8, hidden_size=6, batch_size=4, epochs=4, lr=0.01)
    cfg.update(kw)
    return ex.default_config("freq", **cfg)


def without_seconds(history):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


def npz(path):
    """Every array of a checkpoint, and its metadata with the wall-clock seconds removed."""
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if k != "__meta__"}
        meta = json.loads(z["__meta__"].tobytes())
    user = meta["metadata"]
    user.pop("seconds", None)
    if "resume" in user:
        user["resume"]["history"] = without_seconds(user["resume"]["history"])
    return arrays, meta


def assert_bitwise(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert a[k].tobytes() == b[k].tobytes(), f"{k} differs"


def assert_same_run_folders(a, b):
    """Two run folders hold bitwise the same run (only wall-clock seconds may differ)."""
    for name in ("checkpoint.npz", "last.npz"):
        arrays_a, meta_a = npz(a / name)
        arrays_b, meta_b = npz(b / name)
        assert_bitwise(arrays_a, arrays_b)
        assert meta_a == meta_b, name  # Adam's step count, the RNG state, best/stale, epoch
    assert without_seconds(json.loads((a / "log.json").read_text())) == \
        without_seconds(json.loads((b / "log.json").read_text()))
    assert json.loads((a / "config.json").read_text()) == \
        json.loads((b / "config.json").read_text())


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The reference runs, trained without interruption (fresh data, and a fixed set)."""
    root = tmp_path_factory.mktemp("uninterrupted")
    out = {}
    for fresh in (True, False):
        folder = root / f"fresh{fresh}"
        out[fresh] = (folder, ex.run_training(tiny(fresh_data=fresh), folder, progress=False))
    return out


@pytest.mark.parametrize("fresh", [True, False], ids=["fresh-data", "fixed-data"])
@pytest.mark.parametrize("k", [1, 3])
def test_run_resumed_after_epoch_k_is_bitwise_the_uninterrupted_run(tmp_path, uninterrupted,
                                                                    k, fresh):
    ref_dir, ref = uninterrupted[fresh]
    cfg = tiny(fresh_data=fresh)
    with pytest.raises(Interrupted):
        ex.run_training(cfg, tmp_path, progress=False, callback=stop_after(k))
    status = inspect_run(tmp_path, cfg)
    assert status.kind == "unfinished" and status.epochs_done == k
    run = ex.run_training(cfg, tmp_path, progress=False, resume=True)
    assert run["resumed_from"] == k
    assert without_seconds(run["history"]) == without_seconds(ref["history"])
    assert len(run["history"]) == cfg["epochs"]
    assert_same_run_folders(ref_dir, tmp_path)
    assert f"resuming after epoch {k} of 4" in (tmp_path / "run.log").read_text()
    # resuming a finished run trains nothing and changes nothing
    before = (tmp_path / "last.npz").read_bytes()
    again = ex.run_training(cfg, tmp_path, progress=False, resume=True)
    assert without_seconds(again["history"]) == without_seconds(ref["history"])
    assert (tmp_path / "last.npz").read_bytes() == before


def test_a_process_killed_after_epoch_2_resumes_bitwise(tmp_path, uninterrupted):
    """os._exit in the callback: no exception handler, no clean-up, as a kill would."""
    script = textwrap.dedent(f"""
        import os
        from plstm_np import experiments as ex
        cfg = ex.default_config("freq", **{json.dumps(dict(n_train=16, n_val=8, hidden_size=6,
                                           batch_size=4, epochs=4, lr=0.01))})
        def die(epoch, record):
            if epoch == 2:
                os._exit(17)
        ex.run_training(cfg, {str(tmp_path)!r}, progress=False, callback=die)
    """)
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 17, done.stderr
    assert read_state(tmp_path / "last.npz")["epoch"] == 2
    assert not list(tmp_path.glob(".plstm_np-*"))  # no temporary file left
    ref_dir, ref = uninterrupted[True]
    run = ex.run_training(tiny(), tmp_path, progress=False, resume=True)
    assert without_seconds(run["history"]) == without_seconds(ref["history"])
    assert_same_run_folders(ref_dir, tmp_path)


def _split_data(n_train=24):
    rng = np.random.default_rng(5)
    val = pl.tasks.frequency_discrimination(8, sampling="async", rng=rng)
    return (lambda epoch: pl.tasks.frequency_discrimination(  # a plain callable epoch -> data
        n_train, sampling="async", rng=np.random.default_rng([5, epoch]))), val


def _net():
    return pl.Network([pl.PhasedLSTM(1, 5, rng=1, backend="numba")], pl.Dense(5, 2, rng=2))


@pytest.mark.xfail(strict=False, reason="failed once in a fresh-clone CI run: Wx not "
                   "bitwise equal after resume; cause not yet found (issue 13)")
def test_train_resumes_early_stopping_bookkeeping(tmp_path):
    """patience=1 with an unreachable min_delta: the uninterrupted run stops after epoch 2.
    A resumed run that lost ``best``/``stale`` would count epoch 2 as an improvement and
    train on."""
    data, val = _split_data()
    kw = dict(epochs=5, batch_size=8, patience=1, min_delta=1e9, progress=False)
    net = _net()
    opt = pl.Adam(net, lr=0.01)
    rng = np.random.default_rng(3)
    ref = pl.train(net, opt, data, val, rng=rng, state_path=tmp_path / "ref.npz",
                   checkpoint=tmp_path / "ref_best.npz", **kw)
    assert [r["epoch"] for r in ref] == [1, 2]
    net2 = _net()
    opt2 = pl.Adam(net2, lr=0.01)
    with pytest.raises(Interrupted):
        pl.train(net2, opt2, data, val, rng=3, state_path=tmp_path / "b.npz",
                 checkpoint=tmp_path / "b_best.npz", callback=stop_after(1), **kw)
    net3 = _net()  # a fresh process: new network, optimizer and generator
    opt3 = pl.Adam(net3, lr=0.01)
    rng3 = np.random.default_rng(3)
    resumed = pl.train(net3, opt3, data, val, rng=rng3, state_path=tmp_path / "b.npz",
                       checkpoint=tmp_path / "b_best.npz", resume=True, **kw)
    assert without_seconds(resumed) == without_seconds(ref)
    assert_bitwise(net.params, net3.params)
    assert opt3.step_count == opt.step_count
    assert_bitwise(opt.m, opt3.m)
    assert_bitwise(opt.v, opt3.v)
    assert_bitwise(npz(tmp_path / "ref_best.npz")[0], npz(tmp_path / "b_best.npz")[0])
    assert rng3.bit_generator.state == rng.bit_generator.state  # the batch order goes on
    # ... and a run that early stopping had ended stays ended
    again = pl.train(net3, opt3, data, val, rng=rng3, state_path=tmp_path / "b.npz",
                     checkpoint=tmp_path / "b_best.npz", resume=True, **kw)
    assert without_seconds(again) == without_seconds(ref) and opt3.step_count == opt.step_count


def test_train_refuses_a_resume_state_that_does_not_fit(tmp_path):
    data, val = _split_data()
    net = _net()
    pl.train(net, pl.Adam(net, lr=0.01), data, val, epochs=1, batch_size=8, rng=0,
             progress=False, state_path=tmp_path / "s.npz")
    with pytest.raises(ValueError, match="needs state_path"):
        pl.train(net, pl.Adam(net), data, epochs=1, resume=True)
    fresh = _net()
    with pytest.raises(ValueError, match="batch_size"):
        pl.train(fresh, pl.Adam(fresh, lr=0.01), data, val, epochs=2, batch_size=4, rng=0,
                 progress=False, state_path=tmp_path / "s.npz", resume=True)
    other = _net()
    with pytest.raises(ValueError, match="lr"):
        pl.train(other, pl.Adam(other, lr=0.5), data, val, epochs=2, batch_size=8, rng=0,
                 progress=False, state_path=tmp_path / "s.npz", resume=True)
    with pytest.raises(ValueError, match="epochs must be a positive int"):
        pl.train(other, pl.Adam(other, lr=0.01), data, val, epochs=0, batch_size=8,
                 progress=False, state_path=tmp_path / "s.npz", resume=True)
    two = _net()  # a state of epoch 2, resumed with epochs=1
    pl.train(two, pl.Adam(two, lr=0.01), data, val, epochs=2, batch_size=8, rng=0,
             progress=False, state_path=tmp_path / "two.npz")
    with pytest.raises(ValueError, match="beyond epochs"):
        pl.train(two, pl.Adam(two, lr=0.01), data, val, epochs=1, batch_size=8, rng=0,
                 progress=False, state_path=tmp_path / "two.npz", resume=True)
    with pytest.raises(FileExistsError):  # not resuming: an existing state is kept
        pl.train(other, pl.Adam(other, lr=0.01), data, val, epochs=1, batch_size=8,
                 progress=False, state_path=tmp_path / "s.npz")
    with pytest.raises(TypeError, match="train_data"):
        pl.train(other, pl.Adam(other), [1, 2, 3], epochs=1, progress=False)
    with pytest.raises(TypeError, match=r"train_data\(1\) must return a Dataset"):
        pl.train(other, pl.Adam(other), lambda epoch: None, epochs=1, progress=False)


def test_half_finished_run_folder_is_refused_clearly(tmp_path, capsys):
    cfg = tiny(epochs=3)
    with pytest.raises(Interrupted):
        ex.run_training(cfg, tmp_path, progress=False, callback=stop_after(1))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(FileExistsError, match=r"1 of 3 epochs complete.*resume.*--overwrite"):
        ex.run_training(cfg, tmp_path, progress=False)
    with pytest.raises(FileExistsError, match=r"another configuration \(lr: 0.01 there, 0.5"):
        ex.run_training(dict(cfg, lr=0.5), tmp_path, progress=False, resume=True)
    # plstm-np train --out on it: exit status 2, the message says what to do
    code = main(["train", "freq", "--epochs", "3", "--n-train", "16", "--n-val", "8",
                 "--hidden", "6", "--batch-size", "4", "--lr", "0.01", "--quiet", "--out",
                 str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "1 of 3 epochs complete" in err and "--overwrite" in err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # nothing touched
    # a run written before resume states existed (no last.npz) cannot be continued
    (tmp_path / "last.npz").unlink()
    with pytest.raises(FileExistsError, match="without a resume state"):
        ex.run_training(cfg, tmp_path, progress=False, resume=True)
    # --overwrite starts again, deleting the earlier run's files first
    run = ex.run_training(cfg, tmp_path, progress=False, overwrite=True)
    assert len(run["history"]) == 3 and run["resumed_from"] == 0


QUICK = dict(quick=True, seeds=2, conditions=["plstm-async", "lstm-async"], epochs=2,
             log=lambda m: None)


def test_interrupted_reproduce_resumes_to_the_uninterrupted_results(tmp_path, monkeypatch):
    ref = ex.reproduce("frequency", tmp_path / "ref", **QUICK)
    calls = []

    def train_then_stop(*args, **kwargs):  # the third run is killed after its epoch 1
        calls.append(1)
        if len(calls) == 3:
            inner = kwargs["callback"]

            def callback(epoch, record):
                inner(epoch, record)
                stop_after(1)(epoch, record)
            kwargs["callback"] = callback
        return pl.train(*args, **kwargs)

    monkeypatch.setattr(ex.runs, "train", train_then_stop)
    with pytest.raises(Interrupted):
        ex.reproduce("frequency", tmp_path / "b", **QUICK)
    monkeypatch.undo()
    messages = []
    got = ex.reproduce("frequency", tmp_path / "b", **dict(QUICK, log=messages.append))
    assert sum("reusing the complete run" in m for m in messages) == 2
    assert "resuming after epoch 1 of 2" in (
        tmp_path / "b" / "frequency" / "runs" / "lstm-async" / "seed0" / "run.log").read_text()
    assert strip_seconds(got) == strip_seconds(ref)
    for run in (tmp_path / "ref" / "frequency" / "runs").glob("*/seed*"):
        assert_same_run_folders(run, tmp_path / "b" / "frequency" / run.relative_to(
            tmp_path / "ref" / "frequency"))


def strip_seconds(results):
    """results.json without the wall-clock figures and where it was written (the figures'
    paths, the folder and the command's --out)."""
    results = json.loads(json.dumps(results))
    for key in ("figures", "folder", "command"):
        results.pop(key, None)
    for c in results["conditions"].values():
        for key in [k for k in c if k.startswith("seconds")]:
            del c[key]
        for run in c["runs"]:
            del run["seconds"]
    return results


def test_reproduce_refuses_a_results_folder_of_another_protocol(tmp_path):
    ex.reproduce("frequency", tmp_path, **dict(QUICK, seeds=1, conditions=["plstm-async"]))
    root = tmp_path / "frequency"
    assert json.loads((root / "protocol.json").read_text())["protocol"]["epochs"] == 2
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    with pytest.raises(FileExistsError, match=r"another configuration of the protocol "
                                              r"\(--epochs: 2 there, 1 now\)"):
        ex.reproduce("frequency", tmp_path, **dict(QUICK, epochs=1, conditions=["lstm-async"]))
    with pytest.raises(FileExistsError, match=r"--hidden: 8 there, 5 now"):
        ex.reproduce("frequency", tmp_path, **dict(QUICK, hidden_size=5))
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before  # nothing written
    # more seeds and other conditions are the same protocol: they add runs
    ex.reproduce("frequency", tmp_path, **dict(QUICK, seeds=2, conditions=["lstm-async"]))
    assert (root / "runs" / "lstm-async" / "seed1" / "last.npz").exists()


@pytest.mark.parametrize("fresh", [True, False], ids=["fresh-data", "fixed-data"])
def test_a_run_given_more_epochs_goes_on_bitwise_as_the_longer_run(tmp_path, uninterrupted,
                                                                   fresh):
    ref_dir, ref = uninterrupted[fresh]  # 4 epochs
    ex.run_training(tiny(fresh_data=fresh, epochs=2), tmp_path, progress=False)
    assert inspect_run(tmp_path, tiny(fresh_data=fresh)).kind == "unfinished"
    run = ex.run_training(tiny(fresh_data=fresh), tmp_path, progress=False, resume=True)
    assert run["resumed_from"] == 2
    assert without_seconds(run["history"]) == without_seconds(ref["history"])
    assert "resuming after epoch 2 of 4, extended from 2 epochs" in (
        tmp_path / "run.log").read_text()
    _assert_same_but_the_best_checkpoints_epochs(ref_dir, tmp_path)
    # fewer epochs, or more without the resume state, are refused
    with pytest.raises(FileExistsError, match=r"epochs: 4 there, 3 now"):
        ex.run_training(tiny(fresh_data=fresh, epochs=3), tmp_path, progress=False,
                        resume=True)
    (tmp_path / "last.npz").unlink()
    with pytest.raises(FileExistsError, match=r"epochs: 4 there, 5 now\); a run can be "
                                              r"given more epochs only while it keeps its "
                                              r"resume state"):
        ex.run_training(tiny(fresh_data=fresh, epochs=5), tmp_path, progress=False,
                        resume=True)


def _assert_same_but_the_best_checkpoints_epochs(ref_dir, run_dir):
    """As :func:`assert_same_run_folders`, but ``checkpoint.npz`` (the best epoch) may have
    been written before the run was given more epochs: its configuration's ``epochs`` is
    the one of then."""
    arrays_a, meta_a = npz(ref_dir / "checkpoint.npz")
    arrays_b, meta_b = npz(run_dir / "checkpoint.npz")
    assert_bitwise(arrays_a, arrays_b)
    for meta in (meta_a, meta_b):
        meta["metadata"]["config"].pop("epochs")
    assert meta_a == meta_b
    arrays_a, meta_a = npz(ref_dir / "last.npz")
    arrays_b, meta_b = npz(run_dir / "last.npz")
    assert_bitwise(arrays_a, arrays_b)
    assert meta_a == meta_b
    log_a, log_b = (json.loads((d / "log.json").read_text()) for d in (ref_dir, run_dir))
    assert without_seconds(log_a) == without_seconds(log_b)
    assert json.loads((ref_dir / "config.json").read_text()) == \
        json.loads((run_dir / "config.json").read_text())


def test_a_reproduction_given_more_epochs_extends_its_runs(tmp_path):
    ref = ex.reproduce("frequency", tmp_path / "ref", **dict(QUICK, epochs=3))
    ex.reproduce("frequency", tmp_path / "b", **QUICK)  # 2 epochs
    messages = []
    got = ex.reproduce("frequency", tmp_path / "b", **dict(QUICK, epochs=3,
                                                           log=messages.append))
    assert strip_seconds(got) == strip_seconds(ref)
    root = tmp_path / "b" / "frequency"
    assert json.loads((root / "protocol.json").read_text())["protocol"]["epochs"] == 3
    for run in (tmp_path / "ref" / "frequency" / "runs").glob("*/seed*"):
        _assert_same_but_the_best_checkpoints_epochs(run, root / run.relative_to(
            tmp_path / "ref" / "frequency"))


def test_numba_backward_is_deterministic_run_to_run():
    """Bitwise resume needs it: the parallel kernels' per-chunk gradients are summed in a
    fixed order, so the same batch gives the same bits every time (for a thread count)."""
    data, _ = _split_data(32)
    batch = data(1)
    net = pl.Network([pl.PhasedLSTM(1, 16, rng=1, backend="numba", r_on=0.3)],
                     pl.Dense(16, 2, rng=2))
    first = net.loss_and_grads(batch, training=True)
    for _ in range(3):
        loss, grads = net.loss_and_grads(batch, training=True)
        assert loss == first[0]
        assert_bitwise(grads, first[1])


# One process per run folder: a second one is refused before it reads or writes a run file.

needs_flock = pytest.mark.skipif(
    run_folders.fcntl is None,
    reason="run folders are locked with fcntl.flock, which this platform lacks")

def _hold_lock(folder):
    """A process that holds ``folder``'s run lock until killed; returns it once it holds it."""
    script = textwrap.dedent(f"""
        import sys, time
        from plstm_np.experiments.run_folders import run_folder_lock
        with run_folder_lock({str(folder)!r}):
            print("locked", flush=True)
            time.sleep(600)
    """)
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    holder = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
                              text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


@needs_flock
def test_a_run_folder_in_use_by_another_process_is_refused_untouched(tmp_path, capsys):
    from plstm_np.experiments.run_folders import LOCK_FILE, RunFolderInUse
    folder, other = tmp_path / "run", tmp_path / "other"
    holder = _hold_lock(folder)
    try:
        with pytest.raises(RunFolderInUse, match=rf"{folder} is in use: process {holder.pid} "):
            ex.run_training(tiny(), folder, progress=False, resume=True)
        # a sweep over it refuses before training any of its runs
        runs = [ex.sweeps.SweepRun("other", tiny(), other), ex.sweeps.SweepRun("run", tiny(),
                                                                                folder)]
        with pytest.raises(RunFolderInUse, match="is in use"):
            ex.sweeps.run_sweep(runs, log=lambda m: None)
        assert main(["train", "freq", "--out", str(folder), "--epochs", "1", "--n-train", "4",
                     "--n-val", "4", "--quiet"]) == 2
        assert "is in use" in capsys.readouterr().err
        assert [p.name for p in folder.iterdir()] == [LOCK_FILE]  # no run file written
        assert not other.exists()
    finally:
        holder.kill()
        holder.wait()
    # the lock went with its holder (killed, no clean-up): the folder trains now, and the
    # lock file the killed process left goes with the next holder
    assert (folder / LOCK_FILE).exists()
    run = ex.run_training(tiny(epochs=1), folder, progress=False, resume=True)
    assert len(run["history"]) == 1 and (folder / "log.json").exists()
    assert not (folder / LOCK_FILE).exists()


@needs_flock
def test_the_lock_removes_only_a_folder_it_created_and_left_empty(tmp_path):
    from plstm_np.experiments.run_folders import LOCK_FILE, run_folder_lock
    new = tmp_path / "new" / "seed0"
    with pytest.raises(KeyError):
        with run_folder_lock(new):
            assert (new / LOCK_FILE).exists()
            raise KeyError("a failure before any run file")
    assert not new.exists() and (tmp_path / "new").exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    with run_folder_lock(kept):
        pass
    assert kept.is_dir() and not any(kept.iterdir())  # no lock file left either
    with run_folder_lock(new):
        (new / "config.json").write_text("{}")
    assert [p.name for p in new.iterdir()] == ["config.json"]


@needs_flock
def test_a_lock_file_replaced_while_locking_is_taken_afresh(tmp_path, monkeypatch):
    """The holder unlinks the lock file as it lets go; a lock won on that unlinked file
    would lock nothing, so it is dropped and the new file locked."""
    path = tmp_path / run_folders.LOCK_FILE
    real_flock, calls = run_folders.fcntl.flock, []

    def flock(fd, op):
        real_flock(fd, op)
        calls.append(os.fstat(fd).st_ino)
        if len(calls) == 1:  # the holder lets go between our open and our check
            path.unlink()
            path.write_text("")

    monkeypatch.setattr(run_folders.fcntl, "flock", flock)
    with run_folders.run_folder_lock(tmp_path):
        assert len(calls) == 2 and calls[1] == path.stat().st_ino
        assert path.read_text() == str(os.getpid())


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_sweep_hands_each_finished_run_to_on_done_with_its_files(tmp_path, jobs):
    """``on_done`` sees every run once, in this process, as it finishes: its resume state and
    log are in its folder then (what a reproduction tests before the sweep can be cut off)."""
    runs = [ex.sweeps.SweepRun(f"r{i}", tiny(seed=i, epochs=2), tmp_path / f"r{i}")
            for i in range(3)]
    seen = []

    def on_done(run, summary):
        assert os.getpid() == parent
        seen.append((run.name, (run.run_dir / "last.npz").exists(),
                     len(json.loads((run.run_dir / "log.json").read_text())),
                     len(summary["history"])))

    parent = os.getpid()
    ex.sweeps.run_sweep(runs, jobs=jobs, threads=1, log=lambda m: None, on_done=on_done)
    assert sorted(seen) == [(f"r{i}", True, 2, 2) for i in range(3)]
