"""Properties of the reference layer: chunking, time shifts, the LSTM limit, padding, batch order."""
import numpy as np
import pytest

import plstm_np as pl
from conftest import make_batch, make_network, random_lengths, randomize

EXACT = 1e-12


def run_in_chunks(layer, x, t, lengths, dh, bounds, training=True):
    """Forward chunk by chunk carrying (h, c); backward in reverse carrying (dh0, dc0)."""
    state, outs, caches = None, [], []
    for a, b in zip(bounds[:-1], bounds[1:]):
        chunk_lengths = np.clip(lengths - a, 0, b - a)
        h, state, cache = layer.forward(x[:, a:b], t[:, a:b], chunk_lengths, state, training)
        outs.append(h)
        caches.append(cache)
    grads, dstate = {}, None
    for (a, b), cache in reversed(list(zip(zip(bounds[:-1], bounds[1:]), caches))):
        g = layer.backward(dh[:, a:b], cache, dstate)
        dstate = (g.pop("h0"), g.pop("c0"))
        g.pop("x")
        for name, value in g.items():
            grads[name] = grads.get(name, 0) + value
    return np.concatenate(outs, axis=1), state, grads


@pytest.mark.parametrize("n_chunks", [1, 2, 7])
@pytest.mark.parametrize("leak", [1e-3, 0.0])
def test_chunked_equals_whole(rng, n_chunks, leak):
    layer = randomize(pl.PhasedLSTM(3, 5, leak=leak, rng=rng), rng)
    B, T = 4, 21
    x = rng.normal(size=(B, T, 3))
    t = np.sort(rng.uniform(0, 30, (B, T)), axis=1)
    lengths = random_lengths(rng, B, T)
    dh = rng.normal(size=(B, T, 5))
    h_whole, state_whole, cache = layer.forward(x, t, lengths)
    g_whole = layer.backward(dh, cache)
    bounds = np.linspace(0, T, n_chunks + 1).round().astype(int)
    h_chunks, state_chunks, g_chunks = run_in_chunks(layer, x, t, lengths, dh, bounds)
    np.testing.assert_allclose(h_chunks, h_whole, rtol=EXACT, atol=EXACT)
    for a, b in zip(state_chunks, state_whole):
        np.testing.assert_allclose(a, b, rtol=EXACT, atol=EXACT)
    for name in layer.params:
        np.testing.assert_allclose(g_chunks[name], g_whole[name], rtol=1e-10, atol=1e-12,
                                   err_msg=name)


def test_shifting_time_by_a_common_period_multiple_changes_nothing(rng):
    tau = np.array([0.5, 1.0, 2.0, 4.0])  # commensurate periods: 8 is a multiple of each
    layer = randomize(pl.PhasedLSTM(2, 4, tau=tau, rng=rng), rng)
    layer.params["tau"][...] = tau
    x = rng.normal(size=(3, 10, 2))
    t = np.sort(rng.uniform(0, 10, (3, 10)), axis=1)
    for training in (True, False):
        h, _, _ = layer.forward(x, t, training=training)
        h_shifted, _, _ = layer.forward(x, t + 8.0 * 125, training=training)
        np.testing.assert_allclose(h_shifted, h, rtol=1e-9, atol=1e-12)


def peephole_lstm(params, x, h, c):
    """A direct, independent implementation of the peephole LSTM (Gers & Schmidhuber)."""
    H = params["Wh"].shape[0]
    out = []
    sig = lambda a: 1 / (1 + np.exp(-a))  # noqa: E731
    for j in range(x.shape[1]):
        z = x[:, j] @ params["Wx"] + h @ params["Wh"] + params["b"]
        i = sig(z[:, :H] + params["w_ci"] * c)
        f = sig(z[:, H:2 * H] + params["w_cf"] * c)
        c = f * c + i * np.tanh(z[:, 2 * H:3 * H])
        o = sig(z[:, 3 * H:] + params["w_co"] * c)
        h = o * np.tanh(c)
        out.append(h)
    return np.stack(out, axis=1), h, c


def test_gate_always_open_is_exactly_a_peephole_lstm(rng):
    layer = randomize(pl.LSTM(3, 4, time_scale=0.05, rng=rng), rng)
    x = rng.normal(size=(2, 7, 3))
    t = np.sort(rng.uniform(0, 20, (2, 7)), axis=1)
    h0, c0 = rng.normal(size=(2, 4)), rng.normal(size=(2, 4))
    h, (hT, cT), _ = layer.forward(x, t, state=(h0, c0))
    x_with_time = np.concatenate([x, 0.05 * t[:, :, None]], axis=2)
    h_ref, hT_ref, cT_ref = peephole_lstm(layer.params, x_with_time, h0, c0)
    np.testing.assert_allclose(h, h_ref, rtol=EXACT, atol=EXACT)
    np.testing.assert_allclose(cT, cT_ref, rtol=EXACT, atol=EXACT)


