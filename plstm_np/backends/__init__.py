"""Backend registry: every backend module provides the same two functions.

``layer_forward(params, x, t, lengths, h0, c0, leak, gate_open)`` returns
``(h_seq, (h_T, c_T), cache)`` with ``cache["updates"]`` the number of neuron updates it
actually computed, and ``layer_backward(dh_seq, dstate, cache, grad_clip=None)`` returns the
gradient dict (parameters plus ``x``, ``h0``, ``c0``), the pre-activation gradients clipped
as :func:`plstm_np.reference.layer_backward` says when ``grad_clip`` is given. Inputs arrive
validated (see :mod:`plstm_np.validation`). Backends are imported on first use, so
importing ``plstm_np`` compiles nothing.
"""
from __future__ import annotations

import importlib
import shutil
import subprocess

__all__ = ["BACKENDS", "BackendUnavailableError", "get_backend", "check_backend",
           "nvidia_gpu_listed"]

BACKENDS = {
    "numpy": "plstm_np.reference",
    "numba": "plstm_np.backends.numba",
    "cuda": "plstm_np.backends.cuda",
}


class BackendUnavailableError(RuntimeError):
    """A backend was asked for that cannot run here (no GPU, numba-cuda missing, ...)."""


def check_backend(name):
    """Return ``name`` if it is a known backend, else raise ValueError naming ``backend``."""
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {sorted(BACKENDS)}, got {name!r}")
    return name


def get_backend(name):
    """The backend module for ``name`` ('numpy', 'numba' or 'cuda').

    Raises
    ------
    ValueError
        For an unknown name.
    BackendUnavailableError
        When the backend cannot run on this machine; the message says why.
    """
    module = importlib.import_module(BACKENDS[check_backend(name)])
    ensure = getattr(module, "ensure_available", None)
    if ensure is not None:
        ensure()
    return module


def nvidia_gpu_listed():
    """Whether ``nvidia-smi -L`` lists a GPU: checked without importing numba.cuda, so that a
    test run or benchmark can choose the CUDA simulator before numba.cuda reads its settings."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return False
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0 and "GPU" in out.stdout
