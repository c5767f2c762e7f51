"""The Segment dock widget in a real napari viewer under Xvfb (pytest-qt)."""

import numpy as np
import pytest

napari = pytest.importorskip("napari")


from segloop._napari.segment_widget import LOAD_PACKAGE, SegmentWidget  # noqa: E402


def make(make_napari_viewer, image=None, **image_kwargs):
    viewer = make_napari_viewer()
    if image is not None:
        viewer.add_image(image, **image_kwargs)
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    return viewer, widget


def use_package(widget, path):
    widget.model.value = LOAD_PACKAGE
    widget.package.value = str(path)


def wait(qtbot, widget, timeout=120_000):
    qtbot.waitUntil(lambda: not widget.running, timeout=timeout)


def start_long_run(make_napari_viewer, tiny_package):
    """A 2048^2 image in 64 px tiles with the tiny model: ~1000 tiles, long enough to interrupt."""
    big = np.random.default_rng(0).random((2048, 2048)).astype(np.float32)
    viewer, w = make(make_napari_viewer, big, name="big")
    use_package(w, tiny_package)
    w.tile.value = 64
    return viewer, w


def labels_layers(viewer):
    return [layer for layer in viewer.layers if layer._type_string == "labels"]


def test_segment_adds_a_named_labels_layer_with_provenance_and_geometry(make_napari_viewer, qtbot, nuclei_image):
    viewer, w = make(make_napari_viewer, nuclei_image, name="nuclei", scale=(0.5, 0.5), translate=(10, 20))
    progress = []
    w._relay.progressed.connect(lambda d, t: progress.append((d, t)))
    w.model.value = "nuclei-unet"                          # chosen: the pick for fluorescence may be another
    assert w.image.value is viewer.layers["nuclei"]
    w.run()
    assert w.running and not w.run_button.enabled and w.cancel_button.enabled
    wait(qtbot, w)
    (lab,) = labels_layers(viewer)
    assert lab.name == "nuclei · nuclei-unet v1.0.0"
    assert tuple(lab.scale) == (0.5, 0.5) and tuple(lab.translate) == (10, 20)
    assert lab.data.shape == nuclei_image.shape and lab.data.max() > 50
    prov = lab.metadata["segloop"]
    assert prov["model"]["name"] == "nuclei-unet" and prov["model"]["sha256"]
    assert progress and progress[-1][0] == progress[-1][1] > 0
    assert "objects in" in w.status.value and w.run_button.enabled and not w.progress.visible


def test_rerunning_adds_a_new_layer_and_never_touches_an_edited_one(make_napari_viewer, qtbot, nuclei_image):
    viewer, w = make(make_napari_viewer, nuclei_image, name="nuclei")
    w.run()
    wait(qtbot, w)
    first = labels_layers(viewer)[0]
    first.data[:5, :5] = 999                 # a person's edit
    w.run()
    wait(qtbot, w)
    assert len(labels_layers(viewer)) == 2
    assert (first.data[:5, :5] == 999).all()


def test_cancel_stops_the_run_and_adds_nothing(make_napari_viewer, qtbot, tiny_package, notes):
    viewer, w = start_long_run(make_napari_viewer, tiny_package)
    started = []
    w._relay.progressed.connect(lambda d, t: started.append(d))
    w.run()
    qtbot.waitUntil(lambda: len(started) > 0, timeout=60_000)
    w.cancel()
    wait(qtbot, w)
    assert not labels_layers(viewer)
    assert "cancelled" in w.status.value and any("cancelled" in n for n in notes)
    assert started[-1] < 1025                 # stopped long before the 1024 tiles


def test_a_model_that_fails_to_load_is_a_notification(make_napari_viewer, qtbot, tmp_path, nuclei_image, notes):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "segloop-model.json").write_text("{ not json")
    (broken / "model.safetensors").write_bytes(b"\0" * 10)
    viewer, w = make(make_napari_viewer, nuclei_image)
    use_package(w, broken)
    w.run()
    wait(qtbot, w)
    assert not labels_layers(viewer)
    assert any("not valid JSON" in n for n in notes) and w.run_button.enabled


def test_a_click_model_chosen_as_a_package_is_a_notification(make_napari_viewer, qtbot, tmp_path, nuclei_image,
                                                              notes):
    from tests.test_interactive import _package

    viewer, w = make(make_napari_viewer, nuclei_image)
    use_package(w, _package(tmp_path / "click"))
    w.run()
    wait(qtbot, w)
    assert not labels_layers(viewer)
    assert any("interactive (click) model" in n and "Proofread" in n for n in notes) and w.run_button.enabled


