"""Per-class volume scores in physical units: Dice, HD95 (mm), volumes (mL)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from segloop.core.editing.volume_metrics import hd95, surface_distances, volume_scores
from segloop.errors import InvalidLabelsError


def _cube(shape, lo, size) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[tuple(slice(a, a + size) for a in lo)] = True
    return m


@pytest.mark.parametrize(("axis", "k"), [(0, 2), (1, 3), (2, 1)])
def test_hd95_of_a_cube_shifted_by_k_voxels_is_k_times_that_axis_spacing(axis, k):
    spacing = (3.0, 0.7, 1.3)                       # anisotropic: each axis gives another answer
    shape = (30, 30, 30)
    a = _cube(shape, (8, 8, 8), 10)
    b = np.roll(a, k, axis=axis)
    assert hd95(a, b, spacing) == pytest.approx(k * spacing[axis])
    assert hd95(b, a, spacing) == pytest.approx(k * spacing[axis])           # symmetric
    assert hd95(a, a, spacing) == 0.0


def test_surface_distances_equal_a_brute_force_over_surface_voxels():
    rng = np.random.default_rng(0)
    from scipy import ndimage as ndi

    a = ndi.gaussian_filter(rng.standard_normal((12, 20, 18)), 2) > 0.05
    b = ndi.gaussian_filter(rng.standard_normal((12, 20, 18)), 2) > 0.05
    a[0] = True                                     # touches the array border: still a surface there
    spacing = (2.5, 0.8, 1.1)

    def surf(m):
        return m & ~ndi.binary_erosion(m, ndi.generate_binary_structure(3, 1), border_value=0)

    pa, pb = np.argwhere(surf(a)) * spacing, np.argwhere(surf(b)) * spacing
    want = np.concatenate([cdist(pa, pb).min(1), cdist(pb, pa).min(1)])
    got = surface_distances(a, b, spacing)
    np.testing.assert_allclose(np.sort(got), np.sort(want), rtol=1e-6)
    assert hd95(a, b, spacing) == pytest.approx(np.percentile(want, 95))


def test_hd95_and_dice_conventions_for_empty_masks():
    shape = (8, 8, 8)
    empty = np.zeros(shape, bool)
    cube = _cube(shape, (2, 2, 2), 3)
    assert hd95(empty, empty, (1, 1, 1)) == 0.0
    assert hd95(empty, cube, (1, 1, 1)) == float("inf")
    assert hd95(cube, empty, (1, 1, 1)) == float("inf")
    truth = cube.astype(np.uint8)                   # class 1 present in the truth only, class 2 nowhere
    s = volume_scores(truth, np.zeros(shape, np.uint8), (1, 1, 1), ("background", "a", "b"))
    assert s["a"]["dice"] == 0.0 and s["a"]["hd95_mm"] == float("inf")
    assert s["b"]["dice"] == 1.0 and s["b"]["hd95_mm"] == 0.0
    assert "background" not in s


def test_volume_scores_dice_volumes_groups_and_mask_in_physical_units():
    shape = (20, 20, 20)
    spacing = (2.0, 0.5, 0.5)                       # 0.5 mm^3 per voxel
    truth = np.zeros(shape, np.uint8)
    truth[_cube(shape, (5, 5, 5), 6)] = 1           # 216 voxels
    truth[_cube(shape, (12, 12, 12), 4)] = 2        # 64 voxels
    pred = np.zeros(shape, np.uint8)
    pred[_cube(shape, (6, 5, 5), 6)] = 1            # class 1 shifted one plane: 180 voxels overlap
    pred[_cube(shape, (12, 12, 12), 4)] = 1         # class 2 predicted as class 1
    s = volume_scores(truth, pred, spacing, ("background", "one", "two"), groups={"both": [1, 2]})
    vox_ml = 0.5 / 1000
    assert s["one"]["dice"] == pytest.approx(2 * 180 / (216 + 216 + 64))
    assert s["one"]["volume_ml"] == pytest.approx((216 + 64) * vox_ml)
    assert s["one"]["reference_ml"] == pytest.approx(216 * vox_ml)
    assert s["one"]["volume_error_ml"] == pytest.approx(64 * vox_ml)
    assert s["two"]["dice"] == 0.0 and s["two"]["volume_ml"] == 0.0 and s["two"]["hd95_mm"] == float("inf")
    assert s["both"]["dice"] == pytest.approx(2 * (180 + 64) / (280 + 280))
    assert s["both"]["hd95_mm"] == pytest.approx(2.0)         # the one-plane shift, at 2 mm
    # scored only where the mask is: the part of the shifted cube outside it counts for neither
    mask = np.zeros(shape, bool)
    mask[6:11] = True
    m = volume_scores(truth, pred, spacing, ("background", "one", "two"), mask=mask)
    assert m["one"]["dice"] == 1.0 and m["one"]["hd95_mm"] == 0.0
    assert m["two"]["dice"] == 1.0                                  # both empty inside the mask
    with pytest.raises(InvalidLabelsError, match="shape"):
        volume_scores(truth, pred[1:], spacing, ("background", "one"))

