"""Voxel spacing: a 2.5D model that records the spacing it learnt sees every scan at that spacing."""

from __future__ import annotations

import numpy as np
import pytest

from segloop.core.formats.normalization import Percentile
from segloop.core.formats.package import load_package, save_package
from segloop.core.inference.model import Model
from segloop.core.inference.spacing import resample_to_spacing, resize_labels, target_shape
from segloop.errors import InvalidImageError

from .conftest import tiny_spec, tiny_state

MODEL_SPACING = (2.0, 1.0, 1.0)
EXTENT = np.array([24.0, 48.0, 40.0])          # mm (z, y, x) of the scene


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Model:
    """2.5D (3 context slices) semantic model trained at 2 x 1 x 1 mm."""
    spec = tiny_spec(name="ct-25d-spacing", task="semantic", classes=("background", "a", "b"), postprocess={},
                     in_channels=3, context_slices=3, normalization=Percentile().to_dict(),
                     tile={"size": 32, "overlap": 0.25}, spacing=MODEL_SPACING)
    state = tiny_state(spec, seed=3)
    w = state["head.weight"]
    state["head.weight"] = (w - w.mean(0, keepdim=True)) * 40        # confident, spatially varying labels
    state["head.bias"] = state["head.bias"] * 0
    dest = tmp_path_factory.mktemp("pkg") / "ct-25d"
    save_package(dest, spec, state)
    return Model(load_package(dest), device="cpu", precision="fp32")


