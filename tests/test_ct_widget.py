"""CT tools widget in a real napari viewer: window presets, interpolation (one undo step, not reviewed),
the measurement table and CSV, export for other tools."""

import csv
import math

import numpy as np
import pytest

napari = pytest.importorskip("napari")

from segloop._napari.correction_tracking import track  # noqa: E402
from segloop._napari.ct_widget import DICOM_SEG, NIFTI, NRRD, RTSTRUCT, CTToolsWidget  # noqa: E402
from segloop.core.editing.corrections import PredictionSnapshot  # noqa: E402

SCALE = (2.0, 0.5, 0.5)


def disc(shape, centre, radius):
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def ct_volume(shape=(12, 64, 64)):
    """Air around a water-like body, 'HU' values as a scanner gives them."""
    img = np.full(shape, -1000, np.int16)
    for z in range(shape[0]):
        img[z][disc(shape[1:], (32, 32), 28)] = 40
    return img


def setup(make_napari_viewer, qtbot, labels, *, image=None, scale=SCALE):
    viewer = make_napari_viewer()
    if image is not None:
        viewer.add_image(image, name="ct", scale=scale)
    layer = viewer.add_labels(labels, name="seg", scale=scale)
    widget = CTToolsWidget(viewer)
    viewer.window.add_dock_widget(widget)
    qtbot.wait(10)
    return viewer, layer, widget


def test_window_presets_set_the_contrast_limits_and_show_the_layers_window(make_napari_viewer, qtbot):
    viewer, _, w = setup(make_napari_viewer, qtbot, np.zeros((12, 64, 64), np.uint8), image=ct_volume())
    img = viewer.layers["ct"]
    assert w.image_layer.value is img
    w.preset.value = "lung"                                     # -600 +- 750
    assert img.contrast_limits == [-1350.0, 150.0]
    assert (w.level.value, w.window_width.value) == (-600.0, 1500.0)
    w.preset.value = "bone"                                     # 400 +- 900, beyond the data's range
    assert img.contrast_limits == [-500.0, 1300.0]
    w.preset.value = "custom"
    w.level.value = 100.0
    w.window_width.value = 200.0
    assert img.contrast_limits == [0.0, 200.0] and w.preset.value == "custom"
    w.window_width.value = 150.0
    w.level.value = 80.0                                        # level / width of the liver preset
    assert w.preset.value == "liver" and img.contrast_limits == [5.0, 155.0]
    img.contrast_limits = (-125.0, 225.0)                       # napari's own slider: mediastinum
    assert w.preset.value == "mediastinum" and (w.level.value, w.window_width.value) == (50.0, 350.0)
    img.contrast_limits = (-100.0, 300.0)
    assert w.preset.value == "custom" and (w.level.value, w.window_width.value) == (100.0, 400.0)


def two_discs_and_an_obstacle():
    lab = np.zeros((11, 64, 64), np.uint16)
    lab[0][disc((64, 64), (32, 32), 8)] = 2
    lab[10][disc((64, 64), (32, 32), 24)] = 2
    lab[3:8, 30:34, 30:34] = 5                  # another object where label 2 will be filled
    return lab


def test_interpolation_is_one_undo_step_and_not_marked_reviewed(make_napari_viewer, qtbot):
    lab = two_discs_and_an_obstacle()
    viewer, layer, w = setup(make_napari_viewer, qtbot, lab.copy())
    tr = track(layer, snapshot=PredictionSnapshot(layer.data))
    w.label_id.value = 2
    w.interpolate_button.native.click()
    assert w.interp_status.value.startswith("filled 9 slices for label 2 (not reviewed until you look")
    after = layer.data.copy()
    for z in range(1, 10):
        r_eq = math.sqrt((after[z] == 2).sum() / math.pi)
        assert 8 + 1.6 * z - 1.5 < r_eq < 8 + 1.6 * z + 1, z      # growing discs (minus the obstacle)
    assert (after[lab == 5] == 5).all() and np.array_equal(after[0], lab[0])
    assert not tr.reviewed.boxes and layer.metadata["segloop"]["reviewed"]["boxes"] == []

    layer.undo()                                                 # Ctrl+Z: all of it, exactly
    assert np.array_equal(layer.data, lab)
    layer.redo()
    assert np.array_equal(layer.data, after)

    # the same edit applied outside the widget would count as reviewed: the widget's opt-out matters
    layer.undo()
    filled = np.nonzero(after != lab)
    layer.data_setitem(filled, after[filled])
    assert tr.reviewed.boxes


