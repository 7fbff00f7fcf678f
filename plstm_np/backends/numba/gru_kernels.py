"""Numba CPU kernels of the Phased GRU: forward and BPTT, dense (training) and skipping
closed neurons (evaluation, streams).

The equations and the BPTT steps are those of :mod:`plstm_np.gru` (whose NumPy functions
:func:`plstm_np.gru.gru_forward` and :func:`plstm_np.gru.gru_backward` are the reference).
Two pairs of kernels compute them:

- *dense* (``leak > 0`` or the gate open: training, where every neuron updates):
  :func:`forward_dense_kernel` and :func:`backward_dense_kernel`, laid out as the Phased
  LSTM's dense kernels (:mod:`~plstm_np.backends.numba.forward`): one chunk of the batch per
  thread, packed by decreasing length, BLAS products per step (``h_{j-1} [Wh_r, Wh_z]``,
  then ``(r * h_{j-1}) Wh_n``; their transposes and the weight gradients backwards),
  vectorised row loops for the gates;
- *skipping* (``leak = 0``): :func:`forward_kernel` and :func:`backward_kernel`, one sample
  at a time (``prange`` over the batch), one neuron at a time, with the weights laid out
  neuron-major (``Wx^T`` (3H, D), ``Wh^T`` (3H, H), so that a neuron's dot products read
  contiguous rows). After a leak-free forward the backward reruns it, storing: with these
  kernels when at most :data:`SPARSE_BACKWARD` of the neuron-steps were updated, else with
  the dense ones (a closed neuron gets k = 0 there, which carries its state exactly).

Skipping (the second pair). A neuron is updated at a valid step unless it is on the closed
piece of its gate with ``leak = 0``: then ``k = 0``, ``h`` is carried unchanged and every
derivative of ``k`` is 0, so the kernels compute neither its update gate ``z`` nor its
candidate ``n`` (forward), nor their gradients (backward). The reset gate cannot be skipped
that way: ``(r * h_{j-1}) Wh_n`` feeds every neuron's ``r`` into each updated neuron's
candidate, so at a step where any neuron is updated every ``r`` is computed; at a step where
none is, the whole step is skipped. This is why a Phased GRU saves less than a Phased LSTM
at the same r_on: with 110 neurons at r_on = 0.05 nearly every step has one open, and its
110 reset gates cost more than the open neurons' update gates and candidates.
``counts[b] = (updates, reset gates)`` are what the forward computed for sample ``b``.

Arithmetic: gate maths in the model dtype (``one`` is 1 in that dtype, so float32 stays
float32), the phase and the timing gradients in float64. The phase is the exact range
reduction of :func:`plstm_np.time_gate.phase` (the other kernels' own,
:data:`~plstm_np.backends.numba.cell_math.phase_inline`), bitwise equal to it. The kernels
get the flags and the stamped on-disk cache of every Numba kernel
(:mod:`~plstm_np.backends.numba.compile`): float64 results agree with the reference to
rounding. The skipping kernels come in two variants: parallel over the batch (unless
:data:`plstm_np.config.NUMBA_PARALLEL` is off), and serial, for one sample or passes below
:data:`SERIAL_WORK` multiply-adds; below it the dense kernels run on one chunk.

Memory. A forward with ``leak > 0`` or the gate open stores ``k``, ``r``, ``z``, ``n`` and the
updated flags per (sample, step, neuron) for the backward (the dense backward reads the
first four); a leak-free forward (evaluation)
stores nothing, and a backward through it reruns the forward first, storing.
"""
from __future__ import annotations

import math

import numba
import numpy as np

from ... import config
from . import cell_math
from .backward import gate_grads_row
from .cell_math import copy, gate_constants
from .compile import device, exact, kernel
from .forward import blocked_dot, chunk_bounds, gate_row
from .workspace import packed_order

__all__ = ["gru_forward", "gru_backward", "phase", "forward_kernel", "backward_kernel",
           "forward_kernel_serial", "backward_kernel_serial", "forward_dense_kernel",
           "backward_dense_kernel", "SERIAL_WORK",
           "SPARSE_BACKWARD"]

