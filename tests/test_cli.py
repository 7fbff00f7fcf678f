"""The plstm-np command end to end on tiny configurations: train -> checkpoint -> evaluate,
reproduce --quick, and clear errors for bad arguments."""
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import plstm_np as pl
import plstm_np.experiments.runs as runs
from plstm_np.cli import main
from plstm_np.nmnist import DATA_DIR, load_nmnist, read_labels, to_dataset
from plstm_np.statistics import binomial_interval

TINY = ["--n-train", "16", "--n-val", "8", "--hidden", "4", "--batch-size", "8", "--quiet"]


def run(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_train_checkpoint_evaluate_round_trip(tmp_path, capsys):
    out = tmp_path / "run"
    code, text, _ = run(["train", "freq", "--epochs", "2", "--lr", "0.01", "--out", str(out)]
                        + TINY, capsys)
    assert code == 0
    assert "validation accuracy:" in text and "neuron updates per neuron" in text
    log = json.loads((out / "log.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert [r["epoch"] for r in log] == [1, 2]
    assert config["task"] == "frequency" and config["sampling"] == "async"
    assert config["hidden_size"] == 4 and config["n_train"] == 16

    # The checkpoint holds the epoch with the lowest validation loss: evaluating it must
    # give that epoch's logged metrics, on a validation set regenerated here directly.
    code, text, _ = run(["evaluate", str(out / "checkpoint.npz"), "--json"], capsys)
    assert code == 0
    result = json.loads(text)
    best = min(log, key=lambda r: r["val_loss"])
    assert result["accuracy"] == pytest.approx(best["val_accuracy"])
    assert result["loss"] == pytest.approx(best["val_loss"], rel=1e-9)
    net = pl.load(out / "checkpoint.npz")
    val = pl.tasks.frequency_discrimination(8, sampling="async", rng=np.random.default_rng([0, 1]),
                                            dtype=np.float32)  # the protocol's dtype
    direct = net.evaluate(val)
    assert result["accuracy"] == direct["accuracy"]
    assert result["updates_per_neuron"] == pytest.approx(direct["updates_per_neuron"])
    assert result["dense_updates_per_neuron"] == pytest.approx(float(val.steps.mean()))
    # a Phased LSTM at evaluation skips most updates (r_on = 0.05)
    assert result["updates_per_neuron"][0] < 0.5 * result["dense_updates_per_neuron"]

    code, text, _ = run(["evaluate", str(out)], capsys)  # the run folder works too
    assert code == 0 and f"{100 * result['accuracy']:.2f} %" in text


def test_train_refuses_to_overwrite_without_the_flag(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "digits", "--epochs", "1", "--max-batches", "1", "--out", str(out)] + TINY
    assert run(argv, capsys)[0] == 0
    before = (out / "checkpoint.npz").read_bytes()
    code, _, err = run(argv, capsys)
    assert code == 2 and "--overwrite" in err and "exist" in err
    assert (out / "checkpoint.npz").read_bytes() == before
    assert run(argv + ["--overwrite", "--seed", "3"], capsys)[0] == 0
    assert json.loads((out / "config.json").read_text())["seed"] == 3


def test_lstm_and_other_tasks_train_from_the_cli(tmp_path, capsys):
    code, text, _ = run(["train", "adding", "--model", "lstm", "--epochs", "1", "--max-batches",
                         "2", "--n-train", "4", "--n-val", "4", "--hidden", "3", "--batch-size",
                         "2", "--quiet"], capsys)
    assert code == 0 and "validation loss (MSE)" in text


@pytest.mark.parametrize("model", ["bnlstm", "pgru", "gru"])
def test_every_model_trains_and_evaluates_from_the_cli(model, tmp_path, capsys):
    out = tmp_path / model
    code, text, err = run(["train", "--model", model, "--epochs", "1", "--out", str(out),
                           *TINY], capsys)
    assert code == 0, err
    assert code == 0, err
    share = re.search(r"a dense LSTM: [\d.]+; ([\d.]+) %", text)
    assert share and float(share.group(1)) > 0, text  # the recurrent layer's, not BN's 0
    code, text, err = run(["evaluate", str(out / "checkpoint.npz")], capsys)
    assert code == 0 and "accuracy" in text and share.group(0) in text, err
    assert json.loads((out / "config.json").read_text())["model"] == model


def _user_recordings(tmp_path, ids, layout):
    """Copy a few shipped recordings into a folder the way a user might have them."""
    labels = read_labels(DATA_DIR / "train1K.txt")
    folder = tmp_path / "mine"
    for i in ids:
        if layout == "digits":
            target = folder / str(labels[i]) / f"{i}.bin"
        else:
            target = folder / f"{i}.bs2"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(DATA_DIR / f"{i}.bs2", target)
    if layout == "label_file":
        (tmp_path / "labels.txt").write_text("".join(f"{i} {labels[i]}\n" for i in ids))
    return folder, [labels[i] for i in ids]


@pytest.mark.parametrize("layout", ["digits", "label_file"])
def test_evaluate_on_a_folder_of_nmnist_recordings(tmp_path, capsys, layout):
    out = tmp_path / "run"
    code, _, _ = run(["train", "nmnist", "--epochs", "1", "--n-train", "6", "--n-val", "4",
                      "--hidden", "4", "--batch-size", "3", "--rho", "0.05", "--quiet",
                      "--out", str(out)], capsys)
    assert code == 0
    folder, labels = _user_recordings(tmp_path, [3, 17, 512], layout)
    argv = ["evaluate", str(out), "--nmnist-folder", str(folder), "--rho", "1", "--json"]
    if layout == "label_file":
        argv += ["--label-file", str(tmp_path / "labels.txt")]
    code, text, _ = run(argv, capsys)
    assert code == 0
    result = json.loads(text)
    assert result["n"] == 3
    recordings, _ = load_nmnist(folder, label_file=tmp_path / "labels.txt"
                                if layout == "label_file" else None)
    data = to_dataset(recordings, labels, dtype=np.float32)  # the protocol's dtype
    direct = pl.load(out / "checkpoint.npz").evaluate(data)
    assert result["accuracy"] == direct["accuracy"]
    assert result["dense_updates_per_neuron"] == pytest.approx(
        np.mean([len(r) for r in recordings]))
    assert 0 < result["updates_per_neuron"][0] < result["dense_updates_per_neuron"]
    k = round(3 * result["accuracy"])
    assert result["accuracy_interval"] == list(binomial_interval(k, 3))
    # without --json the figure is named for what it was measured on, with its interval
    code, text, _ = run([a for a in argv if a != "--json"], capsys)
    lo, hi = binomial_interval(k, 3)
    assert code == 0 and "validation accuracy" not in text
    assert (f"accuracy on 3 recordings from {folder}: {100 * result['accuracy']:.2f} %  "
            f"(95 % CI {100 * lo:.1f}-{100 * hi:.1f} %," in text)


def test_evaluate_nmnist_folder_needs_labels_and_an_nmnist_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    assert run(["train", "freq", "--epochs", "1", "--max-batches", "1", "--out", str(out)] + TINY,
               capsys)[0] == 0
    folder, _ = _user_recordings(tmp_path, [5], "flat")
    code, _, err = run(["evaluate", str(out), "--nmnist-folder", str(folder)], capsys)
    assert code == 2 and "N-MNIST checkpoint" in err
    code, _, err = run(["evaluate", str(tmp_path / "nothing.npz")], capsys)
    assert code == 2 and "no checkpoint" in err


def test_reproduce_quick_writes_table_and_figures(tmp_path, capsys):
    code, text, _ = run(["reproduce", "frequency", "--quick", "--out", str(tmp_path)], capsys)
    assert code == 0
    root = tmp_path / "frequency"
    results = json.loads((root / "results.json").read_text())
    assert set(results["conditions"]) == {f"{m}-{s}" for m in ("plstm", "bnlstm", "lstm")
                                          for s in ("standard", "high_res", "async")}
    table = (root / "results.md").read_text()
    assert "| 99.26 ± 0.23 |" in table and "| 62.38 ± 18.63 |" in table  # the authors' numbers
    for cond in results["conditions"]:
        assert f"| {cond} |" in table
        c = results["conditions"][cond]  # the recurrent layer's updates (not BN's zero)
        assert 0 < c["updates_per_neuron_mean"] <= c["dense_updates_per_neuron_mean"], cond
    for name in ("fig3d_bars.png", "fig3_curves.png"):
        assert (root / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # A second call reuses the complete runs instead of training again.
    code, text, _ = run(["reproduce", "frequency", "--quick", "--out", str(tmp_path),
                         "--conditions", "plstm-async"], capsys)
    assert code == 0 and "reusing the complete run" in text


def test_reproduce_quick_nmnist_table1(tmp_path, capsys):
    code, text, _ = run(["reproduce", "nmnist", "--quick", "--out", str(tmp_path)], capsys)
    assert code == 0
    results = json.loads((tmp_path / "nmnist" / "results.json").read_text())
    plstm, lstm = results["conditions"]["plstm"], results["conditions"]["lstm"]
    # the LSTM computes every event; the Phased LSTM a fraction of them
    rho = results["protocol"]["test_rhos"][-1]
    lstm_test, plstm_test = lstm["test_mean"][str(rho)], plstm["test_mean"][str(rho)]
    assert lstm_test["updates_per_neuron"] == pytest.approx(lstm_test["dense_updates_per_neuron"])
    assert plstm_test["updates_per_neuron"] < 0.5 * plstm_test["dense_updates_per_neuron"]
    assert "updates/neuron" in (tmp_path / "nmnist" / "results.md").read_text()
    # The tests are of the last epoch's network, like the table: at the training rate they
    # are its final validation figures, and rebuilt without checkpoint.npz they are the same.
    for r in plstm["runs"] + lstm["runs"]:
        assert r["test"][str(rho)]["accuracy"] == r["final_val_accuracy"]
        assert r["test"][str(rho)]["loss"] == pytest.approx(r["final_val_loss"], rel=1e-6)
    for name in ("checkpoint.npz", "test_rhos.json"):
        (tmp_path / "nmnist" / "runs" / "plstm" / "seed0" / name).unlink()
    code, text, _ = run(["reproduce", "nmnist", "--quick", "--out", str(tmp_path)], capsys)
    again = json.loads((tmp_path / "nmnist" / "results.json").read_text())
    assert code == 0 and again["conditions"]["plstm"]["runs"] == plstm["runs"]


def test_reproduce_nmnist_leaves_out_the_tests_of_runs_without_a_network(tmp_path, capsys):
    """A complete run whose tests were never made and whose resume state is gone (deleted,
    or not copied with a clone) is named and left out of the test rows, not a crash."""
    argv = ["reproduce", "nmnist", "--quick", "--out", str(tmp_path), "--seeds", "2"]
    assert run(argv, capsys)[0] == 0
    runs = tmp_path / "nmnist" / "runs"
    for cond, seeds in (("plstm", (0,)), ("lstm", (0, 1))):
        for seed in seeds:
            for name in ("last.npz", "test_rhos.json"):
                (runs / cond / f"seed{seed}" / name).unlink()
    code, text, _ = run(argv, capsys)
    assert code == 0 and "] plstm seed 0: not tested at rho = 0.02" in text
    assert "] lstm seed 1: not tested" in text and "plstm seed 1: not tested" not in text
    results = json.loads((tmp_path / "nmnist" / "results.json").read_text())
    plstm, lstm = results["conditions"]["plstm"], results["conditions"]["lstm"]
    assert ["test" in r for r in plstm["runs"]] == [False, True]
    assert plstm["test_seeds"] == [1] and "test_mean" not in lstm
    assert plstm["test_mean"]["0.02"]["accuracy"] == plstm["runs"][1]["test"]["0.02"]["accuracy"]
    table = (tmp_path / "nmnist" / "results.md").read_text()
    assert "| plstm (seed 1 of 2) |" in table and "| lstm (not tested) | — |" in table
    assert "| bnlstm | " in table  # both seeds tested: the plain name


@pytest.mark.parametrize("argv, words", [
    ([], "COMMAND"),
    (["train", "nosuchtask"], "task must be one of"),
    (["train", "--model", "rnn"], "--model"),
    (["train", "--epochs", "0"], "--epochs"),
    (["train", "--sampling", "weird"], "--sampling"),
    (["train", "--rho", "1.5"], "--rho"),
    (["train", "--lr", "-1"], "--lr"),
    (["train", "--lr", "0"], "--lr"),
    (["train", "--lr", "inf"], "--lr"),
    (["train", "--lr", "nan"], "--lr"),
    (["reproduce", "frequency", "--lr", "inf"], "--lr"),
    (["train", "--time-scale", "inf"], "--time-scale"),
    (["train", "--input-gate-bias", "nan"], "--input-gate-bias"),
    (["train", "--tau-range", "0", "nan"], "--tau-range"),
    (["train", "--out", "", "--epochs", "1", "--max-batches", "1"], "--out"),
    (["train", "--out", " ", "--epochs", "1", "--max-batches", "1"], "--out"),
    (["reproduce", "frequency", "--quick", "--out", ""], "--out"),
    (["train", "--tau-range", "1"], "--tau-range"),
    (["reproduce", "nosuch"], "experiment must be one of"),
    (["evaluate"], "checkpoint"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_arguments_give_a_clear_argparse_error(argv, words, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # should an argument get through, no run lands in the repo
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "usage: plstm-np" in err and words in err


def test_bad_values_that_argparse_cannot_see(tmp_path, capsys):
    code, _, err = run(["train", "--tau-range", "3", "1", "--out", str(tmp_path / "x")], capsys)
    assert code == 2 and "tau_exp_range" in err
    code, _, err = run(["reproduce", "frequency", "--quick", "--conditions", "plstm-fast",
                        "--out", str(tmp_path)], capsys)
    assert code == 2 and "plstm-fast" in err


def test_python_dash_m_runs_the_cli():
    done = subprocess.run([sys.executable, "-m", "plstm_np", "train", "--help"],
                          capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0
    assert "--sampling" in done.stdout and "--model" in done.stdout


def test_reproduce_refuses_to_mix_runs_of_another_configuration(tmp_path, capsys):
    argv = ["reproduce", "digits", "--quick", "--out", str(tmp_path), "--conditions", "plstm"]
    assert run(argv, capsys)[0] == 0
    code, _, err = run(argv + ["--lr", "0.5"], capsys)
    assert code == 2 and "another configuration" in err and "lr" in err
    assert run(argv + ["--lr", "0.5", "--overwrite"], capsys)[0] == 0
    saved = json.loads(
        (tmp_path / "digits" / "runs" / "plstm" / "seed0" / "config.json").read_text())
    assert saved["lr"] == 0.5


FAST = TINY + ["--epochs", "1", "--max-batches", "1", "--backend", "numpy"]


def _wrote(text, folder):
    """The files the 'wrote' line names; each must exist."""
    line = next(line for line in text.splitlines() if line.startswith("wrote "))
    shown = re.sub(r" \([^)]*\)", "", line[len("wrote "):])  # drop "(epoch 1, ...)"
    first, *rest = shown.split(", ")
    names = [Path(first).name, *rest]
    for name in names:
        assert (folder / name).is_file(), f"{line!r} names {name}, which is not there"
    return names


def test_wrote_names_only_the_files_that_exist(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    code, text, _ = run(["train", "digits", "--out", str(out)] + FAST, capsys)
    assert code == 0
    assert _wrote(text, out) == ["checkpoint.npz", "log.json", "config.json"]

    def no_finite_epoch(net, optimizer, train_data, val_data, *, log_path, **kwargs):
        record = {"epoch": 1, "train_loss": 1.0, "val_loss": math.nan, "val_accuracy": 0.5,
                  "val_updates_per_neuron": [1.0], "val_dense_updates_per_neuron": 2.0}
        pl.files.write_json_atomic(log_path, [record])  # no improvement: no checkpoint
        return [record]

    monkeypatch.setattr(runs, "train", no_finite_epoch)
    code, text, _ = run(["train", "digits", "--out", str(out), "--overwrite"] + FAST, capsys)
    assert code == 0 and "no checkpoint written" in text
    assert _wrote(text, out) == ["log.json", "config.json"]
    assert not (out / "checkpoint.npz").exists()


def test_divergence_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    def diverge(*args, **kwargs):
        raise FloatingPointError("loss is nan at epoch 1, batch 0")

    monkeypatch.setattr(runs, "train", diverge)
    code, text, err = run(["train", "freq", "--out", str(tmp_path / "run")] + FAST, capsys)
    assert code == 2
    assert err == ("plstm-np train: error: training diverged (loss is nan at epoch 1, "
                   "batch 0); try a lower --lr\n")
    assert "wrote" not in text


OLD_RUN = {"checkpoint.npz": b"old checkpoint", "last.npz": b"old state", "log.json": b"[]",
           "config.json": b'{"seed": 0}', "run.log": b"old line\n"}


def _old_run(folder):
    folder.mkdir()
    for name, data in OLD_RUN.items():
        (folder / name).write_bytes(data)


def _files(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_a_failed_overwrite_never_mixes_two_runs(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    _old_run(out)
    argv = ["train", "freq", "--out", str(out), "--overwrite", "--seed", "3"] + FAST

    def no_data(cfg):
        raise ValueError("no data today")

    with monkeypatch.context() as m:  # before training: the old run stays as it was
        m.setattr(runs, "make_data", no_data)
        code, _, err = run(argv, capsys)
    assert code == 2 and "no data today" in err
    assert _files(out) == OLD_RUN

    def interrupted(*args, **kwargs):
        raise FloatingPointError("loss is inf at epoch 1, batch 0")

    with monkeypatch.context() as m:  # during training: only the new run's files
        m.setattr(runs, "train", interrupted)
        code, _, err = run(argv, capsys)
    assert code == 2 and "diverged" in err
    left = _files(out)
    assert sorted(left) == ["config.json", "run.log"]
    assert json.loads(left["config.json"])["seed"] == 3
    assert b"old line" not in left["run.log"] and b"training plstm" in left["run.log"]


def test_train_nmnist_with_augmentation_and_simulated_recordings(tmp_path, capsys):
    out = tmp_path / "aug"
    code, text, _ = run(["train", "nmnist", "--epochs", "1", "--n-train", "4", "--n-val", "3",
                         "--hidden", "3", "--batch-size", "3", "--rho", "0.05",
                         "--augment-shift", "1", "--augment-jitter-ms", "0.5",
                         "--n-simulated", "2", "--quiet", "--out", str(out)], capsys)
    assert code == 0 and "trained 1 epochs on 6 sequences" in text
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["augment_shift"], cfg["augment_jitter_ms"], cfg["n_simulated"]) == (1, 0.5, 2)
    with pytest.raises(SystemExit) as info:
        main(["train", "nmnist", "--n-simulated", "-1"])
    assert info.value.code == 2
    assert "--n-simulated: expected an integer >= 0" in capsys.readouterr().err
    code, _, err = run(["train", "freq", "--augment-shift", "1", "--out", str(tmp_path / "f")],
                       capsys)
    assert code == 2 and "augment_shift applies to N-MNIST" in err


def test_reproduce_nmnist_tests_each_run_as_it_finishes(tmp_path, capsys, monkeypatch):
    """The tests at other event rates are made as each run ends, while its network is there,
    not when the table is built: a sweep cut off after its training keeps them."""
    from plstm_np.experiments import reproduction

    def cut_off(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(reproduction, "_summarise", cut_off)
    with pytest.raises(KeyboardInterrupt):
        main(["reproduce", "nmnist", "--quick", "--out", str(tmp_path), "--seeds", "2"])
    folders = sorted((tmp_path / "nmnist" / "runs").glob("*/seed*"))
    assert len(folders) == 6
    for folder in folders:
        assert set(json.loads((folder / "test_rhos.json").read_text())) == {"0.02"}
        (folder / "last.npz").unlink()  # then lost, as with a clone: the tests stay
    monkeypatch.undo()
    code, text, _ = run(["reproduce", "nmnist", "--quick", "--out", str(tmp_path),
                         "--seeds", "2"], capsys)
    results = json.loads((tmp_path / "nmnist" / "results.json").read_text())
    assert code == 0 and "not tested" not in text
    assert all(c["test_seeds"] == [0, 1] for c in results["conditions"].values())
