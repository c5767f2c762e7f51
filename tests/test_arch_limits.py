"""Architecture settings are bounded and the memory a network needs is estimated before anything is allocated.

A typo such as ``--arch-kwargs '{"depth": 99}'`` used to make the constructor allocate until the
kernel killed the process.  Every test that could allocate much if the checks regressed runs the
command in a child process under an address-space limit (``RLIMIT_AS``), so a regression fails
the test instead of taking the machine down.
"""

from __future__ import annotations

import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import segloop
from segloop.core.formats.package import load_package
from segloop.core.formats.registry import BUNDLED_DIR
from segloop.core.formats.trainfolder import TrainingFolder
from segloop.core.networks import (
    available_memory,
    build,
    check_arguments,
    check_network,
    estimate_memory,
    format_bytes,
)
from segloop.errors import ArchitectureArgumentsError, NetworkTooLargeError

ROOT = Path(__file__).resolve().parents[1]
#: Address space a child may use: torch and segloop take ~1 GB of it; a regression stops here.
LIMIT = 4 * 2**30


def _limit_memory():
    """preexec_fn: at most :data:`LIMIT` bytes of address space for the child."""
    resource.setrlimit(resource.RLIMIT_AS, (LIMIT, LIMIT))


def _run(args: list[str], *, env: dict | None = None, timeout: float = 120) -> tuple[subprocess.CompletedProcess, float]:
    """Run ``python args...`` under :data:`LIMIT`; the finished process and its seconds."""
    import os

    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout,
                          preexec_fn=_limit_memory, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    return proc, time.perf_counter() - t0


def _one_error_line(proc: subprocess.CompletedProcess, prog: str) -> str:
    err = proc.stderr.strip()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and len(err.splitlines()) == 1, err
    assert err.startswith(f"{prog}: error: "), err
    return err


@pytest.fixture(scope="module")
def nuclei():
    import tifffile
    from skimage.measure import label

    img = tifffile.imread(ROOT / "src" / "segloop" / "data" / "bbbc007_A9_p10d.tif")
    return img[:128, :128], label(img[:128, :128] > np.percentile(img, 80)).astype(np.uint16)


@pytest.fixture
def folder(tmp_path, nuclei):
    img, lab = nuclei
    tf = TrainingFolder.create(tmp_path / "F", classes=("background", "nucleus"), task="instance",
                               modality="fluorescence")
    tf.add_sample(img[:96, :96], lab[:96, :96], None, axes="YX", source="a.tif", split="train", sample_id="t0")
    tf.add_sample(img[96:, :96], lab[96:, :96], None, axes="YX", source="b.tif", split="val", sample_id="v0")
    return tmp_path / "F"


# --------------------------------------------------------------------------- bounds


@pytest.mark.parametrize("arch, setting, value, allowed", [
    ("unet", "depth", 99, "an integer from 1 to 8"),
    ("unet", "depth", 0, "an integer from 1 to 8"),
    ("unet", "depth", 9, "an integer from 1 to 8"),
    ("segunet", "depth", 12, "an integer from 1 to 8"),
    ("convnext_unet", "depth", -1, "an integer from 1 to 8"),
    ("unet", "base_width", 100000, "an integer from 1 to 512"),
    ("unet", "base_width", 0, "an integer from 1 to 512"),
    ("unet26", "base_width", 513, "an integer from 1 to 512"),
    ("unet", "convs_per_level", 9, "an integer from 1 to 8 or a list"),
    ("unet", "convs_per_level", [2, 2, 99, 2, 2], "an integer from 1 to 8 or a list"),
    ("convnext_unet", "blocks_per_stage", 17, "an integer from 1 to 16 or a list"),
    ("unet", "dropout", 1.0, "a number from 0 to below 1"),
    ("segunet", "dropout", -0.1, "a number from 0 to below 1"),
    ("unet", "dropout", float("nan"), "a number from 0 to below 1"),
])
def test_out_of_range_settings_are_refused_in_one_line_naming_setting_value_and_range(arch, setting, value, allowed):
    with pytest.raises(ArchitectureArgumentsError) as err:
        check_arguments(arch, {setting: value}, source="--arch-kwargs")
    msg = str(err.value)
    assert msg.startswith(f"--arch-kwargs: {arch} {setting}={value!r} is out of range: give {allowed}"), msg
    assert "\n" not in msg


