"""Clicks per object: a simulated corrector with an interactive (click) model, against painting
with napari's brush and against "automatic model + per-object fix", on held-out training samples.

Run
---
``python benchmarks/clicks.py --model NAME_OR_PATH --folder F [--folder F2 ...]
[--split test|val|all] [--max-objects N] [--max-clicks 10] [--auto-model NAME] [--json OUT]
[--device cpu]``

What it measures
----------------
Every source folder (a training folder v1; one row each) on its split (``--split``, default
``test``): its **objects** are those of :func:`segloop.core.editing.objects.label_objects`:
each nucleus of an instance folder, each connected part of a class on a plane of a semantic
folder (a liver, a tumour on a CT slice); volumes are walked plane by plane, as the
interactive model segments one plane.  Objects under ``--min-area`` pixels (default 16) and
objects with less than half their pixels reviewed are left out.  ``--max-objects N`` keeps
``N`` objects per source, drawn with a fixed seed (``--seed``, default 0) from all of them.

* **Interactive model** (the model under test): the standard NoC protocol of
  :mod:`segloop.core.inference.click_eval` (:func:`click_trace`: first click at the object's
  innermost point, each next one at the innermost point of the larger error, the previous
  mask given back; at most ``--max-clicks``; a trace stops once IoU reaches 0.90, and the IoU
  after 3 clicks of a trace that stopped earlier is its last value), summarized by
  :func:`summarize`: NoC@85 and NoC@90 (clicks until IoU >= 0.85 / 0.90, ``--max-clicks``
  when never), failure rate (share of objects that never get there), mean IoU after 1 and 3
  clicks, milliseconds per click (median, 95th percentile: one ``segment_crop`` call, reading
  the window included).
* **Baseline (a), painting with napari's brush**: the pixels a person paints per object (the
  mean object area) and an *estimate* of brush dabs: ``ceil(area / disk)`` per object, where
  ``disk`` is the pixel count of napari's round brush at its default size (``Labels.brush_size``
  of the installed napari, 10 in napari 0.9; 97 pixels: the integer offsets within
  ``floor(size / 2) + 0.5`` of the centre, as napari paints).  A dab is one click-and-release;
  real strokes drag the brush, so this counts area, not effort, and ignores edge care.
* **Baseline (b), automatic model + per-object fix** (``--auto-model``): the automatic model
  (``segloop.load_model(name).predict(image)``; RGB images on a one-channel model go through
  their hematoxylin channel, :func:`segloop.core.inference.stain.stain_normalization`) runs on
  every image that holds a benchmarked object.  Its objects (found the same way as the
  reference's) are matched to the reference objects with
  :func:`segloop.core.editing.metrics.match_instances` (per plane, per class for semantic
  labels): a reference object matched at IoU >= 0.85 costs **0** clicks; a missed or poor one
  costs its interactive NoC@85 (re-segmented from scratch); each predicted object not matched
  one-to-one at IoU >= 0.5 (the usual false positive) costs **1** click (delete).  Clicks per
  object = mean fix clicks over the benchmarked objects + false positives / reference objects
  of the images run; reported next to NoC@85 from scratch.

Written to ``--json``: the command line, both models (name, version, sha256 of the weights,
path), the machine (CPU, cpu count, torch threads and version), the date, the settings and,
per source, every figure and every object's trace.  Printed: the tables, then ``key=value``
lines.  Bad input (no such model, an automatic model as ``--model`` or an interactive one as
``--auto-model``, a folder without samples in the split, ``--max-clicks < 1``) is one line on
stderr and exit status 2, before anything is written.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from segloop.core.editing.fix_effort import (
    FIX_IOU,
    FP_IOU,
    AutoMatch,
    fix_cost,
    match_automatic,
    pool_fix_costs,
    reviewed_objects,
)

__all__ = ["AutoMatch", "brush_baseline", "brush_disk_area", "fix_cost", "main", "match_automatic",
           "pool_fix_costs", "reviewed_objects"]

SPLITS = ("test", "val", "all")
#: The trace stops once IoU reaches the highest threshold reported.
THRESHOLDS = (0.85, 0.9)
#: napari's default ``Labels.brush_size`` (0.4 - 0.9), used when napari is not installed.
NAPARI_DEFAULT_BRUSH = 10


# ----------------------------------------------------------------------------- baseline (a): the brush


def napari_brush_size() -> tuple[int, str]:
    """napari's default brush size for a Labels layer, and where the figure came from."""
    try:
        import napari
        from napari.layers import Labels
    except ImportError:
        return NAPARI_DEFAULT_BRUSH, "napari not installed: its default since 0.4"
    return int(Labels(np.zeros((1, 1), np.uint8)).brush_size), f"napari {napari.__version__} Labels.brush_size"


