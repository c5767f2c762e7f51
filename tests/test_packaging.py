"""Packaging: the wheel carries the manifest and the model; core stays free of Qt/napari."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    r = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(ROOT)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return next(out.glob("napari_segloop-*.whl"))


def test_wheel_contains_manifest_model_sample_and_training(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "segloop/napari.yaml" in names
    assert "segloop/models/nuclei-unet/model.safetensors" in names
    assert "segloop/models/nuclei-unet/segloop-model.json" in names
    assert "segloop/data/bbbc007_A9_p10d.tif" in names
    assert "segloop_train/train.py" in names
    # LiTS-trained CT models: non-commercial terms, kept out of the wheel (docs/data.md)
    assert (ROOT / "src/segloop/models/ct-liver-segunet25d/model.safetensors").is_file()
    assert not [n for n in names if n.startswith("segloop/models/ct-liver")]
    entry = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "napari-segloop = segloop:napari.yaml" in entry and "segloop = segloop.cli:main" in entry
    manifest = zipfile.ZipFile(wheel).read("segloop/napari.yaml").decode()
    assert manifest == (ROOT / "napari.yaml").read_text()
    big = [i for i in zipfile.ZipFile(wheel).infolist() if i.file_size > 10_000_000]
    assert not big, "bundled files must stay under 10 MB"


def test_weights_ship_only_when_their_training_data_allow_it(wheel):
    """A bundled model whose recorded training datasets include one that forbids shipping weights
    (docs/data.md, ``NucleiDataset.may_ship_weights``, ``RadiologyDataset.may_ship_weights``) is in the source tree and not in the wheel;
    the others are in the wheel."""
    from segloop.core.formats.importers import NUCLEI_DATASETS, RADIOLOGY_DATASETS, SOURCES
    from segloop.core.formats.package import read_spec

    terms = {**SOURCES, **NUCLEI_DATASETS, **RADIOLOGY_DATASETS}

    names = zipfile.ZipFile(wheel).namelist()
    checked = 0
    for d in sorted((ROOT / "src/segloop/models").iterdir()):
        datasets = (read_spec(d).training or {}).get("datasets")
        if not datasets:
            continue
        checked += 1
        shippable = all(terms[n].may_ship_weights for n in datasets)
        in_wheel = f"segloop/models/{d.name}/model.safetensors" in names
        assert in_wheel == shippable, f"{d.name}: trained on {datasets}, in wheel: {in_wheel}"
    assert checked == len([d for d in ("he-nuclei-unet", "fluo-nuclei-unet", "mri-brain-tumour-segunet25d",
                                       "ct-lung-tumour-segunet25d", "nuclei-click-unet", "ct-click-segunet25d")
                           if (ROOT / "src/segloop/models" / d / "segloop-model.json").is_file()])


def test_npe2_validates_the_manifest_with_imports():
    r = subprocess.run([sys.executable, "-m", "npe2", "validate", "napari-segloop", "--imports"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "valid" in r.stdout.lower(), r.stdout + r.stderr


def test_core_imports_no_qt_or_napari():
    code = ("import sys, segloop, segloop.core.inference.model, segloop.core.inference.tiling, segloop.core.inference.engines, "
            "segloop.cli, segloop_train.train; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide2', "
            "'PySide6', 'magicgui', 'vispy')]; print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_no_module_uses_pickle_or_unsafe_torch_load():
    for p in (ROOT / "src").rglob("*.py"):
        text = p.read_text()
        assert "import pickle" not in text, p
        for line in text.splitlines():
            if "torch.load(" in line:
                assert "weights_only=True" in line, f"{p}: {line}"
