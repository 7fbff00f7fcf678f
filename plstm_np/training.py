"""The training loop: mini-batches, Adam, validation per epoch, early stopping, checkpoints,
a JSON log of every epoch, and a resume state that makes an interrupted run continue bitwise.

The loop sits above :mod:`plstm_np.network`: it drives the network through its public methods
(``loss_and_grads``, ``evaluate``, ``save``) and reads a resume state back with
:func:`plstm_np.load_checkpoint` (:mod:`plstm_np.io`, of its own layer). Checkpoints, the log
and the resume state are written atomically (:mod:`plstm_np.files`).

Resuming. With ``state_path``, the end of every epoch saves, after the best-model checkpoint
and the log, everything the next epoch depends on: the parameters, Adam's moments and step
count, the state of the batch-shuffling generator, the epoch, the history and the early
stopping's ``best``/``stale``. ``resume=True`` restores it, so that the run continues with the
next epoch and gives bitwise the history (wall-clock ``seconds`` aside), parameters and
checkpoints of an uninterrupted run, provided the arithmetic is the same: the same backend
and, with Numba, the same number of threads (the parallel kernels split the batch into one
chunk per thread and sum the chunks' gradients in a fixed order, which is deterministic for
a given thread count but rounds differently for another).
"""
from __future__ import annotations

import math
import numbers
import os
import time

import numpy as np
from tqdm import tqdm  # the text bar: tqdm.auto warns in notebooks without ipywidgets

from .files import refuse_existing, write_json_atomic
from .io import load_checkpoint
from .optim import clip_grad_norm
from .validation import as_rng, check_positive_int

__all__ = ["train"]

#: The loop settings a resume state must have been written with (other values would make
#: the continued run another run).
_LOOP_SETTINGS = ("batch_size", "max_batches", "max_grad_norm", "min_delta", "patience",
                  "eval_batch_size")


def train(net, optimizer, train_data, val_data=None, *, epochs=1, batch_size=32, rng=None,
          max_grad_norm=None, patience=None, min_delta=0.0, checkpoint=None, log_path=None,
          progress=True, eval_batch_size=256, max_batches=None, overwrite=False, metadata=None,
          state_path=None, resume=False, callback=None):
    """Train ``net`` with ``optimizer`` and return the per-epoch history.

    Parameters
    ----------
    net : Network
    optimizer : Adam
        Bound to ``net``'s parameters.
    train_data : Dataset or callable
        The training set used every epoch, or a callable ``epoch -> Dataset`` (epoch
        1-based) returning each epoch's freshly drawn training data (e.g.
        :class:`plstm_np.experiments.FreshData`, which draws epoch ``e`` from the seed and
        ``e``, so that a resumed run sees the data an uninterrupted one would).
    val_data : Dataset, optional
        Evaluated after every epoch at alpha = 0.
    epochs : int
        The last epoch to train (a resumed run trains the epochs after its state's).
    batch_size : int
    rng : Generator, int or None
        Shuffles the training data every epoch (its state is part of the resume state).
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
        Allow ``checkpoint``, ``log_path`` and ``state_path`` to replace files that exist
        before training starts (by default that raises FileExistsError, so no earlier run is
        lost). A run resumed from ``state_path`` replaces its own files.
    metadata : dict, optional
        JSON-serialisable information saved in every checkpoint's metadata (e.g. the run's
        configuration), next to the epoch's record.
    state_path : str, optional
        Path of the resume state, saved at the end of every epoch (a checkpoint in the format
        of :meth:`plstm_np.Network.save`: the network after that epoch, its optimizer, and
        under ``metadata["resume"]`` the epoch, history, ``best``, ``stale``, the generator's
        state and the loop settings).
    resume : bool
        Continue from ``state_path`` if it exists: restore ``net``'s parameters, the
        optimizer and ``rng`` from it and train the epochs after its epoch (none if it is
        ``epochs`` or early stopping had stopped the run); without the file, start afresh.
    callback : callable, optional
        ``callback(epoch, record)`` after every epoch, once its files are written; an
        exception it raises stops training, and the run can be resumed from that epoch.

    Returns
    -------
    list of dict
        One record per epoch (the restored epochs included): ``epoch``, ``train_loss``,
        ``seconds``, ``train_batches`` (the epoch's updates), ``train_accuracy``
        (classification: the share of the epoch's training targets classified correctly,
        each batch in training mode before its update), and
        ``val_loss``, ``val_accuracy``, ``val_updates_per_neuron`` when ``val_data`` is
        given.

    Raises
    ------
    FloatingPointError
        If a loss becomes NaN or infinite (never train on silently).
    ValueError
        If ``resume`` is asked without ``state_path``, or the state does not fit ``net``,
        ``optimizer``, ``rng`` or the loop settings (the first difference is named).
    TypeError
        If ``train_data`` is neither a Dataset nor a callable returning one.
    """
    if not (callable(train_data) or hasattr(train_data, "batches")):
        raise TypeError(f"train_data must be a Dataset or a callable epoch -> Dataset, got "
                        f"{type(train_data).__name__}")
    if resume and state_path is None:
        raise ValueError("resume=True needs state_path (the file the resume state is in)")
    _check_loop_settings(epochs, batch_size, max_batches, patience, min_delta, eval_batch_size,
                         max_grad_norm)
    optimizer.check_bound_to(net.params)
    rng = as_rng(rng)
    loop = dict(batch_size=batch_size, max_batches=max_batches, max_grad_norm=max_grad_norm,
                min_delta=min_delta, patience=patience, eval_batch_size=eval_batch_size)
    history, best, stale = [], math.inf, 0
    if resume and os.path.exists(state_path):
        history, best, stale = _restore(state_path, net, optimizer, rng, loop, epochs)
    else:
        for path in (checkpoint, log_path, state_path):
            if path is not None:
                refuse_existing(path, overwrite)
    first = len(history) + 1
    if patience is not None and stale >= patience:
        first = epochs + 1  # early stopping had ended the run
    for epoch in range(first, epochs + 1):
        data = train_data(epoch) if callable(train_data) else train_data
        if not hasattr(data, "batches"):
            raise TypeError(f"train_data({epoch}) must return a Dataset, got "
                            f"{type(data).__name__}")
        n_batches = math.ceil(len(data) / batch_size)
        if max_batches is not None:
            n_batches = min(n_batches, max_batches)
        start, losses, correct, targets = time.perf_counter(), [], 0, 0
        bar = tqdm(total=n_batches, desc=f"epoch {epoch}/{epochs}", disable=not progress,
                   leave=False)
        for i, batch in enumerate(data.batches(batch_size, rng=rng)):
            if i == n_batches:
                break
            loss, grads, hits = net.loss_and_grads(batch, training=True, with_hits=True)
            if hits is not None:
                correct, targets = correct + hits[0], targets + hits[1]
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
                  "seconds": time.perf_counter() - start, "train_batches": len(losses)}
        if targets:  # the training batches' accuracy, each before its update (leak on)
            record["train_accuracy"] = correct / targets
        if val_data is not None:
            metrics = net.evaluate(val_data, batch_size=eval_batch_size)
            if not np.isfinite(metrics["loss"]):
                raise FloatingPointError(f"validation loss is {metrics['loss']} after epoch "
                                         f"{epoch}: the network diverged")
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
        if state_path is not None:  # last: a state's epoch has all its other files written
            state = dict(epoch=epoch, history=history, best=None if best == math.inf else best,
                         stale=stale, rng=_jsonable(rng.bit_generator.state), loop=loop)
            net.save(state_path, optimizer=optimizer, overwrite=True,
                     metadata={**(metadata or {}), "epoch": epoch, **record, "resume": state})
        if callback is not None:
            callback(epoch, record)
        if patience is not None and stale >= patience:
            break
    return history


