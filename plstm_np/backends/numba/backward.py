"""The Numba backend's BPTT kernels: dense (after a training forward) and sparse (after a
leak-free one, visiting only the updated neurons).

- *dense*: runs the batch chunks through time backwards, with vectorised loops for the
  gates and cells, one BLAS product ``dz Wh^T`` per step, and the weight gradient
  ``h_{j-1}^T dz`` as one BLAS product per ``_WG_STEPS`` steps of the chunk, while those
  steps' dz are still in the cache: dz is never stored for the whole sequence.
- *sparse* (after a ``leak == 0`` forward): visits only the updated neurons; a closed one
  passes its state gradients back unchanged, so costs nothing. Each open neuron's step is
  :func:`plstm_np.scalar_math.cell_backward` (compiled as
  :func:`~plstm_np.backends.numba.cell_math.cell_grads`); its four pre-activation gradients
  are then spread by contiguous rows (``WhTp``, and a neuron-major weight gradient). When
  more than :data:`SPARSE_BACKWARD` of all neuron-steps were updates, the caller reruns
  the forward dense instead and uses the dense backward, which is then faster.

The dense kernel restates :func:`~plstm_np.scalar_math.cell_backward` as row loops, one
output per loop (:func:`_cell_grads_row`): that is what lets LLVM vectorise it, and a
scalar helper called from each loop would recompute the rows they share. Both kernels are
checked against the reference in every gradient test.

The kernels' arguments are the groups of :mod:`~plstm_np.backends.numba.arguments`.
"""
from __future__ import annotations

import numpy as np
from numba import prange

from .cell_math import (
    cell_grads,
    copy,
    dk_dphi,
    dk_dr_on,
    dk_dtau_ds,
    dot,
    gate_constants,
    openness,
)
from .compile import device, kernel
from .forward import blocked_dot, chunk_bounds, open_neurons, phase_row

__all__ = ["backward_kernel", "backward_sparse_kernel", "gate_grads_row", "SPARSE_BACKWARD"]


def gate_grads_row(tj, tau, inv_tau, s, r_on, two_r, leak, phis, k, gtau, gs, gr,
                    t_fast, s_mod):
    """The time gate of every neuron at ``tj`` and its derivatives, for the dense backward
    (every neuron updated): ``k`` (model dtype) and, float64, ``gtau``, ``gs``, ``gr`` =
    dk/dtau, dk/ds, dk/dr_on. One output per loop (see
    :func:`~plstm_np.backends.numba.forward._cells_row`)."""
    H = k.shape[0]
    phase_row(tj, tau, inv_tau, s, phis, t_fast, s_mod)
    for n in range(H):
        k[n] = openness(phis[n], r_on[n], two_r[n], leak)
    for n in range(H):  # each loop keeps one of the two derivatives (inlined)
        gtau[n] = dk_dtau_ds(dk_dphi(phis[n], r_on[n], two_r[n], leak), tj, s[n],
                              inv_tau[n])[0]
    for n in range(H):
        gs[n] = dk_dtau_ds(dk_dphi(phis[n], r_on[n], two_r[n], leak), tj, s[n],
                            inv_tau[n])[1]
    for n in range(H):
        gr[n] = dk_dr_on(phis[n], r_on[n], two_r[n])


gate_grads_row = device(gate_grads_row)


