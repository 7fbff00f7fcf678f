"""N-MNIST reader on the shipped recordings and on broken files; splits, subsampling, encoding."""
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest

from plstm_np import nmnist
from plstm_np.mnist import read_idx

DATA = Path(nmnist.__file__).resolve().parent / "data"
SMALL = DATA / "NMNISTsmall"


def encode(x, y, p, t_us):
    """Events -> bytes of the 40-bit format, written independently of the reader."""
    out = bytearray()
    for xi, yi, pi, ti in zip(x, y, p, t_us):
        out += bytes([xi, yi, (pi << 7) | (ti >> 16) & 0x7F, (ti >> 8) & 0xFF, ti & 0xFF])
    return bytes(out)


@pytest.fixture(scope="module")
def shipped():
    return nmnist.load_nmnist()


def test_packaged_files_match_their_checksums():
    for line in (DATA / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split()
        assert hashlib.sha256((DATA / name).read_bytes()).hexdigest() == digest, name


def test_first_recording_matches_the_documented_summary():
    ev = nmnist.read_events(SMALL / "1.bs2")
    assert ev.dtype == nmnist.EVENT_DTYPE
    assert len(ev) == 4681
    assert (ev["x"].min(), ev["x"].max(), ev["y"].min(), ev["y"].max()) == (0, 33, 0, 33)
    assert ev["p"].sum() == 2328
    assert round(ev["t"][0] / 1e3, 1) == 0.9 and round(ev["t"][-1] / 1e3, 1) == 305.9


def test_decoding_of_hand_made_events(tmp_path):
    x, y, p, t = [0, 33, 7], [33, 0, 12], [1, 0, 1], [0, 0x123456, 0x7FFFFF]
    path = tmp_path / "three.bin"
    path.write_bytes(encode(x, y, p, t))
    ev = nmnist.read_events(path)
    assert ev["x"].tolist() == x and ev["y"].tolist() == y
    assert ev["p"].tolist() == p and ev["t"].tolist() == t


def test_overflow_markers_extend_the_clock(tmp_path):
    path = tmp_path / "overflow.bin"
    path.write_bytes(encode([1, 0, 2], [1, 240, 2], [0, 0, 1], [100, 0, 50]))
    ev = nmnist.read_events(path)
    assert len(ev) == 2 and ev["t"].tolist() == [100, 50 + 2 ** 13]


def test_all_shipped_recordings(shipped):
    recordings, labels = shipped
    assert len(recordings) == 1000
    sizes = np.array([(SMALL / f"{i}.bs2").stat().st_size for i in range(1, 1001)])
    counts = np.array([len(r) for r in recordings])
    np.testing.assert_array_equal(counts, sizes // 5)      # natural order: 1.bs2, 2.bs2, ...
    assert counts.max() == 7152 and 4000 < counts.mean() < 4200
    assert all(r["x"].max() <= 33 and r["y"].max() <= 33 for r in recordings)
    assert all(np.all(np.diff(r["t"]) >= 0) for r in recordings)
    first = np.array([r["t"][0] for r in recordings]) / 1e3
    last = np.array([r["t"][-1] for r in recordings]) / 1e3
    assert first.min() >= 0 and first.max() <= 25.8 + 0.05
    assert last.min() >= 296.8 - 0.05 and last.max() <= 336.0 + 0.05
    on = sum(int(r["p"].sum()) for r in recordings) / counts.sum()
    assert 0.45 < on < 0.55


def test_labels_match_the_label_file_and_mnist(shipped):
    _, labels = shipped
    assert labels.dtype == np.int64
    assert np.bincount(labels).tolist() == [97, 116, 99, 93, 105, 92, 94, 117, 87, 100]
    # recordings 1..1000 are MNIST training images 0..999
    mnist_train = read_idx(DATA / "mnist" / "train-labels-idx1-ubyte.gz")
    np.testing.assert_array_equal(labels, mnist_train[:1000])
    table = nmnist.read_labels(SMALL / "train1K.txt")
    assert len(table) == 1000 and table[1] == 5


def test_tonic_sample_file():
    ev = nmnist.read_events(DATA / "nmnist_tonic_sample" / "sample_nmnist.bin")
    assert len(ev) == 4325
    assert round(ev["t"][0] / 1e3, 2) == 0.65 and round(ev["t"][-1] / 1e3, 1) == 311.2


# ----------------------------------------------------------------------------- broken files

def test_truncated_file(tmp_path):
    path = tmp_path / "cut.bs2"
    path.write_bytes((SMALL / "1.bs2").read_bytes()[:-2])
    with pytest.raises(ValueError, match=r"cut\.bs2.*multiple of 5"):
        nmnist.read_events(path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.bin"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.bin.*empty"):
        nmnist.read_events(path)


def test_coordinate_out_of_range(tmp_path):
    raw = bytearray((SMALL / "2.bs2").read_bytes())
    raw[5 * 10] = 34                                   # x of event 10
    path = tmp_path / "bad_x.bs2"
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"bad_x\.bs2.*event 10.*outside"):
        nmnist.read_events(path)
    raw = bytearray((SMALL / "2.bs2").read_bytes())
    raw[5 * 3 + 1] = 200                               # y of event 3
    path = tmp_path / "bad_y.bs2"
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"bad_y\.bs2.*event 3.*outside"):
        nmnist.read_events(path)


