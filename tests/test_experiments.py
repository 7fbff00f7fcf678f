"""Experiments: every task trains a few steps with every model, the paper's architectures,
seeded data regenerated exactly, backend fallback, and (slow) the main job's accuracy."""
import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest

import plstm_np as pl
from plstm_np import experiments as ex
from plstm_np.backends import BackendUnavailableError
from plstm_np.backends.numba.compile import PLAIN_PYTHON


def tiny(task, model="plstm", **kw):
    cfg = dict(model=model, n_train=4, n_val=4, epochs=1, hidden_size=4, batch_size=2,
               max_batches=2, rho=0.02, lr=0.01)
    cfg.update(kw)
    return ex.default_config(task, **cfg)


def updates_per_neuron_expected(net, val, backend):
    """Neuron updates per neuron and per sequence at evaluation, counted independently of
    the kernels: every valid step for an LSTM (and on the NumPy reference backend, which
    skips nothing); for a Phased LSTM on a skipping backend (alpha = 0) only the valid steps
    at which a neuron's time gate is open (k != 0); a Phased GRU counts only those on every
    backend. The recurrent layer is the last one (a BN-LSTM's batch normalisation comes
    first)."""
    layer = net.layers[-1]
    steps = val.steps
    if isinstance(layer, (pl.LSTM, pl.GRU)) or (backend == "numpy"
                                                and isinstance(layer, pl.PhasedLSTM)):
        return int(steps.sum()) * layer.hidden_size / layer.hidden_size / len(val)
    valid = np.arange(val.t.shape[1])[None, :] < steps[:, None]
    p = layer.params
    k = pl.time_gate(np.where(valid, val.t, 0.0)[:, :, None], p["tau"].astype(np.float64),
                     p["s"].astype(np.float64), p["r_on"].astype(np.float64), 0.0)
    return int((valid[:, :, None] & (k != 0)).sum()) / layer.hidden_size / len(val)


@pytest.mark.parametrize("model", ex.MODELS)
@pytest.mark.parametrize("task", sorted(ex.TASK_SPECS))
def test_every_task_trains_a_few_steps(task, model, tmp_path):
    cfg = tiny(task, model)
    run = ex.run_training(cfg, tmp_path, progress=False)
    history = run["history"]
    assert len(history) == 1 and np.isfinite(history[0]["train_loss"])
    final = run["final"]
    assert np.isfinite(final["loss"])
    # The saved checkpoint (the only epoch), evaluated here on the regenerated validation
    # set, gives the reported figures.
    _, val = ex.make_data(cfg)
    assert len(val) == run["n_val"]
    net = pl.load(tmp_path / "checkpoint.npz")
    direct = net.evaluate(val)
    assert final["loss"] == pytest.approx(direct["loss"], rel=1e-9)
    if ex.TASK_SPECS[task].loss == "cross_entropy":
        assert final["accuracy"] == direct["accuracy"]
    else:
        assert "accuracy" not in final
    dense = final["dense_updates_per_neuron"]
    assert dense == pytest.approx(float(val.steps.mean()), rel=1e-12)
    updates = final["updates_per_neuron"]
    assert updates == pytest.approx(direct["updates_per_neuron"], rel=1e-12)
    backend = run["config"]["backend"]
    assert updates[-1] == pytest.approx(updates_per_neuron_expected(net, val, backend),
                                        rel=1e-12)
    if model in ("lstm", "bnlstm", "gru") or (model == "plstm" and backend == "numpy"):
        assert updates[-1] == pytest.approx(dense, rel=1e-12)
    else:
        assert updates[-1] < dense  # the kernels skip closed neurons at evaluation
    # ... and so does evaluate_checkpoint, from the configuration saved in the checkpoint
    result = ex.evaluate_checkpoint(tmp_path, log=lambda m: None)
    assert result["loss"] == pytest.approx(direct["loss"], rel=1e-9)
    assert result.get("accuracy") == direct.get("accuracy")
    assert result["updates_per_neuron"] == pytest.approx(direct["updates_per_neuron"], rel=1e-12)
    assert result["n"] == len(val) and result["epoch"] == 1


