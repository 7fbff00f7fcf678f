"""The Phased GRU and the GRU baseline (plstm_np.gru): gradients against finite differences,
an independent plain-NumPy GRU, the Numba kernels against the reference, skipping counts,
padding, errors, the layer protocol."""
import json

import numba
import numpy as np
import pytest

from plstm_np import config
from plstm_np.backends.numba import gru_kernels
from plstm_np.gradcheck import numerical_gradient, relative_error
from plstm_np.gru import GRU, PhasedGRU
from plstm_np.time_gate import kink_distance, phase, time_gate

from conftest import assert_close, randomize, snapshot, times_off_kinks

BACKENDS = ("numpy", "numba")
#: Largest relative error (||a - n|| / (||a|| + ||n||)) of a float64 gradient check.
GRADCHECK_RTOL = 1e-6
#: Margin in phase kept between every (time, neuron) and a kink of the gate.
KINK_MARGIN = 0.02
#: Tolerance of the direct NumPy GRU of this file against the layer (float64 rounding).
DIRECT_RTOL = 1e-12


def phased_layer(backend, rng, *, dtype=np.float64, leak=1e-3, D=2, H=3,
                 r_on_range=(0.2, 0.9)):
    """A PhasedGRU with every parameter random (weights N(0, 0.7), r_on, s redrawn)."""
    layer = PhasedGRU(D, H, tau_exp_range=(0.0, 2.0), leak=leak, dtype=dtype, backend=backend,
                      rng=rng)
    return randomize(layer, rng, r_on_range=r_on_range)


def ragged_lengths(T, B):
    """Lengths T, 1, 0, then T - 2, ...: full, one step, empty and in between."""
    return np.array([T, 1, 0, T - 2, T - 1][:B], np.int64)


def inputs(layer, rng, B=4, T=5, off_kinks=True, pad_value=None):
    """x (B, T, D), per-sample sorted times (off the kinks, or U(-5, 25)), ragged lengths."""
    x = rng.normal(size=(B, T, layer.input_size)).astype(layer.dtype)
    if off_kinks:
        t = times_off_kinks(layer, rng, B, T, t_max=20.0, margin=KINK_MARGIN)
    else:
        t = np.sort(rng.uniform(-5.0, 25.0, (B, T)), axis=1)
    lengths = ragged_lengths(T, B)
    if pad_value is not None:
        pad = np.arange(T)[None, :] >= lengths[:, None]
        x[pad] = pad_value
        t[pad] = pad_value
    return x, t, lengths


def valid_mask(lengths, T):
    return np.arange(T)[None, :] < lengths[:, None]


# ----------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("leak, training", [(1e-3, True), (0.2, True), (0.0, True),
                                            (1e-3, False)])
def test_gradients_match_finite_differences(backend, leak, training):
    rng = np.random.default_rng(3)
    layer = phased_layer(backend, rng, leak=leak)
    x, t, lengths = inputs(layer, rng)
    h0 = rng.normal(0.0, 0.5, (len(t), layer.hidden_size))
    w = rng.normal(size=(*t.shape, layer.hidden_size))
    u = rng.normal(size=h0.shape)
    p = layer.params
    valid = valid_mask(lengths, t.shape[1])
    assert kink_distance(t[valid][:, None], p["tau"], p["s"], p["r_on"]).min() >= KINK_MARGIN

    def loss():
        h, (hT,), _ = layer.forward(x, t, lengths, (h0,), training=training)
        return float((h * w).sum() + (hT * u).sum())

    h, (hT,), cache = layer.forward(x, t, lengths, (h0,), training=training)
    grads = layer.backward(w, cache, (u,))
    arrays = dict(layer.params, x=x, h0=h0)
    assert set(grads) == set(arrays)
    for name, array in arrays.items():
        numeric = numerical_gradient(loss, array, eps=1e-4)
        assert np.linalg.norm(numeric) > 0, name  # a check that can fail
        err = relative_error(grads[name], numeric)
        assert err <= GRADCHECK_RTOL, f"{name}: relative error {err:.3g} [{backend}]"


