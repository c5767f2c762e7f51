"""Engines: precision chosen by capability, ONNX Runtime agreeing with torch on a real image."""

import numpy as np
import pytest

from segloop.core.formats.normalization import Percentile
from segloop.core.formats.package import load_package
from segloop.core.inference.engines import (
    OnnxPredictor,
    TorchPredictor,
    cpu_has_native_bf16,
    export_onnx,
    resolve_device,
)
from segloop.core.inference.model import Model, build_network
from segloop.core.inference.normalize import Normalizer
from segloop.errors import EngineError


def _cpuinfo_flags():
    try:
        with open("/proc/cpuinfo") as f:
            return next((set(ln.split(":", 1)[1].split()) for ln in f if ln.startswith("flags")), set())
    except OSError:
        return set()


def test_auto_device_is_cpu_here_and_unknown_devices_are_refused():
    import torch

    mps = getattr(torch.backends, "mps", None)
    expected = "cuda" if torch.cuda.is_available() else ("mps" if mps and mps.is_available() else "cpu")
    assert resolve_device("auto") == expected
    with pytest.raises(EngineError):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(EngineError, match="CUDA is not available"):
            resolve_device("cuda")


def test_bf16_is_never_chosen_without_native_support(tiny_package, tmp_path, monkeypatch):
    monkeypatch.setenv("SEGLOOP_CACHE_DIR", str(tmp_path))
    flags = _cpuinfo_flags()
    if flags:
        assert cpu_has_native_bf16() == bool({"avx512_bf16", "amx_bf16"} & flags)
    pred = TorchPredictor(build_network(load_package(tiny_package)), device="cpu")
    choice = pred.calibrate((64, 64), in_channels=1)
    if not cpu_has_native_bf16():
        assert choice.precision == "fp32" and "no native bf16" in choice.reason
    else:   # measured, checked against fp32 and cached
        assert choice.precision in ("fp32", "bf16") and choice.fp32_ms is not None
        assert (tmp_path / "engine-choice.json").exists()


def test_onnx_runtime_matches_torch_on_a_real_image(tiny_package, nuclei_image):
    pkg = load_package(tiny_package)
    net = build_network(pkg)
    tiles = Normalizer.fit(Percentile(), nuclei_image)(nuclei_image)[None, :, :128, :128]
    tiles = np.concatenate([tiles, Normalizer.fit(Percentile(), nuclei_image)(nuclei_image)[None, :, 128:256, 128:256]])
    onnx_pred = OnnxPredictor(export_onnx(net, in_channels=1, tile=128), device="cpu")
    torch_pred = TorchPredictor(net, device="cpu", precision="fp32")
    diff = np.abs(onnx_pred(tiles) - torch_pred(tiles)).max()
    assert diff <= 1e-3


def test_onnx_engine_end_to_end_agrees_with_torch_labels(tiny_package, nuclei_image):
    a = Model(load_package(tiny_package), device="cpu", engine="torch", precision="fp32").predict(nuclei_image)
    b = Model(load_package(tiny_package), device="cpu", engine="onnx").predict(nuclei_image)
    assert (a.labels > 0).mean() == pytest.approx((b.labels > 0).mean(), abs=1e-3)


def test_int8_is_calibrated_on_the_image_and_validated_against_fp32(tiny_package, nuclei_image):
    net = build_network(load_package(tiny_package))
    data = export_onnx(net, in_channels=1, tile=64)
    norm = Normalizer.fit(Percentile(), nuclei_image)(nuclei_image)
    batch = np.stack([norm[:, y:y + 64, x:x + 64] for y in (0, 200) for x in (0, 300)])
    q = OnnxPredictor(data, device="cpu", quantize="int8")
    out = q(batch)                                    # quantizes on this batch, then checks it
    fp32 = OnnxPredictor(data, device="cpu")(batch)
    if q.choice.precision == "int8":
        assert q.agreement >= 0.99
        assert (out.argmax(1) == fp32.argmax(1)).mean() >= 0.99
    else:                                             # rejected: it must then be exactly fp32
        assert "rejected" in q.choice.reason
        np.testing.assert_array_equal(out, fp32)


def test_auto_engine_measures_once_and_caches_the_choice(tiny_package, tmp_path, monkeypatch):
    import json

    monkeypatch.setenv("SEGLOOP_CACHE_DIR", str(tmp_path))
    m = Model(load_package(tiny_package), device="cpu", engine="auto")
    assert m.engine_name in ("torch", "onnx")
    cache = json.loads((tmp_path / "engine-choice.json").read_text())
    (entry,) = [v for k, v in cache.items() if k.startswith("engine:")]
    assert entry["engine"] == m.engine_name and set(entry["ms"]) == {"torch", "onnx"}
    # a second load reads the cache instead of measuring: force the other engine through the cache
    other = "onnx" if m.engine_name == "torch" else "torch"
    key = next(k for k in cache if k.startswith("engine:"))
    cache[key]["engine"] = other
    (tmp_path / "engine-choice.json").write_text(json.dumps(cache))
    assert Model(load_package(tiny_package), device="cpu", engine="auto").engine_name == other


def test_folding_batchnorm_keeps_outputs_and_leaves_the_callers_network_alone(tiny_package, nuclei_image):
    import copy

    import torch

    from segloop.core.inference.engines import fold_conv_batchnorm

    net = build_network(load_package(tiny_package))
    # give the BatchNorms non-trivial statistics, as a trained network has
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    before = copy.deepcopy(net.state_dict())
    x = Normalizer.fit(Percentile(), nuclei_image)(nuclei_image)[None, :, :64, :64]
    pred = TorchPredictor(net, device="cpu", precision="fp32")
    assert pred.folded
    with torch.inference_mode():
        ref = torch.softmax(net(torch.from_numpy(x)), 1).numpy()
    np.testing.assert_allclose(pred(x), ref, atol=1e-5)
    for k, v in net.state_dict().items():       # the caller's network is untouched
        assert torch.equal(v, before[k]) and v.is_contiguous()
    folded = copy.deepcopy(net)
    assert fold_conv_batchnorm(folded) > 0
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())


def test_onnx_engine_handles_any_tile_and_images_smaller_than_a_tile(tiny_package, nuclei_image):
    m = Model(load_package(tiny_package), device="cpu", engine="onnx")
    assert m.predict(nuclei_image[:40, :40]).labels.shape == (40, 40)
    assert m.predict(nuclei_image, tile=128).labels.shape == nuclei_image.shape
    probs = OnnxPredictor(export_onnx(build_network(load_package(tiny_package)), in_channels=1, tile=64),
                          device="cpu")(np.zeros((1, 1, 37, 50), np.float32))
    assert probs.shape == (1, 3, 37, 50)


def test_thread_budget_leaves_a_core_and_restores_the_count_after_nested_uses():
    import torch

    from segloop.core.inference.engines import _usable_cores, thread_budget

    before = torch.get_num_threads()
    with thread_budget(reserve=1) as n:
        assert n == torch.get_num_threads() == max(1, min(before, _usable_cores() - 1))
        with thread_budget(reserve=1) as inner:            # a second widget's run shares the budget
            assert inner == n
        assert torch.get_num_threads() == n
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), thread_budget(reserve=10**6) as n:
        assert n == 1                                          # never below one thread
        raise RuntimeError("the run failed")
    assert torch.get_num_threads() == before
