"""The time gate (eq. 6): values on each piece, floor-mod phase, float64, derivatives."""
import numpy as np
import pytest

from plstm_np import scalar_math
from plstm_np.time_gate import kink_distance, phase, time_gate, time_gate_with_grads


def test_phase_is_floor_mod_in_unit_interval():
    # t < s wraps into [0, 1): (-1 - 0.5) mod 2 = 0.5 -> phi = 0.25
    assert phase(-1.0, 2.0, 0.5) == pytest.approx(0.25)
    assert phase(4.5, 2.0, 0.5) == pytest.approx(0.0)
    phi = phase(np.linspace(-100, 100, 10001), 3.7, 1.3)
    assert phi.min() >= 0.0 and phi.max() < 1.0


def test_phase_never_reaches_one_at_the_wrap():
    tau = 0.1
    t = -np.nextafter(0.0, 1.0)  # a tiny negative number: mod rounds up to tau
    assert phase(t, tau, 0.0) == 0.0


@pytest.mark.parametrize("phi, expected", [
    (0.01, 2 * 0.01 / 0.1),        # rising: 2 phi / r_on
    (0.05, 1.0),                   # the peak
    (0.08, 2 - 2 * 0.08 / 0.1),    # falling
    (0.5, 1e-3 * 0.5),             # closed: alpha phi
])
def test_gate_pieces(phi, expected):
    tau, s, r_on, leak = 10.0, 3.0, 0.1, 1e-3
    t = s + 7 * tau + phi * tau
    assert time_gate(t, tau, s, r_on, leak) == pytest.approx(expected, rel=1e-9)


def test_closed_gate_is_exactly_zero_without_leak():
    assert time_gate(3.0 + 0.5 * 10.0, 10.0, 3.0, 0.1, 0.0) == 0.0


def test_phase_uses_float64_even_for_float32_parameters():
    # microsecond timestamps: float32 cannot resolve a 5% window of a 1 ms period at t ~ 3e5
    t = 3.0e5 + np.array([0.010, 0.020, 0.060])
    tau, s = np.float32(1.0), np.float32(0.0)
    phi = phase(t, tau, s)
    assert phi.dtype == np.float64
    np.testing.assert_allclose(phi, [0.010, 0.020, 0.060], atol=1e-9)
    k = time_gate(t, tau, s, np.float32(0.05), 0.0)
    assert k[0] > 0 and k[2] == 0.0  # in float32, t would collapse to one value


def test_broadcasting_batch_against_neurons(rng):
    t = rng.uniform(0, 50, (4, 6))
    tau, s, r_on = rng.uniform(1, 5, 3), rng.uniform(0, 1, 3), rng.uniform(0.1, 1, 3)
    k = time_gate(t[:, :, None], tau, s, r_on, 0.01)
    assert k.shape == (4, 6, 3)
    assert k[2, 3, 1] == time_gate(t[2, 3], tau[1], s[1], r_on[1], 0.01)


