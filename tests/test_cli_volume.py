"""`segloop predict` on volumes (NIfTI / DICOM) writes labels in the source's own space; `segloop measure`."""

import numpy as np
import pytest

nib = pytest.importorskip("nibabel")

from segloop.cli import main  # noqa: E402


def _nifti(tmp_path, nuclei_image, affine):
    tile = nuclei_image[:192, :160].astype(np.int16)
    vol = np.stack([np.roll(tile, 7 * i, axis=0) for i in range(4)], axis=-1)     # (i, j, k) = (Y, X, Z)
    path = tmp_path / "stack.nii.gz"
    nib.save(nib.Nifti1Image(vol, affine), path)
    return path, vol


def test_predict_a_nifti_volume_writes_labels_on_the_source_grid(tmp_path, nuclei_image, capsys):
    affine = np.array([[-0.8, 0, 0, 100.0], [0, 0.6, 0, -50.0], [0, 0, 2.5, 30.0], [0, 0, 0, 1]])
    src, vol = _nifti(tmp_path, nuclei_image, affine)
    out = tmp_path / "out"
    assert main(["predict", str(src), "--model", "nuclei-unet", "--out", str(out), "--seg-nrrd"]) == 0
    lab = nib.load(out / "stack_labels.nii.gz")
    assert lab.shape == vol.shape
    np.testing.assert_allclose(lab.affine, affine)
    data = np.asarray(lab.dataobj)
    assert all(data[..., k].max() > 5 for k in range(4))          # every slice segmented
    assert (out / "stack.seg.nrrd").is_file() and (out / "stack_provenance.json").is_file()
    text = capsys.readouterr().out
    assert "stack_labels.nii.gz" in text and "mL" in text

    # only some slices; existing outputs are not overwritten silently
    assert main(["predict", str(src), "--model", "nuclei-unet", "--out", str(out), "--slices", "1:3"]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["predict", str(src), "--model", "nuclei-unet", "--out", str(out), "--slices", "1:3",
                 "--overwrite"]) == 0
    data = np.asarray(nib.load(out / "stack_labels.nii.gz").dataobj)
    assert data[..., 0].max() == 0 and data[..., 3].max() == 0 and data[..., 1].max() > 0
    assert main(["predict", str(src), "--model", "nuclei-unet", "--out", str(out), "--slices", "2:9",
                 "--overwrite"]) == 2
    assert "4 slices" in capsys.readouterr().err


def test_measure_prints_volumes_in_ml_and_writes_csv(tmp_path, capsys):
    affine = np.diag([0.5, 0.5, 2.0, 1.0])
    lab = np.zeros((40, 40, 10), np.uint8)
    lab[10:20, 10:30, 2:6] = 1                        # 10 * 20 * 4 voxels of 0.5 mm^3
    img = np.full(lab.shape, -100, np.int16)
    img[lab == 1] = 60
    nib.save(nib.Nifti1Image(lab, affine), tmp_path / "lab.nii.gz")
    nib.save(nib.Nifti1Image(img, affine), tmp_path / "img.nii.gz")
    assert main(["measure", str(tmp_path / "lab.nii.gz"), "--image", str(tmp_path / "img.nii.gz"),
                 "--csv", str(tmp_path / "v.csv")]) == 0
    out = capsys.readouterr().out
    row = [line for line in out.splitlines() if line.startswith("1\t")][0].split("\t")
    assert row[1] == "800" and float(row[2]) == pytest.approx(0.4) and float(row[4]) == pytest.approx(60)
    assert "volume_ml" in (tmp_path / "v.csv").read_text()
    assert main(["measure", str(tmp_path / "lab.nii.gz"), "--lesions"]) == 0
    assert "\n1.1\t800\t" in capsys.readouterr().out
    nib.save(nib.Nifti1Image(img[:20], affine), tmp_path / "small.nii.gz")
    assert main(["measure", str(tmp_path / "lab.nii.gz"), "--image", str(tmp_path / "small.nii.gz")]) == 2


