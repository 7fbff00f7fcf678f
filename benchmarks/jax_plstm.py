"""The Phased LSTM and LSTM in JAX, written as a performance-minded JAX user would: the
recurrence a jit-compiled ``lax.scan``, gradients from ``jax.grad``, Adam fused into the same
compiled step. For the benchmarks only (``bench_cpu.py``'s kernel row, ``bench_loop.py``'s
protocol loop); JAX is never a dependency of plstm_np, and nothing here is imported unless
JAX is installed.

The model is the frequency protocol's (``plstm_np.experiments.default_config("frequency")``):
1-110-2, peepholes, r_on learned from 0.05, leak 1e-3, tau ~ exp(U(0, 3)), input-gate bias
-0.1, Lasagne-style elementwise clipping of the gate pre-activation gradients at 10 (a
``custom_vjp``), a leaky-ReLU read-out of the last valid step, softmax cross-entropy, Adam
lr 1e-3, float32 throughout. Deviations from plstm_np, each what a JAX user would do: the
phase is computed in float32 (plstm_np: float64), and a batch of variable lengths is padded
up to a multiple of ``BUCKET`` steps (a compiled step per bucket, not per length), the
padded steps masked so that they leave the state unchanged.
"""
from __future__ import annotations

import math
import time

import jax
import jax.numpy as jnp
import numpy as np

BUCKET = 32
LEAK = 1e-3
CLIP = 10.0


@jax.custom_vjp
def clip_gradient(z):
    """Identity forward; the gradient clipped elementwise to [-CLIP, CLIP] (Lasagne's
    ``grad_clipping``)."""
    return z


def _clip_fwd(z):
    return z, None


def _clip_bwd(_, g):
    return (jnp.clip(g, -CLIP, CLIP),)


clip_gradient.defvjp(_clip_fwd, _clip_bwd)


def init_params(key, model="plstm", D=1, H=110, n_out=2):
    """The protocol's initial parameters (Glorot-uniform read-out, as the authors')."""
    if model == "lstm":
        D += 1  # the LSTM gets the raw time as an input
    k = jax.random.split(key, 6)
    scale = 1 / math.sqrt(H)
    p = dict(Wx=jax.random.uniform(k[0], (D, 4 * H), minval=-scale, maxval=scale),
             Wh=jax.random.uniform(k[1], (H, 4 * H), minval=-scale, maxval=scale),
             b=jnp.zeros(4 * H).at[:H].set(-0.1),
             w_c=jax.random.uniform(k[2], (3, H), minval=-scale, maxval=scale))
    limit = math.sqrt(6 / (H + n_out))
    p["W_out"] = jax.random.uniform(k[3], (H, n_out), minval=-limit, maxval=limit)
    p["b_out"] = jnp.zeros(n_out)
    if model == "plstm":
        tau = jnp.exp(jax.random.uniform(k[4], (H,), minval=0.0, maxval=3.0))
        p.update(tau=tau, s=jax.random.uniform(k[5], (H,)) * tau, r_on=jnp.full(H, 0.05))
    return jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), p)


def time_gate(p, t):
    """k_t of every step (B, T, H) at once: it does not depend on the state."""
    phi = jnp.mod(t[:, :, None] - p["s"], p["tau"]) / p["tau"]
    r = p["r_on"]
    return jnp.where(phi < r / 2, 2 * phi / r,
                     jnp.where(phi < r, 2 - 2 * phi / r, LEAK * phi))


def forward(p, x, t, mask, model="plstm"):
    """Logits of the last valid step of each sequence; ``mask`` (B, T) marks valid steps."""
    if model == "lstm":
        x = jnp.concatenate([x, t[:, :, None]], axis=2)
    B, T, _ = x.shape
    H = p["Wh"].shape[0]
    zx = jnp.einsum("btd,dg->tbg", x, p["Wx"]) + p["b"]
    k = jnp.swapaxes(time_gate(p, t), 0, 1) if model == "plstm" else None
    m = jnp.swapaxes(mask, 0, 1)[:, :, None]
    w_ci, w_cf, w_co = p["w_c"]

    def step(carry, inputs):
        h, c = carry
        z = clip_gradient(inputs[0] + h @ p["Wh"])
        zi, zf, zg, zo = jnp.split(z, 4, axis=1)
        i = jax.nn.sigmoid(zi + w_ci * c)
        f = jax.nn.sigmoid(zf + w_cf * c)
        ct = f * c + i * jnp.tanh(zg)
        o = jax.nn.sigmoid(zo + w_co * ct)
        ht = o * jnp.tanh(ct)
        if model == "plstm":
            kj = inputs[2]
            ct = kj * ct + (1 - kj) * c
            ht = kj * ht + (1 - kj) * h
        valid = inputs[1]
        return (jnp.where(valid, ht, h), jnp.where(valid, ct, c)), None

    zeros = jnp.zeros((B, H), x.dtype)
    xs = (zx, m, k) if model == "plstm" else (zx, m)
    (h, _), _ = jax.lax.scan(step, (zeros, zeros), xs)
    return jax.nn.leaky_relu(h @ p["W_out"] + p["b_out"], 0.01)


def loss_fn(p, x, t, mask, y, model="plstm"):
    logits = forward(p, x, t, mask, model)
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))


def adam_init(p):
    zeros = jax.tree_util.tree_map(jnp.zeros_like, p)
    return dict(m=zeros, v=zeros, step=jnp.zeros((), jnp.int32))


