"""The Numba backend against the NumPy reference: forward, every gradient, skipping, errors."""
import os
import subprocess
import sys
from pathlib import Path

import numba
import numpy as np
import pytest

import plstm_np as pl
from plstm_np import config, reference
from plstm_np.backends import numba as nb
from plstm_np.backends.numba import (
    backward,
    cell_math,
    compile,
    forward,
    intrinsics,
    layouts,
    workspace,
)
from plstm_np.time_gate import phase

from conftest import make_batch, make_network

#: Largest tolerated max relative difference (max |a - b| / max |b|) to the reference.
RTOL = {np.float64: 1e-12, np.float32: 1e-5}
REPO = Path(__file__).resolve().parents[1]


def max_rel_diff(actual, expected):
    """max |a - e| / max |e| (max |a - e| when e is all zeros)."""
    a = np.asarray(actual, np.float64)
    e = np.asarray(expected, np.float64)
    assert a.shape == e.shape
    scale = np.abs(e).max() if e.size else 0.0
    diff = np.abs(a - e).max() if e.size else 0.0
    return diff / scale if scale > 0 else diff


def random_layer_problem(rng, dtype, *, B=5, T=9, D=3, H=11, gate_open=False,
                         r_on_range=(0.05, 0.9), t_max=30.0):
    """Random parameters (all of them), per-sample random times, lengths with 0 and T."""
    params = {
        "Wx": rng.normal(0, 0.7, (D, 4 * H)), "Wh": rng.normal(0, 0.7, (H, 4 * H)),
        "b": rng.normal(0, 0.7, 4 * H), "w_ci": rng.normal(0, 0.7, H),
        "w_cf": rng.normal(0, 0.7, H), "w_co": rng.normal(0, 0.7, H),
    }
    if not gate_open:
        tau = np.exp(rng.uniform(0.0, 2.5, H))
        params.update(tau=tau, s=rng.uniform(-tau, tau), r_on=rng.uniform(*r_on_range, H))
    params = {k: v.astype(dtype) for k, v in params.items()}
    x = rng.normal(size=(B, T, D)).astype(dtype)
    t = np.sort(rng.uniform(-5.0, t_max, (B, T)), axis=1)
    lengths = rng.integers(0, T + 1, B).astype(np.int64)
    lengths[0], lengths[1] = T, 0
    valid = np.arange(T)[None, :] < lengths[:, None]
    x[~valid] = np.nan  # padding may hold garbage: never read
    t[~valid] = np.nan
    h0 = rng.normal(size=(B, H)).astype(dtype)
    c0 = rng.normal(size=(B, H)).astype(dtype)
    return params, x, t, lengths, h0, c0


def compare_layer(rng, dtype, leak, gate_open, **kw):
    params, x, t, lengths, h0, c0 = random_layer_problem(rng, dtype, gate_open=gate_open, **kw)
    h_r, (hT_r, cT_r), cache_r = reference.layer_forward(params, x, t, lengths, h0, c0, leak,
                                                         gate_open)
    h_n, (hT_n, cT_n), cache_n = nb.layer_forward(params, x, t, lengths, h0, c0, leak, gate_open)
    tol = RTOL[dtype]
    for name, a, e in (("h", h_n, h_r), ("hT", hT_n, hT_r), ("cT", cT_n, cT_r)):
        assert a.dtype == np.dtype(dtype)
        assert max_rel_diff(a, e) <= tol, name
    B, T, H = h_r.shape
    dh = rng.normal(size=(B, T, H)).astype(dtype)
    dstate = (rng.normal(size=(B, H)).astype(dtype), rng.normal(size=(B, H)).astype(dtype))
    g_r = reference.layer_backward(dh, dstate, cache_r)
    g_n = nb.layer_backward(dh, dstate, cache_n)
    assert set(g_n) == set(g_r)
    for name in g_r:
        assert g_n[name].shape == g_r[name].shape and g_n[name].dtype == g_r[name].dtype, name
        assert max_rel_diff(g_n[name], g_r[name]) <= tol, name
    assert np.all(np.isfinite(h_n))
    return cache_n, cache_r, (params, x, t, lengths)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("leak", [1e-3, 0.0])
