"""Properties of a layer on every backend: chunking, padding, batch order, inputs left alone;
and of the reference: time shifts, the LSTM limit, the open ratio 1, the leak switch.

The ``backend`` fixture (conftest.py) runs a test on each backend, CUDA launches patched
small. The backend properties compare a backend with itself run another way (in chunks, padded,
permuted), with the tolerances of ``conftest.TOLERANCES``; the NumPy reference is held to
bitwise equality where it was before. CUDA problems are tiny: the simulator is slow.
"""
import itertools

import numpy as np
import pytest

import plstm_np as pl

from conftest import (
    BACKENDS,
    assert_close,
    assert_unchanged,
    make_batch,
    make_network,
    random_layer_problem,
    randomize,
    snapshot,
)

EXACT = 1e-12

#: Problem sizes per backend: the CUDA simulator runs every thread in Python.
SIZES = {"numpy": dict(B=4, T=21, H=5), "numba": dict(B=4, T=21, H=5),
         "cuda": dict(B=3, T=6, H=4)}
#: Numbers of chunks per backend (1: a single chunk is the whole sequence).
CHUNKS = {"numpy": (1, 2, 7), "numba": (1, 2, 7), "cuda": (2,)}


def assert_same(actual, expected, backend, dtype, what=""):
    """Bitwise on the reference (it must be); within the tolerance table on a fast backend,
    whose kernels may sum in another order when the problem's shape changes."""
    if backend == "numpy":
        if isinstance(expected, dict):
            assert set(actual) == set(expected), what
            for name in expected:
                np.testing.assert_array_equal(actual[name], expected[name],
                                              err_msg=f"{what} {name}")
        else:
            np.testing.assert_array_equal(actual, expected, err_msg=what)
    else:
        assert_close(actual, expected, backend, dtype, what)


def run_in_chunks(layer, x, t, lengths, dh, bounds, training=True):
    """Forward chunk by chunk carrying (h, c); backward in reverse carrying (dh0, dc0)."""
    state, outs, caches = None, [], []
    for a, b in itertools.pairwise(bounds):
        chunk_lengths = np.clip(lengths - a, 0, b - a)
        h, state, cache = layer.forward(x[:, a:b], t[:, a:b], chunk_lengths, state, training)
        outs.append(h)
        caches.append(cache)
    grads, dstate = {}, None
    for (a, b), cache in reversed(list(zip(itertools.pairwise(bounds), caches))):
        g = layer.backward(dh[:, a:b], cache, dstate)
        dstate = (g.pop("h0"), g.pop("c0"))
        g.pop("x")
        for name, value in g.items():
            grads[name] = grads.get(name, 0) + value
    return np.concatenate(outs, axis=1), state, grads


def chunk_cases():
    return [(backend, n) for backend in BACKENDS for n in CHUNKS[backend]]


@pytest.mark.parametrize("backend, n_chunks", chunk_cases(), indirect=["backend"])
@pytest.mark.parametrize("leak", [1e-3, 0.0])
def test_chunked_equals_whole(backend, n_chunks, leak):
    """Forward outputs, final state and every parameter gradient, in training mode (leak
    alpha) and in evaluation mode (leak 0; for a leak-free layer both modes are the same
    computation, run once): running a sequence in pieces carrying (h, c) equals running it
    whole."""
    rng = np.random.default_rng(12345)
    size = SIZES[backend]
    B, T, H = size["B"], size["T"], size["H"]
    layer, x, t, lengths = random_layer_problem(rng, backend, B=B, T=T, D=3, H=H, leak=leak,
                                                t_range=(0.0, 30.0))
    lengths[-1] = 0  # and a sample with no valid step at all (T and 1 are in already)
    dh = rng.normal(size=(B, T, H))
    bounds = np.linspace(0, T, n_chunks + 1).round().astype(int)
    for training in (True, False) if leak > 0 else (True,):
        mode = "training" if training else "evaluation"
        h_whole, state_whole, cache = layer.forward(x, t, lengths, training=training)
        g_whole = layer.backward(dh, cache)
        h_chunks, state_chunks, g_chunks = run_in_chunks(layer, x, t, lengths, dh, bounds,
                                                         training)
        assert_close(h_chunks, h_whole, backend, np.float64, f"h ({mode})")
        assert_close(state_chunks, state_whole, backend, np.float64, f"state ({mode})")
        assert_close(g_chunks, {name: g_whole[name] for name in layer.params}, backend,
                     np.float64, f"gradient ({mode})")
        if backend == "numpy":  # the reference's tolerance of the test before it was shared
            np.testing.assert_allclose(h_chunks, h_whole, rtol=EXACT, atol=EXACT)


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


