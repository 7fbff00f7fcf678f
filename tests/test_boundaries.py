"""Property-based tests (Hypothesis) of the public entry points at their boundaries: random
shapes, dtypes, strides and extreme values give either a correct result or a clear
ValueError/TypeError naming the argument: never a NaN from finite input, never an error
from inside NumPy or Numba."""
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import plstm_np as pl
from plstm_np.time_gate import phase, time_gate
from plstm_np.validation import TINY

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])
DTYPES = [np.float64, np.float32, np.float16, np.int64]
#: Words one of which a clear message of a layer's or network's input check contains.
ARGUMENTS = ("x", "t", "lengths", "state", "tokens", "dtype", "shape")


def extreme_floats(finite=True):
    """Floats from the whole float64 range: huge, tiny, subnormal, signed zeros."""
    return st.floats(allow_nan=not finite, allow_infinity=not finite, width=64)


@st.composite
def arrays(draw, shape, finite, dtypes=DTYPES):
    """An array of a random dtype, maybe a non-contiguous view of a bigger one."""
    dtype = draw(st.sampled_from(dtypes))
    if np.dtype(dtype).kind == "f":
        elements = st.floats(allow_nan=not finite, allow_infinity=not finite,
                             width=np.dtype(dtype).itemsize * 8)
    else:
        elements = st.integers(-10 ** 6, 10 ** 6)
    if draw(st.booleans()) and shape and shape[-1] > 0:  # a strided view
        wide = shape[:-1] + (2 * shape[-1],)
        return draw(hnp.arrays(dtype, wide, elements=elements))[..., ::2]
    return draw(hnp.arrays(dtype, shape, elements=elements))


def assert_clear(err):
    """A ValueError or TypeError of plstm_np's own checks, naming an argument."""
    assert type(err) in (ValueError, TypeError), repr(err)
    text = str(err)
    assert re.search(r"\b(" + "|".join(ARGUMENTS) + r")\b", text), text
    tb = err.__traceback__
    while tb.tb_next is not None:
        tb = tb.tb_next
    assert "plstm_np" in tb.tb_frame.f_code.co_filename, (
        f"raised inside {tb.tb_frame.f_code.co_filename}: {text}")


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@SETTINGS
@given(data=st.data(), B=st.integers(0, 3), T=st.integers(0, 4), D=st.integers(1, 3),
       finite=st.booleans(), training=st.booleans(), dtype=st.sampled_from([np.float64,
                                                                             np.float32]))
def test_layer_forward_at_the_boundary(backend, data, B, T, D, finite, training, dtype):
    layer = pl.PhasedLSTM(2, 3, backend=backend, rng=0, dtype=dtype, r_on=0.5)
    x = data.draw(arrays((B, T, D), finite))
    t = data.draw(arrays((B, T), finite, dtypes=[np.float64, np.float64, np.float32]))
    lengths = data.draw(st.none() | hnp.arrays(np.int64, (B,), elements=st.integers(-1, T + 1)))
    try:
        h, (hT, cT), _ = layer.forward(x, t, lengths, training=training)
    except (ValueError, TypeError) as err:
        assert_clear(err)
        return
    # accepted: then x, t and lengths were valid, and the result is a state of the cell
    assert x.dtype == dtype and x.shape[2] == 2 and t.dtype == np.float64
    assert np.all(np.isfinite(h)) and np.all(np.abs(h) <= 1.0)
    assert np.all(np.isfinite(hT)) and np.all(np.isfinite(cT))


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@SETTINGS
@given(data=st.data(), B=st.integers(1, 3), T=st.integers(1, 4))
def test_extreme_finite_values_never_give_nan(backend, data, B, T):
    """Finite inputs anywhere in the float64 range (t up to 1e308 included): finite outputs
    and gradients, or a clear refusal."""
    net = pl.Network([pl.PhasedLSTM(2, 3, backend=backend, rng=0, r_on=0.5)],
                     readout=pl.Dense(3, 2, rng=1))
    x = data.draw(hnp.arrays(np.float64, (B, T, 2), elements=extreme_floats()))
    t = np.sort(data.draw(hnp.arrays(np.float64, (B, T), elements=extreme_floats())), axis=1)
    y = data.draw(hnp.arrays(np.int64, (B,), elements=st.integers(0, 1)))
    batch = pl.Dataset(x, t, y)
    try:
        loss, grads = net.loss_and_grads(batch)
    except (ValueError, TypeError) as err:
        assert_clear(err)
        return
    assert np.isfinite(loss)
    for name, g in grads.items():
        assert np.all(np.isfinite(g)), name


@SETTINGS
@given(t=extreme_floats(), tau=st.floats(1e-3, 1e6), s=st.floats(-1e6, 1e6),
       r_on=st.floats(1e-3, 1.0))
def test_the_gate_is_in_its_range_for_any_finite_time(t, tau, s, r_on):
    phi = phase(t, tau, s)
    k = time_gate(t, tau, s, r_on, leak=1e-3)
    assert 0.0 <= phi < 1.0 and 0.0 <= k <= 1.0


@SETTINGS
@given(tau=extreme_floats(finite=False), r_on=extreme_floats(finite=False))
def test_the_gate_refuses_a_timing_outside_its_domain(tau, r_on):
    """Subnormal tau and r_on count as 0: their reciprocals overflow (k was 2 at r_on =
    5e-324)."""
    try:
        k = time_gate(1.0, tau, 0.0, r_on)
    except ValueError as err:
        assert "tau" in str(err) or "r_on" in str(err)
        assert not (np.isfinite(tau) and tau >= TINY and TINY <= r_on <= 1)
        return
    assert np.isfinite(tau) and tau >= TINY and TINY <= r_on <= 1 and 0 <= k <= 1