@pytest.mark.parametrize("gate_open", [False, True])
def test_layer_matches_reference(dtype, leak, gate_open):
    rng = np.random.default_rng(7)
    for _ in range(3):
        cache_n, cache_r, _ = compare_layer(rng, dtype, leak, gate_open)
        if leak > 0 or gate_open:
            assert cache_n["updates"] == cache_r["updates"]  # dense: every valid step
        else:
            assert cache_n["updates"] < cache_r["updates"]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_dense_and_gather_paths_at_larger_width(dtype):
    # H = 40 with r_on from tiny to wide: steps with few open neurons take the gather path
    # (in groups of _LANES), steps with many take the dense path; both must agree with the
    # reference.
    rng = np.random.default_rng(3)
    compare_layer(rng, dtype, 0.0, False, B=4, T=30, D=5, H=40, r_on_range=(0.01, 1.0))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("r_on_range, sparse", [((0.02, 0.15), True), ((0.3, 0.9), False)])
def test_leak_free_backward_visits_only_updates_when_few(dtype, r_on_range, sparse):
    # after a leak-free forward the backward visits only the updated neurons while they are
    # at most _SPARSE_BACKWARD of all (H = 70: a padded row, several groups of neurons);
    # with more it reruns the forward dense and visits every neuron: the same gradients
    rng = np.random.default_rng(6)
    for _ in range(2):
        cache_n, _, (_, _, _, lengths) = compare_layer(rng, dtype, 0.0, False, B=6, T=12, D=2,
                                                       H=70, r_on_range=r_on_range)
        all_updates = int(lengths.sum()) * 70
        assert (cache_n["updates"] <= backward.SPARSE_BACKWARD * all_updates) == sparse
        expected = cache_n["updates"] if sparse else all_updates
        assert cache_n["backward_updates"] == expected


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("leak", [1e-3, 0.0])
def test_vector_loops_with_remainders(dtype, leak):
    # H = 70: the per-neuron loops run full vector iterations and a remainder, and more
    # batch rows than threads share a chunk (the dense kernels' BLAS products)
    rng = np.random.default_rng(4)
    compare_layer(rng, dtype, leak, False, B=9, T=21, D=2, H=70)


def test_reused_arrays_never_change_what_a_caller_holds():
    # the kernels reuse the memory of their big arrays once nothing refers to them: arrays
    # (and caches) a caller still holds must never be overwritten
    rng = np.random.default_rng(12)
    params, x, t, lengths, h0, c0 = random_layer_problem(rng, np.float64, B=4, T=8, H=6)
    h_a, _, cache_a = nb.layer_forward(params, x, t, lengths, h0, c0, 1e-3)
    kept_h, kept_i = h_a.copy(), cache_a["stored"].i.copy()
    dh = rng.normal(size=h_a.shape)
    expected = nb.layer_backward(dh, None, cache_a)
    x_b = rng.normal(size=x.shape)
    h_b, _, cache_b = nb.layer_forward(params, x_b, t, lengths, h0, c0, 1e-3)
    nb.layer_backward(dh, None, cache_b)
    _, _, cache_e = nb.layer_forward(params, x_b, t, lengths, h0, c0, 0.0)
    nb.layer_backward(dh, None, cache_e)  # its rerun forward stores into a reused block
    assert h_b is not h_a and not np.shares_memory(h_b, h_a)
    assert not np.shares_memory(cache_b["stored"].i, cache_a["stored"].i)
    np.testing.assert_array_equal(h_a, kept_h)
    np.testing.assert_array_equal(cache_a["stored"].i, kept_i)
    again = nb.layer_backward(dh, None, cache_a)
    for name in expected:
        np.testing.assert_array_equal(again[name], expected[name], err_msg=name)


