"""Fine-tuning: training folders in, a new evaluated package (parent recorded) out.

Real tiny packages and real training folders in tmp_path; the image is the BBBC007 crop
shipped in segloop/data, with threshold labels (what the labels are does not matter here).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from skimage.measure import label

import segloop
from segloop.core.formats.normalization import Scale
from segloop.core.formats.package import load_package, save_package
from segloop.core.formats.trainfolder import TrainingFolder
from segloop.core.inference.normalize import Normalizer
from segloop.core.networks import build
from segloop.errors import ModelPackageError, TrainingFolderError
from segloop_train.augment import AugmentConfig, AugmentedPatchSampler, ct_jitter, stain_jitter
from segloop_train.data import IGNORE, Sample, reviewed_targets
from segloop_train.finetune import (
    FinetuneWarning,
    TrainingDivergedError,
    bump_version,
    checkpoint_dir,
    finetune,
    fit_patch,
)
from segloop_train.folders import SkippedSampleWarning, load_folders
from segloop_train.losses import dice_ce_loss

from .conftest import tiny_spec, tiny_state

ROOT = Path(__file__).resolve().parents[1]
FAST = dict(batch=2, patch=32, device="cpu", onnx=False)


@pytest.fixture(autouse=True)
def _one_thread():
    """Two torch threads on a 2-core machine shared with other work are 50x slower for tiny nets."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def nuclei():
    import tifffile

    img = tifffile.imread(ROOT / "src" / "segloop" / "data" / "bbbc007_A9_p10d.tif")
    return img, label(img > np.percentile(img, 80)).astype(np.uint16)


def make_folder(path, nuclei, *, classes=("background", "nucleus"), train=((0, 96, 0, 96),),
                val=((96, 160, 0, 96),), modality="fluorescence", reviewed=None):
    img, lab = nuclei
    tf = TrainingFolder.create(path, classes=classes, task="instance", modality=modality)
    for split, boxes in (("train", train), ("val", val)):
        for i, (y0, y1, x0, x1) in enumerate(boxes):
            rev = None if reviewed is None else reviewed[y0:y1, x0:x1]
            tf.add_sample(img[y0:y1, x0:x1], lab[y0:y1, x0:x1], rev, axes="YX", source=f"{split}{i}.tif",
                          split=split, sample_id=f"{split}{i}")
    return tf


def make_parent(path, **changes):
    spec = tiny_spec(**changes)
    save_package(path, spec, tiny_state(spec))
    return path


# --------------------------------------------------------------------------- folders


def test_corrupt_samples_are_skipped_with_a_warning_naming_each(tmp_path, nuclei):
    import tifffile

    tf = make_folder(tmp_path / "f", nuclei, train=((0, 64, 0, 64), (64, 128, 0, 64), (128, 192, 0, 64)))
    (tf.samples_dir / "train1" / "labels.tif").write_bytes(b"not a tiff any more")
    changed = tifffile.imread(tf.samples_dir / "train2" / "image.tif")
    changed[0, 0] ^= 1                                      # a valid tif, but not what was exported
    tifffile.imwrite(tf.samples_dir / "train2" / "image.tif", changed)
    with pytest.warns(SkippedSampleWarning) as rec:
        loaded = load_folders(tmp_path / "f", spec=tiny_spec())
    msgs = sorted(str(w.message) for w in rec)
    assert "'train1' skipped: labels.tif cannot be read" in msgs[0]
    assert "'train2' skipped: " in msgs[1] and "image.tif has sha256" in msgs[1]
    assert [s.meta["sample_id"] for s in loaded.train] == ["train0"] and len(loaded.val) == 1
    f = loaded.folders[0]
    assert f.samples == {"train": 1, "val": 1, "test": 0} and [x[:7] for x in f.skipped] == ["train1:", "train2:"]
    assert loaded.train[0].reviewed.dtype == np.uint8 and f.fingerprint == tf.fingerprint()


def test_empty_folder_and_no_train_samples_are_refused(tmp_path, nuclei):
    TrainingFolder.create(tmp_path / "empty", classes=("background", "nucleus"), task="instance")
    with pytest.raises(TrainingFolderError, match="has no samples"):
        load_folders(tmp_path / "empty")
    make_folder(tmp_path / "valonly", nuclei, train=())
    with pytest.raises(TrainingFolderError, match="no usable train samples"):
        load_folders(tmp_path / "valonly")
    with pytest.raises(TrainingFolderError, match="no such folder"):
        load_folders(tmp_path / "missing")


