"""The Numba CPU backend: ``@njit`` forward and BPTT kernels that skip closed neurons.

Same contract as :mod:`plstm_np.reference` (same equations, same gradient keys), with the
paper's sparse updates made real. When ``leak == 0`` (evaluation, or training with the leak
switched off) a neuron whose time gate is on its closed piece has ``k = 0`` and carries
``(h, c)`` unchanged, so the kernels compute neither its gate pre-activations nor its
nonlinearities. A neuron is *updated* at a valid step when its phase lies on an open piece,
``0 <= phi < r_on`` (with ``leak > 0`` or ``gate_open`` every neuron is updated at every
valid step); the kernels count the updates they compute per sample and per neuron.

The subpackage, one concern a module, in the order they build on each other:

- :mod:`~plstm_np.backends.numba.compile`: the flags, the on-disk cache, plain-Python mode;
- :mod:`~plstm_np.backends.numba.intrinsics`: LLVM intrinsics and their Python twins;
- :mod:`~plstm_np.backends.numba.cell_math`: the phase, the gate, exp, sigmoid, tanh and
  the cell of :mod:`plstm_np.scalar_math` compiled for the CPU;
- :mod:`~plstm_np.backends.numba.arguments`: the kernels' argument groups;
- :mod:`~plstm_np.backends.numba.forward`, :mod:`~plstm_np.backends.numba.backward`: the
  kernels (dense for training, sparse for evaluation and its backward);
- :mod:`~plstm_np.backends.numba.workspace`, :mod:`~plstm_np.backends.numba.layouts`:
  reused arrays, BLAS threads, and the weight layouts the kernels read;
- this module: the contract (:func:`layer_forward`, :func:`layer_backward`) and
  :func:`stream_forward` for :class:`plstm_np.streaming.Stream`. It validates nothing (the
  API boundary did), re-lays out and dispatches; the kernels take C-contiguous arrays and
  scalars only.

Memory. A training forward keeps ``h``, ``c``, ``i``, ``f``, ``g``, ``o`` and ``tanh(c~)`` per
step: what a hand-written LSTM stores. ``c~`` and the time gate ``k`` (and whether a neuron
was updated) are recomputed in the backward, which needs the exact phase anyway for the
timing gradients. An evaluation forward (``leak == 0``) keeps only ``h``; a backward through
it first reruns the forward, storing (the sparse kernel stores the gates of the updated
neurons only, and ``c``).

Arithmetic. Gate maths runs in the model dtype (float32 maths for float32 models); the phase
is always float64, bitwise equal to :func:`plstm_np.time_gate.phase`. See
:mod:`~plstm_np.backends.numba.cell_math` and :mod:`~plstm_np.backends.numba.compile`.
"""
from __future__ import annotations

import numba
import numpy as np

from ... import config
from .arguments import (
    InputGrads,
    OutputGrads,
    ParamGrads,
    Readout,
    Sequence,
    State,
    Stored,
    Tokens,
    no_readout,
    no_stored,
    no_tokens,
)
from .backward import SPARSE_BACKWARD, backward_kernel, backward_sparse_kernel
from .forward import forward_dense_kernel, forward_kernel, forward_kernel_serial
from .gru_kernels import gru_backward, gru_forward
from .intrinsics import SCREEN_MARGIN
from .layouts import cached_layouts, from_neuron_major, prepare_params, to_neuron_major, token_table
from .workspace import SerialBLAS, clear_workspace, num_chunks, packed_order, reusable

__all__ = ["layer_forward", "layer_backward", "ensure_available", "to_neuron_major",
           "prepare_params", "stream_forward", "clear_workspace", "token_table",
           "SCREEN_MARGIN", "gru_forward", "gru_backward"]

_threads_set = False


