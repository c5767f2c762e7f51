"""The Segment widget on a whole slide in a real napari viewer (Xvfb): the current view, a drawn
region and the whole slide (progress, cancel, resume) never read level 0 whole; the results sit on
the slide in µm; the OME-Zarr result opens lazily with segloop's reader; the tissue mask layer.

The slide is a generic pyramidal tiled TIFF (JPEG tiles, 3 levels in SubIFDs, 0.5 µm/px in its
resolution tags) of real IHC pixels: scikit-image's immunohistochemistry image mosaicked to
2048 x 3072, with a strip of glass on the right.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

napari = pytest.importorskip("napari")
tifffile = pytest.importorskip("tifffile")

from .test_segment_widget import labels_layers, wait  # noqa: E402

H, W, GLASS_X, MPP = 2048, 3072, 2560, 0.5


@pytest.fixture(scope="module")
def slide_tif(tmp_path_factory):
    """``case.tif``: 2048 x 3072 RGB of IHC tissue (glass from x = 2560), levels 1, 1/2, 1/4."""
    from skimage import data

    t = data.immunohistochemistry()
    row = np.concatenate([t if i % 2 == 0 else t[:, ::-1] for i in range(W // 512)], axis=1)
    img = np.ascontiguousarray(np.concatenate([row if j % 2 == 0 else row[::-1] for j in range(H // 512)], axis=0))
    img[:, GLASS_X:] = 242
    p = tmp_path_factory.mktemp("slides") / "case.tif"
    kw = dict(tile=(256, 256), compression="jpeg", photometric="rgb")
    res = 1e4 / MPP                                                   # pixels per cm
    with tifffile.TiffWriter(p, bigtiff=True) as tw:
        tw.write(img, subifds=2, resolution=(res, res), resolutionunit="CENTIMETER", **kw)
        for i in (1, 2):
            tw.write(img[:: 2**i, :: 2**i], subfiletype=1, resolution=(res / 2**i, res / 2**i),
                     resolutionunit="CENTIMETER", **kw)
    return p


@pytest.fixture
def slide_path(slide_tif, tmp_path):
    """The slide in a folder of its own (whole-slide results are written next to it)."""
    p = tmp_path / "case.tif"
    p.write_bytes(slide_tif.read_bytes())
    return p


def open_slide(make_napari_viewer, path, *, show=True):
    from segloop import list_models
    from segloop._napari.segment_widget import SegmentWidget

    viewer = make_napari_viewer(show=show)                 # shown: napari computes what is on screen
    w = SegmentWidget(viewer)
    viewer.window.add_dock_widget(w)
    viewer.open(str(path), plugin="napari-segloop")
    layer = viewer.layers["case"]
    assert layer.multiscale and layer.rgb and len(layer.data) == 3 and tuple(layer.scale) == (MPP, MPP)
    assert "segloop_slide" in layer.metadata
    w.image.value = layer
    w.model.value = "he-nuclei-unet" if "he-nuclei-unet" in list_models() else "nuclei-unet"
    w.stain.value = "hematoxylin"
    w.pixel_size.value = ""                               # the model's own pixel size: no resampling
    return viewer, w, layer


def shown(widget) -> bool:
    """Set visible (a widget in a dock that is not on screen reports ``visible`` False)."""
    return not widget.native.isHidden()


def camera_of(viewer):
    return viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera      # napari >= 0.9 / older


def world_box(layer):
    """(y0, x0, y1, x1) in world units (µm) covered by a 2D layer's level 0."""
    shape = np.asarray((layer.data[0] if layer.multiscale else layer.data).shape[:2], dtype=float)
    scale, t = np.asarray(layer.scale, dtype=float), np.asarray(layer.translate, dtype=float)
    lo = t - scale / 2                                     # pixel centres at translate + i * scale
    return (*lo, *(lo + shape * scale))


# --------------------------------------------------------------------------- regions


