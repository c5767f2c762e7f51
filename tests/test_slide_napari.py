"""Whole slides in napari: segloop's reader, the Segment widget's slide scopes (current view, shapes
region, whole slide with cancel and resume) and the OME-Zarr result opened lazily, in a real
viewer under Xvfb.  The slide is an Aperio-like SVS of scikit-image's IHC tissue (0.5 µm/px)."""

from __future__ import annotations

import numpy as np
import pytest

napari = pytest.importorskip("napari")

from .test_segment_widget import labels_layers, wait  # noqa: E402
from .test_slide import svs  # noqa: E402, F401  (fixture)


@pytest.fixture
def slide_copy(svs, tmp_path):  # noqa: F811
    """The slide in a folder of its own (the whole-slide result is written next to it)."""
    p = tmp_path / "case.svs"
    p.write_bytes(svs.read_bytes())
    return p


def open_slide_in(make_napari_viewer, path, *, show=False):
    from segloop._napari.segment_widget import SegmentWidget

    viewer = make_napari_viewer(show=show)                # shown: napari computes what is on screen
    w = SegmentWidget(viewer)
    viewer.window.add_dock_widget(w)
    viewer.open(str(path), plugin="napari-segloop")
    layer = viewer.layers["case"]
    assert layer.multiscale and layer.rgb and tuple(layer.scale) == (0.5, 0.5)
    assert layer.metadata["segloop_slide"]["mpp"] == [0.5, 0.5] or tuple(layer.metadata["segloop_slide"]["mpp"]) \
        == (0.5, 0.5)
    w.image.value = layer
    w.model.value = "nuclei-unet"
    w.stain.value = "hematoxylin"
    return viewer, w, layer


def test_whole_slide_goes_to_ome_zarr_and_comes_back_as_a_lazy_multiscale_layer(make_napari_viewer, qtbot,
                                                                                  slide_copy, monkeypatch):
    from segloop._napari import slide_run

    monkeypatch.setattr(slide_run, "EDITABLE_MAX_PIXELS", 1000)        # as for a slide too big to edit in memory
    viewer, w, layer = open_slide_in(make_napari_viewer, slide_copy)
    seen = []
    w._relay.progressed.connect(lambda d, t: seen.append((d, t)))
    w.scope.value = "whole image"
    w.run()
    wait(qtbot, w)
    tissue, lab = labels_layers(viewer)
    assert tissue.name == "case · tissue" and not tissue.visible
    t = np.asarray(tissue.data)                                          # glass from x = 1280 px (640 µm)
    right = int(np.ceil(660 / tissue.scale[1]))
    assert t[:, :right - 60].mean() > 0.5 and not t[:, right:].any()
    out = slide_copy.parent / "case.nuclei-unet.segloop.zarr"
    assert (out / ".segloop-run" / "summary.json").is_file()
    assert lab.multiscale and tuple(lab.scale) == (0.5, 0.5) and tuple(lab.translate) == (0.0, 0.0)
    assert lab.data[0].shape == (1024, 1536) and "objects in" in w.status.value, w.status.value
    assert seen and seen[-1][0] == seen[-1][1]
    n = lab.metadata["segloop"]["n_objects"]
    assert n > 100 and int(np.asarray(lab.data[0]).max()) == n
    # Segment again: the finished result is opened, not redone
    w.run()
    wait(qtbot, w)
    assert "opened the finished result" in w.status.value
    # and segloop's reader opens it too, in the slide's coordinates
    viewer2 = make_napari_viewer()
    viewer2.open(str(out), plugin="napari-segloop")
    image, labels = viewer2.layers
    assert image.rgb and image.multiscale and tuple(image.scale) == (0.5, 0.5)
    assert labels._type_string == "labels" and tuple(labels.scale) == (0.5, 0.5)
    assert np.array_equal(np.asarray(labels.data[0]), np.asarray(lab.data[0]))


def test_a_small_whole_slide_result_is_one_editable_layer(make_napari_viewer, qtbot, slide_copy):
    viewer, w, layer = open_slide_in(make_napari_viewer, slide_copy)
    w.scope.value = "whole image"
    w.run()
    wait(qtbot, w)
    lab = labels_layers(viewer)[-1]
    assert not lab.multiscale and isinstance(lab.data, np.ndarray) and lab.data.shape == (1024, 1536)
    assert lab.metadata["segloop"]["ome_zarr"].endswith("case.nuclei-unet.segloop.zarr")


def test_a_cancelled_whole_slide_run_says_it_resumes(make_napari_viewer, qtbot, slide_copy):
    viewer, w, layer = open_slide_in(make_napari_viewer, slide_copy)
    w.scope.value = "whole image"
    w.run()
    w.cancel()
    wait(qtbot, w)
    assert "resume" in w.status.value and not labels_layers(viewer), w.status.value
    w.run()
    wait(qtbot, w)
    assert len(labels_layers(viewer)) == 2 and "objects in" in w.status.value          # tissue and labels


def test_current_view_segments_only_what_is_on_screen_in_place(make_napari_viewer, qtbot, slide_copy):
    viewer, w, layer = open_slide_in(make_napari_viewer, slide_copy, show=True)
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera   # napari >= 0.9 / older
    camera.center = (256.0, 300.0)                      # µm: level-0 pixel (512, 600)
    camera.zoom = 8.0
    qtbot.wait(300)
    w.scope.value = "current view"
    w.run()
    wait(qtbot, w)
    (lab,) = labels_layers(viewer)
    h, wd = lab.data.shape
    assert h * wd < 0.5 * 1024 * 1536 and tuple(lab.scale) == (0.5, 0.5)
    y0, x0 = (np.asarray(lab.translate) / 0.5).astype(int)
    assert y0 <= 512 <= y0 + h and x0 <= 600 <= x0 + wd
    assert lab.data.any()


def test_shapes_region_segments_the_drawn_box(make_napari_viewer, qtbot, slide_copy):
    viewer, w, layer = open_slide_in(make_napari_viewer, slide_copy)
    w.scope.value = "shapes region"
    w.run()
    assert "Shapes layer" in w.status.value and not w.running          # nothing drawn yet
    viewer.add_shapes([[[50.0, 100.0], [50.0, 300.0], [200.0, 300.0], [200.0, 100.0]]], shape_type="polygon",
                      name="roi")                                        # µm
    w.image.value = layer
    w.run()
    wait(qtbot, w)
    (lab,) = labels_layers(viewer)
    assert abs(lab.data.shape[0] - 300) <= 2 and abs(lab.data.shape[1] - 400) <= 2
    assert np.allclose(lab.translate, (50.0, 100.0), atol=0.5)
