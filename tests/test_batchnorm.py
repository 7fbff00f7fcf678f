"""BatchNorm, the BN-LSTM baseline's input normalisation: gradients (training and evaluation),
the running statistics, padding kept out of everything, the constant-feature case, evaluation
with fresh statistics, bad input, config, float32, and its use in a network and a stream."""
import json

import numpy as np
import pytest

import plstm_np as pl
from plstm_np.batchnorm import X_LIMIT, BatchNorm
from plstm_np.gradcheck import numerical_gradient, relative_error
from plstm_np.streaming import Stream

GRAD_TOL = 1e-6


def ragged_batch(rng, B=3, T=5, D=2, lengths=(5, 2, 3), dtype=np.float64, garbage=np.nan):
    """Random x with every padding entry set to ``garbage``, times, lengths."""
    x = rng.normal(0.5, 2.0, (B, T, D)).astype(dtype)
    lengths = np.array(lengths, np.int64)
    pad = np.arange(T)[None, :] >= lengths[:, None]
    x[pad] = garbage
    t = np.cumsum(rng.uniform(0.1, 1.0, (B, T)), axis=1)
    return x, t, lengths, pad


def randomised(layer, rng, running=True):
    """Random gamma, beta (and running statistics) in place."""
    D = layer.input_size
    layer.params["gamma"][:] = rng.uniform(0.5, 2.0, D)
    layer.params["beta"][:] = rng.normal(0.0, 1.0, D)
    if running:
        layer.params["running_mean"][:] = rng.normal(0.0, 1.0, D)
        layer.params["running_var"][:] = rng.uniform(0.5, 3.0, D)
    return layer


def valid_rows(x, lengths):
    """The valid steps of ``x`` as an (N, D) array, gathered by loops (no masks)."""
    return np.array([x[b, j] for b in range(len(lengths)) for j in range(lengths[b])])


# ----------------------------------------------------------------------------- gradients

@pytest.mark.parametrize("training", [True, False])
def test_gradients_match_central_differences(training):
    rng = np.random.default_rng(0)
    layer = randomised(BatchNorm(2), rng)
    x, t, lengths, pad = ragged_batch(rng)
    w = rng.normal(size=x.shape)
    frozen_stats = {k: layer.params[k].copy() for k in ("running_mean", "running_var")}

    def loss():
        if training:  # the training forward moves the running stats: keep them fixed
            for k, v in frozen_stats.items():
                layer.params[k][:] = v
        y, _, cache = layer.forward(x, t, lengths, training=training)
        return float((y * w).sum()), cache

    _, cache = loss()
    grads = layer.backward(w, cache)
    names = ["gamma", "beta", "x"] + ([] if training else ["running_mean", "running_var"])
    arrays = dict(layer.params, x=x)
    for name in names:
        numeric = numerical_gradient(lambda: loss()[0], arrays[name])
        assert relative_error(grads[name], numeric) <= GRAD_TOL, name
    assert np.all(grads["x"][pad] == 0) and np.all(np.isfinite(grads["x"]))
    if training:  # y does not depend on the running statistics
        assert np.all(grads["running_mean"] == 0) and np.all(grads["running_var"] == 0)
    else:
        assert np.all(grads["running_mean"] != 0) and np.all(grads["running_var"] != 0)
    assert set(grads) == set(layer.params) | {"x"}


def test_padding_garbage_changes_nothing():
    outs = []
    for garbage in (np.nan, 1e300, -7.0):
        rng = np.random.default_rng(1)
        layer = randomised(BatchNorm(2), rng)
        x, t, lengths, pad = ragged_batch(rng, garbage=garbage)
        w = rng.normal(size=x.shape)
        w[pad] = 1e3  # a gradient on the padding is ignored too
        y, _, cache = layer.forward(x, t, lengths, training=True)
        grads = layer.backward(w, cache)
        y_eval, _, cache_eval = layer.forward(x, t, lengths, training=False)
        grads_eval = layer.backward(w, cache_eval)
        assert np.all(y[pad] == 0) and np.all(y_eval[pad] == 0)
        outs.append((y, y_eval, grads, grads_eval, dict(layer.params)))
    first = outs[0]
    for other in outs[1:]:
        np.testing.assert_array_equal(other[0], first[0])
        np.testing.assert_array_equal(other[1], first[1])
        for g in (2, 3):
            for k in first[g]:
                np.testing.assert_array_equal(other[g][k], first[g][k])
        for k in first[4]:
            np.testing.assert_array_equal(other[4][k], first[4][k])


# ----------------------------------------------------------------------------- statistics