def test_classes_or_task_that_differ_from_the_parent_are_refused_saying_what_differs(tmp_path, nuclei):
    make_folder(tmp_path / "cells", nuclei, classes=("background", "cell", "nucleus"))
    with pytest.raises(TrainingFolderError, match=r"object classes \['cell', 'nucleus'\] differ .* \['nucleus'\]"):
        load_folders(tmp_path / "cells", spec=tiny_spec())
    sem = tiny_spec(task="semantic", classes=("background", "liver", "tumour"), postprocess={})
    with pytest.raises(TrainingFolderError, match="holds instance labels but tiny is a semantic model"):
        load_folders(tmp_path / "cells", spec=sem)
    tf = TrainingFolder.create(tmp_path / "sem", classes=("background", "liver", "lesion"), task="semantic")
    tf.add_sample(np.zeros((32, 32), np.uint8), np.ones((32, 32), np.uint8), axes="YX", split="train")
    with pytest.raises(TrainingFolderError, match=r"class 2: 'lesion' vs 'tumour'"):
        load_folders(tmp_path / "sem", spec=sem)
    # and finetune refuses before training (no checkpoint left behind)
    make_parent(tmp_path / "parent")
    with pytest.raises(TrainingFolderError, match="differ"):
        finetune(tmp_path / "cells", parent=tmp_path / "parent", out=tmp_path / "out", steps=1, **FAST)
    assert not checkpoint_dir(tmp_path / "out").exists() and not (tmp_path / "out").exists()


def test_a_one_class_instance_folder_fits_a_one_class_model_whatever_the_name_recorded_as_a_mapping(
        tmp_path, nuclei):
    # `segloop export` without --classes makes background, object; nuclei-unet segments "nucleus"
    make_folder(tmp_path / "obj", nuclei, classes=("background", "object"))
    make_folder(tmp_path / "nuc", nuclei, classes=("background", "nucleus"))
    loaded = load_folders([tmp_path / "obj", tmp_path / "nuc"], spec=tiny_spec())
    assert loaded.class_mapping == {"object": "nucleus"} and loaded.classes == ("background", "object")
    assert any("its one object class 'object' is read as tiny's 'nucleus'" in w for w in loaded.warnings)
    assert load_folders(tmp_path / "nuc", spec=tiny_spec()).class_mapping is None
    make_parent(tmp_path / "parent")
    res = finetune(tmp_path / "obj", parent=tmp_path / "parent", out=tmp_path / "out", steps=1, **FAST)
    assert res.spec.training["class_mapping"] == {"object": "nucleus"}
    assert res.spec.classes == tiny_spec().classes       # the parent's classes, unchanged


def test_3d_samples_load_as_their_reviewed_slices(tmp_path, nuclei):
    img, lab = nuclei
    tf = TrainingFolder.create(tmp_path / "f", classes=("background", "nucleus"), task="instance")
    vol, lvol = np.stack([img[:48, :48]] * 3), np.stack([lab[:48, :48]] * 3)
    rev = np.ones(vol.shape, np.uint8)
    rev[1] = 0                                              # the middle slice was not looked at
    tf.add_sample(vol, lvol, rev, axes="ZYX", split="train", sample_id="vol")
    loaded = load_folders(tmp_path / "f")
    assert [s.meta["z"] for s in loaded.train] == [0, 2] and loaded.train[0].image.shape == (48, 48)
    assert loaded.folders[0].samples["train"] == 1 and loaded.folders[0].slices["train"] == 2


# --------------------------------------------------------------------------- augmentation, targets, loss


