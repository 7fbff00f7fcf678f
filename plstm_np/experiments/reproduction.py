"""Reproductions of the paper's experiments: every condition and seed of one of
:data:`~plstm_np.experiments.registry.EXPERIMENTS`, as a sweep of runs that resume
(:mod:`~plstm_np.experiments.sweeps`: serially, in parallel processes or on a Dask cluster),
reusing complete runs and continuing unfinished ones from their last complete epoch, then the
results (JSON + markdown) and figures (:func:`reproduce`, what ``plstm-np reproduce`` does),
and each condition's published checkpoint (:func:`publish_checkpoints`)."""
from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np

from ..files import atomic_write, write_json_atomic
from ..io import load_checkpoint
from .configs import TASK_ALIASES, TASK_SPECS, default_config
from .registry import EXPERIMENTS
from .reports import aggregate, results_markdown, write_figures
from .run_folders import inspect_run, more_epochs
from .runs import build_model, evaluate_checkpoint, resolve_backend
from .sweeps import SweepRun, check_sweep_options, connect, run_sweep

__all__ = ["reproduce", "reproduce_command", "publish_checkpoints", "PROTOCOL_FILE",
           "CHECKPOINT_FOLDER"]

#: The protocol a results folder was made with, written before its first run.
PROTOCOL_FILE = "protocol.json"

#: Where :func:`publish_checkpoints` writes, inside an experiment's results folder.
CHECKPOINT_FOLDER = "checkpoints"

#: Protocol keys that do not make another experiment: more seeds add runs, other event
#: rates are evaluated again.
_OPEN_KEYS = ("seeds", "test_rhos")


def _option(key):
    """The ``plstm-np reproduce`` option of a protocol key."""
    return {"hidden_size": "--hidden"}.get(key, "--" + key.replace("_", "-"))


def _check_protocol(root, name, proto):
    """Refuse a results folder made with another protocol (naming the options that differ);
    folders from before :data:`PROTOCOL_FILE` existed are checked against results.json."""
    saved = None
    for file in (PROTOCOL_FILE, "results.json"):
        if (root / file).exists():
            saved = json.loads((root / file).read_text())
            break
    if saved is None:
        return
    there = {k: v for k, v in saved.get("protocol", {}).items() if k not in _OPEN_KEYS}
    now = {k: v for k, v in proto.items() if k not in _OPEN_KEYS}
    differ = sorted(k for k in set(there) | set(now) if there.get(k) != now.get(k)
                    # more epochs: the runs go on from their resume states (each run's
                    # folder is checked for one)
                    and not (k == "epochs" and more_epochs(there.get(k), now.get(k))))
    if saved.get("experiment", name) != name:
        differ.insert(0, "experiment")
    if differ:
        raise FileExistsError(
            f"{root} holds results made with another configuration of the protocol ("
            + ", ".join(f"{_option(k)}: {there.get(k)!r} there, {now.get(k)!r} now"
                        if k != "experiment" else f"experiment {saved['experiment']!r}"
                        for k in differ)
            + "); choose another --out or pass --overwrite")


def _run_is_complete(run_dir, cfg):
    """The history of the run in ``run_dir`` if it was made with ``cfg`` (the backend
    aside) and holds every epoch (or early stopping ended it; its checkpoint may have been
    deleted to save space); None if there is no such complete run. A run made with another
    configuration raises FileExistsError rather than being mixed into the results."""
    status = inspect_run(run_dir, cfg)
    return status.history if status.kind == "complete" else None