@pytest.mark.parametrize("backend", BACKENDS)
def test_gru_gradients_match_finite_differences(backend):
    rng = np.random.default_rng(4)
    layer = randomize(GRU(2, 3, time_scale=0.1, backend=backend, rng=rng), rng)
    x, t, lengths = inputs(layer, rng, off_kinks=False)
    h0 = rng.normal(0.0, 0.5, (len(t), 3))
    w = rng.normal(size=(*t.shape, 3))

    def loss():
        return float((layer.forward(x, t, lengths, (h0,))[0] * w).sum())

    grads = layer.backward(w, layer.forward(x, t, lengths, (h0,))[2])
    assert grads["x"].shape == x.shape and set(grads) == {"Wx", "Wh", "b", "x", "h0"}
    for name, array in dict(layer.params, x=x, h0=h0).items():
        err = relative_error(grads[name], numerical_gradient(loss, array))
        assert err <= GRADCHECK_RTOL, f"{name}: relative error {err:.3g} [{backend}]"


# ----------------------------------------------------------------------------- independent GRU
def direct_phased_gru(params, x, t, lengths, h0, leak, gate_open):
    """The equations of plstm_np.gru, one sample and one step at a time, in a few lines."""
    Wx, Wh, b = params["Wx"], params["Wh"], params["b"]
    H = Wh.shape[0]

    def sig(a):
        return 1.0 / (1.0 + np.exp(-a))

    out = np.zeros((*t.shape, H))
    for i in range(len(t)):
        h = h0[i].copy()
        for j in range(t.shape[1]):
            if j < lengths[i]:
                r = sig(x[i, j] @ Wx[:, :H] + h @ Wh[:, :H] + b[:H])
                z = sig(x[i, j] @ Wx[:, H:2 * H] + h @ Wh[:, H:2 * H] + b[H:2 * H])
                n = np.tanh(x[i, j] @ Wx[:, 2 * H:] + (r * h) @ Wh[:, 2 * H:] + b[2 * H:])
                ht = (1 - z) * n + z * h
                k = 1.0 if gate_open else time_gate(t[i, j], params["tau"], params["s"],
                                                     params["r_on"], leak)
                h = k * ht + (1 - k) * h
            out[i, j] = h
    return out


@pytest.mark.parametrize("backend", BACKENDS)
def test_gru_without_time_input_is_a_plain_gru(backend):
    rng = np.random.default_rng(5)
    layer = randomize(GRU(2, 4, time_input=False, backend=backend, rng=rng), rng)
    x, t, lengths = inputs(layer, rng, off_kinks=False)
    h0 = rng.normal(size=(len(t), 4))
    h, (hT,), cache = layer.forward(x, t, lengths, (h0,))
    expected = direct_phased_gru(layer.params, x, t, lengths, h0, 0.0, True)
    assert_close(h, expected, "numpy", np.float64, "h")
    np.testing.assert_allclose(h, expected, rtol=0, atol=DIRECT_RTOL * np.abs(expected).max())
    assert cache["updates"] == lengths.sum() * 4  # dense: every valid triple


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("training", [True, False])
def test_phased_gru_is_the_gru_behind_the_time_gate(backend, training):
    rng = np.random.default_rng(6)
    layer = phased_layer(backend, rng, leak=0.05, H=4)
    x, t, lengths = inputs(layer, rng, off_kinks=False)
    h0 = rng.normal(size=(len(t), 4))
    h = layer.forward(x, t, lengths, (h0,), training=training)[0]
    expected = direct_phased_gru(layer.params, x, t, lengths, h0, 0.05 if training else 0.0,
                                 False)
    np.testing.assert_allclose(h, expected, rtol=0, atol=DIRECT_RTOL * np.abs(expected).max())


@pytest.mark.parametrize("backend", BACKENDS)
def test_gru_time_input_is_the_scaled_timestamp_as_a_last_feature(backend):
    rng = np.random.default_rng(7)
    timed = randomize(GRU(2, 3, time_scale=0.25, backend=backend, rng=rng), rng)
    plain = GRU(3, 3, time_input=False, backend=backend, rng=0)
    for name in plain.params:
        plain.params[name][...] = timed.params[name]
    assert timed.params["Wx"].shape == (3, 9)
    x, t, lengths = inputs(timed, rng, off_kinks=False)
    x_t = np.concatenate([x, (0.25 * t)[:, :, None]], axis=2)
    h, (hT,), cache = timed.forward(x, t, lengths)
    h2, (hT2,), cache2 = plain.forward(x_t, t, lengths)
    np.testing.assert_array_equal(h, h2)
    w = rng.normal(size=h.shape)
    g, g2 = timed.backward(w, cache), plain.backward(w, cache2)
    np.testing.assert_array_equal(g["x"], g2["x"][:, :, :2])
    np.testing.assert_array_equal(g["Wx"], g2["Wx"])


