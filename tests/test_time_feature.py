"""The timestamp as a layer of its own (``pl.TimeFeature``) and the authors' BN-LSTM built
from it: ``[x, t]`` batch-normalised, then an LSTM without its own time input."""
import numpy as np
import pytest

import plstm_np as pl
from plstm_np import experiments as ex

from conftest import make_batch, randomize


def _inputs(rng, B=3, T=5, D=2, dtype=np.float64):
    x = rng.normal(size=(B, T, D)).astype(dtype)
    t = np.sort(rng.uniform(0.0, 30.0, (B, T)), axis=1)
    return x, t, np.array([5, 2, 4])[:B]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_feature_is_the_scaled_timestamp_appended(dtype):
    rng = np.random.default_rng(0)
    x, t, lengths = _inputs(rng, dtype=dtype)
    layer = pl.TimeFeature(2, time_scale=0.25, dtype=dtype)
    y, state, cache = layer.forward(x, t, lengths)
    assert (layer.output_size, layer.hidden_size, state, cache["updates"]) == (3, 3, (), 0)
    assert y.dtype == dtype and y.shape == (3, 5, 3)
    np.testing.assert_array_equal(y[:, :, :2], x)
    np.testing.assert_array_equal(y[:, :, 2], (0.25 * t).astype(dtype))


def test_backward_gives_the_features_their_gradient_and_the_time_none():
    rng = np.random.default_rng(1)
    x, t, lengths = _inputs(rng)
    layer = pl.TimeFeature(2, time_scale=3.0)
    _, _, cache = layer.forward(x, t, lengths)
    dh = rng.normal(size=(3, 5, 3))
    grads = layer.backward(dh, cache)
    assert set(grads) == {"x"}
    np.testing.assert_array_equal(grads["x"], dh[:, :, :2])


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_it_feeds_an_lstm_exactly_as_the_lstms_own_time_input(backend):
    """The same weights give the same network, forward and every gradient."""
    rng = np.random.default_rng(2)
    own = pl.Network([pl.LSTM(2, 4, time_scale=0.5, backend=backend, rng=rng)],
                     pl.Dense(4, 2, rng=rng))
    randomize(own, rng)
    split = pl.Network([pl.TimeFeature(2, time_scale=0.5),
                        pl.LSTM(3, 4, time_input=False, backend=backend, rng=rng)],
                       pl.Dense(4, 2, rng=rng))
    for name, value in own.params.items():
        split.params[name.replace("layer0", "layer1")][...] = value
    batch = make_batch(own, rng, B=3, T=6)
    loss_own, g_own = own.loss_and_grads(batch)
    loss_split, g_split = split.loss_and_grads(batch)
    assert loss_split == pytest.approx(loss_own, rel=1e-14)
    for name in own.params:
        np.testing.assert_allclose(g_split[name.replace("layer0", "layer1")], g_own[name],
                                   rtol=1e-12, atol=1e-14, err_msg=name)
    np.testing.assert_allclose(g_split["x"], g_own["x"], rtol=1e-12, atol=1e-14)


def test_the_bn_lstm_normalises_the_timestamp():
    """The authors' BN-LSTM sees t only through the batch norm: in training (batch
    statistics) its loss cannot change when every timestamp moves by the same offset. An
    LSTM that takes t after the normalisation (the BN-LSTM of an earlier plstm_np) would."""
    cfg = ex.default_config("freq", model="bnlstm", hidden_size=5, dtype="float64",
                            backend="numpy")
    net = ex.build_model(cfg)
    assert [type(layer).__name__ for layer in net.layers] == ["TimeFeature", "BatchNorm",
                                                               "LSTM"]
    assert net.layers[0].time_scale == cfg["time_scale"]
    assert not net.layers[2].time_input and net.layers[1].input_size == 2
    rng = np.random.default_rng(3)
    batch = make_batch(net, rng, B=4, T=6)
    shifted = pl.Dataset(batch.x, batch.t + 500.0, batch.y, batch.lengths)
    loss, grads = net.loss_and_grads(batch)
    loss_shifted, grads_shifted = net.loss_and_grads(shifted)
    assert loss_shifted == pytest.approx(loss, rel=1e-9)
    np.testing.assert_allclose(grads_shifted["layer2.Wx"], grads["layer2.Wx"], rtol=1e-6,
                               atol=1e-9)
    after_t_then_bn = pl.Network([pl.BatchNorm(1), pl.LSTM(1, 5, rng=0)],
                                 pl.Dense(5, 2, rng=0))
    a, _ = after_t_then_bn.loss_and_grads(batch)
    b, _ = after_t_then_bn.loss_and_grads(shifted)
    assert abs(a - b) > 1e-3  # the test can tell the two architectures apart


