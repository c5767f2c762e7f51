"""Objects as QuPath GeoJSON and per-object CSV (segloop.core.formats.io.geojson), on real images:
labels of the BBBC007 nuclei shipped in segloop/data, and scikit-image's IHC image for colour."""

from __future__ import annotations

import csv
import json
import math
import os
import uuid

import numpy as np
import pytest
from skimage import filters, measure
from skimage.color import rgb2hed

from segloop.core.formats.io.geojson import (
    CSV_COLUMNS,
    label_features,
    object_table,
    read_geojson,
    write_geojson,
    write_object_csv,
)
from segloop.errors import (
    ImageReadError,
    InvalidImageError,
    InvalidLabelsError,
    InvalidPixelSizeError,
    WriteError,
)


@pytest.fixture(scope="module")
def nuclei_labels(nuclei_image):
    image = nuclei_image                                     # BBBC007 A9 p10d, from conftest
    labels = measure.label(image > filters.threshold_otsu(image))
    assert labels.max() > 50
    return labels


@pytest.fixture(scope="module")
def rgb(nuclei_labels):
    from skimage import data

    h, w = nuclei_labels.shape
    return data.immunohistochemistry()[:h, :w]


def rings_of(feature):
    g = feature["geometry"]
    return [g["coordinates"][0]] if g["type"] == "Polygon" else [p[0] for p in g["coordinates"]]


def shoelace(ring) -> float:
    a = np.asarray(ring, float)
    x, y = a[:, 0], a[:, 1]
    return 0.5 * float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]))


def self_intersects(ring) -> bool:
    """Whether any two non-adjacent edges of a closed ring touch or cross (exact for our half-pixel vertices)."""
    a = np.asarray(ring, float)
    p, q = a[:-1], a[1:]
    n = len(p)

    def orient(a_, b_, c_):
        return np.sign((b_[..., 0] - a_[..., 0]) * (c_[..., 1] - a_[..., 1])
                       - (b_[..., 1] - a_[..., 1]) * (c_[..., 0] - a_[..., 0]))

    i, j = np.triu_indices(n, k=2)
    keep = ~((i == 0) & (j == n - 1))
    i, j = i[keep], j[keep]
    p1, q1, p2, q2 = p[i], q[i], p[j], q[j]
    o1, o2, o3, o4 = orient(p1, q1, p2), orient(p1, q1, q2), orient(p2, q2, p1), orient(p2, q2, q1)
    crossing = (o1 * o2 < 0) & (o3 * o4 < 0)

    def on_segment(a_, b_, c_, o):
        inside = ((np.minimum(a_[:, 0], b_[:, 0]) <= c_[:, 0]) & (c_[:, 0] <= np.maximum(a_[:, 0], b_[:, 0]))
                  & (np.minimum(a_[:, 1], b_[:, 1]) <= c_[:, 1]) & (c_[:, 1] <= np.maximum(a_[:, 1], b_[:, 1])))
        return (o == 0) & inside

    touching = (on_segment(p1, q1, p2, o1) | on_segment(p1, q1, q2, o2)
                | on_segment(p2, q2, p1, o3) | on_segment(p2, q2, q1, o4))
    return bool((crossing | touching).any())


# ----------------------------------------------------------------------------- features


def test_one_closed_polygon_per_object_in_qupath_shape(nuclei_labels):
    features = label_features(nuclei_labels)
    ids = np.unique(nuclei_labels)[1:]
    assert len(features) == len(ids)
    assert [f["properties"]["segloop_id"] for f in features] == ids.tolist()
    assert len({f["id"] for f in features}) == len(features)
    for f in features:
        assert f["type"] == "Feature"
        uuid.UUID(f["id"])                                   # QuPath reads ids as UUIDs
        assert f["geometry"]["type"] == "Polygon"            # label() gives one 8-connected part per id
        p = f["properties"]
        assert p["objectType"] == "detection"
        assert p["classification"]["name"] == "Nucleus" and len(p["classification"]["color"]) == 3
        for ring in rings_of(f):
            assert len(ring) >= 4 and ring[0] == ring[-1]
            assert shoelace(ring) > 0                        # exterior counter-clockwise in (x, y), RFC 7946
    assert label_features(nuclei_labels)[0]["id"] == features[0]["id"]   # ids are reproducible


