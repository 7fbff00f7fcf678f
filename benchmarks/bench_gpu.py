"""GPU benchmark: the cuda backend against the numba CPU backend, a PyTorch CUDA autograd
Phased LSTM and cuDNN's nn.LSTM, all timed in one run on the same machine.

Tasks (the issue's targets):

- training 1-110-2, B = 256, T = 1250 (one Adam step: forward, backward, update), float32;
  target: cuda >= the PyTorch CUDA autograd Phased LSTM.
- inference 41-110-10, B = 1024 independent streams of 3000 events, r_on = 0.05, alpha = 0
  (closed neurons skipped); target: cuda batched streaming >= cuDNN nn.LSTM dense.

Usage::

    python benchmarks/bench_gpu.py             # on a GPU machine; exits cleanly without a GPU
    python benchmarks/bench_gpu.py --smoke     # tiny shapes; runs on the CUDA simulator too

Writes ``benchmarks/results/bench_gpu[_smoke].json`` and ``.png``. PyTorch is optional (its
rows are skipped when it is missing or has no CUDA).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from plstm_np.backends import nvidia_gpu_listed  # noqa: E402  (imports no numba)


def timed(fn, repeats, sync=lambda: None):
    """Best-of and mean wall time of ``fn`` after one warm-up call (compilation excluded)."""
    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return {"best_s": min(times), "mean_s": sum(times) / len(times), "repeats": repeats}


def make_data(rng, B, T, D, C, dtype):
    """Random events: sorted times in [0, 150) per stream, inputs N(0, 1), labels."""
    import numpy as np

    import plstm_np as pl

    t = np.sort(rng.uniform(0.0, 150.0, (B, T)), axis=1)
    x = rng.normal(size=(B, T, D)).astype(dtype)
    y = rng.integers(0, C, B)
    return pl.Dataset(x, t, y, np.full(B, T, np.int64))


def make_net(D, H, C, dtype, backend, r_on=0.05):
    import plstm_np as pl

    return pl.Network([pl.PhasedLSTM(D, H, tau_exp_range=(0.0, 3.0), r_on=r_on, dtype=dtype,
                                     backend=backend, rng=0)],
                      pl.Dense(H, C, dtype=dtype, rng=1))


# ------------------------------------------------------------------------------ torch
def torch_phased_lstm(torch, D, H, C, r_on=0.05, leak=1e-3):
    """The same model in PyTorch, differentiated by autograd (the usual public recipe)."""
    nn = torch.nn

    class PLSTM(nn.Module):
        def __init__(self):
            super().__init__()
            self.Wx = nn.Parameter(torch.randn(D, 4 * H) * 0.1)
            self.Wh = nn.Parameter(torch.randn(H, 4 * H) * 0.1)
            self.b = nn.Parameter(torch.zeros(4 * H))
            self.peep = nn.Parameter(torch.randn(3, H) * 0.1)
            tau = torch.exp(torch.rand(H) * 3.0)
            self.tau = nn.Parameter(tau)
            self.s = nn.Parameter(torch.rand(H) * tau)
            self.register_buffer("r_on", torch.full((H,), r_on))
            self.readout = nn.Linear(H, C)

        def forward(self, x, t, alpha):
            B, T, _ = x.shape
            h = x.new_zeros(B, H)
            c = x.new_zeros(B, H)
            zx = x @ self.Wx + self.b
            phi = torch.remainder(t.double()[:, :, None] - self.s.double(), self.tau.double()) \
                / self.tau.double()
            r = self.r_on.double()
            k = torch.where(phi < 0.5 * r, 2 * phi / r,
                            torch.where(phi < r, 2 - 2 * phi / r, alpha * phi)).to(x.dtype)
            for j in range(T):
                z = zx[:, j] + h @ self.Wh
                zi, zf, zg, zo = z.chunk(4, 1)
                i = torch.sigmoid(zi + self.peep[0] * c)
                f = torch.sigmoid(zf + self.peep[1] * c)
                ct = f * c + i * torch.tanh(zg)
                o = torch.sigmoid(zo + self.peep[2] * ct)
                kj = k[:, j]
                c = kj * ct + (1 - kj) * c
                h = kj * (o * torch.tanh(ct)) + (1 - kj) * h
            return self.readout(h)

    return PLSTM()


def run_torch(results, args, train, infer, shapes):
    try:
        import torch
    except ImportError:
        results["torch"] = "not installed"
        return
    if not torch.cuda.is_available():
        results["torch"] = "no CUDA"
        return
    dev = torch.device("cuda")
    sync = torch.cuda.synchronize
    (Dt, Ht, Ct), (Di, Hi, Ci) = shapes["train"], shapes["infer"]
    xt = torch.tensor(train.x, device=dev)
    tt = torch.tensor(train.t, device=dev)
    yt = torch.tensor(train.y, device=dev)
    model = torch_phased_lstm(torch, Dt, Ht, Ct).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step_plstm():
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(xt, tt, 1e-3), yt)
        loss.backward()
        opt.step()

    results["train"]["torch_autograd_plstm"] = timed(step_plstm, args.repeats, sync)

    lstm = torch.nn.LSTM(Dt + 1, Ht, batch_first=True).to(dev)
    head = torch.nn.Linear(Ht, Ct).to(dev)
    opt2 = torch.optim.Adam(list(lstm.parameters()) + list(head.parameters()), lr=1e-3)
    xt_time = torch.cat([xt, tt.float()[:, :, None]], 2)

    def step_cudnn():
        opt2.zero_grad(set_to_none=True)
        out, _ = lstm(xt_time)
        loss = torch.nn.functional.cross_entropy(head(out[:, -1]), yt)
        loss.backward()
        opt2.step()

    results["train"]["cudnn_lstm"] = timed(step_cudnn, args.repeats, sync)

    xi = torch.cat([torch.tensor(infer.x, device=dev),
                    torch.tensor(infer.t, device=dev).float()[:, :, None]], 2)
    lstm_i = torch.nn.LSTM(Di + 1, Hi, batch_first=True).to(dev)
    head_i = torch.nn.Linear(Hi, Ci).to(dev)

    def infer_cudnn():
        with torch.no_grad():
            out, _ = lstm_i(xi)
            head_i(out[:, -1])

    results["infer"]["cudnn_lstm_dense"] = timed(infer_cudnn, args.repeats, sync)


# ------------------------------------------------------------------------------ main
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true",
                        help="tiny shapes; runs on the CUDA simulator when there is no GPU")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-cpu", action="store_true", help="skip the numba CPU rows")
    args = parser.parse_args(argv)

    has_gpu = nvidia_gpu_listed()
    if not has_gpu:
        if not args.smoke:
            print("bench_gpu: no NVIDIA GPU found (nvidia-smi); nothing to time. "
                  "Run with --smoke to exercise the code path on the CUDA simulator.")
            return 0
        os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

    import numpy as np

    import plstm_np as pl
    from plstm_np import config
    from plstm_np.backends.cuda.training import CudaStreamer, CudaTrainer

    try:
        cb = pl.get_backend("cuda")
    except pl.BackendUnavailableError as err:
        print(f"bench_gpu: {err}")
        return 0

    if args.smoke:
        shapes = {"train": (1, 6, 2), "infer": (3, 6, 4)}
        train_BT, infer_BT = (4, 8), (4, 10)
        args.repeats = 1
        config.CUDA_THREADS_PER_BLOCK = config.CUDA_STREAM_THREADS_PER_BLOCK = 4
        config.CUDA_TILE = 4
    else:
        shapes = {"train": (1, 110, 2), "infer": (41, 110, 10)}
        train_BT, infer_BT = (256, 1250), (1024, 3000)
    rng = np.random.default_rng(0)
    dtype = np.float32
    train = make_data(rng, *train_BT, shapes["train"][0], shapes["train"][2], dtype)
    infer = make_data(rng, *infer_BT, shapes["infer"][0], shapes["infer"][2], dtype)

    from numba import cuda

    device = "CUDA simulator" if cb.is_simulator() else cuda.get_current_device().name
    device = device.decode() if isinstance(device, bytes) else str(device)
    results = {"device": device, "smoke": args.smoke, "dtype": "float32",
               "train": {"shape": f"{shapes['train']} B={train_BT[0]} T={train_BT[1]}"},
               "infer": {"shape": f"{shapes['infer']} B={infer_BT[0]} T={infer_BT[1]} r_on=0.05"}}
    sync = cuda.synchronize

    # cuda backend: device-resident training step, batched streaming inference
    net = make_net(*shapes["train"], dtype, "cuda")
    trainer = CudaTrainer(net, lr=1e-3)
    results["train"]["cuda"] = timed(lambda: trainer.step(train), args.repeats, sync)
    results["train"]["cuda"]["updates"] = trainer.updates

    net_i = make_net(*shapes["infer"], dtype, "cuda")
    streamer = CudaStreamer(net_i, infer_BT[0])

    def stream_all():
        streamer.reset()
        streamer.push(infer.x, infer.t)

    results["infer"]["cuda_streams"] = timed(stream_all, args.repeats, sync)
    results["infer"]["cuda_streams"]["updates_per_neuron"] = streamer.updates_per_neuron
    results["infer"]["cuda_streams"]["dense_updates_per_neuron"] = infer_BT[1]

    # numba CPU backend on the same machine
    if not args.skip_cpu:
        try:
            pl.get_backend("numba")
            net_cpu = make_net(*shapes["train"], dtype, "numba")
            opt = pl.Adam(net_cpu, lr=1e-3)

            def cpu_step():
                _, grads = net_cpu.loss_and_grads(train)
                opt.step(grads)

            results["train"]["numba_cpu"] = timed(cpu_step, args.repeats)
            net_cpu_i = make_net(*shapes["infer"], dtype, "numba")
            results["infer"]["numba_cpu"] = timed(
                lambda: net_cpu_i.forward(infer.x, infer.t, infer.lengths, training=False),
                args.repeats)
        except (ImportError, pl.BackendUnavailableError) as err:
            results["numba_cpu"] = f"unavailable: {err}"

    if has_gpu:
        run_torch(results, args, train, infer, shapes)

    out_dir = ROOT / "benchmarks" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = "bench_gpu_smoke" if args.smoke else "bench_gpu"
    (out_dir / f"{stem}.json").write_text(json.dumps(results, indent=2))
    plot(results, out_dir / f"{stem}.png")
    for task in ("train", "infer"):
        for name, value in results[task].items():
            if isinstance(value, dict):
                print(f"{task:5s} {name:22s} {value['best_s'] * 1e3:10.1f} ms")
    print(f"device: {device}; wrote {out_dir / stem}.json and .png")
    return 0


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, task, title in zip(axes, ("train", "infer"), ("training step", "inference")):
        rows = {k: v["best_s"] for k, v in results[task].items() if isinstance(v, dict)}
        ax.barh(list(rows), list(rows.values()))
        ax.set_xscale("log")
        ax.set_xlabel("seconds (best of repeats)")
        ax.set_title(f"{title}: {results[task]['shape']}", fontsize=8)
    fig.suptitle(f"plstm_np GPU benchmark on {results['device']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
