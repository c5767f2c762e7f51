"""Volumes: 2.5D context slices, 3D patches, z_range, the live per-slice path, progress, cancel, memory."""

from __future__ import annotations

import threading
import tracemalloc

import numpy as np
import pytest
from scipy import ndimage as ndi

from segloop.core.formats.normalization import Percentile
from segloop.core.formats.package import load_package, save_package
from segloop.core.inference.grid import WindowGrid
from segloop.core.inference.model import Model
from segloop.core.inference.normalize import Normalizer
from segloop.core.inference.postprocess import entropy
from segloop.core.inference.tiling import (
    gaussian_importance,
    predict_tiled,
    predict_tiled_3d,
)
from segloop.errors import Cancelled, InvalidImageError

from .conftest import tiny_spec, tiny_state

CT_WINDOW = {"kind": "ct_window", "level": 40.0, "width": 400.0}


def _model(tmp_path, name, **changes) -> Model:
    kw = dict(name=name, task="semantic", classes=("background", "liver", "tumour"), postprocess={})
    kw.update(changes)
    spec = tiny_spec(**kw)
    state = tiny_state(spec, seed=3)
    # Spatially varying, confident labels (a random head mostly favours one class everywhere).
    w = state["head.weight"]
    state["head.weight"] = (w - w.mean(0, keepdim=True)) * 40
    state["head.bias"] = state["head.bias"] * 0
    save_package(tmp_path / name, spec, state)
    return Model(load_package(tmp_path / name), device="cpu", precision="fp32")


@pytest.fixture
def model25(tmp_path) -> Model:
    """2.5D: a 2D network fed 3 neighbouring slices of a 1-channel stack."""
    return _model(tmp_path, "ct-25d", in_channels=3, context_slices=3, normalization=Percentile().to_dict(),
                  tile={"size": 32, "overlap": 0.25})


@pytest.fixture
def model3d(tmp_path) -> Model:
    return _model(tmp_path, "ct-3d", dims=3, normalization=CT_WINDOW,
                  tile={"size": [16, 32, 32], "overlap": 0.25})


@pytest.fixture(scope="module")
def ct_stack() -> np.ndarray:
    """A (9, 48, 40) HU-like stack: every plane different (smooth blobs + noise)."""
    rng = np.random.default_rng(7)
    vol = ndi.gaussian_filter(rng.standard_normal((9, 48, 40)), (0.5, 3, 3)) * 2000
    return (vol + rng.standard_normal(vol.shape) * 20).astype(np.float32)


def _net_probs(model: Model, x: np.ndarray) -> np.ndarray:
    """The model's own engine on one whole-image input (C, ...) -> (K, ...) probabilities."""
    return model.predictor(x[None].astype(np.float32))[0]


def _net_labels(model: Model, x: np.ndarray) -> np.ndarray:
    return _net_probs(model, x).argmax(0)


# -- 2.5D ---------------------------------------------------------------------


def test_25d_tiles_carry_neighbouring_slices_slice_major_with_edges_replicated():
    # Plane z, channel c holds the constant 10 * z + c: each tile's channels name their source.
    n_z, c = 4, 2
    stack = np.zeros((n_z, 20, 24, c), np.float32)
    for z in range(n_z):
        for ch in range(c):
            stack[z, ..., ch] = 10 * z + ch
    seen = {}

    def record(batch):
        for t in batch:
            centre = int(t[c, 0, 0]) // 10          # channel block 1 = the plane itself
            seen[centre] = [float(v) for v in t[:, 0, 0]]
        return batch[:, :1]

    class CountingStack:                                    # an array-like that counts plane reads
        shape, dtype, reads = stack.shape, stack.dtype, []

        def __getitem__(self, key):
            self.reads.append(key)
            return stack[key]

    src = CountingStack()
    predict_tiled(record, src, tile=16, overlap=0, channel_axis=-1, context_slices=3)
    assert sorted(src.reads) == list(range(n_z))            # every plane read once, not once per tile
    assert seen[0] == [0, 1, 0, 1, 10, 11]                  # z-1 clamped to 0
    assert seen[2] == [10, 11, 20, 21, 30, 31]              # [z-1 (all channels), z, z+1]
    assert seen[3] == [20, 21, 30, 31, 30, 31]              # z+1 clamped to Z-1


