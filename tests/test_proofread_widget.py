"""Proofread and Export widgets in a real napari viewer under Xvfb, driven by real mouse and key events."""

import json

import numpy as np
import pytest

napari = pytest.importorskip("napari")

from qtpy.QtCore import QPoint, Qt  # noqa: E402

from segloop._napari.correction_tracking import track, tracker_for  # noqa: E402
from segloop._napari.export_widget import ExportWidget  # noqa: E402
from segloop._napari.proofread_widget import ProofreadWidget  # noqa: E402
from segloop.core.editing.corrections import PredictionSnapshot  # noqa: E402


def hand_made_labels() -> np.ndarray:
    """1 and 2: two halves of one nucleus (over-split); 3: two touching discs (merged); 4: a false positive."""
    lab = np.zeros((120, 160), np.uint16)
    lab[20:50, 20:40] = 1
    lab[20:50, 40:60] = 2
    yy, xx = np.mgrid[:120, :160]
    lab[((yy - 80) ** 2 + (xx - 40) ** 2 < 15**2) | ((yy - 80) ** 2 + (xx - 66) ** 2 < 15**2)] = 3
    lab[30:40, 110:120] = 4
    return lab


def setup(make_napari_viewer, qtbot, labels=None, predicted=True):
    viewer = make_napari_viewer(show=True)
    rng = np.random.default_rng(0)
    viewer.add_image(rng.integers(0, 255, (120, 160), dtype=np.uint8), name="img")
    layer = viewer.add_labels(hand_made_labels() if labels is None else labels, name="pred")
    if predicted:
        track(layer, snapshot=PredictionSnapshot(layer.data))
    widget = ProofreadWidget(viewer)
    viewer.window.add_dock_widget(widget)
    viewer.layers.selection.active = layer
    layer.mode = "pan_zoom"
    viewer.reset_view()
    qtbot.wait(50)
    return viewer, layer, widget


def canvas_point(viewer, data_yx) -> QPoint:
    """Canvas pixel of a data point (2D view, layer scale 1)."""
    canvas = viewer.window._qt_viewer.canvas
    h, w = canvas.size                         # napari gives (height, width)
    cy, cx = viewer.scene.camera.center[-2:]
    z = viewer.scene.camera.zoom
    return QPoint(int(round((data_yx[1] - cx) * z + w / 2)), int(round((data_yx[0] - cy) * z + h / 2)))


def click(qtbot, viewer, data_yx):
    native = viewer.window._qt_viewer.canvas.native
    qtbot.mouseClick(native, Qt.MouseButton.LeftButton, pos=canvas_point(viewer, data_yx))
    qtbot.wait(10)


def key(qtbot, viewer, k, mod=Qt.KeyboardModifier.NoModifier):
    native = viewer.window._qt_viewer.canvas.native
    native.setFocus()
    qtbot.keyClick(native, k, mod)
    qtbot.wait(10)


CTRL = Qt.KeyboardModifier.ControlModifier
SHIFT = Qt.KeyboardModifier.ShiftModifier


def test_merge_split_delete_by_mouse_and_keys_each_undone_and_redone_exactly(make_napari_viewer, qtbot):
    viewer, layer, w = setup(make_napari_viewer, qtbot)
    original = layer.data.copy()

    click(qtbot, viewer, (35, 30))
    click(qtbot, viewer, (35, 50))
    assert w.selected == [1, 2]
    key(qtbot, viewer, Qt.Key.Key_M)
    merged = layer.data.copy()
    assert (merged[20:50, 20:60] == 1).all() and 2 not in merged
    key(qtbot, viewer, Qt.Key.Key_Z, CTRL)
    np.testing.assert_array_equal(layer.data, original)
    key(qtbot, viewer, Qt.Key.Key_Z, CTRL | SHIFT)
    np.testing.assert_array_equal(layer.data, merged)

    click(qtbot, viewer, (80, 38))
    click(qtbot, viewer, (80, 68))
    key(qtbot, viewer, Qt.Key.Key_S)
    split = layer.data.copy()
    left, right = split[80, 38], split[80, 68]
    assert left == 3 and right not in (0, 3) and set(np.unique(split[original == 3])) == {3, right}
    key(qtbot, viewer, Qt.Key.Key_Z, CTRL)
    np.testing.assert_array_equal(layer.data, merged)
    key(qtbot, viewer, Qt.Key.Key_Z, CTRL | SHIFT)
    np.testing.assert_array_equal(layer.data, split)

    click(qtbot, viewer, (35, 115))
    key(qtbot, viewer, Qt.Key.Key_Delete)
    assert 4 not in layer.data
    deleted = layer.data.copy()
    key(qtbot, viewer, Qt.Key.Key_Z, CTRL)
    np.testing.assert_array_equal(layer.data, split)
    key(qtbot, viewer, Qt.Key.Key_Z, CTRL | SHIFT)
    np.testing.assert_array_equal(layer.data, deleted)

    # every edit grew the reviewed region; the summary sees one merge, one split, one deletion
    tr = tracker_for(layer)
    rev = tr.reviewed.mask()
    assert rev[35, 30] and rev[80, 68] and rev[35, 115] and not rev[110, 150]
    s = tr.summary()
    assert (s.merged, s.split, s.deleted) == (1, 1, 1)
    assert "1 merged, 1 split" in w.review.value and "reviewed:" in w.review.value