def reproduce(name, out_dir="results", *, quick=False, conditions=None, log=print,
              progress=False, overwrite=False, backend="numba", jobs=1, threads=None,
              scheduler=None, connect_timeout=10.0, bar=False, **protocol):
    """Run one of :data:`EXPERIMENTS` (every condition, every seed); write table and figures.

    Parameters
    ----------
    name : str
        A key of :data:`EXPERIMENTS` (or a task alias).
    out_dir : str or Path
        Results go to ``out_dir/<name>/``: ``protocol.json`` (the protocol, written first),
        ``runs/<condition>/seed<k>/`` (each run's folder: see
        :mod:`~plstm_np.experiments.run_folders`), ``results.json``, ``results.md`` and the
        figures.
    quick : bool
        The tiny smoke protocol (for tests): a few sequences, one epoch, one seed.
    conditions : list of str, optional
        Run only these conditions (default all).
    log : callable
    progress : bool
        Progress bars of the individual runs (serial runs without ``bar`` only).
    overwrite : bool
        Train the chosen runs afresh, replacing their folders' files. Without it, complete
        runs are reused and unfinished ones continue from their last complete epoch, bitwise
        as if uninterrupted (the same backend and ``threads``), so that rerunning an
        interrupted reproduction finishes it; a folder made with another protocol or a run
        made with another configuration raises FileExistsError naming what differs.
    backend : str
    jobs : int
        Runs trained at the same time in processes of this machine (joblib); 1: one after
        the other, in this process.
    threads : int, optional
        Numba threads per run (default: the available cores divided by ``jobs``; with one
        job, this process's count). Part of a run's arithmetic: resume with the same.
    scheduler : str, optional
        The address of a Dask scheduler (``tcp://host:8786``) to run on instead; it is
        reached before anything is written, and an unreachable one raises
        :class:`~plstm_np.experiments.sweeps.SchedulerUnreachableError` after
        ``connect_timeout`` seconds.
    connect_timeout : float
    bar : bool
        A progress bar over the runs (done, ETA) on stderr.
    **protocol
        Overrides of the protocol: ``epochs``, ``n_train``, ``n_val``, ``seeds`` (a count,
        seeds 0..seeds-1), ``lr``, ``batch_size``, ``hidden_size``, ``rho``, ``test_rhos``,
        ``max_batches`` and the task settings (``learn_r_on``, ``fresh_data``, ...).

    Returns
    -------
    dict
        What ``results.json`` holds: the protocol, per condition the runs' summaries and
        their mean/std, and the paper's figures.
    """
    name = TASK_ALIASES.get(name, name)
    if name not in EXPERIMENTS:
        raise ValueError(f"experiment must be one of {sorted(EXPERIMENTS)}, got {name!r}")
    check_sweep_options(jobs, threads, scheduler, connect_timeout)
    exp = EXPERIMENTS[name]
    proto = dict(exp.protocol)
    if quick:
        proto.update(exp.quick)
    proto.update({k: v for k, v in protocol.items() if v is not None})
    proto.setdefault("batch_size", 32)
    seeds = list(range(int(proto.pop("seeds"))))
    test_rhos = proto.pop("test_rhos", None)
    chosen = list(exp.conditions) if conditions is None else list(conditions)
    unknown = [c for c in chosen if c not in exp.conditions]
    if unknown:
        raise ValueError(f"conditions {unknown} are not among {list(exp.conditions)}")
    configs = {(cond, seed): default_config(exp.task, **{**proto, **exp.conditions[cond]},
                                            seed=seed, backend=backend)
               for cond in chosen for seed in seeds}  # bad values raise before any file
    root = Path(out_dir) / name
    if not overwrite:
        _check_protocol(root, name, proto)
    command = reproduce_command(name, out_dir, quick=quick, conditions=conditions,
                                backend=backend, threads=threads, **protocol)
    client = connect(scheduler, connect_timeout) if scheduler is not None else None
    try:
        return _reproduce(exp, root, proto, seeds, test_rhos, chosen, configs, log=log,
                          progress=progress, overwrite=overwrite, backend=backend, jobs=jobs,
                          threads=threads, client=client, bar=bar, quick=quick,
                          command=command)
    finally:
        if client is not None:
            client.close()


def reproduce_command(name, out_dir="results", *, quick=False, conditions=None,
                      backend="numba", threads=None, **protocol):
    """The ``plstm-np reproduce`` command line that makes what :func:`reproduce` makes
    with these arguments (how many jobs run at once changes nothing, so it is left out;
    ``--threads`` is part of the runs' arithmetic, so it is kept)."""
    words = ["plstm-np", "reproduce", name, "--out", str(out_dir)]
    if quick:
        words.append("--quick")
    if conditions is not None:
        words += ["--conditions", ",".join(conditions)]
    for key, value in protocol.items():
        if value is None:
            continue
        flag = "--" + {"hidden_size": "hidden"}.get(key, key).replace("_", "-")
        if isinstance(value, bool):
            words.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, (list, tuple)):
            words += [flag, *map(str, value)]
        else:
            words += [flag, str(value)]
    if threads is not None:
        words += ["--threads", str(threads)]
    if backend != "numba":
        words += ["--backend", backend]
    return shlex.join(words)


