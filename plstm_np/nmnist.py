"""N-MNIST: a reader for the original 40-bit event files, splits, subsampling and encoding.

N-MNIST (Orchard, Jayawant, Cohen & Thakor 2015, CC BY-SA 4.0) records the MNIST digits with
an ATIS event camera (34 x 34 pixels) moved in three saccades, about 300 ms per recording. The
package ships the first 1,000 training recordings (``plstm_np/data/NMNISTsmall``, from the
SLAYER repository) with their labels; see ``plstm_np/data/README.md`` for the sources.

File format (``.bin`` in the original data set, ``.bs2`` in SLAYER's copy, the same bytes):
no header, a flat sequence of 5-byte big-endian events, 40 bits each::

    byte 0           x address, 0..33
    byte 1           y address, 0..33 (240 marks a timestamp-overflow event, see below)
    byte 2, bit 7    polarity: 1 = ON (brighter), 0 = OFF
    bits 22..0       timestamp in microseconds: (byte2 & 0x7F) << 16 | byte3 << 8 | byte4

Encoding for the Phased LSTM (the paper, section 3.3): every event is one step. Its pixel
address ``y * 34 + x`` (0..1155) is a token for a learned 40-dimensional embedding
(:class:`plstm_np.Embedding`), and the polarity is one extra input feature; the event time is
the step's timestamp.

Time unit: **milliseconds** (float64), ``t_ms = t_us / 1000``, so one unit means the same thing
as in the frequency tasks and a period ``tau`` reads as milliseconds. A recording spans about
0 to 336 ms. The paper draws the N-MNIST periods log-uniformly, ``tau = exp(U(lo, hi))``, as
for its other tasks; its exact range is not reproduced here. In these units we suggest
``tau_exp_range=(1, 6)``: tau from e^1 = 2.7 ms (an open window of 0.14 ms at r_on = 0.05,
a few events) to e^6 = 403 ms (about once per recording). Timestamps stay float64: float32
spaces values near 3e5 µs 2^-5 µs apart, and far more coarsely once a sensor's clock has run
for minutes, which is what a 5 % open window of a short period cannot afford.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from .dataset import Dataset
from .validation import as_rng, check_dtype, check_real

__all__ = [
    "SENSOR_SIZE", "NUM_ADDRESSES", "EVENT_DTYPE", "DATA_DIR", "read_events", "read_labels",
    "load_nmnist", "stratified_split", "subsample", "augment", "to_dataset",
]

SENSOR_SIZE = 34
NUM_ADDRESSES = SENSOR_SIZE * SENSOR_SIZE          # 1156 pixel addresses, tokens 0..1155
EVENT_DTYPE = np.dtype([("x", np.uint8), ("y", np.uint8), ("p", np.uint8), ("t", np.int64)])
DATA_DIR = Path(__file__).resolve().parent / "data" / "NMNISTsmall"

_OVERFLOW_Y = 240                  # Orchard's reader: y == 240 marks a timestamp overflow event
_OVERFLOW_INCREMENT_US = 2 ** 13   # ... which adds 2^13 us to all later events (as his reader does)


def read_events(path, *, sensor_size=SENSOR_SIZE):
    """Read one N-MNIST recording in the original 40-bit format.

    Parameters
    ----------
    path : str or Path
        A ``.bin`` (N-MNIST) or ``.bs2`` (SLAYER's copy) file.
    sensor_size : int
        Width and height of the sensor (34 for N-MNIST); coordinates must lie in
        ``0..sensor_size-1``.

    Returns
    -------
    ndarray, structured with :data:`EVENT_DTYPE`
        One row per event with fields ``x``, ``y`` (uint8 pixel coordinates), ``p`` (uint8
        polarity: 1 = ON, 0 = OFF) and ``t`` (int64 timestamp in microseconds),
        in file order (non-decreasing time). Overflow markers (y == 240), which Orchard's
        reader uses to extend the 23-bit clock, are removed and their 2^13 us added to the
        events after them; the shipped files contain none.

    Raises
    ------
    ValueError
        Naming the file: empty or holding only overflow markers, truncated (size not a
        multiple of 5 bytes), a coordinate outside the sensor, or a timestamp smaller than
        the previous one.
    """
    path = Path(path)
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0:
        raise ValueError(f"N-MNIST file {path} is empty: no events")
    if raw.size % 5:
        raise ValueError(
            f"N-MNIST file {path} is truncated or not in the 40-bit event format: its size "
            f"{raw.size} bytes is not a multiple of 5 (one event = 5 bytes)")
    b = raw.reshape(-1, 5).astype(np.int64)
    x, y = b[:, 0], b[:, 1]
    t = ((b[:, 2] & 0x7F) << 16) | (b[:, 3] << 8) | b[:, 4]
    overflow = y == _OVERFLOW_Y
    if overflow.any():
        t = t + _OVERFLOW_INCREMENT_US * np.cumsum(overflow)
    keep = ~overflow
    index = np.flatnonzero(keep)        # event numbers in the file, for the messages below
    x, y, p, t = x[keep], y[keep], b[keep, 2] >> 7, t[keep]
    if not len(t):
        raise ValueError(f"N-MNIST file {path} holds no events: all its {len(keep)} records "
                         f"are timestamp-overflow markers (y == {_OVERFLOW_Y})")
    bad = (x >= sensor_size) | (y >= sensor_size)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(
            f"N-MNIST file {path} looks corrupt: event {index[i]} has (x, y) = ({x[i]}, {y[i]}), "
            f"outside the {sensor_size}x{sensor_size} sensor (0..{sensor_size - 1})")
    back = np.diff(t) < 0
    if back.any():
        i = int(np.argmax(back)) + 1
        raise ValueError(
            f"N-MNIST file {path} looks corrupt: timestamps decrease at event {index[i]} "
            f"({t[i - 1]} us, then {t[i]} us)")
    events = np.empty(len(t), EVENT_DTYPE)
    events["x"], events["y"], events["p"], events["t"] = x, y, p, t
    return events


def read_labels(path, *, num_classes=10):
    """Read a label file in the ``train1K.txt`` style: lines ``<id> <label>``, '#' comments.

    Parameters
    ----------
    path : str or Path
        A UTF-8 text file (a leading byte-order mark is allowed). Each non-blank line, after
        removing a '#' comment, holds exactly two integers: a sample id (a file's numeric
        name, ``>= 0``) and its class.
    num_classes : int
        Classes are ``0..num_classes-1`` (10 for N-MNIST).

    Returns
    -------
    dict of int -> int
        Sample id -> class. An id listed twice with the same class is kept once.

    Raises
    ------
    ValueError
        Naming the file and, where it applies, the line: not UTF-8, no labels at all, a line
        that is not two integers, a negative id, a class outside ``0..num_classes-1``, or an
        id listed twice with different classes.
    """
    path = Path(path)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw[:error.start].count(b"\n") + 1
        raise ValueError(f"label file {path}, line {line}: not valid UTF-8 text (byte "
                         f"{raw[error.start]:#04x} at offset {error.start})") from None
    labels, seen_on = {}, {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"label file {path}, line {number}"
        fields = line.split()
        try:
            if len(fields) != 2:
                raise ValueError
            sample, label = int(fields[0]), int(fields[1])
        except ValueError:
            raise ValueError(f"{where}: expected '<id> <label>' (two integers), "
                             f"got {line!r}") from None
        if sample < 0:
            raise ValueError(f"{where}: sample id {sample} is negative (ids are the files' "
                             f"numeric names)")
        if not 0 <= label < num_classes:
            raise ValueError(f"{where}: label {label} of sample {sample} is outside "
                             f"0..{num_classes - 1}")
        if sample in labels and labels[sample] != label:
            raise ValueError(f"{where}: sample {sample} has label {label}, but line "
                             f"{seen_on[sample]} gave it label {labels[sample]}")
        labels.setdefault(sample, label)
        seen_on.setdefault(sample, number)
    if not labels:
        raise ValueError(f"label file {path} holds no labels: no '<id> <label>' lines")
    return labels


def _natural_key(path):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def load_nmnist(folder=None, *, label_file=None, limit=None):
    """Read every recording of a folder of N-MNIST files, with their labels.

    Parameters
    ----------
    folder : str or Path, optional
        A folder of ``.bin`` / ``.bs2`` files, searched recursively. Default: the 1,000
        recordings shipped with the package (:data:`DATA_DIR`).
    label_file : str or Path, optional
        Labels as ``<id> <label>`` lines, ``<id>`` being a file's numeric name (``17.bs2`` is
        id 17). Default: the folder's only ``.txt`` file, if it has exactly one.
    limit : int, optional
        Read only the first ``limit`` files (in natural order of their paths).

    Returns
    -------
    recordings : list of ndarray
        One structured event array per file (see :func:`read_events`), in natural path order.
    labels : ndarray (N,) int64
        The label file's class; else the name of the parent folder when it is a single digit
        (the original N-MNIST layout ``Train/<digit>/<id>.bin``); else -1 (unknown).
    """
    folder = DATA_DIR if folder is None else Path(folder)
    if not folder.is_dir():
        raise ValueError(f"folder {folder} is not a directory")
    paths = sorted((p for p in folder.rglob("*") if p.suffix in (".bin", ".bs2") and p.is_file()),
                   key=_natural_key)
    if not paths:
        raise ValueError(f"folder {folder} holds no .bin or .bs2 files")
    if limit is not None:
        paths = paths[:int(limit)]
    if label_file is None:
        texts = sorted(folder.glob("*.txt"))
        label_file = texts[0] if len(texts) == 1 else None
    label_of = read_labels(label_file) if label_file is not None else {}
    labels = np.full(len(paths), -1, np.int64)
    for i, path in enumerate(paths):
        if path.stem.isdigit() and int(path.stem) in label_of:
            labels[i] = label_of[int(path.stem)]
        elif re.fullmatch(r"\d", path.parent.name) and path.parent != folder:
            labels[i] = int(path.parent.name)
    return [read_events(path) for path in paths], labels


def stratified_split(labels, fraction, rng=None):
    """Split sample indices into train and validation sets, class by class.

    Parameters
    ----------
    labels : array_like (N,) of int
    fraction : float in [0, 1]
        Share of every class that goes to validation (rounded per class, so the validation
        size can differ from ``fraction * N`` by up to half a sample per class).
    rng : Generator, int or None

    Returns
    -------
    train_idx, val_idx : ndarray of int64, sorted, disjoint, together ``0..N-1``.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-dimensional, got shape {labels.shape}")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must lie in [0, 1], got {fraction}")
    rng = as_rng(rng)
    val = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        count = int(np.floor(fraction * len(members) + 0.5))
        val.append(rng.choice(members, size=count, replace=False))
    val_idx = np.sort(np.concatenate(val)).astype(np.int64) if val else np.zeros(0, np.int64)
    train_idx = np.setdiff1d(np.arange(len(labels)), val_idx).astype(np.int64)
    return train_idx, val_idx


