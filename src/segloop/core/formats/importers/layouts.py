"""Other tools' dataset folders: images with masks (cellpose, StarDist, ``images/`` + ``masks/``)
and nnU-Net v2 raw datasets.

They read what :func:`segloop.core.formats.convert.convert` writes, so a folder survives the
round trip.  Without split folders (or splits recorded by segloop) each source image goes to
``val`` by a hash of its path or case id.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segloop.core._runtime import sha256_file
from segloop.core.formats.importers.common import (
    add_sample,
    already_there,
    check_cancel,
    check_fraction,
    check_limit,
    existing_samples,
    hash_split,
    note_changed_labels,
    open_folder,
    unique_ids,
)
from segloop.core.formats.importers.notice import write_data_notice
from segloop.core.formats.importers.report import ImportReport, ProgressCallback
from segloop.errors import ImageReadError, ImportLayoutError

__all__ = ["import_images_masks", "import_nnunet"]

_IMAGE_EXT = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")
_MASK_SUFFIXES = ("_masks", "_mask", "_labels", "_label", "_seg", "_cp_masks")
_SPLIT_DIRS = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
               "test": "test", "testing": "test"}


def _read_2d_or_stack(path: Path) -> np.ndarray:
    """An image or mask file as an in-memory array (channels last), errors naming the file."""
    from segloop.core.formats.io.images import read_image

    suffix = path.suffix.lower()
    if suffix == ".npy":
        raise ImportLayoutError(
            f"{path}: .npy files are not read (cellpose's _seg.npy is a pickle, which segloop never loads); save "
            "the masks as <name>_masks.tif (cellpose: --save_tif, or File > Save masks as PNG/tif)")
    if suffix not in _IMAGE_EXT:
        raise ImportLayoutError(f"{path}: unsupported file type {suffix!r}; use TIFF or PNG")
    arr, _ = read_image(path, lazy=False)
    try:
        return np.array(arr)
    except (OSError, ValueError) as e:
        raise ImageReadError(f"{path}: cannot read the pixels ({e}); the file may be truncated") from None


def _image_axes(image: np.ndarray, mask_shape: tuple[int, ...], what: str) -> tuple[np.ndarray, str]:
    """Put channels last and give the axes, checking the image against its mask's shape."""
    nd = len(mask_shape)
    spatial = "YX" if nd == 2 else "ZYX" if nd == 3 else ""
    if not spatial:
        raise ImportLayoutError(f"{what}: masks must be 2D or 3D, this one has shape {mask_shape}")
    if image.shape == mask_shape:
        return image, spatial
    if image.ndim == nd + 1 and image.shape[:-1] == mask_shape:
        return image, spatial + "C"
    if image.ndim == nd + 1 and image.shape[1:] == mask_shape and image.shape[0] <= 4:
        return np.moveaxis(image, 0, -1), spatial + "C"             # channels first (C, Y, X)
    raise ImportLayoutError(f"{what}: image shape {image.shape} does not fit mask shape {mask_shape}; an image and "
                            "its mask must cover the same pixels (channels may be first or last)")


# --------------------------------------------------------------------------- images/ + masks/ folders


@dataclass(frozen=True)
class _Pair:
    image: Path
    mask: Path
    split: str | None
    name: str           # relative key of the source image (for ids and hash splits)
    layout: str


def _strip_ext(name: str) -> str:
    low = name.lower()
    for ext in (".ome.tiff", ".ome.tif", *_IMAGE_EXT):
        if low.endswith(ext):
            return name[: -len(ext)]
    return name


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in _IMAGE_EXT and not p.name.startswith(".")


def _mask_stem(stem: str) -> str | None:
    for suf in _MASK_SUFFIXES:
        if stem.endswith(suf) and len(stem) > len(suf):
            return stem[: -len(suf)]
    return None