#: Parallel loops over the batch (the backward: over chunks of it).
PARALLEL = bool(config.NUMBA_PARALLEL)
#: Below this many multiply-adds per pass (``B T 3H (D + H)``), or for one sample, the serial
#: kernels run: starting the threads would cost more than they save.
SERIAL_WORK = 50_000
#: After a leak-free forward, the backward reruns it with the kernel that skips closed neurons
#: when they were at most this share of all updates, else with the dense kernel (then faster).
SPARSE_BACKWARD = 0.2


def phase(t, tau, s):
    """``((t - s) mod tau) / tau``: the exact phase of the other kernels
    (:func:`~plstm_np.backends.numba.cell_math.phase`), bitwise equal to
    :func:`plstm_np.time_gate.phase`."""
    return _exact_phase(t, tau, 1.0 / tau, s)


_exact_phase = cell_math.phase_inline
_phase = exact(phase, inline=True)  # the kernels' copy
phase = exact(phase, inline=False)  # callable from Python (the tests)


def _gate(phi, r_on, leak):
    """``(k, dk/dphi, dk/dr_on, on an open piece)`` at phase ``phi`` (float64), the pieces
    and expressions of :func:`plstm_np.time_gate.time_gate_with_grads`."""
    if 2.0 * phi < r_on:  # rising
        return 2.0 * phi / r_on, 2.0 / r_on, -(2.0 * phi / r_on) / r_on, True
    if phi < r_on:  # falling
        return 2.0 - 2.0 * phi / r_on, -2.0 / r_on, (2.0 * phi / r_on) / r_on, True
    return leak * phi, leak, 0.0, False


_gate = device(_gate)
_sigmoid = cell_math.sigmoid  # without overflow, in the dtype of its arguments


def _forward(x, t, lengths, WxT, WhT, bias, tau, s, r_on, leak, gate_open, h0, one,
                   store, h_seq, h_T, k_st, r_st, z_st, n_st, upd_st, active_st, counts,
                   neuron_counts):
    """The forward pass of a batch (see the module docstring).

    ``x`` (B, T, D), ``t`` (B, T), ``lengths`` (B,), ``WxT`` (3H, D), ``WhT`` (3H, H),
    ``bias`` (3H,), ``tau``, ``s``, ``r_on`` (H,) float64, ``h0`` (B, H). Writes ``h_seq``
    (B, T, H), ``h_T`` (B, H), ``counts`` (B, 2) and, with ``store``, the arrays the backward
    reads: ``k_st``, ``r_st``, ``z_st``, ``n_st``, ``upd_st`` (B, T, H) and ``active_st``
    (B, T) (any neuron updated); adds to ``neuron_counts`` (B, H), zero on entry, the updates
    of each sample's neurons.
    """
    B, T, D = x.shape
    H = h0.shape[1]
    for b in numba.prange(B):
        h = h0[b].copy()
        h_new = np.empty_like(h)
        rh = np.empty_like(h)  # r * h_{j-1}
        k = np.empty_like(h)
        upd = np.zeros(H, np.bool_)
        updates = 0
        resets = 0
        L = lengths[b]
        for j in range(L):
            any_upd = False
            for m in range(H):
                if gate_open:
                    k[m] = one
                    upd[m] = True
                else:
                    phi = _phase(t[b, j], tau[m], s[m])
                    km, _, _, on = _gate(phi, r_on[m], leak)
                    k[m] = km  # rounded to the model dtype, as the reference does
                    upd[m] = on or leak > 0.0
                if upd[m]:
                    any_upd = True
                    updates += 1
                    neuron_counts[b, m] += 1
            if store:
                active_st[b, j] = any_upd
            if any_upd:
                resets += H
                for m in range(H):  # every reset gate: r * h_{j-1} feeds every candidate
                    ax = one - one
                    for d in range(D):
                        ax += x[b, j, d] * WxT[m, d]
                    ah = one - one
                    for i in range(H):
                        ah += h[i] * WhT[m, i]
                    r = _sigmoid((ax + bias[m]) + ah, one)
                    rh[m] = r * h[m]
                    if store:
                        r_st[b, j, m] = r
                for m in range(H):
                    if store:
                        upd_st[b, j, m] = upd[m]
                    if not upd[m]:  # closed: carried, z and n not computed
                        h_new[m] = h[m]
                        continue
                    gz, gn = H + m, 2 * H + m
                    az = one - one
                    an = one - one
                    for d in range(D):
                        xd = x[b, j, d]
                        az += xd * WxT[gz, d]
                        an += xd * WxT[gn, d]
                    hz = one - one
                    hn = one - one
                    for i in range(H):
                        hz += h[i] * WhT[gz, i]
                        hn += rh[i] * WhT[gn, i]
                    z = _sigmoid((az + bias[gz]) + hz, one)
                    n = math.tanh((an + bias[gn]) + hn)
                    ht = (one - z) * n + z * h[m]
                    h_new[m] = k[m] * ht + (one - k[m]) * h[m]
                    if store:
                        k_st[b, j, m] = k[m]
                        z_st[b, j, m] = z
                        n_st[b, j, m] = n
                for m in range(H):
                    h[m] = h_new[m]
            for m in range(H):
                h_seq[b, j, m] = h[m]
        for j in range(L, T):  # padding: the state is carried
            for m in range(H):
                h_seq[b, j, m] = h[m]
        for m in range(H):
            h_T[b, m] = h[m]
        counts[b, 0] = updates
        counts[b, 1] = resets