def subsample(events, rho, rng=None):
    """Keep each event independently with probability ``rho`` (the paper's sampling rate).

    Parameters
    ----------
    events : ndarray
        One recording (structured, from :func:`read_events`) or any array of events (rows).
    rho : float in (0, 1]
    rng : Generator, int or None

    Returns
    -------
    ndarray
        The kept events, in their original order (a copy, also when ``rho = 1``); empty
        if a small ``rho`` drops them all (:func:`to_dataset` refuses such a recording).
    """
    if not 0.0 < rho <= 1.0:
        raise ValueError(f"rho must lie in (0, 1], got {rho}")
    if rho == 1.0:
        return events.copy()
    return events[as_rng(rng).random(len(events)) < rho]


def augment(events, rng=None, *, max_shift=0, jitter_ms=0.0, sensor_size=SENSOR_SIZE):
    """A recording moved on the sensor and jittered in time: training augmentation.

    The two perturbations event-vision practice uses against overfitting a few thousand
    recordings: the whole recording is shifted by ``(dx, dy)`` pixels, each drawn uniformly
    from ``-max_shift..max_shift`` (the digit sits a little elsewhere; events pushed off the
    sensor are dropped), and every event's time gets its own ``N(0, jitter_ms)`` offset
    (clipped at 0 and rounded to whole microseconds; the events are then re-sorted by time,
    ties in their original order).

    Parameters
    ----------
    events : structured ndarray of :data:`EVENT_DTYPE`
        One recording.
    rng : Generator, int or None
    max_shift : int >= 0
        Largest shift in pixels (0: no shift).
    jitter_ms : float >= 0
        Standard deviation of the time jitter in ms (0: none).
    sensor_size : int

    Returns
    -------
    ndarray of :data:`EVENT_DTYPE`
        A new array (the input is not changed); with both perturbations off, a copy.
    """
    if getattr(events, "dtype", None) != EVENT_DTYPE:
        raise TypeError(f"events must be a structured array of nmnist.EVENT_DTYPE, got "
                        f"{getattr(events, 'dtype', type(events).__name__)}")
    if isinstance(max_shift, bool) or not isinstance(max_shift, (int, np.integer)) \
            or not 0 <= max_shift < sensor_size:
        raise ValueError(f"max_shift must be an int in 0..{sensor_size - 1}, got {max_shift!r}")
    jitter_ms = check_real(jitter_ms, "jitter_ms", low=0.0)
    rng = as_rng(rng)
    out = events.copy()
    if max_shift:
        dx, dy = rng.integers(-max_shift, max_shift + 1, size=2)
        x = out["x"].astype(np.int64) + dx
        y = out["y"].astype(np.int64) + dy
        inside = (x >= 0) & (x < sensor_size) & (y >= 0) & (y < sensor_size)
        out = out[inside]
        out["x"], out["y"] = x[inside], y[inside]
    if jitter_ms:
        t = out["t"] + np.round(rng.normal(0.0, jitter_ms * 1000.0, len(out))).astype(np.int64)
        out["t"] = np.maximum(t, 0)
        out = out[np.argsort(out["t"], kind="stable")]
    return out


