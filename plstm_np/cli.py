"""The ``plstm-np`` command (also ``python -m plstm_np``): train, evaluate, reproduce.

Examples
--------
::

    plstm-np train                                     # the main job: frequency task, async
    plstm-np train freq --sampling high_res --model lstm --epochs 10 --out runs/lstm-hr
    plstm-np train nmnist --epochs 1 --out runs/nmnist
    plstm-np evaluate runs/nmnist/checkpoint.npz
    plstm-np evaluate runs/nmnist --nmnist-folder my_recordings/
    plstm-np reproduce frequency --epochs 10 --n-train 2000 --seeds 2
    plstm-np reproduce nmnist --quick --out /tmp/smoke
    plstm-np reproduce frequency --jobs 2 --threads 1      # two runs at a time
    plstm-np reproduce frequency --scheduler tcp://10.0.0.5:8786
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

from . import experiments as ex

__all__ = ["main", "build_parser"]


def _integer_at_least(low):
    """An argparse type: an integer >= ``low``."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
        return value
    return parse


_positive_int = _integer_at_least(1)
_non_negative_int = _integer_at_least(0)


def _number(text):
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def _positive_float(text):
    value = _number(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {value}")
    return value


def _positive_finite_float(text):
    value = _positive_float(text)
    if value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {value}")
    return value


def _finite_float(text):
    value = _number(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {value}")
    return value


def _folder(text):
    if not text.strip():
        raise argparse.ArgumentTypeError(f"expected a folder, got {text!r} (use . for the "
                                         f"current folder)")
    return text


def _non_negative_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (value >= 0 and value < float("inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {value}")
    return value


def _rate(text):
    value = _positive_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {value}")
    return value


def _task(text):
    try:
        return ex.canonical_task(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _experiment(text):
    name = ex.TASK_ALIASES.get(text, text)
    if name not in ex.EXPERIMENTS:
        raise argparse.ArgumentTypeError(f"experiment must be one of {sorted(ex.EXPERIMENTS)}, "
                                         f"got {text!r}")
    return name


#: The protocol options ``train`` and ``reproduce`` share (configuration keys).
_PROTOCOL_OPTIONS = ("learn_r_on", "fresh_data", "grad_clip", "readout", "input_gate_bias",
                     "time_scale", "time_input", "variant", "augment_shift", "augment_jitter_ms",
                     "n_simulated")


def _add_run_options(p, *, reproduce=False):
    """Options shared by ``train`` and ``reproduce`` (None = the task's/protocol's default)."""
    p.add_argument("--epochs", type=_positive_int, help="training epochs")
    p.add_argument("--n-train", type=_positive_int, dest="n_train",
                   help="training sequences per epoch (real data: at most this many)")
    p.add_argument("--n-val", type=_positive_int, dest="n_val", help="validation sequences")
    p.add_argument("--batch-size", type=_positive_int, dest="batch_size",
                   help="mini-batch size (32)")
    p.add_argument("--lr", type=_positive_finite_float, help="Adam learning rate")
    p.add_argument("--hidden", type=_positive_int, dest="hidden_size", help="hidden units (110)")
    p.add_argument("--rho", type=_rate, help="N-MNIST: probability of keeping each event")
    p.add_argument("--max-batches", type=_positive_int, dest="max_batches",
                   help="stop every epoch after this many batches (quick runs)")
    p.add_argument("--learn-r-on", action=argparse.BooleanOptionalAction, dest="learn_r_on",
                   help="learn the open ratio (default: the task's protocol; learned in the "
                   "frequency tasks)")
    p.add_argument("--fresh-data", action=argparse.BooleanOptionalAction, dest="fresh_data",
                   help="draw fresh training data every epoch (N-MNIST: resample the events); "
                   "default: the task's protocol")
    p.add_argument("--grad-clip", type=_non_negative_float, dest="grad_clip",
                   help="clip each step's gate pre-activation gradients to +-C in BPTT "
                   "(Lasagne's grad_clipping; 0: off; default: the task's protocol)")
    p.add_argument("--readout", choices=list(ex.READOUTS),
                   help="linear, or leaky_relu: the authors' read-out (Glorot init, leaky "
                   "ReLU 0.01, then softmax); default: the task's protocol")
    p.add_argument("--input-gate-bias", type=_finite_float, dest="input_gate_bias",
                   help="initial input-gate bias (the authors' code: -0.1)")
    p.add_argument("--time-scale", type=_positive_finite_float, dest="time_scale",
                   help="LSTM baseline: its timestamp input is t * SCALE (1: raw ms, as the "
                   "authors' code)")
    p.add_argument("--time-input", action=argparse.BooleanOptionalAction, dest="time_input",
                   help="give the baselines (LSTM, BN-LSTM, GRU) the timestamp as an input "
                   "(default: the task's protocol; yes except in sequential MNIST)")
    p.add_argument("--variant", choices=list(ex.VARIANTS),
                   help="superimposed task: the paper's text (default) or the authors' script")
    p.add_argument("--augment-shift", type=_non_negative_int, dest="augment_shift",
                   metavar="PIXELS", help="N-MNIST: move each training recording by up to "
                   "this many pixels, afresh every epoch")
    p.add_argument("--augment-jitter-ms", type=_non_negative_float, dest="augment_jitter_ms",
                   metavar="MS", help="N-MNIST: jitter each training event's time by "
                   "N(0, MS) ms, afresh every epoch")
    p.add_argument("--n-simulated", type=_non_negative_int, dest="n_simulated", metavar="N",
                   help="N-MNIST: add N recordings simulated from MNIST test images "
                   "100..9999 (plstm_np.event_camera), drawn afresh every epoch")
    p.add_argument("--backend", choices=["numba", "numpy", "cuda"], default="numba",
                   help="compute backend (default numba; falls back to numpy if it cannot run)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the files of an earlier run in the output folder")
    if not reproduce:
        p.add_argument("--seed", type=int, default=0, help="seed of data, weights and batches")


def build_parser():
    """The argparse parser of ``plstm-np``."""
    parser = argparse.ArgumentParser(
        prog="plstm-np",
        description="Phased LSTM (Neil, Pfeiffer & Liu 2016) in NumPy/Numba: train, evaluate "
                    "and reproduce the paper's experiments.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    tasks = sorted(set(ex.TASK_SPECS) | set(ex.TASK_ALIASES))
    p = sub.add_parser("train", help="train a model on a task",
                       description="Train a Phased LSTM or LSTM on one of the tasks. With no "
                       "options: frequency discrimination, asynchronous sampling, Phased LSTM, "
                       "about a minute on 2 cores.")
    p.add_argument("task", nargs="?", default="frequency", type=_task,
                   help=f"one of {', '.join(tasks)} (default frequency)")
    p.add_argument("--model", choices=list(ex.MODELS), default="plstm",
                   help="plstm (Phased LSTM), lstm or bnlstm (the paper's baselines, "
                   "timestamp as an input; bnlstm batch-normalises the inputs and the "
                   "timestamp), pgru (Phased GRU) or gru (its baseline)")
    p.add_argument("--sampling", choices=["standard", "high_res", "async"],
                   help="frequency tasks: 1 ms, 0.1 ms or asynchronous sampling (default async)")
    p.add_argument("--tau-range", type=_finite_float, nargs=2, metavar=("LO", "HI"),
                   dest="tau_exp_range",
                   help="Phased LSTM periods tau = exp(U(LO, HI)) ms")
    p.add_argument("--r-on", type=_rate, dest="r_on",
                   help="initial open ratio of the time gate (0.05)")
    p.add_argument("--dtype", choices=["float64", "float32"],
                   help="parameter dtype (default: the task's protocol; the phase is float64 "
                   "either way)")
    p.add_argument("--patience", type=_positive_int,
                   help="early stopping: epochs without a lower validation loss")
    p.add_argument("--out", type=_folder, metavar="DIR",
                   help="write DIR/checkpoint.npz, DIR/log.json and DIR/config.json")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_run_options(p)

    p = sub.add_parser("evaluate", help="evaluate a checkpoint",
                       description="Accuracy (or loss) and neuron updates per neuron of a "
                       "checkpoint written by 'plstm-np train', on its task's validation set "
                       "(regenerated from the saved configuration) or on a folder of N-MNIST "
                       "recordings.")
    p.add_argument("checkpoint", help="a checkpoint.npz or the run folder holding it")
    p.add_argument("--nmnist-folder", metavar="PATH",
                   help="N-MNIST recordings (.bin/.bs2, 40-bit events) to evaluate on")
    p.add_argument("--label-file", metavar="FILE",
                   help="labels of those recordings ('<id> <label>' lines); default: the "
                   "folder's only .txt file, or per-digit sub-folders")
    p.add_argument("--rho", type=_rate, help="N-MNIST: probability of keeping each event")
    p.add_argument("--backend", choices=["numba", "numpy", "cuda"],
                   help="compute backend (default: the run's)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")

    p = sub.add_parser("reproduce", help="run one of the paper's experiments",
                       description="Run an experiment's protocol (every condition and seed) "
                       "and write results/<experiment>/results.md, results.json and figures. "
                       "Without options: the paper's protocol (hours to days on a CPU); the "
                       "options shorten it. Complete runs in the output folder are reused.")
    p.add_argument("experiment", type=_experiment, help=f"one of {', '.join(ex.EXPERIMENTS)}")
    p.add_argument("--quick", action="store_true", help="a tiny smoke version (seconds)")
    p.add_argument("--seeds", type=_positive_int, help="number of seeds (0..N-1)")
    p.add_argument("--conditions", help="comma-separated subset of the conditions")
    p.add_argument("--test-rhos", type=_rate, nargs="+", dest="test_rhos",
                   help="N-MNIST: event rates to test at")
    p.add_argument("--out", type=_folder, default="results", metavar="DIR",
                   help="results folder (default results/)")
    p.add_argument("--progress", action="store_true",
                   help="progress bars of the runs (with --jobs 1 and --quiet)")
    p.add_argument("--jobs", type=_positive_int, default=None, metavar="N",
                   help="runs trained at the same time, in processes of this machine "
                   "(default: one per available core, each with one Numba thread: see "
                   "--threads)")
    p.add_argument("--threads", type=_positive_int, default=None, metavar="T",
                   help="Numba threads per run (default: the available cores divided by "
                   "--jobs); part of a run's arithmetic, so resume with the same")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="run on the Dask cluster of this scheduler (tcp://host:8786; needs "
                   "plstm_np[distributed]); the workers need no shared disk")
    p.add_argument("--connect-timeout", type=_positive_float, default=10.0, dest="connect_timeout",
                   metavar="SECONDS", help="give up on an unreachable --scheduler after this "
                   "long (default 10)")
    p.add_argument("--quiet", action="store_true", help="no progress bar over the runs")
    _add_run_options(p, reproduce=True)
    return parser


def _print_metrics(result, out, layer):
    """The validation figures; ``layer``: the index of the first recurrent layer, whose
    share of a dense LSTM's updates is shown."""
    if "accuracy" in result:
        what = ("validation accuracy" if result.get("measured_on") is None
                else f"accuracy on {result['measured_on']}")
        interval = ""
        if "accuracy_interval" in result:
            lo, hi = result["accuracy_interval"]
            interval = f"95 % CI {100 * lo:.1f}-{100 * hi:.1f} %, "
        print(f"{what}: {100 * result['accuracy']:.2f} %  ({interval}"
              f"loss {result['loss']:.4f}, {result['n']} sequences)", file=out)
    else:
        print(f"validation loss (MSE): {result['loss']:.5f}  ({result['n']} sequences)", file=out)
    ups = ", ".join(f"{u:.1f}" for u in result["updates_per_neuron"])
    dense = result["dense_updates_per_neuron"]
    first = result["updates_per_neuron"][layer]
    share = first / dense if dense else float("nan")
    print(f"neuron updates per neuron and sequence: {ups} computed "
          f"(a dense LSTM: {dense:.1f}; {100 * share:.1f} %)", file=out)


def _train(args, out):
    keys = ("model", "sampling", "variant", "seed", "n_train", "n_val", "epochs", "batch_size",
            "lr", "hidden_size", "tau_exp_range", "r_on", "learn_r_on", "fresh_data",
            "grad_clip", "readout", "input_gate_bias", "time_scale", "time_input", "rho",
            "patience",
            "max_batches", "augment_shift", "augment_jitter_ms", "n_simulated", "backend",
            "dtype")
    cfg = ex.default_config(args.task, **{k: getattr(args, k) for k in keys})
    shown = {k: v for k, v in cfg.items() if v is not None}
    print("plstm-np train: " + " ".join(f"{k}={v}" for k, v in shown.items()), file=out)
    try:
        run = ex.run_training(cfg, args.out, progress=not args.quiet,
                              overwrite=args.overwrite, log=lambda m: print(m, file=out))
    except FloatingPointError as err:  # a NaN or infinite loss
        raise ValueError(f"training diverged ({err}); try a lower --lr") from err
    final = dict(run["final"], n=run["n_val"])
    _print_metrics(final, out, ex.build_model(run["config"]).recurrent_index)
    print(f"trained {len(run['history'])} epochs on {run['n_train']} sequences in "
          f"{run['seconds']:.1f} s (backend {run['config']['backend']})", file=out)
    if args.out:  # name only the files that are there
        names = [n for n in ("checkpoint.npz", "log.json", "config.json")
                 if os.path.isfile(os.path.join(args.out, n))]
        if "checkpoint.npz" in names:
            best = min((r for r in run["history"] if math.isfinite(r["val_loss"])),
                       key=lambda r: r["val_loss"], default={"epoch": "?"})["epoch"]
            names[0] += f" (epoch {best}, the lowest validation loss)"
        else:
            print("no checkpoint written: no epoch had a finite validation loss", file=out)
        if names:
            print(f"wrote {os.path.join(args.out, names[0])}"
                  + "".join(f", {n}" for n in names[1:]), file=out)
    return 0


def _evaluate(args, out):
    result = ex.evaluate_checkpoint(args.checkpoint, nmnist_folder=args.nmnist_folder,
                                    label_file=args.label_file, rho=args.rho, backend=args.backend,
                                    log=lambda m: print(m, file=out))
    if args.json:
        print(json.dumps({k: v for k, v in result.items()}, indent=1), file=out)
        return 0
    cfg = result["config"]
    print(f"checkpoint: {args.checkpoint} ({cfg['model']} on {cfg['task']}, epoch "
          f"{result['epoch']}: the {result['selection']})", file=out)
    print(f"data: {result['data']}", file=out)
    _print_metrics(result, out, result["recurrent_layer"])
    return 0


def _reproduce(args, out):
    conditions = args.conditions.split(",") if args.conditions else None
    jobs = args.jobs
    if jobs is None:  # measured: 2 jobs x 1 thread as fast as 1 x 2 here (bench_sweep.py)
        jobs = 1 if args.scheduler else ex.sweeps.available_cores()
    try:
        results = ex.reproduce(
            args.experiment, args.out, quick=args.quick, conditions=conditions,
            log=lambda m: print(m, file=out, flush=True), progress=args.progress,
            overwrite=args.overwrite, backend=args.backend, jobs=jobs, threads=args.threads,
            scheduler=args.scheduler, connect_timeout=args.connect_timeout,
            bar=not args.quiet, seeds=args.seeds, epochs=args.epochs, n_train=args.n_train,
            n_val=args.n_val, batch_size=args.batch_size, lr=args.lr,
            hidden_size=args.hidden_size, rho=args.rho, max_batches=args.max_batches,
            test_rhos=args.test_rhos, **{k: getattr(args, k) for k in _PROTOCOL_OPTIONS})
    except (ConnectionError, ImportError) as err:  # an unreachable scheduler, no dask
        print(f"plstm-np reproduce: error: {err}", file=sys.stderr)
        return 2
    print(ex.results_markdown(results), file=out)
    print("figures: " + ", ".join(results["figures"]), file=out)
    return 0


def main(argv=None):
    """Entry point of ``plstm-np``; returns the exit status.

    Parameters
    ----------
    argv : list of str, optional
        Arguments (default ``sys.argv[1:]``).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    out = sys.stdout
    commands = {"train": _train, "evaluate": _evaluate, "reproduce": _reproduce}
    try:
        return commands[args.command](args, out)
    except (ValueError, OSError) as err:  # FileExistsError, IsADirectoryError...
        print(f"plstm-np {args.command}: error: {err}", file=sys.stderr)
        return 2
