"""Uncertainty: entropy, test-time-augmentation disagreement and MC-dropout, on real (tiny and bundled) models."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from segloop.core.formats.package import ModelPackage, load_package
from segloop.core.formats.registry import BUNDLED_DIR
from segloop.core.inference.engines import TorchPredictor
from segloop.core.inference.model import Model, load_model
from segloop.core.inference.postprocess import entropy
from segloop.core.inference.uncertainty import (
    METHODS,
    UncertaintyResult,
    disagreement_map,
    estimate_uncertainty,
    supports_mc_dropout,
)
from segloop.errors import Cancelled, UncertaintyError, UnsupportedUncertaintyError

from .conftest import tiny_spec, tiny_state


def _model(name="tiny", *, sharpen: float = 30.0, **changes) -> Model:
    """A tiny random network whose head is scaled up: an untrained net's probabilities barely depend
    on the input, so its uncertainties would all be ~0 and prove nothing."""
    spec = tiny_spec(name=name, **changes)
    state = tiny_state(spec)
    state["head.weight"] = state["head.weight"] * sharpen
    return Model(ModelPackage(spec, state), device="cpu", precision="fp32")


def _dropout_spec():
    return {"architecture_kwargs": {"depth": 2, "base_width": 4, "norm": "batch", "dropout": 0.5}}


@pytest.fixture(scope="module")
def nuclei():
    return load_model("nuclei-unet", device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def nuclei_crop(nuclei_image):
    return nuclei_image[100:356, 100:356]


# --------------------------------------------------------------------------- maps


def test_entropy_is_normalized_float32_by_default():
    probs = np.array([[1.0, 0.5, 1 / 3], [0.0, 0.5, 1 / 3], [0.0, 0.0, 1 / 3]], np.float32)   # (K=3, 3 pixels)
    h = entropy(probs)
    assert h.dtype == np.float32 and h.shape == (3,)
    np.testing.assert_allclose(h, [0.0, np.log(2) / np.log(3), 1.0], atol=1e-6)
    assert entropy(np.ones((1, 4, 4))).max() == 0                 # one class: nothing to doubt
    np.testing.assert_allclose(entropy(np.moveaxis(probs, 0, -1), axis=-1), h, atol=1e-6)


def test_disagreement_is_zero_for_agreement_one_for_an_even_split_and_4var_for_two_classes():
    p = np.random.default_rng(0).dirichlet([1, 1, 1], size=(5, 7)).transpose(2, 0, 1)  # (K, 5, 7)
    same = np.stack([p] * 4)
    assert np.abs(disagreement_map(same)).max() < 1e-6
    onehot = np.stack([np.eye(3)[:, [i]] for i in range(3)])          # three samples, each certain of another class
    np.testing.assert_allclose(disagreement_map(onehot), [1.0], atol=1e-6)
    fg = np.random.default_rng(1).random((6, 10))
    two = np.stack([1 - fg, fg], axis=1)                              # (T=6, K=2, 10)
    np.testing.assert_allclose(disagreement_map(two), 4 * fg.var(axis=0), atol=1e-5)


# --------------------------------------------------------------------------- entropy on a real model and image


def test_entropy_matches_predict_and_is_higher_on_object_boundaries(nuclei, nuclei_crop):
    from scipy.ndimage import distance_transform_edt
    from skimage.segmentation import find_boundaries

    res = estimate_uncertainty(nuclei, nuclei_crop, methods=("entropy",))
    plain = nuclei.predict(nuclei_crop, uncertainty=True)
    np.testing.assert_array_equal(res.labels, plain.labels)           # labels are the plain prediction
    ent = res.maps["entropy"]
    assert ent.dtype == np.float32 and ent.shape == nuclei_crop.shape
    assert 0 <= ent.min() and ent.max() <= 1
    np.testing.assert_allclose(ent, plain.uncertainty.astype(np.float32), atol=2e-3)
    assert res.n_objects == plain.n_objects > 10
    boundary = find_boundaries(res.labels, mode="thick")
    far_background = distance_transform_edt(res.labels == 0) > 6
    assert ent[boundary].mean() > 5 * ent[far_background].mean()
    np.testing.assert_array_equal(res.combined(), ent)


# --------------------------------------------------------------------------- TTA


def _d4_symmetric(state):
    """Conv kernels averaged over the 8 flips/transposes of their last two axes: a flip- and
    transpose-equivariant network (1x1 kernels and biases are unchanged)."""
    import torch

    out = {}
    for name, w in state.items():
        if w.ndim == 4 and w.shape[-1] == w.shape[-2] and w.shape[-1] > 1:
            views = [w, w.flip(-1), w.flip(-2), w.flip(-1, -2)]
            views += [v.transpose(-1, -2) for v in views]
            w = torch.stack(views).mean(0)
        out[name] = w
    return out


def test_tta_is_zero_for_a_flip_equivariant_network_and_not_for_the_original(nuclei_image):
    """nuclei-unet with every kernel averaged over its flips and transposes is equivariant to them:
    its TTA disagreement is zero; the original's is not."""
    pkg = load_package(BUNDLED_DIR / "nuclei-unet")
    image = nuclei_image[100:196, 100:164]     # not square: a transpose mixed up with H/W would show
    sym = Model(ModelPackage(pkg.spec, _d4_symmetric(pkg.state_dict)), device="cpu", precision="fp32")
    res = estimate_uncertainty(sym, image, methods=("tta",), tta_flips=8)
    assert res.maps["tta"].shape == image.shape and res.maps["tta"].dtype == np.float32
    assert res.maps["tta"].max() < 1e-4 and res.n_objects > 0
    assert res.provenance["uncertainty"]["augmentations"][:4] == ["identity", "flip-y", "flip-x", "flip-y+flip-x"]

    plain = Model(pkg, device="cpu", precision="fp32")
    tta = estimate_uncertainty(plain, image, methods=("tta",), tta_flips=8).maps["tta"]
    assert tta.max() > 0.05 and 0 <= tta.min() and tta.max() <= 1