def test_arrays_nobody_holds_are_reused():
    rng = np.random.default_rng(13)
    params, x, t, lengths, h0, c0 = random_layer_problem(rng, np.float32, B=4, T=8, H=6)
    nb.clear_workspace()
    h, _, cache = nb.layer_forward(params, x, t, lengths, h0, c0, 1e-3)
    address = (h.ctypes.data, cache["stored"].i.ctypes.data)
    first = h.copy()
    del h, cache
    h, _, cache = nb.layer_forward(params, x, t, lengths, h0, c0, 1e-3)
    assert (h.ctypes.data, cache["stored"].i.ctypes.data) == address
    np.testing.assert_array_equal(h, first)  # and the results are the same


def test_neuron_major_layout_and_its_inverse():
    # column 4 n + g of the neuron-major layout is gate g of neuron n; the inverse undoes it
    K, H = 3, 5
    W = np.arange(K * 4 * H, dtype=np.float64).reshape(K, 4 * H)
    WN = nb.to_neuron_major(W)
    for n in range(H):
        for g in range(4):
            np.testing.assert_array_equal(WN[:, 4 * n + g], W[:, g * H + n])
    np.testing.assert_array_equal(layouts.from_neuron_major(WN), W)


def test_layouts_reused_only_for_unchanged_parameters():
    # the weight layouts of unchanged parameters are reused; parameters changed in place
    # (as an optimizer does) get new ones: results always match the reference's
    rng = np.random.default_rng(14)
    params, x, t, lengths, h0, c0 = random_layer_problem(rng, np.float64, B=3, T=6, H=5,
                                                         r_on_range=(0.3, 0.6))
    nb.clear_workspace()
    _, _, first = nb.layer_forward(params, x, t, lengths, h0, c0, 0.0)
    _, _, again = nb.layer_forward(params, x, t, lengths, h0, c0, 0.0)
    assert again["prepared"] is first["prepared"]
    for name in ("Wh", "Wx", "b", "w_co", "tau", "s", "r_on"):
        params[name][(0,) * params[name].ndim] += 0.25  # in place
        h_n, _, cache = nb.layer_forward(params, x, t, lengths, h0, c0, 0.0)
        assert cache["prepared"] is not first["prepared"], name
        h_r, _, _ = reference.layer_forward(params, x, t, lengths, h0, c0, 0.0)
        assert max_rel_diff(h_n, h_r) <= RTOL[np.float64], name
    others = [{k: v.copy() for k, v in params.items()} for _ in range(layouts.LAYOUTS_KEPT + 3)]
    for other in others:  # bounded
        nb.layer_forward(other, x, t, lengths, h0, c0, 0.0)
    assert len(workspace.thread_store()["layouts"]) == layouts.LAYOUTS_KEPT
    nb.clear_workspace()
    assert "layouts" not in workspace.thread_store()


def test_workspace_keeps_no_large_arrays(monkeypatch):
    monkeypatch.setattr(workspace, "_POOL_MAX_BYTES", 1000)
    nb.clear_workspace()
    small = workspace.reusable("test", (10, 10), np.float64)  # 800 bytes: kept
    large = workspace.reusable("test", (10, 20), np.float64)  # 1600 bytes: not kept
    pool = workspace.thread_store()["arrays"]["test"]
    assert len(pool) == 1 and pool[0] is small and all(a is not large for a in pool)
    del small
    assert workspace.reusable("test", (10, 10), np.float64) is pool[0]
    nb.clear_workspace()
    assert "arrays" not in workspace.thread_store()


def open_triples_of(params, t, lengths):
    """(B, T, H) bool: the valid (sample, step, neuron) triples whose phase is on the open
    pieces, 0 <= phi < r_on, computed from the time gate's phase alone."""
    valid = np.arange(t.shape[1])[None, :] < lengths[:, None]
    phi = phase(np.where(valid, t, 0.0)[:, :, None], params["tau"], params["s"])
    phi = np.where(phi >= 1.0, 0.0, phi)  # a remainder that rounds up to tau: phase 0
    return (phi < params["r_on"]) & valid[:, :, None]


