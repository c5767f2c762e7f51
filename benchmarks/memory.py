"""Peak memory (RSS) of ``Model.predict`` on large images: bounded, whatever the image size.

Each image size runs in a FRESH subprocess (``memory.py --child SIZE``), so
every peak is that size's own.  In the child:

1. the input, SIZE x SIZE uint8 (mostly background with the real fluorescence
   nuclei image ``segloop/data/bbbc007_A9_p10d.tif`` pasted into ~40% of the
   1024^2 cells), is written to a file in a temporary folder with plain
   ``write`` calls (never mapped while written) and opened as a read-only
   ``np.memmap``: it is not heap, but pages that predict touches are counted in
   RSS as file-backed pages (``RssFile``);
2. an instance model is built (default ``--fast-net``: a random-init
   unet(depth=3, base_width=8) - memory, not accuracy, is measured) and the
   baseline RSS is read (VmRSS, after model load, before predict);
3. ``Model.predict(image, skip_background=False)`` runs (a grey image: every
   tile runs), while a thread samples ``/proc/self/status`` every 20 ms;
4. the peak is the largest of ``getrusage(RUSAGE_SELF).ru_maxrss``,
   ``VmHWM`` (reset with ``/proc/self/clear_refs`` just before predict when
   the kernel allows) and the sampled VmRSS.

Reported per size: input MB, output (label array) MB, baseline, peak, and

    growth = peak - baseline - output bytes            (target < 500 MB: PASS/MISS)
    beyond_io = growth - input bytes                   (what predict itself holds)

``growth`` is the conservative figure: it still contains the input memmap's
pages that were read (up to the whole input at the end of a run).

Named baseline, same run: the *naive* approach - ``predict_tiled`` without a
sink (a full ``(K, H, W)`` float32 probability array) followed by ``argmax`` -
on 2048^2 (and 8192^2 with ``--naive-large``), also each in its own process.

Run (see benchmarks/README.md)::

    python benchmarks/memory.py                   # 2048, 8192, 16384 (long: every tile runs)
    python benchmarks/memory.py --quick           # 1024 and 2048
    python benchmarks/memory.py --sizes 4096
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
NUCLEI_TIF = ROOT / "src" / "segloop" / "data" / "bbbc007_A9_p10d.tif"
TARGET_MB = 500.0
MB = 1024 * 1024
RESULT_TAG = "@@RESULT "


# ---------------------------------------------------------------------------
# /proc helpers (Linux)
# ---------------------------------------------------------------------------


def proc_status() -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile in bytes (empty dict where /proc is missing)."""
    out: dict[str, int] = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
                    out[key] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    return out