def test_paper_architectures():
    freq = ex.build_model(ex.default_config("freq", backend="numpy"))
    layer = freq.layers[0]
    assert isinstance(layer, pl.PhasedLSTM) and not isinstance(layer, pl.LSTM)
    assert layer.params["Wx"].shape == (1, 440) and freq.output_size == 2
    tau = layer.params["tau"]
    assert np.all((tau >= 1.0) & (tau <= np.exp(3.0))) and np.all(layer.params["r_on"] == 0.05)
    lstm = ex.build_model(ex.default_config("freq", model="lstm", backend="numpy"))
    assert isinstance(lstm.layers[0], pl.LSTM)
    assert lstm.layers[0].params["Wx"].shape == (2, 440)  # amplitude + timestamp
    nm = ex.build_model(ex.default_config("nmnist", backend="numpy"))
    assert nm.embedding.params["E"].shape == (1156, 40)
    assert nm.layers[0].input_size == 41 and nm.output_size == 10
    add = ex.build_model(ex.default_config("adding", tau_exp_range=[6, 8], backend="numpy"))
    assert add.loss_name == "mse" and add.layers[0].input_size == 2 and add.output_size == 1
    assert np.all(add.layers[0].params["tau"] >= np.exp(6) - 1e-9)
    multi = ex.build_model(ex.default_config("multirate", backend="numpy"))
    assert {"layer0.tau", "layer0.s"} <= multi.frozen
    assert set(np.round(multi.layers[0].params["tau"], 9)) == {40.0, 10.0}  # 25 Hz and 100 Hz


def test_data_is_regenerated_exactly_from_the_seed():
    cfg = ex.default_config("freq", n_train=20, n_val=10, seed=4, fresh_data=False)
    train, val = ex.make_data(cfg)
    train2, val2 = ex.make_data(cfg)
    np.testing.assert_array_equal(train.x, train2.x)
    np.testing.assert_array_equal(val.t, ex.make_val_data(cfg).t)
    other, _ = ex.make_data(dict(cfg, seed=5))
    assert not np.allclose(other.t[:, 0], train.t[:, 0])   # another seed, other data
    assert not np.allclose(train.t[:10, 0], val.t[:, 0])   # train and validation differ
    hr = ex.make_val_data(dict(cfg, sampling="high_res"))
    np.testing.assert_allclose(np.diff(hr.t[0, :hr.lengths[0]]), 0.1)


def test_real_data_split_is_fixed_and_disjoint():
    cfg = ex.default_config("digits")
    train, val = ex.make_data(cfg)
    assert len(train) + len(val) == 1797 and 170 <= len(val) <= 190  # a 90/10 split
    train5, val5 = ex.make_data(dict(cfg, seed=5, n_train=100))
    np.testing.assert_array_equal(val.x, val5.x)     # same validation set for every seed
    assert len(train5) == 100

    def flat(d):
        return {row.tobytes() for row in d.x[:, :, 0]}

    images = pl.mnist.load_digits()[0].reshape(-1, 64)
    assert len({r.tobytes() for r in images}) == len(images)  # no duplicate images ...
    assert not flat(train) & flat(val)                         # ... so disjoint means disjoint


def test_numba_and_numpy_runs_agree():
    """A short run on each backend: the same losses (the kernels are checked in detail in the
    backend tests; this checks that the experiment wiring dispatches alike)."""
    base = dict(n_train=8, n_val=8, hidden_size=5, batch_size=4, epochs=2, lr=0.01,
                dtype="float64")
    runs = [ex.run_training(ex.default_config("freq", backend=b, **base), progress=False)
            for b in ("numpy", "numba")]
    assert runs[1]["config"]["backend"] == "numba"
    for a, b in zip(*(r["history"] for r in runs)):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-9)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-9)
        assert a["val_accuracy"] == b["val_accuracy"]


