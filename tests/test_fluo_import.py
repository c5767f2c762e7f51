"""``segloop import bbbc039|s-bsst265|aitslab-bioimaging1``: tiny copies laid out as the public
repositories are become single-channel fluorescence instance samples with provenance, the
sources' own splits, and never the BBBC039 fields that are DSB2018 evaluation images."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import scipy.io
import tifffile

from segloop.core.formats.importers import NUCLEI_DATASETS, import_data, import_nuclei_dataset
from segloop.core.formats.importers.fluo_sets import (
    AITSLAB_SPLIT,
    BBBC039_DSB2018_FIELDS,
    BBBC039_SPLIT,
    read_bbbc039_mask,
    read_hovernet_inst_map,
    separate_objects,
)
from segloop.core.formats.trainfolder import TrainingFolder
from segloop.errors import ImageReadError, ImportLayoutError, ImportSourceError

H, W = 40, 48
FLUO = ("bbbc039", "s-bsst265", "aitslab-bioimaging1")


def _disc(cy: int, cx: int, r: int = 5) -> np.ndarray:
    yy, xx = np.mgrid[:H, :W]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _two_touching_ids() -> np.ndarray:
    """Two nuclei that touch (ids 1 and 2)."""
    ids = np.zeros((H, W), np.uint16)
    ids[_disc(20, 14)] = 1
    ids[_disc(20, 24) & (ids == 0)] = 2
    return ids


def _grey(dtype=np.uint8, scale: int = 200) -> np.ndarray:
    img = np.full((H, W), 10, np.float64)
    img[_two_touching_ids() > 0] = scale
    return img.astype(dtype)


# --------------------------------------------------------------------------- copies in each repository's layout

BBBC_TRAIN = [n for n in BBBC039_SPLIT["train"] if n not in BBBC039_DSB2018_FIELDS][:2]
BBBC_VAL = [n for n in BBBC039_SPLIT["val"] if n not in BBBC039_DSB2018_FIELDS][:1]
BBBC_TEST = [n for n in BBBC039_SPLIT["test"] if n not in BBBC039_DSB2018_FIELDS][:1]
BBBC_RESERVED = BBBC039_DSB2018_FIELDS[0]
BBBC_EMPTY = "IXMtest_F13_s7_w13C1B1D8C-293E-454F-B0FD-6C2C3F9F5173"     # in none of the split lists


def make_bbbc039(root: Path) -> Path:
    base = root / "cell nuclei"
    (base / "images").mkdir(parents=True)
    (base / "masks").mkdir()
    for name in [*BBBC_TRAIN, *BBBC_VAL, *BBBC_TEST, BBBC_RESERVED, BBBC_EMPTY]:
        tifffile.imwrite(base / "images" / f"{name}.tif", _grey(np.uint16, 3000))
        rgba = np.zeros((H, W, 4), np.uint8)
        rgba[..., 0] = _two_touching_ids()          # colours 1 and 2: touching nuclei differ
        rgba[..., 3] = 255
        iio.imwrite(base / "masks" / f"{name}.png", rgba)
    return root


KROMP_CSV = ("Image_Name;Diagnosis;Preparation;Train-/Testset split;Testset class;Magnification;Modality\n"
             "normal_0;normal;cytospin;train;-;63x;FM\n"
             "normal_1;normal;cytospin;train;-;63x;FM\n"
             "Ganglioneuroblastoma_0;Ganglioneuroblastoma;tissue section;train;-;20x;FM\n"
             "otherspecimen_3;Wilms\u00b4 tumor;tissue section;test;TS;10x;FM\n")


def _reused_ids() -> np.ndarray:
    """As S-BSST265's otherspecimen_3: id 1 marks two separate nuclei; id 2 has a 2-px speck apart."""
    ids = np.zeros((H, W), np.uint16)
    ids[_disc(10, 10)] = 1
    ids[_disc(28, 36)] = 1
    ids[_disc(28, 12)] = 2
    ids[2, 40:42] = 2
    return ids


