"""The ``cuda`` backend's kernels: numba.cuda forward, BPTT and weight-gradient kernels.

Launch structure
----------------
Samples are independent, so the recurrence only needs a barrier *within* a sample. Each
kernel is therefore persistent over the sequence: **one block per sample** (one launch for
the whole forward, one for the whole backward), with ``cuda.syncthreads()`` between the
phases of a step instead of one launch per step (a grid-wide barrier). A step of the forward:

1. every thread takes neurons ``n = tid, tid + blockDim, ...``, computes the time gate
   ``k`` (phase in float64) and appends the neurons that must be updated to a per-sample
   list (a shared counter, ``cuda.atomic.add``). With ``leak == 0`` a neuron with ``k == 0``
   is *not* on the list: its state is copied and nothing else is computed;
2. the block's threads share the ``4 * n_open`` gate pre-activations of the listed neurons
   (dot products over ``[x_j, h_{j-1}]``), so the work shrinks with the open fraction even
   when the open neurons are scattered over warps;
3. the listed neurons update their cell and hidden state
   (:func:`plstm_np.scalar_math.cell_forward`).

The backward runs the same block-per-sample loop in reverse (each neuron's step is
:func:`plstm_np.scalar_math.cell_backward`); its recurrent product
``dh_{j-1} = (1 - k) dh_j + dz_j Wh^T`` only visits the updated neurons (deterministic
order, so results are reproducible). The weight gradients ``dWx, dWh, db`` are one tiled
matrix product ``[x | h_prev | 1]^T dZ`` over all (sample, step) rows afterwards (split over
the rows, partial tiles added atomically), and the per-neuron gradients (peepholes, tau, s,
r_on) are accumulated per sample in float64 and summed over the batch by a small kernel.

The scalar maths is :mod:`plstm_np.scalar_math`, compiled here with
``cuda.jit(device=True)``. Kernels are compiled on first use (:func:`kernels`).
"""
from __future__ import annotations

import functools
import math
import types

import numpy as np
from numba import from_dtype

from ... import scalar_math

try:  # optional dependency: this module imports without it (kernels() then cannot run)
    from numba import cuda  # a module global: the simulator swaps it inside kernels
    IMPORT_ERROR = None
except Exception as err:  # noqa: BLE001  (ImportError, or the CUDA bindings failing to load)
    cuda = None
    IMPORT_ERROR = err

__all__ = ["kernels", "device_functions", "weight_grad_kernel", "N_PART", "cuda",
           "IMPORT_ERROR"]

N_PART = 6  # per-neuron gradient rows: w_ci, w_cf, w_co, tau, s, r_on


def device_functions():
    """scalar_math compiled with ``cuda.jit(device=True)``.

    The plain functions call each other through their module globals (gate_openness calls
    gate_piece); each copy is rebound to globals where those names are the device versions.
    """
    names = ("sigmoid", "tanh", "phase", "gate_piece", "gate_openness", "gate_dk_dphi",
             "gate_dk_dr_on", "cell_forward", "cell_backward")
    env = {"math": math}
    compiled = {}
    for name in names:  # dependencies first: gate_piece precedes its callers
        fn = getattr(scalar_math, name)
        copy = types.FunctionType(fn.__code__, env, fn.__name__, fn.__defaults__, fn.__closure__)
        compiled[name] = env[name] = cuda.jit(device=True)(copy)
    return compiled


