"""Recurrent layers: the Phased LSTM and the LSTM baseline (the same layer, gate forced open).

A layer owns its parameters (a dict with the names of the DESIGN.md contract) and its
hyper-parameters; it keeps no state between calls. ``forward`` returns ``(h, state, cache)``
and ``backward(dh, cache, dstate)`` returns the gradients, as in a hand-written LSTM::

    layer = PhasedLSTM(1, 110, rng=0)
    h, (h_T, c_T), cache = layer.forward(x, t, lengths)
    # dict: Wx, Wh, b, w_ci, w_cf, w_co, tau, s, r_on, x, h0, c0
    grads = layer.backward(dh, cache)
"""
from __future__ import annotations

import numbers

import numpy as np

from .backends import check_backend, get_backend
from .optim import R_ON_MIN, TAU_MIN
from .time_feature import append_time
from .time_gate import min_kink_distance
from .validation import (
    as_rng,
    check_backward,
    check_dtype,
    check_parameter,
    check_positive_int,
    check_real,
    check_sequence_inputs,
    check_state,
    check_tau_exp_range,
    check_timing,
    per_neuron,
)

__all__ = ["PhasedLSTM", "LSTM", "TimeInput"]


def _check_grad_clip(value):
    """``grad_clip`` as None or a float: a finite number > 0, else raise."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"grad_clip must be None (no clipping) or a finite number > 0, "
                        f"got {type(value).__name__} {value!r}")
    if not (np.isfinite(value) and value > 0):
        raise ValueError(f"grad_clip must be None (no clipping) or a finite number > 0, "
                         f"got {value!r}")
    return float(value)


class PhasedLSTM:
    """A Phased LSTM layer (Neil, Pfeiffer & Liu 2016) with diagonal peepholes.

    Parameters
    ----------
    input_size, hidden_size : int
        D and H.
    tau_exp_range : (float, float)
        Periods are initialised as ``tau = exp(U(lo, hi))`` (the paper: (0, 3) for the
        frequency task, (1, 6)... for N-MNIST), unless ``tau`` is given.
    tau, s : float or ndarray (H,), optional
        Hand-set per-neuron period and shift (multi-rate sensor fusion). ``s`` defaults to
        ``U(0, tau)``.
    r_on : float or ndarray (H,)
        Open ratio, 0 < r_on <= 1 (default 0.05).
    leak : float
        alpha, the closed-phase leak used when ``training=True`` (default 1e-3); evaluation
        uses 0.
    learn_tau, learn_s, learn_r_on : bool
        Which timing parameters the optimizer updates (default: tau and s learned, r_on fixed).
        Gradients are computed for all of them either way.
    tau_min, r_on_min : float
        Floors the optimizer keeps tau and r_on at: after every update
        ``tau >= tau_min`` and ``r_on_min <= r_on <= 1``.
    init_std : float
        Standard deviation of the normal init of ``Wx``, ``Wh`` and the peepholes (Lasagne's
        default 0.1, which the paper kept); biases start at 0.
    grad_clip : float or None
        In BPTT, clip every step's gate pre-activation gradient to [-grad_clip, grad_clip]
        elementwise, before it reaches ``Wx``, ``Wh``, ``b``, ``x`` and ``h_{j-1}``
        (Lasagne's ``grad_clipping``, 10 in the authors' code; see
        :mod:`plstm_np.reference`). None (default): no clipping.
    dtype : float32 or float64
    backend : {'numpy', 'numba', 'cuda'}
    rng : numpy.random.Generator, int or None

    Attributes
    ----------
    params : dict of ndarray
        ``Wx`` (D, 4H), ``Wh`` (H, 4H), ``b`` (4H,) with gate blocks [i, f, g, o];
        ``w_ci``, ``w_cf``, ``w_co``, ``tau``, ``s``, ``r_on`` (H,).
    frozen : set of str
        Parameter names the optimizer leaves alone.
    bounds : dict
        ``name -> (low, high)`` the optimizer clips to.
    """

    gate_open = False
    #: The carried state, in the order ``forward_validated`` takes and returns it.
    state_names = ("h", "c")
    #: :meth:`plstm_np.Network.stream` may run the layer packet by packet.
    streamable = True

    def __init__(self, input_size, hidden_size, *, tau_exp_range=(0.0, 3.0), tau=None, s=None,
                 r_on=0.05, leak=1e-3, learn_tau=True, learn_s=True, learn_r_on=False,
                 tau_min=TAU_MIN, r_on_min=R_ON_MIN, init_std=0.1, grad_clip=None,
                 dtype=np.float64, backend="numpy", rng=None):
        self.input_size = check_positive_int(input_size, "input_size")
        self.grad_clip = grad_clip
        self.hidden_size = H = check_positive_int(hidden_size, "hidden_size")
        self.dtype = check_dtype(dtype)
        self.backend = check_backend(backend)
        self.leak = float(leak)
        if not (np.isfinite(self.leak) and 0.0 <= self.leak < 1.0):
            raise ValueError(f"leak must lie in [0, 1), got {leak}")
        if not (tau_min > 0 and 0 < r_on_min <= 1):
            raise ValueError(f"tau_min must be > 0 and r_on_min in (0, 1], "
                             f"got {tau_min}, {r_on_min}")
        self.tau_min, self.r_on_min = float(tau_min), float(r_on_min)
        self.init_std = check_real(init_std, "init_std", low=0.0)
        rng = as_rng(rng)
        self.params = self._init_gate_params(rng)
        if not self.gate_open:
            lo, hi = check_tau_exp_range(tau_exp_range)
            tau = np.exp(rng.uniform(lo, hi, H)) if tau is None else tau
            tau = per_neuron(tau, H, "tau", np.float64)
            r_on = per_neuron(r_on, H, "r_on", np.float64)
            check_timing(tau, r_on)
            s = rng.uniform(0.0, tau) if s is None else s
            s = per_neuron(s, H, "s", np.float64)
            if not np.all(np.isfinite(s)):
                raise ValueError("s must be finite")
            self.params.update(tau=tau.astype(self.dtype), s=s.astype(self.dtype),
                               r_on=r_on.astype(self.dtype))
            self.frozen = {name for name, learn in
                           (("tau", learn_tau), ("s", learn_s), ("r_on", learn_r_on)) if not learn}
            self.bounds = {"tau": (self.tau_min, np.inf), "r_on": (self.r_on_min, 1.0)}
        else:
            self.frozen, self.bounds = set(), {}
        self.tau_exp_range = tuple(float(v) for v in tau_exp_range)

    def _init_gate_params(self, rng):
        D, H, std, dt = self.input_size, self.hidden_size, self.init_std, self.dtype
        return {
            "Wx": rng.normal(0.0, std, (D, 4 * H)).astype(dt),
            "Wh": rng.normal(0.0, std, (H, 4 * H)).astype(dt),
            "b": np.zeros(4 * H, dt),
            "w_ci": rng.normal(0.0, std, H).astype(dt),
            "w_cf": rng.normal(0.0, std, H).astype(dt),
            "w_co": rng.normal(0.0, std, H).astype(dt),
        }

    @property
    def output_size(self):
        """Width of the hidden sequence the layer emits: ``hidden_size``."""
        return self.hidden_size

    @property
    def state_sizes(self):
        """Widths of the carried states ``(h, c)``: ``(hidden_size, hidden_size)``."""
        return (self.hidden_size, self.hidden_size)

    @property
    def gate_input_size(self):
        """D, the rows of ``Wx``: ``input_size`` (an :class:`LSTM` with ``time_input``: +1)."""
        return self.input_size

    def check_params(self, where=""):
        """Raise ValueError naming the first parameter that is missing, of another shape or
        dtype, not finite, or outside its domain (tau > 0, 0 < r_on <= 1).

        Called before every forward pass (O(H (D + H)), a small fraction of the pass), so that
        parameters set by hand (``layer.params["tau"][:] = -1``) or loaded from a file are
        refused before a kernel reads them. ``where`` prefixes the message (e.g. a file).
        """
        H, D = self.hidden_size, self.gate_input_size
        shapes = {"Wx": (D, 4 * H), "Wh": (H, 4 * H), "b": (4 * H,), "w_ci": (H,),
                  "w_cf": (H,), "w_co": (H,)}
        if not self.gate_open:
            shapes.update(tau=(H,), s=(H,), r_on=(H,))
        params = self.params
        if not isinstance(params, dict) or set(params) != set(shapes):
            got = sorted(params) if isinstance(params, dict) else type(params).__name__
            raise ValueError(f"{where}params must hold exactly {sorted(shapes)}, got {got}")
        for name, shape in shapes.items():
            check_parameter(params[name], f"{where}params[{name!r}]", shape, self.dtype)
        if not self.gate_open:
            check_timing(params["tau"], params["r_on"], where)

    @property
    def grad_clip(self):
        """The BPTT clip of the pre-activation gradients (float), or None; checked when set."""
        return self._grad_clip

    @grad_clip.setter
    def grad_clip(self, value):
        self._grad_clip = _check_grad_clip(value)

    # ------------------------------------------------------------------ running
    def gate_inputs(self, x, t):
        """The input the gates see: ``x`` itself (the LSTM baseline appends the timestamp).

        Parameters
        ----------
        x : ndarray (B, T, input_size)
        t : ndarray (B, T) float64

        Returns
        -------
        ndarray (B, T, D)
            What multiplies ``Wx``: ``D`` is ``Wx.shape[0]`` (``input_size``, or
            ``input_size + 1`` for an :class:`LSTM` with ``time_input``).
        """
        return x

    def forward(self, x, t, lengths=None, state=None, training=True):
        """Run the layer over a batch of sequences.

        Parameters
        ----------
        x : ndarray (B, T, input_size) of the layer's dtype
        t : ndarray (B, T) float64
            Per-sample, per-step timestamps.
        lengths : ndarray (B,) of ints, optional
            Valid steps per sample; later steps leave the state untouched.
        state : tuple (h0, c0) of (B, H) arrays, optional
            Initial state (zeros by default), e.g. the final state of the previous chunk.
        training : bool
            Use the leak alpha in the closed phase (True) or 0 (False, evaluation).

        Returns
        -------
        h : ndarray (B, T, H)
        state : tuple (h_T, c_T)
        cache : dict
            For :meth:`backward`; ``cache["updates"]`` counts the neuron updates computed.
        """
        x, t, lengths = check_sequence_inputs(x, t, lengths, input_size=self.input_size,
                                              dtype=self.dtype)
        h0, c0 = check_state(state, x.shape[0], self.hidden_size, self.dtype)
        return self.forward_validated(x, t, lengths, h0, c0, training)

    def forward_validated(self, x, t, lengths, h0, c0, training=True):
        """:meth:`forward` on inputs that were validated already, e.g. by a network.

        :class:`plstm_np.Network` checks its inputs once and runs every layer through this
        method, so that the layers do not check them again.

        Parameters
        ----------
        x : ndarray (B, T, input_size) of the layer's dtype
        t : ndarray (B, T) float64
        lengths : ndarray (B,) of ints
            Every argument as :func:`plstm_np.validation.check_sequence_inputs` returns it.
        h0, c0 : ndarray (B, H) of the layer's dtype
            As :func:`plstm_np.validation.check_state` returns them.
        training : bool

        Returns
        -------
        h, state, cache
            As :meth:`forward`.
        """
        self.check_params()
        backend = get_backend(self.backend)
        leak = self.leak if training else 0.0
        h, state, cache = backend.layer_forward(self.params, self.gate_inputs(x, t), t, lengths,
                                                h0, c0, leak, self.gate_open)
        cache["layer"] = dict(owner=self, shape=h.shape, dtype=h.dtype)  # what backward checks
        return h, state, cache

    def backward(self, dh, cache, dstate=None):
        """Gradients of a loss given its gradient ``dh`` (B, T, H) with respect to the outputs.

        Parameters
        ----------
        dh : ndarray (B, T, H)
        cache : dict
            From :meth:`forward`.
        dstate : tuple (dh_T, dc_T), optional
            Gradient with respect to the final state (when it feeds a later chunk).

        Returns
        -------
        dict of ndarray
            Every parameter's gradient (keys of :attr:`params`), and ``x``, ``h0``, ``c0``.
        """
        dh = check_backward(self, dh, cache)
        B, T, H = cache["layer"]["shape"]
        dtype = cache["layer"]["dtype"]
        if dstate is not None:
            dstate = check_state(dstate, B, H, dtype, name="dstate")
        backend = get_backend(cache["backend"])
        return backend.layer_backward(dh, dstate, cache, self.grad_clip)

    # ------------------------------------------------------------------ saving
    def min_kink_distance(self, t, lengths):
        """Smallest phase distance of any valid (sample, step, neuron) from a kink of the
        time gate (``inf`` with the gate forced open): finite differences of a gradient
        check must move the phase less than this."""
        if self.gate_open:
            return np.inf
        p = self.params
        return min_kink_distance(t, lengths, p["tau"], p["s"], p["r_on"])

    def config(self):
        """Hyper-parameters as a JSON-serialisable dict (parameters are saved separately)."""
        cfg = dict(
            kind=type(self).__name__, input_size=self.input_size, hidden_size=self.hidden_size,
            leak=self.leak, init_std=self.init_std, dtype=self.dtype.name, backend=self.backend,
        )
        if self.grad_clip is not None:  # absent from checkpoints written before it existed
            cfg["grad_clip"] = self.grad_clip
        if not self.gate_open:
            cfg.update(tau_exp_range=list(self.tau_exp_range), tau_min=self.tau_min,
                       r_on_min=self.r_on_min, learn_tau="tau" not in self.frozen,
                       learn_s="s" not in self.frozen, learn_r_on="r_on" not in self.frozen)
        return cfg

    def __repr__(self):
        return (f"{type(self).__name__}({self.input_size}, {self.hidden_size}, "
                f"dtype={self.dtype.name}, backend={self.backend!r})")


class TimeInput:
    """The baselines' timestamp input: mixed in before a recurrent layer class (``class
    LSTM(TimeInput, PhasedLSTM)``), it appends ``t * time_scale`` to the input features when
    the layer's ``time_input`` is set, adds the row of ``Wx`` that multiplies it (drawn like
    the others, after them) and gives back the gradient of the features only. The layer sets
    ``time_input`` and ``time_scale`` before its own initialisation."""

    def _init_gate_params(self, rng):
        params = super()._init_gate_params(rng)
        if self.time_input:
            width = params["Wx"].shape[1]
            extra = rng.normal(0.0, self.init_std, (1, width)).astype(self.dtype)
            params["Wx"] = np.concatenate([params["Wx"], extra])
        return params

    @property
    def gate_input_size(self):
        """``input_size``, + 1 with ``time_input``."""
        return self.input_size + int(self.time_input)

    def gate_inputs(self, x, t):
        """``x`` with ``t * time_scale`` appended as a last feature (when ``time_input``)."""
        return append_time(x, t, self.time_scale, self.dtype) if self.time_input else x

    def backward(self, dh, cache, dstate=None):
        grads = super().backward(dh, cache, dstate)
        if self.time_input:
            grads["x"] = np.ascontiguousarray(grads["x"][:, :, :self.input_size])
        return grads


class LSTM(TimeInput, PhasedLSTM):
    """The LSTM baseline: a :class:`PhasedLSTM` whose time gate is always open (``k = 1``).

    As in the paper, it receives the timestamp as an extra input feature (appended after
    ``x``, multiplied by ``time_scale``), so ``Wx`` has ``input_size + 1`` rows. It has no
    ``tau``, ``s``, ``r_on`` parameters.

    Parameters
    ----------
    input_size, hidden_size : int
    time_input : bool
        Append ``t * time_scale`` to the input features (default True).
    time_scale : float
        Factor applied to the timestamp feature.
    init_std, grad_clip, dtype, backend, rng
        As for :class:`PhasedLSTM`.
    """

    gate_open = True

    def __init__(self, input_size, hidden_size, *, time_input=True, time_scale=1.0,
                 init_std=0.1, grad_clip=None, dtype=np.float64, backend="numpy", rng=None):
        self.time_input = bool(time_input)
        self.time_scale = check_real(time_scale, "time_scale")
        super().__init__(input_size, hidden_size, leak=0.0, init_std=init_std,
                         grad_clip=grad_clip, dtype=dtype, backend=backend, rng=rng)

    def config(self):
        cfg = super().config()
        cfg.update(time_input=self.time_input, time_scale=self.time_scale)
        del cfg["leak"]
        return cfg