# ----------------------------------------------------------------------------- numba = numpy
# the kernels each case runs: (forward, backward) of a training forward (leak > 0 or the gate
# open: dense); after a leak-free forward the backward reruns it, skipping closed neurons
# ("sparse") or dense, as SPARSE_BACKWARD decides (patched to force each)
_KERNEL_CASES = [
    ((1e-3, True, False), None, ["forward_dense_kernel", "backward_dense_kernel"]),
    ((0.0, True, True), None, ["forward_dense_kernel", "backward_dense_kernel"]),
    ((0.0, True, False), "sparse", ["forward_kernel", "backward_kernel"]),
    ((1e-3, False, False), "sparse", ["forward_kernel", "backward_kernel"]),
    ((0.0, True, False), "dense", ["forward_kernel", "forward_dense_kernel",
                                   "backward_dense_kernel"]),
    ((1e-3, False, False), "dense", ["forward_kernel", "forward_dense_kernel",
                                     "backward_dense_kernel"]),
]


@pytest.mark.parametrize("variant", ["parallel", "serial"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case, rerun, expected_kernels", _KERNEL_CASES)
def test_numba_matches_numpy(dtype, case, rerun, expected_kernels, variant, monkeypatch):
    leak, training, gate_open = case
    # small problems run the serial kernels (the dense ones on one chunk): patch the
    # threshold to run the parallel ones
    monkeypatch.setattr(gru_kernels, "SERIAL_WORK", 0 if variant == "parallel" else np.inf)
    if rerun is not None:
        monkeypatch.setattr(gru_kernels, "SPARSE_BACKWARD", 1.0 if rerun == "sparse" else 0.0)
    calls, kernels = [], {}
    for name in ("forward_kernel", "backward_kernel", "forward_dense_kernel",
                 "backward_dense_kernel"):
        serial = variant == "serial" and "dense" not in name
        attribute = name + ("_serial" if serial else "")
        kernel = getattr(gru_kernels, attribute)
        kernels[name] = kernel
        monkeypatch.setattr(gru_kernels, attribute,
                            lambda *a, _k=kernel: calls.append(_k) or _k(*a))
    results = {}
    for backend in BACKENDS:
        rng = np.random.default_rng(11)
        if gate_open:
            layer = randomize(GRU(3, 6, time_scale=0.1, dtype=dtype, backend=backend,
                                  rng=rng), rng)
        else:
            layer = phased_layer(backend, rng, dtype=dtype, leak=leak, D=3, H=6,
                                 r_on_range=(0.1, 0.5))
        x, t, lengths = inputs(layer, rng, B=5, T=8, off_kinks=False, pad_value=np.nan)
        h0 = rng.normal(size=(5, 6)).astype(dtype)
        dh = rng.normal(size=(5, 8, 6)).astype(dtype)
        dhT = rng.normal(size=(5, 6)).astype(dtype)
        h, (hT,), cache = layer.forward(x, t, lengths, (h0,), training=training)
        grads = layer.backward(dh, cache, (dhT,))
        results[backend] = h, hT, grads, cache["updates"], cache["reset_gates"]
        if backend == "numba" and "order" in cache and cache["order"] is not None:
            threads = numba.get_num_threads()
            assert cache["nchunks"] == (min(5, threads) if variant == "parallel" else 1)
    (h, hT, grads, updates, resets), expected = results["numba"], results["numpy"]
    assert_close(h, expected[0], "numba", dtype, "h")
    assert_close(hT, expected[1], "numba", dtype, "h_T")
    assert_close(grads, expected[2], "numba", dtype, "grads")
    assert (updates, resets) == expected[3:]
    assert set(calls) == {kernels[name] for name in expected_kernels}
    for name, g in grads.items():
        assert np.isfinite(g).all() and np.abs(g).max() > 0, name


def test_numba_dense_kernels_with_rows_of_every_length_in_each_chunk(monkeypatch):
    # the dense kernels pack each chunk's rows by decreasing length: lengths 0 to T, in an
    # order that deals long and short rows to every chunk, on several chunks
    monkeypatch.setattr(gru_kernels, "SERIAL_WORK", 0)
    monkeypatch.setattr(numba, "get_num_threads", lambda: 3)
    results = {}
    for backend in BACKENDS:
        rng = np.random.default_rng(4)
        layer = phased_layer(backend, rng, D=2, H=5, r_on_range=(0.1, 0.5))
        B, T = 9, 7
        x = rng.normal(size=(B, T, 2))
        t = np.cumsum(rng.uniform(0.1, 1.0, (B, T)), axis=1)
        lengths = np.array([3, 7, 0, 1, 7, 5, 2, 6, 4])
        x[np.arange(T)[None, :] >= lengths[:, None]] = np.nan  # padding is never read
        h, (hT,), cache = layer.forward(x, t, lengths, training=True)
        grads = layer.backward(rng.normal(size=h.shape), cache, (rng.normal(size=hT.shape),))
        results[backend] = h, hT, grads
        if backend == "numba":
            assert cache["nchunks"] == 3
    for got, expected, what in zip(results["numba"], results["numpy"], ("h", "h_T", "grads")):
        assert_close(got, expected, "numba", np.float64, what)


def test_numba_phase_bitwise_equal_to_numpy():
    rng = np.random.default_rng(8)
    N = 3000
    tau = np.exp(rng.uniform(-3.0, 6.0, N))
    s = rng.uniform(-tau, tau)
    t = rng.uniform(-50.0, 1e4, N)
    m = N // 6
    t[:m] = s[:m] + tau[:m] * rng.integers(-20, 2000, m)  # on cycle boundaries
    t[m:2 * m] = np.nextafter(t[:m], np.inf)
    t[2 * m:3 * m] = np.nextafter(t[:m], -np.inf)
    t[3 * m:4 * m] = 1.7e12 + rng.uniform(0.0, 1e3, m)  # Unix milliseconds
    expected = phase(t, tau, s)
    got = np.array([gru_kernels.phase(a, b, c) for a, b, c in zip(t, tau, s)])
    np.testing.assert_array_equal(got, expected)


# ----------------------------------------------------------------------------- skipping, counts
@pytest.mark.parametrize("backend", BACKENDS)
def test_update_counts_are_the_open_triples(backend):
    rng = np.random.default_rng(9)
    H = 8
    layer = phased_layer(backend, rng, H=H, r_on_range=(0.05, 0.3))
    x, t, lengths = inputs(layer, rng, B=5, T=12, off_kinks=True)
    p = layer.params
    valid = valid_mask(lengths, t.shape[1])
    k = time_gate(t[:, :, None], p["tau"], p["s"], p["r_on"], 0.0)
    open_triples = int(np.count_nonzero(k[valid]))
    on_open_piece = phase(t[:, :, None], p["tau"], p["s"]) < p["r_on"]
    assert open_triples == int((on_open_piece & valid[:, :, None]).sum())
    assert 0 < open_triples < lengths.sum() * H  # some skipped, some computed
    steps_with_updates = int(((k > 0) & valid[:, :, None]).any(axis=2).sum())

    h, _, cache = layer.forward(x, t, lengths, training=False)  # leak 0: skipping
    assert cache["updates"] == open_triples
    assert cache["reset_gates"] == steps_with_updates * H
    _, _, cache = layer.forward(x, t, lengths, training=True)  # leak 1e-3: dense
    assert cache["updates"] == cache["reset_gates"] == lengths.sum() * H
    if backend == "numba":
        np.testing.assert_array_equal(cache["neuron_updates"],  # the dense kernel's
                                      np.repeat(lengths[:, None], H, axis=1))
        _, _, cache = layer.forward(x, t, lengths, training=False)
        np.testing.assert_array_equal(cache["update_counts"],
                                      (on_open_piece & valid[:, :, None]).sum((1, 2)))
        np.testing.assert_array_equal(cache["neuron_updates"],
                                      (on_open_piece & valid[:, :, None]).sum(1))


@pytest.mark.parametrize("backend", BACKENDS)
def test_closed_neurons_carry_their_state_exactly(backend):
    rng = np.random.default_rng(10)
    layer = phased_layer(backend, rng, H=6, r_on_range=(0.1, 0.3))
    x, t, lengths = inputs(layer, rng, B=3, T=10, off_kinks=False)
    lengths[:] = 10
    h0 = rng.normal(size=(3, 6))
    h = layer.forward(x, t, lengths, (h0,), training=False)[0]
    p = layer.params
    closed = time_gate(t[:, :, None], p["tau"], p["s"], p["r_on"], 0.0) == 0
    before = np.concatenate([h0[:, None], h[:, :-1]], axis=1)
    assert closed.any() and (~closed).any()
    np.testing.assert_array_equal(h[closed], before[closed])
    assert np.all(h[~closed] != before[~closed])


@pytest.mark.parametrize("backend", BACKENDS)
def test_phase_zero_is_updated_for_its_shift_gradient(backend):
    # at phi = 0 exactly, k = 0 on the rising piece but dk/ds = -2 / (r_on tau) != 0
    rng = np.random.default_rng(12)
    layer = phased_layer(backend, rng, leak=0.0, H=3)
    x, t, lengths = inputs(layer, rng, B=2, T=4, off_kinks=True)
    lengths[:] = 4
    t[0, 2] = layer.params["s"][1]  # neuron 1 at phase 0
    k = time_gate(t[:, :, None], layer.params["tau"], layer.params["s"],
                  layer.params["r_on"], 0.0)
    assert k[0, 2, 1] == 0
    h, _, cache = layer.forward(x, t, lengths, training=False)
    on_open_piece = phase(t[:, :, None], layer.params["tau"], layer.params["s"]) < \
        layer.params["r_on"]
    assert cache["updates"] == on_open_piece.sum() == np.count_nonzero(k) + 1
    dh = rng.normal(size=h.shape)
    grads = layer.backward(dh, cache)
    ref = PhasedGRU(2, 3, leak=0.0, rng=0)
    ref.params = {name: value.copy() for name, value in layer.params.items()}
    _, _, ref_cache = ref.forward(x, t, lengths, training=False)
    assert_close(grads, ref.backward(dh, ref_cache), "numba", np.float64, "grads")


# ----------------------------------------------------------------------------- state, padding
@pytest.mark.parametrize("backend", BACKENDS)
def test_final_state_is_the_last_valid_step_and_padding_is_inert(backend):
    rng = np.random.default_rng(13)
    layer = phased_layer(backend, rng, H=4)
    x, t, lengths = inputs(layer, rng, B=4, T=6, off_kinks=False)
    h0 = rng.normal(size=(4, 4))
    h, (hT,), cache = layer.forward(x, t, lengths, (h0,))
    for b, L in enumerate(lengths):
        np.testing.assert_array_equal(hT[b], h[b, L - 1] if L else h0[b])
        for j in range(L, 6):  # padded steps: the state untouched
            np.testing.assert_array_equal(h[b, j], hT[b])
    # garbage (NaN) in the padding, and more padded steps, change nothing
    pad = ~valid_mask(lengths, 6)
    xg, tg = x.copy(), t.copy()
    xg[pad], tg[pad] = np.nan, np.nan
    xg = np.concatenate([xg, np.full((4, 3, 2), np.nan)], axis=1)
    tg = np.concatenate([tg, np.full((4, 3), np.nan)], axis=1)
    h2, (hT2,), cache2 = layer.forward(xg, tg, lengths, (h0,))
    np.testing.assert_array_equal(hT2, hT)
    np.testing.assert_array_equal(h2[:, :6][~pad], h[~pad])
    dh = rng.normal(size=h.shape)
    dh[pad] = 0.0
    grads = layer.backward(dh, cache)
    grads2 = layer.backward(np.concatenate([dh, np.zeros((4, 3, 4))], axis=1), cache2)
    assert_close({k: v[:, :6] if k == "x" else v for k, v in grads2.items()}, grads,
                 "numpy", np.float64, "padded grads")
    assert np.all(grads2["x"][:, 6:] == 0) and np.all(grads["x"][pad] == 0)
    # an empty sequence passes its state (and its state's gradient) straight through
    g = layer.backward(np.zeros_like(h), cache, (np.ones((4, 4)),))
    np.testing.assert_array_equal(g["h0"][2], np.ones(4))


@pytest.mark.parametrize("backend", BACKENDS)
def test_chunked_run_equals_whole_run(backend):
    rng = np.random.default_rng(14)
    layer = phased_layer(backend, rng, H=4)
    x, t, _ = inputs(layer, rng, B=3, T=8, off_kinks=False)
    h0 = rng.normal(size=(3, 4))
    for training in (True, False):
        h, (hT,), _ = layer.forward(x, t, None, (h0,), training=training)
        ha, state, _ = layer.forward(x[:, :3], t[:, :3], None, (h0,), training=training)
        hb, (hTb,), _ = layer.forward(x[:, 3:], t[:, 3:], None, state, training=training)
        assert_close(np.concatenate([ha, hb], axis=1), h, "numpy", np.float64, "chunked h")
        assert_close(hTb, hT, "numpy", np.float64, "chunked h_T")


@pytest.mark.parametrize("backend", BACKENDS)
def test_inputs_are_never_modified(backend):
    rng = np.random.default_rng(15)
    layer = phased_layer(backend, rng)
    x, t, lengths = inputs(layer, rng, off_kinks=False, pad_value=np.nan)
    h0 = rng.normal(size=(4, 3))
    for training in (True, False):
        args = (x, t, lengths, h0, dict(layer.params))
        before = snapshot(args)
        h, (hT,), cache = layer.forward(x, t, lengths, (h0,), training=training)
        dh, dhT = rng.normal(size=h.shape), rng.normal(size=hT.shape)
        saved = snapshot((dh, dhT))
        layer.backward(dh, cache, (dhT,))
        for a, b in zip(before, args):
            np.testing.assert_equal(a, b)
        np.testing.assert_equal(saved, (dh, dhT))


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_inputs_name_the_argument(backend):
    rng = np.random.default_rng(16)
    layer = phased_layer(backend, rng)
    x, t, lengths = inputs(layer, rng, off_kinks=False)
    with pytest.raises(ValueError, match=r"x must have shape \(B, T, 2\)"):
        layer.forward(x[:, :, :1], t)
    with pytest.raises(ValueError, match="x must have 3 dimensions"):
        layer.forward(x[0], t)
    with pytest.raises(TypeError, match="x must have dtype float64"):
        layer.forward(x.astype(np.float32), t)
    bad = x.copy()
    bad[0, 1, 0] = np.inf
    with pytest.raises(ValueError, match=r"x has a non-finite value inf at index \(0, 1, 0\)"):
        layer.forward(bad, t)
    with pytest.raises(TypeError, match="t must have dtype float64"):
        layer.forward(x, t.astype(np.float32))
    with pytest.raises(ValueError, match="lengths must lie in"):
        layer.forward(x, t, np.array([9, 1, 0, 1]))
    with pytest.raises(ValueError, match=r"state\[0\] \(h0\) must have shape \(4, 3\)"):
        layer.forward(x, t, state=(np.zeros((4, 4)),))
    with pytest.raises(TypeError, match=r"state must be None or a tuple \(h0\)"):
        layer.forward(x, t, state=(np.zeros((4, 3)), np.zeros((4, 3))))
    with pytest.raises(TypeError, match=r"state must be None or a tuple \(h0\)"):
        layer.forward(x, t, state=np.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"state\[0\] \(h0\) has a non-finite value"):
        layer.forward(x, t, state=(np.full((4, 3), np.nan),))

    h, _, cache = layer.forward(x, t, lengths)
    with pytest.raises(ValueError, match=r"dh must have shape \(4, 5, 3\)"):
        layer.backward(h[:, :4], cache)
    with pytest.raises(TypeError, match="dh must have dtype float64"):
        layer.backward(h.astype(np.float32), cache)
    with pytest.raises(ValueError, match="dh has a non-finite value"):
        layer.backward(np.full_like(h, np.nan), cache)
    with pytest.raises(ValueError, match=r"dstate\[0\] \(h0\) must have shape"):
        layer.backward(h, cache, (np.zeros((4, 2)),))
    other = phased_layer(backend, rng)
    with pytest.raises(ValueError, match="another layer"):
        other.backward(h, cache)
    with pytest.raises(TypeError, match="cache must be the dict"):
        layer.backward(h, {"updates": 3})

    layer.params["tau"][1] = -1.0  # set by hand: refused before any kernel reads it
    with pytest.raises(ValueError, match=r"tau must be finite and > 0, got tau\[1\] = -1"):
        layer.forward(x, t)
    layer.params["tau"][1] = 1.0
    layer.params["r_on"][0] = 1.5
    with pytest.raises(ValueError, match=r"r_on must lie in \(0, 1\], got r_on\[0\]"):
        layer.forward(x, t)
    layer.params["r_on"][0] = 0.5
    layer.params["Wh"] = np.zeros((3, 12))
    with pytest.raises(ValueError, match=r"params\['Wh'\] must be an array of shape \(3, 9\)"):
        layer.forward(x, t)
    del layer.params["Wh"]
    with pytest.raises(ValueError, match="params must hold exactly"):
        layer.check_params(where="layer0: ")


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(hidden_size=0), ValueError, "hidden_size must be a positive int"),
    (dict(input_size=1.5), TypeError, "input_size must be a positive int"),
    (dict(dtype=np.int32), TypeError, "dtype must be float32 or float64"),
    (dict(backend="tpu"), ValueError, "backend must be one of"),
    (dict(leak=1.0), ValueError, "leak must lie in"),
    (dict(leak=-0.1), ValueError, "leak must be a finite number >= 0"),
    (dict(tau=-1.0), ValueError, "tau must be finite and > 0"),
    (dict(tau=np.ones(2)), ValueError, r"tau must be a scalar or have shape \(3,\)"),
    (dict(r_on=0.0), ValueError, r"r_on must lie in \(0, 1\]"),
    (dict(s=np.inf), ValueError, "s must be finite"),
    (dict(tau_exp_range=(3.0, 1.0)), ValueError, "tau_exp_range must be finite"),
    (dict(tau_exp_range=5), TypeError, "tau_exp_range must be a pair"),
    (dict(tau_min=0.0), ValueError, "tau_min must be > 0"),
    (dict(init_std=-1.0), ValueError, "init_std must be a finite number >= 0"),
    (dict(rng="seed"), TypeError, "rng must be"),
])
def test_bad_constructor_arguments(kwargs, error, words):
    args = dict(input_size=2, hidden_size=3)
    args.update(kwargs)
    with pytest.raises(error, match=words):
        PhasedGRU(**args)