def test_no_image_layer_and_shapes_layers_are_not_offered(make_napari_viewer, notes):
    viewer, w = make(make_napari_viewer)
    viewer.add_shapes([[0, 0], [10, 10], [0, 10]], shape_type="polygon")
    viewer.add_points([[1, 1]])
    assert [c for c in w.image.choices if c is not None] == []
    w.run()
    assert not w.running and any("no image layer" in n for n in notes)


def test_rgb_histology_runs_through_hematoxylin_automatically(make_napari_viewer, qtbot, ihc_image):
    viewer, w = make(make_napari_viewer, ihc_image[:256, :256], name="ihc", rgb=True)
    w.model.value = "nuclei-unet"                          # a 1-channel model (the pick for IHC may take RGB)
    w.run()
    wait(qtbot, w)
    (lab,) = labels_layers(viewer)
    assert lab.data.shape == (256, 256)
    assert lab.metadata["segloop"]["parameters"]["normalization"]["kind"] == "hematoxylin"


def test_multiscale_and_dask_layers_use_level_zero(make_napari_viewer, qtbot, nuclei_image):
    da = pytest.importorskip("dask.array")
    pyramid = [da.from_array(nuclei_image, chunks=128), nuclei_image[::2, ::2]]
    viewer, w = make(make_napari_viewer, pyramid, name="pyr", multiscale=True)
    w.run()
    wait(qtbot, w)
    (lab,) = [la for la in labels_layers(viewer) if not la.name.endswith("tissue")]   # segmented like a slide
    assert lab.data.shape == nuclei_image.shape


def test_current_slice_of_a_stack(make_napari_viewer, qtbot, nuclei_image):
    stack = np.stack([np.zeros_like(nuclei_image), nuclei_image, np.zeros_like(nuclei_image)])
    viewer, w = make(make_napari_viewer, stack, name="stack")
    viewer.dims.set_current_step(0, 1)
    w.scope.value = "current slice"
    w.run()
    wait(qtbot, w)
    (lab,) = labels_layers(viewer)
    assert lab.data.shape == stack.shape
    assert lab.data[1].max() > 0 and lab.data[0].max() == 0 and lab.data[2].max() == 0


def test_deleting_the_image_mid_run_discards_the_result_without_crashing(make_napari_viewer, qtbot, nuclei_image,
                                                                         notes):
    viewer, w = make(make_napari_viewer, nuclei_image, name="nuclei")
    w.run()
    viewer.layers.remove("nuclei")
    wait(qtbot, w)
    assert not labels_layers(viewer) and any("was removed during the run" in n for n in notes)


def test_pressing_segment_twice_runs_once(make_napari_viewer, qtbot, nuclei_image, notes):
    viewer, w = make(make_napari_viewer, nuclei_image, name="nuclei")
    w.run()
    w.run()
    wait(qtbot, w)
    assert len(labels_layers(viewer)) == 1 and any("already running" in n for n in notes)


def test_uncertainty_layer_on_request(make_napari_viewer, qtbot, nuclei_image):
    viewer, w = make(make_napari_viewer, nuclei_image, name="nuclei")
    w.model.value = "nuclei-unet"
    w.uncertainty.value = True
    w.run()
    wait(qtbot, w)
    unc = viewer.layers["nuclei · nuclei-unet v1.0.0 · uncertainty"]
    assert unc.data.dtype == np.float16 and unc.data.shape == nuclei_image.shape


def test_the_result_is_inserted_one_piece_per_event_loop_turn_and_the_run_ends_after(make_napari_viewer, qtbot,
                                                                                      nuclei_image):
    from qtpy.QtCore import QTimer

    viewer, w = make(make_napari_viewer, nuclei_image, name="nuclei")
    w.model.value = "nuclei-unet"
    w.uncertainty.value = True
    turns, inserted = [0], []
    ticker = QTimer()
    ticker.setInterval(0)
    ticker.timeout.connect(lambda: turns.__setitem__(0, turns[0] + 1))
    viewer.layers.events.inserted.connect(lambda e: inserted.append((e.value.name, turns[0], w.running)))
    ticker.start()
    w.run()
    wait(qtbot, w)
    ticker.stop()
    (lab, t_lab, running_lab), (unc, t_unc, running_unc) = inserted
    assert lab == "nuclei · nuclei-unet v1.0.0" and unc.endswith("· uncertainty")
    assert t_unc > t_lab                     # the event loop ran between the two insertions
    assert running_lab and running_unc       # Segment stays disabled until the last piece is in
    assert w.run_button.enabled and "objects in" in w.status.value
    assert viewer.layers.selection.active is viewer.layers[lab]


