"""Training interactive (click) models: ``segloop_train.interactive.train_interactive`` and
``segloop-train interactive``.

Real training folders written in ``tmp_path`` (grey fluorescence-like and RGB H&E-like disks, a
small semantic CT-like volume), tiny real networks trained for a few steps, packages loaded back
with ``segloop.load_interactive``.  The prompt simulation is checked on arrays built here."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import segloop
from segloop.core.formats.package import read_spec
from segloop.core.formats.prompt import PromptSpec
from segloop.core.formats.trainfolder import TrainingFolder
from segloop.core.inference.interactive import Prompt, Window, prompt_window
from segloop.errors import ModelPackageError
from segloop_train.cli import main as train_main
from segloop_train.interactive import train_interactive
from segloop_train.interactive_prompts import (
    click_loss,
    corrective_click,
    initial_prompt,
    window_target,
)

TINY = {"base_width": 4, "depth": 2, "norm": "batch"}
CROP = PromptSpec(crop=32)


def _disks(rng, size=64, n=4):
    yy, xx = np.mgrid[:size, :size]
    lab = np.zeros((size, size), np.uint16)
    for i in range(n):
        cy, cx = rng.integers(10, size - 10, 2)
        r = int(rng.integers(5, 8))
        lab[((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) & (lab == 0)] = i + 1
    return lab


def _grey(lab, rng):
    return ((lab > 0) * 900 + rng.normal(100, 30, lab.shape)).clip(0).astype(np.uint16)


def _rgb(lab, rng):
    """H&E-like: purple nuclei on pink."""
    img = np.empty((*lab.shape, 3), np.float64)
    img[:] = (235, 190, 215)
    img[lab > 0] = (90, 50, 140)
    return (img + rng.normal(0, 6, img.shape)).clip(0, 255).astype(np.uint8)


def _folder(root, name, kind, splits=("train", "train", "val", "test"), seed=0):
    rng = np.random.default_rng(seed)
    tf = TrainingFolder.create(root / name, classes=("background", "nucleus"), task="instance",
                               modality="histology" if kind == "rgb" else "fluorescence")
    for i, split in enumerate(splits):
        lab = _disks(rng)
        img = _rgb(lab, rng) if kind == "rgb" else _grey(lab, rng)
        tf.add_sample(img, lab, axes="YXC" if kind == "rgb" else "YX", source=f"{name}{i}.tif", split=split)
    return root / name


def _volume_folder(root):
    """A CT-like semantic volume: class 1 a large disk on every plane, class 2 a small one inside it."""
    rng = np.random.default_rng(3)
    tf = TrainingFolder.create(root / "ct", classes=("background", "liver", "tumour"), task="semantic", modality="CT")
    yy, xx = np.mgrid[:48, :48]
    for split in ("train", "val"):
        lab = np.zeros((7, 48, 48), np.uint8)
        for z in range(7):
            lab[z][(yy - 24) ** 2 + (xx - 22) ** 2 <= (10 + z % 3) ** 2] = 1
            lab[z][(yy - 26) ** 2 + (xx - 20) ** 2 <= 9] = 2
        img = np.where(lab == 1, 60, np.where(lab == 2, 20, -900)) + rng.normal(0, 10, lab.shape)
        tf.add_sample(img.astype(np.int16), lab, axes="ZYX", source=f"vol-{split}.nii", split=split,
                      spacing=(2.0, 0.8, 0.8))
    return root / "ct"


def _train(folders, out, **kw):
    args = dict(name="click-test", arch_kwargs=TINY, prompt=CROP, steps=8, batch=4, lr=3e-3, eval_every=4,
                val_objects=4, max_clicks=2, device="cpu")
    args.update(kw)
    return train_interactive(folders, out=out, **args)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("click-folders")
    return {"grey": _folder(root, "grey", "grey"), "rgb": _folder(root, "rgb", "rgb", seed=1),
            "ct": _volume_folder(root)}


# --------------------------------------------------------------------------- prompt simulation


def test_the_first_click_is_inside_the_object_near_its_middle_and_negatives_outside():
    from scipy.ndimage import distance_transform_edt

    yy, xx = np.mgrid[:80, :80]
    gt = ((yy - 40) ** 2 / 400 + (xx - 30) ** 2 / 100 <= 1) | ((yy > 30) & (yy < 36) & (xx > 30) & (xx < 70))
    dt = distance_transform_edt(gt)
    labels = gt.astype(np.uint16)
    labels[(yy - 40) ** 2 + (xx - 55) ** 2 <= 16] = 2           # a neighbour
    boxes = negatives = 0
    for seed in range(200):
        p = initial_prompt(gt, np.random.default_rng(seed), labels=labels, box_p=0.5, negative_p=0.5)
        assert p.positive or p.box is not None
        for y, x in p.positive:
            assert gt[int(y), int(x)] and dt[int(y), int(x)] >= 0.5 * dt.max() - 1
        for y, x in p.negative:
            assert not gt[int(y), int(x)]
        negatives += len(p.negative)
        if p.box is not None:
            boxes += 1
            y0, x0, y1, x1 = p.box
            assert abs(y0 - 19.5) <= 0.1 * 41 + 1e-6 and abs(x1 - 69.5) <= 0.1 * 50 + 1e-6
    assert 60 < boxes < 140 and negatives > 0


def test_a_corrective_click_lands_in_an_error_region_on_reviewed_pixels():
    yy, xx = np.mgrid[:64, :64]
    gt = (yy - 32) ** 2 + (xx - 32) ** 2 <= 144
    pred = (yy - 32) ** 2 + (xx - 40) ** 2 <= 144              # shifted right: a miss left, a leak right
    (y, x), positive = corrective_click(gt, pred)
    assert (gt & ~pred)[y, x] if positive else (pred & ~gt)[y, x]
    reviewed = np.ones_like(gt, np.uint8)
    reviewed[:, :32] = 0                                         # the missed part was never reviewed
    (y, x), positive = corrective_click(gt, pred, reviewed)
    assert not positive and (pred & ~gt)[y, x] and reviewed[y, x]
    assert corrective_click(gt, gt.copy()) is None


def test_unreviewed_pixels_carry_no_loss_weight():
    gt = np.zeros((64, 64), bool)
    gt[20:40, 20:44] = True
    reviewed = np.ones((64, 64), np.uint8)
    reviewed[:, 32:] = 0
    win = prompt_window(Prompt(positive=((30.0, 30.0),)), CROP)        # side 32 at the model's resolution: a crop
    assert win.side == 32 and win.scale == 1
    target, weight = window_target(gt, reviewed, win)
    r0, c0 = int(win.y0), int(win.x0)
    assert np.array_equal(target, gt[r0:r0 + 32, c0:c0 + 32].astype(np.float32))
    assert np.array_equal(weight, reviewed[r0:r0 + 32, c0:c0 + 32].astype(np.float32))
    # outside the image weighs nothing either
    _, w_edge = window_target(gt, None, Window(-8.0, -8.0, 32.0, 32))
    assert not w_edge[:8].any() and w_edge[8:, 8:].all()
    # the labels under weight 0 do not change the loss nor its gradient
    logits = torch.randn(1, 2, 32, 32, requires_grad=True)
    other = target.copy()
    other[weight == 0] = 1 - other[weight == 0]
    grads = []
    for t in (target, other):
        logits.grad = None
        loss = click_loss(logits, torch.from_numpy(t)[None], torch.from_numpy(weight)[None])
        loss.backward()
        grads.append((float(loss.detach()), logits.grad.clone()))
    assert grads[0][0] == pytest.approx(grads[1][0]) and torch.allclose(grads[0][1], grads[1][1])


# --------------------------------------------------------------------------- training


def test_one_model_trains_on_grey_and_rgb_and_its_package_segments_a_click(folders, tmp_path):
    events = []
    out = _train([folders["grey"], folders["rgb"]], tmp_path / "click", progress=events.append,
                 license="CC0 test", description="test model")
    model = segloop.load_interactive(out, device="cpu")
    spec = model.spec
    assert spec.task == "interactive" and spec.classes == ("background", "object")
    assert spec.image_channels == 1 and spec.in_channels == 1 + 4 and spec.prompt == CROP.to_dict()
    assert spec.license == "CC0 test" and spec.pixel_size is None
    t = spec.training
    assert t["labels"] == "hand-drawn" and t["label_source"] == "hand" and t["steps_done"] == 8
    assert [f["fingerprint"] for f in t["folders"]] == [TrainingFolder.open(f).fingerprint()
                                                        for f in (folders["grey"], folders["rgb"])]
    assert [h["step"] for h in t["history"]] == [4, 8] and {"noc@85", "miou@1"} <= set(t["metrics"])
    assert all(n["train"] > 0 and n["val"] > 0 for n in t["objects"])
    assert not (tmp_path / "click.ckpt").exists() and (out / "MODEL_CARD.md").is_file()
    steps = [e for e in events if e["event"] == "step"]
    assert len(steps) == 8 and all(e["simulation_seconds"] >= 0 for e in steps)
    assert any(r > 0 for e in steps for r in e["rounds"])            # corrections were simulated
    rng = np.random.default_rng(9)
    lab = _disks(rng)
    ys, xs = np.nonzero(lab == 1)
    for img in (_grey(lab, rng), _rgb(lab, rng)):                    # RGB goes through the hematoxylin channel
        mask = model.segment(img, positive=[(int(ys.mean()), int(xs.mean()))])
        assert mask.shape == lab.shape and mask.dtype == bool


def test_a_2p5d_model_trains_on_chosen_classes_of_a_volume(folders, tmp_path):
    out = _train(folders["ct"], tmp_path / "ct-click", context_slices=3, classes=[1], steps=4,
                 normalization={"kind": "ct_window", "level": 40, "width": 400}, modality="CT")
    spec = read_spec(out)
    assert spec.in_channels == 3 + 4 and spec.context_slices == 3 and spec.normalization["kind"] == "ct_window"
    assert spec.training["objects"] == [{"train": 7, "val": 7}]                   # class 1 on each of 7 planes
    model = segloop.load_interactive(out, device="cpu")
    vol = TrainingFolder.open(folders["ct"]).read_sample(TrainingFolder.open(folders["ct"]).samples("val")[0]).image
    mask = model.segment(vol, positive=[(3, 16, 22)])
    assert mask.shape == vol.shape and not mask[[0, 1, 2, 4, 5, 6]].any()


def test_a_cancelled_run_writes_the_best_so_far_and_resumes_to_the_same_weights(folders, tmp_path):
    whole = _train(folders["grey"], tmp_path / "whole", checkpoint_every=3)
    out = tmp_path / "split"
    seen = []

    def progress(ev):
        seen.append(ev)

    def cancel():
        return any(e["event"] == "step" and e["step"] >= 6 for e in seen)

    assert _train(folders["grey"], out, checkpoint_every=3, cancel=cancel, progress=progress) == out
    first = read_spec(out).training
    assert first["stopped"] == "cancelled" and first["steps_done"] == 6 and first["best"]["step"] == 4
    assert (tmp_path / "split.ckpt" / "latest").read_text() == "step-0000006"
    with pytest.raises(ModelPackageError, match="already exists"):
        _train(folders["grey"], out, checkpoint_every=3)                       # no --resume
    with pytest.raises(ModelPackageError, match="other settings: lr"):
        _train(folders["grey"], out, checkpoint_every=3, lr=1e-3, resume=True)
    _train(folders["grey"], out, checkpoint_every=3, resume=True)
    done = read_spec(out)
    assert done.training["stopped"] == "finished" and done.training["resumed_from"] == 6
    assert done.training["steps_done"] == 8 and [h["step"] for h in done.training["history"]] == [4, 8]
    assert done.sha256 == read_spec(whole).sha256                             # as if never interrupted
    with pytest.raises(ModelPackageError, match="not the package of a cancelled run"):
        _train(folders["grey"], out, resume=True)


# --------------------------------------------------------------------------- the command


def _cli(argv, capsys):
    rc = train_main(["interactive", *map(str, argv)])
    err = capsys.readouterr().err.strip()
    return rc, err


def test_the_command_trains_and_refuses_bad_input_in_one_line(folders, tmp_path, capsys):
    out = tmp_path / "cli-click"
    rc, err = _cli([folders["grey"], "--out", out, "--name", "cli-click", "--steps", 2, "--batch", 2,
                    "--arch-kwargs", json.dumps(TINY), "--crop", 32, "--eval-every", 2, "--val-objects", 2,
                    "--max-clicks", 1, "--device", "cpu", "--license", "CC0"], capsys)
    assert rc == 0, err
    spec = read_spec(out)
    assert spec.name == "cli-click" and spec.training["command"].startswith("segloop-train interactive ")

    empty = TrainingFolder.create(tmp_path / "empty", classes=("background", "nucleus"), task="instance")
    empty.add_sample(np.zeros((32, 32), np.uint8), np.zeros((32, 32), np.uint16), axes="YX", source="e.tif",
                     split="train")
    cases = [
        ([tmp_path / "missing", "--out", tmp_path / "a", "--name", "a"], "missing"),
        ([tmp_path / "empty", "--out", tmp_path / "b", "--name", "b"], "no objects to train on"),
        ([folders["grey"], "--out", out, "--name", "c"], "already exists"),
        ([folders["ct"], "--out", tmp_path / "d", "--name", "d", "--classes", "5"], "class id(s) [5]"),
        ([folders["grey"], "--out", tmp_path / "e", "--name", "e", "--crop", 40], "multiple of 16"),
    ]
    for argv, words in cases:
        rc, err = _cli(argv, capsys)
        assert rc == 2 and err.startswith("segloop-train: error:") and "\n" not in err and words in err, err
    assert not any((tmp_path / n).exists() for n in "abde")
    # fine-tuning a click model on corrections: scored first, recorded as the parent
    tuned = tmp_path / "tuned"
    rc, err = _cli([folders["grey"], "--from", out, "--out", tuned, "--name", "tuned", "--steps", 2, "--batch", 2,
                    "--eval-every", 2, "--val-objects", 2, "--max-clicks", 1, "--device", "cpu"], capsys)
    assert rc == 0, err
    t = read_spec(tuned)
    assert t.parent == {"name": "cli-click", "version": spec.version, "sha256": spec.sha256}
    assert t.architecture_kwargs == spec.architecture_kwargs and t.prompt == spec.prompt
    assert t.training["history"][0]["step"] == 0 and t.training["parent_metrics"] is not None
    rc, err = _cli([folders["grey"], "--from", "nuclei-unet", "--out", tmp_path / "g", "--name", "g"], capsys)
    assert rc == 2 and "not a click model" in err and not (tmp_path / "g").exists()
    # a click model is no parent for the automatic trainer, which says which command trains it
    rc = train_main([str(folders["grey"]), "--from", str(out), "--out", str(tmp_path / "f"), "--steps", "1"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "segloop-train interactive" in err and "\n" not in err and not (tmp_path / "f").exists()


# --------------------------------------------------------------------------- recipes


def test_a_recipe_trains_then_scores_the_shipped_weights_per_source(folders, tmp_path, monkeypatch):
    from dataclasses import replace

    from segloop_train import interactive_recipes as ir

    recipe = replace(ir.INTERACTIVE_RECIPES["nuclei-click-unet"], train_sources=("grey",),
                     heldout=(("rgb", ("test",)),), arch_kwargs=TINY, steps=4, batch=4, eval_every=4, val_objects=3,
                     heldout_objects=3, max_clicks=2)
    monkeypatch.setitem(ir.INTERACTIVE_RECIPES, "nuclei-click-unet", recipe)
    sources, out = folders["grey"].parent, tmp_path / "shipped"
    argv = ["nuclei-click-unet", "--sources", str(sources), "--out", str(out), "--work", str(tmp_path / "work")]
    assert ir.main(argv) == 0
    assert (tmp_path / "work" / "shipped.raw" / "segloop-model.json").is_file()       # the fp32 run, kept in --work
    spec = read_spec(out)
    assert spec.weights_dtype == "float16" and spec.license == recipe.license and spec.task == "interactive"
    held = spec.training["heldout"]
    assert held["rgb"]["splits"] == ["test"] and held["rgb"]["all"]["objects"] == 3        # never trained on
    assert held["grey"]["splits"] == ["test"] and not held["grey"]["selection"]           # its own test split
    assert spec.training["shipped_metrics"]["source"] == "rgb (never trained on)"
    card = (out / "MODEL_CARD.md").read_text()
    assert "| rgb | test | nucleus |" in card and "| yes |" in card and "NoC@85" in card
    with pytest.raises(SystemExit, match="exists"):
        ir.main(argv)
