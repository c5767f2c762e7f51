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


# ----------------------------------------------------------------------------- AJI and PQ (hand-computed)

def row(*values):
    return np.array([values], np.uint16)


def test_aji_pq_hand_computed():
    t = row(1, 1, 1, 1, 0, 0, 2, 2, 0, 0)          # G1: 4 px, G2: 2 px
    p = row(3, 3, 3, 0, 0, 4, 4, 4, 0, 5)          # S3: 3 px (3 in G1), S4: 3 px (2 in G2), S5: 1 px alone
    # AJI: C = 3 + 2, U = |G1 u S3| + |G2 u S4| + |S5| = 4 + 3 + 1
    assert M.aggregated_jaccard_index(t, p) == pytest.approx(5 / 8)
    # PQ: matches G1-S3 (IoU 3/4) and G2-S4 (IoU 2/3); S5 is a false positive
    q = M.panoptic_quality(t, p)
    assert (q["tp"], q["fp"], q["fn"]) == (2, 1, 0)
    assert q["sq"] == pytest.approx((3 / 4 + 2 / 3) / 2)
    assert q["dq"] == pytest.approx(2 / (2 + 0.5))
    assert q["pq"] == pytest.approx((3 / 4 + 2 / 3) / 2 * 0.8)
    s = M.instance_scores(t, p)
    assert s["f1@0.5"] == pytest.approx(0.8) and s["dice"] == pytest.approx(2 * 5 / (6 + 7))
    assert (s["n_true"], s["n_pred"], s["aji_inter"], s["aji_union"]) == (2, 3, 5, 8)


def test_aji_pairs_each_true_object_with_its_best_prediction_and_counts_unused_ones():
    t = row(1, 1, 1, 1, 0)
    p = row(2, 3, 3, 3, 3)                         # S2: IoU 1/4 with G1, S3: IoU 3/5 -> S3 is G1's pair
    # C = 3, U = |G1 u S3| (5) + |S2| (1, paired with nothing)
    assert M.aggregated_jaccard_index(t, p) == pytest.approx(3 / 6)


def test_aji_merged_prediction_counts_its_union_once_per_true_object():
    t = row(1, 1, 0, 2, 2)
    p = row(7, 7, 7, 7, 7)                         # one object over both: Kumar's AJI penalises the merge
    assert M.aggregated_jaccard_index(t, p) == pytest.approx((2 + 2) / (5 + 5))
    q = M.panoptic_quality(t, p)                   # IoU 2/5 with each: no match
    assert (q["tp"], q["fp"], q["fn"], q["pq"], q["sq"], q["dq"]) == (0, 1, 2, 0.0, 0.0, 0.0)


def test_pq_needs_iou_above_half_while_f1_counts_exactly_half():
    t = row(1, 1, 0, 0)
    p = row(1, 0, 0, 0)                            # IoU exactly 0.5
    assert M.panoptic_quality(t, p)["tp"] == 0 and M.panoptic_quality(t, p)["pq"] == 0.0
    assert M.instance_f1(t, p) == 1.0


def test_aji_pq_edge_cases():
    z = np.zeros((1, 5), np.uint16)
    objs = row(0, 5, 5, 0, 9)
    for metric in (M.aggregated_jaccard_index, lambda a, b: M.panoptic_quality(a, b)["pq"]):
        assert metric(z, z) == 1.0                 # both empty: nothing to get wrong
        assert metric(z, objs) == 0.0              # empty truth, objects predicted
        assert metric(objs, z) == 0.0              # objects missed
    both = M.instance_scores(z, z)
    assert all(both[k] == 1.0 for k in ("f1@0.5", "aji", "pq", "sq", "dq", "dice"))
    only_pred = M.instance_scores(z, objs)
    assert all(only_pred[k] == 0.0 for k in ("f1@0.5", "aji", "pq", "sq", "dq", "dice"))
    assert (only_pred["n_true"], only_pred["n_pred"], only_pred["aji_union"]) == (0, 2, 3)
    only_truth = M.instance_scores(objs, z)
    assert (only_truth["fn"], only_truth["pq_fn"], only_truth["aji_union"]) == (2, 2, 3)
    assert only_truth["aji"] == 0.0 and only_truth["pq"] == 0.0