def _backward(dh_seq, dh_T, x, t, lengths, WxT, WhT, tau, s, r_on, leak, gate_open, h0,
                    h_seq, k_st, r_st, z_st, n_st, upd_st, active_st, one, nchunks,
                    dx, dh0, dWxT, dWhT, db, dtau, ds, dr_on):
    """BPTT of a batch, over ``nchunks`` chunks of samples in parallel (sample ``b`` in chunk
    ``b % nchunks``).

    Reads what :func:`forward_kernel` stored. Writes ``dx`` (B, T, D) and ``dh0`` (B, H);
    adds each chunk's weight gradients to ``dWxT`` (nchunks, 3H, D), ``dWhT`` (nchunks, 3H,
    H), ``db`` (nchunks, 3H) and its float64 timing gradients to ``dtau``, ``ds``, ``dr_on``
    (nchunks, H), all zero on entry.
    """
    B, T, D = x.shape
    H = h0.shape[1]
    for c in numba.prange(nchunks):
        dh = np.empty(H, dh_seq.dtype)  # gradient of h_j, then of h_{j-1}
        dhp = np.empty_like(dh)
        drh = np.empty_like(dh)  # gradient of r * h_{j-1}
        rec = np.empty_like(dh)  # [da_r, da_z] [Wh_r, Wh_z]^T
        da = np.empty(3 * H, dh_seq.dtype)  # [da_r, da_z, da_n]
        for b in range(c, B, nchunks):
            L = lengths[b]
            for i in range(H):
                dh[i] = dh_T[b, i]
            for j in range(T - 1, L - 1, -1):  # padding: h carried, dh passes unchanged
                for i in range(H):
                    dh[i] += dh_seq[b, j, i]
                for d in range(D):
                    dx[b, j, d] = 0
            for j in range(L - 1, -1, -1):
                for i in range(H):
                    dh[i] += dh_seq[b, j, i]
                if not active_st[b, j]:  # every neuron closed: nothing computed
                    for d in range(D):
                        dx[b, j, d] = 0
                    continue
                hp = h_seq[b, j - 1] if j > 0 else h0[b]
                for m in range(H):
                    gz, gn = H + m, 2 * H + m
                    if not upd_st[b, j, m]:
                        dhp[m] = dh[m]
                        da[gz] = 0
                        da[gn] = 0
                        continue
                    km, z, n = k_st[b, j, m], z_st[b, j, m], n_st[b, j, m]
                    ht = (one - z) * n + z * hp[m]
                    dk = dh[m] * (ht - hp[m])
                    dht = dh[m] * km
                    dhp[m] = dh[m] * (one - km) + dht * z
                    dn = dht * (one - z)
                    dz = dht * (hp[m] - n)
                    da[gn] = dn * (one - n * n)
                    da[gz] = dz * z * (one - z)
                    if not gate_open:
                        tb = t[b, j]
                        phi = _phase(tb, tau[m], s[m])
                        _, dk_dphi, dk_dr_on, _ = _gate(phi, r_on[m], leak)
                        dk64 = np.float64(dk)
                        dtau[c, m] += dk64 * (dk_dphi * (-(tb - s[m]) / tau[m] ** 2))
                        ds[c, m] += dk64 * (-dk_dphi * (1.0 / tau[m]))
                        dr_on[c, m] += dk64 * dk_dr_on
                for i in range(H):
                    drh[i] = 0
                for m in range(H):
                    if upd_st[b, j, m]:
                        g = da[2 * H + m]
                        for i in range(H):
                            drh[i] += g * WhT[2 * H + m, i]
                for i in range(H):
                    r = r_st[b, j, i]
                    dhp[i] += drh[i] * r
                    da[i] = (drh[i] * hp[i]) * r * (one - r)
                for i in range(H):
                    rec[i] = 0
                for g in range(2 * H):
                    if g >= H and not upd_st[b, j, g - H]:
                        continue
                    a = da[g]
                    for i in range(H):
                        rec[i] += a * WhT[g, i]
                for i in range(H):
                    dh[i] = dhp[i] + rec[i]
                for d in range(D):
                    dx[b, j, d] = 0
                for g in range(3 * H):
                    if g >= H and not upd_st[b, j, g - H if g < 2 * H else g - 2 * H]:
                        continue
                    a = da[g]
                    db[c, g] += a
                    for d in range(D):
                        dWxT[c, g, d] += a * x[b, j, d]
                        dx[b, j, d] += a * WxT[g, d]
                    if g < 2 * H:
                        for i in range(H):
                            dWhT[c, g, i] += a * hp[i]
                    else:
                        for i in range(H):
                            dWhT[c, g, i] += a * (r_st[b, j, i] * hp[i])
            for i in range(H):
                dh0[b, i] = dh[i]


