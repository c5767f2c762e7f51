"""Tiled inference: exact stitching, bounded bands, skipping, progress, cancel."""

import threading

import numpy as np
import pytest

from segloop.core.inference.grid import WindowGrid, tile_positions
from segloop.core.inference.tiling import (
    gaussian_importance,
    predict_tiled,
    predict_tiled_3d,
    tissue_mask,
)
from segloop.errors import Cancelled, InvalidImageError


def double(x):
    return 2 * x


@pytest.mark.parametrize("shape", [(37, 53), (300, 517), (64, 64), (1, 1), (5, 300)])
def test_stitching_is_exact_for_a_pointwise_predictor(shape):
    img = np.random.default_rng(0).random(shape).astype(np.float32)
    out = predict_tiled(double, img, tile=64, overlap=0.3, batch_size=3)
    assert out.shape == (1, *shape)
    np.testing.assert_allclose(out[0], 2 * img, rtol=1e-5, atol=1e-6)


def test_rgb_and_stacks_channels_last():
    img = np.random.default_rng(1).random((3, 130, 90, 3)).astype(np.float32)
    out = predict_tiled(double, img, tile=32, overlap=8, channel_axis=-1)
    assert out.shape == (3, 3, 130, 90)
    np.testing.assert_allclose(out, 2 * np.moveaxis(img, -1, 1), rtol=1e-5, atol=1e-6)


def test_blending_weights_tiles_by_gaussian_not_average():
    # A predictor that returns each tile's own constant: the blend at a pixel
    # is the Gaussian-weighted mean of the constants of the tiles covering it.
    grid = WindowGrid.build((100, 40), window=40, overlap=20)
    consts = {}

    def tile_id(batch):
        out = np.empty_like(batch)
        for i, t in enumerate(batch):
            key = float(t[0, 0, 0])
            out[i] = consts.setdefault(key, float(len(consts)))
        return out

    img = np.zeros((100, 40), np.float32)
    for y in grid.ys:
        img[y, 0] = y + 1000   # make each tile's corner pixel unique
    img[:] = np.maximum.accumulate(img, axis=0)  # rows after a tile start keep its id
    res = predict_tiled(tile_id, img, tile=40, overlap=20, batch_size=1)[0]
    g = gaussian_importance((40, 40))
    # Pixel row 30 is covered by tiles starting at 0 and at 20 (row offsets 30 and 10).
    ys = list(grid.ys)
    c0, c1 = consts[float(img[ys[0], 0])], consts[float(img[ys[1], 0])]
    w0, w1 = g[30 - ys[0], 20], g[30 - ys[1], 20]
    assert res[30, 20] == pytest.approx((c0 * w0 + c1 * w1) / (w0 + w1), rel=1e-5)


def test_gaussian_importance_has_no_zeros_and_peaks_at_one():
    g = gaussian_importance((64, 48))
    assert g.max() == pytest.approx(1.0) and g.min() > 0


def test_tile_positions_cover_and_overlap():
    for length in (1, 63, 64, 65, 1000, 1023):
        ys = tile_positions(length, 64, 16)
        assert ys[0] == 0 and (length <= 64 or ys[-1] + 64 == length)
        assert all(b - a <= 48 for a, b in zip(ys, ys[1:]))


def test_sink_receives_every_row_once_in_order_with_bounded_bands():
    img = np.random.default_rng(2).random((1000, 300)).astype(np.float32)
    bands = []

    def sink(z, y0, y1, probs):
        bands.append((y0, y1))
        assert probs.shape == (1, y1 - y0, 300)
        np.testing.assert_allclose(probs[0], 2 * img[y0:y1], rtol=1e-5, atol=1e-6)

    stats = predict_tiled(double, img, tile=128, overlap=0.25, sink=sink)
    assert bands[0][0] == 0 and bands[-1][1] == 1000
    assert all(a[1] == b[0] for a, b in zip(bands, bands[1:]))
    assert max(y1 - y0 for y0, y1 in bands) <= 128
    assert stats.predicted_tiles == stats.total_tiles


