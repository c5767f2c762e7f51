"""Reader and writer contributions, on top of ``segloop.core.formats.io``."""

from __future__ import annotations

from pathlib import Path

from segloop.core.formats.io.images import read_pyramid, write_labels
from segloop.core.formats.io.wsi import SLIDE_SUFFIXES, is_dicom_wsi, is_slide, open_slide

_SUFFIXES = (".tif", ".tiff", ".btf", ".png", ".jpg", ".jpeg") + SLIDE_SUFFIXES


def get_reader(path):
    """Return a reader for one image file segloop can read (whole slides included, DICOM-WSI too), else None."""
    if isinstance(path, list):
        return None
    if str(path).lower().endswith(_SUFFIXES) or is_dicom_wsi(path):
        return _read
    return None


def get_zarr_reader(path):
    """A reader for an OME-Zarr folder (NGFF ``multiscales``: segloop's slide results), else None."""
    if isinstance(path, list) or not str(path).rstrip("/").lower().endswith(".zarr"):
        return None
    attrs = Path(path) / ".zattrs"
    if not attrs.is_file() or "multiscales" not in attrs.read_text():
        return None
    from segloop._napari.slide_run import read_ome_zarr

    return read_ome_zarr


def _read(path):
    if is_slide(path):                  # vendor slide, or a TIFF with pyramid levels
        return _read_slide(path)
    levels, info = read_pyramid(path)   # ImageReadError says what is wrong; napari shows it
    image = levels[0]                   # memmap or lazy (dask over zarr) for big/compressed pyramids
    rgb = info.axes.endswith(("S", "C")) and image.shape[-1] in (3, 4)
    meta = {"source": str(info.path), "axes": info.axes, "pixel_size": info.pixel_size}
    kwargs = {"name": info.path.stem, "rgb": rgb, "metadata": {"segloop_source": meta}}
    if info.pixel_size and not rgb:
        kwargs["scale"] = (1.0,) * (image.ndim - 2) + tuple(info.pixel_size)
    elif info.pixel_size:
        kwargs["scale"] = (1.0,) * (image.ndim - 3) + tuple(info.pixel_size)
    if len(levels) > 1:
        kwargs["multiscale"] = True
        return [(levels, kwargs, "image")]
    return [(image, kwargs, "image")]


def _read_slide(path):
    """A whole slide as one (multiscale) image layer in µm, its metadata under ``segloop_slide``."""
    slide = open_slide(path)            # lazy; the file stays open while the layer reads tiles
    image = slide.levels[0]
    rgb = slide.axes.endswith(("S", "C")) and image.shape[-1] in (3, 4)
    meta = {"source": str(slide.path), "axes": slide.axes, "pixel_size": slide.mpp}
    kwargs = {"name": slide.path.stem, "rgb": rgb,
              "metadata": {"segloop_slide": slide.metadata, "segloop_source": meta}}
    if slide.mpp:
        spatial = image.ndim - (1 if rgb or slide.axes[-1] in "SC" else 0)
        kwargs["scale"] = (1.0,) * (spatial - 2) + tuple(slide.mpp)
        kwargs.update(micrometer_units(spatial))
    if len(slide.levels) > 1:
        kwargs["multiscale"] = True
        return [(slide.levels, kwargs, "image")]
    return [(image, kwargs, "image")]


def micrometer_units(ndim: int = 2) -> dict:
    """``{"units": ("micrometer",) * 2}`` for a 2D layer on napari >= 0.6 (layers with physical
    units), else ``{}``: every layer placed on a slide in µm says so, or napari warns that units
    differ across layers."""
    import inspect

    from napari.layers import Image

    if ndim != 2 or "units" not in inspect.signature(Image.__init__).parameters:
        return {}
    return {"units": ("micrometer", "micrometer")}


def write_labels_tiff(path, data, meta):
    """Save a Labels layer as an (atomically written) TIFF with its provenance."""
    write_labels(path, data, metadata=meta.get("metadata", {}).get("segloop", {}))
    return [str(path)]


# -- volumes (NIfTI, MRC, DICOM) ------------------------------------------------------------------

_VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mrc", ".dcm")