def test_25d_model_equals_a_manual_reference_per_plane_and_repeats_a_single_plane(model25, ct_stack):
    norm = Normalizer.fit(Percentile(), ct_stack)
    planes = norm(ct_stack)[:, 0]                           # (Z, Y, X), image-wide statistics
    n_z = len(planes)
    # One tile covers a plane (tile 64 > 48x40): blending is the identity and the reference is exact
    # (labels, and the entropy of the probabilities).
    res = model25.predict(ct_stack, tile=64, uncertainty=True)
    for z in range(n_z):
        idx = [min(max(z + d, 0), n_z - 1) for d in (-1, 0, 1)]
        probs = _net_probs(model25, planes[idx])
        np.testing.assert_array_equal(res.labels[z], probs.argmax(0), err_msg=f"plane {z}")
        np.testing.assert_array_equal(res.uncertainty[z], entropy(probs, dtype=np.float16), err_msg=f"plane {z}")
    assert 0.05 < (res.labels == 1).mean() < 0.95                           # labels that can tell
    assert (_net_labels(model25, planes[[5, 4, 3]]) != res.labels[4]).mean() > 0.02  # the order matters
    single = model25.predict(ct_stack[4], tile=64, uncertainty=True)     # a 2D image: its own neighbours
    plane = Normalizer.fit(Percentile(), ct_stack[4])(ct_stack[4])
    np.testing.assert_array_equal(single.uncertainty, entropy(_net_probs(model25, np.concatenate([plane] * 3)), dtype=np.float16))


def test_25d_z_range_with_and_without_out_and_provenance(model25, ct_stack):
    full = model25.predict(ct_stack).labels
    part = model25.predict(ct_stack, z_range=(2, 5))
    assert part.labels.shape == (3, *ct_stack.shape[1:])
    np.testing.assert_array_equal(part.labels, full[2:5])       # neighbours outside the range were read
    assert part.provenance["parameters"]["z_range"] == [2, 5] and part.provenance["n_planes"] == 3
    out = np.full(ct_stack.shape, 7, np.uint8)
    res = model25.predict(ct_stack, z_range=(2, 5), out=out)
    assert res.labels is out
    np.testing.assert_array_equal(out[2:5], full[2:5])
    assert (out[:2] == 7).all() and (out[5:] == 7).all()        # only out[z0:z1] is written
    with pytest.raises(InvalidImageError, match="z_range"):
        model25.predict(ct_stack, z_range=(5, 12))


def test_predict_slice_equals_predict_and_reuses_the_cached_normalizer(model25, ct_stack):
    full = model25.predict(ct_stack, uncertainty=True)
    for z in (0, 4, 8):
        res = model25.predict_slice(ct_stack, z, uncertainty=True)
        assert res.labels.shape == ct_stack.shape[1:]
        np.testing.assert_array_equal(res.labels, full.labels[z])
        np.testing.assert_array_equal(res.uncertainty, full.uncertainty[z])
        assert res.provenance["parameters"]["z_range"] == [z, z + 1]
    cached = model25.normalizer_for(ct_stack)
    assert model25.normalizer_for(ct_stack) is cached
    assert res.provenance["parameters"]["normalization_stats"] is cached.stats    # no refit per slice
    other = ct_stack.copy()                                     # same shape and dtype, another array
    assert model25.normalizer_for(other) is not cached
    mine = Normalizer.fit(Percentile(low=5, high=95), ct_stack)
    assert model25.predict_slice(ct_stack, 3, normalizer=mine).provenance["parameters"][
        "normalization_stats"] is mine.stats


# -- 3D -------------------------------------------------------------------------


def _smooth_predictor(batch):
    """A patch-position-dependent toy network: box filter (zero outside the patch) -> 2 classes."""
    s = ndi.uniform_filter(batch, size=(1, 1, 5, 5, 5), mode="constant")
    p = 1 / (1 + np.exp(-s[:, :1]))
    return np.concatenate([1 - p, p], axis=1).astype(np.float32)


