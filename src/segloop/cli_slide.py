"""``segloop predict`` on whole slides: OME-Zarr labels, QuPath GeoJSON, per-object CSV, a TIFF if small.

Called by :mod:`segloop.cli` for inputs that are slides (vendor formats, pyramidal TIFF) or when
``--format``, ``--level``, ``--region`` or ``--cluster``/``--scheduler`` ask for the slide path.
The work is :func:`segloop.core.inference.slide.segment_slide`; this module parses the options,
runs it with a progress bar, and writes the exports from the stitched labels block by block.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segloop.errors import Cancelled, SegloopError

__all__ = ["FORMATS", "add_slide_arguments", "check_slide_args", "open_client", "parse_formats", "parse_region", "predict_slide",
           "wants_slide", "write_summary"]

FORMATS = ("ome-zarr", "geojson", "csv", "tif")
#: ``tif`` is written only when the labels fit in this many bytes (uint32).
TIF_MAX_BYTES = 2 * 1024**3


def add_slide_arguments(parser) -> None:
    """The whole-slide options of ``segloop predict`` (checked by :func:`check_slide_args`)."""
    g = parser.add_argument_group("whole slides (.svs, .ndpi, .mrxs, pyramidal TIFF ...)")
    g.add_argument("--format", dest="formats", action="append", default=None, metavar="FMT",
                   help="ome-zarr, geojson (QuPath), csv (one row per object), tif (if it fits in memory); "
                        "repeat or comma-separate (default for slides: ome-zarr,geojson)")
    g.add_argument("--level", type=int, default=None,
                   help="pyramid level to run on (default: the one closest to the model's pixel size)")
    g.add_argument("--region", default=None, metavar="X,Y,W,H", help="only this part, in level-0 pixels")
    g.add_argument("--block", type=int, default=4096, help="block side in pixels of the run level (default 4096)")
    g.add_argument("--tissue", choices=["on", "off"], default="on",
                   help="skip blocks with no tissue on a low-resolution level (default on)")
    g.add_argument("--cluster", default=None, metavar="local:N", help="run blocks on N local dask worker processes")
    g.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="run blocks on a running dask scheduler's workers, e.g. tcp://HOST:8786")


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
        except Cancelled:
            raise Cancelled(f"{path}: cancelled; finished blocks are kept in {zarr_path}: run the same command "
                            "again to resume") from None
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


def _object_owners(labels, n: int, step: int):
    """Per object id (1..n): the block ``(row, col)`` of ``step`` px holding its centroid, and its bbox.

    One pass over the stitched labels, ``step`` x ``step`` px at a time; the arrays hold a few
    numbers per object, never the labels.
    """
    h, w = labels.shape
    count, sy, sx = np.zeros(n + 1), np.zeros(n + 1), np.zeros(n + 1)
    big = np.iinfo(np.int64).max
    y0s, x0s = np.full(n + 1, big, np.int64), np.full(n + 1, big, np.int64)
    y1s, x1s = np.zeros(n + 1, np.int64), np.zeros(n + 1, np.int64)
    for y in range(0, h, step):
        for x in range(0, w, step):
            lab = np.asarray(labels[y:y + step, x:x + step])
            yy, xx = np.nonzero(lab)
            if not len(yy):
                continue
            ids = lab[yy, xx].astype(np.int64)
            yy, xx = yy + y, xx + x
            count += np.bincount(ids, minlength=n + 1)
            sy += np.bincount(ids, weights=yy, minlength=n + 1)
            sx += np.bincount(ids, weights=xx, minlength=n + 1)
            np.minimum.at(y0s, ids, yy)
            np.minimum.at(x0s, ids, xx)
            np.maximum.at(y1s, ids, yy + 1)
            np.maximum.at(x1s, ids, xx + 1)
    present = count > 0
    owner = np.full((n + 1, 2), -1, np.int64)
    owner[present, 0] = (sy[present] / count[present] // step).astype(np.int64)
    owner[present, 1] = (sx[present] / count[present] // step).astype(np.int64)
    return owner, np.stack([y0s, y1s, x0s, x1s], 1)


def _write_objects(slide, res, formats, exports) -> list[str]:
    """GeoJSON and CSV from the stitched labels, block by block: each object exactly once and whole.

    An object belongs to the block holding its centroid (over the whole labels, not a window's
    piece of it), and is measured in a window that covers it all, however far it reaches past
    the block.
    """
    from segloop.core.formats.io.geojson import (
        label_features,
        object_table,
        write_geojson,
        write_object_csv,
    )

    plan, labels = res.plan, res.labels
    ry, rx, h, w = plan.region
    d = plan.downsample
    level = slide.levels[plan.level]
    owner, bbox = _object_owners(labels, int(res.n_objects), plan.block)
    by_block: dict[tuple[int, int], np.ndarray] = {}
    present = np.flatnonzero(owner[:, 0] >= 0)
    for key in np.unique(owner[present], axis=0):
        ids = present[(owner[present] == key).all(axis=1)]
        by_block[(int(key[0]), int(key[1]))] = ids

    def windows():
        for _key, ids in sorted(by_block.items()):
            y0, x0 = int(bbox[ids, 0].min()), int(bbox[ids, 2].min())
            y1, x1 = int(bbox[ids, 1].max()), int(bbox[ids, 3].max())
            lab = np.asarray(labels[y0:y1, x0:x1])
            img = np.asarray(level[ry + y0:ry + y1, rx + x0:rx + x1])
            if img.ndim == 3 and img.shape[-1] == 4:
                img = img[..., :3]
            mine = set(ids.tolist())
            yield lab, img, (ry + y0, rx + x0), (lambda region, _mine=mine: region.label in _mine)

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

