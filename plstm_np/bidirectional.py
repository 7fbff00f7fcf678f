"""Bidirectional layers: one recurrent layer reads each sequence forwards, another backwards.

For offline classification of recorded sequences. The backward layer sees each sequence
reversed within its own length ``L_b`` (padding stays padding), with reversed times, so that
its time still increases from 0::

    x_rev[b, j] = x[b, L_b - 1 - j]                     j < L_b
    t_rev[b, j] = t[b, L_b - 1] - t[b, L_b - 1 - j]

Its hidden sequence is reversed back within the length, so that step ``j`` of both halves
belongs to input step ``j``, and the halves are merged: concatenated along the features
(``merge="concat"``, width ``H_fw + H_bw``) or summed (``merge="sum"``). For example, a
sequence of length 3 at times (2, 5, 9) with one padding step is read by the backward half
as the steps (2, 1, 0, pad) at times (0, 4, 7, pad).

Any two layers of the sequence-layer protocol (:data:`plstm_np.network.LAYER_PROTOCOL`) can
be wrapped: Phased LSTM, LSTM, Phased GRU, GRU. The wrapper's parameters are the halves'
own arrays under ``fw.<name>`` and ``bw.<name>``; its state is the halves' states,
``fw_h``, ``fw_c``, ``bw_h``, ... (the backward half's final state is its state after the
reversed sequence, i.e. at input step 0). A bidirectional layer cannot stream: the backward
half needs the whole sequence.
"""
from __future__ import annotations

import numpy as np

from .backends import check_backend
from .validation import (
    check_backward,
    check_layer_state,
    check_sequence_inputs,
    valid_steps,
)

__all__ = ["Bidirectional", "reverse_within_lengths", "reversed_times", "MERGES"]

#: How the two hidden sequences are merged.
MERGES = ("concat", "sum")
#: What a half must offer (the sequence-layer protocol).
_HALF_PROTOCOL = ("input_size", "output_size", "dtype", "params", "frozen", "bounds",
                  "state_names", "state_sizes", "check_params", "forward_validated",
                  "backward", "config")


def reverse_within_lengths(a, lengths):
    """``a`` (B, T, ...) with each row's first ``lengths[b]`` steps in reverse order and its
    padding steps left where they are (a new array; the map is its own inverse).

    Parameters
    ----------
    a : ndarray (B, T, ...)
    lengths : ndarray (B,) of ints in [0, T]

    Returns
    -------
    ndarray, shaped like ``a``
    """
    B, T = a.shape[:2]
    j = np.arange(T)[None, :]
    L = np.asarray(lengths)[:, None]
    source = np.where(j < L, L - 1 - j, j)  # (B, T): where each step comes from
    return a[np.arange(B)[:, None], source]


def reversed_times(t, lengths):
    """The backward half's times: ``t[b, L_b - 1] - t[b, L_b - 1 - j]`` for ``j < L_b``
    (non-decreasing from 0 when ``t`` is non-decreasing), padding copied from ``t``."""
    B, T = t.shape
    rev = reverse_within_lengths(t, lengths)
    last = t[np.arange(B), np.maximum(np.asarray(lengths) - 1, 0)]
    return np.where(valid_steps(lengths, T), last[:, None] - rev, t)


