"""Whole-slide segmentation: block by block, on tissue only, stitched, into OME-Zarr; resumable.

A slide (or a region of one) is cut into square **blocks** aligned to the output's zarr chunks.
Each block is read with a **halo** of context, segmented by :meth:`Model.predict` (which rescales
to the model's pixel size, tiles and post-processes as for any image), and its **core** is
written to a working label array with ids that are unique per block.  The labels the block
predicted in its halo, which lies in its neighbours' cores, are kept as small strips.  When every
block is done, objects cut by a block border are **stitched**: two pieces are one object when
one block's prediction of the halo overlaps the neighbour's own piece by at least half of the
smaller one (both must touch the shared border), joined transitively (union-find), the pattern of
cellpose's ``distributed_segmentation``.  A last pass writes compact ids (1..N) into the
NGFF labels array and builds the pyramid.

Each block records that it finished only after its pixels and strips are written, so a run that
was cancelled, killed or ran out of disk resumes where it stopped (same plan: same model, level,
region, block and halo) and a half-written block is never read as finished.  Blocks whose
low-resolution **tissue mask** is empty are skipped at no cost.

The block function (:func:`run_block`) takes only plain, picklable arguments and opens the slide
and the model itself, so the same code runs in this process or on ``dask.distributed`` workers
(:mod:`segloop.core.inference.distributed`).

Layout of ``OUT.zarr`` (OME-NGFF 0.4, zarr format 2, read by ome-zarr-py / napari-ome-zarr /
QuPath's OME-Zarr reader)::

    OUT.zarr/0, 1, ...               the image (c, y, x) at the run level, then halved (optional)
    OUT.zarr/labels/nuclei/0, 1 ...  uint32 instance ids, same grid, nearest-neighbour pyramid
    OUT.zarr/.segloop-run/           plan.json, done/ markers, strips/, raw (working ids); strips
                                     and raw are removed when finished, summary.json is added
"""

from __future__ import annotations

import json
import math
import os
import shutil
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segloop.core.inference.postprocess import UnionFind
from segloop.core.inference.slide_output import (
    LABEL_NAME,
    RUN_DIR,
    in_threads,
    ngff_metadata,
    pyramid,
    relabel,
)
from segloop.core.inference.slide_output import check_cancel as _check
from segloop.core.inference.slide_output import compressor as _compressor
from segloop.errors import Cancelled, InvalidImageError, WriteError

__all__ = ["Block", "SlidePlan", "SlideResult", "block_grid", "blocks_on_tissue", "plan_slide", "read_window",
           "run_block", "segment_block", "segment_slide", "stitch_pairs", "tissue_mask"]

#: Two pieces are one object when they overlap by this fraction of the smaller one in the strip.
MERGE_OVERLAP = 0.5
#: Default halo in the model's pixels: larger than a nucleus, and past the network's border effects.
HALO_MODEL_PX = 96


# --------------------------------------------------------------------------- plan

@dataclass(frozen=True)
class SlidePlan:
    """Everything that decides a slide run's output: a resumed run must have the same plan.

    Coordinates are in pixels of the run ``level`` (``downsample`` times level 0).
    """

    source: str
    level: int
    downsample: float
    shape: tuple[int, int]                      # (H, W) of the run level
    region: tuple[int, int, int, int]           # (y0, x0, h, w) in run-level pixels
    pixel_size: tuple[float, float] | None      # µm per pixel at the run level
    block: int
    halo: int
    chunk: int
    rgb: bool
    model: dict[str, Any]                       # name, version, sha256, path
    predict: dict[str, Any] = field(default_factory=dict)   # tile, overlap, normalization, device, engine
    tissue: bool = True
    include_image: bool = True
    schema_version: int = 1

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SlidePlan:
        d = dict(d)
        for k in ("shape", "region"):
            d[k] = tuple(d[k])
        if d.get("pixel_size") is not None:
            d["pixel_size"] = tuple(d["pixel_size"])
        return cls(**d)


@dataclass(frozen=True)
class Block:
    """One block: its index in the grid, its core and the window read around it (run-level px)."""

    index: tuple[int, int]
    core: tuple[int, int, int, int]             # y0, y1, x0, x1
    window: tuple[int, int, int, int]           # y0, y1, x0, x1 (core plus halo, clipped to the region)

    @property
    def key(self) -> str:
        return f"{self.index[0]}_{self.index[1]}"


