"""DICOM series reading and DICOM-SEG export, on real DICOM files written to tmp_path.

The series are built from pydicom's shipped CT_small.dcm (see ``_dicom_series``); other real
files (MR_small, its RLE twin, MR_truncated, a DICOMDIR) come from the same installed folder.
Geometry is checked physically: every written pixel's patient position (from its own file's
ImagePositionPatient / ImageOrientationPatient / PixelSpacing) must map through
``info.affine`` to the voxel of the returned array holding that pixel's value.
"""

from __future__ import annotations

import shutil
import sys
import threading

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder
from pydicom.uid import UID

from segloop.core.formats.io import dicom
from segloop.core.formats.io.dicom import list_series, read_dicom
from segloop.core.formats.io.dicom_seg import write_dicom_seg
from segloop.errors import (
    Cancelled,
    DecoderUnavailableError,
    ImageReadError,
    InvalidLabelsError,
    VolumeReadError,
)
from tests._dicom_series import (
    AXIAL,
    CORONAL,
    DICOMDIR,
    MR_SMALL,
    MR_SMALL_RLE,
    MR_TRUNCATED,
    SAGITTAL,
    rewrite,
    write_series,
)

LPS_TO_RAS = np.array([-1.0, -1.0, 1.0])


def assert_geometry(volume, info, written) -> None:
    """Every pixel of every written file sits, with its value, where ``info.affine`` says."""
    volume = np.asarray(volume)
    inv = np.linalg.inv(info.affine)
    for s in written:
        ras = (s.lps() * LPS_TO_RAS).reshape(-1, 3)
        idx = (np.c_[ras, np.ones(len(ras))] @ inv.T)[:, :3]
        rounded = np.round(idx)
        np.testing.assert_allclose(idx, rounded, atol=1e-3)
        z, y, x = rounded.astype(int).T
        np.testing.assert_array_equal(volume[z, y, x], s.values().ravel())


def test_axial_series_sorted_by_position_not_by_name_or_instance_number(tmp_path):
    written = write_series(tmp_path / "ct", 6)
    names = [s.path.name for s in written]
    numbers = [pydicom.dcmread(s.path, stop_before_pixels=True).InstanceNumber for s in written]
    assert names != sorted(names) and names != sorted(names, reverse=True)
    assert numbers != sorted(numbers) and numbers != sorted(numbers, reverse=True)

    vol, info = read_dicom(tmp_path / "ct")

    assert vol.shape == info.shape == (6, 64, 48)
    assert vol.dtype == np.int16
    assert_geometry(vol, info, written)
    # source order is the position order; Z increases towards Superior
    assert info.extra["files"] == [str(s.path) for s in written]
    assert info.extra["sop_instance_uids"] == [s.sop_uid for s in written]
    assert info.to_source.is_identity and not info.oblique
    assert (info.format, info.modality, info.units) == ("dicom", "CT", "HU")
    assert info.window == (40.0, 400.0)
    assert info.description == "abdomen"
    assert info.warnings == []


def test_rescale_to_hu_with_negative_stored_values(tmp_path):
    written = write_series(tmp_path / "int", 3, stored_offset=-1500, slope=2, intercept=-1024)
    assert min(s.stored.min() for s in written) < 0
    vol, info = read_dicom(tmp_path / "int")
    assert vol.dtype.kind == "i"
    assert vol.min() == min(s.values().min() for s in written) < -3000
    assert_geometry(vol, info, written)

    written = write_series(tmp_path / "float", 3, stored_offset=-1500, slope=0.5, intercept=-1024.5)
    vol, info = read_dicom(tmp_path / "float")
    assert vol.dtype == np.float32
    assert_geometry(vol, info, written)   # halves are exact in float32
    assert info.units == "HU"


def test_spacing_from_positions_and_non_square_pixels(tmp_path):
    # SliceThickness is 1.25 in every file; the slices are 2.5 mm apart; pixels 0.5 (rows) x 0.8 (cols)
    written = write_series(tmp_path / "ct", 4, spacing=2.5, pixel_spacing=(0.5, 0.8))
    vol, info = read_dicom(tmp_path / "ct")
    assert info.spacing == pytest.approx((2.5, 0.5, 0.8))
    # nibabel's convention: (z, y, x) index -> RAS mm; axes run to S, P, L
    import nibabel as nib

    assert nib.orientations.aff2axcodes(info.affine) == ("S", "P", "L")
    np.testing.assert_allclose(info.affine[:3, :3], np.diag([2.5, -0.5, -0.8])[[2, 1, 0]])
    # voxel (0, 0, 0) is the first pixel of the lowest slice: its IPP, converted to RAS
    np.testing.assert_allclose(info.affine @ [0, 0, 0, 1], [*(written[0].ipp * LPS_TO_RAS), 1])
    np.testing.assert_allclose(info.source_affine, info.affine)
    assert_geometry(vol, info, written)


