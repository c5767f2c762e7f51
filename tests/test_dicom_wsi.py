"""DICOM whole-slide images (VL Whole Slide Microscopy, read through OpenSlide).

Real files: openslide-python's own test fixtures (its pinned sdist in .data/wheels, which
scripts/test.sh downloads): ``boxes_0.dcm`` / ``boxes_1.dcm`` were converted from an Aperio slide
by PixelMed's TIFFToDicom; ``unreadable.svs`` and ``unopenable.tiff`` are broken on purpose.
A larger DICOM-WSI of real tissue is made from ``boxes_0.dcm`` as the template (its attributes,
new UIDs) with scikit-image's IHC image as 16 JPEG frames of 256 px (TILED_FULL).

A DICOM-WSI is a slide: ``segloop predict`` writes OME-Zarr / GeoJSON for it, napari opens it
with segloop's slide reader (µm scale, slide metadata), and neither takes it for a CT/MR slice.
"""

from __future__ import annotations

import re
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import zarr

from segloop.cli import main
from segloop.core.editing.metrics import instance_scores
from segloop.core.formats.io.geojson import read_geojson
from segloop.core.formats.io.wsi import is_dicom_wsi, is_slide, open_slide

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("openslide")

ROOT = Path(__file__).resolve().parents[1]
SDIST = ROOT / ".data" / "wheels" / "openslide_python-1.4.7.tar.gz"
MPP = 0.499                                   # the fixtures' PixelSpacing (.000499 mm)
SIDE, TILE = 1024, 256
MODEL = ["--model", "nuclei-unet", "--stain", "hematoxylin"]


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory) -> Path:
    """openslide-python 1.4.7's tests/fixtures, extracted from its sdist."""
    if not SDIST.is_file():
        pytest.skip(f"needs {SDIST.name}: pip download --no-deps --no-binary :all: -d {SDIST.parent} "
                    "openslide-python==1.4.7 (scripts/test.sh does)")
    out = tmp_path_factory.mktemp("openslide-fixtures")
    with tarfile.open(SDIST) as tf:
        for m in tf.getmembers():
            if "/tests/fixtures/" in m.name and m.isfile() and m.name.isascii():
                m.name = Path(m.name).name                # flat: no path from the archive is trusted
                tf.extract(m, out, filter="data")
    assert (out / "boxes_0.dcm").is_file() and (out / "unreadable.svs").is_file()
    return out


def _ihc_tissue() -> np.ndarray:
    from skimage import data

    t = data.immunohistochemistry()
    top = np.concatenate([t, t[:, ::-1]], axis=1)
    return np.ascontiguousarray(np.concatenate([top, top[::-1]], axis=0))      # 1024 x 1024 RGB