def make_train_step(model="plstm", lr=1e-3, b1=0.9, b2=0.999, eps=1e-8):
    """A jit-compiled ``(params, adam, x, t, mask, y) -> (params, adam, loss)``."""

    @jax.jit
    def train_step(p, state, x, t, mask, y):
        loss, g = jax.value_and_grad(loss_fn)(p, x, t, mask, y, model)
        n = state["step"] + 1
        m = jax.tree_util.tree_map(lambda m, g: b1 * m + (1 - b1) * g, state["m"], g)
        v = jax.tree_util.tree_map(lambda v, g: b2 * v + (1 - b2) * g * g, state["v"], g)
        a = lr * jnp.sqrt(1 - b2 ** n) / (1 - b1 ** n)
        p = jax.tree_util.tree_map(lambda p, m, v: p - a * m / (jnp.sqrt(v) + eps), p, m, v)
        if "r_on" in p:  # keep the open ratio in (0, 1]
            p = dict(p, r_on=jnp.clip(p["r_on"], 1e-4, 1.0))
        return p, dict(m=m, v=v, step=n), loss

    return train_step


def make_eval(model="plstm"):
    @jax.jit
    def evaluate(p, x, t, mask, y):
        logits = forward(p, x, t, mask, model)
        loss = -jnp.sum(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))
        return loss, jnp.sum(jnp.argmax(logits, 1) == y)

    return evaluate


def padded(batch, bucket=BUCKET):
    """A plstm_np Dataset batch as JAX arrays padded to a multiple of ``bucket`` steps."""
    B, T = batch.t.shape
    T_pad = bucket * math.ceil(T / bucket)
    lengths = np.full(B, T) if batch.lengths is None else batch.lengths
    mask = np.arange(T_pad)[None, :] < lengths[:, None]
    x = np.zeros((B, T_pad, batch.x.shape[2]), np.float32)
    t = np.zeros((B, T_pad), np.float32)
    x[:, :T] = np.nan_to_num(batch.x)
    t[:, :T] = np.nan_to_num(batch.t)
    return (jnp.asarray(x), jnp.asarray(t), jnp.asarray(mask),
            jnp.asarray(batch.y.astype(np.int32)))


def kernel_row(data, repeats=5):
    """bench_cpu.py's training row: one compiled training step on a full batch
    (``data``: B = 32, T = 125, every step valid); seconds (best, median)."""
    train_step = make_train_step("plstm")
    p = init_params(jax.random.PRNGKey(0))
    state = adam_init(p)
    args = padded(data, bucket=1)
    p, state, loss = train_step(p, state, *args)  # compile
    loss.block_until_ready()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        p, state, loss = train_step(p, state, *args)
        loss.block_until_ready()
        times.append(time.perf_counter() - start)
    return min(times), float(np.median(times))


def protocol_epochs(train_data, val, model, epochs, batch_size=32, seed=0):
    """The protocol loop: ``epochs`` epochs of ``train_data(e)`` (fresh data, shuffled,
    padded per batch to its bucket), validation after each; returns per-epoch records with
    wall seconds (compilation included, as a user's run pays it)."""
    train_step = make_train_step(model)
    evaluate = make_eval(model)
    p = init_params(jax.random.PRNGKey(seed), model)
    state = adam_init(p)
    rng = np.random.default_rng([seed, 3])
    val_batches = [padded(b) for b in val.batches(256, shuffle=False)]
    records = []
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        data = train_data(epoch)
        losses = []
        for batch in data.batches(batch_size, rng=rng):
            p, state, loss = train_step(p, state, *padded(batch))
            losses.append(loss)
        total_loss, correct = 0.0, 0
        for b in val_batches:
            loss, right = evaluate(p, *b)
            total_loss += float(loss)
            correct += int(right)
        records.append(dict(epoch=epoch, seconds=time.perf_counter() - start,
                            train_loss=float(np.mean(np.asarray(losses))),
                            val_loss=total_loss / len(val),
                            val_accuracy=correct / len(val),
                            valid_sample_steps=int(data.lengths.sum())))
    return records


def loss_against_plstm_np(model="plstm", n=8):
    """The loss of this model and of plstm_np's reference (float64) on the same parameters
    and batch of the frequency protocol: ``(plstm_np, jax)``; they must agree to float32
    rounding, or the benchmark compares different computations."""
    from plstm_np import experiments as ex

    cfg = ex.default_config("frequency", model=model, dtype="float64", backend="numpy")
    net = ex.build_model(cfg)
    _, val = ex.make_data(dict(cfg, n_val=n))
    P = net.params
    p = dict(Wx=P["layer0.Wx"], Wh=P["layer0.Wh"], b=P["layer0.b"],
             w_c=np.stack([P["layer0.w_ci"], P["layer0.w_cf"], P["layer0.w_co"]]),
             W_out=P["readout.W"], b_out=P["readout.b"])
    if model == "plstm":
        p.update(tau=P["layer0.tau"], s=P["layer0.s"], r_on=P["layer0.r_on"])
    p = {k: jnp.asarray(v, jnp.float32) for k, v in p.items()}
    batch = val[:n].trimmed()
    ours = net.loss_and_grads(batch, training=True)[0]
    return float(ours), float(loss_fn(p, *padded(batch), model))
