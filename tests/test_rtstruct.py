"""RT Structure Sets: write labels as an RTSTRUCT and read contours back onto a real DICOM series.

The CT series are built from pydicom's shipped CT_small.dcm (``_dicom_series``); RTSTRUCTs are
written by segloop's own :func:`write_rtstruct` and then edited with pydicom where a test needs
a file another system would make (overlapping ROIs, holes, broken references).  Geometry is
checked in millimetres against the written files' ImagePositionPatient, not only by round trip.
"""

from __future__ import annotations

import copy

import numpy as np
import pydicom
import pytest

from segloop.core.formats.io.dicom import read_dicom
from segloop.core.formats.io.rtstruct import (
    read_rtstruct,
    rtstruct_masks,
    rtstruct_roi_names,
    write_rtstruct,
)
from segloop.errors import ExportError, ImageReadError, InvalidLabelsError, VolumeReadError
from tests._dicom_series import AXIAL, SAGITTAL, write_series


def _series(tmp_path, orientation=AXIAL, n=5, name="ct"):
    written = write_series(tmp_path / name, n, orientation=orientation)
    vol, info = read_dicom(tmp_path / name)
    return written, vol, info


def _contours(ds, roi_index=0):
    return ds.ROIContourSequence[roi_index].ContourSequence


@pytest.mark.parametrize("orientation", [AXIAL, SAGITTAL], ids=["axial", "sagittal"])
def test_round_trip_with_holes_several_pieces_and_border_voxels(tmp_path, orientation):
    _, vol, info = _series(tmp_path, orientation)
    labels = np.zeros(vol.shape, np.uint16)
    rng = np.random.default_rng(3)
    labels[rng.random(vol.shape) < 0.25] = 2            # many pieces, holes, border voxels
    labels[tuple(slice(0, 3) for _ in vol.shape)] = 5   # a block in the corner (touches the border)
    out = write_rtstruct(tmp_path / "rs.dcm", labels, info, names={2: "noise", 5: "corner"},
                         colors={5: (255, 0, 0)})
    back, names, report = read_rtstruct(out, tmp_path / "ct")
    assert names == {1: "noise", 2: "corner"}
    expected = np.select([labels == 2, labels == 5], [1, 2], 0)
    np.testing.assert_array_equal(back, expected)
    assert back.dtype == np.uint16 and report.colors[2] == (255, 0, 0)
    assert report.info.series_uid == info.series_uid
    assert report.structures[1]["voxels"] == int((labels == 5).sum())
    assert report.structures[1]["ml"] == pytest.approx((labels == 5).sum() * info.voxel_volume_ml)
    assert rtstruct_roi_names(out) == ["noise", "corner"]


def test_ring_is_two_contours_on_one_slice_and_the_hole_stays_empty(tmp_path):
    written, vol, info = _series(tmp_path)
    labels = np.zeros(vol.shape, np.uint8)
    labels[2, 10:30, 10:30] = 1
    labels[2, 15:25, 15:25] = 0                       # hole
    labels[2, 40:50, 5:10] = 1                        # a second piece on the same slice
    out = write_rtstruct(tmp_path / "rs.dcm", labels, info, names={1: "ring"})
    ds = pydicom.dcmread(out)
    contours = _contours(ds)
    assert len(contours) == 3                         # outer ring, hole, second piece
    # every contour lies on slice 2's plane in patient mm and references that slice's image
    for c in contours:
        pts = np.asarray(c.ContourData, float).reshape(-1, 3)
        np.testing.assert_allclose(pts[:, 2], written[2].ipp[2], atol=1e-3)
        assert c.ContourImageSequence[0].ReferencedSOPInstanceUID == written[2].sop_uid
    # the outer ring runs half a pixel outside the pixel centres (marching squares at 0.5)
    dy, dx = written[2].pixel_spacing
    xs = np.concatenate([np.asarray(c.ContourData, float).reshape(-1, 3)[:, 0] for c in contours])
    x0 = written[2].ipp[0]
    assert xs.min() == pytest.approx(x0 + 4.5 * dx, abs=1e-3)     # columns 5..9 piece: left edge 4.5
    back, _, report = read_rtstruct(out, tmp_path / "ct")
    np.testing.assert_array_equal(back, labels)
    assert back[2, 20, 20] == 0 and report.structures[0]["contours"] == 3


def _merge(first, second, out):
    """One RTSTRUCT holding the ROIs of two (as planning systems write overlapping structures)."""
    a, b = pydicom.dcmread(first), pydicom.dcmread(second)
    for seq in ("StructureSetROISequence", "ROIContourSequence", "RTROIObservationsSequence"):
        for item in getattr(b, seq):
            getattr(a, seq).append(copy.deepcopy(item))
    numbers = [int(r.ROINumber) for r in a.StructureSetROISequence]
    assert len(set(numbers)) == len(numbers)
    a.save_as(out)
    return out


