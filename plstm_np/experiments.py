"""The paper's tasks as ready-made experiments: data, models, training runs and reproductions.

Three layers, each usable on its own:

- :func:`make_data` and :func:`build_model`: the data of a task (train and validation sets,
  regenerated exactly from a seed) and the paper's architecture for it, Phased LSTM or the
  LSTM baseline.
- :func:`run_training`: one training run from a JSON-serialisable configuration (what
  ``plstm-np train`` does): data, model, :func:`plstm_np.train`, and a run folder with
  ``checkpoint.npz``, ``log.json`` and ``config.json``.
- :func:`reproduce`: one of the paper's experiments (every condition and seed), then a
  results table (markdown + JSON) and its figures (what ``plstm-np reproduce`` does).

Architectures (the paper, sections 3.1-3.3):

================  =======================================  =======================  ======
task              Phased LSTM                              tau ~ exp(U(lo, hi))     loss
================  =======================================  =======================  ======
``frequency``     1-110-2                                  (0, 3)                   CE
``superimposed``  1-110-2                                  (0, 3)                   CE
``adding``        2-110-1                                  compared: (0, 2) ... (6, 8) MSE
``nmnist``        embedding 1156x40 + polarity = 41-110-10 (1, 6)                   CE
``multirate``     2-110-2, hand-set timing (not learned)   sensors' periods         CE
``digits``        1-110-10 (8x8 digits, 64 steps)          (0, 3)                   CE
``smnist``        1-110-10 (MNIST, 784 steps)              (0, 5)                   CE
================  =======================================  =======================  ======

r_on = 0.05 and the leak alpha = 1e-3 everywhere. The LSTM baseline has the same size and
receives the timestamp as an extra input, scaled by ``time_scale`` so that it lies in about
[0, 1]. Times are in milliseconds (see :mod:`plstm_np.tasks`).

Seeds. A run's ``seed`` fixes everything: the training data (``default_rng([seed, 0])``),
the validation data of the synthetic tasks (``default_rng([seed, 1])``), the initial
weights (``default_rng([seed, 2])``) and the order of the mini-batches
(``default_rng([seed, 3])``). The real data sets (N-MNIST, digits, MNIST) are split into
train and validation once, by ``split_seed`` (default 0), the same for every seed.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import numpy as np

from .backends import BackendUnavailableError, get_backend
from .io import load_checkpoint
from .layers import LSTM, PhasedLSTM
from .network import Dense, Embedding, Network
from .nmnist import NUM_ADDRESSES
from .optim import Adam
from .tasks import TASKS, multirate_timing, train_val_split
from .training import train

__all__ = ["TaskSpec", "TASK_SPECS", "TASK_ALIASES", "MODELS", "EXPERIMENTS", "canonical_task",
           "default_config", "make_data", "make_val_data", "build_model", "resolve_backend",
           "run_training", "evaluate_checkpoint", "reproduce"]

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
_SAMPLED = ("frequency", "superimposed")


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
    cfg = dict(task=task, model="plstm", sampling="async" if task in _SAMPLED else None,
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
    if task in _SAMPLED and cfg["sampling"] not in ("standard", "high_res", "async"):
        raise ValueError(f"sampling must be 'standard', 'high_res' or 'async', got {cfg['sampling']!r}")
    if task not in _SAMPLED and cfg["sampling"] is not None:
        raise ValueError(f"sampling applies to the frequency tasks {_SAMPLED}, not to {task!r}")
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
        raise ValueError(f"tau_exp_range must be (low, high) with low <= high, got {cfg['tau_exp_range']}")
    cfg["tau_exp_range"] = [float(lo), float(hi)]
    if cfg["dtype"] not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {cfg['dtype']!r}")
    return cfg


# ----------------------------------------------------------------------------- data

def _subset(data, n, rng):
    """``n`` sequences of ``data`` drawn without replacement (kept in order), or all of it."""
    if n >= len(data):
        return data
    return data[np.sort(rng.choice(len(data), n, replace=False))]


def _real_data(cfg):
    """(train, val) of a real data set, split by ``split_seed`` and capped by n_train/n_val."""
    task, dtype = cfg["task"], np.dtype(cfg["dtype"])
    if task == "nmnist":
        full = TASKS[task](rho=cfg["rho"], rng=np.random.default_rng([cfg["split_seed"], 4]),
                           dtype=dtype)
    else:
        full = TASKS[task](dtype=dtype)
    fraction = 0.1
    train_part, val_part = train_val_split(full, fraction, rng=cfg["split_seed"])
    return train_part, val_part


def make_data(cfg):
    """The training and validation sets of a run configuration.

    Parameters
    ----------
    cfg : dict
        From :func:`default_config` (keys ``task``, ``sampling``, ``seed``, ``n_train``,
        ``n_val``, ``rho``, ``split_seed``, ``dtype``).

    Returns
    -------
    train, val : Dataset
        Synthetic tasks: ``n_train`` and ``n_val`` fresh sequences drawn from the seed.
        Real data: a stratified 90/10 split by ``split_seed``, then at most ``n_train``
        training sequences (drawn from the seed) and at most ``n_val`` validation
        sequences (drawn from ``split_seed``).
    """
    task, seed = cfg["task"], cfg["seed"]
    if TASK_SPECS[task].synthetic:
        return (_generate(cfg, cfg["n_train"], np.random.default_rng([seed, 0])),
                make_val_data(cfg))
    train_part, val_part = _real_data(cfg)
    return (_subset(train_part, cfg["n_train"], np.random.default_rng([seed, 0])),
            _subset(val_part, cfg["n_val"], np.random.default_rng([cfg["split_seed"], 1])))


def make_val_data(cfg):
    """Only the validation set of :func:`make_data` (what ``plstm-np evaluate`` regenerates)."""
    if TASK_SPECS[cfg["task"]].synthetic:
        return _generate(cfg, cfg["n_val"], np.random.default_rng([cfg["seed"], 1]))
    _, val_part = _real_data(cfg)
    return _subset(val_part, cfg["n_val"], np.random.default_rng([cfg["split_seed"], 1]))


def _generate(cfg, n, rng):
    kwargs = dict(rng=rng, dtype=np.dtype(cfg["dtype"]))
    if cfg["task"] in _SAMPLED:
        kwargs["sampling"] = cfg["sampling"]
    return TASKS[cfg["task"]](n, **kwargs)


# ----------------------------------------------------------------------------- models

def resolve_backend(name, *, log=print):
    """``name`` if it can run here, else 'numpy' with a message through ``log``.

    The Numba backend is tried by compiling and running one tiny forward pass (the kernels
    are cached on disk, so this is quick after the first time).
    """
    if name == "numpy":
        return name
    try:
        get_backend(name)
        if name == "numba":
            probe = Network([PhasedLSTM(1, 2, rng=0, backend="numba")], Dense(2, 2, rng=0))
            probe.forward(np.zeros((1, 2, 1)), np.array([[0.0, 1.0]]))
        return name
    except (BackendUnavailableError, ImportError, Exception) as err:  # noqa: BLE001 (any compile error)
        log(f"backend {name!r} is not usable here ({type(err).__name__}: {err}); "
            f"falling back to the NumPy reference backend (slower)")
        return "numpy"


def build_model(cfg):
    """The paper's architecture for a run configuration (see the module docstring).

    Parameters
    ----------
    cfg : dict
        From :func:`default_config` (keys ``task``, ``model``, ``hidden_size``,
        ``tau_exp_range``, ``r_on``, ``seed``, ``backend``, ``dtype``).

    Returns
    -------
    Network
    """
    task, spec = cfg["task"], TASK_SPECS[cfg["task"]]
    H, dtype, backend = cfg["hidden_size"], np.dtype(cfg["dtype"]), cfg["backend"]
    rng = np.random.default_rng([cfg["seed"], 2])
    embedding = None
    n_in = spec.n_inputs
    if task == "nmnist":
        embedding = Embedding(NUM_ADDRESSES, 40, dtype=dtype, rng=rng)
        n_in += embedding.dim
    if cfg["model"] == "lstm":
        layer = LSTM(n_in, H, time_scale=spec.time_scale, dtype=dtype, backend=backend, rng=rng)
    elif task == "multirate":
        timing = multirate_timing(H, r_on=cfg["r_on"])
        layer = PhasedLSTM(n_in, H, **timing, learn_tau=False, learn_s=False, dtype=dtype,
                           backend=backend, rng=rng)
    else:
        layer = PhasedLSTM(n_in, H, tau_exp_range=tuple(cfg["tau_exp_range"]), r_on=cfg["r_on"],
                           dtype=dtype, backend=backend, rng=rng)
    return Network([layer], Dense(H, spec.n_outputs, dtype=dtype, rng=rng), embedding=embedding,
                   loss=spec.loss)


# ----------------------------------------------------------------------------- one run

def _write_json(path, obj):
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def run_training(cfg, out_dir=None, *, progress=True, overwrite=False, log=print):
    """Train one model as configured; write the run folder if ``out_dir`` is given.

    Parameters
    ----------
    cfg : dict
        From :func:`default_config`.
    out_dir : str or Path, optional
        Receives ``config.json`` (the configuration, written first), ``log.json`` (every
        epoch, rewritten as training goes) and ``checkpoint.npz`` (the network with the
        lowest validation loss, its optimizer state, and the configuration in its metadata
        so that :func:`evaluate_checkpoint` can rebuild the validation set).
    progress : bool
        tqdm progress bar and one line per epoch.
    overwrite : bool
        Replace the files of an earlier run in ``out_dir`` (otherwise FileExistsError).
    log : callable
        Receives the messages (e.g. a backend fallback).

    Returns
    -------
    dict
        ``config`` (with the backend actually used), ``history`` (one record per epoch, see
        :func:`plstm_np.train`), ``final`` (the last epoch's validation metrics),
        ``seconds``.
    """
    cfg = dict(cfg)
    paths = {}
    if out_dir is not None:
        out_dir = Path(out_dir)
        paths = {k: out_dir / f"{k}.{ext}" for k, ext in
                 (("checkpoint", "npz"), ("log", "json"), ("config", "json"))}
        existing = [str(p) for p in paths.values() if p.exists()]
        if existing and not overwrite:
            raise FileExistsError(f"{', '.join(existing)} exist(s): an earlier run is there; "
                                  f"choose another folder or pass overwrite (--overwrite)")
        out_dir.mkdir(parents=True, exist_ok=True)
    cfg["backend"] = resolve_backend(cfg["backend"], log=log)
    start = time.perf_counter()
    train_data, val_data = make_data(cfg)
    net = build_model(cfg)
    optimizer = Adam(net, lr=cfg["lr"])
    if paths:
        _write_json(paths["config"], cfg)
    history = train(net, optimizer, train_data, val_data, epochs=cfg["epochs"],
                    batch_size=cfg["batch_size"], rng=np.random.default_rng([cfg["seed"], 3]),
                    max_grad_norm=cfg["max_grad_norm"], patience=cfg["patience"],
                    checkpoint=paths.get("checkpoint"), log_path=paths.get("log"),
                    progress=progress, max_batches=cfg["max_batches"], overwrite=overwrite,
                    metadata={"config": cfg})
    final = {k[4:]: v for k, v in history[-1].items() if k.startswith("val_")}
    return dict(config=cfg, history=history, final=final, seconds=time.perf_counter() - start,
                n_train=len(train_data), n_val=len(val_data))


def evaluate_checkpoint(path, *, nmnist_folder=None, label_file=None, rho=None, backend=None,
                        batch_size=256, log=print):
    """Evaluate a checkpoint written by :func:`run_training`.

    Parameters
    ----------
    path : str or Path
        A ``checkpoint.npz``, or a run folder holding one.
    nmnist_folder : str or Path, optional
        Evaluate on these N-MNIST recordings (``.bin``/``.bs2``, labels from ``label_file``,
        the folder's only ``.txt`` file or per-digit sub-folders) instead of the task's
        validation set, which is otherwise regenerated from the configuration saved in the
        checkpoint.
    label_file : str or Path, optional
    rho : float, optional
        Event rate of the N-MNIST recordings (default: the run's).
    backend : str, optional
        Default: the run's backend when it can run here.
    batch_size : int
    log : callable

    Returns
    -------
    dict
        ``loss``, ``accuracy`` (classification), ``updates_per_neuron`` (list per layer),
        ``dense_updates_per_neuron``, ``n`` (sequences), ``data`` (what was evaluated),
        ``config``, ``epoch`` (the training epoch the checkpoint holds: the one with the
        lowest validation loss).
    """
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.npz"
    net, _, meta = load_checkpoint(path)
    cfg = meta.get("config")
    if cfg is None:
        raise ValueError(f"{path} holds no run configuration in its metadata (it was not "
                         f"written by plstm-np train); evaluate it with plstm_np.load and "
                         f"Network.evaluate instead")
    cfg = dict(cfg)
    net.backend = resolve_backend(backend or cfg.get("backend", "numba"), log=log)
    if rho is not None:
        cfg["rho"] = float(rho)
    if nmnist_folder is not None:
        if cfg["task"] != "nmnist":
            raise ValueError(f"--nmnist-folder needs an N-MNIST checkpoint; this one was "
                             f"trained on {cfg['task']!r}")
        from .nmnist import load_nmnist, to_dataset

        recordings, labels = load_nmnist(nmnist_folder, label_file=label_file)
        if (labels < 0).any():
            missing = int((labels < 0).sum())
            raise ValueError(f"{missing} recording(s) in {nmnist_folder} have no label: give "
                             f"a label file ('<id> <label>' lines) or per-digit folders")
        data = to_dataset(recordings, labels, rho=cfg["rho"], rng=np.random.default_rng(0),
                          dtype=np.dtype(cfg["dtype"]))
        source = f"{len(data)} N-MNIST recordings from {nmnist_folder}"
    else:
        data = make_val_data(cfg)
        source = f"validation set of {cfg['task']} ({len(data)} sequences, seed {cfg['seed']})"
    result = net.evaluate(data, batch_size=batch_size)
    result.update(n=len(data), data=source, config=cfg, epoch=meta.get("epoch"))
    return result


# ----------------------------------------------------------------------------- reproductions

@dataclasses.dataclass(frozen=True)
class Experiment:
    """A reproduction: the paper's protocol, its conditions, and a quick smoke version.

    Attributes
    ----------
    name, title : str
    task : str
    conditions : dict
        Condition name -> configuration overrides.
    protocol : dict
        The paper's protocol (``epochs``, ``n_train``, ``n_val``, ``seeds``, ...).
    quick : dict
        A tiny version for tests.
    paper : dict
        The paper's reported figures, per condition (None where it reports none).

    Notes
    -----
    The default protocols follow the paper and the authors' public code
    (github.com/dannyneil/public_plstm: Adam lr 1e-3, batches of 32, 5 seeds, 500
    validation sequences; 70 epochs for the frequency task, 300 for the superimposed
    frequencies). They take hours to days on a CPU; ``plstm-np reproduce`` shortens them
    with its options, and ``results/README.md`` says how the published results did.
    """

    name: str
    title: str
    task: str
    conditions: dict
    protocol: dict
    quick: dict
    paper: dict


_QUICK = dict(epochs=1, n_train=8, n_val=8, seeds=1, batch_size=4, hidden_size=8)

EXPERIMENTS = {
    "frequency": Experiment(
        "frequency", "Frequency discrimination (Fig. 3d)", "frequency",
        conditions={f"{model}-{sampling}": dict(model=model, sampling=sampling)
                    for sampling in ("standard", "high_res", "async") for model in MODELS},
        protocol=dict(epochs=70, n_train=10_000, n_val=500, seeds=5, lr=1e-3),
        quick=_QUICK,
        paper={"plstm-standard": 99.0, "plstm-high_res": 99.5, "plstm-async": 98.0,
               "lstm-standard": 89.0, "lstm-high_res": 52.0, "lstm-async": 69.0},
    ),
    "superimposed": Experiment(
        "superimposed", "Superimposed frequencies (Fig. 4a)", "superimposed",
        conditions={m: dict(model=m, sampling="async") for m in MODELS},
        protocol=dict(epochs=300, n_train=5_000, n_val=500, seeds=5, lr=1e-3),
        quick=_QUICK,
        paper={"plstm": 93.0, "lstm": "55–60"},
    ),
    "adding": Experiment(
        "adding", "Adding task, tau initialisations (Fig. 4b)", "adding",
        conditions={**{f"plstm-tau{lo}-{hi}": dict(model="plstm", tau_exp_range=[lo, hi])
                       for lo, hi in ((0, 2), (2, 4), (4, 6), (6, 8))},
                    "lstm": dict(model="lstm")},
        protocol=dict(epochs=70, n_train=10_000, n_val=1_000, seeds=5, lr=1e-3),
        quick=dict(_QUICK, n_train=4, n_val=4),
        paper={},
    ),
    "nmnist": Experiment(
        "nmnist", "N-MNIST (Table 1)", "nmnist",
        conditions={m: dict(model=m) for m in MODELS},
        protocol=dict(epochs=3, n_train=900, n_val=100, seeds=3, lr=1e-3, rho=0.75,
                      test_rhos=[0.4, 0.75, 1.0]),
        quick=dict(_QUICK, n_train=10, n_val=10, rho=0.02, test_rhos=[0.02]),
        paper={"plstm_updates_per_neuron": 159, "lstm_updates_per_neuron": 3153},
    ),
    "digits": Experiment(
        "digits", "Sequential 8x8 digits, pixel by pixel (accuracy/loss curves)", "digits",
        conditions={m: dict(model=m) for m in MODELS},
        protocol=dict(epochs=20, n_train=1797, n_val=1797, seeds=3, lr=1e-3),
        quick=_QUICK,
        paper={},
    ),
    "smnist": Experiment(
        "smnist", "Sequential MNIST, pixel by pixel (accuracy/loss curves)", "smnist",
        conditions={m: dict(model=m) for m in MODELS},
        protocol=dict(epochs=20, n_train=9000, n_val=1000, seeds=3, lr=1e-3),
        quick=dict(_QUICK, n_train=4, n_val=4),
        paper={},
    ),
}


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
    results = dict(experiment=name, title=exp.title, quick=quick, protocol=dict(proto, seeds=seeds, test_rhos=test_rhos),
                   backend=backend, conditions={}, paper=exp.paper)
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
        results["conditions"][cond] = dict(runs=runs, **_aggregate(runs))
    _write_json(root / "results.json", results)
    (root / "results.md").write_text(results_markdown(results))
    figures = write_figures(results, root)
    results["figures"] = [str(p) for p in figures]
    _write_json(root / "results.json", results)
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
    _write_json(path, out)
    return out


def _aggregate(runs):
    """Mean and standard deviation over seeds of every scalar of the runs."""
    agg = {}
    for key, value in runs[0].items():
        if key == "seed":
            continue
        if isinstance(value, float):
            values = np.array([r[key] for r in runs])
            agg[f"{key}_mean"], agg[f"{key}_std"] = float(values.mean()), float(values.std())
        elif isinstance(value, list) and value and isinstance(value[0], float):
            n = min(len(r[key]) for r in runs)
            agg[f"{key}_mean"] = np.mean([r[key][:n] for r in runs], axis=0).tolist()
    if "test" in runs[0]:
        agg["test_mean"] = {rho: {k: float(np.mean([r["test"][rho][k] for r in runs]))
                                  for k in runs[0]["test"][rho]} for rho in runs[0]["test"]}
    return agg


def _pm(mean, std, scale=1.0, digits=1):
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"


def results_markdown(results):
    """The results table of :func:`reproduce` as markdown (protocol, ours, the paper)."""
    p = results["protocol"]
    exp = EXPERIMENTS[results["experiment"]]
    if TASK_SPECS[exp.task].synthetic:
        sizes = f"{p['n_train']} training sequences, {p['n_val']} validation sequences"
    else:
        sizes = (f"the data set's 90/10 train/validation split (at most {p['n_train']} "
                 f"training and {p['n_val']} validation sequences)")
    lines = [f"# {results['title']}", "",
             f"Protocol: {p['epochs']} epochs x {sizes}, seeds {p['seeds']}, "
             f"batch {p.get('batch_size', 32)}, "
             f"Adam lr {p.get('lr')}, backend {results['backend']}"
             + (" (quick smoke protocol)" if results["quick"] else "") + ".", ""]
    conds = results["conditions"]
    paper = results["paper"]
    classification = any("final_val_accuracy_mean" in c for c in conds.values())
    if classification:
        lines += ["| condition | final val. accuracy (%) | best (%) | epoch 1 (%) | "
                  "updates/neuron (eval) | dense | paper (%) | training time/run (s) |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, c in conds.items():
            ref = paper.get(name)
            lines.append(
                f"| {name} | {_pm(c['final_val_accuracy_mean'], c['final_val_accuracy_std'], 100)} "
                f"| {_pm(c['best_val_accuracy_mean'], c['best_val_accuracy_std'], 100)} "
                f"| {_pm(c['epoch1_val_accuracy_mean'], c['epoch1_val_accuracy_std'], 100)} "
                f"| {c['updates_per_neuron_mean']:.1f} | {c['dense_updates_per_neuron_mean']:.1f} "
                f"| {'—' if ref is None else f'≈ {ref}'} | {c['seconds_mean']:.0f} |")
    else:
        lines += ["| condition | final val. MSE | best val. MSE | epoch-1 val. MSE | "
                  "updates/neuron (eval) | dense | training time/run (s) |",
                  "|---|---|---|---|---|---|---|"]
        for name, c in conds.items():
            lines.append(f"| {name} | {_pm(c['final_val_loss_mean'], c['final_val_loss_std'], 1, 4)} "
                         f"| {_pm(c['best_val_loss_mean'], c['best_val_loss_std'], 1, 4)} "
                         f"| {c['curve_val_loss_mean'][0]:.4f} | {c['updates_per_neuron_mean']:.1f} "
                         f"| {c['dense_updates_per_neuron_mean']:.1f} | {c['seconds_mean']:.0f} |")
    if any("test_mean" in c for c in conds.values()):
        rhos = list(next(iter(conds.values()))["test_mean"])
        lines += ["", "Test at several event rates rho (trained at rho = "
                  f"{p.get('rho', 1.0)}), mean over seeds:", "",
                  "| condition | " + " | ".join(f"acc. rho={r} (%)" for r in rhos)
                  + " | updates/neuron at rho=" + rhos[-1] + " | dense |",
                  "|---|" + "---|" * (len(rhos) + 2)]
        for name, c in conds.items():
            t = c["test_mean"]
            lines.append(f"| {name} | " + " | ".join(f"{100 * t[r]['accuracy']:.1f}" for r in rhos)
                         + f" | {t[rhos[-1]]['updates_per_neuron']:.1f} | "
                         f"{t[rhos[-1]]['dense_updates_per_neuron']:.1f} |")
    if paper and not classification or any(k.endswith("updates_per_neuron") for k in paper):
        lines += ["", "Paper: " + ", ".join(f"{k} = {v}" for k, v in paper.items()) + "."]
    lines += ["", "Updates per neuron: neuron updates actually computed per neuron and per "
              "sequence at evaluation (alpha = 0, closed neurons skipped); 'dense' is the "
              "number of valid steps, what an LSTM computes.", ""]
    return "\n".join(lines)


def write_figures(results, folder):
    """The figures of a reproduction (PNG, matplotlib Agg); returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    conds = results["conditions"]
    paths = []
    classification = any("final_val_accuracy_mean" in c for c in conds.values())
    if results["experiment"] == "frequency":
        fig, ax = plt.subplots(figsize=(7.5, 3.5))
        samplings = ["standard", "high_res", "async"]
        width = 0.38
        for k, model in enumerate(MODELS):
            names = [f"{model}-{s}" for s in samplings]
            means = [100 * conds[n]["final_val_accuracy_mean"] if n in conds else np.nan for n in names]
            stds = [100 * conds[n]["final_val_accuracy_std"] if n in conds else 0 for n in names]
            paper = [results["paper"].get(n, np.nan) for n in names]
            xs = np.arange(3) + (k - 0.5) * width
            ax.bar(xs, means, width, yerr=stds, label={"plstm": "Phased LSTM", "lstm": "LSTM"}[model],
                   color=("tab:red" if model == "plstm" else "tab:blue"), capsize=3)
            ax.scatter(xs, paper, marker="_", s=300, color="k", zorder=3,
                       label="paper" if k == 0 else None)
        ax.set_xticks(range(3), ["standard", "high resolution", "async"])
        ax.set_ylabel("validation accuracy (%)")
        ax.set_ylim(40, 100)
        ax.axhline(50, color="grey", lw=0.5, ls=":")
        ax.set_title("Frequency discrimination (cf. paper Fig. 3d)")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
        fig.tight_layout()
        paths.append(folder / "fig3d_bars.png")
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)
    fig, axes = plt.subplots(1, 2 if classification else 1, figsize=(10 if classification else 5.5, 3.5),
                             squeeze=False)
    variants = list(dict.fromkeys(name.partition("-")[2] for name in conds))
    for name, c in conds.items():
        epochs = np.arange(1, len(c["curve_val_loss_mean"]) + 1)
        # one colour per variant (sampling, tau range), solid Phased LSTM, dashed LSTM
        style = dict(ls="-" if name.startswith("plstm") else "--",
                     color=f"C{variants.index(name.partition('-')[2]) % 10}",
                     marker="." if len(epochs) < 30 else None)
        if classification:
            axes[0, 0].plot(epochs, 100 * np.array(c["curve_val_accuracy_mean"]), label=name, **style)
            axes[0, 1].plot(epochs, c["curve_val_loss_mean"], label=name, **style)
        else:
            axes[0, 0].plot(epochs, c["curve_val_loss_mean"], label=name, **style)
    if classification:
        axes[0, 0].set_ylabel("validation accuracy (%)")
        axes[0, 1].set_ylabel("validation loss (cross-entropy)")
    else:
        axes[0, 0].set_ylabel("validation MSE")
        axes[0, 0].set_yscale("log")
    for ax in axes[0]:
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8)
    fig.suptitle(f"{results['title']}: mean over seeds {results['protocol']['seeds']}")
    fig.tight_layout()
    names = {"frequency": "fig3_curves.png", "superimposed": "fig4a_curves.png",
             "adding": "fig4b_curves.png", "nmnist": "table1_curves.png"}
    paths.append(folder / names.get(results["experiment"], f"{results['experiment']}_curves.png"))
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    return paths