def test_tta_matches_flipping_by_hand(nuclei, nuclei_image):
    """The TTA map equals the disagreement of predictions made on flipped copies and flipped back."""
    model = nuclei
    image = nuclei_image[:70, :90]             # smaller than a tile: padded, so flips really disagree
    probs = []
    for axes in [(), (0,), (1,), (0, 1)]:
        p = model.predict(np.flip(image, axes) if axes else image, probabilities=True).probabilities
        probs.append(np.flip(p.astype(np.float32), tuple(a + 1 for a in axes)) if axes else p.astype(np.float32))
    want = disagreement_map(np.stack(probs))
    got = estimate_uncertainty(model, image, methods=("tta", "entropy"))
    assert want.max() > 0.05
    np.testing.assert_allclose(got.maps["tta"], want, atol=2e-3)     # float16 probabilities by hand
    assert list(got.maps) == ["tta", "entropy"]
    np.testing.assert_allclose(got.combined(), (got.maps["tta"] + got.maps["entropy"]) / 2, atol=1e-6)


# --------------------------------------------------------------------------- MC-dropout


def test_mc_dropout_needs_dropout(nuclei_image):
    model = _model()
    assert not supports_mc_dropout(model)
    with pytest.raises(UnsupportedUncertaintyError, match="no dropout"):
        estimate_uncertainty(model, nuclei_image[:64, :64], methods=("entropy", "mc_dropout"))


def test_mc_dropout_needs_the_torch_engine(nuclei_image):
    pytest.importorskip("onnxruntime")
    spec = tiny_spec(**_dropout_spec())
    onnx_model = Model(ModelPackage(spec, tiny_state(spec)), device="cpu", engine="onnx")
    assert not supports_mc_dropout(onnx_model)
    with pytest.raises(UnsupportedUncertaintyError, match="torch engine"):
        estimate_uncertainty(onnx_model, nuclei_image[:64, :64], methods=("mc_dropout",))


def test_mc_dropout_varies_is_seeded_keeps_batchnorm_in_eval_and_restores_eval(nuclei_image):
    import torch

    model = _model(**_dropout_spec())
    # An engine that keeps its BatchNorm layers (no folding), to see that they stay in eval mode.
    model.predictor = TorchPredictor(model.network, device="cpu", precision="fp32", fold_batchnorm=False)
    net = model.predictor.network
    assert supports_mc_dropout(model)
    modes = set()

    def watch(done, total):
        for m in net.modules():
            if isinstance(m, torch.nn.Dropout):
                modes.add(("dropout", m.training))
            elif isinstance(m, torch.nn.BatchNorm2d):
                modes.add(("batchnorm", m.training))

    image = nuclei_image[:64, :80]
    rng_before = torch.get_rng_state()
    a = estimate_uncertainty(model, image, methods=("mc_dropout",), mc_samples=3, seed=1, progress=watch)
    assert torch.equal(torch.get_rng_state(), rng_before)             # the caller's RNG is untouched
    mc = a.maps["mc_dropout"]
    assert mc.shape == image.shape and mc.dtype == np.float32 and 0 <= mc.min() and mc.max() <= 1
    assert mc.max() > 1e-3
    assert ("dropout", True) in modes and ("batchnorm", True) not in modes
    assert not any(m.training for m in net.modules())                 # back in eval
    np.testing.assert_array_equal(estimate_uncertainty(model, image, methods=("mc_dropout",), mc_samples=3,
                                                       seed=1).maps["mc_dropout"], mc)
    other = estimate_uncertainty(model, image, methods=("mc_dropout",), mc_samples=3, seed=2).maps["mc_dropout"]
    assert not np.array_equal(other, mc)
    np.testing.assert_array_equal(a.labels, model.predict(image).labels)   # labels: dropout off