def test_bad_gru_arguments():
    with pytest.raises(ValueError, match="time_scale must be a finite number"):
        GRU(2, 3, time_scale=np.nan)
    with pytest.raises(TypeError, match="time_input must be True or False"):
        GRU(2, 3, time_input="yes")


# ----------------------------------------------------------------------------- cuda forward
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("leak, training, gate_open", [(1e-3, True, False), (0.0, False, False),
                                                       (0.0, True, True)])
def test_cuda_forward_matches_numpy(dtype, leak, training, gate_open, monkeypatch):
    """On the GPU, or on the simulator (conftest.py): blocks of 2 threads, so the 6 neurons
    span thread strides; NaN padding, an empty and a one-step sequence."""
    monkeypatch.setattr(config, "CUDA_THREADS_PER_BLOCK", 2)
    results = {}
    for backend in ("numpy", "cuda"):
        rng = np.random.default_rng(12)
        if gate_open:
            layer = randomize(GRU(2, 6, time_scale=0.1, dtype=dtype, backend=backend,
                                  rng=rng), rng)
        else:
            layer = phased_layer(backend, rng, dtype=dtype, leak=leak, D=2, H=6,
                                 r_on_range=(0.1, 0.5))
        x, t, lengths = inputs(layer, rng, B=4, T=6, off_kinks=False, pad_value=np.nan)
        h0 = rng.normal(size=(4, 6)).astype(dtype)
        h, (hT,), cache = layer.forward(x, t, lengths, (h0,), training=training)
        results[backend] = h, hT, cache["updates"]
    (h, hT, updates), expected = results["cuda"], results["numpy"]
    assert_close(h, expected[0], "cuda", dtype, "h")
    assert_close(hT, expected[1], "cuda", dtype, "h_T")
    assert updates == expected[2]
    if not (gate_open or training):  # the skipping case: some neurons were skipped
        assert 0 < updates < lengths.sum() * 6


