"""Adam, gradient clipping and the timing constraints."""
import numpy as np
import pytest

import plstm_np as pl

from conftest import make_batch, make_network


def test_adam_two_steps_by_hand():
    # step 1: m = 0.1 g, v = 0.001 g^2, bias-corrected m/v = g/|g| -> p -= lr * sign(g)
    # step 2: m = [0.055, -0.06], v = [0.00025975, 0.001089], c1 = 0.19, c2 = 0.001999
    #         p0 = 0.9 - 0.1 * (0.055 / 0.19) / sqrt(0.00025975 / 0.001999) = 0.8196959...
    p = {"w": np.array([1.0, -2.0])}
    opt = pl.Adam(p, lr=0.1)
    opt.step({"w": np.array([0.5, -1.0])})
    np.testing.assert_allclose(p["w"], [0.9, -1.9], rtol=1e-7)
    opt.step({"w": np.array([0.1, 0.3])})
    expected0 = 0.9 - 0.1 * (0.055 / 0.19) / np.sqrt(0.00025975 / 0.001999)
    expected1 = -1.9 - 0.1 * (-0.06 / 0.19) / np.sqrt(0.001089 / 0.001999)
    np.testing.assert_allclose(p["w"], [expected0, expected1], rtol=1e-7)
    assert opt.step_count == 2


def test_constraints_keep_tau_positive_and_r_on_in_range():
    layer = pl.PhasedLSTM(1, 3, r_on=0.5, learn_r_on=True, rng=0)
    opt = pl.Adam(layer, lr=10.0)
    huge = {name: np.zeros_like(v) for name, v in layer.params.items()}
    huge["tau"][:] = 1e6   # pushes tau far below zero
    huge["r_on"][:] = np.array([1e6, -1e6, 0.0])  # below 0 and above 1
    for _ in range(5):
        opt.step(huge)
    assert np.all(layer.params["tau"] > 0)
    np.testing.assert_allclose(layer.params["tau"], layer.tau_min)
    r_on = layer.params["r_on"]
    assert r_on[0] == pytest.approx(layer.r_on_min) and r_on[1] == 1.0 and 0 < r_on[2] <= 1


def test_plain_dict_gets_bounds_from_the_contract_names():
    params = {"layer0.tau": np.array([0.5]), "layer0.r_on": np.array([0.9]), "w": np.array([0.0])}
    opt = pl.Adam(params, lr=5.0)
    opt.step({"layer0.tau": np.array([1.0]), "layer0.r_on": np.array([-1.0]), "w": np.array([1.0])})
    assert params["layer0.tau"][0] > 0 and params["layer0.r_on"][0] == 1.0
    assert params["w"][0] == pytest.approx(-5.0)


def test_frozen_parameters_stay_put():
    layer = pl.PhasedLSTM(1, 3, rng=0)  # r_on fixed by default, tau and s learned
    assert layer.frozen == {"r_on"}
    before = {k: v.copy() for k, v in layer.params.items()}
    opt = pl.Adam(layer, lr=0.1)
    opt.step({k: np.ones_like(v) for k, v in layer.params.items()})
    np.testing.assert_array_equal(layer.params["r_on"], before["r_on"])
    assert not np.array_equal(layer.params["tau"], before["tau"])
    frozen_all = pl.PhasedLSTM(1, 3, learn_tau=False, learn_s=False, rng=0)
    assert frozen_all.frozen == {"tau", "s", "r_on"}


def test_adam_rejects_missing_or_misshapen_gradients():
    p = {"a": np.zeros(2), "b": np.zeros(3)}
    opt = pl.Adam(p)
    with pytest.raises(KeyError, match="'b'"):
        opt.step({"a": np.zeros(2)})
    with pytest.raises(ValueError, match="grads\\['b'\\]"):
        opt.step({"a": np.zeros(2), "b": np.zeros(4)})
    with pytest.raises(ValueError, match="lr"):
        pl.Adam(p, lr=0.0)
    with pytest.raises(ValueError, match="frozen"):
        pl.Adam(p, frozen=["c"])


def test_adam_ignores_input_gradients(rng):
    net = make_network(rng)
    _, grads = net.loss_and_grads(make_batch(net, rng))
    assert "x" in grads and "layer0.h0" in grads
    pl.Adam(net).step(grads)  # must not try to update x or the initial state


