"""Reading images: channels last, memmaps for big uncompressed TIFFs, typed errors."""

import numpy as np
import pytest
import tifffile

from segloop.core.formats.io import read_image, write_labels
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


def _write_pyramid(path, data, levels=3):
    """A tiled, zlib-compressed OME-TIFF pyramid (level 0 + SubIFDs), as slide scanners write."""
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        kw = dict(tile=(256, 256), compression="zlib", photometric="rgb" if data.ndim == 3 else "minisblack")
        tw.write(data, subifds=levels - 1, metadata={"axes": "YXS" if data.ndim == 3 else "YX"}, **kw)
        for i in range(1, levels):
            tw.write(data[:: 2**i, :: 2**i], subfiletype=1, **kw)


def test_compressed_pyramid_is_read_lazily_at_level_0(tmp_path):
    from segloop.core.formats.io import read_pyramid

    data = np.random.default_rng(1).integers(0, 255, (1024, 768, 3), dtype=np.uint8)
    p = tmp_path / "slide.ome.tif"
    _write_pyramid(p, data)
    img, info = read_image(p)
    assert info.extra["lazy"] and not isinstance(img, np.ndarray)       # nothing decoded yet
    assert img.shape == (1024, 768, 3) and info.axes == "YXS"
    np.testing.assert_array_equal(np.asarray(img[300:557, 100:400]), data[300:557, 100:400])
    levels, _ = read_pyramid(p)
    assert [lv.shape[:2] for lv in levels] == [(1024, 768), (512, 384), (256, 192)]
    np.testing.assert_array_equal(np.asarray(levels[2]), data[::4, ::4])


def test_truncated_compressed_pyramid_is_refused_at_open(tmp_path):
    data = np.random.default_rng(1).integers(0, 255, (1024, 1024, 3), dtype=np.uint8)
    p = tmp_path / "slide.ome.tif"
    _write_pyramid(p, data)
    bad = tmp_path / "cut.ome.tif"
    bad.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(ImageReadError, match="truncated|cannot read"):
        read_image(bad)