def test_unavailable_backend_falls_back_to_numpy(monkeypatch):
    def unavailable(name):
        raise BackendUnavailableError("no compiler here")

    monkeypatch.setattr(ex.runs, "get_backend", unavailable)  # what resolve_backend calls
    messages = []
    assert ex.resolve_backend("numba", log=messages.append) == "numpy"
    assert "no compiler here" in messages[0] and "numpy" in messages[0].lower()
    assert ex.resolve_backend("numpy", log=messages.append) == "numpy"


@pytest.mark.parametrize("key, value, words", [
    ("model", "rnn", "model must be one of"),
    ("sampling", "fast", "sampling must be"),
    ("n_train", 0, "n_train"),
    ("lr", 0.0, "lr must be a finite number > 0"),
    ("rho", 1.5, "rho"),
    ("tau_exp_range", [3, 1], "tau_exp_range"),
    ("no_such_key", 1, "unknown configuration keys"),
    ("seed", -1, "seed must be"),
])
def test_bad_configuration_values(key, value, words):
    with pytest.raises(ValueError, match=words):
        ex.default_config("freq", **{key: value})
    with pytest.raises(ValueError, match="task must be one of"):
        ex.default_config("nosuchtask")
    with pytest.raises(ValueError, match="sampling applies"):
        ex.default_config("adding", sampling="async")


def test_reproduce_rejects_unknown_experiments_and_conditions(tmp_path):
    with pytest.raises(ValueError, match="experiment must be one of"):
        ex.reproduce("nosuch", tmp_path)
    with pytest.raises(ValueError, match="not among"):
        ex.reproduce("adding", tmp_path, quick=True, conditions=["plstm-tau9-10"])


def test_reproduce_quick_adding_writes_an_mse_table(tmp_path):
    results = ex.reproduce("adding", tmp_path, quick=True, seeds=2, log=lambda m: None)
    assert list(results["conditions"]) == ["plstm-tau0-2", "plstm-tau2-4", "plstm-tau4-6",
                                           "plstm-tau6-8", "lstm"]
    folder = tmp_path / "adding"
    saved = json.loads((folder / "results.json").read_text())
    assert saved == results  # results.json round-trips, figures included
    assert saved["figures"] == [str(folder / "fig4b_curves.png")]
    assert (folder / "fig4b_curves.png").exists()
    table = (folder / "results.md").read_text()
    assert "val. MSE" in table
    rows = {line.split(" | ")[0][2:]: line for line in table.splitlines()
            if line.startswith("| ") and " ± " in line}
    assert list(rows) == list(saved["conditions"])
    for name, c in saved["conditions"].items():
        runs = c["runs"]
        assert [r["seed"] for r in runs] == [0, 1]
        for r in runs:  # each seed's figures are those of its run's log
            log = json.loads((folder / "runs" / name / f"seed{r['seed']}" / "log.json").read_text())
            assert r["final_val_loss"] == log[-1]["val_loss"]
            assert r["best_val_loss"] == min(e["val_loss"] for e in log)
            assert r["curve_val_loss"] == [e["val_loss"] for e in log]
            assert r["updates_per_neuron"] == log[-1]["val_updates_per_neuron"][0]
        final = np.array([r["final_val_loss"] for r in runs])
        best = np.array([r["best_val_loss"] for r in runs])
        first = np.mean([r["curve_val_loss"][0] for r in runs])
        updates = np.mean([r["updates_per_neuron"] for r in runs])
        dense = np.mean([r["dense_updates_per_neuron"] for r in runs])
        assert c["final_val_loss_mean"] == pytest.approx(final.mean(), rel=1e-12)
        assert c["final_val_loss_std"] == pytest.approx(final.std(), rel=1e-12, abs=1e-15)
        assert c["curve_val_loss_mean"][0] == pytest.approx(first, rel=1e-12)
        # the table row holds the mean ± std over the seeds, computed here from the runs
        cells = rows[name].split(" | ")
        assert cells[1] == f"{final.mean():.4f} ± {final.std():.4f}"
        assert cells[2] == f"{best.mean():.4f} ± {best.std():.4f}"
        assert cells[3] == f"{first:.4f}"
        assert cells[4] == f"{updates:.1f}" and cells[5] == f"{dense:.1f}"
    lstm = saved["conditions"]["lstm"]
    assert lstm["updates_per_neuron_mean"] == pytest.approx(lstm["dense_updates_per_neuron_mean"])
    plstm = saved["conditions"]["plstm-tau0-2"]
    if saved["backend"] != "numpy":  # the NumPy reference backend skips nothing
        assert plstm["updates_per_neuron_mean"] < plstm["dense_updates_per_neuron_mean"]
    # a second reproduction reuses the complete runs and gives the same results
    assert ex.reproduce("adding", tmp_path, quick=True, seeds=2, log=lambda m: None) == results


