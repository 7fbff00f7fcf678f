"""Batch normalisation for sequences: the input normalisation of the paper's BN-LSTM baseline.

Each of the ``D`` input features is normalised over the batch and time axes, using only the
valid steps ``V = {(b, j) : j < lengths[b]}`` (``N = |V|``); padding is left out of the
statistics and its output is 0. For a feature ``x`` (indices ``(b, j)`` dropped)::

    mu     = (1/N) sum_V x                      batch mean
    var    = (1/N) sum_V (x - mu)^2             batch variance, biased (divides by N)
    x^     = (x - mu) / sqrt(var + eps)
    y      = gamma * x^ + beta                  on V; y = 0 on the padding

Training (``training=True``) uses the batch statistics ``mu``, ``var`` and then updates the
running statistics in place, as exponential moving averages with rate ``momentum``::

    running_mean <- (1 - momentum) * running_mean + momentum * mu
    running_var  <- (1 - momentum) * running_var  + momentum * var     (the biased var)

Evaluation (``training=False``) uses them instead: ``mu = running_mean``, ``var =
running_var``, so that ``y`` is a fixed per-feature affine map of ``x``.

Backward (``g = dL/dy`` on ``V``, 0 on the padding; sums over ``V``)::

    dL/dgamma = sum g x^          dL/dbeta = sum g          dL/dx^ = gamma g
    training:   dL/dx = 1/(N sqrt(var + eps)) (N dL/dx^ - sum dL/dx^ - x^ sum(dL/dx^ x^))
                dL/drunning_mean = dL/drunning_var = 0     (y does not depend on them)
    evaluation: dL/dx = gamma g / sqrt(running_var + eps)
                dL/drunning_mean = -sum gamma g / sqrt(running_var + eps)
                dL/drunning_var  = -1/2 sum gamma g (x - running_mean) (running_var + eps)^(-3/2)

The training-mode ``dL/dx`` is the batch-norm backward with ``mu`` and ``var`` depending on
every valid ``x``. On padding ``dL/dx = 0``.

Relation to the authors' code (dannyneil/public_plstm, ``bnlstm.py`` and ``freq_task.py``):
their BN-LSTM puts a Lasagne ``BatchNormLayer(input_shape, axes=(0, 1))`` on the LSTM's input,
which is ``ConcatLayer([x, t])``: the timestamp feature is normalised too
(:class:`~plstm_np.TimeFeature` in front of this layer gives that, and ``--model bnlstm``
is built so). Lasagne's
defaults are kept (``alpha`` = ``momentum`` = 0.1, ``epsilon`` = ``eps`` = 1e-4, biased batch
variance). Three differences, on purpose: (1) Lasagne's statistics include the padded steps
(its ``BatchNormLayer`` never sees the mask); here they do not. (2) Lasagne keeps a running
average of ``1 / sqrt(var + eps)`` (its ``inv_std``); this layer keeps one of the biased
``var``, as the layer's specification asks (the two agree when ``var`` is constant across
batches). (3) The authors call ``self.bn.get_output_for(input)`` without forwarding
``deterministic``, so their BN-LSTM normalises with batch statistics at validation time too;
here ``training=False`` uses the running statistics.

Example::

    bn = BatchNorm(2)
    y, (), cache = bn.forward(x, t, lengths, training=True)   # updates the running stats
    grads = bn.backward(dy, cache)                             # gamma, beta, running_*, x
"""
from __future__ import annotations

import numbers

import numpy as np

from .backends import check_backend
from .validation import (
    check_backward,
    check_dtype,
    check_layer_state,
    check_parameter,
    check_positive_int,
    check_sequence_inputs,
    valid_steps,
)

__all__ = ["BatchNorm", "X_LIMIT"]

#: The largest |x| accepted on a valid step (float64 layers; float32 stays far below it):
#: beyond it ``(x - mu)**2`` summed over the batch could overflow float64.
X_LIMIT = 1e100