def brush_disk_area(brush_size: int) -> int:
    """Pixels one dab of napari's round brush paints on a 2D layer at unit scale.

    napari paints the integer offsets within ``floor(brush_size / 2) + 0.5`` of the cursor
    (``Labels._get_brush_mask_and_bbox``): 97 pixels at the default size 10.
    """
    r = math.floor(brush_size / 2) + 0.5
    k = int(math.floor(r))
    y, x = np.mgrid[-k:k + 1, -k:k + 1]
    return int(((y * y + x * x) <= r * r).sum())


def brush_baseline(areas: Sequence[int], *, brush_size: int) -> dict[str, Any]:
    """Painting each object with the brush: pixels per object and an estimate of dabs.

    Parameters
    ----------
    areas : sequence of int
        Pixels of each object.
    brush_size : int
        napari's ``Labels.brush_size``.

    Returns
    -------
    dict
        ``pixels_per_object`` (mean area), ``brush_size``, ``dab_pixels`` (one dab's disk),
        ``dabs_per_object`` (mean of ``ceil(area / dab_pixels)``: an estimate).
    """
    disk = brush_disk_area(brush_size)
    a = np.asarray(areas, dtype=np.float64)
    return {"pixels_per_object": round(float(a.mean()), 2) if a.size else None, "brush_size": int(brush_size),
            "dab_pixels": disk,
            "dabs_per_object": round(float(np.ceil(a / disk).mean()), 3) if a.size else None}


# ----------------------------------------------------------------------------- samples


@dataclass
class Source:
    """One source folder and its samples in the split."""

    name: str
    folder: Any                      # TrainingFolder
    split: str
    records: list


def collect_sources(folders: Sequence[Path], split: str) -> list[Source]:
    """The samples of each folder in ``split``.

    Raises
    ------
    TrainingFolderError
        A folder is missing, is not a training folder, or has no sample in the split.
    """
    from segloop.core.formats.trainfolder import TrainingFolder
    from segloop.errors import TrainingFolderError

    out: list[Source] = []
    names = [Path(f).name for f in folders]
    for path in folders:
        tf = TrainingFolder.open(path)
        records = tf.samples() if split == "all" else tf.samples(split)
        if not records:
            counts = ", ".join(f"{k} {v}" for k, v in tf.split_counts().items())
            raise TrainingFolderError(f"{path} has no {split} samples ({counts}); choose another --split "
                                      f"({', '.join(SPLITS)})")
        name = tf.path.name if names.count(Path(path).name) == 1 else str(tf.path)
        out.append(Source(name, tf, split, records))
    return out


def _spatial_axes(meta: dict, image: np.ndarray) -> tuple[bool, int | None]:
    """(is a volume, channel axis) of a sample."""
    axes = str(meta.get("axes") or "")
    if axes not in ("YX", "YXC", "ZYX", "ZYXC"):
        from segloop.errors import TrainingFolderError

        raise TrainingFolderError(f"sample with axes {axes!r}: expected YX, YXC, ZYX or ZYXC; run segloop validate")
    return axes.startswith("Z"), (-1 if axes.endswith("C") else None)


def _pixel_size(meta: dict, volume: bool) -> float | None:
    sp = meta.get("spacing")
    if volume or not sp or len(sp) < 2:
        return None
    y, x = (float(v) for v in sp[-2:])
    return float((y + x) / 2) if all(math.isfinite(v) and v > 0 for v in (y, x)) else None


# ----------------------------------------------------------------------------- running