def test_current_view_segments_the_visible_part_of_level_0_and_places_it_on_the_slide(make_napari_viewer, qtbot,
                                                                                        slide_path):
    viewer, w, layer = open_slide(make_napari_viewer, slide_path)
    assert shown(w.slide_controls.tissue_button) and shown(w.slide_controls.folder)
    cam = camera_of(viewer)
    cam.center = (400.0, 600.0)                           # µm: level-0 pixel (800, 1200)
    cam.zoom = 6.0
    qtbot.wait(300)
    w.scope.value = "current view"
    w.run()
    wait(qtbot, w)
    (lab,) = labels_layers(viewer)
    h, wd = lab.data.shape
    assert isinstance(lab.data, np.ndarray) and h * wd < 0.1 * H * W       # far smaller than the slide
    assert tuple(lab.scale) == (MPP, MPP)
    y0, x0, y1, x1 = world_box(lab)
    assert y0 <= 400 <= y1 and x0 <= 600 <= x1                              # the viewed area
    assert lab.editable and lab.data.max() > 5
    prov = lab.metadata["segloop"]
    assert prov["slide"] == str(slide_path) and prov["model"]["name"] == w.model.value
    rx, ry, rw, rh = prov["region"]
    assert (rh, rw) == (h, wd) and np.allclose(lab.translate, (ry * MPP, rx * MPP))
    assert "blocks" not in w.status.value or "objects" in w.status.value


def test_current_view_on_a_coarse_level_is_converted_to_level_0(make_napari_viewer, qtbot, slide_path):
    viewer, w, layer = open_slide(make_napari_viewer, slide_path)
    cam = camera_of(viewer)
    cam.center = (512.0, 768.0)                           # the slide's middle, µm
    cam.zoom = 0.9                                        # a view where napari draws a coarser level
    qtbot.wait(300)
    assert layer.data_level >= 1
    w.scope.value = "current view"
    w.run()
    wait(qtbot, w)
    (lab,) = labels_layers(viewer)
    y0, x0, y1, x1 = world_box(lab)
    assert tuple(lab.scale) == (MPP, MPP)                 # level-0 pixels, not the level on screen
    assert y0 <= 512 <= y1 and x0 <= 768 <= x1
    assert -MPP <= y0 and -MPP <= x0 and y1 <= H * MPP and x1 <= W * MPP
    rx, ry, rw, rh = lab.metadata["segloop"]["region"]
    assert rw * rh < H * W                                   # the visible part, not the whole slide


def test_shapes_region_segments_the_box_of_the_last_shape_and_errors_are_shown(make_napari_viewer, qtbot,
                                                                               slide_path):
    viewer, w, layer = open_slide(make_napari_viewer, slide_path, show=False)
    w.scope.value = "shapes region"
    w.run()                                               # no Shapes layer yet: an error on the status line
    assert not w.running and "Shapes layer" in w.status.value and not labels_layers(viewer)
    viewer.add_shapes([[[100.0, 200.0], [100.0, 350.0], [220.0, 350.0], [220.0, 200.0]]], shape_type="polygon",
                      name="roi")                          # µm: level-0 px y 200..440, x 400..700
    w.image.value = layer
    w.run()
    wait(qtbot, w)
    (lab,) = labels_layers(viewer)
    assert abs(lab.data.shape[0] - 240) <= 2 and abs(lab.data.shape[1] - 300) <= 2
    assert np.allclose(lab.translate, (100.0, 200.0), atol=MPP) and tuple(lab.scale) == (MPP, MPP)
    assert lab.data.max() > 5
    # a results folder that does not exist: refused before anything runs
    w.scope.value = "whole image"
    w.slide_controls.folder.value = str(slide_path.parent / "no-such-folder")
    w.run()
    assert not w.running and "results folder" in w.status.value and len(labels_layers(viewer)) == 1