@pytest.mark.parametrize(("orientation", "display_shape"), [
    (SAGITTAL, (64, 48, 5)),   # rows run to Inferior, columns to Posterior, slices to Right
    (CORONAL, (64, 5, 48)),    # rows run to Inferior, columns to Left, slices to Posterior
])
def test_sagittal_and_coronal_acquisitions_are_reoriented(tmp_path, orientation, display_shape):
    written = write_series(tmp_path / "s", 5, orientation=orientation, spacing=3.0)
    vol, info = read_dicom(tmp_path / "s")
    assert vol.shape == display_shape
    assert not info.to_source.is_identity and not info.oblique
    import nibabel as nib

    assert nib.orientations.aff2axcodes(info.affine) == ("S", "P", "L")
    assert_geometry(vol, info, written)
    # back to the acquisition order: (slice along the normal, row, column)
    source = info.to_source.from_display(vol)
    np.testing.assert_array_equal(source, np.stack([s.values() for s in written]))
    inv = np.linalg.inv(info.source_affine)
    idx = inv @ [*(written[2].ipp * LPS_TO_RAS), 1]
    np.testing.assert_allclose(idx[:3], [2, 0, 0], atol=1e-6)


def test_oblique_series_is_read_and_flagged(tmp_path):
    a = np.radians(20)
    tilted = ((np.cos(a), np.sin(a), 0.0), (-np.sin(a), np.cos(a), 0.0))
    written = write_series(tmp_path / "obl", 4, orientation=tilted)
    vol, info = read_dicom(tmp_path / "obl")
    assert info.oblique
    assert any("oblique" in w for w in info.warnings)
    assert vol.shape == (4, 64, 48)
    assert_geometry(vol, info, written)


def test_several_series_the_largest_is_read_and_the_others_listed(tmp_path):
    big = write_series(tmp_path / "study", 6, description="venous", prefix="A")
    small = write_series(tmp_path / "study" / "sub", 3, description="scout", prefix="B")
    uid_big = pydicom.dcmread(big[0].path).SeriesInstanceUID
    uid_small = pydicom.dcmread(small[0].path).SeriesInstanceUID

    found = list_series(tmp_path / "study")
    assert [(d["uid"], d["n_slices"], d["n_files"]) for d in found] == [(uid_big, 6, 6), (uid_small, 3, 3)]
    assert found[1]["description"] == "scout" and found[1]["modality"] == "CT"
    assert (found[0]["rows"], found[0]["cols"]) == (64, 48)

    vol, info = read_dicom(tmp_path / "study")
    assert vol.shape[0] == 6 and info.series_uid == uid_big and info.description == "venous"
    assert [d["uid"] for d in info.other_series] == [uid_small]
    assert any("1 other series" in w and uid_small in w and "series_uid=" in w for w in info.warnings)

    vol, info = read_dicom(tmp_path / "study", series_uid=uid_small)
    assert vol.shape[0] == 3 and info.description == "scout"
    assert_geometry(vol, info, small)
    # one file of a series: that series is read from the file's folder
    vol, info = read_dicom(small[1].path)
    assert info.series_uid == uid_small and vol.shape[0] == 3
    # a list of files
    vol, info = read_dicom([s.path for s in big])
    assert info.series_uid == uid_big and info.other_series == []
    with pytest.raises(VolumeReadError, match="no series with SeriesInstanceUID 1.2.3"):
        read_dicom(tmp_path / "study", series_uid="1.2.3")


def test_missing_slice_is_an_error_unless_gaps_are_allowed(tmp_path):
    write_series(tmp_path / "gap", positions=[0, 5, 10, 20, 25, 30])
    with pytest.raises(VolumeReadError, match=r"missing between z=-65\.70 and z=-55\.70 mm") as e:
        read_dicom(tmp_path / "gap")
    assert "allow_gaps=True" in str(e.value)
    vol, info = read_dicom(tmp_path / "gap", allow_gaps=True)
    assert vol.shape[0] == 6 and info.spacing[0] == pytest.approx(5.0)
    assert any("missing" in w for w in info.warnings)