@pytest.mark.parametrize("value", ["four", "4", 4.5, True, None])
def test_settings_of_the_wrong_kind_are_refused(value):
    with pytest.raises(ArchitectureArgumentsError, match=rf"unet depth={value!r} is not an integer: give an integer"):
        check_arguments("unet", {"depth": value})
    with pytest.raises(ArchitectureArgumentsError, match="must be a JSON object"):
        check_arguments("unet", [("depth", 4)], source="--arch-kwargs")


def test_the_bounds_themselves_are_allowed_and_whole_floats_count_as_integers():
    check_arguments("unet", {"depth": 8, "base_width": 512, "convs_per_level": 8, "dropout": 0.0})
    check_arguments("unet", {"depth": 1, "base_width": 1, "convs_per_level": [1, 8]})
    check_arguments("convnext_unet", {"depth": 4.0, "blocks_per_stage": [16, 1, 1, 1, 1]})
    assert build("unet", 1, 2, dims=2, depth=1.0, base_width=2).divisor == 2


def test_build_checks_bounds_before_the_constructor_runs():
    with pytest.raises(ArchitectureArgumentsError, match=r"^unet depth=99 is out of range: give an integer from 1 to 8"):
        build("unet", 1, 3, dims=2, depth=99)
    with pytest.raises(ArchitectureArgumentsError, match=r"^unet26 base_width=100000 is out of range"):
        build("unet26", 1, 3, base_width=100000)


# --------------------------------------------------------------------------- the estimate


def test_the_estimate_counts_parameters_exactly_without_allocating():
    net = build("segunet", 2, 4, dims=3, depth=3, base_width=4, convs_per_level=[1, 2, 2, 3])
    count = sum(p.numel() for p in net.parameters()) + sum(b.numel() for b in net.buffers())
    est = estimate_memory("segunet", 2, 4, dims=3, kwargs={"depth": 3, "base_width": 4,
                                                          "convs_per_level": [1, 2, 2, 3]})
    assert est.parameters == count and est.weights_bytes == 4 * count and est.activations_bytes is None
    # the largest network the bounds allow is described in no time and no memory: 1.5e11 weights on meta
    t0 = time.perf_counter()
    huge = estimate_memory("unet", 1, 3, dims=2, kwargs={"depth": 8, "base_width": 512})
    assert huge.parameters > 1e11 and time.perf_counter() - t0 < 10


def test_activations_scale_with_batch_and_padded_patch():
    kw = {"depth": 4, "base_width": 16}
    one = estimate_memory("unet", 1, 3, dims=2, kwargs=kw, shape=(256, 256), batch=1, training=True)
    eight = estimate_memory("unet", 1, 3, dims=2, kwargs=kw, shape=(256, 256), batch=8, training=True)
    assert eight.activations_bytes == pytest.approx(8 * one.activations_bytes, rel=1e-6)
    assert eight.weights_bytes == 4 * 4 * eight.parameters             # weights, gradients, two Adam moments
    padded = estimate_memory("unet", 1, 3, dims=2, kwargs=kw, shape=(250, 241), batch=1, training=True)
    assert padded.shape == (256, 256) and padded.activations_bytes == one.activations_bytes
    infer = estimate_memory("unet", 1, 3, dims=2, kwargs=kw, shape=(256, 256), batch=1)
    assert infer.activations_bytes < one.activations_bytes / 3 and infer.weights_bytes == 4 * infer.parameters


