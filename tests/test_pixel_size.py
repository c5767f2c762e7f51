"""Resolution awareness: a model runs at the pixel size it was trained at, labels come back on the image's grid.

The image: discs of radius 5 µm at 0.5 µm/px (10 px), a model at 0.25 µm/px.  Where the
segmentation itself matters, the engine is a toy predictor (the sliding window takes any
callable: MONAI's pattern) that calls bright pixels interior and records the widest disc it was
shown, so the tests see what the network saw.  Elsewhere a tiny untrained network checks the
plumbing (shapes, scales, provenance), never accuracy.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
from skimage.draw import disk
from skimage.measure import label as cc_label

from segloop.core.formats.package import ModelPackage, save_package
from segloop.core.formats.pixel_size import parse_pixel_size
from segloop.core.formats.trainfolder import TrainingFolder
from segloop.core.inference.model import Model
from segloop.core.inference.resolution import PixelSizeWarning, ResampledImage, plan_rescale
from segloop.errors import InvalidPixelSizeError

from .conftest import tiny_spec, tiny_state

MODEL_PX = 0.25                    # µm per pixel the model "was trained at"
IMAGE_PX = 0.5                     # the image: twice as coarse
RADIUS_UM = 5.0
CENTRES = [(30, 30), (30, 100), (95, 60), (150, 140), (160, 40), (100, 150)]


def discs(pixel_size: float = IMAGE_PX, shape=(200, 180), scale: float = 1.0) -> np.ndarray:
    """uint8 image of len(CENTRES) bright discs of RADIUS_UM µm on a dark background."""
    img = np.full(shape, 10, np.uint8)
    r = RADIUS_UM / pixel_size
    for y, x in CENTRES:
        img[disk((y * scale, x * scale), r, shape=img.shape)] = 200
    return img


def model_at(pixel_size=(MODEL_PX, MODEL_PX)) -> Model:
    spec = tiny_spec(pixel_size=pixel_size)
    return Model(ModelPackage(spec, tiny_state(spec)), device="cpu")


class DiscPredictor:
    """Bright pixels are interior: ``(B, 1, h, w)`` normalized -> ``(B, 3, h, w)`` probabilities.

    ``widest`` is the longest horizontal run of bright pixels in any tile: the diameter, in the
    network's pixels, of the discs it was shown.
    """

    def __init__(self):
        self.widest = 0

    def __call__(self, x: np.ndarray) -> np.ndarray:
        fg = x[:, 0] > 0.5
        for row in fg.reshape(-1, fg.shape[-1]):
            if row.any():
                edges = np.flatnonzero(np.diff(np.concatenate([[0], row.astype(np.int8), [0]])))
                self.widest = max(self.widest, int((edges[1::2] - edges[::2]).max()))
        p = np.zeros((x.shape[0], 3, *x.shape[2:]), np.float32)
        p[:, 1] = fg
        p[:, 0] = ~fg
        return p


def toy(model: Model) -> DiscPredictor:
    model.predictor = DiscPredictor()
    return model.predictor


def unknown_notices(caught) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, PixelSizeWarning)]


# ---------------------------------------------------------------------------- inference


def test_a_coarser_image_is_enlarged_to_the_models_pixel_size_and_labels_come_back_on_its_grid():
    model = model_at()
    seen = toy(model)
    img = discs()
    res = model.predict(img, pixel_size=IMAGE_PX)
    px = res.provenance["pixel_size"]
    assert px["resampled"] and px["scale"] == [2.0, 2.0] and px["model_grid"] == [400, 360]
    assert px["image"] == [IMAGE_PX, IMAGE_PX] and px["model"] == [MODEL_PX, MODEL_PX]
    assert 38 <= seen.widest <= 42                      # the network saw 10 µm discs as 40 px wide
    assert res.labels.shape == img.shape and res.labels.dtype == np.uint16
    assert res.n_objects == len(CENTRES) == len(np.unique(res.labels)) - 1
    ids = {int(res.labels[y, x]) for y, x in CENTRES}
    assert 0 not in ids and len(ids) == len(CENTRES)     # one object per disc, ids kept
    area = np.pi * (RADIUS_UM / IMAGE_PX) ** 2
    for i in ids:
        assert abs(np.count_nonzero(res.labels == i) - area) < 0.15 * area


def test_the_same_image_without_a_pixel_size_runs_natively_with_one_notice():
    model = model_at()
    seen = toy(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = model.predict(discs())
    notes = unknown_notices(caught)
    assert len(notes) == 1 and "\n" not in notes[0]
    assert "expects 0.25 µm/px" in notes[0] and "unknown" in notes[0] and "--pixel-size" in notes[0]
    assert 18 <= seen.widest <= 22                      # native: 20 px wide
    px = res.provenance["pixel_size"]
    assert not px["resampled"] and px["image"] is None and px["model"] == [MODEL_PX, MODEL_PX]
    assert res.n_objects == len(CENTRES)


def test_a_model_without_a_pixel_size_changes_nothing_and_says_nothing():
    model = model_at(pixel_size=None)
    seen = toy(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = model.predict(discs(), pixel_size=IMAGE_PX)
        model.predict(discs())
    assert not unknown_notices(caught)
    assert 18 <= seen.widest <= 22 and not res.provenance["pixel_size"]["resampled"]
    assert res.provenance["pixel_size"]["model"] is None


def test_within_five_percent_is_the_same_pixel_size():
    model = model_at()
    toy(model)
    assert not model.predict(discs(), pixel_size=0.26).provenance["pixel_size"]["resampled"]
    assert model.predict(discs(), pixel_size=0.27).provenance["pixel_size"]["resampled"]
    assert plan_rescale(model.spec, (0.25, 0.26), (10, 10)) is None
    plan = plan_rescale(model.spec, (0.25, 0.5), (10, 10))
    assert plan.factor == (1.0, 2.0) and plan.model_shape == (10, 20)


def test_a_finer_image_is_shrunk_anti_aliased_and_mapped_back():
    model = model_at()
    seen = toy(model)
    img = discs(0.125, shape=(800, 720), scale=4)          # 40 px discs at 0.125 µm/px
    res = model.predict(img, pixel_size=0.125, uncertainty=True, probabilities=True)
    px = res.provenance["pixel_size"]
    assert px["scale"] == [0.5, 0.5] and px["model_grid"] == [400, 360]
    assert 38 <= seen.widest <= 42
    assert res.labels.shape == img.shape and res.n_objects == len(CENTRES)
    assert res.uncertainty.shape == img.shape and res.probabilities.shape == (3, *img.shape)
    np.testing.assert_allclose(res.probabilities.astype(np.float32).sum(0), 1, atol=2e-3)


def test_anisotropic_pixels_stacks_and_z_range():
    model = model_at()
    toy(model)
    img = discs()
    stack = np.stack([img, img[::-1], img])
    res = model.predict(stack, pixel_size=(0.5, 0.25), z_range=(1, 3))
    assert res.provenance["pixel_size"]["scale"] == [2.0, 1.0]
    assert res.provenance["pixel_size"]["model_grid"] == [400, 180]
    assert res.labels.shape == (2, *img.shape) and res.n_objects == 2 * len(CENTRES)
    assert (res.labels[0] > 0).sum() == (res.labels[1][::-1] > 0).sum()


def test_a_memmap_out_gets_the_labels_and_no_scratch_file_is_left(tmp_path):
    from segloop.core.formats.io.images import create_label_memmap

    model = model_at()
    toy(model)
    img = discs()
    out = create_label_memmap(tmp_path / "labels.tif", img.shape, np.uint16)
    res = model.predict(img, pixel_size=IMAGE_PX, out=out)
    assert res.labels is out and res.n_objects == len(CENTRES) and out.max() > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.tif"]


def test_the_real_network_runs_resampled_and_returns_the_input_grid():
    model = model_at()
    img = discs()
    res = model.predict(img, pixel_size=IMAGE_PX, uncertainty=True)
    assert res.labels.shape == res.uncertainty.shape == img.shape
    assert res.provenance["pixel_size"]["scale"] == [2.0, 2.0] and res.provenance["image_shape"] == list(img.shape)
    rgb = np.stack([discs()] * 3, axis=-1)
    spec = tiny_spec(pixel_size=(MODEL_PX, MODEL_PX), in_channels=3)
    res = Model(ModelPackage(spec, tiny_state(spec)), device="cpu").predict(rgb, pixel_size=IMAGE_PX)
    assert res.labels.shape == rgb.shape[:2]


@pytest.mark.parametrize("bad", [0, -0.5, float("nan"), float("inf"), (0.5, 0.5, 0.5), "abc", 10.0, 0.001])
def test_bad_pixel_sizes_are_refused(bad):
    model = model_at()
    with pytest.raises(InvalidPixelSizeError, match="pixel size"):
        model.predict(discs(), pixel_size=bad)


def test_tiles_of_the_resampled_view_are_the_whole_image_resampled():
    from skimage.transform import resize

    rng = np.random.default_rng(0)
    img = (rng.random((101, 77, 3)) * 255).astype(np.uint8)
    for shape in [(202, 154), (50, 38), (130, 60)]:
        view = ResampledImage(img, shape, stack=False, channel_axis=-1)
        whole = np.asarray(view)
        assert whole.shape == (*shape, 3) and whole.dtype == np.uint8
        for ys, xs in [(slice(10, 40), slice(5, 30)), (slice(shape[0] - 7, None), slice(0, 3))]:
            np.testing.assert_array_equal(view[ys, xs], whole[ys, xs])
        ref = resize(img.astype(float), (*shape, 3), order=1, anti_aliasing=shape[0] < 101, preserve_range=True)
        assert np.abs(whole[4:-4, 4:-4] - ref[4:-4, 4:-4]).max() <= 0.51    # rounding to uint8
        assert view[::4, ::4].shape[:2] == whole[::4, ::4].shape[:2]


def test_uncertainty_passes_run_resampled_with_one_notice_when_unknown():
    from segloop.core.inference.uncertainty import estimate_uncertainty

    model = model_at()
    toy(model)
    img = discs()[:, :150]
    res = estimate_uncertainty(model, img, methods=("entropy", "tta"), tta_flips=8, pixel_size=(0.5, 0.4))
    assert res.labels.shape == img.shape and all(m.shape == img.shape for m in res.maps.values())
    assert res.provenance["pixel_size"]["scale"] == [2.0, 1.6] and res.n_objects == len(CENTRES)
    assert float(res.maps["tta"].max()) < 0.05          # flips, transposes too, agree on the image's grid
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = estimate_uncertainty(model, img, methods=("entropy", "tta"))
    assert len(unknown_notices(caught)) == 1 and res.provenance["pixel_size"]["image"] is None


def test_pixel_size_text():
    assert parse_pixel_size("0.25") == (0.25, 0.25) and parse_pixel_size(" 0.5 , 0.25") == (0.5, 0.25)
    for bad in ["", "0", "-1", "nan", "inf", "abc", "1,2,3", "0.5,"]:
        with pytest.raises(InvalidPixelSizeError, match="--pixel-size"):
            parse_pixel_size(bad)


def test_tiff_ome_and_imagej_pixel_sizes_are_read(tmp_path):
    from segloop.core.formats.io.images import read_image

    img = np.zeros((32, 32), np.uint8)
    tifffile.imwrite(tmp_path / "a.ome.tif", img, metadata={"axes": "YX", "PhysicalSizeX": 0.5,
                                                            "PhysicalSizeY": 0.25})
    tifffile.imwrite(tmp_path / "b.ome.tif", img, metadata={"axes": "YX", "PhysicalSizeX": 250, "PhysicalSizeXUnit": "nm",
                                                            "PhysicalSizeY": 250, "PhysicalSizeYUnit": "nm"})
    tifffile.imwrite(tmp_path / "c.tif", img, imagej=True, resolution=(1 / 0.3, 1 / 0.3), metadata={"unit": "micron"})
    tifffile.imwrite(tmp_path / "d.tif", img, resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")
    tifffile.imwrite(tmp_path / "e.tif", img)
    got = {p: read_image(tmp_path / p)[1].pixel_size for p in ("a.ome.tif", "b.ome.tif", "c.tif", "d.tif", "e.tif")}
    assert got["a.ome.tif"] == (0.25, 0.5) and got["b.ome.tif"] == pytest.approx((0.25, 0.25))
    assert got["c.tif"] == pytest.approx((0.3, 0.3)) and got["d.tif"] == pytest.approx((0.5, 0.5))
    assert got["e.tif"] is None


def test_a_package_with_a_bad_pixel_size_is_refused(tmp_path):
    from segloop.core.formats.package import read_spec
    from segloop.errors import ModelPackageError

    spec = tiny_spec(pixel_size=(MODEL_PX, MODEL_PX))
    save_package(tmp_path / "p", spec, tiny_state(spec))
    assert read_spec(tmp_path / "p").pixel_size == (MODEL_PX, MODEL_PX)
    d = json.loads((tmp_path / "p" / "segloop-model.json").read_text())
    for bad in ([0, 0.25], "abc", [float("nan")]):
        d["pixel_size"] = bad
        (tmp_path / "p" / "segloop-model.json").write_text(json.dumps(d))
        with pytest.raises(ModelPackageError, match="pixel_size"):
            read_spec(tmp_path / "p")


# ---------------------------------------------------------------------------- the command line


@pytest.fixture
def pkg(tmp_path) -> Path:
    spec = tiny_spec(pixel_size=(MODEL_PX, MODEL_PX))
    save_package(tmp_path / "pkg", spec, tiny_state(spec))
    return tmp_path / "pkg"


def _tif(path: Path, pixel_size: float | None = None, **kw) -> str:
    if pixel_size is not None:
        kw.update(resolution=(1e4 / pixel_size, 1e4 / pixel_size), resolutionunit="CENTIMETER")
    tifffile.imwrite(path, discs(), **kw)
    return str(path)


def test_cli_takes_the_pixel_size_from_the_file_and_writes_labels_on_its_grid(tmp_path, pkg, capsys):
    from segloop.cli import main

    src = _tif(tmp_path / "slide.tif", IMAGE_PX)
    assert main(["predict", src, "--model", str(pkg), "--out", str(tmp_path / "r")]) == 0
    cap = capsys.readouterr()
    assert "run at the model's 0.25 µm/px (image 0.5 µm/px, scaled x2)" in cap.out and "note" not in cap.err
    assert tifffile.imread(tmp_path / "r" / "slide_labels.tif").shape == discs().shape
    prov = json.loads((tmp_path / "r" / "slide_provenance.json").read_text())["pixel_size"]
    assert prov["image_source"] == "file metadata" and prov["scale"] == [2.0, 2.0]
    # --pixel-size overrides the file
    assert main(["predict", src, "--model", str(pkg), "--out", str(tmp_path / "r2"), "--pixel-size", "0.125"]) == 0
    prov = json.loads((tmp_path / "r2" / "slide_provenance.json").read_text())["pixel_size"]
    assert prov["image_source"] == "--pixel-size" and prov["scale"] == [0.5, 0.5]
    assert tifffile.imread(tmp_path / "r2" / "slide_labels.tif").shape == discs().shape


def test_cli_unknown_pixel_size_is_one_note_line(tmp_path, pkg, capsys):
    from segloop.cli import main

    src = _tif(tmp_path / "plain.tif")
    assert main(["predict", src, "--model", str(pkg), "--out", str(tmp_path / "r")]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    notes = [ln for ln in err if "pixel size is unknown" in ln]
    assert len(notes) == 1 and notes[0].startswith("segloop: note: ") and "--pixel-size" in notes[0]
    assert "expects 0.25 µm/px" in notes[0]


@pytest.mark.parametrize("bad", ["0", "-1", "nan", "inf", "abc", "0.5,0.5,0.5", "", "0,0.5"])
def test_cli_bad_pixel_size_is_one_line_exit_2_and_writes_nothing(tmp_path, pkg, capsys, bad):
    from segloop.cli import main

    src = _tif(tmp_path / "plain.tif")
    rc = main(["predict", src, "--model", str(pkg), "--out", str(tmp_path / "r"), "--pixel-size", bad])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith("segloop: error: --pixel-size")
    assert not (tmp_path / "r").exists()


def test_cli_a_72_dpi_tag_is_refused_naming_the_file_and_the_flag(tmp_path, pkg, capsys):
    from segloop.cli import main

    src = str(tmp_path / "print.tif")
    tifffile.imwrite(src, discs(), resolution=(72, 72), resolutionunit="INCH")
    rc = main(["predict", src, "--model", str(pkg), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "print.tif" in err and "--pixel-size" in err and "352.8" in err
    assert not (tmp_path / "r" / "print_labels.tif").exists()
    assert main(["predict", src, "--model", str(pkg), "--out", str(tmp_path / "r"), "--pixel-size", "0.5"]) == 0


def test_cli_info_shows_the_pixel_size(pkg, capsys):
    from segloop.cli import main

    assert main(["info", str(pkg)]) == 0
    assert "pixel size:    0.25 µm/px" in capsys.readouterr().out


# ---------------------------------------------------------------------------- training


def _folder(path: Path) -> TrainingFolder:
    """Three 2D samples: at 0.5 µm/px, of unknown pixel size, and at napari's unit scale (unknown)."""
    img = discs()
    lab = cc_label(img > 100).astype(np.uint16)
    rev = np.ones(img.shape, np.uint8)
    rev[:, :20] = 0
    tf = TrainingFolder.create(path, classes=("background", "nucleus"), task="instance")
    tf.add_sample(img, lab, rev, axes="YX", source="a.tif", split="train", sample_id="coarse", spacing=[0.5, 0.5])
    tf.add_sample(img, lab, rev, axes="YX", source="b.tif", split="train", sample_id="unknown")
    tf.add_sample(img, lab, rev, axes="YX", source="c.tif", split="val", sample_id="unit", spacing=[1.0, 1.0])
    return tf


