"""Model.predict: the public API, and every kind of bad input the issue lists."""

import threading

import numpy as np
import pytest

import segloop
from segloop.core.formats.package import load_package
from segloop.core.inference.model import Model
from segloop.core.inference.prepare import validate_image
from segloop.errors import Cancelled, InvalidImageError, ModelNotFoundError


@pytest.fixture
def model(tiny_package):
    return Model(load_package(tiny_package), device="cpu")


def test_load_model_by_path_and_unknown_name(tiny_package):
    m = segloop.load_model(str(tiny_package), device="cpu")
    assert m.spec.name == "tiny" and hasattr(m, "network")
    with pytest.raises(ModelNotFoundError, match="known models"):
        segloop.load_model("no-such-model")


def test_register_model_makes_it_listed(tiny_package):
    name = segloop.register_model(tiny_package, name="tiny-registered")
    assert name in segloop.list_models()
    assert segloop.load_model(name, device="cpu").spec.name == "tiny"


def test_a_persisted_registration_survives_a_new_session_and_a_deleted_package_is_skipped(tiny_package):
    import shutil

    from segloop.core.formats import registry

    segloop.register_model(tiny_package, name="tiny v9", persist=True)
    registry._registered.clear()                           # a new session: only the saved file remains
    assert "tiny v9" in segloop.list_models()
    shutil.rmtree(tiny_package)
    assert "tiny v9" not in segloop.list_models()


def test_predict_real_image_returns_labels_provenance_and_uncertainty(model, nuclei_image):
    seen = []
    res = model.predict(nuclei_image, uncertainty=True, progress=lambda d, t: seen.append((d, t)))
    assert res.labels.shape == nuclei_image.shape and res.labels.dtype == np.uint16
    assert res.uncertainty.dtype == np.float16 and res.uncertainty.shape == nuclei_image.shape
    assert 0 <= float(res.uncertainty.min()) and float(res.uncertainty.max()) <= 1
    assert seen[-1][0] == seen[-1][1] == res.tiles_predicted
    prov = res.provenance
    assert prov["model"]["sha256"] == model.spec.sha256 and prov["parameters"]["tile"] == 64
    assert prov["engine"]["precision"] in ("fp32", "bf16")


def test_predict_stacks_slice_by_slice(model, nuclei_image):
    stack = np.stack([nuclei_image[:100, :120]] * 3)
    res = model.predict(stack)
    assert res.labels.shape == (3, 100, 120)
    np.testing.assert_array_equal(res.labels[0], res.labels[2])    # same slice, same result


def test_cancel_mid_run_raises_and_writes_nothing(model, nuclei_image):
    stop = threading.Event()
    out = np.zeros(nuclei_image.shape, np.uint16)

    def progress(done, total):
        stop.set()

    with pytest.raises(Cancelled):
        model.predict(nuclei_image, batch_size=1, progress=progress, cancel=stop, out=out)


@pytest.mark.parametrize("dtype", [bool, np.int8, np.int16, np.uint16, np.uint32, np.int64, np.float16,
                                   np.float32, np.float64])
def test_every_numeric_dtype_is_accepted(model, dtype):
    rng = np.random.default_rng(0)
    img = (rng.random((70, 90)) * 100 - (50 if np.issubdtype(dtype, np.signedinteger) else 0)).astype(dtype)
    assert model.predict(img).labels.shape == (70, 90)


def test_nan_inf_constant_and_tiny_images_give_labels_not_crashes(model):
    img = np.random.default_rng(1).random((80, 80)).astype(np.float32)
    img[10:20, 10:20] = np.nan
    img[30, 30] = np.inf
    assert model.predict(img).labels.shape == (80, 80)
    assert model.predict(np.full((80, 80), 7, np.uint8)).labels.max() >= 0
    assert model.predict(np.ones((1, 1), np.float32)).labels.shape == (1, 1)
    assert model.predict(np.ones((3, 200), np.float32)).labels.shape == (3, 200)


@pytest.mark.parametrize("img, match", [
    (np.zeros((0, 10)), "empty"),
    (np.zeros((10,)), "at least 2D"),
    (np.zeros((64, 64, 3), np.uint8), "looks RGB"),
    (np.zeros((2, 3, 64, 64)), "too many axes"),
    (np.zeros((2, 2, 2, 64, 64)), "too many axes"),
    (np.zeros((64, 64), np.complex64), "dtype"),
    (np.array([["a"]]), "dtype"),
    (np.full((32, 32), np.nan, np.float32), "finite"),
])
def test_bad_images_get_typed_errors_that_say_what_to_do(model, img, match):
    with pytest.raises(InvalidImageError, match=match):
        model.predict(img)


def test_channels_first_rgb_is_named_as_such():
    with pytest.raises(InvalidImageError, match="channels-first"):
        validate_image(np.zeros((3, 64, 64)), channels=3)


def test_hematoxylin_runs_a_fluorescence_model_on_16bit_rgb_ihc(model, ihc_image):
    rgb16 = ihc_image[:200, :200].astype(np.uint16) * 257
    res = model.predict(rgb16, normalization={"kind": "hematoxylin"})
    assert res.labels.shape == (200, 200)
    assert res.provenance["parameters"]["normalization"]["kind"] == "hematoxylin"


def test_semantic_models_write_class_ids(tmp_path):
    from segloop.core.formats.package import save_package

    from .conftest import tiny_spec, tiny_state

    spec = tiny_spec(task="semantic", classes=("background", "liver", "tumour"), postprocess={})
    save_package(tmp_path / "sem", spec, tiny_state(spec))
    res = Model(load_package(tmp_path / "sem"), device="cpu").predict(np.random.default_rng(0).random((50, 70)))
    assert res.labels.dtype == np.uint8 and res.labels.max() <= 2


def test_single_and_grey_alpha_channel_images_are_2d(model, nuclei_image):
    assert model.predict(nuclei_image[..., None]).labels.shape == nuclei_image.shape
    la = np.stack([nuclei_image, np.full_like(nuclei_image, 255)], -1)
    np.testing.assert_array_equal(model.predict(la).labels, model.predict(nuclei_image).labels)


def test_stacks_stay_uint16_and_fill_the_given_out(model, nuclei_image):
    stack = np.stack([nuclei_image[:120, :150]] * 3)
    out = np.zeros(stack.shape, np.uint16)
    res = model.predict(stack, out=out)
    assert res.labels is out and out.dtype == np.uint16


def test_out_of_the_wrong_shape_or_dtype_is_refused(model, nuclei_image):
    with pytest.raises(InvalidImageError, match="out must be"):
        model.predict(nuclei_image, out=np.zeros((10, 10), np.uint16))
    with pytest.raises(InvalidImageError, match="out must be"):
        model.predict(nuclei_image, out=np.zeros(nuclei_image.shape, np.float32))
