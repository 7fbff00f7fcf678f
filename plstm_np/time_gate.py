"""The Phased LSTM time gate (Neil, Pfeiffer & Liu 2016, eq. 6), vectorised.

Notation::

    phi = ((t - s) mod tau) / tau                  floor-mod: phi in [0, 1) also for t < s
    k   = 2 phi / r_on          if phi < r_on / 2  (opening)
          2 - 2 phi / r_on      if phi < r_on      (closing)
          leak * phi            otherwise          (closed; leak = alpha)

Away from the wrap points the floor is constant, so::

    dphi/dt = 1 / tau,   dphi/ds = -1 / tau,   dphi/dtau = -(t - s) / tau**2
    dk/dphi = 2 / r_on, -2 / r_on, leak        on the three pieces
    dk/dr_on = -2 phi / r_on**2, +2 phi / r_on**2, 0

The phase is always computed in float64: with microsecond timestamps (~3e5) float32 has
no resolution left for a 5 % open window. It is reduced exactly (:func:`phase`), so it is
right to rounding at any float64 timestamp (Unix milliseconds, microseconds, nanoseconds).
The gradient with respect to tau is another matter: ``dphi/dtau = -(t - s) / tau**2`` grows
with t, so at ``t = 1.7e12`` ms and ``tau = 10`` ms a relative change of tau by 1e-12 moves
the phase by a sixth of a period. It is the exact derivative, but a gradient step on tau
then scrambles every phase: to learn tau, give times relative to the start of the
recording. All functions broadcast like NumPy ufuncs, so a
batch of times ``t[:, None]`` against per-neuron ``tau[None, :]`` gives a (B, H) gate.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .validation import TINY, valid_steps

__all__ = ["phase", "time_gate", "time_gate_with_grads", "TimeGateGrads", "kink_distance",
           "min_kink_distance", "timing_gradients"]


def _check_domain(a, ok, what):
    """Raise ValueError showing the first entry of ``a`` where ``ok`` is False (subnormal
    values, below :data:`~plstm_np.validation.TINY`, are refused as 0 would be)."""
    if not np.all(ok):
        value = np.ravel(a)[~np.ravel(ok)][0].item()
        note = (f" (a subnormal float, below {TINY:.4g}: its reciprocal overflows)"
                if 0 < value < TINY else "")
        raise ValueError(f"{what}, got {value!r}{note}")


def _check_tau(tau):
    """``tau`` as float64, if every entry is finite and > 0 (else ValueError)."""
    tau = np.asarray(tau, dtype=np.float64)
    _check_domain(tau, np.isfinite(tau) & (tau >= TINY),
                  "tau must be finite and > 0")
    return tau


def phase(t, tau, s):
    """Phase ``phi = ((t - s) mod tau) / tau`` in float64, in [0, 1), exact to rounding at
    any timestamp.

    Range reduction first: ``fmod(t, tau)`` and ``fmod(s, tau)`` are exact in IEEE
    arithmetic whatever the size of ``t / tau``, so their difference (one rounding, in
    (-2 tau, 2 tau)) brought into [0, tau) and divided by ``tau`` is within ``2**-52`` of
    the exact rational phase of the float64 arguments, also for Unix timestamps in
    nanoseconds (``t - s`` computed first would lose ``log2(t / tau)`` bits before the
    reduction). Every backend computes these same operations, bitwise alike.

    Parameters
    ----------
    t, tau, s : array_like
        Timestamps, periods (> 0) and shifts; broadcast against each other.

    Returns
    -------
    ndarray of float64
        The phase, with floor-mod semantics (``t < s`` wraps into [0, 1)).
    """
    t = np.asarray(t, dtype=np.float64)
    tau = _check_tau(tau)
    s = np.asarray(s, dtype=np.float64)
    d = np.fmod(t, tau) - np.fmod(s, tau)  # both exact; d in (-2 tau, 2 tau)
    for _ in range(2):  # floor-mod into [0, tau): at most two periods to add or remove
        d = np.where(d < 0.0, d + tau, d)
    for _ in range(2):
        d = np.where(d >= tau, d - tau, d)
    phi = d / tau
    # a tiny negative d rounds up to exactly tau when tau is added: that point is phase 0
    return np.where(phi >= 1.0, 0.0, phi)


def time_gate(t, tau, s, r_on, leak=0.0):
    """Openness ``k`` of the time gate.

    Parameters
    ----------
    t, tau, s, r_on : array_like
        Timestamps, periods (> 0), shifts and open ratios (0 < r_on <= 1); broadcast.
    leak : float, optional
        The leak alpha of the closed phase: 1e-3 while training, 0 at evaluation.

    Returns
    -------
    ndarray of float64
        ``k`` in [0, 1].
    """
    return time_gate_with_grads(t, tau, s, r_on, leak).k


class TimeGateGrads(NamedTuple):
    """Openness ``k`` and its partial derivatives, all float64 arrays of the broadcast shape."""

    k: np.ndarray
    dk_dt: np.ndarray
    dk_dtau: np.ndarray
    dk_ds: np.ndarray
    dk_dr_on: np.ndarray


def time_gate_with_grads(t, tau, s, r_on, leak=0.0) -> TimeGateGrads:
    """Openness ``k`` and its derivatives with respect to t, tau, s and r_on.

    Parameters
    ----------
    t, tau, s, r_on : array_like
        As in :func:`time_gate`.
    leak : float, optional
        The leak alpha of the closed phase.

    Returns
    -------
    TimeGateGrads
        ``k, dk_dt, dk_dtau, dk_ds, dk_dr_on`` (float64). The derivatives are those of the
        smooth piece the point lies on; at the kinks (phi = 0, r_on/2, r_on) they are one-sided.
    """
    t = np.asarray(t, dtype=np.float64)
    tau = np.asarray(tau, dtype=np.float64)
    s = np.asarray(s, dtype=np.float64)
    r_on = np.asarray(r_on, dtype=np.float64)
    _check_domain(r_on, (r_on >= TINY) & (r_on <= 1),
                  "r_on must lie in (0, 1]")
    phi = phase(t, tau, s)
    # np.where evaluates every piece: a tiny r_on overflows on the pieces not taken
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        rising = 2.0 * phi < r_on  # exact, where 0.5 * r_on may round
        falling = ~rising & (phi < r_on)
        closed = ~(rising | falling)
        k = np.where(rising, 2.0 * phi / r_on,
                     np.where(falling, 2.0 - 2.0 * phi / r_on, leak * phi))
        dk_dphi = np.where(rising, 2.0 / r_on, np.where(falling, -2.0 / r_on, leak))
        # (2 phi / r_on) / r_on: r_on**2 underflows for r_on < 1e-154
        dk_dr_on = np.where(rising, -(2.0 * phi / r_on) / r_on,
                            np.where(falling, (2.0 * phi / r_on) / r_on, 0.0))
        dk_dr_on = np.where(closed, 0.0, dk_dr_on)
        dphi_dt = 1.0 / tau
        return TimeGateGrads(
            k=k,
            dk_dt=dk_dphi * dphi_dt,
            dk_dtau=dk_dphi * (-(t - s) / tau**2),
            dk_ds=-dk_dphi * dphi_dt,
            dk_dr_on=dk_dr_on,
        )


def timing_gradients(dk, gate, valid, dtype):
    """The gradients of ``tau``, ``s`` and ``r_on`` from ``dk`` = dL/dk (B, T, H), by the
    chain rule through the gate's derivatives ``gate`` (:class:`TimeGateGrads`), summed in
    float64 over the valid steps (``valid`` (B, T) bool) and cast to ``dtype``.

    Returns
    -------
    dict
        ``{"tau": (H,), "s": (H,), "r_on": (H,)}`` of ``dtype``.
    """
    dk64 = np.where(valid[:, :, None], dk.astype(np.float64), 0.0)
    return {"tau": (dk64 * gate.dk_dtau).sum((0, 1)).astype(dtype),
            "s": (dk64 * gate.dk_ds).sum((0, 1)).astype(dtype),
            "r_on": (dk64 * gate.dk_dr_on).sum((0, 1)).astype(dtype)}


def kink_distance(t, tau, s, r_on):
    """Distance in phase from the nearest kink of the gate (phi = 0 = 1, r_on / 2, r_on).

    A finite-difference gradient check is only valid where every (time, neuron) pair is
    farther from a kink than the step moves the phase; this is how to make sure.

    Parameters
    ----------
    t, tau, s, r_on : array_like
        As in :func:`time_gate`.

    Returns
    -------
    ndarray of float64
        ``min(phi, 1 - phi, |phi - r_on/2|, |phi - r_on|)``.
    """
    phi = phase(t, tau, s)
    r_on = np.asarray(r_on, dtype=np.float64)
    return np.minimum.reduce(
        [phi, 1.0 - phi, np.abs(phi - 0.5 * r_on), np.abs(phi - r_on)]
    )


def min_kink_distance(t, lengths, tau, s, r_on):
    """Smallest :func:`kink_distance` of any valid (sample, step, neuron): ``t`` (B, T),
    ``lengths`` (B,), ``tau``, ``s``, ``r_on`` (H,); ``inf`` without a valid step."""
    times = np.asarray(t, dtype=np.float64)[valid_steps(lengths, np.shape(t)[1])][:, None]
    return float(kink_distance(times, tau, s, r_on).min()) if times.size else np.inf
