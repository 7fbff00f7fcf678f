"""The Numba CPU backend: ``@njit`` forward and BPTT kernels that skip closed neurons.

Same contract as :mod:`plstm_np.reference` (same equations, same gradient keys), with the
paper's sparse updates made real. When ``leak == 0`` (evaluation, or training with the leak
switched off) a neuron whose time gate is on its closed piece has ``k = 0`` and carries
``(h, c)`` unchanged, so the kernels compute neither its gate pre-activations nor its
nonlinearities, in the forward pass and in the backward pass alike. A neuron is *updated*
at a valid step when its phase lies on an open piece, ``0 <= phi < r_on`` (with
``leak > 0`` or ``gate_open`` every neuron is updated at every valid step); the kernels
count the updates they compute per sample and per neuron.

Layout. The kernels take C-contiguous arrays and scalars only; :func:`layer_forward` and
:func:`layer_backward` validate nothing (the API boundary did), re-layout and dispatch.
Weights are re-laid out *neuron-major*: column ``4 n + g`` of ``WxN`` / ``WhN`` (and row
``4 n + g`` of their transposes ``WxT`` / ``WhT``) is gate ``g`` of neuron ``n``, so one
neuron's four gate rows are contiguous for the gather of an open neuron. Gradients are
converted back to the contract layout (gate blocks ``[i, f, g, o]``).

Skipping without computing every phase. A floating-point ``mod`` costs ~7 ns, which would
dominate a step in which 95 % of the neurons are closed. While a neuron is closed the
kernel remembers the window ``[lo, hi)`` of times that are certainly still on the closed
piece of the same cycle (bounds pulled in by a margin far larger than any rounding), so a
closed neuron costs two comparisons. Every time outside its window gets the exact phase,
bitwise equal to :func:`plstm_np.time_gate.phase`.

Compilation is lazy: importing this module defines the dispatchers but compiles nothing.
Each kernel is compiled on its first call, once per dtype, and cached on disk when
:data:`plstm_np.config.NUMBA_CACHE` is on (see :mod:`plstm_np.config` for every knob).
"""
from __future__ import annotations

import math
import types

import numba
import numpy as np
from numba import prange

from . import config, scalar_math

__all__ = ["layer_forward", "layer_backward", "ensure_available", "to_neuron_major",
           "from_neuron_major", "prepare_params", "empty_windows", "stream_forward", "dense_readout",
           "PHASE_MARGIN"]

#: Relative margin (times ``|t| + |s| + tau``) by which a closed neuron's window of
#: certainly-closed times is pulled in from the exact cycle bounds; rounding errors of
#: the phase are below 1e-15 of that magnitude.
PHASE_MARGIN = 1e-12

# Compiled code is cached only with the default flags: Numba's cache index does not
# include fastmath, so a cache written with other flags could be served by mistake.
_CACHE = bool(config.NUMBA_CACHE) and not config.NUMBA_FASTMATH
_FASTMATH = bool(config.NUMBA_FASTMATH)
_threads_set = False


def _jit(fn, parallel):
    """Compile ``fn`` lazily as a kernel, under a name of its own for each variant (so the
    serial and parallel variants do not share cache files)."""
    suffix = "_parallel" if parallel else "_serial"
    clone = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + suffix,
                               fn.__defaults__, fn.__closure__)
    clone.__qualname__ = fn.__qualname__ + suffix
    clone.__module__ = fn.__module__
    clone.__doc__ = fn.__doc__
    return numba.njit(clone, parallel=parallel and bool(config.NUMBA_PARALLEL),
                      fastmath=_FASTMATH, cache=_CACHE, nogil=True)


def _device(fn):
    """A scalar helper, inlined into the kernels."""
    return numba.njit(fn, fastmath=_FASTMATH, cache=_CACHE, inline="always")


def _shared_helper(fn, **calls):
    """Compile a :mod:`plstm_np.scalar_math` helper whose globals name other helpers: a copy
    of it that sees their compiled versions instead."""
    scope = dict(fn.__globals__, **calls)
    copy = types.FunctionType(fn.__code__, scope, fn.__name__, fn.__defaults__)
    copy.__qualname__ = fn.__qualname__
    copy.__module__ = __name__
    return _device(copy)


