"""CT inference on CPU: live per-slice latency (2.5D) and whole-volume 3D time vs MONAI.

Two measurements, one run:

(a) **Live slice latency.**  ``Model.predict_slice(volume, z)`` on 512 x 512
    CT slices with a 2.5D SegUNet (``context_slices=5``): the time from the
    request to the label array, per slice, over ``--slices`` different slices
    after one warm-up request, reported as median and 90th percentile.  The
    first request (which also fits the volume's normalizer) is printed
    separately.  The network's bare forward on one 512^2 input (no tiling, no
    normalization, no post-processing) is printed next to it: the floor any
    implementation has with this network on this machine.

(b) **Whole-volume 3D.**  A 3D U-Net over the real liver CT volume (128^3 HU,
    ``img_117.mrc`` from the installed ``liver-ct-segmentation-package``):
    ``Model.predict(volume)`` (patches, Gaussian blending, labels) against
    MONAI's ``sliding_window_inference`` on the same network, the same patch
    size, overlap 0.25, ``mode="gaussian"`` (sigma = patch / 8 on both sides),
    the same batch size and the same threads, followed by ``argmax``.  MONAI
    is given the volume already normalized (CT window; not timed), which
    favours MONAI.  Label agreement (argmax) and the mean absolute difference
    of the probabilities between the two are printed.

Networks: a bundled/registered model whose name starts with ``ct-`` when one
fits (2.5D for (a), 3D for (b)), or ``--slice-model`` / ``--volume-model``;
otherwise **randomly initialised** networks with the layout of the CT recipes
in ``training/segloop_train/ct_recipes.py`` (``ct-liver-segunet25d``: segunet
depth 4, base_width 12, 5 slices, tile 512; ``ct-liver-unet3d``: unet depth 3,
base_width 8, patch 32 x 96 x 96), said so on stdout.  Timings of a random
network are valid (the same operations run); its labels mean little, so the
mean difference of the probabilities is printed too.

Run from the repository root (see benchmarks/README.md)::

    .venv/bin/python benchmarks/ct_slice_latency.py
    .venv/bin/python benchmarks/ct_slice_latency.py --quick      # smoke run
    .venv/bin/python benchmarks/ct_slice_latency.py --slice-model ct-lung-tumour-segunet25d --spacing 3,0.977,0.977
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _machine import cpu_model

CT_WINDOW = {"kind": "ct_window", "level": 40.0, "width": 400.0}


def liver_volume() -> tuple[np.ndarray, Path]:
    """The real 128^3 float32 HU volume shipped in liver-ct-segmentation-package (not imported)."""
    import mrcfile

    spec = importlib.util.find_spec("liver_ct_segmentation_package")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("liver-ct-segmentation-package is not installed; it holds the CT volume this "
                         "benchmark uses (pip install liver-ct-segmentation-package)")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "img_117.mrc"
    with mrcfile.open(path, permissive=True) as f:
        return np.ascontiguousarray(f.data, dtype=np.float32), path


def find_ct_model(want_dims: int, want_context: bool) -> str | None:
    """A bundled/registered model named ``ct-*`` with the wanted dims (and 2.5D context for dims 2)."""
    import segloop

    for name in segloop.list_models():
        if not name.startswith("ct-") or "click" in name:      # click models: benchmarks/clicks.py
            continue
        try:
            spec = segloop.load_model(name, device="cpu").spec
        except Exception as e:       # a half-written package: say so and go on
            print(f"NOTE: model {name!r} could not be loaded ({type(e).__name__}: {e})")
            continue
        if spec.dims == want_dims and (not want_context or spec.context_slices > 1):
            return name
    return None


def random_package(folder: Path, name: str, *, arch: str, kwargs: dict, dims: int, in_channels: int,
                   context: int, tile: dict, seed: int = 0) -> Path:
    """Save a random-init network as a model package (so both sides load the very same weights)."""
    import torch

    from segloop.core.formats.package import ModelSpec, save_package
    from segloop.core.networks import build

    spec = ModelSpec(name=name, version="0.0.0-random", architecture=arch, architecture_kwargs=kwargs, dims=dims,
                     in_channels=in_channels, classes=("background", "liver", "tumour"), task="semantic",
                     postprocess={}, normalization=CT_WINDOW, tile=tile, modality="CT", context_slices=context)
    torch.manual_seed(seed)
    state = build(arch, in_channels, spec.n_classes, dims=dims, **kwargs).state_dict()
    # A random head mostly favours one class everywhere; centred over the classes (bias 0) and
    # scaled, it gives labels that vary in space, so label agreement means something.
    w = state["head.weight"]
    state["head.weight"] = (w - w.mean(0, keepdim=True)) * 20
    state["head.bias"] = torch.zeros_like(state["head.bias"])
    dest = folder / name
    save_package(dest, spec, state)
    return dest


def describe(model) -> str:
    s = model.spec
    return (f"{s.name} v{s.version}: {s.architecture} {s.architecture_kwargs}, dims {s.dims}, "
            f"in_channels {s.in_channels}, context_slices {s.context_slices}, tile {s.tile}")


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


# ---------------------------------------------------------------------------
# (a) live slice latency
# ---------------------------------------------------------------------------


def bench_slices(args, tmp: Path, liver: np.ndarray) -> dict:
    import torch
    from scipy import ndimage as ndi

    import segloop

    name = args.slice_model or find_ct_model(2, True)
    if name is None:
        print(f"NOTE (a): no bundled/registered 'ct-*' 2.5D model; using a RANDOMLY INITIALISED segunet "
              f"(depth 4, base_width {args.slice_width}), {args.context} slices as channels, tile "
              f"{args.slice_tile}. Timings are valid; labels are not meaningful.")
        path = random_package(tmp, "ct-random-25d", arch="segunet",
                              kwargs={"depth": 4, "base_width": args.slice_width, "norm": "batch"}, dims=2,
                              in_channels=args.context, context=args.context,
                              tile={"size": args.slice_tile, "overlap": 0.25})
        name = str(path)
    n_z = args.slices + 4
    z0 = (liver.shape[0] - n_z) // 2
    # Real HU slices brought to 512 x 512 (linear interpolation; CT slices are 512^2 in practice).
    zoom = 512 / liver.shape[1]
    volume = np.ascontiguousarray(ndi.zoom(liver[z0:z0 + n_z], (1, zoom, zoom), order=1), dtype=np.float32)
    rows = {}
    for engine in args.engines:
        try:
            model = segloop.load_model(name, device="cpu", engine=engine)
        except Exception as e:
            print(f"NOTE (a): engine {engine!r} unavailable ({type(e).__name__}: {e})")
            continue
        chosen = model.engine_name
        x = np.random.default_rng(0).standard_normal((1, model.spec.in_channels, 512, 512)).astype(np.float32)
        model.predictor(x)
        bare = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            model.predictor(x)
            bare = min(bare, time.perf_counter() - t0)
        kw = {"spacing": args.spacing} if args.spacing else {}
        t0 = time.perf_counter()
        first = model.predict_slice(volume, 2, **kw)
        t_first = time.perf_counter() - t0
        times = []
        for z in range(2, 2 + args.slices):
            t0 = time.perf_counter()
            res = model.predict_slice(volume, z, **kw)
            times.append(time.perf_counter() - t0)
        assert res.labels.shape == (512, 512)
        engine_desc = f"{chosen} ({getattr(model.predictor, 'choice', None) and model.predictor.choice.precision})"
        rows[engine] = dict(model=describe(model), engine=engine_desc, tiles=first.tiles_predicted,
                            first=t_first, median=statistics.median(times), p90=pct(times, 90),
                            best=min(times), bare=bare)
        del model
    print()
    print(f"(a) live slice latency: Model.predict_slice on {args.slices} different 512x512 slices "
          f"(real liver CT, upsampled from 128^2), torch threads {torch.get_num_threads()}"
          + (f"; the scan's spacing given as {args.spacing} mm, so each request resamples its slab to the "
             "model's spacing and back" if args.spacing else ""))
    for r in rows.values():
        print(f"  model: {r['model']}")
        print(f"  engine {r['engine']}: {r['tiles']} tile(s) per slice; first request (fits the normalizer) "
              f"{1e3 * r['first']:.0f} ms; then median {1e3 * r['median']:.0f} ms, p90 {1e3 * r['p90']:.0f} ms, "
              f"best {1e3 * r['best']:.0f} ms; bare network forward on 1xCx512x512 (best of 3): "
              f"{1e3 * r['bare']:.0f} ms (overhead of the median over it: "
              f"{1e3 * (r['median'] - r['bare']):+.0f} ms)")
    return rows


# ---------------------------------------------------------------------------
# (b) whole-volume 3D vs MONAI
# ---------------------------------------------------------------------------


def interleaved_best(runs: dict, repeats: int) -> tuple[dict[str, float], dict[str, object]]:
    """Warm every method up once, then time them in turn ``repeats`` times; best time and last output each.

    Taking turns spreads any load from other processes over all methods alike.
    """
    outputs = {key: fn() for key, fn in runs.items()}
    best = {key: float("inf") for key in runs}
    for _ in range(repeats):
        for key, fn in runs.items():
            t0 = time.perf_counter()
            outputs[key] = fn()
            best[key] = min(best[key], time.perf_counter() - t0)
    return best, outputs


def bench_volume(args, tmp: Path, liver: np.ndarray) -> dict:
    import torch
    from monai.inferers import sliding_window_inference

    import segloop
    from segloop.core.inference.normalize import Normalizer

    name = args.volume_model or find_ct_model(3, False)
    if name is None:
        print(f"NOTE (b): no bundled/registered 'ct-*' 3D model; using a RANDOMLY INITIALISED 3D unet "
              f"(depth {args.volume_depth}, base_width {args.volume_width}), 3 classes. Timings are valid; "
              "labels mean little (the probabilities are compared too).")
        path = random_package(tmp, "ct-random-3d", arch="unet",
                              kwargs={"depth": args.volume_depth, "base_width": args.volume_width, "norm": "batch"},
                              dims=3, in_channels=1, context=1, tile={"size": list(args.patch), "overlap": 0.25})
        name = str(path)
    patch = args.patch
    volume = liver
    runs, info = {}, {}

    # --- segloop: raw HU in; normalization, patches, blending and labels inside the timed run.
    first = None
    for engine in args.engines:
        try:
            model = segloop.load_model(name, device="cpu", engine=engine)
        except Exception as e:
            print(f"NOTE (b): engine {engine!r} unavailable ({type(e).__name__}: {e})")
            continue
        runs[engine] = lambda model=model: model.predict(volume, tile=patch, overlap=0.25,
                                                         batch_size=args.batch).labels
        info[engine] = dict(engine=f"segloop Model.predict, {model.engine_name}", obj=model)
        first = first or model
    if first is None:
        raise SystemExit("no segloop engine could be loaded")
    plain_net = first.network                                 # eval, contiguous, BatchNorm separate
    tuned_net = getattr(first.predictor, "network", None)     # channels-last-3d, BatchNorm folded

    # --- MONAI: the volume normalized up front (not timed), then sliding windows + argmax.
    x = torch.from_numpy(Normalizer.fit(first.spec.normalization, volume)(volume)).permute(1, 0, 2, 3)[None]
    x = x.contiguous()

    def monai(net, channels_last: bool, keep_probs: bool = False):
        def predictor(batch):
            if channels_last:
                batch = batch.contiguous(memory_format=torch.channels_last_3d)
            return torch.softmax(net(batch).float(), dim=1)

        def run():
            with torch.inference_mode():
                probs = sliding_window_inference(x, patch, args.batch, predictor, overlap=0.25, mode="gaussian",
                                                 sigma_scale=0.125)
                labels = probs[0].argmax(0).to(torch.uint8).numpy()
            return (labels, probs[0].numpy()) if keep_probs else labels
        return run

    runs["monai"] = monai(plain_net, False)
    info["monai"] = dict(engine="MONAI sliding_window_inference, network as loaded")
    if tuned_net is not None:
        runs["monai-tuned"] = monai(tuned_net, True)
        info["monai-tuned"] = dict(engine="MONAI sliding_window_inference, segloop's torch module "
                                          "(channels-last-3d, fused norms)")
    seconds, labels = interleaved_best(runs, args.repeats)

    # Probabilities, once each (untimed), to compare beyond labels.
    from segloop.core.inference.grid import WindowGrid
    from segloop.core.inference.tiling import predict_tiled_3d

    labels_monai, probs_monai = monai(plain_net, False, keep_probs=True)()
    probs_ours = predict_tiled_3d(first.predictor, volume, patch=patch, overlap=0.25,
                                  normalize=first.normalizer_for(volume), batch_size=args.batch,
                                  multiple=first.divisor)
    grid = WindowGrid.build(volume.shape, window=patch, overlap=0.25, multiple=first.divisor)
    # Control: the same run with MONAI's importance map (its Gaussian is centred at size // 2, truncated
    # at 4 sigma and clamped to >= 1e-3; segloop's is nnU-Net's, centred, unclamped). When the grids are
    # the same too, what is left is floating-point noise.
    from monai.data.utils import compute_importance_map

    monai_map = compute_importance_map(patch, mode="gaussian", sigma_scale=0.125).numpy()
    probs_ctrl = predict_tiled_3d(first.predictor, volume, patch=patch, overlap=0.25,
                                  normalize=first.normalizer_for(volume), batch_size=args.batch,
                                  multiple=first.divisor, importance=monai_map)
    ctrl_agree = float((probs_ctrl.argmax(0) == labels_monai).mean())
    ctrl_dp = float(np.abs(probs_ctrl - probs_monai).mean())
    del probs_ctrl
    results = {}
    for key in runs:
        results[key] = dict(seconds=seconds[key], labels=labels[key], **info[key])
        results[key]["agreement"] = float((labels[key] == labels_monai).mean())
        results[key]["speedup"] = seconds["monai"] / seconds[key]
        if key in args.engines:
            results[key]["engine"] += f" ({info[key].pop('obj').predictor.choice.precision})"

    # MONAI's patch grid, for the record: it steps by int(patch * 0.75) and clamps the last patch.
    n_monai = 1
    for n, ps in zip(volume.shape, patch):
        step = max(int(ps * 0.75), 1)
        n_monai *= len({min(p, max(n - ps, 0)) for p in range(0, max(n - ps, 0) + step, step)})

    print()
    print(f"(b) whole volume: {volume.shape} float32 HU ({args.liver_path.name}), patch {patch}, overlap 0.25, "
          f"Gaussian sigma = patch/8, batch {args.batch}, torch threads {torch.get_num_threads()}; best of "
          f"{args.repeats} runs per method after 1 warm-up, methods taking turns")
    print(f"  model: {describe(first)}")
    print(f"  patches: segloop {len(grid)} of {grid.window} (starts z {grid.zs}, y {grid.ys}, x {grid.xs}), "
          f"MONAI {n_monai}")
    hdr = f"  {'method':<90}{'time s':>8}{'MONAI/this':>11}{'agree':>9}"
    print(hdr)
    print("  " + "-" * (len(hdr) - 2))
    for r in results.values():
        print(f"  {r['engine']:<90}{r['seconds']:>8.2f}{r['speedup']:>11.2f}{r['agreement']:>9.5f}")
    dp = float(np.abs(probs_ours - probs_monai).mean())
    fractions = np.bincount(labels_monai.ravel(), minlength=first.spec.n_classes) / labels_monai.size
    print(f"  mean |p_segloop - p_MONAI| = {dp:.2e} (segloop's engine vs MONAI with the network as loaded); "
          f"MONAI's label fractions per class: {', '.join(f'{f:.3f}' for f in fractions)}")
    same_grid = len(grid) == n_monai
    print(f"  control: segloop's engine with MONAI's importance map{' (same patch grid)' if same_grid else ''} "
          f"agrees on {ctrl_agree:.5f} of voxels (mean |dp| {ctrl_dp:.1e}): the remaining differences above "
          "come from the blending weights, not the computation")
    print("  MONAI/this > 1: faster than MONAI with the network as loaded (the named baseline). agree = "
          "fraction of voxels whose label equals that baseline's.")
    results["control"] = dict(agreement=ctrl_agree, mean_abs_dp=ctrl_dp)
    return results


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--spacing", type=lambda t: tuple(float(v) for v in t.split(",")), default=None,
                    metavar="DZ,DY,DX", help="(a): the scan's voxel spacing in mm, passed to predict_slice (a model "
                                             "with spec.spacing then resamples each slab; default: not given)")
    ap.add_argument("--slices", type=int, default=20, help="timed slice requests in (a) (default 20)")
    ap.add_argument("--slice-model", default=None, help="2.5D model name/path for (a) (default: a ct-* "
                    "model, else random-init segunet)")
    ap.add_argument("--slice-width", type=int, default=12, help="base_width of the random SegUNet (default 12, "
                    "as ct-liver-segunet25d)")
    ap.add_argument("--context", type=int, default=5, help="slices per input of the random 2.5D SegUNet "
                    "(default 5, as ct-liver-segunet25d)")
    ap.add_argument("--slice-tile", type=int, default=512, help="tile size of the random 2.5D package "
                    "(default 512: one tile per 512^2 slice)")
    ap.add_argument("--volume-model", default=None, help="3D model name/path for (b) (default: a ct-* 3D "
                    "model, else random-init 3D unet)")
    ap.add_argument("--volume-width", type=int, default=8, help="base_width of the random 3D U-Net (default 8, "
                    "as ct-liver-unet3d)")
    ap.add_argument("--volume-depth", type=int, default=3, help="depth of the random 3D U-Net (default 3)")
    ap.add_argument("--patch", default="32,96,96", help="3D patch: one side or pz,py,px (default 32,96,96, "
                    "as ct-liver-unet3d)")
    ap.add_argument("--batch", type=int, default=2, help="3D patches per network call, both sides (default 2)")
    ap.add_argument("--repeats", type=int, default=2, help="timed 3D runs per method after 1 warm-up (best kept)")
    ap.add_argument("--engines", default="torch", help="comma-separated segloop engines: torch, onnx, auto "
                    "(default torch)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: the core count)")
    ap.add_argument("--skip-slices", action="store_true", help="only (b)")
    ap.add_argument("--skip-volume", action="store_true", help="only (a)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 5 slices, patch 32,64,64, 1 repeat")
    args = ap.parse_args(argv)
    args.engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    if args.quick:
        args.slices, args.patch, args.repeats = 5, "32,64,64", 1
    sides = [int(v) for v in str(args.patch).split(",")]
    args.patch = tuple(sides * 3 if len(sides) == 1 else sides)
    if len(args.patch) != 3:
        ap.error("--patch takes one side or three (pz,py,px)")

    import torch

    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    import monai

    liver, args.liver_path = liver_volume()
    print("== segloop CT inference: live slice latency (2.5D) and whole-volume 3D vs MONAI (CPU) ==")
    print(f"cpu: {cpu_model()} ({os.cpu_count()} logical cores)   torch threads: {threads}")
    print(f"python {platform.python_version()}  torch {torch.__version__}  monai {monai.__version__}")
    print(f"load average at start (other processes compete for the cores): {os.getloadavg()[0]:.2f}")
    print(f"CT volume: {args.liver_path} {liver.shape} {liver.dtype}, HU {liver.min():.0f}..{liver.max():.0f}; "
          f"normalization: CT window level 40 width 400")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        slices = {} if args.skip_slices else bench_slices(args, tmp, liver)
        vol = {} if args.skip_volume else bench_volume(args, tmp, liver)

    print()
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    print(f"threads={threads}")
    for engine, r in slices.items():
        print(f"slice_median_ms_{engine}={1e3 * r['median']:.1f}")
        print(f"slice_p90_ms_{engine}={1e3 * r['p90']:.1f}")
        print(f"slice_bare_forward_ms_{engine}={1e3 * r['bare']:.1f}")
        print(f"slice_first_request_ms_{engine}={1e3 * r['first']:.1f}")
        print(f"slice_target_300ms_{engine}={'met' if r['median'] < 0.3 else 'missed'}")
    if vol:
        print(f"volume_monai_s={vol['monai']['seconds']:.2f}")
        if "monai-tuned" in vol:
            print(f"volume_monai_tuned_module_s={vol['monai-tuned']['seconds']:.2f}")
        for engine in args.engines:
            if engine in vol:
                r = vol[engine]
                print(f"volume_segloop_{engine}_s={r['seconds']:.2f}")
                print(f"volume_speedup_vs_monai_{engine}={r['speedup']:.2f}")
                print(f"volume_agreement_{engine}={r['agreement']:.5f}")
        print(f"volume_agreement_control_monai_weights={vol['control']['agreement']:.5f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