def test_training_samples_are_resampled_to_the_models_pixel_size(tmp_path):
    from segloop_train.folders import load_folders

    _folder(tmp_path / "f")
    img = discs()
    loaded = load_folders(tmp_path / "f", spec=tiny_spec(pixel_size=(MODEL_PX, MODEL_PX)))
    by_id = {s.meta["sample_id"]: s for s in [*loaded.train, *loaded.val]}
    coarse = by_id["coarse"]
    assert coarse.image.shape == coarse.labels.shape == coarse.reviewed.shape == (400, 360)
    assert coarse.image.dtype == np.uint8 and coarse.labels.dtype == np.uint16
    assert coarse.meta["pixel_size"] == [MODEL_PX, MODEL_PX] and coarse.meta["resampled_from"] == [0.5, 0.5]
    assert coarse.meta["scale"] == [2.0, 2.0]
    lab = cc_label(img > 100)
    assert set(np.unique(coarse.labels)) == set(np.unique(lab))              # nearest: the same ids
    assert np.array_equal(coarse.labels[::2, ::2], lab) and np.array_equal(coarse.labels[1::2, 1::2], lab)
    assert not coarse.reviewed[:, :40].any() and coarse.reviewed[:, 40:].all()
    area = np.pi * (RADIUS_UM / MODEL_PX) ** 2
    assert abs(np.count_nonzero(coarse.labels == coarse.labels[60, 60]) - area) < 0.1 * area
    for sid in ("unknown", "unit"):
        assert by_id[sid].image.shape == img.shape and by_id[sid].meta["pixel_size"] is None
    assert loaded.pixel_size == (MODEL_PX, MODEL_PX)
    assert loaded.folders[0].resampled == 1 and loaded.folders[0].unknown_pixel_size == 2
    assert any("1 sample(s) resampled to 0.25 µm/px" in n for n in loaded.warnings)
    assert any("2 sample(s) have no pixel size" in n for n in loaded.warnings)
    # a model without a pixel size reads every sample as it is
    plain = load_folders(tmp_path / "f", spec=tiny_spec())
    assert all(s.image.shape == img.shape for s in plain.train) and plain.pixel_size is None


