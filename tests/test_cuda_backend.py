"""The cuda backend against the NumPy reference: forward, every gradient, update counts,
stacks, device-resident training with Adam, batched streaming inference, and the error
when no GPU is there.

On a machine without an NVIDIA GPU these run on Numba's CUDA simulator: conftest.py sets
``NUMBA_ENABLE_CUDASIM=1`` before anything imports numba.cuda (numba-cuda reads it once, at
its import). On a machine with a GPU the same tests run on the GPU. Threads per block and
tiles are patched small so the tiny problems span several blocks and thread strides.
"""
import copy
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import plstm_np as pl
from plstm_np import reference
from plstm_np.backends import cuda as cb
from plstm_np.backends import get_backend
from plstm_np.backends.cuda.training import CudaStreamer, CudaTrainer
from plstm_np.gradcheck import relative_error
from plstm_np.time_gate import time_gate

from conftest import (
    assert_close,
    make_batch,
    make_network,
    random_lengths,
    randomize,
    small_cuda_launches,
    tolerance,
)

# No skip: without a GPU the simulator must work (conftest.py selects it), so an unavailable
# backend is a failure here (BackendUnavailableError at import), never a silently untested one.
assert get_backend("cuda") is cb

# Against the reference: conftest.assert_close with conftest.TOLERANCES["cuda", dtype].
# Training runs several Adam steps, float32 rounding differences grow a little: the relative
# error ||a - b|| / (||a|| + ||b||) of the parameters after them, per dtype
TRAIN_TOL = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-4}
DTYPES = [np.float64, np.float32]


@pytest.fixture(autouse=True)
def small_launches(monkeypatch):
    """Blocks of 2 threads, 4x4 tiles, the weight product split over many blocks."""
    small_cuda_launches(monkeypatch)


def random_problem(rng, dtype, *, B=4, T=5, D=2, H=5, gate_open=False, r_on_range=(0.2, 0.8)):
    """Random parameters (all of them), inputs, times, lengths (0 and T included), state;
    padding filled with NaN, which no backend may read."""
    layer = (pl.LSTM(D, H, time_input=False, dtype=dtype, rng=rng) if gate_open
             else pl.PhasedLSTM(D, H, tau_exp_range=(0.0, 2.0), dtype=dtype, rng=rng))
    params = randomize(layer, rng, r_on_range=r_on_range).params
    x = rng.normal(size=(B, T, D)).astype(dtype)
    t = np.sort(rng.uniform(0.0, 12.0, (B, T)), axis=1)
    lengths = random_lengths(rng, B, T)
    lengths[-1] = 0
    pad = np.arange(T)[None, :] >= lengths[:, None]
    x[pad] = np.nan
    t[pad] = np.nan
    h0 = rng.normal(size=(B, H)).astype(dtype)
    c0 = rng.normal(size=(B, H)).astype(dtype)
    return params, x, t, lengths, h0, c0


def expected_updates(params, t, lengths, leak, gate_open):
    """Independent count: valid (sample, step, neuron) triples, only those with k != 0 when
    leak == 0 (the skipped ones are exactly the closed neurons)."""
    B, T = t.shape
    H = params["Wh"].shape[0]
    valid = np.arange(T)[None, :] < lengths[:, None]
    if gate_open or leak > 0:
        return int(valid.sum()) * H
    k = time_gate(np.where(valid, t, 0.0)[:, :, None], params["tau"].astype(np.float64),
                  params["s"].astype(np.float64), params["r_on"].astype(np.float64), 0.0)
    return int((valid[:, :, None] & (k != 0)).sum())


def assert_train_close(actual, expected, tol, what):
    assert actual.shape == expected.shape, what
    assert actual.dtype == expected.dtype, what
    err = relative_error(actual, expected)
    assert err <= tol, f"{what}: relative error {err:.3g} > {tol:.1g}"


CASES = [(np.float64, 1e-3, False), (np.float64, 0.0, False), (np.float64, 0.0, True),
         (np.float32, 1e-3, False), (np.float32, 0.0, False), (np.float32, 0.0, True)]


@pytest.mark.parametrize("dtype,leak,gate_open", CASES)
def test_layer_matches_reference(dtype, leak, gate_open):
    rng = np.random.default_rng(7)
    params, x, t, lengths, h0, c0 = random_problem(rng, dtype, gate_open=gate_open)
    args = (params, x, t, lengths, h0, c0, leak, gate_open)
    before = copy.deepcopy(args)
    h_ref, (hT_ref, cT_ref), cache_ref = reference.layer_forward(*args)
    h, (hT, cT), cache = cb.layer_forward(*args)
    assert_close(h, h_ref, "cuda", dtype, "h")
    assert_close(hT, hT_ref, "cuda", dtype, "h_T")
    assert_close(cT, cT_ref, "cuda", dtype, "c_T")
    assert cache["backend"] == "cuda"
    assert cache["updates"] == expected_updates(params, t, lengths, leak, gate_open)

    dh = rng.normal(size=h.shape).astype(dtype)
    dstate = (rng.normal(size=hT.shape).astype(dtype), rng.normal(size=cT.shape).astype(dtype))
    g_ref = reference.layer_backward(dh, dstate, cache_ref)
    g = cb.layer_backward(dh, dstate, cache)
    assert set(g) == set(g_ref)
    for name in g_ref:
        assert_close(g[name], g_ref[name], "cuda", dtype, f"grad {name}")
    # inputs untouched (NaN padding compares equal with equal_nan)
    for new, old in zip(args, before):
        if isinstance(new, dict):
            for name in new:
                np.testing.assert_array_equal(new[name], old[name])
        elif isinstance(new, np.ndarray):
            np.testing.assert_array_equal(new, old)