def test_interpolating_all_labels_and_nothing_to_do(make_napari_viewer, qtbot):
    lab = two_discs_and_an_obstacle()
    lab[2, 5:10, 5:10] = 9                                       # one slice only
    viewer, layer, w = setup(make_napari_viewer, qtbot, lab.copy())
    res = w.interpolate()
    assert set(res.filled_slices) == {2} and "label 2" in w.interp_status.value
    w.label_id.value = 9
    assert w.interpolate().n_changed == 0 and "nothing to interpolate: label 9" in w.interp_status.value


def test_interpolation_errors_are_notifications_and_change_nothing(make_napari_viewer, qtbot, notes):
    viewer = make_napari_viewer()
    flat = np.zeros((32, 32), np.uint8)
    flat[4:8, 4:8] = 1
    layer = viewer.add_labels(flat.copy(), name="slice")
    w = CTToolsWidget(viewer)
    assert w.interpolate() is None
    assert "2D" in w.interp_status.value and any("2D" in n for n in notes)
    assert np.array_equal(layer.data, flat)


def test_measurement_table_for_a_sphere_with_scale_and_csv(make_napari_viewer, qtbot, tmp_path):
    shape = (12, 64, 64)
    zz, yy, xx = np.ogrid[: shape[0], : shape[1], : shape[2]]
    ball = ((zz - 6) * 2.0) ** 2 + ((yy - 32) * 0.5) ** 2 + ((xx - 32) * 0.5) ** 2 <= 10.0**2    # r = 10 mm
    lab = np.zeros(shape, np.uint8)
    lab[ball] = 1
    viewer, layer, w = setup(make_napari_viewer, qtbot, lab, image=ct_volume(shape))
    layer.metadata["segloop"] = {"model": {"classes": ["background", "lesion"], "task": "semantic"}}
    rows = w.refresh()
    (row,) = rows
    assert row["volume_ml"] == pytest.approx(4 / 3 * math.pi * 1000 / 1000, rel=0.03)
    assert abs(row["max_diameter_mm"] - 20.0) <= 0.5 and row["diameter_slice"] == 6
    assert row["hu_mean"] == 40.0 and row["hu_std"] == 0.0
    table = w.table.native
    cells = [table.item(0, c).text() for c in range(table.columnCount())]
    headers = [table.horizontalHeaderItem(c).text() for c in range(table.columnCount())]
    assert headers == ["label", "name", "voxels", "mL", "max Ø (mm)", "HU mean ± sd"]
    assert cells[:3] == ["1", "lesion", f"{row['voxels']:,}"] and cells[3] == f"{row['volume_ml']:.2f}"
    assert cells[4] == "20.0" and cells[5] == "40.0 ± 0.0"
    assert "slice 6" in table.item(0, 4).toolTip()
    assert "voxel 2 × 0.5 × 0.5 mm" in w.measure_status.value and "'ct'" in w.measure_status.value

    out = w.save_csv(tmp_path / "measurements")
    assert out == tmp_path / "measurements.csv"
    with open(out, newline="") as fh:
        (read,) = list(csv.DictReader(fh))
    assert read["name"] == "lesion" and float(read["volume_ml"]) == pytest.approx(row["volume_ml"])

    # drawing a second object refreshes the table by itself (debounced)
    corner = np.zeros(shape, bool)
    corner[2, :4, :4] = True
    idx = np.nonzero(corner)
    layer.data_setitem(idx, np.full(idx[0].size, 3, np.uint8))
    qtbot.waitUntil(lambda: w.table.native.rowCount() == 2, timeout=3000)
    assert w.rows[1]["voxels"] == 16 and w.rows[1]["name"] == ""
    layer.undo()                                                  # no paint event: history is watched
    qtbot.waitUntil(lambda: w.table.native.rowCount() == 1, timeout=3000)

    # two separate lesions of one class: one row each when asked
    second = np.zeros(shape, bool)
    second[1:3, 2:6, 50:54] = True
    idx = np.nonzero(second)
    layer.data_setitem(idx, np.full(idx[0].size, 1, np.uint8))
    qtbot.waitUntil(lambda: w.rows and w.rows[0]["voxels"] > row["voxels"], timeout=3000)
    assert w.table.native.rowCount() == 1
    w.lesions.value = True
    assert [(r["label"], r["lesion"]) for r in w.rows] == [(1, 1), (1, 2)] and w.rows[1]["voxels"] == 32
    assert [w.table.native.item(i, 0).text() for i in range(2)] == ["1.1", "1.2"]


