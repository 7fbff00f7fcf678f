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
  then vectorised loops for the time gates and the cells (one output array per loop: see
  :func:`_cells_row`).
- *sparse* (``leak == 0``): one sample per task; at each step only the open neurons' four
  gate rows are computed, contiguous dot products of length H (``WhTp``), or one full
  product when many neurons are open; the open neurons' cells are then updated a group of
  ``_LANES`` at a time by a vectorised loop (see :func:`_open_cells`).

Two backward kernels:

- *dense*: runs the batch chunks through time backwards, with vectorised loops for the
  gates and cells, one BLAS product ``dz Wh^T`` per step, and the weight gradient
  ``h_{j-1}^T dz`` as one BLAS product per ``_WG_STEPS`` steps of the chunk, while those
  steps' dz are still in the cache: dz is never stored for the whole sequence.
- *sparse* (after a ``leak == 0`` forward): visits only the updated neurons; a closed one
  passes its state gradients back unchanged, so costs nothing. Each open neuron's four
  pre-activation gradients are spread by contiguous rows (``WhTp``, and a neuron-major
  weight gradient). When more than ``_SPARSE_BACKWARD`` of all neuron-steps were updates,
  the forward is rerun dense instead and the dense backward is faster.

While the dense kernels run, the BLAS they call is held single-threaded
(:class:`_SerialBLAS`): its own threads would contend with the kernels'.

Memory. A training forward keeps ``h``, ``c``, ``i``, ``f``, ``g``, ``o`` and ``tanh(c~)`` per
step: what a hand-written LSTM stores. ``c~`` and the time gate ``k`` (and whether a neuron
was updated) are recomputed in the backward, which needs the exact phase anyway for the
timing gradients. An evaluation forward (``leak == 0``) keeps only ``h``; a backward through
it first reruns the forward, storing (the sparse kernel stores the gates of the updated
neurons only, and ``c``). The large per-call arrays (``h``, the stored block)
reuse the memory of the previous call's once nothing refers to them (:func:`_reusable`):
fresh memory that size costs page faults worth a large part of a training step.

Arithmetic. Gate maths runs in the model dtype (float32 maths for float32 models), with
sigmoid and tanh built on one ``exp`` each; the phase is always float64, bitwise equal to
:func:`plstm_np.time_gate.phase` (one division: see :func:`_phase`); the gate and its
derivatives multiply by precomputed reciprocals (within an ulp of the divisions). The
kernels may reassociate sums and fuse multiply-adds (:data:`plstm_np.config.NUMBA_REASSOC`),
which lets LLVM vectorise the dot products, and use NumPy's error model (no
ZeroDivisionError branch in loops; no division can be by zero).

Layout. The kernels take C-contiguous arrays and scalars only; :func:`layer_forward` and
:func:`layer_backward` validate nothing (the API boundary did), re-layout and dispatch.
The dense kernels use the contract layout (gate blocks ``[i, f, g, o]``, so the gate loops
read contiguous blocks). For the sparse kernel the weights are re-laid out *neuron-major*:
column ``4 n + g`` of ``WxN`` / ``WhN`` (and row ``4 n + g`` of the transpose ``WhTp``, its
rows zero-padded to a multiple of ``_DOT_PAD``) is gate ``g`` of neuron ``n``, so an open
neuron's four gate rows are contiguous.

Skipping without computing every phase. Even computed with one fused multiply-add instead
of a floating-point ``mod`` (see :func:`_phase`), an exact phase costs a few ns, which would
dominate a step in which 95 % of the neurons are closed. The sparse kernel first screens
eight neurons at a time with an approximate phase, ``frac((t - s) / tau)`` from one
multiplication by ``1 / tau``, widened by a margin far above its rounding error
(:data:`SCREEN_MARGIN`), into a bit mask of the neurons that may be open (a few vector
instructions per eight neurons, see :func:`_maybe_open8`); only those get the exact phase,
which decides. When more than half the neurons were open at the previous step, one
vectorised pass computes every exact phase instead (see :func:`_open_neurons`). Either way
the neurons updated are exactly those whose exact phase is open.