def test_aji_pq_ignore_ids_and_dtype():
    t = row(1, 1, 1, 1, 0, 0, 2, 2, 0, 0)
    p = row(3, 3, 3, 0, 0, 4, 4, 4, 0, 5)
    big = np.where(p > 0, p.astype(np.int64) + 10**9, 0)      # sparse huge ids take the np.unique path
    assert M.aggregated_jaccard_index(t.astype(np.int32), big) == pytest.approx(5 / 8)
    assert M.panoptic_quality(t, big)["pq"] == pytest.approx(M.panoptic_quality(t, p)["pq"])
    with pytest.raises(ValueError, match="shapes differ"):
        M.aggregated_jaccard_index(t, p[:, :5])


def _aji_pq_by_loops(t, p):
    """The definitions written out object by object (slow; dense)."""
    tids = [i for i in np.unique(t) if i]
    pids = [j for j in np.unique(p) if j]
    inter_c = union_c = 0
    used = set()
    for i in tids:
        g = t == i
        ious = [((g & (p == j)).sum() / (g | (p == j)).sum(), -j) for j in pids]
        if not ious or max(ious)[0] == 0:
            union_c += g.sum()
            continue
        j = -max(ious)[1]
        used.add(j)
        inter_c += (g & (p == j)).sum()
        union_c += (g | (p == j)).sum()
    union_c += sum((p == j).sum() for j in pids if j not in used)
    aji = 1.0 if union_c == 0 else inter_c / union_c
    tp, iou_sum = 0, 0.0
    for i in tids:
        for j in pids:
            iou = ((t == i) & (p == j)).sum() / ((t == i) | (p == j)).sum()
            if iou > 0.5:
                tp, iou_sum = tp + 1, iou_sum + iou
    fp, fn = len(pids) - tp, len(tids) - tp
    pq = 1.0 if tp + fp + fn == 0 else (iou_sum / tp if tp else 0.0) * tp / (tp + 0.5 * fp + 0.5 * fn)
    return aji, pq


@pytest.mark.parametrize("seed", range(6))
def test_aji_pq_match_the_definitions_on_random_labels(seed):
    from scipy import ndimage as ndi
    from skimage.segmentation import watershed

    rng = np.random.default_rng(seed)
    pts = rng.integers(0, 40, (14, 2))

    def blobs(points, ids):
        seeds = np.zeros((40, 40), np.int32)
        seeds[points[:, 0], points[:, 1]] = ids
        dist = ndi.distance_transform_edt(seeds == 0) + rng.random((40, 40))
        return watershed(dist, seeds, mask=dist < rng.uniform(4, 7))

    t = blobs(pts, np.arange(1, 15))
    moved = np.clip(pts + rng.integers(-1, 2, pts.shape), 0, 39)       # the same nuclei, a bit off, new ids
    p = blobs(np.concatenate([moved[2:], rng.integers(0, 40, (3, 2))]), rng.permutation(15)[:15] * 7 + 7)
    aji, pq = _aji_pq_by_loops(t, p)
    assert 0 < pq < 1 and 0 < aji < 1
    assert M.aggregated_jaccard_index(t, p) == pytest.approx(aji)
    assert M.panoptic_quality(t, p)["pq"] == pytest.approx(pq)
    assert M.aggregated_jaccard_index(t, t) == 1.0 and M.panoptic_quality(t, t)["pq"] == 1.0


@pytest.mark.parametrize("id_scale", [1, 1_000_003])
def test_matching_at_many_thresholds_counts_what_the_definition_counts(id_scale):
    """No disc here has two partners at IoU >= 0.3, so TP at a threshold is the
    number of pairs at or above it; small ids (counted with bincount) and huge ids (sorted) agree."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:64, :64]
    t, p = np.zeros((64, 64), np.int64), np.zeros((64, 64), np.int64)
    for k, (y, x) in enumerate(rng.integers(4, 60, (14, 2)), 1):     # discs, and the same discs moved
        t[(yy - y) ** 2 + (xx - x) ** 2 <= 16] = k
        dy, dx = rng.integers(-2, 3, 2)
        p[(yy - y - dy) ** 2 + (xx - x - dx) ** 2 <= rng.integers(12, 21)] = k * id_scale
    tids, pids = np.unique(t)[1:], np.unique(p)[1:]
    ious = np.array([[((t == i) & (p == j)).sum() / ((t == i) | (p == j)).sum() for j in pids] for i in tids])
    ths = (0.3, 0.5, 0.6, 0.7)
    got = M.match_instances_at(t, p, ths)
    for th, r in zip(ths, got):
        tp = int((ious >= th).sum())
        assert (r["tp"], r["fp"], r["fn"]) == (tp, len(pids) - tp, len(tids) - tp)
        assert r == M.match_instances(t, p, iou=th)
    assert got[0]["tp"] > got[-1]["tp"] > 0
