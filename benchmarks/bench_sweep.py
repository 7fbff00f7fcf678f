"""Sweeps in parallel: ``jobs`` processes x ``threads`` Numba threads each, measured.

``plstm-np reproduce --jobs N --threads T`` trains the independent (condition, seed) runs
of an experiment in N joblib processes with T Numba threads each. On a machine of C cores
the choice is between fewer processes with more threads (the parallel kernels split each
batch into T chunks) and more processes with one thread (whole runs side by side, no
synchronisation inside a batch). This script times the real thing, ``experiments.reproduce``
on the Fig. 3d experiment (its 6 conditions, the paper's 157 fresh batches of 32 and 512
validation sequences per epoch, float32), for every split of the cores, one after the other
in one run, and extrapolates each to the full protocol (5 seeds x 70 epochs).

Writes ``benchmarks/results/bench_sweep.json`` and ``bench_sweep.png``. Usage::

    python benchmarks/bench_sweep.py [--quick] [--seeds 2] [--epochs 1]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from plstm_np import experiments as ex
from plstm_np.experiments.sweeps import available_cores

RESULTS = Path(__file__).resolve().parent / "results"


def sweep_seconds(jobs, threads, seeds, epochs, max_batches):
    """Wall seconds of one reproduction of every Fig. 3d condition, from a fresh folder."""
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        ex.reproduce("frequency", out, jobs=jobs, threads=threads, seeds=seeds, epochs=epochs,
                     max_batches=max_batches, log=lambda m: None)
        return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 batches an epoch, 1 seed")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    cores = available_cores()
    seeds = 1 if args.quick else args.seeds
    max_batches = 10 if args.quick else None
    # warm-up: compile (or load from Numba's cache) every kernel in this process
    sweep_seconds(1, None, 1, 1, 2)
    splits = [(j, cores // j) for j in range(1, cores + 1) if cores % j == 0]
    rows = []
    for jobs, threads in splits:
        wall = sweep_seconds(jobs, threads, seeds, args.epochs, max_batches)
        scale = (5 / seeds) * (70 / args.epochs) * (157 / (max_batches or 157))
        rows.append(dict(jobs=jobs, threads=threads, wall_seconds=wall,
                         fig3d_protocol_hours=wall * scale / 3600))
        print(f"{jobs} job(s) x {threads} thread(s): {wall:.1f} s for 6 conditions x {seeds} "
              f"seed(s) x {args.epochs} epoch(s); full Fig. 3d protocol "
              f"{rows[-1]['fig3d_protocol_hours']:.2f} h")
    best = min(rows, key=lambda r: r["wall_seconds"])
    results = dict(machine=dict(cpu=platform.processor() or platform.machine(), cores=cores,
                                load_average=os.getloadavg()),
                   command="python benchmarks/bench_sweep.py" + (" --quick" if args.quick
                                                                  else ""),
                   protocol=dict(experiment="frequency", conditions=6, seeds=seeds,
                                 epochs=args.epochs, batches_per_epoch=max_batches or 157,
                                 n_val=512),
                   splits=rows, fastest=dict(jobs=best["jobs"], threads=best["threads"]),
                   target_hours=3.0)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_sweep.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results)
    print(f"fastest: {best['jobs']} job(s) x {best['threads']} thread(s)")


def plot(results):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["splits"]
    labels = [f"{r['jobs']} x {r['threads']}" for r in rows]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.bar(labels, [r["fig3d_protocol_hours"] for r in rows], color="tab:blue")
    ax.axhline(results["target_hours"], color="tab:red", ls="--", label="target")
    ax.set_xlabel("jobs x Numba threads")
    ax.set_ylabel("hours, full Fig. 3d protocol")
    ax.set_title(f"Sweep on {results['machine']['cores']} cores")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "bench_sweep.png", dpi=120)


if __name__ == "__main__":
    main()
