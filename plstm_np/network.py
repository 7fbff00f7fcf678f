"""A network: an optional embedding, stacked recurrent layers and a dense read-out.

Every layer receives the same timestamps (the paper's Fig. 2a). The read-out sees the top
layer's hidden state either at each sequence's last valid step (classification of a whole
sequence) or at every step. Parameters are exposed as one flat dict whose keys are
``"layer{i}.<name>"``, ``"readout.W"``, ``"readout.b"`` and ``"embedding.E"``; its arrays are
the components' own, so an optimizer updating them in place updates the network.

Where this module sits: it imports the layers, :mod:`plstm_np.streaming` (for
:meth:`Network.stream`) and :mod:`plstm_np.files`, and none of them imports it back
(:class:`~plstm_np.Stream` only relies on a network's public attributes). :meth:`Network.save`
writes the checkpoint archive itself, so that this module never imports
:mod:`plstm_np.io`, which sits above it: ``io`` describes the format, reads it back
(:func:`plstm_np.load_checkpoint` needs this module's classes) and its :func:`plstm_np.save`
calls :meth:`Network.save`. The format's name and version, :data:`CHECKPOINT_FORMAT` and
:data:`CHECKPOINT_VERSION`, are defined here, next to the writer, and ``io`` re-exports them.
"""
from __future__ import annotations

import json
import os

import numpy as np

from .backends import check_backend
from .files import atomic_write, refuse_existing
from .losses import LOSSES
from .streaming import Stream
from .validation import (
    as_rng,
    check_array,
    check_dtype,
    check_finite,
    check_layer_state,
    check_lengths,
    check_parameter,
    check_positive_int,
    check_sequence_inputs,
    check_times,
    check_timestamps,
    valid_steps,
)

__all__ = ["Dense", "Embedding", "Network", "CHECKPOINT_FORMAT", "CHECKPOINT_VERSION"]

#: ``"format"`` entry of a checkpoint's metadata (see :mod:`plstm_np.io`).
#: What :class:`Network` needs of every entry of ``layers`` (see :mod:`plstm_np.layers`):
#: sizes, dtype, parameters, the names and widths of the carried state, a parameter check,
#: the forward on validated inputs and the backward.
LAYER_PROTOCOL = ("input_size", "output_size", "hidden_size", "dtype", "params", "frozen",
                  "bounds", "state_names", "state_sizes", "check_params", "forward_validated",
                  "backward", "config", "streamable")

CHECKPOINT_FORMAT = "plstm_np.network"
#: ``"version"`` entry of a checkpoint's metadata: the layout :meth:`Network.save` writes.
CHECKPOINT_VERSION = 1


