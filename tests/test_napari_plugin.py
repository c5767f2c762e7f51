"""The plugin in a real napari viewer (under Xvfb): manifest discovered, sample data opens."""

import numpy as np
import pytest

napari = pytest.importorskip("napari")


def test_sample_data_opens_in_a_real_viewer(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer(show=True)       # a hidden canvas is never drawn
    viewer.open_sample("napari-segloop", "ihc")
    (layer,) = viewer.layers
    assert layer.rgb and layer.data.shape == (512, 512, 3)
    shot = viewer.screenshot(str(tmp_path / "ihc.png"), canvas_only=True)
    assert shot.ndim == 3 and shot[..., :3].std() > 10      # something is drawn, not a blank canvas


def test_predicted_labels_show_as_a_labels_layer(make_napari_viewer, tiny_package, nuclei_image):
    from segloop.core.formats.package import load_package
    from segloop.core.inference.model import Model

    res = Model(load_package(tiny_package), device="cpu").predict(nuclei_image)
    viewer = make_napari_viewer()
    viewer.add_image(nuclei_image, name="nuclei")
    layer = viewer.add_labels(res.labels, name="nuclei · tiny v0.0.1", metadata={"segloop": res.provenance})
    assert layer.data.dtype == np.uint16 and layer.metadata["segloop"]["model"]["name"] == "tiny"
