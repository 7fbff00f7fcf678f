"""The Phased GRU: a GRU (Cho et al. 2014) behind the time gate of the Phased LSTM.

Row-vector convention; gate blocks [r, z, n] in ``Wx`` (D, 3H), ``Wh`` (H, 3H), ``b`` (3H,)::

    r_j   = sigma(x_j Wx_r + h_{j-1} Wh_r + b_r)              reset gate
    z_j   = sigma(x_j Wx_z + h_{j-1} Wh_z + b_z)              update gate
    n_j   = tanh(x_j Wx_n + (r_j * h_{j-1}) Wh_n + b_n)       candidate (reset before Wh_n)
    ht_j  = (1 - z_j) * n_j + z_j * h_{j-1}                   the GRU's proposed state h~
    k_j   = time_gate(t_j, tau, s, r_on, leak)                see plstm_np.time_gate
    h_j   = k_j * ht_j + (1 - k_j) * h_{j-1}

As in the Phased LSTM, the gates see the previous, time-gated state; steps at
``j >= lengths[b]`` get ``k = 0`` (the state is carried unchanged). :class:`GRU` is the
same layer with the gate forced open (``k = 1`` on every valid step), which receives the
timestamp ``t * time_scale`` as an extra input feature (like :class:`plstm_np.LSTM`).

BPTT, one step back, with ``dh`` the gradient of the loss with respect to ``h_j``::

    dk    = dh * (ht - h_{j-1})                 -> tau, s, r_on through dk/dtau, dk/ds, dk/dr_on
    dht   = dh * k
    dn    = dht * (1 - z),    da_n = dn * (1 - n**2)
    dz    = dht * (h_{j-1} - n),    da_z = dz * z * (1 - z)
    d(rh) = da_n Wh_n^T,      dr = d(rh) * h_{j-1},    da_r = dr * r * (1 - r)
    dh_{j-1} = dh * (1 - k) + dht * z + d(rh) * r + [da_r, da_z] [Wh_r, Wh_z]^T
    dWx += x_j^T da,  db += da,  dx_j = da Wx^T           (da = [da_r, da_z, da_n])
    dWh_r,z += h_{j-1}^T [da_r, da_z],   dWh_n += (r * h_{j-1})^T da_n

A neuron is *updated* at a valid step (its gate values computed) unless it is on the closed
piece of its gate with ``leak = 0``: there ``k = 0`` and every derivative of ``k`` is 0, so
``h`` is carried unchanged and nothing needs differentiating. ``cache["updates"]`` counts the
updated (sample, step, neuron) triples: with ``leak = 0`` (evaluation) the neurons whose phase
is on an open piece, ``phi < r_on``; with ``leak > 0`` or the gate forced open, every valid
triple. (This is the count of ``k != 0`` except at a phase of exactly 0, where ``k = 0`` on
the rising piece but ``dk/dtau != 0``: such a neuron is updated, for its timing gradient.)
The reset gate differs: ``(r * h_{j-1}) Wh_n`` mixes every neuron's ``r`` into each updated
neuron's candidate, so at a step where any neuron is updated, every neuron's ``r`` is
computed (``cache["reset_gates"]`` counts them); at a step where none is, nothing is.

Backends: ``numpy`` (:func:`gru_forward`, :func:`gru_backward`, below) and ``numba``
(:mod:`plstm_np.backends.numba.gru_kernels`, which skips the closed neurons' update and
candidate gates) and ``cuda`` (:mod:`plstm_np.backends.cuda.gru_kernels`): the forward only,
for inference; the backward of a ``cuda`` forward raises NotImplementedError.
"""
from __future__ import annotations

import numpy as np

from .backends import check_backend, get_backend
from .layers import PhasedLSTM, TimeInput
from .optim import R_ON_MIN, TAU_MIN
from .reference import sigmoid
from .time_gate import phase, time_gate_with_grads, timing_gradients
from .validation import (
    as_rng,
    check_backward,
    check_dtype,
    check_layer_state,
    check_parameter,
    check_positive_int,
    check_real,
    check_sequence_inputs,
    check_tau_exp_range,
    check_timing,
    per_neuron,
    valid_steps,
)

__all__ = ["PhasedGRU", "GRU", "gru_forward", "gru_backward"]