def assert_updates_are_the_open_triples(params, x, t, lengths, h0, c0):
    """The sparse kernel updates exactly the open triples, and its outputs are the
    reference's."""
    h_r, (hT_r, cT_r), _ = reference.layer_forward(params, x, t, lengths, h0, c0, 0.0)
    h_n, (hT_n, cT_n), cache_n = nb.layer_forward(params, x, t, lengths, h0, c0, 0.0)
    open_triples = open_triples_of(params, t, lengths)
    np.testing.assert_array_equal(cache_n["update_counts"], open_triples.sum(1))
    for a, e in ((h_n, h_r), (hT_n, hT_r), (cT_n, cT_r)):
        assert max_rel_diff(a, e) <= RTOL[np.float64]
    return open_triples


def test_skipping_counts_open_triples():
    rng = np.random.default_rng(11)
    B, T, H = 6, 60, 48
    cache_n, cache_r, (params, x, t, lengths) = compare_layer(
        rng, np.float64, 0.0, False, B=B, T=T, H=H, r_on_range=(0.05, 0.05), t_max=200.0)
    open_triples = open_triples_of(params, t, lengths)
    assert cache_n["updates"] == int(open_triples.sum())
    np.testing.assert_array_equal(cache_n["update_counts"], open_triples.sum(1))
    assert cache_n["backward_updates"] == cache_n["updates"]  # the backward skips too
    dense = int(lengths.sum()) * H
    assert cache_r["updates"] == dense
    assert cache_n["updates"] < 0.15 * dense


def test_screen_keeps_neurons_at_the_edges_of_their_open_phase():
    # times on and an ulp either side of each neuron's opening (phase 0, where a phase just
    # below 1 rounds to 0) and closing (phase r_on), far from and before t = 0 (where the
    # screen's approximate phase is furthest off): the screen must pass every open neuron
    rng = np.random.default_rng(23)
    B, T, H = 4, 240, 70  # H: a full word of 64 bits, a group of 6 padded to 8
    params, x, t, lengths, h0, c0 = random_layer_problem(rng, np.float64, B=B, T=T, H=H,
                                                         r_on_range=(0.02, 0.2))
    lengths[:] = T
    tau, s, r_on = params["tau"], params["s"], params["r_on"]
    n = rng.integers(0, H, (B, T))
    cycles = rng.choice([-1e5, -3.0, 0.0, 7.0, 1e4, 1e6], (B, T)) + rng.integers(0, 50, (B, T))
    edge = np.where(rng.random((B, T)) < 0.5, 0.0, r_on[n])  # opening or closing
    t = s[n] + (cycles + edge) * tau[n]
    t = np.where(rng.random((B, T)) < 0.5, t, np.nextafter(t, rng.choice([-np.inf, np.inf])))
    t = np.sort(t, axis=1)
    x = rng.normal(size=(B, T, 3))
    open_triples = assert_updates_are_the_open_triples(params, x, t, lengths, h0, c0)
    assert 0 < open_triples.sum(2).max() <= H // 2  # few open: the screen decided


