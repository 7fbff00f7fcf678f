"""The argument groups of the Numba kernels: every kernel argument documented once.

The kernels take a few named tuples of C-contiguous arrays (Numba compiles a named tuple
of arrays as a struct: no cost over separate arguments) and scalars. Shapes: B samples, T
steps, D inputs, H neurons, ``Hp`` = H padded to a multiple of
:data:`~plstm_np.backends.numba.forward.DOT_PAD`, C read-out classes. "Model dtype" is the
dtype of the layer's parameters (float32 or float64); timing is always float64.

The kernels read a group's fields by attribute (``x = seq.x``), never by unpacking it
(``x, t, lengths = seq``): with Numba 0.68, rows written inside a ``prange`` loop into an
array that was unpacked from a tuple argument can be lost (the final states came back as
garbage; caught by the chunked-equals-whole tests).

Cost: Numba types a named tuple argument in Python, element by element, where it types a
bare array in C. A kernel call with these groups costs about 9 us more than with the flat
arguments of 0.1.0 (a stream's ``push`` of one event: 32 -> 41 us; of 1,000 events: about
5 %); training steps (ms) do not notice.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

__all__ = ["Sequence", "Peepholes", "Timing", "DenseWeights", "SparseWeights", "Tokens",
           "State", "Stored", "Readout", "OutputGrads", "InputGrads", "ParamGrads",
           "no_tokens", "no_readout", "no_stored"]


class Sequence(NamedTuple):
    """A batch of inputs: ``x`` (B, T, D) model dtype (padded steps may hold anything, even
    NaN: never read), ``t`` (B, T) float64, ``lengths`` (B,) int64."""

    x: np.ndarray
    t: np.ndarray
    lengths: np.ndarray


class Peepholes(NamedTuple):
    """``w_ci``, ``w_cf``, ``w_co`` (H,) model dtype."""

    w_ci: np.ndarray
    w_cf: np.ndarray
    w_co: np.ndarray


class Timing(NamedTuple):
    """The time gate's parameters, float64: ``tau``, ``s``, ``r_on`` (H,), and the screen's
    rows ``gate_rows`` (3, H rounded up to a multiple of 8): ``s``, ``1 / tau``, ``r_on``,
    padded with neurons that never pass the screen (see
    :func:`~plstm_np.backends.numba.intrinsics.maybe_open8`)."""

    tau: np.ndarray
    s: np.ndarray
    r_on: np.ndarray
    gate_rows: np.ndarray


class DenseWeights(NamedTuple):
    """The contract layout (gate blocks [i, f, g, o]), model dtype: ``Wx`` (D, 4H), ``Wh``
    (H, 4H), ``b`` (4H,) and ``WhT`` = Wh^T (4H, H)."""

    Wx: np.ndarray
    Wh: np.ndarray
    b: np.ndarray
    WhT: np.ndarray


class SparseWeights(NamedTuple):
    """Neuron-major layout (column ``4 n + g`` is gate g of neuron n), model dtype: ``WxN``
    (D', 4H) (D' = D, or the inputs after a token's embedding), ``WhN`` (H, 4H) and ``WhTp``
    (4H, Hp), WhN's transpose with its rows zero-padded to Hp."""

    WxN: np.ndarray
    WhN: np.ndarray
    WhTp: np.ndarray


class Tokens(NamedTuple):
    """The input projection of an event: ``table[tokens[b, j]]`` (a row of ``table`` (V, 4H)
    neuron-major, the bias included) plus ``x[b, j] WxN``. ``tokens`` of shape (0, 0)
    means no tokens: every event uses ``table[0]``, the bias."""

    table: np.ndarray
    tokens: np.ndarray


class State(NamedTuple):
    """A state ``h``, ``c`` (B, H) model dtype: the initial one, or the final one written."""

    h: np.ndarray
    c: np.ndarray


class Stored(NamedTuple):
    """What BPTT needs besides ``h``, per step (B, T, H) model dtype: the cell ``c_seq``,
    the gates ``i``, ``f``, ``g``, ``o`` and ``tanh_ct`` = tanh(c~). Written at valid steps
    (by the sparse kernel at updated neurons only; ``c_seq`` at every step). Arrays of
    shape (0, 0, 0) when nothing is stored."""

    c_seq: np.ndarray
    i: np.ndarray
    f: np.ndarray
    g: np.ndarray
    o: np.ndarray
    tanh_ct: np.ndarray


class Readout(NamedTuple):
    """A read-out computed in the kernel after every step: ``y_seq[b, j] = b + h_j W``,
    ``W`` (H, C) and ``b`` (C,) float64, ``y_seq`` (B, T, C) model dtype. Empty arrays
    ((0, 0), (0,), (0, 0, 0)) for none."""

    W: np.ndarray
    b: np.ndarray
    y_seq: np.ndarray


class OutputGrads(NamedTuple):
    """The gradients BPTT starts from, model dtype: ``dh_seq`` (B, T, H) of every step's
    output, ``dhT``, ``dcT`` (B, H) of the final state."""

    dh_seq: np.ndarray
    dhT: np.ndarray
    dcT: np.ndarray


class InputGrads(NamedTuple):
    """Written by BPTT, model dtype: ``dx`` (B, T, D), ``dh0``, ``dc0`` (B, H)."""

    dx: np.ndarray
    dh0: np.ndarray
    dc0: np.ndarray


class ParamGrads(NamedTuple):
    """Accumulated by BPTT into zeros from the caller. Per sample, float64: ``dtau``,
    ``ds``, ``dr_on`` (B, H). Per chunk of the batch (the caller sums over chunks):
    ``dpeep`` (nchunks, 3, H) float64 (rows w_ci, w_cf, w_co); in the model dtype ``dWh``
    (nchunks, H, 4H) gate blocks (dense kernel) or (nchunks, 4H, Hp) neuron-major rows of
    dWh^T (sparse kernel), ``dWx`` (nchunks, D, 4H) and ``db`` (nchunks, 4H), gate blocks
    (dense) or neuron-major (sparse)."""

    dtau: np.ndarray
    ds: np.ndarray
    dr_on: np.ndarray
    dpeep: np.ndarray
    dWh: np.ndarray
    dWx: np.ndarray
    db: np.ndarray


_NO_TOKENS = np.empty((0, 0), np.int64)


def no_tokens(bias_table):
    """:class:`Tokens` for events without tokens: every event's projection starts from the
    bias (``bias_table`` (1, 4H), neuron-major)."""
    return Tokens(bias_table, _NO_TOKENS)


# The empty groups are shared (cached per dtype): nothing is ever written to an empty array,
# and building them anew would add to every call of a kernel (streams push small packets).
@functools.cache
def no_readout(dtype):
    """An empty :class:`Readout` (model dtype ``dtype``)."""
    return Readout(np.empty((0, 0)), np.empty(0), np.empty((0, 0, 0), dtype))


@functools.cache
def no_stored(dtype):
    """An empty :class:`Stored` (model dtype ``dtype``)."""
    none = np.empty((0, 0, 0), dtype)
    return Stored(none, none, none, none, none, none)
