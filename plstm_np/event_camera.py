"""An event-camera simulator: N-MNIST-like recordings made from still images.

N-MNIST (Orchard et al. 2015) was recorded by moving an ATIS camera (34 x 34 pixels) in
three saccades in front of a monitor showing an MNIST digit. This module makes recordings
of that kind from any grey image, for pretraining on more digits than the 1,000 real
recordings that ship (see :mod:`plstm_np.nmnist`, whose event layout it writes).

The model, per pixel ``(x, y)`` of the sensor, is the usual DVS one (Lichtsteiner et al.
2008): the log intensity ``L = log(I + b)`` of the image, moved along the saccade path
``p(t)`` and sampled at the pixel (bilinear interpolation, ``scipy.ndimage.shift``, 0
outside the image), is compared with the level ``L_ref`` at the pixel's last event::

    L(t) - L_ref >= C_on    ->  ON event (polarity 1),  L_ref += C_on   (repeated while it holds)
    L_ref - L(t) >= C_off   ->  OFF event (polarity 0), L_ref -= C_off

``C_on`` and ``C_off`` are drawn once per pixel, ``N(threshold, threshold_std)`` (clipped
at ``0.2 * threshold``), as real pixels' thresholds vary. ``L`` is evaluated every ``dt``
ms and taken as linear in between, so an event's time is when that line crosses its level.
``L_ref`` starts at the pixel's first ``L``.

The saccades: three moves of ``SACCADE_MS`` ms each, centred at 50, 150 and 250 ms, along
the triangle :data:`SACCADE_VERTICES` (pixels, back to the start), each with a smooth
(raised-cosine) velocity profile. The triangle and the timing were measured on the shipped
recordings (the centroid of the events at rest between saccades: (14.3, 15.9), (16.5, 19.9),
(19.4, 15.9), (15.4, 15.5); event rates peak at 50, 150 and 250 ms; recordings last about
300 ms). A 28 x 28 image is placed at :data:`IMAGE_OFFSET` in the 34 x 34 sensor. The
default threshold, 0.375, gives MNIST test digits about as many events as the real
recordings have (measured: 3,961 against 3,878 on 50 of each). The real digits look a
little larger on the sensor (the 1st-99th percentile of the events' x spans 6-27 there,
7.7-25.1 here; y 5.9-29.9 and 5.8-28.2): the monitor's scaling is not modelled.

Timestamps are integer microseconds, as :func:`plstm_np.nmnist.read_events` returns them, so
:func:`plstm_np.nmnist.to_dataset` encodes simulated and real recordings alike.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from .mnist import load_mnist
from .nmnist import EVENT_DTYPE, SENSOR_SIZE
from .validation import as_rng, check_real

__all__ = ["SACCADE_VERTICES", "SACCADE_CENTRES_MS", "SACCADE_MS", "DURATION_MS",
           "IMAGE_OFFSET", "PRETRAINING_IMAGES", "saccade_path", "simulate_events",
           "simulate_saccades", "simulate_mnist"]

#: The image's displacement (x, y) in pixels at rest before, between and after the saccades.
SACCADE_VERTICES = np.array([[0.0, 0.0], [2.2, 4.0], [5.1, 0.0], [0.0, 0.0]])
#: Times (ms) at which each saccade is half done.
SACCADE_CENTRES_MS = (50.0, 150.0, 250.0)
#: Duration of one saccade (ms).
SACCADE_MS = 80.0
#: Length of a recording (ms).
DURATION_MS = 300.0
#: Where a 28 x 28 image's top-left corner sits on the 34 x 34 sensor (x, y) at rest.
IMAGE_OFFSET = (0.0, 1.0)
#: The shipped MNIST test images that simulated recordings may be made of: 100 to 9999.
#: Images 0-99 are held back, never trained on. (The shipped real recordings are of MNIST
#: *training* images 0-999, so no simulated recording shows a digit a real one shows.)
PRETRAINING_IMAGES = range(100, 10_000)


def saccade_path(t_ms):
    """The image's displacement (x, y) in pixels at times ``t_ms`` (array, ms): (T, 2)."""
    t = np.asarray(t_ms, dtype=np.float64)
    pos = np.broadcast_to(SACCADE_VERTICES[0], t.shape + (2,)).copy()
    for k, centre in enumerate(SACCADE_CENTRES_MS):
        u = np.clip((t - centre) / SACCADE_MS + 0.5, 0.0, 1.0)  # 0 -> 1 across saccade k
        ease = 0.5 - 0.5 * np.cos(np.pi * u)                    # raised-cosine velocity
        pos += ease[..., None] * (SACCADE_VERTICES[k + 1] - SACCADE_VERTICES[k])
    return pos


