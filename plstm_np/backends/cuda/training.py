"""Device-resident training and batched streaming inference on the ``cuda`` backend.

:class:`CudaTrainer` keeps a :class:`plstm_np.Network`'s parameters, the Adam moments and
every activation on the GPU across steps: per step only the batch goes up and the loss
(B numbers) comes back. :class:`CudaStreamer` runs many independent event streams at
evaluation (alpha = 0, closed neurons skipped), chunk by chunk, carrying each stream's
state on the device between chunks.

Both use the kernels of :mod:`plstm_np.backends.cuda` (one block per sample or stream). This
module sits above the model in the layering (it trains a :class:`plstm_np.Network`), beside
:mod:`plstm_np.training`.
"""
from __future__ import annotations

import functools
import math

import numpy as np

from ... import config
from ...layers import PhasedLSTM
from ...network import Network
from ...optim import check_adam_hyperparameters
from ...validation import check_positive_int, check_sequence_inputs
from .. import get_backend
from .device import grid
from .kernels import cuda

__all__ = ["CudaTrainer", "CudaStreamer"]


def _backend():
    return get_backend("cuda")  # raises BackendUnavailableError with the reason


@functools.cache
def _kernels():
    @cuda.jit
    def append_time_kernel(inp, t, scale, lengths, out):
        """out[..., :D] = inp, out[..., D] = t * scale (the LSTM baseline's time feature)."""
        r, d = cuda.grid(2)
        B, T, D = inp.shape
        if r < B * T and d <= D:
            b = r // T
            j = r - b * T
            if j >= lengths[b]:
                out[b, j, d] = 0.0  # padding: never read by the kernels
            elif d < D:
                out[b, j, d] = inp[b, j, d]
            else:
                out[b, j, d] = t[b, j] * scale

    @cuda.jit
    def last_state_kernel(h_seq, c_seq, h, c):
        """(h, c) <- the state after the last step (the carried state of padded streams)."""
        b, n = cuda.grid(2)
        T = h_seq.shape[1]
        if b < h.shape[0] and n < h.shape[1] and T > 0:
            h[b, n] = h_seq[b, T - 1, n]
            c[b, n] = c_seq[b, T - 1, n]

    @cuda.jit
    def readout_kernel(top, W, bias, out):
        """out[b, c] = top[b] @ W[:, c] + bias[c]."""
        b, c = cuda.grid(2)
        if b < out.shape[0] and c < out.shape[1]:
            acc = bias[c]
            for q in range(W.shape[0]):
                acc += top[b, q] * W[q, c]
            out[b, c] = acc

    @cuda.jit
    def cross_entropy_kernel(h_seq, lengths, W, bias, y, loss, dlogits, dh_seq):
        """Read-out at the last valid step, mean softmax cross-entropy, and its gradients.

        One thread per sample: loss[b] (already divided by B), dlogits[b] and
        dh_seq[b, L-1] = dlogits[b] @ W^T (dh_seq zero elsewhere, set by the caller).
        """
        b = cuda.grid(1)
        B = h_seq.shape[0]
        C = W.shape[1]
        H = W.shape[0]
        if b >= B:
            return
        top = h_seq[b, lengths[b] - 1]
        zmax = -math.inf
        for c in range(C):
            acc = bias[c]
            for q in range(H):
                acc += top[q] * W[q, c]
            dlogits[b, c] = acc
            zmax = max(zmax, acc)
        total = 0.0
        for c in range(C):
            e = math.exp(dlogits[b, c] - zmax)
            dlogits[b, c] = e
            total += e
        label = y[b]
        loss[b] = -math.log(max(dlogits[b, label] / total, 1e-300)) / B
        for c in range(C):
            p = dlogits[b, c] / total
            dlogits[b, c] = ((p - 1.0) if c == label else p) / B
        L1 = lengths[b] - 1
        for q in range(H):
            acc = 0.0
            for c in range(C):
                acc += dlogits[b, c] * W[q, c]
            dh_seq[b, L1, q] = acc

    @cuda.jit
    def dense_grad_kernel(h_seq, lengths, dlogits, dW, db):
        """dW = top^T dlogits, db = sum_b dlogits (top = state at the last valid step)."""
        q, c = cuda.grid(2)
        H = dW.shape[0]
        C = dW.shape[1]
        if q <= H and c < C:
            acc = 0.0
            for b in range(dlogits.shape[0]):
                a = 1.0 if q == H else h_seq[b, lengths[b] - 1, q]
                acc += a * dlogits[b, c]
            if q == H:
                db[c] = acc
            else:
                dW[q, c] = acc

    @cuda.jit
    def adam_kernel(p, g, m, v, lr, beta1, beta2, c1, c2, eps, low, high):
        """Adam with bias correction, then clipping to [low, high] (see plstm_np.optim)."""
        i = cuda.grid(1)
        if i < p.shape[0]:
            gi = g[i]
            mi = beta1 * m[i] + (1.0 - beta1) * gi
            vi = beta2 * v[i] + (1.0 - beta2) * gi * gi
            m[i] = mi
            v[i] = vi
            pi = p[i] - lr * (mi / c1) / (math.sqrt(vi / c2) + eps)
            p[i] = min(max(pi, low), high)

    return dict(append_time=append_time_kernel, last_state=last_state_kernel,
                readout=readout_kernel, cross_entropy=cross_entropy_kernel,
                dense_grad=dense_grad_kernel, adam=adam_kernel)