_sigmoid = _device(scalar_math.sigmoid)
_gate_piece = _device(scalar_math.gate_piece)
_gate_openness = _shared_helper(scalar_math.gate_openness, gate_piece=_gate_piece)
_gate_dk_dphi = _shared_helper(scalar_math.gate_dk_dphi, gate_piece=_gate_piece)
_gate_dk_dr_on = _shared_helper(scalar_math.gate_dk_dr_on, gate_piece=_gate_piece)


_phase = _device(scalar_math.phase)


def ensure_available():
    """Apply the thread knob once (Numba itself is a hard dependency, so always available)."""
    global _threads_set
    if not _threads_set:
        if config.NUM_THREADS is not None:
            numba.set_num_threads(int(config.NUM_THREADS))
        _threads_set = True


# ---------------------------------------------------------------------------- kernels
def _open_neurons(tj, tau, s, r_on, leak, gate_open, lo, hi, k_out, open_idx):
    """Fill ``open_idx[:m]`` with the neurons updated at time ``tj`` and ``k_out`` with their
    openness (float64); return m. ``lo``, ``hi`` are this stream's closed windows."""
    H = tau.shape[0]
    m = 0
    if gate_open:
        for n in range(H):
            k_out[n] = 1.0
            open_idx[n] = n
        return H
    if leak > 0.0:
        for n in range(H):
            k_out[n] = _gate_openness(_phase(tj, tau[n], s[n]), r_on[n], leak)
            open_idx[n] = n
        return H
    for n in range(H):
        if lo[n] <= tj and tj < hi[n]:
            continue  # certainly closed: k = 0, state carried
        phi = _phase(tj, tau[n], s[n])
        if phi < r_on[n]:
            k_out[n] = _gate_openness(phi, r_on[n], 0.0)
            open_idx[m] = n
            m += 1
        else:
            start = tj - phi * tau[n]  # start of the current cycle
            margin = PHASE_MARGIN * (abs(tj) + abs(s[n]) + tau[n])
            lo[n] = start + r_on[n] * tau[n] + margin
            hi[n] = start + tau[n] - margin
    return m


_open_neurons = _device(_open_neurons)


def _gate_preacts(xj, h, WxN, WhN, WxT, WhT, bN, open_idx, m, z):
    """z[4n:4n+4] = x_j Wx + h Wh + b for the m open neurons (neuron-major columns)."""
    D = xj.shape[0]
    H = h.shape[0]
    H4 = bN.shape[0]
    if 4 * m >= H:  # dense enough: full axpy rows, vectorised over all 4H columns
        for c in range(H4):
            z[c] = bN[c]
        for d in range(D):
            xd = xj[d]
            row = WxN[d]
            for c in range(H4):
                z[c] += xd * row[c]
        H4r = H - H % 4
        for q in range(0, H4r, 4):
            h0, h1, h2, h3 = h[q], h[q + 1], h[q + 2], h[q + 3]
            r0, r1, r2, r3 = WhN[q], WhN[q + 1], WhN[q + 2], WhN[q + 3]
            for c in range(H4):
                z[c] += (h0 * r0[c] + h1 * r1[c]) + (h2 * r2[c] + h3 * r3[c])
        for q in range(H4r, H):
            hq = h[q]
            row = WhN[q]
            for c in range(H4):
                z[c] += hq * row[c]
        return
    for p in range(m):  # gather: only the open neurons' four contiguous gate columns
        n4 = 4 * open_idx[p]
        # eight independent accumulators (4 gates x 2 interleaved inputs) keep the FMA
        # units busy; one neuron's 4 gate weights of an input are 16 contiguous bytes
        a0 = bN[n4] * 0
        a1 = a0
        a2 = a0
        a3 = a0
        e0 = a0
        e1 = a0
        e2 = a0
        e3 = a0
        for d in range(D):
            xd = xj[d]
            r = WxN[d]
            a0 += xd * r[n4]
            a1 += xd * r[n4 + 1]
            a2 += xd * r[n4 + 2]
            a3 += xd * r[n4 + 3]
        Hr = H - H % 2
        for q in range(0, Hr, 2):
            hq = h[q]
            hq1 = h[q + 1]
            r = WhN[q]
            r1 = WhN[q + 1]
            a0 += hq * r[n4]
            a1 += hq * r[n4 + 1]
            a2 += hq * r[n4 + 2]
            a3 += hq * r[n4 + 3]
            e0 += hq1 * r1[n4]
            e1 += hq1 * r1[n4 + 1]
            e2 += hq1 * r1[n4 + 2]
            e3 += hq1 * r1[n4 + 3]
        if Hr < H:
            hq = h[H - 1]
            r = WhN[H - 1]
            a0 += hq * r[n4]
            a1 += hq * r[n4 + 1]
            a2 += hq * r[n4 + 2]
            a3 += hq * r[n4 + 3]
        z[n4] = bN[n4] + (a0 + e0)
        z[n4 + 1] = bN[n4 + 1] + (a1 + e1)
        z[n4 + 2] = bN[n4 + 2] + (a2 + e2)
        z[n4 + 3] = bN[n4 + 3] + (a3 + e3)


