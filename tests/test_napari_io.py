"""Reader / writer contributions and `segloop demo`, in a real viewer under Xvfb."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tifffile

napari = pytest.importorskip("napari")


def test_reader_opens_channels_last_and_writer_round_trips(make_napari_viewer, tmp_path, nuclei_image):
    viewer = make_napari_viewer()
    p = tmp_path / "two.ome.tif"
    tifffile.imwrite(p, np.stack([nuclei_image, nuclei_image // 2]), metadata={"axes": "CYX"})
    (layer,) = viewer.open(str(p), plugin="napari-segloop")
    assert layer.data.shape == (450, 450, 2)
    labels = viewer.add_labels(np.arange(450 * 450, dtype=np.uint32).reshape(450, 450),
                               metadata={"segloop": {"model": {"name": "x"}}})
    out = tmp_path / "labels.tif"
    written = labels.save(str(out), plugin="napari-segloop")
    assert written == [str(out)]
    np.testing.assert_array_equal(tifffile.imread(out), labels.data)


def test_reader_reports_a_truncated_tiff(make_napari_viewer, tmp_path, nuclei_image):
    viewer = make_napari_viewer()
    good = tmp_path / "g.tif"
    tifffile.imwrite(good, np.stack([nuclei_image] * 4), photometric="minisblack")
    bad = tmp_path / "bad.tif"
    bad.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(Exception, match="truncated|cannot read"):
        viewer.open(str(bad), plugin="napari-segloop")


def test_fluorescence_sample_opens(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-segloop", "nuclei")
    assert viewer.layers[0].data.shape == (450, 450)


def test_demo_saves_a_screenshot_with_labels_and_exits(tmp_path):
    shot = tmp_path / "demo.png"
    r = subprocess.run([sys.executable, "-m", "segloop.cli", "demo", "--screenshot", str(shot)],
                       capture_output=True, text=True, timeout=600, env=os.environ.copy())
    assert r.returncode == 0, r.stderr[-2000:]
    from skimage.io import imread

    img = imread(shot)
    assert img.shape[0] > 500 and img[..., :3].std() > 20


def test_reader_opens_a_compressed_pyramid_lazily_and_segment_uses_level_0(make_napari_viewer, qtbot, tmp_path,
                                                                          nuclei_image):
    from segloop._napari.segment_widget import SegmentWidget

    from .test_io import _write_pyramid

    big = np.tile(nuclei_image, (2, 2))                       # 900 x 900 real nuclei
    p = tmp_path / "slide.ome.tif"
    _write_pyramid(p, big)
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(p), plugin="napari-segloop")
    assert layer.multiscale and len(layer.data) == 3
    assert not isinstance(layer.data[0], np.ndarray)          # lazy: decoded tile by tile
    w = SegmentWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.run()
    qtbot.waitUntil(lambda: not w.running, timeout=120_000)
    lab = viewer.layers[-1]
    assert lab._type_string == "labels" and lab.data.shape == (900, 900) and lab.data.max() > 100
