"""Bidirectional layers: the reversal within lengths, the backward half against a hand-made
reversed run, gradients against finite differences, backends, merge modes and bad halves."""
import numpy as np
import pytest

import plstm_np as pl
from plstm_np.bidirectional import reverse_within_lengths, reversed_times
from plstm_np.gradcheck import numerical_gradient, relative_error
from plstm_np.time_gate import kink_distance

from conftest import randomize, times_off_kinks

NUMERIC_BACKENDS = ("numpy", "numba")


def _halves(kind, backend, rng, D=2, H=3, dtype=np.float64):
    def make():
        if kind == "lstm":
            return pl.LSTM(D, H, dtype=dtype, backend=backend, rng=rng)
        if kind == "gru":
            return pl.GRU(D, H, dtype=dtype, backend=backend, rng=rng)
        return pl.PhasedLSTM(D, H, r_on=1.0, dtype=dtype, backend=backend, rng=rng)
    return make(), make()


def test_reverse_within_lengths_is_an_involution_that_keeps_padding():
    a = np.arange(2 * 4).reshape(2, 4, 1).astype(float)
    lengths = np.array([3, 0])
    r = reverse_within_lengths(a, lengths)
    assert r[0, :, 0].tolist() == [2, 1, 0, 3] and r[1, :, 0].tolist() == [4, 5, 6, 7]
    assert np.array_equal(reverse_within_lengths(r, lengths), a)
    t = np.array([[2.0, 5.0, 9.0, 9.5]])
    assert reversed_times(t, np.array([3])).tolist() == [[0.0, 4.0, 7.0, 9.5]]


@pytest.mark.parametrize("backend", NUMERIC_BACKENDS)
@pytest.mark.parametrize("kind", ["lstm", "plstm", "gru"])
@pytest.mark.parametrize("merge", ["concat", "sum"])
def test_the_backward_half_equals_the_layer_run_on_a_hand_reversed_sequence(backend, kind,
                                                                           merge):
    rng = np.random.default_rng(1)
    fw, bw = _halves(kind, backend, rng)
    layer = pl.Bidirectional(fw, bw, merge=merge)
    B, T = 3, 5
    x = rng.normal(size=(B, T, 2))
    t = np.sort(rng.uniform(0, 20, (B, T)), axis=1)
    lengths = np.array([5, 2, 4])
    h, state, _ = layer.forward(x, t, lengths, training=False)
    h_fw = fw.forward(x, t, lengths, training=False)[0]
    for b in range(B):  # each sample alone, reversed by hand over its own length
        L = lengths[b]
        xr = np.array([x[b, L - 1 - j] for j in range(L)])[None]
        tr = np.array([t[b, L - 1] - t[b, L - 1 - j] for j in range(L)])[None]
        hb, sb, _ = bw.forward(xr, tr, training=False)
        hb = hb[0, ::-1]  # back in input order
        expect = (np.concatenate([h_fw[b, :L], hb], axis=1) if merge == "concat"
                  else h_fw[b, :L] + hb)
        np.testing.assert_allclose(h[b, :L], expect, rtol=1e-12, atol=1e-14)
        n_fw = len(fw.state_names)
        for k in range(len(bw.state_names)):
            np.testing.assert_allclose(state[n_fw + k][b], sb[k][0], rtol=1e-12, atol=1e-14)
    assert h.shape == (B, T, 6 if merge == "concat" else 3)


@pytest.mark.parametrize("backend", NUMERIC_BACKENDS)
@pytest.mark.parametrize("kind", ["lstm", "plstm", "gru"])
@pytest.mark.parametrize("training", [True, False])
def test_gradients_match_finite_differences(backend, kind, training):
    rng = np.random.default_rng(2)
    fw, bw = _halves(kind, backend, rng)
    layer = pl.Bidirectional(fw, bw)
    randomize(layer, rng)
    B, T = 3, 4
    x = rng.normal(size=(B, T, 2))
    lengths = np.array([4, 1, 3])
    t = np.sort(rng.uniform(0, 20, (B, T)), axis=1)
    while kind == "plstm":  # both halves' times (t and t_last - t) off every gate kink
        t = times_off_kinks(fw, rng, B, T, margin=0.02)
        tr = reversed_times(t, lengths)[np.arange(T)[None] < lengths[:, None]]
        if kink_distance(tr[:, None], *(bw.params[k] for k in ("tau", "s", "r_on"))).min() > 0.02:
            break
    state = tuple(rng.normal(0, 0.5, (B, n)) for n in layer.state_sizes)
    w = rng.normal(size=(B, T, layer.output_size))
    u = tuple(rng.normal(size=(B, n)) for n in layer.state_sizes)

    def loss():
        h, final, _ = layer.forward(x, t, lengths, state, training=training)
        return float((h * w).sum() + sum((s * v).sum() for s, v in zip(final, u)))

    _, _, cache = layer.forward(x, t, lengths, state, training=training)
    grads = layer.backward(w, cache, u)
    arrays = dict(layer.params, x=x, **{f"{n}0": s for n, s in zip(layer.state_names, state)})
    assert set(grads) == set(arrays)
    for name, a in arrays.items():
        err = relative_error(grads[name], numerical_gradient(loss, a, 1e-5))
        assert err <= 1e-6, (name, err)