def test_cancel_during_mc_dropout_raises_and_restores_eval(nuclei_image):
    model = _model(**_dropout_spec())
    modes_before = [m.training for m in model.predictor.network.modules()]
    assert any(isinstance(m, __import__("torch").nn.Dropout) for m in model.predictor.network.modules())
    stop = threading.Event()
    calls = []

    def progress(done, total):
        calls.append(done)
        if done > 1500:                            # inside the second pass: an MC-dropout pass
            stop.set()

    with pytest.raises(Cancelled):
        estimate_uncertainty(model, nuclei_image[:96, :96], methods=("mc_dropout",), mc_samples=3,
                             batch_size=1, progress=progress, cancel=stop)
    assert calls and [m.training for m in model.predictor.network.modules()] == modes_before


# --------------------------------------------------------------------------- stacks, 3D, options


def test_stacks_z_range_and_chunks(nuclei_image):
    model = _model()
    plane = nuclei_image[:64, :80]
    stack = np.stack([plane, plane[::-1], plane, plane])
    seen = []
    res = estimate_uncertainty(model, stack, methods=("entropy", "tta"), z_range=(1, 4), tta_flips=2,
                               progress=lambda d, t: seen.append((d, t)))
    assert res.labels.shape == (3, 64, 80) and res.maps["tta"].shape == (3, 64, 80)
    np.testing.assert_array_equal(res.labels[1], model.predict(plane).labels)
    np.testing.assert_allclose(res.maps["entropy"][1], res.maps["entropy"][2])
    assert seen[-1][0] == seen[-1][1] and all(a[0] <= b[0] for a, b in zip(seen, seen[1:]))
    # One plane per chunk gives the same maps as all planes at once.
    small = estimate_uncertainty(model, stack, methods=("entropy", "tta"), z_range=(1, 4), tta_flips=2,
                                 max_chunk_bytes=1)
    assert small.provenance["uncertainty"]["chunk_planes"] == 1 and res.provenance["uncertainty"]["chunk_planes"] == 3
    for m in res.maps:
        np.testing.assert_allclose(small.maps[m], res.maps[m], atol=1e-6)
    np.testing.assert_array_equal(small.labels, res.labels)


@pytest.mark.filterwarnings("ignore:.*3D instance model")
def test_3d_model_flips_in_plane():
    model = _model("tiny3d", dims=3, tile={"size": 16, "overlap": 0.25},
                   architecture_kwargs={"depth": 1, "base_width": 2, "norm": "batch"})
    vol = np.random.default_rng(0).random((10, 24, 20)).astype(np.float32)
    res = estimate_uncertainty(model, vol, methods=("entropy", "tta"))
    assert res.labels.shape == vol.shape == res.maps["tta"].shape
    assert 0 < res.maps["tta"].max() <= 1
    assert res.provenance["uncertainty"]["augmentations"] == ["identity", "flip-y", "flip-x", "flip-y+flip-x"]


def test_bad_options_are_typed_errors(nuclei_image):
    model = _model()
    img = nuclei_image[:32, :32]
    assert METHODS == ("entropy", "tta", "mc_dropout")
    with pytest.raises(UncertaintyError, match="unknown uncertainty method 'bald'"):
        estimate_uncertainty(model, img, methods=("bald",))
    with pytest.raises(UncertaintyError, match="tta_flips"):
        estimate_uncertainty(model, img, methods=("tta",), tta_flips=9)
    with pytest.raises(UncertaintyError, match="at least one"):
        estimate_uncertainty(model, img, methods=())
    assert UncertaintyResult(np.zeros((2, 2), np.uint8), {}).combined().shape == (2, 2)


def test_predict_hands_out_blended_probabilities():
    """The hook uncertainty is built on: Model.predict(probabilities=True / probability_sink=...)."""
    model = _model()
    rng = np.random.default_rng(0)
    stack = rng.random((4, 70, 90)).astype(np.float32)
    bands = []

    def sink(z, y0, y1, probs):
        bands.append((z, y0, y1))
        assert probs.dtype == np.float32 and probs.shape == (3, y1 - y0, 90)

    res = model.predict(stack, z_range=(1, 3), probabilities=True, probability_sink=sink)
    p = res.probabilities
    assert p.shape == (3, 2, 70, 90) and p.dtype == np.float16
    np.testing.assert_allclose(p.astype(np.float32).sum(0), 1, atol=5e-3)
    for z in (0, 1):                                   # each predicted plane's rows once, in order
        rows = [(y0, y1) for zz, y0, y1 in bands if zz == z]
        assert rows[0][0] == 0 and rows[-1][1] == 70 and all(a[1] == b[0] for a, b in zip(rows, rows[1:]))
    assert {z for z, _, _ in bands} == {0, 1}
    plain = model.predict(stack[1])
    assert plain.probabilities is None
    np.testing.assert_array_equal(res.labels[0], plain.labels)
