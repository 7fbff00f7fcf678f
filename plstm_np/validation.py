"""Input checks at the API boundary: clear errors that name the argument, never a silent cast.

Backends receive only what passed these checks (contiguous arrays of the right dtype and
shape), so every backend reports bad input the same way.
"""
from __future__ import annotations

import numbers

import numpy as np

__all__ = [
    "as_rng", "check_dtype", "check_positive_int", "check_array", "check_finite",
    "check_sequence_inputs", "check_state",
]

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))



def valid_steps(lengths, T):
    """Boolean (B, T) mask of the steps before each sample's length (the valid steps)."""
    return np.arange(T)[None, :] < np.asarray(lengths)[:, None]

def as_rng(rng):
    """A ``np.random.Generator`` from a Generator, an int seed or None."""
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or isinstance(rng, numbers.Integral):
        return np.random.default_rng(rng)
    raise TypeError(f"rng must be a numpy.random.Generator, an int seed or None, "
                    f"got {type(rng).__name__}")


def check_dtype(dtype, name="dtype"):
    """Return ``np.dtype(dtype)`` if it is float32 or float64, else raise TypeError."""
    try:
        dt = np.dtype(dtype)
    except TypeError as err:
        raise TypeError(f"{name} must be float32 or float64, got {dtype!r}") from err
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got {dt}")
    return dt


