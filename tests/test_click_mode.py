"""Click to segment in the Proofread widget: a real napari viewer under Xvfb, real mouse and key events,
a real (tiny) interactive model package saved in tmp_path.

The model's last convolution is set to always answer "object" (zero weights, bias +10 for class 1), so the
candidate is exactly the model's window around the prompt clipped to the image: the tests can say where the
object must be without a trained network, and everything else (window, previous mask, threading, writing,
undo, provenance, export) runs for real.
"""

import json

import numpy as np
import pytest

napari = pytest.importorskip("napari")

from qtpy.QtCore import QPoint, Qt  # noqa: E402

from segloop._napari._regions import view_box  # noqa: E402
from segloop._napari.click_mode import CANDIDATE_LAYER, CLICKS_LAYER, LOAD_PACKAGE  # noqa: E402
from segloop._napari.correction_tracking import tracker_for  # noqa: E402
from segloop._napari.export_widget import ExportWidget  # noqa: E402
from segloop._napari.proofread_widget import ProofreadWidget  # noqa: E402
from segloop.core.formats.package import ModelSpec, read_spec, save_package  # noqa: E402
from segloop.core.formats.prompt import PromptSpec  # noqa: E402
from segloop.core.networks import build  # noqa: E402

WAIT = 30_000          # ms: a guard against hanging, not a timing assertion
CROP = 32


@pytest.fixture
def click_model(tmp_path, monkeypatch):
    """A tiny interactive package on $SEGLOOP_MODEL_PATH whose candidate is its whole window."""
    import torch

    spec = ModelSpec(name="toy-click", version="0.1", architecture="unet",
                     architecture_kwargs={"base_width": 4, "depth": 2}, dims=2, in_channels=1 + 4,
                     classes=("background", "object"), task="interactive", postprocess={},
                     normalization={"kind": "percentile"}, prompt=PromptSpec(crop=CROP).to_dict())
    state = build("unet", 5, 2, dims=2, base_width=4, depth=2).state_dict()
    state["head.weight"] = torch.zeros_like(state["head.weight"])
    state["head.bias"] = torch.tensor([-10.0, 10.0])
    models = tmp_path / "models"
    save_package(models / "toy-click", spec, state)
    monkeypatch.setenv("SEGLOOP_MODEL_PATH", str(models))
    return models / "toy-click"


def setup(make_napari_viewer, qtbot, *, image=None, labels=None, model="toy-click"):
    viewer = make_napari_viewer(show=True)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (120, 160), dtype=np.uint8) if image is None else image
    viewer.add_image(image, name="img")
    shape = (image[0] if isinstance(image, list) else image).shape
    layer = viewer.add_labels(np.zeros(shape, np.uint16) if labels is None else labels.copy(), name="labels")
    widget = ProofreadWidget(viewer)
    viewer.window.add_dock_widget(widget)
    section = widget.click_mode
    if model is not None:
        section.model.value = model
    viewer.layers.selection.active = layer
    layer.mode = "pan_zoom"
    viewer.reset_view()
    qtbot.wait(50)
    return viewer, layer, widget, section


def canvas_point(viewer, data_yx) -> QPoint:
    """Canvas pixel of an in-plane data point (2D view, scale 1)."""
    canvas = viewer.window._qt_viewer.canvas
    h, w = canvas.size
    cy, cx = viewer.scene.camera.center[-2:]
    z = viewer.scene.camera.zoom
    return QPoint(int(round((data_yx[1] - cx) * z + w / 2)), int(round((data_yx[0] - cy) * z + h / 2)))


def click(qtbot, viewer, data_yx, mod=Qt.KeyboardModifier.NoModifier):
    native = viewer.window._qt_viewer.canvas.native
    qtbot.mouseClick(native, Qt.MouseButton.LeftButton, mod, pos=canvas_point(viewer, data_yx))
    qtbot.wait(10)


def key(qtbot, viewer, k):
    native = viewer.window._qt_viewer.canvas.native
    native.setFocus()
    qtbot.keyClick(native, k)
    qtbot.wait(10)


def settle(qtbot, section):
    qtbot.waitUntil(lambda: not section.busy, timeout=WAIT)
    qtbot.wait(10)


def window_of(y, x, side=CROP):
    """The rows/cols the model's window covers for one click (see interactive.prompt_window)."""
    y0, x0 = int(round(y + 0.5 - side / 2)), int(round(x + 0.5 - side / 2))
    return slice(y0, y0 + side), slice(x0, x0 + side)