# ---------------------------------------------------------------------- NumPy reference
def gru_forward(params, x, t, lengths, h0, leak, gate_open=False):
    """Run one (Phased) GRU layer over a batch, in plain NumPy (the reference).

    Parameters
    ----------
    params : dict of ndarray
        ``Wx`` (D, 3H), ``Wh`` (H, 3H), ``b`` (3H,) with gate blocks [r, z, n] and, unless
        ``gate_open``, ``tau``, ``s``, ``r_on`` (H,).
    x : ndarray (B, T, D)
    t : ndarray (B, T) float64
    lengths : ndarray (B,) int64
    h0 : ndarray (B, H)
    leak : float
        alpha of the closed phase.
    gate_open : bool
        Force ``k = 1`` on valid steps (the plain GRU).

    Returns
    -------
    h : ndarray (B, T, H)
        The state after every step (the carried state on padded steps).
    h_T : ndarray (B, H)
        The state at each sample's last valid step.
    cache : dict
        For :func:`gru_backward`; ``cache["updates"]`` counts the updated neuron-steps (see
        the module docstring).
    """
    Wx, Wh, b = params["Wx"], params["Wh"], params["b"]
    B, T, D = x.shape
    H = Wh.shape[0]
    dtype = Wh.dtype
    valid = valid_steps(lengths, T)
    x = np.where(valid[:, :, None], x, 0).astype(dtype, copy=False)  # padding: anything
    if gate_open:
        k = np.broadcast_to(valid[:, :, None], (B, T, H)).astype(dtype)
        gate = None
        updated = np.broadcast_to(valid[:, :, None], (B, T, H))
    else:
        t_valid = np.where(valid, t, 0.0)[:, :, None]
        gate = time_gate_with_grads(t_valid, params["tau"], params["s"], params["r_on"], leak)
        k = np.where(valid[:, :, None], gate.k, 0.0).astype(dtype)
        on_open_piece = phase(t_valid, params["tau"], params["s"]) < params["r_on"]
        updated = valid[:, :, None] & (on_open_piece | (leak > 0))

    Wh_rz, Wh_n = Wh[:, :2 * H], Wh[:, 2 * H:]
    Zx = (x.reshape(B * T, D) @ Wx).reshape(B, T, 3 * H) + b  # input projections, all steps
    h_prev = np.empty((B, T, H), dtype)  # h_{j-1}: the state each step starts from
    r, z, n, rh = (np.empty((B, T, H), dtype) for _ in range(4))
    h_seq = np.empty((B, T, H), dtype)
    h = h0
    for j in range(T):
        h_prev[:, j] = h
        a_rz = Zx[:, j, :2 * H] + h @ Wh_rz
        r[:, j] = sigmoid(a_rz[:, :H])
        z[:, j] = sigmoid(a_rz[:, H:])
        rh[:, j] = r[:, j] * h
        n[:, j] = np.tanh(Zx[:, j, 2 * H:] + rh[:, j] @ Wh_n)
        ht = (1 - z[:, j]) * n[:, j] + z[:, j] * h
        kj = k[:, j]
        h = kj * ht + (1 - kj) * h
        h_seq[:, j] = h
    steps_any = updated.any(axis=2)  # steps at which the reset gates are needed
    cache = dict(backend="numpy", params=params, x=x, k=k, gate=gate, valid=valid,
                 h_prev=h_prev, r=r, z=z, n=n, rh=rh,
                 updates=int(updated.sum()), reset_gates=int(steps_any.sum()) * H)
    return h_seq, h, cache