def test_gate_scan_switching_between_many_and_few_open():
    # neurons of nearly equal periods and shifts open together: steps with most of them
    # open (every exact phase, vectorised) alternate with steps with few (the screen)
    rng = np.random.default_rng(21)
    B, T, H = 3, 400, 30
    params, x, t, lengths, h0, c0 = random_layer_problem(rng, np.float64, B=B, T=T, H=H)
    lengths[:] = T
    params["tau"] = 10.0 * rng.uniform(1.0, 1.01, H)
    params["s"] = rng.uniform(0.0, 1.0, H)
    params["r_on"] = rng.uniform(0.1, 0.3, H)
    x = rng.normal(size=(B, T, 3))
    t = np.cumsum(rng.uniform(0.0, 0.2, (B, T)), axis=1) - 5.0
    open_triples = assert_updates_are_the_open_triples(params, x, t, lengths, h0, c0)
    many_before = open_triples[:, :-1].sum(2) * forward.MANY_OPEN > H
    assert many_before.sum() > 50 and (~many_before).sum() > 50  # both ways, many times


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("training", [True, False])
def test_two_layer_network_matches_reference(dtype, training):
    rng = np.random.default_rng(5)
    net = make_network(rng, dtype=dtype, readout_at="every")
    batch = make_batch(net, rng, B=4, T=7)
    out_r, states_r, cache_r = net.forward(batch.x, batch.t, batch.lengths, batch.tokens,
                                           training=training)
    dout = rng.normal(size=out_r.shape).astype(dtype)
    g_r = net.backward(dout, cache_r)
    net.backend = "numba"
    out_n, states_n, cache_n = net.forward(batch.x, batch.t, batch.lengths, batch.tokens,
                                           training=training)
    g_n = net.backward(dout, cache_n)
    tol = RTOL[dtype]
    assert max_rel_diff(out_n, out_r) <= tol
    for (h_n, c_n), (h_r, c_r) in zip(states_n, states_r):
        assert max_rel_diff(h_n, h_r) <= tol and max_rel_diff(c_n, c_r) <= tol
    assert set(g_n) == set(g_r)
    for name in g_r:
        assert max_rel_diff(g_n[name], g_r[name]) <= tol, name


def test_bad_input_same_errors_as_reference():
    rng = np.random.default_rng(0)
    layers = {b: pl.PhasedLSTM(2, 3, backend=b, rng=1) for b in ("numpy", "numba")}
    x = rng.normal(size=(2, 4, 2))
    t = np.sort(rng.uniform(0, 5, (2, 4)), axis=1)
    t_nan = t.copy()
    t_nan[1, 2] = np.nan
    bad_calls = [
        dict(x=x.astype(np.float32), t=t),  # wrong dtype
        dict(x=x, t=t.astype(np.float32)),  # float32 times
        dict(x=x[:, :, :1], t=t),  # wrong feature count
        dict(x=x, t=t_nan),  # non-finite time at a valid step
        dict(x=x, t=t, lengths=np.array([5, 1])),  # length > T
        dict(x=x, t=t, state=(np.zeros((2, 3)), np.zeros((2, 2)))),  # bad state shape
    ]
    for call in bad_calls:
        messages = []
        for layer in layers.values():
            with pytest.raises((ValueError, TypeError)) as err:
                layer.forward(**call)
            messages.append((type(err.value), str(err.value)))
        assert messages[0] == messages[1]


def test_padding_garbage_is_never_read():
    rng = np.random.default_rng(2)
    params, x, t, lengths, h0, c0 = random_layer_problem(rng, np.float64)
    h, (hT, cT), _ = nb.layer_forward(params, x, t, lengths, h0, c0, 0.0, False)
    assert np.all(np.isfinite(h)) and np.all(np.isfinite(hT))
    # a sample of length 0 keeps its initial state
    np.testing.assert_array_equal(hT[1], h0[1])
    np.testing.assert_array_equal(cT[1], c0[1])


def _run(code):
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


JIT_ONLY = pytest.mark.skipif(compile.PLAIN_PYTHON, reason="plain-Python mode compiles nothing")


@JIT_ONLY
def test_import_compiles_nothing():
    out = _run(
        "import plstm_np, sys\n"
        "assert not any(m.startswith('plstm_np.backends.numba') for m in sys.modules)\n"
        "from plstm_np.backends.numba import forward as f, backward as b\n"
        "kernels = [f.forward_kernel, f.forward_kernel_serial, f.forward_dense_kernel,"
        " b.backward_kernel, b.backward_sparse_kernel]\n"
        "print(sum(len(k.signatures) for k in kernels))\n"
    )
    assert out.strip() == "0"


