"""The reference backend: one Phased LSTM layer, forward and hand-derived BPTT, in NumPy.

Written to be read next to the equations (row-vector convention, gate blocks [i, f, g, o])::

    z_j   = x_j Wx + h_{j-1} Wh + b
    i_j   = sigma(z_i + w_ci * c_{j-1})
    f_j   = sigma(z_f + w_cf * c_{j-1})
    g_j   = tanh(z_g)
    ct_j  = f_j * c_{j-1} + i_j * g_j                 proposed cell state  (c~)
    o_j   = sigma(z_o + w_co * ct_j)                  output peephole sees the proposed cell
    ht_j  = o_j * tanh(ct_j)                          proposed hidden state (h~)
    k_j   = time_gate(t_j, tau, s, r_on, leak)        see plstm_np.time_gate
    c_j   = k_j * ct_j + (1 - k_j) * c_{j-1}
    h_j   = k_j * ht_j + (1 - k_j) * h_{j-1}

With gradient clipping ``C`` (Lasagne's ``grad_clipping``, which the authors used), BPTT
clips the gradient of ``z_j`` elementwise to [-C, C] where it leaves the step, into ``Wx``,
``Wh``, ``b``, ``x_j`` and ``h_{j-1}``; the peephole terms are added after ``z_j`` (as in
Lasagne), so their gradients, into ``w_c*`` and ``c_{j-1}``, are not clipped.

Steps at ``j >= lengths[b]`` get ``k = 0``: that sample's state is carried unchanged.
With ``gate_open=True``, ``k = 1`` on every valid step: a peephole LSTM.

The functions here take validated arrays (see :mod:`plstm_np.layers` for the public API):
``x`` (B, T, D) and ``h0``, ``c0`` (B, H) in the parameters' dtype, ``t`` (B, T) float64,
``lengths`` (B,) int64. They never modify their inputs.
"""
from __future__ import annotations

import numpy as np

from .time_gate import time_gate_with_grads, timing_gradients
from .validation import valid_steps

__all__ = ["layer_forward", "layer_backward", "sigmoid"]


