"""Streaming inference: events in as they arrive, outputs out, state kept between calls.

An event camera or a multi-rate sensor pipeline does not have the whole recording: it
delivers events one at a time or in packets. :class:`Stream` keeps, for every stream of a
batch of independent streams, the state ``(h, c)`` of every layer, the time of the last
event and the update counts, and evaluates the network (``alpha = 0``, closed neurons
skipped) on each packet. Pushing a recording in pieces gives the same outputs as
:meth:`plstm_np.Network.forward` with ``training=False`` run on the whole recording::

    stream = Stream(net)                     # batch=1
    for x_event, t_event in sensor_events():
        y = stream.push(x_event, t_event)    # read-out after this event
    print(stream.updates_per_neuron)         # compute actually spent, per layer

The stream snapshots the network's parameters when it is created (call :meth:`refresh`
after changing them); it runs the Phased LSTM and LSTM layers on the Numba CPU kernels of
streaming, which it asks the backend registry for when a stream is created (so that
``import plstm_np`` loads no Numba). Other streamable layers (a Phased GRU, a GRU, a batch
normalisation, which streams with its running statistics) run through their own
``forward_validated`` at evaluation, packet by packet, with their state carried; a layer that
cannot stream (:class:`~plstm_np.Bidirectional`: its backward half needs the whole
sequence) is refused when the stream is created.

Where this module sits: below :mod:`plstm_np.network`, which imports it for
:meth:`plstm_np.Network.stream`. It does not import the network back: a model is run as a
network when it is not a layer and has a network's public attributes (``layers``,
``readout``, ``embedding``, ``n_features`` and :meth:`~plstm_np.Network.check_inputs`).
"""
from __future__ import annotations

import numbers

import numpy as np

from .backends import get_backend
from .layers import PhasedLSTM
from .time_gate import time_gate
from .validation import check_positive_int, check_sequence_inputs, valid_steps

__all__ = ["Stream"]

#: What :class:`Stream` uses of a network (duck typing: this module cannot import it).
_NETWORK_ATTRIBUTES = ("layers", "readout", "embedding", "n_features", "check_inputs")