@pytest.mark.skipif(not (config.NUMBA_CACHE and not config.NUMBA_FASTMATH),
                    reason="disk cache switched off")
@JIT_ONLY
def test_fresh_process_loads_kernels_from_cache():
    # every kernel runs: dense forward and backward (training), the sparse forward, parallel
    # (B > 1) and serial (B = 1), and the sparse backward (after a leak-free forward)
    code = (
        "import numpy as np\n"
        "import plstm_np as pl\n"
        "from plstm_np.backends.numba import forward as f, backward as b\n"
        "layer = pl.PhasedLSTM(2, 3, backend='numba', rng=0)\n"
        "x = np.zeros((2, 3, 2)); t = np.arange(6.0).reshape(2, 3)\n"
        "h, s, cache = layer.forward(x, t)\n"
        "layer.backward(np.ones_like(h), cache)\n"
        "h, s, cache = layer.forward(x, t, training=False)\n"
        "layer.backward(np.ones_like(h), cache)\n"
        "layer.forward(x[:1], t[:1], training=False)\n"
        "ks = [f.forward_dense_kernel, b.backward_kernel, f.forward_kernel,"
        " f.forward_kernel_serial, b.backward_sparse_kernel]\n"
        "print(sum(sum(k.stats.cache_misses.values()) for k in ks),"
        " sum(sum(k.stats.cache_hits.values()) for k in ks), cache['backward_updates'])\n"
    )
    _run(code)  # the first process may have to compile and write the cache
    misses, hits, visited = map(int, _run(code).split())
    assert visited < 2 * 3 * 3  # the sparse backward ran (it visits only the updates)
    assert misses == 0 and hits == 5


@JIT_ONLY
def test_cache_stamp_covers_every_source_the_kernels_are_built_from(tmp_path):
    # Numba's own stamp covers a kernel's file only: an edit of the cell maths a kernel
    # inlines from another module must recompile it
    here = Path(nb.__file__).parent
    expected = {str(p.resolve()) for p in here.glob("*.py")}
    expected |= {str((here.parents[1] / name).resolve())
                 for name in ("scalar_math.py", "config.py")}
    assert {str(Path(p).resolve()) for p in compile.SOURCE_FILES} == expected
    files = [tmp_path / "a.py", tmp_path / "b.py"]
    for f in files:
        f.write_text("x = 1\n")
    before = compile.source_stamp(files)
    assert compile.source_stamp(files) == before
    files[1].write_text("x = 2\n")
    assert compile.source_stamp(files) != before
    kernels = [forward.forward_kernel, forward.forward_dense_kernel, backward.backward_kernel,
               backward.backward_sparse_kernel, forward.forward_kernel_serial]
    for k in kernels:  # every kernel is cached under that stamp
        if compile.CACHE:
            assert k._cache._impl.locator.get_source_stamp() == compile.source_stamp()


def test_phase_bitwise_equal_to_numpy():
    # the kernels' fused multiply-add phase against time_gate.phase, including times on and
    # one ulp either side of cycle boundaries, negative times and large quotients
    rng = np.random.default_rng(8)
    N = 30000
    tau = np.exp(rng.uniform(-3.0, 6.0, N))
    s = rng.uniform(-tau, tau)
    t = rng.uniform(-50.0, 1e4, N)
    m = N // 6
    t[:m] = s[:m] + tau[:m] * rng.integers(-20, 2000, m)
    t[m:2 * m] = np.nextafter(t[:m], np.inf)
    t[2 * m:3 * m] = np.nextafter(t[:m], -np.inf)
    t[3 * m:4 * m] = rng.uniform(-1e-3, 1e-3, m) + s[3 * m:4 * m]
    expected = phase(t, tau, s)
    expected = np.where(expected >= 1.0, 0.0, expected)  # scalar_math's convention
    got = np.array([cell_math.phase(a, b, 1.0 / b, c) for a, b, c in zip(t, tau, s)])
    np.testing.assert_array_equal(got, expected)

    # the inlined copy, in a loop compiled with the kernels' flags (there it vectorises)
    import numba

    @numba.njit(fastmath=compile.FASTMATH, error_model="numpy")
    def phases(t, tau, s, out):
        for n in range(t.shape[0]):
            out[n] = cell_math.phase_inline(t[n], tau[n], 1.0 / tau[n], s[n])

    out = np.empty(N)
    phases(t, tau, s, out)
    np.testing.assert_array_equal(out, expected)