def _forward_dense(x, t, lengths, Wx, Wh_rz, Wh_n, bias, tau, s, r_on, leak, gate_open, h0,
                   one, nchunks, order, h_seq, h_T, k_st, r_st, z_st, n_st, upd_st, active_st,
                   counts, neuron_counts):
    """Training forward (``leak > 0`` or the gate open: every neuron updates at every valid
    step), parallel over ``nchunks`` chunks of the batch, two BLAS products per chunk and
    step: ``h_{j-1} [Wh_r, Wh_z]``, then ``(r * h_{j-1}) Wh_n``.

    Packed as the Phased LSTM's dense kernel (``order``: see
    :func:`~plstm_np.backends.numba.forward._forward_dense`): the rows still running at
    step j are the first ``active`` of the chunk and the products cover only them. ``Wx``
    (D, 3H), ``Wh_rz`` (H, 2H), ``Wh_n`` (H, H), the other arguments and the outputs as in
    :func:`forward_kernel`, which this kernel's results equal to rounding; it always stores.
    """
    B, T, D = x.shape
    H = h0.shape[1]
    inv_tau, two_r, t_fast, s_mod = gate_constants(tau, r_on, s)
    for chunk in numba.prange(nchunks):
        b0, b1 = chunk_bounds(chunk, nchunks, B)
        nb = b1 - b0
        h = np.empty((nb, H), h0.dtype)
        for r in range(nb):
            copy(h[r], h0[order[b0 + r]])
        a_rz = np.empty((nb, 2 * H), h0.dtype)
        rh = np.empty((nb, H), h0.dtype)  # r * h_{j-1}
        a_n = np.empty((nb, H), h0.dtype)
        phis = np.empty(H)
        active = nb  # rows r < active are still running at step j
        for j in range(T):
            while active > 0 and lengths[order[b0 + active - 1]] <= j:
                active -= 1
            if active > 0:
                blocked_dot(h[:active], Wh_rz, a_rz[:active])
            for r in range(active):
                b = order[b0 + r]
                row = a_rz[r]
                for col in range(2 * H):
                    row[col] += bias[col]
                for d in range(D):
                    xd = x[b, j, d]
                    w = Wx[d]
                    for col in range(2 * H):
                        row[col] += xd * w[col]
                rr = r_st[b, j]
                zz = z_st[b, j]
                for m in range(H):
                    rr[m] = _sigmoid(row[m], one)
                for m in range(H):
                    zz[m] = _sigmoid(row[H + m], one)
                for m in range(H):
                    rh[r, m] = rr[m] * h[r, m]
            if active > 0:
                blocked_dot(rh[:active], Wh_n, a_n[:active])
            for r in range(nb):
                b = order[b0 + r]
                if r < active:
                    row = a_n[r]
                    for m in range(H):
                        row[m] += bias[2 * H + m]
                    for d in range(D):
                        xd = x[b, j, d]
                        w = Wx[d]
                        for m in range(H):
                            row[m] += xd * w[2 * H + m]
                    nn = n_st[b, j]
                    for m in range(H):
                        nn[m] = math.tanh(row[m])
                    kk = k_st[b, j]
                    if gate_open:
                        for m in range(H):
                            kk[m] = one
                    else:
                        gate_row(t[b, j], tau, inv_tau, s, r_on, two_r, leak, phis, kk,
                                  t_fast, s_mod)
                    zz = z_st[b, j]
                    hr = h[r]
                    for m in range(H):
                        ht = (one - zz[m]) * nn[m] + zz[m] * hr[m]
                        hr[m] = kk[m] * ht + (one - kk[m]) * hr[m]
                    for m in range(H):
                        upd_st[b, j, m] = True
                    active_st[b, j] = True
                copy(h_seq[b, j], h[r])
        for r in range(nb):
            b = order[b0 + r]
            copy(h_T[b], h[r])
            counts[b, 0] = lengths[b] * H
            counts[b, 1] = lengths[b] * H
            for m in range(H):
                neuron_counts[b, m] = lengths[b]


