"""The Numba backend's scalar maths: the phase, the time gate, exp, sigmoid, tanh, the cell.

Each function is a ``@njit`` helper inlined into the kernels (see
:mod:`~plstm_np.backends.numba.compile`). The cell's equations are not restated here: the
proposed update of one neuron is :func:`plstm_np.scalar_math.cell_forward`, and the step of
BPTT through it :func:`plstm_np.scalar_math.cell_backward`, compiled here with this
module's :func:`sigmoid` and :func:`tanh` (:func:`cell`, :func:`cell_grads`).

What is specific to the CPU is how the elementary functions are computed:

- The phase is float64, bitwise equal to :func:`plstm_np.time_gate.phase`, its exact range
  reduction from fused multiply-adds instead of floating-point ``fmod`` calls (:func:`phase`).
- The gate and its derivatives multiply by precomputed reciprocals (:func:`gate_constants`),
  within an ulp of the divisions, and choose their piece by selects rather than branches
  (the rising and falling pieces alternate unpredictably), on the pieces that
  :func:`plstm_np.scalar_math.gate_piece` defines.
- Gate maths runs in the model dtype (``one`` is 1 in that dtype: a float literal would
  widen float32 maths to float64), with sigmoid and tanh built on one ``exp`` each; in
  float32 ``exp`` is an inlined polynomial LLVM can vectorise (:func:`exp`).
"""
from __future__ import annotations

import math
import types

import numba
import numpy as np
from numba.extending import overload

from ... import scalar_math
from .compile import FASTMATH, device, exact
from .intrinsics import fma, two_to_biased

__all__ = ["FAST_QUOTIENT", "phase", "phase_inline", "phase_fast", "phase_fast_inline",
           "gate_piece", "openness", "dk_dphi", "dk_dr_on",
           "dk_dtau_ds", "gate_constants", "exp", "sigmoid", "tanh", "cell", "cell_grads",
           "copy", "dot"]


#: Below this ``|x / tau|`` the quotient estimate ``trunc(x * inv_tau)`` of
#: :func:`_fmod_fast` is at most one off; above it :func:`phase` calls ``fmod`` itself.
FAST_QUOTIENT = 2.0 ** 50


def _fmod_fast(x, tau, inv_tau):
    """``fmod(x, tau)``, exactly, for ``|x / tau| < FAST_QUOTIENT``.

    ``fmod(x, tau)`` is exactly ``x - q tau`` with ``q = trunc(x / tau)``, a representable
    number, so one fused multiply-add computes it without rounding once ``q`` is right; the
    estimate ``trunc(x * inv_tau)`` can be one off, which the sign or size of the remainder
    reveals. Selects rather than branches, so that loops of phases can vectorise.
    """
    q = math.trunc(x * inv_tau)
    r = fma(-q, tau, x)
    if x >= 0.0:
        q = q - 1.0 if r < 0.0 else (q + 1.0 if r >= tau else q)
    else:
        q = q + 1.0 if r > 0.0 else (q - 1.0 if r <= -tau else q)
    return fma(-q, tau, x)


_fmod_fast = exact(_fmod_fast, inline=True)


def _phase_from(d, tau):
    """The phase from ``d = fmod(t, tau) - fmod(s, tau)`` in (-2 tau, 2 tau): floor-mod
    into [0, tau), one division."""
    d = d + tau if d < 0.0 else d
    d = d + tau if d < 0.0 else d
    d = d - tau if d >= tau else d
    d = d - tau if d >= tau else d
    phi = d / tau
    return 0.0 if phi >= 1.0 else phi  # a tiny negative d rounds up to tau: phase 0


_phase_from = exact(_phase_from, inline=True)


def phase_fast(t, tau, inv_tau, s_mod):
    """:func:`phase` from ``s_mod = fmod(s, tau)``, where ``|t / tau|`` is below
    :data:`FAST_QUOTIENT` (the kernels check it for a whole row of neurons at once: ``|t| <
    t_fast`` of :func:`gate_constants`, which also gives ``s_mod``): selects only, so that
    loops of phases vectorise."""
    return _phase_from(_fmod_fast(t, tau, inv_tau) - s_mod, tau)


