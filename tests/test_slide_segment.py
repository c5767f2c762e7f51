"""Block-wise slide segmentation (core/inference/slide.py): stitching, OME-Zarr, tissue, resume, regions.

Real pixels and the real bundled ``nuclei-unet``: a grey fluorescence "slide" mosaicked from
BBBC007 (CC0, shipped in segloop/data; lossless tiled pyramid, no pixel size) and an IHC slide from
scikit-image's immunohistochemistry image with a band of white glass (JPEG tiled pyramid,
0.5 µm/px in its resolution tags), both written with tifffile and read through :func:`open_slide`.
Slides are about 2 Mpx, blocks 256-512 px, so each run takes seconds on two CPU cores.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

import segloop
from segloop.core.editing.metrics import instance_scores
from segloop.core.formats.io.wsi import open_slide
from segloop.core.inference.slide import (
    block_grid,
    overview,
    segment_slide,
    stitch_pairs,
    tissue_mask,
)
from segloop.errors import Cancelled, InvalidImageError, InvalidLabelsError, WriteError

from .conftest import DATA
from .test_wsi_reader import _write_subifd_pyramid

GREY_H, GREY_W = 1300, 1450          # not multiples of the block: the last row and column are narrow
RGB_H, RGB_W = 1024, 2048
BAND = 1300                           # RGB columns >= BAND are white glass (240)
RGB_MPP = 0.5
HEMATOXYLIN = {"normalization": {"kind": "hematoxylin"}}


def _grey_mosaic() -> np.ndarray:
    """(1300, 1450) uint8 fluorescence nuclei: BBBC007 mirrored tile by tile."""
    g = tifffile.imread(DATA / "bbbc007_A9_p10d.tif")
    t = np.concatenate([np.concatenate([g, g[:, ::-1]], 1), np.concatenate([g[::-1], g[::-1, ::-1]], 1)], 0)
    return np.ascontiguousarray(np.tile(t, (2, 2))[:GREY_H, :GREY_W])


def _rgb_mosaic() -> np.ndarray:
    """(1024, 2048, 3) uint8 IHC tissue, mirrored tile by tile, with glass from column BAND on."""
    from skimage import data

    t = data.immunohistochemistry()
    row = np.concatenate([t if i % 2 == 0 else t[:, ::-1] for i in range(RGB_W // 512)], axis=1)
    img = np.ascontiguousarray(np.concatenate([row if j % 2 == 0 else row[::-1] for j in range(RGB_H // 512)], 0))
    img[:, BAND:] = 240
    return img


def _grey_pyramid(path: Path, img: np.ndarray, *, n_levels: int) -> Path:
    """Tiled (256 px), zlib-compressed, minisblack pyramid in SubIFDs; no resolution tags."""
    kw = dict(tile=(256, 256), compression="zlib", photometric="minisblack")
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        tw.write(img, subifds=n_levels - 1, **kw)
        for i in range(1, n_levels):
            tw.write(img[:: 2**i, :: 2**i], subfiletype=1, **kw)
    return path


@pytest.fixture(scope="module")
def model():
    return segloop.load_model("nuclei-unet", device="cpu")


@pytest.fixture(scope="module")
def grey(tmp_path_factory):
    """The open grey slide (3 levels) and the pixels written into it."""
    img = _grey_mosaic()
    path = _grey_pyramid(tmp_path_factory.mktemp("slides") / "nuclei.tif", img, n_levels=3)
    with open_slide(path) as slide:
        yield slide, img


@pytest.fixture(scope="module")
def rgb(tmp_path_factory):
    """The open IHC slide (3 levels, 0.5 µm/px at level 0)."""
    path = tmp_path_factory.mktemp("slides") / "ihc.tif"
    _write_subifd_pyramid(path, _rgb_mosaic(), n_levels=3, resolution=(1e4 / RGB_MPP, 1e4 / RGB_MPP),
                          resolutionunit="CENTIMETER")
    with open_slide(path) as slide:
        yield slide


GREY_RUN = dict(chunk=256, tissue=False)        # the settings every grey run shares (block aside)


@pytest.fixture(scope="module")
def grey_runs(grey, model, tmp_path_factory):
    """The grey slide predicted as one array, and segmented with blocks of 256 and 512."""
    slide, _ = grey
    root = tmp_path_factory.mktemp("runs")
    whole = np.asarray(slide.levels[0])
    # the slide run fits its normalizer once, on the overview; the whole-array run uses the same one
    norm = model.normalizer_for(overview(slide)[0])
    out = {"whole": np.asarray(model.predict(whole, normalizer=norm).labels)}
    for block in (256, 512):
        res = segment_slide(slide, model, root / f"b{block}.zarr", block=block, **GREY_RUN)
        out[block] = (res, np.asarray(res.labels))
    return out


@pytest.fixture(scope="module")
def rgb_run(rgb, model, tmp_path_factory):
    out = tmp_path_factory.mktemp("rgb") / "ihc.zarr"
    res = segment_slide(rgb, model, out, block=512, chunk=256, predict=HEMATOXYLIN)
    return res, out


# --------------------------------------------------------------------------- 1. stitching


def test_the_labels_do_not_depend_on_the_block_size(grey_runs):
    whole = grey_runs["whole"]
    n_whole = len(np.unique(whole)) - 1
    assert n_whole > 300
    for block in (256, 512):
        res, lab = grey_runs[block]
        assert lab.shape == whole.shape and lab.dtype == np.uint32
        ids = np.unique(lab[lab > 0])
        assert res.n_objects == len(ids)
        np.testing.assert_array_equal(ids, np.arange(1, len(ids) + 1))            # compact 1..N
        assert abs(res.n_objects - n_whole) <= 0.005 * n_whole, (block, res.n_objects, n_whole)
        assert instance_scores(whole, lab)["f1@0.5"] >= 0.99, block
        assert res.blocks == len(block_grid(res.plan)) == res.blocks_run and res.blocks_skipped == 0
    assert instance_scores(grey_runs[256][1], grey_runs[512][1])["f1@0.5"] >= 0.99
    small, large = grey_runs[256][0], grey_runs[512][0]
    assert small.blocks == 36 and large.blocks == 9
    assert small.merged > large.merged > 0                                   # more borders, more joins


def test_objects_on_block_borders_are_one_object(grey_runs):
    """Nuclei the whole-array prediction has across a 256-block border keep one id in the slide run.

    Without stitching each would be two pieces, one per block; a few may differ anyway where the
    network itself separates touching nuclei differently for another tile grid.
    """
    whole = grey_runs["whole"]
    _, lab = grey_runs[256]
    cut = set()
    for y in range(256, GREY_H, 256):
        cut |= set(np.unique(whole[y - 1][whole[y - 1] == whole[y]]).tolist())
    for x in range(256, GREY_W, 256):
        cut |= set(np.unique(whole[:, x - 1][whole[:, x - 1] == whole[:, x]]).tolist())
    cut.discard(0)
    assert len(cut) > 100
    whole_piece = 0
    for i in cut:
        ids = lab[whole == i]
        whole_piece += np.bincount(ids[ids > 0]).max(initial=0) >= 0.9 * ids.size     # one id holds it
    assert whole_piece >= 0.97 * len(cut), (whole_piece, len(cut))


# --------------------------------------------------------------------------- 2. OME-Zarr


def _check_multiscales(attrs: dict, axes: list[str], n_levels: int, pixel: float | None) -> None:
    ms = attrs["multiscales"]
    assert len(ms) == 1 and ms[0]["version"] == "0.4"
    assert [a["name"] for a in ms[0]["axes"]] == axes
    assert [a["type"] for a in ms[0]["axes"]] == ["channel"] * (axes[0] == "c") + ["space", "space"]
    units = {a.get("unit") for a in ms[0]["axes"] if a["type"] == "space"}
    assert units == ({"micrometer"} if pixel else {None})
    ds = ms[0]["datasets"]
    assert [d["path"] for d in ds] == [str(i) for i in range(n_levels)]
    for i, d in enumerate(ds):
        kinds = [t["type"] for t in d["coordinateTransformations"]]
        assert kinds[0] == "scale" and set(kinds) <= {"scale", "translation"}
        scale = d["coordinateTransformations"][0]["scale"]
        assert len(scale) == len(axes)
        assert scale[-2:] == pytest.approx([(pixel or 1.0) * 2**i] * 2)      # levels halve


def _check_ngff(out: Path, pixels: np.ndarray, pixel: float | None, *, width: int | None = None) -> zarr.Group:
    """The NGFF layout of ``out``; its image is compared with ``pixels`` on columns ``:width``."""
    root = zarr.open_group(str(out), mode="r")
    n = len(root.attrs["multiscales"][0]["datasets"])
    assert n >= 2
    _check_multiscales(dict(root.attrs), ["c", "y", "x"], n, pixel)
    assert root.attrs["omero"]["channels"]
    assert list(root["labels"].attrs["labels"]) == ["nuclei"]
    lab = root["labels/nuclei"]
    _check_multiscales(dict(lab.attrs), ["y", "x"], n, pixel)
    assert lab.attrs["image-label"]["version"] == "0.4"
    h, w = pixels.shape[:2]
    for i in range(n):
        assert root[str(i)].shape[1:] == lab[str(i)].shape == ((h + 2**i - 1) // 2**i, (w + 2**i - 1) // 2**i)
    l0, l1 = np.asarray(lab["0"]), np.asarray(lab["1"])
    assert l0.dtype == np.uint32
    np.testing.assert_array_equal(l1, l0[::2, ::2])
    image = np.asarray(root["0"])
    chw = np.moveaxis(pixels, -1, 0) if pixels.ndim == 3 else pixels[None]
    assert image.shape == chw.shape
    w = w if width is None else width
    np.testing.assert_array_equal(image[..., :w], chw[..., :w])             # channel-first slide pixels
    mean = chw[:, : h // 2 * 2, : w // 2 * 2].astype(float).reshape(chw.shape[0], h // 2, 2, w // 2, 2).mean((2, 4))
    assert np.abs(np.asarray(root["1"])[:, : h // 2, : w // 2] - mean).max() <= 0.5 + 1e-6   # 2 x 2 means
    run = out / ".segloop-run"
    assert (run / "summary.json").is_file()
    assert not (run / "raw").exists() and not (run / "strips").exists()
    return root


def test_grey_output_is_ngff_without_a_pixel_size(grey, grey_runs):
    _, pixels = grey
    res, lab = grey_runs[512]
    root = _check_ngff(res.path, pixels, None)
    summary = json.loads((res.path / ".segloop-run" / "summary.json").read_text())
    assert summary["n_objects"] == res.n_objects == root["labels/nuclei"].attrs["segloop"]["n_objects"]
    # where the time went, phase by phase (also on the result)
    phases = ["tissue", "glass", "blocks", "stitch", "relabel", "pyramid", "metadata"]
    assert list(summary["seconds"]) == phases and summary["seconds"] == res.timings
    assert all(v >= 0 for v in res.timings.values()) and sum(res.timings.values()) <= res.seconds + 1e-3
    assert res.timings["blocks"] > 0
    assert summary["tiles_predicted"] == res.tiles_predicted > 0 and summary["tiles_skipped"] == res.tiles_skipped
    np.testing.assert_array_equal(np.asarray(root["labels/nuclei/0"]), lab)


def _first_skipped_column(res) -> int:
    return min(b.core[2] for b in block_grid(res.plan) if b.core[2] >= BAND)


def test_rgb_output_is_ngff_with_the_slide_pixel_size(rgb, rgb_run):
    res, out = rgb_run
    assert res.plan.pixel_size == pytest.approx((RGB_MPP, RGB_MPP))
    root = _check_ngff(out, np.asarray(rgb.levels[0]), RGB_MPP, width=_first_skipped_column(res))
    summary = json.loads((out / ".segloop-run" / "summary.json").read_text())
    assert summary["pixel_size"] == pytest.approx([RGB_MPP, RGB_MPP])
    assert summary["blocks_skipped"] == res.blocks_skipped and summary["n_objects"] == res.n_objects
    ds = root["labels/nuclei"].attrs["multiscales"][0]["datasets"]
    assert ds[0]["coordinateTransformations"][0]["scale"] == pytest.approx([RGB_MPP, RGB_MPP])


def test_the_image_of_skipped_blocks_is_the_slide_pixels(rgb, rgb_run):
    """The OME-Zarr image is the slide's image everywhere, the glass of blocks skipped for lack of
    tissue included (a viewer shows the slide as scanned, not black rectangles)."""
    res, out = rgb_run
    assert res.blocks_skipped > 0
    x0 = _first_skipped_column(res)
    image = np.asarray(zarr.open_group(str(out), mode="r")["0"])
    np.testing.assert_array_equal(image[..., x0:], np.moveaxis(np.asarray(rgb.levels[0])[:, x0:], -1, 0))


# --------------------------------------------------------------------------- 3. tissue


def test_blocks_on_glass_are_skipped_and_stay_empty(rgb, rgb_run):
    res, _ = rgb_run
    lab = np.asarray(res.labels)
    on_glass = [b for b in block_grid(res.plan) if b.core[2] >= BAND]
    assert len(on_glass) == 2
    assert res.blocks_skipped == len(on_glass) > 0
    assert res.blocks_run + res.blocks_skipped == res.blocks == 8
    for b in on_glass:
        y0, y1, x0, x1 = b.core
        assert not lab[y0:y1, x0:x1].any()
    assert not lab[:, BAND + 16:].any()
    assert res.n_objects > 100 and lab[:, :BAND].any()


def test_tissue_mask_finds_the_ihc_and_not_the_glass(rgb, rgb_run):
    low, down = overview(rgb)
    assert down == 2.0 and low.shape[:2] == (RGB_H // 2, RGB_W // 2)
    mask = tissue_mask(low)
    assert mask.shape == low.shape[:2] and mask.dtype == bool
    band = int(BAND / down)
    assert mask[:, :band].mean() > 0.4
    for y in range(0, mask.shape[0], 128):                               # tissue in every IHC tile
        for x in range(0, band - 128, 128):
            assert mask[y:y + 128, x:x + 128].any(), (y, x)
    assert not mask[:, band + 2:].any()
    res, _ = rgb_run
    np.testing.assert_array_equal(res.tissue, mask)                        # the mask the run used
    assert res.tissue_downsample == down


def test_a_blank_image_has_no_tissue():
    for blank in (np.full((300, 400, 3), 240, np.uint8), np.zeros((300, 400), np.uint16),
                  np.full((300, 400), 7, np.uint8)):
        mask = tissue_mask(blank)
        assert mask.shape == (300, 400) and not mask.any()


# --------------------------------------------------------------------------- 4-5. resume


def _cancel_after(n: int):
    """``progress`` and ``cancel`` callables: cancel once ``n`` blocks have been reported done."""
    seen: list[int] = []
    return (lambda done, total: seen.append(done)), (lambda: bool(seen) and seen[-1] >= n)


def _cancelled_run(slide, model, out: Path) -> list[str]:
    progress, cancel = _cancel_after(2)
    with pytest.raises(Cancelled, match="resume"):
        segment_slide(slide, model, out, block=512, progress=progress, cancel=cancel, **GREY_RUN)
    done = sorted(p.stem for p in (out / ".segloop-run" / "done").glob("*.json"))
    # row by row; the block segmented while block 0_1 was written is written too, not thrown away
    assert done == ["0_0", "0_1", "0_2"]
    for key in done:
        rec = json.loads((out / ".segloop-run" / "done" / f"{key}.json").read_text())
        assert rec["key"] == key and not rec["skipped"] and rec["max_id"] > 0
    assert not (out / ".segloop-run" / "summary.json").exists()
    return done


def test_a_cancelled_run_resumes_to_the_scratch_result(grey, model, grey_runs, tmp_path):
    slide, _ = grey
    scratch = grey_runs[512][1]
    out = tmp_path / "r.zarr"
    done = _cancelled_run(slide, model, out)
    with pytest.raises(WriteError, match="--overwrite"):                 # other settings: not resumed
        segment_slide(slide, model, out, block=256, **GREY_RUN)
    res = segment_slide(slide, model, out, block=512, **GREY_RUN)
    assert res.blocks_resumed == len(done) == 3
    assert res.blocks == res.blocks_run == 9
    np.testing.assert_array_equal(np.asarray(res.labels), scratch)
    assert res.n_objects == grey_runs[512][0].n_objects
    with pytest.raises(WriteError, match="finished.*--overwrite"):
        segment_slide(slide, model, out, block=512, **GREY_RUN)
    # overwrite starts again: other settings (a small region) are now fine, nothing is resumed
    x, y, w, h = 100, 150, 300, 200
    again = segment_slide(slide, model, out, block=256, region=(x, y, w, h), overwrite=True, **GREY_RUN)
    assert again.blocks_resumed == 0 and again.labels.shape == (h, w)
    assert zarr.open_group(str(out), mode="r")["labels/nuclei/0"].shape == (h, w)


def test_an_unrelated_folder_is_not_written_into(grey, model, tmp_path):
    slide, _ = grey
    other = tmp_path / "mine.zarr"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(WriteError, match="--overwrite"):
        segment_slide(slide, model, other, block=512, **GREY_RUN)
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]
    assert (other / "notes.txt").read_text() == "keep me"


def test_a_half_written_block_is_computed_again(grey, model, grey_runs, tmp_path):
    """A block that died after writing pixels but before its marker is not taken as finished."""
    slide, _ = grey
    out = tmp_path / "crash.zarr"
    _cancelled_run(slide, model, out)
    run = out / ".segloop-run"
    (run / "done" / "0_1.json").unlink()                         # its marker never got written ...
    b = next(b for b in block_grid(grey_runs[512][0].plan) if b.key == "0_1")
    y0, y1, x0, x1 = b.core
    root = zarr.open_group(str(out), mode="r+")
    raw = root[".segloop-run/raw"]
    raw[y0:(y0 + y1) // 2, x0:x1] = 4000                         # ... and its pixels are half garbage
    raw[(y0 + y1) // 2:y1, x0:x1] = 0
    root["0"][:, y0:y1, x0:x1] = 0
    (run / "strips" / "0_1.tmp.npz").write_bytes(b"half a file")
    res = segment_slide(slide, model, out, block=512, **GREY_RUN)
    assert res.blocks_resumed == 2                               # 0_0 and 0_2; 0_1 is computed again
    np.testing.assert_array_equal(np.asarray(res.labels), grey_runs[512][1])
    np.testing.assert_array_equal(np.asarray(zarr.open_group(str(out), mode="r")["0"])[0], grey[1])


# --------------------------------------------------------------------------- 6. region


def _touching_edge(lab: np.ndarray, margin: int) -> np.ndarray:
    """ids of objects with a pixel within ``margin`` of the array's edge."""
    inner = np.zeros(lab.shape, bool)
    inner[margin:-margin, margin:-margin] = True
    return np.unique(lab[~inner & (lab > 0)])


