"""Active-learning widget in a real napari viewer (Xvfb, pytest-qt) with the bundled nuclei-unet on BBBC007:
find regions, Next / Skip / Previous, the reviewed mask Export writes, stacks, resume from the training
folder, cancel, layers removed mid-run, errors as notifications."""

import numpy as np
import pytest

napari = pytest.importorskip("napari")

from segloop._napari.active_widget import STATE_KEY, ActiveLearningWidget  # noqa: E402
from segloop._napari.correction_tracking import track, tracker_for  # noqa: E402
from segloop._napari.export_widget import ExportWidget  # noqa: E402
from segloop.core.editing.corrections import PredictionSnapshot  # noqa: E402

SCALE, TRANSLATE = (0.5, 0.5), (10.0, 20.0)
STATE_FILE = "segloop-active-learning.json"


@pytest.fixture(scope="module")
def nuclei_prediction(nuclei_image):
    """What Segment would add for the nuclei image: labels and their provenance (bundled model, CPU)."""
    import segloop

    res = segloop.load_model("nuclei-unet", device="cpu").predict(nuclei_image)
    return res.labels, res.provenance


def add_segmented(viewer, image, labels, prov, name="nuclei", **geo):
    """The layers Segment leaves behind: the image and a tracked Labels layer naming its model."""
    img = viewer.add_image(image, name=name, **geo)
    lab = viewer.add_labels(labels.copy(), name=f"{name} · nuclei-unet v1.0.0",
                            metadata={"segloop": {**prov, "source_layer": name}}, **geo)
    track(lab, snapshot=PredictionSnapshot(labels))
    return img, lab


def make(make_napari_viewer, qtbot, image, labels, prov, *, folder=None, **geo):
    viewer = make_napari_viewer(show=True)
    img, lab = add_segmented(viewer, image, labels, prov, **geo)
    w = ActiveLearningWidget(viewer)
    viewer.window.add_dock_widget(w)
    qtbot.wait(10)
    w.device.value = "cpu"
    w.size.value = 128
    w.budget.value = 4
    if folder is not None:
        w.folder.value = str(folder)
    return viewer, img, lab, w


def find(qtbot, w, timeout=180_000):
    worker = w.find()
    assert worker is not None, w.status.value
    qtbot.waitUntil(lambda: not w.running, timeout=timeout)
    return worker


def world_box(layer, box):
    """World (min, max) corners of a data box ((start, stop), ...), pixel edges."""
    b = np.asarray(box, float)
    return (np.asarray(layer.data_to_world(b[:, 0] - 0.5)), np.asarray(layer.data_to_world(b[:, 1] - 0.5)))


def camera_center(viewer):
    cam = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    return np.asarray(cam.center, float)


def assert_view_on(viewer, layer, region):
    lo, hi = world_box(layer, region.box)
    centre = camera_center(viewer)[-2:]
    assert np.all(centre >= lo[-2:]) and np.all(centre <= hi[-2:]), (centre, lo, hi)


def box_mask(shape, boxes):
    m = np.zeros(shape, np.uint8)
    for box in boxes:
        m[tuple(slice(a, b) for a, b in box)] = 1
    return m


def test_find_regions_adds_heatmap_overlay_state_and_jumps_to_the_first(make_napari_viewer, qtbot, tmp_path,
                                                                       nuclei_image, nuclei_prediction):
    folder = tmp_path / "training"
    viewer, img, lab, w = make(make_napari_viewer, qtbot, nuclei_image, *nuclei_prediction, folder=folder,
                               scale=SCALE, translate=TRANSLATE)
    assert w.image.value is img and w.labels.value is lab
    assert w.model.value == "nuclei-unet"                      # the model Segment recorded
    assert not w.mc_dropout.enabled                            # nuclei-unet has no dropout
    assert w.kind.choices == ("tile",)                         # slice / sub-volume only for stacks
    find(qtbot, w)
    heat = viewer.layers[f"{lab.name} · uncertainty"]
    assert heat.data.shape == nuclei_image.shape and heat.colormap.name == "inferno"
    assert tuple(heat.scale) == SCALE and tuple(heat.translate) == TRANSLATE
    assert 0 <= float(heat.data.min()) and float(heat.data.max()) <= 1 and float(heat.data.max()) > 0
    overlay = viewer.layers[f"{lab.name} · regions"]
    assert overlay._type_string == "shapes" and len(overlay.data) == 4
    assert tuple(overlay.scale) == SCALE and tuple(overlay.translate) == TRANSLATE
    st = w.state
    assert len(st.queue) == 4 and st.cursor == 0 and st.n_reviewed == 0
    scores = [r.score for r in st.queue]
    assert scores == sorted(scores, reverse=True)              # uncertainty strategy: most uncertain first
    assert w.reviewed_text.value.startswith("0 of 4 regions reviewed")
    assert_view_on(viewer, lab, st.current())
    assert (folder / STATE_FILE).is_file() and (folder / "segloop-training.json").is_file()
    assert viewer.layers.selection.active is lab               # the brush stays on the labels
    assert not tracker_for(lab).reviewed.boxes                 # finding marks nothing


