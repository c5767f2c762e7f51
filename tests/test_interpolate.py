"""Shape-based slice interpolation: known shapes in, intermediate shapes out, only background written."""

import time

import numpy as np
import pytest

from segloop.core.editing.interpolate import interpolate_slices
from segloop.errors import InvalidLabelsError


def disc(shape, centre, radius, spacing=(1.0, 1.0)):
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    return ((yy - centre[0]) * spacing[0]) ** 2 + ((xx - centre[1]) * spacing[1]) ** 2 <= radius**2


def filled(result, labels_shape, value=None):
    out = np.zeros(labels_shape, np.int64)
    out[result.edit.indices] = result.edit.values
    return out if value is None else out == value


def test_two_circles_of_different_radius_give_intermediate_radii():
    lab = np.zeros((11, 96, 96), np.uint8)
    lab[0][disc((96, 96), (48, 48), 10)] = 2
    lab[10][disc((96, 96), (48, 48), 30)] = 2
    res = interpolate_slices(lab)
    assert res.filled_slices == {2: tuple(range(1, 10))}
    assert res.describe() == "filled 9 slices for label 2"
    out = filled(res, lab.shape, 2)
    for z in range(1, 10):
        r_eq = np.sqrt(out[z].sum() / np.pi)
        assert abs(r_eq - (10 + 2 * z)) < 0.8, (z, r_eq)
        expected = disc((96, 96), (48, 48), 10 + 2 * z)                # round and centred
        assert (out[z] ^ expected).sum() < 0.06 * expected.sum(), z
    assert not out[0].any() and not out[10].any()                  # key slices untouched
    assert res.edit.values.dtype == np.uint8


def test_a_shape_that_moves_is_carried_along():
    lab = np.zeros((5, 64, 96), np.uint16)
    lab[0][disc((64, 96), (32, 30), 12)] = 1
    lab[4][disc((64, 96), (32, 50), 12)] = 1
    out = filled(interpolate_slices(lab), lab.shape, 1)
    centres = [np.nonzero(out[z])[1].mean() for z in (1, 2, 3)]
    assert 30 < centres[0] < centres[1] < centres[2] < 50
    assert abs(centres[1] - 40) < 0.5                              # half way at the middle slice
    assert all(abs(np.nonzero(out[z])[0].mean() - 32) < 0.5 for z in (1, 2, 3))
    assert not (out[1:4] & ~(lab[0] | lab[4]).astype(bool)).any()  # within the two shapes' union


def test_only_background_changes_and_drawn_slices_are_left_alone():
    lab = np.zeros((9, 64, 64), np.uint16)
    lab[0][disc((64, 64), (32, 32), 20)] = 1
    lab[8][disc((64, 64), (32, 32), 20)] = 1
    lab[2:7, 28:36, 28:36] = 5                 # another object where label 1 will be interpolated
    lab[4][disc((64, 64), (32, 32), 4)] = 1     # label 1 already drawn on slice 4 (small): keep it
    before = lab.copy()
    res = interpolate_slices(lab, label=1)
    assert res.filled_slices == {1: (1, 2, 3, 5, 6, 7)}
    assert (before[res.edit.indices] == 0).all()
    res.edit.apply(lab)
    assert (lab[before == 5] == 5).all()
    assert np.array_equal(lab[4], before[4])
    # slice 4 is a key now: the big disc on 0 shrinks towards the small one on 4
    sizes = [int((lab[z] == 1).sum()) for z in range(5)]
    assert sizes[0] > sizes[1] > sizes[2] > sizes[3] > sizes[4] > 0


def test_several_labels_and_a_label_on_one_slice_only():
    lab = np.zeros((7, 80, 80), np.uint16)
    lab[1][disc((80, 80), (20, 20), 8)] = 3
    lab[5][disc((80, 80), (20, 20), 8)] = 3
    lab[0][disc((80, 80), (60, 60), 8)] = 7
    lab[6][disc((80, 80), (60, 60), 8)] = 7
    lab[3][disc((80, 80), (60, 20), 5)] = 9     # one slice only: nothing to do
    res = interpolate_slices(lab)
    assert res.filled_slices == {3: (2, 3, 4), 7: (1, 2, 3, 4, 5)}
    assert res.slices == (1, 2, 3, 4, 5)
    assert 9 not in res.edit.values
    assert interpolate_slices(lab, label=9).n_changed == 0
    assert interpolate_slices(lab, label=42).n_changed == 0    # absent label: nothing, no error


def test_labels_competing_for_a_voxel_do_not_write_it_twice():
    lab = np.zeros((3, 40, 60), np.uint8)
    lab[0, 10:30, 5:30] = 1
    lab[2, 10:30, 5:30] = 1
    lab[0, 10:30, 28:55] = 2                    # overwrites part of 1 on slice 0: they touch
    lab[2, 10:30, 25:55] = 2
    res = interpolate_slices(lab)
    flat = np.ravel_multi_index(res.edit.indices, lab.shape)
    assert np.unique(flat).size == flat.size
    assert set(np.unique(res.edit.values)) == {1, 2}


