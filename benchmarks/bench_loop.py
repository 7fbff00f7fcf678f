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

When JAX is installed, the same loops and the kernel row run in JAX too (``jax_plstm.py``,
in a process of its own, after plstm_np's), on the same fresh data, with the same hours
extrapolated: the target is plstm_np at least 5x the JAX jit Phased LSTM, kernel and loop.

Writes ``benchmarks/results/bench_loop.json`` and ``bench_loop.png``. Usage::

    python benchmarks/bench_loop.py [--quick] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before NumPy loads OpenBLAS
import multiprocessing as mp
import platform
import time
from concurrent.futures import ProcessPoolExecutor
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


def jax_loops(batches, epochs_by_sampling):
    """The same protocol loops in JAX (``jax_plstm.py``), in a process of its own: the
    kernel row, then per model and condition the records of each epoch (the first includes
    XLA's compilation of every batch length's bucket). None when JAX is not installed."""
    try:
        import jax_plstm
    except ImportError:
        return None
    check = {m: jax_plstm.loss_against_plstm_np(m) for m in ("plstm", "lstm")}
    for m, (ours, theirs) in check.items():
        if abs(ours - theirs) > 1e-5:
            raise AssertionError(f"the JAX {m} computes another loss ({theirs}) than "
                                 f"plstm_np ({ours}): fix jax_plstm.py first")
    best, median = jax_plstm.kernel_row(training_problem(np.random.default_rng(0)), 15)
    out = dict(loss_check=check, kernel=dict(best_seconds=best, median_seconds=median,
                           sample_steps_per_s=32 * 125 / best), loops=[])
    for model in ("plstm", "lstm"):
        for sampling, epochs in epochs_by_sampling.items():
            cfg = ex.default_config("frequency", sampling=sampling, model=model,
                                    n_train=32 * batches, epochs=epochs)
            train_data, val = ex.make_data(cfg)
            records = jax_plstm.protocol_epochs(train_data, val, model, epochs)
            last = records[-1]
            out["loops"].append(dict(model=model, sampling=sampling, epochs=records,
                                     first_epoch_seconds=records[0]["seconds"],
                                     epoch_seconds=last["seconds"],
                                     valid_sample_steps_per_s=last["valid_sample_steps"]
                                     / last["seconds"]))
            speed = out["loops"][-1]["valid_sample_steps_per_s"]
            print(f"jax  {model} {sampling:9s}: {speed:10,.0f} valid sample-steps/s (epoch "
                  f"{last['seconds']:.2f} s, first epoch with compilation "
                  f"{records[0]['seconds']:.2f} s)", flush=True)
    return out


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
    # -- the JAX loop, the same protocol, in the same run ---------------------------------
    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
        jax_results = pool.submit(jax_loops, batches, {"standard": 2, "async": 2,
                                                       "high_res": 2}).result()
    results["jax"] = jax_results
    if jax_results is None:
        print("JAX not installed: its rows are skipped")
    else:
        jax_kernel = jax_results["kernel"]["sample_steps_per_s"]
        results["kernel_speedup_over_jax"] = kernel / jax_kernel
        ours = {(r["model"], r["sampling"]): r for r in loops}
        for r in jax_results["loops"]:
            r["plstm_np_speedup"] = (ours[r["model"], r["sampling"]]["valid_sample_steps_per_s"]
                                     / r["valid_sample_steps_per_s"])
        # 5 seeds x 70 epochs; each run pays its first epoch's compilation once
        jax_hours = {f"{r['model']}-{r['sampling']}": 5 * (r["first_epoch_seconds"] + 69 *
                                                           r["epoch_seconds"]) * scale / 3600
                     for r in jax_results["loops"]}
        results["jax_fig3d_protocol_hours"] = dict(per_condition=jax_hours,
                                                   total=sum(jax_hours.values()))
        print(f"kernel: plstm_np {kernel:,.0f}, JAX {jax_kernel:,.0f} sample-steps/s "
              f"({kernel / jax_kernel:.1f}x); loop speed-ups: " + ", ".join(
                  f"{r['model']} {r['sampling']} {r['plstm_np_speedup']:.1f}x"
                  for r in jax_results["loops"]))
        print(f"Fig. 3d protocol, JAX: {sum(jax_hours.values()):.2f} h")
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