def test_from_scratch_records_its_pixel_size_and_a_fine_tune_keeps_the_parents(tmp_path):
    import segloop
    from segloop.errors import ModelPackageError
    from segloop_train.finetune import finetune

    _folder(tmp_path / "f")
    fast = dict(batch=2, patch=32, device="cpu", onnx=False, steps=1)
    res = finetune(tmp_path / "f", parent=None, arch="unet", arch_kwargs={"depth": 2, "base_width": 4},
                   out=tmp_path / "m", pixel_size=0.25, **fast)
    spec = segloop.load_model(tmp_path / "m", device="cpu").spec
    assert spec.pixel_size == (0.25, 0.25) and res.spec.pixel_size == (0.25, 0.25)
    assert spec.training["config"]["pixel_size"] == [0.25, 0.25]
    assert spec.training["folders"][0]["resampled"] == 1
    assert "pixel size 0.25 µm/px" in (tmp_path / "m" / "MODEL_CARD.md").read_text()
    child = finetune(tmp_path / "f", parent=tmp_path / "m", out=tmp_path / "m2", **fast)
    assert child.spec.pixel_size == (0.25, 0.25)
    with pytest.raises(ModelPackageError, match="keeps its parent's pixel size"):
        finetune(tmp_path / "f", parent=tmp_path / "m", out=tmp_path / "m3", pixel_size=0.5, **fast)


