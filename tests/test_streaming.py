"""Streaming inference equals running the recording whole; a stream's clock never goes back."""
import itertools
import re

import numpy as np
import pytest

import plstm_np as pl
from plstm_np.streaming import Stream

from conftest import assert_unchanged, make_network, randomize, snapshot

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


# ---------------------------------------------------------------- time order, empty packets
# The Stream always runs on the Numba CPU kernels (whatever a network's backend), so these
# tests are parametrised over what it runs instead: a network (embedding and features, read-out
# at every event; features only, read-out at the last event) and the bare layers.
MODELS = ("network", "network_last", "phased_lstm", "lstm")


def stream_model(kind, rng):
    if kind == "network":
        return make_network(rng, readout_at="every")
    if kind == "network_last":
        return make_network(rng, readout_at="last", embedding=False)
    layer = pl.PhasedLSTM(2, 5, r_on=0.3, rng=0) if kind == "phased_lstm" else pl.LSTM(2, 5, rng=0)
    return randomize(layer, rng)


def push(stream, t, seed=0, lengths=None):
    """Push events at times ``t`` with random features (and tokens) drawn from ``seed``."""
    model = stream.network if stream.network is not None else stream.layers[0]
    rng = np.random.default_rng(seed)
    shape = np.shape(t)
    n_features = model.n_features if stream.network is not None else model.input_size
    x = rng.normal(size=shape + (n_features,)) if n_features else None
    emb = getattr(model, "embedding", None)
    tokens = None if emb is None else rng.integers(0, emb.num_embeddings, shape)
    if tokens is not None and shape == ():
        tokens = int(tokens)
    return stream.push(x, t, tokens, lengths=lengths)


def packet(batch, times):
    """The same event times for every stream: (n,) for one stream, else (batch, n)."""
    times = np.asarray(times, np.float64)
    return times if batch == 1 else np.tile(times, (batch, 1))


def stream_state(stream):
    return snapshot((stream.states, stream.update_counts, stream.last_time, stream.events))


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("kind", MODELS)
def test_push_refuses_time_going_back(kind, batch):
    net = stream_model(kind, np.random.default_rng(7))
    stream, reference = Stream(net, batch=batch), Stream(net, batch=batch)
    first = packet(batch, [1.0, 2.5, 4.0])
    push(stream, first, seed=1)
    push(reference, first, seed=1)
    before = stream_state(stream)
    bad = packet(batch, [3.5, 5.0])  # the last row starts before its last time, 4.0
    if batch > 1:
        bad[:-1] += 1.0
    row, entry = batch - 1, "t[0]" if batch == 1 else f"t[{batch - 1}, 0]"
    with pytest.raises(ValueError, match=re.escape(
            f"t goes back in time in row {row}: {entry} = 3.5 is earlier than the stream's "
            f"last time 4.0")):
        push(stream, bad, seed=2)
    assert_unchanged(before, stream_state(stream), "state after a refused push")
    good = packet(batch, [4.0, 5.0])  # equal to the last time: allowed
    np.testing.assert_array_equal(push(stream, good, seed=3), push(reference, good, seed=3))
    assert_unchanged(stream_state(reference), stream_state(stream), "state after a valid push")


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("kind", MODELS)
def test_push_refuses_decreasing_times_within_packet(kind, batch):
    net = stream_model(kind, np.random.default_rng(8))
    stream, reference = Stream(net, batch=batch), Stream(net, batch=batch)
    bad = packet(batch, [1.0, 2.0, 3.0, 4.0])
    row = batch - 1
    if batch == 1:
        bad[2], entries = 1.5, ("t[2]", "t[1]")
    else:
        bad[row, 2], entries = 1.5, (f"t[{row}, 2]", f"t[{row}, 1]")
    before = stream_state(stream)
    with pytest.raises(ValueError, match=re.escape(
            f"t must be non-decreasing within each stream's packet: in row {row}, "
            f"{entries[0]} = 1.5 is earlier than {entries[1]} = 2.0")):
        push(stream, bad, seed=1)
    assert_unchanged(before, stream_state(stream), "state after a refused push")
    assert np.isnan(stream.last_time).all()
    good = packet(batch, [1.0, 2.0, 2.0, 4.0])  # equal times: allowed
    np.testing.assert_array_equal(push(stream, good, seed=1), push(reference, good, seed=1))
    assert_unchanged(stream_state(reference), stream_state(stream), "state after a valid push")


