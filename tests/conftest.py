"""Shared builders of random problems: every parameter randomised, times kept off the kinks.

The same random problem can be built for every backend (:func:`random_layer_problem`), and
one comparator (:func:`assert_close`) with one tolerance table (:data:`TOLERANCES`) says how
close a backend must come to the NumPy reference.

Also picks the CUDA target for the whole run, before anything imports numba.cuda (which reads
``NUMBA_ENABLE_CUDASIM`` once): the real GPU when ``nvidia-smi -L`` lists one, else the simulator.
"""
import os

# The tests multiply tiny matrices: BLAS threads only contend on a 2-core machine.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from plstm_np.backends import nvidia_gpu_listed  # imports no numba

if "NUMBA_ENABLE_CUDASIM" not in os.environ and not nvidia_gpu_listed():
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"

import numpy as np
import pytest

import plstm_np as pl
from plstm_np import config
from plstm_np.time_gate import kink_distance

#: Every backend: the NumPy reference first, then the fast paths.
BACKENDS = ("numpy", "numba", "cuda")
DTYPES = (np.float64, np.float32)

#: (rtol, atol) per (backend, dtype) for an array a backend computes against the same array
#: from the reference (and, in the property tests, against the same backend run another way):
#: ``max|actual - expected| <= atol + rtol * max|expected|``, one array (or gradient) at a
#: time: relative to the array's largest entry, not entry by entry, so that an entry that is
#: tiny by cancellation is not held to a relative precision its neighbours set. This is the
#: ``max_rel_diff <= RTOL`` of tests/test_numba_backend.py (atol 0: an all-zero expected array
#: must be matched exactly). The numba values are that file's RTOL, the cuda ones those of
#: tests/test_cuda_backend.py; the numpy ones bound rounding only (a reordered sum, a product
#: split in chunks), for the property tests that compare the reference with itself.
TOLERANCES = {
    ("numpy", np.dtype(np.float64)): (1e-12, 0.0),
    ("numpy", np.dtype(np.float32)): (1e-5, 0.0),
    ("numba", np.dtype(np.float64)): (1e-12, 0.0),
    ("numba", np.dtype(np.float32)): (1e-5, 0.0),
    ("cuda", np.dtype(np.float64)): (1e-12, 0.0),
    ("cuda", np.dtype(np.float32)): (2e-5, 0.0),
}


def tolerance(backend, dtype):
    """(rtol, atol) of :data:`TOLERANCES` for ``backend`` and ``dtype``."""
    return TOLERANCES[(backend, np.dtype(dtype))]


def _assert_array_close(actual, expected, rtol, atol, what):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    if actual.size == 0:
        return
    a, e = actual.astype(np.float64), expected.astype(np.float64)
    finite = np.isfinite(e)
    assert np.array_equal(np.isfinite(a), finite) and np.array_equal(
        a[~finite], e[~finite], equal_nan=True), f"{what}: non-finite entries differ"
    if not finite.any():
        return
    diff = np.abs(a[finite] - e[finite]).max()
    scale = np.abs(e[finite]).max()
    bound = atol + rtol * scale
    assert diff <= bound, (f"{what}: max|difference| {diff:.3g} > {bound:.3g} "
                           f"(atol {atol:.1g} + rtol {rtol:.1g} * max|expected| {scale:.3g})")


def assert_close(actual, expected, backend, dtype, what=""):
    """Assert that ``actual`` (an array, a tuple of arrays or a dict of arrays, e.g. gradients)
    matches ``expected`` within :data:`TOLERANCES` for ``backend`` and ``dtype``.

    Shapes and dtypes must be equal, dicts must have the same keys, non-finite entries must sit
    at the same places; the message names the key (or index) that failed.
    """
    rtol, atol = tolerance(backend, dtype)
    label = f"{what} [{backend}, {np.dtype(dtype)}]" if what else f"[{backend}, {np.dtype(dtype)}]"
    if isinstance(expected, dict):
        assert isinstance(actual, dict), f"{label}: expected a dict, got {type(actual).__name__}"
        assert set(actual) == set(expected), (
            f"{label}: keys differ: missing {sorted(set(expected) - set(actual))}, "
            f"extra {sorted(set(actual) - set(expected))}")
        for key in expected:
            _assert_array_close(actual[key], expected[key], rtol, atol, f"{label} {key!r}")
    elif isinstance(expected, (tuple, list)):
        assert len(actual) == len(expected), f"{label}: length {len(actual)} != {len(expected)}"
        for index, (a, e) in enumerate(zip(actual, expected)):
            _assert_array_close(a, e, rtol, atol, f"{label} [{index}]")
    else:
        _assert_array_close(actual, expected, rtol, atol, label)