def make_kromp(root: Path) -> Path:
    base = root / "cell_nuclei_segmentation" / "dataset"
    (base / "rawimages").mkdir(parents=True)
    (base / "groundtruth").mkdir()
    (base / "image_description.csv").write_bytes(KROMP_CSV.encode("latin-1"))
    for name in ("normal_0", "normal_1", "otherspecimen_3"):
        tifffile.imwrite(base / "rawimages" / f"{name}.tif", _grey())
    rgb = np.repeat(_grey()[..., None], 3, -1)                                   # RGB, identical channels
    rgb[0, 0] = (7, 7, 7)
    tifffile.imwrite(base / "rawimages" / "Ganglioneuroblastoma_0.tif", rgb, photometric="rgb")
    for name in ("normal_0", "normal_1", "Ganglioneuroblastoma_0"):
        tifffile.imwrite(base / "groundtruth" / f"{name}.tif", _two_touching_ids())
    tifffile.imwrite(base / "groundtruth" / "otherspecimen_3.tif", _reused_ids())
    return root


AIT_DIR = "marisa_leo_dir/project_code/hover_net_versions/hover_net_pytorch/dataset"
AIT_NAMES = {"train": list(AITSLAB_SPLIT["train"][:2]), "val": [AITSLAB_SPLIT["val"][0]],
             "test": [AITSLAB_SPLIT["test"][0]]}


def make_aitslab(root: Path) -> Path:
    base = root / AIT_DIR
    (base / "normalized_nuclei").mkdir(parents=True)
    (base / "annotation_nuclei").mkdir()
    for names in AIT_NAMES.values():
        for name in names:
            iio.imwrite(base / "normalized_nuclei" / f"{name}.png", np.repeat(_grey()[..., None], 3, -1))
            scipy.io.savemat(base / "annotation_nuclei" / f"{name}.mat",
                             {"inst_map": _two_touching_ids().astype(np.float64),
                              "inst_centroid": np.array([[14.0, 20.0], [24.0, 20.0]])})
    return root


MAKERS = {"bbbc039": make_bbbc039, "s-bsst265": make_kromp, "aitslab-bioimaging1": make_aitslab}


# --------------------------------------------------------------------------- samples and provenance


@pytest.mark.parametrize("name", FLUO)
def test_import_writes_fluorescence_samples_with_provenance(tmp_path, name):
    src = MAKERS[name](tmp_path / "copy")
    rep = import_data(name, tmp_path / "folder", path=src)
    tf = TrainingFolder.open(tmp_path / "folder")
    assert tf.info.modality == "fluorescence" and tf.info.task == "instance"
    assert tf.info.classes == ("background", "nucleus")
    recs = tf.samples()
    assert len(recs) == len(rep.written) > 0
    for rec in recs:
        s = tf.read_sample(rec)
        assert np.asarray(s.image).ndim == 2                 # one channel
        assert np.asarray(s.image).dtype == (np.uint16 if name == "bbbc039" else np.uint8)
        assert rec.meta["spacing"] is None                  # no dataset states its pixel size
        imp = rec.meta["extra"]["import"]
        assert imp["importer"] == name and imp["licence"] == NUCLEI_DATASETS[name].licence
        assert imp["distribution"] == "github:" + NUCLEI_DATASETS[name].repository
        assert imp["version"] == NUCLEI_DATASETS[name].commit and imp["may_ship_weights"] is True
        assert rec.meta["source_sha256"] and Path(rec.meta["source"]).is_file()
        if imp["image_file"] != "otherspecimen_3.tif":
            assert imp["objects"] == 2
            np.testing.assert_array_equal(np.asarray(s.labels), _two_touching_ids())   # touching nuclei kept apart
    notice = (tmp_path / "folder" / "DATA-SOURCES.md").read_text()
    assert NUCLEI_DATASETS[name].repository in notice and NUCLEI_DATASETS[name].licence in notice
    rep2 = import_nuclei_dataset(name, src, tmp_path / "folder")       # a second run skips everything
    assert rep2.written == [] and len(rep2.skipped) == len(recs)


def test_bbbc039_uint16_kept_exactly(tmp_path):
    src = make_bbbc039(tmp_path / "copy")
    import_nuclei_dataset("bbbc039", src, tmp_path / "f")
    tf = TrainingFolder.open(tmp_path / "f")
    img = np.asarray(tf.read_sample(tf.samples()[0]).image)
    np.testing.assert_array_equal(img, _grey(np.uint16, 3000))       # 12-bit values, not rescaled


