"""CPU benchmark: NumPy reference, Numba backend and (when installed) PyTorch and JAX, side
by side.

One run times, on the same shapes and data:

- training (forward + BPTT + Adam) of a 1-110-2 Phased LSTM, B = 32, T = 125, float32,
  alpha = 1e-3: NumPy reference, Numba backend, a PyTorch autograd Phased LSTM written as a
  competent torch user would (the input projection and the time gate of every step at once,
  split into steps once; the recurrence in a Python loop over steps);
- streaming inference, batch 1, 41-110-10 (N-MNIST shape: 40-d address embedding + polarity),
  alpha = 0, float32, packets of events: Numba :class:`plstm_np.streaming.Stream`, and
  torch's fused ``nn.LSTM`` (+ Linear) on the same events and packets;
- evaluation throughput of the Numba kernel against r_on (skipping pays);
- training with the leak switched off (alpha = 0) against r_on: the backward skips too;
- the peak memory (tracemalloc) of one training step and what BPTT stores;
- the Phased GRU against the Phased LSTM, interleaved on the same data: training (with the
  leak, and leak-free) and streaming, at r_on = 0.05 and r_on = 1 (the gate always open);
- the same training step in JAX (``jax_plstm.py``): the recurrence a jit-compiled
  ``lax.scan``, ``jax.grad``, Adam compiled into the same step.

PyTorch and JAX are optional and never dependencies: their rows are skipped when absent.
Writes ``benchmarks/results/bench_cpu.json`` and ``bench_cpu.png``. Usage::

    python benchmarks/bench_cpu.py [--quick]

OpenBLAS runs single-threaded here (``OPENBLAS_NUM_THREADS=1`` unless already set, before
NumPy is imported): the Numba kernels give each of their threads a chunk of the batch,
and BLAS threads of their own would contend with them on a small machine. The library
itself never changes the environment.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before NumPy loads OpenBLAS
import platform
import time
import tracemalloc
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

import plstm_np as pl
from plstm_np.backends import numba as numba_backend
from plstm_np.optim import Adam
from plstm_np.streaming import Stream

RESULTS = Path(__file__).resolve().parent / "results"


def best_time(fn, repeats):
    """Smallest and median wall time of ``repeats`` calls (after one warm-up call): the
    smallest is the least disturbed by other load on the machine."""
    return interleaved_times([fn], repeats)[0]


def interleaved_times(fns, rounds):
    """Wall times of each of ``fns`` over ``rounds`` rounds that call them in turn (after
    one warm-up call each): a burst of load from elsewhere then hits all of them alike,
    so ratios of their smallest (or median) times are far steadier than back-to-back
    measurements."""
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    for _ in range(rounds):
        for fn, ts in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
    return [(min(ts), float(np.median(ts))) for ts in times]


# ---------------------------------------------------------------------------- problems
def training_problem(rng, B=32, T=125, H=110, dtype=np.float32):
    x = rng.normal(size=(B, T, 1)).astype(dtype)
    t = np.sort(rng.uniform(0.0, 60.0, (B, T)), axis=1)  # ms; tau = exp(U(0, 3)) ms
    y = rng.integers(0, 2, B)
    return pl.Dataset(x, t, y)


def make_train_net(backend, H=110, dtype=np.float32, leak=1e-3, r_on=0.05, cell=pl.PhasedLSTM):
    layer = cell(1, H, r_on=r_on, dtype=dtype, backend=backend, rng=0, leak=leak)
    return pl.Network([layer], pl.Dense(H, 2, dtype=dtype, rng=1))


def events_problem(rng, n_events, n_tokens=2 * 34 * 34, duration_ms=300.0):
    t = np.sort(rng.uniform(0.0, duration_ms, n_events))
    tokens = rng.integers(0, n_tokens, n_events)
    polarity = rng.integers(0, 2, (n_events, 1)).astype(np.float32) * 2 - 1
    return t, tokens, polarity


def make_stream_net(r_on, H=110, n_tokens=2 * 34 * 34, dtype=np.float32, cell=pl.PhasedLSTM):
    emb = pl.Embedding(n_tokens, 40, dtype=dtype, rng=2)
    layer = cell(41, H, r_on=r_on, tau_exp_range=(0.0, 3.0), dtype=dtype, backend="numba",
                 rng=3)
    return pl.Network([layer], pl.Dense(H, 10, dtype=dtype, rng=4), embedding=emb)


# ---------------------------------------------------------------------------- Phased GRU
def gru_rows(data, events, packet, repeats):
    """The Phased GRU against the Phased LSTM (Numba, float32, 110 units), each pair timed
    interleaved on the same data: a training step (Adam included) with the leak 1e-3 and
    leak-free, and streaming of the N-MNIST-shaped events, at r_on = 0.05 and 1."""
    B, T = data.t.shape
    t_ev, tokens, polarity = events
    cells = {"plstm": pl.PhasedLSTM, "pgru": pl.PhasedGRU}
    rows = {}
    for r_on in (0.05, 1.0):
        for leak in (1e-3, 0.0):
            steps = []
            for cell in cells.values():
                net = make_train_net("numba", leak=leak, r_on=r_on, cell=cell)
                opt = Adam(net)

                def step(net=net, opt=opt):  # defaults bind this iteration's net and opt
                    _, grads = net.loss_and_grads(data)
                    opt.step({k: v for k, v in grads.items() if k in net.params})

                steps.append(step)
            key = f"train_r_on_{r_on}_leak_{leak:g}"
            times = interleaved_times(steps, 2 * repeats)
            rows[key] = {name: dict(seconds=best, median_seconds=median,
                                    sample_steps_per_s=B * T / best)
                         for name, (best, median) in zip(cells, times)}
        streams = [Stream(make_stream_net(r_on, cell=cell)) for cell in cells.values()]

        def run(stream):
            stream.reset()
            for lo in range(0, len(t_ev), packet):
                stream.push(polarity[lo:lo + packet], t_ev[lo:lo + packet],
                            tokens[lo:lo + packet])

        times = interleaved_times([lambda st=st: run(st) for st in streams], repeats)
        rows[f"stream_r_on_{r_on}"] = {
            name: dict(seconds=best, median_seconds=median, events_per_s=len(t_ev) / best,
                       updates_per_neuron=st.updates_per_neuron[0])
            for name, (best, median), st in zip(cells, times, streams)}
    for key, pair in rows.items():
        unit = "events/s" if key.startswith("stream") else "sample-steps/s"
        rate = "events_per_s" if key.startswith("stream") else "sample_steps_per_s"
        ratio = pair["pgru"]["seconds"] / pair["plstm"]["seconds"]
        print(f"{key:28s}: plstm {pair['plstm'][rate]:12,.0f}, pgru {pair['pgru'][rate]:12,.0f} "
              f"{unit} (pgru / plstm time {ratio:.2f})")
    return rows


# ---------------------------------------------------------------------------- torch
def torch_rows(data, events, packet, threads):
    """PyTorch comparison rows, or None when torch is not installed."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(threads)
    nn = torch.nn

    class TorchPhasedLSTM(nn.Module):
        """A Phased LSTM cell in PyTorch autograd, written the usual way."""

        def __init__(self, D, H):
            super().__init__()
            self.H = H
            self.Wx = nn.Parameter(torch.randn(D, 4 * H) * 0.1)
            self.Wh = nn.Parameter(torch.randn(H, 4 * H) * 0.1)
            self.b = nn.Parameter(torch.zeros(4 * H))
            self.w_ci = nn.Parameter(torch.randn(H) * 0.1)
            self.w_cf = nn.Parameter(torch.randn(H) * 0.1)
            self.w_co = nn.Parameter(torch.randn(H) * 0.1)
            tau = torch.exp(torch.rand(H) * 3)
            self.tau = nn.Parameter(tau)
            self.s = nn.Parameter(torch.rand(H) * tau)
            self.r_on = 0.05
            self.leak = 1e-3
            self.readout = nn.Linear(H, 2)

        def forward(self, x, t):
            # as a competent torch user writes it: what does not depend on h (the input
            # projection, the time gate) for every step at once, split into steps once
            # (``unbind``: indexing ``zx[:, j]`` inside the loop makes each step's backward
            # fill a full-size zero tensor, quadratic in T); the recurrence in a Python loop
            B, T, _ = x.shape
            h = x.new_zeros(B, self.H)
            c = x.new_zeros(B, self.H)
            zx = (x @ self.Wx + self.b).unbind(1)
            tau, s = self.tau.double(), self.s.double()
            phi = torch.remainder(t[:, :, None] - s, tau) / tau  # float64, as plstm_np
            r = self.r_on
            k = torch.where(phi < r / 2, 2 * phi / r,
                            torch.where(phi < r, 2 - 2 * phi / r, self.leak * phi))
            k = k.float().unbind(1)
            for j in range(T):
                z = zx[j] + h @ self.Wh
                zi, zf, zg, zo = z.chunk(4, dim=1)
                i = torch.sigmoid(zi + self.w_ci * c)
                f = torch.sigmoid(zf + self.w_cf * c)
                ct = f * c + i * torch.tanh(zg)
                o = torch.sigmoid(zo + self.w_co * ct)
                ht = o * torch.tanh(ct)
                c = k[j] * ct + (1 - k[j]) * c
                h = k[j] * ht + (1 - k[j]) * h
            return self.readout(h)

    torch.manual_seed(0)
    model = TorchPhasedLSTM(1, 110)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.from_numpy(data.x)
    t = torch.from_numpy(data.t)
    y = torch.from_numpy(data.y)
    loss_fn = nn.CrossEntropyLoss()

    def train_step():
        opt.zero_grad()
        loss = loss_fn(model(x, t), y)
        loss.backward()
        opt.step()

    best, median = best_time(train_step, 3)
    B, T = data.t.shape
    rows = {"torch_autograd_plstm_train": dict(seconds=best, median_seconds=median,
                                               sample_steps_per_s=B * T / best)}

    t_ev, tokens, polarity = events
    lstm = nn.LSTM(41, 110, batch_first=True)
    linear = nn.Linear(110, 10)
    emb = nn.Embedding(2 * 34 * 34, 40)
    tok = torch.from_numpy(tokens)
    pol = torch.from_numpy(polarity)

    def stream_torch():
        state = None
        with torch.no_grad():
            for lo in range(0, len(t_ev), packet):
                inp = torch.cat([emb(tok[lo:lo + packet]), pol[lo:lo + packet]], 1)[None]
                out, state = lstm(inp, state)
                linear(out)

    best, median = best_time(stream_torch, 3)
    rows["torch_fused_lstm_stream"] = dict(seconds=best, median_seconds=median,
                                           events_per_s=len(t_ev) / best, packet=packet)
    rows["torch_version"] = torch.__version__
    return rows