def test_a_polygon_or_ellipse_region_keeps_the_objects_inside_it_whole(make_napari_viewer, qtbot, slide_path):
    from skimage.draw import polygon2mask

    viewer, w, layer = open_slide(make_napari_viewer, slide_path, show=False)
    w.scope.value = "shapes region"
    box = [[100.0, 200.0], [100.0, 350.0], [220.0, 350.0], [220.0, 200.0]]      # µm
    viewer.add_shapes([box], shape_type="rectangle", name="box")
    w.image.value = layer
    w.run()
    wait(qtbot, w)
    (whole,) = labels_layers(viewer)
    n_box = len(np.unique(whole.data)) - 1
    triangle = box[:3]                                     # the box's upper-right half
    viewer.add_shapes([triangle], shape_type="polygon", name="triangle")
    w.image.value = layer
    w.run()
    wait(qtbot, w)
    (half,) = [la for la in labels_layers(viewer) if la is not whole]
    assert half.data.shape == whole.data.shape and np.allclose(half.translate, whole.translate)
    kept = set(np.unique(half.data).tolist()) - {0}
    assert 0.25 * n_box < len(kept) < 0.8 * n_box, (len(kept), n_box)
    assert f"{len(kept)} objects inside the shape" in w.status.value
    assert half.metadata["segloop"]["n_objects"] == len(kept) and len(half.metadata["segloop"]["outline"]) == 3
    # the same objects as the box run (same blocks, same ids), whole: none cut at the outline
    assert np.array_equal(half.data[half.data > 0], whole.data[half.data > 0])
    for i in kept:
        assert np.array_equal(half.data == i, whole.data == i)
    # kept: at least half inside the triangle; dropped: less than half
    tri_px = (np.asarray(triangle) - np.asarray(half.translate)) / MPP        # (row, col) of the region
    inside = polygon2mask(half.data.shape, tri_px)
    for i in set(np.unique(whole.data).tolist()) - {0}:
        obj = whole.data == i
        assert (inside[obj].mean() >= 0.5) == (i in kept), i
    # an ellipse over the same box: the objects of the inscribed ellipse
    viewer.add_shapes([box], shape_type="ellipse", name="ellipse")
    w.image.value = layer
    w.run()
    wait(qtbot, w)
    (oval,) = [la for la in labels_layers(viewer) if la not in (whole, half)]
    n_oval = len(np.unique(oval.data)) - 1
    assert 0.6 * n_box < n_oval < n_box                   # pi/4 of the box, give or take the edge
    corners = [la for la in np.unique(whole.data[[0, 0, -1, -1], [0, -1, 0, -1]]) if la]
    assert not np.isin(corners, oval.data).any()          # objects in the box's corners are out
    # a line encloses nothing: refused on the status line
    viewer.add_shapes([[[100.0, 200.0], [220.0, 350.0]]], shape_type="line", name="line")
    w.image.value = layer
    w.run()
    assert not w.running and "encloses no area" in w.status.value


# --------------------------------------------------------------------------- whole slide


