"""Reports of a reproduction: aggregation over seeds (:func:`aggregate`), the results table
as markdown (:func:`results_markdown`) and the figures (:func:`write_figures`)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .configs import MODEL_NAMES, PAPER_MODELS, TASK_SPECS, default_config
from .registry import EXPERIMENTS

__all__ = ["aggregate", "results_markdown", "write_figures"]


#: Each model's colour in the figures.
_COLOURS = {"plstm": "tab:red", "lstm": "tab:blue", "bnlstm": "tab:green",
            "pgru": "tab:orange", "gru": "tab:purple"}


def aggregate(runs):
    """Mean and standard deviation over seeds of every scalar of the runs."""
    agg = {}
    for key, value in runs[0].items():
        if key == "seed":
            continue
        if isinstance(value, float):
            values = np.array([r[key] for r in runs])
            agg[f"{key}_mean"], agg[f"{key}_std"] = float(values.mean()), float(values.std())
        elif isinstance(value, list) and value and isinstance(value[0], float):
            n = min(len(r[key]) for r in runs)
            agg[f"{key}_mean"] = np.mean([r[key][:n] for r in runs], axis=0).tolist()
    tested = [r for r in runs if "test" in r]  # a run may lack its tests (_test_rhos)
    if tested:
        first = tested[0]["test"]
        agg["test_mean"] = {rho: {k: float(np.mean([r["test"][rho][k] for r in tested]))
                                  for k in first[rho]} for rho in first}
        agg["test_seeds"] = [r["seed"] for r in tested]
    return agg


def _share(c):
    """Computed updates as a percentage of a dense LSTM's."""
    dense = c["dense_updates_per_neuron_mean"]
    return f"{100 * c['updates_per_neuron_mean'] / dense:.1f} %" if dense else "—"


def _settings(exp, protocol):
    """The protocol's model and training settings in words: the task's, as the protocol
    and the settings all conditions share (e.g. the superimposed variant) override them."""
    cfg = default_config(exp.task)
    shared = [dict(c) for c in exp.conditions.values()]
    shared = {k: v for k, v in shared[0].items() if all(c.get(k) == v for c in shared)}
    cfg.update({k: v for k, v in {**protocol, **shared}.items() if k in cfg})
    clip = cfg["grad_clip"]
    lo, hi = cfg["tau_exp_range"]
    if any("tau_exp_range" in c for c in exp.conditions.values()) and "tau_exp_range" not in shared:
        tau = "tau per condition"
    else:
        tau = f"tau = {np.exp(lo):.4g} ms at init" if lo == hi else f"tau ~ exp(U({lo:g}, {hi:g}))"
    fresh = ("the events resampled every epoch" if not TASK_SPECS[exp.task].synthetic
             else "fresh data every epoch")
    words = ["r_on learned" if cfg["learn_r_on"] else "r_on fixed", tau,
             fresh if cfg["fresh_data"] else "the same data every epoch",
             "no gradient clipping" if clip is None else f"gate gradients clipped to ±{clip:g}",
             f"{cfg['readout']} read-out", f"input-gate bias {cfg['input_gate_bias']:g}",
             f"LSTM time input t x {cfg['time_scale']:g}" if cfg["time_input"]
             else "the baselines without a time input", cfg["dtype"]]
    if cfg.get("variant"):
        words.append({"paper": "the task as the paper's text defines it",
                      "authors": "the task as the authors' script draws it"}[cfg["variant"]])
    return ", ".join(words)


def _pm(mean, std, scale=1.0, digits=1):
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"