def test_brush_strokes_and_our_edits_share_one_undo_stack(make_napari_viewer, qtbot):
    viewer, layer, w = setup(make_napari_viewer, qtbot)
    original = layer.data.copy()
    layer.paint((100, 140), 9)                          # a brush stroke (napari's own paint)
    painted = layer.data.copy()
    w.click(1, (35, 30))
    w.click(2, (35, 50))
    w.merge()
    layer.undo()
    np.testing.assert_array_equal(layer.data, painted)
    layer.undo()
    np.testing.assert_array_equal(layer.data, original)
    assert tracker_for(layer).reviewed.mask()[100, 140]


def test_fill_holes_remove_small_new_label_and_errors(make_napari_viewer, qtbot):
    lab = hand_made_labels()
    lab[30:34, 28:32] = 0                               # a hole in label 1
    lab[5, 5] = 7                                       # a speck
    viewer, layer, w = setup(make_napari_viewer, qtbot, labels=lab)
    w.click(1, (25, 25))
    assert w.fill_holes() == 16 and (layer.data[30:34, 28:32] == 1).all()
    w.min_size.value = 5
    assert w.remove_small() == 1 and layer.data[5, 5] == 0
    assert w.new_label() == 5 and layer.mode == "paint" and layer.selected_label == 5
    lab_after = layer.data.copy()
    layer.mode = "pan_zoom"
    w.clear()
    assert w.merge() == 0 and "click two or more" in w.status.value
    w.click(3, (80, 38))
    assert w.split() == 0 and "two or more points" in w.status.value
    w.click(3, (80.2, 37.9))                            # a second click on the same pixel: not two pieces
    assert w.split() == 0 and "different" in w.status.value and (layer.data == lab_after).all()


def test_current_slice_of_a_stack_is_edited_alone(make_napari_viewer, qtbot):
    stack = np.stack([hand_made_labels()] * 3)
    viewer, layer, w = setup(make_napari_viewer, qtbot, labels=stack)
    viewer.dims.set_current_step(0, 1)
    w.scope.value = "current slice"
    w.click(1, (1, 35, 30))
    w.click(2, (1, 35, 50))
    w.merge()
    assert 2 not in layer.data[1] and 2 in layer.data[0] and 2 in layer.data[2]
    layer.undo()
    np.testing.assert_array_equal(layer.data, stack)
    w.scope.value = "whole stack / volume"
    w.click(4, (1, 35, 115))
    w.delete()
    assert 4 not in layer.data


