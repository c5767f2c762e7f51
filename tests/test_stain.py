"""Stain robustness: stain normalization at inference (Macenko, Reinhard) and RGB training augmentation.

Synthetic H&E images are rendered from known stain vectors and concentrations (Beer-Lambert,
``rgb = exp(-C @ stains)``), so what a normalization should give back is known exactly.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from segloop.core.formats.normalization import (
    MACENKO_REFERENCE,
    REINHARD_REFERENCE,
    Percentile,
    Scale,
    StainNorm,
    describe,
    spec_from_dict,
)
from segloop.core.formats.package import ModelSpec, read_spec, save_package
from segloop.core.inference.normalize import Normalizer
from segloop.core.inference.stain import stain_normalization
from segloop.core.inference.stain_norm import (
    fit_stain_norm,
    fit_stain_target,
    lab_to_rgb,
    rgb_to_lab,
    tissue_mask,
)
from segloop.errors import InvalidImageError, ModelPackageError
from segloop_train.augment import (
    PHOTOMETRIC_KEYS,
    AugmentConfig,
    AugmentedPatchSampler,
    color_jitter,
    gaussian_blur,
    jpeg_artifacts,
    photometric_jitter,
)
from segloop_train.config import resume_value

from .conftest import tiny_spec, tiny_state

REF = np.array(MACENKO_REFERENCE["stain_matrix"])
#: scikit-image's hematoxylin and eosin vectors (rgb_from_hed), normalized: another lab's stains
OTHER = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11]])
OTHER = OTHER / np.linalg.norm(OTHER, axis=1, keepdims=True)


def _concentrations(shape=(192, 192), seed=0) -> np.ndarray:
    """(H, W, 2) hematoxylin / eosin concentrations: nuclei blobs on eosin stroma, some white."""
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    c = np.zeros((h, w, 2))
    c[..., 1] = rng.exponential(0.22, (h, w))                        # stroma
    for _ in range(40):                                              # nuclei
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(4, 9)
        inside = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        c[inside, 0] = rng.uniform(0.8, 1.6) + rng.normal(0, 0.1, inside.sum())
    c[..., 0] += rng.exponential(0.1, (h, w))
    c[: h // 6] = 0.0                                                # background (glass)
    return np.clip(c, 0.0, None)


def _render(conc: np.ndarray, stains: np.ndarray) -> np.ndarray:
    """uint8 RGB of concentrations through unit stain vectors (Beer-Lambert, white = 255)."""
    return np.clip(np.rint(255.0 * np.exp(-conc @ stains)), 0, 255).astype(np.uint8)


def _normalized_rgb(image: np.ndarray, stain_norm: dict) -> tuple[np.ndarray, Normalizer]:
    """``image`` stain-normalized, as RGB 0-255 (channels last), and the normalizer."""
    norm = Normalizer.fit(Scale(in_min=0, in_max=255, stain_norm=stain_norm), image, channel_axis=-1)
    return np.moveaxis(norm(image), 0, -1) * 255.0, norm


@pytest.fixture(scope="module")
def he_pair():
    """The same tissue stained in the reference lab and, more weakly, in another lab."""
    conc = _concentrations()
    return _render(conc, REF), _render(conc * np.array([0.7, 1.3]), OTHER)


# --------------------------------------------------------------------------- Macenko / Reinhard


def test_macenko_maps_a_restained_image_back_to_the_target(he_pair):
    reference, restained = he_pair
    target = fit_stain_target("macenko", reference)
    before = np.abs(restained.astype(float) - reference).mean()
    out, norm = _normalized_rgb(restained, target)
    stats = norm.stats["stain_norm"]
    assert stats["applied"] and stats["target_source"] == "spec"
    # the fitted source stains are the other lab's, the output's are the target's
    assert np.abs(np.array(stats["source"]["stain_matrix"]) - OTHER).max() < 0.05
    want = np.array(target["target"]["stain_matrix"])
    assert np.abs(np.array(stats["source"]["stain_matrix"]) - want).max() > 0.3
    after = fit_stain_target("macenko", np.rint(out).astype(np.uint8))["target"]
    assert np.abs(np.array(after["stain_matrix"]) - want).max() < 0.05          # about 2 degrees
    assert np.allclose(after["max_concentrations"], target["target"]["max_concentrations"], rtol=0.15)
    # pixel by pixel the image is back near the reference (what the two stains do not explain is dropped)
    err = np.abs(out - reference).mean()
    assert before > 12 and err < 0.3 * before, (before, err)


def test_macenko_fit_recovers_known_stain_vectors(he_pair):
    reference, _ = he_pair
    fitted = np.array(fit_stain_norm({"method": "macenko"}, reference.reshape(-1, 3) / 255.0)["source"]["stain_matrix"])
    assert np.abs(fitted - REF).max() < 0.05                          # hematoxylin first, then eosin


def test_reinhard_matches_the_target_colour_statistics(he_pair):
    reference, restained = he_pair
    target = fit_stain_target("reinhard", reference)
    out, norm = _normalized_rgb(restained, target)
    assert norm.stats["stain_norm"]["applied"]
    tissue = tissue_mask(restained / 255.0)                          # the pixels the fit used
    lab = rgb_to_lab(out[tissue] / 255.0)
    tmean, tstd = np.array(target["target"]["lab_mean"]), np.array(target["target"]["lab_std"])
    src = rgb_to_lab(restained[tissue] / 255.0)
    assert np.abs(src.mean(0) - tmean).max() > 5                     # it was off before
    assert np.abs(lab.mean(0) - tmean).max() < 1.5 and np.abs(lab.std(0) - tstd).max() < 1.5


def test_builtin_targets_describe_the_same_he():
    """REINHARD_REFERENCE is the CIELAB tissue statistics of H&E rendered from MACENKO_REFERENCE."""
    rng = np.random.default_rng(0)
    conc = rng.exponential(1.0, (1_000_000, 2)) * np.array(MACENKO_REFERENCE["max_concentrations"]) / np.log(100)
    rgb = np.exp(-conc @ REF)
    lab = rgb_to_lab(rgb[tissue_mask(rgb)])
    assert np.allclose(lab.mean(0), REINHARD_REFERENCE["lab_mean"], atol=0.05)
    assert np.allclose(lab.std(0), REINHARD_REFERENCE["lab_std"], atol=0.05)


def test_lab_conversion_matches_scikit_image_and_inverts():
    from skimage.color import rgb2lab

    rgb = np.random.default_rng(1).uniform(0, 1, (500, 3))
    assert np.abs(rgb_to_lab(rgb) - rgb2lab(rgb)).max() < 1e-6
    assert np.abs(lab_to_rgb(rgb_to_lab(rgb)) - rgb).max() < 1e-6


@pytest.mark.parametrize("method", ["macenko", "reinhard"])
@pytest.mark.parametrize("kind", ["percentile", "hematoxylin"])
def test_tiles_equal_the_whole_image(ihc_image, method, kind):
    norm = Normalizer.fit({"kind": kind, "stain_norm": {"method": method}}, ihc_image, channel_axis=-1)
    assert norm.stats["stain_norm"]["applied"]
    whole = norm(ihc_image)
    tile = norm(ihc_image[100:228, 37:229])
    assert np.array_equal(whole[:, 100:228, 37:229], tile)           # one fit, the same map everywhere
    rebuilt = Normalizer.from_stats(norm.spec, json.loads(json.dumps(norm.stats)), channel_axis=-1)
    assert np.array_equal(rebuilt(ihc_image), whole)
    plain = Normalizer.fit({"kind": kind}, ihc_image, channel_axis=-1)
    assert not np.allclose(plain(ihc_image), whole)                 # it did something


def test_white_only_image_is_left_alone_and_says_why():
    white = np.full((64, 80, 3), 250, np.uint8)
    white[5, 5] = (120, 60, 150)                                     # one stained pixel is not tissue
    for method in ("macenko", "reinhard"):
        norm = Normalizer.fit(Percentile(stain_norm={"method": method}), white, channel_axis=-1)
        sn = norm.stats["stain_norm"]
        assert sn["applied"] is False and "no tissue" in sn["reason"] and sn["tissue_pixels"] == 1
        out = norm(white)
        assert np.isfinite(out).all()
        assert np.array_equal(out, Normalizer.fit(Percentile(), white, channel_axis=-1)(white))


def test_one_stain_tissue_is_left_alone():
    conc = _concentrations()
    conc[..., 1] = 0.0                                                # hematoxylin only
    img = _render(conc, REF)
    sn = Normalizer.fit(Percentile(stain_norm={"method": "macenko"}), img, channel_axis=-1).stats["stain_norm"]
    assert sn["applied"] is False and "one stain" in sn["reason"]


def test_nan_pixels_become_zero_and_the_rest_is_mapped(he_pair):
    _, restained = he_pair
    img = restained.astype(np.float32)
    img[50, 60, 1] = np.nan
    norm = Normalizer.fit(Percentile(stain_norm={"method": "macenko"}), img, channel_axis=-1)
    out = norm(img)
    assert np.isfinite(out).all() and np.all(out[:, 50, 60] == 0)
    assert norm.stats["sample_nonfinite"] == 1 and norm.stats["stain_norm"]["applied"]


@pytest.mark.parametrize("image, channel_axis", [
    (np.zeros((32, 32), np.uint8), None),
    (np.zeros((32, 32, 2), np.uint8), -1),
])
def test_stain_normalization_needs_rgb(image, channel_axis):
    with pytest.raises(InvalidImageError, match="RGB"):
        Normalizer.fit(Percentile(stain_norm={"method": "reinhard"}), image, channel_axis=channel_axis)


def test_fit_stain_target_refuses_what_it_cannot_fit():
    with pytest.raises(InvalidImageError, match="no tissue"):
        fit_stain_target("macenko", np.full((32, 32, 3), 255, np.uint8))
    with pytest.raises(InvalidImageError, match="RGB"):
        fit_stain_target("reinhard", np.zeros((32, 32), np.uint8))
    with pytest.raises(ModelPackageError, match="unknown stain_norm method"):
        fit_stain_target("vahadane", np.zeros((32, 32, 3), np.uint8))


# --------------------------------------------------------------------------- the spec


def test_spec_round_trip_and_older_specs_unchanged(he_pair, tmp_path):
    target = fit_stain_target("macenko", he_pair[0])
    d = {"kind": "percentile", "schema_version": 1, "low": 1.0, "high": 99.8, "per_channel": True,
         "stain_norm": target}
    spec = spec_from_dict(d)
    assert isinstance(spec.stain_norm, StainNorm) and spec.to_dict() == d
    assert spec_from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert "stain_norm" not in Percentile().to_dict()                  # older packages read and write the same
    assert spec_from_dict({"kind": "scale", "stain_norm": "reinhard"}).to_dict()["stain_norm"] == {"method": "reinhard"}
    assert describe(spec).startswith("macenko stain normalization (own target), then percentile")
    # in a model package: saved, read back, used by predict and recorded in the provenance
    from segloop.core.inference.model import load_model

    pkg_spec = tiny_spec(in_channels=3, normalization=d)
    save_package(tmp_path / "pkg", pkg_spec, tiny_state(pkg_spec))
    assert read_spec(tmp_path / "pkg").normalization == d
    res = load_model(tmp_path / "pkg", device="cpu").predict(he_pair[1])
    params = res.provenance["parameters"]
    assert params["normalization"]["stain_norm"] == target
    assert params["normalization_stats"]["stain_norm"]["applied"]


@pytest.mark.parametrize("stain_norm, match", [
    ({"method": "vahadane"}, "unknown stain_norm method 'vahadane'; use macenko or reinhard"),
    ({"target": {}}, "has no 'method'"),
    ({"method": "macenko", "strength": 1}, "unknown key.*'strength'"),
    (["macenko"], "must be an object"),
    ({"method": "macenko", "target": {"stain_matrix": [[1, 0, 0], [1, 0, 0]], "max_concentrations": [1, 1]}},
     "parallel"),
    ({"method": "macenko", "target": {"stain_matrix": [[2, 0, 0], [0, 1, 0]], "max_concentrations": [1, 1]}},
     "unit vector"),
    ({"method": "macenko", "target": {"stain_matrix": [[1, 0, 0]], "max_concentrations": [1, 1]}}, "2 rows"),
    ({"method": "macenko", "target": {"stain_matrix": [[1, 0, 0], [0, 1, 0]], "max_concentrations": [1, -1]}},
     "positive"),
    ({"method": "macenko", "target": {"stain_matrix": [[1, 0, 0], [0, 1, 0]]}}, "needs both"),
    ({"method": "macenko", "target": {"lab_mean": [50, 0, 0], "lab_std": [1, 1, 1]}}, "belong to another method"),
    ({"method": "reinhard", "target": {"lab_mean": [150, 0, 0], "lab_std": [1, 1, 1]}}, r"L must be in \[0, 100\]"),
    ({"method": "reinhard", "target": {"lab_mean": [50, 0, "x"], "lab_std": [1, 1, 1]}}, "3 finite numbers"),
    ({"method": "reinhard", "target": {"lab_mean": [50, 0, 0], "lab_std": [1, 0, 1]}}, "positive"),
    ({"method": "reinhard", "target": {"mean": [50, 0, 0]}}, "unknown key.*'mean'"),
])
def test_bad_stain_norm_specs_are_refused_with_what_to_fix(stain_norm, match):
    with pytest.raises(ModelPackageError, match=match) as e:
        spec_from_dict({"kind": "percentile", "stain_norm": stain_norm})
    assert str(e.value).startswith("normalization 'percentile'")
    with pytest.raises(ModelPackageError, match=match):               # a package with it does not load
        ModelSpec.from_dict({**tiny_spec(in_channels=3).to_dict(),
                             "normalization": {"kind": "percentile", "stain_norm": stain_norm}}, source="test")


def test_ct_window_takes_no_stain_norm():
    with pytest.raises(ModelPackageError, match="unknown key.*'stain_norm'"):
        spec_from_dict({"kind": "ct_window", "stain_norm": {"method": "macenko"}})


# --------------------------------------------------------------------------- the per-run choice


def test_stain_norm_choice_per_run():
    fluo = tiny_spec()                                                 # 1 channel, percentile
    assert stain_normalization(fluo, rgb=True) == {"kind": "hematoxylin"}
    assert stain_normalization(fluo, rgb=True, stain_norm="macenko") == {
        "kind": "hematoxylin", "stain_norm": {"method": "macenko"}}
    target = {"method": "reinhard", "target": {"lab_mean": [60.0, 20.0, -10.0], "lab_std": [10.0, 5.0, 5.0]}}
    he = tiny_spec(in_channels=3, normalization={"kind": "percentile", "stain_norm": target})
    assert stain_normalization(he, rgb=True) is None                   # the package's own
    assert stain_normalization(he, rgb=True, stain_norm="reinhard")["stain_norm"] == target   # its target kept
    assert stain_normalization(he, rgb=True, stain_norm="macenko")["stain_norm"] == {"method": "macenko"}
    off = stain_normalization(he, rgb=True, stain_norm="none")
    assert off is not None and "stain_norm" not in off and off["kind"] == "percentile"
    assert stain_normalization(tiny_spec(in_channels=3), rgb=True, stain_norm="none") is None
    with pytest.raises(InvalidImageError, match="not RGB"):
        stain_normalization(fluo, rgb=False, stain_norm="macenko")
    with pytest.raises(InvalidImageError, match="unknown stain normalization"):
        stain_normalization(fluo, rgb=True, stain_norm="bright")


def test_cli_stain_norm_records_what_was_applied(tiny_package, he_pair, tmp_path, capsys):
    from skimage.io import imsave

    from segloop.cli import main

    imsave(tmp_path / "he.png", he_pair[1], check_contrast=False)
    imsave(tmp_path / "glass.png", np.full((96, 96, 3), 245, np.uint8), check_contrast=False)
    out = tmp_path / "o"
    assert main(["predict", str(tmp_path / "he.png"), str(tmp_path / "glass.png"), "-m", str(tiny_package),
                 "-o", str(out), "--stain", "hematoxylin", "--stain-norm", "macenko"]) == 0
    prov = json.loads((out / "he_provenance.json").read_text())["parameters"]
    assert prov["normalization"] == {"kind": "hematoxylin", "schema_version": 1, "low": 1.0, "high": 99.8,
                                     "invert": False, "stain_norm": {"method": "macenko"}}
    sn = prov["normalization_stats"]["stain_norm"]
    assert sn["applied"] and sn["target"] == MACENKO_REFERENCE and len(sn["source"]["stain_matrix"]) == 2
    glass = json.loads((out / "glass_provenance.json").read_text())["parameters"]["normalization_stats"]
    assert glass["stain_norm"]["applied"] is False
    err = capsys.readouterr().err
    assert "glass.png: note: macenko stain normalization was not applied: no tissue" in err


def test_cli_stain_norm_bad_value_is_one_line_exit_2(tiny_package, tmp_path):
    import subprocess
    import sys

    img = tmp_path / "he.png"
    img.write_bytes(b"")
    r = subprocess.run([sys.executable, "-m", "segloop.cli", "predict", str(img), "-m", str(tiny_package),
                        "-o", str(tmp_path / "o"), "--stain-norm", "vahadane"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "--stain-norm" in lines[0] and "vahadane" in lines[0], r.stderr
    assert not (tmp_path / "o").exists()


def test_cli_stain_norm_on_a_grey_image_names_the_problem(tiny_package, nuclei_image, tmp_path, capsys):
    import tifffile

    from segloop.cli import main

    tifffile.imwrite(tmp_path / "grey.tif", nuclei_image)
    assert main(["predict", str(tmp_path / "grey.tif"), "-m", str(tiny_package), "-o", str(tmp_path / "o"),
                 "--stain-norm", "reinhard"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "grey.tif" in err[0] and "stain normalization (reinhard)" in err[0]
    assert not (tmp_path / "o" / "grey_labels.tif").exists()


# --------------------------------------------------------------------------- augmentation


ONLY = {"color": dict(color_p=1.0), "blur": dict(blur_p=1.0, blur_sigma=1.5), "jpeg": dict(jpeg_p=1.0)}


def _sampler(image, config, modality="histology", patch=64):
    tgt = np.zeros(image.shape[:2], np.uint8)
    tgt[40:90, 30:100] = 1
    tgt[:, :10] = 255
    norm = Normalizer.fit(Percentile(), image, channel_axis=-1)
    return AugmentedPatchSampler([image], [norm], [tgt], [modality], patch=patch, config=config)


def _off(**on) -> AugmentConfig:
    """No augmentation but ``on``; no flips or zoom, so a patch's place depends on the seed only."""
    return AugmentConfig(**{**AugmentConfig.none().__dict__, **on})


