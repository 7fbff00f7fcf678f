"""Bad input raises a clear ValueError/TypeError naming the argument; nothing is cast silently."""
import numpy as np
import pytest

import plstm_np as pl

from conftest import make_batch, make_network


@pytest.fixture
def layer(backend):
    """The same layer on each backend (the ``backend`` fixture of conftest.py): bad input is
    reported the same way whichever backend would have run it."""
    return pl.PhasedLSTM(2, 3, backend=backend, rng=0)


@pytest.fixture
def good():
    return np.zeros((2, 4, 2)), np.tile(np.arange(4.0), (2, 1))


@pytest.mark.parametrize("x, error, match", [
    (np.zeros((2, 4)), ValueError, "x must have 3 dimensions"),
    (np.zeros((2, 4, 5)), ValueError, r"x must have shape \(B, T, 2\)"),
    (np.zeros((2, 4, 2), np.float32), TypeError, "x must have dtype float64"),
    (np.zeros((2, 4, 2), np.int64), TypeError, "x must have dtype float64"),
    ([[[0.0, 0.0]]], TypeError, "x must be a numpy.ndarray"),
])
def test_bad_x(layer, good, x, error, match):
    with pytest.raises(error, match=match):
        layer.forward(x, good[1])


@pytest.mark.parametrize("t, error, match", [
    (np.zeros((2, 5)), ValueError, r"t must have shape \(2, 4\)"),
    (np.zeros(4), ValueError, "t must have shape"),
    (np.zeros((2, 4), np.float32), TypeError, "t must have dtype float64"),
    (np.zeros((2, 4), np.int64), TypeError, "t must have dtype float64"),
])
def test_bad_t(layer, good, t, error, match):
    with pytest.raises(error, match=match):
        layer.forward(good[0], t)


def test_non_finite_values_are_located(layer, good):
    x, t = good[0].copy(), good[1].copy()
    x[1, 2, 0] = np.nan
    with pytest.raises(ValueError, match=r"x has a non-finite value nan at index \(1, 2, 0\)"):
        layer.forward(x, t)
    x, t = good[0], good[1].copy()
    t[0, 3] = np.inf
    with pytest.raises(ValueError, match=r"t has a non-finite value inf at index \(0, 3\)"):
        layer.forward(x, t)
    # ... but padding beyond lengths may hold anything
    layer.forward(x, t, lengths=np.array([3, 4]))


@pytest.mark.parametrize("lengths, error, match", [
    (np.array([4, 5]), ValueError, r"lengths must lie in \[0, 4\].*lengths\[1\] = 5"),
    (np.array([-1, 2]), ValueError, r"lengths\[0\] = -1"),
    (np.array([4]), ValueError, r"lengths must have shape \(2\)"),
    (np.array([4.0, 4.0]), TypeError, "lengths must have an integer dtype"),
    ([4, 4], TypeError, "lengths must be a numpy.ndarray"),
])
def test_bad_lengths(layer, good, lengths, error, match):
    with pytest.raises(error, match=match):
        layer.forward(*good, lengths=lengths)


def test_bad_state(layer, good):
    with pytest.raises(ValueError, match=r"state\[0\] \(h0\) must have shape \(2, 3\)"):
        layer.forward(*good, state=(np.zeros((2, 4)), np.zeros((2, 3))))
    with pytest.raises(TypeError, match=r"state\[1\] \(c0\) must have dtype float64"):
        layer.forward(*good, state=(np.zeros((2, 3)), np.zeros((2, 3), np.float32)))
    with pytest.raises(TypeError, match="state must be a tuple"):
        layer.forward(*good, state=np.zeros((2, 3)))


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(tau=np.array([1.0, 0.0, 2.0])), ValueError, "tau must be finite and > 0"),
    (dict(tau=-1.0), ValueError, "tau must be finite and > 0"),
    (dict(r_on=0.0), ValueError, r"r_on must lie in \(0, 1\]"),
    (dict(r_on=1.5), ValueError, r"r_on must lie in \(0, 1\]"),
    (dict(r_on=np.array([0.1, 0.2])), ValueError, r"r_on must be a scalar or have shape \(3,\)"),
    (dict(leak=-0.1), ValueError, "leak"),
    (dict(dtype=np.int32), TypeError, "dtype must be float32 or float64"),
    (dict(backend="torch"), ValueError, "backend must be one of"),
    (dict(tau_exp_range=(3, 0)), ValueError, "tau_exp_range"),
])
def test_bad_construction(kwargs, error, match):
    with pytest.raises(error, match=match):
        pl.PhasedLSTM(2, 3, rng=0, **kwargs)