def gru_backward(dh_seq, dh_T, cache):
    """Backpropagation through time for :func:`gru_forward`.

    Parameters
    ----------
    dh_seq : ndarray (B, T, H)
        Gradient of the loss with respect to every step's output ``h``.
    dh_T : ndarray (B, H) or None
        Gradient with respect to the final state (None: zero).
    cache : dict
        From :func:`gru_forward`.

    Returns
    -------
    dict of ndarray
        Gradients of every parameter (the keys of ``params``), ``x`` and ``h0``.
    """
    params, x, k = cache["params"], cache["x"], cache["k"]
    r, z, n, rh, h_prev = cache["r"], cache["z"], cache["n"], cache["rh"], cache["h_prev"]
    Wx, Wh = params["Wx"], params["Wh"]
    B, T, H = z.shape
    D = x.shape[2]
    dtype = Wh.dtype
    Wh_rz, Wh_n = Wh[:, :2 * H], Wh[:, 2 * H:]

    dA = np.empty((B, T, 3 * H), dtype)  # gradient of the pre-activations [a_r, a_z, a_n]
    dk = np.empty((B, T, H), dtype)  # gradient of the openness k_j
    dh = np.zeros((B, H), dtype) if dh_T is None else dh_T.copy()
    for j in reversed(range(T)):
        dh = dh + dh_seq[:, j]
        kj, hp, rj, zj, nj = k[:, j], h_prev[:, j], r[:, j], z[:, j], n[:, j]
        ht = (1 - zj) * nj + zj * hp
        # h = k ht + (1 - k) hp
        dk[:, j] = dh * (ht - hp)
        dht = dh * kj
        dhp = dh * (1 - kj) + dht * zj
        # ht = (1 - z) n + z hp
        dn = dht * (1 - zj)
        dz = dht * (hp - nj)
        da_n = dn * (1 - nj * nj)
        da_z = dz * zj * (1 - zj)
        # n = tanh(x Wx_n + (r hp) Wh_n + b_n)
        drh = da_n @ Wh_n.T
        dr = drh * hp
        dhp = dhp + drh * rj
        da_r = dr * rj * (1 - rj)
        da_rz = np.concatenate([da_r, da_z], axis=1)
        dA[:, j] = np.concatenate([da_rz, da_n], axis=1)
        dh = dhp + da_rz @ Wh_rz.T

    dA2 = dA.reshape(B * T, 3 * H)
    dWh = np.concatenate([h_prev.reshape(B * T, H).T @ dA2[:, :2 * H],
                          rh.reshape(B * T, H).T @ dA2[:, 2 * H:]], axis=1)
    grads = {
        "Wx": x.reshape(B * T, D).T @ dA2,
        "Wh": dWh,
        "b": dA2.sum(0),
        "x": (dA2 @ Wx.T).reshape(B, T, D),
        "h0": dh,
    }
    gate = cache["gate"]
    if gate is not None:  # chain rule through k(t, tau, s, r_on); padded steps have k = 0
        grads.update(timing_gradients(dk, gate, cache["valid"], dtype))
    return grads