def _cell_grads_row(dh, dc, hp, cp, i_g, f_g, g_g, o_g, tanh_ct_g, k, w_ci, w_cf, w_co, dz, timing,
                    gtau, gs, gr, dtau, ds, dr_on, dw_ci, dw_cf, dw_co, ct, dk, dct, one):
    """One sample's step of BPTT through the cells, every neuron: ``dh``, ``dc`` (gradients
    of the state after the step) become those of the state before it, less the recurrent
    product ``dz Wh^T``; ``dz`` (gate blocks) gets the pre-activation gradients. With
    ``timing``, ``dtau``, ``ds``, ``dr_on`` (float64) accumulate dk times ``gtau``, ``gs``,
    ``gr``; ``dw_ci`` ... (float64) accumulate the peephole gradients. ``ct``, ``dk``,
    ``dct`` are scratch rows. A neuron with ``k = 0`` and zero factors passes its
    gradients through unchanged (its stored gate values must be finite). One output per
    loop (see :func:`~plstm_np.backends.numba.forward._cells_row`)."""
    H = k.shape[0]
    for n in range(H):
        ct[n] = f_g[n] * cp[n] + i_g[n] * g_g[n]
    if timing:  # from the state gradients before they are updated
        for n in range(H):
            dk[n] = dc[n] * (ct[n] - cp[n]) + dh[n] * (o_g[n] * tanh_ct_g[n] - hp[n])
        for n in range(H):
            dtau[n] += dk[n] * gtau[n]
        for n in range(H):
            ds[n] += dk[n] * gs[n]
        for n in range(H):
            dr_on[n] += dk[n] * gr[n]
    for n in range(H):  # dz_o
        oo = o_g[n]
        dz[3 * H + n] = dh[n] * k[n] * tanh_ct_g[n] * oo * (one - oo)
    for n in range(H):
        tanh_ct = tanh_ct_g[n]
        dct[n] = (dc[n] * k[n] + dh[n] * k[n] * o_g[n] * (one - tanh_ct * tanh_ct)
                  + dz[3 * H + n] * w_co[n])
    for n in range(H):  # dz_i
        ii = i_g[n]
        dz[n] = dct[n] * g_g[n] * ii * (one - ii)
    for n in range(H):  # dz_f
        ff = f_g[n]
        dz[H + n] = dct[n] * cp[n] * ff * (one - ff)
    for n in range(H):  # dz_g
        gg = g_g[n]
        dz[2 * H + n] = dct[n] * i_g[n] * (one - gg * gg)
    for n in range(H):
        dc[n] = (dc[n] * (one - k[n]) + dct[n] * f_g[n] + dz[n] * w_ci[n]
                 + dz[H + n] * w_cf[n])
    for n in range(H):
        dh[n] = dh[n] * (one - k[n])
    for n in range(H):
        dw_ci[n] += dz[n] * cp[n]
    for n in range(H):
        dw_cf[n] += dz[H + n] * cp[n]
    for n in range(H):
        dw_co[n] += dz[3 * H + n] * ct[n]


_cell_grads_row = device(_cell_grads_row)


_WG_STEPS = 8  # steps of a chunk per BLAS product of the weight gradient h_{j-1}^T dz
SPARSE_BACKWARD = 0.2  # after a leak-free forward, the backward visits only the updated
# neurons when they are at most this share of all (else the dense kernels are faster)


def _add_product_rows(a_ring, b_ring, rows, part, out):
    """``out += A^T B`` for the first ``rows`` rows of two rings (rows of the last steps,
    step after step): one BLAS product into ``part``, then one pass adding it."""
    np.dot(a_ring[:rows].T, b_ring[:rows], part)
    for q in range(out.shape[0]):
        for col in range(out.shape[1]):
            out[q, col] += part[q, col]


_add_product_rows = device(_add_product_rows)


def _clip_row(dz, clip):
    """Clip every entry of ``dz`` to [-clip, clip] (Lasagne's ``grad_clipping``)."""
    for col in range(dz.shape[0]):
        dz[col] = min(max(dz[col], -clip), clip)


_clip_row = device(_clip_row)