def test_decreasing_timestamps(tmp_path):
    path = tmp_path / "shuffled.bin"
    path.write_bytes(encode([1, 2, 3], [1, 2, 3], [0, 1, 0], [10, 500, 20]))
    with pytest.raises(ValueError, match=r"shuffled\.bin.*decrease at event 2"):
        nmnist.read_events(path)


def test_error_names_the_file_when_loading_a_folder(tmp_path):
    shutil.copy(SMALL / "1.bs2", tmp_path / "1.bs2")
    (tmp_path / "2.bs2").write_bytes(b"\x00" * 7)
    with pytest.raises(ValueError, match=r"2\.bs2"):
        nmnist.load_nmnist(tmp_path)


def test_only_overflow_markers(tmp_path):
    path = tmp_path / "markers.bin"
    path.write_bytes(encode([0, 0, 0], [240, 240, 240], [0, 0, 0], [0, 0, 0]))
    with pytest.raises(ValueError, match=r"markers\.bin holds no events.*3 records.*overflow"):
        nmnist.read_events(path)


# ----------------------------------------------------------------------------- label files

def write_labels(tmp_path, content, name="labels.txt"):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


@pytest.mark.parametrize("content, line", [
    ("1 5\n2 x\n", 2),              # a non-integer label
    ("1 5\n2 3 4\n", 2),            # three fields
    ("1 5\n\n3 1 # ok\n4 2 7 9\n", 4),
    ("1\n", 1),                     # one field
    ("1 5.0\n", 1),
])
def test_label_line_not_two_integers(tmp_path, content, line):
    path = write_labels(tmp_path, content)
    with pytest.raises(ValueError, match=rf"labels\.txt, line {line}: expected '<id> <label>'"):
        nmnist.read_labels(path)


@pytest.mark.parametrize("label", [-1, -7, 10, 11])
def test_label_outside_the_classes(tmp_path, label):
    path = write_labels(tmp_path, f"#sample #class\n1 5\n2 {label}\n")
    with pytest.raises(ValueError, match=rf"labels\.txt, line 3: label {label} .*outside 0\.\.9"):
        nmnist.read_labels(path)
    assert nmnist.read_labels(write_labels(tmp_path, "1 0\n2 9\n", "ok.txt")) == {1: 0, 2: 9}


def test_negative_label_refused_when_loading_a_folder(tmp_path):
    shutil.copy(SMALL / "1.bs2", tmp_path / "1.bs2")
    write_labels(tmp_path, "1 -1\n")
    with pytest.raises(ValueError, match=r"labels\.txt, line 1: label -1"):
        nmnist.load_nmnist(tmp_path)


def test_negative_sample_id(tmp_path):
    path = write_labels(tmp_path, "1 5\n-2 3\n")
    with pytest.raises(ValueError, match=r"labels\.txt, line 2: sample id -2 is negative"):
        nmnist.read_labels(path)


def test_duplicate_ids(tmp_path):
    path = write_labels(tmp_path, "1 5\n2 0\n\n1 4\n")
    with pytest.raises(ValueError, match=r"labels\.txt, line 4: sample 1 has label 4, but "
                                         r"line 1 gave it label 5"):
        nmnist.read_labels(path)
    # the same label twice is harmless (e.g. two lists joined) and kept once
    path = write_labels(tmp_path, "1 5\n2 0\n1 5\n", "same.txt")
    assert nmnist.read_labels(path) == {1: 5, 2: 0}


@pytest.mark.parametrize("content, line", [
    (b"1 5\n2 \xff\n", 2),
    (b"\xe9 1 5\n", 1),
    (b"1 5\n2 0\n3 1 # caf\xe9\n", 3),     # Latin-1 in a comment
])
def test_label_file_not_utf8(tmp_path, content, line):
    path = write_labels(tmp_path, content)
    with pytest.raises(ValueError, match=rf"labels\.txt, line {line}: not valid UTF-8"):
        nmnist.read_labels(path)


def test_label_file_with_byte_order_mark(tmp_path):
    path = write_labels(tmp_path, "\ufeff1 5\n2 0\n".encode())
    assert nmnist.read_labels(path) == {1: 5, 2: 0}


