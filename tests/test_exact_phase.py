"""The phase is exact to rounding at any float64 timestamp (Unix ms, µs, ns), on every
backend: checked against rational arithmetic (``fractions.Fraction``) for t up to 1e18 and
tau from the 1e-3 floor to 1e6, and through the layers, BPTT and streams at timestamps
whose quotient ``t / tau`` is far beyond 2**53."""
from fractions import Fraction

import numpy as np
import pytest

import plstm_np as pl
from plstm_np import scalar_math
from plstm_np.backends.numba import cell_math
from plstm_np.time_gate import phase, time_gate

from conftest import assert_close

ULP_ONE = 2.0 ** -52


def exact_phase(t, tau, s):
    """((t - s) mod tau) / tau in rational arithmetic, of the float64 arguments."""
    x = Fraction(float(t)) - Fraction(float(s))
    tau = Fraction(float(tau))
    return (x - tau * (x // tau)) / tau


def phase_error(phi, exact):
    """|phi - exact| on the circle (phase 1 is phase 0)."""
    d = abs(Fraction(float(phi)) - exact)
    return float(min(d, 1 - d))


def cases(n=400, seed=0):
    """(t, tau, s) over the whole range: |t| = 10^U(-3, 18) of either sign, tau =
    10^U(-3, 6), s = U(-3, 3) tau; and the sensor clocks of the issue."""
    rng = np.random.default_rng(seed)
    t = 10.0 ** rng.uniform(-3, 18, n) * rng.choice([-1.0, 1.0], n)
    tau = 10.0 ** rng.uniform(-3, 6, n)
    s = rng.uniform(-3, 3, n) * tau
    special_t = np.array([1.7e12, 1.7e15, 1.7e18, 1.7e18 + 7 * 256, 2.0 ** 60, -1.7e15])
    special_tau = np.array([1e-3, 10.0, 7.3, 1e-3, 3.0, 1e6])
    special_s = np.array([0.0, 3.7, -2.0, 5e-4, 1.5, 1e5])
    return (np.concatenate([t, special_t]), np.concatenate([tau, special_tau]),
            np.concatenate([s, special_s]))


def numba_phase(t, tau, s):
    return np.array([cell_math.phase(a, b, 1.0 / b, c) for a, b, c in zip(t, tau, s)])


def numba_phase_fast(t, tau, s):
    """The kernels' vectorised row path, where it applies (|t / tau| < FAST_QUOTIENT)."""
    return np.array([cell_math.phase_fast(a, b, 1.0 / b, np.fmod(c, b))
                     if abs(a / b) < cell_math.FAST_QUOTIENT else np.nan
                     for a, b, c in zip(t, tau, s)])


def scalar_phase(t, tau, s):
    return np.array([scalar_math.phase(float(a), float(b), float(c))
                     for a, b, c in zip(t, tau, s)])


IMPLEMENTATIONS = {"numpy": phase, "scalar_math (cuda)": scalar_phase,
                   "numba": numba_phase, "numba row": numba_phase_fast}


@pytest.mark.parametrize("name", list(IMPLEMENTATIONS))
def test_phase_is_within_an_ulp_of_the_exact_rational_phase(name):
    t, tau, s = cases()
    got = IMPLEMENTATIONS[name](t, tau, s)
    reference = phase(t, tau, s)
    checked = 0
    for i in range(len(t)):
        if np.isnan(got[i]):  # the row path does not apply here
            continue
        assert 0.0 <= got[i] < 1.0
        err = phase_error(got[i], exact_phase(t[i], tau[i], s[i]))
        assert err <= ULP_ONE, (t[i], tau[i], s[i], got[i], err)
        assert got[i] == reference[i], "every backend computes the same bits"
        checked += 1
    assert checked >= 150


def test_open_closed_decisions_at_unix_microseconds_are_exact():
    """The issue's case: 480 decisions at t ~ 1.7e15 (Unix µs), 21 of them wrong before."""
    rng = np.random.default_rng(1)
    t = 1.7e15 + rng.uniform(0, 1e9, 480)
    tau = 10.0 ** rng.uniform(0, 3, 480)
    s = rng.uniform(0, 1, 480) * tau
    r_on = 0.05
    k = time_gate(t, tau, s, r_on)
    for i in range(480):
        exact = exact_phase(t[i], tau[i], s[i])
        assert (k[i] > 0) == (exact < Fraction(r_on)) or exact == 0, i


def test_the_gate_at_unix_milliseconds_is_exact():
    """k at 1.7e12 was off by 3.5e-3: now within float64 rounding of the exact gate."""
    t, tau, s, r_on = 1.7e12 + 0.123, 7.3, 1.1, 0.05
    phi = exact_phase(t, tau, s)
    r = Fraction(r_on)
    k_exact = 2 * phi / r if phi < r / 2 else (2 - 2 * phi / r if phi < r else 0)
    assert abs(time_gate(t, tau, s, r_on) - float(k_exact)) < 1e-13


def huge_time_problem(B=3, T=40, D=2, seed=0):
    """Timestamps of ~1.7e18 (Unix ns), 1,792 apart, whose quotient t / tau exceeds 2**53."""
    rng = np.random.default_rng(seed)
    t = 1.7e18 + 7 * 256 * np.arange(T, dtype=np.float64)[None, :] + 256 * np.arange(B)[:, None]
    x = rng.normal(size=(B, T, D))
    return x, t


@pytest.mark.parametrize("training", [True, False], ids=["training", "evaluation"])
def test_layers_stay_bounded_and_equal_the_reference_at_huge_timestamps(backend, training):
    """The issue's reproduction: Numba returned hidden states of 1e146-1e207 here."""
    x, t = huge_time_problem()
    ref = pl.PhasedLSTM(2, 8, backend="numpy", rng=0, r_on=0.3)
    layer = pl.PhasedLSTM(2, 8, backend=backend, rng=0, r_on=0.3)
    h_ref, state_ref, cache_ref = ref.forward(x, t, training=training)
    h, state, cache = layer.forward(x, t, training=training)
    assert np.all(np.abs(h) <= 1.0)
    assert_close(h, h_ref, backend, np.float64, "h")
    assert_close(state, state_ref, backend, np.float64, "state")
    if not training and backend != "numpy":  # the skipping kernels update the open neurons
        p = layer.params
        is_open = time_gate(t[:, :, None], p["tau"], p["s"], p["r_on"]) > 0
        assert 0 < cache["updates"] == is_open.sum() < is_open.size


def test_bptt_at_huge_timestamps_equals_the_reference(backend):
    x, t = huge_time_problem(B=2, T=16, seed=1)
    dh = np.random.default_rng(2).normal(size=(x.shape[0], x.shape[1], 8))
    grads = {}
    for name in ("numpy", backend):
        layer = pl.PhasedLSTM(2, 8, backend=name, rng=0, r_on=0.3)
        _, _, cache = layer.forward(x, t, training=True)
        grads[name] = layer.backward(dh, cache)
    for key, ref in grads["numpy"].items():
        assert np.all(np.isfinite(grads[backend][key])), key
        assert_close(grads[backend][key], ref, backend, np.float64, key)


def test_a_stream_at_huge_timestamps_equals_the_batch_forward():
    x, t = huge_time_problem(B=1)
    net = pl.Network([pl.PhasedLSTM(2, 8, rng=0, r_on=0.3, backend="numba")],
                     readout=pl.Dense(8, 3, rng=1))
    stream = net.stream(batch=1)
    ys = [stream.push(x[:, j:j + 1], t[:, j:j + 1]) for j in range(x.shape[1])]
    batch = net.forward(x, t, training=False)[0]
    assert np.all(np.isfinite(ys[-1]))
    np.testing.assert_allclose(ys[-1][:, -1], batch, rtol=1e-10, atol=1e-12)