@pytest.mark.parametrize("kind", MODELS)
def test_single_event_time_errors_name_the_entry(kind):
    net = stream_model(kind, np.random.default_rng(9))
    one = Stream(net)
    push(one, 2.0)  # a scalar time
    with pytest.raises(ValueError, match=re.escape("row 0: t = 1.0 is earlier than the "
                                                   "stream's last time 2.0")):
        push(one, 1.0)
    push(one, 2.0)  # the same time again: allowed
    many = Stream(net, batch=3)
    push(many, np.array([1.0, 2.0, 3.0]))  # one event per stream
    with pytest.raises(ValueError, match=re.escape("row 1: t[1] = 1.5 is earlier than the "
                                                   "stream's last time 2.0")):
        push(many, np.array([1.0, 1.5, 3.0]))
    assert many.last_time.tolist() == [1.0, 2.0, 3.0]


@pytest.mark.parametrize("kind", MODELS)
def test_equal_times_chunked_equal_whole(kind):
    net = stream_model(kind, np.random.default_rng(10))
    t = np.array([0.5, 1.0, 1.0, 1.0, 2.0, 2.0, 3.0])
    rng = np.random.default_rng(11)
    x = rng.normal(size=(7, 2))
    tokens = rng.integers(0, 7, 7) if kind == "network" else None
    whole = Stream(net).push(x, t, tokens)
    chunked = Stream(net)
    parts = [chunked.push(x[lo:hi], t[lo:hi], None if tokens is None else tokens[lo:hi])
             for lo, hi in [(0, 3), (3, 5), (5, 7)]]  # a packet starts at the last time
    assert rel(np.concatenate(parts), whole) <= STREAM_RTOL


@pytest.mark.parametrize("kind", MODELS)
def test_reset_forgets_last_time(kind):
    net = stream_model(kind, np.random.default_rng(12))
    stream = Stream(net, batch=2)
    push(stream, packet(2, [5.0, 6.0]), seed=1)
    stream.reset()
    assert np.isnan(stream.last_time).all()
    early = packet(2, [0.0, 1.0])  # before the forgotten last time, 6.0
    np.testing.assert_array_equal(push(stream, early, seed=2),
                                  push(Stream(net, batch=2), early, seed=2))


@pytest.mark.parametrize("kind", ["network", "phased_lstm", "lstm"])  # rows of 0 events
def test_padding_and_waiting_streams_are_not_time_checked(kind):
    net = stream_model(kind, np.random.default_rng(13))
    stream = Stream(net, batch=3)
    push(stream, packet(3, [1.0, 2.0, 3.0]), seed=1)
    t = np.array([[3.0, 4.0, -9.0, np.nan],   # padding that goes back, or is NaN
                  [0.0, 0.5, 1.0, 1.5],       # a stream with no event now: before its 3.0
                  [3.0, 4.0, 5.0, 6.0]])
    push(stream, t, seed=2, lengths=np.array([2, 0, 4]))
    assert stream.last_time.tolist() == [4.0, 3.0, 6.0]
    assert stream.events.tolist() == [5, 3, 7]


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("kind", MODELS)
def test_an_empty_packet_is_a_no_op(kind, batch):
    net = stream_model(kind, np.random.default_rng(14))
    stream = Stream(net, batch=batch)
    empty = np.zeros((0,)) if batch == 1 else np.zeros((batch, 0))
    for start in (1.0, 3.0):  # before any event, and after some
        before = stream_state(stream)
        out = push(stream, empty)
        C = net.output_size if hasattr(net, "readout") else net.hidden_size
        assert out.shape == empty.shape + (C,)
        assert_unchanged(before, stream_state(stream), "state after an empty packet")
        push(stream, packet(batch, [start, start + 1.0]))
    assert (stream.events == 4).all()


@pytest.mark.parametrize("kind", MODELS)
def test_a_stream_refuses_invalid_parameters(kind):
    net = stream_model(kind, np.random.default_rng(15))
    layer = net.layers[0] if hasattr(net, "layers") else net
    layer.params["Wh"][0, 0] = np.nan
    with pytest.raises(ValueError, match=r"params\['Wh'\] has a non-finite value"):
        Stream(net)
    layer.params["Wh"][0, 0] = 0.0
    stream = Stream(net)
    if not layer.gate_open:
        layer.params["tau"][1] = -1.0
        with pytest.raises(ValueError, match=r"tau must be finite and > 0, got tau\[1\]"):
            stream.refresh()