def test_duplicate_positions_name_the_files_and_identical_copies_are_dropped(tmp_path):
    written = write_series(tmp_path / "dup", positions=[0, 5, 5, 10])
    with pytest.raises(VolumeReadError, match="same slice position") as e:
        read_dicom(tmp_path / "dup")
    assert written[1].path.name in str(e.value) and written[2].path.name in str(e.value)

    written = write_series(tmp_path / "copy", 4)
    shutil.copy(written[2].path, tmp_path / "copy" / "copy_of_a_slice.dcm")
    vol, info = read_dicom(tmp_path / "copy")
    assert vol.shape[0] == 4
    assert any("copy_of_a_slice.dcm" in w and "same SOPInstanceUID" in w for w in info.warnings)
    assert_geometry(vol, info, written)


def test_gantry_tilt_is_refused(tmp_path):
    # each slice 5 mm up and 1.34 mm posterior: a 15 degree tilt
    write_series(tmp_path / "tilt", 4, inplane_shift=(0.0, 5 * np.tan(np.radians(15)), 0.0))
    with pytest.raises(VolumeReadError, match=r"gantry tilt of about 15\.0 degrees.*resampled"):
        read_dicom(tmp_path / "tilt")


def test_mixed_orientation_and_mixed_sizes_are_refused(tmp_path):
    written = write_series(tmp_path / "mixed", 4)
    rewrite(written[3].path, ImageOrientationPatient=[float(v) for v in (*SAGITTAL[0], *SAGITTAL[1])])
    with pytest.raises(VolumeReadError, match="different orientations") as e:
        read_dicom(tmp_path / "mixed")
    assert written[3].path.name in str(e.value)

    uid = pydicom.dcmread(written[0].path).SeriesInstanceUID
    write_series(tmp_path / "sizes", 3, series_uid=uid, prefix="A")
    write_series(tmp_path / "sizes", 2, rows=32, series_uid=uid, prefix="B", positions=[20, 25])
    with pytest.raises(VolumeReadError, match="different image sizes"):
        read_dicom(tmp_path / "sizes")


def test_single_slice(tmp_path):
    written = write_series(tmp_path / "one", 1, slice_thickness=2.5)
    vol, info = read_dicom(written[0].path)
    assert vol.shape == (1, 64, 48) and info.spacing == pytest.approx((2.5, 0.66, 0.66))
    assert info.warnings == []
    assert_geometry(vol, info, written)

    ds = pydicom.dcmread(written[0].path)
    del ds.SliceThickness
    ds.save_as(written[0].path, enforce_file_format=True)
    vol, info = read_dicom(written[0].path)
    assert info.spacing[0] == 1.0 and any("1 mm" in w for w in info.warnings)

    # a real single MR file
    shutil.copy(MR_SMALL, tmp_path / "mr.dcm")
    vol, info = read_dicom(tmp_path / "mr.dcm")
    ref = pydicom.dcmread(MR_SMALL)
    assert vol.shape == (1, 64, 64) and info.modality == "MR" and info.units == ""
    assert info.window == (600.0, 1600.0)
    assert info.spacing == pytest.approx((float(ref.SliceThickness), 0.3125, 0.3125))
    np.testing.assert_array_equal(vol[0], ref.pixel_array)