_gate_preacts = _device(_gate_preacts)


def _forward(x, t, lengths, WxN, WhN, WxT, WhT, bN, w_ci, w_cf, w_co, tau, s, r_on, leak,
             gate_open, h0, c0, lo, hi, h_seq, hT, cT, store, c_seq, k_c, i_c, f_c, g_c, o_c,
             ct_c, updated, counts):
    """Forward kernel, parallel over the batch (each thread writes its own rows).

    ``lo``, ``hi`` (B, H) float64: closed windows, read and updated (streams keep them).
    With ``store`` the per-step values the backward needs are written to ``c_seq`` ...
    ``updated`` (B, T, H); without, those arrays may be empty. ``counts`` (B, H) int64 is
    incremented by the updates computed.
    """
    B, T, D = x.shape
    H = h0.shape[1]
    for b in prange(B):
        h = h0[b].copy()
        c = c0[b].copy()
        z = np.empty_like(bN)
        kd = np.empty_like(w_ci)  # k in the model dtype
        k64 = np.empty(H)
        open_idx = np.empty(H, np.int64)
        L = lengths[b]
        lo_b = lo[b]
        hi_b = hi[b]
        for j in range(T):
            if j < L:
                m = _open_neurons(t[b, j], tau, s, r_on, leak, gate_open, lo_b, hi_b, k64,
                                  open_idx)
                if store:
                    for n in range(H):
                        updated[b, j, n] = 0
                if m > 0:
                    _gate_preacts(x[b, j], h, WxN, WhN, WxT, WhT, bN, open_idx, m, z)
                for p in range(m):
                    n = open_idx[p]
                    kd[n] = k64[n]
                    k = kd[n]
                    cp = c[n]
                    hp = h[n]
                    ii = _sigmoid(z[4 * n] + w_ci[n] * cp)
                    ff = _sigmoid(z[4 * n + 1] + w_cf[n] * cp)
                    gg = math.tanh(z[4 * n + 2])
                    ct = ff * cp + ii * gg
                    oo = _sigmoid(z[4 * n + 3] + w_co[n] * ct)
                    ht = oo * math.tanh(ct)
                    c[n] = k * ct + (1 - k) * cp
                    h[n] = k * ht + (1 - k) * hp
                    counts[b, n] += 1
                    if store:
                        updated[b, j, n] = 1
                        k_c[b, j, n] = k
                        i_c[b, j, n] = ii
                        f_c[b, j, n] = ff
                        g_c[b, j, n] = gg
                        o_c[b, j, n] = oo
                        ct_c[b, j, n] = ct
            elif store:
                for n in range(H):
                    updated[b, j, n] = 0
            for n in range(H):
                h_seq[b, j, n] = h[n]
            if store:
                for n in range(H):
                    c_seq[b, j, n] = c[n]
        for n in range(H):
            hT[b, n] = h[n]
            cT[b, n] = c[n]


