"""Metrics against hand-made label arrays."""

import numpy as np
import pytest

from segloop.core.editing import metrics as M


def two_squares():
    t = np.zeros((20, 20), np.uint16)
    t[2:8, 2:8] = 1
    t[10:16, 10:16] = 2
    return t


def test_perfect_and_empty():
    t = two_squares()
    assert M.dice(t, t) == 1 and M.jaccard(t, t) == 1 and M.instance_f1(t, t) == 1
    z = np.zeros_like(t)
    assert M.dice(z, z) == 1.0 and M.instance_f1(z, z) == 1.0
    assert M.instance_f1(t, z) == 0.0 and M.dice(t, z) == 0.0


def test_dice_jaccard_values():
    t = np.zeros((10, 10), int)
    p = np.zeros((10, 10), int)
    t[:, :4] = 1     # 40 px
    p[:, 2:6] = 1    # 40 px, 20 overlap
    assert M.dice(t, p) == pytest.approx(0.5)
    assert M.jaccard(t, p) == pytest.approx(20 / 60)


def test_instance_matching_counts_split_and_merge():
    t = two_squares()
    split = t.copy()
    split[2:8, 5:8] = 3                      # object 1 split in halves: IoU 0.5 each -> at most one match
    r = M.match_instances(t, split, iou=0.5)
    assert r["tp"] == 2 and r["fp"] == 1 and r["fn"] == 0
    merged = (t > 0).astype(np.uint16)       # both objects as one blob, with a bridge
    merged[8:10, 2:16] = 1                   # IoU with either object: 36 / 100 < 0.5
    r = M.match_instances(t, merged, iou=0.5)
    assert r["tp"] == 0 and r["fp"] == 1 and r["fn"] == 2


def test_average_precision_decreases_with_worse_overlap():
    t = two_squares()
    shifted = np.roll(t, 1, axis=1)
    assert M.average_precision(t, t) == 1.0
    assert 0 < M.average_precision(t, shifted) < 1.0


def test_mask_restricts_evaluation():
    t = two_squares()
    p = t.copy()
    p[10:16, 10:16] = 0
    mask = np.zeros(t.shape, bool)
    mask[:9, :9] = True
    assert M.dice(t, p, mask=mask) == 1.0 and M.dice(t, p) < 1.0


def test_per_class_dice_and_accuracy():
    t = np.array([[0, 1, 2, 2]])
    p = np.array([[0, 1, 1, 2]])
    assert M.per_class_dice(t, p, 3) == pytest.approx([2 / 3, 2 / 3])
    assert M.pixel_accuracy(t, p) == 0.75
