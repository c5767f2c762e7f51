"""Reading NRRD volumes (geometry, encodings, refusals) and label volumes (NIfTI, NRRD, Slicer .seg.nrrd)."""

from __future__ import annotations

import gzip
import threading

import numpy as np
import pytest

nib = pytest.importorskip("nibabel")
nrrd = pytest.importorskip("nrrd")

from nibabel.orientations import aff2axcodes  # noqa: E402

from segloop.core.formats.io import (  # noqa: E402
    read_label_volume,
    read_volume,
    write_nifti_labels,
    write_seg_nrrd,
)
from segloop.errors import Cancelled, ImageReadError, InvalidLabelsError, VolumeReadError  # noqa: E402

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def _rot(deg: float, axis: int = 2) -> np.ndarray:
    t = np.radians(deg)
    c, s = np.cos(t), np.sin(t)
    a, b = [i for i in range(3) if i != axis]
    r = np.eye(3)
    r[a, a], r[a, b], r[b, a], r[b, b] = c, -s, s, c
    return r


def _write(path, data, *, space="left-posterior-superior", directions=None, origin=(10.0, -20.0, 30.0),
           encoding="gzip", **extra):
    hdr = {"space": space, "encoding": encoding, "space origin": np.asarray(origin, float),
           "kinds": ["domain"] * data.ndim,
           "space directions": np.diag([0.7, 0.8, 2.5]) if directions is None else np.asarray(directions, float)}
    hdr.update(extra)
    nrrd.write(str(path), data, hdr, index_order="F")
    return path


def _data(shape=(9, 10, 11), dtype=np.int16, seed=0):
    return np.random.default_rng(seed).integers(-1000, 1000, shape).astype(dtype)


def _check_world(vol, info, data, ras_of_ijk):
    """Every probed file voxel (i, j, k) is at the header's world point and holds the same value."""
    m = info.to_source.index_matrix(vol.shape)
    minv = np.linalg.inv(m)
    rng = np.random.default_rng(3)
    for ijk in zip(*(rng.integers(0, n, 10) for n in data.shape)):
        d = (minv @ [*ijk, 1])[:3].round().astype(int)
        np.testing.assert_allclose(info.affine @ [*d, 1], [*ras_of_ijk(ijk), 1], atol=1e-6)
        assert vol[tuple(d)] == data[ijk]


# -- images -------------------------------------------------------------------------------------

SPACES = {
    "LPS axial": ("left-posterior-superior", np.diag([0.7, 0.8, 2.5]), LPS_TO_RAS),
    "LPS flipped y": ("left-posterior-superior", np.diag([0.7, -0.8, 2.5]), LPS_TO_RAS),
    "RAS": ("right-anterior-superior", np.diag([0.7, 0.8, 2.5]), np.eye(3)),
    "RAS coronal": ("RAS", np.array([[0.7, 0, 0], [0, 0, -0.8], [0, 2.5, 0]]), np.eye(3)),
    "LAS": ("left-anterior-superior", np.diag([0.7, 0.8, 2.5]), np.diag([-1.0, 1.0, 1.0])),
}


@pytest.mark.parametrize("name", list(SPACES))
def test_nrrd_image_geometry_in_lps_ras_and_las_spaces(tmp_path, name):
    space, dirs, to_ras = SPACES[name]
    origin = np.array([10.0, -20.0, 30.0])
    data = _data()
    path = _write(tmp_path / "img.nrrd", data, space=space, directions=dirs, origin=origin)
    vol, info = read_volume(path)
    assert info.format == "nrrd" and vol.shape == info.shape and vol.dtype == np.int16
    assert aff2axcodes(info.affine) == ("S", "P", "L") and not info.oblique and not info.warnings
    _check_world(vol, info, data, lambda ijk: to_ras @ (origin + dirs.T @ np.asarray(ijk, float)))
    np.testing.assert_array_equal(info.to_source.from_display(vol), data)
    assert info.extra["likely_ct"] is True and info.modality == ""
    assert sorted(info.spacing) == pytest.approx([0.7, 0.8, 2.5])


