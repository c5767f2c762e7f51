"""The active-learning loop without a screen (segloop_train.loop, ``segloop loop``): real tiny nets, real folders."""

from __future__ import annotations

import csv
import sys
import threading

import numpy as np
import pytest
import tifffile

from segloop.cli import main as cli_main
from segloop.core.formats.trainfolder import TrainingFolder
from segloop.core.inference.model import load_model
from segloop.core.learning.regions import Region
from segloop.core.learning.state import ActiveLearningState
from segloop.errors import ActiveLearningError, InvalidLabelsError, ModelPackageError
from segloop_train.loop import ScratchModel, area_to_reach, paste_truth, run_loop

TINY = ScratchModel(architecture="unet", architecture_kwargs={"depth": 2, "base_width": 4, "norm": "batch"},
                    classes=("background", "nucleus"), task="instance", name="tiny")
FAST = dict(rounds=2, budget=2, initial=2, region_size=32, initial_steps=4, steps=3, batch=2, patch=32, lr=2e-3,
            seed=0)


def blobs(seed: int, n: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """Bright disks on a noisy background, with their instance labels."""
    from skimage.draw import disk

    rng = np.random.default_rng(seed)
    lab = np.zeros((n, n), np.uint16)
    k = 0
    for _ in range(14):
        c = rng.integers(8, n - 8, 2)
        rr, cc = disk((int(c[0]), int(c[1])), int(rng.integers(4, 8)), shape=lab.shape)
        if lab[rr, cc].any():
            continue
        k += 1
        lab[rr, cc] = k
    img = (lab > 0) * 140.0 + rng.normal(40, 12, lab.shape)
    return np.clip(img, 0, 255).astype(np.uint8), lab


@pytest.fixture(scope="module")
def data():
    pool = [blobs(0), blobs(1)]
    held = blobs(7)
    return ({"a": pool[0][0], "b": pool[1][0]}, {"a": pool[0][1], "b": pool[1][1]},
            ({"held": held[0]}, {"held": held[1]}))


@pytest.fixture(scope="module")
def unc_run(data, tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    images, truth, heldout = data
    out = tmp_path_factory.mktemp("al") / "uncertainty"
    return run_loop(images, truth, heldout=heldout, out=out, strategy="uncertainty", parent=TINY, **FAST)


def _boxes_mask(shape, regions: list[Region], image: str) -> np.ndarray:
    m = np.zeros(shape, bool)
    for r in regions:
        if r.image == image:
            m[r.slices] = True
    return m


def test_rows_and_area_accounting(unc_run, data):
    images, truth, _ = data
    res = unc_run
    assert res.stopped == "completed" and res.metric == "f1@0.5"
    assert [r["round"] for r in res.rows] == [0, 1, 2]
    pool_px = sum(g.size for g in truth.values())
    seen: set[str] = set()
    area = 0
    for row, picked in zip(res.rows, res.selected):
        assert row["regions_selected"] == len(picked) == 2
        keys = {p.key for p in picked}
        assert not keys & seen                       # never the same region twice
        seen |= keys
        area += sum(p.area for p in picked)
        assert row["corrected_area"] == area and row["regions_total"] == len(seen)
        assert row["corrected_fraction"] == pytest.approx(area / pool_px)
        for key in ("dice", "jaccard", "f1@0.5"):
            assert 0.0 <= row[key] <= 1.0
        assert row["model_version"] == f"0.{row['round']}.0"
    assert np.isnan(res.rows[0]["mean_uncertainty"])  # round 0: random start, no model yet
    assert all(0 <= r["mean_uncertainty"] <= 1 for r in res.rows[1:])
    with open(res.csv, newline="") as f:
        table = list(csv.DictReader(f))
    assert [int(r["round"]) for r in table] == [0, 1, 2]
    assert [int(r["corrected_area"]) for r in table] == [r["corrected_area"] for r in res.rows]
    assert float(table[-1]["f1@0.5"]) == pytest.approx(res.rows[-1]["f1@0.5"], abs=1e-5)
    assert res.plot is not None and res.plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in res.models] == ["round-00", "round-01", "round-02"]
    m0 = load_model(res.models[0], device="cpu").spec
    assert m0.parent is None and m0.training["config"]["steps"] == 4       # round 0: M0 from scratch
    for later in res.models[1:]:                                           # later rounds fine-tune M0
        spec = load_model(later, device="cpu").spec
        assert spec.parent["sha256"] == m0.sha256 and spec.training["config"]["steps"] == 3


def test_oracle_reviewed_union_and_no_heldout_in_folder(unc_run, data):
    images, truth, heldout = data
    res = unc_run
    tf = TrainingFolder.open(res.folder)
    records = tf.samples()
    assert sorted(r.sample_id for r in records) == sorted({p.image for p in res.corrected})
    for rec in records:
        s = tf.read_sample(rec.sample_id)
        name = rec.sample_id
        assert rec.split == "train"
        np.testing.assert_array_equal(s.image, images[name])          # a pool image, never the held-out one
        assert not np.array_equal(s.image[:heldout[0]["held"].shape[0]], heldout[0]["held"])
        want = _boxes_mask(truth[name].shape, res.corrected, name)   # reviewed = union of its corrected regions
        np.testing.assert_array_equal(s.reviewed.astype(bool), want)
        gt = truth[name]
        # inside: the ground truth (same objects; ids shifted), outside: the prediction that picked them
        inside = want
        assert np.array_equal(s.labels[inside] > 0, gt[inside] > 0)
        pairs = set(zip(s.labels[inside & (gt > 0)].tolist(), gt[inside & (gt > 0)].tolist()))
        assert len(pairs) == len({a for a, _ in pairs}) == len({b for _, b in pairs})
        rnd = rec.meta["extra"]["active_learning"]["round"]
        if rnd == 0:
            assert not s.labels[~inside].any()
        else:
            model = load_model(res.out / "models" / f"round-{rnd - 1:02d}", device="cpu", precision="fp32")
            pred = model.predict(images[name]).labels
            np.testing.assert_array_equal(s.labels[~inside], pred[~inside])
    state = ActiveLearningState.load(res.folder)
    assert [r.key for r in state.queue] == [r.key for r in res.corrected]
    assert state.reviewed == [r.key for r in res.corrected] and state.n_reviewed == len(res.corrected)
    assert state.model["version"] == "0.2.0"


def test_same_start_different_picks_and_deterministic_rerun(unc_run, data, tmp_path):
    images, truth, heldout = data
    rnd = run_loop(images, truth, heldout=heldout, out=tmp_path / "random", strategy="random", parent=TINY,
                   start=unc_run.out, **FAST)
    again = run_loop(images, truth, heldout=heldout, out=tmp_path / "again", strategy="uncertainty", parent=TINY,
                     **FAST)
    keys = [[r.key for r in rd] for rd in unc_run.selected]
    assert [r.key for r in rnd.selected[0]] == keys[0]               # the same random start
    assert rnd.rows[0]["f1@0.5"] == unc_run.rows[0]["f1@0.5"]        # ... and the same M0, reused (start=)
    assert load_model(rnd.models[0], device="cpu").spec.sha256 == load_model(unc_run.models[0], device="cpu").spec.sha256
    assert rnd.rows[0]["train_seconds"] == 0
    assert [[r.key for r in rd] for rd in rnd.selected[1:]] != keys[1:]
    assert [[r.key for r in rd] for rd in again.selected] == keys
    for a, b in zip(again.rows, unc_run.rows):
        for k in ("corrected_area", "changed_pixels", "object_fixes", "dice", "f1@0.5", "mean_uncertainty"):
            assert a[k] == b[k] or (np.isnan(a[k]) and np.isnan(b[k])), k
    fixes = [r["object_fixes"] for r in unc_run.rows]
    assert fixes == sorted(fixes) and fixes[-1] > 0                  # cumulative effort in objects


def test_object_fixes_count_redrawn_and_deleted_objects():
    from segloop_train.loop_oracle import object_fixes

    truth = np.zeros((40, 40), np.uint16)
    truth[1:10, 1:10] = 1
    truth[20:30, 20:30] = 2
    pred = truth.copy()
    assert object_fixes(pred, truth, "instance") == 0
    pred[20:30, 20:30] = 0                   # missed: re-drawn
    pred[32:36, 32:36] = 5                   # false positive: deleted
    assert object_fixes(pred, truth, "instance") == 2
    pred[1:10, 1:5] = 0                      # IoU 5/9 < 0.85: re-drawn too
    assert object_fixes(pred, truth, "instance") == 3
    assert object_fixes(None, truth, "instance") == 2
    assert object_fixes(None, (truth > 0).astype(np.uint8), "semantic") == 2


@pytest.fixture(scope="module")
def clicker():
    import segloop

    return segloop.load_interactive("nuclei-click-unet", device="cpu")


def test_object_clicks_price_each_fix_with_the_click_model(data, clicker):
    from segloop.core.inference.click_eval import click_trace, noc
    from segloop_train.loop_oracle import MAX_CLICKS, object_clicks, object_fixes

    images, truth, _ = data
    img, gt = images["a"], truth["a"]
    whole = (slice(0, gt.shape[0]), slice(0, gt.shape[1]))
    norm = clicker.normalizer_for(img, channel_axis=None)

    def clicks(pred, region=whole):
        return object_clicks(pred, gt, region, image=img, clicker=clicker, task="instance", normalizer=norm)

    n_obj = len(np.unique(gt)) - 1
    assert clicks(gt.copy()) == 0                                   # nothing to fix
    none = clicks(None)                                             # every object clicked from nothing
    assert n_obj <= none <= MAX_CLICKS * n_obj and none >= object_fixes(None, gt, "instance")
    pred = gt.copy()
    first = int(gt[gt > 0][0])
    pred[pred == first] = 0                                         # one missed object ...
    want = noc(click_trace(clicker, img, gt == first, max_clicks=MAX_CLICKS, stop_at=0.85, normalizer=norm).ious,
               0.85, MAX_CLICKS)
    assert clicks(pred) == want >= 1
    pred[0:3, 0:3] = gt.max() + 1                                   # ... and a false positive: one delete click
    assert clicks(pred) == want + 1
    # a region holds only its own objects: the false positive's corner alone costs its delete
    assert clicks(pred, (slice(0, 4), slice(0, 4))) == 1


def test_loop_counts_the_clicks_of_its_corrections(data, tmp_path):
    import json

    images, truth, heldout = data
    res = run_loop(images, truth, heldout=heldout, out=tmp_path / "al", strategy="random", parent=TINY,
                   click_model="nuclei-click-unet", **{**FAST, "rounds": 1})
    clicks = [r["clicks"] for r in res.rows]
    assert clicks == sorted(clicks) and clicks[-1] > 0              # cumulative effort in clicks
    assert all(r["clicks"] >= r["object_fixes"] for r in res.rows)  # each fix costs at least one click
    with open(res.csv, newline="") as f:
        assert [int(r["clicks"]) for r in csv.DictReader(f)] == clicks
    assert json.loads((res.out / "loop.json").read_text())["click_model"] == "nuclei-click-unet"


def test_a_pool_used_up_stops_the_loop_and_says_so_once(data, tmp_path, capsys):
    images, truth, _ = data
    a, a_gt = _write_pair(tmp_path, "a", images["a"], truth["a"])
    code = cli_main(["loop", "--images", a, "--ground-truth", a_gt, "--arch", "unet", "--arch-kwargs",
                     '{"depth": 2, "base_width": 4}', "--classes", "background,nucleus", "--region-size", "48",
                     "--initial", "4", "--budget", "4", "--rounds", "2", "--initial-steps", "2", "--steps", "2",
                     "--batch", "2", "--patch", "32", "--out", str(tmp_path / "o")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.err.count("every region was corrected before round 1: stopped") == 1
    with open(tmp_path / "o" / "loop.csv", newline="") as f:
        assert [int(r["round"]) for r in csv.DictReader(f)] == [0]    # the 96 px image holds 4 regions of 48


def test_an_automatic_model_as_click_model_is_refused_before_anything_is_written(data, tmp_path, capsys):
    images, truth, _ = data
    a, a_gt = _write_pair(tmp_path, "a", images["a"], truth["a"])
    code = cli_main(["loop", "--images", a, "--ground-truth", a_gt, "--arch", "unet", "--click-model", "nuclei-unet",
                     "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("segloop: error:") and err.count("\n") == 1 and "is an automatic" in err and "click model" in err
    assert not (tmp_path / "o").exists()


def test_start_with_other_settings_is_refused(unc_run, data, tmp_path):
    images, truth, heldout = data
    with pytest.raises(ActiveLearningError, match="initial_steps"):
        run_loop(images, truth, out=tmp_path / "s", parent=TINY, start=unc_run.out, **{**FAST, "initial_steps": 5})
    assert not (tmp_path / "s").exists()                              # refused before anything was written


def test_paste_truth_and_area_to_reach():
    pred = np.array([[1, 1, 0], [2, 2, 0], [0, 0, 3]], np.uint16)
    gt = np.array([[0, 1, 1], [0, 1, 1], [2, 2, 0]], np.uint16)
    mask = np.zeros((3, 3), bool)
    mask[:, 1:] = True
    out = paste_truth(pred, gt, mask, "instance")
    np.testing.assert_array_equal(out[:, 0], pred[:, 0])             # outside: the prediction
    assert set(np.unique(out[mask & (gt > 0)])) == {4, 5}            # inside: truth ids moved above 3
    assert not out[mask & (gt == 0)].any()
    np.testing.assert_array_equal(paste_truth(None, gt, mask, "semantic"), np.where(mask, gt, 0))
    rows = [{"corrected_area": 100, "q": 0.5}, {"corrected_area": 200, "q": 0.7}, {"corrected_area": 300, "q": 0.9}]
    assert area_to_reach(rows, 0.8, metric="q") == (pytest.approx(250.0), True)
    assert area_to_reach(rows, 0.4, metric="q") == (100.0, True)
    assert area_to_reach(rows, 0.95, metric="q") == (300.0, False)
    spike = [{"corrected_area": 100, "q": 0.5}, {"corrected_area": 200, "q": 0.9}, {"corrected_area": 300, "q": 0.6},
             {"corrected_area": 400, "q": 0.8}]
    assert area_to_reach(spike, 0.8, metric="q") == (pytest.approx(175.0), True)
    assert area_to_reach(spike, 0.8, metric="q", sustained=True) == (400.0, True)
    assert area_to_reach(spike, 0.85, metric="q", sustained=True) == (400.0, False)


def test_parent_package_round0_evaluates_parent(data, tmp_path, tiny_package):
    images, truth, heldout = data
    res = run_loop(images, truth, heldout=heldout, out=tmp_path / "p", strategy="uncertainty", parent=tiny_package,
                   **{**FAST, "initial": 0, "rounds": 1})
    assert res.rows[0]["corrected_area"] == 0 and res.rows[0]["regions_selected"] == 0
    assert res.rows[0]["model_version"] == "0.0.1"                   # the parent itself
    assert res.rows[1]["regions_selected"] == 2 and res.rows[1]["model_version"] == "0.1.0"
    assert res.models[0].name == "round-01"                            # round 0 trained nothing
    assert load_model(res.models[0], device="cpu").spec.parent["name"] == "tiny"   # M0 = the parent


def test_semantic_volume_25d(tmp_path):
    rng = np.random.default_rng(3)
    lab = np.zeros((6, 48, 48), np.uint8)
    lab[:, 10:30, 12:34] = 1
    lab[2:4, 16:22, 18:24] = 2
    vol = (lab * 80.0 + rng.normal(0, 10, lab.shape)).astype(np.float32)
    parent = ScratchModel(architecture="unet", architecture_kwargs={"depth": 2, "base_width": 4, "norm": "batch"},
                          classes=("background", "liver", "tumour"), task="semantic", context_slices=3,
                          normalization={"kind": "ct_window", "level": 40.0, "width": 400.0}, modality="CT")
    res = run_loop({"v": vol[:4]}, {"v": lab[:4]}, heldout=({"h": vol[4:]}, {"h": lab[4:]}), out=tmp_path / "ct",
                   parent=parent, strategy="uncertainty", rounds=1, budget=3, initial=3, region_size=24, steps=2,
                   batch=2, patch=16)
    assert res.metric == "dice" and "dice:liver" in res.rows[-1] and "dice:tumour" in res.rows[-1]
    assert res.rows[-1]["corrected_area"] == 6 * 24 * 24                # in-plane tiles of single planes
    assert all(r.box[0][1] - r.box[0][0] == 1 for r in res.corrected)
    rec = TrainingFolder.open(res.folder).samples()
    assert len(rec) == 1 and TrainingFolder.open(res.folder).read_sample("v").reviewed.sum() == 6 * 24 * 24


def test_cancel_keeps_finished_rounds(data, tmp_path):
    images, truth, heldout = data
    cancel = threading.Event()

    def progress(ev):
        if ev["event"] == "finetune" and ev["round"] == 1:
            cancel.set()                                             # inside round 1's fine-tuning

    res = run_loop(images, truth, heldout=heldout, out=tmp_path / "c", strategy="uncertainty", parent=TINY,
                   progress=progress, cancel=cancel, **FAST)
    assert res.stopped == "cancelled"
    assert [r["round"] for r in res.rows] == [0]
    with open(res.csv, newline="") as f:
        assert len(list(csv.DictReader(f))) == 1


def test_cancel_while_choosing_regions_keeps_finished_rounds(data, tmp_path):
    """Cancelled inside round 1's encoder-feature pass (diversity): a 'cancelled' result, not an exception."""
    images, truth, heldout = data

    def inside_region_features() -> bool:          # what a Cancel press during that pass looks like
        f = sys._getframe(1)
        while f is not None:
            if f.f_code.co_name == "region_features":
                return True
            f = f.f_back
        return False

    res = run_loop(images, truth, heldout=heldout, out=tmp_path / "c", strategy="diversity", parent=TINY,
                   cancel=inside_region_features, **FAST)
    assert res.stopped == "cancelled" and [r["round"] for r in res.rows] == [0]


def test_bad_inputs_raise_typed_errors(data, tmp_path):
    images, truth, heldout = data
    with pytest.raises(InvalidLabelsError, match="ground truth"):
        run_loop(images, {"a": truth["a"]}, out=tmp_path / "x", parent=TINY, **FAST)
    with pytest.raises(InvalidLabelsError, match="spatial shape"):
        run_loop(images, {"a": truth["a"], "b": truth["b"][:50]}, out=tmp_path / "y", parent=TINY, **FAST)
    with pytest.raises(ActiveLearningError, match="initial"):
        run_loop(images, truth, out=tmp_path / "z", parent=TINY, **{**FAST, "initial": 0})
    with pytest.raises(ActiveLearningError, match="strategy"):
        run_loop(images, truth, out=tmp_path / "w", parent=TINY, **{**FAST, "strategy": "greedy"})
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "something.txt").write_text("x")
    with pytest.raises(ModelPackageError, match="empty"):
        run_loop(images, truth, out=tmp_path / "full", parent=TINY, **FAST)


def _write_pair(tmp_path, name, img, gt):
    tifffile.imwrite(tmp_path / f"{name}.tif", img)
    tifffile.imwrite(tmp_path / f"{name}_gt.tif", gt)
    return str(tmp_path / f"{name}.tif"), str(tmp_path / f"{name}_gt.tif")


def test_cli_exit_2_on_mismatch(data, tmp_path, capsys):
    images, truth, _ = data
    a, a_gt = _write_pair(tmp_path, "a", images["a"], truth["a"])
    b, _ = _write_pair(tmp_path, "b", images["b"], truth["b"])
    tifffile.imwrite(tmp_path / "bad_gt.tif", truth["b"][:40])
    common = ["--arch", "unet", "--out", str(tmp_path / "o")]
    assert cli_main(["loop", "--images", a, b, "--ground-truth", a_gt, str(tmp_path / "bad_gt.tif"), *common]) == 2
    err = capsys.readouterr().err
    assert err.startswith("segloop: error:") and "shape" in err and err.count("\n") == 1
    assert cli_main(["loop", "--images", a, b, "--ground-truth", a_gt, *common]) == 2
    assert "2 pool image(s) but 1 ground-truth" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_cli_loop_runs(data, tmp_path, capsys):
    images, truth, heldout = data
    a, a_gt = _write_pair(tmp_path, "a", images["a"], truth["a"])
    h, h_gt = _write_pair(tmp_path, "h", heldout[0]["held"], heldout[1]["held"])
    code = cli_main(["loop", "--images", a, "--ground-truth", a_gt, "--heldout-images", h, "--heldout-ground-truth",
                     h_gt, "--arch", "unet", "--arch-kwargs", '{"depth": 2, "base_width": 4}', "--classes",
                     "background,nucleus", "--strategy", "random", "--rounds", "1", "--budget", "2", "--region-size",
                     "32", "--initial-steps", "3", "--steps", "2", "--batch", "2", "--patch", "32", "--out",
                     str(tmp_path / "o")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "round 1 random: 4 regions" in out and "held-out f1@0.5" in out
    with open(tmp_path / "o" / "loop.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and rows[1]["strategy"] == "random"
    assert (tmp_path / "o" / "loop.png").is_file()
    steps = [load_model(tmp_path / "o" / "models" / f"round-0{r}", device="cpu").spec.training["config"]["steps"]
             for r in (0, 1)]
    assert steps == [3, 2]
    sample = TrainingFolder.open(tmp_path / "o" / "training-folder").samples()[0]
    assert sample.meta["source"].endswith("a.tif")


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals: Windows sends Ctrl-C through the console")
def test_ctrl_c_to_segloop_loop_cancels_its_trainer_subprocess_and_keeps_finished_rounds(data, tmp_path):
    import os
    import signal
    import subprocess

    images, truth, heldout = data
    a, a_gt = _write_pair(tmp_path, "a", images["a"], truth["a"])
    args = ["loop", "--images", a, "--ground-truth", a_gt, "--arch", "unet", "--arch-kwargs",
            '{"depth": 2, "base_width": 4}', "--classes", "background,nucleus", "--strategy", "random",
            "--rounds", "50", "--budget", "2", "--region-size", "32", "--initial-steps", "3", "--steps", "2",
            "--batch", "2", "--patch", "32", "--out", str(tmp_path / "o")]
    code = f"import sys; from segloop.cli import main; sys.exit(main({args!r}))"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        for line in proc.stdout:                  # the trainer's output, passed on line by line
            if line.startswith("round 1"):
                break
        proc.send_signal(signal.SIGINT)           # to segloop only, as a script would; it passes it on
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "cancelled" in err and "Traceback" not in err
    with open(tmp_path / "o" / "loop.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert 2 <= len(rows) < 51                    # round 0 and 1 kept, not all 50 rounds run
