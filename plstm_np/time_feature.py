"""The timestamp as an input feature: ``x -> [x, t * time_scale]``.

The paper's baselines (LSTM, BN-LSTM) see time only as an extra input. An
:class:`~plstm_np.LSTM` with ``time_input=True`` appends the feature itself
(:func:`append_time`); this layer does the same as a layer of its own, so that other layers
can come between the feature and the recurrent layer. That is the authors' BN-LSTM
(dannyneil/public_plstm, ``freq_task.py`` ``get_rnn`` and ``bnlstm.py``): its LSTM's input
is ``ConcatLayer([x, t])``, and the batch normalisation is applied to that whole input, the
timestamp included::

    Network([TimeFeature(D), BatchNorm(D + 1), LSTM(D + 1, H, time_input=False)], readout)

Forward and backward (``g = dL/dy``)::

    y[b, j] = [x[b, j, 0], ..., x[b, j, D-1], t[b, j] * time_scale]
    dL/dx   = g[:, :, :D]             (t is data: it gets no gradient)
"""
from __future__ import annotations

import numpy as np

from .backends import check_backend
from .validation import (
    check_backward,
    check_dtype,
    check_layer_state,
    check_positive_int,
    check_real,
    check_sequence_inputs,
)

__all__ = ["TimeFeature", "append_time"]


def append_time(x, t, time_scale, dtype):
    """``x`` (B, T, D) with ``t * time_scale`` (B, T) appended as feature D, in ``dtype``."""
    feature = (t * time_scale).astype(dtype)[:, :, None]
    return np.concatenate([x, feature], axis=2)


class TimeFeature:
    """Append the timestamp, times ``time_scale``, to the input features.

    A layer of the :class:`plstm_np.Network` protocol without parameters or state.

    Parameters
    ----------
    input_size : int
        D, the number of input features; ``output_size = hidden_size = D + 1``.
    time_scale : float
        Factor applied to the timestamp (finite).
    dtype : float32 or float64
    backend : {'numpy', 'numba', 'cuda'}
        Accepted so that a network can set one for all its layers; computed in NumPy.
    hidden_size : int, optional
        Accepted so that :meth:`config` holds the protocol's ``hidden_size``; must equal
        ``input_size + 1``.

    Notes
    -----
    The feature is written on every step, padding included (it is data, like ``t``);
    layers after it read only the valid steps.
    """

    #: A layer without carried state.
    state_names = ()
    state_sizes = ()
    #: :meth:`plstm_np.Network.stream` may run it packet by packet.
    streamable = True

    def __init__(self, input_size, *, time_scale=1.0, dtype=np.float64, backend="numpy",
                 hidden_size=None):
        self.input_size = check_positive_int(input_size, "input_size")
        if hidden_size is not None and (
                check_positive_int(hidden_size, "hidden_size") != self.input_size + 1):
            raise ValueError(f"hidden_size must equal input_size + 1 ({self.input_size + 1}) "
                             f"for a TimeFeature, got {hidden_size}")
        self.time_scale = check_real(time_scale, "time_scale")
        self.dtype = check_dtype(dtype)
        self.backend = backend
        self.params = {}
        self.frozen = set()
        self.bounds = {}

    @property
    def output_size(self):
        """Width of the sequence the layer emits: ``input_size + 1``."""
        return self.input_size + 1

    @property
    def hidden_size(self):
        """``output_size``."""
        return self.output_size

    @property
    def backend(self):
        """The backend name; checked when set, computed in NumPy whatever it is."""
        return self._backend

    @backend.setter
    def backend(self, value):
        self._backend = check_backend(value)

    def check_params(self, where=""):
        """Raise ValueError if ``params`` is not the empty dict. ``where`` prefixes it."""
        if not isinstance(self.params, dict) or self.params:
            got = sorted(self.params) if isinstance(self.params, dict) else type(
                self.params).__name__
            raise ValueError(f"{where}params of a TimeFeature must be empty, got {got}")

    def forward(self, x, t, lengths=None, state=None, training=True):
        """Append the feature.

        Parameters
        ----------
        x : ndarray (B, T, input_size) of the layer's dtype
        t : ndarray (B, T) float64
        lengths : ndarray (B,) of ints, optional
        state : None or ()
            The layer has no state.
        training : bool
            Ignored (the layer is the same in both modes).

        Returns
        -------
        y : ndarray (B, T, input_size + 1)
        state : ()
        cache : dict
            For :meth:`backward`; ``cache["updates"]`` is 0.
        """
        x, t, lengths = check_sequence_inputs(x, t, lengths, input_size=self.input_size,
                                              dtype=self.dtype)
        check_layer_state(state, x.shape[0], (), (), self.dtype)
        return self.forward_validated(x, t, lengths, training=training)

    def forward_validated(self, x, t, lengths, training=True):
        """:meth:`forward` on inputs a network validated already (no state: ``training``
        comes right after ``lengths``)."""
        self.check_params()
        y = append_time(x, t, self.time_scale, self.dtype)
        cache = dict(updates=0, layer=dict(owner=self, shape=y.shape, dtype=y.dtype))
        return y, (), cache

    def backward(self, dh, cache, dstate=None):
        """The gradient of the input features: ``{"x": dh[:, :, :input_size]}``.

        Parameters
        ----------
        dh : ndarray (B, T, input_size + 1)
        cache : dict
            From :meth:`forward`.
        dstate : None or ()
        """
        dh = check_backward(self, dh, cache)
        check_layer_state(dstate, dh.shape[0], (), (), self.dtype, name="dstate")
        return {"x": np.ascontiguousarray(dh[:, :, :self.input_size], dtype=self.dtype)}

    def config(self):
        """Constructor arguments as a JSON-serialisable dict."""
        return dict(kind=type(self).__name__, input_size=self.input_size,
                    hidden_size=self.hidden_size, time_scale=self.time_scale,
                    dtype=self.dtype.name, backend=self.backend)

    def __repr__(self):
        return (f"TimeFeature({self.input_size}, time_scale={self.time_scale:g}, "
                f"dtype={self.dtype.name})")
