"""The Numba backend's weight layouts: what the kernels read, made from a layer's parameters.

The dense kernels use the contract layout (gate blocks ``[i, f, g, o]``, so the gate loops
read contiguous blocks). For the sparse kernel the weights are re-laid out *neuron-major*:
column ``4 n + g`` of ``WxN`` / ``WhN`` (and row ``4 n + g`` of the transpose ``WhTp``, its
rows zero-padded to a multiple of :data:`~plstm_np.backends.numba.forward.DOT_PAD`) is gate
``g`` of neuron ``n``, so an open neuron's four gate rows are contiguous. The layouts of
unchanged parameters are reused (:func:`cached_layouts`).
"""
from __future__ import annotations

import numpy as np

from .arguments import DenseWeights, Peepholes, SparseWeights, Timing
from .forward import DOT_PAD
from .workspace import thread_store

__all__ = ["to_neuron_major", "from_neuron_major", "prepare_params", "cached_layouts",
           "token_table", "LAYOUTS_KEPT"]


def to_neuron_major(W):
    """(K, 4H) gate blocks [i, f, g, o] -> (K, 4H) with column ``4 n + g`` (a new array)."""
    K, H4 = W.shape
    H = H4 // 4
    out = np.empty((K, H, 4), W.dtype)
    for g in range(4):  # a block at a time: 3x faster than one copy of a 4-wide transpose
        out[:, :, g] = W[:, g * H:(g + 1) * H]
    return out.reshape(K, H4)



def from_neuron_major(W):
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
        Include neuron-major copies (and a zero-padded transpose) for the sparse kernel.

    Returns
    -------
    dict
        ``peep`` (:class:`~plstm_np.backends.numba.arguments.Peepholes`), ``timing``
        (:class:`~plstm_np.backends.numba.arguments.Timing`, float64, with the screen's
        rows), ``gate_open``, and the layouts asked for: ``dense``
        (:class:`~plstm_np.backends.numba.arguments.DenseWeights`) and ``sparse``
        (:class:`~plstm_np.backends.numba.arguments.SparseWeights`) with the neuron-major
        bias ``bN`` (4H,) and ``bias_table`` (1, 4H); a layout not asked for is None.
    """
    Wx, Wh, b = params["Wx"], params["Wh"], params["b"]
    H = Wh.shape[0]
    prepared = dict(
        peep=Peepholes(np.ascontiguousarray(params["w_ci"]), np.ascontiguousarray(params["w_cf"]),
                       np.ascontiguousarray(params["w_co"])),
        gate_open=bool(gate_open), dense=None, sparse=None,
    )
    if dense:  # gate blocks [i, f, g, o]
        prepared["dense"] = DenseWeights(np.ascontiguousarray(Wx), np.ascontiguousarray(Wh),
                                         np.ascontiguousarray(b), np.ascontiguousarray(Wh.T))
    if sparse:  # neuron-major
        WhN = to_neuron_major(Wh)
        bN = to_neuron_major(b[None, :])[0]
        prepared["sparse"] = SparseWeights(to_neuron_major(Wx), WhN,
                                           _padded_columns(WhN.T, DOT_PAD))
        prepared.update(bN=bN, bias_table=bN[None, :].copy())
    if gate_open:
        tau, s, r_on = np.ones(H), np.zeros(H), np.ones(H)
    else:  # the phase is computed in float64
        tau, s, r_on = (np.ascontiguousarray(params[name], dtype=np.float64)
                        for name in ("tau", "s", "r_on"))
    # the screen's rows s, 1 / tau, r_on, padded to groups of 8 that never pass
    gate_rows = np.zeros((3, -(-H // 8) * 8))
    gate_rows[2] = -1.0
    gate_rows[:, :H] = s, 1.0 / tau, r_on
    prepared["timing"] = Timing(tau, s, r_on, gate_rows)
    return prepared


def cached_layouts(params, gate_open, dense, sparse):
    """:func:`prepare_params`, reusing the layouts this thread made last time for the same
    parameter values: a private copy of the parameters they were made from is compared,
    exactly, with ``params`` (a few us against tens for the re-layout), so parameters
    changed in place since are never served stale layouts. At most :data:`LAYOUTS_KEPT`
    are kept; :func:`~plstm_np.backends.numba.workspace.clear_workspace` drops them."""
    kept = thread_store().setdefault("layouts", {})
    key = (id(params), bool(gate_open), bool(dense), bool(sparse))
    entry = kept.pop(key, None)
    if entry is None or not _same_values(entry[0], params):
        entry = ({name: np.array(value) for name, value in params.items()},
                 prepare_params(params, gate_open, dense=dense, sparse=sparse))
    kept[key] = entry  # the most recent last
    while len(kept) > LAYOUTS_KEPT:
        del kept[next(iter(kept))]
    return entry[1]


LAYOUTS_KEPT = 8  # a network's layers, in training and in evaluation


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
    sparse = prepared["sparse"]
    table = np.ascontiguousarray(E @ sparse.WxN[:De] + prepared["bN"])
    rest = dict(prepared, sparse=sparse._replace(WxN=np.ascontiguousarray(sparse.WxN[De:])))
    return table, rest
