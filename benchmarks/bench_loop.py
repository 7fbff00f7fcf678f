"""The real training loop against the kernel benchmark, in one run.

The kernel benchmark (``bench_cpu.py``'s training row: B = 32, T = 125, every step valid,
float32, forward + BPTT + Adam) says how fast the kernels train. This script runs, in the
same process and run, the frequency task's actual protocol loop (``plstm_np.train`` on
:class:`plstm_np.experiments.FreshData`: fresh sequences drawn every epoch, variable lengths
padded per batch, validation on 512 sequences every epoch, float32) and counts its
throughput in **valid** sample-steps per second of wall time, data generation and validation
included. The target: the loop reaches at least 80 % of the kernel benchmark.

From the same epochs (157 fresh batches of 32, the protocol's, Phased LSTM and LSTM, every
sampling condition) it extrapolates the hours that the full Fig. 3d protocol takes (3
conditions x 2 models x 5 seeds x 70 epochs, one run after another): the target is at most
3 hours on a 2-core machine.

It also breaks the loop's wall time down into data generation, training steps and
validation, and times the kernel benchmark before and after the loops (the faster of the
two is used, so that the ratio is not flattered by a slow kernel measurement).

Writes ``benchmarks/results/bench_loop.json`` and ``bench_loop.png``. Usage::

    python benchmarks/bench_loop.py [--quick] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before NumPy loads OpenBLAS
import platform
import time
from pathlib import Path

import numpy as np
from bench_cpu import best_time, make_train_net, training_problem

import plstm_np as pl
from plstm_np import experiments as ex
from plstm_np.optim import Adam

RESULTS = Path(__file__).resolve().parent / "results"


def kernel_benchmark(repeats):
    """bench_cpu.py's Numba training row: valid sample-steps per second (best, median)."""
    data = training_problem(np.random.default_rng(0))
    net = make_train_net("numba")
    opt = Adam(net)

    def step():
        _, grads = net.loss_and_grads(data)
        opt.step({k: v for k, v in grads.items() if k in net.params})

    best, median = best_time(step, repeats)
    steps = data.x.shape[0] * data.x.shape[1]
    return steps / best, steps / median