def test_mark_view_slice_and_rectangles_reviewed_with_overlay(make_napari_viewer, qtbot):
    stack = np.stack([hand_made_labels()] * 2)
    viewer, layer, w = setup(make_napari_viewer, qtbot, labels=stack)
    tr = tracker_for(layer)
    viewer.dims.set_current_step(0, 1)
    w.mark_slice()
    assert tr.reviewed.mask()[1].all() and not tr.reviewed.mask()[0].any()
    viewer.dims.set_current_step(0, 0)
    assert w.mark_rectangles() == 0 and "reviewed rectangles" in viewer.layers
    shapes = viewer.layers["reviewed rectangles"]
    shapes.add_rectangles(np.array([[0, 10, 10], [0, 10, 30], [0, 40, 30], [0, 40, 10]]))
    assert w.mark_rectangles() == 1
    m = tr.reviewed.mask()
    assert m[0, 20, 20] and not m[0, 60, 60]
    w.overlay.value = True
    over = viewer.layers[f"{layer.name} · reviewed"]
    assert over.data[0, 20, 20] == 1 and over.data[1].all()
    assert layer.metadata["segloop"]["reviewed"]["boxes"]
    w.overlay.value = False
    assert f"{layer.name} · reviewed" not in viewer.layers


def test_proofread_then_export_then_validate(make_napari_viewer, qtbot, tmp_path):
    from segloop.core.formats.trainfolder import TrainingFolder, validate_folder

    viewer, layer, w = setup(make_napari_viewer, qtbot)
    click(qtbot, viewer, (35, 30))
    click(qtbot, viewer, (35, 50))
    key(qtbot, viewer, Qt.Key.Key_M)
    ex = ExportWidget(viewer)
    viewer.window.add_dock_widget(ex)
    ex.image.value = viewer.layers["img"]
    ex.labels.value = layer
    ex.folder.value = str(tmp_path / "my corrections ü")
    ex.what.value = "whole image"
    worker = ex.export()
    assert worker is not None
    qtbot.waitUntil(lambda: ex._worker is None, timeout=60_000)
    assert "exported" in ex.status.value, ex.status.value
    report = validate_folder(tmp_path / "my corrections ü")
    assert report.ok and report.n_samples >= 1
    folder = TrainingFolder.open(tmp_path / "my corrections ü")
    rec = [r for r in folder.samples() if r.split == "train"][0]
    s = folder.read_sample(rec)
    assert s.meta["corrections"]["merged"] == 1
    assert s.reviewed[35, 30] == 1 and s.reviewed[110, 150] == 0
    np.testing.assert_array_equal(s.labels, layer.data)
    assert "train" in ex.counts.value


def export_widget(viewer, layer, folder, what="whole image"):
    ex = ExportWidget(viewer)
    viewer.window.add_dock_widget(ex)
    ex.image.value = viewer.layers["img"]
    ex.labels.value = layer
    ex.folder.value = str(folder)
    ex.what.value = what
    return ex


def run_export(qtbot, ex):
    worker = ex.export()
    if worker is not None:
        qtbot.waitUntil(lambda: ex._worker is None, timeout=60_000)
    return worker


def test_export_refuses_bad_targets_and_keeps_the_layer(make_napari_viewer, qtbot, tmp_path, notes):
    viewer, layer, w = setup(make_napari_viewer, qtbot)
    w.click(4, (35, 115))
    w.delete()
    before = layer.data.copy()
    a_file = tmp_path / "not a folder.txt"
    a_file.write_text("x")
    ex = export_widget(viewer, layer, a_file)
    run_export(qtbot, ex)
    assert "export failed" in ex.status.value and any("not changed" in n for n in notes)
    newer = tmp_path / "newer"
    newer.mkdir()
    (newer / "segloop-training.json").write_text(json.dumps(
        {"format": "segloop-training", "format_version": 99, "classes": ["background", "x"], "task": "instance"}))
    ex.folder.value = str(newer)
    run_export(qtbot, ex)
    assert "newer" in ex.status.value
    ex.folder.value = "/proc/segloop-cannot-write-here"
    run_export(qtbot, ex)
    assert "export failed" in ex.status.value
    np.testing.assert_array_equal(layer.data, before)
    assert layer in viewer.layers


def test_export_needs_a_reviewed_region_for_a_prediction_but_not_for_drawn_labels(make_napari_viewer, qtbot,
                                                                                  tmp_path, notes):
    viewer, layer, w = setup(make_napari_viewer, qtbot)
    ex = export_widget(viewer, layer, tmp_path / "f", what="reviewed bounding box")
    assert run_export(qtbot, ex) is None and "nothing is reviewed" in ex.status.value
    ex.what.value = "whole image"
    assert run_export(qtbot, ex) is None and "nothing is reviewed" in ex.status.value
    drawn = viewer.add_labels(hand_made_labels(), name="drawn from scratch")   # no provenance, no snapshot
    ex.labels.value = drawn
    run_export(qtbot, ex)
    assert "exported" in ex.status.value
    from segloop.core.formats.trainfolder import TrainingFolder

    s = TrainingFolder.open(tmp_path / "f").read_sample(TrainingFolder.open(tmp_path / "f").samples()[0])
    assert s.meta["model"] is None and s.meta["corrections"] is None


