"""Task generators: the paper's synthetic tasks, multi-rate sensor fusion, and the digit data sets.

Every generator takes a seeded ``rng`` (a ``numpy.random.Generator``, an int seed or None) and
returns a :class:`~plstm_np.Dataset`: ``x`` (N, T, D) of ``dtype`` (float64 by default,
float32 allowed), ``t`` (N, T) float64 timestamps, ``lengths`` (N,) int64 and targets ``y``
(class labels (N,) int64, or regression targets (N, 1) of ``dtype``). Sequences of different
lengths are padded at the end to the longest one: ``x`` with 0 and ``t`` with the sequence's
last valid time, so padded timestamps stay finite and non-decreasing.

Time unit: **milliseconds** everywhere (frequency tasks, multi-rate fusion, N-MNIST); the
adding task and the pixel sequences use the step index as time (one step = 1 ms).

The Phased LSTM receives the timestamps through ``t``; the LSTM baseline
(:class:`plstm_np.LSTM`) appends ``t`` to its input itself, so ``x`` carries only the signal,
as in the paper where the inputs are (amplitude, timestamp).

=================  ==========================================  ============================
name in ``TASKS``  generator                                   paper
=================  ==========================================  ============================
``frequency``      :func:`frequency_discrimination`             section 3.1, Fig. 3
``superimposed``   :func:`superimposed_frequencies`             section 3.1, Fig. 4a
``adding``         :func:`adding_task`                          section 3.2
``nmnist``         :func:`nmnist_events`                        section 3.3
``multirate``      :func:`multirate_fusion`                     section 3.4's idea (no GRID)
``smnist``         :func:`sequential_mnist` (784 steps)          TensorFlow reimplementation
``digits``         :func:`sequential_mnist` (64 steps, 8x8)      quick runs
=================  ==========================================  ============================
"""
from __future__ import annotations

import functools

import numpy as np

from . import mnist as _mnist
from . import nmnist as _nmnist
from .dataset import Dataset
from .validation import as_rng, check_dtype, check_positive_int, valid_steps

__all__ = [
    "SAMPLING_STEP_MS", "SUPERIMPOSED_VARIANTS", "frequency_discrimination",
    "superimposed_frequencies", "adding_task", "multirate_fusion", "multirate_timing",
    "sequential_mnist", "nmnist_events", "train_val_split", "TASKS",
]

#: Sampling interval of the regular conditions of the frequency tasks, in ms.
SAMPLING_STEP_MS = {"standard": 1.0, "high_res": 0.1}
_SAMPLINGS = ("standard", "high_res", "async")
_TWO_PI = 2.0 * np.pi


# ----------------------------------------------------------------------------- helpers

def _check_range(value, name, *, integer=False, positive=False):
    """A (low, high) pair with low <= high (and > 0 if ``positive``)."""
    try:
        low, high = value
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a pair (low, high), got {value!r}") from None
    if not (np.isfinite(low) and np.isfinite(high) and low <= high):
        raise ValueError(f"{name} must be finite with low <= high, got {value!r}")
    if positive and low <= 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    if integer:
        return int(low), int(high)
    return float(low), float(high)


def _balanced_labels(n, rng):
    """n labels, half 0 and half 1 (one more 0 when n is odd), in random order."""
    return rng.permutation(np.arange(n, dtype=np.int64) % 2)


def _log_uniform_outside(rng, n, full, hole):
    """n draws log-uniform on ``full`` minus the interval ``hole`` (which lies inside it)."""
    (lo, hi), (a, b) = full, hole
    if not lo < a < b < hi:
        raise ValueError(f"the class-1 band {hole} must lie strictly inside period_range {full}")
    below, above = np.log(a / lo), np.log(hi / b)
    u = rng.uniform(0.0, below + above, n)
    return np.exp(np.where(u < below, np.log(lo) + u, np.log(b) + (u - below)))


def _pad_times(t, lengths):
    """Repeat every row's last valid time over its padding (in place); return t."""
    T = t.shape[1]
    pad = ~valid_steps(lengths, T)
    last = t[np.arange(len(t)), np.maximum(lengths - 1, 0)]
    t[pad] = np.broadcast_to(last[:, None], t.shape)[pad]
    return t


