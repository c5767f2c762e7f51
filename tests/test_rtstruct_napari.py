"""Opening an RTSTRUCT or a DICOM-SEG in a real napari viewer: the CT it was drawn on, plus the structures."""

from __future__ import annotations

import numpy as np
import pytest

napari = pytest.importorskip("napari")
pytest.importorskip("highdicom")

from segloop._napari.io import get_structure_reader, get_volume_reader  # noqa: E402
from segloop.core.formats.io.dicom import read_dicom  # noqa: E402
from segloop.core.formats.io.dicom_seg import write_dicom_seg  # noqa: E402
from segloop.core.formats.io.rtstruct import write_rtstruct  # noqa: E402
from segloop.errors import VolumeReadError  # noqa: E402
from tests._dicom_series import write_series  # noqa: E402


def _patient(tmp_path):
    """``patient/image/*`` (the CT) as NSCLC-Radiomics lays it out, with labels drawn on it."""
    write_series(tmp_path / "patient" / "image", 5)
    vol, info = read_dicom(tmp_path / "patient" / "image")
    labels = np.zeros(vol.shape, np.uint16)
    labels[:, 5:55, 5:40] = 1
    labels[1:4, 20:30, 15:25] = 2
    return vol, info, labels


def test_rtstruct_opens_with_its_ct_from_a_sibling_folder(make_napari_viewer, tmp_path):
    vol, info, labels = _patient(tmp_path)
    rs = write_rtstruct(tmp_path / "patient" / "mask_rtstruct" / "1-1.dcm", labels, info,
                        names={1: "Lung", 2: "GTV-1"}, colors={2: (0, 255, 120)})
    assert get_volume_reader(str(rs)) is None and get_structure_reader(str(rs)) is not None
    viewer = make_napari_viewer()
    image, layer = viewer.open(str(rs), plugin="napari-segloop")
    assert image.data.shape == layer.data.shape == vol.shape
    np.testing.assert_array_equal(np.asarray(image.data), np.asarray(vol))
    np.testing.assert_array_equal(layer.data, labels)
    assert tuple(layer.scale) == tuple(image.scale) == tuple(info.spacing)
    assert layer.metadata["segloop_segments"] == {1: "Lung", 2: "GTV-1"}
    assert layer.metadata["segloop_volume"].series_uid == info.series_uid
    assert list(layer.features["name"]) == ["background", "Lung", "GTV-1"]
    np.testing.assert_allclose(layer.colormap.map(np.array([2]))[0, :3], (0, 1.0, 120 / 255), atol=1e-3)


def test_dicom_seg_beside_its_series_opens_with_it(make_napari_viewer, tmp_path):
    vol, info, labels = _patient(tmp_path)
    seg = write_dicom_seg(tmp_path / "patient" / "image" / "seg.dcm", labels, info,
                          segment_names={1: "Lung", 2: "GTV-1"})
    viewer = make_napari_viewer()
    image, layer = viewer.open(str(seg), plugin="napari-segloop")
    np.testing.assert_array_equal(layer.data, labels)
    assert layer.metadata["segloop_segments"] == {1: "Lung", 2: "GTV-1"}
    assert tuple(layer.scale) == tuple(image.scale)
    # the series folder itself still opens as the CT alone (the SEG in it is not an image)
    (ct,) = viewer.open(str(tmp_path / "patient" / "image"), plugin="napari-segloop")
    assert ct.data.shape == vol.shape


def test_missing_series_is_named(make_napari_viewer, tmp_path):
    vol, info, labels = _patient(tmp_path)
    rs = write_rtstruct(tmp_path / "elsewhere" / "rs" / "rs.dcm", labels, info)
    viewer = make_napari_viewer()
    with pytest.raises(Exception) as err:
        viewer.open(str(rs), plugin="napari-segloop")
    cause = err.value
    while cause is not None and not isinstance(cause, VolumeReadError):
        cause = cause.__cause__ or cause.__context__
    assert isinstance(cause, VolumeReadError) and info.series_uid in str(cause)