def _check_loop_settings(epochs, batch_size, max_batches, patience, min_delta,
                         eval_batch_size, max_grad_norm):
    """Raise naming the first loop setting out of its domain (before anything runs)."""
    for name, value, optional in (("epochs", epochs, False), ("batch_size", batch_size, False),
                                  ("eval_batch_size", eval_batch_size, False),
                                  ("max_batches", max_batches, True),
                                  ("patience", patience, True)):
        if optional and value is None:
            continue
        check_positive_int(value, name)
    for name, value in (("min_delta", min_delta), ("max_grad_norm", max_grad_norm)):
        if value is None and name == "max_grad_norm":
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{name} must be a number, got {type(value).__name__}")
        if not (math.isfinite(value) and (value >= 0 if name == "min_delta" else value > 0)):
            raise ValueError(f"{name} must be a finite number "
                             f"{'>= 0' if name == 'min_delta' else '> 0'}, got {value!r}")


def _restore(path, net, optimizer, rng, loop, epochs):
    """Load the resume state at ``path`` into ``net``, ``optimizer`` and ``rng`` (in place);
    return ``(history, best, stale)``. ValueError names the first thing that does not fit."""
    saved, saved_opt, meta = load_checkpoint(path)
    state = meta.get("resume")
    if state is None:
        raise ValueError(f"{path} holds no resume state (metadata['resume']): it is not a "
                         f"file written by train(..., state_path=...)")
    for key in _LOOP_SETTINGS:
        if state["loop"].get(key) != loop[key]:
            raise ValueError(f"{path} was written with {key}={state['loop'].get(key)!r}, this "
                             f"call has {key}={loop[key]!r}: resuming would make another run")
    if state["epoch"] > epochs:
        raise ValueError(f"{path} holds epoch {state['epoch']}, beyond epochs={epochs}")
    params, saved_params = net.params, saved.params
    if {k: (v.shape, v.dtype) for k, v in params.items()} != \
            {k: (v.shape, v.dtype) for k, v in saved_params.items()}:
        raise ValueError(f"{path} holds another architecture (parameter names, shapes or "
                         f"dtypes differ from net's)")
    if saved_opt is None:
        raise ValueError(f"{path} holds no optimizer state")
    for key in ("lr", "beta1", "beta2", "eps"):
        if getattr(saved_opt, key) != getattr(optimizer, key):
            raise ValueError(f"{path} was written with the optimizer's {key}="
                             f"{getattr(saved_opt, key)!r}, this optimizer has "
                             f"{getattr(optimizer, key)!r}")
    if saved_opt.frozen != optimizer.frozen:
        raise ValueError(f"{path} froze {sorted(saved_opt.frozen)}, this optimizer freezes "
                         f"{sorted(optimizer.frozen)}")
    kind = state["rng"].get("bit_generator")
    if kind != type(rng.bit_generator).__name__:
        raise ValueError(f"{path} holds the state of a {kind} generator, rng is a "
                         f"{type(rng.bit_generator).__name__}")
    for name, p in params.items():
        p[...] = saved_params[name]
    optimizer.load_state_dict(saved_opt.state_dict())
    rng.bit_generator.state = state["rng"]
    best = math.inf if state["best"] is None else float(state["best"])
    return list(state["history"]), best, int(state["stale"])


def _jsonable(state):
    """A bit generator's state for JSON (arrays as lists; PCG64's 128-bit ints stay ints)."""
    if isinstance(state, dict):
        return {k: _jsonable(v) for k, v in state.items()}
    if isinstance(state, np.ndarray):
        return state.tolist()
    if isinstance(state, np.integer):
        return int(state)
    return state