@pytest.mark.slow
def test_main_job_reaches_the_protocols_target(tmp_path):
    """`plstm-np train` with no options, the README's main job: the faithful protocol for
    30 epochs reaches >= 93 % on asynchronous sampling (the issue's target)."""
    run = ex.run_training(ex.default_config("frequency"), tmp_path / "main", progress=False)
    assert run["final"]["accuracy"] >= 0.93


@pytest.mark.slow
def test_phased_lstm_beats_lstm_on_async_frequency_discrimination():
    """The paper's ordering on a short protocol (500 updates each, about 10 s each)."""
    acc = {}
    for model in ex.MODELS:
        cfg = ex.default_config("frequency", model=model, n_train=1600, epochs=10, lr=1e-2)
        acc[model] = ex.run_training(cfg, progress=False)["final"]["accuracy"]
    assert acc["plstm"] > acc["lstm"] + 0.05, acc


def test_a_reproduction_publishes_each_conditions_median_run_at_its_last_epoch(tmp_path):
    """The published file holds the parameters only, of the median seed's last epoch:
    evaluating it gives exactly that run's final validation accuracy (the table's)."""
    results = ex.reproduce("frequency", tmp_path, conditions=["plstm-async"], seeds=3,
                           epochs=2, n_train=16, n_val=16, hidden_size=4, batch_size=8,
                           log=lambda m: None)
    runs = results["conditions"]["plstm-async"]["runs"]
    finals = [r["final_val_accuracy"] for r in runs]
    entry = results["checkpoints"]["plstm-async"]
    assert finals[entry["seed"]] == sorted(finals)[1] and entry["epoch"] == 2
    path = tmp_path / "frequency" / entry["path"]
    net, optimizer, meta = pl.load_checkpoint(path)
    assert optimizer is None and meta["selection"] == "last epoch"
    assert all(v.dtype == np.float32 for v in net.params.values())
    last, _, _ = pl.load_checkpoint(tmp_path / "frequency" / "runs" / "plstm-async"
                                    / f"seed{entry['seed']}" / "last.npz")
    for name, value in last.params.items():
        np.testing.assert_array_equal(net.params[name], value, err_msg=name)
    evaluated = ex.evaluate_checkpoint(path, log=lambda m: None)
    assert evaluated["accuracy"] == finals[entry["seed"]]
    assert evaluated["selection"] == "last epoch"
    assert json.loads((tmp_path / "frequency" / "results.json").read_text())[
        "checkpoints"] == results["checkpoints"]


