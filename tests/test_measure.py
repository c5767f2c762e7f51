"""Per-label measurements with known answers: spheres, rectangles, known intensity patterns."""

import csv
import math
import time

import numpy as np
import pytest

from segloop.core.editing.measure import (
    COLUMNS,
    label_ids,
    max_feret_diameter,
    measure_labels,
    write_csv,
)
from segloop.errors import ExportError, InvalidImageError, InvalidLabelsError, SegloopError

SPACING = (2.0, 0.5, 0.5)


def sphere(shape, centre, radius_mm, spacing=SPACING):
    zz, yy, xx = np.ogrid[: shape[0], : shape[1], : shape[2]]
    d2 = sum(((g - c) * s) ** 2 for g, c, s in zip((zz, yy, xx), centre, spacing))
    return d2 <= radius_mm**2


def test_sphere_volume_and_diameter_with_anisotropic_spacing():
    r_vox = 20                                            # in-plane radius in voxels: 10 mm
    lab = np.zeros((16, 64, 64), np.uint8)
    lab[sphere(lab.shape, (8, 32, 32), r_vox * 0.5)] = 3
    (row,) = measure_labels(lab, spacing=SPACING)
    assert list(row) == list(COLUMNS)
    assert row["label"] == 3 and row["voxels"] == int((lab == 3).sum())
    vox_ml = 2.0 * 0.5 * 0.5 / 1000
    assert row["volume_ml"] == pytest.approx(row["voxels"] * vox_ml)
    assert row["volume_ml"] == pytest.approx(4 / 3 * math.pi * r_vox**3 * (0.5 * 0.5 * 0.5) / 1000, rel=0.03)
    assert abs(row["max_diameter_mm"] - 2 * r_vox * 0.5) <= 0.5      # within a voxel
    assert row["diameter_slice"] == 8                                # the equator
    assert math.isnan(row["hu_mean"]) and row["notes"] == ""


def test_rectangle_diagonal_uses_in_plane_spacing():
    lab = np.zeros((3, 50, 80), np.uint16)
    lab[1, 10:40, 5:75] = 7                   # 30 x 70 pixels
    lab[2, 20:25, 20:30] = 7                  # a smaller section elsewhere
    (row,) = measure_labels(lab, spacing=(5.0, 0.8, 0.3))
    assert row["max_diameter_mm"] == pytest.approx(math.hypot(29 * 0.8, 69 * 0.3))   # centre to centre
    assert row["diameter_slice"] == 1
    assert max_feret_diameter(lab[1] == 7, (0.8, 0.3)) == pytest.approx(math.hypot(29 * 0.8, 69 * 0.3))
    # skimage's regionprops would measure in pixels; the spacing changes which diagonal is longest
    tall = np.zeros((40, 40), bool)
    tall[0:30, 0:10] = True
    assert max_feret_diameter(tall, (1.0, 3.0)) == pytest.approx(math.hypot(29, 27))
    assert max_feret_diameter(tall[:1], (1.0, 1.0)) == pytest.approx(9.0)        # one row: collinear
    assert max_feret_diameter(np.zeros((4, 4), bool)) == 0.0


def test_diameter_of_a_rotated_bar_is_its_length():
    yy, xx = np.mgrid[:200, :200]
    t = np.deg2rad(30)
    u = (xx - 100) * np.cos(t) + (yy - 100) * np.sin(t)
    v = -(xx - 100) * np.sin(t) + (yy - 100) * np.cos(t)
    bar = (abs(u) <= 80) & (abs(v) <= 3)
    assert max_feret_diameter(bar, (0.7, 0.7)) == pytest.approx(160 * 0.7, abs=1.5 * 0.7)


def test_hu_statistics_of_a_known_pattern():
    lab = np.zeros((4, 10, 10), np.uint8)
    lab[1:3, 2:6, 2:6] = 1                        # 32 voxels
    lab[0, 0, 0] = 2
    image = np.full(lab.shape, -1000, np.int16)
    image[1:3, 2:6, 2:6] = np.where(np.indices((2, 4, 4)).sum(0) % 2 == 0, 30, 50)   # checkerboard
    image[0, 0, 0] = 77
    rows = measure_labels(lab, spacing=(1, 1, 1), image=image, names=["background", "liver", "tumour"])
    one, two = rows
    assert (one["name"], two["name"]) == ("liver", "tumour")
    assert one["hu_mean"] == pytest.approx(40.0) and one["hu_std"] == pytest.approx(10.0)
    assert (one["hu_min"], one["hu_max"]) == (30.0, 50.0)
    assert (two["hu_mean"], two["hu_std"], two["hu_min"], two["hu_max"]) == (77.0, 0.0, 77.0, 77.0)
    assert two["max_diameter_mm"] == 0.0
    # float64 accumulation: float32 values whose float32 sum overflows to inf
    big = np.full(lab.shape, 3e38, np.float32)
    with np.errstate(over="ignore"):
        assert np.isinf(big[lab == 1].sum())
    assert measure_labels(lab, image=big)[0]["hu_mean"] == pytest.approx(3e38, rel=1e-6)
    assert measure_labels(lab, names={2: "tumour"})[0]["name"] == ""