def test_a_region_matches_the_whole_slide_inside_it(grey, model, grey_runs, tmp_path):
    slide, _ = grey
    whole = grey_runs[512][1]
    x, y, w, h = 333, 217, 700, 520                                   # level-0 pixels, not block-aligned
    res = segment_slide(slide, model, tmp_path / "reg.zarr", region=(x, y, w, h), block=512, **GREY_RUN)
    lab = np.asarray(res.labels)
    assert lab.shape == (h, w) and res.plan.region == (y, x, h, w)
    ids = np.unique(lab[lab > 0])
    np.testing.assert_array_equal(ids, np.arange(1, res.n_objects + 1))
    ref = whole[y:y + h, x:x + w]
    # objects away from the region's edge (where the model saw less context) are the same objects
    margin = 32
    keep_ref = np.where(np.isin(ref, _touching_edge(ref, margin)), 0, ref)
    keep_lab = np.where(np.isin(lab, _touching_edge(lab, margin)), 0, lab)
    inner = (slice(2 * margin, -2 * margin), slice(2 * margin, -2 * margin))
    assert len(np.unique(keep_ref[inner])) > 30
    assert instance_scores(keep_ref[inner], keep_lab[inner])["f1@0.5"] >= 0.99
    assert instance_scores(ref[inner], lab[inner])["f1@0.5"] >= 0.99