@pytest.mark.parametrize("small_first", [False, True])
def test_overlapping_rois_the_smaller_is_painted_last_and_reported(tmp_path, small_first):
    _, vol, info = _series(tmp_path)
    lung = np.zeros(vol.shape, np.uint8)
    lung[:, 5:55, 5:40] = 1
    gtv = np.zeros(vol.shape, np.uint8)
    gtv[1:4, 20:30, 15:25] = 2
    lung_rs = write_rtstruct(tmp_path / "lung.dcm", lung, info, names={1: "Lung"})
    gtv_rs = write_rtstruct(tmp_path / "gtv.dcm", gtv, info, names={2: "GTV"})
    pair = (gtv_rs, lung_rs) if small_first else (lung_rs, gtv_rs)
    both = _merge(*pair, tmp_path / "both.dcm")
    labels, names, report = read_rtstruct(both, (vol, info))
    ids = {v: k for k, v in names.items()}
    assert list(names.values()) == (["GTV", "Lung"] if small_first else ["Lung", "GTV"])
    assert (labels[gtv > 0] == ids["GTV"]).all()                       # the tumour stays visible
    assert (labels[(lung > 0) & (gtv == 0)] == ids["Lung"]).all()
    (o,) = report.overlaps
    assert o["voxels"] == int((gtv > 0).sum()) and o["shown"] == "GTV"
    masks, _ = rtstruct_masks(both, (vol, info))
    np.testing.assert_array_equal(masks["Lung"], lung > 0)          # per-ROI masks keep the overlap
    np.testing.assert_array_equal(masks["GTV"], gtv > 0)
    only, names, _ = read_rtstruct(both, (vol, info), rois=["gtv"])   # case-insensitive choice
    assert names == {1: "GTV"} and (only > 0).sum() == (gtv > 0).sum()


def test_folder_with_several_series_reads_the_referenced_one(tmp_path):
    write_series(tmp_path / "mixed", 7, description="bigger, not referenced", seed=1)
    written = write_series(tmp_path / "mixed", 5, prefix="B", seed=2)
    vol, info = read_dicom([s.path for s in written])
    labels = np.zeros(vol.shape, np.uint8)
    labels[1:3, 10:20, 10:20] = 1
    out = write_rtstruct(tmp_path / "rs.dcm", labels, info)
    back, _, report = read_rtstruct(out, tmp_path / "mixed")
    assert report.info.series_uid == info.series_uid and back.shape == (5, 64, 48)
    np.testing.assert_array_equal(back, labels)


def test_reference_checks_name_the_expected_series(tmp_path):
    _, vol, info = _series(tmp_path)
    labels = np.zeros(vol.shape, np.uint8)
    labels[2, 10:20, 10:20] = 1
    out = write_rtstruct(tmp_path / "rs.dcm", labels, info)
    write_series(tmp_path / "other", 5)                               # same patient frame, another series
    with pytest.raises(VolumeReadError, match=f"drawn on series {info.series_uid}"):
        read_rtstruct(out, tmp_path / "other")
    _, other_info = read_dicom(tmp_path / "other")
    with pytest.raises(VolumeReadError, match=info.series_uid):
        read_rtstruct(out, other_info)

    ds = pydicom.dcmread(out)                                           # another frame of reference
    ds.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID = "1.2.3.4"
    ds.StructureSetROISequence[0].ReferencedFrameOfReferenceUID = "1.2.3.4"
    ds.save_as(tmp_path / "for.dcm")
    with pytest.raises(VolumeReadError, match="frame of reference 1.2.3.4"):
        read_rtstruct(tmp_path / "for.dcm", (vol, info))

    ds = pydicom.dcmread(out)                                           # a contour image not in the series
    del ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence
    _contours(ds)[0].ContourImageSequence[0].ReferencedSOPInstanceUID = "1.2.3.999"
    ds.save_as(tmp_path / "sop.dcm")
    with pytest.raises(VolumeReadError, match="1.2.3.999"):
        read_rtstruct(tmp_path / "sop.dcm", (vol, info))


def _edited(out, path, change):
    ds = pydicom.dcmread(out)
    change(ds)
    ds.save_as(path)
    return path


def _shift(ds, dx=0.0, dz=0.0, tilt=0.0):
    for c in _contours(ds):
        pts = np.asarray(c.ContourData, float).reshape(-1, 3)
        pts[:, 0] += dx
        pts[:, 2] += dz + tilt * (pts[:, 0] - pts[:, 0].mean())
        c.ContourData = [f"{v:.4f}" for v in pts.ravel()]