def get_volume_reader(path):
    """A reader for a NIfTI / MRC / DICOM file, a list of DICOM files, or a folder holding DICOM; else None.

    Folders are recognised by peeking at a few files (``looks_like_dicom_dir``), so other folders
    (segloop training folders, image folders) are declined at once.
    """
    from pathlib import Path

    from segloop.core.formats.io.volume import is_dicom_file, looks_like_dicom_dir

    if isinstance(path, (list, tuple)):
        if len(path) > 1 and all(str(p).lower().endswith(".dcm") for p in path):
            return _read_volume_layers
        return None
    p = Path(path)
    if p.is_dir():
        return _read_volume_layers if looks_like_dicom_dir(p) else None
    name = p.name.lower()
    if name.endswith(_VOLUME_SUFFIXES) or is_dicom_file(p):
        from segloop.core.formats.io.structures import structure_kind

        if structure_kind(p):           # an RTSTRUCT / DICOM-SEG: get_structure_reader shows it on its series
            return None
        if is_dicom_wsi(p):             # a whole slide: get_reader opens it as one
            return None
        return _read_volume_layers
    return None


def get_structure_reader(path):
    """A reader for an RTSTRUCT or DICOM-SEG file (contours drawn on a CT/MR series), else None."""
    from segloop.core.formats.io.structures import structure_kind

    if isinstance(path, (list, tuple)) or Path(path).is_dir():
        return None
    return _read_structure_layers if structure_kind(path) else None


def _read_structure_layers(path):
    """The series the structure was drawn on (found beside the file) and the structure as a Labels layer."""
    import numpy as np

    from segloop.core.formats.io.dicom_seg import read_dicom_seg
    from segloop.core.formats.io.rtstruct import read_rtstruct
    from segloop.core.formats.io.structures import find_referenced_series, structure_kind
    from segloop.core.formats.io.volume import read_volume
    from segloop.errors import VolumeReadError

    p = Path(path)
    kind = structure_kind(p)
    series = _referenced_series(p)
    if not series:
        raise VolumeReadError(f"{p}: the {kind} names no image series it was drawn on, so segloop cannot find it; "
                              "open the series first and read the file with segloop's library (reference=...)")
    files = find_referenced_series(p, series[0])
    volume, info = read_volume(files, series_uid=series[0])
    reader = read_rtstruct if kind == "RTSTRUCT" else read_dicom_seg
    kw = {} if kind == "RTSTRUCT" else {"overlap": "smaller_on_top"}
    labels, names, report = reader(p, (volume, info), **kw)
    warnings = list(info.warnings) + list(report.warnings)
    if report.overlaps:
        warnings.append("overlapping structures, the smaller shown: " + "; ".join(
            f"{o['names'][0]} / {o['names'][1]} ({o['voxels']} voxels)" for o in report.overlaps))
    if warnings:
        from napari.utils.notifications import show_warning

        show_warning(f"segloop: {p.name}: " + "; ".join(warnings))
    ids = sorted(names)
    structures = {s["label"]: s for s in report.structures}
    features = {"index": [0, *ids], "name": ["background", *(names[i] for i in ids)],
                "volume_ml": [0.0, *(round(float(structures[i]["ml"]), 3) for i in ids)]}
    label_kwargs = {
        "name": f"{p.stem} ({kind})", "scale": tuple(float(s) for s in info.spacing), "features": features,
        "metadata": {"segloop_volume": info, "segloop_segments": dict(names),
                     "segloop_source": {"source": str(p), "kind": kind, "series_uid": info.series_uid,
                                        "structures": [{k: v for k, v in s.items() if k != "color"}
                                                       for s in report.structures]}}}
    if report.colors:
        colors = {None: (0.0, 0.0, 0.0, 0.0), 0: (0.0, 0.0, 0.0, 0.0)}
        colors.update({i: (*(c / 255.0 for c in report.colors[i]), 1.0) if i in report.colors
                       else _fallback_color(i) for i in ids})
        label_kwargs["colormap"] = colors
    return [(volume, volume_layer_kwargs(info), "image"), (np.asarray(labels), label_kwargs, "labels")]


def _referenced_series(path: Path) -> list[str]:
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True,
                         specific_tags=["ReferencedFrameOfReferenceSequence", "ReferencedSeriesSequence"])
    out = [str(s.SeriesInstanceUID) for s in (ds.get("ReferencedSeriesSequence") or []) if s.get("SeriesInstanceUID")]
    for rf in ds.get("ReferencedFrameOfReferenceSequence") or []:
        for st in rf.get("RTReferencedStudySequence") or []:
            out += [str(s.SeriesInstanceUID) for s in (st.get("RTReferencedSeriesSequence") or [])
                    if s.get("SeriesInstanceUID")]
    return list(dict.fromkeys(out))


def _fallback_color(label_id: int) -> tuple[float, float, float, float]:
    import numpy as np

    rng = np.random.default_rng(label_id)
    return (*(float(v) for v in rng.uniform(0.2, 1.0, 3)), 1.0)