def test_click_previews_shift_click_is_negative_enter_adds_one_label_in_one_undo_step(
        make_napari_viewer, qtbot, click_model):
    labels = np.zeros((120, 160), np.uint16)
    labels[5:20, 5:20] = 1                                   # a person's object elsewhere
    viewer, layer, w, section = setup(make_napari_viewer, qtbot, labels=labels)
    original = layer.data.copy()
    section.toggle.value = True
    assert layer.mode == "pan_zoom"

    click(qtbot, viewer, (60, 80))
    assert section.positive and np.allclose(section.positive[0], (60, 80), atol=1)
    assert w.selected == []                                  # a click in click mode does not select labels
    settle(qtbot, section)
    cand = viewer.layers[CANDIDATE_LAYER]
    assert cand.visible and (cand.data > 0).sum() == CROP * CROP     # the window around the click
    np.testing.assert_array_equal(layer.data, original)      # a preview only: labels untouched
    assert "ms per click" in section.status.value

    click(qtbot, viewer, (62, 90), mod=Qt.KeyboardModifier.ShiftModifier)
    assert len(section.positive) == 1 and len(section.negative) == 1
    pts = viewer.layers[CLICKS_LAYER]
    assert len(pts.data) == 2
    assert pts.face_color[0][1] > 0.8 > pts.face_color[0][0]        # green: positive
    assert pts.face_color[1][0] > 0.8 > pts.face_color[1][1]        # red: negative
    settle(qtbot, section)
    assert section.candidate.n_clicks == 2
    neg = np.round(section.negative[0]).astype(int)
    mask = section.candidate.mask
    oy, ox = section.candidate.offset
    assert not mask[neg[0] - oy, neg[1] - ox]                # the negative click's pixel is not object
    expected = np.zeros_like(original, bool)
    expected[oy:oy + mask.shape[0], ox:ox + mask.shape[1]] = mask

    key(qtbot, viewer, Qt.Key.Key_Return)                    # Enter accepts
    assert set(np.unique(layer.data)) == {0, 1, 2}
    np.testing.assert_array_equal(layer.data == 2, expected)
    np.testing.assert_array_equal(layer.data == 1, original == 1)
    assert section.positive == [] and len(viewer.layers[CLICKS_LAYER].data) == 0
    assert not viewer.layers[CANDIDATE_LAYER].visible

    (entry,) = layer.metadata["segloop"]["prompted"]
    spec = read_spec(click_model)
    assert entry["label"] == 2 and entry["clicks"] == 2 and entry["positive"] == 1 and entry["negative"] == 1
    assert entry["box"] is None and entry["plane"] is None and entry["pixels"] == int(expected.sum())
    assert entry["model"] == {"name": "toy-click", "version": "0.1", "sha256": spec.sha256}
    rows, cols = np.nonzero(expected)
    assert entry["bbox"] == [[int(rows.min()), int(rows.max()) + 1], [int(cols.min()), int(cols.max()) + 1]]
    assert tracker_for(layer).reviewed.mask()[expected].all()        # the object's box is reviewed

    layer.undo()                                             # one step undoes the whole object
    np.testing.assert_array_equal(layer.data, original)


def test_candidate_never_overwrites_a_persons_object_unless_asked(make_napari_viewer, qtbot, click_model):
    labels = np.zeros((120, 160), np.uint16)
    labels[40:70, 60:90] = 1
    viewer, layer, w, section = setup(make_napari_viewer, qtbot, labels=labels)
    rows, cols = window_of(60, 100)                         # overlaps object 1 in columns 84..89
    assert section.add_click((60, 100))
    settle(qtbot, section)
    assert "on other objects are kept" in section.status.value
    new = section.accept()
    assert new == 2
    np.testing.assert_array_equal(layer.data == 1, labels == 1)       # object 1 intact
    window = np.zeros(labels.shape, bool)
    window[rows, cols] = True
    np.testing.assert_array_equal(layer.data == 2, window & (labels == 0))
    assert layer.metadata["segloop"]["prompted"][0]["overwritten"] == 0

    section.replace.value = True                             # explicit: replace what lies under it
    assert section.add_click((60, 100))
    settle(qtbot, section)
    assert section.accept() == 3
    np.testing.assert_array_equal(layer.data == 3, window)
    assert layer.metadata["segloop"]["prompted"][1]["overwritten"] == int(window.sum())   # objects 1 and 2


