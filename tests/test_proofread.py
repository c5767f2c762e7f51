"""segloop.core.editing.proofread: label edits are returned as LabelEdit, exact, undoable, bbox-local."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from skimage.segmentation import relabel_sequential as sk_relabel_sequential

from segloop.core.editing import proofread as pr
from segloop.core.editing.proofread import LabelEdit
from segloop.errors import InvalidImageError, InvalidLabelsError

# --------------------------------------------------------------------------- helpers


def applied(labels: np.ndarray, edit: LabelEdit) -> np.ndarray:
    out = labels.copy()
    edit.apply(out)
    return out


def check_edit(labels: np.ndarray, edit: LabelEdit, *, within: tuple[slice, ...] | None = None):
    """The contract every edit keeps; returns the edited copy."""
    assert edit.ndim == labels.ndim
    assert edit.values.dtype == labels.dtype
    assert all(ix.dtype == np.intp and ix.shape == edit.values.shape for ix in edit.indices)
    # only voxels that change, each once
    assert np.all(labels[edit.indices] != edit.values)
    flat = np.ravel_multi_index(edit.indices, labels.shape)
    assert np.unique(flat).size == flat.size
    if within is not None and edit.n_changed:
        for s, ix in zip(within, edit.indices):
            assert s.start <= ix.min() and ix.max() < s.stop
    # apply, then the inverse (taken before) restores the array exactly
    work = labels.copy()
    inv = edit.inverse(work)
    edit.apply(work)
    out = work.copy()
    assert np.count_nonzero(out != labels) == edit.n_changed
    inv.apply(work)
    assert np.array_equal(work, labels)
    return out


# A literal 2D label image used by several tests.
#   1: 2x2 square, 2: 2x3 block, 3: one pixel, 5: ring around a hole
L2 = np.array(
    [
        [1, 1, 0, 0, 0, 0, 0, 0, 3],
        [1, 1, 0, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 2, 2, 2, 0, 0, 0],
        [0, 0, 0, 2, 2, 2, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0, 0, 0],
        [0, 5, 5, 5, 0, 0, 0, 0, 0],
        [0, 5, 0, 5, 0, 0, 0, 0, 0],
        [0, 5, 5, 5, 0, 0, 0, 0, 0],
    ],
    dtype=np.uint16,
)


# --------------------------------------------------------------------------- LabelEdit


def test_label_edit_basics():
    e = LabelEdit((np.array([1, 3]), np.array([2, 0])), np.array([7, 8], np.uint8))
    assert e.n_changed == 2
    assert e.ndim == 2
    assert e.bbox == (slice(1, 4), slice(0, 3))
    assert all(ix.dtype == np.intp for ix in e.indices)
    a = np.zeros((4, 4), np.uint8)
    a[3, 0] = 1
    inv = e.inverse(a)
    assert inv.values.tolist() == [0, 1]
    e.apply(a)
    assert a[1, 2] == 7 and a[3, 0] == 8 and np.count_nonzero(a) == 2
    inv.apply(a)
    assert a[3, 0] == 1 and np.count_nonzero(a) == 1
    assert "n_changed=2" in repr(e)


def test_label_edit_empty_and_errors():
    e = LabelEdit.empty(3, np.uint16)
    assert e.n_changed == 0 and e.bbox is None and e.ndim == 3 and e.values.dtype == np.uint16
    a = np.ones((2, 2, 2), np.uint16)
    e.apply(a)
    assert np.all(a == 1)
    assert e.inverse(a).n_changed == 0
    with pytest.raises(InvalidLabelsError, match="same length"):
        LabelEdit((np.array([0, 1]), np.array([0])), np.array([1, 2]))
    with pytest.raises(InvalidLabelsError, match="lift"):
        LabelEdit((np.array([0]), np.array([0])), np.array([1])).apply(a)


def test_lift_edit_of_a_slice_applies_to_the_stack():
    stack = np.zeros((3, 4, 5), np.uint32)
    stack[1, 1:3, 1:3] = 4
    stack[1, 0, 4] = 6
    stack[2, 1:3, 1:3] = 6  # same ids on another slice must not change
    stack[2, 0, 4] = 4
    edit2d = pr.merge_labels(stack[1], [4, 6], into=6)
    lifted = edit2d.lift((1,))
    assert lifted.ndim == 3
    assert np.all(lifted.indices[0] == 1)
    assert lifted.bbox == (slice(1, 2), slice(1, 3), slice(1, 3))
    out = check_edit(stack, lifted)
    expected = stack.copy()
    expected[1, 1:3, 1:3] = 6
    assert np.array_equal(out, expected)
    with pytest.raises(InvalidLabelsError):
        edit2d.lift((-1,))


# --------------------------------------------------------------------------- checks and queries


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((3, 3), np.float32), "integer dtype"),
        (np.zeros((3, 3), np.complex64), "integer dtype"),
        (np.zeros((3, 3), bool), "integer dtype"),
        (np.zeros((3, 3), object), "integer dtype"),
        (np.zeros(5, np.uint16), "at least 2D"),
        ([[1, 2], [3, 4]], "numpy array"),
    ],
)
def test_check_labels_rejects(bad, match):
    with pytest.raises(InvalidLabelsError, match=match):
        pr.check_labels(bad)


def test_check_labels_negative_values_found_in_any_chunk():
    a = np.zeros((50, 20), np.int32)
    pr.check_labels(a, chunk=20)
    a[47, 3] = -2
    with pytest.raises(InvalidLabelsError, match="negative value -2"):
        pr.check_labels(a, chunk=20)
    pr.check_labels(np.zeros((50, 20), np.uint8))
    # edits that scan the array reject negative labels too
    with pytest.raises(InvalidLabelsError, match="negative"):
        pr.delete_labels(a, [1])


def test_float_labels_rejected_by_edits():
    with pytest.raises(InvalidLabelsError, match="integer dtype"):
        pr.merge_labels(L2.astype(np.float32), [1, 2])


def test_find_bbox_2d_literal():
    assert pr.find_bbox(L2, 2) == (slice(2, 4), slice(3, 6))
    assert pr.find_bbox(L2, [1, 3]) == (slice(0, 2), slice(0, 9))
    assert pr.find_bbox(L2, [5]) == (slice(5, 8), slice(1, 4))
    assert pr.find_bbox(L2, [9]) is None
    assert pr.find_bbox(L2, [1000000]) is None  # does not fit uint16: simply absent
    # one row per chunk gives the same exact box
    assert pr.find_bbox(L2, [1, 2, 5], chunk=1) == (slice(0, 8), slice(0, 6))
    # many ids (np.isin path)
    assert pr.find_bbox(L2, list(range(2, 20))) == (slice(0, 8), slice(1, 9))


def test_find_bbox_3d_and_memmap(tmp_path):
    vol = np.zeros((6, 7, 8), np.uint32)
    vol[1, 2, 3] = 9
    vol[4, 5, 1] = 9
    vol[2:4, 0:2, 6:8] = 2
    assert pr.find_bbox(vol, 9, chunk=1) == (slice(1, 5), slice(2, 6), slice(1, 4))
    assert pr.find_bbox(vol, [2, 9]) == (slice(1, 5), slice(0, 6), slice(1, 8))
    mm = np.memmap(tmp_path / "v.raw", dtype=np.uint32, mode="w+", shape=vol.shape)
    mm[:] = vol
    assert pr.find_bbox(mm, 9, chunk=8) == (slice(1, 5), slice(2, 6), slice(1, 4))


def test_label_at_and_next_free_label():
    assert pr.label_at(L2, (2.6, 4.4)) == 2
    assert pr.label_at(L2, (0.49, 8)) == 3
    with pytest.raises(InvalidLabelsError, match="outside"):
        pr.label_at(L2, (8, 0))
    assert pr.next_free_label(L2) == 6
    assert pr.next_free_label(np.zeros((3, 3), np.uint8)) == 1
    full = np.full((2, 2), 255, np.uint8)
    assert pr.next_free_label(full) == 256
    big = np.zeros((40, 3), np.uint16)
    big[39, 2] = 700
    assert pr.next_free_label(big, chunk=3) == 701


# --------------------------------------------------------------------------- merge / delete


def test_merge_labels_into_smallest():
    edit = pr.merge_labels(L2, [5, 2])
    out = check_edit(L2, edit, within=(slice(5, 8), slice(1, 4)))
    # ids 2 and 5: 5 -> 2 (the smallest id)
    expected = L2.copy()
    expected[expected == 5] = 2
    assert np.array_equal(out, expected)
    assert edit.n_changed == 8
    assert edit.bbox == (slice(5, 8), slice(1, 4))


def test_merge_labels_into_given_and_three_ids_3d():
    vol = np.zeros((3, 4, 4), np.uint8)
    vol[0, :2, :2] = 1
    vol[1, 2:, 2:] = 2
    vol[2, 0, 3] = 3
    vol[2, 3, 0] = 4
    edit = pr.merge_labels(vol, [1, 2, 3], into=3, chunk=16)
    out = check_edit(vol, edit)
    expected = vol.copy()
    expected[vol == 1] = 3
    expected[vol == 2] = 3
    assert np.array_equal(out, expected)
    # into may be a new id: every listed object changes
    out = check_edit(vol, pr.merge_labels(vol, [1, 2], into=9))
    assert set(np.unique(out).tolist()) == {0, 3, 4, 9}


def test_merge_labels_errors():
    with pytest.raises(InvalidLabelsError, match="at least two"):
        pr.merge_labels(L2, [2])
    with pytest.raises(InvalidLabelsError, match="at least two"):
        pr.merge_labels(L2, [2, 2])
    with pytest.raises(InvalidLabelsError, match="background"):
        pr.merge_labels(L2, [0, 2])
    with pytest.raises(InvalidLabelsError, match="label 7 not found"):
        pr.merge_labels(L2, [2, 7])
    with pytest.raises(InvalidLabelsError, match="label 1 not found"):
        pr.merge_labels(np.where(L2 == 1, 0, L2), [1, 2])  # missing `into`
    with pytest.raises(InvalidLabelsError, match="wider dtype"):
        pr.merge_labels(L2.astype(np.uint8), [1, 2], into=300)


def test_delete_labels():
    edit = pr.delete_labels(L2, [3, 1])
    out = check_edit(L2, edit)
    expected = L2.copy()
    expected[:2, :2] = 0
    expected[0, 8] = 0
    assert np.array_equal(out, expected)
    assert edit.n_changed == 5
    out = check_edit(L2, pr.delete_labels(L2, 5), within=(slice(5, 8), slice(1, 4)))
    assert not np.any(out == 5)
    with pytest.raises(InvalidLabelsError, match="label 4 not found"):
        pr.delete_labels(L2, [4])
    with pytest.raises(InvalidLabelsError, match="background"):
        pr.delete_labels(L2, [0])


def test_merge_and_delete_on_memmap(tmp_path):
    mm = np.memmap(tmp_path / "l.raw", dtype=np.uint16, mode="w+", shape=L2.shape)
    mm[:] = L2
    edit = pr.merge_labels(mm, [1, 2], chunk=9)
    inv = edit.inverse(mm)
    edit.apply(mm)
    assert not np.any(np.asarray(mm) == 2)
    inv.apply(mm)
    assert np.array_equal(np.asarray(mm), L2)


# --------------------------------------------------------------------------- split by seeds

DUMBBELL = np.array(
    [
        [4, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        [0, 1, 1, 1, 0, 0, 1, 1, 1, 0],
        [0, 1, 1, 1, 1, 1, 1, 1, 1, 0],
        [0, 1, 1, 1, 0, 0, 1, 1, 1, 0],
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    ],
    dtype=np.uint8,
)


def test_split_label_2d_distance_watershed():
    edit = pr.split_label(DUMBBELL, 1, [(2, 2), (2.4, 7.2)])
    out = check_edit(DUMBBELL, edit, within=(slice(1, 4), slice(1, 9)))
    expected = np.array(
        [
            [4, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            [0, 1, 1, 1, 0, 0, 5, 5, 5, 0],
            [0, 1, 1, 1, 1, 5, 5, 5, 5, 0],
            [0, 1, 1, 1, 0, 0, 5, 5, 5, 0],
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        ],
        dtype=np.uint8,
    )
    assert np.array_equal(out, expected)
    # explicit new id; the FIRST seed keeps the label
    out = check_edit(DUMBBELL, pr.split_label(DUMBBELL, 1, [(2, 7), (2, 2)], new_ids=[9]))
    assert np.all(out[1:4, 1:4] == 9) and np.all(out[1:4, 6:9] == 1)


def test_split_label_follows_image_edges():
    labels = np.zeros((6, 10), np.uint16)
    labels[1:5, 1:9] = 3
    image = np.zeros((6, 10), np.float32)
    image[:, 3:] = 100.0  # an edge between columns 2 and 3, far from the middle
    edit = pr.split_label(labels, 3, [(2, 1), (2, 8)], image=image)
    out = check_edit(labels, edit)
    assert np.all(out[1:5, 1:3] == 3)
    assert np.all(out[1:5, 4:9] == 4)
    # without the image the cut is in the middle instead
    out_dt = applied(labels, pr.split_label(labels, 3, [(2, 1), (2, 8)]))
    assert np.all(out_dt[1:5, 1:4] == 3) and np.all(out_dt[1:5, 6:9] == 4)
    # an RGB image (trailing channel axis) is averaged
    rgb = np.repeat(image[..., None], 3, axis=-1)
    assert np.array_equal(applied(labels, pr.split_label(labels, 3, [(2, 1), (2, 8)], image=rgb)), out)
    with pytest.raises(InvalidImageError, match="does not match"):
        pr.split_label(labels, 3, [(2, 1), (2, 8)], image=image[:, :5])


def test_split_label_3d():
    vol = np.zeros((5, 5, 12), np.uint32)
    vol[1:4, 1:4, 1:5] = 2
    vol[2, 2, 5:7] = 2  # a thin neck
    vol[1:4, 1:4, 7:11] = 2
    vol[0, 0, 0] = 8
    edit = pr.split_label(vol, 2, [(2, 2, 2), (2, 2, 9)])
    out = check_edit(vol, edit, within=(slice(1, 4), slice(1, 4), slice(1, 11)))
    assert np.all(out[1:4, 1:4, 1:5] == 2)
    assert np.all(out[1:4, 1:4, 7:11] == 9)  # next free id
    assert np.count_nonzero(out == 2) + np.count_nonzero(out == 9) == np.count_nonzero(vol == 2)
    assert out[2, 2, 5] == 2 and out[2, 2, 6] == 9


def test_split_label_piece_without_seed_keeps_label():
    labels = np.zeros((5, 12), np.uint16)
    labels[1:4, 1:7] = 1
    labels[1:4, 9:11] = 1  # a separate piece of the same object, no seed in it
    out = check_edit(labels, pr.split_label(labels, 1, [(2, 1), (2, 6)]))
    assert np.all(out[1:4, 9:11] == 1)
    assert set(np.unique(out[1:4, 1:7]).tolist()) == {1, 2}
    assert np.count_nonzero(out) == np.count_nonzero(labels)


def test_split_label_errors():
    with pytest.raises(InvalidLabelsError, match=r"seed 1 at \(0, 0\) lies on label 4, not on label 1"):
        pr.split_label(DUMBBELL, 1, [(2, 2), (0, 0)])
    with pytest.raises(InvalidLabelsError, match=r"seed 0 at \(9, 9\) is outside"):
        pr.split_label(DUMBBELL, 1, [(9, 9), (2, 2)])
    with pytest.raises(InvalidLabelsError, match="at least two seeds"):
        pr.split_label(DUMBBELL, 1, [(2, 2)])
    with pytest.raises(InvalidLabelsError, match="same voxel"):
        pr.split_label(DUMBBELL, 1, [(2, 2), (2.2, 1.9)])
    with pytest.raises(InvalidLabelsError, match="shape"):
        pr.split_label(DUMBBELL, 1, [(2, 2, 2), (2, 7, 1)])
    with pytest.raises(InvalidLabelsError, match="makes 3 objects, so it needs 2 distinct new_ids"):
        pr.split_label(DUMBBELL, 1, [(2, 2), (2, 7), (1, 8)], new_ids=[7])
    with pytest.raises(InvalidLabelsError, match="must not contain"):
        pr.split_label(DUMBBELL, 1, [(2, 2), (2, 7)], new_ids=[1])


def test_split_label_dtype_overflow_uint8():
    full = DUMBBELL.copy()
    full[4, 9] = 255  # uint8 has no free id left
    with pytest.raises(InvalidLabelsError, match=r"256 does not fit in uint8.*uint16"):
        pr.split_label(full, 1, [(2, 2), (2, 7)])
    u16 = DUMBBELL.astype(np.uint16)
    u16[4, 9] = 65535
    with pytest.raises(InvalidLabelsError, match=r"65536 does not fit in uint16.*uint32"):
        pr.split_label(u16, 1, [(2, 2), (2, 7)])
    # no wrap-around to 0 happened: nothing was produced, the labels are untouched
    assert full[4, 9] == 255


# --------------------------------------------------------------------------- split by line

RECT = np.zeros((6, 9), np.uint16)
RECT[1:5, 1:8] = 3
RECT[0, 8] = 7


def test_split_label_by_line_vertical():
    edit = pr.split_label_by_line(RECT, 3, [(-1, 3), (6, 3)])
    out = check_edit(RECT, edit, within=(slice(1, 5), slice(1, 8)))
    # left piece (8 px) gets the next free id, the larger right piece keeps 3
    assert np.all(out[1:5, 1:3] == 8)
    assert np.all(out[1:5, 4:8] == 3)
    # the pixels under the line are not lost: they join a neighbouring piece
    assert set(out[1:5, 3].tolist()) <= {3, 8}
    assert np.array_equal(out != 0, RECT != 0)
    assert out[0, 8] == 7


def test_split_label_by_line_diagonal_polyline_and_width():
    # a polyline with diagonal steps still separates (it is rasterized 4-connected)
    edit = pr.split_label_by_line(RECT, 3, [(0, 0), (3, 3), (6, 6)], new_ids=[20])
    out = check_edit(RECT, edit)
    assert set(np.unique(out[RECT == 3]).tolist()) == {3, 20}
    assert np.array_equal(out != 0, RECT != 0)
    assert out[1, 6] != out[4, 1]  # opposite sides of the line differ
    # a thick line (columns 2..4) cuts too; each cut pixel joins the piece nearest to it
    wide = check_edit(RECT, pr.split_label_by_line(RECT, 3, [(-1, 3), (6, 3)], width=3))
    assert np.array_equal(wide != 0, RECT != 0)
    assert np.all(wide[1:5, 1:3] == 8)  # column 1 piece + column 2 under the line
    assert np.all(wide[1:5, 4:8] == 3)  # the larger piece keeps the id, column 4 joins it
    assert set(wide[1:5, 3].tolist()) <= {3, 8}


def test_split_label_by_line_keeps_uncut_parts():
    labels = np.zeros((6, 14), np.uint8)
    labels[1:5, 1:8] = 2
    labels[1:3, 10:13] = 2  # a separate part of the same object, not crossed by the line
    out = check_edit(labels, pr.split_label_by_line(labels, 2, [(0, 5), (5, 5)]))
    assert np.all(out[1:3, 10:13] == 2)
    assert np.all(out[1:5, 1:5] == 2) and np.all(out[1:5, 6:8] == 3)


def test_split_label_by_line_errors():
    with pytest.raises(InvalidLabelsError, match="does not cut label 3 into pieces; draw it across"):
        pr.split_label_by_line(RECT, 3, [(2, 2), (3, 5)])  # inside only
    with pytest.raises(InvalidLabelsError, match="does not cut"):
        pr.split_label_by_line(RECT, 3, [(5, 0), (5, 8)])  # misses the object
    with pytest.raises(InvalidLabelsError, match="2D"):
        pr.split_label_by_line(np.zeros((2, 3, 3), np.uint8), 1, [(0, 0), (2, 2)])
    with pytest.raises(InvalidLabelsError, match="at least two vertices"):
        pr.split_label_by_line(RECT, 3, [(2, 2)])
    with pytest.raises(InvalidLabelsError, match="not found"):
        pr.split_label_by_line(RECT, 5, [(-1, 3), (6, 3)])
    full = RECT.astype(np.uint8)
    full[0, 0] = 255
    with pytest.raises(InvalidLabelsError, match="wider dtype"):
        pr.split_label_by_line(full, 3, [(-1, 3), (6, 3)])


def test_split_label_by_line_on_a_stack_slice_lifted():
    stack = np.stack([RECT, RECT, RECT])
    edit = pr.split_label_by_line(stack[1], 3, [(-1, 3), (6, 3)], new_ids=[11]).lift((1,))
    out = check_edit(stack, edit)
    assert np.array_equal(out[0], RECT) and np.array_equal(out[2], RECT)
    assert np.all(out[1, 1:5, 1:3] == 11)


# --------------------------------------------------------------------------- fill holes


def test_fill_holes_2d_literal():
    labels = np.array(
        [
            [1, 1, 1, 1, 1, 0, 0],
            [1, 0, 0, 0, 1, 0, 4],
            [1, 0, 2, 0, 1, 0, 4],
            [1, 1, 1, 1, 1, 0, 4],
            [0, 0, 0, 0, 0, 0, 0],
            [3, 3, 3, 0, 0, 0, 0],
            [3, 0, 3, 0, 0, 0, 0],
        ],
        dtype=np.uint8,
    )
    edit = pr.fill_holes(labels)
    out = check_edit(labels, edit, within=(slice(1, 3), slice(1, 4)))
    expected = labels.copy()
    expected[1, 1:4] = 1
    expected[2, 1] = 1
    expected[2, 3] = 1  # 2 stays inside the filled hole; the open "3" (touches the border) is not closed
    assert np.array_equal(out, expected)
    assert pr.fill_holes(labels, [3, 4]).n_changed == 0
    assert np.array_equal(applied(labels, pr.fill_holes(labels, 1)), expected)
    with pytest.raises(InvalidLabelsError, match="not found"):
        pr.fill_holes(labels, [9])


def test_fill_holes_nested_objects_innermost_wins():
    labels = np.zeros((9, 9), np.uint16)
    labels[0:9, 0:9] = 1
    labels[1:8, 1:8] = 0
    labels[2:7, 2:7] = 2
    labels[3:6, 3:6] = 0
    out = check_edit(labels, pr.fill_holes(labels))
    assert np.all(out[3:6, 3:6] == 2)  # the hole inside 2 goes to 2, not to the outer 1
    ring = np.zeros((9, 9), bool)
    ring[1:8, 1:8] = True
    ring[2:7, 2:7] = False
    assert np.all(out[ring] == 1)


def test_fill_holes_region_limits_work():
    labels = np.zeros((5, 12), np.uint8)
    labels[0:3, 0:3] = 1
    labels[1, 1] = 0
    labels[0:3, 6:9] = 6
    labels[1, 7] = 0
    out = check_edit(labels, pr.fill_holes(labels, region=(slice(0, 5), slice(5, 12))))
    assert out[1, 7] == 6 and out[1, 1] == 0
    # a hole that reaches the region's border is not filled
    assert pr.fill_holes(labels, region=(slice(0, 5), slice(7, 12))).n_changed == 0
    with pytest.raises(InvalidLabelsError, match="region"):
        pr.fill_holes(labels, [1], region=(slice(0, 5), slice(5, 12)))


def test_fill_holes_3d_hollow_cube():
    vol = np.zeros((5, 5, 5), np.uint32)
    vol[:, :, :] = 0
    vol[0:5, 0:5, 0:5] = 7
    vol[1:4, 1:4, 1:4] = 0
    vol[2, 2, 2] = 3
    vol = np.pad(vol, 1)
    edit = pr.fill_holes(vol, [7], chunk=10)
    out = check_edit(vol, edit, within=(slice(2, 5),) * 3)
    assert edit.n_changed == 26
    assert out[3, 3, 3] == 3 and np.count_nonzero(out == 7) == 125 - 1


# --------------------------------------------------------------------------- remove small / relabel


def test_remove_small_objects():
    edit = pr.remove_small_objects(L2, 2)
    out = check_edit(L2, edit)
    assert out[0, 8] == 0 and np.array_equal(out[:, :8], L2[:, :8])
    out = applied(L2, pr.remove_small_objects(L2, 5, chunk=9))
    assert set(np.unique(out).tolist()) == {0, 2, 5}
    assert pr.remove_small_objects(L2, 0).n_changed == 0
    assert pr.remove_small_objects(L2, 1).n_changed == 0
    with pytest.raises(InvalidLabelsError, match="min_size"):
        pr.remove_small_objects(L2, -1)


def test_remove_small_objects_region_counts_inside_region():
    # label 2 has 6 px in all, 3 of them in the region (columns 5..8)
    region = (slice(0, 8), slice(5, 9))
    edit = pr.remove_small_objects(L2, 4, region=region)
    out = check_edit(L2, edit, within=region)
    assert np.all(out[2:4, 5] == 0) and np.all(out[2:4, 3:5] == 2)  # only the part in the region
    assert out[0, 8] == 0
    assert pr.remove_small_objects(L2, 4).n_changed == 1  # whole array: 2 has 6 px; only 3 (1 px) goes
    assert pr.remove_small_objects(L2, 5).n_changed == 5  # 1 (4 px) and 3 (1 px)


@pytest.mark.parametrize("shape", [(13, 17), (4, 9, 11)])
def test_relabel_sequential_matches_skimage(shape):
    rng = np.random.default_rng(3)
    labels = rng.choice(np.array([0, 3, 4, 9, 40, 41, 900], np.uint16), size=shape)
    edit = pr.relabel_sequential(labels, chunk=20)
    out = check_edit(labels, edit)
    expected, _, _ = sk_relabel_sequential(labels)
    assert np.array_equal(out, expected)
    out5 = applied(labels, pr.relabel_sequential(labels, offset=5))
    assert np.array_equal(out5, sk_relabel_sequential(labels, offset=5)[0])


def test_relabel_sequential_huge_ids_and_noop():
    labels = np.array([[0, 5_000_000_000, 7], [7, 0, 2**40]], dtype=np.uint64)
    out = check_edit(labels, pr.relabel_sequential(labels))
    assert out.tolist() == [[0, 2, 1], [1, 0, 3]]
    # ids beyond float64 precision stay exact
    off = 2**59 + 1
    out = applied(labels, pr.relabel_sequential(labels, offset=off))
    assert out.tolist() == [[0, off + 1, off], [off, 0, off + 2]]
    assert pr.relabel_sequential(np.array([[0, 1], [2, 0]], np.uint8)).n_changed == 0
    assert pr.remove_small_objects(labels, 2).n_changed == 2


# --------------------------------------------------------------------------- paint


def test_paint_with_offset_and_clipping():
    labels = np.zeros((4, 5), np.uint8)
    labels[1, 1] = 6
    mask = np.array([[1, 1, 0], [0, 1, 1]], bool)
    edit = pr.paint(labels, mask, 6, offset=(1, 1))
    out = check_edit(labels, edit, within=(slice(1, 3), slice(1, 4)))
    assert edit.n_changed == 3  # (1, 1) was 6 already
    assert out.tolist() == [[0, 0, 0, 0, 0], [0, 6, 6, 0, 0], [0, 0, 6, 6, 0], [0, 0, 0, 0, 0]]
    # partly outside: clipped
    out = applied(labels, pr.paint(labels, np.ones((3, 3), bool), 2, offset=(-1, 3)))
    assert out[:2, 3:].tolist() == [[2, 2], [2, 2]] and np.count_nonzero(out == 2) == 4
    assert pr.paint(labels, np.ones((2, 2), bool), 1, offset=(10, 10)).n_changed == 0
    # erase
    assert applied(labels, pr.paint(labels, labels == 6, 0)).max() == 0
    with pytest.raises(InvalidLabelsError, match="wider dtype"):
        pr.paint(labels, mask, 300)
    with pytest.raises(InvalidLabelsError, match="same number of axes"):
        pr.paint(labels, np.ones(3, bool), 1)


def test_paint_new_label_3d_and_overflow():
    vol = np.zeros((2, 3, 3), np.uint16)
    vol[0, 0, 0] = 41
    edit, new_id = pr.paint_new_label(vol, np.ones((1, 2, 2), bool), offset=(1, 1, 1))
    assert new_id == 42
    out = check_edit(vol, edit)
    assert np.count_nonzero(out == 42) == 4 and np.all(out[1, 1:, 1:] == 42)
    full = np.full((2, 2), 255, np.uint8)
    with pytest.raises(InvalidLabelsError, match=r"256 does not fit in uint8"):
        pr.paint_new_label(full, np.ones((1, 1), bool))


# --------------------------------------------------------------------------- bbox-local memory


def test_edits_allocate_nothing_full_size():
    """On a 2048 x 2048 uint32 image (16 MiB) no edit of one object allocates a full-size array."""
    n = 2048
    labels = np.zeros((n, n), np.uint32)
    cells = labels.reshape(64, 32, 64, 32)
    cells[:, 4:28, :, 4:28] = np.arange(1, 64 * 64 + 1, dtype=np.uint32).reshape(64, 1, 64, 1)
    a, b = int(labels[1000, 1000]), int(labels[1000, 1040])
    labels[1000, 1000] = 0  # a hole in a
    calls = {
        "find_bbox": lambda: pr.find_bbox(labels, [a]),
        "merge": lambda: pr.merge_labels(labels, [a, b]),
        "delete": lambda: pr.delete_labels(labels, [a]),
        "split": lambda: pr.split_label(labels, a, [(998, 1010), (1016, 1010)]),
        "fill_holes": lambda: pr.fill_holes(labels, [a]),
        "paint_new": lambda: pr.paint_new_label(labels, np.ones((5, 5), bool), offset=(0, 0)),
    }
    for call in calls.values():
        call()  # warm up: first calls import scikit-image modules
    for name, call in calls.items():
        tracemalloc.start()
        try:
            result = call()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert result is not None
        assert peak < labels.nbytes / 4, f"{name} allocated {peak / 2**20:.1f} MiB"
    edit = pr.fill_holes(labels, [a])
    assert edit.n_changed == 1 and edit.bbox == (slice(1000, 1001), slice(1000, 1001))
