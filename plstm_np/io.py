"""Save and load networks (weights, hyper-parameters, optimizer state) as ``.npz`` + JSON.

The file is an ordinary NumPy ``.npz`` archive, readable without plstm_np and without
pickle: ``param/<name>`` arrays, ``adam_m/<name>`` and ``adam_v/<name>`` moments when an
optimizer was saved, and ``__meta__``, UTF-8 JSON bytes describing the architecture, every
array's shape and dtype, the optimizer's hyper-parameters and the user's metadata.

Saving writes a temporary file next to the target and renames it
(:func:`plstm_np.files.atomic_write`), so a crash never leaves a half-written checkpoint, and
an existing file is only replaced with ``overwrite=True``.

This module sits above :mod:`plstm_np.network`: loading rebuilds a
:class:`~plstm_np.Network`, so it imports the network's classes. The writer is
:meth:`plstm_np.Network.save` (the network cannot import this module back without a cycle);
:func:`save` checks its argument and calls it, and :data:`FORMAT` and :data:`FORMAT_VERSION`
are the network module's :data:`~plstm_np.network.CHECKPOINT_FORMAT` and
:data:`~plstm_np.network.CHECKPOINT_VERSION`.
"""
from __future__ import annotations

import json
import os
import zipfile

import numpy as np

from .batchnorm import BatchNorm
from .bidirectional import Bidirectional
from .gru import GRU, PhasedGRU
from .layers import LSTM, PhasedLSTM
from .network import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, Dense, Embedding, Network
from .optim import Adam
from .time_feature import TimeFeature

__all__ = ["save", "load", "load_checkpoint", "FORMAT", "FORMAT_VERSION"]

FORMAT = CHECKPOINT_FORMAT
FORMAT_VERSION = CHECKPOINT_VERSION
_KINDS = {"PhasedLSTM": PhasedLSTM, "LSTM": LSTM, "PhasedGRU": PhasedGRU, "GRU": GRU,
          "BatchNorm": BatchNorm, "TimeFeature": TimeFeature, "Bidirectional": Bidirectional,
          "Dense": Dense, "Embedding": Embedding}
#: The kinds built with a seed (their parameters are overwritten by the saved ones).
_SEEDED = {"PhasedLSTM", "LSTM", "PhasedGRU", "GRU", "Dense", "Embedding"}
#: The entries every checkpoint's metadata holds, and their JSON types.
_META_KEYS = {"network": (dict,), "optimizer": (dict, type(None)), "metadata": (object,)}


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

    Notes
    -----
    The same as ``net.save(path, optimizer=..., metadata=..., overwrite=...)``
    (:meth:`plstm_np.Network.save`, which writes the file).
    """
    path = os.fspath(path)
    if not isinstance(net, Network):
        raise TypeError(f"net must be a Network, got {type(net).__name__}")
    net.save(path, optimizer=optimizer, metadata=metadata, overwrite=overwrite)


def _read(path):
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):  # a plain .npy array
            raise ValueError(f"{path} holds a single array (.npy), not a .npz checkpoint")
        with loaded as archive:
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
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: the metadata (__meta__) is a JSON {type(meta).__name__}, "
                         f"not an object: not a plstm_np checkpoint")
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: format {meta.get('format')!r} is not {FORMAT!r}")
    if meta.get("version") != FORMAT_VERSION:
        raise ValueError(f"{path}: format version {meta.get('version')} is not supported "
                         f"(this plstm_np reads version {FORMAT_VERSION})")
    missing = [k for k in _META_KEYS if k not in meta]
    if missing:
        raise ValueError(f"{path}: the metadata (__meta__) lacks {missing}: damaged or not "
                         f"written by plstm_np")
    for key, types in _META_KEYS.items():
        if not isinstance(meta[key], types):
            raise ValueError(f"{path}: the metadata's {key!r} is a JSON "
                             f"{type(meta[key]).__name__}, expected an object"
                             + (" or null" if type(None) in types else ""))
    return path, meta, arrays


def _check_loaded(path, net, arrays):
    """Raise ValueError naming ``path`` and the first array that is not finite, or the
    first layer parameter outside its domain (tau > 0, 0 < r_on <= 1)."""
    for key, value in arrays.items():
        if value.dtype.kind in "fc" and not np.isfinite(value).all():
            idx = tuple(int(i) for i in np.argwhere(~np.isfinite(value))[0])
            raise ValueError(f"{path}: {key} has a non-finite value {value[idx]} at index "
                             f"{idx}")
    for i, layer in enumerate(net.layers):  # each layer's own checks (domains, shapes)
        layer.check_params(where=f"{path}: layer {i}: ")


def _build(cfg):
    cfg = dict(cfg)
    kind = cfg.pop("kind")
    if kind not in _KINDS:
        raise ValueError(f"unknown component kind {kind!r}")
    cls = _KINDS[kind]
    if kind == "Bidirectional":  # its halves are layers of their own
        return cls.from_config(dict(cfg, kind=kind), _build)
    if "tau_exp_range" in cfg:
        cfg["tau_exp_range"] = tuple(cfg["tau_exp_range"])
    if kind in _SEEDED:
        cfg["rng"] = 0
    return cls(**cfg)


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
    FileNotFoundError
        No file at ``path``.
    ValueError
        Naming the file and what is wrong: it is truncated, corrupt, a plain ``.npy``, of
        another format, its metadata lacks an entry, its arrays do not match the
        architecture it describes, hold a non-finite value, or a layer's tau is not > 0 or
        its r_on not in (0, 1].
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
    _check_loaded(path, net, arrays)
    optimizer = None
    if meta["optimizer"] is not None:
        o = meta["optimizer"]
        try:
            optimizer = Adam(net, frozen=o["frozen"],
                             bounds={k: tuple(v) for k, v in o["bounds"].items()})
            optimizer.load_state_dict(dict(
                o, m={n: arrays[f"adam_m/{n}"] for n in params},
                v={n: arrays[f"adam_v/{n}"] for n in params}))
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ValueError(f"{path}: the saved optimizer state cannot be restored: "
                             f"{err!r}") from err
    return net, optimizer, meta["metadata"]


def load(path):
    """Load a network saved with :func:`save` (see :func:`load_checkpoint` for the rest)."""
    return load_checkpoint(path)[0]
