"""Whole-slide reading (segloop.core.formats.io.wsi) and the napari reader for slides.

The slides are built here from real IHC pixels (scikit-image's immunohistochemistry image,
mosaicked to 3072 x 4096): a JPEG-compressed tiled TIFF pyramid (SubIFDs, resolution tags), an
OME-TIFF pyramid and an Aperio-style SVS (levels as pages, thumbnail, label and macro).  OpenSlide
reads the SVS and the tiled TIFF, so the two backends are compared pixel for pixel.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml

from segloop.core.formats.io.wsi import SLIDE_SUFFIXES, open_slide
from segloop.errors import ImageReadError, InvalidPixelSizeError

H, W = 3072, 4096
TILE = (256, 256)
SVS_MPP = 0.2520


@pytest.fixture(scope="module")
def mosaic() -> np.ndarray:
    """(3072, 4096, 3) uint8 of real IHC tissue: the 512 x 512 image, mirrored tile by tile."""
    from skimage import data

    t = data.immunohistochemistry()
    row = np.concatenate([t if i % 2 == 0 else t[:, ::-1] for i in range(W // 512)], axis=1)
    return np.ascontiguousarray(np.concatenate([row if j % 2 == 0 else row[::-1] for j in range(H // 512)], axis=0))


@pytest.fixture(scope="module")
def label_image() -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(np.repeat(data.text()[:100, :120, None], 3, axis=-1))


def _write_subifd_pyramid(path: Path, img: np.ndarray, *, n_levels: int, **level0_kw) -> None:
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        kw = dict(tile=TILE, compression="jpeg", photometric="rgb")
        tw.write(img, subifds=n_levels - 1, **kw, **level0_kw)
        for i in range(1, n_levels):
            extra = {k: v for k, v in level0_kw.items() if k == "resolutionunit"}
            if "resolution" in level0_kw:
                extra["resolution"] = tuple(r / 2**i for r in level0_kw["resolution"])
            tw.write(img[:: 2**i, :: 2**i], subfiletype=1, **kw, **extra)


@pytest.fixture(scope="module")
def pyramid_tif(tmp_path_factory, mosaic) -> Path:
    """Generic tiled JPEG pyramid, 4 levels in SubIFDs, 0.5 µm/px in its resolution tags."""
    p = tmp_path_factory.mktemp("wsi") / "pyramid.tif"
    _write_subifd_pyramid(p, mosaic, n_levels=4, resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")
    return p


@pytest.fixture(scope="module")
def ome_tif(tmp_path_factory, mosaic) -> Path:
    """OME-TIFF pyramid, 3 levels; the pixel size is only in the OME-XML (no resolution tags)."""
    p = tmp_path_factory.mktemp("wsi") / "slide.ome.tif"
    _write_subifd_pyramid(p, mosaic, n_levels=3,
                          metadata={"axes": "YXS", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5,
                                    "PhysicalSizeXUnit": "µm", "PhysicalSizeYUnit": "µm"})
    return p


@pytest.fixture(scope="module")
def svs(tmp_path_factory, mosaic, label_image) -> Path:
    """Aperio layout: tiled level 0, stripped thumbnail, tiled levels at 1/4 and 1/16, label, macro."""
    p = tmp_path_factory.mktemp("wsi") / "slide.svs"
    head = "Aperio Image Library v12.0.15"
    desc = f"{head}\n{W}x{H} [0,0 {W}x{H}] (256x256) JPEG/RGB Q=90|AppMag = 40|MPP = {SVS_MPP:.4f}|Filename = t"
    jpeg = dict(compression="jpeg", photometric="rgb", metadata=None)
    with tifffile.TiffWriter(p) as tw:
        tw.write(mosaic, tile=TILE, description=desc, **jpeg)
        thumb = mosaic[::16, ::16]
        tw.write(thumb, description=f"{head}\n{W}x{H} -> {thumb.shape[1]}x{thumb.shape[0]}", **jpeg)
        for f in (4, 16):
            tw.write(mosaic[::f, ::f], tile=TILE, description=desc, **jpeg)
        tw.write(label_image, compression="lzw", photometric="rgb", subfiletype=1, metadata=None,
                 description=f"{head}\nlabel 120x100")
        macro = mosaic[::32, ::32]
        tw.write(macro, subfiletype=9, description=f"{head}\nmacro {macro.shape[1]}x{macro.shape[0]}", **jpeg)
    return p


def _region(level, y0, y1, x0, x1) -> np.ndarray:
    return np.asarray(level[y0:y1, x0:x1])


def _tifffile_level(path: Path, level: int) -> np.ndarray:
    """A level as tifffile itself decodes it (SVS levels come with a leading Z of 1)."""
    img = tifffile.imread(path, series=0, level=level)
    return img.reshape(img.shape[-3:])


# -- tifffile backend --------------------------------------------------------------------------------

def test_pyramidal_tiff_levels_are_lazy_tiled_rgb_with_pixel_size(pyramid_tif):
    with open_slide(pyramid_tif) as slide:
        assert slide.backend == "tifffile" and slide.vendor == "generic-tiff" and slide.axes == "YXS"
        assert [lv.shape for lv in slide.levels] == [(H >> i, W >> i, 3) for i in range(4)]
        assert all(lv.dtype == np.uint8 for lv in slide.levels)
        assert all(lv.chunksize == (256, 256, 3) for lv in slide.levels)      # the file's own tiles
        assert slide.downsamples == [1.0, 2.0, 4.0, 8.0]
        assert slide.mpp == pytest.approx((0.5, 0.5))
        assert slide.pixel_size(3) == pytest.approx((4.0, 4.0))
        for i in (0, 2):                       # the same pixels tifffile decodes for that level
            ref = _tifffile_level(pyramid_tif, i)
            np.testing.assert_array_equal(_region(slide.levels[i], 100, 613, 300, 555), ref[100:613, 300:555])
        meta = json.loads(json.dumps(slide.metadata))
        assert meta["level_shapes"] == [[H >> i, W >> i] for i in range(4)]
        assert meta["mpp"] == pytest.approx([0.5, 0.5]) and meta["tile_shape"] == [256, 256]
        assert meta["source"] == str(pyramid_tif) and meta["backend"] == "tifffile"
        assert slide.associated == {}


def test_ome_tiff_pixel_size_comes_from_physical_size(ome_tif, mosaic):
    with tifffile.TiffFile(ome_tif) as tf:
        assert "XResolution" not in tf.pages[0].tags or tf.pages[0].tags["ResolutionUnit"].value == 1
    with open_slide(ome_tif) as slide:
        assert slide.vendor == "ome" and len(slide.levels) == 3
        assert slide.mpp == pytest.approx((0.5, 0.5))
        assert slide.pixel_size(2) == pytest.approx((2.0, 2.0))
        np.testing.assert_array_equal(_region(slide.levels[1], 0, 512, 0, 512), _tifffile_level(ome_tif, 1)[:512, :512])
        assert np.abs(_region(slide.levels[0], 0, 512, 0, 512).astype(int) - mosaic[:512, :512]).mean() < 3


def test_aperio_svs_levels_mpp_magnification_and_associated_images(svs, mosaic, label_image):
    with open_slide(svs) as slide:
        assert slide.backend == "tifffile" and slide.vendor == "aperio"
        assert slide.mpp == pytest.approx((SVS_MPP, SVS_MPP)) and slide.objective_power == 40
        # the stripped thumbnail page between level 0 and 1/4 is not a level
        assert [lv.shape for lv in slide.levels] == [(H, W, 3), (H // 4, W // 4, 3), (H // 16, W // 16, 3)]
        assert slide.downsamples == [1.0, 4.0, 16.0]
        assert slide.pixel_size(1) == pytest.approx((4 * SVS_MPP, 4 * SVS_MPP))
        assert set(slide.associated) == {"label", "macro", "thumbnail"}
        np.testing.assert_array_equal(slide.associated["label"], label_image)      # LZW: lossless
        assert slide.associated["macro"].shape == (H // 32, W // 32, 3)
        assert slide.associated["thumbnail"].shape == (H // 16, W // 16, 3)
        assert slide.metadata["properties"]["aperio.AppMag"] == "40"
        assert slide.metadata["associated"] == ["thumbnail", "label", "macro"]


def test_a_tiff_that_is_not_a_pyramid_opens_as_one_level(tmp_path, mosaic):
    p = tmp_path / "plain.tif"
    tifffile.imwrite(p, mosaic[:700, :900], photometric="rgb")          # stripped, uncompressed
    with open_slide(p) as slide:
        assert len(slide.levels) == 1 and slide.downsamples == [1.0] and slide.mpp is None
        np.testing.assert_array_equal(np.asarray(slide.levels[0]), mosaic[:700, :900])


# -- laziness ----------------------------------------------------------------------------------------

def test_opening_decodes_no_tile(svs, tmp_path, mosaic):
    """Every level-0 tile is overwritten with random bytes: opening still works and reports the
    slide (so it decoded nothing), level 1 still reads, and reading level 0 fails with a typed error."""
    p = tmp_path / "garbage.svs"
    shutil.copy(svs, p)
    with tifffile.TiffFile(p) as tf:
        segments = list(zip(tf.pages[0].dataoffsets, tf.pages[0].databytecounts))
    rng = np.random.default_rng(0)
    with open(p, "r+b") as f:
        for offset, count in segments:
            f.seek(offset)
            f.write(rng.integers(0, 256, count, dtype=np.uint8).tobytes())
    for backend in ("tifffile", "openslide"):
        with open_slide(p, backend=backend) as slide:
            assert slide.levels[0].shape == (H, W, 3) and slide.mpp == pytest.approx((SVS_MPP, SVS_MPP))
            np.testing.assert_array_equal(_region(slide.levels[1], 0, 256, 0, 256),
                                          _tifffile_level(svs, 1)[:256, :256])
            with pytest.raises(ImageReadError, match="garbage.svs"):
                _region(slide.levels[0], 0, 256, 0, 256)


def test_a_100k_by_100k_slide_opens_from_its_header(tmp_path, mosaic):
    """A 100000 x 100000 RGB level (30 GB decoded) holding one real tile and empty ones: opening
    and reading a corner work without memory for the whole level."""
    n = 100_000
    tile = np.ascontiguousarray(mosaic[:256, :256])

    def tiles():
        yield tile
        for _ in range(((n + 255) // 256) ** 2 - 1):
            yield None                                       # an empty tile: no bytes in the file

    p = tmp_path / "huge.tif"
    tifffile.imwrite(p, tiles(), shape=(n, n, 3), dtype="uint8", tile=TILE, compression="jpeg",
                     photometric="rgb", bigtiff=True)
    assert p.stat().st_size < 8 * 2**20
    with open_slide(p) as slide:
        (level,) = slide.levels
        assert level.shape == (n, n, 3) and level.chunksize == (256, 256, 3) and level.numblocks == (391, 391, 1)
        first = tifffile.imread(p, selection=(slice(0, 256), slice(0, 256), slice(None)))
        assert np.abs(first.astype(int) - tile).mean() < 3                 # the tile written (JPEG)
        np.testing.assert_array_equal(_region(level, 0, 256, 0, 256), first)
        assert _region(level, n - 300, n, n - 300, n).max() == 0


# -- OpenSlide backend -------------------------------------------------------------------------------

def test_openslide_reads_the_same_svs_as_tifffile(svs, label_image):
    with open_slide(svs) as tiff, open_slide(svs, backend="openslide") as osl:
        assert osl.backend == "openslide" and osl.vendor == "aperio"
        assert osl.mpp == pytest.approx(tiff.mpp) and osl.objective_power == 40
        assert [lv.shape for lv in osl.levels] == [lv.shape for lv in tiff.levels]
        assert osl.downsamples == pytest.approx(tiff.downsamples)
        assert osl.levels[0].chunksize == (256, 256, 3) and osl.levels[0].dtype == np.uint8
        for i, (y0, x0) in enumerate([(300, 700), (123, 45), (10, 20)]):          # not tile aligned
            a = _region(osl.levels[i], y0, y0 + 150, x0, x0 + 130)
            b = _region(tiff.levels[i], y0, y0 + 150, x0, x0 + 130)
            assert a.shape == (150, 130, 3)
            np.testing.assert_array_equal(a, b)
        assert set(osl.associated) == {"label", "macro", "thumbnail"}
        np.testing.assert_array_equal(osl.associated["label"], label_image)
        np.testing.assert_array_equal(osl.associated["macro"], tiff.associated["macro"])
        assert json.loads(json.dumps(osl.metadata))["properties"]["openslide.vendor"] == "aperio"


def test_openslide_reads_the_generic_tiled_tiff_like_tifffile(pyramid_tif):
    with open_slide(pyramid_tif) as tiff, open_slide(pyramid_tif, backend="openslide") as osl:
        assert osl.vendor == "generic-tiff" and osl.mpp == pytest.approx((0.5, 0.5))
        np.testing.assert_array_equal(_region(osl.levels[0], 1000, 1400, 2000, 2300),
                                      _region(tiff.levels[0], 1000, 1400, 2000, 2300))


# -- choosing a level --------------------------------------------------------------------------------

def test_level_for_picks_the_coarsest_level_not_coarser_than_asked(svs):
    with open_slide(svs) as slide:             # 0.252, 1.008, 4.032 µm/px
        assert slide.level_for(0.1) == (0, 1.0)              # finer than level 0: level 0
        assert slide.level_for(SVS_MPP) == (0, 1.0)
        assert slide.level_for(1.0) == (0, 1.0)              # 1.008 would be coarser than asked
        assert slide.level_for(1.008) == (1, 4.0)
        assert slide.level_for(4.0) == (1, 4.0)
        assert slide.level_for(50) == (2, 16.0)
        assert slide.level_for((0.5, 2.0)) == (0, 1.0)       # y decides
        for bad in (0, -1.0, float("nan"), "abc", (1.0, 2.0, 3.0)):
            with pytest.raises(InvalidPixelSizeError):
                slide.level_for(bad)


def test_level_for_needs_a_pixel_size(tmp_path, mosaic):
    p = tmp_path / "nompp.tif"
    tifffile.imwrite(p, mosaic[:512, :512], photometric="rgb", tile=TILE)
    with open_slide(p) as slide, pytest.raises(InvalidPixelSizeError, match="does not record its pixel size"):
        slide.level_for(1.0)


# -- errors --------------------------------------------------------------------------------------------

def test_missing_file_is_a_typed_error_naming_it(tmp_path):
    p = tmp_path / "nope.svs"
    with pytest.raises(ImageReadError, match="no such file") as e:
        open_slide(p)
    assert str(p) in str(e.value)


@pytest.mark.parametrize("fraction", [0.02, 0.5, 0.9995])
def test_truncated_slide_is_a_typed_error_naming_it(tmp_path, svs, fraction):
    data = svs.read_bytes()
    p = tmp_path / "cut.svs"
    p.write_bytes(data[: int(len(data) * fraction)])
    for backend in ("auto", "openslide"):
        if backend == "openslide" and fraction > 0.99:
            continue                      # OpenSlide opens it (only the macro is cut) and fails on reading
        with pytest.raises(ImageReadError) as e:
            open_slide(p, backend=backend)
        assert str(p) in str(e.value) and "truncated" in str(e.value)


@pytest.mark.parametrize("which", ["svs", "pyramid_tif"])
def test_a_slide_cut_between_its_levels_does_not_open_with_fewer_levels(tmp_path, request, which):
    """Cut right before a later level's image directory: every byte of level 0 is there, and tifffile
    alone would drop the missing levels with a logged warning."""
    src = request.getfixturevalue(which)
    with tifffile.TiffFile(src) as tf:
        cut = tf.pages[2].offset if which == "svs" else tf.pages[0].subifds[1]
    p = tmp_path / f"cut{src.suffix}"
    p.write_bytes(src.read_bytes()[:cut])
    with pytest.raises(ImageReadError, match="truncated") as e:
        open_slide(p)
    assert str(p) in str(e.value)


def test_random_bytes_ndpi_is_a_typed_error_naming_it(tmp_path):
    p = tmp_path / "scan.ndpi"
    p.write_bytes(np.random.default_rng(3).integers(0, 256, 10_000, dtype=np.uint8).tobytes())
    with pytest.raises(ImageReadError, match="not a whole-slide format OpenSlide reads") as e:
        open_slide(p)
    assert str(p) in str(e.value)


def test_unsupported_suffix_is_a_typed_error(tmp_path):
    p = tmp_path / "notes.txt"
    p.write_text("not a slide")
    with pytest.raises(ImageReadError, match="not a whole-slide format segloop reads"):
        open_slide(p)


def test_missing_openslide_says_what_to_install(tmp_path, monkeypatch):
    p = tmp_path / "scan.ndpi"
    p.write_bytes(b"\0" * 100)
    monkeypatch.setitem(sys.modules, "openslide", None)         # as if openslide-python were not installed
    with pytest.raises(ImageReadError, match=r'pip install "napari-segloop\[wsi\]"') as e:
        open_slide(p)
    assert str(p) in str(e.value)


# -- napari reader -------------------------------------------------------------------------------------

def test_napari_reader_opens_an_svs_as_a_multiscale_layer_in_micrometres(svs):
    from segloop._napari.io import get_reader

    reader = get_reader(str(svs))
    assert reader is not None
    ((data, kwargs, kind),) = reader(str(svs))
    assert kind == "image" and kwargs["multiscale"] is True and kwargs["rgb"] is True
    assert [d.shape for d in data] == [(H, W, 3), (H // 4, W // 4, 3), (H // 16, W // 16, 3)]
    assert kwargs["scale"] == pytest.approx((SVS_MPP, SVS_MPP))
    slide_meta = kwargs["metadata"]["segloop_slide"]
    assert slide_meta["vendor"] == "aperio" and slide_meta["mpp"] == pytest.approx([SVS_MPP, SVS_MPP])
    assert slide_meta["objective_power"] == 40 and slide_meta["downsamples"] == [1.0, 4.0, 16.0]
    source = kwargs["metadata"]["segloop_source"]
    assert set(source) == {"source", "axes", "pixel_size"}
    assert source["source"] == str(svs) and source["pixel_size"] == pytest.approx((SVS_MPP, SVS_MPP))


def test_napari_reader_sends_a_pyramidal_tiff_through_the_slide_reader(pyramid_tif, tmp_path, mosaic):
    from segloop._napari.io import get_reader

    ((data, kwargs, _),) = get_reader(str(pyramid_tif))(str(pyramid_tif))
    assert kwargs["multiscale"] and len(data) == 4 and kwargs["scale"] == pytest.approx((0.5, 0.5))
    assert kwargs["metadata"]["segloop_slide"]["vendor"] == "generic-tiff"
    plain = tmp_path / "plain.tif"                        # one level: the image reader as before
    tifffile.imwrite(plain, mosaic[:300, :400], photometric="rgb")
    ((img, kw, _),) = get_reader(str(plain))(str(plain))
    assert "multiscale" not in kw and "segloop_slide" not in kw["metadata"] and img.shape == (300, 400, 3)


def test_napari_reader_accepts_slide_suffixes_and_reports_bad_slides(tmp_path):
    from segloop._napari.io import get_reader

    for suffix in SLIDE_SUFFIXES:
        assert get_reader(str(tmp_path / f"x{suffix}")) is not None, suffix
    assert get_reader(str(tmp_path / "x.txt")) is None
    manifest = yaml.safe_load((Path(__file__).parents[1] / "src" / "segloop" / "napari.yaml").read_text())
    (reader,) = [r for r in manifest["contributions"]["readers"] if r["command"] == "napari-segloop.get_reader"]
    assert {f"*{s}" for s in SLIDE_SUFFIXES} <= set(reader["filename_patterns"])
    p = tmp_path / "scan.ndpi"
    p.write_bytes(b"II*\0" + b"\x07" * 500)
    with pytest.raises(ImageReadError, match="scan.ndpi"):
        get_reader(str(p))(str(p))


def test_napari_opens_the_svs_as_a_multiscale_rgb_layer_in_micrometres(make_napari_viewer, svs):
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(svs), plugin="napari-segloop")
    assert layer.multiscale and layer.rgb and len(layer.data) == 3
    assert tuple(layer.scale) == pytest.approx((SVS_MPP, SVS_MPP))
    assert [str(u) for u in layer.units] == ["micrometer", "micrometer"]
    assert layer.metadata["segloop_slide"]["vendor"] == "aperio"


# -- PNG / JPEG fields of view -----------------------------------------------------------------------

def test_png_and_jpeg_tiles_open_as_one_level_slides_without_a_pixel_size(tmp_path):
    from skimage import data
    from skimage.io import imsave

    ihc = data.immunohistochemistry()
    rgba = np.dstack([ihc, np.full(ihc.shape[:2], 255, np.uint8)])
    grey16 = (ihc[..., 2].astype(np.uint16) * 257)
    grey_alpha = np.dstack([ihc[..., 0], np.full(ihc.shape[:2], 255, np.uint8)])
    cases = {"rgb.png": (ihc, ihc), "rgba.png": (rgba, ihc), "grey16.png": (grey16, grey16),
             "grey_alpha.png": (grey_alpha, ihc[..., 0]), "rgb.jpg": (ihc, None)}
    for name, (written, expected) in cases.items():
        p = tmp_path / name
        if name.endswith(".jpg"):
            from PIL import Image

            Image.fromarray(written).save(p, quality=95)
        else:
            imsave(p, written, check_contrast=False)
        with open_slide(p) as slide:
            (level,) = slide.levels
            assert slide.mpp is None and slide.vendor == "image" and slide.downsamples == [1.0], name
            got = np.asarray(level)
            assert got.shape == (ihc.shape[:2] + ((3,) if expected is None or expected.ndim == 3 else ())), name
            if expected is not None:
                np.testing.assert_array_equal(got, expected)
            else:
                assert np.abs(got.astype(int) - ihc).mean() < 4                      # JPEG
    (tmp_path / "cut.png").write_bytes((tmp_path / "rgb.png").read_bytes()[:500])
    with pytest.raises(ImageReadError, match="cut.png"):
        open_slide(tmp_path / "cut.png")