def _backward(grads_out, seq, weights, peep, timing, leak, gate_open, state, h_seq, stored,
              nchunks, order, grads_in, grads_param, clip):
    """BPTT kernel of the dense forward (every neuron updated at every valid step: ``leak >
    0`` or ``gate_open``), parallel over ``nchunks`` chunks of the batch (``weights``
    :class:`DenseWeights`, and the pre-activation gradients dz, in gate blocks).

    Per chunk and step, after the cells: two BLAS products, ``dz Wh^T`` (into dh) and
    ``h_{j-1}^T dz`` (into the chunk's dWh), so dz never leaves the cache and is never
    stored. Packed as the forward (``order``: see
    :func:`~plstm_np.backends.numba.forward._forward_dense`): both products cover only the
    rows still running at the step. Starts from ``grads_out`` (:class:`OutputGrads`); reads
    the forward's
    ``h_seq`` (B, T, H) and ``stored`` (:class:`Stored`) and its ``seq``, ``state`` (the
    initial :class:`State`); writes ``grads_in`` (:class:`InputGrads`) and adds to
    ``grads_param`` (:class:`ParamGrads`, gate blocks). ``clip`` (model dtype): the
    pre-activation gradients are clipped to [-clip, clip] once the peepholes have taken
    theirs (inf: no clipping).
    """
    dh_seq = grads_out.dh_seq
    dhT = grads_out.dhT
    dcT = grads_out.dcT
    x = seq.x
    t = seq.t
    lengths = seq.lengths
    Wx = weights.Wx
    WhT = weights.WhT
    w_ci = peep.w_ci
    w_cf = peep.w_cf
    w_co = peep.w_co
    tau = timing.tau
    s = timing.s
    r_on = timing.r_on
    h0 = state.h
    c0 = state.c
    c_seq = stored.c_seq
    i_c = stored.i
    f_c = stored.f
    g_c = stored.g
    o_c = stored.o
    tanh_ct_c = stored.tanh_ct
    dx = grads_in.dx
    dh0 = grads_in.dh0
    dc0 = grads_in.dc0
    dtau = grads_param.dtau
    ds = grads_param.ds
    dr_on = grads_param.dr_on
    dpeep = grads_param.dpeep
    dWhN = grads_param.dWh
    dWxN = grads_param.dWx
    dbN = grads_param.db
    B, T, H = h_seq.shape
    H4 = 4 * H
    D = dx.shape[2]
    one = h0.dtype.type(1.0)
    inv_tau, two_r, t_fast, s_mod = gate_constants(tau, r_on, s)
    for chunk in prange(nchunks):
        b0, b1 = chunk_bounds(chunk, nchunks, B)
        nb = b1 - b0
        dh = np.empty((nb, H), h0.dtype)
        dc = np.empty((nb, H), h0.dtype)
        for r in range(nb):
            copy(dh[r], dhT[order[b0 + r]])
            copy(dc[r], dcT[order[b0 + r]])
        # the running rows' dz and h_{j-1} of the chunk's last _WG_STEPS steps, one step
        # after the other, for h_prev^T dz
        dz_ring = np.empty((_WG_STEPS * nb, H4), h0.dtype)
        h_ring = np.empty((_WG_STEPS * nb, H), h0.dtype)
        steps = 0
        filled = 0  # rows of the rings in use
        dhp = np.empty((nb, H), h0.dtype)
        part = np.empty((H, H4), h0.dtype)
        kbuf = np.empty(H, h0.dtype)
        ct = np.empty(H, h0.dtype)
        dk = np.empty(H, h0.dtype)
        dct = np.empty(H, h0.dtype)
        phis = np.empty(H)
        gtau = np.empty(H)
        gs = np.empty(H)
        gr = np.empty(H)
        dWh = dWhN[chunk]
        dWx = dWxN[chunk]
        db = dbN[chunk]
        active = 0  # rows r < active are running at step j (sorted by decreasing length)
        for j in range(T - 1, -1, -1):
            while active < nb and lengths[order[b0 + active]] > j:
                active += 1
            dz = dz_ring[filled:filled + active]
            h_prev = h_ring[filled:filled + active]
            for r in range(nb):
                b = order[b0 + r]
                for n in range(H):
                    dh[r, n] += dh_seq[b, j, n]
                if r >= active:  # padded step: state carried, nothing computed
                    dx[b, j] = 0
                    continue
                dzr = dz[r]
                hp = h_seq[b, j - 1] if j > 0 else h0[b]
                copy(h_prev[r], hp)
                cp = c_seq[b, j - 1] if j > 0 else c0[b]
                if gate_open:
                    kbuf[:] = one
                else:
                    gate_grads_row(t[b, j], tau, inv_tau, s, r_on, two_r, leak, phis,
                                    kbuf, gtau, gs, gr, t_fast, s_mod)
                _cell_grads_row(dh[r], dc[r], hp, cp, i_c[b, j], f_c[b, j], g_c[b, j],
                                o_c[b, j], tanh_ct_c[b, j], kbuf, w_ci, w_cf, w_co, dzr,
                                not gate_open, gtau, gs, gr, dtau[b], ds[b], dr_on[b],
                                dpeep[chunk, 0], dpeep[chunk, 1], dpeep[chunk, 2], ct, dk, dct,
                                one)
                if clip < np.inf:  # what leaves the step, into Wx, Wh, b, x and h_{j-1}
                    _clip_row(dzr, clip)
                for d in range(D):  # padded inputs may hold NaN: only valid steps read x
                    dx[b, j, d] = dot(dzr, Wx[d])
                    xd = x[b, j, d]
                    dWx_d = dWx[d]
                    for col in range(H4):
                        dWx_d[col] += xd * dzr[col]
                for col in range(H4):
                    db[col] += dzr[col]
            if active == 0:  # the whole chunk is padding here
                continue
            blocked_dot(dz, WhT, dhp[:active])
            for r in range(active):
                for n in range(H):
                    dh[r, n] += dhp[r, n]
            filled += active
            steps += 1
            if steps == _WG_STEPS or j == 0:
                _add_product_rows(h_ring, dz_ring, filled, part, dWh)
                filled = 0
                steps = 0
        if filled > 0:
            _add_product_rows(h_ring, dz_ring, filled, part, dWh)
        for r in range(nb):
            copy(dh0[order[b0 + r]], dh[r])
            copy(dc0[order[b0 + r]], dc[r])