def test_next_marks_the_region_reviewed_and_export_writes_it(make_napari_viewer, qtbot, tmp_path, nuclei_image,
                                                             nuclei_prediction):
    from segloop.core.formats.trainfolder import TrainingFolder

    folder = tmp_path / "training"
    viewer, img, lab, w = make(make_napari_viewer, qtbot, nuclei_image, *nuclei_prediction, folder=folder,
                               scale=SCALE, translate=TRANSLATE)
    find(qtbot, w)
    first, second = w.state.queue[:2]
    w.next()
    assert w.state.current() == second and first.key in w.state.reviewed
    assert_view_on(viewer, lab, second)
    assert w.reviewed_text.value.startswith("1 of 4 regions reviewed")
    assert np.array_equal(tracker_for(lab).reviewed_mask(), box_mask(nuclei_image.shape, [first.box]))
    overlay = viewer.layers[f"{lab.name} · regions"]
    assert overlay.face_color[0][3] > 0 and overlay.face_color[2][3] == 0   # reviewed filled, queued outlined
    ex = ExportWidget(viewer)
    ex.image.value, ex.labels.value = img, lab
    ex.folder.value = str(folder)
    ex.what.value = "whole image"
    ex.split.value = "train"                                   # no held-out rows: the whole mask is compared
    assert ex.export() is not None
    qtbot.waitUntil(lambda: ex._worker is None, timeout=60_000)
    assert "exported" in ex.status.value, ex.status.value
    tf = TrainingFolder.open(folder)
    (rec,) = tf.samples()
    sample = tf.read_sample(rec)
    assert np.array_equal(sample.reviewed, box_mask(nuclei_image.shape, [first.box]))
    assert (folder / STATE_FILE).is_file()                     # the state sits beside the samples
    assert str(ActiveLearningWidget(viewer).folder.value) == str(folder)   # defaults to Export's folder


def test_skip_does_not_mark_and_previous_goes_back(make_napari_viewer, qtbot, nuclei_image, nuclei_prediction):
    viewer, img, lab, w = make(make_napari_viewer, qtbot, nuclei_image, *nuclei_prediction)
    find(qtbot, w)
    first, second = w.state.queue[:2]
    assert not w.prev_button.enabled
    w.skip()
    assert w.state.current() == second and first.key in w.state.skipped
    assert not tracker_for(lab).reviewed.boxes and w.state.n_reviewed == 0
    assert_view_on(viewer, lab, second)
    assert w.prev_button.enabled
    w.previous()
    assert w.state.current() == first and not tracker_for(lab).reviewed.boxes
    assert_view_on(viewer, lab, first)
    assert w.reviewed_text.value.startswith("0 of 4 regions reviewed")
    # without a training folder the state lives on the labels layer
    assert lab.metadata[STATE_KEY] is w.state


def test_budget_reached_points_to_export_and_finetune(make_napari_viewer, qtbot, nuclei_image, nuclei_prediction,
                                                     notes):
    viewer, img, lab, w = make(make_napari_viewer, qtbot, nuclei_image, *nuclei_prediction)
    w.budget.value = 2
    find(qtbot, w)
    assert len(w.state.queue) == 2
    w.next()
    assert "Budget reached" not in w.status.value
    w.next()
    assert w.reviewed_text.value.startswith("2 of 2 regions reviewed")
    assert "Budget reached" in w.status.value and "Export" in w.status.value and "Fine-tune" in w.status.value
    assert any("Budget reached" in n for n in notes)
    assert not w.next_button.enabled and not w.skip_button.enabled
    assert np.array_equal(tracker_for(lab).reviewed_mask(),
                          box_mask(nuclei_image.shape, [r.box for r in w.state.queue]))