def contrast_limits_for(info) -> tuple[float, float] | None:
    """Display range of a volume: the file's window, else the soft-tissue window for CT, else None."""
    from segloop.core.formats.normalization import CT_PRESETS

    window = info.window
    if window is None and (info.units == "HU" or info.extra.get("likely_ct")):
        window = CT_PRESETS["soft tissue"]
    if window is None:
        return None
    level, width = (float(v) for v in window)
    return (level - width / 2, level + width / 2)


def volume_layer_kwargs(info, *, name: str | None = None) -> dict:
    """Image-layer keyword arguments for a volume: physical scale, grey, window, and the VolumeInfo."""
    kwargs = {"name": name or _volume_name(info), "scale": tuple(float(s) for s in info.spacing),
              "colormap": "gray", "rgb": False,
              "metadata": {"segloop_volume": info,
                           "segloop_source": {"source": str(info.path), "axes": "ZYX",
                                              "pixel_size": tuple(float(s) for s in info.spacing[1:])}}}
    limits = contrast_limits_for(info)
    if limits is not None:
        kwargs["contrast_limits"] = limits
    return kwargs


def _volume_name(info) -> str:
    name = info.path.name
    for suf in (".nii.gz", ".nii", ".mrc", ".dcm"):
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return info.description or name


def _read_volume_layers(path):
    from segloop.core.formats.io.volume import read_volume

    volume, info = read_volume(path)     # typed errors say what is wrong; napari shows them
    if info.warnings:
        from napari.utils.notifications import show_warning

        show_warning(f"segloop: {_volume_name(info)}: " + "; ".join(info.warnings))
    return [(volume, volume_layer_kwargs(info), "image")]


def _volume_info_for(data, meta: dict, fmt: str):
    """The VolumeInfo behind a labels layer, or an identity geometry from its scale (with a warning)."""
    import numpy as np

    from segloop.core.formats.io.geometry import VolumeInfo, lps_affine

    info = (meta.get("metadata") or {}).get("segloop_volume")
    shape = tuple(int(s) for s in np.shape(data))
    if isinstance(info, VolumeInfo):
        return info
    if isinstance(info, dict) and info.get("affine") is not None and len(info.get("shape", ())) == 3:
        aff = np.asarray(info["affine"], float)
        return VolumeInfo(path=info.get("path", ""), format=info.get("format", ""),
                          shape=tuple(info["shape"]), spacing=tuple(info["spacing"]), affine=aff)
    from napari.utils.notifications import show_warning

    if len(shape) not in (2, 3):
        from segloop.errors import InvalidLabelsError

        raise InvalidLabelsError(f"a {len(shape)}D labels layer cannot be saved as {fmt}; save a 3D (Z, Y, X) layer")
    scale = tuple(meta.get("scale") or (1.0,) * len(shape))[-len(shape):]
    spacing = (1.0,) * (3 - len(scale)) + tuple(float(s) for s in scale)
    show_warning(f"segloop: the labels layer has no volume geometry (it was not made on a volume opened "
                 f"with segloop): {fmt} written with identity orientation and spacing {spacing} from the layer's scale")
    return VolumeInfo(path="", format="", shape=(1,) * (3 - len(shape)) + shape, spacing=spacing,
                      affine=lps_affine(spacing))


def write_labels_nifti(path, data, meta):
    """Save a Labels layer as NIfTI in its source volume's space (``metadata["segloop_volume"]``)."""
    from segloop.core.formats.io.volume import write_nifti_labels

    info = _volume_info_for(data, meta, "NIfTI")
    write_nifti_labels(path, _labels_3d(data, info), info)
    return [str(path)]


def write_labels_seg_nrrd(path, data, meta):
    """Save a Labels layer as a 3D Slicer segmentation (``.seg.nrrd``) with names and layer colours."""
    from segloop.core.formats.io.volume import write_seg_nrrd

    info = _volume_info_for(data, meta, ".seg.nrrd")
    labels = _labels_3d(data, info)
    names, colors = _segment_names_colors(labels, meta, info)
    write_seg_nrrd(path, labels, info, names=names, colors=colors)
    return [str(path)]


def _labels_3d(data, info):
    import numpy as np

    arr = np.asarray(data)
    return arr[None] if arr.ndim == 2 and len(info.shape) == 3 and info.shape[0] == 1 else arr