@pytest.mark.parametrize("name, value", [("tau", 5e-324), ("tau", TINY / 2),
                                         ("r_on", 5e-324), ("r_on", TINY / 2)])
def test_subnormal_timing_is_refused(name, value):
    timing = {"tau": 3.0, "r_on": 0.5, name: value}
    with pytest.raises(ValueError, match=f"{name} .*got {value!r} .*subnormal"):
        time_gate(1.0, timing["tau"], 0.0, timing["r_on"])
    layer = pl.PhasedLSTM(1, 2, rng=0)
    layer.params[name][1] = value
    with pytest.raises(ValueError, match=rf"{name}\[1\] = {value!r} .*subnormal"):
        layer.forward(np.ones((1, 2, 1)), np.zeros((1, 2)))
    assert 0 <= time_gate(0.0, 3.0, 0.0, TINY) <= 1  # the smallest normal float is valid


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@SETTINGS
@given(r_on=hnp.arrays(np.float64, 3, elements=st.floats(1e-300, 1.0)),
       tau=hnp.arrays(np.float64, 3, elements=st.floats(1.0, 10.0)),
       t=hnp.arrays(np.float64, 6, elements=st.floats(0.0, 100.0)))
@example(r_on=np.array([1e-300, 1e-160, 0.5]), tau=np.array([1.0, 2.0, 3.0]),
         t=np.array([0.0, 1.0, 2.0, 2.5, 3.0, 4.0]))  # open at t = 0, 1, 2, 3, 4
def test_a_tiny_open_ratio_gives_finite_gradients(backend, r_on, tau, t):
    """r_on down to 1e-300 set by hand (s = 0, so that t = 0 lies on a kink): states in
    [-1, 1], finite gradients equal to the reference's (2 / r_on**2 overflowed there)."""
    def run(name):
        layer = pl.PhasedLSTM(1, 3, backend=name, rng=0, dtype=np.float64, learn_r_on=True)
        layer.params.update(r_on=r_on.copy(), tau=tau.copy(), s=np.zeros(3))
        x, times = np.ones((1, 6, 1)), np.sort(t)[None]
        h, _, cache = layer.forward(x, times, training=True)
        return h, layer.backward(np.ones_like(h), cache)

    h, grads = run(backend)
    assert np.all(np.abs(h) <= 1.0)
    assert all(np.all(np.isfinite(g)) for g in grads.values())
    h_ref, grads_ref = run("numpy")
    np.testing.assert_allclose(h, h_ref, rtol=1e-12, atol=1e-14)
    for name in grads_ref:
        np.testing.assert_allclose(grads[name], grads_ref[name], rtol=1e-9, atol=1e-12,
                                   err_msg=name)


@SETTINGS
@given(data=st.data(), batch=st.integers(1, 2), n=st.integers(0, 3))
def test_a_stream_at_the_boundary(data, batch, n):
    """Random packets (dtypes, extreme and out-of-order times): a read-out of the packet's
    shape, finite, or a clear refusal that leaves the stream as it was."""
    net = pl.Network([pl.PhasedLSTM(2, 3, backend="numba", rng=0, r_on=0.5)],
                     readout=pl.Dense(3, 2, rng=1), readout_at="every")
    stream = net.stream(batch=batch)
    stream.push(np.zeros((batch, 1, 2)), np.zeros((batch, 1)))
    for _ in range(2):
        x = data.draw(arrays((batch, n, 2), finite=data.draw(st.booleans())))
        t = data.draw(hnp.arrays(np.float64, (batch, n), elements=st.floats(-1e18, 1e18)))
        before = [s[0].copy() for s in stream.states], stream.last_time.copy()
        try:
            y = stream.push(x, t)
        except (ValueError, TypeError) as err:
            assert_clear(err)
            assert all(np.array_equal(a, s[0]) for a, s in zip(before[0], stream.states))
            assert np.array_equal(before[1], stream.last_time, equal_nan=True)
            continue
        assert y.shape == (batch, n, 2) and np.all(np.isfinite(y))
        if n:  # accepted: then no stream's clock went back
            assert np.all(np.diff(t, axis=1) >= 0) and np.all(~(t[:, 0] < before[1]))


@SETTINGS
@given(payload=st.binary(max_size=400))
def test_loading_random_bytes_as_a_checkpoint_names_the_file(tmp_path_factory, payload):
    path = tmp_path_factory.mktemp("ckpt") / "model.npz"
    path.write_bytes(payload)
    with pytest.raises(ValueError) as info:
        pl.load(path)
    assert str(path) in str(info.value)


@SETTINGS
@given(payload=st.binary(max_size=200))
def test_reading_random_bytes_as_events_gives_events_or_names_the_file(tmp_path_factory,
                                                                        payload):
    path = tmp_path_factory.mktemp("events") / "00001.bin"
    path.write_bytes(payload)
    try:
        events = pl.nmnist.read_events(path)
    except ValueError as err:
        assert str(path) in str(err)
        return
    assert len(events) > 0 and np.all(np.diff(events["t"]) >= 0)
    assert events["x"].max() < 34 and events["y"].max() < 34
