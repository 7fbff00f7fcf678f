"""Task generators: shapes, dtypes, balance, sampling statistics, period ranges, seeds, targets."""
import numpy as np
import pytest

from plstm_np import Dataset, tasks
from plstm_np.time_gate import time_gate


def valid_mask(data):
    return np.arange(data.t.shape[1])[None, :] < data.lengths[:, None]


def check_layout(data, n, D, dtype):
    """Common contract of every generator's Dataset."""
    assert isinstance(data, Dataset)
    N, T = data.t.shape
    assert N == n
    assert data.x.shape == (n, T, D) and data.x.dtype == dtype
    assert data.t.dtype == np.float64
    assert data.lengths.dtype == np.int64 and data.lengths.shape == (n,)
    assert data.lengths.min() >= 1 and data.lengths.max() == T
    assert np.all(np.isfinite(data.t)) and np.all(np.isfinite(data.x))
    assert np.all(np.diff(data.t, axis=1) >= 0), ("timestamps must be non-decreasing, "
                                                  "padding included")
    valid = valid_mask(data)
    assert np.all(data.x[~valid] == 0), "padding of x must be 0"
    last = data.t[np.arange(n), data.lengths - 1]
    assert np.all(data.t == np.where(valid, data.t, last[:, None])), ("padding of t = "
                                                                      "last valid time")


# ----------------------------------------------------------------------------- frequency task