def test_augmented_patches_keep_image_and_target_aligned():
    rng = np.random.default_rng(1)
    lab = np.zeros((80, 96), np.uint8)
    lab[10:40, 5:30], lab[50:75, 40:90], lab[5:20, 60:70] = 1, 2, 1
    tgt = lab.copy()
    tgt[:, :8] = IGNORE                                     # unreviewed strip
    image = lab.astype(np.float32)                          # the image IS the labels
    identity = Normalizer.fit(Scale(in_min=0, in_max=1), image)
    for zoom, needed in ((None, 1.0), ((0.7, 1.4), 0.97)):
        cfg = AugmentConfig(flips=True, zoom=zoom, zoom_p=1.0, intensity=False)
        s = AugmentedPatchSampler([image], [identity], [tgt], ["other"], patch=32, config=cfg)
        x, y = s.batch(24, rng)
        assert x.shape == (24, 1, 32, 32) and y.shape == (24, 32, 32)
        known = y != IGNORE
        agree = (np.rint(x[:, 0]) == y)[known].mean()
        assert agree >= needed, (zoom, agree)
    # same generator state, same patches
    s = AugmentedPatchSampler([image], [identity], [tgt], ["other"], patch=32)
    a, b = s.batch(4, np.random.default_rng([7, 3])), s.batch(4, np.random.default_rng([7, 3]))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_stain_and_ct_jitter_are_seeded_and_identity_at_zero_strength(ihc_image):
    rgb = ihc_image[:64, :64]
    same = stain_jitter(rgb, np.random.default_rng(0), sigma=0, bias=0)
    assert np.abs(same - rgb).max() < 0.01
    j1, j2 = (stain_jitter(rgb, np.random.default_rng(5)) for _ in range(2))
    assert np.array_equal(j1, j2) and np.abs(j1 - rgb).mean() > 0.5
    hu = np.full((16, 16), 40.0, np.float32)
    c1, c2 = (ct_jitter(hu, np.random.default_rng(3)) for _ in range(2))
    assert np.array_equal(c1, c2) and not np.array_equal(c1, hu)


def test_unreviewed_labels_have_no_effect_on_the_gradient(tmp_path, nuclei):
    img, lab = nuclei
    reviewed = np.ones(lab.shape, np.uint8)
    reviewed[:, 48:] = 0                                    # right part of the crop never reviewed
    changed = lab.copy()
    changed[:, 48:96] = np.where(changed[:, 48:96] > 0, 0, 999)   # rewrite every unreviewed label
    assert (changed != lab)[:, 48:96].any()
    make_folder(tmp_path / "a", (img, lab), reviewed=reviewed, val=())
    make_folder(tmp_path / "b", (img, changed), reviewed=reviewed, val=())
    spec = tiny_spec()
    grads = []
    for name in ("a", "b"):
        s = load_folders(tmp_path / name).train[0]
        t = reviewed_targets(s, "instance")
        assert (t[:, 48:] == IGNORE).all()
        sampler = AugmentedPatchSampler([s.image], [Normalizer.fit(spec.normalization, s.image)], [t],
                                        ["fluorescence"], patch=48)
        x, y = sampler.batch(4, np.random.default_rng(0))
        torch.manual_seed(0)
        net = build("unet", 1, 3, dims=2, **spec.architecture_kwargs)
        net.load_state_dict(tiny_state(spec))
        loss = dice_ce_loss(net(torch.from_numpy(x)), torch.from_numpy(y))
        grads.append(torch.autograd.grad(loss, list(net.parameters())))
    for g1, g2 in zip(*grads):
        assert torch.equal(g1, g2)


def test_reviewed_targets_ignore_object_pixels_next_to_unreviewed_ones():
    lab = np.zeros((12, 12), np.uint16)
    lab[2:10, 2:10] = 1
    rev = np.ones((12, 12), np.uint8)
    rev[:, 8:] = 0
    t = reviewed_targets(Sample(np.zeros((12, 12)), lab, rev), "instance")
    assert (t[:, 8:] == IGNORE).all() and (t[2:10, 6:8] == IGNORE).all()   # 2-px rim of the object
    assert t[5, 4] == 1 and t[0, 7] == 0                    # interior and background stay


# --------------------------------------------------------------------------- the run


def test_fit_patch_and_version_bump():
    assert fit_patch(256, [(50, 70), (40, 40)], 4)[0] == 48
    assert "largest multiple of the network's divisor 4" in fit_patch(256, [(50, 70)], 4)[1]
    assert fit_patch(30, [(100, 100)], 16) == (16, fit_patch(30, [(100, 100)], 16)[1])
    assert fit_patch(64, [(100, 100)], 16) == (64, None)
    assert fit_patch(64, [(10, 10)], 16)[0] == 16          # padded up to the divisor
    assert bump_version("1.0.0") == "1.1.0" and bump_version("2.3") == "2.4.0" and bump_version("x") == "x.1"