def test_nan_in_the_image_is_left_out_and_noted():
    lab = np.zeros((2, 6, 6), np.uint8)
    lab[0, :2, :2] = 1
    image = np.zeros(lab.shape, np.float32)
    image[0, :2, :2] = [[10.0, np.nan], [20.0, 30.0]]
    (row,) = measure_labels(lab, image=image)
    assert row["hu_mean"] == pytest.approx(20.0) and row["hu_max"] == 30.0
    assert "1 NaN voxel" in row["notes"]
    image[0, :2, :2] = np.nan
    (row,) = measure_labels(lab, image=image)
    assert math.isnan(row["hu_mean"]) and "4 NaN voxels" in row["notes"]


def test_lazy_dask_image_gives_the_same_numbers():
    da = pytest.importorskip("dask.array")
    lab = np.zeros((8, 32, 32), np.uint16)
    lab[sphere(lab.shape, (4, 16, 16), 5)] = 1
    lab[0:2, 0:4, 0:4] = 9
    image = np.random.default_rng(0).normal(50, 20, lab.shape).astype(np.float32)
    eager = measure_labels(lab, spacing=SPACING, image=image)
    lazy = measure_labels(lab, spacing=SPACING, image=da.from_array(image, chunks=(2, 16, 16)))
    assert eager == lazy and [r["label"] for r in eager] == [1, 9]


def test_empty_labels_give_no_rows_and_ids_are_listed():
    assert measure_labels(np.zeros((3, 5, 5), np.uint8)) == []
    lab = np.zeros((3, 5, 5), np.uint32)
    lab[0, 0, 0], lab[2, 4, 4] = 5, 70000
    assert label_ids(lab) == [5, 70000]


def test_bad_input_is_a_typed_error():
    lab = np.zeros((3, 5, 5), np.uint8)
    with pytest.raises(InvalidLabelsError, match="Z, Y, X"):
        measure_labels(np.zeros((5, 5), np.uint8))
    with pytest.raises(InvalidLabelsError, match="spacing"):
        measure_labels(lab, spacing=(1, 1))
    with pytest.raises(InvalidLabelsError, match="spacing"):
        measure_labels(lab, spacing=(1, -1, 1))
    with pytest.raises(InvalidLabelsError, match="integer"):
        measure_labels(lab.astype(float))
    with pytest.raises(InvalidImageError, match="shape"):
        measure_labels(lab, image=np.zeros((3, 5, 5, 3)))


def test_csv_round_trip(tmp_path):
    lab = np.zeros((4, 10, 10), np.uint8)
    lab[1:3, 2:6, 2:6] = 1
    rows = measure_labels(lab, spacing=SPACING, names={1: "lesion"})
    out = write_csv(rows, tmp_path / "m.csv")
    with open(out, newline="") as fh:
        read = list(csv.DictReader(fh))
    assert list(read[0]) == list(COLUMNS)
    assert read[0]["name"] == "lesion" and int(read[0]["voxels"]) == 32
    assert float(read[0]["volume_ml"]) == pytest.approx(32 * 0.5 / 1000)
    assert read[0]["hu_mean"] == ""                      # NaN as an empty cell
    with pytest.raises(ExportError, match="could not write"):
        write_csv(rows, tmp_path / "missing" / "m.csv")


