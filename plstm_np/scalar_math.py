"""Scalar maths of one neuron, written once for every compiled target.

The time gate (phase, pieces, openness and its derivatives) and the cell of one neuron,
forward (:func:`cell_forward`) and one step of BPTT (:func:`cell_backward`), in the
symbols of ``../shared/DESIGN.md`` (z_i, z_f, z_g, z_o the gate pre-activations, c~ = ``ct``
the proposed cell, ``tanh_ct`` = tanh(c~)). They are plain Python on ``math`` only, so the
tests can compare them with the vectorised reference (:mod:`plstm_np.reference`,
:mod:`plstm_np.time_gate`), and each backend compiles them for its target:

- the CUDA backend with ``cuda.jit(device=True)``, these functions as they are;
- the Numba CPU backend with ``njit(inline="always")``, the cell's ``sigmoid`` and ``tanh``
  bound to its own (one ``exp`` each, vectorisable in float32: see
  :mod:`plstm_np.backends.numba.cell_math`), and its own phase and gate, which use
  precomputed reciprocals and selects but the same pieces (:func:`gate_piece`).

``one`` is 1 in the model's dtype: a float literal would widen float32 maths to float64 in
compiled code. Helpers that call other helpers are re-bound by each backend to the compiled
versions (they call each other through their module globals).
"""
import math


def sigmoid(a, one=1.0):
    """Logistic function without overflow for large ``|a|``."""
    if a >= 0.0:
        return one / (one + math.exp(-a))
    e = math.exp(a)
    return e / (one + e)


def tanh(a, one=1.0):
    """tanh (``one`` unused: libm's tanh keeps the argument's precision)."""
    return math.tanh(a)


def phase(t, tau, s):
    """``((t - s) mod tau) / tau`` in [0, 1), floor-mod semantics (float64 arguments), with
    the exact range reduction of :func:`plstm_np.time_gate.phase` (bitwise equal to it)."""
    d = math.fmod(t, tau) - math.fmod(s, tau)  # both exact; d in (-2 tau, 2 tau)
    if d < 0.0:
        d += tau
        if d < 0.0:
            d += tau
    if d >= tau:
        d -= tau
        if d >= tau:
            d -= tau
    phi = d / tau
    if phi >= 1.0:  # a tiny negative d rounds up to tau: that is phase 0
        phi = 0.0
    return phi


def gate_piece(phi, r_on):
    """Which piece of the time gate ``phi`` lies on: 0 rising, 1 falling, 2 closed."""
    if 2.0 * phi < r_on:  # exact, where 0.5 * r_on may round
        return 0
    if phi < r_on:
        return 1
    return 2


def gate_openness(phi, r_on, leak):
    """Openness ``k`` at phase ``phi``."""
    piece = gate_piece(phi, r_on)
    if piece == 0:
        return 2.0 * phi / r_on
    if piece == 1:
        return 2.0 - 2.0 * phi / r_on
    return leak * phi


def gate_dk_dphi(phi, r_on, leak):
    """``dk/dphi`` on the piece ``phi`` lies on."""
    piece = gate_piece(phi, r_on)
    if piece == 0:
        return 2.0 / r_on
    if piece == 1:
        return -2.0 / r_on
    return leak


def gate_dk_dr_on(phi, r_on):
    """``dk/dr_on`` on the piece ``phi`` lies on (as ``(2 phi / r_on) / r_on``: r_on**2
    underflows for r_on < 1e-154)."""
    piece = gate_piece(phi, r_on)
    if piece == 0:
        return -(2.0 * phi / r_on) / r_on
    if piece == 1:
        return (2.0 * phi / r_on) / r_on
    return 0.0


def cell_forward(z_i, z_f, z_g, z_o, c_prev, w_ci, w_cf, w_co, one=1.0):
    """The proposed update of one neuron from its gate pre-activations and ``c_{j-1}``.

    Returns
    -------
    i, f, g, o, ct, tanh_ct
        The gates, the proposed cell c~ and tanh(c~); the proposed hidden state is
        ``o * tanh_ct``.
    """
    i = sigmoid(z_i + w_ci * c_prev, one)
    f = sigmoid(z_f + w_cf * c_prev, one)
    g = tanh(z_g, one)
    ct = f * c_prev + i * g
    o = sigmoid(z_o + w_co * ct, one)
    return i, f, g, o, ct, tanh(ct, one)


def cell_backward(dh, dc, k, i, f, g, o, ct, tanh_ct, c_prev, h_prev, w_ci, w_cf, w_co,
                  one=1.0):
    """One neuron's step of BPTT through ``c = k c~ + (1 - k) c_{j-1}``, ``h = k o tanh(c~)
    + (1 - k) h_{j-1}`` and the cell.

    ``dh``, ``dc`` are the gradients of the state after the step. Returns ``dz_i, dz_f,
    dz_g, dz_o`` (the pre-activations' gradients), ``dc_prev`` (complete) and ``dh_prev``
    (less the recurrent term ``dz Wh^T``, which the caller adds), and ``dk``, the gradient
    of the openness (for the timing parameters: ``dk * dk/dtau`` ...). The peepholes'
    gradients are ``dz_i * c_prev``, ``dz_f * c_prev``, ``dz_o * ct``.
    """
    dk = dc * (ct - c_prev) + dh * (o * tanh_ct - h_prev)
    dz_o = dh * k * tanh_ct * o * (one - o)
    dct = dc * k + dh * k * o * (one - tanh_ct * tanh_ct) + dz_o * w_co
    dz_i = dct * g * i * (one - i)
    dz_f = dct * c_prev * f * (one - f)
    dz_g = dct * i * (one - g * g)
    dc_prev = dc * (one - k) + dct * f + dz_i * w_ci + dz_f * w_cf
    dh_prev = dh * (one - k)
    return dz_i, dz_f, dz_g, dz_o, dc_prev, dh_prev, dk
