"""Reproductions of the paper's experiments: every condition and seed of one of
:data:`~plstm_np.experiments.registry.EXPERIMENTS`, reusing complete runs so that an
interrupted reproduction resumes, then the results (JSON + markdown) and figures
(:func:`reproduce`, what ``plstm-np reproduce`` does)."""
from __future__ import annotations

import json
from pathlib import Path

from ..files import write_json_atomic
from .configs import TASK_ALIASES, TASK_SPECS, default_config
from .registry import EXPERIMENTS
from .reports import aggregate, results_markdown, write_figures
from .runs import evaluate_checkpoint, resolve_backend, run_training

__all__ = ["reproduce"]


def _run_is_complete(run_dir, cfg):
    """The history of the run in ``run_dir`` if it was made with ``cfg`` (the backend
    aside) and its log holds every epoch (its checkpoint may have been deleted to save
    space); None if there is no such complete run. A run made with another configuration
    raises FileExistsError rather than being mixed into the results."""
    log_path, cfg_path = run_dir / "log.json", run_dir / "config.json"
    if not (log_path.exists() and cfg_path.exists()):
        return None
    saved = json.loads(cfg_path.read_text())
    differ = sorted(k for k in set(saved) | set(cfg) if k != "backend"
                    and saved.get(k) != cfg.get(k))
    if differ:
        raise FileExistsError(f"{run_dir} holds a run with another configuration ("
                              + ", ".join(f"{k}: {saved.get(k)!r} there, {cfg.get(k)!r} now"
                                          for k in differ)
                              + "); choose another --out or pass --overwrite")
    history = json.loads(log_path.read_text())
    return history if len(history) >= cfg["epochs"] else None


def reproduce(name, out_dir="results", *, quick=False, conditions=None, log=print,
              progress=False, overwrite=False, backend="numba", **protocol):
    """Run one of :data:`EXPERIMENTS` (every condition, every seed); write table and figures.

    Parameters
    ----------
    name : str
        A key of :data:`EXPERIMENTS` (or a task alias).
    out_dir : str or Path
        Results go to ``out_dir/<name>/``: ``runs/<condition>/seed<k>/`` (each run's
        checkpoint, log and config), ``results.json``, ``results.md`` and the figures.
    quick : bool
        The tiny smoke protocol (for tests): a few sequences, one epoch, one seed.
    conditions : list of str, optional
        Run only these conditions (default all).
    log : callable
    progress : bool
        Progress bars of the individual runs.
    overwrite : bool
        Rerun runs whose folders exist. Without it, complete runs (a log with every epoch and
        a checkpoint) are reused, so an interrupted reproduction resumes; an incomplete
        run's folder raises FileExistsError.
    backend : str
    **protocol
        Overrides of the protocol: ``epochs``, ``n_train``, ``n_val``, ``seeds`` (a count,
        seeds 0..seeds-1), ``lr``, ``batch_size``, ``hidden_size``, ``rho``, ``test_rhos``,
        ``max_batches``.

    Returns
    -------
    dict
        What ``results.json`` holds: the protocol, per condition the runs' summaries and
        their mean/std, and the paper's figures.
    """
    name = TASK_ALIASES.get(name, name)
    if name not in EXPERIMENTS:
        raise ValueError(f"experiment must be one of {sorted(EXPERIMENTS)}, got {name!r}")
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
    root = Path(out_dir) / name
    root.mkdir(parents=True, exist_ok=True)
    backend = resolve_backend(backend, log=log)
    results = dict(experiment=name, title=exp.title, quick=quick,
                   protocol=dict(proto, seeds=seeds, test_rhos=test_rhos), backend=backend,
                   conditions={}, paper=exp.paper)
    for cond in chosen:
        runs = []
        for seed in seeds:
            cfg = default_config(exp.task, **{**proto, **exp.conditions[cond]}, seed=seed,
                                 backend=backend)
            run_dir = root / "runs" / cond / f"seed{seed}"
            history = None if overwrite else _run_is_complete(run_dir, cfg)
            if history is not None:
                log(f"[{name}] {cond} seed {seed}: reusing the complete run in {run_dir}")
                summary = dict(history=history)
            else:
                log(f"[{name}] {cond} seed {seed}: training ({cfg['epochs']} epochs x "
                    f"{cfg['n_train']} sequences)")
                summary = run_training(cfg, run_dir, progress=progress, overwrite=overwrite,
                                       log=log)
                (run_dir / "test_rhos.json").unlink(missing_ok=True)  # of an earlier run
            record = _summarise(summary["history"], TASK_SPECS[exp.task].loss)
            if test_rhos:
                record["test"] = _test_rhos(run_dir, test_rhos, log)
            runs.append(dict(seed=seed, **record))
            log(f"[{name}] {cond} seed {seed}: " + ", ".join(
                f"{k}={v:.4g}" for k, v in record.items() if isinstance(v, float)))
        results["conditions"][cond] = dict(runs=runs, **aggregate(runs))
    write_json_atomic(root / "results.json", results)
    (root / "results.md").write_text(results_markdown(results))
    figures = write_figures(results, root)
    results["figures"] = [str(p) for p in figures]
    write_json_atomic(root / "results.json", results)
    return results


def _summarise(history, loss):
    """A run's figures; ``seconds`` is the training time of its epochs (without data
    generation and validation), the same whether the run was trained now or reused."""
    last = history[-1]
    seconds = sum(r["seconds"] for r in history)
    record = dict(epochs=len(history), seconds=float(seconds), final_val_loss=last["val_loss"],
                  best_val_loss=min(r["val_loss"] for r in history),
                  curve_val_loss=[r["val_loss"] for r in history],
                  curve_train_loss=[r["train_loss"] for r in history],
                  updates_per_neuron=float(last["val_updates_per_neuron"][0]),
                  dense_updates_per_neuron=float(last["val_dense_updates_per_neuron"]))
    if loss == "cross_entropy":
        record.update(final_val_accuracy=last["val_accuracy"],
                      best_val_accuracy=max(r["val_accuracy"] for r in history),
                      epoch1_val_accuracy=history[0]["val_accuracy"],
                      curve_val_accuracy=[r["val_accuracy"] for r in history])
    return record


def _test_rhos(run_dir, rhos, log):
    """Accuracy and updates at several event rates; kept in ``test_rhos.json`` so that a
    later reproduction reuses them (also without the checkpoint)."""
    path = run_dir / "test_rhos.json"
    if path.exists():
        saved = json.loads(path.read_text())
        if set(saved) == {str(rho) for rho in rhos}:
            return saved
    out = {}
    for rho in rhos:
        r = evaluate_checkpoint(run_dir, rho=rho, log=log)
        out[str(rho)] = dict(accuracy=r["accuracy"], loss=r["loss"],
                             updates_per_neuron=r["updates_per_neuron"][0],
                             dense_updates_per_neuron=r["dense_updates_per_neuron"])
    write_json_atomic(path, out)
    return out