# ---------------------------------------------------------------------------- JAX
def jax_rows(data):
    """The JAX row (``jax_plstm.py``: jit-compiled ``lax.scan``, ``jax.grad``, Adam in the
    same compiled step), or None when JAX is not installed. XLA uses every core."""
    try:
        import jax
        import jax_plstm
    except ImportError:
        return None
    best, median = jax_plstm.kernel_row(data, repeats=15)
    B, T = data.t.shape
    return {"jax_jit_plstm_train": dict(seconds=best, median_seconds=median,
                                        sample_steps_per_s=B * T / best),
            "jax_version": jax.__version__}


# ---------------------------------------------------------------------------- main
def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and events")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    repeats = 2 if args.quick else 5
    rng = np.random.default_rng(0)
    results = dict(machine=dict(cpu=platform.processor() or platform.machine(),
                                cores=os.cpu_count(), load_average=os.getloadavg()),
                   numba_threads=args.threads,
                   openblas_num_threads=os.environ.get("OPENBLAS_NUM_THREADS"))
    import numba

    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))

    # -- training ---------------------------------------------------------------------
    data = training_problem(rng)
    B, T = data.t.shape
    train = {}
    for backend in ("numpy", "numba"):
        net = make_train_net(backend)
        opt = Adam(net)

        def step(net=net, opt=opt):  # defaults bind this iteration's net and opt
            loss, grads = net.loss_and_grads(data)
            opt.step({k: v for k, v in grads.items() if k in net.params})

        best, median = best_time(step, 2 if backend == "numpy" else 3 * repeats)
        train[backend] = dict(seconds=best, median_seconds=median, sample_steps_per_s=B * T / best)
        if backend == "numba":  # count the arrays a step reuses from the previous one too
            numba_backend.clear_workspace()
        tracemalloc.start()
        step()
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        train[backend]["peak_bytes"] = peak
        print(f"train {backend:6s}: {B * T / best:12,.0f} sample-steps/s  "
              f"(peak {peak / 2**20:.1f} MiB)")
    # what BPTT keeps per layer, against a hand-written LSTM's i, f, g, o, c, tanh(c), h
    net = make_train_net("numba")
    _, _, cache = net.forward(data.x, data.t)
    layer_cache = dict(cache["layer_caches"][0])
    layer_cache.update(layer_cache.pop("stored")._asdict())  # the kernels' Stored group
    stored = {k: v.nbytes for k, v in layer_cache.items()
              if isinstance(v, np.ndarray) and v.ndim == 3 and k not in ("x",)}
    H = 110
    train["bptt_stored_bytes"] = stored
    train["bptt_stored_total"] = int(sum(stored.values()))
    train["hand_written_lstm_bytes"] = 7 * B * T * H * 4
    results["training"] = train

    # -- streaming --------------------------------------------------------------------
    n_events = 20_000 if args.quick else 100_000
    packet = 1000
    events = events_problem(rng, n_events)
    t_ev, tokens, polarity = events
    stream_rows = {}
    for r_on in (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0):
        net = make_stream_net(r_on)
        stream = Stream(net)

        def run_stream(stream=stream):  # a default binds this iteration's stream
            stream.reset()
            for lo in range(0, n_events, packet):
                stream.push(polarity[lo:lo + packet], t_ev[lo:lo + packet], tokens[lo:lo + packet])

        best, median = best_time(run_stream, repeats)
        stream_rows[str(r_on)] = dict(seconds=best, median_seconds=median,
                                      events_per_s=n_events / best,
                                      updates_per_neuron=stream.updates_per_neuron[0],
                                      events=n_events)
        print(f"stream r_on={r_on:<5}: {n_events / best:12,.0f} events/s "
              f"({stream.updates_per_neuron[0] / n_events:.3f} of dense updates)")
    # single-event pushes (Python overhead per call dominates)
    net = make_stream_net(0.05)
    stream = Stream(net)
    m = 2000

    def run_single():
        stream.reset()
        for j in range(m):
            stream.push(polarity[j], float(t_ev[j]), int(tokens[j]))

    best, _ = best_time(run_single, 2)
    stream_rows["single_event_push_r_on_0.05"] = dict(events_per_s=m / best)
    stream_ratio = stream_rows["0.05"]["seconds"] / stream_rows["1.0"]["seconds"]
    results["streaming"] = {"packet": packet, "by_r_on": stream_rows,
                            "time_ratio_r_on_0.05_vs_1": stream_ratio}
    print(f"streaming time at r_on=0.05 / r_on=1: {stream_ratio:.3f}")

    # -- evaluation kernel vs r_on (skipping pays) -------------------------------------
    eval_rows = {}
    r_ons = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
    layers = [pl.PhasedLSTM(1, 110, r_on=r_on, dtype=np.float32, backend="numba", rng=0)
              for r_on in r_ons]
    calls = [lambda layer=layer: layer.forward(data.x, data.t, training=False)
             for layer in layers]
    for r_on, (best, median) in zip(r_ons, interleaved_times(calls, 4 * repeats)):
        eval_rows[str(r_on)] = dict(seconds=best, median_seconds=median,
                                    sample_steps_per_s=B * T / best)
    results["evaluation"] = eval_rows
    ratio = eval_rows["0.05"]["seconds"] / eval_rows["1.0"]["seconds"]
    ratio_median = eval_rows["0.05"]["median_seconds"] / eval_rows["1.0"]["median_seconds"]
    results["evaluation_time_ratio_r_on_0.05_vs_1"] = ratio
    results["evaluation_time_ratio_r_on_0.05_vs_1_medians"] = ratio_median
    print(f"evaluation time at r_on=0.05 / r_on=1: {ratio:.3f} (fastest runs), "
          f"{ratio_median:.3f} (medians)")

    # -- leak-free training vs r_on (the backward skips closed neurons too) --------------
    leak_free = {}
    for r_on in (0.01, 0.05, 0.2, 1.0):
        net = make_train_net("numba", leak=0.0, r_on=r_on)
        opt = Adam(net)

        def step(net=net, opt=opt):  # defaults bind this iteration's net and opt
            loss, grads = net.loss_and_grads(data)
            opt.step({k: v for k, v in grads.items() if k in net.params})

        best, median = best_time(step, 2 * repeats)
        leak_free[str(r_on)] = dict(seconds=best, median_seconds=median,
                                    sample_steps_per_s=B * T / best)
        print(f"train numba, alpha=0, r_on={r_on:<5}: {B * T / best:12,.0f} sample-steps/s")
    results["training_leak_free"] = leak_free

    # -- the Phased GRU against the Phased LSTM ---------------------------------------
    results["phased_gru"] = gru_rows(data, events, packet, repeats)

    # -- torch ------------------------------------------------------------------------
    # in a process of its own: once Numba's parallel kernels have run in a process, torch's
    # own thread pool contends with Numba's there (measured here: its training step 37x
    # slower, 2.7 s instead of 0.072 s), which would flatter the comparison
    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
        rows = pool.submit(torch_rows, data, events, packet, args.threads).result()
    results["torch"] = rows
    if rows is None:
        print("torch not installed: its rows are skipped")
    else:
        tr = rows["torch_autograd_plstm_train"]["sample_steps_per_s"]
        st = rows["torch_fused_lstm_stream"]["events_per_s"]
        print(f"torch autograd PLSTM train: {tr:12,.0f} sample-steps/s "
              f"(numba {train['numba']['sample_steps_per_s'] / tr:.1f}x)")
        print(f"torch fused nn.LSTM stream: {st:12,.0f} events/s "
              f"(numba {stream_rows['0.05']['events_per_s'] / st:.1f}x)")
    # -- JAX: in a process of its own too, for the same reason --------------------------
    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
        rows = pool.submit(jax_rows, data).result()
    results["jax"] = rows
    if rows is None:
        print("JAX not installed: its row is skipped")
    else:
        jr = rows["jax_jit_plstm_train"]["sample_steps_per_s"]
        print(f"JAX jit PLSTM train:        {jr:12,.0f} sample-steps/s "
              f"(numba {train['numba']['sample_steps_per_s'] / jr:.1f}x)")
    results["machine"]["load_average_end"] = os.getloadavg()

    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_cpu.json").write_text(json.dumps(results, indent=2))
    plot(results)


