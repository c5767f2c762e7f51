"""Correction tracking: reviewed boxes, compressed prediction snapshots, correction summaries."""

import numpy as np
import pytest

from segloop.core.editing.corrections import (
    PredictionSnapshot,
    ReviewedRegions,
    summarize_corrections,
)
from segloop.errors import InvalidLabelsError


def test_reviewed_boxes_rasterize_for_any_crop():
    r = ReviewedRegions((10, 12))
    r.add((slice(2, 5), slice(3, 6)))
    r.add(((8, 20), (0, 2)))                       # clipped to the image
    assert r.boxes == (((2, 5), (3, 6)), ((8, 10), (0, 2)))
    m = r.mask()
    expected = np.zeros((10, 12), np.uint8)
    expected[2:5, 3:6] = 1
    expected[8:10, 0:2] = 1
    np.testing.assert_array_equal(m, expected)
    np.testing.assert_array_equal(r.mask((slice(4, 9), slice(1, 4))), expected[4:9, 1:4])
    assert r.fraction() == pytest.approx(13 / 120)
    assert r.bbox() == ((2, 10), (0, 6))
    assert ReviewedRegions.from_list((10, 12), r.to_list()).boxes == r.boxes


def test_reviewed_margin_containment_and_3d_slices():
    r = ReviewedRegions((4, 20, 20))
    r.add((slice(1, 2), slice(5, 6), slice(5, 6)), margin=2)
    assert r.boxes == (((0, 4), (3, 8), (3, 8)),)
    r.add(((1, 2), (4, 6), (4, 6)))                # inside the first: nothing new
    assert len(r) == 1
    r.add(((2, 3), (0, 20), (0, 20)))              # a whole slice swallows nothing, adds one box
    assert len(r) == 2 and r.mask()[2].all() and not r.mask()[3, 0, 0]
    assert r.fraction() == pytest.approx((4 * 25 + 400 - 25) / 1600)


def test_many_boxes_are_coalesced_without_losing_area():
    r = ReviewedRegions((200, 200))
    r.MAX_BOXES = 10
    rng = np.random.default_rng(0)
    expected = np.zeros((200, 200), bool)
    for _ in range(60):
        y, x = rng.integers(0, 190, 2)
        r.add(((y, y + 10), (x, x + 10)))
        expected[y:y + 10, x:x + 10] = True
    assert len(r) <= 60 and (r.mask().astype(bool) >= expected).all()


def test_snapshot_write_replaces_rows_across_chunks():
    vol = np.zeros((9, 20, 30), np.uint16)
    snap = PredictionSnapshot(vol, chunk_bytes=20 * 30 * 2 * 2)     # 2 slices per chunk
    new = np.arange(3 * 20 * 30, dtype=np.uint16).reshape(3, 20, 30)
    snap.write(3, new)                                               # spans chunks 1 and 2
    vol[3:6] = new
    np.testing.assert_array_equal(snap.read(), vol)
    with pytest.raises(InvalidLabelsError):
        snap.write(8, new)


def test_snapshot_round_trips_crops_across_chunks():
    lab = np.random.default_rng(0).integers(0, 70000, (300, 257)).astype(np.uint32)
    snap = PredictionSnapshot(lab, chunk_bytes=257 * 4 * 7)       # 7 rows per chunk
    np.testing.assert_array_equal(snap.read(), lab)
    np.testing.assert_array_equal(snap.read((slice(5, 299), slice(100, 101))), lab[5:299, 100:101])
    vol = np.zeros((9, 40, 40), np.uint16)
    vol[3:6, 10:20, 10:20] = 4
    snap = PredictionSnapshot(vol, chunk_bytes=40 * 40 * 2 * 2)
    np.testing.assert_array_equal(snap.read((slice(2, 7), slice(None), slice(5, 30))), vol[2:7, :, 5:30])
    assert snap.nbytes_compressed < vol.nbytes / 10
    with pytest.raises(InvalidLabelsError):
        PredictionSnapshot(np.zeros((3, 3), np.float32))


def _objects():
    p = np.zeros((20, 40), np.uint16)
    p[2:6, 2:6] = 1        # kept as is
    p[2:6, 10:14] = 2      # merged with 3
    p[2:6, 14:18] = 3
    p[10:18, 2:18] = 4     # split in two
    p[10:14, 25:29] = 5    # deleted
    p[15:19, 30:34] = 6    # reshaped
    return p


def test_summary_counts_each_kind_of_correction():
    p = _objects()
    c = p.copy()
    c[c == 3] = 2                                   # merge
    c[10:18, 10:18] = 7                             # split 4 into 4 + 7
    c[c == 5] = 0                                   # delete
    c[0:2, 30:35] = 8                               # add
    c[15:19, 34] = 6                                # grow 6
    s = summarize_corrections(p, c)
    assert (s.added, s.deleted, s.merged, s.split, s.modified) == (1, 1, 1, 1, 1)
    assert s.pixels_changed == int((p != c).sum()) and s.objects_predicted == 6 and s.objects_now == 6
    assert "1 merged" in s.describe()


def test_summary_of_unchanged_labels_and_a_three_way_merge():
    p = _objects()
    assert summarize_corrections(p, p.copy()).to_dict()["pixels_changed"] == 0
    q = np.zeros((10, 30), np.uint8)
    q[2:6, 0:10], q[2:6, 10:20], q[2:6, 20:30] = 1, 2, 3
    s = summarize_corrections(q, np.where(q > 0, 9, 0).astype(np.uint8))
    assert (s.merged, s.added, s.deleted) == (1, 0, 0)


def test_semantic_summary_counts_pixels_per_new_class():
    p = np.zeros((5, 5), np.uint8)
    c = p.copy()
    c[0, :3] = 2
    c[4, 4] = 1
    s = summarize_corrections(p, c, task="semantic")
    assert s.pixels_changed == 4 and s.class_pixels_changed == {"1": 1, "2": 3}
    with pytest.raises(InvalidLabelsError):
        summarize_corrections(p, c[:4])