def test_a_published_checkpoint_outlives_its_runs_resume_state(tmp_path):
    """Resume states are not in version control: rebuilding the table from a clone keeps the
    checkpoint published from the median run, and only that run's; another run's is not
    listed."""
    kw = dict(conditions=["plstm-async"], seeds=3, epochs=2, n_train=16, n_val=16,
              hidden_size=4, batch_size=8, log=lambda m: None)
    first = ex.reproduce("frequency", tmp_path, **kw)
    entry = first["checkpoints"]["plstm-async"]
    runs = tmp_path / "frequency" / "runs" / "plstm-async"
    for state in runs.glob("seed*/last.npz"):
        state.unlink()
    messages = []
    again = ex.reproduce("frequency", tmp_path, **dict(kw, log=messages.append))
    assert again["checkpoints"] == first["checkpoints"]
    assert any("kept" in m for m in messages)
    other = next(r for r in first["conditions"]["plstm-async"]["runs"]
                 if r["seed"] != entry["seed"])
    net, _, meta = pl.load_checkpoint(tmp_path / "frequency" / entry["path"])
    cfg = json.loads((runs / f"seed{other['seed']}" / "config.json").read_text())
    net.save(tmp_path / "frequency" / entry["path"], overwrite=True,
             metadata=dict(meta, seed=other["seed"], config=cfg))
    assert ex.reproduce("frequency", tmp_path, **kw)["checkpoints"] == {}


def test_sequential_mnist_reproduction_draws_the_training_batch_accuracy(tmp_path):
    """The TensorFlow reimplementation's curves: each run's training-batch accuracy per
    epoch, averaged over seeds, drawn against the update steps in a third panel."""
    import struct

    results = ex.reproduce("smnist", tmp_path, quick=True, log=lambda m: None)
    for name, c in results["conditions"].items():
        logged = json.loads((tmp_path / "smnist" / "runs" / name / "seed0" / "log.json")
                            .read_text())
        assert c["runs"][0]["curve_train_accuracy"] == [r["train_accuracy"] for r in logged]
        assert c["curve_train_accuracy_mean"] == c["runs"][0]["curve_train_accuracy"]
    assert "the baselines without a time input" in (tmp_path / "smnist" / "results.md").read_text()
    png = (tmp_path / "smnist" / "smnist_curves.png").read_bytes()
    width = struct.unpack(">I", png[16:20])[0]
    assert width == 15 * 120  # three panels of 5 inches at 120 dpi


def test_the_table_names_the_command_that_remakes_it(tmp_path, capsys):
    """results.md ends with the ``plstm-np reproduce`` command of its protocol: run on the
    same folder it reuses every run (a wrong flag would refuse the folder or retrain), and
    the table says what it leaves out, the training time and how to evaluate a checkpoint."""
    from plstm_np import cli

    out = tmp_path / "a folder"
    ex.reproduce("frequency", out, conditions=["plstm-async"], seeds=2, epochs=1, n_train=8,
                 n_val=8, hidden_size=3, batch_size=4, learn_r_on=False, lr=0.002,
                 log=lambda m: None)
    table = (out / "frequency" / "results.md").read_text()
    words = shlex.split(re.search(r"Command: `(.*)`", table).group(1))
    assert words[:3] == ["plstm-np", "reproduce", "frequency"] and "--no-learn-r-on" in words
    capsys.readouterr()
    assert cli.main(words[1:] + ["--quiet"]) == 0
    text = capsys.readouterr().out
    assert text.count("reusing the complete run") == 2 and "run(s)" not in text
    assert "Conditions not in this table: plstm-standard, bnlstm-standard," in table
    assert re.search(r"Training time: \d+\.\d h in all for the 2 runs", table)
    ckpt = out / "frequency" / "checkpoints" / "plstm-async.npz"
    assert f"`plstm-np evaluate {ckpt}`" in table


PUBLISHED = Path(__file__).resolve().parents[1] / "results" / "frequency"


@pytest.mark.skipif(not (PUBLISHED / "results.json").exists(), reason="no published results")
@pytest.mark.skipif(PLAIN_PYTHON, reason="9 networks x 512 sequences take hours with the "
                    "kernels run as Python (the coverage pass); evaluate_checkpoint is "
                    "covered by the small runs")