def test_stack_next_sets_the_slice_for_slices_and_sub_volumes(make_napari_viewer, qtbot, nuclei_image):
    import segloop

    stack = np.stack([nuclei_image[:96, :96], nuclei_image[96:192, :96], nuclei_image[:96, 96:192],
                      nuclei_image[96:192, 96:192], nuclei_image[192:288, :96], nuclei_image[:96, 192:288]])
    res = segloop.load_model("nuclei-unet", device="cpu").predict(stack)
    scale = (2.0, 0.5, 0.5)
    viewer, img, lab, w = make(make_napari_viewer, qtbot, stack, res.labels, res.provenance, scale=scale)
    assert set(w.kind.choices) == {"tile", "slice", "sub-volume"}
    w.kind.value = "slice"
    w.budget.value = 3
    find(qtbot, w)
    first, second = w.state.queue[:2]
    assert first.box[0][1] - first.box[0][0] == 1                            # one whole plane
    assert viewer.dims.current_step[0] == first.box[0][0]
    w.next()
    assert viewer.dims.current_step[0] == second.box[0][0]
    assert_view_on(viewer, lab, second)
    mask = tracker_for(lab).reviewed_mask()
    assert mask[first.box[0][0]].all() and mask.sum() == mask[first.box[0][0]].size
    overlay = viewer.layers[f"{lab.name} · regions"]
    assert len(overlay.data) == 3 and np.asarray(overlay.data[0])[:, 0].tolist() == [first.box[0][0]] * 4

    w.kind.value = "sub-volume"
    w.size.value = 48
    w.budget.value = 2
    find(qtbot, w)
    sub = w.state.current()
    assert sub.box[0] == (0, 6) and len(w.state.queue) == 2
    # regions reviewed in the slice round are not excluded here (another kind), none lost from the tracker
    w.skip()
    nxt = w.state.current()
    assert viewer.dims.current_step[0] == (nxt.box[0][0] + nxt.box[0][1] - 1) // 2
    assert_view_on(viewer, lab, nxt)


def test_progress_is_saved_in_the_training_folder_and_resumed_by_a_new_widget(make_napari_viewer, qtbot, tmp_path,
                                                                               nuclei_image, nuclei_prediction):
    folder = tmp_path / "training"
    viewer, img, lab, w = make(make_napari_viewer, qtbot, nuclei_image, *nuclei_prediction, folder=folder)
    find(qtbot, w)
    queue = list(w.state.queue)
    w.next()
    w.skip()
    assert w.state.cursor == 2

    # tomorrow: a new viewer, the image opened again and segmented again, a new widget
    labels, prov = nuclei_prediction
    viewer2 = make_napari_viewer(show=True)
    img2, lab2 = add_segmented(viewer2, nuclei_image, labels, prov)
    w2 = ActiveLearningWidget(viewer2)
    viewer2.window.add_dock_widget(w2)
    w2.folder.value = str(folder)
    qtbot.wait(10)
    assert w2.resume_button.visible and "1 of 4 regions reviewed" in w2.resume_button.text
    assert w2.resume()
    st = w2.state
    assert [r.key for r in st.queue] == [r.key for r in queue]
    assert st.reviewed == [queue[0].key] and st.skipped == [queue[1].key] and st.cursor == 2
    assert w2.reviewed_text.value.startswith("1 of 4 regions reviewed")
    assert (w2.size.value, w2.budget.value, w2.strategy.value) == (128, 4, "uncertainty")
    overlay = viewer2.layers[f"{lab2.name} · regions"]
    assert overlay.face_color[0][3] > 0 and overlay.face_color[1][3] == 0
    assert_view_on(viewer2, lab2, queue[2])
    w2.next()
    assert set(w2.state.reviewed) == {queue[0].key, queue[2].key}
    # a new round excludes what was reviewed before
    find(qtbot, w2)
    assert not {queue[0].key, queue[2].key} & {r.key for r in w2.state.queue}


