"""The radiology seed recipe end to end on a tiny BraTS-like copy (2 training steps): import by patient,
resampling to the recipe's spacing, training without the test patients, and a package whose card and
record give per-class Dice / HD95 / volume error on the test patients at their own spacing."""

import json

import numpy as np
import pytest

from segloop.core.formats.package import read_spec
from segloop.core.formats.trainfolder import TrainingFolder

from .test_radiology_import import _brats_copy

pytest.importorskip("nibabel")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from segloop_train.radiology_recipes import build_radiology_model

    root = tmp_path_factory.mktemp("rad")
    sources = root / "sources"
    sources.mkdir()
    (sources / "brats2013").symlink_to(_brats_copy(root / "copies"), target_is_directory=True)
    out = root / "pkg" / "mri-brain-tumour-segunet25d"
    res = build_radiology_model("mri-brain-tumour-segunet25d", out, sources=sources, work=root / "work", threads=1,
                                steps=2)
    return root, out, res


def test_the_test_patients_are_scored_never_trained_on(built):
    root, out, res = built
    train = TrainingFolder.open(root / "work" / "train")
    assert {r.split for r in train.samples()} == {"train", "val"}                    # resampled copy: no test
    assert all(r.meta["spacing"] == [1.0, 1.0, 1.0] for r in train.samples())      # at the recipe's spacing
    data = TrainingFolder.open(root / "work" / "data")
    tests = {r.sample_id for r in data.samples("test")}
    assert tests == {"brats2013-brats_2013_pat0001_1", "brats2013-brats_2013_pat0002_1"}
    assert set(res["test"]["cases"]) == tests
    for scores in res["test"]["cases"].values():
        assert {"necrosis", "edema", "non-enhancing", "enhancing", "whole tumour", "tumour core"} <= set(scores)
        assert {"dice", "hd95_mm", "volume_ml", "reference_ml", "volume_error_ml"} <= set(scores["edema"])
        # the reference volume is measured at the patient's own spacing (1.5 x 1.2 x 1.0 mm, 36 voxels)
        assert scores["edema"]["reference_ml"] == pytest.approx(35 * 1.8 / 1000, rel=1e-6)


def test_the_package_records_spacing_data_licence_and_card(built):
    _, out, _ = built
    spec = read_spec(out)
    assert tuple(spec.spacing) == (1.0, 1.0, 1.0) and spec.modality == "MR" and spec.in_channels == 6
    t = spec.training
    assert t["datasets"] == ["brats2013"] and t["labels"] == "hand-drawn"
    assert t["headline"].startswith("Dice whole tumour") and "(2 test patients)" in t["headline"]
    assert set(t["test_metrics"]["mean"]) >= {"whole tumour", "enhancing"}
    assert "CC BY-NC-SA" in spec.license
    card = (out / "MODEL_CARD.md").read_text()
    assert "Held-out test patients" in card and "brats2013-brats_2013_pat0001_1" in card
    assert "All labels were drawn by people." in card and "HD95" in card
    assert "Same source as training" in card and "not** cross-dataset" in card     # how independent the test is
    json.dumps(t)                                                                  # the record stays JSON


def test_list_models_shows_the_recipes_headline(built, monkeypatch, capsys):
    from segloop.cli import main

    _, out, _ = built
    monkeypatch.setenv("SEGLOOP_MODEL_PATH", str(out.parent))
    assert main(["list-models"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("mri-brain-tumour-segunet25d "))
    assert "Dice whole tumour" in line and "MR" in line


def test_a_package_is_never_overwritten(built):
    from segloop_train.radiology_recipes import build_radiology_model

    root, out, _ = built
    with pytest.raises(FileExistsError):
        build_radiology_model("mri-brain-tumour-segunet25d", out, sources=root / "sources", work=root / "work",
                              steps=1)


def test_resample_folder_refuses_a_volume_without_spacing(tmp_path):
    from segloop.errors import TrainingFolderError
    from segloop_train.radiology_recipes import resample_folder

    tf = TrainingFolder.create(tmp_path / "f", classes=("background", "x"), task="semantic", modality="CT")
    vol = np.zeros((4, 8, 8), np.int16)
    tf.add_sample(vol, (vol > 0).astype(np.uint8), axes="ZYX", split="train", source="v")
    with pytest.raises(TrainingFolderError, match="no voxel spacing"):
        resample_folder(tmp_path / "f", tmp_path / "g", (1.0, 1.0, 1.0))