_PEAK = """
import json, sys
import torch
from segloop.core.networks import build, estimate_memory
name, kw, dims, shape, batch, training = json.loads(sys.argv[1])
torch.set_num_threads(1)
def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))
w = build("unet", 1, 2, dims=dims, depth=1, base_width=2)         # load the kernels before the baseline
x = torch.randn(2, 1, *([16] * dims))
w(x).sum().backward()
with torch.no_grad():
    w.eval()(x)
# The high-water mark of this process so far (imports, the warm-up) is not the step's: reset it
# to the current resident size (Linux: clear_refs 5), then the step's peak is VmHWM - VmRSS.
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
base = status("VmRSS")
peak = lambda: status("VmHWM")
net = build(name, 1, 3, dims=dims, **kw)
x = torch.randn(batch, 1, *shape)
if training:
    opt = torch.optim.AdamW(net.parameters())
    torch.nn.functional.cross_entropy(net(x), torch.randint(0, 3, (batch, *shape))).backward()
    opt.step()
else:
    with torch.no_grad():
        net.eval()(x).softmax(1)
est = estimate_memory(name, 1, 3, dims=dims, kwargs=kw, shape=shape, batch=batch, training=training)
print(json.dumps({"measured": peak() - base, "estimate": est.total_bytes}))
"""


