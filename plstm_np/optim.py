"""Adam (Kingma & Ba 2015) over a parameter dict, gradient-norm clipping, and the timing
constraints.

The constraints are enforced by projection: after every update, ``tau`` is clipped to
``[tau_min, inf)`` and ``r_on`` to ``[r_on_min, 1]``, so ``tau > 0`` and ``0 < r_on <= 1``
hold whatever the gradients do (public implementations drift ``tau`` negative and train to
NaN). The period and open ratio stay in their natural units, which keeps the gradient
check and the teaching notebooks on the paper's equations.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

__all__ = ["Adam", "clip_grad_norm", "default_bounds", "TAU_MIN", "R_ON_MIN"]

TAU_MIN = 1e-3
R_ON_MIN = 1e-3


def default_bounds(params):
    """Bounds implied by the parameter names of the contract: ``tau`` and ``r_on``."""
    bounds = {}
    for name in params:
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "tau":
            bounds[name] = (TAU_MIN, np.inf)
        elif leaf == "r_on":
            bounds[name] = (R_ON_MIN, 1.0)
    return bounds


def check_adam_hyperparameters(lr, beta1, beta2, eps):
    """Raise naming the first of ``lr, eps`` finite and > 0, ``0 <= beta1, beta2 < 1``
    broken (TypeError for a non-number)."""
    for name, value in (("lr", lr), ("eps", eps), ("beta1", beta1), ("beta2", beta2)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    for name, value in (("lr", lr), ("eps", eps)):
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a finite number > 0, got {value}")
    for name, value in (("beta1", beta1), ("beta2", beta2)):
        if not 0 <= value < 1:
            raise ValueError(f"{name} must lie in [0, 1), got {value}")


class Adam:
    """Adam with bias correction, updating the parameter arrays in place.

    Parameters
    ----------
    params : dict of ndarray, or a model with ``params``, ``frozen`` and ``bounds``
        A :class:`plstm_np.Network` or a layer gives its frozen names and bounds; a plain dict
        gets :func:`default_bounds` and nothing frozen.
    lr : float
        Step size (default 1e-3).
    beta1, beta2, eps : float
        The paper's defaults 0.9, 0.999, 1e-8.
    frozen : iterable of str, optional
        Parameters not to update (overrides the model's).
    bounds : dict, optional
        ``name -> (low, high)`` to clip to after each update (overrides the model's).

    Notes
    -----
    ``m = b1 m + (1 - b1) g``, ``v = b2 v + (1 - b2) g**2``,
    ``p -= lr * (m / (1 - b1**t)) / (sqrt(v / (1 - b2**t)) + eps)``, then clip to bounds.
    """

    def __init__(self, params, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, *, frozen=None,
                 bounds=None):
        if hasattr(params, "params"):
            model = params
            params = model.params
            frozen = model.frozen if frozen is None else frozen
            bounds = model.bounds if bounds is None else bounds
        if not isinstance(params, dict):
            raise TypeError(f"params must be a dict of arrays or a model, "
                            f"got {type(params).__name__}")
        check_adam_hyperparameters(lr, beta1, beta2, eps)
        self.params = params
        self.lr, self.beta1, self.beta2, self.eps = (float(lr), float(beta1), float(beta2),
                                                     float(eps))
        self.frozen = set(frozen or ())
        unknown = self.frozen - set(params)
        if unknown:
            raise ValueError(f"frozen names unknown parameters: {sorted(unknown)}")
        self.bounds = default_bounds(params) if bounds is None else dict(bounds)
        self.step_count = 0
        self.m = {name: np.zeros_like(p) for name, p in params.items()}
        self.v = {name: np.zeros_like(p) for name, p in params.items()}

    def check_bound_to(self, params, what="net"):
        """Raise ValueError unless this optimizer updates exactly the arrays of ``params``
        (a dict; the same objects, not copies): an optimizer built for another network of
        the same shapes would silently train that other network."""
        if set(self.params) != set(params) or any(self.params[k] is not params[k]
                                                  for k in params):
            raise ValueError(f"optimizer was built for other parameters than {what}'s "
                             f"(another network, or a copy): build it with Adam({what})")

    @property
    def trainable(self):
        """Names of the parameters this optimizer updates."""
        return [name for name in self.params if name not in self.frozen]

    def step(self, grads):
        """Apply one update from ``grads`` (a dict with every trainable parameter's gradient).

        Keys of ``grads`` that are not parameters (``x``, initial states) are ignored.
        Nothing is updated if a gradient is missing, of another shape or not finite (a NaN
        is never passed on into the parameters: ValueError naming it).
        """
        missing = [name for name in self.trainable if name not in grads]
        if missing:
            raise KeyError(f"grads lacks the gradient of {missing}")
        for name in self.trainable:
            g = grads[name]
            if not isinstance(g, np.ndarray) or g.shape != self.params[name].shape:
                got = g.shape if isinstance(g, np.ndarray) else type(g).__name__
                raise ValueError(f"grads[{name!r}] has shape {got}, parameter has "
                                 f"{self.params[name].shape}")
            if not np.all(np.isfinite(g)):
                raise ValueError(f"grads[{name!r}] holds a non-finite value: refusing to "
                                 f"update the parameters with it")
        self.step_count += 1
        t = self.step_count
        c1, c2 = 1.0 - self.beta1 ** t, 1.0 - self.beta2 ** t
        for name in self.trainable:
            p, g = self.params[name], grads[name]
            m, v = self.m[name], self.v[name]
            m *= self.beta1
            m += (1.0 - self.beta1) * g
            v *= self.beta2
            v += (1.0 - self.beta2) * g * g
            p -= (self.lr * (m / c1) / (np.sqrt(v / c2) + self.eps)).astype(p.dtype)
            if name in self.bounds:
                low, high = self.bounds[name]
                np.clip(p, low, high, out=p)

    def state_dict(self):
        """Hyper-parameters, step count and moments (for checkpoints)."""
        return dict(lr=self.lr, beta1=self.beta1, beta2=self.beta2, eps=self.eps,
                    step_count=self.step_count, m=self.m, v=self.v)

    def load_state_dict(self, state):
        """Restore what :meth:`state_dict` returned; moments must match the parameters."""
        for key in ("m", "v"):
            for name, p in self.params.items():
                arr = state[key].get(name)
                if arr is None or arr.shape != p.shape or arr.dtype != p.dtype:
                    raise ValueError(f"optimizer state {key}[{name!r}] is missing or does not "
                                     f"match the parameter's shape {p.shape} and dtype {p.dtype}")
        self.lr, self.beta1, self.beta2, self.eps = (float(state[k]) for k in
                                                     ("lr", "beta1", "beta2", "eps"))
        self.step_count = int(state["step_count"])
        self.m = {name: np.array(state["m"][name]) for name in self.params}
        self.v = {name: np.array(state["v"][name]) for name in self.params}


def clip_grad_norm(grads, max_norm, names=None):
    """Scale gradients so that their global L2 norm is at most ``max_norm``.

    Parameters
    ----------
    grads : dict of ndarray
    max_norm : float
    names : iterable of str, optional
        Which entries count and get scaled (default: all).

    Returns
    -------
    clipped : dict
        A new dict (the input is not modified); entries outside ``names`` are passed through.
    norm : float
        The global norm before clipping.
    """
    if isinstance(max_norm, bool) or not isinstance(max_norm, numbers.Real) or not (
            math.isfinite(max_norm) and max_norm > 0):
        raise ValueError(f"max_norm must be a finite number > 0, got {max_norm!r}")
    names = list(grads if names is None else names)
    for n in names:
        if not np.all(np.isfinite(grads[n])):
            raise ValueError(f"grads[{n!r}] holds a non-finite value: its norm cannot be "
                             f"clipped")
    norm = float(np.sqrt(sum(float(np.sum(np.square(grads[n], dtype=np.float64))) for n in names)))
    scale = max_norm / norm if norm > max_norm else 1.0
    clipped = dict(grads)
    if scale < 1.0:
        for n in names:
            clipped[n] = grads[n] * np.asarray(scale, grads[n].dtype)
    return clipped, norm