def test_gate_nonlinearities_in_model_dtype():
    # sigmoid and tanh built on one exp (a polynomial one in float32), against float64 NumPy
    import numba

    @numba.njit
    def apply(a, sig, tnh):
        one = a.dtype.type(1.0)
        for i in range(a.shape[0]):
            sig[i] = cell_math.sigmoid(a[i], one)
            tnh[i] = cell_math.tanh(a[i], one)

    a64 = np.concatenate([np.linspace(-120.0, 120.0, 20001), [0.0, -0.0, 1e-30, -1e-30]])
    for dtype, tol in ((np.float64, 4e-16), (np.float32, 4e-7)):
        a = a64.astype(dtype)
        sig, tnh = np.empty_like(a), np.empty_like(a)
        apply(a, sig, tnh)
        assert sig.dtype == tnh.dtype == np.dtype(dtype)
        exact = a.astype(np.float64)
        assert np.abs(sig - 1.0 / (1.0 + np.exp(-exact))).max() <= tol
        assert np.abs(tnh - np.tanh(exact)).max() <= tol
        assert np.all((sig >= 0) & (sig <= 1) & (np.abs(tnh) <= 1))


def test_blas_single_threaded_while_dense_kernels_run_and_restored_after():
    # the dense kernels call BLAS from each of their threads: SciPy's OpenBLAS (the one
    # Numba's np.dot calls) is held at one thread meanwhile, and its count restored
    controls = workspace.SerialBLAS._find()
    if not controls:
        pytest.skip("SciPy's OpenBLAS thread controls are not available here")
    get, set_ = controls
    before = get()
    try:
        set_(2)
        assert get() == 2
        with workspace.SerialBLAS():
            assert get() == 1
        assert get() == 2
        rng = np.random.default_rng(14)
        params, x, t, lengths, h0, c0 = random_layer_problem(rng, np.float32)
        h, _, cache = nb.layer_forward(params, x, t, lengths, h0, c0, 1e-3)
        nb.layer_backward(np.ones_like(h), None, cache)
        assert get() == 2
    finally:
        set_(before)


@JIT_ONLY
def test_python_twins_of_the_intrinsics_agree_with_them():
    # plain-Python mode (NUMBA_DISABLE_JIT=1) runs the kernels on these twins

    rng = np.random.default_rng(5)
    a, b, c = rng.normal(size=(3, 200)) * 10.0 ** rng.integers(-8, 8, (3, 200))
    fma_jit = numba.njit(lambda a, b, c: intrinsics.fma(a, b, c))
    for ai, bi, ci in zip(a, b, c):
        assert intrinsics.fma_python(ai, bi, ci) == fma_jit(ai, bi, ci)
    # a product that rounds: the fused result differs from a * b + c
    assert intrinsics.fma_python(1.0 + 2.0**-30, 1.0 - 2.0**-30, -1.0) == -(2.0**-60)

    screen = numba.njit(lambda tj, rows, col: intrinsics.maybe_open8(tj, rows, col))
    H = 29
    tau = np.exp(rng.uniform(-1, 4, H))
    prepared = layouts.prepare_params(
        dict(Wx=np.zeros((1, 4 * H)), Wh=np.zeros((H, 4 * H)), b=np.zeros(4 * H),
             w_ci=np.zeros(H), w_cf=np.zeros(H), w_co=np.zeros(H), tau=tau,
             s=rng.uniform(0, tau), r_on=rng.uniform(0.01, 0.3, H)), False)
    rows = prepared["timing"].gate_rows
    for tj in np.concatenate([rng.uniform(-50, 1e4, 300), [0.0, 1e15]]):
        for col in range(0, rows.shape[1], 8):
            assert intrinsics.maybe_open8_python(tj, rows, col) == screen(tj, rows, col)

    lowest = numba.njit(lambda w: intrinsics.lowest_bit(w))
    for word in [1, 2, 3, 96, 2**63, 2**64 - 1] + list(rng.integers(1, 2**63, 50)):
        assert intrinsics.lowest_bit_python(np.uint64(word)) == lowest(np.uint64(word))

    biased = numba.njit(lambda m: intrinsics.two_to_biased(m))
    for m in (1, 100, 128, 200, 255):
        assert intrinsics.two_to_biased_python(m) == biased(np.int32(m))


