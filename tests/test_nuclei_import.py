"""``segloop import nuinsseg|dsb2018-he|cpm15|consep``: each dataset's own label format, read from a
local copy laid out as the public repository is, becomes instance samples with provenance."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from segloop.core.formats.importers import NUCLEI_DATASETS, import_data, import_nuclei_dataset
from segloop.core.formats.importers.nuclei_sets import is_colour, read_cpm_mask, read_yolo_polygons
from segloop.core.formats.trainfolder import TrainingFolder
from segloop.errors import ImageReadError, ImportLayoutError, ImportSourceError

RNG = np.random.default_rng(0)


def _he_tile(h: int, w: int) -> np.ndarray:
    """A pinkish tile with purple discs: colour, as H&E."""
    img = np.empty((h, w, 3), np.uint8)
    img[...] = (235, 200, 220)
    yy, xx = np.mgrid[:h, :w]
    for cy, cx in ((h // 3, w // 3), (2 * h // 3, 2 * w // 3)):
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < 36] = (90, 40, 140)
    return img


def _disc_ids(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    lab = np.zeros((h, w), np.int32)
    lab[(yy - h // 3) ** 2 + (xx - w // 3) ** 2 < 36] = 1
    lab[(yy - 2 * h // 3) ** 2 + (xx - 2 * w // 3) ** 2 < 36] = 2
    return lab


def _yolo_line(cy: float, cx: float, r: float, h: int, w: int) -> str:
    t = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    pts = []
    for a in t:
        pts += [f"{(cx + r * np.cos(a)) / w:.6f}", f"{(cy + r * np.sin(a)) / h:.6f}"]
    return "0 " + " ".join(pts)


def make_nuinsseg(root: Path, per_split: int = 2) -> Path:
    base = root / "projects/NuInsSeg/InstanceSegmentation_sgc/datasets"
    for split in ("train", "val", "test"):
        (base / split / "images").mkdir(parents=True)
        (base / split / "labels").mkdir(parents=True)
        for i in range(per_split):
            iio.imwrite(base / split / "images" / f"human_organ_{split}{i}.png", _he_tile(64, 64))
            (base / split / "labels" / f"human_organ_{split}{i}.txt").write_text(
                _yolo_line(20, 20, 6, 64, 64) + "\n" + _yolo_line(44, 44, 6, 64, 64) + "\n")
    return root


def make_dsb(root: Path) -> Path:
    base = root / "stage1_train"
    for k, colour in enumerate((True, True, False)):
        sid = f"{k:064x}"
        d = base / sid
        (d / "images").mkdir(parents=True)
        (d / "masks").mkdir()
        img = _he_tile(48, 48) if colour else np.repeat(_he_tile(48, 48)[..., :1], 3, -1)
        rgba = np.concatenate([img, np.full((48, 48, 1), 255, np.uint8)], -1)
        iio.imwrite(d / "images" / f"{sid}.png", rgba)
        for n in (1, 2):
            iio.imwrite(d / "masks" / f"m{n}.png", ((_disc_ids(48, 48) == n) * 255).astype(np.uint8))
    return root


def _write_cpm_mask(path: Path, ids: np.ndarray) -> None:
    h, w = ids.shape
    path.write_text(f"{w} {h}\n" + "\n".join(str(v) for v in ids.ravel()) + "\n")


def make_cpm(root: Path, *, swap: bool = True) -> Path:
    base = root / "data/MICCAI_competition_dataset"
    base.mkdir(parents=True)
    sizes = {1: (40, 50), 2: (44, 52), 3: (36, 40), 4: (30, 34), 5: (46, 38)}
    readme = ["Image Name\tMagnification"]
    for k, (h, w) in sizes.items():
        iio.imwrite(base / f"image{k:02d}.png", _he_tile(h, w))
        readme.append(f"image{k:02d}.png \t\t{20 if k < 3 else 40}x")
    for k, (h, w) in sizes.items():
        src = {4: 5, 5: 4}.get(k, k) if swap else k
        _write_cpm_mask(base / f"image{src:02d}_mask.txt", _disc_ids(h, w))
    (base / "README_training.txt").write_text("\n".join(readme) + "\n")
    return root


def make_consep(root: Path) -> Path:
    base = root / "tests/resources/consep"
    for split, groups in (("train", ("train_1", "train_2", "train_3")), ("test", ("test_1",))):
        (base / "images" / split).mkdir(parents=True)
        (base / "inst" / split).mkdir(parents=True)
        for g in groups:
            for p in range(2):
                iio.imwrite(base / "images" / split / f"{g}_{p:03d}.png", _he_tile(32, 32))
                np.save(base / "inst" / split / f"{g}_{p:03d}.npy", _disc_ids(32, 32))
    return root


MAKERS = {"nuinsseg": make_nuinsseg, "dsb2018-he": make_dsb, "cpm15": make_cpm, "consep": make_consep}


@pytest.mark.parametrize("name", list(MAKERS))
def test_import_writes_instance_samples_with_provenance(tmp_path, name):
    src = MAKERS[name](tmp_path / "copy")
    rep = import_data(name, tmp_path / "folder", path=src)
    tf = TrainingFolder.open(tmp_path / "folder")
    assert tf.info.classes == ("background", "nucleus") and tf.info.task == "instance"
    assert tf.info.modality == "histology"
    recs = tf.samples()
    assert len(recs) == len(rep.written) > 0
    for rec in recs:
        s = tf.read_sample(rec)
        assert s.image.ndim == 3 and s.image.shape[-1] == 3
        assert len(np.unique(s.labels)) == 3                 # background + 2 nuclei
        imp = rec.meta["extra"]["import"]
        assert imp["importer"] == name and imp["licence"] == NUCLEI_DATASETS[name].licence
        assert imp["distribution"] == "github:" + NUCLEI_DATASETS[name].repository
        assert imp["objects"] == 2
    notice = (tmp_path / "folder" / "DATA-SOURCES.md").read_text()
    assert NUCLEI_DATASETS[name].repository in notice
    # a second run skips everything and reads nothing again
    rep2 = import_nuclei_dataset(name, src, tmp_path / "folder")
    assert rep2.written == [] and len(rep2.skipped) == len(recs)


def test_nuinsseg_keeps_its_splits_and_draws_polygons(tmp_path):
    src = make_nuinsseg(tmp_path / "copy")
    rep = import_nuclei_dataset("nuinsseg", src, tmp_path / "f")
    assert rep.split_counts == {"train": 2, "val": 2, "test": 2}
    tf = TrainingFolder.open(tmp_path / "f")
    s = tf.read_sample(tf.samples()[0])
    area = np.bincount(np.asarray(s.labels).ravel())[1:]
    assert np.all(np.abs(area - np.pi * 36) < 0.25 * np.pi * 36)   # r = 6 discs


def test_dsb_imports_colour_images_only(tmp_path):
    src = make_dsb(tmp_path / "copy")
    rep = import_nuclei_dataset("dsb2018-he", src, tmp_path / "f")
    assert len(rep.written) == 2
    assert any("greyscale" in n for n in rep.notices)
    for rec in TrainingFolder.open(tmp_path / "f").samples():
        assert rec.meta.get("spacing") is None               # unknown pixel size stays unknown


def test_cpm_pairs_swapped_masks_and_records_pixel_size(tmp_path):
    src = make_cpm(tmp_path / "copy")
    rep = import_nuclei_dataset("cpm15", src, tmp_path / "f")
    assert any("swapped" in n for n in rep.notices)
    spacing = {r.meta["extra"]["import"]["image_file"]: r.meta["spacing"]
               for r in TrainingFolder.open(tmp_path / "f").samples()}
    assert spacing["image01.png"] == [0.5, 0.5] and spacing["image05.png"] == [0.25, 0.25]
    assert rep.splits["cpm15-image03"] == "val"


def test_consep_split_keeps_patches_of_one_image_together(tmp_path):
    src = make_consep(tmp_path / "copy")
    rep = import_nuclei_dataset("consep", src, tmp_path / "f", val_fraction=0.5)
    by_group: dict[str, set] = {}
    for sid, split in rep.splits.items():
        by_group.setdefault(sid.rsplit("_", 1)[0], set()).add(split)
    assert all(len(v) == 1 for v in by_group.values())
    assert by_group["consep-test_1"] == {"test"}


def test_pixel_size_override(tmp_path):
    src = make_dsb(tmp_path / "copy")
    import_nuclei_dataset("dsb2018-he", src, tmp_path / "f", pixel_size=0.5)
    assert all(r.meta["spacing"] == [0.5, 0.5] for r in TrainingFolder.open(tmp_path / "f").samples())


def test_readers():
    assert is_colour(_he_tile(16, 16)) and not is_colour(np.repeat(_he_tile(16, 16)[..., :1], 3, -1))


# --------------------------------------------------------------------------- bad input: nothing written


def _corrupt_png(src: Path) -> Path:
    p = sorted(src.rglob("*.png"))[-1]
    p.write_bytes(p.read_bytes()[:40])
    return p


BAD = {
    "polygon outside": ("nuinsseg", lambda s: next(s.rglob("*.txt")).write_text(_yolo_line(20, 20, 6, 64, 64)
                                                                                .replace("0 0.", "0 1.9", 1) + "\n"),
                        ImportLayoutError, "outside the image"),
    "empty label file": ("nuinsseg", lambda s: sorted(s.rglob("*.txt"))[-1].write_text(""), ImportLayoutError,
                         "empty label file"),
    "odd coordinates": ("nuinsseg", lambda s: next(s.rglob("*.txt")).write_text("0 0.1 0.2 0.3\n"),
                        ImportLayoutError, "at least 3"),
    "missing label file": ("nuinsseg", lambda s: sorted(s.rglob("*.txt"))[-1].unlink(), ImportLayoutError,
                           "no label file"),
    "corrupt image": ("nuinsseg", _corrupt_png, ImageReadError, "cannot read"),
    "truncated cpm mask": ("cpm15", lambda s: (lambda p: p.write_text(p.read_text()[:200]))(
        sorted(s.rglob("*_mask.txt"))[-1]), ImportLayoutError, "truncated"),
    "corrupt npy": ("consep", lambda s: sorted(s.rglob("*.npy"))[-1].write_bytes(b"\x93NUMPY junk"), ImageReadError,
                    ".npy"),
    "dsb mask of another size": ("dsb2018-he", lambda s: iio.imwrite(sorted(s.rglob("masks/m1.png"))[0],
                                                                     np.zeros((10, 10), np.uint8)),
                                 ImportLayoutError, "differs"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_a_typed_error_naming_the_file_and_writes_nothing(tmp_path, case):
    name, damage, err, words = BAD[case]
    src = MAKERS[name](tmp_path / "copy")
    damage(src)
    with pytest.raises(err, match=words) as ei:
        import_nuclei_dataset(name, src, tmp_path / "f")
    assert str(tmp_path / "copy") in str(ei.value)
    assert not (tmp_path / "f").exists()


def test_not_the_dataset(tmp_path):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.png").write_bytes(b"")
    for name in NUCLEI_DATASETS:
        with pytest.raises(ImportSourceError, match="git clone"):
            import_nuclei_dataset(name, tmp_path / "other", tmp_path / "f")
    with pytest.raises(ImportSourceError, match="no such folder"):
        import_nuclei_dataset("cpm15", tmp_path / "missing", tmp_path / "f")
    assert not (tmp_path / "f").exists()


@pytest.mark.parametrize("px", ["0", "nan", "-1", "inf"])
def test_bad_pixel_size(tmp_path, px):
    src = make_dsb(tmp_path / "copy")
    with pytest.raises(ImportLayoutError, match="pixel size"):
        import_nuclei_dataset("dsb2018-he", src, tmp_path / "f", pixel_size=float(px))
    assert not (tmp_path / "f").exists()


def test_cli_imports_and_refuses_in_one_line(tmp_path):
    src = make_cpm(tmp_path / "copy")
    ok = subprocess.run([sys.executable, "-m", "segloop.cli", "import", "cpm15", "--from", str(src), "--folder",
                         str(tmp_path / "f")], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "cpm15: 5 sample(s) written" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "segloop.cli", "import", "consep", "--from", str(src), "--folder",
                          str(tmp_path / "g")], capture_output=True, text=True)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr
    assert not (tmp_path / "g").exists()
    bad = subprocess.run([sys.executable, "-m", "segloop.cli", "import", "cpm15", "--from", str(src), "--folder",
                          str(tmp_path / "h"), "--pixel-size", "0"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--pixel-size" in bad.stderr and not (tmp_path / "h").exists()


def test_yolo_and_cpm_readers_direct(tmp_path):
    p = tmp_path / "l.txt"
    p.write_text(_yolo_line(10, 10, 4, 32, 32) + "\n")
    assert read_yolo_polygons(p, (32, 32)).max() == 1
    m = tmp_path / "m.txt"
    _write_cpm_mask(m, np.array([[0, 1, 1], [2, 2, 0]]))
    np.testing.assert_array_equal(read_cpm_mask(m), [[0, 1, 1], [2, 2, 0]])
