"""Instance assembly across bands, size filtering, dtype growth, entropy."""

import numpy as np
import pytest
from skimage.draw import disk
from skimage.segmentation import find_boundaries

from segloop.core.editing.metrics import instance_f1
from segloop.core.inference.postprocess import (
    InstanceAssembler,
    InstanceParams,
    entropy,
    instances_from_probs,
    label_dtype_for,
)
from segloop.errors import ModelPackageError


def probs_from_instances(lab):
    b = find_boundaries(lab, mode="inner") & (lab > 0)
    p = np.zeros((3,) + lab.shape, np.float32)
    p[0] = lab == 0
    p[1] = (lab > 0) & ~b
    p[2] = b
    return p


def grid_of_nuclei(h, w, spacing=45, r=14):
    lab = np.zeros((h, w), np.int32)
    k = 1
    for cy in range(20, h, spacing):
        for cx in range(20, w, spacing):
            rr, cc = disk((cy, cx), r, shape=(h, w))
            lab[rr, cc] = k
            k += 1
    return lab


@pytest.mark.parametrize("band_rows", [7, 37, 256, 1000])
def test_objects_spanning_bands_are_one_instance(band_rows):
    lab = grid_of_nuclei(600, 500)
    res = instances_from_probs(probs_from_instances(lab), InstanceParams(min_size=5), band_rows=band_rows)
    assert res.dtype == np.uint16
    assert res.max() == lab.max()
    assert instance_f1(lab, res, iou=0.9) == 1.0
    assert ((res > 0) == (lab > 0)).all()


def test_touching_nuclei_stay_apart_thanks_to_the_boundary_class():
    lab = np.zeros((60, 80), np.int32)
    rr, cc = disk((30, 25), 15)
    lab[rr, cc] = 1
    rr, cc = disk((30, 52), 15)
    lab[rr, cc] = 2     # overlaps/touches 1
    res = instances_from_probs(probs_from_instances(lab), InstanceParams(min_size=5), band_rows=13)
    assert len(np.unique(res)) == 3


def _merged_interiors():
    """Two overlapping nuclei whose interiors the network joined through a neck (no boundary between)."""
    truth = np.zeros((60, 90), np.int32)
    truth[disk((30, 28), 14)] = 1
    truth[disk((30, 52), 13)] = 2
    p = np.zeros((3,) + truth.shape, np.float32)
    p[1] = truth > 0
    p[0] = 1 - p[1]
    return truth, p


def test_split_h_separates_nuclei_whose_interiors_merged_through_a_neck():
    truth, p = _merged_interiors()
    joined = instances_from_probs(p, InstanceParams(min_size=5), band_rows=256)
    assert joined.max() == 1                       # the default: one connected seed region, one object
    split = instances_from_probs(p, InstanceParams(min_size=5, split_h=1.0), band_rows=256)
    assert split.max() == 2
    assert instance_f1(truth, split, iou=0.8) == 1.0
    # a round nucleus (no neck) is never cut, however small split_h
    one = np.zeros((3, 60, 60), np.float32)
    one[1][disk((30, 30), 15)] = 1
    one[0] = 1 - one[1]
    assert instances_from_probs(one, InstanceParams(min_size=5, split_h=0.5)).max() == 1


@pytest.mark.parametrize("band_rows", [7, 37, 1000])
def test_split_h_never_cuts_round_nuclei_however_the_bands_cut_them(band_rows):
    lab = grid_of_nuclei(400, 300)
    res = instances_from_probs(probs_from_instances(lab), InstanceParams(min_size=5, split_h=1.0), band_rows=band_rows)
    assert res.max() == lab.max() and instance_f1(lab, res, iou=0.9) == 1.0


def test_split_h_is_stored_only_when_used_and_checked():
    assert "split_h" not in InstanceParams().to_dict()      # packages written before it read the same
    d = InstanceParams(split_h=1).to_dict()
    assert d["split_h"] == 1.0 and InstanceParams.from_dict(d) == InstanceParams(split_h=1.0)
    for bad in (-1, float("nan"), "deep"):
        with pytest.raises(ModelPackageError, match="split_h"):
            InstanceParams.from_dict({**d, "split_h": bad})


def test_small_objects_removed_and_ids_sequential():
    lab = grid_of_nuclei(200, 200, spacing=60, r=10)
    lab[190:192, 5:7] = lab.max() + 1          # 4 px speck
    res = instances_from_probs(probs_from_instances(lab), InstanceParams(min_size=20))
    ids = np.unique(res)
    assert ids[-1] == len(ids) - 1            # 0..n without gaps
    assert res[190, 5] == 0


def test_boundary_only_blobs_without_seed_are_dropped():
    p = np.zeros((3, 40, 40), np.float32)
    p[0] = 1
    p[:, 10:13, 10:13] = 0
    p[2, 10:13, 10:13] = 1     # only boundary, no interior
    assert instances_from_probs(p).max() == 0