def _model_facts(arg: str, spec) -> dict[str, Any]:
    from segloop.core.formats.registry import model_path

    return {"argument": arg, "path": str(model_path(arg)), "name": spec.name, "version": spec.version,
            "sha256": spec.sha256, "task": spec.task, "architecture": spec.architecture}


def _auto_predict(model, image: np.ndarray, meta: dict, *, volume: bool, channel_axis: int | None) -> np.ndarray:
    from segloop.core.inference.stain import stain_normalization

    kw: dict[str, Any] = {"channel_axis": channel_axis}
    rgb = channel_axis is not None and image.shape[-1] in (3, 4)
    norm = stain_normalization(model, rgb=rgb, stain="auto")
    if norm is not None:
        kw["normalization"] = norm
    ps = _pixel_size(meta, volume)
    if ps is not None:
        kw["pixel_size"] = ps
    sp = meta.get("spacing")
    if volume and sp and len(sp) == 3:
        kw["spacing"] = tuple(float(v) for v in sp)
    return np.asarray(model.predict(image, **kw).labels)


def run_source(src: Source, model, auto, *, max_objects: int | None, max_clicks: int, min_area: int, seed: int,
               brush_size: int, log=print) -> dict[str, Any]:
    """Every figure of one source folder (see the module docstring)."""
    from segloop.core.inference.click_eval import click_trace, noc, summarize

    task = src.folder.info.task
    t0 = time.perf_counter()
    # pass 1: every object of the split, then the sample of --max-objects
    found: list[tuple[int, Any]] = []
    for i, rec in enumerate(src.records):
        s = src.folder.read_sample(rec)
        found += [(i, o) for o in reviewed_objects(np.asarray(s.labels), s.reviewed, task=task, min_area=min_area)]
    total = len(found)
    if max_objects is not None and total > max_objects:
        keep = np.sort(np.random.default_rng(seed).choice(total, size=max_objects, replace=False))
        found = [found[k] for k in keep]
    by_sample: dict[int, list] = {}
    for i, o in found:
        by_sample.setdefault(i, []).append(o)
    # pass 2: the traces, the automatic model on the same images
    traces, rows, fix_rows = [], [], []
    auto_seconds = 0.0
    for n, (i, objs) in enumerate(sorted(by_sample.items())):
        rec = src.records[i]
        s = src.folder.read_sample(rec)
        image, labels = s.image, np.asarray(s.labels)
        volume, ca = _spatial_axes(s.meta, image)
        norm = model.normalizer_for(image, channel_axis=ca)
        ps = _pixel_size(s.meta, volume)
        nocs = {}
        for o in objs:
            tr = click_trace(model, image, o.mask(labels), max_clicks=max_clicks, stop_at=max(THRESHOLDS), z=o.z,
                             normalizer=norm, channel_axis=ca, pixel_size=ps)
            traces.append(tr)
            nocs[o] = noc(tr.ious, FIX_IOU, max_clicks)
            rows.append({"sample": rec.sample_id, "z": o.z, "value": o.value, "part": o.part, "area": o.area,
                         "noc@85": nocs[o], "noc@90": noc(tr.ious, 0.9, max_clicks),
                         "ious": [round(v, 4) for v in tr.ious], "clicks": [list(c) for c in tr.clicks],
                         "ms": [round(m, 2) for m in tr.milliseconds]})
        if auto is not None:
            t1 = time.perf_counter()
            pred = _auto_predict(auto, image, s.meta, volume=volume, channel_axis=ca)
            auto_seconds += time.perf_counter() - t1
            match = match_automatic(labels, pred, task=task, min_area=min_area, reviewed=s.reviewed)
            status = dict(zip(match.objects, match.matched, strict=True))
            for r, o in zip(rows[-len(objs):], objs, strict=True):
                r["auto_matched"] = bool(status[o])
            fix_rows.append({"sample": rec.sample_id, **fix_cost(match, nocs, objects=objs),
                             "predicted_objects": match.predicted_objects})
        if (n + 1) % 10 == 0 or n + 1 == len(by_sample):
            log(f"  {src.name}: {n + 1}/{len(by_sample)} images, {len(traces)} objects "
                f"({time.perf_counter() - t0:.0f} s)", flush=True)
    out: dict[str, Any] = {
        "source": src.name, "folder": str(src.folder.path), "task": task, "split": src.split,
        "images": len(by_sample), "images_in_split": len(src.records), "objects_in_split": total,
        "interactive": summarize(traces, max_clicks=max_clicks, thresholds=THRESHOLDS),
        "brush": brush_baseline([o.area for _, o in found], brush_size=brush_size)}
    if auto is not None:
        pooled = pool_fix_costs(fix_rows)
        out["auto_fix"] = {**pooled, "predicted_objects": int(sum(r["predicted_objects"] for r in fix_rows)),
                           "clicks_per_object_from_scratch": out["interactive"].get("noc@85"),
                           "auto_seconds": round(auto_seconds, 3), "per_image": fix_rows}
    out["seconds"] = round(time.perf_counter() - t0, 2)
    out["objects"] = rows
    return out