def test_photometric_defaults_on_for_he_and_all_off_in_none():
    d = AugmentConfig()
    assert d.photometric and d.color_p > 0 and d.blur_p > 0 and d.jpeg_p > 0
    assert not AugmentConfig.none().photometric
    strong = AugmentConfig.strong_stain()
    assert strong.stain_sigma > d.stain_sigma and strong.color_p == d.color_p
    assert AugmentConfig().to_dict()["jpeg_quality"] == [30, 90]


@pytest.mark.parametrize("step", sorted(ONLY))
def test_each_step_changes_the_patch_when_on_and_nothing_when_off(ihc_image, step):
    image = ihc_image[:160, :160]
    base = _sampler(image, _off())
    x0, y0 = base.sample(0, np.random.default_rng(0))     # seed 0 draws a blur sigma above 0.1 px
    x1, y1 = _sampler(image, _off(**ONLY[step])).sample(0, np.random.default_rng(0))
    assert np.abs(x1 - x0).mean() > 0.01, step
    assert np.array_equal(y1, y0)                                         # targets untouched
    off = {k: 0.0 for k in ONLY[step] if k.endswith("_p")}
    rng = np.random.default_rng(0)
    x2, y2 = _sampler(image, _off(**{**ONLY[step], **off})).sample(0, rng)
    assert np.array_equal(x2, x0) and np.array_equal(y2, y0)
    rng_ref = np.random.default_rng(0)
    base.sample(0, rng_ref)
    assert rng.bit_generator.state == rng_ref.bit_generator.state       # off draws nothing