def block_grid(plan: SlidePlan) -> list[Block]:
    """The blocks of ``plan``'s region, row by row."""
    y0, x0, h, w = plan.region
    out = []
    for by, cy in enumerate(range(y0, y0 + h, plan.block)):
        for bx, cx in enumerate(range(x0, x0 + w, plan.block)):
            cy1, cx1 = min(cy + plan.block, y0 + h), min(cx + plan.block, x0 + w)
            win = (max(cy - plan.halo, y0), min(cy1 + plan.halo, y0 + h),
                   max(cx - plan.halo, x0), min(cx1 + plan.halo, x0 + w))
            out.append(Block((by, bx), (cy, cy1, cx, cx1), win))
    return out


def plan_slide(slide, model, *, level: int | None = None, region: tuple[int, int, int, int] | None = None,
               block: int = 4096, halo: int | None = None, chunk: int = 512, tissue: bool = True,
               include_image: bool = True, predict: dict | None = None,
               pixel_size: tuple[float, float] | None = None) -> SlidePlan:
    """The plan for segmenting ``slide`` (a :class:`~segloop.core.formats.io.wsi.Slide`) with ``model``.

    Parameters
    ----------
    level : int, optional
        Pyramid level to run on.  Default: the level closest to the model's pixel size without
        being coarser (level 0 when either pixel size is unknown); the model rescales from there.
    region : (x, y, w, h), optional
        Level-0 pixels, as QuPath and OpenSlide give them.  Default: the whole slide.
    block, chunk : int
        Block and zarr chunk sides in run-level pixels; ``block`` is rounded up to a multiple of
        ``chunk`` so no two blocks write one chunk.
    pixel_size : (float, float), optional
        Level-0 µm per pixel ``(y, x)`` when the slide does not say (or says wrong); default the
        slide's MPP.
    halo : int, optional
        Context read around each block (run-level px); default :data:`HALO_MODEL_PX` pixels of
        the model's resolution, at least 64.  Objects larger than the halo may be cut at block
        borders; the halo's pixels are read twice (block 4096, halo 96: 9 % more pixels).

    Raises
    ------
    InvalidImageError
        The region lies outside the slide or is empty; the level does not exist; block or chunk
        is not positive.
    """
    spec = model.spec
    n_levels = len(slide.levels)
    mpp = tuple(float(v) for v in pixel_size) if pixel_size is not None else slide.mpp
    if level is None:
        level = 0
        if spec.pixel_size and mpp:
            want = float(min(spec.pixel_size))
            level = max((i for i, d in enumerate(slide.downsamples) if min(mpp) * d <= want * 1.001), default=0)
    if not 0 <= int(level) < n_levels:
        raise InvalidImageError(f"{slide.path}: level {level} does not exist; the slide has levels 0..{n_levels - 1}")
    level = int(level)
    down = float(slide.downsamples[level])
    arr = slide.levels[level]
    shape = (int(arr.shape[0]), int(arr.shape[1]))
    if block <= 0 or chunk <= 0:
        raise InvalidImageError(f"block ({block}) and chunk ({chunk}) must be positive")
    block = int(math.ceil(block / chunk) * chunk)
    if region is None:
        reg = (0, 0, shape[0], shape[1])
    else:
        x, y, w, h = (int(v) for v in region)
        full = (int(slide.levels[0].shape[1]), int(slide.levels[0].shape[0]))
        if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > full[0] or y + h > full[1]:
            raise InvalidImageError(f"{slide.path}: region x={x}, y={y}, w={w}, h={h} is not inside the slide "
                                    f"({full[0]} x {full[1]} px at level 0); give --region x,y,w,h inside it")
        ry0, rx0 = int(y / down), int(x / down)
        reg = (ry0, rx0, max(1, min(int(math.ceil(h / down)), shape[0] - ry0)),
               max(1, min(int(math.ceil(w / down)), shape[1] - rx0)))
    px = None if mpp is None else (mpp[0] * down, mpp[1] * down)
    if halo is None:                            # 96 model pixels: a nucleus and the network's edge effects
        scale = (float(min(spec.pixel_size)) / float(min(px))) if (spec.pixel_size and px) else 1.0
        halo = max(64, int(math.ceil(HALO_MODEL_PX * scale)))
    rgb = arr.ndim == 3 and arr.shape[-1] in (3, 4)
    info = {"name": spec.name, "version": spec.version, "sha256": getattr(spec, "sha256", None),
            "path": str(getattr(model.package, "path", "") or "")}
    return SlidePlan(source=str(slide.path), level=level, downsample=down, shape=shape, region=reg,
                     pixel_size=None if px is None else (float(px[0]), float(px[1])), block=block,
                     halo=int(halo), chunk=int(chunk), rgb=bool(rgb), model=info, predict=dict(predict or {}),
                     tissue=bool(tissue), include_image=bool(include_image))