@pytest.mark.filterwarnings("ignore:no val samples")
def test_patch_larger_than_the_samples_is_reduced_with_a_warning(tmp_path, nuclei):
    make_folder(tmp_path / "f", nuclei, train=((0, 50, 0, 70),), val=())
    make_parent(tmp_path / "parent")
    with pytest.warns(FinetuneWarning, match="patch 256 is larger than the largest training sample"):
        res = finetune(tmp_path / "f", parent=tmp_path / "parent", out=tmp_path / "out", steps=2,
                       **{**FAST, "patch": 256})
    assert res.spec.training["config"]["patch"] == 48
    assert res.improved is None and res.spec.training["parent_metrics"] == {}   # no val samples


def test_out_that_cannot_be_written_fails_before_training(tmp_path, nuclei):
    make_folder(tmp_path / "f", nuclei)
    make_parent(tmp_path / "parent")
    (tmp_path / "afile").write_text("a regular file")
    events = []
    for out in (tmp_path / "afile" / "pkg", Path("/proc/segloop-test-out")):
        with pytest.raises(ModelPackageError, match="not a writable folder"):
            finetune(tmp_path / "f", parent=tmp_path / "parent", out=out, steps=1, progress=events.append, **FAST)
    (tmp_path / "exists").mkdir()
    with pytest.raises(ModelPackageError, match="already exists"):
        finetune(tmp_path / "f", parent=tmp_path / "parent", out=tmp_path / "exists", steps=1, **FAST)
    assert events == []


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, nuclei):
    make_folder(tmp_path / "f", nuclei)
    make_parent(tmp_path / "parent")
    out = tmp_path / "out"
    with pytest.raises(TrainingDivergedError, match=r"became nan at step 2 .*last good checkpoint \(step 1\)"):
        finetune(tmp_path / "f", parent=tmp_path / "parent", out=out, steps=6, lr=1e30, checkpoint_every=1,
                 **FAST)
    ckpt = checkpoint_dir(out)
    assert (ckpt / "latest").read_text() == "step-0000001" and not out.exists()
    w = load_file(ckpt / "step-0000001" / "weights.safetensors")
    assert all(torch.isfinite(v).all() for v in w.values() if v.is_floating_point())
    # a new run to the same place must not silently mix with it
    with pytest.raises(ModelPackageError, match="pass --resume to continue it"):
        finetune(tmp_path / "f", parent=tmp_path / "parent", out=out, steps=6, **FAST)


def test_cancel_writes_the_best_evaluated_weights_or_nothing(tmp_path, nuclei):
    make_folder(tmp_path / "f", nuclei)
    make_parent(tmp_path / "parent")
    seen = []

    def cancel_after_first_eval():
        return any(e["event"] == "eval" for e in seen)

    res = finetune(tmp_path / "f", parent=tmp_path / "parent", out=tmp_path / "out", steps=40, eval_every=2,
                   progress=seen.append, cancel=cancel_after_first_eval, **FAST)
    assert res.stopped == "cancelled" and res.package == tmp_path / "out"
    spec = segloop.load_model(tmp_path / "out").spec
    assert spec.training["stopped"] == "cancelled" and spec.training["best"]["step"] == 2
    assert seen[-1]["event"] == "cancelled" and seen[-1]["package"] == str(tmp_path / "out")
    assert (checkpoint_dir(tmp_path / "out") / "latest").read_text() == "step-0000002"   # resumable

    seen.clear()
    res = finetune(tmp_path / "f", parent=tmp_path / "parent", out=tmp_path / "out2", steps=40, eval_every=20,
                   progress=seen.append, cancel=lambda: len(seen) > 3, **FAST)
    assert res.package is None and not (tmp_path / "out2").exists()
    assert "before any evaluation: no package written" in res.message and seen[-1]["package"] is None