def test_polygon_area_matches_pixel_area(nuclei_labels):
    features = label_features(nuclei_labels)
    checked = 0
    for f in features:
        area_px = f["properties"]["measurements"]["Area px^2"]
        assert area_px == int((nuclei_labels == f["properties"]["segloop_id"]).sum())
        if area_px > 30:
            assert shoelace(rings_of(f)[0]) == pytest.approx(area_px, rel=0.03)
            checked += 1
    assert checked > 50


def test_polygons_follow_pixel_edges_and_offset_is_added():
    labels = np.zeros((20, 30), np.uint16)
    labels[5:8, 10:14] = 7                                   # rows 5-7, columns 10-13
    (f,) = label_features(labels, offset=(1000, 2000))
    ring = np.asarray(rings_of(f)[0])
    # pixel (r, c) covers [c, c + 1] x [r, r + 1]; the block starts at x0 = 2000, y0 = 1000
    assert ring[:, 0].min() == 2010 and ring[:, 0].max() == 2014
    assert ring[:, 1].min() == 1005 and ring[:, 1].max() == 1008
    m = f["properties"]["measurements"]
    assert (m["Centroid X px"], m["Centroid Y px"]) == (2012.0, 1006.5)
    assert shoelace(ring) == pytest.approx(12 - 0.5)         # marching squares cuts each corner by 1/8 px
    assert len(ring) == 9                                    # collinear vertices dropped: 4 sides, 4 cut corners


def test_offset_shifts_every_coordinate(nuclei_labels):
    plain = label_features(nuclei_labels)
    moved = label_features(nuclei_labels, offset=(4096, 8192))
    for a, b in zip(plain, moved):
        ra, rb = np.asarray(rings_of(a)[0]), np.asarray(rings_of(b)[0])
        np.testing.assert_array_equal(rb, ra + [8192, 4096])
        ma, mb = a["properties"]["measurements"], b["properties"]["measurements"]
        assert mb["Centroid X px"] == pytest.approx(ma["Centroid X px"] + 8192)
        assert mb["Centroid Y px"] == pytest.approx(ma["Centroid Y px"] + 4096)
        assert mb["Area px^2"] == ma["Area px^2"]


def test_keep_selects_objects_by_region(nuclei_labels):
    core = (100, 100, 350, 350)                              # rows 100-349, columns 100-349

    def in_core(region):
        r, c = region.centroid
        return core[0] <= r < core[2] and core[1] <= c < core[3]

    expected = [r.label for r in measure.regionprops(nuclei_labels) if in_core(r)]
    features = label_features(nuclei_labels, offset=(50, 60), keep=in_core)
    assert 0 < len(expected) < nuclei_labels.max()
    assert [f["properties"]["segloop_id"] for f in features] == expected
    assert [row["id"] for row in object_table(nuclei_labels, keep=in_core)] == expected


def test_measurements_in_micrometres(nuclei_labels):
    sy, sx = 0.25, 0.5
    features = label_features(nuclei_labels, pixel_size=(sy, sx), offset=(10, 20))
    square = label_features(nuclei_labels, pixel_size=0.5)
    for f, g in zip(features, square):
        m = f["properties"]["measurements"]
        assert m["Area µm^2"] == pytest.approx(m["Area px^2"] * sy * sx)
        assert m["Centroid X µm"] == pytest.approx(m["Centroid X px"] * sx)
        assert m["Centroid Y µm"] == pytest.approx(m["Centroid Y px"] * sy)
        ring = np.asarray(rings_of(f)[0])
        scaled = np.hypot(np.diff(ring[:, 0]) * sx, np.diff(ring[:, 1]) * sy).sum()
        assert m["Perimeter µm"] == pytest.approx(scaled)   # anisotropic pixels: the polygon's length in µm
        gm = g["properties"]["measurements"]
        assert gm["Perimeter µm"] == pytest.approx(gm["Perimeter px"] * 0.5)
    without = label_features(nuclei_labels)[0]["properties"]["measurements"]
    assert not any("µm" in k for k in without)
    with pytest.raises(InvalidPixelSizeError):
        label_features(nuclei_labels, pixel_size=(0, 0.5))


