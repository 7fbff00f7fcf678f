"""One training run and its evaluation: the data of a task, the paper's model for it,
training into a run folder, and evaluating the checkpoint it leaves.

- :func:`make_data`, :func:`make_val_data`: the train and validation sets of a
  configuration, regenerated exactly from its seed.
- :func:`resolve_backend`, :func:`build_model`: the kernels that can run here, and the
  paper's architecture for a task (Phased LSTM, or a baseline: LSTM, BN-LSTM; or a
  Phased GRU, GRU).
- :func:`run_training`: one run (what ``plstm-np train`` does): data, model,
  :func:`plstm_np.train`, and a run folder with ``checkpoint.npz``, ``log.json`` and
  ``config.json``.
- :func:`evaluate_checkpoint`: a saved run on its regenerated validation set or on
  N-MNIST recordings (what ``plstm-np evaluate`` does).

Architectures (the paper, sections 3.1-3.3):

================  =======================================  =======================  ======
task              Phased LSTM                              tau ~ exp(U(lo, hi))     loss
================  =======================================  =======================  ======
``frequency``     1-110-2                                  (0, 3)                   CE
``superimposed``  1-110-2                                  (0, 3)                   CE
``adding``        2-110-1                                  compared: (0, 2) ... (6, 8) MSE
``nmnist``        embedding 1156x40 + polarity = 41-110-10 (ln 100, ln 100): 100 ms  CE
``multirate``     2-110-2, hand-set timing (not learned)   sensors' periods         CE
``digits``        1-110-10 (8x8 digits, 64 steps)          (0, 3)                   CE
``smnist``        1-32-10 (MNIST, 784 steps; its protocol)  (0, 6)                   CE
================  =======================================  =======================  ======

r_on starts at 0.05 and the leak alpha = 1e-3 everywhere. The LSTM baseline has the same
size and receives the timestamp as an extra input, multiplied by ``time_scale``, except in
sequential MNIST (``time_input=False``: the TensorFlow reimplementation's LSTM reads the
pixel only). The BN-LSTM
(``model="bnlstm"``) is the authors': the input with the timestamp appended, ``[x, t *
time_scale]`` (:class:`~plstm_np.TimeFeature`), batch-normalised
(:class:`~plstm_np.BatchNorm`), then that LSTM without its own time input. The Phased GRU
and GRU (``pgru``, ``gru``) replace the cell and keep the rest. The rest of
a task's protocol (r_on learned, fresh data every epoch, gradient clipping, the read-out,
the input-gate bias, the dtype) comes from its :class:`~plstm_np.experiments.TaskSpec`;
``results/README.md`` says, for each setting, whether it is the paper's or the authors'
code's. Times are in milliseconds (see :mod:`plstm_np.tasks`).

Seeds. A run's ``seed`` fixes everything: the training data (``default_rng([seed, 0])``;
with fresh data, epoch e's from ``default_rng([seed, 0, e])``),
the validation data of the synthetic tasks (``default_rng([seed, 1])``), the initial
weights (``default_rng([seed, 2])``) and the order of the mini-batches
(``default_rng([seed, 3])``). The real data sets (N-MNIST, digits, MNIST) are split into
train and validation once, by ``split_seed`` (default 0), the same for every seed.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..backends import BackendUnavailableError, get_backend
from ..batchnorm import BatchNorm
from ..event_camera import PRETRAINING_IMAGES, simulate_mnist
from ..files import write_json_atomic
from ..gru import GRU, PhasedGRU
from ..io import load_checkpoint
from ..layers import LSTM, PhasedLSTM
from ..mnist import load_mnist
from ..network import Dense, Embedding, Network
from ..nmnist import NUM_ADDRESSES, augment, load_nmnist, stratified_split, to_dataset
from ..optim import Adam
from ..statistics import binomial_interval
from ..tasks import TASKS, multirate_timing, train_val_split
from ..time_feature import TimeFeature
from ..training import train
from .configs import SAMPLED_TASKS, TASK_SPECS
from .run_folders import (
    ADDED_KEYS,
    RunLog,
    inspect_run,
    numba_threads,
    read_state,
    remove_run_files,
    run_folder_lock,
)

__all__ = ["make_data", "make_val_data", "resolve_backend", "build_model", "run_training",
           "evaluate_checkpoint"]


# ----------------------------------------------------------------------------- data

def _subset(data, n, rng):
    """``n`` sequences of ``data`` drawn without replacement (kept in order), or all of it."""
    if n >= len(data):
        return data
    return data[np.sort(rng.choice(len(data), n, replace=False))]


def _real_data(cfg, events_rng=None):
    """(train, val) of a real data set, split by ``split_seed``; N-MNIST's events are drawn
    at rate ``rho`` by ``events_rng`` (default: one fixed draw from ``split_seed``)."""
    task, dtype = cfg["task"], np.dtype(cfg["dtype"])
    if task == "nmnist":
        if events_rng is None:
            events_rng = np.random.default_rng([cfg["split_seed"], 4])
        full = TASKS[task](rho=cfg["rho"], rng=events_rng, dtype=dtype)
    else:
        full = TASKS[task](dtype=dtype)
    fraction = 0.1
    train_part, val_part = train_val_split(full, fraction, rng=cfg["split_seed"])
    return train_part, val_part


def _nmnist_epoch(cfg, rng):
    """An N-MNIST training epoch with augmentation: the run's training recordings (the
    split and ``n_train`` as without it), each moved by up to ``augment_shift`` pixels and
    jittered by ``augment_jitter_ms``, plus ``n_simulated`` recordings simulated from MNIST
    test images 100..9999 drawn afresh (perturbed alike), all drawn at rate ``rho``."""
    recordings, labels = load_nmnist()
    train_idx, _ = stratified_split(labels, 0.1, rng=cfg["split_seed"])  # as _real_data
    if cfg["n_train"] < len(train_idx):  # as _subset
        pick = np.random.default_rng([cfg["seed"], 0]).choice(len(train_idx), cfg["n_train"],
                                                              replace=False)
        train_idx = train_idx[np.sort(pick)]
    recordings, labels = [recordings[i] for i in train_idx], labels[train_idx]
    if cfg.get("n_simulated"):
        images, image_labels = load_mnist()
        picks = np.sort(rng.choice(np.asarray(PRETRAINING_IMAGES), cfg["n_simulated"],
                                   replace=False))
        simulated, simulated_labels = simulate_mnist(picks, rng=rng, images=images,
                                                     labels=image_labels)
        recordings, labels = recordings + simulated, np.concatenate([labels, simulated_labels])
    shift, jitter = cfg.get("augment_shift") or 0, cfg.get("augment_jitter_ms") or 0.0
    recordings = [augment(r, rng, max_shift=shift, jitter_ms=jitter) for r in recordings]
    return to_dataset(recordings, labels, rho=cfg["rho"], rng=rng, dtype=np.dtype(cfg["dtype"]))


def _augments(cfg):
    return any(cfg.get(k) for k in ("augment_shift", "augment_jitter_ms", "n_simulated"))


class FreshData:
    """The training data of a run that draws it afresh every epoch: ``data(epoch)`` is the
    Dataset of that epoch (1-based), generated from ``default_rng([seed, 0, epoch])``, so
    that a run is reproducible and can resume at any epoch; ``len(data)`` is its size.

    Synthetic tasks draw ``n_train`` new sequences. N-MNIST keeps its training recordings
    (the split and the ``n_train`` drawn from it do not change) and draws their events at
    rate ``rho`` anew; with ``augment_shift``, ``augment_jitter_ms`` or ``n_simulated`` it
    also moves and jitters them and adds simulated recordings (:func:`_nmnist_epoch`).
    """

    def __init__(self, cfg):
        if not (TASK_SPECS[cfg["task"]].synthetic or cfg["task"] == "nmnist"):
            raise ValueError(f"fresh_data applies to the synthetic tasks and to N-MNIST (whose "
                             f"events are resampled), not to {cfg['task']!r}")
        self.cfg = dict(cfg)
        self._size = None

    def __call__(self, epoch):
        cfg, seed = self.cfg, self.cfg["seed"]
        rng = np.random.default_rng([seed, 0, int(epoch)])
        if TASK_SPECS[cfg["task"]].synthetic:
            return _generate(cfg, cfg["n_train"], rng)
        if _augments(cfg):
            data = _nmnist_epoch(cfg, rng)
        else:
            train_part, _ = _real_data(cfg, events_rng=rng)
            data = _subset(train_part, cfg["n_train"], np.random.default_rng([seed, 0]))
        self._size = len(data)
        return data

    def __len__(self):
        if TASK_SPECS[self.cfg["task"]].synthetic:
            return self.cfg["n_train"]
        if self._size is None:
            self._size = (min(self.cfg["n_train"], len(_real_data(self.cfg)[0]))
                          + (self.cfg.get("n_simulated") or 0))
        return self._size

    def __repr__(self):
        return f"FreshData({self.cfg['task']!r}, n={len(self)} per epoch, seed={self.cfg['seed']})"


def make_data(cfg):
    """The training and validation sets of a run configuration.

    Parameters
    ----------
    cfg : dict
        From :func:`default_config` (keys ``task``, ``sampling``, ``variant``, ``seed``,
        ``n_train``, ``n_val``, ``fresh_data``, ``rho``, ``split_seed``, ``dtype``).

    Returns
    -------
    train : Dataset or FreshData
        With ``fresh_data``: a :class:`FreshData`, called with the epoch. Otherwise one
        Dataset for every epoch: synthetic tasks: ``n_train`` sequences drawn from the seed;
        real data: a stratified 90/10 split by ``split_seed``, then at most ``n_train``
        training sequences (drawn from the seed).
    val : Dataset
        Synthetic tasks: ``n_val`` sequences drawn from the seed. Real data: at most
        ``n_val`` sequences of the validation part (drawn from ``split_seed``).
    """
    task, seed = cfg["task"], cfg["seed"]
    if cfg.get("fresh_data"):
        return FreshData(cfg), make_val_data(cfg)
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
    if cfg["task"] in SAMPLED_TASKS:
        kwargs["sampling"] = cfg["sampling"]
    if cfg["task"] == "superimposed":
        kwargs["variant"] = cfg.get("variant") or "paper"  # saved before variants existed
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
        ``tau_exp_range``, ``r_on``, ``learn_r_on``, ``grad_clip``, ``readout``,
        ``input_gate_bias``, ``time_scale``, ``time_input``, ``seed``, ``backend``,
        ``dtype``; configurations saved before the last seven existed get the defaults of
        their day: r_on fixed, no clipping, a linear read-out, zero biases, the task's time
        scale, the timestamp as the baselines' input).

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
    model = cfg["model"]
    common = dict(dtype=dtype, backend=backend, rng=rng)
    time_scale = cfg.get("time_scale", spec.time_scale)
    time_input = cfg.get("time_input", ADDED_KEYS["time_input"])  # saved before it existed
    if task == "multirate":
        timing = dict(multirate_timing(H, r_on=cfg["r_on"]), learn_tau=False, learn_s=False)
    else:
        timing = dict(tau_exp_range=tuple(cfg["tau_exp_range"]), r_on=cfg["r_on"],
                      learn_r_on=bool(cfg.get("learn_r_on", False)))
    layers = []
    if model == "bnlstm":  # the authors' BN-LSTM: [x, t] batch-normalised, then an LSTM
        if time_input:
            layers.append(TimeFeature(n_in, time_scale=time_scale, dtype=dtype,
                                      backend=backend))
        n_bn = n_in + int(time_input)
        layers.append(BatchNorm(n_bn, dtype=dtype, backend=backend))
        layer = LSTM(n_bn, H, time_input=False, grad_clip=cfg.get("grad_clip"), **common)
    elif model == "lstm":
        layer = LSTM(n_in, H, time_input=time_input, time_scale=time_scale,
                     grad_clip=cfg.get("grad_clip"), **common)
    elif model == "gru":
        layer = GRU(n_in, H, time_input=time_input, time_scale=time_scale, **common)
    elif model == "pgru":
        layer = PhasedGRU(n_in, H, **timing, **common)
    else:
        layer = PhasedLSTM(n_in, H, **timing, grad_clip=cfg.get("grad_clip"), **common)
    if model in ("plstm", "lstm", "bnlstm"):  # gate blocks [i, f, g, o]
        layer.params["b"][:H] = cfg.get("input_gate_bias", 0.0)
    layers.append(layer)
    if cfg.get("readout", "linear") == "leaky_relu":  # the authors' read-out
        readout = Dense(H, spec.n_outputs, activation="leaky_relu", init="glorot_uniform",
                        dtype=dtype, rng=rng)
    else:
        readout = Dense(H, spec.n_outputs, dtype=dtype, rng=rng)
    return Network(layers, readout, embedding=embedding, loss=spec.loss)


# ----------------------------------------------------------------------------- one run

def run_training(cfg, out_dir=None, *, progress=True, overwrite=False, resume=False, log=print,
                 callback=None, lock=True):
    """Train one model as configured; write the run folder if ``out_dir`` is given.

    Parameters
    ----------
    cfg : dict
        From :func:`default_config`.
    out_dir : str or Path, optional
        Receives ``config.json`` (the configuration, written first), ``log.json`` (every
        epoch, rewritten as training goes), ``checkpoint.npz`` (the network with the
        lowest validation loss, its optimizer state, and the configuration in its metadata
        so that :func:`evaluate_checkpoint` can rebuild the validation set), ``last.npz``
        (the resume state after the last complete epoch, see :func:`plstm_np.train`) and
        ``run.log`` (the messages and one line per epoch); see
        :mod:`~plstm_np.experiments.run_folders`.
    progress : bool
        tqdm progress bar and one line per epoch.
    overwrite : bool
        Replace the files of an earlier run in ``out_dir`` and train afresh (otherwise an
        earlier run there raises FileExistsError). The folder never mixes the two runs: the
        earlier run is left intact until the new one is ready to train (configuration
        checked, backend resolved, data and model built), so a failure up to then changes
        nothing; then all its files are deleted before the new ``config.json`` is written,
        so a failure during training (a diverging loss, an interruption) leaves only the
        new run's files. Keeping the earlier run until the new one completes would need a
        second folder and a move of every file at the end; it is not done.
    resume : bool
        Continue the unfinished run in ``out_dir`` from its last complete epoch
        (``last.npz``): the history, parameters and checkpoints are bitwise those of an
        uninterrupted run (with the same backend and number of Numba threads); a finished
        run is returned as it is, and an empty folder starts a new run. A run made with
        another configuration (the backend aside) raises FileExistsError naming the keys.
    log : callable
        Receives the messages (e.g. a backend fallback), which also go to ``run.log``.
    callback : callable, optional
        ``callback(epoch, record)`` after every epoch, once its files are written (see
        :func:`plstm_np.train`).
    lock : bool
        Hold ``out_dir``'s lock (:func:`~plstm_np.experiments.run_folders.run_folder_lock`)
        while training, so that a second process training into the same folder raises
        :class:`~plstm_np.experiments.run_folders.RunFolderInUse` instead of mixing its
        epochs with this one's; False where the caller holds it (a sweep does).

    Returns
    -------
    dict
        ``config`` (with the backend actually used), ``history`` (one record per epoch, see
        :func:`plstm_np.train`), ``final`` (the last epoch's validation metrics),
        ``seconds`` (of this call), ``n_train``, ``n_val``, ``resumed_from`` (the epoch a
        resumed run continued after; 0 for a new run).
    """
    args = dict(progress=progress, overwrite=overwrite, resume=resume, log=log,
                callback=callback)
    if out_dir is None or not lock:
        return _run_training(cfg, out_dir, **args)
    with run_folder_lock(out_dir):
        return _run_training(cfg, out_dir, **args)


def _run_training(cfg, out_dir, *, progress, overwrite, resume, log, callback):
    """:func:`run_training` with the folder's lock held."""
    cfg = dict(cfg)
    paths, status, run_log = {}, None, RunLog(echo=log)
    if out_dir is None and resume:
        raise ValueError("resume=True needs out_dir (the run folder to continue)")
    if out_dir is not None:
        out_dir = Path(out_dir)
        paths = {k: out_dir / f"{k}.{ext}" for k, ext in
                 (("checkpoint", "npz"), ("log", "json"), ("config", "json"), ("last", "npz"))}
        if resume and not overwrite:
            status = inspect_run(out_dir, cfg)
        elif not overwrite:  # (with overwrite, the earlier run is deleted once ready, below)
            existing = [str(p) for p in paths.values() if p.exists()]
            if existing and paths["last"].exists():
                state = read_state(paths["last"])["resume"]
                raise FileExistsError(
                    f"{', '.join(existing)} exist(s): {out_dir} holds a run ({state['epoch']} "
                    f"of {cfg['epochs']} epochs complete); continue it with resume=True "
                    f"(plstm-np reproduce resumes unfinished runs), or pass overwrite "
                    f"(--overwrite) to replace it")
            if existing:
                raise FileExistsError(f"{', '.join(existing)} exist(s): an earlier run is "
                                      f"there; choose another folder or pass overwrite "
                                      f"(--overwrite)")
        out_dir.mkdir(parents=True, exist_ok=True)
        if not overwrite:  # else in memory until the earlier run.log is deleted
            run_log = RunLog(out_dir / "run.log", echo=log)
    if status is not None and status.kind == "complete" and not paths["last"].exists():
        raise FileExistsError(f"{out_dir} holds a complete run (log.json has every epoch) "
                              f"without its resume state; nothing to continue: pass "
                              f"overwrite (--overwrite) to train it again")
    resumed_from = status.epochs_done if status is not None else 0
    cfg["backend"] = resolve_backend(cfg["backend"], log=run_log)
    threads = numba_threads(cfg["backend"])
    if resumed_from:
        saved = read_state(paths["last"])
        notes = []
        if saved["config"].get("backend") != cfg["backend"]:
            notes.append(f"started on backend {saved['config'].get('backend')!r}, continued on "
                         f"{cfg['backend']!r}")
        if saved.get("numba_threads") != threads:
            notes.append(f"started with {saved.get('numba_threads')} Numba threads, continued "
                         f"with {threads}")
        started = saved["config"].get("epochs")
        if started != cfg["epochs"]:  # given more epochs (inspect_run allows no other change)
            notes_extend = f", extended from {started} epochs"
            write_json_atomic(paths["config"], cfg)
        else:
            notes_extend = ""
        what = ("complete: nothing to train" if status.kind == "complete" else
                f"resuming after epoch {resumed_from} of {cfg['epochs']}{notes_extend} from "
                f"{paths['last']}")
        run_log(what + (f" ({'; '.join(notes)}: not bitwise an uninterrupted run)"
                        if notes else ""))
    start = time.perf_counter()
    train_data, val_data = make_data(cfg)
    net = build_model(cfg)
    optimizer = Adam(net, lr=cfg["lr"])
    if paths and overwrite:  # ready: the earlier run goes, the new one's files follow
        remove_run_files(out_dir)
        run_log.path = out_dir / "run.log"  # the lines so far are written with the next
    if not resumed_from:
        run_log(f"training {cfg['model']} on {cfg['task']}, seed {cfg['seed']}: "
                f"{cfg['epochs']} epochs x {cfg['n_train']} sequences, backend "
                f"{cfg['backend']}" + (f", {threads} Numba threads" if threads else ""),
                echo=False)
    if paths and not resumed_from:
        write_json_atomic(paths["config"], cfg)

    def epoch_done(epoch, record):
        shown = " ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}"
                         for k, v in record.items() if not isinstance(v, list))
        run_log(shown, echo=False)
        if callback is not None:
            callback(epoch, record)

    history = train(net, optimizer, train_data, val_data, epochs=cfg["epochs"],
                    batch_size=cfg["batch_size"], rng=np.random.default_rng([cfg["seed"], 3]),
                    max_grad_norm=cfg["max_grad_norm"], patience=cfg["patience"],
                    checkpoint=paths.get("checkpoint"), log_path=paths.get("log"),
                    progress=progress, max_batches=cfg["max_batches"], overwrite=overwrite,
                    metadata={"config": cfg, "numba_threads": threads},
                    state_path=paths.get("last"), resume=bool(resumed_from),
                    callback=epoch_done)
    final = {k[4:]: v for k, v in history[-1].items() if k.startswith("val_")}
    run_log(f"done: {len(history)} epochs, final " + ", ".join(
        f"{k}={v:.4g}" for k, v in final.items() if isinstance(v, float)), echo=False)
    return dict(config=cfg, history=history, final=final, seconds=time.perf_counter() - start,
                n_train=len(train_data), n_val=len(val_data), resumed_from=resumed_from)


