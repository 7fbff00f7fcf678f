"""The ``cuda`` backend: numba.cuda kernels for one Phased LSTM layer, forward and BPTT.

Same equations, names and contract as :mod:`plstm_np.reference`; the scalar maths is
:mod:`plstm_np.scalar_math`, compiled with ``cuda.jit(device=True)``. The subpackage:

- :mod:`~plstm_np.backends.cuda.kernels`: the kernels (one block per sample, persistent
  over the sequence) and how they are launched;
- :mod:`~plstm_np.backends.cuda.device`: parameters and activations on device arrays
  (:class:`DeviceLayer`, :func:`forward_device`, :func:`backward_device`);
- :mod:`~plstm_np.backends.cuda.gru_kernels`: the Phased GRU's forward (no backward yet);
- :mod:`~plstm_np.backends.cuda.training`: device-resident training and batched streaming
  inference (:class:`~plstm_np.backends.cuda.training.CudaTrainer`,
  :class:`~plstm_np.backends.cuda.training.CudaStreamer`);
- this module: availability and the host-array contract of :mod:`plstm_np.backends`
  (:func:`layer_forward`, :func:`layer_backward`, and the Phased GRU's :func:`gru_forward`,
  :func:`gru_backward`).

numba-cuda is optional: this module imports without it, and :func:`ensure_available` raises
:class:`plstm_np.backends.BackendUnavailableError` saying why the backend cannot run (the
submodules need it). Under ``NUMBA_ENABLE_CUDASIM=1`` the kernels run on Numba's CUDA
simulator.
"""
from __future__ import annotations

import numpy as np

from .. import BackendUnavailableError
from . import gru_kernels
from .device import DeviceLayer, backward_device, forward_device, to_device, zeros
from .kernels import IMPORT_ERROR, cuda

__all__ = [
    "ensure_available", "is_simulator", "layer_forward", "layer_backward", "gru_forward",
    "gru_backward", "DeviceLayer",
    "forward_device", "backward_device", "to_device", "zeros",
]


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
            f"({type(IMPORT_ERROR).__name__}: {IMPORT_ERROR}); install it with "
            f"`pip install numba-cuda[cu12]`, or use backend='numba' on the CPU")
    if not cuda.is_available():
        reason = None
        try:
            reason = cuda.cuda_error()
        except Exception:  # noqa: BLE001  (any failure here only means no reason to give)
            pass  # the simulator and some driver states have no reason to give
        reason = " ".join(str(reason).split()) if reason else "the driver reports no device"
        raise BackendUnavailableError(
            f"backend 'cuda' needs a CUDA GPU, and no CUDA GPU was found: {reason}. Use "
            f"backend='numba' on the CPU, or set NUMBA_ENABLE_CUDASIM=1 (before numba.cuda "
            f"is imported) to run the kernels on Numba's slow CUDA simulator")


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


def layer_backward(dh_seq, dstate, cache, grad_clip=None):
    """The backend contract's backward on host arrays (see :mod:`plstm_np.backends`)."""
    fwd = cache["device"]
    dhT = dcT = None
    if dstate is not None:
        dhT, dcT = to_device(dstate[0]), to_device(dstate[1])
    grads = backward_device(fwd, to_device(dh_seq), dhT, dcT, grad_clip=grad_clip)
    return {name: value.copy_to_host() for name, value in grads.items()}


def gru_forward(params, x, t, lengths, h0, leak, gate_open=False):
    """The Phased GRU's forward on host arrays (the contract of
    :func:`plstm_np.gru.gru_forward`): :func:`~plstm_np.backends.cuda.gru_kernels.gru_forward`
    once the backend is known to run."""
    ensure_available()
    return gru_kernels.gru_forward(params, x, t, lengths, h0, leak, gate_open)


def gru_backward(dh_seq, dh_T, cache):
    """Not built: raises NotImplementedError (the Phased GRU has a CUDA forward only)."""
    return gru_kernels.gru_backward(dh_seq, dh_T, cache)