@pytest.mark.parametrize("content", ["", "\n\n", "#sample #class\n# nothing yet\n"])
def test_label_file_without_labels(tmp_path, content):
    path = write_labels(tmp_path, content)
    with pytest.raises(ValueError, match=r"labels\.txt holds no labels"):
        nmnist.read_labels(path)


# ----------------------------------------------------------------------------- user folders

def test_user_folder_with_and_without_labels(tmp_path):
    for i in (3, 10, 7):
        shutil.copy(SMALL / f"{i}.bs2", tmp_path / f"{i}.bs2")
    recordings, labels = nmnist.load_nmnist(tmp_path)
    assert labels.tolist() == [-1, -1, -1]
    assert [len(r) for r in recordings] == [(SMALL / f"{i}.bs2").stat().st_size // 5
                                            for i in (3, 7, 10)]
    (tmp_path / "labels.txt").write_text("#sample #class\n3\t1\n7\t9\n")
    _, labels = nmnist.load_nmnist(tmp_path)
    assert labels.tolist() == [1, 9, -1]          # the user's file wins, id 10 is unlisted


def test_original_layout_digit_folders(tmp_path):
    for digit, i in ((4, 3), (0, 2)):
        (tmp_path / str(digit)).mkdir()
        shutil.copy(SMALL / f"{i}.bs2", tmp_path / str(digit) / f"0000{i}.bin")
    _, labels = nmnist.load_nmnist(tmp_path)
    assert labels.tolist() == [0, 4]


def test_bad_folders(tmp_path):
    with pytest.raises(ValueError, match="not a directory"):
        nmnist.load_nmnist(tmp_path / "missing")
    with pytest.raises(ValueError, match=r"no \.bin or \.bs2"):
        nmnist.load_nmnist(tmp_path)
    (tmp_path / "lab.txt").write_text("1 x\n")
    shutil.copy(SMALL / "1.bs2", tmp_path / "1.bs2")
    with pytest.raises(ValueError, match=r"lab\.txt, line 1"):
        nmnist.load_nmnist(tmp_path)


# ----------------------------------------------------------------------- split, subsample, encode

def test_stratified_split(shipped):
    _, labels = shipped
    train, val = nmnist.stratified_split(labels, 0.1, rng=0)
    assert len(np.intersect1d(train, val)) == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(1000))
    per_class = np.bincount(labels[val], minlength=10)
    assert np.all(np.abs(per_class - 0.1 * np.bincount(labels)) <= 0.5)
    again = nmnist.stratified_split(labels, 0.1, rng=0)
    np.testing.assert_array_equal(again[1], val)
    other = nmnist.stratified_split(labels, 0.1, rng=1)
    assert not np.array_equal(other[1], val)
    with pytest.raises(ValueError, match="fraction"):
        nmnist.stratified_split(labels, 1.5)


def test_subsample():
    ev = nmnist.read_events(SMALL / "1.bs2")
    assert np.array_equal(nmnist.subsample(ev, 1.0), ev)
    kept = nmnist.subsample(ev, 0.3, rng=0)
    assert abs(len(kept) / len(ev) - 0.3) < 0.03         # binomial se ~0.007
    assert np.all(np.diff(kept["t"]) >= 0)
    rows = {tuple(e) for e in ev.tolist()}
    assert all(tuple(e) in rows for e in kept.tolist())
    np.testing.assert_array_equal(kept, nmnist.subsample(ev, 0.3, rng=0))
    with pytest.raises(ValueError, match="rho"):
        nmnist.subsample(ev, 0.0)


def _hand_events(rows):
    ev = np.zeros(len(rows), nmnist.EVENT_DTYPE)
    for i, (x, y, p, t) in enumerate(rows):
        ev[i] = (x, y, p, t)
    return ev


def test_augment_shifts_the_whole_recording_and_drops_what_leaves_the_sensor():
    ev = _hand_events([(0, 5, 1, 10), (33, 0, 0, 20), (10, 10, 1, 30), (16, 33, 0, 40)])
    seen = set()
    for seed in range(300):  # P(some shift never drawn) < 25 (24/25)^300 ~ 1e-4
        out = nmnist.augment(ev, seed, max_shift=2)
        # the shift drawn, recovered from the event at (10, 10), which can never leave
        (k,) = np.flatnonzero(out["t"] == 30)
        dx, dy = int(out["x"][k]) - 10, int(out["y"][k]) - 10
        seen.add((dx, dy))
        expect = [(x + dx, y + dy, p, t) for x, y, p, t in ev.tolist()
                  if 0 <= x + dx < 34 and 0 <= y + dy < 34]
        assert out.tolist() == expect
    assert seen == {(a, b) for a in range(-2, 3) for b in range(-2, 3)}  # all 25 shifts
    np.testing.assert_array_equal(nmnist.augment(ev, 0), ev)  # off: a copy
    assert nmnist.augment(ev, 0) is not ev