def _backward_dense(dh_seq, dh_T, x, t, lengths, Wx, WhT, tau, s, r_on, leak, gate_open, h0,
                    h_seq, k_st, r_st, z_st, n_st, one, nchunks, order, dx, dh0, dWh, dWx, db,
                    dtau, ds, dr_on):
    """BPTT of :func:`forward_dense_kernel`, parallel over its ``nchunks`` chunks (same
    ``order``), three BLAS products per chunk and step for the state gradient
    (``da_n Wh_n^T``, then ``[da_r, da_z] [Wh_r, Wh_z]^T``) and two for the weight gradient
    (``h_{j-1}^T [da_r, da_z]`` and ``(r * h_{j-1})^T da_n``).

    ``Wx`` (D, 3H), ``WhT`` (3H, H). Writes ``dx`` (B, T, D), ``dh0`` (B, H); adds each
    chunk's gradients to ``dWh`` (nchunks, H, 3H), ``dWx`` (nchunks, D, 3H), ``db``
    (nchunks, 3H) and, float64, ``dtau``, ``ds``, ``dr_on`` (nchunks, H), zero on entry.
    """
    B, T, D = x.shape
    H = h0.shape[1]
    inv_tau, two_r, t_fast, s_mod = gate_constants(tau, r_on, s)
    WhT_rz = WhT[:2 * H]
    WhT_n = WhT[2 * H:]
    for chunk in numba.prange(nchunks):
        b0, b1 = chunk_bounds(chunk, nchunks, B)
        nb = b1 - b0
        dh = np.empty((nb, H), h0.dtype)
        for r in range(nb):
            copy(dh[r], dh_T[order[b0 + r]])
        dhp = np.empty((nb, H), h0.dtype)  # gradient of h_{j-1}, less the products
        da_rz = np.empty((nb, 2 * H), h0.dtype)
        da_n = np.empty((nb, H), h0.dtype)
        hp_rows = np.empty((nb, H), h0.dtype)
        rh_rows = np.empty((nb, H), h0.dtype)
        prod = np.empty((nb, H), h0.dtype)
        part_rz = np.empty((H, 2 * H), h0.dtype)
        part_n = np.empty((H, H), h0.dtype)
        kbuf = np.empty(H, h0.dtype)
        phis = np.empty(H)
        gtau = np.empty(H)
        gs = np.empty(H)
        gr = np.empty(H)
        active = 0  # rows r < active are running at step j (sorted by decreasing length)
        for j in range(T - 1, -1, -1):
            while active < nb and lengths[order[b0 + active]] > j:
                active += 1
            for r in range(nb):
                b = order[b0 + r]
                dhr = dh[r]
                for m in range(H):
                    dhr[m] += dh_seq[b, j, m]
                if r >= active:  # padded step: state carried, nothing computed
                    for d in range(D):
                        dx[b, j, d] = 0
                    continue
                hp = h_seq[b, j - 1] if j > 0 else h0[b]
                copy(hp_rows[r], hp)
                kk, rr, zz, nn = k_st[b, j], r_st[b, j], z_st[b, j], n_st[b, j]
                if not gate_open:
                    gate_grads_row(t[b, j], tau, inv_tau, s, r_on, two_r, leak, phis, kbuf,
                                    gtau, gs, gr, t_fast, s_mod)
                    for m in range(H):
                        ht = (one - zz[m]) * nn[m] + zz[m] * hp[m]
                        dk64 = np.float64(dhr[m] * (ht - hp[m]))
                        dtau[chunk, m] += dk64 * gtau[m]
                        ds[chunk, m] += dk64 * gs[m]
                        dr_on[chunk, m] += dk64 * gr[m]
                for m in range(H):
                    dht = dhr[m] * kk[m]
                    dhp[r, m] = dhr[m] * (one - kk[m]) + dht * zz[m]
                    da_n[r, m] = dht * (one - zz[m]) * (one - nn[m] * nn[m])
                    da_rz[r, H + m] = dht * (hp[m] - nn[m]) * zz[m] * (one - zz[m])
                for m in range(H):
                    rh_rows[r, m] = rr[m] * hp[m]
            if active == 0:  # the whole chunk is padding here
                continue
            blocked_dot(da_n[:active], WhT_n, prod[:active])  # gradient of r * h_{j-1}
            for r in range(active):
                rr = r_st[order[b0 + r], j]
                for m in range(H):
                    dhp[r, m] += prod[r, m] * rr[m]
                    da_rz[r, m] = (prod[r, m] * hp_rows[r, m]) * rr[m] * (one - rr[m])
            blocked_dot(da_rz[:active], WhT_rz, prod[:active])
            for r in range(active):
                for m in range(H):
                    dh[r, m] = dhp[r, m] + prod[r, m]
            np.dot(hp_rows[:active].T, da_rz[:active], part_rz)
            np.dot(rh_rows[:active].T, da_n[:active], part_n)
            dWh_c = dWh[chunk]
            for i in range(H):
                for col in range(2 * H):
                    dWh_c[i, col] += part_rz[i, col]
                for m in range(H):
                    dWh_c[i, 2 * H + m] += part_n[i, m]
            dWx_c = dWx[chunk]
            db_c = db[chunk]
            for r in range(active):
                b = order[b0 + r]
                for col in range(2 * H):
                    db_c[col] += da_rz[r, col]
                for m in range(H):
                    db_c[2 * H + m] += da_n[r, m]
                for d in range(D):  # padded inputs may hold NaN: only valid steps read x
                    w = Wx[d]
                    acc = one - one
                    for col in range(2 * H):
                        acc += da_rz[r, col] * w[col]
                    for m in range(H):
                        acc += da_n[r, m] * w[2 * H + m]
                    dx[b, j, d] = acc
                    xd = x[b, j, d]
                    g = dWx_c[d]
                    for col in range(2 * H):
                        g[col] += xd * da_rz[r, col]
                    for m in range(H):
                        g[2 * H + m] += xd * da_n[r, m]
        for r in range(nb):
            copy(dh0[order[b0 + r]], dh[r])