def ensure_available():
    """Apply the thread knob once (Numba itself is a hard dependency, so always available)."""
    global _threads_set
    if not _threads_set:
        if config.NUM_THREADS is not None:
            numba.set_num_threads(int(config.NUM_THREADS))
        _threads_set = True


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
    B = x.shape[0]
    H = params["Wh"].shape[0]
    leak = float(leak)
    dense = bool(gate_open) or leak > 0.0
    p = cached_layouts(params, gate_open, dense, not dense)
    cache = dict(backend="numba", params=params, prepared=p, x=x, t=t, lengths=lengths, h0=h0,
                 c0=c0, leak=leak, gate_open=bool(gate_open), dense=dense)
    if dense:
        h_seq, (hT, cT), stored = _forward_dense_run(p, x, t, lengths, h0, c0, leak, gate_open)
        counts = np.repeat(lengths[:, None], H, axis=1).astype(np.int64)
        cache["stored"] = stored
    else:  # evaluation: nothing stored; a backward recomputes what it needs
        counts = np.zeros((B, H), np.int64)
        h_seq, (hT, cT) = _forward_sparse_run(p, x, t, lengths, h0, c0, counts, None)
    cache.update(h_seq=h_seq, update_counts=counts, updates=int(counts.sum()))
    return h_seq, (hT, cT), cache


def _stored_block(B, T, H, dtype):
    """The arrays (B, T, H) BPTT keeps besides h, as one reused block."""
    return Stored(*reusable("stored", (6, B, T, H), dtype))


def _forward_dense_run(p, x, t, lengths, h0, c0, leak, gate_open):
    """Run the dense forward kernel; return h_seq, (h_T, c_T) and the :class:`Stored` arrays
    the backward needs (one block, reused like h_seq once nothing refers to it)."""
    B, T, _ = x.shape
    H = h0.shape[1]
    dtype = h0.dtype
    h_seq = reusable("h_seq", (B, T, H), dtype)
    stored = _stored_block(B, T, H, dtype)
    final = State(np.empty((B, H), dtype), np.empty((B, H), dtype))
    nchunks = num_chunks(B)
    with SerialBLAS():
        forward_dense_kernel(Sequence(x, t, lengths), p["dense"], p["peep"], p["timing"], leak,
                             bool(gate_open), State(h0, c0), nchunks,
                             packed_order(lengths, nchunks), h_seq, stored, final)
    return h_seq, tuple(final), stored