def _backward_sparse(grads_out, seq, weights, peep, timing, state, h_seq, stored, nchunks,
                     grads_in, grads_param, visits, clip):
    """BPTT through an evaluation forward (``leak = 0``) that visits only the updated neurons,
    parallel over ``nchunks`` chunks of the batch.

    A closed neuron carries (h, c) unchanged, so it passes its state gradients back
    unchanged and its pre-activations get no gradient: nothing to compute. At each step
    the open neurons are found exactly as the forward found them (:func:`open_neurons`);
    each gets its cell gradients (:func:`~plstm_np.backends.numba.cell_math.cell_grads`),
    then its four
    pre-activation gradients dz are spread by rows: ``dz WhTp[4 n + g]`` into dh,
    ``dz h_{j-1}`` into row ``4 n + g`` of the chunk's ``grads_param.dWh`` (4H, Hp)
    (neuron-major, Wh's columns as rows, padded like ``WhTp``), ``dz x_j`` into ``dWx`` (D,
    4H) and ``db`` (4H,) (neuron-major). The stored gate values are read at the updated
    neurons only. ``visits`` (B,) int64 gets the number of neuron-steps visited. Other
    arguments as in :func:`_backward` (``weights`` :class:`SparseWeights`), ``clip``
    included.
    """
    dh_seq = grads_out.dh_seq
    dhT = grads_out.dhT
    dcT = grads_out.dcT
    x = seq.x
    t = seq.t
    lengths = seq.lengths
    WxN = weights.WxN
    WhTp = weights.WhTp
    w_ci = peep.w_ci
    w_cf = peep.w_cf
    w_co = peep.w_co
    tau = timing.tau
    s = timing.s
    r_on = timing.r_on
    gate_rows = timing.gate_rows
    h0 = state.h
    c0 = state.c
    c_seq = stored.c_seq
    i_c = stored.i
    f_c = stored.f
    g_c = stored.g
    o_c = stored.o
    tanh_ct_c = stored.tanh_ct
    dx = grads_in.dx
    dh0 = grads_in.dh0
    dc0 = grads_in.dc0
    dtau = grads_param.dtau
    ds = grads_param.ds
    dr_on = grads_param.dr_on
    dpeep = grads_param.dpeep
    dWhT = grads_param.dWh
    dWxN = grads_param.dWx
    dbN = grads_param.db
    B, T, H = h_seq.shape
    D = dx.shape[2]
    one = h0.dtype.type(1.0)
    inv_tau, two_r, t_fast, s_mod = gate_constants(tau, r_on, s)
    for chunk in prange(nchunks):
        b0, b1 = chunk_bounds(chunk, nchunks, B)
        dWh = dWhT[chunk]
        dWx = dWxN[chunk]
        db = dbN[chunk]
        dw = dpeep[chunk]
        k64 = np.empty(H)
        phis = np.empty(H)
        open_idx = np.empty(H, np.int64)
        dz = np.empty(4 * H, h0.dtype)  # four per open neuron, in the order listed
        Hp = WhTp.shape[1]
        dhp = np.zeros(Hp, h0.dtype)  # dh and h_{j-1}, zero-padded like WhTp's rows
        hpp = np.zeros(Hp, h0.dtype)
        dh = dhp[:H]
        for b in range(b0, b1):
            copy(dh, dhT[b])
            dc = dcT[b].copy()
            m = -1
            for j in range(T - 1, -1, -1):
                for n in range(H):
                    dh[n] += dh_seq[b, j, n]
                if j >= lengths[b]:  # padded step: state carried, nothing computed
                    for d in range(D):
                        dx[b, j, d] = 0
                    continue
                tj = t[b, j]
                m = open_neurons(tj, gate_rows, tau, inv_tau, s, r_on, two_r, False, k64,
                                  open_idx, m, phis, t_fast, s_mod)
                visits[b] += m
                hp = h_seq[b, j - 1] if j > 0 else h0[b]
                cp = c_seq[b, j - 1] if j > 0 else c0[b]
                for p in range(m):  # the cells, one neuron at a time
                    n = open_idx[p]
                    k = h0.dtype.type(k64[n])
                    ii = i_c[b, j, n]
                    ff = f_c[b, j, n]
                    gg = g_c[b, j, n]
                    oo = o_c[b, j, n]
                    cpn = cp[n]
                    ct = ff * cpn + ii * gg
                    dz_i, dz_f, dz_g, dz_o, dc_prev, dh_prev, dk = cell_grads(
                        dh[n], dc[n], k, ii, ff, gg, oo, ct, tanh_ct_c[b, j, n], cpn, hp[n],
                        w_ci[n], w_cf[n], w_co[n], one)
                    dc[n] = dc_prev
                    dh[n] = dh_prev
                    phi = phis[n]
                    dk_dtau, dk_ds = dk_dtau_ds(dk_dphi(phi, r_on[n], two_r[n], 0.0), tj,
                                                s[n], inv_tau[n])
                    dtau[b, n] += dk * dk_dtau
                    ds[b, n] += dk * dk_ds
                    dr_on[b, n] += dk * dk_dr_on(phi, r_on[n], two_r[n])
                    dw[0, n] += dz_i * cpn
                    dw[1, n] += dz_f * cpn
                    dw[2, n] += dz_o * ct
                    if clip < np.inf:  # after the peepholes, as in the dense kernel
                        dz_i = min(max(dz_i, -clip), clip)
                        dz_f = min(max(dz_f, -clip), clip)
                        dz_g = min(max(dz_g, -clip), clip)
                        dz_o = min(max(dz_o, -clip), clip)
                    dz[4 * p] = dz_i
                    dz[4 * p + 1] = dz_f
                    dz[4 * p + 2] = dz_g
                    dz[4 * p + 3] = dz_o
                copy(hpp[:H], hp)
                for p in range(m):  # then the pre-activations' gradients, by rows
                    n4 = 4 * open_idx[p]
                    d0 = dz[4 * p]
                    d1 = dz[4 * p + 1]
                    d2 = dz[4 * p + 2]
                    d3 = dz[4 * p + 3]
                    w0 = WhTp[n4]
                    w1 = WhTp[n4 + 1]
                    w2 = WhTp[n4 + 2]
                    w3 = WhTp[n4 + 3]
                    for q in range(Hp):  # dh += dz Wh^T (padded rows: no remainder loop)
                        dhp[q] += d0 * w0[q] + d1 * w1[q] + d2 * w2[q] + d3 * w3[q]
                    for g in range(4):
                        dzr = dz[4 * p + g]
                        dWh_row = dWh[n4 + g]
                        for q in range(Hp):
                            dWh_row[q] += dzr * hpp[q]
                        db[n4 + g] += dzr
                for d in range(D):  # padded inputs may hold NaN: only valid steps read x
                    xd = x[b, j, d]
                    acc = h0.dtype.type(0.0)
                    for p in range(m):
                        for g in range(4):
                            row = 4 * open_idx[p] + g
                            acc += dz[4 * p + g] * WxN[d, row]
                            dWx[d, row] += xd * dz[4 * p + g]
                    dx[b, j, d] = acc
            copy(dh0[b], dh)
            dc0[b] = dc



backward_kernel = kernel(_backward, parallel=True)
backward_sparse_kernel = kernel(_backward_sparse, parallel=True)