@functools.cache
def kernels():
    """Compile (lazily, on first use) the dtype-generic kernels."""
    dev = device_functions()
    phase, cell_forward, cell_backward = dev["phase"], dev["cell_forward"], dev["cell_backward"]
    gate_openness, gate_dk_dphi, gate_dk_dr_on = (dev["gate_openness"], dev["gate_dk_dphi"],
                                                  dev["gate_dk_dr_on"])
    int32 = np.int32
    f64 = np.float64

    @cuda.jit
    def forward_kernel(x, t, lengths, W, bias, w_ci, w_cf, w_co, tau, s, r_on, leak, gate_open,
                       h0, c0, h_seq, c_seq, k_seq, gates, store_gates, z, open_idx, updates):
        """One block per sample, persistent over the T steps (see the module notes).

        W is [Wx; Wh] transposed: row ``col`` of (4H, D + H) holds the weights of gate
        column ``col``, so a thread's dot product reads one contiguous row.
        """
        b = cuda.blockIdx.x
        tid = cuda.threadIdx.x
        nt = cuda.blockDim.x
        T = h_seq.shape[1]
        H = h_seq.shape[2]
        D = x.shape[2]
        n_open = cuda.shared.array(1, int32)
        L = lengths[b]
        count = 0
        zb = z[b]
        for j in range(T):
            if j == 0:
                hp = h0[b]
                cp = c0[b]
            else:
                hp = h_seq[b, j - 1]
                cp = c_seq[b, j - 1]
            hj = h_seq[b, j]
            cj = c_seq[b, j]
            kj = k_seq[b, j]
            if j >= L:  # padding: state carried, x and t never read (L is block-uniform)
                for n in range(tid, H, nt):
                    hj[n] = hp[n]
                    cj[n] = cp[n]
                    kj[n] = 0.0
                continue
            if tid == 0:
                n_open[0] = 0
            cuda.syncthreads()
            # 1. time gate; list the neurons to update, carry the others
            tj = t[b, j]
            for n in range(tid, H, nt):
                if gate_open:
                    k = 1.0
                else:
                    k = gate_openness(phase(tj, f64(tau[n]), f64(s[n])), f64(r_on[n]), leak)
                kj[n] = k  # rounded to the model dtype, as the reference does
                if k != 0.0 or leak > 0.0:
                    open_idx[b, cuda.atomic.add(n_open, 0, 1)] = n
                else:  # closed, no leak: nothing to compute
                    hj[n] = hp[n]
                    cj[n] = cp[n]
            cuda.syncthreads()
            m = n_open[0]
            # 2. gate pre-activations z = x_j Wx + h_{j-1} Wh + b of the listed neurons
            xj = x[b, j]
            for w in range(tid, 4 * m, nt):
                col = (w % 4) * H + open_idx[b, w // 4]
                Wc = W[col]
                acc = bias[col]
                for d in range(D):
                    acc += xj[d] * Wc[d]
                for q in range(H):
                    acc += hp[q] * Wc[D + q]
                zb[col] = acc
            cuda.syncthreads()
            # 3. cell and hidden state of the listed neurons
            for w in range(tid, m, nt):
                n = open_idx[b, w]
                c_old = cp[n]
                i, f, g, o, ct, tanh_ct = cell_forward(
                    zb[n], zb[H + n], zb[2 * H + n], zb[3 * H + n], c_old, w_ci[n], w_cf[n],
                    w_co[n], 1.0)
                k = kj[n]
                cj[n] = k * ct + (1.0 - k) * c_old
                hj[n] = k * (o * tanh_ct) + (1.0 - k) * hp[n]
                if store_gates:
                    gates[0, b, j, n] = i
                    gates[1, b, j, n] = f
                    gates[2, b, j, n] = g
                    gates[3, b, j, n] = o
                    gates[4, b, j, n] = ct
            count += m
            cuda.syncthreads()  # h_j complete before step j + 1 reads it
        if tid == 0:
            updates[b] = count

    @cuda.jit
    def backward_kernel(dh_seq, dhT, dcT, lengths, t, Wh, w_ci, w_cf, w_co, tau, s, r_on, leak,
                        gate_open, h0, c0, h_seq, c_seq, k_seq, gates, dZ, dh_buf, dc_buf,
                        dh_mid, part, clip):
        """BPTT, one block per sample, persistent over the steps in reverse.

        Writes dZ (B, T, 4H) (zero where nothing was computed; clipped to [-clip, clip]
        after the peepholes took their share, as in the reference), the per-sample
        per-neuron float64 sums ``part`` (B, 6, H) and leaves dh_0, dc_0 in dh_buf, dc_buf.
        """
        b = cuda.blockIdx.x
        tid = cuda.threadIdx.x
        nt = cuda.blockDim.x
        T = h_seq.shape[1]
        H = h_seq.shape[2]
        L = lengths[b]
        pb = part[b]
        for n in range(tid, H, nt):  # every loop below gives neuron n to this same thread
            dh_buf[b, n] = dhT[b, n]
            dc_buf[b, n] = dcT[b, n]
            for q in range(N_PART):
                pb[q, n] = 0.0
        for jj in range(T):
            j = T - 1 - jj
            dZj = dZ[b, j]
            if j >= L:  # padding: k = 0, the gradient passes through unchanged
                for n in range(tid, H, nt):
                    dh_buf[b, n] += dh_seq[b, j, n]
                    for g in range(4):
                        dZj[g * H + n] = 0.0
                continue
            if j == 0:
                hp = h0[b]
                cp = c0[b]
            else:
                hp = h_seq[b, j - 1]
                cp = c_seq[b, j - 1]
            kj = k_seq[b, j]
            tj = t[b, j]
            for n in range(tid, H, nt):
                dh = dh_buf[b, n] + dh_seq[b, j, n]
                dc = dc_buf[b, n]
                k = kj[n]
                if k == 0.0 and leak == 0.0:  # skipped in the forward: k = 0, dz = 0
                    for g in range(4):
                        dZj[g * H + n] = 0.0
                    dh_mid[b, n] = dh
                    continue
                i = gates[0, b, j, n]
                f = gates[1, b, j, n]
                g_ = gates[2, b, j, n]
                o = gates[3, b, j, n]
                ct = gates[4, b, j, n]
                c_old = cp[n]
                dz_i, dz_f, dz_g, dz_o, dcp, dhp, dk = cell_backward(
                    dh, dc, k, i, f, g_, o, ct, math.tanh(ct), c_old, hp[n], w_ci[n], w_cf[n],
                    w_co[n], 1.0)
                pb[0, n] += dz_i * c_old
                pb[1, n] += dz_f * c_old
                pb[2, n] += dz_o * ct
                if clip < math.inf:
                    dz_i = min(max(dz_i, -clip), clip)
                    dz_f = min(max(dz_f, -clip), clip)
                    dz_g = min(max(dz_g, -clip), clip)
                    dz_o = min(max(dz_o, -clip), clip)
                dZj[n] = dz_i
                dZj[H + n] = dz_f
                dZj[2 * H + n] = dz_g
                dZj[3 * H + n] = dz_o
                dh_mid[b, n] = dhp
                dc_buf[b, n] = dcp
                if not gate_open:  # chain rule through k(t, tau, s, r_on), in float64
                    tau64 = f64(tau[n])
                    s64 = f64(s[n])
                    r64 = f64(r_on[n])
                    phi = phase(tj, tau64, s64)
                    dk_dphi = gate_dk_dphi(phi, r64, leak)
                    dk64 = f64(dk)
                    pb[3, n] += dk64 * dk_dphi * (-(tj - s64) / (tau64 * tau64))
                    pb[4, n] += -dk64 * dk_dphi / tau64
                    pb[5, n] += dk64 * gate_dk_dr_on(phi, r64)
            cuda.syncthreads()
            # dh_{j-1} = (1 - k) dh + dz Wh^T, visiting only the updated neurons
            for q in range(tid, H, nt):
                acc = dh_mid[b, q]
                Wq = Wh[q]
                for n in range(H):
                    if kj[n] != 0.0 or leak > 0.0:
                        acc += (dZj[n] * Wq[n] + dZj[H + n] * Wq[H + n]
                                + dZj[2 * H + n] * Wq[2 * H + n] + dZj[3 * H + n] * Wq[3 * H + n])
                dh_buf[b, q] = acc
            cuda.syncthreads()

    @cuda.jit
    def transpose_cat_kernel(Wx, Wh, W):
        """W[col, :D] = Wx[:, col], W[col, D:] = Wh[:, col]."""
        col, p = cuda.grid(2)
        D = Wx.shape[0]
        if col < W.shape[0] and p < W.shape[1]:
            W[col, p] = Wx[p, col] if p < D else Wh[p - D, col]

    @cuda.jit
    def dx_kernel(dZ, Wx, dx):
        """dx[b, j, d] = sum_col dZ[b, j, col] Wx[d, col] for d < dx.shape[2]."""
        r, d = cuda.grid(2)
        T = dZ.shape[1]
        if r < dZ.shape[0] * T and d < dx.shape[2]:
            b = r // T
            j = r - b * T
            acc = 0.0
            Wd = Wx[d]
            dz = dZ[b, j]
            for col in range(dZ.shape[2]):
                acc += dz[col] * Wd[col]
            dx[b, j, d] = acc

    @cuda.jit
    def reduce_part_kernel(part, out):
        """out[q, n] = sum_b part[b, q, n] (cast to out's dtype)."""
        q, n = cuda.grid(2)
        if q < out.shape[0] and n < out.shape[1]:
            acc = 0.0
            for b in range(part.shape[0]):
                acc += part[b, q, n]
            out[q, n] = acc

    return types.SimpleNamespace(
        forward=forward_kernel, backward=backward_kernel, transpose_cat=transpose_cat_kernel,
        dx=dx_kernel, reduce_part=reduce_part_kernel)


@functools.cache
def weight_grad_kernel(dtype, tile):
    """Tiled ``G = A^T dZ`` with A's rows ``[x_j, h_{j-1}, 1]`` (zero on padded steps).

    Grid (row tiles of G, column tiles of G, splits of the B*T rows); partial tiles are
    added into G (zeroed beforehand) atomically. Shared tiles need a compile-time dtype and
    size, hence one kernel per (dtype, tile).
    """
    nb_dtype = from_dtype(np.dtype(dtype))

    @cuda.jit
    def kernel(x, h0, h_seq, lengths, dZ, rows_per_split, G):
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        p0 = cuda.blockIdx.x * tile
        c0 = cuda.blockIdx.y * tile
        T = h_seq.shape[1]
        D = x.shape[2]
        H = h_seq.shape[2]
        P = G.shape[0]
        N = G.shape[1]
        K = h_seq.shape[0] * T
        r_begin = cuda.blockIdx.z * rows_per_split
        r_end = min(K, r_begin + rows_per_split)
        As = cuda.shared.array((tile, tile), nb_dtype)
        Bs = cuda.shared.array((tile, tile), nb_dtype)
        acc = 0.0
        for r0 in range(r_begin, r_end, tile):
            r = r0 + ty  # this thread loads row r of both tiles
            a = 0.0
            bz = 0.0
            if r < r_end:
                b = r // T
                j = r - b * T
                if j < lengths[b]:
                    p = p0 + tx
                    if p < D:
                        a = x[b, j, p]
                    elif p < D + H:
                        a = h0[b, p - D] if j == 0 else h_seq[b, j - 1, p - D]
                    elif p < P:
                        a = 1.0
                    if c0 + tx < N:
                        bz = dZ[b, j, c0 + tx]
            As[ty, tx] = a
            Bs[ty, tx] = bz
            cuda.syncthreads()
            for q in range(tile):
                acc += As[q, ty] * Bs[q, tx]
            cuda.syncthreads()
        if p0 + ty < P and c0 + tx < N:
            cuda.atomic.add(G, (p0 + ty, c0 + tx), nb_dtype(acc))

    return kernel
