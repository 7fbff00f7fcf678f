"""The Numba backend's forward kernels: dense (training) and sparse (evaluation, streams).

- *dense* (``leak > 0`` or ``gate_open``: training): every neuron updates, so the step is
  a matrix product. The batch is cut into one chunk per thread; each thread runs its chunk
  through time with one BLAS product ``h_{j-1} Wh`` per step (``np.dot`` in the kernel),
  then vectorised loops for the time gates and the cells (one output array per loop: see
  :func:`_cells_row`).
- *sparse* (``leak == 0``): one sample per task; at each step only the open neurons' four
  gate rows are computed, contiguous dot products of length H (``WhTp``), or one full
  product when many neurons are open; the open neurons' cells are then updated a group of
  ``_LANES`` at a time by a vectorised loop (see :func:`_open_cells`).

Skipping without computing every phase. Even computed with one fused multiply-add instead
of a floating-point ``mod`` (see :func:`~plstm_np.backends.numba.cell_math.phase`), an exact
phase costs a few ns, which would dominate a step in which 95 % of the neurons are closed.
The sparse kernel first screens eight neurons at a time with an approximate phase,
``frac((t - s) / tau)`` from one multiplication by ``1 / tau``, widened by a margin far above
its rounding error (:data:`~plstm_np.backends.numba.intrinsics.SCREEN_MARGIN`), into a bit
mask of the neurons that may be open (a few vector instructions per eight neurons, see
:func:`~plstm_np.backends.numba.intrinsics.maybe_open8`); only those get the exact phase,
which decides. When more than half the neurons were open at the previous step, one
vectorised pass computes every exact phase instead (see :func:`open_neurons`). Either way
the neurons updated are exactly those whose exact phase is open.

The kernels' arguments are the groups of :mod:`~plstm_np.backends.numba.arguments`.
"""
from __future__ import annotations

import numpy as np
from numba import prange

from .cell_math import (
    cell,
    copy,
    gate_constants,
    openness,
    phase_fast_inline,
    phase_inline,
    sigmoid,
    tanh,
)
from .compile import device, kernel
from .intrinsics import lowest_bit, maybe_open8, prefetch

__all__ = ["forward_kernel", "forward_kernel_serial", "forward_dense_kernel", "open_neurons",
           "blocked_dot", "chunk_bounds", "phase_row", "gate_row", "MANY_OPEN", "DOT_PAD"]


MANY_OPEN = 2  # more than H / 2 open at the previous step: every exact phase, vectorised


def open_neurons(tj, gate_rows, tau, inv_tau, s, r_on, two_r, gate_open, k_out, open_idx,
                  m_prev, phis, t_fast, s_mod):
    """Evaluation gate (``leak = 0``): fill ``open_idx[:m]`` with the neurons updated at time
    ``tj``, ``k_out`` with their openness and ``phis`` with their phases (float64); return
    m. ``gate_open``: every neuron, k = 1.

    When at most half the neurons were open at the previous step (``m_prev`` of them; -1
    at the first), the neurons that may be open are screened eight at a time
    (:func:`maybe_open8`, bit masks gathered 64 to a word) and only those get the exact
    phase. Otherwise one vectorised pass computes every exact phase into ``phis`` (when
    most neurons are open that is cheaper than the exact phases one by one) and the open
    ones are listed. The neurons found open and their phases are the same either way.
    """
    H = tau.shape[0]
    m = 0
    if gate_open:
        for n in range(H):
            k_out[n] = 1.0
            open_idx[n] = n
        return H
    if m_prev * MANY_OPEN > H:
        phase_row(tj, tau, inv_tau, s, phis, t_fast, s_mod)
        for n in range(H):
            phi = phis[n]
            if phi < r_on[n]:
                k_out[n] = openness(phi, r_on[n], two_r[n], 0.0)
                open_idx[m] = n
                m += 1
        return m
    groups = gate_rows.shape[1] // 8
    candidates = 0  # listed in open_idx first
    for g0 in range(0, groups, 8):
        word = np.uint64(0)  # the screen's bits of neurons 8 g0 .. 8 g0 + 63
        for g in range(g0, min(g0 + 8, groups)):
            word |= maybe_open8(tj, gate_rows, 8 * g) << np.uint64(8 * (g - g0))
        while word != 0:
            open_idx[candidates] = 8 * g0 + lowest_bit(word)
            candidates += 1
            word &= word - np.uint64(1)
    fast = abs(tj) < t_fast
    for c in range(candidates):  # exact phases, in a loop of their own: they overlap
        n = open_idx[c]
        if fast:
            phis[n] = phase_fast_inline(tj, tau[n], inv_tau[n], s_mod[n])
        else:
            phis[n] = phase_inline(tj, tau[n], inv_tau[n], s[n])
    for c in range(candidates):  # in place: m <= c
        n = open_idx[c]
        if phis[n] < r_on[n]:
            k_out[n] = openness(phis[n], r_on[n], two_r[n], 0.0)
            open_idx[m] = n
            m += 1
    return m


