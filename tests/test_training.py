"""The training seed: targets, loss with ignored pixels, and a tiny run that writes a package."""

import numpy as np
import pytest
import torch

from segloop.core.formats.package import load_package
from segloop_train.data import IGNORE, Sample, instance_targets
from segloop_train.losses import dice_ce_loss
from segloop_train.train import TrainConfig, train_and_save

from .conftest import tiny_spec


def test_instance_targets_separate_touching_objects():
    lab = np.zeros((10, 12), np.uint16)
    lab[2:8, 1:6] = 1
    lab[2:8, 6:11] = 2
    t = instance_targets(lab, boundary_px=1)
    assert set(np.unique(t)) == {0, 1, 2}
    assert (t[2:8, 5] == 2).all() and (t[2:8, 6] == 2).all()   # the touching seam is boundary
    assert t[4, 3] == 1 and t[0, 0] == 0


def test_unreviewed_pixels_do_not_change_the_gradient():
    from segloop_train.train import _targets

    torch.manual_seed(0)
    lab = np.zeros((16, 16), np.uint16)
    lab[2:6, 2:6], lab[10:14, 9:15] = 1, 2
    reviewed = np.ones((16, 16), np.uint8)
    reviewed[:8] = 0                                    # top half never looked at
    target = torch.from_numpy(_targets(Sample(np.zeros((16, 16)), lab, reviewed), "instance").astype(np.int64))
    assert (target[:8] == IGNORE).all() and (target[8:] != IGNORE).all()
    target = target[None]
    logits = torch.randn(1, 3, 16, 16, requires_grad=True)
    g1 = torch.autograd.grad(dice_ce_loss(logits, target), logits)[0]
    assert torch.all(g1[:, :, :8] == 0)                 # no gradient where unreviewed
    logits2 = logits.detach().clone()
    logits2[:, :, :8] = torch.randn(1, 3, 8, 16) * 10   # whatever the net says there...
    logits2.requires_grad_(True)
    g2 = torch.autograd.grad(dice_ce_loss(logits2, target), logits2)[0]
    torch.testing.assert_close(g1[:, :, 8:], g2[:, :, 8:])   # ...changes nothing elsewhere


def test_tiny_training_run_writes_a_loadable_package_with_its_record(tmp_path, nuclei_image):
    from skimage.measure import label

    lab = label(nuclei_image > np.percentile(nuclei_image, 80)).astype(np.uint16)
    reviewed = np.ones_like(lab, np.uint8)
    reviewed[:, :100] = 0
    s = Sample(nuclei_image, lab, reviewed=reviewed, source="bbbc007_A9_p10d.tif")
    spec = train_and_save(tmp_path / "pkg", tiny_spec(), [s], [s],
                          TrainConfig(steps=4, batch=2, patch=64, eval_every=2), card="# tiny\n{metrics}")
    pkg = load_package(tmp_path / "pkg")
    assert pkg.spec.sha256 == spec.sha256 and pkg.spec.training["sample_counts"] == {"train": 1, "val": 1}
    assert "f1@0.5" in pkg.spec.training["best"] and "| f1@0.5" in pkg.card
    with pytest.raises(Exception, match="already exists"):
        train_and_save(tmp_path / "pkg", tiny_spec(), [s], [], TrainConfig(steps=1, batch=1, patch=32))


def test_every_recipe_builds_a_small_network_and_matches_its_bundled_package():
    from segloop.core.formats.package import read_spec
    from segloop.core.formats.registry import BUNDLED_DIR
    from segloop.core.networks import build
    from segloop_train.recipes import load_recipe, nuclei_recipes

    names = set(nuclei_recipes())
    assert {"nuclei-unet", "nuclei-unet26", "nuclei-segunet", "nuclei-convnext-unet"} <= names
    for name in names:
        r = load_recipe(name)
        net = build(r["architecture"], 1, 3, dims=2, **r["architecture_kwargs"])
        n = sum(p.numel() for p in net.parameters())
        assert n * 2 < 10_000_000, f"{name}: {n} weights do not fit 10 MB even in fp16"
        pkg = BUNDLED_DIR / name
        if not (pkg / "segloop-model.json").is_file():
            continue
        spec = read_spec(pkg)                       # the shipped package was made by exactly this recipe
        assert spec.architecture == r["architecture"] and spec.architecture_kwargs == r["architecture_kwargs"]
        cfg = spec.training["config"]
        assert {k: cfg[k] for k in ("steps", "batch", "patch", "lr", "seed", "eval_every")} == \
            {k: r[k] for k in ("steps", "batch", "patch", "lr", "seed", "eval_every")}
        assert (pkg / "model.safetensors").stat().st_size < 10_000_000
        assert f"segloop_train.recipes {name}" in (pkg / "MODEL_CARD.md").read_text()


def test_an_unknown_or_misnamed_recipe_is_refused(tmp_path, monkeypatch):
    import segloop_train.recipes as R

    with pytest.raises(KeyError, match="known: "):
        R.load_recipe("no-such-recipe")
    (tmp_path / "x.toml").write_text('name = "y"\narchitecture = "unet"\n')
    monkeypatch.setattr(R, "RECIPE_DIR", tmp_path)
    with pytest.raises(ValueError, match="does not match"):
        R.load_recipe("x")
