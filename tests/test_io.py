"""Reading images: channels last, memmaps for big uncompressed TIFFs, typed errors."""

import numpy as np
import pytest
import tifffile

from segloop.core.io import read_image, write_labels
from segloop.errors import ImageReadError


def test_ome_tiff_channels_first_is_moved_last(tmp_path):
    data = np.random.default_rng(0).integers(0, 255, (2, 40, 50), dtype=np.uint8)
    p = tmp_path / "x.ome.tif"
    tifffile.imwrite(p, data, metadata={"axes": "CYX"})
    img, info = read_image(p)
    assert img.shape == (40, 50, 2) and info.axes.endswith("C")
    np.testing.assert_array_equal(img[..., 1], data[1])


def test_uncompressed_tiff_is_memory_mapped_compressed_is_read(tmp_path):
    data = np.arange(300 * 200, dtype=np.uint16).reshape(300, 200)
    tifffile.imwrite(tmp_path / "a.tif", data)
    tifffile.imwrite(tmp_path / "b.tif", data, compression="zlib")
    a, ia = read_image(tmp_path / "a.tif")
    b, ib = read_image(tmp_path / "b.tif")
    assert ia.memmapped and isinstance(a, np.memmap) and not ib.memmapped
    np.testing.assert_array_equal(a, b)


def test_unsupported_missing_and_corrupt(tmp_path):
    with pytest.raises(ImageReadError, match="no such file"):
        read_image(tmp_path / "missing.tif")
    (tmp_path / "x.xyz").write_text("hi")
    with pytest.raises(ImageReadError, match="unsupported"):
        read_image(tmp_path / "x.xyz")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 10)
    with pytest.raises(ImageReadError):
        read_image(tmp_path / "bad.png")


def test_write_labels_is_atomic_and_round_trips(tmp_path):
    lab = np.random.default_rng(0).integers(0, 70000, (300, 300)).astype(np.uint32)
    p = write_labels(tmp_path / "l.tif", lab, metadata={"model": "x"})
    np.testing.assert_array_equal(tifffile.imread(p), lab)
    assert not list(tmp_path.glob(".*partial*"))