def test_key_slices_and_z_range_restrict_the_work():
    lab = np.zeros((21, 48, 48), np.uint8)
    lab[0][disc((48, 48), (24, 24), 10)] = 1
    lab[10][disc((48, 48), (24, 24), 4)] = 1    # drawn, but (say) not reviewed
    lab[20][disc((48, 48), (24, 24), 10)] = 1
    every = interpolate_slices(lab)
    assert every.filled_slices == {1: tuple(range(1, 10)) + tuple(range(11, 20))}
    reviewed = interpolate_slices(lab, key_slices=[0, 20])
    assert reviewed.filled_slices == every.filled_slices         # slice 10 itself is not empty: kept
    assert (filled(reviewed, lab.shape, 1)[5].sum() > filled(every, lab.shape, 1)[5].sum() * 1.5)
    assert abs(np.sqrt(filled(reviewed, lab.shape, 1)[5].sum() / np.pi) - 10) < 0.8
    assert interpolate_slices(lab, key_slices=[10, 20]).filled_slices == {1: tuple(range(11, 20))}
    assert interpolate_slices(lab, z_range=(0, 10)).filled_slices == {1: tuple(range(1, 10))}
    assert interpolate_slices(lab, z_range=(3, 20)).filled_slices == {1: tuple(range(11, 20))}
    with pytest.raises(InvalidLabelsError, match="z_range"):
        interpolate_slices(lab, z_range=(5, 30))
    with pytest.raises(InvalidLabelsError, match="key slice"):
        interpolate_slices(lab, key_slices=[0, 99])


def test_anisotropic_in_plane_spacing_is_respected():
    # a 10 x 40 mm bar turning into a 40 x 10 mm bar on pixels 0.5 mm tall, 1 mm wide: half way, the
    # shape is as tall as it is wide in millimetres, which pixel distances get wrong
    sp = (0.5, 1.0)
    yy, xx = np.mgrid[:120, :60]
    y_mm, x_mm = (yy - 60) * sp[0], (xx - 30) * sp[1]
    lab = np.zeros((3, 120, 60), np.uint8)
    lab[0][(abs(y_mm) <= 5) & (abs(x_mm) <= 20)] = 1
    lab[2][(abs(y_mm) <= 20) & (abs(x_mm) <= 5)] = 1

    def extent_mm(result):
        ys, xs = np.nonzero(filled(result, lab.shape, 1)[1])
        return (ys.max() - ys.min()) * sp[0], (xs.max() - xs.min()) * sp[1]

    h, w = extent_mm(interpolate_slices(lab, spacing=(2.0,) + sp))
    assert abs(h - w) <= 1.0 and 15 <= h <= 25
    h_px, w_px = extent_mm(interpolate_slices(lab))
    assert abs(h_px - w_px) > 5
    assert extent_mm(interpolate_slices(lab, spacing=sp)) == (h, w)      # in-plane values only


def test_other_axis():
    lab = np.zeros((40, 40, 9), np.uint8)
    lab[..., 0][disc((40, 40), (20, 20), 5)] = 1
    lab[..., 8][disc((40, 40), (20, 20), 13)] = 1
    res = interpolate_slices(lab, axis=-1)
    assert res.axis == 2 and res.filled_slices == {1: tuple(range(1, 8))}
    out = filled(res, lab.shape, 1)
    assert abs(np.sqrt(out[..., 4].sum() / np.pi) - 9) < 0.8


def test_bad_input_is_a_typed_error():
    with pytest.raises(InvalidLabelsError, match="stack or volume"):
        interpolate_slices(np.zeros((10, 10), np.uint8))
    with pytest.raises(InvalidLabelsError, match="integer"):
        interpolate_slices(np.zeros((3, 10, 10), np.float32))
    with pytest.raises(InvalidLabelsError, match="axis"):
        interpolate_slices(np.zeros((3, 10, 10), np.uint8), axis=3)
    with pytest.raises(InvalidLabelsError, match="spacing"):
        interpolate_slices(np.zeros((3, 10, 10), np.uint8), spacing=(1.0, 0.0))
    with pytest.raises(InvalidLabelsError, match="negative"):
        interpolate_slices(np.full((3, 10, 10), -1, np.int16))


def test_a_ct_sized_volume_is_fast():
    lab = np.zeros((300, 512, 512), np.uint16)
    for i, (cy, cx) in enumerate([(150, 150), (350, 350), (150, 380)], start=1):
        for z in range(40 * i, 40 * i + 80, 10):
            lab[z][disc((512, 512), (cy, cx), 25 + (z % 30))] = i
    t = time.perf_counter()
    res = interpolate_slices(lab, spacing=(2.5, 0.7, 0.7))
    elapsed = time.perf_counter() - t
    assert res.filled_slices[1] and res.filled_slices[3]
    assert len(res.slices) > 50
    assert elapsed < 3.0, elapsed
