"""A model picked by modality: guess_modality on real and stain-model images, pick_model's table,
and `segloop predict` with --model auto (the default) and --modality."""

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from segloop.cli import main
from segloop.core.formats import registry
from segloop.core.formats.io.geometry import VolumeInfo, lps_affine
from segloop.core.formats.modality import guess_modality
from segloop.core.formats.package import save_package
from segloop.core.formats.registry import pick_model
from segloop.errors import ModelNotFoundError

from .conftest import tiny_spec, tiny_state

ALL = ["he-nuclei-unet", "fluo-nuclei-unet", "nuclei-unet", "ct-liver-segunet25d", "ct-liver-unet3d"]


def stained_tile(*, eosin: float = 0.0, dab: float = 0.0, seed: int = 0) -> np.ndarray:
    """(256, 256, 3) uint8 bright-field tile from the stain model (``hed2rgb``): hematoxylin nuclei,
    eosin or DAB around them, a strip of glass on the left."""
    from skimage.color import hed2rgb

    yy, xx = np.mgrid[:256, :256]
    h = np.zeros((256, 256))
    for cy, cx in np.random.default_rng(seed).integers(10, 246, (40, 2)):
        h[(yy - cy) ** 2 + (xx - cx) ** 2 < 36] = 0.12
    tissue = np.ones((256, 256))
    tissue[:, :40] = 0
    rgb = hed2rgb(np.stack([h * tissue, eosin * tissue, dab * tissue * (h == 0)], -1))
    return (np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def ct_slices() -> np.ndarray:
    from segloop.core.formats.io.samples import load_liver_ct

    return np.round(load_liver_ct()[0][40:52]).astype(np.int16)         # LiTS case 117, HU


# --------------------------------------------------------------------------- guess_modality

def test_h_and_e_and_ihc_are_told_apart_by_dab(ihc_image):
    assert guess_modality(stained_tile(eosin=0.06)) == "he"
    assert guess_modality(stained_tile(dab=0.15)) == "ihc"                  # same nuclei, DAB instead of eosin
    assert guess_modality(ihc_image) == "ihc"                              # scikit-image's IHC (real)
    assert guess_modality(ihc_image[:256, :256]) == "ihc"
    assert guess_modality(np.full((64, 64, 3), 250, np.uint8)) == "he"      # blank glass: bright-field


def test_grey_images_are_fluorescence_and_so_are_dark_colour_ones(nuclei_image):
    assert guess_modality(nuclei_image) == "fluorescence"                   # BBBC007, one channel
    assert guess_modality(np.stack([nuclei_image] * 3, -1)) == "fluorescence"   # the same saved as RGB
    blue = np.zeros((*nuclei_image.shape, 3), np.uint8)
    blue[..., 2] = nuclei_image                                            # a DAPI composite
    assert guess_modality(blue) == "fluorescence"
    assert guess_modality(np.stack([nuclei_image] * 4)) == "fluorescence"    # a grey stack
    assert guess_modality(np.stack([nuclei_image] * 2, -1), rgb=True) == "fluorescence"   # grey + alpha


def test_ct_by_hounsfield_units_or_by_what_the_reader_says():
    vol = ct_slices()
    assert guess_modality(vol) == "ct" and guess_modality(vol[5]) == "ct"
    info = VolumeInfo(path=Path("s.nii.gz"), format="nifti", shape=(4, 64, 64), spacing=(1.0, 1.0, 1.0),
                      affine=lps_affine((1.0, 1.0, 1.0)))
    assert guess_modality(vol, info=info) == "ct"
    mr = np.random.default_rng(0).integers(0, 900, (4, 64, 64)).astype(np.int16)
    assert guess_modality(mr, info=info) is None                           # a volume, not CT: nothing fits
    hu = VolumeInfo(path=Path("d"), format="dicom", shape=(4, 64, 64), spacing=(1.0, 1.0, 1.0),
                    affine=lps_affine((1.0, 1.0, 1.0)), units="HU")
    assert guess_modality(mr, info=hu) == "ct" and guess_modality(None, info=hu) == "ct"


def test_a_huge_lazy_slide_is_guessed_from_a_few_chunks():
    da = pytest.importorskip("dask.array")
    tile = stained_tile(eosin=0.06)
    read = []

    def chunk(block, block_info=None):
        read.append(block_info[None]["chunk-location"])
        return np.resize(tile, block.shape[:2] + (3,)).astype(np.uint8)

    slide = da.zeros((100_000, 100_000, 3), np.uint8, chunks=(1024, 1024, 3)).map_blocks(chunk, dtype=np.uint8)
    assert guess_modality(slide) == "he"
    assert 0 < len(read) <= 16 < slide.numblocks[0] * slide.numblocks[1]   # 16 windows, not 10,000 chunks


# --------------------------------------------------------------------------- pick_model

@pytest.mark.parametrize("modality, name", [("he", "he-nuclei-unet"), ("ihc", "he-nuclei-unet"),
                                            ("fluorescence", "fluo-nuclei-unet"), ("ct", "ct-liver-segunet25d")])
def test_the_first_choice_of_each_modality(modality, name):
    pick = pick_model(modality, available=ALL)
    assert pick.name == name and pick.stain is None and pick.modality == modality
    assert "not installed" not in pick.reason


def test_fallbacks_say_why_and_carry_the_stain_route():
    he = pick_model("he", available=["nuclei-unet", "nuclei-segunet"])
    assert (he.name, he.stain) == ("nuclei-unet", "hematoxylin")
    assert he.reason == "for an H&E image, on its hematoxylin channel, as he-nuclei-unet is not installed"
    ihc = pick_model("ihc", available=["nuclei-unet"])
    assert ihc.stain == "hematoxylin" and ihc.reason.endswith("IHC routing is not measured: no labelled IHC data")
    assert pick_model("ihc", available=ALL).reason == ("for an IHC image; IHC routing is not measured: "
                                                       "no labelled IHC data")
    fluo = pick_model("fluorescence", available=["nuclei-unet"])
    assert fluo.stain is None and fluo.reason == "for a fluorescence image, as fluo-nuclei-unet is not installed"
    assert pick_model("ct", available=["ct-liver-unet3d"]).name == "ct-liver-unet3d"
    with pytest.raises(ModelNotFoundError, match="no model for CT images is installed .*ct-liver-segunet25d"):
        pick_model("ct", available=["nuclei-unet"])
    with pytest.raises(ModelNotFoundError, match="'mri'"):
        pick_model("mri", available=ALL)


# --------------------------------------------------------------------------- segloop predict

@pytest.fixture
def zoo(tmp_path, monkeypatch):
    """Tiny packages named like the new bundled ones, on $SEGLOOP_MODEL_PATH."""
    folder = tmp_path / "zoo"
    for name, channels, modality in (("he-nuclei-unet", 3, "histology"), ("fluo-nuclei-unet", 1, "fluorescence")):
        spec = tiny_spec(name=name, in_channels=channels, modality=modality)
        save_package(folder / name, spec, tiny_state(spec))
    monkeypatch.setenv("SEGLOOP_MODEL_PATH", str(folder))
    return folder


@pytest.fixture
def without_new_models(tmp_path, monkeypatch):
    """The bundled folder as before the new models: a (tiny) nuclei-unet only."""
    folder = tmp_path / "bundled"
    spec = tiny_spec(name="nuclei-unet", modality="fluorescence")
    save_package(folder / "nuclei-unet", spec, tiny_state(spec))
    monkeypatch.setattr(registry, "BUNDLED_DIR", folder)
    monkeypatch.delenv("SEGLOOP_MODEL_PATH", raising=False)
    return folder


def images(tmp_path, nuclei_image):
    from skimage.io import imsave

    imsave(tmp_path / "he.png", stained_tile(eosin=0.06), check_contrast=False)
    tifffile.imwrite(tmp_path / "grey.tif", nuclei_image[:128, :128])
    return tmp_path / "he.png", tmp_path / "grey.tif"


def prov(out, stem):
    return json.loads((out / f"{stem}_provenance.json").read_text())


def test_auto_picks_per_image_and_says_so_on_one_line(zoo, tmp_path, nuclei_image, capsys):
    he, grey = images(tmp_path, nuclei_image)
    out = tmp_path / "o"
    assert main(["predict", str(he), str(grey), "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "model: he-nuclei-unet (picked for an H&E image; give --model to choose)"
    assert lines[1].startswith(f"{he}: ") and lines[1].endswith("he_labels.tif")
    assert lines[2] == "model: fluo-nuclei-unet (picked for a fluorescence image; give --model to choose)"
    assert prov(out, "he")["model"]["name"] == "he-nuclei-unet"
    assert prov(out, "grey")["model"]["name"] == "fluo-nuclei-unet"
    assert tifffile.imread(out / "he_labels.tif").shape == (256, 256)


def test_modality_overrides_the_guess(zoo, tmp_path, nuclei_image, capsys):
    he, _ = images(tmp_path, nuclei_image)
    assert main(["predict", str(he), "--modality", "ihc", "--out", str(tmp_path / "o")]) == 0
    assert capsys.readouterr().out.splitlines()[0] == (
        "model: he-nuclei-unet (picked for an IHC image; IHC routing is not measured: no labelled IHC data; "
        "give --model to choose)")


def test_without_the_h_and_e_model_rgb_goes_through_hematoxylin(without_new_models, tmp_path, nuclei_image,
                                                                capsys):
    he, grey = images(tmp_path, nuclei_image)
    out = tmp_path / "o"
    assert main(["predict", str(he), str(grey), "--out", str(out)]) == 0
    said = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("model:")]
    assert said == ["model: nuclei-unet (picked for an H&E image, on its hematoxylin channel, as he-nuclei-unet "
                    "is not installed; give --model to choose)",
                    "model: nuclei-unet (picked for a fluorescence image, as fluo-nuclei-unet is not installed; "
                    "give --model to choose)"]
    assert prov(out, "he")["parameters"]["normalization"]["kind"] == "hematoxylin"
    assert prov(out, "grey")["parameters"]["normalization"]["kind"] != "hematoxylin"


def test_fluorescence_saved_as_colour_reaches_a_one_channel_model(zoo, tmp_path, nuclei_image, capsys):
    from skimage.io import imsave

    grey = nuclei_image[:128, :128]
    as_rgb, blue = np.stack([grey] * 3, -1), np.stack([grey * 0, grey * 0, grey], -1)
    imsave(tmp_path / "rgb.png", as_rgb, check_contrast=False)
    imsave(tmp_path / "dapi.png", blue, check_contrast=False)
    tifffile.imwrite(tmp_path / "grey.tif", grey)
    out = tmp_path / "o"
    assert main(["predict", str(tmp_path / "rgb.png"), str(tmp_path / "dapi.png"), str(tmp_path / "grey.tif"),
                 "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert [ln for ln in captured.out.splitlines() if ln.startswith("model:")] == [
        "model: fluo-nuclei-unet (picked for a fluorescence image; give --model to choose)"]
    assert "dapi.png: note: fluorescence saved as colour" in captured.err and "rgb.png" not in captured.err
    same = tifffile.imread(out / "grey_labels.tif")                   # the same pixels, one channel
    assert np.array_equal(tifffile.imread(out / "rgb_labels.tif"), same)
    assert np.array_equal(tifffile.imread(out / "dapi_labels.tif"), same)


def test_an_explicit_model_is_used_as_before(zoo, tmp_path, nuclei_image, tiny_package, capsys):
    he, grey = images(tmp_path, nuclei_image)
    assert main(["predict", str(grey), "--model", str(tiny_package), "--out", str(tmp_path / "a")]) == 0
    assert not [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("model:")]
    assert prov(tmp_path / "a", "grey")["model"]["name"] == "tiny"
    assert main(["predict", str(he), "--model", str(tiny_package), "--out", str(tmp_path / "b")]) == 2  # no stain
    assert main(["predict", str(grey), "--model", str(tiny_package), "--modality", "he",
                 "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"segloop: error: --modality he picks a model, and --model {tiny_package} is given; "
                       "drop one of them")


def test_a_volume_that_is_not_ct_needs_a_modality_or_a_model(zoo, tmp_path, capsys):
    import nibabel as nib

    mr = np.random.default_rng(0).integers(0, 900, (32, 32, 4)).astype(np.int16)
    nib.save(nib.Nifti1Image(mr, np.eye(4)), tmp_path / "mr.nii.gz")
    assert main(["predict", str(tmp_path / "mr.nii.gz"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "mr.nii.gz: cannot tell which model fits this volume" in err and "--modality or --model" in err
    assert not list((tmp_path / "o").glob("*labels*"))


def test_a_ct_volume_gets_the_ct_model(without_new_models, tmp_path, capsys):
    import nibabel as nib

    spec = tiny_spec(name="ct-liver-segunet25d", modality="ct")        # a stand-in under the bundled name
    save_package(without_new_models / "ct-liver-segunet25d", spec, tiny_state(spec))
    nib.save(nib.Nifti1Image(ct_slices()[:4].transpose(2, 1, 0), np.eye(4)), tmp_path / "scan.nii.gz")
    assert main(["predict", str(tmp_path / "scan.nii.gz"), "--out", str(tmp_path / "o")]) == 0
    assert capsys.readouterr().out.splitlines()[0] == ("model: ct-liver-segunet25d (picked for a CT image; "
                                                       "give --model to choose)")
    assert prov(tmp_path / "o", "scan")["model"]["name"] == "ct-liver-segunet25d"


# --------------------------------------------------------------------------- MR and the body part

def test_mr_only_when_the_file_says_so():
    mr = np.random.default_rng(0).integers(0, 900, (4, 64, 64)).astype(np.int16)
    said = VolumeInfo(path=Path("d"), format="dicom", shape=(4, 64, 64), spacing=(1.0, 1.0, 1.0),
                      affine=lps_affine((1.0, 1.0, 1.0)), modality="MR")
    assert guess_modality(mr, info=said) == "mr"
    silent = VolumeInfo(path=Path("t1.nii.gz"), format="nifti", shape=(4, 64, 64), spacing=(1.0, 1.0, 1.0),
                        affine=lps_affine((1.0, 1.0, 1.0)))
    assert guess_modality(mr, info=silent) is None        # a NIfTI never says MR: nothing is guessed


def test_the_files_body_part_picks_the_model_of_that_region():
    names = [*ALL, "ct-lung-tumour-segunet25d", "mri-brain-tumour-segunet25d"]
    chest = pick_model("ct", available=names, body_part="CHEST")
    assert chest.name == "ct-lung-tumour-segunet25d" and "of the chest" in chest.reason and "CHEST" in chest.reason
    assert pick_model("ct", available=names, body_part="Thorax").name == "ct-lung-tumour-segunet25d"
    assert pick_model("ct", available=names, body_part="ABDOMEN").name == "ct-liver-segunet25d"
    assert pick_model("ct", available=names, body_part="KNEE").name == "ct-liver-segunet25d"   # unknown: the default
    assert pick_model("ct", available=names).name == "ct-liver-segunet25d"
    assert pick_model("ct", available=ALL, body_part="CHEST").name == "ct-liver-segunet25d"   # not installed
    assert pick_model("mr", available=names, body_part="HEAD").name == "mri-brain-tumour-segunet25d"
    with pytest.raises(ModelNotFoundError, match="MR"):
        pick_model("mr", available=ALL)


def test_a_model_trained_on_automatic_labels_says_so():
    from types import SimpleNamespace

    from segloop._napari.model_pick import automatic_labels_note

    assert "AUTOMATIC" in automatic_labels_note(SimpleNamespace(training={"labels": "partly automatic"}))
    assert "partly" in automatic_labels_note(SimpleNamespace(training={"labels": "partly automatic"}))
    assert automatic_labels_note(SimpleNamespace(training={"labels": "hand-drawn"})) == ""
    assert automatic_labels_note(SimpleNamespace(training=None)) == ""