def test_oblique_nrrd_keeps_the_exact_affine_and_says_so(tmp_path):
    dirs = (_rot(20, axis=2) @ _rot(10, axis=0) @ np.diag([0.7, 0.8, 2.5])).T      # rows: axis vectors
    origin = np.array([-5.0, 7.0, 12.5])
    data = _data()
    path = _write(tmp_path / "obl.nrrd", data, directions=dirs, origin=origin)
    vol, info = read_volume(path)
    assert info.oblique and any("oblique" in w for w in info.warnings)
    _check_world(vol, info, data, lambda ijk: LPS_TO_RAS @ (origin + dirs.T @ np.asarray(ijk, float)))
    np.testing.assert_allclose(info.source_affine[:3, :3], LPS_TO_RAS @ dirs.T)


@pytest.mark.parametrize("encoding", ["raw", "gzip", "bzip2", "ascii"])
def test_encodings_give_the_same_voxels(tmp_path, encoding):
    data = _data(dtype=np.int16)
    vol, info = read_volume(_write(tmp_path / f"{encoding}.nrrd", data, encoding=encoding))
    np.testing.assert_array_equal(info.to_source.from_display(vol), data)
    assert info.extra["lazy"] is (encoding == "raw")


def test_raw_nrrd_is_memory_mapped_unless_lazy_false(tmp_path):
    data = _data(dtype=np.float32)
    path = _write(tmp_path / "raw.nrrd", data, encoding="raw", endian="big")
    vol, info = read_volume(path)
    assert info.extra["lazy"] and isinstance(vol, np.memmap)
    np.testing.assert_array_equal(info.to_source.from_display(vol), data)
    vol2, info2 = read_volume(path, lazy=False)
    assert not info2.extra["lazy"] and not isinstance(vol2, np.memmap)
    np.testing.assert_array_equal(vol2, vol)


def test_detached_header_reads_its_data_file(tmp_path):
    data = _data(dtype=np.uint16)
    nrrd.write(str(tmp_path / "vol.nhdr"), data, {"space": "left-posterior-superior", "encoding": "gzip",
                                                  "space directions": np.diag([1.0, 1.0, 3.0]),
                                                  "space origin": np.zeros(3)}, detached_header=True)
    assert (tmp_path / "vol.raw.gz").exists()
    vol, info = read_volume(tmp_path / "vol.nhdr")
    np.testing.assert_array_equal(info.to_source.from_display(vol), data)
    (tmp_path / "vol.raw.gz").unlink()
    with pytest.raises(ImageReadError, match="data file"):
        read_volume(tmp_path / "vol.nhdr")