# --------------------------------------------------------------------------- tissue

def tissue_mask(image, *, rgb: bool | None = None, min_area: int = 64) -> np.ndarray:
    """Tissue (or, for fluorescence, signal) on a low-resolution image.

    Parameters
    ----------
    image : (H, W[, 3 or 4]) array-like
        A small pyramid level (a few thousand pixels a side at most; it is read whole).
    rgb : bool, optional
        Default: the last axis has 3 or 4 entries.
    min_area : int
        Connected pieces smaller than this (pixels of ``image``) are dropped.

    Returns
    -------
    (H, W) bool ndarray
        RGB: saturation above its Otsu threshold (at least 0.05), not pen-black; grey: intensity
        above Otsu.  Holes filled, closed by 2 px.  All False for a blank image.
    """
    from scipy import ndimage as ndi
    from skimage.filters import threshold_otsu

    img = np.asarray(image)
    if rgb is None:
        rgb = img.ndim == 3 and img.shape[-1] in (3, 4)
    if rgb:
        c = img[..., :3].astype(np.float32)
        if img.dtype == np.uint8:
            c /= 255.0
        hi, lo = c.max(axis=-1), c.min(axis=-1)
        sat = np.where(hi > 0, (hi - lo) / np.maximum(hi, 1e-6), 0.0)
        signal, floor = sat, 0.05
        dark = hi < 0.08                               # pen marks, slide edges
    else:
        signal = img.astype(np.float32)
        floor, dark = None, None
    if not np.isfinite(signal).all():
        signal = np.nan_to_num(signal)
    if signal.max() <= signal.min():
        return np.zeros(signal.shape, bool)
    t = threshold_otsu(signal)
    if floor is not None:
        t = max(t, floor)
    mask = signal > t
    if dark is not None:
        mask &= ~dark
    mask = ndi.binary_closing(mask, iterations=2)
    mask = ndi.binary_fill_holes(mask)
    lab, n = ndi.label(mask)
    if n == 0:
        return mask
    big = np.bincount(lab.ravel()) >= int(min_area)
    big[0] = False
    return big[lab]


OVERVIEW_PIXELS = 4 * 1024 * 1024


def overview(slide) -> tuple[np.ndarray, float]:
    """A small whole-slide image (at most about 4 Mpx) and its downsample from level 0.

    The coarsest level with at least 512 px on its shorter side; a slide without such a
    pyramid level is read strided (every chunk decoded once, one at a time).
    """
    lvl = 0
    for i, lev in enumerate(slide.levels):
        if min(lev.shape[:2]) >= 512:
            lvl = i
    lev = slide.levels[lvl]
    n = int(lev.shape[0]) * int(lev.shape[1])
    s = max(1, int(math.ceil(math.sqrt(n / OVERVIEW_PIXELS))))
    img = np.asarray(lev[::s, ::s])
    if img.ndim == 3 and img.shape[-1] == 4:
        img = img[..., :3]
    return img, float(slide.downsamples[lvl]) * s


def blocks_on_tissue(plan: SlidePlan, slide, blocks: list[Block]) -> tuple[set[str], np.ndarray, float]:
    """Keys of the blocks whose core touches tissue; the mask and its downsample from the run level.

    The core, not the window: a block whose own pixels are all glass has nothing to write (the
    tissue mask is closed and filled, so nuclei at the tissue's edge lie inside it).
    """
    low, down = overview(slide)
    mask = tissue_mask(low, rgb=plan.rgb)
    f = down / plan.downsample                                    # run-level px per mask px
    keep = set()
    for b in blocks:
        y0, y1, x0, x1 = b.core
        m = mask[int(y0 / f):int(math.ceil(y1 / f)) + 1, int(x0 / f):int(math.ceil(x1 / f)) + 1]
        if m.any():
            keep.add(b.key)
    return keep, mask, f


# --------------------------------------------------------------------------- store

def _run_dir(out: Path) -> Path:
    return Path(out) / RUN_DIR


