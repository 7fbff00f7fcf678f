"""The ``cuda`` backend of the Phased GRU: its forward pass, one block per sample.

The equations are those of :mod:`plstm_np.gru`; the launch structure is that of the Phased
LSTM's forward (:mod:`~plstm_np.backends.cuda.kernels`): one block per sample, persistent
over the sequence, ``cuda.syncthreads()`` between the phases of a step. A step:

1. every thread takes neurons ``n = tid, tid + blockDim, ...``, computes the time gate ``k``
   (phase in float64) and lists the neurons to update: those on an open piece of their
   gate (``phi < r_on``), or every neuron when ``leak > 0`` or the gate is forced open,
   exactly the reference's ``updated`` set, so the counts agree. The others carry ``h``;
2. if any neuron is listed, the reset gate of *every* neuron, ``r = sigma(x Wx_r + h Wh_r +
   b_r)``, and ``r * h_{j-1}`` (the candidate of a listed neuron reads all of them); the
   update gate ``z`` of the listed neurons only;
3. the listed neurons' candidate ``n = tanh(x Wx_n + (r * h) Wh_n + b_n)``, proposal
   ``ht = (1 - z) n + z h_{j-1}`` and state ``h = k ht + (1 - k) h_{j-1}``.

Only the forward is built: a cache made here cannot be differentiated
(:func:`gru_backward` raises NotImplementedError naming the backends that can).
"""
from __future__ import annotations

import functools

import numpy as np

from ... import config
from .device import to_device
from .kernels import cuda, device_functions

__all__ = ["gru_forward", "gru_backward", "gru_kernel"]


@functools.cache
def gru_kernel():
    """Compile (lazily, on first use) the dtype-generic forward kernel."""
    dev = device_functions()
    phase, gate_openness, sigmoid, tanh = (dev["phase"], dev["gate_openness"], dev["sigmoid"],
                                           dev["tanh"])
    int32 = np.int32
    f64 = np.float64

    @cuda.jit
    def forward(x, t, lengths, W, bias, tau, s, r_on, leak, gate_open, h0, h_seq, rh, zg, kg,
                open_idx, updates):
        """W is [Wx; Wh] transposed: row ``col`` of (3H, D + H) holds gate column ``col``'s
        weights. Scratch (B, H) arrays: ``rh`` holds ``r * h_{j-1}``, ``zg`` the update
        gates, ``kg`` the openness (rounded to the model dtype, as the reference does)."""
        b = cuda.blockIdx.x
        tid = cuda.threadIdx.x
        nt = cuda.blockDim.x
        T = h_seq.shape[1]
        H = h_seq.shape[2]
        D = x.shape[2]
        n_open = cuda.shared.array(1, int32)
        L = lengths[b]
        count = 0
        for j in range(T):
            hp = h0[b] if j == 0 else h_seq[b, j - 1]
            hj = h_seq[b, j]
            if j >= L:  # padding: state carried, x and t never read (L is block-uniform)
                for n in range(tid, H, nt):
                    hj[n] = hp[n]
                continue
            if tid == 0:
                n_open[0] = 0
            cuda.syncthreads()
            # 1. the openness; list the neurons to update, carry the others
            tj = t[b, j]
            for n in range(tid, H, nt):
                if gate_open:
                    kg[b, n] = 1.0
                    listed = True
                else:
                    phi = phase(tj, f64(tau[n]), f64(s[n]))
                    kg[b, n] = gate_openness(phi, f64(r_on[n]), leak)
                    listed = leak > 0.0 or phi < f64(r_on[n])
                if listed:
                    open_idx[b, cuda.atomic.add(n_open, 0, 1)] = n
                else:
                    hj[n] = hp[n]
            cuda.syncthreads()
            m = n_open[0]  # block-uniform
            if m > 0:
                xj = x[b, j]
                # 2. every neuron's reset gate (times h_{j-1}); the listed update gates
                for n in range(tid, H, nt):
                    Wc = W[n]
                    acc = bias[n]
                    for d in range(D):
                        acc += xj[d] * Wc[d]
                    for q in range(H):
                        acc += hp[q] * Wc[D + q]
                    rh[b, n] = sigmoid(acc) * hp[n]
                for w in range(tid, m, nt):
                    n = open_idx[b, w]
                    Wc = W[H + n]
                    acc = bias[H + n]
                    for d in range(D):
                        acc += xj[d] * Wc[d]
                    for q in range(H):
                        acc += hp[q] * Wc[D + q]
                    zg[b, n] = sigmoid(acc)
                cuda.syncthreads()
                # 3. the listed neurons' candidate, proposal and gated state
                for w in range(tid, m, nt):
                    n = open_idx[b, w]
                    Wc = W[2 * H + n]
                    acc = bias[2 * H + n]
                    for d in range(D):
                        acc += xj[d] * Wc[d]
                    for q in range(H):
                        acc += rh[b, q] * Wc[D + q]
                    z = zg[b, n]
                    k = kg[b, n]
                    hj[n] = k * ((1.0 - z) * tanh(acc) + z * hp[n]) + (1.0 - k) * hp[n]
                count += m
            cuda.syncthreads()  # h_j complete (and the scratch free) before step j + 1
        if tid == 0:
            updates[b] = count

    return forward


def gru_forward(params, x, t, lengths, h0, leak, gate_open=False):
    """The Phased GRU's forward on host arrays, the contract of
    :func:`plstm_np.gru.gru_forward` (the caller checks that the backend can run:
    :func:`plstm_np.backends.cuda.ensure_available`).

    Returns
    -------
    h : ndarray (B, T, H)
    h_T : ndarray (B, H)
    cache : dict
        ``backend`` ('cuda') and ``updates`` (the updated neuron-steps, counted as the
        reference counts them); it cannot be differentiated.
    """
    Wx, Wh, b = params["Wx"], params["Wh"], params["b"]
    B, T, _ = x.shape
    H, dtype = Wh.shape[0], Wh.dtype
    W = np.ascontiguousarray(np.concatenate([Wx, Wh]).T)  # (3H, D + H)
    if gate_open:
        tau = s = r_on = np.ones(H, dtype)  # placeholders, never read
    else:
        tau, s, r_on = params["tau"], params["s"], params["r_on"]
    h_seq = cuda.device_array((B, T, H), dtype)
    updates = cuda.to_device(np.zeros(max(B, 1), np.int64))
    if B:
        scratch = [cuda.device_array((B, H), dtype) for _ in range(3)]  # rh, zg, kg
        gru_kernel()[B, int(config.CUDA_THREADS_PER_BLOCK)](
            to_device(x), to_device(t), to_device(lengths.astype(np.int64)), to_device(W),
            to_device(b), to_device(tau), to_device(s), to_device(r_on), float(leak),
            bool(gate_open), to_device(h0), h_seq, *scratch,
            cuda.device_array((B, H), np.int32), updates)
    h = h_seq.copy_to_host()
    hT = h[:, T - 1].copy() if T else h0.copy()
    return h, hT, dict(backend="cuda", updates=int(updates.copy_to_host().sum()))


def gru_backward(dh_seq, dh_T, cache):
    """Not built: the Phased GRU has a CUDA forward only."""
    raise NotImplementedError("the Phased GRU's 'cuda' backend has a forward pass only (for "
                              "inference); train it with backend='numba' or 'numpy'")