def _cli_rows(argv, tmp_path, capsys) -> tuple[list[dict], str]:
    from segloop.cli import main

    out = tmp_path / f"cli{len(list(tmp_path.glob('cli*.csv')))}.csv"
    assert main(["measure", *argv, "--csv", str(out)]) == 0
    printed = capsys.readouterr().out
    with open(out, newline="") as fh:
        return list(csv.DictReader(fh)), printed


def _same_numbers(widget_rows: list[dict], cli_rows: list[dict], *, hu: bool = False) -> None:
    """The widget's rows equal the CLI's CSV (floats as written: full precision)."""
    assert len(widget_rows) == len(cli_rows) > 0
    for w, c in zip(widget_rows, cli_rows):
        assert (w["label"], w["voxels"], w["diameter_slice"]) == (int(c["label"]), int(c["voxels"]),
                                                                 int(c["diameter_slice"]))
        assert (w["volume_ml"], w["max_diameter_mm"]) == (float(c["volume_ml"]), float(c["max_diameter_mm"]))
        if hu:            # summed in another voxel order when the axes are stored in another order
            assert w["hu_mean"] == pytest.approx(float(c["hu_mean"]), rel=1e-9)
            assert w["hu_std"] == pytest.approx(float(c["hu_std"]), rel=1e-9)


def test_segloop_measure_and_the_widget_give_the_same_numbers_for_the_lits_labels(make_napari_viewer, qtbot,
                                                                                  tmp_path, capsys):
    """The LiTS 117 MRC files are stored with the head-foot axis last: `segloop measure` on them,
    the widget on the napari sample (reoriented to (Z, Y, X)) and the widget on the files opened
    as stored all measure axial sections (the liver: 165.5 mm, not the 125.0 mm of a sagittal one)."""
    from segloop.core.formats.io.samples import liver_ct_paths

    img_path, lab_path = liver_ct_paths()
    cli, printed = _cli_rows([str(lab_path), "--image", str(img_path)], tmp_path, capsys)
    assert printed.splitlines()[1].split("\t")[:4] == ["1", "485268", "485.268", "165.5"]

    viewer = make_napari_viewer()
    viewer.open_sample("napari-segloop", "liver_ct")
    w = CTToolsWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.image_layer.value = viewer.layers["CT liver (LiTS 117)"]
    w.labels_layer.value = viewer.layers["liver/tumour (reference)"]
    _same_numbers(w.refresh(), cli, hu=True)
    assert w.table.native.item(0, 4).text() == "165.5"

    # the same files opened as stored (File > Open): the widget finds the axial axis (2) the same way
    (ct,) = viewer.open(str(img_path), plugin="napari-segloop")
    (stored,) = viewer.open(str(lab_path), plugin="napari-segloop")
    labels = viewer.add_labels(np.asarray(stored.data).astype(np.uint8), name="stored labels", scale=stored.scale,
                               metadata={"segloop_volume": stored.metadata["segloop_volume"]})
    w.image_layer.value, w.labels_layer.value = ct, labels
    _same_numbers(w.refresh(), cli, hu=True)
    assert "axial slices along data axis 2" in w.measure_status.value


def test_a_nifti_stored_with_its_axes_in_another_order_measures_the_same_in_both(make_napari_viewer, qtbot,
                                                                                tmp_path, capsys):
    """A synthetic NIfTI whose voxel axes run (R->L, S, A->P): `segloop measure` and the widget on the
    volume opened in napari report its axial diameter."""
    nib = pytest.importorskip("nibabel")

    sp = {"x": 0.8, "y": 0.5, "z": 2.0}
    data = np.zeros((50, 30, 40), np.uint16)                 # file axes: i = x (to L), j = z (to S), k = y (to P)
    data[10:30, 5:25, 10:20] = 4                             # 20 x 20 voxels across (x, y), 20 slices tall
    affine = np.array([[-sp["x"], 0, 0, 12.0], [0, 0, -sp["y"], -7.0], [0, sp["z"], 0, 30.0], [0, 0, 0, 1]])
    path = tmp_path / "sagittal first.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), str(path))
    cli, _ = _cli_rows([str(path)], tmp_path, capsys)
    assert float(cli[0]["max_diameter_mm"]) == pytest.approx(math.hypot(19 * 0.8, 9 * 0.5))

    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(path), plugin="napari-segloop")
    labels = viewer.add_labels(np.asarray(layer.data).astype(np.uint16), name="seg", scale=layer.scale,
                               metadata={"segloop_volume": layer.metadata["segloop_volume"]})
    w = CTToolsWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.labels_layer.value = labels
    _same_numbers(w.refresh(), cli)