def _atomic_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def _open_or_create(out: Path, plan: SlidePlan, *, overwrite: bool):
    """Create the OME-Zarr store for ``plan`` or reopen an unfinished one with the same plan."""
    import zarr

    out = Path(out)
    run = _run_dir(out)
    if out.exists():
        old = run / "plan.json"
        if overwrite:
            shutil.rmtree(out)
        elif not old.is_file():
            raise WriteError(f"{out} exists and is not an unfinished segloop slide run; choose another --out "
                             "or pass --overwrite")
        elif (run / "summary.json").is_file():
            raise WriteError(f"{out} is a finished run; pass --overwrite to run again or choose another --out")
        elif json.loads(old.read_text()) != plan.to_dict():
            raise WriteError(f"{out} holds an unfinished run with other settings (model, level, region, block or "
                             "halo); pass --overwrite to start again, or rerun with the same settings to resume")
        else:
            return zarr.open_group(str(out), mode="r+", zarr_format=2)
    try:
        root = zarr.open_group(str(out), mode="w", zarr_format=2)
        (run / "done").mkdir(parents=True)
        (run / "strips").mkdir()
        h, w = plan.region[2], plan.region[3]
        c = plan.chunk
        comp = _compressor()
        root.create_array(f"{RUN_DIR}/raw", shape=(h, w), chunks=(c, c), dtype="uint32", fill_value=0,
                          compressors=comp)
        root.create_array(f"labels/{LABEL_NAME}/0", shape=(h, w), chunks=(c, c), dtype="uint32", fill_value=0,
                          compressors=comp)
        if plan.include_image:
            n_ch = 3 if plan.rgb else 1
            root.create_array("0", shape=(n_ch, h, w), chunks=(n_ch, c, c), dtype="uint8" if plan.rgb else "uint16",
                              fill_value=0, compressors=comp)
        _atomic_json(run / "plan.json", plan.to_dict())
    except OSError as e:
        raise WriteError(f"cannot create {out}: {e.strerror or e}; choose a writable --out with free space") from None
    return root


# --------------------------------------------------------------------------- blocks

_MODELS: dict[tuple, Any] = {}
_SLIDES: dict[str, Any] = {}
_LOCK = threading.Lock()


def _model_for(plan: SlidePlan):
    from segloop.core.inference.model import load_model

    ref = plan.model.get("path") or plan.model["name"]
    key = (ref, plan.predict.get("device", "auto"), plan.predict.get("engine", "torch"))
    with _LOCK:
        if key not in _MODELS:
            _MODELS[key] = load_model(ref, device=key[1], engine=key[2])
        return _MODELS[key]


def _slide_for(path: str):
    from segloop.core.formats.io.wsi import open_slide

    with _LOCK:
        if path not in _SLIDES:
            _SLIDES[path] = open_slide(path)
        return _SLIDES[path]


def _normalizer(plan: SlidePlan, model, slide):
    """The normalizer of the whole slide, fitted on a small level (every block uses the same)."""
    key = ("norm", plan.source, plan.model.get("sha256"), json.dumps(plan.predict.get("normalization")))
    with _LOCK:
        cached = _MODELS.get(key)
    if cached is not None:
        return cached
    low, _ = overview(slide)
    norm = model.normalizer_for(low, normalization=plan.predict.get("normalization"))
    with _LOCK:
        _MODELS[key] = norm
    return norm


def read_window(slide, plan: SlidePlan, blk: Block) -> np.ndarray:
    """A block's window (core and halo) of the run level, RGB without alpha."""
    y0, y1, x0, x1 = blk.window
    window = _read(slide.levels[plan.level][y0:y1, x0:x1])
    return window[..., :3] if plan.rgb and window.shape[-1] == 4 else window


def _read(region) -> np.ndarray:
    """A region of a slide level, decoded here with threads: also on a dask worker, whose default
    scheduler would send the slide's lazy arrays back to the cluster, which cannot ship the open
    file (per call, not through dask's global config, so threads reading at once do not race)."""
    return region.compute(scheduler="threads") if hasattr(region, "compute") else np.asarray(region)


def run_block(out: str, plan_dict: dict, key: str, *, slide=None, model=None, cancel=None,
              window: np.ndarray | None = None) -> dict:
    """Segment one block of a planned run and record it finished; return its record.

    Picklable arguments only (``out`` and ``plan_dict`` are a path and a dict), so dask workers can
    run it: they open the slide and load the model once per process.  ``slide`` and ``model`` may
    be given by an in-process caller, and ``window`` (:func:`read_window`) when it was read ahead.
    Idempotent: a block already recorded returns its record.
    """
    plan = SlidePlan.from_dict(plan_dict)
    done = _run_dir(Path(out)) / "done" / f"{key}.json"
    if done.is_file():
        return json.loads(done.read_text())
    return segment_block(out, plan, key, slide=slide, model=model, cancel=cancel, window=window)()