@pytest.mark.parametrize("kw", [dict(region=(1400, 0, 100, 100)), dict(region=(0, 1250, 100, 100)),
                                dict(region=(-5, 0, 100, 100)), dict(region=(0, 0, 0, 100)),
                                dict(region=(5000, 5000, 10, 10)), dict(level=3), dict(level=-1)])
def test_a_region_outside_the_slide_or_a_bad_level_is_refused(grey, model, tmp_path, kw):
    slide, _ = grey
    out = tmp_path / "bad.zarr"
    with pytest.raises(InvalidImageError, match="region|level"):
        segment_slide(slide, model, out, block=512, **GREY_RUN, **kw)
    assert not out.exists()                                            # nothing written


# --------------------------------------------------------------------------- 7. stitch_pairs


def _disc(shape, center, radius) -> np.ndarray:
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    return (yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= radius**2


def test_stitch_pairs_joins_a_disc_cut_by_the_border():
    # left block A: core columns 0..19, halo 20..31; right block B's core starts at column 20
    shape, border = (40, 32), 20
    disc = _disc(shape, (20, 20), 7)
    a = np.where(disc, 3, 0).astype(np.uint32)                        # A predicts the whole disc
    b = np.where(disc, 9, 0).astype(np.uint32)                        # B's own piece (its core part)
    strip, other = a[:, border:], b[:, border:]
    assert stitch_pairs(strip, other, a[:, border - 1], b[:, border]) == [(3, 9)]
    # the same from the other side: B's halo prediction over A's core
    assert stitch_pairs(b[:, :border], a[:, :border], b[:, border], a[:, border - 1]) == [(9, 3)]


def test_stitch_pairs_keeps_two_discs_at_the_border_apart():
    shape, border = (40, 32), 20
    left = _disc(shape, (10, 13), 6)                                   # touches column 19 (A's last)
    right = _disc(shape, (28, 26), 6)                                  # touches column 20 (B's first)
    assert left[:, border - 1].any() and not left[:, border:].any()
    assert right[:, border].any() and not right[:, :border].any()
    a = np.zeros(shape, np.uint32)
    a[left], a[right] = 1, 2                                           # A sees both, the right one in its halo
    b = np.zeros(shape, np.uint32)
    b[right] = 5                                                       # B's own labels
    assert stitch_pairs(a[:, border:], b[:, border:], a[:, border - 1], b[:, border]) == []
    # two touching discs, one on each side of the border, each seen whole by both blocks
    left2, right2 = _disc(shape, (20, 13), 6), _disc(shape, (20, 26), 6)
    a2, b2 = np.zeros(shape, np.uint32), np.zeros(shape, np.uint32)
    a2[left2], a2[right2] = 1, 2
    b2[left2], b2[right2] = 6, 7
    assert stitch_pairs(a2[:, border:], b2[:, border:], a2[:, border - 1], b2[:, border]) == []
    assert stitch_pairs(b2[:, :border], a2[:, :border], b2[:, border], a2[:, border - 1]) == []


def test_stitch_pairs_ignores_a_piece_away_from_the_border_edge():
    shape, border = (40, 32), 20
    disc = _disc(shape, (20, 20), 7)
    b = np.where(disc, 9, 0).astype(np.uint32)
    a = np.zeros(shape, np.uint32)
    a[disc & (np.arange(shape[1]) >= border + 2)] = 4                  # overlaps B's piece, not A's last column
    assert not a[:, border - 1].any()
    assert stitch_pairs(a[:, border:], b[:, border:], a[:, border - 1], b[:, border]) == []
    # B's piece must touch B's first column too
    b2 = np.where(disc & (np.arange(shape[1]) >= border + 2), 9, 0).astype(np.uint32)
    a2 = np.where(disc, 3, 0).astype(np.uint32)
    assert stitch_pairs(a2[:, border:], b2[:, border:], a2[:, border - 1], b2[:, border]) == []
    # and an overlap under half of the smaller piece is not enough
    a3 = np.zeros(shape, np.uint32)
    a3[18:23, 10:24] = 1                                               # 5 x 4 px in the strip
    b3 = np.zeros(shape, np.uint32)
    b3[21:30, 20:24] = 2                                               # 9 x 4 px, 2 x 4 px shared
    assert stitch_pairs(a3[:, border:], b3[:, border:], a3[:, border - 1], b3[:, border]) == []
    b3[19:30, 20:24] = 2                                               # 4 x 4 px shared: joined
    assert stitch_pairs(a3[:, border:], b3[:, border:], a3[:, border - 1], b3[:, border]) == [(1, 2)]


# --------------------------------------------------------------------------- objects inside a drawn region


def test_keep_objects_inside_keeps_whole_objects_with_half_their_area_inside():
    from segloop.core.editing.objects import keep_objects_inside

    lab = np.zeros((20, 20), np.uint32)
    lab[2:5, 10:13] = 1                 # inside
    lab[10:14, 10:14] = 7               # 10 of 16 pixels on or above the diagonal
    lab[16:19, 0:3] = 3                 # below the diagonal: out
    triangle = [(0, 0), (0, 19), (19, 19)]  # col >= row
    out, dropped = keep_objects_inside(lab, triangle)
    assert set(np.unique(out).tolist()) == {0, 1, 7} and dropped == 1 and out.dtype == lab.dtype
    assert np.array_equal(out == 7, lab == 7)            # kept whole, not cut at the outline
    out, dropped = keep_objects_inside(lab, triangle, min_fraction=0.7)
    assert set(np.unique(out).tolist()) == {0, 1} and dropped == 2
    out, dropped = keep_objects_inside(lab, [(-1, -1), (-1, 20), (20, 20), (20, -1)])
    assert np.array_equal(out, lab) and dropped == 0
    for bad in ([(0, 0), (5, 5)], [(0, 0), (0, np.nan), (5, 5)]):
        with pytest.raises(InvalidLabelsError, match="3 finite"):
            keep_objects_inside(lab, bad)
    with pytest.raises(InvalidLabelsError, match="2D integer"):
        keep_objects_inside(lab.astype(float), triangle)


# --------------------------------------------------------------------------- the end passes' thread pool


def test_in_threads_runs_every_item_raises_the_first_error_and_stops_on_cancel():
    import threading
    import time

    from segloop.core.inference.slide_output import in_threads

    seen, lock = [], threading.Lock()

    def record(i):
        with lock:
            seen.append(i)

    in_threads(record, range(50), threads=4)
    assert sorted(seen) == list(range(50))

    started = []

    def fail_at_3(i):
        started.append(i)
        if i == 3:
            raise OSError(28, "No space left on device")
        time.sleep(0.01)

    with pytest.raises(OSError, match="No space left"):
        in_threads(fail_at_3, range(200), threads=2)
    assert len(started) < 200                                # the items not yet started were dropped

    stop = threading.Event()
    stop.set()
    with pytest.raises(Cancelled):
        in_threads(record, range(10), cancel=stop, threads=2)
    with pytest.raises(Cancelled):                           # one thread: the same contract
        in_threads(record, range(10), cancel=stop, threads=1)


def test_half_mean_is_the_2x2_mean_rounded_half_up_in_the_images_dtype():
    from segloop.core.inference.slide_output import half_mean

    rng = np.random.default_rng(0)
    for dtype in (np.uint8, np.uint16, np.int16):
        info = np.iinfo(dtype)
        im = rng.integers(info.min, info.max, (3, 8, 10), endpoint=True).astype(dtype)
        want = np.floor(im.astype(np.float64).reshape(3, 4, 2, 5, 2).mean(axis=(2, 4)) + 0.5)
        got = half_mean(im)
        assert got.dtype == dtype and got.shape == (3, 4, 5)
        np.testing.assert_array_equal(got, want.astype(dtype))      # no overflow at the dtype's ends
    f = rng.random((1, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(half_mean(f), f.reshape(1, 2, 2, 2, 2).mean(axis=(2, 4)), rtol=1e-6)
