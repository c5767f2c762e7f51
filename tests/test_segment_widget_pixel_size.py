"""The Segment widget's 'Pixel size (µm)' field, in a real napari viewer under Xvfb (pytest-qt)."""

import numpy as np
import pytest

napari = pytest.importorskip("napari")

from segloop.core.formats.package import save_package  # noqa: E402

from .conftest import tiny_spec, tiny_state  # noqa: E402
from .test_pixel_size import discs  # noqa: E402
from .test_segment_widget import labels_layers, make, use_package, wait  # noqa: E402


@pytest.fixture
def package_025(tmp_path):
    """A tiny instance model that records 0.25 µm/px."""
    spec = tiny_spec(pixel_size=(0.25, 0.25))
    save_package(tmp_path / "pkg-025", spec, tiny_state(spec))
    return tmp_path / "pkg-025"


def test_the_field_comes_from_the_layers_scale_and_the_run_is_rescaled(make_napari_viewer, qtbot, package_025):
    viewer, w = make(make_napari_viewer, discs(), name="he", scale=(0.5, 0.5))
    use_package(w, package_025)
    assert w.pixel_size.value == "0.5" and w.pixel_size.label == "Pixel size (µm)"
    w.run()
    wait(qtbot, w)
    (lab,) = labels_layers(viewer)
    assert lab.data.shape == discs().shape and tuple(lab.scale) == (0.5, 0.5)
    px = lab.metadata["segloop"]["pixel_size"]
    assert px["resampled"] and px["scale"] == [2.0, 2.0] and px["model_grid"] == [400, 360]
    assert "run at the model's 0.25 µm/px (image 0.5 µm/px, scaled x2)" in w.status.value


def test_metadata_fills_the_field_when_the_scale_is_napari_s_default(make_napari_viewer, package_025):
    viewer, w = make(make_napari_viewer, discs(), name="a", metadata={"pixel_size": [0.125, 0.125]})
    assert w.pixel_size.value == "0.125"
    viewer.add_image(discs(), name="b", scale=(0.3, 0.25))
    w.image.value = viewer.layers["b"]
    assert w.pixel_size.value == "0.3,0.25"
    viewer.add_image(discs(), name="c")
    w.image.value = viewer.layers["c"]
    assert w.pixel_size.value == ""


def test_unknown_pixel_size_runs_natively_and_says_so_once(make_napari_viewer, qtbot, package_025, notes):
    viewer, w = make(make_napari_viewer, discs(), name="plain")
    use_package(w, package_025)
    assert w.pixel_size.value == ""
    w.run()
    wait(qtbot, w)
    (lab,) = labels_layers(viewer)
    assert lab.data.shape == discs().shape and not lab.metadata["segloop"]["pixel_size"]["resampled"]
    assert "pixel size unknown" in w.status.value and "expects 0.25 µm/px" in w.status.value
    qtbot.waitUntil(lambda: any("pixel size is unknown" in n for n in notes), timeout=5000)
    assert sum("pixel size is unknown" in n for n in notes) == 1


def test_a_typed_pixel_size_is_used_and_junk_is_refused(make_napari_viewer, qtbot, package_025, notes):
    viewer, w = make(make_napari_viewer, discs(0.125, shape=(800, 720), scale=4), name="fine")
    use_package(w, package_025)
    w.pixel_size.value = "abc"
    w.run()
    assert not w.running and not labels_layers(viewer)
    assert any("Pixel size (µm) 'abc' is not a pixel size" in n for n in notes)
    w.pixel_size.value = "0.125"
    w.run()
    wait(qtbot, w)
    (lab,) = labels_layers(viewer)
    assert lab.data.shape == (800, 720)
    assert lab.metadata["segloop"]["pixel_size"]["scale"] == [0.5, 0.5]
    assert "scaled x0.5" in w.status.value


def test_a_model_without_a_pixel_size_is_not_rescaled(make_napari_viewer, qtbot, tiny_package, notes):
    viewer, w = make(make_napari_viewer, discs(), name="he", scale=(0.5, 0.5))
    use_package(w, tiny_package)
    w.run()
    wait(qtbot, w)
    (lab,) = labels_layers(viewer)
    px = lab.metadata["segloop"]["pixel_size"]
    assert not px["resampled"] and px["model"] is None and px["image"] == [0.5, 0.5]
    assert "pixel size" not in w.status.value and not any("pixel size" in n for n in notes)
    np.testing.assert_array_equal(lab.data.shape, discs().shape)