def test_cuda_forward_carries_closed_neurons_and_refuses_a_backward():
    rng = np.random.default_rng(14)
    layer = phased_layer("cuda", rng, H=5, r_on_range=(0.05, 0.2))
    x, t, lengths = inputs(layer, rng, B=3, T=5)
    h, _, cache = layer.forward(x, t, lengths, training=False)
    p = layer.params
    closed = phase(t[:, :, None], p["tau"], p["s"]) >= p["r_on"]
    h_prev = np.concatenate([np.zeros((3, 1, 5)), h[:, :-1]], axis=1)
    valid = valid_mask(lengths, 5)[:, :, None]
    assert (closed & valid).any()
    np.testing.assert_array_equal(h[closed & valid], h_prev[closed & valid])
    with pytest.raises(NotImplementedError, match="forward pass only"):
        layer.backward(np.ones_like(h), cache)


# ----------------------------------------------------------------------------- protocol
@pytest.mark.parametrize("cls, kwargs", [
    (PhasedGRU, dict(tau_exp_range=(1.0, 2.0), leak=0.01, learn_s=False, learn_r_on=True,
                     tau_min=0.01, r_on_min=0.02, init_std=0.2, dtype=np.float32,
                     backend="numba")),
    (PhasedGRU, {}),
    (GRU, dict(time_input=False, time_scale=0.5, init_std=0.3, dtype=np.float32)),
    (GRU, {}),
])
def test_config_round_trips(cls, kwargs):
    layer = cls(3, 5, rng=0, **kwargs)
    cfg = layer.config()
    assert cfg["kind"] == cls.__name__
    cfg = json.loads(json.dumps(cfg))
    rebuilt = cls(**{k: v for k, v in cfg.items() if k != "kind"})
    assert rebuilt.config() == cfg
    assert (rebuilt.frozen, rebuilt.bounds, rebuilt.dtype) == (layer.frozen, layer.bounds,
                                                               layer.dtype)
    assert {k: v.shape for k, v in rebuilt.params.items()} == \
        {k: v.shape for k, v in layer.params.items()}
    assert repr(layer) == repr(rebuilt)