def _pairs_in(d: Path, root: Path, split: str | None, notices: list[str]) -> list[_Pair]:
    """Pairs in one split folder: ``images/`` + ``masks/`` (or ``labels/``) subfolders, or cellpose
    ``<name>.tif`` + ``<name>_masks.tif`` side by side."""
    sub = {p.name.lower(): p for p in d.iterdir() if p.is_dir()}
    img_dir = sub.get("images") or sub.get("image") or sub.get("imgs")
    mask_dir = sub.get("masks") or sub.get("mask") or sub.get("labels") or sub.get("label")
    npy = sorted(p for p in d.rglob("*_seg.npy"))
    if npy and not (img_dir and mask_dir):
        raise ImportLayoutError(
            f"{npy[0]}: cellpose _seg.npy files are pickles, which segloop never loads; save the masks as "
            "<name>_masks.tif (cellpose: --save_tif, or File > Save masks as PNG/tif) and import again")
    out: list[_Pair] = []
    if img_dir is not None and mask_dir is not None:
        images = {p.stem: p for p in sorted(img_dir.iterdir()) if _is_image(p)}
        masks = [p for p in sorted(mask_dir.iterdir()) if _is_image(p)]
        used = set()
        orphans = []
        for m in masks:
            stem = m.stem if m.stem in images else _mask_stem(m.stem)
            if stem is None or stem not in images:
                orphans.append(m)
                continue
            if stem in used:
                raise ImportLayoutError(f"{m}: a second mask for image {images[stem]}; keep one mask per image")
            used.add(stem)
            out.append(_Pair(images[stem], m, split, images[stem].relative_to(root).as_posix(), "images-masks"))
        if orphans:
            raise ImportLayoutError(
                f"mask(s) without an image: {', '.join(str(o) for o in orphans[:5])}"
                f"{' ...' if len(orphans) > 5 else ''}; each mask in {mask_dir.name}/ needs an image of the same "
                f"name in {img_dir.name}/ (masks may add _masks, _mask, _labels or _seg)")
        lonely = sorted(set(images) - used)
        if lonely:
            notices.append(f"{len(lonely)} image(s) in {img_dir} without a mask skipped: "
                           + ", ".join(lonely[:5]) + (" ..." if len(lonely) > 5 else ""))
        return out
    files = [p for p in sorted(d.iterdir()) if _is_image(p)]
    by_stem = {p.stem: p for p in files}
    masks = [p for p in files if _mask_stem(p.stem) is not None]
    orphans = []
    used = set()
    for m in masks:
        stem = _mask_stem(m.stem)
        img = by_stem.get(stem)
        if img is None:
            orphans.append(m)
            continue
        used.add(stem)
        out.append(_Pair(img, m, split, img.relative_to(root).as_posix(), "cellpose"))
    if orphans:
        raise ImportLayoutError(f"mask(s) without an image: {', '.join(str(o) for o in orphans[:5])}"
                                f"{' ...' if len(orphans) > 5 else ''}; cellpose layout needs <name>.tif next to "
                                "<name>_masks.tif")
    lonely = sorted(s for s, p in by_stem.items() if _mask_stem(s) is None and s not in used)
    if lonely and out:
        notices.append(f"{len(lonely)} image(s) in {d} without a mask skipped: " + ", ".join(lonely[:5])
                       + (" ..." if len(lonely) > 5 else ""))
    return out


def _find_pairs(root: Path, notices: list[str]) -> list[_Pair]:
    if not root.is_dir():
        raise ImportLayoutError(f"{root}: no such folder; give a folder with images/ + masks/ (or cellpose / "
                                "StarDist layout)")
    if (root / "dataset.json").is_file() and (root / "imagesTr").is_dir():
        raise ImportLayoutError(f"{root} is an nnU-Net raw dataset (dataset.json, imagesTr); import it with "
                                "segloop import nnunet")
    split_dirs = [(p, _SPLIT_DIRS[p.name.lower()]) for p in sorted(root.iterdir())
                  if p.is_dir() and p.name.lower() in _SPLIT_DIRS]
    pairs: list[_Pair] = []
    if split_dirs:
        for d, split in split_dirs:
            pairs += [_Pair(p.image, p.mask, split, p.name, "stardist" if p.layout == "images-masks" else p.layout)
                      for p in _pairs_in(d, root, split, notices)]
    else:
        pairs = _pairs_in(root, root, None, notices)
    if not pairs:
        raise ImportLayoutError(
            f"{root}: no images with masks found. Expected images/ + masks/ with matching names, cellpose "
            "<name>.tif + <name>_masks.tif, or StarDist train/images + train/masks (and test/...)")
    return pairs