def plot(results):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    r = [float(k) for k in results["evaluation"]]
    axes[0].plot(r, [v["sample_steps_per_s"] for v in results["evaluation"].values()], "o-",
                 label="numba evaluation, 1-110, B=32")
    lf = results["training_leak_free"]
    axes[0].plot([float(k) for k in lf], [v["sample_steps_per_s"] for v in lf.values()], "s-",
                 label="numba training step, 1-110-2, B=32")
    axes[0].set(xscale="log", yscale="log", xlabel="r_on", ylabel="sample-steps / s",
                title="Leak-free (alpha = 0)")
    by = {k: v for k, v in results["streaming"]["by_r_on"].items() if "events" in v}
    axes[1].plot([float(k) for k in by], [v["events_per_s"] for v in by.values()], "o-",
                 label="numba Stream, 41-110-10")
    if results.get("torch"):
        axes[1].axhline(results["torch"]["torch_fused_lstm_stream"]["events_per_s"], color="C1",
                        ls="--", label="torch fused nn.LSTM")
    axes[1].set(xscale="log", yscale="log", xlabel="r_on", ylabel="events / s",
                title="Streaming, batch 1")
    gru = results["phased_gru"]
    keys = list(gru)
    for offset, name in ((-0.2, "plstm"), (0.2, "pgru")):
        axes[2].bar(np.arange(len(keys)) + offset,
                    [gru[k][name]["seconds"] / gru[k]["plstm"]["seconds"] for k in keys], 0.4,
                    label={"plstm": "Phased LSTM", "pgru": "Phased GRU"}[name])
    axes[2].set_xticks(np.arange(len(keys)), [k.replace("_", " ") for k in keys], rotation=30,
                       ha="right", fontsize=7)
    axes[2].set(ylabel="time / Phased LSTM's", title="Phased GRU vs Phased LSTM (numba)")
    for ax in axes:
        ax.legend()
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(RESULTS / "bench_cpu.png", dpi=120)


if __name__ == "__main__":
    main()
