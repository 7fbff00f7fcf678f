"""idx and csv readers of the shipped digit data."""
import gzip

import numpy as np
import pytest

from plstm_np import mnist


def write_idx(path, array, compress=True):
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, ">u4").tobytes()
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)


@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_round_trip(tmp_path, compress):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / ("a.idx.gz" if compress else "a.idx")
    write_idx(path, array, compress)
    out = mnist.read_idx(path)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, array)


def test_read_idx_bad_files(tmp_path):
    bad = tmp_path / "float.idx"
    bad.write_bytes(bytes([0, 0, 0x0D, 1, 0, 0, 0, 1]) + b"\0" * 4)
    with pytest.raises(ValueError, match=r"float\.idx.*uint8"):
        mnist.read_idx(bad)
    short = tmp_path / "short.idx"
    write_idx(short, np.zeros((4, 5)), compress=False)
    short.write_bytes(short.read_bytes()[:-3])
    with pytest.raises(ValueError, match=r"short\.idx.*shape \(4, 5\)"):
        mnist.read_idx(short)


def test_load_mnist_and_digits():
    images, labels = mnist.load_mnist()
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert images.max() == 255 and labels.dtype == np.int64
    digits, dlabels = mnist.load_digits()
    assert digits.shape == (1797, 8, 8) and digits.max() == 16 and dlabels.shape == (1797,)