def test_augment_jitters_each_time_and_keeps_the_recording_sorted():
    ev = nmnist.read_events(SMALL / "1.bs2")
    out = nmnist.augment(ev, 3, jitter_ms=2.0)
    assert len(out) == len(ev) and np.all(np.diff(out["t"]) >= 0) and out["t"].min() >= 0
    # the same events (addresses and polarities), each moved by about 2 ms
    assert sorted(map(tuple, out[["x", "y", "p"]].tolist())) == \
        sorted(map(tuple, ev[["x", "y", "p"]].tolist()))
    alone = _hand_events([(3, 4, 1, 100_000)] * 4000)
    moved = nmnist.augment(alone, 1, jitter_ms=2.0)["t"] - 100_000
    assert abs(moved.mean()) < 100 and abs(moved.std() - 2000) < 100  # N(0, 2 ms) in us
    early = nmnist.augment(_hand_events([(3, 4, 1, 0)] * 50), 2, jitter_ms=5.0)
    assert early["t"].min() == 0  # clipped, not negative


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(max_shift=-1), ValueError, "max_shift must be an int in 0..33"),
    (dict(max_shift=34), ValueError, "max_shift must be an int in 0..33"),
    (dict(max_shift=1.5), ValueError, "max_shift must be an int"),
    (dict(jitter_ms=-1.0), ValueError, "jitter_ms must be a finite number >= 0"),
    (dict(jitter_ms=float("nan")), ValueError, "jitter_ms must be a finite number"),
])
def test_augment_refuses_bad_arguments_by_name(kwargs, error, match):
    with pytest.raises(error, match=match):
        nmnist.augment(_hand_events([(1, 1, 1, 5)]), 0, **kwargs)
    with pytest.raises(TypeError, match="events must be a structured array"):
        nmnist.augment(np.zeros(3), 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_to_dataset_encoding(dtype):
    recordings = [nmnist.read_events(SMALL / f"{i}.bs2") for i in (1, 2, 3)]
    data = nmnist.to_dataset(recordings, [5, 0, 4], dtype=dtype)
    n = [len(r) for r in recordings]
    assert data.lengths.tolist() == n and data.t.shape == (3, max(n))
    assert data.x.dtype == dtype and data.t.dtype == np.float64 and data.tokens.dtype == np.int64
    assert data.y.tolist() == [5, 0, 4]
    raw = np.frombuffer((SMALL / "2.bs2").read_bytes(), np.uint8).reshape(-1, 5).astype(np.int64)
    k = n[1]
    np.testing.assert_array_equal(data.tokens[1, :k], raw[:, 1] * 34 + raw[:, 0])
    np.testing.assert_array_equal(data.x[1, :k, 0], np.where(raw[:, 2] >= 128, 1.0, -1.0))
    t_us = ((raw[:, 2] & 0x7F) << 16) | (raw[:, 3] << 8) | raw[:, 4]
    np.testing.assert_allclose(data.t[1, :k], t_us / 1000.0)          # milliseconds
    assert np.all(data.tokens[1, k:] == 0) and np.all(data.x[1, k:] == 0)
    assert np.all(data.t[1, k:] == data.t[1, k - 1])
    assert data.tokens.min() >= 0 and data.tokens.max() < nmnist.NUM_ADDRESSES
    sub = nmnist.to_dataset(recordings, [5, 0, 4], rho=0.5, rng=0)
    assert np.all(np.abs(sub.lengths / np.array(n) - 0.5) < 0.05)
    with pytest.raises(ValueError, match="labels"):
        nmnist.to_dataset(recordings, [1, 2])


def test_to_dataset_names_a_recording_that_loses_every_event():
    recordings = [nmnist.read_events(SMALL / f"{i}.bs2") for i in (1, 2)]
    recordings.append(recordings[0][:3])
    with pytest.raises(ValueError, match=r"recording 2 .*lost all its 3 events.*rho = 0\.001"
                                         r".*larger rho"):
        nmnist.to_dataset(recordings, [5, 0, 5], rho=0.001, rng=0)
    with pytest.raises(ValueError, match=r"recording 0 .*lost all its 4681 events.*rho = 1e-09"):
        nmnist.to_dataset(recordings, [5, 0, 5], rho=1e-9, rng=0)
    recordings[1] = recordings[1][:0]
    with pytest.raises(ValueError, match=r"recording 1 .*holds no events"):
        nmnist.to_dataset(recordings, [5, 0, 5])