Compilation is lazy: importing this module defines the dispatchers but compiles nothing.
Each kernel is compiled on its first call, once per dtype, and cached on disk when
:data:`plstm_np.config.NUMBA_CACHE` is on (see :mod:`plstm_np.config` for every knob).
"""
from __future__ import annotations

import math
import sys
import threading
import types

import numba
import numpy as np
from llvmlite import ir
from numba import prange
from numba.core import cgutils
from numba.extending import intrinsic, overload

from . import config, scalar_math

__all__ = ["layer_forward", "layer_backward", "ensure_available", "to_neuron_major",
           "prepare_params", "stream_forward", "clear_workspace", "token_table",
           "SCREEN_MARGIN"]

#: Margin, relative to ``|(t - s) / tau| + 1``, by which the screen of possibly open
#: neurons widens each open interval of phases. The approximate phase it uses is within
#: ``2**-52`` of that magnitude of the exact one (one rounding in ``1 / tau``, one in the
#: product; the fractional part is then exact): the margin is 4096 times that.
SCREEN_MARGIN = 2.0 ** -40

# Compiled code is cached only with the default flags: Numba's cache index does not
# include fastmath, so a cache written with other flags could be served by mistake.
_CACHE = bool(config.NUMBA_CACHE) and not config.NUMBA_FASTMATH and bool(config.NUMBA_REASSOC)
if config.NUMBA_FASTMATH:
    _FASTMATH = True
elif config.NUMBA_REASSOC:
    _FASTMATH = {"reassoc", "contract"}
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


@intrinsic
def _maybe_open8(typingctx, tj, gate_rows, col):
    """Bit mask (bit u for neuron ``col + u``, u < 8) of the neurons that may be open at
    time ``tj``: those whose approximate phase ``f = y - floor(y)``, ``y = (tj - s) / tau``
    (by the multiplication with ``1 / tau``), lies within :data:`SCREEN_MARGIN` ``* (|y| +
    1)`` of their open interval ``[0, r_on)`` (or of 1, where an exact phase may wrap to 0).

    ``gate_rows`` (3, Hg) float64: rows ``s``, ``1 / tau``, ``r_on`` (see
    :func:`prepare_params`); ``col`` a multiple of 8 below Hg. Written as vector IR, eight
    lanes of float64: the mask comes out of the comparison itself, where Numba's loops
    would build it one bit at a time.
    """
    sig = numba.types.uint64(numba.types.float64, gate_rows, numba.types.intp)

    def codegen(context, builder, signature, args):
        t_arg, rows_arg, col_arg = args
        f64 = ir.DoubleType()
        i64 = ir.IntType(64)
        vec = ir.VectorType(f64, 8)
        rows = context.make_array(signature.args[1])(context, builder, rows_arg)
        row_stride = builder.extract_value(rows.strides, 0)
        base = builder.bitcast(rows.data, ir.IntType(8).as_pointer())

        def load_row(r):  # gate_rows[r, col:col + 8]
            offset = builder.add(builder.mul(row_stride, i64(r)), builder.mul(col_arg, i64(8)))
            ptr = builder.bitcast(builder.gep(base, [offset]), vec.as_pointer())
            return builder.load(ptr, align=8)

        def call(name, value):
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec]),
                                                name + ".v8f64")
            return builder.call(fn, [value])

        def splat(value):
            return ir.Constant(vec, [value] * 8)

        t_vec = builder.insert_element(ir.Constant(vec, ir.Undefined), t_arg, ir.IntType(32)(0))
        t_vec = builder.shuffle_vector(t_vec, ir.Constant(vec, ir.Undefined),
                                       ir.Constant(ir.VectorType(ir.IntType(32), 8), [0] * 8))
        y = builder.fmul(builder.fsub(t_vec, load_row(0)), load_row(1))
        f = builder.fsub(y, call("llvm.floor", y))
        margin = builder.fmul(builder.fadd(call("llvm.fabs", y), splat(1.0)),
                              splat(SCREEN_MARGIN))
        near_open = builder.fcmp_ordered("<", f, builder.fadd(load_row(2), margin))
        near_wrap = builder.fcmp_ordered(">", f, builder.fsub(splat(1.0), margin))
        bits = builder.bitcast(builder.or_(near_open, near_wrap), ir.IntType(8))
        return builder.zext(bits, i64)

    return sig, codegen


@intrinsic
def _lowest_bit(typingctx, word):
    """Index of the lowest set bit of ``word`` (uint64, not 0): LLVM's count of trailing
    zeros."""
    sig = numba.types.intp(numba.types.uint64)

    def codegen(context, builder, signature, args):
        i64 = ir.IntType(64)
        fn = builder.module.declare_intrinsic("llvm.cttz", [i64],
                                              ir.FunctionType(i64, [i64, ir.IntType(1)]))
        return builder.call(fn, [args[0], ir.IntType(1)(1)])

    return sig, codegen


def _phase(t, tau, inv_tau, s):
    """``((t - s) mod tau) / tau`` in [0, 1), bitwise equal to :func:`scalar_math.phase`
    (and so to NumPy's) at a fraction of the cost of a floating-point ``mod``; ``inv_tau``
    is ``1 / tau`` (rounded: it only serves to estimate the quotient).

    ``fmod(x, tau)`` is exactly ``x - q tau`` with ``q = trunc(x / tau)``, a representable
    number, so one fused multiply-add computes it without rounding once ``q`` is right; the
    estimate ``trunc(x * inv_tau)`` can be one off (for quotients below 2**51), which the
    sign or size of the remainder reveals. Negative remainders then get NumPy's floor-mod
    fix-up ``r + tau``. One division is left: the phase itself.
    """
    x = t - s
    q = math.trunc(x * inv_tau)
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


# the phase gets no fast-math flag at all: it must stay bitwise equal to NumPy's. The
# kernels inline it; the plain dispatcher lets the tests call it from Python.
_phase_inline = numba.njit(_phase, cache=_CACHE, error_model="numpy", inline="always")
_phase = numba.njit(_phase, cache=_CACHE, error_model="numpy")


def _openness(phi, r_on, two_r, leak):
    """Openness k at phase ``phi`` (as :func:`scalar_math.gate_openness`, with ``two_r`` =
    2 / r_on precomputed: a multiplication instead of a division, within an ulp)."""
    piece = _gate_piece(phi, r_on)
    x = phi * two_r
    k = x if piece == 0 else 2.0 - x  # selects, not branches: the rising and falling
    return k if piece != 2 else leak * phi  # pieces alternate unpredictably


def _dk_dphi(phi, r_on, two_r, leak):
    """``dk/dphi`` on the piece ``phi`` lies on."""
    piece = _gate_piece(phi, r_on)
    d = two_r if piece == 0 else -two_r
    return d if piece != 2 else leak


def _dk_dr_on(phi, r_on, two_r2):
    """``dk/dr_on`` on the piece ``phi`` lies on (``two_r2`` = 2 / r_on**2)."""
    piece = _gate_piece(phi, r_on)
    x = phi * two_r2
    d = -x if piece == 0 else x
    return d if piece != 2 else 0.0


_gate_piece = _device(scalar_math.gate_piece)  # the pieces, as the reference defines them
_openness = _device(_openness)
_dk_dphi = _device(_dk_dphi)
_dk_dr_on = _device(_dk_dr_on)


def _dk_dtau_ds(dk_dphi, tj, s, inv_tau):
    """``dk/dtau`` and ``dk/ds`` from ``dk/dphi``: with ``phi = ((t - s) mod tau) / tau``,
    ``dphi/dtau = -(t - s) / tau**2`` and ``dphi/ds = -1 / tau`` (``inv_tau`` = 1 / tau)."""
    return dk_dphi * (-(tj - s) * (inv_tau * inv_tau)), -dk_dphi * inv_tau


_dk_dtau_ds = _device(_dk_dtau_ds)


def _gate_constants(tau, r_on):
    """Per-neuron reciprocals the gate loops multiply by: 1 / tau, 2 / r_on, 2 / r_on**2."""
    two_r = 2.0 / r_on
    return 1.0 / tau, two_r, two_r / r_on


_gate_constants = _device(_gate_constants)


def ensure_available():
    """Apply the thread knob once (Numba itself is a hard dependency, so always available)."""
    global _threads_set
    if not _threads_set:
        if config.NUM_THREADS is not None:
            numba.set_num_threads(int(config.NUM_THREADS))
        _threads_set = True


# ---------------------------------------------------------------------------- scalar maths
@intrinsic
def _two_to_biased(typingctx, m):
    """``2 ** (m - 128)`` as a float32, for an int32 ``m`` in [1, 255]: the exponent bits
    ``(m - 1) << 23`` reinterpreted (32-bit integer maths throughout: Numba would widen it
    to 64 bits, which costs conversions in a vectorised loop)."""
    sig = numba.types.float32(numba.types.int32)

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        bits = builder.shl(builder.sub(args[0], i32(1)), i32(23))
        return builder.bitcast(bits, ir.FloatType())

    return sig, codegen


# exp in float32 (Cephes' expf): e^x = 2^n e^r, |r| <= ln2 / 2, degree-7 polynomial for e^r
_F32 = np.float32
_EXP_LO, _EXP_HI = _F32(-87.0), _F32(88.0)
_LOG2E, _LN2_HI, _LN2_LO = _F32(1.44269504088896341), _F32(0.693359375), _F32(-2.12194440e-4)
_P0, _P1, _P2 = _F32(1.9875691500e-4), _F32(1.3981999507e-3), _F32(8.3334519073e-3)
_P3, _P4, _P5 = _F32(4.1665795894e-2), _F32(1.6666665459e-1), _F32(5.0000001201e-1)
_ROUND_OFFSET, _BIAS32, _ONE32 = _F32(128.5), _F32(128.0), _F32(1.0)


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
            # n = round(x / ln2) as m = n + 128: truncating a positive number (libm's
            # floorf would be a call)
            m = np.int32(x * _LOG2E + _ROUND_OFFSET)
            n = _F32(m) - _BIAS32
            r = (x - n * _LN2_HI) - n * _LN2_LO
            p = ((((_P0 * r + _P1) * r + _P2) * r + _P3) * r + _P4) * r + _P5
            p = p * r * r + r + _ONE32
            return p * _two_to_biased(m)
        return exp32
    return lambda x: math.exp(x)


def _sigmoid(a, one):
    """Logistic function in the dtype of ``a`` (``one`` is 1 in that dtype); one ``exp``,
    no overflow."""
    e = _exp(-abs(a))
    r = one / (one + e)  # one division for both signs (a loop computes both)
    return r if a >= 0 else e * r


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


def _copy(dst, src):
    """``dst[:] = src`` for two contiguous vectors of the same length, as a loop LLVM
    vectorises (Numba's slice assignment is a generic strided loop, several times slower
    on a row of a few hundred values)."""
    for q in range(src.shape[0]):
        dst[q] = src[q]


_copy = _device(_copy)


def _dot(a, b):
    """Dot product of two contiguous vectors (vectorised when sums may be reassociated)."""
    acc = a.dtype.type(0.0)
    for q in range(a.shape[0]):
        acc += a[q] * b[q]
    return acc


_dot = _device(_dot)


# ---------------------------------------------------------------------------- kernels
_MANY_OPEN = 2  # more than H / 2 open at the previous step: every exact phase, vectorised


def _open_neurons(tj, gate_rows, tau, inv_tau, s, r_on, two_r, gate_open, k_out, open_idx,
                  m_prev, phis):
    """Evaluation gate (``leak = 0``): fill ``open_idx[:m]`` with the neurons updated at time
    ``tj``, ``k_out`` with their openness and ``phis`` with their phases (float64); return
    m. ``gate_open``: every neuron, k = 1.

    When at most half the neurons were open at the previous step (``m_prev`` of them; -1
    at the first), the neurons that may be open are screened eight at a time
    (:func:`_maybe_open8`, bit masks gathered 64 to a word) and only those get the exact
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
    if m_prev * _MANY_OPEN > H:
        for n in range(H):  # a loop LLVM vectorises (no branches)
            phis[n] = _phase_inline(tj, tau[n], inv_tau[n], s[n])
        for n in range(H):
            phi = phis[n]
            if phi < r_on[n]:
                k_out[n] = _openness(phi, r_on[n], two_r[n], 0.0)
                open_idx[m] = n
                m += 1
        return m
    groups = gate_rows.shape[1] // 8
    candidates = 0  # listed in open_idx first
    for g0 in range(0, groups, 8):
        word = np.uint64(0)  # the screen's bits of neurons 8 g0 .. 8 g0 + 63
        for g in range(g0, min(g0 + 8, groups)):
            word |= _maybe_open8(tj, gate_rows, 8 * g) << np.uint64(8 * (g - g0))
        while word != 0:
            open_idx[candidates] = 8 * g0 + _lowest_bit(word)
            candidates += 1
            word &= word - np.uint64(1)
    for c in range(candidates):  # exact phases, in a loop of their own: they overlap
        n = open_idx[c]
        phis[n] = _phase_inline(tj, tau[n], inv_tau[n], s[n])
    for c in range(candidates):  # in place: m <= c
        n = open_idx[c]
        if phis[n] < r_on[n]:
            k_out[n] = _openness(phis[n], r_on[n], two_r[n], 0.0)
            open_idx[m] = n
            m += 1
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
                    r_on, gate_rows, gate_open, h0, c0, h_seq, hT, cT, store, c_seq, i_c, f_c,
                    g_c, o_c, tc_c, counts, rW, rb, y_seq):
    """Evaluation forward (``leak = 0``), parallel over the batch; a closed neuron costs its
    lane of the screen (:func:`_open_neurons`).

    The input projection of an event is ``table[tokens[b, j]] + x[b, j] Wx`` (``tokens``
    of shape (0, 0): ``table[0]``, the bias). ``gate_rows``: the screen's timing rows (see
    :func:`prepare_params`). With ``store`` the per-step values the backward needs are
    written to ``c_seq`` ... ``tc_c`` (B, T, H) for the updated neurons (the others are left
    unwritten); without, those arrays may be empty. ``counts`` (B, H) int64
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
    inv_tau, two_r, _ = _gate_constants(tau, r_on)
    for b in prange(B):
        hp = np.zeros(WhTp.shape[1], h0.dtype)  # h, zero-padded for the dot products
        h = hp[:H]
        _copy(h, h0[b])
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
                m = _open_neurons(t[b, j], gate_rows, tau, inv_tau, s, r_on, two_r, gate_open,
                                  k64, open_idx, m, phis)
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
                _copy(h_seq[b, j], h)
            if store:
                _copy(c_seq[b, j], c)
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


def _gate_row(tj, tau, inv_tau, s, r_on, two_r, leak, phis, k):
    """The time gate of every neuron at ``tj`` (training: every neuron updates): the phases
    into ``phis`` (float64), the openness into ``k`` (model dtype). One output per loop,
    as in the cell loops below."""
    H = k.shape[0]
    for n in range(H):
        phis[n] = _phase_inline(tj, tau[n], inv_tau[n], s[n])
    for n in range(H):
        k[n] = _openness(phis[n], r_on[n], two_r[n], leak)


_gate_row = _device(_gate_row)


def _cells_row(z, k, c, h, w_ci, w_cf, w_co, i_out, f_out, g_out, o_out, tc_out, ct, one):
    """Update every neuron of one sample from its pre-activations ``z`` (gate blocks) and
    openness ``k``: ``c``, ``h`` in place, the gate values into the ``*_out`` rows, ``ct``
    (c~) a scratch row.

    One loop per output: LLVM vectorises a loop only when it can rule out overlap between
    the arrays it writes and those it reads, with run-time checks for every such pair,
    and gives up beyond a few; a single loop writing all seven rows stays scalar."""
    H = k.shape[0]
    for n in range(H):
        i_out[n] = _sigmoid(z[n] + w_ci[n] * c[n], one)
    for n in range(H):
        f_out[n] = _sigmoid(z[H + n] + w_cf[n] * c[n], one)
    for n in range(H):
        g_out[n] = _tanh(z[2 * H + n], one)
    for n in range(H):
        ct[n] = f_out[n] * c[n] + i_out[n] * g_out[n]
    for n in range(H):
        o_out[n] = _sigmoid(z[3 * H + n] + w_co[n] * ct[n], one)
    for n in range(H):
        tc_out[n] = _tanh(ct[n], one)
    for n in range(H):
        c[n] = k[n] * ct[n] + (one - k[n]) * c[n]
    for n in range(H):
        h[n] = k[n] * (o_out[n] * tc_out[n]) + (one - k[n]) * h[n]


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
    inv_tau, two_r, _ = _gate_constants(tau, r_on)
    for chunk in prange(nchunks):
        b0, b1 = _chunk_bounds(chunk, nchunks, B)
        h = h0[b0:b1].copy()
        c = c0[b0:b1].copy()
        z = np.empty((b1 - b0, H4), h0.dtype)
        kbuf = np.empty(H, h0.dtype)
        ct = np.empty(H, h0.dtype)
        phis = np.empty(H)
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
                    if gate_open:
                        kbuf[:] = one
                    else:
                        _gate_row(t[b, j], tau, inv_tau, s, r_on, two_r, leak, phis, kbuf)
                    _cells_row(zr, kbuf, c[r], h[r], w_ci, w_cf, w_co, i_c[b, j], f_c[b, j],
                               g_c[b, j], o_c[b, j], tc_c[b, j], ct, one)
                _copy(h_seq[b, j], h[r])
                _copy(c_seq[b, j], c[r])
        hT[b0:b1] = h
        cT[b0:b1] = c


def _gate_grads_row(tj, tau, inv_tau, s, r_on, two_r, two_r2, leak, phis, k, gtau, gs, gr):
    """The time gate of every neuron at ``tj`` and its derivatives, for the dense backward
    (every neuron updated): ``k`` (model dtype) and, float64, ``gtau``, ``gs``, ``gr`` =
    dk/dtau, dk/ds, dk/dr_on. One output per loop (see :func:`_cells_row`)."""
    H = k.shape[0]
    for n in range(H):
        phis[n] = _phase_inline(tj, tau[n], inv_tau[n], s[n])
    for n in range(H):
        k[n] = _openness(phis[n], r_on[n], two_r[n], leak)
    for n in range(H):  # each loop keeps one of the two derivatives (inlined)
        gtau[n] = _dk_dtau_ds(_dk_dphi(phis[n], r_on[n], two_r[n], leak), tj, s[n],
                              inv_tau[n])[0]
    for n in range(H):
        gs[n] = _dk_dtau_ds(_dk_dphi(phis[n], r_on[n], two_r[n], leak), tj, s[n],
                            inv_tau[n])[1]
    for n in range(H):
        gr[n] = _dk_dr_on(phis[n], r_on[n], two_r2[n])


_gate_grads_row = _device(_gate_grads_row)


def _cell_grads_row(dh, dc, hp, cp, i_g, f_g, g_g, o_g, tc_g, k, w_ci, w_cf, w_co, dz, timing,
                    gtau, gs, gr, dtau, ds, dr_on, dw_ci, dw_cf, dw_co, ct, dk, dct, one):
    """One sample's step of BPTT through the cells, every neuron: ``dh``, ``dc`` (gradients
    of the state after the step) become those of the state before it, less the recurrent
    product ``dz Wh^T``; ``dz`` (gate blocks) gets the pre-activation gradients. With
    ``timing``, ``dtau``, ``ds``, ``dr_on`` (float64) accumulate dk times ``gtau``, ``gs``,
    ``gr``; ``dw_ci`` ... (float64) accumulate the peephole gradients. ``ct``, ``dk``,
    ``dct`` are scratch rows. A neuron with ``k = 0`` and zero factors passes its
    gradients through unchanged (its stored gate values must be finite). One output per
    loop (see :func:`_cells_row`)."""
    H = k.shape[0]
    for n in range(H):
        ct[n] = f_g[n] * cp[n] + i_g[n] * g_g[n]
    if timing:  # from the state gradients before they are updated
        for n in range(H):
            dk[n] = dc[n] * (ct[n] - cp[n]) + dh[n] * (o_g[n] * tc_g[n] - hp[n])
        for n in range(H):
            dtau[n] += dk[n] * gtau[n]
        for n in range(H):
            ds[n] += dk[n] * gs[n]
        for n in range(H):
            dr_on[n] += dk[n] * gr[n]
    for n in range(H):  # dz_o
        oo = o_g[n]
        dz[3 * H + n] = dh[n] * k[n] * tc_g[n] * oo * (one - oo)
    for n in range(H):
        tc = tc_g[n]
        dct[n] = (dc[n] * k[n] + dh[n] * k[n] * o_g[n] * (one - tc * tc)
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


_cell_grads_row = _device(_cell_grads_row)


_WG_STEPS = 8  # steps of a chunk per BLAS product of the weight gradient h_{j-1}^T dz
_SPARSE_BACKWARD = 0.2  # after a leak-free forward, the backward visits only the updated
# neurons when they are at most this share of all (else the dense kernels are faster)


def _add_product_rows(a_ring, b_ring, steps, part, out):
    """``out += A^T B`` for the first ``steps`` slabs of two rings (steps, rows, .) of
    step-major rows: one BLAS product into ``part``, then one pass adding it."""
    rows = steps * a_ring.shape[1]
    a = a_ring.reshape(a_ring.shape[0] * a_ring.shape[1], a_ring.shape[2])[:rows]
    b = b_ring.reshape(b_ring.shape[0] * b_ring.shape[1], b_ring.shape[2])[:rows]
    np.dot(a.T, b, part)
    for q in range(out.shape[0]):
        for col in range(out.shape[1]):
            out[q, col] += part[q, col]


_add_product_rows = _device(_add_product_rows)


def _backward(dh_seq, dhT, dcT, x, t, lengths, Wx, WhT, w_ci, w_cf, w_co, tau, s, r_on, leak,
              gate_open, h0, c0, h_seq, c_seq, i_c, f_c, g_c, o_c, tc_c, nchunks, dx, dh0, dc0,
              dtau, ds, dr_on, dpeep, dWhN, dWxN, dbN):
    """BPTT kernel of the dense forward (every neuron updated at every valid step: ``leak >
    0`` or ``gate_open``), parallel over ``nchunks`` chunks of the batch (``Wx``, ``WhT`` =
    Wh^T and the pre-activation gradients dz in gate blocks).

    Per chunk and step, after the cells: two BLAS products, ``dz Wh^T`` (into dh) and
    ``h_{j-1}^T dz`` (into the chunk's dWh), so dz never leaves the cache and is never
    stored. Writes dx = dz Wx^T (B, T, D), dh0, dc0; adds to (zeros from the caller) the
    per-sample float64 timing gradients dtau, ds, dr_on (B, H) and, per chunk, the float64
    peephole gradients dpeep (nchunks, 3, H) and the weight gradients dWhN (nchunks, H, 4H),
    dWxN (nchunks, D, 4H), dbN (nchunks, 4H): the caller sums over the chunks.
    """
    B, T, H = h_seq.shape
    H4 = 4 * H
    D = dx.shape[2]
    one = h0.dtype.type(1.0)
    inv_tau, two_r, two_r2 = _gate_constants(tau, r_on)
    for chunk in prange(nchunks):
        b0, b1 = _chunk_bounds(chunk, nchunks, B)
        nb = b1 - b0
        dh = dhT[b0:b1].copy()
        dc = dcT[b0:b1].copy()
        # the last _WG_STEPS steps' dz and h_{j-1} of the chunk, for h_prev^T dz
        dz_ring = np.empty((_WG_STEPS, nb, H4), h0.dtype)
        h_ring = np.empty((_WG_STEPS, nb, H), h0.dtype)
        filled = 0
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
        for j in range(T - 1, -1, -1):
            dz = dz_ring[filled]
            h_prev = h_ring[filled]
            any_valid = False
            for r in range(nb):
                b = b0 + r
                dzr = dz[r]
                for n in range(H):
                    dh[r, n] += dh_seq[b, j, n]
                hp = h_seq[b, j - 1] if j > 0 else h0[b]
                _copy(h_prev[r], hp)
                if j >= lengths[b]:  # padded step: state carried, nothing computed
                    for col in range(H4):
                        dzr[col] = 0
                    dx[b, j] = 0
                    continue
                any_valid = True
                cp = c_seq[b, j - 1] if j > 0 else c0[b]
                if gate_open:
                    kbuf[:] = one
                else:
                    _gate_grads_row(t[b, j], tau, inv_tau, s, r_on, two_r, two_r2, leak, phis,
                                    kbuf, gtau, gs, gr)
                _cell_grads_row(dh[r], dc[r], hp, cp, i_c[b, j], f_c[b, j], g_c[b, j],
                                o_c[b, j], tc_c[b, j], kbuf, w_ci, w_cf, w_co, dzr, not gate_open,
                                gtau, gs, gr, dtau[b], ds[b], dr_on[b], dpeep[chunk, 0],
                                dpeep[chunk, 1], dpeep[chunk, 2], ct, dk, dct, one)
                for d in range(D):  # padded inputs may hold NaN: only valid steps read x
                    dx[b, j, d] = _dot(dzr, Wx[d])
                    xd = x[b, j, d]
                    dWx_d = dWx[d]
                    for col in range(H4):
                        dWx_d[col] += xd * dzr[col]
                for col in range(H4):
                    db[col] += dzr[col]
            if not any_valid:  # every row of dz is zero
                continue
            _blocked_dot(dz, WhT, dhp)  # rows of padded steps are zero: dh unchanged
            for r in range(nb):
                for n in range(H):
                    dh[r, n] += dhp[r, n]
            filled += 1
            if filled == _WG_STEPS or j == 0:
                _add_product_rows(h_ring, dz_ring, filled, part, dWh)
                filled = 0
        if filled > 0:  # the last steps were padding for the whole chunk
            _add_product_rows(h_ring, dz_ring, filled, part, dWh)
        dh0[b0:b1] = dh
        dc0[b0:b1] = dc


def _backward_sparse(dh_seq, dhT, dcT, x, t, lengths, WxN, WhTp, w_ci, w_cf, w_co, tau, s,
                     r_on, gate_rows, h0, c0, h_seq, c_seq, i_c, f_c, g_c, o_c, tc_c, nchunks,
                     dx, dh0, dc0, dtau, ds, dr_on, dpeep, dWhT, dWxN, dbN, visits):
    """BPTT through an evaluation forward (``leak = 0``) that visits only the updated neurons,
    parallel over ``nchunks`` chunks of the batch.

    A closed neuron carries (h, c) unchanged, so it passes its state gradients back
    unchanged and its pre-activations get no gradient: nothing to compute. At each step
    the open neurons are found exactly as the forward found them (:func:`_open_neurons`);
    each gets the scalar cell gradients of :func:`_cell_grads_row`, then its four
    pre-activation gradients dz are spread by rows: ``dz WhTp[4 n + g]`` into dh,
    ``dz h_{j-1}`` into row ``4 n + g`` of the chunk's ``dWhT`` (4H, Hp) (neuron-major, Wh's
    columns as rows, padded like ``WhTp``), ``dz x_j`` into ``dWxN`` (D, 4H) and ``dbN``
    (4H,) (neuron-major). The stored gate values (``i_c`` ...) are read at the updated
    neurons only. ``visits`` (B,) int64 gets the number of neuron-steps visited. Other
    outputs as in :func:`_backward`.
    """
    B, T, H = h_seq.shape
    D = dx.shape[2]
    one = h0.dtype.type(1.0)
    inv_tau, two_r, two_r2 = _gate_constants(tau, r_on)
    for chunk in prange(nchunks):
        b0, b1 = _chunk_bounds(chunk, nchunks, B)
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
            _copy(dh, dhT[b])
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
                m = _open_neurons(tj, gate_rows, tau, inv_tau, s, r_on, two_r, False, k64,
                                  open_idx, m, phis)
                visits[b] += m
                hp = h_seq[b, j - 1] if j > 0 else h0[b]
                cp = c_seq[b, j - 1] if j > 0 else c0[b]
                for p in range(m):  # the cells, as _cell_grads_row, one neuron at a time
                    n = open_idx[p]
                    k = h0.dtype.type(k64[n])
                    ii = i_c[b, j, n]
                    ff = f_c[b, j, n]
                    gg = g_c[b, j, n]
                    oo = o_c[b, j, n]
                    tc = tc_c[b, j, n]
                    cpn = cp[n]
                    dhn = dh[n]
                    dcn = dc[n]
                    ct = ff * cpn + ii * gg
                    dk = dcn * (ct - cpn) + dhn * (oo * tc - hp[n])
                    phi = phis[n]
                    dk_dtau, dk_ds = _dk_dtau_ds(_dk_dphi(phi, r_on[n], two_r[n], 0.0), tj,
                                                 s[n], inv_tau[n])
                    dtau[b, n] += dk * dk_dtau
                    ds[b, n] += dk * dk_ds
                    dr_on[b, n] += dk * _dk_dr_on(phi, r_on[n], two_r2[n])
                    dz_o = dhn * k * tc * oo * (one - oo)
                    dct = dcn * k + dhn * k * oo * (one - tc * tc) + dz_o * w_co[n]
                    dz_i = dct * gg * ii * (one - ii)
                    dz_f = dct * cpn * ff * (one - ff)
                    dz_g = dct * ii * (one - gg * gg)
                    dc[n] = dcn * (one - k) + dct * ff + dz_i * w_ci[n] + dz_f * w_cf[n]
                    dh[n] = dhn * (one - k)
                    dw[0, n] += dz_i * cpn
                    dw[1, n] += dz_f * cpn
                    dw[2, n] += dz_o * ct
                    dz[4 * p] = dz_i
                    dz[4 * p + 1] = dz_f
                    dz[4 * p + 2] = dz_g
                    dz[4 * p + 3] = dz_o
                _copy(hpp[:H], hp)
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
            _copy(dh0[b], dh)
            dc0[b] = dc



forward_kernel = _jit(_forward_sparse, parallel=True)
forward_kernel_serial = _jit(_forward_sparse, parallel=False)
forward_dense_kernel = _jit(_forward_dense, parallel=True)
backward_kernel = _jit(_backward, parallel=True)
backward_sparse_kernel = _jit(_backward_sparse, parallel=True)


# ---------------------------------------------------------------------------- layout
def to_neuron_major(W):
    """(K, 4H) gate blocks [i, f, g, o] -> (K, 4H) with column ``4 n + g`` (a new array)."""
    K, H4 = W.shape
    H = H4 // 4
    out = np.empty((K, H, 4), W.dtype)
    for g in range(4):  # a block at a time: 3x faster than one copy of a 4-wide transpose
        out[:, :, g] = W[:, g * H:(g + 1) * H]
    return out.reshape(K, H4)


def _from_neuron_major(W):
    """The inverse of :func:`to_neuron_major`: (K, 4H) with column ``4 n + g`` -> gate
    blocks [i, f, g, o] (a new array)."""
    K, H4 = W.shape
    return np.ascontiguousarray(W.reshape(K, H4 // 4, 4).transpose(0, 2, 1).reshape(K, H4))


def prepare_params(params, gate_open, dense=True, sparse=True):
    """The kernels' view of a layer's parameters.

    Parameters
    ----------
    params : dict of ndarray
        The layer's parameters (contract layout).
    gate_open : bool
        The LSTM baseline: dummy timing parameters.
    dense : bool
        Include the weights in the contract layout (and ``Wh^T``), for the dense kernels
        and the backward.
    sparse : bool
        Include neuron-major copies (and a zero-padded transpose) for the sparse kernel,
        and the timing rows its screen reads (``gate_rows``, see :func:`_maybe_open8`).

    Returns
    -------
    dict
        Always the peepholes and the float64 timing parameters, plus the layouts asked for.
    """
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
        bN = to_neuron_major(b[None, :])[0]
        prepared.update(WxN=to_neuron_major(Wx), WhN=WhN,
                        WhTp=_padded_columns(WhN.T, _DOT_PAD), bN=bN,
                        bias_table=bN[None, :].copy())
    if gate_open:
        one = np.ones(H)
        prepared.update(tau=one, s=np.zeros(H), r_on=one)
    else:
        for name in ("tau", "s", "r_on"):  # the phase is computed in float64
            prepared[name] = np.ascontiguousarray(params[name], dtype=np.float64)
    if sparse:  # the screen's rows s, 1 / tau, r_on, padded to groups of 8 that never pass
        gate_rows = np.zeros((3, -(-H // 8) * 8))
        gate_rows[2] = -1.0
        gate_rows[:, :H] = prepared["s"], 1.0 / prepared["tau"], prepared["r_on"]
        prepared["gate_rows"] = gate_rows
    return prepared


def _layouts(params, gate_open, dense, sparse):
    """:func:`prepare_params`, reusing the layouts this thread made last time for the same
    parameter values: a private copy of the parameters they were made from is compared,
    exactly, with ``params`` (a few us against tens for the re-layout), so parameters
    changed in place since are never served stale layouts. At most ``_LAYOUTS_KEPT`` are
    kept; :func:`clear_workspace` drops them."""
    kept = _workspace.__dict__.setdefault("layouts", {})
    key = (id(params), bool(gate_open), bool(dense), bool(sparse))
    entry = kept.pop(key, None)
    if entry is None or not _same_values(entry[0], params):
        entry = ({name: np.array(value) for name, value in params.items()},
                 prepare_params(params, gate_open, dense=dense, sparse=sparse))
    kept[key] = entry  # the most recent last
    while len(kept) > _LAYOUTS_KEPT:
        del kept[next(iter(kept))]
    return entry[1]


_LAYOUTS_KEPT = 8  # a network's layers, in training and in evaluation


def _same_values(copy, params):
    """Whether every array of ``params`` equals its ``copy`` in dtype, shape and values."""
    if copy.keys() != params.keys():
        return False
    for name, value in params.items():
        value = np.asarray(value)
        kept = copy[name]
        if kept.dtype != value.dtype or kept.shape != value.shape:
            return False
        if not np.array_equal(kept, value):
            return False
    return True


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


_workspace = threading.local()


def _reusable(name, shape, dtype):
    """An uninitialised array for the role ``name``: one this thread handed out before,
    with the same shape and dtype, that nothing else refers to any more (no caller, cache
    or view), else a new one, kept for later calls (the last ``_POOL_SIZE`` per role).

    A training step allocates tens of MB of arrays of the same shapes over and over; a
    fresh allocation that large comes from the OS as zeroed pages, and the page faults
    cost a large part of a step. Reusing the memory of arrays nobody holds avoids them and
    changes no result: every caller overwrites the array before reading it. Arrays above
    ``_POOL_MAX_BYTES`` are never kept, so the memory held back stays bounded (at most
    ``_POOL_SIZE`` x ``_POOL_MAX_BYTES`` per role and thread; :func:`clear_workspace`
    releases it).
    """
    if np.prod(shape) * np.dtype(dtype).itemsize > _POOL_MAX_BYTES:
        return np.empty(shape, dtype)
    pool = _workspace.__dict__.setdefault("arrays", {}).setdefault(name, [])
    for i in range(len(pool)):  # no local name for a candidate: it would count
        if (pool[i].shape == shape and pool[i].dtype == dtype
                and _refcount_in_pool(pool, i) == _UNUSED_REFS):
            return pool[i]
    array = np.empty(shape, dtype)
    pool.append(array)
    del pool[:-_POOL_SIZE]
    return array


_POOL_SIZE = 3  # arrays kept per role and thread (a network has one per layer in use)
_POOL_MAX_BYTES = 64 << 20  # larger arrays are allocated afresh every time


def clear_workspace():
    """Drop the arrays this thread keeps for reuse.

    The training and evaluation kernels reuse the memory of their large arrays once nothing
    refers to them (see :func:`_reusable`), and the weight layouts made for unchanged
    parameters (see :func:`_layouts`); this releases what the calling thread keeps (freed
    once nothing else refers to it). Results never depend on it.
    """
    _workspace.__dict__.pop("arrays", None)
    _workspace.__dict__.pop("layouts", None)


def _refcount_in_pool(pool, i):
    """References to ``pool[i]``, counted the same way for the calibration below (so that
    interpreters that count borrowed references differently still agree with it)."""
    return sys.getrefcount(pool[i])


_UNUSED_REFS = _refcount_in_pool([np.empty(0)], 0)  # an array only a list refers to


class _SerialBLAS:
    """Context manager: the BLAS that Numba's ``np.dot`` calls runs single-threaded inside
    it (when :data:`plstm_np.config.SERIAL_BLAS` is on and that BLAS can be told).

    The dense kernels give each of their threads a chunk of the batch and call BLAS from
    every thread; an OpenBLAS that also starts its own threads for a product oversubscribes
    the cores (measured here: the README's training run 4x slower on 2 cores). Numba's
    ``np.dot`` calls SciPy's OpenBLAS; its thread count is set to 1 on entry and restored
    on exit, as a thread-pool limiter would do. Without SciPy's OpenBLAS (another BLAS, or
    a platform without it) this does nothing.
    """

    _controls = None  # (get, set) ctypes functions, or () when unavailable

    @classmethod
    def _find(cls):
        if cls._controls is None:
            cls._controls = ()
            try:
                import ctypes
                import glob
                import os

                import scipy
                import scipy.linalg.cython_blas  # noqa: F401 (loads the library)

                root = os.path.dirname(scipy.__file__)
                patterns = [os.path.join(root, os.pardir, "scipy.libs", "*openblas*"),
                            os.path.join(root, ".dylibs", "*openblas*")]
                for path in sorted(p for pattern in patterns for p in glob.glob(pattern)):
                    lib = ctypes.CDLL(path)  # the one already loaded
                    for prefix in ("scipy_openblas", "openblas"):
                        get = getattr(lib, prefix + "_get_num_threads", None)
                        set_ = getattr(lib, prefix + "_set_num_threads", None)
                        if get is not None and set_ is not None:
                            get.restype, get.argtypes = ctypes.c_int, []
                            set_.restype, set_.argtypes = None, [ctypes.c_int]
                            cls._controls = (get, set_)
                            return cls._controls
            except (ImportError, OSError):
                pass
        return cls._controls

    def __enter__(self):
        self._restore = None
        controls = self._find() if config.SERIAL_BLAS else ()
        if controls:
            get, set_ = controls
            threads = get()
            if threads > 1:
                set_(1)
                self._restore = threads
        return self

    def __exit__(self, *exc):
        if self._restore is not None:
            self._find()[1](self._restore)
        return False


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
    p = _layouts(params, gate_open, dense, not dense)
    cache = dict(backend="numba", params=params, prepared=p, x=x, t=t, lengths=lengths, h0=h0,
                 c0=c0, leak=leak, gate_open=bool(gate_open), dense=dense)
    if dense:
        h_seq, (hT, cT), stored = _forward_dense_run(p, x, t, lengths, h0, c0, leak, gate_open)
        counts = np.repeat(lengths[:, None], H, axis=1).astype(np.int64)
        cache.update(stored)
    else:  # evaluation: nothing stored; a backward recomputes what it needs
        counts = np.zeros((B, H), np.int64)
        h_seq, (hT, cT) = _forward_sparse_run(p, x, t, lengths, h0, c0, counts, None)
    cache.update(h_seq=h_seq, update_counts=counts, updates=int(counts.sum()))
    return h_seq, (hT, cT), cache


_STORED = ("c_seq", "i", "f", "g", "o", "tanh_ct")  # what BPTT keeps besides h


def _forward_dense_run(p, x, t, lengths, h0, c0, leak, gate_open):
    """Run the dense forward kernel; return h_seq, (h_T, c_T) and the dict of the arrays
    (B, T, H) the backward needs (one block, reused like h_seq once nothing refers to it)."""
    B, T, _ = x.shape
    H = h0.shape[1]
    dtype = h0.dtype
    h_seq = _reusable("h_seq", (B, T, H), dtype)
    stored = dict(zip(_STORED, _reusable("stored", (6, B, T, H), dtype)))
    hT = np.empty((B, H), dtype)
    cT = np.empty((B, H), dtype)
    with _SerialBLAS():
        forward_dense_kernel(x, t, lengths, p["Wx"], p["Wh"], p["b"], p["w_ci"], p["w_cf"],
                             p["w_co"], p["tau"], p["s"], p["r_on"], leak, bool(gate_open), h0,
                             c0, _num_chunks(B), h_seq, *(stored[k] for k in _STORED), hT, cT)
    return h_seq, (hT, cT), stored


def _forward_sparse_run(p, x, t, lengths, h0, c0, counts, stored):
    """Run the sparse forward kernel; ``stored``: None, or the dict of arrays (B, T, H) to
    fill with what the backward needs."""
    B, T, _ = x.shape
    h_seq = _reusable("h_seq", (B, T, h0.shape[1]), h0.dtype)
    hT, cT, _ = _sparse_kernel_call(p, x, t, lengths, h0, c0, counts, p["gate_open"], h_seq,
                                    stored=stored)
    return h_seq, (hT, cT)


def stream_forward(prepared, x, t, lengths, h0, c0, counts, gate_open, table=None,
                   tokens=None, readout=None):
    """Evaluation forward (``leak = 0``) that stores nothing for a backward pass.

    For :class:`plstm_np.streaming.Stream`: ``counts`` (B, H) are the streams' update
    counts, updated in place; ``gate_open`` forces k = 1 (the LSTM). With ``table`` and
    ``tokens`` (B, T) (see :func:`token_table`), an event's input projection is
    ``table[token] + x Wx[rest]``; ``prepared`` is then the one :func:`token_table` returned.
    With ``readout = (W, b)`` (W (H, C), b (C,)), the read-out ``h W + b`` after every step
    is computed in the kernel, incrementally (see ``_forward_sparse``).

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
    # with a read-out, the hidden states of every step are not needed (nor written)
    h_seq = np.empty((B, T, h0.shape[1]) if readout is None else (0, 0, 0), h0.dtype)
    hT, cT, y_seq = _sparse_kernel_call(prepared, x, t, lengths, h0, c0, counts, gate_open,
                                        h_seq, table=table, tokens=tokens, readout=readout)
    if readout is None:
        return h_seq, hT, cT
    return h_seq, hT, cT, y_seq


