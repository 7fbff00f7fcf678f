"""The models around the Phased LSTM inside a network: the BN-LSTM, the Phased GRU and GRU,
bidirectional layers. Gradient checks of whole networks (embedding, both losses), checkpoints,
streaming, and the experiments' and the command line's ``--model``."""
import numpy as np
import pytest

import plstm_np as pl
from plstm_np import experiments as ex

from conftest import make_batch, randomize

NUMERIC_BACKENDS = ("numpy", "numba")


def _stack(kind, D, backend, rng, dtype=np.float64):
    """Layers of one kind of model, input D, with widths 4 then 3 (and their output size)."""
    common = dict(dtype=dtype, backend=backend, rng=rng)
    if kind == "bnlstm":
        return [pl.TimeFeature(D, time_scale=0.3, dtype=dtype, backend=backend),
                pl.BatchNorm(D + 1, dtype=dtype, backend=backend),
                pl.LSTM(D + 1, 4, time_input=False, **common), pl.PhasedLSTM(4, 3, **common)], 3
    if kind == "pgru":
        return [pl.PhasedGRU(D, 4, **common), pl.PhasedGRU(4, 3, **common)], 3
    if kind == "gru":
        return [pl.GRU(D, 4, **common), pl.PhasedLSTM(4, 3, **common)], 3
    if kind == "bidirectional":
        return [pl.Bidirectional(pl.LSTM(D, 4, **common), pl.LSTM(D, 4, **common)),
                pl.PhasedGRU(8, 3, **common)], 3
    raise AssertionError(kind)


def _network(kind, backend, rng, *, loss="cross_entropy", readout_at="last", dtype=np.float64):
    emb = pl.Embedding(7, 3, dtype=dtype, rng=rng)
    layers, top = _stack(kind, 3 + 2, backend, rng, dtype)
    C = 2
    net = pl.Network(layers, pl.Dense(top, C, dtype=dtype, rng=rng), embedding=emb, loss=loss,
                     readout_at=readout_at)
    randomize(net, rng)
    for layer in net.layers:  # batch statistics of a valid kind: a variance > 0
        if isinstance(layer, pl.BatchNorm):
            layer.params["running_var"][...] = rng.uniform(0.5, 2.0, layer.input_size)
    return net


KINDS = ("bnlstm", "pgru", "gru", "bidirectional")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("loss, readout_at", [("cross_entropy", "last"), ("mse", "every")])
@pytest.mark.parametrize("training", [True, False])
def test_network_gradients_match_finite_differences(kind, loss, readout_at, training):
    """On the reference; the Numba backend equals it (the next test)."""
    rng = np.random.default_rng(7)
    net = _network(kind, "numpy", rng, loss=loss, readout_at=readout_at)
    batch = make_batch(net, rng, B=2, T=4, margin=0.03)
    states = {f"layer{i}.{n}0" for i, layer in enumerate(net.layers) for n in layer.state_names}
    names = set(net.params) | states | {"x"}
    running = {n for n in names if "running_" in n}
    if training:  # the output does not depend on the running statistics: exactly 0, and
        # their finite differences are rounding noise (they are updated in every forward)
        _, grads = net.loss_and_grads(batch, training=True)
        assert all(not grads[n].any() for n in running)
        names -= running
    report = pl.check_gradients(net, batch, names=sorted(names), training=training, eps=1e-5)
    assert report.min_kink_distance > 1e-3
    worst = max(report.errors, key=report.errors.get)
    assert report.errors[worst] <= 1e-6, (worst, report.errors[worst])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("training", [True, False])