def test_3d_blending_equals_a_dense_gaussian_reference():
    vol = np.random.default_rng(1).standard_normal((37, 45, 29)).astype(np.float32)
    got = predict_tiled_3d(_smooth_predictor, vol, patch=(16, 24, 16), overlap=0.25, batch_size=4, multiple=8)
    grid = WindowGrid.build(vol.shape, window=(16, 24, 16), overlap=0.25, multiple=8)
    assert grid.window == (16, 24, 16) and len(grid.zs) > 2 and len(grid.ys) > 2 and len(grid.xs) > 1
    pz, py, px = grid.window

    def dense(g):
        acc, wsum = np.zeros((2, *vol.shape)), np.zeros(vol.shape)
        for z in grid.zs:
            for y in grid.ys:
                for x in grid.xs:
                    box = (slice(z, z + pz), slice(y, y + py), slice(x, x + px))
                    acc[(slice(None), *box)] += _smooth_predictor(vol[box][None, None])[0] * g
                    wsum[box] += g
        return acc / wsum

    np.testing.assert_allclose(got, dense(gaussian_importance(grid.window).astype(np.float64)), rtol=1e-5, atol=1e-6)
    ramp = np.linspace(0.1, 1, pz * py * px).reshape(grid.window)     # another tool's weights, when asked
    other = predict_tiled_3d(_smooth_predictor, vol, patch=(16, 24, 16), overlap=0.25, multiple=8, importance=ramp)
    np.testing.assert_allclose(other, dense(ramp), rtol=1e-5, atol=1e-6)
    part = predict_tiled_3d(_smooth_predictor, vol, patch=(16, 24, 16), overlap=0.25, multiple=8, z_range=(0, 5))
    assert part.shape == (2, 5, 45, 29)


def test_3d_volume_smaller_than_the_patch_is_padded_and_matches_the_network(model3d):
    vol = (np.random.default_rng(2).standard_normal((6, 20, 22)) * 300).astype(np.float32)
    res = model3d.predict(vol)
    assert res.labels.shape == vol.shape and res.tiles_predicted == 1
    pz, py, px = res.provenance["parameters"]["patch"]
    assert (pz, py, px) == (8, 20, 24)                    # shrunk to the volume, rounded up to the divisor 4
    x = Normalizer.fit(CT_WINDOW, vol)(vol)[:, 0]         # (Z, Y, X)
    mode = "reflect" if pz - 6 < 6 else "edge"
    padded = np.pad(x, ((0, pz - 6), (0, py - 20), (0, px - 22)), mode=mode)
    np.testing.assert_array_equal(res.labels, _net_labels(model3d, padded[None])[:6, :20, :22])


def test_3d_z_range_out_predict_slice_progress_and_3d_input_required(model3d, ct_stack):
    vol = np.concatenate([ct_stack] * 4)                  # (36, 48, 40)
    seen = []
    full = model3d.predict(vol, progress=lambda d, t: seen.append((d, t)))
    grid = WindowGrid.build(vol.shape, window=(16, 32, 32), overlap=0.25, multiple=model3d.divisor)
    assert seen[-1] == (len(grid), len(grid)) == (full.tiles_predicted, full.provenance["parameters"]["patches"])
    out = np.full(vol.shape, 9, np.uint8)
    seen.clear()
    res = model3d.predict(vol, z_range=(20, 22), out=out, progress=lambda d, t: seen.append((d, t)))
    slab = WindowGrid.build(vol.shape, window=(16, 32, 32), overlap=0.25, multiple=model3d.divisor, span=(20, 22))
    assert res.labels is out and len(slab.zs) == 1 and seen[-1] == (len(slab), len(slab)) and len(slab) < len(grid)
    assert (out[:20] == 9).all() and (out[22:] == 9).all() and (out[20:22] != 9).all()
    assert (out[20:22] == full.labels[20:22]).mean() > 0.9      # another patch grid, same network
    live = model3d.predict_slice(vol, 21)                       # one patch depth around plane 21
    np.testing.assert_array_equal(live.labels, model3d.predict(vol, z_range=(21, 22)).labels[0])
    with pytest.raises(InvalidImageError, match="3D model"):
        model3d.predict(vol[0])


def test_cancel_stops_3d_and_25d_runs_between_batches(model3d, model25, ct_stack):
    for model, data, call in ((model3d, np.concatenate([ct_stack] * 4), "predict"),
                              (model25, ct_stack, "predict_slice")):
        stop, seen = threading.Event(), []

        def progress(done, total, seen=seen, stop=stop):
            seen.append(done)
            stop.set()

        with pytest.raises(Cancelled):
            if call == "predict":
                model.predict(data, batch_size=1, progress=progress, cancel=stop)
            else:
                model.predict_slice(data, 4, batch_size=1, progress=progress, cancel=stop)
        assert seen == [1]


