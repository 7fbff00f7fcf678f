"""The faithful protocols: the settings of the paper and of the authors' code as options
(r_on learned, fresh data every epoch, the read-out, the input-gate bias, the LSTM's time
scale, the superimposed task's two variants), and what the protocols choose."""
import json

import numpy as np
import pytest

import plstm_np as pl
import plstm_np.experiments as ex
from plstm_np import tasks
from plstm_np.cli import main

from conftest import make_network


def differ(a, b):
    return a.shape != b.shape or not np.array_equal(a, b)


# ----------------------------------------------------------------------------- what each task uses

def test_frequency_protocol_is_the_papers_and_the_authors():
    """The paper where it says (tau ~ exp(U(0, 3)), r_on learned in the first task), the
    authors' freq_task.py where it is silent (157 fresh batches of 32, 512 validation
    sequences, lr 1e-3, grad_clipping=10, leaky-ReLU read-out, input-gate bias -0.1, raw t)."""
    cfg = ex.default_config("frequency")
    assert cfg["tau_exp_range"] == [0.0, 3.0] and cfg["r_on"] == 0.05 and cfg["learn_r_on"]
    assert cfg["fresh_data"] and cfg["n_train"] == 157 * 32 and cfg["n_val"] == 512
    assert cfg["lr"] == 1e-3 and cfg["batch_size"] == 32 and cfg["grad_clip"] == 10.0
    assert cfg["readout"] == "leaky_relu" and cfg["input_gate_bias"] == -0.1
    assert cfg["time_scale"] == 1.0 and cfg["dtype"] == "float32"
    sup = ex.default_config("superimposed")
    assert sup["variant"] == "paper" and sup["learn_r_on"] and sup["fresh_data"]
    proto = ex.EXPERIMENTS["frequency"].protocol
    assert (proto["epochs"], proto["n_train"], proto["n_val"], proto["seeds"]) == (70, 5024, 512, 5)
    assert ex.EXPERIMENTS["superimposed_authors"].conditions["plstm"]["variant"] == "authors"
    nm = ex.default_config("nmnist")
    assert np.allclose(np.exp(nm["tau_exp_range"]), 100.0) and nm["fresh_data"]
    assert not nm["learn_r_on"]


def test_build_model_applies_the_protocol():
    cfg = ex.default_config("frequency", hidden_size=6, backend="numpy")
    net = ex.build_model(cfg)
    layer, H = net.layers[0], 6
    assert "r_on" not in layer.frozen and layer.dtype == np.float32
    np.testing.assert_array_equal(layer.params["b"][:H], np.float32(-0.1))
    np.testing.assert_array_equal(layer.params["b"][H:], 0)
    assert net.readout.activation == "leaky_relu" and net.readout.init == "glorot_uniform"
    bound = np.sqrt(6 / (H + 2))
    assert np.abs(net.readout.params["W"]).max() <= bound
    assert np.abs(net.readout.params["W"]).max() > 0.5 * bound
    lstm = ex.build_model(dict(cfg, model="lstm", time_scale=0.5)).layers[0]
    assert lstm.time_scale == 0.5
    old = ex.build_model(dict(cfg, learn_r_on=False, readout="linear", input_gate_bias=0.0))
    assert "r_on" in old.layers[0].frozen and old.readout.activation is None
    np.testing.assert_array_equal(old.layers[0].params["b"], 0)


def test_a_configuration_saved_before_the_protocol_options_still_builds():
    """Checkpoints of 0.1.0 hold configurations without the new keys: they get 0.1.0's
    behaviour (r_on fixed, a linear read-out, zero biases, the task's time scale)."""
    cfg = ex.default_config("frequency", hidden_size=4, backend="numpy")
    for key in ("learn_r_on", "grad_clip", "readout", "input_gate_bias", "time_scale",
                "fresh_data", "variant"):
        cfg.pop(key)
    net = ex.build_model(cfg)
    assert "r_on" in net.layers[0].frozen and net.readout.activation is None
    assert len(ex.make_data(dict(cfg, n_train=4, n_val=4))[0]) == 4


@pytest.mark.parametrize("key, value, words", [
    ("learn_r_on", "yes", "learn_r_on must be True or False"),
    ("fresh_data", 1, "fresh_data must be True or False"),
    ("grad_clip", -1.0, "grad_clip must be None"),
    ("grad_clip", float("inf"), "grad_clip must be None"),
    ("readout", "relu", "readout must be one of"),
    ("input_gate_bias", float("nan"), "input_gate_bias must be a finite number"),
    ("time_scale", 0.0, "time_scale must be a finite number > 0"),
    ("lr", float("inf"), "lr must be a finite number > 0"),
    ("variant", "theirs", "variant must be one of"),
])
def test_bad_protocol_values(key, value, words):
    task = "superimposed" if key == "variant" else "frequency"
    with pytest.raises(ValueError, match=words):
        ex.default_config(task, **{key: value})