def import_images_masks(path: str | os.PathLike, folder, *, classes: Iterable[str] = ("background", "object"),
                        task: str = "instance", modality: str = "other", val_fraction: float = 0.2,
                        limit: int | None = None, replace: bool = False, progress: ProgressCallback | None = None,
                        cancel=None) -> ImportReport:
    """Import a folder of images with masks (cellpose / StarDist / ``images/`` + ``masks/``).

    Layouts read (``split`` folders may be ``train``, ``val``, ``test``, also ``training``,
    ``validation``, ``testing``):

    * ``images/<name>.tif`` + ``masks/<name>.tif`` (masks may add ``_masks``, ``_mask``,
      ``_labels``, ``_label``, ``_seg``; ``labels/`` works for ``masks/``);
    * cellpose: ``<name>.tif`` + ``<name>_masks.tif`` side by side;
    * either inside split folders (StarDist: ``train/images``, ``train/masks``, ``test/...``;
      cellpose as :func:`segloop.core.formats.convert.convert` writes it: ``train/<name>_masks.tif``):
      the split comes from the folder.  Without split folders each source image goes to ``val``
      by a hash of its path (``val_fraction`` of them, at least one when there are two or more).

    TIFF, PNG, JPEG and BMP are read; cellpose's ``_seg.npy`` is refused (it is a pickle).  An
    image whose mask has another shape, or a mask without an image, is an error that names the
    file; images without a mask are skipped (and listed in the report).

    Parameters
    ----------
    path : path-like
        The folder.
    folder : path-like or TrainingFolder
        The training folder (created if missing).
    classes : sequence of str
        Class names, index 0 = background (instance: ``("background", "<object name>")``).
    task : {"instance", "semantic"}
        Masks hold object ids (cellpose, StarDist) or class ids.
    modality : str
        For a new training folder.
    val_fraction, limit, replace, progress, cancel
        As :func:`import_source`.  ``limit`` counts images in sorted order.

    Returns
    -------
    ImportReport

    Raises
    ------
    ImportLayoutError
        No pairs found, a mask without image, a shape mismatch, a ``_seg.npy``.
    ImageReadError
        A truncated or unreadable file (named).
    """
    root = Path(path)
    val_fraction = check_fraction(val_fraction)
    limit = check_limit(limit)
    notices: list[str] = []
    pairs = _find_pairs(root, notices)
    if limit is not None and limit < len(pairs):
        notices.append(f"--limit {limit}: the first {limit} of {len(pairs)} images (sorted by path)")
        pairs = pairs[:limit]
    tf = open_folder(folder, tuple(classes), task, modality)
    report = ImportReport("images-masks", tf.path, classes=tuple(tf.info.classes), task=tf.info.task,
                          source=f"folder {root.resolve()}", notices=notices)
    auto = hash_split([p.name for p in pairs if p.split is None], val_fraction)
    if auto:
        notices.append(f"no split folders: {sum(v == 'val' for v in auto.values())} of {len(auto)} image(s) go "
                       f"to val (by a hash of their path, val_fraction {val_fraction})")
    ids = unique_ids([_strip_ext(p.image.name) for p in pairs], [p.name for p in pairs])
    existing = existing_samples(tf)
    for i, (pair, sid) in enumerate(zip(pairs, ids)):
        check_cancel(cancel, report)
        sha = sha256_file(pair.image)
        if already_there(existing, sid, sha, None, replace):
            report.skipped.append(sid)
            report.splits[sid] = existing[sid].split
            note_changed_labels(report, existing[sid], "mask_sha256", pair.mask, sid)
        else:
            mask = _read_2d_or_stack(pair.mask)
            if mask.ndim == 3 and mask.shape[-1] in (3, 4):
                raise ImportLayoutError(f"{pair.mask}: an RGB mask (shape {mask.shape}); masks hold one id per "
                                        "pixel - save it as a single-channel integer image")
            image, axes = _image_axes(_read_2d_or_stack(pair.image), mask.shape,
                                      f"{pair.image} / {pair.mask.name}")
            extra = {"importer": "images-masks", "layout": pair.layout, "image_file": pair.name,
                     "mask_file": pair.mask.relative_to(root).as_posix(), "mask_sha256": sha256_file(pair.mask),
                     "licence": None}
            add_sample(tf, report, image, mask, axes=axes, sid=sid, split=pair.split or auto[pair.name],
                 source=str(pair.image.resolve()), source_sha256=sha, extra=extra, replace=replace,
                 what=f"{pair.image} / {pair.mask.name}")
        if progress is not None:
            progress(i + 1, len(pairs))
    write_data_notice(tf)
    return report