def test_no_dicom_and_missing_path(tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "random.bin").write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(VolumeReadError, match="no DICOM images found"):
        read_dicom(tmp_path)
    with pytest.raises(VolumeReadError, match="no DICOM images found"):
        list_series(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(VolumeReadError, match="no DICOM images found"):
        read_dicom(tmp_path / "empty")
    with pytest.raises(ImageReadError, match="no such file or folder"):
        read_dicom(tmp_path / "nowhere")


def test_other_files_are_skipped_and_files_without_preamble_read(tmp_path):
    written = write_series(tmp_path / "ct", 4)
    shutil.copy(DICOMDIR, tmp_path / "ct" / "DICOMDIR")
    (tmp_path / "ct" / "README.txt").write_text("exported from PACS")
    # one slice as a bare dataset: no 128-byte preamble, no "DICM", no file meta, implicit VR
    ds = pydicom.dcmread(written[1].path)
    ds.preamble = None
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    pydicom.dcmwrite(written[1].path, ds, implicit_vr=True, little_endian=True)
    with pytest.raises(pydicom.errors.InvalidDicomError):
        pydicom.dcmread(written[1].path)

    vol, info = read_dicom(tmp_path / "ct")
    assert vol.shape[0] == 4 and info.warnings == []
    assert_geometry(vol, info, written)


def test_truncated_files_name_the_file(tmp_path):
    written = write_series(tmp_path / "ct", 4)
    data = written[2].path.read_bytes()
    written[2].path.write_bytes(data[:-1000])
    with pytest.raises(ImageReadError, match=written[2].path.name) as e:
        read_dicom(tmp_path / "ct")
    assert not isinstance(e.value, DecoderUnavailableError)

    shutil.copy(MR_TRUNCATED, tmp_path / "MR_truncated.dcm")
    with pytest.raises(ImageReadError, match="MR_truncated.dcm.*truncated"):
        read_dicom(tmp_path / "MR_truncated.dcm")


def test_rle_compressed_series_and_real_rle_file(tmp_path):
    plain = write_series(tmp_path / "plain", 4, seed=3)
    rle = write_series(tmp_path / "rle", 4, compress="rle", seed=3)
    assert pydicom.dcmread(rle[0].path).file_meta.TransferSyntaxUID == pydicom.uid.RLELossless
    vol_rle, info = read_dicom(tmp_path / "rle")
    vol_plain, _ = read_dicom(tmp_path / "plain")
    np.testing.assert_array_equal(np.stack([s.stored for s in rle]), np.stack([s.stored for s in plain]))
    np.testing.assert_array_equal(vol_rle, vol_plain)
    assert_geometry(vol_rle, info, rle)

    shutil.copy(MR_SMALL_RLE, tmp_path / "mr_rle.dcm")
    vol, _ = read_dicom(tmp_path / "mr_rle.dcm")
    np.testing.assert_array_equal(vol[0], pydicom.dcmread(MR_SMALL).pixel_array)


def _bogus_compressed(path, uid: str) -> None:
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = UID(uid)
    ds.PixelData = encapsulate([b"\xff\xd8\xff" + bytes(range(200))])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)


def _decodable(uid: str) -> bool:
    try:
        return get_decoder(UID(uid)).is_available
    except NotImplementedError:
        return False


def test_undecodable_transfer_syntax_names_it_and_the_extra(tmp_path, monkeypatch):
    # JPEG Lossless SV1 (the usual lossless CT compression), JPEG Lossless, HTJ2K:
    # the first that no installed package decodes here
    candidates = ["1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.201"]
    uid = next((u for u in candidates if not _decodable(u)), None)
    if uid is None:
        # every candidate is decodable here (the dicom-codecs extra is installed): take pydicom's
        # JPEG Lossless SV1 plugins away for this test, as on a machine without the extra
        uid = candidates[0]
        monkeypatch.setattr(get_decoder(UID(uid)), "_available", {})
        assert not _decodable(uid)
    written = write_series(tmp_path / "jpeg", 3)
    for s in written:
        _bogus_compressed(s.path, uid)
    with pytest.raises(DecoderUnavailableError) as e:
        read_dicom(tmp_path / "jpeg")
    msg = str(e.value)
    assert uid in msg and 'pip install "napari-segloop[dicom-codecs]"' in msg
    if UID(uid).name != uid:
        assert UID(uid).name in msg

    # a syntax that is decodable here, with corrupt data: a plain read error naming the file
    uid = next(u for u in ["1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.50"]
               if _decodable(u))
    written = write_series(tmp_path / "corrupt", 3)
    _bogus_compressed(written[1].path, uid)
    with pytest.raises(ImageReadError, match=written[1].path.name) as e:
        read_dicom(tmp_path / "corrupt")
    assert not isinstance(e.value, DecoderUnavailableError)


@pytest.mark.parametrize("orientation", [AXIAL, SAGITTAL])
def test_large_series_is_read_lazily_one_slice_at_a_time(tmp_path, monkeypatch, orientation):
    import dask.array as da

    written = write_series(tmp_path / "ct", 5, orientation=orientation)
    eager, _ = read_dicom(tmp_path / "ct")
    assert isinstance(eager, np.ndarray)
    monkeypatch.setattr(dicom, "LAZY_BYTES", 10_000)      # the series is 30 kB
    vol, info = read_dicom(tmp_path / "ct")
    assert isinstance(vol, da.Array) and info.extra["lazy"]
    source = info.to_source.from_display(vol)              # (slice, row, col), still lazy
    assert isinstance(source, da.Array) and source.chunks[0] == (1,) * 5   # a chunk per slice
    np.testing.assert_array_equal(np.asarray(vol), eager)
    assert_geometry(vol, info, written)
    # slices are read when they are looked at: a file broken after the call only fails its slice
    written[-1].path.write_bytes(written[-1].path.read_bytes()[:-1000])
    np.testing.assert_array_equal(source[0].compute(), written[0].values())
    with pytest.raises(ImageReadError, match=written[-1].path.name):
        source[-1].compute()