def segment_block(out, plan: SlidePlan, key: str, *, slide, model, cancel, window) -> Callable[[], dict]:
    """Run the model on one block; return the call that writes it and records it finished.

    Split in two so that an in-process run writes a block (compression, strips, the done
    marker: about a second of a 4096 px block) while the next one is segmented.
    """
    import dask

    blk = next(b for b in block_grid(plan) if b.key == key)
    slide = slide if slide is not None else _slide_for(plan.source)
    model = model if model is not None else _model_for(plan)
    window = read_window(slide, plan, blk) if window is None else window
    opts = {k: v for k, v in plan.predict.items() if k in ("tile", "overlap", "batch_size")}
    with dask.config.set(scheduler="threads"):          # the normalizer's overview, read as the window
        # the slide-wide normalizer carries the normalization (override) it was fitted with
        res = model.predict(window, normalizer=_normalizer(plan, model, slide), pixel_size=plan.pixel_size,
                            cancel=cancel, **opts)
    labels = np.asarray(res.labels).astype(np.uint32, copy=False)
    rec = {"key": key, "max_id": 0, "n_objects": int(res.n_objects), "skipped": False,
           "tiles": int(res.tiles_predicted), "tiles_skipped": int(res.tiles_skipped)}
    return lambda: _write_block(Path(out), plan, blk, labels, window, rec)


def _write_block(out: Path, plan: SlidePlan, blk: Block, labels: np.ndarray, window: np.ndarray, rec: dict) -> dict:
    """Write a segmented block's core (labels, image), its halo strips and ids, then its done marker."""
    import zarr

    run, key = _run_dir(out), blk.key
    y0, x0 = blk.window[0], blk.window[2]
    cy0, cy1, cx0, cx1 = blk.core
    ry, rx = plan.region[0], plan.region[1]
    core = labels[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]
    strips = {
        "right": labels[cy0 - y0:cy1 - y0, cx1 - x0:],
        "bottom": labels[cy1 - y0:, cx0 - x0:cx1 - x0],
        "left": labels[cy0 - y0:cy1 - y0, :cx0 - x0],
        "top": labels[:cy0 - y0, cx0 - x0:cx1 - x0],
    }
    try:
        root = zarr.open_group(str(out), mode="r+", zarr_format=2)
        root[f"{RUN_DIR}/raw"][cy0 - ry:cy1 - ry, cx0 - rx:cx1 - rx] = core
        if plan.include_image:
            img = window[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]
            img = np.moveaxis(img, -1, 0) if img.ndim == 3 else img[None]
            root["0"][:, cy0 - ry:cy1 - ry, cx0 - rx:cx1 - rx] = img
        tmp = run / "strips" / f"{key}.tmp.npz"
        top = int(labels.max()) if labels.size else 0
        present = np.zeros(top + 1, bool)               # the ids with pixels in the core (4x faster than unique)
        present[core] = True
        present[0] = False
        np.savez_compressed(tmp, ids=np.flatnonzero(present).astype(np.uint32),
                            **{k: v for k, v in strips.items() if v.size})
        os.replace(tmp, run / "strips" / f"{key}.npz")
        rec = {**rec, "max_id": top}
        _atomic_json(run / "done" / f"{key}.json", rec)             # last: a half-written block is redone
    except OSError as e:
        raise WriteError(f"cannot write block {key} of {out}: {e.strerror or e}; free some space or choose "
                         "another --out (finished blocks are kept; rerun to resume)") from None
    return rec


def _any_block_segmented(out: Path) -> bool:
    """True when some block of the run in ``out`` was segmented and recorded (not only skipped)."""
    for p in (_run_dir(out) / "done").glob("*.json"):
        try:
            if not json.loads(p.read_text()).get("skipped"):
                return True
        except (OSError, ValueError):
            continue
    return False


def _skip_block(out: Path, plan: SlidePlan, block: Block, slide) -> dict:
    """Record a block with no tissue as finished: no labels; its image is still copied (glass, not black)."""
    import zarr

    if plan.include_image:
        y0, y1, x0, x1 = block.core
        ry, rx = plan.region[0], plan.region[1]
        img = _read(slide.levels[plan.level][y0:y1, x0:x1])
        img = img[..., :3] if plan.rgb else img
        img = np.moveaxis(img, -1, 0) if img.ndim == 3 else img[None]
        try:
            zarr.open_group(str(out), mode="r+", zarr_format=2)["0"][:, y0 - ry:y1 - ry, x0 - rx:x1 - rx] = img
        except OSError as e:
            raise WriteError(f"cannot write block {block.key} of {out}: {e.strerror or e}; free some space or "
                             "choose another --out (finished blocks are kept; rerun to resume)") from None
    rec = {"key": block.key, "max_id": 0, "n_objects": 0, "skipped": True, "tiles": 0, "tiles_skipped": 0}
    _atomic_json(_run_dir(out) / "done" / f"{block.key}.json", rec)
    return rec


