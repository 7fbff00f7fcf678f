"""Run configurations: the tasks' sizes and defaults, their names, and a validated config.

- :class:`TaskSpec` and :data:`TASK_SPECS`: what each task needs (sizes, loss, timing) and
  the defaults of a quick ``plstm-np train`` run.
- :data:`TASK_ALIASES` and :func:`canonical_task`: the names accepted on the command line.
- :data:`MODELS`: the architectures a run may train: the Phased LSTM, its two baselines in
  the paper (the LSTM and the BN-LSTM, both with the timestamp as an input), the Phased GRU
  and its GRU baseline; :data:`PAPER_MODELS`, the paper's three, are the experiments'.
- :func:`default_config`: a complete, checked, JSON-serialisable run configuration.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ..event_camera import PRETRAINING_IMAGES
from ..nmnist import SENSOR_SIZE

__all__ = ["TaskSpec", "TASK_SPECS", "TASK_ALIASES", "MODELS", "PAPER_MODELS", "MODEL_NAMES",
           "READOUTS", "VARIANTS",
           "SAMPLED_TASKS", "canonical_task", "default_config"]

MODELS = ("plstm", "lstm", "bnlstm", "pgru", "gru")
#: The models of the paper's figures and tables (Fig. 3d, Fig. 4a, Table 1).
PAPER_MODELS = ("plstm", "bnlstm", "lstm")
#: How tables and figures name the models.
MODEL_NAMES = {"plstm": "Phased LSTM", "lstm": "LSTM", "bnlstm": "BN-LSTM",
               "pgru": "Phased GRU", "gru": "GRU"}
READOUTS = ("linear", "leaky_relu")
VARIANTS = ("paper", "authors")
_LOG_100 = float(np.log(100.0))


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """What a task needs: sizes, loss, timing, its protocol's settings, and the defaults of a
    quick training run.

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
        Scale of the LSTM baseline's timestamp input (1: the raw time in ms).
    time_input : bool
        Whether the baselines (LSTM, BN-LSTM, GRU) get the timestamp as an extra input, as
        in the paper; False: they see the input features only (the TensorFlow
        reimplementation's sequential MNIST, whose ``BasicLSTMCell`` reads the pixel only).
    synthetic : bool
        Generated from the seed (True) or a real data set split by ``split_seed``.
    learn_r_on : bool
        Whether the open ratio is learned.
    fresh_data : bool
        Draw fresh training data every epoch (synthetic tasks) or resample the events
        (N-MNIST's ``rho``), as the authors' code does, instead of one fixed training set.
    grad_clip : float or None
        Elementwise clip of the gate pre-activation gradients in BPTT (Lasagne's
        ``grad_clipping``).
    readout : {'linear', 'leaky_relu'}
        ``'leaky_relu'``: the authors' read-out (Glorot-uniform dense layer, leaky ReLU 0.01,
        then the softmax); ``'linear'``: a dense layer with ``N(0, 0.1)`` weights.
    input_gate_bias : float
        Initial bias of the input gate (the authors' code: -0.1; the others start at 0).
    dtype : {'float32', 'float64'}
        Parameter dtype of the protocol (the phase is float64 either way).
    n_train, n_val, epochs, lr : int, int, int, float
        Defaults of ``plstm-np train`` for this task (a quick run, not the paper's length).
    """

    name: str
    n_inputs: int
    n_outputs: int
    loss: str = "cross_entropy"
    tau_exp_range: tuple = (0.0, 3.0)
    time_scale: float = 1.0
    time_input: bool = True
    synthetic: bool = True
    learn_r_on: bool = False
    fresh_data: bool = False
    grad_clip: float | None = None
    readout: str = "linear"
    input_gate_bias: float = 0.0
    dtype: str = "float32"
    n_train: int = 2000
    n_val: int = 500
    epochs: int = 5
    lr: float = 1e-2


#: The frequency tasks' protocol: the paper where it says (tau ~ exp(U(0, 3)); r_on learned,
#: since the paper keeps it fixed "except in the first task"), the authors' code where the
#: paper is silent (freq_task.py: fresh data every epoch, Lasagne's grad_clipping=10, the
#: leaky-ReLU read-out, input-gate bias -0.1, the raw time in ms as the LSTM's extra input).
#: Every task trains in float32 by default, as Theano's floatX did there (the phase is
#: float64 whatever the dtype; gradient checks use float64).
_AUTHORS = dict(learn_r_on=True, fresh_data=True, grad_clip=10.0, readout="leaky_relu",
                input_gate_bias=-0.1, time_scale=1.0)

TASK_SPECS = {
    # the main job (`plstm-np train`): 30 of the protocol's 70 epochs of 157 fresh batches
    # of 32, about a minute on 2 cores (plus about 30 s of Numba compilation the first time)
    "frequency": TaskSpec("frequency", 1, 2, **_AUTHORS, n_train=5024, n_val=512, epochs=30,
                          lr=1e-3),
    "superimposed": TaskSpec("superimposed", 1, 2, **_AUTHORS, n_train=5024, n_val=512,
                             lr=1e-3),
    "adding": TaskSpec("adding", 2, 1, loss="mse", tau_exp_range=(4.0, 6.0), time_scale=1 / 500,
                       n_train=1000, n_val=200, epochs=3),
    # N-MNIST: Table 1's "Phased LSTM (tau = 100 ms)"; the events are resampled at rate rho
    # every epoch
    "nmnist": TaskSpec("nmnist", 1, 10, tau_exp_range=(_LOG_100, _LOG_100), time_scale=1 / 300,
                       synthetic=False, fresh_data=True, n_train=900, n_val=100, epochs=1),
    "multirate": TaskSpec("multirate", 2, 2, time_scale=1 / 1000, n_train=1000, n_val=300,
                          epochs=3),
    "digits": TaskSpec("digits", 1, 10, time_scale=1 / 64, synthetic=False, n_train=1797,
                       n_val=1797, epochs=5),
    # sequential MNIST as the TensorFlow reimplementation's mnist_phased_lstm.py runs it:
    # tau ~ exp(U(0, 6)) steps, r_on learned from 0.05, the time the pixel index, the LSTM
    # without a time input, Adam 1e-3 (its 32 units and batches of 256: the registry's
    # protocol); the 10,000 shipped images split 9,000 / 1,000, stratified
    "smnist": TaskSpec("smnist", 1, 10, tau_exp_range=(0.0, 6.0), time_scale=1 / 784,
                       time_input=False, learn_r_on=True, synthetic=False, n_train=9000,
                       n_val=1000, epochs=1, lr=1e-3),
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
    """A complete run configuration for ``task``: its protocol's settings and quick defaults.

    Parameters
    ----------
    task : str
        A task name or alias.
    **overrides
        Any key of the returned dict (None values are ignored, so command-line options that
        were not given keep the defaults; ``grad_clip=0`` switches clipping off).

    Returns
    -------
    dict
        ``task``, ``model``, ``sampling`` (frequency tasks), ``variant`` (superimposed:
        ``'paper'`` or ``'authors'``), ``seed``, ``n_train`` (sequences per epoch),
        ``n_val``, ``epochs``, ``batch_size``, ``lr``, ``hidden_size``, ``tau_exp_range``,
        ``r_on`` (initial open ratio), ``learn_r_on``, ``fresh_data``, ``grad_clip``
        (None: off), ``readout``, ``input_gate_bias``, ``time_scale`` (the LSTM's),
        ``time_input`` (whether the baselines get the timestamp), ``rho``
        (N-MNIST event rate), ``split_seed``, ``max_grad_norm``, ``patience``,
        ``max_batches``, ``augment_shift``, ``augment_jitter_ms`` and ``n_simulated``
        (N-MNIST training augmentation, None: off; see
        :class:`~plstm_np.experiments.runs.FreshData`), ``backend``, ``dtype``.
    """
    task = canonical_task(task)
    spec = TASK_SPECS[task]
    cfg = dict(task=task, model="plstm", sampling="async" if task in SAMPLED_TASKS else None,
               variant="paper" if task == "superimposed" else None,
               seed=0, n_train=spec.n_train, n_val=spec.n_val, epochs=spec.epochs,
               batch_size=32, lr=spec.lr, hidden_size=110, tau_exp_range=list(spec.tau_exp_range),
               r_on=0.05, learn_r_on=spec.learn_r_on, fresh_data=spec.fresh_data,
               grad_clip=spec.grad_clip, readout=spec.readout,
               input_gate_bias=spec.input_gate_bias, time_scale=spec.time_scale,
               time_input=spec.time_input, rho=1.0,
               split_seed=0, max_grad_norm=None, patience=None, max_batches=None,
               augment_shift=None, augment_jitter_ms=None, n_simulated=None,
               backend="numba", dtype=spec.dtype)
    unknown = set(overrides) - set(cfg)
    if unknown:
        raise ValueError(f"unknown configuration keys {sorted(unknown)}")
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    if cfg["grad_clip"] == 0:
        cfg["grad_clip"] = None
    _check(cfg, task)
    return cfg


def _check(cfg, task):
    """Raise ValueError naming the first invalid entry of a configuration."""
    if cfg["model"] not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {cfg['model']!r}")
    if task in SAMPLED_TASKS and cfg["sampling"] not in ("standard", "high_res", "async"):
        raise ValueError(f"sampling must be 'standard', 'high_res' or 'async', "
                         f"got {cfg['sampling']!r}")
    if task not in SAMPLED_TASKS and cfg["sampling"] is not None:
        raise ValueError(f"sampling applies to the frequency tasks {SAMPLED_TASKS}, "
                         f"not to {task!r}")
    if task == "superimposed" and cfg["variant"] not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {cfg['variant']!r}")
    if task != "superimposed" and cfg["variant"] is not None:
        raise ValueError(f"variant applies to the superimposed task, not to {task!r}")
    if not (isinstance(cfg["seed"], (int, np.integer)) and cfg["seed"] >= 0):
        raise ValueError(f"seed must be an integer >= 0, got {cfg['seed']!r}")
    for key in ("n_train", "n_val", "epochs", "batch_size", "hidden_size"):
        if not (isinstance(cfg[key], (int, np.integer)) and cfg[key] >= 1):
            raise ValueError(f"{key} must be an integer >= 1, got {cfg[key]!r}")
    for key in ("learn_r_on", "fresh_data", "time_input"):
        if not isinstance(cfg[key], (bool, np.bool_)):
            raise ValueError(f"{key} must be True or False, got {cfg[key]!r}")
    for key in ("lr", "time_scale"):
        if not (isinstance(cfg[key], (int, float)) and np.isfinite(cfg[key]) and cfg[key] > 0):
            raise ValueError(f"{key} must be a finite number > 0, got {cfg[key]!r}")
    clip = cfg["grad_clip"]
    if clip is not None and not (isinstance(clip, (int, float)) and np.isfinite(clip)
                                 and clip > 0):
        raise ValueError(f"grad_clip must be None (off) or a finite number > 0, got {clip!r}")
    if cfg["readout"] not in READOUTS:
        raise ValueError(f"readout must be one of {READOUTS}, got {cfg['readout']!r}")
    if not (isinstance(cfg["input_gate_bias"], (int, float))
            and np.isfinite(cfg["input_gate_bias"])):
        raise ValueError(f"input_gate_bias must be a finite number, "
                         f"got {cfg['input_gate_bias']!r}")
    if not 0 < cfg["rho"] <= 1:
        raise ValueError(f"rho must lie in (0, 1], got {cfg['rho']}")
    if not 0 < cfg["r_on"] <= 1:
        raise ValueError(f"r_on must lie in (0, 1], got {cfg['r_on']}")
    lo, hi = cfg["tau_exp_range"]
    if not lo <= hi:
        raise ValueError(f"tau_exp_range must be (low, high) with low <= high, "
                         f"got {cfg['tau_exp_range']}")
    cfg["tau_exp_range"] = [float(lo), float(hi)]
    _check_augmentation(cfg, task)
    if cfg["dtype"] not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {cfg['dtype']!r}")


def _check_augmentation(cfg, task):
    keys = [k for k in ("augment_shift", "augment_jitter_ms", "n_simulated")
            if cfg[k] is not None]
    if keys and task != "nmnist":
        raise ValueError(f"{keys[0]} applies to N-MNIST, not to {task!r}")
    if keys and not cfg["fresh_data"]:
        raise ValueError(f"{keys[0]} perturbs every epoch afresh: it needs fresh_data=True")
    for key, high in (("augment_shift", SENSOR_SIZE - 1), ("n_simulated", len(PRETRAINING_IMAGES))):
        v = cfg[key]
        if v is not None and not (isinstance(v, (int, np.integer))
                                  and not isinstance(v, bool) and 0 <= v <= high):
            raise ValueError(f"{key} must be an integer in 0..{high}, got {v!r}")
    v = cfg["augment_jitter_ms"]
    if v is not None and not (isinstance(v, (int, float)) and np.isfinite(v) and v >= 0):
        raise ValueError(f"augment_jitter_ms must be a finite number >= 0, got {v!r}")