def _sparse_kernel_call(p, x, t, lengths, h0, c0, counts, gate_open, h_seq, stored=None,
                        table=None, tokens=None, readout=None):
    """Call the sparse forward kernel (serial for one sample), with empty arrays standing
    for what is not asked: ``stored`` (the dict of arrays the backward needs), ``table`` and
    ``tokens`` (else the bias), ``readout`` (W, b). Return h_T, c_T and the read-outs
    (None without ``readout``)."""
    B, T, _ = x.shape
    H = h0.shape[1]
    dtype = h0.dtype
    hT = np.empty((B, H), dtype)
    cT = np.empty((B, H), dtype)
    none = np.empty((0, 0, 0), dtype)
    arrays = (none,) * 6 if stored is None else tuple(stored[k] for k in _STORED)
    if table is None:
        table, tokens = p["bias_table"], np.empty((0, 0), np.int64)
    if readout is None:
        rW, rb, y_seq = np.empty((0, 0)), np.empty(0), none
    else:
        rW = np.ascontiguousarray(readout[0], dtype=np.float64)
        rb = np.ascontiguousarray(readout[1], dtype=np.float64)
        y_seq = np.empty((B, T, rW.shape[1]), dtype)
    kernel = forward_kernel if B > 1 else forward_kernel_serial
    kernel(x, t, lengths, table, tokens, p["WxN"], p["WhN"], p["WhTp"], p["w_ci"], p["w_cf"],
           p["w_co"], p["tau"], p["s"], p["r_on"], p["gate_rows"], bool(gate_open), h0, c0,
           h_seq, hT, cT, stored is not None, *arrays, counts, rW, rb, y_seq)
    return hT, cT, (None if readout is None else y_seq)


