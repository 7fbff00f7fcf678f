"""Gradient checking as a public feature: analytic gradients against central differences.

The relative error of one array is ``||a - n|| / (||a|| + ||n||)`` (0 when both are zero),
where ``a`` is the analytic and ``n`` the numerical gradient. It is scale-free, safe when
both are zero, and not dominated by entries whose true value is below the finite-difference
noise. Run in float64: in float32 a central difference carries errors of ~1e-3.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .validation import as_rng, check_sequence_inputs

__all__ = ["GradCheckReport", "relative_error", "numerical_gradient", "check_gradients"]


def relative_error(analytic, numeric):
    """Both-zero-safe relative error ``||a - n|| / (||a|| + ||n||)`` of two arrays."""
    a = np.asarray(analytic, np.float64)
    n = np.asarray(numeric, np.float64)
    denom = np.linalg.norm(a) + np.linalg.norm(n)
    return 0.0 if denom == 0.0 else float(np.linalg.norm(a - n) / denom)


def numerical_gradient(f, array, eps=1e-4):
    """Fourth-order central-difference gradient of the scalar ``f()`` with respect to ``array``.

    ``(-f(p + 2e) + 8 f(p + e) - 8 f(p - e) + f(p - 2e)) / (12 e)``: its truncation error is
    O(e**4), so a step well above round-off still gives ~10 correct digits. ``array`` is
    perturbed in place, one entry at a time, and restored exactly.

    Parameters
    ----------
    f : callable
        ``f()`` returns a float; it must read ``array``.
    array : ndarray
        A float64 array ``f`` depends on.
    eps : float
        Step size.

    Returns
    -------
    ndarray of float64, same shape as ``array``
    """
    grad = np.zeros(array.shape, np.float64)
    flat = array.reshape(-1)
    if not np.shares_memory(flat, array):
        raise ValueError("array must be contiguous so that it can be perturbed in place")
    for idx in range(flat.size):
        old = flat[idx]
        values = []
        for step in (2.0 * eps, eps, -eps, -2.0 * eps):
            flat[idx] = old + step
            values.append(f())
        flat[idx] = old
        grad.reshape(-1)[idx] = ((-values[0] + 8.0 * values[1] - 8.0 * values[2] + values[3])
                                 / (12.0 * eps))
    return grad


@dataclass
class GradCheckReport:
    """Outcome of :func:`check_gradients`.

    Attributes
    ----------
    errors : dict
        Relative error per checked array (parameters, and inputs such as ``x``, ``h0``).
    min_kink_distance : float
        Smallest phase distance of any (sample, step, neuron) from a kink of the time gate;
        finite differences are only meaningful when it is well above the step's effect.
    """

    errors: dict = field(default_factory=dict)
    min_kink_distance: float = np.inf

    @property
    def worst(self):
        """The largest relative error."""
        return max(self.errors.values(), default=0.0)

    @property
    def worst_name(self):
        """Which array has the largest relative error."""
        return max(self.errors, key=self.errors.get) if self.errors else None

    def __str__(self):
        lines = [f"gradient check: worst relative error {self.worst:.3e} ({self.worst_name})"]
        lines += [f"  {name:<20s} {err:.3e}" for name, err in self.errors.items()]
        return "\n".join(lines)


def check_gradients(model, batch, *, names=None, eps=1e-4, training=True, rng=0):
    """Compare a model's analytic gradients with central differences.

    Parameters
    ----------
    model : a sequence layer (PhasedLSTM, LSTM, PhasedGRU, GRU, BatchNorm, TimeFeature,
        Bidirectional)
        or a Network
        Must be float64. A layer is checked on ``loss = sum(h * w) + sum_k sum(s_k * u_k)``
        over its final states ``s_k`` (``h_T``, ``c_T`` for a Phased LSTM), with fixed random
        ``w`` and ``u_k``; a network on its own loss.
    batch : Dataset or tuple
        For a layer, ``(x, t)`` or ``(x, t, lengths)``; for a network, a
        :class:`plstm_np.Dataset` (or a slice of one).
    names : iterable of str, optional
        Which arrays to check: parameter names plus inputs (``"x"``, and the initial states,
        ``"h0"``, ``"c0"`` for a Phased LSTM layer or ``"layer{i}.h0"``, ``"layer{i}.c0"``
        for a network's; one ``"<name>0"`` per name of a layer's ``state_names``). Default:
        all.
    eps : float
        Finite-difference step (see :func:`numerical_gradient`). The phase of a neuron moves
        by up to ``2 eps (t - s) / tau**2`` when ``tau`` is perturbed: keep the report's
        ``min_kink_distance`` well above that.
    training : bool
        Check the training path (leak alpha) or the evaluation path (alpha = 0).
    rng : Generator or int
        Seeds the random projection of a layer's outputs and the random initial state.

    Returns
    -------
    GradCheckReport
    """
    if np.dtype(getattr(model, "dtype", np.float64)) != np.float64:
        raise TypeError("check_gradients needs a float64 model: float32 differences are too coarse")
    rng = as_rng(rng)
    if hasattr(model, "layers"):
        loss_and_grads, arrays, kink = _network_problem(model, batch, training, rng)
    else:
        loss_and_grads, arrays, kink = _layer_problem(model, batch, training, rng)
    _, grads = loss_and_grads()
    report = GradCheckReport(min_kink_distance=kink)
    for name in (arrays if names is None else names):
        if name not in arrays:
            raise ValueError(f"names: unknown array {name!r}; choose from {sorted(arrays)}")
        numeric = numerical_gradient(lambda: loss_and_grads(need_grads=False)[0], arrays[name], eps)
        report.errors[name] = relative_error(grads[name], numeric)
    return report


def _layer_problem(layer, batch, training, rng):
    x, t, *rest = batch
    lengths = rest[0] if rest else None
    x, t, lengths = check_sequence_inputs(x, t, lengths, input_size=layer.input_size,
                                          dtype=layer.dtype)
    x = x.copy()
    B, T = t.shape
    state = tuple(rng.normal(0, 0.5, (B, size)) for size in layer.state_sizes)
    w = rng.normal(size=(B, T, layer.output_size))
    u = tuple(rng.normal(size=(B, size)) for size in layer.state_sizes)

    def loss_and_grads(need_grads=True):
        h, final, cache = layer.forward(x, t, lengths, state, training=training)
        loss = float((h * w).sum() + sum((s * uk).sum() for s, uk in zip(final, u)))
        return loss, (layer.backward(w, cache, u if u else None) if need_grads else None)

    arrays = dict(layer.params, x=x)
    arrays.update({f"{name}0": s for name, s in zip(layer.state_names, state)})
    kink = (layer.min_kink_distance(t, lengths) if hasattr(layer, "min_kink_distance")
            else np.inf)
    return loss_and_grads, arrays, kink


def _network_problem(net, batch, training, rng):
    states = net.initial_state(len(batch), rng=rng, scale=0.5)
    x = None if batch.x is None else batch.x.copy()
    batch = batch.replace(x=x)

    def loss_and_grads(need_grads=True):
        loss, grads = net.loss_and_grads(batch, state=states, training=training,
                                         need_grads=need_grads)
        return loss, grads

    arrays = dict(net.params)
    if x is not None:
        arrays["x"] = x
    for i, (layer, state) in enumerate(zip(net.layers, states)):
        arrays.update({f"layer{i}.{name}0": s for name, s in zip(layer.state_names, state)})
    return loss_and_grads, arrays, net.min_kink_distance(batch)