def test_resume_with_a_checkpoint_of_another_architecture_is_refused(tmp_path, nuclei):
    make_folder(tmp_path / "f", nuclei)
    make_parent(tmp_path / "p2", architecture_kwargs={"depth": 2, "base_width": 4, "norm": "batch"})
    make_parent(tmp_path / "p3", architecture_kwargs={"depth": 3, "base_width": 4, "norm": "batch"})
    out = tmp_path / "out"
    with pytest.raises(ModelPackageError, match="nothing to resume"):
        finetune(tmp_path / "f", parent=tmp_path / "p2", out=out, steps=8, resume=True, **FAST)
    res = finetune(tmp_path / "f", parent=tmp_path / "p2", out=out, steps=8, checkpoint_every=1, eval_every=8,
                   cancel=lambda: (checkpoint_dir(out) / "latest").exists(), **FAST)
    assert res.package is None
    with pytest.raises(ModelPackageError, match=r"made for another network: architecture_kwargs .*'depth': 2"):
        finetune(tmp_path / "f", parent=tmp_path / "p3", out=out, steps=8, resume=True, **FAST)
    with pytest.raises(ModelPackageError, match=r"other settings: lr"):
        finetune(tmp_path / "f", parent=tmp_path / "p2", out=out, steps=8, lr=1e-2, resume=True, **FAST)


def _package_weights(path):
    return load_package(path).state_dict