def _reproduce(exp, root, proto, seeds, test_rhos, chosen, configs, *, log, progress,
               overwrite, backend, jobs, threads, client, bar, quick, command):
    name = exp.name
    if client is None:  # on a cluster the workers find their backend
        backend = resolve_backend(backend, log=log)
    configs = {k: dict(cfg, backend=backend) for k, cfg in configs.items()}
    pending, histories = [], {}
    for (cond, seed), cfg in configs.items():
        run_dir = root / "runs" / cond / f"seed{seed}"
        history = None if overwrite else _run_is_complete(run_dir, cfg)
        if history is not None:
            log(f"[{name}] {cond} seed {seed}: reusing the complete run in {run_dir}")
            histories[cond, seed] = history
        else:
            pending.append(SweepRun(f"{cond}/seed{seed}", cfg, run_dir))
    root.mkdir(parents=True, exist_ok=True)
    write_json_atomic(root / PROTOCOL_FILE, dict(experiment=name, protocol=proto))
    if pending:
        first = pending[0].cfg
        where = (f"on the Dask cluster at {client.scheduler.address}" if client is not None
                 else f"in {min(jobs, len(pending))} processes" if jobs > 1 else "here")
        log(f"[{name}] training {len(pending)} run(s) {where} ({first['epochs']} epochs x "
            f"{first['n_train']} sequences each); each run's messages in its run.log")
        for run in pending:
            (run.run_dir / "test_rhos.json").unlink(missing_ok=True)  # of an earlier run

        def test_now(run, summary):  # while its last.npz is certainly there
            layer = build_model(run.cfg).recurrent_index
            _test_rhos(run.run_dir, test_rhos, layer, log)

        summaries = run_sweep(pending, jobs=jobs, threads=threads, client=client,
                              overwrite=overwrite, progress=progress, bar=bar,
                              log=lambda m: log(f"[{name}] {m}"), label=f"{name} runs",
                              on_done=test_now if test_rhos else None)
        for run, summary in zip(pending, summaries):
            cond, seed = run.name.split("/seed")
            histories[cond, int(seed)] = summary["history"]
    results = dict(experiment=name, title=exp.title, quick=quick,
                   protocol=dict(proto, seeds=seeds, test_rhos=test_rhos), backend=backend,
                   command=command, folder=str(root), conditions={}, paper=exp.paper,
                   paper_std=exp.paper_std, reference_curves=exp.reference_curves,
                   not_run=[c for c in exp.conditions if c not in chosen])
    for cond in chosen:
        runs = []
        for seed in seeds:
            run_dir = root / "runs" / cond / f"seed{seed}"
            layer = build_model(configs[cond, seed]).recurrent_index  # whose updates count
            record = _summarise(histories[cond, seed], TASK_SPECS[exp.task].loss, layer)
            test = _test_rhos(run_dir, test_rhos, layer, log) if test_rhos else None
            if test is not None:
                record["test"] = test
            elif test_rhos:
                log(f"[{name}] {cond} seed {seed}: not tested at rho = "
                    f"{', '.join(map(str, test_rhos))}: {run_dir} has neither its tests "
                    f"(test_rhos.json) nor the network to test (last.npz); the table's test "
                    f"rows leave this seed out")
            runs.append(dict(seed=seed, **record))
            log(f"[{name}] {cond} seed {seed}: " + ", ".join(
                f"{k}={v:.4g}" for k, v in record.items() if isinstance(v, float)))
        results["conditions"][cond] = dict(runs=runs, **aggregate(runs))
    if not quick:
        results["checkpoints"] = publish_checkpoints(root, results, log=log)
    write_json_atomic(root / "results.json", results)
    table = results_markdown(results)
    atomic_write(root / "results.md", lambda f: f.write(table), mode="w")
    figures = write_figures(results, root)
    results["figures"] = [str(p) for p in figures]
    write_json_atomic(root / "results.json", results)
    return results


def _summarise(history, loss, layer=0):
    """A run's figures; ``seconds`` is the training time of its epochs (without data
    generation and validation), the same whether the run was trained now or reused;
    ``updates_per_neuron`` those of layer ``layer`` (the first recurrent one)."""
    last = history[-1]
    seconds = sum(r["seconds"] for r in history)
    record = dict(epochs=len(history), seconds=float(seconds), final_val_loss=last["val_loss"],
                  best_val_loss=min(r["val_loss"] for r in history),
                  curve_val_loss=[r["val_loss"] for r in history],
                  curve_train_loss=[r["train_loss"] for r in history],
                  updates_per_neuron=float(last["val_updates_per_neuron"][layer]),
                  dense_updates_per_neuron=float(last["val_dense_updates_per_neuron"]))
    if all("train_accuracy" in r for r in history):  # runs of before it was recorded lack it
        record["curve_train_accuracy"] = [r["train_accuracy"] for r in history]
    if all("train_batches" in r for r in history):  # the updates after each epoch
        record["curve_updates"] = np.cumsum([r["train_batches"] for r in history]).tolist()
    if loss == "cross_entropy":
        record.update(final_val_accuracy=last["val_accuracy"],
                      best_val_accuracy=max(r["val_accuracy"] for r in history),
                      epoch1_val_accuracy=history[0]["val_accuracy"],
                      curve_val_accuracy=[r["val_accuracy"] for r in history])
    return record