open_neurons = device(open_neurons)


def _sparse_preacts(row0, xj, hp, WxN, WhN, WhTp, open_idx, m, z):
    """z[4n:4n+4] = row0 + x_j Wx + h Wh for the m open neurons (neuron-major). ``row0`` is
    the bias (or a token's precomputed input projection plus bias); ``hp`` is h padded with
    zeros to the row length of ``WhTp`` (Wh^T neuron-major, zero-padded columns)."""
    H = WhN.shape[0]
    H4 = z.shape[0]
    D = xj.shape[0]
    if 4 * m >= H:  # many open: one full product, rows of WhN axpy'd (vectorised)
        for c in range(H4):
            z[c] = row0[c]
        for q in range(H):
            hq = hp[q]
            r = WhN[q]
            for c in range(H4):
                z[c] += hq * r[c]
        for d in range(D):
            xd = xj[d]
            r = WxN[d]
            for c in range(H4):
                z[c] += xd * r[c]
        return
    Hp = hp.shape[0]
    for p in range(m):  # few open: each open neuron's 4 contiguous gate rows
        n4 = 4 * open_idx[p]
        a0 = a1 = a2 = a3 = hp.dtype.type(0.0)
        w0 = WhTp[n4]  # row views: a third faster than indexing WhTp[n4 + g, q] in the loop
        w1 = WhTp[n4 + 1]
        w2 = WhTp[n4 + 2]
        w3 = WhTp[n4 + 3]
        for q in range(Hp):  # a multiple of the vector loop's step: no scalar remainder
            hq = hp[q]
            a0 += hq * w0[q]
            a1 += hq * w1[q]
            a2 += hq * w2[q]
            a3 += hq * w3[q]
        a0 += row0[n4]
        a1 += row0[n4 + 1]
        a2 += row0[n4 + 2]
        a3 += row0[n4 + 3]
        for d in range(D):  # inputs beyond a token's projection: few, so gathered by column
            xd = xj[d]
            a0 += xd * WxN[d, n4]
            a1 += xd * WxN[d, n4 + 1]
            a2 += xd * WxN[d, n4 + 2]
            a3 += xd * WxN[d, n4 + 3]
        z[n4] = a0
        z[n4 + 1] = a1
        z[n4 + 2] = a2
        z[n4 + 3] = a3


_sparse_preacts = device(_sparse_preacts)

DOT_PAD = 64  # WhTp's rows are padded to a multiple of this: LLVM's vectorised dot loop
# steps through 64 floats (16 lanes, unrolled 4 times) and would do a remainder of up to
# 63 terms one by one


