"""Training-step throughput of the NumPy reference: the paper's 1-110-2 network.

One step = forward + backward + Adam on a batch of B = 32 sequences of T = 125 steps (the
frequency task's standard sampling). Reports sample-steps per second (B * T / seconds) for
float32 and float64, writes ``results/bench_reference.json`` and a bar plot.

    python benchmarks/bench_reference.py [--repeats 20]
"""
import argparse
import json
import os
import platform
import time

# One BLAS thread: the per-step products (32 x 110 by 110 x 440) are far too small to gain
# from threading, and on a shared 2-core machine threads only contend. Set before numpy loads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np

import plstm_np as pl

HERE = os.path.dirname(os.path.abspath(__file__))


def time_training_step(dtype, B=32, T=125, H=110, repeats=20, backend="numpy"):
    """Median seconds of one forward + backward + Adam step."""
    rng = np.random.default_rng(0)
    net = pl.Network([pl.PhasedLSTM(1, H, dtype=dtype, rng=rng)],
                     pl.Dense(H, 2, dtype=dtype, rng=rng), backend=backend)
    opt = pl.Adam(net)
    t = np.sort(rng.uniform(0, 125, (B, T)), axis=1)
    batch = pl.Dataset(rng.normal(size=(B, T, 1)).astype(dtype), t, rng.integers(0, 2, B))
    times = []
    for i in range(repeats + 2):
        start = time.perf_counter()
        _, grads = net.loss_and_grads(batch)
        opt.step(grads)
        if i >= 2:  # warm-up
            times.append(time.perf_counter() - start)
    return float(np.median(times))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    B, T = 32, 125
    rows = []
    for dtype in ("float32", "float64"):
        seconds = time_training_step(np.dtype(dtype), B, T, repeats=args.repeats)
        rows.append({"backend": "numpy", "dtype": dtype, "seconds_per_step": seconds,
                     "sample_steps_per_second": B * T / seconds})
        print(f"numpy {dtype}: {seconds * 1e3:.1f} ms/step, {B * T / seconds:,.0f} sample-steps/s")
    result = {"benchmark": "training step, 1-110-2 Phased LSTM, B=32, T=125",
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
              "numpy": np.__version__, "rows": rows}
    with open(os.path.join(args.out, "bench_reference.json"), "w") as f:
        json.dump(result, f, indent=1)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 3))
    ax.bar([r["dtype"] for r in rows], [r["sample_steps_per_second"] for r in rows])
    ax.set_ylabel("sample-steps per second")
    ax.set_xlabel("dtype (NumPy reference)")
    ax.set_title("Training step, 1-110-2, B=32, T=125")
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "bench_reference.png"), dpi=120)


if __name__ == "__main__":
    main()
