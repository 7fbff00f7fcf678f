"""The training loop: mini-batches, Adam, validation per epoch, early stopping, checkpoints,
and a JSON log of every epoch.

The loop sits above :mod:`plstm_np.network` but imports neither it nor :mod:`plstm_np.io`: it
drives the network through its public methods (``loss_and_grads``, ``evaluate``, ``save``).
Checkpoints and the log are written atomically (:mod:`plstm_np.files`).
"""
from __future__ import annotations

import math
import time

import numpy as np
from tqdm import tqdm  # the text bar: tqdm.auto warns in notebooks without ipywidgets

from .files import refuse_existing, write_json_atomic
from .optim import clip_grad_norm
from .validation import as_rng

__all__ = ["train"]


def train(net, optimizer, train_data, val_data=None, *, epochs=1, batch_size=32, rng=None,
          max_grad_norm=None, patience=None, min_delta=0.0, checkpoint=None, log_path=None,
          progress=True, eval_batch_size=256, max_batches=None, overwrite=False, metadata=None):
    """Train ``net`` with ``optimizer`` and return the per-epoch history.

    Parameters
    ----------
    net : Network
    optimizer : Adam
        Bound to ``net``'s parameters.
    train_data : Dataset or callable
        The training set, or a callable ``epoch -> Dataset`` (epoch 1-based, e.g.
        :class:`plstm_np.experiments.FreshData`) returning each epoch's freshly drawn data;
        ``len(train_data)`` must give the sequences per epoch.
    val_data : Dataset, optional
        Evaluated after every epoch at alpha = 0.
    epochs : int
    batch_size : int
    rng : Generator, int or None
        Shuffles the training data every epoch.
    max_grad_norm : float, optional
        Clip the global gradient norm of the trainable parameters.
    patience : int, optional
        Stop when the validation loss has not improved for this many epochs.
    min_delta : float
        The smallest decrease of the validation loss that counts as an improvement.
    checkpoint : str, optional
        Path where the best network so far (lowest validation loss, or the last epoch without
        validation data) is saved together with the optimizer; replaced as training goes.
    log_path : str, optional
        JSON file rewritten after every epoch with the whole history.
    progress : bool
        Show a tqdm progress bar.
    eval_batch_size : int
    max_batches : int, optional
        Stop each epoch after this many batches (quick runs and tests).
    overwrite : bool
        Allow ``checkpoint`` and ``log_path`` to replace files that exist before training
        starts (by default that raises FileExistsError, so no earlier run is lost).
    metadata : dict, optional
        JSON-serialisable information saved in every checkpoint's metadata (e.g. the run's
        configuration), next to the epoch's record.

    Returns
    -------
    list of dict
        One record per epoch: ``epoch``, ``train_loss``, ``seconds``, and ``val_loss``,
        ``val_accuracy``, ``val_updates_per_neuron`` when ``val_data`` is given.

    Raises
    ------
    FloatingPointError
        If a loss becomes NaN or infinite (never train on silently).
    """
    for path in (checkpoint, log_path):
        if path is not None:
            refuse_existing(path, overwrite)
    rng = as_rng(rng)
    history, best, stale = [], math.inf, 0
    n_batches = math.ceil(len(train_data) / batch_size)
    if max_batches is not None:
        n_batches = min(n_batches, max_batches)
    for epoch in range(1, epochs + 1):
        data = train_data(epoch) if callable(train_data) else train_data
        start, losses = time.perf_counter(), []
        bar = tqdm(total=n_batches, desc=f"epoch {epoch}/{epochs}", disable=not progress,
                   leave=False)
        for i, batch in enumerate(data.batches(batch_size, rng=rng)):
            if i == n_batches:
                break
            loss, grads = net.loss_and_grads(batch, training=True)
            if not np.isfinite(loss):
                raise FloatingPointError(f"loss is {loss} at epoch {epoch}, batch {i}")
            if max_grad_norm is not None:
                grads, _ = clip_grad_norm(grads, max_grad_norm, names=optimizer.trainable)
            optimizer.step(grads)
            losses.append(loss)
            bar.update()
            bar.set_postfix(loss=f"{np.mean(losses):.4f}")
        bar.close()
        record = {"epoch": epoch, "train_loss": float(np.mean(losses)),
                  "seconds": time.perf_counter() - start}
        if val_data is not None:
            metrics = net.evaluate(val_data, batch_size=eval_batch_size)
            record.update({f"val_{k}": v for k, v in metrics.items()})
        history.append(record)
        if progress:
            shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in record.items()
                     if not isinstance(v, list)}
            tqdm.write(" ".join(f"{k}={v}" for k, v in shown.items()))
        score = record.get("val_loss", record["train_loss"])
        improved = score < best - min_delta
        if improved:
            best, stale = score, 0
            if checkpoint is not None:
                net.save(checkpoint, optimizer=optimizer, overwrite=True,
                         metadata={**(metadata or {}), "epoch": epoch, **record})
        else:
            stale += 1
        if log_path is not None:
            write_json_atomic(log_path, history)
        if patience is not None and stale >= patience:
            break
    return history