# --------------------------------------------------------------------------- stitching

def stitch_pairs(strip: np.ndarray, other: np.ndarray, strip_edge: np.ndarray, other_edge: np.ndarray,
                 *, min_overlap: float = MERGE_OVERLAP) -> list[tuple[int, int]]:
    """Pairs (id in ``strip``, id in ``other``) that are one object seen from two blocks.

    ``strip`` is what one block predicted in its halo; ``other`` is the neighbour's own labels on
    the same pixels.  A pair counts when both ids touch the shared border (``strip_edge``: the
    ids of the first block on its last core line; ``other_edge``: the neighbour's on its first)
    and their overlap is at least ``min_overlap`` of the smaller of the two pieces in the strip.
    """
    a, b = strip.ravel().astype(np.uint64), other.ravel().astype(np.uint64)
    both = (a > 0) & (b > 0)
    if not both.any():
        return []
    ia, na = np.unique(a[a > 0], return_counts=True)
    ib, nb = np.unique(b[b > 0], return_counts=True)
    size_a, size_b = dict(zip(ia.tolist(), na.tolist())), dict(zip(ib.tolist(), nb.tolist()))
    pair, count = np.unique((a[both] << np.uint64(32)) | b[both], return_counts=True)
    ea, eb = set(np.unique(strip_edge).tolist()), set(np.unique(other_edge).tolist())
    out = []
    for p, n in zip(pair.tolist(), count.tolist()):
        ka, kb = p >> 32, p & 0xFFFFFFFF
        if ka in ea and kb in eb and n >= min_overlap * min(size_a[ka], size_b[kb]):
            out.append((int(ka), int(kb)))
    return out


def _lookup_table(out: Path, plan: SlidePlan, blocks: list[Block], records: dict[str, dict]):
    """Offsets per block and the id lookup table raw-compact -> final (stitched, 1..N)."""
    import zarr

    offsets, total = {}, 0
    for b in blocks:
        offsets[b.key] = total
        total += records[b.key]["max_id"]
    uf = UnionFind()
    uf.grow(total)
    raw = zarr.open_group(str(out), mode="r", zarr_format=2)[f"{RUN_DIR}/raw"]
    ry, rx = plan.region[0], plan.region[1]
    by_index = {b.index: b for b in blocks}
    n_merged = 0
    for b in blocks:
        if records[b.key]["skipped"]:
            continue
        strips = np.load(_run_dir(out) / "strips" / f"{b.key}.npz", allow_pickle=False)
        cy0, cy1, cx0, cx1 = b.core
        for side, (dy, dx) in (("right", (0, 1)), ("bottom", (1, 0))):
            nb = by_index.get((b.index[0] + dy, b.index[1] + dx))
            if nb is None or side not in strips.files or records[nb.key]["skipped"]:
                continue
            mine = strips[side]
            n0, n1 = nb.core[0], nb.core[2]
            if side == "right":
                theirs = raw[cy0 - ry:cy1 - ry, n1 - rx:n1 - rx + mine.shape[1]]
                my_edge = raw[cy0 - ry:cy1 - ry, cx1 - 1 - rx]
                their_edge = theirs[:, 0]
                back = np.load(_run_dir(out) / "strips" / f"{nb.key}.npz", allow_pickle=False)
                their_strip = back["left"] if "left" in back.files else None
                mine_core = raw[cy0 - ry:cy1 - ry, cx1 - rx - (their_strip.shape[1] if their_strip is not None
                                                                else 0):cx1 - rx]
            else:
                theirs = raw[n0 - ry:n0 - ry + mine.shape[0], cx0 - rx:cx1 - rx]
                my_edge = raw[cy1 - 1 - ry, cx0 - rx:cx1 - rx]
                their_edge = theirs[0]
                back = np.load(_run_dir(out) / "strips" / f"{nb.key}.npz", allow_pickle=False)
                their_strip = back["top"] if "top" in back.files else None
                mine_core = raw[cy1 - ry - (their_strip.shape[0] if their_strip is not None else 0):cy1 - ry,
                                cx0 - rx:cx1 - rx]
            # the strips hold window-local ids, which are the raw ids (raw keeps them)
            mine = mine[:theirs.shape[0], :theirs.shape[1]]
            pairs = stitch_pairs(mine, theirs, my_edge, their_edge)
            if their_strip is not None and their_strip.size:
                their_strip = their_strip[:mine_core.shape[0], -mine_core.shape[1]:] if side == "right" \
                    else their_strip[-mine_core.shape[0]:, :mine_core.shape[1]]
                pairs += [(a, b_) for b_, a in stitch_pairs(their_strip, mine_core, their_edge, my_edge)]
            for a, c in pairs:
                uf.union(offsets[b.key] + a, offsets[nb.key] + c)
                n_merged += 1
    roots = uf.roots()
    present = [np.load(_run_dir(out) / "strips" / f"{b.key}.npz", allow_pickle=False)["ids"].astype(np.int64)
               + offsets[b.key] for b in blocks if not records[b.key]["skipped"]]
    present = np.concatenate(present) if present else np.zeros(0, np.int64)
    kept = np.unique(roots[present])                             # objects with pixels in some block's core
    rank = np.zeros(total + 1, np.uint32)
    rank[kept] = np.arange(1, len(kept) + 1, dtype=np.uint32)
    lut = rank[roots]
    lut[0] = 0
    return offsets, lut, int(len(kept)), n_merged