# --------------------------------------------------------------------------- nnU-Net v2 raw


def _nnunet_root(path: Path) -> Path:
    if (path / "dataset.json").is_file():
        return path
    if not path.is_dir():
        raise ImportLayoutError(f"{path}: no such folder; give an nnU-Net v2 raw dataset folder (with dataset.json)")
    subs = sorted(p.parent for p in path.glob("Dataset*/dataset.json"))
    if len(subs) == 1:
        return subs[0]
    if len(subs) > 1:
        raise ImportLayoutError(f"{path} holds several nnU-Net datasets ({', '.join(p.name for p in subs)}); give "
                                "one of them")
    raise ImportLayoutError(f"{path}: no dataset.json; give an nnU-Net v2 raw dataset folder (Dataset<ID>_<name> "
                            "with dataset.json, imagesTr/, labelsTr/)")


def _nnunet_classes(ds: dict, where: Path) -> tuple[tuple[str, ...], int | None]:
    labels = ds.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise ImportLayoutError(f"{where}: 'labels' must map class names to values, e.g. "
                                '{"background": 0, "liver": 1}')
    ignore = labels.get("ignore")
    named = {k: v for k, v in labels.items() if k != "ignore"}
    if any(not isinstance(v, int) or isinstance(v, bool) for v in named.values()) or \
            (ignore is not None and (not isinstance(ignore, int) or isinstance(ignore, bool))):
        raise ImportLayoutError(f"{where}: region-based labels (lists of values) are not supported; segloop reads "
                                "one integer value per class")
    values = sorted(named.values())
    if values != list(range(len(values))):
        raise ImportLayoutError(f"{where}: label values {values} must be 0, 1, 2 ... without gaps (0 = background)")
    if len(values) < 2:
        raise ImportLayoutError(f"{where}: at least two classes (background and one more) are needed")
    if ignore is not None and ignore != len(values):
        raise ImportLayoutError(f"{where}: the 'ignore' label must be the highest value ({len(values)}), got "
                                f"{ignore}")
    inv = {v: k for k, v in named.items()}
    return tuple(inv[i] for i in range(len(values))), ignore


def _read_nnunet_file(path: Path, kind: str) -> tuple[np.ndarray, tuple[float, ...] | None, Any]:
    """``(array, spacing, geometry)``: NIfTI via segloop's volume reader (LPS display order,
    spacing ``(dz, dy, dx)``), TIFF 3D (Tiff3DIO: spacing from ``<case>.json``) or 2D images."""
    name = path.name.lower()
    if not path.is_file():
        raise ImportLayoutError(f"{path}: missing")
    if name.endswith((".nii", ".nii.gz")):
        from segloop.core.formats.io.volume import read_volume

        vol, info = read_volume(path, lazy=False)
        return np.array(vol), tuple(float(s) for s in info.spacing), np.asarray(info.affine)
    if name.endswith((".mha", ".nrrd", ".nhdr", ".gipl")):
        raise ImportLayoutError(f"{path}: {path.suffix} is not read by segloop; convert the dataset to .nii.gz "
                                "(e.g. SimpleITK.WriteImage) and import again")
    if kind == "tiff3d":
        arr = _read_2d_or_stack(path)
        return arr, None, None
    return _read_2d_or_stack(path), None, None