def assert_unchanged(before, after, what=""):
    """Bitwise equality (NaN equal to NaN) of arrays, or of tuples/lists/dicts of arrays."""
    if isinstance(before, dict):
        assert set(before) == set(after), what
        for key in before:
            assert_unchanged(before[key], after[key], f"{what} {key!r}")
    elif isinstance(before, (tuple, list)):
        assert len(before) == len(after), what
        for index, (b, a) in enumerate(zip(before, after)):
            assert_unchanged(b, a, f"{what} [{index}]")
    elif isinstance(before, np.ndarray):
        assert isinstance(after, np.ndarray) and after.dtype == before.dtype, what
        assert after.shape == before.shape, what
        # compare the bytes: bitwise, NaN payloads and signed zeros included
        assert before.tobytes() == after.tobytes(), f"{what}: modified"
    else:
        assert before == after, what


def snapshot(value):
    """A deep copy of an array or a tuple/list/dict of arrays, for :func:`assert_unchanged`."""
    if isinstance(value, dict):
        return {k: snapshot(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(snapshot(v) for v in value)
    return value.copy() if isinstance(value, np.ndarray) else value


def small_cuda_launches(monkeypatch):
    """Blocks of 2 threads, 4x4 tiles, the weight product split over a few blocks: tiny
    problems span several blocks and thread strides (and the simulator runs faster)."""
    monkeypatch.setattr(config, "CUDA_THREADS_PER_BLOCK", 2)
    monkeypatch.setattr(config, "CUDA_STREAM_THREADS_PER_BLOCK", 2)
    monkeypatch.setattr(config, "CUDA_TILE", 4)
    monkeypatch.setattr(config, "CUDA_GEMM_TARGET_BLOCKS", 8)


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    """Each backend in turn; for 'cuda' the launches are patched small
    (:func:`small_cuda_launches`). An unavailable backend fails, it is never skipped."""
    if request.param == "cuda":
        small_cuda_launches(monkeypatch)
    return request.param


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
    """(tau, s, r_on) of every time gate of a layer or network (every layer whose parameters
    hold a ``tau``; a bidirectional layer's halves, ``fw.tau``, ``bw.tau``, count too)."""
    layers = model.layers if hasattr(model, "layers") else [model]
    return [(p[prefix + "tau"], p[prefix + "s"], p[prefix + "r_on"])
            for p in (layer.params for layer in layers)
            for prefix in ("", "fw.", "bw.") if prefix + "tau" in p]


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
                 embedding=True, layers=2, backend="numpy", lstm=False, activation=None):
    """A small randomised network: embedding (7 tokens, dim 3) + 2 features, H = 4, 3;
    ``activation`` of the read-out (None: linear)."""
    emb = pl.Embedding(7, 3, dtype=dtype, rng=rng) if embedding else None
    sizes = [(3 if embedding else 0) + 2, 4, 3][: layers + 1]
    cls = pl.LSTM if lstm else pl.PhasedLSTM
    stack = [cls(sizes[i], sizes[i + 1], dtype=dtype, rng=rng, backend=backend)
             for i in range(layers)]
    readout = pl.Dense(sizes[-1], 2, activation=activation, dtype=dtype, rng=rng)
    net = pl.Network(stack, readout, embedding=emb,
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


def random_layer_problem(rng, backend="numpy", *, dtype=np.float64, B=3, T=6, D=2, H=4,
                         r_on_range=(0.2, 0.9), lstm=False, leak=1e-3, t_range=(-5.0, 25.0),
                         pad_value=None):
    """A layer of ``backend`` with every parameter randomised, and inputs for it.

    The same ``rng`` state gives the same problem for every backend (the backend plays no part
    in drawing it), so build it once per backend from identically seeded generators, e.g.
    ``random_layer_problem(np.random.default_rng(seed), b, ...) for b in BACKENDS``.

    Parameters
    ----------
    rng : numpy.random.Generator
    backend : {'numpy', 'numba', 'cuda'}
    dtype : float32 or float64
    B, T, D, H : int
        Batch, steps, input features, units.
    r_on_range : (float, float)
        Open ratios are drawn from U(r_on_range); the rest as :func:`randomize`.
    lstm : bool
        The LSTM baseline (gate always open, timestamp as an extra input) instead.
    leak : float
        The Phased LSTM's training leak alpha.
    t_range : (float, float)
        Times are sorted U(t_range) per sample (negative times included by default).
    pad_value : float, optional
        Written into ``x`` and ``t`` beyond ``lengths`` (e.g. NaN, which no backend may read).

    Returns
    -------
    layer, x (B, T, D) of ``dtype``, t (B, T) float64, lengths (B,) int64
        ``lengths`` holds T and (for B >= 2) 1, the rest random in [0, T].
    """
    if lstm:
        layer = pl.LSTM(D, H, time_scale=0.1, dtype=dtype, backend=backend, rng=rng)
    else:
        layer = pl.PhasedLSTM(D, H, tau_exp_range=(0.0, 2.0), leak=leak, dtype=dtype,
                              backend=backend, rng=rng)
    randomize(layer, rng, r_on_range=r_on_range)
    x = rng.normal(size=(B, T, D)).astype(dtype)
    t = np.sort(rng.uniform(*t_range, (B, T)), axis=1)
    lengths = random_lengths(rng, B, T)
    if pad_value is not None:
        pad = np.arange(T)[None, :] >= lengths[:, None]
        x[pad] = pad_value
        t[pad] = pad_value
    return layer, x, t, lengths