_LANES = 8  # open neurons per vectorised group (about r_on * H are open at a time)
# slots of the group buffer: inputs, then results
_S_ZI, _S_ZF, _S_ZG, _S_ZO, _S_C, _S_H, _S_WCI, _S_WCF, _S_WCO, _S_K = range(10)
_S_CNEW, _S_HNEW, _S_I, _S_F, _S_G, _S_O, _S_TANH_CT = range(10, 17)
_SLOTS = 17


def _open_cells(p0, open_idx, m, k64, z, c, h, w_ci, w_cf, w_co, buf, one):
    """Cell updates of the open neurons ``open_idx[p0:p0 + _LANES]`` (fewer at the end of
    the m): gathered into ``buf``, computed by a loop that LLVM vectorises, the results
    (new c and h, gates i, f, g, o, tanh(c~)) left in ``buf`` for the caller to scatter.

    ``buf`` is one array addressed at constant offsets (``slot * _LANES + u``), so LLVM sees
    that the slots do not overlap: with as many separate arrays it would have to check for
    aliasing at run time, and gives up vectorising. Lanes past the last open neuron compute
    on zeros and are not read.
    """
    cnt = min(_LANES, m - p0)
    for u in range(_LANES):
        if u < cnt:
            n = open_idx[p0 + u]
            buf[_S_ZI * _LANES + u] = z[4 * n]
            buf[_S_ZF * _LANES + u] = z[4 * n + 1]
            buf[_S_ZG * _LANES + u] = z[4 * n + 2]
            buf[_S_ZO * _LANES + u] = z[4 * n + 3]
            buf[_S_C * _LANES + u] = c[n]
            buf[_S_H * _LANES + u] = h[n]
            buf[_S_WCI * _LANES + u] = w_ci[n]
            buf[_S_WCF * _LANES + u] = w_cf[n]
            buf[_S_WCO * _LANES + u] = w_co[n]
            buf[_S_K * _LANES + u] = k64[n]
        else:
            for slot in range(_S_K + 1):
                buf[slot * _LANES + u] = 0
    for u in range(_LANES):
        k = buf[_S_K * _LANES + u]
        cp = buf[_S_C * _LANES + u]
        ii, ff, gg, oo, ct, tanh_ct = cell(buf[_S_ZI * _LANES + u], buf[_S_ZF * _LANES + u],
                                       buf[_S_ZG * _LANES + u], buf[_S_ZO * _LANES + u], cp,
                                       buf[_S_WCI * _LANES + u], buf[_S_WCF * _LANES + u],
                                       buf[_S_WCO * _LANES + u], one)
        buf[_S_CNEW * _LANES + u] = k * ct + (one - k) * cp
        buf[_S_HNEW * _LANES + u] = k * (oo * tanh_ct) + (one - k) * buf[_S_H * _LANES + u]
        buf[_S_I * _LANES + u] = ii
        buf[_S_F * _LANES + u] = ff
        buf[_S_G * _LANES + u] = gg
        buf[_S_O * _LANES + u] = oo
        buf[_S_TANH_CT * _LANES + u] = tanh_ct
    return cnt


_open_cells = device(_open_cells)