# --------------------------------------------------------------------------- splits


def test_bbbc039_keeps_the_recorded_split_and_never_imports_dsb2018_fields(tmp_path):
    src = make_bbbc039(tmp_path / "copy")
    rep = import_nuclei_dataset("bbbc039", src, tmp_path / "f")
    assert rep.split_counts == {"train": 2, "val": 1, "test": 1}
    for name in BBBC_TRAIN:
        assert rep.splits[f"bbbc039-{name}".lower()] == "train"
    files = {r.meta["extra"]["import"]["image_file"] for r in TrainingFolder.open(tmp_path / "f").samples()}
    assert f"{BBBC_RESERVED}.tif" not in files and f"{BBBC_EMPTY}.tif" not in files
    assert any("1 field(s)" in n and "DSB2018" in n and "reserved for evaluation" in n for n in rep.notices)
    assert any(BBBC_EMPTY in n for n in rep.notices)


def test_bbbc039_from_the_dataset_folder_excludes_dsb2018_fields_too(tmp_path):
    src = make_bbbc039(tmp_path / "copy")
    rep = import_nuclei_dataset("bbbc039", src / "cell nuclei", tmp_path / "f")
    assert len(rep.written) == 4
    assert all(BBBC_RESERVED.lower() not in sid for sid in rep.written)


def test_recorded_bbbc039_lists_match_the_source_counts():
    """CRank lists 100 / 50 / 48 fields; 43 DSB2018 fields leave 82 / 33 / 40 (docs/data.md)."""
    assert {k: len(v) for k, v in BBBC039_SPLIT.items()} == {"train": 100, "val": 50, "test": 48}
    names = [n for v in BBBC039_SPLIT.values() for n in v]
    assert len(set(names)) == 198 and len(set(BBBC039_DSB2018_FIELDS)) == 43
    assert set(BBBC039_DSB2018_FIELDS) <= set(names)
    kept = {k: len(set(v) - set(BBBC039_DSB2018_FIELDS)) for k, v in BBBC039_SPLIT.items()}
    assert kept == {"train": 82, "val": 33, "test": 40}
    assert {k: len(v) for k, v in AITSLAB_SPLIT.items()} == {"train": 30, "val": 10, "test": 10}
    assert len({n for v in AITSLAB_SPLIT.values() for n in v}) == 50


def test_kromp_test_set_from_the_csv_and_val_only_from_its_training_set(tmp_path):
    src = make_kromp(tmp_path / "copy")
    rep = import_nuclei_dataset("s-bsst265", src, tmp_path / "f", val_fraction=0.5)
    assert rep.splits["s-bsst265-otherspecimen_3"] == "test"
    others = {rep.splits[s] for s in ("s-bsst265-normal_0", "s-bsst265-normal_1", "s-bsst265-ganglioneuroblastoma_0")}
    assert "test" not in others and "val" in others


def test_aitslab_keeps_the_authors_split(tmp_path):
    src = make_aitslab(tmp_path / "copy")
    rep = import_nuclei_dataset("aitslab-bioimaging1", src, tmp_path / "f")
    assert rep.split_counts == {"train": 2, "val": 1, "test": 1}
    assert rep.splits[f"aitslab-bioimaging1-{AIT_NAMES['val'][0]}".lower()] == "val"


# --------------------------------------------------------------------------- S-BSST265 specifics


def test_kromp_rgb_with_identical_channels_becomes_one_channel(tmp_path):
    src = make_kromp(tmp_path / "copy")
    import_nuclei_dataset("s-bsst265", src, tmp_path / "f")
    tf = TrainingFolder.open(tmp_path / "f")
    rec = next(r for r in tf.samples() if r.meta["extra"]["import"]["image_file"] == "Ganglioneuroblastoma_0.tif")
    img = np.asarray(tf.read_sample(rec).image)
    expected = _grey()
    expected[0, 0] = 7
    np.testing.assert_array_equal(img, expected)