def test_plain_python_mode_runs_the_backend_like_the_reference():
    # NUMBA_DISABLE_JIT=1: every kernel as Python (coverage, debugging), same results
    code = (
        "import numpy as np, plstm_np as pl\n"
        "from plstm_np.backends.numba import compile\n"
        "assert compile.PLAIN_PYTHON\n"
        "rng = np.random.default_rng(0)\n"
        "x = rng.normal(size=(3, 5, 2)); t = np.sort(rng.uniform(0, 10, (3, 5)), 1)\n"
        "L = np.array([5, 3, 4])\n"
        "worst = 0.0\n"
        "for training in (False, True):\n"
        "    fast, ref = (pl.PhasedLSTM(2, 11, backend=b, rng=0, r_on=0.3)\n"
        "                 for b in ('numba', 'numpy'))\n"
        "    h, _, c = fast.forward(x, t, L, training=training)\n"
        "    h2, _, c2 = ref.forward(x, t, L, training=training)\n"
        "    g, g2 = fast.backward(np.ones_like(h), c), ref.backward(np.ones_like(h2), c2)\n"
        "    worst = max([worst, abs(h - h2).max()] + [abs(g[k] - g2[k]).max() for k in g])\n"
        "print(worst, c['updates'])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                            text=True, timeout=300, env=dict(os.environ, NUMBA_DISABLE_JIT="1"))
    assert result.returncode == 0, result.stderr
    worst, updates = result.stdout.split()
    assert float(worst) < 1e-12 and int(updates) == 3 * 11 * 4  # 12 valid steps, all updated


@pytest.mark.parametrize("leak", [1e-3, 0.0])
def test_parallel_kernels_write_the_final_state(leak):
    # the kernels take their outputs in named tuples; Numba can lose rows written in a
    # prange into arrays unpacked from a tuple (see plstm_np.backends.numba.arguments)
    rng = np.random.default_rng(21)
    params, x, t, lengths, h0, c0 = random_layer_problem(rng, np.float64, B=5, T=7, H=9)
    lengths[2] = 0
    h, (hT, cT), cache = nb.layer_forward(params, x, t, lengths, h0, c0, leak)
    _, (hT_r, cT_r), _ = reference.layer_forward(params, x, t, lengths, h0, c0, leak)
    np.testing.assert_allclose(hT, h[:, -1], rtol=0, atol=0)
    np.testing.assert_allclose(hT, hT_r, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(cT, cT_r, rtol=1e-12, atol=1e-15)
    grads = nb.layer_backward(np.zeros_like(h), (np.ones_like(hT), np.ones_like(cT)), cache)
    expected = reference.layer_backward(
        np.zeros_like(h), (np.ones_like(hT), np.ones_like(cT)),
        reference.layer_forward(params, x, t, lengths, h0, c0, leak)[2])
    for name in ("h0", "c0", "x"):  # written by the backward kernels in prange loops
        np.testing.assert_allclose(grads[name], expected[name], rtol=1e-12, atol=1e-14,
                                   err_msg=name)