def _sample_times(rng, n, sampling, duration_range, window, num_points_range):
    """Event times of the frequency tasks (ms), padded, with lengths, starts and durations."""
    if sampling not in _SAMPLINGS:
        raise ValueError(f"sampling must be one of {_SAMPLINGS}, got {sampling!r}")
    d_lo, d_hi = _check_range(duration_range, "duration_range", positive=True)
    if d_hi > window:
        raise ValueError(f"duration_range {duration_range} must end before window = {window}")
    duration = rng.uniform(d_lo, d_hi, n)
    start = rng.uniform(0.0, window - duration)
    if sampling == "async":
        p_lo, p_hi = _check_range(num_points_range, "num_points_range", integer=True)
        if p_lo < 1:
            raise ValueError(f"num_points_range must start at >= 1, got {num_points_range}")
        lengths = rng.integers(p_lo, p_hi + 1, n).astype(np.int64)
        T = int(lengths.max())
        u = rng.random((n, T))
        u[~valid_steps(lengths, T)] = np.inf  # sorts the padding last
        u.sort(axis=1)
        t = start[:, None] + u * duration[:, None]
    else:
        step = SAMPLING_STEP_MS[sampling]
        # points start, start + step, ... strictly before start + duration
        lengths = np.ceil(duration / step).astype(np.int64)
        lengths -= (lengths - 1) * step >= duration
        T = int(lengths.max())
        t = start[:, None] + step * np.arange(T)[None, :]
    return _pad_times(t, lengths), lengths, start, duration


def _mask_padding(x, lengths):
    x[~valid_steps(lengths, x.shape[1])] = 0
    return x


# ----------------------------------------------------------------------------- frequency tasks

def frequency_discrimination(n, sampling="standard", *, rng=None, dtype=np.float64,
                             period_range=(1.0, 100.0), target_range=(5.0, 6.0),
                             duration_range=(15.0, 125.0), window=125.0,
                             num_points_range=(15, 125), return_info=False):
    """Frequency discrimination (paper section 3.1): is the sine's period between 5 and 6 ms?

    A sine ``sin(2 pi t / T + phase)`` with a random phase is observed from ``start`` for
    ``duration`` ms, ``duration ~ U(15, 125)`` and ``start ~ U(0, 125 - duration)``.
    Class 1: ``T ~ U(5, 6)`` ms; class 0: ``T`` log-uniform on ``(1, 5) U (6, 100)`` ms. The
    classes are balanced exactly (half of each, one more class 0 when ``n`` is odd).

    The authors' script (public_plstm's freq_task.py) trains with batches of 32 freshly drawn
    every epoch (157 batches, 5,024 sequences), for 70 epochs, and validates on 512 fresh
    sequences; it forces half of every batch into class 1 and draws the other half
    log-uniformly on (1, 100) ms, which also lands in class 1 about 4 % of the time (about
    52 % class 1); here the classes are balanced exactly.

    Parameters
    ----------
    n : int
        Number of sequences.
    sampling : {'standard', 'high_res', 'async'}
        ``standard``: one sample every 1 ms; ``high_res``: every 0.1 ms; ``async``: a number
        of points ~ U{15..125} at sorted times drawn uniformly over the observation window.
    rng : Generator, int or None
    dtype : float32 or float64
        dtype of ``x``.
    period_range, target_range : (float, float)
        Periods (ms) of class 0 (outside ``target_range``) and class 1 (inside).
    duration_range : (float, float)
        Observation length in ms.
    window : float
        Every observation lies in ``[0, window]`` ms.
    num_points_range : (int, int)
        Inclusive range of the number of points in the ``async`` condition.
    return_info : bool
        Also return the drawn ``period``, ``phase``, ``start`` and ``duration`` (ms).

    Returns
    -------
    Dataset
        ``x`` (N, T, 1): amplitude; ``t`` (N, T) float64: time in ms; ``lengths`` (N,);
        ``y`` (N,) int64 in {0, 1}.
    info : dict of ndarray, only if ``return_info``

    Examples
    --------
    >>> train = frequency_discrimination(10_000, sampling="async", rng=0)
    """
    n, dtype, rng = check_positive_int(n, "n"), check_dtype(dtype), as_rng(rng)
    full = _check_range(period_range, "period_range", positive=True)
    band = _check_range(target_range, "target_range", positive=True)
    y = _balanced_labels(n, rng)
    period = np.where(y == 1, rng.uniform(*band, n), _log_uniform_outside(rng, n, full, band))
    phase = rng.uniform(0.0, _TWO_PI, n)
    t, lengths, start, duration = _sample_times(rng, n, sampling, duration_range, float(window),
                                                num_points_range)
    x = np.sin(_TWO_PI * t / period[:, None] + phase[:, None])
    x = _mask_padding(x, lengths)[:, :, None].astype(dtype)
    data = Dataset(x=x, t=t, y=y, lengths=lengths)
    if return_info:
        return data, dict(period=period, phase=phase, start=start, duration=duration)
    return data