def test_export_of_mismatched_layers_is_an_error(make_napari_viewer, qtbot, tmp_path, notes):
    viewer, layer, w = setup(make_napari_viewer, qtbot)
    small = viewer.add_labels(np.zeros((10, 10), np.uint16), name="small")
    ex = export_widget(viewer, small, tmp_path / "f")
    assert run_export(qtbot, ex) is None
    assert "spatial shape" in ex.status.value and any("spatial shape" in n for n in notes)


def test_reader_opens_an_exported_sample_again(make_napari_viewer, qtbot, tmp_path):
    viewer, layer, w = setup(make_napari_viewer, qtbot, predicted=False)
    ex = export_widget(viewer, layer, tmp_path / "f")
    run_export(qtbot, ex)
    v2 = make_napari_viewer()
    layers = v2.open(str(tmp_path / "f"), plugin="napari-segloop")
    names = [lyr.name for lyr in layers]
    assert len(layers) == 6 and any(n.endswith("labels") for n in names)      # sample + its held-out block
    lab = [lyr for lyr in layers if lyr.name.endswith("labels") and "-val" not in lyr.name][0]
    np.testing.assert_array_equal(lab.data, layer.data)
    assert lab.metadata["segloop"]["sample"]["split"] == "train"
    one = v2.open(str(tmp_path / "f" / "samples" / lab.metadata["segloop"]["sample"]["sample_id"]),
                  plugin="napari-segloop")
    assert len(one) == 3


def test_a_sample_read_back_is_corrected_and_replaced_explicitly(make_napari_viewer, qtbot, tmp_path):
    from segloop.core.formats.trainfolder import TrainingFolder, validate_folder

    viewer, layer, w = setup(make_napari_viewer, qtbot, predicted=False)
    run_export(qtbot, export_widget(viewer, layer, tmp_path / "f"))
    folder = TrainingFolder.open(tmp_path / "f")
    (train_rec,) = folder.samples("train")
    (val_rec,) = folder.samples("val")
    val_before = folder.read_sample(val_rec)

    v2 = make_napari_viewer()
    opened = v2.open(str(train_rec.path), plugin="napari-segloop")
    img, lab = opened[0], opened[1]
    img.name = "img"
    w2 = ProofreadWidget(v2)
    v2.window.add_dock_widget(w2)
    w2.layer.value = lab
    w2.click(4, (35, 115))
    assert w2.delete() == 100
    ex = export_widget(v2, lab, tmp_path / "elsewhere")
    assert not ex.replace.native.isHidden()          # offered only for labels opened from a sample
    ex.replace.value = True
    run_export(qtbot, ex)
    assert "exported" in ex.status.value, ex.status.value
    folder = TrainingFolder.open(tmp_path / "f")
    assert [r.sample_id for r in folder.samples()] == [train_rec.sample_id, val_rec.sample_id]
    assert not (tmp_path / "elsewhere").exists()
    new_train = folder.read_sample(train_rec.sample_id)
    assert 4 not in new_train.labels
    np.testing.assert_array_equal(new_train.reviewed, folder.read_sample(train_rec.sample_id).reviewed)
    val_after = folder.read_sample(val_rec.sample_id)
    np.testing.assert_array_equal(val_after.reviewed, val_before.reviewed)     # the held-out block kept its review
    np.testing.assert_array_equal(val_after.labels, val_before.labels)
    assert validate_folder(tmp_path / "f").ok


