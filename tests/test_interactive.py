"""Interactive (click) models in the library: package section, prompt checks, the window the
network sees, segment / segment_crop, refusals, the simulated corrector and label objects."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import segloop
from segloop.core.editing.objects import label_objects
from segloop.core.formats.package import ModelSpec, read_spec, save_package
from segloop.core.formats.prompt import PromptSpec
from segloop.core.inference.click_eval import click_trace, next_click, noc, summarize
from segloop.core.inference.interactive import (
    Window,
    check_prompt,
    encode_prompt,
    mask_to_window,
    prompt_window,
    read_window,
)
from segloop.core.inference.normalize import Normalizer
from segloop.core.networks import build
from segloop.errors import InvalidImageError, InvalidPromptError, ModelPackageError


def _package(path, *, image_channels=1, crop=32, bias=None, maps=None):
    """A tiny interactive package; ``bias`` sets the head's bias (object minus background) so the
    network's answer is known: large positive -> every pixel of the window is object."""
    prompt = PromptSpec(crop=crop) if maps is None else PromptSpec(crop=crop, maps=tuple(maps))
    n_in = image_channels + len(prompt.maps)
    net = build("unet", n_in, 2, dims=2, base_width=4, depth=2)
    if bias is not None:
        with torch.no_grad():
            net.head.weight.zero_()
            net.head.bias.copy_(torch.tensor([0.0, float(bias)]))
    spec = ModelSpec(name="toy-click", version="0.1", architecture="unet",
                     architecture_kwargs={"base_width": 4, "depth": 2}, dims=2, in_channels=n_in,
                     classes=("background", "object"), task="interactive", postprocess={},
                     normalization={"kind": "percentile"}, prompt=prompt.to_dict())
    save_package(path, spec, net.state_dict())
    return path


@pytest.fixture
def everything(tmp_path):
    return segloop.load_interactive(_package(tmp_path / "all", bias=20.0), device="cpu")


@pytest.fixture
def nothing(tmp_path):
    return segloop.load_interactive(_package(tmp_path / "none", bias=-20.0), device="cpu")


# -- the package --------------------------------------------------------------------------

def test_interactive_spec_round_trips(tmp_path):
    spec = read_spec(_package(tmp_path / "p", image_channels=3))
    assert spec.task == "interactive"
    assert spec.image_channels == 3 and spec.in_channels == 7
    assert spec.prompt_spec == PromptSpec(crop=32)
    saved = json.loads((tmp_path / "p" / "segloop-model.json").read_text())
    assert saved["prompt"]["maps"] == ["positive", "negative", "box", "previous"]


@pytest.mark.parametrize("change, message", [
    ({"prompt": None}, "needs a 'prompt' object"),
    ({"prompt": {"maps": ["negative"]}}, "including 'positive'"),
    ({"prompt": {"maps": ["negative", "positive"]}}, "keep the order"),
    ({"prompt": {"crop": 100}}, "multiple of 16"),
    ({"prompt": {"radius": 0}}, "radius"),
    ({"prompt": {"zoom": 2}}, "unknown prompt key"),
    ({"classes": ["background", "a", "b"]}, "two classes"),
    ({"in_channels": 4}, "plus the 4 prompt maps"),
])
def test_bad_prompt_sections_are_refused(tmp_path, change, message):
    _package(tmp_path / "p")
    f = tmp_path / "p" / "segloop-model.json"
    d = json.loads(f.read_text())
    d.update(change)
    with pytest.raises(ModelPackageError, match=message):
        ModelSpec.from_dict(d)


def test_a_prompt_on_an_automatic_model_is_refused():
    d = read_spec(segloop.core.formats.registry.model_path("nuclei-unet")).to_dict()
    d["prompt"] = PromptSpec().to_dict()
    with pytest.raises(ModelPackageError, match="only for task 'interactive'"):
        ModelSpec.from_dict(d)