def test_statistics_are_those_of_the_valid_steps():
    rng = np.random.default_rng(2)
    layer = randomised(BatchNorm(3, momentum=1.0), rng)  # momentum 1: running = batch
    x, t, lengths, pad = ragged_batch(rng, B=4, T=6, D=3, lengths=(6, 1, 4, 0), garbage=50.0)
    rows = valid_rows(x, lengths)
    mu, var = rows.mean(axis=0), rows.var(axis=0)  # var: biased (ddof 0)
    y, _, _ = layer.forward(x, t, lengths, training=True)
    np.testing.assert_allclose(layer.params["running_mean"], mu, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(layer.params["running_var"], var, rtol=1e-12)
    g, b = layer.params["gamma"], layer.params["beta"]
    expected = g * (rows - mu) / np.sqrt(var + 1e-4) + b
    np.testing.assert_allclose(valid_rows(y, lengths), expected, rtol=1e-12, atol=1e-12)
    assert np.all(y[pad] == 0)
    # the padding's 50s would pull the mean up: a statistic over all entries differs
    assert not np.allclose(np.where(pad[:, :, None], 50.0, x).mean(axis=(0, 1)), mu)


def test_running_statistics_follow_the_moving_average():
    rng = np.random.default_rng(3)
    momentum, eps = 0.3, 1e-3
    layer = BatchNorm(2, momentum=momentum, eps=eps)
    rm, rv = np.zeros(2), np.ones(2)
    for step in range(3):
        x, t, lengths, _ = ragged_batch(rng, lengths=(5, 2, 3 + step % 2))
        rows = valid_rows(x, lengths)
        n = len(rows)
        mean = [sum(r[d] for r in rows) / n for d in range(2)]
        var = [sum((r[d] - mean[d]) ** 2 for r in rows) / n for d in range(2)]
        rm = [(1 - momentum) * rm[d] + momentum * mean[d] for d in range(2)]
        rv = [(1 - momentum) * rv[d] + momentum * var[d] for d in range(2)]
        arrays = (layer.params["running_mean"], layer.params["running_var"])
        layer.forward(x, t, lengths, training=True)
        assert layer.params["running_mean"] is arrays[0]  # updated in place
        assert layer.params["running_var"] is arrays[1]
        np.testing.assert_allclose(layer.params["running_mean"], rm, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(layer.params["running_var"], rv, rtol=1e-12)
    before = {k: v.copy() for k, v in layer.params.items()}
    layer.forward(x, t, lengths, training=False)  # evaluation leaves them alone
    for k, v in before.items():
        np.testing.assert_array_equal(layer.params[k], v)


def test_evaluation_uses_the_running_statistics():
    rng = np.random.default_rng(4)
    x, t, lengths, pad = ragged_batch(rng)
    fresh = BatchNorm(2, eps=1e-4)
    y, _, _ = fresh.forward(x, t, lengths, training=False)
    np.testing.assert_allclose(y[~pad], x[~pad] / np.sqrt(1.0 + 1e-4), rtol=1e-15)
    assert np.all(y[pad] == 0)
    layer = randomised(BatchNorm(2), rng)
    p = {k: v.copy() for k, v in layer.params.items()}
    y, _, _ = layer.forward(x, t, lengths, training=False)
    expected = (p["gamma"] * (x - p["running_mean"]) / np.sqrt(p["running_var"] + 1e-4)
                + p["beta"])
    np.testing.assert_allclose(y[~pad], expected[~pad], rtol=1e-13)


def test_a_constant_feature_trains_to_exactly_zero_with_finite_gradients():
    """var = 0: x - mu is exactly 0 (the mean is x_ref + mean(x - x_ref)), y = beta = 0."""
    layer = BatchNorm(2)
    B, T = 3, 4
    x = np.full((B, T, 2), 0.1)  # the plain mean of three 0.1 is not 0.1 in float64
    x[:, :, 1] = -3.7e5
    lengths = np.array([4, 3, 2])
    x[2, 2:] = np.nan
    x[1, 3:] = 123.0
    t = np.cumsum(np.ones((B, T)), axis=1)
    y, _, cache = layer.forward(x, t, lengths, training=True)
    assert np.all(y == 0)
    grads = layer.backward(np.random.default_rng(5).normal(size=y.shape), cache)
    assert all(np.all(np.isfinite(g)) for g in grads.values())
    assert np.all(layer.params["running_var"] == 0.9)  # 0.9 * 1 + 0.1 * 0
    one_step = BatchNorm(1)  # a single valid step: var = 0 too
    y1, _, _ = one_step.forward(np.full((2, 2, 1), 2.5), t[:2, :2], np.array([1, 0]))
    assert np.all(y1 == 0)


# ----------------------------------------------------------------------------- bad input

def _call(kind, value):
    rng = np.random.default_rng(6)
    layer = BatchNorm(2)
    x, t, lengths, _ = ragged_batch(rng)
    if kind == "x":
        x = value(x)
    elif kind == "t":
        t = value(t)
    elif kind == "lengths":
        lengths = value
    elif kind == "param":
        value(layer.params)
    elif kind == "state":
        return layer.forward(x, t, lengths, state=value)
    return layer.forward(x, t, lengths)


@pytest.mark.parametrize("kind, value, exc, words", [
    ("x", lambda x: x[:, :, :1], ValueError, "x must have shape"),
    ("x", lambda x: x[0], ValueError, "x must have 3 dimensions"),
    ("x", lambda x: x.astype(np.float32), TypeError, "x must have dtype float64"),
    ("x", lambda x: np.where(np.arange(5)[None, :, None] == 1, np.inf, x), ValueError,
     "x has a non-finite value"),
    ("x", lambda x: np.where(np.arange(5)[None, :, None] == 0, 2 * X_LIMIT, x), ValueError,
     "x must lie within"),
    ("t", lambda t: t.astype(np.float32), TypeError, "t must have dtype float64"),
    ("lengths", np.array([5, 6, 1]), ValueError, "lengths must lie in"),
    ("lengths", np.array([5, 1]), ValueError, "lengths must have shape"),
    ("param", lambda p: p["running_var"].__setitem__(1, np.nan), ValueError,
     "params['running_var'] has a non-finite value"),
    ("param", lambda p: p["running_var"].__setitem__(0, -1e-3), ValueError,
     "params['running_var'] must be >= 0"),
    ("param", lambda p: p.__setitem__("gamma", np.ones(3)), ValueError,
     "params['gamma'] must be an array of shape (2,)"),
    ("param", lambda p: p.__setitem__("beta", np.zeros(2, np.float32)), ValueError,
     "params['beta'] must be an array of shape (2,) and dtype float64"),
    ("param", lambda p: p.pop("running_mean"), ValueError, "params must hold exactly"),
    ("state", (np.zeros((3, 2)),), TypeError, "state must be None or ()"),
])
def test_bad_input_is_refused_by_name(kind, value, exc, words):
    with pytest.raises(exc, match=words.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):
        _call(kind, value)


@pytest.mark.parametrize("kwargs, exc, words", [
    (dict(momentum=0.0), ValueError, "momentum must lie in"),
    (dict(momentum=1.5), ValueError, "momentum must lie in"),
    (dict(momentum=float("nan")), ValueError, "momentum must lie in"),
    (dict(momentum=True), TypeError, "momentum must be a number"),
    (dict(eps=0.0), ValueError, "eps must be a finite number > 0"),
    (dict(eps=-1e-4), ValueError, "eps must be a finite number > 0"),
    (dict(eps=float("inf")), ValueError, "eps must be a finite number > 0"),
    (dict(eps="1e-4"), TypeError, "eps must be a finite number"),
    (dict(dtype=np.int32), TypeError, "dtype must be float32 or float64"),
    (dict(backend="tpu"), ValueError, "backend must be one of"),
    (dict(hidden_size=3), ValueError, "hidden_size must equal input_size"),
])
def test_bad_constructor_arguments_are_refused_by_name(kwargs, exc, words):
    with pytest.raises(exc, match=words):
        BatchNorm(2, **kwargs)
    with pytest.raises(ValueError, match="input_size must be a positive int"):
        BatchNorm(0)


def test_training_without_a_valid_step_is_refused_evaluation_is_not():
    layer = BatchNorm(2)
    x = np.full((2, 3, 2), np.nan)
    t = np.zeros((2, 3))
    before = {k: v.copy() for k, v in layer.params.items()}
    with pytest.raises(ValueError, match="training mode needs at least one valid step"):
        layer.forward(x, t, np.array([0, 0]), training=True)
    for k, v in before.items():  # nothing was updated
        np.testing.assert_array_equal(layer.params[k], v)
    y, state, cache = layer.forward(x, t, np.array([0, 0]), training=False)
    assert np.all(y == 0) and state == ()
    assert np.all(layer.backward(np.ones_like(y), cache)["x"] == 0)


def test_backward_refuses_a_foreign_cache_and_bad_gradients():
    rng = np.random.default_rng(7)
    layer, other = BatchNorm(2), BatchNorm(2)
    x, t, lengths, _ = ragged_batch(rng)
    y, _, cache = layer.forward(x, t, lengths)
    with pytest.raises(ValueError, match="another layer"):
        other.backward(y, cache)
    with pytest.raises(TypeError, match="cache must be the dict"):
        layer.backward(y, None)
    with pytest.raises(ValueError, match="dh must have shape"):
        layer.backward(y[:, :2], cache)
    with pytest.raises(TypeError, match="dh must have dtype float64"):
        layer.backward(y.astype(np.float32), cache)
    with pytest.raises(ValueError, match="dh has a non-finite value"):
        layer.backward(np.full_like(y, np.nan), cache)
    with pytest.raises(TypeError, match="dstate must be None or"):
        layer.backward(y, cache, (y,))
    layer.backward(y, cache, ())  # the empty state is fine


# ----------------------------------------------------------------------------- the protocol

def test_protocol_attributes_config_and_every_backend_name():
    layer = BatchNorm(3, momentum=0.25, eps=1e-3, dtype=np.float32, backend="cuda")
    assert (layer.input_size, layer.hidden_size, layer.output_size) == (3, 3, 3)
    assert layer.state_names == () and layer.state_sizes == () and layer.streamable
    assert layer.frozen == {"running_mean", "running_var"} and layer.bounds == {}
    assert sorted(layer.params) == ["beta", "gamma", "running_mean", "running_var"]
    for k, v in dict(gamma=1, beta=0, running_mean=0, running_var=1).items():
        assert layer.params[k].dtype == np.float32 and np.all(layer.params[k] == v)
    for name in ("numpy", "numba", "cuda"):  # always computed in NumPy
        layer.backend = name
        x = np.ones((1, 2, 3), np.float32)
        assert layer.forward(x, np.zeros((1, 2)))[2]["updates"] == 0
    with pytest.raises(ValueError, match="backend must be one of"):
        layer.backend = "gpu"
    cfg = layer.config()
    assert cfg.pop("kind") == "BatchNorm"
    rebuilt = BatchNorm(**json.loads(json.dumps(cfg)))
    assert rebuilt.config() == layer.config()
    assert (rebuilt.momentum, rebuilt.eps, rebuilt.dtype, rebuilt.backend) == (
        0.25, 1e-3, np.float32, "cuda")
    assert "BatchNorm(3" in repr(layer)


def test_the_optimizer_never_touches_the_running_statistics():
    rng = np.random.default_rng(8)
    layer = BatchNorm(2)
    x, t, lengths, _ = ragged_batch(rng)
    opt = pl.Adam(layer, lr=0.1)
    y, _, cache = layer.forward(x, t, lengths, training=False)
    grads = layer.backward(rng.normal(size=y.shape), cache)
    stats = {k: layer.params[k].copy() for k in layer.frozen}
    gamma = layer.params["gamma"].copy()
    opt.step(grads)
    for k, v in stats.items():
        np.testing.assert_array_equal(layer.params[k], v)
    assert not np.array_equal(layer.params["gamma"], gamma)


def test_float32_matches_float64():
    rng = np.random.default_rng(9)
    x, t, lengths, pad = ragged_batch(rng)
    results = {}
    for dt in (np.float64, np.float32):
        layer = randomised(BatchNorm(2, dtype=dt), np.random.default_rng(10))
        for training in (True, False):
            y, _, cache = layer.forward(x.astype(dt), t, lengths, training=training)
            grads = layer.backward(np.ones_like(y), cache)
            assert y.dtype == dt and all(g.dtype == dt for g in grads.values())
            results[dt, training] = y, grads
        assert all(v.dtype == dt for v in layer.params.values())
    for training in (True, False):
        y64, g64 = results[np.float64, training]
        y32, g32 = results[np.float32, training]
        np.testing.assert_allclose(y32, y64, rtol=1e-5, atol=1e-5)
        for k in g64:
            np.testing.assert_allclose(g32[k], g64[k], rtol=1e-4, atol=1e-4)


def test_in_a_network_and_a_stream():
    """BatchNorm in front of a Phased LSTM: the network's gradients hold the layer's, and at
    evaluation a stream of the bare layer, packet by packet, equals the whole sequence."""
    rng = np.random.default_rng(11)
    x, t, lengths, _ = ragged_batch(rng, lengths=(5, 5, 5))
    bn = randomised(BatchNorm(2), rng)
    net = pl.Network([bn, pl.PhasedLSTM(2, 3, rng=0)], pl.Dense(3, 2, rng=1))
    out, states, cache = net.forward(x, t, lengths, training=False)
    assert states[0] == ()
    grads = net.backward(np.ones_like(out), cache)
    assert {"layer0.gamma", "layer0.running_var"} <= set(grads)
    whole, _, _ = bn.forward(x, t, lengths, training=False)
    stream = Stream(bn, batch=3)
    parts = [stream.push(x[:, j:j + 2], t[:, j:j + 2]) for j in (0, 2, 4)]
    np.testing.assert_allclose(np.concatenate(parts, axis=1), whole, rtol=1e-15)