def test_photometric_steps_are_reproducible_from_the_seed(ihc_image):
    s = _sampler(ihc_image[:200, :200], AugmentConfig(color_p=1.0, blur_p=1.0, jpeg_p=1.0))
    a, b = s.batch(4, np.random.default_rng([5, 1])), s.batch(4, np.random.default_rng([5, 1]))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    c = s.batch(4, np.random.default_rng([5, 2]))
    assert not np.array_equal(a[0], c[0])


def test_photometric_steps_leave_other_modalities_alone(ihc_image):
    image = ihc_image[:160, :160]
    forced = _off(color_p=1.0, blur_p=1.0, jpeg_p=1.0)
    for modality in ("fluorescence", "other"):
        x0, _ = _sampler(image, _off(), modality).sample(0, np.random.default_rng(2))
        x1, _ = _sampler(image, forced, modality).sample(0, np.random.default_rng(2))
        assert np.array_equal(x0, x1)


def test_step_functions(ihc_image):
    rgb = ihc_image[:64, :64]
    rng = np.random.default_rng(0)
    none = AugmentConfig.none()
    state = rng.bit_generator.state
    assert photometric_jitter(rgb, rng, none) is rgb and rng.bit_generator.state == state
    j = color_jitter(rgb, np.random.default_rng(1), brightness=0.3, contrast=0.3, saturation=0.3, hue=0.1)
    assert j.dtype == np.float32 and j.shape == rgb.shape and 0 <= j.min() and j.max() <= 255
    assert np.abs(j - rgb).mean() > 1
    same = color_jitter(rgb, np.random.default_rng(1), brightness=0, contrast=0, saturation=0, hue=0)
    assert np.abs(same - rgb).max() < 0.01
    grey = np.repeat(np.linspace(20, 230, 64 * 64, dtype=np.float32).reshape(64, 64, 1), 3, axis=-1)
    g = color_jitter(grey, np.random.default_rng(2), brightness=0, contrast=0, saturation=0.4, hue=0.2)
    assert np.abs(g - grey).max() < 0.01                                 # hue and saturation keep grey grey
    blurred = gaussian_blur(rgb, 1.5)
    assert blurred.std() < rgb.std() and np.abs(blurred.mean() - rgb.mean()) < 1
    jpg = jpeg_artifacts(rgb, 30)
    assert jpg.shape == rgb.shape and 0.5 < np.abs(jpg - rgb).mean() < 15
    assert np.array_equal(jpeg_artifacts(rgb, 30), jpg)                 # deterministic for a quality
    unit = jpeg_artifacts(rgb / 255.0, 30, scale=1.0)
    assert np.allclose(unit * 255.0, jpg, atol=1e-3)


