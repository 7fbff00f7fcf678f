"""The ``cuda`` backend on device arrays: layers' parameters on the GPU, forward, BPTT.

:class:`DeviceLayer` keeps one layer's parameters on the device; :func:`forward_device` and
:func:`backward_device` run the kernels of :mod:`~plstm_np.backends.cuda.kernels` on device
arrays and keep everything there: :mod:`plstm_np.backends.cuda.training` builds
device-resident training and batched streaming inference on them. Block sizes are the
knobs of :mod:`plstm_np.config`; :func:`grid` sizes every launch.
"""
from __future__ import annotations

import numpy as np

from ... import config
from .kernels import N_PART, cuda, kernels, weight_grad_kernel

__all__ = ["grid", "to_device", "zeros", "DeviceLayer", "forward_device", "backward_device"]


def grid(n, per_block):
    """Blocks of ``per_block`` threads that cover ``n`` items (at least one)."""
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
        tpb = config.CUDA_LAUNCH["transpose_cat"]
        blocks = (grid(4 * self.H, tpb[0]), grid(self.D + self.H, tpb[1]))
        kernels().transpose_cat[blocks, tpb](self.params["Wx"], self.params["Wh"], self.W)

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
        kernels().forward[B, tpb](
            x, t, lengths, layer.W, p["b"], p["w_ci"], p["w_cf"], p["w_co"], tau, s, r_on,
            float(leak), layer.gate_open, h0, c0, h_seq, c_seq, k_seq, gates, store_gates, z,
            open_idx, updates)
    return dict(h_seq=h_seq, c_seq=c_seq, k=k_seq, gates=gates, updates=updates, x=x, t=t,
                lengths=lengths, h0=h0, c0=c0, leak=float(leak), layer=layer,
                store_gates=store_gates)


def backward_device(fwd, dh_seq, dhT=None, dcT=None, *, dx_size=None, threads_per_block=None,
                    grad_clip=None):
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
    grad_clip : float or None
        Clip the pre-activation gradients, as :func:`plstm_np.reference.layer_backward`.

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
    k = kernels()
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
            fwd["h_seq"], fwd["c_seq"], fwd["k"], fwd["gates"], dZ, dh_buf, dc_buf, dh_mid, part,
            dtype.type(np.inf if grad_clip is None else grad_clip))  # inf: not clipped
    else:
        dh_buf, dc_buf = dhT, dcT

    # weight gradients: G = [x | h_prev | 1]^T dZ, rows D + H + 1, columns 4H
    tile = int(config.CUDA_TILE)
    P, N, K = D + H + 1, 4 * H, B * T
    G = zeros((P, N), dtype)
    if K:
        tiles = grid(P, tile) * grid(N, tile)
        splits = max(1, min(grid(K, tile), config.CUDA_GEMM_TARGET_BLOCKS // tiles))
        rows = grid(K, splits)
        weight_grad_kernel(np.dtype(dtype), tile)[
            (grid(P, tile), grid(N, tile), grid(K, rows)), (tile, tile)](
            fwd["x"], fwd["h0"], fwd["h_seq"], fwd["lengths"], dZ, rows, G)
    out = cuda.device_array((N_PART, H), dtype)
    tpb = config.CUDA_LAUNCH["reduce_part"]
    k.reduce_part[(grid(N_PART, tpb[0]), grid(H, tpb[1])), tpb](part, out)
    grads = {"Wx": G[:D], "Wh": G[D:D + H], "b": G[D + H], "w_ci": out[0], "w_cf": out[1],
             "w_co": out[2], "h0": dh_buf, "c0": dc_buf}
    if not layer.gate_open:
        grads.update(tau=out[3], s=out[4], r_on=out[5])
    dx_size = D if dx_size is None else int(dx_size)
    if dx_size:
        dx = cuda.device_array((B, T, dx_size), dtype)
        if K:
            tpb = config.CUDA_LAUNCH["dx"]
            k.dx[(grid(K, tpb[0]), grid(dx_size, tpb[1])), tpb](dZ, p["Wx"], dx)
        grads["x"] = dx
    return grads