def _segment_names_colors(labels, meta: dict, info):
    """Segment names from the model's classes (semantic models) or the volume's; colours as napari shows them."""
    import numpy as np

    md = meta.get("metadata") or {}
    model = (md.get("segloop") or {}).get("model") or {}
    classes = None
    if model.get("task") == "semantic" and model.get("classes"):
        classes = list(model["classes"])
    elif info.extra.get("classes"):
        classes = list(info.extra["classes"])
    values = [int(v) for v in np.unique(labels) if v != 0]
    names = {i: str(c) for i, c in enumerate(classes) if i > 0} if classes else {}
    colors = {}
    cmap = meta.get("colormap")
    if values and hasattr(cmap, "map"):
        try:
            rgba = np.asarray(cmap.map(np.asarray(values)))
            colors = {v: tuple(float(c) for c in rgba[i, :3]) for i, v in enumerate(values)}
        except (TypeError, ValueError, IndexError):
            colors = {}
    return names, colors


MAX_FOLDER_SAMPLES = 24
"""Opening a whole training folder shows at most this many samples (open a sample folder for others)."""


def get_folder_reader(path):
    """A reader for a segloop training folder, or one of its sample folders; else None."""
    if isinstance(path, list):
        return None
    from pathlib import Path

    p = Path(path)
    if (p / "segloop-training.json").is_file():
        return _read_training_folder
    if (p / "meta.json").is_file() and (p.parent.parent / "segloop-training.json").is_file():
        return _read_training_folder
    return None


def _read_training_folder(path):
    """Each sample as image + labels + reviewed layers, with the sample's metadata."""
    from pathlib import Path

    from segloop.core.formats.trainfolder import TrainingFolder

    p = Path(path)
    is_sample = (p / "meta.json").is_file()
    folder = TrainingFolder.open(p.parent.parent if is_sample else p)
    records = [r for r in folder.samples() if not is_sample or r.sample_id == p.name]
    if len(records) > MAX_FOLDER_SAMPLES:
        from napari.utils.notifications import show_warning

        show_warning(f"segloop: {folder.path} has {len(records)} samples; showing the first "
                     f"{MAX_FOLDER_SAMPLES} (open a sample's folder to see another)")
        records = records[:MAX_FOLDER_SAMPLES]
    by_id = {r.sample_id: r for r in folder.samples()}
    out = []
    for rec in records:
        s = folder.read_sample(rec)       # hashes verified: a tampered sample is refused with its id
        meta = dict(s.meta)
        base = _reviewed_with_holdout(folder, s, by_id)
        has_c = meta.get("axes", "").endswith("C")
        rgb = has_c and s.image.shape[-1] in (3, 4) and s.image.dtype == "uint8"
        spacing = meta.get("spacing")
        geo = {"scale": tuple(spacing)} if spacing and len(spacing) == s.labels.ndim else {}
        sample_ref = {"folder": str(folder.path), "sample_id": rec.sample_id, "split": rec.split}
        prov = {"model": meta.get("model") or {}, "sample": sample_ref, "corrections": meta.get("corrections")}
        chan = {"channel_axis": -1} if has_c and not rgb else {}
        out.append((s.image, {"name": f"{rec.sample_id} image", "rgb": rgb, **chan,
                              "metadata": {"segloop_source": {"source": meta.get("source")},
                                           "segloop_sample": meta}, **geo}, "image"))
        out.append((s.labels, {"name": f"{rec.sample_id} labels", **geo,
                               "metadata": {"segloop": prov, "segloop_reviewed_base": base}}, "labels"))
        out.append((s.reviewed, {"name": f"{rec.sample_id} reviewed", "colormap": "green", "opacity": 0.3,
                                 "blending": "additive", "contrast_limits": (0, 1), "visible": False,
                                 "metadata": {"segloop_sample": sample_ref}, **geo}, "image"))
    return out


def _reviewed_with_holdout(folder, sample, by_id):
    """The reviewed mask a person made: for a training sample whose last block was held out for
    validation (and cleared in its own mask), the held-out block's mask is put back, so that
    replacing the sample re-creates the same validation block instead of an unreviewed one."""
    hold = sample.meta.get("holdout") or {}
    partner = by_id.get(hold.get("partner") or "")
    if hold.get("role") != "train" or partner is None:
        return sample.reviewed
    axes = sample.meta.get("axes", "").rstrip("C")
    axis = axes.find(hold.get("axis", ""))
    start, stop = hold.get("block", (0, 0))
    val = folder.read_sample(partner)
    if axis < 0 or val.reviewed.shape[axis] != stop - start:
        return sample.reviewed
    base = sample.reviewed.copy()
    sl = [slice(None)] * base.ndim
    sl[axis] = slice(start, stop)
    base[tuple(sl)] = val.reviewed
    return base
