"""The ``cuda`` backend: numba.cuda kernels for one Phased LSTM layer, forward and BPTT.

Same equations, names and contract as :mod:`plstm_np.reference`; the scalar gate math is
:mod:`plstm_np.scalar_math`, compiled here with ``cuda.jit(device=True)``.

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
3. the listed neurons update their cell and hidden state.

The backward runs the same block-per-sample loop in reverse; its recurrent product
``dh_{j-1} = (1 - k) dh_j + dz_j Wh^T`` only visits the updated neurons (deterministic
order, so results are reproducible). The weight gradients ``dWx, dWh, db`` are one tiled
matrix product ``[x | h_prev | 1]^T dZ`` over all (sample, step) rows afterwards (split over
the rows, partial tiles added atomically), and the per-neuron gradients (peepholes, tau, s,
r_on) are accumulated per sample in float64 and summed over the batch by a small kernel.

The device-level functions (:func:`forward_device`, :func:`backward_device`, ...) keep
everything on the GPU; :mod:`plstm_np.cuda_training` builds device-resident training and
batched streaming inference on them. :func:`layer_forward` / :func:`layer_backward` are the
host-array contract of :mod:`plstm_np.backends`.

numba-cuda is optional: this module imports without it, and :func:`ensure_available` raises
:class:`plstm_np.backends.BackendUnavailableError` saying why the backend cannot run.
Under ``NUMBA_ENABLE_CUDASIM=1`` the kernels run on Numba's CUDA simulator.
"""
from __future__ import annotations

import functools
import math
import types

import numpy as np

from . import config, scalar_math
from .backends import BackendUnavailableError

try:  # optional dependency: importing plstm_np must work without it
    from numba import cuda
    _IMPORT_ERROR = None
except Exception as err:  # ImportError, or the CUDA bindings failing to load
    cuda = None
    _IMPORT_ERROR = err

__all__ = [
    "ensure_available", "is_simulator", "layer_forward", "layer_backward", "DeviceLayer",
    "forward_device", "backward_device", "to_device", "zeros",
]

N_PART = 6  # per-neuron gradient rows: w_ci, w_cf, w_co, tau, s, r_on


# ---------------------------------------------------------------------------- availability
def is_simulator():
    """True when numba.cuda runs on its simulator (``NUMBA_ENABLE_CUDASIM=1``)."""
    if cuda is None:
        return False
    from numba.cuda.core import config as cuda_config

    return bool(cuda_config.ENABLE_CUDASIM)


def ensure_available():
    """Raise :class:`~plstm_np.backends.BackendUnavailableError` unless the backend can run.

    It can run on a CUDA GPU with numba-cuda installed, or on Numba's CUDA simulator
    (``NUMBA_ENABLE_CUDASIM=1`` set before numba.cuda is first imported).
    """
    if cuda is None:
        raise BackendUnavailableError(
            f"backend 'cuda' needs numba-cuda, which is not installed or failed to import "
            f"({type(_IMPORT_ERROR).__name__}: {_IMPORT_ERROR}); install it with "
            f"`pip install numba-cuda[cu12]`, or use backend='numba' on the CPU")
    if not cuda.is_available():
        reason = None
        try:
            reason = cuda.cuda_error()
        except Exception:  # the simulator and some driver states have no reason to give
            pass
        reason = " ".join(str(reason).split()) if reason else "the driver reports no device"
        raise BackendUnavailableError(
            f"backend 'cuda' needs a CUDA GPU, and no CUDA GPU was found: {reason}. Use "
            f"backend='numba' on the CPU, or set NUMBA_ENABLE_CUDASIM=1 (before numba.cuda "
            f"is imported) to run the kernels on Numba's slow CUDA simulator")


# ---------------------------------------------------------------------------- device functions
def _device_functions():
    """scalar_math compiled with ``cuda.jit(device=True)``.

    The plain functions call each other through their module globals (gate_openness calls
    gate_piece); each copy is rebound to globals where those names are the device versions.
    """
    names = ("sigmoid", "phase", "gate_piece", "gate_openness", "gate_dk_dphi", "gate_dk_dr_on")
    env = {"math": math}
    compiled = {}
    for name in names:  # dependencies first: gate_piece precedes its callers
        fn = getattr(scalar_math, name)
        copy = types.FunctionType(fn.__code__, env, fn.__name__, fn.__defaults__, fn.__closure__)
        compiled[name] = env[name] = cuda.jit(device=True)(copy)
    return compiled