def test_export_meta_lists_the_prompted_objects_still_in_the_crop(make_napari_viewer, qtbot, click_model, tmp_path):
    viewer, layer, w, section = setup(make_napari_viewer, qtbot)
    for yx in ((30, 30), (80, 120)):
        assert section.add_click(yx)
        settle(qtbot, section)
        section.accept()
    assert np.unique(layer.data).tolist() == [0, 1, 2]
    section.add_click((30, 60))
    settle(qtbot, section)
    section.accept()                                         # label 3 ...
    layer.undo()                                             # ... undone: not in the sample
    assert 3 not in layer.data
    camera = viewer.scene.camera                             # the view: labels 1 and (undone) 3, not 2
    camera.center, camera.zoom = (40, 40), viewer.window._qt_viewer.canvas.size[1] / 90
    qtbot.wait(50)
    view = view_box(layer)
    assert view[0].start <= 14 and view[1].start <= 14 and view[1].stop < 104, view

    export = ExportWidget(viewer)
    viewer.window.add_dock_widget(export)
    export.image.value = viewer.layers["img"]
    export.labels.value = layer
    export.folder.value = tmp_path / "train"
    export.what.value = "current view"
    export.split.value = "train"
    worker = export.export()
    assert worker is not None
    qtbot.waitUntil(lambda: export._worker is None, timeout=WAIT)
    assert export.last, export.status.value
    meta = json.loads((tmp_path / "train" / "samples" / export.last["ids"][0] / "meta.json").read_text())
    prompted = meta["extra"]["prompted"]
    assert [p["label"] for p in prompted] == [1]
    assert prompted[0]["clicks"] == 1 and prompted[0]["model"]["name"] == "toy-click"
    assert prompted[0]["bbox"] == [[14, 46], [14, 46]]      # in the source image's coordinates, like "crop"


def test_a_newer_click_supersedes_a_result_still_on_its_way(make_napari_viewer, qtbot, click_model):
    viewer, layer, w, section = setup(make_napari_viewer, qtbot)
    section.toggle.value = True
    section.add_click((40, 40))
    section.add_click((44, 50))                              # before the first result could be drawn
    settle(qtbot, section)
    assert section.dropped == 1                              # the one-click result came back stale
    assert section.drawn == [section._generation]            # only the newest prompt was drawn
    assert section.candidate.n_clicks == 2

    section.add_click((50, 52))
    key(qtbot, viewer, Qt.Key.Key_Escape)                    # Esc while segmenting: clicks, candidate gone
    settle(qtbot, section)
    assert section.candidate is None and section.positive == []
    assert len(viewer.layers[CLICKS_LAYER].data) == 0 and not viewer.layers[CANDIDATE_LAYER].visible
    assert not layer.data.any()


def test_enter_while_segmenting_accepts_the_newest_candidate_when_it_is_ready(make_napari_viewer, qtbot, click_model):
    viewer, layer, w, section = setup(make_napari_viewer, qtbot)
    section.add_click((60, 80))
    assert section.accept() == 0                             # nothing to write yet ...
    settle(qtbot, section)
    rows, cols = window_of(60, 80)
    assert (layer.data[rows, cols] == 1).all() and (layer.data == 1).sum() == CROP * CROP   # ... then written


def test_segment_box_uses_the_last_rectangle_of_the_selected_shapes_layer(make_napari_viewer, qtbot, click_model):
    viewer, layer, w, section = setup(make_napari_viewer, qtbot)
    shapes = viewer.add_shapes([np.array([[5, 5], [15, 15]]), np.array([[50, 60], [70, 100]])],
                               shape_type="rectangle", name="boxes")
    section.toggle.value = True
    assert section.segment_box()
    assert viewer.layers.selection.active is layer           # Enter goes to the labels again
    settle(qtbot, section)
    assert section.box == (50.0, 60.0, 70.0, 100.0)
    c = section.candidate
    oy, ox = c.offset
    assert oy <= 50 and ox <= 60 and oy + c.mask.shape[0] >= 70 and ox + c.mask.shape[1] >= 100
    key(qtbot, viewer, Qt.Key.Key_Return)
    assert layer.data[60, 80] == 1
    entry = layer.metadata["segloop"]["prompted"][0]
    assert entry["box"] == [50.0, 60.0, 70.0, 100.0] and entry["clicks"] == 0
    assert shapes in viewer.layers


@pytest.mark.parametrize("case", ["outside", "shape", "zero box", "no model", "3d view"])
def test_bad_input_is_a_notification_and_changes_nothing(make_napari_viewer, qtbot, click_model, notes, case):
    labels = np.zeros((100, 100) if case == "shape" else (120, 160), np.uint16)
    labels[10:20, 10:20] = 1
    viewer, layer, w, section = setup(make_napari_viewer, qtbot, labels=labels, model=None)
    if case != "no model":
        section.model.value = "toy-click"
    else:
        section.model.value = LOAD_PACKAGE                   # and no folder chosen
    before = layer.data.copy()
    if case == "outside":
        ok, expect = section.add_click((-30, 500)), "outside the image"
    elif case == "shape":
        ok, expect = section.add_click((50, 50)), "spatial shape"
    elif case == "zero box":
        viewer.add_shapes([np.array([[10, 10], [10, 40]])], shape_type="rectangle", name="flat")
        ok, expect = section.segment_box(), "no area"
    elif case == "no model":
        ok, expect = section.add_click((50, 50)), "no interactive model chosen"
    else:
        viewer.dims.ndisplay = 3
        ok, expect = section.add_click((50, 50)), "2D view"
    qtbot.wait(20)
    assert ok is False
    assert any(expect in n for n in notes), notes
    assert expect in section.status.value
    assert not section.busy and section.positive == [] and section.box is None
    assert CLICKS_LAYER not in viewer.layers and CANDIDATE_LAYER not in viewer.layers
    np.testing.assert_array_equal(layer.data, before)