def test_protocol_attributes_and_initialisation():
    layer = PhasedGRU(2, 50, tau_exp_range=(1.0, 2.0), r_on=0.1, learn_r_on=True,
                      dtype=np.float32, rng=1)
    assert (layer.input_size, layer.hidden_size, layer.output_size) == (2, 50, 50)
    assert layer.state_names == ("h",) and layer.state_sizes == (50,)
    assert layer.streamable is True and layer.dtype == np.float32
    p = layer.params
    assert {k: v.shape for k, v in p.items()} == {
        "Wx": (2, 150), "Wh": (50, 150), "b": (150,), "tau": (50,), "s": (50,), "r_on": (50,)}
    assert all(v.dtype == np.float32 for v in p.values())
    assert np.all(p["b"] == 0) and 0.05 < p["Wh"].std() < 0.15
    assert np.all((p["tau"] >= np.float32(np.e)) & (p["tau"] <= np.float32(np.e ** 2)))
    assert np.all((p["s"] >= 0) & (p["s"] <= p["tau"])) and np.all(p["r_on"] == np.float32(0.1))
    assert layer.frozen == set() and layer.bounds["tau"][0] == 1e-3
    assert PhasedGRU(2, 3).frozen == {"r_on"}
    hand = PhasedGRU(1, 3, tau=np.array([1.0, 2.0, 4.0]), s=0.5, rng=0)
    np.testing.assert_array_equal(hand.params["tau"], [1.0, 2.0, 4.0])
    np.testing.assert_array_equal(hand.params["s"], 0.5)
    gru = GRU(2, 4, rng=0)
    assert set(gru.params) == {"Wx", "Wh", "b"} and gru.params["Wx"].shape == (3, 12)
    assert gru.frozen == set() and gru.bounds == {}
    same = [PhasedGRU(2, 3, backend=b, rng=7).params for b in BACKENDS]
    for name in same[0]:
        np.testing.assert_array_equal(same[0][name], same[1][name])