def _forward_sparse(seq, tokens_in, weights, peep, timing, gate_open, state, h_seq, final,
                    store, stored, counts, readout):
    """Evaluation forward (``leak = 0``), parallel over the batch; a closed neuron costs its
    lane of the screen (:func:`open_neurons`).

    ``seq`` :class:`Sequence`, ``tokens_in`` :class:`Tokens`, ``weights``
    :class:`SparseWeights`, ``peep`` :class:`Peepholes`, ``timing`` :class:`Timing`,
    ``state`` the initial :class:`State`, ``final`` the :class:`State` written at the end;
    ``gate_open``: k = 1 for every neuron (the LSTM). Writes ``h_seq`` (B, T, H) at every
    step unless it is empty (0, 0, 0). With ``store`` the values the backward needs are
    written to ``stored`` (:class:`Stored`) for the updated neurons (the others are left
    unwritten). ``counts`` (B, H) int64 is incremented by the updates computed.

    Read-out (streams): when ``readout.y_seq`` is not empty, ``y_seq[b, j] = b + h_j W``
    after every step. It is updated incrementally in float64 (the updated neurons' change
    of h times their rows of ``W``: a few rows instead of H), and recomputed whole every
    ``_READOUT_EXACT`` steps of a call, so that rounding cannot accumulate.
    """
    x = seq.x
    t = seq.t
    lengths = seq.lengths
    table = tokens_in.table
    tokens = tokens_in.tokens
    WxN = weights.WxN
    WhN = weights.WhN
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
    hT = final.h
    cT = final.c
    c_seq = stored.c_seq
    i_c = stored.i
    f_c = stored.f
    g_c = stored.g
    o_c = stored.o
    tanh_ct_c = stored.tanh_ct
    rW = readout.W
    rb = readout.b
    y_seq = readout.y_seq
    B, T, D = x.shape
    H = h0.shape[1]
    one = h0.dtype.type(1.0)
    use_tokens = tokens.shape[0] > 0
    read_out = y_seq.shape[0] > 0
    write_h = h_seq.shape[0] > 0
    C = rW.shape[1]
    inv_tau, two_r, t_fast, s_mod = gate_constants(tau, r_on, s)
    for b in prange(B):
        hp = np.zeros(WhTp.shape[1], h0.dtype)  # h, zero-padded for the dot products
        h = hp[:H]
        copy(h, h0[b])
        c = c0[b].copy()
        buf = np.empty(_SLOTS * _LANES, h0.dtype)
        y = np.zeros(C)
        z = np.empty(4 * H, h0.dtype)
        k64 = np.empty(H)
        phis = np.empty(H)
        open_idx = np.empty(H, np.int64)
        L = lengths[b]
        m = -1  # no previous step
        for j in range(T):
            if j < L:
                m = open_neurons(t[b, j], gate_rows, tau, inv_tau, s, r_on, two_r, gate_open,
                                  k64, open_idx, m, phis, t_fast, s_mod)
                if m > 0:
                    row0 = table[tokens[b, j]] if use_tokens else table[0]
                    _sparse_preacts(row0, x[b, j], hp, WxN, WhN, WhTp, open_idx, m, z)
                for p0 in range(0, m, _LANES):
                    cnt = _open_cells(p0, open_idx, m, k64, z, c, h, w_ci, w_cf, w_co, buf,
                                      one)
                    for u in range(cnt):  # scatter the results back
                        n = open_idx[p0 + u]
                        c[n] = buf[_S_CNEW * _LANES + u]
                        h_old = h[n]
                        h[n] = buf[_S_HNEW * _LANES + u]
                        counts[b, n] += 1
                        if read_out:
                            dhn = np.float64(h[n]) - np.float64(h_old)
                            rWn = rW[n]
                            for q in range(C):
                                y[q] += dhn * rWn[q]
                        if store:
                            i_c[b, j, n] = buf[_S_I * _LANES + u]
                            f_c[b, j, n] = buf[_S_F * _LANES + u]
                            g_c[b, j, n] = buf[_S_G * _LANES + u]
                            o_c[b, j, n] = buf[_S_O * _LANES + u]
                            tanh_ct_c[b, j, n] = buf[_S_TANH_CT * _LANES + u]
                if use_tokens and j + 1 < L:
                    # the next event's token row is a random row of a large table: ask
                    # for the columns of the neurons open now (likely still open) early
                    token_next = tokens[b, j + 1]
                    for p in range(m):
                        prefetch(table, token_next, 4 * open_idx[p])
            if write_h:
                copy(h_seq[b, j], h)
            if store:
                copy(c_seq[b, j], c)
            if read_out:
                if j % _READOUT_EXACT == 0:  # whole, from h (then updated incrementally)
                    for q in range(C):
                        y[q] = rb[q]
                    for n in range(H):
                        hn = np.float64(h[n])
                        rWn = rW[n]
                        for q in range(C):
                            y[q] += hn * rWn[q]
                for q in range(C):
                    y_seq[b, j, q] = y[q]
        hT[b] = h
        cT[b] = c


