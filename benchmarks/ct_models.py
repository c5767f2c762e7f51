"""The two bundled CT liver models on their held-out axial slab: Dice, Jaccard, size and time.

What it does
------------
* **Data**: LiTS case 117 (128^3, HU) from the installed ``liver-ct-segmentation-package``,
  read by :func:`segloop.core.formats.io.samples.load_liver_ct` (Z axial).  The **held-out slab** is
  axial slices 96-127: the ``val`` sample of the training folder the models were trained from
  (slices 88-95 were a gap; the models never saw slices >= 88).  One patient: the figures
  say how well the models fit the rest of *this* liver, nothing about other patients.
* **Models**: ``ct-liver-segunet25d`` (2.5D SegUNet, 5 slices as channels) and
  ``ct-liver-unet3d`` (3D U-Net), loaded by name with ``segloop.load_model`` (torch, fp32).
* **Prediction**: the whole slab through ``Model.predict`` (printed as ``prediction through``).
  The slab is predicted on its own (32 slices),
  so 2.5D context is clamped at its first and last slices, as in training's evaluation.
* **Printed**: per class (liver, tumour) Dice and Jaccard over the slab's voxels, the number
  of weights, the package's weights file size (MB), the slab time (best of ``--repeats``),
  and for the 2.5D model the time of one 512 x 512 slice (the network forward through the
  torch engine, BatchNorm folded; and ``Model.predict`` of one plane of a 5-slice 512^2
  stack); for the 3D model one 32 x 96 x 96 patch.  Then the CPU model, threads and torch
  version, and ``key=value`` lines.

Run: ``.venv/bin/python benchmarks/ct_models.py [--threads 2] [--repeats 3]`` (about a minute
on 2 idle cores).  Timings depend on what else runs on the machine.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

MODELS = ("ct-liver-segunet25d", "ct-liver-unet3d")
SLAB = (96, 128)


def _best(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def per_class(truth: np.ndarray, pred: np.ndarray, classes: tuple[str, ...]) -> dict[str, float]:
    """Dice and Jaccard of each foreground class over all voxels."""
    out = {}
    for c, name in enumerate(classes):
        if c == 0:
            continue
        t, p = truth == c, pred == c
        inter, ts, ps = int((t & p).sum()), int(t.sum()), int(p.sum())
        out[f"dice:{name}"] = 1.0 if ts + ps == 0 else 2 * inter / (ts + ps)
        out[f"jaccard:{name}"] = 1.0 if ts + ps - inter == 0 else inter / (ts + ps - inter)
    return out


def measure(name: str, slab: np.ndarray, truth: np.ndarray, repeats: int):
    """(spec, per-class metrics, weights, MB, slab seconds, extra timings in ms) of one bundled model."""
    import segloop
    from segloop.core.formats.registry import BUNDLED_DIR
    from segloop.core.inference.engines import TorchPredictor
    from segloop_train.finetune import VolumePredictor

    model = segloop.load_model(name, device="cpu", precision="fp32")
    spec = model.spec
    vp = VolumePredictor(model, device="cpu")
    seconds, pred = _best(lambda: vp(slab, batch_size=4), repeats)
    m = per_class(truth, np.asarray(pred), spec.classes)
    n_weights = sum(p.numel() for p in model.network.parameters())
    mb = (BUNDLED_DIR / name / "model.safetensors").stat().st_size / 1e6
    extra = {}
    torch_pred = TorchPredictor(model.network, device="cpu", precision="fp32")
    size = (512, 512) if spec.dims == 2 else tuple(spec.tile["size"])
    x = np.random.default_rng(0).random((1, spec.in_channels, *size), np.float32)
    torch_pred(x)                                                                   # warm-up
    extra[f"forward_{'x'.join(map(str, size))}_ms"] = _best(lambda: torch_pred(x), repeats)[0] * 1e3
    if spec.dims == 2:
        big = np.repeat(np.repeat(slab[14:19], 4, axis=1), 4, axis=2)              # (5, 512, 512) HU
        model.predict(big, z_range=(2, 3))                                          # warm-up
        extra["predict_plane_512_ms"] = _best(lambda: model.predict(big, z_range=(2, 3)), repeats)[0] * 1e3
    return spec, m, n_weights, mb, seconds, extra


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args(argv)

    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    from _machine import cpu_model

    from segloop.core.formats.io.samples import load_liver_ct

    hu, labels, _ = load_liver_ct()
    slab, truth = hu[SLAB[0]:SLAB[1]], labels[SLAB[0]:SLAB[1]]
    path = "Model.predict"
    rows, kv = [], []
    for name in MODELS:
        rows.append((name, *measure(name, slab, truth, a.repeats)))

    print(f"held-out axial slab: slices {SLAB[0]}-{SLAB[1] - 1} of LiTS case 117 ({truth.size:,} voxels: "
          f"{int((truth == 1).sum()):,} liver, {int((truth == 2).sum()):,} tumour); prediction through {path}")
    print(f"{'model':22} {'kind':10} {'Dice liver':>10} {'Jacc liver':>10} {'Dice tum.':>10} {'Jacc tum.':>10} "
          f"{'weights':>9} {'MB':>5} {'slab s':>7}  other")
    for name, spec, m, n_weights, mb, seconds, extra in rows:
        kind = "3D" if spec.dims == 3 else f"2.5D k={spec.context_slices}"
        other = "  ".join(f"{k}={v:.0f}" for k, v in extra.items())
        print(f"{name:22} {kind:10} {m['dice:liver']:10.3f} {m['jaccard:liver']:10.3f} {m['dice:tumour']:10.3f} "
              f"{m['jaccard:tumour']:10.3f} {n_weights:9,} {mb:5.1f} {seconds:7.2f}  {other}")
        key = name.replace("-", "_")
        kv += [f"{key}_{k.replace(':', '_')}={v:.4f}" for k, v in m.items()]
        kv += [f"{key}_weights={n_weights}", f"{key}_mb={mb:.2f}", f"{key}_slab_s={seconds:.3f}"]
        kv += [f"{key}_{k}={v:.1f}" for k, v in extra.items()]
    print(f"machine: {cpu_model()}; torch {torch.__version__}, {torch.get_num_threads()} thread(s); "
          f"best of {a.repeats}")
    for line in kv:
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
