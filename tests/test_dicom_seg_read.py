"""Reading DICOM-SEG: round trips with segloop's writer, SEGs made with highdicom directly
(FRACTIONAL, overlapping segments), SEGs without source references, and the reference checks."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

hd = pytest.importorskip("highdicom")

from pydicom.sr.codedict import codes  # noqa: E402

from segloop.core.formats.io.dicom import read_dicom  # noqa: E402
from segloop.core.formats.io.dicom_seg import read_dicom_seg, write_dicom_seg  # noqa: E402
from segloop.errors import ImageReadError, InvalidLabelsError, VolumeReadError  # noqa: E402
from tests._dicom_series import AXIAL, CORONAL, SAGITTAL, write_series  # noqa: E402


def _labels(shape):
    labels = np.zeros(shape, np.uint16)
    labels[tuple(slice(1, s - 1) for s in shape)] = 1
    labels[tuple(slice(2, 4) for _ in shape)] = 7
    return labels


@pytest.mark.parametrize("orientation", [AXIAL, SAGITTAL, CORONAL], ids=["axial", "sagittal", "coronal"])
def test_round_trip_with_and_without_the_reference(tmp_path, orientation):
    write_series(tmp_path / "ct", 5, orientation=orientation)
    vol, info = read_dicom(tmp_path / "ct")
    labels = _labels(vol.shape)
    out = write_dicom_seg(tmp_path / "seg.dcm", labels, info, segment_names={1: "liver", 7: "tumour"},
                          colors={7: (255, 0, 0)})
    back, names, report = read_dicom_seg(out, tmp_path / "ct")
    np.testing.assert_array_equal(back, labels)                 # original ids from the TrackingID
    assert names == {1: "liver", 7: "tumour"} and report.colors == {7: (255, 0, 0)}
    assert report.info.series_uid == info.series_uid and report.kind == "SEG"

    own, names2, report2 = read_dicom_seg(out)                  # the SEG's own planes: the slices it stores
    m = np.linalg.inv(info.affine) @ report2.info.affine
    np.testing.assert_allclose(m[:3, :3], np.eye(3), atol=1e-6)   # same axes and spacing as the series
    offset = np.rint(m[:3, 3]).astype(int)
    np.testing.assert_array_equal(own, labels[tuple(slice(o, o + s) for o, s in zip(offset, own.shape))])
    assert (own > 0).sum() == (labels > 0).sum() and names2 == names
    assert report2.info.series_uid == info.series_uid            # the series it was drawn on


def test_seg_without_source_references_is_placed_by_position(tmp_path):
    write_series(tmp_path / "ct", 5, orientation=SAGITTAL)
    vol, info = read_dicom(tmp_path / "ct")
    labels = _labels(vol.shape)
    out = write_dicom_seg(tmp_path / "seg.dcm", labels, info)
    ds = pydicom.dcmread(out)
    for item in ds.PerFrameFunctionalGroupsSequence:
        del item.DerivationImageSequence
    ds.save_as(tmp_path / "nosrc.dcm")
    back, _, _ = read_dicom_seg(tmp_path / "nosrc.dcm", (vol, info))
    np.testing.assert_array_equal(back, labels)


def _source_datasets(folder):
    _, info = read_dicom(folder)
    return [pydicom.dcmread(f) for f in info.extra["files"]], info


def _hd_seg(datasets, pixel_array, kind, n_segments, path):
    algorithm = hd.AlgorithmIdentificationSequence(name="test", version="1", family=codes.DCM.ArtificialIntelligence)
    descriptions = [hd.seg.SegmentDescription(
        segment_number=i + 1, segment_label=f"seg{i + 1}", segmented_property_category=codes.SCT.Tissue,
        segmented_property_type=codes.SCT.Tissue, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm) for i in range(n_segments)]
    seg = hd.seg.Segmentation(
        source_images=datasets, pixel_array=pixel_array, segmentation_type=kind,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=5,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="test", manufacturer_model_name="test",
        software_versions="1", device_serial_number="1", max_fractional_value=100)
    seg.save_as(path)
    return path


def test_fractional_is_thresholded_at_a_half_and_overlaps_are_refused_or_painted(tmp_path):
    write_series(tmp_path / "ct", 3)
    datasets, info = _source_datasets(tmp_path / "ct")
    frac = np.zeros((3, 64, 48), np.float32)
    frac[:, 10:20, 10:20] = 0.3
    frac[:, 30:40, 10:20] = 0.7
    out = _hd_seg(datasets, frac, hd.seg.SegmentationTypeValues.FRACTIONAL, 1, tmp_path / "frac.dcm")
    back, names, _ = read_dicom_seg(out, tmp_path / "ct")
    source = info.to_source.from_display(back)
    assert names == {1: "seg1"}
    assert (source[:, 30:40, 10:20] == 1).all() and source.sum() == 3 * 100

    both = np.zeros((3, 64, 48, 2), bool)
    both[:, 5:50, 5:40, 0] = True                   # a lung
    both[1, 20:25, 20:25, 1] = True                 # a tumour inside it
    out = _hd_seg(datasets, both, hd.seg.SegmentationTypeValues.BINARY, 2, tmp_path / "overlap.dcm")
    with pytest.raises(InvalidLabelsError, match="'seg1' and 'seg2' overlap.*smaller_on_top"):
        read_dicom_seg(out, tmp_path / "ct")
    back, _, report = read_dicom_seg(out, tmp_path / "ct", overlap="smaller_on_top")
    source = info.to_source.from_display(back)
    assert (source[1, 20:25, 20:25] == 2).all() and (source == 1).sum() == 3 * 45 * 35 - 25
    assert report.overlaps[0]["voxels"] == 25 and report.overlaps[0]["shown"] == "seg2"


def test_reference_checks_and_bad_files(tmp_path):
    written = write_series(tmp_path / "ct", 3)
    vol, info = read_dicom(tmp_path / "ct")
    labels = np.zeros(vol.shape, np.uint8)
    labels[1, 10:20, 10:20] = 1
    out = write_dicom_seg(tmp_path / "seg.dcm", labels, info)
    write_series(tmp_path / "other", 3)
    with pytest.raises(VolumeReadError, match=f"drawn on series {info.series_uid}"):
        read_dicom_seg(out, tmp_path / "other")
    ds = pydicom.dcmread(out)
    ds.FrameOfReferenceUID = "1.2.3.4"
    ds.save_as(tmp_path / "for.dcm")
    with pytest.raises(VolumeReadError, match="frame of reference 1.2.3.4"):
        read_dicom_seg(tmp_path / "for.dcm", (vol, info))
    ds = pydicom.dcmread(out)
    ds.SegmentationType = "LABELMAP"
    ds.save_as(tmp_path / "labelmap.dcm")
    with pytest.raises(ImageReadError, match="LABELMAP is not read"):
        read_dicom_seg(tmp_path / "labelmap.dcm", (vol, info))
    with pytest.raises(ImageReadError, match="not a DICOM Segmentation"):
        read_dicom_seg(written[0].path)
    data = out.read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="cut.dcm"):
        read_dicom_seg(tmp_path / "cut.dcm", (vol, info))
