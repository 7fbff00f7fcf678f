"""How much the adding-task networks rely on the closed-phase leak (results/README, 1d).

For every finished run under ``runs/`` (its ``last.npz``, the network after the last
epoch), the validation MSE on the run's own validation sequences with the leak alpha of
the time gate at 0 (evaluation, what the tables report), at 1e-4 and at 1e-3 (training).
Writes ``leak.json`` beside this script. Run from the repository root:

    python results/adding/leak.py
"""

import json
from pathlib import Path

import numpy as np

import plstm_np as pl
from plstm_np.experiments.runs import make_val_data

HERE = Path(__file__).resolve().parent
LEAKS = (0.0, 1e-4, 1e-3)


def val_mse(net, val, leak, batch_size=250):
    """Mean squared error over ``val`` with every time gate's leak set to ``leak``."""
    layers = [layer for layer in net.layers if hasattr(layer, "leak")]
    kept = [layer.leak for layer in layers]
    try:
        for layer in layers:
            layer.leak = leak
        total = 0.0
        for start in range(0, len(val.lengths), batch_size):
            batch = val[start:start + batch_size]
            loss, _ = net.loss_and_grads(batch, training=True, need_grads=False)
            total += loss * len(batch.lengths)
        return total / len(val.lengths)
    finally:
        for layer, value in zip(layers, kept):
            layer.leak = value


def main():
    table = {}
    for last in sorted(HERE.glob("runs/*/seed*/last.npz")):
        run = last.parent
        cfg = json.loads((run / "config.json").read_text())
        log = json.loads((run / "log.json").read_text())
        if len(log) < cfg["epochs"]:
            continue  # still training
        logged = log[-1]["val_loss"]
        net = pl.load(last)
        val = make_val_data(cfg)
        losses = {f"{leak:g}": val_mse(net, val, leak) for leak in LEAKS}
        # leak 0 in training mode is the evaluation the run logged
        assert np.isclose(losses["0"], logged, rtol=1e-4), (run, losses["0"], logged)
        table[f"{run.parent.name}/{run.name}"] = losses
        print(run.parent.name, run.name, {k: round(v, 4) for k, v in losses.items()})
    (HERE / "leak.json").write_text(json.dumps(table, indent=1) + "\n")


if __name__ == "__main__":
    main()