def reset_hwm() -> bool:
    """Reset VmHWM to the current RSS (``echo 5 > /proc/self/clear_refs``); False if not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def ru_maxrss_bytes() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024   # Linux: kB; macOS: bytes


class Sampler(threading.Thread):
    """Samples VmRSS (and its anon/file split) every ``interval`` seconds; keeps the max."""

    def __init__(self, interval: float = 0.02):
        super().__init__(daemon=True)
        self.interval, self.stop_flag = interval, threading.Event()
        self.max: dict[str, int] = {}

    def run(self) -> None:
        while not self.stop_flag.is_set():
            s = proc_status()
            if s.get("VmRSS", 0) > self.max.get("VmRSS", -1):
                self.max = s
            self.stop_flag.wait(self.interval)

    def stop(self) -> dict[str, int]:
        self.stop_flag.set()
        self.join()
        return self.max


# ---------------------------------------------------------------------------
# Input image on disk
# ---------------------------------------------------------------------------


def write_input(path: Path, size: int, seed: int = 0) -> tuple[np.memmap, float]:
    """Write a (size, size) uint8 image to ``path`` without mapping it; return it as a read-only memmap.

    Background: the nuclei image's own background level with mild noise.  In
    each 1024^2 cell, with probability 0.4, the 450^2 nuclei image is pasted
    at a random offset.  Only small buffers are allocated.
    """
    import tifffile

    nuc = tifffile.imread(NUCLEI_TIF).astype(np.uint8)
    bg = int(np.percentile(nuc, 5))
    rng = np.random.default_rng(seed)
    with open(path, "wb") as f:
        for y0 in range(0, size, 256):                    # background, 256 rows at a time
            rows = min(256, size - y0)
            f.write((bg + rng.integers(0, 4, size=(rows, size), dtype=np.uint8)).tobytes())
    th, tw = nuc.shape
    covered = 0
    cell = 1024
    fd = os.open(path, os.O_WRONLY)
    try:
        for cy in range(0, size, cell):
            for cx in range(0, size, cell):
                if rng.random() >= 0.4 and not (cy == 0 and cx == 0):
                    continue                               # cell (0, 0) always gets nuclei
                h, w = min(th, size - cy), min(tw, size - cx)
                y = cy + int(rng.integers(0, max(1, min(cell, size - cy) - h + 1)))
                x = cx + int(rng.integers(0, max(1, min(cell, size - cx) - w + 1)))
                h, w = min(h, size - y), min(w, size - x)
                for r in range(h):
                    os.pwrite(fd, nuc[r, :w].tobytes(), (y + r) * size + x)
                covered += h * w
    finally:
        os.close(fd)
    return np.memmap(path, dtype=np.uint8, mode="r", shape=(size, size)), covered / size / size


# ---------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------


def make_model(fast_net: bool, threads: int):
    """(Model, description).  fast: random-init unet(depth=3, base_width=8), instance task."""
    import torch

    torch.set_num_threads(threads)
    import segloop
    from segloop.core.formats.normalization import Percentile
    from segloop.core.formats.package import ModelPackage, ModelSpec
    from segloop.core.inference.model import Model
    from segloop.core.inference.postprocess import InstanceParams
    from segloop.core.networks import build

    if not fast_net:
        if "nuclei-unet" in segloop.list_models():
            try:
                m = segloop.load_model("nuclei-unet", device="cpu", engine="torch", precision="fp32")
                return m, f"bundled nuclei-unet v{m.spec.version} ({m.spec.architecture_kwargs})"
            except Exception as e:
                print(f"NOTE: bundled nuclei-unet could not be loaded ({type(e).__name__}: {e})",
                      file=sys.stderr)
        kw, what = {"depth": 4, "base_width": 16, "norm": "batch"}, "random-init unet(depth=4, base_width=16)"
    else:
        kw, what = {"depth": 3, "base_width": 8, "norm": "batch"}, "random-init unet(depth=3, base_width=8) [--fast-net]"
    spec = ModelSpec(name="bench-unet", version="0", architecture="unet", architecture_kwargs=kw, dims=2,
                     in_channels=1, classes=("background", "nucleus", "boundary"), task="instance",
                     postprocess=InstanceParams(min_size=15).to_dict(), normalization=Percentile().to_dict(),
                     tile={"size": 256, "overlap": 0.25})
    torch.manual_seed(0)
    state = build("unet", 1, 3, dims=2, **kw).state_dict()
    return Model(ModelPackage(spec, state), device="cpu", engine="torch", precision="fp32"), what


# ---------------------------------------------------------------------------
# Child: one size, one process
# ---------------------------------------------------------------------------


def child(args) -> dict:
    size = args.child
    tmp = Path(tempfile.mkdtemp(prefix="segloop-mem-", dir=args.tmpdir))
    try:
        image, frac = write_input(tmp / "input.u8", size)
        model, what = make_model(args.fast_net, args.threads)
        gc.collect()
        base = proc_status()                               # after model load, before predict
        base_warm = None
        if args.warmup:
            # Optional second baseline: after one small in-memory predict (lazy imports, torch's
            # first-call allocations), so fixed costs can be told from size-dependent ones.  It
            # changes what the main run finds already allocated, so it is off by default.
            warm = np.ascontiguousarray(np.tile(image[:256, :256], (2, 2)))
            model.predict(warm, tile=args.tile, overlap=args.overlap, batch_size=args.batch,
                          skip_background=False)
            del warm
            gc.collect()
            base_warm = proc_status()
        hwm_reset = reset_hwm()
        sampler = Sampler()
        sampler.start()
        t0 = time.perf_counter()
        if args.naive:
            from segloop.core.formats.normalization import spec_from_dict
            from segloop.core.inference.normalize import Normalizer
            from segloop.core.inference.tiling import predict_tiled

            norm = Normalizer.fit(spec_from_dict(model.spec.normalization), image, channel_axis=None)
            probs = predict_tiled(model.predictor, image, tile=args.tile, overlap=args.overlap,
                                  channel_axis=None, normalize=norm, n_classes=model.spec.n_classes,
                                  batch_size=args.batch, multiple=model.divisor)
            labels = probs.argmax(0).astype(np.uint16)
            del probs
            n_objects, n_tiles = -1, -1
        else:
            res = model.predict(image, tile=args.tile, overlap=args.overlap, batch_size=args.batch,
                                skip_background=False)
            labels, n_objects, n_tiles = res.labels, res.n_objects, res.tiles_predicted
        seconds = time.perf_counter() - t0
        peak_sampled = sampler.stop()
        end = proc_status()
        ru = ru_maxrss_bytes()
        hwm = end.get("VmHWM", 0)
        peak = max(ru, hwm, peak_sampled.get("VmRSS", 0))
        out_bytes = int(labels.nbytes)
        in_bytes = size * size
        growth = peak - base.get("VmRSS", 0) - out_bytes
        return {
            "size": size, "naive": bool(args.naive), "model": what, "threads": args.threads,
            "seconds": round(seconds, 2), "tiles": n_tiles, "n_objects": n_objects,
            "label_dtype": str(labels.dtype), "nuclei_fraction": round(frac, 4),
            "input_mb": in_bytes / MB, "output_mb": out_bytes / MB,
            "baseline_mb": base.get("VmRSS", 0) / MB,
            "baseline_anon_mb": base.get("RssAnon", 0) / MB,
            "baseline_file_mb": base.get("RssFile", 0) / MB,
            "baseline_warm_mb": base_warm["VmRSS"] / MB if base_warm else None,
            "peak_mb": peak / MB, "ru_maxrss_mb": ru / MB, "vmhwm_mb": hwm / MB, "hwm_reset": hwm_reset,
            "sampled_peak_mb": peak_sampled.get("VmRSS", 0) / MB,
            "sampled_peak_anon_mb": peak_sampled.get("RssAnon", 0) / MB,
            "sampled_peak_file_mb": peak_sampled.get("RssFile", 0) / MB,
            "end_file_mb": end.get("RssFile", 0) / MB,
            "growth_mb": growth / MB, "beyond_io_mb": (growth - in_bytes) / MB,
            "growth_after_warmup_mb": (peak - base_warm["VmRSS"] - out_bytes) / MB if base_warm else None,
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------
# Parent
# ---------------------------------------------------------------------------


def run_child(size: int, args, *, naive: bool) -> dict | None:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(size),
           "--tile", str(args.tile), "--overlap", str(args.overlap), "--batch", str(args.batch),
           "--threads", str(args.threads), "--fast-net" if args.fast_net else "--no-fast-net"]
    if args.warmup:
        cmd.append("--warmup")
    if naive:
        cmd.append("--naive")
    if args.tmpdir:
        cmd += ["--tmpdir", args.tmpdir]
    print(f"-- {'naive' if naive else 'segloop'} {size}x{size}: running in a fresh process ...", flush=True)
    p = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    for line in p.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
        print("   " + line)
    print(f"   child exited with {p.returncode} and no result", flush=True)
    return None


def describe(r: dict) -> str:
    verdict = "PASS" if r["growth_mb"] < TARGET_MB else "MISS"
    verdict += f" (beyond_io {'PASS' if r['beyond_io_mb'] < TARGET_MB else 'MISS'})"
    warm = "-" if r["growth_after_warmup_mb"] is None else f"{r['growth_after_warmup_mb']:.0f}"
    return (f"{r['size']:>6} {r['input_mb']:>9.0f} {r['output_mb']:>9.0f} {r['baseline_mb']:>8.0f} "
            f"{r['peak_mb']:>8.0f} {r['sampled_peak_file_mb'] - r['baseline_file_mb']:>+8.0f} "
            f"{r['growth_mb']:>8.0f} {r['beyond_io_mb']:>9.0f} {warm:>8} "
            f"{r['seconds']:>8.1f}  {verdict}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=lambda s: [int(v) for v in s.split(",")], default=[2048, 8192, 16384],
                    help="comma-separated image sides (default 2048,8192,16384)")
    ap.add_argument("--quick", action="store_true", help="sizes 1024 and 2048 only")
    ap.add_argument("--naive-large", action="store_true", help="also run the naive baseline at 8192^2 (~2 GB)")
    ap.add_argument("--no-naive", action="store_true", help="skip the naive baseline")
    ap.add_argument("--fast-net", action=argparse.BooleanOptionalAction, default=True,
                    help="random-init unet(depth=3, base_width=8) (default); --no-fast-net: the bundled "
                         "nuclei-unet, or a random unet(depth=4, base_width=16) when it is missing")
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--overlap", type=float, default=0.25)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: torch's default: $OMP_NUM_THREADS or the core count)")
    ap.add_argument("--warmup", action="store_true",
                    help="run a 512^2 predict before the measured one and also report growth after it")
    ap.add_argument("--tmpdir", default=None, help="where the input memmap files go (default: system temp)")
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--naive", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.threads is None:
        import torch

        args.threads = torch.get_num_threads()

    if args.child is not None:
        print(RESULT_TAG + json.dumps(child(args)), flush=True)
        return 0

    sizes = [1024, 2048] if args.quick else args.sizes
    naive_sizes = [] if args.no_naive else [s for s in sizes if s == 2048 or (args.naive_large and s == 8192)]
    print("== segloop Model.predict peak memory (instance model, every tile runs) ==")
    print(f"sizes {sizes}; tile {args.tile} overlap {args.overlap} batch {args.batch} threads {args.threads}")
    print("model: " + ("random-init unet(depth=3, base_width=8) [--fast-net, the default]: memory, not "
                       "accuracy, is measured" if args.fast_net else "--no-fast-net (see child notes)"))
    results, naive = [], []
    for s in sizes:
        r = run_child(s, args, naive=False)
        if r:
            if not results:
                print(f"   model: {r['model']}")
            results.append(r)
            print(f"   {r['seconds']:.1f} s, {r['tiles']} tiles, {r['n_objects']} objects "
                  f"({r['label_dtype']}), peak {r['peak_mb']:.0f} MB (ru_maxrss {r['ru_maxrss_mb']:.0f}, "
                  f"VmHWM {r['vmhwm_mb']:.0f}{'' if r['hwm_reset'] else ' not reset'}, sampled "
                  f"{r['sampled_peak_mb']:.0f}: anon {r['sampled_peak_anon_mb']:.0f} + file "
                  f"{r['sampled_peak_file_mb']:.0f})", flush=True)
    for s in naive_sizes:
        r = run_child(s, args, naive=True)
        if r:
            naive.append(r)
    if results and results[0]["n_objects"] == 0:
        print("NOTE: the random-init net finds no objects, so instance post-processing does little "
              "work here; run --no-fast-net with a trained bundled nuclei-unet for realistic object counts.")

    hdr = (f"{'size':>6} {'input MB':>9} {'output MB':>9} {'base MB':>8} {'peak MB':>8} {'d file':>8} "
           f"{'growth':>8} {'beyond_io':>9} {'warm gr.':>8} {'time s':>8}  target growth < {TARGET_MB:.0f} MB")
    print()
    print("segloop Model.predict (bounded: band-wise blending + streaming label assembly)")
    print(hdr)
    print("-" * len(hdr))
    for r in results:
        print(describe(r))
    if naive:
        print()
        print("named baseline: naive = predict_tiled without sink -> full (K, H, W) float32 -> argmax")
        print(hdr)
        print("-" * len(hdr))
        for r in naive:
            print(describe(r))
            same = next((b for b in results if b["size"] == r["size"]), None)
            if same:
                print(f"       naive - segloop peak at {r['size']}^2: {r['peak_mb'] - same['peak_mb']:+.0f} MB "
                      f"(growth {r['growth_mb']:.0f} vs {same['growth_mb']:.0f} MB)")
    print()
    print("base = RSS after model load, before predict; peak = max(ru_maxrss, VmHWM, sampled VmRSS).")
    print("growth = peak - base - output (PASS/MISS); beyond_io = growth - input.  The input memmap's "
          "pages count in RSS once read: 'd file' = RssFile at the sampled peak minus at base (input "
          "pages plus code of libraries imported lazily during predict).  'warm gr.' (--warmup only) = "
          "peak - RSS after a 512^2 warm-up predict - output: without fixed first-call costs.")
    for r in results:
        print(f"growth_mb_{r['size']}={r['growth_mb']:.1f} {'PASS' if r['growth_mb'] < TARGET_MB else 'MISS'}")
        print(f"beyond_io_mb_{r['size']}={r['beyond_io_mb']:.1f}")
    for r in naive:
        print(f"naive_growth_mb_{r['size']}={r['growth_mb']:.1f}")
    if len(results) < len(sizes):
        print("MISSING results for some sizes (a child failed)")
    print(f"max_beyond_io_mb={max((r['beyond_io_mb'] for r in results), default=float('nan')):.1f}")
    print(f"max_growth_mb={max((r['growth_mb'] for r in results), default=float('nan')):.1f}")
    return 0 if results and len(results) == len(sizes) else 1


if __name__ == "__main__":
    sys.exit(main())