def test_whole_slide_progress_cancel_resume_lazy_result_reader_and_screenshot(make_napari_viewer, qtbot,
                                                                             slide_path, tmp_path, monkeypatch):
    from segloop._napari import slide_run

    monkeypatch.setattr(slide_run, "EDITABLE_MAX_PIXELS", 1000)   # as for a slide too big to hold in memory
    viewer, w, layer = open_slide(make_napari_viewer, slide_path)
    results = tmp_path / "results"
    results.mkdir()
    w.slide_controls.folder.value = str(results)
    w.slide_controls.block.value = 1024                   # 2 x 3 blocks
    w.scope.value = "whole image"
    events = []

    def on_progress(done, total):
        events.append((done, total))
        if done >= 1 and w._cancel is not None and not w._cancel.is_set() and len(events) < 100 and first_run:
            w.cancel()                                     # after the first finished block

    w._relay.progressed.connect(on_progress)
    first_run = True
    w.run()
    wait(qtbot, w, timeout=600_000)
    out = results / f"case.{w.model.value}.segloop.zarr"
    assert "resume" in w.status.value and not labels_layers(viewer), w.status.value
    assert events[0] == (0, 6) and max(d for d, _ in events) < 6
    assert len(list((out / ".segloop-run" / "done").glob("*.json"))) >= 1
    assert not (out / ".segloop-run" / "summary.json").exists()

    first_run, events[:] = False, []
    w.run()                                               # resumes
    wait(qtbot, w, timeout=600_000)
    assert events[0][0] >= 1 and events[-1] == (6, 6), events
    assert int(re.search(r"(\d+) resumed", w.status.value).group(1)) >= 1, w.status.value
    assert w.progress.value == w.progress.max == 6
    lab = next(la for la in labels_layers(viewer) if "tissue" not in la.name)
    assert lab.multiscale and not isinstance(lab.data[0], np.ndarray)             # lazy, from the zarr
    assert lab.data[0].shape == (H, W) and tuple(lab.scale) == (MPP, MPP) and tuple(lab.translate) == (0.0, 0.0)
    n = lab.metadata["segloop"]["n_objects"]
    assert n > 200 and lab.metadata["segloop"]["ome_zarr"] == str(out)
    assert not np.asarray(lab.data[-1])[:, GLASS_X // 2 ** (len(lab.data) - 1) + 2:].any()   # glass: nothing

    viewer.window.resize(1400, 900)
    viewer.reset_view()
    qtbot.wait(500)
    shot = viewer.screenshot(str(tmp_path / "slide-segmented.png"), canvas_only=True)
    lab.visible = False
    qtbot.wait(300)
    bare = viewer.screenshot(canvas_only=True)
    lab.visible = True
    assert (tmp_path / "slide-segmented.png").is_file() and shot.shape == bare.shape
    changed = np.abs(shot[..., :3].astype(int) - bare[..., :3]).sum(axis=-1) > 30
    cols = np.flatnonzero(changed.any(axis=0))                 # the labels are drawn over the tissue
    assert changed.mean() > 0.02 and cols.size
    slide_cols = np.flatnonzero((bare[..., :3] > 0).any(axis=(0, 2)))
    glass_from = slide_cols[0] + (slide_cols[-1] - slide_cols[0]) * GLASS_X / W
    assert cols.max() < glass_from + 5                          # and nothing on the glass

    # segloop's reader opens the result: the image and the labels, lazily, in µm
    viewer2 = make_napari_viewer()
    viewer2.open(str(out), plugin="napari-segloop")
    image, labels = viewer2.layers
    assert image.rgb and image.multiscale and tuple(image.scale) == (MPP, MPP)
    assert labels._type_string == "labels" and labels.multiscale and tuple(labels.scale) == (MPP, MPP)
    assert not isinstance(labels.data[0], np.ndarray) and labels.data[0].shape == (H, W)
    assert np.array_equal(np.asarray(labels.data[1]), np.asarray(lab.data[1]))


def test_a_multiscale_layer_without_a_slide_file_is_segmented_block_by_block(make_napari_viewer, qtbot, slide_tif):
    """An image opened from an OME-Zarr (or any pyramid) is multiscale but has no slide file: its own
    lazy levels are read, a region at a time, and the labels land on it."""
    import dask.array as da

    from segloop._napari.segment_widget import SegmentWidget
    from segloop.core.formats.io.wsi import open_slide as open_file

    slide = open_file(slide_tif)
    viewer = make_napari_viewer()
    levels = [da.asarray(lv) for lv in slide.levels]
    layer = viewer.add_image(levels, multiscale=True, rgb=True, scale=(MPP, MPP), translate=(1000.0, 2000.0),
                             name="pyramid")
    w = SegmentWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.image.value = layer
    assert shown(w.slide_controls.block)
    w.model.value = "nuclei-unet"
    w.stain.value = "hematoxylin"
    viewer.add_shapes([[[1100.0, 2100.0], [1100.0, 2200.0], [1200.0, 2200.0], [1200.0, 2100.0]]],
                      shape_type="rectangle", name="roi")
    w.image.value = layer
    w.scope.value = "shapes region"
    w.run()
    wait(qtbot, w)
    (lab,) = labels_layers(viewer)
    assert abs(lab.data.shape[0] - 200) <= 2 and abs(lab.data.shape[1] - 200) <= 2
    assert np.allclose(lab.translate, (1100.0, 2100.0), atol=MPP) and lab.data.max() > 2
    slide.close()


# --------------------------------------------------------------------------- tissue


def test_tissue_button_adds_the_low_resolution_mask_on_the_slide(make_napari_viewer, qtbot, slide_path):
    viewer, w, layer = open_slide(make_napari_viewer, slide_path, show=False)
    assert shown(w.slide_controls.tissue_button)
    w.slide_controls.tissue_button.native.click()
    qtbot.waitUntil(lambda: len(labels_layers(viewer)) == 1, timeout=60_000)
    (tissue,) = labels_layers(viewer)
    mask = np.asarray(tissue.data)
    down = tissue.metadata["segloop"]["downsample"]
    assert down > 1 and mask.shape[0] * down == pytest.approx(H, abs=down) and mask.dtype == np.uint8
    assert tuple(tissue.scale) == pytest.approx((MPP * down, MPP * down))
    box, slide_box = world_box(tissue), world_box(layer)                       # the mask covers the slide
    assert box[:2] == pytest.approx(slide_box[:2], abs=1e-6) and box[2:] == pytest.approx(slide_box[2:], abs=MPP * down)
    cut = int(GLASS_X / down)
    assert mask[:, : cut - 4].mean() > 0.4 and not mask[:, cut + 4:].any()          # tissue, then glass
    assert "tissue" in w.status.value and "%" in w.status.value
    # an image that is not a slide: the slide rows are hidden
    viewer.add_image(np.zeros((64, 64), np.uint8), name="small")
    w.image.value = viewer.layers["small"]
    assert not shown(w.slide_controls.tissue_button) and not shown(w.slide_controls.folder)