forward_kernel = kernel(_forward, PARALLEL)
forward_kernel_serial = kernel(_forward, False)
backward_kernel = kernel(_backward, PARALLEL)
backward_kernel_serial = kernel(_backward, False)
forward_dense_kernel = kernel(_forward_dense, PARALLEL)
backward_dense_kernel = kernel(_backward_dense, PARALLEL)


def _parallel(B, T, D, H):
    """Whether the parallel kernels pay for a pass of this size."""
    return PARALLEL and B > 1 and B * T * 3 * H * (D + H) >= SERIAL_WORK


def _chunks(B, T, D, H):
    """Chunks of the batch for the dense kernels: one per thread when the parallel kernels
    pay for a pass of this size, else one."""
    return max(1, min(B, numba.get_num_threads())) if _parallel(B, T, D, H) else 1


def _timing(params, gate_open, H):
    """``tau``, ``s``, ``r_on`` as float64 (H,) arrays (ones when the gate is open)."""
    if gate_open:
        ones = np.ones(H)
        return ones, ones, ones
    return tuple(np.ascontiguousarray(params[name], np.float64) for name in ("tau", "s", "r_on"))


def gru_forward(params, x, t, lengths, h0, leak, gate_open=False, store=None, dense=None):
    """The Numba twin of :func:`plstm_np.gru.gru_forward` (same arguments and returns).

    ``store`` (default: ``leak > 0 or gate_open``) keeps what the backward needs; a forward
    that stores nothing is rerun, storing, by :func:`gru_backward`. ``dense`` (default:
    ``store and (leak > 0 or gate_open)``, training) runs :func:`forward_dense_kernel`,
    which computes every neuron at every valid step with BLAS products and stores; else the
    kernel that skips closed neurons runs. ``cache["updates"]`` counts the neuron updates
    computed, ``cache["reset_gates"]`` the reset gates, ``cache["update_counts"]`` (B,) the
    updates per sample and ``cache["neuron_updates"]`` (B, H) per sample and neuron.
    """
    B, T, D = x.shape
    H = params["Wh"].shape[0]
    dtype = params["Wh"].dtype
    leak = float(leak)
    gate_open = bool(gate_open)
    if store is None:
        store = gate_open or leak > 0.0
    WxT = np.ascontiguousarray(params["Wx"].T)
    WhT = np.ascontiguousarray(params["Wh"].T)
    bias = np.ascontiguousarray(params["b"])
    tau, s, r_on = _timing(params, gate_open, H)
    shape = (B, T, H) if store else (0, 0, 0)
    k_st, r_st, z_st, n_st = (np.empty(shape, dtype) for _ in range(4))
    upd_st = np.zeros(shape, np.bool_)
    active_st = np.zeros(shape[:2], np.bool_)
    h_seq = np.empty((B, T, H), dtype)
    h_T = np.empty((B, H), dtype)
    counts = np.zeros((B, 2), np.int64)
    neuron_counts = np.zeros((B, H), np.int64)
    x = np.ascontiguousarray(x, dtype)
    t64 = np.ascontiguousarray(t, np.float64)
    if dense is None:  # training: every neuron updates
        dense = store and (gate_open or leak > 0.0)
    if dense and not store:
        raise ValueError("dense=True stores what the backward needs: it needs store=True")
    order, nchunks = None, 1
    if dense:
        nchunks = _chunks(B, T, D, H)
        order = packed_order(np.asarray(lengths, np.int64), nchunks)
        Wh = params["Wh"]
        forward_dense_kernel(x, t64, lengths, np.ascontiguousarray(params["Wx"]),
                             np.ascontiguousarray(Wh[:, :2 * H]),
                             np.ascontiguousarray(Wh[:, 2 * H:]), bias, tau, s, r_on, leak,
                             gate_open, h0, dtype.type(1.0), nchunks, order, h_seq, h_T, k_st,
                             r_st, z_st, n_st, upd_st, active_st, counts, neuron_counts)
    else:
        kernel = forward_kernel if _parallel(B, T, D, H) else forward_kernel_serial
        kernel(x, t64, lengths, WxT, WhT, bias, tau, s, r_on, leak, gate_open, h0,
               dtype.type(1.0), bool(store), h_seq, h_T, k_st, r_st, z_st, n_st, upd_st,
               active_st, counts, neuron_counts)
    cache = dict(backend="numba", params=params, x=x, t=t, lengths=lengths, h0=h0, leak=leak,
                 gate_open=gate_open, h_seq=h_seq, order=order, nchunks=nchunks,
                 stored=(k_st, r_st, z_st, n_st, upd_st, active_st) if store else None,
                 updates=int(counts[:, 0].sum()), reset_gates=int(counts[:, 1].sum()),
                 update_counts=counts[:, 0].copy(), neuron_updates=neuron_counts)
    return h_seq, h_T, cache