def test_models_of_the_other_kind_are_refused(tmp_path, everything):
    with pytest.raises(ModelPackageError, match="interactive .click. model: use segloop.load_interactive"):
        segloop.load_model(tmp_path / "all")
    with pytest.raises(ModelPackageError, match="automatic .instance. model, not an interactive one"):
        segloop.load_interactive("nuclei-unet")
    with pytest.raises(ModelPackageError, match="takes no clicks"):
        segloop.load_model("nuclei-unet").segment(np.zeros((64, 64)), positive=[(3, 3)])


# -- prompts --------------------------------------------------------------------------------

@pytest.mark.parametrize("kw, message", [
    ({}, "at least one positive click or a box"),
    ({"positive": [(60, 3)]}, "outside the image"),
    ({"positive": [(3, -2)]}, "outside the image"),
    ({"positive": [(3, 3)], "negative": [(np.nan, 3)]}, "finite"),
    ({"positive": [(1, 2, 3)]}, r"\(y, x\) points"),
    ({"box": (5, 5, 5, 30)}, "no area inside the image"),
    ({"box": (70, 70, 90, 90)}, "no area inside the image"),
    ({"box": (1, 2, 3)}, "4 finite numbers"),
    ({"positive": [(3, 3)], "previous": np.ones((10, 10), bool)}, "previous mask has shape"),
])
def test_bad_prompts_are_refused(kw, message):
    with pytest.raises(InvalidPromptError, match=message):
        check_prompt((50, 60), **kw)


def test_volume_prompts_stay_on_one_plane():
    prompt, z = check_prompt((4, 50, 60), positive=[(2, 10, 11)], negative=[(2, 20, 21)])
    assert z == 2 and prompt.positive == ((10.0, 11.0),) and prompt.negative == ((20.0, 21.0),)
    with pytest.raises(InvalidPromptError, match="planes \\[1, 2\\]"):
        check_prompt((4, 50, 60), positive=[(2, 10, 11), (1, 10, 11)])
    with pytest.raises(InvalidPromptError, match="needs the plane"):
        check_prompt((4, 50, 60), box=(1, 1, 20, 20))
    assert check_prompt((4, 50, 60), box=(1, 1, 20, 20), z=3)[1] == 3


def test_window_is_the_models_crop_for_a_click_and_zooms_out_for_a_large_box():
    spec = PromptSpec(crop=32, context=0.5)
    small = prompt_window(check_prompt((500, 500), positive=[(100, 200)])[0], spec)
    assert small.side == 32 and small.scale == 1.0
    assert (small.y0, small.x0) == (84.0, 184.0)            # whole pixels: an exact crop
    assert small.to_net(100, 200) == (16.0, 16.0)
    large = prompt_window(check_prompt((500, 500), box=(100, 100, 299, 199))[0], spec)
    assert large.side == pytest.approx(400.0)                # 200 px extent + 50 % each side
    assert large.scale == pytest.approx(32 / 400)


def test_prompt_maps_mark_clicks_box_and_previous():
    spec = PromptSpec(crop=32, radius=2)
    prev = np.zeros((100, 100), bool)
    prev[45:55, 45:55] = True
    prompt, _ = check_prompt((100, 100), positive=[(50, 50)], negative=[(40, 60)], box=(44, 44, 56, 56),
                             previous=prev)
    window = prompt_window(prompt, spec)
    maps = encode_prompt(prompt, window, spec)
    assert maps.shape == (4, 32, 32)
    py, px = (int(v) for v in window.to_net(50, 50))
    ny, nx = (int(v) for v in window.to_net(40, 60))
    assert maps[0, py, px] == 1 and maps[0, ny, nx] == 0 and maps[0].sum() == 13    # disk of radius 2
    assert maps[1, ny, nx] == 1 and maps[1, py, px] == 0
    assert maps[2].sum() == 13 * 13 and maps[2, py, px] == 1
    assert maps[3].sum() == 100
    assert np.array_equal(mask_to_window(prev, window) >= 0.5, maps[3] > 0)


