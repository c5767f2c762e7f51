"""Choosing an instance model's post-processing on validation images
(:mod:`segloop_train.tune_postprocess`, ``segloop-train tune-postprocess``)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from skimage.measure import label

from segloop.core.formats.package import load_package, save_package
from segloop.core.formats.trainfolder import TrainingFolder
from segloop.core.inference.postprocess import InstanceParams
from segloop_train import cli
from segloop_train.tune_postprocess import score_params, tune_instance_params

from .conftest import tiny_spec, tiny_state


def _discs(n: int = 12, side: int = 96, seed: int = 0):
    """True labels (discs) and probabilities whose interiors sit at 0.45: below the default seed
    threshold (0.5), so the defaults find nothing."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:side, :side]
    truth = np.zeros((side, side), np.uint16)
    for k, (y, x) in enumerate(rng.integers(8, side - 8, (n, 2)), 1):
        truth[(yy - y) ** 2 + (xx - x) ** 2 <= 25] = k
    truth = label(truth > 0).astype(np.uint16)       # discs that touch become one object
    probs = np.zeros((3, side, side), np.float16)
    probs[1][truth > 0] = 0.45
    probs[2][truth > 0] = 0.25
    probs[0] = 1 - probs[1] - probs[2]
    return probs, truth


def test_tuning_finds_thresholds_the_defaults_miss_and_never_does_worse():
    data = {"a": [_discs(seed=0)], "b": [_discs(seed=1), _discs(seed=2)]}
    base = InstanceParams()
    calls = []
    t = tune_instance_params(data, base, progress=lambda i, n: calls.append((i, n)))
    n = calls[-1][1]
    assert calls == [(i, n) for i in range(2, n + 1)]        # every combination reported, skipped ones too
    assert t.before["objective"] == 0.0 and t.before["sources"]["a"]["f1@0.5"] == 0.0
    assert t.params.seed_threshold < 0.45 and t.after["objective"] > 0.9
    assert t.after == score_params(data, t.params)
    assert t.tried[0]["params"] == base.to_dict() and len(t.tried) > 30
    # where the given parameters are already the best, they are kept (ties go to them)
    again = tune_instance_params(data, t.params)
    assert again.params == t.params and again.after["objective"] == t.after["objective"]


def _pairs(seed: int, side: int = 128):
    """Pairs of overlapping discs, each pair's interiors joined (no boundary between the two)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:side, :side]
    truth = np.zeros((side, side), np.uint16)
    k = 0
    for y, x in ((32, 24), (32, 84), (92, 24), (92, 84)):
        y, x = y + int(rng.integers(-3, 4)), x + int(rng.integers(-3, 4))
        for dx, r in ((0, 12), (19, 10)):
            k += 1
            truth[((yy - y) ** 2 + (xx - x - dx) ** 2 <= r * r) & (truth == 0)] = k
    probs = np.zeros((3, side, side), np.float16)
    probs[1][truth > 0] = 0.9
    probs[0] = 1 - probs[1]
    return probs, truth


def test_tuning_splits_seeds_where_touching_nuclei_merged():
    data = {"a": [_pairs(0), _pairs(1)]}
    t = tune_instance_params(data, InstanceParams(min_size=10))
    assert t.before["sources"]["a"]["f1@0.5"] < 0.7       # each pair comes out as one object
    assert t.params.split_h > 0 and t.after["sources"]["a"]["f1@0.5"] == 1.0
    assert t.params.to_dict()["split_h"] == t.params.split_h


def test_tuning_needs_images():
    with pytest.raises(ValueError, match="no validation images"):
        tune_instance_params({"a": []}, InstanceParams())


@pytest.fixture
def folder_and_model(tmp_path, nuclei_image):
    tf = TrainingFolder.create(tmp_path / "f", classes=("background", "nucleus"), task="instance",
                               modality="fluorescence")
    for i, split in enumerate(("train", "val", "test")):
        img = np.ascontiguousarray(np.rot90(nuclei_image, i))[:96, :96]
        tf.add_sample(img, label(img > np.percentile(img, 80)).astype(np.uint16), axes="YX",
                      source=f"crop{i}.tif", split=split)
    spec = tiny_spec()
    save_package(tmp_path / "m", spec, tiny_state(spec))
    return tmp_path


def test_the_command_writes_a_tuned_copy_and_keeps_the_model(folder_and_model, capsys):
    root = folder_and_model
    before = (root / "m" / "segloop-model.json").read_bytes()
    rc = cli.main(["tune-postprocess", str(root / "m"), "--folder", str(root / "f"), "--out", str(root / "t"),
                   "--version", "0.0.2"])
    assert rc == 0
    assert (root / "m" / "segloop-model.json").read_bytes() == before
    tuned = load_package(root / "t")
    rec = tuned.spec.training["postprocess_tuning"]
    assert tuned.spec.postprocess == {**rec["params"]}
    assert rec["after"]["objective"] >= rec["before"]["objective"] and set(rec["after"]["sources"]) == {"f"}
    assert "## Post-processing (tuned on validation images)" in tuned.card
    assert tuned.spec.version == "0.0.2" and tuned.card.startswith("# tiny v0.0.2")
    original = load_package(root / "m")
    assert all(np.array_equal(tuned.state_dict[k], original.state_dict[k]) for k in original.state_dict)
    assert "written:" in capsys.readouterr().out


@pytest.mark.parametrize("case, message", [
    ("exists", "--out .* exists"),
    ("no folder", "is not a folder"),
    ("no val", "no val images in"),
    ("semantic", "semantic model"),
])
def test_the_command_refuses_bad_input_in_one_line_and_writes_nothing(folder_and_model, capsys, case, message):
    root = folder_and_model
    model, folder, out = root / "m", root / "f", root / "t"
    if case == "exists":
        out.mkdir()
    elif case == "no folder":
        folder = root / "missing"
    elif case == "no val":
        meta = json.loads((model / "segloop-model.json").read_text())
        assert meta["task"] == "instance"
        tf = TrainingFolder.create(root / "g", classes=("background", "nucleus"), task="instance",
                                   modality="fluorescence")
        tf.add_sample(np.zeros((32, 32), np.uint8), np.zeros((32, 32), np.uint16), axes="YX", split="train")
        folder = root / "g"
    elif case == "semantic":
        spec = tiny_spec(task="semantic", postprocess={})
        model = root / "sem"
        save_package(model, spec, tiny_state(spec))
    rc = cli.main(["tune-postprocess", str(model), "--folder", str(folder), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and err.startswith("segloop-train: error:")

    assert re.search(message, err), err
    assert (case == "exists") == out.exists()


def test_the_test_split_is_never_a_choice(folder_and_model, capsys):
    root = folder_and_model
    with pytest.raises(SystemExit) as e:
        cli.main(["tune-postprocess", str(root / "m"), "--folder", str(root / "f"), "--split", "test",
                  "--out", str(root / "t")])
    assert e.value.code == 2 and not (root / "t").exists()