def gru_backward(dh_seq, dh_T, cache):
    """The Numba twin of :func:`plstm_np.gru.gru_backward` (same arguments and returns)."""
    params, x, t, lengths, h0 = (cache[k] for k in ("params", "x", "t", "lengths", "h0"))
    leak, gate_open, h_seq = cache["leak"], cache["gate_open"], cache["h_seq"]
    B, T, D = x.shape
    H = params["Wh"].shape[0]
    dtype = params["Wh"].dtype
    stored = cache["stored"]
    order = cache.get("order")
    if stored is None:  # a leak-free forward kept nothing: rerun it, storing
        # dense when most neurons were updated: every product is then a BLAS one (a closed
        # neuron gets k = 0 there, which carries its state and passes its gradient)
        valid = int(np.minimum(np.asarray(lengths), T).sum()) * H
        dense = cache["updates"] > SPARSE_BACKWARD * valid
        _, _, rerun = gru_forward(params, x, t, lengths, h0, leak, gate_open, store=True,
                                  dense=dense)
        h_seq, stored, order = rerun["h_seq"], rerun["stored"], rerun["order"]
        cache = dict(cache, nchunks=rerun["nchunks"])
    dh_T = np.zeros((B, H), dtype) if dh_T is None else np.ascontiguousarray(dh_T, dtype)
    if order is not None:  # after the dense forward
        return _backward_dense(dh_seq, dh_T, dict(cache, h_seq=h_seq), stored, order)
    parallel = _parallel(B, T, D, H)
    nchunks = max(1, min(B, numba.get_num_threads())) if parallel else 1
    dx = np.empty((B, T, D), dtype)
    dh0 = np.empty((B, H), dtype)
    dWxT = np.zeros((nchunks, 3 * H, D), dtype)
    dWhT = np.zeros((nchunks, 3 * H, H), dtype)
    db = np.zeros((nchunks, 3 * H), dtype)
    dtau, ds, dr_on = (np.zeros((nchunks, H)) for _ in range(3))
    tau, s, r_on = _timing(params, gate_open, H)
    kernel = backward_kernel if parallel else backward_kernel_serial
    kernel(np.ascontiguousarray(dh_seq, dtype), dh_T, x, np.ascontiguousarray(t, np.float64),
           lengths, np.ascontiguousarray(params["Wx"].T), np.ascontiguousarray(params["Wh"].T),
           tau, s, r_on, leak, gate_open, h0, h_seq, *stored, dtype.type(1.0), nchunks, dx,
           dh0, dWxT, dWhT, db, dtau, ds, dr_on)
    grads = {
        "Wx": np.ascontiguousarray(dWxT.sum(0).T),
        "Wh": np.ascontiguousarray(dWhT.sum(0).T),
        "b": db.sum(0),
        "x": dx,
        "h0": dh0,
    }
    if not gate_open:
        grads["tau"] = dtau.sum(0).astype(dtype)
        grads["s"] = ds.sum(0).astype(dtype)
        grads["r_on"] = dr_on.sum(0).astype(dtype)
    return grads