def sigmoid(a):
    """Logistic function, computed without overflow warnings for large ``|a|``."""
    e = np.exp(-np.abs(a))
    return np.where(a >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(a.dtype, copy=False)


def gate_openness(params, t, lengths, leak, gate_open, dtype):
    """Time gate ``k`` (B, T, H) in the model dtype, zero on padded steps, and its float64
    derivatives (or ``None`` when the gate is forced open)."""
    B, T = t.shape
    H = params["Wh"].shape[0]
    valid = valid_steps(lengths, T)
    if gate_open:
        return np.broadcast_to(valid[:, :, None], (B, T, H)).astype(dtype), None
    t_valid = np.where(valid, t, 0.0)[:, :, None]  # padded times may hold anything
    gate = time_gate_with_grads(t_valid, params["tau"], params["s"], params["r_on"], leak)
    k = np.where(valid[:, :, None], gate.k, 0.0)
    return k.astype(dtype), gate


def layer_forward(params, x, t, lengths, h0, c0, leak, gate_open=False):
    """Run one layer over a batch of sequences.

    Parameters
    ----------
    params : dict of ndarray
        ``Wx`` (D, 4H), ``Wh`` (H, 4H), ``b`` (4H,), ``w_ci``, ``w_cf``, ``w_co`` (H,) and,
        unless ``gate_open``, ``tau``, ``s``, ``r_on`` (H,).
    x : ndarray (B, T, D)
    t : ndarray (B, T), float64
    lengths : ndarray (B,), int64
    h0, c0 : ndarray (B, H)
    leak : float
        alpha of the closed phase.
    gate_open : bool
        Force ``k = 1``: the peephole LSTM baseline.

    Returns
    -------
    h : ndarray (B, T, H)
        Hidden state after every step (carried unchanged through padded steps).
    state : tuple (h_T, c_T)
        Final state, to carry into the next chunk.
    cache : dict
        What :func:`layer_backward` needs.
    """
    Wx, Wh, b = params["Wx"], params["Wh"], params["b"]
    w_ci, w_cf, w_co = params["w_ci"], params["w_cf"], params["w_co"]
    B, T, D = x.shape
    H = Wh.shape[0]
    dtype = Wh.dtype
    k, gate = gate_openness(params, t, lengths, leak, gate_open, dtype)
    valid = valid_steps(lengths, T)
    x = np.where(valid[:, :, None], x, 0)  # padded inputs may hold anything (even NaN)

    Zx = (x.reshape(B * T, D) @ Wx).reshape(B, T, 4 * H) + b  # input projection, all steps
    h_prev = np.empty((B, T, H), dtype)  # h_{j-1}, c_{j-1}: the state each step starts from
    c_prev = np.empty((B, T, H), dtype)
    i, f, g, o, ct = (np.empty((B, T, H), dtype) for _ in range(5))
    h_seq = np.empty((B, T, H), dtype)
    h, c = h0, c0
    for j in range(T):
        h_prev[:, j], c_prev[:, j] = h, c
        z = Zx[:, j] + h @ Wh
        zi, zf, zg, zo = z[:, :H], z[:, H:2 * H], z[:, 2 * H:3 * H], z[:, 3 * H:]
        i[:, j] = sigmoid(zi + w_ci * c)
        f[:, j] = sigmoid(zf + w_cf * c)
        g[:, j] = np.tanh(zg)
        ct[:, j] = f[:, j] * c + i[:, j] * g[:, j]
        o[:, j] = sigmoid(zo + w_co * ct[:, j])
        ht = o[:, j] * np.tanh(ct[:, j])
        kj = k[:, j]
        c = kj * ct[:, j] + (1 - kj) * c
        h = kj * ht + (1 - kj) * h
        h_seq[:, j] = h
    cache = dict(
        backend="numpy", params=params, x=x, k=k, gate=gate, valid=valid,
        h_prev=h_prev, c_prev=c_prev, i=i, f=f, g=g, o=o, ct=ct,
        updates=int(lengths.sum()) * H,
    )
    return h_seq, (h, c), cache


def layer_backward(dh_seq, dstate, cache, grad_clip=None):
    """Backpropagation through time for :func:`layer_forward`.

    Parameters
    ----------
    dh_seq : ndarray (B, T, H)
        Gradient of the loss with respect to every step's output ``h``.
    dstate : tuple (dh_T, dc_T) or None
        Gradient with respect to the final state (from a later chunk), or None for zero.
    cache : dict
        From :func:`layer_forward`.
    grad_clip : float or None
        Clip each step's pre-activation gradient to [-grad_clip, grad_clip] (see the module
        docstring); None: no clipping.

    Returns
    -------
    dict of ndarray
        Gradients of every parameter (same keys as ``params``) and of ``x``, ``h0``, ``c0``.
    """
    params, x, k = cache["params"], cache["x"], cache["k"]
    i, f, g, o, ct = cache["i"], cache["f"], cache["g"], cache["o"], cache["ct"]
    h_prev, c_prev = cache["h_prev"], cache["c_prev"]
    Wx, Wh = params["Wx"], params["Wh"]
    w_ci, w_cf, w_co = params["w_ci"], params["w_cf"], params["w_co"]
    B, T, H = ct.shape
    D = x.shape[2]
    dtype = Wh.dtype

    dZ = np.empty((B, T, 4 * H), dtype)  # gradient of the gate pre-activations z_j
    dk = np.empty((B, T, H), dtype)  # gradient of the time gate openness k_j
    dw_ci, dw_cf, dw_co = np.zeros(H, dtype), np.zeros(H, dtype), np.zeros(H, dtype)
    if dstate is None:
        dh, dc = np.zeros((B, H), dtype), np.zeros((B, H), dtype)
    else:
        dh, dc = dstate[0].copy(), dstate[1].copy()
    for j in reversed(range(T)):
        dh = dh + dh_seq[:, j]
        kj, hp, cp = k[:, j], h_prev[:, j], c_prev[:, j]
        ij, fj, gj, oj, ctj = i[:, j], f[:, j], g[:, j], o[:, j], ct[:, j]
        tanh_ct = np.tanh(ctj)
        ht = oj * tanh_ct
        # c = k ct + (1 - k) cp,  h = k ht + (1 - k) hp
        dk[:, j] = dc * (ctj - cp) + dh * (ht - hp)
        dct = dc * kj
        dht = dh * kj
        dcp = dc * (1 - kj)
        dhp = dh * (1 - kj)
        # ht = o tanh(ct),  o = sigma(z_o + w_co ct)
        do = dht * tanh_ct
        dct = dct + dht * oj * (1 - tanh_ct * tanh_ct)
        dz_o = do * oj * (1 - oj)
        dct = dct + dz_o * w_co
        dw_co += (dz_o * ctj).sum(0)
        # ct = f cp + i g
        dz_i = dct * gj * ij * (1 - ij)
        dz_f = dct * cp * fj * (1 - fj)
        dz_g = dct * ij * (1 - gj * gj)
        dcp = dcp + dct * fj + dz_i * w_ci + dz_f * w_cf
        dw_ci += (dz_i * cp).sum(0)
        dw_cf += (dz_f * cp).sum(0)
        dz = np.concatenate([dz_i, dz_f, dz_g, dz_o], axis=1)
        if grad_clip is not None:  # after the peepholes took their (unclipped) share
            dz = np.clip(dz, -grad_clip, grad_clip)
        dZ[:, j] = dz
        dh = dhp + dz @ Wh.T  # the one recurrent product per step
        dc = dcp

    dZ2 = dZ.reshape(B * T, 4 * H)  # weight gradients: one product over all steps
    grads = {
        "Wx": x.reshape(B * T, D).T @ dZ2,
        "Wh": h_prev.reshape(B * T, H).T @ dZ2,
        "b": dZ2.sum(0),
        "w_ci": dw_ci,
        "w_cf": dw_cf,
        "w_co": dw_co,
        "x": (dZ2 @ Wx.T).reshape(B, T, D),
        "h0": dh,
        "c0": dc,
    }
    gate = cache["gate"]
    if gate is not None:  # chain rule through k(t, tau, s, r_on); padded steps have k = 0
        grads.update(timing_gradients(dk, gate, cache["valid"], dtype))
    return grads