def test_open_ratio_one_with_full_phase_is_not_the_lstm(backend):
    """r_on = 1: every neuron is in its open phase at every step (the closed phase, and with
    it the leak, is empty), yet the gate is the triangle k = 1 - |1 - 2 phi|, not the constant
    1 of the LSTM: the outputs differ from the peephole LSTM's with the same weights, and
    training (leak 1e-3) and evaluation (leak 0) give the same outputs, with every valid
    neuron update computed (none skipped) on every backend."""
    rng = np.random.default_rng(12345)
    B, T, H = 2, 6, 4
    layer = randomize(pl.PhasedLSTM(3, H, leak=1e-3, backend=backend, rng=rng), rng)
    layer.params["r_on"][...] = 1.0
    x, t = rng.normal(size=(B, T, 3)), np.sort(rng.uniform(0, 20, (B, T)), axis=1)
    h_train, _, _ = layer.forward(x, t, training=True)
    h_eval, _, cache = layer.forward(x, t, training=False)
    assert_close(h_train, h_eval, backend, np.float64, "training vs evaluation")
    assert cache["updates"] == B * T * H  # nothing closed, so nothing skipped
    phi = pl.phase(t[:, :, None], layer.params["tau"], layer.params["s"])
    k = pl.time_gate(t[:, :, None], layer.params["tau"], layer.params["s"],
                     layer.params["r_on"], 1e-3)
    np.testing.assert_allclose(k, 1.0 - np.abs(1.0 - 2.0 * phi), rtol=0, atol=1e-12)
    assert k.min() < 0.9  # the times do not all sit at the peak: the gate varies
    params = {k: layer.params[k] for k in ("Wx", "Wh", "b", "w_ci", "w_cf", "w_co")}
    h_lstm, _, _ = peephole_lstm(params, x, np.zeros((B, H)), np.zeros((B, H)))
    assert np.abs(h_eval - h_lstm).max() > 1e-3


def padded_problem(rng, backend):
    size = SIZES[backend]
    B, T, H = 3, min(8, size["T"]), size["H"]
    layer, x, t, _ = random_layer_problem(rng, backend, B=B, T=T, D=2, H=H,
                                          t_range=(0.0, 20.0))
    lengths = np.array([T, T - 3, 2])
    return layer, x, t, lengths


def test_padded_steps_change_nothing(backend):
    """Garbage (NaN x, wild t) on padded steps, and extra padded steps appended, leave the
    outputs of valid steps, the final state and every gradient unchanged."""
    rng = np.random.default_rng(12345)
    layer, x, t, lengths = padded_problem(rng, backend)
    B, T, _ = x.shape
    H = layer.hidden_size
    dh = rng.normal(size=(B, T, H))
    h, state, cache = layer.forward(x, t, lengths)
    grads = layer.backward(dh, cache)
    garbage_x, garbage_t = x.copy(), t.copy()
    for b, n in enumerate(lengths):
        garbage_x[b, n:] = np.nan
        garbage_t[b, n:] = rng.uniform(-1e6, 1e6, T - n)
    h2, state2, cache2 = layer.forward(garbage_x, garbage_t, lengths)
    grads2 = layer.backward(dh, cache2)
    assert_same(h2, h, backend, np.float64, "h")
    assert_same(state2[0], state[0], backend, np.float64, "h_T")
    assert_same(state2[1], state[1], backend, np.float64, "c_T")
    assert_same(grads2, grads, backend, np.float64, "gradient")
    for b, n in enumerate(lengths):  # the state is carried unchanged through the padding
        np.testing.assert_array_equal(h[b, n:], np.broadcast_to(h[b, n - 1], h[b, n:].shape))
        np.testing.assert_array_equal(grads["x"][b, n:], 0.0)

    # two more steps, padded on every sample, NaN x and t; no gradient arrives there
    extra = 2
    long_x = np.concatenate([garbage_x, np.full((B, extra, x.shape[2]), np.nan)], axis=1)
    long_t = np.concatenate([garbage_t, np.full((B, extra), np.nan)], axis=1)
    long_dh = np.concatenate([dh, np.zeros((B, extra, H))], axis=1)
    h3, state3, cache3 = layer.forward(long_x, long_t, lengths)
    grads3 = layer.backward(long_dh, cache3)
    assert_close(h3[:, :T], h, backend, np.float64, "h (extra steps)")
    np.testing.assert_array_equal(h3[:, T:], np.repeat(h3[:, T - 1:T], extra, axis=1))
    assert_close(state3, state, backend, np.float64, "state (extra steps)")
    np.testing.assert_array_equal(grads3["x"][:, T:], 0.0)
    grads3["x"] = grads3["x"][:, :T]
    assert_close(grads3, grads, backend, np.float64, "gradient (extra steps)")

    # and a sample padded to T equals the same sample run alone at its own length
    n = lengths[1]
    h_alone, _, _ = layer.forward(x[1:2, :n], t[1:2, :n])
    assert_close(h[1:2, :n], h_alone, backend, np.float64, "padded vs alone")
    if backend == "numpy":
        np.testing.assert_allclose(h[1, :n], h_alone[0], rtol=EXACT, atol=EXACT)