@functools.lru_cache(maxsize=None)
def _kernels():
    """Compile (lazily, on first use) the dtype-generic kernels."""
    dev = _device_functions()
    sigmoid, phase = dev["sigmoid"], dev["phase"]
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
                i = sigmoid(zb[n] + w_ci[n] * c_old)
                f = sigmoid(zb[H + n] + w_cf[n] * c_old)
                g = math.tanh(zb[2 * H + n])
                ct = f * c_old + i * g
                o = sigmoid(zb[3 * H + n] + w_co[n] * ct)
                ht = o * math.tanh(ct)
                k = kj[n]
                cj[n] = k * ct + (1.0 - k) * c_old
                hj[n] = k * ht + (1.0 - k) * hp[n]
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
                        dh_mid, part):
        """BPTT, one block per sample, persistent over the steps in reverse.

        Writes dZ (B, T, 4H) (zero where nothing was computed), the per-sample per-neuron
        float64 sums ``part`` (B, 6, H) and leaves dh_0, dc_0 in dh_buf, dc_buf.
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
                tc = math.tanh(ct)
                ht = o * tc
                # c = k ct + (1 - k) c_old,  h = k ht + (1 - k) h_old
                dk = dc * (ct - c_old) + dh * (ht - hp[n])
                dct = dc * k
                dht = dh * k
                dcp = dc * (1.0 - k)
                # ht = o tanh(ct),  o = sigma(z_o + w_co ct)
                do = dht * tc
                dct += dht * o * (1.0 - tc * tc)
                dao = do * o * (1.0 - o)
                dct += dao * w_co[n]
                # ct = f c_old + i g
                dai = dct * g_ * i * (1.0 - i)
                daf = dct * c_old * f * (1.0 - f)
                dzg = dct * i * (1.0 - g_ * g_)
                dcp += dct * f + dai * w_ci[n] + daf * w_cf[n]
                pb[0, n] += dai * c_old
                pb[1, n] += daf * c_old
                pb[2, n] += dao * ct
                dZj[n] = dai
                dZj[H + n] = daf
                dZj[2 * H + n] = dzg
                dZj[3 * H + n] = dao
                dh_mid[b, n] = dh * (1.0 - k)
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


@functools.lru_cache(maxsize=None)
def _weight_grad_kernel(dtype, tile):
    """Tiled ``G = A^T dZ`` with A's rows ``[x_j, h_{j-1}, 1]`` (zero on padded steps).

    Grid (row tiles of G, column tiles of G, splits of the B*T rows); partial tiles are
    added into G (zeroed beforehand) atomically. Shared tiles need a compile-time dtype and
    size, hence one kernel per (dtype, tile).
    """
    from numba import from_dtype

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


# ---------------------------------------------------------------------------- launches
def _blocks(n, per_block):
    return max(1, (n + per_block - 1) // per_block)


def to_device(a):
    """A device copy of a host array (C-contiguous)."""
    return cuda.to_device(np.ascontiguousarray(a))


def zeros(shape, dtype):
    """A zero-filled device array."""
    return cuda.to_device(np.zeros(shape, dtype))


class DeviceLayer:
    """One layer's parameters on the device, plus the transposed ``[Wx; Wh]`` the forward reads.

    Parameters
    ----------
    params : dict of ndarray
        The contract's parameter dict (host arrays).
    gate_open : bool
        LSTM baseline (no tau, s, r_on).

    Attributes
    ----------
    params : dict of device arrays
        Same keys as ``params``; update them in place on the device (e.g. Adam), then call
        :meth:`refresh`.
    """

    def __init__(self, params, gate_open):
        self.gate_open = bool(gate_open)
        self.dtype = params["Wh"].dtype
        self.H = params["Wh"].shape[0]
        self.D = params["Wx"].shape[0]
        self.params = {name: to_device(value) for name, value in params.items()}
        if self.gate_open:  # placeholders, never read
            ones = to_device(np.ones(self.H, self.dtype))
            self._timing = (ones, ones, ones)
        self.W = cuda.device_array((4 * self.H, self.D + self.H), self.dtype)
        self.refresh()

    @property
    def timing(self):
        """(tau, s, r_on) device arrays (placeholders when the gate is open)."""
        if self.gate_open:
            return self._timing
        return self.params["tau"], self.params["s"], self.params["r_on"]

    def refresh(self):
        """Rebuild the transposed weights after ``params`` changed on the device."""
        k = _kernels()
        tpb = (16, 16)
        grid = (_blocks(4 * self.H, 16), _blocks(self.D + self.H, 16))
        k.transpose_cat[grid, tpb](self.params["Wx"], self.params["Wh"], self.W)

    def to_host(self):
        """The parameters as a dict of host arrays."""
        return {name: value.copy_to_host() for name, value in self.params.items()}


def forward_device(layer, x, t, lengths, h0, c0, leak, *, store_gates=True,
                   threads_per_block=None):
    """Run one layer on device arrays.

    Parameters
    ----------
    layer : DeviceLayer
    x : device array (B, T, D) of the layer's dtype
    t : device array (B, T) float64
    lengths : device array (B,) int64
    h0, c0 : device arrays (B, H)
    leak : float
    store_gates : bool
        Keep the gate activations for :func:`backward_device` (False for inference).
    threads_per_block : int, optional
        Default :data:`plstm_np.config.CUDA_THREADS_PER_BLOCK`.

    Returns
    -------
    dict of device arrays
        ``h_seq``, ``c_seq``, ``k`` (B, T, H), ``gates`` (5, B, T, H) or a placeholder,
        ``updates`` (B,) int64, and the inputs (``x``, ``t``, ``lengths``, ``h0``, ``c0``,
        ``leak``, ``layer``) for the backward.
    """
    B, T, _ = x.shape
    H, dtype = layer.H, layer.dtype
    tpb = int(threads_per_block or config.CUDA_THREADS_PER_BLOCK)
    h_seq = cuda.device_array((B, T, H), dtype)
    c_seq = cuda.device_array((B, T, H), dtype)
    k_seq = cuda.device_array((B, T, H), dtype)
    gates = cuda.device_array((5, B, T, H) if store_gates else (5, 1, 1, 1), dtype)
    z = cuda.device_array((B, 4 * H), dtype)
    open_idx = cuda.device_array((B, H), np.int32)
    updates = cuda.device_array(B, np.int64)
    p = layer.params
    tau, s, r_on = layer.timing
    if B:
        _kernels().forward[B, tpb](
            x, t, lengths, layer.W, p["b"], p["w_ci"], p["w_cf"], p["w_co"], tau, s, r_on,
            float(leak), layer.gate_open, h0, c0, h_seq, c_seq, k_seq, gates, store_gates, z,
            open_idx, updates)
    return dict(h_seq=h_seq, c_seq=c_seq, k=k_seq, gates=gates, updates=updates, x=x, t=t,
                lengths=lengths, h0=h0, c0=c0, leak=float(leak), layer=layer,
                store_gates=store_gates)


def backward_device(fwd, dh_seq, dhT=None, dcT=None, *, dx_size=None, threads_per_block=None):
    """BPTT on the device for a :func:`forward_device` result.

    Parameters
    ----------
    fwd : dict
        From :func:`forward_device` with ``store_gates=True``.
    dh_seq : device array (B, T, H)
    dhT, dcT : device arrays (B, H), optional
        Gradient with respect to the final state (zeros when None).
    dx_size : int, optional
        Compute the input gradient for the first ``dx_size`` features (default: all D;
        0 skips it).
    threads_per_block : int, optional

    Returns
    -------
    dict of device arrays
        Every parameter's gradient (the layer's keys, its dtype) and ``x`` (B, T, dx_size)
        (absent when ``dx_size == 0``), ``h0``, ``c0``.
    """
    if not fwd["store_gates"]:
        raise ValueError("fwd was computed with store_gates=False: no backward possible")
    layer = fwd["layer"]
    B, T, D = fwd["x"].shape
    H, dtype = layer.H, layer.dtype
    tpb = int(threads_per_block or config.CUDA_THREADS_PER_BLOCK)
    k = _kernels()
    dhT = zeros((B, H), dtype) if dhT is None else dhT
    dcT = zeros((B, H), dtype) if dcT is None else dcT
    dZ = cuda.device_array((B, T, 4 * H), dtype)
    dh_buf = cuda.device_array((B, H), dtype)
    dc_buf = cuda.device_array((B, H), dtype)
    dh_mid = cuda.device_array((B, H), dtype)
    part = cuda.device_array((B, N_PART, H), np.float64)
    p = layer.params
    tau, s, r_on = layer.timing
    if B:
        k.backward[B, tpb](
            dh_seq, dhT, dcT, fwd["lengths"], fwd["t"], p["Wh"], p["w_ci"], p["w_cf"],
            p["w_co"], tau, s, r_on, fwd["leak"], layer.gate_open, fwd["h0"], fwd["c0"],
            fwd["h_seq"], fwd["c_seq"], fwd["k"], fwd["gates"], dZ, dh_buf, dc_buf, dh_mid, part)
    else:
        dh_buf, dc_buf = dhT, dcT

    # weight gradients: G = [x | h_prev | 1]^T dZ, rows D + H + 1, columns 4H
    tile = int(config.CUDA_TILE)
    P, N, K = D + H + 1, 4 * H, B * T
    G = zeros((P, N), dtype)
    if K:
        tiles = _blocks(P, tile) * _blocks(N, tile)
        splits = max(1, min(_blocks(K, tile), config.CUDA_GEMM_TARGET_BLOCKS // tiles))
        rows = _blocks(K, splits)
        _weight_grad_kernel(np.dtype(dtype), tile)[
            (_blocks(P, tile), _blocks(N, tile), _blocks(K, rows)), (tile, tile)](
            fwd["x"], fwd["h0"], fwd["h_seq"], fwd["lengths"], dZ, rows, G)
    out = cuda.device_array((N_PART, H), dtype)
    k.reduce_part[(_blocks(N_PART, 8), _blocks(H, 32)), (8, 32)](part, out)
    grads = {"Wx": G[:D], "Wh": G[D:D + H], "b": G[D + H], "w_ci": out[0], "w_cf": out[1],
             "w_co": out[2], "h0": dh_buf, "c0": dc_buf}
    if not layer.gate_open:
        grads.update(tau=out[3], s=out[4], r_on=out[5])
    dx_size = D if dx_size is None else int(dx_size)
    if dx_size:
        dx = cuda.device_array((B, T, dx_size), dtype)
        if K:
            k.dx[(_blocks(K, 64), _blocks(dx_size, 2)), (64, 2)](dZ, p["Wx"], dx)
        grads["x"] = dx
    return grads


# ---------------------------------------------------------------------------- host contract
def layer_forward(params, x, t, lengths, h0, c0, leak, gate_open=False):
    """The backend contract's forward on host arrays (see :mod:`plstm_np.backends`).

    Copies the inputs to the GPU, runs :func:`forward_device` and copies ``h``, ``h_T`` and
    ``c_T`` back; the cache keeps the device arrays for :func:`layer_backward`.
    """
    ensure_available()
    layer = DeviceLayer(params, gate_open)
    fwd = forward_device(layer, to_device(x), to_device(t), to_device(lengths.astype(np.int64)),
                         to_device(h0), to_device(c0), leak)
    h_seq = fwd["h_seq"].copy_to_host()
    B, T, H = h_seq.shape
    c_last = fwd["c_seq"][:, T - 1].copy_to_host() if T else c0.copy()
    hT = h_seq[:, T - 1].copy() if T else h0.copy()
    cache = dict(backend="cuda", device=fwd,
                 updates=int(fwd["updates"].copy_to_host().sum()))
    return h_seq, (hT, c_last), cache


def layer_backward(dh_seq, dstate, cache):
    """The backend contract's backward on host arrays (see :mod:`plstm_np.backends`)."""
    fwd = cache["device"]
    dhT = dcT = None
    if dstate is not None:
        dhT, dcT = to_device(dstate[0]), to_device(dstate[1])
    grads = backward_device(fwd, to_device(dh_seq), dhT, dcT)
    return {name: value.copy_to_host() for name, value in grads.items()}