@pytest.mark.parametrize("size", [0, -3, 2.5, True])
def test_bad_sizes(size):
    with pytest.raises((ValueError, TypeError), match="hidden_size"):
        pl.PhasedLSTM(2, size)


def test_network_structure_errors():
    a, b = pl.PhasedLSTM(2, 3, rng=0), pl.PhasedLSTM(4, 3, rng=0)
    with pytest.raises(ValueError,
                       match=r"layer1.input_size \(4\) must equal layer0.output_size \(3\)"):
        pl.Network([a, b], pl.Dense(3, 2))
    with pytest.raises(TypeError, match=r"layers\[1\] must be a sequence layer .*got Dense "
                                        r"without hidden_size, frozen"):
        pl.Network([a, pl.Dense(3, 3)], pl.Dense(3, 2))
    with pytest.raises(TypeError, match="non-empty list"):
        pl.Network([], pl.Dense(3, 2))
    with pytest.raises(ValueError, match=r"readout\.input_size"):
        pl.Network([a], pl.Dense(5, 2))
    with pytest.raises(TypeError, match="dtype"):
        pl.Network([a], pl.Dense(3, 2, dtype=np.float32))
    with pytest.raises(ValueError, match="readout_at"):
        pl.Network([a], pl.Dense(3, 2), readout_at="first")
    with pytest.raises(ValueError, match="loss"):
        pl.Network([a], pl.Dense(3, 2), loss="hinge")


def test_network_input_errors(rng, backend):
    net = make_network(rng, backend=backend)
    batch = make_batch(net, rng)
    with pytest.raises(ValueError, match="tokens are required"):
        net.forward(batch.x, batch.t, batch.lengths)
    bad_tokens = batch.tokens.copy()
    bad_tokens[0, 0] = 7
    with pytest.raises(ValueError, match=r"tokens must lie in \[0, 7\).*\(0, 0\)"):
        net.forward(batch.x, batch.t, batch.lengths, bad_tokens)
    with pytest.raises(ValueError, match="lengths must be >= 1"):
        net.forward(batch.x, batch.t, np.zeros(3, np.int64), batch.tokens)
    with pytest.raises(ValueError, match=r"y must hold class labels in \[0, 2\)"):
        net.loss_and_grads(batch.replace(y=np.array([0, 1, 2])))
    with pytest.raises(ValueError, match=r"y must have shape \(3\)"):
        net.loss_and_grads(batch.replace(y=np.zeros((3, 5), np.int64)))
    with pytest.raises(ValueError, match="state must be a list of 2"):
        net.forward(batch.x, batch.t, batch.lengths, batch.tokens, state=[None])


def test_mse_targets_must_match_dtype(rng, backend):
    net = make_network(rng, loss="mse", backend=backend)
    batch = make_batch(net, rng)
    with pytest.raises(TypeError, match="y must have dtype float64"):
        net.loss_and_grads(batch.replace(y=batch.y.astype(np.float32)))


def _bad_calls():
    """Bad calls of ``PhasedLSTM(2, 3).forward`` on a batch B = 2, T = 4 (float64)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 4, 2))
    t = np.sort(rng.uniform(0, 5, (2, 4)), axis=1)
    state = (np.zeros((2, 3)), np.zeros((2, 3)))

    def with_value(a, index, value):
        a = a.copy()
        a[index] = value
        return a

    return {
        "x 2-d": dict(x=x[:, :, 0], t=t),
        "x wrong features": dict(x=x[:, :, :1], t=t),
        "x float32": dict(x=x.astype(np.float32), t=t),
        "x int": dict(x=x.astype(np.int64), t=t),
        "x list": dict(x=x.tolist(), t=t),
        "x nan at a valid step": dict(x=with_value(x, (1, 2, 0), np.nan), t=t),
        "x inf at a valid step": dict(x=with_value(x, (0, 0, 1), -np.inf), t=t),
        "t wrong steps": dict(x=x, t=t[:, :3]),
        "t 1-d": dict(x=x, t=t[0]),
        "t float32": dict(x=x, t=t.astype(np.float32)),
        "t int": dict(x=x, t=t.astype(np.int64)),
        "t list": dict(x=x, t=t.tolist()),
        "t nan at a valid step": dict(x=x, t=with_value(t, (1, 2), np.nan)),
        "t inf at a valid step": dict(x=x, t=with_value(t, (0, 3), np.inf)),
        "t nan at a valid step before padding": dict(x=x, t=with_value(t, (1, 1), np.nan),
                                                     lengths=np.array([4, 2])),
        "lengths > T": dict(x=x, t=t, lengths=np.array([5, 1])),
        "lengths negative": dict(x=x, t=t, lengths=np.array([-1, 2])),
        "lengths wrong shape": dict(x=x, t=t, lengths=np.array([4])),
        "lengths float": dict(x=x, t=t, lengths=np.array([4.0, 4.0])),
        "lengths list": dict(x=x, t=t, lengths=[4, 4]),
        "state not a tuple": dict(x=x, t=t, state=state[0]),
        "state of 3": dict(x=x, t=t, state=(*state, state[0])),
        "h0 wrong shape": dict(x=x, t=t, state=(np.zeros((2, 4)), state[1])),
        "c0 wrong shape": dict(x=x, t=t, state=(state[0], np.zeros((3, 3)))),
        "c0 float32": dict(x=x, t=t, state=(state[0], state[1].astype(np.float32))),
        "h0 nan": dict(x=x, t=t, state=(with_value(state[0], (1, 1), np.nan), state[1])),
    }


BAD_CALLS = _bad_calls()


def _error_of(layer, call):
    with pytest.raises((ValueError, TypeError)) as err:
        layer.forward(**call)
    return type(err.value), str(err.value)


@pytest.mark.parametrize("case", sorted(BAD_CALLS))
def test_bad_input_same_error_on_every_backend(backend, case):
    """The exception type and the whole message equal the reference's, for every bad input."""
    call = BAD_CALLS[case]
    expected = _error_of(pl.PhasedLSTM(2, 3, backend="numpy", rng=1), call)
    assert _error_of(pl.PhasedLSTM(2, 3, backend=backend, rng=1), call) == expected