_READOUT_EXACT = 32  # steps between whole recomputations of a stream's read-out


_GEMM_ROWS = 16  # rows per BLAS product in the dense kernels (measured fastest here)


def blocked_dot(a, b, out):
    """``out = a @ b`` as BLAS products of at most ``_GEMM_ROWS`` rows of ``a``: OpenBLAS is
    faster per row on such blocks, and runs them on the calling thread."""
    R = a.shape[0]
    for r0 in range(0, R, _GEMM_ROWS):
        r1 = min(R, r0 + _GEMM_ROWS)
        np.dot(a[r0:r1], b, out[r0:r1])


blocked_dot = device(blocked_dot)


def chunk_bounds(chunk, nchunks, B):
    """Rows [b0, b1) of the batch that chunk ``chunk`` of ``nchunks`` owns."""
    return chunk * B // nchunks, (chunk + 1) * B // nchunks


chunk_bounds = device(chunk_bounds)


def phase_row(tj, tau, inv_tau, s, phis, t_fast, s_mod):
    """Every neuron's exact phase at ``tj`` into ``phis``: the vectorised row path when
    ``|tj| < t_fast`` (see :func:`~plstm_np.backends.numba.cell_math.gate_constants`), else
    the phase with libm's ``fmod`` where a quotient is huge."""
    H = phis.shape[0]
    if abs(tj) < t_fast:
        for n in range(H):  # a loop LLVM vectorises (no branches)
            phis[n] = phase_fast_inline(tj, tau[n], inv_tau[n], s_mod[n])
    else:
        for n in range(H):
            phis[n] = phase_inline(tj, tau[n], inv_tau[n], s[n])


phase_row = device(phase_row)


def gate_row(tj, tau, inv_tau, s, r_on, two_r, leak, phis, k, t_fast, s_mod):
    """The time gate of every neuron at ``tj`` (training: every neuron updates): the phases
    into ``phis`` (float64), the openness into ``k`` (model dtype). One output per loop,
    as in the cell loops below."""
    H = k.shape[0]
    phase_row(tj, tau, inv_tau, s, phis, t_fast, s_mod)
    for n in range(H):
        k[n] = openness(phis[n], r_on[n], two_r[n], leak)


gate_row = device(gate_row)


def _cells_row(z, k, c, h, w_ci, w_cf, w_co, i_out, f_out, g_out, o_out, tanh_ct_out, ct,
               one):
    """Update every neuron of one sample from its pre-activations ``z`` (gate blocks) and
    openness ``k``: ``c``, ``h`` in place, the gate values into the ``*_out`` rows, ``ct``
    (c~) a scratch row.

    One loop per output: LLVM vectorises a loop only when it can rule out overlap between
    the arrays it writes and those it reads, with run-time checks for every such pair,
    and gives up beyond a few; a single loop writing all seven rows stays scalar."""
    H = k.shape[0]
    for n in range(H):
        i_out[n] = sigmoid(z[n] + w_ci[n] * c[n], one)
    for n in range(H):
        f_out[n] = sigmoid(z[H + n] + w_cf[n] * c[n], one)
    for n in range(H):
        g_out[n] = tanh(z[2 * H + n], one)
    for n in range(H):
        ct[n] = f_out[n] * c[n] + i_out[n] * g_out[n]
    for n in range(H):
        o_out[n] = sigmoid(z[3 * H + n] + w_co[n] * ct[n], one)
    for n in range(H):
        tanh_ct_out[n] = tanh(ct[n], one)
    for n in range(H):
        c[n] = k[n] * ct[n] + (one - k[n]) * c[n]
    for n in range(H):
        h[n] = k[n] * (o_out[n] * tanh_ct_out[n]) + (one - k[n]) * h[n]


