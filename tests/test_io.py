"""Save and load: a round trip restores everything; damaged or mismatched files raise."""
import json
import zipfile

import numpy as np
import pytest

import plstm_np as pl

from conftest import make_batch, make_network


def trained(rng):
    net = make_network(rng)
    opt = pl.Adam(net, lr=0.01)
    batch = make_batch(net, rng)
    for _ in range(3):
        opt.step(net.loss_and_grads(batch)[1])
    return net, opt, batch


def test_round_trip_restores_network_and_optimizer(rng, tmp_path):
    net, opt, batch = trained(rng)
    path = tmp_path / "net.npz"
    net.save(path, optimizer=opt, metadata={"epoch": 3, "note": "ok"})
    net2, opt2, meta = pl.load_checkpoint(path)
    assert meta == {"epoch": 3, "note": "ok"}
    for name, value in net.params.items():
        np.testing.assert_array_equal(net2.params[name], value)
    assert net2.config() == net.config()
    assert net2.frozen == net.frozen and opt2.frozen == opt.frozen
    np.testing.assert_array_equal(net2.predict(batch), net.predict(batch))
    # training on continues identically: same moments, same step count
    assert opt2.step_count == 3
    g = net.loss_and_grads(batch)[1]
    opt.step(g)
    opt2.step(net2.loss_and_grads(batch)[1])
    for name, value in net.params.items():
        np.testing.assert_array_equal(net2.params[name], value)


def test_lstm_and_float32_round_trip(rng, tmp_path):
    net = make_network(rng, lstm=True, embedding=False, dtype=np.float32, readout_at="every",
                       loss="mse")
    pl.save(tmp_path / "lstm.npz", net)
    net2 = pl.load(tmp_path / "lstm.npz")
    assert isinstance(net2.layers[0], pl.LSTM) and net2.dtype == np.float32
    assert pl.load_checkpoint(tmp_path / "lstm.npz")[1] is None
    batch = make_batch(net, rng)
    np.testing.assert_array_equal(net2.predict(batch), net.predict(batch))


def test_file_is_plain_npz_with_json_metadata(rng, tmp_path):
    net, opt, _ = trained(rng)
    net.save(tmp_path / "a.npz", optimizer=opt)
    with np.load(tmp_path / "a.npz", allow_pickle=False) as archive:
        meta = json.loads(archive["__meta__"].tobytes())
        assert meta["format"] == "plstm_np.network"
        np.testing.assert_array_equal(archive["param/layer0.tau"], net.params["layer0.tau"])


def test_existing_file_is_never_overwritten_silently(rng, tmp_path):
    net = make_network(rng)
    path = tmp_path / "keep.npz"
    path.write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        net.save(path)
    assert path.read_bytes() == b"precious"
    net.save(path, overwrite=True)
    assert pl.load(path).config() == net.config()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.npz"]  # no temporary left


def test_truncated_file(rng, tmp_path):
    net, opt, _ = trained(rng)
    path = tmp_path / "net.npz"
    net.save(path, optimizer=opt)
    data = path.read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        pl.load(tmp_path / "cut.npz")


def test_corrupt_bytes_are_detected(rng, tmp_path):
    net = make_network(rng)
    path = tmp_path / "net.npz"
    net.save(path)
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("param/layer0.Wx.npy")
    at = info.header_offset + 30 + len(info.filename) + 200  # inside the array's bytes
    data[at] ^= 0xFF
    (tmp_path / "bad.npz").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="truncated or corrupt"):
        pl.load(tmp_path / "bad.npz")


def test_mismatched_arrays(rng, tmp_path):
    net = make_network(rng)
    path = tmp_path / "net.npz"
    net.save(path)
    with np.load(path) as archive:
        arrays = {k: archive[k] for k in archive.files}
    wrong = dict(arrays)
    wrong["param/layer0.Wh"] = np.zeros((2, 2))
    np.savez(tmp_path / "shape.npz", **wrong)
    with pytest.raises(ValueError, match=r"param/layer0.Wh has shape \(2, 2\)"):
        pl.load(tmp_path / "shape.npz")
    missing = dict(arrays)
    del missing["param/readout.b"]
    np.savez(tmp_path / "missing.npz", **missing)
    with pytest.raises(ValueError, match=r"missing \['param/readout.b'\]"):
        pl.load(tmp_path / "missing.npz")
    meta = json.loads(arrays["__meta__"].tobytes())
    meta["version"] = 99
    newer = dict(arrays, __meta__=np.frombuffer(json.dumps(meta).encode(), np.uint8))
    np.savez(tmp_path / "newer.npz", **newer)
    with pytest.raises(ValueError, match="version 99"):
        pl.load(tmp_path / "newer.npz")
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match="no __meta__"):
        pl.load(tmp_path / "other.npz")
    with pytest.raises(FileNotFoundError):
        pl.load(tmp_path / "absent.npz")


