"""Packed batches: the dense kernels take each chunk's rows by decreasing length and compute
only the rows still running (PyTorch's packed sequences); the results equal the padded
computation whatever the row order and however much padding there is."""
import numpy as np
import pytest

from plstm_np.backends.numba.workspace import packed_order

from conftest import BACKENDS, DTYPES, assert_close, random_layer_problem

LENGTHS = np.array([10, 1, 0, 5, 10, 3, 7, 2, 9])


def run(layer, x, t, lengths, dh, training):
    h, (hT, cT), cache = layer.forward(x, t, lengths, training=training)
    return h, hT, cT, layer.backward(dh, cache)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lstm, training", [(False, True), (False, False), (True, True)])
def test_row_order_and_padding_change_nothing(backend, dtype, lstm, training):
    """The same sequences, in another order and padded (with NaN) to a longer T, give the
    reference's results for the original batch."""
    rng = np.random.default_rng(2)
    B, T, extra = len(LENGTHS), 10, 6
    ref, x, t, _ = random_layer_problem(rng, "numpy", dtype=dtype, lstm=lstm, B=B, T=T,
                                        r_on_range=(0.3, 0.9))
    x[np.arange(T)[None] >= LENGTHS[:, None]] = 0.0
    dh = rng.normal(size=(B, T, ref.hidden_size)).astype(dtype)
    expected = run(ref, x, t, LENGTHS, dh, training)

    layer, *_ = random_layer_problem(np.random.default_rng(2), backend, dtype=dtype, lstm=lstm,
                                     B=B, T=T, r_on_range=(0.3, 0.9))
    perm = rng.permutation(B)
    x2 = np.full((B, T + extra, x.shape[2]), np.nan, dtype)
    t2 = np.full((B, T + extra), np.nan)
    dh2 = np.zeros((B, T + extra, ref.hidden_size), dtype)
    x2[:, :T], t2[:, :T], dh2[:, :T] = x[perm], t[perm], dh[perm]
    pad = np.arange(T + extra)[None] >= LENGTHS[perm][:, None]
    x2[pad], t2[pad] = np.nan, np.nan  # no backend may read padding
    h, hT, cT, grads = run(layer, x2, t2, LENGTHS[perm], dh2, training)
    inverse = np.argsort(perm)
    assert_close(h[inverse][:, :T], expected[0], backend, dtype, "h")
    assert_close((hT[inverse], cT[inverse]), expected[1:3], backend, dtype, "final state")
    grads["x"] = grads["x"][inverse][:, :T]
    for key in ("h0", "c0"):
        grads[key] = grads[key][inverse]
    assert_close(grads, expected[3], backend, dtype, "gradients")


@pytest.mark.parametrize("nchunks", [1, 2, 3, 4, 9])
def test_packed_order_deals_sorted_rows_to_balanced_chunks(nchunks):
    rng = np.random.default_rng(nchunks)
    lengths = rng.integers(0, 200, 37)
    order = packed_order(lengths, nchunks)
    B = len(lengths)
    assert sorted(order.tolist()) == list(range(B))  # a permutation
    work = []
    for c in range(nchunks):
        rows = order[c * B // nchunks:(c + 1) * B // nchunks]
        assert (np.diff(lengths[rows]) <= 0).all()  # running rows first, at every step
        work.append(lengths[rows].sum())
    assert max(work) - min(work) <= lengths.max()  # dealt in turn: balanced
    assert (packed_order(np.array([], np.int64), 1) == np.array([], np.int64)).all()
