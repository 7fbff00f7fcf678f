"""A short seeded training run lowers the loss; the loop's checkpoints, log and stopping work."""
import json
import re

import numpy as np
import pytest

import plstm_np as pl
from plstm_np.files import atomic_write, write_json_atomic


def sine_data(n, rng, T=40):
    """Frequency-discrimination style data made here: class 1 iff the period is in (5, 6) ms,
    sampled at sorted random times in [0, 40] ms, with random lengths."""
    label = rng.integers(0, 2, n)
    period = np.where(label == 1, rng.uniform(5, 6, n),
                      np.where(rng.random(n) < 0.5, rng.uniform(1, 5, n), rng.uniform(6, 20, n)))
    t = np.sort(rng.uniform(0, 40, (n, T)), axis=1)
    x = np.sin(2 * np.pi * t / period[:, None] + rng.uniform(0, 2 * np.pi, (n, 1)))[:, :, None]
    lengths = rng.integers(T // 2, T + 1, n)
    return pl.Dataset(x, t, label.astype(np.int64), lengths)


def make_net(rng, r_on=0.3):
    return pl.Network([pl.PhasedLSTM(1, 16, tau_exp_range=(0, 3), r_on=r_on, rng=rng)],
                      pl.Dense(16, 2, rng=rng))


def test_training_lowers_the_loss():
    rng = np.random.default_rng(0)
    data, val = sine_data(1024, rng), sine_data(256, rng)
    net = make_net(rng)
    before = net.evaluate(val)["loss"]
    history = pl.train(net, pl.Adam(net, lr=0.01), data, val, epochs=15, batch_size=32,
                       rng=1, progress=False)  # 480 steps
    assert len(history) == 15 and all(np.isfinite(r["train_loss"]) for r in history)
    after = history[-1]["val_loss"]
    assert after < before - 0.1, (before, after)
    assert history[-1]["train_loss"] < history[0]["train_loss"] - 0.15
    assert history[-1]["val_accuracy"] > 0.65
    assert np.all(net.params["layer0.tau"] > 0)


def test_train_accuracy_is_that_of_each_batch_before_its_update():
    """Counted by hand: the network of each step, in training mode (leak on), on that step's
    batch (the loop's own shuffle, replayed with the same generator); none for MSE."""
    rng = np.random.default_rng(4)
    data = sine_data(40, rng, T=12)

    def leaky_net():  # a strong leak: training mode and evaluation differ visibly
        return pl.Network([pl.PhasedLSTM(1, 8, r_on=0.05, leak=0.5, rng=5)], pl.Dense(8, 2, rng=6))

    net, shadow = leaky_net(), leaky_net()
    opt, shadow_opt = pl.Adam(net, lr=0.05), pl.Adam(shadow, lr=0.05)
    history = pl.train(net, opt, data, epochs=2, batch_size=16, rng=7, progress=False)
    order = np.random.default_rng(7)
    for record in history:
        correct = 0
        for batch in data.batches(16, rng=order):
            out, _, _ = shadow.forward(batch.x, batch.t, batch.lengths, training=True)
            correct += int((out.argmax(-1) == batch.y).sum())
            _, grads = shadow.loss_and_grads(batch, training=True)
            shadow_opt.step(grads)
        assert record["train_accuracy"] == correct / len(data)
        assert record["train_batches"] == 3  # 40 sequences in batches of 16
    other = leaky_net()
    capped = pl.train(other, pl.Adam(other, lr=0.05), data, epochs=1, batch_size=16,
                      max_batches=2, rng=7, progress=False)
    assert capped[0]["train_batches"] == 2
    mse = pl.Network([pl.PhasedLSTM(1, 4, rng=0)], pl.Dense(4, 1, rng=0), loss="mse")
    reg = pl.Dataset(data.x, data.t, rng.normal(size=(40, 1)), data.lengths)
    record = pl.train(mse, pl.Adam(mse), reg, epochs=1, progress=False)[0]
    assert "train_accuracy" not in record


def test_checkpoint_log_and_early_stopping(tmp_path):
    rng = np.random.default_rng(1)
    data = sine_data(64, rng, T=10)
    net = make_net(rng)
    opt = pl.Adam(net, lr=1e-9)  # learns nothing: early stopping must trigger
    ckpt, log = tmp_path / "best.npz", tmp_path / "log.json"
    history = pl.train(net, opt, data, data[:16], epochs=20, batch_size=16, rng=0,
                       patience=2, min_delta=1e-3, checkpoint=ckpt, log_path=log, progress=False)
    assert len(history) == 3  # epoch 1 sets the best; two epochs without a 1e-3 gain stop
    assert json.loads(log.read_text()) == json.loads(json.dumps(history))
    _, opt2, meta = pl.load_checkpoint(ckpt)
    assert meta["epoch"] == 1 and opt2.step_count == 4  # 64 samples / 16 per batch
    with pytest.raises(FileExistsError, match="overwrite=True"):
        pl.train(net, opt, data, epochs=1, checkpoint=ckpt, progress=False)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the inf weight below, on purpose
def test_max_batches_and_non_finite_loss(monkeypatch):
    rng = np.random.default_rng(2)
    data = sine_data(64, rng, T=8)
    net = make_net(rng)
    opt = pl.Adam(net)
    pl.train(net, opt, data, epochs=2, batch_size=8, max_batches=3, progress=False)
    assert opt.step_count == 6
    before = {k: v.copy() for k, v in net.params.items()}
    monkeypatch.setattr(net, "loss_and_grads",
                        lambda batch, training, with_hits: (float("nan"), None, None))
    with pytest.raises(FloatingPointError, match="epoch 1, batch 0"):
        pl.train(net, opt, data, epochs=1, progress=False)
    assert all(np.array_equal(before[k], v) for k, v in net.params.items())  # no update
    net.params["readout.W"][0, 0] = np.inf  # a diverged parameter is refused by name
    monkeypatch.undo()
    with pytest.raises(ValueError, match=r"params\['readout.W'\] has a non-finite value"):
        pl.train(net, opt, data, epochs=1, progress=False)


def test_json_is_written_atomically(tmp_path):
    path = tmp_path / "log.json"
    write_json_atomic(path, [{"epoch": 1}])
    assert path.read_text() == json.dumps([{"epoch": 1}], indent=1)
    with pytest.raises(TypeError):
        write_json_atomic(path, [{"epoch": object()}])
    assert json.loads(path.read_text()) == [{"epoch": 1}]  # the old content, whole
    assert [p.name for p in tmp_path.iterdir()] == ["log.json"]  # no temporary file left
    with pytest.raises(FileExistsError, match=re.escape(f"{path} exists; pass overwrite=True")):
        atomic_write(path, lambda f: f.write(b"new"), overwrite=False)
    atomic_write(path, lambda f: f.write(b"new"))
    assert path.read_bytes() == b"new"


def test_atomic_files_get_the_permissions_of_a_plain_open(tmp_path):
    # mkstemp's temporary files are private (0o600): the renamed result must not be
    (tmp_path / "plain.json").write_text("{}")
    expected = (tmp_path / "plain.json").stat().st_mode & 0o777
    write_json_atomic(tmp_path / "log.json", {})
    assert (tmp_path / "log.json").stat().st_mode & 0o777 == expected


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(batch_size=0), ValueError, "batch_size must be a positive int"),
    (dict(batch_size=2.5), TypeError, "batch_size must be a positive int"),
    (dict(batch_size=-1), ValueError, "batch_size must be a positive int"),
    (dict(max_batches=0), ValueError, "max_batches must be a positive int"),
    (dict(epochs=-1), ValueError, "epochs must be a positive int"),
    (dict(patience=0), ValueError, "patience must be a positive int"),
    (dict(eval_batch_size=0), ValueError, "eval_batch_size must be a positive int"),
    (dict(min_delta=np.nan), ValueError, "min_delta must be a finite number >= 0"),
    (dict(max_grad_norm=np.inf), ValueError, "max_grad_norm must be a finite number > 0"),
])
def test_train_refuses_bad_loop_settings(kwargs, error, match):
    rng = np.random.default_rng(4)
    net = make_net(rng)
    opt = pl.Adam(net)
    before = {k: v.copy() for k, v in net.params.items()}
    with pytest.raises(error, match=match):
        pl.train(net, opt, sine_data(16, rng, T=6), **{"epochs": 1, "progress": False,
                                                        **kwargs})
    assert opt.step_count == 0 and all(np.array_equal(before[k], v)
                                       for k, v in net.params.items())


def test_a_non_finite_validation_loss_stops_training(monkeypatch):
    rng = np.random.default_rng(5)
    net = make_net(rng)
    monkeypatch.setattr(net, "evaluate", lambda data, batch_size: {"loss": float("nan")})
    with pytest.raises(FloatingPointError, match="validation loss is nan after epoch 1"):
        pl.train(net, pl.Adam(net), sine_data(16, rng, T=6), sine_data(8, rng, T=6),
                 epochs=3, progress=False)


def test_evaluate_refuses_empty_data_and_bad_batch_sizes():
    rng = np.random.default_rng(6)
    net = make_net(rng)
    data = sine_data(8, rng, T=6)
    with pytest.raises(ValueError, match="data is empty"):
        net.evaluate(data[np.arange(0)])
    for bad, error in ((0, ValueError), (-2, ValueError), (1.5, TypeError)):
        with pytest.raises(error, match="batch_size must be a positive int"):
            net.evaluate(data, batch_size=bad)
    with pytest.raises(TypeError, match="data must be a Dataset"):
        net.evaluate([1, 2])