def _backward(dh_seq, dhT, dcT, x, t, lengths, WxT, WhT, w_ci, w_cf, w_co, tau, s, r_on, leak,
              gate_open, h0, c0, h_seq, c_seq, k_c, i_c, f_c, g_c, o_c, ct_c, updated, dZ, dx,
              dh0, dc0, dtau, ds, dr_on):
    """BPTT kernel, parallel over the batch; only updated (sample, step, neuron) triples cost.

    Writes dZ (B, T, 4H) neuron-major (zero where not updated), dx, dh0, dc0 and the
    per-sample float64 timing gradients dtau, ds, dr_on (B, H).
    """
    B, T, D = x.shape
    H = h0.shape[1]
    H4 = 4 * H
    for b in prange(B):
        dh = dhT[b].copy()
        dc = dcT[b].copy()
        dhn = np.empty_like(dh)
        open_idx = np.empty(H, np.int64)
        L = lengths[b]
        for n in range(H):
            dtau[b, n] = 0.0
            ds[b, n] = 0.0
            dr_on[b, n] = 0.0
        for j in range(T - 1, -1, -1):
            for n in range(H):
                dh[n] += dh_seq[b, j, n]
            for c in range(H4):
                dZ[b, j, c] = 0
            for d in range(D):
                dx[b, j, d] = 0
            if j >= L:
                continue
            hp = h_seq[b, j - 1] if j > 0 else h0[b]
            cp = c_seq[b, j - 1] if j > 0 else c0[b]
            tj = t[b, j]
            m = 0
            for n in range(H):
                if updated[b, j, n] == 0:
                    dhn[n] = dh[n]
                    continue
                open_idx[m] = n
                m += 1
                k = k_c[b, j, n]
                ii = i_c[b, j, n]
                ff = f_c[b, j, n]
                gg = g_c[b, j, n]
                oo = o_c[b, j, n]
                ct = ct_c[b, j, n]
                tc = math.tanh(ct)
                ht = oo * tc
                if not gate_open:
                    dk = dc[n] * (ct - cp[n]) + dh[n] * (ht - hp[n])
                    phi = _phase(tj, tau[n], s[n])
                    dk_dphi = _gate_dk_dphi(phi, r_on[n], leak)
                    dtau[b, n] += dk * (dk_dphi * (-(tj - s[n]) / tau[n] ** 2))
                    ds[b, n] += dk * (-dk_dphi * (1.0 / tau[n]))
                    dr_on[b, n] += dk * _gate_dk_dr_on(phi, r_on[n])
                dct = dc[n] * k
                dht = dh[n] * k
                dcp = dc[n] * (1 - k)
                dhn[n] = dh[n] * (1 - k)
                do = dht * tc
                dct = dct + dht * oo * (1 - tc * tc)
                dao = do * oo * (1 - oo)
                dct = dct + dao * w_co[n]
                dai = dct * gg * ii * (1 - ii)
                daf = dct * cp[n] * ff * (1 - ff)
                dzg = dct * ii * (1 - gg * gg)
                dc[n] = dcp + dct * ff + dai * w_ci[n] + daf * w_cf[n]
                dZ[b, j, 4 * n] = dai
                dZ[b, j, 4 * n + 1] = daf
                dZ[b, j, 4 * n + 2] = dzg
                dZ[b, j, 4 * n + 3] = dao
            dz = dZ[b, j]
            dxj = dx[b, j]
            if 4 * m >= H:  # dense: dh_{j-1} += dz Wh^T over all 4H rows of WhT
                H4r = H4 - H4 % 4
                for r in range(0, H4r, 4):
                    d0, d1, d2, d3 = dz[r], dz[r + 1], dz[r + 2], dz[r + 3]
                    w0, w1, w2, w3 = WhT[r], WhT[r + 1], WhT[r + 2], WhT[r + 3]
                    for q in range(H):
                        dhn[q] += (d0 * w0[q] + d1 * w1[q]) + (d2 * w2[q] + d3 * w3[q])
                    v0, v1, v2, v3 = WxT[r], WxT[r + 1], WxT[r + 2], WxT[r + 3]
                    for d in range(D):
                        dxj[d] += (d0 * v0[d] + d1 * v1[d]) + (d2 * v2[d] + d3 * v3[d])
            else:  # sparse: only the open neurons' rows
                for p in range(m):
                    n = open_idx[p]
                    for g in range(4):
                        r = 4 * n + g
                        dr = dz[r]
                        w = WhT[r]
                        for q in range(H):
                            dhn[q] += dr * w[q]
                        v = WxT[r]
                        for d in range(D):
                            dxj[d] += dr * v[d]
            dh, dhn = dhn, dh
        for n in range(H):
            dh0[b, n] = dh[n]
            dc0[b, n] = dc[n]