def test_read_window_reads_only_the_window_and_pads_outside():
    class Counting:
        """An array that records the region of each read."""

        def __init__(self, a):
            self.a, self.shape, self.dtype, self.reads = a, a.shape, a.dtype, []

        def __getitem__(self, key):
            self.reads.append(key)
            return self.a[key]

    img = np.arange(300 * 400, dtype=np.float32).reshape(300, 400)
    arr = Counting(img)
    norm = Normalizer.fit({"kind": "scale", "in_min": 0.0, "in_max": float(img.max())}, img)
    win = Window(-8.0, 100.0, 32.0, 32)
    x = read_window(arr, win, norm, channel_axis=None)
    assert arr.reads == [(slice(0, 24, 1), slice(100, 132, 1))]
    assert np.all(x[0, :8] == 0)                               # above the image: padding
    assert np.allclose(x[0, 8:], norm(img[0:24, 100:132])[0])
    big = Window(0.0, 0.0, 256.0, 32)                           # 8x zoomed out: read with a stride
    read_window(arr, big, norm, channel_axis=None)
    assert arr.reads[-1] == (slice(0, 256, 4), slice(0, 256, 4))


# -- segmenting -----------------------------------------------------------------------------

def test_segment_returns_the_images_shape_and_keeps_the_clicked_part(everything):
    img = np.random.default_rng(0).random((200, 300)).astype(np.float32)
    mask = everything.segment(img, positive=[(100, 150)])
    assert mask.shape == (200, 300) and mask.dtype == bool
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    assert (rows[0], rows[-1], cols[0], cols[-1]) == (84, 115, 134, 165)      # the 32 px window
    crop = everything.segment_crop(img, positive=[(100, 150)], negative=[(90, 140)])
    assert crop.offset == (80, 130) and crop.mask.shape == (32, 32)         # centred between the clicks
    assert not crop.mask[90 - 80, 140 - 130] and crop.mask.sum() == 32 * 32 - 1 and crop.n_clicks == 2 and crop.milliseconds > 0


def test_nothing_found_is_an_empty_mask(nothing):
    assert not nothing.segment(np.random.default_rng(0).random((64, 64)), positive=[(30, 30)]).any()


def test_a_volume_is_segmented_on_the_clicked_plane(everything):
    vol = np.random.default_rng(0).random((5, 64, 80)).astype(np.float32)
    mask = everything.segment(vol, positive=[(3, 30, 40)])
    assert mask.shape == vol.shape and mask[3].any() and not np.delete(mask, 3, axis=0).any()
    crop = everything.segment_crop(vol, box=(10, 10, 20, 30), z=1)
    assert crop.offset[0] == 1


def test_rgb_is_read_through_hematoxylin_on_a_one_channel_model(everything):
    from skimage import data

    he = data.immunohistochemistry()[:128, :128]
    assert everything.segment(he, positive=[(60, 60)]).shape == (128, 128)
    assert "hematoxylin" in repr(everything.normalizer_for(he))
    refusing = segloop.load_interactive(everything.package.path, stain="none")
    with pytest.raises(InvalidImageError, match="looks RGB"):
        refusing.segment(he, positive=[(60, 60)])


def test_the_normalizer_is_fitted_once_per_image(everything):
    img = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    first = everything.normalizer_for(img)
    assert everything.normalizer_for(img) is first
    assert everything.normalizer_for(img.copy()) is not first


def test_pixel_size_scales_the_window(tmp_path):
    path = _package(tmp_path / "px", bias=20.0)
    f = path / "segloop-model.json"
    d = json.loads(f.read_text())
    d["pixel_size"] = [0.5, 0.5]
    f.write_text(json.dumps(d))
    model = segloop.load_interactive(path)
    img = np.zeros((300, 300), np.float32)
    assert model.segment_crop(img, positive=[(150, 150)]).window.side == 32
    assert model.segment_crop(img, positive=[(150, 150)], pixel_size=0.25).window.side == 64


# -- the simulated corrector ---------------------------------------------------------------

