"""Importing DICOM series with their RTSTRUCT / DICOM-SEG contours into a training folder v1."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("highdicom")

from segloop.core.formats.importers.contours import import_dicom_contours  # noqa: E402
from segloop.core.formats.io.dicom import read_dicom  # noqa: E402
from segloop.core.formats.io.dicom_seg import write_dicom_seg  # noqa: E402
from segloop.core.formats.io.rtstruct import write_rtstruct  # noqa: E402
from segloop.core.formats.trainfolder import TrainingFolder  # noqa: E402
from segloop.errors import ImportLayoutError  # noqa: E402
from tests._dicom_series import rewrite, write_series  # noqa: E402


def _patient(root, pid, *, seed=0):
    """``root/<pid>/image/`` (a CT of that patient) and its volume, info, lung and tumour masks."""
    written = write_series(root / pid / "image", 4, seed=seed)
    for s in written:
        rewrite(s.path, PatientID=pid)
    vol, info = read_dicom(root / pid / "image")
    lung = np.zeros(vol.shape, np.uint8)
    lung[:, 5 + seed:55, 5:40] = 1
    gtv = np.zeros(vol.shape, np.uint8)
    gtv[1:3, 20:30, 15 + seed:25] = 1
    return vol, info, lung, gtv


def _rtstruct(root, pid, info, lung, gtv, *, extra_roi=False, name="rs"):
    """An RTSTRUCT with overlapping Lung and GTV (a tumour inside the lung), as planning systems write them."""
    import copy

    import pydicom

    a = write_rtstruct(root / pid / "struct" / f"{name}-lung.dcm", lung, info, names={1: "Lung"})
    b = write_rtstruct(root / pid / "struct" / f"{name}-gtv.dcm", gtv * 2, info, names={2: "GTV"})
    ds, other = pydicom.dcmread(a), pydicom.dcmread(b)
    for seq in ("StructureSetROISequence", "ROIContourSequence", "RTROIObservationsSequence"):
        getattr(ds, seq).extend(copy.deepcopy(list(getattr(other, seq))))
    if extra_roi:
        cord = write_rtstruct(root / pid / "struct" / "cord.dcm", np.pad(np.ones((4, 2, 2), np.uint8) * 3,
                                                                             ((0, 0), (60, 2), (44, 2))), info,
                              names={3: "Cord"})
        c = pydicom.dcmread(cord)
        for seq in ("StructureSetROISequence", "ROIContourSequence", "RTROIObservationsSequence"):
            getattr(ds, seq).extend(copy.deepcopy(list(getattr(c, seq))))
        cord.unlink()
    out = root / pid / "struct" / f"{name}.dcm"
    ds.save_as(out)
    a.unlink()
    b.unlink()
    return out


def test_rtstruct_and_seg_pairs_become_semantic_3d_samples_split_by_patient(tmp_path):
    src = tmp_path / "src"
    expected = {}
    for k, pid in enumerate(["LUNG1-001", "LUNG1-002"]):
        vol, info, lung, gtv = _patient(src, pid, seed=k)
        _rtstruct(src, pid, info, lung, gtv, extra_roi=(k == 1))
        expected[pid] = (vol, info, np.where(gtv > 0, 1, np.where(lung > 0, 2, 0)))
    vol, info, lung, gtv = _patient(src, "LUNG1-003", seed=2)
    seg_labels = np.where(gtv > 0, 2, lung).astype(np.uint8)
    write_dicom_seg(src / "LUNG1-003" / "seg" / "seg.dcm", seg_labels, info, segment_names={1: "lung", 2: "gtv"})
    expected["LUNG1-003"] = (vol, info, np.where(gtv > 0, 1, np.where(lung > 0, 2, 0)))
    # a second RTSTRUCT of LUNG1-001 (another reader): a second sample, always in the same split
    _rtstruct(src, "LUNG1-001", expected["LUNG1-001"][1], lung * 0 + (expected["LUNG1-001"][2] == 2),
              (expected["LUNG1-001"][2] == 1).astype(np.uint8), name="reader2")

    report = import_dicom_contours(src, tmp_path / "tf", classes={"GTV": "tumour", "Lung": "lung"},
                                   val_fraction=0.5)
    assert report.classes == ("background", "tumour", "lung") and report.task == "semantic"
    assert len(report.written) == 4
    tf = TrainingFolder.open(tmp_path / "tf")
    by_file = {}
    for rec in tf.samples():
        sample = tf.read_sample(rec)
        imp = sample.meta["extra"]["import"]
        vol, info, want = expected[imp["patient"]]
        np.testing.assert_array_equal(sample.labels, want)            # GTV painted over the lung
        np.testing.assert_array_equal(sample.image, np.asarray(vol))  # the CT in HU
        assert sample.meta["spacing"] == pytest.approx(list(info.spacing))
        np.testing.assert_allclose(sample.meta["extra"]["geometry"]["affine"], info.affine, atol=1e-5)
        assert sample.reviewed.all()
        by_file[imp["structure_file"]] = (imp["patient"], rec.split)
    assert {f.split("/")[-1] for f in by_file} == {"rs.dcm", "reader2.dcm", "seg.dcm"}
    splits_001 = {s for p, s in by_file.values() if p == "LUNG1-001"}
    assert len(splits_001) == 1                                        # one patient, one split

    again = import_dicom_contours(src, tmp_path / "tf", classes={"GTV": "tumour", "Lung": "lung"}, val_fraction=0.5)
    assert again.written == [] and len(again.skipped) == 4


def test_default_classes_are_the_names_in_every_file_and_patients_lacking_one_are_skipped(tmp_path):
    src = tmp_path / "src"
    for k, pid in enumerate(["P1", "P2"]):
        vol, info, lung, gtv = _patient(src, pid, seed=k)
        _rtstruct(src, pid, info, lung, gtv, extra_roi=(k == 1))
    report = import_dicom_contours(src, tmp_path / "tf")
    assert report.classes == ("background", "Lung", "GTV")
    assert any("Cord" in n and "left out" in n for n in report.notices)
    assert len(report.written) == 2

    report = import_dicom_contours(src, tmp_path / "tf2", rois=["cord", "gtv"])
    assert report.classes == ("background", "cord", "gtv") and len(report.written) == 1
    assert any("P1" in n and "lacks cord" in n for n in report.notices)


def test_folders_without_pairs_are_refused(tmp_path):
    write_series(tmp_path / "only_ct", 3)
    with pytest.raises(ImportLayoutError, match="no RTSTRUCT or DICOM-SEG"):
        import_dicom_contours(tmp_path / "only_ct", tmp_path / "tf")
    vol, info, lung, gtv = _patient(tmp_path / "a", "P1")
    rs = _rtstruct(tmp_path / "a", "P1", info, lung, gtv)
    (tmp_path / "b").mkdir()
    rs.rename(tmp_path / "b" / "rs.dcm")                      # the structure without its series
    with pytest.raises(ImportLayoutError, match="has its image series"):
        import_dicom_contours(tmp_path / "b", tmp_path / "tf")
    with pytest.raises(ImportLayoutError, match="not a folder"):
        import_dicom_contours(tmp_path / "nothing", tmp_path / "tf")
    assert not (tmp_path / "tf").exists()
