"""2.5D and 3D fine-tuning: volume patches, the reviewed mask in 3D, end-to-end runs, the bundled CT models.

Synthetic CT-like volumes (HU) in real training folders in tmp_path; tiny real networks.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import segloop
from segloop.core.formats.normalization import Scale
from segloop.core.formats.package import (
    ModelPackage,
    ModelSpec,
    load_package,
    save_package,
)
from segloop.core.formats.registry import BUNDLED_DIR
from segloop.core.formats.trainfolder import TrainingFolder
from segloop.core.inference.model import Model, verify_package
from segloop.core.inference.normalize import Normalizer
from segloop.core.inference.tiling import predict_tiled_3d
from segloop.core.networks import build
from segloop.errors import ModelPackageError
from segloop_train.augment import AugmentConfig
from segloop_train.cli import main as train_cli
from segloop_train.data import IGNORE, Sample, reviewed_targets
from segloop_train.evaluate import VolumePredictor
from segloop_train.finetune import checkpoint_dir, finetune, fit_patch_3d
from segloop_train.folders import load_folders
from segloop_train.losses import dice_ce_loss
from segloop_train.volumes import VolumePatchSampler, context_indices, context_stack

CLASSES = ("background", "liver", "tumour")
WINDOW = {"kind": "ct_window", "level": 40.0, "width": 400.0}
TINY = {"depth": 2, "base_width": 4, "norm": "batch"}
CT_MODELS = ("ct-liver-segunet25d", "ct-liver-unet3d")


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def phantom(shape=(24, 32, 32), seed=0):
    """A CT-like volume: an ellipsoid 'liver' (120 HU) with a 'tumour' (60 HU) in air-ish background (-100 HU)."""
    z, y, x = np.mgrid[:shape[0], :shape[1], :shape[2]]
    c = [s / 2 for s in shape]
    lab = np.zeros(shape, np.uint8)
    lab[((z - c[0]) / (0.45 * shape[0])) ** 2 + ((y - c[1]) / (0.35 * shape[1])) ** 2
        + ((x - c[2]) / (0.35 * shape[2])) ** 2 < 1] = 1
    lab[((z - c[0]) / 4) ** 2 + ((y - c[1] - 3) / 4) ** 2 + ((x - c[2] + 2) / 4) ** 2 < 1] = 2
    rng = np.random.default_rng(seed)
    hu = np.choose(lab, [-100.0, 120.0, 60.0]).astype(np.float32) + rng.normal(0, 10, shape).astype(np.float32)
    return hu, lab


def volume_folder(path, *, spacing=(2.5, 0.8, 0.8)):
    tf = TrainingFolder.create(path, classes=CLASSES, task="semantic", modality="CT")
    for i, split in enumerate(("train", "val")):
        hu, lab = phantom(seed=i)
        tf.add_sample(hu, lab, None, axes="ZYX", source=f"{split}.nii", split=split, sample_id=split,
                      spacing=spacing)
    return tf


def parent_package(path, *, dims, context_slices=1):
    spec = ModelSpec(name=f"p{dims}d{context_slices}", version="1.0.0", architecture="unet",
                     architecture_kwargs=dict(TINY), dims=dims, in_channels=context_slices, classes=CLASSES,
                     task="semantic", postprocess={}, normalization=dict(WINDOW), context_slices=context_slices,
                     tile={"size": [16, 32, 32] if dims == 3 else 64, "overlap": 0.25}, modality="CT")
    torch.manual_seed(0)
    net = build("unet", spec.in_channels, 3, dims=dims, **TINY)
    return save_package(path, spec, net.state_dict())


# --------------------------------------------------------------------------- 2.5D patch assembly


def test_context_stack_is_slice_major_and_clamped_at_the_volume_ends():
    assert context_indices(0, 6, 5).tolist() == [0, 0, 0, 1, 2]
    assert context_indices(5, 6, 5).tolist() == [3, 4, 5, 5, 5]
    z, c = np.meshgrid(np.arange(6), np.arange(2), indexing="ij")
    vol = (10 * z + c).astype(np.float32)[:, :, None, None] * np.ones((1, 1, 3, 3), np.float32)   # (Z, C, Y, X)
    st = context_stack(vol, 1, 5)
    assert st.shape == (10, 3, 3)
    # channel j * C + c = image channel c of slice clip(z - 2 + j): slice-major
    assert st[:, 0, 0].tolist() == [0, 1, 0, 1, 10, 11, 20, 21, 30, 31]          # slices 0, 0, 1, 2, 3


def test_25d_patches_stack_the_neighbours_of_the_centre_slice_whose_labels_alone_are_the_target():
    depth, k = 5, 5
    hu = np.repeat(np.arange(depth, dtype=np.float32), 24 * 24).reshape(depth, 24, 24)   # value = slice index
    labels = np.repeat(np.arange(depth, dtype=np.uint8), 24 * 24).reshape(depth, 24, 24)  # class = slice index
    reviewed = np.ones(labels.shape, np.uint8)
    reviewed[2, :, :12] = 0                                # half of the middle slice not reviewed
    tgt = reviewed_targets(Sample(hu, labels, reviewed), "semantic", per_slice=True)
    identity = Normalizer.fit(Scale(in_min=0, in_max=1), hu)
    s = VolumePatchSampler([hu], [identity], [tgt], ["other"], patch=16, dims=2, context_slices=k,
                           config=replace(AugmentConfig.none(), foreground_fraction=0.0))
    x, y = s.batch(60, np.random.default_rng(0))
    assert x.shape == (60, k, 16, 16) and y.shape == (60, 16, 16)
    seen = set()
    for xi, yi in zip(x, y):
        zc = int(xi[k // 2, 0, 0])                         # the centre channel is the centre slice
        assert [float(v) for v in xi[:, 0, 0]] == context_indices(zc, depth, k).tolist()   # order + clamp
        assert ((yi == zc) | (yi == IGNORE)).all() and (yi == zc).any()  # target: the centre slice only
        if zc != 2:
            assert not (yi == IGNORE).any()
        seen.add(zc)
    assert seen == set(range(depth))                       # both ends (clamped stacks) included


def test_a_2d_sample_trains_a_25d_model_as_its_slice_repeated(tmp_path):
    hu, lab = phantom((1, 32, 32))
    tf = TrainingFolder.create(tmp_path / "f", classes=CLASSES, task="semantic", modality="CT")
    tf.add_sample(hu[0], lab[0], None, axes="YX", source="a.tif", split="train", sample_id="a")
    loaded = load_folders(tmp_path / "f", volumes=True)
    (s,) = loaded.train
    assert s.image.shape == (1, 32, 32) and s.meta["from_2d"]
    nz = Normalizer.fit(WINDOW, s.image)
    sampler = VolumePatchSampler([s.image], [nz], [reviewed_targets(s, "semantic", per_slice=True)], ["CT"],
                                 patch=16, dims=2, context_slices=3, config=AugmentConfig.none())
    x, _ = sampler.batch(3, np.random.default_rng(1))
    assert np.array_equal(x[:, 0], x[:, 1]) and np.array_equal(x[:, 1], x[:, 2])


# --------------------------------------------------------------------------- 3D patches


def test_3d_patches_are_drawn_where_voxels_were_reviewed_in_proportion_to_them():
    a_hu, a_lab = phantom((24, 40, 40), seed=1)
    b_hu, b_lab = phantom((24, 40, 40), seed=2)
    rev_a = np.zeros(a_lab.shape, np.uint8)
    rev_a[2:6, 4:10, 28:36] = 1                            # a small box in a corner
    rev_b = np.zeros(b_lab.shape, np.uint8)
    rev_b[2:6, 4:16, 28:36] = 1                            # twice as many reviewed voxels
    targets = [reviewed_targets(Sample(a_hu, a_lab, rev_a), "semantic"),
               reviewed_targets(Sample(b_hu, b_lab, rev_b), "semantic")]
    nzs = [Normalizer.fit(WINDOW, a_hu), Normalizer.fit(WINDOW, b_hu)]
    s = VolumePatchSampler([a_hu, b_hu], nzs, targets, ["CT", "CT"], patch=(8, 16, 16), dims=3)
    assert s.weights.tolist() == pytest.approx([1 / 3, 2 / 3])
    x, y = s.batch(30, np.random.default_rng(3))
    assert x.shape == (30, 1, 8, 16, 16) and y.shape == (30, 8, 16, 16)
    assert all((yi != IGNORE).any() for yi in y)          # every patch holds reviewed voxels
    # without the reviewed weighting a random 8x16x16 window misses the box most of the time
    for i in range(2):
        c = [s.centre(i, np.random.default_rng(j)) for j in range(50)]
        assert all(targets[i][z, yy, xx] != IGNORE for z, yy, xx in c)


def test_3d_augmentation_keeps_image_and_target_aligned_and_never_flips_z():
    lab = np.zeros((16, 24, 24), np.uint8)
    for z in range(16):                                    # class rises with z; an L shape in-plane
        lab[z, 4:20, 4:8] = lab[z, 16:20, 4:20] = 1 + z // 8
    img = lab.astype(np.float32)                           # the image IS the labels
    identity = Normalizer.fit(Scale(in_min=0, in_max=1), img)
    cfg = AugmentConfig(zoom=None, intensity=False)
    s = VolumePatchSampler([img], [identity], [lab], ["other"], patch=(16, 24, 24), dims=3, config=cfg)
    x, y = s.batch(16, np.random.default_rng(0))
    orients = set()
    for xi, yi in zip(x, y):
        assert np.array_equal(np.rint(xi[0]), yi)          # same geometric transform on both
        per_z = [int(yi[z].max()) for z in range(16)]
        assert per_z == sorted(per_z) and per_z[0] == 1 and per_z[-1] == 2     # Z order kept
        orients.add(yi[0].tobytes())
    assert len(orients) >= 4                               # in-plane rotations / flips did happen


def test_unreviewed_voxels_have_no_effect_on_the_3d_gradient():
    hu, lab = phantom((16, 24, 24))
    reviewed = np.ones(lab.shape, np.uint8)
    reviewed[:, :, 12:] = 0                                # half of every slice never reviewed
    changed = lab.copy()
    changed[:, :, 12:] = np.where(changed[:, :, 12:] > 0, 0, 2)
    grads = []
    for labels in (lab, changed):
        t = reviewed_targets(Sample(hu, labels, reviewed), "semantic")
        assert (t[:, :, 12:] == IGNORE).all()
        s = VolumePatchSampler([hu], [Normalizer.fit(WINDOW, hu)], [t], ["CT"], patch=(8, 16, 16), dims=3)
        x, y = s.batch(2, np.random.default_rng(0))
        torch.manual_seed(0)
        net = build("unet", 1, 3, dims=3, **TINY)
        loss = dice_ce_loss(net(torch.from_numpy(x)), torch.from_numpy(y))
        grads.append(torch.autograd.grad(loss, list(net.parameters())))
    for g1, g2 in zip(*grads):
        assert torch.equal(g1, g2)
    # and in the loss itself: the logits of ignored voxels get exactly zero gradient, in 3D
    logits = torch.randn(2, 3, 4, 6, 6, requires_grad=True)
    target = torch.randint(0, 3, (2, 4, 6, 6))
    target[:, :, :, 3:] = IGNORE
    (g,) = torch.autograd.grad(dice_ce_loss(logits, target), logits)
    assert (g[..., 3:] == 0).all() and (g[..., :3] != 0).any()
    # instance targets in 3D: object voxels next to unreviewed ones are ignored too
    inst = np.zeros((6, 12, 12), np.uint16)
    inst[1:5, 2:10, 2:10] = 7
    rev = np.ones(inst.shape, np.uint8)
    rev[:, :, 9:] = 0
    other = inst.copy()
    other[:, :, 9:] = 3
    t1, t2 = (reviewed_targets(Sample(inst, v, rev), "instance") for v in (inst, other))
    assert np.array_equal(t1, t2)


def test_fit_patch_3d_fits_each_axis_to_the_volumes_and_the_divisor():
    assert fit_patch_3d((32, 96, 96), [(24, 128, 100)], 8) == ((24, 96, 96), fit_patch_3d((32, 96, 96),
                                                                                           [(24, 128, 100)], 8)[1])
    assert fit_patch_3d(64, [(128, 128, 128)], 16) == ((64, 64, 64), None)
    assert "using [16, 16, 16]" in fit_patch_3d(20, [(64, 64, 64)], 16)[1]


def test_a_held_out_axial_slab_is_never_seen_in_training(tmp_path):
    hu, lab = phantom((128, 12, 12))
    tf = TrainingFolder.create(tmp_path / "f", classes=CLASSES, task="semantic", modality="CT")
    res = tf.add_sample(hu, lab, None, axes="ZYX", source="one.nii")
    assert [r.split for r in res.records] == ["train", "val"]
    loaded = load_folders(tmp_path / "f", volumes=True)
    (train,), (val,) = loaded.train, loaded.val
    assert train.image.shape[0] == 88 and val.image.shape[0] == 32          # 96..127 held out, gap 88..95
    assert np.array_equal(val.image, hu[96:]) and np.array_equal(train.image, hu[:88])
    # read as 2D slices (a 2D model), the gap and the slab are not train slices either
    assert max(s.meta["z"] for s in load_folders(tmp_path / "f").train) == 87


# --------------------------------------------------------------------------- whole-volume prediction


def test_3d_windows_of_the_shared_sliding_window_blend_to_the_whole_volume_answer():
    # Training evaluates volumes through Model.predict, i.e. the one sliding window of
    # segloop.core.inference.tiling (there is no training copy any more).
    class Pointwise(torch.nn.Module):                      # voxel-wise: any window gives the same logits
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.conv = torch.nn.Conv3d(1, 3, 1)

        def forward(self, x):
            return self.conv(x)

    hu, _ = phantom((20, 36, 28))
    nz = Normalizer.fit(WINDOW, hu)
    net = Pointwise()

    def predictor(batch):
        with torch.no_grad():
            return torch.softmax(net(torch.from_numpy(batch)), 1).numpy()

    whole = predict_tiled_3d(predictor, hu, patch=hu.shape, normalize=nz).argmax(0)
    tiled = predict_tiled_3d(predictor, hu, patch=(8, 16, 16), overlap=0.5, normalize=nz, batch_size=2).argmax(0)
    assert whole.shape == hu.shape and np.array_equal(whole, tiled)
    with torch.no_grad():
        direct = net(torch.from_numpy(np.moveaxis(nz(hu), 1, 0)[None])).argmax(1)[0].numpy()
    assert np.array_equal(whole, direct)


def test_volume_evaluation_is_model_predict(tmp_path):
    hu, _ = phantom((12, 32, 32))
    for dims, k, tile in ((2, 3, {"size": 32, "overlap": 0.25}), (3, 1, {"size": [12, 32, 32], "overlap": 0.25})):
        spec = ModelSpec(name="t", version="1", architecture="unet", architecture_kwargs=dict(TINY), dims=dims,
                         in_channels=k, classes=CLASSES, task="semantic", postprocess={}, normalization=WINDOW,
                         context_slices=k, tile=tile)
        torch.manual_seed(1)
        net = build("unet", k, 3, dims=dims, **TINY).eval()
        pkg = ModelPackage(spec, net.state_dict())
        by_model = Model(pkg, device="cpu", precision="fp32").predict(hu, batch_size=4).labels
        np.testing.assert_array_equal(VolumePredictor(pkg)(hu, batch_size=4), by_model, err_msg=f"dims {dims}")


# --------------------------------------------------------------------------- end to end


def test_25d_and_3d_fine_tuning_write_packages_with_dims_context_tile_and_parent(tmp_path):
    volume_folder(tmp_path / "f")
    p25 = parent_package(tmp_path / "p25", dims=2, context_slices=3)
    p3 = parent_package(tmp_path / "p3", dims=3)
    common = dict(steps=3, eval_every=3, batch=2, device="cpu", seed=1)
    r25 = finetune(tmp_path / "f", parent=tmp_path / "p25", out=tmp_path / "c25", patch=32, onnx=False, **common)
    r3 = finetune(tmp_path / "f", parent=tmp_path / "p3", out=tmp_path / "c3", patch=(8, 32, 32), onnx=True, **common)
    for res, parent, dims, k, tile in ((r25, p25, 2, 3, {"size": 64, "overlap": 0.25}),
                                       (r3, p3, 3, 1, {"size": [16, 32, 32], "overlap": 0.25})):
        spec = verify_package(res.package)
        assert (spec.dims, spec.context_slices, spec.in_channels, spec.tile) == (dims, k, k, tile)
        assert spec.parent == {"name": parent.name, "version": "1.0.0", "sha256": parent.sha256}
        assert spec.version == "1.1.0" and spec.spacing == (2.5, 0.8, 0.8)
        assert spec.training["dims"] == dims and spec.training["context_slices"] == k
        for m in (res.metrics, res.parent_metrics):        # per class, held-out, parent vs child
            assert {"dice", "jaccard", "pixel_accuracy", "dice:liver", "dice:tumour", "jaccard:liver"} <= m.keys()
        assert res.improved is not None
        card = (res.package / "MODEL_CARD.md").read_text()
        assert "liver" in card and "| parent |" in card
    onnx = r3.spec.training["onnx"]
    assert onnx["exported"] == (r3.package / "model.onnx").is_file()
    assert onnx["exported"] or "no model.onnx" in (r3.package / "MODEL_CARD.md").read_text()


def test_from_scratch_25d_and_3d_through_the_cli(tmp_path, capsys):
    volume_folder(tmp_path / "f", spacing=None)
    common = ["--task", "semantic", "--normalization", json.dumps(WINDOW), "--arch-kwargs", json.dumps(TINY),
              "--steps", "2", "--eval-every", "2", "--batch", "2", "--device", "cpu", "--no-onnx", "--threads", "1"]
    assert train_cli([str(tmp_path / "f"), "--arch", "segunet", "--context-slices", "5", "--patch", "32",
                      "--out", str(tmp_path / "s25"), *common]) == 0
    assert train_cli([str(tmp_path / "f"), "--arch", "unet", "--dims", "3", "--patch", "8,32,32",
                      "--out", str(tmp_path / "s3"), *common]) == 0
    a, b = load_package(tmp_path / "s25").spec, load_package(tmp_path / "s3").spec
    assert (a.dims, a.context_slices, a.in_channels, a.parent) == (2, 5, 5, None)
    assert (b.dims, b.context_slices, b.tile["size"], b.spacing) == (3, 1, [8, 32, 32], None)
    assert "--context-slices 5" in a.training["command"] and b.training["config"]["patch"] == [8, 32, 32]
    assert train_cli([str(tmp_path / "f"), "--arch", "unet", "--dims", "3", "--context-slices", "3",
                      "--out", str(tmp_path / "bad"), *common]) == 2
    assert "context_slices > 1 (2.5D) is for 2D networks" in capsys.readouterr().err


def test_resumed_3d_run_ends_with_the_weights_of_an_uninterrupted_one(tmp_path):
    volume_folder(tmp_path / "f")
    parent_package(tmp_path / "p3", dims=3)
    args = dict(parent=tmp_path / "p3", steps=6, eval_every=6, checkpoint_every=2, batch=2, patch=(8, 16, 16),
                device="cpu", seed=2, onnx=False, keep_checkpoint=True)
    finetune(tmp_path / "f", out=tmp_path / "whole", **args)
    out = tmp_path / "cut"
    res = finetune(tmp_path / "f", out=out, cancel=lambda: (checkpoint_dir(out) / "latest").exists(), **args)
    assert res.stopped == "cancelled" and res.package is None
    assert (checkpoint_dir(out) / "latest").read_text() == "step-0000002"
    finetune(tmp_path / "f", out=out, resume=True, **args)
    a = load_file(checkpoint_dir(tmp_path / "whole") / "step-0000006" / "weights.safetensors")
    b = load_file(checkpoint_dir(out) / "step-0000006" / "weights.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ModelPackageError, match="other settings: patch"):
        finetune(tmp_path / "f", out=tmp_path / "cut2", resume=checkpoint_dir(out),
                 **{**args, "patch": (8, 8, 8)})


# --------------------------------------------------------------------------- the bundled CT models


@pytest.mark.parametrize("name", CT_MODELS)
def test_bundled_ct_models_load_verify_and_document_their_held_out_metrics(name):
    assert name in segloop.list_models()
    path = BUNDLED_DIR / name
    spec = verify_package(path)                            # sha256 of the weights, and they fit the network
    assert (path / "model.safetensors").stat().st_size < 10_000_000
    assert spec.classes == CLASSES and spec.task == "semantic" and spec.modality == "CT"
    assert spec.normalization["kind"] == "ct_window" and spec.parent is None and spec.spacing is None
    assert (spec.dims, spec.context_slices) == ((2, 5) if "25d" in name else (3, 1))
    assert "non-commercial" in spec.license.lower()
    shipped = spec.training["shipped_metrics"]
    card = (path / "MODEL_CARD.md").read_text()
    for needed in ("## Data", "LiTS", "one patient", "Not a clinical tool", "non-commercial", "Held-out",
                   "spacing unknown", "seed 0"):
        assert needed.lower() in card.lower(), needed
    for cls in ("liver", "tumour"):
        row = re.search(rf"\| {cls} \| ([0-9.]+) \| ([0-9.]+) \|", card)
        assert row, cls
        assert float(row.group(1)) == pytest.approx(shipped[f"dice:{cls}"], abs=5e-4)
        assert float(row.group(2)) == pytest.approx(shipped[f"jaccard:{cls}"], abs=5e-4)
    assert spec.training["command"].startswith(f"python -m segloop_train.recipes {name}")


def test_class_balance_centres_rare_classes_as_often_as_common_ones():
    lab = np.zeros((4, 64, 64), np.uint8)
    lab[:, 4:60, 4:60] = 1                                 # a "lung": 12,544 voxels
    lab[2, 30:32, 30:32] = 2                               # a "nodule": 4 voxels
    hu = np.zeros(lab.shape, np.float32)
    identity = Normalizer.fit(Scale(in_min=0, in_max=1), hu)
    tgt = lab.copy()

    def centres(balance: bool) -> np.ndarray:
        cfg = replace(AugmentConfig.none(), foreground_fraction=1.0, class_balance=balance)
        s = VolumePatchSampler([hu], [identity], [tgt], ["CT"], patch=8, dims=2, context_slices=1, config=cfg)
        rng = np.random.default_rng(0)
        return np.array([tgt.flat[s._centre_index(0, rng)] for _ in range(400)])

    plain, balanced = centres(False), centres(True)
    assert (plain == 2).mean() < 0.01                      # in proportion to area: the nodule is never the centre
    assert 0.4 < (balanced == 2).mean() < 0.6 and (balanced > 0).all()
