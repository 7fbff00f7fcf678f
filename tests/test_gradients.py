"""Float64 gradient checks of the hand-derived BPTT against central differences.

Every parameter is randomised (biases, peepholes, tau, s, r_on), times are random per sample
and kept off the gate's kinks by construction, lengths are random (0 and T included).
"""
import numpy as np
import pytest

import plstm_np as pl

from conftest import make_batch, make_network, random_lengths, randomize, times_off_kinks

TOLERANCE = 1e-6
KINK_MARGIN = 0.02  # >> the phase moved by the finite-difference step (<= 2e-4 * t / tau**2)


@pytest.mark.parametrize("leak", [1e-3, 0.0, 0.2])
def test_phased_lstm_layer(rng, leak):
    layer = randomize(pl.PhasedLSTM(3, 4, leak=leak, rng=rng), rng)
    B, T = 4, 6
    x = rng.normal(size=(B, T, 3))
    t = times_off_kinks(layer, rng, B, T, margin=KINK_MARGIN)
    lengths = random_lengths(rng, B, T)
    for training in (True, False):
        report = pl.check_gradients(layer, (x, t, lengths), training=training)
        assert set(report.errors) == set(layer.params) | {"x", "h0", "c0"}
        assert report.min_kink_distance >= KINK_MARGIN
        assert report.worst <= TOLERANCE, report


def test_lstm_baseline_layer(rng):
    layer = randomize(pl.LSTM(3, 4, time_scale=0.1, rng=rng), rng)
    B, T = 3, 5
    x = rng.normal(size=(B, T, 3))
    t = np.sort(rng.uniform(0, 20, (B, T)), axis=1)
    report = pl.check_gradients(layer, (x, t, random_lengths(rng, B, T)))
    assert set(report.errors) == {"Wx", "Wh", "b", "w_ci", "w_cf", "w_co", "x", "h0", "c0"}
    assert report.worst <= TOLERANCE, report


def test_hand_set_timing_layer(rng):
    """Per-neuron fixed timing (multi-rate sensors): still differentiable in every parameter."""
    tau = np.array([40.0, 40.0, 10.0, 10.0])
    layer = randomize(pl.PhasedLSTM(2, 4, tau=tau, s=np.array([0.0, 20.0, 0.0, 5.0]),
                                    learn_tau=False, learn_s=False, rng=rng), rng)
    assert layer.frozen == {"tau", "s", "r_on"}
    np.testing.assert_array_equal(layer.params["tau"], tau)
    B, T = 2, 5
    t = times_off_kinks(layer, rng, B, T, t_max=80.0, margin=KINK_MARGIN)
    report = pl.check_gradients(layer, (rng.normal(size=(B, T, 2)), t))
    assert report.worst <= TOLERANCE, report


@pytest.mark.parametrize("readout_at, loss", [("last", "cross_entropy"), ("every", "mse"),
                                              ("every", "cross_entropy"), ("last", "mse")])
@pytest.mark.parametrize("training", [True, False])
def test_two_layer_network_with_embedding(rng, readout_at, loss, training):
    net = make_network(rng, readout_at=readout_at, loss=loss)
    batch = make_batch(net, rng, margin=KINK_MARGIN)
    report = pl.check_gradients(net, batch, training=training)
    expected = set(net.params) | {"x"} | {f"layer{i}.{s}" for i in range(2) for s in ("h0", "c0")}
    assert set(report.errors) == expected
    assert report.worst <= TOLERANCE, report


@pytest.mark.parametrize("readout_at, loss", [("last", "cross_entropy"), ("every", "mse")])
def test_leaky_relu_readout(rng, readout_at, loss):
    """The authors' read-out (leaky ReLU before the loss); the pre-activations are kept
    away from its kink at 0."""
    net = make_network(rng, readout_at=readout_at, loss=loss, activation="leaky_relu")
    net.readout.leakiness = 0.3  # a slope far from 1, so that a wrong branch shows
    batch = make_batch(net, rng, margin=KINK_MARGIN)
    top = net.forward(batch.x, batch.t, batch.lengths, tokens=batch.tokens)[2]["top"]
    W = net.readout.params["W"]
    net.readout.params["b"][:] = -(top @ W).reshape(-1, 2).mean(0)  # both signs in a
    a = top @ W + net.readout.params["b"]
    assert (a > 0).any() and (a < 0).any() and np.abs(a).min() > 1e-3
    report = pl.check_gradients(net, batch)
    assert report.worst <= TOLERANCE, report


def test_lstm_network(rng):
    net = make_network(rng, lstm=True, embedding=False)
    batch = make_batch(net, rng)
    batch = batch.replace(t=batch.t / 20.0)
    report = pl.check_gradients(net, batch)
    assert report.worst <= TOLERANCE, report


def test_gradient_check_catches_a_wrong_derivative(rng, monkeypatch):
    """The check is only worth something if it fails on a wrong gradient."""
    layer = randomize(pl.PhasedLSTM(2, 3, rng=rng), rng)
    t = times_off_kinks(layer, rng, 2, 4, margin=KINK_MARGIN)
    batch = (rng.normal(size=(2, 4, 2)), t)
    from plstm_np import reference

    original = reference.layer_backward

    def wrong_backward(dh_seq, dstate, cache, grad_clip=None):
        grads = original(dh_seq, dstate, cache, grad_clip)
        grads["tau"] = grads["tau"] * 1.01
        return grads

    monkeypatch.setattr(reference, "layer_backward", wrong_backward)
    report = pl.check_gradients(layer, batch, names=["tau", "s"])
    assert report.worst_name == "tau" and report.worst > 1e-3
    assert report.errors["s"] <= TOLERANCE


def test_check_gradients_refuses_float32(rng):
    layer = pl.PhasedLSTM(2, 3, dtype=np.float32, rng=rng)
    x = np.zeros((1, 2, 2), np.float32)
    with pytest.raises(TypeError, match="float64"):
        pl.check_gradients(layer, (x, np.zeros((1, 2))))


def test_check_gradients_unknown_name(rng):
    layer = pl.PhasedLSTM(2, 3, rng=rng)
    with pytest.raises(ValueError, match="names"):
        pl.check_gradients(layer, (np.zeros((1, 2, 2)), np.zeros((1, 2))), names=["nope"])


def test_relative_error_is_both_zero_safe():
    assert pl.relative_error(np.zeros(3), np.zeros(3)) == 0.0
    assert pl.relative_error(np.array([1.0, 0.0]), np.array([1.0, 0.0])) == 0.0
    assert pl.relative_error(np.array([1.0]), np.array([-1.0])) == 1.0


def test_numerical_gradient_of_a_known_function():
    p = np.array([0.3, -1.2, 2.0])
    grad = pl.numerical_gradient(lambda: float(np.sum(np.sin(p) * p**2)), p)
    np.testing.assert_allclose(grad, np.cos(p) * p**2 + 2 * p * np.sin(p), rtol=1e-10)
    np.testing.assert_array_equal(p, [0.3, -1.2, 2.0])  # restored exactly
