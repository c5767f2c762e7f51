"""The bundled nuclei models: real, documented, and good on an image they never saw."""

import numpy as np
import pytest
import tifffile

import segloop
from segloop.core.editing import metrics as M
from segloop.core.formats.normalization import spec_from_dict
from segloop.core.formats.registry import BUNDLED_DIR
from segloop.core.inference.engines import OnnxPredictor, TorchPredictor, export_onnx
from segloop.core.inference.model import verify_package
from segloop.core.inference.normalize import Normalizer

from .conftest import DATA

#: One per architecture (issue 8); all trained on BBBC007 by training/recipes/<name>.toml.
NUCLEI_MODELS = ("nuclei-unet", "nuclei-unet26", "nuclei-segunet", "nuclei-convnext-unet")


@pytest.fixture(scope="module", params=NUCLEI_MODELS)
def model(request):
    return segloop.load_model(request.param, device="cpu", precision="fp32")


@pytest.mark.parametrize("name", NUCLEI_MODELS)
def test_bundled_model_is_listed_verified_small_and_documented(name):
    assert name in segloop.list_models()
    path = BUNDLED_DIR / name
    spec = verify_package(path)
    assert spec.task == "instance" and spec.training["val_sources"]
    assert (path / "model.safetensors").stat().st_size < 10_000_000
    card = (path / "MODEL_CARD.md").read_text()
    for needed in ("## Data", "CC0", "Held-out", "Intended use", "Reproduce", "f1@0.5", "## Licence"):
        assert needed in card


def test_one_nuclei_model_per_architecture_and_one_with_dropout():
    from segloop.core.formats.package import read_spec

    specs = [read_spec(BUNDLED_DIR / n) for n in NUCLEI_MODELS]
    assert {s.architecture for s in specs} == {"unet", "unet26", "segunet", "convnext_unet"}
    assert any(s.architecture_kwargs.get("dropout", 0) > 0 for s in specs)     # MC-dropout uncertainty


def test_held_out_sample_image_was_not_trained_on(model):
    assert not any("A9 p10d" in s for s in model.spec.training["train_sources"])
    assert any("A9 p10d" in s for s in model.spec.training["val_sources"])


def test_segments_the_held_out_real_image_well(model, nuclei_image):
    truth = tifffile.imread(DATA / "bbbc007_A9_p10d_labels.tif")
    res = model.predict(nuclei_image)
    f1 = M.instance_f1(truth, res.labels)
    assert f1 >= 0.85, f"instance F1@0.5 {f1:.3f} on the held-out image"
    assert M.dice(truth, res.labels) >= 0.85
    assert abs(res.n_objects - int(truth.max())) <= 0.15 * truth.max()


def test_onnx_runtime_agrees_with_torch_on_a_real_image(model, nuclei_image):
    tile = 256
    norm = Normalizer.fit(spec_from_dict(model.spec.normalization), nuclei_image)
    x = norm(nuclei_image)[None, :, :tile, :tile]
    x = np.concatenate([x, norm(nuclei_image)[None, :, -tile:, -tile:]])
    p_torch = TorchPredictor(model.network, device="cpu", precision="fp32")(x)
    p_onnx = OnnxPredictor(export_onnx(model.network, in_channels=1, tile=tile), device="cpu")(x)
    assert np.abs(p_onnx - p_torch).max() <= 1e-3


def test_predict_is_deterministic(model, nuclei_image):
    a = model.predict(nuclei_image).labels
    b = model.predict(nuclei_image).labels
    np.testing.assert_array_equal(a, b)
