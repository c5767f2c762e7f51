"""``segloop click`` and label_prompts: one object per point / box, existing objects kept."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

import segloop
from segloop.cli import main
from segloop.core.inference.prompted_labels import label_prompts, read_points_csv
from segloop.errors import Cancelled, ImportLayoutError, InvalidLabelsError, InvalidPromptError
from tests.test_interactive import _package


@pytest.fixture
def model_path(tmp_path):
    return _package(tmp_path / "all", bias=20.0)      # every pixel of the 32 px window is object


@pytest.fixture
def image(tmp_path):
    img = np.random.default_rng(0).random((120, 160)).astype(np.float32)
    tifffile.imwrite(tmp_path / "img.tif", img)
    return img


def test_each_point_and_box_is_one_object_and_drawn_objects_are_kept(model_path, image):
    model = segloop.load_interactive(model_path)
    drawn = np.zeros(image.shape, np.uint16)
    drawn[0:10, 0:10] = 7                                  # a person's object
    res = label_prompts(model, image, points=[(40, 40), (5, 5), (100, 140)], boxes=[(60, 100, 70, 110)],
                        labels=drawn)
    assert [o["label"] for o in res.objects] == [8, 9, 10]
    assert res.skipped == [{"prompt": {"point": [5.0, 5.0]}, "why": "on an existing object"}]
    assert np.array_equal(res.labels[0:10, 0:10], drawn[0:10, 0:10])        # not overwritten
    assert res.labels[40, 40] == 8 and res.labels[100, 140] == 9
    assert (res.labels == 8).sum() == 32 * 32                                 # the whole window
    assert drawn.max() == 7                                                    # the caller's array untouched


def test_a_bad_prompt_stops_everything_before_anything_is_segmented(model_path, image):
    model = segloop.load_interactive(model_path)
    with pytest.raises(InvalidPromptError, match="point 2 of 2 .*outside the image"):
        label_prompts(model, image, points=[(40, 40), (400, 40)])
    with pytest.raises(InvalidLabelsError, match="shape"):
        label_prompts(model, image, points=[(40, 40)], labels=np.zeros((3, 3), np.uint16))
    with pytest.raises(Cancelled):
        label_prompts(model, image, points=[(40, 40)], cancel=lambda: True)


def test_points_csv_layouts(tmp_path):
    f = tmp_path / "napari.csv"
    f.write_text("index,axis-0,axis-1\n0,10.5,20\n1,30,40\n")
    assert read_points_csv(f) == [(10.5, 20.0), (30.0, 40.0)]
    f.write_text("X;Y;name\n20;10;a\n")
    assert read_points_csv(f) == [(10.0, 20.0)]
    f.write_text("label,centroid-0,centroid-1,centroid-2\n1,2,3,4\n")
    assert read_points_csv(f, ndim=3) == [(2.0, 3.0, 4.0)]
    f.write_text("a,b\n1,2\n")
    with pytest.raises(ImportLayoutError, match="needs columns y, x"):
        read_points_csv(f)
    f.write_text("y,x\n1,two\n")
    with pytest.raises(ImportLayoutError, match="line 2"):
        read_points_csv(f)


def test_cli_writes_labels_with_provenance(tmp_path, model_path, image, capsys):
    (tmp_path / "pts.csv").write_text("axis-0,axis-1\n40,40\n100,140\n")
    out = tmp_path / "labels.tif"
    code = main(["click", str(tmp_path / "img.tif"), "--model", str(model_path), "--points", str(tmp_path / "pts.csv"),
                 "--box", "35,35,45,45", "--out", str(out)])
    assert code == 0
    assert "2 object(s) from 3 prompt(s)" in capsys.readouterr().out       # the box lies on object 1's window
    labels = tifffile.imread(out)
    assert labels.shape == image.shape and set(np.unique(labels)) == {0, 1, 2}
    with tifffile.TiffFile(out) as tf:
        meta = json.loads(tf.pages[0].description)["segloop"]
    assert meta["model"]["task"] == "interactive" and len(meta["prompted"]) == 2
    assert meta["skipped"][0]["why"] == "covered by other objects"


@pytest.mark.parametrize("args, message", [
    (["--point", "400,1"], "outside the image"),
    (["--point", "4"], "give Y,X"),
    ([], "no prompts"),
    (["--point", "4,4", "--model", "nuclei-unet"], "not an interactive one"),
])
def test_cli_bad_input_is_one_line_and_nothing_written(tmp_path, model_path, image, capsys, args, message):
    out = tmp_path / "labels.tif"
    argv = ["click", str(tmp_path / "img.tif"), "--out", str(out), *args]
    if "--model" not in args:
        argv += ["--model", str(model_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_info_describes_a_click_model(model_path, capsys):
    assert main(["info", str(model_path)]) == 0
    out = capsys.readouterr().out
    assert "interactive" in out and "prompt:" in out and "window around the clicks" in out