def test_option_scope_errors():
    with pytest.raises(ValueError, match="variant applies to the superimposed task"):
        ex.default_config("frequency", variant="authors")
    with pytest.raises(ValueError, match="fresh_data applies to the synthetic tasks"):
        ex.make_data(ex.default_config("digits", fresh_data=True))
    assert ex.default_config("frequency", grad_clip=0)["grad_clip"] is None  # 0: off


# ----------------------------------------------------------------------------- fresh data

def test_fresh_data_is_drawn_from_seed_and_epoch():
    cfg = ex.default_config("frequency", n_train=40, n_val=8, seed=3)
    train, val = ex.make_data(cfg)
    assert isinstance(train, ex.FreshData) and len(train) == 40
    e1, e1_again, e2 = train(1), ex.make_data(cfg)[0](1), train(2)
    np.testing.assert_array_equal(e1.x, e1_again.x)  # a resumed run sees the same data
    np.testing.assert_array_equal(e1.t, e1_again.t)
    assert len(e1) == 40 and differ(e1.t, e2.t) and differ(e1.x, e2.x)
    expected = tasks.frequency_discrimination(40, "async", rng=np.random.default_rng([3, 0, 2]),
                                              dtype=np.float32)
    np.testing.assert_array_equal(e2.x, expected.x)
    other_seed = ex.make_data(dict(cfg, seed=4))[0](1)
    assert differ(e1.t, other_seed.t)
    fixed, _ = ex.make_data(dict(cfg, fresh_data=False))
    assert isinstance(fixed, pl.Dataset) and len(fixed) == 40


def test_nmnist_fresh_data_resamples_the_events_of_the_same_recordings():
    cfg = ex.default_config("nmnist", n_train=12, n_val=5, rho=0.5)
    train, val = ex.make_data(cfg)
    e1, e2 = train(1), train(2)
    assert len(train) == len(e1) == len(e2) == 12
    np.testing.assert_array_equal(e1.y, e2.y)  # the same recordings...
    assert not np.array_equal(e1.lengths, e2.lengths)  # ...with other events kept
    full = ex.make_data(dict(cfg, rho=1.0))[0](1)
    np.testing.assert_array_equal(full.y, e1.y)
    assert (e1.lengths < full.lengths).all() and (e1.lengths > 0.3 * full.lengths).all()
    np.testing.assert_array_equal(val.y, ex.make_data(cfg)[1].y)  # validation is fixed


def test_nmnist_augmentation_moves_and_jitters_the_same_recordings_and_adds_simulated_ones(
        monkeypatch):
    """With augmentation an epoch holds the run's training recordings (the same labels as
    without it), each moved on the sensor and jittered, plus n_simulated simulated ones from
    MNIST test images 100..9999 (labels theirs); validation is untouched."""
    from plstm_np import mnist
    from plstm_np.experiments import runs

    drawn = []
    simulate = runs.simulate_mnist

    def recording(indices, **kwargs):
        drawn.append(np.asarray(indices))
        return simulate(indices, **kwargs)

    monkeypatch.setattr(runs, "simulate_mnist", recording)
    plain = ex.default_config("nmnist", n_train=10, n_val=5, rho=1.0)
    cfg = dict(plain, augment_shift=2, augment_jitter_ms=1.0, n_simulated=3)
    train, val = ex.make_data(cfg)
    assert len(train) == 13  # known before the first epoch is drawn (the trainer asks)
    base = ex.make_data(plain)[0](1)
    e1, e2 = train(1), train(2)
    assert len(train) == len(e1) == len(e2) == 13
    np.testing.assert_array_equal(e1.y[:10], base.y)  # the same real recordings, first
    _, labels = mnist.load_mnist()
    assert len(drawn) == 2 and all(d.min() >= 100 and d.max() <= 9999 for d in drawn)
    np.testing.assert_array_equal(e1.y[10:], labels[drawn[0]])
    assert not np.array_equal(drawn[0], drawn[1])  # fresh images every epoch
    # every real recording perturbed: the timestamps move, the event counts may drop a little
    for i in range(10):
        n, m = base.lengths[i], e1.lengths[i]
        assert m <= n and m > 0.5 * n
        assert m < n or not np.array_equal(e1.t[i, :n], base.t[i, :n])
    np.testing.assert_array_equal(e1.t, train(1).t)  # an epoch is reproducible (resume)
    np.testing.assert_array_equal(val.tokens, ex.make_data(plain)[1].tokens)