@pytest.fixture(scope="module")
def ihc_dcm(fixtures, tmp_path_factory) -> Path:
    """A 1024 x 1024 DICOM-WSI of IHC tissue: boxes_0.dcm's attributes, 16 JPEG frames (YBR_FULL_422)."""
    import imagecodecs
    from pydicom.encaps import encapsulate
    from pydicom.uid import generate_uid

    img = _ihc_tissue()
    ds = pydicom.dcmread(fixtures / "boxes_0.dcm")
    frames = [imagecodecs.jpeg8_encode(np.ascontiguousarray(img[y:y + TILE, x:x + TILE]), level=95)
              for y in range(0, SIDE, TILE) for x in range(0, SIDE, TILE)]
    ds.Rows = ds.Columns = TILE
    ds.TotalPixelMatrixRows = ds.TotalPixelMatrixColumns = SIDE
    ds.NumberOfFrames = len(frames)
    ds.PhotometricInterpretation = "YBR_FULL_422"          # what a baseline JPEG encoder stores
    ds.PixelData = encapsulate(frames)
    ds["PixelData"].VR = "OB"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID, ds.PyramidUID = generate_uid(), generate_uid()
    path = tmp_path_factory.mktemp("dicom-wsi") / "ihc.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_dicom_wsi_files_are_slides_and_ct_slices_are_not(fixtures, ihc_dcm, tmp_path):
    from tests._dicom_series import CT_SMALL

    for p in (fixtures / "boxes_0.dcm", fixtures / "boxes_1.dcm", ihc_dcm):
        assert is_dicom_wsi(p) and is_slide(p), p
    no_suffix = tmp_path / "IM000001"                       # DICOM files often have no suffix
    shutil.copy(ihc_dcm, no_suffix)
    assert is_dicom_wsi(no_suffix) and is_slide(no_suffix)
    with open_slide(no_suffix) as slide:
        assert slide.backend == "openslide" and slide.levels[0].shape == (SIDE, SIDE, 3)
    assert not is_dicom_wsi(CT_SMALL) and not is_slide(CT_SMALL)
    assert not is_dicom_wsi(fixtures / "boxes.tiff") and not is_dicom_wsi(tmp_path / "missing.dcm")
    with open_slide(ihc_dcm) as slide:
        assert slide.vendor == "dicom" and slide.mpp == pytest.approx((MPP, MPP))
        assert slide.objective_power == 20.0
        level0 = np.asarray(slide.levels[0])
    assert np.abs(level0.astype(int) - _ihc_tissue()).mean() < 3          # JPEG q95 of the same pixels
    with open_slide(fixtures / "boxes_0.dcm") as slide:                   # the converter's own file
        assert slide.levels[0].shape == (16, 16, 3) and "thumbnail" in slide.metadata["associated"]


def test_predict_segments_a_dicom_wsi_like_its_decoded_pixels(ihc_dcm, tmp_path, capsys):
    import segloop
    from segloop.core.inference.stain import stain_normalization

    out = tmp_path / "res"
    assert main(["predict", str(ihc_dcm), *MODEL, "--format", "ome-zarr,geojson", "--out", str(out)]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    m = re.search(r": (\d+) objects \(level 0, ([\d.]+) µm/px", line)
    assert m and float(m[2]) == pytest.approx(MPP), line
    n = int(m[1])
    labels = np.asarray(zarr.open_group(str(out / "ihc.zarr"), mode="r")["labels/nuclei/0"])
    assert labels.shape == (SIDE, SIDE) and n == len(np.unique(labels)) - 1 and n > 50
    assert len(read_geojson(out / "ihc.geojson")) == n
    # the same pixels in memory through Model.predict (the slide path's baseline)
    model = segloop.load_model("nuclei-unet")
    with open_slide(ihc_dcm) as slide:
        pixels = np.asarray(slide.levels[0])
    norm = stain_normalization(model, rgb=True, stain="hematoxylin", stain_norm="model")
    ref = model.predict(pixels, normalization=norm, channel_axis=-1).labels
    assert instance_scores(ref, labels)["f1@0.5"] >= 0.97
    assert abs(n - (len(np.unique(ref)) - 1)) <= max(2, 0.02 * n)


def test_napari_opens_a_dicom_wsi_with_the_slide_reader(make_napari_viewer, ihc_dcm):
    from segloop._napari.io import get_reader, get_volume_reader

    assert get_reader(str(ihc_dcm)) is not None and get_volume_reader(str(ihc_dcm)) is None
    viewer = make_napari_viewer()
    viewer.open(str(ihc_dcm), plugin="napari-segloop")
    (layer,) = viewer.layers
    assert layer._type_string == "image" and layer.rgb
    assert tuple(layer.scale) == pytest.approx((MPP, MPP))
    meta = layer.metadata["segloop_slide"]
    assert meta["vendor"] == "dicom" and meta["properties"]["dicom.Modality"] == "SM"


@pytest.mark.parametrize("name, says", [("unreadable.svs", "cannot decode"), ("unopenable.tiff", "cannot decode")])
def test_openslides_broken_fixtures_are_one_line_errors_with_no_output(fixtures, tmp_path, capsys, name, says):
    out = tmp_path / "res"
    assert main(["predict", str(fixtures / name), *MODEL, "--format", "ome-zarr", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and name in err and says in err and "Traceback" not in err
    assert not out.exists()
