"""Streaming inference equals running the recorded sequence whole."""
import itertools

import numpy as np
import pytest

import plstm_np as pl
from plstm_np.streaming import Stream

from conftest import make_network, randomize

#: Largest tolerated max |difference| / max |whole-sequence output|, in float64.
STREAM_RTOL = 1e-12


def rel(a, e):
    return np.abs(a - e).max() / np.abs(e).max()


def recording(net, rng, B, T):
    t = np.sort(rng.uniform(0.0, 40.0, (B, T)), axis=1)  # every stream its own event times
    x = rng.normal(size=(B, T, net.n_features)) if net.n_features else None
    tokens = rng.integers(0, net.embedding.num_embeddings, (B, T)) if net.embedding else None
    return x, t, tokens


def chunks(T, sizes, rng):
    """Boundaries of consecutive chunks: fixed size, or random sizes for 'random'."""
    edges, j = [0], 0
    while j < T:
        j = min(T, j + (int(rng.integers(1, 6)) if sizes == "random" else sizes))
        edges.append(j)
    return list(itertools.pairwise(edges))


@pytest.mark.parametrize("chunk", [1, 3, "random"])
def test_batch1_chunks_equal_whole_sequence(chunk):
    rng = np.random.default_rng(1)
    net = make_network(rng, readout_at="every")
    for layer in net.layers:
        layer.params["r_on"][:] = rng.uniform(0.05, 0.3, layer.hidden_size)
    x, t, tokens = recording(net, rng, 1, 40)
    whole, states, _ = net.forward(x, t, tokens=tokens, training=False)  # the reference
    net.backend = "numba"
    _, _, cache = net.forward(x, t, tokens=tokens, training=False)
    stream = Stream(net)
    outs = []
    for lo, hi in chunks(40, chunk, rng):
        if chunk == 1:  # single events: scalar time, 1-D features, scalar token
            outs.append(stream.push(x[0, lo], float(t[0, lo]), int(tokens[0, lo]))[None])
        else:
            outs.append(stream.push(x[0, lo:hi], t[0, lo:hi], tokens[0, lo:hi]))
    streamed = np.concatenate(outs)
    assert streamed.shape == whole[0].shape
    assert rel(streamed, whole[0]) <= STREAM_RTOL
    for (h, c), (h_s, c_s) in zip(states, stream.states):
        assert rel(h_s, h) <= STREAM_RTOL and rel(c_s, c) <= STREAM_RTOL
    assert stream.updates == cache["updates"]  # the same neurons were updated
    assert stream.last_time[0] == t[0, -1] and stream.events[0] == 40


def test_batch_of_streams_with_different_times():
    rng = np.random.default_rng(2)
    net = make_network(rng, readout_at="every")
    B, T = 4, 30
    x, t, tokens = recording(net, rng, B, T)
    whole, _, _ = net.forward(x, t, tokens=tokens, training=False)
    stream = Stream(net, batch=B)
    outs = [stream.push(x[:, j], t[:, j], tokens[:, j])[:, None] for j in range(10)]
    outs.append(stream.push(x[:, 10:], t[:, 10:], tokens[:, 10:]))
    streamed = np.concatenate(outs, axis=1)
    assert streamed.shape == whole.shape
    assert rel(streamed, whole) <= STREAM_RTOL


def test_streams_with_ragged_packets():
    # each stream's packet holds its own number of events; the rest is padding
    rng = np.random.default_rng(3)
    net = make_network(rng, readout_at="last")
    B, T = 3, 12
    x, t, tokens = recording(net, rng, B, T)
    whole, _, _ = net.forward(x, t, tokens=tokens, training=False)
    first = np.array([4, 7, 1])
    stream = Stream(net, batch=B)
    xa, ta, ka = x.copy(), t.copy(), tokens.copy()
    for b in range(B):  # pack each stream's first events, garbage after
        ta[b, first[b]:] = np.nan
    stream.push(xa, ta, ka, lengths=first)
    rest_x = np.zeros_like(x)
    rest_t = np.full_like(t, np.nan)
    rest_k = np.zeros_like(tokens)
    for b in range(B):
        n = T - first[b]
        rest_x[b, :n], rest_t[b, :n], rest_k[b, :n] = (x[b, first[b]:], t[b, first[b]:],
                                                       tokens[b, first[b]:])
    out = stream.push(rest_x, rest_t, rest_k, lengths=T - first)
    last = out[np.arange(B), T - first - 1]
    assert rel(last, whole) <= STREAM_RTOL


def test_bare_layer_stream_and_lstm():
    rng = np.random.default_rng(4)
    for layer in (pl.PhasedLSTM(2, 5, r_on=0.2, rng=0), pl.LSTM(2, 5, rng=0)):
        randomize(layer, rng)
        x = rng.normal(size=(1, 20, 2))
        t = np.sort(rng.uniform(0, 10, (1, 20)), axis=1)
        h, _, _ = layer.forward(x, t, training=False)
        stream = Stream(layer)
        got = np.concatenate([stream.push(x[0, j:j + 4], t[0, j:j + 4]) for j in range(0, 20, 4)])
        assert rel(got, h[0]) <= STREAM_RTOL


@pytest.mark.parametrize("lstm", [False, True])
def test_long_packets_incremental_readout(lstm):
    # packets much longer than the kernel's period of exact read-out recomputation (and,
    # for the Phased LSTM, small r_on: few neurons pass the gate screen at each event); the
    # LSTM network updates every neuron at every event
    rng = np.random.default_rng(6)
    net = make_network(rng, readout_at="every", lstm=lstm)
    if not lstm:
        for layer in net.layers:
            layer.params["r_on"][:] = rng.uniform(0.02, 0.1, layer.hidden_size)
    x, t, tokens = recording(net, rng, 2, 300)
    whole, states, _ = net.forward(x, t, tokens=tokens, training=False)
    stream = Stream(net, batch=2)
    # stream 0's last 50 events arrive in a second packet (stream 1's second packet is empty)
    first = stream.push(x, t, tokens, lengths=np.array([250, 300]))
    second = stream.push(x[:, 250:], t[:, 250:], tokens[:, 250:], lengths=np.array([50, 0]))
    assert rel(first[1], whole[1]) <= STREAM_RTOL
    assert rel(np.concatenate([first[0, :250], second[0]]), whole[0]) <= STREAM_RTOL
    for (h, c), (h_s, c_s) in zip(states, stream.states):
        assert rel(h_s, h) <= STREAM_RTOL and rel(c_s, c) <= STREAM_RTOL
    assert stream.events.tolist() == [300, 300]


def test_stream_bad_input():
    rng = np.random.default_rng(5)
    net = make_network(rng)
    stream = Stream(net, batch=2)
    with pytest.raises(ValueError, match="t must have shape"):
        stream.push(np.zeros((3, 2)), np.zeros(3), np.zeros(3, np.int64))
    with pytest.raises(TypeError, match="float64"):
        stream.push(np.zeros((2, 2)), np.zeros(2, np.float32), np.zeros(2, np.int64))
    with pytest.raises(ValueError, match="tokens must lie"):
        stream.push(np.zeros((2, 2)), np.zeros(2), np.array([0, 99]))
    with pytest.raises(TypeError, match="model must be"):
        Stream("net")