def _check_network(net, what):
    if not isinstance(net, Network):
        raise TypeError(f"net must be a plstm_np.Network, got {type(net).__name__}")
    for i, layer in enumerate(net.layers):
        if not isinstance(layer, PhasedLSTM):
            raise ValueError(f"{what} runs Phased LSTM and LSTM layers only, got layer{i} "
                             f"{type(layer).__name__}; train it with plstm_np.train")
    if net.embedding is not None:
        raise ValueError(f"{what} does not support networks with an embedding (tokens) yet")
    if net.n_features == 0:
        raise ValueError(f"{what} needs a network that takes input features")
    if net.readout.activation is not None:
        raise ValueError(f"{what} supports a linear read-out only, got activation="
                         f"{net.readout.activation!r}; train on backend 'cuda' through "
                         f"plstm_np.train, or use readout 'linear'")


class _DeviceStack:
    """The layers and read-out of a network as device arrays."""

    def __init__(self, net):
        net.check_params()  # what goes to the device is valid: the kernels never check it
        cb = _backend()
        self.net = net
        self.layers = [cb.DeviceLayer(layer.params, layer.gate_open) for layer in net.layers]
        self.readout = {name: cb.to_device(value) for name, value in net.readout.params.items()}
        self.dtype = net.dtype

    def features(self, i, inp, t, lengths):
        """Layer i's input on the device (the LSTM baseline appends the timestamp)."""
        layer = self.net.layers[i]
        if not getattr(layer, "time_input", False):
            return inp
        B, T, D = inp.shape
        out = cuda.device_array((B, T, D + 1), self.dtype)
        tpb = config.CUDA_LAUNCH["append_time"]
        _kernels()["append_time"][(grid(B * T, tpb[0]), grid(D + 1, tpb[1])), tpb](
            inp, t, float(layer.time_scale), lengths, out)
        return out

    def to_host(self):
        """Copy every parameter back into the network's own arrays (in place)."""
        for layer, dev in zip(self.net.layers, self.layers):
            for name, value in dev.params.items():
                layer.params[name][...] = value.copy_to_host()
        for name, value in self.readout.items():
            self.net.readout.params[name][...] = value.copy_to_host()


