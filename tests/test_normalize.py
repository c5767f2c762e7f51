"""Tests for segloop.core.formats.normalization: specs as data, image-wide stats, tile-wise application."""

from __future__ import annotations

import json

import numpy as np
import pytest
from skimage.color import rgb2hed
from skimage.data import immunohistochemistry

from segloop.core.formats.normalization import (
    CTWindow,
    Fixed,
    Hematoxylin,
    Percentile,
    Scale,
    describe,
    output_channels,
    spec_from_dict,
)
from segloop.core.inference.normalize import MAX_SAMPLE_PIXELS, Normalizer, sample_strides
from segloop.errors import InvalidImageError, ModelPackageError

ALL_SPECS = [
    Percentile(),
    Percentile(low=0.5, high=99.0, per_channel=False),
    Fixed(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
    Fixed(mean=(10.0,), std=(2.0,)),
    Scale(),
    Scale(in_min=-1.0, in_max=1.0),
    CTWindow(),
    CTWindow(level=-600.0, width=1500.0),
    Hematoxylin(),
    Hematoxylin(low=2.0, high=98.0, invert=True),
]


class CountingArray:
    """Array-like that counts the elements handed out by ``__getitem__``."""

    def __init__(self, a):
        self._a = a
        self.shape = a.shape
        self.dtype = a.dtype
        self.ndim = a.ndim
        self.read = 0
        self.calls = 0

    def __getitem__(self, key):
        out = np.asarray(self._a[key])
        self.read += out.size
        self.calls += 1
        return out

    def __array__(self, *args, **kwargs):
        raise AssertionError("the whole image was converted to an array")


def _tiles_2d(img, norm, th, tw):
    """Normalize ``img`` tile by tile (ragged edges) and stitch along Y and X."""
    rows = []
    for y in range(0, img.shape[0], th):
        rows.append(np.concatenate(
            [norm(img[y:y + th, x:x + tw]) for x in range(0, img.shape[1], tw)], axis=-1))
    return np.concatenate(rows, axis=-2)


# -- specs as data ------------------------------------------------------------


@pytest.mark.parametrize("spec", ALL_SPECS, ids=lambda s: s.kind)
def test_dict_round_trip(spec):
    d = spec.to_dict()
    assert d["kind"] == spec.kind
    assert d["schema_version"] == 1
    d2 = json.loads(json.dumps(d))  # JSON-able, survives the package file
    back = spec_from_dict(d2)
    assert back == spec
    assert type(back) is type(spec)
    assert isinstance(describe(spec), str) and "\n" not in describe(spec)


def test_from_dict_defaults_and_lists():
    assert spec_from_dict({"kind": "percentile"}) == Percentile()
    assert spec_from_dict({"kind": "fixed", "mean": [1, 2], "std": [3, 4]}) == Fixed((1.0, 2.0), (3.0, 4.0))


def test_unknown_kind_raises():
    with pytest.raises(ModelPackageError, match="zscore"):
        spec_from_dict({"kind": "zscore"})


@pytest.mark.parametrize("d, needle", [
    ({"low": 1.0}, "kind"),
    ("percentile", "JSON object"),
    ({"kind": "percentile", "hihg": 99.0}, "hihg"),
    ({"kind": "percentile", "schema_version": 2}, "schema_version"),
    ({"kind": "percentile", "low": 50.0, "high": 10.0}, "low"),
    ({"kind": "percentile", "low": "1"}, "low"),
    ({"kind": "fixed", "mean": [0.0], "std": [0.0]}, "std"),
    ({"kind": "fixed", "mean": [0.0, 1.0], "std": [1.0, 1.0, 1.0]}, "mean"),
    ({"kind": "scale", "in_min": 3.0, "in_max": 3.0}, "in_max"),
    ({"kind": "ct_window", "width": 0.0}, "width"),
    ({"kind": "ct_window", "level": float("nan")}, "level"),
    ({"kind": "hematoxylin", "invert": "yes"}, "invert"),
])
def test_bad_spec_dicts_raise_model_package_error(d, needle):
    with pytest.raises(ModelPackageError, match=needle):
        spec_from_dict(d)


def test_output_channels_and_describe():
    assert output_channels(Hematoxylin(), 3) == 1
    assert output_channels(Percentile(), 3) == 3
    assert output_channels({"kind": "scale"}, 1) == 1
    with pytest.raises(InvalidImageError):
        output_channels(Hematoxylin(), 1)
    with pytest.raises(InvalidImageError):
        output_channels(Fixed(mean=(0.0, 0.0), std=(1.0, 1.0)), 3)
    assert "400" in describe(CTWindow()) and "hematoxylin" in describe(Hematoxylin())


# -- statistics from a strided sample -----------------------------------------


def test_stats_on_huge_memmap_read_only_a_strided_sample(tmp_path):
    mm = np.memmap(tmp_path / "huge.raw", mode="w+", dtype=np.uint8, shape=(20000, 20000))
    mm[:1000] = 200  # 5 % bright rows, the rest of the (sparse) file reads as 0
    mm.flush()
    img = CountingArray(mm)
    norm = Normalizer.fit(Percentile(low=1.0, high=99.8), img)
    assert img.read < 5e6
    assert img.read <= MAX_SAMPLE_PIXELS
    assert norm.stats["low"] == [0.0] and norm.stats["high"] == [200.0]
    strides = norm.stats["sample_strides"]
    assert strides == [10, 10]
    ref = np.percentile(np.asarray(mm[::10, ::10], dtype=np.float64), [1.0, 99.8])
    assert norm.stats["low"][0] == ref[0] and norm.stats["high"][0] == ref[1]
    out = norm(mm[990:1010, :5])
    assert out.shape == (1, 20, 5) and out.dtype == np.float32
    assert np.all(out[0, :10] == 1.0) and np.all(out[0, 10:] == 0.0)


def test_stack_with_channels_is_strided_in_every_spatial_axis():
    a = np.zeros((7, 3000, 3000, 2), np.uint16)
    a[..., 1] = 1000
    img = CountingArray(a)
    norm = Normalizer.fit(Percentile(), img, channel_axis=-1)
    assert img.calls == 1
    assert img.read <= MAX_SAMPLE_PIXELS * 2
    sz, sy, sx, sc = norm.stats["sample_strides"]
    assert sz == 1 and sy > 1 and sx > 1 and sc == 1  # short Z keeps all slices
    assert norm.stats["channels"] == 2


def test_sample_strides_balance_and_budget():
    assert sample_strides((100, 100)) == (1, 1)
    s = sample_strides((20000, 20000), max_pixels=4_000_000)
    assert s == (10, 10)
    s = sample_strides((5, 20000, 20000, 3), channel_axis=-1)
    n = [-(-d // st) for d, st in zip((5, 20000, 20000), s[:3], strict=True)]
    assert s[0] == 1 and s[3] == 1 and np.prod(n) <= MAX_SAMPLE_PIXELS


# -- tile-wise application equals whole-image application ---------------------


@pytest.mark.parametrize("spec", [Percentile(), Percentile(per_channel=False),
                                  Fixed(mean=(1.0, 2.0, 3.0), std=(4.0, 5.0, 6.0)),
                                  Scale(), CTWindow(level=50.0, width=100.0)],
                         ids=lambda s: s.kind)
def test_tiles_equal_whole_image_bit_for_bit(spec):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:301, :317]
    img = (xx[..., None] * np.array([1.0, 0.3, 2.0]) + yy[..., None] * 0.5
           + rng.normal(0, 3, (301, 317, 3))).astype(np.float32)
    img[5, 7, 1] = np.nan
    img[200, 300, 2] = np.inf
    norm = Normalizer.fit(spec, img, channel_axis=-1)
    whole = norm(img)
    assert whole.shape == (3, 301, 317) and whole.dtype == np.float32
    assert whole.flags.c_contiguous
    assert np.array_equal(_tiles_2d(img, norm, 64, 80), whole)


def test_tiles_equal_whole_image_hematoxylin():
    ihc = immunohistochemistry()
    norm = Normalizer.fit(Hematoxylin(), ihc, channel_axis=-1)
    whole = norm(ihc)
    assert np.array_equal(_tiles_2d(ihc, norm, 100, 128), whole)


def test_per_tile_statistics_would_differ():
    """Guard: the tile test above can only pass because stats are image-wide."""
    img = np.mgrid[:200, :200][1].astype(np.float32)
    tile = img[:, :50]
    whole_stats = Normalizer.fit(Percentile(), img)(tile)
    tile_stats = Normalizer.fit(Percentile(), tile)(tile)
    assert not np.allclose(whole_stats, tile_stats)


def test_stats_json_round_trip_rebuilds_same_normalizer():
    ihc = immunohistochemistry()
    for spec in (Percentile(), Hematoxylin()):
        norm = Normalizer.fit(spec, ihc, channel_axis=-1)
        again = Normalizer.from_stats(spec.to_dict(), json.loads(json.dumps(norm.stats)),
                                      channel_axis=-1)
        assert np.array_equal(again(ihc[:64, :64]), norm(ihc[:64, :64]))


# -- kinds ----------------------------------------------------------------------


def test_percentile_values_and_channels_first():
    img = np.zeros((10, 20, 2), np.float64)
    img[..., 0] = np.linspace(0, 1, 200).reshape(10, 20)
    img[..., 1] = np.linspace(100, 300, 200).reshape(10, 20)
    norm = Normalizer.fit(Percentile(low=0.0, high=100.0), img, channel_axis=-1)
    out = norm(img)
    assert out.shape == (2, 10, 20)
    assert np.allclose(out[0], img[..., 0], atol=1e-6)
    assert np.allclose(out[1], (img[..., 1] - 100) / 200, atol=1e-6)
    assert norm.stats["low"] == [0.0, 100.0] and norm.stats["high"] == [1.0, 300.0]
    # not clipped: values beyond the percentiles go beyond [0, 1]
    assert norm(np.full((2, 2, 2), 500.0))[1].max() == pytest.approx(2.0)


def test_percentile_shared_over_channels():
    img = np.stack([np.zeros((10, 10)), np.full((10, 10), 10.0)], axis=-1)
    out = Normalizer.fit(Percentile(low=0.0, high=100.0, per_channel=False), img, channel_axis=-1)(img)
    assert np.all(out[0] == 0.0) and np.all(out[1] == 1.0)


def test_fixed_and_scale():
    img = np.full((4, 5, 3), 10, np.uint8)
    out = Normalizer.fit(Fixed(mean=(10.0, 8.0, 0.0), std=(1.0, 2.0, 5.0)), img, channel_axis=-1)(img)
    assert np.allclose(out[:, 0, 0], [0.0, 1.0, 2.0])
    out = Normalizer.fit(Fixed(mean=(6.0,), std=(2.0,)), img, channel_axis=-1)(img)
    assert out.shape == (3, 4, 5) and np.all(out == 2.0)
    out = Normalizer.fit(Scale(), img, channel_axis=-1)(img)
    assert np.allclose(out, 10 / 255)
    with pytest.raises(InvalidImageError):
        Normalizer.fit(Fixed(mean=(0.0, 0.0), std=(1.0, 1.0)), img, channel_axis=-1)


def test_ct_window_maps_edges_and_clips():
    spec = CTWindow(level=40.0, width=400.0)
    hu = np.array([[-1000.0, -160.0, 40.0, 240.0, 3000.0]])
    out = Normalizer.fit(spec, hu)(hu)[0, 0]
    assert out.tolist() == [0.0, 0.0, 0.5, 1.0, 1.0]
    hu16 = np.array([[-1024, -160, 240, 3071]], np.int16)
    assert Normalizer.fit(spec, hu16)(hu16)[0, 0].tolist() == [0.0, 0.0, 1.0, 1.0]


def test_hematoxylin_on_real_ihc_makes_nuclei_bright():
    ihc = immunohistochemistry()
    norm = Normalizer.fit(Hematoxylin(), ihc, channel_axis=-1)
    out = norm(ihc)
    assert out.shape == (1, 512, 512) and out.dtype == np.float32
    assert norm.out_channels == 1
    h = rgb2hed(ihc)[..., 0]
    assert np.corrcoef(out[0].ravel(), h.ravel())[0, 1] > 0.99
    nuclei = h > np.percentile(h, 90)  # hematoxylin-rich (dark blue) pixels
    assert out[0][nuclei].mean() > out[0][~nuclei].mean() + 0.3
    # same numbers as skimage's colour deconvolution, just rescaled
    lo, hi = norm.stats["low"][0], norm.stats["high"][0]
    assert np.allclose(out[0] * (hi - lo) + lo, h, atol=1e-5)
    inv = Normalizer.fit(Hematoxylin(invert=True), ihc, channel_axis=-1)(ihc)
    assert np.allclose(inv, 1.0 - out, atol=1e-6)


def test_hematoxylin_float_input_matches_uint8():
    ihc = immunohistochemistry()
    a = Normalizer.fit(Hematoxylin(), ihc, channel_axis=-1)(ihc)
    b = Normalizer.fit(Hematoxylin(), ihc / 255.0, channel_axis=-1)(ihc / 255.0)
    c = Normalizer.fit(Hematoxylin(), ihc.astype(np.float32), channel_axis=-1)(ihc.astype(np.float32))
    assert np.allclose(a, b, atol=1e-5) and np.allclose(a, c, atol=1e-5)


@pytest.mark.parametrize("shape, channel_axis", [((32, 32), None), ((32, 32, 4), -1), ((32, 32, 1), -1)])
def test_hematoxylin_needs_three_channels(shape, channel_axis):
    with pytest.raises(InvalidImageError, match="3 channels"):
        Normalizer.fit(Hematoxylin(), np.zeros(shape, np.uint8), channel_axis=channel_axis)


# -- bad values -------------------------------------------------------------------


def test_nan_inf_ignored_by_stats_and_zeroed_in_output():
    img = np.arange(100, dtype=np.float64).reshape(10, 10)
    bad = img.copy()
    bad[0, :3] = [np.nan, np.inf, -np.inf]
    clean = np.delete(img.ravel(), [0, 1, 2])
    norm = Normalizer.fit(Percentile(low=1.0, high=99.0), bad)
    assert norm.stats["low"][0] == pytest.approx(np.percentile(clean, 1.0))
    assert norm.stats["high"][0] == pytest.approx(np.percentile(clean, 99.0))
    out = norm(bad)
    assert np.isfinite(out).all()
    assert out[0, 0, :3].tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("spec", ALL_SPECS, ids=lambda s: s.kind)
def test_non_finite_pixels_give_zero_for_every_kind(spec):
    rgb = immunohistochemistry()[:40, :40].astype(np.float32)
    rgb[3, 4, 1] = np.nan
    rgb[5, 6, 0] = -np.inf
    norm = Normalizer.fit(spec, rgb, channel_axis=-1)
    out = norm(rgb)
    assert np.isfinite(out).all()
    if norm.out_channels == 1:
        assert out[0, 3, 4] == 0.0 and out[0, 5, 6] == 0.0
    else:
        assert out[1, 3, 4] == 0.0 and out[0, 5, 6] == 0.0
        clean = np.nan_to_num(rgb, nan=0.0, posinf=0.0, neginf=0.0)
        assert out[0, 3, 4] == norm(clean)[0, 3, 4]  # other channels of the pixel are kept


def test_all_non_finite_image_raises():
    img = np.full((16, 16), np.nan, np.float32)
    img[0, 0] = np.inf
    with pytest.raises(InvalidImageError, match="no finite values"):
        Normalizer.fit(Percentile(), img)
    with pytest.raises(InvalidImageError, match="no finite values"):
        Normalizer.fit(Scale(), img)


def test_constant_image_gives_finite_zeros():
    for value in (0.0, 7.0, -3e5):
        img = np.full((20, 30), value, np.float32)
        out = Normalizer.fit(Percentile(), img)(img)
        assert np.isfinite(out).all() and np.all(out == 0.0)
    rgb = np.full((20, 30, 3), 128, np.uint8)
    out = Normalizer.fit(Hematoxylin(), rgb, channel_axis=-1)(rgb)
    assert out.shape == (1, 20, 30) and np.isfinite(out).all()


def test_sparse_bright_image_falls_back_to_sample_max():
    img = np.zeros((100, 100), np.uint16)
    img[0, :10] = 1000  # 0.1 % of pixels: p99.8 is still 0
    norm = Normalizer.fit(Percentile(low=1.0, high=99.8), img)
    out = norm(img)
    assert norm.stats["degenerate"] == [True]
    assert out.max() == 1.0 and out.min() == 0.0


def test_huge_values_are_clipped_to_float32_range():
    img = np.array([[0.0, 1.0, 1e300, -1e300]])
    out = Normalizer.fit(Scale(in_min=0.0, in_max=1.0), img)(img)
    assert np.isfinite(out).all() and out[0, 0, 2] == np.finfo(np.float32).max


# -- dtypes -----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [bool, np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32,
                                   np.int64, np.uint64, np.float16, np.float32, np.float64])