def evaluate_checkpoint(path, *, nmnist_folder=None, label_file=None, rho=None, backend=None,
                        batch_size=256, log=print):
    """Evaluate a checkpoint written by :func:`run_training`.

    Parameters
    ----------
    path : str or Path
        A ``checkpoint.npz`` (or a run's resume state ``last.npz``, the last epoch), or a
        run folder holding a ``checkpoint.npz``.
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
        ``measured_on`` (None for the validation set, else ``'N recordings from DIR'``),
        ``accuracy_interval`` (classification: the 95 % Clopper-Pearson interval of the
        accuracy, :func:`plstm_np.statistics.binomial_interval`),
        ``config``, ``epoch`` (the training epoch the checkpoint holds), ``selection``
        (why that epoch: 'lowest validation loss' for a run's ``checkpoint.npz``, 'last
        epoch' for a published one or a ``last.npz``), ``recurrent_layer`` (the index of
        the first recurrent layer, :attr:`plstm_np.Network.recurrent_index`).
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
        recordings, labels = load_nmnist(nmnist_folder, label_file=label_file)
        if (labels < 0).any():
            missing = int((labels < 0).sum())
            raise ValueError(f"{missing} recording(s) in {nmnist_folder} have no label: give "
                             f"a label file ('<id> <label>' lines) or per-digit folders")
        data = to_dataset(recordings, labels, rho=cfg["rho"], rng=np.random.default_rng(0),
                          dtype=np.dtype(cfg["dtype"]))
        source = f"{len(data)} N-MNIST recordings from {nmnist_folder}"
        measured_on = f"{len(data)} recordings from {nmnist_folder}"
    else:
        data = make_val_data(cfg)
        source = f"validation set of {cfg['task']} ({len(data)} sequences, seed {cfg['seed']})"
        measured_on = None
    result = net.evaluate(data, batch_size=batch_size)
    result.update(n=len(data), data=source, measured_on=measured_on, config=cfg,
                  epoch=meta.get("epoch"),
                  selection=meta.get("selection", "last epoch" if path.name == "last.npz"
                                     else "lowest validation loss"),
                  recurrent_layer=net.recurrent_index)
    if "accuracy" in result:
        correct = round(result["accuracy"] * len(data))
        result["accuracy_interval"] = binomial_interval(correct, len(data))
    return result