def _backward_dense(dh_seq, dh_T, cache, stored, order):
    """:func:`gru_backward` after the dense forward (its chunks and ``order``)."""
    params, x, t, lengths, h0 = (cache[k] for k in ("params", "x", "t", "lengths", "h0"))
    B, T, D = x.shape
    H = params["Wh"].shape[0]
    dtype = params["Wh"].dtype
    gate_open = cache["gate_open"]
    nchunks = cache["nchunks"]  # the forward's: its order deals the rows to them
    k_st, r_st, z_st, n_st = stored[:4]
    dx = np.empty((B, T, D), dtype)
    dh0 = np.empty((B, H), dtype)
    dWh = np.zeros((nchunks, H, 3 * H), dtype)
    dWx = np.zeros((nchunks, D, 3 * H), dtype)
    db = np.zeros((nchunks, 3 * H), dtype)
    dtau, ds, dr_on = (np.zeros((nchunks, H)) for _ in range(3))
    tau, s, r_on = _timing(params, gate_open, H)
    backward_dense_kernel(np.ascontiguousarray(dh_seq, dtype), dh_T, x,
                          np.ascontiguousarray(t, np.float64), lengths,
                          np.ascontiguousarray(params["Wx"]),
                          np.ascontiguousarray(params["Wh"].T), tau, s, r_on, cache["leak"],
                          gate_open, h0, cache["h_seq"], k_st, r_st, z_st, n_st,
                          dtype.type(1.0), nchunks, order, dx, dh0, dWh, dWx, db, dtau, ds,
                          dr_on)
    grads = {"Wx": dWx.sum(0), "Wh": dWh.sum(0), "b": db.sum(0), "x": dx, "h0": dh0}
    if not gate_open:
        grads["tau"] = dtau.sum(0).astype(dtype)
        grads["s"] = ds.sum(0).astype(dtype)
        grads["r_on"] = dr_on.sum(0).astype(dtype)
    return grads