@pytest.mark.parametrize("sampling", ["standard", "high_res", "async"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_frequency_layout_and_balance(sampling, dtype):
    data = tasks.frequency_discrimination(200, sampling, rng=0, dtype=dtype)
    check_layout(data, 200, 1, dtype)
    assert data.y.dtype == np.int64
    assert np.bincount(data.y).tolist() == [100, 100]
    odd = tasks.frequency_discrimination(7, sampling, rng=0)
    assert sorted(np.bincount(odd.y).tolist()) == [3, 4]


@pytest.mark.parametrize("sampling,step", [("standard", 1.0), ("high_res", 0.1)])
def test_frequency_regular_sampling(sampling, step):
    data, info = tasks.frequency_discrimination(500, sampling, rng=1, return_info=True)
    valid = valid_mask(data)
    gaps = np.diff(data.t, axis=1)[valid[:, 1:]]
    np.testing.assert_allclose(gaps, step, rtol=0, atol=1e-9)
    first = data.t[:, 0]
    last = data.t[np.arange(500), data.lengths - 1]
    np.testing.assert_allclose(first, info["start"])
    end = info["start"] + info["duration"]
    assert np.all(last < end) and np.all(last + step >= end - 1e-9), "samples cover the window"
    assert np.all(info["duration"] >= 15) and np.all(info["duration"] <= 125)
    assert np.all(info["start"] >= 0) and np.all(end <= 125 + 1e-9)


def test_frequency_async_sampling_statistics():
    data, info = tasks.frequency_discrimination(4000, "async", rng=2, return_info=True)
    L = data.lengths
    assert L.min() >= 15 and L.max() <= 125
    assert abs(L.mean() - 70.0) < 2.0                      # U{15..125}: mean 70, se ~0.5
    assert L.min() <= 17 and L.max() >= 123
    valid = valid_mask(data)
    rel = (data.t - info["start"][:, None]) / info["duration"][:, None]
    assert np.all((rel[valid] >= 0) & (rel[valid] <= 1))
    assert abs(rel[valid].mean() - 0.5) < 0.01             # uniform times over the window
    assert abs(np.mean(rel[valid] < 0.25) - 0.25) < 0.01
    assert abs(info["duration"].mean() - 70.0) < 2.0       # U(15, 125)
    # standard sampling is regular, async is not
    assert np.std(np.diff(data.t[0, :L[0]])) > 0.01


def test_frequency_period_ranges():
    data, info = tasks.frequency_discrimination(4000, "async", rng=3, return_info=True)
    T, y = info["period"], data.y
    assert np.all((T[y == 1] > 5) & (T[y == 1] < 6))
    T0 = T[y == 0]
    assert np.all((T0 > 1) & (T0 < 100)) and not np.any((T0 >= 5) & (T0 <= 6))
    # log-uniform on (1, 5) U (6, 100): P(T < 5) = log 5 / (log 5 + log(100/6)) = 0.364
    assert abs(np.mean(T0 < 5) - np.log(5) / (np.log(5) + np.log(100 / 6))) < 0.03
    assert abs(np.mean(np.log(T0[T0 > 6])) - (np.log(6) + np.log(100)) / 2) < 0.06
    assert np.all((info["phase"] >= 0) & (info["phase"] < 2 * np.pi))
    # the amplitude is the documented sine of the drawn parameters
    expected = np.sin(2 * np.pi * data.t / T[:, None] + info["phase"][:, None])
    valid = valid_mask(data)
    np.testing.assert_allclose(data.x[..., 0][valid], expected[valid], atol=1e-12)


def estimated_periods(data):
    """Period of each high-resolution sine from its interpolated zero crossings (NaN if < 3)."""
    out = np.full(len(data), np.nan)
    for i in range(len(data)):
        n = data.lengths[i]
        a, t = data.x[i, :n, 0], data.t[i, :n]
        k = np.flatnonzero(np.sign(a[:-1]) * np.sign(a[1:]) < 0)
        if len(k) >= 3:
            tc = t[k] - a[k] * (t[k + 1] - t[k]) / (a[k + 1] - a[k])
            out[i] = 2 * (tc[-1] - tc[0]) / (len(tc) - 1)
    return out


def test_frequency_signal_period_measured_from_the_data():
    data = tasks.frequency_discrimination(300, "high_res", rng=4)
    est = estimated_periods(data)
    ones = est[(data.y == 1) & np.isfinite(est)]
    assert len(ones) > 100 and np.all((ones > 4.95) & (ones < 6.05))
    zeros = est[(data.y == 0) & np.isfinite(est)]
    assert len(zeros) > 50 and not np.any((zeros > 5.05) & (zeros < 5.95))


def test_frequency_seed_reproducibility():
    a = tasks.frequency_discrimination(50, "async", rng=7)
    b = tasks.frequency_discrimination(50, "async", rng=np.random.default_rng(7))
    c = tasks.frequency_discrimination(50, "async", rng=8)
    for name in ("x", "t", "y", "lengths"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.t.shape != c.t.shape or not np.array_equal(a.t, c.t)
    gen = np.random.default_rng(0)
    first, second = (tasks.frequency_discrimination(20, rng=gen) for _ in range(2))
    assert not np.array_equal(first.x[:, :10], second.x[:, :10]), "a Generator advances"


def test_frequency_bad_input():
    with pytest.raises(ValueError, match="sampling"):
        tasks.frequency_discrimination(10, "sometimes")
    with pytest.raises(ValueError, match="n"):
        tasks.frequency_discrimination(0)
    with pytest.raises(TypeError, match="n"):
        tasks.frequency_discrimination(2.5)
    with pytest.raises(TypeError, match="dtype"):
        tasks.frequency_discrimination(10, dtype=np.int32)
    with pytest.raises(TypeError, match="rng"):
        tasks.frequency_discrimination(10, rng="seed")
    with pytest.raises(ValueError, match=r"target_range|period_range"):
        tasks.frequency_discrimination(10, target_range=(50, 200))
    with pytest.raises(ValueError, match="duration_range"):
        tasks.frequency_discrimination(10, duration_range=(15, 200))


# ----------------------------------------------------------------------------- superimposed

def test_superimposed_frequencies():
    data, info = tasks.superimposed_frequencies(2000, rng=5, return_info=True)
    check_layout(data, 2000, 1, np.float64)
    y = data.y
    assert np.bincount(y).tolist() == [1000, 1000]
    T1, T2 = info["period1"], info["period2"]
    band1, band2 = (T1 > 5) & (T1 < 6), (T2 > 13) & (T2 < 15)
    assert np.all(band1[y == 1] & band2[y == 1])
    assert not np.any(band1[y == 0] & band2[y == 0])
    assert np.all((T1 > 1) & (T1 < 100) & (T2 > 1) & (T2 < 100))
    assert np.mean(band1[y == 0]) < 0.1, "class 0 periods are log-uniform over (1, 100)"
    valid = valid_mask(data)
    expected = (np.sin(2 * np.pi * data.t / T1[:, None] + info["phase1"][:, None])
                + np.sin(2 * np.pi * data.t / T2[:, None] + info["phase2"][:, None]))
    np.testing.assert_allclose(data.x[..., 0][valid], expected[valid], atol=1e-12)
    assert not np.allclose(info["phase1"], info["phase2"])
    assert 15 <= data.lengths.min() and data.lengths.max() <= 125   # asynchronous by default
    a = tasks.superimposed_frequencies(30, "standard", rng=9)
    b = tasks.superimposed_frequencies(30, "standard", rng=9)
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_allclose(np.diff(a.t[0, :a.lengths[0]]), 1.0)


# ----------------------------------------------------------------------------- adding task

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adding_task(dtype):
    data = tasks.adding_task(400, rng=6, dtype=dtype)
    check_layout(data, 400, 2, dtype)
    L = data.lengths
    assert L.min() >= 490 and L.max() <= 510 and len(np.unique(L)) > 10
    assert data.y.shape == (400, 1) and data.y.dtype == dtype
    valid = valid_mask(data)
    values, marker = data.x[..., 0].astype(np.float64), data.x[..., 1]
    assert np.all(np.abs(values[valid]) <= 0.5)
    assert set(np.unique(marker)) <= {0.0, 1.0}
    assert np.all(marker.sum(axis=1) == 2)
    for i in range(400):
        first, second = np.flatnonzero(marker[i])
        assert first < 0.1 * L[i], "first marker in the first 10%"
        assert second >= L[i] / 2 and second < L[i], "second marker in the last half"
        assert data.y[i, 0] == pytest.approx(values[i, first] + values[i, second], abs=1e-6)
    np.testing.assert_array_equal(data.t[0, :L[0]], np.arange(L[0]))
    # the target's variance: two independent U(-0.5, 0.5) values, 2 / 12
    assert abs(np.var(data.y.astype(np.float64)) - 2 / 12) < 0.03
    again = tasks.adding_task(400, rng=6, dtype=dtype)
    np.testing.assert_array_equal(again.x, data.x)
    np.testing.assert_array_equal(again.y, data.y)
    with pytest.raises(ValueError, match="length_range"):
        tasks.adding_task(5, length_range=(5, 8))


# ----------------------------------------------------------------------------- multi-rate fusion

def test_multirate_fusion_streams():
    data, info = tasks.multirate_fusion(1000, rng=10, return_info=True)
    check_layout(data, 1000, 2, np.float64)
    stream, t = info["stream"], data.t[0]
    assert np.all(data.t == t) and np.all(np.diff(t) > 0)
    slow, fast = t[stream == 0], t[stream == 1]
    np.testing.assert_allclose(slow, 5 + 40 * np.arange(25))     # 25 Hz
    np.testing.assert_allclose(fast, 10 * np.arange(100))        # 100 Hz
    assert np.all(data.x[:, stream == 0, 1] == 0) and np.all(data.x[:, stream == 1, 0] == 0)
    assert np.all(np.abs(data.x[:, stream == 0, 0]) > 0)
    assert np.bincount(data.y).tolist() == [500, 500]


def test_multirate_label_needs_both_streams():
    data, info = tasks.multirate_fusion(2000, rng=11, return_info=True)
    stream = info["stream"]
    a = data.x[:, stream == 0, 0]                       # slow samples at 5 + 40k ms
    b = data.x[:, stream == 1, 1].reshape(-1, 25, 4)    # fast samples at 40k + {0, 10, 20, 30}
    b_near = b[:, :, :2].mean(axis=2)                   # the two fast samples around each slow one
    same_sign = np.sign((a * b_near).sum(axis=1)) > 0
    assert np.mean(same_sign == (data.y == 1)) > 0.97
    # each stream alone carries no class information (same statistics in both classes)
    for s in (a, b.reshape(len(b), -1)):
        m1, m0 = s[data.y == 1].mean(axis=0), s[data.y == 0].mean(axis=0)
        assert np.max(np.abs(m1 - m0)) < 0.15
        assert abs(s[data.y == 1].std() - s[data.y == 0].std()) < 0.03


def test_multirate_timing_opens_each_group_on_its_own_stream():
    data, info = tasks.multirate_fusion(2, rng=0, return_info=True)
    timing = tasks.multirate_timing(9)
    assert set(timing) == {"tau", "s", "r_on"}
    assert timing["tau"].tolist() == [40.0] * 5 + [10.0] * 4
    t, stream = data.t[0], info["stream"]
    k = time_gate(t[:, None], timing["tau"][None, :], timing["s"][None, :],
                  timing["r_on"][None, :], leak=0.0)
    slow_units, fast_units = slice(0, 5), slice(5, 9)
    np.testing.assert_allclose(k[stream == 0, slow_units], 1.0, atol=1e-9)
    np.testing.assert_allclose(k[stream == 1, fast_units], 1.0, atol=1e-9)
    assert np.all(k[stream == 1, slow_units] == 0) and np.all(k[stream == 0, fast_units] == 0)


def test_multirate_timing_builds_a_layer():
    from plstm_np import PhasedLSTM
    layer = PhasedLSTM(2, 6, **tasks.multirate_timing(6), learn_tau=False, rng=0)
    np.testing.assert_array_equal(layer.params["tau"], [40, 40, 40, 10, 10, 10])


def test_multirate_bad_input():
    with pytest.raises(ValueError, match="offsets"):
        tasks.multirate_fusion(4, offsets=(0.0, 0.0))
    with pytest.raises(ValueError, match="offsets"):
        tasks.multirate_fusion(4, offsets=(50.0, 0.0))
    with pytest.raises(ValueError, match="r_on"):
        tasks.multirate_timing(4, r_on=0.0)


# ----------------------------------------------------------------------------- digits

def test_sequential_mnist_784():
    data = tasks.sequential_mnist()
    check_layout(data, 10000, 1, np.float64)
    assert data.x.shape == (10000, 784, 1)
    assert data.x.min() == 0.0 and data.x.max() == 1.0
    # per-class counts of the MNIST test set (published)
    assert np.bincount(data.y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert data.y[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    np.testing.assert_array_equal(data.t[0], np.arange(784))
    # pixel-by-pixel = row-major: the first image's middle row sits at steps 14*28 .. 15*28
    image = data.x[0, :, 0].reshape(28, 28)
    assert image[:4].sum() == 0 and image[14].sum() > 0
    small = tasks.sequential_mnist(50, rng=3, dtype=np.float32)
    assert small.x.dtype == np.float32 and len(small) == 50
    np.testing.assert_array_equal(small.y, tasks.sequential_mnist(50, rng=3).y)


def test_sequential_digits_64():
    data = tasks.sequential_mnist(variant="digits64")
    check_layout(data, 1797, 1, np.float64)
    assert data.x.shape == (1797, 64, 1) and data.x.max() == 1.0 and data.x.min() == 0.0
    assert np.bincount(data.y).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    with pytest.raises(ValueError, match="variant"):
        tasks.sequential_mnist(variant="mnist")
    with pytest.raises(ValueError, match="n"):
        tasks.sequential_mnist(5000, variant="digits64")


def test_train_val_split_is_stratified():
    data = tasks.sequential_mnist(variant="digits64")
    train, val = tasks.train_val_split(data, 0.2, rng=0)
    assert len(train) + len(val) == len(data)
    counts, val_counts = np.bincount(data.y), np.bincount(val.y, minlength=10)
    assert np.all(np.abs(val_counts - 0.2 * counts) <= 0.5)
    # disjoint: every image appears once
    rows = np.concatenate([train.x[..., 0], val.x[..., 0]])
    assert len(np.unique(rows, axis=0)) == len(np.unique(data.x[..., 0], axis=0))
    with pytest.raises(ValueError, match="labels"):
        tasks.train_val_split(tasks.adding_task(4, rng=0), 0.5)


@pytest.mark.parametrize("name", sorted(tasks.TASKS))
def test_registry(name):
    data = tasks.TASKS[name](6, rng=0, dtype=np.float32)
    assert isinstance(data, Dataset) and len(data) == 6
    assert data.x.dtype == np.float32 and data.t.dtype == np.float64
    again = tasks.TASKS[name](6, rng=0, dtype=np.float32)
    np.testing.assert_array_equal(again.x, data.x)