class Dense:
    """A fully connected read-out ``y = act(h W + b)``.

    Parameters
    ----------
    input_size, output_size : int
    init_std : float
        Standard deviation of the normal init of ``W`` (``init='normal'``; ``b`` starts at 0).
    activation : {None, 'leaky_relu'}
        None: linear (``y = h W + b``). ``'leaky_relu'``: ``y = max(a, leakiness * a)`` with
        ``a = h W + b``, the read-out of the authors' code (Lasagne's ``leaky_rectify``)
        before the softmax.
    leakiness : float
        Slope of the leaky ReLU for ``a < 0`` (Lasagne's default 0.01), in [0, 1).
    init : {'normal', 'glorot_uniform'}
        ``W ~ N(0, init_std)``, or Lasagne's default ``GlorotUniform``:
        ``U(-a, a)`` with ``a = sqrt(6 / (input_size + output_size))``.
    dtype : float32 or float64
    rng : Generator, int or None

    Attributes
    ----------
    params : dict
        ``W`` (input_size, output_size), ``b`` (output_size,).
    """

    def __init__(self, input_size, output_size, *, init_std=0.1, activation=None,
                 leakiness=0.01, init="normal", dtype=np.float64, rng=None):
        self.input_size = check_positive_int(input_size, "input_size")
        self.output_size = check_positive_int(output_size, "output_size")
        self.dtype = check_dtype(dtype)
        self.init_std = float(init_std)
        if activation not in (None, "leaky_relu"):
            raise ValueError(f"activation must be None or 'leaky_relu', got {activation!r}")
        if not (isinstance(leakiness, (int, float)) and 0.0 <= leakiness < 1.0):
            raise ValueError(f"leakiness must be a number in [0, 1), got {leakiness!r}")
        if init not in ("normal", "glorot_uniform"):
            raise ValueError(f"init must be 'normal' or 'glorot_uniform', got {init!r}")
        self.activation, self.leakiness, self.init = activation, float(leakiness), init
        rng = as_rng(rng)
        shape = (input_size, output_size)
        if init == "normal":
            W = rng.normal(0.0, init_std, shape)
        else:
            bound = np.sqrt(6.0 / (input_size + output_size))
            W = rng.uniform(-bound, bound, shape)
        self.params = {"W": W.astype(self.dtype), "b": np.zeros(output_size, self.dtype)}

    def forward(self, h):
        """``act(h @ W + b)`` over the last axis of ``h``."""
        return self.activate(h @ self.params["W"] + self.params["b"])

    def activate(self, a):
        """The activation applied to pre-activations ``a = h W + b`` (``a`` itself when
        linear; streams compute ``a`` in their kernel and call this)."""
        if self.activation is None:
            return a
        return np.where(a > 0, a, a * a.dtype.type(self.leakiness))

    def backward(self, dy, h):
        """Gradients ``(grads of W and b, dh)`` given ``dy`` and the forward input ``h``."""
        W = self.params["W"]
        if self.activation is not None:  # recompute a = h W + b: cheaper than caching it
            a = h @ W + self.params["b"]
            dy = np.where(a > 0, dy, dy * self.dtype.type(self.leakiness))
        h2, dy2 = h.reshape(-1, W.shape[0]), dy.reshape(-1, W.shape[1])
        return {"W": h2.T @ dy2, "b": dy2.sum(0)}, dy @ W.T

    def config(self):
        """Hyper-parameters as a JSON-serialisable dict."""
        return dict(kind="Dense", input_size=self.input_size, output_size=self.output_size,
                    init_std=self.init_std, activation=self.activation,
                    leakiness=self.leakiness, init=self.init, dtype=self.dtype.name)


class Embedding:
    """A learned embedding of discrete event addresses (e.g. N-MNIST pixel addresses).

    Parameters
    ----------
    num_embeddings : int
        Number of distinct addresses (tokens lie in [0, num_embeddings)).
    dim : int
        Embedding size (the paper: 40 for N-MNIST).
    init_std, dtype, rng
        As for :class:`Dense`.

    Attributes
    ----------
    params : dict
        ``E`` (num_embeddings, dim).
    """

    def __init__(self, num_embeddings, dim, *, init_std=0.1, dtype=np.float64, rng=None):
        self.num_embeddings = check_positive_int(num_embeddings, "num_embeddings")
        self.dim = check_positive_int(dim, "dim")
        self.dtype = check_dtype(dtype)
        self.init_std = float(init_std)
        self.params = {"E": as_rng(rng).normal(0.0, init_std,
                                               (num_embeddings, dim)).astype(self.dtype)}

    def forward(self, tokens):
        """Rows of ``E`` for each token: (..., dim)."""
        return self.params["E"][tokens]

    def backward(self, dout, tokens):
        """Gradient of ``E`` given ``dout`` (..., dim); repeated tokens accumulate."""
        dE = np.zeros_like(self.params["E"])
        np.add.at(dE, tokens.reshape(-1), dout.reshape(-1, self.dim))
        return {"E": dE}

    def config(self):
        """Hyper-parameters as a JSON-serialisable dict."""
        return dict(kind="Embedding", num_embeddings=self.num_embeddings, dim=self.dim,
                    init_std=self.init_std, dtype=self.dtype.name)