# ---------------------------------------------------------------------- layers
class PhasedGRU:
    """A Phased GRU layer: the GRU of Cho et al. (2014) behind a Phased LSTM time gate.

    Parameters
    ----------
    input_size, hidden_size : int
        D and H.
    tau_exp_range : (float, float)
        Periods are initialised as ``tau = exp(U(lo, hi))`` unless ``tau`` is given.
    tau, s : float or ndarray (H,), optional
        Hand-set per-neuron period and shift; ``s`` defaults to ``U(0, tau)``.
    r_on : float or ndarray (H,)
        Open ratio, 0 < r_on <= 1 (default 0.05).
    leak : float
        alpha, the closed-phase leak while ``training=True`` (default 1e-3); evaluation uses 0.
    learn_tau, learn_s, learn_r_on : bool
        Which timing parameters the optimizer updates (gradients are computed for all).
    tau_min, r_on_min : float
        Bounds the optimizer keeps: ``tau >= tau_min``, ``r_on_min <= r_on <= 1``.
    init_std : float
        Standard deviation of the normal init of ``Wx`` and ``Wh``; biases start at 0.
    dtype : float32 or float64
    backend : {'numpy', 'numba', 'cuda'}
        'cuda' runs the forward only (inference); its backward raises NotImplementedError.
    rng : numpy.random.Generator, int or None

    Attributes
    ----------
    params : dict of ndarray
        ``Wx`` (D, 3H), ``Wh`` (H, 3H), ``b`` (3H,) with gate blocks [r, z, n];
        ``tau``, ``s``, ``r_on`` (H,).
    frozen : set of str
    bounds : dict
    """

    gate_open = False
    #: The carried state, in the order ``forward_validated`` takes and returns it.
    state_names = ("h",)
    #: :meth:`plstm_np.Network.stream` runs it packet by packet (its evaluation forward).
    streamable = True

    def __init__(self, input_size, hidden_size, *, tau_exp_range=(0.0, 3.0), tau=None, s=None,
                 r_on=0.05, leak=1e-3, learn_tau=True, learn_s=True, learn_r_on=False,
                 tau_min=TAU_MIN, r_on_min=R_ON_MIN, init_std=0.1, dtype=np.float64,
                 backend="numpy", rng=None):
        self.input_size = check_positive_int(input_size, "input_size")
        self.hidden_size = H = check_positive_int(hidden_size, "hidden_size")
        self.dtype = check_dtype(dtype)
        self.backend = backend
        self.leak = check_real(leak, "leak", low=0.0)
        if not self.leak < 1.0:
            raise ValueError(f"leak must lie in [0, 1), got {leak}")
        if not (check_real(tau_min, "tau_min") > 0
                and 0 < check_real(r_on_min, "r_on_min") <= 1):
            raise ValueError(f"tau_min must be > 0 and r_on_min in (0, 1], "
                             f"got {tau_min}, {r_on_min}")
        self.tau_min, self.r_on_min = float(tau_min), float(r_on_min)
        self.init_std = check_real(init_std, "init_std", low=0.0)
        rng = as_rng(rng)
        self.params = self._init_gate_params(rng)
        self.tau_exp_range = check_tau_exp_range(tau_exp_range)
        if self.gate_open:
            self.frozen, self.bounds = set(), {}
            return
        lo, hi = self.tau_exp_range
        tau = np.exp(rng.uniform(lo, hi, H)) if tau is None else tau
        tau = per_neuron(tau, H, "tau", np.float64)
        r_on = per_neuron(r_on, H, "r_on", np.float64)
        check_timing(tau, r_on)
        s = per_neuron(rng.uniform(0.0, tau) if s is None else s, H, "s", np.float64)
        if not np.all(np.isfinite(s)):
            raise ValueError("s must be finite")
        self.params.update(tau=tau.astype(self.dtype), s=s.astype(self.dtype),
                           r_on=r_on.astype(self.dtype))
        self.frozen = {name for name, learn in
                       (("tau", learn_tau), ("s", learn_s), ("r_on", learn_r_on)) if not learn}
        self.bounds = {"tau": (self.tau_min, np.inf), "r_on": (self.r_on_min, 1.0)}

    def _init_gate_params(self, rng):
        D, H, std, dt = self.input_size, self.hidden_size, self.init_std, self.dtype
        return {
            "Wx": rng.normal(0.0, std, (D, 3 * H)).astype(dt),
            "Wh": rng.normal(0.0, std, (H, 3 * H)).astype(dt),
            "b": np.zeros(3 * H, dt),
        }

    @property
    def backend(self):
        """'numpy', 'numba' or 'cuda' (forward only)."""
        return self._backend

    @backend.setter
    def backend(self, name):
        self._backend = check_backend(name)

    @property
    def output_size(self):
        """Width of the hidden sequence the layer emits: ``hidden_size``."""
        return self.hidden_size

    @property
    def state_sizes(self):
        """Widths of the carried states ``(h,)``: ``(hidden_size,)``."""
        return (self.hidden_size,)

    @property
    def gate_input_size(self):
        """D, the rows of ``Wx``: ``input_size`` (a :class:`GRU` with ``time_input``: +1)."""
        return self.input_size

    def check_params(self, where=""):
        """Raise ValueError naming the first parameter that is missing, of another shape or
        dtype, not finite, or outside its domain (tau > 0, 0 < r_on <= 1); ``where``
        prefixes the message."""
        H, D = self.hidden_size, self.gate_input_size
        shapes = {"Wx": (D, 3 * H), "Wh": (H, 3 * H), "b": (3 * H,)}
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

    def gate_inputs(self, x, t):
        """What multiplies ``Wx``: ``x`` itself (a :class:`GRU` appends the timestamp)."""
        return x

    def _kernels(self, backend):
        """The forward and backward functions of ``backend``."""
        if backend == "numpy":
            return gru_forward, gru_backward
        compiled = get_backend(backend)  # loads Numba (or numba.cuda) on first use only
        return compiled.gru_forward, compiled.gru_backward

    def forward(self, x, t, lengths=None, state=None, training=True):
        """Run the layer over a batch of sequences.

        Parameters
        ----------
        x : ndarray (B, T, input_size) of the layer's dtype
        t : ndarray (B, T) float64
            Per-sample, per-step timestamps.
        lengths : ndarray (B,) of ints, optional
            Valid steps per sample; later steps leave the state untouched.
        state : tuple (h0,), optional
            Initial state, (B, H) (zeros by default).
        training : bool
            Use the leak alpha in the closed phase (True) or 0 (False, evaluation).

        Returns
        -------
        h : ndarray (B, T, H)
        state : tuple (h_T,)
        cache : dict
            For :meth:`backward`; ``cache["updates"]`` counts the neuron updates computed.
        """
        x, t, lengths = check_sequence_inputs(x, t, lengths, input_size=self.input_size,
                                              dtype=self.dtype)
        (h0,) = check_layer_state(state, x.shape[0], ("h",), (self.hidden_size,), self.dtype)
        return self.forward_validated(x, t, lengths, h0, training=training)

    def forward_validated(self, x, t, lengths, h0, training=True):
        """:meth:`forward` on validated inputs (as a network passes them).

        Parameters
        ----------
        x, t, lengths
            As :func:`plstm_np.validation.check_sequence_inputs` returns them.
        h0 : ndarray (B, H) of the layer's dtype
        training : bool

        Returns
        -------
        h, state, cache
            As :meth:`forward`.
        """
        forward, _ = self._kernels(self.backend)
        self.check_params()
        leak = self.leak if training else 0.0
        h, hT, cache = forward(self.params, self.gate_inputs(x, t), t, lengths, h0, leak,
                               self.gate_open)
        cache["layer"] = dict(owner=self, shape=h.shape, dtype=h.dtype)
        return h, (hT,), cache

    def backward(self, dh, cache, dstate=None):
        """Gradients of a loss given its gradient ``dh`` (B, T, H) with respect to the outputs.

        Parameters
        ----------
        dh : ndarray (B, T, H)
        cache : dict
            From :meth:`forward` of this layer.
        dstate : tuple (dh_T,), optional
            Gradient with respect to the final state.

        Returns
        -------
        dict of ndarray
            Every parameter's gradient (keys of :attr:`params`), ``x`` and ``h0``.
        """
        dh = check_backward(self, dh, cache)
        B, T, H = cache["layer"]["shape"]
        dtype = cache["layer"]["dtype"]
        dhT = (None if dstate is None
               else check_layer_state(dstate, B, ("h",), (H,), dtype, "dstate")[0])
        _, backward = self._kernels(cache["backend"])
        return backward(dh, dhT, cache)

    min_kink_distance = PhasedLSTM.min_kink_distance  # the same time gate

    def config(self):
        """Hyper-parameters as a JSON-serialisable dict (parameters are saved separately)."""
        cfg = dict(kind=type(self).__name__, input_size=self.input_size,
                   hidden_size=self.hidden_size, leak=self.leak, init_std=self.init_std,
                   dtype=self.dtype.name, backend=self.backend,
                   tau_exp_range=list(self.tau_exp_range), tau_min=self.tau_min,
                   r_on_min=self.r_on_min, learn_tau="tau" not in self.frozen,
                   learn_s="s" not in self.frozen, learn_r_on="r_on" not in self.frozen)
        return cfg

    def __repr__(self):
        return (f"{type(self).__name__}({self.input_size}, {self.hidden_size}, "
                f"dtype={self.dtype.name}, backend={self.backend!r})")