def test_zero_leak_really_skips_and_counts_like_numba():
    """Narrow open windows: most updates are skipped, and the count is exact."""
    rng = np.random.default_rng(3)
    params, x, t, lengths, h0, c0 = random_problem(rng, np.float64, B=4, T=6,
                                                  r_on_range=(0.05, 0.2))
    dense = expected_updates(params, t, lengths, 1e-3, False)
    _, _, cache0 = cb.layer_forward(params, x, t, lengths, h0, c0, 0.0, False)
    _, _, cache1 = cb.layer_forward(params, x, t, lengths, h0, c0, 1e-3, False)
    assert cache0["updates"] == expected_updates(params, t, lengths, 0.0, False)
    assert cache0["updates"] < dense // 2
    assert cache1["updates"] == dense
    # No escape when the numba backend cannot load: the cuda backend is built on numba, so
    # here it must load, and a failure to is a failure of this test (it used to return).
    nb = get_backend("numba")
    for leak, cache in ((0.0, cache0), (1e-3, cache1)):
        _, _, cache_nb = nb.layer_forward(params, x, t, lengths, h0, c0, leak, False)
        assert cache_nb["updates"] == cache["updates"]


@pytest.mark.parametrize("dtype", DTYPES)
def test_network_stack_matches_reference(dtype):
    """Two stacked layers and the read-out through the public Network, backend='cuda'."""
    rng = np.random.default_rng(11)
    net = make_network(rng, dtype=dtype, embedding=False)
    batch = make_batch(net, rng, B=3, T=4)
    loss_ref, g_ref = net.loss_and_grads(batch)
    net.backend = "cuda"
    loss, g = net.loss_and_grads(batch)
    rtol = tolerance("cuda", dtype)[0]
    assert abs(loss - loss_ref) <= rtol * abs(loss_ref) * 10
    assert_close(g, g_ref, "cuda", dtype, "gradient")


@pytest.mark.parametrize("dtype,lstm", [(np.float64, False), (np.float32, False),
                                        (np.float64, True)])
def test_trainer_matches_host_adam(dtype, lstm):
    """Steps of the device-resident trainer equal reference forward/backward + host Adam."""
    rng = np.random.default_rng(5)
    net = make_network(rng, dtype=dtype, embedding=False, lstm=lstm)
    net_gpu = copy.deepcopy(net)
    initial = copy.deepcopy(net.params)
    batches = [make_batch(net, rng, B=3, T=4) for _ in range(3)]
    opt = pl.Adam(net, lr=0.05)
    trainer = CudaTrainer(net_gpu, lr=0.05)
    tol = TRAIN_TOL[np.dtype(dtype)]
    for batch in batches:
        loss_ref, grads = net.loss_and_grads(batch)
        opt.step(grads)
        loss = trainer.step(batch)
        assert abs(loss - loss_ref) <= tol * max(1.0, abs(loss_ref))
    assert trainer.sync_to_host() is net_gpu
    for name, value in net.params.items():
        assert_train_close(net_gpu.params[name], value, tol, name)
    # the parameters moved (so the comparison above is not trivial), and the bounds hold
    assert not np.allclose(net_gpu.params["layer0.Wh"], initial["layer0.Wh"])
    for name, (low, high) in net_gpu.bounds.items():
        assert np.all(net_gpu.params[name] >= low) and np.all(net_gpu.params[name] <= high)


def test_trainer_keeps_tau_positive():
    """A huge learning rate drives tau against its floor: the projection holds it there."""
    rng = np.random.default_rng(9)
    net = make_network(rng, embedding=False, layers=1)
    batch = make_batch(net, rng, B=3, T=4)
    trainer = CudaTrainer(net, lr=50.0)
    for _ in range(2):
        trainer.step(batch)
    trainer.sync_to_host()
    layer = net.layers[0]
    assert np.all(layer.params["tau"] >= layer.tau_min)
    assert np.all((layer.params["r_on"] >= layer.r_on_min) & (layer.params["r_on"] <= 1.0))