def simulate_events(frames, times_ms, *, threshold=0.375, threshold_std=0.03, rng=None):
    """Events of a DVS sensor watching a sequence of log-intensity frames.

    Parameters
    ----------
    frames : ndarray (F, height, width) float
        Log intensity at each frame time (finite).
    times_ms : ndarray (F,) float
        Strictly increasing frame times (ms).
    threshold, threshold_std : float
        Mean and spread of the per-pixel contrast thresholds ``C_on``, ``C_off`` (log
        units; > 0 and >= 0).
    rng : Generator, int or None
        Draws the thresholds.

    Returns
    -------
    ndarray of :data:`plstm_np.nmnist.EVENT_DTYPE`
        Sorted by time (ties by pixel, then polarity); ``t`` in integer microseconds.
    """
    frames = np.asarray(frames, dtype=np.float64)
    times = np.asarray(times_ms, dtype=np.float64)
    if frames.ndim != 3 or len(frames) < 1:
        raise ValueError(f"frames must have shape (F, height, width) with F >= 1, got "
                         f"{frames.shape}")
    if times.shape != (len(frames),):
        raise ValueError(f"times_ms must have shape ({len(frames)},), got {times.shape}")
    if not (np.isfinite(frames).all() and np.isfinite(times).all()):
        raise ValueError("frames and times_ms must be finite")
    if np.any(np.diff(times) <= 0):
        raise ValueError("times_ms must be strictly increasing")
    threshold = check_real(threshold, "threshold", low=0.0, low_open=True)
    threshold_std = check_real(threshold_std, "threshold_std", low=0.0)
    rng = as_rng(rng)
    shape = frames.shape[1:]
    c_on, c_off = (np.maximum(rng.normal(threshold, threshold_std, shape), 0.2 * threshold)
                   for _ in range(2))
    ref = frames[0].copy()
    parts = []
    for j in range(1, len(frames)):
        prev, cur = frames[j - 1], frames[j]
        for sign, c in ((1.0, c_on), (-1.0, c_off)):
            n = np.floor(sign * (cur - ref) / c).astype(np.int64)  # levels crossed
            ys, xs = np.nonzero(n > 0)
            if not ys.size:
                continue
            counts = n[ys, xs]
            rows = np.repeat(np.arange(ys.size), counts)
            k = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts) + 1
            level = ref[ys, xs][rows] + sign * k * c[ys, xs][rows]
            slope = (cur - prev)[ys, xs][rows]
            # where the line prev -> cur crosses the level (slope != 0: a level was crossed)
            frac = np.clip((level - prev[ys, xs][rows]) / slope, 0.0, 1.0)
            t = times[j - 1] + frac * (times[j] - times[j - 1])
            parts.append((t, xs[rows], ys[rows], np.full(rows.size, sign > 0)))
            ref[ys, xs] += sign * counts * c[ys, xs]
    events = np.zeros(sum(p[0].size for p in parts), EVENT_DTYPE)
    if parts:
        t = np.concatenate([p[0] for p in parts])
        x = np.concatenate([p[1] for p in parts])
        y = np.concatenate([p[2] for p in parts])
        p = np.concatenate([p[3] for p in parts])
        t_us = np.round(t * 1000.0).astype(np.int64)
        order = np.lexsort((p, x, y, t_us))
        events["t"], events["x"], events["y"] = t_us[order], x[order], y[order]
        events["p"] = p[order]
    return events