def phase(t, tau, inv_tau, s):
    """``((t - s) mod tau) / tau`` in [0, 1), bitwise equal to :func:`plstm_np.time_gate.phase`
    (the exact range reduction ``fmod(t, tau) - fmod(s, tau)``, then floor-mod and one
    division), at a fraction of the cost of two floating-point ``fmod`` calls: each ``fmod``
    is :func:`_fmod_fast` (``inv_tau`` is ``1 / tau``, rounded: it only estimates the
    quotient), and libm's ``fmod`` only where a quotient reaches :data:`FAST_QUOTIENT`
    (timestamps of ~1e15 periods and more, or a NaN).
    """
    if abs(t * inv_tau) < FAST_QUOTIENT and abs(s * inv_tau) < FAST_QUOTIENT:
        return _phase_from(_fmod_fast(t, tau, inv_tau) - _fmod_fast(s, tau, inv_tau), tau)
    return _phase_from(np.fmod(t, tau) - np.fmod(s, tau), tau)  # Numba has no math.fmod


# the phase gets no fast-math flag at all: it must stay bitwise equal to NumPy's. The
# kernels inline it; the plain dispatcher lets the tests call it from Python.
phase_inline = exact(phase, inline=True)
phase_fast_inline = exact(phase_fast, inline=True)
phase = exact(phase, inline=False)
phase_fast = exact(phase_fast, inline=False)


def openness(phi, r_on, two_r, leak):
    """Openness k at phase ``phi`` (as :func:`plstm_np.scalar_math.gate_openness`, with ``two_r`` =
    2 / r_on precomputed: a multiplication instead of a division, within an ulp)."""
    piece = gate_piece(phi, r_on)
    x = phi * two_r
    k = x if piece == 0 else 2.0 - x  # selects, not branches: the rising and falling
    return k if piece != 2 else leak * phi  # pieces alternate unpredictably


def dk_dphi(phi, r_on, two_r, leak):
    """``dk/dphi`` on the piece ``phi`` lies on."""
    piece = gate_piece(phi, r_on)
    d = two_r if piece == 0 else -two_r
    return d if piece != 2 else leak


def dk_dr_on(phi, r_on, two_r):
    """``dk/dr_on`` on the piece ``phi`` lies on: ``(phi * two_r) / r_on``, not ``phi * 2 /
    r_on**2``, which overflows for r_on < 1e-154."""
    piece = gate_piece(phi, r_on)
    x = (phi * two_r) / r_on
    d = -x if piece == 0 else x
    return d if piece != 2 else 0.0


gate_piece = device(scalar_math.gate_piece)  # the pieces, as the reference defines them
openness = device(openness)
dk_dphi = device(dk_dphi)
dk_dr_on = device(dk_dr_on)


def dk_dtau_ds(dk_dphi, tj, s, inv_tau):
    """``dk/dtau`` and ``dk/ds`` from ``dk/dphi``: with ``phi = ((t - s) mod tau) / tau``,
    ``dphi/dtau = -(t - s) / tau**2`` and ``dphi/ds = -1 / tau`` (``inv_tau`` = 1 / tau)."""
    return dk_dphi * (-(tj - s) * (inv_tau * inv_tau)), -dk_dphi * inv_tau


dk_dtau_ds = device(dk_dtau_ds)


def gate_constants(tau, r_on, s):
    """Per-neuron constants of the gate loops: the reciprocals 1 / tau and 2 / r_on they
    multiply by; ``t_fast``, the bound below which ``|t|`` lets a row of
    phases take :func:`phase_fast` (0 if some ``|s / tau|`` is too large, or NaN, for it);
    and ``s_mod = fmod(s, tau)`` (exact), what :func:`phase_fast` takes."""
    two_r = 2.0 / r_on
    inv_tau = 1.0 / tau
    s_mod = np.empty_like(s)
    most = 0.0
    s_fast = True
    for n in range(tau.shape[0]):
        most = max(most, inv_tau[n])
        s_fast = s_fast and abs(s[n] * inv_tau[n]) < FAST_QUOTIENT
        s_mod[n] = np.fmod(s[n], tau[n])
    t_fast = FAST_QUOTIENT / most if s_fast and most > 0.0 else 0.0
    return inv_tau, two_r, t_fast, s_mod


