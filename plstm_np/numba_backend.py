"""The Numba CPU backend: ``@njit`` forward and BPTT kernels that skip closed neurons.

Same contract as :mod:`plstm_np.reference` (same equations, same gradient keys), with the
paper's sparse updates made real. When ``leak == 0`` (evaluation, or training with the leak
switched off) a neuron whose time gate is on its closed piece has ``k = 0`` and carries
``(h, c)`` unchanged, so the kernels compute neither its gate pre-activations nor its
nonlinearities. A neuron is *updated* at a valid step when its phase lies on an open piece,
``0 <= phi < r_on`` (with ``leak > 0`` or ``gate_open`` every neuron is updated at every
valid step); the kernels count the updates they compute per sample and per neuron.

Two forward kernels:

- *dense* (``leak > 0`` or ``gate_open``: training): every neuron updates, so the step is
  a matrix product. The batch is cut into one chunk per thread; each thread runs its chunk
  through time with one BLAS product ``h_{j-1} Wh`` per step (``np.dot`` in the kernel),
  then a loop for the time gates and a vectorised loop for the cells.
- *sparse* (``leak == 0``): one sample per task; at each step only the open neurons' four
  gate rows are computed, contiguous dot products of length H (``WhTp``), or one full
  product when many neurons are open; the open neurons' cells are then updated a group of
  ``_LANES`` at a time by a vectorised loop (see :func:`_open_cells`).

The backward kernel runs the batch chunks through time backwards, with one BLAS product
``dz Wh^T`` per step and vectorised loops for the cells; the weight gradients follow, per
chunk, as BLAS products over blocks of steps. Every BLAS product is small enough that
OpenBLAS runs it on the calling thread: its own threads would contend with the kernels'.

Memory. A training forward keeps ``h``, ``c``, ``i``, ``f``, ``g``, ``o`` and ``tanh(c~)`` per
step: what a hand-written LSTM stores. ``c~`` and the time gate ``k`` (and whether a neuron
was updated) are recomputed in the backward, which needs the exact phase anyway for the
timing gradients. An evaluation forward (``leak == 0``) keeps only ``h``; a backward through
it first reruns the forward, storing.

Arithmetic. Gate maths runs in the model dtype (float32 maths for float32 models), with
sigmoid and tanh built on one ``exp`` each; the phase is always float64, bitwise equal to
:func:`plstm_np.time_gate.phase`. The kernels may reassociate sums
(:data:`plstm_np.config.NUMBA_REASSOC`), which lets LLVM vectorise the dot products, and
use NumPy's error model (no ZeroDivisionError branch in loops; no division can be by zero).

Layout. The kernels take C-contiguous arrays and scalars only; :func:`layer_forward` and
:func:`layer_backward` validate nothing (the API boundary did), re-layout and dispatch.
The dense kernels use the contract layout (gate blocks ``[i, f, g, o]``, so the gate loops
read contiguous blocks). For the sparse kernel the weights are re-laid out *neuron-major*:
column ``4 n + g`` of ``WxN`` / ``WhN`` (and row ``4 n + g`` of the transpose ``WhTp``, its
rows zero-padded to a multiple of ``_DOT_PAD``) is gate ``g`` of neuron ``n``, so an open
neuron's four gate rows are contiguous.

Skipping without computing every phase. Even computed with one fused multiply-add instead
of a floating-point ``mod`` (see :func:`_phase`), a phase costs a few ns, which would
dominate a step in which 95 % of the neurons are closed. While a neuron is closed the
sparse kernel remembers the window ``[lo, hi)`` of times that are certainly still on the
closed piece of the same cycle (bounds pulled in by a margin far larger than any rounding),
so a closed neuron costs two comparisons. Every time outside its window gets the exact phase.
And while a step's time lies in every closed neuron's window (the largest ``lo`` and the
smallest ``hi`` are kept), only the neurons open at the previous step are examined at all.

Compilation is lazy: importing this module defines the dispatchers but compiles nothing.
Each kernel is compiled on its first call, once per dtype, and cached on disk when
:data:`plstm_np.config.NUMBA_CACHE` is on (see :mod:`plstm_np.config` for every knob).
"""
from __future__ import annotations

import math
import types

import numba
import numpy as np
from llvmlite import ir
from numba import prange
from numba.core import cgutils
from numba.extending import intrinsic, overload

from . import config, scalar_math

__all__ = ["layer_forward", "layer_backward", "ensure_available", "to_neuron_major",
           "prepare_params", "empty_windows", "stream_forward",
           "token_table", "PHASE_MARGIN"]

#: Relative margin (times ``|t| + |s| + tau``) by which a closed neuron's window of
#: certainly-closed times is pulled in from the exact cycle bounds; rounding errors of
#: the phase are below 1e-15 of that magnitude.
PHASE_MARGIN = 1e-12

# Compiled code is cached only with the default flags: Numba's cache index does not
# include fastmath, so a cache written with other flags could be served by mistake.
_CACHE = bool(config.NUMBA_CACHE) and not config.NUMBA_FASTMATH and bool(config.NUMBA_REASSOC)
if config.NUMBA_FASTMATH:
    _FASTMATH = True
elif config.NUMBA_REASSOC:
    _FASTMATH = {"reassoc"}
else:
    _FASTMATH = False
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
    # error_model="numpy": a float division carries no ZeroDivisionError branch (which
    # would stop LLVM from vectorising loops); no division here can be by zero anyway
    return numba.njit(clone, parallel=parallel and bool(config.NUMBA_PARALLEL),
                      fastmath=_FASTMATH, cache=_CACHE, nogil=True, error_model="numpy")


def _device(fn):
    """A scalar helper, inlined into the kernels."""
    return numba.njit(fn, fastmath=_FASTMATH, cache=_CACHE, inline="always",
                      error_model="numpy")


