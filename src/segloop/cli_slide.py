"""``segloop predict`` on whole slides: OME-Zarr labels, QuPath GeoJSON, per-object CSV, a TIFF if small.

Called by :mod:`segloop.cli` for inputs that are slides (vendor formats, pyramidal TIFF) or when
``--format``, ``--level``, ``--region`` or ``--cluster``/``--scheduler`` ask for the slide path.
The work is :func:`segloop.core.inference.slide.segment_slide`; this module parses the options,
runs it with a progress bar, and writes the exports from the stitched labels block by block.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segloop.errors import SegloopError

__all__ = ["FORMATS", "check_slide_args", "open_client", "parse_formats", "parse_region", "predict_slide",
           "wants_slide", "write_summary"]

FORMATS = ("ome-zarr", "geojson", "csv", "tif")
#: ``tif`` is written only when the labels fit in this many bytes (uint32).
TIF_MAX_BYTES = 2 * 1024**3


def parse_formats(values: list[str] | None) -> list[str] | None:
    """``--format`` values (repeatable, comma-separated) as a list, or None when not given."""
    if not values:
        return None
    out = []
    for v in values:
        for f in (s.strip().lower() for s in v.split(",")):
            if f not in FORMATS:
                raise SegloopError(f"--format {f!r}: choose from {', '.join(FORMATS)}")
            if f not in out:
                out.append(f)
    return out


def parse_region(text: str | None) -> tuple[int, int, int, int] | None:
    """``--region x,y,w,h`` (level-0 pixels) as ints, or None."""
    if text is None:
        return None
    try:
        x, y, w, h = (int(v) for v in text.split(","))
    except ValueError:
        raise SegloopError(f"--region {text!r}: write x,y,w,h in level-0 pixels, e.g. 20000,15000,4096,4096") from None
    return x, y, w, h


def wants_slide(path: str, args) -> bool:
    """Segment ``path`` as a slide: a slide file, or slide-only options given."""
    from segloop.core.formats.io.wsi import is_slide

    asked = (args.level is not None or args.region is not None or args.cluster or args.scheduler
             or any(f != "tif" for f in (args.formats or [])))
    try:
        return asked or is_slide(path)
    except (OSError, SegloopError):
        return False


def predict_slide(model, normalization, path: str, out_dir: Path, args, cancel, *, progress_bar,
                  resolve=None, client=None) -> dict:
    """Segment one slide into ``out_dir/<stem>.zarr`` and the exports ``--format`` asks for; return its
    row of the cohort summary.

    ``progress_bar(n_inputs, index, name) -> (bar, update)`` is the command's progress bar;
    ``resolve(path, image, info) -> (model, normalization, image)`` picks the model (``--model
    auto``), given the slide's smallest level.
    """
    from segloop.core.formats.io.wsi import open_slide
    from segloop.core.inference.slide import segment_slide

    formats = args.formats or ["ome-zarr", "geojson"]
    stem = Path(path).name.split(".")[0]
    with open_slide(path) as slide:
        if resolve is not None:                          # picked on the smallest level
            from types import SimpleNamespace

            low = slide.levels[-1]
            low = np.asarray(low[: min(2048, low.shape[0]), : min(2048, low.shape[1])])
            rgb = low.ndim == 3 and low.shape[-1] in (3, 4)
            model, normalization, _ = resolve(path, low, SimpleNamespace(axes="YXS" if rgb else "YX"))
        zarr_path = out_dir / f"{stem}.zarr"
        exports = {"geojson": out_dir / f"{stem}.geojson", "csv": out_dir / f"{stem}_objects.csv",
                   "tif": out_dir / f"{stem}_labels.tif"}
        for f, p in exports.items():
            if f in formats and p.exists() and not args.overwrite:
                raise SegloopError(f"{p} exists; pass --overwrite or choose another --out")
        bar, update = progress_bar(1, 1, Path(path).name)
        predict = {"tile": args.tile, "overlap": args.overlap, "batch_size": args.batch, "device": args.device,
                   "engine": args.engine, "normalization": normalization}
        predict = {k: v for k, v in predict.items() if v is not None}
        try:
            res = segment_slide(slide, model, zarr_path, level=args.level, region=args.region, block=args.block,
                                tissue=args.tissue == "on", overwrite=args.overwrite, predict=predict,
                                pixel_size=args.pixel_size,
                                client=client, progress=update, cancel=cancel)
        finally:
            bar.close()
        plan = res.plan
        written = [str(zarr_path)]
        if "geojson" in formats or "csv" in formats:
            written += _write_objects(slide, res, formats, exports)
        if "tif" in formats:
            h, w = plan.region[2], plan.region[3]
            if h * w * 4 > TIF_MAX_BYTES:
                print(f"{path}: note: --format tif skipped: {w} x {h} labels do not fit in one TIFF in memory; "
                      f"read {zarr_path} instead", flush=True)
            else:
                from segloop.core.formats.io.images import write_labels

                write_labels(exports["tif"], np.asarray(res.labels), metadata=_provenance(res))
                written.append(str(exports["tif"]))
    if "ome-zarr" not in formats:
        import shutil

        shutil.rmtree(zarr_path, ignore_errors=True)
        written.pop(0)
    px = f", {plan.pixel_size[0]:.3g} µm/px" if plan.pixel_size else ""
    print(f"{path}: {res.n_objects} objects (level {plan.level}{px}; {res.blocks_run} of {res.blocks} blocks on "
          f"tissue, {res.blocks_resumed} resumed, {res.merged} joined across blocks) -> {', '.join(written)}",
          flush=True)
    return {"slide": str(path), "objects": res.n_objects, "level": plan.level,
            "pixel_size_um": plan.pixel_size[0] if plan.pixel_size else "", "blocks": res.blocks,
            "blocks_on_tissue": res.blocks_run, "blocks_resumed": res.blocks_resumed,
            "seconds": round(res.seconds, 1), "model": plan.model["name"], "outputs": ";".join(written)}


def write_summary(out_dir: Path, rows: list[dict]) -> Path:
    """``summary.csv`` of a cohort: one row per slide (written atomically)."""
    import csv
    import io

    from segloop.core._runtime import atomic_write_text

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    path = out_dir / "summary.csv"
    atomic_write_text(path, buf.getvalue())
    return path


def _provenance(res) -> dict:
    return {"model": res.plan.model, "slide": res.plan.to_dict(), "n_objects": res.n_objects}


def _write_objects(slide, res, formats, exports) -> list[str]:
    """GeoJSON and CSV from the stitched labels, block by block (each object once: its centroid's block)."""
    from segloop.core.formats.io.geojson import (
        label_features,
        object_table,
        write_geojson,
        write_object_csv,
    )

    plan, labels = res.plan, res.labels
    ry, rx, h, w = plan.region
    margin = plan.halo
    d = plan.downsample
    level = slide.levels[plan.level]

    def windows():
        for y in range(0, h, plan.block):
            for x in range(0, w, plan.block):
                y0, y1 = max(0, y - margin), min(h, y + plan.block + margin)
                x0, x1 = max(0, x - margin), min(w, x + plan.block + margin)
                lab = np.asarray(labels[y0:y1, x0:x1])
                if not lab.any():
                    continue
                img = np.asarray(level[ry + y0:ry + y1, rx + x0:rx + x1])
                if img.ndim == 3 and img.shape[-1] == 4:
                    img = img[..., :3]
                core = (y, min(h, y + plan.block), x, min(w, x + plan.block))

                def keep(region, _y0=y0, _x0=x0, _core=core):
                    cy, cx = region.centroid
                    return _core[0] <= cy + _y0 < _core[1] and _core[2] <= cx + _x0 < _core[3]

                yield lab, img, (ry + y0, rx + x0), keep

    def objects(make, to_level0):
        for lab, img, off, keep in windows():
            for item in make(lab, offset=off, pixel_size=plan.pixel_size, image=img, keep=keep):
                yield to_level0(item, d)

    written = []
    for fmt, make, to_level0, write in (("geojson", label_features, _to_level0, write_geojson),
                                        ("csv", object_table, _row_to_level0, write_object_csv)):
        if fmt in formats:
            write(exports[fmt], objects(make, to_level0))
            written.append(str(exports[fmt]))
    return written


def _scale_coords(coords, d: float):
    if isinstance(coords[0], (int, float)):
        return [c * d for c in coords]
    return [_scale_coords(c, d) for c in coords]


def _to_level0(feature: dict, d: float) -> dict:
    """Coordinates in level-0 pixels (QuPath's frame) when the run level is downsampled by ``d``."""
    if d == 1.0:
        return feature
    feature["geometry"]["coordinates"] = _scale_coords(feature["geometry"]["coordinates"], d)
    return feature


def _row_to_level0(row: dict, d: float) -> dict:
    if d == 1.0:
        return row
    for k in ("centroid_x_px", "centroid_y_px", "perimeter_px"):
        if row.get(k) is not None:
            row[k] = row[k] * d
    if row.get("area_px") is not None:
        row["area_px"] = row["area_px"] * d * d
    return row


def check_slide_args(args) -> None:
    """Slide options, parsed and checked before anything is read or written."""
    args.formats = parse_formats(args.formats)
    args.region = parse_region(args.region)
    if args.block < 256:
        raise SegloopError(f"--block {args.block}: use at least 256 (pixels of the run level)")
    if args.cluster and args.scheduler:
        raise SegloopError("give --cluster local:N or --scheduler ADDRESS, not both")
    if args.level is not None and args.level < 0:
        raise SegloopError(f"--level {args.level}: levels count from 0 (full resolution)")


def open_client(args):
    """The dask client for ``--cluster``/``--scheduler`` (None: blocks run in this process)."""
    if not (args.cluster or args.scheduler):
        return None
    from segloop.core.inference.distributed import make_client

    return make_client(args.cluster, args.scheduler)