def protocol_loop(sampling, batches, epochs, model="plstm"):
    """The frequency protocol's loop for ``epochs`` epochs of ``batches`` fresh batches."""
    cfg = ex.default_config("frequency", sampling=sampling, model=model, n_train=32 * batches,
                            epochs=epochs)
    net = ex.build_model(cfg)
    train_data, val = ex.make_data(cfg)
    opt = Adam(net, lr=cfg["lr"])
    rng = np.random.default_rng([cfg["seed"], 3])
    pl.train(net, opt, train_data(0), val, epochs=1, rng=rng, progress=False, max_batches=2)
    start = time.perf_counter()
    history = pl.train(net, opt, train_data, val, epochs=epochs, rng=rng, progress=False)
    wall = time.perf_counter() - start
    t0 = time.perf_counter()  # the same draws again, timed alone: the data generation
    seen = [train_data(e) for e in range(1, epochs + 1)]
    data_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    net.evaluate(val)
    val_seconds = (time.perf_counter() - t0) * epochs
    valid = int(sum(d.lengths.sum() for d in seen))
    padded = int(sum(sum(int(b.lengths.max()) * len(b.lengths) for b in
                         d.batches(32, rng=np.random.default_rng(0))) for d in seen))
    train_seconds = sum(r["seconds"] for r in history)
    return dict(sampling=sampling, model=model, batches_per_epoch=batches, epochs=epochs,
                wall_seconds=wall, epoch_seconds=wall / epochs,
                valid_sample_steps=valid, padded_sample_steps=padded,
                valid_sample_steps_per_s=valid / wall,
                training_seconds=train_seconds, data_seconds=data_seconds,
                validation_seconds=val_seconds,
                other_seconds=wall - train_seconds - data_seconds - val_seconds,
                final_val_accuracy=history[-1]["val_accuracy"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer batches and repeats")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import numba

    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    repeats = 5 if args.quick else 15
    batches, epochs = (10, 1) if args.quick else (157, 2)  # 157: the protocol's epoch
    results = dict(machine=dict(cpu=platform.processor() or platform.machine(),
                                cores=os.cpu_count(), load_average=os.getloadavg()),
                   numba_threads=args.threads, quick=args.quick,
                   command="python benchmarks/bench_loop.py" + (" --quick" if args.quick else ""))
    before = kernel_benchmark(repeats)
    loops = []
    for model in ("plstm", "lstm"):
        for sampling in ("standard", "async", "high_res"):
            # high resolution: sequences 10x longer, one epoch
            loops.append(protocol_loop(sampling, batches,
                                       1 if sampling == "high_res" else epochs, model))
            r = loops[-1]
            print(f"loop {model} {sampling:9s}: {r['valid_sample_steps_per_s']:10,.0f} valid "
                  f"sample-steps/s (train {r['training_seconds']:.2f} s, data "
                  f"{r['data_seconds']:.2f} s, validation {r['validation_seconds']:.2f} s of "
                  f"{r['wall_seconds']:.2f} s)")
    after = kernel_benchmark(repeats)
    kernel = max(before[0], after[0])
    results["kernel_benchmark"] = dict(best_before=before[0], median_before=before[1],
                                       best_after=after[0], median_after=after[1],
                                       used=kernel)
    for r in loops:
        r["ratio_to_kernel_benchmark"] = r["valid_sample_steps_per_s"] / kernel
    results["loops"] = loops
    print(f"kernel benchmark: {kernel:,.0f} sample-steps/s; loop / kernel: "
          + ", ".join(f"{r['model']} {r['sampling']} {r['ratio_to_kernel_benchmark']:.2f}"
                      for r in loops))
    # Fig. 3d at the paper's protocol: 3 conditions x 2 models x 5 seeds x 70 epochs of 157
    # batches, one run after the other, from the measured epochs (quick mode: scaled up)
    scale = 157 / batches
    hours = {f"{r['model']}-{r['sampling']}": 5 * 70 * r["epoch_seconds"] * scale / 3600
             for r in loops}
    results["fig3d_protocol_hours"] = dict(per_condition=hours, total=sum(hours.values()),
                                           target=3.0, runs_in_sequence=True)
    print("Fig. 3d protocol, hours: " + ", ".join(f"{k} {v:.2f}" for k, v in hours.items())
          + f"; total {sum(hours.values()):.2f} h (target 3 h)")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_loop.json").write_text(json.dumps(results, indent=1))
    plot(results)


def plot(results):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loops = results["loops"]
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 3.6))
    names = [f"{r['model']}\n{r['sampling']}" for r in loops]
    ax0.bar(names, [r["valid_sample_steps_per_s"] / 1e3 for r in loops], color="C0",
            label="protocol loop (valid steps, wall time)")
    kernel = results["kernel_benchmark"]["used"] / 1e3
    ax0.axhline(kernel, color="k", ls="--", label="kernel benchmark")
    ax0.axhline(0.8 * kernel, color="r", ls=":", label="80 % target")
    ax0.set_ylabel("thousand sample-steps / s")
    ax0.legend(fontsize=8)
    parts = ("training_seconds", "data_seconds", "validation_seconds", "other_seconds")
    bottom = np.zeros(len(loops))
    for i, part in enumerate(parts):
        share = np.array([r[part] / r["wall_seconds"] for r in loops])
        ax1.bar(names, share, bottom=bottom, color=f"C{i}", label=part.replace("_seconds", ""))
        bottom += share
    ax1.set_ylabel("share of the loop's wall time")
    ax1.legend(fontsize=8)
    fig.suptitle("The frequency protocol's training loop against the kernel benchmark")
    fig.tight_layout()
    fig.savefig(RESULTS / "bench_loop.png", dpi=110)


if __name__ == "__main__":
    main()