def test_closing_the_widget_mid_run_cancels_it(make_napari_viewer, qtbot, tiny_package):
    viewer, w = start_long_run(make_napari_viewer, tiny_package)
    w.run()
    worker = w._worker
    cancel = w._cancel
    viewer.window.remove_dock_widget(w.native)
    w.native.deleteLater()
    qtbot.waitUntil(lambda: cancel.is_set(), timeout=10_000)
    qtbot.waitUntil(lambda: not worker.is_running, timeout=60_000)
    assert not labels_layers(viewer)


def test_the_model_choice_is_remembered(make_napari_viewer, qtbot, tiny_package, nuclei_image, tmp_path,
                                        monkeypatch):
    monkeypatch.setenv("SEGLOOP_CACHE_DIR", str(tmp_path / "cache"))
    viewer, w = make(make_napari_viewer, nuclei_image[:128, :128])
    use_package(w, tiny_package)
    w.engine.value = "onnx"
    w.run()
    wait(qtbot, w)
    again = SegmentWidget(viewer)
    assert again.model.value == LOAD_PACKAGE and str(again.package.value) == str(tiny_package)
    assert again.engine.value == "onnx"


def test_a_4d_image_as_a_whole_is_a_clear_notification_but_its_slice_works(make_napari_viewer, qtbot,
                                                                          nuclei_image, notes):
    vol = np.stack([np.stack([nuclei_image[:128, :128]] * 2)] * 2)      # (T, Z, Y, X)
    viewer, w = make(make_napari_viewer, vol, name="tzyx")
    w.run()
    wait(qtbot, w)
    assert not labels_layers(viewer) and any("too many axes" in n for n in notes)
    w.scope.value = "current slice"
    w.run()
    wait(qtbot, w)
    assert labels_layers(viewer)[0].data.shape == vol.shape


def test_current_view_segments_only_what_is_visible(make_napari_viewer, qtbot, nuclei_image):
    viewer = make_napari_viewer(show=True)
    big = np.tile(nuclei_image, (2, 2))
    viewer.add_image(big, name="big")
    w = SegmentWidget(viewer)
    viewer.window.add_dock_widget(w)
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera   # napari >= 0.9 / older
    camera.center = (200, 200)
    camera.zoom = 4                         # only a small part of the 900 x 900 image is on screen
    qtbot.wait(200)
    corners = np.asarray(viewer.layers["big"].corner_pixels)
    assert (corners[1] - corners[0]).max() < 600
    w.scope.value = "current view"
    w.run()
    wait(qtbot, w)
    (lab,) = labels_layers(viewer)
    assert lab.data.shape == big.shape
    assert lab.data[corners[0][0]:corners[1][0], corners[0][1]:corners[1][1]].max() > 0
    assert lab.data[800:, 800:].max() == 0          # far outside the view: not segmented


def test_closing_the_viewer_mid_run_cancels_it(make_napari_viewer, qtbot, tiny_package):
    viewer, w = start_long_run(make_napari_viewer, tiny_package)
    w.run()
    worker, cancel = w._worker, w._cancel
    viewer.close()
    qtbot.waitUntil(lambda: cancel.is_set(), timeout=10_000)
    qtbot.waitUntil(lambda: not worker.is_running, timeout=60_000)


def _stack(nuclei_image, n=5):
    tile = nuclei_image[:256, :256]
    return np.stack([np.roll(tile, 9 * i, axis=1) for i in range(n)])