# --------------------------------------------------------------------------- the run

@dataclass
class SlideResult:
    """What :func:`segment_slide` did.  ``labels`` is the level-0 NGFF labels array (lazy zarr);
    ``tissue`` the low-resolution tissue mask blocks were chosen by (None with ``tissue=False``)."""

    path: Path
    plan: SlidePlan
    n_objects: int
    blocks: int
    blocks_run: int
    blocks_skipped: int
    blocks_resumed: int
    merged: int
    seconds: float
    labels: Any = None
    tissue: np.ndarray | None = None
    tissue_downsample: float | None = None      # run-level pixels per tissue-mask pixel
    #: Seconds per phase: ``tissue``, ``glass`` (copies of blocks off tissue), ``blocks`` (segmented
    #: here or on the cluster), ``stitch`` (ids joined across blocks), ``relabel``, ``pyramid``, ``metadata``.
    timings: dict = field(default_factory=dict)
    #: Model tiles run and skipped as background inside the blocks on tissue.
    tiles_predicted: int = 0
    tiles_skipped: int = 0


def segment_slide(slide, model, out: str | os.PathLike, *, level: int | None = None,
                  region: tuple[int, int, int, int] | None = None, block: int = 4096, halo: int | None = None,
                  chunk: int = 512, tissue: bool = True, include_image: bool = True, overwrite: bool = False,
                  predict: dict | None = None, pixel_size: tuple[float, float] | None = None, client=None,
                  progress: Callable[[int, int], None] | None = None, cancel=None) -> SlideResult:
    """Segment a slide block by block into the OME-Zarr ``out``; resume an unfinished run there.

    Parameters
    ----------
    slide : Slide
        From :func:`segloop.core.formats.io.wsi.open_slide` (its ``path`` is what workers open).
    model : Model
        A loaded instance model (workers load the same package by its path).
    out : path
        ``*.zarr`` folder: created, or an unfinished run with the same plan resumed.
    level, region, block, halo, chunk, tissue, include_image, pixel_size
        See :func:`plan_slide`.  ``tissue``: skip blocks with no tissue on a low-resolution level.
    predict : dict, optional
        ``tile``, ``overlap``, ``batch_size``, ``normalization``, ``device``, ``engine`` for
        :meth:`Model.predict` / the workers.
    client : dask.distributed.Client, optional
        Run the blocks on this cluster's workers (they must see ``slide.path`` and ``out``).
    progress : callable, optional
        ``progress(done, total)`` in blocks.
    cancel : threading.Event or callable, optional
        Raises :class:`~segloop.errors.Cancelled`; finished blocks are kept.

    Returns
    -------
    SlideResult

    Raises
    ------
    WriteError
        ``out`` exists and is not a resumable run of the same plan, cannot be written, or the
        disk filled up (finished blocks are kept).
    InvalidImageError
        A bad region or level.
    Cancelled
    """
    import time

    import zarr

    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    lap = [t0]

    def done(phase: str) -> None:
        now = time.perf_counter()
        timings[phase] = round(timings.get(phase, 0.0) + now - lap[0], 3)
        lap[0] = now

    out = Path(out)
    plan = plan_slide(slide, model, level=level, region=region, block=block, halo=halo, chunk=chunk,
                      tissue=tissue, include_image=include_image, predict=predict, pixel_size=pixel_size)
    created, records = not out.exists(), {}
    _open_or_create(out, plan, overwrite=overwrite)
    try:
        blocks = block_grid(plan)
        done_dir = _run_dir(out) / "done"
        records = {p.stem: json.loads(p.read_text()) for p in done_dir.glob("*.json")}
        resumed = len(records)
        keep, mask, mask_down = None, None, None
        if plan.tissue:
            keep, mask, mask_down = blocks_on_tissue(plan, slide, blocks)
        done("tissue")
        todo = [b for b in blocks if b.key not in records]
        glass = [b for b in todo if keep is not None and b.key not in keep]       # copied, not segmented

        def skip(b):
            records[b.key] = _skip_block(out, plan, b, slide)

        in_threads(skip, glass, cancel=cancel)
        done("glass")
        todo = [b for b in todo if b.key not in records]
        total, finished = len(blocks), len(records)
        if progress:
            progress(finished, total)
        if client is not None:
            from segloop.core.inference.distributed import run_blocks_on

            keys = [b.key for b in todo]
            for rec in run_blocks_on(client, run_block, str(out), plan.to_dict(), keys, cancel=cancel):
                records[rec["key"]] = rec
                finished += 1
                if progress:
                    progress(finished, total)
        else:
            from concurrent.futures import ThreadPoolExecutor

            # the next block's window is read (decoded), and the last one written, while this one
            # is segmented; at most one write waits, so its errors stop the run a block later
            with ThreadPoolExecutor(1, thread_name_prefix="segloop-slide-read") as reader, \
                    ThreadPoolExecutor(1, thread_name_prefix="segloop-slide-write") as writer:
                ahead = [reader.submit(read_window, slide, plan, b) for b in todo[:1]]
                writing = None

                def written() -> None:
                    nonlocal finished
                    rec = writing.result()
                    records[rec["key"]] = rec
                    finished += 1
                    if progress:
                        progress(finished, total)

                for i, b in enumerate(todo):
                    _check(cancel)
                    window = ahead.pop(0).result()
                    ahead += [reader.submit(read_window, slide, plan, nb) for nb in todo[i + 1:i + 2]]
                    write = segment_block(out, plan, b.key, slide=slide, model=model, cancel=cancel, window=window)
                    if writing is not None:
                        written()
                    writing = writer.submit(write)
                if writing is not None:
                    written()
    except Cancelled:
        raise                                           # finished blocks are kept to resume
    except BaseException:
        if created and not _any_block_segmented(out):
            shutil.rmtree(out, ignore_errors=True)      # nothing done: no half-made result left behind
        raise
    _check(cancel)
    done("blocks")
    run, run_ = _run_dir(out), sum(1 for r in records.values() if not r["skipped"])
    try:                                # the blocks' raw labels stay until the summary: a rerun redoes this
        offsets, lut, n, merged = _lookup_table(out, plan, blocks, records)
        done("stitch")
        relabel(out, plan, blocks, offsets, lut, cancel=cancel)
        done("relabel")
        n_levels = pyramid(out, plan, cancel=cancel)
        done("pyramid")
        tiles = (sum(int(r.get("tiles", 0)) for r in records.values()),
                 sum(int(r.get("tiles_skipped", 0)) for r in records.values()))
        summary = {"n_objects": n, "blocks": len(blocks), "blocks_run": run_, "blocks_skipped": len(blocks) - run_,
                   "tiles_predicted": tiles[0], "tiles_skipped": tiles[1],
                   "merged_across_blocks": merged, "plan": plan.to_dict(),
                   "model": plan.model, "level": plan.level, "downsample": plan.downsample,
                   "pixel_size": plan.pixel_size}
        ngff_metadata(out, plan, n_levels, summary)
        done("metadata")
        summary["seconds"] = dict(timings)
        _atomic_json(run / "summary.json", summary)          # finished; what follows is tidying up
    except OSError as e:
        raise WriteError(f"cannot finish {out}: {e.strerror or e}; free some space and run again: the finished "
                         "blocks are kept") from None
    shutil.rmtree(run / "strips", ignore_errors=True)
    shutil.rmtree(run / "raw", ignore_errors=True)
    labels = zarr.open_group(str(out), mode="r", zarr_format=2)[f"labels/{LABEL_NAME}/0"]
    return SlideResult(out, plan, n, len(blocks), run_, len(blocks) - run_, resumed, merged,
                       time.perf_counter() - t0, labels, mask, mask_down, timings, *tiles)

