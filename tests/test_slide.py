"""Whole-slide segmentation (core/inference/slide.py) and ``segloop predict`` on slides.

Real pixels and real models: slides are mosaics of BBBC007 fluorescence nuclei (CC0, shipped) or
scikit-image's IHC tissue, written as tiled pyramidal TIFF / Aperio-like SVS with tifffile and
read back through :func:`open_slide`; the bundled ``nuclei-unet`` segments them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

import segloop
from segloop.cli import main
from segloop.core.editing.metrics import instance_scores
from segloop.core.formats.io.geojson import read_geojson
from segloop.core.formats.io.wsi import open_slide
from segloop.core.inference.slide import (
    block_grid,
    plan_slide,
    segment_slide,
    stitch_pairs,
    tissue_mask,
)
from segloop.errors import Cancelled, InvalidImageError, WriteError

from .conftest import DATA


def _grey_mosaic() -> np.ndarray:
    g = tifffile.imread(DATA / "bbbc007_A9_p10d.tif")[:448, :448]
    t = np.concatenate([np.concatenate([g, g[:, ::-1]], 1), np.concatenate([g[::-1], g[::-1, ::-1]], 1)], 0)
    return np.ascontiguousarray(np.tile(t, (2, 2))[:1200, :1500])


def _rgb_mosaic() -> np.ndarray:
    from skimage import data

    t = data.immunohistochemistry()
    row = np.concatenate([t, t[:, ::-1], t], axis=1)
    img = np.ascontiguousarray(np.concatenate([row, row[::-1]], axis=0))   # 1024 x 1536
    img[:, 1280:] = 242                                                     # glass
    return img


def _pyramid(path: Path, img: np.ndarray, *, mpp: float | None, levels=(1, 4)) -> Path:
    rgb = img.ndim == 3
    kw = dict(tile=(256, 256), compression="jpeg" if rgb else "zlib", photometric="rgb" if rgb else "minisblack")
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        res = {} if mpp is None else dict(resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER")
        tw.write(img, subifds=len(levels) - 1, **kw, **res)
        for f in levels[1:]:
            r = {} if mpp is None else dict(resolution=(1e4 / (mpp * f), 1e4 / (mpp * f)),
                                            resolutionunit="CENTIMETER")
            tw.write(img[::f, ::f], subfiletype=1, **kw, **r)
    return path


@pytest.fixture(scope="module")
def grey_slide(tmp_path_factory) -> Path:
    return _pyramid(tmp_path_factory.mktemp("slides") / "nuclei.tif", _grey_mosaic(), mpp=None)


@pytest.fixture(scope="module")
def rgb_slide(tmp_path_factory) -> Path:
    return _pyramid(tmp_path_factory.mktemp("slides") / "ihc.tif", _rgb_mosaic(), mpp=0.5)


@pytest.fixture(scope="module")
def svs(tmp_path_factory) -> Path:
    img = _rgb_mosaic()
    h, w = img.shape[:2]
    p = tmp_path_factory.mktemp("slides") / "case.svs"
    desc = (f"Aperio Image Library v12.0.15\n{w}x{h} [0,0 {w}x{h}] (256x256) JPEG/RGB Q=90|AppMag = 20|"
            "MPP = 0.5000|Filename = case")
    jpeg = dict(compression="jpeg", photometric="rgb", metadata=None)
    with tifffile.TiffWriter(p) as tw:                   # Aperio order: level 0, thumbnail, levels
        tw.write(img, tile=(256, 256), description=desc, **jpeg)
        tw.write(img[::8, ::8], description=f"Aperio Image Library v12.0.15\n{w}x{h} -> {w // 8}x{h // 8}", **jpeg)
        tw.write(img[::4, ::4], tile=(256, 256), description=desc, **jpeg)
    return p


@pytest.fixture(scope="module")
def model():
    return segloop.load_model("nuclei-unet", device="cpu")


HEMATOXYLIN = {"normalization": {"kind": "hematoxylin"}}


@pytest.fixture(scope="module")
def grey_runs(grey_slide, model, tmp_path_factory):
    """The grey slide segmented whole (one array) and as slides with blocks of 256 and 512."""
    root = tmp_path_factory.mktemp("runs")
    out = {}
    with open_slide(grey_slide) as slide:
        whole = np.asarray(slide.levels[0])
        out["whole"] = model.predict(whole, normalizer=model.normalizer_for(np.asarray(slide.levels[1]))).labels
        for block in (256, 512):
            res = segment_slide(slide, model, root / f"b{block}.zarr", block=block, chunk=256, halo=64, tissue=False)
            out[block] = (res, np.asarray(res.labels))
    return root, out


# --------------------------------------------------------------------------- stitching


def test_the_result_does_not_depend_on_the_block_size(grey_runs):
    _, runs = grey_runs
    whole = runs["whole"]
    n_whole = len(np.unique(whole)) - 1
    for block in (256, 512):
        res, lab = runs[block]
        ids = np.unique(lab)[1:]
        assert res.n_objects == len(ids) and ids[0] == 1 and ids[-1] == len(ids)     # compact 1..N
        assert abs(res.n_objects - n_whole) <= 0.005 * n_whole, (block, res.n_objects, n_whole)
        assert instance_scores(whole, lab)["f1@0.5"] >= 0.99
    assert runs[256][0].merged > runs[512][0].merged > 0          # more borders, more pieces joined
    assert instance_scores(runs[256][1], runs[512][1])["f1@0.5"] >= 0.99


def test_without_stitching_objects_on_block_borders_would_be_split(grey_runs):
    """What the stitch step fixes: the block-wise ids before it give many more objects."""
    _, runs = grey_runs
    res, lab = runs[256]
    assert res.merged >= 0.05 * res.n_objects
    across = set()                                                # objects with pixels on both sides of a border
    for b in block_grid(res.plan):
        y0, y1, x0, x1 = b.core
        if y1 < lab.shape[0]:
            across |= set(np.unique(lab[y1 - 1, x0:x1])) & set(np.unique(lab[y1, x0:x1])) - {0}
        if x1 < lab.shape[1]:
            across |= set(np.unique(lab[y0:y1, x1 - 1])) & set(np.unique(lab[y0:y1, x1])) - {0}
    assert len(across) >= 0.5 * res.merged / 2, (len(across), res.merged)


def test_stitch_pairs_join_one_object_and_keep_two_apart():
    from skimage.draw import disk

    a = np.zeros((20, 40), np.uint32)                 # the left block's prediction (core | halo strip)
    rr, cc = disk((10, 20), 6)
    a[rr, cc] = 1
    b = np.zeros_like(a)                              # the right block's own labels
    b[rr, cc] = 7
    strip, other = a[:, 20:], b[:, 20:]               # columns 20.. belong to the right block
    assert stitch_pairs(strip, other, a[:, 19], b[:, 20]) == [(1, 7)]
    # two different nuclei side by side: left object stops at the border, right one starts there
    a2, b2 = np.zeros_like(a), np.zeros_like(a)
    a2[4:8, 14:20] = 1
    b2[12:16, 20:26] = 3
    assert stitch_pairs(a2[:, 20:], b2[:, 20:], a2[:, 19], b2[:, 20]) == []
    # a piece that overlaps but does not reach the border on the left side is not joined
    a3 = np.zeros_like(a)
    a3[8:12, 22:28] = 2
    assert stitch_pairs(a3[:, 20:], b[:, 20:], a3[:, 19], b[:, 20]) == []


# --------------------------------------------------------------------------- OME-Zarr


def test_ome_zarr_is_ngff_with_image_labels_and_pyramids(rgb_slide, model, tmp_path):
    with open_slide(rgb_slide) as slide:
        res = segment_slide(slide, model, tmp_path / "out.zarr", block=512, chunk=256, predict=HEMATOXYLIN)
        pixels = np.asarray(slide.levels[0])
    root = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")
    ms = root.attrs["multiscales"][0]
    assert ms["version"] == "0.4" and [a["name"] for a in ms["axes"]] == ["c", "y", "x"]
    assert ms["axes"][1]["unit"] == "micrometer"
    scales = [d["coordinateTransformations"][0]["scale"] for d in ms["datasets"]]
    assert scales[0] == [1.0, 0.5, 0.5] and scales[1] == [1.0, 1.0, 1.0] and len(scales) >= 2
    assert np.array_equal(np.moveaxis(np.asarray(root["0"]), 0, -1), pixels)
    assert root["labels"].attrs["labels"] == ["nuclei"]
    lab = root["labels/nuclei"]
    assert lab.attrs["image-label"]["source"]["image"] == "../../"
    assert len(lab.attrs["multiscales"][0]["datasets"]) == len(scales)
    l0, l1 = np.asarray(lab["0"]), np.asarray(lab["1"])
    assert np.array_equal(l1, l0[::2, ::2]) and l0.dtype == np.uint32
    assert lab.attrs["segloop"]["n_objects"] == res.n_objects > 100
    run = tmp_path / "out.zarr" / ".segloop-run"
    assert (run / "summary.json").is_file() and not (run / "raw").exists() and not (run / "strips").exists()


def test_blocks_without_tissue_are_skipped_and_left_empty(rgb_slide, model, tmp_path):
    with open_slide(rgb_slide) as slide:
        res = segment_slide(slide, model, tmp_path / "t.zarr", block=256, chunk=256, predict=HEMATOXYLIN)
    assert res.blocks_skipped >= 4 and res.blocks_run + res.blocks_skipped == res.blocks
    lab = np.asarray(res.labels)
    assert not lab[:, 1280 + 64:].any()                          # the glass
    mask = res.tissue
    f = mask.shape[1] / lab.shape[1]
    assert mask[:, : int(1200 * f)].mean() > 0.5 and not mask[:, int(1300 * f):].any()
    assert not tissue_mask(np.full((300, 300, 3), 240, np.uint8)).any()


# --------------------------------------------------------------------------- resume


def test_a_cancelled_run_resumes_to_the_same_result(grey_slide, model, tmp_path, grey_runs):
    _, runs = grey_runs
    seen = []

    def cancel():
        return len(seen) >= 3

    with open_slide(grey_slide) as slide:
        with pytest.raises(Cancelled, match="resume"):
            segment_slide(slide, model, tmp_path / "r.zarr", block=512, chunk=256, halo=64, tissue=False,
                          progress=lambda d, n: seen.append(d), cancel=cancel)
        done = sorted(p.name for p in (tmp_path / "r.zarr" / ".segloop-run" / "done").glob("*.json"))
        assert len(done) == 3              # 2 reported; the one segmented meanwhile is written, not lost
        (tmp_path / "r.zarr" / ".segloop-run" / "done" / done[0]).unlink()     # a block that died mid-write
        with pytest.raises(WriteError, match="--overwrite"):                    # other settings
            segment_slide(slide, model, tmp_path / "r.zarr", block=256, chunk=256, halo=64, tissue=False)
        res = segment_slide(slide, model, tmp_path / "r.zarr", block=512, chunk=256, halo=64, tissue=False)
        assert res.blocks_resumed == 2
        assert np.array_equal(np.asarray(res.labels), runs[512][1])
        with pytest.raises(WriteError, match="finished"):
            segment_slide(slide, model, tmp_path / "r.zarr", block=512, chunk=256, halo=64, tissue=False)
        again = segment_slide(slide, model, tmp_path / "r.zarr", block=512, chunk=256, halo=64, tissue=False,
                              overwrite=True)
        assert again.blocks_resumed == 0 and np.array_equal(np.asarray(again.labels), runs[512][1])
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with open_slide(grey_slide) as slide, pytest.raises(WriteError, match="not an unfinished"):
        segment_slide(slide, model, tmp_path / "other", block=512, tissue=False)
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


# --------------------------------------------------------------------------- region, level


def test_a_region_matches_the_whole_slide_inside_it(grey_slide, model, tmp_path, grey_runs):
    _, runs = grey_runs
    x, y, w, h = 300, 200, 700, 500
    with open_slide(grey_slide) as slide:
        res = segment_slide(slide, model, tmp_path / "reg.zarr", region=(x, y, w, h), block=512, chunk=256, halo=64,
                            tissue=False)
        lab = np.asarray(res.labels)
        assert lab.shape == (h, w)
        inner = (slice(64, -64), slice(64, -64))
        assert instance_scores(runs[512][1][y:y + h, x:x + w][inner], lab[inner])["f1@0.5"] >= 0.98
        for bad in ((-1, 0, 10, 10), (1400, 0, 200, 10), (0, 0, 0, 10)):
            with pytest.raises(InvalidImageError, match="not inside the slide"):
                plan_slide(slide, model, region=bad)
        with pytest.raises(InvalidImageError, match="level 5 does not exist"):
            plan_slide(slide, model, level=5)


# --------------------------------------------------------------------------- command line


def test_predict_on_a_slide_writes_zarr_geojson_csv_and_tif(svs, tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["predict", str(svs), "--model", "nuclei-unet", "--stain", "hematoxylin", "--out", str(out),
                 "--format", "ome-zarr,geojson", "--format", "csv,tif", "--block", "512"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    n = int(line.split(": ")[1].split()[0])
    assert "blocks on tissue" in line and n > 100
    features = read_geojson(out / "case.geojson")
    assert len(features) == n
    xy = np.concatenate([np.asarray(f["geometry"]["coordinates"][0]) for f in features
                         if f["geometry"]["type"] == "Polygon"])
    assert xy[:, 0].min() >= 0 and xy[:, 0].max() <= 1536 and xy[:, 1].max() <= 1024
    assert {f["properties"]["objectType"] for f in features} == {"detection"}
    rows = (out / "case_objects.csv").read_text().splitlines()
    assert len(rows) == n + 1 and "area_um2" in rows[0]
    labels = tifffile.imread(out / "case_labels.tif")
    assert np.array_equal(labels, np.asarray(zarr.open_group(str(out / "case.zarr"), mode="r")["labels/nuclei/0"]))


def test_a_level_and_a_region_keep_level_zero_coordinates(svs, tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["predict", str(svs), "--model", "nuclei-unet", "--stain", "hematoxylin", "--out", str(out),
                 "--region", "256,128,768,512", "--format", "geojson,tif"]) == 0
    assert tifffile.imread(out / "case_labels.tif").shape == (512, 768)
    xy = np.concatenate([np.asarray(f["geometry"]["coordinates"][0]) for f in read_geojson(out / "case.geojson")
                         if f["geometry"]["type"] == "Polygon"])
    assert xy[:, 0].min() >= 256 and xy[:, 0].max() <= 256 + 768 and xy[:, 1].min() >= 128
    out1 = tmp_path / "level1"
    assert main(["predict", str(svs), "--model", "nuclei-unet", "--stain", "hematoxylin", "--out", str(out1),
                 "--level", "1", "--format", "geojson"]) == 0
    assert "(level 1, 2 µm/px" in capsys.readouterr().out
    xy = np.concatenate([np.asarray(f["geometry"]["coordinates"][0]) for f in read_geojson(out1 / "case.geojson")
                         if f["geometry"]["type"] == "Polygon"])
    assert xy[:, 0].max() > 1000 and xy[:, 0].max() <= 1536          # spread over level 0, not 384 px


def test_two_local_workers_give_the_same_labels(svs, tmp_path):
    args = ["--model", "nuclei-unet", "--stain", "hematoxylin", "--format", "ome-zarr", "--block", "512"]
    assert main(["predict", str(svs), "--out", str(tmp_path / "one"), *args]) == 0
    assert main(["predict", str(svs), "--out", str(tmp_path / "two"), *args, "--cluster", "local:2"]) == 0
    a = np.asarray(zarr.open_group(str(tmp_path / "one" / "case.zarr"), mode="r")["labels/nuclei/0"])
    b = np.asarray(zarr.open_group(str(tmp_path / "two" / "case.zarr"), mode="r")["labels/nuclei/0"])
    na, nb = len(np.unique(a)) - 1, len(np.unique(b)) - 1
    assert abs(na - nb) <= 0.005 * na and instance_scores(a, b)["f1@0.5"] >= 0.99


@pytest.mark.parametrize("extra, message", [
    (["--region", "0,0,5000,10"], "not inside the slide"),
    (["--level", "7"], "level 7 does not exist"),
    (["--format", "bogus"], "--format 'bogus'"),
    (["--block", "100"], "--block 100"),
    (["--cluster", "local:0"], "local:N"),
    (["--cluster", "local:1", "--scheduler", "tcp://127.0.0.1:1"], "not both"),
    (["--scheduler", "tcp://127.0.0.1:1"], "does not answer"),
])
def test_bad_slide_options_are_one_line_errors(svs, tmp_path, capsys, extra, message):
    code = main(["predict", str(svs), "--model", "nuclei-unet", "--stain", "hematoxylin",
                 "--out", str(tmp_path / "o"), *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("segloop: error:") and message in err[0], err
    assert not list((tmp_path / "o").glob("*")) if (tmp_path / "o").exists() else True


def test_unreadable_slides_are_one_line_errors(svs, tmp_path, capsys):
    cut = tmp_path / "cut.svs"
    cut.write_bytes(svs.read_bytes()[: svs.stat().st_size // 2])
    junk = tmp_path / "junk.ndpi"
    junk.write_bytes(np.random.default_rng(0).bytes(4096))
    for bad in (cut, junk):
        code = main(["predict", str(bad), "--model", "nuclei-unet", "--out", str(tmp_path / "o")])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and str(bad.name) in err[0], err
    assert not list((tmp_path / "o").glob("*.zarr"))


def test_rerunning_into_a_finished_output_needs_overwrite(svs, tmp_path, capsys):
    args = ["predict", str(svs), "--model", "nuclei-unet", "--stain", "hematoxylin", "--out", str(tmp_path / "o"),
            "--format", "ome-zarr"]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0
    summary = json.loads((tmp_path / "o" / "case.zarr" / ".segloop-run" / "summary.json").read_text())
    assert summary["blocks"] >= 1


def test_unused_helpers_are_not_left_in_a_finished_output(svs, tmp_path):
    assert main(["predict", str(svs), "--model", "nuclei-unet", "--stain", "hematoxylin", "--out",
                 str(tmp_path / "o"), "--format", "geojson"]) == 0
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["case.geojson"]      # no zarr asked for
    shutil.rmtree(tmp_path / "o")


def test_a_cohort_gets_one_summary_row_per_slide(svs, tmp_path, capsys):
    second = tmp_path / "case2.svs"
    second.write_bytes(svs.read_bytes())
    assert main(["predict", str(svs), str(second), "--model", "nuclei-unet", "--stain", "hematoxylin",
                 "--out", str(tmp_path / "o"), "--format", "geojson"]) == 0
    import csv

    rows = list(csv.DictReader((tmp_path / "o" / "summary.csv").open()))
    assert [Path(r["slide"]).name for r in rows] == ["case.svs", "case2.svs"]
    assert rows[0]["objects"] == rows[1]["objects"] and int(rows[0]["objects"]) > 100
    assert "summary of 2 slides" in capsys.readouterr().out