def test_slice_range_labels_only_those_slices_and_keeps_volume_geometry(make_napari_viewer, qtbot, nuclei_image):
    from pathlib import Path

    from segloop.core.formats.io.geometry import VolumeInfo, lps_affine

    stack = _stack(nuclei_image)
    info = VolumeInfo(path=Path("stack"), format="tiff", shape=stack.shape, spacing=(2.0, 0.5, 0.5),
                      affine=lps_affine((2.0, 0.5, 0.5)))
    viewer, w = make(make_napari_viewer, stack, name="stack", scale=(2.0, 0.5, 0.5),
                     metadata={"segloop_volume": info})
    w.scope.value = "slice range"
    assert not w.z_from.native.isHidden() and not w.z_to.native.isHidden() and w.z_to.value == 4
    w.z_from.value, w.z_to.value = 1, 2
    w.run()
    wait(qtbot, w)
    (lab,) = labels_layers(viewer)
    assert lab.data.shape == stack.shape
    assert lab.data[1].max() > 0 and lab.data[2].max() > 0
    assert lab.data[0].max() == 0 and lab.data[3].max() == 0 and lab.data[4].max() == 0
    assert lab.metadata["segloop_volume"] is info and tuple(lab.scale) == (2.0, 0.5, 0.5)
    assert lab.metadata["segloop"]["parameters"]["z_range"] == [1, 3]


def test_live_mode_segments_the_slices_scrolled_to_and_never_overwrites_an_edit(make_napari_viewer, qtbot,
                                                                              nuclei_image):
    from segloop._napari.correction_tracking import tracker_for

    stack = _stack(nuclei_image)
    viewer, w = make(make_napari_viewer, stack, name="stack")
    viewer.dims.set_current_step(0, 2)
    w.live.value = True
    live = w._live
    qtbot.waitUntil(lambda: 2 in live.done, timeout=60_000)
    (lab,) = labels_layers(viewer)
    assert lab.name.endswith("(live)") and lab.data[2].max() > 0
    assert lab.data[[0, 1, 3, 4]].max() == 0                     # only the slice looked at
    # scroll quickly over 3 to 4: only where the person stops is segmented
    viewer.dims.set_current_step(0, 3)
    viewer.dims.set_current_step(0, 4)
    qtbot.waitUntil(lambda: 4 in live.done, timeout=60_000)
    assert lab.data[4].max() > 0 and 3 not in live.done
    # the person corrects slice 4; scrolling away and back does not run the model on it again
    lab.data_setitem((np.array([4]), np.array([5]), np.array([5])), 77)
    viewer.dims.set_current_step(0, 0)
    qtbot.waitUntil(lambda: 0 in live.done, timeout=60_000)
    viewer.dims.set_current_step(0, 4)
    qtbot.wait(400)
    assert lab.data[4, 5, 5] == 77 and live.worker is None
    # the snapshot holds what the model predicted, so the correction is measured against it
    tr = tracker_for(lab)
    assert tr.snapshot.read()[4, 5, 5] != 77 and tr.has_review
    assert "live: slice" in w.status.value
    # turning it off stops listening to the dims
    w.live.value = False
    viewer.dims.set_current_step(0, 1)
    qtbot.wait(400)
    assert 1 not in live.done and w._live is None


def test_live_mode_needs_a_stack_and_stops_when_the_image_goes(make_napari_viewer, qtbot, nuclei_image, notes):
    viewer, w = make(make_napari_viewer, nuclei_image[:128, :128], name="flat")
    w.live.value = True
    assert w.live.value is False and w._live is None and any("needs a stack" in n for n in notes)
    viewer.add_image(_stack(nuclei_image, 3), name="stack")
    w.image.value = viewer.layers["stack"]
    w.live.value = True
    assert w._live is not None
    viewer.layers.remove("stack")
    assert w.live.value is False and w._live is None


def test_a_ct_volume_gets_a_ct_model_and_a_tile_gets_a_non_ct_one(make_napari_viewer, qtbot, nuclei_image):
    from pathlib import Path

    from segloop.core.formats.io.geometry import VolumeInfo, lps_affine
    from segloop.core.formats.registry import pick_model

    fluorescence = pick_model("fluorescence").name          # nuclei-unet, or the fluorescence model once bundled
    viewer, w = make(make_napari_viewer, nuclei_image, name="nuclei")
    assert w.model.value == fluorescence                    # not the first name alphabetically (a CT model)
    vol = np.zeros((4, 64, 64), np.int16)
    info = VolumeInfo(path=Path("ct"), format="nifti", shape=vol.shape, spacing=(1.0, 1.0, 1.0),
                      affine=lps_affine((1.0, 1.0, 1.0)), units="HU", modality="CT")
    viewer.add_image(vol, name="ct", metadata={"segloop_volume": info})
    w.image.value = viewer.layers["ct"]
    assert w.model.value.startswith("ct-liver")
    w.image.value = viewer.layers["nuclei"]
    assert w.model.value == fluorescence