def _test_rhos(run_dir, rhos, layer, log):
    """Accuracy and updates at several event rates of the network after the **last** epoch
    (``last.npz``: the table's figures are of the last epoch, without model selection on the
    held-out split they are measured on); kept in ``test_rhos.json`` so that a later
    reproduction reuses them (also without the resume state). None where neither exists
    (a complete run whose resume state was deleted, or not copied with a clone, before it
    was tested)."""
    path = run_dir / "test_rhos.json"
    if path.exists():
        saved = json.loads(path.read_text())
        if set(saved) == {str(rho) for rho in rhos}:
            return saved
    if not (run_dir / "last.npz").exists():
        return None
    out = {}
    for rho in rhos:
        r = evaluate_checkpoint(run_dir / "last.npz", rho=rho, log=log)
        out[str(rho)] = dict(accuracy=r["accuracy"], loss=r["loss"],
                             updates_per_neuron=r["updates_per_neuron"][layer],
                             dense_updates_per_neuron=r["dense_updates_per_neuron"])
    write_json_atomic(path, out)
    return out


def publish_checkpoints(root, results, *, log=print):
    """Write each condition's published checkpoint: ``root/checkpoints/<condition>.npz``.

    For every condition of ``results`` (what :func:`reproduce` computes), the run of the
    median seed (by final validation accuracy, or loss for regression; the lower of the
    two middle ones for an even count) gives the network after its **last** epoch (from
    its resume state ``last.npz``, so that evaluating it gives the table's final figure),
    saved with its parameters only (no optimizer state; the runs' dtype, float32 by
    default) and the metadata ``config``, ``epoch``, ``seed`` and ``selection`` = 'last
    epoch'. An existing file is replaced. Where the chosen run has no ``last.npz`` (resume
    states are not kept in version control, nor copied with a clone), an existing
    checkpoint that was published from that very run (same seed, configuration and last
    epoch) is kept and listed; otherwise the condition is skipped with a message.

    Returns
    -------
    dict
        Per published condition: ``path`` (relative to ``root``), ``seed``, ``epoch`` and
        the run's final figure (``final_val_accuracy`` or ``final_val_loss``).
    """
    root = Path(root)
    published = {}
    for cond, c in results["conditions"].items():
        runs = c["runs"]
        key = "final_val_accuracy" if "final_val_accuracy" in runs[0] else "final_val_loss"
        order = np.argsort([r[key] for r in runs], kind="stable")
        run = runs[int(order[(len(runs) - 1) // 2])]
        state = root / "runs" / cond / f"seed{run['seed']}" / "last.npz"
        out = root / CHECKPOINT_FOLDER / f"{cond}.npz"
        if not state.exists():
            if _published_from(out, state.parent, run):
                published[cond] = dict(path=str(out.relative_to(root)), seed=run["seed"],
                                       epoch=run["epochs"], **{key: run[key]})
                log(f"[{results['experiment']}] {cond}: no {state}; kept {out}, published "
                    f"from that run")
            else:
                log(f"[{results['experiment']}] {cond}: no {state} to publish; skipped")
            continue
        net, _, meta = load_checkpoint(state)
        out.parent.mkdir(parents=True, exist_ok=True)
        net.save(out, metadata=dict(config=meta["config"], epoch=meta["epoch"],
                                    seed=run["seed"], selection="last epoch"),
                 overwrite=True)
        published[cond] = dict(path=str(out.relative_to(root)), seed=run["seed"],
                               epoch=meta["epoch"], **{key: run[key]})
    return published


def _published_from(path, run_dir, run):
    """Whether ``path`` is a checkpoint published from the run in ``run_dir`` (summary
    ``run``): its metadata's seed, configuration and epoch are the run's, at its last epoch."""
    if not path.exists():
        return False
    _, _, meta = load_checkpoint(path)
    cfg = json.loads((run_dir / "config.json").read_text())
    return (meta.get("seed") == run["seed"] and meta.get("config") == cfg
            and meta.get("epoch") == run["epochs"] == cfg["epochs"])