def test_export_from_a_lazy_multiscale_image_and_the_current_view(make_napari_viewer, qtbot, tmp_path):
    import dask.array as da

    from segloop.core.formats.trainfolder import TrainingFolder

    viewer = make_napari_viewer(show=True)
    base = np.random.default_rng(0).integers(0, 255, (400, 600), dtype=np.uint8)
    viewer.add_image([da.from_array(base, chunks=100), da.from_array(base[::2, ::2], chunks=100)], name="img",
                     multiscale=True)
    lab = viewer.add_labels(np.zeros((400, 600), np.uint16), name="drawn")
    lab.data[100:120, 100:130] = 1
    viewer.scene.camera.center = (150, 200)
    viewer.scene.camera.zoom = 4
    qtbot.wait(100)
    ex = export_widget(viewer, lab, tmp_path / "f", what="current view")
    ex.split.value = "train"
    run_export(qtbot, ex)
    assert "exported" in ex.status.value, ex.status.value
    (rec,) = TrainingFolder.open(tmp_path / "f").samples()
    s = TrainingFolder.open(tmp_path / "f").read_sample(rec)
    (y0, y1), (x0, x1) = s.meta["crop"]
    assert 0 < y1 - y0 < 400 and 0 < x1 - x0 < 600 and y0 <= 150 < y1 and x0 <= 200 < x1
    np.testing.assert_array_equal(s.image, base[y0:y1, x0:x1])
    np.testing.assert_array_equal(s.labels, lab.data[y0:y1, x0:x1])


def test_review_regressions_found_in_review(make_napari_viewer, qtbot, tmp_path):
    """Edits far apart mark small boxes; Segment's tracker keeps the widget's listener; overlay keeps focus;
    a full uint8 layer says so; a view off the image says so; 3D view refuses 'current slice'."""
    viewer = make_napari_viewer(show=True)
    viewer.add_image(np.zeros((2000, 2000), np.uint8), name="img")
    layer = viewer.add_labels(np.zeros((2000, 2000), np.uint16), name="pred")
    layer.data[5, 5] = layer.data[1990, 1990] = 3
    w = ProofreadWidget(viewer)                       # binds first, makes a tracker
    viewer.window.add_dock_widget(w)
    track(layer, snapshot=PredictionSnapshot(layer.data))   # as Segment does afterwards
    w.click(3, (5, 5))
    w.delete()
    tr = tracker_for(layer)
    assert tr.snapshot is not None and tr.reviewed.fraction() < 0.01     # two corners, not the square between
    assert "1 deleted" in w.review.value                                  # the widget still listens
    w.overlay.value = True
    assert viewer.layers.selection.active is layer
    small = viewer.add_labels(np.full((8, 8), 255, np.uint8), name="full")
    w.layer.value = small
    assert w.new_label() == 0 and "wider" in w.status.value
    viewer.scene.camera.center = (0, 50_000, 50_000)
    qtbot.wait(50)
    w.mark_view()
    assert "none of the layer" in w.status.value
    stack = viewer.add_labels(np.stack([hand_made_labels()] * 3), name="stack")
    w.layer.value = stack
    viewer.dims.ndisplay = 3
    w.click(1, (1, 35, 30))
    w.click(2, (1, 35, 50))
    assert w.merge() == 0 and "2D view" in w.status.value


def test_export_one_slice_of_a_stack_and_default_image_is_the_source(make_napari_viewer, qtbot, tmp_path):
    from segloop.core.formats.trainfolder import TrainingFolder

    viewer = make_napari_viewer(show=True)
    vol = np.random.default_rng(0).integers(0, 255, (5, 64, 80), dtype=np.uint8)
    viewer.add_image(vol, name="ct")
    lab = viewer.add_labels(np.zeros((5, 64, 80), np.uint16), name="ct · model v1",
                            metadata={"segloop": {"source_layer": "ct"}})
    viewer.add_image(np.zeros((5, 64, 80), np.float16), name="ct · model v1 · uncertainty",
                     metadata={"segloop": {"source_layer": "ct"}})
    lab.data[2, 10:20, 10:20] = 1
    viewer.dims.set_current_step(0, 2)
    ex = ExportWidget(viewer)
    viewer.window.add_dock_widget(ex)
    ex.labels.value = lab
    assert ex.image.value.name == "ct"                # not the uncertainty map
    ex.folder.value = str(tmp_path / "f")
    ex.what.value = "current slice"
    ex.split.value = "train"
    run_export(qtbot, ex)
    assert "exported" in ex.status.value, ex.status.value
    (rec,) = TrainingFolder.open(tmp_path / "f").samples()
    s = TrainingFolder.open(tmp_path / "f").read_sample(rec)
    assert s.image.shape == (64, 80) and s.meta["slice_range"] == [2, 3]
    np.testing.assert_array_equal(s.image, vol[2])
    np.testing.assert_array_equal(s.labels, lab.data[2])