class Stream:
    """Stateful event-by-event evaluation of a :class:`~plstm_np.Network` or a single layer.

    Parameters
    ----------
    model : Network or PhasedLSTM (or LSTM)
        What to run. For a bare layer, :meth:`push` returns the layer's hidden state.
    batch : int
        Number of independent streams (default 1).

    Attributes
    ----------
    batch : int
    states : list of (h, c)
        Current state of every layer, each (batch, H).
    last_time : ndarray (batch,)
        Time of each stream's last event (NaN before the first).
    events : ndarray (batch,) of int
        Events seen per stream.
    update_counts : list of ndarray (batch, H) of int
        Neuron updates computed, per layer, stream and neuron.

    Notes
    -----
    :meth:`push` accepts, for ``batch == 1``: one event (``t`` a scalar, ``x`` of shape
    (n_features,), ``tokens`` a scalar) or a packet of n events (``t`` (n,), ``x``
    (n, n_features), ``tokens`` (n,)); for any batch: one event per stream (``t`` (batch,),
    ``x`` (batch, n_features), ``tokens`` (batch,)) or a packet per stream (``t``
    (batch, n), ``x`` (batch, n, n_features), ``tokens`` (batch, n), optional ``lengths``
    (batch,) when the streams' packets hold different numbers of events). It returns the
    read-out after every pushed event, shaped like ``t`` plus a trailing axis of outputs.

    A stream's clock never goes back: within a packet, each stream's events must come in
    non-decreasing time order, and a stream's first event in a packet must be no earlier than
    its :attr:`last_time`. Equal times are allowed. A packet that breaks this is refused with a
    ``ValueError`` naming the stream (row) and both times, and leaves the stream's state
    unchanged; :meth:`reset` forgets the last times, so that new streams may start anywhere.
    Padding events (beyond ``lengths``) are never checked. An empty packet (``t`` with no
    events, after the same checks of types and shapes) is a no-op: it returns an empty
    read-out, shaped like ``t`` plus the outputs' axis, and changes nothing.
    """

    def __init__(self, model, batch=1):
        if all(hasattr(model, name) for name in _NETWORK_ATTRIBUTES):
            self.network = model
            self.layers = list(model.layers)
        elif hasattr(model, "forward_validated") and hasattr(model, "streamable"):
            self.network = None
            self.layers = [model]
        else:
            raise TypeError(f"model must be a Network or a sequence layer (PhasedLSTM, LSTM, "
                            f"PhasedGRU, GRU, BatchNorm, TimeFeature), got {type(model).__name__}")
        for i, layer in enumerate(self.layers):
            if not layer.streamable:
                raise ValueError(f"layer{i} ({type(layer).__name__}) cannot stream: it needs "
                                 f"the whole sequence (a backward pass); evaluate recordings "
                                 f"whole with forward() or evaluate()")
        self.batch = check_positive_int(batch, "batch")
        self.dtype = self.layers[0].dtype
        self._kernels = get_backend("numba")
        self.refresh()
        self.reset()

    # ------------------------------------------------------------------ state
    def refresh(self):
        """Take a fresh snapshot of the model's parameters (after training it further); they
        are checked first (:meth:`plstm_np.PhasedLSTM.check_params`: ValueError naming a
        parameter that is missing, misshapen, not finite or outside its domain)."""
        (self.network if self.network is not None else self.layers[0]).check_params()
        self._prepared = [
            self._kernels.prepare_params(layer.params, layer.gate_open, dense=False)
            if _on_kernels(layer) else None for layer in self.layers]
        self._table = None
        if self.network is not None:
            readout = self.network.readout.params  # float64: the kernel accumulates in it
            self._readout = (readout["W"].astype(np.float64), readout["b"].astype(np.float64))
            emb = self.network.embedding
            if emb is not None and _on_kernels(self.layers[0]):
                # the first layer sees a precomputed projection per token
                self._table, self._prepared[0] = self._kernels.token_table(
                    self._prepared[0], emb.params["E"])

    def reset(self):
        """Forget every stream's state: zeros, no events seen, counts zero.

        Also forgets :attr:`last_time` (NaN again), so the next :meth:`push` may start at any
        time, earlier ones included.
        """
        B = self.batch
        self.states = [tuple(np.zeros((B, size), self.dtype) for size in layer.state_sizes)
                       for layer in self.layers]
        self.update_counts = [np.zeros((B, layer.hidden_size), np.int64) for layer in self.layers]
        self.last_time = np.full(B, np.nan)
        self.events = np.zeros(B, np.int64)

    @property
    def updates(self):
        """Total neuron updates computed so far, per layer (list of int)."""
        return [int(c.sum()) for c in self.update_counts]

    @property
    def updates_per_neuron(self):
        """Mean updates computed per neuron and per stream, for each layer (list of float);
        a dense computation would give :attr:`events`."""
        return [float(c.mean()) for c in self.update_counts]

    # ------------------------------------------------------------------ running
    def _canonical(self, x, t, tokens, lengths):
        """Inputs as (batch, n, ...) arrays, and how to shape the outputs back."""
        B = self.batch
        n_features = (self.network.n_features if self.network is not None
                      else self.layers[0].input_size)
        t_arr = np.asarray(t, dtype=np.float64) if isinstance(t, numbers.Real) else t
        if not isinstance(t_arr, np.ndarray):
            raise TypeError(f"t must be a float or a numpy.ndarray, got {type(t).__name__}")
        if t_arr.dtype != np.float64:
            raise TypeError(f"t must have dtype float64 (the phase needs float64 resolution), "
                            f"got {t_arr.dtype}")
        if B == 1 and t_arr.ndim == 0:
            expand, out_shape = (1, 1), ()
        elif B == 1 and t_arr.ndim == 1:
            expand, out_shape = (1, t_arr.shape[0]), (t_arr.shape[0],)
        elif B > 1 and t_arr.ndim == 1:
            if t_arr.shape[0] != B:
                raise ValueError(f"t must have shape ({B},) or ({B}, n) for {B} streams, "
                                 f"got {t_arr.shape}")
            expand, out_shape = (B, 1), (B,)
        elif t_arr.ndim == 2:
            if t_arr.shape[0] != B:
                raise ValueError(f"t must have shape ({B}, n) for {B} streams, got {t_arr.shape}")
            expand, out_shape = t_arr.shape, t_arr.shape
        else:
            raise ValueError(f"t has shape {t_arr.shape}; "
                             f"see Stream's notes for the accepted shapes")
        if lengths is not None and len(out_shape) != 2:
            raise ValueError("lengths is only accepted with packets of shape (batch, n)")
        t3 = np.ascontiguousarray(t_arr.reshape(expand))
        x3 = None
        if x is not None:
            if not isinstance(x, np.ndarray):
                raise TypeError(f"x must be a numpy.ndarray, got {type(x).__name__}")
            want = tuple(out_shape) + (n_features,)
            if x.shape != want:
                raise ValueError(f"x must have shape {want} to match t, got {x.shape}")
            x3 = x.reshape(expand + (n_features,))
        tok3 = None
        if tokens is not None:
            tok = np.asarray(tokens) if isinstance(tokens, numbers.Integral) else tokens
            if not isinstance(tok, np.ndarray):
                raise TypeError(f"tokens must be an int or a numpy.ndarray, "
                                f"got {type(tokens).__name__}")
            if tok.shape != tuple(out_shape):
                raise ValueError(f"tokens must have shape {tuple(out_shape)} to match t, "
                                 f"got {tok.shape}")
            tok3 = tok.reshape(expand)
        return x3, t3, tok3, lengths, out_shape

    def _check_time_order(self, t, lengths, ndim):
        """Refuse a packet in which a stream's clock goes back (equal times are allowed).

        ``t`` (batch, n) and ``lengths`` are validated (valid times finite); ``ndim`` is the
        number of dimensions of the caller's ``t``, to name the offending entry as they see it.
        """
        def entry(b, j):  # the entry as the caller indexes their t
            if ndim == 0:
                return "t"
            if ndim == 1:  # one stream's packet, or one event per stream
                return f"t[{j}]" if self.batch == 1 else f"t[{b}]"
            return f"t[{b}, {j}]"

        n = t.shape[1]
        # within the packet: each valid event no earlier than the one before it
        back = valid_steps(lengths, n)[:, 1:] & (t[:, 1:] < t[:, :-1])
        if back.any():
            b, j = (int(i) for i in np.argwhere(back)[0])
            raise ValueError(
                f"t must be non-decreasing within each stream's packet: in row {b}, "
                f"{entry(b, j + 1)} = {float(t[b, j + 1])!r} is earlier than "
                f"{entry(b, j)} = {float(t[b, j])!r}")
        # across packets: a stream's first event no earlier than its last time (NaN before
        # its first event, which compares False); rows with no event in this packet wait
        early = (lengths > 0) & (t[:, 0] < self.last_time)
        if early.any():
            b = int(np.argmax(early))
            raise ValueError(
                f"t goes back in time in row {b}: {entry(b, 0)} = {float(t[b, 0])!r} is earlier "
                f"than the stream's last time {float(self.last_time[b])!r} (equal times are "
                f"allowed); call reset() to start new streams")

    def push(self, x=None, t=None, tokens=None, lengths=None):
        """Feed the next event(s) of every stream; return the read-out after each of them.

        Parameters
        ----------
        x : ndarray or None
            Input features of the events (None when the network reads only tokens).
        t : float or ndarray of float64
            Event times (see the class notes for the accepted shapes).
        tokens : int or ndarray of ints, optional
            Event addresses, for a network with an embedding.
        lengths : ndarray (batch,) of ints, optional
            Events of each stream's packet that are real (the rest is padding, ignored).

        Returns
        -------
        ndarray
            Read-out (or, for a bare layer, hidden state) after every pushed event: the shape
            of ``t`` followed by the number of outputs. Padding events repeat the read-out of
            the stream's last real event.

        Raises
        ------
        TypeError, ValueError
            For inputs of the wrong type, shape or dtype, or non-finite values (as
            :meth:`plstm_np.Network.forward`).
        ValueError
            If a stream's times decrease within the packet, or if a stream's first event is
            earlier than its :attr:`last_time` (equal times are allowed). Nothing is changed:
            the stream's state, counts and last times are those before the call.
        """
        if t is None:
            raise TypeError("t is required")
        x3, t3, tok3, lengths, out_shape = self._canonical(x, t, tokens, lengths)
        B, n = t3.shape
        if n == 0:  # an empty packet: nothing to compute, an empty read-out
            C = (self.network.output_size if self.network is not None
                 else self.layers[-1].output_size)
            return np.empty(tuple(out_shape) + (C,), self.dtype)
        tokens = None
        if self.network is not None:
            x3, t3, lengths, tok3 = self.network.check_inputs(x3, t3, lengths, tok3)
            inp = x3
            if self._table is not None:  # the embedding is folded into the token table
                tokens = np.ascontiguousarray(tok3, dtype=np.int64)
                if inp is None:
                    inp = np.empty((B, n, 0), self.dtype)
            elif self.network.embedding is not None:
                emb = self.network.embedding.forward(tok3)
                inp = emb if inp is None else np.concatenate([emb, inp], axis=2)
        else:
            inp, t3, lengths = check_sequence_inputs(x3, t3, lengths,
                                                     input_size=self.layers[0].input_size,
                                                     dtype=self.dtype)
        self._check_time_order(t3, lengths, len(out_shape))  # before any state changes
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            if not _on_kernels(layer):  # its own evaluation forward, the state carried
                inp, self.states[i], cache = layer.forward_validated(inp, t3, lengths,
                                                                     *self.states[i],
                                                                     training=False)
                counted = cache.get("neuron_updates") if isinstance(cache, dict) else None
                self.update_counts[i] += (_updates(layer, t3, lengths) if counted is None
                                          else counted)  # the kernel's own count, if kept
                res = None
                continue
            h0, c0 = self.states[i]
            features = np.ascontiguousarray(layer.gate_inputs(inp, t3))
            table = self._table if i == 0 else None
            # the top layer's kernel also computes the read-out (incrementally)
            readout = self._readout if i == last and self.network is not None else None
            res = self._kernels.stream_forward(
                self._prepared[i], features, t3, lengths, h0, c0, self.update_counts[i],
                layer.gate_open, table=table, tokens=tokens if i == 0 else None,
                readout=readout)
            inp, hT, cT = res[:3]
            self.states[i] = (hT, cT)
        if self.network is None:
            out = inp
        elif res is None:  # the top layer ran outside the kernels: the read-out here
            out = self.network.readout.forward(inp)
        else:
            out = self.network.readout.activate(res[3])
        has = lengths > 0
        self.last_time[has] = t3[has, lengths[has] - 1]
        self.events += lengths
        return out.reshape(tuple(out_shape) + (out.shape[-1],))

    def __repr__(self):
        return (f"Stream(batch={self.batch}, layers={len(self.layers)}, "
                f"events={self.events.tolist()})")


def _on_kernels(layer):
    """Whether the streaming kernels run ``layer`` (the Phased LSTM and the LSTM)."""
    return isinstance(layer, PhasedLSTM)


def _updates(layer, t, lengths):
    """Neuron updates (batch, hidden_size) that an evaluation of ``layer`` outside the
    kernels computes on a packet: a step of a neuron whose time gate is open (k > 0 with
    alpha = 0) for a layer with a gate (``tau``, ``s``, ``r_on``), every valid step of every
    neuron for a recurrent layer without one, none for a layer without state."""
    B, n = t.shape
    valid = valid_steps(lengths, n)
    if not layer.state_names:
        return np.zeros((B, layer.hidden_size), np.int64)
    p = layer.params
    if "tau" in p:
        k = time_gate(t[:, :, None], p["tau"].astype(np.float64), p["s"].astype(np.float64),
                      p["r_on"].astype(np.float64))
        return ((k > 0) & valid[:, :, None]).sum(1)
    return np.repeat(valid.sum(1)[:, None], layer.hidden_size, axis=1)
