"""Save and load networks (weights, hyper-parameters, optimizer state) as ``.npz`` + JSON.

The file is an ordinary NumPy ``.npz`` archive, readable without plstm_np and without
pickle: ``param/<name>`` arrays, ``adam_m/<name>`` and ``adam_v/<name>`` moments when an
optimizer was saved, and ``__meta__``, UTF-8 JSON bytes describing the architecture, every
array's shape and dtype, the optimizer's hyper-parameters and the user's metadata.

Saving writes a temporary file next to the target and renames it, so a crash never leaves a
half-written checkpoint, and an existing file is only replaced with ``overwrite=True``.
"""
from __future__ import annotations

import json
import os
import tempfile
import zipfile

import numpy as np

from .layers import LSTM, PhasedLSTM
from .network import Dense, Embedding, Network
from .optim import Adam

__all__ = ["save", "load", "load_checkpoint", "FORMAT", "FORMAT_VERSION"]

FORMAT = "plstm_np.network"
FORMAT_VERSION = 1
_KINDS = {"PhasedLSTM": PhasedLSTM, "LSTM": LSTM, "Dense": Dense, "Embedding": Embedding}


def save(path, net, *, optimizer=None, metadata=None, overwrite=False):
    """Save a network (and optionally its optimizer state) to ``path``.

    Parameters
    ----------
    path : str or os.PathLike
        The file is written exactly there (no suffix is added).
    net : Network
    optimizer : Adam, optional
        Its moments, step count and hyper-parameters are saved too.
    metadata : dict, optional
        JSON-serialisable information (epoch, accuracy, command line...).
    overwrite : bool
        Replace an existing file; by default an existing file raises FileExistsError.
    """
    path = os.fspath(path)
    if not isinstance(net, Network):
        raise TypeError(f"net must be a Network, got {type(net).__name__}")
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    params = net.params
    arrays = {f"param/{name}": value for name, value in params.items()}
    meta = {
        "format": FORMAT, "version": FORMAT_VERSION, "network": net.config(),
        "arrays": {name: {"shape": list(v.shape), "dtype": v.dtype.name} for name, v in params.items()},
        "optimizer": None, "metadata": metadata or {},
    }
    if optimizer is not None:
        state = optimizer.state_dict()
        if set(state["m"]) != set(params):
            raise ValueError("optimizer does not hold this network's parameters")
        for name in params:
            arrays[f"adam_m/{name}"], arrays[f"adam_v/{name}"] = state["m"][name], state["v"][name]
        meta["optimizer"] = {k: state[k] for k in ("lr", "beta1", "beta2", "eps", "step_count")}
        meta["optimizer"].update(kind="Adam", frozen=sorted(optimizer.frozen),
                                 bounds={k: list(v) for k, v in optimizer.bounds.items()})
    try:
        meta_bytes = json.dumps(meta, allow_nan=True).encode("utf-8")
    except TypeError as err:
        raise TypeError(f"metadata must be JSON-serialisable: {err}") from err
    arrays["__meta__"] = np.frombuffer(meta_bytes, dtype=np.uint8)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".plstm_np-", suffix=".npz.tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _read(path):
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as err:
        raise ValueError(f"{path} is not a readable plstm_np checkpoint (truncated or "
                         f"corrupt?): {err}") from err
    if "__meta__" not in arrays:
        raise ValueError(f"{path} has no __meta__ entry: not a plstm_np checkpoint")
    try:
        meta = json.loads(arrays.pop("__meta__").tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: unreadable metadata: {err}") from err
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: format {meta.get('format')!r} is not {FORMAT!r}")
    if meta.get("version") != FORMAT_VERSION:
        raise ValueError(f"{path}: format version {meta.get('version')} is not supported "
                         f"(this plstm_np reads version {FORMAT_VERSION})")
    return path, meta, arrays


def _build(cfg):
    cfg = dict(cfg)
    kind = cfg.pop("kind")
    if kind not in _KINDS:
        raise ValueError(f"unknown component kind {kind!r}")
    cls = _KINDS[kind]
    dims = [cfg.pop(k) for k in (("input_size", "hidden_size") if kind in ("PhasedLSTM", "LSTM")
                                 else ("input_size", "output_size") if kind == "Dense"
                                 else ("num_embeddings", "dim"))]
    if "tau_exp_range" in cfg:
        cfg["tau_exp_range"] = tuple(cfg["tau_exp_range"])
    return cls(*dims, **cfg, rng=0)


def load_checkpoint(path):
    """Load a network, its optimizer (if one was saved) and the saved metadata.

    Returns
    -------
    net : Network
    optimizer : Adam or None
        Bound to ``net``'s parameters, with the saved moments and step count.
    metadata : dict

    Raises
    ------
    ValueError
        If the file is truncated, corrupt, of another format, or its arrays do not match
        the architecture it describes.
    """
    path, meta, arrays = _read(path)
    try:
        cfg = meta["network"]
        net = Network([_build(c) for c in cfg["layers"]], _build(cfg["readout"]),
                      embedding=None if cfg["embedding"] is None else _build(cfg["embedding"]),
                      readout_at=cfg["readout_at"], loss=cfg["loss"])
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: the saved architecture cannot be rebuilt: {err!r}") from err
    params = net.params
    expected = {f"param/{name}" for name in params}
    if meta["optimizer"] is not None:
        expected |= {f"{k}/{name}" for k in ("adam_m", "adam_v") for name in params}
    if set(arrays) != expected:
        missing, extra = sorted(expected - set(arrays)), sorted(set(arrays) - expected)
        raise ValueError(f"{path}: arrays do not match the architecture (missing {missing}, "
                         f"unexpected {extra})")
    for key, value in arrays.items():
        name = key.split("/", 1)[1]
        if value.shape != params[name].shape or value.dtype != params[name].dtype:
            raise ValueError(f"{path}: {key} has shape {value.shape} and dtype {value.dtype}, "
                             f"the architecture needs {params[name].shape} {params[name].dtype}")
    for name, p in params.items():
        p[...] = arrays[f"param/{name}"]
    optimizer = None
    if meta["optimizer"] is not None:
        o = meta["optimizer"]
        optimizer = Adam(net, frozen=o["frozen"], bounds={k: tuple(v) for k, v in o["bounds"].items()})
        optimizer.load_state_dict(dict(
            o, m={n: arrays[f"adam_m/{n}"] for n in params}, v={n: arrays[f"adam_v/{n}"] for n in params}))
    return net, optimizer, meta["metadata"]


def load(path):
    """Load a network saved with :func:`save` (see :func:`load_checkpoint` for the rest)."""
    return load_checkpoint(path)[0]