def test_permuting_the_batch_permutes_the_outputs(backend):
    """Outputs, final states and the loss follow the samples; parameter gradients (sums over
    the batch) change by rounding only."""
    rng = np.random.default_rng(12345)
    B, T, layers = (3, 4, 1) if backend == "cuda" else (5, 6, 2)
    net = make_network(rng, readout_at="every", loss="mse", backend=backend, layers=layers)
    batch = make_batch(net, rng, B=B, T=T)
    perm = rng.permutation(B)
    while np.array_equal(perm, np.arange(B)):
        perm = rng.permutation(B)
    out, states, _ = net.forward(batch.x, batch.t, batch.lengths, batch.tokens)
    out_p, states_p, _ = net.forward(batch.x[perm], batch.t[perm], batch.lengths[perm],
                                     batch.tokens[perm])
    assert_close(out_p, out[perm], backend, np.float64, "outputs")
    for i, ((h, c), (h_p, c_p)) in enumerate(zip(states, states_p)):
        assert_close((h_p, c_p), (h[perm], c[perm]), backend, np.float64, f"layer{i} state")
    if backend == "numpy":  # the reference's tolerance of the test before it was shared
        np.testing.assert_allclose(out_p, out[perm], rtol=EXACT, atol=EXACT)
    loss, grads = net.loss_and_grads(batch)
    loss_p, grads_p = net.loss_and_grads(batch[perm])
    assert loss_p == pytest.approx(loss, rel=1e-12)
    assert set(grads_p) == set(grads)
    assert_close({name: grads_p[name] for name in net.params},
                 {name: grads[name] for name in net.params}, backend, np.float64, "gradient")
    per_sample = set(grads) - set(net.params)  # x, the layers' h0 and c0: permuted
    assert per_sample
    assert_close({name: grads_p[name] for name in per_sample},
                 {name: grads[name][perm] for name in per_sample}, backend, np.float64,
                 "per-sample gradient")


def test_layer_never_modifies_its_inputs(backend):
    """x (NaN padding included), t, lengths, h0, c0, the parameters, dh and the final-state
    gradient are bitwise unchanged after forward and backward."""
    rng = np.random.default_rng(12345)
    layer, x, t, lengths = random_layer_problem(rng, backend, B=3, T=5, H=4, pad_value=np.nan)
    B, T, H = x.shape[0], x.shape[1], layer.hidden_size
    state = (rng.normal(size=(B, H)), rng.normal(size=(B, H)))
    dh = rng.normal(size=(B, T, H))
    dstate = (rng.normal(size=(B, H)), rng.normal(size=(B, H)))
    inputs = dict(x=x, t=t, lengths=lengths, h0=state[0], c0=state[1], dh=dh,
                  dh_T=dstate[0], dc_T=dstate[1], **{f"params[{k}]": v for k, v in
                                                     layer.params.items()})
    before = snapshot(inputs)
    h, final, cache = layer.forward(x, t, lengths, state)
    assert_unchanged(before, inputs, "after forward:")
    layer.backward(dh, cache, dstate)
    assert_unchanged(before, inputs, "after backward:")
    # nothing returned aliases an input (writing into an output cannot change an input)
    for name, value in inputs.items():
        for out in (h, *final):
            assert not np.shares_memory(out, value), name


def test_forward_never_modifies_its_inputs(backend):
    rng = np.random.default_rng(12345)
    net = make_network(rng, backend=backend, layers=1 if backend == "cuda" else 2)
    batch = make_batch(net, rng, B=3, T=4 if backend == "cuda" else 5)
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
    k = pl.time_gate(t[:, :, None], layer.params["tau"], layer.params["s"], layer.params["r_on"],
                     0.0)
    np.testing.assert_array_equal(cache["k"], k)  # evaluation: alpha = 0