#: The superimposed task's observation as the paper's text defines it and as the authors'
#: script (``SinWaveComboIterator`` in public_plstm's freq_task.py) draws it.
SUPERIMPOSED_VARIANTS = {
    "paper": dict(angular=_TWO_PI, duration_range=(15.0, 125.0), window=125.0,
                  num_points_range=(15, 125)),
    "authors": dict(angular=1.0, duration_range=(1.0, 100.0), window=100.0,
                    num_points_range=(100, 999)),
}


def superimposed_frequencies(n, sampling="async", *, rng=None, dtype=np.float64,
                             period_range=(1.0, 100.0), target_ranges=((5.0, 6.0), (13.0, 15.0)),
                             variant="paper", duration_range=None, window=None,
                             num_points_range=None, return_info=False):
    """Two superimposed sines (paper section 3.1, Fig. 4a): are both periods in their bands?

    ``x = sin(w t / T1 + phase1) + sin(w t / T2 + phase2)`` with independent phases.
    Class 1: ``T1 ~ U(5, 6)`` and ``T2 ~ U(13, 15)`` ms. Class 0, the complement: ``(T1, T2)``
    log-uniform on ``(1, 100)^2`` ms, redrawn while both fall in their bands. Balanced
    classes; asynchronous sampling by default, as in the paper's figure.

    Two variants, which differ (the paper's text against the authors' script):

    - ``'paper'``: ``w = 2 pi`` (T is the period), observation window and sampling as in
      :func:`frequency_discrimination` (durations U(15, 125) ms, 15-125 points).
    - ``'authors'``: ``w = 1`` (the script computes ``sin(t / T - shift)``, so the true
      periods are ``2 pi T``: 31-38 and 82-94 ms for class 1), durations U(1, 100) ms in a
      100 ms window and 100-999 points.

    Parameters
    ----------
    n : int
    sampling : {'standard', 'high_res', 'async'}
    rng : Generator, int or None
    dtype : float32 or float64
    period_range : (float, float)
        Range (ms) of the log-uniform class-0 periods.
    target_ranges : ((float, float), (float, float))
        The class-1 bands of T1 and T2 (ms).
    variant : {'paper', 'authors'}
    duration_range, window, num_points_range
        As in :func:`frequency_discrimination`; None: the variant's.
    return_info : bool
        Also return ``period1``, ``period2``, ``phase1``, ``phase2``, ``start``, ``duration``.

    Returns
    -------
    Dataset
        ``x`` (N, T, 1) the summed amplitude (in [-2, 2]), ``t`` (N, T) ms, ``lengths``,
        ``y`` (N,) int64.
    info : dict of ndarray, only if ``return_info``
    """
    n, dtype, rng = check_positive_int(n, "n"), check_dtype(dtype), as_rng(rng)
    if variant not in SUPERIMPOSED_VARIANTS:
        raise ValueError(f"variant must be one of {tuple(SUPERIMPOSED_VARIANTS)}, "
                         f"got {variant!r}")
    chosen = SUPERIMPOSED_VARIANTS[variant]
    angular = chosen["angular"]
    duration_range = chosen["duration_range"] if duration_range is None else duration_range
    window = chosen["window"] if window is None else window
    num_points_range = (chosen["num_points_range"] if num_points_range is None
                        else num_points_range)
    lo, hi = _check_range(period_range, "period_range", positive=True)
    bands = [_check_range(b, f"target_ranges[{i}]", positive=True)
             for i, b in enumerate(target_ranges)]
    if len(bands) != 2:
        raise ValueError(f"target_ranges must hold two (low, high) bands, got {target_ranges!r}")
    y = _balanced_labels(n, rng)
    periods = np.exp(rng.uniform(np.log(lo), np.log(hi), (n, 2)))

    def in_bands(p):
        return np.all([(p[:, k] > a) & (p[:, k] < b) for k, (a, b) in enumerate(bands)], axis=0)

    redraw = (y == 0) & in_bands(periods)
    while redraw.any():
        periods[redraw] = np.exp(rng.uniform(np.log(lo), np.log(hi), (int(redraw.sum()), 2)))
        redraw = (y == 0) & in_bands(periods)
    for k, (a, b) in enumerate(bands):
        periods[y == 1, k] = rng.uniform(a, b, int((y == 1).sum()))
    phases = rng.uniform(0.0, _TWO_PI, (n, 2))
    t, lengths, start, duration = _sample_times(rng, n, sampling, duration_range, float(window),
                                                num_points_range)
    x = sum(np.sin(angular * t / periods[:, k, None] + phases[:, k, None]) for k in range(2))
    x = _mask_padding(x, lengths)[:, :, None].astype(dtype)
    data = Dataset(x=x, t=t, y=y, lengths=lengths)
    if return_info:
        return data, dict(period1=periods[:, 0], period2=periods[:, 1], phase1=phases[:, 0],
                          phase2=phases[:, 1], start=start, duration=duration)
    return data