def simulate_saccades(image, *, threshold=0.375, threshold_std=0.03, baseline=0.1, dt=0.5,
                      rng=None):
    """An N-MNIST-like recording of a grey image: the three saccades, seen by a DVS.

    Parameters
    ----------
    image : ndarray (h, w), h and w <= 28, values in [0, 255] (an MNIST digit) or [0, 1]
        Intensities; uint8 images are read as /255.
    threshold, threshold_std : float
        Contrast thresholds (see :func:`simulate_events`).
    baseline : float
        ``b`` of ``log(I + b)``: the monitor's black is not black (> 0).
    dt : float
        Frame interval of the simulation (ms, > 0).
    rng : Generator, int or None

    Returns
    -------
    ndarray of :data:`plstm_np.nmnist.EVENT_DTYPE`
        x and y in 0..33, t in microseconds within [0, 300 ms].
    """
    image = np.asarray(image)
    if image.ndim != 2 or not (0 < image.shape[0] <= 28 and 0 < image.shape[1] <= 28):
        raise ValueError(f"image must be 2-D, at most 28 x 28, got shape {image.shape}")
    scale = 255.0 if image.dtype == np.uint8 else 1.0
    intensity = image.astype(np.float64) / scale
    if not (np.isfinite(intensity).all() and intensity.min() >= 0.0
            and intensity.max() <= 1.0):
        raise ValueError("image must hold intensities in [0, 1] (or uint8 in [0, 255])")
    baseline = check_real(baseline, "baseline", low=0.0, low_open=True)
    dt = check_real(dt, "dt", low=0.0, low_open=True)
    canvas = np.zeros((SENSOR_SIZE, SENSOR_SIZE))
    h, w = intensity.shape
    canvas[:h, :w] = intensity
    times = np.arange(0.0, DURATION_MS + dt / 2, dt)
    path = saccade_path(times)
    frames = np.log(np.stack([
        ndimage.shift(canvas, (IMAGE_OFFSET[1] + dy, IMAGE_OFFSET[0] + dx), order=1,
                      mode="constant", cval=0.0)
        for dx, dy in path]).clip(0.0, 1.0) + baseline)
    return simulate_events(frames, times, threshold=threshold, threshold_std=threshold_std,
                           rng=rng)


def simulate_mnist(indices, *, rng=None, images=None, labels=None, **kwargs):
    """Simulated N-MNIST recordings of shipped MNIST test images (for pretraining).

    Parameters
    ----------
    indices : array_like of int
        Test-set images, each in :data:`PRETRAINING_IMAGES` (100..9999; images 0-99 are
        never used).
    rng : Generator, int or None
        Draws each recording's pixel thresholds.
    images, labels : ndarray, optional
        The MNIST test set as :func:`plstm_np.mnist.load_mnist` returns it (loaded when
        not given; pass it to avoid reading it again).
    **kwargs
        Passed to :func:`simulate_saccades` (``threshold``, ``threshold_std``, ...).

    Returns
    -------
    recordings : list of ndarray of :data:`plstm_np.nmnist.EVENT_DTYPE`
    labels : ndarray (len(indices),) int64
    """
    idx = np.asarray(indices)
    if idx.ndim != 1 or (idx.size and idx.dtype.kind not in "iu"):
        raise ValueError(f"indices must be a 1-D array of ints, got {idx.dtype} with shape "
                         f"{idx.shape}")
    low, high = PRETRAINING_IMAGES.start, PRETRAINING_IMAGES.stop
    bad = idx[(idx < low) | (idx >= high)]
    if bad.size:
        raise ValueError(f"indices must lie in {low}..{high - 1} (MNIST test images 0-"
                         f"{low - 1} are held back), got {int(bad[0])}")
    if images is None or labels is None:
        images, labels = load_mnist()
    rng = as_rng(rng)
    recordings = [simulate_saccades(images[i], rng=rng, **kwargs) for i in idx]
    return recordings, np.asarray(labels, np.int64)[idx]