class CudaTrainer:
    """Train a network on the GPU with Adam, everything resident on the device.

    Parameters, Adam moments, activations and gradients stay on the GPU between steps; a
    step uploads the batch and downloads the per-sample losses. The update rule, the
    frozen parameters and the bounds (``tau >= tau_min``, ``r_on_min <= r_on <= 1``) are
    those of :class:`plstm_np.optim.Adam`.

    Parameters
    ----------
    net : Network
        Phased LSTM / LSTM layers, ``readout_at='last'``, ``loss='cross_entropy'``, no
        embedding. Its arrays are read once here and written back by :meth:`sync_to_host`.
    lr, beta1, beta2, eps : float
        Adam's hyper-parameters.

    Examples
    --------
    >>> trainer = CudaTrainer(net, lr=1e-3)
    >>> for batch in train.batches(256, rng=0):
    ...     loss = trainer.step(batch)
    >>> trainer.sync_to_host()          # net.params now hold the trained values
    """

    def __init__(self, net, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8):
        _check_network(net, "CudaTrainer")
        if net.readout_at != "last" or net.loss_name != "cross_entropy":
            raise ValueError("CudaTrainer supports readout_at='last' with loss='cross_entropy', "
                             f"got readout_at={net.readout_at!r}, loss={net.loss_name!r}")
        check_adam_hyperparameters(lr, beta1, beta2, eps)
        cb = _backend()
        self.net = net
        self.lr, self.beta1, self.beta2, self.eps = (float(lr), float(beta1), float(beta2),
                                                     float(eps))
        self.stack = _DeviceStack(net)
        self.step_count = 0
        self.moments = {}
        for name, array in self._device_params().items():
            self.moments[name] = (cb.zeros(array.shape, array.dtype),
                                  cb.zeros(array.shape, array.dtype))
        self.frozen, self.bounds = net.frozen, net.bounds
        self.updates = [0] * len(net.layers)

    def _device_params(self):
        params = {f"layer{i}.{name}": value for i, dev in enumerate(self.stack.layers)
                  for name, value in dev.params.items()}
        params.update({f"readout.{name}": value for name, value in self.stack.readout.items()})
        return params

    def _upload(self, batch):
        cb = _backend()
        net = self.net
        x, t, lengths, _ = net.check_inputs(batch.x, batch.t, batch.lengths, batch.tokens)
        y, _ = net.check_targets(batch.y, lengths, t.shape[1])
        return (cb.to_device(x), cb.to_device(t), cb.to_device(lengths.astype(np.int64)),
                cb.to_device(y.astype(np.int64)))

    def loss_and_grads(self, batch):
        """Forward and backward on the device; the gradients stay there.

        Returns
        -------
        loss : float
        grads : dict of device arrays
            Keys as in ``net.params``.
        """
        cb = _backend()
        x, t, lengths, y = self._upload(batch)
        B, T = t.shape
        net, stack = self.net, self.stack
        fwds, inp = [], x
        for i, (layer, dev) in enumerate(zip(net.layers, stack.layers)):
            H = layer.hidden_size
            h0, c0 = cb.zeros((B, H), net.dtype), cb.zeros((B, H), net.dtype)
            fwd = cb.forward_device(dev, stack.features(i, inp, t, lengths), t, lengths, h0, c0,
                                    layer.leak)
            fwds.append(fwd)
            inp = fwd["h_seq"]
        # read-out at the last valid step and softmax cross-entropy
        k = _kernels()
        W, bias = stack.readout["W"], stack.readout["b"]
        Hl, C = W.shape
        loss = cuda.device_array(B, np.float64)
        dlogits = cuda.device_array((B, C), net.dtype)
        dh = cb.zeros((B, T, Hl), net.dtype)
        tpb = config.CUDA_LAUNCH["cross_entropy"]
        k["cross_entropy"][grid(B, tpb), tpb](inp, lengths, W, bias, y, loss, dlogits, dh)
        grads = {"readout.W": cuda.device_array((Hl, C), net.dtype),
                 "readout.b": cuda.device_array(C, net.dtype)}
        tpb = config.CUDA_LAUNCH["dense_grad"]
        k["dense_grad"][(grid(Hl + 1, tpb[0]), grid(C, tpb[1])), tpb](
            inp, lengths, dlogits, grads["readout.W"], grads["readout.b"])
        for i in reversed(range(len(net.layers))):
            layer = net.layers[i]
            dx_size = layer.input_size if i > 0 else 0
            layer_grads = cb.backward_device(fwds[i], dh, dx_size=dx_size,
                                             grad_clip=layer.grad_clip)
            dh = layer_grads.pop("x", None)
            for name in layer.params:
                grads[f"layer{i}.{name}"] = layer_grads[name]
        self.updates = [int(f["updates"].copy_to_host().sum()) for f in fwds]
        return float(loss.copy_to_host().sum()), grads

    def step(self, batch):
        """One Adam step on a :class:`plstm_np.Dataset` batch; returns the batch's loss.

        The loss is that of the parameters before the update (as with
        ``net.loss_and_grads`` followed by ``Adam.step``).
        """
        loss, grads = self.loss_and_grads(batch)
        self.step_count += 1
        c1 = 1.0 - self.beta1 ** self.step_count
        c2 = 1.0 - self.beta2 ** self.step_count
        adam = _kernels()["adam"]
        tpb = config.CUDA_LAUNCH["adam"]
        for name, p in self._device_params().items():
            if name in self.frozen:
                continue
            low, high = self.bounds.get(name, (-np.inf, np.inf))
            m, v = self.moments[name]
            n = p.size
            flat = [a.reshape(n) for a in (p, grads[name], m, v)]
            adam[grid(n, tpb), tpb](*flat, self.lr, self.beta1, self.beta2, c1, c2, self.eps,
                                     float(low), float(high))
        for dev in self.stack.layers:
            dev.refresh()
        return loss

    def sync_to_host(self):
        """Copy the trained parameters into ``net``'s arrays (in place) and return ``net``."""
        self.stack.to_host()
        return self.net