def test_a_checkpoint_keeps_the_time_scale(tmp_path):
    rng = np.random.default_rng(4)
    net = pl.Network([pl.TimeFeature(1, time_scale=0.125), pl.LSTM(2, 3, time_input=False,
                                                                     rng=rng)],
                     pl.Dense(3, 2, rng=rng))
    net.save(tmp_path / "tf.npz")
    back = pl.load(tmp_path / "tf.npz")
    assert back.layers[0].time_scale == 0.125 and back.layers[0].config() == net.layers[0].config()
    batch = make_batch(net, rng)
    np.testing.assert_array_equal(back.predict(batch), net.predict(batch))


def test_a_stream_runs_it_packet_by_packet():
    rng = np.random.default_rng(5)
    net = pl.Network([pl.TimeFeature(1, time_scale=0.1),
                      pl.PhasedLSTM(2, 3, r_on=0.9, backend="numba", rng=rng)],
                     pl.Dense(3, 2, rng=rng), readout_at="every")
    batch = make_batch(net, rng, B=2, T=6)
    stream = net.stream(batch=2)
    outs = [stream.push(batch.x[:, j0:j1], batch.t[:, j0:j1],
                        lengths=np.clip(batch.lengths - j0, 0, j1 - j0))
            for j0, j1 in ((0, 2), (2, 6))]
    valid = np.arange(6)[None] < batch.lengths[:, None]
    np.testing.assert_allclose(np.concatenate(outs, axis=1)[valid], net.predict(batch)[valid],
                               rtol=1e-10, atol=1e-12)
    assert stream.updates[0] == 0 and stream.updates[1] > 0


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(input_size=0), ValueError, "input_size"),
    (dict(input_size=2, hidden_size=2), ValueError, r"hidden_size must equal input_size \+ 1"),
    (dict(input_size=2, time_scale=float("nan")), ValueError, "time_scale must be a finite"),
    (dict(input_size=2, time_scale="1"), TypeError, "time_scale must be a finite"),
    (dict(input_size=2, dtype=np.int32), TypeError, "dtype"),
    (dict(input_size=2, backend="tpu"), ValueError, "backend"),
])
def test_bad_arguments_are_refused_by_name(kwargs, error, match):
    with pytest.raises(error, match=match):
        pl.TimeFeature(**kwargs)


def test_bad_calls_are_refused_by_name():
    rng = np.random.default_rng(6)
    x, t, lengths = _inputs(rng)
    layer = pl.TimeFeature(2)
    with pytest.raises(ValueError, match="x must have shape"):
        layer.forward(x[:, :, :1], t, lengths)
    with pytest.raises(TypeError, match=r"state must be None or \(\) \(the layer has no"):
        layer.forward(x, t, lengths, state=(np.zeros((3, 2)),))
    _, _, cache = layer.forward(x, t, lengths)
    with pytest.raises(ValueError, match="dh must have shape"):
        layer.backward(np.zeros((3, 5, 2)), cache)
    with pytest.raises(ValueError, match="another layer"):
        pl.TimeFeature(2).backward(np.zeros((3, 5, 3)), cache)
    with pytest.raises(TypeError, match=r"dstate must be None or \(\)"):
        layer.backward(np.zeros((3, 5, 3)), cache, dstate=(np.zeros((3, 2)),))
    layer.params["w"] = np.zeros(1)
    with pytest.raises(ValueError, match="params of a TimeFeature must be empty"):
        layer.forward(x, t, lengths)