def test_a_ct_sized_volume_with_five_labels_is_fast():
    lab = np.zeros((300, 512, 512), np.uint16)
    image = np.full(lab.shape, 40, np.int16)
    for i, (z, y, x) in enumerate([(150, 256, 256), (50, 100, 100), (250, 400, 400), (100, 400, 100),
                                   (200, 100, 400)], start=1):
        box = tuple(slice(c - 12 * i, c + 12 * i) for c in (z // 4, y, x))
        lab[(slice(z - 3 * i, z + 3 * i),) + box[1:]] = i
    t = time.perf_counter()
    rows = measure_labels(lab, spacing=(2.5, 0.7, 0.7), image=image)
    elapsed = time.perf_counter() - t
    assert [r["label"] for r in rows] == [1, 2, 3, 4, 5]
    assert all(r["hu_mean"] == 40.0 for r in rows)
    assert elapsed < 2.0, elapsed


def test_lesions_are_measured_one_by_one_largest_first():
    lab = np.zeros((6, 40, 40), np.uint8)
    lab[1:3, 2:6, 2:6] = 2                    # small lesion: 2 * 4 * 4 = 32 voxels
    lab[2:5, 20:30, 20:30] = 2                # big lesion: 3 * 10 * 10 = 300 voxels
    lab[4, 5, 30] = 2                         # diagonal neighbours in 3D join into one part
    lab[5, 6, 31] = 2
    lab[0:2, 30:35, 0:5] = 1
    img = np.zeros(lab.shape, np.float32)
    img[2:5, 20:30, 20:30] = 50.0
    whole = measure_labels(lab, spacing=(2.0, 1.0, 1.0), image=img)
    assert [(r["label"], r["lesion"]) for r in whole] == [(1, 0), (2, 0)]
    assert whole[1]["voxels"] == 334
    rows = measure_labels(lab, spacing=(2.0, 1.0, 1.0), image=img, lesions=True)
    assert [(r["label"], r["lesion"], r["voxels"]) for r in rows] == [(1, 1, 50), (2, 1, 300), (2, 2, 32),
                                                                        (2, 3, 2)]
    big = rows[1]
    assert big["volume_ml"] == pytest.approx(300 * 2 / 1000) and big["hu_mean"] == 50.0
    assert big["max_diameter_mm"] == pytest.approx(np.hypot(9, 9)) and big["diameter_slice"] == 2
    assert rows[2]["hu_mean"] == 0.0 and rows[2]["diameter_slice"] == 1


def test_a_volume_stored_with_its_axes_in_another_order_is_measured_on_its_axial_slices():
    """One rule for "axial" (geometry.axial_axis): the same volume stored (Z, Y, X) or with the
    head-foot axis last and an axis flipped gives the same rows through measure_volume."""
    from pathlib import Path

    from segloop.core.editing.measure import measure_volume
    from segloop.core.formats.io.geometry import (
        Reorientation,
        VolumeInfo,
        axial_axis,
        lps_affine,
        spacing_of,
    )

    sp = (2.0, 0.5, 0.8)                                       # dz, dy, dx (mm)
    disp = np.zeros((30, 40, 50), np.uint8)
    disp[5:25, 10:20, 10:30] = 1                               # tall along S: 20 slices of 10 x 20 voxels
    disp[2:4, 30:38, 5:45] = 2
    disp[0, 0, 0] = 3                                          # a marker voxel to check the affine with
    d_aff = lps_affine(sp, (10.0, -20.0, 30.0))
    reo = Reorientation(axes=(1, 2, 0), flips=(2,))            # stored: (Y, X flipped, Z)
    stored = reo.from_display(disp)
    s_aff = d_aff @ np.linalg.inv(reo.index_matrix(disp.shape))
    where = np.argwhere(stored == 3)[0]
    np.testing.assert_allclose(s_aff @ [*where, 1], d_aff @ [0, 0, 0, 1])     # both affines place it alike
    info_d = VolumeInfo(path=Path("d"), format="", shape=disp.shape, spacing=sp, affine=d_aff)
    info_s = VolumeInfo(path=Path("s"), format="", shape=stored.shape, spacing=spacing_of(s_aff), affine=s_aff)
    assert (axial_axis(info_d), axial_axis(info_s), axial_axis(s_aff), axial_axis(None)) == (0, 2, 2, 0)

    want = measure_volume(disp, info_d)
    got = measure_volume(stored, info_s)
    assert want[0]["max_diameter_mm"] == pytest.approx(math.hypot(9 * 0.5, 19 * 0.8))
    for a, b in zip(want, got, strict=True):
        assert {k: a[k] for k in ("label", "voxels", "diameter_slice")} == {k: b[k] for k in ("label", "voxels",
                                                                                             "diameter_slice")}
        assert a["volume_ml"] == pytest.approx(b["volume_ml"]) and a["max_diameter_mm"] == pytest.approx(
            b["max_diameter_mm"])
    # taking the first stored axis as axial measures a sagittal section instead
    assert measure_labels(stored, spacing=info_s.spacing)[0]["max_diameter_mm"] != pytest.approx(
        want[0]["max_diameter_mm"])
    with pytest.raises(SegloopError, match="affine"):
        measure_volume(disp, np.full((4, 4), np.nan))