def check_positive_int(value, name):
    """Return ``int(value)`` for a positive integer, else raise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a positive int, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value}")
    return int(value)


def check_array(a, name, *, ndim=None, shape=None, dtype=None, kind=None):
    """Check type, ndim, shape and dtype of an array argument; return it C-contiguous.

    Parameters
    ----------
    a : object
        The argument; must be a ``numpy.ndarray``.
    name : str
        Its name, used in every message.
    ndim : int, optional
    shape : tuple, optional
        Expected shape; ``None`` entries match any size.
    dtype : dtype, optional
        Exact dtype required (no silent casts).
    kind : str, optional
        Required dtype kind instead of an exact dtype, e.g. ``"i"`` for signed integers.
    """
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {a.shape}")
    if shape is not None:
        if a.ndim != len(shape) or any(e is not None and e != n for e, n in zip(shape, a.shape)):
            want = "(" + ", ".join("?" if e is None else str(e) for e in shape) + ")"
            raise ValueError(f"{name} must have shape {want}, got {a.shape}")
    if dtype is not None and a.dtype != np.dtype(dtype):
        raise TypeError(
            f"{name} must have dtype {np.dtype(dtype)}, got {a.dtype} "
            f"(convert explicitly, e.g. {name}.astype(np.{np.dtype(dtype)}))"
        )
    if kind is not None and a.dtype.kind not in kind:
        raise TypeError(f"{name} must have an integer dtype, got {a.dtype}")
    return np.ascontiguousarray(a)


#: The smallest tau and r_on accepted: the smallest normal float64 (2.2e-308). Below it, in
#: the subnormals, 1 / tau and 2 / r_on overflow and the gate's pieces turn to inf or NaN.
TINY = float(np.finfo(np.float64).tiny)

#: The largest |t| accepted: beyond it ``dphi/dtau = -(t - s) / tau**2`` overflows float64
#: for the smallest periods (tau_min = 1e-3) and BPTT would return inf or NaN.
T_LIMIT = 1e300


def check_times(t, where):
    """Raise ValueError naming the first valid timestamp that is not finite or beyond
    :data:`T_LIMIT` in magnitude."""
    check_finite(t, "t", where)
    big = np.abs(t) > T_LIMIT
    if where is not None:
        big &= where
    if big.any():
        idx = tuple(int(i) for i in np.argwhere(big)[0])
        raise ValueError(f"t must lie within +-{T_LIMIT:g} (the gradient with respect to "
                         f"tau overflows beyond), got {t[idx]} at index {idx}")


def check_parameter(p, name, shape, dtype):
    """Raise ValueError unless the parameter ``p`` is an array of ``shape`` and ``dtype``
    holding finite values only (``name`` is how the message shows it)."""
    if not isinstance(p, np.ndarray) or p.shape != shape or p.dtype != dtype:
        got = f"{p.shape} {p.dtype}" if isinstance(p, np.ndarray) else type(p).__name__
        raise ValueError(f"{name} must be an array of shape {shape} and dtype "
                         f"{np.dtype(dtype)}, got {got}")
    check_finite(p, name)


def check_finite(a, name, where=None):
    """Raise ValueError naming the first non-finite entry of ``a`` (within ``where``)."""
    bad = ~np.isfinite(a)
    if where is not None:
        bad &= where
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{name} has a non-finite value {a[idx]} at index {idx}")


def check_sequence_inputs(x, t, lengths, *, input_size, dtype):
    """Validate a batch of sequences for a layer or network.

    Parameters
    ----------
    x : ndarray (B, T, input_size), of exactly ``dtype``
    t : ndarray (B, T), float64
    lengths : ndarray (B,) of ints in [0, T], or None for all T
    input_size : int
    dtype : dtype

    Returns
    -------
    x, t, lengths : contiguous arrays, lengths as int64. Only steps before ``lengths`` are
    required to be finite: padding may hold anything and is never read.
    """
    x = check_array(x, "x", ndim=3, dtype=dtype)
    B, T, D = x.shape
    if D != input_size:
        raise ValueError(f"x must have shape (B, T, {input_size}), got {x.shape}")
    t = check_timestamps(t, B, T)
    lengths = check_lengths(lengths, B, T)
    valid = valid_steps(lengths, T)
    check_times(t, valid)
    check_finite(x, "x", valid[:, :, None])
    return x, t, lengths


def check_timestamps(t, B, T):
    """Validate timestamps ``t`` (B, T) float64."""
    if isinstance(t, np.ndarray) and t.dtype != np.float64:
        raise TypeError(
            f"t must have dtype float64 (the phase needs float64 resolution), got {t.dtype}"
        )
    return check_array(t, "t", shape=(B, T), dtype=np.float64)


def check_lengths(lengths, B, T):
    """Validate ``lengths`` (B,) of ints in [0, T]; None means every sequence has T steps."""
    if lengths is None:
        return np.full(B, T, dtype=np.int64)
    lengths = check_array(lengths, "lengths", shape=(B,), kind="iu")
    if B and (lengths.min() < 0 or lengths.max() > T):
        bad = int(np.argmax((lengths < 0) | (lengths > T)))
        raise ValueError(f"lengths must lie in [0, {T}] (T = x.shape[1]), "
                         f"got lengths[{bad}] = {lengths[bad]}")
    return lengths.astype(np.int64)


def check_state(state, B, H, dtype, name="state"):
    """Validate an initial state ``(h0, c0)``, each (B, H) of ``dtype``; None gives zeros."""
    if state is None:
        return np.zeros((B, H), dtype), np.zeros((B, H), dtype)
    if not isinstance(state, (tuple, list)) or len(state) != 2:
        raise TypeError(f"{name} must be a tuple (h0, c0) or None, got {type(state).__name__}")
    h0 = check_array(state[0], f"{name}[0] (h0)", shape=(B, H), dtype=dtype)
    c0 = check_array(state[1], f"{name}[1] (c0)", shape=(B, H), dtype=dtype)
    check_finite(h0, f"{name}[0] (h0)")
    check_finite(c0, f"{name}[1] (c0)")
    return h0, c0


def check_backward(owner, dh, cache):
    """Validate a layer's ``backward(dh, cache)`` inputs: ``cache`` is the dict the forward of
    ``owner`` returned (its ``cache["layer"]`` names the owner, the output's shape and dtype)
    and ``dh`` an array of that shape and dtype holding finite values. Returns ``dh``."""
    if not isinstance(cache, dict) or "layer" not in cache:
        raise TypeError(f"cache must be the dict this layer's forward returned, got "
                        f"{type(cache).__name__}")
    if cache["layer"]["owner"] is not owner:
        raise ValueError("cache comes from another layer's forward: its gradients would "
                         "be another layer's")
    dh = check_array(dh, "dh", shape=cache["layer"]["shape"], dtype=cache["layer"]["dtype"])
    check_finite(dh, "dh")
    return dh


def check_layer_state(state, B, names, sizes, dtype, name="state"):
    """Validate a layer's initial state: a tuple with one (B, size) array of ``dtype`` per
    name of ``names`` (a layer's ``state_names``, e.g. ``("h", "c")``); None gives zeros."""
    labels = [f"{n}0" for n in names]
    if state is None:
        return tuple(np.zeros((B, size), dtype) for size in sizes)
    if not isinstance(state, (tuple, list)) or len(state) != len(names):
        expected = f"a tuple ({', '.join(labels)})" if names else "() (the layer has no state)"
        raise TypeError(f"{name} must be None or {expected}, got "
                        f"{type(state).__name__}"
                        + (f" of {len(state)}" if isinstance(state, (tuple, list)) else ""))
    out = []
    for k, (label, size) in enumerate(zip(labels, sizes)):
        a = check_array(state[k], f"{name}[{k}] ({label})", shape=(B, size), dtype=dtype)
        check_finite(a, f"{name}[{k}] ({label})")
        out.append(a)
    return tuple(out)


# ---------------------------------------------------------------- layer arguments
def per_neuron(value, H, name, dtype):
    """A scalar or (H,) array argument as a fresh (H,) array of ``dtype``."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return np.full(H, value, dtype)
    if isinstance(value, np.ndarray):
        if value.shape != (H,):
            raise ValueError(f"{name} must be a scalar or have shape ({H},), got {value.shape}")
        if value.dtype.kind != "f":
            raise TypeError(f"{name} must be a float array, got dtype {value.dtype}")
        return value.astype(dtype)
    raise TypeError(f"{name} must be a scalar or a numpy array of shape ({H},), "
                    f"got {type(value).__name__}")


def check_timing(tau, r_on, where=""):
    """Raise ValueError naming the first neuron whose tau is not finite and > 0, or whose
    r_on is not in (0, 1] (NaN included); subnormal values count as 0 (see :data:`TINY`)."""
    bad = ~(np.isfinite(tau) & (tau >= TINY))
    if bad.any():
        n = int(np.argmax(bad))
        raise ValueError(f"{where}tau must be finite and > 0, got tau[{n}] = {tau[n]}"
                         + _subnormal_note(tau[n]))
    bad = ~((r_on >= TINY) & (r_on <= 1))
    if bad.any():
        n = int(np.argmax(bad))
        raise ValueError(f"{where}r_on must lie in (0, 1], got r_on[{n}] = {r_on[n]}"
                         + _subnormal_note(r_on[n]))


def _subnormal_note(value):
    """What a refusal of a tiny positive ``value`` adds to its message."""
    return (f" (a subnormal float, below {TINY:.4g}: its reciprocal overflows)"
            if 0 < value < TINY else "")


def check_tau_exp_range(value):
    """``tau_exp_range`` as ``(lo, hi)``: finite, ``lo <= hi``, ``exp(hi)`` a finite float64."""
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise TypeError(f"tau_exp_range must be a pair of numbers (low, high), "
                        f"got {value!r}") from None
    if not (np.isfinite(lo) and np.isfinite(hi) and lo <= hi):
        raise ValueError(f"tau_exp_range must be finite (low, high) with low <= high, "
                         f"got {value!r}")
    if hi > 709.0:  # exp(709.78...) is the largest finite float64
        raise ValueError(f"tau_exp_range's high must be at most 709 (tau = exp(high) "
                         f"overflows float64 beyond), got {hi!r}")
    return lo, hi


def check_real(value, name, *, low=None, low_open=False):
    """``value`` as a finite float (>= ``low``, or > it with ``low_open``), else raise
    naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a finite number, got {type(value).__name__}")
    value = float(value)
    if not np.isfinite(value) or (low is not None and (value <= low if low_open
                                                       else value < low)):
        bound = "" if low is None else f" {'>' if low_open else '>='} {low:g}"
        raise ValueError(f"{name} must be a finite number{bound}, got {value!r}")
    return value
