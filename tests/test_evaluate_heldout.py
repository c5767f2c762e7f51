"""benchmarks/evaluate.py --folder: per-source held-out metrics of models and the classical baseline.

Real training folders (synthetic disc images, two imported "sources"), a real tiny package, the
script's own ``main``.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from segloop.core.formats.package import save_package
from segloop.core.formats.trainfolder import TrainingFolder
from tests.conftest import tiny_spec, tiny_state

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def evaluate():
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("benchmarks_evaluate", BENCH / "evaluate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def discs(seed: int, n: int = 5, size: int = 96, r: int = 7) -> np.ndarray:
    """Instance labels of ``n`` non-touching discs."""
    rng = np.random.default_rng(seed)
    lab = np.zeros((size, size), np.uint16)
    yy, xx = np.mgrid[:size, :size]
    placed = []
    while len(placed) < n:
        c = rng.integers(r + 2, size - r - 2, 2)
        if all(np.hypot(*(c - p)) > 2 * r + 4 for p in placed):
            placed.append(c)
            lab[(yy - c[0]) ** 2 + (xx - c[1]) ** 2 <= r * r] = len(placed)
    return lab


def fluorescence(lab: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (np.where(lab > 0, 180, 20) + rng.normal(0, 5, lab.shape)).clip(0, 255).astype(np.uint8)


def he(lab: np.ndarray, seed: int) -> np.ndarray:
    """Pink background, hematoxylin-purple nuclei."""
    rng = np.random.default_rng(seed)
    img = np.where(lab[..., None] > 0, np.array([70, 40, 130]), np.array([235, 190, 210]))
    return (img + rng.normal(0, 4, img.shape)).clip(0, 255).astype(np.uint8)


def imported(importer: str) -> dict:
    return {"import": {"importer": importer, "dataset": f"synthetic {importer} nuclei", "licence": "CC0"}}


@pytest.fixture
def folder(tmp_path) -> Path:
    """Source ``synth-fluo`` (greyscale): 2 test, 1 train; source ``synth-he`` (RGB): 3 val (no test)."""
    tf = TrainingFolder.create(tmp_path / "eval", classes=("background", "nucleus"), task="instance",
                               modality="histology")
    for i, split in enumerate(["test", "test", "train"]):
        lab = discs(i)
        tf.add_sample(fluorescence(lab, i), lab, axes="YX", split=split, sample_id=f"fluo{i}", spacing=[0.5, 0.5],
                      source=f"fluo/img{i}.tif", extra=imported("synth-fluo"))
    for i in range(3):
        lab = discs(10 + i, n=4 + i)
        tf.add_sample(he(lab, i), lab, axes="YXC", split="val", sample_id=f"he{i}", source=f"he/img{i}.png",
                      extra=imported("synth-he"))
    return tmp_path / "eval"


def read(out: Path) -> tuple[dict, str]:
    return json.loads((out / "heldout.json").read_text()), (out / "heldout.md").read_text()


def row(doc: dict, source: str, method: str) -> dict:
    return next(r for r in doc["results"] if r["source"] == source and r["method"] == method)


def test_baseline_only_per_source(evaluate, folder, tmp_path, capsys):
    out = tmp_path / "out"
    assert evaluate.main(["--folder", str(folder), "--out", str(out), "--overlays", str(tmp_path / "ov")]) == 0
    doc, md = read(out)
    printed = capsys.readouterr().out
    assert md.strip() in printed
    # auto split: the test split of synth-fluo (its train sample is not evaluated), val of synth-he (no test)
    assert doc["sources"]["synth-fluo"]["split"] == "test" and doc["sources"]["synth-he"]["split"] == "val"
    fluo, hem = row(doc, "synth-fluo", "classical baseline"), row(doc, "synth-he", "classical baseline")
    assert (fluo["images"], fluo["objects"]) == (2, 10)
    assert (hem["images"], hem["objects"]) == (3, 4 + 5 + 6)
    assert [r["sample"] for r in fluo["per_image"]] == ["eval/fluo0", "eval/fluo1"]
    assert {r["variant"] for r in fluo["per_image"]} == {"grey"}
    assert {r["variant"] for r in hem["per_image"]} == {"hematoxylin"}
    # separated discs: the classical method finds them all
    for r in (fluo, hem):
        assert r["mean"]["f1@0.5"] == 1.0 and r["mean"]["aji"] > 0.85 and r["mean"]["pq"] > 0.85
        assert r["pooled"]["tp"] == r["objects"]
        per = r["per_image"][0]
        assert {"f1@0.5", "aji", "pq", "sq", "dq", "dice", "n_true", "n_pred"} <= per.keys()
    assert "| synth-fluo | test | 2 | 10 | classical baseline (Otsu + watershed) | - |" in md
    assert "| synth-he | val | 3 | 15 | classical baseline (hematoxylin + Otsu + watershed) | - |" in md
    # overlays: best and worst image of each source
    names = sorted(p.name for p in (tmp_path / "ov").iterdir())
    assert names == ["synth-fluo__classical-baseline__best.png", "synth-fluo__classical-baseline__worst.png",
                     "synth-he__classical-baseline__best.png", "synth-he__classical-baseline__worst.png"]
    import imageio.v3 as iio

    pic = iio.imread(tmp_path / "ov" / names[0])
    assert pic.shape == (96, 96, 3)
    green = (pic[..., 1] > 200) & (pic[..., 0] < 60)
    magenta = (pic[..., 0] > 200) & (pic[..., 1] < 80) & (pic[..., 2] > 200)
    assert green.sum() > 100 and magenta.sum() > 100          # reference and prediction outlines, both seen
    assert len(doc["overlays"]) == 4


def test_models_rows_say_which_sources_they_were_trained_on(evaluate, folder, tmp_path):
    # a package trained (as recorded) on a folder holding synth-fluo only
    train = TrainingFolder.create(tmp_path / "train", classes=("background", "nucleus"), task="instance")
    lab = discs(5)
    train.add_sample(fluorescence(lab, 5), lab, axes="YX", split="train", sample_id="t0",
                     extra=imported("synth-fluo"))
    lab = discs(0)                                   # the source image of the evaluated sample fluo0: a leak
    train.add_sample(fluorescence(lab, 0), lab, axes="YX", split="train", sample_id="t1", source="fluo/img0.tif",
                     extra=imported("synth-fluo"))
    spec = tiny_spec(name="tiny-fluo", training={"folders": [{"path": str(train.path),
                                                              "fingerprint": train.fingerprint()}]})
    save_package(tmp_path / "fluo-pkg", spec, tiny_state(spec))
    unknown = tiny_spec(name="tiny-unknown")
    save_package(tmp_path / "unknown-pkg", unknown, tiny_state(unknown, seed=1))

    out = tmp_path / "out"
    args = ["--folder", str(folder), "--model", str(tmp_path / "fluo-pkg"), "--model",
            str(tmp_path / "unknown-pkg"), "--device", "cpu", "--out", str(out)]
    assert evaluate.main(args) == 0
    doc, md = read(out)
    assert [(r["source"], r["method"], r["in_training"]) for r in doc["results"]] == [
        ("synth-fluo", "tiny-fluo", "yes"), ("synth-fluo", "tiny-unknown", "unknown"),
        ("synth-fluo", "classical baseline", "-"),
        ("synth-he", "tiny-fluo", "no"), ("synth-he", "tiny-unknown", "unknown"),
        ("synth-he", "classical baseline", "-")]
    assert doc["models"]["tiny-fluo"]["trained_on"]["sources"] == ["synth-fluo", "synthetic synth-fluo nuclei"]
    assert "| tiny-unknown | 0.0.1 | unknown | nothing recorded |" in md
    fluo = row(doc, "synth-fluo", "tiny-fluo")
    assert [r["seen_in_training"] for r in fluo["per_image"]] == ["train", None]
    assert "Warning: tiny-fluo saw 1 of the 2 evaluated synth-fluo images in training" in md
    assert "| synth-he | val | 3 | 15 | tiny-fluo | no |" in md
    # the model's figures are its own: an untrained network does not match the baseline's
    assert row(doc, "synth-he", "tiny-fluo")["mean"] != row(doc, "synth-he", "classical baseline")["mean"]
    # RGB on a 1-channel model: hematoxylin normalization passed (no stain= on this segloop's method)
    first = row(doc, "synth-he", "tiny-fluo")["per_image"][0]
    assert first.get("stain") == "auto" or first.get("normalization") == {"kind": "hematoxylin"}

    out2 = tmp_path / "cross"
    assert evaluate.main([*args[:-1], str(out2), "--cross"]) == 0
    _, md2 = read(out2)
    body = [ln for ln in md2.splitlines() if ln.startswith("| synth-")]
    assert body == [ln for ln in md.splitlines() if ln.startswith("| synth-he | val | 3 | 15 | tiny-fluo")
                    or ln.startswith("| synth-he | val | 3 | 15 | classical baseline")]


def test_training_folder_that_changed_makes_the_sources_unknown(evaluate, folder, tmp_path):
    spec = tiny_spec(name="tiny-moved", training={"folders": [{"path": str(tmp_path / "gone"),
                                                               "fingerprint": "0" * 64}]})
    save_package(tmp_path / "pkg", spec, tiny_state(spec))
    out = tmp_path / "out"
    assert evaluate.main(["--folder", str(folder), "--model", str(tmp_path / "pkg"), "--device", "cpu",
                          "--split", "test", "--out", str(out)]) == 0
    doc, md = read(out)
    assert {r["in_training"] for r in doc["results"] if r["kind"] == "model"} == {"unknown"}
    assert f"training folder {tmp_path / 'gone'} not found" in md
    assert set(doc["sources"]) == {"synth-fluo"}                 # synth-he has no test split


@pytest.mark.parametrize("case", ["missing", "no-split", "unknown-model", "mixed-options", "no-folder"])
def test_bad_input_is_one_line_and_exit_2(evaluate, folder, tmp_path, capsys, case):
    out = tmp_path / "out"
    argv = {"missing": ["--folder", str(tmp_path / "nope")],
            "no-split": ["--folder", str(folder), "--split", "test", "--folder", str(_only_val(tmp_path))],
            "unknown-model": ["--folder", str(folder), "--model", "no-such-model"],
            "mixed-options": ["--folder", str(folder), "--models", "nuclei-unet"],
            "no-folder": ["--model", "nuclei-unet", "--cross"]}[case]
    assert evaluate.main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err
    assert {"missing": "nope", "no-split": "no test samples", "unknown-model": "no-such-model",
            "mixed-options": "--models", "no-folder": "--model, --cross need --folder"}[case] in err
    assert not out.exists()


def _only_val(tmp_path: Path) -> Path:
    tf = TrainingFolder.create(tmp_path / "only-val", classes=("background", "nucleus"), task="instance")
    lab = discs(3)
    tf.add_sample(fluorescence(lab, 3), lab, axes="YX", split="val", sample_id="v0", extra=imported("x"))
    return tf.path