def test_clip_grad_norm():
    grads = {"a": np.array([3.0, 0.0]), "b": np.array([4.0]), "x": np.array([100.0])}
    clipped, norm = pl.clip_grad_norm(grads, 1.0, names=["a", "b"])
    assert norm == pytest.approx(5.0)
    np.testing.assert_allclose(clipped["a"], [0.6, 0.0])
    np.testing.assert_allclose(clipped["b"], [0.8])
    assert clipped["x"] is grads["x"]
    np.testing.assert_array_equal(grads["a"], [3.0, 0.0])  # input untouched
    same, _ = pl.clip_grad_norm(grads, 1000.0)
    np.testing.assert_array_equal(same["a"], grads["a"])
    with pytest.raises(ValueError, match="max_norm"):
        pl.clip_grad_norm(grads, 0.0)


def test_float32_network_trains_in_float32(rng):
    net = make_network(rng, dtype=np.float32)
    opt = pl.Adam(net)
    _, grads = net.loss_and_grads(make_batch(net, rng))
    opt.step(grads)
    assert all(v.dtype == np.float32 for v in net.params.values())
    assert all(g.dtype == np.float32 for g in grads.values())


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(lr=np.inf), ValueError, "lr must be a finite number > 0, got inf"),
    (dict(lr=np.nan), ValueError, "lr must be a finite number > 0"),
    (dict(lr=0.0), ValueError, "lr must be a finite number > 0"),
    (dict(lr="0.1"), TypeError, "lr must be a number"),
    (dict(eps=np.inf), ValueError, "eps must be a finite number > 0"),
    (dict(beta1=np.nan), ValueError, r"beta1 must lie in \[0, 1\)"),
    (dict(beta2=1.0), ValueError, r"beta2 must lie in \[0, 1\)"),
])
def test_adam_refuses_bad_hyperparameters(kwargs, error, match):
    net = make_network(np.random.default_rng(0))
    with pytest.raises(error, match=match):
        pl.Adam(net, **kwargs)


def test_adam_never_passes_a_non_finite_gradient_on():
    rng = np.random.default_rng(1)
    net = make_network(rng)
    opt = pl.Adam(net)
    _, grads = net.loss_and_grads(make_batch(net, rng))
    before = {k: v.copy() for k, v in net.params.items()}
    name = opt.trainable[-1]
    grads[name] = grads[name].copy()
    grads[name].flat[0] = np.nan
    with pytest.raises(ValueError, match=rf"grads\['{name}'\] holds a non-finite value"):
        opt.step(grads)
    assert opt.step_count == 0  # nothing updated, not even the other parameters
    assert all(np.array_equal(before[k], v) for k, v in net.params.items())
    assert all(not m.any() for m in opt.m.values())


def test_clip_grad_norm_refuses_non_finite_entries_and_bounds():
    grads = {"a": np.array([1.0, np.inf]), "b": np.ones(2)}
    with pytest.raises(ValueError, match=r"grads\['a'\] holds a non-finite value"):
        pl.clip_grad_norm(grads, 1.0)
    for bad in (np.nan, np.inf, 0.0, -1.0):
        with pytest.raises(ValueError, match="max_norm must be a finite number > 0"):
            pl.clip_grad_norm({"b": np.ones(2)}, bad)
    clipped, norm = pl.clip_grad_norm({"b": np.full(4, 3.0)}, 1.0)
    assert norm == 6.0 and np.allclose(np.linalg.norm(clipped["b"]), 1.0)


def test_an_optimizer_of_another_network_is_refused(tmp_path):
    rng = np.random.default_rng(2)
    net, twin = make_network(np.random.default_rng(3)), make_network(np.random.default_rng(3))
    batch = make_batch(net, rng)
    opt = pl.Adam(twin)  # same names and shapes, other arrays
    with pytest.raises(ValueError, match="optimizer was built for other parameters"):
        pl.train(net, opt, batch, epochs=1, progress=False)
    with pytest.raises(ValueError, match="optimizer was built for other parameters"):
        net.save(tmp_path / "net.npz", optimizer=opt)
    assert not (tmp_path / "net.npz").exists()
    net.save(tmp_path / "net.npz", optimizer=pl.Adam(net))  # its own is accepted