def test_numba_equals_numpy():
    results = []
    for backend in NUMERIC_BACKENDS:
        rng = np.random.default_rng(3)
        layer = pl.Bidirectional(*_halves("plstm", backend, rng))
        x = rng.normal(size=(2, 6, 2))
        t = np.sort(rng.uniform(0, 20, (2, 6)), axis=1)
        h, _, cache = layer.forward(x, t, np.array([6, 3]))
        results.append((h, layer.backward(np.ones_like(h), cache)))
    (h0, g0), (h1, g1) = results
    np.testing.assert_allclose(h1, h0, rtol=1e-12, atol=1e-14)
    for name in g0:
        np.testing.assert_allclose(g1[name], g0[name], rtol=1e-10, atol=1e-13, err_msg=name)


def test_parameters_are_the_halves_own_arrays_and_the_backend_is_shared():
    rng = np.random.default_rng(4)
    fw, bw = _halves("plstm", "numpy", rng)
    layer = pl.Bidirectional(fw, bw)
    assert layer.params["fw.Wx"] is fw.params["Wx"] and layer.params["bw.tau"] is bw.params["tau"]
    assert layer.state_names == ("fw_h", "fw_c", "bw_h", "bw_c")
    layer.backend = "numba"
    assert fw.backend == bw.backend == "numba"
    assert {"fw.r_on", "bw.r_on"} <= layer.frozen
    bw.params["tau"][0] = -1.0
    with pytest.raises(ValueError, match=r"bw\.tau must be finite"):
        layer.forward(np.ones((1, 2, 2)), np.zeros((1, 2)))


def test_bad_halves_are_refused():
    rng = np.random.default_rng(5)
    a = pl.LSTM(2, 3, rng=rng)
    with pytest.raises(ValueError, match=r"backward_layer.input_size \(4\)"):
        pl.Bidirectional(a, pl.LSTM(4, 3, rng=rng))
    with pytest.raises(TypeError, match="backward_layer has dtype float32"):
        pl.Bidirectional(a, pl.LSTM(2, 3, dtype=np.float32, rng=rng))
    with pytest.raises(ValueError, match="merge='sum' needs halves of one width"):
        pl.Bidirectional(a, pl.LSTM(2, 5, rng=rng), merge="sum")
    with pytest.raises(ValueError, match="merge must be one of"):
        pl.Bidirectional(a, pl.LSTM(2, 3, rng=rng), merge="mean")
    with pytest.raises(TypeError, match="backward_layer must be a sequence layer"):
        pl.Bidirectional(a, pl.Dense(2, 3))
    with pytest.raises(ValueError, match="the same one twice"):
        pl.Bidirectional(a, a)
    layer = pl.Bidirectional(a, pl.LSTM(2, 3, rng=rng))
    h, _, cache = layer.forward(np.ones((1, 2, 2)), np.zeros((1, 2)))
    with pytest.raises(ValueError, match="dh must have shape"):
        layer.backward(np.ones((1, 2, 3)), cache)
    other = pl.Bidirectional(pl.LSTM(2, 3, rng=rng), pl.LSTM(2, 3, rng=rng))
    with pytest.raises(ValueError, match="another layer"):
        other.backward(np.ones_like(h), cache)


def test_the_kink_distance_covers_both_halves_at_their_own_times():
    """Both halves gated, each with its own timing: the network's (and gradcheck's) kink
    distance is that of the forward half at t and of the backward half at t_last - t,
    reversed here by hand."""
    rng = np.random.default_rng(21)
    fw = randomize(pl.PhasedGRU(2, 3, rng=rng), rng)
    bw = randomize(pl.PhasedLSTM(2, 3, rng=rng), rng)
    layer = pl.Bidirectional(fw, bw)
    t = np.sort(rng.uniform(0.0, 30.0, (3, 5)), axis=1)
    lengths = np.array([5, 3, 0])
    expected = np.inf
    for b, L in enumerate(lengths):
        for j in range(L):
            expected = min(expected, kink_distance(t[b, j], fw.params["tau"], fw.params["s"],
                                                   fw.params["r_on"]).min(),
                           kink_distance(t[b, L - 1] - t[b, L - 1 - j], bw.params["tau"],
                                         bw.params["s"], bw.params["r_on"]).min())
    assert layer.min_kink_distance(t, lengths) == pytest.approx(expected, rel=1e-12)
    net = pl.Network([layer, pl.LSTM(6, 2, rng=rng)], pl.Dense(2, 2, rng=rng))
    batch = pl.Dataset(rng.normal(size=(3, 5, 2)), t, np.array([0, 1, 0]), lengths)
    assert net.min_kink_distance(batch) == pytest.approx(expected, rel=1e-12)
    only_fw = pl.Bidirectional(fw, pl.LSTM(2, 3, rng=rng))
    assert only_fw.min_kink_distance(t, lengths) == pytest.approx(fw.min_kink_distance(
        t, lengths)) and only_fw.min_kink_distance(t, lengths) > expected * (1 - 1e-12)