def test_metadata_must_be_json(rng, tmp_path):
    with pytest.raises(TypeError, match="JSON"):
        make_network(rng).save(tmp_path / "m.npz", metadata={"f": object()})
    assert not (tmp_path / "m.npz").exists()


def test_pl_save_is_net_save(rng, tmp_path):
    net = make_network(rng)
    pl.save(tmp_path / "a.npz", net)
    net.save(tmp_path / "b.npz")
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    with pytest.raises(TypeError, match="net must be a Network"):
        pl.save(tmp_path / "c.npz", net.layers[0])
    with pytest.raises(FileExistsError, match="overwrite=True"):  # checked before the metadata
        net.save(tmp_path / "a.npz", metadata={"f": object()})


def test_an_interrupted_save_keeps_the_old_file(rng, tmp_path, monkeypatch):
    net = make_network(rng)
    path = tmp_path / "net.npz"
    net.save(path)
    before = path.read_bytes()

    def interrupted(f, **arrays):
        f.write(b"half an archive")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", interrupted)
    with pytest.raises(KeyboardInterrupt):
        net.save(path, overwrite=True)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["net.npz"]  # the temporary file is gone


def _rewrite(path, target, *, meta=None, **changes):
    """Copy the checkpoint ``path`` to ``target`` with arrays replaced and ``meta`` edited."""
    with np.load(path) as archive:
        arrays = {k: archive[k] for k in archive.files}
    if meta is not None:
        edited = meta(json.loads(arrays["__meta__"].tobytes()))
        arrays["__meta__"] = np.frombuffer(json.dumps(edited).encode(), np.uint8)
    arrays.update(changes)
    np.savez(target, **arrays)
    return target


def test_files_that_are_not_checkpoints_are_named(rng, tmp_path):
    net, opt, _ = trained(rng)
    path = tmp_path / "net.npz"
    net.save(path, optimizer=opt)
    np.save(tmp_path / "plain.npy", np.zeros(3))
    with pytest.raises(ValueError, match=r"plain\.npy holds a single array \(\.npy\)"):
        pl.load(tmp_path / "plain.npy")
    for edit, words in [
            (lambda m: [m], r"metadata \(__meta__\) is a JSON list"),
            (lambda m: "text", r"metadata \(__meta__\) is a JSON str"),
            (lambda m: {k: v for k, v in m.items() if k != "optimizer"},
             r"lacks \['optimizer'\]"),
            (lambda m: {k: v for k, v in m.items() if k != "metadata"}, r"lacks \['metadata'\]"),
            (lambda m: {k: v for k, v in m.items() if k != "network"}, r"lacks \['network'\]"),
            (lambda m: dict(m, optimizer=[1]), r"'optimizer' is a JSON list"),
            (lambda m: dict(m, network="x"), r"'network' is a JSON str"),
            (lambda m: dict(m, optimizer={k: v for k, v in m["optimizer"].items()
                                          if k != "bounds"}), "optimizer state cannot be"),
            (lambda m: dict(m, network=dict(m["network"], layers=[7])), "cannot be rebuilt")]:
        bad = _rewrite(path, tmp_path / "bad.npz", meta=edit)
        for loader in (pl.load, pl.load_checkpoint):
            with pytest.raises(ValueError, match=words) as info:
                loader(bad)
            assert str(bad) in str(info.value)


@pytest.mark.parametrize("name, value, words", [
    ("layer0.tau", -1.0, r"tau must be finite and > 0, got tau\[1\] = -1"),
    ("layer0.tau", np.nan, r"non-finite value nan"),
    ("layer0.tau", 0.0, r"tau must be finite and > 0"),
    ("layer0.r_on", 1.5, r"r_on must lie in \(0, 1\], got r_on\[1\] = 1.5"),
    ("layer0.r_on", 0.0, r"r_on must lie in \(0, 1\]"),
    ("layer0.r_on", np.nan, r"non-finite value nan"),
    ("layer0.Wh", np.inf, r"param/layer0.Wh has a non-finite value inf"),
    ("readout.W", np.nan, r"param/readout.W has a non-finite value nan"),
    ("adam_m/layer0.b", np.nan, r"adam_m/layer0.b has a non-finite value nan"),
])
def test_parameters_outside_their_domain_are_refused(rng, tmp_path, name, value, words):
    net, opt, _ = trained(rng)
    path = tmp_path / "net.npz"
    net.save(path, optimizer=opt)
    key = name if "/" in name else f"param/{name}"
    with np.load(path) as archive:
        array = archive[key].copy()
    array.flat[1] = value
    bad = _rewrite(path, tmp_path / "bad.npz", **{key: array})
    for loader in (pl.load, pl.load_checkpoint):
        with pytest.raises(ValueError, match=words) as info:
            loader(bad)
        assert str(bad) in str(info.value)
    pl.load(path)  # the original is fine