def test_resume_keys_know_the_pixel_size_and_old_checkpoints_still_resume():
    from segloop_train.config import RESUME_KEYS, FinetuneConfig, resume_value

    cfg = FinetuneConfig(steps=1, steps_per_epoch=1, batch=1, patch=32, lr=1e-3, weight_decay=0.0, class_weights=None,
                         eval_every=1, checkpoint_every=1, patience=None, seed=0, grad_clip=1.0, augment={},
                         normalization={})
    assert "pixel_size" in RESUME_KEYS
    assert resume_value("pixel_size", {}) is None                  # a checkpoint written before the key ...
    assert cfg.to_dict()["pixel_size"] is None                       # ... resumes a run without a pixel size
    assert FinetuneConfig(**{**vars(cfg), "pixel_size": (0.25, 0.25)}).to_dict()["pixel_size"] == [0.25, 0.25]


@pytest.mark.parametrize("bad", ["0", "nan", "abc", "1,2,3"])
def test_segloop_train_bad_pixel_size_is_one_line_exit_2(tmp_path, capsys, bad):
    from segloop_train.cli import main

    with pytest.raises(SystemExit) as e:
        main([str(tmp_path), "--arch", "unet", "--out", str(tmp_path / "m"), "--pixel-size", bad])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "--pixel-size" in err


def test_pixel_size_is_for_2d_models_only(tmp_path):
    from segloop_train.config import FinetuneOptions

    with pytest.raises(ValueError, match="for 2D models"):
        FinetuneOptions.from_kwargs(tmp_path, parent=None, arch="unet", out=tmp_path / "m", dims=3,
                                    pixel_size=0.25).validate()