def _tiff3d_spacing(json_path: Path) -> tuple[float, ...] | None:
    if not json_path.is_file():
        return None
    try:
        sp = json.loads(json_path.read_text())["spacing"]
        out = tuple(float(s) for s in sp)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ImportLayoutError(f"{json_path}: cannot read the spacing ({type(e).__name__}: {e}); it must be "
                                '{"spacing": [dz, dy, dx]}') from None
    if len(out) != 3 or not all(np.isfinite(s) and s > 0 for s in out):
        raise ImportLayoutError(f"{json_path}: spacing {list(out)} must be 3 positive numbers")
    return out


def import_nnunet(path: str | os.PathLike, folder, *, modality: str | None = None, val_fraction: float = 0.2,
                  limit: int | None = None, replace: bool = False, progress: ProgressCallback | None = None,
                  cancel=None) -> ImportReport:
    """Import an nnU-Net v2 raw dataset folder (semantic labels).

    Reads ``dataset.json`` (``labels`` -> classes by value, ``channel_names``, ``file_ending``,
    an optional ``ignore`` label), ``labelsTr/<case><ending>`` with ``imagesTr/<case>_0000<ending>``
    (``_0001`` ... are more channels, stacked last), and ``imagesTs`` cases that have labels in
    ``labelsTs`` (as :func:`segloop.core.formats.convert.convert` writes them) as ``test``.  NIfTI
    (``.nii.gz``, ``.nii``) is read with nibabel, reoriented to segloop's LPS ``(Z, Y, X)`` order,
    with its spacing kept; a single slice becomes a 2D sample.  3D TIFF (nnU-Net's Tiff3DIO) takes
    the spacing from ``<case>.json`` (array order, as nnU-Net reads it); PNG / 2D TIFF are 2D.

    Pixels with the ``ignore`` label become label 0 with ``reviewed = 0``; every other pixel is
    reviewed.  Training cases are split by case: the ``segloop.splits`` that segloop's exporter
    records in ``dataset.json`` if present, else ``val_fraction`` of the cases by a hash of the
    case id.

    Parameters
    ----------
    path : path-like
        The ``Dataset<ID>_<name>`` folder (or a folder holding exactly one).
    folder : path-like or TrainingFolder
    modality : str, optional
        For a new training folder; default ``"CT"`` when a channel is named CT, else ``"other"``.
    val_fraction, limit, replace, progress, cancel
        As :func:`import_source`.

    Raises
    ------
    ImportLayoutError
        Malformed ``dataset.json``, a label without its image channel(s), shapes or geometry that
        differ, an unsupported file type.
    ImageReadError
        A truncated or unreadable file (named).
    """
    root = _nnunet_root(Path(path))
    val_fraction = check_fraction(val_fraction)
    limit = check_limit(limit)
    ds_path = root / "dataset.json"
    try:
        ds = json.loads(ds_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ImportLayoutError(f"{ds_path} cannot be read ({type(e).__name__}: {e})") from None
    if not isinstance(ds, dict):
        raise ImportLayoutError(f"{ds_path}: expected a JSON object")
    classes, ignore = _nnunet_classes(ds, ds_path)
    ending = ds.get("file_ending")
    if not isinstance(ending, str) or not ending.startswith("."):
        raise ImportLayoutError(f"{ds_path}: 'file_ending' must be given, e.g. \".nii.gz\" or \".tif\"")
    channels = ds.get("channel_names") or {"0": "channel0"}
    if not isinstance(channels, dict):
        raise ImportLayoutError(f"{ds_path}: 'channel_names' must map \"0\", \"1\" ... to names")
    n_ch = len(channels)
    reader = ds.get("overwrite_image_reader_writer")
    tiff3d = reader == "Tiff3DIO"
    if modality is None:
        modality = "CT" if any(str(v).upper() == "CT" for v in channels.values()) else "other"
    notices: list[str] = []
    cases: list[tuple[str, str, Path, Path]] = []       # (case, split dir, label path, images dir)
    for lab_dir, img_dir, kind in (("labelsTr", "imagesTr", "Tr"), ("labelsTs", "imagesTs", "Ts")):
        ld = root / lab_dir
        if not ld.is_dir():
            if kind == "Tr":
                raise ImportLayoutError(f"{root}: no labelsTr/ folder; an nnU-Net raw dataset has imagesTr/ and "
                                        "labelsTr/")
            continue
        for lp in sorted(ld.iterdir()):
            if lp.name.startswith(".") or not lp.name.endswith(ending):
                continue
            cases.append((lp.name[: -len(ending)], kind, lp, root / img_dir))
    if (root / "imagesTs").is_dir() and not (root / "labelsTs").is_dir():
        n_ts = len({p.name[: -len(ending) - 5] for p in (root / "imagesTs").iterdir() if p.name.endswith(ending)})
        if n_ts:
            notices.append(f"{n_ts} case(s) in imagesTs/ have no labels (labelsTs/): not imported")
    if not cases:
        raise ImportLayoutError(f"{root}: no label files ending in {ending!r} in labelsTr/")
    labelled = {c for c, k, _, _ in cases if k == "Tr"}
    unlabelled = sorted({p.name[: -len(ending) - 5] for p in (root / "imagesTr").glob(f"*{ending}")
                         if p.name[: -len(ending) - 5] not in labelled}) if (root / "imagesTr").is_dir() else []
    if unlabelled:
        notices.append(f"{len(unlabelled)} case(s) in imagesTr/ without a label skipped: {', '.join(unlabelled[:5])}")
    recorded = ((ds.get("segloop") or {}).get("splits") or {}) if isinstance(ds.get("segloop"), dict) else {}
    if not (isinstance(recorded, dict)
            and all(isinstance(v, list) and all(isinstance(c, str) for c in v) for v in recorded.values())):
        raise ImportLayoutError(f"{root / 'dataset.json'}: segloop.splits must map a split name to a list of case "
                                f"names, e.g. {{\"val\": [\"case_001\"]}}; got {recorded!r:.80}")
    rec_split = {c: s for s, cs in recorded.items() if s in ("train", "val", "test") for c in cs}
    tr_cases = [c for c, k, _, _ in cases if k == "Tr"]
    if rec_split:
        auto = {c: rec_split.get(c, "train") for c in tr_cases}
        notices.append("splits as recorded by segloop convert in dataset.json")
    else:
        auto = hash_split(tr_cases, val_fraction)
        notices.append(f"{sum(v == 'val' for v in auto.values())} of {len(auto)} training case(s) go to val (by a "
                       f"hash of the case id, val_fraction {val_fraction})")
    if limit is not None and limit < len(cases):
        notices.append(f"--limit {limit}: the first {limit} of {len(cases)} cases")
        cases = cases[:limit]
    tf = open_folder(folder, classes, "semantic", modality)
    report = ImportReport("nnunet", tf.path, classes=tuple(tf.info.classes), task=tf.info.task,
                          source=f"folder {root.resolve()}", notices=notices)
    ids = unique_ids([c for c, _, _, _ in cases], [f"{k}/{c}" for c, k, _, _ in cases])
    existing = existing_samples(tf)
    for i, ((case, kind, lab_path, img_dir), sid) in enumerate(zip(cases, ids)):
        check_cancel(cancel, report)
        img_paths = [img_dir / f"{case}_{c:04d}{ending}" for c in range(n_ch)]
        missing = [p for p in img_paths if not p.is_file()]
        if missing and img_paths[0].is_file() and n_ch in (3, 4) and not tiff3d:
            img_paths = img_paths[:1]           # natural images: one RGB(A) file holds the channels
            missing = []
        if missing:
            raise ImportLayoutError(f"{lab_path}: label without its image: {', '.join(str(p) for p in missing)} "
                                    f"missing (dataset.json lists {n_ch} channel(s): {case}_0000{ending} ...)")
        sha = sha256_file(img_paths[0])
        if already_there(existing, sid, sha, None, replace):
            report.skipped.append(sid)
            report.splits[sid] = existing[sid].split
            note_changed_labels(report, existing[sid], "label_sha256", lab_path, sid)
            continue
        lab, lab_sp, lab_geo = _read_nnunet_file(lab_path, "tiff3d" if tiff3d else "")
        if lab.ndim == 3 and lab.shape[-1] in (3, 4) and not tiff3d and lab_sp is None:
            raise ImportLayoutError(f"{lab_path}: an RGB label image (shape {lab.shape}); labels hold one class "
                                    "value per pixel")
        chans = []
        spacing = lab_sp
        for p in img_paths:
            arr, sp, geo = _read_nnunet_file(p, "tiff3d" if tiff3d else "")
            if arr.ndim == lab.ndim + 1 and arr.shape[:-1] == lab.shape and len(img_paths) == 1:
                chans += [arr[..., c] for c in range(arr.shape[-1])]        # one RGB file (natural images)
            elif arr.shape != lab.shape:
                raise ImportLayoutError(f"{p}: shape {arr.shape} differs from its label {lab_path.name} "
                                        f"{lab.shape}; image and label must cover the same voxels")
            else:
                chans.append(arr)
            if geo is not None and lab_geo is not None and not np.allclose(geo, lab_geo, atol=1e-3):
                raise ImportLayoutError(f"{p}: its geometry (affine) differs from its label {lab_path.name}; "
                                        "resample one onto the other first")
        if lab.ndim == 3 and lab_sp is None:
            json_img = img_dir / f"{case}.json"
            json_lab = lab_path.with_name(f"{case}.json")
            sp_img, sp_lab = _tiff3d_spacing(json_img), _tiff3d_spacing(json_lab)
            if sp_img and sp_lab and not np.allclose(sp_img, sp_lab):
                raise ImportLayoutError(f"{json_img} and {json_lab} give different spacings {sp_img} / {sp_lab}")
            spacing = sp_img or sp_lab
        image = chans[0] if len(chans) == 1 else np.stack(chans, axis=-1)
        if lab.ndim == 3 and lab.shape[0] == 1 and lab_sp is not None:              # one-slice NIfTI: 2D
            lab, image = lab[0], image[0]
            spacing = spacing[1:] if spacing else None
        axes = ("YX" if lab.ndim == 2 else "ZYX") + ("C" if image.ndim == lab.ndim + 1 else "")
        if lab.dtype.kind == "f":
            if not np.all(np.mod(lab, 1) == 0):
                raise ImportLayoutError(f"{lab_path}: label values are not whole numbers")
            lab = lab.astype(np.int64)
        reviewed = None
        if ignore is not None:
            ign = lab == ignore
            reviewed = (~ign).astype(np.uint8)
            lab = np.where(ign, 0, lab)
        hi = int(lab.max()) if lab.size else 0
        if hi >= len(classes) or (lab.size and int(lab.min()) < 0):
            raise ImportLayoutError(f"{lab_path}: label values {int(lab.min())}..{hi} are not classes of dataset.json "
                                    f"(0..{len(classes) - 1}{f', ignore {ignore}' if ignore is not None else ''})")
        split = "test" if kind == "Ts" else auto[case]
        extra = {"importer": "nnunet", "dataset": root.name, "case": case,
                 "label_file": lab_path.relative_to(root).as_posix(), "label_sha256": sha256_file(lab_path),
                 "image_files": [p.relative_to(root).as_posix() for p in img_paths],
                 "channel_names": channels, "licence": None}
        add_sample(tf, report, image, lab.astype(np.uint8 if len(classes) <= 256 else np.uint16), reviewed=reviewed,
             axes=axes, sid=sid, split=split, source=str(img_paths[0].resolve()), source_sha256=sha, extra=extra,
             replace=replace, spacing=spacing, what=str(lab_path))
        if progress is not None:
            progress(i + 1, len(cases))
    write_data_notice(tf)
    return report