def test_big_volumes_are_measured_in_a_worker(make_napari_viewer, qtbot, monkeypatch):
    import segloop._napari.ct_widget as ct

    monkeypatch.setattr(ct, "MEASURE_SYNC_VOXELS", 10)
    lab = np.zeros((4, 16, 16), np.uint8)
    lab[1:3, 2:6, 2:6] = 4
    viewer, layer, w = setup(make_napari_viewer, qtbot, lab)
    assert w.refresh() is None
    qtbot.waitUntil(lambda: w.table.native.rowCount() == 1, timeout=5000)
    assert w.rows[0]["label"] == 4 and w.rows[0]["volume_ml"] == pytest.approx(32 * 0.5 / 1000)
    qtbot.waitUntil(lambda: w._worker is None, timeout=5000)


def read_nifti(path):
    import nibabel as nib

    img = nib.load(str(path))
    return np.asarray(img.dataobj), img.affine


def test_export_nifti_and_slicer_seg_with_scale_only_geometry(make_napari_viewer, qtbot, tmp_path, notes):
    lab = two_discs_and_an_obstacle()
    viewer, layer, w = setup(make_napari_viewer, qtbot, lab.copy(), image=ct_volume((11, 64, 64)))
    assert list(w.export_format.choices) == [NIFTI, NRRD]          # no DICOM image: no DICOM-SEG
    out = w.export(tmp_path / "seg", fmt=NIFTI)
    assert out == tmp_path / "seg.nii.gz" and out.exists()
    assert any("geometry" in n and "unknown" in n for n in notes)
    assert "geometry unknown" in w.export_status.value
    data, affine = read_nifti(out)
    assert data.shape == lab.shape[::-1]                              # file axes (X, Y, Z)
    assert np.array_equal(data.transpose(2, 1, 0), lab)
    assert np.allclose(np.abs(affine[:3, :3]).sum(0), [0.5, 0.5, 2.0])   # the layer scale, in mm

    import nrrd

    out = w.export(tmp_path / "seg2", fmt=NRRD)
    assert out == tmp_path / "seg2.seg.nrrd"
    arr, header = nrrd.read(str(out))
    assert np.array_equal(arr.transpose(2, 1, 0), lab)
    segs = {header[f"Segment{i}_LabelValue"]: (header[f"Segment{i}_Name"], header[f"Segment{i}_Color"])
            for i in range(2)}
    assert segs["2"][0] == "label 2" and segs["5"][0] == "label 5"
    rgb = [float(v) for v in segs["2"][1].split()]
    assert np.allclose(rgb, np.asarray(layer.get_color(2))[:3], atol=1 / 255)   # the layer's colour
    assert np.array_equal(layer.data, lab)                           # exporting changes nothing


def test_export_keeps_the_geometry_the_image_was_read_with(make_napari_viewer, qtbot, tmp_path, notes):
    import nibabel as nib

    from segloop.core.formats.io.volume import read_volume

    # a NIfTI CT in RAS voxel order with an origin: the labels must come back on the same grid
    src_affine = np.array([[0.7, 0, 0, -120.0], [0, 0.7, 0, -90.0], [0, 0, 2.5, 40.0], [0, 0, 0, 1]])
    ct = np.random.default_rng(0).integers(-200, 200, (32, 24, 6)).astype(np.int16)
    nib.save(nib.Nifti1Image(ct, src_affine), str(tmp_path / "ct.nii.gz"))
    volume, info = read_volume(tmp_path / "ct.nii.gz", lazy=False)
    viewer = make_napari_viewer()
    viewer.add_image(volume, name="ct", scale=info.spacing, metadata={"segloop_volume": info})
    lab = np.zeros(volume.shape, np.uint8)
    lab[2:4, 5:10, 6:12] = 1
    viewer.add_labels(lab, name="seg", scale=info.spacing)
    w = CTToolsWidget(viewer)
    assert w.volume_info() is info
    out = w.export(tmp_path / "seg.nii.gz", fmt=NIFTI)
    data, affine = read_nifti(out)
    assert data.shape == ct.shape and np.allclose(affine, src_affine)
    assert np.array_equal(info.to_source.from_display(lab), data)
    assert not any("unknown" in n for n in notes) and "geometry unknown" not in w.export_status.value