def test_an_automatic_model_is_refused_with_a_notification(make_napari_viewer, qtbot, click_model, tiny_package,
                                                            notes):
    viewer, layer, w, section = setup(make_napari_viewer, qtbot, model=LOAD_PACKAGE)
    section.package.value = tiny_package                     # an instance (automatic) model
    assert section.add_click((60, 80))
    settle(qtbot, section)
    qtbot.waitUntil(lambda: any("automatic" in n for n in notes), timeout=WAIT)
    assert "automatic" in section.status.value and section.candidate is None
    assert section.accept() == 0
    assert not layer.data.any()


def test_click_models_are_offered_in_proofread_and_left_out_of_segment(make_napari_viewer, qtbot, click_model):
    from segloop._napari.segment_widget import SegmentWidget

    viewer, layer, w, section = setup(make_napari_viewer, qtbot)
    seg = SegmentWidget(viewer)
    assert "toy-click" in section.model.choices
    assert "nuclei-unet" not in section.model.choices         # automatic models are Segment's
    assert "toy-click" not in seg.model.choices and "nuclei-unet" in seg.model.choices


def test_click_mode_off_keeps_selection_clicks(make_napari_viewer, qtbot, click_model):
    labels = np.zeros((120, 160), np.uint16)
    labels[40:70, 60:90] = 1
    viewer, layer, w, section = setup(make_napari_viewer, qtbot, labels=labels)
    click(qtbot, viewer, (55, 75))
    assert w.selected == [1] and not section.positive and not section.busy
    section.toggle.value = True
    click(qtbot, viewer, (55, 75))
    assert len(w.clicks) == 1 and len(section.positive) == 1      # a click segments, it does not select
    settle(qtbot, section)
    section.toggle.value = False                             # off: prompt and its layers go away
    assert CLICKS_LAYER not in viewer.layers and CANDIDATE_LAYER not in viewer.layers
    np.testing.assert_array_equal(layer.data, labels)


def test_volume_segments_the_current_plane_and_refuses_clicks_on_two_planes(make_napari_viewer, qtbot, click_model,
                                                                             notes):
    rng = np.random.default_rng(1)
    vol = rng.integers(0, 255, (6, 64, 80), dtype=np.uint8)
    viewer, layer, w, section = setup(make_napari_viewer, qtbot, image=vol)
    section.toggle.value = True
    viewer.dims.set_point(0, 2)
    qtbot.wait(20)
    click(qtbot, viewer, (30, 40))
    assert len(section.positive) == 1 and round(section.positive[0][0]) == 2     # clicks carry z
    settle(qtbot, section)
    assert section.candidate.offset[0] == 2
    assert viewer.layers[CANDIDATE_LAYER].translate[0] == 2        # the preview lies on that plane

    viewer.dims.set_point(0, 4)
    qtbot.wait(20)
    click(qtbot, viewer, (30, 50))
    assert any("plane z=4" in n and "z=2" in n for n in notes), notes
    assert len(section.positive) == 1                        # the click on plane 4 was not taken

    key(qtbot, viewer, Qt.Key.Key_Return)
    assert layer.data[2].any() and not np.delete(layer.data, 2, axis=0).any()
    assert (layer.data[2] == 1).sum() == CROP * CROP
    assert layer.metadata["segloop"]["prompted"][0]["plane"] == [2]
    assert layer.metadata["segloop"]["prompted"][0]["bbox"][0] == [2, 3]


def test_multiscale_image_is_read_at_its_finest_level(make_napari_viewer, qtbot, click_model):
    rng = np.random.default_rng(2)
    level0 = rng.integers(0, 255, (256, 320), dtype=np.uint8)
    pyramid = [level0, level0[::2, ::2].copy(), level0[::4, ::4].copy()]
    viewer, layer, w, section = setup(make_napari_viewer, qtbot, image=pyramid)
    assert viewer.layers["img"].multiscale
    assert section.add_click((200, 310))
    settle(qtbot, section)
    rows, cols = window_of(200, 310)
    assert section.candidate.offset == (rows.start, cols.start)
    assert section.candidate.mask.shape == (CROP, min(CROP, 320 - cols.start))   # clipped at the image's edge
    assert section.accept() == 1
    assert (layer.data[rows, cols.start:] == 1).all()