_cells_row = device(_cells_row)


def _forward_dense(seq, weights, peep, timing, leak, gate_open, state, nchunks, order, h_seq,
                   stored, final):
    """Training forward (every neuron updates at every valid step), parallel over
    ``nchunks`` chunks of the batch, one BLAS product ``h_{j-1} Wh`` per chunk and step
    (``weights`` :class:`DenseWeights`: gate blocks).

    Packed like PyTorch's packed sequences: chunk ``c`` takes the rows ``order[b0:b1]``
    (:func:`chunk_bounds`), sorted by decreasing length (see
    :func:`~plstm_np.backends.numba.workspace.packed_order`), so the rows still running at
    step j are the first ``active`` of the chunk and the product covers only them: padding
    costs no arithmetic.

    Writes ``h_seq`` and ``stored.c_seq`` (B, T, H) at every step, the other ``stored``
    values at valid steps, and the final :class:`State` ``final``. Other arguments as in
    :func:`_forward_sparse`; ``leak`` is alpha.
    """
    x = seq.x
    t = seq.t
    lengths = seq.lengths
    Wx = weights.Wx
    Wh = weights.Wh
    b_ = weights.b
    w_ci = peep.w_ci
    w_cf = peep.w_cf
    w_co = peep.w_co
    tau = timing.tau
    s = timing.s
    r_on = timing.r_on
    h0 = state.h
    c0 = state.c
    hT = final.h
    cT = final.c
    c_seq = stored.c_seq
    i_c = stored.i
    f_c = stored.f
    g_c = stored.g
    o_c = stored.o
    tanh_ct_c = stored.tanh_ct
    B, T, D = x.shape
    H = h0.shape[1]
    H4 = 4 * H
    one = h0.dtype.type(1.0)
    inv_tau, two_r, t_fast, s_mod = gate_constants(tau, r_on, s)
    for chunk in prange(nchunks):
        b0, b1 = chunk_bounds(chunk, nchunks, B)
        nb = b1 - b0
        h = np.empty((nb, H), h0.dtype)
        c = np.empty((nb, H), h0.dtype)
        for r in range(nb):
            copy(h[r], h0[order[b0 + r]])
            copy(c[r], c0[order[b0 + r]])
        z = np.empty((nb, H4), h0.dtype)
        kbuf = np.empty(H, h0.dtype)
        ct = np.empty(H, h0.dtype)
        phis = np.empty(H)
        active = nb  # rows r < active are still running at step j
        for j in range(T):
            while active > 0 and lengths[order[b0 + active - 1]] <= j:
                active -= 1
            if active > 0:
                blocked_dot(h[:active], Wh, z[:active])
            for r in range(nb):
                b = order[b0 + r]
                if r < active:
                    zr = z[r]
                    for col in range(H4):
                        zr[col] += b_[col]
                    for d in range(D):
                        xd = x[b, j, d]
                        w = Wx[d]
                        for col in range(H4):
                            zr[col] += xd * w[col]
                    if gate_open:
                        kbuf[:] = one
                    else:
                        gate_row(t[b, j], tau, inv_tau, s, r_on, two_r, leak, phis, kbuf,
                                  t_fast, s_mod)
                    _cells_row(zr, kbuf, c[r], h[r], w_ci, w_cf, w_co, i_c[b, j], f_c[b, j],
                               g_c[b, j], o_c[b, j], tanh_ct_c[b, j], ct, one)
                copy(h_seq[b, j], h[r])
                copy(c_seq[b, j], c[r])
        for r in range(nb):
            copy(hT[order[b0 + r]], h[r])
            copy(cT[order[b0 + r]], c[r])


forward_kernel = kernel(_forward_sparse, parallel=True)
forward_kernel_serial = kernel(_forward_sparse, parallel=False)
forward_dense_kernel = kernel(_forward_dense, parallel=True)