@pytest.mark.parametrize("config", [
    ("unet", {"depth": 4, "base_width": 16}, 2, [256, 256], 4, True),
    ("convnext_unet", {"depth": 3, "base_width": 16}, 2, [128, 128], 8, True),
    ("unet", {"depth": 3, "base_width": 8, "norm": "instance"}, 3, [32, 64, 64], 2, True),
    ("segunet", {"depth": 4, "base_width": 16}, 2, [256, 256], 4, False),
], ids=["unet-train", "convnext-train", "unet3d-train", "segunet-predict"])
def test_the_estimate_is_within_3x_of_the_measured_peak(config):
    """The peak resident memory of one real step (forward, loss, backward, AdamW) in a child process."""
    proc, _ = _run(["-c", _PEAK, json.dumps(config)], timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    ratio = r["estimate"] / r["measured"]
    assert 1 / 3 <= ratio <= 3, (f"estimate {format_bytes(r['estimate'])} vs measured peak "
                                 f"{format_bytes(r['measured'])} ({ratio:.2f}x)")


def test_available_memory_honours_the_environment_and_refuses_a_bad_figure(monkeypatch):
    monkeypatch.delenv("SEGLOOP_AVAILABLE_MEMORY", raising=False)
    measured, who = available_memory("cpu")
    assert measured is None or measured > 0
    monkeypatch.setenv("SEGLOOP_AVAILABLE_MEMORY", "1.5GB")
    assert available_memory("cpu") == (1_500_000_000, "SEGLOOP_AVAILABLE_MEMORY says")
    monkeypatch.setenv("SEGLOOP_AVAILABLE_MEMORY", "lots")
    with pytest.raises(ArchitectureArgumentsError, match="SEGLOOP_AVAILABLE_MEMORY='lots' is not an amount"):
        available_memory("cpu")


def test_a_too_large_step_is_refused_with_both_figures_and_the_batch_that_fits(monkeypatch):
    monkeypatch.setenv("SEGLOOP_AVAILABLE_MEMORY", "2GB")
    with pytest.raises(NetworkTooLargeError) as err:
        check_network("unet", 1, 3, dims=2, kwargs={"depth": 4, "base_width": 32}, shape=(512, 512), batch=32,
                      training=True, source="--arch-kwargs", advice="lower --patch or --batch", batch_flag="--batch")
    msg = str(err.value)
    assert msg.startswith("--arch-kwargs: unet with depth 4, base_width 32 needs about ")
    assert "to train on 512x512 patches at batch 32" in msg and "SEGLOOP_AVAILABLE_MEMORY says 2 GB available" in msg
    fits = int(msg.split("(--batch ")[1].split()[0])
    check_network("unet", 1, 3, dims=2, kwargs={"depth": 4, "base_width": 32}, shape=(512, 512), batch=fits,
                  training=True)
    with pytest.raises(NetworkTooLargeError):
        check_network("unet", 1, 3, dims=2, kwargs={"depth": 4, "base_width": 32}, shape=(512, 512),
                      batch=fits + 1, training=True)


# --------------------------------------------------------------------------- the commands, under a memory limit


def test_segloop_train_refuses_depth_99_quickly_under_a_memory_limit(folder, tmp_path):
    out = tmp_path / "X"
    proc, _ = _run(["-m", "segloop_train", str(folder), "--arch", "unet", "--arch-kwargs", '{"depth": 99}',
                          "--out", str(out), "--device", "cpu", "--no-onnx"])
    err = _one_error_line(proc, "segloop-train")
    assert "--arch-kwargs" in err and "unet depth=99 is out of range: give an integer from 1 to 8" in err
    assert not out.exists()


def test_finetune_refuses_settings_out_of_bounds_before_reading_any_folder(tmp_path):
    from segloop_train import finetune

    with pytest.raises(ArchitectureArgumentsError, match=r"^arch_kwargs \(--arch-kwargs\): unet depth=99 is out"):
        finetune([tmp_path / "no-such-folder"], parent=None, arch="unet", arch_kwargs={"depth": 99},
                 out=tmp_path / "X", device="cpu")
    assert not (tmp_path / "X").exists()


def test_segloop_train_refuses_a_step_too_large_for_the_memory_limit_with_the_figures(folder, tmp_path):
    out = tmp_path / "X"
    proc, _ = _run(["-m", "segloop_train", str(folder), "--arch", "unet", "--arch-kwargs",
                    '{"depth": 4, "base_width": 128}', "--batch", "512", "--patch", "96", "--out", str(out),
                    "--device", "cpu", "--no-onnx"])
    err = _one_error_line(proc, "segloop-train")
    assert "unet with depth 4, base_width 128 needs about " in err and "to train on 96x96 patches at batch 512" in err
    assert "this process (ulimit -v) has" in err and "--batch" in err and "would fit" in err
    assert not out.exists() and not Path(f"{out}.ckpt").exists()


def test_the_loop_refuses_bad_and_too_large_networks_before_writing_anything(tmp_path, nuclei):
    import tifffile

    img, lab = nuclei
    tifffile.imwrite(tmp_path / "a.tif", img)
    tifffile.imwrite(tmp_path / "a_gt.tif", lab)
    common = ["-m", "segloop_train", "loop", "--images", str(tmp_path / "a.tif"), "--ground-truth",
              str(tmp_path / "a_gt.tif"), "--arch", "unet", "--out", str(tmp_path / "L")]
    proc, _ = _run([*common, "--arch-kwargs", '{"depth": 99}'])
    err = _one_error_line(proc, "segloop-train")
    assert "unet depth=99 is out of range: give an integer from 1 to 8" in err
    proc, _ = _run([*common, "--arch-kwargs", '{"depth": 3, "base_width": 64}', "--batch", "64"],
                   env={"SEGLOOP_AVAILABLE_MEMORY": "1GB"})
    err = _one_error_line(proc, "segloop-train")
    assert "unet with depth 3, base_width 64 needs about " in err and "64x64 patches at batch 64" in err
    assert "SEGLOOP_AVAILABLE_MEMORY says 1 GB available" in err
    assert not (tmp_path / "L").exists()


@pytest.mark.parametrize("kwargs, expected", [
    ({"depth": 4, "base_width": 100000}, "unet base_width=100000 is out of range: give an integer from 1 to 512"),
    ({"depth": 8, "base_width": 512}, "unet with depth 8, base_width 512 needs about 2.04 TB to hold its weights"),
])
def test_a_package_with_absurd_architecture_kwargs_is_refused_at_load_time(tmp_path, kwargs, expected):
    import shutil

    pkg = tmp_path / "pkg"
    shutil.copytree(BUNDLED_DIR / "nuclei-unet", pkg)
    spec = json.loads((pkg / "segloop-model.json").read_text())
    spec["architecture_kwargs"] = kwargs
    (pkg / "segloop-model.json").write_text(json.dumps(spec))
    for args in (["info", str(pkg)], ["predict", str(ROOT / "src" / "segloop" / "data" / "bbbc007_A9_p10d.tif"),
                                      "--model", str(pkg), "--out", str(tmp_path / "o.tif")]):
        proc, _ = _run(["-c", "from segloop.cli import main; raise SystemExit(main())", *args])
        err = _one_error_line(proc, "segloop")
        assert str(pkg) in err and expected in err
    assert not (tmp_path / "o.tif").exists()


def test_predict_refuses_tiles_and_batch_too_large_for_the_device(monkeypatch):
    model = segloop.load_model("nuclei-unet", device="cpu", precision="fp32")
    image = np.zeros((300, 300), np.float32)
    monkeypatch.setenv("SEGLOOP_AVAILABLE_MEMORY", "20MB")
    with pytest.raises(NetworkTooLargeError, match=r"^nuclei-unet: unet with .* to predict 256x256 tiles at batch 4 "
                                                   r"\(activations .*\); SEGLOOP_AVAILABLE_MEMORY says 20 MB available: "
                                                   r"lower the tile \(--tile\) or the batch \(--batch\)"):
        model.predict(image, batch_size=4)
    monkeypatch.setenv("SEGLOOP_AVAILABLE_MEMORY", "2GB")
    # a tile larger than the image is shrunk to it (304 = 300 rounded up to the divisor 16) before the estimate
    assert model.predict(image, tile=4096, batch_size=4).labels.shape == (300, 300)


# --------------------------------------------------------------------------- what ships still fits


@pytest.mark.parametrize("name", sorted(p.name for p in BUNDLED_DIR.iterdir() if (p / "segloop-model.json").is_file()))
def test_every_bundled_package_is_within_bounds_and_small(name):
    spec = load_package(BUNDLED_DIR / name).spec
    tile = spec.tile["size"]
    tile = tuple(tile) if isinstance(tile, list) else (int(tile),) * spec.dims
    kw = dict(dims=spec.dims, kwargs=spec.architecture_kwargs)
    infer = check_network(spec.architecture, spec.in_channels, spec.n_classes, shape=tile,
                          batch=4 if spec.dims == 2 else 1, **kw)
    train = check_network(spec.architecture, spec.in_channels, spec.n_classes, shape=tile[-spec.dims:],
                          batch=spec.training["config"]["batch"] if spec.training else 8, training=True, **kw)
    assert infer.total_bytes < 2e9 and train.total_bytes < 16e9, (format_bytes(infer.total_bytes),
                                                                  format_bytes(train.total_bytes))
    load = segloop.load_interactive if spec.task == "interactive" else segloop.load_model
    assert load(name, device="cpu", precision="fp32").spec.name == name


def test_recipes_and_defaults_pass_the_checks():
    from segloop_train.ct_recipes import CT_RECIPES
    from segloop_train.loop import ScratchModel
    from segloop_train.recipes import load_recipe, nuclei_recipes

    for name in nuclei_recipes():
        r = load_recipe(name)
        check_network(r["architecture"], 1, 3, dims=2, kwargs=r["architecture_kwargs"], shape=(r["patch"],) * 2,
                      batch=r["batch"], training=True)
    for r in CT_RECIPES.values():
        patch = r.patch if isinstance(r.patch, tuple) else (r.patch,) * r.dims
        check_network(r.arch, r.context_slices, 3, dims=r.dims, kwargs=r.arch_kwargs, shape=patch, batch=r.batch,
                      training=True)
    m = ScratchModel()
    est = check_network(m.architecture, 1, 3, dims=2, kwargs=m.architecture_kwargs, shape=(64, 64), batch=8,
                        training=True)
    assert est is not None and est.total_bytes < 1e9 and math.isfinite(est.per_sample_bytes)