_BLOCK = 8  # neurons per task of the weight-gradient kernel (its rows stay in L1)


def _weight_grads(x, lengths, h0, c0, h_seq, c_seq, ct_c, updated, dZ, dWxT, dWhT, dbN, dw_ci,
                  dw_cf, dw_co):
    """Weight gradients from dZ, parallel over blocks of neurons (each task owns its rows):
    dWhT[4n+g] = sum over updated (b, j) of dz h_{j-1}, likewise dWxT with x_j, dbN, peepholes."""
    B, T, D = x.shape
    H = h0.shape[1]
    nblocks = (H + _BLOCK - 1) // _BLOCK
    for blk in prange(nblocks):
        n_lo = blk * _BLOCK
        n_hi = min(H, n_lo + _BLOCK)
        for r in range(4 * n_lo, 4 * n_hi):
            dbN[r] = 0
            for q in range(H):
                dWhT[r, q] = 0
            for d in range(D):
                dWxT[r, d] = 0
        for n in range(n_lo, n_hi):
            dw_ci[n] = 0
            dw_cf[n] = 0
            dw_co[n] = 0
        for b in range(B):
            for j in range(lengths[b]):
                hp = h_seq[b, j - 1] if j > 0 else h0[b]
                cp = c_seq[b, j - 1] if j > 0 else c0[b]
                xj = x[b, j]
                dz = dZ[b, j]
                for n in range(n_lo, n_hi):
                    if updated[b, j, n] == 0:
                        continue
                    dw_ci[n] += dz[4 * n] * cp[n]
                    dw_cf[n] += dz[4 * n + 1] * cp[n]
                    dw_co[n] += dz[4 * n + 3] * ct_c[b, j, n]
                    for r in range(4 * n, 4 * n + 4):
                        dr = dz[r]
                        dbN[r] += dr
                        row = dWhT[r]
                        for q in range(H):
                            row[q] += dr * hp[q]
                        rowx = dWxT[r]
                        for d in range(D):
                            rowx[d] += dr * xj[d]


def _readout(h, W, bias, out):
    """out[r] = bias + h[r] W for every row r of h (R, H); W (H, C). Serial: read-outs of
    single streams are small, and BLAS threads would contend with the kernels' threads."""
    R, H = h.shape
    C = W.shape[1]
    for r in range(R):
        for q in range(C):
            out[r, q] = bias[q]
        for k in range(H):
            hk = h[r, k]
            if hk != 0:
                for q in range(C):
                    out[r, q] += hk * W[k, q]


forward_kernel = _jit(_forward, parallel=True)
readout_kernel = _jit(_readout, parallel=False)
forward_kernel_serial = _jit(_forward, parallel=False)
backward_kernel = _jit(_backward, parallel=True)
weight_grads_kernel = _jit(_weight_grads, parallel=True)


# ---------------------------------------------------------------------------- layout
def to_neuron_major(W):
    """(K, 4H) gate blocks [i, f, g, o] -> (K, 4H) with column ``4 n + g`` (a new array)."""
    K, H4 = W.shape
    H = H4 // 4
    return np.ascontiguousarray(W.reshape(K, 4, H).transpose(0, 2, 1).reshape(K, H4))


def from_neuron_major(WT):
    """Inverse of the transpose of :func:`to_neuron_major`: (4H, K) rows ``4 n + g`` ->
    (K, 4H) in gate blocks."""
    H4, K = WT.shape
    H = H4 // 4
    return np.ascontiguousarray(WT.reshape(H, 4, K).transpose(2, 1, 0).reshape(K, H4))


