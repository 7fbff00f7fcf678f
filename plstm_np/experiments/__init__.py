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

The modules, one concern each (every public name is re-exported here):

- :mod:`~plstm_np.experiments.configs`: :class:`TaskSpec`, :data:`TASK_SPECS`,
  :data:`TASK_ALIASES`, :data:`MODELS`, :func:`canonical_task`, :func:`default_config`.
- :mod:`~plstm_np.experiments.runs`: data, models, one run and its evaluation
  (:func:`make_data`, :func:`make_val_data`, :func:`resolve_backend`, :func:`build_model`,
  :func:`run_training`, :func:`evaluate_checkpoint`); its docstring lists the paper's
  architectures and how a seed fixes a run.
- :mod:`~plstm_np.experiments.registry`: the paper's experiments, their conditions and
  protocols (:class:`Experiment`, :data:`EXPERIMENTS`).
- :mod:`~plstm_np.experiments.reproduction`: running one of them (:func:`reproduce`).
- :mod:`~plstm_np.experiments.reports`: aggregation over seeds, the markdown table and the
  figures (:func:`aggregate`, :func:`results_markdown`, :func:`write_figures`).
"""
from .configs import (
    MODEL_NAMES,
    MODELS,
    PAPER_MODELS,
    READOUTS,
    SAMPLED_TASKS,
    TASK_ALIASES,
    TASK_SPECS,
    VARIANTS,
    TaskSpec,
    canonical_task,
    default_config,
)
from .registry import EXPERIMENTS, Experiment
from .reports import aggregate, results_markdown, write_figures
from .reproduction import publish_checkpoints, reproduce, reproduce_command
from .runs import (
    FreshData,
    build_model,
    evaluate_checkpoint,
    make_data,
    make_val_data,
    resolve_backend,
    run_training,
)

__all__ = ["TaskSpec", "TASK_SPECS", "TASK_ALIASES", "MODELS", "PAPER_MODELS", "MODEL_NAMES",
           "EXPERIMENTS", "canonical_task",
           "default_config", "make_data", "make_val_data", "build_model", "resolve_backend",
           "run_training", "evaluate_checkpoint", "reproduce", "Experiment", "SAMPLED_TASKS",
           "aggregate", "results_markdown", "write_figures", "READOUTS", "VARIANTS",
           "FreshData", "publish_checkpoints", "reproduce_command"]