gate_constants = device(gate_constants)


# exp in float32 (Cephes' expf): e^x = 2^n e^r, |r| <= ln2 / 2, degree-7 polynomial for e^r
_F32 = np.float32
_EXP_LO, _EXP_HI = _F32(-87.0), _F32(88.0)
_LOG2E, _LN2_HI, _LN2_LO = _F32(1.44269504088896341), _F32(0.693359375), _F32(-2.12194440e-4)
_P0, _P1, _P2 = _F32(1.9875691500e-4), _F32(1.3981999507e-3), _F32(8.3334519073e-3)
_P3, _P4, _P5 = _F32(4.1665795894e-2), _F32(1.6666665459e-1), _F32(5.0000001201e-1)
_ROUND_OFFSET, _BIAS32, _ONE32 = _F32(128.5), _F32(128.0), _F32(1.0)


def exp(x):
    """``exp`` in the dtype of ``x``: libm's for float64; for float32 an inlined polynomial
    (within 1e-7 relative; clamped to [-87, 88], ample for sigmoid and tanh arguments
    taken negative) that, unlike a libm call, LLVM can vectorise."""
    return math.exp(x)


@overload(exp, inline="always", fastmath=FASTMATH)
def _exp_overload(x):
    if isinstance(x, numba.types.Float) and x.bitwidth == 32:
        def exp32(x):
            x = min(max(x, _EXP_LO), _EXP_HI)
            # n = round(x / ln2) as m = n + 128: truncating a positive number (libm's
            # floorf would be a call)
            m = np.int32(x * _LOG2E + _ROUND_OFFSET)
            n = _F32(m) - _BIAS32
            r = (x - n * _LN2_HI) - n * _LN2_LO
            p = ((((_P0 * r + _P1) * r + _P2) * r + _P3) * r + _P4) * r + _P5
            p = p * r * r + r + _ONE32
            return p * two_to_biased(m)
        return exp32
    return lambda x: math.exp(x)


def sigmoid(a, one):
    """Logistic function in the dtype of ``a`` (``one`` is 1 in that dtype); one ``exp``,
    no overflow."""
    e = exp(-abs(a))
    r = one / (one + e)  # one division for both signs (a loop computes both)
    return r if a >= 0 else e * r


def tanh(a, one):
    """tanh in the dtype of ``a`` from one ``exp`` (cheaper than libm's tanh)."""
    e = exp(-(abs(a) + abs(a)))
    r = (one - e) / (one + e)
    return r if a >= 0 else -r


sigmoid = device(sigmoid)
tanh = device(tanh)


def _compiled(fn, **names):
    """``fn`` (a function of :mod:`plstm_np.scalar_math`) compiled as an inlined helper,
    with the names it calls bound to ``names`` (this module's elementary functions)."""
    env = dict(fn.__globals__, **names)
    clone = types.FunctionType(fn.__code__, env, fn.__name__, fn.__defaults__, fn.__closure__)
    clone.__qualname__, clone.__module__, clone.__doc__ = fn.__qualname__, __name__, fn.__doc__
    return device(clone)


cell = _compiled(scalar_math.cell_forward, sigmoid=sigmoid, tanh=tanh)
cell_grads = _compiled(scalar_math.cell_backward)


def copy(dst, src):
    """``dst[:] = src`` for two contiguous vectors of the same length, as a loop LLVM
    vectorises (Numba's slice assignment is a generic strided loop, several times slower
    on a row of a few hundred values)."""
    for q in range(src.shape[0]):
        dst[q] = src[q]


copy = device(copy)


def dot(a, b):
    """Dot product of two contiguous vectors (vectorised when sums may be reassociated)."""
    acc = a.dtype.type(0.0)
    for q in range(a.shape[0]):
        acc += a[q] * b[q]
    return acc


dot = device(dot)

