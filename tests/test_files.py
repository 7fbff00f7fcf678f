"""Atomic writes: a failed or interrupted write leaves the old file byte for byte and no
temporary file; new files get the permissions open() would give; bad paths are named."""
import io
import os

import numpy as np
import pytest

from plstm_np import files
from plstm_np.files import TEMP_PREFIX, atomic_write, write_json_atomic

from conftest import make_network


class Boom(Exception):
    pass


def _payload(rng):
    buf = io.BytesIO()
    np.savez(buf, a=rng.normal(size=(50, 40)), b=np.arange(300))
    return buf.getvalue()


def _failing_writer(data, k, error, rng):
    """Write ``data`` in random chunks and raise ``error`` once ``k`` bytes are written."""
    def write(f):
        done = 0
        while done < len(data):
            n = min(int(rng.integers(1, 4096)), len(data) - done, max(k - done, 1))
            if done + n > k:
                raise error
            f.write(data[done:done + n])
            done += n
        if done >= k:
            raise error
    return write


@pytest.mark.parametrize("error", [Boom("disk on fire"), KeyboardInterrupt()])
def test_a_failing_writer_never_touches_the_target(rng, tmp_path, error):
    path = tmp_path / "ckpt.npz"
    old = _payload(rng)
    path.write_bytes(old)
    new = _payload(rng)
    for k in [0, 1, 7, 100, 1000, *rng.integers(1, len(new), 8), len(new) - 1, len(new)]:
        with pytest.raises(type(error)):
            atomic_write(path, _failing_writer(new, int(k), error, rng))
        assert path.read_bytes() == old
        assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.npz"]
    atomic_write(path, lambda f: f.write(new))  # and a write that completes replaces it
    assert path.read_bytes() == new
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.npz"]


@pytest.mark.parametrize("step", ["fsync", "replace"])
def test_a_failure_after_writing_keeps_the_old_file(rng, tmp_path, monkeypatch, step):
    path = tmp_path / "ckpt.npz"
    path.write_bytes(b"old")

    def fail(*args):
        raise OSError(f"{step} failed")

    monkeypatch.setattr(files.os, step, fail)
    with pytest.raises(OSError, match=f"{step} failed"):
        atomic_write(path, lambda f: f.write(b"new content"))
    monkeypatch.undo()
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.npz"]


def test_an_interrupted_network_save_keeps_the_old_checkpoint(rng, tmp_path, monkeypatch):
    net = make_network(rng)
    path = tmp_path / "net.npz"
    net.save(path)
    old = path.read_bytes()
    real_savez = np.savez
    for k in (0, 10, 500, len(old) // 2, len(old) - 10):
        def savez_until(f, k=k, **arrays):
            buf = io.BytesIO()
            real_savez(buf, **arrays)
            f.write(buf.getvalue()[:k])
            raise KeyboardInterrupt
        monkeypatch.setattr(np, "savez", savez_until)
        with pytest.raises(KeyboardInterrupt):
            make_network(np.random.default_rng(k)).save(path, overwrite=True)
        assert path.read_bytes() == old
        assert [p.name for p in tmp_path.iterdir()] == ["net.npz"]


def test_the_content_is_fsynced_before_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(files.os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd)))
    monkeypatch.setattr(files.os, "replace",
                        lambda a, b: (events.append("replace"), real_replace(a, b)))
    write_json_atomic(tmp_path / "x.json", {"a": 1})
    assert events[:2] == ["fsync", "replace"]
    assert (tmp_path / "x.json").read_text() == '{\n "a": 1\n}'


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002, 0o000])
def test_new_files_get_the_permissions_of_open(tmp_path, umask):
    before = os.umask(umask)
    try:
        with open(tmp_path / "plain", "wb"):
            pass
        atomic_write(tmp_path / "atomic.npz", lambda f: f.write(b"x"))
        write_json_atomic(tmp_path / "atomic.json", [1])
    finally:
        os.umask(before)
    expected = 0o666 & ~umask
    assert (tmp_path / "plain").stat().st_mode & 0o777 == expected
    assert (tmp_path / "atomic.npz").stat().st_mode & 0o777 == expected
    assert (tmp_path / "atomic.json").stat().st_mode & 0o777 == expected


def test_a_replaced_file_keeps_its_permissions(tmp_path):
    path = tmp_path / "shared.json"
    path.write_text("{}")
    path.chmod(0o640)
    write_json_atomic(path, {"b": 2})
    assert path.stat().st_mode & 0o777 == 0o640


def test_bad_paths_are_named(rng, tmp_path):
    (tmp_path / "folder").mkdir()
    for overwrite in (True, False):
        with pytest.raises(IsADirectoryError, match=f"path {tmp_path / 'folder'} is a "
                           "directory"):
            atomic_write(tmp_path / "folder", lambda f: f.write(b"x"), overwrite=overwrite)
    with pytest.raises(ValueError, match="path must name a file, got ''"):
        atomic_write("", lambda f: f.write(b"x"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        atomic_write(tmp_path / "absent" / "x.json", lambda f: f.write(b"x"))
    net = make_network(rng)
    with pytest.raises(IsADirectoryError, match="is a directory"):
        net.save(tmp_path / "folder")
    with pytest.raises(IsADirectoryError, match="is a directory"):
        net.save(tmp_path / "folder", overwrite=True)
    with pytest.raises(ValueError, match="path must name a file"):
        net.save("")
    assert [p.name for p in tmp_path.iterdir()] == ["folder"]
    assert not any(p.name.startswith(TEMP_PREFIX) for p in (tmp_path / "folder").iterdir())
