"""Shared builders of random problems: every parameter randomised, times kept off the kinks.

Also picks the CUDA target for the whole run, before anything imports numba.cuda (which reads
``NUMBA_ENABLE_CUDASIM`` once): the real GPU when ``nvidia-smi -L`` lists one, else the simulator.
"""
import os

# The tests multiply tiny matrices: BLAS threads only contend on a 2-core machine.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from plstm_np.backends import nvidia_gpu_listed  # noqa: E402  (imports no numba)

if "NUMBA_ENABLE_CUDASIM" not in os.environ and not nvidia_gpu_listed():
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import plstm_np as pl  # noqa: E402
from plstm_np.time_gate import kink_distance  # noqa: E402


def randomize(model, rng, scale=0.7, r_on_range=(0.2, 0.9)):
    """Give every parameter of a layer or network random values, not its init.

    Weights, biases and peepholes ~ N(0, scale); r_on ~ U(r_on_range); tau and s keep their
    random init (tau = exp(U(lo, hi)), s ~ U(0, tau)) but s is redrawn.
    """
    for name, value in model.params.items():
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "r_on":
            value[...] = rng.uniform(*r_on_range, value.shape)
        elif leaf == "s":
            tau = model.params[name[:-1] + "tau"]
            value[...] = rng.uniform(0, tau)
        elif leaf != "tau":
            value[...] = rng.normal(0.0, scale, value.shape)
    return model


def timing_of(model):
    """(tau, s, r_on) of every Phased LSTM layer of a layer or network."""
    layers = model.layers if hasattr(model, "layers") else [model]
    return [(p["tau"], p["s"], p["r_on"]) for p in (l.params for l in layers if not l.gate_open)]


def times_off_kinks(model, rng, B, T, t_max=20.0, margin=0.02):
    """Sorted random times (B, T) whose phase is at least ``margin`` from every kink of every
    neuron, so that finite differences never straddle a kink (constructed, not tolerated)."""
    timing = timing_of(model)
    t = np.empty((B, T))
    for b in range(B):
        for j in range(T):
            while True:
                candidate = rng.uniform(0.0, t_max)
                if all(kink_distance(candidate, *g).min() >= margin for g in timing):
                    break
            t[b, j] = candidate
    return np.sort(t, axis=1)


def random_lengths(rng, B, T, low=0):
    """Random lengths in [low, T] that include both extremes when B allows it."""
    lengths = rng.integers(low, T + 1, B)
    if B >= 2:
        lengths[0], lengths[1] = T, max(low, 1)
    return lengths.astype(np.int64)


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def make_network(rng, *, dtype=np.float64, readout_at="last", loss="cross_entropy",
                 embedding=True, layers=2, backend="numpy", lstm=False):
    """A small randomised network: embedding (7 tokens, dim 3) + 2 features, H = 4, 3."""
    emb = pl.Embedding(7, 3, dtype=dtype, rng=rng) if embedding else None
    sizes = [(3 if embedding else 0) + 2, 4, 3][: layers + 1]
    cls = pl.LSTM if lstm else pl.PhasedLSTM
    stack = [cls(sizes[i], sizes[i + 1], dtype=dtype, rng=rng, backend=backend)
             for i in range(layers)]
    net = pl.Network(stack, pl.Dense(sizes[-1], 2, dtype=dtype, rng=rng), embedding=emb,
                     readout_at=readout_at, loss=loss)
    return randomize(net, rng)


def make_batch(net, rng, B=3, T=5, t_max=20.0, margin=0.02):
    """A random Dataset for ``net``: off-kink times, lengths in [1, T], tokens, targets."""
    t = times_off_kinks(net, rng, B, T, t_max, margin)
    lengths = random_lengths(rng, B, T, low=1)
    x = rng.normal(size=(B, T, net.n_features)).astype(net.dtype) if net.n_features else None
    tokens = rng.integers(0, net.embedding.num_embeddings, (B, T)) if net.embedding else None
    C = net.output_size
    every = net.readout_at == "every"
    if net.loss_name == "cross_entropy":
        y = rng.integers(0, C, (B, T) if every else B)
    else:
        y = rng.normal(size=(B, T, C) if every else (B, C)).astype(net.dtype)
    return pl.Dataset(x, t, y, lengths, tokens)