def test_open_ratio_one_with_full_phase_is_not_the_lstm(rng):
    """Sanity: a Phased LSTM's gate is not constant, so it differs from the LSTM."""
    layer = randomize(pl.PhasedLSTM(3, 4, rng=rng), rng)
    x, t = rng.normal(size=(2, 7, 3)), np.sort(rng.uniform(0, 20, (2, 7)), axis=1)
    h, _, _ = layer.forward(x, t)
    params = {k: layer.params[k] for k in ("Wx", "Wh", "b", "w_ci", "w_cf", "w_co")}
    h_lstm, _, _ = peephole_lstm(params, x, np.zeros((2, 4)), np.zeros((2, 4)))
    assert np.abs(h - h_lstm).max() > 1e-3


def test_padded_steps_change_nothing(rng):
    layer = randomize(pl.PhasedLSTM(2, 3, rng=rng), rng)
    B, T = 3, 8
    x = rng.normal(size=(B, T, 2))
    t = np.sort(rng.uniform(0, 20, (B, T)), axis=1)
    lengths = np.array([8, 5, 2])
    dh = rng.normal(size=(B, T, 3))
    h, state, cache = layer.forward(x, t, lengths)
    grads = layer.backward(dh, cache)
    garbage_x, garbage_t = x.copy(), t.copy()
    for b, n in enumerate(lengths):
        garbage_x[b, n:] = np.nan
        garbage_t[b, n:] = rng.uniform(-1e6, 1e6, T - n)
    h2, state2, cache2 = layer.forward(garbage_x, garbage_t, lengths)
    grads2 = layer.backward(dh, cache2)
    np.testing.assert_array_equal(h2, h)
    np.testing.assert_array_equal(state2[1], state[1])
    for name in layer.params:
        np.testing.assert_array_equal(grads2[name], grads[name])
    for b, n in enumerate(lengths):  # the state is carried unchanged through the padding
        np.testing.assert_array_equal(h[b, n:], np.broadcast_to(h[b, n - 1], h[b, n:].shape))
        np.testing.assert_array_equal(grads["x"][b, n:], 0.0)
    # and a sample padded to T equals the same sample run alone at its own length
    h_alone, _, _ = layer.forward(x[1:2, :5], t[1:2, :5])
    np.testing.assert_allclose(h[1, :5], h_alone[0], rtol=EXACT, atol=EXACT)


def test_permuting_the_batch_permutes_the_outputs(rng):
    net = make_network(rng, readout_at="every", loss="mse")
    batch = make_batch(net, rng, B=5, T=6)
    perm = rng.permutation(5)
    out, _, _ = net.forward(batch.x, batch.t, batch.lengths, batch.tokens)
    out_p, _, _ = net.forward(batch.x[perm], batch.t[perm], batch.lengths[perm], batch.tokens[perm])
    np.testing.assert_allclose(out_p, out[perm], rtol=EXACT, atol=EXACT)
    loss, grads = net.loss_and_grads(batch)
    loss_p, grads_p = net.loss_and_grads(batch[perm])
    assert loss_p == pytest.approx(loss, rel=1e-12)
    for name in net.params:
        np.testing.assert_allclose(grads_p[name], grads[name], rtol=1e-10, atol=1e-13)


def test_forward_never_modifies_its_inputs(rng):
    net = make_network(rng)
    batch = make_batch(net, rng)
    copies = [a.copy() for a in (batch.x, batch.t, batch.lengths, batch.tokens, batch.y)]
    params = {k: v.copy() for k, v in net.params.items()}
    net.loss_and_grads(batch)
    for a, b in zip(copies, (batch.x, batch.t, batch.lengths, batch.tokens, batch.y)):
        np.testing.assert_array_equal(a, b)
    for name, value in net.params.items():
        np.testing.assert_array_equal(value, params[name])


def test_leak_is_a_switch_not_two_models(rng):
    layer = randomize(pl.PhasedLSTM(2, 3, leak=0.05, rng=rng), rng)
    x, t = rng.normal(size=(2, 9, 2)), np.sort(rng.uniform(0, 20, (2, 9)), axis=1)
    h_train, _, _ = layer.forward(x, t, training=True)
    h_eval, _, cache = layer.forward(x, t, training=False)
    assert np.abs(h_train - h_eval).max() > 1e-6
    k = pl.time_gate(t[:, :, None], layer.params["tau"], layer.params["s"], layer.params["r_on"], 0.0)
    np.testing.assert_array_equal(cache["k"], k)  # evaluation: alpha = 0