def test_kromp_reused_ids_become_separate_objects_and_specks_go(tmp_path):
    src = make_kromp(tmp_path / "copy")
    rep = import_nuclei_dataset("s-bsst265", src, tmp_path / "f")
    tf = TrainingFolder.open(tmp_path / "f")
    rec = next(r for r in tf.samples() if r.meta["extra"]["import"]["image_file"] == "otherspecimen_3.tif")
    lab = np.asarray(tf.read_sample(rec).labels)
    assert rec.meta["extra"]["import"]["objects"] == 3
    assert lab[10, 10] != lab[28, 36] and lab[10, 10] > 0 and lab[28, 36] > 0    # id 1's two nuclei split
    assert lab[2, 40] == 0                                                        # the 2-px speck dropped
    kept = _reused_ids() > 0
    kept[2, 40:42] = False
    np.testing.assert_array_equal(lab > 0, kept)
    msgs = [n for n in rep.notices if "otherspecimen_3" in n]
    assert len(msgs) == 1 and "1 id(s)" in msgs[0] and "1 speck(s)" in msgs[0]


def test_bbbc039_colour_used_again_for_a_distant_nucleus_is_another_object(tmp_path):
    rgba = np.zeros((H, W, 4), np.uint8)
    rgba[..., 0] = _two_touching_ids()
    rgba[_disc(6, 40, 3), 0] = 1                    # colour 1 again, far from the first nucleus
    iio.imwrite(tmp_path / "m.png", rgba)
    out = read_bbbc039_mask(tmp_path / "m.png")
    assert out.max() == 3 and out[20, 14] != out[6, 40] and out[20, 14] != out[20, 24]


def test_separate_objects_keeps_touching_ids_apart():
    out, reused, specks = separate_objects(_two_touching_ids())
    np.testing.assert_array_equal(out, _two_touching_ids())
    assert (reused, specks) == (0, 0)


def test_colour_image_is_refused(tmp_path):
    src = make_kromp(tmp_path / "copy")
    p = src / "cell_nuclei_segmentation/dataset/rawimages/Ganglioneuroblastoma_0.tif"
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[..., 0] = 200
    tifffile.imwrite(p, rgb, photometric="rgb")
    with pytest.raises(ImportLayoutError, match="colour image") as ei:
        import_nuclei_dataset("s-bsst265", src, tmp_path / "f")
    assert str(p) in str(ei.value) and not (tmp_path / "f").exists()


# --------------------------------------------------------------------------- bad input: nothing written


def _corrupt(pattern: str):
    def damage(src: Path) -> Path:
        p = sorted(src.rglob(pattern))[-1]
        p.write_bytes(p.read_bytes()[:40])
        return p
    return damage


def _resize(pattern: str, write):
    def damage(src: Path) -> Path:
        p = sorted(src.rglob(pattern))[-1]
        write(p)
        return p
    return damage


def _add_kromp_image(src: Path, name: str) -> None:
    base = src / "cell_nuclei_segmentation" / "dataset"
    tifffile.imwrite(base / "rawimages" / f"{name}.tif", _grey())
    tifffile.imwrite(base / "groundtruth" / f"{name}.tif", _two_touching_ids())