class CudaStreamer:
    """Batched streaming inference: many independent event streams on the GPU.

    Each stream is one block of ``config.CUDA_STREAM_THREADS_PER_BLOCK`` threads (default
    32, one warp). Events arrive in chunks ``(B, T)``; each stream's state ``(h, c)`` of
    every layer stays on the device between chunks, so running a stream in chunks gives
    the same outputs as running it whole. Evaluation mode: alpha = 0, closed neurons skipped.

    Parameters
    ----------
    net : Network
        Phased LSTM / LSTM layers, a read-out, no embedding. Its parameters are copied to
        the device once (create a new streamer after changing them).
    n_streams : int
        Number of streams B.
    threads_per_block : int, optional
        Threads per stream (default ``config.CUDA_STREAM_THREADS_PER_BLOCK``).

    Attributes
    ----------
    updates : list of int
        Neuron updates computed so far, per layer.
    events : int
        Valid events processed so far (summed over streams).
    """

    def __init__(self, net, n_streams, *, threads_per_block=None):
        _check_network(net, "CudaStreamer")
        cb = _backend()
        self.net = net
        self.n_streams = check_positive_int(n_streams, "n_streams")
        self.threads_per_block = threads_per_block
        self.stack = _DeviceStack(net)
        self.state = [(cb.zeros((n_streams, layer.hidden_size), net.dtype),
                       cb.zeros((n_streams, layer.hidden_size), net.dtype))
                      for layer in net.layers]
        self.updates = [0] * len(net.layers)
        self.events = 0

    def reset(self):
        """Zero every stream's state and the counters."""
        self.__init__(self.net, self.n_streams, threads_per_block=self.threads_per_block)

    @property
    def updates_per_neuron(self):
        """Mean updates computed per neuron and per stream, for each layer."""
        return [u / layer.hidden_size / self.n_streams
                for u, layer in zip(self.updates, self.net.layers)]

    def push(self, x, t, lengths=None):
        """Feed the next chunk of events of every stream.

        Parameters
        ----------
        x : ndarray (n_streams, T, n_features) of the network's dtype
        t : ndarray (n_streams, T) float64
            Event times (continuing the previous chunk's).
        lengths : int ndarray (n_streams,), optional
            Events of each stream in this chunk (0 allowed: the stream waits).

        Returns
        -------
        ndarray (n_streams, C)
            The read-out of each stream's state after its last event so far.
        """
        cb = _backend()
        net = self.net
        B = self.n_streams
        x, t, lengths = check_sequence_inputs(x, t, lengths, input_size=net.n_features,
                                              dtype=net.dtype)
        if x.shape[0] != B:
            raise ValueError(f"x must have shape ({B}, T, {net.n_features}) for {B} streams, "
                             f"got {x.shape}")
        T = x.shape[1]
        tpb = self.threads_per_block or config.CUDA_STREAM_THREADS_PER_BLOCK
        t_d, len_d = cb.to_device(t), cb.to_device(lengths.astype(np.int64))
        inp = cb.to_device(x)
        k = _kernels()
        for i, (layer, dev) in enumerate(zip(net.layers, self.stack.layers)):
            h, c = self.state[i]
            if T:
                fwd = cb.forward_device(dev, self.stack.features(i, inp, t_d, len_d), t_d,
                                        len_d, h, c, 0.0, store_gates=False,
                                        threads_per_block=tpb)
                inp = fwd["h_seq"]
                copy = config.CUDA_LAUNCH["last_state"]
                k["last_state"][(grid(B, copy[0]), grid(layer.hidden_size, copy[1])), copy](
                    fwd["h_seq"], fwd["c_seq"], h, c)
                self.updates[i] += int(fwd["updates"].copy_to_host().sum())
        self.events += int(lengths.sum())
        W, bias = self.stack.readout["W"], self.stack.readout["b"]
        out = cuda.device_array((B, W.shape[1]), net.dtype)
        tpb = config.CUDA_LAUNCH["readout"]
        k["readout"][(grid(B, tpb[0]), grid(W.shape[1], tpb[1])), tpb](self.state[-1][0], W,
                                                                        bias, out)
        return out.copy_to_host()