def test_rgb_image_gives_channel_means_and_stain_densities(nuclei_labels, rgb):
    features = label_features(nuclei_labels, image=rgb)
    hed = rgb2hed(rgb)
    for f in features[::10]:
        m = f["properties"]["measurements"]
        mask = nuclei_labels == f["properties"]["segloop_id"]
        np.testing.assert_allclose([m["Mean R"], m["Mean G"], m["Mean B"]], rgb[mask].mean(axis=0))
        assert m["Hematoxylin OD mean"] == pytest.approx(hed[mask, 0].mean())
        assert m["Eosin OD mean"] == pytest.approx(hed[mask, 1].mean())
    assert any(f["properties"]["measurements"]["Hematoxylin OD mean"] > 0 for f in features)

    grey = label_features(nuclei_labels, image=rgb[..., 0])[0]["properties"]["measurements"]
    assert "Mean grey" in grey and "Hematoxylin OD mean" not in grey and "Mean R" not in grey


def test_lazy_inputs_give_the_same_features(nuclei_labels, rgb):
    da = pytest.importorskip("dask.array", reason="dask is in the 'distributed' extra")
    lazy = label_features(da.from_array(nuclei_labels, chunks=128), image=da.from_array(rgb, chunks=(128, 128, 3)))
    assert lazy == label_features(nuclei_labels, image=rgb)


def test_holes_are_ignored_and_split_ids_become_multipolygons():
    labels = np.zeros((40, 40), np.uint8)
    labels[2:12, 2:12] = 1
    labels[5:8, 5:8] = 0                                     # a hole in object 1
    labels[20:30, 20:35] = 2                                 # object 2 in two parts, larger first
    labels[2:6, 30:34] = 2
    f1, f2 = label_features(labels)
    assert f1["geometry"]["type"] == "Polygon" and len(f1["geometry"]["coordinates"]) == 1
    assert shoelace(rings_of(f1)[0]) == pytest.approx(100 - 0.5)   # filled outline, 91 pixels measured
    assert f1["properties"]["measurements"]["Area px^2"] == 91
    assert f2["geometry"]["type"] == "MultiPolygon"
    areas = [shoelace(r) for r in rings_of(f2)]
    assert areas == pytest.approx([150 - 0.5, 16 - 0.5])


def test_every_polygon_is_valid(nuclei_labels):
    features = label_features(nuclei_labels)
    for f in features:
        for ring in rings_of(f):
            assert not self_intersects(ring), f["properties"]["segloop_id"]
    try:
        import shapely.geometry
    except ImportError:
        return      # shapely is not a segloop dependency; the exact self-intersection check above covers validity
    for f in features:
        assert shapely.geometry.shape(f["geometry"]).is_valid


def test_bad_inputs_raise_typed_errors(nuclei_labels, rgb):
    with pytest.raises(InvalidLabelsError):
        label_features(nuclei_labels.astype(float))
    with pytest.raises(InvalidLabelsError):
        label_features(nuclei_labels[None])
    with pytest.raises(InvalidLabelsError):
        object_table(-nuclei_labels.astype(np.int32))
    with pytest.raises(InvalidImageError):
        label_features(nuclei_labels, image=rgb[:100])
    with pytest.raises(InvalidImageError):
        label_features(nuclei_labels, image=np.dstack([rgb, rgb[..., :1]]))


# ----------------------------------------------------------------------------- files


def test_geojson_round_trip_and_top_level_shape(tmp_path, nuclei_labels, rgb):
    features = label_features(nuclei_labels, offset=(512, 1024), pixel_size=0.25, image=rgb)
    path = write_geojson(tmp_path / "objects.geojson", iter(features))   # a generator is streamed
    with open(path, encoding="utf-8") as f:
        top = json.load(f)
    assert set(top) == {"type", "features"} and top["type"] == "FeatureCollection"
    assert isinstance(top["features"], list) and len(top["features"]) == len(features)
    back = read_geojson(path)
    assert back == json.loads(json.dumps(features))
    assert [e for e in os.listdir(tmp_path)] == ["objects.geojson"]
    assert write_geojson(tmp_path / "empty.geojson", []) and read_geojson(tmp_path / "empty.geojson") == []


