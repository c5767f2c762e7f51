"""The export -> fine-tune hand-off as the README runs it: predict, export, segloop-train --from.

A folder made from a model's labels records that model's classes, so fine-tuning that model
from it needs no extra flag; classes given for an existing folder that differ are refused
with the reason, never silently kept.
"""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from segloop.cli import main
from segloop.core.formats.trainfolder import TrainingFolder, classes_from_model, open_for_export
from segloop.errors import TrainingFolderError
from segloop_train.cli import main as train_main

DATA = Path(__file__).parents[1] / "src" / "segloop" / "data"
IMAGE = DATA / "bbbc007_A9_p10d.tif"


def _tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_predict_export_then_finetune_the_same_model_needs_no_flag(tmp_path, capsys):
    res, folder = tmp_path / "results", tmp_path / "corrections"
    assert main(["predict", str(IMAGE), "--model", "nuclei-unet", "--out", str(res)]) == 0
    labels = res / "bbbc007_A9_p10d_labels.tif"
    assert main(["export", "--image", str(IMAGE), "--labels", str(labels), "--folder", str(folder)]) == 0
    info = TrainingFolder.open(folder).info
    # nuclei-unet's classes are background, nucleus, boundary: the labels hold nuclei, never the boundary
    assert info.classes == ("background", "nucleus") and info.task == "instance"
    assert info.modality == "fluorescence"
    capsys.readouterr()
    out = tmp_path / "models" / "nuclei-unet-v1.1"
    code = train_main([str(folder), "--from", "nuclei-unet", "--out", str(out), "--steps", "1", "--batch", "2",
                       "--patch", "64", "--no-onnx"])
    assert code == 0, capsys.readouterr().err
    spec = json.loads((out / "segloop-model.json").read_text())
    assert spec["classes"] == ["background", "nucleus", "boundary"] and spec["training"]["class_mapping"] is None


def test_a_default_object_folder_fine_tunes_a_nucleus_model_through_a_recorded_mapping(tmp_path, capsys):
    # labels drawn elsewhere carry no provenance: the folder gets background, object
    folder = tmp_path / "corrections"
    assert main(["export", "--image", str(IMAGE), "--labels", str(DATA / "bbbc007_A9_p10d_labels.tif"),
                 "--folder", str(folder)]) == 0
    assert TrainingFolder.open(folder).info.classes == ("background", "object")
    capsys.readouterr()
    out = tmp_path / "m"
    assert train_main([str(folder), "--from", "nuclei-unet", "--out", str(out), "--steps", "1", "--batch", "2",
                       "--patch", "64", "--no-onnx"]) == 0
    assert "'object' is read as nuclei-unet's 'nucleus'" in capsys.readouterr().err
    spec = json.loads((out / "segloop-model.json").read_text())
    assert spec["training"]["class_mapping"] == {"object": "nucleus"}


def test_classes_that_differ_from_an_existing_folder_are_refused_with_replace_too(tmp_path, capsys):
    folder = tmp_path / "corrections"
    lab = str(DATA / "bbbc007_A9_p10d_labels.tif")
    base = ["export", "--image", str(IMAGE), "--labels", lab, "--folder", str(folder), "--id", "a"]
    assert main(base) == 0
    before = _tree_digest(folder)
    capsys.readouterr()
    for extra in (["--classes", "background,nucleus", "--replace"], ["--task", "semantic"]):
        assert main(base + extra) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and err.startswith("segloop: error:")
        assert "keeps one class list" in err and ("--classes" in err or "--task" in err)
        assert _tree_digest(folder) == before                      # nothing written
    # the folder's own classes, given or left out, are fine; --replace replaces the sample
    assert main(base + ["--classes", "background,object", "--replace"]) == 0
    assert main(base + ["--replace"]) == 0
    assert TrainingFolder.open(folder).info.classes == ("background", "object")


def test_classes_from_model_drops_the_boundary_class_and_keeps_semantic_classes():
    unet = {"classes": ["background", "nucleus", "boundary"], "task": "instance"}
    assert classes_from_model(unet) == (("background", "nucleus"), "instance")
    assert classes_from_model(unet, {"boundary_class": 2}) == (("background", "nucleus"), "instance")
    ct = {"classes": ["background", "liver", "tumour"], "task": "semantic"}
    assert classes_from_model(ct) == (("background", "liver", "tumour"), "semantic")
    assert classes_from_model(None) is None and classes_from_model({"classes": ["x"], "task": "instance"}) is None


def test_open_for_export_creates_from_the_model_and_refuses_a_one_name_class_list(tmp_path):
    ct = {"classes": ["background", "liver", "tumour"], "task": "semantic", "modality": "CT"}
    tf = open_for_export(tmp_path / "ct", model=ct)
    assert (tf.info.classes, tf.info.task, tf.info.modality) == (("background", "liver", "tumour"), "semantic", "CT")
    # a model whose labels are now exported into it: the folder keeps its classes
    assert open_for_export(tmp_path / "ct", model={"classes": ["a", "b"], "task": "semantic"}).info == tf.info
    with pytest.raises(TrainingFolderError, match="needs a background and at least one class"):
        open_for_export(tmp_path / "new", classes=["nucleus"])
    assert not (tmp_path / "new").exists()


def test_labels_without_provenance_or_unreadable_are_not_an_error(tmp_path):
    from segloop.core.formats.io import read_labels_provenance

    p = tmp_path / "plain.tif"
    tifffile.imwrite(p, np.zeros((8, 8), np.uint16), description="made by ImageJ")
    assert read_labels_provenance(p) is None
    (tmp_path / "junk.tif").write_bytes(b"not a tiff")
    assert read_labels_provenance(tmp_path / "junk.tif") is None