def test_more_than_65535_objects_switch_to_uint32():
    lab = np.zeros((520, 520), np.int32)
    lab[::2, ::2] = np.arange(1, 260 * 260 + 1).reshape(260, 260)
    p = np.zeros((3,) + lab.shape, np.float32)
    p[0] = lab == 0
    p[1] = lab > 0
    res = instances_from_probs(p, InstanceParams(min_size=1, grow_px=0), band_rows=100)
    assert res.dtype == np.uint32 and res.max() == 260 * 260
    assert label_dtype_for(65535) == np.uint16 and label_dtype_for(65536) == np.uint32


def test_assembler_writes_into_given_output():
    lab = grid_of_nuclei(100, 100)
    out = np.zeros((100, 100), np.uint16)
    asm = InstanceAssembler((100, 100), InstanceParams(min_size=5), out=out)
    p = probs_from_instances(lab)
    asm(0, 0, 50, p[:, :50])
    asm(0, 50, 100, p[:, 50:])
    assert asm.finish() is out and out.max() == lab.max()


def test_entropy_range():
    p = np.array([[1.0, 0.5, 1 / 3], [0.0, 0.5, 1 / 3], [0.0, 0.0, 1 / 3]], np.float32)
    h = entropy(p, dtype=np.float16)                       # what Model.predict's uncertainty map holds
    assert h.dtype == np.float16 and h[0] == 0
    assert h[0] == pytest.approx(0, abs=1e-3) and h[2] == pytest.approx(1, abs=1e-3)
    assert 0 < h[1] < 1


def test_column_chunked_growth_equals_whole_band_growth():
    lab = grid_of_nuclei(300, 700, spacing=37, r=16)          # touching-ish nuclei across chunk edges
    p = probs_from_instances(lab)
    whole = instances_from_probs(p, InstanceParams(min_size=5, grow_px=6), band_rows=64)
    old = InstanceAssembler.GROW_CHUNK
    try:
        InstanceAssembler.GROW_CHUNK = 50                     # many chunk edges through objects
        chunked = instances_from_probs(p, InstanceParams(min_size=5, grow_px=6), band_rows=64)
    finally:
        InstanceAssembler.GROW_CHUNK = old
    np.testing.assert_array_equal(whole, chunked)


# --------------------------------------------------------------------------- keep the largest component


def test_keep_largest_components_drops_islands_of_a_group_only():
    from segloop.core.inference.postprocess import keep_largest_components

    lab = np.zeros((6, 20, 20), np.uint8)
    lab[1:4, 2:9, 2:9] = 2                     # the tumour: edema ...
    lab[2, 4:7, 4:7] = 4                       # ... with an enhancing core, touching it
    lab[5, 15:17, 15:17] = 2                   # a false-positive island far away
    lab[0, 18, 0] = 9                          # a class outside the group stays
    out = keep_largest_components(lab.copy(), [[1, 2, 3, 4]])
    assert out[5, 15:17, 15:17].max() == 0 and out[2, 5, 5] == 4 and out[1, 2, 2] == 2 and out[0, 18, 0] == 9


def test_a_package_that_keeps_the_largest_component_does_so_on_whole_volumes_only(tmp_path):
    from scipy import ndimage as ndi

    from segloop.core.formats.normalization import Percentile
    from segloop.core.formats.package import load_package, save_package
    from segloop.core.inference.model import Model

    from .conftest import tiny_spec, tiny_state

    spec = tiny_spec(name="semantic-lcc", task="semantic", classes=("background", "a", "b"), postprocess={},
                     normalization=Percentile().to_dict(), tile={"size": 32, "overlap": 0.25})
    state = tiny_state(spec, seed=3)
    state["head.weight"] = (state["head.weight"] - state["head.weight"].mean(0, keepdim=True)) * 40
    save_package(tmp_path / "plain", spec, state)
    from dataclasses import replace

    save_package(tmp_path / "lcc", replace(spec, postprocess={"keep_largest": [[1, 2]]}), state)
    vol = np.random.default_rng(0).random((4, 48, 48)).astype(np.float32)
    plain = Model(load_package(tmp_path / "plain"), device="cpu").predict(vol).labels
    lcc = Model(load_package(tmp_path / "lcc"), device="cpu")
    kept = lcc.predict(vol).labels
    assert ndi.label(plain > 0)[1] > 1 and ndi.label(kept > 0)[1] == 1
    assert np.array_equal(kept[kept > 0], plain[kept > 0])            # kept voxels keep their class
    one = lcc.predict(vol, z_range=(1, 2)).labels                     # part of a volume: components are not whole
    assert np.array_equal(one[0], plain[1])