@pytest.mark.parametrize("bad", [dict(color_p=1.5), dict(blur_p=-0.1), dict(hue=0.7), dict(brightness=1.0),
                                 dict(jpeg_quality=(90, 30)), dict(jpeg_quality=(0, 50))])
def test_bad_augment_settings_are_refused(bad):
    with pytest.raises(ValueError, match="AugmentConfig"):
        AugmentConfig(**bad)


def test_an_older_checkpoint_augment_record_compares_equal_to_the_defaults():
    new = AugmentConfig().to_dict()
    older = {k: v for k, v in new.items() if k not in PHOTOMETRIC_KEYS}   # written before the RGB steps
    assert resume_value("augment", {"augment": older}) == json.loads(json.dumps(new))
    changed = AugmentConfig(jpeg_p=0.5).to_dict()
    assert resume_value("augment", {"augment": older}) != changed
    assert resume_value("augment", {"augment": AugmentConfig.none().to_dict()}) == AugmentConfig.none().to_dict()


def test_segment_widget_stain_norm_choice(request, ihc_image):
    pytest.importorskip("napari")
    from segloop._napari.segment_widget import SegmentWidget

    qtbot = request.getfixturevalue("qtbot")
    viewer = request.getfixturevalue("make_napari_viewer")()
    viewer.add_image(ihc_image[:256, :256], name="ihc", rgb=True)
    w = SegmentWidget(viewer)
    viewer.window.add_dock_widget(w)
    assert w.stain_norm.value == "model"                         # the package decides unless asked
    w.stain_norm.value = "reinhard"
    assert w.request().stain_norm == "reinhard"
    w.run()
    qtbot.waitUntil(lambda: not w.running, timeout=120_000)
    (lab,) = [layer for layer in viewer.layers if layer._type_string == "labels"]
    params = lab.metadata["segloop"]["parameters"]
    assert params["normalization"]["kind"] == "hematoxylin"
    assert params["normalization"]["stain_norm"] == {"method": "reinhard"}
    assert params["normalization_stats"]["stain_norm"]["applied"]