def test_cancel_during_find_adds_nothing(make_napari_viewer, qtbot, nuclei_prediction, notes):
    big = np.random.default_rng(0).random((1536, 1536)).astype(np.float32)
    viewer = make_napari_viewer(show=True)
    viewer.add_image(big, name="big")
    viewer.add_labels(np.zeros(big.shape, np.uint16), name="big labels")
    w = ActiveLearningWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.device.value = "cpu"
    w.tta.value = True
    seen = []
    w._relay.progressed.connect(lambda stage, d, t: seen.append((stage, d, t)))
    w.find()
    qtbot.waitUntil(lambda: any(d > 0 for _, d, _ in seen), timeout=120_000)
    w.cancel()
    qtbot.waitUntil(lambda: not w.running, timeout=120_000)
    assert [la.name for la in viewer.layers] == ["big", "big labels"]
    assert w.state is None and "cancelled" in w.status.value and any("cancelled" in n for n in notes)
    assert w.find_button.enabled and not w.next_button.enabled


def test_labels_removed_mid_run_discards_the_result(make_napari_viewer, qtbot, nuclei_image, nuclei_prediction,
                                                     notes):
    viewer, img, lab, w = make(make_napari_viewer, qtbot, nuclei_image, *nuclei_prediction)
    assert w.find() is not None
    viewer.layers.remove(lab)
    qtbot.waitUntil(lambda: not w.running, timeout=180_000)
    assert [la.name for la in viewer.layers] == ["nuclei"]
    assert w.state is None and any("was removed while regions were being found" in n for n in notes)


def test_removing_the_labels_after_find_stops_navigation(make_napari_viewer, qtbot, nuclei_image,
                                                          nuclei_prediction):
    viewer, img, lab, w = make(make_napari_viewer, qtbot, nuclei_image, *nuclei_prediction)
    find(qtbot, w)
    viewer.layers.remove(lab)
    assert w.state is None and not w.next_button.enabled
    assert w.next() is None                                     # no crash


def test_errors_are_notifications_and_nothing_is_lost(make_napari_viewer, qtbot, tmp_path, nuclei_image,
                                                      nuclei_prediction, notes):
    viewer, img, lab, w = make(make_napari_viewer, qtbot, nuclei_image, *nuclei_prediction)
    other = viewer.add_labels(np.zeros((100, 100), np.uint16), name="other")
    w.labels.value = other
    w.image.value = img
    assert w.find() is None and any("different" in n or "spatial shape" in n for n in notes)
    w.labels.value = lab
    w.model.value = "Load package…"
    w.package.value = ""
    assert w.find() is None and any("choose a model" in n for n in notes)
    w.model.value = "nuclei-unet"
    w.entropy.value = False
    assert w.find() is None and any("uncertainty method" in n for n in notes)
    w.entropy.value = True
    blocker = tmp_path / "a file"
    blocker.write_text("not a folder")
    w.folder.value = str(blocker / "training")                 # cannot be created: saving fails
    find(qtbot, w)
    assert w.state is not None and any("could not save" in n for n in notes)
    w.next()
    assert w.state.n_reviewed == 1 and lab.metadata[STATE_KEY] is w.state   # kept with the layer
    assert tracker_for(lab).reviewed.boxes


def test_the_widget_opens_from_the_plugin_menu(make_napari_viewer):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-segloop", "Active learning")
    assert isinstance(widget, ActiveLearningWidget)


def test_tta_with_diversity_then_a_random_round_reuse_the_layers(make_napari_viewer, qtbot, nuclei_image, nuclei_prediction):
    viewer, img, lab, w = make(make_napari_viewer, qtbot, nuclei_image, *nuclei_prediction)
    w.tta.value = True
    w.strategy.value = "uncertainty + diversity"
    find(qtbot, w)
    st = w.state
    assert st.strategy == "diversity" and st.model["methods"] == ["entropy", "tta"]
    assert len({r.key for r in st.queue}) == 4
    heat = viewer.layers[f"{lab.name} · uncertainty"]
    assert float(heat.data.max()) > 0
    w.strategy.value = "random"
    find(qtbot, w)                                             # a second round: the heatmap layer is reused
    assert w.state.strategy == "random" and len(w.state.queue) == 4
    assert [la.name for la in viewer.layers].count(f"{lab.name} · uncertainty") == 1
    assert [la.name for la in viewer.layers].count(f"{lab.name} · regions") == 1