@pytest.mark.parametrize("overrides, match", [
    (dict(task="frequency", augment_shift=1), "augment_shift applies to N-MNIST"),
    (dict(fresh_data=False, n_simulated=5), "n_simulated perturbs every epoch afresh"),
    (dict(augment_shift=34), r"augment_shift must be an integer in 0..33"),
    (dict(augment_shift=True), r"augment_shift must be an integer"),
    (dict(n_simulated=9901), r"n_simulated must be an integer in 0..9900"),
    (dict(augment_jitter_ms=-0.5), "augment_jitter_ms must be a finite number >= 0"),
])
def test_nmnist_augmentation_options_are_checked_by_name(overrides, match):
    task = overrides.pop("task", "nmnist")
    with pytest.raises(ValueError, match=match):
        ex.default_config(task, **overrides)


# ----------------------------------------------------------------------------- superimposed

def test_superimposed_authors_variant_follows_the_authors_script():
    data, info = tasks.superimposed_frequencies(400, variant="authors", rng=2, return_info=True)
    assert 1.0 <= info["duration"].min() and info["duration"].max() <= 100.0
    assert 100 <= data.lengths.min() and data.lengths.max() <= 999
    assert (info["start"] >= 0).all() and (info["start"] + info["duration"] <= 100.0).all()
    j = np.arange(data.t.shape[1])[None] < data.lengths[:, None]
    # sin(t / T), no 2 pi, as the script computes it
    expected = (np.sin(data.t / info["period1"][:, None] + info["phase1"][:, None])
                + np.sin(data.t / info["period2"][:, None] + info["phase2"][:, None]))
    np.testing.assert_allclose(data.x[..., 0][j], expected[j], atol=1e-12)
    paper = tasks.superimposed_frequencies(50, variant="paper", rng=2)
    assert paper.lengths.max() <= 125
    with pytest.raises(ValueError, match="variant must be one of"):
        tasks.superimposed_frequencies(5, variant="theirs")


def test_superimposed_variant_reaches_the_data():
    cfg = ex.default_config("superimposed", variant="authors", n_train=8, n_val=8)
    assert ex.make_data(cfg)[1].lengths.min() >= 100


# ----------------------------------------------------------------------------- the read-out

def test_leaky_relu_readout_forward_and_backward():
    rng = np.random.default_rng(0)
    dense = pl.Dense(5, 3, activation="leaky_relu", rng=rng)
    h = rng.normal(size=(7, 5))
    a = h @ dense.params["W"] + dense.params["b"]
    y = dense.forward(h)
    np.testing.assert_array_equal(y[a > 0], a[a > 0])
    np.testing.assert_allclose(y[a <= 0], 0.01 * a[a <= 0], rtol=1e-15)
    dy = rng.normal(size=y.shape)
    grads, dh = dense.backward(dy, h)
    slope = np.where(a > 0, 1.0, 0.01)
    np.testing.assert_allclose(dh, (dy * slope) @ dense.params["W"].T, rtol=1e-13)
    np.testing.assert_allclose(grads["W"], h.T @ (dy * slope), rtol=1e-13)
    np.testing.assert_allclose(grads["b"], (dy * slope).sum(0), rtol=1e-13)
    for kwargs, words in ((dict(activation="relu"), "activation must be"),
                          (dict(leakiness=1.0), "leakiness must be"),
                          (dict(init="he"), "init must be")):
        with pytest.raises(ValueError, match=words):
            pl.Dense(2, 2, **kwargs)


def test_leaky_relu_readout_is_saved_and_streamed(tmp_path):
    rng = np.random.default_rng(4)
    net = make_network(rng, readout_at="every", activation="leaky_relu")
    net.readout.params["b"][:] = [-0.3, 0.3]  # both signs of the pre-activation
    net.save(tmp_path / "net.npz")
    loaded = pl.load(tmp_path / "net.npz")
    assert loaded.readout.activation == "leaky_relu" and loaded.readout.leakiness == 0.01
    t = np.sort(rng.uniform(0.0, 40.0, (1, 30)), axis=1)
    x = rng.normal(size=(1, 30, net.n_features))
    tokens = rng.integers(0, net.embedding.num_embeddings, (1, 30))
    whole = net.forward(x, t, tokens=tokens, training=False)[0]
    assert (whole < 0).any() and (whole > 0).any()
    net.backend = "numba"
    streamed = pl.Stream(net).push(x[0], t[0], tokens[0])
    np.testing.assert_allclose(streamed, whole[0], rtol=1e-12, atol=1e-14)