def layer_backward(dh_seq, dstate, cache):
    """Backpropagation through time for :func:`layer_forward`.

    After a dense forward (``leak > 0`` or ``gate_open``) every neuron's gradients are
    computed at every step. After a leak-free one (``leak = 0``) the forward is rerun,
    storing the updated neurons' gate values, and only the updated neurons are visited (a
    closed neuron passes its gradients back unchanged), unless they are more than
    ``_SPARSE_BACKWARD`` of all neuron-steps: then the forward is rerun dense and every
    neuron visited, which is faster. The number of neuron-steps visited is left in
    ``cache["backward_updates"]``.

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
    dh0, dc0 = np.empty((B, H), dtype), np.empty((B, H), dtype)
    # the kernels accumulate into these (zeros)
    dtau, ds, dr_on = (np.zeros((B, H)) for _ in range(3))
    dpeep = np.zeros((nchunks, 3, H))
    dx = np.empty((B, T, D), dtype)
    gate_open = cache["gate_open"]
    t, c0, leak = cache["t"], cache["c0"], cache["leak"]
    stored = cache
    sparse = not cache["dense"] and cache["updates"] <= _SPARSE_BACKWARD * lengths.sum() * H
    if sparse:  # the evaluation forward stored nothing: rerun it, storing the updated ones
        stored = dict(zip(_STORED, _reusable("stored", (6, B, T, H), dtype)))
        _forward_sparse_run(p, x, t, lengths, h0, c0, np.zeros((B, H), np.int64), stored)
        dWhT = np.zeros((nchunks, 4 * H, p["WhTp"].shape[1]), dtype)
        dWxN = np.zeros((nchunks, D, 4 * H), dtype)
        dbN = np.zeros((nchunks, 4 * H), dtype)
        visits = np.zeros(B, np.int64)
        backward_sparse_kernel(dh_seq, dhT, dcT, x, t, lengths, p["WxN"], p["WhTp"], p["w_ci"],
                               p["w_cf"], p["w_co"], p["tau"], p["s"], p["r_on"],
                               p["gate_rows"], h0, c0, h_seq, *(stored[k] for k in _STORED),
                               nchunks, dx, dh0, dc0, dtau, ds, dr_on, dpeep, dWhT, dWxN, dbN,
                               visits)
        cache["backward_updates"] = int(visits.sum())
        dWh = _from_neuron_major(dWhT.sum(0)[:, :H].T)  # rows of dWhT: columns of dWh
        dWx = _from_neuron_major(dWxN.sum(0))
        db = _from_neuron_major(dbN.sum(0)[None, :])[0]
    else:
        if not cache["dense"]:  # most neurons were updated: rerun the forward dense, storing
            p = dict(p, **_layouts(params, gate_open, True, False))
            h_seq, _, stored = _forward_dense_run(p, x, t, lengths, h0, c0, leak, gate_open)
        dWh = np.zeros((nchunks, H, 4 * H), dtype)
        dWx = np.zeros((nchunks, D, 4 * H), dtype)
        db = np.zeros((nchunks, 4 * H), dtype)
        with _SerialBLAS():
            backward_kernel(dh_seq, dhT, dcT, x, t, lengths, p["Wx"], p["WhT_gates"],
                            p["w_ci"], p["w_cf"], p["w_co"], p["tau"], p["s"], p["r_on"], leak,
                            gate_open, h0, c0, h_seq, *(stored[k] for k in _STORED), nchunks,
                            dx, dh0, dc0, dtau, ds, dr_on, dpeep, dWh, dWx, db)
        cache["backward_updates"] = int(lengths.sum()) * H
        dWh, dWx, db = dWh.sum(0), dWx.sum(0), db.sum(0)
    peep = dpeep.sum(0).astype(dtype)
    grads = {
        "Wx": dWx,
        "Wh": dWh,
        "b": db,
        "w_ci": peep[0], "w_cf": peep[1], "w_co": peep[2],
        "x": dx,
        "h0": dh0, "c0": dc0,
    }
    if not gate_open:
        grads["tau"] = dtau.sum(0).astype(dtype)
        grads["s"] = ds.sum(0).astype(dtype)
        grads["r_on"] = dr_on.sum(0).astype(dtype)
    return grads
