"""`segloop export / validate / convert` on real files, and the converters' layouts read back."""

import json

import numpy as np
import pytest
import tifffile

from segloop.cli import main
from segloop.core.formats.trainfolder import TrainingFolder


def _nuclei_pair(tmp_path, nuclei_image, name="nuclei tile ü.tif"):
    from skimage.measure import label

    img = tmp_path / name
    tifffile.imwrite(img, nuclei_image)
    lab = label(nuclei_image > np.percentile(nuclei_image, 80)).astype(np.uint16)
    lab_p = tmp_path / (name + ".labels.tif")
    tifffile.imwrite(lab_p, lab)
    return img, lab_p, lab


def test_export_validate_round_trip(tmp_path, nuclei_image, capsys):
    img, lab_p, lab = _nuclei_pair(tmp_path, nuclei_image)
    folder = tmp_path / "corr ections"
    assert main(["export", "--image", str(img), "--labels", str(lab_p), "--folder", str(folder),
                 "--classes", "background,nucleus", "--modality", "fluorescence"]) == 0
    out = capsys.readouterr()
    assert "held out" in out.err                     # one source image: a block is held out, and we say so
    tf = TrainingFolder.open(folder)
    recs = tf.samples()
    assert {r.split for r in recs} == {"train", "val"}
    train = tf.read_sample([r for r in recs if r.split == "train"][0])
    np.testing.assert_array_equal(train.image, nuclei_image)
    np.testing.assert_array_equal(train.labels, lab)
    assert train.reviewed.mean() < 1 and train.meta["source_sha256"]
    assert main(["validate", str(folder)]) == 0
    assert "OK" in capsys.readouterr().out


def test_export_with_reviewed_and_crop_then_tamper_is_named_by_validate(tmp_path, nuclei_image, capsys):
    img, lab_p, lab = _nuclei_pair(tmp_path, nuclei_image)
    rev = np.zeros(lab.shape, np.uint8)
    rev[:200, :300] = 1
    rev_p = tmp_path / "rev.tif"
    tifffile.imwrite(rev_p, rev)
    folder = tmp_path / "f"
    assert main(["export", "--image", str(img), "--labels", str(lab_p), "--reviewed", str(rev_p),
                 "--folder", str(folder), "--crop", "0:256,0:400", "--split", "train", "--id", "crop-a"]) == 0
    s = TrainingFolder.open(folder).read_sample("crop-a")
    assert s.labels.shape == (256, 400) and s.meta["crop"] == [[0, 256], [0, 400]]
    np.testing.assert_array_equal(s.reviewed, rev[:256, :400])
    # the same id again is refused; --replace replaces
    assert main(["export", "--image", str(img), "--labels", str(lab_p), "--folder", str(folder),
                 "--split", "train", "--id", "crop-a"]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["export", "--image", str(img), "--labels", str(lab_p), "--folder", str(folder),
                 "--split", "train", "--id", "crop-a", "--replace"]) == 0
    labels_tif = folder / "samples" / "crop-a" / "labels.tif"
    data = bytearray(labels_tif.read_bytes())
    data[-10] ^= 0xFF
    labels_tif.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["validate", str(folder)]) == 1
    assert "BAD crop-a" in capsys.readouterr().out