@pytest.mark.parametrize("text, what", [
    ("{not json", "JSON"),
    ('{"type": "Topology"}', "FeatureCollection"),
    ('{"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": {"type": "Polygon", '
     '"coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1]]]}, "properties": {}}]}', "not closed"),
    ('{"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": {"type": "Polygon", '
     '"coordinates": [[[0, 0], [1, 0], [0, 0]]]}, "properties": {}}]}', "at least 4"),
    ('{"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": {"type": "Blob"}}]}', "Blob"),
    ('{"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": {"type": "Polygon", '
     '"coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]}, "properties": 3}]}', "properties"),
])
def test_read_geojson_rejects_malformed_files(tmp_path, text, what):
    path = tmp_path / "bad.geojson"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ImageReadError, match=what):
        read_geojson(path)


def test_read_geojson_missing_file(tmp_path):
    with pytest.raises(ImageReadError, match="no such"):
        read_geojson(tmp_path / "absent.geojson")


def test_failed_writes_leave_nothing(tmp_path, nuclei_labels):
    # A read-only folder does not stop root (these tests run as root in CI containers), so the
    # writes are made to fail in ways that hold for every user: the destination is a folder, and a
    # feature that is not JSON arrives after others were already streamed out.
    features = label_features(nuclei_labels)
    folder = tmp_path / "objects.geojson"
    folder.mkdir()
    with pytest.raises(WriteError, match="objects.geojson"):
        write_geojson(folder, features)
    with pytest.raises(WriteError):
        write_object_csv(folder, object_table(nuclei_labels))
    assert os.listdir(tmp_path) == ["objects.geojson"] and os.listdir(folder) == []

    good = write_geojson(tmp_path / "good.geojson", features)
    before = good.read_bytes()
    broken = [*features[:20], {**features[20], "properties": {"measurements": {"Area px^2": math.nan}}}]
    with pytest.raises(WriteError, match="feature 20"):
        write_geojson(good, broken)
    with pytest.raises(WriteError, match="not a GeoJSON Feature"):
        write_geojson(good, [features[0], {"type": "Point"}])
    assert good.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["good.geojson", "objects.geojson"]


def test_object_csv_columns_rows_and_agreement_with_features(tmp_path, nuclei_labels, rgb):
    rows = object_table(nuclei_labels, pixel_size=(0.5, 0.5), image=rgb, offset=(7, 9))
    path = write_object_csv(tmp_path / "objects.csv", rows)
    with open(path, newline="", encoding="utf-8") as f:
        read = list(csv.DictReader(f))
    header = list(read[0])
    assert header == [*CSV_COLUMNS, "mean_R", "mean_G", "mean_B", "mean_hematoxylin_od", "mean_eosin_od"]
    assert len(read) == len(np.unique(nuclei_labels)) - 1
    assert [int(r["id"]) for r in read] == [f["properties"]["segloop_id"] for f in label_features(nuclei_labels)]

    features = label_features(nuclei_labels, pixel_size=(0.5, 0.5), image=rgb, offset=(7, 9))
    for row, text, feature in zip(rows, read, features):
        m = feature["properties"]["measurements"]
        assert row["area_um2"] == m["Area µm^2"] and row["perimeter_px"] == m["Perimeter px"]
        assert row["centroid_x_um"] == m["Centroid X µm"] and row["mean_eosin_od"] == m["Eosin OD mean"]
        assert float(text["centroid_y_px"]) == pytest.approx(row["centroid_y_px"])
        assert int(text["area_px"]) == row["area_px"]

    grey = write_object_csv(tmp_path / "grey.csv", object_table(nuclei_labels, image=rgb[..., 1]))
    with open(grey, newline="", encoding="utf-8") as f:
        grey_rows = list(csv.DictReader(f))
    assert list(grey_rows[0]) == [*CSV_COLUMNS, "mean_grey"]
    assert grey_rows[0]["area_um2"] == "" and grey_rows[0]["centroid_x_um"] == ""