def test_background_tiles_are_skipped_and_labelled_background():
    rgb = np.full((512, 512, 3), 245, np.uint8)            # glass
    rgb[300:400, 300:400] = (150, 60, 140)                   # a patch of stained tissue
    calls = []

    def pred(batch):
        calls.append(len(batch))
        out = np.zeros((len(batch), 2) + batch.shape[2:], np.float32)
        out[:, 1] = 1.0
        return out

    stats = predict_tiled(pred, rgb, tile=128, overlap=0, channel_axis=-1, skip_background=True, sink=lambda *a: None)
    assert stats.skipped_tiles > 0 and stats.predicted_tiles < stats.total_tiles
    probs = predict_tiled(pred, rgb, tile=128, overlap=0, channel_axis=-1, skip_background=True)
    assert probs[1, 350, 350] == 1.0 and probs[0, 10, 10] == 1.0


def test_tissue_mask_finds_stained_tissue_on_real_ihc():
    from skimage import data

    ihc = data.immunohistochemistry()
    mask, stride = tissue_mask(ihc, channel_axis=-1)
    assert 0.5 < mask.mean() <= 1.0    # the IHC tile is mostly tissue


def test_progress_counts_tiles_and_cancel_stops_between_batches():
    img = np.zeros((512, 512), np.float32)
    seen = []
    stop = threading.Event()

    def progress(done, total):
        seen.append((done, total))
        if done >= 4:
            stop.set()

    with pytest.raises(Cancelled):
        predict_tiled(double, img, tile=64, overlap=0, batch_size=2, progress=progress, cancel=stop)
    assert seen[0] == (2, 64) and seen[-1][0] == 4     # stopped right after the batch that set it


def test_tiles_are_a_multiple_of_the_divisor_and_pixel_overlap_fits_small_images():
    g = WindowGrid.build((1000, 1000), window=100, overlap=0.25, multiple=16)
    assert g.window == (112, 112)
    g = WindowGrid.build((20, 30), window=256, overlap=40, multiple=16)     # 40 px > the shrunken tile
    assert g.window == (32, 32) and g.ys == (0,)
    img = np.random.default_rng(3).random((20, 30)).astype(np.float32)
    out = predict_tiled(double, img, tile=256, overlap=40, multiple=16)
    np.testing.assert_allclose(out[0], 2 * img, rtol=1e-5)


def test_bad_overlap_and_axes_raise_typed_errors():
    with pytest.raises(InvalidImageError):
        predict_tiled(double, np.zeros((10, 10)), tile=8, overlap=8)
    with pytest.raises(InvalidImageError, match="0.9"):
        predict_tiled(double, np.zeros((10, 10)), tile=8, overlap=0.99)
    with pytest.raises(InvalidImageError):
        predict_tiled(double, np.zeros((2, 2, 10, 10)), tile=8)
    with pytest.raises(InvalidImageError):
        predict_tiled(double, np.zeros((0, 10)), tile=8)


def test_an_explicit_grid_is_used_as_given():
    img = np.random.default_rng(4).random((100, 90)).astype(np.float32)
    seen = []

    def record(batch):
        seen.append(len(batch))
        return 2 * batch

    grid = WindowGrid((100, 90), (64, 64), ((0, 36), (0, 26)))
    out = predict_tiled(record, img, grid=grid, batch_size=1)
    assert len(seen) == 4
    np.testing.assert_allclose(out[0], 2 * img, rtol=1e-5)
    with pytest.raises(InvalidImageError, match="grid is for"):
        predict_tiled(record, img[:50], grid=grid)


def test_2d_tiles_and_3d_patches_share_one_blender():
    # One sliding window: a stack tiled plane by plane in 2D equals the same stack run as 3D
    # patches one plane deep (same grid in Y/X, same Gaussian, same blender), exactly - also
    # for a predictor whose output depends on the window, so the blend itself is compared.
    stack = np.random.default_rng(5).random((4, 70, 90)).astype(np.float32)

    def corner(batch):                      # 2 * x plus the window's corner value: not pointwise
        return 2 * batch + batch[..., :1, :1]

    by_plane = predict_tiled(corner, stack, tile=32, overlap=0.3, batch_size=3)            # (Z, K, H, W)
    by_patch = predict_tiled_3d(corner, stack, patch=(1, 32, 32), overlap=0.3, batch_size=3)   # (K, Z, H, W)
    np.testing.assert_array_equal(np.moveaxis(by_patch, 0, 1), by_plane)
    assert not np.allclose(by_plane[:, 0], 3 * stack)                 # windows disagree: blending shows
    vol = np.random.default_rng(6).random((19, 33, 41)).astype(np.float32)
    out = predict_tiled_3d(double, vol, patch=(8, 16, 16), overlap=0.3, batch_size=2)
    np.testing.assert_allclose(out[0], 2 * vol, rtol=1e-5, atol=1e-6)