def test_export_errors_are_notifications(make_napari_viewer, qtbot, tmp_path, notes):
    lab = two_discs_and_an_obstacle()
    viewer, layer, w = setup(make_napari_viewer, qtbot, lab.copy())
    assert w.export(tmp_path / "missing" / "seg.nii.gz", fmt=NIFTI) is None
    assert "export:" in w.export_status.value and any("export" in n for n in notes)
    assert w.export(tmp_path / "x.dcm", fmt="DICOM-SEG (.dcm)") is None
    assert "DICOM series" in w.export_status.value
    assert np.array_equal(layer.data, lab)


def test_dicom_images_offer_dicom_seg_with_names_and_colours(make_napari_viewer, qtbot, tmp_path):
    import highdicom as hd

    from segloop.core.formats.io.dicom import read_dicom
    from tests._dicom_series import write_series

    write_series(tmp_path / "ct", 4)
    volume, info = read_dicom(tmp_path / "ct")
    viewer = make_napari_viewer()
    viewer.add_image(volume, name="ct", scale=info.spacing, metadata={"segloop_volume": info})
    lab = np.zeros(volume.shape, np.uint8)
    lab[1:3, 10:20, 10:20] = 1
    lab[0, 30:40, 5:15] = 2
    layer = viewer.add_labels(lab, name="seg", scale=info.spacing,
                              metadata={"segloop": {"model": {"classes": ["background", "liver", "tumour"],
                                                              "task": "semantic"}}})
    w = CTToolsWidget(viewer)
    assert DICOM_SEG in w.export_format.choices
    out = w.export(tmp_path / "labels", fmt=DICOM_SEG)
    assert out == tmp_path / "labels.dcm"
    seg = hd.seg.segread(out)
    names = [seg.get_segment_description(n).segment_label for n in seg.segment_numbers]
    assert names == ["liver", "tumour"]
    expected = hd.color.CIELabColor.from_rgb(*(round(255 * c) for c in np.asarray(layer.get_color(2))[:3]))
    assert tuple(seg.SegmentSequence[1].RecommendedDisplayCIELabValue) == expected.value


def test_dicom_images_offer_rtstruct_read_back_voxel_for_voxel(make_napari_viewer, tmp_path):
    from segloop.core.formats.io.dicom import read_dicom
    from segloop.core.formats.io.rtstruct import read_rtstruct
    from tests._dicom_series import write_series

    write_series(tmp_path / "ct", 4)
    volume, info = read_dicom(tmp_path / "ct")
    viewer = make_napari_viewer()
    viewer.add_image(volume, name="ct", scale=info.spacing, metadata={"segloop_volume": info})
    lab = np.zeros(volume.shape, np.uint8)
    lab[1:3, 10:20, 10:20] = 1
    lab[0, 30:40, 5:15] = 2
    viewer.add_labels(lab, name="seg", scale=info.spacing,
                      metadata={"segloop": {"model": {"classes": ["background", "lung", "tumour"],
                                                      "task": "semantic"}}})
    w = CTToolsWidget(viewer)
    assert RTSTRUCT in w.export_format.choices
    out = w.export(tmp_path / "structures", fmt=RTSTRUCT)
    back, names, _ = read_rtstruct(out, tmp_path / "ct")
    assert names == {1: "lung", 2: "tumour"} and np.array_equal(back, lab)


def test_rtstruct_needs_the_dicom_series(make_napari_viewer, tmp_path, notes):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((4, 32, 32), np.int16), name="ct")
    lab = np.zeros((4, 32, 32), np.uint8)
    lab[1, 5:9, 5:9] = 1
    viewer.add_labels(lab, name="seg")
    w = CTToolsWidget(viewer)
    assert RTSTRUCT not in w.export_format.choices
    assert w.export(tmp_path / "s", fmt=RTSTRUCT) is None and not list(tmp_path.iterdir())
    assert any("needs the DICOM series" in n for n in notes)


def test_the_widget_opens_from_the_plugins_menu(make_napari_viewer):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-segloop", "CT tools")
    assert isinstance(widget, CTToolsWidget)