def test_the_published_fig3d_checkpoints_give_their_tables_accuracies():
    """Each shipped checkpoint, evaluated anew, gives the final validation accuracy its run
    logged (the table's per-seed value), and is the median seed of its condition."""
    results = json.loads((PUBLISHED / "results.json").read_text())
    assert results["checkpoints"]
    for cond, entry in results["checkpoints"].items():
        finals = [r["final_val_accuracy"] for r in results["conditions"][cond]["runs"]]
        assert entry["final_val_accuracy"] == finals[entry["seed"]] == sorted(finals)[2]
        evaluated = ex.evaluate_checkpoint(PUBLISHED / entry["path"], log=lambda m: None)
        assert evaluated["accuracy"] == entry["final_val_accuracy"], cond


def test_curve_figures_shade_the_range_over_seeds(tmp_path, monkeypatch):
    # the paper's Fig. 4 shades min to max over seeds: one band per condition with two or
    # more complete runs, between their per-epoch extremes, none for a single run
    import matplotlib.axes

    bands = []
    real = matplotlib.axes.Axes.fill_between
    monkeypatch.setattr(matplotlib.axes.Axes, "fill_between",
                        lambda ax, x, y1, y2, **kw: bands.append((x, y1, y2))
                        or real(ax, x, y1, y2, **kw))
    curves = [[0.3, 0.2, 0.1], [0.5, 0.1, 0.05], [0.4, 0.3, 0.2]]
    train = [[0.2, 0.1, 0.01], [0.3, 0.2, 0.1], [0.25, 0.05, 0.02]]
    three = [dict(seed=k, curve_val_loss=c, curve_train_loss=tr)
             for k, (c, tr) in enumerate(zip(curves, train))]
    one = [dict(seed=0, curve_val_loss=curves[0], curve_train_loss=train[0]),
           dict(seed=1, curve_val_loss=curves[1][:2], curve_train_loss=train[1][:2])]
    results = dict(experiment="adding", title="t", protocol=dict(seeds=[0, 1, 2], n_train=8),
                   conditions={
                       "plstm-tau6-8": dict(curve_val_loss_mean=np.mean(curves, 0).tolist(),
                                            curve_train_loss_mean=np.mean(train, 0).tolist(),
                                            runs=three),
                       "lstm": dict(curve_val_loss_mean=curves[0],
                                    curve_train_loss_mean=train[0], runs=one),
                   })
    paths = ex.reports.write_figures(results, tmp_path)
    assert [p.name for p in paths] == ["fig4b_curves.png"] and paths[0].exists()
    assert len(bands) == 2  # validation and training loss; the LSTM has one complete run
    for (x, low, high), got in zip(bands, (curves, train)):
        np.testing.assert_array_equal(x, [1, 2, 3])
        np.testing.assert_array_equal(low, np.min(got, axis=0))
        np.testing.assert_array_equal(high, np.max(got, axis=0))


def test_batch_accuracy_panel_draws_the_published_reference_curve(tmp_path, monkeypatch):
    import matplotlib.axes

    lines = []
    real = matplotlib.axes.Axes.plot
    monkeypatch.setattr(matplotlib.axes.Axes, "plot",
                        lambda ax, *a, **kw: lines.append((a, kw)) or real(ax, *a, **kw))
    run = dict(seed=0, curve_val_loss=[2.0, 1.0], curve_val_accuracy=[0.2, 0.5],
               curve_train_accuracy=[0.1, 0.4])
    cond = {key + "_mean": value for key, value in run.items() if key.startswith("curve")}
    cond.update(runs=[run], final_val_accuracy_mean=0.5)
    ref = ex.EXPERIMENTS["smnist"].reference_curves["plstm"]
    results = dict(experiment="smnist", title="t", protocol=dict(seeds=[0], n_train=512,
                                                                 batch_size=256),
                   conditions={"plstm": cond}, reference_curves={"plstm": ref})
    ex.reports.write_figures(results, tmp_path)
    drawn = [a for a, kw in lines if ref["label"] in str(kw.get("label"))]
    assert len(drawn) == 1
    np.testing.assert_array_equal(drawn[0][0], ref["steps"])
    np.testing.assert_allclose(drawn[0][1], 100 * np.array(ref["train_accuracy"]))
    # our own curve is drawn against the update steps: 2 batches of 256 per epoch
    ours = [a for a, kw in lines if kw.get("label") == "plstm"]
    np.testing.assert_array_equal(ours[-1][0], [2, 4])


