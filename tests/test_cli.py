"""The segloop command: real files in tmp_path, one-line errors with exit status 2."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from segloop.cli import main


def run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "segloop.cli", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


def test_predict_writes_labels_provenance_and_uncertainty(tiny_package, nuclei_image, tmp_path, capsys):
    img = tmp_path / "nuclei.tif"
    tifffile.imwrite(img, nuclei_image)
    out = tmp_path / "results"
    assert main(["predict", str(img), "--model", str(tiny_package), "--out", str(out), "--uncertainty"]) == 0
    labels = tifffile.imread(out / "nuclei_labels.tif")
    assert labels.shape == nuclei_image.shape and labels.dtype == np.uint16
    assert tifffile.imread(out / "nuclei_uncertainty.tif").dtype == np.float16
    prov = json.loads((out / "nuclei_provenance.json").read_text())
    assert prov["model"]["name"] == "tiny" and prov["source"]["path"].endswith("nuclei.tif")
    assert "nuclei.tif" in capsys.readouterr().out
    # A second run refuses to overwrite silently
    assert main(["predict", str(img), "--model", str(tiny_package), "--out", str(out)]) == 2


def test_png_and_rgb_with_hematoxylin(tiny_package, ihc_image, tmp_path):
    from skimage.io import imsave

    png = tmp_path / "ihc.png"
    imsave(png, ihc_image[:256, :256])
    assert main(["predict", str(png), "-m", str(tiny_package), "-o", str(tmp_path / "o")]) == 2   # RGB, 1-ch model
    assert main(["predict", str(png), "-m", str(tiny_package), "-o", str(tmp_path / "o"),
                 "--stain", "hematoxylin"]) == 0


@pytest.mark.parametrize("make, match", [
    (lambda p: p.write_bytes(b"II*\x00" + b"\x00" * 20), "cannot read TIFF"),
    (lambda p: None, "no such file"),
])
def test_bad_files_give_one_line_and_exit_2(tiny_package, tmp_path, make, match):
    bad = tmp_path / "bad.tif"
    make(bad)
    r = run("predict", bad, "--model", tiny_package, "--out", tmp_path / "o")
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("segloop: error:") and match in lines[0]


def test_truncated_tiff_is_a_clear_error(tiny_package, nuclei_image, tmp_path):
    good = tmp_path / "full.tif"
    tifffile.imwrite(good, np.stack([nuclei_image] * 4), photometric="minisblack")
    trunc = tmp_path / "trunc.tif"
    trunc.write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    r = run("predict", trunc, "--model", tiny_package, "--out", tmp_path / "o")
    assert r.returncode == 2 and "segloop: error:" in r.stderr and "Traceback" not in r.stderr


def test_pickle_model_and_unknown_model_exit_2(tmp_path, nuclei_image):
    import torch

    pt = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(1)}, pt)
    img = tmp_path / "x.tif"
    tifffile.imwrite(img, nuclei_image)
    r = run("predict", img, "--model", pt, "--out", tmp_path / "o")
    assert r.returncode == 2 and "never unpickles" in r.stderr
    r = run("info", "definitely-not-a-model")
    assert r.returncode == 2 and "known models" in r.stderr


def test_out_is_a_file(tiny_package, nuclei_image, tmp_path):
    img = tmp_path / "x.tif"
    tifffile.imwrite(img, nuclei_image)
    f = tmp_path / "file"
    f.write_text("")
    assert main(["predict", str(img), "-m", str(tiny_package), "-o", str(f)]) == 2


def test_info_and_export_onnx(tiny_package, capsys):
    assert main(["info", str(tiny_package)]) == 0
    text = capsys.readouterr().out
    assert "tiny v0.0.1" in text and "percentile" in text
    assert main(["export-onnx", str(tiny_package)]) == 0
    assert (tiny_package / "model.onnx").is_file()
    assert main(["info", str(tiny_package), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.split("\n", 1)[1])["onnx_sha256"]


def test_list_models_lists_bundled():
    r = run("list-models")
    assert r.returncode == 0 and "nuclei-unet" in r.stdout


def test_list_models_shows_held_out_metrics_and_licence(capsys):
    assert main(["list-models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    nuc = rows["nuclei-unet"]
    assert nuc["held_out"].startswith("F1@0.5 0.9") and nuc["license"].startswith("BSD-3-Clause")
    assert nuc["modality"] == "fluorescence" and nuc["kind"] == "2D instance"
    assert main(["list-models"]) == 0
    table = capsys.readouterr().out
    assert "held-out" in table.splitlines()[0] and "licence" in table.splitlines()[0]


def test_info_card_prints_the_model_card(capsys):
    assert main(["info", "nuclei-unet", "--card"]) == 0
    card = capsys.readouterr().out
    assert card.startswith("# nuclei-unet") and "## Licence" in card and "## Reproduce" in card
    assert main(["info", "no-such-model", "--card"]) == 2


def test_memmap_output_path_gives_the_same_labels(tiny_package, nuclei_image, tmp_path):
    img = tmp_path / "n.tif"
    tifffile.imwrite(img, np.stack([nuclei_image, nuclei_image[::-1]]))
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["predict", str(img), "-m", str(tiny_package), "-o", str(a), "--memmap", "never"]) == 0
    assert main(["predict", str(img), "-m", str(tiny_package), "-o", str(b), "--memmap", "always",
                 "--overlay"]) == 0
    la, lb = tifffile.imread(a / "n_labels.tif"), tifffile.imread(b / "n_labels.tif")
    assert la.shape == (2, 450, 450)
    np.testing.assert_array_equal(la, lb)
    assert not list(b.glob(".*partial*"))


def test_overlay_png_is_written(tiny_package, nuclei_image, tmp_path):
    from skimage.io import imread

    img = tmp_path / "n.tif"
    tifffile.imwrite(img, nuclei_image)
    assert main(["predict", str(img), "-m", str(tiny_package), "-o", str(tmp_path / "o"), "--overlay"]) == 0
    png = imread(tmp_path / "o" / "n_overlay.png")
    assert png.shape == (450, 450, 3)


def test_output_names_keep_dots_and_refuse_collisions(tiny_package, nuclei_image, tmp_path):
    for d in ("d1", "d2"):
        (tmp_path / d).mkdir()
        tifffile.imwrite(tmp_path / d / "s.ome.tif", nuclei_image)
    tifffile.imwrite(tmp_path / "a.v2.tif", nuclei_image)
    r = run("predict", tmp_path / "d1/s.ome.tif", tmp_path / "d2/s.ome.tif", "-m", tiny_package, "-o", tmp_path / "o")
    assert r.returncode == 2 and "several inputs" in r.stderr
    assert main(["predict", str(tmp_path / "a.v2.tif"), "-m", str(tiny_package), "-o", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "a.v2_labels.tif").is_file()


@pytest.mark.parametrize("flag, value, match", [("--tile", "-5", "tile"), ("--overlap", "1.0", "overlap"),
                                                 ("--batch", "0", "batch_size")])
def test_bad_parameters_are_one_line_errors(tiny_package, nuclei_image, tmp_path, flag, value, match):
    img = tmp_path / "x.tif"
    tifffile.imwrite(img, nuclei_image)
    r = run("predict", img, "-m", tiny_package, "-o", tmp_path / "o", flag, value)
    assert r.returncode == 2 and match in r.stderr and "Traceback" not in r.stderr


def test_grey_alpha_png_is_2d(tiny_package, nuclei_image, tmp_path):
    from skimage.io import imsave

    la = np.stack([nuclei_image, np.full_like(nuclei_image, 255)], -1)
    imsave(tmp_path / "la.png", la, check_contrast=False)
    assert main(["predict", str(tmp_path / "la.png"), "-m", str(tiny_package), "-o", str(tmp_path / "o"),
                 "--memmap", "always"]) == 0
    assert tifffile.imread(tmp_path / "o" / "la_labels.tif").shape == nuclei_image.shape


def test_bad_numbers_are_one_line_errors_before_anything_is_written(tiny_package, nuclei_image, tmp_path, capsys):
    img = tmp_path / "nuclei.tif"
    tifffile.imwrite(img, nuclei_image)
    out = tmp_path / "results"
    for slices, said in (("abc", "write first:stop"), ("9:3", "0 <= first < stop"), ("1:3", "applies to volumes")):
        capsys.readouterr()
        assert main(["predict", str(img), "--model", str(tiny_package), "--out", str(out), "--slices", slices]) == 2
        err = capsys.readouterr().err
        assert err.startswith("segloop: error: --slices") and said in err and err.count("\n") == 1, err
    assert not out.exists()                               # nothing written for a typo
    for tile in (-3, 100000):
        assert main(["export-onnx", str(tiny_package), "--tile", str(tile)]) == 2
        err = capsys.readouterr().err
        assert f"--tile {tile}" in err and "8 to 4096" in err and err.count("\n") == 1, err
    assert not (tiny_package / "model.onnx").exists()


def test_a_failed_command_leaves_no_empty_output_folder_and_never_removes_one_with_files(nuclei_image, tmp_path,
                                                                                           capsys):
    img = tmp_path / "nuclei.tif"
    tifffile.imwrite(img, nuclei_image)
    out = tmp_path / "new" / "results"
    assert main(["predict", str(img), "--model", "no-such-model", "--out", str(out)]) == 2
    assert "no-such-model" in capsys.readouterr().err
    assert not out.exists() and not out.parent.exists()   # the parent it made too
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    assert main(["predict", str(img), "--model", "no-such-model", "--out", str(kept)]) == 2
    assert (kept / "notes.txt").read_text() == "mine"
    empty = tmp_path / "empty-before"
    empty.mkdir()                                          # existed before the command: not ours to remove
    assert main(["predict", str(img), "--model", "no-such-model", "--out", str(empty)]) == 2
    assert empty.is_dir()


def test_a_package_with_bad_post_processing_is_refused_in_one_line(tmp_path, nuclei_image, capsys):
    """A hand-edited ``split_h`` is caught when the model loads, before any image is read or written."""
    from segloop import load_model
    from segloop.core.formats.package import save_package
    from segloop.errors import ModelPackageError

    from .conftest import tiny_spec, tiny_state

    spec = tiny_spec(postprocess={"kind": "instance", "split_h": -1})
    save_package(tmp_path / "m", spec, tiny_state(spec))
    with pytest.raises(ModelPackageError, match="split_h"):
        load_model(tmp_path / "m", device="cpu")
    img = tmp_path / "n.tif"
    tifffile.imwrite(img, nuclei_image[:64, :64])
    assert main(["predict", str(img), "--model", str(tmp_path / "m"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "split_h must be a number >= 0, got -1" in err
    assert not (tmp_path / "o").exists()
