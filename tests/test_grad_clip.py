"""Gradient clipping in BPTT (Lasagne's ``grad_clipping``, as the authors trained): each
step's gate pre-activation gradient is clipped elementwise where it leaves the step, before
the peepholes are added; the same on every backend, and off by default."""
import copy

import numpy as np
import pytest

import plstm_np as pl
from plstm_np.backends.cuda.training import CudaTrainer
from plstm_np.time_gate import time_gate_with_grads

from conftest import (
    BACKENDS,
    DTYPES,
    assert_close,
    make_batch,
    make_network,
    random_layer_problem,
)

CLIP = 0.05  # small enough that many pre-activation gradients are clipped


def sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def per_sample_bptt(layer, x, t, lengths, dh_seq, clip, training):
    """BPTT written independently of the package, one sample and one step at a time, as
    Lasagne's graph computes it: ``gates = x Wx + b + h Wh`` goes through ``grad_clip``,
    then the peephole terms are added. Returns the gradients and how many of the
    pre-activation gradients were clipped, out of how many."""
    p = {k: v.astype(np.float64) for k, v in layer.params.items()}
    Wx, Wh, b = p["Wx"], p["Wh"], p["b"]
    w_ci, w_cf, w_co = p["w_ci"], p["w_cf"], p["w_co"]
    x = layer.gate_inputs(x, t).astype(np.float64)
    B, T, D = x.shape
    H = Wh.shape[0]
    g = {k: np.zeros_like(v) for k, v in p.items()}
    g.update(x=np.zeros((B, T, D)), h0=np.zeros((B, H)), c0=np.zeros((B, H)))
    clipped = total = 0
    for s_ in range(B):
        L = int(lengths[s_])
        if layer.gate_open:
            k = np.ones((L, H))
        else:
            gate = time_gate_with_grads(t[s_, :L, None], p["tau"], p["s"], p["r_on"],
                                        layer.leak if training else 0.0)
            k = gate.k
        h, c, steps = np.zeros(H), np.zeros(H), []
        for j in range(L):
            a = x[s_, j] @ Wx + b + h @ Wh
            i = sigmoid(a[:H] + w_ci * c)
            f = sigmoid(a[H:2 * H] + w_cf * c)
            gg = np.tanh(a[2 * H:3 * H])
            ct = f * c + i * gg
            o = sigmoid(a[3 * H:] + w_co * ct)
            steps.append((h, c, i, f, gg, ct, o))
            h = k[j] * o * np.tanh(ct) + (1 - k[j]) * h
            c = k[j] * ct + (1 - k[j]) * c
        dh = dh_seq[s_, L:].sum(0).astype(np.float64)  # padded steps carry h_{L-1}
        dc = np.zeros(H)
        for j in reversed(range(L)):
            dh = dh + dh_seq[s_, j]
            hp, cp, i, f, gg, ct, o = steps[j]
            kj = k[j]
            th = np.tanh(ct)
            dk = dc * (ct - cp) + dh * (o * th - hp)
            if not layer.gate_open:
                g["tau"] += dk * gate.dk_dtau[j]
                g["s"] += dk * gate.dk_ds[j]
                g["r_on"] += dk * gate.dk_dr_on[j]
            dct = dc * kj + dh * kj * o * (1 - th ** 2)
            do_pre = dh * kj * th * o * (1 - o)  # of (gates_o + w_co ct)
            dct += do_pre * w_co
            g["w_co"] += do_pre * ct
            di_pre = dct * gg * i * (1 - i)
            df_pre = dct * cp * f * (1 - f)
            dg_pre = dct * i * (1 - gg ** 2)
            dc_prev = dc * (1 - kj) + dct * f + di_pre * w_ci + df_pre * w_cf
            g["w_ci"] += di_pre * cp
            g["w_cf"] += df_pre * cp
            da = np.concatenate([di_pre, df_pre, dg_pre, do_pre])  # reaches `gates`
            if clip is not None:
                clipped += int((np.abs(da) > clip).sum())
                da = np.clip(da, -clip, clip)
            total += da.size
            g["Wx"] += np.outer(x[s_, j], da)
            g["Wh"] += np.outer(hp, da)
            g["b"] += da
            g["x"][s_, j] = Wx @ da
            dh = dh * (1 - kj) + Wh @ da
            dc = dc_prev
        g["h0"][s_], g["c0"][s_] = dh, dc
    if layer.gate_open and getattr(layer, "time_input", False):
        g["x"] = g["x"][:, :, :layer.input_size]
    return g, clipped, total