def test_derivatives_match_central_differences(rng):
    n = 2000
    t, tau = rng.uniform(-30, 30, n), rng.uniform(0.5, 8, n)
    s, r_on = rng.uniform(0, 5, n), rng.uniform(0.05, 1.0, n)
    eps = 1e-7
    keep = kink_distance(t, tau, s, r_on) > 1e-3 * np.maximum(1, np.abs(t - s) / tau**2) + 10 * eps
    t, tau, s, r_on = t[keep], tau[keep], s[keep], r_on[keep]
    g = time_gate_with_grads(t, tau, s, r_on, 0.01)

    def fd(f):
        return (f(eps) - f(-eps)) / (2 * eps)

    np.testing.assert_allclose(g.dk_dt, fd(lambda e: time_gate(t + e, tau, s, r_on, 0.01)),
                               rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(g.dk_dtau, fd(lambda e: time_gate(t, tau + e, s, r_on, 0.01)),
                               rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(g.dk_ds, fd(lambda e: time_gate(t, tau, s + e, r_on, 0.01)),
                               rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(g.dk_dr_on, fd(lambda e: time_gate(t, tau, s, r_on + e, 0.01)),
                               rtol=1e-5, atol=1e-7)


def test_kink_distance():
    tau, s, r_on = 1.0, 0.0, 0.2
    np.testing.assert_allclose(kink_distance([0.05, 0.1, 0.15, 0.6, 0.97], tau, s, r_on),
                               [0.05, 0.0, 0.05, 0.4, 0.03], atol=1e-12)


def test_scalar_helpers_equal_vectorised(rng):
    n = 500
    t, tau = rng.uniform(-30, 30, n), rng.uniform(0.5, 8, n)
    s, r_on = rng.uniform(0, 5, n), rng.uniform(0.05, 1.0, n)
    g = time_gate_with_grads(t, tau, s, r_on, 0.02)
    for idx in range(n):
        phi = scalar_math.phase(t[idx], tau[idx], s[idx])
        assert phi == phase(t[idx], tau[idx], s[idx])
        assert scalar_math.gate_openness(phi, r_on[idx], 0.02) == pytest.approx(g.k[idx], rel=1e-14,
                                                                                abs=1e-15)
        dk_dphi = scalar_math.gate_dk_dphi(phi, r_on[idx], 0.02)
        assert dk_dphi / tau[idx] == pytest.approx(g.dk_dt[idx], rel=1e-14)
        assert scalar_math.gate_dk_dr_on(phi, r_on[idx]) == pytest.approx(g.dk_dr_on[idx],
                                                                          rel=1e-14, abs=1e-15)
    assert scalar_math.sigmoid(-800.0) == 0.0 and scalar_math.sigmoid(800.0) == 1.0


@pytest.mark.parametrize("r_on", [1e-300, 1e-160, 3e-308])
def test_the_gate_derivatives_stay_finite_at_a_tiny_open_ratio(r_on):
    """r_on**2 underflows below 1e-154: dk/dr_on = -2 phi / r_on**2 was inf (0 / 0 = NaN at
    phi = 0); (2 phi / r_on) / r_on stays finite, in the reference and the scalar helpers."""
    phi = np.array([0.0, 0.25 * r_on, 0.75 * r_on, 0.5])
    g = time_gate_with_grads(phi * 2.0, 2.0, 0.0, r_on)  # tau = 2: phase phi
    assert np.all(np.isfinite(g.dk_dr_on)) and np.all(np.isfinite(g.k))
    np.testing.assert_allclose(g.dk_dr_on, [0.0, -0.5 / r_on, 1.5 / r_on, 0.0], rtol=1e-14)
    for i, p in enumerate(phi):
        assert scalar_math.gate_dk_dr_on(p, r_on) == pytest.approx(g.dk_dr_on[i], rel=1e-14)


def test_timing_gradients_sum_the_chain_rule_over_valid_steps(rng):
    """Against a loop over (sample, step) written here, padding excluded."""
    from plstm_np.time_gate import timing_gradients
    B, T, H = 3, 4, 5
    t = np.sort(rng.uniform(0, 20, (B, T)), axis=1)
    tau, s, r_on = rng.uniform(1, 5, H), rng.uniform(0, 5, H), rng.uniform(0.2, 0.9, H)
    gate = time_gate_with_grads(t[:, :, None], tau, s, r_on, 0.01)
    dk = rng.normal(size=(B, T, H)).astype(np.float32)
    valid = np.arange(T)[None] < np.array([4, 1, 0])[:, None]
    got = timing_gradients(dk, gate, valid, np.float32)
    for name, d in (("tau", gate.dk_dtau), ("s", gate.dk_ds), ("r_on", gate.dk_dr_on)):
        expect = sum(dk[b, j].astype(np.float64) * d[b, j]
                     for b in range(B) for j in range(T) if valid[b, j])
        assert got[name].dtype == np.float32
        np.testing.assert_allclose(got[name], expect, rtol=1e-6, err_msg=name)