def test_mc_dropout_is_offered_only_for_a_model_with_dropout(make_napari_viewer, qtbot, tmp_path, nuclei_image):
    import segloop
    from segloop.core.formats.package import save_package

    from .conftest import tiny_spec, tiny_state

    spec = tiny_spec(name="tiny-dropout", architecture_kwargs={"depth": 2, "base_width": 4, "norm": "batch",
                                                               "dropout": 0.3})
    pkg = tmp_path / "tiny-dropout"
    save_package(pkg, spec, tiny_state(spec))
    image = nuclei_image[:128, :128]
    res = segloop.load_model(pkg, device="cpu").predict(image)
    viewer, img, lab, w = make(make_napari_viewer, qtbot, image, res.labels, res.provenance)
    assert w.model.value == "Load package…" and str(w.package.value) == str(pkg)   # recorded on the labels
    assert w.mc_dropout.enabled
    w.mc_dropout.value = True
    w.size.value = 64
    find(qtbot, w)
    assert w.state.model["methods"] == ["entropy", "mc_dropout"] and w.state.model["name"] == "tiny-dropout"
    w.model.value = "nuclei-unet"
    assert not w.mc_dropout.enabled and not w.mc_dropout.value


def test_two_images_in_one_folder_each_resume_their_own_round(make_napari_viewer, qtbot, tmp_path, nuclei_image):
    import segloop
    from segloop.core.learning.state import ActiveLearningState

    folder = tmp_path / "training"
    model = segloop.load_model("nuclei-unet", device="cpu")
    crops = {"a": nuclei_image[:256, :256], "b": nuclei_image[194:, 194:]}
    preds = {k: model.predict(v) for k, v in crops.items()}
    viewer = make_napari_viewer(show=True)
    layers = {k: add_segmented(viewer, crops[k], preds[k].labels, preds[k].provenance, name=k) for k in crops}
    w = ActiveLearningWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.device.value, w.size.value, w.budget.value, w.folder.value = "cpu", 64, 3, str(folder)
    firsts = {}
    for k in ("a", "b"):
        w.labels.value = layers[k][1]
        assert w.image.value is layers[k][0]                     # the image the labels were segmented from
        find(qtbot, w)
        firsts[k] = w.state.current()
        w.next()
    saved = ActiveLearningState.load(folder)
    assert {r.image for r in saved.queue} == {"b"}
    assert {firsts["a"].key, firsts["b"].key} <= set(saved.reviewed)   # earlier rounds' keys carried over

    viewer2 = make_napari_viewer(show=True)
    add_segmented(viewer2, crops["a"], preds["a"].labels, preds["a"].provenance, name="a")
    w2 = ActiveLearningWidget(viewer2)
    viewer2.window.add_dock_widget(w2)
    w2.folder.value = str(folder)
    assert w2.resume()
    assert {r.image for r in w2.state.queue} == {"a"} and w2.state.cursor == 1
    assert firsts["a"].key in w2.state.reviewed


def test_a_corrupt_state_file_is_reported_and_replaced_by_a_new_round(make_napari_viewer, qtbot, tmp_path,
                                                                      nuclei_image, nuclei_prediction):
    from segloop.core.formats.trainfolder import TrainingFolder
    from segloop.core.learning.state import ActiveLearningState

    folder = tmp_path / "training"
    TrainingFolder.create(folder, classes=["background", "nucleus"], task="instance")
    (folder / STATE_FILE).write_text('{"format": "segloop-active-learning", "format_ver')   # truncated
    viewer, img, lab, w = make(make_napari_viewer, qtbot, nuclei_image, *nuclei_prediction, folder=folder)
    qtbot.wait(10)
    assert "not valid JSON" in w.status.value and not w.resume_button.visible
    assert not w.resume()
    find(qtbot, w)
    assert ActiveLearningState.load(folder).queue == w.state.queue
