"""Finishing a hand-drawn nuclei recipe (``python -m segloop_train.recipes he-nuclei-unet ...``): the
shipped float16 weights are scored per source before ``--out`` is written, once; reruns never
meet a half-written package or a training run of other settings.

Real training folder (BBBC007 crops, threshold labels) and a tiny real package; the recipe is
the bundled one with its sources narrowed to that folder."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from skimage.measure import label

from segloop.core.formats.package import save_package
from segloop.core.formats.trainfolder import TrainingFolder
from segloop_train import recipes
from segloop_train.handdrawn import HAND_RECIPES, finish_model

from .conftest import tiny_spec, tiny_state


@pytest.fixture
def trained(tmp_path, nuclei_image):
    """A work folder with one imported source ("cpm15": test split) and a 'trained' raw package."""
    work = tmp_path / "work"
    tf = TrainingFolder.create(work / "cpm15", classes=("background", "nucleus"), task="instance",
                               modality="fluorescence")
    for i, split in enumerate(("train", "test", "test")):
        img = np.ascontiguousarray(np.rot90(nuclei_image, i))[:128, :128]
        tf.add_sample(img, label(img > np.percentile(img, 80)).astype(np.uint16), axes="YX",
                      source=f"crop{i}.tif", split=split)
    spec = tiny_spec(name="he-nuclei-unet", training={"steps_done": 7, "seconds": 60})
    save_package(tmp_path / "m.raw", spec, tiny_state(spec))
    recipe = replace(HAND_RECIPES["he-nuclei-unet"], train_sources=("cpm15",), heldout_sources=(), steps=200)
    return tmp_path, work, recipe


def test_the_finished_package_is_scored_then_written_once(trained):
    root, work, recipe = trained
    out = root / "m"
    scores = finish_model(recipe, root / "m.raw", out, sources=root / "src", work=work, command="cmd")
    assert scores["cpm15"]["images"] == 2 and scores["cpm15"]["splits"] == ["test"]
    meta = json.loads((out / "segloop-model.json").read_text())
    assert meta["training"]["heldout"] == scores and meta["license"] == recipe.license
    assert meta["training"]["postprocess_tuning"].startswith("not tuned")     # the source has no val images
    card = (out / "MODEL_CARD.md").read_text()
    assert "- 7 training steps" in card                     # what was trained, not the recipe's default 200
    assert [p.name for p in root.iterdir() if p.name.startswith(".m-")] == []   # the scoring copy is gone
    before = (out / "segloop-model.json").read_bytes()
    with pytest.raises(FileExistsError, match="exists"):
        finish_model(recipe, root / "m.raw", out, sources=root / "src", work=work, command="cmd")
    assert (out / "segloop-model.json").read_bytes() == before


def test_the_post_processing_is_tuned_on_the_training_sources_val_images_before_scoring(trained, nuclei_image):
    root, work, recipe = trained
    img = np.ascontiguousarray(nuclei_image[-128:, -128:])
    TrainingFolder.open(work / "cpm15").add_sample(img, label(img > np.percentile(img, 80)).astype(np.uint16),
                                                   axes="YX", source="crop-val.tif", split="val")
    scores = finish_model(recipe, root / "m.raw", root / "m", sources=root / "src", work=work, command="cmd")
    meta = json.loads((root / "m" / "segloop-model.json").read_text())
    rec = meta["training"]["postprocess_tuning"]
    assert meta["postprocess"] == rec["params"] and set(rec["after"]["sources"]) == {"cpm15"}
    assert rec["after"]["objective"] >= rec["before"]["objective"]
    assert scores["cpm15"]["splits"] == ["test"]                           # tuned on val, scored on test
    assert "## Post-processing (tuned on validation images)" in (root / "m" / "MODEL_CARD.md").read_text()


def test_a_model_without_a_pixel_size_keeps_a_small_minimum_object_size(trained, nuclei_image):
    """Nuclei of every scale reach it: its tuning never tries dropping objects over 48 px."""
    root, work, recipe = trained
    img = np.ascontiguousarray(nuclei_image[-128:, -128:])
    TrainingFolder.open(work / "cpm15").add_sample(img, label(img > np.percentile(img, 80)).astype(np.uint16),
                                                   axes="YX", source="crop-val.tif", split="val")
    grids = {}
    for px, out in ((None, "free"), (0.25, "fixed")):
        finish_model(replace(recipe, pixel_size=px), root / "m.raw", root / out, sources=root / "src", work=work,
                     command="cmd")
        rec = json.loads((root / out / "segloop-model.json").read_text())["training"]["postprocess_tuning"]
        grids[out] = rec["grid"]["min_size"]
    assert max(grids["free"]) == 48 and max(grids["fixed"]) > 48


def test_a_failed_scoring_leaves_no_package(trained):
    root, work, recipe = trained
    for image in (work / "cpm15").rglob("image.tif"):
        image.write_bytes(image.read_bytes()[:200])                      # truncated: reading them fails
    with pytest.raises(Exception):  # noqa: B017 (whichever error the folder gives; what matters is below)
        finish_model(recipe, root / "m.raw", root / "m", sources=root / "src", work=work, command="cmd")
    assert sorted(p.name for p in root.iterdir()) == ["m.raw", "work"]


def test_the_recipe_command_refuses_an_existing_out_and_a_raw_run_of_other_steps(trained, capsys):
    root, work, _ = trained
    (root / "done").mkdir()
    with pytest.raises(SystemExit, match="done exists"):
        recipes.main(["he-nuclei-unet", "--out", str(root / "done"), "--work", str(work)])
    default = HAND_RECIPES["he-nuclei-unet"].steps
    with pytest.raises(SystemExit, match=rf"m.raw holds a run of 7 steps, not {default}; .*--steps 7"):
        recipes.main(["he-nuclei-unet", "--out", str(root / "m"), "--work", str(work)])
    assert not (root / "m").exists()