def test_numba_equals_the_reference_in_a_network(kind, training):
    nets = [_network(kind, backend, np.random.default_rng(3)) for backend in NUMERIC_BACKENDS]
    batch = make_batch(nets[0], np.random.default_rng(4), B=4, T=6)
    (loss0, g0), (loss1, g1) = (net.loss_and_grads(batch, training=training) for net in nets)
    assert loss1 == pytest.approx(loss0, rel=1e-12)
    assert g0.keys() == g1.keys()
    for name in g0:
        np.testing.assert_allclose(g1[name], g0[name], rtol=1e-9, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("kind", KINDS)
def test_checkpoints_round_trip_every_model(kind, tmp_path):
    rng = np.random.default_rng(5)
    net = _network(kind, "numba", rng)
    batch = make_batch(net, rng)
    opt = pl.Adam(net, lr=0.01)
    _, grads = net.loss_and_grads(batch)
    opt.step(grads)
    net.save(tmp_path / "net.npz", optimizer=opt)
    back, opt_back, _ = pl.load_checkpoint(tmp_path / "net.npz")
    assert [type(a) for a in back.layers] == [type(b) for b in net.layers]
    assert back.config() == net.config()  # every hyper-parameter, the halves' included
    assert back.params.keys() == net.params.keys()
    for name, value in net.params.items():
        assert np.array_equal(back.params[name], value), name
    assert opt_back.step_count == opt.step_count
    np.testing.assert_array_equal(back.predict(batch), net.predict(batch))


def test_batch_norm_running_statistics_are_saved_and_used(tmp_path):
    rng = np.random.default_rng(6)
    net = _network("bnlstm", "numpy", rng)
    batch = make_batch(net, rng, B=6)
    bn = net.layers[1]
    before = bn.params["running_mean"].copy()
    net.loss_and_grads(batch)  # a training forward updates them
    assert not np.array_equal(bn.params["running_mean"], before)
    assert "layer1.running_mean" in pl.Adam(net).frozen  # never stepped by the optimizer
    net.save(tmp_path / "bn.npz")
    back = pl.load(tmp_path / "bn.npz")
    np.testing.assert_array_equal(back.layers[1].params["running_var"], bn.params["running_var"])
    np.testing.assert_array_equal(back.predict(batch), net.predict(batch))


@pytest.mark.parametrize("kind", ["bnlstm", "pgru", "gru"])
def test_streaming_equals_whole_sequence_evaluation(kind):
    rng = np.random.default_rng(8)
    net = _network(kind, "numba", rng, readout_at="every")
    batch = make_batch(net, rng, B=2, T=7)
    full = net.predict(batch)
    stream = net.stream(batch=2)
    outs = []
    for j0, j1 in ((0, 3), (3, 4), (4, 7)):  # packets of 3, 1 and 3 events
        sl = slice(j0, j1)
        lengths = np.clip(batch.lengths - j0, 0, j1 - j0)
        outs.append(stream.push(batch.x[:, sl], batch.t[:, sl], tokens=batch.tokens[:, sl],
                                lengths=lengths))
    streamed = np.concatenate(outs, axis=1)
    valid = np.arange(7)[None] < batch.lengths[:, None]
    np.testing.assert_allclose(streamed[valid], full[valid], rtol=1e-10, atol=1e-12)
    # the compute counted: every recurrent layer updated its neurons on some events
    assert all(u > 0 for layer, u in zip(net.layers, stream.updates) if layer.state_names)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_a_phased_gru_stream_counts_the_open_updates_only(backend):
    # numba: the kernel's own per-neuron count; numpy: the stream's count from the gate
    rng = np.random.default_rng(9)
    layer = pl.PhasedGRU(2, 5, r_on=0.05, backend=backend, rng=rng)
    net = pl.Network([layer], pl.Dense(5, 2, rng=rng))
    t = np.sort(rng.uniform(0, 50, (2, 40)), axis=1)
    x = rng.normal(size=(2, 40, 2))
    stream = net.stream(batch=2)
    stream.push(x[:, :25], t[:, :25], lengths=np.array([25, 10]))
    stream.push(x[:, 25:], t[:, 25:], lengths=np.array([15, 5]))
    p = layer.params
    valid = np.zeros((2, 40), bool)
    valid[0] = True
    valid[1, :10] = valid[1, 25:30] = True  # the padding of each packet is skipped
    k = pl.time_gate(t[:, :, None], p["tau"], p["s"], p["r_on"])
    per_neuron = ((k > 0) & valid[:, :, None]).sum(1)
    np.testing.assert_array_equal(stream.update_counts[0], per_neuron)
    assert stream.updates == [int(per_neuron.sum())] and 0 < per_neuron.sum() < 50 * 5


def test_a_bidirectional_network_refuses_to_stream():
    rng = np.random.default_rng(10)
    net = _network("bidirectional", "numpy", rng)
    with pytest.raises(ValueError, match=r"layer0 \(Bidirectional\) cannot stream"):
        net.stream()


@pytest.mark.parametrize("model", ["bnlstm", "pgru", "gru"])
def test_the_experiments_build_and_train_every_model(model, tmp_path):
    cfg = ex.default_config("freq", model=model, n_train=8, n_val=8, hidden_size=5,
                            batch_size=4, epochs=1, max_batches=2)
    net = ex.build_model(cfg)
    kinds = [type(layer).__name__ for layer in net.layers]
    assert kinds == {"bnlstm": ["TimeFeature", "BatchNorm", "LSTM"], "pgru": ["PhasedGRU"],
                     "gru": ["GRU"]}[model]
    run = ex.run_training(cfg, tmp_path, progress=False)
    assert len(run["history"]) == 1 and np.isfinite(run["history"][0]["val_loss"])


def test_the_frequency_experiment_has_the_papers_three_models():
    conds = ex.EXPERIMENTS["frequency"].conditions
    assert sorted({c["model"] for c in conds.values()}) == ["bnlstm", "lstm", "plstm"]
    assert ex.EXPERIMENTS["frequency"].paper["bnlstm-high_res"] == 62.38