class Network:
    """Embedding (optional) -> stacked Phased LSTM / LSTM layers -> dense read-out.

    Parameters
    ----------
    layers : list of sequence layers
        :class:`PhasedLSTM`, :class:`LSTM`, :class:`~plstm_np.PhasedGRU`,
        :class:`~plstm_np.GRU`, :class:`~plstm_np.BatchNorm`, :class:`~plstm_np.TimeFeature`,
        :class:`~plstm_np.Bidirectional`, or any object of the layer protocol (see
        :data:`LAYER_PROTOCOL`).
        ``layers[0].input_size`` = ``embedding.dim`` (if any) + number of input features;
        ``layers[i].input_size`` = ``layers[i-1].output_size``.
    readout : Dense
        Maps the top layer's hidden state to the outputs.
    embedding : Embedding, optional
        Embeds ``tokens``; the embedding comes first in the first layer's input, then the
        features ``x``.
    readout_at : {'last', 'every'}
        Read out at each sequence's last valid step, or at every step.
    loss : {'cross_entropy', 'mse'}
        Softmax cross-entropy on integer labels, or mean squared error on float targets.
    backend : {'numpy', 'numba', 'cuda'}, optional
        Sets every layer's backend (default: keep the layers' own).

    Examples
    --------
    >>> net = Network([PhasedLSTM(1, 110, rng=0)], Dense(110, 2, rng=1))
    >>> loss, grads = net.loss_and_grads(batch)
    """

    def __init__(self, layers, readout, *, embedding=None, readout_at="last",
                 loss="cross_entropy", backend=None):
        layers = list(layers)
        if not layers:
            raise TypeError("layers must be a non-empty list of sequence layers")
        for i, layer in enumerate(layers):
            missing = [name for name in LAYER_PROTOCOL if not hasattr(layer, name)]
            if missing:
                raise TypeError(f"layers[{i}] must be a sequence layer (PhasedLSTM, LSTM, "
                                f"PhasedGRU, GRU, BatchNorm, TimeFeature, Bidirectional), got "
                                f"{type(layer).__name__} without {', '.join(missing)}")
        if not isinstance(readout, Dense):
            raise TypeError(f"readout must be a Dense layer, got {type(readout).__name__}")
        if embedding is not None and not isinstance(embedding, Embedding):
            raise TypeError(f"embedding must be an Embedding or None, "
                            f"got {type(embedding).__name__}")
        if readout_at not in ("last", "every"):
            raise ValueError(f"readout_at must be 'last' or 'every', got {readout_at!r}")
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {sorted(LOSSES)}, got {loss!r}")
        self.layers, self.readout, self.embedding = layers, readout, embedding
        self.readout_at, self.loss_name = readout_at, loss
        self.dtype = layers[0].dtype
        for name, part in self._parts():
            if part.dtype != self.dtype:
                raise TypeError(f"{name} has dtype {part.dtype} but layer0 has {self.dtype}")
        embed_dim = embedding.dim if embedding is not None else 0
        self.n_features = layers[0].input_size - embed_dim
        if self.n_features < 0:
            raise ValueError(f"layer0.input_size ({layers[0].input_size}) is smaller than "
                             f"embedding.dim ({embed_dim})")
        for i in range(1, len(layers)):
            if layers[i].input_size != layers[i - 1].output_size:
                raise ValueError(f"layer{i}.input_size ({layers[i].input_size}) must equal "
                                 f"layer{i - 1}.output_size ({layers[i - 1].output_size})")
        if readout.input_size != layers[-1].output_size:
            raise ValueError(f"readout.input_size ({readout.input_size}) must equal the top "
                             f"layer's output_size ({layers[-1].output_size})")
        if backend is not None:
            self.backend = backend

    # ------------------------------------------------------------------ parameters
    def _parts(self):
        parts = [(f"layer{i}", layer) for i, layer in enumerate(self.layers)]
        parts.append(("readout", self.readout))
        if self.embedding is not None:
            parts.append(("embedding", self.embedding))
        return parts

    @property
    def params(self):
        """Flat dict ``"<part>.<name>" -> array`` of every parameter (the parts' own arrays)."""
        return {f"{part}.{name}": value for part, obj in self._parts()
                for name, value in obj.params.items()}

    @property
    def frozen(self):
        """Names of the parameters the optimizer leaves alone."""
        return {f"layer{i}.{name}" for i, layer in enumerate(self.layers) for name in layer.frozen}

    @property
    def bounds(self):
        """``name -> (low, high)`` that the optimizer clips parameters to (tau, r_on)."""
        return {f"layer{i}.{name}": b for i, layer in enumerate(self.layers)
                for name, b in layer.bounds.items()}

    @property
    def backend(self):
        """The layers' backend ('numpy', 'numba' or 'cuda')."""
        names = {layer.backend for layer in self.layers}
        return names.pop() if len(names) == 1 else sorted(names)

    @backend.setter
    def backend(self, name):
        check_backend(name)
        for layer in self.layers:
            layer.backend = name

    @property
    def output_size(self):
        """Number of outputs of the read-out."""
        return self.readout.output_size

    def initial_state(self, batch_size, *, rng=None, scale=0.0):
        """A list of each layer's initial state, a tuple with one array per name of its
        ``state_names`` (``(h0, c0)`` for a Phased LSTM, ``(h0,)`` for a GRU, ``()`` for a
        batch normalisation): zeros, or ``N(0, scale)`` when ``scale > 0``."""
        rng = as_rng(rng)
        return [tuple(rng.normal(0.0, scale, (batch_size, size)).astype(self.dtype)
                      if scale > 0 else np.zeros((batch_size, size), self.dtype)
                      for size in layer.state_sizes) for layer in self.layers]

    # ------------------------------------------------------------------ running
    def check_inputs(self, x, t, lengths, tokens):
        """Validate the inputs of a batch of sequences, as :meth:`forward` does.

        Parameters
        ----------
        x : ndarray (B, T, n_features) or None
            Input features (must be None when the network takes none).
        t : ndarray (B, T) float64
        lengths : int ndarray (B,) or None
            Valid steps per sequence (all ``T`` when None).
        tokens : int ndarray (B, T) or None
            Event addresses; required exactly when the network has an embedding.

        Returns
        -------
        x : ndarray (B, T, n_features) of the network's dtype, or None
        t : ndarray (B, T) float64
        lengths : int ndarray (B,)
        tokens : int ndarray (B, T) or None
            Padding steps (beyond ``lengths``) set to 0.

        Raises
        ------
        TypeError, ValueError
            For a missing or superfluous input, a wrong shape or dtype, non-finite valid
            values, a token outside ``[0, num_embeddings)``, or an empty sequence when the
            read-out is at the last valid step.
        """
        if self.embedding is None and tokens is not None:
            raise ValueError("tokens given but the network has no embedding")
        if self.embedding is not None and tokens is None:
            raise ValueError("tokens are required: the network starts with an embedding")
        if self.n_features == 0:
            if x is not None:
                raise ValueError("x must be None: the network takes no input features")
            B, T = np.shape(tokens)[:2] if tokens is not None else np.shape(t)
            t = check_timestamps(t, B, T)
            lengths = check_lengths(lengths, B, T)
            check_times(t, valid_steps(lengths, T))
        else:
            if x is None:
                raise ValueError(f"x is required: the network takes {self.n_features} "
                                 f"input features")
            x, t, lengths = check_sequence_inputs(x, t, lengths, input_size=self.n_features,
                                                  dtype=self.dtype)
            B, T = t.shape
            valid = valid_steps(lengths, T)
        if self.readout_at == "last" and B and lengths.min() < 1:
            raise ValueError("lengths must be >= 1 for a read-out at the last valid step")
        if tokens is not None:
            tokens = check_array(tokens, "tokens", shape=(B, T), kind="iu")
            bad = valid & ((tokens < 0) | (tokens >= self.embedding.num_embeddings))
            if bad.any():
                idx = tuple(int(i) for i in np.argwhere(bad)[0])
                raise ValueError(f"tokens must lie in [0, {self.embedding.num_embeddings}), "
                                 f"got {tokens[idx]} at index {idx}")
            tokens = np.where(valid, tokens, 0)  # padding may hold anything
        return x, t, lengths, tokens

    def _check_states(self, state, B):
        if state is None:
            state = [None] * len(self.layers)
        if not isinstance(state, (list, tuple)) or len(state) != len(self.layers):
            raise ValueError(f"state must be a list of {len(self.layers)} per-layer state "
                             f"tuples (or None entries), or None")
        return [check_layer_state(s, B, layer.state_names, layer.state_sizes, self.dtype,
                                  name=f"state[{i}]")
                for i, (s, layer) in enumerate(zip(state, self.layers))]

    def forward(self, x, t, lengths=None, tokens=None, state=None, training=True):
        """Run the network.

        Parameters
        ----------
        x : ndarray (B, T, n_features) or None
            Input features (None when the network reads only tokens).
        t : ndarray (B, T) float64
        lengths : int ndarray (B,), optional
        tokens : int ndarray (B, T), optional
            Event addresses, required when the network has an embedding.
        state : list of (h0, c0), optional
            Initial state of every layer (zeros by default).
        training : bool
            Leak alpha in the closed phase (True) or 0 (evaluation).

        Returns
        -------
        out : ndarray (B, C) or (B, T, C)
            Read-out at the last valid step, or at every step.
        states : list of (h_T, c_T)
            Final state of every layer.
        cache : dict
            For :meth:`backward`; ``cache["updates"]`` lists each layer's computed updates.
        """
        x, t, lengths, tokens = self.check_inputs(x, t, lengths, tokens)
        B, T = t.shape
        states_in = self._check_states(state, B)
        self._check_outer_params()
        inp = x
        if self.embedding is not None:
            emb = self.embedding.forward(tokens)
            inp = emb if x is None else np.concatenate([emb, x], axis=2)
        layer_caches, states = [], []
        for layer, state_in in zip(self.layers, states_in):
            inp, state_out, layer_cache = layer.forward_validated(inp, t, lengths, *state_in,
                                                                  training=training)
            layer_caches.append(layer_cache)
            states.append(state_out)
        top = inp
        if self.readout_at == "last":
            top = top[np.arange(B), lengths - 1]
        out = self.readout.forward(top)
        cache = dict(layer_caches=layer_caches, top=top, tokens=tokens, lengths=lengths, T=T,
                     updates=[c["updates"] for c in layer_caches], owner=self,
                     out_shape=out.shape)
        return out, states, cache

    def check_params(self):
        """Raise ValueError naming the first parameter of the network (any layer, the
        read-out, the embedding) that is missing, of another shape or dtype, not finite or
        outside its domain (see :meth:`plstm_np.PhasedLSTM.check_params`)."""
        for i, layer in enumerate(self.layers):
            layer.check_params(where=f"layer{i}: ")
        self._check_outer_params()

    def _check_outer_params(self):
        """The read-out's and the embedding's parameters: their shapes, dtype and finite
        values (each layer checks its own, :meth:`PhasedLSTM.check_params`)."""
        parts = [("readout", self.readout, {"W": (self.readout.input_size,
                                                  self.readout.output_size),
                                            "b": (self.readout.output_size,)})]
        if self.embedding is not None:
            parts.append(("embedding", self.embedding,
                          {"E": (self.embedding.num_embeddings, self.embedding.dim)}))
        for prefix, module, shapes in parts:
            for name, shape in shapes.items():
                check_parameter(module.params.get(name), f"params[{prefix + '.' + name!r}]",
                                shape, self.dtype)

    def backward(self, dout, cache, dstates=None):
        """Gradients of every parameter, of ``x`` and of the initial states.

        Parameters
        ----------
        dout : ndarray, shaped like the forward's ``out``
        cache : dict
            From :meth:`forward`.
        dstates : list of (dh_T, dc_T), optional
            Gradients with respect to the final states (when they feed a later chunk).

        Returns
        -------
        dict
            The keys of :attr:`params`, plus ``"x"`` (when the network takes features) and
            ``"layer{i}.h0"``, ``"layer{i}.c0"``.
        """
        if not isinstance(cache, dict) or "owner" not in cache:
            raise TypeError(f"cache must be the dict this network's forward returned, got "
                            f"{type(cache).__name__}")
        if cache["owner"] is not self:
            raise ValueError("cache comes from another network's forward")
        dout = check_array(dout, "dout", shape=cache["out_shape"], dtype=self.dtype)
        check_finite(dout, "dout")
        if dstates is not None and (not isinstance(dstates, (list, tuple))
                                    or len(dstates) != len(self.layers)):
            raise TypeError(f"dstates must be None or a list of {len(self.layers)} "
                            f"(dh_T, dc_T) pairs or None, one per layer, got "
                            f"{type(dstates).__name__}"
                            + (f" of {len(dstates)}" if isinstance(dstates, (list, tuple))
                               else ""))
        grads = {}
        readout_grads, dtop = self.readout.backward(dout, cache["top"])
        grads.update({f"readout.{k}": v for k, v in readout_grads.items()})
        lengths, T = cache["lengths"], cache["T"]
        B = len(lengths)
        if self.readout_at == "last":
            dh = np.zeros((B, T, self.layers[-1].output_size), self.dtype)
            dh[np.arange(B), lengths - 1] = dtop
        else:
            dh = dtop
        dstates = [None] * len(self.layers) if dstates is None else dstates
        for i in reversed(range(len(self.layers))):
            layer_grads = self.layers[i].backward(dh, cache["layer_caches"][i], dstates[i])
            dh = layer_grads.pop("x")
            for name in self.layers[i].state_names:
                grads[f"layer{i}.{name}0"] = layer_grads.pop(f"{name}0")
            grads.update({f"layer{i}.{k}": v for k, v in layer_grads.items()})
        if self.embedding is not None:
            dim = self.embedding.dim
            embed_grads = self.embedding.backward(dh[:, :, :dim], cache["tokens"])
            grads.update({f"embedding.{k}": v for k, v in embed_grads.items()})
            dh = dh[:, :, dim:]
        if self.n_features:
            grads["x"] = dh
        return grads

    # ------------------------------------------------------------------ losses
    def check_targets(self, y, lengths, T):
        """Validate the targets of a batch and return them with the mask of rows that count.

        Parameters
        ----------
        y : ndarray
            Integer labels (cross-entropy) or float targets of the network's dtype (mse):
            (B,) or (B, C) for a read-out at the last step, (B, T) or (B, T, C) at every step.
        lengths : int ndarray (B,)
            Valid steps per sequence, as :meth:`check_inputs` returns them.
        T : int
            Number of steps of the batch.

        Returns
        -------
        y : ndarray
            The targets, padding steps set to 0.
        mask : bool ndarray (B, T) or None
            The valid steps for a read-out at every step, None for the last step.

        Raises
        ------
        TypeError, ValueError
            For a wrong shape or dtype, a label outside ``[0, output_size)`` or non-finite
            float targets.
        """
        B = len(lengths)
        every = self.readout_at == "every"
        C = self.output_size
        if self.loss_name == "cross_entropy":
            y = check_array(y, "y", shape=(B, T) if every else (B,), kind="iu")
            mask = valid_steps(lengths, T) if every else None
            live = y if mask is None else y[mask]
            if live.size and (live.min() < 0 or live.max() >= C):
                raise ValueError(f"y must hold class labels in [0, {C}), got range "
                                 f"[{live.min()}, {live.max()}]")
            return (y if mask is None else np.where(mask, y, 0)), mask
        y = check_array(y, "y", shape=(B, T, C) if every else (B, C), dtype=self.dtype)
        mask = valid_steps(lengths, T) if every else None
        check_finite(y, "y", None if mask is None else mask[:, :, None])
        return (y if mask is None else np.where(mask[:, :, None], y, 0)), mask

    def loss_and_grads(self, batch, *, state=None, training=True, need_grads=True,
                       with_hits=False):
        """Loss of a batch and the gradients of every parameter.

        Parameters
        ----------
        batch : Dataset
            ``x``, ``t``, ``y``, ``lengths``, ``tokens``.
        state : list of (h0, c0), optional
        training : bool
        need_grads : bool
            Skip the backward pass (and return ``None`` for the gradients).
        with_hits : bool
            Also return ``hits``.

        Returns
        -------
        loss : float
        grads : dict or None
            As :meth:`backward` returns; None also when the loss is not finite (the network
            diverged: there is nothing to differentiate).
        hits : (int, int) or None
            Only with ``with_hits``: the correctly classified targets of this forward pass
            and their number (None for an MSE network).
        """
        out, _, cache = self.forward(batch.x, batch.t, batch.lengths, batch.tokens, state,
                                     training)
        y, mask = self.check_targets(batch.y, cache["lengths"], cache["T"])
        loss, dout = LOSSES[self.loss_name](out, y, mask)
        grads = None
        if need_grads and np.isfinite(loss):
            grads = self.backward(dout, cache)
        return (loss, grads, self._hits(out, y, mask)) if with_hits else (loss, grads)

    def _hits(self, out, y, mask):
        """(correct, targets) of a cross-entropy network's outputs; None for MSE."""
        if self.loss_name != "cross_entropy":
            return None
        hit = out.argmax(-1) == y
        return (int(hit.sum()), hit.size) if mask is None else (int(hit[mask].sum()),
                                                                int(mask.sum()))

    def predict(self, batch, *, state=None):
        """Outputs at evaluation (alpha = 0) for a :class:`Dataset` batch."""
        return self.forward(batch.x, batch.t, batch.lengths, batch.tokens, state,
                            training=False)[0]

    def evaluate(self, data, *, batch_size=256):
        """Loss, accuracy (classification) and compute spent, at evaluation (alpha = 0).

        Parameters
        ----------
        data : Dataset
        batch_size : int

        Returns
        -------
        dict
            ``loss``; ``accuracy`` (cross-entropy networks); ``updates_per_neuron``: the mean
            number of neuron updates computed per neuron and per sequence, for each layer;
            ``dense_updates_per_neuron``: the same for a dense computation (valid steps).
        """
        if not hasattr(data, "batches"):
            raise TypeError(f"data must be a Dataset, got {type(data).__name__}")
        if len(data) == 0:
            raise ValueError("data is empty: there is nothing to evaluate")
        batch_size = check_positive_int(batch_size, "batch_size")
        total, correct, count, n = 0.0, 0, 0, 0
        updates = np.zeros(len(self.layers))
        for batch in data.batches(batch_size, shuffle=False):
            out, _, cache = self.forward(batch.x, batch.t, batch.lengths, batch.tokens,
                                         training=False)
            y, mask = self.check_targets(batch.y, cache["lengths"], cache["T"])
            loss, _ = LOSSES[self.loss_name](out, y, mask)
            rows = len(batch) if mask is None else int(mask.sum())
            total += loss * rows
            count += rows
            n += len(batch)
            updates += cache["updates"]
            hits = self._hits(out, y, mask)
            if hits is not None:
                correct += hits[0]
        result = {"loss": total / max(count, 1)}
        if self.loss_name == "cross_entropy":
            result["accuracy"] = correct / max(count, 1)
        hidden = np.array([layer.hidden_size for layer in self.layers])
        result["updates_per_neuron"] = (updates / hidden / max(n, 1)).tolist()
        result["dense_updates_per_neuron"] = float(data.steps.mean()) if n else 0.0
        return result

    @property
    def recurrent_index(self):
        """Index of the first layer that carries a state (the first recurrent layer, whose
        updates the paper counts; a :class:`~plstm_np.TimeFeature` or
        :class:`~plstm_np.BatchNorm` in front updates nothing); 0 if there is none."""
        return next((i for i, layer in enumerate(self.layers) if layer.state_names), 0)

    def min_kink_distance(self, batch):
        """Smallest phase distance of any valid (sample, step, neuron) from a gate kink, over
        the layers that have a ``min_kink_distance(t, lengths)`` (the time-gated ones)."""
        return float(min((layer.min_kink_distance(batch.t, batch.steps)
                          for layer in self.layers if hasattr(layer, "min_kink_distance")),
                         default=np.inf))

    def stream(self, batch=1):
        """A :class:`plstm_np.Stream` for event-by-event evaluation of ``batch`` streams."""
        return Stream(self, batch)

    # ------------------------------------------------------------------ saving
    def config(self):
        """The architecture and hyper-parameters as a JSON-serialisable dict."""
        return dict(
            layers=[layer.config() for layer in self.layers], readout=self.readout.config(),
            embedding=None if self.embedding is None else self.embedding.config(),
            readout_at=self.readout_at, loss=self.loss_name,
        )

    def save(self, path, *, optimizer=None, metadata=None, overwrite=False):
        """Save the network (and optionally its optimizer state) to ``path``, atomically.

        The file is the ``.npz`` + JSON archive described in :mod:`plstm_np.io` and read back
        by :func:`plstm_np.load_checkpoint`; :func:`plstm_np.save` calls this method.

        Parameters
        ----------
        path : str or os.PathLike
            The file is written exactly there (no suffix is added).
        optimizer : Adam, optional
            Its moments, step count and hyper-parameters are saved too.
        metadata : dict, optional
            JSON-serialisable information (epoch, accuracy, command line...).
        overwrite : bool
            Replace an existing file; by default an existing file raises FileExistsError.

        Raises
        ------
        FileExistsError
            ``path`` exists and ``overwrite`` is false (checked before anything else).
        ValueError
            ``optimizer`` does not hold this network's parameters.
        TypeError
            ``metadata`` is not JSON-serialisable.
        """
        path = os.fspath(path)
        refuse_existing(path, overwrite)
        params = self.params
        arrays = {f"param/{name}": value for name, value in params.items()}
        meta = {
            "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "network": self.config(),
            "arrays": {name: {"shape": list(v.shape), "dtype": v.dtype.name}
                       for name, v in params.items()},
            "optimizer": None, "metadata": metadata or {},
        }
        if optimizer is not None:
            optimizer.check_bound_to(params, "this network")
            state = optimizer.state_dict()
            for name in params:
                arrays[f"adam_m/{name}"] = state["m"][name]
                arrays[f"adam_v/{name}"] = state["v"][name]
            meta["optimizer"] = {k: state[k] for k in ("lr", "beta1", "beta2", "eps", "step_count")}
            meta["optimizer"].update(kind="Adam", frozen=sorted(optimizer.frozen),
                                     bounds={k: list(v) for k, v in optimizer.bounds.items()})
        try:
            meta_bytes = json.dumps(meta, allow_nan=True).encode("utf-8")
        except TypeError as err:
            raise TypeError(f"metadata must be JSON-serialisable: {err}") from err
        arrays["__meta__"] = np.frombuffer(meta_bytes, dtype=np.uint8)
        atomic_write(path, lambda f: np.savez(f, **arrays), overwrite=overwrite)

    def __repr__(self):
        parts = ", ".join(repr(layer) for layer in self.layers)
        return (f"Network([{parts}], readout={self.readout.output_size}, "
                f"readout_at={self.readout_at!r})")