@pytest.mark.parametrize("encoding", ["raw", "gzip"])
def test_truncated_nrrd_is_refused(tmp_path, encoding):
    path = _write(tmp_path / "t.nrrd", _data(shape=(40, 40, 20)), encoding=encoding)
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) - max(200, len(blob) // 3)])
    with pytest.raises(ImageReadError, match="incomplete|corrupt|truncated"):
        read_volume(path)


def test_a_header_promising_more_than_gzip_can_hold_is_refused_before_allocating(tmp_path):
    path = tmp_path / "bomb.nrrd"
    path.write_bytes(b"NRRD0004\ntype: float\ndimension: 3\nsizes: 100000 100000 1000\nencoding: gzip\n"
                     b"endian: little\n\n" + gzip.compress(b"\0" * 100))
    with pytest.raises(ImageReadError, match="cannot hold"):
        read_volume(path)


@pytest.mark.parametrize("kind,shape", [("vector", (3, 5, 6, 7)), ("RGB-color", (3, 5, 6, 7)),
                                        ("list", (2, 5, 6, 7))])
def test_vector_colour_and_multi_volume_nrrd_are_refused(tmp_path, kind, shape):
    data = np.zeros(shape, np.uint8)
    dirs = np.vstack([np.full(3, np.nan), np.eye(3)])
    path = _write(tmp_path / "v.nrrd", data, directions=dirs, kinds=[kind, "domain", "domain", "domain"])
    with pytest.raises(VolumeReadError, match=f"non-spatial axes.*{kind}"):
        read_volume(path)
    with pytest.raises(VolumeReadError, match="multi-volume"):
        read_label_volume(path)


def test_time_series_nrrd_is_refused(tmp_path):
    path = tmp_path / "t.nrrd"
    nrrd.write(str(path), np.zeros((4, 5, 6, 2), np.int16),
               {"space": "left-posterior-superior-time", "kinds": ["domain"] * 4, "encoding": "raw"})
    with pytest.raises(VolumeReadError, match="4D"):
        read_volume(path)


def test_a_singleton_extra_axis_is_dropped(tmp_path):
    data = _data(shape=(1, 5, 6, 7))
    dirs = np.vstack([np.full(3, np.nan), np.diag([1.0, 2.0, 3.0])])
    vol, info = read_volume(_write(tmp_path / "s.nrrd", data, directions=dirs,
                                   kinds=["list", "domain", "domain", "domain"]))
    assert vol.shape == (7, 6, 5)
    np.testing.assert_array_equal(info.to_source.from_display(vol), data[0])


def test_nrrd_without_space_directions_uses_spacings_and_warns(tmp_path):
    path = tmp_path / "plain.nrrd"
    data = _data(shape=(4, 5, 6))
    nrrd.write(str(path), data, {"spacings": np.array([0.5, 0.6, 2.0]), "encoding": "raw"})
    vol, info = read_volume(path)
    assert info.spacing == pytest.approx((2.0, 0.6, 0.5))
    assert any("no 'space directions'" in w for w in info.warnings)
    np.testing.assert_array_equal(vol, data.transpose(2, 1, 0))


def test_reading_can_be_cancelled(tmp_path):
    path = _write(tmp_path / "c.nrrd", _data())
    stop = threading.Event()
    stop.set()
    with pytest.raises(Cancelled):
        read_volume(path, cancel=stop)
    seen = []
    read_volume(path, progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (1, 1)


# -- label volumes ------------------------------------------------------------------------------

def _blob(shape, centre, r=2):
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    return (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= r * r


def _labels(shape):
    lab = np.zeros(shape, np.uint16)
    lab[_blob(shape, (3, 4, 5))] = 1
    lab[_blob(shape, (6, 6, 3))] = 7
    lab[_blob(shape, (2, 8, 8), r=1)] = 300
    return lab


@pytest.fixture(params=["nifti", "nrrd-ras", "nrrd-oblique"])
def image(request, tmp_path):
    """An image file, read: (volume, info)."""
    data = _data(shape=(11, 12, 9))
    if request.param == "nifti":
        aff = np.array([[0, 0, -2.5, 4.0], [0.7, 0, 0, -3.0], [0, 0.8, 0, 9.0], [0, 0, 0, 1]])
        nib.save(nib.Nifti1Image(data, aff), tmp_path / "img.nii.gz")
        return read_volume(tmp_path / "img.nii.gz")
    dirs = np.diag([-0.7, 0.8, 2.5]) if request.param == "nrrd-ras" else (_rot(15) @ np.diag([0.7, 0.8, 2.5])).T
    space = "RAS" if request.param == "nrrd-ras" else "left-posterior-superior"
    return read_volume(_write(tmp_path / "img.nrrd", data, space=space, directions=dirs))


def test_seg_nrrd_round_trip_gives_the_same_labels_and_names(tmp_path, image):
    vol, info = image
    lab = _labels(vol.shape)
    names = {1: "liver", 7: "tumour", 300: "vessel", 9: "empty"}
    out = write_seg_nrrd(tmp_path / "s.seg.nrrd", lab, info, names=names)
    back, got_names, linfo = read_label_volume(out, info)
    np.testing.assert_array_equal(back, lab)
    assert got_names == names and back.dtype == np.uint16 and linfo.shape == info.shape
    np.testing.assert_allclose(linfo.affine, info.affine, atol=1e-6)
    assert linfo.extra["segmentation"] and not linfo.warnings
    # without the image: the file's own grid, which is the image's
    alone, names2, ainfo = read_label_volume(out)
    np.testing.assert_array_equal(alone, lab)
    np.testing.assert_allclose(ainfo.affine, info.affine, atol=1e-6)
    assert names2 == names


def test_nifti_labels_round_trip(tmp_path, image):
    vol, info = image
    lab = _labels(vol.shape)
    out = write_nifti_labels(tmp_path / "l.nii.gz", lab, info)
    back, names, linfo = read_label_volume(out, info)
    np.testing.assert_array_equal(back, lab)
    assert names == {} and linfo.format == "nifti" and linfo.path == out
    np.testing.assert_allclose(linfo.affine, info.affine, atol=1e-5)


def test_plain_nrrd_labels_and_a_flipped_grid_are_put_on_the_image(tmp_path):
    data = _data(shape=(8, 9, 10))
    dirs = np.diag([0.7, 0.8, 2.5])
    vol, info = read_volume(_write(tmp_path / "img.nrrd", data, directions=dirs, origin=(1.0, 2.0, 3.0)))
    lab_file = np.zeros(data.shape, np.uint8)
    lab_file[2:4, 3:6, 1:3] = 5
    # the same grid stored with i reversed and a moved origin: a pure axis flip
    flipped_origin = np.array([1.0 + 7 * 0.7, 2.0, 3.0])
    path = _write(tmp_path / "lab.nrrd", lab_file[::-1].copy(), directions=np.diag([-0.7, 0.8, 2.5]),
                  origin=flipped_origin)
    back, names, linfo = read_label_volume(path, info)
    np.testing.assert_array_equal(info.to_source.from_display(back), lab_file)
    assert names == {} and linfo.format == "nrrd"


def test_cropped_seg_nrrd_is_placed_by_its_extent_offset(tmp_path):
    data = _data(shape=(20, 16, 12))
    dirs, origin = np.diag([0.7, 0.8, 2.5]), np.array([1.0, 2.0, 3.0])
    vol, info = read_volume(_write(tmp_path / "img.nrrd", data, directions=dirs, origin=origin))
    full = np.zeros(data.shape, np.uint8)                 # file order (i, j, k)
    full[5:9, 4:7, 2:5] = 1
    full[7:11, 6:8, 4:6] = 2
    off = np.array([4, 3, 1])
    crop = full[4:12, 3:9, 1:7].copy()
    seg = {f"Segment{n}_{k}": v for n, (val, nm) in enumerate([(1, "nodule"), (2, "vessel")])
           for k, v in {"ID": f"Segment_{val}", "Name": nm, "LabelValue": str(val), "Layer": "0",
                        "Extent": "0 7 0 5 0 5"}.items()}
    seg["Segmentation_ReferenceImageExtentOffset"] = " ".join(map(str, off))
    path = _write(tmp_path / "crop.seg.nrrd", crop, directions=dirs, origin=origin + dirs.T @ off, **seg)
    back, names, linfo = read_label_volume(path, info)
    assert names == {1: "nodule", 2: "vessel"} and back.shape == info.shape
    np.testing.assert_array_equal(info.to_source.from_display(back), full)
    assert linfo.extra["offset_in_reference"] is not None
    assert not any("ReferenceImageExtentOffset" in w for w in linfo.warnings)
    # an offset key that disagrees with the geometry: the geometry wins, with a warning
    seg["Segmentation_ReferenceImageExtentOffset"] = "0 0 0"
    path2 = _write(tmp_path / "bad.seg.nrrd", crop, directions=dirs, origin=origin + dirs.T @ off, **seg)
    back2, _, linfo2 = read_label_volume(path2, info)
    np.testing.assert_array_equal(back2, back)
    assert any("ReferenceImageExtentOffset" in w for w in linfo2.warnings)


def test_labels_on_another_grid_are_refused(tmp_path):
    data = _data(shape=(8, 9, 10))
    dirs = np.diag([0.7, 0.8, 2.5])
    vol, info = read_volume(_write(tmp_path / "img.nrrd", data, directions=dirs, origin=(0.0, 0.0, 0.0)))
    lab = np.zeros((8, 9, 10), np.uint8)
    cases = {"half voxel": dict(directions=dirs, origin=(0.35, 0.0, 0.0)),
             "spacing": dict(directions=np.diag([0.35, 0.8, 2.5])),
             "rotated": dict(directions=(_rot(10) @ dirs).T)}
    for name, kw in cases.items():
        kw.setdefault("origin", (0.0, 0.0, 0.0))
        path = _write(tmp_path / f"{name}.nrrd", lab, **kw)
        with pytest.raises(VolumeReadError, match="label grid does not match the image"):
            read_label_volume(path, info)


def test_multi_layer_seg_nrrd_is_flattened_smaller_on_top(tmp_path):
    shape = (10, 10, 6)
    big = np.zeros(shape, np.uint8)
    big[1:9, 1:9, 1:5] = 1                                    # layer 0: organ, value 1
    small = np.zeros(shape, np.uint8)
    small[3:5, 3:5, 2:4] = 1                                  # layer 1: lesion inside it, value 1 too
    small[0, 0, 0] = 1
    layers = np.stack([big, small])                          # (layer, i, j, k)
    dirs = np.vstack([np.full(3, np.nan), np.diag([1.0, 1.0, 2.0])])
    seg = {"Segment0_ID": "organ", "Segment0_Name": "organ", "Segment0_LabelValue": "1", "Segment0_Layer": "0",
           "Segment0_Extent": "1 8 1 8 1 4",
           "Segment1_ID": "lesion", "Segment1_Name": "lesion", "Segment1_LabelValue": "1", "Segment1_Layer": "1",
           "Segment1_Extent": "0 4 0 4 0 3",
           "Segmentation_ReferenceImageExtentOffset": "0 0 0"}
    path = _write(tmp_path / "ml.seg.nrrd", layers, directions=dirs, origin=(0.0, 0.0, 0.0),
                  kinds=["list", "domain", "domain", "domain"], **seg)
    lab, names, info = read_label_volume(path)
    src = info.to_source.from_display(lab)
    assert names == {1: "organ", 2: "lesion"}
    expected = np.where(small == 1, 2, np.where(big == 1, 1, 0))
    np.testing.assert_array_equal(src, expected)
    assert any("more than one segment" in w for w in info.warnings)
    assert any("numbered" in w for w in info.warnings)


@pytest.mark.parametrize("values,match", [(np.array([0.0, 1.5]), "non-integer"), (np.array([0, -3]), "negative"),
                                          (np.array([0.0, np.nan]), "NaN")])
def test_bad_label_values_are_refused(tmp_path, values, match):
    data = np.resize(values, (4, 5, 6)).astype(values.dtype if values.dtype.kind == "f" else np.int16)
    with pytest.raises(InvalidLabelsError, match=match):
        read_label_volume(_write(tmp_path / "bad.nrrd", data))
    nib.save(nib.Nifti1Image(data.astype(np.float32 if data.dtype.kind == "f" else np.int16), np.eye(4)),
             tmp_path / "bad.nii.gz")
    with pytest.raises(InvalidLabelsError, match=match):
        read_label_volume(tmp_path / "bad.nii.gz")


def test_float_labels_with_whole_values_are_accepted(tmp_path):
    data = np.zeros((4, 5, 6), np.float32)
    data[1:3, 1:3, 1:3] = 4.0
    lab, _, _ = read_label_volume(_write(tmp_path / "f.nrrd", data))
    assert lab.dtype == np.uint8 and set(np.unique(lab)) == {0, 4}


def test_other_label_formats_are_refused(tmp_path):
    (tmp_path / "x.png").write_bytes(b"not really")
    with pytest.raises(VolumeReadError, match="not a label volume format"):
        read_label_volume(tmp_path / "x.png")
    with pytest.raises(ImageReadError, match="no such file"):
        read_label_volume(tmp_path / "missing.seg.nrrd")