def prepare_params(params, gate_open):
    """The kernels' view of a layer's parameters: neuron-major weights and their
    transposes, float64 timing parameters (dummies when ``gate_open``)."""
    Wx, Wh, b = params["Wx"], params["Wh"], params["b"]
    H = Wh.shape[0]
    WxN = to_neuron_major(Wx)
    WhN = to_neuron_major(Wh)
    prepared = dict(
        WxN=WxN, WhN=WhN, WxT=np.ascontiguousarray(WxN.T), WhT=np.ascontiguousarray(WhN.T),
        bN=np.ascontiguousarray(b.reshape(4, H).T.reshape(4 * H)),
        w_ci=np.ascontiguousarray(params["w_ci"]), w_cf=np.ascontiguousarray(params["w_cf"]),
        w_co=np.ascontiguousarray(params["w_co"]),
    )
    if gate_open:
        one = np.ones(H)
        prepared.update(tau=one, s=np.zeros(H), r_on=one)
    else:
        for name in ("tau", "s", "r_on"):  # the phase is computed in float64
            prepared[name] = np.ascontiguousarray(params[name], dtype=np.float64)
    return prepared


def empty_windows(B, H):
    """Closed windows that contain no time (every first phase is computed exactly)."""
    return np.full((B, H), np.inf), np.full((B, H), -np.inf)


# ---------------------------------------------------------------------------- contract
def layer_forward(params, x, t, lengths, h0, c0, leak, gate_open=False):
    """Run one layer over a batch of sequences (see :func:`plstm_np.reference.layer_forward`).

    Parameters
    ----------
    params : dict of ndarray
        The layer's parameters (contract layout).
    x : ndarray (B, T, D); t : ndarray (B, T) float64; lengths : ndarray (B,) int64
    h0, c0 : ndarray (B, H)
    leak : float
        alpha; with 0, closed neurons are skipped.
    gate_open : bool
        Force ``k = 1`` (the LSTM baseline).

    Returns
    -------
    h : ndarray (B, T, H)
    state : tuple (h_T, c_T)
    cache : dict
        For :func:`layer_backward`; ``cache["updates"]`` is the number of (sample, step,
        neuron) updates computed and ``cache["update_counts"]`` (B, H) the same per sample
        and neuron.
    """
    ensure_available()
    B, T, D = x.shape
    H = params["Wh"].shape[0]
    dtype = params["Wh"].dtype
    p = prepare_params(params, gate_open)
    lo, hi = empty_windows(B, H)
    h_seq = np.empty((B, T, H), dtype)
    hT = np.empty((B, H), dtype)
    cT = np.empty((B, H), dtype)
    c_seq, k_c, i_c, f_c, g_c, o_c, ct_c = (np.empty((B, T, H), dtype) for _ in range(7))
    updated = np.empty((B, T, H), np.uint8)
    counts = np.zeros((B, H), np.int64)
    leak = float(leak)
    kernel = forward_kernel if B > 1 else forward_kernel_serial
    kernel(x, t, lengths, p["WxN"], p["WhN"], p["WxT"], p["WhT"], p["bN"], p["w_ci"],
           p["w_cf"], p["w_co"], p["tau"], p["s"], p["r_on"], leak, bool(gate_open), h0, c0,
           lo, hi, h_seq, hT, cT, True, c_seq, k_c, i_c, f_c, g_c, o_c, ct_c, updated, counts)
    cache = dict(
        backend="numba", params=params, prepared=p, x=x, t=t, lengths=lengths, h0=h0, c0=c0,
        leak=leak, gate_open=bool(gate_open), h_seq=h_seq, c_seq=c_seq, k=k_c, i=i_c, f=f_c,
        g=g_c, o=o_c, ct=ct_c, updated=updated, update_counts=counts,
        updates=int(counts.sum()),
    )
    return h_seq, (hT, cT), cache