# ----------------------------------------------------------------------------- report


def _f(v, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


def tables(results: Sequence[dict], *, max_clicks: int, brush_size: int, brush_source: str) -> str:
    """The printed tables: interactive model and brush per source, then the automatic workflow."""
    out = [f"Interactive model, NoC protocol, at most {max_clicks} clicks (held-out objects):", "",
           "| source | split | images | objects | NoC@85 | NoC@90 | failed@85 | failed@90 | mIoU@1 | mIoU@3 | "
           "ms/click median | ms/click p95 | brush px/object | brush dabs/object (estimate) |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        s, b = r["interactive"], r["brush"]
        out.append(f"| {r['source']} | {r['split']} | {r['images']} | {s['objects']} | {_f(s.get('noc@85'))} | "
                   f"{_f(s.get('noc@90'))} | {_f(s.get('failed@85'), '.1%')} | {_f(s.get('failed@90'), '.1%')} | "
                   f"{_f(s.get('miou@1'), '.3f')} | {_f(s.get('miou@3'), '.3f')} | "
                   f"{_f(s.get('ms_per_click_median'), '.1f')} | {_f(s.get('ms_per_click_p95'), '.1f')} | "
                   f"{_f(b['pixels_per_object'], '.0f')} | {_f(b['dabs_per_object'], '.1f')} |")
    dab = brush_disk_area(brush_size)
    out += ["", f"Brush: napari's round brush at size {brush_size} ({brush_source}) paints {dab} pixels a dab; "
                "dabs/object = mean ceil(area / dab), an estimate of effort, not a measurement."]
    auto = [r for r in results if "auto_fix" in r]
    if auto:
        out += ["", f"Automatic model + per-object fix (objects at IoU >= {FIX_IOU} cost 0, missed / poor ones their "
                    "NoC@85, each false positive 1 delete click):", "",
                "| source | objects | matched >= 0.85 | to fix | false positives | clicks/object (auto + fix) | "
                "clicks/object (from scratch, NoC@85) |", "|---|---|---|---|---|---|---|"]
        for r in auto:
            a = r["auto_fix"]
            out.append(f"| {r['source']} | {a['objects']} | {a['matched']} | {a['to_fix']} | "
                       f"{a['false_positives']} (of {a['predicted_objects']} predicted; {a['objects_in_images']} "
                       f"reference objects in these images) | {a['clicks_per_object']:.2f} | "
                       f"{_f(a['clicks_per_object_from_scratch'])} |")
    return "\n".join(out) + "\n"


def machine() -> dict[str, Any]:
    import platform

    import torch
    from _machine import cpu_model

    return {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform()}


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, metavar="NAME_OR_PATH", help="the interactive (click) model")
    ap.add_argument("--folder", action="append", required=True, type=Path, metavar="F",
                    help="a training folder v1 (repeatable; one row each)")
    ap.add_argument("--split", choices=SPLITS, default="test", help="samples to use (default test)")
    ap.add_argument("--max-objects", type=int, metavar="N",
                    help="at most N objects per source, drawn with --seed (default: all)")
    ap.add_argument("--max-clicks", type=int, default=10, help="clicks per object at most (default 10)")
    ap.add_argument("--min-area", type=int, default=16, help="objects smaller than this (pixels) are left out")
    ap.add_argument("--seed", type=int, default=0, help="seed of the --max-objects draw (default 0)")
    ap.add_argument("--auto-model", metavar="NAME_OR_PATH",
                    help="an automatic model: adds the 'automatic model + per-object fix' workflow")
    ap.add_argument("--json", type=Path, metavar="OUT", help="write every figure here")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    return ap


def main(argv: list[str] | None = None) -> int:
    from segloop.errors import SegloopError

    a = parser().parse_args(argv)
    command = " ".join(shlex.quote(x) for x in ["benchmarks/clicks.py", *(sys.argv[1:] if argv is None else argv)])
    for flag, value, least in (("--max-clicks", a.max_clicks, 1), ("--max-objects", a.max_objects, 1),
                               ("--min-area", a.min_area, 1)):
        if value is not None and value < least:
            print(f"error: {flag} must be at least {least}, got {value}", file=sys.stderr)
            return 2
    try:
        import segloop
        from segloop.errors import ModelPackageError

        sources = collect_sources(a.folder, a.split)
        model = segloop.load_interactive(a.model, device=a.device)
        auto = segloop.load_model(a.auto_model, device=a.device) if a.auto_model else None
        if auto is not None:
            for src in sources:
                if auto.spec.task != src.folder.info.task:
                    raise ModelPackageError(f"--auto-model {a.auto_model} is a {auto.spec.task} model and "
                                            f"{src.folder.path} holds {src.folder.info.task} labels; give an "
                                            f"automatic {src.folder.info.task} model")
        brush_size, brush_source = napari_brush_size()
        print(f"interactive model {model.spec.name} {model.spec.version}"
              + (f"; automatic model {auto.spec.name} {auto.spec.version}" if auto else "")
              + f"; {len(sources)} source(s): " + ", ".join(f"{s.name} ({s.split}, {len(s.records)} images)"
                                                            for s in sources), flush=True)
        results = [run_source(src, model, auto, max_objects=a.max_objects, max_clicks=a.max_clicks,
                              min_area=a.min_area, seed=a.seed, brush_size=brush_size) for src in sources]
    except (SegloopError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    table = tables(results, max_clicks=a.max_clicks, brush_size=brush_size, brush_source=brush_source)
    print()
    print(table)
    mach = machine()
    print(f"machine: {mach['cpu']}; {mach['cpu_count']} CPUs; torch {mach['torch']}, {mach['torch_threads']} "
          f"thread(s)")
    if a.json:
        from segloop.core._runtime import atomic_write_text

        doc = {"command": command, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "machine": mach, "model": _model_facts(a.model, model.spec),
               "auto_model": _model_facts(a.auto_model, auto.spec) if auto else None,
               "settings": {"split": a.split, "max_objects": a.max_objects, "max_clicks": a.max_clicks,
                            "min_area": a.min_area, "seed": a.seed, "device": a.device, "stain": "auto",
                            "thresholds": list(THRESHOLDS), "trace_stops_at": max(THRESHOLDS),
                            "fix_iou": FIX_IOU, "false_positive_iou": FP_IOU,
                            "brush": {"size": brush_size, "source": brush_source,
                                      "dab_pixels": brush_disk_area(brush_size)}},
               "sources": results}
        a.json.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(a.json, json.dumps(doc, indent=1), durable=False)
        print(f"wrote {a.json}")
    for r in results:
        key = r["source"].replace(" ", "_")
        s = r["interactive"]
        line = [f"{key}.{k}={s[k]}" for k in ("objects", "noc@85", "noc@90", "failed@85", "miou@1", "miou@3",
                                               "ms_per_click_median", "ms_per_click_p95") if k in s]
        line.append(f"{key}.brush_pixels_per_object={r['brush']['pixels_per_object']}")
        if "auto_fix" in r:
            line.append(f"{key}.auto_fix_clicks_per_object={r['auto_fix']['clicks_per_object']}")
        print(" ".join(line))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