def test_resume_after_sigkill_gives_the_same_weights_as_an_uninterrupted_run(tmp_path, nuclei):
    make_folder(tmp_path / "f", nuclei)
    make_parent(tmp_path / "parent")
    # one precision for both runs: "auto" measures, and the in-process run and the one-thread
    # subprocess could measure differently (bf16 ahead on one thread, not on two)
    args = dict(steps=30, eval_every=10, checkpoint_every=2, seed=3, batch=2, patch=32, device="cpu", onnx=False,
                keep_checkpoint=True, precision="fp32")
    whole = finetune(tmp_path / "f", parent=tmp_path / "parent", out=tmp_path / "whole", **args)

    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "segloop_train", str(tmp_path / "f"), "--from", str(tmp_path / "parent"),
           "--out", str(killed), "--steps", "30", "--eval-every", "10", "--checkpoint-every", "2", "--seed", "3",
           "--batch", "2", "--patch", "32", "--device", "cpu", "--threads", "1", "--no-onnx", "--progress-json",
           "--precision", "fp32"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        for line in proc.stdout:
            ev = json.loads(line)
            if ev["event"] == "checkpoint" and ev["step"] >= 4:
                os.kill(proc.pid, signal.SIGKILL)
                break
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL and not killed.exists()
    step = int((checkpoint_dir(killed) / "latest").read_text().split("-")[1])
    assert 4 <= step < 30

    events = []
    resumed = finetune(tmp_path / "f", parent=tmp_path / "parent", out=killed, resume=True, progress=events.append,
                       **args)
    assert events[0]["event"] == "start" and events[0]["resumed_from"] == step
    assert events[0]["parent_metrics"] == whole.parent_metrics
    final_a = load_file(checkpoint_dir(tmp_path / "whole") / "step-0000030" / "weights.safetensors")
    final_b = load_file(checkpoint_dir(killed) / "step-0000030" / "weights.safetensors")
    assert final_a.keys() == final_b.keys()
    for k in final_a:
        assert torch.equal(final_a[k], final_b[k]), k
    a, b = _package_weights(tmp_path / "whole"), _package_weights(killed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.metrics == whole.metrics and resumed.spec.training["resumed_from"] == step


def test_cli_progress_json_end_to_end_writes_a_loadable_package_with_its_parent(tmp_path, nuclei):
    make_folder(tmp_path / "f", nuclei)
    parent = make_parent(tmp_path / "parent")
    out = tmp_path / "child"
    cmd = [sys.executable, "-m", "segloop_train", str(tmp_path / "f"), "--from", str(parent), "--out", str(out),
           "--steps", "4", "--eval-every", "2", "--batch", "2", "--patch", "32", "--device", "cpu",
           "--threads", "1", "--progress-json"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines()]      # every line is one JSON object
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done" and kinds.count("step") == 4 and kinds.count("eval") == 2
    start, done = events[0], events[-1]
    assert start["steps"] == 4 and "f1@0.5" in start["parent_metrics"]
    assert [e["step"] for e in events if e["event"] == "step"] == [1, 2, 3, 4]
    assert done["package"] == str(out) and isinstance(done["improved"], bool)
    assert done["parent_metrics"] == start["parent_metrics"] and "f1@0.5" in done["metrics"]

    model = segloop.load_model(out)
    p = load_package(parent).spec
    assert model.spec.parent == {"name": p.name, "version": p.version, "sha256": p.sha256}
    assert model.spec.version == "0.1.0" and model.spec.name == "tiny"
    t = model.spec.training
    assert t["folders"][0]["fingerprint"] == TrainingFolder.open(tmp_path / "f").fingerprint()
    assert t["folders"][0]["samples"] == {"train": 1, "val": 1, "test": 0}
    assert t["improved"] == done["improved"] and t["command"].startswith("segloop-train ")
    assert len(t["history"]) == 2 and t["torch"] == torch.__version__
    assert model.package.onnx_bytes is not None                   # exported and checked
    assert not checkpoint_dir(out).exists()                       # removed once the package is written
    model.predict(nuclei[0][:64, :64])


def test_sigterm_cancels_the_cli_run_and_writes_the_best_package(tmp_path, nuclei):
    make_folder(tmp_path / "f", nuclei)
    out = tmp_path / "child"
    cmd = [sys.executable, "-m", "segloop_train", str(tmp_path / "f"), "--from", str(make_parent(tmp_path / "p")),
           "--out", str(out), "--steps", "500", "--eval-every", "2", "--batch", "2", "--patch", "32",
           "--device", "cpu", "--threads", "1", "--no-onnx", "--progress-json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    events = []
    for line in proc.stdout:
        events.append(json.loads(line))
        if events[-1]["event"] == "eval":
            proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    last = events[-1]
    assert last["event"] == "cancelled" and last["package"] == str(out) and last["step"] < 500
    spec = segloop.load_model(out).spec
    assert spec.training["stopped"] == "cancelled" and spec.training["best"]["step"] % 2 == 0
    assert (checkpoint_dir(out) / "latest").exists()


def test_cli_errors_are_one_line_and_exit_2(tmp_path, nuclei, capsys):
    from segloop_train.cli import main

    make_folder(tmp_path / "cells", nuclei, classes=("background", "cell", "nucleus"))
    rc = main([str(tmp_path / "cells"), "--from", str(make_parent(tmp_path / "parent")), "--out",
               str(tmp_path / "out"), "--steps", "1", "--progress-json"])
    cap = capsys.readouterr()
    assert rc == 2
    assert cap.err.count("\n") == 1 and cap.err.startswith("segloop-train: error: ") and "['cell', 'nucleus']" in cap.err
    ev = json.loads(cap.out)
    assert ev["event"] == "error" and "['nucleus']" in ev["message"]
    rc = main([str(tmp_path / "cells"), "--from", "no-such-model", "--out", str(tmp_path / "o2")])
    assert rc == 2 and "no model named or at 'no-such-model'" in capsys.readouterr().err


def test_from_scratch_semantic_via_cli(tmp_path, nuclei, capsys):
    from segloop_train.cli import main

    img, lab = nuclei
    tf = TrainingFolder.create(tmp_path / "sem", classes=("background", "bright"), task="semantic")
    tf.add_sample(img[:64, :64], (lab[:64, :64] > 0).astype(np.uint8), axes="YX", split="train")
    tf.add_sample(img[64:128, :64], (lab[64:128, :64] > 0).astype(np.uint8), axes="YX", split="val")
    rc = main([str(tmp_path / "sem"), "--arch", "unet", "--arch-kwargs", '{"depth": 2, "base_width": 4}',
               "--out", str(tmp_path / "m"), "--steps", "3", "--batch", "2", "--patch", "32", "--device", "cpu",
               "--no-onnx"])
    assert rc == 0, capsys.readouterr().err
    spec = segloop.load_model(tmp_path / "m").spec
    assert spec.parent is None and spec.classes == ("background", "bright") and spec.task == "semantic"
    assert spec.version == "0.1.0" and {"dice", "jaccard", "pixel_accuracy"} <= set(spec.training["metrics"])
    assert spec.training["improved"] is None


@pytest.mark.parametrize("steps", [1, 3, 10])
def test_very_short_runs_and_no_val_samples_still_write_a_package(tmp_path, nuclei, steps):
    """OneCycleLR divides by its warm-up length: a handful of steps must not crash (found by the widget test)."""
    make_folder(tmp_path / "f", nuclei, val=())
    make_parent(tmp_path / "parent")
    from segloop_train.finetune import FinetuneWarning

    with pytest.warns(FinetuneWarning, match="no val samples"):
        res = finetune(tmp_path / "f", parent=tmp_path / "parent", out=tmp_path / "m", steps=steps, **FAST)
    assert (tmp_path / "m" / "segloop-model.json").is_file() and res.metrics == {}
