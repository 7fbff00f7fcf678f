"""Scalar gate math in plain Python, for scalar code and the GPU kernels.

The GPU kernels compile these with ``numba.cuda.jit(device=True)``; they are also plain
Python functions, so tests can compare them with the vectorised reference
(:mod:`plstm_np.time_gate`). Only ``math`` is used. Helpers that call other helpers are
re-bound by the GPU backend to the compiled versions. The Numba CPU kernels share
:func:`gate_piece` and use variants of the rest that vectorise better
(:mod:`plstm_np.numba_backend`: a phase with one division, the gate with precomputed
reciprocals); the backend tests compare them with the reference.
"""
import math


def sigmoid(a):
    """Logistic function without overflow for large ``|a|``."""
    if a >= 0.0:
        return 1.0 / (1.0 + math.exp(-a))
    e = math.exp(a)
    return e / (1.0 + e)


def phase(t, tau, s):
    """``((t - s) mod tau) / tau`` in [0, 1), floor-mod semantics (float64 arguments)."""
    # float % is fmod plus numpy.mod's sign fix-up, in Python, Numba and CUDA alike, so the
    # result is bitwise equal to plstm_np.time_gate.phase
    phi = ((t - s) % tau) / tau
    if phi >= 1.0:  # a tiny negative remainder rounds up to tau: that is phase 0
        phi = 0.0
    return phi


def gate_piece(phi, r_on):
    """Which piece of the time gate ``phi`` lies on: 0 rising, 1 falling, 2 closed."""
    if phi < 0.5 * r_on:
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
    """``dk/dr_on`` on the piece ``phi`` lies on."""
    piece = gate_piece(phi, r_on)
    if piece == 0:
        return -2.0 * phi / (r_on * r_on)
    if piece == 1:
        return 2.0 * phi / (r_on * r_on)
    return 0.0