def test_every_real_dtype_works(dtype):
    rng = np.random.default_rng(1)
    if dtype is bool:
        img = rng.random((30, 40)) > 0.5
    elif np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        img = rng.integers(max(info.min, -1000), min(info.max, 60000), (30, 40), endpoint=True).astype(dtype)
    else:
        img = rng.normal(0, 100, (30, 40)).astype(dtype)
    norm = Normalizer.fit(Percentile(low=0.0, high=100.0), img)
    out = norm(img)
    assert out.shape == (1, 30, 40) and out.dtype == np.float32 and np.isfinite(out).all()
    assert out.min() == pytest.approx(0.0) and out.max() == pytest.approx(1.0)
    ref = img.astype(np.float64)
    assert np.allclose(out[0], (ref - ref.min()) / (ref.max() - ref.min()), atol=1e-6)


def test_bool_reads_as_zero_one_and_int8_negatives():
    b = np.zeros((8, 8), bool)
    b[::2] = True
    out = Normalizer.fit(Scale(in_min=0.0, in_max=1.0), b)(b)
    assert np.array_equal(out[0], b.astype(np.float32))
    i8 = np.array([[-128, -1, 0, 127]], np.int8)
    out = Normalizer.fit(Scale(in_min=-128.0, in_max=127.0), i8)(i8)
    assert out[0, 0].tolist() == [0.0, pytest.approx(127 / 255), pytest.approx(128 / 255), 1.0]
    big = np.array([[0, 2**32 - 1]], np.uint32)
    out = Normalizer.fit(Percentile(low=0.0, high=100.0), big)(big)
    assert out[0, 0].tolist() == [0.0, 1.0]


def test_complex_and_non_numeric_raise():
    z = np.zeros((8, 8), np.complex64)
    with pytest.raises(InvalidImageError, match="complex"):
        Normalizer.fit(Percentile(), z)
    norm = Normalizer.fit(Percentile(), np.zeros((8, 8), np.float32))
    with pytest.raises(InvalidImageError, match="complex"):
        norm(z)
    with pytest.raises(InvalidImageError):
        Normalizer.fit(Percentile(), np.array([["a", "b"], ["c", "d"]]))


def test_layout_errors():
    with pytest.raises(InvalidImageError):
        Normalizer.fit(Percentile(), np.zeros(10))
    with pytest.raises(InvalidImageError):
        Normalizer.fit(Percentile(), np.zeros((8, 8, 3)), channel_axis=0)
    with pytest.raises(InvalidImageError, match="empty"):
        Normalizer.fit(Percentile(), np.zeros((0, 8)))
    norm = Normalizer.fit(Percentile(), np.ones((8, 8, 3)), channel_axis=-1)
    with pytest.raises(InvalidImageError):
        norm(np.ones((8, 8, 2)))