def to_dataset(recordings, labels, *, rho=1.0, rng=None, dtype=np.float64):
    """Encode recordings as a padded :class:`~plstm_np.Dataset` of events.

    Parameters
    ----------
    recordings : list of structured ndarray
        From :func:`load_nmnist` or :func:`read_events`.
    labels : array_like (N,) of int
    rho : float in (0, 1]
        Event inclusion probability (see :func:`subsample`); 1 keeps every event.
    rng : Generator, int or None
        Draws the subsampling.
    dtype : float32 or float64
        dtype of ``x``.

    Returns
    -------
    Dataset
        ``tokens`` (N, T) int64: pixel address ``y * 34 + x`` in 0..1155 (0 in the padding);
        ``x`` (N, T, 1): polarity, +1 for ON and -1 for OFF (0 in the padding);
        ``t`` (N, T) float64: time in milliseconds (the padding repeats the last valid time);
        ``lengths`` (N,) int64: events kept; ``y`` (N,) int64: the labels.

    Raises
    ------
    ValueError
        If ``labels`` does not match ``recordings``, or a recording is empty or loses all
        its events to subsampling (naming its index and ``rho``).
    """
    dtype = check_dtype(dtype)
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (len(recordings),):
        raise ValueError(f"labels must have shape ({len(recordings)},), got {labels.shape}")
    rng = as_rng(rng)
    kept = [subsample(r, rho, rng) for r in recordings]
    lengths = np.array([len(r) for r in kept], np.int64)
    empty = np.flatnonzero(lengths == 0)       # a sequence needs at least one step
    if empty.size:
        i = int(empty[0])
        n = len(recordings[i])
        if n == 0:
            raise ValueError(f"recording {i} (counting from 0) holds no events")
        raise ValueError(
            f"recording {i} (counting from 0) lost all its {n} events to subsampling at "
            f"rho = {rho} (about {n * rho:.2g} expected to be kept): use a larger rho")
    N, T = len(kept), int(lengths.max()) if kept else 0
    tokens = np.zeros((N, T), np.int64)
    x = np.zeros((N, T, 1), dtype)
    t = np.zeros((N, T), np.float64)
    for i, r in enumerate(kept):
        n = len(r)
        tokens[i, :n] = r["y"].astype(np.int64) * SENSOR_SIZE + r["x"]
        x[i, :n, 0] = np.where(r["p"] > 0, 1.0, -1.0)
        t[i, :n] = r["t"] / 1000.0
        t[i, n:] = t[i, n - 1] if n else 0.0
    return Dataset(x=x, t=t, y=labels, lengths=lengths, tokens=tokens)
