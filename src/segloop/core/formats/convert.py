"""Convert a training folder v1 into other tools' dataset layouts.

* ``nnunet``  - nnU-Net v2 raw dataset: ``Dataset<ID>_<name>/imagesTr/<case>_<channel:04d>.tif``,
  ``labelsTr/<case>.tif``, ``imagesTs/`` for test samples, ``dataset.json``.  Instance
  labels become foreground (1); unreviewed pixels become nnU-Net's ``ignore`` label
  (the highest label value), so partly corrected samples stay usable.  3D samples
  get a ``<case>.json`` with their spacing (nnU-Net's ``Tiff3DIO``).
* ``cellpose`` - ``<split>/<case>.tif`` + ``<split>/<case>_masks.tif`` (instance folders).
* ``stardist`` - ``<split>/images/<case>.tif`` + ``<split>/masks/<case>.tif`` (instance folders).

cellpose and StarDist have no "ignore" label: a sample is exported cropped to the
bounding box of its reviewed pixels when that box is fully reviewed, and skipped
(and named in the report) otherwise, so no unreviewed prediction is passed off
as ground truth.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from segloop.errors import TrainingFolderError, WriteError

__all__ = ["ConvertReport", "convert", "FORMATS"]

FORMATS = ("nnunet", "cellpose", "stardist")


@dataclass
class ConvertReport:
    out: Path
    written: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        s = f"{len(self.written)} samples written to {self.out}"
        if self.skipped:
            s += f"; {len(self.skipped)} skipped: " + "; ".join(f"{k} ({v})" for k, v in self.skipped.items())
        return s


def convert(folder, out, *, to: str, dataset_id: int = 501, dataset_name: str | None = None) -> ConvertReport:
    """Write the samples of training folder ``folder`` into ``out`` in layout ``to``.

    ``out`` must not exist or be empty (nothing is overwritten).  Samples are
    verified (sha256) while read; a tampered sample stops the conversion.  The
    layout is written beside ``out`` and renamed into place when complete, so a
    conversion that fails leaves nothing.

    Raises
    ------
    TrainingFolderError
        Not a training folder, ``out`` not empty, a layout that does not fit the task.
    IntegrityError
        A sample whose files do not match their recorded sha256.
    WriteError
        ``out`` cannot be written (read-only folder, full disk); nothing was left.
    """
    from segloop.core.formats.trainfolder import TrainingFolder

    if to not in FORMATS:
        raise TrainingFolderError(f"unknown layout {to!r}; choose one of {', '.join(FORMATS)}")
    if to == "nnunet" and (isinstance(dataset_id, bool) or not isinstance(dataset_id, int)
                           or not 1 <= dataset_id <= 999):
        raise TrainingFolderError(f"nnU-Net dataset ids are whole numbers from 1 to 999 (--dataset-id), "
                                  f"got {dataset_id!r}")
    tf = folder if isinstance(folder, TrainingFolder) else TrainingFolder.open(folder)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise TrainingFolderError(f"{out} exists and is not an empty folder; choose a new output folder")
    if to != "nnunet" and tf.info.task != "instance":
        raise TrainingFolderError(f"{to} needs instance labels; {tf.path} holds {tf.info.task} labels "
                                  "(use --to nnunet)")
    # Written into a hidden folder beside ``out`` and renamed into place when complete: a
    # failure (a tampered sample, a full disk) or Ctrl-C leaves no half-converted layout.
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:12]}.partial")
    try:
        tmp.mkdir(parents=True)
        if to == "nnunet":
            report = _to_nnunet(tf, tmp, dataset_id, dataset_name or _ascii(tf.path.name) or "segloop")
        else:
            report = _to_instance_layout(tf, tmp, to)
        if out.is_dir():
            out.rmdir()                               # empty, checked above
        os.rename(tmp, out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise WriteError(f"cannot write the converted layout to {out} ({e.strerror or e}); nothing was written. Choose an "
                         "output folder you can write to, on a disk with space") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    report.out = out / Path(report.out).relative_to(tmp)
    return report


def _ascii(name: str) -> str:
    return "".join(c if c.isascii() and (c.isalnum() or c in "-_") else "_" for c in name).strip("_")


def _imwrite(path: Path, arr: np.ndarray, **kw) -> None:
    import tifffile

    tifffile.imwrite(path, arr, compression="zlib", **kw)


def _channels(image: np.ndarray, axes: str) -> list[np.ndarray]:
    if axes.endswith("C"):
        return [image[..., c] for c in range(image.shape[-1])]
    return [image]


def _to_nnunet(tf, out: Path, dataset_id: int, name: str) -> ConvertReport:
    root = out / f"Dataset{dataset_id:03d}_{name}"
    dirs = {k: root / k for k in ("imagesTr", "labelsTr", "imagesTs", "labelsTs")}
    for d in dirs.values():
        d.mkdir(parents=True)
    report = ConvertReport(root)
    classes = list(tf.info.classes) if tf.info.task == "semantic" else ["background", tf.info.classes[-1]
                                                                        if len(tf.info.classes) > 1 else "object"]
    ignore = len(classes)
    n_channels, dims, n_train = None, None, 0
    splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for rec in tf.samples():
        s = tf.read_sample(rec)
        axes = s.meta.get("axes", "")
        chans = _channels(s.image, axes)
        n_channels = n_channels or len(chans)
        dims = dims or s.labels.ndim
        if len(chans) != n_channels or s.labels.ndim != dims:
            report.skipped[rec.sample_id] = "channels or dimensions differ from the first sample"
            continue
        lab = (s.labels > 0).astype(np.uint8) if tf.info.task == "instance" else s.labels.astype(np.uint8)
        lab[s.reviewed == 0] = ignore
        case = _ascii(rec.sample_id)
        test = rec.split == "test"
        img_dir, lab_dir = (dirs["imagesTs"], dirs["labelsTs"]) if test else (dirs["imagesTr"], dirs["labelsTr"])
        for c, ch in enumerate(chans):
            _imwrite(img_dir / f"{case}_{c:04d}.tif", np.ascontiguousarray(ch))
        _imwrite(lab_dir / f"{case}.tif", lab)
        if dims == 3:
            spacing = s.meta.get("spacing") or [1.0, 1.0, 1.0]
            for d in (img_dir / f"{case}_0000", lab_dir / case):
                # nnU-Net's Tiff3DIO reads the spacing in array order (z, y, x), like our meta
                (d.parent / f"{d.name}.json").write_text(json.dumps({"spacing": [float(v) for v in spacing]}))
        splits[rec.split].append(case)
        n_train += not test
        report.written.append(rec.sample_id)
    is_ct = (tf.info.modality or "").lower() == "ct"       # nnU-Net normalizes a "CT" channel its own way
    ch_names = ({"0": "R", "1": "G", "2": "B"} if n_channels == 3 else
                {str(i): "CT" if is_ct else f"channel{i}" for i in range(n_channels or 1)})
    if n_channels == 1 and is_ct:
        ch_names = {"0": "CT"}
    dataset = {
        "channel_names": ch_names,
        "labels": {**{c: i for i, c in enumerate(classes)}, "ignore": ignore},
        "numTraining": n_train,
        "file_ending": ".tif",
        "overwrite_image_reader_writer": "Tiff3DIO" if dims == 3 else "NaturalImage2DIO",
        "segloop": {"source_folder": str(tf.path), "fingerprint": tf.fingerprint(), "splits": splits},
    }
    (root / "dataset.json").write_text(json.dumps(dataset, indent=2))
    return report


def _fully_reviewed_crop(reviewed: np.ndarray) -> tuple[slice, ...] | None:
    if reviewed.all():
        return tuple(slice(None) for _ in reviewed.shape)
    idx = np.nonzero(reviewed)
    if not idx[0].size:
        return None
    crop = tuple(slice(int(i.min()), int(i.max()) + 1) for i in idx)
    return crop if reviewed[crop].all() else None


def _to_instance_layout(tf, out: Path, to: str) -> ConvertReport:
    report = ConvertReport(out)
    for rec in tf.samples():
        s = tf.read_sample(rec)
        crop = _fully_reviewed_crop(s.reviewed)
        if crop is None:
            report.skipped[rec.sample_id] = "not fully reviewed (no ignore label in this layout)"
            continue
        image = s.image[crop + (slice(None),)] if s.meta.get("axes", "").endswith("C") else s.image[crop]
        labels = s.labels[crop]
        case = _ascii(rec.sample_id)
        if to == "cellpose":
            d = out / rec.split
            d.mkdir(exist_ok=True)
            _imwrite(d / f"{case}.tif", np.ascontiguousarray(image))
            _imwrite(d / f"{case}_masks.tif", np.ascontiguousarray(labels))
        else:
            for sub in ("images", "masks"):
                (out / rec.split / sub).mkdir(parents=True, exist_ok=True)
            _imwrite(out / rec.split / "images" / f"{case}.tif", np.ascontiguousarray(image))
            _imwrite(out / rec.split / "masks" / f"{case}.tif", np.ascontiguousarray(labels))
        report.written.append(rec.sample_id)
    (out / "segloop-source.json").write_text(json.dumps(
        {"source_folder": os.fspath(tf.path), "fingerprint": tf.fingerprint(), "layout": to,
         "skipped": report.skipped}, indent=2))
    return report