@pytest.mark.parametrize("case", ["x float16", "x float64 into float32", "c0 float64"])
def test_bad_input_same_error_on_every_backend_float32(backend, case):
    """The same for a float32 layer: float64 x or state is refused, not cast."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 4, 2))
    t = np.sort(rng.uniform(0, 5, (2, 4)), axis=1)
    s32 = (np.zeros((2, 3), np.float32), np.zeros((2, 3), np.float32))
    call = {"x float16": dict(x=x.astype(np.float16), t=t),
            "x float64 into float32": dict(x=x, t=t),
            "c0 float64": dict(x=x.astype(np.float32), t=t, state=(s32[0], np.zeros((2, 3))))}[case]
    expected = _error_of(pl.PhasedLSTM(2, 3, dtype=np.float32, backend="numpy", rng=1), call)
    assert expected[0] is TypeError and "float32" in expected[1]
    got = _error_of(pl.PhasedLSTM(2, 3, dtype=np.float32, backend=backend, rng=1), call)
    assert got == expected


# ---------------------------------------------------------------- backward and parameters
@pytest.fixture
def forward_cache(layer, good):
    x, t = good
    h, _, cache = layer.forward(x, t, training=True)
    return h, cache


@pytest.mark.parametrize("case, error, match", [
    ("dh batch", ValueError, r"dh must have shape \(2, 4, 3\)"),
    ("dh steps", ValueError, r"dh must have shape \(2, 4, 3\)"),
    ("dh hidden", ValueError, r"dh must have shape \(2, 4, 3\)"),
    ("dh float32", TypeError, "dh must have dtype float64"),
    ("dh list", TypeError, "dh must be a numpy.ndarray"),
    ("dh nan", ValueError, r"dh has a non-finite value nan at index \(1, 2, 0\)"),
    ("dstate shape", ValueError, r"dstate\[0\] \(h0\) must have shape \(2, 3\)"),
    ("dstate inf", ValueError, r"dstate\[1\] \(c0\) has a non-finite value inf"),
    ("dstate single", TypeError, "dstate must be a tuple"),
    ("cache other layer", ValueError, "cache comes from another layer"),
    ("cache not a dict", TypeError, "cache must be the dict this layer's forward returned"),
])
def test_backward_checks_its_inputs_on_every_backend(layer, good, forward_cache, case, error,
                                                     match):
    """The Numba kernel read out of bounds with such a dh (sums of |dWx| up to 1e249)."""
    h, cache = forward_cache
    dh, dstate = np.ones_like(h), None
    if case == "dh batch":
        dh = np.ones((1, 4, 3))
    elif case == "dh steps":
        dh = np.ones((2, 5, 3))
    elif case == "dh hidden":
        dh = np.ones((2, 4, 4))
    elif case == "dh float32":
        dh = dh.astype(np.float32)
    elif case == "dh list":
        dh = dh.tolist()
    elif case == "dh nan":
        dh[1, 2, 0] = np.nan
    elif case == "dstate shape":
        dstate = (np.ones((2, 4)), np.ones((2, 3)))
    elif case == "dstate inf":
        dstate = (np.ones((2, 3)), np.full((2, 3), np.inf))
    elif case == "dstate single":
        dstate = np.ones((2, 3))
    elif case == "cache other layer":
        other = pl.PhasedLSTM(2, 3, backend=layer.backend, rng=0)
        cache = other.forward(*good)[2]
    elif case == "cache not a dict":
        cache = [cache]
    with pytest.raises(error, match=match):
        layer.backward(dh, cache, dstate)


def test_valid_backward_inputs_still_pass(layer, forward_cache):
    h, cache = forward_cache
    grads = layer.backward(np.ones_like(h), cache, (np.ones((2, 3)), np.zeros((2, 3))))
    assert all(np.all(np.isfinite(g)) for g in grads.values())


@pytest.mark.parametrize("name, value, match", [
    ("tau", -1.0, r"tau must be finite and > 0, got tau\[0\] = -1"),
    ("tau", 0.0, r"tau must be finite and > 0, got tau\[0\] = 0"),
    ("tau", np.nan, r"params\['tau'\] has a non-finite value nan"),
    ("r_on", 0.0, r"r_on must lie in \(0, 1\], got r_on\[0\] = 0"),
    ("r_on", 3.0, r"r_on must lie in \(0, 1\], got r_on\[0\] = 3"),
    ("r_on", np.nan, r"params\['r_on'\] has a non-finite value"),
    ("s", np.inf, r"params\['s'\] has a non-finite value"),
    ("Wx", np.nan, r"params\['Wx'\] has a non-finite value"),
    ("w_co", np.inf, r"params\['w_co'\] has a non-finite value"),
    ("Wh", "shape", r"params\['Wh'\] must be an array of shape \(3, 12\)"),
    ("b", "float32", r"params\['b'\] must be an array of shape \(12,\) and dtype float64"),
    ("tau", "missing", r"params must hold exactly"),
])
def test_parameters_are_checked_where_they_are_used(layer, good, name, value, match):
    """Set by hand after construction: refused at the next forward, on every backend."""
    if value == "shape":
        layer.params[name] = np.zeros((3, 13))
    elif value == "float32":
        layer.params[name] = layer.params[name].astype(np.float32)
    elif value == "missing":
        del layer.params[name]
    else:
        layer.params[name][0] = value
    for training in (True, False):
        with pytest.raises(ValueError, match=match):
            layer.forward(*good, training=training)


@pytest.mark.parametrize("make, error, match", [
    (lambda: pl.PhasedLSTM(1, 2, init_std=np.nan), ValueError, "init_std must be a finite"),
    (lambda: pl.PhasedLSTM(1, 2, init_std=-0.1), ValueError, "init_std must be a finite"),
    (lambda: pl.LSTM(1, 2, time_scale=np.nan), ValueError, "time_scale must be a finite"),
    (lambda: pl.LSTM(1, 2, time_scale="1"), TypeError, "time_scale must be a finite"),
    (lambda: pl.PhasedLSTM(1, 2, tau_exp_range=(0, 1000)), ValueError,
     "tau_exp_range's high must be at most 709"),
    (lambda: pl.PhasedLSTM(1, 2, tau_exp_range=(0, np.inf)), ValueError,
     "tau_exp_range must be finite"),
    (lambda: pl.PhasedLSTM(1, 2, tau_exp_range=5), TypeError, "tau_exp_range must be a pair"),
    (lambda: pl.time_gate(np.ones(3), 0.0, 0.0, 0.05), ValueError,
     "tau must be finite and > 0, got 0.0"),
    (lambda: pl.time_gate(np.ones(3), 1.0, 0.0, 0.0), ValueError, r"r_on must lie in \(0, 1\]"),
    (lambda: pl.time_gate(np.ones(3), np.nan, 0.0, 0.5), ValueError, "tau must be finite"),
])
def test_constructor_and_time_gate_arguments(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_network_checks_dout_dstates_and_its_readout(rng, backend):
    net = make_network(rng, backend=backend)
    batch = make_batch(net, rng)
    out, _, cache = net.forward(batch.x, batch.t, batch.lengths, batch.tokens)
    with pytest.raises(ValueError, match="dout must have shape"):
        net.backward(np.ones((out.shape[0] + 1,) + out.shape[1:]), cache)
    bad = np.ones_like(out)
    bad.flat[0] = np.nan
    with pytest.raises(ValueError, match="dout has a non-finite value"):
        net.backward(bad, cache)
    with pytest.raises(TypeError, match="dstates must be None or a list of"):
        net.backward(np.ones_like(out), cache, dstates=[None] * (len(net.layers) + 1))
    net.params["readout.b"][0] = np.nan
    with pytest.raises(ValueError, match=r"params\['readout.b'\] has a non-finite value"):
        net.forward(batch.x, batch.t, batch.lengths, batch.tokens)