def test_progress_and_cancel(tmp_path):
    write_series(tmp_path / "ct", 4)
    (tmp_path / "ct" / "notes.txt").write_text("x")
    calls = []
    read_dicom(tmp_path / "ct", progress=lambda done, total: calls.append((done, total)))
    dones = [d for d, _ in calls]
    assert dones == sorted(dones) and calls[-1] == (9, 9)   # 5 files scanned + 4 slices read
    assert all(d <= t for d, t in calls)

    event = threading.Event()
    event.set()
    with pytest.raises(Cancelled):
        read_dicom(tmp_path / "ct", cancel=event)
    asked = []

    def cancel_after_the_scan():
        asked.append(1)
        return len(asked) > 6
    with pytest.raises(Cancelled):
        read_dicom(tmp_path / "ct", cancel=cancel_after_the_scan)
    assert len(asked) == 7


def test_dicom_seg_roundtrip_references_the_source_slices(tmp_path):
    import highdicom as hd

    written = write_series(tmp_path / "sag", 5, orientation=SAGITTAL)
    vol, info = read_dicom(tmp_path / "sag")
    labels = np.zeros(vol.shape, np.uint16)
    labels[10:30, 5:20, 1:4] = 1            # display orientation (S, P, L axes)
    labels[40:50, 30:40, 2] = 7
    out = write_dicom_seg(tmp_path / "sag" / "labels.dcm", labels, info,
                          segment_names={1: "liver", 7: "tumour"}, colors={7: (255, 0, 0)})
    assert out == tmp_path / "sag" / "labels.dcm"

    seg = hd.seg.segread(out)
    assert seg.number_of_segments == 2
    descriptions = {n: seg.get_segment_description(n) for n in seg.segment_numbers}
    assert {n: d.segment_label for n, d in descriptions.items()} == {1: "liver", 2: "tumour"}
    assert descriptions[2].tracking_id == "segloop label 7"
    assert tuple(seg.SegmentSequence[1].RecommendedDisplayCIELabValue) == \
        hd.color.CIELabColor.from_rgb(255, 0, 0).value
    source_labels = info.to_source.from_display(labels)
    uids = info.extra["sop_instance_uids"]
    frames = seg.pixel_array
    seen = set()
    for i, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        ref = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        k = uids.index(ref)
        number = item.SegmentIdentificationSequence[0].ReferencedSegmentNumber
        np.testing.assert_allclose([float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient],
                                   written[k].ipp, atol=1e-4)
        label_id = {1: 1, 2: 7}[number]
        np.testing.assert_array_equal(frames[i].astype(bool), source_labels[k] == label_id)
        seen.add((k, label_id))
    expected = {(k, v) for k in range(5) for v in (1, 7) if (source_labels[k] == v).any()}
    assert seen == expected
    assert seg.StudyInstanceUID == pydicom.dcmread(written[0].path).StudyInstanceUID

    # the SEG in the series folder is not an image series: the folder still reads as before
    again, info2 = read_dicom(tmp_path / "sag")
    assert info2.other_series == [] and again.shape == vol.shape


def test_dicom_seg_refuses_bad_labels_and_names_the_extra(tmp_path, monkeypatch):
    write_series(tmp_path / "ct", 3)
    vol, info = read_dicom(tmp_path / "ct")
    with pytest.raises(InvalidLabelsError, match="empty"):
        write_dicom_seg(tmp_path / "s.dcm", np.zeros(vol.shape, np.uint8), info)
    with pytest.raises(InvalidLabelsError, match="integers"):
        write_dicom_seg(tmp_path / "s.dcm", np.ones(vol.shape, np.float32), info)
    with pytest.raises(InvalidLabelsError, match="shape"):
        write_dicom_seg(tmp_path / "s.dcm", np.ones((2, 64, 48), np.uint8), info)
    monkeypatch.setitem(sys.modules, "highdicom", None)
    with pytest.raises(ImportError, match=r"pip install \"napari-segloop\[dicom-seg\]\""):
        write_dicom_seg(tmp_path / "s.dcm", np.ones(vol.shape, np.uint8), info)
    assert not (tmp_path / "s.dcm").exists()
