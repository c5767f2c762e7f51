"""Volume reader, label writers (NIfTI, .seg.nrrd) and the CT sample, in a real viewer under Xvfb."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

napari = pytest.importorskip("napari")
nib = pytest.importorskip("nibabel")
nrrd = pytest.importorskip("nrrd")

from segloop.core.formats.io.geometry import VolumeInfo  # noqa: E402
from segloop.core.formats.io.samples import liver_ct_paths  # noqa: E402


def _ct_nifti(path, *, window=None):
    """An int16 CT-like volume in HU, anisotropic (0.7 x 0.8 x 2.5 mm), stored LAS."""
    rng = np.random.default_rng(0)
    data = (rng.integers(0, 1400, (12, 10, 8)) - 1024).astype(np.int16)
    img = nib.Nifti1Image(data, np.diag([-0.7, 0.8, 2.5, 1.0]))
    if window:
        img.header["cal_min"], img.header["cal_max"] = window
    nib.save(img, path)
    return data


def test_nifti_opens_with_physical_scale_ct_window_and_volume_info(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    _ct_nifti(tmp_path / "ct.nii.gz")
    (layer,) = viewer.open(str(tmp_path / "ct.nii.gz"), plugin="napari-segloop")
    assert layer.name == "ct" and layer.data.shape == (8, 10, 12)
    np.testing.assert_allclose(layer.scale, (2.5, 0.8, 0.7), rtol=1e-6)
    assert tuple(layer.contrast_limits) == (-160.0, 240.0)          # soft tissue (40, 400)
    info = layer.metadata["segloop_volume"]
    assert isinstance(info, VolumeInfo) and info.to_meta()["orientation"] == "LPS"

    _ct_nifti(tmp_path / "win.nii", window=(-1000.0, 1000.0))
    (layer,) = viewer.open(str(tmp_path / "win.nii"), plugin="napari-segloop")
    assert tuple(layer.contrast_limits) == (-1000.0, 1000.0)        # the file's own window wins


def test_mrc_opens_and_warns_about_unknown_spacing(make_napari_viewer, notes):
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(liver_ct_paths()[0]), plugin="napari-segloop")
    assert layer.data.shape == (128, 128, 128) and tuple(layer.scale) == (1.0, 1.0, 1.0)
    assert layer.metadata["segloop_volume"].format == "mrc"
    assert any("voxel size 0" in n for n in notes)


def test_liver_ct_sample_gives_windowed_ct_and_reference_labels(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-segloop", "liver_ct")
    image, labels = viewer.layers
    assert image.data.shape == labels.data.shape == (128, 128, 128)
    assert tuple(image.contrast_limits) == (-160.0, 240.0)
    assert labels.name == "liver/tumour (reference)" and set(np.unique(labels.data)) == {0, 1, 2}
    assert tuple(labels.scale) == tuple(image.scale)
    assert labels.metadata["segloop_volume"] is image.metadata["segloop_volume"]
    assert image.metadata["segloop_volume"].units == "HU"


def test_labels_save_as_nifti_and_seg_nrrd_in_the_source_space(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    src = tmp_path / "ct.nii.gz"
    data = _ct_nifti(src)
    (image,) = viewer.open(str(src), plugin="napari-segloop")
    info = image.metadata["segloop_volume"]
    drawn = np.zeros(image.data.shape, np.uint8)
    drawn[2:4, 3:6, 1:5] = 1
    drawn[6, 8, 10] = 2
    prov = {"model": {"name": "m", "classes": ["background", "liver", "tumour"], "task": "semantic"}}
    labels = viewer.add_labels(drawn, scale=image.scale, metadata={"segloop": prov, "segloop_volume": info})

    out = tmp_path / "labels.nii.gz"
    assert labels.save(str(out), plugin="napari-segloop") == [str(out)]
    back = nib.load(out)
    assert back.shape == data.shape
    np.testing.assert_allclose(back.affine, nib.load(src).affine)
    np.testing.assert_array_equal(np.asarray(back.dataobj), info.to_source.from_display(drawn))

    seg = tmp_path / "labels.seg.nrrd"
    assert labels.save(str(seg), plugin="napari-segloop") == [str(seg)]
    arr, hdr = nrrd.read(str(seg), index_order="F")
    np.testing.assert_array_equal(arr, info.to_source.from_display(drawn))
    names = {hdr[f"Segment{i}_LabelValue"]: hdr[f"Segment{i}_Name"] for i in range(2)}
    assert names == {"1": "liver", "2": "tumour"}
    shown = labels.colormap.map(np.array([1]))[0, :3]
    seg1 = next(i for i in range(2) if hdr[f"Segment{i}_LabelValue"] == "1")
    np.testing.assert_allclose([float(v) for v in hdr[f"Segment{seg1}_Color"].split()], shown, atol=1e-5)


def test_labels_without_volume_geometry_are_written_with_their_scale_and_a_warning(make_napari_viewer, tmp_path,
                                                                                   notes):
    viewer = make_napari_viewer()
    labels = viewer.add_labels(np.ones((3, 4, 5), np.uint8), scale=(2.0, 0.5, 0.5))
    out = tmp_path / "plain.nii.gz"
    labels.save(str(out), plugin="napari-segloop")
    back = nib.load(out)
    assert back.shape == (5, 4, 3)                                   # written as (X, Y, Z)
    np.testing.assert_allclose(back.header.get_zooms(), (0.5, 0.5, 2.0))
    assert any("no volume geometry" in n for n in notes)


def test_dicom_folders_get_the_volume_reader_and_training_folders_do_not(tmp_path):
    from pydicom.data import get_testdata_file

    from segloop._napari.io import get_folder_reader, get_volume_reader

    dicom_dir = tmp_path / "dicom"
    dicom_dir.mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), dicom_dir / "IM0001")
    train = tmp_path / "train"
    train.mkdir()
    (train / "segloop-training.json").write_text("{}")
    assert get_volume_reader(str(dicom_dir)) is not None and get_folder_reader(str(dicom_dir)) is None
    assert get_volume_reader(str(train)) is None and get_folder_reader(str(train)) is not None
    assert get_volume_reader(str(dicom_dir / "IM0001")) is not None
    assert get_volume_reader(str(train / "segloop-training.json")) is None