def _toy_3_classes(batch):
    """A cheap stand-in engine (the predictor is just a callable): 3 class probabilities from intensity."""
    out = np.empty((len(batch), 3, *batch.shape[2:]), np.float32)
    p = out[:, 2]
    np.negative(batch[:, 0], out=p)
    np.exp(p, out=p)
    p += 1
    np.reciprocal(p, out=p)                          # sigmoid(x)
    np.subtract(1, p, out=out[:, 0])
    out[:, 0] *= 0.5
    out[:, 1] = out[:, 0]
    return out


def test_3d_memory_is_bounded_by_the_patch_depth_not_the_volume(model3d):
    model3d.predictor = _toy_3_classes           # memory, not the network, is measured: keep it fast
    vol = np.random.default_rng(0).integers(-200, 300, (64, 256, 256)).astype(np.int16)
    k = model3d.spec.n_classes
    tracemalloc.start()
    try:
        res = model3d.predict(vol, tile=(8, 128, 128), batch_size=2, uncertainty=True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert res.labels.shape == vol.shape and res.tiles_predicted == 11 * 3 * 3
    assert res.labels.max() == 2 and res.uncertainty.shape == vol.shape
    dense = k * vol.size * 4                         # (K, Z, Y, X) float32: 50 MB
    outputs = res.labels.nbytes + res.uncertainty.nbytes
    # Accumulators: (K + 1) x 8 planes float32 = 8.4 MB, plus a batch; a dense (Z, Y, X) float32 alone
    # would be 16.8 MB (0.33 x dense), a dense (K, Z, Y, X) 50 MB.
    assert peak - outputs < 0.35 * dense, (
        f"peak {peak / 1e6:.1f} MB (outputs {outputs / 1e6:.1f} MB) vs a dense probability volume {dense / 1e6:.1f} MB")


def test_3d_instance_model_labels_plane_by_plane_and_says_so(tmp_path, ct_stack):
    from segloop.core.inference.postprocess import InstanceParams

    model = _model(tmp_path, "ct-3d-inst", dims=3, task="instance", classes=("background", "interior", "boundary"),
                   postprocess=InstanceParams(min_size=1).to_dict(), normalization=CT_WINDOW,
                   tile={"size": [8, 32, 32], "overlap": 0.25})

    def blobs(batch):                                      # interior where the CT-window value is high
        x = batch[:, :1]
        return np.concatenate([1 - x, x, np.zeros_like(x)], axis=1)

    model.predictor = blobs
    with pytest.warns(UserWarning, match="plane by plane"):
        res = model.predict(ct_stack[:4])
    assert res.labels.shape == (4, 48, 40) and res.labels.dtype == np.uint16 and res.n_objects > 4
    assert res.provenance["parameters"]["instance_labeling"].startswith("per-plane")
    for z in range(4):                                     # ids restart in every plane
        ids = np.unique(res.labels[z])
        np.testing.assert_array_equal(ids[ids > 0], np.arange(1, len(ids[ids > 0]) + 1))


@pytest.mark.parametrize("dims", [2, 3])
def test_engine_swaps_channels_last_instance_norms_without_changing_the_output(dims):
    import torch

    from segloop.core.inference.engines import TorchPredictor
    from segloop.core.networks import build

    torch.manual_seed(0)
    net = build("unet", 2, 3, dims=dims, depth=2, base_width=4, norm="instance").eval()
    norms = [m for m in net.modules() if isinstance(m, (torch.nn.InstanceNorm2d, torch.nn.InstanceNorm3d))]
    with torch.no_grad():
        for m in norms:
            m.weight.uniform_(0.5, 1.5)
            m.bias.uniform_(-0.5, 0.5)
    pred = TorchPredictor(net, device="cpu", precision="fp32")
    assert pred.swapped_instance_norms == len(norms) > 0 and pred.channels_last
    x = np.random.default_rng(0).standard_normal((2, 2) + (12, 20, 24)[-dims:]).astype(np.float32)
    with torch.inference_mode():
        ref = torch.softmax(net(torch.from_numpy(x)), dim=1).numpy()
    np.testing.assert_allclose(pred(x), ref, atol=1e-5)
