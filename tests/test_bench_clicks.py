"""benchmarks/clicks.py: clicks per object with an interactive model, against the brush and against
"automatic model + per-object fix".

Real training folders in tmp_path (synthetic discs; a small CT-like semantic volume), a real tiny
interactive package (random weights: its NoC is what it is, the test checks the bookkeeping), a
real tiny automatic package, the script's own ``main``.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from segloop.core.formats.package import ModelSpec, save_package
from segloop.core.formats.prompt import PromptSpec
from segloop.core.formats.trainfolder import TrainingFolder
from segloop.core.networks import build
from tests.conftest import tiny_spec, tiny_state
from tests.test_evaluate_heldout import discs, fluorescence

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def clicks():
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("benchmarks_clicks", BENCH / "clicks.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod                # dataclasses look their module up while it loads
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def toy_click(tmp_path_factory) -> Path:
    import torch

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("models") / "toy-click"
    spec = ModelSpec(name="toy-click", version="0.1", architecture="unet",
                     architecture_kwargs={"base_width": 4, "depth": 2}, dims=2, in_channels=1 + 4,
                     classes=("background", "object"), task="interactive", postprocess={},
                     normalization={"kind": "percentile"}, prompt=PromptSpec(crop=32).to_dict())
    save_package(path, spec, build("unet", 5, 2, dims=2, base_width=4, depth=2).state_dict())
    return path


@pytest.fixture(scope="module")
def toy_auto(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("models") / "toy-auto"
    spec = tiny_spec(name="toy-auto")
    save_package(path, spec, tiny_state(spec))
    return path


@pytest.fixture(scope="module")
def nuclei(tmp_path_factory) -> tuple[Path, list[np.ndarray]]:
    """An instance folder: 2 test samples (5 discs each), 1 train sample (7 discs); and the test labels."""
    root = tmp_path_factory.mktemp("folders")
    tf = TrainingFolder.create(root / "synth-nuclei", classes=("background", "nucleus"), task="instance",
                               modality="fluorescence")
    test = []
    for i, split in enumerate(["test", "test", "train"]):
        lab = discs(i, n=7 if split == "train" else 5)
        tf.add_sample(fluorescence(lab, i), lab, axes="YX", split=split, sample_id=f"s{i}", spacing=[0.5, 0.5])
        if split == "test":
            test.append(lab)
    return tf.path, test


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def test_main_runs_end_to_end_and_writes_every_figure(clicks, nuclei, toy_click, toy_auto, tmp_path, capsys):
    folder, test_labels = nuclei
    out = tmp_path / "out" / "clicks.json"
    args = ["--model", str(toy_click), "--folder", str(folder), "--max-objects", "6", "--max-clicks", "3",
            "--auto-model", str(toy_auto), "--json", str(out), "--device", "cpu"]
    assert clicks.main(args) == 0
    printed = capsys.readouterr().out
    doc = read_json(out)
    assert doc["command"] == "benchmarks/clicks.py " + " ".join(args)
    assert doc["date"][:2] == "20" and doc["machine"]["cpu_count"] >= 1 and doc["machine"]["torch_threads"] >= 1
    assert doc["model"]["name"] == "toy-click" and doc["model"]["version"] == "0.1"
    assert len(doc["model"]["sha256"]) == 64 and doc["auto_model"]["name"] == "toy-auto"
    assert doc["settings"]["brush"]["size"] == 10 and doc["settings"]["brush"]["dab_pixels"] == 97
    (src,) = doc["sources"]
    assert (src["source"], src["split"], src["objects_in_split"]) == ("synth-nuclei", "test", 10)
    s = src["interactive"]
    assert s["objects"] == 6 and s["max_clicks"] == 3
    for k in ("noc@85", "noc@90", "failed@85", "failed@90", "miou@1", "miou@3", "ms_per_click_median",
              "ms_per_click_p95"):
        assert k in s
    assert 1 <= s["noc@85"] <= s["noc@90"] <= 3
    # per object: NoC within the clicks given, one IoU and one time per click; the sample is 6 of the 10 test discs
    rows = src["objects"]
    assert len(rows) == 6 and {r["sample"] for r in rows} <= {"s0", "s1"}
    assert all(len(r["ious"]) == len(r["ms"]) == len(r["clicks"]) <= 3 for r in rows)
    assert np.mean([r["noc@85"] for r in rows]) == pytest.approx(s["noc@85"], abs=1e-3)
    # brush: the mean area of the benchmarked objects; the same draw again gives the same objects
    assert src["brush"]["pixels_per_object"] == pytest.approx(np.mean([r["area"] for r in rows]), abs=0.01)
    a = src["auto_fix"]
    assert a["objects"] == 6 and a["matched"] + a["to_fix"] == 6 and a["objects_in_images"] == 10
    fix = sum(r["noc@85"] for r in rows if not r["auto_matched"])
    assert a["fix_clicks"] == fix
    assert a["clicks_per_object"] == pytest.approx(fix / 6 + a["false_positives"] / 10, abs=1e-3)
    assert a["clicks_per_object_from_scratch"] == s["noc@85"]
    assert "| synth-nuclei | test | 2 | 6 |" in printed and "clicks/object (auto + fix)" in printed
    assert "synth-nuclei.noc@85=" in printed and f"wrote {out}" in printed
    assert clicks.main(args) == 0
    assert [r["area"] for r in read_json(out)["sources"][0]["objects"]] == [r["area"] for r in rows]


def test_brush_baseline_is_the_mean_object_area(clicks, nuclei, toy_click, tmp_path):
    folder, test_labels = nuclei
    out = tmp_path / "clicks.json"
    assert clicks.main(["--model", str(toy_click), "--folder", str(folder), "--max-clicks", "1",
                        "--json", str(out), "--device", "cpu"]) == 0
    src = read_json(out)["sources"][0]
    areas = np.concatenate([np.bincount(lab.ravel())[1:] for lab in test_labels])
    assert len(areas) == 10 and src["interactive"]["objects"] == 10
    assert src["brush"]["pixels_per_object"] == pytest.approx(areas.mean(), abs=0.01)
    # squares of 100, 200 and 300 pixels; napari's default brush paints 97 pixels a dab
    lab = np.zeros((40, 80), np.uint16)
    lab[0:10, 0:10], lab[0:10, 20:40], lab[15:35, 50:65] = 1, 2, 3
    objs = clicks.reviewed_objects(lab, None, task="instance")
    b = clicks.brush_baseline([o.area for o in objs], brush_size=10)
    assert b["pixels_per_object"] == 200.0 and b["dab_pixels"] == 97
    assert b["dabs_per_object"] == pytest.approx((2 + 3 + 4) / 3, abs=1e-3)


def test_brush_disk_is_what_napari_paints(clicks):
    Labels = pytest.importorskip("napari.layers").Labels
    for size in (1, 4, 7, 10, 25):
        layer = Labels(np.zeros((64, 64), np.uint8))
        layer.brush_size = size
        layer.paint((32, 32), 1)
        assert int((layer.data == 1).sum()) == clicks.brush_disk_area(size), size
    assert clicks.napari_brush_size()[0] == Labels(np.zeros((2, 2), np.uint8)).brush_size


def test_auto_workflow_counts_nothing_for_objects_already_right(clicks):
    truth = discs(3, n=5)
    perfect = clicks.match_automatic(truth, truth.copy(), task="instance")
    assert len(perfect.objects) == 5 and all(perfect.matched) and perfect.false_positives == 0
    cost = clicks.fix_cost(perfect, {})                 # no NoC needed: nothing to fix
    assert cost["fix_clicks"] == 0 and clicks.pool_fix_costs([cost])["clicks_per_object"] == 0.0

    # one object missing, another shrunk (IoU < 0.85: a poor one), a false blob in the background
    pred = truth.copy()
    pred[pred == 2] = 0
    from scipy import ndimage as ndi

    pred[(truth == 4) & ~ndi.binary_erosion(truth == 4)] = 0
    yy, xx = np.mgrid[:96, :96]
    free = next(p for p in np.argwhere(ndi.distance_transform_edt(truth == 0) > 8) if 5 <= p.min() and p.max() < 91)
    pred[(yy - free[0]) ** 2 + (xx - free[1]) ** 2 <= 9] = 50
    m = clicks.match_automatic(truth, pred, task="instance")
    by_value = {o.value: ok for o, ok in zip(m.objects, m.matched, strict=True)}
    assert by_value == {1: True, 2: False, 3: True, 4: False, 5: True}
    assert m.false_positives == 1 and m.predicted_objects == 5     # the shrunk disc still matches at 0.5
    noc = {o: 3 if o.value == 2 else 2 for o in m.objects}
    cost = clicks.fix_cost(m, noc)
    assert (cost["matched"], cost["to_fix"], cost["fix_clicks"]) == (3, 2, 5)
    assert clicks.pool_fix_costs([cost])["clicks_per_object"] == pytest.approx((5 + 1) / 5)
    # a sample of the objects: fix clicks over those, false positives over every object of the image
    two = [o for o in m.objects if o.value in (1, 2)]
    assert clicks.pool_fix_costs([clicks.fix_cost(m, noc, objects=two)])["clicks_per_object"] == pytest.approx(
        3 / 2 + 1 / 5)


def test_auto_workflow_on_semantic_volumes_matches_per_plane_and_class(clicks):
    truth = np.zeros((2, 48, 48), np.uint8)
    truth[0, 5:25, 5:25] = 1
    truth[0, 30:40, 30:45] = 2
    truth[1, 5:25, 5:25] = 1
    pred = truth.copy()
    pred[1][truth[1] == 1] = 2                          # right place, wrong class on plane 1
    m = clicks.match_automatic(truth, pred, task="semantic")
    assert [(o.z, o.value, ok) for o, ok in zip(m.objects, m.matched, strict=True)] == [
        (0, 1, True), (0, 2, True), (1, 1, False)]
    assert m.false_positives == 1


def test_semantic_volume_folder_objects_per_class_per_plane(clicks, toy_click, tmp_path):
    tf = TrainingFolder.create(tmp_path / "ct", classes=("background", "liver", "tumour"), task="semantic",
                               modality="ct")
    lab = np.zeros((3, 48, 48), np.uint8)
    lab[:, 6:30, 6:30] = 1
    lab[1, 12:20, 12:20] = 2
    lab[2, 36:44, 36:44] = 1                            # a second liver part on plane 2
    vol = (np.where(lab > 0, 80.0, -500.0) + np.random.default_rng(0).normal(0, 10, lab.shape)).astype(np.float32)
    tf.add_sample(vol, lab, axes="ZYX", split="test", sample_id="v0", spacing=[2.0, 0.8, 0.8])
    out = tmp_path / "ct.json"
    assert clicks.main(["--model", str(toy_click), "--folder", str(tf.path), "--max-clicks", "2",
                        "--json", str(out), "--device", "cpu"]) == 0
    rows = read_json(out)["sources"][0]["objects"]
    assert sorted((r["z"], r["value"], r["part"]) for r in rows) == [(0, 1, 1), (1, 1, 1), (1, 2, 1), (2, 1, 1),
                                                                    (2, 1, 2)]
    assert {r["area"] for r in rows if r["value"] == 2} == {64}


@pytest.mark.parametrize("case", ["no model", "automatic as --model", "interactive as --auto-model",
                                  "no samples in split", "max clicks 0", "no folder"])
def test_bad_input_is_one_line_and_exit_2(clicks, nuclei, toy_click, toy_auto, tmp_path, capsys, case):
    folder, _ = nuclei
    out = tmp_path / "bad.json"
    args = {"no model": ["--model", "no-such-click-model", "--folder", str(folder)],
            "automatic as --model": ["--model", str(toy_auto), "--folder", str(folder)],
            "interactive as --auto-model": ["--model", str(toy_click), "--auto-model", str(toy_click),
                                            "--folder", str(folder)],
            "no samples in split": ["--model", str(toy_click), "--folder", str(folder), "--split", "val"],
            "max clicks 0": ["--model", str(toy_click), "--folder", str(folder), "--max-clicks", "0"],
            "no folder": ["--model", str(toy_click), "--folder", str(tmp_path / "nothing")]}[case]
    assert clicks.main([*args, "--json", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    assert not out.exists()
    want = {"no model": "no-such-click-model", "automatic as --model": "automatic",
            "interactive as --auto-model": "interactive", "no samples in split": "no val samples",
            "max clicks 0": "--max-clicks must be at least 1", "no folder": "nothing"}[case]
    assert want in err


def test_click_latency_runs_against_its_smallest_image(tmp_path, capsys):
    from tests.test_interactive import _package

    spec = importlib.util.spec_from_file_location("benchmarks_click_latency", BENCH / "click_latency.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    model = _package(tmp_path / "toy")
    out = tmp_path / "lat.json"
    assert mod.main(["--model", str(model), "--sizes", "256,128", "--clicks", "2", "--threads", "1",
                     "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["side"] for r in rows] == [128, 256] and rows[0]["x_baseline"] == 1.0
    assert all(r["median_ms"] > 0 and r["clicks"] == 2 for r in rows)
    assert mod.main(["--model", str(model), "--sizes", "10"]) == 2
    assert mod.main(["--model", "nuclei-unet", "--sizes", "128"]) == 2
    assert "not an interactive one" in capsys.readouterr().err