def results_markdown(results):
    """The results table of :func:`reproduce` as markdown (protocol, ours, the paper)."""
    p = results["protocol"]
    exp = EXPERIMENTS[results["experiment"]]
    if TASK_SPECS[exp.task].synthetic:
        sizes = f"{p['n_train']} training sequences, {p['n_val']} validation sequences"
    else:
        sizes = (f"the data set's 90/10 train/validation split (at most {p['n_train']} "
                 f"training and {p['n_val']} validation sequences)")
    lines = [f"# {results['title']}", "",
             f"Protocol: {p['epochs']} epochs x {sizes}, seeds {p['seeds']}, "
             f"batch {p.get('batch_size', 32)}, "
             f"Adam lr {p.get('lr')}, backend {results['backend']}"
             + (" (quick smoke protocol)" if results["quick"] else "") + "; "
             + _settings(exp, p) + ".", ""]
    conds = results["conditions"]
    paper = results["paper"]
    classification = any("final_val_accuracy_mean" in c for c in conds.values())
    if classification:
        lines += ["| condition | final val. accuracy (%) | best (%) | epoch 1 (%) | "
                  "updates/neuron (eval) | dense | share of dense | paper (%) | "
                  "training time/run (s) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        paper_std = results.get("paper_std", {})
        for name, c in conds.items():
            ref = paper.get(name)
            ref = ("—" if ref is None else f"{ref} ± {paper_std[name]}" if name in paper_std
                   else f"≈ {ref}")
            lines.append(
                f"| {name} | {_pm(c['final_val_accuracy_mean'], c['final_val_accuracy_std'], 100)} "
                f"| {_pm(c['best_val_accuracy_mean'], c['best_val_accuracy_std'], 100)} "
                f"| {_pm(c['epoch1_val_accuracy_mean'], c['epoch1_val_accuracy_std'], 100)} "
                f"| {c['updates_per_neuron_mean']:.1f} | {c['dense_updates_per_neuron_mean']:.1f} "
                f"| {_share(c)} | {ref} "
                f"| {c['seconds_mean']:.0f} |")
    else:
        lines += ["| condition | final val. MSE | best val. MSE | epoch-1 val. MSE | "
                  "updates/neuron (eval) | dense | training time/run (s) |",
                  "|---|---|---|---|---|---|---|"]
        for name, c in conds.items():
            lines.append(f"| {name} "
                         f"| {_pm(c['final_val_loss_mean'], c['final_val_loss_std'], 1, 4)} "
                         f"| {_pm(c['best_val_loss_mean'], c['best_val_loss_std'], 1, 4)} "
                         f"| {c['curve_val_loss_mean'][0]:.4f} "
                         f"| {c['updates_per_neuron_mean']:.1f} "
                         f"| {c['dense_updates_per_neuron_mean']:.1f} | {c['seconds_mean']:.0f} |")
    if any("test_mean" in c for c in conds.values()):
        rhos = list(next(c for c in conds.values() if "test_mean" in c)["test_mean"])
        lines += ["", "Test at several event rates rho (trained at rho = "
                  f"{p.get('rho', 1.0)}) on the validation split, the network after its "
                  "last epoch, mean over seeds:", "",
                  "| condition | " + " | ".join(f"acc. rho={r} (%)" for r in rhos)
                  + " | updates/neuron at rho=" + rhos[-1] + " | dense |",
                  "|---|" + "---|" * (len(rhos) + 2)]
        for name, c in conds.items():
            if "test_mean" not in c:  # none of its runs could be tested
                lines.append(f"| {name} (not tested) | " + " | ".join("—" for _ in rhos)
                             + " | — | — |")
                continue
            t, seeds = c["test_mean"], c.get("test_seeds")
            if seeds is not None and len(seeds) < len(c["runs"]):
                name = (f"{name} (seed{'s' if len(seeds) > 1 else ''} "
                        f"{', '.join(map(str, seeds))} of {len(c['runs'])})")
            lines.append(f"| {name} | " + " | ".join(f"{100 * t[r]['accuracy']:.1f}" for r in rhos)
                         + f" | {t[rhos[-1]]['updates_per_neuron']:.1f} | "
                         f"{t[rhos[-1]]['dense_updates_per_neuron']:.1f} |")
    if (paper and not classification) or any(k.endswith("updates_per_neuron") for k in paper):
        lines += ["", "Paper: " + ", ".join(f"{k} = {v}" for k, v in paper.items()) + "."]
    lines += ["", "Updates per neuron: neuron updates actually computed per neuron and per "
              "sequence at evaluation (alpha = 0, closed neurons skipped); 'dense' is the "
              "number of valid steps, what an LSTM computes."]
    hours = sum(r["seconds"] for c in conds.values() for r in c["runs"]) / 3600.0
    runs = sum(len(c["runs"]) for c in conds.values())
    lines += ["", f"Training time: {hours:.1f} h in all for the {runs} runs (the epochs' "
              "training, without data generation and validation)."]
    if results.get("not_run"):
        lines += ["", "Conditions not in this table: " + ", ".join(results["not_run"]) + "."]
    if results.get("checkpoints"):
        first = next(iter(results["checkpoints"].values()))["path"]
        lines += ["", "Checkpoints: `checkpoints/<condition>.npz`, each condition's median "
                  "seed (by final validation accuracy) after its last epoch, parameters only; "
                  f"`plstm-np evaluate {Path(results['folder']) / first}` evaluates one."]
    if results.get("command"):
        lines += ["", f"Command: `{results['command']}`"]
    return "\n".join(lines + [""])


def _seed_range(runs, key, n):
    """Per epoch, the smallest and largest of ``key`` over the runs that recorded all ``n``
    epochs of it; ``(None, None)`` with fewer than two such runs."""
    curves = [r[key] for r in runs if len(r.get(key) or []) == n]
    if len(curves) < 2:
        return None, None
    curves = np.array(curves, dtype=float)
    return curves.min(axis=0), curves.max(axis=0)


def _updates(runs, n):
    """The updates after each of ``n`` epochs as the first run that logged all of them
    counted them (``curve_updates``); None where none did (runs of before they were
    counted)."""
    for r in runs:
        if len(r.get("curve_updates") or []) == n:
            return np.array(r["curve_updates"])
    return None


def write_figures(results, folder):
    """The figures of a reproduction (PNG, matplotlib Agg); returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    conds = results["conditions"]
    paths = []
    classification = any("final_val_accuracy_mean" in c for c in conds.values())
    if results["experiment"] == "frequency":
        fig, ax = plt.subplots(figsize=(7.5, 3.5))
        samplings = ["standard", "high_res", "async"]
        models = [m for m in PAPER_MODELS if any(f"{m}-{s}" in conds for s in samplings)]
        width = 0.8 / max(len(models), 1)
        for k, model in enumerate(models):
            names = [f"{model}-{s}" for s in samplings]
            means = [100 * conds[n]["final_val_accuracy_mean"] if n in conds else np.nan
                     for n in names]
            stds = [100 * conds[n]["final_val_accuracy_std"] if n in conds else 0 for n in names]
            paper = [results["paper"].get(n, np.nan) for n in names]
            paper_std = [results.get("paper_std", {}).get(n, 0.0) for n in names]
            xs = np.arange(3) + (k - (len(models) - 1) / 2) * width
            ax.bar(xs, means, width, yerr=stds, label=MODEL_NAMES[model],
                   color=_COLOURS[model], capsize=3)
            ax.errorbar(xs, paper, yerr=paper_std, fmt="_", markersize=14, color="k",
                        elinewidth=0.8, capsize=2, zorder=3,
                        label="paper (mean ± std)" if k == 0 else None)
        ax.set_xticks(range(3), ["standard", "high resolution", "async"])
        ax.set_ylabel("validation accuracy (%)")
        ax.set_ylim(40, 100)
        ax.axhline(50, color="grey", lw=0.5, ls=":")
        ax.set_title("Frequency discrimination (cf. paper Fig. 3d)")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
        fig.tight_layout()
        paths.append(folder / "fig3d_bars.png")
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)
    # the training batches' accuracy against the update steps (the TensorFlow
    # reimplementation's sequential-MNIST curves), where every run recorded it
    batch_curves = classification and all("curve_train_accuracy_mean" in c
                                           for c in conds.values())
    # regression: the validation MSE (evaluation: leak 0) and the training loss (training
    # mode: the leak on), which can part ways when a network comes to rely on the leak
    panels = 1 + classification + batch_curves if classification else 2
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.5), squeeze=False)
    variants = list(dict.fromkeys(name.partition("-")[2] for name in conds))
    p = results["protocol"]
    steps_per_epoch = -(-p["n_train"] // p.get("batch_size", 32))
    if p.get("max_batches"):
        steps_per_epoch = min(steps_per_epoch, p["max_batches"])
    per_epoch = set()  # the updates per epoch of the curves drawn, for the axis label
    for name, c in conds.items():
        epochs = np.arange(1, len(c["curve_val_loss_mean"]) + 1)
        # one colour per variant (sampling, tau range), or per model where the conditions
        # are the models alone (Fig. 4a, Table 1); solid Phased LSTM, dashed LSTM, dotted
        # BN-LSTM
        model = name.partition("-")[0]
        colour = (_COLOURS.get(model, "k") if len(variants) == 1
                  else f"C{variants.index(name.partition('-')[2]) % 10}")
        style = dict(ls={"plstm": "-", "pgru": "-", "bnlstm": ":"}.get(model, "--"),
                     color=colour, marker="." if len(epochs) < 30 else None)
        panels_here = ([(axes[0, 0], epochs, "curve_val_accuracy", 100),
                        (axes[0, 1], epochs, "curve_val_loss", 1)] if classification
                       else [(axes[0, 0], epochs, "curve_val_loss", 1),
                             (axes[0, 1], epochs, "curve_train_loss", 1)])
        if batch_curves:
            # the updates the runs counted; for runs logged before they were, those the
            # protocol implies (exact where every epoch has n_train sequences; real data
            # sets may have fewer)
            steps = _updates(c.get("runs", []), len(epochs))
            if steps is None:
                steps = epochs * steps_per_epoch
            per_epoch.update(np.diff(steps, prepend=0).tolist())
            panels_here.append((axes[0, 2], steps, "curve_train_accuracy", 100))
        for ax, xs, key, scale in panels_here:
            ax.plot(xs, scale * np.array(c[key + "_mean"]), label=name, **style)
            low, high = _seed_range(c.get("runs", []), key, len(xs))
            if low is not None:  # the paper's Fig. 4 shades the range over seeds
                ax.fill_between(xs, scale * low, scale * high, color=style["color"],
                                alpha=0.15, linewidth=0)
    if classification:
        axes[0, 0].set_ylabel("validation accuracy (%)")
        axes[0, 1].set_ylabel("validation loss (cross-entropy)")
    else:
        axes[0, 0].set_ylabel("validation MSE (evaluation: leak 0)")
        axes[0, 1].set_ylabel("training MSE (training mode: leak on)")
        for ax in axes[0]:
            ax.set_yscale("log")
    for ax in axes[0]:
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8)
    references = results.get("reference_curves", {})
    val_refs = [(name, ref) for name, ref in references.items() if "val_accuracy" in ref]
    if classification and val_refs:  # published validation-accuracy curves, by epoch
        for name, ref in val_refs:
            axes[0, 0].plot(ref["epochs"], 100 * np.array(ref["val_accuracy"]),
                            color=_COLOURS.get(name.partition("-")[0], "k"), ls="none",
                            marker="o", ms=4, mfc="none", label=f"{name}: {ref['label']}")
        axes[0, 0].legend(fontsize=7)
    if batch_curves:
        batch_refs = [(name, ref) for name, ref in references.items() if "train_accuracy" in ref]
        for k, (name, ref) in enumerate(batch_refs):
            axes[0, 2].plot(ref["steps"], 100 * np.array(ref["train_accuracy"]), "k" + "ox"[k % 2],
                            ms=5, ls="none", label=f"{name}: {ref['label']}")
        axes[0, 2].legend(fontsize=7)
        axes[0, 2].set_xlabel(f"update steps ({per_epoch.pop()} per epoch)"
                              if len(per_epoch) == 1 else "update steps")
        axes[0, 2].set_ylabel("training-batch accuracy (%), epoch mean")
    seeds = results["protocol"]["seeds"]
    fig.suptitle(f"{results['title']}: mean over seeds {seeds}"
                 + (" (shaded: min to max)" if len(seeds) > 1 else ""))
    fig.tight_layout()
    names = {"frequency": "fig3_curves.png", "superimposed": "fig4a_curves.png",
             "adding": "fig4b_curves.png", "nmnist": "table1_curves.png"}
    paths.append(folder / names.get(results["experiment"], f"{results['experiment']}_curves.png"))
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    return paths