class Bidirectional:
    """Two recurrent layers over each sequence, one forwards, one backwards within its length.

    Parameters
    ----------
    forward_layer, backward_layer : sequence layers
        The halves (e.g. :class:`plstm_np.PhasedLSTM`, :class:`plstm_np.PhasedGRU`), with the
        same ``input_size`` and ``dtype`` (and, for ``merge="sum"``, the same output width).
    merge : {'concat', 'sum'}
        Concatenate the hidden sequences along the features (``[h_fw, h_bw]``) or add them.

    Attributes
    ----------
    params : dict of ndarray
        ``fw.<name>`` and ``bw.<name>``: the halves' own arrays.
    state_names : tuple of str
        ``fw_<name>`` for each of the forward half's, then ``bw_<name>``.
    """

    streamable = False

    def __init__(self, forward_layer, backward_layer, *, merge="concat"):
        for arg, layer in (("forward_layer", forward_layer), ("backward_layer", backward_layer)):
            missing = [name for name in _HALF_PROTOCOL if not hasattr(layer, name)]
            if missing:
                raise TypeError(f"{arg} must be a sequence layer (PhasedLSTM, LSTM, PhasedGRU, "
                                f"GRU), got {type(layer).__name__} without "
                                f"{', '.join(missing)}")
            if not layer.state_names:
                raise TypeError(f"{arg} must be a recurrent layer (with a state), got "
                                f"{type(layer).__name__}")
        if merge not in MERGES:
            raise ValueError(f"merge must be one of {MERGES}, got {merge!r}")
        fw, bw = forward_layer, backward_layer
        if fw is bw:
            raise ValueError("forward_layer and backward_layer must be two layers, got the "
                             "same one twice")
        if fw.input_size != bw.input_size:
            raise ValueError(f"backward_layer.input_size ({bw.input_size}) must equal "
                             f"forward_layer.input_size ({fw.input_size})")
        if fw.dtype != bw.dtype:
            raise TypeError(f"backward_layer has dtype {bw.dtype} but forward_layer has "
                            f"{fw.dtype}")
        if merge == "sum" and fw.output_size != bw.output_size:
            raise ValueError(f"merge='sum' needs halves of one width, got "
                             f"forward_layer.output_size {fw.output_size} and "
                             f"backward_layer.output_size {bw.output_size}")
        self.fw, self.bw, self.merge = fw, bw, merge

    # ------------------------------------------------------------------ the protocol
    @property
    def input_size(self):
        """D, the width of the input both halves read."""
        return self.fw.input_size

    @property
    def hidden_size(self):
        """The forward half's hidden size."""
        return self.fw.hidden_size

    @property
    def output_size(self):
        """``H_fw + H_bw`` (concat) or ``H`` (sum)."""
        if self.merge == "sum":
            return self.fw.output_size
        return self.fw.output_size + self.bw.output_size

    @property
    def dtype(self):
        return self.fw.dtype

    @property
    def backend(self):
        """The halves' backend; setting it sets both."""
        return self.fw.backend

    @backend.setter
    def backend(self, name):
        check_backend(name)
        self.fw.backend = self.bw.backend = name

    def _halves(self):
        return (("fw", self.fw), ("bw", self.bw))

    @property
    def params(self):
        return {f"{p}.{name}": value for p, layer in self._halves()
                for name, value in layer.params.items()}

    @property
    def frozen(self):
        return {f"{p}.{name}" for p, layer in self._halves() for name in layer.frozen}

    @property
    def bounds(self):
        return {f"{p}.{name}": b for p, layer in self._halves()
                for name, b in layer.bounds.items()}

    @property
    def state_names(self):
        return tuple(f"{p}_{name}" for p, layer in self._halves() for name in layer.state_names)

    @property
    def state_sizes(self):
        return tuple(self.fw.state_sizes) + tuple(self.bw.state_sizes)

    def check_params(self, where=""):
        """Each half's :meth:`check_params`, its messages prefixed ``fw.`` / ``bw.``."""
        for p, layer in self._halves():
            layer.check_params(where=f"{where}{p}.")

    # ------------------------------------------------------------------ running
    def forward(self, x, t, lengths=None, state=None, training=True):
        """Run both halves over a batch of sequences (see :meth:`plstm_np.PhasedLSTM.forward`).

        Returns
        -------
        h : ndarray (B, T, output_size)
        state : tuple
            The final states, one per name of :attr:`state_names`.
        cache : dict
        """
        x, t, lengths = check_sequence_inputs(x, t, lengths, input_size=self.input_size,
                                              dtype=self.dtype)
        states = check_layer_state(state, x.shape[0], self.state_names, self.state_sizes,
                                   self.dtype)
        return self.forward_validated(x, t, lengths, *states, training=training)

    def forward_validated(self, x, t, lengths, *states, training=True):
        """:meth:`forward` on validated inputs; ``states`` one per name of :attr:`state_names`."""
        self.check_params()  # first, so that a refusal names the half (fw. or bw.)
        n_fw = len(self.fw.state_names)
        h_fw, s_fw, c_fw = self.fw.forward_validated(x, t, lengths, *states[:n_fw],
                                                     training=training)
        x_rev = np.ascontiguousarray(reverse_within_lengths(x, lengths))
        t_rev = np.ascontiguousarray(reversed_times(t, lengths))
        h_bw_rev, s_bw, c_bw = self.bw.forward_validated(x_rev, t_rev, lengths,
                                                          *states[n_fw:], training=training)
        h_bw = reverse_within_lengths(h_bw_rev, lengths)
        h = np.concatenate([h_fw, h_bw], axis=2) if self.merge == "concat" else h_fw + h_bw
        cache = dict(fw=c_fw, bw=c_bw, lengths=lengths, updates=c_fw["updates"] + c_bw["updates"],
                     layer=dict(owner=self, shape=h.shape, dtype=h.dtype))
        return h, tuple(s_fw) + tuple(s_bw), cache

    def backward(self, dh, cache, dstate=None):
        """Gradients of every parameter (keys of :attr:`params`), of ``x`` and of every
        initial state (``"fw_h0"``, ..., ``"bw_c0"``), given ``dh`` (B, T, output_size) and
        optionally ``dstate``, the gradients of the final states (a tuple, one per name)."""
        dh = check_backward(self, dh, cache)
        B, T, _ = cache["layer"]["shape"]
        names = self.state_names
        if dstate is not None:
            dstate = check_layer_state(dstate, B, names, self.state_sizes, self.dtype,
                                       name="dstate")
        n_fw = len(self.fw.state_names)
        d_fw = None if dstate is None else tuple(dstate[:n_fw])
        d_bw = None if dstate is None else tuple(dstate[n_fw:])
        if self.merge == "concat":
            H = self.fw.output_size
            dh_fw, dh_bw = dh[:, :, :H], dh[:, :, H:]
        else:
            dh_fw = dh_bw = dh
        lengths = cache["lengths"]
        g_fw = self.fw.backward(np.ascontiguousarray(dh_fw), cache["fw"], d_fw)
        g_bw = self.bw.backward(np.ascontiguousarray(reverse_within_lengths(dh_bw, lengths)),
                                cache["bw"], d_bw)
        grads = {"x": g_fw.pop("x") + reverse_within_lengths(g_bw.pop("x"), lengths)}
        for p, layer, g in (("fw", self.fw, g_fw), ("bw", self.bw, g_bw)):
            for name in layer.state_names:
                grads[f"{p}_{name}0"] = g.pop(f"{name}0")
            grads.update({f"{p}.{name}": value for name, value in g.items()})
        return grads

    # ------------------------------------------------------------------ saving
    def min_kink_distance(self, t, lengths):
        """The smaller of the halves' :meth:`min_kink_distance` (the backward half's at its
        reversed times); ``inf`` for halves without a time gate."""
        return min(getattr(self.fw, "min_kink_distance", lambda *a: np.inf)(t, lengths),
                   getattr(self.bw, "min_kink_distance", lambda *a: np.inf)(
                       reversed_times(t, lengths), lengths))

    def config(self):
        """The halves' configurations and the merge, JSON-serialisable."""
        return dict(kind="Bidirectional", forward_layer=self.fw.config(),
                    backward_layer=self.bw.config(), merge=self.merge)

    @classmethod
    def from_config(cls, cfg, build):
        """The layer :meth:`config` describes; ``build(layer_config)`` makes each half."""
        return cls(build(cfg["forward_layer"]), build(cfg["backward_layer"]),
                   merge=cfg.get("merge", "concat"))

    def __repr__(self):
        return f"Bidirectional({self.fw!r}, {self.bw!r}, merge={self.merge!r})"