def test_batch_accuracy_panel_counts_the_updates_the_runs_made(tmp_path, monkeypatch):
    """``n_train`` is a cap for real data sets (the digits: 1,618 of 1,797): the panel's
    steps are the updates each run logged, and its label says how many per epoch."""
    import matplotlib.axes

    lines, labels = [], []
    real_plot, real_label = matplotlib.axes.Axes.plot, matplotlib.axes.Axes.set_xlabel
    monkeypatch.setattr(matplotlib.axes.Axes, "plot",
                        lambda ax, *a, **kw: lines.append((a, kw)) or real_plot(ax, *a, **kw))
    monkeypatch.setattr(matplotlib.axes.Axes, "set_xlabel",
                        lambda ax, text, **kw: labels.append(text) or real_label(ax, text, **kw))
    run = dict(seed=0, curve_val_loss=[2.0, 1.0], curve_val_accuracy=[0.2, 0.5],
               curve_train_accuracy=[0.1, 0.4], curve_updates=[51, 102])
    cond = {key + "_mean": value for key, value in run.items() if key.startswith("curve")}
    cond.update(runs=[run], final_val_accuracy_mean=0.5)
    results = dict(experiment="digits", title="t", protocol=dict(seeds=[0], n_train=1797,
                                                                 batch_size=32),
                   conditions={"plstm": cond})
    ex.reports.write_figures(results, tmp_path)
    ours = [a for a, kw in lines if kw.get("label") == "plstm"]
    np.testing.assert_array_equal(ours[-1][0], [51, 102])  # not 57 per epoch
    assert labels[-1] == "update steps (51 per epoch)"
    # the history's updates per epoch become the run's cumulative count
    history = [dict(epoch=e, train_loss=1.0, seconds=1.0, train_batches=51, val_loss=1.0,
                    val_accuracy=0.5, val_updates_per_neuron=[3.0],
                    val_dense_updates_per_neuron=64.0) for e in (1, 2, 3)]
    assert ex.reproduction._summarise(history, "cross_entropy")["curve_updates"] == [51, 102, 153]


def test_fig4a_draws_the_papers_curves_and_one_colour_per_model(tmp_path, monkeypatch):
    import matplotlib.axes

    lines = []
    real = matplotlib.axes.Axes.plot
    monkeypatch.setattr(matplotlib.axes.Axes, "plot",
                        lambda ax, *a, **kw: lines.append((a, kw)) or real(ax, *a, **kw))
    refs = ex.EXPERIMENTS["superimposed"].reference_curves
    assert set(refs) == {"plstm", "bnlstm", "lstm"}
    conds = {}
    for k, name in enumerate(refs):
        run = dict(seed=0, curve_val_loss=[0.7, 0.6], curve_val_accuracy=[0.5, 0.6 + k / 10])
        conds[name] = {key + "_mean": v for key, v in run.items() if key.startswith("curve")}
        conds[name].update(runs=[run], final_val_accuracy_mean=0.6)
    results = dict(experiment="superimposed", title="t", protocol=dict(seeds=[0], n_train=64),
                   conditions=conds, reference_curves=refs)
    ex.reports.write_figures(results, tmp_path)
    colours = {}
    for name, ref in refs.items():
        drawn = [(a, kw) for a, kw in lines if kw.get("label") == f"{name}: {ref['label']}"]
        assert len(drawn) == 1
        (xs, ys), kw = drawn[0]
        np.testing.assert_array_equal(xs, ref["epochs"])
        np.testing.assert_allclose(ys, 100 * np.array(ref["val_accuracy"]))
        ours = [kw2 for a, kw2 in lines if kw2.get("label") == name]
        assert len(ours) == 2  # accuracy and loss panels
        assert ours[0]["color"] == kw["color"]  # the paper's curve in its model's colour
        colours[name] = kw["color"]
    assert len(set(colours.values())) == 3