def scene(spacing, seed: int = 1) -> np.ndarray:
    """One physical scene (Gaussian blobs of 2.5-5 mm, in mm coordinates) sampled at voxel centres of ``spacing``."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, 1, (12, 3)) * EXTENT
    radii = rng.uniform(2.5, 5, 12)
    amp = rng.choice([-1, 1], 12) * rng.uniform(500, 1000, 12)
    shape = tuple(int(round(e / s)) for e, s in zip(EXTENT, spacing))
    grids = np.meshgrid(*[(np.arange(n) + 0.5) * s for n, s in zip(shape, spacing)], indexing="ij")
    f = np.zeros(shape)
    for c, r, a in zip(centres, radii, amp):
        f += a * np.exp(-sum((g - ci) ** 2 for g, ci in zip(grids, c)) / (2 * r * r))
    return f.astype(np.float32)


@pytest.fixture(scope="module")
def fine() -> np.ndarray:
    return scene((1.0, 0.5, 0.5))                  # (24, 96, 80): twice the model's resolution on every axis


def test_one_scene_at_two_spacings_gives_labels_that_agree_in_physical_space(model, fine):
    coarse = scene(MODEL_SPACING)                  # (12, 48, 40): the model's own grid
    at_model = model.predict(coarse, spacing=MODEL_SPACING)
    assert at_model.provenance["spacing"]["resampled"] is False
    labels = at_model.labels
    assert 0.02 < (labels == 1).mean() < 0.98                            # labels that can tell
    res = model.predict(fine, spacing=(1.0, 0.5, 0.5))
    assert res.labels.shape == fine.shape and res.labels.dtype == labels.dtype
    prov = res.provenance["spacing"]
    assert prov["resampled"] is True and prov["image"] == [1.0, 0.5, 0.5] and prov["model"] == list(MODEL_SPACING)
    assert prov["model_grid"] == [12, 48, 40]
    # every fine voxel lies inside one coarse voxel: the same place in mm
    same_place = labels.repeat(2, 0).repeat(2, 1).repeat(2, 2)
    assert (res.labels == same_place).mean() > 0.99
    # without the spacing the network sees the scene at twice its scale and disagrees much more
    assert (model.predict(fine).labels == same_place).mean() < 0.95


def test_resample_to_spacing_shapes_channels_and_round_trips():
    lab = np.zeros((6, 20, 16), np.uint16)
    lab[2:4, 5:11, 4:12] = 7
    lab[0, 0, 0] = 300
    finer = resample_to_spacing(lab, (4.0, 1.0, 1.0), (1.0, 0.5, 0.25), order=0)
    assert finer.shape == target_shape(lab.shape, (4.0, 1.0, 1.0), (1.0, 0.5, 0.25)) == (24, 40, 64)
    assert finer.dtype == np.uint16 and set(np.unique(finer)) == {0, 7, 300}
    back = resample_to_spacing(finer, (1.0, 0.5, 0.25), (4.0, 1.0, 1.0), order=0)
    np.testing.assert_array_equal(back, lab)                         # there and back: nothing moved
    np.testing.assert_array_equal(resize_labels(finer, lab.shape), lab)
    # the object keeps its place in mm: centroid of the cube on both grids
    c0 = (np.argwhere(lab == 7).mean(0) + 0.5) * (4.0, 1.0, 1.0)
    c1 = (np.argwhere(finer == 7).mean(0) + 0.5) * (1.0, 0.5, 0.25)
    np.testing.assert_allclose(c0, c1)
    # intensities: linear, float32; a ramp along z stays a ramp through the same mm positions
    z = (np.arange(8) + 0.5) * 3.0                                   # mm of each plane centre
    ramp = np.broadcast_to(z[:, None, None], (8, 5, 6)).astype(np.float64)
    r = resample_to_spacing(ramp, (3.0, 1.0, 1.0), (1.5, 2.0, 2.0))
    assert r.dtype == np.float32 and r.shape == (16, 2, 3)
    z_new = (np.arange(16) + 0.5) * 1.5
    inside = (z_new >= z[0]) & (z_new <= z[-1])                      # edges are held, not extrapolated
    np.testing.assert_allclose(r[inside, 0, 0], z_new[inside], rtol=1e-5)
    np.testing.assert_allclose(r[~inside, 0, 0], np.clip(z_new[~inside], z[0], z[-1]))
    two = np.stack([ramp, -ramp], axis=-1)                           # channels last, each alone
    rc = resample_to_spacing(two, (3.0, 1.0, 1.0), (1.5, 2.0, 2.0), channels_last=True)
    assert rc.shape == (16, 2, 3, 2)
    np.testing.assert_allclose(rc[..., 0], r)
    np.testing.assert_allclose(rc[..., 1], -r)
    with pytest.raises(InvalidImageError, match="spacing"):
        resample_to_spacing(lab, (1.0, -1.0, 1.0), (1.0, 1.0, 1.0))
    with pytest.raises(InvalidImageError, match="spacing"):
        resample_to_spacing(lab, (1.0, 1.0), (1.0, 1.0, 1.0))


def test_within_five_percent_the_scan_runs_at_its_own_spacing(model):
    vol = scene(MODEL_SPACING)
    plain = model.predict(vol).labels
    near = model.predict(vol, spacing=(2.08, 0.96, 1.04))            # 4 % off on every axis
    assert near.provenance["spacing"] == {"image": [2.08, 0.96, 1.04], "model": list(MODEL_SPACING),
                                          "resampled": False}
    np.testing.assert_array_equal(near.labels, plain)
    far = model.predict(vol, spacing=(2.2, 1.0, 1.0))                # 10 % off along z only
    assert far.provenance["spacing"]["resampled"] is True
    assert far.provenance["spacing"]["model_grid"] == [13, 48, 40]
    assert far.labels.shape == vol.shape


def test_z_range_with_spacing_returns_only_those_planes_equal_to_the_whole_prediction(model, fine):
    sp = (1.0, 0.5, 0.5)
    res = model.predict(fine, spacing=sp, uncertainty=True)
    for z0, z1 in [(0, 3), (5, 9), (7, 8), (20, 24)]:
        part = model.predict(fine, spacing=sp, z_range=(z0, z1), uncertainty=True)
        assert part.labels.shape == (z1 - z0, *fine.shape[1:])
        np.testing.assert_array_equal(part.labels, res.labels[z0:z1], err_msg=f"z_range {z0, z1}")
        np.testing.assert_array_equal(part.uncertainty, res.uncertainty[z0:z1])
        assert part.provenance["parameters"]["z_range"] == [z0, z1] and part.provenance["n_planes"] == z1 - z0
        run = part.provenance["spacing"]["model_planes_run"]
        assert run[1] - run[0] < 12                                  # not the whole volume
    out = np.full(fine.shape, 9, np.uint8)
    got = model.predict(fine, spacing=sp, z_range=(5, 9), out=out)
    assert got.labels is out
    np.testing.assert_array_equal(out[5:9], res.labels[5:9])
    assert (out[:5] == 9).all() and (out[9:] == 9).all()
    one = model.predict_slice(fine, 7, spacing=sp)
    np.testing.assert_array_equal(one.labels, res.labels[7])
    with pytest.raises(InvalidImageError, match="z_range"):
        model.predict(fine, spacing=sp, z_range=(20, 30))


def test_spacing_on_a_single_plane_or_with_probabilities_is_refused(model, fine):
    with pytest.raises(InvalidImageError, match="volumes"):
        model.predict(fine[3], spacing=(1.0, 0.5, 0.5))
    with pytest.raises(InvalidImageError, match="volumes"):
        model.predict(fine[3], spacing=MODEL_SPACING)                # also when nothing would be resampled
    with pytest.raises(InvalidImageError, match="probabilities"):
        model.predict(fine, spacing=(1.0, 0.5, 0.5), probabilities=True)
    with pytest.raises(InvalidImageError, match="spacing"):
        model.predict(fine, spacing=(1.0, 0.0, 0.5))
    # without resampling, probabilities are the plain prediction's
    res = model.predict(scene(MODEL_SPACING), spacing=MODEL_SPACING, probabilities=True)
    assert res.probabilities.shape[0] == 3
