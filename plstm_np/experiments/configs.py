"""Run configurations: the tasks' sizes and defaults, their names, and a validated config.

- :class:`TaskSpec` and :data:`TASK_SPECS`: what each task needs (sizes, loss, timing) and
  the defaults of a quick ``plstm-np train`` run.
- :data:`TASK_ALIASES` and :func:`canonical_task`: the names accepted on the command line.
- :data:`MODELS`: the two architectures, Phased LSTM and the LSTM baseline.
- :func:`default_config`: a complete, checked, JSON-serialisable run configuration.
"""
from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["TaskSpec", "TASK_SPECS", "TASK_ALIASES", "MODELS", "SAMPLED_TASKS", "canonical_task",
           "default_config"]

MODELS = ("plstm", "lstm")


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """What a task needs: sizes, loss, timing, and the defaults of a quick training run.

    Attributes
    ----------
    name : str
        Key of :data:`plstm_np.tasks.TASKS`.
    n_inputs, n_outputs : int
        Input features per step (excluding an embedding) and read-out size.
    loss : {'cross_entropy', 'mse'}
    tau_exp_range : (float, float)
        Phased LSTM periods ``tau = exp(U(lo, hi))`` ms.
    time_scale : float
        Scale of the LSTM baseline's timestamp input (about 1 / the longest time).
    synthetic : bool
        Generated from the seed (True) or a real data set split by ``split_seed``.
    n_train, n_val, epochs, lr : int, int, int, float
        Defaults of ``plstm-np train`` for this task (a quick run, not the paper's protocol).
    """

    name: str
    n_inputs: int
    n_outputs: int
    loss: str = "cross_entropy"
    tau_exp_range: tuple = (0.0, 3.0)
    time_scale: float = 1.0
    synthetic: bool = True
    n_train: int = 2000
    n_val: int = 500
    epochs: int = 5
    lr: float = 1e-2


TASK_SPECS = {
    # the main job (`plstm-np train`): about 25 s of training on 2 free cores, plus about
    # 30 s of Numba compilation the first time; about 80 % validation accuracy
    "frequency": TaskSpec("frequency", 1, 2, time_scale=1 / 125, n_train=4000, epochs=8),
    "superimposed": TaskSpec("superimposed", 1, 2, time_scale=1 / 125),
    "adding": TaskSpec("adding", 2, 1, loss="mse", tau_exp_range=(4.0, 6.0), time_scale=1 / 500,
                       n_train=1000, n_val=200, epochs=3),
    "nmnist": TaskSpec("nmnist", 1, 10, tau_exp_range=(1.0, 6.0), time_scale=1 / 300,
                       synthetic=False, n_train=900, n_val=100, epochs=1),
    "multirate": TaskSpec("multirate", 2, 2, time_scale=1 / 1000, n_train=1000, n_val=300,
                          epochs=3),
    "digits": TaskSpec("digits", 1, 10, time_scale=1 / 64, synthetic=False, n_train=1797,
                       n_val=1797, epochs=5),
    "smnist": TaskSpec("smnist", 1, 10, tau_exp_range=(0.0, 5.0), time_scale=1 / 784,
                       synthetic=False, n_train=2000, n_val=500, epochs=1),
}

#: Short names accepted on the command line.
TASK_ALIASES = {"freq": "frequency", "super": "superimposed", "add": "adding",
                "n-mnist": "nmnist", "mnist": "smnist", "sequential-mnist": "smnist"}

#: Tasks whose generator takes a ``sampling`` argument.
SAMPLED_TASKS = ("frequency", "superimposed")


def canonical_task(name):
    """The :data:`TASK_SPECS` key for a task name or alias (ValueError naming ``task``)."""
    key = TASK_ALIASES.get(name, name)
    if key not in TASK_SPECS:
        choices = sorted(set(TASK_SPECS) | set(TASK_ALIASES))
        raise ValueError(f"task must be one of {choices}, got {name!r}")
    return key


def default_config(task="frequency", **overrides):
    """A complete run configuration for ``task``, with the task's quick defaults.

    Parameters
    ----------
    task : str
        A task name or alias.
    **overrides
        Any key of the returned dict (None values are ignored, so command-line options that
        were not given keep the defaults).

    Returns
    -------
    dict
        ``task``, ``model``, ``sampling`` (frequency tasks), ``seed``, ``n_train``, ``n_val``,
        ``epochs``, ``batch_size``, ``lr``, ``hidden_size``, ``tau_exp_range``, ``r_on``,
        ``rho`` (N-MNIST event rate), ``split_seed``, ``max_grad_norm``, ``patience``,
        ``max_batches``, ``backend``, ``dtype``.
    """
    task = canonical_task(task)
    spec = TASK_SPECS[task]
    cfg = dict(task=task, model="plstm", sampling="async" if task in SAMPLED_TASKS else None,
               seed=0, n_train=spec.n_train, n_val=spec.n_val, epochs=spec.epochs,
               batch_size=32, lr=spec.lr, hidden_size=110, tau_exp_range=list(spec.tau_exp_range),
               r_on=0.05, rho=1.0, split_seed=0, max_grad_norm=None, patience=None,
               max_batches=None, backend="numba", dtype="float64")
    unknown = set(overrides) - set(cfg)
    if unknown:
        raise ValueError(f"unknown configuration keys {sorted(unknown)}")
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    if cfg["model"] not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {cfg['model']!r}")
    if task in SAMPLED_TASKS and cfg["sampling"] not in ("standard", "high_res", "async"):
        raise ValueError(f"sampling must be 'standard', 'high_res' or 'async', "
                         f"got {cfg['sampling']!r}")
    if task not in SAMPLED_TASKS and cfg["sampling"] is not None:
        raise ValueError(f"sampling applies to the frequency tasks {SAMPLED_TASKS}, "
                         f"not to {task!r}")
    if not (isinstance(cfg["seed"], (int, np.integer)) and cfg["seed"] >= 0):
        raise ValueError(f"seed must be an integer >= 0, got {cfg['seed']!r}")
    for key in ("n_train", "n_val", "epochs", "batch_size", "hidden_size"):
        if not (isinstance(cfg[key], (int, np.integer)) and cfg[key] >= 1):
            raise ValueError(f"{key} must be an integer >= 1, got {cfg[key]!r}")
    if not cfg["lr"] > 0:
        raise ValueError(f"lr must be > 0, got {cfg['lr']}")
    if not 0 < cfg["rho"] <= 1:
        raise ValueError(f"rho must lie in (0, 1], got {cfg['rho']}")
    if not 0 < cfg["r_on"] <= 1:
        raise ValueError(f"r_on must lie in (0, 1], got {cfg['r_on']}")
    lo, hi = cfg["tau_exp_range"]
    if not lo <= hi:
        raise ValueError(f"tau_exp_range must be (low, high) with low <= high, "
                         f"got {cfg['tau_exp_range']}")
    cfg["tau_exp_range"] = [float(lo), float(hi)]
    if cfg["dtype"] not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {cfg['dtype']!r}")
    return cfg
