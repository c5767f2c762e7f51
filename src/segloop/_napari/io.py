"""Reader and writer contributions, on top of ``segloop.core.io``."""

from __future__ import annotations

from segloop.core.io.images import read_pyramid, write_labels

_SUFFIXES = (".tif", ".tiff", ".btf", ".png", ".jpg", ".jpeg")


def get_reader(path):
    """Return a reader for one image file segloop can read, else None."""
    if isinstance(path, list) or not str(path).lower().endswith(_SUFFIXES):
        return None
    return _read


def _read(path):
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


def write_labels_tiff(path, data, meta):
    """Save a Labels layer as an (atomically written) TIFF with its provenance."""
    write_labels(path, data, metadata=meta.get("metadata", {}).get("segloop", {}))
    return [str(path)]


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

    from segloop.core.trainfolder import TrainingFolder

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