def _forward_sparse_run(p, x, t, lengths, h0, c0, counts, stored):
    """Run the sparse forward kernel; ``stored``: None, or the :class:`Stored` arrays to
    fill with what the backward needs."""
    B, T, _ = x.shape
    h_seq = reusable("h_seq", (B, T, h0.shape[1]), h0.dtype)
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
    is computed in the kernel, incrementally (see
    :func:`plstm_np.backends.numba.forward.forward_kernel`).

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
    for what is not asked: ``stored`` (:class:`Stored`), ``table`` and ``tokens`` (else the
    bias), ``readout`` (W, b). Return h_T, c_T and the read-outs (None without
    ``readout``)."""
    B, T, _ = x.shape
    H = h0.shape[1]
    dtype = h0.dtype
    final = State(np.empty((B, H), dtype), np.empty((B, H), dtype))
    tokens_in = no_tokens(p["bias_table"]) if table is None else Tokens(table, tokens)
    if readout is None:
        out = no_readout(dtype)
    else:
        rW = np.ascontiguousarray(readout[0], dtype=np.float64)
        rb = np.ascontiguousarray(readout[1], dtype=np.float64)
        out = Readout(rW, rb, np.empty((B, T, rW.shape[1]), dtype))
    kernel = forward_kernel if B > 1 else forward_kernel_serial
    kernel(Sequence(x, t, lengths), tokens_in, p["sparse"], p["peep"], p["timing"],
           bool(gate_open), State(h0, c0), h_seq, final, stored is not None,
           no_stored(dtype) if stored is None else stored, counts, out)
    return final.h, final.c, (None if readout is None else out.y_seq)


def layer_backward(dh_seq, dstate, cache, grad_clip=None):
    """Backpropagation through time for :func:`layer_forward`.

    After a dense forward (``leak > 0`` or ``gate_open``) every neuron's gradients are
    computed at every step. After a leak-free one (``leak = 0``) the forward is rerun,
    storing the updated neurons' gate values, and only the updated neurons are visited (a
    closed neuron passes its gradients back unchanged), unless they are more than
    :data:`~plstm_np.backends.numba.backward.SPARSE_BACKWARD` of all neuron-steps: then
    the forward is rerun dense and every neuron visited, which is faster. The number of
    neuron-steps visited is left in ``cache["backward_updates"]``.

    Parameters
    ----------
    dh_seq : ndarray (B, T, H)
    dstate : tuple (dh_T, dc_T) or None
    cache : dict
        From :func:`layer_forward`.
    grad_clip : float or None
        Clip the pre-activation gradients, as :func:`plstm_np.reference.layer_backward`.

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
    clip = dtype.type(np.inf if grad_clip is None else grad_clip)  # inf: not clipped
    if dstate is None:
        dhT, dcT = np.zeros((B, H), dtype), np.zeros((B, H), dtype)
    else:
        dhT = np.ascontiguousarray(dstate[0], dtype)
        dcT = np.ascontiguousarray(dstate[1], dtype)
    grads_out = OutputGrads(np.ascontiguousarray(dh_seq, dtype), dhT, dcT)
    nchunks = num_chunks(B)
    grads_in = InputGrads(np.empty((B, T, D), dtype), np.empty((B, H), dtype),
                          np.empty((B, H), dtype))
    dtau, ds, dr_on = (np.zeros((B, H)) for _ in range(3))  # the kernels add to zeros
    dpeep = np.zeros((nchunks, 3, H))
    gate_open = cache["gate_open"]
    t, c0, leak = cache["t"], cache["c0"], cache["leak"]
    seq, state = Sequence(x, t, lengths), State(h0, c0)
    sparse = not cache["dense"] and cache["updates"] <= SPARSE_BACKWARD * lengths.sum() * H
    if sparse:  # the evaluation forward stored nothing: rerun it, storing the updated ones
        stored = _stored_block(B, T, H, dtype)
        _forward_sparse_run(p, x, t, lengths, h0, c0, np.zeros((B, H), np.int64), stored)
        grads_param = ParamGrads(dtau, ds, dr_on, dpeep,
                                 np.zeros((nchunks, 4 * H, p["sparse"].WhTp.shape[1]), dtype),
                                 np.zeros((nchunks, D, 4 * H), dtype),
                                 np.zeros((nchunks, 4 * H), dtype))
        visits = np.zeros(B, np.int64)
        backward_sparse_kernel(grads_out, seq, p["sparse"], p["peep"], p["timing"], state,
                               h_seq, stored, nchunks, grads_in, grads_param, visits, clip)
        cache["backward_updates"] = int(visits.sum())
        # rows of dWhT are columns of dWh
        dWh = from_neuron_major(grads_param.dWh.sum(0)[:, :H].T)
        dWx = from_neuron_major(grads_param.dWx.sum(0))
        db = from_neuron_major(grads_param.db.sum(0)[None, :])[0]
    else:
        stored = cache.get("stored")
        if not cache["dense"]:  # most neurons were updated: rerun the forward dense, storing
            p = dict(p, dense=cached_layouts(params, gate_open, True, False)["dense"])
            h_seq, _, stored = _forward_dense_run(p, x, t, lengths, h0, c0, leak, gate_open)
        grads_param = ParamGrads(dtau, ds, dr_on, dpeep, np.zeros((nchunks, H, 4 * H), dtype),
                                 np.zeros((nchunks, D, 4 * H), dtype),
                                 np.zeros((nchunks, 4 * H), dtype))
        with SerialBLAS():
            backward_kernel(grads_out, seq, p["dense"], p["peep"], p["timing"], leak,
                            gate_open, state, h_seq, stored, nchunks,
                            packed_order(lengths, nchunks), grads_in, grads_param, clip)
        cache["backward_updates"] = int(lengths.sum()) * H
        dWh, dWx, db = (g.sum(0) for g in grads_param[4:])
    peep = dpeep.sum(0).astype(dtype)
    grads = {
        "Wx": dWx,
        "Wh": dWh,
        "b": db,
        "w_ci": peep[0], "w_cf": peep[1], "w_co": peep[2],
        "x": grads_in.dx,
        "h0": grads_in.dh0, "c0": grads_in.dc0,
    }
    if not gate_open:
        grads["tau"] = dtau.sum(0).astype(dtype)
        grads["s"] = ds.sum(0).astype(dtype)
        grads["r_on"] = dr_on.sum(0).astype(dtype)
    return grads