def test_predict_segments_the_lits_mrc_along_its_axial_axis_where_it_is_stored(tmp_path, capsys):
    # The LiTS .mrc files hold head-foot on their last axis; the CT model segments axial
    # slices in display order, as napari shows them. On sagittal sections (the first stored
    # axis) the same model reaches liver Dice 0.875; on axial ones 0.926.
    from segloop.core.editing.metrics import dice
    from segloop.core.formats.io.samples import liver_ct_paths, load_liver_ct
    from segloop.core.formats.io.volume import read_volume

    img_p, _ = liver_ct_paths()
    out = tmp_path / "out"
    assert main(["predict", str(img_p), "--model", "ct-liver-segunet25d", "--out", str(out)]) == 0
    pred, _ = read_volume(out / "img_117_labels.nii.gz")           # back in display order
    _, truth, _ = load_liver_ct()                                   # hand-drawn labels, display order
    assert pred.shape == truth.shape
    assert dice(truth == 1, np.asarray(pred) == 1) > 0.9
    assert "largest axial diameter" in capsys.readouterr().out


def test_a_ct_model_refuses_a_volume_that_is_not_in_hounsfield_units(tmp_path, capsys):
    mr = np.random.default_rng(0).integers(0, 900, (48, 48, 6)).astype(np.int16)      # MR-like, no air at -1000
    src = tmp_path / "t1.nii.gz"
    nib.save(nib.Nifti1Image(mr, np.diag([1.0, 1.0, 3.0, 1.0])), src)
    out = tmp_path / "out"
    assert main(["predict", str(src), "--model", "ct-liver-segunet25d", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "reads CT in Hounsfield units" in err[0] and "Traceback" not in err[0]
    assert not out.exists() or not any(out.iterdir())                  # nothing half-written
    ct = np.full((48, 48, 6), -1000, np.int16)
    ct[12:36, 12:36] = 40                                              # the same grid, in HU: runs
    nib.save(nib.Nifti1Image(ct, np.diag([1.0, 1.0, 3.0, 1.0])), src)
    assert main(["predict", str(src), "--model", "ct-liver-segunet25d", "--out", str(out)]) == 0


def test_channels_stack_the_sequences_of_one_scan_for_a_multi_sequence_model(tmp_path, capsys):
    from segloop.core.formats.package import save_package

    from .conftest import tiny_spec, tiny_state

    spec = tiny_spec(name="mr-two-seq", task="semantic", classes=("background", "lesion"), postprocess={},
                     in_channels=6, context_slices=3, tile={"size": 32, "overlap": 0.25}, modality="MR")
    pkg = tmp_path / "mr-two-seq"
    save_package(pkg, spec, tiny_state(spec, seed=2))
    rng = np.random.default_rng(0)
    aff = np.diag([1.0, 1.0, 2.0, 1.0])
    flair, t1c = tmp_path / "flair.nii.gz", tmp_path / "t1c.nii.gz"
    nib.save(nib.Nifti1Image(rng.random((40, 36, 5)).astype(np.float32), aff), flair)
    nib.save(nib.Nifti1Image(rng.random((40, 36, 5)).astype(np.float32), aff), t1c)
    out = tmp_path / "out"
    # one sequence for a two-sequence model: a clear error
    assert main(["predict", str(flair), "--model", str(pkg), "--out", str(out)]) == 2
    assert "channel" in capsys.readouterr().err
    assert main(["predict", str(flair), "--channels", str(t1c), "--model", str(pkg), "--out", str(out)]) == 0
    lab = nib.load(out / "flair_labels.nii.gz")
    assert lab.shape == (40, 36, 5)
    np.testing.assert_allclose(lab.affine, aff)
    other = tmp_path / "other.nii.gz"
    nib.save(nib.Nifti1Image(rng.random((40, 36, 5)).astype(np.float32), np.diag([1.0, 1.0, 3.0, 1.0])), other)
    assert main(["predict", str(flair), "--channels", str(other), "--model", str(pkg), "--out", str(tmp_path / "o2"),
                 ]) == 2
    assert "differs" in capsys.readouterr().err and not (tmp_path / "o2" / "flair_labels.nii.gz").exists()
    assert main(["predict", str(flair), str(t1c), "--channels", str(t1c), "--model", str(pkg), "--out",
                 str(tmp_path / "o3")]) == 2
    assert "ONE volume" in capsys.readouterr().err