def test_export_slice_range_of_a_ct_volume_keeps_spacing_and_orientation(make_napari_viewer, qtbot, tmp_path):
    from pathlib import Path

    from segloop.core.formats.io.geometry import VolumeInfo
    from segloop.core.formats.trainfolder import TrainingFolder

    viewer = make_napari_viewer(show=True)
    vol = np.random.default_rng(1).integers(-1000, 1000, (6, 40, 50), dtype=np.int16)
    aff = np.array([[0.0, 0.0, -0.7, 120.0], [0.0, -0.7, 0.0, 90.0], [2.5, 0.0, 0.0, -300.0], [0, 0, 0, 1]])
    info = VolumeInfo(path=Path("ct"), format="dicom", shape=vol.shape, spacing=(2.5, 0.7, 0.7), affine=aff,
                      modality="CT", units="HU", series_uid="1.2.3")
    viewer.add_image(vol, name="ct", scale=(2.5, 0.7, 0.7), metadata={"segloop_volume": info})
    lab = viewer.add_labels(np.zeros(vol.shape, np.uint8), name="ct · model v1", scale=(2.5, 0.7, 0.7),
                            metadata={"segloop": {"source_layer": "ct"}})
    lab.data[1:5, 5:15, 5:15] = 1
    ex = ExportWidget(viewer)
    viewer.window.add_dock_widget(ex)
    ex.labels.value = lab
    ex.folder.value = str(tmp_path / "f")
    ex.what.value = "slice range"
    ex.z_from.value, ex.z_to.value = 2, 4
    ex.split.value = "train"
    run_export(qtbot, ex)
    assert "exported" in ex.status.value, ex.status.value
    folder = TrainingFolder.open(tmp_path / "f")
    (rec,) = folder.samples()
    s = folder.read_sample(rec)
    assert s.image.shape == (3, 40, 50) and s.meta["spacing"] == [2.5, 0.7, 0.7]
    geo = s.meta["extra"]["geometry"]
    assert geo["orientation"] == "LPS" and geo["modality"] == "CT" and geo["units"] == "HU"
    sample_aff = np.array(geo["affine"])
    # voxel (0, 3, 4) of the sample is voxel (2, 3, 4) of the volume: same point in RAS mm
    np.testing.assert_allclose(sample_aff @ [0, 3, 4, 1], aff @ [2, 3, 4, 1])


def test_export_widget_shows_an_existing_folders_classes_read_only_and_a_models_for_a_new_one(
        make_napari_viewer, qtbot, tmp_path):
    from segloop.core.formats.trainfolder import TrainingFolder

    viewer, layer, w = setup(make_napari_viewer, qtbot, predicted=False)
    # labels predicted by a model with a boundary class: a new folder gets its object class
    layer.metadata["segloop"] = {"model": {"name": "m", "classes": ["background", "nucleus", "boundary"],
                                           "task": "instance"}, "parameters": {"postprocess": {"boundary_class": 2}}}
    ex = export_widget(viewer, layer, tmp_path / "new")
    ex._defaults_from_provenance()
    assert ex.classes.value == "background, nucleus" and ex.classes.enabled
    run_export(qtbot, ex)
    assert TrainingFolder.open(tmp_path / "new").info.classes == ("background", "nucleus")
    # an existing folder keeps its classes: the field shows them and cannot be edited
    TrainingFolder.create(tmp_path / "cells", classes=("background", "cell"), task="instance")
    ex.folder.value = str(tmp_path / "cells")
    assert ex.classes.value == "background, cell" and not ex.classes.enabled and not ex.task.enabled
    ex._defaults_from_provenance()                      # the model's classes do not overwrite the folder's
    assert ex.classes.value == "background, cell"
    run_export(qtbot, ex)
    assert "exported" in ex.status.value, ex.status.value
    assert TrainingFolder.open(tmp_path / "cells").info.classes == ("background", "cell")
    ex.folder.value = str(tmp_path / "another new one")
    assert ex.classes.enabled