def _shared_helper(fn, **calls):
    """Compile a :mod:`plstm_np.scalar_math` helper whose globals name other helpers: a copy
    of it that sees their compiled versions instead."""
    scope = dict(fn.__globals__, **calls)
    copy = types.FunctionType(fn.__code__, scope, fn.__name__, fn.__defaults__)
    copy.__qualname__ = fn.__qualname__
    copy.__module__ = __name__
    return _device(copy)


_gate_piece = _device(scalar_math.gate_piece)
_gate_openness = _shared_helper(scalar_math.gate_openness, gate_piece=_gate_piece)
_gate_dk_dphi = _shared_helper(scalar_math.gate_dk_dphi, gate_piece=_gate_piece)
_gate_dk_dr_on = _shared_helper(scalar_math.gate_dk_dr_on, gate_piece=_gate_piece)


@intrinsic
def _fma(typingctx, a, b, c):
    """``a * b + c`` with a single rounding (LLVM's fma intrinsic), float64."""
    sig = numba.types.float64(numba.types.float64, numba.types.float64, numba.types.float64)

    def codegen(context, builder, signature, args):
        f64 = ir.DoubleType()
        fn = builder.module.declare_intrinsic("llvm.fma", [f64], ir.FunctionType(f64, [f64] * 3))
        return builder.call(fn, args)

    return sig, codegen