@pytest.mark.parametrize("lstm", [False, True])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("clip", [None, CLIP])
def test_reference_clips_as_lasagne_does(lstm, training, clip):
    """The reference against the independent per-sample BPTT, with clipping active on part
    of the entries (and off: which checks the independent version itself)."""
    rng = np.random.default_rng(3)
    layer, x, t, lengths = random_layer_problem(rng, lstm=lstm, B=3, T=6, D=2, H=4)
    layer.grad_clip = clip
    h, _, cache = layer.forward(x, t, lengths, training=training)
    dh = 3.0 * rng.normal(size=h.shape)
    grads = layer.backward(dh, cache)
    expected, clipped, total = per_sample_bptt(layer, x, t, lengths, dh, clip, training)
    if clip is not None:
        assert 0 < clipped < total, (clipped, total)  # the clip is active, but not everywhere
    for name, value in expected.items():
        np.testing.assert_allclose(grads[name], value, rtol=1e-10, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("backend", BACKENDS[1:])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lstm, training, r_on_range", [
    (False, True, (0.2, 0.9)),     # training: the dense backward
    (False, False, (0.02, 0.1)),   # leak-free, few updates: Numba's sparse backward
    (False, False, (0.3, 0.9)),    # leak-free, many updates: the dense rerun
    (True, True, (0.2, 0.9)),      # the LSTM baseline
])
def test_every_backend_clips_like_the_reference(backend, dtype, lstm, training, r_on_range):
    problems = [random_layer_problem(np.random.default_rng(8), b, dtype=dtype, lstm=lstm,
                                     r_on_range=r_on_range, B=5, T=12, H=6)
                for b in ("numpy", backend)]
    dh = 3.0 * np.random.default_rng(9).normal(size=(5, 12, 6)).astype(dtype)
    grads, counts = [], []
    for layer, x, t, lengths in problems:
        layer.grad_clip = CLIP
        _, _, cache = layer.forward(x, t, lengths, training=training)
        grads.append(layer.backward(dh, cache))
        counts.append(cache.get("backward_updates"))
    unclipped_layer, x, t, lengths = problems[0]
    unclipped_layer.grad_clip = None
    unclipped = unclipped_layer.backward(dh, unclipped_layer.forward(x, t, lengths,
                                                                     training=training)[2])
    assert not np.allclose(unclipped["Wh"], grads[0]["Wh"])  # clipping changed something
    assert_close(grads[1], grads[0], backend, dtype, "clipped gradients")
    if backend == "numba" and r_on_range == (0.02, 0.1):
        H = 6
        assert counts[1] < 0.2 * lengths.sum() * H  # the sparse kernel ran


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("training", [True, False])
def test_a_clip_above_every_gradient_changes_nothing(backend, training):
    """None and a clip that never acts give bitwise the same gradients (so the default,
    unclipped path is the one every gradient check verifies)."""
    out = []
    for clip in (None, 1e30):
        layer, x, t, lengths = random_layer_problem(np.random.default_rng(4), backend)
        layer.grad_clip = clip
        h, _, cache = layer.forward(x, t, lengths, training=training)
        out.append(layer.backward(np.random.default_rng(5).normal(size=h.shape), cache))
    for name in out[0]:
        assert out[0][name].tobytes() == out[1][name].tobytes(), name


def test_cuda_trainer_clips_like_the_host():
    rng = np.random.default_rng(6)
    net = make_network(rng, embedding=False)
    net.readout.params["W"] *= 50.0  # large output gradients, so that the clip acts
    for layer in net.layers:
        layer.grad_clip = CLIP
    batch = make_batch(net, rng, B=3, T=5)
    _, g_ref = net.loss_and_grads(batch)
    trainer = CudaTrainer(copy.deepcopy(net), lr=0.01)
    _, g = trainer.loss_and_grads(batch)
    g = {name: value.copy_to_host() for name, value in g.items()}
    g_ref = {name: g_ref[name] for name in net.params}  # the trainer's: parameters only
    assert_close(g, g_ref, "cuda", np.float64, "trainer gradients")
    for layer in net.layers:
        layer.grad_clip = None
    assert not np.allclose(net.loss_and_grads(batch)[1]["layer0.Wx"], g_ref["layer0.Wx"])


@pytest.mark.parametrize("value, error", [(0, ValueError), (-1.0, ValueError),
                                          (np.nan, ValueError), (np.inf, ValueError),
                                          ("10", TypeError), (True, TypeError)])
def test_bad_grad_clip_is_refused(value, error):
    for cls in (pl.PhasedLSTM, pl.LSTM):
        with pytest.raises(error, match="grad_clip must be None"):
            cls(2, 3, grad_clip=value)
        layer = cls(2, 3, grad_clip=10)
        assert layer.grad_clip == 10.0 and type(layer.grad_clip) is float
        with pytest.raises(error, match="grad_clip must be None"):  # also when set later
            layer.grad_clip = value
        assert layer.grad_clip == 10.0


def test_gradient_check_sees_the_clip():
    """Without clipping (None, or a clip that never acts) the BPTT gradients are the true
    ones; an active clip is what the network's gradients carry, so they are not."""
    rng = np.random.default_rng(7)
    net = make_network(rng)
    batch = make_batch(net, rng, margin=0.02)
    for clip in (None, 1e30):
        for layer in net.layers:
            layer.grad_clip = clip
        assert pl.check_gradients(net, batch).worst <= 1e-6, clip
    for layer in net.layers:
        layer.grad_clip = 1e-3
    assert pl.check_gradients(net, batch).worst > 1e-2


def test_grad_clip_is_saved_and_loaded(tmp_path):
    net = pl.Network([pl.PhasedLSTM(1, 3, grad_clip=10.0, rng=0),
                      pl.LSTM(3, 3, grad_clip=2.5, rng=1)], pl.Dense(3, 2, rng=2))
    net.save(tmp_path / "a.npz")
    loaded = pl.load(tmp_path / "a.npz")
    assert [layer.grad_clip for layer in loaded.layers] == [10.0, 2.5]
    plain = pl.Network([pl.PhasedLSTM(1, 3, rng=0)], pl.Dense(3, 2, rng=2))
    assert "grad_clip" not in plain.layers[0].config()  # as 0.1.0 wrote it
    plain.save(tmp_path / "b.npz")
    assert pl.load(tmp_path / "b.npz").layers[0].grad_clip is None