BAD = {
    "bbbc039 corrupt image": ("bbbc039", _corrupt(f"images/{BBBC_TRAIN[0]}.tif"), ImageReadError, "cannot read"),
    "bbbc039 corrupt mask": ("bbbc039", _corrupt(f"masks/{BBBC_TEST[0]}.png"), ImageReadError, "cannot read"),
    "bbbc039 mask of another size": ("bbbc039", _resize(f"masks/{BBBC_VAL[0]}.png", lambda p: iio.imwrite(
        p, np.zeros((10, 12, 4), np.uint8))), ImportLayoutError, "do not match"),
    "bbbc039 missing mask": ("bbbc039", lambda s: next(s.rglob(f"masks/{BBBC_TRAIN[1]}.png")).unlink(),
                             ImportLayoutError, "no mask"),
    "kromp mask of another size": ("s-bsst265", _resize("groundtruth/*.tif", lambda p: tifffile.imwrite(
        p, np.zeros((10, 12), np.uint16))), ImportLayoutError, "do not match"),
    "kromp float mask": ("s-bsst265", _resize("groundtruth/*.tif", lambda p: tifffile.imwrite(
        p, np.zeros((H, W), np.float32))), ImportLayoutError, "integer instance mask"),
    "kromp corrupt image": ("s-bsst265", _corrupt("rawimages/*.tif"), ImageReadError, "cannot read"),
    "kromp missing csv": ("s-bsst265", lambda s: next(s.rglob("image_description.csv")).unlink(),
                          ImportLayoutError, "image_description.csv"),
    "kromp image not in csv": ("s-bsst265", lambda s: _add_kromp_image(s, "extra_9"), ImportLayoutError,
                               "not listed"),
    "kromp bad split value": ("s-bsst265", lambda s: next(s.rglob("image_description.csv")).write_bytes(
        KROMP_CSV.replace(";test;", ";holdout;").encode("latin-1")), ImportLayoutError, "'train' or 'test'"),
    "aitslab corrupt mat": ("aitslab-bioimaging1", _corrupt("*.mat"), ImageReadError, "MATLAB"),
    "aitslab mat without inst_map": ("aitslab-bioimaging1", _resize("*.mat", lambda p: scipy.io.savemat(
        p, {"type_map": _two_touching_ids()})), ImportLayoutError, "inst_map"),
    "aitslab fractional ids": ("aitslab-bioimaging1", _resize("*.mat", lambda p: scipy.io.savemat(
        p, {"inst_map": _two_touching_ids() * 0.5})), ImportLayoutError, "not integer"),
    "aitslab 3D inst_map": ("aitslab-bioimaging1", _resize("*.mat", lambda p: scipy.io.savemat(
        p, {"inst_map": np.zeros((2, H, W))})), ImportLayoutError, "2D"),
    "aitslab map of another size": ("aitslab-bioimaging1", _resize("*.mat", lambda p: scipy.io.savemat(
        p, {"inst_map": np.zeros((10, 12))})), ImportLayoutError, "do not match"),
    "aitslab missing mat": ("aitslab-bioimaging1", lambda s: sorted(s.rglob("*.mat"))[0].unlink(),
                            ImportLayoutError, "no instance map"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_a_typed_error_naming_the_file_and_writes_nothing(tmp_path, case):
    name, damage, err, words = BAD[case]
    src = MAKERS[name](tmp_path / "copy")
    damage(src)
    with pytest.raises(err, match=words) as ei:
        import_nuclei_dataset(name, src, tmp_path / "f")
    assert str(tmp_path / "copy") in str(ei.value)
    assert not (tmp_path / "f").exists()


@pytest.mark.parametrize("name", FLUO)
def test_not_the_dataset_says_how_to_get_it(tmp_path, name):
    other = MAKERS[next(n for n in FLUO if n != name)](tmp_path / "other")      # another dataset's copy
    with pytest.raises(ImportSourceError, match="git clone"):
        import_nuclei_dataset(name, other, tmp_path / "f")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImportSourceError, match="git clone"):
        import_nuclei_dataset(name, tmp_path / "empty", tmp_path / "f")
    assert not (tmp_path / "f").exists()


def test_hovernet_reader_takes_integer_doubles(tmp_path):
    p = tmp_path / "a.mat"
    scipy.io.savemat(p, {"inst_map": np.array([[0.0, 1.0], [70000.0, 2.0]])})
    out = read_hovernet_inst_map(p)
    assert out.dtype == np.uint32 and out.tolist() == [[0, 1], [70000, 2]]


def test_cli_imports_and_refuses_in_one_line(tmp_path):
    src = make_bbbc039(tmp_path / "copy")
    ok = subprocess.run([sys.executable, "-m", "segloop.cli", "import", "bbbc039", "--from", str(src), "--folder",
                         str(tmp_path / "f")], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "bbbc039: 4 sample(s) written" in ok.stdout and "reserved for evaluation" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "segloop.cli", "import", "aitslab-bioimaging1", "--from", str(src),
                          "--folder", str(tmp_path / "g")], capture_output=True, text=True)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr
    assert "git clone" in bad.stderr and not (tmp_path / "g").exists()