@pytest.mark.parametrize("bad", ["shape", "float"])
def test_export_refuses_bad_labels_with_one_line(tmp_path, nuclei_image, capsys, bad):
    img, lab_p, lab = _nuclei_pair(tmp_path, nuclei_image)
    tifffile.imwrite(lab_p, lab[:100] if bad == "shape" else lab.astype(np.float32) + 0.5)
    assert main(["export", "--image", str(img), "--labels", str(lab_p), "--folder", str(tmp_path / "f")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("segloop: error:")
    assert not (tmp_path / "f" / "samples").exists() or not any((tmp_path / "f" / "samples").iterdir())


def _folder_with_three_sources(tmp_path, nuclei_image):
    tf = TrainingFolder.create(tmp_path / "tf", classes=["background", "nucleus"], task="instance",
                               modality="fluorescence")
    from skimage.measure import label

    for i, split in enumerate(["train", "val", "test"]):
        img = np.ascontiguousarray(np.rot90(nuclei_image, i))[:256, :256]
        lab = label(img > np.percentile(img, 80)).astype(np.uint16)
        rev = np.ones_like(lab, np.uint8)
        if i == 0:
            rev[:, 200:] = 0                        # partly reviewed
        tf.add_sample(img, lab, rev, axes="YX", source=f"img{i}.tif", split=split)
    return tf


def test_convert_to_nnunet_reads_back_with_ignore_label(tmp_path, nuclei_image, capsys):
    tf = _folder_with_three_sources(tmp_path, nuclei_image)
    out = tmp_path / "nnunet_raw"
    for bad in ("-7", "0", "1000"):                       # nnU-Net ids are 1..999; nothing written
        assert main(["convert", str(tf.path), str(out), "--to", "nnunet", "--dataset-id", bad]) == 2
        assert "--dataset-id" in capsys.readouterr().err and not out.exists()
    assert main(["convert", str(tf.path), str(out), "--to", "nnunet", "--dataset-id", "7"]) == 0
    root = out / "Dataset007_tf"
    ds = json.loads((root / "dataset.json").read_text())
    assert ds["labels"] == {"background": 0, "nucleus": 1, "ignore": 2} and ds["numTraining"] == 2
    assert ds["channel_names"] == {"0": "channel0"} and ds["file_ending"] == ".tif"
    train_ids = sorted(p.name[:-len(".tif")] for p in (root / "labelsTr").iterdir())
    assert len(train_ids) == 2 and len(list((root / "imagesTs").iterdir())) == 1
    for case in train_ids:                      # every label has an image with the _0000 channel suffix
        img = tifffile.imread(root / "imagesTr" / f"{case}_0000.tif")
        lab = tifffile.imread(root / "labelsTr" / f"{case}.tif")
        assert img.shape == lab.shape and set(np.unique(lab)) <= {0, 1, 2}
    partly = [c for c in train_ids if (tifffile.imread(root / "labelsTr" / f"{c}.tif") == 2).any()]
    assert len(partly) == 1
    assert main(["convert", str(tf.path), str(out), "--to", "nnunet"]) == 2    # never into a full folder


def test_convert_to_cellpose_and_stardist_skip_partly_reviewed(tmp_path, nuclei_image):
    tf = _folder_with_three_sources(tmp_path, nuclei_image)
    from segloop.core.formats.convert import convert

    rep = convert(tf, tmp_path / "cp", to="cellpose")
    masks = sorted((tmp_path / "cp").rglob("*_masks.tif"))
    assert len(masks) == 3 and not rep.skipped            # sample 0's reviewed box [:, :200] is fully reviewed
    m = tifffile.imread(masks[0])
    im = tifffile.imread(str(masks[0]).replace("_masks", ""))
    assert m.shape == im.shape[:2] and m.max() > 5
    rep = convert(tf, tmp_path / "sd", to="stardist")
    assert sorted(p.parent.parent.name for p in (tmp_path / "sd").rglob("masks/*.tif")) == ["test", "train", "val"]
    # a sample whose reviewed pixels are not a full box is skipped and named
    tf2 = TrainingFolder.create(tmp_path / "tf2", classes=["background", "nucleus"], task="instance")
    rev = np.ones((64, 64), np.uint8)
    rev[10, 10] = 0
    tf2.add_sample(np.zeros((64, 64), np.uint8), np.ones((64, 64), np.uint16), rev, axes="YX", source="a",
                   split="train", sample_id="holey")
    rep = convert(tf2, tmp_path / "sd2", to="stardist")
    assert "holey" in rep.skipped and not rep.written


def test_validate_names_a_sample_deleted_by_hand_and_one_copied_in_and_fix_accepts_the_disk(tmp_path, capsys):
    import shutil

    tf = TrainingFolder.create(tmp_path / "f", classes=["background", "nucleus"], task="instance")
    for sid, split in (("keep", "train"), ("gone", "train"), ("check", "val")):
        tf.add_sample(np.zeros((32, 32), np.uint8), np.ones((32, 32), np.uint16), axes="YX", split=split,
                      sample_id=sid)
    assert main(["validate", str(tf.path)]) == 0
    capsys.readouterr()
    shutil.rmtree(tf.samples_dir / "gone")                      # deleted by hand: no longer "OK"
    assert main(["validate", str(tf.path)]) == 1
    out = capsys.readouterr().out
    assert "BAD gone: listed in the sample index" in out and "samples/gone is missing" in out
    assert out.strip().endswith("2 samples (test 0, train 1, val 1); 1 problem(s)")

    other = TrainingFolder.create(tmp_path / "other", classes=["background", "nucleus"], task="instance")
    other.add_sample(np.zeros((32, 32), np.uint8), np.ones((32, 32), np.uint16), axes="YX", split="train",
                     sample_id="stray")
    shutil.copytree(other.samples_dir / "stray", tf.samples_dir / "stray")
    assert main(["validate", "--no-hashes", str(tf.path)]) == 1
    out = capsys.readouterr().out
    assert "BAD stray: its folder is not in the sample index" in out and "BAD gone:" in out

    assert main(["validate", "--fix", str(tf.path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split(":")[1].strip() for line in out if line.startswith("fixed:")] == ["gone", "stray"]
    assert out[-1].endswith("3 samples (test 0, train 2, val 1); OK")


def test_validate_of_a_folder_from_before_the_index_is_ok_with_a_note(tmp_path, capsys):
    tf = TrainingFolder.create(tmp_path / "f", classes=["background", "nucleus"], task="instance")
    tf.add_sample(np.zeros((32, 32), np.uint8), np.ones((32, 32), np.uint16), axes="YX", split="train", sample_id="s")
    (tf.path / "segloop-samples.json").unlink()                 # as segloop wrote folders before the index
    info = json.loads((tf.path / "segloop-training.json").read_text())
    del info["sample_index"]
    (tf.path / "segloop-training.json").write_text(json.dumps(info))
    assert main(["validate", str(tf.path)]) == 0
    out = capsys.readouterr().out
    assert "note: no sample index (segloop-samples.json)" in out and "segloop validate --fix" in out
    assert main(["validate", "--fix", str(tf.path)]) == 0
    out = capsys.readouterr().out
    assert "fixed: the folder kept no sample index" in out and "note: no sample index" not in out
    assert (tf.path / "segloop-samples.json").is_file()
    (tf.path / "segloop-training.json").write_text("{}")        # --fix needs a training folder: one-line error
    assert main(["validate", "--fix", str(tf.path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("segloop: error:")