def test_sequential_mnist_is_the_tensorflow_reimplementations_protocol():
    """mnist_phased_lstm.py: 32 units, batches of 256, Adam 1e-3, 2,500 updates and more,
    tau ~ exp(U(0, 6)), r_on learned from 0.05, the pixel index as the time; its
    BasicLSTMCell reads the pixel only, and so do the baselines here (the BN-LSTM too)."""
    exp = ex.EXPERIMENTS["smnist"]
    proto = exp.protocol
    assert set(exp.conditions) == {"plstm", "lstm"}
    assert (proto["hidden_size"], proto["batch_size"], proto["lr"]) == (32, 256, 1e-3)
    assert proto["n_train"] + proto["n_val"] == 10_000
    assert proto["epochs"] * -(-proto["n_train"] // proto["batch_size"]) >= 2500
    cfg = ex.default_config("smnist", backend="numpy", hidden_size=32)
    assert cfg["time_input"] is False and cfg["learn_r_on"] and cfg["r_on"] == 0.05
    plstm = ex.build_model(cfg).layers[0]
    tau = plstm.params["tau"]
    assert np.all((tau >= 1.0) & (tau <= np.exp(6.0))) and tau.max() > np.exp(5.0)
    assert "layer0.r_on" not in ex.build_model(cfg).frozen
    widths = {m: ex.build_model(dict(cfg, model=m)).layers[-1].params["Wx"].shape[0]
              for m in ("lstm", "bnlstm", "gru")}
    assert widths == {"lstm": 1, "bnlstm": 1, "gru": 1}
    bn = ex.build_model(dict(cfg, model="bnlstm"))
    assert [type(layer).__name__ for layer in bn.layers] == ["BatchNorm", "LSTM"]
    timed = {m: ex.build_model(dict(cfg, model=m, time_input=True)).layers[-1].params["Wx"]
             for m in ("lstm", "bnlstm", "gru")}
    assert {m: w.shape[0] for m, w in timed.items()} == {"lstm": 2, "bnlstm": 2, "gru": 2}
    for task in ("frequency", "nmnist", "adding"):  # the paper's: the timestamp as an input
        assert ex.default_config(task)["time_input"] is True


def test_runs_saved_before_time_input_existed_count_as_timed():
    """Published runs' config.json lack the key: they meant the timestamp as an input, so
    they are reused by today's protocol and refused by one without it."""
    from plstm_np.experiments.run_folders import config_differences

    cfg = ex.default_config("frequency")
    old = {k: v for k, v in cfg.items() if k != "time_input"}
    assert config_differences(old, cfg) == []
    assert config_differences(old, dict(cfg, time_input=False)) == [
        ("time_input", True, False)]
    with pytest.raises(ValueError, match="time_input must be True or False"):
        ex.default_config("smnist", time_input="no")


# ----------------------------------------------------------------------------- the command line

def test_cli_protocol_options_reach_the_configuration(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "superimposed", "--variant", "authors", "--no-learn-r-on",
                 "--no-fresh-data", "--grad-clip", "0", "--readout", "linear",
                 "--input-gate-bias", "0.5", "--n-train", "8", "--n-val", "8", "--epochs", "1",
                 "--no-time-input", "--model", "lstm",
                 "--hidden", "4", "--quiet", "--out", str(out), "--dtype", "float64"])
    assert code == 0, capsys.readouterr()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["variant"] == "authors" and cfg["learn_r_on"] is False
    assert cfg["fresh_data"] is False and cfg["grad_clip"] is None
    assert cfg["readout"] == "linear" and cfg["input_gate_bias"] == 0.5
    assert cfg["dtype"] == "float64" and cfg["time_input"] is False
    assert pl.load(out / "checkpoint.npz").layers[0].params["Wx"].shape[0] == 1  # x only
    with pytest.raises(SystemExit):
        main(["train", "--grad-clip", "-1"])
    assert "expected a finite number >= 0" in capsys.readouterr().err


def test_reproduce_takes_the_protocol_options(tmp_path, capsys):
    code = main(["reproduce", "frequency", "--quick", "--no-learn-r-on", "--grad-clip", "2",
                 "--conditions", "plstm-async", "--out", str(tmp_path)])
    assert code == 0, capsys.readouterr()
    cfg = json.loads((tmp_path / "frequency/runs/plstm-async/seed0/config.json").read_text())
    assert cfg["learn_r_on"] is False and cfg["grad_clip"] == 2.0
    table = (tmp_path / "frequency/results.md").read_text()
    assert "r_on fixed" in table and "clipped to ±2" in table
    assert main(["reproduce", "frequency", "--quick", "--variant", "authors",
                 "--out", str(tmp_path / "x")]) == 2
    assert "variant applies to the superimposed task" in capsys.readouterr().err