def test_contours_off_the_grid_are_errors_naming_the_roi(tmp_path):
    _, vol, info = _series(tmp_path)
    labels = np.zeros(vol.shape, np.uint8)
    labels[2, 10:20, 10:20] = 1
    out = write_rtstruct(tmp_path / "rs.dcm", labels, info, names={1: "Liver"})
    with pytest.raises(InvalidLabelsError, match="'Liver' reaches outside"):
        read_rtstruct(_edited(out, tmp_path / "a.dcm", lambda ds: _shift(ds, dx=40.0)), (vol, info))
    with pytest.raises(InvalidLabelsError, match="'Liver' has a contour between two slices"):
        read_rtstruct(_edited(out, tmp_path / "b.dcm", lambda ds: _shift(ds, dz=2.0)), (vol, info))
    with pytest.raises(InvalidLabelsError, match="not parallel"):
        read_rtstruct(_edited(out, tmp_path / "c.dcm", lambda ds: _shift(ds, tilt=1.0)), (vol, info))
    with pytest.raises(InvalidLabelsError, match="reaches outside"):
        read_rtstruct(_edited(out, tmp_path / "d.dcm", lambda ds: _shift(ds, dz=-15.0)), (vol, info))
    # a sub-millimetre nudge along the slice normal is within tolerance: same voxels
    back, _, _ = read_rtstruct(_edited(out, tmp_path / "e.dcm", lambda ds: _shift(ds, dz=0.5)), (vol, info))
    np.testing.assert_array_equal(back, labels)


def test_empty_rois_skipped_or_refused(tmp_path):
    _, vol, info = _series(tmp_path)
    labels = np.zeros(vol.shape, np.uint8)
    labels[2, 10:20, 10:20] = 1
    labels[3, 30:40, 10:20] = 2
    out = write_rtstruct(tmp_path / "rs.dcm", labels, info, names={1: "A", 2: "B"})
    one_empty = _edited(out, tmp_path / "e1.dcm", lambda ds: delattr(ds.ROIContourSequence[0], "ContourSequence"))
    back, names, report = read_rtstruct(one_empty, (vol, info))
    assert names == {1: "B"} and (back == 1).sum() == 100
    assert any("'A' has no contours" in w for w in report.warnings)
    with pytest.raises(InvalidLabelsError, match="'A' has no contours"):
        read_rtstruct(one_empty, (vol, info), rois=["A"])
    with pytest.raises(InvalidLabelsError, match="no ROI named 'C'"):
        read_rtstruct(one_empty, (vol, info), rois=["C"])

    def empty_all(ds):
        for rc in ds.ROIContourSequence:
            del rc.ContourSequence
    with pytest.raises(InvalidLabelsError, match="none of the 2 ROI"):
        read_rtstruct(_edited(out, tmp_path / "e2.dcm", empty_all), (vol, info))


def test_bad_files(tmp_path):
    written, vol, info = _series(tmp_path)
    with pytest.raises(ImageReadError, match="not an RT Structure Set"):
        read_rtstruct(written[0].path, (vol, info))
    (tmp_path / "notes.txt").write_text("not dicom")
    with pytest.raises(ImageReadError, match="not a DICOM file"):
        read_rtstruct(tmp_path / "notes.txt", (vol, info))
    labels = np.zeros(vol.shape, np.uint8)
    labels[2, 10:20, 10:20] = 1
    out = write_rtstruct(tmp_path / "rs.dcm", labels, info)
    data = out.read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[: len(data) - 200])
    with pytest.raises(ImageReadError, match="cut.dcm"):
        read_rtstruct(tmp_path / "cut.dcm", (vol, info))
    bad_count = _edited(out, tmp_path / "n.dcm", lambda ds: setattr(_contours(ds)[0], "NumberOfContourPoints", 99))
    with pytest.raises(ImageReadError, match="NumberOfContourPoints"):
        read_rtstruct(bad_count, (vol, info))
    open_contour = _edited(out, tmp_path / "o.dcm",
                           lambda ds: setattr(_contours(ds)[0], "ContourGeometricType", "OPEN_PLANAR"))
    with pytest.raises(InvalidLabelsError, match="CLOSED_PLANAR"):
        read_rtstruct(open_contour, (vol, info))


def test_writer_refuses_bad_labels_and_non_dicom_volumes(tmp_path):
    _, vol, info = _series(tmp_path)
    with pytest.raises(InvalidLabelsError, match="empty"):
        write_rtstruct(tmp_path / "x.dcm", np.zeros(vol.shape, np.uint8), info)
    with pytest.raises(InvalidLabelsError, match="integers"):
        write_rtstruct(tmp_path / "x.dcm", np.ones(vol.shape, np.float32), info)
    with pytest.raises(InvalidLabelsError, match="shape"):
        write_rtstruct(tmp_path / "x.dcm", np.ones((2, 2, 2), np.uint8), info)
    from segloop.core.formats.io.geometry import VolumeInfo, lps_affine

    nifti = VolumeInfo(path=tmp_path / "a.nii", format="nifti", shape=vol.shape, spacing=(1.0, 1.0, 1.0),
                       affine=lps_affine((1.0, 1.0, 1.0)))
    with pytest.raises(ExportError, match="nifti"):
        write_rtstruct(tmp_path / "x.dcm", np.ones(vol.shape, np.uint8), nifti)
    assert not (tmp_path / "x.dcm").exists()