@pytest.mark.parametrize("dtype", DTYPES)
def test_streamer_matches_reference_whole_and_chunked(dtype):
    rng = np.random.default_rng(21)
    net = make_network(rng, dtype=dtype, embedding=False)
    for layer in net.layers:  # narrow windows, so that skipping matters
        layer.params["r_on"][:] = rng.uniform(0.05, 0.3, layer.hidden_size)
    B, T = 4, 6
    t = np.sort(rng.uniform(0.0, 15.0, (B, T)), axis=1)
    x = rng.normal(size=(B, T, net.n_features)).astype(dtype)
    lengths = np.array([T, 1, 4, 5], np.int64)
    out_ref, _, cache_ref = net.forward(x, t, lengths, training=False)

    whole = CudaStreamer(net, B)
    assert_close(whole.push(x, t, lengths), out_ref, "cuda", dtype, "whole")
    hidden = [layer.hidden_size for layer in net.layers]
    inputs = t  # every layer sees the same times; count each layer's closed neurons
    expected = [expected_updates(layer.params, inputs, lengths, 0.0, False) for layer in net.layers]
    assert whole.updates == expected
    assert whole.events == int(lengths.sum())
    assert whole.updates_per_neuron == [u / h / B for u, h in zip(expected, hidden)]

    chunked = CudaStreamer(net, B)
    cut = 3  # first chunk: steps [0, 3), second: the rest; lengths split accordingly
    first = np.minimum(lengths, cut)
    chunked.push(x[:, :cut], t[:, :cut], first)
    rest_x, rest_t = x[:, cut:].copy(), t[:, cut:].copy()
    rest = lengths - first
    out = chunked.push(rest_x, rest_t, rest)
    assert_close(out, out_ref, "cuda", dtype, "chunked")
    assert chunked.updates == expected


def test_streamer_and_trainer_bad_input():
    rng = np.random.default_rng(2)
    net = make_network(rng, embedding=False, layers=1)
    streamer = CudaStreamer(net, 3)
    with pytest.raises(ValueError, match="streams"):
        streamer.push(np.zeros((2, 4, net.n_features)), np.zeros((2, 4)))
    with pytest.raises(TypeError, match="x"):
        streamer.push(np.zeros((3, 4, net.n_features), np.float32), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="n_streams"):
        CudaStreamer(net, 0)
    with pytest.raises(ValueError, match="embedding"):
        CudaTrainer(make_network(rng, embedding=True, layers=1))
    with pytest.raises(ValueError, match="lr"):
        CudaTrainer(net, lr=0.0)
    layer = cb.DeviceLayer(net.layers[0].params, False)
    d = lambda a: cb.to_device(a)  # noqa: E731
    fwd = cb.forward_device(layer, d(np.zeros((1, 2, net.n_features))), d(np.zeros((1, 2))),
                            d(np.array([2])), d(np.zeros((1, 4))), d(np.zeros((1, 4))), 0.0,
                            store_gates=False)
    with pytest.raises(ValueError, match="store_gates"):
        cb.backward_device(fwd, d(np.zeros((1, 2, 4))))
    # parameters go to the device checked: the kernels would read any value
    net.layers[0].params["tau"][0] = -1.0
    with pytest.raises(ValueError, match=r"layer0: tau must be finite and > 0"):
        CudaTrainer(net)
    with pytest.raises(ValueError, match=r"layer0: tau must be finite and > 0"):
        CudaStreamer(net, 3)


def _run(code):
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env=env, timeout=300)


def test_missing_gpu_gives_clear_error():
    """Without the simulator and with no GPU (patched), backend='cuda' says why."""
    proc = _run("""
        from numba import cuda
        cuda.is_available = lambda: False
        cuda.cuda_error = lambda: "CUDA driver library cannot be found (patched)"
        import numpy as np
        import plstm_np as pl
        layer = pl.PhasedLSTM(1, 3, backend="cuda", rng=0)   # constructing is fine
        try:
            layer.forward(np.zeros((1, 2, 1)), np.zeros((1, 2)))
        except pl.BackendUnavailableError as err:
            print("ERROR:", err)
        else:
            print("NO ERROR")
    """)
    assert proc.returncode == 0, proc.stderr
    assert "ERROR:" in proc.stdout, proc.stdout
    assert "no CUDA GPU was found" in proc.stdout
    assert "CUDA driver library cannot be found (patched)" in proc.stdout


def test_missing_numba_cuda_gives_clear_error():
    """Without numba-cuda, importing plstm_np works and backend='cuda' says what to install."""
    proc = _run("""
        import sys
        sys.modules["numba.cuda"] = None          # makes `from numba import cuda` fail
        import plstm_np as pl
        try:
            pl.get_backend("cuda")
        except pl.BackendUnavailableError as err:
            print("ERROR:", err)
        else:
            print("NO ERROR")
    """)
    assert proc.returncode == 0, proc.stderr
    assert "ERROR:" in proc.stdout, proc.stdout
    assert "numba-cuda" in proc.stdout and "not installed" in proc.stdout
