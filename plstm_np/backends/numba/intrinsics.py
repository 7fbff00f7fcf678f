"""LLVM intrinsics of the Numba backend, each with a pure-Python twin.

Four operations Numba has no direct spelling for, written as LLVM IR (``@intrinsic``):
an exact fused multiply-add (:func:`fma`), a cache prefetch hint (:func:`prefetch`), the
eight-lane screen of possibly open neurons (:func:`maybe_open8`), the index of a word's
lowest set bit (:func:`lowest_bit`), and float32 exponent bits (:func:`two_to_biased`).

An intrinsic cannot run as Python, so each has a twin that computes the same result in
plain Python (``*_python``). Under ``NUMBA_DISABLE_JIT=1`` the public names are the twins,
so the kernels run as Python; otherwise they are the intrinsics. The tests compare each
twin with its intrinsic.
"""
from __future__ import annotations

import math
from fractions import Fraction

import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils
from numba.extending import intrinsic

from .compile import PLAIN_PYTHON

__all__ = ["SCREEN_MARGIN", "fma", "prefetch", "maybe_open8", "lowest_bit", "two_to_biased",
           "fma_python", "prefetch_python", "maybe_open8_python", "lowest_bit_python",
           "two_to_biased_python"]

#: Margin, relative to ``|(t - s) / tau| + 1``, by which the screen of possibly open
#: neurons widens each open interval of phases. The approximate phase it uses is within
#: ``2**-52`` of that magnitude of the exact one (one rounding in ``1 / tau``, one in the
#: product; the fractional part is then exact): the margin is 4096 times that.
SCREEN_MARGIN = 2.0 ** -40


def _fma_intrinsic(typingctx, a, b, c):
    """``a * b + c`` with a single rounding (LLVM's fma intrinsic), float64."""
    sig = numba.types.float64(numba.types.float64, numba.types.float64, numba.types.float64)

    def codegen(context, builder, signature, args):
        f64 = ir.DoubleType()
        fn = builder.module.declare_intrinsic("llvm.fma", [f64], ir.FunctionType(f64, [f64] * 3))
        return builder.call(fn, args)

    return sig, codegen


def _prefetch_intrinsic(typingctx, array, row, col):
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


def _maybe_open8_intrinsic(typingctx, tj, gate_rows, col):
    """Bit mask (bit u for neuron ``col + u``, u < 8) of the neurons that may be open at
    time ``tj``: those whose approximate phase ``f = y - floor(y)``, ``y = (tj - s) / tau``
    (by the multiplication with ``1 / tau``), lies within :data:`SCREEN_MARGIN` ``* (|y| +
    1)`` of their open interval ``[0, r_on)`` (or of 1, where an exact phase may wrap to 0).

    ``gate_rows`` (3, Hg) float64: rows ``s``, ``1 / tau``, ``r_on`` (see
    :func:`plstm_np.backends.numba.layouts.prepare_params`); ``col`` a multiple of 8 below Hg.
    Written as vector IR, eight lanes of float64: the mask comes out of the comparison itself,
    where Numba's loops would build it one bit at a time.
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


def _lowest_bit_intrinsic(typingctx, word):
    """Index of the lowest set bit of ``word`` (uint64, not 0): LLVM's count of trailing
    zeros."""
    sig = numba.types.intp(numba.types.uint64)

    def codegen(context, builder, signature, args):
        i64 = ir.IntType(64)
        fn = builder.module.declare_intrinsic("llvm.cttz", [i64],
                                              ir.FunctionType(i64, [i64, ir.IntType(1)]))
        return builder.call(fn, [args[0], ir.IntType(1)(1)])

    return sig, codegen

# ---------------------------------------------------------------------------- scalar maths
def _two_to_biased_intrinsic(typingctx, m):
    """``2 ** (m - 128)`` as a float32, for an int32 ``m`` in [1, 255]: the exponent bits
    ``(m - 1) << 23`` reinterpreted (32-bit integer maths throughout: Numba would widen it
    to 64 bits, which costs conversions in a vectorised loop)."""
    sig = numba.types.float32(numba.types.int32)

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        bits = builder.shl(builder.sub(args[0], i32(1)), i32(23))
        return builder.bitcast(bits, ir.FloatType())

    return sig, codegen



# ---------------------------------------------------------------------------- pure-Python twins
def fma_python(a, b, c):
    """``a * b + c`` with a single rounding, exactly (rational arithmetic)."""
    return float(Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c)))


def prefetch_python(array, row, col):
    """A hint: nothing to do in Python."""


def maybe_open8_python(tj, gate_rows, col):
    """:func:`maybe_open8`, lane by lane, with the same float64 operations."""
    word = 0
    for u in range(8):
        s, inv_tau, r_on = (float(gate_rows[r, col + u]) for r in range(3))
        y = (float(tj) - s) * inv_tau
        f = y - math.floor(y)
        margin = (abs(y) + 1.0) * SCREEN_MARGIN
        if f < r_on + margin or f > 1.0 - margin:
            word |= 1 << u
    return np.uint64(word)


def lowest_bit_python(word):
    """Index of the lowest set bit of ``word`` (not 0)."""
    word = int(word)
    return (word & -word).bit_length() - 1


def two_to_biased_python(m):
    """:func:`two_to_biased`: the float32 whose bits are ``(m - 1) << 23``."""
    return np.array([(int(m) - 1) << 23], np.int32).view(np.float32)[0]


if PLAIN_PYTHON:
    fma, prefetch, maybe_open8 = fma_python, prefetch_python, maybe_open8_python
    lowest_bit, two_to_biased = lowest_bit_python, two_to_biased_python
else:
    fma = intrinsic(_fma_intrinsic)
    prefetch = intrinsic(_prefetch_intrinsic)
    maybe_open8 = intrinsic(_maybe_open8_intrinsic)
    lowest_bit = intrinsic(_lowest_bit_intrinsic)
    two_to_biased = intrinsic(_two_to_biased_intrinsic)