class GRU(TimeInput, PhasedGRU):
    """The GRU baseline: a :class:`PhasedGRU` whose time gate is always open (``k = 1``).

    It receives the timestamp as an extra input feature (``t * time_scale`` appended after
    ``x``, as :class:`plstm_np.LSTM` does), so ``Wx`` has ``input_size + 1`` rows; it has no
    ``tau``, ``s``, ``r_on``.

    Parameters
    ----------
    input_size, hidden_size : int
    time_input : bool
        Append ``t * time_scale`` to the input features (default True).
    time_scale : float
        Factor applied to the timestamp feature.
    init_std, dtype, backend, rng
        As for :class:`PhasedGRU`.
    """

    gate_open = True

    def __init__(self, input_size, hidden_size, *, time_input=True, time_scale=1.0,
                 init_std=0.1, dtype=np.float64, backend="numpy", rng=None):
        if not isinstance(time_input, (bool, np.bool_)):
            raise TypeError(f"time_input must be True or False, got {time_input!r}")
        self.time_input = bool(time_input)
        self.time_scale = check_real(time_scale, "time_scale")
        super().__init__(input_size, hidden_size, leak=0.0, init_std=init_std, dtype=dtype,
                         backend=backend, rng=rng)

    def config(self):
        return dict(kind=type(self).__name__, input_size=self.input_size,
                    hidden_size=self.hidden_size, time_input=self.time_input,
                    time_scale=self.time_scale, init_std=self.init_std,
                    dtype=self.dtype.name, backend=self.backend)