def test_next_click_goes_to_the_middle_of_the_larger_error():
    gt = np.zeros((40, 40), bool)
    gt[10:30, 10:30] = True
    (y, x), positive = next_click(gt, None)
    assert positive and 19 <= y <= 20 and 19 <= x <= 20
    pred = gt.copy()
    pred[10:30, 10:14] = False              # a 4-wide miss
    pred[0:10, 0:40] = True                 # a 10-high leak: larger
    (y, x), positive = next_click(gt, pred)
    assert not positive and 0 <= y < 10
    assert next_click(gt, gt) is None


def test_noc_and_summary():
    assert noc([0.5, 0.86, 0.95], 0.85, 10) == 2
    assert noc([0.5, 0.6], 0.85, 10) == 10
    from segloop.core.inference.click_eval import ClickTrace

    s = summarize([ClickTrace(ious=[0.9], milliseconds=[5.0]), ClickTrace(ious=[0.5, 0.7, 0.88], milliseconds=[1, 1, 1])])
    assert s["noc@85"] == (1 + 3) / 2 and s["noc@90"] == (1 + 10) / 2
    assert s["miou@1"] == pytest.approx(0.7) and s["miou@3"] == pytest.approx((0.9 + 0.88) / 2)
    assert s["failed@90"] == 0.5


def test_click_trace_on_a_model_that_finds_everything_in_its_window(everything):
    gt = np.zeros((100, 100), bool)
    gt[40:72, 30:62] = True                 # exactly one 32 px window
    trace = click_trace(everything, np.random.default_rng(0).random((100, 100)), gt, max_clicks=3)
    assert trace.clicks[0][2] and trace.ious[0] == pytest.approx(1.0, abs=0.07)


# -- objects --------------------------------------------------------------------------------

def test_label_objects_instances_and_semantic_parts():
    inst = np.zeros((30, 30), np.uint16)
    inst[1:6, 1:6] = 4
    inst[10:20, 10:20] = 9
    inst[25, 25] = 2                            # a speck
    objs = label_objects(inst, task="instance", min_area=4)
    assert [(o.value, o.area) for o in objs] == [(4, 25), (9, 100)]
    sem = np.zeros((2, 30, 30), np.uint8)
    sem[1, 0:10, 0:3] = 1
    sem[1, 0:3, 5:9] = 1                       # inside the first part's neighbourhood, another part
    sem[1, 20:25, 20:25] = 2
    objs = label_objects(sem, task="semantic", min_area=1)
    assert [(o.z, o.value, o.area) for o in objs] == [(1, 1, 30), (1, 1, 12), (1, 2, 25)]
    assert [int(o.mask(sem).sum()) for o in objs] == [30, 12, 25]
    assert label_objects(sem, task="semantic", classes=[2], min_area=1)[0].value == 2


def test_a_previous_crop_is_the_same_prompt_as_the_whole_plane(everything):
    img = np.random.default_rng(0).random((300, 400)).astype(np.float32)
    first = everything.segment_crop(img, positive=[(150, 200)])
    spec = everything.prompt
    whole, _ = check_prompt(img.shape, positive=[(150, 200)], negative=[(140, 190)], previous=first.paste(img.shape))
    small, _ = check_prompt(img.shape, positive=[(150, 200)], negative=[(140, 190)], previous=first)
    assert small.previous.shape == first.mask.shape and small.previous_offset == first.offset
    assert prompt_window(small, spec) == prompt_window(whole, spec)
    window = prompt_window(small, spec)
    assert np.array_equal(encode_prompt(small, window, spec), encode_prompt(whole, window, spec))
    again = everything.segment_crop(img, positive=[(150, 200)], negative=[(140, 190)], previous=first)
    assert again.window.side == pytest.approx(32 * 1.8)      # the previous mask is part of the extent
    with pytest.raises(InvalidPromptError, match="another plane"):
        check_prompt((3, 300, 400), positive=[(1, 150, 200)], previous=first)