def stream_forward(prepared, x, t, lengths, h0, c0, lo, hi, counts, gate_open):
    """Evaluation forward (``leak = 0``) that stores nothing for a backward pass.

    For :class:`plstm_np.streaming.Stream`: ``lo``, ``hi`` (B, H) are the streams' closed
    windows and ``counts`` (B, H) their update counts, both updated in place.

    Returns
    -------
    h_seq : ndarray (B, T, H)
    h_T, c_T : ndarray (B, H)
    """
    ensure_available()
    B, T, _ = x.shape
    H = h0.shape[1]
    dtype = h0.dtype
    h_seq = np.empty((B, T, H), dtype)
    hT = np.empty((B, H), dtype)
    cT = np.empty((B, H), dtype)
    none = np.empty((0, 0, 0), dtype)
    kernel = forward_kernel if B > 1 else forward_kernel_serial
    p = prepared
    kernel(x, t, lengths, p["WxN"], p["WhN"], p["WxT"], p["WhT"], p["bN"], p["w_ci"],
           p["w_cf"], p["w_co"], p["tau"], p["s"], p["r_on"], 0.0, bool(gate_open), h0, c0,
           lo, hi, h_seq, hT, cT, False, none, none, none, none, none, none, none,
           np.empty((0, 0, 0), np.uint8), counts)
    return h_seq, hT, cT


def dense_readout(h, W, bias):
    """``h @ W + bias`` for h (..., H), computed serially (see ``readout_kernel``)."""
    ensure_available()
    h2 = np.ascontiguousarray(h.reshape(-1, W.shape[0]))
    out = np.empty((h2.shape[0], W.shape[1]), W.dtype)
    readout_kernel(h2, W, bias, out)
    return out.reshape(h.shape[:-1] + (W.shape[1],))


def layer_backward(dh_seq, dstate, cache):
    """Backpropagation through time for :func:`layer_forward`.

    Parameters
    ----------
    dh_seq : ndarray (B, T, H)
    dstate : tuple (dh_T, dc_T) or None
    cache : dict
        From :func:`layer_forward`.

    Returns
    -------
    dict of ndarray
        The gradients with the reference's keys: every parameter, and ``x``, ``h0``, ``c0``.
    """
    ensure_available()
    params, p, x = cache["params"], cache["prepared"], cache["x"]
    B, T, D = x.shape
    H = params["Wh"].shape[0]
    dtype = params["Wh"].dtype
    if dstate is None:
        dhT, dcT = np.zeros((B, H), dtype), np.zeros((B, H), dtype)
    else:
        dhT = np.ascontiguousarray(dstate[0], dtype)
        dcT = np.ascontiguousarray(dstate[1], dtype)
    dh_seq = np.ascontiguousarray(dh_seq, dtype)
    dZ = np.empty((B, T, 4 * H), dtype)
    dx = np.empty((B, T, D), dtype)
    dh0, dc0 = np.empty((B, H), dtype), np.empty((B, H), dtype)
    dtau, ds, dr_on = (np.empty((B, H)) for _ in range(3))
    gate_open = cache["gate_open"]
    backward_kernel(dh_seq, dhT, dcT, x, cache["t"], cache["lengths"], p["WxT"], p["WhT"],
                    p["w_ci"], p["w_cf"], p["w_co"], p["tau"], p["s"], p["r_on"], cache["leak"],
                    gate_open, cache["h0"], cache["c0"], cache["h_seq"], cache["c_seq"],
                    cache["k"], cache["i"], cache["f"], cache["g"], cache["o"], cache["ct"],
                    cache["updated"], dZ, dx, dh0, dc0, dtau, ds, dr_on)
    dWxT = np.empty((4 * H, D), dtype)
    dWhT = np.empty((4 * H, H), dtype)
    dbN = np.empty(4 * H, dtype)
    dw_ci, dw_cf, dw_co = (np.empty(H, dtype) for _ in range(3))
    weight_grads_kernel(x, cache["lengths"], cache["h0"], cache["c0"], cache["h_seq"],
                        cache["c_seq"], cache["ct"], cache["updated"], dZ, dWxT, dWhT, dbN,
                        dw_ci, dw_cf, dw_co)
    grads = {
        "Wx": from_neuron_major(dWxT),
        "Wh": from_neuron_major(dWhT),
        "b": np.ascontiguousarray(dbN.reshape(H, 4).T.reshape(4 * H)),
        "w_ci": dw_ci, "w_cf": dw_cf, "w_co": dw_co,
        "x": dx, "h0": dh0, "c0": dc0,
    }
    if not gate_open:
        grads["tau"] = dtau.sum(0).astype(dtype)
        grads["s"] = ds.sum(0).astype(dtype)
        grads["r_on"] = dr_on.sum(0).astype(dtype)
    return grads