# ----------------------------------------------------------------------------- adding task

def adding_task(n, *, rng=None, dtype=np.float64, length_range=(490, 510),
                value_range=(-0.5, 0.5), return_info=False):
    """The adding task (paper section 3.2): remember two marked values and output their sum.

    Each sequence has a length ``L ~ U{490..510}`` and values ``~ U(-0.5, 0.5)``. Exactly two
    steps are marked: one in the first 10% (index in ``[0, L // 10)``) and one in the last half
    (index in ``[L - L // 2, L)``). The target is the sum of the two marked values; the loss
    is the mean squared error.

    Parameters
    ----------
    n : int
    rng : Generator, int or None
    dtype : float32 or float64
        dtype of ``x`` and ``y``.
    length_range : (int, int)
        Inclusive range of the sequence lengths (the low end must be >= 10).
    value_range : (float, float)
    return_info : bool
        Also return the marked indices ``first`` and ``second``.

    Returns
    -------
    Dataset
        ``x`` (N, T, 2): channel 0 the value, channel 1 the marker (1.0 at the two marked
        steps, else 0); ``t`` (N, T) float64: the step index 0, 1, ... (1 step = 1 ms);
        ``lengths`` (N,); ``y`` (N, 1) of ``dtype``: the sum.
    info : dict of ndarray, only if ``return_info``
    """
    n, dtype, rng = check_positive_int(n, "n"), check_dtype(dtype), as_rng(rng)
    l_lo, l_hi = _check_range(length_range, "length_range", integer=True)
    if l_lo < 10:
        raise ValueError(f"length_range must start at >= 10 (a first 10% to mark), "
                         f"got {length_range}")
    v_lo, v_hi = _check_range(value_range, "value_range")
    lengths = rng.integers(l_lo, l_hi + 1, n).astype(np.int64)
    T = int(lengths.max())
    values = _mask_padding(rng.uniform(v_lo, v_hi, (n, T)), lengths)
    first = rng.integers(0, lengths // 10)
    second = rng.integers(lengths - lengths // 2, lengths)
    rows = np.arange(n)
    marker = np.zeros((n, T))
    marker[rows, first] = 1.0
    marker[rows, second] = 1.0
    x = np.stack([values, marker], axis=2).astype(dtype)
    y = (values[rows, first] + values[rows, second])[:, None].astype(dtype)
    t = _pad_times(np.tile(np.arange(T, dtype=np.float64), (n, 1)), lengths)
    data = Dataset(x=x, t=t, y=y, lengths=lengths)
    if return_info:
        return data, dict(first=first, second=second)
    return data


# ----------------------------------------------------------------------------- multi-rate fusion

def _stream_times(duration, rates, offsets):
    """Sample times (ms) of each stream, regular at ``rate`` Hz from ``offset`` ms."""
    times = []
    for k, (rate, offset) in enumerate(zip(rates, offsets)):
        if not rate > 0:
            raise ValueError(f"rates[{k}] must be > 0 Hz, got {rate}")
        period = 1000.0 / rate
        if not 0 <= offset < period:
            raise ValueError(f"offsets[{k}] must lie in [0, {period}) ms, got {offset}")
        times.append(offset + period * np.arange(int(np.ceil((duration - offset) / period))))
    return times


def multirate_fusion(n, *, rng=None, dtype=np.float64, duration=1000.0, rates=(25.0, 100.0),
                     offsets=(5.0, 0.0), frequency_range=(1.0, 3.0), gain_range=(0.5, 1.5),
                     noise=0.1, return_info=False):
    """Multi-rate sensor fusion: do a 25 Hz sensor and a 100 Hz sensor see the same rhythm?

    A synthetic stand-in for the paper's lip-reading experiment (section 3.4: video at 25 fps,
    audio features at 100 Hz; the GRID corpus is not available here). Two sensors observe a
    sine of frequency ``f ~ U(1, 3)`` Hz and random phase, each with its own gain
    ``~ U(0.5, 1.5)`` and Gaussian noise (std ``noise``):

    - the *slow* sensor (channel 0) samples ``sin(2 pi f t + phase)`` at 25 Hz, at
      ``t = 5, 45, 85, ...`` ms;
    - the *fast* sensor (channel 1) samples ``sin(2 pi f t + phase + delta)`` at 100 Hz, at
      ``t = 0, 10, 20, ...`` ms.

    Class 1: the sensors are in phase, ``delta ~ U(-pi/4, pi/4)``; class 0: in anti-phase,
    ``delta ~ pi + U(-pi/4, pi/4)``. Each stream alone is a random-phase sine whatever the
    class, so only the relation between the two streams tells the class.

    The two streams are merged in time order without interpolation: every step is one sample
    of one sensor, carrying its value in that sensor's channel and 0 in the other. A Phased
    LSTM with hand-set timing (:func:`multirate_timing`) gives each sensor its own neurons,
    whose time gates open exactly when that sensor's samples arrive.

    Parameters
    ----------
    n : int
    rng : Generator, int or None
    dtype : float32 or float64
    duration : float
        Length of every sequence in ms (1000 ms: 25 + 100 = 125 steps).
    rates : (float, float)
        Sampling rates of the slow and fast sensor, in Hz.
    offsets : (float, float)
        Time of each sensor's first sample in ms (the two streams must never coincide).
    frequency_range : (float, float)
        Frequency of the observed rhythm, in Hz.
    gain_range : (float, float)
        Per-sensor gain.
    noise : float
        Standard deviation of the additive sensor noise.
    return_info : bool
        Also return ``frequency``, ``phase``, ``delta``, ``gains`` (N, 2) and ``stream``
        (T,) int (0 = slow, 1 = fast sensor at each step).

    Returns
    -------
    Dataset
        ``x`` (N, T, 2), ``t`` (N, T) float64 in ms (the same for every sequence),
        ``lengths`` (N,) = T, ``y`` (N,) int64.
    info : dict, only if ``return_info``
    """
    n, dtype, rng = check_positive_int(n, "n"), check_dtype(dtype), as_rng(rng)
    if len(rates) != 2 or len(offsets) != 2:
        raise ValueError(f"rates and offsets must each hold 2 values, got {rates!r}, {offsets!r}")
    if not duration > 0:
        raise ValueError(f"duration must be > 0 ms, got {duration}")
    if not noise >= 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    f_lo, f_hi = _check_range(frequency_range, "frequency_range", positive=True)
    g_lo, g_hi = _check_range(gain_range, "gain_range")
    slow, fast = _stream_times(float(duration), rates, offsets)
    if np.intersect1d(slow, fast).size:
        raise ValueError(f"the two streams share sample times; choose offsets {offsets!r} "
                         f"so they never coincide")
    times = np.concatenate([slow, fast])
    stream = np.repeat([0, 1], [len(slow), len(fast)])
    order = np.argsort(times, kind="stable")
    times, stream = times[order], stream[order]
    T = len(times)

    y = _balanced_labels(n, rng)
    frequency = rng.uniform(f_lo, f_hi, n)
    phase = rng.uniform(0.0, _TWO_PI, n)
    delta = rng.uniform(-np.pi / 4, np.pi / 4, n) + np.pi * (y == 0)
    gains = rng.uniform(g_lo, g_hi, (n, 2))
    angle = _TWO_PI * frequency[:, None] * times[None, :] / 1000.0 + phase[:, None]
    angle = angle + delta[:, None] * (stream == 1)[None, :]
    value = gains[:, stream] * np.sin(angle) + noise * rng.standard_normal((n, T))
    x = np.zeros((n, T, 2))
    x[:, stream == 0, 0] = value[:, stream == 0]
    x[:, stream == 1, 1] = value[:, stream == 1]
    t = np.tile(times, (n, 1))
    data = Dataset(x=x.astype(dtype), t=t, y=y, lengths=np.full(n, T, np.int64))
    if return_info:
        return data, dict(frequency=frequency, phase=phase, delta=delta, gains=gains,
                          stream=stream)
    return data


def multirate_timing(hidden_size, *, rates=(25.0, 100.0), offsets=(5.0, 0.0), r_on=0.05):
    """Hand-set per-neuron time-gate parameters for :func:`multirate_fusion`.

    The neurons are split evenly between the sensors (the first group gets the extra neuron
    when ``hidden_size`` is odd). A neuron of a sensor sampled at ``rate`` Hz from ``offset``
    ms gets the sensor's sampling period ``tau = 1000 / rate`` ms and the shift
    ``s = offset - r_on * tau / 2``, so its gate is fully open (k = 1, the peak of the open
    phase, phi = r_on / 2) exactly when that sensor's samples arrive, and closed at the
    other sensor's samples (with the defaults: 2 ms and 0.5 ms wide open windows, 5 ms from
    the other stream's samples).

    Parameters
    ----------
    hidden_size : int
    rates, offsets : (float, float)
        As given to :func:`multirate_fusion`.
    r_on : float
        Open ratio of every neuron.

    Returns
    -------
    dict
        ``tau``, ``s``, ``r_on``: float64 arrays (hidden_size,), to pass on as
        ``PhasedLSTM(2, hidden_size, **multirate_timing(hidden_size), learn_tau=False)``.
    """
    H = check_positive_int(hidden_size, "hidden_size")
    if not 0 < r_on <= 1:
        raise ValueError(f"r_on must lie in (0, 1], got {r_on}")
    if len(rates) != len(offsets):
        raise ValueError(f"rates and offsets must have the same length, got {rates!r}, {offsets!r}")
    groups = np.array_split(np.arange(H), len(rates))
    tau, s = np.empty(H), np.empty(H)
    for k, (members, rate, offset) in enumerate(zip(groups, rates, offsets)):
        if not rate > 0:
            raise ValueError(f"rates[{k}] must be > 0 Hz, got {rate}")
        tau[members] = 1000.0 / rate
        s[members] = offset - r_on * tau[members] / 2
    return dict(tau=tau, s=s, r_on=np.full(H, float(r_on)))


# ----------------------------------------------------------------------------- real data

def sequential_mnist(n=None, variant="mnist784", *, rng=None, dtype=np.float64):
    """Pixel-by-pixel digit classification: one pixel per step, row by row.

    ``mnist784``: the 10,000 MNIST test images (the training images are not shipped; split
    these with :func:`train_val_split`), 784 steps, as in the TensorFlow reimplementation's
    MNIST experiment. ``digits64``: the 1,797 UCI 8x8 digits, 64 steps, for quick runs.

    Parameters
    ----------
    n : int, optional
        Draw ``n`` images at random (without replacement, kept in file order); default all.
    variant : {'mnist784', 'digits64'}
    rng : Generator, int or None
        Used only to draw the ``n`` images.
    dtype : float32 or float64

    Returns
    -------
    Dataset
        ``x`` (N, T, 1): pixel intensity scaled to [0, 1] (MNIST / 255, digits / 16);
        ``t`` (N, T) float64: the pixel index 0..T-1; ``lengths`` (N,) = T;
        ``y`` (N,) int64: the digit.
    """
    dtype = check_dtype(dtype)
    if variant == "mnist784":
        images, labels = _mnist.load_mnist()
        scale = 255.0
    elif variant == "digits64":
        images, labels = _mnist.load_digits()
        scale = 16.0
    else:
        raise ValueError(f"variant must be 'mnist784' or 'digits64', got {variant!r}")
    if n is not None:
        n = check_positive_int(n, "n")
        if n > len(images):
            raise ValueError(f"n must be at most {len(images)} for {variant}, got {n}")
        keep = np.sort(as_rng(rng).choice(len(images), n, replace=False))
        images, labels = images[keep], labels[keep]
    N, T = len(images), images[0].size
    x = (images.reshape(N, T, 1) / scale).astype(dtype)
    t = np.tile(np.arange(T, dtype=np.float64), (N, 1))
    return Dataset(x=x, t=t, y=labels.astype(np.int64), lengths=np.full(N, T, np.int64))


def nmnist_events(n=None, *, rho=1.0, rng=None, dtype=np.float64, folder=None):
    """N-MNIST as event sequences (paper section 3.3), from the shipped 1,000 recordings.

    See :mod:`plstm_np.nmnist` for the file format and the encoding: ``tokens`` (pixel address
    for a 40-dimensional embedding), ``x`` (N, T, 1) polarity (+1 ON, -1 OFF), ``t`` in ms.

    Parameters
    ----------
    n : int, optional
        Draw ``n`` recordings at random (kept in file order); default all.
    rho : float in (0, 1]
        Event inclusion probability.
    rng : Generator, int or None
        Draws the recordings and the event subsampling.
    dtype : float32 or float64
    folder : str or Path, optional
        A folder of ``.bin``/``.bs2`` files instead of the shipped ones (labels as in
        :func:`plstm_np.nmnist.load_nmnist`).

    Returns
    -------
    Dataset
    """
    rng = as_rng(rng)
    recordings, labels = _nmnist.load_nmnist(folder)
    if n is not None:
        n = check_positive_int(n, "n")
        if n > len(recordings):
            raise ValueError(f"n must be at most {len(recordings)}, got {n}")
        keep = np.sort(rng.choice(len(recordings), n, replace=False))
        recordings, labels = [recordings[i] for i in keep], labels[keep]
    return _nmnist.to_dataset(recordings, labels, rho=rho, rng=rng, dtype=dtype)


def train_val_split(data, fraction=0.1, rng=None):
    """Split a classification Dataset into stratified train and validation parts.

    Parameters
    ----------
    data : Dataset
        With class labels ``y`` (N,) of ints.
    fraction : float in [0, 1]
        Share of every class that goes to validation.
    rng : Generator, int or None

    Returns
    -------
    train, val : Dataset
    """
    if not isinstance(data, Dataset):
        raise TypeError(f"data must be a plstm_np.Dataset, got {type(data).__name__}")
    if data.y.ndim != 1 or data.y.dtype.kind not in "iu":
        raise ValueError(f"data.y must hold class labels (N,) of ints, got shape {data.y.shape} "
                         f"and dtype {data.y.dtype}")
    train_idx, val_idx = _nmnist.stratified_split(data.y, fraction, rng)
    return data[train_idx], data[val_idx]


#: Task name -> generator; every generator is called as ``TASKS[name](n, rng=..., dtype=...)``.
TASKS = {
    "frequency": frequency_discrimination,
    "superimposed": superimposed_frequencies,
    "adding": adding_task,
    "nmnist": nmnist_events,
    "multirate": multirate_fusion,
    "smnist": functools.partial(sequential_mnist, variant="mnist784"),
    "digits": functools.partial(sequential_mnist, variant="digits64"),
}