@intrinsic
def _prefetch(typingctx, array, row, col):
    """Ask the CPU to start loading ``array[row, col]`` into its caches (LLVM's prefetch
    hint: no effect on any result)."""
    sig = numba.types.void(array, row, col)

    def codegen(context, builder, signature, args):
        array_type = signature.args[0]
        arr = context.make_array(array_type)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, array_type, arr, [args[1], args[2]],
                                       wraparound=False)
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [ptr.type, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        builder.call(fn, [ptr, i32(0), i32(3), i32(1)])  # read, keep in all levels, data
        return context.get_dummy_value()

    return sig, codegen


def _phase(t, tau, s):
    """``((t - s) mod tau) / tau`` in [0, 1), bitwise equal to :func:`scalar_math.phase`
    (and so to NumPy's) at a third of the cost of a floating-point ``mod``.

    ``fmod(x, tau)`` is exactly ``x - q tau`` with ``q = trunc(x / tau)``, a representable
    number, so one fused multiply-add computes it without rounding once ``q`` is right; the
    quotient rounded to an integer can be one off, which the sign or size of the remainder
    reveals. Negative remainders then get NumPy's floor-mod fix-up ``r + tau``.
    """
    x = t - s
    q = math.trunc(x / tau)
    r = _fma(-q, tau, x)
    # written with selects rather than branches, so that loops of phases can vectorise
    if x >= 0.0:
        q_fix = q - 1.0 if r < 0.0 else (q + 1.0 if r >= tau else q)
    else:
        q_fix = q + 1.0 if r > 0.0 else (q - 1.0 if r <= -tau else q)
    r = _fma(-q_fix, tau, x)
    r = r + tau if r < 0.0 else r  # NumPy's floor-mod fix-up
    phi = r / tau
    return 0.0 if phi >= 1.0 else phi  # a tiny negative remainder rounds up to tau: 0


# the phase gets no fast-math flag at all: it must stay bitwise equal to NumPy's
_phase_inline = numba.njit(_phase, cache=_CACHE, error_model="numpy", inline="always")
_phase = numba.njit(_phase, cache=_CACHE, error_model="numpy")


def ensure_available():
    """Apply the thread knob once (Numba itself is a hard dependency, so always available)."""
    global _threads_set
    if not _threads_set:
        if config.NUM_THREADS is not None:
            numba.set_num_threads(int(config.NUM_THREADS))
        _threads_set = True


# ---------------------------------------------------------------------------- scalar maths
@intrinsic
def _float32_from_bits(typingctx, bits):
    """The float32 whose bit pattern is the int32 ``bits``."""
    sig = numba.types.float32(numba.types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


# exp in float32 (Cephes' expf): e^x = 2^n e^r, |r| <= ln2 / 2, degree-7 polynomial for e^r
_F32 = np.float32
_EXP_LO, _EXP_HI = _F32(-87.0), _F32(88.0)
_LOG2E, _LN2_HI, _LN2_LO = _F32(1.44269504088896341), _F32(0.693359375), _F32(-2.12194440e-4)
_P0, _P1, _P2 = _F32(1.9875691500e-4), _F32(1.3981999507e-3), _F32(8.3334519073e-3)
_P3, _P4, _P5 = _F32(4.1665795894e-2), _F32(1.6666665459e-1), _F32(5.0000001201e-1)
_ROUND_OFFSET, _ONE32 = _F32(128.5), _F32(1.0)


def _exp(x):
    """``exp`` in the dtype of ``x``: libm's for float64; for float32 an inlined polynomial
    (within 1e-7 relative; clamped to [-87, 88], ample for sigmoid and tanh arguments
    taken negative) that, unlike a libm call, LLVM can vectorise."""
    return math.exp(x)


@overload(_exp, inline="always", fastmath=_FASTMATH)
def _exp_overload(x):
    if isinstance(x, numba.types.Float) and x.bitwidth == 32:
        def exp32(x):
            x = min(max(x, _EXP_LO), _EXP_HI)
            # n = round(x / ln2): truncating a positive number (libm's floorf would be a call)
            ni = np.int32(x * _LOG2E + _ROUND_OFFSET) - np.int32(128)
            n = _F32(ni)
            r = (x - n * _LN2_HI) - n * _LN2_LO
            p = ((((_P0 * r + _P1) * r + _P2) * r + _P3) * r + _P4) * r + _P5
            p = p * r * r + r + _ONE32
            return p * _float32_from_bits((ni + np.int32(127)) << np.int32(23))
        return exp32
    return lambda x: math.exp(x)


def _sigmoid(a, one):
    """Logistic function in the dtype of ``a`` (``one`` is 1 in that dtype); one ``exp``,
    no overflow."""
    e = _exp(-abs(a))
    if a >= 0:
        return one / (one + e)
    return e / (one + e)


def _tanh(a, one):
    """tanh in the dtype of ``a`` from one ``exp`` (cheaper than libm's tanh)."""
    e = _exp(-(abs(a) + abs(a)))
    r = (one - e) / (one + e)
    return r if a >= 0 else -r


_sigmoid = _device(_sigmoid)
_tanh = _device(_tanh)


def _cell(z_i, z_f, z_g, z_o, cp, w_ci, w_cf, w_co, one):
    """The proposed update of one neuron: gates i, f, g, o, c~ and tanh(c~)."""
    ii = _sigmoid(z_i + w_ci * cp, one)
    ff = _sigmoid(z_f + w_cf * cp, one)
    gg = _tanh(z_g, one)
    ct = ff * cp + ii * gg
    oo = _sigmoid(z_o + w_co * ct, one)
    return ii, ff, gg, oo, ct, _tanh(ct, one)


_cell = _device(_cell)


def _dot(a, b):
    """Dot product of two contiguous vectors (vectorised when sums may be reassociated)."""
    acc = a.dtype.type(0.0)
    for q in range(a.shape[0]):
        acc += a[q] * b[q]
    return acc


_dot = _device(_dot)


# ---------------------------------------------------------------------------- kernels
def _gate_neuron(n, tj, tau, s, r_on, lo, hi, k_out):
    """Exact gate of neuron ``n`` at time ``tj`` (evaluation): True when it is open (its
    openness then in ``k_out[n]``); when closed, record the window of times certainly
    still on the closed piece of this cycle in ``lo[n]``, ``hi[n]``."""
    phi = _phase(tj, tau[n], s[n])
    if phi < r_on[n]:
        k_out[n] = _gate_openness(phi, r_on[n], 0.0)
        return True
    start = tj - phi * tau[n]  # start of the current cycle
    margin = PHASE_MARGIN * (abs(tj) + abs(s[n]) + tau[n])
    lo[n] = start + r_on[n] * tau[n] + margin
    hi[n] = start + tau[n] - margin
    return False


_gate_neuron = _device(_gate_neuron)


def _open_neurons(tj, tau, s, r_on, gate_open, lo, hi, k_out, open_idx, m_prev, bounds,
                  phis):
    """Evaluation gate (``leak = 0``): fill ``open_idx[:m]`` with the neurons updated at time
    ``tj`` (increasing) and ``k_out`` with their openness (float64); return m. ``lo``, ``hi``
    are this stream's closed windows, read and updated. ``gate_open``: every neuron, k = 1.

    ``bounds`` = [max lo, min hi] over the neurons that were closed at the previous call,
    whose open neurons are ``open_idx[:m_prev]`` (``m_prev < 0``: no previous call). When
    ``tj`` lies in every closed window (``max lo <= tj < min hi``), only the previously open
    neurons can be open: the scan of the closed ones (two comparisons each) is skipped.
    Either way the neurons found open, and their phases, are exactly those of a full scan.
    """
    H = tau.shape[0]
    m = 0
    if gate_open:
        for n in range(H):
            k_out[n] = 1.0
            open_idx[n] = n
        return H
    if m_prev >= 0 and bounds[0] <= tj and tj < bounds[1]:
        max_lo = bounds[0]
        min_hi = bounds[1]
        for p in range(m_prev):  # in place: m <= p
            n = open_idx[p]
            if _gate_neuron(n, tj, tau, s, r_on, lo, hi, k_out):
                open_idx[m] = n
                m += 1
            else:
                max_lo = max(max_lo, lo[n])
                min_hi = min(min_hi, hi[n])
        bounds[0] = max_lo
        bounds[1] = min_hi
        return m
    # every neuron's exact phase, and the window of the closed piece of its current cycle,
    # in a loop LLVM vectorises (no branches); then the open ones are listed
    for n in range(H):
        tau_n = tau[n]
        phi = _phase_inline(tj, tau_n, s[n])
        phis[n] = phi
        start = tj - phi * tau_n  # start of the current cycle
        margin = PHASE_MARGIN * (abs(tj) + abs(s[n]) + tau_n)
        lo[n] = start + r_on[n] * tau_n + margin
        hi[n] = start + tau_n - margin
    max_lo = -np.inf
    min_hi = np.inf
    for n in range(H):
        phi = phis[n]
        if phi < r_on[n]:
            k_out[n] = _gate_openness(phi, r_on[n], 0.0)
            open_idx[m] = n
            m += 1
        else:
            max_lo = max(max_lo, lo[n])
            min_hi = min(min_hi, hi[n])
    bounds[0] = max_lo
    bounds[1] = min_hi
    return m


_open_neurons = _device(_open_neurons)


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
        for q in range(Hp):  # a multiple of the vector loop's step: no scalar remainder
            hq = hp[q]
            a0 += hq * WhTp[n4, q]
            a1 += hq * WhTp[n4 + 1, q]
            a2 += hq * WhTp[n4 + 2, q]
            a3 += hq * WhTp[n4 + 3, q]
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


_sparse_preacts = _device(_sparse_preacts)

_DOT_PAD = 64  # WhTp's rows are padded to a multiple of this: LLVM's vectorised dot loop
# steps through 64 floats (16 lanes, unrolled 4 times) and would do a remainder of up to
# 63 terms one by one


_LANES = 8  # open neurons per vectorised group (about r_on * H are open at a time)
# slots of the group buffer: inputs, then results
_S_ZI, _S_ZF, _S_ZG, _S_ZO, _S_C, _S_H, _S_WCI, _S_WCF, _S_WCO, _S_K = range(10)
_S_CNEW, _S_HNEW, _S_I, _S_F, _S_G, _S_O, _S_TC = range(10, 17)
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
        ii, ff, gg, oo, ct, tc = _cell(buf[_S_ZI * _LANES + u], buf[_S_ZF * _LANES + u],
                                       buf[_S_ZG * _LANES + u], buf[_S_ZO * _LANES + u], cp,
                                       buf[_S_WCI * _LANES + u], buf[_S_WCF * _LANES + u],
                                       buf[_S_WCO * _LANES + u], one)
        buf[_S_CNEW * _LANES + u] = k * ct + (one - k) * cp
        buf[_S_HNEW * _LANES + u] = k * (oo * tc) + (one - k) * buf[_S_H * _LANES + u]
        buf[_S_I * _LANES + u] = ii
        buf[_S_F * _LANES + u] = ff
        buf[_S_G * _LANES + u] = gg
        buf[_S_O * _LANES + u] = oo
        buf[_S_TC * _LANES + u] = tc
    return cnt


_open_cells = _device(_open_cells)


def _forward_sparse(x, t, lengths, table, tokens, WxN, WhN, WhTp, w_ci, w_cf, w_co, tau, s,
                    r_on, gate_open, h0, c0, lo, hi, h_seq, hT, cT, store, c_seq, i_c, f_c,
                    g_c, o_c, tc_c, counts, rW, rb, y_seq):
    """Evaluation forward (``leak = 0``), parallel over the batch; closed neurons cost two
    comparisons.

    The input projection of an event is ``table[tokens[b, j]] + x[b, j] Wx`` (``tokens``
    of shape (0, 0): ``table[0]``, the bias). ``lo``, ``hi`` (B, H) float64: closed windows,
    read and updated (streams keep them). With ``store`` the per-step values the backward
    needs are written to ``c_seq`` ... ``tc_c`` (B, T, H) for the updated neurons (the
    others are left unwritten); without, those arrays may be empty. ``counts`` (B, H) int64
    is incremented by the updates computed.

    Read-out (streams): when ``y_seq`` (B, T, C) is not empty, ``y_seq[b, j] = rb + h_j rW``
    (``rW`` (H, C), ``rb`` (C,) float64) after every step; ``h_seq`` may then be empty
    (not written). The read-out is updated incrementally in float64 (the updated neurons'
    change of h times their rows of ``rW``: a few rows instead of H), and recomputed whole
    every ``_READOUT_EXACT`` steps of a call, so that rounding cannot accumulate.
    """
    B, T, D = x.shape
    H = h0.shape[1]
    one = h0.dtype.type(1.0)
    use_tokens = tokens.shape[0] > 0
    readout = y_seq.shape[0] > 0
    write_h = h_seq.shape[0] > 0
    C = rW.shape[1]
    for b in prange(B):
        hp = np.zeros(WhTp.shape[1], h0.dtype)  # h, zero-padded for the dot products
        h = hp[:H]
        h[:] = h0[b]
        c = c0[b].copy()
        buf = np.empty(_SLOTS * _LANES, h0.dtype)
        y = np.zeros(C)
        z = np.empty(4 * H, h0.dtype)
        k64 = np.empty(H)
        phis = np.empty(H)
        open_idx = np.empty(H, np.int64)
        bounds = np.empty(2)
        L = lengths[b]
        lo_b = lo[b]
        hi_b = hi[b]
        m = -1  # no previous step: the first one scans every neuron
        for j in range(T):
            if j < L:
                m = _open_neurons(t[b, j], tau, s, r_on, gate_open, lo_b, hi_b, k64, open_idx,
                                  m, bounds, phis)
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
                        if readout:
                            dhn = np.float64(h[n]) - np.float64(h_old)
                            rWn = rW[n]
                            for q in range(C):
                                y[q] += dhn * rWn[q]
                        if store:
                            i_c[b, j, n] = buf[_S_I * _LANES + u]
                            f_c[b, j, n] = buf[_S_F * _LANES + u]
                            g_c[b, j, n] = buf[_S_G * _LANES + u]
                            o_c[b, j, n] = buf[_S_O * _LANES + u]
                            tc_c[b, j, n] = buf[_S_TC * _LANES + u]
                if use_tokens and j + 1 < L:
                    # the next event's token row is a random row of a large table: ask
                    # for the columns of the neurons open now (likely still open) early
                    token_next = tokens[b, j + 1]
                    for p in range(m):
                        _prefetch(table, token_next, 4 * open_idx[p])
            if write_h:
                h_seq[b, j] = h
            if store:
                c_seq[b, j] = c
            if readout:
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


def _blocked_dot(a, b, out):
    """``out = a @ b`` as BLAS products of at most ``_GEMM_ROWS`` rows of ``a``: OpenBLAS is
    faster per row on such blocks, and runs them on the calling thread."""
    R = a.shape[0]
    for r0 in range(0, R, _GEMM_ROWS):
        r1 = min(R, r0 + _GEMM_ROWS)
        np.dot(a[r0:r1], b, out[r0:r1])


_blocked_dot = _device(_blocked_dot)


def _chunk_bounds(chunk, nchunks, B):
    """Rows [b0, b1) of the batch that chunk ``chunk`` of ``nchunks`` owns."""
    return chunk * B // nchunks, (chunk + 1) * B // nchunks


_chunk_bounds = _device(_chunk_bounds)


def _cells_row(z, k, c, h, w_ci, w_cf, w_co, i_out, f_out, g_out, o_out, tc_out, one):
    """Update every neuron of one sample from its pre-activations ``z`` (gate blocks) and
    openness ``k``: ``c``, ``h`` in place, the gate values into the ``*_out`` rows. No
    calls, so LLVM may vectorise it."""
    H = k.shape[0]
    for n in range(H):
        kn = k[n]
        cp = c[n]
        ii, ff, gg, oo, ct, tc = _cell(z[n], z[H + n], z[2 * H + n], z[3 * H + n], cp,
                                       w_ci[n], w_cf[n], w_co[n], one)
        c[n] = kn * ct + (one - kn) * cp
        h[n] = kn * (oo * tc) + (one - kn) * h[n]
        i_out[n] = ii
        f_out[n] = ff
        g_out[n] = gg
        o_out[n] = oo
        tc_out[n] = tc


_cells_row = _device(_cells_row)


def _forward_dense(x, t, lengths, Wx, Wh, b_, w_ci, w_cf, w_co, tau, s, r_on, leak,
                   gate_open, h0, c0, nchunks, h_seq, c_seq, i_c, f_c, g_c, o_c, tc_c, hT,
                   cT):
    """Training forward (every neuron updates at every valid step), parallel over
    ``nchunks`` chunks of the batch, one BLAS product ``h_{j-1} Wh`` per chunk and step
    (weights in the contract layout: gate blocks).

    Writes ``h_seq``, ``c_seq`` (B, T, H) at every step and the gate values ``i_c`` ...
    ``tc_c`` at valid steps.
    """
    B, T, D = x.shape
    H = h0.shape[1]
    H4 = 4 * H
    one = h0.dtype.type(1.0)
    for chunk in prange(nchunks):
        b0, b1 = _chunk_bounds(chunk, nchunks, B)
        h = h0[b0:b1].copy()
        c = c0[b0:b1].copy()
        z = np.empty((b1 - b0, H4), h0.dtype)
        kbuf = np.empty(H, h0.dtype)
        for j in range(T):
            _blocked_dot(h, Wh, z)
            for r in range(b1 - b0):
                b = b0 + r
                if j < lengths[b]:
                    zr = z[r]
                    for col in range(H4):
                        zr[col] += b_[col]
                    for d in range(D):
                        xd = x[b, j, d]
                        w = Wx[d]
                        for col in range(H4):
                            zr[col] += xd * w[col]
                    tj = t[b, j]
                    if gate_open:
                        kbuf[:] = one
                    else:  # the time gate, in a loop of its own (it vectorises)
                        for n in range(H):
                            kbuf[n] = _gate_openness(_phase_inline(tj, tau[n], s[n]), r_on[n],
                                                     leak)
                    _cells_row(zr, kbuf, c[r], h[r], w_ci, w_cf, w_co, i_c[b, j], f_c[b, j],
                               g_c[b, j], o_c[b, j], tc_c[b, j], one)
                h_seq[b, j] = h[r]
                c_seq[b, j] = c[r]
        hT[b0:b1] = h
        cT[b0:b1] = c


def _cell_grads_row(dh, dc, hp, cp, i_g, f_g, g_g, o_g, tc_g, k, w_ci, w_cf, w_co, dz, timing,
                    gtau, gs, gr, dtau, ds, dr_on, one):
    """One sample's step of BPTT through the cells, every neuron: ``dh``, ``dc`` (gradients
    of the state after the step) become those of the state before it, less the recurrent
    product ``dz Wh^T``; ``dz`` (gate blocks) gets the pre-activation gradients. With
    ``timing``, ``dtau``, ``ds``, ``dr_on`` (float64) accumulate dk times ``gtau``, ``gs``,
    ``gr`` (dk/dtau, dk/ds, dk/dr_on). A neuron with ``k = 0`` and zero factors passes its
    gradients through unchanged (its stored gate values must be finite). No calls: LLVM may
    vectorise it."""
    H = k.shape[0]
    for n in range(H):
        kn = k[n]
        ii = i_g[n]
        ff = f_g[n]
        gg = g_g[n]
        oo = o_g[n]
        tc = tc_g[n]
        cpn = cp[n]
        ct = ff * cpn + ii * gg
        dhn = dh[n]
        dcn = dc[n]
        if timing:
            dk = dcn * (ct - cpn) + dhn * (oo * tc - hp[n])
            dtau[n] += dk * gtau[n]
            ds[n] += dk * gs[n]
            dr_on[n] += dk * gr[n]
        dht = dhn * kn
        dct = dcn * kn + dht * oo * (one - tc * tc)
        dao = dht * tc * oo * (one - oo)
        dct = dct + dao * w_co[n]
        dai = dct * gg * ii * (one - ii)
        daf = dct * cpn * ff * (one - ff)
        dzg = dct * ii * (one - gg * gg)
        dc[n] = dcn * (one - kn) + dct * ff + dai * w_ci[n] + daf * w_cf[n]
        dh[n] = dhn * (one - kn)
        dz[n] = dai
        dz[H + n] = daf
        dz[2 * H + n] = dzg
        dz[3 * H + n] = dao


_cell_grads_row = _device(_cell_grads_row)


def _peephole_grads_row(dz, cp, i_g, f_g, g_g, dw_ci, dw_cf, dw_co):
    """Accumulate one sample-step's peephole gradients (float64) from its ``dz`` (gate
    blocks): a loop of its own, which LLVM vectorises (fused into the loop above, it would
    not)."""
    H = cp.shape[0]
    for n in range(H):
        cpn = cp[n]
        dw_ci[n] += dz[n] * cpn
        dw_cf[n] += dz[H + n] * cpn
        dw_co[n] += dz[3 * H + n] * (f_g[n] * cpn + i_g[n] * g_g[n])


_peephole_grads_row = _device(_peephole_grads_row)


def _backward(dh_seq, dhT, dcT, t, lengths, Wx, WhT, w_ci, w_cf, w_co, tau, s, r_on, leak,
              gate_open, dense, h0, c0, h_seq, c_seq, i_c, f_c, g_c, o_c, tc_c, nchunks, dZ,
              dx, dh0, dc0, dtau, ds, dr_on, dpeep):
    """BPTT kernel, parallel over ``nchunks`` chunks of the batch, one BLAS product
    ``dz Wh^T`` per chunk and step (``Wx``, ``WhT`` = Wh^T and dZ in gate blocks).

    ``dense``: every neuron was updated at every valid step; otherwise (``leak = 0``) the
    neurons updated are those with phase on an open piece (recomputed, exactly as the
    forward found them). Writes dZ (B, T, 4H) (zero where nothing was updated),
    dx = dZ Wx^T (B, T, D), dh0, dc0, the per-sample float64 timing gradients dtau, ds,
    dr_on (B, H) and the per-chunk float64 peephole gradients dpeep (nchunks, 3, H).
    """
    B, T, H = h_seq.shape
    H4 = 4 * H
    D = dx.shape[2]
    one = h0.dtype.type(1.0)
    for chunk in prange(nchunks):
        b0, b1 = _chunk_bounds(chunk, nchunks, B)
        nb = b1 - b0
        dh = dhT[b0:b1].copy()
        dc = dcT[b0:b1].copy()
        dz = np.zeros((nb, H4), h0.dtype)
        dhp = np.empty((nb, H), h0.dtype)
        kbuf = np.empty(H, h0.dtype)
        gtau = np.zeros(H)
        gs = np.zeros(H)
        gr = np.zeros(H)
        dpeep[chunk] = 0.0
        for b in range(b0, b1):
            dtau[b] = 0.0
            ds[b] = 0.0
            dr_on[b] = 0.0
        for j in range(T - 1, -1, -1):
            for r in range(nb):
                b = b0 + r
                dzr = dz[r]
                for n in range(H):
                    dh[r, n] += dh_seq[b, j, n]
                if j >= lengths[b]:  # padded step: state carried, nothing computed
                    for col in range(H4):
                        dzr[col] = 0
                    dx[b, j] = 0
                    continue
                hp = h_seq[b, j - 1] if j > 0 else h0[b]
                cp = c_seq[b, j - 1] if j > 0 else c0[b]
                tj = t[b, j]
                for n in range(H):  # the time gate and its derivatives, in a loop of its own
                    if gate_open:
                        kbuf[n] = one
                        continue
                    phi = _phase_inline(tj, tau[n], s[n])
                    if not dense and phi >= r_on[n]:  # closed: k = 0, state carried
                        kbuf[n] = 0
                        gtau[n] = 0.0
                        gs[n] = 0.0
                        gr[n] = 0.0
                        continue
                    kbuf[n] = _gate_openness(phi, r_on[n], leak)
                    dk_dphi = _gate_dk_dphi(phi, r_on[n], leak)
                    gtau[n] = dk_dphi * (-(tj - s[n]) / (tau[n] * tau[n]))
                    gs[n] = -dk_dphi * (1.0 / tau[n])
                    gr[n] = _gate_dk_dr_on(phi, r_on[n])
                _cell_grads_row(dh[r], dc[r], hp, cp, i_c[b, j], f_c[b, j], g_c[b, j],
                                o_c[b, j], tc_c[b, j], kbuf, w_ci, w_cf, w_co, dzr, not gate_open,
                                gtau, gs, gr, dtau[b], ds[b], dr_on[b], one)
                _peephole_grads_row(dzr, cp, i_c[b, j], f_c[b, j], g_c[b, j], dpeep[chunk, 0],
                                    dpeep[chunk, 1], dpeep[chunk, 2])
                for d in range(D):
                    dx[b, j, d] = _dot(dzr, Wx[d])
                dZ[b, j] = dzr
            _blocked_dot(dz, WhT, dhp)  # rows of padded steps are zero: dh unchanged
            for r in range(nb):
                for n in range(H):
                    dh[r, n] += dhp[r, n]
            for r in range(nb):
                if j >= lengths[b0 + r]:
                    dZ[b0 + r, j] = 0
        dh0[b0:b1] = dh
        dc0[b0:b1] = dc


_STEP_BLOCK = 16  # steps per BLAS product of the weight gradient: small enough that
# OpenBLAS runs it on the calling thread (its own threads contend with the kernel's)


def _weight_grads(x, lengths, h0, h_seq, dZ, nchunks, dWhN, dWxN, dbN):
    """Weight gradients from dZ, parallel over ``nchunks`` chunks of the batch: per sample,
    ``h_prev^T dZ`` over blocks of its steps as BLAS products (of a size OpenBLAS runs on
    the calling thread), ``x^T dZ`` and the bias over its valid steps as loops, accumulated
    into ``dWhN`` (nchunks, H, 4H), ``dWxN`` (nchunks, D, 4H), ``dbN`` (nchunks, 4H)
    (columns in the layout of dZ): the caller sums over the chunks. Padded steps have
    dz = 0."""
    B, T, D = x.shape
    H = h0.shape[1]
    H4 = 4 * H
    for chunk in prange(nchunks):
        b0, b1 = _chunk_bounds(chunk, nchunks, B)
        h_prevT = np.empty((H, _STEP_BLOCK), h0.dtype)  # h_{j-1} of a block of steps
        part = np.empty((H, H4), h0.dtype)
        dWh = dWhN[chunk]
        dWx = dWxN[chunk]
        db = dbN[chunk]
        dWh[:] = 0
        dWx[:] = 0
        db[:] = 0
        for b in range(b0, b1):
            for j0 in range(0, T, _STEP_BLOCK):
                nj = min(_STEP_BLOCK, T - j0)
                for u in range(nj):
                    j = j0 + u
                    hp = h_seq[b, j - 1] if j > 0 else h0[b]
                    for q in range(H):
                        h_prevT[q, u] = hp[q]
                np.dot(h_prevT[:, :nj].copy() if nj < _STEP_BLOCK else h_prevT,
                       dZ[b, j0:j0 + nj], part)
                for q in range(H):
                    for col in range(H4):
                        dWh[q, col] += part[q, col]
            for j in range(lengths[b]):  # padded inputs may hold NaN: never read
                dz = dZ[b, j]
                for col in range(H4):
                    db[col] += dz[col]
                for d in range(D):
                    xd = x[b, j, d]
                    for col in range(H4):
                        dWx[d, col] += xd * dz[col]


forward_kernel = _jit(_forward_sparse, parallel=True)
forward_kernel_serial = _jit(_forward_sparse, parallel=False)
forward_dense_kernel = _jit(_forward_dense, parallel=True)
backward_kernel = _jit(_backward, parallel=True)
weight_grads_kernel = _jit(_weight_grads, parallel=True)


# ---------------------------------------------------------------------------- layout
def to_neuron_major(W):
    """(K, 4H) gate blocks [i, f, g, o] -> (K, 4H) with column ``4 n + g`` (a new array)."""
    K, H4 = W.shape
    H = H4 // 4
    return np.ascontiguousarray(W.reshape(K, 4, H).transpose(0, 2, 1).reshape(K, H4))


def prepare_params(params, gate_open, dense=True, sparse=True):
    """The kernels' view of a layer's parameters: with ``dense``, the weights in the
    contract layout (and ``Wh^T``) for the dense kernels and the backward; with ``sparse``,
    neuron-major copies (and a padded transpose) for the sparse kernel; always the
    peepholes and float64 timing parameters (dummies when ``gate_open``)."""
    Wx, Wh, b = params["Wx"], params["Wh"], params["b"]
    H = Wh.shape[0]
    prepared = dict(
        w_ci=np.ascontiguousarray(params["w_ci"]), w_cf=np.ascontiguousarray(params["w_cf"]),
        w_co=np.ascontiguousarray(params["w_co"]), gate_open=bool(gate_open),
    )
    if dense:  # gate blocks [i, f, g, o]
        prepared.update(Wx=np.ascontiguousarray(Wx), Wh=np.ascontiguousarray(Wh),
                        b=np.ascontiguousarray(b), WhT_gates=np.ascontiguousarray(Wh.T))
    if sparse:  # neuron-major
        WhN = to_neuron_major(Wh)
        bN = np.ascontiguousarray(b.reshape(4, H).T.reshape(4 * H))
        prepared.update(WxN=to_neuron_major(Wx), WhN=WhN,
                        WhTp=_padded_columns(WhN.T, _DOT_PAD), bN=bN,
                        bias_table=bN[None, :].copy())
    if gate_open:
        one = np.ones(H)
        prepared.update(tau=one, s=np.zeros(H), r_on=one)
    else:
        for name in ("tau", "s", "r_on"):  # the phase is computed in float64
            prepared[name] = np.ascontiguousarray(params[name], dtype=np.float64)
    return prepared


def _padded_columns(A, multiple):
    """``A`` (R, K) with zero columns appended up to a multiple of ``multiple`` (a new
    C-contiguous array)."""
    R, K = A.shape
    out = np.zeros((R, -(-K // multiple) * multiple), A.dtype)
    out[:, :K] = A
    return out


def token_table(prepared, E):
    """Input projections of every token, for a first layer whose first ``E.shape[1]``
    inputs are an embedding ``E`` (V, De): ``E Wx[:De] + b`` (V, 4H), neuron-major, and the
    prepared parameters of the remaining inputs (``WxN`` keeps only their rows)."""
    De = E.shape[1]
    table = np.ascontiguousarray(E @ prepared["WxN"][:De] + prepared["bN"])
    rest = dict(prepared, WxN=np.ascontiguousarray(prepared["WxN"][De:]))
    return table, rest


def empty_windows(B, H):
    """Closed windows that contain no time (every first phase is computed exactly)."""
    return np.full((B, H), np.inf), np.full((B, H), -np.inf)


def _num_chunks(B):
    """Chunks of the batch for the dense kernels: one per thread (at most B)."""
    threads = numba.get_num_threads() if config.NUMBA_PARALLEL else 1
    return max(1, min(B, threads))


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
    leak = float(leak)
    dense = bool(gate_open) or leak > 0.0
    p = prepare_params(params, gate_open, dense=dense, sparse=not dense)
    cache = dict(backend="numba", params=params, prepared=p, x=x, t=t, lengths=lengths, h0=h0,
                 c0=c0, leak=leak, gate_open=bool(gate_open), dense=dense)
    if dense:
        h_seq = np.empty((B, T, H), dtype)
        # one block for what BPTT keeps: NumPy backs large blocks with huge pages, which
        # saves thousands of page faults per call (a measurable part of a training step)
        c_seq, i_c, f_c, g_c, o_c, tc_c = np.empty((6, B, T, H), dtype)
        hT = np.empty((B, H), dtype)
        cT = np.empty((B, H), dtype)
        forward_dense_kernel(x, t, lengths, p["Wx"], p["Wh"], p["b"], p["w_ci"], p["w_cf"],
                             p["w_co"], p["tau"], p["s"], p["r_on"], leak, bool(gate_open),
                             h0, c0, _num_chunks(B), h_seq, c_seq, i_c, f_c, g_c, o_c, tc_c,
                             hT, cT)
        counts = np.repeat(lengths[:, None], H, axis=1).astype(np.int64)
        cache.update(c_seq=c_seq, i=i_c, f=f_c, g=g_c, o=o_c, tanh_ct=tc_c)
    else:  # evaluation: nothing stored; a backward recomputes what it needs
        counts = np.zeros((B, H), np.int64)
        h_seq, (hT, cT) = _forward_sparse_run(p, x, t, lengths, h0, c0, counts, None)
    cache.update(h_seq=h_seq, update_counts=counts, updates=int(counts.sum()))
    return h_seq, (hT, cT), cache


def _forward_sparse_run(p, x, t, lengths, h0, c0, counts, stored):
    """Run the sparse forward kernel from fresh windows; ``stored``: None, or the dict of
    arrays (B, T, H) to fill with what the backward needs."""
    B, T, _ = x.shape
    H = h0.shape[1]
    dtype = h0.dtype
    h_seq = np.empty((B, T, H), dtype)
    hT = np.empty((B, H), dtype)
    cT = np.empty((B, H), dtype)
    lo, hi = empty_windows(B, H)
    if stored is None:
        none = np.empty((0, 0, 0), dtype)
        arrays = (none,) * 6
    else:
        arrays = tuple(stored[k] for k in ("c_seq", "i", "f", "g", "o", "tanh_ct"))
    kernel = forward_kernel if B > 1 else forward_kernel_serial
    kernel(x, t, lengths, p["bias_table"], np.empty((0, 0), np.int64), p["WxN"], p["WhN"],
           p["WhTp"], p["w_ci"], p["w_cf"], p["w_co"], p["tau"], p["s"], p["r_on"],
           p["gate_open"], h0, c0, lo, hi, h_seq, hT, cT, stored is not None, *arrays, counts,
           np.empty((0, 0)), np.empty(0), np.empty((0, 0, 0), dtype))
    return h_seq, (hT, cT)


def stream_forward(prepared, x, t, lengths, h0, c0, lo, hi, counts, gate_open, table=None,
                   tokens=None, readout=None):
    """Evaluation forward (``leak = 0``) that stores nothing for a backward pass.

    For :class:`plstm_np.streaming.Stream`: ``lo``, ``hi`` (B, H) are the streams' closed
    windows and ``counts`` (B, H) their update counts, both updated in place; ``gate_open``
    forces k = 1 (the LSTM). With
    ``table`` and ``tokens`` (B, T) (see :func:`token_table`), an event's input projection
    is ``table[token] + x Wx[rest]``; ``prepared`` is then the one :func:`token_table`
    returned. With ``readout = (W, b)`` (W (H, C), b (C,)), the read-out ``h W + b`` after
    every step is computed in the kernel, incrementally (see ``_forward_sparse``).

    Returns
    -------
    h_seq : ndarray (B, T, H)
        Empty (0, 0, 0) with ``readout``.
    h_T, c_T : ndarray (B, H)
    y_seq : ndarray (B, T, C)
        Only with ``readout``.
    """
    ensure_available()
    B, T, _ = x.shape
    H = h0.shape[1]
    dtype = h0.dtype
    # with a read-out, the hidden states of every step are not needed (nor written)
    h_seq = np.empty((B, T, H) if readout is None else (0, 0, 0), dtype)
    hT = np.empty((B, H), dtype)
    cT = np.empty((B, H), dtype)
    none = np.empty((0, 0, 0), dtype)
    p = prepared
    if table is None:
        table, tokens = p["bias_table"], np.empty((0, 0), np.int64)
    kernel = forward_kernel if B > 1 else forward_kernel_serial
    if readout is None:
        rW, rb, y_seq = np.empty((0, 0)), np.empty(0), np.empty((0, 0, 0), dtype)
    else:
        rW = np.ascontiguousarray(readout[0], dtype=np.float64)
        rb = np.ascontiguousarray(readout[1], dtype=np.float64)
        y_seq = np.empty((B, T, rW.shape[1]), dtype)
    kernel(x, t, lengths, table, tokens, p["WxN"], p["WhN"], p["WhTp"], p["w_ci"], p["w_cf"],
           p["w_co"], p["tau"], p["s"], p["r_on"], bool(gate_open), h0, c0, lo, hi, h_seq, hT,
           cT, False, none,
           none, none, none, none, none, counts, rW, rb, y_seq)
    if readout is None:
        return h_seq, hT, cT
    return h_seq, hT, cT, y_seq


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
    lengths, h0, h_seq = cache["lengths"], cache["h0"], cache["h_seq"]
    B, T, D = x.shape
    H = params["Wh"].shape[0]
    dtype = params["Wh"].dtype
    if dstate is None:
        dhT, dcT = np.zeros((B, H), dtype), np.zeros((B, H), dtype)
    else:
        dhT = np.ascontiguousarray(dstate[0], dtype)
        dcT = np.ascontiguousarray(dstate[1], dtype)
    dh_seq = np.ascontiguousarray(dh_seq, dtype)
    nchunks = _num_chunks(B)
    dZ = np.empty((B, T, 4 * H), dtype)
    dh0, dc0 = np.empty((B, H), dtype), np.empty((B, H), dtype)
    dtau, ds, dr_on = (np.empty((B, H)) for _ in range(3))
    dpeep = np.empty((nchunks, 3, H))
    gate_open = cache["gate_open"]
    if not cache["dense"]:  # the evaluation forward stored nothing: recompute, storing
        p = dict(p, **prepare_params(params, gate_open, sparse=False))
        cache = dict(cache)
        # zeros: closed neurons' gate values stay finite
        stored = np.zeros((6, B, T, H), dtype)
        for name, array in zip(("c_seq", "i", "f", "g", "o", "tanh_ct"), stored):
            cache[name] = array
        _forward_sparse_run(p, x, cache["t"], lengths, h0, cache["c0"],
                            np.zeros((B, H), np.int64), cache)
    dx = np.empty((B, T, D), dtype)
    backward_kernel(dh_seq, dhT, dcT, cache["t"], lengths, p["Wx"], p["WhT_gates"], p["w_ci"],
                    p["w_cf"], p["w_co"], p["tau"], p["s"], p["r_on"], cache["leak"], gate_open,
                    cache["dense"], h0, cache["c0"], h_seq, cache["c_seq"], cache["i"],
                    cache["f"], cache["g"], cache["o"], cache["tanh_ct"], nchunks, dZ, dx, dh0,
                    dc0, dtau, ds, dr_on, dpeep)
    dWhN = np.empty((nchunks, H, 4 * H), dtype)
    dWxN = np.empty((nchunks, D, 4 * H), dtype)
    dbN = np.empty((nchunks, 4 * H), dtype)
    weight_grads_kernel(x, lengths, h0, h_seq, dZ, nchunks, dWhN, dWxN, dbN)
    peep = dpeep.sum(0).astype(dtype)
    grads = {
        "Wx": dWxN.sum(0),
        "Wh": dWhN.sum(0),
        "b": dbN.sum(0),
        "w_ci": peep[0], "w_cf": peep[1], "w_co": peep[2],
        "x": dx,
        "h0": dh0, "c0": dc0,
    }
    if not gate_open:
        grads["tau"] = dtau.sum(0).astype(dtype)
        grads["s"] = ds.sum(0).astype(dtype)
        grads["r_on"] = dr_on.sum(0).astype(dtype)
    return grads
