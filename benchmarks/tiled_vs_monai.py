"""segloop tiled inference vs MONAI's sliding_window_inference, same network, one run, CPU.

Both sides get the same network, the same normalized input, the same tile
size, overlap, batch size and Gaussian blending (sigma = tile / 8).  Measured
on two images:

* ``histology``: a large RGB canvas that is mostly glass (~240 grey with mild
  noise) with the real IHC tile from ``skimage.data.immunohistochemistry()``
  pasted in at four places (rotated); a 1-channel nuclei model runs on it via
  hematoxylin colour deconvolution.  segloop is timed with and without
  background (glass) skipping.
* ``full content``: a mosaic of the real fluorescence nuclei image
  ``segloop/data/bbbc007_A9_p10d.tif``: every tile has content, nothing can
  be skipped, so this shows the tiling/blending overhead alone.

For each method: best wall time over ``--repeats`` runs after one warm-up,
throughput (image megapixels per second), the ratio segloop / MONAI (< 1:
segloop is faster), the efficiency (ideal network time / method time, where
the ideal is the bare torch fp32 forward of the same number of tiles, measured
on one batch with no tiling at all), and label agreement: the fraction of
pixels where argmax of segloop's blended probabilities equals argmax of
MONAI's fp32 output (>= 0.99 counts as "agree").

MONAI is given the image already normalized (the normalization time is
printed separately and is NOT included in MONAI's time); segloop normalizes
tile by tile inside its timed run.  This favours MONAI slightly.

Run (see benchmarks/README.md)::

    python benchmarks/tiled_vs_monai.py             # 2048^2 histology, 1800^2 mosaic
    python benchmarks/tiled_vs_monai.py --quick     # smoke run, small images
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from _machine import cpu_model

ROOT = Path(__file__).resolve().parents[1]
NUCLEI_TIF = ROOT / "src" / "segloop" / "data" / "bbbc007_A9_p10d.tif"
AGREE = 0.99


# ---------------------------------------------------------------------------
# Machine and model
# ---------------------------------------------------------------------------


def load_network(name_or_path: str = "nuclei-unet", seed: int = 0):
    """(network, n_classes, fluorescence normalization spec, description).

    The bundled/registered model or package folder ``name_or_path`` when it
    exists and loads; otherwise a randomly initialised unet(depth=4,
    base_width=16) with 3 classes (said so on stdout).
    """
    import torch

    import segloop
    from segloop.core.formats.normalization import Percentile, spec_from_dict
    from segloop.core.networks import build

    if name_or_path in segloop.list_models() or Path(name_or_path).expanduser().exists():
        try:
            model = segloop.load_model(name_or_path, device="cpu", engine="torch", precision="fp32")
            spec = model.spec
            if spec.in_channels != 1:
                raise ValueError(f"needs a 1-channel model, {spec.name} takes {spec.in_channels}")
            return (model.network, spec.n_classes, spec_from_dict(spec.normalization),
                    f"{spec.name} v{spec.version} ({spec.architecture} {spec.architecture_kwargs})")
        except Exception as e:  # a half-written or unsuitable package: fall back, say why
            print(f"NOTE: model {name_or_path!r} could not be used ({type(e).__name__}: {e})")
    else:
        print(f"NOTE: no model {name_or_path!r} (not bundled/registered, no such path)")
    print("NOTE: using a RANDOMLY INITIALISED unet(depth=4, base_width=16), 3 classes. Timings are "
          "valid (same architecture as nuclei-unet); labels are not meaningful.")
    torch.manual_seed(seed)
    net = build("unet", 1, 3, dims=2, depth=4, base_width=16, norm="batch").eval()
    return net, 3, Percentile(), "random-init unet(depth=4, base_width=16), 3 classes"


# ---------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------


def make_histology(size: int, seed: int = 0) -> tuple[np.ndarray, float]:
    """Glass canvas (size, size, 3) uint8 with the real 512^2 IHC tile pasted at 4 places."""
    from skimage import data

    ihc = data.immunohistochemistry()
    rng = np.random.default_rng(seed)
    canvas = rng.integers(236, 245, size=(size, size, 3), dtype=np.uint8)   # glass, mild noise
    t = min(ihc.shape[0], size)
    spots = [(0.05, 0.08), (0.10, 0.62), (0.55, 0.30), (0.72, 0.80)]
    covered = np.zeros((size, size), bool)
    for k, (fy, fx) in enumerate(spots):
        y, x = int(fy * (size - t)), int(fx * (size - t))
        canvas[y:y + t, x:x + t] = np.rot90(ihc, k)[:t, :t]
        covered[y:y + t, x:x + t] = True
    return canvas, float(covered.mean())


def make_mosaic(size: int) -> np.ndarray:
    """The real fluorescence nuclei image tiled n x n, n = size // 450 (at least 1)."""
    import tifffile

    img = tifffile.imread(NUCLEI_TIF)
    n = max(1, size // img.shape[0])
    return np.ascontiguousarray(np.tile(img, (n, n)))


# ---------------------------------------------------------------------------
# Timing helpers
# ---------------------------------------------------------------------------


class Counting:
    """Wraps a predictor and counts the tiles it is asked for."""

    def __init__(self, fn: Callable):
        self.fn, self.tiles = fn, 0

    def __call__(self, batch):
        self.tiles += int(batch.shape[0])
        return self.fn(batch)


def best_of(fn: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


@dataclass
class Row:
    image: str
    method: str
    tiles: int
    seconds: float
    mpx: float
    ratio: float | None = None
    efficiency: float | None = None
    agreement: float | None = None
    mean_abs_dp: float | None = None
    engine: str = ""

    @property
    def mpx_s(self) -> float:
        return self.mpx / self.seconds


# ---------------------------------------------------------------------------
# Benchmark of one image
# ---------------------------------------------------------------------------


def bench_image(name: str, image: np.ndarray, channel_axis, normalizer, *, net, plain_net, engines: dict,
                n_classes: int, args, ideal_per_tile: float, skip_variant: bool) -> list[Row]:
    import torch
    from monai.inferers import sliding_window_inference

    from segloop.core.inference.tiling import predict_tiled

    mpx = image.shape[0] * image.shape[1] / 1e6
    rows: list[Row] = []

    # --- MONAI: the whole image normalized up front (untimed), then sliding windows.
    t0 = time.perf_counter()
    x_full = torch.from_numpy(normalizer(image))[None]          # (1, C, H, W)
    t_norm = time.perf_counter() - t0

    def monai_net(x):
        x = x.contiguous(memory_format=torch.channels_last)     # same conv path as segloop's engine
        return torch.softmax(net(x).float(), dim=1)

    def run_monai(pred):
        with torch.inference_mode():
            return sliding_window_inference(x_full, (args.tile, args.tile), args.batch, pred,
                                            overlap=args.overlap, mode="gaussian", sigma_scale=0.125)

    counter = Counting(monai_net)
    ref_probs = run_monai(counter)[0].numpy()                     # warm-up + reference
    ref = ref_probs.argmax(0)
    majority = float(np.bincount(ref.ravel()).max() / ref.size)
    if majority > AGREE:
        print(f"  [{name}] NOTE: MONAI's labels are {100 * majority:.1f}% one class, so label "
              "agreement is nearly trivial here; see mean |dp| (probabilities) instead", flush=True)
    t_monai = best_of(lambda: run_monai(monai_net), args.repeats)
    rows.append(Row(name, "MONAI sliding_window (segloop's torch module)", counter.tiles, t_monai, mpx,
                    ratio=1.0, efficiency=counter.tiles * ideal_per_tile / t_monai, agreement=1.0,
                    mean_abs_dp=0.0, engine="monai"))

    # The named baseline a MONAI user runs: the network as loaded (eval, contiguous, BatchNorm unfolded).
    def monai_plain(x):
        return torch.softmax(plain_net(x).float(), dim=1)

    run_monai(monai_plain)
    t_plain = best_of(lambda: run_monai(monai_plain), args.repeats)
    rows.append(Row(name, "MONAI sliding_window (network as loaded)", counter.tiles, t_plain, mpx,
                    ratio=t_plain / t_monai, efficiency=counter.tiles * ideal_per_tile / t_plain, agreement=1.0,
                    mean_abs_dp=0.0, engine="monai-plain"))

    # --- segloop: raw image in, normalization per tile inside the timed run.
    def run_seg(pred, skip):
        return predict_tiled(pred, image, tile=args.tile, overlap=args.overlap,
                             channel_axis=channel_axis, normalize=normalizer, n_classes=n_classes,
                             batch_size=args.batch, multiple=int(getattr(net, "divisor", 1)),
                             skip_background=skip)

    # Control: segloop's torch engine on MONAI's own tile grid (MONAI steps by
    # int(tile * (1 - overlap)) and clamps the last tile; segloop spreads tiles
    # evenly like nnU-Net).  Same weights, same blending formula: agreement
    # here shows what is left once the grids are the same.
    from segloop.core.inference.grid import WindowGrid

    def monai_positions(n):
        step = max(int(args.tile * (1 - args.overlap)), 1)
        return tuple(sorted({min(p, max(n - args.tile, 0)) for p in range(0, max(n - args.tile, 0) + step, step)}))

    h, w = image.shape[:2]
    mgrid = WindowGrid((h, w), (args.tile, args.tile), (monai_positions(h), monai_positions(w)))
    probs = predict_tiled(engines["torch"][1], image, tile=args.tile, channel_axis=channel_axis,
                          normalize=normalizer, n_classes=n_classes, batch_size=args.batch, grid=mgrid)
    same_grid_agree = float((probs.argmax(0) == ref).mean())
    same_grid_dp = float(np.abs(probs - ref_probs).mean())
    del probs
    print(f"  [{name}] control: segloop torch on MONAI's tile grid agrees with MONAI on "
          f"{same_grid_agree:.5f} of pixels (mean |dp| {same_grid_dp:.1e})", flush=True)

    variants = [(f"segloop {label}", key, pred, False) for key, (label, pred) in engines.items()]
    if skip_variant:
        label, pred = engines["torch"]
        variants.insert(1, (f"segloop {label} + skip_background", "torch-skip", pred, True))
        if "onnx-int8" in engines:
            label, pred = engines["onnx-int8"]
            variants.append((f"segloop {label} + skip_background", "onnx-int8-skip", pred, True))
    for method, key, pred, skip in variants:
        if key.startswith("onnx-int8"):   # calibrate int8 on this image's own tiles (its first batch)
            from segloop.core.inference.engines import OnnxPredictor

            pred = OnnxPredictor(pred._fp32_bytes, device="cpu", quantize="int8", threads=pred.threads)
        counter = Counting(pred)
        probs = run_seg(counter, skip)                           # warm-up + labels
        agree = float((probs.argmax(0) == ref).mean())
        dp = float(np.abs(probs - ref_probs).mean())
        del probs
        t = best_of(lambda pred=pred, skip=skip: run_seg(pred, skip), args.repeats)
        if key.startswith("onnx-int8"):
            method = f"{method} ({pred.choice.precision}, agreement {pred.agreement:.3f})"
        rows.append(Row(name, method, counter.tiles, t, mpx, ratio=t / t_monai,
                        efficiency=counter.tiles * ideal_per_tile / t, agreement=agree,
                        mean_abs_dp=dp, engine=key))
    print(f"  [{name}] MONAI's full-image normalization took {t_norm:.2f} s "
          "(not included in MONAI's time above)", flush=True)
    return rows


def bare_forward(net, engines: dict, sample: np.ndarray, repeats: int) -> dict[str, float]:
    """Seconds per tile of each engine's bare forward on one batch (no tiling)."""
    import torch

    out = {}
    x = torch.from_numpy(sample).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        net(x)
        out["torch-net"] = best_of(lambda: net(x), max(repeats, 3)) / len(sample)
    for key, (_, pred) in engines.items():
        if key == "torch":
            continue
        pred(sample)                      # int8 quantizes (calibrates) on its first batch
        sess = pred.session
        feed = {"input": np.ascontiguousarray(sample)}
        sess.run(None, feed)
        out[key] = best_of(lambda sess=sess, feed=feed: sess.run(None, feed), max(repeats, 3)) / len(sample)
    return out


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=2048,
                    help="histology canvas side in px (default 2048); the mosaic is the largest "
                         "multiple of 450 <= size unless --full-size is given")
    ap.add_argument("--full-size", type=int, default=None, help="fluorescence mosaic side (multiple of 450)")
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--overlap", type=float, default=0.25)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per method after one warm-up (best is kept)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch and onnxruntime intra-op threads (default: torch's default, "
                         "i.e. $OMP_NUM_THREADS or the core count)")
    ap.add_argument("--model", default="nuclei-unet",
                    help="1-channel model: bundled/registered name or package path (default "
                         "nuclei-unet; a random-init unet of the same size when missing)")
    ap.add_argument("--no-onnx", action="store_true", help="skip the ONNX Runtime engines")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 1024^2 canvas, 900^2 mosaic, 1 timed repeat")
    args = ap.parse_args(argv)
    if args.quick:
        args.size, args.full_size, args.repeats = 1024, args.full_size or 900, 1

    import torch

    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)

    import monai

    from segloop.core.formats.normalization import Hematoxylin
    from segloop.core.inference.engines import TorchPredictor, export_onnx
    from segloop.core.inference.normalize import Normalizer

    net, n_classes, fluo_spec, model_desc = load_network(args.model)
    onnx_bytes = None
    ort_version = "not used"
    if not args.no_onnx:
        try:
            import onnxruntime

            # Export a copy: export_onnx switches the module it gets to contiguous format.
            onnx_bytes = export_onnx(copy.deepcopy(net), in_channels=1, tile=args.tile, dims=2)
            ort_version = onnxruntime.__version__
        except Exception as e:
            print(f"NOTE: ONNX engines skipped ({type(e).__name__}: {e})")

    plain_net = copy.deepcopy(net).eval()                  # as a MONAI user would run it
    engines: dict[str, tuple[str, Callable]] = {
        "torch": ("torch fp32", TorchPredictor(net, device="cpu", precision="fp32"))}
    net = engines["torch"][1].network                       # channels-last, BN folded, eval, CPU
    if onnx_bytes is not None:
        from segloop.core.inference.engines import OnnxPredictor

        engines["onnx"] = ("onnxruntime fp32", OnnxPredictor(onnx_bytes, device="cpu", threads=threads))
        logging.disable(logging.WARNING)   # onnxruntime.quantization's advice messages
        try:
            engines["onnx-int8"] = ("onnxruntime int8",
                                    OnnxPredictor(onnx_bytes, device="cpu", quantize="int8", threads=threads))
        except Exception as e:
            print(f"NOTE: ONNX int8 skipped ({type(e).__name__}: {e})")
        finally:
            logging.disable(logging.NOTSET)

    histo, tissue_frac = make_histology(args.size)
    mosaic = make_mosaic(args.full_size or args.size)
    histo_norm = Normalizer.fit(Hematoxylin(), histo, channel_axis=-1)
    fluo_norm = Normalizer.fit(fluo_spec, mosaic, channel_axis=None)

    print("== segloop predict_tiled vs MONAI sliding_window_inference (CPU) ==")
    print(f"cpu: {cpu_model()} ({os.cpu_count()} logical cores)   threads: {threads}")
    print(f"python {platform.python_version()}  torch {torch.__version__}  monai {monai.__version__}  "
          f"onnxruntime {ort_version}")
    print(f"model: {model_desc}")
    print(f"tile {args.tile}  overlap {args.overlap}  batch {args.batch}  repeats {args.repeats} "
          "(best of, after 1 warm-up)  blending: Gaussian sigma = tile/8 on both sides")
    print(f"histology: {histo.shape[0]}x{histo.shape[1]} RGB, {100 * tissue_frac:.0f}% tissue "
          "(skimage IHC tile x4), hematoxylin normalization")
    print(f"full content: {mosaic.shape[0]}x{mosaic.shape[1]} mosaic of bbbc007_A9_p10d.tif, "
          f"{fluo_spec.kind} normalization")

    # Ideal: bare network forward on one batch of real normalized tiles, no tiling.
    t = args.tile
    sample = np.stack([fluo_norm(mosaic[:t, :t])] * args.batch) if min(mosaic.shape) >= t else \
        np.random.default_rng(0).random((args.batch, 1, t, t), dtype=np.float32)
    bare = bare_forward(net, engines, sample, args.repeats)
    ideal = bare["torch-net"]
    print(f"bare forward, batch {args.batch} of {t}x{t} (no tiling): torch fp32 "
          f"{1e3 * ideal:.1f} ms/tile = {t * t / ideal / 1e6:.2f} MPx/s"
          + "".join(f"; {k} {1e3 * v:.1f} ms/tile" for k, v in bare.items() if k != "torch-net"),
          flush=True)

    with torch.inference_mode():
        plain_net(torch.from_numpy(sample))
        t_plain = best_of(lambda: plain_net(torch.from_numpy(sample)), max(args.repeats, 3)) / len(sample)
    print(f"bare forward of the network as loaded (contiguous, BatchNorm unfolded): {1e3 * t_plain:.1f} ms/tile",
          flush=True)
    rows = bench_image("histology", histo, -1, histo_norm, net=net, plain_net=plain_net, engines=engines,
                       n_classes=n_classes, args=args, ideal_per_tile=ideal, skip_variant=True)
    rows += bench_image("full content", mosaic, None, fluo_norm, net=net, plain_net=plain_net, engines=engines,
                        n_classes=n_classes, args=args, ideal_per_tile=ideal, skip_variant=False)

    hdr = f"{'image':<13}{'method':<45}{'tiles':>6}{'time s':>9}{'MPx/s':>8}{'seg/MONAI':>10}" \
          f"{'effic.':>8}{'agree':>9}{'mean|dp|':>10}"
    print()
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        ok = "" if r.engine in ("monai", "monai-plain", "torch-skip", "onnx-int8-skip") else (" ok" if r.agreement >= AGREE else " NO")
        print(f"{r.image:<13}{r.method:<45}{r.tiles:>6}{r.seconds:>9.2f}{r.mpx_s:>8.2f}"
              f"{r.ratio:>10.2f}{r.efficiency:>8.2f}{r.agreement:>6.3f}{ok:<3}{r.mean_abs_dp:>10.2e}")
    print("seg/MONAI < 1: segloop faster.  effic. = tiles x bare torch fp32 time per tile / time.")
    print("agree = fraction of pixels whose argmax equals MONAI fp32's ('ok' at >= 0.99); mean|dp| "
          "= mean absolute difference of the blended probabilities from MONAI's.  With "
          "skip_background, glass pixels are background by construction (not in agreement_min).")

    def get(image, engine):
        return next((r for r in rows if r.image == image and r.engine == engine), None)

    print()
    print(f"threads={threads}")
    print(f"ratio_noskip_histology={get('histology', 'torch').ratio:.3f}")
    print(f"ratio_skip_histology={get('histology', 'torch-skip').ratio:.3f}")
    print(f"ratio_full_content_torch={get('full content', 'torch').ratio:.3f}")
    for key in ("onnx", "onnx-int8"):
        if key in engines:
            print(f"ratio_histology_{key.replace('-', '_')}={get('histology', key).ratio:.3f}")
            print(f"ratio_full_content_{key.replace('-', '_')}={get('full content', key).ratio:.3f}")
    fc = [r for r in rows if r.image == "full content" and r.engine not in ("monai", "monai-plain")
          and r.agreement >= AGREE]
    if fc:
        best = min(fc, key=lambda r: r.seconds)
        print(f"ratio_full_content_best={best.ratio:.3f}")
        print(f"best_engine_full_content={best.engine}")
    else:
        print("ratio_full_content_best=nan")
    for image in ("histology", "full content"):
        plain = get(image, "monai-plain")
        segs = [r for r in rows if r.image == image and r.engine not in ("monai", "monai-plain")
                and (r.agreement >= AGREE or r.engine.endswith("skip"))]
        best = min(segs, key=lambda r: r.seconds)
        key = image.replace(" ", "_")
        print(f"speedup_vs_monai_plain_{key}_best={plain.seconds / best.seconds:.3f} ({best.engine})")
        print(f"speedup_vs_monai_plain_{key}_torch={plain.seconds / get(image, 'torch').seconds:.3f}")
    engine_rows = [r for r in rows if r.engine not in ("monai", "monai-plain") and not r.engine.endswith("skip")]
    print(f"agreement_min={min(r.agreement for r in engine_rows):.4f}")
    print(f"agreement_skip_histology={get('histology', 'torch-skip').agreement:.4f}")
    print(f"efficiency_monai_full_content={get('full content', 'monai').efficiency:.3f}")
    print(f"efficiency_segloop_full_content={get('full content', 'torch').efficiency:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