def _check_fraction(value, name):
    """``value`` as a float in (0, 1], else raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number in (0, 1], got {type(value).__name__}")
    value = float(value)
    if not (0.0 < value <= 1.0):  # NaN fails too
        raise ValueError(f"{name} must lie in (0, 1], got {value!r}")
    return value


def _check_eps(value):
    """``eps`` as a finite float > 0, else raise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"eps must be a finite number > 0, got {type(value).__name__}")
    value = float(value)
    if not (np.isfinite(value) and value > 0.0):
        raise ValueError(f"eps must be a finite number > 0, got {value!r}")
    return value


class BatchNorm:
    """Batch normalisation of each input feature over the batch and time axes (valid steps).

    A layer of the :class:`plstm_np.Network` protocol without state (``state_names = ()``):
    ``y = gamma (x - mu) / sqrt(var + eps) + beta`` with the batch statistics of the valid
    steps in training and the running statistics at evaluation (see the module docstring
    for the equations and the backward).

    Parameters
    ----------
    input_size : int
        D, the number of features; ``output_size = hidden_size = input_size``.
    hidden_size : int, optional
        Accepted so that :meth:`config` holds the protocol's ``hidden_size``; must equal
        ``input_size``.
    momentum : float in (0, 1]
        Rate of the running averages (Lasagne's ``alpha``, default 0.1):
        ``running = (1 - momentum) running + momentum batch``.
    eps : float > 0
        Added to the variance before the square root (Lasagne's ``epsilon``, default 1e-4).
    dtype : float32 or float64
        Of the parameters, inputs and outputs. The statistics are computed in float64
        whatever the dtype, the result is rounded to ``dtype``.
    backend : {'numpy', 'numba', 'cuda'}
        Accepted for every backend name so that a network can set one for all its layers;
        the layer is always computed in NumPy (it is cheap and elementwise).

    Attributes
    ----------
    params : dict of ndarray
        ``gamma`` (ones), ``beta`` (zeros), ``running_mean`` (zeros), ``running_var`` (ones),
        each (input_size,) of ``dtype``. All four are saved in checkpoints.
    frozen : set of str
        ``{"running_mean", "running_var"}``: the optimizer never updates them; only a
        training forward does (the moving averages above).
    bounds : dict
        Empty.

    Notes
    -----
    ``streamable`` is True: at evaluation the layer is a fixed per-feature affine map, so a
    :meth:`plstm_np.Network.stream` can run it packet by packet (it does so with
    ``training=False``). A training forward needs the whole batch to compute its
    statistics; it cannot be streamed, and it raises ValueError on a batch without any
    valid step.

    With ``gamma = 1``, ``beta = 0`` and a feature that takes a single value on all valid
    steps (identical rows, or one valid step), ``var = 0`` and a training forward outputs
    exactly 0 there (the mean is computed as ``x_ref + mean(x - x_ref)`` with ``x_ref`` the
    first valid value, so ``x - mu`` is exactly 0), with finite gradients.
    """

    #: A layer without carried state.
    state_names = ()
    state_sizes = ()
    #: :meth:`plstm_np.Network.stream` may run it packet by packet (at evaluation).
    streamable = True

    def __init__(self, input_size, *, hidden_size=None, momentum=0.1, eps=1e-4,
                 dtype=np.float64, backend="numpy"):
        self.input_size = check_positive_int(input_size, "input_size")
        if hidden_size is not None and (
                check_positive_int(hidden_size, "hidden_size") != self.input_size):
            raise ValueError(f"hidden_size must equal input_size ({self.input_size}) for a "
                             f"BatchNorm, got {hidden_size}")
        self.momentum = _check_fraction(momentum, "momentum")
        self.eps = _check_eps(eps)
        self.dtype = check_dtype(dtype)
        self.backend = backend
        D, dt = self.input_size, self.dtype
        self.params = {"gamma": np.ones(D, dt), "beta": np.zeros(D, dt),
                       "running_mean": np.zeros(D, dt), "running_var": np.ones(D, dt)}
        self.frozen = {"running_mean", "running_var"}
        self.bounds = {}

    @property
    def hidden_size(self):
        """``input_size``: the layer keeps the width of its input."""
        return self.input_size

    @property
    def output_size(self):
        """Width of the sequence the layer emits: ``input_size``."""
        return self.input_size

    @property
    def backend(self):
        """The backend name ('numpy', 'numba' or 'cuda'); checked when set, computed in
        NumPy whatever it is."""
        return self._backend

    @backend.setter
    def backend(self, value):
        self._backend = check_backend(value)

    def check_params(self, where=""):
        """Raise ValueError naming the first parameter that is missing, of another shape or
        dtype, not finite, or (``running_var``) negative. ``where`` prefixes the message."""
        names = ("gamma", "beta", "running_mean", "running_var")
        params = self.params
        if not isinstance(params, dict) or set(params) != set(names):
            got = sorted(params) if isinstance(params, dict) else type(params).__name__
            raise ValueError(f"{where}params must hold exactly {sorted(names)}, got {got}")
        for name in names:
            check_parameter(params[name], f"{where}params[{name!r}]", (self.input_size,),
                            self.dtype)
        bad = params["running_var"] < 0
        if bad.any():
            n = int(np.argmax(bad))
            raise ValueError(f"{where}params['running_var'] must be >= 0, got "
                             f"running_var[{n}] = {params['running_var'][n]}")

    # ------------------------------------------------------------------ running
    def forward(self, x, t, lengths=None, state=None, training=True):
        """Normalise a batch of sequences.

        Parameters
        ----------
        x : ndarray (B, T, input_size) of the layer's dtype
            Only the valid steps are read; padding may hold anything.
        t : ndarray (B, T) float64
            Timestamps (validated, otherwise unused).
        lengths : ndarray (B,) of ints, optional
            Valid steps per sample (default: all T).
        state : None or ()
            The layer has no state.
        training : bool
            Batch statistics, and update of the running statistics (True; needs at least
            one valid step), or the running statistics (False).

        Returns
        -------
        y : ndarray (B, T, input_size)
            0 on the padding.
        state : ()
        cache : dict
            For :meth:`backward`; ``cache["updates"]`` is 0 (no recurrent neuron updates).
        """
        x, t, lengths = check_sequence_inputs(x, t, lengths, input_size=self.input_size,
                                              dtype=self.dtype)
        check_layer_state(state, x.shape[0], (), (), self.dtype)
        return self.forward_validated(x, t, lengths, training=training)

    def forward_validated(self, x, t, lengths, training=True):
        """:meth:`forward` on inputs that were validated already (by a network).

        A network calls ``forward_validated(x, t, lengths, *states, training)``; the layer
        has no state, so ``training`` comes right after ``lengths``.

        Parameters
        ----------
        x, t, lengths
            As :func:`plstm_np.validation.check_sequence_inputs` returns them.
        training : bool

        Returns
        -------
        y, state, cache
            As :meth:`forward`.
        """
        self.check_params()
        B, T, D = x.shape
        valid = valid_steps(lengths, T)
        n_valid = int(valid.sum())
        # float32 cannot exceed the limit; comparing it would overflow the limit's cast
        big = ((np.abs(x) > X_LIMIT) & valid[:, :, None] if x.dtype == np.float64
               else np.zeros((0,), bool))
        if big.any():
            idx = tuple(int(i) for i in np.argwhere(big)[0])
            raise ValueError(f"x must lie within +-{X_LIMIT:g} on valid steps (the variance "
                             f"overflows float64 beyond), got {x[idx]} at index {idx}")
        xv = x[valid].astype(np.float64)  # (N, D): the valid steps only
        p = {k: v.astype(np.float64) for k, v in self.params.items()}
        if training:
            if n_valid == 0:
                raise ValueError("BatchNorm in training mode needs at least one valid step "
                                 "(j < lengths[b]) to compute batch statistics; the batch "
                                 "has none (use training=False, or a non-empty batch)")
            x_ref = xv[0]  # shifted mean: exact for constant features, better conditioned
            mu = x_ref + (xv - x_ref).mean(axis=0)
            centred = xv - mu
            var = (centred ** 2).mean(axis=0)  # biased, as Lasagne's
        else:
            mu, var = p["running_mean"], p["running_var"]
            centred = xv - mu
        inv_std = 1.0 / np.sqrt(var + self.eps)
        x_hat = centred * inv_std
        y = np.zeros((B, T, D), self.dtype)
        y[valid] = p["gamma"] * x_hat + p["beta"]
        if training:
            m = self.momentum
            rm, rv = self.params["running_mean"], self.params["running_var"]
            rm[...] = (1.0 - m) * p["running_mean"] + m * mu
            rv[...] = (1.0 - m) * p["running_var"] + m * var
        cache = dict(valid=valid, n_valid=n_valid, x_hat=x_hat, centred=centred,
                     inv_std=inv_std, gamma=p["gamma"], training=bool(training), updates=0,
                     layer=dict(owner=self, shape=y.shape, dtype=y.dtype))
        return y, (), cache

    def backward(self, dh, cache, dstate=None):
        """Gradients of a loss given its gradient ``dh`` with respect to the outputs.

        Parameters
        ----------
        dh : ndarray (B, T, input_size)
            Entries on padding steps are ignored (the output there is the constant 0).
        cache : dict
            From :meth:`forward`.
        dstate : None or ()
            The layer has no state.

        Returns
        -------
        dict of ndarray
            ``gamma``, ``beta``, ``running_mean``, ``running_var`` (input_size,) and ``x``
            (B, T, input_size), of the layer's dtype. The running statistics' gradients
            are 0 in training mode and their true derivatives at evaluation.
        """
        dh = check_backward(self, dh, cache)
        shape, dtype = cache["layer"]["shape"], cache["layer"]["dtype"]
        check_layer_state(dstate, dh.shape[0], (), (), self.dtype, name="dstate")
        valid, N = cache["valid"], cache["n_valid"]
        x_hat, inv_std, gamma = cache["x_hat"], cache["inv_std"], cache["gamma"]
        g = dh[valid].astype(np.float64)  # (N, D)
        dgamma = (g * x_hat).sum(axis=0)
        dbeta = g.sum(axis=0)
        dx_hat = g * gamma
        if cache["training"]:
            dxv = inv_std / N * (N * dx_hat - dx_hat.sum(axis=0)
                                 - x_hat * (dx_hat * x_hat).sum(axis=0))
            drm = drv = np.zeros_like(dgamma)
        else:
            dxv = dx_hat * inv_std
            drm = -dxv.sum(axis=0)
            drv = -0.5 * (dx_hat * cache["centred"]).sum(axis=0) * inv_std ** 3
        dx = np.zeros(shape, dtype)
        dx[valid] = dxv
        return {"gamma": dgamma.astype(dtype), "beta": dbeta.astype(dtype),
                "running_mean": drm.astype(dtype), "running_var": drv.astype(dtype), "x": dx}

    # ------------------------------------------------------------------ saving
    def config(self):
        """Constructor arguments as a JSON-serialisable dict (parameters are saved apart):
        ``BatchNorm(**{k: v for k, v in cfg.items() if k != "kind"})`` rebuilds the layer."""
        return dict(kind=type(self).__name__, input_size=self.input_size,
                    hidden_size=self.hidden_size, momentum=self.momentum, eps=self.eps,
                    dtype=self.dtype.name, backend=self.backend)

    def __repr__(self):
        return (f"BatchNorm({self.input_size}, momentum={self.momentum:g}, eps={self.eps:g}, "
                f"dtype={self.dtype.name}, backend={self.backend!r})")
